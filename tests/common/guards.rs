//! Guards shared by the integration tests that need real outside parts: a private syslog
//! daemon and an SSHFS replica served from a network namespace, each torn down on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::{abort_fuse, wait_until};

/// A script under tests/support.
pub fn support(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(name)
}

/// Runs a command and panics with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A private rsyslogd (tests/support/private-syslog.sh) in its own temp dir, stopped on drop.
pub struct Syslog {
    dir: tempfile::TempDir,
}

impl Syslog {
    pub fn start() -> Syslog {
        let dir = tempfile::Builder::new()
            .prefix("chiron-syslog-")
            .tempdir()
            .unwrap();
        let syslog = Syslog { dir };
        run_ok(
            Command::new(support("private-syslog.sh"))
                .arg("start")
                .arg(syslog.dir.path()),
        );
        syslog
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("log.sock")
    }

    pub fn messages(&self) -> String {
        fs::read_to_string(self.dir.path().join("messages")).unwrap_or_default()
    }

    /// Waits (5 s) for a line of `severity` containing every needle; returns it.
    pub fn wait_line(&self, severity: &str, needles: &[&str]) -> Option<String> {
        let mut found = None;
        wait_until(Duration::from_secs(5), || {
            found = self
                .messages()
                .lines()
                .find(|l| {
                    l.split(' ').nth(1) == Some(severity) && needles.iter().all(|n| l.contains(n))
                })
                .map(str::to_owned);
            found.is_some()
        });
        found
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        let _ = Command::new(support("private-syslog.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// An SSHFS replica served by an sshd in a network namespace (tests/support/sshfs-netns.sh),
/// that stays hung when the link is cut; `down` aborts it and removes the namespace.
pub struct Sshfs {
    name: String,
    dir: tempfile::TempDir,
    up: bool,
}

impl Sshfs {
    pub fn script() -> PathBuf {
        support("sshfs-netns.sh")
    }

    /// Exports `export` (filled by `fill` first) on `mnt`.
    pub fn up(fill: impl FnOnce(&Path)) -> Sshfs {
        let dir = tempfile::Builder::new()
            .prefix("chiron-sshfs-")
            .tempdir()
            .unwrap();
        // One name per server: tests of this binary run in parallel.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let s = Sshfs {
            name: format!("faults{}-{n}", std::process::id()),
            dir,
            up: true,
        };
        fill(&s.export());
        run_ok(
            Command::new(Self::script())
                .env("SSHFS_ALIVE", "ServerAliveInterval=0")
                .arg("up")
                .arg(&s.name)
                .arg(s.export())
                .arg(s.mnt()),
        );
        s
    }

    pub fn export(&self) -> PathBuf {
        self.dir.path().join("export")
    }

    pub fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    pub fn cut(&self) {
        run_ok(Command::new(Self::script()).arg("cut").arg(&self.name));
    }

    pub fn down(&mut self) {
        if std::mem::take(&mut self.up) {
            abort_fuse(&self.mnt());
            let _ = Command::new(Self::script())
                .env("PEER_UMOUNT_TIMEOUT", "1")
                .arg("down")
                .arg(&self.name)
                .output();
        }
    }
}

impl Drop for Sshfs {
    fn drop(&mut self) {
        self.down();
    }
}
