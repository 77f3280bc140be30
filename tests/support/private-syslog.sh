#!/bin/bash
# A private rsyslogd for tests: its own config, pid file, work directory and socket, so that the
# system's syslog (if any) is never touched and no global /dev/log is created.
#
# Usage:
#   tests/support/private-syslog.sh start DIR   listen on DIR/log.sock, write DIR/messages
#   tests/support/private-syslog.sh stop DIR    stop that rsyslogd (by DIR/rsyslogd.pid)
# Each line of DIR/messages: TIME SEVERITY FACILITY TAG MESSAGE, e.g.
#   2026-11-24T10:20:01.123456+00:00 alert daemon chironfs[123]: replica 2 out of service
# Point a program at DIR/log.sock (chironfs: --syslog-socket DIR/log.sock); by hand:
#   logger --socket DIR/log.sock -p daemon.alert hello
set -eu

usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die() { echo "private-syslog: error: $*" >&2; exit 1; }

[ "$#" = 2 ] || usage
cmd=$1
dir=$2

rsyslogd=$(command -v rsyslogd || echo /usr/sbin/rsyslogd)

# alive PID: a running rsyslogd (not a zombie, not a reused pid).
alive() {
    [ -n "$1" ] && [ "$(readlink "/proc/$1/exe" 2>/dev/null)" = "$(readlink -f "$rsyslogd")" ] &&
        [ "$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

case "$cmd" in
start)
    [ -x "$rsyslogd" ] || die "rsyslogd not found (run scripts/setup.sh)"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd -P)
    if [ -f "$dir/rsyslogd.pid" ] && alive "$(cat "$dir/rsyslogd.pid")"; then
        die "already running in $dir (pid $(cat "$dir/rsyslogd.pid"))"
    fi
    # A unix socket path is at most 107 bytes.
    [ "${#dir}" -le 98 ] || die "DIR too long for a unix socket path: $dir"
    mkdir -p "$dir/work"
    rm -f "$dir/log.sock" "$dir/rsyslogd.pid"
    cat >"$dir/rsyslog.conf" <<EOF
global(workDirectory="$dir/work")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="$dir/log.sock" CreatePath="on")
template(name="chironTests" type="string"
         string="%timegenerated:::date-rfc3339% %syslogseverity-text% %syslogfacility-text% %syslogtag%%msg%\\n")
*.* action(type="omfile" file="$dir/messages" template="chironTests")
EOF
    : >>"$dir/messages"
    if ! "$rsyslogd" -f "$dir/rsyslog.conf" -i "$dir/rsyslogd.pid" >"$dir/rsyslogd.out" 2>&1; then
        cat "$dir/rsyslogd.out" >&2
        die "rsyslogd failed to start"
    fi
    i=0
    while { [ ! -S "$dir/log.sock" ] || [ ! -s "$dir/rsyslogd.pid" ]; } && [ "$i" -lt 100 ]; do
        sleep 0.05
        i=$((i + 1))
    done
    if [ ! -S "$dir/log.sock" ] || [ ! -s "$dir/rsyslogd.pid" ]; then
        cat "$dir/rsyslogd.out" >&2
        die "rsyslogd did not create $dir/log.sock within 5s"
    fi
    echo "private-syslog: rsyslogd pid $(cat "$dir/rsyslogd.pid"): socket $dir/log.sock, log $dir/messages"
    ;;
stop)
    [ -f "$dir/rsyslogd.pid" ] || { echo "private-syslog: not running in $dir (no rsyslogd.pid)"; exit 0; }
    pid=$(cat "$dir/rsyslogd.pid")
    if alive "$pid"; then
        kill -s TERM "$pid"
        i=0
        while alive "$pid" && [ "$i" -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
        if alive "$pid"; then
            kill -s KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$dir/rsyslogd.pid" "$dir/log.sock"
    echo "private-syslog: stopped (pid $pid)"
    ;;
*) usage ;;
esac
