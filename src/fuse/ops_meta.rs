//! The ops on a node's metadata and the filesystem's: lookup, getattr, setattr, readlink,
//! statfs.
//!
//! Touches the node table (lookup registers the nodes it finds), the handle table (a file
//! unlinked while open is reached through its handles) and the replicas, through `reach.rs`.

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::Arc;

use fuser::{
    Errno, FileHandle, Generation, INodeNo, ReplyAttr, ReplyData, ReplyEntry, ReplyStatfs,
    TimeOrNow,
};

use super::ChironFs;
use super::attr::time_spec;
use super::handles::OpenFile;
use super::nodes::Place;
use super::reach::{at, is_meta_dir, lstat, open_file};
use super::stamp::now;
use crate::engine::replica::Replica;
use crate::engine::set::ReplicaJob;
use crate::rules::arbitrate::Outcome;
use crate::sys::{self, Credentials, TimeSpec};

/// A job's result paired with the replica that produced it (to remember hard links).
pub(super) type Stat = (usize, libc::stat);

/// What a setattr changes (None: left as it is); `T` is how its times are given: as the
/// kernel asks, then as every replica is to set them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct SetAttr<T = Option<TimeOrNow>> {
    /// chmod.
    pub mode: Option<u32>,
    /// chown's owner.
    pub uid: Option<u32>,
    /// chown's group.
    pub gid: Option<u32>,
    /// truncate.
    pub size: Option<u64>,
    /// Access time.
    pub atime: T,
    /// Modification time.
    pub mtime: T,
}

impl SetAttr {
    /// The times every replica sets: the kernel's "now" (touch, and the kernel's truncate)
    /// becomes `stamp`, one exact time, so that every replica records the same; a truncate
    /// marks the file modified even when no mtime is asked (Linux always does, size changed
    /// or not; left to each replica's own clock, the replicas' mtimes would differ).
    fn pinned(self, stamp: TimeSpec) -> SetAttr<TimeSpec> {
        let resolve = |t| match time_spec(t) {
            TimeSpec::Now => stamp,
            t => t,
        };
        let mut mtime = resolve(self.mtime);
        if self.size.is_some() && mtime == TimeSpec::Omit {
            mtime = stamp;
        }
        SetAttr {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            atime: resolve(self.atime),
            mtime,
        }
    }
}

impl SetAttr<TimeSpec> {
    /// Applies the owner, mode and times to `name` in `dir` (or, `name` empty, to the open
    /// file `dir`) on one replica and returns its new `stat`. The size is set before.
    fn apply(&self, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
        if self.uid.is_some() || self.gid.is_some() {
            let (uid, gid) = (self.uid.unwrap_or(u32::MAX), self.gid.unwrap_or(u32::MAX));
            sys::chown_at(dir, name, uid, gid)?;
        }
        if let Some(mode) = self.mode {
            if name.is_empty() {
                sys::fchmod(dir, mode & 0o7777)?;
            } else {
                sys::chmod_at(dir, name, mode & 0o7777)?;
            }
        }
        if self.atime != TimeSpec::Omit || self.mtime != TimeSpec::Omit {
            sys::utimens_at(dir, name, self.atime, self.mtime)?;
        }
        sys::lstat_at(dir, name)
    }

    /// The setattr on one replica: through the file's place, or through its handle once it
    /// has no name (fchmod, futimens, ftruncate after unlink).
    fn run(
        &self,
        r: &Replica,
        place: Option<&Place>,
        handle: Option<&Arc<OpenFile>>,
    ) -> io::Result<libc::stat> {
        let Some(place) = place else {
            // Unlinked while open: through the handle (the caller made sure of one).
            let fd = handle
                .ok_or(io::Error::from_raw_os_error(libc::ENOENT))?
                .fd(r)?;
            if let Some(size) = self.size {
                sys::ftruncate(fd.as_fd(), size)?;
            }
            return self.apply(fd.as_fd(), c"");
        };
        if let Some(size) = self.size {
            match handle {
                Some(f) => sys::ftruncate(f.fd(r)?.as_fd(), size)?,
                None => sys::ftruncate(open_file(r, place, libc::O_WRONLY)?.as_fd(), size)?,
            }
        }
        at(r, place, |dir, name| self.apply(dir, name))
    }
}

/// What a setattr goes through: the file's path (for the journal and the logs), its place if
/// it has a name, and the handle the kernel named. A file unlinked while open has no place,
/// and then a handle, the kernel's or any.
struct Target {
    path: PathBuf,
    place: Option<Place>,
    handle: Option<Arc<OpenFile>>,
}

/// The statfs answer from the replicas' own: the one with the least space available decides
/// (a write must fit on every replica), with the fewest free inodes of them all. None if no
/// replica answered.
fn least_room(answers: &[libc::statvfs]) -> Option<(&libc::statvfs, libc::fsfilcnt_t)> {
    let least = answers
        .iter()
        .min_by_key(|s| s.f_bavail as u128 * s.f_frsize as u128)?;
    let ffree = answers.iter().map(|s| s.f_ffree).min().unwrap_or(0);
    Some((least, ffree))
}

impl ChironFs {
    /// Registers a found entry, or one just `made` here, and answers the kernel with it. A
    /// directory made here is listed (crate::rules::listed) before the kernel hears of it, so
    /// no entry made in it can come first.
    pub(super) fn entry(
        &self,
        parent: INodeNo,
        name: &OsStr,
        (index, st): Stat,
        made: bool,
        reply: ReplyEntry,
    ) {
        let id = self.nodes.remember(parent.0, name, index, &st);
        if made && st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            self.nodes.made_dir(id);
            self.keep_dir_attrs(id, index, &st, self.nodes.dir_generation(id));
        }
        reply.entry(&self.ttl, &self.attr_of(id, &st), Generation(0));
    }

    /// LOOKUP: `name` in `parent` as the metadata replica shows it; the state directory at the
    /// root is never found.
    pub(super) fn do_lookup(&self, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        // A name known absent (see crate::rules::listed) costs no replica a round trip; one
        // too long for any filesystem is the replica's to refuse (ENAMETOOLONG), and the dots
        // (never in a listing's names) are the replica's to answer.
        let ordinary = name.len() <= libc::NAME_MAX as usize && name != "." && name != "..";
        let known_absent = || ordinary && self.nodes.surely_absent(parent.0, name);
        if is_meta_dir(parent, name) || known_absent() {
            return reply.error(Errno::ENOENT);
        }
        let _tree = self.tree_shared();
        let path = match self.child_place(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let rel = path.clone();
        match self.read_meta("lookup", &path, move |r| lstat(r, &rel)) {
            Ok((index, st)) => self.entry(parent, name, (index, st), false, reply),
            Err(e) => reply.error(e),
        }
    }

    /// GETATTR: through the handle the kernel names (fstat), else through the node's path.
    pub(super) fn do_getattr(&self, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _tree = self.tree_shared();
        let path = self.place(ino);
        // fstat of a file unlinked (or a directory removed or replaced) while open: no name
        // left, but its handles still reach it.
        let file = fh.and_then(|fh| self.handles.file(fh).ok()).or_else(|| {
            let handles = &self.handles;
            path.is_err()
                .then(|| handles.file_of(ino.0).or_else(|| handles.dir_of(ino.0)))
                .flatten()
        });
        if let Some(file) = file {
            return match self.read_handle("getattr", file, sys::fstat) {
                Ok(st) => reply.attr(&self.ttl, &self.attr_of(ino.0, &st)),
                Err(e) => reply.error(e),
            };
        }
        let path = match path {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        // A directory's attributes carried forward through this daemon's own changes of its
        // entries answer without a network round trip (see crate::rules::dir_attrs).
        // Only while the replica they came from is still the one asked first.
        if let Some((from, st)) = self.nodes.dir_attrs(ino.0, self.ttl)
            && self.set.priority_order().first() == Some(&from)
        {
            return reply.attr(&self.ttl, &self.attr_of(ino.0, &st));
        }
        let generation = self.nodes.dir_generation(ino.0);
        let rel = path.clone();
        match self.read_meta("getattr", &path, move |r| lstat(r, &rel)) {
            Ok((index, st)) => {
                self.keep_dir_attrs(ino.0, index, &st, generation);
                reply.attr(&self.ttl, &self.attr_of(ino.0, &st))
            }
            Err(e) => reply.error(e),
        }
    }

    /// Keeps `st` (fetched from replica `index` by a fetch that began at `generation`) to be
    /// carried forward if it is a directory's on a network replica; a local replica answers
    /// in microseconds, and exactly.
    fn keep_dir_attrs(&self, dir: u64, index: usize, st: &libc::stat, generation: u64) {
        let network = self
            .set
            .replicas()
            .get(index)
            .is_some_and(|r| !r.is_local());
        if network && st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            self.nodes.dir_fetched(dir, index, st, generation);
        }
    }

    /// SETATTR: chown, chmod, truncate and utimens on every replica, one time for all.
    pub(super) fn do_setattr(
        &self,
        ino: INodeNo,
        fh: Option<FileHandle>,
        change: SetAttr,
        reply: ReplyAttr,
    ) {
        let _tree = self.tree_shared();
        let Target {
            path,
            place,
            handle,
        } = match self.setattr_target(ino, fh) {
            Ok(target) => target,
            Err(e) => return reply.error(e),
        };
        let order = self.nodes.order_lock(ino.0);
        // A truncate, and a change of times (ordered with the writes, whose owed mtime it
        // replaces: see crate::rules::order), go alone in the file's order.
        let _in_order = (change.size.is_some() || change.atime.is_some() || change.mtime.is_some())
            .then(|| order.lock());
        // The kernel has checked the caller may set times at all.
        let change = change.pinned(now());
        order.forgive(
            change.atime != TimeSpec::Omit,
            change.mtime != TimeSpec::Omit,
        );
        let result = self.mutate("setattr", &path, &Credentials::root(), move |r| {
            change.run(r, place.as_ref(), handle.as_ref())
        });
        // A directory's carried-forward attributes no longer hold, nor does a fetch that
        // was under way (see crate::rules::dir_attrs).
        self.nodes.dir_attrs_drop(ino.0);
        match result {
            Ok(st) => reply.attr(&self.ttl, &self.attr_of(ino.0, &st)),
            Err(e) => reply.error(e),
        }
    }

    /// What a setattr of `ino` goes through (see [`Target`]).
    fn setattr_target(&self, ino: INodeNo, fh: Option<FileHandle>) -> Result<Target, Errno> {
        let handle = fh.and_then(|fh| self.handles.file(fh).ok());
        match self.place(ino) {
            Ok(p) => Ok(Target {
                path: p.path().to_path_buf(),
                place: Some(p),
                handle,
            }),
            Err(e) => match handle.or_else(|| self.handles.file_of(ino.0)) {
                Some(f) => Ok(Target {
                    path: f.path(),
                    place: None,
                    handle: Some(f),
                }),
                None => Err(e),
            },
        }
    }

    /// READLINK, from the metadata replica.
    pub(super) fn do_readlink(&self, ino: INodeNo, reply: ReplyData) {
        let _tree = self.tree_shared();
        let path = match self.place(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let rel = path.clone();
        match self.read_meta("readlink", &path, move |r| at(r, &rel, sys::readlink_at)) {
            Ok((_, target)) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    /// STATFS: every replica asked, the tightest answer given (see [`least_room`]).
    pub(super) fn do_statfs(&self, reply: ReplyStatfs) {
        let job: ReplicaJob<libc::statvfs> = Arc::new(|r: &Replica| sys::statvfs(r.root()?));
        let order = self.set.priority_order();
        let answers: Vec<libc::statvfs> = self
            .set
            .run(&order, &Credentials::root(), &job)
            .into_iter()
            .filter_map(|(_, o)| match o {
                Outcome::Done(s) => Some(s),
                _ => None,
            })
            .collect();
        let Some((least, ffree)) = least_room(&answers) else {
            return reply.error(Errno::EIO);
        };
        reply.statfs(
            least.f_blocks,
            least.f_bfree,
            least.f_bavail,
            least.f_files,
            ffree,
            least.f_bsize as u32,
            least.f_namemax as u32,
            least.f_frsize as u32,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const STAMP: TimeSpec = TimeSpec::At { sec: 100, nsec: 1 };

    fn change(size: Option<u64>, atime: Option<TimeOrNow>, mtime: Option<TimeOrNow>) -> SetAttr {
        SetAttr {
            mode: Some(0o640),
            uid: None,
            gid: Some(5),
            size,
            atime,
            mtime,
        }
    }

    #[test]
    fn now_becomes_one_stamp_for_every_replica() {
        let pinned = change(None, Some(TimeOrNow::Now), Some(TimeOrNow::Now)).pinned(STAMP);
        assert_eq!((pinned.atime, pinned.mtime), (STAMP, STAMP));
        assert_eq!(
            (pinned.mode, pinned.uid, pinned.gid),
            (Some(0o640), None, Some(5))
        );
    }

    #[test]
    fn times_not_asked_for_are_left_alone() {
        let pinned = change(None, None, None).pinned(STAMP);
        assert_eq!(
            (pinned.atime, pinned.mtime),
            (TimeSpec::Omit, TimeSpec::Omit)
        );
    }

    #[test]
    fn a_truncate_moves_the_mtime_unless_one_is_given() {
        let pinned = change(Some(0), None, None).pinned(STAMP);
        assert_eq!((pinned.atime, pinned.mtime), (TimeSpec::Omit, STAMP));
        let given = UNIX_EPOCH + Duration::from_secs(7);
        let pinned = change(Some(0), None, Some(TimeOrNow::SpecificTime(given))).pinned(STAMP);
        assert_eq!(pinned.mtime, TimeSpec::At { sec: 7, nsec: 0 });
        assert_eq!(pinned.size, Some(0));
    }

    #[test]
    fn the_replica_with_the_least_room_answers_statfs() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::File::open(dir.path()).unwrap();
        let real = sys::statvfs(root.as_fd()).unwrap();
        let with = |bavail, frsize, ffree| {
            let mut s = real;
            (s.f_bavail, s.f_frsize, s.f_ffree) = (bavail, frsize, ffree);
            s
        };
        assert!(least_room(&[]).is_none());
        // 100 blocks of 4 KiB is less room than 50 of 64 KiB; the fewest free inodes of all.
        let answers = [
            with(50, 65536, 10),
            with(100, 4096, 900),
            with(1000, 4096, 5),
        ];
        let (least, ffree) = least_room(&answers).unwrap();
        assert_eq!((least.f_bavail, least.f_frsize), (100, 4096));
        assert_eq!(ffree, 5);
    }
}
