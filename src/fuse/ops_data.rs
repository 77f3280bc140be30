//! The ops on an open file's data: open, read, write, flush, release, fsync, fallocate,
//! lseek, copy_file_range.
//!
//! Touches the handle table, the file's order lock (data changes reach every replica in the
//! same order) and the replicas through an open handle (`reach.rs`); an open's I/O mode is
//! left to `io_mode.rs`.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fuser::{
    Errno, FileHandle, INodeNo, ReplyData, ReplyEmpty, ReplyLseek, ReplyOpen, ReplyWrite,
    WriteFlags,
};

use super::ChironFs;
use super::handles::OpenFile;
use super::open_flags::{changes_file, writes};
use super::reach::reply_empty;
use super::stamp::{clear_setid, now, truncated};
use crate::engine::replica::Replica;
use crate::engine::set::ReplicaJob;
use crate::sys::{self, Credentials};

impl ChironFs {
    /// OPEN: on every replica for a change (writing, truncating), else on the first replica
    /// of the handle's read order that answers; then answered in its I/O mode.
    pub(super) fn do_open(&self, uid: u32, ino: INodeNo, flags: i32, reply: ReplyOpen) {
        let _tree = self.tree_shared();
        let writable = changes_file(flags);
        // The kernel sends OPEN without holding any lock a rename or unlink of the same file
        // would wait for: the file's order lock keeps them apart, so every replica opens the
        // same file (the path is read under the lock, after any rename that got there first).
        // With passthrough, read-only opens take it too: the I/O modes of one inode are
        // decided one open at a time (see crate::rules::iomode).
        let lock = self.nodes.order_lock(ino.0);
        let _in_order = (writable || self.passthrough).then(|| lock.lock());
        // A file without a name (an unnamed tmpfile, or one unlinked while open) is reopened
        // through /proc/self/fd: through a handle that holds it on every replica.
        let (path, origin) = match self.path(ino) {
            Ok(p) => (p, None),
            Err(e) => match self.handles.file_on_all(ino.0, &self.set.priority_order()) {
                Some(origin) => (origin.path(), Some(origin)),
                None => return reply.error(e),
            },
        };
        let file = self.new_open_file(path.clone(), flags);
        file.ino.store(ino.0, Ordering::Relaxed);
        if let Some(origin) = origin {
            file.reopens(origin);
        }
        let result = if writable {
            self.open_everywhere(&path, &file, flags, uid)
                .map(|()| None)
        } else {
            self.open_one(&path, &file, false)
                .or_else(|e| {
                    if e != Errno::ENOENT && e != Errno::ESTALE {
                        return Err(e);
                    }
                    // Absent where it was opened: another replica may have it (they diverged).
                    // Asked again with mutations of the file kept out, so that an unlink on its
                    // way through the replicas is not taken for a divergence.
                    let _held = _in_order.is_none().then(|| lock.lock());
                    self.open_one(&path, &file, true)
                })
                .map(Some)
        };
        match result {
            Ok(served_by) => self.answer_open(ino, file, writable, served_by, reply),
            Err(e) => reply.error(e),
        }
    }

    /// Opens `file` on every replica (an open that changes it: a truncate moves its mtime the
    /// same on every replica, and clears the setid bits of a caller other than root).
    fn open_everywhere(
        &self,
        path: &Path,
        file: &Arc<OpenFile>,
        flags: i32,
        uid: u32,
    ) -> Result<(), Errno> {
        let f = Arc::clone(file);
        let stamp = now();
        self.mutate("open", path, &Credentials::root(), move |r| {
            let fd = f.open_on(r, flags)?;
            // O_TRUNC updates the mtime (and ctime) even of an empty file.
            truncated(fd.as_fd(), flags, stamp, uid)?;
            f.store(r, fd);
            Ok(())
        })
    }

    /// Opens `file` on the first replica of its read order that can; returns that replica.
    /// `known`: the file exists (a replica without it has diverged, see
    /// `ReplicaSet::read_known`).
    fn open_one(&self, path: &Path, file: &Arc<OpenFile>, known: bool) -> Result<usize, Errno> {
        let f = Arc::clone(file);
        let job: ReplicaJob<()> = Arc::new(move |r: &Replica| f.fd(r).map(drop));
        let root = Credentials::root();
        self.set
            .read_known("open", path, &file.read_order, &root, job, known)
            .map(|(index, ())| index)
            .map_err(Errno::from_i32)
    }

    /// READ `size` bytes at `offset`, failing over along the handle's read order.
    pub(super) fn do_read(&self, fh: FileHandle, offset: u64, size: u32, reply: ReplyData) {
        let file = match self.handles.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        match self.read_handle("read", file, move |fd| {
            sys::pread_full(fd, size as usize, offset)
        }) {
            Ok(data) => {
                self.set.io.read(data.len());
                reply.data(&data)
            }
            Err(e) => reply.error(e),
        }
    }

    /// WRITE `data` at `offset` on every replica, alongside writes to other byte ranges.
    pub(super) fn do_write(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        reply: ReplyWrite,
    ) {
        let data: Arc<[u8]> = Arc::from(data);
        let len = data.len() as u32;
        let range = Some((offset, data.len() as u64));
        let kill_setid = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.mutate_handle_with("write", ino, fh, range, move |r, fd, stamp| {
            if kill_setid {
                clear_setid(fd)?;
            }
            sys::pwrite_full(fd, &data, offset)?;
            if !data.is_empty() {
                stamp.apply(r, fd);
            }
            Ok(())
        }) {
            Ok(()) => {
                self.set.io.written(len as usize);
                reply.written(len)
            }
            Err(e) => reply.error(e),
        }
    }

    /// FLUSH (each close(2)): passed on to every replica only where a replica reports errors
    /// at close (see [`ChironFs::flush_reports`]). The times owed to network replicas are
    /// paid at the release, which close(2) does not wait for: a round trip (two on SSHFS)
    /// less per close; the attributes show them meanwhile ([`ChironFs::attr_of`]).
    pub(super) fn do_flush(&self, ino: INodeNo, fh: FileHandle, reply: ReplyEmpty) {
        // ENOSYS makes the kernel stop sending FLUSH: one round trip less per close(2).
        if !self.flush_reports {
            return reply.error(Errno::ENOSYS);
        }
        match self.handles.file(fh) {
            Ok(f) if !writes(f.flags) => return reply.ok(),
            Err(e) => return reply.error(e),
            _ => {}
        }
        reply_empty(
            self.mutate_handle("flush", ino, fh, |_, fd, _| sys::flush(fd)),
            reply,
        );
    }

    /// RELEASE: the handle goes, and with it every replica's descriptor.
    pub(super) fn do_release(&self, ino: INodeNo, fh: FileHandle, reply: ReplyEmpty) {
        // Dropping the handle closes every replica's descriptor, including those of replicas
        // taken out of service meanwhile (ChironFS 1.1 leaked them).
        // Times still owed to the network replicas (a write after the last flush, through a
        // shared mapping): paid while the handle still reaches every replica.
        if self.nodes.order_lock(ino.0).owes() {
            let _ = self.mutate_handle("release", ino, fh, |r, fd, stamp| {
                stamp.pay(r, fd);
                Ok(())
            });
        }
        let file = self.handles.files.remove(fh);
        if let Some(file) = file {
            self.heal_shared_mapping(ino, &file);
        }
        reply.ok();
    }

    /// FSYNC (or fdatasync) on every replica. The times owed to network replicas are left to
    /// the release (see [`ChironFs::do_flush`]): on SSHFS setting them costs two or three
    /// round trips the fsync would wait for (the client holds the inode for either).
    pub(super) fn do_fsync(&self, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        reply_empty(
            self.mutate_handle("fsync", ino, fh, move |_, fd, _| sys::fsync(fd, datasync)),
            reply,
        );
    }

    /// FALLOCATE on every replica, `mode` as fallocate(2) takes it.
    pub(super) fn do_fallocate(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        (offset, length): (u64, u64),
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = self.mutate_handle("fallocate", ino, fh, move |r, fd, stamp| {
            sys::fallocate(fd, mode, offset, length)?;
            // Filesystems differ on which modes move the mtime (ext4: all of them); moving
            // it always, to the same value, keeps the replicas equal whatever they are.
            stamp.apply(r, fd);
            Ok(())
        });
        reply_empty(result, reply);
    }

    /// LSEEK (SEEK_DATA, SEEK_HOLE): asked of the replica serving the handle's reads.
    pub(super) fn do_lseek(&self, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let file = match self.handles.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        match self.read_handle("lseek", file, move |fd| sys::lseek(fd, offset, whence)) {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(e),
        }
    }

    /// COPY_FILE_RANGE from handle `fh_in` at `offset_in` to `(ino_out, fh_out)` at
    /// `offset_out`: each replica copies between its own two files.
    pub(super) fn do_copy_file_range(
        &self,
        (fh_in, offset_in): (FileHandle, u64),
        (ino_out, fh_out, offset_out): (INodeNo, FileHandle, u64),
        len: u64,
        reply: ReplyWrite,
    ) {
        let source = match self.handles.file(fh_in) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        match self.mutate_handle("copy_file_range", ino_out, fh_out, move |r, out, stamp| {
            let input = source.fd(r)?;
            let n = sys::copy_range(input.as_fd(), offset_in, out, offset_out, len)?;
            if n > 0 {
                stamp.apply(r, out);
            }
            Ok(n)
        }) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }
}
