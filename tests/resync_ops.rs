//! Running resyncs in production, on real mounts: the rate limit holds (daemon default and per
//! run), progress shows a total, rates and an ETA in `chironctl status` and the status file,
//! `resync --wait` prints progress lines, the Nagios check reads WARNING while a replica is
//! stale or resyncing, and `--auto-resync` brings a replica back by itself once it returns.

mod common;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use chironfs::view::snapshot::ReplicaState;
use common::*;

const MIB: u64 = 1 << 20;

/// Takes replica 1 out and writes `mib` MiB of new content (in 1 MiB files) it misses.
fn miss_content(m: &Mount, tag: &str, mib: u64) {
    ctl_ok(m, &["disable", "1"]);
    fs::create_dir_all(m.path(tag)).unwrap();
    for i in 0..mib {
        let data: Vec<u8> = (0..MIB).map(|b| (b as u8) ^ (i as u8)).collect();
        fs::write(m.path(&format!("{tag}/f{i}")), data).unwrap();
    }
}

/// Runs `chironctl resync 1 --wait` with `extra` args; returns (elapsed, stdout).
fn timed_resync(m: &Mount, extra: &[&str]) -> (Duration, String) {
    let mut args = vec!["resync", "1", "--wait"];
    args.extend_from_slice(extra);
    let t = Instant::now();
    let out = ctl_ok(m, &args);
    (t.elapsed(), out)
}

#[test]
fn the_rate_limit_holds_by_default_and_per_run() {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(2)
        .timeout(5.0)
        .arg("--resync-rate")
        .arg("4M")
        .start();
    // The daemon's default: 8 MiB at 4 MiB/s takes at least ~1.75 s (a quarter second burst).
    miss_content(&m, "a", 8);
    let (took, out) = timed_resync(&m, &[]);
    eprintln!("8 MiB at the 4M default: {took:?}");
    assert!(took >= Duration::from_millis(1700), "{took:?}: {out}");
    assert!(took < Duration::from_secs(40), "{took:?}");
    assert!(out.contains("back in service"), "{out}");
    // Not a TTY: plain progress lines, then the end.
    assert!(
        out.contains("resync of ") && out.contains("running (copying): "),
        "{out}"
    );
    assert!(!out.contains('\r'), "{out:?}");
    // Per run, on a terminal (script(1) gives it a pty): 8 MiB at 2 MiB/s takes at least
    // ~3.75 s, shown as one updating progress-bar line.
    miss_content(&m, "b", 8);
    let cmd = format!(
        "{} -s {} resync 1 --wait --rate 2M",
        chironctl_bin().display(),
        m.socket.display()
    );
    let t = Instant::now();
    let run = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    let took = t.elapsed();
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    eprintln!("8 MiB at --rate 2M: {took:?}");
    assert!(run.status.success(), "{out}");
    assert!(took >= Duration::from_millis(3500), "{took:?}: {out}");
    assert!(took < Duration::from_secs(60), "{took:?}");
    let bars: Vec<&str> = out
        .split("\r\x1b[K")
        .filter(|l| l.starts_with('['))
        .collect();
    assert!(bars.len() >= 3, "{out:?}");
    assert!(
        bars.iter()
            .all(|b| b.contains("% ") && b.contains("entries") && b.chars().count() <= 99),
        "{bars:?}"
    );
    assert!(bars.iter().any(|b| b.contains("ETA ")), "{bars:?}");
    assert!(out.contains("back in service"), "{out:?}");
    // And without a limit for this run it is much faster than the limited ones.
    miss_content(&m, "c", 8);
    let (fast, _) = timed_resync(&m, &["--rate", "0"]);
    eprintln!("8 MiB unlimited: {fast:?}");
    assert!(fast < Duration::from_millis(3000), "{fast:?}");
    assert_replicas_identical(&m);
    let log = m.log_text();
    assert!(log.contains("rate limit: 2.0 MiB/s"), "{log}");
    assert!(log.contains("rate limit: 4.0 MiB/s"), "{log}");
    assert!(log.contains("rate limit: unlimited"), "{log}");
}

#[test]
fn progress_shows_total_rate_and_eta_while_running() {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(2).timeout(5.0).start();
    // Many small entries and some content, copied slowly enough to watch.
    for d in 0..5 {
        fs::create_dir(m.path(&format!("d{d}"))).unwrap();
        for f in 0..40 {
            fs::write(m.path(&format!("d{d}/f{f}")), b"small").unwrap();
        }
    }
    // Named to come last in the walk: the small entries are checked first, then the copy.
    miss_content(&m, "zbig", 12);
    let started = ctl_ok(&m, &["resync", "1", "--rate", "2M"]);
    assert!(started.contains("rate limit: 2.0 MiB/s"), "{started}");
    let t0 = Instant::now();
    // Wait until the rates are measured (two samples half a second apart at least).
    let mut seen = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            let s = m.snapshot();
            let p = s.replicas[1].resync.clone();
            let ok = p
                .as_ref()
                .is_some_and(|p| p.state == "running" && p.bytes_per_sec > 0 && p.eta.is_some());
            seen = p;
            ok
        }),
        "no rate and ETA while running: {seen:?}"
    );
    let p = seen.unwrap();
    // The first pass is over the journaled paths: at least "zbig" and its 12 files (changed
    // while the replica was out), at most the whole tree (the root, 5 directories of 40 files,
    // "zbig" and its 12 files) when the journal was not compacted since the mount.
    let total = p.total.expect("a known total");
    assert!((13..=1 + 5 + 200 + 1 + 12).contains(&total), "{p:?}");
    let of_total = format!("% of {total} entries");
    assert_eq!(p.rate_limit, 2 * MIB);
    assert!(
        p.bytes_per_sec <= 3 * MIB,
        "smoothed rate {} above the limit",
        p.bytes_per_sec
    );
    assert!(p.done <= p.total.unwrap());
    // The human status says the same in words.
    let human = ctl_ok(&m, &["status"]);
    assert!(
        human.contains("running (copying): ")
            && human.contains(&of_total)
            && human.contains("ETA ")
            && human.contains("(limit 2.0 MiB/s)"),
        "{human}"
    );
    // The status file carries the same keys (rewritten every second).
    assert!(wait_until(Duration::from_secs(5), || {
        let text = fs::read_to_string(&m.status_file).unwrap();
        text.contains(&format!("replica.1.resync_total={total}\n"))
            && text.contains("replica.1.resync_rate_limit=2097152\n")
            && text
                .lines()
                .any(|l| l.starts_with("replica.1.resync_eta=") && l.len() > 21)
    }));
    // The Nagios check: WARNING with the resync as the reason.
    let out = m.chironctl(&["check"]);
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{line}");
    assert!(
        line.starts_with("CHIRONFS WARNING - 1/2 replicas in service; resyncing: ")
            && line.contains("resync running (copying, "),
        "{line}"
    );
    let out = m.chironctl(&["check", "--status-file", m.status_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    // `resync --wait` on a replica already being resynced follows that run to its end.
    let out = ctl_ok(&m, &["resync", "1", "--wait"]);
    assert!(
        out.starts_with("following the resync of ") && out.contains("is back in service"),
        "{out}"
    );
    assert_eq!(m.snapshot().replicas[1].state, ReplicaState::InService);
    eprintln!("12 MiB and 200 files at 2 MiB/s: {:?}", t0.elapsed());
    assert_replicas_identical(&m);
    // Milestones were logged on the way.
    let log = m.log_text();
    assert!(
        log.contains(": running (copying): ") && log.contains(&of_total),
        "{log}"
    );
    let s = m.snapshot();
    let p = s.replicas[1].resync.as_ref().unwrap();
    assert_eq!((p.state.as_str(), p.eta), ("done", None));
    assert!(p.bytes_per_sec > 0, "the average of a done run: {p:?}");
    let out = m.chironctl(&["check"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_stale_replica_reads_warning_with_its_reason() {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(2).start();
    ctl_ok(&m, &["disable", "1"]);
    fs::write(m.path("missed"), b"x").unwrap();
    let out = m.chironctl(&["check"]);
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{line}");
    assert!(
        line.contains("out of service: ")
            && line.contains("disabled by the administrator")
            && line.contains("stale, needs a resync"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1);
    // The status file says it too, in its own keys.
    assert!(wait_until(Duration::from_secs(5), || {
        let text = fs::read_to_string(&m.status_file).unwrap();
        text.contains("\ncheck=warning\n") && text.contains("stale, needs a resync")
    }));
    // And the log says it went stale, once.
    assert!(wait_until(Duration::from_secs(5), || m
        .log_text()
        .contains("is stale: it missed writes")));
}

/// A bind mount of `src` on `dst` (so it can be taken away and brought back).
fn bind(src: &std::path::Path, dst: &std::path::Path) {
    let ok = Command::new("mount")
        .arg("--bind")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(
        ok.success(),
        "mount --bind {} {}",
        src.display(),
        dst.display()
    );
}

#[test]
fn auto_resync_brings_a_returning_replica_back_by_itself() {
    if !can_mount() {
        return;
    }
    let b = MountBuilder::new(2).timeout(2.0).arg("--auto-resync");
    let backing = b.tmp().join("backing1");
    fs::create_dir(&backing).unwrap();
    let r1 = b.tmp().join("r1");
    bind(&backing, &r1);
    let mut m = b.start();
    m.unmount_at_end(r1.clone());
    for i in 0..50 {
        fs::write(m.path(&format!("before{i}")), format!("{i}")).unwrap();
    }
    // The replica goes away (its mount is detached): the health check takes it out.
    let ok = Command::new("umount").arg("-l").arg(&r1).status().unwrap();
    assert!(ok.success());
    assert!(m.wait_out_of_service(1), "not taken out");
    // Writes it misses; the bare directory now at its path is not the replica and must not
    // be resynced into (it has no state of this set).
    for i in 0..200 {
        fs::write(m.path(&format!("while{i}")), format!("{i}")).unwrap();
    }
    fs::remove_file(m.path("before3")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let s = m.snapshot();
    assert_eq!(s.replicas[1].state, ReplicaState::OutOfService);
    assert!(s.replicas[1].resync.is_none(), "resynced a stranger");
    assert!(fs::read_dir(&r1).unwrap().next().is_none());
    // It comes back: the daemon resyncs it by itself and puts it back in service.
    bind(&backing, &r1);
    let t = Instant::now();
    // Back in service, and its resync says so: the run's status is closed just after the
    // replica joins (a snapshot in between shows it in service with the resync "running").
    assert!(
        wait_until(Duration::from_secs(30), || {
            let s = m.snapshot();
            s.replicas[1].state == ReplicaState::InService
                && s.replicas[1]
                    .resync
                    .as_ref()
                    .is_some_and(|p| p.state != "running")
        }),
        "not back by itself: {:?}",
        m.snapshot().replicas[1]
    );
    eprintln!("back in service {:?} after it returned", t.elapsed());
    let s = m.snapshot();
    assert_eq!(s.replicas[1].resync.as_ref().unwrap().state, "done");
    assert!(!s.replicas[1].stale);
    assert_replicas_identical(&m);
    assert!(!m.on(1, "before3").exists());
    assert_eq!(fs::read(m.on(1, "while199")).unwrap(), b"199");
    let log = m.log_text();
    assert!(log.contains("reachable again"), "{log}");
    assert!(log.contains("starting an automatic resync"), "{log}");
    // In service again, it takes new writes.
    fs::write(m.path("after"), b"both").unwrap();
    assert_eq!(fs::read(m.on(1, "after")).unwrap(), b"both");
}

#[test]
fn auto_resync_leaves_an_admin_disabled_replica_alone_and_backs_off_after_failure() {
    if !can_mount() {
        return;
    }
    let b = MountBuilder::new(2).timeout(2.0).arg("--auto-resync");
    let small = b.tmp().join("r1");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "chiron-test"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(ok.success());
    let mut m = b.start();
    m.unmount_at_end(small);
    ctl_ok(&m, &["disable", "1"]);
    fs::write(m.path("big"), vec![7u8; 3 << 20]).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        m.snapshot().replicas[1].resync.is_none(),
        "an admin-disabled replica was resynced automatically"
    );
    // Once the admin asks for a resync, it is the daemon's again: the resync fails (the
    // replica is full) and the automatic retries back off instead of looping.
    let out = m.chironctl(&["resync", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    std::thread::sleep(Duration::from_secs(8));
    let log = m.log_text();
    let attempts = log.matches("starting an automatic resync").count();
    assert!(
        (1..=2).contains(&attempts),
        "{attempts} automatic attempts in 8 s: {log}"
    );
    assert!(log.contains("next automatic attempt in"), "{log}");
    assert_eq!(m.snapshot().replicas[1].state, ReplicaState::OutOfService);
}
