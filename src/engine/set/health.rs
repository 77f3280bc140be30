//! The health check, once a second: each in-service replica's root probed on its own
//! workers within the deadline; a dead one is taken out.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{ReplicaJob, ReplicaSet};
use crate::engine::meta_files;
use crate::engine::replica::Replica;
use crate::rules::arbitrate::Outcome;
use crate::rules::state::{self};
use crate::sys::{self, Credentials};
use crate::view::metrics::Space;
use crate::view::words::{describe_errno, no_answer_within};

impl ReplicaSet {
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

    pub(super) fn check_in_service(
        &self,
        targets: &[usize],
        results: Vec<Result<(), (String, bool)>>,
    ) {
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
    pub(super) fn probe(&self, targets: &[usize]) -> Vec<Result<(), String>> {
        self.probe_detailed(targets)
            .into_iter()
            .map(|r| r.map_err(|(words, _)| words))
            .collect()
    }

    /// [`ReplicaSet::probe`], telling a root that is gone (deleted, unmounted: true) from one
    /// that fails or hangs (false).
    pub(super) fn probe_detailed(&self, targets: &[usize]) -> Vec<Result<(), (String, bool)>> {
        self.probe_with_set_id(targets, &[])
            .into_iter()
            .map(|r| r.map(drop))
            .collect()
    }

    /// [`ReplicaSet::probe_detailed`], also reading the replica-set id recorded in the state of
    /// those of `targets` listed in `with_set_id` (None: no readable state), on the replica's
    /// own worker after its root answered.
    pub(super) fn probe_with_set_id(
        &self,
        targets: &[usize],
        with_set_id: &[usize],
    ) -> Vec<Result<Option<u64>, (String, bool)>> {
        let with_set_id = with_set_id.to_vec();
        let probe: ReplicaJob<Result<Option<u64>, String>> = Arc::new(move |r: &Replica| {
            if !r.is_open() {
                // Its storage did not answer when the mount started: open it now if it does.
                r.try_open_root()?;
                log::warn!(
                    "{} answers now: its directory is open (it stays out of service until it \
                     is resynced)",
                    r.path.display()
                );
            }
            let asked = std::time::Instant::now();
            let st = sys::statvfs(r.root()?)?;
            r.note_round_trip(asked.elapsed());
            // The capacity the metrics show, from the round trip made anyway.
            r.space.store(Space::of_statvfs(
                st.f_frsize,
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
            ));
            if let Err(problem) = r.check_root() {
                return Ok(Err(problem));
            }
            if !with_set_id.contains(&r.index) {
                return Ok(Ok(None));
            }
            Ok(Ok(match meta_files::read_state(r.root()?) {
                state::Found::Record(rec) => Some(rec.set_id),
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
}
