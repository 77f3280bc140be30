//! Online resync on real mounts: a replica taken out misses thousands of changes (content,
//! renames, deletions, modes, owners, xattrs, symlinks, hard links), then `chironctl resync
//! --wait` brings it back while a writer keeps writing to the mount.

mod common;

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use chironfs::rules::state::{META_DIR, STATE_FILE, StateRecord};
use chironfs::view::snapshot::ReplicaState;
use common::*;

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), 4096) };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

fn record(replica: &Path) -> StateRecord {
    let text = fs::read_to_string(replica.join(META_DIR).join(STATE_FILE)).unwrap();
    StateRecord::parse(&text).unwrap()
}

/// A tree with every kind of entry, written through the mount.
fn populate(m: &Mount) {
    for d in 0..10 {
        let dir = m.path(&format!("d{d}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..100 {
            fs::write(dir.join(format!("f{f}")), format!("{d}/{f} ").repeat(f + 1)).unwrap();
        }
        fs::create_dir(dir.join("sub")).unwrap();
        fs::write(dir.join("sub/deep"), b"deep").unwrap();
        symlink(format!("f{d}"), dir.join("link")).unwrap();
        fs::hard_link(dir.join("f2"), dir.join("hard2")).unwrap();
    }
    set_xattr(&m.path("d0/f4"), "user.kept", b"same");
    set_xattr(&m.path("d0/f6"), "user.dropped", b"gone later");
}

/// Thousands of changes of every kind while replica 1 is out.
fn change_everything(m: &Mount) {
    for i in 0..2000 {
        let d = m.path(&format!("new{}", i % 20));
        if i < 20 {
            fs::create_dir(&d).unwrap();
        }
        fs::write(
            d.join(format!("n{i}")),
            format!("new file {i}\n").repeat(i % 7 + 1),
        )
        .unwrap();
    }
    for d in 0..10 {
        let dir = m.path(&format!("d{d}"));
        for f in (0..100).step_by(5) {
            fs::rename(dir.join(format!("f{f}")), dir.join(format!("moved{f}"))).unwrap();
        }
        for f in (1..100).step_by(7) {
            let _ = fs::remove_file(dir.join(format!("f{f}")));
        }
        for f in (2..100).step_by(11) {
            let p = dir.join(format!("f{f}"));
            if p.exists() {
                fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
                // Same size, new content and mtime.
                let len = fs::metadata(&p).unwrap().len() as usize;
                fs::write(&p, vec![b'x'; len]).unwrap();
            }
        }
        fs::remove_file(dir.join("link")).unwrap();
        symlink("elsewhere", dir.join("link")).unwrap();
        fs::hard_link(dir.join("f3"), dir.join("hard3")).unwrap();
        fs::hard_link(dir.join("f3"), dir.join("sub/hard3b")).unwrap();
    }
    // A whole directory moved, one deleted, one replaced by a file.
    fs::rename(m.path("d5"), m.path("d5-moved")).unwrap();
    fs::remove_dir_all(m.path("d6")).unwrap();
    fs::remove_dir_all(m.path("d7/sub")).unwrap();
    fs::write(m.path("d7/sub"), b"now a file").unwrap();
    fs::set_permissions(m.path("d8"), fs::Permissions::from_mode(0o711)).unwrap();
    std::os::unix::fs::chown(m.path("d8/f4"), Some(1234), Some(5678)).unwrap();
    set_xattr(&m.path("d0/f4"), "user.added", b"new value");
    let dropped = CString::new(m.path("d0/f6").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated strings.
    assert_eq!(
        unsafe { libc::lremovexattr(dropped.as_ptr(), c"user.dropped".as_ptr()) },
        0
    );
    set_xattr(&m.path("d9"), "user.dir", b"on a directory");
}

#[test]
fn a_replica_is_resynced_online_while_a_writer_keeps_writing() {
    if !can_mount() {
        return;
    }
    let mut m = MountBuilder::new(2).timeout(5.0).start();
    populate(&m);
    ctl_ok(&m, &["disable", "1"]);
    // Garbage the resync must remove, and a wrong file it must replace.
    fs::write(m.on(1, "only-on-1"), b"extra").unwrap();
    fs::create_dir_all(m.on(1, "d1/extra-dir/x")).unwrap();
    let t = Instant::now();
    change_everything(&m);
    eprintln!("changes while out: {:?}", t.elapsed());
    assert!(m.snapshot().replicas[1].stale);

    // A writer that keeps going through the whole resync, one file held open throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
        let w = m.path("w");
        fs::create_dir(&w).unwrap();
        std::thread::spawn(move || {
            let mut long = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(w.join("long"))
                .unwrap();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) || i < 200 {
                let f = w.join(format!("f{i}"));
                fs::write(&f, format!("writer {i}\n").repeat(i % 13 + 1)).unwrap();
                if i.is_multiple_of(3) {
                    fs::rename(&f, w.join(format!("r{i}"))).unwrap();
                } else if i % 5 == 1 {
                    fs::remove_file(&f).unwrap();
                } else if i % 4 == 2 {
                    fs::hard_link(&f, w.join(format!("h{i}"))).unwrap();
                }
                if i.is_multiple_of(50) {
                    let d = w.join(format!("dir{i}"));
                    fs::create_dir(&d).unwrap();
                    fs::write(d.join("inside"), b"x").unwrap();
                    set_xattr(&d.join("inside"), "user.i", i.to_string().as_bytes());
                }
                if i.is_multiple_of(7) {
                    long.write_all(format!("line {i}\n").as_bytes()).unwrap();
                }
                i += 1;
                done.store(i, Ordering::Relaxed);
            }
            long.sync_all().unwrap();
        })
    };
    while done.load(Ordering::Relaxed) < 100 {
        assert!(!writer.is_finished(), "the writer failed");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let t = Instant::now();
    let out = m.chironctl(&["resync", "1", "--wait"]);
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "resync failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("back in service"), "{text}");
    let during = done.load(Ordering::Relaxed);
    // The writer goes on with replica 1 in service, then stops.
    let after = during + 200;
    while done.load(Ordering::Relaxed) < after {
        assert!(!writer.is_finished(), "the writer failed");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("the writer failed");
    eprintln!(
        "resync --wait took {took:?}; the writer made {during} rounds by then, {} in all",
        done.load(Ordering::Relaxed)
    );

    let s = m.snapshot();
    assert_eq!(s.replicas[1].state, ReplicaState::InService);
    assert!(!s.replicas[1].stale);
    let p = s.replicas[1]
        .resync
        .as_ref()
        .expect("resync progress shown");
    assert_eq!(p.state, "done");
    assert!(p.files > 2000 && p.bytes > 0, "{p:?}");
    let status = ctl_ok(&m, &["status"]);
    assert!(
        status.contains("resync of 1 from replica 0: done"),
        "{status}"
    );
    assert_replicas_identical(&m);
    for (file, attr) in [
        ("d0/f4", "user.kept"),
        ("d0/f4", "user.added"),
        ("d0/f6", "user.dropped"),
        ("d9", "user.dir"),
        ("w/dir0/inside", "user.i"),
    ] {
        assert_eq!(
            get_xattr(&m.on(0, file), attr),
            get_xattr(&m.on(1, file), attr),
            "{file} {attr}"
        );
    }
    assert_eq!(get_xattr(&m.on(1, "d0/f6"), "user.dropped"), None);
    // Hard links are links on the resynced replica too.
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| fs::metadata(m.on(1, p)).unwrap().ino();
    assert_eq!(ino("d1/f3"), ino("d1/sub/hard3b"));
    assert_eq!(ino("d1/f2"), ino("d1/hard2"));
    let log = m.log_text();
    assert!(log.contains("resync of replica"), "{log}");
    eprintln!("chironctl resync --wait said:\n{text}");
    for l in log.lines().filter(|l| l.contains("resync")) {
        eprintln!("log: {l}");
    }

    // Both replicas stay in service across a restart: their generations agree.
    let (r0, r1) = (m.replicas[0].clone(), m.replicas[1].clone());
    assert!(m.stop());
    assert_eq!(record(&r0).generation, record(&r1).generation);
    m.restart_with(&[r1.clone(), r0.clone()], &[]).unwrap();
    assert_all_in_service(&m);
}

#[test]
fn resync_of_a_replica_in_service_is_refused_and_enable_points_to_resync() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    let out = m.chironctl(&["resync", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to resync") && err.contains("it is in service"),
        "{err}"
    );
    ctl_ok(&m, &["disable", "1"]);
    fs::write(m.path("f"), b"missed").unwrap();
    let out = m.chironctl(&["enable", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chironctl resync"), "{err}");
    // Without --wait it answers at once; the resync ends on its own.
    let started = ctl_ok(&m, &["resync", "1"]);
    assert!(started.contains("started"), "{started}");
    assert!(wait_until(std::time::Duration::from_secs(20), || {
        m.snapshot().replicas[1].state == ReplicaState::InService
    }));
    assert_eq!(fs::read(m.on(1, "f")).unwrap(), b"missed");
    assert_replicas_identical(&m);
}

#[test]
fn a_resync_that_fails_on_the_target_leaves_it_out_and_says_why() {
    if !can_mount() {
        return;
    }
    let b = MountBuilder::new(2);
    let small = b.tmp().join("r1");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "chiron-test"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success());
    let mut m = b.start();
    m.unmount_at_end(small);
    ctl_ok(&m, &["disable", "1"]);
    fs::write(m.path("big"), vec![7u8; 3 << 20]).unwrap();
    let out = m.chironctl(&["resync", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ENOSPC") && err.contains("stays out of service"),
        "{err}"
    );
    let s = m.snapshot();
    assert_eq!(s.replicas[1].state, ReplicaState::OutOfService);
    assert!(s.replicas[1].stale);
    assert_eq!(s.replicas[1].resync.as_ref().unwrap().state, "failed");
    // The mount goes on serving from replica 0, and the replica is still refused back.
    fs::write(m.path("after"), b"still serving").unwrap();
    assert_eq!(fs::read(m.path("after")).unwrap(), b"still serving");
    assert!(!m.chironctl(&["enable", "1"]).status.success());
    assert!(m.log_text().contains("failed"));
}

/// `dirs` directories of `files` small files each, written through the mount.
fn big_tree(m: &Mount, dirs: usize, files: usize) {
    for d in 0..dirs {
        let dir = m.path(&format!("t{d}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..files {
            fs::write(
                dir.join(format!("f{f}")),
                format!("{d}/{f}\n").repeat(f % 9 + 1),
            )
            .unwrap();
        }
    }
}

/// Lines of replica `i`'s journal (the header included).
fn journal_lines(m: &Mount, i: usize) -> usize {
    journal_text(m, i).lines().count()
}

/// The last resync's progress of replica `i`, from `chironctl status --json`.
fn checked_by_resync(m: &Mount, i: usize) -> u64 {
    let s = m.snapshot();
    let p = s.replicas[i]
        .resync
        .as_ref()
        .expect("resync progress shown");
    assert_eq!(p.state, "done", "{p:?}");
    p.checked
}

/// A few changes of every kind (content, rename of files and of a directory, deletion of
/// files and of a directory, creation, mode) in a `big_tree`.
fn change_a_few(m: &Mount) {
    for d in 0..10 {
        fs::write(m.path(&format!("t{d}/f1")), format!("changed {d}")).unwrap();
        fs::rename(
            m.path(&format!("t{d}/f2")),
            m.path(&format!("t{}/moved{d}", d + 1)),
        )
        .unwrap();
        fs::remove_file(m.path(&format!("t{d}/f3"))).unwrap();
    }
    fs::create_dir(m.path("fresh")).unwrap();
    for i in 0..10 {
        fs::write(m.path(&format!("fresh/n{i}")), format!("new {i}")).unwrap();
    }
    fs::rename(m.path("t20"), m.path("t20-moved")).unwrap();
    fs::remove_dir_all(m.path("t21")).unwrap();
    fs::set_permissions(m.path("t22/f5"), fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn a_resync_copies_only_the_journaled_paths_of_a_large_tree() {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(2).timeout(5.0).start();
    let (dirs, files) = (100, 40);
    let t = Instant::now();
    big_tree(&m, dirs, files);
    eprintln!("{} files written in {:?}", dirs * files, t.elapsed());
    // Nothing open and every replica in service: the journal is compacted (at most once a
    // second, after a mutation or the last close).
    std::thread::sleep(std::time::Duration::from_millis(1200));
    fs::write(m.path("t0/f0"), b"once more").unwrap();
    assert!(
        wait_until(std::time::Duration::from_secs(5), || journal_lines(&m, 0)
            <= 2
            && journal_lines(&m, 1) <= 2),
        "the journal was not compacted: {} lines",
        journal_lines(&m, 0)
    );

    ctl_ok(&m, &["disable", "1"]);
    change_a_few(&m);
    let journaled = journal_lines(&m, 0);
    assert!(journaled > 50, "{journaled} journal lines");
    let out = ctl_ok(&m, &["resync", "1", "--wait"]);
    assert!(out.contains("back in service"), "{out}");
    let checked = checked_by_resync(&m, 1);
    let log = m.log_text();
    assert!(log.contains("incremental"), "{log}");
    eprintln!(
        "incremental resync: {journaled} journal lines, {checked} entries checked of {} in the \
         tree",
        dirs * files + dirs
    );
    // About the changed paths (the two renamed/deleted directories' 80 files, each changed
    // path and its parent, copy chunks), nowhere near the 4,100 entries of the tree.
    assert!(checked < 600, "{checked} entries checked");
    assert_replicas_identical(&m);
    assert_eq!(fs::read(m.on(1, "t0/f1")).unwrap(), b"changed 0");
    assert!(!m.on(1, "t21").exists() && m.on(1, "t20-moved/f7").exists());
}

#[test]
fn an_overflowed_or_lost_journal_falls_back_to_a_full_compare() {
    if !can_mount() {
        return;
    }
    let mut m = MountBuilder::new(2)
        .timeout(5.0)
        .arg("--journal-max")
        .arg("4K")
        .start();
    big_tree(&m, 30, 20);
    ctl_ok(&m, &["disable", "1"]);
    change_a_few(&m);
    // Far more than 4 KiB of paths.
    for i in 0..400 {
        fs::write(m.path(&format!("fresh/with-a-longer-name-{i}")), b"x").unwrap();
    }
    let text = journal_text(&m, 0);
    assert!(text.ends_with("overflow\n") && text.len() <= 4096, "{text}");
    ctl_ok(&m, &["resync", "1", "--wait"]);
    let log = m.log_text();
    assert!(
        log.contains("full tree compare: the journal overflowed"),
        "{log}"
    );
    assert!(checked_by_resync(&m, 1) > 600);
    assert_replicas_identical(&m);

    // Out again, then the journal is lost across a restart: coverage starts afresh.
    ctl_ok(&m, &["disable", "1"]);
    fs::write(m.path("t0/f0"), b"missed by 1").unwrap();
    fs::remove_dir_all(m.path("t1")).unwrap();
    let (r0, r1) = (m.replicas[0].clone(), m.replicas[1].clone());
    assert!(m.stop());
    fs::remove_file(journal_path(&m, 0)).unwrap();
    m.restart_with(&[r0.clone(), r1.clone()], &["--journal-max", "4K"])
        .unwrap();
    assert!(m.snapshot().replicas[1].stale);
    ctl_ok(&m, &["resync", "1", "--wait"]);
    let log = m.log_text();
    assert!(log.contains("recording starts afresh"), "{log}");
    assert!(log.contains("after the replica left"), "{log}");
    assert!(checked_by_resync(&m, 1) > 600);
    assert_replicas_identical(&m);
    assert_eq!(fs::read(m.on(1, "t0/f0")).unwrap(), b"missed by 1");
}

/// chironfs keeps a handle of each directory in use on each replica (crate::engine::dirfds). A
/// replica whose directories were replaced while it was out (wiped by the admin, refilled by a
/// full-compare resync) must be written in its new directories once back, not in the deleted
/// ones the old handles still reach.
#[test]
fn a_replica_rebuilt_while_out_is_written_in_its_new_directories() {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(2).arg("--journal-max").arg("4K").start();
    fs::create_dir_all(m.path("d/sub")).unwrap();
    fs::write(m.path("d/sub/before"), b"before").unwrap();
    ctl_ok(&m, &["disable", "1"]);
    fs::remove_dir_all(m.on(1, "d")).unwrap();
    // The journal overflows: the resync compares whole trees and makes d/sub anew.
    for i in 0..400 {
        fs::write(m.path(&format!("fresh-with-a-longer-name-{i}")), b"x").unwrap();
    }
    ctl_ok(&m, &["resync", "1", "--wait"]);
    assert!(m.log_text().contains("full tree compare"));
    assert_eq!(fs::read(m.on(1, "d/sub/before")).unwrap(), b"before");
    // The same directories, as the kernel knows them, on the rebuilt replica.
    fs::write(m.path("d/sub/after"), b"after").unwrap();
    fs::remove_file(m.path("d/sub/before")).unwrap();
    fs::create_dir(m.path("d/sub/new")).unwrap();
    assert_all_in_service(&m);
    assert_eq!(fs::read(m.on(1, "d/sub/after")).unwrap(), b"after");
    assert!(!m.on(1, "d/sub/before").exists());
    assert_replicas_identical(&m);
}

/// A file held open for writing (a log, a database) does not stop the journal from being
/// compacted: a compaction keeps that file's path (crash recovery still heals it) and drops
/// the rest, so the journal stays small instead of growing to its cap and turning the next
/// resync into a full tree compare.
#[test]
fn a_file_held_open_for_writing_does_not_stop_the_journal_compacting() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    let mut held = fs::File::create(m.path("held.log")).unwrap();
    held.write_all(b"first\n").unwrap();
    for i in 0..200 {
        fs::write(m.path(&format!("f{i}")), b"x").unwrap();
    }
    // Compacted within about a second (the health thread), though held.log is still open.
    // Each replica's journal is rewritten in turn: wait for both.
    assert!(
        wait_until(std::time::Duration::from_secs(5), || (0..2)
            .all(|i| journal_lines(&m, i) == 2)),
        "{}\n{}",
        journal_text(&m, 0),
        journal_text(&m, 1)
    );
    for i in 0..2 {
        let text = journal_text(&m, i);
        assert!(text.lines().any(|l| l.ends_with(" held.log")), "{text}");
        assert!(!text.contains(" f1"), "{text}");
    }
    held.write_all(b"second\n").unwrap();
    drop(held);
    assert_eq!(fs::read(m.on(1, "held.log")).unwrap(), b"first\nsecond\n");
}
