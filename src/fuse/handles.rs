//! The handles the kernel holds: an open file (one descriptor per replica), an open directory
//! (its listing), and the table their numbers index.
//!
//! Touches the node table (a handle follows its file through renames) and, for a handle's
//! lazy re-open on fail-over, one replica's file; never the replica set's fan-out, except to
//! tell the journal of a file open for writing ([`ChironFs::new_open_file`]).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use fuser::{BackingId, Errno, FileHandle};

use super::ChironFs;
use super::nodes::NodeTable;
use super::open_flags;
use super::reach::open_file;
use crate::engine::replica::{Replica, ReplicaFd};
use crate::engine::set::{OpenWriter, WriterToken};
use crate::rules::iomode::Ticket;
use crate::sys;

/// One open file: a descriptor per replica (opened lazily for reads) and the replica serving
/// its reads first.
#[derive(Debug)]
pub(super) struct OpenFile {
    /// The node it was opened as (0 until `create` knows it): an unlinked file that is still
    /// open is reached through its handles.
    pub(super) ino: AtomicU64,
    /// Where the file was when opened; it may have moved since (see [`OpenFile::path`]).
    pub(super) opened_as: PathBuf,
    nodes: Arc<NodeTable>,
    /// The open's flags, O_TRUNC removed.
    pub(super) flags: i32,
    /// Closed on their own replica's workers when the last user lets go (see
    /// [`Replica::adopt`]): a close on a hung replica must never hold a FUSE thread.
    fds: Vec<Mutex<Option<Arc<ReplicaFd>>>>,
    /// The replicas in the order they are asked to serve a read.
    pub(super) read_order: Vec<usize>,
    /// How the kernel serves it (counted per inode until release, see [`crate::rules::iomode`]).
    pub(super) io: Mutex<Option<Ticket<BackingId>>>,
    /// Set for a handle open for writing: compactions keep its path in the journal while it
    /// is open.
    writer: OnceLock<WriterToken>,
    /// A create made the file on a network replica without setting its times there: they
    /// are owed (see [`crate::rules::order`]), noted on the node once `create` knows it.
    pub(super) creation_owed: AtomicBool,
    /// Set for an open of a file that has no name (an unnamed tmpfile, or a file unlinked
    /// while open, reopened through /proc/self/fd): the handle it is reopened from, replica
    /// by replica.
    origin: OnceLock<Arc<OpenFile>>,
}

impl OpenWriter for OpenFile {
    fn current_path(&self) -> Option<PathBuf> {
        OpenFile::current_path(self)
    }
}

impl OpenFile {
    /// A handle of the file at `path`, no replica's descriptor open yet.
    fn new(
        nodes: &Arc<NodeTable>,
        path: PathBuf,
        flags: i32,
        replicas: usize,
        read_order: Vec<usize>,
    ) -> Self {
        OpenFile {
            ino: AtomicU64::new(0),
            opened_as: path,
            nodes: Arc::clone(nodes),
            // Kept for lazy re-opens on fail-over, which must never truncate again.
            flags: flags & !libc::O_TRUNC,
            fds: (0..replicas).map(|_| Mutex::new(None)).collect(),
            read_order,
            io: Mutex::new(None),
            writer: OnceLock::new(),
            creation_owed: AtomicBool::new(false),
            origin: OnceLock::new(),
        }
    }

    /// The slot of replica `index`'s descriptor.
    fn slot(&self, index: usize) -> MutexGuard<'_, Option<Arc<ReplicaFd>>> {
        self.fds[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `fd`, opened on `replica` by the op that made the handle.
    pub(super) fn store(&self, replica: &Replica, fd: OwnedFd) {
        *self.slot(replica.index) = Some(Arc::new(replica.adopt(fd)));
    }

    /// Where the file is now: renamed files are followed through the node table. None once
    /// it has no name left (unlinked while open).
    fn current_path(&self) -> Option<PathBuf> {
        match self.ino.load(Ordering::Relaxed) {
            0 => Some(self.opened_as.clone()),
            ino => self.nodes.path(ino),
        }
    }

    /// The path to name in log lines.
    pub(super) fn path(&self) -> PathBuf {
        self.current_path()
            .unwrap_or_else(|| self.opened_as.clone())
    }

    /// This replica's descriptor, opened now if the handle has none yet (a read fail-over).
    /// The file is opened where it is now, never at a name another file may have taken since.
    pub(super) fn fd(&self, replica: &Replica) -> io::Result<Arc<ReplicaFd>> {
        let mut slot = self.slot(replica.index);
        if let Some(fd) = slot.as_ref() {
            return Ok(Arc::clone(fd));
        }
        let opened = self.open_on(replica, self.flags)?;
        if !replica.is_local() {
            // The reader's own hint (fio, cp: POSIX_FADV_SEQUENTIAL) does not cross FUSE; a
            // network client given it keeps twice the data in flight (SSHFS at 2 ms: cold
            // sequential reads 115 -> 170-200 MB/s). A small random read is read as it is
            // whatever the advice (mm/readahead.c), so random readers lose nothing.
            sys::advise_sequential(opened.as_fd());
        }
        let fd = Arc::new(replica.adopt(opened));
        *slot = Some(Arc::clone(&fd));
        Ok(fd)
    }

    /// Opens the file on `replica` with the kernel's `flags`: where it is now, or, once it
    /// has no name, through the replica's descriptor of the handle it was reopened from.
    pub(super) fn open_on(&self, replica: &Replica, flags: i32) -> io::Result<OwnedFd> {
        match (self.current_path(), self.origin.get()) {
            (Some(path), _) => open_file(replica, &path, flags),
            (None, Some(origin)) => sys::reopen(
                origin.fd(replica)?.as_fd(),
                open_flags::replica_flags(flags) & !libc::O_NOFOLLOW,
            ),
            // Unlinked while open: nothing left to open on a replica that had no descriptor.
            (None, None) => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        }
    }

    /// Whether this handle holds a descriptor on every one of `replicas` (a file with no
    /// name can be reached there through it).
    /// Never waits: a slot busy with an open (which may take a network round trip) counts as
    /// not held, as the caller holds the handle table meanwhile.
    fn holds_all(&self, replicas: &[usize]) -> bool {
        replicas.iter().all(|&i| match self.fds[i].try_lock() {
            Ok(slot) => slot.is_some(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().is_some(),
            Err(std::sync::TryLockError::WouldBlock) => false,
        })
    }

    /// Makes this handle an open of the file `origin` holds open, which has no name.
    pub(super) fn reopens(&self, origin: Arc<OpenFile>) {
        let _ = self.origin.set(origin);
    }
}

/// One open directory: the directory itself, held open on the replica that answered the
/// opendir, and the listing of the current pass, read again at every readdir from offset 0
/// (the first one, and each rewinddir(3)), so that a rewind sees the entries made since, as
/// POSIX asks.
#[derive(Debug)]
pub(super) struct OpenDir {
    /// The directory as an open file: fstat reaches it through this once it has no name
    /// left (removed, or replaced by a rename), as it does an unlinked open file.
    pub(super) dir: Arc<OpenFile>,
    /// None until the first readdir.
    entries: Mutex<Option<Arc<Vec<sys::DirEntry>>>>,
    /// The node ids of the entries that left the directory since the listing was read, by
    /// name: the listing still shows them, with the inode number stat gave.
    gone: Mutex<HashMap<OsString, u64>>,
}

impl OpenDir {
    /// A directory handle over `dir`, not listed yet.
    pub(super) fn new(dir: Arc<OpenFile>) -> Self {
        OpenDir {
            dir,
            entries: Mutex::new(None),
            gone: Mutex::default(),
        }
    }

    /// The directory's node.
    pub(super) fn ino(&self) -> u64 {
        self.dir.ino.load(Ordering::Relaxed)
    }

    /// Whether a readdir from `offset` must list the directory (again): at offset 0 (a first
    /// pass or a rewind), or when nothing was listed yet.
    pub(super) fn must_list(&self, offset: u64) -> bool {
        offset == 0
            || self
                .entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none()
    }

    /// The listing readdirs are answered from (empty before the first).
    pub(super) fn entries(&self) -> Arc<Vec<sys::DirEntry>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.as_ref().map(Arc::clone).unwrap_or_default()
    }

    /// Replaces the listing (a new pass: what left before it is not in it).
    pub(super) fn relisted(&self, entries: Vec<sys::DirEntry>) {
        *self.entries.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(entries));
        self.gone.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Entry `name`, node `id`, left the directory (unlinked, removed or renamed away).
    fn note_gone(&self, name: &OsStr, id: u64) {
        let mut gone = self.gone.lock().unwrap_or_else(|e| e.into_inner());
        gone.insert(name.to_os_string(), id);
    }

    /// The node id entry `name` had when it left the directory, if it did.
    pub(super) fn gone_id(&self, name: &OsStr) -> Option<u64> {
        let gone = self.gone.lock().unwrap_or_else(|e| e.into_inner());
        gone.get(name).copied()
    }
}

/// Open handles of one kind by number.
#[derive(Debug)]
pub(super) struct Table<T>(Mutex<HashMap<u64, Arc<T>>>);

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table(Mutex::default())
    }
}

impl<T> Table<T> {
    /// The map itself (a panic elsewhere while holding it leaves it usable).
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<T>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many handles of this kind are open.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The handle numbered `fh`, if open.
    pub(super) fn get(&self, fh: FileHandle) -> Option<Arc<T>> {
        self.lock().get(&fh.0).cloned()
    }

    /// Takes handle `fh` out (at its release); the caller's copy is the last but for jobs
    /// still running.
    pub(super) fn remove(&self, fh: FileHandle) -> Option<Arc<T>> {
        self.lock().remove(&fh.0)
    }

    /// Any open handle `is` picks.
    pub(super) fn find(&self, is: impl Fn(&T) -> bool) -> Option<Arc<T>> {
        self.lock().values().find(|t| is(t)).cloned()
    }

    /// Every open handle `is` picks.
    fn all(&self, is: impl Fn(&T) -> bool) -> Vec<Arc<T>> {
        self.lock().values().filter(|t| is(t)).cloned().collect()
    }
}

/// The handles the kernel holds, files and directories numbered from one counter (a number
/// is never given twice).
#[derive(Debug)]
pub(super) struct Handles {
    next: AtomicU64,
    /// Open files.
    pub(super) files: Table<OpenFile>,
    /// Open directories.
    pub(super) dirs: Table<OpenDir>,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            next: AtomicU64::new(1),
            files: Table::default(),
            dirs: Table::default(),
        }
    }
}

impl Handles {
    /// A new number for `item`, entered in `table`.
    fn add<T>(&self, table: &Table<T>, item: Arc<T>) -> FileHandle {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        table.lock().insert(fh, item);
        FileHandle(fh)
    }

    /// Enters an open file; its number answers the kernel's open or create.
    pub(super) fn add_file(&self, file: Arc<OpenFile>) -> FileHandle {
        self.add(&self.files, file)
    }

    /// Enters an open directory; its number answers the kernel's opendir.
    pub(super) fn add_dir(&self, dir: OpenDir) -> FileHandle {
        self.add(&self.dirs, Arc::new(dir))
    }

    /// The open file `fh` (EBADF if the kernel names one it has released).
    pub(super) fn file(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        self.files.get(fh).ok_or(Errno::EBADF)
    }

    /// An open handle of node `ino`, if any (to reach a file that has no name left).
    pub(super) fn file_of(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.files.find(|f| f.ino.load(Ordering::Relaxed) == ino)
    }

    /// An open handle of node `ino` that holds a descriptor on every one of `replicas`: the
    /// only way a change (a link, a reopen) of a file with no name can reach them all. A
    /// read-only handle, open on one replica, does not do (the others would answer ENOENT and
    /// be blamed for it).
    pub(super) fn file_on_all(&self, ino: u64, replicas: &[usize]) -> Option<Arc<OpenFile>> {
        self.files
            .find(|f| f.ino.load(Ordering::Relaxed) == ino && f.holds_all(replicas))
    }

    /// The directory `ino` as an open handle holds it, if one does: for an fstat once it
    /// has no name left (the kernel names no handle in a directory's getattr). Only for reads:
    /// it is open on one replica, so a change through it could not reach the others.
    pub(super) fn dir_of(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.dirs
            .find(|d| d.ino() == ino)
            .map(|d| Arc::clone(&d.dir))
    }

    /// Entry `name`, node `id`, left directory `parent`: its open handles keep its number for
    /// the listings they still show it in.
    pub(super) fn note_gone(&self, parent: u64, name: &OsStr, id: u64) {
        for dir in self.dirs.all(|d| d.ino() == parent) {
            dir.note_gone(name, id);
        }
    }
}

impl ChironFs {
    /// A handle for an open of `path` with `flags`, its replicas' reads spread by a ticket.
    /// A file being opened for writing is known to the journal from before its open reaches
    /// the replicas (a compaction in between must keep its path), until its release.
    pub(super) fn new_open_file(&self, path: PathBuf, flags: i32) -> Arc<OpenFile> {
        let ticket = self.open_ticket.fetch_add(1, Ordering::Relaxed);
        let file = Arc::new(OpenFile::new(
            &self.nodes,
            path,
            flags,
            self.set.replicas().capacity(),
            self.set.data_order(ticket),
        ));
        if open_flags::writes(file.flags) {
            let weak: std::sync::Weak<OpenFile> = Arc::downgrade(&file);
            let _ = file.writer.set(self.set.writer_opened(weak));
        }
        file
    }

    /// A handle of directory `ino` at `path`, opened as `fd` on replica `index` (which serves
    /// its fstat first).
    pub(super) fn new_open_dir(
        &self,
        ino: u64,
        path: PathBuf,
        index: usize,
        fd: OwnedFd,
    ) -> OpenDir {
        let mut order = self.set.priority_order();
        order.retain(|&i| i != index);
        order.insert(0, index);
        let replicas = self.set.replicas();
        let dir = OpenFile::new(
            &self.nodes,
            path,
            libc::O_RDONLY | libc::O_DIRECTORY,
            replicas.capacity(),
            order,
        );
        dir.ino.store(ino, Ordering::Relaxed);
        dir.store(&replicas[index], fd);
        OpenDir::new(Arc::new(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::{OsStr, OsString};
    use std::os::fd::AsFd;
    use std::path::Path;

    fn open_file_in(nodes: &Arc<NodeTable>, path: &str, flags: i32) -> Arc<OpenFile> {
        Arc::new(OpenFile::new(nodes, path.into(), flags, 2, vec![1, 0]))
    }

    fn entry(name: &str) -> sys::DirEntry {
        sys::DirEntry {
            name: OsString::from(name),
            kind: libc::DT_REG,
        }
    }

    #[test]
    fn a_handle_never_truncates_again() {
        let nodes = Arc::new(NodeTable::new());
        let f = open_file_in(&nodes, "a", libc::O_RDWR | libc::O_TRUNC | libc::O_APPEND);
        assert_eq!(f.flags, libc::O_RDWR | libc::O_APPEND);
        assert_eq!(f.fds.len(), 2);
        assert_eq!(f.read_order, vec![1, 0]);
    }

    #[test]
    fn a_handle_follows_its_file_and_outlives_its_name() {
        let nodes = Arc::new(NodeTable::new());
        let st = sys::fstat(tempfile::tempfile().unwrap().as_fd()).unwrap();
        let id = nodes.remember(1, OsStr::new("a"), 0, &st);
        let f = open_file_in(&nodes, "a", libc::O_RDONLY);
        // Not yet told its node (a create in progress): where it was opened.
        assert_eq!(f.current_path().as_deref(), Some(Path::new("a")));
        f.ino.store(id, Ordering::Relaxed);
        nodes.rename(1, OsStr::new("a"), 1, OsStr::new("b"), false);
        assert_eq!(f.current_path().as_deref(), Some(Path::new("b")));
        assert_eq!(f.path(), Path::new("b"));
        nodes.unlink(1, OsStr::new("b"));
        assert_eq!(f.current_path(), None, "no name left to re-open");
        assert_eq!(f.path(), Path::new("a"), "logs name it as opened");
    }

    #[test]
    fn handle_numbers_are_shared_by_files_and_directories() {
        let handles = Handles::default();
        let nodes = Arc::new(NodeTable::new());
        let a = handles.add_file(open_file_in(&nodes, "a", libc::O_RDONLY));
        let d = handles.add_dir(OpenDir::new(open_file_in(&nodes, "d", libc::O_RDONLY)));
        let b = handles.add_file(open_file_in(&nodes, "b", libc::O_RDONLY));
        assert_eq!((a, d, b), (FileHandle(1), FileHandle(2), FileHandle(3)));
        assert!(
            handles.files.get(d).is_none(),
            "a directory's number is no file"
        );
        assert!(handles.dirs.get(d).is_some());
        assert_eq!(handles.file(b).unwrap().opened_as, Path::new("b"));
    }

    #[test]
    fn a_released_handle_is_gone_and_its_number_not_reused() {
        let handles = Handles::default();
        let nodes = Arc::new(NodeTable::new());
        let a = handles.add_file(open_file_in(&nodes, "a", libc::O_RDONLY));
        assert!(handles.files.remove(a).is_some());
        assert!(handles.files.remove(a).is_none());
        assert_eq!(handles.file(a).unwrap_err(), Errno::EBADF);
        let b = handles.add_file(open_file_in(&nodes, "b", libc::O_RDONLY));
        assert_ne!(a, b);
    }

    #[test]
    fn a_file_without_a_name_is_found_by_its_node() {
        let handles = Handles::default();
        let nodes = Arc::new(NodeTable::new());
        let f = open_file_in(&nodes, "a", libc::O_RDONLY);
        f.ino.store(42, Ordering::Relaxed);
        handles.add_file(open_file_in(&nodes, "b", libc::O_RDONLY));
        handles.add_file(Arc::clone(&f));
        assert!(Arc::ptr_eq(&handles.file_of(42).unwrap(), &f));
        assert!(handles.file_of(43).is_none());
    }

    fn open_dir(ino: u64) -> OpenDir {
        let nodes = Arc::new(NodeTable::new());
        let dir = open_file_in(&nodes, "d", libc::O_RDONLY | libc::O_DIRECTORY);
        dir.ino.store(ino, Ordering::Relaxed);
        OpenDir::new(dir)
    }

    #[test]
    fn a_directory_is_listed_at_every_pass_from_the_start() {
        let dir = open_dir(5);
        assert!(dir.must_list(0), "the first pass lists");
        assert!(dir.must_list(3), "nothing listed yet: reading on lists too");
        dir.relisted(vec![entry("a")]);
        assert!(!dir.must_list(3), "reading on uses the listing");
        assert!(dir.must_list(0), "a rewind right after opendir lists again");
        dir.relisted(vec![entry("a"), entry("b")]);
        let names: Vec<_> = dir.entries().iter().map(|e| e.name.clone()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn a_directory_keeps_the_numbers_of_entries_gone_since_its_listing() {
        let handles = Handles::default();
        let (d5, d6) = (Arc::new(open_dir(5)), Arc::new(open_dir(6)));
        handles.add(&handles.dirs, Arc::clone(&d5));
        handles.add(&handles.dirs, Arc::clone(&d6));
        d5.relisted(vec![entry("a")]);
        handles.note_gone(5, OsStr::new("a"), 13);
        assert_eq!(d5.gone_id(OsStr::new("a")), Some(13));
        assert_eq!(d6.gone_id(OsStr::new("a")), None, "another directory");
        d5.relisted(Vec::new());
        assert_eq!(d5.gone_id(OsStr::new("a")), None, "a new pass forgets");
    }

    #[test]
    fn a_directory_without_a_name_is_found_by_its_node() {
        let handles = Handles::default();
        let d = Arc::new(open_dir(9));
        handles.add(&handles.dirs, Arc::clone(&d));
        assert!(Arc::ptr_eq(&handles.dir_of(9).unwrap(), &d.dir));
        assert!(handles.dir_of(8).is_none());
        assert!(
            handles.file_of(9).is_none(),
            "never changed through a file's path"
        );
    }
}
