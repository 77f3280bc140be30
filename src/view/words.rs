//! Words every layer uses for the same facts, defined once: the log target of alert lines, an
//! errno as admins read it, the phrase for a replica that did not answer in time, the hint for
//! a daemon that seems gone, and the rule that keeps a value on one line.
//!
//! Pure; imports only `sys` (errno names), so every other module, in `view/` or above, may use
//! it.

use std::io;
use std::time::Duration;

/// Log target for alert-level lines (a replica taken out of service, a lost quorum): the
/// logger sends these at syslog severity ALERT so syslog-based alerting catches them.
pub const ALERT_TARGET: &str = "chironfs::alert";

/// An errno in log and error wording: "EIO (Input/output error)".
pub fn describe_errno(errno: i32) -> String {
    format!(
        "{} ({})",
        crate::sys::errno_name(errno),
        io::Error::from_raw_os_error(errno)
            .to_string()
            .split(" (os error")
            .next()
            .unwrap_or_default()
    )
}

/// A replica that did not answer within its deadline: "no answer within 2.0 s (hung?)".
pub fn no_answer_within(timeout: Duration) -> String {
    format!("no answer within {:.1} s (hung?)", timeout.as_secs_f64())
}

/// The question put to an admin when no daemon answers (no socket, no status file): said the
/// same way by `chironctl` and the Nagios check.
pub const IS_IT_RUNNING: &str = "is chironfs running?";

/// Makes a value safe for one line (a status-file entry, a table cell, a Nagios line): every
/// control character (newline, carriage return, tab, NUL, ...) becomes a space, so a hostile or
/// odd path or error text can neither inject keys nor break a line-oriented shell parser.
pub fn sanitize_value(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Text as shown on one terminal or Nagios line: trimmed, control characters made spaces.
pub fn one_line(s: &str) -> String {
    sanitize_value(s.trim())
}

/// UTC time as `YYYY-MM-DDTHH:MM:SSZ` (no date crate needed for a log prefix).
pub fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_errno_reads_with_its_name_and_message() {
        assert_eq!(describe_errno(libc::EIO), "EIO (Input/output error)");
        assert_eq!(
            no_answer_within(Duration::from_millis(2500)),
            "no answer within 2.5 s (hung?)"
        );
    }

    #[test]
    fn one_line_keeps_text_on_one_line() {
        assert_eq!(sanitize_value("a\tb\0c"), "a b c");
        assert_eq!(one_line("  write error\nEIO \n"), "write error EIO");
    }
}
