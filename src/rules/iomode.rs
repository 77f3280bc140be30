//! Which I/O mode each open file gets from the kernel: its page cache with every read and write
//! through the daemon (cached), kernel passthrough of reads to one replica's file (the kernel
//! reads the backing file itself, no request reaches the daemon), or passthrough with direct I/O
//! (every read and write through the daemon, as the kernel demands once an inode has a
//! passthrough open).
//!
//! The kernel refuses an open whose mode conflicts with the live opens of the same inode (the
//! application gets EIO): a passthrough open while a cached one is live, a cached one while a
//! passthrough one is live, and a second backing file for one inode. So one table decides every
//! open of an inode and counts the live ones; the counts drop at RELEASE, which the kernel sends
//! after it let go of the file, so the table never believes in fewer live opens than the kernel.
//! Only read-only opens start passthrough: their data comes from one replica, while a writable
//! open must reach every replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How the kernel serves one open file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Reads and writes through the daemon, the kernel's page cache in between.
    Cached,
    /// Reads straight from the backing replica's file by the kernel.
    Passthrough,
    /// Passthrough flag with direct I/O: reads and writes through the daemon, no page cache
    /// (the only mode the kernel accepts for a writable open, or for a read-only one whose
    /// backing replica left service, while the inode has a passthrough open).
    Direct,
}

/// What the opener knows about this open.
#[derive(Clone, Copy, Debug)]
pub struct Wish {
    /// Opened for writing (or truncating).
    pub writable: bool,
    /// Passthrough may start here: it is enabled, the kernel offered it, and the replica that
    /// would serve the reads is a local filesystem.
    pub eligible: bool,
}

/// The live opens of one inode.
#[derive(Debug)]
struct Inode<B> {
    cached: u32,
    passthrough: u32,
    /// The backing file every passthrough open of the inode shares, and the replica it is on.
    backing: Option<(Arc<B>, usize)>,
}

/// The decision for one open, before it is registered.
#[derive(Debug)]
pub struct Decision<B> {
    /// The mode to answer with.
    pub mode: Mode,
    /// For a passthrough mode: the inode's live backing file and its replica; None when
    /// [`Mode::Passthrough`] must create one (from the replica that serves the open).
    pub backing: Option<(Arc<B>, usize)>,
}

/// Live opens per inode; `B` is the kernel's backing file handle (a type parameter so the rules
/// are unit tested without a kernel).
#[derive(Debug)]
pub struct IoModes<B> {
    inodes: Mutex<HashMap<u64, Inode<B>>>,
}

impl<B> Default for IoModes<B> {
    fn default() -> Self {
        IoModes {
            inodes: Mutex::new(HashMap::new()),
        }
    }
}

/// A registered open: gives its count back when dropped (at RELEASE).
#[derive(Debug)]
pub struct Ticket<B> {
    table: Arc<IoModes<B>>,
    ino: u64,
    mode: Mode,
    /// Keeps the backing file registered with the kernel while this open lives.
    backing: Option<(Arc<B>, usize)>,
}

impl<B> Ticket<B> {
    /// The mode this open was answered with.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The replica holding the backing file, for a passthrough-mode open.
    pub fn backing_replica(&self) -> Option<usize> {
        self.backing.as_ref().map(|(_, r)| *r)
    }
}

impl<B> Drop for Ticket<B> {
    fn drop(&mut self) {
        let mut inodes = self.table.lock();
        if let Some(inode) = inodes.get_mut(&self.ino) {
            match self.mode {
                Mode::Cached => inode.cached = inode.cached.saturating_sub(1),
                Mode::Passthrough | Mode::Direct => {
                    inode.passthrough = inode.passthrough.saturating_sub(1);
                    if inode.passthrough == 0 {
                        inode.backing = None;
                    }
                }
            }
            if inode.cached == 0 && inode.passthrough == 0 {
                inodes.remove(&self.ino);
            }
        }
    }
}

impl<B> IoModes<B> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Inode<B>>> {
        self.inodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The mode for a new open of `ino`. `in_service` says whether a replica still serves
    /// reads (a read-only open must not read a backing replica taken out of service).
    /// Callers serialize the opens of one inode from this decision to [`IoModes::register`].
    pub fn decide(&self, ino: u64, wish: Wish, in_service: impl Fn(usize) -> bool) -> Decision<B> {
        let inodes = self.lock();
        let inode = inodes.get(&ino);
        if let Some((backing, replica)) = inode.and_then(|i| i.backing.as_ref()) {
            let mode = if !wish.writable && in_service(*replica) {
                Mode::Passthrough
            } else {
                Mode::Direct
            };
            return Decision {
                mode,
                backing: Some((Arc::clone(backing), *replica)),
            };
        }
        let cached_live = inode.is_some_and(|i| i.cached > 0);
        let mode = if !wish.writable && wish.eligible && !cached_live {
            Mode::Passthrough
        } else {
            Mode::Cached
        };
        Decision {
            mode,
            backing: None,
        }
    }

    /// Counts an answered open of `ino` in `mode` (with the backing file of a passthrough mode)
    /// until the returned ticket is dropped.
    pub fn register(
        self: &Arc<Self>,
        ino: u64,
        mode: Mode,
        backing: Option<(Arc<B>, usize)>,
    ) -> Ticket<B> {
        let mut inodes = self.lock();
        let inode = inodes.entry(ino).or_insert(Inode {
            cached: 0,
            passthrough: 0,
            backing: None,
        });
        let backing = match mode {
            Mode::Cached => {
                inode.cached += 1;
                None
            }
            Mode::Passthrough | Mode::Direct => {
                inode.passthrough += 1;
                if inode.backing.is_none() {
                    inode.backing = backing.clone();
                }
                backing
            }
        };
        Ticket {
            table: Arc::clone(self),
            ino,
            mode,
            backing,
        }
    }

    /// How many inodes have live opens (for tests and stats).
    pub fn live_inodes(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RO: Wish = Wish {
        writable: false,
        eligible: true,
    };
    const RW: Wish = Wish {
        writable: true,
        eligible: false,
    };

    fn table() -> Arc<IoModes<&'static str>> {
        Arc::new(IoModes::default())
    }

    fn up(_: usize) -> bool {
        true
    }

    #[test]
    fn a_read_only_open_of_an_idle_inode_starts_passthrough() {
        let t = table();
        let d = t.decide(7, RO, up);
        assert_eq!(d.mode, Mode::Passthrough);
        assert!(
            d.backing.is_none(),
            "the first open creates the backing file"
        );
    }

    #[test]
    fn writable_and_ineligible_opens_of_an_idle_inode_are_cached() {
        let t = table();
        assert_eq!(t.decide(7, RW, up).mode, Mode::Cached);
        let remote = Wish {
            writable: false,
            eligible: false,
        };
        assert_eq!(t.decide(7, remote, up).mode, Mode::Cached);
    }

    #[test]
    fn a_live_cached_open_keeps_later_read_only_opens_cached() {
        let t = table();
        let writer = t.register(7, Mode::Cached, None);
        assert_eq!(t.decide(7, RO, up).mode, Mode::Cached);
        assert_eq!(
            t.decide(8, RO, up).mode,
            Mode::Passthrough,
            "other inodes unaffected"
        );
        drop(writer);
        assert_eq!(t.decide(7, RO, up).mode, Mode::Passthrough);
        assert_eq!(t.live_inodes(), 0);
    }

    #[test]
    fn every_open_of_a_passthrough_inode_shares_its_backing_file() {
        let t = table();
        let first = t.register(7, Mode::Passthrough, Some((Arc::new("b0"), 1)));
        let reader = t.decide(7, RO, up);
        assert_eq!(reader.mode, Mode::Passthrough);
        assert_eq!(
            reader.backing.as_ref().map(|(b, r)| (**b, *r)),
            Some(("b0", 1))
        );
        let writer = t.decide(7, RW, up);
        assert_eq!(
            writer.mode,
            Mode::Direct,
            "a writer must reach every replica"
        );
        assert_eq!(writer.backing.map(|(b, _)| *b), Some("b0"));
        drop(first);
    }

    #[test]
    fn a_backing_replica_out_of_service_sends_new_reads_through_the_daemon() {
        let t = table();
        let _first = t.register(7, Mode::Passthrough, Some((Arc::new("b0"), 1)));
        let d = t.decide(7, RO, |r| r != 1);
        assert_eq!(d.mode, Mode::Direct);
    }

    #[test]
    fn the_backing_file_lives_until_the_last_passthrough_open_is_released() {
        let t = table();
        let backing = Arc::new("b0");
        let first = t.register(7, Mode::Passthrough, Some((Arc::clone(&backing), 0)));
        let second = t.register(7, Mode::Direct, Some((Arc::clone(&backing), 0)));
        drop(first);
        assert!(
            Arc::strong_count(&backing) > 1,
            "still used by the second open"
        );
        assert_eq!(t.decide(7, RW, up).mode, Mode::Direct);
        drop(second);
        assert_eq!(Arc::strong_count(&backing), 1, "closed with the last open");
        assert_eq!(t.decide(7, RW, up).mode, Mode::Cached);
        assert_eq!(t.live_inodes(), 0);
    }

    #[test]
    fn a_reused_backing_outlives_a_release_racing_the_open() {
        let t = table();
        let first = t.register(7, Mode::Passthrough, Some((Arc::new("b0"), 0)));
        let d = t.decide(7, RO, up);
        drop(first); // the last open goes away between decision and registration
        let second = t.register(7, d.mode, d.backing);
        assert_eq!(second.backing_replica(), Some(0));
        assert_eq!(
            t.decide(7, RW, up).mode,
            Mode::Direct,
            "the inode is passthrough again"
        );
    }
}
