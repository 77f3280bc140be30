//! Kept directory handles of one replica, by node id.
//!
//! Every path operation works on an entry of a directory (`unlinkat(dir, name)`...), and that
//! directory used to be opened beneath the replica root and closed again for each request on
//! each replica: two syscalls and a path walk, about a tenth of an unlink. A kept `O_PATH`
//! handle saves them, and it is safe to keep because it names the directory object, not a
//! path:
//! - a renamed directory keeps its node id and its handle follows it;
//! - a removed directory's node id is never given again (crate::fuse::nodes), so its handle is
//!   never asked for by a new directory of the same name;
//! - a resync may replace a replica's directories while it is out of service, so everything
//!   kept is dropped whenever the replica leaves or rejoins service ([`DirFds::drop_all`]); a
//!   handle opened before that is not kept after it (the epoch).
//!
//! The number kept is bounded ([`CAPACITY`]); past it an arbitrary one makes room.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

/// Most directory handles kept per replica: the directories in use at once are few.
pub const CAPACITY: usize = 128;

/// A replica's kept directory handles (see the module doc).
#[derive(Debug, Default)]
pub struct DirFds {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    fds: HashMap<u64, Arc<OwnedFd>>,
    /// Bumped by every [`DirFds::drop_all`].
    epoch: u64,
}

impl DirFds {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The handle kept for directory `node`, else the one `open` gives (then kept, unless
    /// [`DirFds::drop_all`] ran meanwhile).
    pub fn get_or_open(
        &self,
        node: u64,
        open: impl FnOnce() -> io::Result<OwnedFd>,
    ) -> io::Result<Arc<OwnedFd>> {
        let epoch = {
            let inner = self.lock();
            if let Some(fd) = inner.fds.get(&node) {
                return Ok(Arc::clone(fd));
            }
            inner.epoch
        };
        let fd = Arc::new(open()?);
        let mut inner = self.lock();
        if inner.epoch == epoch {
            if inner.fds.len() >= CAPACITY
                && let Some(&any) = inner.fds.keys().next()
            {
                inner.fds.remove(&any);
            }
            inner.fds.insert(node, Arc::clone(&fd));
        }
        Ok(fd)
    }

    /// Directory `node` was removed: its handle is of no more use.
    pub fn drop_node(&self, node: u64) {
        self.lock().fds.remove(&node);
    }

    /// Drops every handle (the replica leaves or rejoins service).
    pub fn drop_all(&self) {
        let mut inner = self.lock();
        inner.fds.clear();
        inner.epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn kept(fds: &DirFds) -> usize {
        fds.lock().fds.len()
    }

    fn devnull() -> io::Result<OwnedFd> {
        Ok(std::fs::File::open("/dev/null")?.into())
    }

    #[test]
    fn a_kept_handle_is_reused_and_opened_once() {
        let fds = DirFds::default();
        let opened = Cell::new(0);
        let open = || {
            opened.set(opened.get() + 1);
            devnull()
        };
        let a = fds.get_or_open(7, open).unwrap();
        let b = fds
            .get_or_open(7, || panic!("must not open again"))
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(opened.get(), 1);
    }

    #[test]
    fn a_failed_open_keeps_nothing() {
        let fds = DirFds::default();
        let err = fds
            .get_or_open(7, || Err(io::Error::from_raw_os_error(libc::ENOENT)))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(kept(&fds), 0);
    }

    #[test]
    fn drop_all_forgets_everything_even_a_handle_being_opened() {
        let fds = DirFds::default();
        fds.get_or_open(1, devnull).unwrap();
        fds.drop_all();
        assert_eq!(kept(&fds), 0);
        // Opened across a drop_all (a resync finished meanwhile): used once, not kept.
        fds.get_or_open(2, || {
            fds.drop_all();
            devnull()
        })
        .unwrap();
        assert_eq!(kept(&fds), 0);
        fds.get_or_open(2, devnull).unwrap();
        assert_eq!(kept(&fds), 1);
        fds.drop_node(2);
        assert_eq!(kept(&fds), 0);
    }

    #[test]
    fn the_number_kept_is_bounded() {
        let fds = DirFds::default();
        for node in 0..(CAPACITY as u64 * 3) {
            fds.get_or_open(node, devnull).unwrap();
        }
        assert_eq!(kept(&fds), CAPACITY);
        // The newest one is always kept.
        let last = CAPACITY as u64 * 3 - 1;
        fds.get_or_open(last, || panic!("the newest must be kept"))
            .unwrap();
    }
}
