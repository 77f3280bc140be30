#!/usr/bin/env bash
# chironfs side-by-side benchmark: one command, as root on Debian 12 (needs cargo):
#
#     bench/run.sh                 # full run, ~18 min on 2 cores
#     bench/run.sh --quick         # smoke run, ~2 min
#
# It installs fio, bindfs, mergerfs and procps with apt-get when missing, builds chironfs
# (cargo build --release), mounts a tmpfs under a fresh temp dir and measures, on that same
# backing storage and in one run: the native directory, chironfs with 2 and 3 replicas,
# bindfs (one branch) and mergerfs (one branch; cache.files=off and cache.files=partial).
# Workloads: sequential write (1 GiB, 1 MiB blocks, fsync at the end), sequential read of it
# (cold after drop_caches, and warm), 4 KiB random read and write (1 and 4 jobs, 20 s each),
# metadata (create/stat/delete 10,000 files of 4 KiB in a tree; delete 200 files of 1 MiB, timed
# until the storage has the space back), a source tree (untar the
# largest crate in ~/.cargo/registry/cache, then cat every file), the daemons' peak RSS, and
# chironfs's RSS after 100,000 files were looked up. Each figure is the median of the rounds
# (and of the passes in them).
# It prints one table and saves it as bench/results/latest.md (raw data: bench/results/raw/).
#
# Options:
#   --quick             small sizes and short runs (smoke test), 1 round
#   --repeat N          rounds per measurement (default 3; medians reported)
#   --passes N          cold reads and metadata runs per round (default 3; --quick: 1): one
#                       of them lasts 0.2-3 s and moves by 10-30% from one to the next
#   --rand-repeat N     rounds of the random-I/O runs (default 1: 6 systems x 4 runs x 20 s
#                       already take 8 minutes; raise it when time allows)
#   --rand-time S       seconds per random-I/O run (default 20; --quick: 3)
#   --only LIST         systems, comma-separated, from: native chironfs-2 chironfs-3 bindfs
#                       mergerfs mergerfs-partial (native is always added: ratios need it),
#                       and on request chironfs-2-devfuse (2 replicas with --io-uring off)
#   --workloads LIST    groups from: seq rand meta tree lookup (default all)
#   --disk DIR          also run everything on a directory of a disk filesystem
#   --tmpfs-size SIZE   size of the tmpfs (default 8g)
#   --tarball FILE      gzip tarball for the tree workload (default: the largest .crate)
#   --no-build          use target/release/chironfs as it is
#   --chironfs BIN      measure this chironfs binary (an older build, say) instead; no build
#   --no-install        do not apt-get anything
#   --io-uring          switch the kernel's FUSE over io_uring on for the run (fuse.enable_uring,
#                       put back at the end): chironfs then serves requests on per-CPU rings;
#                       the other systems (libfuse) do not use it either way
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

orig_args=("$@")
py_args=()
disks=()
tmpfs_size=8g
tarball=""
build=1
given_bin=""
install=1
io_uring=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) py_args+=(--quick) ;;
        --repeat|--passes|--rand-repeat|--rand-time|--only|--workloads)
            [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }
            py_args+=("$1" "$2"); shift ;;
        --disk) [ $# -ge 2 ] || { echo "--disk needs a directory" >&2; exit 2; }
            disks+=("$2"); shift ;;
        --tmpfs-size) tmpfs_size=$2; shift ;;
        --tarball) tarball=$2; shift ;;
        --no-build) build=0 ;;
        --chironfs) [ $# -ge 2 ] || { echo "--chironfs needs a binary" >&2; exit 2; }
            given_bin=$2; build=0; shift ;;
        --no-install) install=0 ;;
        --io-uring) io_uring=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

[ "$(id -u)" = 0 ] || { echo "bench/run.sh must run as root (mounts, drop_caches)" >&2; exit 1; }

# Run in a private mount namespace: our mounts then appear in no other namespace. Otherwise a
# namespace that another program creates meanwhile (`ip netns exec`, `unshare -m`, a container)
# copies our FUSE mounts, and after our umount their superblocks, daemons and memory live on
# until that namespace ends.
if [ -z "${CHIRONFS_BENCH_NS:-}" ] && unshare --mount --propagation private true 2>/dev/null; then
    export CHIRONFS_BENCH_NS=1
    exec unshare --mount --propagation private "$0" "${orig_args[@]}"
fi

if [ "$install" = 1 ]; then
    need=()
    for pair in fio:fio bindfs:bindfs mergerfs:mergerfs ps:procps python3:python3 \
                fusermount3:fuse3 diff:diffutils gzip:gzip tar:tar; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
    done
    if [ ${#need[@]} -gt 0 ]; then
        echo "installing: ${need[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
fi

if [ "$build" = 1 ]; then
    (cd "$root" && cargo build --release --bin chironfs)
fi
chironfs=${given_bin:-$root/target/release/chironfs}
[ -x "$chironfs" ] || { echo "$chironfs missing (build failed?)" >&2; exit 1; }
if [ "$build" = 0 ] && [ -z "$given_bin" ]; then
    newer=$(find "$root/src" "$root/Cargo.toml" "$root/Cargo.lock" -newer "$chironfs" -print -quit)
    [ -z "$newer" ] || echo "WARNING: $newer is newer than $chironfs (--no-build): the figures are not the current source's" >&2
fi

if [ -z "$tarball" ]; then
    tarball=$(ls -S "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/*.crate 2>/dev/null | head -1 || true)
    [ -n "$tarball" ] || { echo "no .crate in ~/.cargo/registry/cache: pass --tarball" >&2; exit 1; }
fi

uring_switch=/sys/module/fuse/parameters/enable_uring
uring_was=""
if [ "$io_uring" = 1 ]; then
    [ -w "$uring_switch" ] || { echo "--io-uring: this kernel has no FUSE over io_uring" >&2; exit 1; }
    uring_was=$(cat "$uring_switch")
fi
tmp=$(mktemp -d /tmp/chironfs-bench.XXXXXX)
disk_dirs=()
cleanup() {
    set +e
    [ -z "$uring_was" ] || echo "$uring_was" > "$uring_switch"
    # Anything still mounted under our temp dir (FUSE mounts first, then the tmpfs).
    for m in $(awk -v t="$tmp" '$5 == t || index($5, t "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
    for d in "${disk_dirs[@]}"; do
        for m in $(awk -v t="$d" '$5 == t || index($5, t "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
            umount "$m" 2>/dev/null || umount -l "$m"
        done
        rm -rf "$d"
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[ "$io_uring" = 0 ] || echo 1 > "$uring_switch"

mkdir "$tmp/tmpfs"
mount -t tmpfs -o "size=$tmpfs_size,mode=0755" chironfs-bench "$tmp/tmpfs"
storage=(--storage "tmpfs=$tmp/tmpfs")
for d in "${disks[@]}"; do
    [ -d "$d" ] || { echo "--disk $d: not a directory" >&2; exit 2; }
    dd=$(mktemp -d "$d/chironfs-bench.XXXXXX")
    disk_dirs+=("$dd")
    storage+=(--storage "disk=$dd")
done

# In the background so that a signal reaches our trap at once; the driver unmounts what it
# mounted when it gets SIGTERM, then the EXIT trap sweeps whatever is left.
# exec: $py must be python itself, not a forked copy of this script that would hold the signal.
(trap - EXIT INT TERM; exec python3 "$here/bench.py" --tmp "$tmp" "${storage[@]}" \
    --chironfs "$chironfs" --tarball "$tarball" "${py_args[@]}") &
py=$!
trap 'kill -TERM "$py" 2>/dev/null; wait "$py" || true; exit 130' INT TERM
rc=0
wait "$py" || rc=$?
exit $rc
