//! How a resync's progress reads: the one line of `chironctl status`, the logs and the status
//! check, and the progress bar of `chironctl resync --wait` on a terminal. Pure functions of a
//! [`ResyncProgress`], so the wording is unit-tested and the same everywhere.

use crate::rules::throttle::{format_bytes, format_duration, format_rate, percent};
use crate::view::snapshot::ResyncProgress;

/// "45% of 2740 entries" when the pass's size is known, else "1234 entries checked (total
/// unknown)": an unknown total is said, never guessed.
fn amount(p: &ResyncProgress) -> String {
    match (p.total, percent(p.total, p.done)) {
        (Some(total), Some(pc)) => format!("{pc}% of {total} entries"),
        _ => format!("{} entries checked (total unknown)", p.done),
    }
}

fn eta_text(p: &ResyncProgress) -> String {
    match p.eta {
        Some(s) => format!("ETA {}", format_duration(s)),
        None => "ETA unknown".into(),
    }
}

fn limit_text(p: &ResyncProgress) -> String {
    if p.rate_limit == 0 {
        String::new()
    } else {
        format!(" (limit {})", format_rate(p.rate_limit))
    }
}

/// One line saying where a resync stands, for `chironctl status`, `resync --wait` off a
/// terminal, and the log.
pub fn describe(p: &ResyncProgress) -> String {
    let phase = if p.phase.is_empty() {
        String::new()
    } else {
        format!(" ({})", p.phase)
    };
    let mut text = if p.state == "running" {
        format!(
            "{}{phase}: {}, {} copied or fixed, {} at {}{}, {} entries/s, {}, {} so far",
            p.state,
            amount(p),
            p.files,
            format_bytes(p.bytes),
            format_rate(p.bytes_per_sec).replace("unlimited", "0 B/s"),
            limit_text(p),
            p.entries_per_sec,
            eta_text(p),
            format_duration(p.seconds)
        )
    } else {
        format!(
            "{}{phase}: {} entries checked, {} copied or fixed, {} in {}",
            p.state,
            p.checked,
            p.files,
            format_bytes(p.bytes),
            format_duration(p.seconds)
        )
    };
    if !p.error.is_empty() {
        text.push_str(&format!(": {}", p.error));
    }
    text
}

/// The short reason a monitor shows for a replica being resynced: "resync running (copying,
/// 45%, ETA 2m10s)".
pub fn check_reason(p: &ResyncProgress) -> String {
    let mut parts = Vec::new();
    if !p.phase.is_empty() {
        parts.push(p.phase.clone());
    }
    if let Some(pc) = percent(p.total, p.done) {
        parts.push(format!("{pc}%"));
    }
    if let Some(s) = p.eta {
        parts.push(format!("ETA {}", format_duration(s)));
    }
    if parts.is_empty() {
        "resync running".into()
    } else {
        format!("resync running ({})", parts.join(", "))
    }
}

/// The progress bar line of `chironctl resync --wait` on a terminal: `[#####.....]` (or
/// `[  ?  ]` when the total is unknown), percent, entries, bytes, rate and ETA; at most
/// `width` characters so it stays one updating line.
pub fn bar(p: &ResyncProgress, width: usize) -> String {
    const CELLS: usize = 20;
    let pc = percent(p.total, p.done);
    let cells = match pc {
        Some(pc) => {
            let full = CELLS * usize::from(pc) / 100;
            format!("[{}{}]", "#".repeat(full), ".".repeat(CELLS - full))
        }
        None => format!("[{:^CELLS$}]", "?"),
    };
    let pct = pc.map_or_else(|| "  ?%".to_string(), |pc| format!("{pc:>3}%"));
    let entries = match p.total {
        Some(t) => format!("{}/{t} entries", p.done.min(t)),
        None => format!("{} entries", p.done),
    };
    let phase = if p.phase.is_empty() {
        String::new()
    } else {
        format!(" {}", p.phase)
    };
    let line = format!(
        "{cells} {pct} {entries}, {}, {}, {}{phase}",
        format_bytes(p.bytes),
        format_rate(p.bytes_per_sec).replace("unlimited", "0 B/s"),
        eta_text(p)
    );
    line.chars().take(width.max(20)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> ResyncProgress {
        ResyncProgress {
            state: "running".into(),
            phase: "copying".into(),
            source: 0,
            files: 17,
            bytes: 12 << 20,
            checked: 1300,
            seconds: 12,
            error: String::new(),
            total: Some(2740),
            done: 1233,
            bytes_per_sec: 2 << 20,
            entries_per_sec: 350,
            eta: Some(45),
            rate_limit: 2 << 20,
        }
    }

    #[test]
    fn a_running_resync_with_a_known_total() {
        let p = running();
        assert_eq!(
            describe(&p),
            "running (copying): 45% of 2740 entries, 17 copied or fixed, 12.0 MiB at \
             2.0 MiB/s (limit 2.0 MiB/s), 350 entries/s, ETA 45s, 12s so far"
        );
        assert_eq!(check_reason(&p), "resync running (copying, 45%, ETA 45s)");
        assert_eq!(
            bar(&p, 200),
            "[#########...........]  45% 1233/2740 entries, 12.0 MiB, 2.0 MiB/s, ETA 45s copying"
        );
        assert_eq!(bar(&p, 30).chars().count(), 30);
    }

    #[test]
    fn an_unknown_total_is_said_not_guessed() {
        let p = ResyncProgress {
            phase: "catching up".into(),
            total: None,
            eta: None,
            bytes_per_sec: 0,
            rate_limit: 0,
            ..running()
        };
        let d = describe(&p);
        assert!(
            d.contains("1233 entries checked (total unknown)") && d.contains("ETA unknown"),
            "{d}"
        );
        assert!(d.contains("12.0 MiB at 0 B/s,"), "{d}");
        assert!(!d.contains('%') && !d.contains("limit"), "{d}");
        assert_eq!(check_reason(&p), "resync running (catching up)");
        let b = bar(&p, 200);
        assert!(
            b.starts_with("[         ?          ]   ?% 1233 entries,"),
            "{b}"
        );
    }

    #[test]
    fn ended_resyncs() {
        let done = ResyncProgress {
            state: "done".into(),
            phase: String::new(),
            ..running()
        };
        assert_eq!(
            describe(&done),
            "done: 1300 entries checked, 17 copied or fixed, 12.0 MiB in 12s"
        );
        let failed = ResyncProgress {
            state: "failed".into(),
            phase: String::new(),
            error: "the source was taken out of service".into(),
            ..running()
        };
        assert!(describe(&failed).ends_with("in 12s: the source was taken out of service"));
    }
}
