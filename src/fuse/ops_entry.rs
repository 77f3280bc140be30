//! The ops that make, move or remove a directory entry: mknod, mkdir, symlink, create,
//! unlink, rmdir, rename, link.
//!
//! Touches the node table (names come and go), the order locks of the files involved, the
//! tree lock (a directory rename holds it alone), the held inodes of a removal, and the
//! replicas through `reach.rs`; create also opens a handle (`handles.rs`, `io_mode.rs`).

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fuser::{Errno, Generation, INodeNo, RenameFlags, ReplyCreate, ReplyEmpty, ReplyEntry};

use super::ChironFs;
use super::handles::OpenFile;
use super::held::HeldInodes;
use super::nodes::Place;
use super::open_flags::{open_reply, replica_flags};
use super::ops_meta::Stat;
use super::reach::at;
use super::stamp::{NewTimes, nanos_of, truncated};
use crate::engine::replica::Replica;
use crate::engine::set::ReplicaJob;
use crate::rules::iomode::Wish;
use crate::sys::{self, Credentials, TimeSpec};

/// How a create makes its file on each replica.
#[derive(Clone, Debug)]
struct Creation {
    /// The replica's open flags (see [`replica_flags`]), O_TRUNC kept.
    flags: i32,
    /// O_EXCL: an existing file is an error, not opened.
    exclusive: bool,
    /// The new file's mode (the caller's umask is applied by the replica).
    mode: u32,
    /// The caller, who loses the setid bits of an existing file it truncates unless root.
    uid: u32,
    /// The new file's times (its stamp also an existing truncated file's mtime).
    times: NewTimes,
}

impl Creation {
    /// Creates the file at `place` on one replica (or, without O_EXCL, opens the file already
    /// there, as open(2) would) and keeps its descriptor in `file`.
    fn run(&self, r: &Replica, place: &Place, file: &OpenFile) -> io::Result<Stat> {
        let create = self.flags | libc::O_CREAT | libc::O_EXCL;
        let (fd, made) = at(r, place, |dir, name| {
            match sys::open_beneath(dir, name, create, self.mode & 0o7777, false) {
                Err(e) if !self.exclusive && e.raw_os_error() == Some(libc::EEXIST) => {
                    sys::open_beneath(dir, name, self.flags, 0, false).map(|fd| (fd, false))
                }
                made => made.map(|fd| (fd, true)),
            }
        })?;
        if made && r.is_local() {
            // A new file: its times, the same on every replica (the caller owns it).
            self.times.apply(fd.as_fd(), c"");
        } else if made {
            // On a network replica a round trip of its own: owed until the file's first flush
            // (see crate::rules::order), where one call sets them with the writes' mtime.
            file.creation_owed.store(true, Ordering::Relaxed);
        } else {
            // The kernel asked to create a name it believed absent; without O_EXCL an
            // existing file was opened as open(2) would.
            truncated(fd.as_fd(), self.flags, self.times.stamp(), self.uid)?;
        }
        let st = sys::fstat(fd.as_fd())?;
        file.store(r, fd);
        Ok((r.index, st))
    }
}

/// How a tmpfile (open(2) with `O_TMPFILE`) is made on each replica: the replica's own
/// unnamed file in the same directory, so that a later link names it on every replica, and
/// a close without a link leaves nothing behind (not even after a crash).
#[derive(Clone, Debug)]
struct Unnamed {
    /// The replica's open flags: the kernel's, `O_TMPFILE` kept, `O_EXCL` dropped (the
    /// kernel itself refuses a link of an `O_EXCL` tmpfile; the replicas' must stay linkable).
    flags: i32,
    /// The new file's mode (the caller's umask is applied by the replica).
    mode: u32,
    /// The new file's times, the same on every replica.
    times: NewTimes,
    /// Set by a replica whose filesystem has no `O_TMPFILE` (SSHFS, NFS): then no replica
    /// keeps one and the caller gets EOPNOTSUPP, as from such a filesystem itself.
    unsupported: Arc<AtomicBool>,
}

impl Unnamed {
    /// Makes the unnamed file in directory `dir` on one replica and keeps its descriptor in
    /// `file`; None where the filesystem cannot (not a fault of the replica).
    fn run(&self, r: &Replica, dir: &Place, file: &OpenFile) -> io::Result<Option<Stat>> {
        let made = at(r, dir, |parent, name| {
            sys::open_beneath(parent, name, self.flags, self.mode & 0o7777, true)
        });
        let fd = match made {
            // EISDIR: a kernel that predates O_TMPFILE takes it for O_DIRECTORY alone.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
                self.unsupported.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            made => made?,
        };
        self.times.apply(fd.as_fd(), c"");
        let st = sys::fstat(fd.as_fd())?;
        file.store(r, fd);
        Ok(Some((r.index, st)))
    }
}

impl ChironFs {
    /// A change of these directories' entries failed: some replica may have made it, so
    /// what they hold and their attributes are asked of the replicas again (see
    /// crate::rules::listed and crate::rules::dir_attrs).
    fn lost_track(&self, dirs: &[INodeNo]) {
        dirs.iter().for_each(|d| self.nodes.lost_track(d.0));
    }

    /// The times of an entry made now (see [`NewTimes`]): one replica's clock where every
    /// replica is local.
    fn new_times(&self) -> NewTimes {
        NewTimes::new(self.set.replicas().iter().all(|r| r.is_local()))
    }

    /// MKNOD, as the caller (`creds`).
    pub(super) fn do_mknod(
        &self,
        creds: Credentials,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.make(creds, "mknod", parent, name, reply, move |dir, name| {
            sys::mknod_at(dir, name, mode, rdev as libc::dev_t)
        });
    }

    /// MKDIR, as the caller (`creds`).
    pub(super) fn do_mkdir(
        &self,
        creds: Credentials,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        reply: ReplyEntry,
    ) {
        self.make(creds, "mkdir", parent, name, reply, move |dir, name| {
            sys::mkdir_at(dir, name, mode)
        });
    }

    /// SYMLINK `link_name` in `parent` to `target`, as the caller (`creds`).
    pub(super) fn do_symlink(
        &self,
        creds: Credentials,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let target = match sys::cstr(target.as_os_str()) {
            Ok(t) => t,
            Err(e) => return reply.error(e.into()),
        };
        self.make(
            creds,
            "symlink",
            parent,
            link_name,
            reply,
            move |dir, name| sys::symlink_at(&target, dir, name),
        );
    }

    /// Creates `name` in `parent` on every replica as the caller, then answers with its entry.
    fn make(
        &self,
        creds: Credentials,
        op: &str,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEntry,
        make: impl Fn(BorrowedFd<'_>, &CStr) -> io::Result<()> + Send + Sync + 'static,
    ) {
        let _tree = self.tree_shared();
        let path = match self.child_place(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let rel = path.clone();
        let times = self.new_times();
        let before = sys::coarse_realtime();
        let result = self.mutate(op, &path, &creds, move |r| {
            at(r, &rel, |dir, name| {
                make(dir, name)?;
                // The new object's times, the same on every replica (the caller owns it).
                times.apply(dir, name);
                Ok((r.index, sys::lstat_at(dir, name)?))
            })
        });
        match result {
            Ok(stat) => {
                let links = i64::from(stat.1.st_mode & libc::S_IFMT == libc::S_IFDIR);
                self.nodes.dir_changed(parent.0, before, links);
                self.entry(parent, name, stat, true, reply)
            }
            Err(e) => {
                self.lost_track(&[parent]);
                reply.error(e)
            }
        }
    }

    /// CREATE `name` in `parent` as the caller (`creds`) and open it with `flags`.
    pub(super) fn do_create(
        &self,
        creds: Credentials,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _tree = self.tree_shared();
        let place = match self.child_place(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let path = place.path().to_path_buf();
        let file = self.new_open_file(path.clone(), flags);
        let how = Creation {
            flags: replica_flags(flags),
            exclusive: flags & libc::O_EXCL != 0,
            mode,
            uid: creds.uid,
            times: self.new_times(),
        };
        let stamp = how.times.stamp();
        let f = Arc::clone(&file);
        let before = sys::coarse_realtime();
        let result = self.mutate("create", &path, &creds, move |r| how.run(r, &place, &f));
        match result {
            Ok(stat) => {
                self.nodes.dir_changed(parent.0, before, 0);
                self.answer_created(parent, name, file, (stat, stamp), reply)
            }
            Err(e) => {
                self.lost_track(&[parent]);
                reply.error(e)
            }
        }
    }

    /// TMPFILE: an unnamed regular file in `parent` (open(2) with `O_TMPFILE`), made on every
    /// replica as the caller (`creds`) and opened with `flags`. It has a node but no name, so
    /// it is reached through its handle (as a file unlinked while open is) until a LINK names
    /// it; closed unnamed, it is gone from every replica.
    pub(super) fn do_tmpfile(
        &self,
        creds: Credentials,
        parent: INodeNo,
        mode: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _tree = self.tree_shared();
        let dir = match self.place(parent) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        // The directory is what the journal and the logs name until the file has a name.
        let path = dir.path().to_path_buf();
        let file = self.new_open_file(path.clone(), flags);
        let how = Unnamed {
            flags: (replica_flags(flags) & !(libc::O_EXCL | libc::O_TRUNC)) | libc::O_TMPFILE,
            mode,
            times: self.new_times(),
            unsupported: Arc::default(),
        };
        let unsupported = Arc::clone(&how.unsupported);
        let stamp = how.times.stamp();
        let f = Arc::clone(&file);
        let result = self.mutate("tmpfile", &path, &creds, move |r| how.run(r, &dir, &f));
        match result {
            Ok(Some(stat)) if !unsupported.load(Ordering::Relaxed) => {
                let id = self.nodes.remember_unnamed();
                self.answer_new_file(id, file, (stat, stamp), reply)
            }
            // Dropping `file` closes what the other replicas made: nothing is left of it.
            Ok(_) => reply.error(Errno::EOPNOTSUPP),
            Err(e) => reply.error(e),
        }
    }

    /// Registers the created file's node (with the times its creation left owed to network
    /// replicas, made at `stamp`) and answers with its entry and a handle.
    fn answer_created(
        &self,
        parent: INodeNo,
        name: &OsStr,
        file: Arc<OpenFile>,
        ((index, st), stamp): (Stat, TimeSpec),
        reply: ReplyCreate,
    ) {
        let id = self.nodes.remember(parent.0, name, index, &st);
        self.answer_new_file(id, file, ((index, st), stamp), reply)
    }

    /// Answers a create or tmpfile of node `id` with its entry and a handle in the I/O mode
    /// the inode allows (the times its creation left owed to network replicas made at `stamp`:
    /// never for a tmpfile, which network replicas cannot make).
    fn answer_new_file(
        &self,
        id: u64,
        file: Arc<OpenFile>,
        ((_, st), stamp): (Stat, TimeSpec),
        reply: ReplyCreate,
    ) {
        file.ino.store(id, Ordering::Relaxed);
        // Usually a new inode; an existing file opened without O_EXCL may be in
        // passthrough mode, and then this open must join it.
        let order = self.nodes.order_lock(id);
        let _in_order = order.lock();
        if file.creation_owed.swap(false, Ordering::Relaxed)
            && let Some(nanos) = nanos_of(stamp)
        {
            order.owe_creation(nanos);
        }
        let wish = Wish {
            writable: true,
            eligible: false,
        };
        let decision = self.decide_io(id, wish);
        let backing = decision.backing.as_ref().map(|(b, _)| Arc::clone(b));
        let fh = self.register_open(id, file, decision.mode, decision.backing);
        let attr = self.attr_of(id, &st);
        match open_reply(decision.mode, backing, true, self.direct_writes) {
            (flags, Some(b)) => {
                reply.created_passthrough(&self.ttl, &attr, Generation(0), fh, flags, &b)
            }
            (flags, None) => reply.created(&self.ttl, &attr, Generation(0), fh, flags),
        }
    }

    /// UNLINK (`dir` false) or RMDIR: on every replica, the freed inodes evicted after the
    /// reply (see [`HeldInodes`]).
    pub(super) fn remove(
        &self,
        op: &str,
        parent: INodeNo,
        name: &OsStr,
        dir: bool,
        reply: ReplyEmpty,
    ) {
        let tree = self.tree_shared();
        // Kept apart from a concurrent open of the same file (see `open`).
        let known = self.nodes.known_child(parent.0, name);
        let locks = self.order_locks(&[known]);
        let in_order: Vec<_> = locks.iter().map(|l| l.lock()).collect();
        let path = match self.child_place(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let rel = path.clone();
        let held = HeldInodes::new(self.io_uring);
        let holder = held.clone();
        let before = sys::coarse_realtime();
        let result = self.mutate(op, &path, &Credentials::root(), move |r| {
            at(r, &rel, |d, n| {
                if !dir {
                    holder.hold(r, d, n);
                }
                sys::unlink_at(d, n, dir)
            })
        });
        match result {
            Ok(()) => {
                self.nodes.dir_changed(parent.0, before, -i64::from(dir));
                self.nodes.unlink(parent.0, name);
                if let Some(id) = known {
                    self.handles.note_gone(parent.0, name, id);
                }
                if let (true, Some(id)) = (dir, known) {
                    self.set
                        .replicas()
                        .iter()
                        .for_each(|r| r.dirs.drop_node(id));
                }
                reply.ok()
            }
            Err(e) => {
                self.lost_track(&[parent]);
                reply.error(e)
            }
        }
        drop(in_order);
        drop(tree);
        held.release(&self.reaper);
    }

    /// RENAME `name` in `parent` to `newname` in `newparent`, with the kernel's flags
    /// (RENAME_NOREPLACE, RENAME_EXCHANGE).
    pub(super) fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let bits = flags.bits();
        // Moving a directory moves everything below it: nothing else may run meanwhile (see
        // `tree`). The kernel looked both names up first; unknown counts as a directory.
        let exchange = bits & libc::RENAME_EXCHANGE != 0;
        let moves_dir = self.nodes.child_is_dir(parent.0, name).unwrap_or(true)
            || (exchange
                && self
                    .nodes
                    .child_is_dir(newparent.0, newname)
                    .unwrap_or(true));
        let (alone, shared) = if moves_dir {
            (Some(self.tree_exclusive()), None)
        } else {
            (None, Some(self.tree_shared()))
        };
        // Kept apart from concurrent opens of the moved and the replaced file (see `open`).
        let moving = self.nodes.known_child(parent.0, name);
        let locks = self.order_locks(&[moving, self.nodes.known_child(newparent.0, newname)]);
        let in_order: Vec<_> = locks.iter().map(|l| l.lock()).collect();
        let (from, to) = match (
            self.child_place(parent, name),
            self.child_place(newparent, newname),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        // No network filesystem exchanges two names atomically (NFS and SSHFS answer EINVAL):
        // asked of all, the local replicas would exchange and the others be taken out.
        if exchange
            && self
                .set
                .priority_order()
                .iter()
                .any(|&i| !self.set.replicas()[i].is_local())
        {
            return reply.error(Errno::EINVAL);
        }
        // A file this rename replaces (the kernel looked it up) is evicted after the reply.
        let replaces_file =
            !exchange && self.nodes.child_is_dir(newparent.0, newname) == Some(false);
        let held = HeldInodes::new(self.io_uring);
        let job = rename_job(&from, &to, bits, replaces_file.then(|| held.clone()));
        // Both names are recorded by a running resync.
        let before = sys::coarse_realtime();
        let result = self
            .set
            .mutate_paths("rename", &from, Some(&to), &Credentials::root(), job)
            .map_err(Errno::from_i32);
        match result {
            Ok(()) => {
                if moves_dir {
                    // Link counts and the moved directory's own times: asked next time.
                    for dir in [parent.0, newparent.0].into_iter().chain(moving) {
                        self.nodes.dir_attrs_drop(dir);
                    }
                } else {
                    self.nodes.dir_changed(parent.0, before, 0);
                    self.nodes.dir_changed(newparent.0, before, 0);
                }
                self.nodes
                    .rename(parent.0, name, newparent.0, newname, exchange);
                if let (false, Some(id)) = (exchange, moving) {
                    self.handles.note_gone(parent.0, name, id);
                }
                reply.ok()
            }
            Err(e) => {
                self.lost_track(&[parent, newparent]);
                reply.error(e)
            }
        }
        drop((in_order, alone, shared));
        held.release(&self.reaper);
    }

    /// LINK: a new name `newname` in `newparent` for node `ino`. A node without a name (a
    /// tmpfile) is linked through its open handle, on every replica from its descriptor there.
    pub(super) fn do_link(
        &self,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _tree = self.tree_shared();
        let to = match self.child_place(newparent, newname) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let (job, from): (ReplicaJob<libc::stat>, Option<Place>) = match self.place(ino) {
            Ok(from) => (link_job(&from, &to), Some(from)),
            Err(e) => match self.handles.file_on_all(ino.0, &self.set.priority_order()) {
                Some(handle) => (link_open_job(handle, &to), None),
                None => return reply.error(e),
            },
        };
        // A running resync records both names: they must end up one inode on its target.
        let before = sys::coarse_realtime();
        let result = self
            .set
            .mutate_paths("link", &to, from.as_deref(), &Credentials::root(), job)
            .map_err(Errno::from_i32);
        match result {
            Ok(st) => {
                self.nodes.dir_changed(newparent.0, before, 0);
                self.nodes.link(ino.0, newparent.0, newname);
                reply.entry(&self.ttl, &self.attr_of(ino.0, &st), Generation(0));
            }
            Err(e) => {
                self.lost_track(&[newparent]);
                reply.error(e)
            }
        }
    }
}

/// The replicas' link of the entry at `from` to `to`, answering the new entry's lstat.
fn link_job(from: &Place, to: &Place) -> ReplicaJob<libc::stat> {
    let (a, b) = (from.clone(), to.clone());
    Arc::new(move |r: &Replica| {
        at(r, &a, |old_dir, old_name| {
            at(r, &b, |new_dir, new_name| {
                sys::link_at(old_dir, old_name, new_dir, new_name)?;
                sys::lstat_at(new_dir, new_name)
            })
        })
    })
}

/// The replicas' link of the file open as `handle` (a tmpfile) to `to`, each from its own
/// descriptor, answering the new entry's lstat.
fn link_open_job(handle: Arc<OpenFile>, to: &Place) -> ReplicaJob<libc::stat> {
    let to = to.clone();
    Arc::new(move |r: &Replica| {
        let fd = handle.fd(r)?;
        at(r, &to, |new_dir, new_name| {
            sys::link_fd(fd.as_fd(), new_dir, new_name)?;
            sys::lstat_at(new_dir, new_name)
        })
    })
}

/// The replicas' rename of `from` to `to` with `bits`; `holder` (for a rename over a file)
/// holds the replaced file's inode until after the reply.
fn rename_job(from: &Place, to: &Place, bits: u32, holder: Option<HeldInodes>) -> ReplicaJob<()> {
    let (a, b) = (from.clone(), to.clone());
    Arc::new(move |r: &Replica| {
        at(r, &a, |old_dir, old_name| {
            at(r, &b, |new_dir, new_name| {
                if let Some(holder) = &holder {
                    holder.hold(r, new_dir, new_name);
                }
                match sys::rename_at(old_dir, old_name, new_dir, new_name, bits) {
                    // A filesystem that takes no rename flags (NFS, SSHFS: EINVAL) gets
                    // RENAME_NOREPLACE as a look and a plain rename: this daemon is its only
                    // writer and holds both names' locks, so nothing comes in between.
                    Err(e)
                        if bits == libc::RENAME_NOREPLACE
                            && e.raw_os_error() == Some(libc::EINVAL) =>
                    {
                        match sys::lstat_at(new_dir, new_name) {
                            Ok(_) => Err(io::Error::from_raw_os_error(libc::EEXIST)),
                            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                                sys::rename_at(old_dir, old_name, new_dir, new_name, 0)
                            }
                            Err(e) => Err(e),
                        }
                    }
                    done => done,
                }
            })
        })
    })
}
