#!/bin/bash
# The OCF resource agent ocf/chironfs without a cluster, in a private mount namespace:
#   1. meta-data as `nobody` with an empty environment, OCF 1.1 (tests/cluster/ocf-meta.sh:
#      the OCF 1.1 grammar, reload-agent, reloadable and unique-group parameters);
#   2. ocf-tester (resource-agents) on a 2-replica mount;
#   3. the cases ocf-tester does not cover: bad parameters, missing binary, probes, depth 10
#      and 20 monitors, a degraded replica set (0, or 190 with report_degraded), a killed
#      daemon, a busy mount, a hung daemon (SIGSTOP), force_unmount=false, reload, a foreign
#      mount on the mount point, the resource-agents-deps.target drop-in for replicas on
#      network filesystems; every failure must come with an ocf-exit-reason line and
#      no action may outlive its timeout;
#   4. crm ra info and pcs resource describe show the agent cleanly;
#      crmsh with CIB_file (no cluster): the primitive is accepted, an unknown parameter is
#      refused, crm_verify is clean, crm_resource --force-start/--force-check/--force-stop
#      drive the agent; pcs -f, if pcs is installed;
#   5. the Heartbeat wrapper heartbeat/chironfs (start, status, stop);
#   6. tests/cluster/systemd-verify.sh (the systemd unit).
# The agent is installed as /usr/lib/ocf/resource.d/chiron/chironfs for the run and removed
# (or the previous file put back) afterwards. Any failure makes the script exit non-zero.
# Usage: tests/cluster/ocf-tester.sh      (as root; scripts/setup.sh installs what it needs)
# Env: CHIRONFS, CHIRONCTL (binaries), CL_KEEP=1 (keep the workspace).
set -eu
# shellcheck disable=SC2317 # check/expect call functions indirectly

# ------------------------------------------------------------------------------------------
# Inside the private mount namespace: the checks themselves.
# ------------------------------------------------------------------------------------------
if [ "${1:-}" = --inside ]; then
    set +e # a failed check is counted, not fatal
    W=$2
    INSTALLED=$3 # where crmsh and crm_resource find it
    REPO=$4
    # A private copy for everything else: another test may (un)install the package meanwhile.
    AGENT=$W/agent/chironfs
    mkdir -p "$W/agent"
    install -m 0755 "$REPO/ocf/chironfs" "$AGENT"
    B=$W/bin
    CL_NAME=ocf-tester
    passed=0
    failed=0
    fail_names=()
    USERS=()

    log() { printf '%s\n' "$*"; }
    not() { ! "$@"; }
    ok() { passed=$((passed + 1)); printf '  ok    %s\n' "$1"; }
    bad() {
        failed=$((failed + 1))
        fail_names+=("$1")
        printf '  FAIL  %s\n' "$1"
        [ -z "${2:-}" ] || printf '%s\n' "$2" | sed 's/^/        | /'
    }

    # Everything the agent gets, as the cluster would pass it.
    export OCF_ROOT=/usr/lib/ocf OCF_RA_VERSION_MAJOR=1 OCF_RA_VERSION_MINOR=0
    export OCF_RESOURCE_INSTANCE=fs OCF_RESOURCE_TYPE=chironfs OCF_RESOURCE_PROVIDER=chiron
    base_params() {
        export OCF_RESKEY_replicas=$W/r1=$W/r2
        export OCF_RESKEY_mountpoint=$W/mnt
        export OCF_RESKEY_binary=$B/chironfs
        export OCF_RESKEY_chironctl=$B/chironctl
        export OCF_RESKEY_status_file=$W/run/fs.status
        export OCF_RESKEY_control_socket=$W/run/fs.sock
        export OCF_RESKEY_CRM_meta_timeout=20000
        export OCF_RESKEY_CRM_meta_interval=10000
        unset OCF_RESKEY_options OCF_RESKEY_force_unmount OCF_RESKEY_report_degraded \
            OCF_CHECK_LEVEL OCF_RESKEY_timeout OCF_RESKEY_log OCF_RESKEY_max_status_age
    }
    base_params
    mkdir -p "$W/r1" "$W/r2" "$W/run"
    # The agent's log lines go to syslog too; there is no /dev/log here, and logger fails
    # quietly. HA_LOGFILE keeps them for a failure's diagnosis.
    export HA_LOGFILE=$W/agent.log HA_debug=0

    # agent [VAR=VALUE...] ACTION: run the agent (with the given extra environment) under a
    # watchdog of its timeout + 10 s; sets RC, OUT (stdout+stderr) and SECS (its duration).
    agent() {
        local t0 t1 limit
        limit=$((${OCF_RESKEY_CRM_meta_timeout:-20000} / 1000 + 10))
        t0=$(date +%s%N)
        RC=0
        OUT=$(timeout -k 5 "$limit" env "${@:1:$#-1}" "$AGENT" "${@: -1}" 2>&1 </dev/null) || RC=$?
        t1=$(date +%s%N)
        SECS=$(((t1 - t0) / 1000000))
        SECS=$((SECS / 1000)).$(printf '%03d' $((SECS % 1000)))
    }
    # expect NAME RC [VAR=VALUE...] ACTION: run the agent and check its exit status; a
    # non-zero, non-7 status must come with an ocf-exit-reason line.
    expect() {
        local name=$1 want=$2
        shift 2
        agent "$@"
        if [ "$RC" != "$want" ]; then
            bad "$name: rc $RC, expected $want (${SECS} s)" "$OUT"
            return 1
        fi
        case "$RC" in
        0 | 7 | 190) ;;
        *)
            if ! grep -q '^ocf-exit-reason:.' <<<"$OUT"; then
                bad "$name: rc $RC without an ocf-exit-reason line" "$OUT"
                return 1
            fi
            ;;
        esac
        ok "$name (rc $RC, ${SECS} s)"
    }
    # check NAME CMD...: a shell condition.
    check() {
        local name=$1
        shift
        if "$@"; then ok "$name"; else bad "$name"; fi
    }
    mounted() { awk -v m="$W/mnt" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }
    not_mounted() { ! mounted; }
    daemon_pid() { sed -n 's/^pid=//p' "$W/run/fs.status" 2>/dev/null; }
    alive() { [ -n "$1" ] && [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
    # user CMD...: a background process using the mount (killed at the end if still there).
    user() {
        "$@" </dev/null >/dev/null 2>&1 &
        USERS+=($!)
        LAST_USER=$!
        disown "$!"
    }
    inside_cleanup() {
        local p
        set +e
        base_params
        for p in "${USERS[@]}"; do kill -KILL "$p" 2>/dev/null; done
        p=$(daemon_pid)
        [ -z "$p" ] || kill -CONT "$p" 2>/dev/null
        "$AGENT" stop >/dev/null 2>&1
    }
    trap inside_cleanup EXIT

    log "--- meta-data"
    out=$(env -i /bin/su nobody -s /bin/sh -c "cd / && $AGENT meta-data" 2>&1) && rc=0 || rc=$?
    if [ "$rc" = 0 ] && grep -q '^<resource-agent name="chironfs" ' <<<"$out"; then
        ok "meta-data as nobody with an empty environment"
    else
        bad "meta-data as nobody with an empty environment (rc $rc)" "$out"
    fi
    if out=$("$REPO/tests/cluster/ocf-meta.sh" "$AGENT" 2>&1); then
        ok "OCF 1.1 meta-data (tests/cluster/ocf-meta.sh)"
    else
        bad "OCF 1.1 meta-data (tests/cluster/ocf-meta.sh)" "$out"
    fi
    params=$("$AGENT" meta-data | sed -n 's/.*<parameter name="\([a-z_]*\)".*/\1/p' | sort | tr '\n' ' ')
    want="binary chironctl control_socket force_unmount log max_status_age mountpoint new_set options quorum replicas report_degraded status_file timeout witness "
    check "meta-data declares every parameter ($params)" test "$params" = "$want"
    nolong=$("$AGENT" meta-data | awk '/<parameter /{p=$0; l=0} /<longdesc/{l=1} /<\/parameter>/{ if (!l) print p }')
    check "every parameter has a long description" test -z "$nolong"

    log "--- ocf-tester"
    t0=$(date +%s)
    if out=$(timeout -k 5 300 ocf-tester -n fs \
        -o replicas="$W/r1=$W/r2" -o mountpoint="$W/mnt" -o new_set=true \
        -o binary="$B/chironfs" -o chironctl="$B/chironctl" \
        -o status_file="$W/run/fs.status" -o control_socket="$W/run/fs.sock" \
        "$AGENT" 2>&1) && grep -q 'passed all tests' <<<"$out"; then
        printf '%s\n' "$out" | sed 's/^/    /'
        ok "ocf-tester ($(($(date +%s) - t0)) s)"
    else
        bad "ocf-tester" "$out"
    fi
    check "not mounted after ocf-tester" not_mounted

    log "--- validation"
    expect "validate-all with good parameters" 0 validate-all
    expect "validate-all without replicas" 6 OCF_RESKEY_replicas= validate-all
    expect "validate-all with one replica" 6 OCF_RESKEY_replicas="$W/r1" validate-all
    expect "validate-all with an empty replica entry" 6 OCF_RESKEY_replicas="$W/r1==$W/r2" validate-all
    expect "validate-all with a relative replica" 6 OCF_RESKEY_replicas="r1=$W/r2" validate-all
    expect "validate-all with a replica inside the mount point" 6 OCF_RESKEY_replicas="$W/r1=$W/mnt/x" validate-all
    expect "validate-all with a relative mount point" 6 OCF_RESKEY_mountpoint=mnt validate-all
    expect "validate-all with force_unmount=maybe" 6 OCF_RESKEY_force_unmount=maybe validate-all
    expect "validate-all with max_status_age=x" 6 OCF_RESKEY_max_status_age=x validate-all
    expect "validate-all with timeout=0" 6 OCF_RESKEY_timeout=0 validate-all
    expect "validate-all with report_degraded=perhaps" 6 OCF_RESKEY_report_degraded=perhaps validate-all
    expect "validate-all with ctl= in options" 6 OCF_RESKEY_options=allow_other,ctl=/x validate-all
    expect "validate-all with a relative witness" 6 OCF_RESKEY_witness=w validate-all
    expect "validate-all with quorum=most" 6 OCF_RESKEY_quorum=most validate-all
    expect "validate-all with new_set=maybe" 6 OCF_RESKEY_new_set=maybe validate-all
    mkdir -p "$W/fresh1" "$W/fresh2"
    expect "start on replicas without any state (new_set=false)" 1 OCF_RESKEY_replicas="$W/fresh1=$W/fresh2" start
    check "  ... its exit reason says why" grep -q "ocf-exit-reason:.*no replica holds chironfs state" <<<"$OUT"
    check "  ... and nothing is mounted" not_mounted
    expect "validate-all without the binary" 5 OCF_RESKEY_binary="$W/nowhere/chironfs" validate-all
    expect "start without the binary" 5 OCF_RESKEY_binary="$W/nowhere/chironfs" start
    expect "probe without the binary: not running" 7 OCF_RESKEY_binary="$W/nowhere/chironfs" OCF_RESKEY_CRM_meta_interval=0 monitor
    expect "probe without replicas: not running" 7 OCF_RESKEY_replicas= OCF_RESKEY_CRM_meta_interval=0 monitor
    expect "stop without the binary" 0 OCF_RESKEY_binary="$W/nowhere/chironfs" stop
    expect "start with a missing replica directory" 1 OCF_RESKEY_replicas="$W/r1=$W/missing" start
    check "  ... its exit reason is the daemon's" grep -q "ocf-exit-reason:.*missing" <<<"$OUT"
    check "  ... and nothing is mounted" not_mounted
    expect "unknown action" 3 frobnicate

    log "--- witness and quorum"
    mkdir -p "$W/witness"
    expect "start with a witness and quorum=auto" 0 OCF_RESKEY_witness="$W/witness" OCF_RESKEY_quorum=auto start
    out=$("$B/chironctl" -s "$W/run/fs.sock" status 2>&1 | head -n 1)
    check "  ... 2 replicas and the witness: quorum 2 of 3 ($out)" grep -q '2/2 replicas in service, 1 witness answering, quorum 2 met' <<<"$out"
    check "  ... the witness records the set's state" test -s "$W/witness/.chironfs/state"
    expect "monitor with a witness" 0 OCF_RESKEY_witness="$W/witness" OCF_RESKEY_quorum=auto monitor
    expect "stop with a witness" 0 OCF_RESKEY_witness="$W/witness" OCF_RESKEY_quorum=auto stop
    check "  ... not mounted" not_mounted

    log "--- start, monitor depths, status"
    expect "start" 0 start
    check "  ... mounted" mounted
    expect "start again (idempotent)" 0 start
    expect "monitor depth 0" 0 monitor
    expect "monitor depth 10" 0 OCF_CHECK_LEVEL=10 monitor
    expect "monitor depth 20" 0 OCF_CHECK_LEVEL=20 monitor
    check "  ... wrote its file through the mount, on every replica" \
        test -s "$W/r1/.chironfs-ocf/monitor.$(uname -n)" -a -s "$W/r2/.chironfs-ocf/monitor.$(uname -n)"
    expect "status" 0 status
    check "  ... says running" grep -q 'is running' <<<"$OUT"
    expect "reload with the same parameters" 0 reload
    pid0=$(daemon_pid)
    expect "reload with new options (remount)" 0 OCF_RESKEY_options=allow_other,fsname=chironfs-reloaded reload
    check "  ... a new daemon" test "$(daemon_pid)" != "$pid0"
    check "  ... with the new options" grep -q ' chironfs-reloaded ' /proc/self/mountinfo
    expect "monitor with the new options" 0 OCF_RESKEY_options=allow_other,fsname=chironfs-reloaded monitor
    expect "reload back" 0 reload
    check "  ... old options back" not grep -q ' chironfs-reloaded ' /proc/self/mountinfo
    # An online membership change, then `replicas` updated to match: reload keeps the daemon.
    ctl() { "$B/chironctl" -s "$W/run/fs.sock" "$@" >/dev/null 2>&1; }
    mkdir -p "$W/r3"
    pid0=$(daemon_pid)
    check "chironctl add r3 (online)" ctl add "$W/r3" --wait
    check "chironctl remove r2 (online)" ctl remove "$W/r2"
    expect "start with replicas updated to the members (already running)" 0 OCF_RESKEY_replicas="$W/r1=$W/r3" start
    check "  ... no warning about other parameters" not grep -q 'other parameters than configured' <<<"$OUT"
    expect "reload with replicas updated to the members" 0 OCF_RESKEY_replicas="$W/r1=$W/r3" reload
    check "  ... the daemon left alone" test "$(daemon_pid)" = "$pid0"
    check "  ... and it says why" grep -q 'no remount' "$HA_LOGFILE"
    expect "reload-agent (Pacemaker 2.1+) with replicas updated" 0 OCF_RESKEY_replicas="$W/r1=$W/r3" reload-agent
    check "  ... the daemon left alone" test "$(daemon_pid)" = "$pid0"
    expect "monitor with the updated replicas" 0 OCF_RESKEY_replicas="$W/r1=$W/r3" monitor
    # And back (r2 rejoins as a former member), for the cases below.
    check "chironctl replace r3 by r2 (online)" ctl replace "$W/r3" "$W/r2" --wait
    expect "reload with the original replicas" 0 reload
    check "  ... the daemon still left alone" test "$(daemon_pid)" = "$pid0"
    pid0=$(daemon_pid)
    expect "reload-agent with new agent parameters" 0 OCF_RESKEY_max_status_age=20 OCF_RESKEY_force_unmount=safe reload-agent
    check "  ... the daemon left alone" test "$(daemon_pid)" = "$pid0"
    expect "reload-agent with a bad one" 6 OCF_RESKEY_max_status_age=x reload-agent

    log "--- degraded replica set"
    "$B/chironctl" -s "$W/run/fs.sock" disable "$W/r2" >/dev/null
    sleep 1.5
    expect "monitor, degraded, report_degraded=false" 0 monitor
    expect "monitor, degraded, report_degraded=true" 190 OCF_RESKEY_report_degraded=true monitor
    expect "monitor depth 10, degraded, report_degraded=true" 190 OCF_RESKEY_report_degraded=true OCF_CHECK_LEVEL=10 monitor
    expect "monitor depth 20, degraded, report_degraded=false" 0 OCF_CHECK_LEVEL=20 monitor
    expect "status, degraded" 0 status
    check "  ... says running (degraded" grep -q 'is running (degraded' <<<"$OUT"
    # Back in service (r2 missed the monitor's writes: stale, hence --force, as after a resync).
    "$B/chironctl" -s "$W/run/fs.sock" enable "$W/r2" --force >/dev/null
    sleep 1.5
    expect "monitor, back in service, report_degraded=true" 0 OCF_RESKEY_report_degraded=true monitor
    expect "stop" 0 stop
    check "  ... not mounted" not_mounted
    expect "monitor after stop" 7 monitor
    expect "stop again (idempotent)" 0 stop
    expect "status after stop" 7 status
    check "  ... says stopped" grep -q 'is stopped' <<<"$OUT"

    log "--- killed daemon (dead mount)"
    expect "start" 0 start
    user sh -c "cd '$W/mnt' && exec sleep 600"
    u=$LAST_USER
    kill -KILL "$(daemon_pid)"
    sleep 0.3
    expect "monitor of a dead mount" 1 monitor
    check "  ... says why" grep -q 'ocf-exit-reason:.*not running' <<<"$OUT"
    expect "probe of a dead mount" 1 OCF_RESKEY_CRM_meta_interval=0 monitor
    expect "stop of a dead, busy mount" 0 stop
    check "  ... not mounted" not_mounted
    check "  ... its user was killed" not alive "$u"
    expect "start after a dead mount" 0 start
    kill -KILL "$(daemon_pid)"
    sleep 0.3
    expect "start over a dead mount (cleans up, remounts)" 0 start
    expect "monitor" 0 monitor

    log "--- busy mount"
    user sh -c "cd '$W/mnt' && exec sleep 600"
    u1=$LAST_USER
    user sh -c "exec 3>'$W/mnt/open-file' && exec sleep 600"
    u2=$LAST_USER
    sleep 0.3
    expect "stop of a busy mount (force_unmount=true)" 0 stop
    check "  ... not mounted" not_mounted
    check "  ... users killed" not alive "$u1"
    check "  ... (both)" not alive "$u2"
    expect "start" 0 start
    user sh -c "cd '$W/mnt' && exec sleep 600"
    u=$LAST_USER
    sleep 0.3
    expect "stop of a busy mount (force_unmount=safe)" 0 OCF_RESKEY_force_unmount=safe stop
    check "  ... not mounted" not_mounted
    check "  ... user killed" not alive "$u"
    expect "start" 0 start
    user sh -c "cd '$W/mnt' && exec sleep 600"
    u=$LAST_USER
    sleep 0.3
    expect "stop of a busy mount, force_unmount=false, 6 s: fails" 1 \
        OCF_RESKEY_force_unmount=false OCF_RESKEY_CRM_meta_timeout=6000 stop
    check "  ... within its timeout" test "${SECS%.*}" -lt 6
    check "  ... user alive" alive "$u"
    expect "  ... mount still served" 0 monitor
    kill -KILL "$u"
    sleep 0.2
    expect "stop once the user is gone (force_unmount=false)" 0 OCF_RESKEY_force_unmount=false stop
    check "  ... not mounted" not_mounted

    log "--- hung daemon (SIGSTOP)"
    expect "start" 0 start
    user sh -c "cd '$W/mnt' && exec sleep 600"
    u1=$LAST_USER
    p=$(daemon_pid)
    kill -STOP "$p"
    user stat "$W/mnt/blocked-lookup"
    u2=$LAST_USER
    expect "monitor of a hung mount (timeout 8 s)" 1 OCF_RESKEY_CRM_meta_timeout=8000 monitor
    check "  ... within its timeout" test "${SECS%.*}" -lt 8
    check "  ... says hung" grep -q 'ocf-exit-reason:.*did not answer' <<<"$OUT"
    expect "monitor depth 20 of a hung mount (timeout 8 s)" 1 OCF_RESKEY_CRM_meta_timeout=8000 OCF_CHECK_LEVEL=20 monitor
    check "  ... within its timeout" test "${SECS%.*}" -lt 8
    expect "stop of a hung, busy mount (timeout 20 s)" 0 stop
    check "  ... within its timeout" test "${SECS%.*}" -lt 20
    check "  ... not mounted" not_mounted
    check "  ... daemon gone" not alive "$p"
    check "  ... users gone" not alive "$u1"
    check "  ... (both)" not alive "$u2"

    log "--- something else mounted on the mount point"
    timeout 10 mkdir -p "$W/mnt"
    mount -t tmpfs chironfs-test-foreign "$W/mnt"
    expect "monitor: not running" 7 monitor
    expect "start refuses" 1 start
    expect "stop leaves it alone" 0 stop
    check "  ... still mounted" mounted
    umount "$W/mnt"

    log "--- mount below the mount point"
    timeout 10 mkdir -p "$W/mnt/sub"
    mount -t tmpfs chironfs-test-below "$W/mnt/sub"
    expect "start refuses" 1 start
    umount "$W/mnt/sub"
    rmdir "$W/mnt/sub"

    log "--- ordering after network filesystems (resource-agents-deps.target drop-in)"
    deps=$W/deps
    conf=$deps/99-chironfs-$(printf '%s' "${W#/}/mnt" | tr / -).conf
    expect "start with local replicas" 0 CHIRONFS_OCF_DEPS_DIR="$deps" start
    check "  ... no drop-in for local replicas" test ! -e "$conf"
    expect "stop" 0 stop
    # Replicas on a FUSE mount, which the agent counts as a network filesystem: a chironfs of
    # its own (its daemon is killed with the others at the end if the test fails).
    mkdir -p "$W/n1/r1" "$W/n2/r1" "$W/n1/r2" "$W/n2/r2" "$W/net"
    "$B/chironfs" --status-file "$W/run/net.status" -c "$W/run/net.sock" "$W/n1=$W/n2" "$W/net"
    net_replicas="$W/net/r1=$W/net/r2"
    expect "start with replicas on a FUSE mount" 0 CHIRONFS_OCF_DEPS_DIR="$deps" OCF_RESKEY_replicas="$net_replicas" OCF_RESKEY_new_set=true start
    check "  ... the drop-in orders Pacemaker after remote-fs.target" grep -qx 'After=remote-fs.target' "$conf"
    unit=$(systemd-escape --path --suffix=mount -- "$W/net")
    check "  ... and after the replicas' mount unit ($unit)" grep -qxF "After=$unit" "$conf"
    check "  ... a [Unit] section" grep -qx '\[Unit\]' "$conf"
    expect "stop" 0 OCF_RESKEY_replicas="$net_replicas" stop
    check "  ... the drop-in stays for the shutdown" test -s "$conf"
    timeout 10 umount "$W/net" || umount -l "$W/net"

    log "--- crmsh, crm_resource (CIB_file, no cluster)"
    cmp -s "$INSTALLED" "$AGENT" || install -m 0755 "$AGENT" "$INSTALLED"
    export CIB_file=$W/cib.xml
    cibadmin --empty >"$CIB_file"
    crm_out() { out=$("$@" 2>&1) && rc=0 || rc=$?; }
    crm_out crm configure property stonith-enabled=false no-quorum-policy=ignore
    check "crm configure property stonith-enabled=false no-quorum-policy=ignore" test "$rc" = 0
    crm_out crm configure primitive fs ocf:chiron:chironfs \
        params replicas="$W/r1=$W/r2" mountpoint="$W/mnt" binary="$B/chironfs" \
        chironctl="$B/chironctl" status_file="$W/run/fs.status" control_socket="$W/run/fs.sock" \
        force_unmount=safe report_degraded=true max_status_age=10 timeout=5 \
        op monitor interval=10s timeout=20s \
        op monitor interval=61s timeout=40s OCF_CHECK_LEVEL=20
    if [ "$rc" = 0 ] && ! grep -qi 'error' <<<"$out"; then
        ok "crm configure primitive fs ocf:chiron:chironfs params ... op monitor ..."
    else
        bad "crm configure primitive fs ocf:chiron:chironfs (rc $rc)" "$out"
    fi
    crm_out crm configure primitive fs2 ocf:chiron:chironfs params replicas="$W/r1=$W/r2" bogus=1
    if [ "$rc" != 0 ] && grep -q 'bogus' <<<"$out"; then
        ok "crm refuses an undeclared parameter"
    else
        bad "crm refuses an undeclared parameter (rc $rc)" "$out"
    fi
    crm_out crm ra info ocf:chiron:chironfs
    if [ "$rc" = 0 ] && grep -q 'reload-agent' <<<"$out" && grep -q 'mountpoint' <<<"$out" &&
        ! grep -qiE '^(error|warning|info):' <<<"$out"; then
        ok "crm ra info ocf:chiron:chironfs"
    else
        bad "crm ra info ocf:chiron:chironfs (rc $rc)" "$out"
    fi
    crm_out crm_verify -L -V
    check "crm_verify -L is clean" test "$rc" = 0
    [ "$rc" = 0 ] || printf '%s\n' "$out" | sed 's/^/        | /'
    crm_out crm_resource -r fs --force-start
    check "crm_resource --force-start" test "$rc" = 0
    check "  ... mounted" mounted
    crm_out crm_resource -r fs --force-check
    check "crm_resource --force-check" test "$rc" = 0
    crm_out crm_resource -r fs --force-check=20
    check "crm_resource --force-check=20" test "$rc" = 0
    crm_out crm_resource -r fs --force-stop
    check "crm_resource --force-stop" test "$rc" = 0
    check "  ... not mounted" not_mounted
    crm_out crm_resource -r fs --force-check
    check "crm_resource --force-check after stop: not running (7)" test "$rc" = 7
    if command -v pcs >/dev/null 2>&1; then
        crm_out pcs resource describe ocf:chiron:chironfs
        if [ "$rc" = 0 ] && grep -q 'reload-agent' <<<"$out" && grep -q 'unique group: mountpoint' <<<"$out" &&
            ! grep -qiE '^(error|warning|deprecation warning):' <<<"$out"; then
            ok "pcs resource describe ocf:chiron:chironfs"
        else
            bad "pcs resource describe ocf:chiron:chironfs (rc $rc)" "$out"
        fi
        cibadmin --empty >"$W/cib-pcs.xml"
        crm_out pcs -f "$W/cib-pcs.xml" resource create fs ocf:chiron:chironfs \
            replicas="$W/r1=$W/r2" mountpoint="$W/mnt" op monitor interval=10s
        check "pcs -f CIB resource create fs ocf:chiron:chironfs" test "$rc" = 0
        [ "$rc" = 0 ] || printf '%s\n' "$out" | sed 's/^/        | /'
        crm_out pcs -f "$W/cib-pcs.xml" resource create fs2 ocf:chiron:chironfs \
            replicas="$W/r1=$W/r2" bogus=1
        check "pcs refuses an undeclared parameter" test "$rc" != 0
    else
        log "  (pcs not installed: pcs checks skipped)"
    fi
    unset CIB_file

    log "--- Heartbeat resource script (heartbeat/chironfs)"
    HB=$REPO/heartbeat/chironfs
    hb() {
        RC=0
        OUT=$(timeout -k 5 60 env -u OCF_RESKEY_replicas -u OCF_RESKEY_mountpoint \
            -u OCF_RESKEY_binary -u OCF_RESKEY_chironctl -u OCF_RESKEY_status_file \
            -u OCF_RESKEY_control_socket -u OCF_RA_VERSION_MAJOR -u OCF_RESOURCE_INSTANCE \
            CHIRONFS_OCF_AGENT="$AGENT" "$HB" "$W/r1=$W/r2" "$W/mnt" allow_other \
            binary="$B/chironfs" chironctl="$B/chironctl" status_file="$W/run/fs.status" \
            control_socket="$W/run/fs.sock" "$@" 2>&1) || RC=$?
    }
    # What Heartbeat's ResourceManager matches in the output of status.
    held() { case "$OUT" in *[Nn][Oo][Tt]\ *[Rr]unning*) return 1 ;; *[Rr]unning* | *OK*) return 0 ;; esac; return 1; }
    hb status
    check "heartbeat status when stopped: rc 3, not held ($OUT)" test "$RC" = 3
    check "  ... not held" not held
    hb start
    check "heartbeat start" test "$RC" = 0
    check "  ... mounted" mounted
    hb status
    check "heartbeat status when running: rc 0 ($OUT)" test "$RC" = 0
    check "  ... held" held
    kill -KILL "$(daemon_pid)"
    sleep 0.3
    hb status
    check "heartbeat status of a dead mount: rc 1 ($(tail -n 1 <<<"$OUT"))" test "$RC" = 1
    check "  ... not held" not held
    hb start
    check "heartbeat start over a dead mount" test "$RC" = 0
    hb start
    check "heartbeat start again" test "$RC" = 0
    hb stop
    check "heartbeat stop" test "$RC" = 0
    check "  ... not mounted" not_mounted
    hb stop
    check "heartbeat stop again" test "$RC" = 0

    echo
    echo "ocf agent checks: $passed ok, $failed failed"
    for n in "${fail_names[@]}"; do echo "  failed: $n"; done
    if [ "$failed" != 0 ] && [ -s "$W/agent.log" ]; then
        echo "--- last agent log lines"
        tail -n 40 "$W/agent.log"
    fi
    [ "$failed" = 0 ]
    exit
fi

# ------------------------------------------------------------------------------------------
# Outside: set up, run the checks in a private mount namespace, clean up.
# ------------------------------------------------------------------------------------------
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
cl_init ocf-tester
cl_need ocf-tester crm cibadmin crm_resource crm_verify xmllint fuser unshare timeout systemd-escape
cl_binaries
cl_install_agent
rc=0
# A watchdog: whatever hangs, the run ends (and the teardown's KILL of the daemons frees
# anything blocked in a mount).
timeout -k 10 600 unshare -m --propagation private bash "$0" --inside "$CL_WORK" "$CL_AGENT" "$CL_REPO" || rc=$?
if [ -x "$CL_DIR/systemd-verify.sh" ]; then
    echo "--- systemd unit"
    "$CL_DIR/systemd-verify.sh" || rc=1
fi
exit "$rc"
