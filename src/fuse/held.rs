//! Inodes a removal frees, held open until the caller has its answer, and the reaper threads
//! that close them afterwards.
//!
//! Touches one local replica's directory (an `lstat` and an `O_PATH` open of the removed
//! entry) and the reaper channel; no table, no lock of the filesystem.

use std::ffi::CStr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, mpsc};

use crate::engine::replica::Replica;
use crate::sys;

/// Over /dev/fuse, the allocated size from which a removed file is held (see
/// [`HeldInodes`]); below it, freeing inside the unlink costs less than holding.
const HOLD_FROM_BYTES: u64 = 64 * 1024;

/// Threads that close held inodes: freeing big files goes on in parallel, as it did on the
/// request threads.
const REAPERS: usize = 2;

/// Inodes whose last name a mutation removes (an unlink, a rename over a file), held open on
/// local replicas until the caller has its answer. Evicting an inode, freeing its pages or
/// blocks, is most of such a mutation's cost (185 µs for 1 MiB on ext4, 11 ms for 64 MiB); held,
/// it happens at [`HeldInodes::release`], after the reply, instead of inside the syscall.
#[derive(Clone)]
pub(super) struct HeldInodes {
    held: Arc<Mutex<Vec<OwnedFd>>>,
    /// Small files too. Over /dev/fuse the request thread runs on another CPU than the
    /// caller, so freeing a small file there costs less than waking a reaper (daemon CPU
    /// per 4 KiB delete 75 -> 60 us, bench deletes 9.4k -> 11k/s). Over io_uring it runs on
    /// the caller's CPU, and any freeing there slows the caller (bench deletes 14k -> 8k/s).
    small_too: bool,
}

impl HeldInodes {
    /// Nothing held yet; `small_too`: whether files below [`HOLD_FROM_BYTES`] are held.
    pub(super) fn new(small_too: bool) -> Self {
        HeldInodes {
            held: Arc::default(),
            small_too,
        }
    }

    /// Holds `name` in `dir` if it exists and its removal would free it. Not on a network
    /// replica: NFS would rename a held file to .nfsXXXX instead of removing it.
    pub(super) fn hold(&self, r: &Replica, dir: BorrowedFd<'_>, name: &CStr) {
        if r.is_local() {
            self.hold_at(dir, name);
        }
    }

    /// [`HeldInodes::hold`] on a replica known to be local.
    fn hold_at(&self, dir: BorrowedFd<'_>, name: &CStr) {
        if !self.small_too {
            // A file with another name is not freed at all, a small one in microseconds.
            match sys::lstat_at(dir, name) {
                Ok(st) if worth_holding(&st) => {}
                _ => return,
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
    pub(super) fn release(self, reaper: &mpsc::Sender<Vec<OwnedFd>>) {
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|e| e.into_inner()));
        if held.is_empty() {
            return;
        }
        // A reaper that is gone (unmounting) leaves the closing to this thread.
        let _ = reaper.send(held);
    }
}

/// Over /dev/fuse, whether removing the file `st` describes is worth holding: its last name
/// goes, and it has at least [`HOLD_FROM_BYTES`] allocated to free.
fn worth_holding(st: &libc::stat) -> bool {
    st.st_nlink <= 1 && (st.st_blocks as u64) * 512 >= HOLD_FROM_BYTES
}

/// Starts the threads that close held inodes (see [`HeldInodes::release`]); they end when the
/// filesystem, the sender's owner, is dropped.
pub(super) fn start_reaper() -> mpsc::Sender<Vec<OwnedFd>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::time::Duration;

    /// A directory holding `name`, `blocks` 512-byte blocks allocated, `links` names.
    fn dir_with(name: &str, blocks: u64, links: u32) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        let f = File::create(&path).unwrap();
        if blocks > 0 {
            sys::pwrite_full(f.as_fd(), &vec![1u8; (blocks * 512) as usize], 0).unwrap();
            f.sync_all().unwrap();
        }
        for i in 1..links {
            std::fs::hard_link(&path, dir.path().join(format!("{name}.{i}"))).unwrap();
        }
        let handle = File::open(dir.path()).unwrap();
        (dir, handle)
    }

    fn held_count(h: &HeldInodes) -> usize {
        h.held.lock().unwrap().len()
    }

    #[test]
    fn only_big_files_losing_their_last_name_are_worth_holding() {
        let (_d, dir) = dir_with("f", 0, 1);
        let mut st = sys::lstat_at(dir.as_fd(), c"f").unwrap();
        let from = (HOLD_FROM_BYTES / 512) as i64;
        st.st_nlink = 1;
        st.st_blocks = from;
        assert!(worth_holding(&st), "exactly the threshold is held");
        st.st_blocks = from - 1;
        assert!(!worth_holding(&st), "below it is freed in place");
        st.st_blocks = from * 100;
        st.st_nlink = 2;
        assert!(
            !worth_holding(&st),
            "another name keeps it: nothing to free"
        );
    }

    #[test]
    fn over_dev_fuse_small_and_linked_files_are_not_held() {
        let (_d, dir) = dir_with("big", 2 * HOLD_FROM_BYTES / 512, 1);
        let held = HeldInodes::new(false);
        held.hold_at(dir.as_fd(), c"big");
        assert_eq!(held_count(&held), 1);

        let (_d, dir) = dir_with("small", 1, 1);
        held.hold_at(dir.as_fd(), c"small");
        held.hold_at(dir.as_fd(), c"absent");
        assert_eq!(held_count(&held), 1);

        let (_d, dir) = dir_with("linked", 2 * HOLD_FROM_BYTES / 512, 2);
        held.hold_at(dir.as_fd(), c"linked");
        assert_eq!(held_count(&held), 1);
    }

    #[test]
    fn over_io_uring_small_files_are_held_too() {
        let (_d, dir) = dir_with("small", 1, 1);
        let held = HeldInodes::new(true);
        held.hold_at(dir.as_fd(), c"small");
        held.hold_at(dir.as_fd(), c"absent");
        assert_eq!(held_count(&held), 1);
    }

    #[test]
    fn released_inodes_are_closed_by_a_reaper() {
        let (tx, rx) = mpsc::channel();
        // Nothing held: nothing sent.
        HeldInodes::new(true).release(&tx);
        assert!(rx.try_recv().is_err());

        let reaper = start_reaper();
        let (mut reader, writer) = std::io::pipe().unwrap();
        let held = HeldInodes::new(true);
        held.held.lock().unwrap().push(OwnedFd::from(writer));
        held.release(&reaper);
        // The pipe reads end-of-file once the reaper has closed its only writer.
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            done_tx
                .send(reader.read_to_end(&mut buf).map(|_| ()))
                .unwrap();
        });
        let closed = done.recv_timeout(Duration::from_secs(10));
        assert!(matches!(closed, Ok(Ok(()))), "the writer was never closed");
    }
}
