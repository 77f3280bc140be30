#!/bin/bash
# Wake-up benchmark (issue 6; on demand, not part of the test suite): how much of a small
# metadata operation through FUSE is the daemon's work, and how much is waking threads on
# other CPUs. A caller unlinks FILES files of 4 KiB one by one (after a stat of each, as the
# main benchmark's delete phase), through chironfs with 2 replicas and through mergerfs (one
# branch, the main benchmark's options), with the caller and the daemon placed three ways:
#   free    the scheduler places both (what users get);
#   same    both pinned to CPU 0: every wake-up is on the waking CPU;
#   split   caller on CPU 0, daemon on CPU 1: every request and every answer crosses CPUs.
# It prints the median microseconds per unlink over ROUNDS rounds, for each system and
# placement. The gap between "same" and "free" is what the cross-CPU wake-ups cost; the gap
# between the systems in "same" is their own work (chironfs unlinks on two replicas).
#
# Usage: bench/wakeups.sh [--files N] [--rounds N]
#   --files N     files unlinked per round (default 3000)
#   --rounds N    rounds per system and placement (default 5)
# Needs root, two CPUs, mergerfs, python3 and a release build (built here with cargo if
# missing).
set -eu

files=3000
rounds=5
while [ "$#" -gt 0 ]; do
    case "$1" in
    --files) files=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    -h | --help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "wakeups.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

[ "$(id -u)" = 0 ] || { echo "wakeups.sh: run as root (it mounts a tmpfs and FUSE)" >&2; exit 1; }
for t in mergerfs python3 taskset; do
    command -v "$t" >/dev/null || { echo "wakeups.sh: $t is not installed" >&2; exit 1; }
done
[ "$(nproc)" -ge 2 ] || { echo "wakeups.sh: needs at least two CPUs" >&2; exit 1; }

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
[ -x "$target/release/chironfs" ] || (cd "$root" && cargo build --release --quiet --bin chironfs)
chironfs=$target/release/chironfs
# mergerfs as the main benchmark mounts it.
mergerfs_opts=$(cd "$root/bench" && python3 -B -c 'import bench; print(",".join(bench.MOUNT_OPTS["mergerfs"]))')

work=$(mktemp -d /tmp/chironfs-wakeups.XXXXXX)
mount -t tmpfs -o size=2g chironfs-bench "$work"
mnt=$work/mnt
cleanup() {
    if mountpoint -q "$mnt" 2>/dev/null; then
        umount "$mnt" 2>/dev/null || umount -l "$mnt"
    fi
    umount "$work" && rmdir "$work"
}
trap cleanup EXIT
mkdir -p "$mnt"

# mount SYSTEM DAEMON_CPU: mounts SYSTEM on $mnt over fresh directories, the daemon pinned to
# DAEMON_CPU (empty: not pinned).
mount_system() {
    local pin=()
    [ -n "$2" ] && pin=(taskset -c "$2")
    rm -rf "$work/r0" "$work/r1"
    mkdir "$work/r0" "$work/r1"
    case $1 in
    chironfs-2) "${pin[@]}" "$chironfs" --status-file "$work/status" -c "$work/ctl.sock" \
        "$work/r0=$work/r1" "$mnt" ;;
    mergerfs) "${pin[@]}" mergerfs -o "$mergerfs_opts" "$work/r0" "$mnt" ;;
    esac
    for _ in $(seq 100); do mountpoint -q "$mnt" && return; sleep 0.1; done
    echo "wakeups.sh: $1 did not mount" >&2
    exit 1
}

# unlink_us CALLER_CPU: median microseconds per unlink over the rounds, the caller pinned to
# CALLER_CPU (empty: not pinned).
unlink_us() {
    local pin=()
    [ -n "$1" ] && pin=(taskset -c "$1")
    "${pin[@]}" python3 - "$mnt" "$files" "$rounds" <<'EOF'
import os, statistics, sys, time
mnt, files, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
per_op = []
for r in range(rounds):
    d = os.path.join(mnt, f"round{r}")
    os.mkdir(d)
    paths = [os.path.join(d, f"f{i:05d}") for i in range(files)]
    for p in paths:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"z" * 4096)
        os.close(fd)
    for p in paths:
        os.stat(p)
    t0 = time.perf_counter()
    for p in paths:
        os.unlink(p)
    per_op.append((time.perf_counter() - t0) / files * 1e6)
    os.rmdir(d)
print(f"{statistics.median(per_op):.1f}")
EOF
}

printf '%-12s %10s %10s %10s   (us per unlink, median of %d rounds of %d)\n' \
    system free same split "$rounds" "$files"
for system in chironfs-2 mergerfs; do
    row=()
    for placement in free same split; do
        case $placement in
        free) caller=""; daemon="" ;;
        same) caller=0; daemon=0 ;;
        split) caller=0; daemon=1 ;;
        esac
        mount_system "$system" "$daemon"
        row+=("$(unlink_us "$caller")")
        umount "$mnt"
        sleep 0.3
    done
    printf '%-12s %10s %10s %10s\n' "$system" "${row[@]}"
done
