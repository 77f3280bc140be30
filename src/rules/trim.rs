//! When the daemon gives freed memory back to the system. glibc's malloc keeps what is freed
//! in its arena (one for every thread: `crate::sys::tune_malloc`), given back by itself only
//! from the top of the heap and only past 8 MB there, so after the kernel forgot 100,000
//! nodes the daemon still held most of their memory (`crate::sys::release_free_memory` gives
//! it back). Giving it back walks the whole heap under the arena's lock, so it is done only
//! after a large drop in the nodes held, from the health thread, never in a request.

/// How many nodes must have gone since the highest count seen (since the last trim) for a
/// trim: about 2 MB of node memory (crate::fuse::nodes: about 200 bytes a node).
pub const TRIM_AFTER: u64 = 10_000;

/// How many looks after a large drop trim again: the memory freed with the last nodes (a
/// directory listing, the reaper's closes, the kernel's late forgets) comes in the seconds
/// after it.
pub const TRIMS_AFTER_DROP: u8 = 3;

/// The node counts seen: the highest since the last trim, the last one, and how many looks
/// still trim after a large drop.
#[derive(Debug, Default)]
pub struct Trim {
    high: u64,
    last: u64,
    after_drop: u8,
}

impl Trim {
    /// One look at the number of nodes held (once a second): whether to give freed memory
    /// back now. Every [`TRIM_AFTER`] nodes gone, and at the [`TRIMS_AFTER_DROP`] looks that
    /// follow the end of such a drop.
    pub fn look(&mut self, nodes: u64) -> bool {
        let falling = nodes < self.last;
        self.last = nodes;
        self.high = self.high.max(nodes);
        if self.high - nodes >= TRIM_AFTER {
            self.high = nodes;
            self.after_drop = TRIMS_AFTER_DROP;
            true
        } else if self.after_drop > 0 && !falling {
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
