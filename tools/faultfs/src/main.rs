//! faultfs: a TEST-ONLY passthrough FUSE filesystem that injects faults.
//!
//! `faultfs --control FILE SOURCE MOUNTPOINT` mirrors SOURCE on MOUNTPOINT (SOURCE may
//! equal MOUNTPOINT: SOURCE is reached through a directory fd opened before mounting).
//! Before each operation the control FILE is consulted, see `rules.rs` for its syntax.
//! Files are opened with FOPEN_DIRECT_IO and all TTLs are zero, so every read, write,
//! lookup and getattr reaches faultfs and faults take effect immediately.

mod rules;

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::exit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, Session, SessionACL, TimeOrNow, WriteFlags,
};

const TTL: Duration = Duration::ZERO;
const ROOT: u64 = INodeNo::ROOT.0;

/// Unwrap a result or answer the request with its error.
macro_rules! tri {
    ($reply:ident, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return $reply.error(Errno::from(e)),
        }
    };
}

fn cvt<T: Copy + PartialOrd + Default>(ret: T) -> Result<T, Errno> {
    if ret < T::default() {
        Err(io::Error::last_os_error().into())
    } else {
        Ok(ret)
    }
}

fn cstr(p: impl AsRef<OsStr>) -> Result<CString, Errno> {
    CString::new(p.as_ref().as_bytes()).map_err(|_| Errno::EINVAL)
}

fn attr(ino: u64, md: &Metadata) -> FileAttr {
    let time = |s: i64, ns: i64| {
        let t = if s >= 0 {
            UNIX_EPOCH + Duration::from_secs(s as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(s.unsigned_abs())
        };
        t + Duration::from_nanos(ns as u64)
    };
    FileAttr {
        ino: INodeNo(ino),
        size: md.size(),
        blocks: md.blocks(),
        atime: time(md.atime(), md.atime_nsec()),
        mtime: time(md.mtime(), md.mtime_nsec()),
        ctime: time(md.ctime(), md.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile),
        perm: (md.mode() & 0o7777) as u16,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev() as u32,
        blksize: md.blksize() as u32,
        flags: 0,
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    // SAFETY: timespec is plain data.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    match t {
        None => ts.tv_nsec = libc::UTIME_OMIT,
        Some(TimeOrNow::Now) => ts.tv_nsec = libc::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(t)) => {
            let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => {
                    let d = e.duration();
                    let (s, n) = (-(d.as_secs() as i64), d.subsec_nanos() as i64);
                    if n > 0 {
                        (s - 1, 1_000_000_000 - n)
                    } else {
                        (s, 0)
                    }
                }
            };
            ts.tv_sec = secs;
            ts.tv_nsec = nanos;
        }
    }
    ts
}

/// `base` joined with `rest`, without a trailing slash when `rest` is empty.
fn rebase(base: &Path, rest: &Path) -> PathBuf {
    if rest.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rest)
    }
}

struct Node {
    /// Last known path relative to SOURCE; `None` once removed or replaced.
    path: Option<PathBuf>,
    /// (st_dev, st_ino) in SOURCE.
    key: (u64, u64),
    nlookup: u64,
}

#[derive(Default)]
struct Inodes {
    nodes: HashMap<u64, Node>,
    by_key: HashMap<(u64, u64), u64>,
    next: u64,
}

impl Inodes {
    /// Count a lookup of `rel` (which has metadata `md`) and return its inode number.
    fn remember(&mut self, rel: PathBuf, md: &Metadata) -> u64 {
        let key = (md.dev(), md.ino());
        if let Some(&ino) = self.by_key.get(&key) {
            let node = self.nodes.get_mut(&ino).expect("inode tables agree");
            node.nlookup += 1;
            if ino != ROOT {
                node.path = Some(rel);
            }
            return ino;
        }
        self.next += 1;
        let ino = self.next;
        let path = Some(rel);
        self.nodes.insert(
            ino,
            Node {
                path,
                key,
                nlookup: 1,
            },
        );
        self.by_key.insert(key, ino);
        ino
    }

    fn forget(&mut self, ino: u64, n: u64) {
        let Some(node) = self.nodes.get_mut(&ino).filter(|_| ino != ROOT) else {
            return;
        };
        node.nlookup = node.nlookup.saturating_sub(n);
        if node.nlookup == 0 {
            let key = node.key;
            self.nodes.remove(&ino);
            if self.by_key.get(&key) == Some(&ino) {
                self.by_key.remove(&key);
            }
        }
    }

    fn removed(&mut self, rel: &Path) {
        for node in self.nodes.values_mut() {
            if node.path.as_deref() == Some(rel) {
                node.path = None;
            }
        }
    }

    fn renamed(&mut self, from: &Path, to: &Path, exchange: bool) {
        for node in self.nodes.values_mut() {
            let Some(path) = &node.path else { continue };
            node.path = if let Ok(rest) = path.strip_prefix(from) {
                Some(rebase(to, rest))
            } else if let Ok(rest) = path.strip_prefix(to) {
                // Exchanged, or overwritten by the rename.
                exchange.then(|| rebase(from, rest))
            } else {
                continue;
            };
        }
    }
}

struct DirHandle {
    dir: File,
    /// Snapshot taken by readdir at offset 0; entry `i` has offset `i + 1`.
    entries: Vec<(OsString, FileType, u64)>,
}

struct FaultFs {
    /// `/proc/self/fd/N/.` for a directory fd on SOURCE: works even when overmounted.
    base: PathBuf,
    _source: File,
    control: rules::Control,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, Arc<File>>>,
    dirs: Mutex<HashMap<u64, Arc<Mutex<DirHandle>>>>,
    next_fh: AtomicU64,
}

impl FaultFs {
    fn new(source: &Path, control: PathBuf) -> io::Result<Self> {
        let dir = File::open(source)?;
        let md = dir.metadata()?;
        if !md.is_dir() {
            let msg = format!("{} is not a directory", source.display());
            return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        }
        let mut inodes = Inodes {
            next: ROOT,
            ..Default::default()
        };
        let key = (md.dev(), md.ino());
        let root = Node {
            path: Some(PathBuf::new()),
            key,
            nlookup: 1,
        };
        inodes.nodes.insert(ROOT, root);
        inodes.by_key.insert(key, ROOT);
        Ok(FaultFs {
            base: PathBuf::from(format!("/proc/self/fd/{}/.", dir.as_raw_fd())),
            _source: dir,
            control: rules::Control::new(control),
            inodes: Mutex::new(inodes),
            files: Mutex::default(),
            dirs: Mutex::default(),
            next_fh: AtomicU64::new(1),
        })
    }

    fn abs(&self, rel: &Path) -> PathBuf {
        rebase(&self.base, rel)
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        let inodes = self.inodes.lock().unwrap();
        let node = inodes.nodes.get(&ino.0);
        node.and_then(|n| n.path.clone()).ok_or(Errno::ENOENT)
    }

    fn fault(&self, op: &str, paths: &[&Path]) -> Result<(), Errno> {
        let paths: Vec<_> = paths.iter().map(|p| p.to_string_lossy()).collect();
        let paths: Vec<&str> = paths.iter().map(|p| p.as_ref()).collect();
        self.control.check(op, &paths).map_err(Errno::from_i32)
    }

    /// Fault check for `op` on inode `ino`, then its path.
    fn enter(&self, op: &str, ino: INodeNo) -> Result<PathBuf, Errno> {
        let rel = self.path(ino)?;
        self.fault(op, &[&rel])?;
        Ok(rel)
    }

    /// Fault check for a handle-based `op`: the path (if still known) only selects rules.
    fn enter_fh(&self, op: &str, ino: INodeNo) -> Result<Option<PathBuf>, Errno> {
        let rel = self.path(ino).ok();
        self.fault(op, &[rel.as_deref().unwrap_or(Path::new(""))])?;
        Ok(rel)
    }

    fn enter_child(&self, op: &str, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        let rel = self.path(parent)?.join(name);
        self.fault(op, &[&rel])?;
        Ok(rel)
    }

    /// Look `rel` up: count the reference and return its attributes.
    fn entry(&self, rel: PathBuf) -> Result<FileAttr, Errno> {
        let md = fs::symlink_metadata(self.abs(&rel))?;
        let ino = self.inodes.lock().unwrap().remember(rel, &md);
        Ok(attr(ino, &md))
    }

    /// Entry for a node just created by us (root): give it to the requesting user.
    fn created(&self, req: &Request, rel: PathBuf) -> Result<FileAttr, Errno> {
        if req.uid() != 0 || req.gid() != 0 {
            let parent = fs::metadata(self.abs(rel.parent().unwrap_or(Path::new(""))))?;
            let sgid = parent.mode() & libc::S_ISGID != 0;
            let gid = if sgid { u32::MAX } else { req.gid() };
            let c = cstr(self.abs(&rel))?;
            // SAFETY: valid C string.
            cvt(unsafe { libc::lchown(c.as_ptr(), req.uid(), gid) })?;
        }
        self.entry(rel)
    }

    fn stat(&self, ino: INodeNo, fh: Option<FileHandle>) -> Result<FileAttr, Errno> {
        if let Some(file) = fh.and_then(|fh| self.file(fh).ok()) {
            return Ok(attr(ino.0, &file.metadata()?));
        }
        let md = fs::symlink_metadata(self.abs(&self.path(ino)?))?;
        let inodes = self.inodes.lock().unwrap();
        match inodes.nodes.get(&ino.0) {
            // The name now refers to another file.
            Some(node) if node.key == (md.dev(), md.ino()) => Ok(attr(ino.0, &md)),
            _ => Err(Errno::ENOENT),
        }
    }

    fn open_path(&self, rel: &Path, flags: i32, mode: u32) -> Result<File, Errno> {
        let c = cstr(self.abs(rel))?;
        let flags = (flags & !(libc::O_DIRECT | libc::O_NOCTTY)) | libc::O_CLOEXEC;
        // SAFETY: valid C string; the returned fd is owned by the File.
        let fd = cvt(unsafe { libc::open(c.as_ptr(), flags, mode & 0o7777) })?;
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        let files = self.files.lock().unwrap();
        files.get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn add_file(&self, file: File) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files.lock().unwrap().insert(fh, Arc::new(file));
        FileHandle(fh)
    }

    fn dir(&self, fh: FileHandle) -> Result<Arc<Mutex<DirHandle>>, Errno> {
        let dirs = self.dirs.lock().unwrap();
        dirs.get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn list(&self, ino: INodeNo, dir: &File) -> Result<Vec<(OsString, FileType, u64)>, Errno> {
        let dev = dir.metadata()?.dev();
        let mut raw = Vec::new();
        for e in fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
            let e = e?;
            let kind = FileType::from_std(e.file_type()?).unwrap_or(FileType::RegularFile);
            raw.push((e.file_name(), kind, e.ino()));
        }
        let inodes = self.inodes.lock().unwrap();
        let known = |i: u64| inodes.by_key.get(&(dev, i)).copied().unwrap_or(i);
        let mut entries = vec![
            (".".into(), FileType::Directory, ino.0),
            ("..".into(), FileType::Directory, ROOT),
        ];
        entries.extend(raw.into_iter().map(|(n, k, i)| (n, k, known(i))));
        Ok(entries)
    }

    fn xattr_call(
        &self,
        op: &str,
        ino: INodeNo,
        size: u32,
        call: impl FnOnce(&CString, *mut libc::c_void, usize) -> isize,
        reply: ReplyXattr,
    ) {
        let rel = tri!(reply, self.enter(op, ino));
        let c = tri!(reply, cstr(self.abs(&rel)));
        if size == 0 {
            let len = tri!(reply, cvt(call(&c, std::ptr::null_mut(), 0)));
            return reply.size(len as u32);
        }
        let mut buf = vec![0u8; size as usize];
        let len = tri!(reply, cvt(call(&c, buf.as_mut_ptr().cast(), buf.len())));
        reply.data(&buf[..len as usize]);
    }
}

impl Filesystem for FaultFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Let mmap work despite FOPEN_DIRECT_IO where the kernel supports it.
        let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let rel = tri!(reply, self.enter_child("lookup", parent, name));
        let attr = tri!(reply, self.entry(rel));
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes.lock().unwrap().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        tri!(reply, self.enter_fh("getattr", ino));
        let attr = tri!(reply, self.stat(ino, fh));
        reply.attr(&TTL, &attr);
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
        let rel = tri!(reply, self.enter_fh("setattr", ino));
        // Through the open file if we have one (it may be unlinked), else by name.
        let file = fh.and_then(|fh| self.file(fh).ok());
        let (path, nofollow) = match (&file, rel) {
            (Some(f), _) => (PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())), 0),
            (None, Some(rel)) => (self.abs(&rel), libc::AT_SYMLINK_NOFOLLOW),
            (None, None) => return reply.error(Errno::ENOENT),
        };
        let c = tri!(reply, cstr(&path));
        let at = libc::AT_FDCWD;
        // SAFETY (all calls below): valid C string and pointers.
        if let Some(mode) = mode {
            tri!(
                reply,
                cvt(unsafe { libc::fchmodat(at, c.as_ptr(), mode & 0o7777, 0) })
            );
        }
        if uid.is_some() || gid.is_some() {
            let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
            tri!(
                reply,
                cvt(unsafe { libc::fchownat(at, c.as_ptr(), u, g, nofollow) })
            );
        }
        if let Some(size) = size {
            tri!(
                reply,
                cvt(unsafe { libc::truncate(c.as_ptr(), size as i64) })
            );
        }
        if atime.is_some() || mtime.is_some() {
            let times = [timespec(atime), timespec(mtime)];
            let r = unsafe { libc::utimensat(at, c.as_ptr(), times.as_ptr(), nofollow) };
            tri!(reply, cvt(r));
        }
        let attr = tri!(reply, self.stat(ino, fh));
        reply.attr(&TTL, &attr);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let rel = tri!(reply, self.enter("readlink", ino));
        let target = tri!(reply, fs::read_link(self.abs(&rel)));
        reply.data(target.as_os_str().as_bytes());
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let rel = tri!(reply, self.enter_child("mknod", parent, name));
        let c = tri!(reply, cstr(self.abs(&rel)));
        // SAFETY: valid C string.
        tri!(
            reply,
            cvt(unsafe { libc::mknod(c.as_ptr(), mode, rdev.into()) })
        );
        let attr = tri!(reply, self.created(req, rel));
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let rel = tri!(reply, self.enter_child("mkdir", parent, name));
        let c = tri!(reply, cstr(self.abs(&rel)));
        // SAFETY: valid C string.
        tri!(
            reply,
            cvt(unsafe { libc::mkdir(c.as_ptr(), mode & 0o7777) })
        );
        let attr = tri!(reply, self.created(req, rel));
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let rel = tri!(reply, self.enter_child("unlink", parent, name));
        tri!(reply, fs::remove_file(self.abs(&rel)));
        self.inodes.lock().unwrap().removed(&rel);
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let rel = tri!(reply, self.enter_child("rmdir", parent, name));
        tri!(reply, fs::remove_dir(self.abs(&rel)));
        self.inodes.lock().unwrap().removed(&rel);
        reply.ok();
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let rel = tri!(reply, self.enter_child("symlink", parent, link_name));
        tri!(reply, std::os::unix::fs::symlink(target, self.abs(&rel)));
        let attr = tri!(reply, self.created(req, rel));
        reply.entry(&TTL, &attr, Generation(0));
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
        let from = tri!(reply, self.path(parent)).join(name);
        let to = tri!(reply, self.path(newparent)).join(newname);
        tri!(reply, self.fault("rename", &[&from, &to]));
        let (a, b) = (
            tri!(reply, cstr(self.abs(&from))),
            tri!(reply, cstr(self.abs(&to))),
        );
        let at = libc::AT_FDCWD;
        // SAFETY: valid C strings.
        let r = unsafe { libc::renameat2(at, a.as_ptr(), at, b.as_ptr(), flags.bits()) };
        tri!(reply, cvt(r));
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        self.inodes.lock().unwrap().renamed(&from, &to, exchange);
        reply.ok();
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let old = tri!(reply, self.path(ino));
        let new = tri!(reply, self.path(newparent)).join(newname);
        tri!(reply, self.fault("link", &[&old, &new]));
        tri!(reply, fs::hard_link(self.abs(&old), self.abs(&new)));
        let attr = tri!(reply, self.entry(new));
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let rel = tri!(reply, self.enter("open", ino));
        let flags = flags.0 & !(libc::O_CREAT | libc::O_EXCL);
        let file = tri!(reply, self.open_path(&rel, flags, 0));
        reply.opened(self.add_file(file), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        tri!(reply, self.enter_fh("read", ino));
        let file = tri!(reply, self.file(fh));
        let mut buf = vec![0u8; size as usize];
        let mut n = 0;
        while n < buf.len() {
            match file.read_at(&mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(e.into()),
            }
        }
        reply.data(&buf[..n]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        tri!(reply, self.enter_fh("write", ino));
        let file = tri!(reply, self.file(fh));
        let n = tri!(reply, file.write_at(data, offset));
        reply.written(n as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        tri!(reply, self.enter_fh("flush", ino));
        reply.ok();
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
        let result = self.enter_fh("release", ino);
        self.files.lock().unwrap().remove(&fh.0); // closed even when faulted
        tri!(reply, result);
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
        tri!(reply, self.enter_fh("fsync", ino));
        let file = tri!(reply, self.file(fh));
        tri!(
            reply,
            if datasync {
                file.sync_data()
            } else {
                file.sync_all()
            }
        );
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let rel = tri!(reply, self.enter("opendir", ino));
        let dir = tri!(
            reply,
            self.open_path(&rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)
        );
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(Mutex::new(DirHandle {
            dir,
            entries: Vec::new(),
        }));
        self.dirs.lock().unwrap().insert(fh, handle);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        tri!(reply, self.enter_fh("readdir", ino));
        let handle = tri!(reply, self.dir(fh));
        let mut handle = handle.lock().unwrap();
        if offset == 0 || handle.entries.is_empty() {
            handle.entries = tri!(reply, self.list(ino, &handle.dir));
        }
        for (i, (name, kind, ino)) in handle.entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break; // buffer full
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let result = self.enter_fh("releasedir", ino);
        self.dirs.lock().unwrap().remove(&fh.0);
        tri!(reply, result);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        tri!(reply, self.enter_fh("fsyncdir", ino));
        let handle = tri!(reply, self.dir(fh));
        tri!(reply, handle.lock().unwrap().dir.sync_all());
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        tri!(reply, self.enter_fh("statfs", ino));
        let c = tri!(reply, cstr(&self.base));
        // SAFETY: valid C string and out pointer; statvfs is plain data.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        tri!(reply, cvt(unsafe { libc::statvfs(c.as_ptr(), &mut st) }));
        let (bsize, namelen, frsize) = (st.f_bsize as u32, st.f_namemax as u32, st.f_frsize as u32);
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            bsize,
            namelen,
            frsize,
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
        let rel = tri!(reply, self.enter("setxattr", ino));
        let (c, n) = (tri!(reply, cstr(self.abs(&rel))), tri!(reply, cstr(name)));
        let (v, len) = (value.as_ptr().cast(), value.len());
        // SAFETY: valid C strings and buffer.
        tri!(
            reply,
            cvt(unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), v, len, flags) })
        );
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let n = tri!(reply, cstr(name));
        // SAFETY: valid C strings; buf/len describe a writable buffer (or null, 0).
        let call = |c: &CString, buf: *mut libc::c_void, len| unsafe {
            libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf, len)
        };
        self.xattr_call("getxattr", ino, size, call, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        // SAFETY: as in getxattr.
        let call = |c: &CString, buf: *mut libc::c_void, len| unsafe {
            libc::llistxattr(c.as_ptr(), buf.cast(), len)
        };
        self.xattr_call("listxattr", ino, size, call, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let rel = tri!(reply, self.enter("removexattr", ino));
        let (c, n) = (tri!(reply, cstr(self.abs(&rel))), tri!(reply, cstr(name)));
        // SAFETY: valid C strings.
        tri!(
            reply,
            cvt(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) })
        );
        reply.ok();
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let rel = tri!(reply, self.enter("access", ino));
        let c = tri!(reply, cstr(self.abs(&rel)));
        // SAFETY: valid C string.
        tri!(reply, cvt(unsafe { libc::access(c.as_ptr(), mask.bits()) }));
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let rel = tri!(reply, self.enter_child("create", parent, name));
        let file = tri!(reply, self.open_path(&rel, flags | libc::O_CREAT, mode));
        let attr = tri!(reply, self.created(req, rel));
        let fh = self.add_file(file);
        reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::FOPEN_DIRECT_IO);
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
        tri!(reply, self.enter_fh("fallocate", ino));
        let file = tri!(reply, self.file(fh));
        // SAFETY: plain syscall on an owned fd.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, length as i64) };
        tri!(reply, cvt(r));
        reply.ok();
    }
}

fn parse_args() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let mut control = None;
    let mut positional = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--control" {
            control = Some(PathBuf::from(args.next()?));
        } else if let Some(v) = arg.to_str().and_then(|s| s.strip_prefix("--control=")) {
            control = Some(PathBuf::from(v));
        } else if arg.to_string_lossy().starts_with('-') {
            return None;
        } else {
            positional.push(PathBuf::from(arg));
        }
    }
    match (control, <[PathBuf; 2]>::try_from(positional)) {
        (Some(control), Ok([source, mountpoint])) => Some((control, source, mountpoint)),
        _ => None,
    }
}

fn run(control: PathBuf, source: &Path, mountpoint: &Path) -> io::Result<()> {
    // SAFETY: plain syscall. Modes arrive from the kernel already masked.
    unsafe { libc::umask(0) };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let fs = FaultFs::new(source, std::path::absolute(control)?)?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("faultfs".into()),
        MountOption::DefaultPermissions,
    ];
    config.acl = SessionACL::All; // allow_other
    config.n_threads = Some(4);
    let session = Session::new(fs, mountpoint, &config)?.spawn()?;
    eprintln!(
        "faultfs: {} mounted on {}",
        source.display(),
        mountpoint.display()
    );
    while !stop.load(Ordering::Relaxed) && !session.guard.is_finished() {
        sleep(Duration::from_millis(100));
    }
    rules::SHUTDOWN.store(true, Ordering::Relaxed);
    sleep(Duration::from_millis(200)); // let hung operations fail and their callers close
    if session.guard.is_finished() {
        eprintln!("faultfs: unmounted externally");
        return session.join();
    }
    if let Err(e) = session.umount_and_join() {
        eprintln!("faultfs: unmount failed ({e}), detaching lazily");
        nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH)?;
    }
    eprintln!("faultfs: unmounted {}", mountpoint.display());
    Ok(())
}

fn main() {
    let Some((control, source, mountpoint)) = parse_args() else {
        eprintln!("usage: faultfs --control FILE SOURCE MOUNTPOINT");
        exit(2);
    };
    if let Err(e) = run(control, &source, &mountpoint) {
        eprintln!("faultfs: {e}");
        exit(1);
    }
}
