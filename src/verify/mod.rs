//! `chironctl verify`: compares the replicas path by path (type, size, mode, owner, mtime,
//! symlink target, device number, xattrs, hard-link shape, and with `content` the bytes), so
//! an admin can prove the replicas identical, or see exactly where they are not, without
//! unmounting.
//!
//! The comparison of one path across replicas ([`compare`]) is pure and unit-tested. The walk
//! ([`verify`]) reads every replica through that replica's own worker threads, one directory
//! (or one batch of entries, or one chunk of file content) per job, each job bounded by the
//! replica deadline: a hung replica ends the verify with an error naming it, it never holds
//! the caller. Entries are read exactly as the resync reads them (`resync::stat_of`,
//! `resync::xattrs_of`), so "verify says identical" and "resync has nothing to copy" agree.
//!
//! The walk is not a snapshot: a path changed through the mount while the walk passes it can
//! show as a difference. Run it again (or on a quiet mount) before acting on one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::engine::replica::Replica;
use crate::resync::{self, Meta};
use crate::rules::state::META_DIR;
use crate::sys::{self, Credentials};
use crate::view::words::describe_errno;

/// Most differences carried in one report: a replica that lost its whole tree differs on
/// every path, and the answer must still fit the control socket's line limit. The counts stay
/// exact beyond it.
pub const MAX_DIFFERENCES: usize = 10_000;
/// Entries examined per job: large enough to keep the hand-offs cheap, small enough that a
/// huge directory on a slow network replica stays well within the deadline.
const BATCH: usize = 256;
/// File content compared per job, for the same reason.
const CHUNK: usize = 1 << 20;

/// One replica's view of one path, as the comparison needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// lstat (and symlink target).
    pub meta: Meta,
    /// Extended attributes, name -> value.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// For a regular file with several links: the first path of the walk naming its inode on
    /// this replica. Equal on every replica when the hard-link shape is the same (the walk
    /// visits paths in the same order on each).
    pub first_link: Option<String>,
}

/// One replica's value of a differing attribute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// Replica index (command-line order).
    pub replica: usize,
    /// Replica directory.
    pub path: String,
    /// The attribute on that replica, in words ("missing" when the path is not there).
    pub value: String,
}

/// One attribute of one path that is not the same on every compared replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// Path inside the mount ("/a/b").
    pub path: String,
    /// What differs: `type`, `size`, `mode`, `owner`, `mtime`, `symlink target`, `device`,
    /// `links`, `hard link`, `xattr NAME` or `content`.
    pub what: String,
    /// Each compared replica's value, reference replica first.
    pub values: Vec<Value>,
    /// The path relative to the replica roots, exactly (`path` is for reading: a name that is
    /// not UTF-8 is shown lossily there). Set by the walk for the recheck and the heal; not
    /// sent over the socket.
    #[serde(skip)]
    pub rel: PathBuf,
}

impl Difference {
    /// The line `chironctl verify` prints: "/a/b: size 10 on /r1, 12 on /r2".
    pub fn describe(&self) -> String {
        let on = |v: &Value| format!("{} on {}", v.value, v.path);
        if self.what == "content" {
            // "differs from byte N" only means something next to the replica it was compared
            // with: name the reference, list the others.
            let (reference, others) = self
                .values
                .split_first()
                .map_or((None, &[][..]), |(r, o)| (Some(r), o));
            let differing: Vec<String> = others
                .iter()
                .filter(|v| v.value != SAME_CONTENT)
                .map(on)
                .collect();
            return format!(
                "{}: content {} (compared with {})",
                self.path,
                differing.join(", "),
                reference.map_or("?", |r| r.path.as_str())
            );
        }
        let values: Vec<String> = self.values.iter().map(on).collect();
        format!("{}: {} {}", self.path, self.what, values.join(", "))
    }
}

/// A replica as it takes part in a comparison of one path.
#[derive(Clone, Copy, Debug)]
pub struct Side<'a> {
    /// Replica index.
    pub index: usize,
    /// Replica directory.
    pub name: &'a str,
    /// Its entry, None when the path is missing there.
    pub entry: Option<&'a Entry>,
}

/// The word for a file type (`st_mode & S_IFMT`).
pub fn kind_name(kind: u32) -> &'static str {
    match kind {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symlink",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        _ => "unknown type",
    }
}

/// Bytes in words: printable text quoted, anything else in hex; long values shortened.
fn show_bytes(b: &[u8]) -> String {
    const SHOWN: usize = 48;
    let cut = &b[..b.len().min(SHOWN)];
    let more = if b.len() > SHOWN { "..." } else { "" };
    if cut.iter().all(|&c| (0x20..0x7f).contains(&c)) {
        format!("\"{}{more}\"", String::from_utf8_lossy(cut))
    } else {
        let hex: String = cut.iter().map(|c| format!("{c:02x}")).collect();
        format!("0x{hex}{more} ({} bytes)", b.len())
    }
}

/// One attribute: its name and its value on an entry (None where it does not apply to that
/// kind of file).
type Attr = (&'static str, fn(&Entry) -> Option<String>);

/// The attributes compared once the type agrees, in the order they are reported. Directory
/// sizes and mtimes are left out: they depend on each replica's filesystem and move with
/// every entry created in them (the entries themselves are compared). atimes move with every
/// read and are never compared.
const ATTRS: &[Attr] = &[
    ("size", |e| {
        (e.meta.kind == libc::S_IFREG).then(|| e.meta.size.to_string())
    }),
    ("symlink target", |e| e.meta.link.as_deref().map(show_bytes)),
    ("device", |e| {
        matches!(e.meta.kind, libc::S_IFCHR | libc::S_IFBLK)
            .then(|| format!("{}:{}", libc::major(e.meta.rdev), libc::minor(e.meta.rdev)))
    }),
    ("mode", |e| {
        (e.meta.kind != libc::S_IFLNK).then(|| format!("{:04o}", e.meta.perm))
    }),
    ("owner", |e| Some(format!("{}:{}", e.meta.uid, e.meta.gid))),
    ("mtime", |e| {
        (e.meta.kind != libc::S_IFDIR).then(|| format!("{}.{:09}", e.meta.mtime.0, e.meta.mtime.1))
    }),
    ("links", |e| {
        (e.meta.kind == libc::S_IFREG).then(|| e.meta.nlink.to_string())
    }),
    ("hard link", |e| {
        (e.meta.kind == libc::S_IFREG).then(|| {
            e.first_link
                .as_ref()
                .map_or("no other link".into(), |p| format!("same file as {p}"))
        })
    }),
];

/// Value of a path that one replica does not have.
pub const MISSING: &str = "missing";
/// Value, in a `content` difference, of a replica whose bytes match the reference's.
pub const SAME_CONTENT: &str = "same";

/// A difference if the values are not all equal (None: the attribute does not apply).
fn differs(
    path: &str,
    what: String,
    sides: &[Side<'_>],
    values: &[Option<String>],
) -> Option<Difference> {
    let present: BTreeSet<&Option<String>> = values.iter().collect();
    if present.len() < 2 {
        return None;
    }
    Some(Difference {
        path: path.to_owned(),
        rel: PathBuf::from(path.trim_start_matches('/')),
        what,
        values: sides
            .iter()
            .zip(values)
            .map(|(s, v)| Value {
                replica: s.index,
                path: s.name.to_owned(),
                value: v.clone().unwrap_or_else(|| "-".into()),
            })
            .collect(),
    })
}

/// Compares one path across replicas (reference first) and lists what is not the same, one
/// [`Difference`] per attribute. A path missing somewhere or of another type somewhere gives
/// only the `type` difference: its other attributes cannot be compared.
pub fn compare(path: &str, sides: &[Side<'_>]) -> Vec<Difference> {
    let kinds: Vec<Option<String>> = sides
        .iter()
        .map(|s| {
            Some(
                s.entry
                    .map_or(MISSING, |e| kind_name(e.meta.kind))
                    .to_owned(),
            )
        })
        .collect();
    if let Some(d) = differs(path, "type".into(), sides, &kinds) {
        return vec![d];
    }
    let entries: Vec<&Entry> = sides.iter().filter_map(|s| s.entry).collect();
    if entries.len() != sides.len() {
        return Vec::new(); // missing everywhere
    }
    let mut out = Vec::new();
    for (what, value) in ATTRS {
        let values: Vec<Option<String>> = entries.iter().map(|e| value(e)).collect();
        out.extend(differs(path, (*what).into(), sides, &values));
    }
    let names: BTreeSet<&Vec<u8>> = entries.iter().flat_map(|e| e.xattrs.keys()).collect();
    for name in names {
        let values: Vec<Option<String>> = entries
            .iter()
            .map(|e| Some(e.xattrs.get(name).map_or(MISSING.into(), |v| show_bytes(v))))
            .collect();
        let what = format!("xattr {}", String::from_utf8_lossy(name));
        out.extend(differs(path, what, sides, &values));
    }
    out
}

/// Where `b` first differs from `a` (a shorter one differs where it ends), None if equal.
pub fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => Some(i),
        None if a.len() != b.len() => Some(a.len().min(b.len())),
        None => None,
    }
}

/// The `content` difference of a path: `mismatch[i]` is where replica `i` first differs from
/// the reference (`sides[0]`), None where it matches.
pub fn content_difference(
    path: &str,
    sides: &[Side<'_>],
    mismatch: &[Option<u64>],
) -> Option<Difference> {
    if mismatch.iter().all(Option::is_none) {
        return None;
    }
    Some(Difference {
        path: path.to_owned(),
        rel: PathBuf::from(path.trim_start_matches('/')),
        what: "content".into(),
        values: sides
            .iter()
            .zip(mismatch)
            .map(|(s, m)| Value {
                replica: s.index,
                path: s.name.to_owned(),
                value: match m {
                    Some(at) => format!("differs from byte {at}"),
                    None => SAME_CONTENT.into(),
                },
            })
            .collect(),
    })
}

/// The paths a heal (`verify --queue`) copies, inside the mount without the leading `/`:
/// each differing path once, `true` (copy its whole subtree) when its type differs, since
/// the walk did not go below it.
pub fn heal_paths(differences: &[Difference]) -> BTreeMap<PathBuf, bool> {
    let mut paths: BTreeMap<PathBuf, bool> = BTreeMap::new();
    for d in differences {
        *paths.entry(d.rel.clone()).or_default() |= d.what == "type";
    }
    paths
}

/// A compared replica, in a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compared {
    /// Replica index.
    pub index: usize,
    /// Replica directory.
    pub path: String,
}

/// What `chironctl verify` gets back from the daemon.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The replicas compared, the reference (first in-service in priority order) first.
    pub replicas: Vec<Compared>,
    /// Whether file content was compared too.
    pub content: bool,
    /// Paths compared (the root included).
    pub paths: u64,
    /// Bytes of file content compared, per replica.
    pub bytes: u64,
    /// How long the walk took, in milliseconds.
    pub millis: u64,
    /// Paths with at least one difference (exact, even beyond [`MAX_DIFFERENCES`]).
    pub differing_paths: u64,
    /// Differences found (exact count).
    pub difference_count: u64,
    /// The differences, at most [`MAX_DIFFERENCES`] of them, in walk order.
    pub differences: Vec<Difference>,
    /// Paths that differed when the walk passed them but agree when compared again right
    /// after (changed through the mount meanwhile); not reported as differences.
    #[serde(default)]
    pub settled: u64,
    /// Paths copied from the reference onto the other replicas (`verify --queue`).
    #[serde(default)]
    pub healed: Vec<String>,
}

impl Report {
    /// True when nothing differs.
    pub fn identical(&self) -> bool {
        self.difference_count == 0
    }

    /// The closing line: counts and time.
    pub fn summary(&self) -> String {
        let names: Vec<&str> = self.replicas.iter().map(|r| r.path.as_str()).collect();
        let content = if self.content {
            format!(", {} of content", human_bytes(self.bytes))
        } else {
            String::new()
        };
        let verdict = if self.identical() {
            "identical".to_owned()
        } else {
            let shown = if self.differences.len() as u64 != self.difference_count {
                format!(" ({} listed)", self.differences.len())
            } else {
                String::new()
            };
            format!(
                "{} difference{} in {} path{}{shown}",
                self.difference_count,
                plural(self.difference_count),
                self.differing_paths,
                plural(self.differing_paths),
            )
        };
        let settled = if self.settled > 0 {
            format!(" ({} changed during the walk and agree now)", self.settled)
        } else {
            String::new()
        };
        format!(
            "verified {} path{}{content} on {} in {:.1} s: {verdict}{settled}",
            self.paths,
            plural(self.paths),
            names.join(", "),
            self.millis as f64 / 1000.0
        )
    }

    /// The whole human-readable output: one line per difference, the healed paths, the
    /// summary.
    pub fn format(&self) -> String {
        let mut out = String::new();
        for d in &self.differences {
            out.push_str(&crate::view::status_file::sanitize_value(&d.describe()));
            out.push('\n');
        }
        for p in &self.healed {
            out.push_str(&format!(
                "healed {} from {}\n",
                crate::view::status_file::sanitize_value(p),
                self.replicas.first().map_or("?", |r| r.path.as_str())
            ));
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The path inside the mount, as reported.
fn shown(rel: &Path) -> String {
    format!("/{}", rel.display())
}

/// The entry is gone (removed or replaced by a concurrent mutation): not an error of the
/// replica, a difference for the recheck to look at again.
fn vanished(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))
}

/// A job run on each compared replica.
type Job<T> = Arc<dyn Fn(&Replica) -> io::Result<T> + Send + Sync>;

/// An entry as one replica's job reads it.
type Raw = Option<(Meta, BTreeMap<Vec<u8>, Vec<u8>>)>;

/// The walk over the compared replicas.
struct Walk<'a> {
    replicas: &'a [Arc<Replica>],
    names: Vec<String>,
    timeout: Duration,
    content: bool,
    report: Report,
    /// Per replica: inode -> first path naming it (hard-link shape).
    links: Vec<HashMap<(u64, u64), String>>,
}

/// Compares `replicas` (at least two, the reference first) path by path; see the module
/// comment. Errors name the replica and path that could not be read, or the replica that did
/// not answer within `timeout`.
pub fn verify(
    replicas: &[Arc<Replica>],
    timeout: Duration,
    content: bool,
) -> Result<Report, String> {
    if replicas.len() < 2 {
        return Err("at least two replicas are needed to compare".into());
    }
    let started = Instant::now();
    let names: Vec<String> = replicas
        .iter()
        .map(|r| r.path.display().to_string())
        .collect();
    let mut walk = Walk {
        replicas,
        names: names.clone(),
        timeout,
        content,
        report: Report {
            replicas: replicas
                .iter()
                .zip(&names)
                .map(|(r, n)| Compared {
                    index: r.index,
                    path: n.clone(),
                })
                .collect(),
            content,
            ..Report::default()
        },
        links: vec![HashMap::new(); replicas.len()],
    };
    let top = walk.check(Path::new(""), vec![PathBuf::new()])?;
    walk.walk_into(top)?;
    walk.recheck()?;
    // In path order (the walk reports a directory's entries before its subdirectories').
    walk.report.differences.sort_by(|a, b| a.path.cmp(&b.path));
    walk.report.millis = started.elapsed().as_millis() as u64;
    Ok(walk.report)
}

impl Walk<'_> {
    /// Walks the subtrees of `dirs` (directories on every replica), depth first in name order.
    fn walk_into(&mut self, dirs: Vec<PathBuf>) -> Result<(), String> {
        let mut stack: Vec<PathBuf> = dirs.into_iter().rev().collect();
        while let Some(dir) = stack.pop() {
            let paths: Vec<PathBuf> = self.list(&dir)?.into_iter().map(|n| dir.join(n)).collect();
            let mut subdirs = Vec::new();
            for batch in paths.chunks(BATCH) {
                subdirs.extend(self.check(&dir, batch.to_vec())?);
            }
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }

    /// Compares the differing paths once more, so that a path a mutation was changing while
    /// the walk passed it (written on one replica, not yet on the other) is not reported when
    /// it agrees now; counted in `settled`. A path that became a directory everywhere is walked
    /// into. Skipped when the list was cut at [`MAX_DIFFERENCES`] (no transient noise is that
    /// large).
    fn recheck(&mut self) -> Result<(), String> {
        let r = &mut self.report;
        if r.identical() || r.differences.len() as u64 != r.difference_count {
            return Ok(());
        }
        let first = std::mem::take(&mut r.differences);
        let before = r.differing_paths;
        let paths_seen = r.paths;
        r.differing_paths = 0;
        r.difference_count = 0;
        let mut paths: Vec<PathBuf> = Vec::new();
        for d in &first {
            if paths.last() != Some(&d.rel) {
                paths.push(d.rel.clone());
            }
        }
        let walked: BTreeSet<&Path> = first
            .iter()
            .filter(|d| d.what != "type")
            .map(|d| d.rel.as_path())
            .collect();
        let mut new_dirs = Vec::new();
        for batch in paths.chunks(BATCH) {
            for dir in self.check(Path::new(""), batch.to_vec())? {
                // A directory reported with another difference was walked already.
                if !walked.contains(dir.as_path()) {
                    new_dirs.push(dir);
                }
            }
        }
        self.report.paths = paths_seen;
        self.report.settled = before.saturating_sub(self.report.differing_paths);
        self.walk_into(new_dirs)
    }
    /// Runs `job` on every compared replica's workers under root credentials and waits for
    /// all within the deadline. `what` and `rel` name the step in errors.
    fn on_each<T: Send + 'static>(
        &self,
        what: &str,
        rel: &Path,
        job: Job<T>,
    ) -> Result<Vec<T>, String> {
        let (tx, rx) = mpsc::channel::<(usize, io::Result<T>)>();
        for (pos, r) in self.replicas.iter().enumerate() {
            let (tx, job, replica) = (tx.clone(), Arc::clone(&job), Arc::clone(r));
            r.submit(Box::new(move || {
                let res =
                    sys::set_thread_credentials(&Credentials::root()).and_then(|()| job(&replica));
                let _ = tx.send((pos, res));
            }));
        }
        drop(tx);
        let deadline = Instant::now() + self.timeout;
        let mut got: Vec<Option<T>> = self.replicas.iter().map(|_| None).collect();
        let mut missing = got.len();
        while missing > 0 {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((pos, Ok(v))) => {
                    got[pos] = Some(v);
                    missing -= 1;
                }
                Ok((pos, Err(e))) => {
                    return Err(format!(
                        "cannot {what} {} on {}: {}",
                        shown(rel),
                        self.names[pos],
                        describe_errno(e.raw_os_error().unwrap_or(libc::EIO))
                    ));
                }
                Err(_) => {
                    let hung: Vec<&str> = got
                        .iter()
                        .zip(&self.names)
                        .filter(|(g, _)| g.is_none())
                        .map(|(_, n)| n.as_str())
                        .collect();
                    return Err(format!(
                        "{} gave no answer within {:.1} s to {what} {} (hung?)",
                        hung.join(", "),
                        self.timeout.as_secs_f64(),
                        shown(rel)
                    ));
                }
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// The names in directory `rel` on any replica (the hidden state directory left out).
    fn list(&self, rel: &Path) -> Result<BTreeSet<OsString>, String> {
        let dir = rel.to_path_buf();
        let job: Job<Vec<OsString>> = Arc::new(move |r: &Replica| {
            let top = dir.as_os_str().is_empty();
            // Removed (or replaced) under the walk by a mutation: nothing to list here; its
            // entries show as missing on this replica, and the recheck settles them.
            let entries = match sys::read_dir_all(r.root(), &sys::rel_cstr(&dir)?) {
                Err(e) if vanished(&e) => Vec::new(),
                other => other?,
            };
            Ok(entries
                .into_iter()
                .map(|e| e.name)
                .filter(|n| !(top && n == META_DIR))
                .collect())
        });
        Ok(self
            .on_each("list", rel, job)?
            .into_iter()
            .flatten()
            .collect())
    }

    /// Compares `paths` (entries of directory `dir`) on every replica, records the
    /// differences, and returns those that are a directory everywhere (to walk into).
    fn check(&mut self, dir: &Path, paths: Vec<PathBuf>) -> Result<Vec<PathBuf>, String> {
        let paths = Arc::new(paths);
        let job: Job<Vec<Raw>> = {
            let paths = Arc::clone(&paths);
            Arc::new(move |r: &Replica| {
                paths
                    .iter()
                    .map(|p| match resync::stat_of(r.root(), p)? {
                        Some(m) => match resync::xattrs_of(r.root(), p) {
                            Ok(x) => Ok(Some((m, x))),
                            Err(e) if vanished(&e) => Ok(None),
                            Err(e) => Err(e),
                        },
                        None => Ok(None),
                    })
                    .collect()
            })
        };
        let raw = self.on_each("examine the entries of", dir, job)?;
        let mut dirs = Vec::new();
        for (i, rel) in paths.iter().enumerate() {
            let path = shown(rel);
            let entries: Vec<Option<Entry>> = raw
                .iter()
                .enumerate()
                .map(|(pos, per_replica)| {
                    per_replica[i].clone().map(|(meta, xattrs)| {
                        let first_link =
                            (meta.kind == libc::S_IFREG && meta.nlink > 1).then(|| {
                                self.links[pos]
                                    .entry(meta.ino)
                                    .or_insert_with(|| path.clone())
                                    .clone()
                            });
                        Entry {
                            meta,
                            xattrs,
                            first_link,
                        }
                    })
                })
                .collect();
            let sides: Vec<Side<'_>> = self
                .replicas
                .iter()
                .zip(&self.names)
                .zip(&entries)
                .map(|((r, name), e)| Side {
                    index: r.index,
                    name,
                    entry: e.as_ref(),
                })
                .collect();
            let mut diffs = compare(&path, &sides);
            let kinds: Vec<Option<u32>> = entries
                .iter()
                .map(|e| e.as_ref().map(|e| e.meta.kind))
                .collect();
            let sizes: BTreeSet<Option<u64>> = entries
                .iter()
                .map(|e| e.as_ref().map(|e| e.meta.size))
                .collect();
            let all_files = kinds.iter().all(|k| *k == Some(libc::S_IFREG));
            // Bytes are compared whenever they can differ unseen: same type and size.
            if self.content && all_files && sizes.len() == 1 {
                let size = entries[0].as_ref().map_or(0, |e| e.meta.size);
                let (mismatch, bytes) = self.compare_content(rel, size)?;
                self.report.bytes += bytes;
                diffs.extend(content_difference(&path, &sides, &mismatch));
            }
            for d in &mut diffs {
                d.rel.clone_from(rel); // exact, whatever the name's encoding
            }
            self.report.paths += 1;
            if !diffs.is_empty() {
                self.report.differing_paths += 1;
                self.report.difference_count += diffs.len() as u64;
                let room = MAX_DIFFERENCES.saturating_sub(self.report.differences.len());
                self.report.differences.extend(diffs.into_iter().take(room));
            }
            if kinds.iter().all(|k| *k == Some(libc::S_IFDIR)) {
                dirs.push(rel.clone());
            }
        }
        Ok(dirs)
    }

    /// Compares a regular file's bytes chunk by chunk (all replicas have `size` bytes): where
    /// each replica first differs from the reference, None where it matches; and the bytes
    /// read from the reference.
    fn compare_content(&self, rel: &Path, size: u64) -> Result<(Vec<Option<u64>>, u64), String> {
        let mut mismatch: Vec<Option<u64>> = vec![None; self.replicas.len()];
        let mut offset = 0u64;
        let mut bytes = 0u64;
        // Read at least once: a file that grew behind the walk's back still shows.
        loop {
            let file = rel.to_path_buf();
            // None: the file vanished under the walk (a rename, an unlink).
            let job: Job<Option<Vec<u8>>> = Arc::new(move |r: &Replica| {
                let c = sys::rel_cstr(&file)?;
                let flags = libc::O_RDONLY | libc::O_NOFOLLOW;
                let fd = match sys::open_beneath(r.root(), &c, flags | libc::O_NOATIME, 0, true) {
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        sys::open_beneath(r.root(), &c, flags, 0, true)
                    }
                    other => other,
                };
                match fd {
                    Ok(fd) => {
                        sys::pread_full(std::os::fd::AsFd::as_fd(&fd), CHUNK, offset).map(Some)
                    }
                    Err(e) if vanished(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            });
            let chunks = self.on_each("read", rel, job)?;
            if chunks.iter().any(Option::is_none) {
                // Differs from here on (the recheck compares it again, missing or not).
                for (m, c) in mismatch.iter_mut().zip(&chunks).skip(1) {
                    if m.is_none() && (c.is_none() || chunks[0].is_none()) {
                        *m = Some(offset);
                    }
                }
                break;
            }
            let chunks: Vec<Vec<u8>> = chunks.into_iter().flatten().collect();
            bytes += chunks[0].len() as u64;
            for (m, chunk) in mismatch.iter_mut().zip(&chunks).skip(1) {
                if m.is_none() {
                    *m = first_mismatch(&chunks[0], chunk).map(|at| offset + at as u64);
                }
            }
            let longest = chunks.iter().map(Vec::len).max().unwrap_or(0);
            if longest < CHUNK || mismatch.iter().skip(1).all(Option::is_some) {
                break;
            }
            offset += CHUNK as u64;
            if offset > size.saturating_add(CHUNK as u64 * 64) {
                break; // growing faster than we read: a live file, already reported or not
            }
        }
        Ok((mismatch, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: u32) -> Meta {
        Meta {
            kind,
            perm: 0o644,
            uid: 0,
            gid: 0,
            size: 10,
            mtime: (1_700_000_000, 5),
            atime: (1_700_000_000, 5),
            rdev: 0,
            nlink: 1,
            ino: (1, 2),
            link: None,
        }
    }

    fn entry(kind: u32) -> Entry {
        Entry {
            meta: meta(kind),
            xattrs: BTreeMap::new(),
            first_link: None,
        }
    }

    fn two<'a>(a: Option<&'a Entry>, b: Option<&'a Entry>) -> Vec<Side<'a>> {
        vec![
            Side {
                index: 0,
                name: "/r1",
                entry: a,
            },
            Side {
                index: 1,
                name: "/r2",
                entry: b,
            },
        ]
    }

    fn lines(d: &[Difference]) -> Vec<String> {
        d.iter().map(Difference::describe).collect()
    }

    #[test]
    fn equal_entries_do_not_differ() {
        let a = entry(libc::S_IFREG);
        let mut b = a.clone();
        // The inode number and atime are per replica: never compared.
        b.meta.ino = (7, 8);
        b.meta.atime = (1, 1);
        assert!(compare("/f", &two(Some(&a), Some(&b))).is_empty());
        assert!(compare("/f", &two(None, None)).is_empty());
    }

    #[test]
    fn each_attribute_is_named_with_both_values() {
        let a = entry(libc::S_IFREG);
        let mut b = a.clone();
        b.meta.size = 12;
        b.meta.perm = 0o600;
        b.meta.uid = 1000;
        b.meta.mtime = (1_700_000_000, 6);
        assert_eq!(
            lines(&compare("/a/b", &two(Some(&a), Some(&b)))),
            [
                "/a/b: size 10 on /r1, 12 on /r2",
                "/a/b: mode 0644 on /r1, 0600 on /r2",
                "/a/b: owner 0:0 on /r1, 1000:0 on /r2",
                "/a/b: mtime 1700000000.000000005 on /r1, 1700000000.000000006 on /r2",
            ]
        );
    }

    #[test]
    fn missing_or_other_type_is_one_difference() {
        let a = entry(libc::S_IFREG);
        let d = entry(libc::S_IFDIR);
        assert_eq!(
            lines(&compare("/x", &two(Some(&a), None))),
            ["/x: type regular file on /r1, missing on /r2"]
        );
        assert_eq!(
            lines(&compare("/x", &two(Some(&a), Some(&d)))),
            ["/x: type regular file on /r1, directory on /r2"]
        );
    }

    #[test]
    fn directories_ignore_size_and_mtime_symlinks_compare_targets_not_modes() {
        let a = entry(libc::S_IFDIR);
        let mut b = a.clone();
        b.meta.size = 4096;
        b.meta.mtime = (2, 0);
        assert!(compare("/d", &two(Some(&a), Some(&b))).is_empty());
        let mut l1 = entry(libc::S_IFLNK);
        l1.meta.link = Some(b"target".to_vec());
        let mut l2 = l1.clone();
        l2.meta.link = Some(b"elsewhere".to_vec());
        l2.meta.perm = 0o777;
        assert_eq!(
            lines(&compare("/l", &two(Some(&l1), Some(&l2)))),
            ["/l: symlink target \"target\" on /r1, \"elsewhere\" on /r2"]
        );
    }

    #[test]
    fn xattrs_devices_and_hard_links() {
        let mut a = entry(libc::S_IFREG);
        a.xattrs.insert(b"user.k".to_vec(), b"v1".to_vec());
        a.xattrs.insert(b"user.bin".to_vec(), vec![0, 1, 2]);
        let mut b = a.clone();
        b.xattrs.insert(b"user.k".to_vec(), b"v2".to_vec());
        b.xattrs.remove(b"user.bin".as_slice());
        assert_eq!(
            lines(&compare("/f", &two(Some(&a), Some(&b)))),
            [
                "/f: xattr user.bin 0x000102 (3 bytes) on /r1, missing on /r2",
                "/f: xattr user.k \"v1\" on /r1, \"v2\" on /r2",
            ]
        );
        let mut c1 = entry(libc::S_IFCHR);
        c1.meta.rdev = libc::makedev(1, 3);
        let mut c2 = c1.clone();
        c2.meta.rdev = libc::makedev(1, 5);
        assert_eq!(
            lines(&compare("/c", &two(Some(&c1), Some(&c2)))),
            ["/c: device 1:3 on /r1, 1:5 on /r2"]
        );
        let mut h1 = entry(libc::S_IFREG);
        h1.meta.nlink = 2;
        h1.first_link = Some("/a".into());
        let mut h2 = h1.clone();
        h2.first_link = Some("/b".into());
        assert_eq!(
            lines(&compare("/b", &two(Some(&h1), Some(&h2)))),
            ["/b: hard link same file as /a on /r1, same file as /b on /r2"]
        );
        let mut h3 = h1.clone();
        h3.meta.nlink = 1;
        h3.first_link = None;
        assert_eq!(
            lines(&compare("/b", &two(Some(&h1), Some(&h3)))),
            [
                "/b: links 2 on /r1, 1 on /r2",
                "/b: hard link same file as /a on /r1, no other link on /r2"
            ]
        );
    }

    #[test]
    fn three_replicas_list_every_value() {
        let a = entry(libc::S_IFREG);
        let mut c = a.clone();
        c.meta.size = 3;
        let mut sides = two(Some(&a), Some(&a));
        sides.push(Side {
            index: 2,
            name: "/r3",
            entry: Some(&c),
        });
        assert_eq!(
            lines(&compare("/f", &sides)),
            ["/f: size 10 on /r1, 10 on /r2, 3 on /r3"]
        );
    }

    #[test]
    fn content_mismatch_offsets_and_wording() {
        assert_eq!(first_mismatch(b"abc", b"abc"), None);
        assert_eq!(first_mismatch(b"abc", b"abd"), Some(2));
        assert_eq!(first_mismatch(b"abc", b"ab"), Some(2));
        assert_eq!(first_mismatch(b"", b"x"), Some(0));
        let a = entry(libc::S_IFREG);
        let sides = two(Some(&a), Some(&a));
        assert_eq!(content_difference("/f", &sides, &[None, None]), None);
        let d = content_difference("/f", &sides, &[None, Some(4096)]).unwrap();
        assert_eq!(
            d.describe(),
            "/f: content differs from byte 4096 on /r2 (compared with /r1)"
        );
    }

    #[test]
    fn heal_paths_are_unique_and_recursive_only_for_type_differences() {
        let a = entry(libc::S_IFREG);
        let mut b = a.clone();
        b.meta.size = 1;
        b.meta.perm = 0o600;
        let mut diffs = compare("/d/f", &two(Some(&a), Some(&b)));
        diffs.extend(compare("/x", &two(Some(&entry(libc::S_IFDIR)), None)));
        let p = heal_paths(&diffs);
        assert_eq!(
            p.into_iter().collect::<Vec<_>>(),
            [(PathBuf::from("d/f"), false), (PathBuf::from("x"), true)]
        );
    }

    #[test]
    fn summary_counts_and_json_round_trip() {
        let mut r = Report {
            replicas: vec![
                Compared {
                    index: 0,
                    path: "/r1".into(),
                },
                Compared {
                    index: 1,
                    path: "/r2".into(),
                },
            ],
            paths: 12,
            millis: 1500,
            ..Report::default()
        };
        assert!(r.identical());
        assert_eq!(
            r.summary(),
            "verified 12 paths on /r1, /r2 in 1.5 s: identical"
        );
        let a = entry(libc::S_IFREG);
        let mut b = a.clone();
        b.meta.size = 1;
        r.differences = compare("/f", &two(Some(&a), Some(&b)));
        r.difference_count = 1;
        r.differing_paths = 1;
        r.content = true;
        r.bytes = 3 << 20;
        assert_eq!(
            r.format(),
            "/f: size 10 on /r1, 1 on /r2\n\
             verified 12 paths, 3.0 MiB of content on /r1, /r2 in 1.5 s: 1 difference in 1 path\n"
        );
        let json = serde_json::to_string(&r).unwrap();
        // Everything but the exact relative path, which stays in the daemon.
        r.differences[0].rel = PathBuf::new();
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), r);
    }
}
