//! The daemon's own counters in the Prometheus text exposition format (version 0.0.4), as
//! `chironctl metrics`, the node_exporter textfile next to the status file and the optional
//! `--metrics-listen` listener serve them: the [`Sample`] the daemon collects, the operation
//! classes and latency buckets the engine counts in, and [`render`], the one pure function
//! that writes the text. Every series carries a `mountpoint` label, so that the textfiles of
//! several mounts on one node can be collected together. Imports only `view::snapshot`.

use std::fmt::Write as _;

use crate::view::snapshot::{Overall, ReplicaSnapshot, ReplicaState, Snapshot};

/// Upper bounds of the latency histogram buckets, in nanoseconds, with their `le` label
/// (seconds); a last `+Inf` bucket follows. From 50 µs (a local disk) to 10 s (a hung server,
/// past any sane `--timeout`).
pub const LATENCY_BUCKETS: [(u64, &str); 16] = [
    (50_000, "5e-05"),
    (100_000, "0.0001"),
    (250_000, "0.00025"),
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
    (10_000_000_000, "10"),
];

/// Number of histogram slots: one per bound plus `+Inf`.
pub const BUCKET_SLOTS: usize = LATENCY_BUCKETS.len() + 1;

/// The slot (index into a [`BUCKET_SLOTS`] array, not cumulative) a latency falls in.
pub fn bucket_of(nanos: u64) -> usize {
    LATENCY_BUCKETS
        .iter()
        .position(|&(bound, _)| nanos <= bound)
        .unwrap_or(LATENCY_BUCKETS.len())
}

/// What kind of work a replica job is, for the per-class counters and histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpClass {
    /// File content read (`read`, `lseek`).
    DataRead,
    /// File content written (`write`, `fallocate`, `fsync`, `copy_file_range`, `flush`).
    DataWrite,
    /// Metadata read (`lookup`, `getattr`, `readdir`, `open`, xattrs, ...).
    MetaRead,
    /// Metadata changed (`create`, `mkdir`, `unlink`, `rename`, `setattr`, ...).
    MetaWrite,
    /// The daemon's own work: health checks, state records, journal rewrites, recovery.
    Internal,
}

impl OpClass {
    /// Every class, in the order of [`OpClass::slot`].
    pub const ALL: [OpClass; 5] = [
        OpClass::DataRead,
        OpClass::DataWrite,
        OpClass::MetaRead,
        OpClass::MetaWrite,
        OpClass::Internal,
    ];

    /// The class of operation `op` (the name the FUSE layer gives the engine); `mutation`:
    /// it goes to every replica.
    pub fn of(op: &str, mutation: bool) -> OpClass {
        let data = matches!(
            op,
            "read" | "lseek" | "write" | "fallocate" | "fsync" | "flush" | "copy_file_range"
        );
        match (data, mutation) {
            (true, false) => OpClass::DataRead,
            (true, true) => OpClass::DataWrite,
            (false, false) => OpClass::MetaRead,
            (false, true) => OpClass::MetaWrite,
        }
    }

    /// Its index in [`OpClass::ALL`] (and in per-class arrays).
    pub fn slot(self) -> usize {
        self as usize
    }

    /// The `class` label value.
    pub fn label(self) -> &'static str {
        match self {
            OpClass::DataRead => "data_read",
            OpClass::DataWrite => "data_write",
            OpClass::MetaRead => "metadata_read",
            OpClass::MetaWrite => "metadata_write",
            OpClass::Internal => "internal",
        }
    }
}

/// One replica's counters for one operation class, read at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassCounts {
    /// Jobs ended (the histogram's count; a job past the deadline counts when it ends).
    pub ops: u64,
    /// Jobs that answered a fault errno (EIO, ENOTCONN, ESTALE, ... or a vanished root); an
    /// ordinary answer such as ENOENT is not an error.
    pub errors: u64,
    /// Jobs not answered by the deadline.
    pub timeouts: u64,
    /// Finished jobs per latency slot (not cumulative), [`BUCKET_SLOTS`] long.
    pub buckets: Vec<u64>,
    /// Sum of the finished jobs' latencies, nanoseconds.
    pub sum_nanos: u64,
}

/// A replica's filesystem capacity, from the health check's statvfs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Space {
    /// Total size, bytes.
    pub size_bytes: u64,
    /// Free bytes (including those reserved for root).
    pub free_bytes: u64,
    /// Bytes available to unprivileged users.
    pub avail_bytes: u64,
    /// Total inodes.
    pub inodes: u64,
    /// Free inodes.
    pub free_inodes: u64,
}

impl Space {
    /// From a statvfs's fields: fragment size, blocks, free blocks, blocks available to
    /// unprivileged users, inodes, free inodes.
    pub fn of_statvfs(
        frsize: u64,
        blocks: u64,
        bfree: u64,
        bavail: u64,
        files: u64,
        ffree: u64,
    ) -> Self {
        Space {
            size_bytes: blocks.saturating_mul(frsize),
            free_bytes: bfree.saturating_mul(frsize),
            avail_bytes: bavail.saturating_mul(frsize),
            inodes: files,
            free_inodes: ffree,
        }
    }
}

/// What the metrics add to a replica's snapshot row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaMetrics {
    /// Per class, in [`OpClass::ALL`] order.
    pub classes: Vec<ClassCounts>,
    /// Capacity at the last health check that reached it (None: not known yet).
    pub space: Option<Space>,
}

/// The journal of changed paths, in size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalSize {
    /// Bytes of the journal.
    pub bytes: u64,
    /// Paths recorded since the last compaction (what a returning replica must compare).
    pub paths: u64,
    /// It reached its cap: a resync must compare the whole trees.
    pub overflowed: bool,
}

/// Everything [`render`] writes, collected at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The set's state, as the status file and `chironctl status` show it.
    pub snapshot: Snapshot,
    /// The daemon's version.
    pub version: String,
    /// The membership generation number (0: none recorded).
    pub generation: u64,
    /// Per replica, in the order of `snapshot.replicas`.
    pub replicas: Vec<ReplicaMetrics>,
    /// The journal, if the set keeps one.
    pub journal: Option<JournalSize>,
    /// Bytes the daemon read from a replica for callers (passthrough reads bypass it).
    pub read_bytes: u64,
    /// Bytes callers wrote through the daemon (once, not once per replica).
    pub written_bytes: u64,
}

impl Sample {
    /// A sample with only what a snapshot knows (no per-class counters, capacity or journal).
    pub fn of_snapshot(snapshot: Snapshot) -> Self {
        Sample {
            replicas: vec![ReplicaMetrics::default(); snapshot.replicas.len()],
            snapshot,
            version: env!("CARGO_PKG_VERSION").into(),
            generation: 0,
            journal: None,
            read_bytes: 0,
            written_bytes: 0,
        }
    }
}

/// Every metric family [`render`] may write, in the order it writes them (a family whose
/// value is not known is left out of a given exposition).
pub const FAMILIES: &[&str] = &[
    "chironfs_info",
    "chironfs_last_update_timestamp_seconds",
    "chironfs_state",
    "chironfs_replicas",
    "chironfs_replicas_in_service",
    "chironfs_quorum_required_replicas",
    "chironfs_quorum_ok",
    "chironfs_lease_state",
    "chironfs_lease_epoch",
    "chironfs_membership_generation",
    "chironfs_read_bytes_total",
    "chironfs_written_bytes_total",
    "chironfs_journal_bytes",
    "chironfs_journal_paths",
    "chironfs_journal_overflowed",
    "chironfs_replica_state",
    "chironfs_replica_priority",
    "chironfs_replica_low_priority",
    "chironfs_replica_state_change_timestamp_seconds",
    "chironfs_replica_heal_pending_paths",
    "chironfs_replica_reads_total",
    "chironfs_replica_writes_total",
    "chironfs_replica_faults_total",
    "chironfs_replica_operations_total",
    "chironfs_replica_operation_errors_total",
    "chironfs_replica_operation_timeouts_total",
    "chironfs_replica_operation_duration_seconds",
    "chironfs_replica_size_bytes",
    "chironfs_replica_free_bytes",
    "chironfs_replica_available_bytes",
    "chironfs_replica_inodes",
    "chironfs_replica_free_inodes",
    "chironfs_resync_state",
    "chironfs_resync_source_replica",
    "chironfs_resync_changed_entries",
    "chironfs_resync_copied_bytes",
    "chironfs_resync_checked_entries",
    "chironfs_resync_pass_done_entries",
    "chironfs_resync_pass_entries",
    "chironfs_resync_copy_rate_bytes_per_second",
    "chironfs_resync_check_rate_entries_per_second",
    "chironfs_resync_duration_seconds",
    "chironfs_resync_eta_seconds",
];

/// A replica's state as the `state` label of `chironfs_replica_state` names it: `in_service`,
/// `resyncing` (out, a resync of it running), `stale` (out, missed mutations) or `out`.
pub fn replica_state(r: &ReplicaSnapshot) -> &'static str {
    let resyncing = r.resync.as_ref().is_some_and(|p| p.state == "running");
    match r.state {
        ReplicaState::InService => "in_service",
        ReplicaState::OutOfService if resyncing => "resyncing",
        ReplicaState::OutOfService if r.stale => "stale",
        ReplicaState::OutOfService => "out",
    }
}

/// Each replica's rank in the read order when all are in service (0 first): normal ones by
/// index, then the low-priority ones by index (`rules::select::priority_order`).
fn priority_ranks(replicas: &[ReplicaSnapshot]) -> Vec<usize> {
    // By index: indexes have gaps once a replica left the set online.
    let mut ranks = vec![0; replicas.iter().map(|r| r.index + 1).max().unwrap_or(0)];
    let order = replicas
        .iter()
        .filter(|r| !r.low_priority)
        .chain(replicas.iter().filter(|r| r.low_priority));
    for (rank, r) in order.enumerate() {
        if let Some(slot) = ranks.get_mut(r.index) {
            *slot = rank;
        }
    }
    ranks
}

/// A label value with `\`, `"` and newlines escaped, as the format wants.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The text being written: each family's `# HELP` and `# TYPE` once, then its series.
struct Out {
    text: String,
    /// `mountpoint="..."`, first label of every series.
    base: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One series: `labels` are `key="value"` pairs already escaped, after the mount point.
    fn series(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let sep = if labels.is_empty() { "" } else { "," };
        let _ = writeln!(self.text, "{name}{{{}{sep}{labels}}} {value}", self.base);
    }

    /// A family with one series of the whole mount.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.series(name, "", value);
    }
}

/// The labels naming a replica.
fn replica_labels(r: &ReplicaSnapshot) -> String {
    format!("replica=\"{}\",path=\"{}\"", r.index, escape(&r.path))
}

/// The Prometheus text exposition of `s`. Counters end in `_total`, units are seconds and
/// bytes; gauges that are not known (no quorum, no lease, no journal, capacity not measured
/// yet, no resync) are left out rather than given a made-up value.
pub fn render(s: &Sample) -> String {
    let mut out = Out {
        text: String::with_capacity(16 * 1024),
        base: format!("mountpoint=\"{}\"", escape(&s.snapshot.mountpoint)),
    };
    render_set(&mut out, s);
    render_replicas(&mut out, s);
    render_operations(&mut out, s);
    render_space(&mut out, s);
    render_resyncs(&mut out, s);
    out.text
}

/// The families describing the whole mount.
fn render_set(out: &mut Out, s: &Sample) {
    let snap = &s.snapshot;
    out.family("chironfs_info", "gauge", "The daemon's version (value 1).");
    out.series(
        "chironfs_info",
        &format!("version=\"{}\"", escape(&s.version)),
        1,
    );
    out.single(
        "chironfs_last_update_timestamp_seconds",
        "gauge",
        "Unix time these values were collected.",
        snap.time,
    );
    out.family(
        "chironfs_state",
        "gauge",
        "Overall health of the mount: 1 for the current state (ok, degraded, failed).",
    );
    for state in [Overall::Ok, Overall::Degraded, Overall::Failed] {
        let on = u8::from(snap.state == state);
        out.series(
            "chironfs_state",
            &format!("state=\"{}\"", state.as_str()),
            on,
        );
    }
    out.single(
        "chironfs_replicas",
        "gauge",
        "Replicas of the mount.",
        snap.replicas.len(),
    );
    out.single(
        "chironfs_replicas_in_service",
        "gauge",
        "Replicas in service.",
        snap.in_service(),
    );
    if let Some(q) = snap.quorum {
        out.single(
            "chironfs_quorum_required_replicas",
            "gauge",
            "Replicas a mutation needs in service (--quorum).",
            q,
        );
    }
    out.single(
        "chironfs_quorum_ok",
        "gauge",
        "1 when mutations are not refused for want of a quorum (always 1 without --quorum).",
        u8::from(!snap.quorum_lost()),
    );
    if let Some(lease) = &snap.lease {
        out.family(
            "chironfs_lease_state",
            "gauge",
            "The ownership lease: 1 for the current state (held, fenced, lost; observer for \
             a read-only mount, which takes none).",
        );
        for state in ["held", "fenced", "lost", crate::view::snapshot::OBSERVER] {
            let on = u8::from(lease.split(':').next() == Some(state));
            out.series("chironfs_lease_state", &format!("state=\"{state}\""), on);
        }
    }
    out.single(
        "chironfs_lease_epoch",
        "gauge",
        "The ownership lease's epoch, raised at every change of owner.",
        snap.lease_epoch,
    );
    out.single(
        "chironfs_membership_generation",
        "gauge",
        "The membership generation, raised at every change of the replicas in service.",
        s.generation,
    );
    out.single(
        "chironfs_read_bytes_total",
        "counter",
        "File content bytes read through the daemon (kernel passthrough reads not included).",
        s.read_bytes,
    );
    out.single(
        "chironfs_written_bytes_total",
        "counter",
        "File content bytes written through the daemon (counted once, not per replica).",
        s.written_bytes,
    );
    if let Some(j) = &s.journal {
        out.single(
            "chironfs_journal_bytes",
            "gauge",
            "Size of the journal of paths changed since its last compaction.",
            j.bytes,
        );
        out.single(
            "chironfs_journal_paths",
            "gauge",
            "Paths in the journal.",
            j.paths,
        );
        out.single(
            "chironfs_journal_overflowed",
            "gauge",
            "1 when the journal reached --journal-max: a resync compares whole trees.",
            u8::from(j.overflowed),
        );
    }
}

/// The families with one series (or one per state) per replica.
fn render_replicas(out: &mut Out, s: &Sample) {
    let replicas = &s.snapshot.replicas;
    out.family(
        "chironfs_replica_state",
        "gauge",
        "Replica state: 1 for the current one (in_service, stale, resyncing, out).",
    );
    for r in replicas {
        let now = replica_state(r);
        for state in ["in_service", "stale", "resyncing", "out"] {
            let labels = format!("{},state=\"{state}\"", replica_labels(r));
            out.series("chironfs_replica_state", &labels, u8::from(now == state));
        }
    }
    let ranks = priority_ranks(replicas);
    let pending = s.journal.map_or(0, |j| j.paths);
    type Value = fn(&ReplicaSnapshot, usize, u64) -> u64;
    let families: [(&str, &str, &str, Value); 7] = [
        (
            "chironfs_replica_priority",
            "gauge",
            "Rank in the read order when all are in service (0 serves first).",
            |_, rank, _| rank as u64,
        ),
        (
            "chironfs_replica_low_priority",
            "gauge",
            "1 for a low-priority replica (read only when no other can serve).",
            |r, _, _| u64::from(r.low_priority),
        ),
        (
            "chironfs_replica_state_change_timestamp_seconds",
            "gauge",
            "Unix time of the replica's last state change.",
            |r, _, _| r.since,
        ),
        (
            "chironfs_replica_heal_pending_paths",
            "gauge",
            "Journal paths a stale replica must compare before it can return (0 otherwise).",
            |r, _, pending| if r.stale { pending } else { 0 },
        ),
        (
            "chironfs_replica_reads_total",
            "counter",
            "Read-type requests this replica answered.",
            |r, _, _| r.reads,
        ),
        (
            "chironfs_replica_writes_total",
            "counter",
            "Mutations applied to this replica.",
            |r, _, _| r.writes,
        ),
        (
            "chironfs_replica_faults_total",
            "counter",
            "Failures blamed on this replica (taken out, failed health checks).",
            |r, _, _| r.errors,
        ),
    ];
    for (name, kind, help, value) in families {
        out.family(name, kind, help);
        for r in replicas {
            let rank = ranks.get(r.index).copied().unwrap_or_default();
            out.series(name, &replica_labels(r), value(r, rank, pending));
        }
    }
}

/// The per-class counters and latency histograms of each replica.
fn render_operations(out: &mut Out, s: &Sample) {
    type Value = fn(&ClassCounts) -> u64;
    let counters: [(&str, &str, Value); 3] = [
        (
            "chironfs_replica_operations_total",
            "Jobs this replica ended, by operation class (one past --timeout when it ends).",
            |c| c.ops,
        ),
        (
            "chironfs_replica_operation_errors_total",
            "Jobs that answered a fault errno (EIO, ENOTCONN, ESTALE, ...), by class.",
            |c| c.errors,
        ),
        (
            "chironfs_replica_operation_timeouts_total",
            "Jobs not answered within --timeout, by class.",
            |c| c.timeouts,
        ),
    ];
    let rows = || {
        s.snapshot
            .replicas
            .iter()
            .zip(&s.replicas)
            .flat_map(|(r, m)| {
                OpClass::ALL
                    .iter()
                    .zip(&m.classes)
                    .map(move |(class, c)| (r, *class, c))
            })
    };
    for (name, help, value) in counters {
        out.family(name, "counter", help);
        for (r, class, c) in rows() {
            let labels = format!("{},class=\"{}\"", replica_labels(r), class.label());
            out.series(name, &labels, value(c));
        }
    }
    let name = "chironfs_replica_operation_duration_seconds";
    out.family(
        name,
        "histogram",
        "Time a replica took to answer a job, by operation class (a job past --timeout counts \
         when it ends).",
    );
    for (r, class, c) in rows() {
        let labels = format!("{},class=\"{}\"", replica_labels(r), class.label());
        let mut cumulative = 0;
        for (slot, count) in c.buckets.iter().enumerate() {
            cumulative += count;
            let le = LATENCY_BUCKETS.get(slot).map_or("+Inf", |&(_, le)| le);
            out.series(
                &format!("{name}_bucket"),
                &format!("{labels},le=\"{le}\""),
                cumulative,
            );
        }
        out.series(&format!("{name}_sum"), &labels, c.sum_nanos as f64 / 1e9);
        out.series(&format!("{name}_count"), &labels, cumulative);
    }
}

/// Each replica's capacity, for those measured.
fn render_space(out: &mut Out, s: &Sample) {
    type Value = fn(&Space) -> u64;
    let families: [(&str, &str, Value); 5] = [
        (
            "chironfs_replica_size_bytes",
            "Size of the replica's filesystem.",
            |c| c.size_bytes,
        ),
        (
            "chironfs_replica_free_bytes",
            "Free bytes of the replica's filesystem (root's reserve included).",
            |c| c.free_bytes,
        ),
        (
            "chironfs_replica_available_bytes",
            "Bytes of the replica's filesystem available to unprivileged users.",
            |c| c.avail_bytes,
        ),
        (
            "chironfs_replica_inodes",
            "Inodes of the replica's filesystem.",
            |c| c.inodes,
        ),
        (
            "chironfs_replica_free_inodes",
            "Free inodes of the replica's filesystem.",
            |c| c.free_inodes,
        ),
    ];
    let measured: Vec<(&ReplicaSnapshot, Space)> = s
        .snapshot
        .replicas
        .iter()
        .zip(&s.replicas)
        .filter_map(|(r, m)| m.space.map(|sp| (r, sp)))
        .collect();
    if measured.is_empty() {
        return;
    }
    for (name, help, value) in families {
        out.family(name, "gauge", help);
        for (r, space) in &measured {
            out.series(name, &replica_labels(r), value(space));
        }
    }
}

/// The last resync of each replica that had one since the daemon started.
fn render_resyncs(out: &mut Out, s: &Sample) {
    let runs: Vec<_> = s
        .snapshot
        .replicas
        .iter()
        .filter_map(|r| r.resync.as_ref().map(|p| (r, p)))
        .collect();
    if runs.is_empty() {
        return;
    }
    out.family(
        "chironfs_resync_state",
        "gauge",
        "The replica's last resync: 1 for its state (running, done, failed).",
    );
    for (r, p) in &runs {
        for state in ["running", "done", "failed"] {
            let labels = format!("{},state=\"{state}\"", replica_labels(r));
            out.series("chironfs_resync_state", &labels, u8::from(p.state == state));
        }
    }
    type Value = fn(&crate::view::snapshot::ResyncProgress) -> Option<u64>;
    let families: [(&str, &str, Value); 10] = [
        (
            "chironfs_resync_source_replica",
            "Index of the replica the resync copies from.",
            |p| Some(p.source as u64),
        ),
        (
            "chironfs_resync_changed_entries",
            "Entries the resync created, replaced, linked, removed or updated.",
            |p| Some(p.files),
        ),
        (
            "chironfs_resync_copied_bytes",
            "File content bytes the resync copied.",
            |p| Some(p.bytes),
        ),
        (
            "chironfs_resync_checked_entries",
            "Entries the resync examined.",
            |p| Some(p.checked),
        ),
        (
            "chironfs_resync_pass_done_entries",
            "Entries examined in the current pass.",
            |p| Some(p.done),
        ),
        (
            "chironfs_resync_pass_entries",
            "Entries the current pass is to examine, when known in advance.",
            |p| p.total,
        ),
        (
            "chironfs_resync_copy_rate_bytes_per_second",
            "Content bytes copied per second, smoothed over a few seconds.",
            |p| Some(p.bytes_per_sec),
        ),
        (
            "chironfs_resync_check_rate_entries_per_second",
            "Entries examined per second, smoothed over a few seconds.",
            |p| Some(p.entries_per_sec),
        ),
        (
            "chironfs_resync_duration_seconds",
            "Seconds since the resync started (its length, once ended).",
            |p| Some(p.seconds),
        ),
        (
            "chironfs_resync_eta_seconds",
            "Seconds left in the current pass at the current rate, when known.",
            |p| p.eta,
        ),
    ];
    for (name, help, value) in families {
        let known: Vec<_> = runs
            .iter()
            .filter_map(|(r, p)| value(p).map(|v| (r, v)))
            .collect();
        if known.is_empty() {
            continue;
        }
        out.family(name, "gauge", help);
        for (r, v) in known {
            out.series(name, &replica_labels(r), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::fixtures::sample;
    use crate::view::snapshot::ResyncProgress;

    fn full_sample() -> Sample {
        let mut snap = sample();
        snap.quorum = Some(1);
        snap.lease = Some("fenced: no majority".into());
        snap.lease_epoch = 7;
        snap.replicas[1].resync = Some(ResyncProgress {
            state: "running".into(),
            files: 3,
            bytes: 4096,
            total: None,
            eta: Some(12),
            ..ResyncProgress::default()
        });
        let mut s = Sample::of_snapshot(snap);
        s.generation = 5;
        s.journal = Some(JournalSize {
            bytes: 300,
            paths: 9,
            overflowed: false,
        });
        let mut buckets = vec![0; BUCKET_SLOTS];
        buckets[bucket_of(80_000)] += 2; // 80 µs: the 100 µs bucket
        buckets[bucket_of(3_000_000_000)] += 1; // 3 s: the 10 s bucket
        buckets[bucket_of(60_000_000_000)] += 1; // a minute: only +Inf
        let busy = ClassCounts {
            ops: 5,
            errors: 1,
            timeouts: 1,
            buckets,
            sum_nanos: 63_000_160_000,
        };
        let idle = ClassCounts {
            buckets: vec![0; BUCKET_SLOTS],
            ..ClassCounts::default()
        };
        let mut classes = vec![idle; OpClass::ALL.len()];
        classes[OpClass::DataWrite.slot()] = busy;
        s.replicas[0].classes = classes.clone();
        s.replicas[1].classes = classes;
        s.replicas[0].space = Some(Space {
            size_bytes: 1000,
            free_bytes: 600,
            avail_bytes: 500,
            inodes: 10,
            free_inodes: 4,
        });
        s
    }

    fn line<'a>(text: &'a str, start: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(start)).collect()
    }

    #[test]
    fn buckets_are_increasing_and_a_latency_falls_in_the_first_bound_not_below_it() {
        assert!(LATENCY_BUCKETS.windows(2).all(|w| w[0].0 < w[1].0));
        for (nanos, le) in LATENCY_BUCKETS {
            let secs: f64 = le.parse().unwrap();
            assert_eq!((secs * 1e9).round() as u64, nanos, "{le}");
        }
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(50_000), 0);
        assert_eq!(bucket_of(50_001), 1);
        assert_eq!(bucket_of(u64::MAX), BUCKET_SLOTS - 1);
    }

    #[test]
    fn operations_are_classed_by_data_and_mutation() {
        assert_eq!(OpClass::of("read", false), OpClass::DataRead);
        assert_eq!(OpClass::of("write", true), OpClass::DataWrite);
        assert_eq!(OpClass::of("getattr", false), OpClass::MetaRead);
        assert_eq!(OpClass::of("rename", true), OpClass::MetaWrite);
        for (slot, class) in OpClass::ALL.iter().enumerate() {
            assert_eq!(class.slot(), slot);
        }
    }

    #[test]
    fn histogram_is_cumulative_with_sum_and_count() {
        let text = render(&full_sample());
        let r0 = "mountpoint=\"/mnt/data\",replica=\"0\",path=\"/srv/a dir\",class=\"data_write\"";
        let bucket = |le: &str| {
            format!("chironfs_replica_operation_duration_seconds_bucket{{{r0},le=\"{le}\"}} ")
        };
        assert_eq!(line(&text, &bucket("5e-05")), [bucket("5e-05") + "0"]);
        assert_eq!(line(&text, &bucket("0.0001")), [bucket("0.0001") + "2"]);
        assert_eq!(line(&text, &bucket("2.5")), [bucket("2.5") + "2"]);
        assert_eq!(line(&text, &bucket("10")), [bucket("10") + "3"]);
        assert_eq!(line(&text, &bucket("+Inf")), [bucket("+Inf") + "4"]);
        let sum = format!("chironfs_replica_operation_duration_seconds_sum{{{r0}}} 63.00016");
        assert_eq!(line(&text, &sum), [sum.as_str()]);
        let count = format!("chironfs_replica_operation_duration_seconds_count{{{r0}}} 4");
        assert_eq!(line(&text, &count), [count.as_str()]);
        let ops = format!("chironfs_replica_operations_total{{{r0}}} 5");
        assert_eq!(line(&text, &ops), [ops.as_str()]);
        let timeouts = format!("chironfs_replica_operation_timeouts_total{{{r0}}} 1");
        assert_eq!(line(&text, &timeouts), [timeouts.as_str()]);
    }

    #[test]
    fn each_family_is_declared_once_before_its_series_and_counters_end_in_total() {
        let text = render(&full_sample());
        let mut declared: Vec<(String, String)> = Vec::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    declared.iter().all(|(n, _)| n != name),
                    "{name} declared twice"
                );
                assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
                assert!(name.starts_with("chironfs_"), "{name}");
                declared.push((name.into(), kind.into()));
            } else if !l.starts_with('#') {
                let name = l.split('{').next().unwrap();
                let (family, kind) = declared.last().expect("a series before any TYPE");
                let base = if kind == "histogram" {
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(name)
                } else {
                    name
                };
                assert_eq!(base, family, "{l} outside its family");
                assert!(l.contains("{mountpoint=\"/mnt/data\""), "{l}");
            }
        }
    }

    #[test]
    fn states_lease_quorum_journal_space_and_resync_are_shown() {
        let text = render(&full_sample());
        let r1 = "mountpoint=\"/mnt/data\",replica=\"1\",path=\"/srv/b=c\"";
        for want in [
            "chironfs_state{mountpoint=\"/mnt/data\",state=\"degraded\"} 1".to_string(),
            "chironfs_state{mountpoint=\"/mnt/data\",state=\"ok\"} 0".into(),
            format!("chironfs_replica_state{{{r1},state=\"resyncing\"}} 1"),
            format!("chironfs_replica_state{{{r1},state=\"stale\"}} 0"),
            format!("chironfs_replica_priority{{{r1}}} 1"),
            format!("chironfs_replica_low_priority{{{r1}}} 1"),
            format!("chironfs_replica_heal_pending_paths{{{r1}}} 9"),
            format!("chironfs_resync_state{{{r1},state=\"running\"}} 1"),
            format!("chironfs_resync_copied_bytes{{{r1}}} 4096"),
            format!("chironfs_resync_eta_seconds{{{r1}}} 12"),
            "chironfs_lease_state{mountpoint=\"/mnt/data\",state=\"fenced\"} 1".into(),
            "chironfs_lease_state{mountpoint=\"/mnt/data\",state=\"held\"} 0".into(),
            "chironfs_lease_epoch{mountpoint=\"/mnt/data\"} 7".into(),
            "chironfs_membership_generation{mountpoint=\"/mnt/data\"} 5".into(),
            "chironfs_quorum_required_replicas{mountpoint=\"/mnt/data\"} 1".into(),
            "chironfs_quorum_ok{mountpoint=\"/mnt/data\"} 1".into(),
            "chironfs_journal_paths{mountpoint=\"/mnt/data\"} 9".into(),
            "chironfs_replica_available_bytes{mountpoint=\"/mnt/data\",replica=\"0\",path=\"/srv/a dir\"} 500".into(),
            "chironfs_replica_free_inodes{mountpoint=\"/mnt/data\",replica=\"0\",path=\"/srv/a dir\"} 4".into(),
        ] {
            assert!(text.lines().any(|l| l == want), "missing {want} in\n{text}");
        }
        // Unknown values are left out, not made up.
        assert!(!text.contains("chironfs_resync_pass_entries"));
        assert!(!text.contains(&format!("chironfs_replica_free_bytes{{{r1}}}")));
    }

    #[test]
    fn families_lists_every_family_a_full_sample_declares_in_order() {
        let text = render(&full_sample());
        let declared: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        // The full sample has no pass total (unknown): every other family is there.
        let want: Vec<&str> = FAMILIES
            .iter()
            .copied()
            .filter(|f| *f != "chironfs_resync_pass_entries")
            .collect();
        assert_eq!(declared, want);
    }

    #[test]
    fn a_bare_snapshot_leaves_out_what_it_does_not_know() {
        let text = render(&Sample::of_snapshot(sample()));
        for absent in [
            "chironfs_quorum_required_replicas",
            "chironfs_lease_state",
            "chironfs_journal_bytes",
            "chironfs_replica_size_bytes",
            "chironfs_resync_state",
            "chironfs_replica_operations_total{",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        assert!(text.contains("chironfs_replica_state{mountpoint=\"/mnt/data\",replica=\"1\",path=\"/srv/b=c\",state=\"stale\"} 1"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut snap = sample();
        snap.mountpoint = "/mnt/a\"b\\c\nd".into();
        let text = render(&Sample::of_snapshot(snap));
        assert!(
            text.contains("mountpoint=\"/mnt/a\\\"b\\\\c\\nd\""),
            "{text}"
        );
        assert!(text.lines().all(|l| !l.starts_with('d')));
    }
}
