#!/bin/bash
# Idempotent installer for a fresh Debian 12 machine (run as root): the system packages that
# chironfs, its tests and its demo need (prometheus for promtool, which checks the metrics;
# mmdebstrap for the Debian 12 and 13 roots of tests/packaging/chroot-install.sh),
# plus the peer test suites fsx and pjdfstest.
# Quiet when everything is already there; says what failed otherwise.
# Usage: scripts/setup.sh
set -eu

APT_PACKAGES="fuse3 rsyslog sshfs openssh-server openssh-client iproute2 attr acl psmisc
procps util-linux e2fsprogs
pacemaker pacemaker-cli-utils corosync crmsh pcs resource-agents heartbeat kmod libxml2-utils
systemd prometheus mmdebstrap"
FSX_VERSION=0.3.2
PJDFSTEST_VERSION=0.2.2

die() { echo "setup.sh: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (installs Debian packages)"
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
export PATH="$CARGO_HOME/bin:$PATH"
command -v cargo >/dev/null 2>&1 ||
    die "cargo not found (looked in PATH and $CARGO_HOME/bin); install a Rust toolchain (rustup) first"

# --- Debian packages -------------------------------------------------------------------------
missing=""
for p in $APT_PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing="$missing $p"
    fi
done
if [ -n "$missing" ]; then
    echo "setup.sh: installing Debian packages:$missing"
    log=$(mktemp /tmp/chironfs-setup-apt.XXXXXX)
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    if ! { apt-get update -q && apt-get install -y -q --no-install-recommends $missing; } \
        >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "apt-get failed (full log: $log)"
    fi
    rm -f "$log"
fi

# --- Rust peer suites ------------------------------------------------------------------------

# installed_version CRATE: the version `cargo install` recorded for CRATE, or nothing.
installed_version() {
    cargo install --list 2>/dev/null | sed -n "s/^$1 v\([^:]*\):\$/\1/p"
}

cargo_install() {
    crate=$1 version=$2
    if [ -x "$CARGO_HOME/bin/$crate" ] && [ "$(installed_version "$crate")" = "$version" ]; then
        return 0
    fi
    echo "setup.sh: cargo install $crate $version"
    log=$(mktemp /tmp/chironfs-setup-cargo.XXXXXX)
    if ! cargo install --locked --force "$crate" --version "$version" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "cargo install $crate $version failed (full log: $log)"
    fi
    rm -f "$log"
}

cargo_install fsx "$FSX_VERSION"
cargo_install pjdfstest "$PJDFSTEST_VERSION"
