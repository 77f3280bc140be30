#!/bin/bash
# An SSHFS "remote" replica for tests: an sshd in its own network namespace, reached over a veth
# pair, mounted with sshfs from the root namespace. `cut` takes the link down so that the server
# stops answering: the mount then behaves like a dead file server.
#
# Usage (as root):
#   tests/support/sshfs-netns.sh up NAME DIR MNT   export DIR (created if needed) on MNT; prints
#                                                  the namespace name and the server address
#   tests/support/sshfs-netns.sh cut NAME          take the veth link down on both ends
#   tests/support/sshfs-netns.sh heal NAME         bring it back up (sshfs does not reconnect)
#   tests/support/sshfs-netns.sh down NAME [MNT]   unmount (fusectl abort if hung), stop sshd,
#                                                  delete the veth pair and the namespace
#   tests/support/sshfs-netns.sh state NAME        print the state file
# After `cut`, the mount hangs until ssh gives up on the server: with the default
# SSHFS_ALIVE=ServerAliveInterval=1,ServerAliveCountMax=2 that is about 3 s, after which sshfs
# exits AND UNMOUNTS ITSELF, leaving the bare (empty) mount point directory: a vanished replica.
# For a mount that stays hung until `down`, use SSHFS_ALIVE=ServerAliveInterval=0 (ssh then
# waits on TCP, many minutes).
# NAME is a short label of your choosing; the namespace is chiron-NAME-PID. State is kept in
# /tmp/chiron-sshfs-NAME.state, written step by step, so `down` also undoes a partial `up`.
# Needs: iproute2, openssh-server, openssh-client, sshfs (scripts/setup.sh installs them).
set -eu
# shellcheck source-path=SCRIPTDIR source=../peer/lib.sh
. "$(dirname "$0")/../peer/lib.sh"
# shellcheck source-path=SCRIPTDIR source=sshd.sh
. "$(dirname "$0")/sshd.sh"
PEER_NAME=sshfs-netns

usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die() { echo "sshfs-netns: error: $*" >&2; exit 1; }

[ "$#" -ge 2 ] || usage
cmd=$1 name=$2
case "$name" in *[!A-Za-z0-9_-]* | "") die "NAME must be letters, digits, - or _" ;; esac
state=/tmp/chiron-sshfs-$name.state

# State: KEY=VALUE lines, appended as each resource comes into being.
st_set() { printf '%s=%s\n' "$1" "$2" >>"$state"; }
st_get() { [ -f "$state" ] && awk -F= -v k="$1" '$1 == k { sub(/^[^=]*=/, ""); v = $0 } END { print v }' "$state"; }

# abs_nofollow PATH: absolute path with the parent resolved but PATH itself not touched (a stat
# of a hung mount point would hang).
abs_nofollow() {
    local d b
    d=$(dirname "$1") b=$(basename "$1")
    d=$(cd "$d" && pwd -P) || return 1
    printf '%s/%s\n' "${d%/}" "$b"
}

do_down() {
    local mnt=${1:-} ns work hv pid p
    [ -f "$state" ] || { echo "sshfs-netns: $name is not up (no $state)" >&2; return 0; }
    ns=$(st_get ns) work=$(st_get work) hv=$(st_get veth_host)
    [ -n "$mnt" ] || mnt=$(st_get mnt)
    if [ -n "$mnt" ]; then
        mnt=$(abs_nofollow "$mnt") || true
        PEER_UMOUNT_TIMEOUT=${PEER_UMOUNT_TIMEOUT:-5} peer_unmount "$mnt" || true
    fi
    # sshfs's ssh client (known by the client key of this setup: unique), then sshfs by its pid
    # (after an abort, sshfs stays blocked on ssh, and ssh on a cut link).
    if [ -n "$work" ]; then
        for p in /proc/[0-9]*; do
            [ "$(readlink "$p/exe" 2>/dev/null)" = /usr/bin/ssh ] || continue
            if tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qxF -- "-oIdentityFile=$work/client_key"; then
                kill -s KILL "${p#/proc/}" 2>/dev/null || true
            fi
        done
    fi
    pid=$(st_get sshfs_pid)
    if [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$(command -v sshfs)")" ]; then
        peer_stop_pid "$pid"
    fi
    # sshd by its pid (checked to still be sshd), then anything else left in the namespace:
    # every process in it was started by `up`.
    pid=$(st_get sshd_pid)
    if [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/sbin/sshd ]; then
        kill -s TERM "$pid" 2>/dev/null || true
    fi
    if [ -n "$ns" ] && ip netns list | awk '{ print $1 }' | grep -qx -- "$ns"; then
        for p in $(ip netns pids "$ns" 2>/dev/null); do
            kill -s KILL "$p" 2>/dev/null || true
        done
    fi
    if [ -n "$hv" ] && ip link show "$hv" >/dev/null 2>&1; then
        ip link del "$hv" || true
    fi
    if [ -n "$ns" ] && ip netns list | awk '{ print $1 }' | grep -qx -- "$ns"; then
        ip netns del "$ns" || true
    fi
    if [ -n "$work" ] && [ -d "$work" ]; then
        rm -rf --one-file-system "$work"
    fi
    rm -f "$state"
    echo "sshfs-netns: $name down"
}

# pick_subnet: a free 10.213.X.Y/30 for the pair, derived from our pid; prints the base address.
pick_subnet() {
    local i n a b used
    used=$(ip -4 -o addr show | awk '{ print $4 }')
    for i in $(seq 0 63); do
        n=$(((($$ + i * 997) % 16384) * 4))
        a=$((n >> 8)) b=$((n & 255))
        if ! grep -q "^10\.213\.$a\.$((b + 1))/" <<<"$used" &&
            ! grep -q "^10\.213\.$a\.$((b + 2))/" <<<"$used"; then
            printf '10.213.%d.%d\n' "$a" "$b"
            return 0
        fi
    done
    return 1
}

do_up() {
    local dir=$1 mnt=$2 ns work hv nv base a b host_ip ns_ip pid sshd_pid i c alive
    [ ! -f "$state" ] || die "$name is already up ($state); run: $0 down $name"
    [ "$(id -u)" = 0 ] || die "must run as root"
    for c in ip sshd ssh-keygen sshfs; do
        command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || die "$c not found (run scripts/setup.sh)"
    done
    mkdir -p "$dir" "$mnt"
    dir=$(cd "$dir" && pwd -P)
    mnt=$(cd "$mnt" && pwd -P)
    ns=chiron-$name-$$
    hv=chv$(printf '%05d' $(($$ % 100000)))h
    nv=${hv%h}n
    : >"$state"
    work=$(mktemp -d "/tmp/chiron-sshfs-$name.XXXXXX")
    st_set work "$work"
    st_set mnt "$mnt"
    # From here on, a failure (or an interrupt) undoes what was done.
    up_ok=0
    trap 'rc=$?; if [ "$up_ok" != 1 ]; then echo "sshfs-netns: up failed; undoing" >&2; do_down; fi; exit "$rc"' EXIT
    trap 'exit 1' INT TERM HUP

    base=$(pick_subnet) || die "no free 10.213.x.y/30 subnet"
    a=${base%.*} b=${base##*.}
    host_ip=$a.$((b + 1)) ns_ip=$a.$((b + 2))

    st_set ns "$ns"
    ip netns add "$ns"
    st_set veth_host "$hv"
    ip link add "$hv" type veth peer name "$nv"
    st_set veth_ns "$nv"
    ip link set "$nv" netns "$ns"
    ip addr add "$host_ip/30" dev "$hv"
    ip link set "$hv" up
    ip netns exec "$ns" ip addr add "$ns_ip/30" dev "$nv"
    ip netns exec "$ns" ip link set "$nv" up
    ip netns exec "$ns" ip link set lo up
    st_set addr "$ns_ip"

    sshd_keys "$work" "chiron-sshfs-$name"
    sshd_start "$ns" "$ns_ip" "$work" "$name" || die "sshd did not start"
    sshd_pid=$(cat "$work/sshd-$name.pid")
    st_set sshd_pid "$sshd_pid"

    alive=${SSHFS_ALIVE:-ServerAliveInterval=1,ServerAliveCountMax=2}
    # No `-o reconnect` (sshfs 3.7 does not know "reconnect=no"; not reconnecting is its default).
    sshfs -o "$alive,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,IdentityFile=$work/client_key,allow_other,BatchMode=yes,LogLevel=ERROR" \
        "root@$ns_ip:$dir" "$mnt"
    peer_wait_mounted "$mnt" "" 10 || die "sshfs did not mount $mnt"
    pid=$(peer_find_daemon "$mnt" "$(command -v sshfs)") || die "cannot find the sshfs process"
    st_set sshfs_pid "$pid"
    up_ok=1
    trap - EXIT INT TERM HUP
    echo "sshfs-netns: $name up: namespace $ns, server root@$ns_ip:$dir (sshd pid $sshd_pid, sshfs pid $pid), mounted on $mnt"
    echo "sshfs-netns: veth $hv (host, $host_ip) <-> $nv (namespace, $ns_ip); state $state"
}

do_link() {
    local updown=$1 ns hv nv
    [ -f "$state" ] || die "$name is not up (no $state)"
    ns=$(st_get ns) hv=$(st_get veth_host) nv=$(st_get veth_ns)
    ip link set "$hv" "$updown"
    ip netns exec "$ns" ip link set "$nv" "$updown"
    echo "sshfs-netns: $name link $updown ($hv, $ns:$nv)"
}

case "$cmd" in
up) [ "$#" = 4 ] || usage; do_up "$3" "$4" ;;
cut) [ "$#" = 2 ] || usage; do_link down ;;
heal) [ "$#" = 2 ] || usage; do_link up ;;
down) [ "$#" -le 3 ] || usage; do_down "${3:-}" ;;
state) cat "$state" ;;
*) usage ;;
esac
