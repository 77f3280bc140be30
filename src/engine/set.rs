//! The replica set: fans mutations out to every in-service replica in parallel with a deadline,
//! arbitrates the outcomes, serves reads with fail-over, and takes failing replicas out of
//! service with one alert line each.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::engine::journal::{self, Journal, Recorder};
use crate::engine::replica::{Replica, ServiceStatus, now};
use crate::resync::{self, Engine, Run};
use crate::rules::arbitrate::{Fault, Outcome, arbitrate, is_replica_fault};
use crate::rules::auto_resync::{AutoResync, Verdict};
use crate::rules::select::{self, Candidate};
use crate::rules::state::{self, Gen, Membership};
use crate::sys::{self, Credentials};
use crate::view::snapshot::{ControlHandler, ReplicaState, Snapshot};
use crate::view::words::{ALERT_TARGET, describe_errno, no_answer_within};

/// Work to run on each replica: gets the replica, returns a value or an I/O error.
pub type ReplicaJob<T> = Arc<dyn Fn(&Replica) -> io::Result<T> + Send + Sync>;

/// The replicas of one mount and the rules that keep them identical.
#[derive(Debug)]
pub struct ReplicaSet {
    replicas: Vec<Arc<Replica>>,
    timeout: Duration,
    mountpoint: String,
    /// The durable membership (generation) written to the in-service replicas at every
    /// change; None for a set without on-disk state (unit tests).
    membership: Mutex<Option<Membership>>,
    /// Itself, for the resync thread (empty for a set not made by [`ReplicaSet::shared`]).
    this: Weak<ReplicaSet>,
    /// Every mutation holds it shared; a resync's last pass holds it alone (the write
    /// barrier), so no mutation is in flight while the target catches up and joins.
    barrier: RwLock<()>,
    /// The running or last resync.
    resync: Mutex<Option<Arc<Run>>>,
    /// Replicas a mutation needs in service (`--quorum`; off by default).
    quorum: crate::rules::quorum::Quorum,
    /// Default limit on a resync's content copy, bytes per second (0: none).
    resync_rate: std::sync::atomic::AtomicU64,
    /// What the health check remembers between rounds about resyncs and stale replicas.
    ops: Mutex<Ops>,
    /// The durable journal of changed paths (`journal.rs`), set up at mount by
    /// [`ReplicaSet::start_journal`]; unset for a set without on-disk state (unit tests).
    journal: OnceLock<Arc<Recorder>>,
    /// Files open for writing, by token id: a compaction keeps their paths in the journal.
    open_writers: Mutex<OpenWriters>,
}

/// Files open for writing (see [`ReplicaSet::writer_opened`]) and the next token id.
#[derive(Default)]
struct OpenWriters {
    files: HashMap<u64, Weak<dyn OpenWriter>>,
    next: u64,
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

/// The health check's memory for resync operations: the automatic-resync policy of each
/// replica, which stale replicas were already logged, which run's end was already counted and
/// the last progress milestone logged.
#[derive(Debug, Default)]
struct Ops {
    /// `--auto-resync` is on.
    auto_enabled: bool,
    /// Per replica, by index.
    auto: Vec<AutoResync>,
    /// Per replica: its going stale was logged.
    stale_logged: Vec<bool>,
    /// Address of the last run whose end was accounted for.
    counted: usize,
    /// (run address, phase, milestone) last logged.
    milestone: (usize, String, u64),
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
fn touched<'a>(op: &str, path: &'a Path, also: Option<&'a Path>) -> Vec<(&'a Path, bool)> {
    let recursive = op == "rename";
    std::iter::once(path)
        .chain(also)
        .map(|p| (p, recursive))
        .collect()
}

fn describe_fault(fault: Fault, timeout: Duration) -> String {
    match fault {
        Fault::Errno(e) => describe_errno(e),
        Fault::TimedOut => no_answer_within(timeout),
    }
}

/// The path inside the mount, for log lines.
fn shown(path: &Path) -> String {
    format!("/{}", path.display())
}

impl ReplicaSet {
    /// A set over already opened replicas.
    pub fn new(replicas: Vec<Arc<Replica>>, timeout: Duration, mountpoint: String) -> Self {
        let n = replicas.len();
        ReplicaSet {
            replicas,
            timeout,
            mountpoint,
            membership: Mutex::new(None),
            this: Weak::new(),
            barrier: RwLock::new(()),
            resync: Mutex::new(None),
            resync_rate: Default::default(),
            ops: Mutex::new(Ops {
                auto: vec![AutoResync::default(); n],
                stale_logged: vec![false; n],
                ..Ops::default()
            }),
            quorum: Default::default(),
            journal: OnceLock::new(),
            open_writers: Mutex::default(),
        }
    }

    fn writers(&self) -> std::sync::MutexGuard<'_, OpenWriters> {
        self.open_writers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Turns on `--auto-resync`: the health check resyncs a returning replica by itself.
    pub fn enable_auto_resync(&self) {
        self.ops().auto_enabled = true;
    }

    fn ops(&self) -> std::sync::MutexGuard<'_, Ops> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the default limit on a resync's content copy (`--resync-rate`; 0: none).
    pub fn set_resync_rate(&self, bytes_per_sec: u64) {
        self.resync_rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// The set with a quorum (`--quorum`): mutations are refused with EROFS while fewer
    /// replicas are in service (see `quorum.rs`).
    pub fn with_quorum(self, quorum: crate::rules::quorum::Quorum) -> Self {
        ReplicaSet { quorum, ..self }
    }

    /// The set behind an `Arc`, able to run resyncs on a thread of their own.
    pub fn shared(self) -> Arc<Self> {
        Arc::new_cyclic(move |this| ReplicaSet {
            this: this.clone(),
            ..self
        })
    }

    /// From now on, every membership change is written to the in-service replicas' state
    /// files before it takes effect for callers.
    pub fn install_membership(&self, membership: Membership) {
        *self.membership.lock().unwrap_or_else(|e| e.into_inner()) = Some(membership);
    }

    /// Writes the current membership to the in-service replicas if it changed since the last
    /// write (a generation bump). Serialized: a caller that finds a write in progress waits for
    /// it, so no mutation is acknowledged while the state still names a replica that missed it.
    /// A replica that cannot store its state is taken out (and the others written again).
    pub fn persist_membership(&self) {
        let mut guard = self.membership.lock().unwrap_or_else(|e| e.into_inner());
        let Some(m) = guard.as_mut() else {
            return;
        };
        for _ in 0..=self.replicas.len() {
            let mut targets = self.priority_order();
            targets.sort_unstable();
            if !m.change(&targets, state::random_id()) {
                return;
            }
            log::warn!(
                "replica set membership of {}: generation {}, {} of {} replicas in service",
                self.mountpoint,
                m.generation.number,
                targets.len(),
                self.replicas.len()
            );
            if !self.write_records(m, &targets, false) {
                return;
            }
        }
    }

    /// Writes `m` as the state of each of `targets`; takes out those that fail while others
    /// succeed. Returns true when something was taken out (the membership must change again).
    fn write_records(&self, m: &Membership, targets: &[usize], clean: bool) -> bool {
        let records: Arc<Vec<_>> = Arc::new(
            (0..self.replicas.len())
                .map(|i| m.record(i, clean, now()))
                .collect(),
        );
        let job: ReplicaJob<()> =
            Arc::new(move |r: &Replica| state::write_record(&r.path, &records[r.index]));
        let results = self.run(targets, &Credentials::root(), &job);
        let ok = results
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Done(_)))
            .count();
        let mut took_out = false;
        for (index, outcome) in results {
            let what = match outcome {
                Outcome::Done(()) => continue,
                Outcome::Failed(e) => describe_errno(e),
                Outcome::TimedOut => describe_fault(Fault::TimedOut, self.timeout),
            };
            let path = self.replicas[index].path.display().to_string();
            log::error!("cannot write the chironfs state of {path}: {what}");
            if ok > 0 && !clean {
                took_out |= self.take_out_status(
                    index,
                    format!("cannot write its {} state: {what}", state::META_DIR),
                    true,
                );
            }
        }
        took_out
    }

    /// At a clean unmount: records the clean shutdown in the in-service replicas' state.
    pub fn write_clean_shutdown(&self) {
        let guard = self.membership.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = guard.as_ref() {
            let mut targets = self.priority_order();
            targets.sort_unstable();
            // Only if the recorded membership is the current one: never mark clean a state
            // that still names a replica now out.
            let ids: Vec<u64> = targets.iter().map(|&i| m.ids[i]).collect();
            let mut sorted_ids = ids.clone();
            sorted_ids.sort_unstable();
            if sorted_ids == m.in_service {
                // The journal first: a clean state vouches for it after a reboot.
                if let Some(rec) = self.journal.get() {
                    let rec = Arc::clone(rec);
                    let job: ReplicaJob<()> = Arc::new(move |r: &Replica| rec.sync(r.index));
                    self.run(&targets, &Credentials::root(), &job);
                }
                self.write_records(m, &targets, true);
            }
        }
    }

    /// All replicas, in command-line order.
    pub fn replicas(&self) -> &[Arc<Replica>] {
        &self.replicas
    }

    fn candidates(&self) -> Vec<Candidate> {
        self.replicas
            .iter()
            .map(|r| Candidate {
                index: r.index,
                low_priority: r.low_priority,
                readable: r.is_in_service(),
            })
            .collect()
    }

    /// In-service replicas in priority order (metadata source first).
    pub fn priority_order(&self) -> Vec<usize> {
        select::priority_order(&self.candidates())
    }

    /// Fail-over order for a newly opened file's data, spread by `ticket`.
    pub fn data_order(&self, ticket: usize) -> Vec<usize> {
        select::data_order(&self.candidates(), ticket)
    }

    /// Runs `job` on each of `targets` in parallel, under `creds`, and collects the outcomes
    /// in the order of `targets`. A replica that has not answered by the deadline is TimedOut;
    /// its worker goes on alone and its late answer is dropped.
    pub fn run<T: Send + 'static>(
        &self,
        targets: &[usize],
        creds: &Credentials,
        job: &ReplicaJob<T>,
    ) -> Vec<(usize, Outcome<T>)> {
        self.run_checked(targets, creds, job, false)
            .into_iter()
            .map(|(i, o, _)| (i, o))
            .collect()
    }

    /// [`ReplicaSet::run`], plus, for a replica whose job failed with ENOENT or ESTALE, what is
    /// wrong with its root if anything (checked on the replica's own worker, right after the
    /// failure: a deleted replica directory answers ENOENT to everything).
    ///
    /// Local replicas run their jobs on the calling thread, one after the other: a hand-off to
    /// a worker costs more than a small job. With `spread` (a job moving much data) only the
    /// first local replica does, and the others copy in parallel on their workers.
    fn run_checked<T: Send + 'static>(
        &self,
        targets: &[usize],
        creds: &Credentials,
        job: &ReplicaJob<T>,
        spread: bool,
    ) -> Vec<(usize, Outcome<T>, Option<String>)> {
        type Answer<T> = (usize, io::Result<T>, Option<String>);
        fn answer<T>(replica: &Replica, creds: &Credentials, job: &ReplicaJob<T>) -> Answer<T> {
            let result = sys::set_thread_credentials(creds).and_then(|()| job(replica));
            let root_problem = match &result {
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESTALE)) => {
                    replica.check_root().err()
                }
                _ => None,
            };
            (replica.index, result, root_problem)
        }
        fn outcome<T>(result: io::Result<T>) -> Outcome<T> {
            match result {
                Ok(v) => Outcome::Done(v),
                Err(e) => Outcome::Failed(e.raw_os_error().unwrap_or(libc::EIO)),
            }
        }
        // Local replicas' jobs run here, on the calling thread, after the others were queued
        // (they run in parallel meanwhile); network replicas always use their workers.
        let inline: Vec<usize> = targets
            .iter()
            .copied()
            .filter(|&i| self.replicas[i].is_local())
            .take(if spread { 1 } else { usize::MAX })
            .collect();
        if inline.len() == targets.len() {
            // Nothing to wait for (the common case on local disks): no channel.
            return inline
                .into_iter()
                .map(|i| {
                    let (_, result, problem) = answer(&self.replicas[i], creds, job);
                    (i, outcome(result), problem)
                })
                .collect();
        }
        let (tx, rx) = mpsc::channel::<Answer<T>>();
        for &index in targets.iter().filter(|&i| !inline.contains(i)) {
            let replica = Arc::clone(&self.replicas[index]);
            let job = Arc::clone(job);
            let tx = tx.clone();
            let creds = creds.clone();
            self.replicas[index].submit(Box::new(move || {
                let _ = tx.send(answer(&replica, &creds, &job));
            }));
        }
        for index in inline {
            let _ = tx.send(answer(&self.replicas[index], creds, job));
        }
        drop(tx);
        let deadline = Instant::now() + self.timeout;
        let mut got: Vec<Option<(Outcome<T>, Option<String>)>> =
            targets.iter().map(|_| None).collect();
        let mut missing = targets.len();
        while missing > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((index, result, root_problem)) => {
                    if let Some(pos) = targets.iter().position(|&t| t == index) {
                        got[pos] = Some((outcome(result), root_problem));
                        missing -= 1;
                    }
                }
                Err(_) => break,
            }
        }
        targets
            .iter()
            .zip(got)
            .map(|(&i, o)| match o {
                Some((outcome, problem)) => (i, outcome, problem),
                None => (i, Outcome::TimedOut, None),
            })
            .collect()
    }

    /// Applies a mutation to every in-service replica and answers when all have answered
    /// (or the deadline passed). Replicas at fault are taken out; replicas already out are
    /// marked stale because they miss this change.
    pub fn mutate<T: Send + 'static>(
        &self,
        op: &str,
        path: &Path,
        creds: &Credentials,
        job: ReplicaJob<T>,
    ) -> Result<T, i32> {
        self.mutate_with(op, path, None, creds, job, false)
    }

    /// [`ReplicaSet::mutate`] of a job that moves much data (a large write): the replicas
    /// copy in parallel rather than one after the other on the calling thread.
    pub fn mutate_bulk<T: Send + 'static>(
        &self,
        op: &str,
        path: &Path,
        creds: &Credentials,
        job: ReplicaJob<T>,
    ) -> Result<T, i32> {
        self.mutate_with(op, path, None, creds, job, true)
    }

    /// [`ReplicaSet::mutate`] of an operation that also touches `also` (a rename's
    /// destination): a running resync records both paths.
    pub fn mutate_paths<T: Send + 'static>(
        &self,
        op: &str,
        path: &Path,
        also: Option<&Path>,
        creds: &Credentials,
        job: ReplicaJob<T>,
    ) -> Result<T, i32> {
        self.mutate_with(op, path, also, creds, job, false)
    }

    fn mutate_with<T: Send + 'static>(
        &self,
        op: &str,
        path: &Path,
        also: Option<&Path>,
        creds: &Credentials,
        job: ReplicaJob<T>,
        spread: bool,
    ) -> Result<T, i32> {
        let barrier = self.barrier.read().unwrap_or_else(|e| e.into_inner());
        self.note_dirty(op, path, also);
        let job = self.journaled(op, path, also, job);
        let targets = self.priority_order();
        self.quorum.admit(op, targets.len())?;
        if targets.is_empty() {
            return Err(libc::EIO);
        }
        let checked = self.run_checked(&targets, creds, &job, spread);
        let mut root_problems: Vec<(usize, String)> = Vec::new();
        let results: Vec<(usize, Outcome<T>)> = checked
            .into_iter()
            .map(|(i, o, problem)| {
                if let Some(p) = problem {
                    root_problems.push((i, p));
                }
                (i, o)
            })
            .collect();
        let verdict = arbitrate(results);
        let blamed: Vec<usize> = verdict.at_fault.iter().map(|(i, _)| *i).collect();
        for &index in &targets {
            if !blamed.contains(&index) && verdict.answer.is_ok() {
                self.replicas[index].writes.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (index, fault) in verdict.at_fault {
            let problem = root_problems
                .iter()
                .find(|(i, _)| *i == index)
                .map(|(_, p)| p.as_str());
            self.take_out_with(index, op, path, fault, problem, true);
        }
        if verdict.answer.is_ok() {
            for r in &self.replicas {
                if !targets.contains(&r.index) {
                    r.update_status(|s| s.missed_mutation());
                }
            }
            if targets.len() < self.replicas.len() {
                // Acknowledged only once the state on disk says who missed it.
                self.persist_membership();
            }
        }
        drop(barrier);
        self.maybe_compact();
        verdict.answer
    }

    /// `job` preceded, on each replica, by the journal lines recording the paths it touches
    /// (write-ahead: a crash or a take-out after the mutation always finds them there).
    fn journaled<T: Send + 'static>(
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
    fn open_writer_paths(&self) -> Vec<PathBuf> {
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
        let all_in = || self.priority_order().len() == self.replicas.len();
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
        let all: Vec<usize> = (0..self.replicas.len()).collect();
        self.write_journals(rec, &all, false);
    }

    /// Writes the journal whole to each of `targets` (fsynced if `durable`) and appends to
    /// the new files from then on; a replica where that fails keeps no trusted journal.
    /// Called with no mutation in flight (mount, write barrier).
    fn write_journals(&self, rec: &Arc<Recorder>, targets: &[usize], durable: bool) {
        let data: Arc<Vec<Option<Vec<u8>>>> = Arc::new(
            (0..self.replicas.len())
                .map(|i| targets.contains(&i).then(|| rec.render_for(i)))
                .collect(),
        );
        let job: ReplicaJob<std::fs::File> = Arc::new(move |r: &Replica| {
            journal::write(
                &r.path,
                data[r.index].as_deref().unwrap_or_default(),
                durable,
            )
        });
        for (i, outcome) in self.run(targets, &Credentials::root(), &job) {
            let what = match outcome {
                Outcome::Done(f) => {
                    rec.attach(i, f);
                    continue;
                }
                Outcome::Failed(e) => describe_errno(e),
                Outcome::TimedOut => describe_fault(Fault::TimedOut, self.timeout),
            };
            rec.detach(i);
            log::error!(
                "cannot write the journal of replica {}: {what}; a resync from it will compare \
                 whole trees",
                self.replicas[i].path.display()
            );
        }
    }

    /// At mount, after [`ReplicaSet::install_membership`]: loads the journal of the first
    /// in-service replica (a missing, corrupt or untrusted one is replaced by an empty one
    /// starting now), heals the journaled paths across the in-service replicas if the last
    /// shutdown was `unclean` (crash recovery), then writes the journal to every in-service
    /// replica and records from then on, capped at `max_bytes`. `in_flight_unknown`: the
    /// replicas in service at an unclean shutdown that are not now (see
    /// [`state::Plan::in_flight_unknown`]); the journal is then started afresh, so that their
    /// resync compares whole trees.
    pub fn start_journal(&self, unclean: bool, in_flight_unknown: &[usize], max_bytes: u64) {
        let info = self
            .membership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|m| (m.set_id, m.generation));
        let Some((set_id, generation)) = info else {
            return;
        };
        let order = self.priority_order();
        let Some(&first) = order.first() else {
            return;
        };
        let read: ReplicaJob<journal::Loaded> = Arc::new(|r: &Replica| Ok(journal::read(&r.path)));
        let boot = journal::boot_id();
        let trusted: Vec<(usize, Result<Journal, String>)> = self
            .run(&order, &Credentials::root(), &read)
            .into_iter()
            .map(|(i, outcome)| {
                let j = match outcome {
                    Outcome::Done(journal::Loaded::Found(j)) => {
                        j.trusted_after(set_id, !unclean, &boot).map(|()| j)
                    }
                    Outcome::Done(journal::Loaded::Missing) => Err("it has none".into()),
                    Outcome::Done(journal::Loaded::Corrupt(why)) => Err(why),
                    Outcome::Failed(e) => Err(format!("cannot read it: {}", describe_errno(e))),
                    Outcome::TimedOut => Err("cannot read it: no answer (hung?)".into()),
                };
                (i, j)
            })
            .collect();
        if unclean {
            self.recover_crash(&order, &trusted);
        }
        let first_journal = if in_flight_unknown.is_empty() {
            trusted
                .iter()
                .find(|(i, _)| *i == first)
                .map(|(_, j)| j.clone())
                .unwrap_or_else(|| Err("it has none".into()))
        } else {
            let names: Vec<String> = in_flight_unknown
                .iter()
                .map(|&i| self.replicas[i].path.display().to_string())
                .collect();
            Err(format!(
                "not continued: {} served when the daemon died and cannot serve now, so what \
                 was in flight there is unknown",
                names.join(", ")
            ))
        };
        let mut journal = match first_journal {
            Ok(j) => j,
            Err(why) => {
                // Routine for a new set (or all replicas in service): only a replica out of
                // service now loses anything (its resync compares whole trees).
                let level = if order.len() < self.replicas.len() {
                    log::Level::Warn
                } else {
                    log::Level::Info
                };
                log::log!(
                    level,
                    "journal of {}: {why}; recording starts afresh at generation {} (a replica \
                     out of service now is resynced with a full tree compare)",
                    self.replicas[first].path.display(),
                    generation.number
                );
                Journal::new(journal::Header {
                    set_id,
                    start: generation,
                    boot: boot.clone(),
                })
            }
        };
        journal.header.boot = boot;
        let rec = Arc::new(Recorder::new(journal, self.replicas.len(), max_bytes));
        if self.journal.set(Arc::clone(&rec)).is_err() {
            return;
        }
        self.write_journals(&rec, &order, true);
    }

    /// Crash recovery, before the mount serves: every path in the in-service replicas'
    /// journals (files open for writing, mutations in flight when the daemon died) is copied
    /// from the first in-service replica to the others; without a trusted journal on each,
    /// whole trees are compared. A replica that cannot be healed is taken out (stale).
    fn recover_crash(&self, order: &[usize], trusted: &[(usize, Result<Journal, String>)]) {
        let src = order[0];
        let names = |i: usize| self.replicas[i].path.display().to_string();
        let mut paths: BTreeMap<PathBuf, bool> = BTreeMap::new();
        let mut full: Option<String> = None;
        for (i, j) in trusted {
            match j {
                Ok(j) if !j.overflowed => {
                    for (p, r) in j.paths() {
                        *paths.entry(p).or_insert(false) |= r;
                    }
                }
                Ok(_) => full = Some(format!("the journal of {} overflowed", names(*i))),
                Err(why) => full = Some(format!("journal of {}: {why}", names(*i))),
            }
        }
        if order.len() < 2 {
            log::warn!(
                "crash recovery: the last shutdown was not clean; only {} is in service, nothing \
                 to heal",
                names(src)
            );
            return;
        }
        match &full {
            None => log::warn!(
                "crash recovery: the last shutdown was not clean; healing {} journaled paths \
                 from {}",
                paths.len(),
                names(src)
            ),
            Some(why) => log::warn!(
                "crash recovery: the last shutdown was not clean; comparing whole trees with {} \
                 ({why})",
                names(src)
            ),
        }
        let paths = Arc::new(paths);
        for &dst in &order[1..] {
            let progress = Arc::new(resync::Progress::default());
            let mut engine = Engine::new(
                Arc::clone(&self.replicas[src]),
                Arc::clone(&self.replicas[dst]),
                Arc::clone(&progress),
                Arc::default(),
            );
            engine.set_tolerant(false);
            let (paths, whole) = (Arc::clone(&paths), full.is_some());
            // The walk recurses once per directory level: a thread with a big stack.
            let healed = std::thread::Builder::new()
                .name("crash-recovery".into())
                .stack_size(64 << 20)
                .spawn(move || {
                    let r = if whole {
                        engine.sync_all()
                    } else {
                        engine.sync_dirty(&paths).and_then(|()| {
                            if engine.hard_links_seen() {
                                engine.sync_all()
                            } else {
                                Ok(())
                            }
                        })
                    };
                    r.map(|()| engine.take_fixed()).map_err(|e| {
                        format!(
                            "{} on the {}: {}",
                            shown(&e.path),
                            match e.side {
                                resync::Side::Source => "source",
                                resync::Side::Target => "target",
                            },
                            describe_errno(e.err.raw_os_error().unwrap_or(libc::EIO))
                        )
                    })
                })
                .map_err(|e| format!("cannot start the recovery thread: {e}"))
                .and_then(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err("the recovery panicked".into()))
                });
            match healed {
                Ok(fixed) if fixed.is_empty() => log::info!(
                    "crash recovery: {} already agreed with {}",
                    names(dst),
                    names(src)
                ),
                Ok(fixed) => {
                    let total = progress.files.load(Ordering::Relaxed) as usize;
                    let mut list: Vec<String> = fixed.iter().take(20).map(|p| shown(p)).collect();
                    if total > list.len() {
                        list.push(format!("and {} more", total - list.len()));
                    }
                    log::warn!(
                        "crash recovery: healed {} entries of {} from {}: {}",
                        total,
                        names(dst),
                        names(src),
                        list.join(", ")
                    );
                }
                Err(e) => self.take_out_because(
                    dst,
                    format!("crash recovery from {} failed: {e}", names(src)),
                    true,
                ),
            }
        }
    }

    /// Replica `index` is coming back in service: its journal is rewritten from the running
    /// one (it missed the appends while out). Called under the write barrier.
    fn rejoin_journal(&self, index: usize) {
        if let Some(rec) = self.journal.get() {
            self.write_journals(rec, &[index], false);
        }
    }

    /// The first pass of a resync of `target` from `source`: the journaled paths when the
    /// source's journal covers everything the target missed (`target_gen`: its recorded
    /// generation and whether it was in service at it), else Err with the reason for a full
    /// tree compare. Called under the write barrier, as the run starts recording.
    fn journal_plan(
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

    /// The resync in progress, if any (a clone, so the lock is not held while it is used).
    fn current_resync(&self) -> Option<Arc<Run>> {
        self.resync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the paths a mutation touches in the running resync's dirty set (before the
    /// mutation runs: the resync's next pass copies them again).
    fn note_dirty(&self, op: &str, path: &Path, also: Option<&Path>) {
        let run = self.current_resync();
        // A run that ended records nothing (its dirty set is gone).
        if let Some(run) = run {
            for (p, recursive) in touched(op, path, also) {
                run.note(p, recursive);
            }
        }
    }

    /// Runs a read-type job on the first replica of `order` that can answer: a replica that
    /// fails with a fault errno (or ENOENT from a vanished root) or times out is skipped and the
    /// next one is tried; any other errno is the answer. Returns the serving replica's index
    /// with the value.
    ///
    /// Blame follows [`arbitrate`]: the skipped replicas are taken out only once another
    /// replica answered: a success blames them all; an errno answer blames those that timed
    /// out or whose root is gone. When nothing answers, the caller gets the first replica's
    /// errno and nobody is taken out: one bad file must not take the last replicas down.
    pub fn read<T: Send + 'static>(
        &self,
        op: &str,
        path: &Path,
        order: &[usize],
        creds: &Credentials,
        job: ReplicaJob<T>,
    ) -> Result<(usize, T), i32> {
        let mut skipped: Vec<(usize, Fault, Option<String>)> = Vec::new();
        let blame = |skipped: Vec<(usize, Fault, Option<String>)>, success: bool| {
            for (index, fault, problem) in skipped {
                if success || fault == Fault::TimedOut || problem.is_some() {
                    self.take_out_with(index, op, path, fault, problem.as_deref(), false);
                }
            }
        };
        for &index in order {
            if !self.replicas[index].is_in_service() {
                continue;
            }
            match self.run_checked(&[index], creds, &job, false).pop() {
                Some((_, Outcome::Done(v), _)) => {
                    self.replicas[index].reads.fetch_add(1, Ordering::Relaxed);
                    blame(skipped, true);
                    return Ok((index, v));
                }
                Some((_, Outcome::Failed(errno), problem)) => {
                    if !(is_replica_fault(errno) || problem.is_some()) {
                        blame(skipped, false);
                        return Err(errno);
                    }
                    skipped.push((index, Fault::Errno(errno), problem));
                }
                Some((_, Outcome::TimedOut, _)) | None => {
                    skipped.push((index, Fault::TimedOut, None));
                }
            }
        }
        Err(skipped
            .iter()
            .find_map(|(_, fault, _)| match fault {
                Fault::Errno(e) => Some(*e),
                Fault::TimedOut => None,
            })
            .unwrap_or(libc::EIO))
    }

    /// Takes a replica out of service after `op` on `path` failed there, with an alert line.
    pub fn take_out(&self, index: usize, op: &str, path: &Path, fault: Fault, missed_write: bool) {
        self.take_out_with(index, op, path, fault, None, missed_write);
    }

    /// [`ReplicaSet::take_out`], saying what is wrong with the replica's root when known
    /// ("its directory was deleted"), so the alert explains an ENOENT.
    fn take_out_with(
        &self,
        index: usize,
        op: &str,
        path: &Path,
        fault: Fault,
        root_problem: Option<&str>,
        missed_write: bool,
    ) {
        let replica = &self.replicas[index];
        replica.errors.fetch_add(1, Ordering::Relaxed);
        let mut what = describe_fault(fault, self.timeout);
        if let Some(problem) = root_problem {
            what = format!("{what}: {problem}");
        }
        log::error!(
            "{op} failed accessing {} for {}: {what}",
            replica.path.display(),
            shown(path)
        );
        let reason = format!("{op} {} failed: {what}", shown(path));
        self.take_out_because(index, reason, missed_write);
    }

    /// Takes a replica out of service for `reason`, logging the state change at alert level,
    /// and records the new membership on the replicas still in service.
    pub fn take_out_because(&self, index: usize, reason: String, missed_write: bool) {
        if self.take_out_status(index, reason, missed_write) {
            self.persist_membership();
        }
    }

    /// [`ReplicaSet::take_out_because`] without writing the state; true if it changed.
    fn take_out_status(&self, index: usize, reason: String, missed_write: bool) -> bool {
        let replica = &self.replicas[index];
        let changed = replica.update_status(|s| s.take_out(reason.clone(), now(), missed_write));
        if changed {
            let left = self.priority_order().len();
            log::error!(
                target: ALERT_TARGET,
                "disabling replica {} (out of service): {reason}; {left} of {} replicas in service on {}",
                replica.path.display(),
                self.replicas.len(),
                self.mountpoint
            );
        }
        changed
    }

    /// Checks every in-service replica's root (vanished, unmounted, hung) on its own workers;
    /// called once a second by the health thread so an idle mount still notices a dead replica.
    /// Then the resync operations: stale replicas and resync milestones are logged, and with
    /// `--auto-resync` an out-of-service replica whose root answers again with this set's id
    /// is resynced (probed in the same round, under the same deadline).
    pub fn check_health(&self) {
        let targets = self.priority_order();
        let candidates = self.auto_resync_candidates();
        let all: Vec<usize> = targets.iter().chain(&candidates).copied().collect();
        let mut results = self.probe_with_set_id(&all, &candidates);
        let returning = results.split_off(targets.len());
        let results: Vec<Result<(), (String, bool)>> =
            results.into_iter().map(|r| r.map(drop)).collect();
        self.check_in_service(&targets, results);
        self.resync_operations(&candidates, returning);
    }

    fn check_in_service(&self, targets: &[usize], results: Vec<Result<(), (String, bool)>>) {
        let healthy = results.iter().filter(|r| r.is_ok()).count();
        for (index, result) in targets.iter().copied().zip(results) {
            let replica = &self.replicas[index];
            let (problem, root_gone) = match result {
                Ok(()) => {
                    if replica.health_failing.swap(false, Ordering::Relaxed) {
                        log::warn!("health check of {} passes again", replica.path.display());
                    }
                    continue;
                }
                Err(e) => e,
            };
            replica.errors.fetch_add(1, Ordering::Relaxed);
            // A vanished or unmounted root is out even if it is the last one (never serve an
            // empty directory); a hung or failing one stays while nothing else can serve, so
            // that the mount recovers by itself when the server comes back.
            if root_gone || healthy > 0 {
                self.take_out_because(index, format!("health check: {problem}"), false);
            } else if !replica.health_failing.swap(true, Ordering::Relaxed) {
                log::error!(
                    "health check of {} failed: {problem}; kept in service: no other replica can serve",
                    replica.path.display()
                );
            }
        }
    }

    /// Asks each of `targets`, on its own workers and within the deadline, whether its root is
    /// alive: a statfs (a real round trip to a network file server; a stat may be answered from
    /// a cache) and the check that the root is still the directory that was mounted. Returns
    /// each replica's problem in words.
    fn probe(&self, targets: &[usize]) -> Vec<Result<(), String>> {
        self.probe_detailed(targets)
            .into_iter()
            .map(|r| r.map_err(|(words, _)| words))
            .collect()
    }

    /// [`ReplicaSet::probe`], telling a root that is gone (deleted, unmounted: true) from one
    /// that fails or hangs (false).
    fn probe_detailed(&self, targets: &[usize]) -> Vec<Result<(), (String, bool)>> {
        self.probe_with_set_id(targets, &[])
            .into_iter()
            .map(|r| r.map(drop))
            .collect()
    }

    /// [`ReplicaSet::probe_detailed`], also reading the replica-set id recorded in the state of
    /// those of `targets` listed in `with_set_id` (None: no readable state), on the replica's
    /// own worker after its root answered.
    fn probe_with_set_id(
        &self,
        targets: &[usize],
        with_set_id: &[usize],
    ) -> Vec<Result<Option<u64>, (String, bool)>> {
        let with_set_id = with_set_id.to_vec();
        let probe: ReplicaJob<Result<Option<u64>, String>> = Arc::new(move |r: &Replica| {
            sys::statvfs(r.root())?;
            if let Err(problem) = r.check_root() {
                return Ok(Err(problem));
            }
            if !with_set_id.contains(&r.index) {
                return Ok(Ok(None));
            }
            Ok(Ok(match state::read_found(&r.path) {
                Ok(state::Found::Record(rec)) => Some(rec.set_id),
                _ => None,
            }))
        });
        self.run(targets, &Credentials::root(), &probe)
            .into_iter()
            .map(|(_, outcome)| match outcome {
                Outcome::Done(answer) => answer.map_err(|words| (words, true)),
                Outcome::Failed(e) => {
                    Err((format!("its root fails: {}", describe_errno(e)), false))
                }
                Outcome::TimedOut => Err((
                    format!("its root gave {}", no_answer_within(self.timeout)),
                    false,
                )),
            })
            .collect()
    }

    /// The out-of-service replicas the automatic resync wants probed this round: none when
    /// it is off or a resync is running (or a failed one is still stuck on a replica).
    fn auto_resync_candidates(&self) -> Vec<usize> {
        let busy = self
            .current_resync()
            .is_some_and(|run| !run.ended() || !run.idle.load(Ordering::Acquire));
        let ops = self.ops();
        if !ops.auto_enabled || busy {
            return Vec::new();
        }
        let now = Instant::now();
        self.replicas
            .iter()
            .filter(|r| !r.is_in_service() && ops.auto[r.index].wants_probe(now))
            .map(|r| r.index)
            .collect()
    }

    /// The health check's resync duties: logs replicas going stale and the milestones of the
    /// running resync, counts the end of the last one for the back-off, and starts an
    /// automatic resync of the first of `candidates` that answered steadily (`returning`: its
    /// probe, with the set id its state records).
    fn resync_operations(
        &self,
        candidates: &[usize],
        returning: Vec<Result<Option<u64>, (String, bool)>>,
    ) {
        self.log_stale_changes();
        if let Some(run) = self.current_resync() {
            self.log_milestone(&run);
            self.account_run_end(&run);
        }
        let set_id = self
            .membership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|m| m.set_id);
        let mut chosen = None;
        let now = Instant::now();
        let mut ops = self.ops();
        for (&index, probe) in candidates.iter().zip(returning) {
            // Same set: a bare directory left where the replica was mounted is not it.
            let reachable = match probe {
                Ok(found) => set_id.is_none() || found == set_id,
                Err(_) => false,
            };
            match ops.auto[index].probed(reachable, now) {
                Verdict::Wait => {}
                Verdict::Start if chosen.is_none() => chosen = Some(index),
                // Another one goes first; this one is seen again next round.
                Verdict::Start => {}
                Verdict::Flapping(wait) => log::warn!(
                    "replica {} fell out of service again soon after its last resync; next \
                     automatic attempt in {}",
                    self.replicas[index].path.display(),
                    crate::rules::throttle::format_duration(wait.as_secs())
                ),
            }
        }
        drop(ops);
        let Some(index) = chosen else {
            return;
        };
        let path = self.replicas[index].path.display().to_string();
        log::warn!(
            "replica {path} is reachable again (its root answers with this set's id): starting an automatic resync"
        );
        if let Err(e) = self.start_resync(&index.to_string(), None) {
            let wait = self.ops().auto[index].failed(Instant::now());
            log::error!(
                "automatic resync of replica {path} could not start: {e}; next automatic attempt in {}",
                crate::rules::throttle::format_duration(wait.as_secs())
            );
        }
    }

    /// Logs each replica's going stale (missing writes while out of service) once.
    fn log_stale_changes(&self) {
        let mut ops = self.ops();
        for r in &self.replicas {
            let s = r.snapshot();
            let was = std::mem::replace(&mut ops.stale_logged[r.index], s.stale);
            if s.stale && !was {
                log::warn!(
                    "replica {} is stale: it missed writes while out of service and serves no reads until it is resynced (chironctl resync {})",
                    r.path.display(),
                    r.index
                );
            }
        }
    }

    /// Logs the running resync at each quarter of a pass of known size, or every minute when
    /// the size is unknown.
    fn log_milestone(&self, run: &Arc<Run>) {
        if run.ended() {
            return;
        }
        let p = run.snapshot();
        let step = match crate::rules::throttle::percent(p.total, p.done) {
            Some(pc) => u64::from(pc / 25),
            None => p.seconds / 60,
        };
        let key = (Arc::as_ptr(run) as usize, p.phase.clone(), step);
        let mut ops = self.ops();
        if ops.milestone.0 == key.0 && ops.milestone.1 == key.1 && ops.milestone.2 >= key.2 {
            return;
        }
        let first = ops.milestone.0 != key.0 || ops.milestone.1 != key.1;
        ops.milestone = key;
        drop(ops);
        if !first || step > 0 {
            log::info!(
                "resync of replica {}: {}",
                self.replicas[run.target].path.display(),
                resync::describe(&p)
            );
        }
    }

    /// Once per run, after it ended: a failure backs the automatic resync of its target off, a
    /// success starts the back-off over.
    fn account_run_end(&self, run: &Arc<Run>) {
        if !run.ended() {
            return;
        }
        let mut ops = self.ops();
        let addr = Arc::as_ptr(run) as usize;
        if ops.counted == addr {
            return;
        }
        ops.counted = addr;
        let failed = run.snapshot().state == "failed";
        let auto = ops.auto_enabled;
        let policy = &mut ops.auto[run.target];
        if !failed {
            policy.succeeded(Instant::now());
            return;
        }
        let wait = policy.failed(Instant::now());
        if auto {
            log::warn!(
                "resync of replica {} failed {} time(s) in a row; next automatic attempt in {}",
                self.replicas[run.target].path.display(),
                policy.failures(),
                crate::rules::throttle::format_duration(wait.as_secs())
            );
        }
    }

    /// Whether a resync of replica `index` is running.
    fn resync_running_on(&self, index: usize) -> bool {
        let run = self.resync.lock().unwrap_or_else(|e| e.into_inner());
        run.as_ref()
            .is_some_and(|r| r.target == index && !r.ended())
    }

    /// Starts an online resync of the out-of-service replica `replica` on a thread of its
    /// own; see [`ReplicaSet::run_resync`]. `rate` limits its content copy in bytes per
    /// second (0: none; None: the `--resync-rate` default).
    pub fn start_resync(&self, replica: &str, rate: Option<u64>) -> Result<String, String> {
        let r = self.find(replica)?;
        let refusing = |why: String| format!("refusing to resync {}: {why}", r.path.display());
        if r.is_in_service() {
            return Err(refusing(
                "it is in service and already up to date (only a replica out of service is \
                 resynced; `chironctl disable` it first to rebuild it)"
                    .into(),
            ));
        }
        let Some(this) = self.this.upgrade() else {
            return Err(refusing("resync is not available in this process".into()));
        };
        // Outside the lock: a mutation takes it too, and a hung replica answers only at the
        // deadline.
        if let Some(Err(problem)) = self.probe(&[r.index]).pop() {
            return Err(refusing(problem));
        }
        let target_gen = self.recorded_generation(r.index);
        // Installed under the write barrier: a mutation already in flight is over before the
        // copy starts, and every later one records its paths. (Barrier, then the run: the
        // order mutations take them in.)
        let barrier = self.barrier.write().unwrap_or_else(|e| e.into_inner());
        let mut current = self.resync.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(run) = current.as_ref() {
            if !run.ended() {
                return Err(refusing(format!(
                    "a resync of {} is already running",
                    self.replicas[run.target].path.display()
                )));
            }
            if !run.idle.load(Ordering::Acquire) {
                return Err(refusing(format!(
                    "the failed resync of {} is still stuck on a replica",
                    self.replicas[run.target].path.display()
                )));
            }
        }
        let Some(&source) = self.priority_order().first() else {
            return Err(refusing("no replica is in service to copy from".into()));
        };
        if r.is_in_service() {
            return Err(refusing("it was put back in service meanwhile".into()));
        }
        let run = Arc::new(Run::new(source, r.index));
        let rate = rate.unwrap_or_else(|| self.resync_rate.load(Ordering::Relaxed));
        run.progress.set_limit(rate);
        // Taken with the run installed, under the barrier: every path changed before is in
        // the journal's copy, every later one in the run's dirty set.
        let first_pass = self.journal_plan(source, target_gen);
        *current = Some(Arc::clone(&run));
        drop(current);
        drop(barrier);
        let spawned = std::thread::Builder::new()
            .name("resync".into())
            .spawn(move || this.run_resync(&run, first_pass));
        if let Err(e) = spawned {
            let run = self.current_resync();
            if let Some(run) = run {
                run.idle.store(true, Ordering::Release);
                run.finish(Err(format!("cannot start the resync thread: {e}")));
            }
            return Err(refusing(format!("cannot start the resync thread: {e}")));
        }
        Ok(format!(
            "resync of {} from {} started (rate limit: {})",
            r.path.display(),
            self.replicas[source].path.display(),
            crate::rules::throttle::format_rate(rate)
        ))
    }

    /// Replica `index`'s recorded generation and whether it was in service at it (None when
    /// its state cannot be read or belongs to no known set), read on its own workers.
    fn recorded_generation(&self, index: usize) -> Option<(Gen, bool)> {
        let set_id = self
            .membership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|m| m.set_id)?;
        let read: ReplicaJob<state::Found> = Arc::new(|r: &Replica| state::read_found(&r.path));
        match self.run(&[index], &Credentials::root(), &read).pop() {
            Some((_, Outcome::Done(state::Found::Record(rec)))) if rec.set_id == set_id => {
                Some((rec.generation, rec.in_service.contains(&rec.replica_id)))
            }
            _ => None,
        }
    }

    /// The resync thread: pass 1 copies the journaled paths when the source's journal covers
    /// the target's absence (`first_pass`), else the whole tree, while mutations go on
    /// (recording the paths they touch); catch-up passes copy those paths again until few are
    /// left; the last pass runs under the write barrier, then the target joins the membership.
    fn run_resync(&self, run: &Arc<Run>, first_pass: Result<BTreeMap<PathBuf, bool>, String>) {
        let (src, dst) = (&self.replicas[run.source], &self.replicas[run.target]);
        log::warn!(
            "resync of replica {} from {} started on {} (rate limit: {})",
            dst.path.display(),
            src.path.display(),
            self.mountpoint,
            crate::rules::throttle::format_rate(run.progress.limit())
        );
        let engine = Arc::new(Mutex::new(Engine::new(
            Arc::clone(src),
            Arc::clone(dst),
            Arc::clone(&run.progress),
            Arc::clone(&run.cancel),
        )));
        let result = self.resync_passes(run, &engine, first_pass);
        if result.is_err() {
            run.cancel.store(true, Ordering::Relaxed);
        }
        // The copy thread may still be stuck on a hung replica: the run is idle once it lets
        // go of the engine.
        {
            let run = Arc::clone(run);
            let engine = Arc::clone(&engine);
            let _ = std::thread::Builder::new()
                .name("resync-idle".into())
                .spawn(move || {
                    drop(engine.lock());
                    run.idle.store(true, Ordering::Release);
                });
        }
        run.finish(result.clone());
        match &result {
            Ok(()) => log::info!(
                "resync of replica {} {}",
                dst.path.display(),
                resync::describe(&run.snapshot())
            ),
            Err(e) => log::error!(
                "resync of replica {} failed: {e}; it stays out of service",
                dst.path.display()
            ),
        }
    }

    fn resync_passes(
        &self,
        run: &Run,
        engine: &Arc<Mutex<Engine>>,
        first_pass: Result<BTreeMap<PathBuf, bool>, String>,
    ) -> Result<(), String> {
        let dst = self.replicas[run.target].path.display().to_string();
        let begun = Instant::now();
        match first_pass {
            Ok(paths) => {
                log::warn!(
                    "resync of replica {dst}: incremental, {} journaled paths (the source's \
                     journal covers its absence)",
                    paths.len()
                );
                let paths = Arc::new(paths);
                self.supervised(run, engine, move |e| {
                    e.sync_dirty(&paths)?;
                    if e.hard_links_seen() {
                        log::warn!(
                            "resync of replica {dst}: hard-linked files among the journaled \
                             paths (their other names are not journaled): full tree compare"
                        );
                        e.sync_all()?;
                    }
                    Ok(())
                })?;
            }
            Err(why) => {
                log::warn!("resync of replica {dst}: full tree compare: {why}");
                self.supervised(run, engine, |e| e.sync_all())?;
            }
        }
        let first_pass_took = begun.elapsed().as_secs_f64();
        run.set_phase("catching up");
        for _ in 0..8 {
            let dirty = run.take_dirty(true);
            if dirty.len() <= 256 {
                // Put back: the barrier pass copies them.
                for (p, rec) in dirty {
                    run.note(&p, rec);
                }
                break;
            }
            let dirty = Arc::new(dirty);
            self.supervised(run, engine, move |e| e.sync_dirty(&dirty))?;
        }
        run.set_phase("barrier");
        let barrier = self.barrier.write().unwrap_or_else(|e| e.into_inner());
        let dirty = Arc::new(run.take_dirty(false));
        let n = dirty.len();
        let started = Instant::now();
        self.supervised(run, engine, move |e| {
            e.set_tolerant(false);
            e.sync_dirty(&dirty)
        })?;
        let target = &self.replicas[run.target];
        if target.is_in_service() {
            return Err("it was put back in service during the resync".into());
        }
        self.rejoin_journal(run.target);
        target.update_status(|s| *s = ServiceStatus::in_service(now()));
        self.persist_membership();
        drop(barrier);
        log::warn!(
            "trusting replica {}: back in service after resync (write barrier {} paths, {:.3} s; \
             first pass {first_pass_took:.3} s, {:.3} s in all)",
            target.path.display(),
            n,
            started.elapsed().as_secs_f64(),
            begun.elapsed().as_secs_f64()
        );
        if !target.is_in_service() {
            return Err("it was taken out again while joining".into());
        }
        Ok(())
    }

    /// Runs one pass of `job` on the engine in a thread of its own and waits for it, failing
    /// when the source leaves service or nothing moves for the deadline (a hung replica).
    fn supervised(
        &self,
        run: &Run,
        engine: &Arc<Mutex<Engine>>,
        job: impl FnOnce(&mut Engine) -> Result<(), resync::SyncError> + Send + 'static,
    ) -> Result<(), String> {
        let (tx, rx) = mpsc::channel();
        let engine = Arc::clone(engine);
        std::thread::Builder::new()
            .name("resync-copy".into())
            // The walk recurses once per directory level.
            .stack_size(64 << 20)
            .spawn(move || {
                let mut e = engine.lock().unwrap_or_else(|e| e.into_inner());
                let _ = tx.send(job(&mut e));
            })
            .map_err(|e| format!("cannot start the copy thread: {e}"))?;
        let (src, dst) = (&self.replicas[run.source], &self.replicas[run.target]);
        let mut seen = run.progress.checked.load(Ordering::Relaxed);
        let mut moved = Instant::now();
        let stale_after = self.timeout.max(Duration::from_secs(1));
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => {
                    let (side, replica) = match e.side {
                        resync::Side::Source => ("source", src),
                        resync::Side::Target => ("target", dst),
                    };
                    return Err(format!(
                        "{} on {side} {}: {}",
                        shown(&e.path),
                        replica.path.display(),
                        describe_errno(e.err.raw_os_error().unwrap_or(libc::EIO))
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the copy thread died".into());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if !src.is_in_service() {
                run.cancel.store(true, Ordering::Relaxed);
                return Err(format!(
                    "the source {} was taken out of service",
                    src.path.display()
                ));
            }
            let now_seen = run.progress.checked.load(Ordering::Relaxed);
            if now_seen != seen {
                seen = now_seen;
                moved = Instant::now();
            } else if moved.elapsed() > stale_after {
                run.cancel.store(true, Ordering::Relaxed);
                return Err(format!(
                    "no progress within {:.1} s (a replica hung?)",
                    stale_after.as_secs_f64()
                ));
            }
        }
    }

    fn find(&self, replica: &str) -> Result<&Arc<Replica>, String> {
        let wanted = replica.trim_end_matches('/');
        let literal =
            |r: &&Arc<Replica>| r.index.to_string() == wanted || r.path == Path::new(wanted);
        if let Some(r) = self.replicas.iter().find(literal) {
            return Ok(r);
        }
        // Resolve symlinks in the parent only: a stat of the replica itself would hang on a
        // dead network mount, and with it the control socket.
        let wanted = Path::new(wanted);
        let resolved = match (wanted.parent(), wanted.file_name()) {
            (Some(dir), Some(name)) if wanted.is_absolute() => {
                std::fs::canonicalize(dir).ok().map(|d| d.join(name))
            }
            _ => None,
        };
        self.replicas
            .iter()
            .find(|r| resolved.as_deref() == Some(r.path.as_path()))
            .ok_or_else(|| {
                format!(
                    "no replica '{replica}' on {} (give its index or path)",
                    self.mountpoint
                )
            })
    }
}

impl ControlHandler for ReplicaSet {
    fn snapshot(&self) -> Snapshot {
        let mut replicas: Vec<_> = self.replicas.iter().map(|r| r.snapshot()).collect();
        let run = self.current_resync();
        if let Some(run) = run {
            replicas[run.target].resync = Some(run.snapshot());
        }
        let in_service = replicas
            .iter()
            .filter(|r| r.state == ReplicaState::InService)
            .count();
        // The status file asks every second: a quorum lost on an idle mount is logged too.
        self.quorum.observe(in_service);
        Snapshot {
            pid: std::process::id(),
            mountpoint: self.mountpoint.clone(),
            time: now(),
            state: Snapshot::overall_of(&replicas),
            replicas,
            quorum: self.quorum.required(),
        }
    }

    fn enable(&self, replica: &str, force: bool) -> Result<String, String> {
        let r = self.find(replica)?;
        let refusing = |why: String| format!("refusing to enable {}: {why}", r.path.display());
        if self.resync_running_on(r.index) {
            return Err(refusing(
                "a resync of it is running; it comes back in service when the resync ends".into(),
            ));
        }
        // The rules first (a dry run), then the replica itself, on its own workers within the
        // deadline: a hung replica must not wedge the control socket, nor come back.
        r.update_status(|s| s.clone().enable(now(), force))
            .map_err(refusing)?;
        if let Some(Err(problem)) = self.probe(&[r.index]).pop() {
            return Err(format!("cannot enable {}: {problem}", r.path.display()));
        }
        {
            // Its journal missed the appends while it was out: rewritten before it takes
            // mutations again, with none in flight.
            let _barrier = self.barrier.write().unwrap_or_else(|e| e.into_inner());
            if !r.is_in_service() {
                self.rejoin_journal(r.index);
            }
            r.update_status(|s| s.enable(now(), force))
                .map_err(refusing)?;
        }
        self.persist_membership();
        self.ops().auto[r.index].release();
        let how = if force { " (forced)" } else { "" };
        log::warn!(
            "trusting replica {}: back in service by administrator{how}",
            r.path.display()
        );
        Ok(format!("{} is in service{how}", r.path.display()))
    }

    fn disable(&self, replica: &str) -> Result<String, String> {
        let r = self.find(replica)?;
        if r.snapshot().state == ReplicaState::OutOfService {
            return Err(format!("{} is already out of service", r.path.display()));
        }
        let others = self
            .priority_order()
            .into_iter()
            .filter(|&i| i != r.index)
            .count();
        if others == 0 {
            return Err(format!(
                "refusing to disable {}: it is the last replica in service",
                r.path.display()
            ));
        }
        self.take_out_because(r.index, "disabled by the administrator".into(), false);
        self.ops().auto[r.index].hold();
        let left = self.priority_order().len();
        if !self.quorum.observe(left) {
            return Ok(format!(
                "{} is out of service; quorum lost ({left} of {} in service): mutations fail \
                 with EROFS until a replica is back",
                r.path.display(),
                self.replicas.len()
            ));
        }
        Ok(format!("{} is out of service", r.path.display()))
    }

    fn resync(&self, replica: &str, rate: Option<u64>) -> Result<String, String> {
        // Asked by the administrator: the replica is the automatic resync's again.
        if let Ok(r) = self.find(replica) {
            self.ops().auto[r.index].release();
        }
        self.start_resync(replica, rate)
    }

    /// Runs on the control-socket client's thread (never a FUSE thread); every step of the
    /// walk runs on the replicas' own workers within the deadline (`verify::verify`).
    fn verify(
        &self,
        replica: Option<&str>,
        content: bool,
        heal: bool,
    ) -> Result<crate::verify::Report, String> {
        let in_service = self.priority_order();
        let targets: Vec<usize> = match replica {
            None => in_service.clone(),
            Some(name) => {
                let r = self.find(name)?;
                let Some(&reference) = in_service.iter().find(|&&i| i != r.index) else {
                    return Err(format!(
                        "cannot verify {}: no other replica is in service to compare it with",
                        r.path.display()
                    ));
                };
                vec![reference, r.index]
            }
        };
        if targets.len() < 2 {
            let names: Vec<String> = targets
                .iter()
                .map(|&i| self.replicas[i].path.display().to_string())
                .collect();
            return Err(format!(
                "cannot verify: {} of {} replicas in service ({}); nothing to compare",
                targets.len(),
                self.replicas.len(),
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            ));
        }
        for (&i, probe) in targets.iter().zip(self.probe(&targets)) {
            if let Err(problem) = probe {
                return Err(format!(
                    "cannot verify {}: {problem}",
                    self.replicas[i].path.display()
                ));
            }
        }
        let replicas: Vec<Arc<Replica>> = targets
            .iter()
            .map(|&i| Arc::clone(&self.replicas[i]))
            .collect();
        let mut report = crate::verify::verify(&replicas, self.timeout, content)
            .map_err(|e| format!("verify failed: {e}"))?;
        if report.identical() {
            log::info!("{}", report.summary());
        } else {
            log::warn!("{}", report.summary());
        }
        if !heal || report.identical() {
            return Ok(report);
        }
        // Heal: each differing path copied from the reference (what the mount shows: metadata
        // is read from it) onto the other replicas, by the resync engine, under the write
        // barrier so that no mutation runs meanwhile; content is rewritten in place, so open
        // handles stay valid. Only in-service replicas are healed: an out-of-service one
        // needs a resync (it also missed what verify cannot see, such as deletions).
        if let Some(run) = self.current_resync().filter(|r| !r.ended()) {
            return Err(format!(
                "refusing to heal: a resync of {} is running; verify again once it is over",
                self.replicas[run.target].path.display()
            ));
        }
        if !self.quorum.observe(self.priority_order().len()) {
            return Err("refusing to heal: the quorum is lost (mutations are refused)".into());
        }
        if let Some(&out) = targets.iter().find(|&&i| !self.replicas[i].is_in_service()) {
            return Err(format!(
                "refusing to heal {}: it is out of service; `chironctl resync` it instead",
                self.replicas[out].path.display()
            ));
        }
        let paths = Arc::new(crate::verify::heal_paths(&report.differences));
        let _barrier = self.barrier.write().unwrap_or_else(|e| e.into_inner());
        let source = targets[0];
        for &target in &targets[1..] {
            let run = Run::new(source, target);
            let engine = Arc::new(Mutex::new(Engine::new(
                Arc::clone(&self.replicas[source]),
                Arc::clone(&self.replicas[target]),
                Arc::clone(&run.progress),
                Arc::clone(&run.cancel),
            )));
            let paths = Arc::clone(&paths);
            self.supervised(&run, &engine, move |e| {
                e.set_tolerant(false);
                e.sync_dirty(&paths)
            })
            .map_err(|e| {
                format!(
                    "heal of {} failed: {e}",
                    self.replicas[target].path.display()
                )
            })?;
        }
        report.healed = paths.keys().map(|p| format!("/{}", p.display())).collect();
        log::warn!(
            "verify healed {} path(s) from {} on {}",
            report.healed.len(),
            self.replicas[source].path.display(),
            self.mountpoint
        );
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicU64;

    /// A set over temp dirs, removed on drop.
    struct Fixture {
        set: ReplicaSet,
        dirs: Vec<PathBuf>,
        base: PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }

    /// A set of `n` replicas on fresh temp dirs, one worker each; None unless root (the
    /// workers switch credentials, which needs root).
    fn set_of(n: usize, timeout_ms: u64) -> Option<Fixture> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: needs root");
            return None;
        }
        static N: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir().join(format!(
            "chironfs-set-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut replicas = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..n {
            let d = base.join(format!("r{i}"));
            std::fs::create_dir_all(&d).unwrap();
            let replica = Replica::open(i, d.clone(), false, 1).unwrap();
            // These tests model hung replicas with sleeping jobs: deadlines must apply.
            replica.always_use_workers();
            replicas.push(replica);
            dirs.push(d);
        }
        let set = ReplicaSet::new(replicas, Duration::from_millis(timeout_ms), "/mnt".into());
        Some(Fixture { set, dirs, base })
    }

    /// A job answering `answers[replica]`: Ok(value), Err(errno), or None = hang 500 ms.
    fn job(answers: Vec<Option<Result<u32, i32>>>) -> ReplicaJob<u32> {
        Arc::new(move |r: &Replica| match answers[r.index] {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(io::Error::from_raw_os_error(e)),
            None => {
                std::thread::sleep(Duration::from_millis(500));
                Ok(99)
            }
        })
    }

    fn states(set: &ReplicaSet) -> Vec<bool> {
        set.replicas().iter().map(|r| r.is_in_service()).collect()
    }

    fn read(set: &ReplicaSet, j: ReplicaJob<u32>) -> Result<(usize, u32), i32> {
        let order = set.priority_order();
        set.read("read", Path::new("f"), &order, &Credentials::root(), j)
    }

    #[test]
    fn a_read_that_fails_over_blames_the_failed_replica() {
        let Some(f) = set_of(2, 200) else {
            return;
        };
        let set = &f.set;
        let r = read(set, job(vec![Some(Err(libc::EIO)), Some(Ok(7))]));
        assert_eq!(r, Ok((1, 7)));
        assert_eq!(states(set), [false, true]);
        let s = set.replicas()[0].snapshot();
        assert_eq!(s.reason, "read /f failed: EIO (Input/output error)");
    }

    #[test]
    fn a_read_failing_everywhere_blames_nobody_and_returns_the_first_errno() {
        let Some(f) = set_of(2, 200) else {
            return;
        };
        let set = &f.set;
        let r = read(set, job(vec![Some(Err(libc::EIO)), Some(Err(libc::ENXIO))]));
        assert_eq!(r, Err(libc::EIO));
        assert_eq!(states(set), [true, true]);
        // A fault errno, then a real answer: the answer wins, and an errno is no proof.
        let r = read(
            set,
            job(vec![Some(Err(libc::EIO)), Some(Err(libc::ENOENT))]),
        );
        assert_eq!(r, Err(libc::ENOENT));
        assert_eq!(states(set), [true, true]);
        // The last replica in service hangs: EIO after the deadline, still in service.
        set.take_out_because(1, "test".into(), false);
        let r = read(set, job(vec![None, Some(Ok(1))]));
        assert_eq!(r, Err(libc::EIO));
        assert_eq!(states(set), [true, false]);
    }

    #[test]
    fn a_read_timing_out_is_blamed_when_another_replica_answers() {
        let Some(f) = set_of(2, 100) else {
            return;
        };
        let set = &f.set;
        let r = read(set, job(vec![None, Some(Err(libc::ENOENT))]));
        assert_eq!(r, Err(libc::ENOENT));
        assert_eq!(states(set), [false, true]);
        assert!(
            set.replicas()[0]
                .snapshot()
                .reason
                .contains("no answer within 0.1 s")
        );
    }

    #[test]
    fn a_deleted_replica_directory_is_named_in_the_reason() {
        let Some(f) = set_of(2, 500) else {
            return;
        };
        let (set, dirs) = (&f.set, &f.dirs);
        std::fs::remove_dir(&dirs[1]).unwrap();
        let create: ReplicaJob<()> = Arc::new(|r: &Replica| {
            sys::open_beneath(
                r.root(),
                c"new",
                libc::O_CREAT | libc::O_WRONLY,
                0o644,
                false,
            )
            .map(drop)
        });
        let r = set.mutate("create", Path::new("new"), &Credentials::root(), create);
        assert_eq!(r, Ok(()));
        assert_eq!(states(set), [true, false]);
        let s = set.replicas()[1].snapshot();
        assert_eq!(
            s.reason,
            "create /new failed: ENOENT (No such file or directory): its directory was deleted"
        );
        assert!(s.stale);
    }

    #[test]
    fn replicas_are_found_by_index_and_path_without_touching_them() {
        let Some(f) = set_of(2, 200) else {
            return;
        };
        let (set, dirs) = (&f.set, &f.dirs);
        let name = |r: Result<&Arc<Replica>, String>| r.map(|r| r.index);
        assert_eq!(name(set.find("1")), Ok(1));
        let p = dirs[1].display().to_string();
        assert_eq!(name(set.find(&p)), Ok(1));
        assert_eq!(name(set.find(&format!("{p}/"))), Ok(1));
        let link = dirs[0].parent().unwrap().with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(dirs[0].parent().unwrap(), &link).unwrap();
        assert_eq!(name(set.find(&format!("{}/r0", link.display()))), Ok(0));
        let _ = std::fs::remove_file(&link);
        let err = set.find("2").unwrap_err();
        assert!(err.contains("no replica '2'"), "{err}");
    }

    #[test]
    fn enabling_a_hung_replica_is_refused_within_the_deadline() {
        let Some(f) = set_of(2, 100) else {
            return;
        };
        let set = &f.set;
        set.disable("1").unwrap();
        // Its only worker is stuck.
        let (release, stuck) = mpsc::channel::<()>();
        set.replicas()[1].submit(Box::new(move || {
            let _ = stuck.recv();
        }));
        let t = Instant::now();
        let err = set.enable("1", true).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert!(
            err.contains("cannot enable") && err.contains("no answer"),
            "{err}"
        );
        assert_eq!(states(set), [true, false]);
        release.send(()).unwrap();
        assert!(set.enable("1", false).is_ok());
        assert_eq!(states(set), [true, true]);
    }
}
