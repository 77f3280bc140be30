//! What the kernel is told about a node: a replica's `stat` turned into a FUSE [`FileAttr`], a
//! directory entry's type into a [`FileType`], the kernel's times into [`TimeSpec`]s.
//!
//! Pure: no clock, no replica, no lock, no table.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};

use crate::rules::order::Owed;
use crate::sys::TimeSpec;

/// The attributes of node `ino` as a replica's `stat` shows them: the number shown as
/// `st_ino` is the node id, so that it stays the same whichever replica answers.
pub(super) fn attr(ino: u64, st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: to_time(st.st_atime, st.st_atime_nsec),
        mtime: to_time(st.st_mtime, st.st_mtime_nsec),
        ctime: to_time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: kind_of(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// `a`, made from the replica's `st`, with the times a file still owes its network replicas
/// (see [`crate::rules::order`]) in place of those `st` shows, as that replica will keep
/// them: in whole seconds where `st` has no fraction of a second in its ctime and mtime (SFTP
/// carries seconds only; a filesystem keeping finer times stamps ctime itself, with them).
pub(super) fn with_owed(mut a: FileAttr, st: &libc::stat, (atime, mtime): Owed) -> FileAttr {
    let whole_seconds = st.st_ctime_nsec == 0 && st.st_mtime_nsec == 0;
    let time = |nanos: i64| {
        let nsec = if whole_seconds {
            0
        } else {
            nanos.rem_euclid(NANOS)
        };
        to_time(nanos.div_euclid(NANOS), nsec)
    };
    if let Some(t) = atime {
        a.atime = time(t);
    }
    if let Some(t) = mtime {
        a.mtime = time(t);
    }
    a
}

/// Nanoseconds in a second.
const NANOS: i64 = 1_000_000_000;

/// A `stat` time (seconds and nanoseconds since the epoch, the seconds possibly negative).
fn to_time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

/// The file type of a `st_mode` (an unknown type reads as a regular file).
fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// The file type of a directory entry's `d_type` (DT_UNKNOWN reads as a regular file). A
/// `d_type` is its `st_mode` type shifted right by 12 bits (glibc's `DTTOIF`).
pub(super) fn kind_of_dirent(d_type: u8) -> FileType {
    kind_of(u32::from(d_type) << 12)
}

/// A time the kernel asks to set, as `utimensat` takes it: None leaves it, "now" is left to
/// the caller to pin (see [`super::stamp::now`]).
pub(super) fn time_spec(t: Option<TimeOrNow>) -> TimeSpec {
    match t {
        None => TimeSpec::Omit,
        Some(TimeOrNow::Now) => TimeSpec::Now,
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => TimeSpec::At {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos() as i64,
            },
            Err(e) => {
                let d = e.duration();
                let (mut sec, mut nsec) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                if nsec < 0 {
                    sec -= 1;
                    nsec += 1_000_000_000;
                }
                TimeSpec::At { sec, nsec }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A real `stat` to edit (libc::stat has private padding fields on some targets).
    fn some_stat() -> libc::stat {
        let f = tempfile::tempfile().unwrap();
        crate::sys::fstat(f.as_fd()).unwrap()
    }

    #[test]
    fn times_before_and_after_the_epoch() {
        assert_eq!(to_time(0, 0), UNIX_EPOCH);
        assert_eq!(to_time(5, 7), UNIX_EPOCH + Duration::new(5, 7));
        // -2 s + 0.5 s: one and a half seconds before the epoch.
        assert_eq!(
            to_time(-2, 500_000_000),
            UNIX_EPOCH - Duration::from_millis(1500)
        );
    }

    #[test]
    fn kernel_times_become_utimens_times() {
        assert_eq!(time_spec(None), TimeSpec::Omit);
        assert_eq!(time_spec(Some(TimeOrNow::Now)), TimeSpec::Now);
        let after = UNIX_EPOCH + Duration::new(1_700_000_000, 42);
        assert_eq!(
            time_spec(Some(TimeOrNow::SpecificTime(after))),
            TimeSpec::At {
                sec: 1_700_000_000,
                nsec: 42
            }
        );
        // Before the epoch the nanoseconds stay positive, the seconds take the borrow.
        let before = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(
            time_spec(Some(TimeOrNow::SpecificTime(before))),
            TimeSpec::At {
                sec: -2,
                nsec: 500_000_000
            }
        );
        let whole = UNIX_EPOCH - Duration::from_secs(3);
        assert_eq!(
            time_spec(Some(TimeOrNow::SpecificTime(whole))),
            TimeSpec::At { sec: -3, nsec: 0 }
        );
    }

    #[test]
    fn a_time_round_trips_through_both_conversions() {
        for t in [
            UNIX_EPOCH + Duration::new(12, 999_999_999),
            UNIX_EPOCH - Duration::new(12, 1),
        ] {
            let TimeSpec::At { sec, nsec } = time_spec(Some(TimeOrNow::SpecificTime(t))) else {
                panic!("not a time");
            };
            assert_eq!(to_time(sec, nsec), t);
        }
    }

    #[test]
    fn file_types_from_modes_and_dirents_agree() {
        let types = [
            (libc::S_IFDIR, libc::DT_DIR, FileType::Directory),
            (libc::S_IFLNK, libc::DT_LNK, FileType::Symlink),
            (libc::S_IFIFO, libc::DT_FIFO, FileType::NamedPipe),
            (libc::S_IFSOCK, libc::DT_SOCK, FileType::Socket),
            (libc::S_IFCHR, libc::DT_CHR, FileType::CharDevice),
            (libc::S_IFBLK, libc::DT_BLK, FileType::BlockDevice),
            (libc::S_IFREG, libc::DT_REG, FileType::RegularFile),
        ];
        for (mode, d_type, kind) in types {
            assert_eq!(kind_of(mode | 0o755), kind, "mode {mode:o}");
            assert_eq!(kind_of_dirent(d_type), kind, "d_type {d_type}");
        }
        assert_eq!(kind_of_dirent(libc::DT_UNKNOWN), FileType::RegularFile);
    }

    #[test]
    fn attributes_carry_the_node_id_and_the_permission_bits() {
        let mut st = some_stat();
        st.st_ino = 999;
        st.st_mode = libc::S_IFDIR | 0o4755;
        st.st_size = 4096;
        st.st_nlink = 3;
        st.st_uid = 1001;
        st.st_gid = 1002;
        st.st_mtime = -1;
        st.st_mtime_nsec = 0;
        let a = attr(7, &st);
        assert_eq!(a.ino, INodeNo(7), "the node id, never the replica's inode");
        assert_eq!(a.kind, FileType::Directory);
        assert_eq!(a.perm, 0o4755);
        assert_eq!((a.size, a.nlink, a.uid, a.gid), (4096, 3, 1001, 1002));
        assert_eq!(a.mtime, UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(a.crtime, UNIX_EPOCH);
    }

    #[test]
    fn owed_times_replace_the_replicas_own_at_its_precision() {
        let mut st = some_stat();
        (st.st_mtime, st.st_ctime, st.st_atime) = (50, 50, 50);
        (st.st_mtime_nsec, st.st_ctime_nsec, st.st_atime_nsec) = (0, 0, 0);
        let owed = (Some(70 * NANOS + 5), Some(80 * NANOS + 123));
        let whole = with_owed(attr(7, &st), &st, owed);
        assert_eq!(whole.atime, UNIX_EPOCH + Duration::from_secs(70));
        assert_eq!(
            whole.mtime,
            UNIX_EPOCH + Duration::from_secs(80),
            "SFTP: seconds"
        );
        st.st_ctime_nsec = 4_000_000;
        let fine = with_owed(attr(7, &st), &st, (None, Some(80 * NANOS + 123)));
        assert_eq!(fine.mtime, UNIX_EPOCH + Duration::new(80, 123));
        assert_eq!(
            fine.atime,
            UNIX_EPOCH + Duration::from_secs(50),
            "not owed: as it is"
        );
    }
}
