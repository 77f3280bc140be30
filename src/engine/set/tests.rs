//! Unit tests of the set: fail-over, blame and deadlines on temp-dir replicas.

use super::*;
use crate::engine::replica::Replica;
use crate::sys::{self, Credentials};
use crate::view::snapshot::ControlHandler;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A set over temp dirs, removed on drop.
struct Fixture {
    set: ReplicaSet,
    dirs: Vec<PathBuf>,
    base: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// A set of `n` replicas on fresh temp dirs, one worker each; None unless root (the
/// workers switch credentials, which needs root).
fn set_of(n: usize, timeout_ms: u64) -> Option<Fixture> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root");
        return None;
    }
    static N: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir().join(format!(
        "chironfs-set-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mut replicas = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..n {
        let d = base.join(format!("r{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let replica = Replica::open(i, d.clone(), false, 1).unwrap();
        // These tests model hung replicas with sleeping jobs: deadlines must apply.
        replica.always_use_workers();
        replicas.push(replica);
        dirs.push(d);
    }
    let set = ReplicaSet::new(replicas, Duration::from_millis(timeout_ms), "/mnt".into());
    Some(Fixture { set, dirs, base })
}

/// A job answering `answers[replica]`: Ok(value), Err(errno), or None = hang 500 ms.
fn job(answers: Vec<Option<Result<u32, i32>>>) -> ReplicaJob<u32> {
    Arc::new(move |r: &Replica| match answers[r.index] {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(io::Error::from_raw_os_error(e)),
        None => {
            std::thread::sleep(Duration::from_millis(500));
            Ok(99)
        }
    })
}

fn states(set: &ReplicaSet) -> Vec<bool> {
    set.replicas().iter().map(|r| r.is_in_service()).collect()
}

fn read(set: &ReplicaSet, j: ReplicaJob<u32>) -> Result<(usize, u32), i32> {
    let order = set.priority_order();
    set.read("read", Path::new("f"), &order, &Credentials::root(), j)
}

#[test]
fn a_read_that_fails_over_blames_the_failed_replica() {
    let Some(f) = set_of(2, 200) else {
        return;
    };
    let set = &f.set;
    let r = read(set, job(vec![Some(Err(libc::EIO)), Some(Ok(7))]));
    assert_eq!(r, Ok((1, 7)));
    assert_eq!(states(set), [false, true]);
    let s = set.replicas()[0].snapshot();
    assert_eq!(s.reason, "read /f failed: EIO (Input/output error)");
}

#[test]
fn a_read_failing_everywhere_blames_nobody_and_returns_the_first_errno() {
    let Some(f) = set_of(2, 200) else {
        return;
    };
    let set = &f.set;
    let r = read(set, job(vec![Some(Err(libc::EIO)), Some(Err(libc::ENXIO))]));
    assert_eq!(r, Err(libc::EIO));
    assert_eq!(states(set), [true, true]);
    // A fault errno, then a real answer: the answer wins, and an errno is no proof.
    let r = read(
        set,
        job(vec![Some(Err(libc::EIO)), Some(Err(libc::ENOENT))]),
    );
    assert_eq!(r, Err(libc::ENOENT));
    assert_eq!(states(set), [true, true]);
    // The last replica in service hangs: EIO after the deadline, still in service.
    set.take_out_because(1, "test".into(), false);
    let r = read(set, job(vec![None, Some(Ok(1))]));
    assert_eq!(r, Err(libc::EIO));
    assert_eq!(states(set), [true, false]);
}

#[test]
fn a_read_timing_out_is_blamed_when_another_replica_answers() {
    let Some(f) = set_of(2, 100) else {
        return;
    };
    let set = &f.set;
    let r = read(set, job(vec![None, Some(Err(libc::ENOENT))]));
    assert_eq!(r, Err(libc::ENOENT));
    assert_eq!(states(set), [false, true]);
    assert!(
        set.replicas()[0]
            .snapshot()
            .reason
            .contains("no answer within 0.1 s")
    );
}

#[test]
fn a_deleted_replica_directory_is_named_in_the_reason() {
    let Some(f) = set_of(2, 500) else {
        return;
    };
    let (set, dirs) = (&f.set, &f.dirs);
    std::fs::remove_dir(&dirs[1]).unwrap();
    let create: ReplicaJob<()> = Arc::new(|r: &Replica| {
        sys::open_beneath(
            r.root()?,
            c"new",
            libc::O_CREAT | libc::O_WRONLY,
            0o644,
            false,
        )
        .map(drop)
    });
    let r = set.mutate("create", Path::new("new"), &Credentials::root(), create);
    assert_eq!(r, Ok(()));
    assert_eq!(states(set), [true, false]);
    let s = set.replicas()[1].snapshot();
    assert_eq!(
        s.reason,
        "create /new failed: ENOENT (No such file or directory): its directory was deleted"
    );
    assert!(s.stale);
}

#[test]
fn replicas_are_found_by_index_and_path_without_touching_them() {
    let Some(f) = set_of(2, 200) else {
        return;
    };
    let (set, dirs) = (&f.set, &f.dirs);
    let name = |r: Result<&Arc<Replica>, String>| r.map(|r| r.index);
    assert_eq!(name(set.find("1")), Ok(1));
    let p = dirs[1].display().to_string();
    assert_eq!(name(set.find(&p)), Ok(1));
    assert_eq!(name(set.find(&format!("{p}/"))), Ok(1));
    let link = dirs[0].parent().unwrap().with_extension("link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(dirs[0].parent().unwrap(), &link).unwrap();
    assert_eq!(name(set.find(&format!("{}/r0", link.display()))), Ok(0));
    let _ = std::fs::remove_file(&link);
    let err = set.find("2").unwrap_err();
    assert!(err.contains("no replica '2'"), "{err}");
}

#[test]
fn enabling_a_hung_replica_is_refused_within_the_deadline() {
    let Some(f) = set_of(2, 100) else {
        return;
    };
    let set = &f.set;
    set.disable("1").unwrap();
    // Its only worker is stuck.
    let (release, stuck) = mpsc::channel::<()>();
    set.replicas()[1].submit(Box::new(move || {
        let _ = stuck.recv();
    }));
    let t = Instant::now();
    let err = set.enable("1", true).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        err.contains("cannot enable") && err.contains("no answer"),
        "{err}"
    );
    assert_eq!(states(set), [true, false]);
    release.send(()).unwrap();
    assert!(set.enable("1", false).is_ok());
    assert_eq!(states(set), [true, true]);
}

#[test]
fn a_path_is_resolved_by_its_parent_only_and_within_a_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    // The parent's symlink is followed; the last component, which may not exist (or hang),
    // is not looked at.
    let got = super::resolve_parent(&link.join("absent")).unwrap();
    assert_eq!(
        got,
        std::fs::canonicalize(dir.path()).unwrap().join("absent")
    );
    assert_eq!(
        super::resolve_parent(Path::new("relative/x")).unwrap_err(),
        "give its absolute path"
    );
    assert!(
        super::resolve_parent(Path::new("/"))
            .unwrap_err()
            .contains("root")
    );
    let gone = super::resolve_parent(&dir.path().join("no/such")).unwrap_err();
    assert!(gone.starts_with("cannot resolve"), "{gone}");
}
