#!/bin/bash
# Resync benchmark (issue 3; on demand, not part of the test suite): chironfs's journal-driven
# online resync against a full `rsync -a --delete` of the same tree state, in the same run.
#
#   1. a tree of FILES small files (1-8 KiB) in DIRS directories on replica 0 (a tmpfs of its
#      own), copied to replica 1 with `cp -a`, mounted as a new 2-replica set;
#   2. `chironctl disable 1`, and a copy of the stale replica 1 is made (`cp -a`);
#   3. PERCENT % of the files are changed through the mount, a quarter each modified, renamed,
#      deleted and created;
#   4. timed: `chironctl resync 1 --wait`, then `rsync -a --delete` of replica 0 into the copy
#      made at step 2 (the same stale state); both trees are checked equal to replica 0.
#
# Usage: bench/resync.sh [--files N] [--dirs N] [--percent P] [--keep]
#   --files N     number of files (default 100000)
#   --dirs N      number of directories (default 1000)
#   --percent P   share of files changed, in percent (default 1)
#   --keep        keep the tmpfs and print where it is (default: unmounted and removed)
# Needs root, rsync, python3 and a release build (built here with cargo if missing).
set -eu

files=100000
dirs=1000
percent=1
keep=0
while [ "$#" -gt 0 ]; do
    case "$1" in
    --files) files=$2; shift ;;
    --dirs) dirs=$2; shift ;;
    --percent) percent=$2; shift ;;
    --keep) keep=1 ;;
    -h | --help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "resync.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

[ "$(id -u)" = 0 ] || { echo "resync.sh: run as root (it mounts a tmpfs and FUSE)" >&2; exit 1; }
for t in rsync python3; do
    command -v "$t" >/dev/null || { echo "resync.sh: $t is not installed" >&2; exit 1; }
done

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
if [ ! -x "$target/release/chironfs" ] || [ ! -x "$target/release/chironctl" ]; then
    (cd "$root" && cargo build --release --quiet)
fi
chironfs=$target/release/chironfs
chironctl=$target/release/chironctl

work=$(mktemp -d /tmp/chironfs-resync-bench.XXXXXX)
mount -t tmpfs -o size=8g chironfs-bench "$work"
mnt=$work/mnt
ctl=$work/ctl.sock
pid=""
cleanup() {
    if mountpoint -q "$mnt" 2>/dev/null; then
        umount "$mnt" 2>/dev/null || umount -l "$mnt"
    fi
    if [ -n "$pid" ]; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    if [ "$keep" = 1 ]; then
        echo "kept: $work (umount $work when done)"
    else
        umount "$work" && rmdir "$work"
    fi
}
trap cleanup EXIT
mkdir -p "$work/r0" "$work/r1" "$mnt"

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }

echo "== building a tree of $files files in $dirs directories"
t0=$(now)
python3 - "$work/r0" "$files" "$dirs" <<'EOF'
import os, random, sys
root, files, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(42)
for d in range(dirs):
    os.mkdir(f"{root}/d{d:04}")
for i in range(files):
    with open(f"{root}/d{i % dirs:04}/f{i:06}", "wb") as f:
        f.write(rnd.randbytes(rnd.randint(1024, 8192)))
EOF
cp -a "$work/r0/." "$work/r1/"
echo "   $(secs "$t0" "$(now)") s; $(du -sh "$work/r0" | cut -f1) per replica"

"$chironfs" -o allow_other -c "$ctl" --status-file "$work/status" --log "$work/chironfs.log" \
    "$work/r0=$work/r1" "$mnt"
pid=$(sed -n 's/^pid=//p' "$work/status")
# Let the journal be compacted (every replica in, nothing open): the usual steady state.
sleep 1.2
echo steady >"$mnt/steady"

echo "== replica 1 out of service; a copy of it for rsync"
"$chironctl" -s "$ctl" disable 1 >/dev/null
cp -a "$work/r1" "$work/stale-copy"
rm -rf "$work/stale-copy/.chironfs"

echo "== changing $percent % of the files through the mount"
t0=$(now)
python3 - "$mnt" "$files" "$dirs" "$percent" <<'EOF'
import os, random, sys
mnt, files, dirs, percent = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rnd = random.Random(7)
n = int(files * percent / 100)
picked = rnd.sample(range(files), n)
path = lambda i: f"{mnt}/d{i % dirs:04}/f{i:06}"
for k, i in enumerate(picked):
    kind = k % 4
    if kind == 0:
        with open(path(i), "r+b") as f:
            f.seek(rnd.randint(0, 512))
            f.write(rnd.randbytes(256))
    elif kind == 1:
        os.rename(path(i), f"{mnt}/d{rnd.randrange(dirs):04}/renamed{i:06}")
    elif kind == 2:
        os.remove(path(i))
    else:
        with open(f"{mnt}/d{rnd.randrange(dirs):04}/new{i:06}", "wb") as f:
            f.write(rnd.randbytes(rnd.randint(1024, 8192)))
print(f"   {n} changes")
EOF
echo "   $(secs "$t0" "$(now)") s; journal: $(wc -l <"$work/r0/.chironfs/journal") lines"

echo "== chironctl resync 1 --wait"
# `--wait` polls at 50, 100, 200, then every 400 ms, and includes chironctl's own start; a tight loop of
# `chironctl status --json` alongside sees when the daemon actually finished.
t0=$(now)
"$chironctl" -s "$ctl" resync 1 --wait >"$work/wait.out" &
waiter=$!
until "$chironctl" -s "$ctl" status --json | grep -q '"state": *"done"'; do
    kill -0 "$waiter" 2>/dev/null || break
done
t_done=$(secs "$t0" "$(now)")
wait "$waiter"
t_resync=$(secs "$t0" "$(now)")
tail -n 1 "$work/wait.out"
grep -o 'resync of replica [^ ]*: [a-z]*[^(]*' "$work/chironfs.log" | tail -n 1 | sed 's/^/   log: /'

echo "== rsync -a --delete of the same tree state into the stale copy"
t0=$(now)
rsync -a --delete --exclude=/.chironfs "$work/r0/" "$work/stale-copy/"
t_rsync=$(secs "$t0" "$(now)")

echo "== checking"
diff -r --exclude=.chironfs "$work/r0" "$work/r1" >/dev/null || { echo "replica 1 differs from replica 0" >&2; exit 1; }
diff -r --exclude=.chironfs "$work/r0" "$work/stale-copy" >/dev/null || { echo "the rsync copy differs" >&2; exit 1; }
echo "   replica 1 and the rsync copy equal replica 0"

ratio() { python3 -c "print(f'{$1 / $2 * 100:.1f}')"; }
echo
echo "files=$files dirs=$dirs changed=$percent%"
echo "rsync -a --delete:                 $t_rsync s"
echo "chironctl resync --wait:           $t_resync s  ($(ratio "$t_resync" "$t_rsync") % of rsync; includes the client's polling)"
echo "resync done (status polled):       $t_done s  ($(ratio "$t_done" "$t_rsync") % of rsync; goal: <= 10 %)"
t_daemon=$(grep -o '[0-9.]* s in all' "$work/chironfs.log" | tail -n 1 | cut -d' ' -f1)
echo "resync as timed by the daemon:     $t_daemon s  ($(ratio "$t_daemon" "$t_rsync") % of rsync)"
