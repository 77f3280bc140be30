//! The resync driver: starting an online resync (by the administrator or `--auto-resync`),
//! its passes, the write-barrier pass that brings the target back, and its log lines.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{ReplicaSet, shown};
use crate::engine::replica::{ServiceStatus, now};
use crate::resync::{self, Engine, Run};
use crate::rules::auto_resync::Verdict;
use crate::view::words::describe_errno;

impl ReplicaSet {
    /// The resync in progress, if any (a clone, so the lock is not held while it is used).
    pub(super) fn current_resync(&self) -> Option<Arc<Run>> {
        self.resync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The out-of-service replicas the automatic resync wants probed this round: none when
    /// it is off or a resync is running (or a failed one is still stuck on a replica).
    pub(super) fn auto_resync_candidates(&self) -> Vec<usize> {
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
            .filter(|r| !r.is_in_service() && !r.is_left() && ops.auto[r.index].wants_probe(now))
            .map(|r| r.index)
            .collect()
    }

    /// The health check's resync duties: logs replicas going stale and the milestones of the
    /// running resync, counts the end of the last one for the back-off, and starts an
    /// automatic resync of the first of `candidates` that answered steadily (`returning`: its
    /// probe, with the set id its state records).
    pub(super) fn resync_operations(
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
    pub(super) fn log_stale_changes(&self) {
        let mut ops = self.ops();
        for r in self.replicas.iter().filter(|r| !r.is_left()) {
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
    pub(super) fn log_milestone(&self, run: &Arc<Run>) {
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
                crate::view::progress::describe(&p)
            );
        }
    }

    /// Once per run, after it ended: a failure backs the automatic resync of its target off, a
    /// success starts the back-off over.
    pub(super) fn account_run_end(&self, run: &Arc<Run>) {
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
    pub(super) fn resync_running_on(&self, index: usize) -> bool {
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
        if let Some(why) = self.observer_refusal() {
            return Err(refusing(why));
        }
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
        let barrier = self.exclusive();
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

    /// The resync thread: pass 1 copies the journaled paths when the source's journal covers
    /// the target's absence (`first_pass`), else the whole tree, while mutations go on
    /// (recording the paths they touch); catch-up passes copy those paths again until few are
    /// left; the last pass runs under the write barrier, then the target joins the membership.
    pub(super) fn run_resync(
        &self,
        run: &Arc<Run>,
        first_pass: Result<BTreeMap<PathBuf, bool>, String>,
    ) {
        let (src, dst) = (&self.replicas[run.source], &self.replicas[run.target]);
        log::warn!(
            "resync of replica {} from {} started on {} (rate limit: {})",
            dst.path.display(),
            src.path.display(),
            self.mountpoint,
            crate::rules::throttle::format_rate(run.progress.limit())
        );
        let (result, engine) = match self.engine_for(run) {
            Ok(engine) => (self.resync_passes(run, &engine, first_pass), Some(engine)),
            Err(e) => (Err(e), None),
        };
        if result.is_err() {
            run.cancel.store(true, Ordering::Relaxed);
        }
        // The copy thread may still be stuck on a hung replica: the run is idle once it lets
        // go of the engine.
        match engine {
            Some(engine) => {
                let run = Arc::clone(run);
                let _ = std::thread::Builder::new()
                    .name("resync-idle".into())
                    .spawn(move || {
                        drop(engine.lock());
                        run.idle.store(true, Ordering::Release);
                    });
            }
            None => run.idle.store(true, Ordering::Release),
        }
        let replaced = self.join_ended(run);
        run.finish(result.clone());
        if let Some(old) = replaced {
            self.retire_replaced(run, &old);
        }
        match &result {
            Ok(()) => log::info!(
                "resync of replica {} {}",
                dst.path.display(),
                crate::view::progress::describe(&run.snapshot())
            ),
            Err(e) => log::error!(
                "resync of replica {} failed: {e}; it stays out of service",
                dst.path.display()
            ),
        }
    }

    pub(super) fn resync_passes(
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
        let barrier = self.exclusive();
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

    /// The resync engine copying `run.source` onto `run.target`, with the run's progress and
    /// cancel flag: every copy between replicas (a resync, crash recovery, verify's heal) is
    /// made by one, in passes run by [`ReplicaSet::supervised`].
    pub(super) fn engine_for(&self, run: &Run) -> Result<Arc<Mutex<Engine>>, String> {
        Engine::new(
            &self.replicas[run.source],
            &self.replicas[run.target],
            Arc::clone(&run.progress),
            Arc::clone(&run.cancel),
        )
        .map(|e| Arc::new(Mutex::new(e)))
    }

    /// Runs one pass of `job` on the engine in a thread of its own and waits for it, failing
    /// when the source leaves service or nothing moves for the deadline (a hung replica).
    pub(super) fn supervised(
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
            if !self.may_write() {
                run.cancel.store(true, Ordering::Relaxed);
                return Err("this daemon no longer holds the replica set's lease".into());
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
}
