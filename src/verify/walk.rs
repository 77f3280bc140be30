//! The walk ([`verify`]): every path of the compared replicas, depth first in name order, read
//! through each replica's own worker threads, one directory (or one batch of entries, or one
//! chunk of file content) per job, each job bounded by the replica deadline: a hung replica
//! ends the verify with an error naming it, it never holds the caller. Paths that differed are
//! compared once more at the end (the recheck), so a path changed through the mount while the
//! walk passed it is not reported when it agrees now.
//!
//! It touches the replicas (read-only, as root, through `resync`'s readers so entries are read
//! exactly as the resync compares them) and the engine's [`Replica`] workers; the comparison
//! and the report are `compare.rs` and `report.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::compare::{Entry, Side, compare, content_difference, first_mismatch};
use crate::engine::replica::Replica;
use crate::resync::{self, Meta};
use crate::rules::state::META_DIR;
use crate::sys::{self, Credentials};
use crate::view::report::{Compared, Difference, MAX_DIFFERENCES, Report};
use crate::view::words::describe_errno;

/// Entries examined per job: large enough to keep the hand-offs cheap, small enough that a
/// huge directory on a slow network replica stays well within the deadline.
const BATCH: usize = 256;
/// File content compared per job, for the same reason.
const CHUNK: usize = 1 << 20;

/// The path inside the mount, as reported.
fn shown(rel: &Path) -> String {
    format!("/{}", rel.display())
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
            let entries = match sys::read_dir_all(r.root()?, &sys::rel_cstr(&dir)?) {
                Err(e) if resync::gone(&e) => Vec::new(),
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
        let raw = self.read_entries(dir, Arc::clone(&paths))?;
        let mut dirs = Vec::new();
        for (i, rel) in paths.iter().enumerate() {
            let entries = self.entries(&raw, i, &shown(rel));
            if self.check_path(rel, &entries)? {
                dirs.push(rel.clone());
            }
        }
        Ok(dirs)
    }

    /// Reads `paths` (entries of directory `dir`) on every replica: per replica, per path,
    /// its metadata and xattrs (None where it is missing or vanished under the walk).
    fn read_entries(&self, dir: &Path, paths: Arc<Vec<PathBuf>>) -> Result<Vec<Vec<Raw>>, String> {
        let job: Job<Vec<Raw>> = Arc::new(move |r: &Replica| {
            paths
                .iter()
                .map(|p| match resync::stat_of(r.root()?, p)? {
                    Some(m) => match resync::xattrs_of(r.root()?, p) {
                        Ok(x) => Ok(Some((m, x))),
                        Err(e) if resync::gone(&e) => Ok(None),
                        Err(e) => Err(e),
                    },
                    None => Ok(None),
                })
                .collect()
        });
        self.on_each("examine the entries of", dir, job)
    }

    /// Each replica's [`Entry`] for path number `i` of `raw`, shown as `path`: a regular file
    /// with several links notes the first path of the walk naming its inode on that replica.
    fn entries(&mut self, raw: &[Vec<Raw>], i: usize, path: &str) -> Vec<Option<Entry>> {
        raw.iter()
            .enumerate()
            .map(|(pos, per_replica)| {
                per_replica[i].clone().map(|(meta, xattrs)| {
                    let first_link = meta.hard_linked().then(|| {
                        self.links[pos]
                            .entry(meta.ino)
                            .or_insert_with(|| path.to_owned())
                            .clone()
                    });
                    Entry {
                        meta,
                        xattrs,
                        first_link,
                    }
                })
            })
            .collect()
    }

    /// Compares one path's `entries` (one per replica), its bytes too when asked and they can
    /// differ unseen, and counts it in the report; true when it is a directory everywhere.
    fn check_path(&mut self, rel: &Path, entries: &[Option<Entry>]) -> Result<bool, String> {
        let path = shown(rel);
        let sides: Vec<Side<'_>> = self
            .replicas
            .iter()
            .zip(&self.names)
            .zip(entries)
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
            d.rel = rel.to_path_buf(); // exact, whatever the name's encoding
        }
        self.record(diffs);
        Ok(kinds.iter().all(|k| *k == Some(libc::S_IFDIR)))
    }

    /// Counts one compared path and its differences; keeps the first [`MAX_DIFFERENCES`].
    fn record(&mut self, diffs: Vec<Difference>) {
        let r = &mut self.report;
        r.paths += 1;
        if !diffs.is_empty() {
            r.differing_paths += 1;
            r.difference_count += diffs.len() as u64;
            let room = MAX_DIFFERENCES.saturating_sub(r.differences.len());
            r.differences.extend(diffs.into_iter().take(room));
        }
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
                let fd = resync::open_to_read(r.root()?, &sys::rel_cstr(&file)?);
                match fd {
                    Ok(fd) => sys::pread_full(fd.as_fd(), CHUNK, offset).map(Some),
                    Err(e) if resync::gone(&e) => Ok(None),
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
