//! A point-in-time view of the replica set, shared by the status file, the control socket
//! and `chironctl`, so that every consumer reads the same facts in the same words.

use serde::{Deserialize, Serialize};

/// The lease state of a read-only observer (`-o ro`): it takes no lease and writes nothing.
pub const OBSERVER: &str = "observer";

/// Overall health of the mount, as monitors (OCF agent, Nagios) need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overall {
    /// Every replica is in service.
    Ok,
    /// At least one replica is out of service, but the mount still serves.
    Degraded,
    /// No replica is in service: callers see errors.
    Failed,
}

impl Overall {
    /// The word used in the status file and by `chironctl`.
    pub fn as_str(self) -> &'static str {
        match self {
            Overall::Ok => "ok",
            Overall::Degraded => "degraded",
            Overall::Failed => "failed",
        }
    }
}

/// Whether a replica takes part in reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaState {
    /// Receives every mutation and may serve reads.
    InService,
    /// Taken out after a failure or by the administrator; receives nothing.
    OutOfService,
}

impl ReplicaState {
    /// The word used in the status file and by `chironctl`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::InService => "in-service",
            ReplicaState::OutOfService => "out-of-service",
        }
    }
}

/// One replica's state and counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSnapshot {
    /// Position on the command line (0-based); also its priority order.
    pub index: usize,
    /// Canonical path of the replica directory.
    pub path: String,
    /// True for a `:`-prefixed replica, read only when no normal one can serve.
    pub low_priority: bool,
    /// In or out of service.
    pub state: ReplicaState,
    /// Why it is out of service (empty when in service).
    pub reason: String,
    /// Unix time (seconds) of the last state change.
    pub since: u64,
    /// True when it missed mutations while out of service: it must be resynced before use.
    pub stale: bool,
    /// Read-type requests answered by this replica.
    pub reads: u64,
    /// Mutations applied to this replica.
    pub writes: u64,
    /// Operations that failed or timed out on this replica.
    pub errors: u64,
    /// The last online resync of this replica since the daemon started, if any (absent from
    /// older status snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<ResyncProgress>,
    /// What an online membership change is doing with it (`joining`, `leaving: replaced by
    /// PATH`), absent otherwise (`chironctl add`, `remove`, `replace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<String>,
}

/// Where an online resync (`chironctl resync`) of a replica stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncProgress {
    /// `running`, `done` or `failed`.
    pub state: String,
    /// What it is doing while running (`copying`, `catching up`, `barrier`).
    #[serde(default)]
    pub phase: String,
    /// Index of the replica copied from.
    pub source: usize,
    /// Entries created, replaced, linked, removed or updated on the replica.
    pub files: u64,
    /// Bytes of file content copied.
    pub bytes: u64,
    /// Entries examined.
    #[serde(default)]
    pub checked: u64,
    /// Seconds since it started (until it ended, once ended).
    pub seconds: u64,
    /// Why it failed (empty otherwise).
    #[serde(default)]
    pub error: String,
    /// Entries the current pass is to examine, when known in advance (null: unknown).
    #[serde(default)]
    pub total: Option<u64>,
    /// Entries examined in the current pass.
    #[serde(default)]
    pub done: u64,
    /// Content bytes copied per second, smoothed over a few seconds.
    #[serde(default)]
    pub bytes_per_sec: u64,
    /// Entries examined per second, smoothed over a few seconds.
    #[serde(default)]
    pub entries_per_sec: u64,
    /// Seconds left in the current pass at the current rate (null: unknown).
    #[serde(default)]
    pub eta: Option<u64>,
    /// The limit on content bytes per second this resync obeys (0: none).
    #[serde(default)]
    pub rate_limit: u64,
}

/// The whole replica set at one instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Pid of the daemon.
    pub pid: u32,
    /// Canonical mount point.
    pub mountpoint: String,
    /// Unix time (seconds) the snapshot was taken.
    pub time: u64,
    /// Overall health.
    pub state: Overall,
    /// One entry per replica, in command-line order.
    pub replicas: Vec<ReplicaSnapshot>,
    /// Replicas a mutation needs in service (`--quorum`); absent: no quorum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<usize>,
    /// The ownership lease: "held", or why mutations are refused ("fenced: ...", "lost:
    /// ..."); absent for a daemon without one (unit tests, older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// The lease's epoch (raised at every change of owner).
    #[serde(default)]
    pub lease_epoch: u64,
    /// Witnesses that answered the lease's last renewal; absent without `--witness`. They
    /// count for the quorum as replicas in service do (one majority rule with the lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witnesses: Option<usize>,
    /// Nodes the kernel holds (files and directories it has looked up and not yet forgotten,
    /// the root included): what the daemon's memory grows with. Absent from the status file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u64>,
}

impl Snapshot {
    /// Replicas in service.
    pub fn in_service(&self) -> usize {
        self.replicas
            .iter()
            .filter(|r| r.state == ReplicaState::InService)
            .count()
    }

    /// True when a quorum is set and fewer members count (replicas in service, witnesses
    /// answering): mutations fail (EROFS).
    pub fn quorum_lost(&self) -> bool {
        self.quorum
            .is_some_and(|q| self.in_service() + self.witnesses.unwrap_or(0) < q)
    }

    /// True when the lease is not held: fenced or taken over, mutations fail (EROFS). A
    /// read-only observer holds none and needs none.
    pub fn lease_lost(&self) -> bool {
        self.lease
            .as_deref()
            .is_some_and(|l| l != "held" && l != OBSERVER)
    }

    /// Overall health derived from per-replica states: the one rule every consumer shares.
    pub fn overall_of(replicas: &[ReplicaSnapshot]) -> Overall {
        let in_service = replicas
            .iter()
            .filter(|r| r.state == ReplicaState::InService)
            .count();
        if in_service == 0 {
            Overall::Failed
        } else if in_service < replicas.len() {
            Overall::Degraded
        } else {
            Overall::Ok
        }
    }
}

/// What the daemon lets the control socket do; implemented by the running filesystem.
pub trait ControlHandler: Send + Sync {
    /// Current state of the replica set.
    fn snapshot(&self) -> Snapshot;
    /// Put a replica (index or path) back in service. A stale replica is refused unless
    /// `force`; the error says why. Ok carries a one-line message for the admin.
    fn enable(&self, replica: &str, force: bool) -> Result<String, String>;
    /// Take a replica (index or path) out of service by admin request.
    fn disable(&self, replica: &str) -> Result<String, String>;
    /// Start an online resync of an out-of-service replica (index or path) from the replicas
    /// in service; its progress shows in the snapshot. `rate` limits its content copy (bytes
    /// per second, 0: none; None: the daemon's default). Ok carries a one-line message.
    fn resync(&self, replica: &str, rate: Option<u64>) -> Result<String, String> {
        let _ = rate;
        Err(format!("cannot resync {replica}: not supported here"))
    }
    /// The daemon's counters in the Prometheus text exposition format (`view::metrics`), for
    /// `chironctl metrics`, the textfile next to the status file and `--metrics-listen`.
    fn metrics(&self) -> Result<String, String> {
        Err("cannot collect metrics: not supported here".into())
    }
    /// Compares replicas path by path (`chironctl verify`): every in-service replica, or only
    /// `replica` against the first in-service one; `content` compares file bytes too;
    /// `heal` then copies each differing path from the first in-service replica onto the
    /// others. Err: why it could not compare (a replica hung or failed, nothing to compare).
    fn verify(
        &self,
        replica: Option<&str>,
        content: bool,
        heal: bool,
    ) -> Result<crate::view::report::Report, String> {
        let _ = (replica, content, heal);
        Err("cannot verify: not supported here".into())
    }
    /// Adds a member online (`chironctl add`): the directory at `path` (absolute) joins out of
    /// service and serves once its resync (limited to `rate` bytes per second, as for
    /// `resync`) is done; `witness` asks for a witness instead of a data replica. Ok carries a
    /// one-line message.
    fn add(&self, path: &str, witness: bool, rate: Option<u64>) -> Result<String, String> {
        let _ = (witness, rate);
        Err(format!("cannot add {path}: not supported here"))
    }
    /// Removes a member online (`chironctl remove`), unless that would leave no up-to-date
    /// copy or break the quorum or the lease's majority (the error says which).
    fn remove(&self, replica: &str) -> Result<String, String> {
        Err(format!("cannot remove {replica}: not supported here"))
    }
    /// Replaces a member online (`chironctl replace`): `new` is added and synced (at `rate`)
    /// while `old` serves, then `old` leaves.
    fn replace(&self, old: &str, new: &str, rate: Option<u64>) -> Result<String, String> {
        let _ = (new, rate);
        Err(format!("cannot replace {old}: not supported here"))
    }
}
