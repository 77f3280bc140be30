//! Durable replica state on real mounts: the hidden `.chironfs` directory, stale replicas that
//! stay out across restarts whatever the order, foreign replicas, split-brain refusal and
//! `--force-source`, new empty replicas.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use chironfs::rules::state::{META_DIR, STATE_FILE, StateRecord};
use chironfs::view::snapshot::ReplicaState;
use common::*;

fn record(replica: &Path) -> StateRecord {
    let text = fs::read_to_string(replica.join(META_DIR).join(STATE_FILE)).unwrap();
    StateRecord::parse(&text).unwrap()
}

/// A new directory next to the mount's replicas.
fn new_dir(m: &Mount, name: &str) -> PathBuf {
    let p = m.tmp.path().join(name);
    fs::create_dir(&p).unwrap();
    p
}

#[test]
fn state_is_recorded_on_each_replica_and_hidden_from_the_mount() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    let (a, b) = (record(&m.replicas[0]), record(&m.replicas[1]));
    assert_eq!(a.set_id, b.set_id);
    assert_ne!(a.replica_id, b.replica_id);
    assert_eq!((a.generation, a.clean), (b.generation, false));
    assert_eq!(a.in_service.len(), 2);
    // Invisible and untouchable through the mount.
    assert_eq!(fs::read_dir(&m.mnt).unwrap().count(), 0);
    let e = fs::symlink_metadata(m.path(META_DIR)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    let e = fs::create_dir(m.path(META_DIR)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    fs::write(m.path("f"), b"x").unwrap();
    let e = fs::rename(m.path("f"), m.path(META_DIR)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    // Below the root the name is an ordinary one.
    fs::create_dir(m.path("d")).unwrap();
    fs::create_dir(m.path(&format!("d/{META_DIR}"))).unwrap();
    assert_replicas_identical(&m);
    let names: Vec<_> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(m.stop());
    assert!(record(&m.replicas[0]).clean && record(&m.replicas[1]).clean);
}

#[test]
fn a_replica_out_at_the_restart_stays_out_and_is_never_read_in_any_order() {
    if !can_mount() {
        return;
    }
    let mut m = Mount::two();
    fs::write(m.path("f"), b"old").unwrap();
    ctl_ok(&m, &["disable", "1"]);
    fs::write(m.path("f"), b"new").unwrap();
    fs::write(m.path("added"), b"only on 0").unwrap();
    let gen0 = record(&m.replicas[0]).generation.number;
    assert!(gen0 > record(&m.replicas[1]).generation.number);
    // Make the stale copy recognisable: a file the mount must never show.
    fs::write(m.on(1, "ghost"), b"stale").unwrap();
    let (r0, r1) = (m.replicas[0].clone(), m.replicas[1].clone());
    for order in [vec![r0.clone(), r1.clone()], vec![r1.clone(), r0.clone()]] {
        m.restart_with(&order, &[]).unwrap();
        let stale = order.iter().position(|p| *p == r1).unwrap();
        let s = m.snapshot();
        assert_eq!(s.replicas[stale].state, ReplicaState::OutOfService);
        assert!(s.replicas[stale].stale);
        assert!(
            s.replicas[stale].reason.contains("missed writes"),
            "{}",
            s.replicas[stale].reason
        );
        assert_eq!(s.replicas[1 - stale].state, ReplicaState::InService);
        for _ in 0..20 {
            assert_eq!(fs::read(m.path("f")).unwrap(), b"new");
        }
        assert!(!m.path("ghost").exists());
        assert_eq!(m.snapshot().replicas[stale].reads, 0);
        assert!(
            m.log_text()
                .contains(&format!("replica {} starts out of service", r1.display()))
        );
        // The stale one is refused back without --force.
        let out = m.chironctl(&["enable", &stale.to_string()]);
        assert!(!out.status.success());
    }
    // Forced back in (copied by hand): in service again after the next restart too.
    fs::copy(r0.join("f"), r1.join("f")).unwrap();
    fs::copy(r0.join("added"), r1.join("added")).unwrap();
    fs::remove_file(r1.join("ghost")).unwrap();
    ctl_ok(&m, &["enable", "0", "--force"]);
    m.restart_with(&[r0.clone(), r1.clone()], &[]).unwrap();
    let s = m.snapshot();
    assert!(
        s.replicas
            .iter()
            .all(|r| r.state == ReplicaState::InService)
    );
    assert_eq!(
        record(&r0).generation,
        record(&r1).generation,
        "a replica put back shares the generation"
    );
}

#[test]
fn a_replica_of_another_set_is_refused_with_a_clear_message() {
    if !can_mount() {
        return;
    }
    let mut m = Mount::two();
    let other = [new_dir(&m, "o0"), new_dir(&m, "o1")];
    let mine = m.replicas.clone();
    m.restart_with(&other, &[]).unwrap();
    let err = m
        .restart_with(&[mine[0].clone(), other[1].clone()], &[])
        .unwrap_err();
    assert!(
        err.contains("belongs to another replica set")
            && err.contains(&*other[1].to_string_lossy()),
        "{err}"
    );
    assert!(!is_mounted(&m.mnt));
    // A copy of a replica (same replica id) is refused too.
    let copy = m.tmp.path().join("copy");
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(&mine[1])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = m.restart_with(&[mine[1].clone(), copy], &[]).unwrap_err();
    assert!(err.contains("same replica id"), "{err}");
}

#[test]
fn a_new_empty_replica_joins_out_of_service_until_synced() {
    if !can_mount() {
        return;
    }
    let mut m = Mount::two();
    fs::write(m.path("f"), b"data").unwrap();
    let set = record(&m.replicas[0]).set_id;
    let r0 = m.replicas[0].clone();
    let fresh = new_dir(&m, "fresh");
    m.restart_with(&[fresh.clone(), r0.clone()], &[]).unwrap();
    let s = m.snapshot();
    assert_eq!(s.replicas[0].state, ReplicaState::OutOfService);
    assert!(s.replicas[0].stale);
    assert!(s.replicas[0].reason.contains("new replica"), "{s:?}");
    assert_eq!(fs::read(m.path("f")).unwrap(), b"data");
    let new = record(&fresh);
    assert_eq!(new.set_id, set, "the new replica joins the set");
    assert_eq!(new.generation.number, 0, "never in sync yet");
    // New writes go to the in-service replica only; the new one is still not read.
    fs::write(m.path("g"), b"g").unwrap();
    assert!(!fresh.join("g").exists());
    assert!(!m.chironctl(&["enable", "0"]).status.success());
    // Still out after a restart.
    m.restart_with(&[fresh.clone(), r0.clone()], &[]).unwrap();
    assert_eq!(m.snapshot().replicas[0].state, ReplicaState::OutOfService);
}

#[test]
fn a_split_brain_is_refused_until_the_survivor_is_named() {
    if !can_mount() {
        return;
    }
    let mut m = Mount::two();
    let (a, b) = (m.replicas[0].clone(), m.replicas[1].clone());
    fs::write(m.path("f"), b"common").unwrap();
    // a goes on alone...
    ctl_ok(&m, &["disable", "1"]);
    fs::write(m.path("f"), b"written on a").unwrap();
    // ...and so does b, mounted elsewhere with a new replica while a was away (out of reach,
    // also at the path the records give for it).
    let c = new_dir(&m, "c");
    let away = m.tmp.path().join("a-out-of-reach");
    fs::rename(&a, &away).unwrap();
    m.restart_with(&[b.clone(), c.clone()], &[]).unwrap();
    assert_eq!(m.snapshot().replicas[0].state, ReplicaState::InService);
    fs::write(m.path("f"), b"written on b").unwrap();
    fs::rename(&away, &a).unwrap();
    // Together again: refused, naming both.
    let err = m.restart_with(&[a.clone(), b.clone()], &[]).unwrap_err();
    assert!(
        err.contains("split-brain")
            && err.contains(&*a.to_string_lossy())
            && err.contains(&*b.to_string_lossy())
            && err.contains("--force-source"),
        "{err}"
    );
    assert!(!is_mounted(&m.mnt));
    // Either order, same refusal.
    let err = m.restart_with(&[b.clone(), a.clone()], &[]).unwrap_err();
    assert!(err.contains("split-brain"), "{err}");
    // The admin names the survivor (by path, through -o): its data is served, the other is out.
    let force = format!("force_source={}", a.display());
    m.restart_with(&[b.clone(), a.clone()], &["-o", &force])
        .unwrap();
    let s = m.snapshot();
    assert_eq!(s.replicas[1].state, ReplicaState::InService);
    assert_eq!(s.replicas[0].state, ReplicaState::OutOfService);
    assert!(s.replicas[0].reason.contains("split-brain"), "{s:?}");
    assert_eq!(fs::read(m.path("f")).unwrap(), b"written on a");
    assert_eq!(
        fs::read(b.join("f")).unwrap(),
        b"written on b",
        "nothing merged"
    );
    // From then on no --force-source is needed; the loser stays out until resynced.
    m.restart_with(&[a.clone(), b.clone()], &[]).unwrap();
    let s = m.snapshot();
    assert_eq!(s.replicas[0].state, ReplicaState::InService);
    assert_eq!(s.replicas[1].state, ReplicaState::OutOfService);
    assert_eq!(fs::read(m.path("f")).unwrap(), b"written on a");
    // --force-source by index on the command line works too.
    m.restart_with(&[a.clone(), b.clone()], &["--force-source", "0"])
        .unwrap();
    assert_eq!(m.snapshot().replicas[0].state, ReplicaState::InService);
}

/// Starts `m` again on its replicas in a thread and gives it `secs` to come up: a start that
/// hangs fails the test instead of hanging it.
fn restart_within(m: &mut Mount, secs: u64) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let replicas = m.replicas.clone();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = tx.send(m.restart_with(&replicas, &[]));
        });
        rx.recv_timeout(std::time::Duration::from_secs(secs))
            .unwrap_or_else(|_| panic!("the start did not end within {secs} s"))
    })
}

#[test]
fn hostile_files_in_a_replicas_state_directory_cannot_hang_or_flood_the_start() {
    use std::os::unix::fs::FileTypeExt;
    if !can_mount() {
        return;
    }
    let mut m = Mount::two();
    fs::write(m.path("f"), b"kept").unwrap();
    assert!(m.stop());
    let meta = m.replicas[1].join(META_DIR);
    for (what, make) in [
        ("a FIFO as the state file", 0),
        ("a 100 MB one-line state file", 1),
        ("a FIFO as the journal", 2),
    ] {
        let state = meta.join(STATE_FILE);
        // The journal read at the start is the one of the replica the others follow.
        let journal = m.replicas[0].join(META_DIR).join("journal");
        let saved = fs::read(&state).unwrap();
        match make {
            0 => {
                fs::remove_file(&state).unwrap();
                nix::unistd::mkfifo(&state, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .unwrap();
            }
            1 => fs::write(&state, "x".repeat(100 << 20)).unwrap(),
            _ => {
                let _ = fs::remove_file(&journal);
                nix::unistd::mkfifo(&journal, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .unwrap();
            }
        }
        restart_within(&mut m, 20).unwrap_or_else(|e| panic!("{what}: the mount failed: {e}"));
        assert_eq!(fs::read(m.path("f")).unwrap(), b"kept", "{what}");
        let status = fs::metadata(&m.status_file).unwrap().len();
        assert!(status < 64 << 10, "{what}: a status file of {status} bytes");
        let longest = m.log_text().lines().map(str::len).max().unwrap_or(0);
        assert!(longest < 4096, "{what}: a log line of {longest} bytes");
        let out = m.chironctl(&["status"]);
        assert!(out.status.success(), "{what}: chironctl status failed");
        if make != 1 {
            // The log has been appended to since the first case: the file is named too.
            let file = if make == 0 { STATE_FILE } else { "journal" };
            assert!(
                m.log_text()
                    .lines()
                    .any(|l| l.contains("is a FIFO, not a regular file") && l.contains(file)),
                "{what}: the log names it"
            );
        }
        let s = m.snapshot();
        if make < 2 {
            // The state cannot be read: the replica starts out of service, the file named.
            assert_eq!(s.replicas[1].state, ReplicaState::OutOfService, "{what}");
            assert!(
                s.replicas[1].reason.contains(STATE_FILE),
                "{what}: {}",
                s.replicas[1].reason
            );
            assert!(s.replicas[1].reason.len() < 400, "{what}: a short reason");
        } else {
            // A journal that cannot be read is no fault of its replica (replica 1 is stale
            // since it was out in the case before).
            assert_eq!(s.replicas[0].state, ReplicaState::InService, "{what}");
        }
        assert!(m.stop(), "{what}: the daemon did not stop");
        // Put back what the admin would (the state from before), for the next case.
        if fs::symlink_metadata(&state).is_ok_and(|md| !md.file_type().is_file()) || make == 1 {
            fs::remove_file(&state).unwrap();
            fs::write(&state, &saved).unwrap();
        }
        if fs::symlink_metadata(&journal).is_ok_and(|md| md.file_type().is_fifo()) {
            fs::remove_file(&journal).unwrap();
        }
    }
}
