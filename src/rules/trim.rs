//! When the daemon gives freed memory back to the system. glibc's malloc keeps what is freed
//! in its arenas (one per thread that allocates, each given back only from its top), so after
//! the kernel forgot 100,000 nodes the daemon still held most of their memory
//! (`crate::sys::release_free_memory` gives it back). Giving it back walks every arena, so it
//! is done only after a large drop in the nodes held, from the health thread, never in a
//! request.

/// How many nodes must have gone since the highest count seen (since the last trim) for a
/// trim: about 2 MB of node memory (crate::fuse::nodes: about 200 bytes a node).
pub const TRIM_AFTER: u64 = 10_000;

/// The node counts seen: the highest since the last trim, the last one, and whether a trim
/// happened during a drop that may still go on.
#[derive(Debug, Default)]
pub struct Trim {
    high: u64,
    last: u64,
    in_drop: bool,
}

impl Trim {
    /// One look at the number of nodes held: whether to give freed memory back now. Every
    /// [`TRIM_AFTER`] nodes gone, and once more when the drop is over (what went after the
    /// last trim, and the memory freed with it: a directory listing, the kernel's last forgets).
    pub fn look(&mut self, nodes: u64) -> bool {
        let falling = nodes < self.last;
        self.last = nodes;
        self.high = self.high.max(nodes);
        if self.high - nodes >= TRIM_AFTER {
            self.high = nodes;
            self.in_drop = true;
            true
        } else if self.in_drop && !falling {
            self.high = nodes;
            self.in_drop = false;
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
        assert!(t.look(1), "the drop is over");
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
