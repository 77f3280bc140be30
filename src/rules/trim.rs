//! When the daemon gives freed memory back to the system. glibc's malloc keeps what is freed
//! in its arena (one for every thread: `crate::sys::tune_malloc`), given back by itself only
//! from the top of the heap and only past 8 MB there, so after the kernel forgot 100,000
//! nodes the daemon still held most of their memory (`crate::sys::release_free_memory` gives
//! it back). Giving it back walks the whole heap under the arena's lock, so it is done only
//! after a large drop in the nodes held, from the health thread, never in a request.

/// How many nodes must have gone since the highest count seen (since the last trim) for a
/// trim: about 2 MB of node memory (crate::fuse::nodes: about 200 bytes a node).
pub const TRIM_AFTER: u64 = 10_000;

/// How many quiet looks (the count not falling) after a large drop trim again: the memory
/// freed with the last nodes (a directory listing, the journal's compaction, the reaper's
/// closes, the kernel's late forgets) comes in the seconds after it.
pub const TRIMS_AFTER_DROP: u8 = 3;

/// How many looks after a large drop a further fall still counts as the same drop: a removal
/// that pauses (a loaded machine, a slow client) goes on falling after quiet looks, and its
/// end must still be trimmed; a table that churns after a drop is not trimmed for longer.
pub const DROP_LASTS: u8 = 60;

/// How many nodes a fall within [`DROP_LASTS`] must take (since the last trim) to count as
/// the drop going on: a tenth of [`TRIM_AFTER`], about 200 KB. Smaller ups and downs are a
/// table's churn, and each trim walks the heap under the arena's lock (0.5 ms for a 20 MB
/// fragmented heap, 5 ms for 80 MB, measured).
pub const DROP_GOES_ON: u64 = TRIM_AFTER / 10;

/// The node counts seen: the highest since the last trim, the last one, how many quiet looks
/// still trim, and for how many looks a fall still belongs to the last large drop.
#[derive(Debug, Default)]
pub struct Trim {
    high: u64,
    last: u64,
    after_drop: u8,
    in_drop: u8,
}

impl Trim {
    /// One look at the number of nodes held (once a second): whether to give freed memory
    /// back now. Every [`TRIM_AFTER`] nodes gone, and at the [`TRIMS_AFTER_DROP`] quiet looks
    /// that follow the end of such a drop: a fall of [`DROP_GOES_ON`] nodes or more within
    /// [`DROP_LASTS`] looks of it means the drop is not over, and the quiet looks are counted
    /// again from there.
    pub fn look(&mut self, nodes: u64) -> bool {
        let falling = nodes < self.last;
        self.last = nodes;
        self.high = self.high.max(nodes);
        if self.high - nodes >= TRIM_AFTER {
            self.high = nodes;
            self.after_drop = TRIMS_AFTER_DROP;
            self.in_drop = DROP_LASTS;
            return true;
        }
        if self.in_drop == 0 {
            return false;
        }
        self.in_drop -= 1;
        if falling {
            if self.high - nodes >= DROP_GOES_ON {
                self.after_drop = TRIMS_AFTER_DROP;
            }
            false
        } else if self.after_drop > 0 {
            self.high = nodes;
            self.after_drop -= 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_during_a_large_drop_and_once_at_its_end() {
        let mut t = Trim::default();
        assert!(!t.look(1));
        assert!(!t.look(100_001), "growing");
        assert!(!t.look(100_001 - TRIM_AFTER + 1), "not yet");
        assert!(t.look(100_001 - TRIM_AFTER));
        assert!(
            !t.look(100_001 - TRIM_AFTER - 5),
            "counted from the last trim"
        );
        assert!(t.look(1), "the rest of the drop");
        for _ in 0..TRIMS_AFTER_DROP {
            assert!(t.look(1), "the drop is over");
        }
        assert!(!t.look(1));
        assert!(!t.look(3), "small changes");
    }

    #[test]
    fn a_drop_that_pauses_is_trimmed_again_at_its_real_end() {
        let mut t = Trim::default();
        assert!(!t.look(30_000));
        assert!(t.look(20_000), "a large drop");
        // A pause longer than the quiet looks: each trims, then no more.
        for _ in 0..TRIMS_AFTER_DROP {
            assert!(t.look(20_000));
        }
        assert!(!t.look(20_000));
        // The removal goes on, less than TRIM_AFTER more: its end is trimmed all the same.
        assert!(!t.look(15_000));
        assert!(!t.look(12_000));
        for _ in 0..TRIMS_AFTER_DROP {
            assert!(t.look(12_000), "the end of the drop");
        }
        assert!(!t.look(12_000));
        // Churn right after it (ups and downs of less than DROP_GOES_ON) is not trimmed.
        for _ in 0..10 {
            assert!(!t.look(12_000 - DROP_GOES_ON + 1));
            assert!(!t.look(12_000));
        }
        // Long after the drop, small falls are churn again.
        for _ in 0..DROP_LASTS {
            t.look(12_000);
        }
        assert!(!t.look(11_000));
        assert!(!t.look(11_000));
    }

    #[test]
    fn a_small_drop_is_not_trimmed_even_at_its_end() {
        let mut t = Trim::default();
        assert!(!t.look(20_000));
        assert!(!t.look(19_000));
        assert!(!t.look(19_000));
    }

    #[test]
    fn a_churning_table_of_steady_size_is_never_trimmed() {
        let mut t = Trim::default();
        for i in 0..1000 {
            assert!(!t.look(50_000 + i % 5_000));
        }
    }
}
