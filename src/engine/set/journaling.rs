//! The journal of changed paths as the set drives it: write-ahead lines before each mutation,
//! the files open for writing, compaction, and the coverage check behind an incremental resync.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use super::{ReplicaJob, ReplicaSet};
use crate::engine::journal::{self, Recorder};
use crate::engine::replica::Replica;
use crate::rules::arbitrate::Outcome;
use crate::rules::state::Gen;
use crate::sys::Credentials;
use std::collections::HashMap;

/// Files open for writing (see [`ReplicaSet::writer_opened`]) and the next token id.
#[derive(Default)]
pub(super) struct OpenWriters {
    pub(super) files: HashMap<u64, Weak<dyn OpenWriter>>,
    pub(super) next: u64,
}

impl std::fmt::Debug for OpenWriters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} open for writing", self.files.len())
    }
}

/// A file open for writing, as the journal needs to know it.
pub trait OpenWriter: Send + Sync {
    /// Where it is now (None once unlinked: nothing left to heal by name).
    fn current_path(&self) -> Option<PathBuf>;
}

/// Held by each file open for writing (see [`ReplicaSet::writer_opened`]): while it is, every
/// compaction keeps the file's path in the journal, so a crash finds it there.
#[derive(Debug)]
pub struct WriterToken {
    set: Weak<ReplicaSet>,
    id: u64,
}

impl Drop for WriterToken {
    fn drop(&mut self) {
        if let Some(set) = self.set.upgrade() {
            set.writers().files.remove(&self.id);
        }
    }
}

/// The paths a mutation touches, as (path, whole subtree): both names of a rename, with
/// their subtrees; the one path of anything else (a link's two names, each alone).
pub(super) fn touched<'a>(
    op: &str,
    path: &'a Path,
    also: Option<&'a Path>,
) -> Vec<(&'a Path, bool)> {
    let recursive = op == "rename";
    std::iter::once(path)
        .chain(also)
        .map(|p| (p, recursive))
        .collect()
}

impl ReplicaSet {
    /// `job` preceded, on each replica, by the journal lines recording the paths it touches
    /// (write-ahead: a crash or a take-out after the mutation always finds them there).
    pub(super) fn journaled<T: Send + 'static>(
        &self,
        op: &str,
        path: &Path,
        also: Option<&Path>,
        job: ReplicaJob<T>,
    ) -> ReplicaJob<T> {
        let Some(rec) = self.journal.get() else {
            return job;
        };
        let intent = rec.note(&touched(op, path, also));
        let rec = Arc::clone(rec);
        Arc::new(move |r: &Replica| {
            if let Err(e) = rec.write_ahead(&intent, r.index) {
                log::error!(
                    "replica {}: {e}; a resync from it will compare whole trees until the \
                     journal is rewritten",
                    r.path.display()
                );
            }
            job(r)
        })
    }

    /// `file` was opened for writing: until the token is dropped, every compaction keeps its
    /// path in the journal (crash recovery heals it if the daemon dies meanwhile).
    pub fn writer_opened(&self, file: Weak<dyn OpenWriter>) -> WriterToken {
        if self.journal.get().is_none() {
            return WriterToken {
                set: Weak::new(),
                id: 0,
            };
        }
        let mut writers = self.writers();
        writers.next += 1;
        let id = writers.next;
        writers.files.insert(id, file);
        WriterToken {
            set: self.this.clone(),
            id,
        }
    }

    /// The current paths of the files open for writing.
    pub(super) fn open_writer_paths(&self) -> Vec<PathBuf> {
        let files: Vec<Arc<dyn OpenWriter>> = self
            .writers()
            .files
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        // Read, and let go of, outside the registry's lock: a last reference dropped here
        // removes its own entry.
        files.iter().filter_map(|f| f.current_path()).collect()
    }

    /// Compacts the journal when nothing needs its paths any more: every replica in service,
    /// no mutation in flight (the write barrier is free), at most about once a second; the
    /// paths of files still open for writing are kept. Called after mutations and once a
    /// second by the daemon's health thread (so an idle mount's journal empties).
    pub fn maybe_compact(&self) {
        let Some(rec) = self.journal.get() else {
            return;
        };
        let all_in = || self.priority_order().len() == self.replica_members();
        if !rec.wants_compaction() || !all_in() {
            return;
        }
        let Ok(_barrier) = self.barrier.try_write() else {
            return;
        };
        if !rec.wants_compaction() || !all_in() {
            return;
        }
        let start = self
            .membership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|m| m.generation);
        let Some(start) = start else {
            return;
        };
        rec.compact(start, &self.open_writer_paths());
        // Every member is in service (a replica that left is not written).
        let all = self.priority_order();
        self.write_journals(rec, &all, false);
    }

    /// Writes the journal whole to each of `targets` (fsynced if `durable`) and appends to
    /// the new files from then on; a replica where that fails keeps no trusted journal.
    /// Called with no mutation in flight (mount, write barrier).
    pub(super) fn write_journals(&self, rec: &Arc<Recorder>, targets: &[usize], durable: bool) {
        if !self.may_write() {
            return;
        }
        let data: Arc<Vec<Option<Vec<u8>>>> = Arc::new(
            (0..self.replicas.len())
                .map(|i| targets.contains(&i).then(|| rec.render_for(i)))
                .collect(),
        );
        let job: ReplicaJob<std::fs::File> = Arc::new(move |r: &Replica| {
            journal::write(
                r.root()?,
                data[r.index].as_deref().unwrap_or_default(),
                durable,
            )
        });
        for (i, outcome) in self.run(targets, &Credentials::root(), &job) {
            let Some(what) = self.failure_words(&outcome) else {
                if let Outcome::Done(f) = outcome {
                    rec.attach(i, f);
                }
                continue;
            };
            rec.detach(i);
            log::error!(
                "cannot write the journal of replica {}: {what}; a resync from it will compare \
                 whole trees",
                self.replicas[i].path.display()
            );
        }
    }

    /// Replica `index` is coming back in service: its journal is rewritten from the running
    /// one (it missed the appends while out). Called under the write barrier.
    pub(super) fn rejoin_journal(&self, index: usize) {
        if let Some(rec) = self.journal.get() {
            self.write_journals(rec, &[index], false);
        }
    }

    /// The first pass of a resync of `target` from `source`: the journaled paths when the
    /// source's journal covers everything the target missed (`target_gen`: its recorded
    /// generation and whether it was in service at it), else Err with the reason for a full
    /// tree compare. Called under the write barrier, as the run starts recording.
    pub(super) fn journal_plan(
        &self,
        source: usize,
        target_gen: Option<(Gen, bool)>,
    ) -> Result<BTreeMap<PathBuf, bool>, String> {
        let rec = self
            .journal
            .get()
            .ok_or("no journal (the set keeps no state)")?;
        if rec.is_broken(source) {
            return Err("the source's journal lost records (a failed write)".into());
        }
        let lineage: Vec<Gen> = self
            .membership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|m| m.history.iter().copied().chain([m.generation]).collect())
            .unwrap_or_default();
        let j = rec.snapshot();
        journal::coverage(Some(&j), &lineage, target_gen)?;
        Ok(j.paths())
    }

    /// Records the paths a mutation touches in the running resync's dirty set (before the
    /// mutation runs: the resync's next pass copies them again).
    pub(super) fn note_dirty(&self, op: &str, path: &Path, also: Option<&Path>) {
        let run = self.current_resync();
        // A run that ended records nothing (its dirty set is gone).
        if let Some(run) = run {
            for (p, recursive) in touched(op, path, also) {
                run.note(p, recursive);
            }
        }
    }
}
