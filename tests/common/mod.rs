//! Test harness shared by the integration tests: mounts the real `chironfs` binary on replica
//! directories inside a temp dir, and always unmounts (aborting a hung FUSE connection if it
//! must) and stops the daemon it started, by pid.
#![allow(dead_code)]

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use chironfs::view::snapshot::{ReplicaState, Snapshot};

pub mod guards;
#[allow(unused_imports)]
pub use guards::*;

/// Replica `i`'s journal of changed paths (`.chironfs/journal`; see `chironfs::engine::journal`).
pub fn journal_path(m: &Mount, i: usize) -> PathBuf {
    m.replicas[i]
        .join(chironfs::rules::state::META_DIR)
        .join(chironfs::engine::journal::JOURNAL_FILE)
}

/// Replica `i`'s journal ("" if it has none).
pub fn journal_text(m: &Mount, i: usize) -> String {
    std::fs::read_to_string(journal_path(m, i)).unwrap_or_default()
}

/// Path of the built `chironfs` binary.
pub fn chironfs_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chironfs"))
}

/// Path of the built `chironctl` binary.
pub fn chironctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chironctl"))
}

/// True when the tests can mount (root and /dev/fuse); tests skip with a message otherwise.
pub fn can_mount() -> bool {
    let ok = nix::unistd::geteuid().is_root() && Path::new("/dev/fuse").exists();
    if !ok {
        eprintln!("SKIP: needs root and /dev/fuse");
    }
    ok
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The "MAJOR:MINOR" device of the mount at `mnt`, read from /proc/self/mountinfo (never from
/// a stat of the mount, which would hang on a dead connection).
pub fn mount_device(mnt: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let target = mnt.to_str()?;
    info.lines()
        .rfind(|l| l.split(' ').nth(4) == Some(target))
        .and_then(|l| l.split(' ').nth(2).map(str::to_owned))
}

/// Whether something is mounted at `mnt`.
pub fn is_mounted(mnt: &Path) -> bool {
    mount_device(mnt).is_some()
}

/// Aborts the FUSE connection of the mount at `mnt` through fusectl, so processes blocked on
/// it are released.
pub fn abort_fuse(mnt: &Path) {
    let Some(dev) = mount_device(mnt) else { return };
    let Some(minor) = dev.split(':').nth(1) else {
        return;
    };
    let ctl = Path::new("/sys/fs/fuse/connections");
    if !ctl.join(minor).exists() {
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "none"])
            .arg(ctl)
            .output();
    }
    let _ = std::fs::write(ctl.join(minor).join("abort"), "1");
}

/// Unmounts `mnt` whatever state it is in: plain umount, else abort + lazy umount.
pub fn force_unmount(mnt: &Path) {
    for _ in 0..3 {
        if !is_mounted(mnt) {
            return;
        }
        let ok = Command::new("umount")
            .arg(mnt)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            continue;
        }
        abort_fuse(mnt);
        let _ = Command::new("umount").arg("-l").arg(mnt).output();
    }
}

/// Whether process `pid` runs (a zombie, exited but not yet reaped, does not).
pub fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

/// A mounted chironfs under test.
pub struct Mount {
    /// Holds every path below; removed at drop.
    pub tmp: tempfile::TempDir,
    /// Replica directories, in spec order.
    pub replicas: Vec<PathBuf>,
    /// Mount point.
    pub mnt: PathBuf,
    /// Status file.
    pub status_file: PathBuf,
    /// Control socket.
    pub socket: PathBuf,
    /// Log file.
    pub log: PathBuf,
    /// Daemon pid.
    pub pid: i32,
    extra_unmounts: Vec<PathBuf>,
}

/// How to start a mount.
pub struct MountBuilder {
    tmp: tempfile::TempDir,
    replicas: Vec<PathBuf>,
    low: Vec<bool>,
    args: Vec<OsString>,
    timeout: f64,
}

impl MountBuilder {
    /// `n` fresh replica directories.
    pub fn new(n: usize) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("chironfs-test-")
            .tempdir()
            .expect("tempdir");
        let replicas: Vec<PathBuf> = (0..n).map(|i| tmp.path().join(format!("r{i}"))).collect();
        for r in &replicas {
            std::fs::create_dir(r).unwrap();
        }
        MountBuilder {
            tmp,
            low: vec![false; n],
            replicas,
            args: Vec::new(),
            timeout: 2.0,
        }
    }

    /// The temp dir (to prepare special replicas before mounting).
    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    /// Replaces replica `i` by `path` (a tiny tmpfs, a read-only bind mount, an SSHFS mount...).
    pub fn replica_path(mut self, i: usize, path: PathBuf) -> Self {
        self.replicas[i] = path;
        self
    }

    /// Marks replica `i` low priority (`:` prefix).
    pub fn low_priority(mut self, i: usize) -> Self {
        self.low[i] = true;
        self
    }

    /// Per-replica timeout in seconds (default 2 in tests).
    pub fn timeout(mut self, secs: f64) -> Self {
        self.timeout = secs;
        self
    }

    /// Extra command-line argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// The replica spec string.
    pub fn spec(&self) -> String {
        self.replicas
            .iter()
            .zip(&self.low)
            .map(|(p, low)| format!("{}{}", if *low { ":" } else { "" }, p.display()))
            .collect::<Vec<_>>()
            .join("=")
    }

    /// Starts the daemon (daemonized: it returns once the mount answers) and waits for its
    /// status file.
    pub fn start(self) -> Mount {
        let mnt = self.tmp.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let status_file = self.tmp.path().join("status");
        let socket = self.tmp.path().join("ctl.sock");
        let log = self.tmp.path().join("chironfs.log");
        let out = Command::new(chironfs_bin())
            .arg("-o")
            .arg("allow_other")
            .arg("--status-file")
            .arg(&status_file)
            .arg("-c")
            .arg(&socket)
            .arg("--log")
            .arg(&log)
            .arg("--timeout")
            .arg(self.timeout.to_string())
            .args(&self.args)
            .arg(self.spec())
            .arg(&mnt)
            .output()
            .expect("run chironfs");
        assert!(
            out.status.success(),
            "chironfs failed to mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(is_mounted(&mnt), "chironfs returned before mounting");
        assert!(
            wait_until(Duration::from_secs(5), || status_file.exists()),
            "no status file"
        );
        let text = std::fs::read_to_string(&status_file).unwrap();
        let pid = text
            .lines()
            .find_map(|l| l.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
            .expect("pid in status file");
        Mount {
            tmp: self.tmp,
            replicas: self.replicas,
            mnt,
            status_file,
            socket,
            log,
            pid,
            extra_unmounts: Vec::new(),
        }
    }
}

impl Mount {
    /// A 2-replica mount with defaults.
    pub fn two() -> Mount {
        MountBuilder::new(2).start()
    }

    /// Path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Path of `rel` inside replica `i`.
    pub fn on(&self, i: usize, rel: &str) -> PathBuf {
        self.replicas[i].join(rel)
    }

    /// Something to unmount (before the replicas are removed) when the test ends.
    pub fn unmount_at_end(&mut self, p: PathBuf) {
        self.extra_unmounts.push(p);
    }

    /// Runs `chironctl -s SOCKET args...`.
    pub fn chironctl(&self, args: &[&str]) -> Output {
        Command::new(chironctl_bin())
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run chironctl")
    }

    /// The daemon's snapshot through `chironctl status --json`.
    pub fn snapshot(&self) -> Snapshot {
        let out = self.chironctl(&["status", "--json"]);
        assert!(
            out.status.success(),
            "chironctl status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    /// The status file, parsed.
    pub fn status_file_snapshot(&self) -> Snapshot {
        chironfs::view::status_file::parse(&std::fs::read_to_string(&self.status_file).unwrap())
            .unwrap()
    }

    /// Waits until replica `i` is out of service in both the control socket and the status
    /// file (the file is rewritten every second).
    pub fn wait_out_of_service(&self, i: usize) -> bool {
        wait_until(Duration::from_secs(8), || {
            self.snapshot().replicas[i].state == ReplicaState::OutOfService
                && self.status_file_snapshot().replicas[i].state == ReplicaState::OutOfService
        })
    }

    /// The daemon's log file so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the daemon with SIGTERM and waits for the unmount.
    pub fn stop(&self) -> bool {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        wait_until(Duration::from_secs(10), || {
            !pid_alive(self.pid) && !is_mounted(&self.mnt)
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            force_unmount(&self.mnt);
        }
        if pid_alive(self.pid) {
            let pid = nix::unistd::Pid::from_raw(self.pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if !wait_until(Duration::from_secs(5), || !pid_alive(self.pid)) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        for p in self.extra_unmounts.iter().rev() {
            force_unmount(p);
        }
    }
}

/// Every file under `dir` as (relative path, type, mode, uid, gid, size, mtime ns, content
/// or link target): what "the replicas are identical" means.
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    // The replica's own state (`.chironfs`) differs per replica and is not user data.
    entries.retain(|e| dir != root || e.file_name() != chironfs::rules::state::META_DIR);
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let md = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let ft = md.file_type();
        let body = if ft.is_symlink() {
            format!("-> {}", std::fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            let data = std::fs::read(&p).unwrap();
            format!("{} bytes, sum {}", data.len(), checksum(&data))
        } else {
            String::new()
        };
        let mtime = if ft.is_dir() {
            String::new() // directory mtimes move with every entry change; compare entries
        } else {
            format!("{}.{:09}", md.mtime(), md.mtime_nsec())
        };
        out.push(format!(
            "{rel} mode={:o} uid={} gid={} nlink={} mtime={mtime} {body}",
            md.mode(),
            md.uid(),
            md.gid(),
            if ft.is_dir() { 0 } else { md.nlink() }
        ));
        if ft.is_dir() {
            walk(root, &p, out);
        }
    }
}

/// A cheap content checksum (FNV-1a 64) for comparing replicas.
pub fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Asserts that every replica holds the same tree (content and metadata).
pub fn assert_replicas_identical(m: &Mount) {
    let first = tree(&m.replicas[0]);
    for (i, r) in m.replicas.iter().enumerate().skip(1) {
        let other = tree(r);
        if first != other {
            // The first entries that differ, before the whole (often truncated) trees.
            let only0: Vec<&String> = first
                .iter()
                .filter(|e| !other.contains(e))
                .take(5)
                .collect();
            let only_i: Vec<&String> = other
                .iter()
                .filter(|e| !first.contains(e))
                .take(5)
                .collect();
            panic!(
                "replica 0 and replica {i} differ:\n  only on 0: {only0:?}\n  only on {i}: \
                 {only_i:?}\n  replica 0: {first:?}\n  replica {i}: {other:?}"
            );
        }
    }
}

/// renameat2(2) of `from` to `to` with `flags` (through a mount); the errno on failure.
pub fn renameat2(from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let (a, b) = (c(from), c(to));
    // SAFETY: two valid NUL-terminated paths; AT_FDCWD is ignored for absolute ones.
    let ret = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// Sets the extended attribute `name` of `path` itself (not a symlink's target), behind the
/// mount's back or through it; fails the test if it cannot.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// kill -9 of the mount's daemon; returns once it is gone and its mount point is unmounted.
pub fn kill_daemon_and_unmount(m: &Mount) {
    let pid = nix::unistd::Pid::from_raw(m.pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        nix::sys::signal::kill(pid, None).is_err()
    }));
    force_unmount(&m.mnt);
}

/// Asserts that every replica of `m` is in service and not stale.
pub fn assert_all_in_service(m: &Mount) {
    let s = m.snapshot();
    assert!(
        s.replicas
            .iter()
            .all(|r| r.state == chironfs::view::snapshot::ReplicaState::InService && !r.stale),
        "{s:?}"
    );
}

/// Runs `chironctl ARGS` against `m` and returns its stdout, failing the test with both
/// outputs when it does not succeed.
pub fn ctl_ok(m: &Mount, args: &[&str]) -> String {
    let out = m.chironctl(args);
    assert!(
        out.status.success(),
        "chironctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` as uid/gid with the given supplementary groups (through setpriv).
pub fn run_as(uid: u32, gid: u32, groups: &[u32], cmd: &str) -> Output {
    let groups = if groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!(
            "--groups={}",
            groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg(groups)
        .args(["sh", "-c", cmd])
        .output()
        .expect("setpriv")
}

impl Mount {
    /// Adopts a chironfs that was mounted some other way (mount(8), mount.fuse3, an fstab
    /// line, a hand-made command line) on `mnt`, with its status file at `status_file`: waits
    /// for the status file, takes the daemon pid from it, and from then on cleans up like a
    /// [`MountBuilder`] mount (unmount, stop the daemon by pid).
    pub fn adopt(
        tmp: tempfile::TempDir,
        replicas: Vec<PathBuf>,
        mnt: PathBuf,
        status_file: PathBuf,
        socket: PathBuf,
        log: PathBuf,
    ) -> Mount {
        let mut pid = None;
        wait_until(Duration::from_secs(5), || {
            pid = std::fs::read_to_string(&status_file).ok().and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("pid="))
                    .and_then(|p| p.parse().ok())
            });
            pid.is_some()
        });
        let m = Mount {
            tmp,
            replicas,
            mnt,
            status_file,
            socket,
            log,
            pid: pid.unwrap_or(-1),
            extra_unmounts: Vec::new(),
        };
        assert!(m.pid > 0, "no pid in the status file of the adopted mount");
        m
    }
}

impl Mount {
    /// Stops the daemon (if it runs) and starts a new one on `replicas` (any order, any
    /// directories) with the same mount point, status file, socket and log, plus `args`.
    /// On success the mount adopts the new daemon and replica list; on failure returns the
    /// daemon's error message.
    pub fn restart_with(&mut self, replicas: &[PathBuf], args: &[&str]) -> Result<(), String> {
        if is_mounted(&self.mnt) || pid_alive(self.pid) {
            assert!(self.stop(), "the daemon did not stop");
        }
        let spec = replicas
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join("=");
        let _ = std::fs::remove_file(&self.status_file);
        let out = Command::new(chironfs_bin())
            .arg("-o")
            .arg("allow_other")
            .arg("--status-file")
            .arg(&self.status_file)
            .arg("-c")
            .arg(&self.socket)
            .arg("--log")
            .arg(&self.log)
            .arg("--timeout")
            .arg("2")
            .args(args)
            .arg(spec)
            .arg(&self.mnt)
            .output()
            .expect("run chironfs");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        assert!(
            wait_until(Duration::from_secs(5), || self.status_file.exists()),
            "no status file"
        );
        let text = std::fs::read_to_string(&self.status_file).unwrap();
        self.pid = text
            .lines()
            .find_map(|l| l.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
            .expect("pid in status file");
        self.replicas = replicas.to_vec();
        Ok(())
    }
}

impl Mount {
    /// The daemon's Prometheus metrics through `chironctl metrics`.
    pub fn metrics(&self) -> String {
        ctl_ok(self, &["metrics"])
    }
}

/// The metadata reads (lookups, getattrs, listings, ...) replica `i` has served so far, from
/// the daemon's metrics: what a test counts to show a question cost a replica nothing.
pub fn metadata_reads(m: &Mount, i: usize) -> f64 {
    let index = i.to_string();
    let labels = [("replica", index.as_str()), ("class", "metadata_read")];
    metric(&m.metrics(), "chironfs_replica_operations_total", &labels)
        .expect("a metadata_read series for the replica")
}

/// The value of the series `name` whose labels include every `key="value"` of `labels` (the
/// first such line), from Prometheus text; None when there is none.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| {
            series.strip_prefix(name).is_some_and(|rest| {
                rest.starts_with('{')
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
        })
        .and_then(|(_, value)| value.parse().ok())
}

/// Runs `promtool check metrics` on `text` and fails the test with its complaints (promtool
/// comes with Debian's `prometheus` package, which scripts/setup.sh installs).
pub fn assert_promtool_clean(text: &str, what: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool not found: run scripts/setup.sh (Debian package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics refuses {what}: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
