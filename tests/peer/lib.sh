# shellcheck shell=bash
# Shared helpers for the peer test scripts (fsx.sh, pjdfstest.sh). Source it from bash:
#
#   . "$(dirname "$0")/lib.sh"
#   peer_init NAME                 # temp workspace $PEER_WORK, teardown trap on EXIT/INT/TERM/HUP
#   peer_tmpfs DIR                 # mount a tmpfs on DIR (unmounted by the teardown)
#   peer_mount MNT REP1 REP2 ...   # mount chironfs (foreground daemon in the background), wait
#   peer_unmount MNT               # umount; if busy or hung: fusectl abort, then umount -l
#   peer_fuse_abort MNT            # abort the FUSE connection of MNT through fusectl
#   peer_compare_replicas R1 R2 .. # same tree, types, modes, owners, sizes, links, bytes
#
# Environment:
#   CHIRONFS            the chironfs binary (default: $CARGO_BIN_EXE_chironfs, then
#                       target/release/chironfs of this repository)
#   CHIRONFS_OPTS       extra options for chironfs, word-split (default: none)
#   PEER_DAEMONIZE=1    let chironfs daemonize instead of running it with -f in the background;
#                       its pid is then found by its (unique) mount point in /proc/*/cmdline
#   PEER_MOUNT_TIMEOUT  seconds to wait for a mount to appear (default 30)
#   PEER_UMOUNT_TIMEOUT seconds to let a plain umount finish before aborting (default 10)
#   PEER_COMPARE_EXCLUDE top-level names ignored when comparing replicas (default ".chironfs")
#   PEER_KEEP=1         keep the workspace (not mounted) for inspection
#
# Every mount made here is unmounted by the teardown, every process started here is killed by
# its recorded pid, nothing else is touched.

PEER_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PEER_REPO=$(cd "$PEER_LIB_DIR/../.." && pwd)
PEER_WORK=""
PEER_FUSE_MOUNTS=()   # chironfs mount points, in mount order
PEER_TMPFS_MOUNTS=()  # tmpfs mount points, in mount order
PEER_PIDS=()          # daemon pids (chironfs), parallel to PEER_FUSE_MOUNTS
PEER_EXTRA_PIDS=()    # other processes to stop at teardown (a daemonizing launcher)
PEER_MOUNT_SEQ=0

peer_log() { printf '%s: %s\n' "${PEER_NAME:-peer}" "$*" >&2; }
peer_die() { peer_log "error: $*"; exit 1; }

# peer_init NAME: workspace and teardown trap. Must run as root.
peer_init() {
    PEER_NAME=$1
    [ "$(id -u)" = 0 ] || peer_die "must run as root (mounts filesystems)"
    # Short: pjdfstest binds unix sockets by absolute path (108 bytes at most) below it.
    PEER_WORK=$(mktemp -d "/tmp/chironfs-$PEER_NAME.XXXXXX")
    # Traversable by the unprivileged users that pjdfstest switches to.
    chmod 0755 "$PEER_WORK"
    trap 'peer_teardown' EXIT
    trap 'peer_log "interrupted"; exit 130' INT
    trap 'peer_log "terminated"; exit 143' TERM HUP
}

# peer_chironfs: print the path of the chironfs binary, or fail.
peer_chironfs() {
    local bin=${CHIRONFS:-${CARGO_BIN_EXE_chironfs:-$PEER_REPO/target/release/chironfs}}
    [ -x "$bin" ] || peer_die "chironfs binary not found at $bin (run scripts/build.sh, or set CHIRONFS)"
    printf '%s\n' "$bin"
}

# peer_mount_field MNT N: field N of MNT's (last) line in /proc/self/mountinfo. The paths this
# library mounts contain no blanks, so no octal unescaping is needed.
peer_mount_field() {
    awk -v m="$1" -v f="$2" '$5 == m { v = $f } END { if (v != "") print v }' /proc/self/mountinfo
}

# peer_fstype MNT: filesystem type of MNT (the field after " - "), empty if not mounted.
peer_fstype() {
    awk -v m="$1" '$5 == m { for (i = 7; i <= NF; i++) if ($i == "-") { t = $(i + 1); break } }
        END { if (t != "") print t }' /proc/self/mountinfo
}

peer_is_mounted() { [ -n "$(peer_mount_field "$1" 5)" ]; }

# peer_tmpfs DIR: mount a fresh tmpfs on DIR (created if needed).
peer_tmpfs() {
    local dir
    mkdir -p "$1"
    dir=$(cd "$1" && pwd -P)
    PEER_TMPFS_MOUNTS+=("$dir")
    mount -t tmpfs -o mode=0755 "chironfs-peer-tmpfs" "$dir"
}

# peer_pid_alive PID: true while PID exists and is not a zombie.
peer_pid_alive() {
    local state
    state=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

# peer_wait_mounted MNT PID TIMEOUT: poll until MNT is a FUSE mount; fail if PID dies first.
peer_wait_mounted() {
    local mnt=$1 pid=$2 timeout=$3 i=0
    while [ "$i" -lt $((timeout * 10)) ]; do
        case "$(peer_fstype "$mnt")" in fuse*) return 0 ;; esac
        if [ -n "$pid" ] && ! peer_pid_alive "$pid"; then
            return 1
        fi
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

# peer_find_daemon MNT BIN [EXCEPT]: pid of the process running BIN whose last argument is MNT
# (other than EXCEPT).
peer_find_daemon() {
    local mnt=$1 bin=$2 except=${3:-} p args
    for p in /proc/[0-9]*; do
        [ "${p#/proc/}" != "$except" ] || continue
        [ "$(readlink "$p/exe" 2>/dev/null)" = "$(readlink -f "$bin")" ] || continue
        args=$(tr '\0' '\n' <"$p/cmdline" 2>/dev/null | tail -n 1) || continue
        if [ "$args" = "$mnt" ]; then
            printf '%s\n' "${p#/proc/}"
            return 0
        fi
    done
    return 1
}

# peer_mount MNT REP...: mount chironfs with the given replicas on MNT (created if needed) and
# wait until the mount is there. Sets PEER_LAST_PID, PEER_LAST_LOG, PEER_LAST_STATUS,
# PEER_LAST_SOCKET.
peer_mount() {
    local mnt=$1 bin spec rep pid="" n timeout=${PEER_MOUNT_TIMEOUT:-30} launcher launcher_rc i
    shift
    [ "$#" -ge 1 ] || peer_die "peer_mount: no replicas"
    bin=$(peer_chironfs)
    mkdir -p "$mnt"
    mnt=$(cd "$mnt" && pwd -P)
    spec=""
    for rep in "$@"; do
        mkdir -p "$rep"
        rep=$(cd "$rep" && pwd -P)
        spec=${spec:+$spec=}$rep
    done
    PEER_MOUNT_SEQ=$((PEER_MOUNT_SEQ + 1))
    n=$PEER_MOUNT_SEQ
    PEER_LAST_LOG=$PEER_WORK/chironfs-$n.log
    PEER_LAST_STATUS=$PEER_WORK/chironfs-$n.status
    PEER_LAST_SOCKET=$PEER_WORK/chironfs-$n.sock
    local -a opts
    # shellcheck disable=SC2206 # CHIRONFS_OPTS is a word-split list of options by design
    opts=(-o allow_other --status-file "$PEER_LAST_STATUS" -c "$PEER_LAST_SOCKET" ${CHIRONFS_OPTS:-})
    # Record the mount point before starting, so that the teardown looks at it whatever happens.
    PEER_FUSE_MOUNTS+=("$mnt")
    if [ "${PEER_DAEMONIZE:-0}" = 1 ]; then
        # It must return once mounted; run it in the background so that a launcher that never
        # returns cannot hang the script, and give it the mount timeout to do both.
        "$bin" "${opts[@]}" "$spec" "$mnt" >"$PEER_LAST_LOG" 2>&1 </dev/null &
        launcher=$!
        PEER_EXTRA_PIDS+=("$launcher")
        i=0
        while peer_pid_alive "$launcher" && [ "$i" -lt $((timeout * 10)) ]; do
            sleep 0.1
            i=$((i + 1))
        done
        pid=$(peer_find_daemon "$mnt" "$bin" "$launcher") || pid=""
        if peer_pid_alive "$launcher"; then
            PEER_PIDS+=("$pid")
            cat "$PEER_LAST_LOG" >&2
            peer_die "chironfs (daemonizing) has not returned after ${timeout}s"
        fi
        launcher_rc=0
        wait "$launcher" || launcher_rc=$?
        if [ "$launcher_rc" != 0 ]; then
            PEER_PIDS+=("$pid")
            cat "$PEER_LAST_LOG" >&2
            peer_die "chironfs (daemonizing) failed with exit $launcher_rc; log above"
        fi
    else
        "$bin" -f "${opts[@]}" "$spec" "$mnt" >"$PEER_LAST_LOG" 2>&1 </dev/null &
        pid=$!
        disown "$pid" # its end is watched through /proc; no job report if it has to be killed
    fi
    PEER_PIDS+=("$pid")
    # shellcheck disable=SC2034 # for the calling script
    PEER_LAST_PID=$pid
    if ! peer_wait_mounted "$mnt" "$pid" "$timeout"; then
        cat "$PEER_LAST_LOG" >&2
        peer_die "chironfs did not mount $mnt within ${timeout}s (log above)"
    fi
    peer_log "mounted chironfs (pid ${pid:-unknown}) on $mnt: $spec"
}

# peer_fusectl_dir: set PEER_FUSECTL_DIR to a directory where fusectl is mounted, mounting it
# on a private directory if it is nowhere (peer_fusectl_release unmounts that one again).
PEER_FUSECTL_DIR=""
PEER_FUSECTL_OWN=""
peer_fusectl_dir() {
    PEER_FUSECTL_DIR=$(awk '$9 == "fusectl" { print $5; exit }' /proc/self/mountinfo)
    [ -z "$PEER_FUSECTL_DIR" ] || return 0
    PEER_FUSECTL_OWN=$(mktemp -d /tmp/chironfs-fusectl.XXXXXX)
    if ! mount -t fusectl none "$PEER_FUSECTL_OWN"; then
        rmdir "$PEER_FUSECTL_OWN"
        PEER_FUSECTL_OWN=""
        return 1
    fi
    PEER_FUSECTL_DIR=$PEER_FUSECTL_OWN
}

peer_fusectl_release() {
    if [ -n "$PEER_FUSECTL_OWN" ]; then
        umount "$PEER_FUSECTL_OWN" && rmdir "$PEER_FUSECTL_OWN"
        PEER_FUSECTL_OWN=""
    fi
}

# peer_fuse_abort MNT: abort MNT's FUSE connection. The connection's directory in fusectl is
# named after the device number of the mount as the kernel encodes it (MAJOR << 20 | MINOR;
# the major is 0 for FUSE, so it is the minor), read from MNT's line in /proc/self/mountinfo:
# a stat of a hung mount would hang too.
peer_fuse_abort() {
    local mnt=$1 devno major minor conn rc=0
    devno=$(peer_mount_field "$mnt" 3)
    [ -n "$devno" ] || { peer_log "abort: $mnt is not mounted"; return 1; }
    major=${devno%%:*} minor=${devno#*:}
    conn=$(((major << 20) | minor))
    peer_fusectl_dir || { peer_log "abort: cannot mount fusectl"; return 1; }
    if [ -e "$PEER_FUSECTL_DIR/$conn/abort" ]; then
        echo 1 >"$PEER_FUSECTL_DIR/$conn/abort" || rc=1
        peer_log "aborted FUSE connection $conn of $mnt"
    else
        peer_log "abort: no fusectl connection $conn for $mnt"
        rc=1
    fi
    peer_fusectl_release
    return "$rc"
}

# peer_unmount MNT: umount MNT. umount runs in the background and is never waited on blindly:
# if it fails (busy) or has not finished after PEER_UMOUNT_TIMEOUT seconds (hung), the FUSE
# connection is aborted (for a FUSE mount) and the mount is detached with umount -l.
peer_unmount() {
    local mnt=$1 upid i=0 limit=$((${PEER_UMOUNT_TIMEOUT:-10} * 10)) fstype
    peer_is_mounted "$mnt" || return 0
    fstype=$(peer_fstype "$mnt")
    umount "$mnt" 2>/dev/null &
    upid=$!
    while peer_pid_alive "$upid" && [ "$i" -lt "$limit" ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if ! peer_pid_alive "$upid"; then
        wait "$upid" 2>/dev/null || true
        peer_is_mounted "$mnt" || return 0
        peer_log "umount $mnt failed (busy?)"
    else
        peer_log "umount $mnt still blocked after ${PEER_UMOUNT_TIMEOUT:-10}s (hung?)"
    fi
    case "$fstype" in fuse*) peer_fuse_abort "$mnt" || true ;; esac
    # The abort releases a blocked umount; give it a moment, then detach whatever remains.
    i=0
    while peer_pid_alive "$upid" && [ "$i" -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    peer_pid_alive "$upid" || wait "$upid" 2>/dev/null || true
    if peer_is_mounted "$mnt"; then
        umount -l "$mnt" || true
    fi
    if peer_is_mounted "$mnt"; then
        peer_log "could not unmount $mnt"
        return 1
    fi
    return 0
}

# peer_watchdog LIMIT MNT OUT CMD...: run CMD (stdin /dev/null, stdout and stderr to OUT) for at
# most LIMIT seconds. If it is still running then, abort MNT's FUSE connection (when MNT is not
# empty) so that nothing stays blocked in it, kill CMD, and set PEER_WATCHDOG_FIRED=1. Returns
# CMD's exit status (137 after the watchdog).
PEER_WATCHDOG_FIRED=0
peer_watchdog() {
    local limit=$1 mnt=$2 out=$3 pid start rc=0
    shift 3
    start=$(date +%s)
    "$@" >"$out" 2>&1 </dev/null &
    pid=$!
    PEER_WATCHDOG_FIRED=0
    while peer_pid_alive "$pid"; do
        if [ $(($(date +%s) - start)) -ge "$limit" ]; then
            # shellcheck disable=SC2034 # for the calling script
            PEER_WATCHDOG_FIRED=1
            peer_log "WATCHDOG: $1 not finished after ${limit}s; last lines of its output:"
            tail -n 5 "$out" | sed 's/^/    /' >&2
            [ -z "$mnt" ] || peer_fuse_abort "$mnt" || true
            kill -s KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    wait "$pid" 2>/dev/null || rc=$?
    return "$rc"
}

# peer_stop_pid PID: wait for PID to exit (it should once its mount is gone), then TERM, then
# KILL. Only the given pid is signalled.
peer_stop_pid() {
    local pid=$1 i sig
    [ -n "$pid" ] || return 0
    for sig in NONE TERM KILL; do
        if [ "$sig" != NONE ]; then
            kill -s "$sig" "$pid" 2>/dev/null || true
            kill -s CONT "$pid" 2>/dev/null || true # a stopped process acts on TERM only then
        fi
        i=0
        while peer_pid_alive "$pid" && [ "$i" -lt 50 ]; do
            sleep 0.1
            i=$((i + 1))
        done
        peer_pid_alive "$pid" || break
        case "$sig" in
        NONE) peer_log "daemon $pid still running after the unmount: TERM" ;;
        TERM) peer_log "daemon $pid still running after TERM: KILL" ;;
        KILL) peer_log "daemon $pid still running after KILL" ;;
        esac
    done
    wait "$pid" 2>/dev/null || true
}

# peer_teardown: unmount every FUSE mount, stop the daemons, unmount the tmpfs mounts, remove
# the workspace. Runs from the EXIT trap; keeps the script's exit status.
peer_teardown() {
    local rc=$? i ok=1
    trap - EXIT INT TERM HUP
    set +e
    for ((i = ${#PEER_FUSE_MOUNTS[@]} - 1; i >= 0; i--)); do
        peer_unmount "${PEER_FUSE_MOUNTS[i]}" || ok=0
        peer_stop_pid "${PEER_PIDS[i]:-}"
    done
    for ((i = 0; i < ${#PEER_EXTRA_PIDS[@]}; i++)); do
        peer_stop_pid "${PEER_EXTRA_PIDS[i]}"
    done
    for ((i = ${#PEER_TMPFS_MOUNTS[@]} - 1; i >= 0; i--)); do
        peer_unmount "${PEER_TMPFS_MOUNTS[i]}" || ok=0
    done
    if [ -n "$PEER_WORK" ] && [ -d "$PEER_WORK" ]; then
        if [ "${PEER_KEEP:-0}" = 1 ] || [ "$ok" = 0 ]; then
            peer_log "workspace kept: $PEER_WORK"
        else
            # --one-file-system: never descend into something that is still mounted.
            rm -rf --one-file-system "$PEER_WORK"
        fi
    fi
    [ "$ok" = 1 ] || { [ "$rc" != 0 ] || rc=1; }
    exit "$rc"
}

# peer_listing DIR: one line per entry below DIR, sorted: relative path, type, mode, owner,
# group, and for non-directories size, link count and symlink target (device number for
# devices). Top-level names in PEER_COMPARE_EXCLUDE are left out.
peer_listing() {
    local dir=$1 name
    local -a prune=()
    for name in ${PEER_COMPARE_EXCLUDE-.chironfs}; do
        prune+=(-path "./$name" -prune -o)
    done
    (
        cd "$dir" || exit 1
        find . -mindepth 1 "${prune[@]}" \( -type d -printf '%P\t%y\t%m\t%U\t%G\n' \) \
            -o \( -type b,c -exec stat --printf '%n\t%F\t%a\t%u\t%g\t%h\t%t:%T\n' {} + \) \
            -o -printf '%P\t%y\t%m\t%U\t%G\t%s\t%n\t%l\n' | sed 's|^\./||'
    ) | LC_ALL=C sort
}

# peer_compare_replicas DIR1 DIR2 [DIR...]: every DIRi must match DIR1: the same entries with
# the same type, mode, owner, group, size, link count, symlink target and device number, and
# regular files equal byte for byte (cmp). Not `diff -r --no-dereference`: it opens and reads
# device nodes (which can block or never end) and reports every fifo and socket as a
# difference; the listing plus cmp checks everything it would. Prints the differences and
# returns non-zero if there are any.
peer_compare_replicas() {
    local first=$1 other rc=0 tmp f
    shift
    tmp=$(mktemp -d "${PEER_WORK:-/tmp}/compare.XXXXXX")
    peer_listing "$first" >"$tmp/first" || rc=1
    for other in "$@"; do
        peer_listing "$other" >"$tmp/other" || rc=1
        if ! diff -u --label "$first" --label "$other" "$tmp/first" "$tmp/other"; then
            peer_log "replicas differ in metadata: $first vs $other"
            rc=1
        fi
        # Regular files present in both, byte for byte.
        while IFS= read -r f; do
            if [ -f "$first/$f" ] && [ -f "$other/$f" ] && ! cmp -- "$first/$f" "$other/$f"; then
                peer_log "replicas differ in content: $first/$f vs $other/$f"
                rc=1
            fi
        done < <(awk -F '\t' '$2 == "f" { print $1 }' "$tmp/first")
    done
    rm -rf "$tmp"
    return "$rc"
}
