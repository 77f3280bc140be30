//! POSIX corners through a real mount, where chironfs must behave as a local filesystem
//! does: open directories that lost their name, the times of a new entry, a rewound
//! directory stream, the inode numbers of a listing, and O_TMPFILE.
mod common;
use common::*;

use std::ffi::{CStr, CString};
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

/// An open directory stream, closed when dropped (also when a test fails).
struct Dir(*mut libc::DIR);

impl Dir {
    fn open(p: &Path) -> Dir {
        let path = c(p);
        // SAFETY: a valid NUL-terminated path.
        let dirp = unsafe { libc::opendir(path.as_ptr()) };
        assert!(
            !dirp.is_null(),
            "opendir {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
        Dir(dirp)
    }

    /// The next (name, d_ino), None at the end.
    fn next(&mut self) -> Option<(String, u64)> {
        // SAFETY: self.0 is a valid open DIR*.
        let ent = unsafe { libc::readdir64(self.0) };
        if ent.is_null() {
            return None;
        }
        // SAFETY: readdir returned a valid entry with a NUL-terminated name.
        let (name, ino) = unsafe {
            (
                CStr::from_ptr((*ent).d_name.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
                (*ent).d_ino,
            )
        };
        Some((name, ino))
    }

    fn rest(&mut self) -> Vec<(String, u64)> {
        std::iter::from_fn(|| self.next()).collect()
    }

    fn rewind(&mut self) {
        // SAFETY: self.0 is a valid open DIR*.
        unsafe { libc::rewinddir(self.0) };
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: the DIR* opened in `open`, closed once.
        unsafe { libc::closedir(self.0) };
    }
}

/// fstat through a descriptor, with its errno on failure.
fn fstat(f: &File) -> Result<libc::stat, std::io::Error> {
    // SAFETY: all-zero is a valid libc::stat, filled by fstat on an open descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid open descriptor and a stat to fill.
    match unsafe { libc::fstat(f.as_raw_fd(), &mut st) } {
        0 => Ok(st),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn open_dir_fd(p: &Path) -> File {
    File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

#[test]
fn fstat_of_an_open_directory_that_lost_its_name_shows_no_links() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    for d in ["a", "b", "c"] {
        fs::create_dir(m.path(d)).unwrap();
    }
    let a = open_dir_fd(&m.path("a"));
    let c_fd = open_dir_fd(&m.path("c"));
    let a_ino = fstat(&a).unwrap().st_ino;
    fs::rename(m.path("b"), m.path("a")).unwrap();
    fs::remove_dir(m.path("c")).unwrap();
    for (what, f) in [("replaced by a rename", &a), ("removed", &c_fd)] {
        let st = fstat(f).unwrap_or_else(|e| panic!("fstat of a directory {what}: {e}"));
        assert_eq!(st.st_nlink, 0, "a directory {what}");
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFDIR);
    }
    assert_eq!(fstat(&a).unwrap().st_ino, a_ino, "still the same directory");
    assert_ne!(fs::metadata(m.path("a")).unwrap().ino(), a_ino);
    // A change through it has nowhere to go on the replicas (ENOENT), and never makes them
    // disagree: the directory is held open on one replica only.
    // SAFETY: a valid open descriptor.
    let chmod = unsafe { libc::fchmod(c_fd.as_raw_fd(), 0o700) };
    assert_eq!(
        (chmod, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::ENOENT))
    );
    drop((a, c_fd));
    assert_all_in_service(&m);
    assert_replicas_identical(&m);
}

/// (sec, nsec) of a time of `md`.
fn mtime(md: &fs::Metadata) -> (i64, i64) {
    (md.mtime(), md.mtime_nsec())
}

fn ctime(md: &fs::Metadata) -> (i64, i64) {
    (md.ctime(), md.ctime_nsec())
}

/// On local replicas a new entry's ctime equals its mtime (one replica's clock sets both, the
/// others copy it); on every replica the ctime is never before the mtime.
#[test]
fn a_new_entry_shows_its_ctime_equal_to_its_mtime_and_never_before() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    for i in 0..25 {
        let names = [
            format!("f{i}"),
            format!("d{i}"),
            format!("l{i}"),
            format!("s{i}"),
        ];
        File::create(m.path(&names[0])).unwrap();
        fs::create_dir(m.path(&names[1])).unwrap();
        std::os::unix::fs::symlink("target", m.path(&names[2])).unwrap();
        let _socket = UnixListener::bind(m.path(&names[3])).unwrap();
        for name in &names {
            let through_mount = fs::symlink_metadata(m.path(name)).unwrap();
            let on_replicas = (0..2).map(|r| fs::symlink_metadata(m.on(r, name)).unwrap());
            for (where_, md) in std::iter::once(("mount".to_string(), through_mount)).chain(
                on_replicas
                    .enumerate()
                    .map(|(r, md)| (format!("replica {r}"), md)),
            ) {
                assert!(
                    ctime(&md) >= mtime(&md),
                    "{name} ({where_}): ctime {:?} before mtime {:?}",
                    ctime(&md),
                    mtime(&md)
                );
                if where_ != "replica 1" {
                    assert_eq!(ctime(&md), mtime(&md), "{name} ({where_}): ctime != mtime");
                }
                assert_eq!(
                    (md.atime(), md.atime_nsec()),
                    mtime(&md),
                    "{name} ({where_})"
                );
            }
        }
    }
    assert_replicas_identical(&m);
}

#[test]
fn rewinddir_right_after_opendir_shows_entries_made_since() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::create_dir(m.path("d")).unwrap();
    File::create(m.path("d/early")).unwrap();
    let mut dir = Dir::open(&m.path("d"));
    File::create(m.path("d/late")).unwrap();
    fs::remove_file(m.path("d/early")).unwrap();
    dir.rewind();
    let mut names: Vec<String> = dir.rest().into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(names, [".", "..", "late"]);
    // And after a whole pass too.
    File::create(m.path("d/later")).unwrap();
    dir.rewind();
    let names: Vec<String> = dir.rest().into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().any(|n| n == "later"), "{names:?}");
}

#[test]
fn an_entry_removed_while_listed_keeps_the_inode_number_stat_gave() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::create_dir(m.path("d")).unwrap();
    let names: Vec<String> = (0..1500)
        .map(|i| format!("d/a-rather-long-file-name-to-fill-pages-{i:05}"))
        .collect();
    for n in &names {
        File::create(m.path(n)).unwrap();
    }
    let mut dir = Dir::open(&m.path("d"));
    // One page of the listing read: the rest is still to come from the open handle.
    let first = dir.next().unwrap();
    let inos: std::collections::HashMap<String, u64> = names
        .iter()
        .map(|n| {
            let short = n.trim_start_matches("d/").to_string();
            (short, fs::symlink_metadata(m.path(n)).unwrap().ino())
        })
        .collect();
    for n in &names {
        fs::remove_file(m.path(n)).unwrap();
    }
    let later: Vec<(String, u64)> = dir
        .rest()
        .into_iter()
        .filter(|(n, _)| inos.contains_key(n))
        .collect();
    drop(dir);
    assert!(
        later.len() > 100,
        "only {} removed entries listed after {first:?}: the test needs more",
        later.len()
    );
    for (name, d_ino) in &later {
        assert_eq!(*d_ino, inos[name], "d_ino of {name}");
    }
    fs::remove_dir(m.path("d")).unwrap();
}

/// The permission bits of `name` through the mount and on both replicas.
fn modes(m: &Mount, name: &str) -> [u32; 3] {
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    [
        mode(&m.path(name)),
        mode(&m.on(0, name)),
        mode(&m.on(1, name)),
    ]
}

/// Runs `step` on a new 6755 file `name` (4 KiB of zeros) as uid/gid 1001, in the mount.
fn as_owner(m: &Mount, name: &str, step: &str) {
    let cmd = format!(
        "cd {} && head -c 4096 /dev/zero > {name} && chmod 6755 {name} && {step}",
        m.path("").display()
    );
    let out = run_as(1001, 1001, &[], &cmd);
    assert!(
        out.status.success(),
        "{step}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_unprivileged_fallocate_or_direct_write_clears_setid() {
    if !can_mount() {
        return;
    }
    for direct_writes in ["on", "off"] {
        let m = MountBuilder::new(2)
            .arg("--direct-writes")
            .arg(direct_writes)
            .start();
        std::os::unix::fs::chown(m.path(""), Some(1001), Some(1001)).unwrap();
        for (name, step) in [
            ("grow", "fallocate -l 8192 grow"),
            ("keep", "fallocate -n -o 8192 -l 4096 keep"),
            ("punch", "fallocate -p -o 0 -l 4096 punch"),
            ("zero", "fallocate -z -o 0 -l 4096 zero"),
            (
                "direct",
                "dd if=/dev/zero of=direct bs=4096 count=1 oflag=direct conv=notrunc status=none",
            ),
        ] {
            as_owner(&m, name, step);
            assert_eq!(
                modes(&m, name),
                [0o755; 3],
                "{step} (--direct-writes {direct_writes}): mount, replica 0, replica 1"
            );
        }
        assert_replicas_identical(&m);
    }
}

#[test]
fn setgid_goes_when_its_owner_outside_the_group_changes_the_mode_or_acl() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    std::os::unix::fs::chown(m.path(""), Some(1001), Some(1001)).unwrap();
    for (name, step) in [
        ("chmod", "chmod 2755 chmod"),
        ("acl", "setfacl -m u:1002:rwx acl"),
        ("kept", "chmod 2755 kept"),
    ] {
        File::create(m.path(name)).unwrap();
        // In a group its owner is not in, but for "kept".
        let group = if name == "kept" { 1001 } else { 2000 };
        std::os::unix::fs::chown(m.path(name), Some(1001), Some(group)).unwrap();
        fs::set_permissions(m.path(name), fs::Permissions::from_mode(0o2755)).unwrap();
        let cmd = format!("cd {} && {step}", m.path("").display());
        let out = run_as(1001, 1001, &[], &cmd);
        assert!(
            out.status.success(),
            "{step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The ACL's mask (rwx) shows as the group bits.
        let want = match name {
            "kept" => 0o2755,
            "acl" => 0o775,
            _ => 0o755,
        };
        assert_eq!(
            modes(&m, name),
            [want; 3],
            "{step}: mount, replica 0, replica 1"
        );
    }
    assert_replicas_identical(&m);
}

/// (atime, atime_nsec) of `p` itself.
fn atime(p: &Path) -> (i64, i64) {
    let md = fs::symlink_metadata(p).unwrap();
    (md.atime(), md.atime_nsec())
}

#[test]
fn reads_never_move_one_replicas_access_time() {
    if !can_mount() {
        return;
    }
    // A read is served by one replica: an access time moved there alone would make the
    // replicas differ. chironfs mounts behave as noatime, and say so. (With passthrough the
    // kernel reads the replica's file itself, under the replica filesystem's atime option,
    // which chironfs cannot change: docs/replica-state.md.)
    let m = MountBuilder::new(2).arg("--passthrough").arg("off").start();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"read me").unwrap();
    // The release of the written file reaches the daemon after close(2) returned.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before: Vec<_> = (0..2)
        .flat_map(|i| [atime(&m.on(i, "d/f")), atime(&m.on(i, "d"))])
        .collect();
    // After the write, atime <= mtime: a relatime replica would move it at the next read.
    std::thread::sleep(std::time::Duration::from_millis(50));
    for _ in 0..8 {
        assert_eq!(fs::read(m.path("d/f")).unwrap(), b"read me");
        assert_eq!(fs::read_dir(m.path("d")).unwrap().count(), 1);
    }
    let after: Vec<_> = (0..2)
        .flat_map(|i| [atime(&m.on(i, "d/f")), atime(&m.on(i, "d"))])
        .collect();
    assert_eq!(before, after, "reads moved access times on the replicas");
    let line = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = line
        .lines()
        .find(|l| l.split(' ').nth(4) == m.mnt.to_str())
        .unwrap();
    assert!(line.contains("noatime"), "{line}");
    // An explicit access time is still set on every replica.
    let t = libc::timespec {
        tv_sec: 1_000_000,
        tv_nsec: 0,
    };
    let omit = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    };
    let path = c(&m.path("d/f"));
    // SAFETY: a valid path and two timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), [t, omit].as_ptr(), 0) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    for i in 0..2 {
        assert_eq!(atime(&m.on(i, "d/f")), (1_000_000, 0), "replica {i}");
    }
}

/// open(2) of directory `dir` with `O_TMPFILE` and `extra` flags.
fn open_tmpfile(dir: &Path, extra: i32) -> std::io::Result<File> {
    // SAFETY: a valid NUL-terminated path; the descriptor returned is ours alone.
    let fd = unsafe {
        libc::open(
            c(dir).as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | extra,
            0o640,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Gives the open file `f` the name `to`, as the man page of open(2) shows for O_TMPFILE:
/// linkat of its /proc/self/fd link, followed.
fn link_open_file(f: &File, to: &Path) -> std::io::Result<()> {
    let from = CString::new(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
    // SAFETY: valid NUL-terminated paths.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            c(to).as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn o_tmpfile_is_unnamed_until_linked_then_the_same_file_on_every_replica() {
    use std::io::Write;
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::create_dir(m.path("d")).unwrap();
    let mut f = open_tmpfile(&m.path("d"), 0).expect("O_TMPFILE through the mount");
    f.write_all(b"written before it had a name\n").unwrap();
    let st = fstat(&f).unwrap();
    assert_eq!(
        (st.st_nlink, st.st_mode & 0o7777, st.st_size),
        (0, 0o640, 29)
    );
    let listed = |i: usize| fs::read_dir(m.on(i, "d")).unwrap().count();
    assert_eq!((listed(0), listed(1)), (0, 0), "nothing named on a replica");
    assert_eq!(fs::read_dir(m.path("d")).unwrap().count(), 0);
    // Reopened through /proc/self/fd, as an unnamed file can be.
    let again = format!("/proc/self/fd/{}", f.as_raw_fd());
    assert_eq!(
        fs::read_to_string(&again).expect("reopen of the unnamed file"),
        "written before it had a name\n"
    );

    link_open_file(&f, &m.path("d/named")).expect("linkat of the tmpfile");
    assert_eq!(fstat(&f).unwrap().st_nlink, 1);
    f.write_all(b"and after\n").unwrap();
    drop(f);
    let want = "written before it had a name\nand after\n";
    assert_eq!(fs::read_to_string(m.path("d/named")).unwrap(), want);
    for i in 0..2 {
        assert_eq!(fs::read_to_string(m.on(i, "d/named")).unwrap(), want);
        assert_eq!(fs::metadata(m.on(i, "d/named")).unwrap().nlink(), 1);
    }

    // O_EXCL: never linkable (the kernel says ENOENT); closed unnamed, nothing is left.
    let f = open_tmpfile(&m.path("d"), libc::O_EXCL).unwrap();
    let err = link_open_file(&f, &m.path("d/excl")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    drop(f);
    let mut f = open_tmpfile(&m.path("d"), 0).unwrap();
    f.write_all(b"dropped").unwrap();
    drop(f);
    assert_eq!((listed(0), listed(1)), (1, 1), "only the linked file");
    assert_all_in_service(&m);
    assert_replicas_identical(&m);
}

#[test]
fn a_tmpfile_linked_while_a_replica_is_out_reaches_it_at_resync() {
    use std::io::Write;
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    ctl_ok(&m, &["disable", "1"]);
    let mut f = open_tmpfile(&m.path(""), 0).unwrap();
    f.write_all(b"made while b was out\n").unwrap();
    link_open_file(&f, &m.path("late")).unwrap();
    drop(f);
    assert!(!m.on(1, "late").exists(), "b is out of service");
    ctl_ok(&m, &["resync", "1", "--wait"]);
    assert_eq!(
        fs::read_to_string(m.on(1, "late")).unwrap(),
        "made while b was out\n"
    );
    assert_all_in_service(&m);
    assert_replicas_identical(&m);
}

#[test]
fn a_file_unlinked_while_open_is_reopened_through_proc_only_by_a_handle_on_every_replica() {
    use std::io::{Read, Write};
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::write(m.path("w"), b"written").unwrap();
    // "r" is put on the replicas directly: written through the mount, its write handle can
    // outlive close(2) (FUSE releases asynchronously), and a reopen may then go through it.
    for i in 0..2 {
        fs::write(m.on(i, "r"), b"read").unwrap();
    }
    let mut writer = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("w"))
        .unwrap();
    let reader = File::open(m.path("r")).unwrap();
    fs::remove_file(m.path("w")).unwrap();
    fs::remove_file(m.path("r")).unwrap();
    // Held open for writing, it is open on every replica: a reopen reaches them all.
    let mut again = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", writer.as_raw_fd()))
        .expect("reopen of a file held open for writing");
    again.write_all(b"W").unwrap();
    let mut got = String::new();
    writer.read_to_string(&mut got).unwrap();
    assert_eq!(
        got, "Written",
        "the same file, its first byte rewritten through the reopen"
    );
    // Held open read-only, it is open on one replica: a reopen is refused, as before, and
    // no replica is blamed for not finding it.
    let e = File::open(format!("/proc/self/fd/{}", reader.as_raw_fd())).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
    drop((writer, again, reader));
    assert_all_in_service(&m);
    assert_replicas_identical(&m);
}
