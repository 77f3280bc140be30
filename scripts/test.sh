#!/bin/bash
# Run every check: what CI runs (.ci/run) and what a developer runs before committing.
# Installs what is missing (scripts/setup.sh), then: rustfmt and clippy (of the vendored fuser
# fork too), release build, cargo test (unit and integration tests, against the release binary;
# the fork's unit tests), fsx and pjdfstest through a 2-replica mount, and the .deb and .rpm
# packages (tests/packaging/test.sh: built, linted, installed, used, removed;
# tests/packaging/chroot-install.sh: the .deb installed with apt into fresh Debian 12 and 13
# roots, mounted there), and the cluster integration (tests/cluster/ocf-tester.sh: the OCF
# agent under ocf-tester, crmsh and pcs, the Heartbeat script, the systemd unit;
# tests/cluster/two-node.sh: failovers in a real two-node Pacemaker and Heartbeat cluster in
# namespaces, replicas over SSHFS). Every step runs even if an earlier one failed (the peer
# suites, the packaging and the cluster checks are skipped only if the build failed); the exit
# status is non-zero if any step failed.
# Usage: scripts/test.sh        (as root: the tests mount filesystems)
set -eu
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

results=()
failed=0
passed=0

# step NAME COMMAND...: run one step with a header, record its result and time.
step() {
    local name=$1 start end rc=0
    shift
    printf '\n==================== %s ====================\n' "$name"
    printf '$ %s\n' "$*"
    start=$(date +%s)
    "$@" || rc=$?
    end=$(date +%s)
    if [ "$rc" = 0 ]; then
        results+=("$(printf '  PASS  %-26s %5ss' "$name" $((end - start)))")
        passed=$((passed + 1))
    else
        results+=("$(printf '  FAIL  %-26s %5ss  (exit %s)' "$name" $((end - start)) "$rc")")
        failed=$((failed + 1))
    fi
    return 0
}

skip() {
    printf '\n==================== %s ====================\nskipped: %s\n' "$1" "$2"
    results+=("$(printf '  FAIL  %-26s        (skipped: %s)' "$1" "$2")")
    failed=$((failed + 1))
}

total_start=$(date +%s)
step setup scripts/setup.sh
step rustfmt cargo fmt --all -- --check
# The vendored fuser is a workspace of its own (vendor/fuser/CHIRONFS.md), checked apart: its
# io_uring transport formatted (upstream's rustfmt.toml) and linted here, and tested (the kernel
# ABI layout it writes by hand) below.
step "rustfmt, fuser fork" cargo fmt --manifest-path vendor/fuser/Cargo.toml -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
# No import cycle between modules, no function over 120 lines (docs/architecture.md).
step "module graph" scripts/module-deps.py --max-fn-lines 120
step "clippy, fuser fork" cargo clippy --manifest-path vendor/fuser/Cargo.toml --all-targets -- -D warnings
build_before=$failed
step build scripts/build.sh
build_ok=1
[ "$failed" = "$build_before" ] || build_ok=0
step "cargo test" cargo test --workspace --release
step "cargo test, fuser fork" cargo test --manifest-path vendor/fuser/Cargo.toml --lib
# The same mounts again with the kernel's FUSE over io_uring on: the requests then come
# through chironfs's per-CPU rings instead of /dev/fuse (tests/io_uring.rs checks which).
step "cargo test, io_uring" tests/peer/with-io-uring.sh cargo test --release --tests
if [ "$build_ok" = 1 ]; then
    step fsx tests/peer/fsx.sh
    step pjdfstest tests/peer/pjdfstest.sh
    step "fsx, io_uring" tests/peer/with-io-uring.sh tests/peer/fsx.sh
    step "pjdfstest, io_uring" tests/peer/with-io-uring.sh tests/peer/pjdfstest.sh
    step packaging tests/packaging/test.sh
    # About 1 minute with today's roots cached in /var/cache/chironfs-test/, 2.5 to 4 without
    # (two mmdebstrap roots, every .deb downloaded).
    step "install, Debian 12 and 13" tests/packaging/chroot-install.sh
    step ocf-tester tests/cluster/ocf-tester.sh
    step "two-node cluster" tests/cluster/two-node.sh
else
    skip fsx "the build failed"
    skip pjdfstest "the build failed"
    skip "fsx, io_uring" "the build failed"
    skip "pjdfstest, io_uring" "the build failed"
    skip packaging "the build failed"
    skip "install, Debian 12 and 13" "the build failed"
    skip ocf-tester "the build failed"
    skip "two-node cluster" "the build failed"
fi

printf '\n==================== summary (%ss) ====================\n' $(($(date +%s) - total_start))
printf '%s\n' "${results[@]}"
echo "test.sh: $passed passed, $failed failed"
[ "$failed" = 0 ]
