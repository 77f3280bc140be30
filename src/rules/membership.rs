//! Online membership changes (`chironctl add`, `remove`, `replace`): what a directory must be
//! to join, and when a replica may leave. Pure, so each refusal is unit-tested; the engine
//! (`engine/set/membership.rs`) gathers the facts and carries the change out.

use crate::rules::state::Found;

/// What a directory offered to the set holds, judged: who it will be in the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Joiner {
    /// An empty directory: a new replica with a fresh id.
    New,
    /// A former member of this set (it left, or was removed while it did not answer): it
    /// joins again under its own id, and its resync compares whole trees.
    Former(u64),
}

/// Whether the directory `found` holds may join the set `set_id` whose members have `ids`:
/// an empty directory, or one recognisably a stale member of this set. Err: why not, in words
/// that follow "refusing to add PATH: ".
pub fn check_join(found: &Found, set_id: u64, ids: &[u64]) -> Result<Joiner, String> {
    match found {
        Found::Missing { empty: true } => Ok(Joiner::New),
        Found::Missing { empty: false } => Err(
            "it holds files but no chironfs state: give an empty directory (its resync would \
             replace every file in it with the set's)"
                .into(),
        ),
        Found::Unreadable(why) => Err(format!("cannot read its chironfs state: {why}")),
        Found::Record(r) if r.set_id != set_id => Err(format!(
            "it belongs to another replica set (set id {:016x}, this one is {set_id:016x}); \
             give an empty directory or a former member of this set",
            r.set_id
        )),
        Found::Record(r) if ids.contains(&r.replica_id) => Err(format!(
            "it carries the id of a current member ({:016x}): a copy of one? empty it to add \
             it as a new replica",
            r.replica_id
        )),
        Found::Record(r) => Ok(Joiner::Former(r.replica_id)),
    }
}

/// The set as a removal would leave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Removal {
    /// The replica to remove is in service (holds an up-to-date copy).
    pub in_service: bool,
    /// Other replicas in service (each an up-to-date copy).
    pub others_in_service: usize,
    /// Witnesses answering the lease's renewals.
    pub witnesses_answering: usize,
    /// Members (replicas and witnesses) after the removal.
    pub members_after: usize,
    /// The quorum mutations would need after it (None: no quorum).
    pub quorum_after: Option<usize>,
    /// Members the lease would need after it (None: no lease, a set without state).
    pub lease_needs_after: Option<usize>,
}

/// Whether a replica may leave: never the last up-to-date copy, never below the quorum or the
/// lease's majority. Err: why not, in words that follow "refusing to remove PATH: ".
pub fn check_remove(r: &Removal) -> Result<(), String> {
    if r.others_in_service == 0 {
        return Err(if r.in_service {
            "it holds the last up-to-date copy: no other replica is in service (add or resync \
             one first)"
                .into()
        } else {
            "no replica would be in service".into()
        });
    }
    let answering = r.others_in_service + r.witnesses_answering;
    if let Some(q) = r.quorum_after {
        if q > r.members_after {
            return Err(format!(
                "the quorum of {q} could not be met by the {} members left (lower --quorum, or \
                 use auto)",
                r.members_after
            ));
        }
        if answering < q {
            return Err(format!(
                "it would break the quorum: {answering} of the {} members left would count, {q} \
                 needed",
                r.members_after
            ));
        }
    }
    if let Some(need) = r.lease_needs_after
        && answering < need
    {
        return Err(format!(
            "the lease would lose its majority: {answering} of the {} members left answer, \
             {need} needed",
            r.members_after
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::state::StateRecord;

    fn record(set_id: u64, replica_id: u64) -> Found {
        Found::Record(StateRecord {
            set_id,
            replica_id,
            ..StateRecord::default()
        })
    }

    #[test]
    fn only_an_empty_directory_or_a_former_member_joins() {
        assert_eq!(
            check_join(&Found::Missing { empty: true }, 1, &[5]),
            Ok(Joiner::New)
        );
        assert_eq!(check_join(&record(1, 9), 1, &[5]), Ok(Joiner::Former(9)));
        let files = check_join(&Found::Missing { empty: false }, 1, &[5]).unwrap_err();
        assert!(
            files.contains("holds files but no chironfs state"),
            "{files}"
        );
        let other = check_join(&record(2, 9), 1, &[5]).unwrap_err();
        assert!(
            other.starts_with("it belongs to another replica set"),
            "{other}"
        );
        let copy = check_join(&record(1, 5), 1, &[5]).unwrap_err();
        assert!(copy.contains("id of a current member"), "{copy}");
        let dead = check_join(&Found::Unreadable("EIO".into()), 1, &[5]).unwrap_err();
        assert!(dead.contains("EIO"), "{dead}");
    }

    fn removal() -> Removal {
        Removal {
            in_service: true,
            others_in_service: 1,
            witnesses_answering: 0,
            members_after: 2,
            quorum_after: None,
            lease_needs_after: Some(1),
        }
    }

    #[test]
    fn a_replica_leaves_only_while_enough_remain() {
        assert_eq!(check_remove(&removal()), Ok(()));
        let last = check_remove(&Removal {
            others_in_service: 0,
            ..removal()
        })
        .unwrap_err();
        assert!(
            last.starts_with("it holds the last up-to-date copy"),
            "{last}"
        );
        let none = check_remove(&Removal {
            in_service: false,
            others_in_service: 0,
            ..removal()
        })
        .unwrap_err();
        assert_eq!(none, "no replica would be in service");
        let quorum = check_remove(&Removal {
            quorum_after: Some(2),
            ..removal()
        })
        .unwrap_err();
        assert!(
            quorum.starts_with("it would break the quorum: 1 of the 2"),
            "{quorum}"
        );
        let unmeetable = check_remove(&Removal {
            quorum_after: Some(3),
            ..removal()
        })
        .unwrap_err();
        assert!(
            unmeetable.contains("could not be met by the 2 members left"),
            "{unmeetable}"
        );
        let lease = check_remove(&Removal {
            lease_needs_after: Some(2),
            ..removal()
        })
        .unwrap_err();
        assert!(
            lease.starts_with("the lease would lose its majority"),
            "{lease}"
        );
        // A witness counts for both.
        assert_eq!(
            check_remove(&Removal {
                witnesses_answering: 1,
                quorum_after: Some(2),
                lease_needs_after: Some(2),
                ..removal()
            }),
            Ok(())
        );
    }
}
