//! The fan-out: runs a job on every in-service replica in parallel within the deadline and
//! arbitrates the outcomes (mutations), or on one replica after another until one answers
//! (reads with fail-over). Faults found here go to `takeout.rs`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::{ReplicaJob, ReplicaSet};
use crate::engine::replica::Replica;
use crate::rules::arbitrate::{Fault, Outcome, arbitrate, is_replica_fault};
use crate::sys::{self, Credentials};
use crate::view::metrics::OpClass;

/// The answers of one fan-out, filled by the replicas' workers (and the calling thread): the
/// caller sleeps until the last one is in or the deadline passes, woken once, not once per
/// answer (a wake-up is a context switch, the largest cost of a small network write).
struct Gather<A> {
    slots: Mutex<Vec<Option<A>>>,
    all_in: Condvar,
}

impl<A> Gather<A> {
    fn new(n: usize) -> Self {
        Gather {
            slots: Mutex::new((0..n).map(|_| None).collect()),
            all_in: Condvar::new(),
        }
    }

    /// Answer `pos` is in (a late one, after the caller left, is kept and dropped with it).
    fn put(&self, pos: usize, answer: A) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots[pos] = Some(answer);
        if slots.iter().all(Option::is_some) {
            self.all_in.notify_one();
        }
    }

    /// The answers in by `deadline` (None: none by then), once all are in or at the deadline.
    fn wait_until(&self, deadline: Instant) -> Vec<Option<A>> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        while slots.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            slots = self
                .all_in
                .wait_timeout(slots, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        slots.iter_mut().map(Option::take).collect()
    }
}

impl ReplicaSet {
    /// Runs `job` on each of `targets` in parallel, under `creds`, and collects the outcomes
    /// in the order of `targets`. A replica that has not answered by the deadline is TimedOut;
    /// its worker goes on alone and its late answer is dropped.
    pub fn run<T: Send + 'static>(
        &self,
        targets: &[usize],
        creds: &Credentials,
        job: &ReplicaJob<T>,
    ) -> Vec<(usize, Outcome<T>)> {
        self.run_checked(targets, creds, job, false, OpClass::Internal)
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
    pub(super) fn run_checked<T: Send + 'static>(
        &self,
        targets: &[usize],
        creds: &Credentials,
        job: &ReplicaJob<T>,
        spread: bool,
        class: OpClass,
    ) -> Vec<(usize, Outcome<T>, Option<String>)> {
        type Answer<T> = (Outcome<T>, Option<String>);
        /// Runs the job, timed from `start` and counted in the replica's metrics (two relaxed
        /// adds, one cache line); returns the end, the start of the next job run here.
        fn answer<T>(
            replica: &Replica,
            creds: &Credentials,
            job: &ReplicaJob<T>,
            class: OpClass,
            start: Instant,
        ) -> (Answer<T>, Instant) {
            let result = sys::set_thread_credentials(creds).and_then(|()| job(replica));
            let root_problem = match &result {
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESTALE)) => {
                    replica.check_root().err()
                }
                _ => None,
            };
            let fault = root_problem.is_some()
                || matches!(&result, Err(e) if is_replica_fault(e.raw_os_error().unwrap_or(libc::EIO)));
            let end = Instant::now();
            replica.stats.finished(class, end - start, fault);
            let outcome = match result {
                Ok(v) => Outcome::Done(v),
                Err(e) => Outcome::Failed(e.raw_os_error().unwrap_or(libc::EIO)),
            };
            ((outcome, root_problem), end)
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
            // Nothing to wait for (the common case on local disks): nothing to gather.
            // One clock read per job: each one's end is the next one's start.
            let mut clock = Instant::now();
            return inline
                .into_iter()
                .map(|i| {
                    let ((outcome, problem), end) =
                        answer(&self.replicas[i], creds, job, class, clock);
                    clock = end;
                    (i, outcome, problem)
                })
                .collect();
        }
        // One slot per target; the last answer (not each one) wakes the caller.
        let gather = Arc::new(Gather::new(targets.len()));
        for (pos, &index) in targets.iter().enumerate() {
            if inline.contains(&index) {
                continue;
            }
            let replica = Arc::clone(&self.replicas[index]);
            let job = Arc::clone(job);
            let gather = Arc::clone(&gather);
            let creds = creds.clone();
            self.replicas[index].submit(Box::new(move || {
                let (answered, _) = answer(&replica, &creds, &job, class, Instant::now());
                gather.put(pos, answered);
            }));
        }
        let mut clock = Instant::now();
        for (pos, &index) in targets.iter().enumerate() {
            if inline.contains(&index) {
                let (answered, end) = answer(&self.replicas[index], creds, job, class, clock);
                clock = end;
                gather.put(pos, answered);
            }
        }
        let got = gather.wait_until(Instant::now() + self.timeout);
        targets
            .iter()
            .zip(got)
            .map(|(&i, o)| match o {
                Some((outcome, problem)) => (i, outcome, problem),
                None => {
                    self.replicas[i].stats.timed_out(class);
                    (i, Outcome::TimedOut, None)
                }
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

    pub(super) fn mutate_with<T: Send + 'static>(
        &self,
        op: &str,
        path: &Path,
        also: Option<&Path>,
        creds: &Credentials,
        job: ReplicaJob<T>,
        spread: bool,
    ) -> Result<T, i32> {
        let barrier = self.shared_barrier();
        self.note_dirty(op, path, also);
        let job = self.journaled(op, path, also, job);
        let targets = self.priority_order();
        self.quorum.admit(op, self.quorum_members(targets.len()))?;
        if !self.may_write() {
            return Err(libc::EROFS);
        }
        if targets.is_empty() {
            return Err(libc::EIO);
        }
        let checked = self.run_checked(&targets, creds, &job, spread, OpClass::of(op, true));
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
            if targets.len() < self.replica_members() {
                // Acknowledged only once the state on disk says who missed it.
                self.persist_membership();
            }
        }
        drop(barrier);
        self.maybe_compact();
        verdict.answer
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
        self.read_known(op, path, order, creds, job, false)
    }

    /// [`ReplicaSet::read`] of an object that exists (`known`: the kernel holds its inode,
    /// and the caller keeps mutations of it out meanwhile): a replica that answers ENOENT or
    /// ESTALE is skipped too, and if another replica has the object, the first has diverged
    /// (a file removed behind the daemon's back, a restored backup): it is taken out, stale,
    /// with an alert, instead of the application getting the ENOENT.
    pub fn read_known<T: Send + 'static>(
        &self,
        op: &str,
        path: &Path,
        order: &[usize],
        creds: &Credentials,
        job: ReplicaJob<T>,
        known: bool,
    ) -> Result<(usize, T), i32> {
        let mut skipped: Vec<(usize, Fault, Option<String>)> = Vec::new();
        let mut absent: Vec<(usize, i32)> = Vec::new();
        let diverged = |absent: Vec<(usize, i32)>, served_by: usize| {
            if absent.is_empty() {
                return; // every read that found its replica whole: no words to make
            }
            let problem = format!(
                "it is on {}: the replicas diverged",
                self.replicas[served_by].path.display()
            );
            for (index, errno) in absent {
                self.take_out_with(index, op, path, Fault::Errno(errno), Some(&problem), true);
            }
        };
        let blame = |skipped: Vec<(usize, Fault, Option<String>)>, success: bool| {
            for (index, fault, problem) in skipped {
                if success || fault == Fault::TimedOut || problem.is_some() {
                    self.take_out_with(index, op, path, fault, problem.as_deref(), false);
                }
            }
        };
        let class = OpClass::of(op, false);
        for &index in order {
            if !self.replicas[index].is_in_service() {
                continue;
            }
            match self.run_checked(&[index], creds, &job, false, class).pop() {
                Some((_, Outcome::Done(v), _)) => {
                    self.replicas[index].reads.fetch_add(1, Ordering::Relaxed);
                    blame(skipped, true);
                    diverged(absent, index);
                    return Ok((index, v));
                }
                Some((_, Outcome::Failed(errno), None))
                    if known && matches!(errno, libc::ENOENT | libc::ESTALE) =>
                {
                    absent.push((index, errno));
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
        // Absent everywhere that answered: it is gone (the usual answer, nobody diverged).
        if let Some(&(_, errno)) = absent.first() {
            blame(skipped, false);
            return Err(errno);
        }
        Err(skipped
            .iter()
            .find_map(|(_, fault, _)| match fault {
                Fault::Errno(e) => Some(*e),
                Fault::TimedOut => None,
            })
            .unwrap_or(libc::EIO))
    }
}

#[cfg(test)]
mod tests {
    use super::Gather;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn a_gather_ends_when_the_last_answer_is_in() {
        let g = Arc::new(Gather::new(3));
        g.put(1, "b");
        let workers: Vec<_> = [(0, "a"), (2, "c")]
            .into_iter()
            .map(|(pos, a)| {
                let g = Arc::clone(&g);
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    g.put(pos, a);
                })
            })
            .collect();
        let start = Instant::now();
        let got = g.wait_until(start + Duration::from_secs(10));
        assert_eq!(got, [Some("a"), Some("b"), Some("c")]);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not held to the deadline"
        );
        for w in workers {
            w.join().unwrap();
        }
    }

    #[test]
    fn a_gather_gives_what_is_in_at_the_deadline_and_keeps_late_answers_out() {
        let g = Arc::new(Gather::new(2));
        g.put(0, 7);
        let start = Instant::now();
        let got = g.wait_until(start + Duration::from_millis(50));
        assert_eq!(got, [Some(7), None]);
        assert!(start.elapsed() >= Duration::from_millis(50));
        // A late answer lands in the gather the caller has left: nobody waits, nothing breaks.
        g.put(1, 8);
        // A slot given twice keeps the later answer (and still waits for the other slot).
        let h = Gather::new(2);
        h.put(0, 1);
        h.put(0, 2);
        assert_eq!(h.wait_until(Instant::now()), [Some(2), None]);
    }
}
