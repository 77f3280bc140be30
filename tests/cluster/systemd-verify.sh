#!/bin/bash
# Checks systemd/chironfs@.service without systemd running:
#   1. `systemd-analyze verify` of an instance, in a scratch root holding the unit, Debian's
#      unit files and the programs it runs: it must print nothing at all (unknown keys and
#      other mistakes are only warnings, with exit status 0);
#   2. `systemd-analyze security --offline=yes` (its score is printed, for information);
#   3. the unit's commands, run the way systemd would run them (variables from an
#      /etc/chironfs/INSTANCE.conf like systemd/example.conf, `$$` unescaped, the daemon under
#      the unit's capability bounding set and no_new_privs), in a private mount namespace:
#      start (ExecStartPre, ExecStart, ExecStartPost), reload, stop by SIGTERM (unmounted, no
#      ExecStopPost work), a crash (SIGKILL: dead mount) cleaned by ExecStopPost, and a start
#      over a dead mount cleaned by ExecStartPre.
# Usage: tests/cluster/systemd-verify.sh     (as root)
# Env: CHIRONFS, CHIRONCTL (binaries), CL_KEEP=1 (keep the workspace).
set -eu

UNIT_NAME=chironfs@.service

# ------------------------------------------------------------------------------------------
# Inside a private mount namespace: the unit's commands.
# ------------------------------------------------------------------------------------------
if [ "${1:-}" = --inside ]; then
    W=$2
    UNIT=$3
    B=$W/bin
    failed=0
    fail() { echo "  FAIL  $*"; failed=$((failed + 1)); }
    ok() { echo "  ok    $*"; }
    mounted() { awk -v m="$W/mnt" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }
    alive() { [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

    # The instance's configuration, as systemd's EnvironmentFile= reads it (simple subset).
    mkdir -p "$W/r1" "$W/r2" "$W/mnt"
    sed -e "s|^REPLICAS=.*|REPLICAS=$W/r1=$W/r2|" -e "s|^MOUNTPOINT=.*|MOUNTPOINT=$W/mnt|" \
        -e "s|^OPTIONS=\(.*\)|OPTIONS=\1 --status-file $W/st -c $W/sock|" \
        "$(dirname "$UNIT")/example.conf" >"$W/test.conf"
    REPLICAS="" MOUNTPOINT="" OPTIONS=""
    while IFS= read -r line; do
        case "$line" in
        REPLICAS=* | MOUNTPOINT=* | OPTIONS=*) eval "${line%%=*}=\${line#*=}" ;;
        esac
    done <"$W/test.conf"
    if [ -z "$REPLICAS" ] || [ -z "$MOUNTPOINT" ]; then
        fail "example.conf lacks REPLICAS or MOUNTPOINT"
        exit 1
    fi

    # unit_value KEY: the values of KEY= in the unit, one a line.
    unit_value() { sed -n "s/^$1=//p" "$UNIT"; }
    # expand LINE: systemd's expansion of an Exec line, for the syntax this unit uses:
    # ${VAR} is one word, $VAR is split on blanks, $$ is $; then shell-like quoting. Sets CMD.
    MAINPID=""
    # shellcheck disable=SC2016 # the patterns are literal unit text
    expand() {
        local l=$1
        l=${l//'$$'/$'\001'}
        l=${l//'${MOUNTPOINT}'/"'$MOUNTPOINT'"}
        l=${l//'${REPLICAS}'/"'$REPLICAS'"}
        l=${l//'$OPTIONS'/$OPTIONS}
        l=${l//'$MAINPID'/$MAINPID}
        l=${l//$'\001'/'$'}
        eval "CMD=($l)"
        case "${CMD[0]}" in
        /usr/bin/chironfs) CMD[0]=$B/chironfs ;;
        /usr/bin/chironctl) CMD[0]=$B/chironctl ;;
        esac
    }
    # run_exec KEY: run every KEY= command of the unit; false if one fails.
    run_exec() {
        local line rc=0
        while IFS= read -r line; do
            expand "$line"
            timeout 70 "${CMD[@]}" || rc=$?
            [ "$rc" = 0 ] || { echo "    $1 failed (exit $rc): ${CMD[*]}"; return 1; }
        done < <(unit_value "$1")
    }
    # The capability bounding set and no_new_privs of the unit, for setpriv.
    caps=$(unit_value CapabilityBoundingSet | tr ' ' '\n' | sed -n 's/^CAP_\(.*\)/+\L\1/p' | paste -sd, -)
    nnp=()
    [ "$(unit_value NoNewPrivileges)" = yes ] && nnp=(--no-new-privs)
    start_unit() {
        run_exec ExecStartPre || return 1
        expand "$(unit_value ExecStart)"
        setpriv "${nnp[@]}" --bounding-set "-all,$caps" -- "${CMD[@]}" </dev/null >>"$W/daemon.log" 2>&1 &
        MAINPID=$!
        disown "$MAINPID"
        run_exec ExecStartPost
    }
    stop_wait() {
        local i=0
        while alive "$MAINPID" && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        ! alive "$MAINPID"
    }
    # After a kill: a daemon still there 10 s later is a failure that says where its threads
    # wait (a silent exit of this script under set -e said nothing once).
    killed_wait() {
        stop_wait && return 0
        local where
        where=$(for t in /proc/"$MAINPID"/task/*; do
            echo "$(cat "$t/comm" 2>/dev/null):$(cat "$t/wchan" 2>/dev/null)"
        done | sort | uniq -c | tr -s ' \n' ' ')
        fail "the daemon (pid $MAINPID) still runs 10 s after $1; its threads wait in:$where"
    }

    echo "--- the unit's commands (private mount namespace; bounding set $caps)"
    if start_unit && mounted; then ok "start: ExecStartPre, ExecStart (foreground), ExecStartPost: mounted"; else fail "start"; fi
    if echo data >"$W/mnt/file" && [ "$(cat "$W/r1/file" "$W/r2/file")" = "$(printf 'data\ndata')" ]; then
        ok "a write through the mount reaches both replicas (under the bounding set)"
    else
        fail "a write through the mount reaches both replicas"
    fi
    if mkdir "$W/mnt/u" && chown 1234:1234 "$W/mnt/u" && [ "$(stat -c %u:%g "$W/r2/u")" = 1234:1234 ] &&
        setpriv --reuid 1234 --regid 1234 --clear-groups sh -c "echo user >'$W/mnt/u/by-user'" &&
        [ "$(stat -c %u:%g "$W/r1/u/by-user")" = 1234:1234 ]; then
        ok "chown and a create as another user (CAP_CHOWN, CAP_SETUID)"
    else
        fail "chown and a create as another user"
    fi
    if run_exec ExecReload && alive "$MAINPID" && mounted; then ok "ExecReload (SIGHUP): still mounted"; else fail "ExecReload"; fi
    kill -TERM "$MAINPID"
    if stop_wait && ! mounted; then ok "stop (SIGTERM): daemon gone, unmounted"; else fail "stop (SIGTERM)"; fi
    if run_exec ExecStopPost && ! mounted; then ok "ExecStopPost after a clean stop: nothing to do"; else fail "ExecStopPost after a clean stop"; fi
    if start_unit && mounted; then ok "start again"; else fail "start again"; fi
    kill -KILL "$MAINPID"
    killed_wait SIGKILL
    if mounted && run_exec ExecStopPost && ! mounted; then
        ok "crash (SIGKILL): ExecStopPost detached the dead mount"
    else
        fail "crash (SIGKILL): ExecStopPost did not detach the dead mount"
    fi
    if start_unit && mounted; then ok "restart after the crash"; else fail "restart after the crash"; fi
    kill -KILL "$MAINPID"
    killed_wait SIGKILL
    if start_unit && mounted && [ "$(cat "$W/mnt/file")" = data ]; then
        ok "start over a dead mount: ExecStartPre detached it, mounted again"
    else
        fail "start over a dead mount"
    fi
    kill -TERM "$MAINPID"
    killed_wait SIGTERM
    if ! mounted; then ok "stop"; else fail "stop"; umount -l "$W/mnt"; fi
    if [ "$failed" != 0 ]; then
        echo "--- daemon output"
        tail -n 20 "$W/daemon.log"
    fi
    [ "$failed" = 0 ]
    exit
fi

# ------------------------------------------------------------------------------------------
# Outside.
# ------------------------------------------------------------------------------------------
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
cl_init systemd-verify
cl_need systemd-analyze setpriv unshare mountpoint
cl_binaries
UNIT=$CL_REPO/systemd/$UNIT_NAME
[ -f "$UNIT" ] || cl_die "$UNIT not found"
rc=0

# A scratch root: the unit, the system's units (for the targets it names) and the programs
# its commands run (systemd-analyze checks that they exist and are executable).
R=$CL_WORK/root
mkdir -p "$R/etc/systemd/system" "$R/usr/lib/systemd" "$R/usr/bin" "$R/etc/chironfs"
ln -s usr/bin "$R/bin"
ln -s usr/lib "$R/lib"
cp -a /lib/systemd/system "$R/usr/lib/systemd/"
cp "$UNIT" "$R/etc/systemd/system/"
cp "$CL_REPO/systemd/example.conf" "$R/etc/chironfs/example.conf"
cp "$CL_WORK/bin/chironfs" "$CL_WORK/bin/chironctl" "$R/usr/bin/"
cp /bin/sh /bin/kill "$R/usr/bin/"

echo "--- systemd-analyze verify chironfs@example.service"
out=$(systemd-analyze verify --root="$R" chironfs@example.service 2>&1) && vrc=0 || vrc=$?
if [ "$vrc" = 0 ] && [ -z "$out" ]; then
    echo "  ok    no output, exit 0"
else
    echo "  FAIL  exit $vrc, output:"
    printf '%s\n' "$out" | sed 's/^/        | /'
    rc=1
fi
# It must notice a mistake, or the check above proves nothing.
sed 's/^KillMode=/NoSuchKey=1\nKillMode=/' "$UNIT" >"$R/etc/systemd/system/$UNIT_NAME"
out=$(systemd-analyze verify --root="$R" chironfs@example.service 2>&1) || true
if grep -q NoSuchKey <<<"$out"; then
    echo "  ok    (and it reports an unknown key)"
else
    echo "  FAIL  systemd-analyze verify did not report an unknown key: the check is blind"
    rc=1
fi
cp "$UNIT" "$R/etc/systemd/system/"

echo "--- systemd-analyze security --offline=yes (information)"
systemd-analyze security --offline=yes --root="$R" chironfs@example.service 2>&1 | tail -n 1 | sed 's/^/  /'

unshare -m --propagation private bash "$0" --inside "$CL_WORK" "$UNIT" || rc=1
exit "$rc"
