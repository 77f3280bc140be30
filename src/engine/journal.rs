//! The durable journal of changed paths: `.chironfs/journal` in every in-service replica.
//!
//! Every mutation records, *before* it is applied on a replica (write-ahead intent), the paths
//! it touches in that replica's journal: one line per path not yet recorded since the journal
//! was last compacted, appended with one `write(2)` and no fsync. Two uses:
//!
//! - **Incremental resync.** While a replica is out of service, the journal of the in-service
//!   ones lists every path it missed, so a resync copies only those instead of comparing the
//!   whole tree. The header names the generation recording started at; [`coverage`] tells
//!   whether that is early enough for a given target.
//! - **Crash recovery.** Files open for writing and namespace operations in flight when the
//!   daemon was killed are in the journal (an open for writing or a create is a mutation of
//!   its path); at the next start they are healed from the first in-service replica.
//!
//! The journal is bounded ([`DEFAULT_MAX_BYTES`], `--journal-max`): past the cap one
//! `overflow` line is written and recording stops, and coverage falls back to a full tree
//! compare. It is compacted (rewritten atomically, starting at the current generation, with
//! only the paths of files still open for writing) when no replica needs it: every replica in
//! service, no mutation in flight. kill -9 keeps the page cache, so the lines survive it; a
//! machine crash may lose them, which the header's boot id detects (see
//! [`Journal::trusted_after`]).
//!
//! Pure format, decisions and the in-memory [`Recorder`]; the file I/O is a few small
//! helpers at the end (std, on the replica's path like `state.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Write};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::rules::escape;
use crate::rules::state::Gen;
use crate::view::metrics::JournalSize;

/// The journal file inside [`META_DIR`].
pub const JOURNAL_FILE: &str = "journal";
/// Format version written in the header.
pub const FORMAT: u32 = 1;
/// Default cap on the journal's size (`--journal-max`): about 200,000 paths of 80 bytes.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;
/// The line written once when the cap is reached.
const OVERFLOW_LINE: &[u8] = b"overflow\n";

/// The first line of a journal: which set, from which generation on, written in which boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Replica-set id (a journal copied from another set is not trusted).
    pub set_id: u64,
    /// Recording started while this generation was current: every mutation since then is in
    /// the journal (unless it overflowed).
    pub start: Gen,
    /// `/proc/sys/kernel/random/boot_id` when written: lines appended without fsync survive a
    /// killed daemon but maybe not a machine crash.
    pub boot: String,
}

impl Header {
    fn render(&self) -> String {
        format!(
            "chironfs-journal format={FORMAT} set={:016x} start={} boot={}\n",
            self.set_id,
            self.start.render(),
            self.boot
        )
    }

    fn parse(line: &str) -> Result<Header, String> {
        let mut fields = line.split(' ');
        if fields.next() != Some("chironfs-journal") {
            return Err("no journal header".into());
        }
        let mut get = HashMap::new();
        for f in fields {
            let (k, v) = f
                .split_once('=')
                .ok_or_else(|| format!("malformed header field '{f}'"))?;
            get.insert(k, v);
        }
        let field = |k: &str| get.get(k).copied().ok_or(format!("no '{k}' in the header"));
        if field("format")? != FORMAT.to_string() {
            return Err(format!(
                "journal format {} is not supported",
                field("format")?
            ));
        }
        Ok(Header {
            set_id: u64::from_str_radix(field("set")?, 16)
                .map_err(|_| "bad 'set' in the header".to_string())?,
            start: Gen::parse(field("start")?).ok_or("bad 'start' in the header")?,
            boot: field("boot")?.to_string(),
        })
    }
}

/// A journal: its header and the paths recorded since (each once, in first-recorded order;
/// `true`: a rename's name, whose whole subtree is compared).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Journal {
    /// Set, start generation, boot.
    pub header: Header,
    entries: Vec<(PathBuf, bool)>,
    known: HashSet<(PathBuf, bool)>,
    /// Recording stopped at the cap: the journal no longer lists every change.
    pub overflowed: bool,
    bytes: u64,
}

/// The journal escapes no separator of its own: a record is one line.
const NO_SEPARATOR: &[u8] = b"";

/// The journal line recording `path`: `P path` (`R path` for a subtree), escaped, newline.
pub fn line(path: &Path, recursive: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(line_len(path) as usize);
    out.extend_from_slice(if recursive { b"R " } else { b"P " });
    escape::escape_into(&mut out, path, NO_SEPARATOR);
    out.push(b'\n');
    out
}

/// The length of [`line`] for `path`, without rendering it.
fn line_len(path: &Path) -> u64 {
    // The tag ("P"/"R"), its space and the newline.
    escape::escaped_len(path, NO_SEPARATOR) as u64 + 3
}

impl Journal {
    /// An empty journal starting now.
    pub fn new(header: Header) -> Journal {
        let bytes = header.render().len() as u64;
        Journal {
            header,
            entries: Vec::new(),
            known: HashSet::new(),
            overflowed: false,
            bytes,
        }
    }

    /// Adds `path` unless already recorded; returns whether it is new.
    pub fn insert(&mut self, path: &Path, recursive: bool) -> bool {
        let key = (path.to_path_buf(), recursive);
        if self.known.contains(&key) {
            return false;
        }
        self.bytes += line_len(path);
        self.known.insert(key.clone());
        self.entries.push(key);
        true
    }

    /// Whether recording `path` would take the journal past `max` bytes (the overflow line
    /// included, so it always fits).
    pub fn would_overflow(&self, path: &Path, max: u64) -> bool {
        self.bytes + line_len(path) + OVERFLOW_LINE.len() as u64 > max
    }

    /// Recording stops here: the overflow line is added (it always fits, see
    /// [`Journal::would_overflow`]).
    pub fn overflow(&mut self) {
        self.overflowed = true;
        self.bytes += OVERFLOW_LINE.len() as u64;
    }

    /// Number of paths recorded.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No path recorded (and no overflow).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && !self.overflowed
    }

    /// Size of the rendered journal.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The recorded paths for a resync pass (a path recorded both ways counts as recursive).
    pub fn paths(&self) -> BTreeMap<PathBuf, bool> {
        let mut out = BTreeMap::new();
        for (p, r) in &self.entries {
            *out.entry(p.clone()).or_insert(false) |= *r;
        }
        out
    }

    /// The file content.
    pub fn render(&self) -> Vec<u8> {
        let mut out = self.header.render().into_bytes();
        for (p, r) in &self.entries {
            out.extend_from_slice(&line(p, *r));
        }
        if self.overflowed {
            out.extend_from_slice(OVERFLOW_LINE);
        }
        out
    }

    /// Parses a journal file; the error says what is wrong (a torn or garbled line, another
    /// format). A path recorded twice (two appends racing) is kept once.
    pub fn parse(data: &[u8]) -> Result<Journal, String> {
        let text = std::str::from_utf8(data).map_err(|_| "not text (garbled)".to_string())?;
        if !text.ends_with('\n') {
            return Err(if text.is_empty() {
                "empty (its last write failed?)".into()
            } else {
                "its last record is torn".into()
            });
        }
        let mut lines = text[..text.len() - 1].split('\n');
        let header = Header::parse(lines.next().unwrap_or_default())?;
        let mut j = Journal::new(header);
        for (n, l) in lines.enumerate() {
            let bad = || format!("malformed record on line {}", n + 2);
            if l.as_bytes() == &OVERFLOW_LINE[..OVERFLOW_LINE.len() - 1] {
                j.overflowed = true;
                continue;
            }
            let (kind, rest) = l.split_at_checked(2).ok_or_else(bad)?;
            let recursive = match kind {
                "P " => false,
                "R " => true,
                _ => return Err(bad()),
            };
            let path = escape::unescape(rest).ok_or_else(bad)?;
            if !stays_inside(&path) {
                return Err(format!(
                    "line {} names a path outside the replica ({}): the journal is not \
                     trusted",
                    n + 2,
                    crate::engine::meta_files::excerpt(&path.to_string_lossy())
                ));
            }
            j.insert(&path, recursive);
        }
        if j.overflowed {
            j.bytes += OVERFLOW_LINE.len() as u64;
        }
        Ok(j)
    }

    /// Whether this journal, found at mount, can be trusted: written for this set, and
    /// either the last shutdown was clean (the journal was fsynced) or the machine did not
    /// restart since (lines appended without fsync are in the page cache). Err says why not.
    pub fn trusted_after(&self, set_id: u64, clean: bool, boot: &str) -> Result<(), String> {
        if self.header.set_id != set_id {
            return Err(format!(
                "it belongs to another replica set ({:016x})",
                self.header.set_id
            ));
        }
        if !clean && self.header.boot != boot {
            return Err(
                "the machine restarted after an unclean shutdown: its last records may be lost"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Whether a journaled path stays beneath the replica root: relative, with no `..`, `.` or
/// root component (a hand-edited or hostile journal could name `../../etc/passwd`).
fn stays_inside(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// What was found in a replica's `.chironfs/journal`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loaded {
    /// A readable journal.
    Found(Journal),
    /// No journal file (a first mount with this version, a new replica).
    Missing,
    /// Unreadable or corrupt, with the reason.
    Corrupt(String),
}

/// Whether the source's journal lists every path the target missed. `lineage` is the source's
/// generations, oldest first, current last; `target` the target's recorded generation and
/// whether it was in service at it (None: no usable state). Err gives the reason for a full
/// compare.
pub fn coverage(
    journal: Option<&Journal>,
    lineage: &[Gen],
    target: Option<(Gen, bool)>,
) -> Result<(), String> {
    let Some(j) = journal else {
        return Err("the source has no usable journal".into());
    };
    if j.overflowed {
        return Err("the journal overflowed its size cap".into());
    }
    let Some((tgen, was_in)) = target else {
        return Err("the replica has no usable state".into());
    };
    if tgen == Gen::NONE {
        return Err("the replica was never in sync (new or reset)".into());
    }
    let pos = |g: Gen| lineage.iter().position(|&x| x == g);
    let Some(t) = pos(tgen) else {
        return Err(format!(
            "the replica's generation {} is not in the source's history",
            tgen.number
        ));
    };
    let Some(s) = pos(j.header.start) else {
        return Err(format!(
            "the journal's start (generation {}) is not in the source's history",
            j.header.start.number
        ));
    };
    // Recording must have begun while the target still got every write: strictly before its
    // generation, or at it if it was in service then (a compaction needs every replica in).
    if s < t || (s == t && was_in) {
        Ok(())
    } else {
        Err(format!(
            "the journal starts at generation {}, after the replica left (generation {})",
            j.header.start.number, tgen.number
        ))
    }
}

/// One recorded line and, per replica, whether it is in that replica's journal file yet.
#[derive(Debug)]
pub struct Pending {
    line: Vec<u8>,
    done: Vec<AtomicBool>,
}

/// The lines a mutation must find in a replica's journal before it is applied there.
#[derive(Debug, Default)]
pub struct Intent(Vec<Arc<Pending>>);

#[derive(Debug)]
struct Live {
    journal: Journal,
    pending: HashMap<(PathBuf, bool), Arc<Pending>>,
    overflow: Option<Arc<Pending>>,
    /// Size of the journal right after the last compaction (the paths it kept): anything
    /// past it is new and worth compacting away.
    settled_bytes: u64,
}

/// The running journal: the in-memory copy and each replica's open journal file (appended
/// to).
#[derive(Debug)]
pub struct Recorder {
    max_bytes: u64,
    live: Mutex<Live>,
    files: Vec<Mutex<Option<std::fs::File>>>,
    /// The replica's journal lost a record (a failed append): it is truncated and not trusted
    /// until rewritten whole.
    broken: Vec<AtomicBool>,
    last_compaction: Mutex<Instant>,
}

impl Recorder {
    /// A recorder for `replicas` replicas continuing `journal`; files are attached with
    /// [`Recorder::attach`].
    pub fn new(journal: Journal, replicas: usize, max_bytes: u64) -> Recorder {
        // A journal holding nothing needs no compaction until something is recorded.
        let settled_bytes = if journal.is_empty() {
            journal.bytes()
        } else {
            0
        };
        Recorder {
            max_bytes,
            live: Mutex::new(Live {
                journal,
                pending: HashMap::new(),
                overflow: None,
                settled_bytes,
            }),
            files: (0..replicas).map(|_| Mutex::new(None)).collect(),
            broken: (0..replicas).map(|_| AtomicBool::new(false)).collect(),
            last_compaction: Mutex::new(Instant::now()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pending(&self, line: Vec<u8>) -> Arc<Pending> {
        Arc::new(Pending {
            line,
            done: self.files.iter().map(|_| AtomicBool::new(false)).collect(),
        })
    }

    /// Records that a mutation is about to touch `paths`; returns what each replica must
    /// append before applying it (nothing for paths already in every journal).
    pub fn note(&self, paths: &[(&Path, bool)]) -> Intent {
        let mut live = self.lock();
        let mut out = Vec::new();
        for &(path, recursive) in paths {
            if live.overflow.is_none() && live.journal.overflowed {
                // Loaded overflowed: every replica already has the line.
                let p = self.pending(OVERFLOW_LINE.to_vec());
                p.done.iter().for_each(|d| d.store(true, Ordering::Relaxed));
                live.overflow = Some(p);
            }
            if let Some(o) = &live.overflow {
                out.push(Arc::clone(o));
                break;
            }
            let key = (path.to_path_buf(), recursive);
            if let Some(p) = live.pending.get(&key) {
                out.push(Arc::clone(p));
                continue;
            }
            if live.journal.would_overflow(path, self.max_bytes) {
                live.journal.overflow();
                let p = self.pending(OVERFLOW_LINE.to_vec());
                live.overflow = Some(Arc::clone(&p));
                out.push(p);
                break;
            }
            if live.journal.insert(path, recursive) {
                let p = self.pending(line(path, recursive));
                live.pending.insert(key, Arc::clone(&p));
                out.push(p);
            }
            // A path loaded from disk: in every journal already.
        }
        Intent(out)
    }

    /// On replica `index`, before the mutation: appends the intent's lines that its journal
    /// does not hold yet, in one write. A failed append truncates that journal (so it reads
    /// as corrupt, never as complete) and marks it broken; the mutation goes on.
    pub fn write_ahead(&self, intent: &Intent, index: usize) -> Result<(), String> {
        let todo: Vec<&Arc<Pending>> = intent
            .0
            .iter()
            .filter(|p| !p.done[index].load(Ordering::Acquire))
            .collect();
        if todo.is_empty() || self.broken[index].load(Ordering::Relaxed) {
            return Ok(());
        }
        let buf: Vec<u8> = todo.iter().flat_map(|p| p.line.iter().copied()).collect();
        let mut file = self.files[index].lock().unwrap_or_else(|e| e.into_inner());
        let Some(f) = file.as_mut() else {
            return Ok(());
        };
        match f.write_all(&buf) {
            Ok(()) => {
                todo.iter()
                    .for_each(|p| p.done[index].store(true, Ordering::Release));
                Ok(())
            }
            Err(e) => {
                let _ = f.set_len(0);
                *file = None;
                self.broken[index].store(true, Ordering::Relaxed);
                Err(format!("cannot append to its journal: {e}"))
            }
        }
    }

    /// The journal as it must be written whole to replica `index` (at mount, when it rejoins,
    /// at compaction); every recorded line counts as in it from now on.
    pub fn render_for(&self, index: usize) -> Vec<u8> {
        let live = self.lock();
        for p in live.pending.values().chain(live.overflow.iter()) {
            p.done[index].store(true, Ordering::Release);
        }
        live.journal.render()
    }

    /// Replica `index`'s journal was written whole: appends go to `file` from now on.
    pub fn attach(&self, index: usize, file: std::fs::File) {
        *self.files[index].lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
        self.broken[index].store(false, Ordering::Relaxed);
    }

    /// Replica `index`'s journal could not be written whole: not trusted, no appends.
    pub fn detach(&self, index: usize) {
        *self.files[index].lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.broken[index].store(true, Ordering::Relaxed);
    }

    /// Whether replica `index`'s journal lost records.
    pub fn is_broken(&self, index: usize) -> bool {
        self.broken[index].load(Ordering::Relaxed)
    }

    /// Flushes replica `index`'s journal to stable storage (at a clean unmount).
    pub fn sync(&self, index: usize) -> io::Result<()> {
        match self.files[index]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    /// The journal's size now (for the metrics), without copying it.
    pub fn size(&self) -> JournalSize {
        let live = self.lock();
        JournalSize {
            bytes: live.journal.bytes(),
            paths: live.journal.len() as u64,
            overflowed: live.journal.overflowed,
        }
    }

    /// A copy of the in-memory journal (for a resync's first pass and the coverage check).
    pub fn snapshot(&self) -> Journal {
        self.lock().journal.clone()
    }

    /// Starts the journal afresh at generation `start`, holding only `keep`: the files open
    /// for writing, which crash recovery must still heal if the daemon dies before they are
    /// closed (a shared mapping in passthrough mode writes to one replica until its release).
    /// Called with no mutation in flight and every replica in service.
    pub fn compact(&self, start: Gen, keep: &[PathBuf]) {
        let mut live = self.lock();
        let header = Header {
            start,
            ..live.journal.header.clone()
        };
        let mut journal = Journal::new(header);
        for path in keep {
            if journal.would_overflow(path, self.max_bytes) {
                journal.overflow();
                break;
            }
            journal.insert(path, false);
        }
        live.settled_bytes = journal.bytes();
        live.journal = journal;
        live.pending.clear();
        live.overflow = None;
        *self
            .last_compaction
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Whether a compaction is worth trying now: something recorded since the last one, and
    /// that one a second ago or more (or the journal past a quarter of its cap), so a busy
    /// mount rewrites it at most about once a second.
    pub fn wants_compaction(&self) -> bool {
        let live = self.lock();
        if live.journal.bytes() <= live.settled_bytes {
            return false;
        }
        live.journal.bytes() > self.max_bytes / 4
            || self
                .last_compaction
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed()
                .as_secs()
                >= 1
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), or "unknown".
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Largest journal file read: `--journal-max` is at most 4 GiB, plus the header.
const MAX_JOURNAL_FILE: u64 = (1 << 32) + 4096;

/// Reads a replica's journal through its root handle.
pub fn read(root: BorrowedFd<'_>) -> Loaded {
    match crate::engine::meta_files::read(root, JOURNAL_FILE, MAX_JOURNAL_FILE) {
        Ok(Some(data)) => match Journal::parse(&data) {
            Ok(j) => Loaded::Found(j),
            Err(e) => Loaded::Corrupt(crate::engine::meta_files::excerpt(&e)),
        },
        Ok(None) => Loaded::Missing,
        Err(e) => Loaded::Corrupt(format!("cannot read it: {e}")),
    }
}

/// Writes `data` as a replica's journal atomically, through its root handle (temp file,
/// rename; with `durable` also fsync of the file and the directory), and returns it opened
/// for appending.
pub fn write(root: BorrowedFd<'_>, data: &[u8], durable: bool) -> io::Result<std::fs::File> {
    crate::engine::meta_files::replace(root, JOURNAL_FILE, data, durable, true)?
        .ok_or_else(|| io::Error::other("no file to append to"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    const G1: Gen = Gen { number: 1, id: 11 };
    const G2: Gen = Gen { number: 2, id: 22 };
    const G3: Gen = Gen { number: 3, id: 33 };

    fn header(start: Gen) -> Header {
        Header {
            set_id: 0xabc,
            start,
            boot: "b-1".into(),
        }
    }

    #[test]
    fn journals_round_trip_with_odd_names_and_duplicates() {
        let mut j = Journal::new(header(G1));
        assert!(j.insert(Path::new("a/b c"), false));
        assert!(j.insert(Path::new("new\nline%x"), true));
        assert!(j.insert(Path::new(""), false));
        // Bytes past ASCII (here UTF-8 "é" and a stray 0xff) and DEL are escaped too.
        assert!(j.insert(Path::new(OsStr::from_bytes(b"caf\xc3\xa9\xff\x7f")), false));
        assert!(!j.insert(Path::new("a/b c"), false));
        let text = j.render();
        assert!(text.starts_with(b"chironfs-journal format=1 set="));
        assert!(
            String::from_utf8_lossy(&text).contains("R new%0Aline%25x\nP \nP caf%C3%A9%FF%7F\n"),
            "{}",
            String::from_utf8_lossy(&text)
        );
        assert_eq!(Journal::parse(&text), Ok(j.clone()));
        assert_eq!(j.bytes(), text.len() as u64);
        // The same line appended twice (two appends racing) reads as one path.
        let mut twice = text.clone();
        twice.extend_from_slice(b"P a/b c\n");
        assert_eq!(Journal::parse(&twice).unwrap().len(), 4);
        let paths = j.paths();
        assert_eq!(
            paths.get(Path::new(OsStr::from_bytes(b"caf\xc3\xa9\xff\x7f"))),
            Some(&false)
        );
        assert_eq!(paths.get(Path::new("new\nline%x")), Some(&true));
        assert_eq!(paths.get(Path::new("a/b c")), Some(&false));
    }

    #[test]
    fn torn_garbled_or_foreign_journals_are_corrupt() {
        let mut j = Journal::new(header(G1));
        j.insert(Path::new("f"), false);
        let text = j.render();
        let torn = &text[..text.len() - 1];
        assert!(Journal::parse(torn).unwrap_err().contains("torn"));
        assert!(Journal::parse(b"").unwrap_err().contains("empty"));
        assert!(Journal::parse(b"\0\0\0\n").is_err());
        let mut bad = text.clone();
        bad.extend_from_slice(b"X what\n");
        assert!(Journal::parse(&bad).unwrap_err().contains("line 3"));
        let mut bad_escape = text.clone();
        bad_escape.extend_from_slice(b"P a%zz\n");
        assert!(Journal::parse(&bad_escape).is_err());
        // A path leading out of the replica: the journal is not trusted (a whole-tree
        // compare follows), and the reason says so instead of an errno that blames a replica.
        for outside in [
            "P ../../etc/passwd\n",
            "R a/../../b\n",
            "P /etc/passwd\n",
            "P ./x\n",
        ] {
            let mut bad = text.clone();
            bad.extend_from_slice(outside.as_bytes());
            let why = Journal::parse(&bad).unwrap_err();
            assert!(
                why.contains("line 3 names a path outside the replica"),
                "{why}"
            );
        }
        let other = String::from_utf8(text)
            .unwrap()
            .replace("format=1", "format=9");
        assert!(Journal::parse(other.as_bytes()).unwrap_err().contains("9"));
    }

    #[test]
    fn a_journal_is_trusted_after_a_kill_but_not_after_a_machine_crash() {
        let j = Journal::new(header(G1));
        assert!(j.trusted_after(0xabc, false, "b-1").is_ok());
        assert!(j.trusted_after(0xabc, true, "b-2").is_ok());
        assert!(
            j.trusted_after(0xabc, false, "b-2")
                .unwrap_err()
                .contains("machine restarted")
        );
        assert!(j.trusted_after(0xdef, true, "b-1").is_err());
    }

    #[test]
    fn the_recorder_overflows_once_and_says_so() {
        let j = Journal::new(header(G1));
        let base = j.bytes();
        // Room for two 4-byte lines ("P a\n") and the overflow line.
        let rec = Recorder::new(j, 2, base + 8 + OVERFLOW_LINE.len() as u64);
        let one = rec.note(&[(Path::new("a"), false)]);
        assert_eq!(one.0.len(), 1);
        rec.note(&[(Path::new("b"), false)]);
        let over = rec.note(&[(Path::new("c"), false)]);
        assert_eq!(over.0[0].line, OVERFLOW_LINE);
        let again = rec.note(&[(Path::new("d"), false), (Path::new("e"), false)]);
        assert_eq!(again.0.len(), 1);
        assert!(Arc::ptr_eq(&over.0[0], &again.0[0]));
        let snap = rec.snapshot();
        assert!(snap.overflowed && snap.len() == 2);
        let text = rec.render_for(0);
        assert_eq!(text.len() as u64, snap.bytes());
        assert!(Journal::parse(&text).unwrap().overflowed);
        assert!(
            coverage(Some(&snap), &[G1, G2], Some((G1, true)))
                .unwrap_err()
                .contains("overflowed")
        );
        // A compaction starts afresh.
        rec.compact(G2, &[]);
        let fresh = rec.snapshot();
        assert!(fresh.is_empty() && fresh.header.start == G2);
        assert_eq!(rec.note(&[(Path::new("c"), false)]).0.len(), 1);
    }

    #[test]
    fn a_compaction_keeps_the_files_open_for_writing_and_is_wanted_only_for_news() {
        let rec = Recorder::new(Journal::new(header(G1)), 1, DEFAULT_MAX_BYTES);
        assert!(!rec.wants_compaction(), "nothing recorded yet");
        rec.note(&[(Path::new("open.log"), false), (Path::new("done"), false)]);
        rec.compact(G2, &[PathBuf::from("open.log")]);
        let kept = rec.snapshot();
        assert_eq!(kept.header.start, G2);
        assert_eq!(
            kept.paths().into_keys().collect::<Vec<_>>(),
            [PathBuf::from("open.log")]
        );
        assert!(
            Journal::parse(&rec.render_for(0))
                .unwrap()
                .paths()
                .contains_key(Path::new("open.log"))
        );
        // Only the kept path: nothing to compact, however long ago the last one was.
        *rec.last_compaction.lock().unwrap() -= std::time::Duration::from_secs(5);
        assert!(!rec.wants_compaction());
        // A write to the kept file records nothing new; another path does.
        assert!(rec.note(&[(Path::new("open.log"), false)]).0.is_empty());
        assert!(!rec.wants_compaction());
        assert_eq!(rec.note(&[(Path::new("new"), false)]).0.len(), 1);
        assert!(rec.wants_compaction());
    }

    #[test]
    fn appends_go_to_each_replica_once_and_a_failed_one_breaks_the_journal() {
        let dir = std::env::temp_dir().join(format!("chironfs-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let roots = [dir.join("a"), dir.join("b")];
        for r in &roots {
            std::fs::create_dir_all(r.join(crate::rules::state::META_DIR)).unwrap();
        }
        let rec = Recorder::new(Journal::new(header(G1)), 2, DEFAULT_MAX_BYTES);
        let handles: Vec<std::fs::File> = roots
            .iter()
            .map(|r| std::fs::File::open(r).unwrap())
            .collect();
        let root = |i: usize| std::os::fd::AsFd::as_fd(&handles[i]);
        for i in 0..roots.len() {
            rec.attach(i, write(root(i), &rec.render_for(i), true).unwrap());
        }
        let intent = rec.note(&[(Path::new("x"), true), (Path::new("y"), true)]);
        rec.write_ahead(&intent, 0).unwrap();
        rec.write_ahead(&intent, 0).unwrap();
        // Already recorded: nothing more to append anywhere.
        assert!(
            rec.note(&[(Path::new("x"), true)]).0.iter().all(|p| {
                p.done[0].load(Ordering::Relaxed) && !p.done[1].load(Ordering::Relaxed)
            })
        );
        rec.write_ahead(&intent, 1).unwrap();
        for (i, r) in roots.iter().enumerate() {
            let Loaded::Found(j) = read(root(i)) else {
                panic!("no journal in {}", r.display())
            };
            assert_eq!(j.len(), 2);
            assert_eq!(j, rec.snapshot());
        }
        // A failed append: that journal is emptied (reads as corrupt), the other goes on.
        let ro = std::fs::File::open(
            roots[1]
                .join(crate::rules::state::META_DIR)
                .join(JOURNAL_FILE),
        )
        .unwrap();
        rec.attach(1, ro);
        let next = rec.note(&[(Path::new("z"), false)]);
        rec.write_ahead(&next, 0).unwrap();
        assert!(rec.write_ahead(&next, 1).is_err());
        assert!(rec.is_broken(1) && !rec.is_broken(0));
        assert_eq!(read(root(0)), Loaded::Found(rec.snapshot()));
        std::fs::create_dir_all(dir.join("none")).unwrap();
        let none = std::fs::File::open(dir.join("none")).unwrap();
        assert!(matches!(
            read(std::os::fd::AsFd::as_fd(&none)),
            Loaded::Missing
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn coverage_needs_a_journal_started_before_the_target_left() {
        let lineage = [G1, G2, G3];
        let j = |start| Journal::new(header(start));
        // Compacted at G1 while the target was in; it left (G2, G3 followed).
        assert!(coverage(Some(&j(G1)), &lineage, Some((G1, true))).is_ok());
        // Started earlier still: fine.
        assert!(coverage(Some(&j(G1)), &lineage, Some((G2, true))).is_ok());
        // Started after it left (a lost journal recreated at mount): full compare.
        let e = coverage(Some(&j(G2)), &lineage, Some((G1, true))).unwrap_err();
        assert!(e.contains("after the replica left"), "{e}");
        // Out of service at its own generation: the journal must be older.
        assert!(coverage(Some(&j(G2)), &lineage, Some((G2, false))).is_err());
        assert!(coverage(Some(&j(G1)), &lineage, Some((G2, false))).is_ok());
        assert!(coverage(None, &lineage, Some((G1, true))).is_err());
        assert!(
            coverage(Some(&j(G1)), &lineage, Some((Gen::NONE, true)))
                .unwrap_err()
                .contains("never in sync")
        );
        assert!(coverage(Some(&j(G1)), &lineage, None).is_err());
        let far = Gen { number: 9, id: 9 };
        assert!(coverage(Some(&j(G1)), &lineage, Some((far, true))).is_err());
        assert!(coverage(Some(&j(far)), &lineage, Some((G1, true))).is_err());
    }
}
