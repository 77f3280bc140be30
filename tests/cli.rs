//! The real `chironfs` binary from the command line: bad input is one clear line and a
//! non-zero exit (never a crash), and every way of mounting (daemon, foreground, options after
//! the positionals, mount.fuse3, mount(8) with an fstab line) works and unmounts cleanly.
mod common;
use common::*;

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A temp dir holding replicas a and b, a mount point, a regular file and the daemon's files.
struct Scratch {
    tmp: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("chironfs-cli-")
            .tempdir()
            .unwrap();
        for d in ["a", "b", "a/sub", "mnt", "mnt/sub"] {
            fs::create_dir(tmp.path().join(d)).unwrap();
        }
        fs::write(tmp.path().join("file"), b"not a dir").unwrap();
        Scratch { tmp }
    }

    fn p(&self, rel: &str) -> String {
        self.tmp.path().join(rel).display().to_string()
    }

    fn spec(&self) -> String {
        format!("{}={}", self.p("a"), self.p("b"))
    }

    /// The daemon's own files, inside the temp dir (never /run).
    fn own_files(&self) -> Vec<String> {
        vec![
            "--status-file".into(),
            self.p("status"),
            "-c".into(),
            self.p("ctl.sock"),
            "--log".into(),
            self.p("chironfs.log"),
        ]
    }

    /// `chironfs -f` of this scratch's replicas on its mount point, started (not yet mounted).
    fn foreground(&self, stderr: Stdio) -> std::process::Child {
        let mut args = vec!["-f".to_string()];
        args.extend(self.own_files());
        args.extend([self.spec(), self.p("mnt")]);
        Command::new(chironfs_bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap()
    }

    /// Hands the mount over to the harness, which unmounts it and stops the daemon.
    fn adopt(self) -> Mount {
        let p = |r: &str| self.tmp.path().join(r);
        let (replicas, mnt) = (vec![p("a"), p("b")], p("mnt"));
        let (status, sock, log) = (p("status"), p("ctl.sock"), p("chironfs.log"));
        Mount::adopt(self.tmp, replicas, mnt, status, sock, log)
    }
}

fn run(args: &[String]) -> Output {
    Command::new(chironfs_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run chironfs")
}

/// The command must have failed cleanly: an exit code (no signal), not 0, exactly one line on
/// stderr that names the problem, and nothing mounted.
fn assert_one_line_failure(out: &Output, must_mention: &str, mnt: &Path) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code();
    assert!(
        code.is_some(),
        "killed by a signal: {:?}; stderr: {stderr}",
        out.status
    );
    assert_ne!(code, Some(0), "bad input accepted; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one line on stderr, got: {stderr:?}");
    assert!(lines[0].starts_with("chironfs: "), "{stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr:?}");
    assert!(
        lines[0].contains(must_mention),
        "stderr {stderr:?} should mention {must_mention:?}"
    );
    assert!(!is_mounted(mnt), "a failed start left a mount");
    lines[0].to_string()
}

#[test]
fn bad_input_gets_one_clear_line_and_a_non_zero_exit() {
    let s = Scratch::new();
    let (a, b, mnt) = (s.p("a"), s.p("b"), s.p("mnt"));
    let mut own = s.own_files();
    own.truncate(4); // no --log: one case below sets its own
    let mut cases: Vec<(Vec<String>, &str)> = vec![
        (vec![a.clone(), mnt.clone()], "at least two replicas"),
        (vec![format!("{a}=={b}"), mnt.clone()], "empty"),
        (vec![format!("{a}={b}="), mnt.clone()], "empty"),
        (vec![format!("={a}={b}"), mnt.clone()], "empty"),
        (vec![format!(":={b}"), mnt.clone()], "':'"),
        (vec![format!("{a}={a}"), mnt.clone()], "listed twice"),
        (vec![format!("{a}={a}/."), mnt.clone()], "same directory"),
        (
            vec![format!("{a}={}", s.p("a/sub")), mnt.clone()],
            "inside replica",
        ),
        (
            vec![format!("{}={b}", s.p("mnt/sub")), mnt.clone()],
            "inside the mount point",
        ),
        (vec![format!("{a}={mnt}"), mnt.clone()], "mount point"),
        (
            vec![format!("{a}={}", s.p("missing")), mnt.clone()],
            "No such file or directory",
        ),
        (
            vec![format!("{a}={}", s.p("file")), mnt.clone()],
            "not a directory",
        ),
        (vec![s.spec(), s.p("file")], "not a directory"),
        (vec![s.spec(), s.p("nomnt")], "No such file or directory"),
        (vec![s.spec()], "missing the mount point"),
        (vec![], "missing"),
        (
            vec!["--log".into(), s.p("mnt/x.log"), s.spec(), mnt.clone()],
            "inside the mount point",
        ),
        (
            vec![
                s.spec(),
                mnt.clone(),
                "-o".into(),
                format!("log={mnt}/y.log"),
            ],
            "inside the mount point",
        ),
        (
            vec!["--bogus".into(), s.spec(), mnt.clone()],
            "unknown option '--bogus'",
        ),
        (vec![s.spec(), mnt.clone(), "-x".into()], "-x"),
        (
            vec![
                s.spec(),
                mnt.clone(),
                "-o".into(),
                "allow_other,bogus".into(),
            ],
            "unknown mount option 'bogus'",
        ),
        (
            vec![s.spec(), mnt.clone(), "-o".into(), "timeout=abc".into()],
            "timeout",
        ),
        (
            vec!["--timeout".into(), "0".into(), s.spec(), mnt.clone()],
            "timeout",
        ),
        (
            vec!["--threads".into(), "0".into(), s.spec(), mnt.clone()],
            "threads",
        ),
        (vec![s.spec(), mnt.clone(), "extra".into()], "extra"),
    ];
    if can_mount() {
        // Found only by the daemon, after it mounted: it must unmount and report it to the
        // launcher, still as one line. (The -c given here wins over the one in `own`.)
        cases.push((
            vec!["-c".into(), s.p("file/ctl.sock"), s.spec(), mnt.clone()],
            "control socket",
        ));
    }
    for (args, mention) in cases {
        let mut full = own.clone();
        full.extend(args.iter().cloned());
        let out = run(&full);
        let line = assert_one_line_failure(&out, mention, Path::new(&mnt));
        eprintln!("ok: {args:?} -> {line}");
    }
    // A replica spec ChironFS 1.1 crashed on (SIGFPE): all low priority is accepted as equal.
    // Nothing is left behind by any of the failures above.
    assert!(!s.tmp.path().join("status").exists());
}

#[test]
fn help_and_version_exit_zero() {
    for flag in ["-h", "--help"] {
        let out = run(&[flag.to_string()]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Usage:") && text.contains("MOUNTPOINT"),
            "{text}"
        );
        assert!(out.stderr.is_empty());
    }
    for flag in ["-V", "--version"] {
        let out = run(&[flag.to_string()]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.trim(),
            format!("chironfs {}", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
}

/// Data written through the mount lands on both replicas.
fn write_and_check(m: &Mount, name: &str) {
    fs::write(m.path(name), name.as_bytes()).unwrap();
    for i in 0..2 {
        assert_eq!(fs::read(m.on(i, name)).unwrap(), name.as_bytes());
    }
}

/// The mount's line in /proc/self/mountinfo.
fn mountinfo_line(mnt: &Path) -> String {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(mnt.to_str().unwrap()))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn daemon_mode_returns_once_mounted_and_options_may_follow_the_positionals() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let mnt = PathBuf::from(s.p("mnt"));
    let parent_dev = fs::metadata(s.tmp.path()).unwrap().dev();
    // Options after the replica list and the mount point, the way mount.fuse3 passes them.
    let mut args = vec![s.spec(), s.p("mnt"), "-o".into(), "allow_other".into()];
    args.extend(s.own_files());
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No waiting: when the launcher returns, the mount is there and answers.
    assert!(is_mounted(&mnt), "returned before mounting");
    assert_ne!(fs::metadata(&mnt).unwrap().dev(), parent_dev);
    let m = s.adopt();
    write_and_check(&m, "first");
    assert!(
        mountinfo_line(&m.mnt).contains("allow_other"),
        "{}",
        mountinfo_line(&m.mnt)
    );
    // allow_other took effect: another user can use the mount.
    let out = run_as(1001, 1001, &[], &format!("ls {}", m.mnt.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "first\nsub");
    assert!(m.stop(), "SIGTERM must unmount and end the daemon");
}

#[test]
fn without_allow_other_other_users_are_kept_out() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let mut args = s.own_files();
    args.extend([s.spec(), s.p("mnt")]);
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = s.adopt();
    assert!(!mountinfo_line(&m.mnt).contains("allow_other"));
    let out = run_as(1001, 1001, &[], &format!("ls {}", m.mnt.display()));
    assert!(
        !out.status.success(),
        "uid 1001 got into a mount without allow_other"
    );
}

#[test]
fn foreground_mode_and_sigterm_unmount_cleanly_even_when_busy() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let mnt = PathBuf::from(s.p("mnt"));
    let mut child = s.foreground(Stdio::piped());
    if !wait_until(Duration::from_secs(10), || is_mounted(&mnt)) {
        let _ = child.kill();
        panic!("foreground chironfs did not mount");
    }
    let m = s.adopt();
    assert_eq!(m.pid as u32, child.id(), "-f stays in the foreground");
    write_and_check(&m, "fg");
    // A file held open (the mount is busy): SIGTERM takes the mount away at once (lazily),
    // the open file keeps working, and the daemon ends when it is closed.
    let mut held = fs::File::open(m.path("fg")).unwrap();
    // SAFETY: plain kill(2) of the daemon this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(
        wait_until(Duration::from_secs(10), || !is_mounted(&m.mnt)),
        "SIGTERM did not unmount a busy mount"
    );
    let mut text = String::new();
    held.read_to_string(&mut text).unwrap();
    assert_eq!(text, "fg", "the open file works after the lazy unmount");
    drop(held);
    assert!(m.stop(), "the daemon ends once the last file is closed");
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}"
    );
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert!(m.log_text().contains("unmounted"), "{}", m.log_text());
    // The data stays on the replicas; the mount point is an empty directory again.
    assert_eq!(fs::read(m.on(0, "fg")).unwrap(), b"fg");
    assert_eq!(
        fs::read_dir(&m.mnt).unwrap().count(),
        1,
        "only mnt/sub is left"
    );
}

/// The mount.fuse3 helper (fuse3), which runs `chironfs` from PATH as mount(8) would.
fn mount_fuse3() -> &'static str {
    ["/sbin/mount.fuse3", "/usr/sbin/mount.fuse3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mount.fuse3 missing: install fuse3 (scripts/setup.sh)")
}

/// PATH with the built chironfs first, for mount.fuse3 to find it.
fn path_with_chironfs() -> String {
    format!(
        "{}:{}",
        chironfs_bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A stop that comes as soon as the mount shows (a cluster manager stopping what it just
/// started): the daemon unmounts and exits 0, never dies of the signal and leaves a dead mount
/// ("Transport endpoint is not connected"). Its handlers used to be installed only after the
/// mount answered, and then the first try here died of the signal.
#[test]
fn sigterm_right_after_the_mount_shows_unmounts_cleanly() {
    if !can_mount() {
        return;
    }
    for attempt in 0..10 {
        let s = Scratch::new();
        let mnt = PathBuf::from(s.p("mnt"));
        let mut child = s.foreground(Stdio::null());
        // Looked for without a pause: the signal must come within microseconds of the mount.
        let t0 = std::time::Instant::now();
        let shown = loop {
            if is_mounted(&mnt) {
                break true;
            }
            if matches!(child.try_wait(), Ok(Some(_))) || t0.elapsed() > Duration::from_secs(10) {
                break false;
            }
        };
        if shown {
            // SAFETY: plain kill(2) of the daemon this test started, not yet reaped (a child
            // that ended was reaped by try_wait above, and its pid is not signalled).
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let mut status = None;
        wait_until(Duration::from_secs(10), || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        let left_mounted = is_mounted(&mnt);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        force_unmount(&mnt);
        assert!(shown, "attempt {attempt}: the mount never showed");
        let status = status.expect("the daemon did not end within 10 s of SIGTERM");
        assert_eq!(
            status.code(),
            Some(0),
            "attempt {attempt}: the daemon ended by {status:?}, not by unmounting"
        );
        assert!(!left_mounted, "attempt {attempt}: a mount was left behind");
    }
}

#[test]
fn mount_fuse3_helper_runs_chironfs_from_path() {
    if !can_mount() {
        return;
    }
    let helper = mount_fuse3();
    let s = Scratch::new();
    let path = path_with_chironfs();
    // Exactly what `mount -t fuse.chironfs A=B MNT -o ...` runs once mount(8) found the helper.
    let opts = format!(
        "allow_other,status_file={},ctl={},log={}",
        s.p("status"),
        s.p("ctl.sock"),
        s.p("chironfs.log")
    );
    let out = Command::new(helper)
        .args([&s.spec(), &s.p("mnt"), "-t", "fuse.chironfs", "-o", &opts])
        .env("PATH", path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount.fuse3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(Path::new(&s.p("mnt"))));
    let m = s.adopt();
    write_and_check(&m, "via-helper");
    assert!(mountinfo_line(&m.mnt).contains("allow_other"));
    assert!(m.stop());
}

#[test]
fn mount_8_with_an_fstab_line() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    // mount(8) clears PATH before it runs helpers, so the fstab line names the binary by its
    // absolute path, in the classic "PROGRAM#SOURCE" form that mount.fuse3 splits.
    let source = format!("{}#{}", chironfs_bin().display(), s.spec());
    let opts = format!(
        "allow_other,status_file={},ctl={},log={}",
        s.p("status"),
        s.p("ctl.sock"),
        s.p("chironfs.log")
    );
    let fstab = s.tmp.path().join("fstab");
    fs::write(
        &fstab,
        format!("# test fstab\n{source} {} fuse {opts} 0 0\n", s.p("mnt")),
    )
    .unwrap();
    let out = Command::new("mount")
        .arg("-T")
        .arg(&fstab)
        .arg(s.p("mnt"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount -T: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = s.adopt();
    write_and_check(&m, "via-fstab");
    assert!(m.stop());

    // The same with mount -t on the command line.
    let s = Scratch::new();
    let source = format!("{}#{}", chironfs_bin().display(), s.spec());
    let opts = format!(
        "allow_other,status_file={},ctl={}",
        s.p("status"),
        s.p("ctl.sock")
    );
    let out = Command::new("mount")
        .args(["-t", "fuse", &source, &s.p("mnt"), "-o", &opts])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount -t fuse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = s.adopt();
    write_and_check(&m, "via-mount-t");
    // umount(8) is enough to end the daemon.
    let out = Command::new("umount").arg(&m.mnt).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = m.pid;
    assert!(
        wait_until(Duration::from_secs(10), || !Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()
            || fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)),
        "the daemon outlived umount"
    );
}

#[test]
fn low_priority_replica_is_not_read_while_a_normal_one_serves() {
    if !can_mount() {
        return;
    }
    // The first replica is low priority: an implementation that simply reads replica 0 fails.
    let m = MountBuilder::new(2).low_priority(0).start();
    assert!(m.snapshot().replicas[0].low_priority);
    for i in 0..20 {
        fs::write(m.path(&format!("f{i}")), format!("content {i}")).unwrap();
    }
    let base = m.snapshot();
    for round in 0..3 {
        for i in 0..20 {
            let name = format!("f{i}");
            // Fresh opens whose reads reach the daemon (O_DIRECT bypasses the page cache).
            let f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(m.path(&name))
                .unwrap();
            let mut buf = AlignedBuf::new(4096);
            // SAFETY: the buffer is 4096 bytes, aligned for O_DIRECT.
            let n = unsafe { libc::read(f.as_raw_fd(), buf.ptr().cast(), 4096) };
            assert!(
                n > 0,
                "read {name} (round {round}): {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(buf.bytes(n as usize), format!("content {i}").as_bytes());
        }
    }
    let after = m.snapshot();
    assert_eq!(
        after.replicas[0].reads, base.replicas[0].reads,
        "the low-priority replica served reads"
    );
    assert!(after.replicas[1].reads >= base.replicas[1].reads + 60);
    // With the normal replica out, the low one serves.
    let out = m.chironctl(&["disable", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.path("f3"))
        .unwrap();
    let mut buf = AlignedBuf::new(4096);
    // SAFETY: as above.
    let n = unsafe { libc::read(f.as_raw_fd(), buf.ptr().cast(), 4096) };
    assert_eq!(buf.bytes(n.max(0) as usize), b"content 3");
    assert!(m.snapshot().replicas[0].reads > after.replicas[0].reads);
}

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// A page-aligned buffer for O_DIRECT reads.
struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        AlignedBuf { ptr, layout }
    }

    fn ptr(&mut self) -> *mut u8 {
        self.ptr
    }

    fn bytes(&self, n: usize) -> &[u8] {
        // SAFETY: n is at most the allocated length (checked by the callers' read sizes).
        unsafe { std::slice::from_raw_parts(self.ptr, n.min(self.layout.size())) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

#[test]
fn remount_switches_the_mount_read_only_and_back() {
    if !can_mount() {
        return;
    }
    let helper = mount_fuse3();
    let m = Mount::two();
    write_and_check(&m, "before");
    let spec = format!("{}={}", m.replicas[0].display(), m.replicas[1].display());
    let path = path_with_chironfs();
    // What `mount -o remount,ro MNT` runs: mount(8) passes the mount table's options along.
    let remount = |flags: &str| {
        let out = Command::new(helper)
            .args([&spec, m.mnt.to_str().unwrap(), "-t", "fuse.chironfs", "-o"])
            .arg(format!(
                "{flags},nosuid,nodev,relatime,remount,user_id=0,group_id=0,default_permissions"
            ))
            .env("PATH", &path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "remount {flags}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    remount("ro");
    assert!(
        mountinfo_line(&m.mnt).contains(" ro,"),
        "{}",
        mountinfo_line(&m.mnt)
    );
    let err = fs::write(m.path("refused"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(
        fs::read(m.path("before")).unwrap(),
        b"before",
        "reads go on"
    );
    assert!(!m.replicas[0].join("refused").exists());
    remount("rw");
    write_and_check(&m, "after");
    // The same daemon served throughout: nothing was restarted.
    assert_eq!(i64::from(m.snapshot().pid), i64::from(m.pid));
    // Anything but a chironfs mount is refused in one line.
    let s = Scratch::new();
    let out = run(&[s.spec(), s.p("mnt"), "-o".into(), "remount,ro".into()]);
    let msg = assert_one_line_failure(&out, "no chironfs is mounted there", Path::new(&s.p("mnt")));
    assert!(msg.contains("remount"), "{msg}");
    assert!(m.stop());
}
