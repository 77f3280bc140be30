//! Changing the replica set while it serves (`chironctl add`, `remove`, `replace`), on real
//! mounts with a writer running throughout: after each step and after restarts with the
//! updated command line and with the old one, every in-service replica is identical
//! (`chironctl verify --content`) and no acknowledged write is missing. Refusals: the last
//! up-to-date copy, the quorum, a directory of another set or holding files, a replica given
//! twice.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chironfs::view::snapshot::ReplicaState;
use common::*;

/// Files as the last acknowledged write of each left them: (path in the mount, content).
type Acked = Vec<(String, Vec<u8>)>;

/// Writes numbered files (and rewrites older ones) through the mount until stopped; keeps
/// what each acknowledged write left, so that every one can be checked afterwards.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Writer {
    fn start(mnt: &Path, tag: &str) -> Writer {
        let dir = mnt.join(tag);
        fs::create_dir_all(&dir).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a, tag) = (Arc::clone(&stop), Arc::clone(&acked), tag.to_string());
        let thread = std::thread::spawn(move || {
            let mut n = 0u32;
            while !s.load(Ordering::Relaxed) {
                let name = format!("{tag}/f{}", n % 400);
                let data: Vec<u8> = format!("{name} version {n}\n")
                    .repeat(1 + (n % 7) as usize)
                    .into_bytes();
                fs::write(dir.join(format!("f{}", n % 400)), &data)
                    .map_err(|e| format!("write {name}: {e}"))?;
                let mut acked = a.lock().unwrap();
                acked.retain(|(p, _)| *p != name);
                acked.push((name, data));
                drop(acked);
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        });
        Writer {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    /// Stops it; returns the files as the last acknowledged write of each left them.
    fn finish(mut self) -> Acked {
        self.stop.store(true, Ordering::Relaxed);
        let r = self.thread.take().unwrap().join().unwrap();
        r.unwrap_or_else(|e| panic!("the application got an error: {e}"));
        let acked = self.acked.lock().unwrap().clone();
        assert!(
            acked.len() > 50,
            "the writer wrote only {} files",
            acked.len()
        );
        acked
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every acknowledged write is there, through the mount and on each of `dirs`.
fn assert_acked(acked: &Acked, mnt: &Path, dirs: &[PathBuf]) {
    for (name, data) in acked {
        for base in std::iter::once(mnt).chain(dirs.iter().map(PathBuf::as_path)) {
            let got = fs::read(base.join(name))
                .unwrap_or_else(|e| panic!("{name} missing under {}: {e}", base.display()));
            assert!(
                got == *data,
                "{name} under {} is not the acknowledged content",
                base.display()
            );
        }
    }
}

/// `chironctl verify --content` finds the in-service replicas identical.
fn assert_verified(m: &Mount) {
    let out = m.chironctl(&["verify", "--content"]);
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The members' paths, as `chironctl status` shows them, and whether each is in service.
fn members(m: &Mount) -> Vec<(String, bool)> {
    m.snapshot()
        .replicas
        .iter()
        .map(|r| {
            (
                r.path.clone(),
                r.state == ReplicaState::InService && !r.stale,
            )
        })
        .collect()
}

/// The files process `pid` holds open under `dir`.
fn open_under(pid: i32, dir: &Path) -> Vec<PathBuf> {
    let dir = fs::canonicalize(dir).unwrap();
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
                .filter(|target| target.starts_with(&dir))
                .collect()
        })
        .unwrap_or_default()
}

fn path_of(p: &Path) -> String {
    fs::canonicalize(p).unwrap().display().to_string()
}

fn refused(m: &Mount, args: &[&str]) -> String {
    let out = m.chironctl(args);
    assert!(!out.status.success(), "chironctl {args:?} was not refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn prefill(dir: &Path, files: usize) {
    for d in 0..10 {
        fs::create_dir_all(dir.join(format!("tree/d{d}"))).unwrap();
    }
    for i in 0..files {
        fs::write(
            dir.join(format!("tree/d{}/f{i}", i % 10)),
            format!("file {i}\n"),
        )
        .unwrap();
    }
}

#[test]
fn add_remove_and_restart_keep_every_acknowledged_write() {
    if !can_mount() {
        return;
    }
    let syslog = Syslog::start();
    let mut m = MountBuilder::new(2)
        .timeout(5.0)
        .arg("--syslog-socket")
        .arg(syslog.socket())
        .start();
    prefill(&m.mnt, 500);
    let (r0, r1) = (m.replicas[0].clone(), m.replicas[1].clone());
    let r2 = m.tmp.path().join("r2");
    fs::create_dir(&r2).unwrap();
    let writer = Writer::start(&m.mnt, "w");
    std::thread::sleep(Duration::from_millis(300));

    // Add a third replica while the writer runs.
    let t = Instant::now();
    let out = ctl_ok(&m, &["add", r2.to_str().unwrap(), "--wait"]);
    eprintln!("add of a 500-file tree: {:?}", t.elapsed());
    assert!(out.contains("joined as replica 2"), "{out}");
    assert!(out.contains("back in service"), "{out}");
    let now = members(&m);
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.iter().all(|(_, ok)| *ok), "{now:?}");
    assert_verified(&m);
    // One line in syslog for each change.
    let r2_path = path_of(&r2);
    let joined = syslog.wait_line("warning", &[&r2_path, "joins the replica set of"]);
    assert!(joined.is_some(), "{}", syslog.messages());

    // Refusals, with the writer still running.
    let twice = refused(&m, &["add", r2.to_str().unwrap()]);
    assert!(
        twice.contains("it is replica 2 of this set already"),
        "{twice}"
    );
    let full = m.tmp.path().join("full");
    prefill(&full, 3);
    let files = refused(&m, &["add", full.to_str().unwrap()]);
    assert!(
        files.contains("holds files but no chironfs state"),
        "{files}"
    );
    let other = m.tmp.path().join("other");
    fs::create_dir_all(other.join(".chironfs")).unwrap();
    let state = fs::read_to_string(r1.join(".chironfs/state")).unwrap();
    let foreign: String = state
        .lines()
        .map(|l| match l.strip_prefix("set=") {
            Some(_) => "set=00000000000000aa".to_string(),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(other.join(".chironfs/state"), foreign + "\n").unwrap();
    let foreign = refused(&m, &["add", other.to_str().unwrap()]);
    assert!(
        foreign.contains("belongs to another replica set"),
        "{foreign}"
    );
    assert_eq!(members(&m).len(), 3, "a refused add left a member behind");

    // Remove one of the original two.
    let out = ctl_ok(&m, &["remove", r0.to_str().unwrap()]);
    assert!(out.contains("left the replica set"), "{out}");
    let now = members(&m);
    assert_eq!(
        now.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
        vec![path_of(&r1), path_of(&r2)]
    );
    assert!(
        fs::read_to_string(r0.join(".chironfs/state"))
            .unwrap()
            .contains("left=yes")
    );
    // Its directory is left as it is.
    assert!(r0.join("tree/d0/f0").exists());
    let left = syslog.wait_line("warning", &[&path_of(&r0), "left the replica set of"]);
    assert!(left.is_some(), "{}", syslog.messages());
    // The daemon holds nothing open in it any more: its filesystem could be unmounted.
    assert!(
        wait_until(Duration::from_secs(5), || open_under(m.pid, &r0).is_empty()),
        "still open: {:?}",
        open_under(m.pid, &r0)
    );
    assert_verified(&m);

    // The last up-to-date copy stays.
    ctl_ok(&m, &["disable", "2"]);
    let last = refused(&m, &["remove", "1"]);
    assert!(last.contains("the last up-to-date copy"), "{last}");
    ctl_ok(&m, &["resync", "2", "--wait"]);

    let acked = writer.finish();
    assert_acked(&acked, &m.mnt, &[r1.clone(), r2.clone()]);
    assert_verified(&m);

    // A restart with the updated command line.
    m.restart_with(&[r1.clone(), r2.clone()], &[]).unwrap();
    assert_all_in_service(&m);
    assert_acked(&acked, &m.mnt, &[r1.clone(), r2.clone()]);
    assert_verified(&m);

    // A restart with the old command line: the records win, the mount says what differs.
    m.restart_with(&[r0.clone(), r1.clone()], &[]).unwrap();
    let now = members(&m);
    assert_eq!(
        now,
        vec![(path_of(&r1), true), (path_of(&r2), true)],
        "served from a replica that left, or missed a recorded member"
    );
    let log = m.log_text();
    assert!(
        log.contains(&format!("replica {} left the replica set", path_of(&r0))),
        "{log}"
    );
    assert!(
        log.contains("not on the command line: mounted from its recorded path"),
        "{log}"
    );
    fs::write(m.path("after-restart"), "x").unwrap();
    assert!(
        !r0.join("after-restart").exists(),
        "a replica that left was written"
    );
    assert_acked(&acked, &m.mnt, &[r1.clone(), r2.clone()]);
    assert_verified(&m);
}

#[test]
fn a_removal_that_would_break_the_quorum_is_refused() {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(3).arg("--quorum").arg("auto").start();
    fs::write(m.path("f"), "x").unwrap();
    ctl_ok(&m, &["disable", "2"]);
    // 2 of 3 in service, 2 needed; after removing 0 the 2 members left need 2, 1 serves.
    let why = refused(&m, &["remove", "0"]);
    assert!(why.contains("it would break the quorum"), "{why}");
    assert_eq!(members(&m).len(), 3);
    // The out-of-service one may leave: 2 members, both in service, 2 needed.
    ctl_ok(&m, &["remove", "2"]);
    assert_eq!(members(&m).len(), 2);
    fs::write(m.path("g"), "y").unwrap();
    assert_eq!(m.snapshot().quorum, Some(2));
}

#[test]
fn a_replica_whose_sshfs_server_died_is_replaced_while_the_mount_serves() {
    if !can_mount() {
        return;
    }
    let mut ssh = Sshfs::up(|_| {});
    let b = MountBuilder::new(2).timeout(2.0).replica_path(1, ssh.mnt());
    let r2 = b.tmp().join("r2");
    fs::create_dir(&r2).unwrap();
    let mut m = b.start();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        prefill(&m.mnt, 300);
        let writer = Writer::start(&m.mnt, "w");
        std::thread::sleep(Duration::from_millis(300));
        ssh.cut();
        assert!(
            m.wait_out_of_service(1),
            "the dead server's replica stayed in service"
        );
        let t = Instant::now();
        let out = ctl_ok(&m, &["replace", "1", r2.to_str().unwrap(), "--wait"]);
        eprintln!(
            "replace of a dead SSHFS replica, 300-file tree: {:?}",
            t.elapsed()
        );
        assert!(out.contains("left the replica set"), "{out}");
        let r0 = m.replicas[0].clone();
        assert_eq!(
            members(&m),
            vec![(path_of(&r0), true), (path_of(&r2), true)]
        );
        // Its record could not be marked on the dead server (within the 2 s deadline).
        assert!(
            wait_until(Duration::from_secs(10), || m
                .log_text()
                .contains("its state could not be marked")),
            "{}",
            m.log_text()
        );
        // The dead server offered again: refused at the deadline, never waited on.
        let t = Instant::now();
        let hung = refused(&m, &["add", ssh.mnt().to_str().unwrap()]);
        assert!(hung.contains("gave no answer within 2.0 s"), "{hung}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!(members(&m).len(), 2);
        let acked = writer.finish();
        assert_acked(&acked, &m.mnt, &[r0.clone(), r2.clone()]);
        assert_verified(&m);
        // The updated command line; the dead server is not needed any more.
        m.restart_with(&[r0.clone(), r2.clone()], &[]).unwrap();
        assert_all_in_service(&m);
        assert_acked(&acked, &m.mnt, &[r0, r2.clone()]);
        assert_verified(&m);
    }));
    // The hung replica first (it holds the daemon's stuck workers), then chironfs.
    ssh.down();
    drop(m);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn a_witness_joins_is_replaced_and_leaves_online() {
    if !can_mount() {
        return;
    }
    let mut m = MountBuilder::new(2).arg("--quorum").arg("auto").start();
    let (r0, r1) = (m.replicas[0].clone(), m.replicas[1].clone());
    let (w, w2) = (m.tmp.path().join("w"), m.tmp.path().join("w2"));
    fs::create_dir(&w).unwrap();
    fs::create_dir(&w2).unwrap();
    fs::write(m.path("before"), "1").unwrap();
    let out = ctl_ok(&m, &["add", "--witness", w.to_str().unwrap()]);
    assert!(out.contains("is the set's witness"), "{out}");
    let s = m.snapshot();
    assert_eq!((s.witnesses, s.quorum), (Some(1), Some(2)), "{s:?}");
    assert!(
        fs::read_to_string(w.join(".chironfs/state"))
            .unwrap()
            .contains("witnesses=")
    );
    let twice = refused(&m, &["add", "--witness", w2.to_str().unwrap()]);
    assert!(twice.contains("the set has a witness already"), "{twice}");
    // The witness is what keeps the writes going with one replica out (2 of 3).
    ctl_ok(&m, &["disable", "1"]);
    fs::write(m.path("with-one-replica"), "2").unwrap();
    ctl_ok(&m, &["resync", "1", "--wait"]);

    // A restart with the old command line (no --witness): the recorded witness is used.
    m.restart_with(&[r0.clone(), r1.clone()], &["--quorum", "auto"])
        .unwrap();
    let s = m.snapshot();
    assert_eq!((s.witnesses, s.quorum), (Some(1), Some(2)), "{s:?}");
    assert!(m.log_text().contains("used from its recorded path"));

    let out = ctl_ok(&m, &["replace", w.to_str().unwrap(), w2.to_str().unwrap()]);
    assert!(out.contains("left the replica set"), "{out}");
    assert!(
        fs::read_to_string(w.join(".chironfs/state"))
            .unwrap()
            .contains("left=yes")
    );
    assert_eq!(m.snapshot().witnesses, Some(1));
    let out = ctl_ok(&m, &["remove", w2.to_str().unwrap()]);
    assert!(out.contains("left the replica set"), "{out}");
    let s = m.snapshot();
    assert_eq!((s.witnesses, s.quorum), (None, Some(2)), "{s:?}");
    fs::write(m.path("after"), "3").unwrap();

    // The old witness given again: it left, so it is not used.
    m.restart_with(
        &[r0.clone(), r1.clone()],
        &["--quorum", "auto", "--witness", w.to_str().unwrap()],
    )
    .unwrap();
    assert_eq!(m.snapshot().witnesses, None);
    assert!(
        m.log_text()
            .contains(&format!("the witness {} left the replica set", path_of(&w)))
    );
    assert_all_in_service(&m);
    assert_verified(&m);
}

#[test]
fn a_daemon_killed_while_a_replica_joins_loses_nothing_and_the_join_ends_by_resync() {
    if !can_mount() {
        return;
    }
    let mut m = MountBuilder::new(2).start();
    for i in 0..8 {
        fs::write(m.path(&format!("big{i}")), vec![i as u8; 1 << 20]).unwrap();
    }
    let (r0, r1) = (m.replicas[0].clone(), m.replicas[1].clone());
    let r2 = m.tmp.path().join("r2");
    fs::create_dir(&r2).unwrap();
    let writer = Writer::start(&m.mnt, "w");
    ctl_ok(&m, &["add", r2.to_str().unwrap(), "--rate", "1M"]);
    // Killed while the new replica is being filled (8 MiB at 1 MiB/s).
    assert!(wait_until(Duration::from_secs(10), || {
        m.snapshot().replicas.iter().any(|r| {
            r.resync
                .as_ref()
                .is_some_and(|p| p.state == "running" && p.bytes > 0)
        })
    }));
    // Writes go on meanwhile.
    std::thread::sleep(Duration::from_secs(1));
    let acked = writer.finish();
    kill_daemon_and_unmount(&m);

    // The old command line: the member that was joining is mounted from its recorded path,
    // out of service (it is not filled), and nothing acknowledged is missing.
    m.restart_with(&[r0.clone(), r1.clone()], &[]).unwrap();
    let now = members(&m);
    assert_eq!(
        now,
        vec![
            (path_of(&r0), true),
            (path_of(&r1), true),
            (path_of(&r2), false)
        ],
        "{}",
        m.log_text()
    );
    assert!(
        m.log_text()
            .contains("not on the command line: mounted from its recorded path")
    );
    assert_acked(&acked, &m.mnt, &[r0.clone(), r1.clone()]);
    ctl_ok(&m, &["resync", "2", "--wait", "--rate", "0"]);
    assert_all_in_service(&m);
    assert_acked(&acked, &m.mnt, &[r0, r1, r2]);
    assert_verified(&m);
}
