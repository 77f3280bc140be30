//! Faults are features: every way a replica can fail, injected for real into one replica of a
//! live mount while an application writes, creates, renames and reads. Each test checks that
//! the application saw no error, that the surviving replicas hold every acknowledged byte, that
//! the faulty replica is out of service (control socket and status file), that an ALERT line
//! reached a real syslog daemon, and that the log says what failed: operation, path in the
//! mount, replica and errno. Plus the administrative side: total failure, enable/disable rules,
//! the Nagios check, a killed daemon, log reopening and the control socket's life cycle.
//!
//! Nothing here blocks the test thread on a mount that may hang: risky I/O runs in a child
//! thread that the test waits for with a deadline, and every mount, daemon, namespace and
//! syslog daemon is undone by a guard, in an order that never walks into a hung mount.
mod common;
use common::*;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use chironfs::view::snapshot::{ReplicaState, Snapshot};

// ---------------------------------------------------------------------------------------------
// Small tools
// ---------------------------------------------------------------------------------------------

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `f` in a child thread and waits at most `limit` for it: a hung mount blocks the child,
/// never the test (which then fails, and its teardown aborts the mount, releasing the child).
fn in_thread<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {limit:?}: the mount hangs"),
    }
}

/// Deterministic file content, different for each `seed`.
fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn old_data() -> Vec<u8> {
    pattern(1, 64 * 1024)
}
fn keep_data() -> Vec<u8> {
    pattern(2, 16 * 1024)
}
fn created_data() -> Vec<u8> {
    pattern(3, 10_000)
}
fn big_data() -> Vec<u8> {
    pattern(4, 4 << 20)
}

/// Fills a replica directory, before it is mounted, with what the workload expects to find.
fn prefill(dir: &Path) {
    fs::create_dir_all(dir.join("pre")).unwrap();
    fs::create_dir_all(dir.join("new")).unwrap();
    fs::write(dir.join("pre/old.txt"), old_data()).unwrap();
    fs::write(dir.join("pre/keep.txt"), keep_data()).unwrap();
}

fn check_content(path: &Path, want: &[u8]) -> Result<(), String> {
    let got = fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    if got != want {
        return Err(format!(
            "{}: {} bytes (sum {:x}), expected {} bytes (sum {:x})",
            path.display(),
            got.len(),
            checksum(&got),
            want.len(),
            checksum(want)
        ));
    }
    Ok(())
}

/// Reads `path` bypassing the page cache (so that every read reaches the daemon, even if it
/// lets the kernel keep cached pages across opens).
fn read_uncached(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut f = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    // SAFETY: advice on a descriptor we own.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut data = Vec::new();
    f.read_to_end(&mut data)
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    Ok(data)
}

/// What an application does through the mount while a replica fails: reads an existing file
/// (twice, so both replicas serve one open), creates a file, writes 4 MiB, renames, reads it
/// all back. Any error is returned with the step that got it.
fn workload(mnt: &Path) -> Result<(), String> {
    let p = |rel: &str| mnt.join(rel);
    for _ in 0..2 {
        if read_uncached(&p("pre/old.txt"))? != old_data() {
            return Err("pre/old.txt: wrong data".into());
        }
    }
    fs::write(p("new/created.txt"), created_data())
        .map_err(|e| format!("create new/created.txt: {e}"))?;
    fs::write(p("big.bin"), big_data()).map_err(|e| format!("write big.bin: {e}"))?;
    fs::rename(p("pre/old.txt"), p("pre/renamed.txt"))
        .map_err(|e| format!("rename pre/old.txt: {e}"))?;
    check_content(&p("big.bin"), &big_data())?;
    check_content(&p("pre/renamed.txt"), &old_data())?;
    check_content(&p("pre/keep.txt"), &keep_data())?;
    check_content(&p("new/created.txt"), &created_data())?;
    if p("pre/old.txt").exists() {
        return Err("pre/old.txt still visible after the rename".into());
    }
    Ok(())
}

/// Runs the workload in a child thread (at most `limit`) and asserts it saw no error.
fn run_workload(m: &Mount, limit: Duration) {
    let mnt = m.mnt.clone();
    if let Err(e) = in_thread("the workload", limit, move || workload(&mnt)) {
        panic!("the application got an error: {e}");
    }
}

/// Asserts that replica directory `dir` holds everything the workload was told was written.
fn assert_holds_workload(dir: &Path) {
    let want: [(&str, Vec<u8>); 4] = [
        ("big.bin", big_data()),
        ("pre/renamed.txt", old_data()),
        ("pre/keep.txt", keep_data()),
        ("new/created.txt", created_data()),
    ];
    for (rel, data) in want {
        if let Err(e) = check_content(&dir.join(rel), &data) {
            panic!(
                "surviving replica {} lost acknowledged data: {e}",
                dir.display()
            );
        }
    }
    assert!(
        !dir.join("pre/old.txt").exists(),
        "surviving replica {} missed the rename",
        dir.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Guards: private syslog, faultfs, plain mounts, SSHFS in a network namespace
// ---------------------------------------------------------------------------------------------

/// The faultfs binary, next to chironfs; built first if missing or older than its sources.
fn faultfs_bin() -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let dir = chironfs_bin().parent().unwrap().to_path_buf();
    let bin = dir.join("faultfs");
    let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/faultfs/src");
    let newest_source = fs::read_dir(&src)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| mtime(&e.path()))
        .max();
    if mtime(&bin).is_none() || newest_source > mtime(&bin) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "-p", "faultfs"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        run_ok(&mut cmd);
    }
    assert!(bin.exists(), "faultfs not found at {}", bin.display());
    bin
}

/// A running faultfs mounted on `mnt` over `source`; rules are set with [`FaultFs::set`].
struct FaultFs {
    child: Child,
    control: PathBuf,
    mnt: PathBuf,
}

impl FaultFs {
    fn start(source: &Path, mnt: &Path) -> FaultFs {
        fs::create_dir_all(source).unwrap();
        fs::create_dir_all(mnt).unwrap();
        let control = mnt.with_extension("faults");
        fs::write(&control, "").unwrap();
        let log = File::create(mnt.with_extension("faultfs.log")).unwrap();
        let child = Command::new(faultfs_bin())
            .arg("--control")
            .arg(&control)
            .arg(source)
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start faultfs");
        let f = FaultFs {
            child,
            control,
            mnt: mnt.to_owned(),
        };
        assert!(
            wait_until(Duration::from_secs(10), || is_mounted(mnt)),
            "faultfs did not mount {}",
            mnt.display()
        );
        f
    }

    /// Replaces the rules (a new file, so faultfs sees the change at once).
    fn set(&self, rules: &str) {
        self.try_set(rules)
            .unwrap_or_else(|e| panic!("cannot set faultfs rules: {e}"));
    }

    fn try_set(&self, rules: &str) -> std::io::Result<()> {
        let tmp = self.control.with_extension("new");
        fs::write(&tmp, rules)?;
        fs::rename(&tmp, &self.control)
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        let _ = self.try_set("");
        force_unmount(&self.mnt);
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let exited = wait_until(Duration::from_secs(5), || {
                self.child.try_wait().ok().flatten().is_some()
            });
            if !exited {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// A mount done by the test (tmpfs, bind) that is undone on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        force_unmount(&self.0);
    }
}

fn mount_tmpfs(dir: &Path, size: &str) -> Mounted {
    fs::create_dir_all(dir).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size}"))
            .arg("chiron-test")
            .arg(dir),
    );
    Mounted(dir.to_owned())
}

/// Fills the filesystem of `dir` until it is full (ENOSPC).
fn fill_up(dir: &Path) {
    let mut f = File::create(dir.join("filler")).unwrap();
    let chunk = vec![0x5a; 4096];
    loop {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
}

/// A test rig: the mount, its syslog daemon and its fault injector, torn down in a safe order
/// (faults cleared, then chironfs unmounted and stopped, then the replicas' own mounts).
struct Rig {
    m: Option<Mount>,
    faultfs: Option<FaultFs>,
    mounts: Vec<Mounted>,
    syslog: Syslog,
}

impl std::ops::Deref for Rig {
    type Target = Mount;
    fn deref(&self) -> &Mount {
        self.m.as_ref().unwrap()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(f) = &self.faultfs {
            let _ = f.try_set("");
        }
        drop(self.m.take());
        drop(self.faultfs.take());
        while let Some(m) = self.mounts.pop() {
            drop(m);
        }
    }
}

/// Starts `b` with the rig's syslog, registering the replicas' own mounts for the teardown.
fn start_rig(
    b: MountBuilder,
    syslog: Syslog,
    faultfs: Option<FaultFs>,
    mounts: Vec<Mounted>,
) -> Rig {
    let b = b.arg("--syslog-socket").arg(syslog.socket());
    let mut m = b.start();
    if let Some(f) = &faultfs {
        m.unmount_at_end(f.mnt.clone());
    }
    for x in &mounts {
        m.unmount_at_end(x.0.clone());
    }
    Rig {
        m: Some(m),
        faultfs,
        mounts,
        syslog,
    }
}

/// The replica paths as the daemon names them (canonical), read once while all answer.
fn replica_names(m: &Mount) -> Vec<String> {
    m.snapshot().replicas.into_iter().map(|r| r.path).collect()
}

/// The common checks after a fault on replica `faulty`: out of service in the control socket
/// and the status file, the others in service, an ALERT line in syslog naming the replica and
/// every needle, and a log-file line doing the same. Returns the alert line.
fn assert_taken_out(rig: &Rig, names: &[String], faulty: usize, needles: &[&str]) -> String {
    assert!(
        rig.wait_out_of_service(faulty),
        "replica {faulty} is still in service: {:?}\nlog:\n{}",
        rig.snapshot().replicas[faulty],
        rig.log_text()
    );
    for s in [rig.snapshot(), rig.status_file_snapshot()] {
        for (i, r) in s.replicas.iter().enumerate() {
            let want = if i == faulty {
                ReplicaState::OutOfService
            } else {
                ReplicaState::InService
            };
            assert_eq!(r.state, want, "replica {i} in {s:?}");
        }
        let reason = &s.replicas[faulty].reason;
        for n in needles {
            assert!(reason.contains(n), "reason {reason:?} does not say {n:?}");
        }
    }
    let mut all: Vec<&str> = vec![names[faulty].as_str()];
    all.extend_from_slice(needles);
    let Some(alert) = rig.syslog.wait_line("alert", &all) else {
        panic!(
            "no syslog line with severity alert naming {all:?}; syslog has:\n{}",
            rig.syslog.messages()
        );
    };
    eprintln!("syslog: {alert}");
    let log = rig.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("ALERT") && all.iter().all(|n| l.contains(n))),
        "no ALERT line naming {all:?} in the log file:\n{log}"
    );
    alert
}

/// Asserts the per-operation error line (`OP failed accessing REPLICA for PATH: ERRNO`).
fn assert_op_logged(rig: &Rig, names: &[String], faulty: usize, op: &str, path: &str, errno: &str) {
    let log = rig.log_text();
    let head = format!(
        "{op} failed accessing {} for {path}: {errno}",
        names[faulty]
    );
    assert!(log.contains(&head), "the log does not say {head:?}:\n{log}");
}

// ---------------------------------------------------------------------------------------------
// EIO from one replica (faultfs), for each kind of operation
// ---------------------------------------------------------------------------------------------

/// Two prefilled replicas, replica 0 (the metadata replica, so reads fail over too) behind a
/// faultfs with no rule yet; with the replica names. None where nothing can be mounted.
fn faulty_replica_0() -> Option<(Rig, Vec<String>)> {
    if !can_mount() {
        return None;
    }
    let syslog = Syslog::start();
    let b = MountBuilder::new(2).timeout(2.0);
    let tmp = b.tmp().to_owned();
    prefill(&tmp.join("r0-src"));
    prefill(&tmp.join("r1"));
    let ff = FaultFs::start(&tmp.join("r0-src"), &tmp.join("r0"));
    let rig = start_rig(b, syslog, Some(ff), vec![]);
    let names = replica_names(&rig);
    Some((rig, names))
}

/// Replica 0 (the metadata replica, so reads fail over too) is a faultfs with `rule`; the
/// workload must not notice, replica 1 must hold everything, and replica 0 is out for `op` on
/// `path` with EIO.
fn eio_case(rule: &str, op: &str, path: &str) {
    let Some((rig, names)) = faulty_replica_0() else {
        return;
    };
    rig.faultfs.as_ref().unwrap().set(rule);

    run_workload(&rig, Duration::from_secs(30));
    assert_holds_workload(&rig.replicas[1]);
    let alert = assert_taken_out(&rig, &names, 0, &[op, path, "EIO"]);
    assert!(alert.contains("1 of 2 replicas in service"), "{alert}");
    assert_op_logged(&rig, &names, 0, op, path, "EIO (Input/output error)");
    let s = rig.snapshot();
    assert!(s.replicas[0].errors >= 1, "{s:?}");
    assert!(
        s.replicas[0].stale || op == "read",
        "a replica that missed a write must be stale: {s:?}"
    );
}

#[test]
fn eio_on_write_is_survived() {
    eio_case("write EIO big.bin\n", "write", "/big.bin");
}

#[test]
fn eio_on_create_is_survived() {
    eio_case("create EIO created\n", "create", "/new/created.txt");
}

#[test]
fn eio_on_rename_is_survived() {
    eio_case("rename EIO old.txt\n", "rename", "/pre/old.txt");
}

#[test]
fn eio_on_read_fails_over() {
    eio_case("read EIO old.txt\n", "read", "/pre/old.txt");
}

/// On a network filesystem close(2) is where a failed write-back shows (NFS, SSHFS), so FLUSH
/// reaches every replica when one is not local (here a FUSE one): a replica failing it is
/// taken out, and close(2) still succeeds because the other holds the data.
#[test]
fn eio_on_flush_takes_the_replica_out_and_close_succeeds() {
    let Some((rig, names)) = faulty_replica_0() else {
        return;
    };
    let mut f = File::create(rig.path("flushed.txt")).unwrap();
    f.write_all(b"kept by replica 1").unwrap();
    rig.faultfs.as_ref().unwrap().set("flush EIO flushed\n");
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    // SAFETY: `fd` was just taken out of the File and is closed exactly once.
    let closed = unsafe { libc::close(fd) };
    assert_eq!(closed, 0, "close: {}", std::io::Error::last_os_error());
    assert_taken_out(&rig, &names, 0, &["flush", "/flushed.txt", "EIO"]);
    assert_op_logged(
        &rig,
        &names,
        0,
        "flush",
        "/flushed.txt",
        "EIO (Input/output error)",
    );
    let want = b"kept by replica 1";
    assert_eq!(fs::read(rig.replicas[1].join("flushed.txt")).unwrap(), want);
    assert_eq!(fs::read(rig.path("flushed.txt")).unwrap(), want);
}

// ---------------------------------------------------------------------------------------------
// ENOSPC, EROFS
// ---------------------------------------------------------------------------------------------

#[test]
fn enospc_on_a_tiny_replica_is_survived() {
    if !can_mount() {
        return;
    }
    let syslog = Syslog::start();
    let b = MountBuilder::new(2).timeout(2.0);
    let tmp = b.tmp().to_owned();
    let tiny = mount_tmpfs(&tmp.join("r1"), "1m");
    prefill(&tmp.join("r0"));
    prefill(&tmp.join("r1"));
    let rig = start_rig(b, syslog, None, vec![tiny]);
    let names = replica_names(&rig);

    run_workload(&rig, Duration::from_secs(30));
    assert_holds_workload(&rig.replicas[0]);
    assert_taken_out(&rig, &names, 1, &["write", "/big.bin", "ENOSPC"]);
    assert_op_logged(
        &rig,
        &names,
        1,
        "write",
        "/big.bin",
        "ENOSPC (No space left on device)",
    );
    assert!(rig.snapshot().replicas[1].stale);
}

#[test]
fn erofs_replica_is_survived() {
    if !can_mount() {
        return;
    }
    let syslog = Syslog::start();
    let b = MountBuilder::new(2).timeout(2.0);
    let tmp = b.tmp().to_owned();
    let src = tmp.join("r1-src");
    prefill(&src);
    prefill(&tmp.join("r0"));
    let ro = tmp.join("r1");
    run_ok(Command::new("mount").arg("--bind").arg(&src).arg(&ro));
    let ro_guard = Mounted(ro.clone());
    run_ok(
        Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&ro),
    );
    let rig = start_rig(b, syslog, None, vec![ro_guard]);
    let names = replica_names(&rig);

    run_workload(&rig, Duration::from_secs(30));
    assert_holds_workload(&rig.replicas[0]);
    assert_taken_out(&rig, &names, 1, &["create", "/new/created.txt", "EROFS"]);
    assert_op_logged(
        &rig,
        &names,
        1,
        "create",
        "/new/created.txt",
        "EROFS (Read-only file system)",
    );
}

// ---------------------------------------------------------------------------------------------
// The replica directory vanishing
// ---------------------------------------------------------------------------------------------

#[test]
fn replica_dir_removed_while_mounted_is_survived() {
    if !can_mount() {
        return;
    }
    // 3 replicas; the metadata replica (0) is deleted, so lookups and reads fail over.
    let syslog = Syslog::start();
    let b = MountBuilder::new(3).timeout(2.0);
    let tmp = b.tmp().to_owned();
    for i in 0..3 {
        prefill(&tmp.join(format!("r{i}")));
    }
    let rig = start_rig(b, syslog, None, vec![]);
    let names = replica_names(&rig);
    fs::remove_dir_all(&rig.replicas[0]).unwrap();

    run_workload(&rig, Duration::from_secs(30));
    assert_holds_workload(&rig.replicas[1]);
    assert_holds_workload(&rig.replicas[2]);
    // Whoever noticed first (an operation's ENOENT or the health check), the alert says why.
    let alert = assert_taken_out(&rig, &names, 0, &["was deleted"]);
    assert!(alert.contains("2 of 3 replicas in service"), "{alert}");
    if alert.contains(" failed: ") {
        assert!(alert.contains("ENOENT"), "{alert}");
    }
    // Recreating the directory does not bring it back: it is a different (empty) directory.
    fs::create_dir(&rig.replicas[0]).unwrap();
    let out = rig.chironctl(&["enable", "0", "--force"]);
    assert!(
        !out.status.success(),
        "a recreated empty dir was re-enabled"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot enable") && err.contains(&names[0]),
        "{err}"
    );
}

#[test]
fn replica_unmounted_under_the_daemon_is_survived() {
    if !can_mount() {
        return;
    }
    let syslog = Syslog::start();
    let b = MountBuilder::new(2).timeout(2.0);
    let tmp = b.tmp().to_owned();
    let t = mount_tmpfs(&tmp.join("r1"), "64m");
    prefill(&tmp.join("r0"));
    prefill(&tmp.join("r1"));
    let rig = start_rig(b, syslog, None, vec![t]);
    let names = replica_names(&rig);
    run_ok(Command::new("umount").arg("-l").arg(&rig.replicas[1]));
    let t0 = Instant::now();
    // The application goes on while the daemon notices.
    let mnt = rig.mnt.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(workload(&mnt));
    });
    // An unmounted replica still answers through the daemon's open root: only the health check
    // can tell, within about a second.
    assert!(wait_until(Duration::from_secs(4), || rig
        .snapshot()
        .replicas[1]
        .state
        == ReplicaState::OutOfService));
    let took = t0.elapsed();
    eprintln!("unmounted replica out of service after {took:?}");
    let result = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the workload did not finish within 30 s: the mount hangs");
    if let Err(e) = result {
        panic!("the application got an error: {e}");
    }
    assert_holds_workload(&rig.replicas[0]);
    assert_taken_out(&rig, &names, 1, &["unmounted"]);
    // The bare mount point directory is not the replica: no way back in.
    let out = rig.chironctl(&["enable", "1", "--force"]);
    assert!(!out.status.success(), "an unmounted replica was re-enabled");
}

// ---------------------------------------------------------------------------------------------
// Hung servers
// ---------------------------------------------------------------------------------------------

#[test]
fn o_tmpfile_on_a_set_with_an_sshfs_replica_is_eopnotsupp_and_blames_no_replica() {
    let Some((ssh, m)) = local_and_sshfs() else {
        return;
    };
    let dir = std::ffi::CString::new(m.mnt.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; a descriptor returned is closed below.
    let fd = unsafe { libc::open(dir.as_ptr(), libc::O_TMPFILE | libc::O_RDWR, 0o600) };
    let err = std::io::Error::last_os_error();
    if fd >= 0 {
        // SAFETY: ours, opened just above.
        unsafe { libc::close(fd) };
    }
    assert_eq!(
        (fd, err.raw_os_error()),
        (-1, Some(libc::EOPNOTSUPP)),
        "SSHFS has no O_TMPFILE, so the set has none"
    );
    // A program falls back to a named file: that works, on both replicas.
    fs::write(m.path("named"), "fallback").unwrap();
    assert_eq!(
        fs::read_to_string(ssh.export().join("named")).unwrap(),
        "fallback"
    );
    // (SFTP keeps whole seconds of mtime: the trees are compared by content above.)
    assert_all_in_service(&m);
    drop(m);
}

/// A set of a local replica (0) and an SSHFS one (1), the SSHFS server in its own network
/// namespace; None where nothing can be mounted. Bind as `(ssh, m)`: the mount goes first.
fn local_and_sshfs() -> Option<(Sshfs, Mount)> {
    if !can_mount() {
        return None;
    }
    let ssh = Sshfs::up(|_| {});
    let m = MountBuilder::new(2).replica_path(1, ssh.mnt()).start();
    Some((ssh, m))
}

/// `mv` (coreutils 9 renames with RENAME_NOREPLACE) on a set of a local and an SSHFS replica:
/// SSHFS, like NFS, takes no rename flags, and answered EINVAL where the local replica
/// renamed, so every `mv` took the SSHFS replica out. RENAME_NOREPLACE now works on both;
/// RENAME_EXCHANGE, which no network filesystem can do, is refused before any replica moves.
#[test]
fn mv_keeps_an_sshfs_replica_in_service_beside_a_local_one() {
    let Some((ssh, m)) = local_and_sshfs() else {
        return;
    };
    fs::write(m.path("a"), "a").unwrap();
    fs::write(m.path("b"), "b").unwrap();
    run_ok(Command::new("mv").arg(m.path("a")).arg(m.path("moved")));
    assert_eq!(
        renameat2(&m.path("moved"), &m.path("b"), libc::RENAME_NOREPLACE),
        Err(libc::EEXIST)
    );
    assert_eq!(
        renameat2(&m.path("moved"), &m.path("b"), libc::RENAME_EXCHANGE),
        Err(libc::EINVAL)
    );
    for dir in [m.replicas[0].clone(), ssh.export()] {
        assert_eq!(fs::read_to_string(dir.join("moved")).unwrap(), "a");
        assert_eq!(fs::read_to_string(dir.join("b")).unwrap(), "b");
        assert!(!dir.join("a").exists(), "{}", dir.display());
    }
    assert_all_in_service(&m);
    drop(m);
}

/// Opens `rel` read-only on a handle whose data replica is `want` (the open's job is counted
/// in that replica's reads; metadata is counted on replica 0 only).
fn open_served_by(m: &Mount, rel: &str, want: usize) -> File {
    for _ in 0..6 {
        let before = m.snapshot().replicas[1].reads;
        let f = File::open(m.path(rel)).unwrap();
        let by_1 = m.snapshot().replicas[1].reads > before;
        if by_1 == (want == 1) {
            return f;
        }
    }
    panic!("no open of {rel} was served by replica {want}");
}

#[test]
fn hung_sshfs_replica_is_taken_out_and_the_mount_keeps_serving() {
    if !can_mount() {
        return;
    }
    let syslog = Syslog::start();
    let mut ssh = Sshfs::up(|export| {
        prefill(export);
        fs::write(export.join("pre/keep.bin"), big_data()).unwrap();
    });
    let b = MountBuilder::new(2)
        .timeout(2.0)
        .replica_path(1, ssh.mnt())
        .arg("--syslog-socket")
        .arg(syslog.socket());
    prefill(&b.tmp().join("r0"));
    fs::write(b.tmp().join("r0/pre/keep.bin"), big_data()).unwrap();
    let m = b.start();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        hung_sshfs_body(&m, &ssh, &syslog)
    }));
    // The hung replica first (it holds the daemon's stuck workers), then chironfs.
    ssh.down();
    drop(m);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

fn hung_sshfs_body(m: &Mount, ssh: &Sshfs, syslog: &Syslog) {
    let names = replica_names(m);
    // A reader handle served by the local replica, opened before the server dies.
    let reader = open_served_by(m, "pre/keep.bin", 0);
    ssh.cut();
    let cut = Instant::now();
    let writer = {
        let mnt = m.mnt.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let r = workload(&mnt);
            let _ = tx.send((r, Instant::now()));
        });
        rx
    };
    // While the writer waits on the dead server, another reader is served at once.
    std::thread::sleep(Duration::from_millis(300));
    let mnt = m.mnt.clone();
    let (read_result, read_took, read_done) =
        in_thread("the parallel reader", Duration::from_secs(10), move || {
            let start = Instant::now();
            let r = (|| -> Result<(), String> {
                let mut buf = vec![0; 64 * 1024];
                reader
                    .read_exact_at(&mut buf, 2 << 20)
                    .map_err(|e| format!("pread keep.bin: {e}"))?;
                if buf[..] != big_data()[2 << 20..(2 << 20) + buf.len()] {
                    return Err("keep.bin: wrong data".into());
                }
                fs::metadata(mnt.join("pre/keep.txt")).map_err(|e| format!("stat: {e}"))?;
                fs::read_dir(mnt.join("pre")).map_err(|e| format!("readdir: {e}"))?;
                Ok(())
            })();
            (r, start.elapsed(), Instant::now())
        });
    read_result.unwrap();
    // Poll the control socket (it never touches a replica) for the moment the replica is out.
    let mut out_after = None;
    wait_until(Duration::from_secs(10), || {
        let out = m.snapshot().replicas[1].state == ReplicaState::OutOfService;
        if out && out_after.is_none() {
            out_after = Some(cut.elapsed());
        }
        out
    });
    let (write_result, write_done) = writer
        .recv_timeout(Duration::from_secs(30))
        .expect("the writer did not finish within 30 s: the mount hangs");
    if let Err(e) = write_result {
        panic!("the application got an error: {e}");
    }
    let out_after = out_after.expect("the hung replica was never taken out");
    let write_took = write_done - cut;
    eprintln!(
        "hung sshfs: out of service {out_after:?} after the cut; parallel reader took \
         {read_took:?}; workload took {write_took:?}"
    );
    assert!(
        read_took < Duration::from_secs(1),
        "the parallel reader took {read_took:?} while a replica hung"
    );
    assert!(
        read_done < write_done,
        "the reader should finish while the writer still waits on the hung replica"
    );
    assert!(
        out_after < Duration::from_secs(4),
        "took {out_after:?} to take out a replica hung with a 2 s timeout"
    );
    assert!(
        write_took < Duration::from_secs(10),
        "the workload took {write_took:?} with one hung replica"
    );
    assert_holds_workload(&m.replicas[0]);
    assert!(m.wait_out_of_service(1));
    let s = m.status_file_snapshot();
    assert_eq!(s.replicas[0].state, ReplicaState::InService);
    assert!(
        s.replicas[1].reason.contains("no answer within 2.0 s"),
        "{s:?}"
    );
    let Some(_) = syslog.wait_line("alert", &[&names[1], "no answer within 2.0 s"]) else {
        panic!("no alert in syslog:\n{}", syslog.messages());
    };
    let log = m.log_text();
    assert!(
        log.lines().any(|l| l.contains("ALERT")
            && l.contains(&names[1])
            && l.contains("no answer within 2.0 s (hung?)")),
        "{log}"
    );
    // The admin cannot wedge the control socket by poking the hung replica.
    let t = Instant::now();
    let out = m.chironctl(&["enable", "1", "--force"]);
    assert!(!out.status.success(), "a hung replica was re-enabled");
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot enable") && err.contains("no answer"),
        "chironctl enable of a hung replica: {err}"
    );
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    // And the mount still serves.
    let mnt = m.mnt.clone();
    in_thread("a read after the hang", Duration::from_secs(5), move || {
        check_content(&mnt.join("big.bin"), &big_data())
    })
    .unwrap();
}

/// On a network replica (any FUSE filesystem counts as one: here a faultfs) the times a write
/// leaves are set once, at the file's release, which neither close(2) nor fsync waits for
/// (each would cost SSHFS two or three round trips); meanwhile the mount shows the times every
/// replica will have, not the server's own. Checked with the time setting hung on the metadata
/// replica and that server's own mtime moved away.
#[test]
fn a_network_replica_gets_a_files_times_at_its_release_and_the_mount_shows_them_before() {
    let Some((rig, _)) = faulty_replica_0() else {
        return;
    };
    let ff = rig.faultfs.as_ref().unwrap();
    let mut f = File::create(rig.path("new/timed")).unwrap();
    f.write_all(b"timed").unwrap();
    ff.set("setattr hang timed\n");
    let f = in_thread("fsync", Duration::from_millis(1500), move || {
        f.sync_all().unwrap();
        f
    });
    assert_eq!(fs::read(rig.on(1, "new/timed")).unwrap(), b"timed");
    // The local replica has the write's time at once: the one every replica must end with.
    let want = fs::metadata(rig.on(1, "new/timed"))
        .unwrap()
        .modified()
        .unwrap();
    let on_server = rig.tmp.path().join("r0-src/new/timed");
    let old = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
    File::options()
        .write(true)
        .open(&on_server)
        .unwrap()
        .set_modified(old)
        .unwrap();
    in_thread("close", Duration::from_millis(1500), move || drop(f));
    let mnt = rig.path("new/timed");
    let shown = in_thread("stat", Duration::from_millis(1500), move || {
        fs::metadata(mnt).unwrap().modified().unwrap()
    });
    assert_eq!(shown, want, "the mount shows the server's own time");
    assert_eq!(
        fs::metadata(&on_server).unwrap().modified().unwrap(),
        old,
        "the time was set before the release (the rule holds it)"
    );
    ff.set("");
    let settled = wait_until(Duration::from_secs(5), || {
        fs::metadata(&on_server).unwrap().modified().unwrap() == want
    });
    assert!(
        settled,
        "the release did not set the time on the network replica"
    );
    assert_eq!(
        fs::metadata(rig.path("new/timed"))
            .unwrap()
            .modified()
            .unwrap(),
        want
    );
    assert_all_in_service(&rig);
}

/// A replica far slower than the other (a server across a WAN: here a faultfs answering 10
/// ms late) serves no file's data once the health check has timed it: every open is served by
/// the near one, where spreading opens over both made every other one as slow as the far one.
#[test]
fn a_far_replica_serves_no_files_data_while_a_near_one_can() {
    let Some((rig, _)) = faulty_replica_0() else {
        return;
    };
    rig.faultfs
        .as_ref()
        .unwrap()
        .set("statfs 10ms\nread 10ms\nopen 10ms\n");
    // The health check times each replica once a second.
    std::thread::sleep(Duration::from_millis(2500));
    for _ in 0..6 {
        let before = rig.snapshot().replicas[1].reads;
        let mut f = File::open(rig.path("pre/keep.txt")).unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut got).unwrap();
        assert_eq!(got, keep_data());
        assert!(
            rig.snapshot().replicas[1].reads > before,
            "an open was served by the far replica"
        );
    }
    assert_all_in_service(&rig);
}

/// The kernel asks for a directory's attributes again after every entry made or removed in
/// it (`default_permissions`: before the next permission check). On a network metadata
/// replica (faultfs here) those are carried forward through the daemon's own changes for up
/// to `--cache-time`, not a round trip each; what the mount shows stays right: the times
/// move with each change and never back, a subdirectory counts, a chmod shows at once.
#[test]
fn a_network_directorys_attributes_follow_its_changes_without_asking_the_replica() {
    let Some((rig, _)) = faulty_replica_0() else {
        return;
    };
    let dir = rig.path("carried");
    fs::create_dir(&dir).unwrap();
    let made = fs::metadata(&dir).unwrap();
    let before = metadata_reads(&rig, 0);
    for n in 0..20 {
        fs::write(dir.join(format!("f{n}")), b"x").unwrap();
    }
    fs::remove_file(dir.join("f0")).unwrap();
    let asked = metadata_reads(&rig, 0) - before;
    assert!(
        asked <= 3.0,
        "{asked} metadata reads on replica 0 for 21 changes"
    );
    let shown = fs::metadata(&dir).unwrap();
    assert!(shown.mtime() >= made.mtime() && shown.ctime() >= made.ctime());
    // The replica's own times, once the carried ones are a cache time old, are no earlier.
    std::thread::sleep(Duration::from_millis(1100));
    let real = fs::metadata(&dir).unwrap();
    let real_on_0 = fs::metadata(rig.on(0, "carried")).unwrap();
    assert_eq!(real.mtime(), real_on_0.mtime());
    assert!(
        real.mtime() >= shown.mtime(),
        "{} < {}",
        real.mtime(),
        shown.mtime()
    );
    // A subdirectory made counts in the link count where the replica counts them.
    fs::create_dir(dir.join("sub")).unwrap();
    fs::write(dir.join("after-sub"), b"x").unwrap();
    let with_sub = fs::metadata(&dir).unwrap();
    assert_eq!(
        with_sub.nlink(),
        fs::metadata(rig.on(0, "carried")).unwrap().nlink()
    );
    // A chmod (and an ACL) is not carried forward: the next answer is the replica's.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(dir.join("after-chmod"), b"x").unwrap();
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 22);
    assert_all_in_service(&rig);
    // The prefilled files were written on each replica apart: compare what the test made.
    assert_eq!(tree(&rig.on(0, "carried")), tree(&rig.on(1, "carried")));
}

#[test]
fn files_open_on_a_hung_replica_do_not_tie_up_the_daemon() {
    if !can_mount() {
        return;
    }
    // faultfs `hang` models a dead NFS server: every call blocks (even close, which flushes).
    // With 4 FUSE threads and 6 files open on it, closing them must not use up the threads.
    let syslog = Syslog::start();
    let b = MountBuilder::new(2).timeout(2.0).arg("--threads").arg("4");
    let tmp = b.tmp().to_owned();
    prefill(&tmp.join("r0"));
    prefill(&tmp.join("r1-src"));
    let ff = FaultFs::start(&tmp.join("r1-src"), &tmp.join("r1"));
    let rig = start_rig(b, syslog, Some(ff), vec![]);
    let names = replica_names(&rig);
    let files: Vec<File> = (0..6)
        .map(|i| {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(rig.path(&format!("new/open{i}")))
                .unwrap()
        })
        .collect();
    rig.faultfs.as_ref().unwrap().set("all hang\n");
    let t0 = Instant::now();
    let mnt = rig.mnt.clone();
    // If this hangs: a descriptor on the hung replica was closed on a FUSE thread (or while
    // holding a lock every request needs), instead of on that replica's own workers.
    let files = in_thread("write + close", Duration::from_secs(15), move || {
        let mut files = files;
        files[0].write_all(b"after the hang")?;
        drop(files);
        fs::write(mnt.join("new/later"), b"later")?;
        check_content(&mnt.join("pre/keep.txt"), &keep_data()).map_err(std::io::Error::other)?;
        std::io::Result::Ok(())
    });
    files.unwrap();
    // Everything still answers, quickly.
    for round in 0..3 {
        let mnt = rig.mnt.clone();
        let took = in_thread("stat after closing", Duration::from_secs(5), move || {
            let t = Instant::now();
            fs::write(mnt.join(format!("new/round{round}")), b"x").unwrap();
            fs::metadata(mnt.join("new/open5")).unwrap();
            t.elapsed()
        });
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    eprintln!("faultfs hang: handled in {:?}", t0.elapsed());
    assert_taken_out(&rig, &names, 1, &["no answer within 2.0 s"]);
    assert_eq!(
        fs::read(rig.on(0, "new/open0")).unwrap(),
        b"after the hang",
        "the surviving replica lost the write"
    );
    assert_eq!(fs::read(rig.on(0, "new/later")).unwrap(), b"later");
}

#[test]
fn verify_of_a_hung_replica_fails_within_the_deadline() {
    if !can_mount() {
        return;
    }
    // Only directory listings hang on replica 1: the health check passes, the mount serves,
    // and the verify walk is what meets the hang.
    let syslog = Syslog::start();
    let b = MountBuilder::new(2).timeout(2.0);
    let tmp = b.tmp().to_owned();
    prefill(&tmp.join("r0"));
    // An exact copy (times to the nanosecond): the first verify must find them identical.
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(tmp.join("r0"))
            .arg(tmp.join("r1-src")),
    );
    let ff = FaultFs::start(&tmp.join("r1-src"), &tmp.join("r1"));
    let rig = start_rig(b, syslog, Some(ff), vec![]);
    let names = replica_names(&rig);
    let out = rig.chironctl(&["verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    rig.faultfs.as_ref().unwrap().set("readdir hang\n");
    // chironctl's own limit, shorter than the replica deadline: exit 3, saying which.
    let out = rig.chironctl(&["verify", "--max-time", "1"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("did not end within --max-time 1 s"),
        "{}",
        text(&out.stderr)
    );
    let t0 = Instant::now();
    let (ctl, sock) = (chironctl_bin(), rig.socket.clone());
    let out = in_thread("chironctl verify", Duration::from_secs(30), move || {
        Command::new(ctl)
            .arg("-s")
            .arg(sock)
            .arg("verify")
            .output()
            .unwrap()
    });
    eprintln!("verify of a hung replica ended in {:?}", t0.elapsed());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}{err}", text(&out.stdout));
    assert!(
        err.contains(&format!(
            "{} gave no answer within 2.0 s to list /",
            names[1]
        )) && err.contains("hung?"),
        "{err}"
    );
    // The daemon still answers, and the mount still writes.
    assert_eq!(rig.snapshot().replicas.len(), 2);
    let mnt = rig.mnt.clone();
    in_thread(
        "write after the verify",
        Duration::from_secs(15),
        move || fs::write(mnt.join("new/after-verify"), b"x").unwrap(),
    );
}

#[test]
fn a_hung_last_replica_is_kept_and_the_mount_recovers_with_its_server() {
    if !can_mount() {
        return;
    }
    // Nothing else can serve: requests fail with EIO after the deadline (never hang), the
    // replica stays in service, and the mount works again as soon as the server answers.
    let b = MountBuilder::new(2).timeout(1.0);
    let tmp = b.tmp().to_owned();
    prefill(&tmp.join("r0-src"));
    prefill(&tmp.join("r1"));
    let ff = FaultFs::start(&tmp.join("r0-src"), &tmp.join("r0"));
    let mut m = b.start();
    m.unmount_at_end(ff.mnt.clone());
    ctl_ok(&m, &["disable", "1"]);
    ff.set("all hang\n");
    let p = m.path("pre/keep.txt");
    let (errno, took) = in_thread(
        "a read of a hung mount",
        Duration::from_secs(10),
        move || {
            let t = Instant::now();
            (
                fs::read(&p).err().and_then(|e| e.raw_os_error()),
                t.elapsed(),
            )
        },
    );
    assert_eq!(errno, Some(libc::EIO), "after {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    std::thread::sleep(Duration::from_millis(2500)); // two health checks
    let s = m.snapshot();
    assert_eq!(s.replicas[0].state, ReplicaState::InService, "{s:?}");
    assert!(
        m.log_text()
            .contains("kept in service: no other replica can serve")
    );
    ff.set("");
    let p = m.path("pre/keep.txt");
    let got = in_thread(
        "a read after recovery",
        Duration::from_secs(10),
        move || {
            wait_until(Duration::from_secs(5), || {
                fs::read(&p).ok() == Some(keep_data())
            })
        },
    );
    assert!(got, "the mount did not recover with its server");
    drop(m);
    drop(ff);
}

// ---------------------------------------------------------------------------------------------
// Every replica failing
// ---------------------------------------------------------------------------------------------

/// Writes 64 KiB to a new file; returns the errno the application got (None = success).
fn write_errno(m: &Mount, rel: &str) -> Option<i32> {
    let p = m.path(rel);
    in_thread("a write", Duration::from_secs(20), move || {
        fs::write(&p, pattern(9, 64 * 1024))
            .err()
            .map(|e| e.raw_os_error().unwrap_or(-1))
    })
}

fn assert_nobody_out(m: &Mount) {
    let s = m.snapshot();
    assert!(
        s.replicas
            .iter()
            .all(|r| r.state == ReplicaState::InService),
        "a replica was taken out although every replica failed alike: {s:?}"
    );
    assert!(!m.log_text().contains("ALERT"), "{}", m.log_text());
}

#[test]
fn all_replicas_failing_returns_the_first_replicas_errno_and_takes_nobody_out() {
    if !can_mount() {
        return;
    }
    // Both full: ENOSPC. They fill up while mounted (the lease and the state were written
    // when there was room); the lease is renewed in place, so the daemon keeps its lease on
    // full replicas and the caller sees ENOSPC, never EROFS.
    {
        let b = MountBuilder::new(2).timeout(2.0);
        let tmp = b.tmp().to_owned();
        let a = mount_tmpfs(&tmp.join("r0"), "256k");
        let c = mount_tmpfs(&tmp.join("r1"), "256k");
        let mut m = b.start();
        m.unmount_at_end(a.0.clone());
        m.unmount_at_end(c.0.clone());
        fill_up(&tmp.join("r0"));
        fill_up(&tmp.join("r1"));
        assert_eq!(write_errno(&m, "f"), Some(libc::ENOSPC));
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(write_errno(&m, "g"), Some(libc::ENOSPC), "{}", m.log_text());
        assert_nobody_out(&m);
    }
    // Replica 0 full, replica 1 EIO: ENOSPC; swapped: EIO. The first replica's errno wins.
    for full_first in [true, false] {
        let b = MountBuilder::new(2).timeout(2.0);
        let tmp = b.tmp().to_owned();
        let (full, faulty) = if full_first { (0, 1) } else { (1, 0) };
        let t = mount_tmpfs(&tmp.join(format!("r{full}")), "256k");
        let ff = FaultFs::start(
            &tmp.join(format!("r{faulty}-src")),
            &tmp.join(format!("r{faulty}")),
        );
        ff.set("write EIO f\n");
        let mut m = b.start();
        m.unmount_at_end(ff.mnt.clone());
        m.unmount_at_end(t.0.clone());
        // Full once mounted: a fresh full replica cannot take the lease (see above).
        fill_up(&t.0);
        let want = if full_first { libc::ENOSPC } else { libc::EIO };
        assert_eq!(
            write_errno(&m, "f"),
            Some(want),
            "replica {full} full, replica {faulty} EIO"
        );
        assert_nobody_out(&m);
        drop(m);
        drop(ff);
    }
}

#[test]
fn a_read_failing_everywhere_returns_eio_and_takes_nobody_out() {
    if !can_mount() {
        return;
    }
    // Both replicas have a bad copy of one file: the reader gets EIO, but the replicas stay in
    // service (they serve everything else), and the last replica in service is never taken out
    // by one bad file either.
    let b = MountBuilder::new(2).timeout(2.0);
    let tmp = b.tmp().to_owned();
    prefill(&tmp.join("r0-src"));
    prefill(&tmp.join("r1-src"));
    let f0 = FaultFs::start(&tmp.join("r0-src"), &tmp.join("r0"));
    let f1 = FaultFs::start(&tmp.join("r1-src"), &tmp.join("r1"));
    let mut m = b.start();
    m.unmount_at_end(f0.mnt.clone());
    m.unmount_at_end(f1.mnt.clone());
    let read_errno = |m: &Mount| {
        let p = m.path("pre/old.txt");
        in_thread("a read", Duration::from_secs(20), move || {
            fs::read(&p).err().and_then(|e| e.raw_os_error())
        })
    };
    f0.set("read EIO old.txt\n");
    f1.set("read EIO old.txt\n");
    assert_eq!(read_errno(&m), Some(libc::EIO));
    assert_nobody_out(&m);
    assert_eq!(fs::read(m.path("pre/keep.txt")).unwrap(), keep_data());
    // Replica 1 out by the administrator; replica 0, now alone, fails one file.
    ctl_ok(&m, &["disable", "1"]);
    f1.set("");
    assert_eq!(read_errno(&m), Some(libc::EIO));
    let s = m.snapshot();
    assert_eq!(
        s.replicas[0].state,
        ReplicaState::InService,
        "the last replica in service was taken out for one bad file: {s:?}"
    );
    assert_eq!(fs::read(m.path("pre/keep.txt")).unwrap(), keep_data());
    // Back with replica 1: the same read now succeeds and replica 0 is the one at fault.
    ctl_ok(&m, &["enable", "1"]);
    assert_eq!(read_errno(&m), None);
    assert_eq!(read_errno(&m), None);
    assert!(m.wait_out_of_service(0));
    drop(m);
    drop((f0, f1));
}

// ---------------------------------------------------------------------------------------------
// Administration: enable, disable, check
// ---------------------------------------------------------------------------------------------

fn ctl_refused(m: &Mount, args: &[&str]) -> String {
    let out = m.chironctl(args);
    assert!(
        !out.status.success(),
        "chironctl {args:?} should be refused: {}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

#[test]
fn enable_refuses_a_replica_that_missed_writes_unless_forced() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    // Out and back without missing anything: accepted.
    ctl_ok(&m, &["disable", "1"]);
    assert!(m.wait_out_of_service(1));
    assert!(!m.snapshot().replicas[1].stale);
    ctl_ok(&m, &["enable", "1"]);
    assert_eq!(m.snapshot().replicas[1].state, ReplicaState::InService);
    // Out, then a write it misses: refused with the reason, accepted with --force.
    ctl_ok(&m, &["disable", "1"]);
    fs::write(m.path("missed"), b"only on replica 0").unwrap();
    assert!(!m.on(1, "missed").exists());
    assert!(m.snapshot().replicas[1].stale);
    let err = ctl_refused(&m, &["enable", "1"]);
    assert!(
        err.contains("missed writes") && err.contains("--force"),
        "the refusal must say why and how: {err}"
    );
    assert_eq!(m.snapshot().replicas[1].state, ReplicaState::OutOfService);
    let out = ctl_ok(&m, &["enable", "1", "--force"]);
    assert!(out.contains("forced"), "{out}");
    let s = m.snapshot();
    assert_eq!(s.replicas[1].state, ReplicaState::InService);
    assert!(
        m.log_text()
            .contains("back in service by administrator (forced)")
    );
}

#[test]
fn disabling_the_last_replica_in_service_is_refused() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    ctl_ok(&m, &["disable", "0"]);
    let err = ctl_refused(&m, &["disable", "1"]);
    assert!(err.contains("last replica in service"), "{err}");
    let s = m.snapshot();
    assert_eq!(s.replicas[1].state, ReplicaState::InService);
    // The mount still works, on replica 1 alone.
    fs::write(m.path("f"), b"x").unwrap();
    assert_eq!(fs::read(m.on(1, "f")).unwrap(), b"x");
    let err = ctl_refused(&m, &["disable", "0"]);
    assert!(err.contains("already out of service"), "{err}");
    let err = ctl_refused(&m, &["disable", "7"]);
    assert!(err.contains("no replica '7'"), "{err}");
}

fn check(m: &Mount, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["check"];
    args.extend_from_slice(extra);
    let out = m.chironctl(&args);
    (out.status.code().unwrap_or(-1), text(&out.stdout))
}

#[test]
fn check_exit_codes_follow_the_replicas_and_the_daemon() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    let sf = m.status_file.to_str().unwrap().to_owned();
    let (code, line) = check(&m, &[]);
    assert_eq!(code, 0, "{line}");
    assert!(
        line.starts_with("CHIRONFS OK - 2/2 replicas in service"),
        "{line}"
    );
    ctl_ok(&m, &["disable", "1"]);
    let (code, line) = check(&m, &[]);
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("WARNING") && line.contains("1/2"), "{line}");
    assert!(wait_until(Duration::from_secs(5), || check(
        &m,
        &["--status-file", &sf]
    )
    .0 == 1));
    // Both replica directories vanish: the health check takes even the last one out.
    fs::remove_dir_all(&m.replicas[0]).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || check(&m, &[]).0 == 2),
        "{:?}",
        check(&m, &[])
    );
    let (_, line) = check(&m, &[]);
    assert!(line.contains("CRITICAL - 0/2"), "{line}");
    assert!(line.contains("was deleted"), "{line}");
    // The daemon is killed: UNKNOWN from the socket, and from the status file once stale.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(m.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(5), || check(&m, &[]).0 == 3));
    let (_, line) = check(&m, &[]);
    assert!(line.starts_with("CHIRONFS UNKNOWN"), "{line}");
    assert!(
        wait_until(Duration::from_secs(6), || check(
            &m,
            &["--status-file", &sf, "--max-age", "2"]
        )
        .0 == 3),
        "{:?}",
        check(&m, &["--status-file", &sf, "--max-age", "2"])
    );
}

// ---------------------------------------------------------------------------------------------
// A killed daemon, log reopening, the control socket's life cycle
// ---------------------------------------------------------------------------------------------

/// A daemon started by hand (not through the harness), stopped and unmounted on drop.
struct Daemon {
    mnt: PathBuf,
    status_file: PathBuf,
}

impl Daemon {
    fn pid(&self) -> Option<i32> {
        fs::read_to_string(&self.status_file)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.pid();
        force_unmount(&self.mnt);
        if let Some(pid) = pid {
            let p = nix::unistd::Pid::from_raw(pid);
            let gone = || !Path::new(&format!("/proc/{pid}")).exists();
            if !wait_until(Duration::from_secs(5), gone) {
                let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

fn chironfs_cmd(replicas: &[&Path], mnt: &Path, status: &Path, socket: &Path) -> Command {
    let spec = replicas
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join("=");
    let mut c = Command::new(chironfs_bin());
    c.arg("--status-file")
        .arg(status)
        .arg("-c")
        .arg(socket)
        .arg("--timeout")
        .arg("2")
        .arg(spec)
        .arg(mnt);
    c
}

#[test]
fn killed_daemon_leaves_a_stale_status_and_a_socket_the_next_mount_replaces() {
    if !can_mount() {
        return;
    }
    let mut m = Mount::two();
    fs::write(m.path("f"), b"before the crash").unwrap();
    let before = m.status_file_snapshot().time;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(m.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The mount is dead: ENOTCONN at once, never a hang.
    let mnt = m.mnt.clone();
    let err = in_thread("stat of a dead mount", Duration::from_secs(5), move || {
        wait_until(Duration::from_secs(3), || {
            fs::metadata(&mnt).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN)
        })
    });
    assert!(err, "a mount whose daemon was killed must answer ENOTCONN");
    // The status file stops moving, and the check says so.
    std::thread::sleep(Duration::from_millis(2500));
    let frozen = m.status_file_snapshot().time;
    assert!(frozen <= before + 1, "{before} -> {frozen}");
    let out = m.chironctl(&[
        "check",
        "--status-file",
        m.status_file.to_str().unwrap(),
        "--max-age",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("is chironfs running?"),
        "{}",
        text(&out.stdout)
    );
    // The crashed daemon's socket is still there; nobody answers it.
    assert!(m.socket.exists(), "no socket left to test");
    let err = text(&m.chironctl(&["status"]).stderr);
    assert!(err.contains("cannot connect"), "{err}");
    // The admin cleans up the dead mount and mounts again with the same socket and status file.
    force_unmount(&m.mnt);
    assert!(!is_mounted(&m.mnt));
    let out = chironfs_cmd(
        &[&m.replicas[0], &m.replicas[1]],
        &m.mnt,
        &m.status_file,
        &m.socket,
    )
    .arg("--log")
    .arg(&m.log)
    .output()
    .unwrap();
    let again = Daemon {
        mnt: m.mnt.clone(),
        status_file: m.status_file.clone(),
    };
    assert!(
        out.status.success(),
        "a stale socket prevented the next mount: {}",
        text(&out.stderr)
    );
    assert!(wait_until(Duration::from_secs(5), || again
        .pid()
        .is_some_and(|p| p != m.pid)));
    m.pid = again.pid().unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"before the crash");
    assert_eq!(m.snapshot().pid as i32, m.pid);
    assert!(m.log_text().contains("removing stale control socket"));
    assert!(m.stop(), "the new daemon did not stop on SIGTERM");
    assert!(!m.socket.exists(), "a clean stop leaves no socket");
    assert!(
        !m.status_file.exists(),
        "a clean stop leaves no status file"
    );
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused_and_leaves_nothing_behind() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    let other = tempfile::Builder::new()
        .prefix("chironfs-second-")
        .tempdir()
        .unwrap();
    let (r0, r1, mnt) = (
        other.path().join("a"),
        other.path().join("b"),
        other.path().join("mnt"),
    );
    for d in [&r0, &r1, &mnt] {
        fs::create_dir(d).unwrap();
    }
    let status = other.path().join("status");
    let out = chironfs_cmd(&[&r0, &r1], &mnt, &status, &m.socket)
        .output()
        .unwrap();
    let _guard = Daemon {
        mnt: mnt.clone(),
        status_file: status.clone(),
    };
    assert!(
        !out.status.success(),
        "a second daemon took over a live socket"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("another chironfs is already serving")
            && err.contains(m.socket.to_str().unwrap()),
        "unclear refusal: {err}"
    );
    assert!(!is_mounted(&mnt), "the refused daemon left its mount");
    assert!(
        wait_until(Duration::from_secs(3), || !status.exists()),
        "the refused daemon left a status file"
    );
    // The first daemon is untouched.
    assert_eq!(m.snapshot().pid as i32, m.pid);
    fs::write(m.path("still"), b"ok").unwrap();
    assert_eq!(fs::read(m.on(1, "still")).unwrap(), b"ok");
}

#[test]
fn log_file_is_reopened_on_sighup() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    assert!(wait_until(Duration::from_secs(3), || m
        .log_text()
        .contains("mounted")));
    let rotated = m.log.with_extension("log.1");
    fs::rename(&m.log, &rotated).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(m.pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || m
            .log_text()
            .contains("log file reopened")),
        "no new log file after SIGHUP"
    );
    ctl_ok(&m, &["disable", "1"]);
    assert!(
        wait_until(Duration::from_secs(5), || m
            .log_text()
            .contains("disabled by the administrator")),
        "new lines do not reach the new log file: {}",
        m.log_text()
    );
    let old = fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("mounted"), "{old}");
    assert!(
        !old.contains("disabled by the administrator"),
        "lines after SIGHUP still go to the rotated file"
    );
    // Still alive and serving.
    fs::write(m.path("after-hup"), b"x").unwrap();
    let s: Snapshot = m.snapshot();
    assert_eq!(s.pid as i32, m.pid);
}

// ---------------------------------------------------------------------------------------------
// A replica that is dead when the mount starts
// ---------------------------------------------------------------------------------------------

/// Starts a 2-replica mount (timeout 2 s) whose replica 1 is a faultfs with `rule` in force
/// from before the start; the start runs in a thread and must bring the mount up within 15 s
/// (a hung replica used to block it until the fault was cleared). Returns the rig and the
/// time the start took.
fn start_with_replica_1_dead(rule: &str) -> Option<(Rig, Duration)> {
    if !can_mount() {
        return None;
    }
    let syslog = Syslog::start();
    let b = MountBuilder::new(2).timeout(2.0);
    let tmp = b.tmp().to_owned();
    prefill(&tmp.join("r0"));
    prefill(&tmp.join("r1-src"));
    let ff = FaultFs::start(&tmp.join("r1-src"), &tmp.join("r1"));
    ff.set(rule);
    let b = b.arg("--syslog-socket").arg(syslog.socket());
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(b.start());
    });
    let mut m = match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(m) => m,
        Err(e) => {
            // Let a start stuck on the replica go on, so that its mount can be undone.
            ff.set("");
            drop(rx.recv_timeout(Duration::from_secs(60)));
            panic!("no mount within 15 s while replica 1 was dead ({e:?}): the start hangs");
        }
    };
    let took = started.elapsed();
    m.unmount_at_end(ff.mnt.clone());
    let rig = Rig {
        m: Some(m),
        faultfs: Some(ff),
        mounts: vec![],
        syslog,
    };
    Some((rig, took))
}

/// After a start with replica 1 dead: the mount serves from replica 0, replica 1 is out of
/// service and stale with an alert saying `why`; once its storage answers again, a resync
/// brings it back and the replicas agree.
fn dead_at_start_case(rule: &str, why: &str, waited: bool) {
    let Some((rig, took)) = start_with_replica_1_dead(rule) else {
        return;
    };
    eprintln!("start with replica 1 dead ({rule:?}): the mount answered after {took:?}");
    let names = replica_names(&rig);
    assert_taken_out(&rig, &names, 1, &[why]);
    // A wait is announced while it lasts, naming the replica; an error is not waited for.
    let log = rig.log_text();
    let announced = log
        .lines()
        .any(|l| l.contains("waiting up to") && l.contains(&names[1]));
    assert_eq!(announced, waited, "{log}");
    let s = rig.snapshot();
    assert!(s.replicas[1].stale, "{:?}", s.replicas[1]);
    assert!(
        s.replicas[1].reason.contains("at start"),
        "{:?}",
        s.replicas[1]
    );
    let mnt = rig.mnt.clone();
    in_thread(
        "writes with replica 1 dead",
        Duration::from_secs(10),
        move || workload(&mnt),
    )
    .unwrap();
    assert_holds_workload(&rig.replicas[0]);
    // Its server comes back: the replica is opened then, and a resync brings it in.
    rig.faultfs.as_ref().unwrap().set("");
    let mut last = String::new();
    let resynced = wait_until(Duration::from_secs(20), || {
        let out = rig.chironctl(&["resync", "1"]);
        last = format!("{}{}", text(&out.stdout), text(&out.stderr));
        out.status.success()
    });
    assert!(resynced, "resync of the returning replica refused: {last}");
    assert!(
        wait_until(Duration::from_secs(30), || rig.snapshot().replicas[1].state
            == ReplicaState::InService),
        "replica 1 did not come back: {:?}\n{}",
        rig.snapshot().replicas[1],
        rig.log_text()
    );
    assert_holds_workload(&rig.on(1, ""));
    assert_replicas_identical(&rig);
}

#[test]
fn a_replica_hung_at_start_costs_one_timeout_not_the_mount() {
    dead_at_start_case("all hang\n", "no answer within 2.0 s", true);
}

#[test]
fn a_replica_failing_at_start_like_a_dead_server_starts_out_of_service() {
    dead_at_start_case("all ENOTCONN\n", "ENOTCONN", false);
}

// ---------------------------------------------------------------------------------------------
// Divergence found on the read path
// ---------------------------------------------------------------------------------------------

#[test]
fn a_file_removed_behind_the_daemons_back_is_served_from_another_replica() {
    if !can_mount() {
        return;
    }
    let rig = start_rig(
        MountBuilder::new(2).timeout(2.0),
        Syslog::start(),
        None,
        vec![],
    );
    let names = replica_names(&rig);
    fs::write(rig.path("kept.txt"), b"acknowledged").unwrap();
    // An admin cleaning up, a restored backup: the file is gone from replica 1 only.
    fs::remove_file(rig.on(1, "kept.txt")).unwrap();
    // Opens are spread over the replicas: several land on replica 1, and none may fail.
    for i in 0..8 {
        let mnt = rig.mnt.clone();
        let got = in_thread("a read", Duration::from_secs(10), move || {
            fs::read(mnt.join("kept.txt"))
        });
        assert_eq!(got.unwrap(), b"acknowledged", "read {i}");
    }
    assert_taken_out(&rig, &names, 1, &["ENOENT", "diverged"]);
    assert!(
        rig.snapshot().replicas[1].stale,
        "a diverged replica must be resynced"
    );
    // A file that is really gone is still ENOENT, and takes nobody else out.
    fs::write(rig.path("gone.txt"), b"x").unwrap();
    fs::remove_file(rig.path("gone.txt")).unwrap();
    let err = fs::read(rig.path("gone.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    assert_eq!(rig.snapshot().replicas[0].state, ReplicaState::InService);
    // A resync brings replica 1 back with the file.
    let out = rig.chironctl(&["resync", "1", "--wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(fs::read(rig.on(1, "kept.txt")).unwrap(), b"acknowledged");
    assert_replicas_identical(&rig);
}

/// Writes slower than 250 ms on replica `i`, from its data-write latency histogram.
fn slow_writes(metrics: &str, i: &str) -> f64 {
    let bucket = |le: &str| {
        let labels = [("replica", i), ("class", "data_write"), ("le", le)];
        metric(
            metrics,
            "chironfs_replica_operation_duration_seconds_bucket",
            &labels,
        )
        .unwrap_or_else(|| panic!("no data_write bucket {le} of replica {i} in\n{metrics}"))
    };
    bucket("+Inf") - bucket("0.25")
}

#[test]
fn a_slow_replica_shows_in_its_latency_histogram_before_it_is_taken_out() {
    if !can_mount() {
        return;
    }
    // Replica 1's server answers writes after about 600 ms: slow, but within the 2 s deadline,
    // so it stays in service, and only its histogram tells.
    let b = MountBuilder::new(2).timeout(2.0);
    let tmp = b.tmp().to_owned();
    let ff = FaultFs::start(&tmp.join("r1-src"), &tmp.join("r1"));
    let mut m = b.start();
    m.unmount_at_end(ff.mnt.clone());
    let mut f = File::create(m.path("slow")).unwrap();
    f.write_all(b"fast").unwrap();
    let before = m.metrics();
    assert_eq!(slow_writes(&before, "1"), 0.0, "{before}");
    ff.set("write hang\n");
    let writer = std::thread::spawn(move || {
        let t = Instant::now();
        f.write_all(b"slow").map(|()| t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(600));
    ff.set("");
    let took = writer.join().unwrap().expect("the slow write succeeds");
    assert!(took >= Duration::from_millis(500), "{took:?}");
    let after = m.metrics();
    assert_eq!(slow_writes(&after, "1"), 1.0, "{after}");
    assert_eq!(slow_writes(&after, "0"), 0.0, "{after}");
    let s = m.snapshot();
    assert!(
        s.replicas
            .iter()
            .all(|r| r.state == ReplicaState::InService),
        "{s:?}"
    );
    drop(m);
    drop(ff);
}

#[test]
fn an_owner_cut_from_a_majority_of_its_members_fences_itself_then_serves_again() {
    if !can_mount() {
        return;
    }
    // Lease time 4 s with a 1 s timeout: the owner fences itself F = (4 - 1) / 2 = 1.5 s after
    // its last renewal that reached a majority, well before another daemon could take over.
    let b = MountBuilder::new(3)
        .timeout(1.0)
        .arg("--lease-time")
        .arg("4");
    let tmp = b.tmp().to_owned();
    let f1 = FaultFs::start(&tmp.join("r1-src"), &tmp.join("r1"));
    let f2 = FaultFs::start(&tmp.join("r2-src"), &tmp.join("r2"));
    let mut m = b.start();
    m.unmount_at_end(f1.mnt.clone());
    m.unmount_at_end(f2.mnt.clone());
    fs::write(m.path("before"), b"acknowledged before the cut").unwrap();

    // Two of the three members hang: the owner is cut from its majority.
    f1.set("all hang\n");
    f2.set("all hang\n");
    let cut = Instant::now();
    let fenced = wait_until(Duration::from_secs(15), || {
        m.snapshot()
            .lease
            .as_deref()
            .is_some_and(|l| l.starts_with("fenced"))
    });
    let took = cut.elapsed();
    assert!(fenced, "not fenced: {:?}", m.snapshot().lease);
    assert!(
        took < Duration::from_secs(4),
        "fenced {took:?} after the cut: not before its lease time (4 s) ran out"
    );
    let mnt = m.mnt.clone();
    let write = in_thread("a write while fenced", Duration::from_secs(10), move || {
        fs::write(mnt.join("during"), b"x")
            .err()
            .and_then(|e| e.raw_os_error())
    });
    assert_eq!(
        write,
        Some(libc::EROFS),
        "mutations are refused while fenced"
    );
    assert_eq!(
        fs::read(m.path("before")).unwrap(),
        b"acknowledged before the cut",
        "reads go on"
    );
    let (code, line) = check(&m, &[]);
    assert_eq!(code, 2, "chironctl check is CRITICAL while fenced: {line}");
    assert!(
        m.log_text()
            .lines()
            .any(|l| l.contains("cannot renew the replica set's lease") && l.contains("fenced")),
        "the ALERT line"
    );

    // The members answer again: renewed with its epoch still current, it serves again.
    f1.set("");
    f2.set("");
    let mnt = m.mnt.clone();
    let back = in_thread(
        "writes after the cut healed",
        Duration::from_secs(20),
        move || {
            wait_until(Duration::from_secs(15), || {
                fs::write(mnt.join("after"), b"acknowledged after").is_ok()
            })
        },
    );
    assert!(back, "writes did not come back: {:?}", m.snapshot().lease);
    assert!(m.log_text().contains("renewed again"), "the log says so");
    assert!(!m.path("during").exists(), "nothing of the refused write");
}
