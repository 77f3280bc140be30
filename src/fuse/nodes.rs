//! The node table: FUSE inode numbers <-> paths relative to each replica root.
//!
//! Identity across replicas is the relative path, not a (dev, ino) pair, because each replica
//! has its own inode numbers. The number shown as `st_ino` is our node id, so it does not change
//! when the serving replica does; hard links found through the same replica share a node.
//!
//! Every file the kernel has looked up costs a node here, so the layout is kept small (about
//! 200 bytes a node): a name is stored once and shared by the node and its directory's index,
//! and only multi-link files are indexed by their backing inode. A node goes when the kernel
//! forgets it (FORGET, BATCH_FORGET: after an unlink, or when its inode leaves the kernel's
//! cache), and the indexes shrink once they are mostly empty ([`sparse`]), so the table's
//! memory follows the nodes in use, not the most ever held.

use crate::rules::dir_attrs::DirAttrs;
use crate::rules::listed::Listed;
use crate::rules::order::OrderLock;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// FUSE's root inode.
pub const ROOT: u64 = 1;

/// A directory entry's name, shared by the node's links and its directory's index.
type Name = Arc<OsStr>;

/// (replica, st_dev, st_ino) of an object as a replica showed it.
type Backing = (usize, u64, u64);

/// Where an entry is: the node of its directory and its path from the replica roots, read
/// together under one lock so they always agree (crate::engine::dirfds reaches the directory through
/// the node, the journal and the logs name the path).
#[derive(Clone, Debug, PartialEq)]
pub struct Place {
    dir: u64,
    path: PathBuf,
}

/// A place reads as its path (for the journal, the logs and the replicas' path calls).
impl std::ops::Deref for Place {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl Place {
    /// The node id of the directory holding the entry (ROOT for the root itself).
    pub fn dir(&self) -> u64 {
        self.dir
    }

    /// The entry's path relative to the replica roots ("" for the root).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[derive(Debug)]
struct Node {
    /// Every (parent, name) this node is known under; the first one is used to reach it.
    links: Vec<(u64, Name)>,
    /// Lookups the kernel holds (dropped by forget).
    lookups: u64,
    /// Where a multi-link file was last seen, to recognise its other names (None for
    /// directories and single-link files: most nodes).
    backing: Option<Box<Backing>>,
    /// A directory (renaming one moves a whole subtree).
    is_dir: bool,
    /// Serialises data mutations of this file so every replica sees them in the same order;
    /// made at the first change or open (most nodes are only looked up: ~100 bytes each saved).
    order: Option<Arc<OrderLock>>,
}

#[derive(Debug, Default)]
struct Inner {
    nodes: HashMap<u64, Node>,
    /// Directory node id -> entry name -> node id: looked up by a borrowed name, no copy.
    children: HashMap<u64, HashMap<Name, u64>>,
    /// Multi-link files by where they were last seen.
    by_backing: HashMap<Backing, u64>,
    /// Directories whose every name is known (see [`Listed`]).
    listed: Listed,
    /// Directories' attributes carried forward through changes (see [`DirAttrs`]).
    dir_attrs: DirAttrs,
    next: u64,
}

/// Thread-safe node table.
#[derive(Debug)]
pub struct NodeTable {
    inner: Mutex<Inner>,
    /// The number of nodes, for the snapshot (kept up to date under the lock).
    gauge: Arc<AtomicU64>,
}

/// Whether a map of `len` entries with room for `capacity` holds on to memory it does not
/// use: over four times what it needs (so shrinking it to twice its size is paid for by the
/// removals since it last grew or shrank), and large enough to matter.
pub fn sparse(len: usize, capacity: usize) -> bool {
    capacity > 1024 && capacity / 4 > len
}

/// Shrinks `map` to twice its size if it is [`sparse`].
fn shrink_if_sparse<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if sparse(map.len(), map.capacity()) {
        map.shrink_to(map.len() * 2);
    }
}

impl Default for NodeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeTable {
    /// A table holding only the root.
    pub fn new() -> Self {
        Self::with_gauge(Arc::default())
    }

    /// A table holding only the root, keeping `gauge` at its number of nodes.
    pub fn with_gauge(gauge: Arc<AtomicU64>) -> Self {
        let mut inner = Inner {
            next: ROOT + 1,
            ..Default::default()
        };
        inner.nodes.insert(
            ROOT,
            Node {
                links: Vec::new(),
                lookups: 1,
                backing: None,
                is_dir: true,
                order: None,
            },
        );
        gauge.store(1, Ordering::Relaxed);
        NodeTable {
            inner: Mutex::new(inner),
            gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Path of a node relative to the replica roots ("" for the root), or None if unknown or
    /// no longer linked anywhere.
    pub fn path(&self, ino: u64) -> Option<PathBuf> {
        let inner = self.lock();
        inner.path(ino)
    }

    /// Where node `ino` is (under its first name), or None if unknown or no longer linked.
    pub fn place(&self, ino: u64) -> Option<Place> {
        let inner = self.lock();
        let dir = match ino {
            ROOT => ROOT,
            _ => inner.nodes.get(&ino)?.links.first()?.0,
        };
        let path = inner.path(ino)?;
        Some(Place { dir, path })
    }

    /// Where `name` inside directory `parent` is.
    pub fn child_place(&self, parent: u64, name: &OsStr) -> Option<Place> {
        let inner = self.lock();
        let path = inner.path(parent)?.join(name);
        Some(Place { dir: parent, path })
    }

    /// The directory holding `ino` (its first name's), ROOT for the root or an unknown node.
    pub fn parent(&self, ino: u64) -> u64 {
        self.lock()
            .nodes
            .get(&ino)
            .and_then(|n| n.links.first())
            .map_or(ROOT, |(parent, _)| *parent)
    }

    /// Node id known for `name` in `parent`, if any (no lookup counted).
    pub fn known_child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.lock().child(parent, name)
    }

    /// Whether `name` in `parent` is known as a directory (None: not known at all).
    pub fn child_is_dir(&self, parent: u64, name: &OsStr) -> Option<bool> {
        let inner = self.lock();
        let id = inner.child(parent, name)?;
        inner.nodes.get(&id).map(|n| n.is_dir)
    }

    /// The node's ordering lock if it has one (a file no change has reached yet has none).
    pub fn order_lock_if_any(&self, ino: u64) -> Option<Arc<OrderLock>> {
        self.lock().nodes.get(&ino).and_then(|n| n.order.clone())
    }

    /// The per-file ordering lock (held while a change of the file fans out).
    pub fn order_lock(&self, ino: u64) -> Arc<OrderLock> {
        let mut inner = self.lock();
        inner
            .nodes
            .get_mut(&ino)
            .map(|n| Arc::clone(n.order.get_or_insert_with(Arc::default)))
            .unwrap_or_default()
    }

    /// Records that the kernel now knows `name` in `parent` as the object `st` found on
    /// `replica`, and returns its node id with one more lookup counted. A known name keeps its
    /// node; an unknown name is a hard link of a node seen under another name only if the
    /// object has more than one link (a non-directory with st_nlink > 1): replica
    /// filesystems reuse the inode number of a deleted file at once, and a new file must never
    /// take the identity (and the kernel's cached pages) of a file that is gone or only still
    /// open.
    pub fn remember(&self, parent: u64, name: &OsStr, replica: usize, st: &libc::stat) -> u64 {
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let hard_linked = !is_dir && st.st_nlink > 1;
        let backing = (replica, st.st_dev, st.st_ino);
        let mut inner = self.lock();
        let inner = &mut *inner;
        let id = if let Some(id) = inner.child(parent, name) {
            id
        } else {
            let linked_node = inner.by_backing.get(&backing).copied().filter(|id| {
                hard_linked && inner.nodes.get(id).is_some_and(|n| !n.links.is_empty())
            });
            let name: Name = Arc::from(name);
            let id = match linked_node {
                Some(id) => {
                    if let Some(node) = inner.nodes.get_mut(&id) {
                        node.links.push((parent, Arc::clone(&name)));
                    }
                    id
                }
                None => self.add(inner, vec![(parent, Arc::clone(&name))], 0, is_dir),
            };
            inner.listed.added(parent, &name);
            inner.insert_child(&(parent, name), id);
            id
        };
        if let Some(node) = inner.nodes.get_mut(&id) {
            node.lookups += 1;
            node.is_dir = is_dir;
            let seen = hard_linked.then_some(backing);
            if node.backing.as_deref() != seen.as_ref() {
                if let Some(old) = node.backing.take() {
                    inner.by_backing.remove_if_for(&old, id);
                }
                if let Some(b) = seen {
                    node.backing = Some(Box::new(b));
                    inner.by_backing.insert(b, id);
                }
            }
        }
        id
    }

    /// Records a regular file that has no name yet (open(2) with `O_TMPFILE`) and returns
    /// its node id, one lookup counted as for a created file. It is reached through its
    /// handles until [`NodeTable::link`] names it.
    pub fn remember_unnamed(&self) -> u64 {
        let mut inner = self.lock();
        self.add(&mut inner, Vec::new(), 1, false)
    }

    /// A new node with these names and lookups.
    fn add(&self, inner: &mut Inner, links: Vec<(u64, Name)>, lookups: u64, is_dir: bool) -> u64 {
        let id = inner.next;
        inner.next += 1;
        let node = Node {
            links,
            lookups,
            backing: None,
            is_dir,
            order: None,
        };
        inner.nodes.insert(id, node);
        self.gauge
            .store(inner.nodes.len() as u64, Ordering::Relaxed);
        id
    }

    /// The kernel dropped `n` lookups of `ino`; the node goes when none is left.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut inner = self.lock();
        let gone = match inner.nodes.get_mut(&ino) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if gone && let Some(node) = inner.nodes.remove(&ino) {
            // Its names stay on the replicas; what it held is no longer followed.
            inner.listed.unlist(ino);
            inner.dir_attrs.drop(ino);
            for (parent, name) in &node.links {
                if inner.child(*parent, name) == Some(ino) {
                    inner.remove_child(*parent, name);
                }
            }
            if let Some(b) = node.backing {
                inner.by_backing.remove_if_for(&b, ino);
            }
            shrink_if_sparse(&mut inner.nodes);
            shrink_if_sparse(&mut inner.by_backing);
            self.gauge
                .store(inner.nodes.len() as u64, Ordering::Relaxed);
        }
    }

    /// `name` in `parent` was removed (unlink, rmdir).
    pub fn unlink(&self, parent: u64, name: &OsStr) {
        let mut inner = self.lock();
        inner.listed.removed(parent, name);
        inner.drop_name(parent, name);
    }

    /// Directory `dir` was just made through this daemon: until a change of its entries
    /// fails, every name in it is known (see [`Listed`]).
    pub fn made_dir(&self, dir: u64) {
        self.lock().listed.made(dir);
    }

    /// A change of `dir`'s entries failed (on some replica, or before reaching them): what
    /// it holds, and its attributes, are asked of the replicas again.
    pub fn lost_track(&self, dir: u64) {
        let mut inner = self.lock();
        inner.listed.unlist(dir);
        inner.dir_attrs.drop(dir);
    }

    /// A listing of `dir` showed these names: they exist (in a listed directory, one it did
    /// not know of is asked of the replica from now on).
    pub fn seen<'a>(&self, dir: u64, names: impl Iterator<Item = &'a OsStr>) {
        let mut inner = self.lock();
        if !inner.listed.is_listed(dir) {
            return;
        }
        for name in names {
            if inner.listed.absent(dir, name) {
                inner.listed.added(dir, &Arc::from(name));
            }
        }
    }

    /// Whether `name` is known not to exist in `parent` (false: not known either way), so
    /// a lookup needs no replica.
    pub fn surely_absent(&self, parent: u64, name: &OsStr) -> bool {
        self.lock().listed.absent(parent, name)
    }

    /// The attributes to answer for directory `dir` without asking the replica they came
    /// from (given with them), if carried forward from a fetch less than `ttl` ago (see
    /// [`DirAttrs`]).
    pub fn dir_attrs(&self, dir: u64, ttl: Duration) -> Option<(usize, libc::stat)> {
        self.lock().dir_attrs.answer(dir, Instant::now(), ttl)
    }

    /// The generation a fetch of `dir`'s attributes starting now hands to
    /// [`NodeTable::dir_fetched`].
    pub fn dir_generation(&self, dir: u64) -> u64 {
        self.lock().dir_attrs.generation(dir)
    }

    /// `st` was fetched for directory `dir` from `replica` by a fetch that began at
    /// `generation`; kept to be carried forward.
    pub fn dir_fetched(&self, dir: u64, replica: usize, st: &libc::stat, generation: u64) {
        let now = Instant::now();
        self.lock()
            .dir_attrs
            .fetched(dir, replica, st, generation, now);
    }

    /// An entry of `dir` was made or removed at `time` (taken before the change: the
    /// replica's own time is never earlier), `links` its change of `dir`'s link count.
    pub fn dir_changed(&self, dir: u64, time: (i64, i64), links: i64) {
        self.lock().dir_attrs.changed(dir, time, links);
    }

    /// `dir`'s attributes changed in a way not carried forward: asked next time.
    pub fn dir_attrs_drop(&self, dir: u64) {
        self.lock().dir_attrs.drop(dir);
    }

    /// `name` moved from `parent` to `new_parent/new_name`; with `exchange` the two swapped.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        exchange: bool,
    ) {
        let mut inner = self.lock();
        let from: (u64, Name) = (parent, Arc::from(name));
        let to: (u64, Name) = (new_parent, Arc::from(new_name));
        let moving = inner.remove_child(parent, name);
        let target = inner.remove_child(new_parent, new_name);
        if !exchange {
            inner.listed.removed(parent, name);
        }
        inner.listed.added(new_parent, &to.1);
        if exchange {
            if let Some(t) = target {
                inner.relink(t, &to, &from);
            }
        } else if let Some(t) = target {
            inner.insert_child(&to, t);
            inner.drop_name(new_parent, new_name);
        }
        if let Some(m) = moving {
            inner.relink(m, &from, &to);
        }
    }

    /// A hard link `new_parent/new_name` to `ino` was made; the entry answered to the kernel
    /// counts as one lookup (the kernel will forget it like any other).
    pub fn link(&self, ino: u64, new_parent: u64, new_name: &OsStr) {
        let mut inner = self.lock();
        inner.drop_name(new_parent, new_name);
        let key: (u64, Name) = (new_parent, Arc::from(new_name));
        inner.listed.added(new_parent, &key.1);
        if let Some(node) = inner.nodes.get_mut(&ino) {
            node.links.push(key.clone());
            node.lookups += 1;
            inner.insert_child(&key, ino);
        }
    }

    /// Number of nodes held (for stats and memory checks).
    pub fn len(&self) -> usize {
        self.lock().nodes.len()
    }

    /// True when only the root is known.
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }
}

/// Removing an index entry only while it still names the node being dropped (another node
/// may have taken the key since).
trait RemoveIfFor<K> {
    fn remove_if_for(&mut self, key: &K, id: u64);
}

impl<K: std::hash::Hash + Eq> RemoveIfFor<K> for HashMap<K, u64> {
    fn remove_if_for(&mut self, key: &K, id: u64) {
        if self.get(key) == Some(&id) {
            self.remove(key);
        }
    }
}

impl Inner {
    fn path(&self, ino: u64) -> Option<PathBuf> {
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        // Bounded walk: a cycle would be a bug, never a hang.
        for _ in 0..4096 {
            if cur == ROOT {
                let mut p = PathBuf::new();
                for part in parts.iter().rev() {
                    p.push(part);
                }
                return Some(p);
            }
            let (parent, name) = self.nodes.get(&cur)?.links.first()?;
            parts.push(name);
            cur = *parent;
        }
        None
    }

    fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.children.get(&parent)?.get(name).copied()
    }

    fn insert_child(&mut self, (parent, name): &(u64, Name), id: u64) {
        self.children
            .entry(*parent)
            .or_default()
            .insert(Arc::clone(name), id);
    }

    /// Removes `name` from `parent`'s index (and the index itself once empty).
    fn remove_child(&mut self, parent: u64, name: &OsStr) -> Option<u64> {
        let entries = self.children.get_mut(&parent)?;
        let id = entries.remove(name);
        if entries.is_empty() {
            self.children.remove(&parent);
            shrink_if_sparse(&mut self.children);
        } else {
            shrink_if_sparse(entries);
        }
        id
    }

    fn drop_name(&mut self, parent: u64, name: &OsStr) {
        let dropped = self.remove_child(parent, name);
        if let Some(id) = dropped {
            // A directory removed or replaced: nothing is ever looked up in it again.
            self.listed.unlist(id);
            self.dir_attrs.drop(id);
        }
        if let Some(id) = dropped
            && let Some(node) = self.nodes.get_mut(&id)
        {
            node.links.retain(|(p, n)| !(*p == parent && **n == *name));
            // No name left: the object is gone (or only open), and its inode number is free
            // for the replica to give to a new file.
            if node.links.is_empty()
                && let Some(b) = node.backing.take()
            {
                self.by_backing.remove_if_for(&b, id);
            }
        }
    }

    fn relink(&mut self, id: u64, from: &(u64, Name), to: &(u64, Name)) {
        if let Some(node) = self.nodes.get_mut(&id) {
            match node.links.iter_mut().find(|l| *l == from) {
                Some(l) => *l = to.clone(),
                None => node.links.insert(0, to.clone()),
            }
        }
        self.insert_child(to, id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    /// A stat for the tests: `dir` a directory, else a file with `links` 1 or 2 (`true`).
    fn st(dev: u64, ino: u64, dir_or_linked: bool) -> libc::stat {
        // SAFETY: all-zero is a valid libc::stat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        st.st_dev = dev;
        st.st_ino = ino;
        st.st_mode = libc::S_IFREG | 0o644;
        st.st_nlink = if dir_or_linked { 2 } else { 1 };
        st
    }

    fn dir(dev: u64, ino: u64) -> libc::stat {
        let mut s = st(dev, ino, false);
        s.st_mode = libc::S_IFDIR | 0o755;
        s
    }

    #[test]
    fn a_made_directory_follows_its_entries_until_forgotten() {
        let t = NodeTable::new();
        let d = t.remember(ROOT, os("d"), 0, &dir(1, 10));
        let e = t.remember(ROOT, os("e"), 0, &dir(1, 20));
        t.made_dir(d);
        t.made_dir(e);
        assert!(t.surely_absent(d, os("f")));
        let f = t.remember(d, os("f"), 0, &st(1, 11, false));
        assert!(!t.surely_absent(d, os("f")));
        // Moved out: absent here, present there.
        t.rename(d, os("f"), e, os("g"), false);
        assert!(t.surely_absent(d, os("f")));
        assert!(!t.surely_absent(e, os("g")));
        // A link is a name too; an unlink takes one away.
        t.link(f, d, os("h"));
        assert!(!t.surely_absent(d, os("h")));
        t.unlink(d, os("h"));
        assert!(t.surely_absent(d, os("h")));
        // An exchange leaves both names.
        t.remember(d, os("x"), 0, &st(1, 12, false));
        t.rename(d, os("x"), e, os("g"), true);
        assert!(!t.surely_absent(d, os("x")));
        assert!(!t.surely_absent(e, os("g")));
        // A failed change unlists; so does the kernel forgetting the directory.
        t.lost_track(e);
        assert!(!t.surely_absent(e, os("nothing")));
        t.forget(d, 1);
        assert!(!t.surely_absent(d, os("nothing")));
        // Never listed: nothing known.
        assert!(!t.surely_absent(ROOT, os("nothing")));
    }

    #[test]
    fn a_removed_or_replaced_directory_is_unlisted() {
        let t = NodeTable::new();
        let d = t.remember(ROOT, os("d"), 0, &dir(1, 10));
        let e = t.remember(ROOT, os("e"), 0, &dir(1, 20));
        t.made_dir(d);
        t.made_dir(e);
        t.unlink(ROOT, os("d"));
        assert!(!t.surely_absent(d, os("x")));
        // e's node is still held by the kernel, but its name now leads to d's old place.
        let f = t.remember(ROOT, os("f"), 0, &dir(1, 30));
        t.made_dir(f);
        t.rename(ROOT, os("f"), ROOT, os("e"), false);
        assert!(!t.surely_absent(e, os("x")));
        assert!(t.surely_absent(f, os("x")));
    }

    #[test]
    fn paths_follow_parents_and_renames() {
        let t = NodeTable::new();
        let d = t.remember(ROOT, os("d"), 0, &dir(1, 10));
        let f = t.remember(d, os("f"), 0, &st(1, 11, false));
        assert_eq!(t.path(f).unwrap(), PathBuf::from("d/f"));
        t.rename(ROOT, os("d"), ROOT, os("e"), false);
        assert_eq!(t.path(f).unwrap(), PathBuf::from("e/f"));
        assert_eq!(t.path(ROOT).unwrap(), PathBuf::new());
    }

    #[test]
    fn same_name_keeps_its_node_even_from_another_replica() {
        let t = NodeTable::new();
        let a = t.remember(ROOT, os("f"), 0, &st(1, 11, false));
        let b = t.remember(ROOT, os("f"), 1, &st(7, 99, false));
        assert_eq!(a, b);
    }

    #[test]
    fn hard_links_share_a_node_and_survive_unlink_of_one_name() {
        let t = NodeTable::new();
        let a = t.remember(ROOT, os("a"), 0, &st(1, 11, true));
        let b = t.remember(ROOT, os("b"), 0, &st(1, 11, true));
        assert_eq!(a, b);
        t.unlink(ROOT, os("a"));
        assert_eq!(t.path(a).unwrap(), PathBuf::from("b"));
        assert_eq!(t.known_child(ROOT, os("a")), None);
    }

    #[test]
    fn directories_never_merge_by_inode() {
        let t = NodeTable::new();
        let a = t.remember(ROOT, os("a"), 0, &dir(1, 11));
        let b = t.remember(ROOT, os("b"), 0, &dir(1, 11));
        assert_ne!(a, b);
        assert_eq!(t.child_is_dir(ROOT, os("a")), Some(true));
        assert_eq!(t.child_is_dir(ROOT, os("zz")), None);
    }

    #[test]
    fn a_reused_inode_number_is_a_new_file() {
        let t = NodeTable::new();
        // Still linked, but the new object has one link: not a hard link of it.
        let a = t.remember(ROOT, os("a"), 0, &st(1, 11, false));
        let b = t.remember(ROOT, os("b"), 0, &st(1, 11, false));
        assert_ne!(a, b);
        // Unlinked (maybe still open): its number is free, even for a multi-link object.
        let c = t.remember(ROOT, os("c"), 0, &st(1, 20, true));
        t.unlink(ROOT, os("c"));
        let d = t.remember(ROOT, os("d"), 0, &st(1, 20, true));
        assert_ne!(c, d);
        // Overwritten by a rename: the same.
        let e = t.remember(ROOT, os("e"), 0, &st(1, 30, false));
        let f = t.remember(ROOT, os("f"), 0, &st(1, 31, false));
        t.rename(ROOT, os("f"), ROOT, os("e"), false);
        let g = t.remember(ROOT, os("g"), 0, &st(1, 30, true));
        assert_ne!(g, e);
        assert_eq!(t.known_child(ROOT, os("e")), Some(f));
    }

    #[test]
    fn rename_over_a_target_drops_the_target_name() {
        let t = NodeTable::new();
        let a = t.remember(ROOT, os("a"), 0, &st(1, 11, false));
        let b = t.remember(ROOT, os("b"), 0, &st(1, 12, false));
        t.rename(ROOT, os("a"), ROOT, os("b"), false);
        assert_eq!(t.known_child(ROOT, os("b")), Some(a));
        assert_eq!(t.path(b), None, "the overwritten file has no name left");
    }

    #[test]
    fn exchange_swaps() {
        let t = NodeTable::new();
        let a = t.remember(ROOT, os("a"), 0, &st(1, 11, false));
        let b = t.remember(ROOT, os("b"), 0, &st(1, 12, false));
        t.rename(ROOT, os("a"), ROOT, os("b"), true);
        assert_eq!(t.path(a).unwrap(), PathBuf::from("b"));
        assert_eq!(t.path(b).unwrap(), PathBuf::from("a"));
    }

    #[test]
    fn forget_drops_the_node_when_lookups_reach_zero() {
        let t = NodeTable::new();
        let a = t.remember(ROOT, os("a"), 0, &st(1, 11, false));
        t.remember(ROOT, os("a"), 0, &st(1, 11, false));
        t.forget(a, 1);
        assert!(t.path(a).is_some());
        t.forget(a, 1);
        assert!(t.path(a).is_none());
        assert!(t.is_empty());
        let again = t.remember(ROOT, os("a"), 0, &st(1, 11, false));
        assert_ne!(again, a, "node ids are never reused");
    }

    #[test]
    fn a_link_made_through_the_mount_shares_the_node_of_a_single_link_file() {
        let t = NodeTable::new();
        let a = t.remember(ROOT, os("a"), 0, &st(1, 11, false));
        t.link(a, ROOT, os("b"));
        // Looked up again later, both names now showing two links.
        assert_eq!(t.remember(ROOT, os("b"), 0, &st(1, 11, true)), a);
        assert_eq!(t.remember(ROOT, os("a"), 0, &st(1, 11, true)), a);
        t.unlink(ROOT, os("a"));
        assert_eq!(t.path(a).unwrap(), PathBuf::from("b"));
    }

    #[test]
    fn nothing_is_left_indexed_once_every_node_is_forgotten() {
        let t = NodeTable::new();
        let d = t.remember(ROOT, os("d"), 0, &dir(1, 10));
        let f = t.remember(d, os("f"), 0, &st(1, 11, true));
        let g = t.remember(d, os("g"), 0, &st(1, 11, true));
        assert_eq!(f, g);
        let h = t.remember(d, os("h"), 0, &st(1, 12, false));
        t.rename(d, os("h"), ROOT, os("h2"), false);
        t.unlink(d, os("g"));
        for (id, n) in [(f, 2), (h, 1), (d, 1)] {
            t.forget(id, n);
        }
        assert!(t.is_empty());
        let inner = t.lock();
        assert!(inner.children.is_empty(), "{:?}", inner.children);
        assert!(inner.by_backing.is_empty(), "{:?}", inner.by_backing);
    }

    #[test]
    fn a_place_names_the_directory_its_path_is_in() {
        let t = NodeTable::new();
        let d = t.remember(ROOT, os("d"), 0, &dir(1, 10));
        let f = t.remember(d, os("f"), 0, &st(1, 11, false));
        let at_f = t.place(f).unwrap();
        assert_eq!((at_f.dir(), at_f.path()), (d, Path::new("d/f")));
        assert_eq!(t.child_place(d, os("g")).unwrap().path(), Path::new("d/g"));
        assert_eq!(t.child_place(d, os("g")).unwrap().dir(), d);
        assert_eq!(t.place(ROOT).unwrap().path(), Path::new(""));
        t.rename(d, os("f"), ROOT, os("f2"), false);
        let moved = t.place(f).unwrap();
        assert_eq!((moved.dir(), moved.path()), (ROOT, Path::new("f2")));
        t.unlink(ROOT, os("f2"));
        assert_eq!(t.place(f), None);
    }

    #[test]
    fn sparse_only_past_four_times_and_a_minimum() {
        assert!(!sparse(0, 1024), "small maps stay");
        assert!(sparse(0, 2048));
        assert!(sparse(511, 2048));
        assert!(!sparse(512, 2048));
    }

    #[test]
    fn the_gauge_and_the_memory_follow_the_nodes_in_use() {
        let gauge = Arc::new(AtomicU64::new(0));
        let t = NodeTable::with_gauge(Arc::clone(&gauge));
        assert_eq!(gauge.load(Ordering::Relaxed), 1, "the root");
        let d = t.remember(ROOT, os("d"), 0, &dir(1, 10));
        let ids: Vec<u64> = (0..20_000)
            .map(|i| t.remember(d, os(&format!("f{i}")), 0, &st(1, 100 + i, false)))
            .collect();
        assert_eq!(gauge.load(Ordering::Relaxed), 20_002);
        let grown = t.lock().nodes.capacity();
        for (i, id) in ids.iter().enumerate() {
            if i % 100 != 0 {
                t.unlink(d, os(&format!("f{i}")));
                t.forget(*id, 1);
            }
        }
        assert_eq!(gauge.load(Ordering::Relaxed), 202);
        let inner = t.lock();
        assert!(
            inner.nodes.capacity() <= 2048,
            "{} of {grown}",
            inner.nodes.capacity()
        );
        assert!(inner.children[&d].capacity() <= 2048);
        assert!(!sparse(inner.nodes.len(), inner.nodes.capacity()));
    }
}
