//! The Nagios verdict on a snapshot: [`CheckStatus`], the one line `chironctl check` prints
//! ([`check_snapshot`], [`check_unknown`]) and the verdict with its reason that the status file
//! also carries ([`check_summary`]). Pure; imports only `view/` (snapshot, progress, words).

use crate::view::progress;
use crate::view::snapshot::{ReplicaSnapshot, ReplicaState, Snapshot};
use crate::view::words::one_line;

/// Nagios plugin states; the discriminant is the exit code the plugin API prescribes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckStatus {
    /// Every replica in service and none stale (exit 0).
    Ok = 0,
    /// Still serving, but a replica is out of service or stale (exit 1).
    Warning = 1,
    /// No replica in service (exit 2).
    Critical = 2,
    /// The state could not be read (exit 3).
    Unknown = 3,
}

impl CheckStatus {
    /// Process exit code for the plugin.
    pub fn exit_code(self) -> i32 {
        self as i32
    }

    /// Word used in the check line.
    pub fn label(self) -> &'static str {
        match self {
            CheckStatus::Ok => "OK",
            CheckStatus::Warning => "WARNING",
            CheckStatus::Critical => "CRITICAL",
            CheckStatus::Unknown => "UNKNOWN",
        }
    }
}

/// Outcome of `chironctl check`: one line of output and the exit code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// Nagios state (and exit code).
    pub status: CheckStatus,
    /// The single output line (no trailing newline).
    pub line: String,
}

/// Nagios splits the status text from performance data at `|`: keep it out of the text.
fn check_text(s: &str) -> String {
    one_line(s).replace('|', "/")
}

/// A check that could not read the state: UNKNOWN with the reason.
pub fn check_unknown(reason: &str) -> CheckResult {
    CheckResult {
        status: CheckStatus::Unknown,
        line: format!("CHIRONFS UNKNOWN - {}", check_text(reason)),
    }
}

/// Judges a snapshot by the Nagios rules: OK when all replicas are in service and none is
/// stale, WARNING when some are out or stale but one still serves, CRITICAL when none serves.
/// Out-of-service and stale replicas are named in the line so the alert says what to fix.
pub fn check_snapshot(s: &Snapshot) -> CheckResult {
    let (status, text) = check_summary(s);
    let total = s.replicas.len();
    let up = s.in_service();
    let out = total - up;
    let stale_count = s.replicas.iter().filter(|r| r.stale).count();
    CheckResult {
        status,
        line: format!(
            "CHIRONFS {} - {text} | in_service={up};;;0;{total} out_of_service={out} stale={stale_count}",
            status.label(),
        ),
    }
}

/// The reason a monitor shows for a replica out of service while a resync runs on it; None
/// when no resync is running on it.
fn resyncing(r: &ReplicaSnapshot) -> Option<String> {
    r.resync
        .as_ref()
        .filter(|p| p.state == "running" && r.state == ReplicaState::OutOfService)
        .map(progress::check_reason)
}

/// An out-of-service replica as the check names it: its path, then its reason and whether it
/// is stale in parentheses.
fn out_of_service_name(r: &ReplicaSnapshot) -> String {
    let mut reason = check_text(&r.reason);
    if r.stale {
        if !reason.is_empty() {
            reason.push_str("; ");
        }
        reason.push_str("stale, needs a resync");
    }
    if reason.is_empty() {
        check_text(&r.path)
    } else {
        format!("{} ({reason})", check_text(&r.path))
    }
}

/// The verdict of [`check_snapshot`] and its one-line reason (no performance data), also
/// written to the status file: replicas being resynced are named with their progress, the
/// others out of service with their reason (and whether they are stale).
pub fn check_summary(s: &Snapshot) -> (CheckStatus, String) {
    let total = s.replicas.len();
    let up = s.in_service();
    let syncing: Vec<String> = s
        .replicas
        .iter()
        .filter_map(|r| resyncing(r).map(|why| format!("{} ({why})", check_text(&r.path))))
        .collect();
    let out: Vec<String> = s
        .replicas
        .iter()
        .filter(|r| r.state == ReplicaState::OutOfService && resyncing(r).is_none())
        .map(out_of_service_name)
        .collect();
    let stale_count = s.replicas.iter().filter(|r| r.stale).count();
    let stale_in: Vec<String> = s
        .replicas
        .iter()
        .filter(|r| r.stale && r.state == ReplicaState::InService)
        .map(|r| check_text(&r.path))
        .collect();
    let status = if up == 0 || s.quorum_lost() || s.lease_lost() {
        CheckStatus::Critical
    } else if up < total || stale_count > 0 {
        CheckStatus::Warning
    } else {
        CheckStatus::Ok
    };
    let mut text = format!("{up}/{total} replicas in service");
    if let Some(q) = s.quorum.filter(|_| s.quorum_lost()) {
        text.push_str(&format!("; quorum lost ({q} needed): mutations refused"));
    }
    if let Some(lease) = s.lease.as_deref().filter(|_| s.lease_lost()) {
        text.push_str(&format!("; lease {lease}: mutations refused"));
    }
    for (label, names) in [
        ("resyncing", syncing),
        ("out of service", out),
        ("stale", stale_in),
    ] {
        if !names.is_empty() {
            text.push_str(&format!("; {label}: {}", names.join(", ")));
        }
    }
    (status, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::fixtures::snap;
    use ReplicaState::{InService as In, OutOfService as Out};

    #[test]
    fn quorum_lost_is_critical() {
        let mut s = snap(&[(In, false), (Out, true), (Out, true)]);
        s.quorum = Some(2);
        let c = check_snapshot(&s);
        assert_eq!(c.status, CheckStatus::Critical);
        assert!(
            c.line.starts_with(
                "CHIRONFS CRITICAL - 1/3 replicas in service; quorum lost (2 needed): mutations refused; out of service:"
            ),
            "{}",
            c.line
        );
        s.replicas[1].state = In;
        assert_eq!(check_snapshot(&s).status, CheckStatus::Warning);
    }

    #[test]
    fn check_lines() {
        let ok = check_snapshot(&snap(&[(In, false), (In, false)]));
        assert_eq!(ok.status, CheckStatus::Ok);
        assert_eq!(
            ok.line,
            "CHIRONFS OK - 2/2 replicas in service | in_service=2;;;0;2 out_of_service=0 stale=0"
        );
        let warn = check_snapshot(&snap(&[(In, false), (Out, true)]));
        assert_eq!(warn.status, CheckStatus::Warning);
        assert_eq!(warn.status.exit_code(), 1);
        assert_eq!(
            warn.line,
            "CHIRONFS WARNING - 1/2 replicas in service; out of service: /srv/r1 (write error / EIO; \
             stale, needs a resync) | in_service=1;;;0;2 out_of_service=1 stale=1"
        );
        // Being resynced: named with its progress instead of the old reason.
        let mut syncing = snap(&[(In, false), (Out, true)]);
        syncing.replicas[1].resync = Some(crate::view::snapshot::ResyncProgress {
            state: "running".into(),
            phase: "copying".into(),
            total: Some(200),
            done: 50,
            eta: Some(130),
            ..Default::default()
        });
        let r = check_snapshot(&syncing);
        assert_eq!(r.status, CheckStatus::Warning);
        assert_eq!(
            r.line,
            "CHIRONFS WARNING - 1/2 replicas in service; resyncing: /srv/r1 (resync running \
             (copying, 25%, ETA 2m10s)) | in_service=1;;;0;2 out_of_service=1 stale=1"
        );
        // A resync that ended (failed) no longer counts as running.
        syncing.replicas[1].resync.as_mut().unwrap().state = "failed".into();
        assert!(
            check_snapshot(&syncing)
                .line
                .contains("out of service: /srv/r1 (")
        );
        let stale_only = check_snapshot(&snap(&[(In, false), (In, true)]));
        assert_eq!(stale_only.status, CheckStatus::Warning);
        assert!(
            stale_only
                .line
                .contains("2/2 replicas in service; stale: /srv/r1 |")
        );
        let crit = check_snapshot(&snap(&[(Out, false), (Out, true)]));
        assert_eq!(crit.status, CheckStatus::Critical);
        assert_eq!(crit.status.exit_code(), 2);
        assert!(
            crit.line.starts_with(
                "CHIRONFS CRITICAL - 0/2 replicas in service; out of service: /srv/r0"
            )
        );
        assert_eq!(crit.line.matches('|').count(), 1);
        assert_eq!(crit.line.lines().count(), 1);
        let unk = check_unknown("cannot connect\nto x | y");
        assert_eq!(unk.status.exit_code(), 3);
        assert_eq!(unk.line, "CHIRONFS UNKNOWN - cannot connect to x / y");
    }
}
