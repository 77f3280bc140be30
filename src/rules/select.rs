//! Replica choice for read-type work: which replica answers metadata, and which one serves a
//! file's data. Pure functions over a small view of each replica, so they test without FUSE.

/// What replica choice needs to know about one replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Command-line position.
    pub index: usize,
    /// `:`-prefixed.
    pub low_priority: bool,
    /// May serve reads now.
    pub readable: bool,
}

/// Readable replicas in priority order: normal ones by index, then low ones by index.
/// Metadata always comes from the first, so timestamps and listings do not jitter; the rest is
/// the fail-over order. Also the order in which arbitration picks an errno.
pub fn priority_order(candidates: &[Candidate]) -> Vec<usize> {
    let normal = candidates.iter().filter(|c| c.readable && !c.low_priority);
    let low = candidates.iter().filter(|c| c.readable && c.low_priority);
    normal.chain(low).map(|c| c.index).collect()
}

/// Order for serving a newly opened file's data: the normal-priority replicas rotated by
/// `ticket` (one ticket per open spreads files across replicas), then the low ones as a last
/// resort. The first entry serves the handle; the rest is its fail-over order.
pub fn data_order(candidates: &[Candidate], ticket: usize) -> Vec<usize> {
    let mut order = priority_order(candidates);
    let normal = candidates
        .iter()
        .filter(|c| c.readable && !c.low_priority)
        .count();
    if normal > 1 {
        order[..normal].rotate_left(ticket % normal);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(index: usize, low_priority: bool, readable: bool) -> Candidate {
        Candidate {
            index,
            low_priority,
            readable,
        }
    }

    #[test]
    fn normal_before_low_and_unreadable_skipped() {
        let set = [
            c(0, true, true),
            c(1, false, true),
            c(2, false, false),
            c(3, false, true),
        ];
        assert_eq!(priority_order(&set), vec![1, 3, 0]);
    }

    #[test]
    fn data_spreads_over_normal_replicas_only() {
        let set = [c(0, false, true), c(1, true, true), c(2, false, true)];
        let firsts: Vec<usize> = (0..4).map(|t| data_order(&set, t)[0]).collect();
        assert_eq!(firsts, vec![0, 2, 0, 2]);
        assert_eq!(data_order(&set, 1), vec![2, 0, 1]);
    }

    #[test]
    fn low_priority_serves_when_no_normal_is_readable() {
        let set = [c(0, false, false), c(1, true, true)];
        assert_eq!(data_order(&set, 5), vec![1]);
        assert_eq!(priority_order(&set), vec![1]);
    }

    #[test]
    fn nothing_readable_gives_empty_order() {
        let set = [c(0, false, false), c(1, true, false)];
        assert!(priority_order(&set).is_empty());
        assert!(data_order(&set, 0).is_empty());
    }
}
