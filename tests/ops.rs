//! Every filesystem operation through a real mount, checked on EVERY replica (content and
//! metadata) and through the mount itself.
mod common;
use common::*;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{
    DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::Path;
use std::time::Duration;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

/// Asserts a libc call returned 0 (or more), with errno in the message otherwise.
fn ok(ret: i64, what: &str) {
    assert!(
        ret >= 0,
        "{what} failed: {}",
        std::io::Error::last_os_error()
    );
}

/// The errno of a libc call that must fail.
fn fails(ret: i64, what: &str) -> i32 {
    assert!(ret < 0, "{what} succeeded but must fail");
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

fn lmeta(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

/// lstat of `rel` on every replica.
fn on_all(m: &Mount, rel: &str) -> Vec<fs::Metadata> {
    (0..m.replicas.len())
        .map(|i| lmeta(&m.on(i, rel)))
        .collect()
}

fn absent_everywhere(m: &Mount, rel: &str) {
    for i in 0..m.replicas.len() {
        assert!(
            fs::symlink_metadata(m.on(i, rel)).is_err(),
            "{rel} still on replica {i}"
        );
    }
    assert!(
        fs::symlink_metadata(m.path(rel)).is_err(),
        "{rel} still in the mount"
    );
}

fn content_everywhere(m: &Mount, rel: &str, want: &[u8]) {
    assert_eq!(
        fs::read(m.path(rel)).unwrap(),
        want,
        "{rel} through the mount"
    );
    for i in 0..m.replicas.len() {
        assert_eq!(
            fs::read(m.on(i, rel)).unwrap(),
            want,
            "{rel} on replica {i}"
        );
    }
}

fn mode_everywhere(m: &Mount, rel: &str, want: u32) {
    assert_eq!(
        lmeta(&m.path(rel)).mode() & 0o7777,
        want,
        "{rel} mode through the mount"
    );
    for (i, md) in on_all(m, rel).iter().enumerate() {
        assert_eq!(md.mode() & 0o7777, want, "{rel} mode on replica {i}");
    }
}

fn xattr_get(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let (p, n) = (c(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid strings and a buffer of the given length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn xattr_list(p: &Path) -> Vec<String> {
    let p = c(p);
    let mut buf = vec![0u8; 4096];
    // SAFETY: as above.
    let r = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    ok(r as i64, "listxattr");
    buf.truncate(r as usize);
    let mut names: Vec<String> = buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .filter(|s| s.starts_with("user."))
        .collect();
    names.sort();
    names
}

/// Pseudo-random bytes (xorshift), reproducible.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn create_rdwr_reads_back_through_the_same_fd_and_excl_refuses() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(m.path("f"))
        .unwrap();
    f.write_all(b"hello world").unwrap();
    let mut buf = [0u8; 11];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"hello world");
    // ChironFS 1.1 opened created files write-only: pread after ftruncate gave EBADF.
    f.set_len(5).unwrap();
    let mut buf = [0u8; 16];
    let n = f.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"hello");
    // mmap of the created file works (1.1: SIGBUS).
    // SAFETY: a fresh shared read-only mapping of 5 bytes of an open file.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            5,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "mmap of a created file");
    // SAFETY: the mapping is 5 bytes long and readable.
    let seen = unsafe { std::slice::from_raw_parts(map as *const u8, 5) }.to_vec();
    // SAFETY: unmapping what we mapped.
    unsafe { libc::munmap(map, 5) };
    assert_eq!(seen, b"hello");
    drop(f);
    content_everywhere(&m, "f", b"hello");
    mode_everywhere(&m, "f", 0o640);
    let err = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.path("f"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    content_everywhere(&m, "f", b"hello");
    assert_replicas_identical(&m);
}

#[test]
fn mkdir_fifo_socket_chardev_symlink_on_every_replica() {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(3).start();
    fs::DirBuilder::new()
        .mode(0o750)
        .create(m.path("d"))
        .unwrap();
    assert!(lmeta(&m.path("d")).is_dir());
    for md in on_all(&m, "d") {
        assert!(md.is_dir());
    }
    mode_everywhere(&m, "d", 0o750);

    // SAFETY: valid path string.
    ok(
        unsafe { libc::mkfifo(c(&m.path("d/fifo")).as_ptr(), 0o640) } as i64,
        "mkfifo",
    );
    assert!(lmeta(&m.path("d/fifo")).file_type().is_fifo());
    for md in on_all(&m, "d/fifo") {
        assert!(md.file_type().is_fifo());
    }
    mode_everywhere(&m, "d/fifo", 0o640);

    // A unix socket bound in the mount: the node is on every replica and it answers.
    let listener = std::os::unix::net::UnixListener::bind(m.path("d/sock")).unwrap();
    for md in on_all(&m, "d/sock") {
        assert!(md.file_type().is_socket());
    }
    let mut client = std::os::unix::net::UnixStream::connect(m.path("d/sock")).unwrap();
    client.write_all(b"ping").unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let mut got = [0u8; 4];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");

    // A character device (root only).
    let dev = libc::makedev(1, 3);
    // SAFETY: valid path string.
    ok(
        unsafe { libc::mknod(c(&m.path("d/null")).as_ptr(), libc::S_IFCHR | 0o600, dev) } as i64,
        "mknod c",
    );
    let md = lmeta(&m.path("d/null"));
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), dev);
    for md in on_all(&m, "d/null") {
        assert!(md.file_type().is_char_device());
        assert_eq!(md.rdev(), dev);
    }
    mode_everywhere(&m, "d/null", 0o600);

    std::os::unix::fs::symlink("../some/target", m.path("d/link")).unwrap();
    assert_eq!(
        fs::read_link(m.path("d/link")).unwrap(),
        Path::new("../some/target")
    );
    for i in 0..3 {
        assert_eq!(
            fs::read_link(m.on(i, "d/link")).unwrap(),
            Path::new("../some/target")
        );
    }
    assert!(lmeta(&m.path("d/link")).file_type().is_symlink());
    drop(listener);
    assert_replicas_identical(&m);
}

#[test]
fn hard_links_share_an_inode_and_count() {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(3).start();
    fs::write(m.path("a"), b"linked").unwrap();
    fs::hard_link(m.path("a"), m.path("b")).unwrap();
    let (a, b) = (lmeta(&m.path("a")), lmeta(&m.path("b")));
    assert_eq!(a.ino(), b.ino(), "both names, one inode through the mount");
    assert_eq!(a.nlink(), 2);
    assert_eq!(b.nlink(), 2);
    for i in 0..3 {
        let (ra, rb) = (lmeta(&m.on(i, "a")), lmeta(&m.on(i, "b")));
        assert_eq!(ra.ino(), rb.ino(), "replica {i} holds a real hard link");
        assert_eq!(ra.nlink(), 2, "nlink on replica {i}");
    }
    // Writing through one name shows through the other.
    OpenOptions::new()
        .append(true)
        .open(m.path("b"))
        .unwrap()
        .write_all(b" twice")
        .unwrap();
    content_everywhere(&m, "a", b"linked twice");
    // A third link, then drop one: the counts follow at once (no stale cached nlink).
    fs::hard_link(m.path("b"), m.path("c")).unwrap();
    assert_eq!(lmeta(&m.path("a")).nlink(), 3);
    fs::remove_file(m.path("a")).unwrap();
    assert_eq!(lmeta(&m.path("b")).nlink(), 2);
    assert_eq!(lmeta(&m.path("c")).nlink(), 2);
    assert_eq!(lmeta(&m.path("b")).ino(), b.ino());
    absent_everywhere(&m, "a");
    for i in 0..3 {
        assert_eq!(lmeta(&m.on(i, "b")).nlink(), 2, "nlink on replica {i}");
    }
    assert_replicas_identical(&m);
}

/// The descriptors of the daemon `pid` that point at a deleted file (what `lsof +L1` shows).
fn deleted_files_held_by(pid: i32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|target| target.ends_with(" (deleted)"))
        .collect()
}

#[test]
fn the_space_of_a_deleted_or_replaced_file_is_given_back_on_every_replica() {
    if !can_mount() {
        return;
    }
    // The daemon holds a file across its unlink (or the rename that replaces it) so that
    // freeing it happens after the answer; it must let go of it then, or the space would stay
    // used until the daemon stops.
    let m = Mount::two();
    let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    for n in 0..4 {
        fs::write(m.path(&format!("big{n}")), &data).unwrap();
    }
    // An atomic save: the new version is renamed over the old one, which a reader still has
    // open and reads whole.
    fs::write(m.path("saved"), &data).unwrap();
    let old_version = File::open(m.path("saved")).unwrap();
    fs::write(m.path("saved.new"), b"new version").unwrap();
    fs::rename(m.path("saved.new"), m.path("saved")).unwrap();
    content_everywhere(&m, "saved", b"new version");
    let mut back = Vec::new();
    (&old_version).read_to_end(&mut back).unwrap();
    assert!(
        back == data,
        "the replaced, still open file reads back changed"
    );
    drop(old_version);
    let kept = File::open(m.path("big3")).unwrap();
    for n in 0..4 {
        fs::remove_file(m.path(&format!("big{n}"))).unwrap();
        absent_everywhere(&m, &format!("big{n}"));
    }
    // Only the file a reader still has open stays (a closed file's FUSE release comes a moment
    // later), and it still reads whole.
    let only_the_open_one = || {
        deleted_files_held_by(m.pid)
            .iter()
            .all(|t| t.contains("big3"))
    };
    assert!(
        wait_until(Duration::from_secs(5), only_the_open_one),
        "the daemon still holds deleted files besides the open one: {:?}",
        deleted_files_held_by(m.pid)
    );
    let mut back = Vec::new();
    (&kept).read_to_end(&mut back).unwrap();
    assert!(back == data, "the open, deleted file reads back changed");
    drop(kept);
    assert!(
        wait_until(Duration::from_secs(5), || deleted_files_held_by(m.pid)
            .is_empty()),
        "deleted files still held after the last close: {:?}",
        deleted_files_held_by(m.pid)
    );
    assert_replicas_identical(&m);
}

#[test]
fn unlink_and_rmdir() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"x").unwrap();
    let err = fs::remove_dir(m.path("d")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY));
    content_everywhere(&m, "d/f", b"x");
    fs::remove_file(m.path("d/f")).unwrap();
    absent_everywhere(&m, "d/f");
    fs::remove_dir(m.path("d")).unwrap();
    absent_everywhere(&m, "d");
    let err = fs::remove_file(m.path("nothing")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    // Unlinked while open: still readable and writable, fstat says nlink 0.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("open"))
        .unwrap();
    fs::remove_file(m.path("open")).unwrap();
    absent_everywhere(&m, "open");
    f.write_all(b"still here").unwrap();
    let md = f.metadata().unwrap();
    assert_eq!(md.nlink(), 0);
    assert_eq!(md.len(), 10);
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    assert_eq!(f.metadata().unwrap().mode() & 0o7777, 0o600);
    let mut s = String::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    drop(f);
    assert_replicas_identical(&m);
}

#[test]
fn rename_plain_over_dir_noreplace_exchange() {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(3).start();
    fs::write(m.path("a"), b"A").unwrap();
    fs::rename(m.path("a"), m.path("b")).unwrap();
    absent_everywhere(&m, "a");
    content_everywhere(&m, "b", b"A");

    // Over an existing file: the target's content is replaced everywhere.
    fs::write(m.path("c"), b"old target").unwrap();
    let before = lmeta(&m.path("b")).ino();
    fs::rename(m.path("b"), m.path("c")).unwrap();
    absent_everywhere(&m, "b");
    content_everywhere(&m, "c", b"A");
    assert_eq!(
        lmeta(&m.path("c")).ino(),
        before,
        "the moved file keeps its inode"
    );

    // A directory with children: the children follow and stay reachable.
    fs::create_dir_all(m.path("d/sub")).unwrap();
    fs::write(m.path("d/sub/f"), b"deep").unwrap();
    let mut held = File::open(m.path("d/sub/f")).unwrap();
    fs::rename(m.path("d"), m.path("e")).unwrap();
    absent_everywhere(&m, "d");
    content_everywhere(&m, "e/sub/f", b"deep");
    fs::write(m.path("e/sub/g"), b"new").unwrap();
    content_everywhere(&m, "e/sub/g", b"new");
    let mut s = String::new();
    held.read_to_string(&mut s).unwrap();
    assert_eq!(s, "deep");

    // RENAME_NOREPLACE refuses an existing target and changes nothing.
    fs::write(m.path("x"), b"X").unwrap();
    fs::write(m.path("y"), b"Y").unwrap();
    assert_eq!(
        renameat2(&m.path("x"), &m.path("y"), libc::RENAME_NOREPLACE),
        Err(libc::EEXIST),
        "RENAME_NOREPLACE"
    );
    content_everywhere(&m, "x", b"X");
    content_everywhere(&m, "y", b"Y");
    renameat2(&m.path("x"), &m.path("z"), libc::RENAME_NOREPLACE)
        .unwrap_or_else(|e| panic!("RENAME_NOREPLACE to a free name failed: errno {e}"));
    absent_everywhere(&m, "x");
    content_everywhere(&m, "z", b"X");

    // RENAME_EXCHANGE swaps, a file with a directory too.
    let (iy, iz) = (lmeta(&m.path("y")).ino(), lmeta(&m.path("z")).ino());
    renameat2(&m.path("y"), &m.path("z"), libc::RENAME_EXCHANGE)
        .unwrap_or_else(|e| panic!("RENAME_EXCHANGE failed: errno {e}"));
    content_everywhere(&m, "y", b"X");
    content_everywhere(&m, "z", b"Y");
    assert_eq!(lmeta(&m.path("y")).ino(), iz);
    assert_eq!(lmeta(&m.path("z")).ino(), iy);
    renameat2(&m.path("y"), &m.path("e"), libc::RENAME_EXCHANGE)
        .unwrap_or_else(|e| panic!("RENAME_EXCHANGE file <-> dir failed: errno {e}"));
    content_everywhere(&m, "e", b"X");
    content_everywhere(&m, "y/sub/f", b"deep");
    for md in on_all(&m, "y") {
        assert!(md.is_dir());
    }
    assert_replicas_identical(&m);
}

#[test]
fn chmod_setuid_chown_lchown() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::write(m.path("f"), b"x").unwrap();
    fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o4755)).unwrap();
    mode_everywhere(&m, "f", 0o4755);
    fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o2710)).unwrap();
    mode_everywhere(&m, "f", 0o2710);
    std::os::unix::fs::chown(m.path("f"), Some(1234), Some(5678)).unwrap();
    for md in on_all(&m, "f").iter().chain([&lmeta(&m.path("f"))]) {
        assert_eq!((md.uid(), md.gid()), (1234, 5678));
    }
    // Only the group, then: the uid stays.
    std::os::unix::fs::chown(m.path("f"), None, Some(42)).unwrap();
    for md in on_all(&m, "f") {
        assert_eq!((md.uid(), md.gid()), (1234, 42));
    }
    // lchown changes the link, never its target.
    std::os::unix::fs::symlink("f", m.path("l")).unwrap();
    std::os::unix::fs::lchown(m.path("l"), Some(777), Some(888)).unwrap();
    for md in on_all(&m, "l").iter().chain([&lmeta(&m.path("l"))]) {
        assert_eq!((md.uid(), md.gid()), (777, 888));
    }
    for md in on_all(&m, "f") {
        assert_eq!((md.uid(), md.gid()), (1234, 42));
    }
    // The mount's root is each replica's root directory.
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o711)).unwrap();
    for r in &m.replicas {
        assert_eq!(lmeta(r).mode() & 0o7777, 0o711, "root of {}", r.display());
    }
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    // chown through a symlink follows it.
    std::os::unix::fs::chown(m.path("l"), Some(1), Some(1)).unwrap();
    for md in on_all(&m, "f") {
        assert_eq!((md.uid(), md.gid()), (1, 1));
    }
    assert_replicas_identical(&m);
}

#[test]
fn truncate_shrink_grow_and_ftruncate() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::write(m.path("f"), b"0123456789").unwrap();
    File::options()
        .write(true)
        .open(m.path("f"))
        .unwrap()
        .set_len(4)
        .unwrap();
    content_everywhere(&m, "f", b"0123");
    // truncate(2) by path grows with zeros.
    // SAFETY: valid path string.
    ok(
        unsafe { libc::truncate(c(&m.path("f")).as_ptr(), 8) } as i64,
        "truncate",
    );
    content_everywhere(&m, "f", b"0123\0\0\0\0");
    // ftruncate on a file opened read-write, then more writes through the same fd.
    let f = File::options()
        .read(true)
        .write(true)
        .open(m.path("f"))
        .unwrap();
    f.set_len(2).unwrap();
    f.write_all_at(b"Z", 5).unwrap();
    drop(f);
    content_everywhere(&m, "f", b"01\0\0\0Z");
    // O_TRUNC at open.
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.path("f"))
        .unwrap();
    content_everywhere(&m, "f", b"");
    assert_replicas_identical(&m);
}

fn utimensat(p: &Path, times: [libc::timespec; 2], flags: i32) -> i64 {
    // SAFETY: valid path string and a 2-element timespec array.
    unsafe { libc::utimensat(libc::AT_FDCWD, c(p).as_ptr(), times.as_ptr(), flags) as i64 }
}

fn ts(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

fn times(md: &fs::Metadata) -> ((i64, i64), (i64, i64)) {
    ((md.atime(), md.atime_nsec()), (md.mtime(), md.mtime_nsec()))
}

#[test]
fn utimensat_ns_now_omit_and_nofollow() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::write(m.path("f"), b"x").unwrap();
    let p = m.path("f");
    ok(
        utimensat(
            &p,
            [
                ts(1_000_000_000, 123_456_789),
                ts(1_100_000_000, 987_654_321),
            ],
            0,
        ),
        "utimensat",
    );
    let want = ((1_000_000_000, 123_456_789), (1_100_000_000, 987_654_321));
    assert_eq!(times(&lmeta(&p)), want, "through the mount");
    for (i, md) in on_all(&m, "f").iter().enumerate() {
        assert_eq!(times(md), want, "replica {i}");
    }
    // Only the mtime (touch -m): the atime stays.
    ok(
        utimensat(&p, [ts(0, libc::UTIME_OMIT), ts(1_200_000_000, 5)], 0),
        "UTIME_OMIT atime",
    );
    for md in on_all(&m, "f").iter().chain([&lmeta(&p)]) {
        assert_eq!(
            times(md),
            ((1_000_000_000, 123_456_789), (1_200_000_000, 5))
        );
    }
    // UTIME_NOW for the atime, mtime omitted. Inode times come from the kernel's coarse
    // clock, up to a tick behind the precise one read here: a second earlier is in time.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 1;
    ok(
        utimensat(&p, [ts(0, libc::UTIME_NOW), ts(0, libc::UTIME_OMIT)], 0),
        "UTIME_NOW",
    );
    for md in on_all(&m, "f").iter().chain([&lmeta(&p)]) {
        assert!(
            md.atime() >= before && md.atime() <= before + 5,
            "atime now"
        );
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_200_000_000, 5));
    }
    let on0 = lmeta(&m.on(0, "f"));
    assert_eq!(times(&on0), times(&lmeta(&m.on(1, "f"))), "replicas agree");

    // AT_SYMLINK_NOFOLLOW on a symlink: the link's times change, not the target's.
    std::os::unix::fs::symlink("f", m.path("l")).unwrap();
    let target_before: Vec<_> = on_all(&m, "f").iter().map(times).collect();
    ok(
        utimensat(
            &m.path("l"),
            [ts(300_000_000, 1), ts(400_000_000, 2)],
            libc::AT_SYMLINK_NOFOLLOW,
        ),
        "utimensat nofollow",
    );
    for md in on_all(&m, "l").iter().chain([&lmeta(&m.path("l"))]) {
        assert_eq!(times(md), ((300_000_000, 1), (400_000_000, 2)));
    }
    let target_after: Vec<_> = on_all(&m, "f").iter().map(times).collect();
    assert_eq!(target_before, target_after, "the target is untouched");
    // Without the flag it follows the link.
    ok(
        utimensat(&m.path("l"), [ts(7, 7), ts(8, 8)], 0),
        "utimensat follow",
    );
    for md in on_all(&m, "f") {
        assert_eq!(times(&md), ((7, 7), (8, 8)));
    }
    assert_replicas_identical(&m);
}

#[test]
fn writes_at_offsets_and_append() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    let f = File::create(m.path("f")).unwrap();
    f.write_all_at(b"end", 100_000).unwrap();
    f.write_all_at(b"start", 0).unwrap();
    f.write_all_at(b"mid", 4096).unwrap();
    drop(f);
    let mut want = vec![0u8; 100_003];
    want[..5].copy_from_slice(b"start");
    want[4096..4099].copy_from_slice(b"mid");
    want[100_000..].copy_from_slice(b"end");
    content_everywhere(&m, "f", &want);

    // Two O_APPEND writers interleaved: each write lands at the current end on every replica.
    let mut a = OpenOptions::new().append(true).open(m.path("f")).unwrap();
    let mut b = OpenOptions::new().append(true).open(m.path("f")).unwrap();
    for i in 0..20 {
        a.write_all(format!("a{i};").as_bytes()).unwrap();
        b.write_all(format!("b{i};").as_bytes()).unwrap();
    }
    drop((a, b));
    for i in 0..20 {
        want.extend_from_slice(format!("a{i};b{i};").as_bytes());
    }
    content_everywhere(&m, "f", &want);
    assert_replicas_identical(&m);
}

#[test]
fn fallocate_and_copy_file_range() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    let f = File::create(m.path("f")).unwrap();
    // SAFETY: plain syscall on an open fd.
    ok(
        unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) } as i64,
        "fallocate",
    );
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    for (i, md) in on_all(&m, "f").iter().enumerate() {
        assert_eq!(md.len(), 1 << 20, "size on replica {i}");
        assert!(md.blocks() * 512 >= 1 << 20, "allocated on replica {i}");
    }
    // KEEP_SIZE allocates past the end without changing the size.
    // SAFETY: as above.
    ok(
        unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20) }
            as i64,
        "fallocate KEEP_SIZE",
    );
    for md in on_all(&m, "f") {
        assert_eq!(md.len(), 1 << 20);
        assert!(md.blocks() * 512 >= 2 << 20);
    }
    drop(f);

    let data = random_bytes(300_000, 7);
    fs::write(m.path("src"), &data).unwrap();
    let src = File::open(m.path("src")).unwrap();
    let dst = File::create(m.path("dst")).unwrap();
    let (mut off_in, mut off_out): (i64, i64) = (1000, 0);
    let mut left = 200_000usize;
    while left > 0 {
        // SAFETY: valid fds and offset pointers.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                left,
                0,
            )
        };
        ok(n as i64, "copy_file_range");
        assert!(n > 0, "copy_file_range made no progress");
        left -= n as usize;
    }
    drop((src, dst));
    content_everywhere(&m, "dst", &data[1000..201_000]);
    assert_replicas_identical(&m);
}

#[test]
fn xattrs_set_get_list_remove() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::write(m.path("f"), b"x").unwrap();
    let p = c(&m.path("f"));
    let set = |name: &str, value: &[u8], flags: i32| {
        let n = CString::new(name).unwrap();
        // SAFETY: valid strings and value buffer.
        unsafe {
            libc::setxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            ) as i64
        }
    };
    ok(set("user.one", b"1", 0), "setxattr");
    ok(
        set("user.two", b"second value", libc::XATTR_CREATE),
        "setxattr create",
    );
    assert_eq!(
        fails(
            set("user.one", b"again", libc::XATTR_CREATE),
            "XATTR_CREATE twice"
        ),
        libc::EEXIST
    );
    assert_eq!(
        fails(
            set("user.none", b"x", libc::XATTR_REPLACE),
            "XATTR_REPLACE missing"
        ),
        libc::ENODATA
    );
    for path in [m.path("f"), m.on(0, "f"), m.on(1, "f")] {
        assert_eq!(xattr_get(&path, "user.one").unwrap(), b"1");
        assert_eq!(xattr_get(&path, "user.two").unwrap(), b"second value");
        assert_eq!(xattr_list(&path), ["user.one", "user.two"]);
    }
    assert_eq!(xattr_get(&m.path("f"), "user.none"), Err(libc::ENODATA));
    // Asking for the size first (size 0), as getfattr does.
    let n = CString::new("user.two").unwrap();
    // SAFETY: a null buffer with size 0 asks for the length.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(len, 12);
    // SAFETY: valid strings.
    ok(
        unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) } as i64,
        "removexattr",
    );
    for path in [m.path("f"), m.on(0, "f"), m.on(1, "f")] {
        assert_eq!(xattr_get(&path, "user.two"), Err(libc::ENODATA));
        assert_eq!(xattr_list(&path), ["user.one"]);
    }
    // On a directory too.
    fs::create_dir(m.path("d")).unwrap();
    let d = c(&m.path("d"));
    let name = CString::new("user.dir").unwrap();
    // SAFETY: valid strings and value.
    ok(
        unsafe { libc::setxattr(d.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) } as i64,
        "setxattr dir",
    );
    assert_eq!(xattr_get(&m.on(1, "d"), "user.dir").unwrap(), b"v");
}

#[test]
fn fsync_fdatasync_and_directory_fsync() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    let mut f = File::create(m.path("f")).unwrap();
    f.write_all(b"durable").unwrap();
    f.sync_all().unwrap();
    f.write_all(b" data").unwrap();
    f.sync_data().unwrap();
    drop(f);
    let d = File::open(&m.mnt).unwrap();
    d.sync_all().unwrap();
    // SAFETY: plain syscall on an open directory fd.
    ok(unsafe { libc::fsync(d.as_raw_fd()) } as i64, "fsync dir");
    content_everywhere(&m, "f", b"durable data");
    // Every replica took part: each counted the writes.
    let snap = m.snapshot();
    for r in &snap.replicas {
        assert!(
            r.writes >= 4,
            "replica {} counted {} writes",
            r.path,
            r.writes
        );
    }
}

#[test]
fn statfs_reports_the_smallest_replica() {
    if !can_mount() {
        return;
    }
    let b = MountBuilder::new(2);
    let small = b.tmp().join("small");
    fs::create_dir(&small).unwrap();
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "chironfs-test-small"])
        .arg(&small)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount tmpfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut m = b.replica_path(1, small.clone()).start();
    m.unmount_at_end(small.clone());
    let st = nix::sys::statvfs::statvfs(&m.mnt).unwrap();
    let total = st.blocks() as u64 * st.fragment_size() as u64;
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    assert!(
        total <= 8 << 20 && total > 7 << 20,
        "total {total} is the 8 MiB tmpfs"
    );
    assert!(free <= 8 << 20 && free > 7 << 20, "free {free}");
    // Filling the small replica shows in the free space.
    fs::write(m.path("fill"), vec![1u8; 4 << 20]).unwrap();
    let st = nix::sys::statvfs::statvfs(&m.mnt).unwrap();
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    assert!(free < 5 << 20, "free {free} after 4 MiB written");
    assert!(st.name_max() >= 255);
    assert!(st.files() > 0);
    assert_replicas_identical(&m);
}

fn map(f: &File, len: usize, flags: i32) -> *mut libc::c_void {
    // SAFETY: a fresh mapping of an open file; checked below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    p
}

#[test]
fn mmap_shared_write_reaches_replicas_private_does_not() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    let len = 3 * 4096 + 100;
    fs::write(m.path("f"), vec![b'.'; len]).unwrap();
    let f = File::options()
        .read(true)
        .write(true)
        .open(m.path("f"))
        .unwrap();
    let p = map(&f, len, libc::MAP_SHARED);
    // SAFETY: the mapping is `len` bytes, readable and writable.
    let s = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) };
    s[0..6].copy_from_slice(b"shared");
    s[2 * 4096..2 * 4096 + 4].copy_from_slice(b"page");
    s[len - 3..].copy_from_slice(b"end");
    // SAFETY: unmapping what was mapped.
    unsafe { libc::munmap(p, len) };
    drop(f);
    let mut want = vec![b'.'; len];
    want[0..6].copy_from_slice(b"shared");
    want[2 * 4096..2 * 4096 + 4].copy_from_slice(b"page");
    want[len - 3..].copy_from_slice(b"end");
    content_everywhere(&m, "f", &want);

    let f = File::options()
        .read(true)
        .write(true)
        .open(m.path("f"))
        .unwrap();
    let p = map(&f, len, libc::MAP_PRIVATE);
    // SAFETY: as above.
    let s = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) };
    assert_eq!(&s[0..6], b"shared");
    s[0..7].copy_from_slice(b"private");
    // SAFETY: as above.
    unsafe { libc::munmap(p, len) };
    drop(f);
    content_everywhere(&m, "f", &want);
    assert_replicas_identical(&m);
}

#[test]
fn inode_number_survives_disabling_the_serving_replica() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"stable").unwrap();
    let before = lmeta(&m.path("d/f"));
    let dir_before = lmeta(&m.path("d")).ino();
    assert_eq!(fs::read(m.path("d/f")).unwrap(), b"stable");
    let out = m.chironctl(&["disable", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Past the attribute timeout, so the kernel asks again (now replica 1 answers).
    std::thread::sleep(Duration::from_millis(1200));
    let reads_before = m.snapshot().replicas[1].reads;
    let after = lmeta(&m.path("d/f"));
    assert_eq!(after.ino(), before.ino(), "st_ino after fail-over");
    assert_eq!(lmeta(&m.path("d")).ino(), dir_before);
    assert_eq!(after.len(), before.len());
    assert_eq!(after.mtime_nsec(), before.mtime_nsec());
    assert_eq!(fs::read(m.path("d/f")).unwrap(), b"stable");
    assert!(
        m.snapshot().replicas[1].reads > reads_before,
        "replica 1 serves now"
    );
}

#[test]
fn large_random_file_is_byte_identical_everywhere() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    let data = random_bytes(20 << 20, 0x5eed);
    let mut f = File::create(m.path("big")).unwrap();
    for chunk in data.chunks(1 << 20) {
        f.write_all(chunk).unwrap();
    }
    drop(f);
    content_everywhere(&m, "big", &data);
    // Overwrite a range in the middle through a fresh fd.
    let f = File::options().write(true).open(m.path("big")).unwrap();
    f.write_all_at(&[0xAA; 70_000], 5 << 20).unwrap();
    drop(f);
    let mut want = data;
    want[5 << 20..(5 << 20) + 70_000].fill(0xAA);
    content_everywhere(&m, "big", &want);
}

#[test]
fn a_new_file_never_takes_the_identity_of_an_unlinked_open_one() {
    if !can_mount() {
        return;
    }
    // Replica filesystems reuse a freed inode number at once; a file still open through the
    // mount (read-only: its data comes from one replica only) must not be mistaken for the
    // new file that got its old number on another replica (the kernel would then share one
    // inode, and its cached pages, between the two).
    let m = Mount::two();
    let mut seen_reuse = false;
    for round in 0..40 {
        let old = format!("old{round}");
        fs::write(m.path(&old), vec![b'o'; 8192]).unwrap();
        let inos: Vec<u64> = (0..2).map(|i| lmeta(&m.on(i, &old)).ino()).collect();
        let old_ino = lmeta(&m.path(&old)).ino();
        let mut held = File::open(m.path(&old)).unwrap();
        let mut buf = vec![0u8; 8192];
        held.read_exact(&mut buf).unwrap();
        fs::remove_file(m.path(&old)).unwrap();
        let new = format!("new{round}");
        fs::write(m.path(&new), vec![b'n'; 8192]).unwrap();
        let reused = (0..2).any(|i| lmeta(&m.on(i, &new)).ino() == inos[i]);
        seen_reuse |= reused;
        assert_ne!(
            lmeta(&m.path(&new)).ino(),
            old_ino,
            "round {round}: same st_ino"
        );
        assert_eq!(
            fs::read(m.path(&new)).unwrap(),
            vec![b'n'; 8192],
            "round {round}"
        );
        held.seek(SeekFrom::Start(0)).unwrap();
        held.read_exact(&mut buf).unwrap();
        assert_eq!(
            buf,
            vec![b'o'; 8192],
            "round {round}: the open file changed"
        );
        drop(held);
    }
    eprintln!("inode number reuse seen on a replica: {seen_reuse}");
}

#[test]
fn read_fail_over_after_rename_reads_the_same_file() {
    if !can_mount() {
        return;
    }
    // The daemon's read path is under test: passthrough would let the kernel read alone.
    let m = MountBuilder::new(2).arg("--passthrough=off").start();
    fs::write(m.path("f"), vec![b'1'; 10_000]).unwrap();
    let held = File::open(m.path("f")).unwrap();
    let before = m.snapshot();
    let mut buf = vec![0u8; 10_000];
    held.read_exact_at(&mut buf, 0).unwrap();
    let after = m.snapshot();
    let serving = (0..2)
        .find(|&i| after.replicas[i].reads > before.replicas[i].reads)
        .expect("one replica served the read");
    // The open file moves away and another file takes its old name.
    fs::rename(m.path("f"), m.path("moved")).unwrap();
    fs::write(m.path("f"), vec![b'2'; 10_000]).unwrap();
    let out = m.chironctl(&["disable", &serving.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Drop the cached pages so the next read reaches the daemon (and fails over).
    // SAFETY: plain syscall on an open fd.
    unsafe { libc::posix_fadvise(held.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    held.read_exact_at(&mut buf, 0).unwrap();
    assert!(
        buf.iter().all(|b| *b == b'1'),
        "fail-over read another file"
    );
}

/// (name, d_ino, d_type) of every entry, through readdir(3) on an open DIR*.
fn read_entries(dirp: *mut libc::DIR) -> Vec<(String, u64, u8)> {
    let mut out = Vec::new();
    loop {
        // SAFETY: `dirp` is a valid open DIR*.
        let ent = unsafe { libc::readdir64(dirp) };
        if ent.is_null() {
            return out;
        }
        // SAFETY: readdir returned a valid entry with a NUL-terminated name.
        let (name, ino, kind) = unsafe {
            (
                std::ffi::CStr::from_ptr((*ent).d_name.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
                (*ent).d_ino,
                (*ent).d_type,
            )
        };
        out.push((name, ino, kind));
    }
}

#[test]
fn readdir_lists_everything_with_types_and_rewinds() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::create_dir_all(m.path("top/d")).unwrap();
    for i in 0..3000 {
        File::create(m.path(&format!("top/d/file-with-a-longish-name-{i:05}"))).unwrap();
    }
    fs::create_dir(m.path("top/d/sub")).unwrap();
    std::os::unix::fs::symlink("x", m.path("top/d/link")).unwrap();
    // SAFETY: valid path string.
    ok(
        unsafe { libc::mkfifo(c(&m.path("top/d/fifo")).as_ptr(), 0o644) } as i64,
        "mkfifo",
    );

    let d = c(&m.path("top/d"));
    // SAFETY: valid path string; checked for null.
    let dirp = unsafe { libc::opendir(d.as_ptr()) };
    assert!(!dirp.is_null());
    let first = read_entries(dirp);
    let names: std::collections::BTreeSet<&str> = first.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(first.len(), 3000 + 3 + 2, "no entry lost or repeated");
    assert_eq!(names.len(), first.len());
    let kind = |n: &str| first.iter().find(|e| e.0 == n).unwrap().2;
    assert_eq!(kind("sub"), libc::DT_DIR);
    assert_eq!(kind("link"), libc::DT_LNK);
    assert_eq!(kind("fifo"), libc::DT_FIFO);
    assert_eq!(kind("file-with-a-longish-name-00042"), libc::DT_REG);
    // d_ino agrees with st_ino for "." and ".." (and for entries the kernel knows).
    let ino = |n: &str| first.iter().find(|e| e.0 == n).unwrap().1;
    assert_eq!(ino("."), lmeta(&m.path("top/d")).ino());
    assert_eq!(ino(".."), lmeta(&m.path("top")).ino());
    assert_eq!(ino("sub"), lmeta(&m.path("top/d/sub")).ino());

    // rewinddir(3) shows what changed since opendir.
    File::create(m.path("top/d/late")).unwrap();
    fs::remove_file(m.path("top/d/file-with-a-longish-name-00000")).unwrap();
    // SAFETY: valid DIR*.
    unsafe { libc::rewinddir(dirp) };
    let second = read_entries(dirp);
    // SAFETY: closing the DIR* opened above, once.
    unsafe { libc::closedir(dirp) };
    assert!(
        second.iter().any(|e| e.0 == "late"),
        "rewinddir missed a new entry"
    );
    assert!(
        !second
            .iter()
            .any(|e| e.0 == "file-with-a-longish-name-00000"),
        "rewinddir still lists a removed entry"
    );
    assert_eq!(second.len(), first.len());
    // And everything goes away again.
    fs::remove_dir_all(m.path("top")).unwrap();
    absent_everywhere(&m, "top");
}

fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn posix_acls_are_replicated_and_enforced() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::write(m.path("f"), b"acl\n").unwrap();
    fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o600)).unwrap();
    let f = m.path("f").display().to_string();
    sh(&format!("setfacl -m u:1001:r {f}"));
    for i in 0..2 {
        let acl = sh(&format!("getfacl -n -c {}", m.on(i, "f").display()));
        assert!(acl.contains("user:1001:r--"), "replica {i}: {acl}");
    }
    // The kernel enforces it through the mount: 1001 may read, 1002 may not.
    let out = run_as(1001, 1001, &[], &format!("cat {f}"));
    assert!(
        out.status.success(),
        "ACL grant ignored: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"acl\n");
    assert!(
        !run_as(1002, 1002, &[], &format!("cat {f}"))
            .status
            .success()
    );
    // chmod updates the ACL mask everywhere.
    fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o600)).unwrap();
    for i in 0..2 {
        let acl = sh(&format!("getfacl -n -c {}", m.on(i, "f").display()));
        assert!(acl.contains("mask::---"), "replica {i}: {acl}");
    }
    assert!(
        !run_as(1001, 1001, &[], &format!("cat {f}"))
            .status
            .success()
    );

    // A default ACL is inherited, and then the umask does not apply (as natively).
    fs::create_dir(m.path("d")).unwrap();
    let d = m.path("d").display().to_string();
    sh(&format!(
        "setfacl -m u:1001:rwx {d} && setfacl -d -m u:1001:rwx {d}"
    ));
    let out = run_as(
        1001,
        1001,
        &[],
        &format!("umask 022; echo x > {d}/new && mkdir {d}/sub"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..2 {
        let acl = sh(&format!("getfacl -n -c {}", m.on(i, "d/new").display()));
        assert!(
            acl.contains("user:1001:rwx") && acl.contains("mask::rw-"),
            "replica {i}: {acl}"
        );
        assert_eq!(
            lmeta(&m.on(i, "d/new")).mode() & 0o777,
            0o664,
            "replica {i}"
        );
        let acl = sh(&format!("getfacl -n -c {}", m.on(i, "d/sub").display()));
        assert!(acl.contains("default:user:1001:rwx"), "replica {i}: {acl}");
    }
    assert_replicas_identical(&m);
}

#[test]
fn a_terminal_query_on_a_file_is_refused_quietly() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::write(m.path("f"), b"data").unwrap();
    let f = File::open(m.path("f")).unwrap();
    // SAFETY: isatty on an open fd (TCGETS through FUSE).
    let tty = unsafe { libc::isatty(f.as_raw_fd()) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert_eq!((tty, errno), (0, Some(libc::ENOTTY)));
    drop(f);
    // The admin's usual way to stop a FUSE mount.
    let st = std::process::Command::new("umount")
        .arg(m.path(""))
        .status()
        .unwrap();
    assert!(st.success());
    assert!(wait_until(Duration::from_secs(5), || m
        .log_text()
        .contains("INFO: unmounted")));
    let log = m.log_text();
    // The one warning a two-replica set without a witness gets at every mount (a storage
    // partition could split it; docs/cluster.md) is configuration advice, not a fault.
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARNING") && !l.contains("two members and no witness"))
        .collect();
    assert!(
        warnings.is_empty() && !log.contains("Not Implemented"),
        "a fresh mount, a terminal query and a normal unmount log no warning:\n{log}"
    );
}

/// A write or a truncate by the (unprivileged) owner clears the setuid bit, and setgid on a
/// group-executable file, on every replica, as the kernel does natively: the replicas are
/// written as root, which would keep them (guards a future direct-I/O write path, where the
/// kernel leaves this to the filesystem).
#[test]
fn an_owners_write_or_truncate_clears_setuid_on_every_replica() {
    if !can_mount() {
        return;
    }
    // Direct writes leave the clearing to the daemon (FUSE_WRITE_KILL_SUIDGID); through the
    // page cache the kernel asks for it with a SETATTR.
    for direct_writes in ["on", "off"] {
        let m = MountBuilder::new(2)
            .arg("--direct-writes")
            .arg(direct_writes)
            .start();
        owners_changes_clear_setuid(&m);
    }
}

fn owners_changes_clear_setuid(m: &Mount) {
    std::os::unix::fs::chown(m.path(""), Some(1001), Some(1001)).unwrap();
    for (name, step) in [
        ("w", "echo more >> w"),
        (
            "p",
            "dd of=p bs=1 seek=1 count=1 conv=notrunc status=none < w",
        ),
        ("t", ": > t"),
        ("s", "truncate -s 1 s"),
    ] {
        let cmd = format!(
            "cd {} && echo x > {name} && chmod 6755 {name} && {step}",
            m.path("").display()
        );
        let out = run_as(1001, 1001, &[], &cmd);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for i in 0..2 {
            let mode = fs::metadata(m.on(i, name)).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o755, "{name} on replica {i}: {mode:o}");
        }
    }
}

/// Changes inside a directory land in that directory on every replica when it was renamed,
/// replaced by another of the same name, or exchanged with another since it was last used
/// (each replica keeps a handle of the directories in use: crate::engine::dirfds).
#[test]
fn changes_follow_directories_across_renames_removals_and_exchanges() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    for d in ["a", "b", "gone"] {
        fs::create_dir(m.path(d)).unwrap();
        fs::write(m.path(&format!("{d}/first")), d).unwrap();
    }
    fs::rename(m.path("a"), m.path("a2")).unwrap();
    fs::create_dir(m.path("a")).unwrap();
    fs::write(m.path("a/new"), b"in the new a").unwrap();
    fs::write(m.path("a2/second"), b"in the renamed a").unwrap();
    fs::remove_file(m.path("gone/first")).unwrap();
    fs::remove_dir(m.path("gone")).unwrap();
    fs::create_dir(m.path("gone")).unwrap();
    fs::write(m.path("gone/again"), b"in the new gone").unwrap();
    renameat2(&m.path("a2"), &m.path("b"), libc::RENAME_EXCHANGE)
        .unwrap_or_else(|e| panic!("renameat2(RENAME_EXCHANGE) failed: errno {e}"));
    fs::write(m.path("b/third"), b"in the old a").unwrap();
    fs::write(m.path("a2/third"), b"in the old b").unwrap();
    content_everywhere(&m, "a/new", b"in the new a");
    content_everywhere(&m, "b/first", b"a");
    content_everywhere(&m, "b/second", b"in the renamed a");
    content_everywhere(&m, "b/third", b"in the old a");
    content_everywhere(&m, "a2/first", b"b");
    content_everywhere(&m, "a2/third", b"in the old b");
    content_everywhere(&m, "gone/again", b"in the new gone");
    absent_everywhere(&m, "gone/first");
    absent_everywhere(&m, "a/first");
    assert_all_in_service(&m);
    assert_replicas_identical(&m);
}

/// A name that does not exist, looked up in a directory made through the mount, is answered
/// without a replica (on a network replica that question is a round trip per created file);
/// in a directory the daemon did not make, every such lookup asks. Names made, moved, linked
/// and removed there are found, or not, as the replicas have them once the kernel has
/// forgotten its own entries and asks again.
#[test]
fn absent_names_in_a_directory_made_here_cost_no_replica_a_lookup() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    // Made on both replicas behind the daemon (the same on each): not made here.
    for i in 0..2 {
        fs::create_dir(m.on(i, "elsewhere")).unwrap();
    }
    fs::create_dir(m.path("here")).unwrap();
    let lookups = |dir: &str| {
        let before = metadata_reads(&m, 0) + metadata_reads(&m, 1);
        for n in 0..50 {
            let err = fs::symlink_metadata(m.path(&format!("{dir}/none{n}"))).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{dir}/none{n}");
        }
        metadata_reads(&m, 0) + metadata_reads(&m, 1) - before
    };
    // One directory attribute refresh at most may land in the window.
    let asked_here = lookups("here");
    assert!(
        asked_here <= 2.0,
        "{asked_here} replica reads for 50 absent names"
    );
    let asked_elsewhere = lookups("elsewhere");
    assert!(asked_elsewhere >= 50.0, "{asked_elsewhere} replica reads");

    // Every kind of entry change in the made directory, then the kernel forgets the entries
    // (the directory itself stays held open) and looks each name up again.
    let here = File::open(m.path("here")).unwrap();
    for f in ["a", "b", "c", "x"] {
        fs::write(m.path(&format!("here/{f}")), f).unwrap();
    }
    fs::rename(m.path("here/a"), m.path("here/moved")).unwrap();
    fs::rename(m.path("here/x"), m.path("here/b")).unwrap();
    fs::hard_link(m.path("here/c"), m.path("here/c2")).unwrap();
    fs::remove_file(m.path("here/c")).unwrap();
    fs::create_dir(m.path("here/sub")).unwrap();
    fs::write(m.path("here/sub/deep"), "deep").unwrap();
    fs::rename(m.path("here/sub"), m.path("here/sub2")).unwrap();
    std::os::unix::fs::symlink("moved", m.path("here/link")).unwrap();
    fs::rename(m.path("here/moved"), m.path("elsewhere/came")).unwrap();
    fs::rename(m.path("elsewhere/came"), m.path("here/back")).unwrap();
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    for name in [
        "a",
        "b",
        "c",
        "c2",
        "x",
        "moved",
        "back",
        "sub",
        "sub2",
        "sub2/deep",
        "link",
    ] {
        let rel = format!("here/{name}");
        let on_replica = m.on(0, &rel).symlink_metadata().is_ok();
        assert_eq!(
            m.on(1, &rel).symlink_metadata().is_ok(),
            on_replica,
            "{rel}"
        );
        assert_eq!(m.path(&rel).symlink_metadata().is_ok(), on_replica, "{rel}");
    }
    assert_eq!(fs::read_to_string(m.path("here/b")).unwrap(), "x");
    assert_eq!(
        fs::read_to_string(m.path("here/sub2/deep")).unwrap(),
        "deep"
    );
    // A file put on every replica behind the daemon's back is found once a listing
    // showed it.
    for i in 0..2 {
        fs::write(m.on(i, "here/behind"), "b").unwrap();
    }
    let listed: Vec<_> = fs::read_dir(m.path("here"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(listed.iter().any(|n| n == "behind"), "{listed:?}");
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    assert_eq!(fs::read_to_string(m.path("here/behind")).unwrap(), "b");
    drop(here);
    assert_replicas_identical(&m);
}
