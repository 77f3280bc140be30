#!/bin/bash
# Runs a command with the kernel's FUSE over io_uring switched on (fuse.enable_uring=1), so
# that the chironfs mounts it makes serve their requests through per-CPU rings, then puts the
# switch back as it was (also on failure or interrupt). Used by scripts/test.sh to run the
# integration tests, fsx and pjdfstest a second time over the rings.
#
# Usage: tests/peer/with-io-uring.sh COMMAND [ARGS...]
# Fails (exit 2) when the kernel has no FUSE over io_uring (Linux 6.14+, CONFIG_FUSE_IO_URING):
# a run that silently used /dev/fuse would prove nothing about the rings.
set -eu
switch=/sys/module/fuse/parameters/enable_uring
if [ ! -w "$switch" ]; then
    echo "with-io-uring.sh: this kernel has no FUSE over io_uring ($switch is missing)" >&2
    exit 2
fi
was=$(cat "$switch")
trap 'echo "$was" > "$switch"' EXIT
trap 'exit 130' INT TERM
echo 1 > "$switch"
echo "with-io-uring.sh: fuse.enable_uring=$(cat "$switch") (was $was)"
"$@"
