#!/bin/bash
# Fresh-machine install test of the .deb (issue 21), on Debian 12 (bookworm) and Debian 13
# (trixie). For each suite:
#   - a minimal root from the archive (mmdebstrap --variant=apt: Essential packages and apt,
#     no fuse3), cached under /var/cache/chironfs-test/SUITE-apt-YYYYMMDD.tar (one a day);
#   - the fuse3 and pacemaker versions the suite offers (apt-cache policy), and whether each
#     package the .deb Suggests exists there;
#   - `apt-get install ./chironfs_*.deb` inside the root: fails if apt cannot resolve the
#     package's declared dependencies from that suite alone;
#   - with /dev (so /dev/fuse), /proc, /sys and a fresh /run in the root: a 2-replica mount by
#     the installed /usr/bin/chironfs, a 1 MiB file written through it and compared byte for byte
#     on both replicas, `chironctl status`, unmount with the suite's `fusermount3 -u`, the daemon
#     gone (polled from outside, 10 s at most);
#   - the suite's cluster tools the package Suggests (pacemaker-cli-utils, resource-agents,
#     crmsh: Pacemaker 2.1 in bookworm, 3.0 in trixie) against the installed OCF agent:
#     ocf-tester, crm_resource --validate, crm configure primitive into a CIB file;
#   - `dpkg -r` and `dpkg -P chironfs`.
# The .deb is built first with scripts/build-deb.sh (--deb FILE tests a given one instead).
# Everything runs in a private mount namespace (unshare -m), so no bind mount of /dev etc. is
# ever visible outside it; the roots are unmounted and removed at exit, also on failure.
# Downloaded .debs are kept in /var/cache/chironfs-test/apt-SUITE/ for the next run.
# Ends with "N passed, N failed".
# Usage: tests/packaging/chroot-install.sh [--no-cache] [--deb FILE] [SUITE...]   (as root)
#   --no-cache   neither use nor fill the cache (a cold run, as on a fresh machine)
#   SUITE        default: bookworm trixie
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -u
self=$(readlink -f "$0")
cd "$(dirname "$self")/../.." || exit 1
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export LC_ALL=C.UTF-8

# ok, bad, skip, check, section, wait_gone, pid_of, summary
# shellcheck source=tests/packaging/lib.sh
. tests/packaging/lib.sh

usage() {
    sed -n '/^# Usage:/,/^# Environment/s/^# //p' "$self" >&2
    exit 2
}

[ "$(id -u)" = 0 ] || { echo "chroot-install.sh: must run as root (chroots, mounts)" >&2; exit 1; }

# A private mount namespace for all of it: the binds of /dev, /proc and /sys into the roots, the
# FUSE mounts and mmdebstrap's own mounts never reach the host's mount table, and they vanish
# with the namespace whatever happens to this script.
if [ "${CHIRONFS_CHROOT_NS:-}" != "$$" ]; then
    command -v unshare >/dev/null || { echo "chroot-install.sh: unshare (util-linux) not found" >&2; exit 1; }
    # exec keeps the pid: the re-executed script recognises itself by it.
    CHIRONFS_CHROOT_NS=$$ exec unshare --mount --propagation private -- "$self" "$@"
fi
mount --make-rprivate /

use_cache=1
deb=""
suites=()
while [ $# -gt 0 ]; do
    case $1 in
        --no-cache) use_cache=0 ;;
        --deb)
            [ $# -ge 2 ] || usage
            deb=$(readlink -f "$2")
            shift
            ;;
        -h | --help) usage ;;
        -*) usage ;;
        *) suites+=("$1") ;;
    esac
    shift
done
[ ${#suites[@]} -gt 0 ] || suites=(bookworm trixie)

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=/var/cache/chironfs-test
start=$(date +%s)
tmp=$(mktemp -d /tmp/chironfs-chroot.XXXXXX)
chmod 0755 "$tmp"

# mounts_under DIR: the mount points at or below DIR, deepest first.
mounts_under() {
    awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# unmount_all DIR: unmount everything at or below DIR (each mount only once it has no
# mounts below it); a FUSE mount whose daemon hangs is detached. Fails if anything is left.
unmount_all() {
    local m
    for m in $(mounts_under "$1"); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
    [ -z "$(mounts_under "$1")" ]
}

# procs_in ROOT: the pids of the processes chrooted into ROOT (all started by this test).
procs_in() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" != "$1" ] || echo "${p#/proc/}"
    done
}

# stop_procs_in ROOT: KILL what still runs in ROOT (a daemon whose unmount failed, say), by pid.
stop_procs_in() {
    local p
    for p in $(procs_in "$1"); do
        echo "  (killing pid $p, still running in $1: $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null))"
        kill -KILL "$p" 2>/dev/null
    done
    for p in $(procs_in "$1"); do wait_gone "$p" 50; done
}

cleanup() {
    local r
    for r in "$tmp"/*/; do
        [ ! -d "$r" ] || stop_procs_in "${r%/}"
    done
    if unmount_all "$tmp"; then
        rm -rf --one-file-system "$tmp"
    else
        echo "chroot-install.sh: mounts left under $tmp, not removing it:" >&2
        mounts_under "$tmp" >&2
    fi
}
trap cleanup EXIT
trap 'echo "chroot-install.sh: interrupted"; exit 130' INT
trap 'echo "chroot-install.sh: terminated"; exit 143' TERM HUP

# --- the package and the tools ---------------------------------------------------------------
if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "chroot-install.sh: installing mmdebstrap"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends mmdebstrap; } >"$tmp/apt.log" 2>&1 ||
        { tail -n 20 "$tmp/apt.log"; echo "chroot-install.sh: cannot install mmdebstrap" >&2; exit 1; }
fi

section "the package"
if [ -z "$deb" ]; then
    if scripts/build-deb.sh >"$tmp/build-deb.log" 2>&1; then
        ok "scripts/build-deb.sh"
    else
        bad "scripts/build-deb.sh"
        tail -n 30 "$tmp/build-deb.log" | sed 's/^/        /'
    fi
    deb=$(sed -n 's/^build-deb.sh: \(.*\.deb\)$/\1/p' "$tmp/build-deb.log" | tail -n 1)
    [ -z "$deb" ] || deb=$(readlink -f "$deb")
fi
if [ -z "$deb" ] || [ ! -f "$deb" ]; then
    echo "chroot-install.sh: no .deb to test; stopping"
    bad "a .deb to install"
    summary chroot-install "$start"
    exit 1
fi
echo "  $deb"
echo "  Depends: $(dpkg-deb -f "$deb" Depends)"
suggests=$(dpkg-deb -f "$deb" Suggests)
version=$(dpkg-deb -f "$deb" Version)
want="chironfs ${version%%-*}"

# --- one suite -------------------------------------------------------------------------------

# cached_root SUITE: today's cached minimal root of SUITE (it may not exist yet).
cached_root() {
    echo "$CACHE/$1-apt-$(date +%Y%m%d).tar"
}

# make_root SUITE: a new minimal root of SUITE as a tarball; prints its path. Cached unless
# --no-cache, replacing the older ones of that suite.
make_root() {
    local suite=$1 key out f
    out=$tmp/$suite.tar
    # The package lists are kept (--skip=cleanup/apt/lists): apt-get update in the root then
    # only fetches what changed since. dpkg without fsync (force-unsafe-io, kept in the root's
    # /etc/dpkg/dpkg.cfg.d/) halves the installs in a throwaway root.
    TMPDIR=$tmp mmdebstrap --variant=apt --skip=cleanup/apt/lists --dpkgopt=force-unsafe-io \
        "$suite" "$out" "$MIRROR" \
        >"$tmp/mmdebstrap-$suite.log" 2>&1 || return 1
    if [ "$use_cache" = 1 ]; then
        key=$(cached_root "$suite")
        for f in "$CACHE/$suite"-apt-*.tar; do
            [ "$f" = "$key" ] || rm -f "$f"
        done
        mv "$out" "$key.part" && mv "$key.part" "$key" && out=$key
    fi
    echo "$out"
}

# in_root COMMAND...: run COMMAND in the current root with a clean environment.
in_root() {
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive ${http_proxy:+http_proxy=$http_proxy} "$@"
}

# candidate PACKAGE: the version of PACKAGE that apt in the root would install, or "none".
candidate() {
    local v
    v=$(in_root apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p')
    [ -n "$v" ] && [ "$v" != "(none)" ] || v=none
    echo "$v"
}

# since START: the seconds elapsed since START (a $(date +%s)), as "Ns".
since() {
    echo "$(($(date +%s) - $1))s"
}

# cluster_tools SUITE: the suite's own cluster tools (what the package Suggests; pacemaker's
# command-line tools rather than the whole cluster stack) against the installed OCF agent:
# ocf-tester (start, monitor, stop: real mounts in the root), crm_resource --validate, and
# crmsh accepting a primitive into a CIB file. Pacemaker 2.1 in bookworm, 3.0 in trixie.
cluster_tools() {
    local suite=$1 agent=/usr/lib/ocf/resource.d/chiron/chironfs log=$tmp/apt-cluster-$1.log v t
    if [ ! -x "$root$agent" ]; then
        skip "$suite: cluster tools: the package has no OCF agent"
        return
    fi
    # ocf-tester runs xmllint, which resource-agents does not depend on.
    t=$(date +%s)
    if ! in_root apt-get install -y -q --no-install-recommends pacemaker-cli-utils resource-agents \
        crmsh libxml2-utils >"$log" 2>&1; then
        bad "$suite: apt-get install pacemaker-cli-utils resource-agents crmsh"
        tail -n 20 "$log" | sed 's/^/        /'
        return
    fi
    # shellcheck disable=SC2016 # dpkg-query's format, not a shell expansion
    v=$(in_root dpkg-query -W -f='${Package} ${Version}\n' pacemaker-cli-utils resource-agents crmsh |
        paste -sd' ' | sed 's/ \([a-z]\)/, \1/g')
    ok "$suite: the suggested cluster tools install ($(since "$t")): $v"
    mkdir -p "$root/srv/ocf-a" "$root/srv/ocf-b"
    check "$suite: ocf-tester against the installed agent" in_root timeout 300 ocf-tester -n chroottest \
        -o replicas=/srv/ocf-a=/srv/ocf-b -o mountpoint=/mnt/ocf -o new_set=true "$agent"
    check "$suite: crm_resource --validate --class ocf --provider chiron --agent chironfs" \
        in_root crm_resource --validate --class ocf --provider chiron --agent chironfs \
        --option replicas=/srv/ocf-a=/srv/ocf-b --option mountpoint=/mnt/ocf
    check "$suite: crm configure primitive ... ocf:chiron:chironfs (CIB_file, no cluster)" \
        in_root sh -c 'cibadmin --empty >/tmp/cib.xml && export CIB_file=/tmp/cib.xml &&
            crm configure property stonith-enabled=false &&
            crm configure primitive fs ocf:chiron:chironfs params replicas=/srv/ocf-a=/srv/ocf-b \
                mountpoint=/mnt/ocf op monitor interval=10s timeout=20s &&
            crm configure show fs | grep -q "ocf:chiron:chironfs"'
}

test_suite() {
    local suite=$1 tarball mnt=/mnt/chiron log pid left t alt alts group groups missing found rdeb
    section "$suite: a minimal root (mmdebstrap --variant=apt $suite)"
    tarball=$(cached_root "$suite")
    if [ "$use_cache" = 1 ] && [ -f "$tarball" ]; then
        echo "  (cached: $tarball)"
    elif tarball=$(make_root "$suite"); then
        ok "$suite: mmdebstrap --variant=apt $suite ($(since "$suite_start"))"
    else
        bad "$suite: mmdebstrap --variant=apt $suite"
        tail -n 20 "$tmp/mmdebstrap-$suite.log" | sed 's/^/        /'
        return
    fi
    root=$tmp/$suite
    mkdir "$root"
    if ! tar -C "$root" --numeric-owner -xpf "$tarball"; then
        bad "$suite: unpack $tarball"
        return
    fi
    [ "$use_cache" = 1 ] || rm -f "$tarball"
    check "$suite: the fresh root has neither fuse3 nor chironfs" sh -c \
        "[ ! -e '$root/usr/bin/fusermount3' ] && [ ! -e '$root/usr/bin/chironfs' ]"

    # The host's /dev (with /dev/fuse), a proc and sysfs of this namespace, an empty /run.
    if ! { mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev" &&
        mount -t proc proc "$root/proc" &&
        mount --rbind /sys "$root/sys" && mount --make-rslave "$root/sys" &&
        mount -t tmpfs -o mode=0755 tmpfs "$root/run"; }; then
        bad "$suite: mount /dev, /proc, /sys, /run in the root"
        return
    fi
    if [ "$use_cache" = 1 ]; then
        mkdir -p "$CACHE/apt-$suite"
        mount --bind "$CACHE/apt-$suite" "$root/var/cache/apt/archives"
    fi
    check "$suite: /dev/fuse is a character device in the root" test -c "$root/dev/fuse"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"
    cp "$deb" "$root/tmp/"
    rdeb=/tmp/$(basename "$deb")

    t=$(date +%s)
    check "$suite: apt-get update" in_root apt-get update -q
    echo "  (apt-get update: $(since "$t"))"
    echo "  $suite offers: fuse3 $(candidate fuse3)," \
        "pacemaker $(candidate pacemaker), resource-agents $(candidate resource-agents)," \
        "crmsh $(candidate crmsh), pcs $(candidate pcs)"
    # Each Suggests group (A | B) should name at least one package the suite has.
    missing=()
    IFS=',' read -ra groups <<<"$suggests"
    for group in "${groups[@]}"; do
        found=0
        IFS='|' read -ra alts <<<"$group"
        for alt in "${alts[@]}"; do
            alt=${alt// /}
            [ "$(candidate "${alt%%(*}")" = none ] || found=1
        done
        [ "$found" = 1 ] || missing+=("${group# }")
    done
    if [ ${#missing[@]} = 0 ]; then
        ok "$suite: every Suggests of the package exists in $suite"
    else
        bad "$suite: Suggests naming nothing $suite has: ${missing[*]}"
    fi

    log=$tmp/apt-install-$suite.log
    t=$(date +%s)
    if in_root apt-get install -y -q --no-install-recommends "$rdeb" >"$log" 2>&1; then
        ok "$suite: apt-get install ./$(basename "$deb") (its declared dependencies, from $suite; $(since "$t"))"
    else
        bad "$suite: apt-get install ./$(basename "$deb")"
        tail -n 20 "$log" | sed 's/^/        /'
        return
    fi
    # shellcheck disable=SC2016 # dpkg-query's format, not a shell expansion
    echo "  installed: $(in_root dpkg-query -W -f='${Package} ${Version}\n' chironfs fuse3 'libfuse3-*' \
        2>/dev/null | paste -sd' ' | sed 's/ \([a-z]\)/, \1/g')"
    check "$suite: fuse3 came in as a dependency" sh -c \
        "chroot '$root' dpkg-query -W -f='\${Status}' fuse3 | grep -q 'install ok installed'"
    check "$suite: chironfs --version prints '$want'" sh -c \
        "[ \"\$(chroot '$root' /usr/bin/chironfs --version)\" = '$want' ]"

    mkdir -p "$root/srv/a" "$root/srv/b" "$root$mnt"
    head -c 1048576 /dev/urandom >"$root/tmp/payload"
    if in_root /usr/bin/chironfs -l /var/log/chironfs-test.log /srv/a=/srv/b "$mnt" \
        >"$tmp/mount-$suite.log" 2>&1 && mountpoint -q "$root$mnt"; then
        ok "$suite: chironfs /srv/a=/srv/b $mnt (in the root)"
    else
        bad "$suite: chironfs /srv/a=/srv/b $mnt (in the root)"
        cat "$tmp/mount-$suite.log" "$root/var/log/chironfs-test.log" 2>/dev/null | tail -n 20 |
            sed 's/^/        /'
        return
    fi
    pid=$(pid_of "$mnt" "$root")
    check "$suite: the daemon (pid ${pid:-?}) runs the installed /usr/bin/chironfs" sh -c \
        "[ -n '$pid' ] && [ \"\$(readlink /proc/$pid/exe)\" = '$root/usr/bin/chironfs' ]"
    check "$suite: a 1 MiB file written through the mount" in_root cp /tmp/payload "$mnt/payload"
    check "$suite: ... is on both replicas, byte for byte" sh -c \
        "cmp '$root/tmp/payload' '$root/srv/a/payload' && cmp '$root/tmp/payload' '$root/srv/b/payload'"
    check "$suite: ... reads back through the mount" cmp "$root/tmp/payload" "$root$mnt/payload"
    check "$suite: chironctl -m $mnt status" in_root /usr/bin/chironctl -m "$mnt" status
    check "$suite: fusermount3 -u $mnt (the suite's fuse3)" in_root fusermount3 -u "$mnt"
    if [ -n "$pid" ]; then
        check "$suite: the daemon exits (within 10 s)" wait_gone "$pid" 100
    fi
    check "$suite: the mount is gone" sh -c "! mountpoint -q '$root$mnt'"

    cluster_tools "$suite"
    left=$(procs_in "$root" | paste -sd' ')
    if [ -z "$left" ]; then
        ok "$suite: nothing of the test still runs in the root"
    else
        bad "$suite: still running in the root: pids $left"
    fi

    check "$suite: dpkg -r chironfs" in_root dpkg -r chironfs
    check "$suite: ... programs gone, fuse3 kept" sh -c \
        "[ ! -e '$root/usr/bin/chironfs' ] && [ ! -e '$root/usr/bin/chironctl' ] && [ -x '$root/usr/bin/fusermount3' ]"
    check "$suite: dpkg -P chironfs" in_root dpkg -P chironfs
    # Keep the .deb cache from growing: drop what the archive no longer has.
    [ "$use_cache" = 0 ] || in_root apt-get autoclean -q >/dev/null 2>&1

    stop_procs_in "$root"
    if unmount_all "$root"; then
        rm -rf --one-file-system "$root"
    else
        bad "$suite: unmount everything under $root"
    fi
}

for suite in "${suites[@]}"; do
    suite_start=$(date +%s)
    if [ "$use_cache" = 1 ]; then
        # One run at a time per suite uses the cache (the root tarball, apt's .deb directory).
        mkdir -p "$CACHE"
        exec 8>"$CACHE/lock-$suite"
        if ! flock -w 1800 8; then
            bad "$suite: another run held $CACHE/lock-$suite for 30 minutes"
            continue
        fi
    fi
    test_suite "$suite"
    [ "$use_cache" = 0 ] || exec 8>&-
    echo "  ($suite: $(since "$suite_start"))"
done

summary chroot-install "$start"
