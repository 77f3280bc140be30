//! Supplementary groups of the processes calling the mount, remembered for a moment.
//!
//! A FUSE request names its caller's uid, gid and pid, not its supplementary groups: those are
//! read from /proc/PID/status, about 11 us, a tenth of a create. A program creating many files
//! calls with the same identity each time, so its groups are reused for [`KEEP_FOR`]. Being a
//! moment stale grants nothing: with default_permissions the kernel has already decided the
//! request with the caller's real credentials; the groups only let the replica's own check
//! agree, and a new object's group is the caller's gid or its setgid parent's, never a
//! supplementary one.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a caller's groups are reused.
pub const KEEP_FOR: Duration = Duration::from_secs(1);

/// Callers remembered at most, so that a fork-heavy workload cannot grow the table.
const MAX_CALLERS: usize = 4096;

/// A request's caller: pid, uid, gid (a pid reused by another identity is another caller).
pub type Caller = (u32, u32, u32);

/// The supplementary groups of recent callers.
#[derive(Debug, Default)]
pub struct GroupsCache {
    seen: Mutex<HashMap<Caller, (Instant, Vec<u32>)>>,
}

impl GroupsCache {
    /// The groups of `caller` at `now`: the remembered ones if younger than [`KEEP_FOR`],
    /// else `read()`'s. A read that fails (the process is gone) gives no groups, which only
    /// narrows access, and is not remembered.
    pub fn groups(
        &self,
        caller: Caller,
        now: Instant,
        read: impl FnOnce() -> Option<Vec<u32>>,
    ) -> Vec<u32> {
        if let Some((at, groups)) = self.lock().get(&caller)
            && now.saturating_duration_since(*at) < KEEP_FOR
        {
            return groups.clone();
        }
        // Read without the lock: other callers' requests go on meanwhile.
        let Some(groups) = read() else {
            return Vec::new();
        };
        let mut seen = self.lock();
        if seen.len() >= MAX_CALLERS {
            seen.retain(|_, (at, _)| now.saturating_duration_since(*at) < KEEP_FOR);
            if seen.len() >= MAX_CALLERS {
                seen.clear();
            }
        }
        seen.insert(caller, (now, groups.clone()));
        groups
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Caller, (Instant, Vec<u32>)>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_callers_groups_are_read_once_per_moment() {
        let cache = GroupsCache::default();
        let reads = Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            Some(vec![10, 20])
        };
        let t0 = Instant::now();
        assert_eq!(cache.groups((7, 1000, 1000), t0, read), vec![10, 20]);
        let half = t0 + KEEP_FOR / 2;
        assert_eq!(cache.groups((7, 1000, 1000), half, read), vec![10, 20]);
        assert_eq!(reads.get(), 1, "reused within the moment");
        cache.groups((7, 1000, 1000), t0 + KEEP_FOR, read);
        assert_eq!(reads.get(), 2, "read again once the moment has passed");
    }

    #[test]
    fn another_identity_on_the_same_pid_is_another_caller() {
        let cache = GroupsCache::default();
        let t0 = Instant::now();
        cache.groups((7, 1000, 1000), t0, || Some(vec![10]));
        assert_eq!(
            cache.groups((7, 1001, 1001), t0, || Some(vec![30])),
            vec![30]
        );
        assert_eq!(
            cache.groups((8, 1000, 1000), t0, || Some(vec![40])),
            vec![40]
        );
    }

    #[test]
    fn a_caller_whose_groups_cannot_be_read_gets_none_and_is_asked_again() {
        let cache = GroupsCache::default();
        let t0 = Instant::now();
        assert!(cache.groups((7, 1000, 1000), t0, || None).is_empty());
        assert_eq!(
            cache.groups((7, 1000, 1000), t0, || Some(vec![10])),
            vec![10]
        );
    }

    #[test]
    fn the_table_stays_bounded() {
        let cache = GroupsCache::default();
        let t0 = Instant::now();
        for pid in 0..(MAX_CALLERS as u32 * 3) {
            cache.groups((pid, 1000, 1000), t0, || Some(vec![pid]));
        }
        assert!(cache.lock().len() <= MAX_CALLERS);
        // Expired entries go first: a later caller keeps the fresh ones.
        let later = t0 + KEEP_FOR;
        cache.groups((u32::MAX, 1000, 1000), later, || Some(vec![1]));
        assert!(cache.lock().len() <= MAX_CALLERS);
    }
}
