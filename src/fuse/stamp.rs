//! What a change of a file's data does to its metadata, done alike on every replica: the one
//! exact "now" of a mutation, the mtime stamp shared by a file's concurrent writes, and the
//! setuid/setgid bits a non-root writer loses (and the setgid bit an access ACL set from
//! outside the file's group costs).
//!
//! Touches the clock, one replica's descriptor at a time (given by the caller) and a file's
//! order lock (with what a network replica is owed); no table, no fan-out.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Instant;

use crate::engine::replica::Replica;
use crate::rules::order::{OrderLock, Owed};
use crate::sys::{self, TimeSpec};

/// Nanoseconds in a second (an order lock keeps stamps as nanoseconds since the epoch).
const NANOS: i64 = 1_000_000_000;

/// "Now" as one exact time, taken once per mutation: every replica records the same
/// timestamp, where letting each replica's clock tick on its own would leave the replicas'
/// mtimes a few microseconds apart (and rsync, make or a verify would see them differ).
///
/// Read from the kernel's coarse clock, the one it stamps inode times from (a multigrain
/// filesystem takes the newer of that clock and the last fine-grained time it gave out): the
/// replica sets the object's ctime itself when the stamp is applied (utimensat cannot set a
/// ctime), from that clock or later, so ctime is never older than the mtime set from this
/// stamp. It is seldom equal to it: usually a few milliseconds later, as a utimensat made
/// natively a moment after a creation would leave it. The precise clock ran up to a tick ahead
/// of the one the replica used for ctime, which left a new file's ctime before its mtime.
/// Making the two equal takes one replica's own clock for the stamp, the others copying its
/// time: [`NewTimes`] does it where the replicas' jobs already run one after the other (a set
/// of local replicas), never where it would serialise network replicas.
pub(super) fn now() -> TimeSpec {
    let (sec, nsec) = sys::coarse_realtime();
    TimeSpec::At { sec, nsec }
}

/// The times of a new entry (create, mkdir, mknod, symlink, tmpfile), the same on every
/// replica. Where every replica is local, their jobs run one after the other in priority
/// order, so the first one sets its times from its own clock (UTIME_NOW: its mtime and ctime
/// are then one instant, as on a local filesystem) and the others copy them (their ctime is
/// later); the first is also the one whose attributes the kernel gets. With a network
/// replica the jobs run in parallel: every replica gets `stamp`, taken before, so the ctime is
/// never older than the mtime, but usually one clock tick younger.
#[derive(Clone, Debug)]
pub(super) struct NewTimes {
    stamp: TimeSpec,
    /// The first replica's times, once it set them; None with a network replica.
    first: Option<Arc<std::sync::Mutex<Option<TimeSpec>>>>,
}

impl NewTimes {
    /// The times of an entry made now on a set whose replicas are `all_local` or not.
    pub(super) fn new(all_local: bool) -> Self {
        NewTimes {
            stamp: now(),
            first: all_local.then(Arc::default),
        }
    }

    /// The stamp taken when the entry was made (an existing file's mtime when a create
    /// truncates it instead).
    pub(super) fn stamp(&self) -> TimeSpec {
        self.stamp
    }

    /// Sets the times of the new entry `name` in `dir` (`name` empty: `dir` itself, an open
    /// file). Best effort, as before: a replica that refuses keeps its own times.
    pub(super) fn apply(&self, dir: BorrowedFd<'_>, name: &std::ffi::CStr) {
        let Some(first) = &self.first else {
            let _ = sys::utimens_at(dir, name, self.stamp, self.stamp);
            return;
        };
        let mut first = first.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = *first {
            let _ = sys::utimens_at(dir, name, t, t);
            return;
        }
        if sys::utimens_at(dir, name, TimeSpec::Now, TimeSpec::Now).is_ok()
            && let Ok(st) = sys::lstat_at(dir, name)
        {
            *first = Some(TimeSpec::At {
                sec: st.st_mtime,
                nsec: st.st_mtime_nsec,
            });
        } else {
            let _ = sys::utimens_at(dir, name, self.stamp, self.stamp);
            *first = Some(self.stamp);
        }
    }
}

/// Sets the mtime of an open file to `stamp` after a change of its data (as the change itself
/// would have, but with the same value on every replica). Best effort: a replica that refuses
/// is no reason to fail the write that already succeeded.
pub(super) fn stamp_mtime(fd: BorrowedFd<'_>, stamp: TimeSpec) {
    let _ = sys::utimens_at(fd, c"", TimeSpec::Omit, stamp);
}

/// What open(O_TRUNC) does to a file that exists (a no-op without O_TRUNC in `flags`): its
/// mtime moves, even when it was empty, and a caller other than root (`uid`) clears its
/// setid bits (see [`clear_setid`]).
pub(super) fn truncated(
    fd: BorrowedFd<'_>,
    flags: i32,
    stamp: TimeSpec,
    uid: u32,
) -> io::Result<()> {
    if flags & libc::O_TRUNC != 0 {
        stamp_mtime(fd, stamp);
        if uid != 0 {
            clear_setid(fd)?;
        }
    }
    Ok(())
}

/// What a write or open(O_TRUNC) does natively for a caller without CAP_FSETID: the setuid
/// bit goes, and setgid on a group-executable file. The replicas are written as root, who
/// keeps them, so the daemon clears them itself when the kernel leaves it to the filesystem:
/// open(O_TRUNC) with FUSE_ATOMIC_O_TRUNC (for a caller other than root), and direct-I/O
/// writes (the kernel flags those with FUSE_WRITE_KILL_SUIDGID).
pub(super) fn clear_setid(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mode = sys::fstat(fd)?.st_mode & 0o7777;
    let kept = setid_cleared(mode);
    if kept != mode {
        sys::fchmod(fd, kept)?;
    }
    Ok(())
}

/// The permission bits `mode` keeps after an unprivileged write: no setuid, and no setgid if
/// the group may execute (setgid without group execute marks mandatory locking: kept).
fn setid_cleared(mode: u32) -> u32 {
    let mut kept = mode & !libc::S_ISUID;
    if mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
        kept &= !libc::S_ISGID;
    }
    kept
}

/// Whether setting a file's access ACL costs it its setgid bit, as posix_acl_update_mode
/// does natively: for a caller (`uid`, `gid`, `groups`) other than root, outside the file's
/// group `file_gid`. The replicas are written as root, who keeps the bit, and the kernel only
/// tells a FUSE filesystem so with FUSE_SETXATTR_EXT, which chironfs does not negotiate.
pub(super) fn acl_clears_setgid(uid: u32, gid: u32, groups: &[u32], file_gid: u32) -> bool {
    uid != 0 && gid != file_gid && !groups.contains(&file_gid)
}

/// The mtime a change of a file's data gives it on every replica: the newest stamp of the
/// file's writes (see [`crate::rules::order`]), so replicas finishing concurrent writes in
/// different orders still end with the same mtime.
pub(super) struct Stamp {
    order: Arc<OrderLock>,
    /// This write sets the mtime on network replicas too (see [`OrderLock::write_pays`]).
    pays: bool,
    /// What a release pays the network replicas (see [`Stamp::settling`]).
    owed: Option<Owed>,
}

impl Stamp {
    /// Notes `stamp` as the file's newest change.
    pub(super) fn new(stamp: TimeSpec, order: &Arc<OrderLock>) -> Self {
        if let TimeSpec::At { sec, nsec } = stamp {
            order.note_stamp(to_nanos(sec, nsec));
        }
        Stamp {
            order: Arc::clone(order),
            pays: order.write_pays(Instant::now()),
            owed: None,
        }
    }

    /// For an operation that changes no time (a flush, an fsync): nothing noted, nothing paid.
    pub(super) fn unchanged(order: &Arc<OrderLock>) -> Self {
        Stamp {
            order: Arc::clone(order),
            pays: false,
            owed: None,
        }
    }

    /// For a release (under the file's order lock, alone): takes the times
    /// the file's writes and creation left owed to its network replicas, for [`Stamp::pay`].
    pub(super) fn settling(order: &Arc<OrderLock>) -> Self {
        Stamp {
            order: Arc::clone(order),
            pays: false,
            owed: order.take_debt(),
        }
    }

    /// After `fd`'s data changed on replica `r`: sets its mtime to the newest stamp on a local
    /// replica (a system call); on a network replica, where it is a round trip of its own
    /// after every write, owes it until the file is flushed, or for at most
    /// [`crate::rules::order::OWED_AT_MOST`] of writes (see [`crate::rules::order`]).
    pub(super) fn apply(&self, r: &Replica, fd: BorrowedFd<'_>) {
        if r.is_local() || self.pays {
            self.order.stamp(|nanos| stamp_mtime(fd, from_nanos(nanos)));
        } else {
            self.order.owe_mtime();
        }
    }

    /// Sets on a network replica's copy `fd` the times it was owed (one call for both), when
    /// this is a settling stamp. Best effort, as [`stamp_mtime`].
    pub(super) fn pay(&self, r: &Replica, fd: BorrowedFd<'_>) {
        if let (Some((atime, mtime)), false) = (self.owed, r.is_local()) {
            let time = |t: Option<i64>| t.map_or(TimeSpec::Omit, from_nanos);
            let _ = sys::utimens_at(fd, c"", time(atime), time(mtime));
        }
    }
}

/// The nanoseconds since the epoch of a pinned time (None for Omit or Now).
pub(super) fn nanos_of(t: TimeSpec) -> Option<i64> {
    match t {
        TimeSpec::At { sec, nsec } => Some(to_nanos(sec, nsec)),
        _ => None,
    }
}

/// A time as the order lock keeps it: nanoseconds since the epoch (saturating).
fn to_nanos(sec: i64, nsec: i64) -> i64 {
    sec.saturating_mul(NANOS).saturating_add(nsec)
}

/// The time of [`to_nanos`]'s count (nanoseconds always in 0..1e9, as utimensat wants).
fn from_nanos(nanos: i64) -> TimeSpec {
    TimeSpec::At {
        sec: nanos.div_euclid(NANOS),
        nsec: nanos.rem_euclid(NANOS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn mtime(fd: BorrowedFd<'_>) -> (i64, i64) {
        let st = sys::fstat(fd).unwrap();
        (st.st_mtime, st.st_mtime_nsec)
    }

    #[test]
    fn now_is_one_exact_time() {
        let TimeSpec::At { sec, nsec } = now() else {
            panic!("now must be pinned, never UTIME_NOW");
        };
        assert!(sec > 1_600_000_000);
        assert!((0..NANOS).contains(&nsec));
    }

    #[test]
    fn a_stamped_file_never_shows_a_ctime_before_its_mtime() {
        let f = tempfile::tempfile().unwrap();
        for _ in 0..200 {
            let stamp = now();
            stamp_mtime(f.as_fd(), stamp);
            let st = sys::fstat(f.as_fd()).unwrap();
            assert_eq!(
                TimeSpec::At {
                    sec: st.st_mtime,
                    nsec: st.st_mtime_nsec
                },
                stamp
            );
            assert!(
                (st.st_ctime, st.st_ctime_nsec) >= (st.st_mtime, st.st_mtime_nsec),
                "ctime {}.{:09} before mtime {}.{:09}",
                st.st_ctime,
                st.st_ctime_nsec,
                st.st_mtime,
                st.st_mtime_nsec
            );
        }
    }

    #[test]
    fn an_unprivileged_write_clears_setuid_and_executable_setgid() {
        assert_eq!(setid_cleared(0o4755), 0o755);
        assert_eq!(setid_cleared(0o2755), 0o755);
        assert_eq!(setid_cleared(0o6755), 0o755);
        // Setgid without group execute is mandatory locking, not privilege: it stays.
        assert_eq!(setid_cleared(0o2745), 0o2745);
        assert_eq!(setid_cleared(0o6745), 0o2745);
        assert_eq!(setid_cleared(0o1777), 0o1777);
        assert_eq!(setid_cleared(0o644), 0o644);
    }

    #[test]
    fn an_acl_set_outside_the_files_group_costs_setgid() {
        assert!(acl_clears_setgid(1001, 1001, &[], 2000));
        assert!(acl_clears_setgid(1001, 1001, &[3000], 2000));
        assert!(!acl_clears_setgid(1001, 2000, &[], 2000), "its group");
        assert!(
            !acl_clears_setgid(1001, 1001, &[2000], 2000),
            "a group it is in"
        );
        assert!(!acl_clears_setgid(0, 0, &[], 2000), "root keeps it");
    }

    #[test]
    fn clear_setid_changes_the_file_only_when_needed() {
        let f = tempfile::tempfile().unwrap();
        sys::fchmod(f.as_fd(), 0o4750).unwrap();
        clear_setid(f.as_fd()).unwrap();
        assert_eq!(sys::fstat(f.as_fd()).unwrap().st_mode & 0o7777, 0o750);
    }

    #[test]
    fn a_truncating_open_moves_the_mtime_and_only_then() {
        let f = tempfile::tempfile().unwrap();
        let old = TimeSpec::At { sec: 1000, nsec: 0 };
        stamp_mtime(f.as_fd(), old);
        let stamp = TimeSpec::At { sec: 2000, nsec: 5 };
        truncated(f.as_fd(), libc::O_WRONLY, stamp, 1000).unwrap();
        assert_eq!(mtime(f.as_fd()), (1000, 0), "no O_TRUNC: untouched");
        sys::fchmod(f.as_fd(), 0o4755).unwrap();
        truncated(f.as_fd(), libc::O_WRONLY | libc::O_TRUNC, stamp, 0).unwrap();
        assert_eq!(mtime(f.as_fd()), (2000, 5));
        let mode = sys::fstat(f.as_fd()).unwrap().st_mode & 0o7777;
        assert_eq!(mode, 0o4755, "root keeps its setuid bit");
        truncated(f.as_fd(), libc::O_WRONLY | libc::O_TRUNC, stamp, 1000).unwrap();
        let mode = sys::fstat(f.as_fd()).unwrap().st_mode & 0o7777;
        assert_eq!(mode, 0o755, "another caller loses it");
    }

    /// A replica over a fresh temp dir: local, or handled as a network one.
    fn replica(network: bool) -> (tempfile::TempDir, Arc<Replica>) {
        let dir = tempfile::tempdir().unwrap();
        let r = Replica::open(0, dir.path().to_path_buf(), false, 1).unwrap();
        if network {
            r.always_use_workers();
        }
        (dir, r)
    }

    fn atime(fd: BorrowedFd<'_>) -> (i64, i64) {
        let st = sys::fstat(fd).unwrap();
        (st.st_atime, st.st_atime_nsec)
    }

    #[test]
    fn every_write_sets_the_newest_stamp_of_the_file() {
        let (_d, local) = replica(false);
        let order = Arc::new(OrderLock::default());
        let f = tempfile::tempfile().unwrap();
        let newer = Stamp::new(TimeSpec::At { sec: 20, nsec: 7 }, &order);
        let older = Stamp::new(TimeSpec::At { sec: 10, nsec: 0 }, &order);
        // The older write finishing last still leaves the newest stamp.
        newer.apply(&local, f.as_fd());
        older.apply(&local, f.as_fd());
        assert_eq!(mtime(f.as_fd()), (20, 7));
        assert!(!order.owes(), "a local replica is stamped at once");
    }

    #[test]
    fn a_network_replica_is_owed_its_times_until_the_flush_pays_them_in_one_call() {
        let (_d, net) = replica(true);
        let order = Arc::new(OrderLock::default());
        let f = tempfile::tempfile().unwrap();
        sys::utimens_at(
            f.as_fd(),
            c"",
            TimeSpec::At { sec: 1, nsec: 0 },
            TimeSpec::At { sec: 1, nsec: 0 },
        )
        .unwrap();
        order.owe_creation(to_nanos(5, 0));
        for sec in [20, 10] {
            Stamp::new(TimeSpec::At { sec, nsec: 3 }, &order).apply(&net, f.as_fd());
        }
        assert_eq!(mtime(f.as_fd()), (1, 0), "nothing set per write");
        let settle = Stamp::settling(&order);
        assert!(!order.owes());
        settle.pay(&net, f.as_fd());
        assert_eq!((atime(f.as_fd()), mtime(f.as_fd())), ((5, 0), (20, 3)));
        // Nothing owed: a second flush sets nothing.
        sys::utimens_at(
            f.as_fd(),
            c"",
            TimeSpec::Omit,
            TimeSpec::At { sec: 7, nsec: 0 },
        )
        .unwrap();
        Stamp::settling(&order).pay(&net, f.as_fd());
        assert_eq!(mtime(f.as_fd()), (7, 0));
    }

    #[test]
    fn stamps_round_trip_through_nanoseconds() {
        for (sec, nsec) in [(0, 0), (20, 7), (1_700_000_000, 999_999_999), (-5, 1)] {
            assert_eq!(from_nanos(to_nanos(sec, nsec)), TimeSpec::At { sec, nsec });
        }
        assert_eq!(to_nanos(i64::MAX, 5), i64::MAX, "saturates, never wraps");
    }
}
