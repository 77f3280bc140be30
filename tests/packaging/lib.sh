# shellcheck shell=bash
# Shared helpers of the packaging tests (test.sh, chroot-install.sh). Source it from bash:
#
#   . "$(dirname "$0")/lib.sh"
#   ok TEXT / bad TEXT / skip TEXT     count one passed / failed / skipped check and say so
#   check TEXT COMMAND...              one check: passes if COMMAND exits 0; its output is
#                                      shown (last 20 lines) only on failure
#   section TEXT                       a header line
#   wait_gone PID [TENTHS]             wait up to TENTHS/10 s (default 10 s) for PID to exit
#   pid_of MOUNTPOINT [ROOT]           the pid in the daemon's default status file (under ROOT)
#   summary NAME START                 the failures, "NAME: Ns; N checks skipped" and
#                                      "N passed, N failed"; returns non-zero on any failure

passed=0
failed=0
skipped=0
failures=()

ok() {
    passed=$((passed + 1))
    echo "  ok    $*"
}
bad() {
    failed=$((failed + 1))
    failures+=("$*")
    echo "  FAIL  $*"
}
skip() {
    skipped=$((skipped + 1))
    echo "  skip  $*"
}
# check DESCRIPTION COMMAND...: one check; the command's output is shown only on failure.
check() {
    local what=$1 out
    shift
    if out=$("$@" 2>&1); then
        ok "$what"
    else
        bad "$what"
        printf '%s\n' "$out" | tail -n 20 | sed 's/^/        /'
    fi
}
section() {
    printf '\n--- %s\n' "$*"
}

# wait_gone PID [TENTHS]: wait up to TENTHS tenths of a second (default 100) for a process
# to exit.
wait_gone() {
    local _
    for _ in $(seq "${2:-100}"); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

# pid_of MOUNTPOINT [ROOT]: the daemon's pid from its default status file; ROOT is the root
# directory the daemon runs in (a chroot), MOUNTPOINT its path there.
pid_of() {
    local name
    name=$(printf '%s' "$1" | sed 's|^/||; s|/|-|g')
    sed -n 's/^pid=//p' "${2:-}/run/chironfs/$name.status" 2>/dev/null
}

# summary NAME START: the closing lines; START is the $(date +%s) of the beginning.
summary() {
    local f
    echo
    echo "$1: $(($(date +%s) - $2))s; $skipped checks skipped"
    for f in "${failures[@]}"; do echo "  FAILED: $f"; done
    echo "$passed passed, $failed failed"
    [ "$failed" = 0 ]
}
