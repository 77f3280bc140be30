//! The ops on an open directory: opendir, readdir, readdirplus, releasedir, fsyncdir.
//!
//! Touches the handle table (a directory handle keeps the directory open, and its listing),
//! the node table (the entries' node ids; a readdirplus entry counts as a lookup) and the
//! replicas through `reach.rs`: listings and their attributes come from the metadata replica,
//! an fsyncdir reaches every replica.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use fuser::{
    Errno, FileHandle, FileType, FopenFlags, Generation, INodeNo, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyOpen,
};

use super::ChironFs;
use super::attr::{attr, kind_of_dirent};
use super::handles::OpenDir;
use super::reach::{at, lstat, open_file, reply_empty};
use crate::sys::{self, Credentials};

impl ChironFs {
    /// OPENDIR: the directory is opened on the metadata replica (and held, for an fstat
    /// once it has no name left); it is listed at the first readdir.
    pub(super) fn do_opendir(&self, ino: INodeNo, reply: ReplyOpen) {
        let _tree = self.tree_shared();
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let rel = path.clone();
        let opened = self.read_meta("opendir", &path, move |r| {
            open_file(r, &rel, libc::O_RDONLY | libc::O_DIRECTORY)
        });
        match opened {
            Ok((index, fd)) => {
                let dir = self.new_open_dir(ino.0, path, index, fd);
                let fh = self.handles.add_dir(dir);
                reply.opened(fh, FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    /// The open directory `fh` (of `ino`) and the listing a readdir from `offset` answers
    /// from: read again at offset 0 (a first pass, or a rewind).
    fn listing(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
    ) -> Result<(Arc<OpenDir>, Arc<Vec<sys::DirEntry>>), Errno> {
        let dir = self.handles.dirs.get(fh).ok_or(Errno::EBADF)?;
        if dir.must_list(offset) {
            dir.relisted(self.path(ino).and_then(|p| self.list_dir(&p))?);
            // What a listing shows exists: a name a listed directory did not know of (put
            // there behind the daemon's back) is asked of the replica from now on.
            let entries = dir.entries();
            self.nodes
                .seen(ino.0, entries.iter().map(|e| e.name.as_os_str()));
        }
        let entries = dir.entries();
        Ok((dir, entries))
    }

    /// READDIR from `offset`: "." and "..", then the listing (read at each pass from 0).
    pub(super) fn do_readdir(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _tree = self.tree_shared();
        let (dir, entries) = match self.listing(ino, fh, offset) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        // Offsets: 1 = ".", 2 = "..", 3.. = entries; the offset given is the last one returned.
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".")),
            (
                self.nodes.parent(ino.0),
                FileType::Directory,
                OsStr::new(".."),
            ),
        ];
        let listed = dots.into_iter().chain(entries.iter().map(|e| {
            // An entry gone since the listing keeps the number stat gave it.
            let id = self
                .nodes
                .known_child(ino.0, &e.name)
                .or_else(|| dir.gone_id(&e.name))
                .unwrap_or_else(|| unknown_ino(ino.0, &e.name));
            (id, kind_of_dirent(e.kind), e.name.as_os_str())
        }));
        for (i, (id, kind, name)) in listed.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(id), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    /// READDIRPLUS from `offset`: READDIR with each entry's attributes, so that `ls -l` does
    /// not send a LOOKUP per entry. Each entry sent counts as a lookup of its node (the
    /// kernel forgets it later); one the reply has no room for is not counted. An entry gone
    /// since the listing (its lstat fails) is left out.
    pub(super) fn do_readdirplus(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _tree = self.tree_shared();
        let (_, entries) = match self.listing(ino, fh, offset) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let mut next = offset as usize;
        if next < 2 {
            // "." and "..": the kernel takes no lookup of them, and uses no attribute.
            let st = match self.place(ino).and_then(|place| {
                let path = place.path().to_path_buf();
                self.read_meta("readdirplus", &path, move |r| lstat(r, &place))
            }) {
                Ok((_, st)) => st,
                Err(e) => return reply.error(e),
            };
            let dots = [(ino.0, "."), (self.nodes.parent(ino.0), "..")];
            for (i, (id, name)) in dots.into_iter().enumerate().skip(next) {
                if reply.add(
                    INodeNo(id),
                    i as u64 + 1,
                    name,
                    &self.ttl,
                    &attr(id, &st),
                    Generation(0),
                ) {
                    return reply.ok();
                }
            }
            next = 2;
        }
        while next - 2 < entries.len() {
            // Stat (one job on the metadata replica) only the entries the reply has room for:
            // on a network replica each is a round trip.
            let rest = &entries[next - 2..];
            let fit = reply.fits(rest.iter().map(|e| e.name.len()));
            if fit == 0 {
                break;
            }
            let batch = &rest[..fit];
            let names: Vec<_> = batch.iter().map(|e| e.name.clone()).collect();
            let Ok(place) = self.child_place(ino, &names[0]) else {
                break;
            };
            let path = place.path().to_path_buf();
            let stats = self.read_meta("readdirplus", &path, move |r| {
                at(r, &place, |dir, _| {
                    Ok(names
                        .iter()
                        .map(|n| sys::cstr(n).and_then(|n| sys::lstat_at(dir, &n)).ok())
                        .collect::<Vec<_>>())
                })
            });
            let (index, stats) = match stats {
                Ok(s) => s,
                Err(e) if next == offset as usize => return reply.error(e),
                Err(_) => break,
            };
            for (e, st) in batch.iter().zip(stats) {
                next += 1;
                let Some(st) = st else { continue };
                let id = self.nodes.remember(ino.0, &e.name, index, &st);
                let full = reply.add(
                    INodeNo(id),
                    next as u64,
                    &e.name,
                    &self.ttl,
                    &self.attr_of(id, &st),
                    Generation(0),
                );
                if full {
                    // Not sent: not a lookup the kernel will forget.
                    self.nodes.forget(id, 1);
                    return reply.ok();
                }
            }
        }
        reply.ok();
    }

    /// FSYNCDIR on every replica; a directory removed while open has nothing left to sync.
    pub(super) fn do_fsyncdir(&self, ino: INodeNo, datasync: bool, reply: ReplyEmpty) {
        let _tree = self.tree_shared();
        // Kept apart from an rmdir of the same directory (see `open`).
        let lock = self.nodes.order_lock(ino.0);
        let _in_order = lock.lock();
        let Ok(path) = self.path(ino) else {
            // Removed while open: nothing is left to make durable.
            return reply.ok();
        };
        let rel = path.clone();
        let result = self.mutate("fsyncdir", &path, &Credentials::root(), move |r| {
            let dir = open_file(r, &rel, libc::O_RDONLY | libc::O_DIRECTORY)?;
            sys::fsync(dir.as_fd(), datasync)
        });
        reply_empty(result, reply);
    }

    /// The entries of directory `path`, from the metadata replica (the state directory left
    /// out at the root).
    fn list_dir(&self, path: &Path) -> Result<Vec<sys::DirEntry>, Errno> {
        let rel = path.to_path_buf();
        let top = path.as_os_str().is_empty();
        self.read_meta("readdir", path, move |r| {
            sys::read_dir_all(r.root()?, &sys::rel_cstr(&rel)?)
        })
        .map(|(_, mut entries)| {
            if top {
                entries.retain(|e| e.name != OsStr::new(crate::rules::state::META_DIR));
            }
            entries
        })
    }
}

/// A stable stand-in inode number for a directory entry the kernel has not looked up yet
/// (its real node id is given at lookup). The top bit keeps it apart from node ids.
fn unknown_ino(parent: u64, name: &OsStr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    name.hash(&mut h);
    h.finish() | (1 << 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_in_inode_numbers_are_stable_and_apart_from_node_ids() {
        let a = unknown_ino(1, OsStr::new("a"));
        assert_eq!(
            a,
            unknown_ino(1, OsStr::new("a")),
            "the same entry, the same number"
        );
        assert_ne!(a, unknown_ino(1, OsStr::new("b")));
        assert_ne!(a, unknown_ino(2, OsStr::new("a")));
        for n in [
            a,
            unknown_ino(0, OsStr::new("")),
            unknown_ino(7, OsStr::new("x")),
        ] {
            assert!(n >= 1 << 63, "{n:#x} could be a node id");
        }
    }
}
