//! The tables `chironctl status` and `chironctl stats` print, and the JSON shape of `chironctl
//! stats --json`. Pure; imports only `view/` (snapshot, progress, words).

use serde::Serialize;

use crate::view::progress;
use crate::view::snapshot::{ReplicaSnapshot, ReplicaState, Snapshot};
use crate::view::words::one_line;

/// Left-aligned table with columns two spaces apart; `right[i]` right-aligns column i.
fn table(headers: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let head: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = width[i].saturating_sub(cell.chars().count());
            if right.get(i).copied().unwrap_or(false) {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Short human duration ("45s", "12m03s", "3h07m", "2d04h") for how long a replica has been
/// out.
fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// The REASON cell: why the replica is out, on one line, and for how long.
fn reason_cell(s: &Snapshot, r: &ReplicaSnapshot) -> String {
    let reason = one_line(&r.reason);
    if r.state == ReplicaState::OutOfService && r.since > 0 && r.since <= s.time {
        let a = age(s.time - r.since);
        if reason.is_empty() {
            format!("(for {a})")
        } else {
            format!("{reason} (for {a})")
        }
    } else {
        reason
    }
}

/// ", 1 witness answering" with a witness, then ", quorum 2 met" / ", quorum 2 LOST:
/// mutations refused (EROFS)"; empty without either.
fn quorum_words(s: &Snapshot) -> String {
    let quorum = match s.quorum {
        None => String::new(),
        Some(q) if s.quorum_lost() => {
            format!(", quorum {q} LOST: mutations refused (read-only, EROFS)")
        }
        Some(q) => format!(", quorum {q} met"),
    };
    let witness = match s.witnesses {
        Some(w) => format!(", {w} witness{} answering", if w == 1 { "" } else { "es" }),
        None => String::new(),
    };
    witness + &quorum
}

/// `chironctl status`: a header with mount point, pid and overall state, then one row per
/// replica, so an admin sees at a glance which replica is out and why.
pub fn format_status(s: &Snapshot) -> String {
    let mut out = format!(
        "chironfs {} (pid {}): {}, {}/{} replicas in service{}\n",
        one_line(&s.mountpoint),
        s.pid,
        s.state.as_str(),
        s.in_service(),
        s.replicas.len(),
        quorum_words(s)
    );
    let rows: Vec<Vec<String>> = s
        .replicas
        .iter()
        .map(|r| {
            vec![
                r.index.to_string(),
                one_line(&r.path),
                if r.low_priority { "low" } else { "normal" }.to_string(),
                r.state.as_str().to_string(),
                if r.stale { "yes" } else { "no" }.to_string(),
                r.reads.to_string(),
                r.writes.to_string(),
                r.errors.to_string(),
                reason_cell(s, r),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "#", "PATH", "PRIORITY", "STATE", "STALE", "READS", "WRITES", "ERRORS", "REASON",
        ],
        &rows,
        &[true, false, false, false, false, true, true, true, false],
    ));
    for r in &s.replicas {
        if let Some(m) = &r.membership {
            out.push_str(&format!(
                "member {} {}: {}\n",
                r.index,
                one_line(&r.path),
                one_line(m)
            ));
        }
        if let Some(p) = &r.resync {
            out.push_str(&format!(
                "resync of {} from replica {}: {}\n",
                r.index,
                p.source,
                one_line(&progress::describe(p))
            ));
        }
    }
    out
}

/// `chironctl stats`: the per-replica counters and their totals.
pub fn format_stats(s: &Snapshot) -> String {
    let mut rows: Vec<Vec<String>> = s
        .replicas
        .iter()
        .map(|r| {
            vec![
                r.index.to_string(),
                one_line(&r.path),
                r.reads.to_string(),
                r.writes.to_string(),
                r.errors.to_string(),
            ]
        })
        .collect();
    let sum = |f: fn(&ReplicaSnapshot) -> u64| s.replicas.iter().map(f).sum::<u64>().to_string();
    rows.push(vec![
        String::new(),
        "total".into(),
        sum(|r| r.reads),
        sum(|r| r.writes),
        sum(|r| r.errors),
    ]);
    let mut out = format!("chironfs {} (pid {})\n", one_line(&s.mountpoint), s.pid);
    out.push_str(&table(
        &["#", "PATH", "READS", "WRITES", "ERRORS"],
        &rows,
        &[true, false, true, true, true],
    ));
    out
}

/// Counters of one replica, as `chironctl stats --json` prints them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplicaStats {
    /// Replica index (0-based).
    pub index: usize,
    /// Replica path.
    pub path: String,
    /// Read-type requests answered.
    pub reads: u64,
    /// Mutations applied.
    pub writes: u64,
    /// Failed or timed-out operations.
    pub errors: u64,
}

/// `chironctl stats --json`: the counters only, a stable JSON shape for scripts (fields in
/// declaration order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Pid of the daemon.
    pub pid: u32,
    /// Canonical mount point.
    pub mountpoint: String,
    /// Unix time of the snapshot.
    pub time: u64,
    /// One entry per replica.
    pub replicas: Vec<ReplicaStats>,
}

/// Extracts the counters from a snapshot.
pub fn stats_of(s: &Snapshot) -> Stats {
    Stats {
        pid: s.pid,
        mountpoint: s.mountpoint.clone(),
        time: s.time,
        replicas: s
            .replicas
            .iter()
            .map(|r| ReplicaStats {
                index: r.index,
                path: r.path.clone(),
                reads: r.reads,
                writes: r.writes,
                errors: r.errors,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::fixtures::snap;
    use ReplicaState::{InService as In, OutOfService as Out};

    #[test]
    fn quorum_is_shown_in_status() {
        let mut s = snap(&[(In, false), (Out, true), (Out, true)]);
        s.quorum = Some(2);
        let head = format_status(&s);
        assert!(
            head.lines().next().unwrap().ends_with(
                "1/3 replicas in service, quorum 2 LOST: mutations refused (read-only, EROFS)"
            ),
            "{head}"
        );
        s.replicas[1].state = In;
        assert!(
            format_status(&s)
                .lines()
                .next()
                .unwrap()
                .ends_with(", quorum 2 met")
        );
    }

    #[test]
    fn tables() {
        let s = snap(&[(In, false), (Out, true), (In, false)]);
        let t = format_status(&s);
        let expected = "\
chironfs /mnt/data (pid 99): degraded, 2/3 replicas in service
#  PATH     PRIORITY  STATE           STALE  READS  WRITES  ERRORS  REASON
0  /srv/r0  normal    in-service      no         0       5       0
1  /srv/r1  normal    out-of-service  yes       10       5       1  write error | EIO (for 1h02m)
2  /srv/r2  low       in-service      no        20       5       2
";
        assert_eq!(t, expected);
        let st = format_stats(&s);
        let expected = "\
chironfs /mnt/data (pid 99)
#  PATH     READS  WRITES  ERRORS
0  /srv/r0      0       5       0
1  /srv/r1     10       5       1
2  /srv/r2     20       5       2
   total       30      15       3
";
        assert_eq!(st, expected);
        let j = serde_json::to_string(&stats_of(&s)).unwrap();
        assert!(j.starts_with(r#"{"pid":99,"mountpoint":"/mnt/data","time":4723,"replicas":[{"index":0,"path":"/srv/r0","reads":0,"writes":5,"errors":0}"#), "{j}");
        assert_eq!(age(45), "45s");
        assert_eq!(age(3 * 86400 + 7200), "3d02h");
    }
}
