# shellcheck shell=bash
# Shared helpers for the cluster tests (ocf-tester.sh, two-node.sh). Source it from bash:
#
#   . "$(dirname "$0")/lib.sh"
#   cl_init NAME                  # temp workspace $CL_WORK (mode 0755), teardown trap
#   cl_binaries                   # copy chironfs and chironctl into $CL_WORK/bin
#   cl_install_agent              # install ocf/chironfs as ocf:chiron:chironfs (undone at exit)
#   cl_at_exit 'COMMAND'          # run COMMAND at teardown (last registered runs first)
#
# Environment: CHIRONFS, CHIRONCTL (default: target/release/ of this repository).
# Every process a test starts has $CL_WORK in its command line; the teardown kills exactly
# those (by pid), then undoes the agent installation and removes the workspace.

CL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CL_REPO=$(cd "$CL_DIR/../.." && pwd)
CL_WORK=""
CL_EXIT=()
CL_AGENT_DIR=/usr/lib/ocf/resource.d/chiron
CL_AGENT=$CL_AGENT_DIR/chironfs

cl_log() { printf '%s: %s\n' "${CL_NAME:-cluster}" "$*" >&2; }
cl_die() { cl_log "error: $*"; exit 1; }

cl_init() {
    CL_NAME=$1
    [ "$(id -u)" = 0 ] || cl_die "must run as root"
    CL_WORK=$(mktemp -d "/tmp/chironfs-$CL_NAME.XXXXXX")
    chmod 0755 "$CL_WORK"
    trap 'cl_teardown' EXIT
    trap 'cl_log "interrupted"; exit 130' INT
    trap 'cl_log "terminated"; exit 143' TERM HUP
}

cl_at_exit() { CL_EXIT+=("$1"); }

# cl_need CMD...: fail unless every CMD is installed.
cl_need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || cl_die "$c not found (run scripts/setup.sh)"
    done
}

# cl_binaries: private copies of the binaries, so that a rebuild during the test cannot swap
# them, in a directory every user can read.
cl_binaries() {
    local fs=${CHIRONFS:-$CL_REPO/target/release/chironfs}
    local ctl=${CHIRONCTL:-$CL_REPO/target/release/chironctl}
    [ -x "$fs" ] || cl_die "chironfs binary not found at $fs (run scripts/build.sh, or set CHIRONFS)"
    [ -x "$ctl" ] || cl_die "chironctl binary not found at $ctl (run scripts/build.sh, or set CHIRONCTL)"
    mkdir -p "$CL_WORK/bin"
    install -m 0755 "$fs" "$CL_WORK/bin/chironfs"
    install -m 0755 "$ctl" "$CL_WORK/bin/chironctl"
}

# cl_install_agent: install the agent where the cluster tools look for it; a file that was
# there before is put back at exit, a directory made here is removed.
cl_install_agent() {
    if [ ! -d "$CL_AGENT_DIR" ]; then
        mkdir -p "$CL_AGENT_DIR"
        cl_at_exit "rmdir '$CL_AGENT_DIR' 2>/dev/null || true"
    fi
    if [ -e "$CL_AGENT" ]; then
        cp -p "$CL_AGENT" "$CL_WORK/agent.orig"
        cl_at_exit "cp -p '$CL_WORK/agent.orig' '$CL_AGENT'"
    else
        cl_at_exit "rm -f '$CL_AGENT'"
    fi
    install -m 0755 "$CL_REPO/ocf/chironfs" "$CL_AGENT"
}

# cl_kill_ours: KILL every process whose command line mentions the workspace (all of them
# were started by this test), and wait a little for them to go.
cl_kill_ours() {
    local p pids i
    [ -n "$CL_WORK" ] || return 0
    for i in 1 2 3; do
        pids=""
        while read -r p; do
            if [ "$p" != "$$" ] && [ "$p" != "$BASHPID" ]; then
                pids="$pids $p"
            fi
        done < <(grep -lF -- "$CL_WORK" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3)
        [ -n "$pids" ] || return 0
        # shellcheck disable=SC2086 # a list of pids
        kill -KILL $pids 2>/dev/null || true
        sleep 0.3
    done
}

cl_teardown() {
    local rc=$? i
    trap - EXIT INT TERM HUP
    set +e
    for ((i = ${#CL_EXIT[@]} - 1; i >= 0; i--)); do
        eval "${CL_EXIT[i]}"
    done
    cl_kill_ours
    if [ -n "$CL_WORK" ] && [ -d "$CL_WORK" ]; then
        if [ "${CL_KEEP:-0}" = 1 ]; then
            cl_log "workspace kept: $CL_WORK"
        else
            rm -rf --one-file-system "$CL_WORK"
        fi
    fi
    exit "$rc"
}
