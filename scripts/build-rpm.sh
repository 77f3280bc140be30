#!/bin/bash
# Build the RPM and lint it: target/packages/chironfs-VERSION-RELEASE.ARCH.rpm.
# Installs what it needs (rpm, rpmlint) with apt-get, then runs `rpmbuild -bb` on
# rpm/chironfs.spec from this source tree (the same release build in target/ as the Debian
# package, see docs/packaging.md) and `rpmlint` with rpm/rpmlint.toml and rpm/chironfs.rpmlintrc
# on the result;
# fails on any rpmlint error or warning.
# Usage: scripts/build-rpm.sh        (as root)
set -eu
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
top=$PWD

need=""
for p in rpm rpmlint; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
        need="$need $p"
done
if [ -n "$need" ]; then
    echo "build-rpm.sh: installing$need"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $need >/dev/null
fi

spec_version=$(sed -n 's/^Version: *//p' rpm/chironfs.spec)
cargo_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
if [ "$spec_version" != "$cargo_version" ]; then
    echo "build-rpm.sh: rpm/chironfs.spec says $spec_version but Cargo.toml says $cargo_version" >&2
    exit 1
fi

# Reproducible man page dates, as in the Debian build: the date of the last changelog entry.
SOURCE_DATE_EPOCH=$(date -d "$(sed -n 's/^\* \([A-Z][a-z]\{2\} [A-Z][a-z]\{2\} [0-9]\{1,2\} [0-9]\{4\}\).*/\1/p' \
    rpm/chironfs.spec | head -n 1)" +%s)
export SOURCE_DATE_EPOCH

rpmtop=$top/target/rpmbuild
rm -rf "$rpmtop/RPMS"
rpmbuild -bb rpm/chironfs.spec \
    --define "srcdir $top" \
    --define "_builddir $top" \
    --define "_topdir $rpmtop" \
    --define "packager chironfs developers <packaging@chironfs.invalid>"

mkdir -p target/packages
rpm=$(find "$rpmtop/RPMS" -name 'chironfs-*.rpm' | head -n 1)
[ -n "$rpm" ] || { echo "build-rpm.sh: rpmbuild produced no package" >&2; exit 1; }
cp -f "$rpm" target/packages/
rpm=target/packages/$(basename "$rpm")
echo "build-rpm.sh: $rpm"
lint_opts=()
if [ ! -f heartbeat/chironfs ]; then
    # Its filter (executable-marked-as-config-file) has nothing to match until it exists.
    echo "build-rpm.sh: heartbeat/chironfs is not in the tree: ignoring unused rpmlintrc filters"
    lint_opts+=(--ignore-unused-rpmlintrc)
fi
rpmlint "${lint_opts[@]}" -c rpm/rpmlint.toml -r rpm/chironfs.rpmlintrc "$rpm" |
    tee target/packages/rpmlint.log
# rpmlint exits non-zero on errors only; warnings count as failures here too.
tail -n 1 target/packages/rpmlint.log | grep -q ' 0 errors, 0 warnings' ||
    { echo "build-rpm.sh: rpmlint is not clean" >&2; exit 1; }
echo "build-rpm.sh: rpmlint: no errors, no warnings"
