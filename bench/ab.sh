#!/usr/bin/env bash
# A/B of two chironfs binaries on the request path, interleaved so that a noisy machine hits
# both alike: 2 replicas on a fresh tmpfs, fio 4 KiB random writes (psync, 1 job, 4 s: every
# write a FUSE request fanned out to both replicas), ROUNDS rounds of A then B; prints each
# run's IOPS and its 1st and 10th percentile completion latency (on a shared machine the low
# percentiles move far less than the IOPS), then the medians. As root; needs fio (bench/run.sh
# installs it) and python3.
#
#     bench/ab.sh OLD/chironfs NEW/chironfs [ROUNDS]     # default 5 rounds, ~1 min
#
# Used for the cost of the metrics counters (docs/metrics.md).
set -euo pipefail

[ $# -ge 2 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
a=$1 b=$2 rounds=${3:-5}
for bin in "$a" "$b"; do
    [ -x "$bin" ] || { echo "ab.sh: $bin is not an executable" >&2; exit 2; }
done
command -v fio >/dev/null || { echo "ab.sh: fio missing (apt-get install fio)" >&2; exit 2; }

tmp=$(mktemp -d /tmp/chironfs-ab.XXXXXX)
mount -t tmpfs -o size=2g chironfs-ab "$tmp"
cleanup() {
    set +e
    mountpoint -q "$tmp/mnt" && { umount "$tmp/mnt" 2>/dev/null || umount -l "$tmp/mnt"; }
    umount "$tmp" 2>/dev/null || umount -l "$tmp"
    rmdir "$tmp"
}
trap cleanup EXIT

# run BIN: one measurement: "IOPS P1_US P10_US" on stdout.
run() {
    rm -rf "$tmp/a" "$tmp/b" "$tmp/mnt"
    mkdir -p "$tmp/a" "$tmp/b" "$tmp/mnt"
    "$1" --status-file "$tmp/status" -c "$tmp/ctl" "$tmp/a=$tmp/b" "$tmp/mnt"
    fio --name=ab --directory="$tmp/mnt" --rw=randwrite --bs=4k --size=64m --numjobs=1 \
        --time_based --runtime=4 --ioengine=psync --output-format=json 2>/dev/null |
        python3 -c 'import json, sys
w = json.load(sys.stdin)["jobs"][0]["write"]
p = w["clat_ns"]["percentile"]
print("%d %.2f %.2f" % (w["iops"], p["1.000000"] / 1e3, p["10.000000"] / 1e3))'
    umount "$tmp/mnt"
    sleep 0.5
}

# median COLUMN: the median of that column of stdin's lines.
median() { awk -v c="$1" '{ print $c }' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

ra=() rb=()
for ((i = 1; i <= rounds; i++)); do
    ra+=("$(run "$a")")
    rb+=("$(run "$b")")
    echo "round $i: A ${ra[-1]}, B ${rb[-1]}   (IOPS, p1 us, p10 us)"
done
for side in A B; do
    if [ "$side" = A ]; then runs=("${ra[@]}") bin=$a; else runs=("${rb[@]}") bin=$b; fi
    echo "median of $rounds, $side ($bin): $(printf '%s\n' "${runs[@]}" | median 1) IOPS, p1 $(printf '%s\n' "${runs[@]}" | median 2) us, p10 $(printf '%s\n' "${runs[@]}" | median 3) us"
done
echo "load average $(cut -d' ' -f1-3 /proc/loadavg)"
