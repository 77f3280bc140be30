#!/bin/bash
# Build chironfs and chironctl (release): target/release/chironfs, target/release/chironctl.
# Usage: scripts/build.sh [extra cargo build arguments]
set -eu
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
command -v cargo >/dev/null 2>&1 || { echo "build.sh: cargo not found; install a Rust toolchain (rustup)" >&2; exit 1; }
locked=""
[ ! -f Cargo.lock ] || locked=--locked
exec cargo build --release --workspace $locked "$@"
