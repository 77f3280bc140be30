//! Taking a replica out of service: the one way, at runtime and at mount, with its one
//! alert line; the new membership is then recorded by `records.rs`.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::{ReplicaSet, describe_fault, shown};
use crate::engine::replica::now;
use crate::rules::arbitrate::Fault;
use crate::view::words::ALERT_TARGET;

impl ReplicaSet {
    /// Takes a replica out of service after `op` on `path` failed there, with an alert line.
    pub fn take_out(&self, index: usize, op: &str, path: &Path, fault: Fault, missed_write: bool) {
        self.take_out_with(index, op, path, fault, None, missed_write);
    }

    /// [`ReplicaSet::take_out`], saying what is wrong with the replica's root when known
    /// ("its directory was deleted"), so the alert explains an ENOENT.
    pub(super) fn take_out_with(
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
        if self.take_out_status(index, reason, missed_write, TakeOut::Runtime) {
            self.persist_membership();
        }
    }

    /// At start, before the mount-time recovery: a replica whose directory did not answer
    /// (or failed as unreachable storage does) starts out of service and stale, with its
    /// alert line; the recovery then counts it as unreadable.
    pub fn unreachable_at_start(&self, index: usize, why: String) {
        self.take_out_status(index, why, true, TakeOut::AtMount);
    }

    /// The one state change behind every take-out, at runtime and at mount: marks the replica
    /// out of service (stale if it `missed_write`) and logs it at alert level; true if it
    /// changed. The caller records the membership (`records.rs`).
    pub(super) fn take_out_status(
        &self,
        index: usize,
        reason: String,
        missed_write: bool,
        when: TakeOut,
    ) -> bool {
        let replica = &self.replicas[index];
        let changed = replica.update_status(|s| s.take_out(reason.clone(), now(), missed_write));
        if changed {
            let left = self.priority_order().len();
            let path = replica.path.display();
            let what = match when {
                TakeOut::Runtime => format!("disabling replica {path} (out of service)"),
                TakeOut::AtMount => format!("replica {path} starts out of service"),
            };
            log::error!(
                target: ALERT_TARGET,
                "{what}: {reason}; {left} of {} replicas in service on {}",
                self.replica_members(),
                self.mountpoint
            );
        }
        changed
    }
}

/// When a replica is taken out: the alert line says "disabling" for a replica that served,
/// "starts out of service" for one the mount-time plan keeps out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TakeOut {
    /// While the mount serves.
    Runtime,
    /// At mount, before the mount answers.
    AtMount,
}
