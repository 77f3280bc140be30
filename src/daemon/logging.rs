//! Where log lines go: syslog (facility daemon) when daemonized, stderr in the foreground, and
//! an optional log file reopened on SIGHUP for logrotate. Lines logged with target
//! [`crate::view::words::ALERT_TARGET`] are sent at syslog severity ALERT.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};
use syslog::{Facility, Formatter3164, LoggerBackend};

use crate::view::words::ALERT_TARGET;
pub use crate::view::words::utc_timestamp;

type Syslog = syslog::Logger<LoggerBackend, Formatter3164>;

/// The process-wide logger.
pub struct Logger {
    level: LevelFilter,
    stderr: bool,
    quiet: bool,
    syslog_path: Option<PathBuf>,
    syslog: Mutex<Option<Syslog>>,
    file_path: Option<PathBuf>,
    file: Mutex<Option<File>>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Where to log.
#[derive(Clone, Debug)]
pub struct LogTargets {
    /// Print to stderr (foreground).
    pub stderr: bool,
    /// `--quiet`: nothing on stderr but alerts.
    pub quiet: bool,
    /// Syslog socket to send to, if any.
    pub syslog: Option<PathBuf>,
    /// Extra log file.
    pub file: Option<PathBuf>,
    /// Debug logging.
    pub debug: bool,
}

fn open_log(path: &PathBuf) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)
}

fn connect_syslog(path: &PathBuf) -> Option<Syslog> {
    let formatter = Formatter3164 {
        facility: Facility::LOG_DAEMON,
        hostname: None,
        process: "chironfs".into(),
        pid: std::process::id(),
    };
    syslog::unix_custom(formatter, path).ok()
}

/// Installs the logger. Fails (with a sentence) only if the log file cannot be opened.
pub fn init(targets: &LogTargets) -> Result<(), String> {
    let file = match &targets.file {
        Some(p) => {
            Some(open_log(p).map_err(|e| format!("cannot open log file {}: {e}", p.display()))?)
        }
        None => None,
    };
    let level = if targets.debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    let logger = Logger {
        level,
        stderr: targets.stderr,
        quiet: targets.quiet,
        syslog: Mutex::new(targets.syslog.as_ref().and_then(connect_syslog)),
        syslog_path: targets.syslog.clone(),
        file_path: targets.file.clone(),
        file: Mutex::new(file),
    };
    if LOGGER.set(logger).is_ok() {
        let _ = log::set_logger(LOGGER.get().expect("just set"));
        log::set_max_level(level);
    }
    Ok(())
}

/// Reopens the log file (SIGHUP, after logrotate moved it away).
pub fn reopen() {
    if let Some(logger) = LOGGER.get()
        && let Some(path) = &logger.file_path
    {
        match open_log(path) {
            Ok(f) => *logger.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(f),
            Err(e) => log::error!("cannot reopen log file {}: {e}", path.display()),
        }
    }
}

/// fuser's warning when it tries to unmount at exit a mount the admin already unmounted
/// (`umount` is how a FUSE mount is normally stopped): EINVAL says it is gone, nothing failed.
fn is_unmount_noise(record: &Record<'_>) -> bool {
    let text = record.args().to_string();
    text.starts_with("Failed to umount filesystem") && text.contains("os error 22")
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // fuser logs its own internals at info and below; keep only its warnings.
        if record.target().starts_with("fuser")
            && (record.level() > Level::Warn || is_unmount_noise(record))
        {
            return;
        }
        let alert = record.target() == ALERT_TARGET;
        let label = if alert {
            "ALERT"
        } else {
            match record.level() {
                Level::Error => "ERROR",
                Level::Warn => "WARNING",
                Level::Info => "INFO",
                Level::Debug | Level::Trace => "DEBUG",
            }
        };
        let msg = record.args().to_string();
        let line = format!(
            "{} chironfs[{}]: {label}: {msg}\n",
            utc_timestamp(crate::engine::replica::now()),
            std::process::id()
        );
        if self.stderr && (!self.quiet || alert) {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        if let Some(f) = self.file.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = f.write_all(line.as_bytes());
        }
        if let Some(path) = &self.syslog_path {
            let mut syslog = self.syslog.lock().unwrap_or_else(|e| e.into_inner());
            for _attempt in 0..2 {
                if syslog.is_none() {
                    *syslog = connect_syslog(path);
                }
                let Some(s) = syslog.as_mut() else { break };
                let text = format!("{label}: {msg}");
                let sent = if alert {
                    s.alert(text)
                } else {
                    match record.level() {
                        Level::Error => s.err(text),
                        Level::Warn => s.warning(text),
                        Level::Info => s.info(text),
                        Level::Debug | Level::Trace => s.debug(text),
                    }
                };
                if sent.is_ok() {
                    break;
                }
                // The syslog daemon restarted: reconnect once and resend.
                *syslog = None;
            }
        }
    }

    fn flush(&self) {
        if let Some(f) = self.file.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = f.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::utc_timestamp;

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
    }
}
