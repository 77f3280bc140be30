//! A directory's attributes carried forward through this daemon's own changes of its
//! entries, so that the kernel's next GETATTR of it needs no network round trip.
//!
//! With `default_permissions` the kernel forgets a directory's attributes after every entry
//! made or removed in it and asks for them again before the next permission check: one
//! GETATTR per create or delete. On a network replica that is a round trip (SSHFS: an SFTP
//! LSTAT, since its client forgot them too), the one a single SSHFS mount never makes. What
//! such a change does to the directory is known here: its mtime and ctime become the change's
//! time, its link count moves with a subdirectory made or removed. So the attributes last
//! fetched from the replica, carried forward like that, answer until they are `--cache-time`
//! old (the contract the kernel's own cache keeps: its size and anything changed behind the
//! daemon's back show at most that late); then the replica is asked again.
//!
//! Pure bookkeeping: no clock of its own (`now` is passed in), no replica, no lock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Directories held at most; a fetch past it is not kept (the replica is asked each time).
pub const MAX_DIRS: usize = 1 << 16;

/// What is held of one directory.
#[derive(Clone, Copy)]
struct Held {
    /// The attributes, carried forward since `fetched`.
    st: libc::stat,
    /// The replica they came from (only its answers are stood in for).
    replica: usize,
    /// When they were fetched from it.
    fetched: Instant,
    /// Its times have no fraction of a second (SFTP): carried-forward times have none either.
    whole_seconds: bool,
}

/// Generation counters, shared by the directories whose node ids fall on the same slot.
const SLOTS: usize = 64;

/// The directories' carried-forward attributes, by node id.
pub struct DirAttrs {
    held: HashMap<u64, Held>,
    /// Bumped by every change and drop of a directory of the slot (`dir % SLOTS`), held or
    /// not: a fetch that began before one is not kept (it may have read the directory as it
    /// was before the change).
    generations: [u64; SLOTS],
}

/// Nothing held.
impl Default for DirAttrs {
    fn default() -> Self {
        DirAttrs {
            held: HashMap::new(),
            generations: [0; SLOTS],
        }
    }
}

/// Only the count: a stat is long and says nothing in a log.
impl std::fmt::Debug for DirAttrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DirAttrs({} held)", self.held.len())
    }
}

impl DirAttrs {
    /// The generation to hand to [`DirAttrs::fetched`] for a fetch of `dir` starting now.
    pub fn generation(&self, dir: u64) -> u64 {
        self.generations[dir as usize % SLOTS]
    }

    fn bump(&mut self, dir: u64) {
        self.generations[dir as usize % SLOTS] += 1;
    }

    /// `st` was fetched for directory `dir` from `replica` at `now`, by a fetch that began at
    /// `generation`: kept unless some change of the directory came in between.
    pub fn fetched(
        &mut self,
        dir: u64,
        replica: usize,
        st: &libc::stat,
        generation: u64,
        now: Instant,
    ) {
        if generation != self.generation(dir) {
            return;
        }
        if self.held.len() >= MAX_DIRS && !self.held.contains_key(&dir) {
            return;
        }
        let whole_seconds = st.st_mtime_nsec == 0 && st.st_ctime_nsec == 0;
        let held = Held {
            st: *st,
            replica,
            fetched: now,
            whole_seconds,
        };
        self.held.insert(dir, held);
    }

    /// An entry of `dir` was made or removed at `(secs, nsecs)`; `links` is what it did to the
    /// directory's link count (a subdirectory made +1, removed -1, else 0).
    pub fn changed(&mut self, dir: u64, (secs, nsecs): (i64, i64), links: i64) {
        self.bump(dir);
        let Some(h) = self.held.get_mut(&dir) else {
            return;
        };
        let nsecs = if h.whole_seconds { 0 } else { nsecs };
        // A clock behind the replica's never takes a time back.
        if (secs, nsecs) > (h.st.st_mtime, h.st.st_mtime_nsec) {
            h.st.st_mtime = secs;
            h.st.st_mtime_nsec = nsecs;
        }
        if (secs, nsecs) > (h.st.st_ctime, h.st.st_ctime_nsec) {
            h.st.st_ctime = secs;
            h.st.st_ctime_nsec = nsecs;
        }
        // A filesystem that does not count subdirectories (btrfs: always 1) is left alone.
        if h.st.st_nlink > 1 {
            h.st.st_nlink = (h.st.st_nlink as i64 + links).max(2) as libc::nlink_t;
        }
    }

    /// `dir`'s attributes changed in a way not carried forward (a setattr, an xattr, a
    /// failed change, a rename of it, its removal): the replica is asked next time.
    pub fn drop(&mut self, dir: u64) {
        self.bump(dir);
        self.held.remove(&dir);
    }

    /// The attributes to answer for `dir` now, if held and fetched less than `ttl` ago, with
    /// the replica they came from (they stand in for that one's answer only).
    pub fn answer(&self, dir: u64, now: Instant, ttl: Duration) -> Option<(usize, libc::stat)> {
        let h = self.held.get(&dir)?;
        (now.saturating_duration_since(h.fetched) < ttl).then_some((h.replica, h.st))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_stat(mtime: (i64, i64), nlink: u64) -> libc::stat {
        // SAFETY: all-zero is a valid libc::stat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        st.st_mode = libc::S_IFDIR | 0o755;
        st.st_nlink = nlink as libc::nlink_t;
        (st.st_mtime, st.st_mtime_nsec) = mtime;
        (st.st_ctime, st.st_ctime_nsec) = mtime;
        st
    }

    const TTL: Duration = Duration::from_secs(1);

    #[test]
    fn a_change_carries_the_times_and_links_forward_until_the_ttl() {
        let t0 = Instant::now();
        let mut d = DirAttrs::default();
        assert!(d.answer(5, t0, TTL).is_none());
        d.fetched(5, 0, &dir_stat((100, 500), 2), d.generation(5), t0);
        d.changed(5, (160, 250), 1);
        let st = d.answer(5, t0 + Duration::from_millis(900), TTL).unwrap().1;
        assert_eq!((st.st_mtime, st.st_mtime_nsec), (160, 250));
        assert_eq!((st.st_ctime, st.st_ctime_nsec), (160, 250));
        assert_eq!(st.st_nlink, 3);
        d.changed(5, (161, 0), -1);
        assert_eq!(d.answer(5, t0, TTL).unwrap().1.st_nlink, 2);
        // Fetched a cache time ago: asked again.
        assert!(d.answer(5, t0 + TTL, TTL).is_none());
        // A cache time of 0 never answers.
        assert!(d.answer(5, t0, Duration::ZERO).is_none());
        // They came from replica 0 (the caller asks another one if that one answers now).
        assert_eq!(d.answer(5, t0, TTL).unwrap().0, 0);
    }

    #[test]
    fn whole_second_times_stay_whole_and_never_go_back() {
        let t0 = Instant::now();
        let mut d = DirAttrs::default();
        d.fetched(5, 0, &dir_stat((200, 0), 2), d.generation(5), t0);
        d.changed(5, (200, 900), 0);
        let st = d.answer(5, t0, TTL).unwrap().1;
        assert_eq!((st.st_mtime, st.st_mtime_nsec), (200, 0));
        d.changed(5, (199, 0), 0);
        assert_eq!(d.answer(5, t0, TTL).unwrap().1.st_mtime, 200);
        d.changed(5, (201, 5), 0);
        let st = d.answer(5, t0, TTL).unwrap().1;
        assert_eq!((st.st_mtime, st.st_mtime_nsec), (201, 0));
    }

    #[test]
    fn a_fetch_overtaken_by_a_change_is_not_kept() {
        let t0 = Instant::now();
        let mut d = DirAttrs::default();
        let started = d.generation(5);
        d.changed(5, (300, 0), 0);
        d.fetched(5, 0, &dir_stat((100, 0), 2), started, t0);
        assert!(d.answer(5, t0, TTL).is_none());
        let started = d.generation(5);
        d.drop(5 + SLOTS as u64);
        d.fetched(5, 0, &dir_stat((100, 0), 2), started, t0);
        assert!(d.answer(5, t0, TTL).is_none());
        // A change of a directory on another slot does not matter.
        let started = d.generation(5);
        d.changed(6, (400, 0), 0);
        d.fetched(5, 0, &dir_stat((100, 0), 2), started, t0);
        assert!(d.answer(5, t0, TTL).is_some());
    }

    #[test]
    fn a_dropped_directory_is_asked_and_links_of_btrfs_stay() {
        let t0 = Instant::now();
        let mut d = DirAttrs::default();
        d.fetched(5, 0, &dir_stat((100, 0), 1), d.generation(5), t0);
        d.changed(5, (101, 0), 1);
        assert_eq!(d.answer(5, t0, TTL).unwrap().1.st_nlink, 1);
        d.drop(5);
        assert!(d.answer(5, t0, TTL).is_none());
    }
}
