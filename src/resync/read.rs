//! How one entry of a replica is read: its metadata ([`stat_of`]), its xattrs ([`xattrs_of`])
//! and its content ([`open_to_read`]), beneath the replica's root fd, never following a
//! symlink.
//!
//! Shared with `verify`, which must read entries exactly as the resync compares them (so "verify
//! says identical" and "resync has nothing to copy" agree). Read-only: it touches the replicas
//! only through `sys`, and nothing of the engine.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use super::plan::Meta;
use crate::sys::{self, XattrOp, XattrReply};

/// The errno of an error (EIO when it carries none).
pub(super) fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// The entry is not there (ENOENT, ENOTDIR): removed or replaced by a concurrent mutation,
/// which the resync's dirty set and the verify's recheck look at again; not a replica error.
pub fn gone(e: &io::Error) -> bool {
    matches!(errno(e), libc::ENOENT | libc::ENOTDIR)
}

/// The metadata of `rel` beneath `root` (never following a symlink), None when it does not
/// exist; shared with `verify`, which must read entries exactly as the resync compares them.
pub fn stat_of(root: BorrowedFd<'_>, rel: &Path) -> io::Result<Option<Meta>> {
    let st = match sys::at(root, rel, sys::lstat_at) {
        Ok(st) => st,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let link = if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        Some(sys::at(root, rel, sys::readlink_at)?)
    } else {
        None
    };
    Ok(Some(Meta::of(&st, link)))
}

/// The xattrs of an entry as name -> value; none where the filesystem has no xattrs (shared
/// with `verify`).
pub fn xattrs_of(root: BorrowedFd<'_>, rel: &Path) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    // The whole path beneath the root in one open (`sys::xattr` opens it with no symlink
    // followed, the last component included), not its parent first: this runs for every entry.
    let whole = sys::rel_cstr(rel)?;
    let list = match sized(root, &whole, XattrOp::List) {
        Ok(l) => l,
        Err(e) if matches!(errno(&e), libc::EOPNOTSUPP) => return Ok(out),
        Err(e) => return Err(e),
    };
    for attr in list.split(|&b| b == 0).filter(|a| !a.is_empty()) {
        let cattr = CString::new(attr).expect("split at NUL");
        match sized(root, &whole, |size| XattrOp::Get(&cattr, size)) {
            Ok(v) => {
                out.insert(attr.to_vec(), v);
            }
            Err(e) if errno(&e) == libc::ENODATA => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// An xattr list or value (`op(size)`, size 0 asking for the size): its size first, then the
/// bytes, asked again (up to four times) when it grew in between.
fn sized<'a>(
    dir: BorrowedFd<'_>,
    name: &CStr,
    op: impl Fn(usize) -> XattrOp<'a>,
) -> io::Result<Vec<u8>> {
    for _ in 0..4 {
        let size = match sys::xattr(dir, name, op(0))? {
            XattrReply::Size(n) => n,
            _ => 0,
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        match sys::xattr(dir, name, op(size)) {
            Ok(XattrReply::Data(d)) => return Ok(d),
            Err(e) if errno(&e) == libc::ERANGE => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(Vec::new()),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ERANGE))
}

/// Opens the regular file `rel` (from [`sys::rel_cstr`]) beneath `root` to read it, without
/// moving its atime where allowed (`O_NOATIME` needs the owner's or root's rights: dropped on
/// EPERM); shared with `verify`'s content comparison.
pub fn open_to_read(root: BorrowedFd<'_>, rel: &CStr) -> io::Result<OwnedFd> {
    // O_NOATIME where allowed: see sys::open_beneath.
    sys::open_beneath(root, rel, libc::O_RDONLY | libc::O_NOFOLLOW, 0, true)
}
