//! The one writer of the state records (`.chironfs/state` on each replica): membership
//! changes, the clean-shutdown mark, and the records the mount-time plan asks for.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::takeout::TakeOut;
use super::{ReplicaJob, ReplicaSet};
use crate::engine::meta_files;
use crate::engine::replica::{Replica, now};
use crate::rules::arbitrate::Outcome;
use crate::rules::state::{self, Gen, Membership, StateRecord};
use crate::sys::Credentials;

impl ReplicaSet {
    /// From now on, every membership change is written to the in-service replicas' state
    /// files before it takes effect for callers.
    pub fn install_membership(&self, membership: Membership) {
        self.generation
            .store(membership.generation.number, Ordering::Relaxed);
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
        if !self.may_write() {
            return;
        }
        for _ in 0..=self.replicas.len() {
            let mut targets = self.priority_order();
            targets.sort_unstable();
            if !m.change(&targets, state::random_id()) {
                return;
            }
            self.generation
                .store(m.generation.number, Ordering::Relaxed);
            log::warn!(
                "replica set membership of {}: generation {}, {} of {} replicas in service",
                self.mountpoint,
                m.generation.number,
                targets.len(),
                self.replica_members()
            );
            if !self.write_records(m, &targets, false) {
                return;
            }
        }
    }

    /// Writes `m` as the state of each of `targets`; takes out those that fail while others
    /// succeed. Returns true when something was taken out (the membership must change again).
    pub(super) fn write_records(&self, m: &Membership, targets: &[usize], clean: bool) -> bool {
        let records = (0..self.replicas.len())
            .map(|i| targets.contains(&i).then(|| m.record(i, clean, now())))
            .collect();
        let failures = self.store_records(records);
        // The witness after the replicas: it must never know a generation no replica has.
        if let Some(lease) = self.lease.get() {
            lease.record_on_witnesses(m, clean);
        }
        let ok = targets.len() - failures.len();
        let mut took_out = false;
        for (index, what) in failures {
            let path = self.replicas[index].path.display().to_string();
            log::error!("cannot write the chironfs state of {path}: {what}");
            if ok > 0 && !clean {
                took_out |= self.take_out_status(
                    index,
                    format!("cannot write its {} state: {what}", state::META_DIR),
                    true,
                    TakeOut::Runtime,
                );
            }
        }
        took_out
    }

    /// The one writer of the state records: writes `records[i]`, where given, to replica `i`
    /// on its own workers within the deadline. Returns the replicas that failed, with why.
    pub(super) fn store_records(&self, records: Vec<Option<StateRecord>>) -> Vec<(usize, String)> {
        if !self.may_write() {
            return Vec::new();
        }
        let targets: Vec<usize> = (0..records.len())
            .filter(|&i| records[i].is_some())
            .collect();
        let records = Arc::new(records);
        let job: ReplicaJob<()> = Arc::new(move |r: &Replica| match &records[r.index] {
            Some(record) => meta_files::write_state(r.root()?, record),
            None => Ok(()),
        });
        self.run(&targets, &Credentials::root(), &job)
            .into_iter()
            .filter_map(|(i, outcome)| self.failure_words(&outcome).map(|why| (i, why)))
            .collect()
    }

    /// At a clean unmount: records the clean shutdown in the in-service replicas' state.
    pub fn write_clean_shutdown(&self) {
        if self.observer {
            return;
        }
        if !self.may_write() {
            log::warn!(
                "not marking the replicas' state clean on {}: this daemon no longer holds the \
                 replica set's lease",
                self.mountpoint
            );
            return;
        }
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

    /// Replica `index`'s recorded generation and whether it was in service at it (None when
    /// its state cannot be read or belongs to no known set), read on its own workers.
    pub(super) fn recorded_generation(&self, index: usize) -> Option<(Gen, bool)> {
        let set_id = self
            .membership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|m| m.set_id)?;
        let read: ReplicaJob<state::Found> =
            Arc::new(|r: &Replica| Ok(meta_files::read_state(r.root()?)));
        match self.run(&[index], &Credentials::root(), &read).pop() {
            // A replica that left may have been changed since, out of our sight: its resync
            // compares whole trees.
            Some((_, Outcome::Done(state::Found::Record(rec))))
                if rec.set_id == set_id && !rec.left =>
            {
                Some((rec.generation, rec.in_service.contains(&rec.replica_id)))
            }
            _ => None,
        }
    }
}
