//! Words every layer uses for the same facts, defined once: the log target of alert lines, an
//! errno as admins read it, and the phrase for a replica that did not answer in time.

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
}
