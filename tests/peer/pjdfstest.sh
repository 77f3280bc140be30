#!/bin/bash
# pjdfstest 0.2.2 (the POSIX filesystem suite) through a 2-replica chironfs mount on tmpfs, under
# a watchdog, with failures checked against an allow-list; then the two replicas are compared.
#
# Usage: tests/peer/pjdfstest.sh [--native] [--timeout MIN] [-v] [PATTERN...]
#   --native       run on a plain tmpfs directory instead (the reference numbers)
#   --timeout MIN  watchdog: after MIN minutes (default 10, env PJDFSTEST_TIMEOUT_MIN; or
#                  env PJDFSTEST_TIMEOUT_SEC in seconds) the FUSE connection is aborted through
#                  fusectl, pjdfstest is killed, and the run fails
#   -v             print pjdfstest's whole output, not only failures and the summary
#   PATTERN...     only the tests whose names contain one of these (pjdfstest's own filter)
# Allow-list: tests/peer/pjdfstest-known-failures.txt, one test name (as pjdfstest prints it,
# e.g. chmod::change_perm::socket) per line, then `# reason`. A failure not listed fails the
# run; listed tests that now pass are reported (remove them from the list).
# Env: CHIRONFS, CHIRONFS_OPTS and the PEER_* settings of lib.sh.
set -eu
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

native=0
timeout_min=${PJDFSTEST_TIMEOUT_MIN:-10}
verbose=0
patterns=()
while [ "$#" -gt 0 ]; do
    case "$1" in
    --native) native=1 ;;
    --timeout) timeout_min=$2; shift ;;
    -v) verbose=1 ;;
    -h | --help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "pjdfstest.sh: unknown option: $1 (see --help)" >&2; exit 2 ;;
    *) patterns+=("$1") ;;
    esac
    shift
done
known=$PEER_LIB_DIR/pjdfstest-known-failures.txt

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
command -v pjdfstest >/dev/null 2>&1 ||
    { echo "pjdfstest.sh: pjdfstest not installed (run scripts/setup.sh)" >&2; exit 1; }

# The users and groups of the config's dummy_auth entries.
getent group nogroup >/dev/null || groupadd -r nogroup
getent group daemon >/dev/null || groupadd -r daemon
getent passwd nobody >/dev/null ||
    useradd -r -g nogroup -d /nonexistent -s /usr/sbin/nologin nobody
getent passwd daemon >/dev/null ||
    useradd -r -g daemon -d /usr/sbin -s /usr/sbin/nologin daemon

peer_init pjd

# The Linux config of shared/design/peer-suites.md (modelled on the crate's ci/linux-ext4.toml).
cat >"$PEER_WORK/pjdfstest.toml" <<'EOF'
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}
[settings]
naptime = 0.01
allow_remount = false
expected_failures = []
[dummy_auth]
entries = [ ["nobody", "nogroup"], ["daemon", "daemon"] ]
EOF

# The tests run on tmpfs; the secondary filesystem (for the EXDEV tests) is another tmpfs.
# Paths stay short: pjdfstest binds unix sockets by absolute path (at most 107 bytes) in
# directories two levels below -p, so -p longer than about 45 bytes fails the socket tests.
peer_tmpfs "$PEER_WORK/t"
peer_tmpfs "$PEER_WORK/s"
if [ "$native" = 1 ]; then
    base=$PEER_WORK/t
    what="native tmpfs"
else
    rep1=$PEER_WORK/t/r1 rep2=$PEER_WORK/t/r2
    peer_mount "$PEER_WORK/m" "$rep1" "$rep2"
    base=$PEER_WORK/m
    what="chironfs, 2 replicas on tmpfs"
fi
# pjdfstest 0.2.2's create_path_max underflows (and its 14 enametoolong_path tests fail with
# "capacity overflow") when (PATH_MAX - 1 - len(test dir)) is a multiple of NAME_MAX/2; the test
# dir is -p plus two 10-character temp names. Pick a -p whose length avoids that.
dir=$base/pjd
if [ $(((4095 - ${#dir} - 22) % 127)) = 0 ]; then
    dir=$base/pjdx
fi
mkdir -p "$dir"
[ "${#dir}" -le 40 ] || peer_log "warning: test dir $dir is long: the socket tests may fail"

out=$PEER_WORK/pjdfstest.out
limit=${PJDFSTEST_TIMEOUT_SEC:-$((timeout_min * 60))}
echo "pjdfstest: $what: $dir (secondary $PEER_WORK/s), watchdog ${limit}s"
start=$(date +%s)
abort_mnt=""
[ "$native" = 1 ] || abort_mnt=$base
rc=0
export NO_COLOR=1 # plain output, to parse
peer_watchdog "$limit" "$abort_mnt" "$out" \
    pjdfstest -c "$PEER_WORK/pjdfstest.toml" -p "$dir" -s "$PEER_WORK/s" ${patterns[@]+"${patterns[@]}"} ||
    rc=$?
hung=$PEER_WATCHDOG_FIRED
elapsed=$(($(date +%s) - start))

# Results: "NAME   ok|FAILED|skipped|failed as expected|PASSED UNEXPECTEDLY".
sed 's/\x1b\[[0-9;]*m//g' "$out" >"$out.plain"
awk '$NF == "ok" || $NF == "FAILED" || $NF == "skipped" { print $1, $NF }' "$out.plain" >"$PEER_WORK/results"
n_pass=$(awk '$2 == "ok"' "$PEER_WORK/results" | wc -l)
n_fail=$(awk '$2 == "FAILED"' "$PEER_WORK/results" | wc -l)
n_skip=$(awk '$2 == "skipped"' "$PEER_WORK/results" | wc -l)
summary=$(grep '^Summary:' "$out.plain" || true)

if [ "$verbose" = 1 ]; then
    cat "$out.plain"
else
    # Each failure with its message, without the backtraces.
    awk '$NF == "FAILED" { show = 1; print; next }
         /^Backtrace:/ { show = 0 }
         /^[^ \t]/ && $NF != "FAILED" { show = 0 }
         show && /^\t/ { print }' "$out.plain"
fi
echo "pjdfstest: $what: $n_pass passed, $n_fail failed, $n_skip skipped in ${elapsed}s"
[ -z "$summary" ] || echo "pjdfstest: $summary"

fail=0
if [ "$hung" = 1 ]; then
    echo "pjdfstest: FAIL: hung (watchdog after ${limit}s); the hung test is the one after the last line printed" >&2
    fail=1
elif [ -z "$summary" ]; then
    echo "pjdfstest: FAIL: pjdfstest ended without a summary (exit $rc):" >&2
    tail -n 20 "$out.plain" >&2
    fail=1
fi

# Allow-list.
listed=$PEER_WORK/known
if [ -f "$known" ]; then
    sed 's/#.*//' "$known" | awk 'NF { print $1 }' | LC_ALL=C sort -u >"$listed"
else
    : >"$listed"
fi
awk '$2 == "FAILED" { print $1 }' "$PEER_WORK/results" | LC_ALL=C sort -u >"$PEER_WORK/failed"
awk '$2 == "ok" { print $1 }' "$PEER_WORK/results" | LC_ALL=C sort -u >"$PEER_WORK/passed"
LC_ALL=C comm -23 "$PEER_WORK/failed" "$listed" >"$PEER_WORK/unexpected"
LC_ALL=C comm -12 "$PEER_WORK/passed" "$listed" >"$PEER_WORK/now-passing"
n_known=$(LC_ALL=C comm -12 "$PEER_WORK/failed" "$listed" | wc -l)
if [ "$native" = 1 ]; then
    # The allow-list is for chironfs; natively every failure counts.
    [ ! -s "$PEER_WORK/failed" ] || fail=1
else
    if [ -s "$PEER_WORK/unexpected" ]; then
        echo "pjdfstest: FAIL: $(wc -l <"$PEER_WORK/unexpected") failure(s) not in $known:" >&2
        sed 's/^/    /' "$PEER_WORK/unexpected" >&2
        fail=1
    fi
    [ "$n_known" = 0 ] || echo "pjdfstest: $n_known known failure(s) (allow-listed)"
    if [ -s "$PEER_WORK/now-passing" ]; then
        echo "pjdfstest: allow-listed but now passing (remove from $(basename "$known")):"
        sed 's/^/    /' "$PEER_WORK/now-passing"
    fi
    if [ "$hung" = 0 ]; then
        # pjdfstest removes its files when it ends: the replicas must agree on what is left.
        if peer_compare_replicas "$rep1" "$rep2"; then
            echo "pjdfstest: replicas identical after the run"
        else
            echo "pjdfstest: FAIL: the replicas differ after the run" >&2
            fail=1
        fi
    fi
fi

if [ "$fail" = 0 ]; then
    echo "pjdfstest: PASS"
else
    keep=$(mktemp -d /tmp/chironfs-pjdfstest-artifacts.XXXXXX)
    cp "$out.plain" "$keep/pjdfstest.out"
    [ "$native" = 1 ] || cp "$PEER_LAST_LOG" "$keep/chironfs.log" 2>/dev/null || true
    echo "pjdfstest: FAIL (output in $keep)" >&2
    exit 1
fi
