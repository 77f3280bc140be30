//! `--quorum` on real mounts: with 3 replicas and `--quorum auto` (2), taking replicas out
//! one by one keeps writes working while 2 are in service, then refuses every mutation with
//! EROFS while reads go on; the loss is logged once at ALERT and shown by `chironctl status`,
//! the status file and `chironctl check` (CRITICAL); putting a replica back brings writes
//! back. A quorum the replicas cannot meet is refused at mount.
mod common;
use common::*;

use std::fs;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The first line of `chironctl status`: the mount, its state and the quorum.
fn status_line(m: &Mount) -> String {
    let status = ctl_ok(m, &["status"]);
    status.lines().next().unwrap_or_default().to_owned()
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn writes_stop_below_the_quorum_and_come_back_with_it() {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(3).arg("--quorum").arg("auto").start();
    fs::write(m.path("kept.txt"), b"written with 3 in service").unwrap();
    let status = status_line(&m);
    assert!(
        status.ends_with("3/3 replicas in service, quorum 2 met"),
        "{status}"
    );
    assert_eq!(m.status_file_snapshot().quorum, Some(2));

    // 2 of 3: still a quorum.
    ctl_ok(&m, &["disable", "2"]);
    fs::write(m.path("two.txt"), b"written with 2 in service").unwrap();
    // A file opened for writing while the quorum holds.
    let mut open = fs::OpenOptions::new()
        .write(true)
        .open(m.path("kept.txt"))
        .unwrap();

    // 1 of 3: every mutation is refused with EROFS, reads go on.
    let said = ctl_ok(&m, &["disable", "1"]);
    assert!(
        said.contains(
            "is out of service; quorum lost (1 of 3 in service): mutations fail with EROFS"
        ),
        "{said}"
    );
    let erofs = Some(libc::EROFS);
    assert_eq!(
        errno_of(fs::write(m.path("new.txt"), b"x")),
        erofs,
        "create"
    );
    assert_eq!(errno_of(fs::create_dir(m.path("dir"))), erofs, "mkdir");
    assert_eq!(
        errno_of(fs::rename(m.path("two.txt"), m.path("moved.txt"))),
        erofs,
        "rename"
    );
    assert_eq!(
        errno_of(fs::remove_file(m.path("two.txt"))),
        erofs,
        "unlink"
    );
    assert_eq!(
        errno_of(fs::OpenOptions::new().append(true).open(m.path("kept.txt"))),
        erofs,
        "open for writing"
    );
    assert_eq!(
        errno_of(open.write_all(b"more").and_then(|()| open.flush())),
        erofs,
        "write"
    );
    // fsync (and the flush of close) too: the set counts them as mutations.
    assert_eq!(errno_of(open.sync_all()), erofs, "fsync");
    drop(open);
    assert_eq!(
        fs::read(m.path("kept.txt")).unwrap(),
        b"written with 3 in service"
    );
    assert_eq!(
        fs::read(m.path("two.txt")).unwrap(),
        b"written with 2 in service"
    );
    assert!(!m.path("new.txt").exists());
    assert!(
        !m.on(0, "new.txt").exists(),
        "a refused create reached a replica"
    );

    // Shown everywhere, logged once.
    let status = ctl_ok(&m, &["status"]);
    assert!(
        status.lines().next().unwrap().ends_with(
            "1/3 replicas in service, quorum 2 LOST: mutations refused (read-only, EROFS)"
        ),
        "{status}"
    );
    let out = m.chironctl(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).starts_with(
            "CHIRONFS CRITICAL - 1/3 replicas in service; quorum lost (2 needed): mutations refused"
        ),
        "{}",
        text(&out.stdout)
    );
    assert!(
        wait_until(Duration::from_secs(5), || fs::read_to_string(
            &m.status_file
        )
        .unwrap()
        .contains("\nquorum=2\nquorum_state=lost\n")),
        "{}",
        fs::read_to_string(&m.status_file).unwrap()
    );
    let out = Command::new(chironctl_bin())
        .args(["check", "--status-file"])
        .arg(&m.status_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let log = m.log_text();
    let lost: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("quorum lost on"))
        .collect();
    assert_eq!(lost.len(), 1, "one line per transition:\n{log}");
    assert!(
        lost[0].contains("ALERT") && lost[0].contains("1 of 3 replicas in service, 2 needed"),
        "{}",
        lost[0]
    );

    // Replica 1 missed nothing (the refused mutations ran nowhere): it comes back without
    // --force, and with it the quorum.
    ctl_ok(&m, &["enable", "1"]);
    fs::write(m.path("new.txt"), b"after the quorum came back").unwrap();
    fs::rename(m.path("two.txt"), m.path("moved.txt")).unwrap();
    for i in 0..2 {
        assert_eq!(
            fs::read(m.on(i, "new.txt")).unwrap(),
            b"after the quorum came back"
        );
        assert!(m.on(i, "moved.txt").exists());
    }
    let log = m.log_text();
    assert!(log.contains("quorum regained on"), "{log}");
    let out = m.chironctl(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
}

#[test]
fn a_quorum_the_replicas_cannot_meet_is_refused_at_mount() {
    if !can_mount() {
        return;
    }
    let b = MountBuilder::new(3);
    let dir = b.tmp().to_owned();
    let spec = b.spec();
    let mnt = dir.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    for q in ["4", "0", "most"] {
        let out = Command::new(chironfs_bin())
            .args(["-f", "--quorum", q, &spec])
            .arg(&mnt)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(!out.status.success(), "--quorum {q} was accepted");
        assert!(err.contains("--quorum"), "--quorum {q}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(!is_mounted(&mnt));
    }
    let help = Command::new(chironfs_bin()).arg("--help").output().unwrap();
    assert!(
        text(&help.stdout).contains("--quorum <auto|N>"),
        "{}",
        text(&help.stdout)
    );
}

#[test]
fn a_witness_keeps_one_replica_writing_and_refuses_the_other_alone() {
    if !can_mount() {
        return;
    }
    let b = MountBuilder::new(2);
    let witness = b.tmp().join("witness");
    fs::create_dir(&witness).unwrap();
    let mut m = b
        .arg("--quorum")
        .arg("auto")
        .arg("--witness")
        .arg(&witness)
        .start();
    let status = status_line(&m);
    assert!(
        status.ends_with("2/2 replicas in service, 1 witness answering, quorum 2 met"),
        "{status}"
    );
    fs::write(m.path("both.txt"), b"on both").unwrap();
    // One replica and the witness are 2 of 3 members: writes go on (two replicas alone
    // would need both).
    ctl_ok(&m, &["disable", "1"]);
    fs::write(
        m.path("one.txt"),
        b"acknowledged with replica 0 and the witness",
    )
    .unwrap();
    assert!(m.stop());
    assert!(
        witness.join(".chironfs/state").is_file(),
        "the witness records the set's state"
    );

    // The other side of a partition: replica 1 with the witness (and a new empty replica in
    // place of replica 0, which it cannot reach) never serves its older data.
    let (r0, r1) = (m.replicas[0].clone(), m.replicas[1].clone());
    let empty = m.tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    // Out of reach, also at the path the records give for it (a recorded member the command
    // line does not name is mounted from there).
    let away = m.tmp.path().join("r0-out-of-reach");
    fs::rename(&r0, &away).unwrap();
    let err = m
        .restart_with(
            &[r1.clone(), empty.clone()],
            &["--quorum", "auto", "--witness", witness.to_str().unwrap()],
        )
        .unwrap_err();
    assert!(
        err.contains("the witness")
            && err.contains("has seen generation")
            && err.contains("--force-source"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one sentence: {err}");
    assert!(!is_mounted(&m.mnt));
    fs::rename(&away, &r0).unwrap();

    // Both replicas again: replica 1 is stale, resynced, and nothing acknowledged is lost.
    m.restart_with(
        &[r0, r1],
        &["--quorum", "auto", "--witness", witness.to_str().unwrap()],
    )
    .unwrap();
    assert!(m.snapshot().replicas[1].stale);
    ctl_ok(&m, &["resync", "1", "--wait"]);
    assert_eq!(
        fs::read(m.path("one.txt")).unwrap(),
        b"acknowledged with replica 0 and the witness"
    );
    assert_all_in_service(&m);
    assert_replicas_identical(&m);
}
