//! The queue between a replica and its worker threads. A job wakes one idle worker, and only
//! that one: a `Receiver` shared behind a mutex (what this replaces) also woke a second
//! worker each time, the one that took over the wait as the first let go of the mutex: one
//! context switch per job for nothing, on network replicas, where every job is handed over.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

/// A unit of work run on one of a replica's worker threads.
pub type Job = Box<dyn FnOnce() + Send>;

struct Queue {
    state: Mutex<State>,
    ready: Condvar,
}

struct State {
    jobs: VecDeque<Job>,
    /// Live [`JobSender`]s: at zero (and once the queue is empty) the workers leave.
    senders: usize,
}

/// A handle that queues jobs for the workers of one replica. The workers leave once every
/// handle is dropped and the jobs queued before are done.
pub struct JobSender(Arc<Queue>);

impl JobSender {
    /// A queue served by `workers` threads (at least one) named `name-N`.
    pub fn start(name: &str, workers: usize) -> std::io::Result<JobSender> {
        let queue = Arc::new(Queue {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                senders: 1,
            }),
            ready: Condvar::new(),
        });
        // Made first: if a thread cannot start, its drop sends the started ones away.
        let sender = JobSender(Arc::clone(&queue));
        for n in 0..workers.max(1) {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || queue.serve())?;
        }
        Ok(sender)
    }

    /// Queues `job`; one idle worker (if any) wakes for it.
    pub fn send(&self, job: Job) {
        self.0.lock().jobs.push_back(job);
        self.0.ready.notify_one();
    }
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A worker's life: the next job, run with no lock held, until the senders are gone.
    fn serve(&self) {
        loop {
            let job = {
                let mut state = self.lock();
                loop {
                    if let Some(job) = state.jobs.pop_front() {
                        break job;
                    }
                    if state.senders == 0 {
                        return;
                    }
                    state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
                }
            };
            job();
        }
    }
}

impl Clone for JobSender {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        JobSender(Arc::clone(&self.0))
    }
}

impl Drop for JobSender {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.senders -= 1;
        if state.senders == 0 {
            drop(state);
            self.0.ready.notify_all();
        }
    }
}

impl std::fmt::Debug for JobSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobSender")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn jobs_run_in_parallel_up_to_the_worker_count() {
        let q = JobSender::start("test-par", 3).unwrap();
        let (started, seen) = mpsc::channel();
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        for i in 0..3 {
            let started = started.clone();
            let gate = Arc::clone(&gate);
            q.send(Box::new(move || {
                started.send(i).unwrap();
                let (open, cv) = &*gate;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
            }));
        }
        // All three run at once, each on its own worker, while none has finished.
        let mut got: Vec<i32> = (0..3)
            .map(|_| seen.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, [0, 1, 2]);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
    }

    #[test]
    fn a_job_wakes_one_worker_only() {
        // Four idle workers, jobs sent one at a time: each is taken by one worker, and the
        // others stay asleep (their wait is not ended by the hand-over of a job).
        let q = JobSender::start("test-one", 4).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let before = woken_threads("test-one");
        for _ in 0..20 {
            let (tx, rx) = mpsc::channel();
            q.send(Box::new(move || tx.send(()).unwrap()));
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        let after = woken_threads("test-one");
        assert_eq!(after.len(), 4, "the four workers");
        let switches: u64 = after.iter().map(|(t, n)| n - before[t]).sum();
        assert!(
            switches <= 24,
            "20 jobs cost the workers {switches} wake-ups (one each expected, a few spare)"
        );
    }

    #[test]
    fn workers_leave_once_every_sender_is_gone_and_the_queue_is_done() {
        let q = JobSender::start("test-end", 2).unwrap();
        let other = q.clone();
        let (tx, rx) = mpsc::channel();
        for i in 0..10 {
            let tx = tx.clone();
            other.send(Box::new(move || {
                std::thread::sleep(Duration::from_millis(2));
                tx.send(i).unwrap();
            }));
        }
        drop(tx);
        drop(q);
        drop(other);
        // Every job queued before the last sender went still ran, then the workers left
        // (their clones of `tx` were in the jobs: the channel closes once all ran).
        let mut got: Vec<i32> = rx.iter().collect();
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !woken_threads("test-end").is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the workers are still there"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Voluntary context switches of this process's threads named `prefix-N`, by thread id.
    fn woken_threads(prefix: &str) -> std::collections::HashMap<String, u64> {
        let mut out = std::collections::HashMap::new();
        for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if !comm.trim().starts_with(&format!("{prefix}-")) {
                continue;
            }
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            if let Some(n) = status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            {
                let tid = t.file_name().to_string_lossy().into_owned();
                out.insert(tid, n.trim().parse().unwrap());
            }
        }
        out
    }
}
