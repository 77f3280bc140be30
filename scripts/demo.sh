#!/bin/bash
# Try chironfs: installs what is missing, builds, mounts a 2-replica filesystem, writes a file
# through it and shows it in both replicas.
# Usage (as root):
#   scripts/demo.sh          mount /var/lib/chironfs-demo/replica{1,2} on /mnt/chironfs-demo
#   scripts/demo.sh stop     unmount it (the same as: umount /mnt/chironfs-demo)
set -eu
cd "$(dirname "$0")/.."
repo=$(pwd)

DEMO=/var/lib/chironfs-demo
MNT=/mnt/chironfs-demo
REP1=$DEMO/replica1
REP2=$DEMO/replica2
STATUS=$DEMO/status
SOCKET=$DEMO/ctl.sock
LOG=$DEMO/chironfs.log
BIN=${CHIRONFS:-$repo/target/release/chironfs}
CTL=$repo/target/release/chironctl

die() { echo "demo.sh: error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (mounting needs it)"

# Mounted, as /proc/self/mountinfo tells (`mountpoint` would stat the mount point, which fails
# or hangs on a dead mount).
mounted() { awk -v m="$MNT" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }

# The daemon serving the demo mount: the chironfs process whose last argument is $MNT.
daemon_pid() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/exe" 2>/dev/null)" = "$BIN" ] || continue
        if [ "$(tr '\0' '\n' <"$p/cmdline" 2>/dev/null | tail -n 1)" = "$MNT" ]; then
            echo "${p#/proc/}"
            return 0
        fi
    done
    return 1
}

stop() {
    local pid i
    pid=$(daemon_pid) || pid=""
    if mounted; then
        if ! umount "$MNT"; then
            echo "demo.sh: $MNT is busy; processes using it:" >&2
            fuser -vm "$MNT" >&2 || true
            die "stop them (or leave the directory), then run: scripts/demo.sh stop"
        fi
        echo "demo.sh: unmounted $MNT"
    else
        echo "demo.sh: $MNT is not mounted"
    fi
    if [ -n "$pid" ]; then
        i=0
        while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        if kill -0 "$pid" 2>/dev/null; then
            kill -s TERM "$pid" 2>/dev/null || true
        fi
    fi
    echo "demo.sh: the replicas stay in $REP1 and $REP2 (rm -rf $DEMO to forget them)"
}

case "${1:-start}" in
stop) stop; exit 0 ;;
start) ;;
*) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac

if mounted; then
    echo "demo.sh: chironfs is already mounted on $MNT (stop it with: scripts/demo.sh stop)"
    exit 0
fi

echo "demo.sh: installing what is missing (scripts/setup.sh)"
scripts/setup.sh
echo "demo.sh: building (scripts/build.sh)"
scripts/build.sh
[ -x "$BIN" ] || die "the build produced no $BIN"

mkdir -p "$REP1" "$REP2" "$MNT"
rm -f "$SOCKET"
echo "demo.sh: mounting: $BIN -o allow_other --status-file $STATUS -c $SOCKET --log $LOG $REP1=$REP2 $MNT"
# It daemonizes and returns once mounted; it is waited for in the background, so that the demo
# cannot hang on it.
"$BIN" -o allow_other --status-file "$STATUS" -c "$SOCKET" --log "$LOG" "$REP1=$REP2" "$MNT" &
launcher=$!
i=0
while kill -0 "$launcher" 2>/dev/null && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
if kill -0 "$launcher" 2>/dev/null; then
    mounted || die "chironfs neither mounted $MNT nor returned within 30 s (see $LOG)"
    echo "demo.sh: warning: chironfs has mounted $MNT but not returned after 30 s" >&2
    disown "$launcher"
else
    rc=0
    wait "$launcher" || rc=$?
    [ "$rc" = 0 ] || die "chironfs failed (exit $rc; see $LOG)"
    i=0
    while ! mounted && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    mounted || die "chironfs returned but $MNT is not mounted (see $LOG)"
fi

echo "hello from chironfs, written through $MNT at $(date)" >"$MNT/hello.txt"
echo
echo "Through the mount:"
ls -l "$MNT/hello.txt"
for r in "$REP1" "$REP2"; do
    echo "In replica $r:"
    ls -l "$r/hello.txt"
    printf '    %s\n' "$(cat "$r/hello.txt")"
done
if cmp -s "$REP1/hello.txt" "$REP2/hello.txt"; then
    echo "Both replicas hold the same bytes."
else
    die "the replicas' copies of hello.txt differ"
fi
if [ -x "$CTL" ]; then
    echo
    echo "Replica status (chironctl -s $SOCKET status):"
    "$CTL" -s "$SOCKET" status || true
fi

cat <<EOF

chironfs is running (daemon pid $(daemon_pid || echo '?')):
  mount point     $MNT        (use it like any directory)
  replicas        $REP1
                  $REP2
  status file     $STATUS
  control socket  $SOCKET     ($CTL -s $SOCKET status)
  log             $LOG
Stop it with:  umount $MNT     or     scripts/demo.sh stop
EOF
