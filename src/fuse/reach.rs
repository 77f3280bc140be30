//! How a request reaches the replicas: the tree lock, a node's place, the caller's
//! credentials, the order locks, and the jobs run through the
//! [`ReplicaSet`](crate::engine::set::ReplicaSet) (fan-out for
//! mutations, fail-over for reads), by path or through an open handle.
//!
//! Every op file goes through here; this file touches the node table, the handle table and
//! the replica set, and answers no request itself (but [`reply_empty`]).

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use fuser::{Errno, FileAttr, FileHandle, INodeNo, ReplyEmpty, Request};

use super::ChironFs;
use super::attr::{attr, with_owed};
use super::handles::OpenFile;
use super::nodes::Place;
use super::open_flags;
use super::stamp::{Stamp, now};
use crate::engine::replica::Replica;
use crate::engine::set::ReplicaJob;
use crate::rules::order::OrderLock;
use crate::sys::{self, Credentials};

/// Writes of at least this many bytes are copied to the replicas in parallel; smaller ones run
/// one replica after the other on the FUSE thread (a hand-off costs more than they do).
const BULK_WRITE: usize = 64 << 10;

impl ChironFs {
    /// The credentials a request runs under on the replicas: its caller's (root needs no
    /// supplementary groups, so none are read for it).
    pub(super) fn caller(&self, req: &Request) -> Credentials {
        let (uid, gid, pid) = (req.uid(), req.gid(), req.pid());
        let groups = if uid == 0 {
            Vec::new()
        } else {
            self.callers
                .groups((pid, uid, gid), Instant::now(), || sys::caller_groups(pid))
        };
        Credentials::of_caller(uid, gid, groups)
    }

    /// See [`ChironFs::tree`]; taken once per request, at its start.
    pub(super) fn tree_shared(&self) -> RwLockReadGuard<'_, ()> {
        self.tree.read().unwrap_or_else(|e| e.into_inner())
    }

    /// See [`ChironFs::tree`]; taken by a rename that moves a directory.
    pub(super) fn tree_exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.tree.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The attributes the kernel is given for node `ino` found as `st` on a replica: with the
    /// times it still owes its network replicas in place of those replica's own (a network
    /// replica's copy shows its server's times until they are paid, at the release).
    pub(super) fn attr_of(&self, ino: u64, st: &libc::stat) -> FileAttr {
        let a = attr(ino, st);
        match self.nodes.order_lock_if_any(ino) {
            Some(order) => with_owed(a, st, order.shown()),
            None => a,
        }
    }

    /// The path of node `ino` (ENOENT once it has no name).
    pub(super) fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.nodes.path(ino.0).ok_or(Errno::ENOENT)
    }

    /// Where node `ino` is: its directory's node and its path.
    pub(super) fn place(&self, ino: INodeNo) -> Result<Place, Errno> {
        self.nodes.place(ino.0).ok_or(Errno::ENOENT)
    }

    /// Where `name` in `parent` is (the name checked: one component, not the state directory).
    pub(super) fn child_place(&self, parent: INodeNo, name: &OsStr) -> Result<Place, Errno> {
        if name.as_bytes().contains(&b'/') {
            return Err(Errno::EINVAL);
        }
        if is_meta_dir(parent, name) {
            // The replicas' own state: never created, renamed or removed through the mount.
            return Err(Errno::EPERM);
        }
        self.nodes.child_place(parent.0, name).ok_or(Errno::ENOENT)
    }

    /// The order locks of these nodes, each once, in id order (so two holders of several can
    /// never wait on each other in a cycle).
    pub(super) fn order_locks(&self, ids: &[Option<u64>]) -> Vec<Arc<OrderLock>> {
        let mut ids: Vec<u64> = ids.iter().flatten().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|id| self.nodes.order_lock(id))
            .collect()
    }

    /// A mutation of `path` fanned out to every replica in service, as `creds`.
    pub(super) fn mutate<T: Send + 'static>(
        &self,
        op: &str,
        path: &Path,
        creds: &Credentials,
        job: impl Fn(&Replica) -> io::Result<T> + Send + Sync + 'static,
    ) -> Result<T, Errno> {
        let job: ReplicaJob<T> = Arc::new(job);
        self.set
            .mutate(op, path, creds, job)
            .map_err(Errno::from_i32)
    }

    /// A read-type job on the metadata replica, failing over to the next ones.
    pub(super) fn read_meta<T: Send + 'static>(
        &self,
        op: &str,
        path: &Path,
        job: impl Fn(&Replica) -> io::Result<T> + Send + Sync + 'static,
    ) -> Result<(usize, T), Errno> {
        let order = self.set.priority_order();
        let job: ReplicaJob<T> = Arc::new(job);
        self.set
            .read(op, path, &order, &Credentials::root(), job)
            .map_err(Errno::from_i32)
    }

    /// A read-type job through an open handle, on the replicas in the handle's read order.
    pub(super) fn read_handle<T: Send + 'static>(
        &self,
        op: &str,
        file: Arc<OpenFile>,
        job: impl Fn(BorrowedFd<'_>) -> io::Result<T> + Send + Sync + 'static,
    ) -> Result<T, Errno> {
        let order = file.read_order.clone();
        let path = file.path();
        let job: ReplicaJob<T> = Arc::new(move |r: &Replica| job(file.fd(r)?.as_fd()));
        self.set
            .read(op, &path, &order, &Credentials::root(), job)
            .map(|(_, answer)| answer)
            .map_err(Errno::from_i32)
    }

    /// Fans a data mutation out over the replicas holding this handle, in file order.
    pub(super) fn mutate_handle<T: Send + 'static>(
        &self,
        op: &str,
        ino: INodeNo,
        fh: FileHandle,
        job: impl Fn(&Replica, BorrowedFd<'_>, &Stamp) -> io::Result<T> + Send + Sync + 'static,
    ) -> Result<T, Errno> {
        self.mutate_handle_with(op, ino, fh, None, job)
    }

    /// [`ChironFs::mutate_handle`]; `write` = Some((offset, len)) for a write: it runs
    /// alongside writes to other byte ranges of the file, and, when large, copies on the
    /// replicas in parallel (see [`crate::engine::set::ReplicaSet::mutate_bulk`]).
    pub(super) fn mutate_handle_with<T: Send + 'static>(
        &self,
        op: &str,
        ino: INodeNo,
        fh: FileHandle,
        write: Option<(u64, u64)>,
        job: impl Fn(&Replica, BorrowedFd<'_>, &Stamp) -> io::Result<T> + Send + Sync + 'static,
    ) -> Result<T, Errno> {
        let file = self.handles.file(fh)?;
        let order = self.nodes.order_lock(ino.0);
        let _in_order = match write {
            Some((offset, len)) => order.lock_range(offset, len),
            None => order.lock(),
        };
        // Taken under the file's order lock, so the stamps of one file only go forward. The
        // release (alone in the file's order) pays what writes left owed; a flush or an fsync
        // changes no time.
        let stamp = match op {
            "release" => Stamp::settling(&order),
            "flush" | "fsync" => Stamp::unchanged(&order),
            _ => Stamp::new(now(), &order),
        };
        let path = file.path();
        let job: ReplicaJob<T> = Arc::new(move |r: &Replica| {
            let fd = file.fd(r)?;
            job(r, fd.as_fd(), &stamp)
        });
        let creds = Credentials::root();
        let result = if write.is_some_and(|(_, len)| len >= BULK_WRITE as u64) {
            self.set.mutate_bulk(op, &path, &creds, job)
        } else {
            self.set.mutate(op, &path, &creds, job)
        };
        match op {
            "release" => order.settled(),
            "fsync" => order.drained(),
            _ => {}
        }
        result.map_err(Errno::from_i32)
    }
}

/// Calls `f(dirfd, name)` for the entry at `place` on a replica. Its directory is reached
/// through the replica's kept handle of that node (crate::engine::dirfds), else opened beneath the
/// root with no symlink allowed on the way (and kept); the root itself is (root, ".").
pub(super) fn at<T>(
    r: &Replica,
    place: &Place,
    f: impl FnOnce(BorrowedFd<'_>, &CStr) -> io::Result<T>,
) -> io::Result<T> {
    match (place.parent(), place.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            let dir = r.dirs.get_or_open(place.dir(), || {
                sys::open_dir_path(r.root()?, &sys::rel_cstr(parent)?)
            })?;
            f(dir.as_fd(), &sys::cstr(name)?)
        }
        (_, Some(name)) => f(r.root()?, &sys::cstr(name)?),
        _ => f(r.root()?, c"."),
    }
}

/// Opens the file at `rel` on a replica, beneath its root, with the kernel's open `flags`
/// made fit for a replica (see [`open_flags::replica_flags`]).
pub(super) fn open_file(r: &Replica, rel: &Path, flags: i32) -> io::Result<OwnedFd> {
    sys::open_beneath(
        r.root()?,
        &sys::rel_cstr(rel)?,
        open_flags::replica_flags(flags),
        0,
        false,
    )
}

/// The replica's `lstat` of the entry at `place`.
pub(super) fn lstat(r: &Replica, place: &Place) -> io::Result<libc::stat> {
    at(r, place, sys::lstat_at)
}

/// Whether `name` in `parent` is the replicas' hidden metadata directory (`.chironfs` at the
/// root): invisible through the mount.
pub(super) fn is_meta_dir(parent: INodeNo, name: &OsStr) -> bool {
    parent == INodeNo::ROOT && name == OsStr::new(crate::rules::state::META_DIR)
}

/// Answers a request that returns nothing: done, or its error.
pub(super) fn reply_empty<T>(result: Result<T, Errno>, reply: ReplyEmpty) {
    match result {
        Ok(_) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_directory_is_hidden_at_the_root_only() {
        let meta = OsStr::new(crate::rules::state::META_DIR);
        assert!(is_meta_dir(INodeNo::ROOT, meta));
        assert!(
            !is_meta_dir(INodeNo(2), meta),
            "a subdirectory may use the name"
        );
        assert!(!is_meta_dir(INodeNo::ROOT, OsStr::new("data")));
    }
}
