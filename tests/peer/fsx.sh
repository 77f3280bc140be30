#!/bin/bash
# fsx (File System eXerciser, crate fsx 0.3.2) through a 2-replica chironfs mount on tmpfs, then
# a byte-for-byte comparison of the two replicas' copies of the file: equal content through the
# mount is not enough.
#
# Usage: tests/peer/fsx.sh [--native] [-N OPS] [-S SEED] [--timeout SEC] [--artifacts DIR]
#   --native        run on a plain tmpfs directory instead (the reference numbers)
#   -N OPS          number of operations (default 100000, env FSX_OPS)
#   -S SEED         random seed (default 1, env FSX_SEED)
#   --timeout SEC   watchdog (default 900, env FSX_TIMEOUT_SEC): then the FUSE connection is
#                   aborted through fusectl, fsx is killed and the run fails
#   --artifacts DIR keep fsx's artifacts (.fsxlog, .fsxgood) there; by default they go to a
#                   temp dir that is kept and printed only if the run fails
# Env: CHIRONFS, CHIRONFS_OPTS and the PEER_* settings of lib.sh.
set -eu
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

native=0
ops=${FSX_OPS:-100000}
seed=${FSX_SEED:-1}
timeout=${FSX_TIMEOUT_SEC:-900}
artifacts=""
while [ "$#" -gt 0 ]; do
    case "$1" in
    --native) native=1 ;;
    -N) ops=$2; shift ;;
    -S) seed=$2; shift ;;
    --artifacts) artifacts=$2; shift ;;
    --timeout) timeout=$2; shift ;;
    -h | --help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "fsx.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
command -v fsx >/dev/null 2>&1 || { echo "fsx.sh: fsx not installed (run scripts/setup.sh)" >&2; exit 1; }

peer_init fsx

# fsx 0.3.2 eventually issues a zero-length posix_fallocate and reports a false failure, so
# that operation stays off (see shared/design/peer-suites.md).
cat >"$PEER_WORK/fsx.toml" <<'EOF'
flen = 262144
[opsize]
max = 65536
min = 0
align = 1
[weights]
close_open = 1
read = 10
write = 10
mapread = 10
mapwrite = 10
invalidate = 1
truncate = 1
fsync = 1
fdatasync = 1
posix_fallocate = 0
punch_hole = 0
sendfile = 1
posix_fadvise = 1
copy_file_range = 1
EOF

peer_tmpfs "$PEER_WORK/tmpfs"
if [ "$native" = 1 ]; then
    target=$PEER_WORK/tmpfs/native
    mkdir -p "$target"
    what="native tmpfs"
else
    rep1=$PEER_WORK/tmpfs/rep1 rep2=$PEER_WORK/tmpfs/rep2
    target=$PEER_WORK/mnt
    peer_mount "$target" "$rep1" "$rep2"
    what="chironfs, 2 replicas on tmpfs"
fi

keep_artifacts=1
if [ -z "$artifacts" ]; then
    artifacts=$(mktemp -d /tmp/chironfs-fsx-artifacts.XXXXXX)
    keep_artifacts=0
fi
mkdir -p "$artifacts"

echo "fsx: $what: $ops ops, seed $seed, file $target/fsxfile"
start=$(date +%s.%N)
rc=0
abort_mnt=""
[ "$native" = 1 ] || abort_mnt=$target
peer_watchdog "$timeout" "$abort_mnt" "$artifacts/fsx.out" \
    fsx -v -f "$PEER_WORK/fsx.toml" -S "$seed" -N "$ops" -P "$artifacts" "$target/fsxfile" || rc=$?
end=$(date +%s.%N)
elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
grep -v "^\[INFO  *fsx\] *[0-9]" "$artifacts/fsx.out" | tail -n 20
done_ops=$ops
if [ "$rc" != 0 ]; then
    # The operation that failed: the last one fsx logged (-v logs each one before doing it).
    done_ops=$(grep -o '^\[[A-Z]* *fsx\] *[0-9]\+' "$artifacts/fsx.out" | awk '{ n = $NF } END { print n + 0 }')
fi
rate=$(awk -v n="$done_ops" -v t="$elapsed" 'BEGIN { if (t > 0) printf "%.0f", n / t; else print "-" }')
if [ "$rc" = 0 ]; then
    echo "fsx: $what: $ops ops in ${elapsed}s ($rate ops/s)"
else
    echo "fsx: $what: FAILED at op $done_ops of $ops after ${elapsed}s (fsx exit $rc)"
    [ "$PEER_WATCHDOG_FIRED" = 0 ] || echo "fsx: hung: stopped by the watchdog after ${timeout}s"
fi

fail=0
[ "$rc" = 0 ] || fail=1
if [ "$native" = 0 ]; then
    if [ "$rc" = 0 ]; then
        # Let the daemon finish anything in flight, then compare the replicas' copies.
        sync "$target/fsxfile" 2>/dev/null || true
        if cmp "$rep1/fsxfile" "$rep2/fsxfile" && cmp "$target/fsxfile" "$rep1/fsxfile"; then
            echo "fsx: replicas identical ($(stat -c %s "$rep1/fsxfile") bytes)"
        else
            echo "fsx: FAIL: the replicas' copies of fsxfile differ" >&2
            cp "$rep1/fsxfile" "$artifacts/fsxfile.rep1" 2>/dev/null || true
            cp "$rep2/fsxfile" "$artifacts/fsxfile.rep2" 2>/dev/null || true
            fail=1
        fi
    fi
    cp "$PEER_LAST_LOG" "$artifacts/chironfs.log" 2>/dev/null || true
fi

if [ "$fail" = 0 ]; then
    [ "$keep_artifacts" = 1 ] || rm -rf "$artifacts"
    echo "fsx: PASS"
else
    echo "fsx: FAIL (artifacts in $artifacts)" >&2
    exit 1
fi
