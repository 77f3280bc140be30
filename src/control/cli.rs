//! Command-line definition of `chironctl` (clap derive). It lives in the library, not in
//! `src/bin/chironctl.rs`, so that `tools/gen-docs` can render the man page and the shell
//! completions from the very definition the binary parses with.

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

/// Parsed `chironctl` command line.
#[derive(Parser, Debug)]
#[command(
    name = "chironctl",
    version,
    about = "Inspect and control a running chironfs replicating filesystem"
)]
pub struct Cli {
    /// Control socket of the daemon to talk to.
    #[arg(short = 's', long = "socket", value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,
    /// Mount point of the daemon to talk to (its socket is /run/chironfs/<name>.sock).
    #[arg(short = 'm', long = "mountpoint", value_name = "DIR", global = true)]
    pub mountpoint: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// `chironctl` subcommands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Show every replica's state, priority, counters and why it is out of service.
    Status {
        /// Print the raw snapshot as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show per-replica read/write/error counters.
    Stats {
        /// Print the counters as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the daemon's counters in the Prometheus text exposition format: replica states,
    /// operations, errors, timeouts and latency histograms per replica and operation class,
    /// bytes, journal, resync, quorum, lease and capacity (also written to NAME.prom next to
    /// the status file, for node_exporter's textfile collector).
    Metrics,
    /// Put a replica back in service.
    Enable {
        /// Replica index (0-based, as in `status`) or path.
        replica: String,
        /// Enable even if the replica is stale (missed writes while out of service).
        #[arg(long)]
        force: bool,
    },
    /// Take a replica out of service.
    Disable {
        /// Replica index (0-based, as in `status`) or path.
        replica: String,
    },
    /// Bring an out-of-service (stale) replica back online: copy what it missed from the
    /// replicas in service while the mount keeps serving, then put it back in service.
    Resync {
        /// Replica index (0-based, as in `status`) or path.
        replica: String,
        /// Wait for the end, printing progress; exit 0 when it is back in service, 1 when
        /// the resync failed (with the reason).
        #[arg(long)]
        wait: bool,
        /// Limit the content copied to RATE bytes per second for this run (50M, 800K, 1G,
        /// 0 = unlimited) [default: the daemon's --resync-rate]
        #[arg(long, value_name = "RATE", value_parser = crate::rules::throttle::parse_rate)]
        rate: Option<u64>,
    },
    /// Add a replica while the mount serves: an empty directory (or a former member of this
    /// set) joins out of service, is filled by an online resync (with the progress and rate
    /// limit of `resync`), then serves; every member records the new membership.
    Add {
        /// The directory (a local disk, an NFS or SSHFS mount).
        path: PathBuf,
        /// Add a witness instead of a data replica: it holds no data, only the lease and the
        /// set's state, and counts for the majority at once (one witness per set).
        #[arg(long)]
        witness: bool,
        /// Wait until it is in service, printing the resync's progress; exit 1 if it fails.
        #[arg(long)]
        wait: bool,
        /// Limit its resync's content copy to RATE bytes per second (as `resync --rate`)
        /// [default: the daemon's --resync-rate]
        #[arg(long, value_name = "RATE", value_parser = crate::rules::throttle::parse_rate)]
        rate: Option<u64>,
    },
    /// Remove a replica (or the witness) while the mount serves. Refused if it holds the last
    /// up-to-date copy or its leaving would break the quorum or the lease's majority. Its directory is left
    /// as it is, its state marked as having left.
    Remove {
        /// Replica index (0-based, as in `status`) or path.
        replica: String,
    },
    /// Replace a replica while the mount serves: NEW is added and synced while OLD keeps
    /// serving (if it still can), then OLD leaves; the up-to-date copies never drop. OLD may
    /// be a dead server. OLD may be the witness: NEW takes over at once.
    Replace {
        /// The replica to retire: index (0-based, as in `status`) or path.
        old: String,
        /// The new directory.
        new: PathBuf,
        /// Wait until OLD has left, printing the resync's progress; exit 1 if it fails.
        #[arg(long)]
        wait: bool,
        /// Limit NEW's resync's content copy to RATE bytes per second (as `resync --rate`)
        /// [default: the daemon's --resync-rate]
        #[arg(long, value_name = "RATE", value_parser = crate::rules::throttle::parse_rate)]
        rate: Option<u64>,
    },
    /// Compare the replicas path by path (type, size, mode, owner, mtime, symlink target,
    /// device, xattrs, hard links; with --content the bytes) while the mount keeps serving.
    /// Exit 0 identical, 1 differences found, 2 the verify could not be done (a replica hung
    /// or failed, fewer than two replicas to compare, bad arguments), 3 no answer from the
    /// daemon.
    Verify {
        /// Compare only this replica (index or path; in or out of service) with the first
        /// in-service replica. Default: every in-service replica.
        replica: Option<String>,
        /// Compare file content too (reads every file on every compared replica).
        #[arg(long)]
        content: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Heal what differs: copy each differing path from the first in-service replica
        /// onto the other in-service replicas, under a short write barrier.
        #[arg(long)]
        queue: bool,
        /// Give up waiting for the daemon after this many seconds (0: no limit; every step
        /// of the walk is already bounded by the replica deadline).
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        max_time: u64,
    },
    /// Nagios plugin: one line, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    Check {
        /// Read this status file instead of asking the control socket (no root needed).
        #[arg(long, value_name = "PATH")]
        status_file: Option<PathBuf>,
        /// A status file older than this many seconds means the daemon is dead (UNKNOWN).
        #[arg(long, value_name = "SECS", default_value_t = 10)]
        max_age: u64,
    },
}

/// The clap command `chironctl` parses with (for man pages and shell completions).
pub fn command() -> clap::Command {
    Cli::command()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn cli_parses() {
        let c =
            Cli::try_parse_from(["chironctl", "-m", "/mnt/x", "enable", "1", "--force"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Enable { ref replica, force: true } if replica == "1"));
        let c = Cli::try_parse_from([
            "chironctl",
            "check",
            "--status-file",
            "/x",
            "--max-age",
            "30",
        ])
        .unwrap();
        assert!(matches!(c.cmd, Cmd::Check { max_age: 30, .. }));
        let c = Cli::try_parse_from(["chironctl", "metrics"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Metrics));
        let c = Cli::try_parse_from(["chironctl", "resync", "1", "--wait"]).unwrap();
        assert!(
            matches!(c.cmd, Cmd::Resync { ref replica, wait: true, rate: None } if replica == "1")
        );
        let c = Cli::try_parse_from(["chironctl", "resync", "1", "--rate", "10M"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Resync { rate: Some(r), .. } if r == 10 << 20));
        assert!(Cli::try_parse_from(["chironctl", "resync", "1", "--rate", "x"]).is_err());
        let c = Cli::try_parse_from(["chironctl", "verify", "--content", "--json"]).unwrap();
        assert!(matches!(
            c.cmd,
            Cmd::Verify {
                replica: None,
                content: true,
                json: true,
                queue: false,
                max_time: 0
            }
        ));
        let c = Cli::try_parse_from(["chironctl", "verify", "2", "--queue"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Verify { replica: Some(ref r), queue: true, .. } if r == "2"));
        let c =
            Cli::try_parse_from(["chironctl", "status", "-s", "/tmp/s.sock", "--json"]).unwrap();
        assert_eq!(c.socket.as_deref(), Some(Path::new("/tmp/s.sock")));
    }

    #[test]
    fn command_is_consistent() {
        command().debug_assert();
    }
}
