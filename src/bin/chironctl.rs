//! `chironctl`: inspect and control a running chironfs through its control socket, and check
//! it Nagios-style (from the socket or, without root, from the status file). All wording lives
//! in `chironfs::control` so it is unit-tested; this file only parses arguments and prints.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use chironfs::config;
use chironfs::control::{self, CheckResult, Request};
use chironfs::snapshot::Snapshot;

#[derive(Parser, Debug)]
#[command(
    name = "chironctl",
    version,
    about = "Inspect and control a running chironfs replicating filesystem"
)]
struct Cli {
    /// Control socket of the daemon to talk to.
    #[arg(short = 's', long = "socket", value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// Mount point of the daemon to talk to (its socket is /run/chironfs/<name>.sock).
    #[arg(short = 'm', long = "mountpoint", value_name = "DIR", global = true)]
    mountpoint: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
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

/// Canonical form of a mount point. A FUSE mount whose daemon died answers ENOTCONN to
/// stat(2), so fall back to canonicalizing the parent and appending the last component.
fn canonical_mountpoint(dir: &Path) -> Result<PathBuf, String> {
    if let Ok(p) = dir.canonicalize() {
        return Ok(p);
    }
    let name = dir.file_name();
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = match parent {
        Some(p) => p.canonicalize(),
        None => std::env::current_dir(),
    };
    match (parent, name) {
        (Ok(p), Some(n)) => Ok(p.join(n)),
        _ => Err(format!("mount point {} does not exist", dir.display())),
    }
}

fn socket_path(cli: &Cli) -> Result<PathBuf, String> {
    if let Some(s) = &cli.socket {
        return Ok(s.clone());
    }
    if let Some(m) = &cli.mountpoint {
        let canon = canonical_mountpoint(m)?;
        return Ok(config::default_control_socket(&canon));
    }
    control::find_default_socket(Path::new(config::RUNTIME_DIR))
}

/// Prints to stdout; a closed pipe (`chironctl status | head`) is not an error worth a panic.
fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes()).and_then(|()| o.flush());
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("chironctl: {msg}");
    ExitCode::from(1)
}

/// Asks the daemon and returns its successful answer, or the one-sentence error.
fn ask(cli: &Cli, req: &Request) -> Result<control::Response, String> {
    let sock = socket_path(cli)?;
    control::request(&sock, req)
        .map_err(|e| e.to_string())?
        .into_result()
}

fn snapshot_of(resp: control::Response) -> Result<Snapshot, String> {
    resp.snapshot
        .ok_or_else(|| "the daemon answered without a snapshot".to_string())
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Serializing plain data cannot fail.
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

fn run_check(cli: &Cli, status_file: Option<&Path>, max_age: u64) -> CheckResult {
    if let Some(f) = status_file {
        return control::check_status_file(f, max_age, control::unix_now());
    }
    match ask(cli, &Request::Status).and_then(snapshot_of) {
        Ok(s) => control::check_snapshot(&s),
        Err(e) => control::check_unknown(&e),
    }
}

fn run(cli: &Cli) -> Result<String, String> {
    match &cli.cmd {
        Cmd::Status { json } => {
            let s = snapshot_of(ask(cli, &Request::Status)?)?;
            Ok(if *json {
                to_json(&s)
            } else {
                control::format_status(&s)
            })
        }
        Cmd::Stats { json } => {
            let s = snapshot_of(ask(cli, &Request::Stats)?)?;
            Ok(if *json {
                to_json(&control::stats_of(&s))
            } else {
                control::format_stats(&s)
            })
        }
        Cmd::Enable { replica, force } => {
            let r = ask(
                cli,
                &Request::Enable {
                    replica: replica.clone(),
                    force: *force,
                },
            )?;
            Ok(r.message.map(|m| m + "\n").unwrap_or_default())
        }
        Cmd::Disable { replica } => {
            let r = ask(
                cli,
                &Request::Disable {
                    replica: replica.clone(),
                },
            )?;
            Ok(r.message.map(|m| m + "\n").unwrap_or_default())
        }
        Cmd::Check { .. } => unreachable!("handled in main"),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            if !e.use_stderr() {
                return ExitCode::SUCCESS; // --help, --version
            }
            // A usage error in a Nagios check must read UNKNOWN, not WARNING/CRITICAL.
            let is_check = std::env::args().skip(1).any(|a| a == "check");
            return ExitCode::from(if is_check { 3 } else { 1 });
        }
    };
    if let Cmd::Check {
        status_file,
        max_age,
    } = &cli.cmd
    {
        let r = run_check(&cli, status_file.as_deref(), *max_age);
        out(&format!("{}\n", r.line));
        return ExitCode::from(r.status.exit_code() as u8);
    }
    match run(&cli) {
        Ok(text) => {
            out(&text);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let c =
            Cli::try_parse_from(["chironctl", "status", "-s", "/tmp/s.sock", "--json"]).unwrap();
        assert_eq!(c.socket.as_deref(), Some(Path::new("/tmp/s.sock")));
    }

    #[test]
    fn socket_from_mountpoint() {
        let cli = Cli::try_parse_from(["chironctl", "-m", "/", "status"]).unwrap();
        assert_eq!(
            socket_path(&cli).unwrap(),
            Path::new("/run/chironfs/root.sock")
        );
        let gone = std::env::temp_dir().join("chironctl-no-such-dir");
        let canon = canonical_mountpoint(&gone).unwrap();
        assert!(canon.ends_with("chironctl-no-such-dir"));
    }
}
