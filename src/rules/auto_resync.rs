//! When `--auto-resync` starts a resync by itself: the pure policy, one [`AutoResync`] per
//! replica, fed by the health check once a second with what it saw (time injected, so the
//! back-off is unit-tested). The glue (probing, starting, logging) is in `engine/set/resyncs.rs`.
//!
//! Rules: never a replica the administrator took out (until the administrator asks for a
//! resync of it); only after its root answered two health checks in a row (a replica that
//! flaps does not get a resync per blink); after a failed resync (automatic or not) wait 5 s,
//! then 10 s, 20 s ... up to 10 minutes, so a failing target never loops hot. A replica that
//! falls out of service again within [`STABLE_AFTER`] of a successful resync (a disk that
//! fails reads only, say) counts as a failure too: it backs off the same way.

use std::time::{Duration, Instant};

/// Consecutive health checks a returning replica must pass before it is resynced.
pub const STEADY_CHECKS: u32 = 2;
/// The first wait after a failure; it doubles with each further failure.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// The longest wait between automatic attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// How long a resynced replica must stay in service for its back-off to start over.
pub const STABLE_AFTER: Duration = Duration::from_secs(600);

/// The wait after `failures` failed resyncs in a row (at least one).
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_BACKOFF * (1u32 << doublings)).min(MAX_BACKOFF)
}

/// The automatic-resync state of one replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AutoResync {
    /// Taken out by the administrator: left alone.
    held: bool,
    /// Failed resyncs in a row.
    failures: u32,
    /// No attempt before this.
    not_before: Option<Instant>,
    /// Health checks passed in a row while out of service.
    steady: u32,
    /// When its last resync succeeded.
    last_success: Option<Instant>,
}

/// What the health check does with a returning replica after probing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing yet.
    Wait,
    /// Start an automatic resync now.
    Start,
    /// It fell out again soon after its last resync: no resync before this wait is over.
    Flapping(Duration),
}

impl AutoResync {
    /// The administrator took the replica out (`chironctl disable`): no automatic resync.
    pub fn hold(&mut self) {
        self.held = true;
        self.steady = 0;
    }

    /// The administrator asked for a resync (or put it back): it is the daemon's again.
    pub fn release(&mut self) {
        self.held = false;
    }

    /// Whether the health check should probe this out-of-service replica at `now`.
    pub fn wants_probe(&self, now: Instant) -> bool {
        !self.held && self.not_before.is_none_or(|t| now >= t)
    }

    /// The probe's outcome at this health check, at `now`: whether a resync starts.
    pub fn probed(&mut self, reachable: bool, now: Instant) -> Verdict {
        if !reachable {
            self.steady = 0;
            return Verdict::Wait;
        }
        self.steady += 1;
        if self.steady < STEADY_CHECKS {
            return Verdict::Wait;
        }
        match self.last_success.take() {
            Some(t) if now.saturating_duration_since(t) < STABLE_AFTER => {
                Verdict::Flapping(self.failed(now))
            }
            Some(_) => {
                // It stayed in service long enough: the back-off starts over.
                self.failures = 0;
                Verdict::Start
            }
            None => Verdict::Start,
        }
    }

    /// A resync of the replica failed at `now` (or could not start); returns the wait before
    /// the next automatic attempt.
    pub fn failed(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.steady = 0;
        let wait = backoff(self.failures);
        self.not_before = Some(now + wait);
        wait
    }

    /// A resync of the replica succeeded at `now`: the back-off starts over once the replica
    /// has stayed in service for [`STABLE_AFTER`].
    pub fn succeeded(&mut self, now: Instant) {
        self.steady = 0;
        self.not_before = None;
        self.last_success = Some(now);
    }

    /// Failed resyncs in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_ten_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(8), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_returning_replica_is_resynced_after_two_good_checks() {
        let mut a = AutoResync::default();
        let t0 = Instant::now();
        assert!(a.wants_probe(t0));
        assert_eq!(a.probed(true, t0), Verdict::Wait);
        assert_eq!(a.probed(true, t0), Verdict::Start);
        // A blink in between starts the count over.
        let mut b = AutoResync::default();
        assert_eq!(b.probed(true, t0), Verdict::Wait);
        assert_eq!(b.probed(false, t0), Verdict::Wait);
        assert_eq!(b.probed(true, t0), Verdict::Wait);
        assert_eq!(b.probed(true, t0), Verdict::Start);
    }

    #[test]
    fn failures_back_off_and_success_starts_over() {
        let t0 = Instant::now();
        let mut a = AutoResync::default();
        assert_eq!(a.failed(t0), Duration::from_secs(5));
        assert!(!a.wants_probe(t0 + Duration::from_secs(4)));
        assert!(a.wants_probe(t0 + Duration::from_secs(5)));
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(a.failed(t1), Duration::from_secs(10));
        assert!(!a.wants_probe(t1 + Duration::from_secs(9)));
        assert_eq!(a.failures(), 2);
        // The count of good checks starts over after a failure too.
        assert_eq!(a.probed(true, t1), Verdict::Wait);
        let t2 = t1 + Duration::from_secs(10);
        a.succeeded(t2);
        assert!(a.wants_probe(t2));
        // Back in service for long: a new outage starts the back-off over.
        let late = t2 + STABLE_AFTER;
        a.probed(true, late);
        assert_eq!(a.probed(true, late), Verdict::Start);
        assert_eq!(a.failures(), 0);
    }

    #[test]
    fn a_replica_falling_out_again_soon_after_its_resync_backs_off() {
        let t0 = Instant::now();
        let mut a = AutoResync::default();
        a.succeeded(t0);
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(a.probed(true, t1), Verdict::Wait);
        assert_eq!(
            a.probed(true, t1),
            Verdict::Flapping(Duration::from_secs(5))
        );
        assert!(!a.wants_probe(t1));
        // After the wait, it is resynced again; falling out again doubles the wait.
        let t2 = t1 + Duration::from_secs(5);
        a.probed(true, t2);
        assert_eq!(a.probed(true, t2), Verdict::Start);
        a.succeeded(t2);
        a.probed(true, t2);
        assert_eq!(
            a.probed(true, t2),
            Verdict::Flapping(Duration::from_secs(10))
        );
    }

    #[test]
    fn an_admin_hold_is_kept_until_released() {
        let t0 = Instant::now();
        let mut a = AutoResync::default();
        a.hold();
        assert!(!a.wants_probe(t0));
        a.succeeded(t0);
        assert!(!a.wants_probe(t0), "a success does not lift the hold");
        a.release();
        assert!(a.wants_probe(t0));
    }
}
