//! Fault rules: parsing of the control file and matching against operations.
//!
//! Control file syntax, one rule per line (`#` starts a comment line):
//!
//! ```text
//! OP ERRNO [PATH-SUBSTRING]     fail OP with ERRNO (name like EIO, or a number)
//! OP hang  [PATH-SUBSTRING]     block OP until the rule is removed
//! OP NNms  [PATH-SUBSTRING]     delay OP by NN milliseconds, then do it (a far server)
//! ```
//!
//! OP is a FUSE method name or one of the groups `all`, `mutations`, `reads`.
//! The first matching rule wins.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, SystemTime};

/// Set on shutdown: hung operations stop waiting and fail with EIO.
pub static SHUTDOWN: AtomicBool = AtomicBool::new(false);

/// Operations that can be faulted (every implemented FUSE method but `forget`).
pub const OPS: &[&str] = &[
    "lookup",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "flush",
    "release",
    "fsync",
    "opendir",
    "readdir",
    "releasedir",
    "fsyncdir",
    "statfs",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "access",
    "create",
    "fallocate",
];

const MUTATIONS: &[&str] = &[
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "setattr",
    "write",
    "create",
    "fallocate",
    "setxattr",
    "removexattr",
    "fsync",
];

const READS: &[&str] = &[
    "lookup",
    "getattr",
    "read",
    "readdir",
    "readlink",
    "getxattr",
    "listxattr",
];

const ERRNOS: &[(&str, i32)] = &[
    ("EPERM", libc::EPERM),
    ("ENOENT", libc::ENOENT),
    ("EINTR", libc::EINTR),
    ("EIO", libc::EIO),
    ("ENXIO", libc::ENXIO),
    ("EBADF", libc::EBADF),
    ("EAGAIN", libc::EAGAIN),
    ("ENOMEM", libc::ENOMEM),
    ("EACCES", libc::EACCES),
    ("EBUSY", libc::EBUSY),
    ("EEXIST", libc::EEXIST),
    ("EXDEV", libc::EXDEV),
    ("ENODEV", libc::ENODEV),
    ("ENOTDIR", libc::ENOTDIR),
    ("EISDIR", libc::EISDIR),
    ("EINVAL", libc::EINVAL),
    ("ENFILE", libc::ENFILE),
    ("EMFILE", libc::EMFILE),
    ("EFBIG", libc::EFBIG),
    ("ENOSPC", libc::ENOSPC),
    ("EROFS", libc::EROFS),
    ("EMLINK", libc::EMLINK),
    ("ERANGE", libc::ERANGE),
    ("ENAMETOOLONG", libc::ENAMETOOLONG),
    ("ENOSYS", libc::ENOSYS),
    ("ENOTEMPTY", libc::ENOTEMPTY),
    ("ELOOP", libc::ELOOP),
    ("ENODATA", libc::ENODATA),
    ("ENOTSUP", libc::ENOTSUP),
    ("EOPNOTSUPP", libc::EOPNOTSUPP),
    ("ENOTCONN", libc::ENOTCONN),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("ESTALE", libc::ESTALE),
    ("EDQUOT", libc::EDQUOT),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Fail(i32),
    Hang,
    Delay(Duration),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub op: String,
    pub action: Action,
    pub path: Option<String>,
}

impl Rule {
    /// Does this rule apply to `op` acting on any of `paths` (relative to SOURCE)?
    pub fn matches(&self, op: &str, paths: &[&str]) -> bool {
        let op_ok = match self.op.as_str() {
            "all" => op != "statfs",
            "mutations" => MUTATIONS.contains(&op),
            "reads" => READS.contains(&op),
            name => name == op,
        };
        op_ok
            && self
                .path
                .as_deref()
                .is_none_or(|sub| paths.iter().any(|p| p.contains(sub)))
    }
}

pub fn errno_from_name(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return (n > 0).then_some(n);
    }
    let upper = name.to_ascii_uppercase();
    ERRNOS.iter().find(|(n, _)| *n == upper).map(|&(_, e)| e)
}

/// Parse one line: `Ok(None)` for blank lines and comments.
pub fn parse_line(line: &str) -> Result<Option<Rule>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let (op, action) = match words.as_slice() {
        [op, action] | [op, action, _] => (*op, *action),
        _ => return Err("expected `OP ERRNO|hang|NNms [PATH-SUBSTRING]`".into()),
    };
    if !(OPS.contains(&op) || ["all", "mutations", "reads"].contains(&op)) {
        return Err(format!("unknown operation `{op}`"));
    }
    let delay = action
        .strip_suffix("ms")
        .and_then(|ms| ms.parse::<u64>().ok());
    let action = if action == "hang" {
        Action::Hang
    } else if let Some(ms) = delay {
        Action::Delay(Duration::from_millis(ms))
    } else {
        Action::Fail(errno_from_name(action).ok_or(format!("unknown errno `{action}`"))?)
    };
    Ok(Some(Rule {
        op: op.to_string(),
        action,
        path: words.get(2).map(|s| s.to_string()),
    }))
}

/// Parse a whole control file; bad lines are reported in the second vector and skipped.
pub fn parse(text: &str) -> (Vec<Rule>, Vec<String>) {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for (n, line) in text.lines().enumerate() {
        match parse_line(line) {
            Ok(Some(rule)) => rules.push(rule),
            Ok(None) => {}
            Err(e) => errors.push(format!("line {}: {e}: {}", n + 1, line.trim())),
        }
    }
    (rules, errors)
}

/// Identity of one version of the control file.
type Stamp = (SystemTime, u64, u64);

struct Cache {
    stamp: Option<Stamp>,
    rules: Arc<Vec<Rule>>,
}

/// The control file, re-read only when it changed.
pub struct Control {
    path: PathBuf,
    cache: Mutex<Cache>,
}

impl Control {
    pub fn new(path: PathBuf) -> Self {
        let cache = Mutex::new(Cache {
            stamp: None,
            rules: Arc::new(Vec::new()),
        });
        Control { path, cache }
    }

    /// Current rules. The file is re-read when its (mtime, size, inode) changed, and
    /// always while its mtime is recent, since two writes within one timestamp tick
    /// would otherwise be indistinguishable.
    pub fn rules(&self) -> Arc<Vec<Rule>> {
        let mut cache = self.cache.lock().unwrap();
        let stamp = fs::metadata(&self.path).ok().map(|m| {
            (
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                m.len(),
                m.ino(),
            )
        });
        let recent = stamp.is_some_and(|(mtime, _, _)| {
            SystemTime::now()
                .duration_since(mtime)
                .is_ok_and(|age| age < Duration::from_secs(2))
        });
        if stamp == cache.stamp && !recent {
            return cache.rules.clone();
        }
        let text = stamp
            .and_then(|_| fs::read_to_string(&self.path).ok())
            .unwrap_or_default();
        let (rules, errors) = parse(&text);
        if stamp != cache.stamp {
            for e in errors {
                eprintln!("faultfs: {}: {e} (ignored)", self.path.display());
            }
        }
        cache.stamp = stamp;
        cache.rules = Arc::new(rules);
        cache.rules.clone()
    }

    /// Apply the first rule matching `op` on `paths`: `Err(errno)` to fail it, sleep while a
    /// `hang` rule matches (polling every 100 ms), or sleep once for a delay.
    pub fn check(&self, op: &str, paths: &[&str]) -> Result<(), i32> {
        loop {
            let rules = self.rules();
            match rules
                .iter()
                .find(|r| r.matches(op, paths))
                .map(|r| r.action)
            {
                None => return Ok(()),
                Some(Action::Fail(errno)) => return Err(errno),
                Some(Action::Hang) if SHUTDOWN.load(Ordering::Relaxed) => return Err(libc::EIO),
                Some(Action::Hang) => sleep(Duration::from_millis(100)),
                Some(Action::Delay(d)) => {
                    sleep(d);
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(line: &str) -> Rule {
        parse_line(line).unwrap().unwrap()
    }

    #[test]
    fn parses_rules() {
        assert_eq!(
            rule("write EIO"),
            Rule {
                op: "write".into(),
                action: Action::Fail(libc::EIO),
                path: None
            }
        );
        assert_eq!(
            rule("  create   enospc ").action,
            Action::Fail(libc::ENOSPC)
        );
        assert_eq!(rule("getattr EIO data/").path.as_deref(), Some("data/"));
        assert_eq!(rule("read hang").action, Action::Hang);
        assert_eq!(
            rule("statfs 10ms").action,
            Action::Delay(Duration::from_millis(10))
        );
        assert_eq!(rule("all 5").action, Action::Fail(5));
        assert_eq!(parse_line("# write EIO"), Ok(None));
        assert_eq!(parse_line("   "), Ok(None));
    }

    #[test]
    fn rejects_bad_lines() {
        assert!(parse_line("frobnicate EIO").is_err());
        assert!(parse_line("write EWHATEVER").is_err());
        assert!(parse_line("write").is_err());
        assert!(parse_line("write EIO a b").is_err());
        assert!(parse_line("write -3").is_err());
        let (rules, errors) = parse("write EIO\nbogus\n# c\nread hang x\n");
        assert_eq!(rules.len(), 2);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("line 2:"), "{errors:?}");
    }

    #[test]
    fn matching() {
        assert!(rule("write EIO").matches("write", &["a"]));
        assert!(!rule("write EIO").matches("read", &["a"]));
        assert!(rule("all EIO").matches("lookup", &[""]));
        assert!(!rule("all EIO").matches("statfs", &[""]));
        assert!(rule("mutations EROFS").matches("rename", &["a", "b"]));
        assert!(rule("mutations EROFS").matches("fsync", &["a"]));
        assert!(!rule("mutations EROFS").matches("read", &["a"]));
        assert!(rule("reads EIO").matches("readdir", &["d"]));
        assert!(!rule("reads EIO").matches("open", &["d"]));
        let r = rule("getattr EIO data/");
        assert!(r.matches("getattr", &["x/data/f"]));
        assert!(!r.matches("getattr", &["data"]));
        assert!(rule("rename EIO new").matches("rename", &["old", "dir/new"]));
    }

    #[test]
    fn control_file_reload() {
        let path = std::env::temp_dir().join(format!("faultfs-unit-{}", std::process::id()));
        let control = Control::new(path.clone());
        assert_eq!(control.check("write", &["a"]), Ok(()));
        fs::write(&path, "write EIO\n").unwrap();
        assert_eq!(control.check("write", &["a"]), Err(libc::EIO));
        fs::write(&path, "write EROFS\n").unwrap();
        assert_eq!(control.check("write", &["a"]), Err(libc::EROFS));
        fs::write(&path, "").unwrap();
        assert_eq!(control.check("write", &["a"]), Ok(()));
        fs::remove_file(&path).unwrap();
        assert_eq!(control.check("write", &["a"]), Ok(()));
    }
}
