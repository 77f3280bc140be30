//! The FUSE glue: turns each kernel request into replica jobs run through the [`ReplicaSet`]
//! (fan-out for mutations, fail-over for reads) and keeps the node and handle tables.

pub mod callers;
pub mod nodes;

use std::collections::HashMap;
use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};

use crate::engine::replica::{Replica, ReplicaFd};
use crate::engine::set::{ReplicaJob, ReplicaSet};
use crate::fuse::callers::GroupsCache;
use crate::fuse::nodes::{NodeTable, Place};
use crate::rules::arbitrate::Outcome;
use crate::rules::iomode::{IoModes, Mode, Ticket, Wish};
use crate::rules::order::OrderLock;
use crate::sys::{self, Credentials, TimeSpec, XattrOp, XattrReply};

/// Writes of at least this many bytes are copied to the replicas in parallel; smaller ones run
/// one replica after the other on the FUSE thread (a hand-off costs more than they do).
const BULK_WRITE: usize = 64 << 10;

/// How long the kernel may cache attributes and names.
const TTL: Duration = Duration::from_secs(1);

/// Flags never passed to a replica's open: appends are placed by the kernel's offset on every
/// replica, O_DIRECT is not promised to the kernel, creation is decided by the op itself.
const STRIPPED_OPEN_FLAGS: i32 =
    libc::O_APPEND | libc::O_DIRECT | libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY;

/// One open file: a descriptor per replica (opened lazily for reads) and the replica serving
/// its reads first.
#[derive(Debug)]
struct OpenFile {
    /// The node it was opened as (0 until `create` knows it): an unlinked file that is still
    /// open is reached through its handles.
    ino: AtomicU64,
    /// Where the file was when opened; it may have moved since (see [`OpenFile::path`]).
    opened_as: PathBuf,
    nodes: Arc<NodeTable>,
    flags: i32,
    /// Closed on their own replica's workers when the last user lets go (see
    /// [`Replica::adopt`]): a close on a hung replica must never hold a FUSE thread.
    fds: Vec<Mutex<Option<Arc<ReplicaFd>>>>,
    read_order: Vec<usize>,
    /// How the kernel serves it (counted per inode until release, see [`crate::rules::iomode`]).
    io: Mutex<Option<Ticket<BackingId>>>,
    /// Set for a handle open for writing: compactions keep its path in the journal while it
    /// is open.
    writer: std::sync::OnceLock<crate::engine::set::WriterToken>,
}

impl crate::engine::set::OpenWriter for OpenFile {
    fn current_path(&self) -> Option<PathBuf> {
        OpenFile::current_path(self)
    }
}

impl OpenFile {
    fn new(
        nodes: &Arc<NodeTable>,
        path: PathBuf,
        flags: i32,
        replicas: usize,
        read_order: Vec<usize>,
    ) -> Self {
        OpenFile {
            ino: AtomicU64::new(0),
            opened_as: path,
            nodes: Arc::clone(nodes),
            // Kept for lazy re-opens on fail-over, which must never truncate again.
            flags: flags & !libc::O_TRUNC,
            fds: (0..replicas).map(|_| Mutex::new(None)).collect(),
            read_order,
            io: Mutex::new(None),
            writer: std::sync::OnceLock::new(),
        }
    }

    fn store(&self, replica: &Replica, fd: OwnedFd) {
        *self.fds[replica.index]
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(replica.adopt(fd)));
    }

    /// Where the file is now: renamed files are followed through the node table. None once
    /// it has no name left (unlinked while open).
    fn current_path(&self) -> Option<PathBuf> {
        match self.ino.load(Ordering::Relaxed) {
            0 => Some(self.opened_as.clone()),
            ino => self.nodes.path(ino),
        }
    }

    /// The path to name in log lines.
    fn path(&self) -> PathBuf {
        self.current_path()
            .unwrap_or_else(|| self.opened_as.clone())
    }

    /// This replica's descriptor, opened now if the handle has none yet (a read fail-over).
    /// The file is opened where it is now, never at a name another file may have taken since.
    fn fd(&self, replica: &Replica) -> io::Result<Arc<ReplicaFd>> {
        let mut slot = self.fds[replica.index]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = slot.as_ref() {
            return Ok(Arc::clone(fd));
        }
        // Unlinked while open: nothing left to open on a replica that had no descriptor.
        let path = self
            .current_path()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let fd = Arc::new(replica.adopt(open_file(replica, &path, self.flags)?));
        *slot = Some(Arc::clone(&fd));
        Ok(fd)
    }
}

/// One open directory: the listing read at opendir, read again at a rewind (offset 0 after
/// the first pass), so that rewinddir(3) sees the entries made since, as POSIX asks.
#[derive(Debug)]
struct OpenDir {
    entries: Mutex<Arc<Vec<sys::DirEntry>>>,
    fresh: std::sync::atomic::AtomicBool,
}

/// The chironfs filesystem.
#[derive(Debug)]
pub struct ChironFs {
    set: Arc<ReplicaSet>,
    nodes: Arc<NodeTable>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<OpenDir>>>,
    /// Orders directory renames against every other path-based operation: a rename moves a
    /// whole subtree, and an operation on a path inside it that the kernel does not order
    /// against the rename must reach every replica on the same side of it (else it succeeds
    /// on some replicas and fails on others, which then get blamed). Held shared from the
    /// moment a path is computed until its fan-out ends; a directory rename holds it alone.
    tree: RwLock<()>,
    next_fh: AtomicU64,
    open_ticket: AtomicUsize,
    max_write: u32,
    /// Kernel passthrough for read-only opens: wanted by the admin (`passthrough=`), then
    /// whether the kernel accepted it at init.
    passthrough: bool,
    /// Writable opens outside passthrough get direct I/O: wanted by the admin
    /// (`direct_writes=`), then whether the kernel can still map such files shared.
    direct_writes: bool,
    /// FUSE over io_uring: wanted by the admin (`io_uring=`), then whether the kernel
    /// offered it at init.
    io_uring: bool,
    /// Some replica reports errors at close(2): an NFS or SSHFS replica reports failed
    /// write-backs there, so every FLUSH must reach every replica. close(2) on a local
    /// filesystem reports nothing (its errors come from write and fsync), so a set of local
    /// replicas has nothing to pass on. Fixed at mount, as the replicas' kinds are.
    flush_reports: bool,
    /// Non-root callers' supplementary groups, read from /proc once per moment.
    callers: GroupsCache,
    io_modes: Arc<IoModes<BackingId>>,
    /// Set after the first failed backing-file registration, so it is logged once.
    passthrough_failed: std::sync::atomic::AtomicBool,
    /// Where deleted or replaced files' held handles go to be closed (`HeldInodes`).
    reaper: mpsc::Sender<Vec<OwnedFd>>,
}

/// How the admin wants the kernel to serve open files and requests (`passthrough=`,
/// `direct_writes=`, `io_uring=`).
#[derive(Clone, Copy, Debug)]
pub struct KernelIo {
    /// Kernel passthrough for read-only opens of local replicas: the kernel reads the
    /// replica's file itself.
    pub passthrough: bool,
    /// Direct I/O for writable opens: no page-cache copy of written data, and writes to
    /// disjoint ranges of one file in parallel (crate::rules::order keeps the replicas equal), as
    /// mergerfs with cache.files=off. Reads through the same descriptor then come to the
    /// daemon too; other read-only opens keep their page cache (the kernel drops the range a
    /// direct write changed).
    pub direct_writes: bool,
    /// Ask the kernel for FUSE over io_uring (crate::daemon; fuser's `uring` transport):
    /// per-CPU request queues, no cross-CPU wake-up per request.
    pub io_uring: bool,
}

/// Inodes whose last name a mutation removes (an unlink, a rename over a file), held open on
/// local replicas until the caller has its answer. Evicting an inode, freeing its pages or
/// blocks, is most of such a mutation's cost (185 µs for 1 MiB on ext4, 11 ms for 64 MiB); held,
/// it happens at [`HeldInodes::release`], after the reply, instead of inside the syscall.
#[derive(Clone)]
struct HeldInodes {
    held: Arc<Mutex<Vec<OwnedFd>>>,
    /// Small files too. Over /dev/fuse the request thread runs on another CPU than the
    /// caller, so freeing a small file there costs less than waking a reaper (daemon CPU
    /// per 4 KiB delete 75 -> 60 us, bench deletes 9.4k -> 11k/s). Over io_uring it runs on
    /// the caller's CPU, and any freeing there slows the caller (bench deletes 14k -> 8k/s).
    small_too: bool,
}

impl HeldInodes {
    /// Nothing held yet; `small_too`: whether files below [`HOLD_FROM_BYTES`] are held.
    fn new(small_too: bool) -> Self {
        HeldInodes {
            held: Arc::default(),
            small_too,
        }
    }

    /// Holds `name` in `dir` if it exists and its removal would free it. Not on a network
    /// replica: NFS would rename a held file to .nfsXXXX instead of removing it.
    fn hold(&self, r: &Replica, dir: BorrowedFd<'_>, name: &CStr) {
        if !r.is_local() {
            return;
        }
        if !self.small_too {
            // A file with another name is not freed at all, a small one in microseconds.
            match sys::lstat_at(dir, name) {
                Ok(st) if st.st_nlink > 1 || (st.st_blocks as u64) * 512 < HOLD_FROM_BYTES => {
                    return;
                }
                Err(_) => return,
                Ok(_) => {}
            }
        }
        if let Ok(fd) = sys::hold_inode_at(dir, name) {
            self.held.lock().unwrap_or_else(|e| e.into_inner()).push(fd);
        }
    }

    /// Hands what was held to the reaper thread, which closes it: the evictions happen
    /// there. Called after the reply, with the operation's locks released. Not on the
    /// request thread: over io_uring that thread shares the caller's CPU, and freeing there
    /// (170 us per MiB) would keep the caller waiting or push it to the other CPU.
    fn release(self, reaper: &mpsc::Sender<Vec<OwnedFd>>) {
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|e| e.into_inner()));
        if held.is_empty() {
            return;
        }
        // A reaper that is gone (unmounting) leaves the closing to this thread.
        let _ = reaper.send(held);
    }
}

/// Over /dev/fuse, the allocated size from which a removed file is held (see
/// [`HeldInodes`]); below it, freeing inside the unlink costs less than holding.
const HOLD_FROM_BYTES: u64 = 64 * 1024;

/// Threads that close held inodes: freeing big files goes on in parallel, as it did on the
/// request threads.
const REAPERS: usize = 2;

/// Starts the threads that close held inodes (see [`HeldInodes::release`]); they end when the
/// filesystem, the sender's owner, is dropped.
fn start_reaper() -> mpsc::Sender<Vec<OwnedFd>> {
    let (tx, rx) = mpsc::channel::<Vec<OwnedFd>>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..REAPERS {
        let rx = Arc::clone(&rx);
        let spawned = std::thread::Builder::new()
            .name(format!("chironfs-reaper{i}"))
            .spawn(move || {
                loop {
                    // The lock is held only to take one batch; closing happens outside it.
                    let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match next {
                        Ok(held) => drop(held),
                        Err(_) => return,
                    }
                }
            });
        if let Err(e) = spawned {
            // Without any reaper the receiver is dropped: every send fails and closes in place.
            log::warn!("cannot start a thread that frees deleted files: {e}");
        }
    }
    tx
}

/// Calls `f(dirfd, name)` for the entry at `place` on a replica. Its directory is reached
/// through the replica's kept handle of that node (crate::engine::dirfds), else opened beneath the
/// root with no symlink allowed on the way (and kept); the root itself is (root, ".").
fn at<T>(
    r: &Replica,
    place: &Place,
    f: impl FnOnce(BorrowedFd<'_>, &CStr) -> io::Result<T>,
) -> io::Result<T> {
    match (place.parent(), place.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            let dir = r.dirs.get_or_open(place.dir(), || {
                sys::open_dir_path(r.root(), &sys::rel_cstr(parent)?)
            })?;
            f(dir.as_fd(), &sys::cstr(name)?)
        }
        (_, Some(name)) => f(r.root(), &sys::cstr(name)?),
        _ => f(r.root(), c"."),
    }
}

fn open_file(r: &Replica, rel: &Path, flags: i32) -> io::Result<OwnedFd> {
    let flags = (flags & !STRIPPED_OPEN_FLAGS) | libc::O_NOFOLLOW;
    sys::open_beneath(r.root(), &sys::rel_cstr(rel)?, flags, 0, false)
}

fn lstat(r: &Replica, place: &Place) -> io::Result<libc::stat> {
    at(r, place, sys::lstat_at)
}

fn to_time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

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

fn kind_of_dirent(d_type: u8) -> FileType {
    match d_type {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn attr(ino: u64, st: &libc::stat) -> FileAttr {
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

fn time_spec(t: Option<TimeOrNow>) -> TimeSpec {
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

/// "Now" as one exact time, taken once per mutation: every replica records the same
/// timestamp, where letting each replica's clock tick on its own would leave the replicas'
/// mtimes a few microseconds apart (and rsync, make or a verify would see them differ).
fn now() -> TimeSpec {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    TimeSpec::At {
        sec: d.as_secs() as i64,
        nsec: d.subsec_nanos() as i64,
    }
}

/// Sets the mtime of an open file to `stamp` after a change of its data (as the change itself
/// would have, but with the same value on every replica). Best effort: a replica that refuses
/// is no reason to fail the write that already succeeded.
fn stamp_mtime(fd: BorrowedFd<'_>, stamp: TimeSpec) {
    let _ = sys::utimens_at(fd, c"", TimeSpec::Omit, stamp);
}

/// What a write or open(O_TRUNC) does natively for a caller without CAP_FSETID: the setuid
/// bit goes, and setgid on a group-executable file. The replicas are written as root, who
/// keeps them, so the daemon clears them itself when the kernel leaves it to the filesystem:
/// open(O_TRUNC) with FUSE_ATOMIC_O_TRUNC (for a caller other than root), and direct-I/O
/// writes (the kernel flags those with FUSE_WRITE_KILL_SUIDGID).
fn clear_setid(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mode = sys::fstat(fd)?.st_mode & 0o7777;
    let mut kept = mode & !libc::S_ISUID;
    if mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
        kept &= !libc::S_ISGID;
    }
    if kept != mode {
        sys::fchmod(fd, kept)?;
    }
    Ok(())
}

/// A job's result paired with the replica that produced it (to remember hard links).
type Stat = (usize, libc::stat);

impl ChironFs {
    /// The credentials a request runs under on the replicas: its caller's (root needs no
    /// supplementary groups, so none are read for it).
    fn caller(&self, req: &Request) -> Credentials {
        let (uid, gid, pid) = (req.uid(), req.gid(), req.pid());
        let groups = if uid == 0 {
            Vec::new()
        } else {
            self.callers
                .groups((pid, uid, gid), Instant::now(), || sys::caller_groups(pid))
        };
        Credentials::of_caller(uid, gid, groups)
    }

    /// A filesystem over `set`; `max_write` is the largest write the kernel may send;
    /// `io` says how the kernel may serve open files (both wishes, checked at init).
    pub fn new(set: Arc<ReplicaSet>, max_write: u32, io: KernelIo) -> Self {
        ChironFs {
            flush_reports: !set.replicas().iter().all(|r| r.is_local()),
            set,
            nodes: Arc::new(NodeTable::new()),
            files: Mutex::default(),
            dirs: Mutex::default(),
            tree: RwLock::new(()),
            next_fh: AtomicU64::new(1),
            open_ticket: AtomicUsize::new(0),
            max_write,
            passthrough: io.passthrough,
            direct_writes: io.direct_writes,
            io_uring: io.io_uring,
            io_modes: Arc::new(IoModes::default()),
            callers: GroupsCache::default(),
            passthrough_failed: std::sync::atomic::AtomicBool::new(false),
            reaper: start_reaper(),
        }
    }

    /// See [`ChironFs::tree`]; taken once per request, at its start.
    fn tree_shared(&self) -> RwLockReadGuard<'_, ()> {
        self.tree.read().unwrap_or_else(|e| e.into_inner())
    }

    fn tree_exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.tree.write().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.nodes.path(ino.0).ok_or(Errno::ENOENT)
    }

    /// Where node `ino` is: its directory's node and its path.
    fn place(&self, ino: INodeNo) -> Result<Place, Errno> {
        self.nodes.place(ino.0).ok_or(Errno::ENOENT)
    }

    /// Where `name` in `parent` is (the name checked: one component, not the state directory).
    fn child_place(&self, parent: INodeNo, name: &OsStr) -> Result<Place, Errno> {
        if name.as_bytes().contains(&b'/') {
            return Err(Errno::EINVAL);
        }
        if is_meta_dir(parent, name) {
            // The replicas' own state: never created, renamed or removed through the mount.
            return Err(Errno::EPERM);
        }
        self.nodes.child_place(parent.0, name).ok_or(Errno::ENOENT)
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    fn mutate<T: Send + 'static>(
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
    fn read_meta<T: Send + 'static>(
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

    /// Registers a new or found entry and answers the kernel with it.
    fn entry(&self, parent: INodeNo, name: &OsStr, (index, st): Stat, reply: ReplyEntry) {
        let id = self.nodes.remember(parent.0, name, index, &st);
        reply.entry(&TTL, &attr(id, &st), Generation(0));
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
        let stamp = now();
        let result = self.mutate(op, &path, &creds, move |r| {
            at(r, &rel, |dir, name| {
                make(dir, name)?;
                // The new object's times, the same on every replica (the caller owns it).
                let _ = sys::utimens_at(dir, name, stamp, stamp);
                Ok((r.index, sys::lstat_at(dir, name)?))
            })
        });
        match result {
            Ok(stat) => self.entry(parent, name, stat, reply),
            Err(e) => reply.error(e),
        }
    }

    /// The order locks of these nodes, each once, in id order (so two holders of several can
    /// never wait on each other in a cycle).
    fn order_locks(&self, ids: &[Option<u64>]) -> Vec<Arc<OrderLock>> {
        let mut ids: Vec<u64> = ids.iter().flatten().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|id| self.nodes.order_lock(id))
            .collect()
    }

    /// An open handle of `ino`, if any (to reach a file that has no name left).
    fn handle_of(&self, ino: INodeNo) -> Option<Arc<OpenFile>> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|f| f.ino.load(Ordering::Relaxed) == ino.0)
            .cloned()
    }

    /// The entries of directory `path`, from the metadata replica.
    fn list_dir(&self, path: &Path) -> Result<Vec<sys::DirEntry>, Errno> {
        let rel = path.to_path_buf();
        let top = path.as_os_str().is_empty();
        self.read_meta("readdir", path, move |r| {
            sys::read_dir_all(r.root(), &sys::rel_cstr(&rel)?)
        })
        .map(|(_, mut entries)| {
            if top {
                entries.retain(|e| e.name != OsStr::new(crate::rules::state::META_DIR));
            }
            entries
        })
    }

    /// A file being opened for writing is known to the journal from before its open reaches
    /// the replicas (a compaction in between must keep its path), until its release.
    fn track_writer(&self, file: &Arc<OpenFile>) {
        if file.flags & libc::O_ACCMODE != libc::O_RDONLY {
            let weak: std::sync::Weak<OpenFile> = Arc::downgrade(file);
            let _ = file.writer.set(self.set.writer_opened(weak));
        }
    }

    fn new_handle(&self, file: Arc<OpenFile>) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, file);
        FileHandle(fh)
    }

    /// Fans a data mutation out over the replicas holding this handle, in file order.
    fn mutate_handle<T: Send + 'static>(
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
    /// replicas in parallel (see [`ReplicaSet::mutate_bulk`]).
    fn mutate_handle_with<T: Send + 'static>(
        &self,
        op: &str,
        ino: INodeNo,
        fh: FileHandle,
        write: Option<(u64, u64)>,
        job: impl Fn(&Replica, BorrowedFd<'_>, &Stamp) -> io::Result<T> + Send + Sync + 'static,
    ) -> Result<T, Errno> {
        let file = self.file(fh)?;
        let order = self.nodes.order_lock(ino.0);
        let _in_order = match write {
            Some((offset, len)) => order.lock_range(offset, len),
            None => order.lock(),
        };
        // Taken under the file's order lock, so the stamps of one file only go forward.
        let stamp = Stamp::new(now(), &order);
        let path = file.path();
        let job: ReplicaJob<T> = Arc::new(move |r: &Replica| {
            let fd = file.fd(r)?;
            job(r, fd.as_fd(), &stamp)
        });
        let creds = Credentials::root();
        if write.is_some_and(|(_, len)| len >= BULK_WRITE as u64) {
            self.set.mutate_bulk(op, &path, &creds, job)
        } else {
            self.set.mutate(op, &path, &creds, job)
        }
        .map_err(Errno::from_i32)
    }
}

/// The mtime a change of a file's data gives it on every replica: the newest stamp of the
/// file's writes (see [`crate::rules::order`]), so replicas finishing concurrent writes in different
/// orders still end with the same mtime.
struct Stamp(Arc<OrderLock>);

impl Stamp {
    /// Notes `stamp` as the file's newest change.
    fn new(stamp: TimeSpec, order: &Arc<OrderLock>) -> Self {
        if let TimeSpec::At { sec, nsec } = stamp {
            order.note_stamp(sec.saturating_mul(1_000_000_000).saturating_add(nsec));
        }
        Stamp(Arc::clone(order))
    }

    /// Sets the mtime of `fd` (one replica's copy) after its data changed.
    fn apply(&self, fd: BorrowedFd<'_>) {
        self.0.stamp(|nanos| {
            let at = TimeSpec::At {
                sec: nanos.div_euclid(1_000_000_000),
                nsec: nanos.rem_euclid(1_000_000_000),
            };
            stamp_mtime(fd, at);
        });
    }
}

/// Whether init takes FUSE over io_uring, and what it logs, from what the kernel offered and
/// what fuser accepted: a fuser without chironfs's transport (upstream's refuses the flag) is
/// not a kernel with the switch off.
fn io_uring_at_init(offered: bool, accepted: bool) -> (bool, log::Level, &'static str) {
    match (offered, accepted) {
        (_, true) => (
            true,
            log::Level::Info,
            "FUSE over io_uring: requests are served per CPU",
        ),
        (true, false) => (
            false,
            log::Level::Warn,
            "fuser refused the FUSE over io_uring the kernel offers (a fuser without chironfs's \
             transport, vendor/fuser/CHIRONFS.md): requests come through /dev/fuse",
        ),
        (false, false) => (
            false,
            log::Level::Info,
            "the kernel offers no FUSE over io_uring (fuse.enable_uring=0): requests come \
             through /dev/fuse",
        ),
    }
}

#[test]
fn io_uring_at_init_tells_fuser_from_kernel() {
    let (on, _, served) = io_uring_at_init(true, true);
    assert!(on && served.contains("served per CPU"));
    let (on, level, refused) = io_uring_at_init(true, false);
    assert!(!on && level == log::Level::Warn && refused.contains("fuser refused"));
    let (on, level, off) = io_uring_at_init(false, false);
    assert!(!on && level == log::Level::Info && off.contains("offers no FUSE over io_uring"));
    assert!(!refused.contains("offers no FUSE over io_uring"));
}

impl Filesystem for ChironFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(self.max_write);
        // One at a time: add_capabilities refuses the whole set if the kernel lacks one.
        for flag in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            // The kernel enforces the POSIX ACLs stored on the replicas (with
            // default_permissions it would otherwise check the mode bits only, and a user
            // granted access by an ACL would be refused).
            InitFlags::FUSE_POSIX_ACL,
            // The kernel leaves the umask to us: the replica applies the caller's (set per
            // request) unless the parent directory has a default ACL, which then wins.
            InitFlags::FUSE_DONT_MASK,
        ] {
            let _ = config.add_capabilities(flag);
        }
        // Offered only with fuse.enable_uring=1; otherwise every request comes through
        // /dev/fuse, as before.
        if self.io_uring {
            let uring = InitFlags::FUSE_OVER_IO_URING;
            let offered = config.capabilities().contains(uring);
            let accepted = config.add_capabilities(uring).is_ok();
            let (on, level, message) = io_uring_at_init(offered, accepted);
            self.io_uring = on;
            log::log!(level, "{message}");
        }
        // A direct-I/O file may be mapped shared only with this (kernel 6.6+); without it
        // writes go through the page cache, as an application mapping its file expects.
        if self.direct_writes {
            self.direct_writes = config
                .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
                .is_ok();
            if !self.direct_writes {
                log::info!("the kernel cannot map direct-I/O files: writes go through its cache");
            }
        }
        // Passthrough needs the backing files' filesystems one level below ours at most; a
        // kernel without it (or a daemon without CAP_SYS_ADMIN, refused later per file) keeps
        // every read in the daemon.
        if self.passthrough {
            self.passthrough = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !self.passthrough {
                log::info!(
                    "the kernel offers no FUSE passthrough: every read goes through chironfs"
                );
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if is_meta_dir(parent, name) {
            return reply.error(Errno::ENOENT);
        }
        let _tree = self.tree_shared();
        let path = match self.child_place(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let rel = path.clone();
        match self.read_meta("lookup", &path, move |r| lstat(r, &rel)) {
            Ok((index, st)) => self.entry(parent, name, (index, st), reply),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.nodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _tree = self.tree_shared();
        let path = self.place(ino);
        // fstat of a file unlinked while open: no name left, but its handles still reach it.
        let file = fh
            .and_then(|fh| self.file(fh).ok())
            .or_else(|| path.is_err().then(|| self.handle_of(ino)).flatten());
        if let Some(file) = file {
            let order: Vec<usize> = file.read_order.clone();
            let path = file.path();
            let job: ReplicaJob<libc::stat> =
                Arc::new(move |r: &Replica| sys::fstat(file.fd(r)?.as_fd()));
            return match self
                .set
                .read("getattr", &path, &order, &Credentials::root(), job)
            {
                Ok((_, st)) => reply.attr(&TTL, &attr(ino.0, &st)),
                Err(e) => reply.error(Errno::from_i32(e)),
            };
        }
        let path = match path {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let rel = path.clone();
        match self.read_meta("getattr", &path, move |r| lstat(r, &rel)) {
            Ok((_, st)) => reply.attr(&TTL, &attr(ino.0, &st)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _tree = self.tree_shared();
        // A file unlinked while open (fchmod, futimens, ftruncate after unlink) has no name:
        // then the change goes through one of its handles.
        let handle = fh.and_then(|fh| self.file(fh).ok());
        let (path, place, handle) = match self.place(ino) {
            Ok(p) => (p.path().to_path_buf(), Some(p), handle),
            Err(e) => match handle.or_else(|| self.handle_of(ino)) {
                Some(f) => (f.path(), None, Some(f)),
                None => return reply.error(e),
            },
        };
        let order = self.nodes.order_lock(ino.0);
        let _in_order = size.map(|_| order.lock());
        // UTIME_NOW (touch, and the kernel's truncate) becomes one exact time, so that every
        // replica records the same; the kernel has checked the caller may set times at all.
        let stamp = now();
        let resolve = |t| match time_spec(t) {
            TimeSpec::Now => stamp,
            t => t,
        };
        let (atime, mut mtime) = (resolve(atime), resolve(mtime));
        if size.is_some() && mtime == TimeSpec::Omit {
            // A truncate marks the file modified (Linux always does, size changed or not);
            // left to each replica's own clock, the replicas' mtimes would differ.
            mtime = stamp;
        }
        let result = self.mutate("setattr", &path, &Credentials::root(), move |r| {
            let change = |dir: BorrowedFd<'_>, name: &CStr| -> io::Result<libc::stat> {
                if uid.is_some() || gid.is_some() {
                    sys::chown_at(dir, name, uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX))?;
                }
                if let Some(mode) = mode {
                    if name.is_empty() {
                        sys::fchmod(dir, mode & 0o7777)?;
                    } else {
                        sys::chmod_at(dir, name, mode & 0o7777)?;
                    }
                }
                if atime != TimeSpec::Omit || mtime != TimeSpec::Omit {
                    sys::utimens_at(dir, name, atime, mtime)?;
                }
                sys::lstat_at(dir, name)
            };
            let Some(place) = &place else {
                // Unlinked while open: through the handle (the match above made sure of one).
                let fd = handle
                    .as_ref()
                    .ok_or(io::Error::from_raw_os_error(libc::ENOENT))?
                    .fd(r)?;
                if let Some(size) = size {
                    sys::ftruncate(fd.as_fd(), size)?;
                }
                return change(fd.as_fd(), c"");
            };
            if let Some(size) = size {
                match &handle {
                    Some(f) => sys::ftruncate(f.fd(r)?.as_fd(), size)?,
                    None => sys::ftruncate(open_file(r, place, libc::O_WRONLY)?.as_fd(), size)?,
                }
            }
            at(r, place, change)
        });
        match result {
            Ok(st) => reply.attr(&TTL, &attr(ino.0, &st)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
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

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let creds = self.caller(req).with_umask(umask);
        self.make(creds, "mknod", parent, name, reply, move |dir, name| {
            sys::mknod_at(dir, name, mode, rdev as libc::dev_t)
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let creds = self.caller(req).with_umask(umask);
        self.make(creds, "mkdir", parent, name, reply, move |dir, name| {
            sys::mkdir_at(dir, name, mode)
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove("unlink", parent, name, false, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove("rmdir", parent, name, true, reply);
    }

    fn symlink(
        &self,
        req: &Request,
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
            self.caller(req),
            "symlink",
            parent,
            link_name,
            reply,
            move |dir, name| sys::symlink_at(&target, dir, name),
        );
    }

    fn rename(
        &self,
        _req: &Request,
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
        let locks = self.order_locks(&[
            self.nodes.known_child(parent.0, name),
            self.nodes.known_child(newparent.0, newname),
        ]);
        let in_order: Vec<_> = locks.iter().map(|l| l.lock()).collect();
        let (from, to) = match (
            self.child_place(parent, name),
            self.child_place(newparent, newname),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let (a, b) = (from.clone(), to.clone());
        // A file this rename replaces (the kernel looked it up) is evicted after the reply.
        let replaces_file =
            !exchange && self.nodes.child_is_dir(newparent.0, newname) == Some(false);
        let held = HeldInodes::new(self.io_uring);
        let holder = held.clone();
        let job: ReplicaJob<()> = Arc::new(move |r: &Replica| {
            at(r, &a, |old_dir, old_name| {
                at(r, &b, |new_dir, new_name| {
                    if replaces_file {
                        holder.hold(r, new_dir, new_name);
                    }
                    sys::rename_at(old_dir, old_name, new_dir, new_name, bits)
                })
            })
        });
        // Both names are recorded by a running resync.
        let result = self
            .set
            .mutate_paths("rename", &from, Some(&to), &Credentials::root(), job)
            .map_err(Errno::from_i32);
        match result {
            Ok(()) => {
                self.nodes
                    .rename(parent.0, name, newparent.0, newname, exchange);
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
        drop((in_order, alone, shared));
        held.release(&self.reaper);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _tree = self.tree_shared();
        let (from, to) = match (self.place(ino), self.child_place(newparent, newname)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let (a, b) = (from.clone(), to.clone());
        let job: ReplicaJob<libc::stat> = Arc::new(move |r: &Replica| {
            at(r, &a, |old_dir, old_name| {
                at(r, &b, |new_dir, new_name| {
                    sys::link_at(old_dir, old_name, new_dir, new_name)?;
                    sys::lstat_at(new_dir, new_name)
                })
            })
        });
        // A running resync records both names: they must end up one inode on its target.
        let result = self
            .set
            .mutate_paths("link", &to, Some(&from), &Credentials::root(), job)
            .map_err(Errno::from_i32);
        match result {
            Ok(st) => {
                self.nodes.link(ino.0, newparent.0, newname);
                reply.entry(&TTL, &attr(ino.0, &st), Generation(0));
            }
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _tree = self.tree_shared();
        let flags = flags.0;
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        // The kernel sends OPEN without holding any lock a rename or unlink of the same file
        // would wait for: the file's order lock keeps them apart, so every replica opens the
        // same file (the path is read under the lock, after any rename that got there first).
        // With passthrough, read-only opens take it too: the I/O modes of one inode are
        // decided one open at a time (see crate::rules::iomode).
        let lock = self.nodes.order_lock(ino.0);
        let _in_order = (writable || self.passthrough).then(|| lock.lock());
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let ticket = self.open_ticket.fetch_add(1, Ordering::Relaxed);
        let order = self.set.data_order(ticket);
        let file = Arc::new(OpenFile::new(
            &self.nodes,
            path.clone(),
            flags,
            self.set.replicas().len(),
            order.clone(),
        ));
        self.track_writer(&file);
        file.ino.store(ino.0, Ordering::Relaxed);
        let result = if writable {
            let f = Arc::clone(&file);
            let stamp = now();
            let uid = req.uid();
            self.mutate("open", &path, &Credentials::root(), move |r| {
                let fd = open_file(r, &f.opened_as, flags)?;
                if flags & libc::O_TRUNC != 0 {
                    // O_TRUNC updates the mtime (and ctime) even of an empty file.
                    stamp_mtime(fd.as_fd(), stamp);
                    if uid != 0 {
                        clear_setid(fd.as_fd())?;
                    }
                }
                f.store(r, fd);
                Ok(None)
            })
        } else {
            let f = Arc::clone(&file);
            let job: ReplicaJob<()> = Arc::new(move |r: &Replica| f.fd(r).map(drop));
            self.set
                .read("open", &path, &order, &Credentials::root(), job)
                .map(|(index, ())| Some(index))
                .map_err(Errno::from_i32)
        };
        match result {
            Ok(served_by) => self.answer_open(ino, file, writable, served_by, reply),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let order = file.read_order.clone();
        let path = file.path();
        let job: ReplicaJob<Vec<u8>> = Arc::new(move |r: &Replica| {
            sys::pread_full(file.fd(r)?.as_fd(), size as usize, offset)
        });
        match self
            .set
            .read("read", &path, &order, &Credentials::root(), job)
        {
            Ok((_, data)) => reply.data(&data),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data: Arc<[u8]> = Arc::from(data);
        let len = data.len() as u32;
        let range = Some((offset, data.len() as u64));
        let kill_setid = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.mutate_handle_with("write", ino, fh, range, move |_, fd, stamp| {
            if kill_setid {
                clear_setid(fd)?;
            }
            sys::pwrite_full(fd, &data, offset)?;
            if !data.is_empty() {
                stamp.apply(fd);
            }
            Ok(())
        }) {
            Ok(()) => reply.written(len),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // ENOSYS makes the kernel stop sending FLUSH: one round trip less per close(2).
        if !self.flush_reports {
            return reply.error(Errno::ENOSYS);
        }
        match self.file(fh) {
            Ok(f) if f.flags & libc::O_ACCMODE == libc::O_RDONLY => return reply.ok(),
            Err(e) => return reply.error(e),
            _ => {}
        }
        match self.mutate_handle("flush", ino, fh, |_, fd, _| sys::flush(fd)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Dropping the handle closes every replica's descriptor, including those of replicas
        // taken out of service meanwhile (ChironFS 1.1 leaked them).
        let file = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        if let Some(file) = file {
            self.heal_shared_mapping(ino, &file);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.mutate_handle("fsync", ino, fh, move |_, fd, _| sys::fsync(fd, datasync)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _tree = self.tree_shared();
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.list_dir(&path) {
            Ok(entries) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                let dir = OpenDir {
                    entries: Mutex::new(Arc::new(entries)),
                    fresh: true.into(),
                };
                self.dirs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(fh, Arc::new(dir));
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _tree = self.tree_shared();
        let dir = match self
            .dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
        {
            Some(d) => d,
            None => return reply.error(Errno::EBADF),
        };
        if offset == 0 && !dir.fresh.swap(false, Ordering::Relaxed) {
            // A rewind: list again.
            let listed = self.path(ino).and_then(|p| self.list_dir(&p));
            match listed {
                Ok(e) => *dir.entries.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(e),
                Err(e) => return reply.error(e),
            }
        }
        let entries = Arc::clone(&dir.entries.lock().unwrap_or_else(|e| e.into_inner()));
        // Offsets: 1 = ".", 2 = "..", 3.. = entries; the offset given is the last one returned.
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".")),
            (
                self.nodes.parent(ino.0),
                FileType::Directory,
                OsStr::new(".."),
            ),
        ];
        let listed = dots.into_iter().chain(entries.iter().map(|e| {
            let id = self
                .nodes
                .known_child(ino.0, &e.name)
                .unwrap_or_else(|| unknown_ino(ino.0, &e.name));
            (id, kind_of_dirent(e.kind), e.name.as_os_str())
        }));
        for (i, (id, kind, name)) in listed.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(id), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _tree = self.tree_shared();
        // Kept apart from an rmdir of the same directory (see `open`).
        let lock = self.nodes.order_lock(ino.0);
        let _in_order = lock.lock();
        let Ok(path) = self.path(ino) else {
            // Removed while open: nothing is left to make durable.
            return reply.ok();
        };
        let rel = path.clone();
        match self.mutate("fsyncdir", &path, &Credentials::root(), move |r| {
            let dir = open_file(r, &rel, libc::O_RDONLY | libc::O_DIRECTORY)?;
            sys::fsync(dir.as_fd(), datasync)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let job: ReplicaJob<libc::statvfs> = Arc::new(|r: &Replica| sys::statvfs(r.root()));
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
        // The smallest free space decides: a write must fit on every replica.
        let Some(least) = answers
            .iter()
            .min_by_key(|s| s.f_bavail as u128 * s.f_frsize as u128)
        else {
            return reply.error(Errno::EIO);
        };
        let ffree = answers.iter().map(|s| s.f_ffree).min().unwrap_or(0);
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

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _tree = self.tree_shared();
        let (path, attr_name) = match (self.place(ino), sys::cstr(name)) {
            (Ok(p), Ok(n)) => (p, n),
            (Err(e), _) => return reply.error(e),
            (_, Err(e)) => return reply.error(e.into()),
        };
        let (rel, value) = (path.clone(), value.to_vec());
        match self.mutate("setxattr", &path, &Credentials::root(), move |r| {
            at(r, &rel, |dir, n| {
                sys::xattr(dir, n, XattrOp::Set(&attr_name, &value, flags))
            })
        }) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _tree = self.tree_shared();
        let (path, attr_name) = match (self.place(ino), sys::cstr(name)) {
            (Ok(p), Ok(n)) => (p, n),
            (Err(e), _) => return reply.error(e),
            (_, Err(e)) => return reply.error(e.into()),
        };
        let rel = path.clone();
        let result = self.read_meta("getxattr", &path, move |r| {
            at(r, &rel, |dir, n| {
                sys::xattr(dir, n, XattrOp::Get(&attr_name, size as usize))
            })
        });
        reply_xattr(result, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _tree = self.tree_shared();
        let path = match self.place(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let rel = path.clone();
        let result = self.read_meta("listxattr", &path, move |r| {
            at(r, &rel, |dir, n| {
                sys::xattr(dir, n, XattrOp::List(size as usize))
            })
        });
        reply_xattr(result, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _tree = self.tree_shared();
        let (path, attr_name) = match (self.place(ino), sys::cstr(name)) {
            (Ok(p), Ok(n)) => (p, n),
            (Err(e), _) => return reply.error(e),
            (_, Err(e)) => return reply.error(e.into()),
        };
        let rel = path.clone();
        match self.mutate("removexattr", &path, &Credentials::root(), move |r| {
            at(r, &rel, |dir, n| {
                sys::xattr(dir, n, XattrOp::Remove(&attr_name))
            })
        }) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Only reached without default_permissions (never, as mounted): existence is the answer.
        match self.path(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _tree = self.tree_shared();
        let place = match self.child_place(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let path = place.path().to_path_buf();
        let ticket = self.open_ticket.fetch_add(1, Ordering::Relaxed);
        let file = Arc::new(OpenFile::new(
            &self.nodes,
            path.clone(),
            flags & !(libc::O_TRUNC),
            self.set.replicas().len(),
            self.set.data_order(ticket),
        ));
        self.track_writer(&file);
        let f = Arc::clone(&file);
        let open_flags = (flags & !STRIPPED_OPEN_FLAGS) | libc::O_NOFOLLOW;
        let exclusive = flags & libc::O_EXCL != 0;
        let uid = req.uid();
        let stamp = now();
        let creds = self.caller(req).with_umask(umask);
        let result = self.mutate("create", &path, &creds, move |r| {
            let flags = open_flags | libc::O_CREAT | libc::O_EXCL;
            let opened = at(r, &place, |dir, name| {
                match sys::open_beneath(dir, name, flags, mode & 0o7777, false) {
                    Err(e) if !exclusive && e.raw_os_error() == Some(libc::EEXIST) => {
                        sys::open_beneath(dir, name, open_flags, 0, false).map(|fd| (fd, false))
                    }
                    made => made.map(|fd| (fd, true)),
                }
            });
            let fd = match opened {
                Ok((fd, true)) => {
                    // A new file: its times, the same on every replica (the caller owns it).
                    let _ = sys::utimens_at(fd.as_fd(), c"", stamp, stamp);
                    fd
                }
                // The kernel asked to create a name it believed absent; without O_EXCL an
                // existing file was opened as open(2) would.
                Ok((fd, false)) => {
                    if open_flags & libc::O_TRUNC != 0 {
                        stamp_mtime(fd.as_fd(), stamp);
                        if uid != 0 {
                            clear_setid(fd.as_fd())?;
                        }
                    }
                    fd
                }
                Err(e) => return Err(e),
            };
            let st = sys::fstat(fd.as_fd())?;
            f.store(r, fd);
            Ok((r.index, st))
        });
        match result {
            Ok((index, st)) => {
                let id = self.nodes.remember(parent.0, name, index, &st);
                file.ino.store(id, Ordering::Relaxed);
                // Usually a new inode; an existing file opened without O_EXCL may be in
                // passthrough mode, and then this open must join it.
                let order = self.nodes.order_lock(id);
                let _in_order = order.lock();
                let wish = Wish {
                    writable: true,
                    eligible: false,
                };
                let replicas = self.set.replicas();
                let decision = self
                    .io_modes
                    .decide(id, wish, |r| replicas[r].is_in_service());
                let backing = decision.backing.as_ref().map(|(b, _)| Arc::clone(b));
                let ticket = self.io_modes.register(id, decision.mode, decision.backing);
                *file.io.lock().unwrap_or_else(|e| e.into_inner()) = Some(ticket);
                let fh = self.new_handle(file);
                let attr = attr(id, &st);
                match backing {
                    Some(b) => reply.created_passthrough(
                        &TTL,
                        &attr,
                        Generation(0),
                        fh,
                        FopenFlags::FOPEN_DIRECT_IO,
                        &b,
                    ),
                    None => reply.created(&TTL, &attr, Generation(0), fh, self.writer_flags()),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.mutate_handle("fallocate", ino, fh, move |_, fd, stamp| {
            sys::fallocate(fd, mode, offset, length)?;
            // Filesystems differ on which modes move the mtime (ext4: all of them); moving
            // it always, to the same value, keeps the replicas equal whatever they are.
            stamp.apply(fd);
            Ok(())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let file = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let order = file.read_order.clone();
        let path = file.path();
        let job: ReplicaJob<i64> =
            Arc::new(move |r: &Replica| sys::lseek(file.fd(r)?.as_fd(), offset, whence));
        match self
            .set
            .read("lseek", &path, &order, &Credentials::root(), job)
        {
            Ok((_, off)) => reply.offset(off),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    /// No ioctl is passed to the replicas (their fds are private to the daemon): every one
    /// is answered ENOTTY, as tmpfs answers a terminal query. fuser's default would log a
    /// warning for each, and Python's open() asks isatty on every file it opens.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let source = match self.file(fh_in) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        match self.mutate_handle("copy_file_range", ino_out, fh_out, move |r, out, stamp| {
            let input = source.fd(r)?;
            let n = sys::copy_range(input.as_fd(), offset_in, out, offset_out, len)?;
            if n > 0 {
                stamp.apply(out);
            }
            Ok(n)
        }) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }
}

impl ChironFs {
    /// Answers an open that succeeded on the replicas in the I/O mode [`crate::rules::iomode`]
    /// decides: a read-only open served by a local replica may become kernel passthrough
    /// (`served_by` is the replica that opened it; None for a writable open).
    fn answer_open(
        &self,
        ino: INodeNo,
        file: Arc<OpenFile>,
        writable: bool,
        served_by: Option<usize>,
        reply: ReplyOpen,
    ) {
        let replicas = self.set.replicas();
        let wish = Wish {
            writable,
            eligible: self.passthrough && served_by.is_some_and(|i| replicas[i].is_local()),
        };
        let decision = self
            .io_modes
            .decide(ino.0, wish, |r| replicas[r].is_in_service());
        let (mode, backing) = match (decision.mode, decision.backing) {
            (Mode::Passthrough, None) => {
                match served_by.and_then(|i| self.new_backing(&file, i, &reply)) {
                    Some(b) => (Mode::Passthrough, Some(b)),
                    None => (Mode::Cached, None),
                }
            }
            (mode, backing) => (mode, backing),
        };
        let id = backing.as_ref().map(|(b, _)| Arc::clone(b));
        let ticket = self.io_modes.register(ino.0, mode, backing);
        *file.io.lock().unwrap_or_else(|e| e.into_inner()) = Some(ticket);
        let fh = self.new_handle(file);
        match (mode, id) {
            (Mode::Passthrough, Some(id)) => reply.opened_passthrough(fh, FopenFlags::empty(), &id),
            (Mode::Direct, Some(id)) => {
                reply.opened_passthrough(fh, FopenFlags::FOPEN_DIRECT_IO, &id)
            }
            _ if writable => reply.opened(fh, self.writer_flags()),
            _ => reply.opened(fh, FopenFlags::empty()),
        }
    }

    /// The open flags of a writable open outside passthrough (see [`KernelIo::direct_writes`]).
    fn writer_flags(&self) -> FopenFlags {
        if self.direct_writes {
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
        } else {
            FopenFlags::empty()
        }
    }

    /// A read-write open of an inode in passthrough mode may have been mapped shared: the
    /// kernel writes such a mapping's pages to the backing replica only (write(2) calls still
    /// come here and reach every replica). At its release, the other replicas' copies are
    /// compared with the backing file and the differing blocks copied, under the file's order
    /// lock. Write-only opens cannot be mapped and cost nothing.
    fn heal_shared_mapping(&self, ino: INodeNo, file: &Arc<OpenFile>) {
        let backing = {
            let io = file.io.lock().unwrap_or_else(|e| e.into_inner());
            match io.as_ref() {
                Some(t) if t.mode() == Mode::Direct => t.backing_replica(),
                _ => None,
            }
        };
        let Some(backing) = backing else { return };
        if file.flags & libc::O_ACCMODE != libc::O_RDWR {
            return;
        }
        let source = &self.set.replicas()[backing];
        if !source.is_in_service() {
            return;
        }
        let order = self.nodes.order_lock(ino.0);
        let _in_order = order.lock();
        let path = file.path();
        let Ok(source_fd) = file.fd(source) else {
            return;
        };
        let f = Arc::clone(file);
        let total = Arc::new(AtomicU64::new(0));
        let sum = Arc::clone(&total);
        let healed = self.mutate("heal", &path, &Credentials::root(), move |r| {
            if r.index != backing {
                let n = copy_differences(source_fd.as_fd(), f.fd(r)?.as_fd())?;
                sum.fetch_add(n, Ordering::Relaxed);
            }
            Ok(())
        });
        match healed.map(|()| total.load(Ordering::Relaxed)) {
            Ok(0) => {}
            Ok(bytes) => log::warn!(
                "healed /{}: a shared mapping wrote to replica {} only; {bytes} bytes copied \
                 to the other replicas",
                path.display(),
                source.path.display()
            ),
            Err(e) => log::error!(
                "cannot heal /{} after a shared mapping wrote to replica {}: {}",
                path.display(),
                source.path.display(),
                sys::errno_name(e.code())
            ),
        }
    }

    /// Registers the file's descriptor on replica `index` as the kernel's backing file; None
    /// (logged once) when the kernel refuses, and the open stays cached.
    fn new_backing(
        &self,
        file: &OpenFile,
        index: usize,
        reply: &ReplyOpen,
    ) -> Option<(Arc<BackingId>, usize)> {
        let fd = file.fd(&self.set.replicas()[index]).ok()?;
        match reply.open_backing(fd.as_fd()) {
            Ok(id) => Some((Arc::new(id), index)),
            Err(e) => {
                if !self.passthrough_failed.swap(true, Ordering::Relaxed) {
                    log::info!(
                        "kernel passthrough refused for a file of replica {} ({e}): reads \
                         go through chironfs",
                        self.set.replicas()[index].path.display()
                    );
                }
                None
            }
        }
    }

    fn remove(&self, op: &str, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
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
                self.nodes.unlink(parent.0, name);
                if let (true, Some(id)) = (dir, known) {
                    self.set
                        .replicas()
                        .iter()
                        .for_each(|r| r.dirs.drop_node(id));
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
        drop(in_order);
        drop(tree);
        held.release(&self.reaper);
    }
}

fn reply_xattr(result: Result<(usize, XattrReply), Errno>, reply: ReplyXattr) {
    match result {
        Ok((_, XattrReply::Size(n))) => reply.size(n as u32),
        Ok((_, XattrReply::Data(d))) => reply.data(&d),
        Ok((_, XattrReply::Done)) => reply.error(Errno::EIO),
        Err(e) => reply.error(e),
    }
}

/// Whether `name` in `parent` is the replicas' hidden metadata directory (`.chironfs` at the
/// root): invisible through the mount.
/// Makes `dst` hold the bytes of `src`: compares them block by block, rewrites the blocks that
/// differ, sets the size and, when anything changed, the source's mtime. Returns the bytes
/// rewritten.
fn copy_differences(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> io::Result<u64> {
    const BLOCK: usize = 1 << 20;
    let (src_st, dst_st) = (sys::fstat(src)?, sys::fstat(dst)?);
    let size = src_st.st_size as u64;
    let mut rewritten = 0;
    let mut offset = 0;
    while offset < size {
        let want = BLOCK.min((size - offset) as usize);
        let ours = sys::pread_full(src, want, offset)?;
        let theirs = sys::pread_full(dst, want, offset)?;
        if ours != theirs {
            sys::pwrite_full(dst, &ours, offset)?;
            rewritten += ours.len() as u64;
        }
        offset += want as u64;
    }
    if dst_st.st_size as u64 != size {
        sys::ftruncate(dst, size)?;
        rewritten += 1;
    }
    if rewritten > 0 {
        let mtime = TimeSpec::At {
            sec: src_st.st_mtime,
            nsec: src_st.st_mtime_nsec,
        };
        stamp_mtime(dst, mtime);
    }
    Ok(rewritten)
}

fn is_meta_dir(parent: INodeNo, name: &OsStr) -> bool {
    parent == INodeNo::ROOT && name == OsStr::new(crate::rules::state::META_DIR)
}

/// A stable stand-in inode number for a directory entry the kernel has not looked up yet
/// (its real node id is given at lookup). The top bit keeps it apart from node ids.
fn unknown_ino(parent: u64, name: &OsStr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    name.hash(&mut h);
    h.finish() | (1 << 63)
}
