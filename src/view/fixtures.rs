//! Snapshots the unit tests of `view/`, `control/` and `daemon/` share, so each wording test
//! starts from the same replica set instead of its own copy. Test-only; imports only
//! `view::snapshot`.

use crate::view::snapshot::{ReplicaSnapshot, ReplicaState, Snapshot};

/// Replicas `/srv/r0`, `/srv/r1`, ... in the given (state, stale) pairs at time 4723, replica 2
/// low priority, counters growing with the index, out-of-service ones with a two-line reason.
pub fn snap(states: &[(ReplicaState, bool)]) -> Snapshot {
    let replicas: Vec<ReplicaSnapshot> = states
        .iter()
        .enumerate()
        .map(|(i, &(state, stale))| ReplicaSnapshot {
            index: i,
            path: format!("/srv/r{i}"),
            low_priority: i == 2,
            state,
            reason: if state == ReplicaState::OutOfService {
                "write error | EIO\n".into()
            } else {
                String::new()
            },
            since: 1000,
            stale,
            reads: 10 * i as u64,
            writes: 5,
            errors: i as u64,
            resync: None,
            membership: None,
        })
        .collect();
    Snapshot {
        pid: 99,
        mountpoint: "/mnt/data".into(),
        time: 4723,
        state: Snapshot::overall_of(&replicas),
        replicas,
        quorum: None,
        lease: None,
        lease_epoch: 0,
        witnesses: None,
        nodes: None,
    }
}

/// Two replicas with awkward paths (a space, an `=`): the first in service, the second out of
/// service, stale and low priority, as the status-file tests render and parse them.
pub fn sample() -> Snapshot {
    let replicas = vec![
        ReplicaSnapshot {
            index: 0,
            path: "/srv/a dir".into(),
            low_priority: false,
            state: ReplicaState::InService,
            reason: String::new(),
            since: 1_700_000_000,
            stale: false,
            reads: 12,
            writes: 34,
            errors: 0,
            resync: None,
            membership: None,
        },
        ReplicaSnapshot {
            index: 1,
            path: "/srv/b=c".into(),
            low_priority: true,
            state: ReplicaState::OutOfService,
            reason: "write failed: Input/output error (os error 5)".into(),
            since: 1_700_000_100,
            stale: true,
            reads: 0,
            writes: 30,
            errors: 4,
            resync: None,
            membership: None,
        },
    ];
    Snapshot {
        pid: 4242,
        mountpoint: "/mnt/data".into(),
        time: 1_700_000_200,
        state: Snapshot::overall_of(&replicas),
        replicas,
        quorum: None,
        lease: None,
        lease_epoch: 0,
        witnesses: None,
        nodes: None,
    }
}
