//! `chironctl`: inspect and control a running chironfs through its control socket, and check
//! it Nagios-style (from the socket or, without root, from the status file). All wording lives
//! in `chironfs::view` so it is unit-tested, the socket's client in `chironfs::control::client`,
//! and the command line is defined in `chironfs::control::cli` (shared with the man page
//! generator); this file only runs and prints.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use chironfs::config;
use chironfs::control::cli::{Cli, Cmd};
use chironfs::control::client::{self, ClientError};
use chironfs::control::protocol::{Request, Response};
use chironfs::view::check::{self, CheckResult};
use chironfs::view::snapshot::{ReplicaSnapshot, Snapshot};
use chironfs::view::words::one_line;
use chironfs::view::{progress, table};

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
    client::find_default_socket(Path::new(config::RUNTIME_DIR))
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
fn ask(cli: &Cli, req: &Request) -> Result<Response, String> {
    let sock = socket_path(cli)?;
    client::request(&sock, req)
        .map_err(|e| e.to_string())?
        .into_result()
}

fn snapshot_of(resp: Response) -> Result<Snapshot, String> {
    resp.snapshot
        .ok_or_else(|| "the daemon answered without a snapshot".to_string())
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Serializing plain data cannot fail.
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

fn run_check(cli: &Cli, status_file: Option<&Path>, max_age: u64) -> CheckResult {
    if let Some(f) = status_file {
        return client::check_status_file(f, max_age, chironfs::engine::replica::now());
    }
    match ask(cli, &Request::Status).and_then(snapshot_of) {
        Ok(s) => check::check_snapshot(&s),
        Err(e) => check::check_unknown(&e),
    }
}

fn run(cli: &Cli) -> Result<String, String> {
    match &cli.cmd {
        Cmd::Status { json } => {
            let s = snapshot_of(ask(cli, &Request::Status)?)?;
            Ok(if *json {
                to_json(&s)
            } else {
                table::format_status(&s)
            })
        }
        Cmd::Stats { json } => {
            let s = snapshot_of(ask(cli, &Request::Stats)?)?;
            Ok(if *json {
                to_json(&table::stats_of(&s))
            } else {
                table::format_stats(&s)
            })
        }
        Cmd::Metrics => ask(cli, &Request::Metrics)?
            .metrics
            .ok_or_else(|| "the daemon answered without metrics".to_string()),
        Cmd::Enable { replica, force } => {
            let r = ask(
                cli,
                &Request::Enable {
                    replica: absolute(replica),
                    force: *force,
                },
            )?;
            Ok(r.message.map(|m| m + "\n").unwrap_or_default())
        }
        Cmd::Disable { replica } => {
            let r = ask(
                cli,
                &Request::Disable {
                    replica: absolute(replica),
                },
            )?;
            Ok(r.message.map(|m| m + "\n").unwrap_or_default())
        }
        Cmd::Resync {
            replica,
            wait,
            rate,
        } => {
            // Already running (started by hand or by --auto-resync): --wait follows it.
            if *wait {
                let s = snapshot_of(ask(cli, &Request::Status)?)?;
                let running = find_replica(&s, replica)
                    .filter(|r| r.resync.as_ref().is_some_and(|p| p.state == "running"));
                if let Some(r) = running {
                    out(&format!(
                        "following the resync of {} already running\n",
                        r.path
                    ));
                    return wait_resync(cli, replica);
                }
            }
            let r = ask(
                cli,
                &Request::Resync {
                    replica: absolute(replica),
                    rate: *rate,
                },
            )?;
            then_follow(r, *wait, || wait_resync(cli, replica))
        }
        Cmd::Add { .. } | Cmd::Remove { .. } | Cmd::Replace { .. } => run_membership(cli),
        Cmd::Check { .. } | Cmd::Verify { .. } => unreachable!("handled in main"),
    }
}

/// `chironctl add`, `remove`, `replace`: asks the daemon, then with `--wait` follows the
/// joining replica's resync (and, for a replace, the old one's leaving).
fn run_membership(cli: &Cli) -> Result<String, String> {
    match &cli.cmd {
        Cmd::Add {
            path,
            witness,
            wait,
            rate,
        } => {
            let r = ask(
                cli,
                &Request::Add {
                    path: absolute(&path.display().to_string()),
                    witness: *witness,
                    rate: *rate,
                },
            )?;
            then_follow(r, *wait, || follow_join(cli).map(|(done, _)| done))
        }
        Cmd::Remove { replica } => {
            let r = ask(
                cli,
                &Request::Remove {
                    replica: absolute(replica),
                },
            )?;
            Ok(r.message.map(|m| m + "\n").unwrap_or_default())
        }
        Cmd::Replace {
            old,
            new,
            wait,
            rate,
        } => {
            let before = snapshot_of(ask(cli, &Request::Status)?)?;
            let old_path = find_member(&before, old).map(|r| r.path.clone());
            let r = ask(
                cli,
                &Request::Replace {
                    old: absolute(old),
                    new: absolute(&new.display().to_string()),
                    rate: *rate,
                },
            )?;
            then_follow(r, *wait, || {
                let (done, _) = follow_join(cli)?;
                out(&done);
                wait_left(cli, &old_path.unwrap_or_else(|| absolute(old)))
            })
        }
        _ => unreachable!("not a membership command"),
    }
}

/// `resync --wait`: follows the resync of `replica` until it ends: on a terminal one updating
/// progress-bar line, otherwise a plain line every few seconds (and at each phase change), fit
/// for a log. Ok when it is back in service, Err with the reason when the resync failed.
fn wait_resync(cli: &Cli, replica: &str) -> Result<String, String> {
    use std::io::IsTerminal;
    use std::time::{Duration, Instant};
    const PLAIN_EVERY: Duration = Duration::from_secs(5);
    let tty = std::io::stdout().is_terminal();
    // Without a way to ask the terminal (no raw ioctl here), $COLUMNS or a safe 79.
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .map_or(79, |c| c.saturating_sub(1));
    let mut last_phase = None;
    let mut last_plain: Option<Instant> = None;
    // Short resyncs (an incremental one takes a fraction of a second) end without waiting
    // half a second more: polls start at 50 ms and slow down to 400 ms.
    let mut polls: u32 = 0;
    loop {
        let s = snapshot_of(ask(cli, &Request::Status)?)?;
        let r = find_replica(&s, replica)
            .ok_or_else(|| format!("no replica '{replica}' in the daemon's status"))?;
        let p = r
            .resync
            .clone()
            .ok_or_else(|| format!("no resync of {} is known to the daemon", r.path))?;
        let line = format!(
            "resync of {}: {}",
            r.path,
            one_line(&progress::describe(&p))
        );
        match p.state.as_str() {
            "running" => {
                if tty {
                    out(&format!("\r\x1b[K{}", progress::bar(&p, width)));
                } else if last_phase.as_ref() != Some(&p.phase)
                    || last_plain.is_none_or(|t| t.elapsed() >= PLAIN_EVERY)
                {
                    out(&format!("{line}\n"));
                    last_plain = Some(Instant::now());
                }
                last_phase = Some(p.phase);
            }
            "done" => {
                let end = if tty { "\r\x1b[K" } else { "" };
                return Ok(format!("{end}{line}\n{} is back in service\n", r.path));
            }
            _ => {
                if tty {
                    out("\n");
                }
                return Err(format!(
                    "resync of {} failed: {}; it stays out of service",
                    r.path, p.error
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(50 << polls.min(3)));
        polls += 1;
    }
}

/// `chironctl verify`: prints the report (text or JSON) and returns the exit code: 0
/// identical, 1 differences, 2 the daemon could not verify, 3 no answer from the daemon.
fn run_verify(
    cli: &Cli,
    replica: Option<&str>,
    content: bool,
    json: bool,
    queue: bool,
    max_time: u64,
) -> ExitCode {
    let trouble = |code: u8, msg: &str| {
        eprintln!("chironctl: {msg}");
        ExitCode::from(code)
    };
    let sock = match socket_path(cli) {
        Ok(s) => s,
        Err(e) => return trouble(3, &e),
    };
    let req = Request::Verify {
        replica: replica.map(absolute),
        content,
        queue,
    };
    let limit = if max_time == 0 {
        // No limit of our own: the daemon bounds each step by the replica deadline.
        std::time::Duration::from_secs(u64::from(u32::MAX))
    } else {
        std::time::Duration::from_secs(max_time)
    };
    let resp = match client::request_with_timeout(&sock, &req, limit) {
        Ok(r) => r,
        Err(ClientError::Timeout { path }) => {
            return trouble(
                3,
                &format!(
                    "the verify did not end within --max-time {max_time} s (control socket {})",
                    path.display()
                ),
            );
        }
        Err(e) => return trouble(3, &e.to_string()),
    };
    let report = match resp.into_result() {
        Ok(r) => r.verify,
        Err(e) => return trouble(2, &e),
    };
    let Some(report) = report else {
        return trouble(3, "the daemon answered without a verify report");
    };
    out(&if json {
        to_json(&report)
    } else {
        report.format()
    });
    ExitCode::from(if report.identical() { 0 } else { 1 })
}

/// The replica `replica` (index or path) names in a snapshot; for a path given another way (a
/// symlink), the replica with a resync.
fn find_replica<'a>(s: &'a Snapshot, replica: &str) -> Option<&'a ReplicaSnapshot> {
    let wanted = absolute(replica);
    s.replicas
        .iter()
        .find(|r| r.index.to_string() == wanted || r.path == wanted.trim_end_matches('/'))
        .or_else(|| s.replicas.iter().find(|r| r.resync.is_some()))
}

/// The daemon's answer `r` to a request that started something; with `wait`, printed at once
/// and followed by `follow` until the end.
fn then_follow(
    r: Response,
    wait: bool,
    follow: impl FnOnce() -> Result<String, String>,
) -> Result<String, String> {
    let started = r.message.unwrap_or_default();
    if !wait {
        return Ok(started + "\n");
    }
    out(&format!("{started}\n"));
    follow()
}

/// The member `replica` names (index or path), never another one.
fn find_member<'a>(s: &'a Snapshot, replica: &str) -> Option<&'a ReplicaSnapshot> {
    let wanted = absolute(replica);
    s.replicas
        .iter()
        .find(|r| r.index.to_string() == wanted || r.path == wanted.trim_end_matches('/'))
}

/// `add --wait`, `replace --wait`: follows the resync of the replica joining (one membership
/// change runs at a time) until it is in service; Ok(its last lines, its index).
fn follow_join(cli: &Cli) -> Result<(String, usize), String> {
    let s = snapshot_of(ask(cli, &Request::Status)?)?;
    let joining = s
        .replicas
        .iter()
        .find(|r| {
            r.membership
                .as_deref()
                .is_some_and(|m| m.starts_with("joining"))
        })
        .or_else(|| s.replicas.iter().max_by_key(|r| r.index))
        .ok_or_else(|| "the daemon shows no replica".to_string())?;
    let index = joining.index;
    wait_resync(cli, &index.to_string()).map(|done| (done, index))
}

/// `replace --wait`: waits (up to a minute) until the change is over (no replica shows a
/// membership change any more), then says whether `old` left.
fn wait_left(cli: &Cli, old: &str) -> Result<String, String> {
    let start = std::time::Instant::now();
    loop {
        let s = snapshot_of(ask(cli, &Request::Status)?)?;
        if !s.replicas.iter().any(|r| r.membership.is_some()) {
            return match find_member(&s, old) {
                None => Ok(format!("{old} left the replica set\n")),
                Some(_) => Err(format!(
                    "{old} is still a member: its removal was refused (see the daemon's log)"
                )),
            };
        }
        if start.elapsed().as_secs() >= 60 {
            return Err(format!("the replace of {old} is still going on after 60 s"));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A replica given as a relative path is made absolute here: the daemon's working directory is
/// `/`. An index (all digits) is passed as is. No stat: the replica may be a hung mount.
fn absolute(replica: &str) -> String {
    let is_index = !replica.is_empty() && replica.bytes().all(|b| b.is_ascii_digit());
    if is_index || replica.starts_with('/') {
        return replica.to_owned();
    }
    std::path::absolute(replica)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| replica.to_owned())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            if !e.use_stderr() {
                return ExitCode::SUCCESS; // --help, --version
            }
            // A usage error in a Nagios check must read UNKNOWN, not WARNING/CRITICAL; in a
            // verify, trouble (2), not "differences" (1).
            let is = |cmd: &str| std::env::args().skip(1).any(|a| a == cmd);
            return ExitCode::from(if is("check") {
                3
            } else if is("verify") {
                2
            } else {
                1
            });
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
    if let Cmd::Verify {
        replica,
        content,
        json,
        queue,
        max_time,
    } = &cli.cmd
    {
        return run_verify(&cli, replica.as_deref(), *content, *json, *queue, *max_time);
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
