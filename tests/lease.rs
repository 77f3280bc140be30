//! One writer per replica set, on real mounts: the ownership lease held on the replicas
//! refuses a second daemon (naming the owner, writing nothing), lets a remount follow an
//! unmount without crash recovery, lets a new daemon take over from a killed or frozen one,
//! and a frozen owner that was taken over never writes again.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

use chironfs::rules::state::META_DIR;
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Every file under the replicas' `.chironfs` directories, with its bytes and mtime: what a
/// refused daemon must leave untouched.
fn meta_files(replicas: &[PathBuf]) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut out = BTreeMap::new();
    for r in replicas {
        for e in fs::read_dir(r.join(META_DIR)).unwrap().flatten() {
            let p = e.path();
            let data = fs::read(&p).unwrap_or_default();
            let mtime = e.metadata().unwrap().modified().unwrap();
            out.insert(p, (data, mtime));
        }
    }
    out
}

/// A mounted owner that wrote "first" to `a`, once its journal and state settled
/// (compaction runs once a second), with its replicas' `.chironfs` files then.
fn owner_with_settled_records() -> (Mount, BTreeMap<PathBuf, (Vec<u8>, SystemTime)>) {
    let m = Mount::two();
    fs::write(m.path("a"), "first").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let before = meta_files(&m.replicas);
    (m, before)
}

/// Every file of `before` is in `after` with the same bytes and mtime, but the lease (the
/// owner's renewals rewrite it).
fn assert_untouched_but_the_lease(
    before: &BTreeMap<PathBuf, (Vec<u8>, SystemTime)>,
    after: &BTreeMap<PathBuf, (Vec<u8>, SystemTime)>,
) {
    for (path, (data, mtime)) in before {
        if path.file_name() == Some("lease".as_ref()) {
            continue;
        }
        let now = after.get(path).expect("file kept");
        assert_eq!(&now.0, data, "{} was rewritten", path.display());
        assert_eq!(&now.1, mtime, "{} was touched", path.display());
    }
}

/// Runs a second chironfs on `replicas` at a mount point of its own (in `dir`), daemonized;
/// returns its output and mount point.
fn second_daemon(dir: &Path, tag: &str, replicas: &[PathBuf], extra: &[&str]) -> (Output, PathBuf) {
    let mnt = dir.join(format!("mnt-{tag}"));
    fs::create_dir_all(&mnt).unwrap();
    let spec = replicas
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join("=");
    let out = Command::new(chironfs_bin())
        .arg("--status-file")
        .arg(dir.join(format!("status-{tag}")))
        .arg("-c")
        .arg(dir.join(format!("ctl-{tag}.sock")))
        .arg("--log")
        .arg(dir.join(format!("log-{tag}")))
        .arg("--timeout")
        .arg("2")
        .args(extra)
        .arg(spec)
        .arg(&mnt)
        .output()
        .expect("run chironfs");
    (out, mnt)
}

/// The pid in a status file.
fn status_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
    })
}

/// Stops a daemon we started (by pid) and unmounts its mount point.
fn stop_second(mnt: &Path, status: &Path) {
    if let Some(pid) = status_pid(status) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        wait_until(Duration::from_secs(10), || {
            kill(Pid::from_raw(pid), None).is_err()
        });
    }
    if is_mounted(mnt) {
        force_unmount(mnt);
    }
}

#[test]
fn a_second_daemon_on_the_same_replicas_is_refused_naming_the_owner_and_writing_nothing() {
    if !can_mount() {
        return;
    }
    let (m, before) = owner_with_settled_records();
    let (out, mnt) = second_daemon(m.tmp.path(), "second", &m.replicas, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second daemon was accepted");
    assert!(!is_mounted(&mnt), "the second daemon mounted");
    assert!(
        err.contains("in use by another chironfs")
            && err.contains(&format!("pid {}", m.pid))
            && err.contains(&m.mnt.display().to_string()),
        "the refusal must name the owner: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    // Nothing written but the first daemon's own lease renewals.
    assert_untouched_but_the_lease(&before, &meta_files(&m.replicas));
    assert!(
        !m.log_text().contains("crash recovery"),
        "the first daemon was disturbed"
    );
    // The first mount goes on serving writes.
    fs::write(m.path("b"), "still").unwrap();
    assert_eq!(fs::read(m.on(1, "b")).unwrap(), b"still");
}

#[test]
fn unmount_then_mount_at_once_never_runs_crash_recovery() {
    if !can_mount() {
        return;
    }
    let mut m = Mount::two();
    let spec = m
        .replicas
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join("=");
    for i in 0..100 {
        fs::write(m.path(&format!("f{i}")), format!("{i}")).unwrap();
        // umount(8) returns before the daemon has exited; mount again at once.
        let st = Command::new("umount").arg(&m.mnt).status().unwrap();
        assert!(st.success());
        let _ = fs::remove_file(&m.status_file);
        let out = Command::new(chironfs_bin())
            .arg("-o")
            .arg("allow_other")
            .arg("--status-file")
            .arg(&m.status_file)
            .arg("-c")
            .arg(&m.socket)
            .arg("--log")
            .arg(&m.log)
            .arg("--timeout")
            .arg("2")
            .arg(&spec)
            .arg(&m.mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "remount {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(wait_until(Duration::from_secs(5), || status_pid(
            &m.status_file
        )
        .is_some()));
        m.pid = status_pid(&m.status_file).unwrap();
    }
    let log = m.log_text();
    assert!(
        !log.contains("crash recovery"),
        "crash recovery ran:\n{log}"
    );
    assert!(
        !log.contains("was not clean"),
        "an unclean shutdown was seen:\n{log}"
    );
    for i in 0..100 {
        assert_eq!(
            fs::read_to_string(m.path(&format!("f{i}"))).unwrap(),
            i.to_string()
        );
    }
    assert_replicas_identical(&m);
}

#[test]
fn a_new_daemon_takes_over_at_once_from_a_killed_owner_of_this_host() {
    if !can_mount() {
        return;
    }
    let mut m = Mount::two();
    for i in 0..50 {
        fs::write(m.path(&format!("acked{i}")), format!("{i}")).unwrap();
    }
    kill(Pid::from_raw(m.pid), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(10), || kill(
        Pid::from_raw(m.pid),
        None
    )
    .is_err()));
    force_unmount(&m.mnt);
    let started = Instant::now();
    let replicas = m.replicas.clone();
    m.restart_with(&replicas, &[])
        .expect("take over from a dead owner");
    // The owner's pid is gone on this host: no need to wait the lease time (4 s here).
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    for i in 0..50 {
        assert_eq!(
            fs::read_to_string(m.path(&format!("acked{i}"))).unwrap(),
            i.to_string()
        );
    }
    assert!(
        m.log_text()
            .contains("took the replica set's lease (epoch 2)")
    );
}

#[test]
fn a_frozen_owner_is_taken_over_after_the_lease_time_and_never_writes_again() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::write(m.path("before"), "x").unwrap();
    let owner = Pid::from_raw(m.pid);
    kill(owner, Signal::SIGSTOP).unwrap();
    let started = Instant::now();
    let (out, mnt) = second_daemon(m.tmp.path(), "taker", &m.replicas, &[]);
    let took = started.elapsed();
    let status = m.tmp.path().join("status-taker");
    let _cleanup = Cleanup(mnt.clone(), status.clone(), owner);
    assert!(
        out.status.success(),
        "the frozen owner's lease was not taken over: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Lease 4 s (twice the 2 s timeout), plus the claim; never before the lease time.
    assert!(took >= Duration::from_secs(4), "took over after {took:?}");
    assert!(
        took < Duration::from_secs(4 + 3),
        "took over after {took:?}"
    );
    fs::write(mnt.join("by-taker"), "new owner").unwrap();
    // The frozen owner wakes up: it must not write to the replicas any more.
    kill(owner, Signal::SIGCONT).unwrap();
    let late = fs::write(m.path("by-old-owner"), "stale");
    assert!(
        late.is_err(),
        "the old owner acknowledged a write after losing its lease"
    );
    std::thread::sleep(Duration::from_secs(2));
    for r in &m.replicas {
        assert!(
            !r.join("by-old-owner").exists(),
            "the old owner wrote to {}",
            r.display()
        );
        assert_eq!(fs::read(r.join("by-taker")).unwrap(), b"new owner");
    }
    let log = m.log_text();
    assert!(
        log.contains("lease was taken over by") || log.contains("fenced"),
        "the old owner did not say it lost the lease:\n{log}"
    );
}

/// Stops the taker and lets the frozen owner go, whatever the test's outcome.
struct Cleanup(PathBuf, PathBuf, Pid);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = kill(self.2, Signal::SIGCONT);
        stop_second(&self.0, &self.1);
    }
}

#[test]
fn daemons_started_at_the_same_instant_never_both_own_the_set() {
    if !can_mount() {
        return;
    }
    // 30 rounds (about 2 s each: the loser sees the winner's first renewal); 100 were run
    // once by hand (212 s, never two owners).
    for round in 0..30 {
        let b = MountBuilder::new(2);
        let dir = b.tmp().to_path_buf();
        let replicas: Vec<PathBuf> = (0..2).map(|i| dir.join(format!("r{i}"))).collect();
        let (r1, r2) = (replicas.clone(), replicas.clone());
        let (d1, d2) = (dir.clone(), dir.clone());
        let one = std::thread::spawn(move || second_daemon(&d1, "one", &r1, &[]));
        let two = std::thread::spawn(move || second_daemon(&d2, "two", &r2, &[]));
        let (o1, m1) = one.join().unwrap();
        let (o2, m2) = two.join().unwrap();
        let owners = [&o1, &o2].iter().filter(|o| o.status.success()).count();
        let mounted = [&m1, &m2].iter().filter(|p| is_mounted(p)).count();
        stop_second(&m1, &dir.join("status-one"));
        stop_second(&m2, &dir.join("status-two"));
        assert!(owners <= 1 && mounted <= 1, "round {round}: two owners");
        assert_eq!(
            owners,
            1,
            "round {round}: nobody took the set: {} / {}",
            String::from_utf8_lossy(&o1.stderr),
            String::from_utf8_lossy(&o2.stderr)
        );
        drop(b);
    }
}

#[test]
fn a_replaced_replica_directory_receives_nothing_from_the_running_daemon() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::write(m.path("a"), "x").unwrap();
    fs::remove_dir_all(&m.replicas[1]).unwrap();
    fs::create_dir(&m.replicas[1]).unwrap();
    // The health check (once a second) takes it out; renewals and state writes go on.
    assert!(m.wait_out_of_service(1));
    fs::write(m.path("b"), "y").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let left: Vec<_> = fs::read_dir(&m.replicas[1])
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "the new directory received {left:?}");
}

#[test]
fn a_read_only_observer_runs_beside_the_owner_and_writes_nothing() {
    if !can_mount() {
        return;
    }
    let (m, before) = owner_with_settled_records();
    let dir = m.tmp.path();
    let (out, mnt) = second_daemon(dir, "observer", &m.replicas, &["-o", "ro"]);
    let status = dir.join("status-observer");
    let result = std::panic::catch_unwind(|| {
        assert!(
            out.status.success(),
            "a read-only observer was refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(fs::read(mnt.join("a")).unwrap(), b"first");
        let err = fs::write(mnt.join("c"), "no").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        let text = fs::read_to_string(&status).unwrap();
        assert!(text.contains("lease_state=observer"), "{text}");
        let ctl = Command::new(chironctl_bin())
            .arg("-s")
            .arg(dir.join("ctl-observer.sock"))
            .args(["resync", "1"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&ctl.stderr);
        assert!(
            !ctl.status.success() && said.contains("read-only observer"),
            "{said}"
        );
    });
    stop_second(&mnt, &status);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    // Neither its start, its reads nor its stop wrote to the replicas (the owner's lease
    // renewals aside), and the owner still holds the set and serves writes.
    assert_untouched_but_the_lease(&before, &meta_files(&m.replicas));
    let log = fs::read_to_string(dir.join("log-observer")).unwrap_or_default();
    assert!(log.contains("read-only observer"), "{log}");
    assert!(!log.contains("crash recovery:"), "{log}");
    fs::write(m.path("b"), "owner").unwrap();
    assert_eq!(fs::read(m.on(1, "b")).unwrap(), b"owner");
    assert_eq!(m.snapshot().lease.as_deref(), Some("held"));
}
