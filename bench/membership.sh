#!/bin/bash
# Online membership benchmark (issue 20; on demand, not part of the test suite): how long each
# step of changing the replica set while it serves takes, with a writer running throughout,
# against `cp -a` of the same tree in the same run (what an offline copy to a new replica costs).
#
#   1. a new 2-replica set on a tmpfs of its own; FILES small files (1-8 KiB) in DIRS
#      directories written through the mount;
#   2. a writer rewrites files through the mount in the background (one every 2 ms);
#   3. timed: `chironctl add r2 --wait`, `chironctl remove r0`, `chironctl replace r1 r3 --wait`,
#      `chironctl verify --content`, then an unmount and a mount with the updated replica list;
#   4. timed reference: `cp -a` of replica r2 to a fresh directory.
# Every step must succeed, and the writer must never see an error.
#
# Usage: bench/membership.sh [--files N] [--dirs N]
#   --files N     number of files (default 10000)
#   --dirs N      number of directories (default 100)
# Needs root, python3 and a release build (built here with cargo if missing).
set -eu

files=10000
dirs=100
while [ "$#" -gt 0 ]; do
    case "$1" in
    --files) files=$2; shift ;;
    --dirs) dirs=$2; shift ;;
    *) echo "usage: $0 [--files N] [--dirs N]" >&2; exit 2 ;;
    esac
    shift
done

repo=$(cd "$(dirname "$0")/.." && pwd)
bin=$repo/target/release
if ! [ -x "$bin/chironfs" ] || ! [ -x "$bin/chironctl" ]; then
    (cd "$repo" && cargo build --release --quiet)
fi

work=$(mktemp -d /tmp/chironfs-membership-bench.XXXXXX)
writer=
# unmount: unmounts the chironfs mount and waits (10 s at most) for its daemon to be gone.
unmount() {
    local i=0
    fusermount -u "$work/mnt" 2>/dev/null || umount -l "$work/mnt" 2>/dev/null || true
    while [ -e "$work/ctl.sock" ] && [ "$i" -lt 200 ]; do
        sleep 0.05
        i=$((i + 1))
    done
}
cleanup() {
    [ -z "$writer" ] || kill "$writer" 2>/dev/null || true
    unmount
    umount "$work" 2>/dev/null || umount -l "$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mount -t tmpfs -o size=4g tmpfs "$work"
mkdir -p "$work/r0" "$work/r1" "$work/r2" "$work/r3" "$work/mnt"
ctl() { "$bin/chironctl" -s "$work/ctl.sock" "$@"; }
mountit() {
    "$bin/chironfs" --status-file "$work/status" -c "$work/ctl.sock" --log "$work/log" "$1" \
        "$work/mnt"
}
# now: seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }

mountit "$work/r0=$work/r1"
python3 - "$work/mnt/tree" "$files" "$dirs" <<'EOF'
import os, sys
root, files, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for d in range(dirs):
    os.makedirs(f"{root}/d{d}", exist_ok=True)
for i in range(files):
    with open(f"{root}/d{i % dirs}/f{i}", "wb") as f:
        f.write(os.urandom(1024 * (1 + i % 8)))
EOF
(
    n=0
    mkdir -p "$work/mnt/w"
    while :; do
        echo "write $n" >"$work/mnt/w/f$((n % 200))" || { echo "writer: error" >&2; exit 1; }
        n=$((n + 1))
        sleep 0.002
    done
) &
writer=$!

t=$(now); ctl add "$work/r2" --wait >/dev/null; add=$(since "$t")
t=$(now); ctl remove "$work/r0" >/dev/null; remove=$(since "$t")
t=$(now); ctl replace "$work/r1" "$work/r3" --wait >/dev/null; replace=$(since "$t")
t=$(now); ctl verify --content >/dev/null; verify=$(since "$t")
# Still running: it stops at its first error.
kill -0 "$writer" 2>/dev/null || { echo "the writer saw an error" >&2; exit 1; }
kill "$writer"
wait "$writer" 2>/dev/null || true
writer=
t=$(now)
unmount
mountit "$work/r2=$work/r3"
restart=$(since "$t")
ctl verify --content >/dev/null
unmount
t=$(now); cp -a "$work/r2" "$work/copy"; copy=$(since "$t")

cat <<EOF
online membership, $files files in $dirs directories, writer running (seconds)
| step | time |
|---|---:|
| chironctl add --wait (new replica filled) | $add |
| chironctl remove | $remove |
| chironctl replace --wait (new one filled, old one out) | $replace |
| chironctl verify --content (the 2 replicas left) | $verify |
| unmount + mount with the updated list | $restart |
| reference: cp -a of one replica | $copy |

The daemon's own account of the two resyncs (chironctl --wait polls every 50-400 ms):
EOF
grep -o 'back in service after resync ([^)]*)' "$work/log" | sed 's/^/    /'
