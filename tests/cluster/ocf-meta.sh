#!/bin/bash
# The OCF 1.1 meta-data of ocf/chironfs, without a mount or a cluster (a second):
#   1. valid against the OCF 1.1 schema: the Relax NG grammar pcs validates OCF 1.1 agents
#      with (/usr/share/pcs/data/ocf-1.1.rng, Debian package pcs), and, when OCF_RNG names
#      it, the ClusterLabs OCF-spec grammar itself (ra/1.1/ra-api.rng of
#      https://github.com/ClusterLabs/OCF-spec, not shipped by Debian); and valid against
#      resource-agents' ra-api-1.dtd with the OCF 1.1 additions its DOCTYPE declares (what
#      ocf-tester checks);
#   2. what OCF 1.1 asks of it: <version> is the OCF API version (1.1), the agent's own
#      version (the package's, from Cargo.toml) is the version attribute of <resource-agent>,
#      a reload-agent action, reloadable="1" on exactly the parameters only the agent reads
#      and `replicas` (updated to the members after an online change, without a remount),
#      a unique-group of its own on the mount point, the status file and the control socket;
#   3. every action the meta-data lists is one the agent accepts (usage names it).
# Exits non-zero on any failure. Run by tests/cluster/ocf-tester.sh; needs xmllint.
# Usage: [OCF_RNG=ra-api.rng] tests/cluster/ocf-meta.sh [AGENT]
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
agent=${1:-$repo/ocf/chironfs}
failed=0
ok() { printf '  ok    %s\n' "$1"; }
bad() {
    failed=$((failed + 1))
    printf '  FAIL  %s\n' "$1"
    [ -z "${2:-}" ] || printf '%s\n' "$2" | sed 's/^/        | /'
}
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}

command -v xmllint >/dev/null || { echo "ocf-meta.sh: xmllint missing (libxml2-utils)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
meta=$tmp/meta.xml
if ! "$agent" meta-data >"$meta" 2>"$tmp/err"; then
    bad "$agent meta-data" "$(cat "$tmp/err")"
    exit 1
fi

# From the DTD's directory, as ocf-tester runs it: the DOCTYPE names ra-api-1.dtd.
dtd_dir=/usr/share/resource-agents
[ -f "$dtd_dir/ra-api-1.dtd" ] || dtd_dir=$tmp
validate() { # validate NAME RNG
    local out
    if out=$(cd "$dtd_dir" && xmllint --noout --relaxng "$2" - <"$meta" 2>&1) && [ "$out" = "- validates" ]; then
        ok "meta-data valid against $1 ($2)"
    else
        bad "meta-data valid against $1 ($2)" "$out"
    fi
}
pcs_rng=/usr/share/pcs/data/ocf-1.1.rng
if [ -f "$pcs_rng" ]; then
    validate "pcs's OCF 1.1 grammar" "$pcs_rng"
else
    bad "pcs's OCF 1.1 grammar: $pcs_rng missing (install pcs: scripts/setup.sh)"
fi
if [ -n "${OCF_RNG:-}" ]; then
    validate "the OCF 1.1 grammar" "$OCF_RNG"
else
    printf '  (OCF_RNG unset: the OCF-spec grammar ra/1.1/ra-api.rng not checked)\n'
fi

if [ -f /usr/share/resource-agents/ra-api-1.dtd ]; then
    if out=$(cd /usr/share/resource-agents && xmllint --noout --valid - <"$meta" 2>&1); then
        ok "meta-data valid against ra-api-1.dtd and its OCF 1.1 additions (ocf-tester's check)"
    else
        bad "meta-data valid against ra-api-1.dtd and its OCF 1.1 additions (ocf-tester's check)" "$out"
    fi
else
    bad "ra-api-1.dtd missing (install resource-agents: scripts/setup.sh)"
fi

x() { xmllint --xpath "$1" "$meta" 2>/dev/null; }
want_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n 1)
check "<version> is the OCF API version 1.1 ($(x 'string(/resource-agent/version)'))" \
    test "$(x 'string(/resource-agent/version)')" = 1.1
check "the agent's version attribute is the package's ($want_version)" \
    test "$(x 'string(/resource-agent/@version)')" = "$want_version"
check "a reload-agent action" test "$(x 'count(//actions/action[@name="reload-agent"])')" = 1
reloadable=$(x '//parameter[@reloadable="1"]/@name' | sed 's/ name="\([^"]*\)"/\1 /g' | tr ' ' '\n' | sed '/^$/d' | sort | tr '\n' ' ')
check "reloadable: exactly the agent's own parameters ($reloadable)" \
    test "$reloadable" = "chironctl force_unmount max_status_age replicas report_degraded "
for p in mountpoint status_file control_socket; do
    g=$(x "string(//parameter[@name=\"$p\"]/@unique-group)")
    n=$(x "count(//parameter[@unique-group=\"$g\"])")
    check "$p has a unique-group of its own ($g)" test -n "$g" -a "$n" = 1
done
usage=$("$agent" usage 2>&1)
for a in $(x '//actions/action/@name' | sed 's/ name="\([^"]*\)"/\1 /g'); do
    case "$usage" in
    *"|$a|"* | *"{$a|"* | *"|$a}"*) ;;
    *) bad "the agent accepts the action $a (usage: $usage)"; continue ;;
    esac
done
[ "$failed" = 0 ] && ok "every listed action is one the agent accepts"

echo "ocf meta-data checks: $failed failed"
[ "$failed" = 0 ]
