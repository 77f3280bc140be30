//! The rules an open's flags decide: what a replica's open(2) is given, whether the open
//! writes, and the open flags the kernel is answered with for each I/O mode.
//!
//! Pure: no replica, no lock, no table (the I/O mode itself is decided by
//! [`crate::rules::iomode`], applied in `io_mode.rs`).

use fuser::FopenFlags;

use crate::rules::iomode::Mode;

/// Flags never passed to a replica's open: appends are placed by the kernel's offset on every
/// replica, O_DIRECT is not promised to the kernel, creation is decided by the op itself.
const STRIPPED_OPEN_FLAGS: i32 =
    libc::O_APPEND | libc::O_DIRECT | libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY;

/// The flags a replica's file is opened with for the kernel's `flags`: without the stripped
/// ones, and never through a symlink (the replicas' own symlinks are entries, not ways out).
pub(super) fn replica_flags(flags: i32) -> i32 {
    (flags & !STRIPPED_OPEN_FLAGS) | libc::O_NOFOLLOW
}

/// Opened for writing: its handle reaches every replica's copy, and the journal tracks it.
pub(super) fn writes(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
}

/// An open that changes the file: for writing, or truncating (O_RDONLY | O_TRUNC truncates
/// too). It fans out to every replica; other opens are served by one.
pub(super) fn changes_file(flags: i32) -> bool {
    writes(flags) || flags & libc::O_TRUNC != 0
}

/// Opened for reading and writing: only such a handle can map the file shared and write
/// through the mapping (see `ChironFs::heal_shared_mapping`).
pub(super) fn reads_and_writes(flags: i32) -> bool {
    flags & libc::O_ACCMODE == libc::O_RDWR
}

/// The open flags of a writable open outside passthrough (see
/// [`super::KernelIo::direct_writes`]).
pub(super) fn writer_flags(direct_writes: bool) -> FopenFlags {
    if direct_writes {
        FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
    } else {
        FopenFlags::empty()
    }
}

/// How an open in I/O `mode` is answered: its open flags, and the kernel backing file
/// (`backing`, kept only in a passthrough mode) the kernel is to use, None for a plain open.
pub(super) fn open_reply<B>(
    mode: Mode,
    backing: Option<B>,
    writable: bool,
    direct_writes: bool,
) -> (FopenFlags, Option<B>) {
    match (mode, backing) {
        (Mode::Passthrough, Some(b)) => (FopenFlags::empty(), Some(b)),
        (Mode::Direct, Some(b)) => (FopenFlags::FOPEN_DIRECT_IO, Some(b)),
        _ if writable => (writer_flags(direct_writes), None),
        _ => (FopenFlags::empty(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_open_drops_what_the_op_or_the_kernel_decides() {
        let kernel = libc::O_WRONLY
            | libc::O_APPEND
            | libc::O_DIRECT
            | libc::O_CREAT
            | libc::O_EXCL
            | libc::O_NOCTTY
            | libc::O_TRUNC
            | libc::O_CLOEXEC;
        assert_eq!(
            replica_flags(kernel),
            libc::O_WRONLY | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW
        );
        assert_eq!(replica_flags(libc::O_RDONLY), libc::O_NOFOLLOW);
    }

    #[test]
    fn which_opens_write_and_which_change_the_file() {
        let cases = [
            // flags, writes, changes_file, reads_and_writes
            (libc::O_RDONLY, false, false, false),
            (libc::O_RDONLY | libc::O_TRUNC, false, true, false),
            (libc::O_WRONLY, true, true, false),
            (libc::O_RDWR, true, true, true),
            (libc::O_RDWR | libc::O_APPEND, true, true, true),
        ];
        for (flags, w, c, rw) in cases {
            assert_eq!(writes(flags), w, "writes({flags:o})");
            assert_eq!(changes_file(flags), c, "changes_file({flags:o})");
            assert_eq!(reads_and_writes(flags), rw, "reads_and_writes({flags:o})");
        }
    }

    #[test]
    fn direct_writes_ask_for_parallel_direct_io() {
        assert_eq!(writer_flags(false), FopenFlags::empty());
        let flags = writer_flags(true);
        assert!(flags.contains(FopenFlags::FOPEN_DIRECT_IO));
        assert!(flags.contains(FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES));
    }

    #[test]
    fn the_open_answer_follows_the_mode() {
        let direct = FopenFlags::FOPEN_DIRECT_IO;
        // Passthrough: the kernel reads the backing file, through its page cache.
        assert_eq!(
            open_reply(Mode::Passthrough, Some(3), false, true),
            (FopenFlags::empty(), Some(3))
        );
        // Direct: the backing file is named, but every read and write comes to the daemon.
        assert_eq!(
            open_reply(Mode::Direct, Some(3), true, false),
            (direct, Some(3))
        );
        // A passthrough mode without a backing file (refused) is a plain open.
        assert_eq!(
            open_reply(Mode::Passthrough, None::<u8>, false, true),
            (FopenFlags::empty(), None)
        );
        assert_eq!(
            open_reply(Mode::Cached, None::<u8>, true, true),
            (writer_flags(true), None)
        );
        assert_eq!(
            open_reply(Mode::Cached, None::<u8>, true, false),
            (FopenFlags::empty(), None)
        );
        assert_eq!(
            open_reply(Mode::Cached, None::<u8>, false, true),
            (FopenFlags::empty(), None)
        );
    }
}
