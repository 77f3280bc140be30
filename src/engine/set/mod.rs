//! The replica set: fans mutations out to every in-service replica in parallel with a deadline,
//! arbitrates the outcomes, serves reads with fail-over, and takes failing replicas out of
//! service with one alert line each. One type, [`ReplicaSet`], its impl spread over the files
//! of this folder by concern.

mod admin;
mod fanout;
mod health;
mod journaling;
mod membership;
mod records;
mod recovery;
mod resyncs;
mod takeout;

use journaling::OpenWriters;
pub use journaling::{OpenWriter, WriterToken};
#[cfg(test)]
mod tests;

use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use crate::engine::counters::IoTotals;
use crate::engine::journal::Recorder;
use crate::engine::lease::LeaseKeeper;
use crate::engine::replica::Replica;
use crate::engine::replica_list::{ONLINE_ADDS, ReplicaList};
use crate::resync::Run;
use crate::rules::arbitrate::{Fault, Outcome};
use crate::rules::auto_resync::AutoResync;
use crate::rules::select::{self, Candidate};
use crate::rules::state::Membership;
use crate::view::words::{describe_errno, no_answer_within};

/// Work to run on each replica: gets the replica, returns a value or an I/O error.
pub type ReplicaJob<T> = Arc<dyn Fn(&Replica) -> io::Result<T> + Send + Sync>;

/// The replicas of one mount and the rules that keep them identical.
#[derive(Debug)]
pub struct ReplicaSet {
    replicas: ReplicaList,
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
    /// The replica joining online, filled by the running resync (`membership.rs`).
    joining: Mutex<Option<membership::Join>>,
    /// Held while a membership change is being made (`chironctl add`, `remove`, `replace`):
    /// a second one at the same moment is refused, not interleaved.
    changing: Mutex<()>,
    /// Replicas a mutation needs in service (`--quorum`; off by default).
    quorum: crate::rules::quorum::Quorum,
    /// Default limit on a resync's content copy, bytes per second (0: none).
    resync_rate: std::sync::atomic::AtomicU64,
    /// What the health check remembers between rounds about resyncs and stale replicas.
    ops: Mutex<Ops>,
    /// The durable journal of changed paths (`engine/journal.rs`), set up at mount by
    /// [`ReplicaSet::start_journal`]; unset for a set without on-disk state (unit tests).
    journal: OnceLock<Arc<Recorder>>,
    /// The ownership lease (`engine/lease.rs`), installed at mount once taken: while it is
    /// not held, no mutation runs and the daemon writes none of its own records.
    lease: OnceLock<Arc<LeaseKeeper>>,
    /// Nodes the kernel holds in the FUSE layer's node table, which keeps it up to date
    /// (`crate::fuse::nodes`); shown in the snapshot.
    nodes: Arc<std::sync::atomic::AtomicU64>,
    /// Files open for writing, by token id: a compaction keeps their paths in the journal.
    open_writers: Mutex<OpenWriters>,
    /// A read-only observer (`-o ro`): holds no lease and writes nothing to the replicas
    /// (no mutation, no state, no journal, no resync), so it may run beside the owner.
    observer: bool,
    /// Bytes of file content read and written through the mount (the metrics).
    pub io: IoTotals,
    /// The membership generation number, mirrored for the metrics (the membership lock is
    /// held while state records are written, which may take up to the timeout).
    generation: std::sync::atomic::AtomicU64,
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

pub(super) fn describe_fault(fault: Fault, timeout: Duration) -> String {
    match fault {
        Fault::Errno(e) => describe_errno(e),
        Fault::TimedOut => no_answer_within(timeout),
    }
}

/// The path inside the mount, for log lines.
/// How long the control socket waits for a path's parent to resolve: a parent on a dead
/// network mount must not hold the admin's request (the thread asking stays behind, blocked
/// in the kernel, and ends when the server answers).
const RESOLVE_WITHIN: Duration = Duration::from_secs(2);

/// `path` (absolute) with the symlinks of its parent resolved, never of itself (a stat of a
/// replica would hang on a dead network mount), within [`RESOLVE_WITHIN`]. Err: why not, in
/// words (a relative path, the root, a parent that cannot be resolved or does not answer).
pub(super) fn resolve_parent(path: &Path) -> Result<std::path::PathBuf, String> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err("the root directory cannot be a replica".into());
    };
    if !path.is_absolute() {
        return Err("give its absolute path".into());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let asked = dir.to_path_buf();
    std::thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            let _ = tx.send(std::fs::canonicalize(&asked));
        })
        .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
    match rx.recv_timeout(RESOLVE_WITHIN) {
        Ok(Ok(d)) => Ok(d.join(name)),
        Ok(Err(e)) => Err(format!("cannot resolve {}: {e}", dir.display())),
        Err(_) => Err(format!(
            "{} gave {}",
            dir.display(),
            no_answer_within(RESOLVE_WITHIN)
        )),
    }
}

pub(super) fn shown(path: &Path) -> String {
    format!("/{}", path.display())
}

impl ReplicaSet {
    /// A set over already opened replicas.
    pub fn new(replicas: Vec<Arc<Replica>>, timeout: Duration, mountpoint: String) -> Self {
        let replicas = ReplicaList::new(replicas, ONLINE_ADDS);
        let n = replicas.capacity();
        ReplicaSet {
            replicas,
            timeout,
            mountpoint,
            membership: Mutex::new(None),
            this: Weak::new(),
            barrier: RwLock::new(()),
            resync: Mutex::new(None),
            joining: Mutex::new(None),
            changing: Mutex::new(()),
            resync_rate: Default::default(),
            ops: Mutex::new(Ops {
                auto: vec![AutoResync::default(); n],
                stale_logged: vec![false; n],
                ..Ops::default()
            }),
            quorum: Default::default(),
            journal: OnceLock::new(),
            lease: OnceLock::new(),
            nodes: Arc::default(),
            open_writers: Mutex::default(),
            observer: false,
            io: IoTotals::default(),
            generation: Default::default(),
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
    /// replicas are in service (see `rules/quorum.rs`).
    pub fn with_quorum(self, quorum: crate::rules::quorum::Quorum) -> Self {
        ReplicaSet { quorum, ..self }
    }

    /// The set as a read-only observer (`-o ro`): see the `observer` field.
    pub fn read_only_observer(self) -> Self {
        ReplicaSet {
            observer: true,
            ..self
        }
    }

    /// Whether this set is a read-only observer (`-o ro`), which writes nothing anywhere.
    pub fn is_observer(&self) -> bool {
        self.observer
    }

    /// Why an observer refuses what would write to the replicas, in words for `chironctl`.
    fn observer_refusal(&self) -> Option<String> {
        self.observer.then(|| {
            format!(
                "{} is a read-only observer (-o ro): it writes nothing to the replicas; ask the \
                 mount that owns the replica set",
                self.mountpoint
            )
        })
    }

    /// The set behind an `Arc`, able to run resyncs on a thread of their own.
    pub fn shared(self) -> Arc<Self> {
        Arc::new_cyclic(move |this| ReplicaSet {
            this: this.clone(),
            ..self
        })
    }

    /// The gauge of the nodes the kernel holds, for the node table to keep up to date.
    pub fn node_gauge(&self) -> Arc<std::sync::atomic::AtomicU64> {
        Arc::clone(&self.nodes)
    }

    /// From now on, mutations and the daemon's own records need `lease` held.
    pub fn install_lease(&self, lease: Arc<LeaseKeeper>) {
        let _ = self.lease.set(lease);
    }

    /// The members the quorum counts with `in_service` replicas in service: those, and the
    /// witnesses that answered the lease's last renewal (one rule with the lease).
    pub(super) fn quorum_members(&self, in_service: usize) -> usize {
        in_service + self.lease.get().map_or(0, |l| l.witnesses_answering())
    }

    /// Whether this daemon may write to the replicas: it holds the lease (or has none: a set
    /// without on-disk state). Checked before every mutation and every record written.
    fn may_write(&self) -> bool {
        !self.observer && self.lease.get().is_none_or(|l| l.may_write())
    }

    /// Holds the write barrier alone: returns once no mutation is in flight, and none starts
    /// until the guard is dropped. Lock order (docs/architecture.md): the tree lock, then a
    /// file's order lock, then the barrier; never a replica's job while waiting for it.
    fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.barrier.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The write barrier shared, held by every mutation while it runs.
    fn shared_barrier(&self) -> RwLockReadGuard<'_, ()> {
        self.barrier.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Why a replica's job did not succeed, in words ("EIO (Input/output error)", "no answer
    /// within 2.0 s (hung?)"); None for a success.
    fn failure_words<T>(&self, outcome: &Outcome<T>) -> Option<String> {
        match outcome {
            Outcome::Done(_) => None,
            Outcome::Failed(e) => Some(describe_errno(*e)),
            Outcome::TimedOut => Some(no_answer_within(self.timeout)),
        }
    }

    /// All replicas, in command-line order, then those added online.
    pub fn replicas(&self) -> &ReplicaList {
        &self.replicas
    }

    fn candidates(&self) -> Vec<Candidate> {
        self.replicas
            .iter()
            .map(|r| Candidate {
                index: r.index,
                low_priority: r.low_priority,
                readable: r.is_in_service(),
                round_trip: r.round_trip(),
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

    fn find(&self, replica: &str) -> Result<&Arc<Replica>, String> {
        let r = self.find_any(replica)?;
        if r.is_left() {
            return Err(format!(
                "{} left the replica set of {} (chironctl add brings it back)",
                r.path.display(),
                self.mountpoint
            ));
        }
        Ok(r)
    }

    /// [`ReplicaSet::find`], a replica that left included (a member first: a path may name
    /// one that left and the one that joined again in its place).
    fn find_any(&self, replica: &str) -> Result<&Arc<Replica>, String> {
        let wanted = replica.trim_end_matches('/');
        let path = Path::new(wanted);
        let resolved = resolve_parent(path).ok();
        let literal = |r: &&Arc<Replica>| r.index.to_string() == wanted || r.path == path;
        let named = |r: &&Arc<Replica>| resolved.as_deref() == Some(r.path.as_path());
        let member = |r: &&Arc<Replica>| !r.is_left();
        let by = |is: &dyn Fn(&&Arc<Replica>) -> bool| {
            let found: Vec<&Arc<Replica>> = self.replicas.iter().filter(|r| is(r)).collect();
            found
                .iter()
                .copied()
                .find(member)
                .or(found.first().copied())
        };
        by(&literal).or_else(|| by(&named)).ok_or_else(|| {
            format!(
                "no replica '{replica}' on {} (give its index or path)",
                self.mountpoint
            )
        })
    }
}
