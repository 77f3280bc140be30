#!/usr/bin/env bash
# chironfs network benchmark: one command, as root (needs cargo, sshd, sshfs, fio; for NFS it
# installs nfs-ganesha, rpcbind, libnfs-dev and libfuse-dev with apt-get when missing):
#
#     bench/net.sh --quick         # ~22 min on 2 cores (SSHFS 6, NFS 15): 1 round, small sizes
#     bench/net.sh                 # 3 rounds, larger sizes (over an hour with NFS)
#     bench/net.sh --quick --transport nfs
#
# Runs in a private mount and network namespace. Per transport, starts 3 servers on 127.0.0.1,
# each behind tools/netdelay (a TCP proxy delaying every byte a settable time each way: this
# kernel has no netem): sshd for SSHFS; NFS-Ganesha (NFSv3, with a private rpcbind) for NFS,
# mounted with fuse-nfs (tools/fuse-nfs over libnfs: this kernel has no NFS client). Measures,
# for each delay, chironfs with 2 and 3 replicas against ONE mount of the same kind of server
# (SSHFS: the same cipher, aes128-gcm, on every mount): sequential write/read, 4 KiB random,
# create/stat/delete, untar and cat of a crate, with CPU time per MB; then the slow-replica case
# (one server at 5 ms, the other at 0.25 ms: per-operation latencies), then the SFTP requests
# each replica's mount sends per create/write/close/chmod/rename/unlink (sshfs -o sshfs_debug;
# SSHFS only).
# Prints one report and saves it as bench/results/latest-net[-quick].md (raw: results/raw/).
#
# Options:
#   --quick             small sizes, 1 round
#   --transport LIST    among sshfs,nfs (default both; sshfs alone, with a warning, when NFS
#                       cannot be set up here)
#   --delays LIST       ms each way, comma-separated (default 0.25,1)
#   --slow MS --fast MS the slow-replica case (default 5 and 0.25)
#   --repeat N          rounds (default 3; --quick 1)
#   --rand-time S       seconds per random-I/O run (default 10; --quick 3)
#   --only LIST         systems among sshfs-1,chironfs-2,chironfs-3 (SSHFS) and
#                       nfs-1,chironfs-nfs-2,chironfs-nfs-3 (NFS); T-1 is T's reference
#   --parts LIST        among table,slow,count (default all; count is SSHFS only)
#   --tarball FILE      gzip tarball for the tree workload (default: the largest .crate)
#   --no-build          use the built chironfs and netdelay as they are (fuse-nfs is still
#                       built when missing)
#   --chironfs BIN      measure this chironfs binary instead (e.g. an older build to compare)
# Binaries: $CARGO_TARGET_DIR (default target/)/release/{chironfs,netdelay}, and
# $CARGO_TARGET_DIR/fuse-nfs/fuse-nfs (tools/fuse-nfs/build.sh).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
orig_args=("$@")
py_args=()
tarball=""
transport=""
build=1
chironfs_bin=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) py_args+=(--quick) ;;
        --delays|--slow|--fast|--repeat|--rand-time|--only|--parts)
            [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }
            py_args+=("$1" "$2"); shift ;;
        --transport)
            [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }
            transport=$2; shift ;;
        --tarball) tarball=$2; shift ;;
        --chironfs) chironfs_bin=$2; shift ;;
        --no-build) build=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "bench/net.sh must run as root (mounts, drop_caches)" >&2; exit 1; }
want_ssh=0 want_nfs=0
case ",${transport:-sshfs,nfs}," in *,sshfs,*) want_ssh=1 ;; esac
case ",${transport:-sshfs,nfs}," in *,nfs,*) want_nfs=1 ;; esac
[ "$want_ssh$want_nfs" != 00 ] || { echo "--transport: among sshfs,nfs" >&2; exit 2; }
# warn_or_die MESSAGE: without --transport, NFS is dropped with a warning; with it, an error.
warn_or_die() {
    if [ -n "$transport" ]; then echo "bench/net.sh: $1" >&2; exit 1; fi
    echo "bench/net.sh: warning: $1; measuring SSHFS only" >&2
    want_nfs=0
}
# NFS pieces, installed with apt-get when missing (before the private network namespace, which
# reaches no package registry). Installing nfs-ganesha enables its and rpcbind's systemd units;
# the bench itself starts its own ganesha and rpcbind, in its own namespaces.
if [ "$want_nfs" = 1 ] && [ -z "${CHIRONFS_BENCH_NS:-}" ]; then
    missing=""
    for p in nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-dev libfuse-dev pkg-config gcc iproute2
    do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
            missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        echo "bench/net.sh: installing for NFS:$missing"
        aptlog=/tmp/chironfs-net-apt.log
        # shellcheck disable=SC2086 # word splitting of the package list is intended
        if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -q --no-install-recommends $missing; } >"$aptlog" 2>&1; then
            tail -n 5 "$aptlog" >&2
            warn_or_die "apt-get could not install$missing (log: $aptlog)"
        fi
    fi
fi
# A private mount namespace (our mounts appear in no other namespace, see run.sh) and a private
# network namespace (the servers' ports are ours alone; NFS has its own rpcbind there).
if [ -z "${CHIRONFS_BENCH_NS:-}" ]; then
    export CHIRONFS_BENCH_NS=1
    if unshare --mount --net --propagation private true 2>/dev/null; then
        export CHIRONFS_BENCH_NETNS=1
        exec unshare --mount --net --propagation private "$0" "${orig_args[@]}"
    elif unshare --mount --propagation private true 2>/dev/null; then
        exec unshare --mount --propagation private "$0" "${orig_args[@]}"
    fi
fi
if [ "${CHIRONFS_BENCH_NETNS:-}" = 1 ]; then
    ip link set lo up
elif [ "$want_nfs" = 1 ]; then
    warn_or_die "no private network namespace (unshare --net failed): NFS needs its own rpcbind"
fi
tools="fio" transports=""
if [ "$want_ssh" = 1 ]; then
    tools="$tools sshfs /usr/sbin/sshd ssh-keygen"; transports=sshfs
fi
if [ "$want_nfs" = 1 ]; then
    tools="$tools ganesha.nfsd rpcbind cc pkg-config"; transports=${transports:+$transports,}nfs
fi
[ -n "$transports" ] || { echo "nothing to measure" >&2; exit 1; }
for c in $tools; do
    command -v "$c" >/dev/null || { echo "$c missing (scripts/setup.sh installs it)" >&2; exit 1; }
done
py_args+=(--transport "$transports")
target=${CARGO_TARGET_DIR:-$root/target}
if [ "$build" = 1 ]; then
    (cd "$root" && cargo build --release -p chironfs -p netdelay --bin chironfs --bin netdelay)
fi
# Not cargo's: built even with --no-build when missing or older than its source (a no-op then).
[ "$want_nfs" = 0 ] || "$root/tools/fuse-nfs/build.sh" "$target/fuse-nfs"
for b in release/chironfs release/netdelay; do
    [ -x "$target/$b" ] || { echo "$target/$b missing" >&2; exit 1; }
done
if [ "$want_nfs" = 1 ]; then
    [ -x "$target/fuse-nfs/fuse-nfs" ] || { echo "$target/fuse-nfs/fuse-nfs missing" >&2; exit 1; }
    py_args+=(--fuse-nfs "$target/fuse-nfs/fuse-nfs")
fi
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
    # Servers started for this run, if net.py could not stop them (their pid files are ours).
    for f in "$tmp"/sshd*.pid "$tmp"/ganesha*/ganesha.pid "$tmp"/rpcbind.pid; do
        [ -s "$f" ] || continue
        p=$(cat "$f")
        case "$(readlink "/proc/$p/exe" 2>/dev/null)" in
            /usr/sbin/sshd|*/ganesha.nfsd|*/rpcbind) kill "$p" 2>/dev/null ;;
        esac
    done
    # The servers' sessions may take a moment to go, holding their log files open.
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
