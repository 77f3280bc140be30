//! Replica choice for read-type work: which replica answers metadata, and which one serves a
//! file's data. Pure functions over a small view of each replica, so they test without FUSE.

use std::time::Duration;

/// What replica choice needs to know about one replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Command-line position.
    pub index: usize,
    /// `:`-prefixed.
    pub low_priority: bool,
    /// May serve reads now.
    pub readable: bool,
    /// Its round trip as the health check last measured it, smoothed (None: not yet).
    pub round_trip: Option<Duration>,
}

/// A normal-priority replica this many times slower than the fastest one (and slower than
/// [`FAR_AT_LEAST`]) serves no file's data while a near one can: reads stay at the near
/// replica's latency, where spreading them over a far server (a replica across a WAN) would
/// make every other open as slow as it.
pub const FAR_FACTOR: u32 = 4;

/// Below this round trip a replica is near whatever the others' (local disks and a LAN
/// differ by microseconds that do not matter).
pub const FAR_AT_LEAST: Duration = Duration::from_millis(2);

/// Whether `c` is far from the set's reads: see [`FAR_FACTOR`].
fn is_far(c: &Candidate, fastest: Option<Duration>) -> bool {
    match (c.round_trip, fastest) {
        (Some(rt), Some(best)) => rt > FAR_AT_LEAST && rt > best * FAR_FACTOR,
        _ => false,
    }
}

/// Readable replicas in priority order: normal ones by index, then low ones by index.
/// Metadata always comes from the first, so timestamps and listings do not jitter; the rest is
/// the fail-over order. Also the order in which arbitration picks an errno.
pub fn priority_order(candidates: &[Candidate]) -> Vec<usize> {
    let normal = candidates.iter().filter(|c| c.readable && !c.low_priority);
    let low = candidates.iter().filter(|c| c.readable && c.low_priority);
    normal.chain(low).map(|c| c.index).collect()
}

/// Order for serving a newly opened file's data: the near normal-priority replicas rotated by
/// `ticket` (one ticket per open spreads files across replicas), then the far ones (see
/// [`FAR_FACTOR`]), then the low ones as a last resort. The first entry serves the handle; the
/// rest is its fail-over order.
pub fn data_order(candidates: &[Candidate], ticket: usize) -> Vec<usize> {
    let normal: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.readable && !c.low_priority)
        .collect();
    let fastest = normal.iter().filter_map(|c| c.round_trip).min();
    let (far, mut near): (Vec<&Candidate>, Vec<&Candidate>) =
        normal.iter().partition(|c| is_far(c, fastest));
    if !near.is_empty() {
        let turn = ticket % near.len();
        near.rotate_left(turn);
    }
    let low = candidates.iter().filter(|c| c.readable && c.low_priority);
    near.into_iter()
        .chain(far)
        .chain(low)
        .map(|c| c.index)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(index: usize, low_priority: bool, readable: bool) -> Candidate {
        Candidate {
            index,
            low_priority,
            readable,
            round_trip: None,
        }
    }

    fn ms(index: usize, round_trip_ms: f64) -> Candidate {
        Candidate {
            round_trip: Some(Duration::from_secs_f64(round_trip_ms / 1000.0)),
            ..c(index, false, true)
        }
    }

    #[test]
    fn a_far_replica_serves_data_only_when_no_near_one_can() {
        // The slow-replica case of bench/net.sh: 10 ms against 0.5 ms.
        let set = [ms(0, 10.0), ms(1, 0.5), ms(2, 0.6)];
        for t in 0..4 {
            let order = data_order(&set, t);
            assert_eq!(order[2], 0, "{order:?}");
        }
        assert_eq!(
            data_order(&set, 0)[..2],
            [1, 2],
            "the near ones still spread"
        );
        assert_eq!(data_order(&set, 1)[..2], [2, 1]);
        let far_alone = [ms(0, 10.0), c(1, false, false)];
        assert_eq!(
            data_order(&far_alone, 3),
            vec![0],
            "a far one is still a fail-over"
        );
        // Priority order (metadata) is not changed by latency.
        assert_eq!(priority_order(&set), vec![0, 1, 2]);
    }

    #[test]
    fn near_replicas_spread_whatever_their_small_differences() {
        // Under 2 ms nothing is far; 4x is not enough to be far from a 1.5 ms one.
        for set in [
            [ms(0, 0.02), ms(1, 1.9)],
            [ms(0, 1.5), ms(1, 5.0)],
            [ms(0, 3.0), c(1, false, true)],
        ] {
            let firsts: Vec<usize> = (0..2).map(|t| data_order(&set, t)[0]).collect();
            assert_eq!(firsts, vec![0, 1], "{set:?}");
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
