//! The copy engine ([`Engine`]): walks the source and target trees (the whole tree, or the
//! paths a journal or dirty set names) and, entry by entry, reads both sides, asks `plan.rs`
//! what to do and carries it out (the writes themselves are in `write.rs`), keeping the
//! hard-link groups and the progress counters.
//!
//! It touches the two replicas of one resync through their root fds (`sys`, `read.rs`), and
//! nothing else: how passes are run against concurrent mutations (dirty set, write barrier)
//! is the caller's (`engine/set/`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::plan::{Group, Meta, Plan, attr_fix, attrs_to_fix, changes_target, decide};
use super::progress::Progress;
use super::read::{gone, stat_of};
use crate::engine::replica::Replica;
use crate::rules::state::META_DIR;
use crate::sys;

/// Which replica an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The in-service replica being copied.
    Source,
    /// The replica being resynced.
    Target,
}

/// A failed step: which side, which path, what.
#[derive(Debug)]
pub struct SyncError {
    /// Source or target.
    pub side: Side,
    /// Path inside the mount.
    pub path: PathBuf,
    /// The error.
    pub err: io::Error,
}

/// A step's outcome: the error names the side and path.
pub(super) type Res<T> = Result<T, SyncError>;

/// Copies one replica onto another, entry by entry.
pub struct Engine {
    /// The source's root (a duplicate of the replica's handle, so it is open for the run).
    pub(super) src_root: Arc<OwnedFd>,
    /// The target's root.
    pub(super) dst_root: Arc<OwnedFd>,
    pub(super) progress: Arc<Progress>,
    cancel: Arc<AtomicBool>,
    /// Source inode -> (the path of its first link, copied there on the target as this inode).
    pub(super) groups: HashMap<(u64, u64), (PathBuf, (u64, u64))>,
    /// Target inode -> the source inode it stands for.
    pub(super) claimed: HashMap<(u64, u64), (u64, u64)>,
    /// While true, a source entry vanishing under the walk is skipped (a concurrent mutation,
    /// recorded in the dirty set); false under the write barrier, where nothing moves.
    pub(super) tolerant: bool,
    /// A regular file with several links was met on either side: a pass over chosen paths
    /// cannot know its other names (see [`Engine::hard_links_seen`]).
    hard_links: bool,
    /// The first 1000 paths it created, replaced, removed or fixed (for crash recovery's log
    /// line; `progress.files` counts them all).
    fixed: Vec<PathBuf>,
    /// Target directories seen to exist during this pass over chosen paths (their children's
    /// ancestors need no second look); forgotten whenever the engine removes a directory.
    pub(super) present: HashSet<PathBuf>,
}

impl Engine {
    /// An engine copying `src` onto `dst`; fails when either root has not been opened (its
    /// storage has not answered since start).
    pub fn new(
        src: &Replica,
        dst: &Replica,
        progress: Arc<Progress>,
        cancel: Arc<AtomicBool>,
    ) -> Result<Self, String> {
        let root = |r: &Replica| {
            r.root()
                .and_then(|fd| fd.try_clone_to_owned())
                .map(Arc::new)
                .map_err(|e| format!("cannot use the root of {}: {e}", r.path.display()))
        };
        Ok(Engine {
            src_root: root(src)?,
            dst_root: root(dst)?,
            progress,
            cancel,
            groups: HashMap::new(),
            claimed: HashMap::new(),
            tolerant: true,
            hard_links: false,
            fixed: Vec::new(),
            present: HashSet::new(),
        })
    }

    /// Whether a hard-linked file was met: after a pass over chosen paths (a journal's), its
    /// other names may still be separate copies on the target, so the caller compares the
    /// whole tree.
    pub fn hard_links_seen(&self) -> bool {
        self.hard_links
    }

    /// The first paths changed on the target so far (and forgets them).
    pub fn take_fixed(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.fixed)
    }

    /// Whether a source entry vanishing mid-walk is skipped (a concurrent mutation, recorded
    /// in the dirty set) or fails the pass (under the write barrier, where nothing moves).
    pub fn set_tolerant(&mut self, tolerant: bool) {
        self.tolerant = tolerant;
    }

    /// `r`, an error of it charged to the source's `rel`.
    pub(super) fn s<T>(&self, rel: &Path, r: io::Result<T>) -> Res<T> {
        r.map_err(|err| SyncError {
            side: Side::Source,
            path: rel.to_path_buf(),
            err,
        })
    }

    /// `r`, an error of it charged to the target's `rel`.
    pub(super) fn t<T>(&self, rel: &Path, r: io::Result<T>) -> Res<T> {
        r.map_err(|err| SyncError {
            side: Side::Target,
            path: rel.to_path_buf(),
            err,
        })
    }

    /// Fails with ECANCELED once the run is cancelled (checked before every step).
    pub(super) fn check_cancel(&self, rel: &Path) -> Res<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(SyncError {
                side: Side::Target,
                path: rel.to_path_buf(),
                err: io::Error::from_raw_os_error(libc::ECANCELED),
            });
        }
        Ok(())
    }

    /// The whole tree: every entry compared, copied where it differs, extras removed.
    pub fn sync_all(&mut self) -> Res<()> {
        let total = self.count_source();
        self.progress.begin_pass(total);
        self.sync_path(Path::new(""), true, false)
    }

    /// The number of entries in the source tree (the root included), for the progress shown:
    /// one directory listing per directory, no per-entry stat. None when it cannot be known
    /// cheaply (a filesystem that does not give entry types, an error: the pass reports it).
    fn count_source(&self) -> Option<u64> {
        let root = self.src_root.as_fd();
        let mut total = 1u64;
        let mut dirs = vec![PathBuf::new()];
        while let Some(dir) = dirs.pop() {
            if self.cancel.load(Ordering::Relaxed) {
                return None;
            }
            // Proof of life for the watchdog on a big tree.
            self.progress.checked.fetch_add(1, Ordering::Relaxed);
            let c = sys::rel_cstr(&dir).ok()?;
            for e in sys::read_dir_all(root, &c).ok()? {
                if dir.as_os_str().is_empty() && e.name == META_DIR {
                    continue;
                }
                total += 1;
                match e.kind {
                    libc::DT_DIR => dirs.push(dir.join(&e.name)),
                    libc::DT_UNKNOWN => return None,
                    _ => {}
                }
            }
        }
        Some(total)
    }

    /// The paths touched by mutations during the previous pass (`true`: a rename, whose whole
    /// subtree is compared), then the attributes (times last) of their parent directories.
    pub fn sync_dirty(&mut self, dirty: &BTreeMap<PathBuf, bool>) -> Res<()> {
        // A renamed directory's subtree is compared too: how big is not known in advance.
        let known = !dirty.values().any(|&recursive| recursive);
        self.progress
            .begin_pass(known.then_some(dirty.len() as u64));
        self.present.clear();
        let mut parents = BTreeSet::new();
        for (path, &recursive) in dirty {
            if self.is_meta(path) {
                continue;
            }
            self.ensure_parents(path)?;
            self.sync_path(path, recursive, true)?;
            let mut p = path.parent();
            while let Some(dir) = p {
                parents.insert(dir.to_path_buf());
                p = dir.parent();
            }
        }
        // Deepest first: setting a directory's times does not touch its parent's.
        for dir in parents.iter().rev() {
            self.sync_parent(dir)?;
        }
        Ok(())
    }

    /// A directory that is only the parent of changed paths: a change to itself (mode, owner,
    /// xattrs, times) would have recorded its own path, so only its times can differ (moved by
    /// its children's changes). Anything else (missing, another kind) gets the full entry sync.
    fn sync_parent(&mut self, rel: &Path) -> Res<()> {
        self.check_cancel(rel)?;
        let src = self.s(rel, stat_of(self.src_root.as_fd(), rel));
        let dst = self.t(rel, stat_of(self.dst_root.as_fd(), rel));
        match (src, dst) {
            (Ok(Some(s)), Ok(Some(d))) if s.is(libc::S_IFDIR) && d.is(libc::S_IFDIR) => {
                self.progress.checked.fetch_add(1, Ordering::Relaxed);
                if attr_fix(&s, &d).times {
                    self.record_fixed(rel);
                    self.set_times(rel, &s)?;
                }
                Ok(())
            }
            _ => self.sync_path(rel, false, false),
        }
    }

    /// Whether `rel` is in the replica's own state directory, never copied.
    fn is_meta(&self, rel: &Path) -> bool {
        rel.components().next().map(|c| c.as_os_str()) == Some(std::ffi::OsStr::new(META_DIR))
    }

    /// Creates the target's missing ancestors of `rel` that the source has.
    fn ensure_parents(&mut self, rel: &Path) -> Res<()> {
        let ancestors: Vec<PathBuf> = rel
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .collect();
        for a in ancestors.iter().rev() {
            if self.present.contains(a) {
                continue;
            }
            if self.t(a, stat_of(self.dst_root.as_fd(), a))?.is_none() {
                self.sync_path(a, false, false)?;
            }
            self.present.insert(a.clone());
        }
        Ok(())
    }

    /// Brings the target's `rel` in line with the source's; into directories when `recursive`
    /// (always into one it had to create).
    fn sync_path(&mut self, rel: &Path, recursive: bool, force: bool) -> Res<()> {
        match self.sync_entry(rel, recursive, force) {
            Err(e) if e.side == Side::Source && self.tolerant && gone(&e.err) => Ok(()),
            r => r,
        }
    }

    /// One entry: read both sides, decide, carry the plan out, fix the attributes, then
    /// (a directory) its children and its times, last since the children's changes move them.
    fn sync_entry(&mut self, rel: &Path, recursive: bool, force: bool) -> Res<()> {
        let (src, dst) = self.examine(rel)?;
        let group = self.group_for(src.as_ref(), dst.as_ref())?;
        let plan = decide(src.as_ref(), dst.as_ref(), group, force);
        if changes_target(plan, src.as_ref(), dst.as_ref()) {
            self.record_fixed(rel);
        }
        let Some(s) = src else {
            if plan == Plan::Remove {
                self.remove(rel)?;
            }
            return Ok(());
        };
        let fix = attrs_to_fix(plan, &s, dst.as_ref());
        match plan {
            Plan::Nothing | Plan::Update { content: false } => {}
            Plan::Remove => unreachable!("the source has it"),
            Plan::Create { replace } => self.create(rel, &s, replace)?,
            Plan::Link { replace } => {
                let Group::Member { .. } = group else {
                    unreachable!("only members are linked")
                };
                return self.link_to_group(rel, &s, replace);
            }
            Plan::Update { content: true } => self.copy_content(rel, false)?,
        }
        let member = matches!(group, Group::Member { .. });
        if s.hard_linked() && !member {
            self.lead_group(rel, &s)?;
        }
        if member && plan == Plan::Nothing {
            return Ok(()); // the group's inode, already brought in line through its first link
        }
        self.fix_attrs(rel, &s, fix)?;
        let created = matches!(plan, Plan::Create { .. });
        if s.is(libc::S_IFDIR) && (recursive || created) {
            self.sync_children(rel, force)?;
        }
        if fix.times || s.is(libc::S_IFDIR) {
            self.set_times(rel, &s)?;
        }
        Ok(())
    }

    /// Counts `rel` as examined and reads it on both sides, noting a hard-linked file.
    fn examine(&mut self, rel: &Path) -> Res<(Option<Meta>, Option<Meta>)> {
        self.check_cancel(rel)?;
        self.progress.checked.fetch_add(1, Ordering::Relaxed);
        self.progress.entries.fetch_add(1, Ordering::Relaxed);
        let src = self.s(rel, stat_of(self.src_root.as_fd(), rel))?;
        let dst = self.t(rel, stat_of(self.dst_root.as_fd(), rel))?;
        self.hard_links |= src.as_ref().is_some_and(Meta::hard_linked)
            || dst.as_ref().is_some_and(Meta::hard_linked);
        Ok((src, dst))
    }

    /// The hard-link situation of the source entry; a first link is `claimed` when the target
    /// entry already stands for another source inode.
    fn group_for(&self, src: Option<&Meta>, dst: Option<&Meta>) -> Res<Group> {
        let Some(s) = src.filter(|s| s.hard_linked()) else {
            return Ok(Group::Single);
        };
        Ok(match self.group_of(s)? {
            Group::Leader { .. } => Group::Leader {
                claimed: dst.is_some_and(|d| {
                    self.claimed
                        .get(&d.ino)
                        .is_some_and(|&owner| owner != s.ino)
                }),
            },
            g => g,
        })
    }

    /// Records the target inode the source inode `s` was copied to at `rel`: its other links
    /// will be linked to it.
    fn lead_group(&mut self, rel: &Path, s: &Meta) -> Res<()> {
        let d = self.t(rel, sys::at(self.dst_root.as_fd(), rel, sys::lstat_at))?;
        let tino = (d.st_dev, d.st_ino);
        self.groups.insert(s.ino, (rel.to_path_buf(), tino));
        self.claimed.insert(tino, s.ino);
        Ok(())
    }

    /// Counts a change made to the target's `rel`, and keeps it among the first 1000.
    fn record_fixed(&mut self, rel: &Path) {
        self.progress.files.fetch_add(1, Ordering::Relaxed);
        if self.fixed.len() < 1000 {
            self.fixed.push(rel.to_path_buf());
        }
    }

    /// The group of a source inode with several links; a group whose recorded paths no longer
    /// hold it (a pass ago) starts again.
    fn group_of(&self, s: &Meta) -> Res<Group> {
        if let Some((path, tino)) = self.groups.get(&s.ino) {
            let src_ok = self
                .s(path, stat_of(self.src_root.as_fd(), path))?
                .is_some_and(|m| m.ino == s.ino);
            let dst_ok = self
                .t(path, stat_of(self.dst_root.as_fd(), path))?
                .is_some_and(|m| m.ino == *tino && m.is(libc::S_IFREG));
            if src_ok && dst_ok {
                return Ok(Group::Member { target_ino: *tino });
            }
        }
        Ok(Group::Leader { claimed: false })
    }

    /// Every name in directory `rel` on either side, in name order.
    fn sync_children(&mut self, rel: &Path, force: bool) -> Res<()> {
        let cpath = self.s(rel, sys::rel_cstr(rel))?;
        let top = rel.as_os_str().is_empty();
        let names = |entries: Vec<sys::DirEntry>| -> BTreeSet<OsString> {
            entries
                .into_iter()
                .map(|e| e.name)
                .filter(|n| !(top && n == META_DIR))
                .collect()
        };
        let src = names(self.s(rel, sys::read_dir_all(self.src_root.as_fd(), &cpath))?);
        let dst = names(self.t(rel, sys::read_dir_all(self.dst_root.as_fd(), &cpath))?);
        for name in src.union(&dst) {
            self.sync_path(&rel.join(name), true, force)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both replicas' trees as comparable lines (kind, mode, size, mtime, content, links).
    fn listing(root: &Path) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let md = std::fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                if rel == META_DIR {
                    continue;
                }
                let body = if md.file_type().is_symlink() {
                    std::fs::read_link(&p).unwrap().display().to_string()
                } else if md.is_file() {
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned()
                } else {
                    stack.push(p.clone());
                    String::new()
                };
                let mtime = if md.is_dir() { 0 } else { md.mtime_nsec() };
                out.push(format!(
                    "{rel} {:o} {} {} {mtime} {body}",
                    md.mode(),
                    md.nlink(),
                    md.len()
                ));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn the_engine_makes_the_target_equal_to_the_source() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let base = std::env::temp_dir().join(format!("chironfs-resync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (a, b) = (base.join("a"), base.join("b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d.join(META_DIR)).unwrap();
            std::fs::write(d.join(META_DIR).join("state"), d.display().to_string()).unwrap();
        }
        std::fs::create_dir_all(a.join("dir/sub")).unwrap();
        std::fs::write(a.join("dir/f"), b"content").unwrap();
        std::fs::write(a.join("dir/sub/g"), b"deeper").unwrap();
        std::fs::hard_link(a.join("dir/f"), a.join("h1")).unwrap();
        std::fs::hard_link(a.join("dir/f"), a.join("dir/sub/h2")).unwrap();
        symlink("dir/f", a.join("link")).unwrap();
        std::fs::set_permissions(a.join("dir/sub/g"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        // The target: stale content, an extra tree, a file where a directory belongs, and
        // a hard link the source does not have.
        std::fs::write(b.join("extra"), b"x").unwrap();
        std::fs::create_dir_all(b.join("gone/deep")).unwrap();
        std::fs::write(b.join("dir"), b"not a dir").unwrap();
        std::fs::write(b.join("link"), b"not a link").unwrap();
        std::fs::write(b.join("h1"), b"old").unwrap();
        std::fs::hard_link(b.join("h1"), b.join("other")).unwrap();
        let src = Replica::open(0, a.clone(), false, 1).unwrap();
        let dst = Replica::open(1, b.clone(), false, 1).unwrap();
        let progress = Arc::new(Progress::default());
        let mut e = Engine::new(&src, &dst, Arc::clone(&progress), Arc::default()).unwrap();
        e.sync_all().map_err(|e| format!("{e:?}")).unwrap();
        let before = progress.files.load(Ordering::Relaxed);
        assert!(before > 5);
        // A second pass finds nothing to do (before anything reads the files: reading moves
        // their atimes, which are copied too).
        e.sync_all().map_err(|e| format!("{e:?}")).unwrap();
        assert_eq!(progress.files.load(Ordering::Relaxed), before);
        assert_eq!(listing(&a), listing(&b));
        // Each replica keeps its own state directory.
        let state = std::fs::read_to_string(b.join(META_DIR).join("state")).unwrap();
        assert_eq!(state, b.display().to_string());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_pass_over_journaled_paths_brings_exactly_those_changes() {
        let base =
            std::env::temp_dir().join(format!("chironfs-resync-dirty-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (a, b) = (base.join("a"), base.join("b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d.join(META_DIR)).unwrap();
        }
        for d in 0..20 {
            std::fs::create_dir_all(a.join(format!("d{d}"))).unwrap();
            for f in 0..20 {
                std::fs::write(a.join(format!("d{d}/f{f}")), format!("{d}{f}")).unwrap();
            }
        }
        let src = Replica::open(0, a.clone(), false, 1).unwrap();
        let dst = Replica::open(1, b.clone(), false, 1).unwrap();
        let progress = Arc::new(Progress::default());
        let mut e = Engine::new(&src, &dst, Arc::clone(&progress), Arc::default()).unwrap();
        e.sync_all().map_err(|e| format!("{e:?}")).unwrap();
        // Changes on the source, as the journal would list them.
        std::fs::write(a.join("d0/f0"), b"new content").unwrap();
        std::fs::rename(a.join("d1"), a.join("moved")).unwrap();
        std::fs::remove_file(a.join("d2/f1")).unwrap();
        std::fs::create_dir(a.join("new")).unwrap();
        std::fs::write(a.join("new/x"), b"x").unwrap();
        let mut journal = BTreeMap::new();
        for (p, rec) in [
            ("d0/f0", false),
            ("d1", true),
            ("moved", true),
            ("d2/f1", false),
            ("new", false),
            ("new/x", false),
        ] {
            journal.insert(PathBuf::from(p), rec);
        }
        let checked = progress.checked.load(Ordering::Relaxed);
        e.sync_dirty(&journal)
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        assert_eq!(listing(&a), listing(&b));
        assert!(!e.hard_links_seen());
        // Only about the journaled paths, the moved directory's 20 files and the parents were
        // looked at (with a count per copied chunk), not the 420 entries of the tree.
        let looked = progress.checked.load(Ordering::Relaxed) - checked;
        assert!(looked < 100, "{looked} entries checked");
        // A hard link among the paths: the caller must compare whole trees.
        std::fs::hard_link(a.join("d0/f2"), a.join("d0/h")).unwrap();
        let mut journal = BTreeMap::new();
        journal.insert(PathBuf::from("d0/h"), false);
        e.sync_dirty(&journal)
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        assert!(e.hard_links_seen());
        let _ = std::fs::remove_dir_all(&base);
    }
}
