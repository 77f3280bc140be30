//! FUSE over io_uring. With the kernel's switch on (fuse.enable_uring=1; CI runs this suite
//! that way through tests/peer/with-io-uring.sh) the daemon's per-CPU ring threads serve the
//! requests; with it off, or with `--io-uring=off`, /dev/fuse serves them as before. Either
//! way the replicas end up identical.

mod common;

use common::*;
use std::fs;

/// Whether the kernel offers FUSE over io_uring to new mounts now.
fn kernel_offers_uring() -> bool {
    fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|v| v.trim() == "Y" || v.trim() == "1")
}

/// Wake-ups of the daemon's ring threads (named fuser-q<CPU>-<N>): a ring thread sleeps
/// once per request it waits for. None when the daemon has no ring thread.
fn ring_wakeups(pid: i32) -> Option<u64> {
    let mut total = None;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("fuser-q") {
            continue;
        }
        let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let switches: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        total = Some(total.unwrap_or(0) + switches);
    }
    total
}

/// Every kind of change, through the mount; then the replicas must be identical.
fn workload(m: &Mount) {
    fs::create_dir(m.path("d")).unwrap();
    for i in 0..100 {
        fs::write(m.path(&format!("d/f{i}")), vec![i as u8; 4096 + i]).unwrap();
    }
    let big: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(m.path("big"), &big).unwrap();
    assert_eq!(fs::read(m.path("big")).unwrap(), big);
    for i in 0..100 {
        let p = m.path(&format!("d/f{i}"));
        assert_eq!(fs::metadata(&p).unwrap().len(), 4096 + i as u64);
        if i % 2 == 0 {
            fs::remove_file(&p).unwrap();
        }
    }
    fs::rename(m.path("d/f1"), m.path("moved")).unwrap();
    std::os::unix::fs::symlink("moved", m.path("link")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(m.path("big"))
        .unwrap()
        .set_len(1000)
        .unwrap();
    assert_eq!(fs::read_dir(m.path("d")).unwrap().count(), 49);
    assert_eq!(
        fs::read_link(m.path("link")).unwrap().to_str(),
        Some("moved")
    );
    assert_replicas_identical(m);
}

#[test]
fn the_rings_serve_the_requests_when_the_kernel_allows_it() {
    if !can_mount() {
        return;
    }
    let offered = kernel_offers_uring();
    let m = Mount::two();
    let before = ring_wakeups(m.pid);
    workload(&m);
    let after = ring_wakeups(m.pid);
    let log = m.log_text();
    if offered {
        assert!(
            log.contains("FUSE over io_uring: requests are served per CPU"),
            "{log}"
        );
        let (before, after) = (before.expect("ring threads"), after.expect("ring threads"));
        assert!(
            after >= before + 300,
            "the ring threads woke {} times for a workload of hundreds of requests",
            after - before
        );
    } else {
        eprintln!("the kernel's FUSE over io_uring is off: checking the /dev/fuse fallback");
        assert!(log.contains("offers no FUSE over io_uring"), "{log}");
        assert_eq!(after, None, "ring threads without the kernel's io_uring");
    }
    assert!(m.stop(), "SIGTERM must unmount and end the daemon");
}

#[test]
fn io_uring_off_keeps_every_request_on_dev_fuse() {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(2).arg("--io-uring=off").start();
    workload(&m);
    assert_eq!(
        ring_wakeups(m.pid),
        None,
        "ring threads with --io-uring=off"
    );
    assert!(!m.log_text().contains("io_uring"), "{}", m.log_text());
    assert!(m.stop(), "SIGTERM must unmount and end the daemon");
}
