//! Kernel passthrough of read-only opens: the kernel reads a local replica's file itself, and
//! every mix of opens of one file still works and keeps the replicas identical.

mod common;

use common::*;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;

/// Reads the daemon served for the whole set (passthrough reads never reach it).
fn daemon_reads(m: &Mount) -> u64 {
    m.snapshot().replicas.iter().map(|r| r.reads).sum()
}

/// Maps `file` shared and writes `data` at `offset` through the mapping.
fn write_through_shared_mapping(file: &File, offset: usize, data: &[u8]) {
    use std::os::fd::AsRawFd;
    let len = offset + data.len();
    // SAFETY: a fresh shared mapping of an open fd, written inside its length, then unmapped.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        std::ptr::copy_nonoverlapping(data.as_ptr(), (p as *mut u8).add(offset), data.len());
        assert_eq!(libc::msync(p, len, libc::MS_SYNC), 0);
        assert_eq!(libc::munmap(p, len), 0);
    }
}

/// Opens `rel` read-only in passthrough mode and reads it all: retried until a whole read
/// reached the daemon not once (a writer's release arrives after its close returned, and
/// until then the file stays in cached mode).
fn open_passthrough(m: &Mount, rel: &str) -> (File, Vec<u8>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let f = File::open(m.path(rel)).unwrap();
        // (The open itself counts as one read of the replica that opened it.)
        let before = daemon_reads(m);
        let len = f.metadata().unwrap().len() as usize;
        let mut data = vec![0u8; len];
        f.read_exact_at(&mut data, 0).unwrap();
        if daemon_reads(m) == before {
            return (f, data);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "every read-only open of {rel} was served by the daemon: no passthrough"
        );
        drop(f);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn read_only_opens_are_read_by_the_kernel_and_writes_still_reach_every_replica() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    let data: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(m.path("f"), &data).unwrap();
    let (reader, got) = open_passthrough(&m, "f");
    assert_eq!(got, data);
    // A writer while the reader is open: its writes reach both replicas and the reader.
    let writer = OpenOptions::new().write(true).open(m.path("f")).unwrap();
    writer.write_all_at(b"NEW", 10).unwrap();
    let mut buf = [0u8; 3];
    reader.read_exact_at(&mut buf, 10).unwrap();
    assert_eq!(&buf, b"NEW");
    drop(writer);
    drop(reader);
    assert_replicas_identical(&m);
}

#[test]
fn a_shared_mapping_written_while_a_reader_is_open_is_healed_onto_every_replica() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::write(m.path("g"), vec![b'a'; 64 << 10]).unwrap();
    let (reader, _) = open_passthrough(&m, "g");
    let rw = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("g"))
        .unwrap();
    rw.write_all_at(b"written", 0).unwrap();
    write_through_shared_mapping(&rw, 40_000, b"mapped");
    drop(rw);
    let mut buf = [0u8; 6];
    reader.read_exact_at(&mut buf, 40_000).unwrap();
    assert_eq!(&buf, b"mapped");
    drop(reader);
    // The heal runs at release, which the kernel sends after close returns.
    let same = wait_until(std::time::Duration::from_secs(5), || {
        fs::read(m.on(0, "g")).unwrap() == fs::read(m.on(1, "g")).unwrap()
    });
    assert!(same, "replicas differ after the mapping was released");
    let got = fs::read(m.on(1, "g")).unwrap();
    assert_eq!(&got[..7], b"written");
    assert_eq!(&got[40_000..40_006], b"mapped");
    assert_replicas_identical(&m);
}

#[test]
fn a_reader_opened_after_a_writer_works_and_sees_its_writes() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    let writer = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.path("h"))
        .unwrap();
    writer.write_all_at(b"first", 0).unwrap();
    let reader = File::open(m.path("h")).expect("a read-only open next to a cached writer");
    let mut buf = [0u8; 5];
    reader.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"first");
    writer.write_all_at(b"again", 0).unwrap();
    reader.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"again");
    drop(writer);
    // Once the writer is gone, a new reader may use passthrough while the old one is cached.
    let second = File::open(m.path("h")).unwrap();
    second.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"again");
    drop((reader, second));
    assert_replicas_identical(&m);
}

#[test]
fn a_reader_opened_after_its_backing_replica_left_service_reads_the_other_one() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::write(m.path("f"), vec![b'x'; 1 << 20]).unwrap();
    let (first, mut buf) = open_passthrough(&m, "f");
    // Which replica backs `first` is not visible: take each out in turn while `first` stays
    // open. A new reader of a file whose backing replica is out must be served by the daemon
    // from the replica in service (the kernel would otherwise keep reading the one out).
    let mut served_by_daemon = 0;
    for out in 0..2 {
        let off = m.chironctl(&["disable", &out.to_string()]);
        assert!(
            off.status.success(),
            "{}",
            String::from_utf8_lossy(&off.stderr)
        );
        let second = File::open(m.path("f")).unwrap();
        let before = m.snapshot().replicas[1 - out].reads;
        second.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|b| *b == b'x'));
        if m.snapshot().replicas[1 - out].reads > before {
            served_by_daemon += 1;
        }
        drop(second);
        let on = m.chironctl(&["enable", &out.to_string()]);
        assert!(
            on.status.success(),
            "{}",
            String::from_utf8_lossy(&on.stderr)
        );
    }
    assert_eq!(
        served_by_daemon, 1,
        "exactly the round that took the backing replica out"
    );
    drop(first);
}

#[test]
fn passthrough_off_keeps_every_read_in_the_daemon() {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(2)
        .arg("-o")
        .arg("passthrough=off")
        .start();
    fs::write(m.path("f"), vec![b'y'; 1 << 20]).unwrap();
    let f = File::open(m.path("f")).unwrap();
    let before = daemon_reads(&m);
    let mut buf = vec![0u8; 1 << 20];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, vec![b'y'; 1 << 20]);
    assert!(daemon_reads(&m) > before, "reads reached chironfs");
}
