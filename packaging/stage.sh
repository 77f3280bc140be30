#!/bin/sh
# Install chironfs's files into a staging root: the one file layout shared by the Debian package
# (debian/rules) and the RPM (rpm/chironfs.spec), so that both ship the same files.
#
# Usage: packaging/stage.sh DESTDIR [VAR=VALUE...]
#   BINDIR_SRC=target/release          where chironfs, chironctl and gen-docs were built
#                                      ($CARGO_TARGET_DIR/release when that is set)
#   DOCS_SRC=target/gen-docs           where gen-docs writes man pages and completions
#   UNITDIR=/lib/systemd/system        systemd system unit directory
#   NAGIOSDIR=/usr/lib/nagios/plugins  Nagios plugin directory
#   ZSHDIR=/usr/share/zsh/vendor-completions
# Run from the top of the source tree, after the release build. Generates the man pages and
# completions with gen-docs first. A file another part of the tree has not provided yet (the
# OCF agent, the Heartbeat script, the systemd unit, the example configuration) is skipped
# with a warning, so the packages still build; tests/packaging/test.sh reports such a gap.
set -eu

[ $# -ge 1 ] || { echo "usage: $0 DESTDIR [VAR=VALUE...]" >&2; exit 2; }
DESTDIR=$1
shift
BINDIR_SRC=${CARGO_TARGET_DIR:-target}/release
DOCS_SRC=target/gen-docs
UNITDIR=/lib/systemd/system
NAGIOSDIR=/usr/lib/nagios/plugins
ZSHDIR=/usr/share/zsh/vendor-completions
for kv in "$@"; do
    case $kv in
        BINDIR_SRC=* | DOCS_SRC=* | UNITDIR=* | NAGIOSDIR=* | ZSHDIR=*) eval "${kv%%=*}=\${kv#*=}" ;;
        *) echo "stage.sh: unknown setting '$kv'" >&2; exit 2 ;;
    esac
done

for b in chironfs chironctl gen-docs; do
    [ -x "$BINDIR_SRC/$b" ] || { echo "stage.sh: $BINDIR_SRC/$b missing: build first" >&2; exit 1; }
done

# ins MODE SRC DEST: install one file (parents created), DEST relative to DESTDIR.
ins() {
    install -D -m "$1" "$2" "$DESTDIR$3"
}

# opt MODE SRC DEST: the same for a file another part of the tree provides; skipped if absent.
opt() {
    if [ -f "$2" ]; then
        ins "$@"
    else
        echo "stage.sh: WARNING: $2 is not in the tree: $3 is not packaged" >&2
    fi
}

agent=
[ ! -f ocf/chironfs ] || agent="--ocf-agent ocf/chironfs"
rm -rf "$DOCS_SRC"
# shellcheck disable=SC2086 # $agent is empty or two words
"$BINDIR_SRC/gen-docs" "$DOCS_SRC" $agent

ins 0755 "$BINDIR_SRC/chironfs" /usr/bin/chironfs
ins 0755 "$BINDIR_SRC/chironctl" /usr/bin/chironctl
opt 0755 ocf/chironfs /usr/lib/ocf/resource.d/chiron/chironfs
opt 0755 heartbeat/chironfs /etc/ha.d/resource.d/chironfs
opt 0644 systemd/chironfs@.service "$UNITDIR/chironfs@.service"
opt 0644 systemd/example.conf /etc/chironfs/example.conf
ins 0755 packaging/check_chironfs "$NAGIOSDIR/check_chironfs"
ins 0755 packaging/pkg-maint /usr/lib/chironfs/pkg-maint
ins 0644 packaging/chironfs.logrotate /etc/logrotate.d/chironfs
ins 0644 "$DOCS_SRC/man/chironfs.8" /usr/share/man/man8/chironfs.8
ins 0644 "$DOCS_SRC/man/chironctl.8" /usr/share/man/man8/chironctl.8
opt 0644 "$DOCS_SRC/man/ocf_chiron_chironfs.7" /usr/share/man/man7/ocf_chiron_chironfs.7
for b in chironfs chironctl; do
    ins 0644 "$DOCS_SRC/completions/bash/$b" "/usr/share/bash-completion/completions/$b"
    ins 0644 "$DOCS_SRC/completions/zsh/_$b" "$ZSHDIR/_$b"
    ins 0644 "$DOCS_SRC/completions/fish/$b.fish" "/usr/share/fish/vendor_completions.d/$b.fish"
done
install -d -m 0755 "$DESTDIR/etc/chironfs" "$DESTDIR/var/log/chironfs"
