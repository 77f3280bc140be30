#!/usr/bin/env bash
# chironfs network benchmark: one command, as root (needs cargo, sshd, sshfs, fio):
#
#     bench/net.sh --quick         # ~6 min on 2 cores: 1 round, small sizes
#     bench/net.sh                 # 3 rounds, larger sizes (~30 min)
#
# Starts 3 sshd on 127.0.0.1, each behind tools/netdelay (a TCP proxy delaying every byte a
# settable time each way: this kernel has no netem), and measures, for each delay, chironfs
# with 2 and 3 SSHFS replicas against ONE SSHFS mount of the same kind of server (same cipher,
# aes128-gcm, on every mount): sequential write/read, 4 KiB random, create/stat/delete, untar
# and cat of a crate, with CPU time per MB; then the slow-replica case (one server at 5 ms, the
# other at 0.25 ms: per-operation latencies), then the SFTP requests each replica's mount sends
# per create/write/close/chmod/rename/unlink (sshfs -o sshfs_debug).
# Prints one report and saves it as bench/results/latest-net[-quick].md (raw: results/raw/).
#
# Options:
#   --quick             small sizes, 1 round
#   --delays LIST       ms each way, comma-separated (default 0.25,1)
#   --slow MS --fast MS the slow-replica case (default 5 and 0.25)
#   --repeat N          rounds (default 3; --quick 1)
#   --rand-time S       seconds per random-I/O run (default 10; --quick 3)
#   --only LIST         systems among sshfs-1,chironfs-2,chironfs-3 (sshfs-1 is the reference)
#   --parts LIST        among table,slow,count (default all)
#   --tarball FILE      gzip tarball for the tree workload (default: the largest .crate)
#   --no-build          use the built binaries as they are
#   --chironfs BIN      measure this chironfs binary instead (e.g. an older build to compare)
# Binaries: $CARGO_TARGET_DIR (default target/)/release/{chironfs,netdelay}.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
orig_args=("$@")
py_args=()
tarball=""
build=1
chironfs_bin=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) py_args+=(--quick) ;;
        --delays|--slow|--fast|--repeat|--rand-time|--only|--parts)
            [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }
            py_args+=("$1" "$2"); shift ;;
        --tarball) tarball=$2; shift ;;
        --chironfs) chironfs_bin=$2; shift ;;
        --no-build) build=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "bench/net.sh must run as root (mounts, drop_caches)" >&2; exit 1; }
# A private mount namespace: our mounts appear in no other namespace (see run.sh).
if [ -z "${CHIRONFS_BENCH_NS:-}" ] && unshare --mount --propagation private true 2>/dev/null; then
    export CHIRONFS_BENCH_NS=1
    exec unshare --mount --propagation private "$0" "${orig_args[@]}"
fi
for c in sshfs fio /usr/sbin/sshd ssh-keygen; do
    command -v "$c" >/dev/null || { echo "$c missing (scripts/setup.sh installs it)" >&2; exit 1; }
done
target=${CARGO_TARGET_DIR:-$root/target}
if [ "$build" = 1 ]; then
    (cd "$root" && cargo build --release --bin chironfs -p netdelay)
fi
for b in chironfs netdelay; do
    [ -x "$target/release/$b" ] || { echo "$target/release/$b missing" >&2; exit 1; }
done
[ -n "$chironfs_bin" ] || chironfs_bin=$target/release/chironfs
[ -x "$chironfs_bin" ] || { echo "$chironfs_bin missing" >&2; exit 1; }
if [ -z "$tarball" ]; then
    tarball=$(ls -S "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/*.crate 2>/dev/null | head -1 || true)
    [ -n "$tarball" ] || { echo "no .crate in ~/.cargo/registry/cache: pass --tarball" >&2; exit 1; }
fi
tmp=$(mktemp -d /tmp/chironfs-netbench.XXXXXX)
cleanup() {
    set +e
    for m in $(awk -v t="$tmp" 'index($5, t "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
    # sshd masters started for this run (their pid files are ours)
    for f in "$tmp"/sshd*.pid; do
        [ -s "$f" ] || continue
        p=$(cat "$f")
        [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = /usr/sbin/sshd ] && kill "$p" 2>/dev/null
    done
    # The sshd sessions may take a moment to go, holding their log files open.
    for _ in $(seq 25); do umount "$tmp" 2>/dev/null && break; sleep 0.2; done
    mountpoint -q "$tmp" && umount -l "$tmp"
    rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# The servers' data on a tmpfs: the network, not a disk, is what is measured.
mount -t tmpfs -o size=4g,mode=0700 chironfs-netbench "$tmp"
(trap - EXIT INT TERM; exec python3 "$here/net.py" --tmp "$tmp" \
    --chironfs "$chironfs_bin" --netdelay "$target/release/netdelay" \
    --tarball "$tarball" "${py_args[@]}") &
py=$!
trap 'kill -TERM "$py" 2>/dev/null; wait "$py" || true; exit 130' INT TERM
rc=0
wait "$py" || rc=$?
exit $rc
