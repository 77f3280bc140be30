//! Every system call chironfs makes on a replica, in one place.
//!
//! All paths handed to these wrappers are relative to a replica's root directory fd, and every
//! path walk goes through `openat2(RESOLVE_BENEATH)` so no name coming from the kernel can
//! escape a replica. Each `unsafe` block says why it is sound.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::AsFd;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// Turns a C return value into `io::Result`, reading errno on -1.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Same as [`check`] for calls returning `ssize_t`.
fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A path or name as a C string; an interior NUL cannot come from the kernel, so it is EINVAL.
pub fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The open(2) flags openat2 accepts (the kernel's VALID_OPEN_FLAGS, less FASYNC which
/// open(2) ignores anyway).
const VALID_OPEN_FLAGS: libc::c_int = libc::O_ACCMODE
    | libc::O_CREAT
    | libc::O_EXCL
    | libc::O_NOCTTY
    | libc::O_TRUNC
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DSYNC
    | libc::O_SYNC
    | libc::O_DIRECT
    | libc::O_LARGEFILE
    | libc::O_DIRECTORY
    | libc::O_NOFOLLOW
    | libc::O_NOATIME
    | libc::O_CLOEXEC
    | libc::O_PATH
    | libc::O_TMPFILE;

/// Opens `rel` beneath `root`. `no_symlinks` refuses every symlink on the way, which is what
/// walking to a parent directory needs (our tree never routes a path through a symlink).
///
/// Every open but an `O_PATH` one carries `O_NOATIME`: a read is served by one replica, and
/// an access time moved on that one alone would make the replicas differ (chironfs mounts
/// behave as `noatime`, see `docs/replica-state.md`). Where the kernel refuses it (EPERM: a
/// caller's credentials that do not own the file), the open is made without it.
pub fn open_beneath(
    root: BorrowedFd<'_>,
    rel: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
    no_symlinks: bool,
) -> io::Result<OwnedFd> {
    if flags & (libc::O_PATH | libc::O_NOATIME) != 0 {
        return open_beneath_as_given(root, rel, flags, mode, no_symlinks);
    }
    match open_beneath_as_given(root, rel, flags | libc::O_NOATIME, mode, no_symlinks) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            open_beneath_as_given(root, rel, flags, mode, no_symlinks)
        }
        r => r,
    }
}

/// [`open_beneath`] with exactly `flags` (openat2 with RESOLVE_BENEATH).
fn open_beneath_as_given(
    root: BorrowedFd<'_>,
    rel: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
    no_symlinks: bool,
) -> io::Result<OwnedFd> {
    let mut resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    if no_symlinks {
        resolve |= libc::RESOLVE_NO_SYMLINKS;
    }
    // SAFETY: open_how is a plain C struct for which all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    // openat2 refuses unknown bits with EINVAL, unlike open(2) which ignores them; the kernel
    // hands FUSE internal ones (__FMODE_EXEC when a file is executed, FMODE_NONOTIFY...).
    how.flags = ((flags & VALID_OPEN_FLAGS) | libc::O_CLOEXEC) as u64;
    if flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE {
        how.mode = mode as u64;
    }
    how.resolve = resolve;
    loop {
        // SAFETY: `rel` is a valid NUL-terminated string and `how` a fully initialised
        // open_how whose size we pass; the kernel only reads both.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                rel.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel just returned this fd to us; nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let err = io::Error::last_os_error();
        // EAGAIN: a concurrent rename raced the RESOLVE_BENEATH walk; the kernel asks to retry.
        if err.raw_os_error() != Some(libc::EAGAIN) {
            return Err(err);
        }
    }
}

/// Opens a directory of the tree as an `O_PATH` handle to use as the dirfd of `*at` calls.
pub fn open_dir_path(root: BorrowedFd<'_>, rel: &CStr) -> io::Result<OwnedFd> {
    open_beneath(root, rel, libc::O_PATH | libc::O_DIRECTORY, 0, true)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; an empty name stats `dir` itself.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    let mut flags = libc::AT_SYMLINK_NOFOLLOW;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    // SAFETY: `st` is a valid out-pointer of the right type; `name` is NUL-terminated.
    check(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), flags) })?;
    // SAFETY: fstatat succeeded, so it filled the whole struct.
    Ok(unsafe { st.assume_init() })
}

/// Advises the kernel that `fd` is read from start to end (POSIX_FADV_SEQUENTIAL): it reads
/// ahead twice as far. Only advice: a filesystem that takes none reads as before.
pub fn advise_sequential(fd: BorrowedFd<'_>) {
    // SAFETY: `fd` is an open descriptor for the duration of the call, which reads no memory.
    unsafe { libc::posix_fadvise(fd.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
}

/// `fstat` of an open fd.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    lstat_at(fd, c"")
}

/// `mkdirat`.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd and NUL-terminated name.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

/// `mknodat` (fifos, sockets, devices, regular files).
pub fn mknod_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: libc::mode_t,
    rdev: libc::dev_t,
) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd and NUL-terminated name.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

/// `symlinkat(target, dir, name)`.
pub fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated; the fd is valid.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// `linkat` without following a symlink source.
pub fn link_at(
    old_dir: BorrowedFd<'_>,
    old_name: &CStr,
    new_dir: BorrowedFd<'_>,
    new_name: &CStr,
) -> io::Result<()> {
    // SAFETY: valid fds and NUL-terminated names.
    check(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            old_name.as_ptr(),
            new_dir.as_raw_fd(),
            new_name.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// A new name `new_name` in `new_dir` for the open file `fd` (an `O_TMPFILE` one, or any
/// other with a name): `linkat` with `AT_EMPTY_PATH`, which needs CAP_DAC_READ_SEARCH, else
/// through its /proc/self/fd link, which needs none.
pub fn link_fd(fd: BorrowedFd<'_>, new_dir: BorrowedFd<'_>, new_name: &CStr) -> io::Result<()> {
    let link = |old_dir: RawFd, old_name: &CStr, flags: libc::c_int| {
        // SAFETY: valid fds and NUL-terminated names.
        check(unsafe {
            libc::linkat(
                old_dir,
                old_name.as_ptr(),
                new_dir.as_raw_fd(),
                new_name.as_ptr(),
                flags,
            )
        })
        .map(drop)
    };
    match link(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EPERM)) => {
            let proc_path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .expect("no NUL in a number");
            link(libc::AT_FDCWD, &proc_path, libc::AT_SYMLINK_FOLLOW)
        }
        r => r,
    }
}

/// A new open of the file `fd` is open on, with `flags`, through its /proc/self/fd link
/// (which works for a file with no name left, as open(2) of that link does).
pub fn reopen(fd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<OwnedFd> {
    let proc_path =
        CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number");
    // SAFETY: a valid NUL-terminated path; no mode is read without O_CREAT.
    let fd = check(unsafe { libc::open(proc_path.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `unlinkat`; `dir_flag` removes a directory (rmdir).
pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, remove_dir: bool) -> io::Result<()> {
    let flags = if remove_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// An `O_PATH` handle on `name` in `dir` itself (a symlink is not followed). Held across an
/// unlink of the last name, it keeps the inode alive, so the inode's eviction (freeing its pages
/// or blocks) happens when the handle is closed rather than inside `unlinkat`.
pub fn hold_inode_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid fd and NUL-terminated name.
    let fd = check(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `renameat2` with the caller's flags (RENAME_NOREPLACE, RENAME_EXCHANGE).
pub fn rename_at(
    old_dir: BorrowedFd<'_>,
    old_name: &CStr,
    new_dir: BorrowedFd<'_>,
    new_name: &CStr,
    flags: libc::c_uint,
) -> io::Result<()> {
    // SAFETY: valid fds and NUL-terminated names.
    check(unsafe {
        libc::renameat2(
            old_dir.as_raw_fd(),
            old_name.as_ptr(),
            new_dir.as_raw_fd(),
            new_name.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// `fchmodat(AT_SYMLINK_NOFOLLOW)`: the kernel never sends a chmod of a symlink, but a
/// replica changed behind our back could hold one at this name, and following it could lead
/// anywhere (into this very mount, where the request would wait on itself).
pub fn chmod_at(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe {
        libc::fchmodat(
            dir.as_raw_fd(),
            name.as_ptr(),
            mode,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// `fchmod` of an open file (one with no name left).
pub fn fchmod(fd: BorrowedFd<'_>, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

/// `fchownat(AT_SYMLINK_NOFOLLOW)`; `u32::MAX` leaves an id unchanged.
pub fn chown_at(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    let mut flags = libc::AT_SYMLINK_NOFOLLOW;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, flags) }).map(drop)
}

/// One timestamp for [`utimens_at`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSpec {
    /// Leave unchanged (UTIME_OMIT).
    Omit,
    /// The current time (UTIME_NOW).
    Now,
    /// An exact time, nanosecond precision.
    At { sec: i64, nsec: i64 },
}

impl TimeSpec {
    fn to_timespec(self) -> libc::timespec {
        match self {
            TimeSpec::Omit => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            TimeSpec::Now => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            TimeSpec::At { sec, nsec } => libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            },
        }
    }
}

/// `utimensat(AT_SYMLINK_NOFOLLOW)`: nanosecond times, NOW and OMIT, never following links.
pub fn utimens_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    atime: TimeSpec,
    mtime: TimeSpec,
) -> io::Result<()> {
    let times = [atime.to_timespec(), mtime.to_timespec()];
    let mut flags = libc::AT_SYMLINK_NOFOLLOW;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    // SAFETY: `times` is a 2-element array as utimensat requires; valid fd and name.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), flags) })
        .map(drop)
}

/// `readlinkat`.
pub fn readlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: the buffer is valid for `buf.len()` bytes.
    let n = check_size(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// `ftruncate`.
pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) }).map(drop)
}

/// `pread`, looping until `len` bytes or end of file, so a short read only means EOF.
pub fn pread_full(fd: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        // SAFETY: the destination range lies inside `buf`.
        let n = check_size(unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf[done..].as_mut_ptr().cast(),
                len - done,
                (offset + done as u64) as libc::off_t,
            )
        });
        match n {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// `pwrite` of the whole buffer; a replica that stores fewer bytes fails with ENOSPC
/// (a short write is a failure, never a silent divergence).
pub fn pwrite_full(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: the source range lies inside `data`.
        let n = check_size(unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                data[done..].as_ptr().cast(),
                data.len() - done,
                (offset + done as u64) as libc::off_t,
            )
        });
        match n {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `fsync` or `fdatasync`.
pub fn fsync(fd: BorrowedFd<'_>, data_only: bool) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe {
        if data_only {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

/// `fallocate` with the caller's mode bits.
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
    .map(drop)
}

/// `close(dup(fd))`: makes NFS/SSHFS report delayed write errors, like a close would.
pub fn flush(fd: BorrowedFd<'_>) -> io::Result<()> {
    let dup = fd.try_clone_to_owned()?;
    let raw = std::os::fd::IntoRawFd::into_raw_fd(dup);
    // SAFETY: we own `raw` (just duplicated) and close it exactly once.
    check(unsafe { libc::close(raw) }).map(drop)
}

/// `lseek` (SEEK_DATA / SEEK_HOLE support).
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: plain syscall on a valid fd.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Whether `fd` lives on a local filesystem. Network and FUSE filesystems (NFS, SSHFS and other
/// FUSE, SMB/CIFS, Ceph, 9P, AFS, Coda) can hang on a dead server; anything else counts as local.
/// Unknown (fstatfs failed) counts as remote, the safe side.
pub fn is_local_filesystem(fd: BorrowedFd<'_>) -> bool {
    const REMOTE: [i64; 10] = [
        0x6969,          // NFS
        0x6573_5546,     // FUSE (SSHFS, ...)
        0x517B,          // SMB
        0xFE53_4D42,     // SMB2
        0xFF53_4D42,     // CIFS
        0x00C3_6400,     // Ceph
        0x0102_1997,     // 9P
        0x5346_414F,     // AFS
        0x0000_6B414653, // kAFS
        0x7375_7245,     // Coda
    ];
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid out-pointer of the right type.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstatfs succeeded and filled the struct.
    let kind = unsafe { st.assume_init() }.f_type;
    !REMOTE.contains(&kind)
}

/// `fstatvfs`.
pub fn statvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: valid out-pointer of the right type.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded and filled the struct.
    Ok(unsafe { st.assume_init() })
}

/// One directory entry: name, d_ino and d_type.
#[derive(Clone, Debug)]
pub struct DirEntry {
    /// Entry name (never "." or "..").
    pub name: std::ffi::OsString,
    /// The DT_* type from the directory, DT_UNKNOWN if the filesystem does not say.
    pub kind: u8,
}

/// Reads a whole directory (opened beneath the root) into memory, without "." and "..".
pub fn read_dir_all(root: BorrowedFd<'_>, rel: &CStr) -> io::Result<Vec<DirEntry>> {
    let fd = open_beneath(root, rel, libc::O_RDONLY | libc::O_DIRECTORY, 0, true)?;
    let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
    // SAFETY: `raw` is an open directory fd we own; fdopendir takes ownership on success.
    let dirp = unsafe { libc::fdopendir(raw) };
    if dirp.is_null() {
        let err = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so we still own `raw` and close it once.
        unsafe { libc::close(raw) };
        return Err(err);
    }
    let mut out = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; reset it to tell end-of-directory from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `dirp` is a valid DIR* until closedir below.
        let ent = unsafe { libc::readdir64(dirp) };
        if ent.is_null() {
            let errno = io::Error::last_os_error();
            break if errno.raw_os_error() == Some(0) {
                Ok(())
            } else {
                Err(errno)
            };
        }
        // SAFETY: readdir returned a valid dirent whose d_name is NUL-terminated.
        let (name, kind) = unsafe {
            (
                CStr::from_ptr((*ent).d_name.as_ptr()).to_bytes().to_vec(),
                (*ent).d_type,
            )
        };
        if name == b"." || name == b".." {
            continue;
        }
        // Some filesystems (XFS without ftype, some NFS servers) leave the type out; a
        // directory passed on as a regular file would stop find(1) from descending into it.
        let kind = if kind == libc::DT_UNKNOWN {
            let cname = CString::new(name.clone()).expect("no NUL in a directory entry");
            // SAFETY: `dirp` is a valid DIR* until closedir below.
            let dfd = unsafe { libc::dirfd(dirp) };
            // SAFETY: `dfd` belongs to `dirp`, which outlives this borrow.
            let dir = unsafe { BorrowedFd::borrow_raw(dfd) };
            match lstat_at(dir, &cname) {
                Ok(st) => dtype_of_mode(st.st_mode),
                Err(_) => kind,
            }
        } else {
            kind
        };
        out.push(DirEntry {
            name: std::ffi::OsString::from_vec(name),
            kind,
        });
    };
    // SAFETY: `dirp` is valid and closed exactly once (this also closes `raw`).
    unsafe { libc::closedir(dirp) };
    result.map(|()| out)
}

/// The DT_* directory-entry type of an st_mode.
fn dtype_of_mode(mode: libc::mode_t) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => libc::DT_DIR,
        libc::S_IFLNK => libc::DT_LNK,
        libc::S_IFIFO => libc::DT_FIFO,
        libc::S_IFSOCK => libc::DT_SOCK,
        libc::S_IFCHR => libc::DT_CHR,
        libc::S_IFBLK => libc::DT_BLK,
        libc::S_IFREG => libc::DT_REG,
        _ => libc::DT_UNKNOWN,
    }
}

/// Which xattr call [`xattr`] makes.
#[derive(Clone, Copy, Debug)]
pub enum XattrOp<'a> {
    /// getxattr into a buffer of the given size (0 = ask for the size).
    Get(&'a CStr, usize),
    /// listxattr into a buffer of the given size (0 = ask for the size).
    List(usize),
    /// setxattr(value, flags).
    Set(&'a CStr, &'a [u8], i32),
    /// removexattr.
    Remove(&'a CStr),
}

/// What an xattr call gives back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XattrReply {
    /// The length of the value/list (the caller asked with size 0).
    Size(usize),
    /// The value or the NUL-separated name list.
    Data(Vec<u8>),
    /// Set or remove succeeded.
    Done,
}

/// Extended attributes of `name` in `dir` without following a symlink: the object is opened
/// `O_PATH|O_NOFOLLOW` and reached through its /proc/self/fd magic link, which lands on the
/// object itself (the virtiofsd way, valid for every file type).
pub fn xattr(dir: BorrowedFd<'_>, name: &CStr, op: XattrOp<'_>) -> io::Result<XattrReply> {
    let target = if name.is_empty() {
        open_beneath(dir, c".", libc::O_PATH, 0, true)?
    } else {
        open_beneath(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0, true)?
    };
    let proc_path = CString::new(format!("/proc/self/fd/{}", target.as_raw_fd()))
        .expect("no NUL in a formatted path");
    let p = proc_path.as_ptr();
    let sized = |size: usize, n: usize, mut buf: Vec<u8>| {
        if size == 0 {
            XattrReply::Size(n)
        } else {
            buf.truncate(n);
            XattrReply::Data(buf)
        }
    };
    match op {
        XattrOp::Get(attr, size) => {
            let mut buf = vec![0u8; size];
            // SAFETY: the buffer is valid for `size` bytes (size 0 asks for the length only).
            let n = check_size(unsafe {
                libc::getxattr(p, attr.as_ptr(), buf.as_mut_ptr().cast(), size)
            })?;
            Ok(sized(size, n, buf))
        }
        XattrOp::List(size) => {
            let mut buf = vec![0u8; size];
            // SAFETY: as above, for listxattr.
            let n = check_size(unsafe { libc::listxattr(p, buf.as_mut_ptr().cast(), size) })?;
            Ok(sized(size, n, buf))
        }
        XattrOp::Set(attr, value, flags) => {
            // SAFETY: value is valid for its length; strings are NUL-terminated.
            check(unsafe {
                libc::setxattr(p, attr.as_ptr(), value.as_ptr().cast(), value.len(), flags)
            })?;
            Ok(XattrReply::Done)
        }
        XattrOp::Remove(attr) => {
            // SAFETY: NUL-terminated strings.
            check(unsafe { libc::removexattr(p, attr.as_ptr()) })?;
            Ok(XattrReply::Done)
        }
    }
}

/// `copy_file_range` of the whole range between two fds; a short copy is retried until done
/// or the source ends.
pub fn copy_range(
    src: BorrowedFd<'_>,
    src_off: u64,
    dst: BorrowedFd<'_>,
    dst_off: u64,
    len: u64,
) -> io::Result<u64> {
    let mut done: u64 = 0;
    while done < len {
        let mut off_in = (src_off + done) as libc::loff_t;
        let mut off_out = (dst_off + done) as libc::loff_t;
        // SAFETY: the offsets are valid in/out pointers; fds are valid.
        let n = check_size(unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                (len - done) as usize,
                0,
            )
        })?;
        if n == 0 {
            break;
        }
        done += n as u64;
    }
    Ok(done)
}

/// The identity a filesystem call runs under on a replica: the FUSE caller's uid, gid and
/// supplementary groups, so new objects get the right owner and the replica's own permission
/// check agrees with the kernel's.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Credentials {
    /// Filesystem uid.
    pub uid: u32,
    /// Filesystem gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// The umask new objects are created under (the caller's for create, mkdir and mknod:
    /// the replica then applies it, or the parent directory's default ACL instead, as the
    /// kernel would natively).
    pub umask: u32,
}

impl Credentials {
    /// The daemon's own identity (root).
    pub fn root() -> Self {
        Credentials::default()
    }

    /// The caller of a FUSE request: its uid and gid, and `groups`, its supplementary groups
    /// (see [`caller_groups`]).
    pub fn of_caller(uid: u32, gid: u32, groups: Vec<u32>) -> Self {
        Credentials {
            uid,
            gid,
            groups,
            umask: 0,
        }
    }

    /// The same caller creating an object under `umask`.
    pub fn with_umask(mut self, umask: u32) -> Self {
        self.umask = umask & 0o777;
        self
    }
}

/// The supplementary groups of process `pid`, from /proc; None when it is gone.
pub fn caller_groups(pid: u32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    Some(
        line.split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
    )
}

thread_local! {
    static CURRENT_CREDS: std::cell::RefCell<Credentials> = std::cell::RefCell::new(Credentials::root());
}

/// Switches the calling thread (only it) to `creds` for filesystem access. glibc's
/// setuid/setgroups would change every thread of the process, so raw syscalls are used.
pub fn set_thread_credentials(creds: &Credentials) -> io::Result<()> {
    CURRENT_CREDS.with(|cur| {
        let mut cur = cur.borrow_mut();
        if *cur == *creds {
            return Ok(());
        }
        if (cur.uid, cur.gid, &cur.groups) != (creds.uid, creds.gid, &creds.groups) {
            // Until the switch is complete the thread's identity is unknown: a failure below
            // must make the next call switch again, never skip it.
            cur.uid = u32::MAX;
            // Back to root first so that the group change is permitted.
            // SAFETY: setfsuid/setfsgid take plain integers and affect only this thread.
            unsafe {
                libc::syscall(libc::SYS_setfsuid, 0);
            }
            // SAFETY: the pointer and length describe `creds.groups`; the raw syscall (unlike
            // glibc's wrapper) changes only this thread.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_setgroups,
                    creds.groups.len(),
                    creds.groups.as_ptr(),
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: as above.
            unsafe {
                libc::syscall(libc::SYS_setfsgid, creds.gid);
                libc::syscall(libc::SYS_setfsuid, creds.uid);
            }
            cur.uid = creds.uid;
            cur.gid = creds.gid;
            cur.groups = creds.groups.clone();
        }
        if cur.umask != creds.umask {
            set_thread_umask(creds.umask)?;
            cur.umask = creds.umask;
        }
        Ok(())
    })
}

thread_local! {
    static OWN_FS_STRUCT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Gives the calling thread its own umask (unsharing its fs attributes from the process the
/// first time), so that objects are created under the caller's umask on every replica.
fn set_thread_umask(mask: u32) -> io::Result<()> {
    if !OWN_FS_STRUCT.with(|own| own.get()) {
        // SAFETY: unshare(CLONE_FS) only detaches this thread's cwd/root/umask from the
        // other threads'; the daemon uses no relative paths.
        check(unsafe { libc::unshare(libc::CLONE_FS) })?;
        OWN_FS_STRUCT.with(|own| own.set(true));
    }
    // SAFETY: umask cannot fail; after the unshare it affects only this thread.
    unsafe { libc::umask(mask & 0o777) };
    Ok(())
}

/// Sets the process umask to 0: the umask that applies is the caller's, set per request (see
/// [`Credentials::umask`]); everything else the daemon creates gets exactly the mode it asks.
pub fn clear_umask() {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0) };
}

/// Raises the soft open-file limit to the hard limit (every open file holds one fd per replica).
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer; then the same struct back in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Name of an errno ("EIO"), for log lines that monitoring can grep.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ESTALE => "ESTALE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::EDQUOT => "EDQUOT",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFAULT => "EFAULT",
        _ => "E?",
    }
}

/// Waits until `fd` is ready for `events` (`POLLIN`, `POLLOUT`) or `timeout` passes;
/// `Ok(false)` on timeout or EINTR. The control
/// socket's accept loop and its bounded connect wait with it.
pub fn poll_one(
    fd: RawFd,
    events: libc::c_short,
    timeout: std::time::Duration,
) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd, count 1.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(r > 0)
}

/// Forks the process (the daemon detaching from its caller). Sound only while the process
/// has one thread: the caller forks before any thread is started.
pub fn fork_single_threaded() -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: called before any thread exists (the daemon forks first thing), so the child
    // is a faithful single-threaded copy.
    unsafe { nix::unistd::fork() }
}

/// Points stdin, stdout and stderr at `target` (a detached daemon's /dev/null).
pub fn redirect_stdio(target: BorrowedFd<'_>) {
    for fd in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        unsafe { libc::dup2(target.as_raw_fd(), fd) };
    }
}

/// Makes the descriptor `fd` (whose owner keeps it) refer to /dev/null from now on: its old
/// file (a replica's directory) is let go, so that its filesystem can be unmounted, while any
/// late `*at` call through the number fails with ENOTDIR instead of reaching another file.
pub fn retarget_to_null(fd: BorrowedFd<'_>) -> io::Result<()> {
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: dup2 onto a descriptor number its owner keeps open (it closes it later, now
    // /dev/null); the swap is atomic, so no other file can take the number meanwhile.
    if unsafe { libc::dup2(null.as_raw_fd(), fd.as_raw_fd()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Time since boot, suspend included (CLOCK_BOOTTIME): the clock the ownership lease is
/// observed on, which never jumps with the wall clock and keeps counting through a suspend.
pub fn boottime() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_BOOTTIME exists on every kernel chironfs runs on.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The wall clock as the kernel stamps inode times with it (CLOCK_REALTIME_COARSE, updated
/// once a clock tick): no inode time the kernel sets from now on is older than this one.
pub fn coarse_realtime() -> (i64, i64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_REALTIME_COARSE exists since Linux 2.6.32.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    (ts.tv_sec, ts.tv_nsec)
}

/// Whether a process `pid` runs on this host: it exists and is not a zombie (a killed daemon
/// stays a zombie until its parent reaps it, and holds nothing any more).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the command name, which ends with the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Changes the flags of the mount at `mountpoint` to exactly `flags` (MS_REMOUNT; the atime
/// mode is kept unless one is given). FUSE lets the kernel switch ro/rw by itself.
pub fn remount(mountpoint: &Path, flags: &[fuser::MountOption]) -> io::Result<()> {
    use fuser::MountOption as O;
    use nix::mount::MsFlags;
    let mut ms = MsFlags::MS_REMOUNT;
    for f in flags {
        ms |= match f {
            O::RO => MsFlags::MS_RDONLY,
            O::NoSuid => MsFlags::MS_NOSUID,
            O::NoDev => MsFlags::MS_NODEV,
            O::NoExec => MsFlags::MS_NOEXEC,
            O::Sync => MsFlags::MS_SYNCHRONOUS,
            O::DirSync => MsFlags::MS_DIRSYNC,
            O::NoAtime => MsFlags::MS_NOATIME,
            _ => MsFlags::empty(),
        };
    }
    nix::mount::mount::<str, Path, str, str>(None, mountpoint, None, ms, None)
        .map_err(io::Error::from)
}

/// Whether a chironfs mount is at `mountpoint` in this mount namespace (/proc/self/mountinfo;
/// the path as the kernel escapes it there).
pub fn is_chironfs_mounted(mountpoint: &str) -> bool {
    let escaped = mountpoint
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012");
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|text| {
        text.lines().any(|line| {
            let mut fields = line.split(' ');
            let point = fields.nth(4);
            let fstype = line
                .split(" - ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next());
            point == Some(escaped.as_str()) && fstype == Some("fuse.chironfs")
        })
    })
}

/// Calls `f(dirfd, name)` for `rel` beneath `root`; the root itself is (root, ".").
/// Shared by the resync and verify walks, which reach entries by path from the root.
pub fn at<T>(
    root: BorrowedFd<'_>,
    rel: &Path,
    f: impl FnOnce(BorrowedFd<'_>, &CStr) -> io::Result<T>,
) -> io::Result<T> {
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            let dir = open_dir_path(root, &cstr(parent.as_os_str())?)?;
            f(dir.as_fd(), &cstr(name)?)
        }
        (_, Some(name)) => f(root, &cstr(name)?),
        _ => f(root, c"."),
    }
}

/// `rel` as a C path for the `*at` calls, the root being ".".
pub fn rel_cstr(rel: &Path) -> io::Result<CString> {
    if rel.as_os_str().is_empty() {
        Ok(c".".to_owned())
    } else {
        cstr(rel.as_os_str())
    }
}

/// Waits up to `timeout` for a change in the mount table `mounts` (an open
/// /proc/self/mountinfo) describes. True if one came, or if the wait failed (the caller then
/// looks at the table anyway).
pub fn wait_mount_change(mounts: BorrowedFd<'_>, timeout: std::time::Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: mounts.as_raw_fd(),
        events: libc::POLLPRI,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd and the count 1; the fd stays open (borrowed) for the call.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    r != 0
}

/// fusectl's mount point: one directory per FUSE connection, named by its device number.
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// fusectl's `statfs` magic (FUSE_CTL_SUPER_MAGIC).
const FUSECTL_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x6573_5543);

/// Ends the FUSE connection of device number `dev` (the kernel's encoding) through fusectl's
/// `abort` file, mounting fusectl first if it is not (as systemd does at boot): every request
/// thread then hears the end. Ok(false) if the connection is already gone.
pub fn abort_fuse_connection(dev: u64) -> io::Result<bool> {
    let is_fusectl =
        |p: &str| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type() == FUSECTL_MAGIC);
    if !is_fusectl(FUSECTL) {
        nix::mount::mount(
            Some("fusectl"),
            FUSECTL,
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(io::Error::from)?;
    }
    match std::fs::write(Path::new(FUSECTL).join(dev.to_string()).join("abort"), "1") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the memory malloc holds free back to the system (glibc's `malloc_trim(0)`: the free
/// pages inside every arena, and the main arena's top; the only arena, see [`tune_malloc`]).
/// A no-op with another libc.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks malloc's own arenas under their locks and returns pages
    // of free chunks; it may be called from any thread at any time and frees nothing in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Allocations from this size up get their own mapping, given back to the system when freed.
const MMAP_FROM: i32 = 4 << 20;

/// Makes malloc give large blocks their own mapping (from [`MMAP_FROM`] up), for good: glibc
/// otherwise raises that threshold to the size of the largest block freed, and then keeps
/// the request threads' 16 MB read buffers and the node table's grown indexes inside its
/// arenas, where memory once used stays with the process. Smaller blocks (a 1 MB read's
/// reply) are not concerned; free memory at the top of a heap is kept up to twice that size,
/// as glibc's own rule would (a heap shrunk after every 1 MB reply would fault its pages in
/// again at the next), until [`release_free_memory`].
///
/// And one arena for every thread: glibc gives each thread that allocates an arena of its
/// own (up to 8 per CPU), and `malloc_trim` gives back the top of the main arena only, so
/// the free memory at the top of every other arena stayed, up to that 8 MB each: after the
/// kernel forgot 30,000 nodes, 7-15 MB over the RSS before them, most of it at the tops of
/// the request and replica threads' arenas, with 1-2 MB still in use (now 2-3 MB over).
/// Small blocks still come from each thread's own cache (tcache) without the arena's lock;
/// measured on 2 CPUs, the daemon's CPU time per write, create, stat and delete did not
/// change, and its peak RSS fell by a quarter (fewer half-used heaps). Called once at
/// start-up, before any thread. A no-op with another libc.
pub fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets parameters of malloc's own; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_FROM);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * MMAP_FROM);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
