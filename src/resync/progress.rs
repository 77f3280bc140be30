//! A resync's counters ([`Progress`]): what the copy has done so far, this pass's share, the
//! smoothed rates, and the rate limit the content copy obeys.
//!
//! Shared by the copy engine (which counts and paces) and the run (which shows them). Atomics
//! and two small locks; it touches no replica.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::rules::throttle::{RateMeter, TokenBucket};

/// Counters shown while a resync runs, and the rate limit its copy loop obeys.
#[derive(Debug, Default)]
pub struct Progress {
    /// Entries created, replaced, linked, removed or updated on the target.
    pub files: AtomicU64,
    /// Bytes of file content copied.
    pub bytes: AtomicU64,
    /// Entries examined (also the watchdog's proof of life).
    pub checked: AtomicU64,
    /// Entries examined, only them (`checked` also counts copied chunks).
    pub entries: AtomicU64,
    /// `entries` when the current pass began.
    pass_start: AtomicU64,
    /// Entries the current pass is to examine, plus one; 0 when unknown.
    pass_total: AtomicU64,
    /// The content copy's token bucket (None: no limit).
    bucket: Mutex<Option<TokenBucket>>,
    /// The smoothed rates, fed by whoever takes a snapshot.
    meter: Mutex<RateMeter>,
}

impl Progress {
    /// Limits the copy of content bytes to `bytes_per_sec` (0: no limit).
    pub fn set_limit(&self, bytes_per_sec: u64) {
        let bucket = (bytes_per_sec > 0).then(|| TokenBucket::new(bytes_per_sec, Instant::now()));
        *self.bucket.lock().unwrap_or_else(|e| e.into_inner()) = bucket;
    }

    /// The limit in bytes per second (0: none).
    pub fn limit(&self) -> u64 {
        let bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.as_ref().map_or(0, |b| b.rate())
    }

    /// The largest piece of content to copy in one call.
    pub(super) fn chunk(&self) -> u64 {
        let bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.as_ref().map_or(u64::MAX, |b| b.chunk())
    }

    /// Spends `n` copied bytes; how long to wait before copying more.
    pub(super) fn spend(&self, n: u64) -> Duration {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(n, Instant::now()))
    }

    /// A pass begins that is to examine `total` entries (None: not known in advance).
    pub fn begin_pass(&self, total: Option<u64>) {
        self.pass_start
            .store(self.entries.load(Ordering::Relaxed), Ordering::Relaxed);
        self.pass_total
            .store(total.map_or(0, |t| t.saturating_add(1)), Ordering::Relaxed);
    }

    /// (entries to examine in this pass if known, entries examined in it so far).
    pub fn pass(&self) -> (Option<u64>, u64) {
        let total = self.pass_total.load(Ordering::Relaxed).checked_sub(1);
        let done = self
            .entries
            .load(Ordering::Relaxed)
            .saturating_sub(self.pass_start.load(Ordering::Relaxed));
        (total, done)
    }

    /// The smoothed (bytes/s, entries/s) as of now.
    pub fn rates(&self) -> (u64, u64) {
        let mut meter = self.meter.lock().unwrap_or_else(|e| e.into_inner());
        meter.sample(
            Instant::now(),
            self.bytes.load(Ordering::Relaxed),
            self.entries.load(Ordering::Relaxed),
        )
    }
}
