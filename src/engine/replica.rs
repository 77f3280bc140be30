//! One replica: its root directory, its own worker threads (so a hung replica only blocks its
//! own workers, never the FUSE threads), its service state and its counters.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::engine::counters::{OpStats, SpaceStats};
use crate::engine::dirfds::DirFds;
use crate::engine::job_queue::{Job, JobSender};
use crate::sys;
use crate::view::snapshot::{ReplicaSnapshot, ReplicaState};

/// The service state of one replica and how it may change; pure, so it is unit-tested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceStatus {
    /// In or out of service.
    pub state: ReplicaState,
    /// Why it is out (empty when in service).
    pub reason: String,
    /// Unix time of the last change.
    pub since: u64,
    /// It missed at least one mutation while out of service (or the one that failed on it).
    pub stale: bool,
}

impl ServiceStatus {
    /// A replica starting in service.
    pub fn in_service(now: u64) -> Self {
        ServiceStatus {
            state: ReplicaState::InService,
            reason: String::new(),
            since: now,
            stale: false,
        }
    }

    /// Takes the replica out; `missed_write` says the failing operation was a mutation that
    /// the others applied. Returns false if it was already out (nothing to log).
    pub fn take_out(&mut self, reason: String, now: u64, missed_write: bool) -> bool {
        self.stale |= missed_write;
        if self.state == ReplicaState::OutOfService {
            return false;
        }
        self.state = ReplicaState::OutOfService;
        self.reason = reason;
        self.since = now;
        true
    }

    /// Records that the other replicas applied a mutation this one did not get.
    pub fn missed_mutation(&mut self) {
        if self.state == ReplicaState::OutOfService {
            self.stale = true;
        }
    }

    /// Puts the replica back in service. A stale replica is refused unless `force`: it would
    /// serve old data and resurrect deleted files.
    pub fn enable(&mut self, now: u64, force: bool) -> Result<(), String> {
        if self.state == ReplicaState::InService {
            return Err("it is already in service".into());
        }
        if self.stale && !force {
            return Err(
                "it missed writes while out of service and would serve stale data; \
                 resync it first (chironctl resync), or use --force if you have copied it by hand"
                    .into(),
            );
        }
        *self = ServiceStatus::in_service(now);
        Ok(())
    }
}

/// One replica directory and everything the daemon keeps about it.
#[derive(Debug)]
pub struct Replica {
    /// Command-line position: priority order and error choice.
    pub index: usize,
    /// Its worker threads (a replica added online gets as many as the first one has).
    pub workers: usize,
    /// Canonical path, used in logs and status.
    pub path: PathBuf,
    /// `:`-prefixed.
    pub low_priority: bool,
    /// The replica's root directory, opened once (at start, or later for a replica whose
    /// storage did not answer at start): every call is relative to it.
    root: OnceLock<Root>,
    /// An attempt to open the root is running on a worker (at most one at a time: on a dead
    /// server each attempt holds a worker until the server answers).
    opening: AtomicBool,
    jobs: JobSender,
    in_service: AtomicBool,
    status: Mutex<ServiceStatus>,
    /// Read-type requests answered.
    pub reads: AtomicU64,
    /// Mutations applied.
    pub writes: AtomicU64,
    /// Failures and timeouts.
    pub errors: AtomicU64,
    /// Jobs, fault answers, timeouts and latencies by operation class (the metrics).
    pub stats: OpStats,
    /// Capacity as the last health check found it (the metrics).
    pub space: SpaceStats,
    /// The last health check failed but the replica was kept (nothing else could serve):
    /// logged once, not every second.
    pub health_failing: AtomicBool,
    /// The health check's round trip, smoothed, in microseconds (0: not measured yet): a far
    /// replica serves no file's data while a near one can (see [`crate::rules::select`]).
    round_trip_us: AtomicU64,
    /// On a local filesystem (not NFS, FUSE/SSHFS, SMB, Ceph, 9P...): its jobs may run on the
    /// calling thread, saving two thread hand-offs per request. Network replicas, which can
    /// hang, always go through their own workers and the deadline.
    local: AtomicBool,
    /// Kept handles of the directories in use (dropped whenever it leaves or rejoins service).
    pub dirs: DirFds,
    /// It left the set (`chironctl remove`, or found left at mount): out of service for good,
    /// never resynced, enabled or shown again; its index stays taken until the next mount.
    left: AtomicBool,
}

/// An opened replica root.
#[derive(Debug)]
struct Root {
    fd: OwnedFd,
    /// (dev, ino) when opened, to notice the directory vanishing or being unmounted.
    id: (u64, u64),
}

/// The error of every call on a replica whose root has not been opened yet: its storage has
/// not answered since the daemon started (what a dead network mount answers, too).
fn not_open() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::ENOTCONN)
}

impl Replica {
    /// Opens the replica root on the calling thread and starts `workers` threads for it.
    pub fn open(
        index: usize,
        path: PathBuf,
        low_priority: bool,
        workers: usize,
    ) -> std::io::Result<Arc<Self>> {
        let r = Self::unopened(index, path, low_priority, workers)?;
        r.try_open_root()?;
        Ok(r)
    }

    /// A replica whose root is not opened yet, with its `workers` threads started: every call
    /// on it fails with ENOTCONN until [`Replica::try_open_root`] succeeds (on a worker, so
    /// that a dead server holds only that worker).
    pub fn unopened(
        index: usize,
        path: PathBuf,
        low_priority: bool,
        workers: usize,
    ) -> std::io::Result<Arc<Self>> {
        let jobs = JobSender::start(&format!("replica{index}"), workers)?;
        Ok(Arc::new(Replica {
            index,
            workers: workers.max(1),
            path,
            low_priority,
            root: OnceLock::new(),
            opening: AtomicBool::new(false),
            jobs,
            in_service: AtomicBool::new(true),
            status: Mutex::new(ServiceStatus::in_service(now())),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stats: OpStats::default(),
            space: SpaceStats::default(),
            health_failing: AtomicBool::new(false),
            round_trip_us: AtomicU64::new(0),
            local: AtomicBool::new(false),
            dirs: DirFds::default(),
            left: AtomicBool::new(false),
        }))
    }

    /// Opens the root if it is not open yet (blocks while the storage does not answer: call it
    /// on a worker). Ok once the root is open; ENOTCONN while another attempt is running.
    pub fn try_open_root(&self) -> std::io::Result<()> {
        if self.is_open() {
            return Ok(());
        }
        if self.opening.swap(true, Ordering::AcqRel) {
            return Err(not_open());
        }
        let opened = (|| {
            let fd: OwnedFd = std::fs::File::open(&self.path)?.into();
            let st = sys::fstat(fd.as_fd())?;
            Ok::<_, std::io::Error>(Root {
                id: (st.st_dev, st.st_ino),
                fd,
            })
        })();
        let result = opened.map(|root| {
            let local = sys::is_local_filesystem(root.fd.as_fd());
            if self.root.set(root).is_ok() {
                self.local.store(local, Ordering::Relaxed);
            }
        });
        self.opening.store(false, Ordering::Release);
        result
    }

    /// Whether it left the set (see the field).
    pub fn is_left(&self) -> bool {
        self.left.load(Ordering::Acquire)
    }

    /// Marks it as having left the set: taken out of service first by the caller.
    pub fn mark_left(&self) {
        self.left.store(true, Ordering::Release);
        self.dirs.drop_all();
    }

    /// Lets go of its directory once it left and its last records are written, on one of its
    /// workers (a dead server holds that worker, never the caller): its filesystem can then
    /// be unmounted.
    pub fn release_root(self: &Arc<Self>) {
        let replica = Arc::clone(self);
        self.submit(Box::new(move || {
            if let Some(root) = replica.root.get()
                && let Err(e) = sys::retarget_to_null(root.fd.as_fd())
            {
                log::warn!(
                    "replica {} left but its directory stays open: {e}",
                    replica.path.display()
                );
            }
        }));
    }

    /// Whether the root has been opened (at start, or since).
    pub fn is_open(&self) -> bool {
        self.root.get().is_some()
    }

    /// Whether its jobs may run on the calling thread (a local filesystem, see the field).
    pub fn is_local(&self) -> bool {
        self.local.load(Ordering::Relaxed)
    }

    /// Sends every job of this replica through its workers and the deadline, as for a network
    /// replica (for a local disk that must never hold a caller, and for tests of hangs).
    pub fn always_use_workers(&self) {
        self.local.store(false, Ordering::Relaxed);
    }

    /// Records a health check's round trip: a quarter of the way from the smoothed one (a
    /// burst does not swing the choice of data replica; a lasting change does in seconds).
    pub fn note_round_trip(&self, took: std::time::Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = self.round_trip_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 4 + sample / 4
        };
        self.round_trip_us.store(new.max(1), Ordering::Relaxed);
    }

    /// The smoothed round trip (None: not measured yet).
    pub fn round_trip(&self) -> Option<std::time::Duration> {
        match self.round_trip_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(std::time::Duration::from_micros(us)),
        }
    }

    /// The root directory fd, base of every `*at` call; ENOTCONN while it has not been opened
    /// (the replica's storage has not answered since start).
    pub fn root(&self) -> std::io::Result<BorrowedFd<'_>> {
        self.root.get().map(|r| r.fd.as_fd()).ok_or_else(not_open)
    }

    /// Runs `job` on this replica's own worker and waits for it at most `timeout`: None when
    /// it gave no answer in time (a dead server holds that worker, never the caller).
    pub fn call_within<T: Send + 'static>(
        self: &Arc<Self>,
        timeout: Duration,
        job: impl FnOnce(&Replica) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        let replica = Arc::clone(self);
        self.submit(Box::new(move || {
            let _ = tx.send(job(&replica));
        }));
        rx.recv_timeout(timeout).ok()
    }

    /// Queues a job on this replica's workers.
    pub fn submit(&self, job: Job) {
        self.jobs.send(job);
    }

    /// Wraps a descriptor opened on this replica so that it is closed on this replica's own
    /// workers: close(2) can block (a FUSE or NFS replica flushes on close, forever if its
    /// server hangs), and must then block only this replica, never a FUSE thread, another
    /// replica's worker, or whoever held a lock while dropping the last reference.
    /// On a local filesystem, where close(2) does not wait for a server, the descriptor is
    /// closed where it is dropped (a hand-off to a worker costs more than the close).
    pub fn adopt(&self, fd: OwnedFd) -> ReplicaFd {
        ReplicaFd {
            fd: Some(fd),
            jobs: (!self.is_local()).then(|| self.jobs.clone()),
        }
    }

    /// Whether it takes part in reads and writes (lock-free, checked on every request).
    pub fn is_in_service(&self) -> bool {
        self.in_service.load(Ordering::Acquire)
    }

    /// Applies `change` to the service status and mirrors the result in the fast flag.
    pub fn update_status<R>(&self, change: impl FnOnce(&mut ServiceStatus) -> R) -> R {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let r = change(&mut status);
        let in_service = status.state == ReplicaState::InService;
        if self.in_service.swap(in_service, Ordering::AcqRel) != in_service {
            // Out of service a resync may replace its directories.
            self.dirs.drop_all();
        }
        r
    }

    /// Checks that the root is still the directory we opened: not deleted, not unmounted or
    /// replaced. Returns the problem in words.
    pub fn check_root(&self) -> Result<(), String> {
        let Some(root) = self.root.get() else {
            return Err("its directory has not answered since the daemon started".into());
        };
        let st = sys::fstat(root.fd.as_fd()).map_err(|e| format!("cannot stat its root: {e}"))?;
        if st.st_nlink == 0 {
            return Err("its directory was deleted".into());
        }
        // Followed: a replica path that was not made canonical (its storage did not answer
        // when the command line was checked) may end in a symlink to the directory.
        let now =
            std::fs::metadata(&self.path).map_err(|e| format!("its directory is gone: {e}"))?;
        use std::os::unix::fs::MetadataExt;
        if (now.dev(), now.ino()) != root.id {
            return Err("its directory was replaced or unmounted".into());
        }
        Ok(())
    }

    /// The replica's row in a snapshot.
    pub fn snapshot(&self) -> ReplicaSnapshot {
        let status = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        ReplicaSnapshot {
            index: self.index,
            path: self.path.display().to_string(),
            low_priority: self.low_priority,
            state: status.state,
            reason: status.reason,
            since: status.since,
            stale: status.stale,
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            resync: None,
            membership: None,
        }
    }
}

/// Opens the roots of `replicas` (made by [`Replica::unopened`]), each on its own workers, all
/// at once, waiting for each at most its `deadlines` entry (None: opened in the background,
/// not waited for). `waiting` is told, once, of each replica still silent after a second.
/// Per replica: Ok once its root is open, or the error (a timeout is `ErrorKind::TimedOut`).
/// A replica that answers later opens then (its worker keeps waiting on the server), or at
/// the next probe of it.
pub fn open_all_within(
    replicas: &[Arc<Replica>],
    deadlines: &[Option<Duration>],
    waiting: impl Fn(&Replica),
) -> Vec<std::io::Result<()>> {
    let start = Instant::now();
    let pending: Vec<Receiver<std::io::Result<()>>> = replicas
        .iter()
        .map(|r| {
            let (tx, rx) = std::sync::mpsc::channel();
            let replica = Arc::clone(r);
            r.submit(Box::new(move || {
                let _ = tx.send(replica.try_open_root());
            }));
            rx
        })
        .collect();
    let timed_out = || Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
    let mut results: Vec<Option<std::io::Result<()>>> = deadlines
        .iter()
        .map(|d| d.is_none().then(timed_out))
        .collect();
    let mut told = false;
    loop {
        let waited = start.elapsed();
        for ((slot, rx), deadline) in results.iter_mut().zip(&pending).zip(deadlines) {
            if slot.is_some() {
                continue;
            }
            if let Ok(answer) = rx.try_recv() {
                *slot = Some(answer);
            } else if deadline.is_none_or(|d| waited >= d) {
                *slot = Some(timed_out());
            }
        }
        if results.iter().all(Option::is_some) {
            break;
        }
        if !told && waited >= Duration::from_secs(1) {
            told = true;
            for (r, slot) in replicas.iter().zip(&results) {
                if slot.is_none() {
                    waiting(r);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(timed_out))
        .collect()
}

/// A descriptor on one replica, closed on that replica's workers when dropped (see
/// [`Replica::adopt`]). Dropping it never blocks on a network replica.
#[derive(Debug)]
pub struct ReplicaFd {
    fd: Option<OwnedFd>,
    /// The replica's workers; None on a local replica (closed in place).
    jobs: Option<JobSender>,
}

impl AsFd for ReplicaFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_ref().expect("only taken in drop").as_fd()
    }
}

impl Drop for ReplicaFd {
    fn drop(&mut self) {
        if let (Some(fd), Some(jobs)) = (self.fd.take(), &self.jobs) {
            jobs.send(Box::new(move || drop(fd)));
        }
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopted_descriptors_are_closed_on_the_replicas_workers_without_blocking() {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join(format!("chironfs-adopt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // One worker, held busy: the close must wait behind it, and the drop must not.
        let r = Replica::open(0, dir.clone(), false, 1).unwrap();
        r.always_use_workers(); // as for a network replica
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        r.submit(Box::new(move || {
            let _ = hold_rx.recv();
        }));
        let fd: OwnedFd = std::fs::File::open(&dir).unwrap().into();
        let raw = fd.as_raw_fd();
        let adopted = r.adopt(fd);
        assert_eq!(adopted.as_fd().as_raw_fd(), raw);
        drop(adopted);
        // Still our directory (another test thread may reuse the number once it is closed).
        let open = || std::fs::read_link(format!("/proc/self/fd/{raw}")).ok() == Some(dir.clone());
        assert!(open(), "closed on the dropping thread");
        hold_tx.send(()).unwrap();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while open() && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!open(), "never closed");
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn a_local_replicas_descriptors_are_closed_in_place() {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join(format!("chironfs-local-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = Replica::open(0, dir.clone(), false, 1).unwrap();
        assert!(r.is_local(), "a temp directory is on a local filesystem");
        // The only worker is held busy: a close queued to it could not happen yet.
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        r.submit(Box::new(move || {
            let _ = hold_rx.recv();
        }));
        let fd: OwnedFd = std::fs::File::open(&dir).unwrap().into();
        let raw = fd.as_raw_fd();
        drop(r.adopt(fd));
        let target = std::fs::read_link(format!("/proc/self/fd/{raw}")).ok();
        assert_ne!(target, Some(dir.clone()), "still open after the drop");
        hold_tx.send(()).unwrap();
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn taken_out_by_a_failed_write_is_stale_and_refused_back_without_force() {
        let mut s = ServiceStatus::in_service(1);
        assert!(s.take_out("write /f failed: EIO".into(), 2, true));
        assert_eq!(s.state, ReplicaState::OutOfService);
        assert!(s.stale);
        let err = s.enable(3, false).unwrap_err();
        assert!(err.contains("missed writes"), "{err}");
        assert!(s.enable(3, true).is_ok());
        assert_eq!(s.state, ReplicaState::InService);
        assert!(!s.stale);
    }

    #[test]
    fn admin_disable_without_writes_can_be_enabled_again() {
        let mut s = ServiceStatus::in_service(1);
        assert!(s.take_out("disabled by the administrator".into(), 2, false));
        assert!(!s.stale);
        assert!(s.enable(3, false).is_ok());
    }

    #[test]
    fn a_mutation_while_out_makes_it_stale() {
        let mut s = ServiceStatus::in_service(1);
        s.missed_mutation();
        assert!(
            !s.stale,
            "in service replicas get the mutation, they do not miss it"
        );
        s.take_out("admin".into(), 2, false);
        s.missed_mutation();
        assert!(s.stale);
    }

    #[test]
    fn second_take_out_keeps_first_reason_and_reports_no_change() {
        let mut s = ServiceStatus::in_service(1);
        assert!(s.take_out("first".into(), 2, false));
        assert!(!s.take_out("second".into(), 3, false));
        assert_eq!(s.reason, "first");
        assert_eq!(s.since, 2);
        assert!(s.enable(4, false).is_ok());
        assert_eq!(s.enable(5, false).unwrap_err(), "it is already in service");
    }
}
