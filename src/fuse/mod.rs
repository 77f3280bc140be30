//! The FUSE glue: turns each kernel request into replica jobs run through the [`ReplicaSet`]
//! (fan-out for mutations, fail-over for reads) and keeps the node and handle tables.
//!
//! The folder, one concern a file (each file's own comment says what it may touch):
//!
//! - `mod.rs` (here): the [`ChironFs`] state, its construction, the admin's [`KernelIo`]
//!   wishes, and the op table: the `fuser::Filesystem` impl, one line or so per op, each
//!   calling the op's method in the file of its concern (and `init`, the kernel handshake).
//! - `ops_meta.rs`: lookup, getattr, setattr, readlink, statfs.
//! - `ops_entry.rs`: mknod, mkdir, symlink, create, unlink, rmdir, rename, link.
//! - `ops_data.rs`: open, read, write, flush, release, fsync, fallocate, lseek,
//!   copy_file_range.
//! - `ops_dir.rs`: opendir, readdir, releasedir, fsyncdir.
//! - `ops_xattr.rs`: setxattr, getxattr, listxattr, removexattr.
//! - `reach.rs`: how an op reaches the replicas (tree lock, places, credentials, fan-out and
//!   fail-over jobs by path or by handle).
//! - `io_mode.rs`: how the kernel serves an open file (cached, direct, passthrough) and the
//!   heal after a shared mapping.
//! - `handles.rs`: open-file and open-directory handles and their table.
//! - `held.rs`: inodes a removal frees, closed after the reply by reaper threads.
//! - `attr.rs`, `open_flags.rs`, `stamp.rs`: stat -> attribute conversions, open-flag rules,
//!   the time stamps and setid bits a data change sets (pure but for `stamp.rs`).
//! - `transport.rs`: whether `init` takes FUSE over io_uring, and the log line saying why.
//! - `nodes.rs`: the node table (inode numbers <-> paths); `callers.rs`: callers' groups.

mod attr;
pub mod callers;
mod handles;
mod held;
mod io_mode;
pub mod nodes;
mod open_flags;
mod ops_data;
mod ops_dir;
mod ops_entry;
mod ops_meta;
mod ops_xattr;
mod reach;
mod stamp;
mod transport;

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, RwLock, mpsc};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, CopyFileRangeFlags, Errno, FileHandle, Filesystem, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::engine::set::ReplicaSet;
use crate::fuse::callers::GroupsCache;
use crate::fuse::handles::Handles;
use crate::fuse::nodes::NodeTable;
use crate::fuse::ops_meta::SetAttr;
use crate::rules::iomode::IoModes;

/// The chironfs filesystem.
#[derive(Debug)]
pub struct ChironFs {
    /// The replicas every op reaches.
    set: Arc<ReplicaSet>,
    /// Node ids <-> paths (shared with the open files, which follow their renames).
    nodes: Arc<NodeTable>,
    /// Open files and directories, by the numbers the kernel holds.
    handles: Arc<Handles>,
    /// Orders directory renames against every other path-based operation: a rename moves a
    /// whole subtree, and an operation on a path inside it that the kernel does not order
    /// against the rename must reach every replica on the same side of it (else it succeeds
    /// on some replicas and fails on others, which then get blamed). Held shared from the
    /// moment a path is computed until its fan-out ends; a directory rename holds it alone.
    tree: RwLock<()>,
    /// Spreads new opens' reads over the replicas (see [`ReplicaSet::data_order`]).
    open_ticket: AtomicUsize,
    /// The largest write the kernel may send (told at init).
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
    /// replicas has nothing to pass on. Fixed at mount (the kernel stops sending FLUSH after
    /// one ENOSYS): a network replica added online to a local set reports at fsync only.
    flush_reports: bool,
    /// How long the kernel may keep the attributes and names it is given (`--cache-time`).
    ttl: Duration,
    /// Non-root callers' supplementary groups, read from /proc once per moment.
    callers: GroupsCache,
    /// The live opens of each inode by I/O mode (see `io_mode.rs`).
    io_modes: Arc<IoModes<BackingId>>,
    /// Set after the first failed backing-file registration, so it is logged once.
    passthrough_failed: AtomicBool,
    /// Where deleted or replaced files' held handles go to be closed (`held.rs`).
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
    /// How long the kernel may keep attributes and names (`--cache-time`).
    pub cache_time: Duration,
}

impl ChironFs {
    /// A filesystem over `set`; `max_write` is the largest write the kernel may send;
    /// `io` says how the kernel may serve open files (both wishes, checked at init).
    pub fn new(set: Arc<ReplicaSet>, max_write: u32, io: KernelIo) -> Self {
        let flush_reports = !set.replicas().iter().all(|r| r.is_local());
        ChironFs {
            flush_reports,
            nodes: Arc::new(NodeTable::with_gauge(set.node_gauge())),
            set,
            handles: Arc::default(),
            tree: RwLock::new(()),
            open_ticket: AtomicUsize::new(0),
            max_write,
            passthrough: io.passthrough,
            direct_writes: io.direct_writes,
            io_uring: io.io_uring,
            ttl: io.cache_time,
            io_modes: Arc::new(IoModes::default()),
            callers: GroupsCache::default(),
            passthrough_failed: AtomicBool::new(false),
            reaper: held::start_reaper(),
        }
    }
}

/// What the daemon may read of a filesystem once the FUSE session owns it: how many files
/// and directories the kernel holds open, and how many nodes it holds.
#[derive(Clone, Debug)]
pub struct Gauges {
    handles: Arc<Handles>,
    nodes: Arc<NodeTable>,
}

impl Gauges {
    /// Files and directories open through the mount.
    pub fn open_handles(&self) -> usize {
        self.handles.files.len() + self.handles.dirs.len()
    }

    /// Nodes in the node table, the root included.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }
}

impl ChironFs {
    /// Its gauges, to read after the session took it.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            handles: Arc::clone(&self.handles),
            nodes: Arc::clone(&self.nodes),
        }
    }
}

/// The op table: each kernel request handed to the method of its concern (see the module
/// comment for which file holds which).
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
            // Listings carry their entries' attributes (no LOOKUP per entry for `ls -l`); the
            // kernel decides per listing whether they are worth it (AUTO: it asks for them
            // when the entries get looked up after a listing).
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
        ] {
            let _ = config.add_capabilities(flag);
        }
        // Offered only with fuse.enable_uring=1; otherwise every request comes through
        // /dev/fuse, as before.
        if self.io_uring {
            let uring = InitFlags::FUSE_OVER_IO_URING;
            let offered = config.capabilities().contains(uring);
            let accepted = config.add_capabilities(uring).is_ok();
            let (on, level, message) = transport::io_uring_at_init(offered, accepted);
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
        self.do_lookup(parent, name, reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.nodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.do_getattr(ino, fh, reply);
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
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        self.do_setattr(ino, fh, change, reply);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.do_readlink(ino, reply);
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
        self.do_mknod(creds, parent, name, mode, rdev, reply);
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
        self.do_mkdir(creds, parent, name, mode, reply);
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
        self.do_symlink(self.caller(req), parent, link_name, target, reply);
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
        self.do_rename(parent, name, newparent, newname, flags, reply);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.do_link(ino, newparent, newname, reply);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.do_open(req.uid(), ino, flags.0, reply);
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
        self.do_read(fh, offset, size, reply);
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
        self.do_write(ino, fh, offset, data, write_flags, reply);
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.do_flush(ino, fh, reply);
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
        self.do_release(ino, fh, reply);
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.do_fsync(ino, fh, datasync, reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.do_opendir(ino, reply);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.do_readdir(ino, fh, offset, reply);
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.do_readdirplus(ino, fh, offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles.dirs.remove(fh);
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
        self.do_fsyncdir(ino, datasync, reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.do_statfs(reply);
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.do_setxattr(self.caller(req), ino, name, value, flags, reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.do_getxattr(ino, name, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.do_listxattr(ino, size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.do_removexattr(ino, name, reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Only reached without default_permissions (never, as mounted): existence is the answer.
        reach::reply_empty(self.path(ino), reply);
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
        let creds = self.caller(req).with_umask(umask);
        self.do_create(creds, parent, name, mode, flags, reply);
    }

    fn tmpfile(
        &self,
        req: &Request,
        parent: INodeNo,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let creds = self.caller(req).with_umask(umask);
        self.do_tmpfile(creds, parent, mode, flags, reply);
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
        self.do_fallocate(ino, fh, (offset, length), mode, reply);
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
        self.do_lseek(fh, offset, whence, reply);
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
        self.do_copy_file_range(
            (fh_in, offset_in),
            (ino_out, fh_out, offset_out),
            len,
            reply,
        );
    }
}
