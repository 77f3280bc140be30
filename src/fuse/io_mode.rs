//! How the kernel serves an open file: the I/O mode [`crate::rules::iomode`] decides (cached,
//! direct, passthrough), the backing file a passthrough open names, and the healing of the
//! replicas after a shared mapping wrote to the backing replica only.
//!
//! Touches the I/O-mode counts, the handle table, the replicas' descriptors of one file and,
//! for a heal, the file's order lock and a fan-out.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fuser::{BackingId, FileHandle, INodeNo, ReplyOpen};

use super::ChironFs;
use super::handles::OpenFile;
use super::open_flags::{open_reply, reads_and_writes};
use super::stamp::stamp_mtime;
use crate::rules::iomode::{Decision, Mode, Wish};
use crate::sys::{self, Credentials, TimeSpec};

/// A kernel backing file and the replica whose file it is.
type Backing = (Arc<BackingId>, usize);

impl ChironFs {
    /// Answers an open that succeeded on the replicas in the I/O mode [`crate::rules::iomode`]
    /// decides: a read-only open served by a local replica may become kernel passthrough
    /// (`served_by` is the replica that opened it; None for a writable open).
    pub(super) fn answer_open(
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
        let decision = self.decide_io(ino.0, wish);
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
        let fh = self.register_open(ino.0, file, mode, backing);
        match open_reply(mode, id, writable, self.direct_writes) {
            (flags, Some(id)) => reply.opened_passthrough(fh, flags, &id),
            (flags, None) => reply.opened(fh, flags),
        }
    }

    /// The I/O mode an open of `ino` gets (see [`crate::rules::iomode`]).
    pub(super) fn decide_io(&self, ino: u64, wish: Wish) -> Decision<BackingId> {
        let replicas = self.set.replicas();
        self.io_modes
            .decide(ino, wish, |r| replicas[r].is_in_service())
    }

    /// Counts the open of `ino` in `mode` until its release, and gives `file` its handle.
    pub(super) fn register_open(
        &self,
        ino: u64,
        file: Arc<OpenFile>,
        mode: Mode,
        backing: Option<Backing>,
    ) -> FileHandle {
        let ticket = self.io_modes.register(ino, mode, backing);
        *file.io.lock().unwrap_or_else(|e| e.into_inner()) = Some(ticket);
        self.handles.add_file(file)
    }

    /// Registers the file's descriptor on replica `index` as the kernel's backing file; None
    /// (logged once) when the kernel refuses, and the open stays cached.
    fn new_backing(&self, file: &OpenFile, index: usize, reply: &ReplyOpen) -> Option<Backing> {
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

    /// A read-write open of an inode in passthrough mode may have been mapped shared: the
    /// kernel writes such a mapping's pages to the backing replica only (write(2) calls still
    /// come here and reach every replica). At its release, the other replicas' copies are
    /// compared with the backing file and the differing blocks copied, under the file's order
    /// lock. Write-only opens cannot be mapped and cost nothing.
    pub(super) fn heal_shared_mapping(&self, ino: INodeNo, file: &Arc<OpenFile>) {
        let backing = {
            let io = file.io.lock().unwrap_or_else(|e| e.into_inner());
            match io.as_ref() {
                Some(t) if t.mode() == Mode::Direct => t.backing_replica(),
                _ => None,
            }
        };
        let Some(backing) = backing else { return };
        if !reads_and_writes(file.flags) {
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
}

/// Makes `dst` hold the bytes of `src`: compares them block by block, rewrites the blocks that
/// differ, sets the size and, when anything changed, the source's mtime. Returns the bytes
/// rewritten (plus one for a size change).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    /// A file holding `bytes`, its mtime `sec`.
    fn file_with(bytes: &[u8], sec: i64) -> File {
        let f = tempfile::tempfile().unwrap();
        sys::pwrite_full(f.as_fd(), bytes, 0).unwrap();
        stamp_mtime(f.as_fd(), TimeSpec::At { sec, nsec: 0 });
        f
    }

    fn contents(f: &File) -> Vec<u8> {
        let size = sys::fstat(f.as_fd()).unwrap().st_size as usize;
        sys::pread_full(f.as_fd(), size, 0).unwrap()
    }

    #[test]
    fn equal_copies_are_left_alone() {
        let src = file_with(b"same bytes", 2000);
        let dst = file_with(b"same bytes", 1000);
        assert_eq!(copy_differences(src.as_fd(), dst.as_fd()).unwrap(), 0);
        assert_eq!(
            sys::fstat(dst.as_fd()).unwrap().st_mtime,
            1000,
            "mtime untouched"
        );
    }

    #[test]
    fn only_the_differing_blocks_are_rewritten() {
        // Three blocks of 1 MiB and a tail; the second block differs.
        let mut ours = vec![7u8; 3 * (1 << 20) + 10];
        let theirs = ours.clone();
        ours[(1 << 20) + 5] = 8;
        let src = file_with(&ours, 2000);
        let dst = file_with(&theirs, 1000);
        assert_eq!(copy_differences(src.as_fd(), dst.as_fd()).unwrap(), 1 << 20);
        assert_eq!(contents(&dst), ours);
        assert_eq!(
            sys::fstat(dst.as_fd()).unwrap().st_mtime,
            2000,
            "the source's mtime"
        );
    }

    #[test]
    fn a_longer_copy_is_cut_to_the_source() {
        let src = file_with(b"abc", 2000);
        let dst = file_with(b"abcdef", 1000);
        assert_eq!(copy_differences(src.as_fd(), dst.as_fd()).unwrap(), 1);
        assert_eq!(contents(&dst), b"abc");
        assert_eq!(sys::fstat(dst.as_fd()).unwrap().st_mtime, 2000);
    }
}
