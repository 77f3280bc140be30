//! The engine's writes on the target replica: create an entry, link it to its hard-link
//! group, copy a file's content (rate-limited, cancellable), fix owner, mode and xattrs, set
//! the times, remove a subtree.
//!
//! Each is one step `copy.rs` decided on; it touches the target (and reads the source's
//! content and xattrs) through the root fds with the `sys` wrappers, never following a
//! symlink.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::copy::{Engine, Res};
use super::plan::{AttrFix, Meta};
use super::read::{errno, gone, open_to_read, stat_of, xattrs_of};
use crate::sys::{self, TimeSpec, XattrOp};

/// The most content copied in one call (less under a rate limit).
const CHUNK: u64 = 8 << 20;

impl Engine {
    /// Creates the target's `rel` as the source entry `s` is (a regular file with its
    /// content), removing what is in the way first when `replace`.
    pub(super) fn create(&mut self, rel: &Path, s: &Meta, replace: bool) -> Res<()> {
        if replace {
            self.remove(rel)?;
        }
        let root = self.dst_root.as_fd();
        let r = match s.kind {
            libc::S_IFREG => return self.copy_content(rel, true),
            libc::S_IFDIR => sys::at(root, rel, |dir, name| sys::mkdir_at(dir, name, 0o700)),
            libc::S_IFLNK => {
                let target = sys::cstr(std::ffi::OsStr::from_bytes(
                    s.link.as_deref().unwrap_or_default(),
                ));
                target.and_then(|t| sys::at(root, rel, |dir, name| sys::symlink_at(&t, dir, name)))
            }
            kind => sys::at(root, rel, |dir, name| {
                sys::mknod_at(dir, name, kind | 0o600, s.rdev)
            }),
        };
        self.t(rel, r)
    }

    /// Hard-links the target's `rel` to its group's inode on the target (the group's first
    /// link), removing what is in the way first when `replace`.
    pub(super) fn link_to_group(&mut self, rel: &Path, s: &Meta, replace: bool) -> Res<()> {
        if replace {
            self.remove(rel)?;
        }
        let leader = self.groups[&s.ino].0.clone();
        let dst_root = self.dst_root.as_fd();
        let r = sys::at(dst_root, &leader, |od, on| {
            sys::at(dst_root, rel, |nd, nn| sys::link_at(od, on, nd, nn))
        });
        self.t(rel, r)
    }

    /// Copies the source file's bytes into the target's (created when `create`).
    pub(super) fn copy_content(&mut self, rel: &Path, create: bool) -> Res<()> {
        let c = self.s(rel, sys::rel_cstr(rel))?;
        let src: OwnedFd = self.s(rel, open_to_read(self.src_root.as_fd(), &c))?;
        let mut flags = libc::O_WRONLY | libc::O_TRUNC | libc::O_NOFOLLOW;
        if create {
            flags |= libc::O_CREAT | libc::O_EXCL;
        }
        let dst: OwnedFd = self.t(
            rel,
            sys::open_beneath(self.dst_root.as_fd(), &c, flags, 0o600, true),
        )?;
        let mut off: u64 = 0;
        let mut plain = false;
        loop {
            self.check_cancel(rel)?;
            self.progress.checked.fetch_add(1, Ordering::Relaxed);
            // Under the write barrier (not tolerant) every mutation waits for this pass:
            // the limit, which protects the mount's load, would only add to the wait.
            let limited = self.tolerant;
            let chunk = if limited {
                CHUNK.min(self.progress.chunk())
            } else {
                CHUNK
            };
            let n = if plain {
                let want = chunk.min(1 << 20) as usize;
                let data = self.s(rel, sys::pread_full(src.as_fd(), want, off))?;
                self.t(rel, sys::pwrite_full(dst.as_fd(), &data, off))?;
                data.len() as u64
            } else {
                match sys::copy_range(src.as_fd(), off, dst.as_fd(), off, chunk) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            errno(&e),
                            libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS
                        ) =>
                    {
                        plain = true;
                        continue;
                    }
                    // Which side failed is unknown; the target is the one being written.
                    Err(e) => return self.t(rel, Err(e)),
                }
            };
            if n == 0 {
                break;
            }
            off += n;
            self.progress.bytes.fetch_add(n, Ordering::Relaxed);
            if limited {
                self.pace(rel, n)?;
            }
        }
        Ok(())
    }

    /// Waits as the rate limit asks after `n` bytes were copied, in short slices so a
    /// cancel is seen at once (each wait is at most a quarter second's worth of the rate).
    fn pace(&self, rel: &Path, n: u64) -> Res<()> {
        let mut wait = self.progress.spend(n);
        while !wait.is_zero() {
            self.check_cancel(rel)?;
            let slice = wait.min(Duration::from_millis(100));
            std::thread::sleep(slice);
            wait -= slice;
        }
        Ok(())
    }

    /// Sets the owner and mode `fix` names, and the xattrs wherever they differ.
    pub(super) fn fix_attrs(&mut self, rel: &Path, s: &Meta, fix: AttrFix) -> Res<()> {
        let root = self.dst_root.as_fd();
        if fix.owner {
            self.t(
                rel,
                sys::at(root, rel, |d, n| sys::chown_at(d, n, s.uid, s.gid)),
            )?;
        }
        // A chown clears set-id bits: the mode goes after it.
        if (fix.mode || fix.owner) && !s.is(libc::S_IFLNK) {
            self.t(rel, sys::at(root, rel, |d, n| sys::chmod_at(d, n, s.perm)))?;
        }
        let want = self.s(rel, xattrs_of(self.src_root.as_fd(), rel))?;
        let have = self.t(rel, xattrs_of(root, rel))?;
        if want != have {
            for (name, value) in &want {
                if have.get(name) != Some(value) {
                    let cname = CString::new(name.clone()).expect("no NUL in an xattr name");
                    let r = sys::at(root, rel, |d, n| {
                        sys::xattr(d, n, XattrOp::Set(&cname, value, 0))
                    });
                    self.t(rel, r)?;
                }
            }
            for name in have.keys().filter(|n| !want.contains_key(*n)) {
                let cname = CString::new(name.clone()).expect("no NUL in an xattr name");
                let r = sys::at(root, rel, |d, n| sys::xattr(d, n, XattrOp::Remove(&cname)));
                self.t(rel, r)?;
            }
        }
        Ok(())
    }

    /// Sets the target's atime and mtime to the source's.
    pub(super) fn set_times(&mut self, rel: &Path, s: &Meta) -> Res<()> {
        let a = TimeSpec::At {
            sec: s.atime.0,
            nsec: s.atime.1,
        };
        let m = TimeSpec::At {
            sec: s.mtime.0,
            nsec: s.mtime.1,
        };
        let r = sys::at(self.dst_root.as_fd(), rel, |d, n| {
            sys::utimens_at(d, n, a, m)
        });
        self.t(rel, r)
    }

    /// Removes `rel` from the target, a directory with everything below it.
    pub(super) fn remove(&mut self, rel: &Path) -> Res<()> {
        self.check_cancel(rel)?;
        let root = Arc::clone(&self.dst_root);
        let root = root.as_fd();
        let Some(d) = self.t(rel, stat_of(root, rel))? else {
            return Ok(());
        };
        if d.is(libc::S_IFDIR) {
            self.present.clear();
            let c = self.t(rel, sys::rel_cstr(rel))?;
            for e in self.t(rel, sys::read_dir_all(root, &c))? {
                self.remove(&rel.join(e.name))?;
            }
        }
        self.claimed.remove(&d.ino);
        match sys::at(root, rel, |dir, name| {
            sys::unlink_at(dir, name, d.is(libc::S_IFDIR))
        }) {
            Err(e) if gone(&e) => Ok(()),
            r => self.t(rel, r),
        }
    }
}
