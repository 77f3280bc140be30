# shellcheck shell=bash
# Test sshd servers for SSHFS replicas, shared by tests/support/sshfs-netns.sh and
# tests/cluster/two-node.sh. Source it from bash:
#   . tests/support/sshd.sh
#   sshd_keys DIR LABEL            DIR/host_key, DIR/client_key (authorized for root)
#   sshd_start NS ADDRESS DIR NAME an sshd in network namespace NS listening on ADDRESS:22,
#                                  with the keys of DIR; its config, pid file and log are
#                                  DIR/sshd-NAME.conf, .pid, .log. Returns once the pid file is
#                                  written (non-zero, with the log on stderr, if it is not).
# The server drops a client silent for 2 s (ClientAlive*), so a cut link ends the session.

# sshd_keys DIR LABEL
sshd_keys() {
    ssh-keygen -q -t ed25519 -N '' -C "$2-host" -f "$1/host_key"
    ssh-keygen -q -t ed25519 -N '' -C "$2-client" -f "$1/client_key"
    cp "$1/client_key.pub" "$1/authorized_keys"
    chmod 0600 "$1/authorized_keys"
}

# sshd_start NS ADDRESS DIR NAME
sshd_start() {
    local ns=$1 addr=$2 dir=$3 name=$4 i=0
    cat >"$dir/sshd-$name.conf" <<EOF
ListenAddress $addr
Port 22
HostKey $dir/host_key
PidFile $dir/sshd-$name.pid
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
ClientAliveInterval 1
ClientAliveCountMax 2
Subsystem sftp internal-sftp
LogLevel ERROR
EOF
    # OpenSSH's privilege separation directory (Debian's package creates it at boot only).
    [ -d /run/sshd ] || mkdir -m 0755 /run/sshd
    ip netns exec "$ns" /usr/sbin/sshd -f "$dir/sshd-$name.conf" -E "$dir/sshd-$name.log"
    while [ ! -s "$dir/sshd-$name.pid" ] && [ "$i" -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
    [ -s "$dir/sshd-$name.pid" ] || { cat "$dir/sshd-$name.log" >&2; return 1; }
}
