//! The lock-free counters behind the Prometheus metrics (`view::metrics`): per replica and
//! operation class, jobs, fault answers, timeouts and a fixed-bucket latency histogram; a
//! replica's capacity from the health check; the bytes read and written through the mount.
//! Relaxed atomics only: counting a job costs a clock read and two uncontended adds on one
//! cache line, no lock and no allocation on the request path. Imports only `view::metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::view::metrics::{BUCKET_SLOTS, ClassCounts, OpClass, Space, bucket_of};

/// One operation class's counters on one replica, in one aligned block whose first cache line
/// holds the sum and the fast buckets: counting a quick job touches that line only.
#[derive(Debug, Default)]
#[repr(C, align(64))]
struct ClassStats {
    sum_nanos: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    /// Ended jobs per latency slot; their total is the job count.
    buckets: [AtomicU64; BUCKET_SLOTS],
}

/// A replica's job counters, by operation class.
#[derive(Debug, Default)]
pub struct OpStats {
    classes: [ClassStats; OpClass::ALL.len()],
}

impl OpStats {
    /// A job of `class` ended after `took`; `fault`: it answered a fault errno. Two relaxed
    /// adds (three for a fault).
    pub fn finished(&self, class: OpClass, took: Duration, fault: bool) {
        let c = &self.classes[class.slot()];
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        c.buckets[bucket_of(nanos)].fetch_add(1, Ordering::Relaxed);
        c.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        if fault {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A job of `class` was not answered by the deadline (it counts as ended when it ends).
    pub fn timed_out(&self, class: OpClass) {
        self.classes[class.slot()]
            .timeouts
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now, in [`OpClass::ALL`] order.
    pub fn sample(&self) -> Vec<ClassCounts> {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.classes
            .iter()
            .map(|c| {
                let buckets: Vec<u64> = c.buckets.iter().map(load).collect();
                ClassCounts {
                    ops: buckets.iter().sum(),
                    errors: load(&c.errors),
                    timeouts: load(&c.timeouts),
                    buckets,
                    sum_nanos: load(&c.sum_nanos),
                }
            })
            .collect()
    }
}

/// A replica's capacity as the last health check that reached it found it.
#[derive(Debug, Default)]
pub struct SpaceStats {
    size_bytes: AtomicU64,
    free_bytes: AtomicU64,
    avail_bytes: AtomicU64,
    inodes: AtomicU64,
    free_inodes: AtomicU64,
    /// Set once a statvfs answered.
    known: std::sync::atomic::AtomicBool,
}

impl SpaceStats {
    /// Stores what a statvfs of the replica answered.
    pub fn store(&self, sp: Space) {
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&self.size_bytes, sp.size_bytes);
        set(&self.free_bytes, sp.free_bytes);
        set(&self.avail_bytes, sp.avail_bytes);
        set(&self.inodes, sp.inodes);
        set(&self.free_inodes, sp.free_inodes);
        self.known.store(true, Ordering::Release);
    }

    /// The capacity, once measured.
    pub fn sample(&self) -> Option<Space> {
        if !self.known.load(Ordering::Acquire) {
            return None;
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Some(Space {
            size_bytes: load(&self.size_bytes),
            free_bytes: load(&self.free_bytes),
            avail_bytes: load(&self.avail_bytes),
            inodes: load(&self.inodes),
            free_inodes: load(&self.free_inodes),
        })
    }
}

/// Bytes of file content through the mount.
#[derive(Debug, Default)]
pub struct IoTotals {
    read: AtomicU64,
    written: AtomicU64,
}

impl IoTotals {
    /// `n` bytes were read for a caller.
    pub fn read(&self, n: usize) {
        self.read.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `n` bytes were written by a caller (to every replica).
    pub fn written(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// (read, written) so far.
    pub fn sample(&self) -> (u64, u64) {
        (
            self.read.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_land_in_their_class_and_bucket() {
        let s = OpStats::default();
        s.finished(OpClass::DataWrite, Duration::from_micros(80), false);
        s.timed_out(OpClass::DataWrite);
        s.finished(OpClass::DataWrite, Duration::from_secs(3), true);
        let all = s.sample();
        let w = &all[OpClass::DataWrite.slot()];
        assert_eq!((w.ops, w.errors, w.timeouts), (2, 1, 1));
        assert_eq!(w.buckets[bucket_of(80_000)], 1);
        assert_eq!(w.buckets[bucket_of(3_000_000_000)], 1);
        assert_eq!(w.buckets.iter().sum::<u64>(), 2);
        assert_eq!(w.sum_nanos, 3_000_080_000);
        assert_eq!(
            all[OpClass::DataRead.slot()],
            ClassCounts {
                buckets: vec![0; BUCKET_SLOTS],
                ..ClassCounts::default()
            }
        );
    }

    #[test]
    fn space_is_unknown_until_measured() {
        let s = SpaceStats::default();
        assert_eq!(s.sample(), None);
        s.store(Space::of_statvfs(4096, 10, 4, 3, 100, 60));
        let sp = s.sample().unwrap();
        assert_eq!(
            (sp.size_bytes, sp.free_bytes, sp.avail_bytes),
            (40960, 16384, 12288)
        );
        assert_eq!((sp.inodes, sp.free_inodes), (100, 60));
    }

    /// What counting costs per job, as the fan-out does it (a clock read, two relaxed adds),
    /// from one thread and from 4 threads on one replica's counters at once (the worst
    /// case: one cache line shared), in wall time per job of all threads. A measurement, run by hand; the bound only catches a lock or an
    /// allocation creeping in.
    #[test]
    #[ignore = "a measurement: cargo test --release --lib counting_cost -- --ignored --nocapture"]
    fn counting_cost() {
        use std::sync::Arc;
        use std::time::Instant;
        const JOBS: u32 = 2_000_000;
        let per_job = |threads: u32, count: bool| {
            let stats = Arc::new(OpStats::default());
            let start = Instant::now();
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let stats = Arc::clone(&stats);
                    std::thread::spawn(move || {
                        let mut clock = Instant::now();
                        for _ in 0..JOBS {
                            if count {
                                // As run_checked does it: one clock read per job.
                                let t = Instant::now();
                                stats.finished(OpClass::DataWrite, t - clock, false);
                                clock = t;
                            } else {
                                std::hint::black_box(&stats);
                            }
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            start.elapsed().as_nanos() as f64 / f64::from(JOBS * threads)
        };
        for threads in [1, 4] {
            let bare = per_job(threads, false);
            let counted = per_job(threads, true);
            println!(
                "{threads} thread(s): {:.1} ns of wall time per job counted (loop alone {bare:.1} ns)",
                counted - bare
            );
            assert!(counted - bare < 1000.0, "{counted} ns per job");
        }
    }
}
