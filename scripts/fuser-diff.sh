#!/bin/bash
# Print what vendor/fuser changes in the fuser 0.18.0 published on crates.io: first the files of
# the published crate the vendored copy leaves out (examples, tests, CI files: paths only), then
# a unified diff (a/ = crates.io, b/ = vendor/fuser) of everything else (but Cargo.lock), added
# files in full.
# The pristine crate comes from cargo's cache (~/.cargo/registry/cache), else cargo downloads it
# (checksum verified against the index) through a throwaway project depending on =0.18.0.
# Usage: scripts/fuser-diff.sh           (exit status 0 unless something went wrong)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
version=0.18.0
cache="${CARGO_HOME:-$HOME/.cargo}/registry/cache"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

find_crate() {
    [ -d "$cache" ] || return 0
    find "$cache" -maxdepth 2 -name "fuser-$version.crate" | head -n 1
}

crate=$(find_crate)
if [ -z "$crate" ]; then
    mkdir -p "$tmp/fetch/src"
    cat >"$tmp/fetch/Cargo.toml" <<EOF
[package]
name = "fuser-pristine"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
fuser = "=$version"
EOF
    : >"$tmp/fetch/src/lib.rs"
    host=$(rustc -vV | sed -n 's/^host: //p')
    cargo fetch --quiet --manifest-path "$tmp/fetch/Cargo.toml" --target "$host" >&2
    crate=$(find_crate)
    [ -n "$crate" ] || { echo "fuser-diff.sh: cargo fetch left no fuser-$version.crate" >&2; exit 2; }
fi

mkdir "$tmp/unpacked" "$tmp/b"
tar -xzf "$crate" -C "$tmp/unpacked"
mv "$tmp/unpacked/fuser-$version" "$tmp/a"

# The vendored copy as git sees it (tracked and new files; build products are ignored).
(cd vendor/fuser && git ls-files --cached --others --exclude-standard) | sort -u >"$tmp/b.list"
(cd "$tmp/a" && find . -type f | sed 's|^\./||' | sort) >"$tmp/a.list"
while IFS= read -r f; do
    [ -e "vendor/fuser/$f" ] || continue # deleted in the work tree, not yet in git
    mkdir -p "$tmp/b/$(dirname "$f")"
    cp -p "$root/vendor/fuser/$f" "$tmp/b/$f"
done <"$tmp/b.list"

left_out=$(cd "$tmp/b" && comm -23 "$tmp/a.list" <(find . -type f | sed 's|^\./||' | sort))
echo "# vendor/fuser against fuser $version from crates.io ($crate)"
echo "# Left out of the vendored copy:"
printf '%s\n' "$left_out" | sed 's|^|#   |'
(cd "$tmp/a" && printf '%s\n' "$left_out" | xargs -r rm -f)
# Both have a Cargo.lock: upstream's, and the one cargo keeps for the fork's own checks (seeded
# from chironfs's Cargo.lock). Hundreds of lines of versions, not part of the fork's changes.
if [ -e "$tmp/a/Cargo.lock" ] && [ -e "$tmp/b/Cargo.lock" ]; then
    echo "# Cargo.lock: upstream's replaced by the fork's own (not shown)"
    rm -f "$tmp/a/Cargo.lock" "$tmp/b/Cargo.lock"
fi

cd "$tmp"
rc=0
diff -ruN a b >diff.out || rc=$?
# diff: 0 = no difference, 1 = differences, 2 = trouble. The file times are noise: cut.
[ "$rc" -le 1 ] || exit "$rc"
sed -E 's/^((---|\+\+\+) [^\t]*)\t.*/\1/' diff.out
