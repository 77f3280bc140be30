//! One resync as the rest of the daemon sees it ([`Run`]): source and target, its counters,
//! its state (running, done, failed), the cancel flag, and the dirty set every mutation records
//! while it runs; [`Run::snapshot`] is what `chironctl status` shows.
//!
//! Shared state only: it copies nothing and touches no replica (the engine does, `copy.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::progress::Progress;
use crate::view::snapshot::ResyncProgress;

/// What a running (or the last) resync is doing, for the snapshot.
#[derive(Clone, Debug, Default)]
pub struct RunStatus {
    /// `running`, `done` or `failed`.
    pub state: String,
    /// `copying`, `catching up`, `barrier` while running.
    pub phase: String,
    /// Why it failed.
    pub error: String,
    /// When it ended.
    pub ended: Option<Instant>,
}

/// One resync of `target` from `source`: its counters, its state and the paths mutated since
/// it started (the dirty set, recorded by every mutation while it runs).
#[derive(Debug)]
pub struct Run {
    /// Replica copied from.
    pub source: usize,
    /// Replica brought back.
    pub target: usize,
    /// Counters.
    pub progress: Arc<Progress>,
    /// Set to make the copy stop at its next step.
    pub cancel: Arc<AtomicBool>,
    /// When it started.
    pub started: Instant,
    /// State for the snapshot.
    pub status: Mutex<RunStatus>,
    /// Paths mutated since recording began (`true`: compare the whole subtree); None when
    /// not recording.
    dirty: Mutex<Option<BTreeMap<PathBuf, bool>>>,
    /// The copy threads have all ended (a hung one keeps a new resync from starting).
    pub idle: AtomicBool,
}

impl Run {
    /// A run starting now, recording mutated paths from the start.
    pub fn new(source: usize, target: usize) -> Self {
        Run {
            source,
            target,
            progress: Arc::default(),
            cancel: Arc::default(),
            started: Instant::now(),
            status: Mutex::new(RunStatus {
                state: "running".into(),
                phase: "copying".into(),
                ..RunStatus::default()
            }),
            dirty: Mutex::new(Some(BTreeMap::new())),
            idle: AtomicBool::new(false),
        }
    }

    /// Records that a mutation touches `path` (a rename's paths with `recursive`).
    pub fn note(&self, path: &Path, recursive: bool) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = dirty.as_mut() {
            let e = d.entry(path.to_path_buf()).or_insert(false);
            *e |= recursive;
        }
    }

    /// The paths recorded so far; recording goes on only if `keep_recording`.
    pub fn take_dirty(&self, keep_recording: bool) -> BTreeMap<PathBuf, bool> {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        let taken = dirty.take().unwrap_or_default();
        if keep_recording {
            *dirty = Some(BTreeMap::new());
        }
        taken
    }

    /// Whether the run has ended (done or failed).
    pub fn ended(&self) -> bool {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ended
            .is_some()
    }

    /// Sets the phase shown while running.
    pub fn set_phase(&self, phase: &str) {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).phase = phase.into();
    }

    /// Ends the run: done, or failed with `error`.
    pub fn finish(&self, result: Result<(), String>) {
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        st.ended = Some(Instant::now());
        st.phase.clear();
        match result {
            Ok(()) => st.state = "done".into(),
            Err(e) => {
                st.state = "failed".into();
                st.error = e;
            }
        }
        drop(st);
        self.take_dirty(false);
    }

    /// The run as shown by `chironctl status`.
    pub fn snapshot(&self) -> ResyncProgress {
        let st = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let end = st.ended.unwrap_or_else(Instant::now);
        let elapsed = end.duration_since(self.started);
        let bytes = self.progress.bytes.load(Ordering::Relaxed);
        let entries = self.progress.entries.load(Ordering::Relaxed);
        // Running: the smoothed rates and this pass's share; ended: the averages.
        let ((bytes_per_sec, entries_per_sec), (total, done)) = if st.ended.is_none() {
            (self.progress.rates(), self.progress.pass())
        } else {
            let secs = elapsed.as_secs_f64().max(0.001);
            let avg = |n: u64| (n as f64 / secs).round() as u64;
            ((avg(bytes), avg(entries)), (None, entries))
        };
        ResyncProgress {
            state: st.state,
            phase: st.phase,
            source: self.source,
            files: self.progress.files.load(Ordering::Relaxed),
            bytes,
            checked: self.progress.checked.load(Ordering::Relaxed),
            seconds: elapsed.as_secs(),
            error: st.error,
            total,
            done,
            bytes_per_sec,
            entries_per_sec,
            eta: crate::rules::throttle::eta(total, done, entries_per_sec),
            rate_limit: self.progress.limit(),
        }
    }
}
