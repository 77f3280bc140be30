//! Online resync: copies the tree of an in-service replica (the source) onto an out-of-service
//! one (the target) while the mount keeps serving, so the target can come back in service.
//!
//! The decisions (what to copy, delete or relink given the two sides' metadata) are pure
//! functions, unit-tested; the [`Engine`] carries them out with the `sys` wrappers, relative
//! to each replica's root fd (`openat2` beneath, never following a symlink). How the passes are
//! run against concurrent mutations (dirty set, write barrier) lives in `set.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::engine::replica::Replica;
use crate::rules::state::META_DIR;
use crate::sys::{self, TimeSpec, XattrOp, XattrReply};
use crate::view::snapshot::ResyncProgress;

/// What the resync needs to know about one entry (from `lstat`, plus a symlink's target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// `st_mode & S_IFMT`.
    pub kind: u32,
    /// Permission bits (`st_mode & 07777`).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Access time (seconds, nanoseconds).
    pub atime: (i64, i64),
    /// Device number of a device node.
    pub rdev: u64,
    /// Hard link count.
    pub nlink: u64,
    /// (st_dev, st_ino): the inode's identity on its replica.
    pub ino: (u64, u64),
    /// A symlink's target.
    pub link: Option<Vec<u8>>,
}

impl Meta {
    /// From a stat buffer (and the link target for a symlink).
    pub fn of(st: &libc::stat, link: Option<Vec<u8>>) -> Meta {
        Meta {
            kind: st.st_mode & libc::S_IFMT,
            perm: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            atime: (st.st_atime, st.st_atime_nsec),
            rdev: st.st_rdev,
            nlink: st.st_nlink,
            ino: (st.st_dev, st.st_ino),
            link,
        }
    }

    fn is(&self, kind: u32) -> bool {
        self.kind == kind
    }
}

/// The hard-link situation of a source regular file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// A single link (or not a regular file).
    Single,
    /// The first link of its inode seen: it is copied, the others will be linked to it.
    /// `claimed`: the target entry's inode already stands for another source inode.
    Leader {
        /// The target inode belongs to another group: it must not be written in place.
        claimed: bool,
    },
    /// Another link of an inode already copied to the target as inode `target_ino`.
    Member {
        /// The target inode the group was copied to.
        target_ino: (u64, u64),
    },
}

/// What to do with one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Both sides agree (or neither has it).
    Nothing,
    /// Only the target has it: remove it (recursively).
    Remove,
    /// Create it on the target from the source (removing what is there first if `replace`).
    Create {
        /// Something of another kind or identity is in the way.
        replace: bool,
    },
    /// Hard-link it to the group's target inode (removing what is there first if `replace`).
    Link {
        /// Something else is in the way.
        replace: bool,
    },
    /// Same kind on both sides: fix the attributes, and the content if `content`.
    Update {
        /// Copy the file's bytes.
        content: bool,
    },
}

/// Decides what to do with one path given both sides. `force` copies a regular file's content
/// even when size and mtime agree (a path written during the resync).
pub fn decide(src: Option<&Meta>, dst: Option<&Meta>, group: Group, force: bool) -> Plan {
    let (s, d) = match (src, dst) {
        (None, None) => return Plan::Nothing,
        (None, Some(_)) => return Plan::Remove,
        (Some(_), None) => {
            return match group {
                Group::Member { .. } => Plan::Link { replace: false },
                _ => Plan::Create { replace: false },
            };
        }
        (Some(s), Some(d)) => (s, d),
    };
    let replace = match group {
        Group::Member { .. } => Plan::Link { replace: true },
        _ => Plan::Create { replace: true },
    };
    if s.kind != d.kind {
        return replace;
    }
    match s.kind {
        libc::S_IFLNK if s.link != d.link => replace,
        libc::S_IFCHR | libc::S_IFBLK if s.rdev != d.rdev => replace,
        libc::S_IFREG => {
            let differs = force || s.size != d.size || s.mtime != d.mtime;
            match group {
                Group::Member { target_ino } if d.ino == target_ino => {
                    // The same inode as the group's first link: copied with it.
                    if force {
                        Plan::Update { content: true }
                    } else {
                        Plan::Nothing
                    }
                }
                Group::Member { .. } => replace,
                // A link the source does not share, or an inode that stands for another
                // group: writing it in place would change other names too.
                Group::Single if d.nlink > 1 => replace,
                Group::Leader { claimed: true } if d.nlink > 1 => replace,
                _ => Plan::Update { content: differs },
            }
        }
        _ => Plan::Update { content: false },
    }
}

/// Which attributes of an existing target entry differ from the source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttrFix {
    /// uid or gid.
    pub owner: bool,
    /// Permission bits (never for a symlink).
    pub mode: bool,
    /// atime or mtime.
    pub times: bool,
}

/// Compares the attributes of `s` and `d` (same kind). Directory and symlink atimes move with
/// every listing or readlink (the resync's own included), so only their mtime counts.
pub fn attr_fix(s: &Meta, d: &Meta) -> AttrFix {
    let atime_counts = !s.is(libc::S_IFDIR) && !s.is(libc::S_IFLNK);
    AttrFix {
        owner: (s.uid, s.gid) != (d.uid, d.gid),
        mode: !s.is(libc::S_IFLNK) && s.perm != d.perm,
        times: s.mtime != d.mtime || (atime_counts && s.atime != d.atime),
    }
}

/// Counters shown while a resync runs, and the rate limit its copy loop obeys.
#[derive(Debug, Default)]
pub struct Progress {
    /// Entries created, replaced, linked, removed or updated on the target.
    pub files: AtomicU64,
    /// Bytes of file content copied.
    pub bytes: AtomicU64,
    /// Entries examined (also the watchdog's proof of life).
    pub checked: AtomicU64,
    /// Entries examined, only them (`checked` also counts copied chunks).
    pub entries: AtomicU64,
    /// `entries` when the current pass began.
    pass_start: AtomicU64,
    /// Entries the current pass is to examine, plus one; 0 when unknown.
    pass_total: AtomicU64,
    /// The content copy's token bucket (None: no limit).
    bucket: Mutex<Option<crate::rules::throttle::TokenBucket>>,
    /// The smoothed rates, fed by whoever takes a snapshot.
    meter: Mutex<crate::rules::throttle::RateMeter>,
}

impl Progress {
    /// Limits the copy of content bytes to `bytes_per_sec` (0: no limit).
    pub fn set_limit(&self, bytes_per_sec: u64) {
        let bucket = (bytes_per_sec > 0)
            .then(|| crate::rules::throttle::TokenBucket::new(bytes_per_sec, Instant::now()));
        *self.bucket.lock().unwrap_or_else(|e| e.into_inner()) = bucket;
    }

    /// The limit in bytes per second (0: none).
    pub fn limit(&self) -> u64 {
        let bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.as_ref().map_or(0, |b| b.rate())
    }

    /// The largest piece of content to copy in one call.
    fn chunk(&self) -> u64 {
        let bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.as_ref().map_or(u64::MAX, |b| b.chunk())
    }

    /// Spends `n` copied bytes; how long to wait before copying more.
    fn spend(&self, n: u64) -> std::time::Duration {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket
            .as_mut()
            .map_or(std::time::Duration::ZERO, |b| b.take(n, Instant::now()))
    }

    /// A pass begins that is to examine `total` entries (None: not known in advance).
    pub fn begin_pass(&self, total: Option<u64>) {
        self.pass_start
            .store(self.entries.load(Ordering::Relaxed), Ordering::Relaxed);
        self.pass_total
            .store(total.map_or(0, |t| t.saturating_add(1)), Ordering::Relaxed);
    }

    /// (entries to examine in this pass if known, entries examined in it so far).
    pub fn pass(&self) -> (Option<u64>, u64) {
        let total = self.pass_total.load(Ordering::Relaxed).checked_sub(1);
        let done = self
            .entries
            .load(Ordering::Relaxed)
            .saturating_sub(self.pass_start.load(Ordering::Relaxed));
        (total, done)
    }

    /// The smoothed (bytes/s, entries/s) as of now.
    pub fn rates(&self) -> (u64, u64) {
        let mut meter = self.meter.lock().unwrap_or_else(|e| e.into_inner());
        meter.sample(
            Instant::now(),
            self.bytes.load(Ordering::Relaxed),
            self.entries.load(Ordering::Relaxed),
        )
    }
}

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

type Res<T> = Result<T, SyncError>;

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn gone(e: &io::Error) -> bool {
    matches!(errno(e), libc::ENOENT | libc::ENOTDIR)
}

/// Copies one replica onto another, entry by entry.
pub struct Engine {
    src: Arc<Replica>,
    dst: Arc<Replica>,
    progress: Arc<Progress>,
    cancel: Arc<AtomicBool>,
    /// Source inode -> (the path of its first link, copied there on the target as this inode).
    groups: HashMap<(u64, u64), (PathBuf, (u64, u64))>,
    /// Target inode -> the source inode it stands for.
    claimed: HashMap<(u64, u64), (u64, u64)>,
    /// While true, a source entry vanishing under the walk is skipped (a concurrent mutation,
    /// recorded in the dirty set); false under the write barrier, where nothing moves.
    tolerant: bool,
    /// A regular file with several links was met on either side: a pass over chosen paths
    /// cannot know its other names (see [`Engine::hard_links_seen`]).
    hard_links: bool,
    /// The first 1000 paths it created, replaced, removed or fixed (for crash recovery's log
    /// line; `progress.files` counts them all).
    fixed: Vec<PathBuf>,
    /// Target directories seen to exist during this pass over chosen paths (their children's
    /// ancestors need no second look); forgotten whenever the engine removes a directory.
    present: HashSet<PathBuf>,
}

/// The metadata of `rel` beneath `root` (never following a symlink), None when it does not
/// exist; shared with `verify`, which must read entries exactly as the resync compares them.
pub fn stat_of(root: BorrowedFd<'_>, rel: &Path) -> io::Result<Option<Meta>> {
    let st = match sys::at(root, rel, sys::lstat_at) {
        Ok(st) => st,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let link = if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        Some(sys::at(root, rel, sys::readlink_at)?)
    } else {
        None
    };
    Ok(Some(Meta::of(&st, link)))
}

/// The xattrs of an entry as name -> value; none where the filesystem has no xattrs (shared
/// with `verify`).
pub fn xattrs_of(root: BorrowedFd<'_>, rel: &Path) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    // The whole path beneath the root in one open (`sys::xattr` opens it with no symlink
    // followed, the last component included), not its parent first: this runs for every entry.
    let whole = |f: &mut dyn FnMut(BorrowedFd<'_>, &CStr) -> io::Result<Vec<u8>>| {
        f(root, &sys::rel_cstr(rel)?)
    };
    let list = whole(&mut |dir, name| {
        for _ in 0..4 {
            let size = match sys::xattr(dir, name, XattrOp::List(0))? {
                XattrReply::Size(n) => n,
                _ => 0,
            };
            if size == 0 {
                return Ok(Vec::new());
            }
            match sys::xattr(dir, name, XattrOp::List(size)) {
                Ok(XattrReply::Data(d)) => return Ok(d),
                Err(e) if errno(&e) == libc::ERANGE => continue,
                Err(e) => return Err(e),
                Ok(_) => return Ok(Vec::new()),
            }
        }
        Err(io::Error::from_raw_os_error(libc::ERANGE))
    });
    let list = match list {
        Ok(l) => l,
        Err(e) if matches!(errno(&e), libc::EOPNOTSUPP) => return Ok(out),
        Err(e) => return Err(e),
    };
    for attr in list.split(|&b| b == 0).filter(|a| !a.is_empty()) {
        let cattr = CString::new(attr).expect("split at NUL");
        let value = whole(&mut |dir, name| {
            for _ in 0..4 {
                let size = match sys::xattr(dir, name, XattrOp::Get(&cattr, 0))? {
                    XattrReply::Size(n) => n,
                    _ => 0,
                };
                if size == 0 {
                    return Ok(Vec::new());
                }
                match sys::xattr(dir, name, XattrOp::Get(&cattr, size)) {
                    Ok(XattrReply::Data(d)) => return Ok(d),
                    Err(e) if errno(&e) == libc::ERANGE => continue,
                    Err(e) => return Err(e),
                    Ok(_) => return Ok(Vec::new()),
                }
            }
            Err(io::Error::from_raw_os_error(libc::ERANGE))
        });
        match value {
            Ok(v) => {
                out.insert(attr.to_vec(), v);
            }
            Err(e) if errno(&e) == libc::ENODATA => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

const CHUNK: u64 = 8 << 20;

impl Engine {
    /// An engine copying `src` onto `dst`.
    pub fn new(
        src: Arc<Replica>,
        dst: Arc<Replica>,
        progress: Arc<Progress>,
        cancel: Arc<AtomicBool>,
    ) -> Self {
        Engine {
            src,
            dst,
            progress,
            cancel,
            groups: HashMap::new(),
            claimed: HashMap::new(),
            tolerant: true,
            hard_links: false,
            fixed: Vec::new(),
            present: HashSet::new(),
        }
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

    /// Whether a source entry vanishing mid-walk is skipped (see [`Engine::tolerant`]).
    pub fn set_tolerant(&mut self, tolerant: bool) {
        self.tolerant = tolerant;
    }

    fn s<T>(&self, rel: &Path, r: io::Result<T>) -> Res<T> {
        r.map_err(|err| SyncError {
            side: Side::Source,
            path: rel.to_path_buf(),
            err,
        })
    }

    fn t<T>(&self, rel: &Path, r: io::Result<T>) -> Res<T> {
        r.map_err(|err| SyncError {
            side: Side::Target,
            path: rel.to_path_buf(),
            err,
        })
    }

    fn check_cancel(&self, rel: &Path) -> Res<()> {
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
        let root = self.src.root();
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
        let src = self.s(rel, stat_of(self.src.root(), rel));
        let dst = self.t(rel, stat_of(self.dst.root(), rel));
        match (src, dst) {
            (Ok(Some(s)), Ok(Some(d))) if s.is(libc::S_IFDIR) && d.is(libc::S_IFDIR) => {
                self.progress.checked.fetch_add(1, Ordering::Relaxed);
                if attr_fix(&s, &d).times {
                    self.progress.files.fetch_add(1, Ordering::Relaxed);
                    if self.fixed.len() < 1000 {
                        self.fixed.push(rel.to_path_buf());
                    }
                    self.set_times(rel, &s)?;
                }
                Ok(())
            }
            _ => self.sync_path(rel, false, false),
        }
    }

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
            if self.t(a, stat_of(self.dst.root(), a))?.is_none() {
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

    fn sync_entry(&mut self, rel: &Path, recursive: bool, force: bool) -> Res<()> {
        self.check_cancel(rel)?;
        self.progress.checked.fetch_add(1, Ordering::Relaxed);
        self.progress.entries.fetch_add(1, Ordering::Relaxed);
        let src = self.s(rel, stat_of(self.src.root(), rel))?;
        let dst = self.t(rel, stat_of(self.dst.root(), rel))?;
        let linked = |m: &Option<Meta>| {
            m.as_ref()
                .is_some_and(|m| m.is(libc::S_IFREG) && m.nlink > 1)
        };
        self.hard_links |= linked(&src) || linked(&dst);
        let group = match &src {
            Some(s) if s.is(libc::S_IFREG) && s.nlink > 1 => match self.group_of(s)? {
                Group::Leader { .. } => Group::Leader {
                    claimed: dst.as_ref().is_some_and(|d| {
                        self.claimed
                            .get(&d.ino)
                            .is_some_and(|&owner| owner != s.ino)
                    }),
                },
                g => g,
            },
            _ => Group::Single,
        };
        let plan = decide(src.as_ref(), dst.as_ref(), group, force);
        let fixes = match (&src, &dst) {
            (Some(s), Some(d)) if s.kind == d.kind => attr_fix(s, d) != AttrFix::default(),
            _ => false,
        };
        if !matches!(plan, Plan::Nothing | Plan::Update { content: false }) || fixes {
            self.progress.files.fetch_add(1, Ordering::Relaxed);
            if self.fixed.len() < 1000 {
                self.fixed.push(rel.to_path_buf());
            }
        }
        let Some(s) = src else {
            if plan == Plan::Remove {
                self.remove(rel)?;
            }
            return Ok(());
        };
        let mut created = false;
        let mut fix = match &dst {
            Some(d) => attr_fix(&s, d),
            None => AttrFix::default(),
        };
        match plan {
            Plan::Nothing => {}
            Plan::Remove => unreachable!("the source has it"),
            Plan::Create { replace } => {
                if replace {
                    self.remove(rel)?;
                }
                self.create(rel, &s)?;
                created = true;
                fix = AttrFix {
                    owner: true,
                    mode: true,
                    times: true,
                };
            }
            Plan::Link { replace } => {
                if replace {
                    self.remove(rel)?;
                }
                let Group::Member { .. } = group else {
                    unreachable!("only members are linked")
                };
                let leader = self.groups[&s.ino].0.clone();
                let dst_root = self.dst.root();
                let r = sys::at(dst_root, &leader, |od, on| {
                    sys::at(dst_root, rel, |nd, nn| sys::link_at(od, on, nd, nn))
                });
                self.t(rel, r)?;
                return Ok(());
            }
            Plan::Update { content } => {
                if content {
                    self.copy_content(rel, false)?;
                    fix.times = true;
                }
            }
        }
        if s.is(libc::S_IFREG) && s.nlink > 1 && !matches!(group, Group::Member { .. }) {
            let d = self.t(rel, sys::at(self.dst.root(), rel, sys::lstat_at))?;
            let tino = (d.st_dev, d.st_ino);
            self.groups.insert(s.ino, (rel.to_path_buf(), tino));
            self.claimed.insert(tino, s.ino);
        }
        if matches!(group, Group::Member { .. }) && plan == Plan::Nothing {
            return Ok(());
        }
        self.fix_attrs(rel, &s, fix)?;
        if s.is(libc::S_IFDIR) && (recursive || created) {
            self.sync_children(rel, force)?;
        }
        if fix.times || s.is(libc::S_IFDIR) {
            self.set_times(rel, &s)?;
        }
        Ok(())
    }

    /// The group of a source inode with several links; a group whose recorded paths no longer
    /// hold it (a pass ago) starts again.
    fn group_of(&self, s: &Meta) -> Res<Group> {
        if let Some((path, tino)) = self.groups.get(&s.ino) {
            let src_ok = self
                .s(path, stat_of(self.src.root(), path))?
                .is_some_and(|m| m.ino == s.ino);
            let dst_ok = self
                .t(path, stat_of(self.dst.root(), path))?
                .is_some_and(|m| m.ino == *tino && m.is(libc::S_IFREG));
            if src_ok && dst_ok {
                return Ok(Group::Member { target_ino: *tino });
            }
        }
        Ok(Group::Leader { claimed: false })
    }

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
        let src = names(self.s(rel, sys::read_dir_all(self.src.root(), &cpath))?);
        let dst = names(self.t(rel, sys::read_dir_all(self.dst.root(), &cpath))?);
        for name in src.union(&dst) {
            self.sync_path(&rel.join(name), true, force)?;
        }
        Ok(())
    }

    fn create(&mut self, rel: &Path, s: &Meta) -> Res<()> {
        let root = self.dst.root();
        let r = match s.kind {
            libc::S_IFREG => return self.copy_content(rel, true),
            libc::S_IFDIR => sys::at(root, rel, |dir, name| sys::mkdir_at(dir, name, 0o700)),
            libc::S_IFLNK => {
                let target = sys::cstr(std::ffi::OsStr::from_bytes(
                    s.link.as_deref().unwrap_or_default(),
                ));
                target.and_then(|t| sys::at(root, rel, |dir, name| sys::symlink_at(&t, dir, name)))
            }
            kind => sys::at(root, rel, |dir, name| {
                sys::mknod_at(dir, name, kind | 0o600, s.rdev)
            }),
        };
        self.t(rel, r)
    }

    /// Copies the source file's bytes into the target's (created when `create`).
    fn copy_content(&mut self, rel: &Path, create: bool) -> Res<()> {
        let c = self.s(rel, sys::rel_cstr(rel))?;
        let base = libc::O_RDONLY | libc::O_NOFOLLOW;
        let src = match sys::open_beneath(self.src.root(), &c, base | libc::O_NOATIME, 0, true) {
            Err(e) if errno(&e) == libc::EPERM => {
                sys::open_beneath(self.src.root(), &c, base, 0, true)
            }
            r => r,
        };
        let src: OwnedFd = self.s(rel, src)?;
        let mut flags = libc::O_WRONLY | libc::O_TRUNC | libc::O_NOFOLLOW;
        if create {
            flags |= libc::O_CREAT | libc::O_EXCL;
        }
        let dst: OwnedFd = self.t(
            rel,
            sys::open_beneath(self.dst.root(), &c, flags, 0o600, true),
        )?;
        let mut off: u64 = 0;
        let mut plain = false;
        loop {
            self.check_cancel(rel)?;
            self.progress.checked.fetch_add(1, Ordering::Relaxed);
            // Under the write barrier (not tolerant) every mutation waits for this pass:
            // the limit, which protects the mount's load, would only add to the wait.
            let limited = self.tolerant;
            let chunk = if limited {
                CHUNK.min(self.progress.chunk())
            } else {
                CHUNK
            };
            let n = if plain {
                let want = chunk.min(1 << 20) as usize;
                let data = self.s(rel, sys::pread_full(src.as_fd(), want, off))?;
                self.t(rel, sys::pwrite_full(dst.as_fd(), &data, off))?;
                data.len() as u64
            } else {
                match sys::copy_range(src.as_fd(), off, dst.as_fd(), off, chunk) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            errno(&e),
                            libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS
                        ) =>
                    {
                        plain = true;
                        continue;
                    }
                    // Which side failed is unknown; the target is the one being written.
                    Err(e) => return self.t(rel, Err(e)),
                }
            };
            if n == 0 {
                break;
            }
            off += n;
            self.progress.bytes.fetch_add(n, Ordering::Relaxed);
            if limited {
                self.pace(rel, n)?;
            }
        }
        Ok(())
    }

    /// Waits as the rate limit asks after `n` bytes were copied, in short slices so a
    /// cancel is seen at once (each wait is at most a quarter second's worth of the rate).
    fn pace(&self, rel: &Path, n: u64) -> Res<()> {
        let mut wait = self.progress.spend(n);
        while !wait.is_zero() {
            self.check_cancel(rel)?;
            let slice = wait.min(std::time::Duration::from_millis(100));
            std::thread::sleep(slice);
            wait -= slice;
        }
        Ok(())
    }

    fn fix_attrs(&mut self, rel: &Path, s: &Meta, fix: AttrFix) -> Res<()> {
        let root = self.dst.root();
        if fix.owner {
            self.t(
                rel,
                sys::at(root, rel, |d, n| sys::chown_at(d, n, s.uid, s.gid)),
            )?;
        }
        // A chown clears set-id bits: the mode goes after it.
        if (fix.mode || fix.owner) && !s.is(libc::S_IFLNK) {
            self.t(rel, sys::at(root, rel, |d, n| sys::chmod_at(d, n, s.perm)))?;
        }
        let want = self.s(rel, xattrs_of(self.src.root(), rel))?;
        let have = self.t(rel, xattrs_of(root, rel))?;
        if want != have {
            for (name, value) in &want {
                if have.get(name) != Some(value) {
                    let cname = CString::new(name.clone()).expect("no NUL in an xattr name");
                    let r = sys::at(root, rel, |d, n| {
                        sys::xattr(d, n, XattrOp::Set(&cname, value, 0))
                    });
                    self.t(rel, r)?;
                }
            }
            for name in have.keys().filter(|n| !want.contains_key(*n)) {
                let cname = CString::new(name.clone()).expect("no NUL in an xattr name");
                let r = sys::at(root, rel, |d, n| sys::xattr(d, n, XattrOp::Remove(&cname)));
                self.t(rel, r)?;
            }
        }
        Ok(())
    }

    fn set_times(&mut self, rel: &Path, s: &Meta) -> Res<()> {
        let a = TimeSpec::At {
            sec: s.atime.0,
            nsec: s.atime.1,
        };
        let m = TimeSpec::At {
            sec: s.mtime.0,
            nsec: s.mtime.1,
        };
        let r = sys::at(self.dst.root(), rel, |d, n| sys::utimens_at(d, n, a, m));
        self.t(rel, r)
    }

    /// Removes `rel` from the target, a directory with everything below it.
    fn remove(&mut self, rel: &Path) -> Res<()> {
        self.check_cancel(rel)?;
        let replica = Arc::clone(&self.dst);
        let root = replica.root();
        let Some(d) = self.t(rel, stat_of(root, rel))? else {
            return Ok(());
        };
        if d.is(libc::S_IFDIR) {
            self.present.clear();
            let c = self.t(rel, sys::rel_cstr(rel))?;
            for e in self.t(rel, sys::read_dir_all(root, &c))? {
                self.remove(&rel.join(e.name))?;
            }
        }
        self.claimed.remove(&d.ino);
        match sys::at(root, rel, |dir, name| {
            sys::unlink_at(dir, name, d.is(libc::S_IFDIR))
        }) {
            Err(e) if gone(&e) => Ok(()),
            r => self.t(rel, r),
        }
    }
}

/// What a running (or the last) resync is doing, for the snapshot.
#[derive(Clone, Debug, Default)]
pub struct RunStatus {
    /// `running`, `done` or `failed`.
    pub state: String,
    /// `copying`, `catching up`, `barrier` while running.
    pub phase: String,
    /// Why it failed.
    pub error: String,
    /// When it ended.
    pub ended: Option<Instant>,
}

/// One resync of `target` from `source`: its counters, its state and the paths mutated since
/// it started (the dirty set, recorded by every mutation while it runs).
#[derive(Debug)]
pub struct Run {
    /// Replica copied from.
    pub source: usize,
    /// Replica brought back.
    pub target: usize,
    /// Counters.
    pub progress: Arc<Progress>,
    /// Set to make the copy stop at its next step.
    pub cancel: Arc<AtomicBool>,
    /// When it started.
    pub started: Instant,
    /// State for the snapshot.
    pub status: Mutex<RunStatus>,
    /// Paths mutated since recording began (`true`: compare the whole subtree); None when
    /// not recording.
    dirty: Mutex<Option<BTreeMap<PathBuf, bool>>>,
    /// The copy threads have all ended (a hung one keeps a new resync from starting).
    pub idle: AtomicBool,
}

impl Run {
    /// A run starting now, recording mutated paths from the start.
    pub fn new(source: usize, target: usize) -> Self {
        Run {
            source,
            target,
            progress: Arc::default(),
            cancel: Arc::default(),
            started: Instant::now(),
            status: Mutex::new(RunStatus {
                state: "running".into(),
                phase: "copying".into(),
                ..RunStatus::default()
            }),
            dirty: Mutex::new(Some(BTreeMap::new())),
            idle: AtomicBool::new(false),
        }
    }

    /// Records that a mutation touches `path` (a rename's paths with `recursive`).
    pub fn note(&self, path: &Path, recursive: bool) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = dirty.as_mut() {
            let e = d.entry(path.to_path_buf()).or_insert(false);
            *e |= recursive;
        }
    }

    /// The paths recorded so far; recording goes on only if `keep_recording`.
    pub fn take_dirty(&self, keep_recording: bool) -> BTreeMap<PathBuf, bool> {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        let taken = dirty.take().unwrap_or_default();
        if keep_recording {
            *dirty = Some(BTreeMap::new());
        }
        taken
    }

    /// Whether the run has ended (done or failed).
    pub fn ended(&self) -> bool {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ended
            .is_some()
    }

    /// Sets the phase shown while running.
    pub fn set_phase(&self, phase: &str) {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).phase = phase.into();
    }

    /// Ends the run: done, or failed with `error`.
    pub fn finish(&self, result: Result<(), String>) {
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        st.ended = Some(Instant::now());
        st.phase.clear();
        match result {
            Ok(()) => st.state = "done".into(),
            Err(e) => {
                st.state = "failed".into();
                st.error = e;
            }
        }
        drop(st);
        self.take_dirty(false);
    }

    /// The run as shown by `chironctl status`.
    pub fn snapshot(&self) -> ResyncProgress {
        let st = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let end = st.ended.unwrap_or_else(Instant::now);
        let elapsed = end.duration_since(self.started);
        let bytes = self.progress.bytes.load(Ordering::Relaxed);
        let entries = self.progress.entries.load(Ordering::Relaxed);
        // Running: the smoothed rates and this pass's share; ended: the averages.
        let ((bytes_per_sec, entries_per_sec), (total, done)) = if st.ended.is_none() {
            (self.progress.rates(), self.progress.pass())
        } else {
            let secs = elapsed.as_secs_f64().max(0.001);
            let avg = |n: u64| (n as f64 / secs).round() as u64;
            ((avg(bytes), avg(entries)), (None, entries))
        };
        ResyncProgress {
            state: st.state,
            phase: st.phase,
            source: self.source,
            files: self.progress.files.load(Ordering::Relaxed),
            bytes,
            checked: self.progress.checked.load(Ordering::Relaxed),
            seconds: elapsed.as_secs(),
            error: st.error,
            total,
            done,
            bytes_per_sec,
            entries_per_sec,
            eta: crate::rules::throttle::eta(total, done, entries_per_sec),
            rate_limit: self.progress.limit(),
        }
    }
}

/// One line of progress for `chironctl resync --wait` and `status` (see
/// [`crate::view::progress::describe`]).
pub fn describe(p: &ResyncProgress) -> String {
    crate::view::progress::describe(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: u32) -> Meta {
        Meta {
            kind,
            perm: 0o644,
            uid: 1,
            gid: 1,
            size: 10,
            mtime: (100, 5),
            atime: (90, 0),
            rdev: 0,
            nlink: 1,
            ino: (1, 10),
            link: None,
        }
    }

    const REG: u32 = libc::S_IFREG;

    #[test]
    fn missing_extra_and_equal_entries() {
        let f = meta(REG);
        assert_eq!(decide(None, None, Group::Single, false), Plan::Nothing);
        assert_eq!(decide(None, Some(&f), Group::Single, false), Plan::Remove);
        assert_eq!(
            decide(Some(&f), None, Group::Single, false),
            Plan::Create { replace: false }
        );
        let other = Meta {
            ino: (2, 20),
            ..f.clone()
        };
        assert_eq!(
            decide(Some(&f), Some(&other), Group::Single, false),
            Plan::Update { content: false }
        );
        assert_eq!(
            decide(Some(&f), Some(&other), Group::Single, true),
            Plan::Update { content: true }
        );
    }

    #[test]
    fn content_is_copied_when_size_or_mtime_differ() {
        let s = meta(REG);
        let bigger = Meta {
            size: 11,
            ..s.clone()
        };
        let older = Meta {
            mtime: (100, 4),
            ..s.clone()
        };
        for d in [bigger, older] {
            assert_eq!(
                decide(Some(&s), Some(&d), Group::Single, false),
                Plan::Update { content: true }
            );
        }
    }

    #[test]
    fn another_kind_symlink_target_or_device_is_replaced() {
        let s = meta(REG);
        let dir = meta(libc::S_IFDIR);
        assert_eq!(
            decide(Some(&s), Some(&dir), Group::Single, false),
            Plan::Create { replace: true }
        );
        let mut l1 = meta(libc::S_IFLNK);
        l1.link = Some(b"a".to_vec());
        let mut l2 = l1.clone();
        assert_eq!(
            decide(Some(&l1), Some(&l2), Group::Single, false),
            Plan::Update { content: false }
        );
        l2.link = Some(b"b".to_vec());
        assert_eq!(
            decide(Some(&l1), Some(&l2), Group::Single, false),
            Plan::Create { replace: true }
        );
        let c1 = Meta {
            rdev: 5,
            ..meta(libc::S_IFCHR)
        };
        let c2 = Meta {
            rdev: 6,
            ..c1.clone()
        };
        assert_eq!(
            decide(Some(&c1), Some(&c2), Group::Single, false),
            Plan::Create { replace: true }
        );
    }

    #[test]
    fn hard_links_are_relinked_and_never_written_through_a_foreign_link() {
        let s = Meta {
            nlink: 2,
            ..meta(REG)
        };
        let d = Meta {
            ino: (7, 70),
            ..meta(REG)
        };
        let member = Group::Member {
            target_ino: (7, 70),
        };
        // Already the group's inode: nothing (unless written during the resync).
        assert_eq!(decide(Some(&s), Some(&d), member, false), Plan::Nothing);
        assert_eq!(
            decide(Some(&s), Some(&d), member, true),
            Plan::Update { content: true }
        );
        let elsewhere = Group::Member {
            target_ino: (7, 71),
        };
        assert_eq!(
            decide(Some(&s), Some(&d), elsewhere, false),
            Plan::Link { replace: true }
        );
        assert_eq!(
            decide(Some(&s), None, elsewhere, false),
            Plan::Link { replace: false }
        );
        // The target shares an inode the source does not: never written in place.
        let shared = Meta {
            nlink: 2,
            ..d.clone()
        };
        let single = meta(REG);
        assert_eq!(
            decide(Some(&single), Some(&shared), Group::Single, false),
            Plan::Create { replace: true }
        );
        assert_eq!(
            decide(
                Some(&s),
                Some(&shared),
                Group::Leader { claimed: true },
                false
            ),
            Plan::Create { replace: true }
        );
        assert_eq!(
            decide(
                Some(&s),
                Some(&shared),
                Group::Leader { claimed: false },
                false
            ),
            Plan::Update { content: false }
        );
    }

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
        let mut e = Engine::new(src, dst, Arc::clone(&progress), Arc::default());
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
        let mut e = Engine::new(src, dst, Arc::clone(&progress), Arc::default());
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

    #[test]
    fn attributes_that_differ_are_named() {
        let s = meta(REG);
        assert_eq!(attr_fix(&s, &s), AttrFix::default());
        let d = Meta {
            uid: 2,
            perm: 0o600,
            atime: (1, 1),
            ..s.clone()
        };
        assert_eq!(
            attr_fix(&s, &d),
            AttrFix {
                owner: true,
                mode: true,
                times: true
            }
        );
        let l = meta(libc::S_IFLNK);
        let l2 = Meta {
            perm: 0o777,
            ..l.clone()
        };
        assert!(!attr_fix(&l, &l2).mode, "a symlink has no mode of its own");
        let dir = meta(libc::S_IFDIR);
        let dir2 = Meta {
            atime: (5, 5),
            ..dir.clone()
        };
        assert!(!attr_fix(&dir, &dir2).times, "directory atimes move");
    }
}
