//! The per-file ordering lock: every replica must apply the changes of one file in the same
//! order (the write-ordering trap: two overlapping writes racing on two replicas leave them
//! different). Writes to disjoint byte ranges commute, so they may run together; overlapping
//! writes and every other change of the file (truncate, fallocate, open, rename...) go one at
//! a time.
//!
//! Concurrent writes also finish on the replicas in different orders, so each sets the file's
//! mtime to the newest write stamp taken so far, under a small lock ([`OrderLock::stamp`]): the
//! last write to finish on a replica then sets the same newest stamp on every replica.
//!
//! On a network replica that stamp is a round trip of its own after every write (SSHFS: a
//! SETSTAT, and an LSTAT first to learn the atime it must resend), so there the times are
//! owed instead ([`OrderLock::owe_mtime`], [`OrderLock::owe_creation`]) and set once, when
//! the file is released ([`OrderLock::take_debt`]), which close(2) does not wait for; until
//! then the attributes the kernel is given show them ([`OrderLock::shown`]). A setattr that
//! sets a time itself cancels what is owed of it ([`OrderLock::forgive`]). A write owes for at
//! most [`OWED_AT_MOST`]: past it, the next write sets the time itself
//! ([`OrderLock::write_pays`]).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a file's writes may leave its mtime owed to the network replicas before a write
/// sets it itself. That call waits for the writes queued before it (SSHFS answers writes
/// before its server does), so a writer cannot pile up more than about this much of them:
/// the lease renewal and every other request queued behind them on that link wait at most
/// that long, where an unbounded backlog took seconds and fenced the daemon.
pub const OWED_AT_MOST: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
struct State {
    /// An exclusive holder is inside.
    exclusive: bool,
    /// Exclusive lockers waiting: new ranges wait behind them, so they cannot starve.
    exclusive_waiting: usize,
    /// Byte ranges `[start, end)` of the writes inside.
    ranges: Vec<(u64, u64)>,
    /// Callers asleep on `changed`: a release wakes them only if there are any (a notify is
    /// a system call even with nobody to wake, on every write).
    sleepers: usize,
}

/// Whether `[a, b)` and `[c, d)` share a byte (an empty range shares none).
fn overlaps((a, b): (u64, u64), (c, d): (u64, u64)) -> bool {
    a < d && c < b
}

/// One file's ordering lock (see the module documentation).
#[derive(Debug, Default)]
pub struct OrderLock {
    state: Mutex<State>,
    changed: Condvar,
    /// Newest write stamp, nanoseconds since the epoch.
    newest: AtomicI64,
    /// Held while one replica's mtime is set (see [`OrderLock::stamp`]).
    stamping: Mutex<()>,
    /// The times network replicas have not been given yet (see the module documentation).
    debt: Mutex<Debt>,
}

/// What is owed to the network replicas' copies of one file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Debt {
    /// The newest stamp is owed as the mtime.
    mtime: bool,
    /// A creation's stamp (nanoseconds) is owed as the atime.
    atime: Option<i64>,
    /// When the writes since the time was last set began (see [`OrderLock::write_pays`]).
    since: Option<Instant>,
    /// What a release took and is setting now (see [`OrderLock::shown`]).
    paying: Option<Owed>,
}

/// The times to set on a network replica's copy to pay what was owed: (atime, mtime) in
/// nanoseconds since the epoch, None = leave as it is (at least one is Some).
pub type Owed = (Option<i64>, Option<i64>);

/// Held while a change of the file fans out; lets the next one in when dropped.
#[derive(Debug)]
pub struct OrderGuard<'a> {
    lock: &'a OrderLock,
    range: Option<(u64, u64)>,
}

impl Drop for OrderGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.lock.state();
        match self.range {
            None => state.exclusive = false,
            Some(r) => {
                if let Some(pos) = state.ranges.iter().position(|x| *x == r) {
                    state.ranges.swap_remove(pos);
                }
            }
        }
        let wake = state.sleepers > 0;
        drop(state);
        if wake {
            self.lock.changed.notify_all();
        }
    }
}

impl OrderLock {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        state.sleepers += 1;
        let mut state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        state.sleepers -= 1;
        state
    }

    /// Alone: waits until no other change of the file is in flight.
    pub fn lock(&self) -> OrderGuard<'_> {
        let mut state = self.state();
        state.exclusive_waiting += 1;
        while state.exclusive || !state.ranges.is_empty() {
            state = self.wait(state);
        }
        state.exclusive_waiting -= 1;
        state.exclusive = true;
        OrderGuard {
            lock: self,
            range: None,
        }
    }

    /// A write of `len` bytes at `offset`: waits only for changes it does not commute with.
    pub fn lock_range(&self, offset: u64, len: u64) -> OrderGuard<'_> {
        // An empty write changes no byte but still sets the mtime: it orders like one byte.
        let range = (offset, offset.saturating_add(len.max(1)));
        let mut state = self.state();
        while state.exclusive
            || state.exclusive_waiting > 0
            || state.ranges.iter().any(|r| overlaps(*r, range))
        {
            state = self.wait(state);
        }
        state.ranges.push(range);
        OrderGuard {
            lock: self,
            range: Some(range),
        }
    }

    /// Records a write's stamp (nanoseconds since the epoch) before it fans out.
    pub fn note_stamp(&self, nanos: i64) {
        self.newest.fetch_max(nanos, Ordering::AcqRel);
    }

    /// Calls `set` with the newest stamp noted so far, under a lock: of the writes finishing on
    /// one replica, the last to set its mtime sets the newest stamp of them all.
    pub fn stamp(&self, set: impl FnOnce(i64)) {
        let _one_at_a_time = self.stamping.lock().unwrap_or_else(|e| e.into_inner());
        set(self.newest.load(Ordering::Acquire));
    }

    fn debt(&self) -> MutexGuard<'_, Debt> {
        self.debt.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write (noted with [`OrderLock::note_stamp`]) left the newest stamp owed as the mtime
    /// of the network replicas' copies.
    pub fn owe_mtime(&self) {
        self.debt().mtime = true;
    }

    /// A file created at `nanos` owes it as its atime and mtime on the network replicas.
    pub fn owe_creation(&self, nanos: i64) {
        self.note_stamp(nanos);
        let mut debt = self.debt();
        debt.mtime = true;
        debt.atime = Some(nanos);
    }

    /// A setattr set the atime and/or the mtime itself: what was owed of them is void (a
    /// later flush must not put the write's stamp over a time set after it, as `cp -p` does).
    pub fn forgive(&self, atime: bool, mtime: bool) {
        let mut debt = self.debt();
        if atime {
            debt.atime = None;
        }
        if mtime {
            debt.mtime = false;
        }
    }

    /// Something is owed.
    pub fn owes(&self) -> bool {
        let debt = self.debt();
        debt.mtime || debt.atime.is_some()
    }

    /// Before a write fans out, at `now`: whether it sets the mtime on the network replicas
    /// itself, because the writes since the time was last set began [`OWED_AT_MOST`] ago or
    /// more (then their age starts again from `now`).
    pub fn write_pays(&self, now: Instant) -> bool {
        let mut debt = self.debt();
        match debt.since {
            Some(t) if now.saturating_duration_since(t) >= OWED_AT_MOST => {
                debt.since = Some(now);
                true
            }
            Some(_) => false,
            None => {
                debt.since = Some(now);
                false
            }
        }
    }

    /// Takes what is owed, to be set on every network replica now (None: nothing owed); it
    /// is still shown ([`OrderLock::shown`]) until [`OrderLock::settled`].
    pub fn take_debt(&self) -> Option<Owed> {
        let mut debt = self.debt();
        let mtime = debt.mtime.then(|| self.newest.load(Ordering::Acquire));
        let atime = debt.atime.take();
        debt.mtime = false;
        debt.since = None;
        let owed = (atime.is_some() || mtime.is_some()).then_some((atime, mtime));
        debt.paying = owed;
        owed
    }

    /// An fsync ended: no write is queued on any replica any more, so the writes since then
    /// start a new age (see [`OrderLock::write_pays`]): a writer that syncs each write (a
    /// database, a log) leaves its times to the release instead of paying every other write.
    pub fn drained(&self) {
        self.debt().since = None;
    }

    /// What [`OrderLock::take_debt`] took is set on every replica that answered.
    pub fn settled(&self) {
        self.debt().paying = None;
    }

    /// The times the file has on every replica once what is owed is paid: the network
    /// replicas' copies show their servers' own times until then, so attributes read from
    /// one of them are given these instead (None each: nothing owed of it).
    pub fn shown(&self) -> Owed {
        let debt = self.debt();
        let (paying_atime, paying_mtime) = debt.paying.unwrap_or_default();
        let mtime =
            (debt.mtime || paying_mtime.is_some()).then(|| self.newest.load(Ordering::Acquire));
        (debt.atime.or(paying_atime), mtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    /// Whether `acquire` on another thread gets in within 200 ms while `held` is held.
    fn gets_in(lock: &Arc<OrderLock>, acquire: fn(&OrderLock)) -> bool {
        let done = Arc::new(AtomicBool::new(false));
        let (l, d) = (Arc::clone(lock), Arc::clone(&done));
        let t = std::thread::spawn(move || {
            acquire(&l);
            d.store(true, Ordering::SeqCst);
        });
        let deadline = std::time::Instant::now() + Duration::from_millis(200);
        while !done.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let got = done.load(Ordering::SeqCst);
        if got {
            t.join().unwrap();
        }
        got
    }

    #[test]
    fn disjoint_writes_run_together_and_overlapping_ones_wait() {
        let lock = Arc::new(OrderLock::default());
        let held = lock.lock_range(0, 4096);
        assert!(gets_in(&lock, |l| drop(l.lock_range(4096, 4096))));
        assert!(!gets_in(&lock, |l| drop(l.lock_range(4095, 2))));
        drop(held);
    }

    #[test]
    fn an_exclusive_change_waits_for_writes_and_writes_wait_for_it() {
        let lock = Arc::new(OrderLock::default());
        let write = lock.lock_range(0, 10);
        assert!(!gets_in(&lock, |l| drop(l.lock())));
        drop(write);
        let alone = lock.lock();
        assert!(!gets_in(&lock, |l| drop(l.lock_range(100, 10))));
        drop(alone);
        assert!(gets_in(&lock, |l| drop(l.lock_range(100, 10))));
    }

    #[test]
    fn empty_writes_at_the_same_offset_are_ordered() {
        assert!(overlaps((5, 6), (5, 6)));
        assert!(!overlaps((0, 5), (5, 9)));
        let lock = Arc::new(OrderLock::default());
        let held = lock.lock_range(5, 0);
        assert!(!gets_in(&lock, |l| drop(l.lock_range(5, 0))));
        drop(held);
    }

    #[test]
    fn a_debt_is_paid_once_with_the_newest_stamp() {
        let lock = OrderLock::default();
        assert_eq!(lock.take_debt(), None);
        lock.owe_creation(100);
        lock.note_stamp(300);
        lock.owe_mtime();
        lock.note_stamp(200);
        assert_eq!(lock.take_debt(), Some((Some(100), Some(300))));
        assert_eq!(lock.take_debt(), None, "paid");
        lock.owe_mtime();
        assert_eq!(lock.take_debt(), Some((None, Some(300))));
    }

    #[test]
    fn the_owed_times_are_shown_until_their_payment_is_settled() {
        let lock = OrderLock::default();
        assert_eq!(lock.shown(), (None, None), "nothing owed");
        lock.owe_creation(100);
        assert_eq!(lock.shown(), (Some(100), Some(100)));
        lock.note_stamp(300);
        lock.owe_mtime();
        assert_eq!(lock.shown(), (Some(100), Some(300)));
        assert_eq!(lock.take_debt(), Some((Some(100), Some(300))));
        assert_eq!(
            lock.shown(),
            (Some(100), Some(300)),
            "being paid: still shown"
        );
        lock.note_stamp(400);
        assert_eq!(lock.shown(), (Some(100), Some(400)), "the newest stamp");
        lock.settled();
        assert_eq!(lock.shown(), (None, None), "paid");
        lock.owe_mtime();
        lock.forgive(false, true);
        assert_eq!(lock.shown(), (None, None), "a time set itself is not owed");
    }

    #[test]
    fn a_write_past_the_owing_limit_pays_and_the_age_starts_again() {
        let lock = OrderLock::default();
        let t0 = Instant::now();
        assert!(!lock.write_pays(t0), "the first write owes");
        assert!(!lock.write_pays(t0 + OWED_AT_MOST / 2));
        assert!(
            lock.write_pays(t0 + OWED_AT_MOST),
            "old enough: this one pays"
        );
        assert!(!lock.write_pays(t0 + OWED_AT_MOST + OWED_AT_MOST / 2));
        assert!(lock.write_pays(t0 + OWED_AT_MOST * 2));
        lock.owe_mtime();
        assert!(lock.take_debt().is_some());
        assert!(
            !lock.write_pays(t0 + OWED_AT_MOST * 5),
            "paid by the release: owes afresh"
        );
        lock.drained();
        assert!(
            !lock.write_pays(t0 + OWED_AT_MOST * 7),
            "after an fsync: a new age"
        );
    }

    #[test]
    fn a_time_set_after_the_writes_is_not_overwritten_by_their_debt() {
        let lock = OrderLock::default();
        lock.owe_creation(100);
        lock.forgive(false, true);
        assert_eq!(
            lock.take_debt(),
            Some((Some(100), None)),
            "the atime is still owed"
        );
        lock.owe_creation(100);
        lock.forgive(true, true);
        assert_eq!(lock.take_debt(), None);
    }

    #[test]
    fn every_replica_ends_with_the_newest_stamp_whatever_the_finishing_order() {
        let lock = OrderLock::default();
        lock.note_stamp(100);
        lock.note_stamp(300);
        lock.note_stamp(200);
        let mut seen = 0;
        lock.stamp(|t| seen = t);
        assert_eq!(seen, 300);
    }
}
