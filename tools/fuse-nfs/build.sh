#!/usr/bin/env bash
# Builds fuse-nfs (a FUSE NFS client over libnfs, vendored here unchanged) into OUTDIR:
#
#     tools/fuse-nfs/build.sh OUTDIR      # -> OUTDIR/fuse-nfs
#
# Needs cc, pkg-config, libfuse-dev (FUSE 2 API) and libnfs-dev (Debian 12: libnfs 4.0.0).
# Rebuilds only when the source is newer than the binary. See README.md.
set -euo pipefail

src=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUTDIR}
bin=$out/fuse-nfs
if [ -x "$bin" ] && [ "$bin" -nt "$src/fuse/fuse-nfs.c" ] && [ "$bin" -nt "$0" ]; then
    exit 0
fi
mkdir -p "$out"
# shellcheck disable=SC2046 # pkg-config's flags are meant to split
cc -O2 -D_FILE_OFFSET_BITS=64 $(pkg-config --cflags fuse libnfs) -o "$bin.tmp" \
    "$src/fuse/fuse-nfs.c" $(pkg-config --libs fuse libnfs) -lpthread
mv "$bin.tmp" "$bin"
