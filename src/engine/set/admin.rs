//! The admin handler: what `chironctl` asks of the set through the control socket (snapshot,
//! enable, disable, resync, verify and heal).

use std::sync::Arc;

use super::ReplicaSet;
use crate::engine::lease::LeaseState;
use crate::engine::replica::{Replica, now};
use crate::resync::Run;
use crate::view::metrics::{self, ReplicaMetrics, Sample};
use crate::view::report::Report;
use crate::view::snapshot::{ControlHandler, ReplicaState, Snapshot};

impl ReplicaSet {
    /// Everything the metrics show, read now: the snapshot, then each replica's counters and
    /// capacity, the journal's size and the bytes through the mount (lock-free but for the
    /// snapshot's and the journal's short bookkeeping locks).
    pub fn metrics_sample(&self) -> Sample {
        let mut sample = Sample::of_snapshot(self.snapshot());
        sample.replicas = self
            .replicas
            .iter()
            .filter(|r| !r.is_left())
            .map(|r| ReplicaMetrics {
                classes: r.stats.sample(),
                space: r.space.sample(),
            })
            .collect();
        sample.generation = self.generation.load(std::sync::atomic::Ordering::Relaxed);
        sample.journal = self.journal.get().map(|j| j.size());
        (sample.read_bytes, sample.written_bytes) = self.io.sample();
        sample
    }
}

impl ControlHandler for ReplicaSet {
    fn snapshot(&self) -> Snapshot {
        // A replica that left is no member: not shown (its index stays taken).
        let mut replicas: Vec<_> = self
            .replicas
            .iter()
            .filter(|r| !r.is_left())
            .map(|r| r.snapshot())
            .collect();
        if let Some(run) = self.current_resync()
            && let Some(r) = replicas.iter_mut().find(|r| r.index == run.target)
        {
            r.resync = Some(run.snapshot());
        }
        for (index, role) in self.membership_roles() {
            if let Some(r) = replicas.iter_mut().find(|r| r.index == index) {
                r.membership = Some(role);
            }
        }
        let in_service = replicas
            .iter()
            .filter(|r| r.state == ReplicaState::InService)
            .count();
        // The status file asks every second: a quorum lost on an idle mount is logged too.
        self.quorum.observe(self.quorum_members(in_service));
        Snapshot {
            pid: std::process::id(),
            mountpoint: self.mountpoint.clone(),
            time: now(),
            state: Snapshot::overall_of(&replicas),
            replicas,
            quorum: self.quorum.required(),
            lease: match self.lease.get() {
                _ if self.observer => Some(crate::view::snapshot::OBSERVER.to_string()),
                None => None,
                Some(l) => Some(match l.state() {
                    LeaseState::Held { .. } => "held".to_string(),
                    LeaseState::Fenced { why } => format!("fenced: {why}"),
                    LeaseState::Lost { why } => format!("lost: {why}"),
                }),
            },
            lease_epoch: self.lease.get().map(|l| l.epoch()).unwrap_or_default(),
            witnesses: self
                .lease
                .get()
                .filter(|l| l.witnesses() > 0)
                .map(|l| l.witnesses_answering()),
            nodes: Some(self.nodes.load(std::sync::atomic::Ordering::Relaxed)),
        }
    }

    fn metrics(&self) -> Result<String, String> {
        Ok(metrics::render(&self.metrics_sample()))
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
            let _barrier = self.exclusive();
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
        if !self.quorum.observe(self.quorum_members(left)) {
            return Ok(format!(
                "{} is out of service; quorum lost ({left} of {} in service): mutations fail \
                 with EROFS until a replica is back",
                r.path.display(),
                self.replica_members()
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

    fn add(&self, path: &str, witness: bool, rate: Option<u64>) -> Result<String, String> {
        if witness {
            return self.add_witness(path, None);
        }
        self.add_replica(path, rate).map(|(_, answer)| answer)
    }

    fn remove(&self, replica: &str) -> Result<String, String> {
        self.remove_replica(replica)
    }

    fn replace(&self, old: &str, new: &str, rate: Option<u64>) -> Result<String, String> {
        self.replace_replica(old, new, rate)
    }

    /// Runs on the control-socket client's thread (never a FUSE thread); every step of the
    /// walk runs on the replicas' own workers within the deadline (`verify::verify`).
    fn verify(&self, replica: Option<&str>, content: bool, heal: bool) -> Result<Report, String> {
        let targets = self.verify_targets(replica)?;
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
        if heal && !report.identical() {
            self.heal(&targets, &mut report)?;
        }
        Ok(report)
    }
}

impl ReplicaSet {
    /// The replicas a verify compares, the reference first: every in-service replica, or
    /// `replica` against the first other in-service one.
    fn verify_targets(&self, replica: Option<&str>) -> Result<Vec<usize>, String> {
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
                self.replica_members(),
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            ));
        }
        Ok(targets)
    }

    /// Heals what `report` found: each differing path copied from the reference (`targets[0]`,
    /// what the mount shows: metadata is read from it) onto the other replicas, by the resync
    /// engine, under the write barrier so that no mutation runs meanwhile; content is rewritten
    /// in place, so open handles stay valid. Only in-service replicas are healed: an
    /// out-of-service one needs a resync (it also missed what verify cannot see, such as
    /// deletions).
    fn heal(&self, targets: &[usize], report: &mut Report) -> Result<(), String> {
        if let Some(why) = self.observer_refusal() {
            return Err(format!("refusing to heal: {why}"));
        }
        if let Some(run) = self.current_resync().filter(|r| !r.ended()) {
            return Err(format!(
                "refusing to heal: a resync of {} is running; verify again once it is over",
                self.replicas[run.target].path.display()
            ));
        }
        if !self
            .quorum
            .observe(self.quorum_members(self.priority_order().len()))
        {
            return Err("refusing to heal: the quorum is lost (mutations are refused)".into());
        }
        if let Some(&out) = targets.iter().find(|&&i| !self.replicas[i].is_in_service()) {
            return Err(format!(
                "refusing to heal {}: it is out of service; `chironctl resync` it instead",
                self.replicas[out].path.display()
            ));
        }
        let paths = Arc::new(crate::verify::heal_paths(&report.differences));
        let _barrier = self.exclusive();
        let source = targets[0];
        for &target in &targets[1..] {
            let run = Run::new(source, target);
            let paths = Arc::clone(&paths);
            self.engine_for(&run)
                .and_then(|engine| {
                    self.supervised(&run, &engine, move |e| {
                        e.set_tolerant(false);
                        e.sync_dirty(&paths)
                    })
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
        Ok(())
    }
}
