#!/bin/bash
# Build the Debian package and lint it: target/packages/chironfs_VERSION_ARCH.deb.
# Installs what it needs (debhelper, dpkg-dev, lintian) with apt-get, then runs
# `dpkg-buildpackage -us -uc -b` on the source tree (reusing target/ and the Rust toolchain
# already installed, see docs/packaging.md) and `lintian` on the result; fails on any lintian
# error or warning.
# Usage: scripts/build-deb.sh        (as root)
set -eu
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

need=""
for p in debhelper dpkg-dev lintian; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
        need="$need $p"
done
if [ -n "$need" ]; then
    echo "build-deb.sh: installing$need"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $need >/dev/null
fi

version=$(dpkg-parsechangelog -S Version)
arch=$(dpkg --print-architecture)
cargo_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
if [ "${version%%-*}" != "$cargo_version" ]; then
    echo "build-deb.sh: debian/changelog says $version but Cargo.toml says $cargo_version" >&2
    exit 1
fi

dpkg-buildpackage -us -uc -b

# dpkg-buildpackage writes to the parent directory: collect the results under target/.
out=target/packages
mkdir -p "$out"
for f in "../chironfs_${version}_${arch}.deb" "../chironfs_${version}_${arch}.buildinfo" \
    "../chironfs_${version}_${arch}.changes"; do
    mv -f "$f" "$out/"
done
debian/rules clean >/dev/null # the staging tree debian/chironfs and debhelper's state
deb=$out/chironfs_${version}_${arch}.deb
echo "build-deb.sh: $deb"
# --fail-on error,warning: exit non-zero on any E: or W: tag; overridden tags do not count.
lintian --fail-on error,warning --info "$deb"
echo "build-deb.sh: lintian: no errors, no warnings"
