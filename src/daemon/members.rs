//! Opening the set's members (the replicas and the witness) at start, all at once and within
//! `--timeout`: a member whose storage does not answer (a dead file server) or fails as
//! unreachable storage does starts out of service and stale, and the mount comes up with the
//! others when the replica-state rules allow it. The log says which member is waited for.

use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, FIRST_LOOK, Unanswered};
use crate::engine::meta_files;
use crate::engine::replica::{Replica, open_all_within};
use crate::rules::arbitrate::is_replica_fault;
use crate::rules::state::{Found, StateRecord};
use crate::view::words::{describe_errno, no_answer_within};

/// The opened members: the replicas in command-line order, then the witness if any, and for
/// each member that could not be opened, why (words for its alert line).
pub struct Members {
    /// Replicas, then the witness.
    pub all: Vec<Arc<Replica>>,
    /// How many of `all` are data replicas: those of the command line, then the recorded
    /// members it does not name ([`add_recorded`]).
    pub replicas: usize,
    /// Per member: None when open, else why it starts without its directory.
    pub unreachable: Vec<Option<String>>,
}

/// Opens every member within `config.timeout` in total (the command-line check already took
/// up to [`FIRST_LOOK`] of it). An error that is a mistake in the command line (the directory
/// vanished since it was checked) refuses the start.
pub fn open(config: &Config) -> Result<Members, String> {
    let mut all = Vec::new();
    for (index, spec) in config.replicas.iter().enumerate() {
        let r = Replica::unopened(
            index,
            spec.path.clone(),
            spec.low_priority,
            config.threads + 2,
        )
        .map_err(|e| {
            format!(
                "cannot start the threads of replica {}: {e}",
                spec.path.display()
            )
        })?;
        all.push(r);
    }
    if let Some(w) = &config.witness {
        let r = Replica::unopened(all.len(), w.clone(), false, 2).map_err(|e| {
            format!(
                "cannot start the threads of the witness {}: {e}",
                w.display()
            )
        })?;
        all.push(r);
    }
    let found = |p: &Path| {
        config
            .unanswered
            .iter()
            .find(|(q, _)| q == p)
            .map(|&(_, why)| why)
    };
    // A member silent at the command-line check already had FIRST_LOOK of its timeout; one
    // that failed there is not waited for; the others answered a moment ago.
    let rest = config.timeout.saturating_sub(FIRST_LOOK);
    let say_waiting = |r: &Replica, wait: Duration| {
        log::warn!(
            "waiting up to {:.1} s for {} to answer; the mount starts without it then",
            wait.as_secs_f64(),
            r.path.display()
        );
    };
    let deadlines: Vec<Option<Duration>> = all
        .iter()
        .map(|r| match found(&r.path) {
            Some(Unanswered::NoAnswer) => {
                say_waiting(r, rest);
                Some(rest)
            }
            Some(Unanswered::Failed(_)) => None,
            None => Some(config.timeout),
        })
        .collect();
    let waiting = |r: &Replica| {
        if found(&r.path).is_none() {
            say_waiting(r, config.timeout.saturating_sub(Duration::from_secs(1)));
        }
    };
    let opened = open_all_within(&all, &deadlines, waiting);
    let mut why_not = Vec::with_capacity(all.len());
    for (r, result) in all.iter().zip(opened) {
        let errno = match (found(&r.path), result) {
            (_, Ok(())) => {
                why_not.push(None);
                continue;
            }
            (Some(Unanswered::Failed(errno)), _) => Some(errno),
            (_, Err(e)) if e.kind() == ErrorKind::TimedOut => None,
            (_, Err(e)) => match e.raw_os_error() {
                Some(errno) if is_replica_fault(errno) => Some(errno),
                _ => return Err(format!("cannot open {}: {e}", r.path.display())),
            },
        };
        why_not.push(Some(match errno {
            Some(errno) => format!("its directory failed at start: {}", describe_errno(errno)),
            None => format!(
                "its directory gave {} at start",
                no_answer_within(config.timeout)
            ),
        }));
    }
    Ok(Members {
        replicas: config.replicas.len(),
        all,
        unreachable: why_not,
    })
}

/// The recorded membership wins over a command line that names an older one
/// (docs/replica-state.md, "The members"): the members the newest state record of the given
/// replicas names, and the command line does not, are opened from their recorded paths and
/// join the mount as if given (a dead one starts out of service, as any). Replicas that left
/// are dropped by the mount-time plan. Each one added is logged, with what to update.
pub fn add_recorded(config: &Config, members: &mut Members) -> Result<(), String> {
    let given = &members.all[..members.replicas];
    // Per replica given: its record, None for none (a new directory); Err when it cannot be
    // read (its server is dead, say): then who it is stays unknown.
    let found: Vec<Result<Option<StateRecord>, ()>> = given
        .iter()
        .map(|r| {
            if !r.is_open() {
                return Err(());
            }
            r.call_within(config.timeout, |r| {
                match r.root().map(meta_files::read_state) {
                    Ok(Found::Record(rec)) => Ok(Some(rec)),
                    Ok(Found::Missing { .. }) => Ok(None),
                    _ => Err(()),
                }
            })
            .unwrap_or(Err(()))
        })
        .collect();
    let records: Vec<StateRecord> = found.iter().flatten().flatten().cloned().collect();
    let Some(newest) = records
        .iter()
        .filter(|r| !r.left)
        .max_by_key(|r| r.generation.number)
    else {
        return Ok(());
    };
    if !newest.members.is_empty() {
        recorded_witnesses(config, members, newest);
    }
    let given = &members.all[..members.replicas];
    let known_ids: Vec<u64> = records.iter().map(|r| r.replica_id).collect();
    let extra: Vec<&std::path::PathBuf> = newest
        .members
        .iter()
        .filter(|(id, path)| {
            !known_ids.contains(id)
                && !given.iter().any(|r| r.path == *path)
                && config.witness.as_ref() != Some(path)
        })
        .map(|(_, path)| path)
        .collect();
    if !extra.is_empty() && found.iter().any(Result::is_err) {
        // One of them may be the replica given that cannot be read: mounting it again from
        // its recorded path would count it twice.
        log::warn!(
            "members recorded but not on the command line ({}) are not mounted this time: a \
             replica given cannot be read, and it may be one of them",
            extra
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    for path in extra {
        let index = members.replicas;
        let r = Replica::unopened(index, path.clone(), false, config.threads + 2).map_err(|e| {
            format!(
                "cannot start the threads of replica {}: {e}",
                path.display()
            )
        })?;
        log::warn!(
            "replica {} is a member of the replica set (generation {}) but not on the command \
             line: mounted from its recorded path; add it to the command line (fstab, OCF \
             replicas) to say so",
            path.display(),
            newest.generation.number
        );
        let why = open_recorded(config, &r);
        members.all.insert(index, r);
        members.unreachable.insert(index, why);
        members.replicas += 1;
    }
    Ok(())
}

/// The witnesses by the same rule as the replicas: a witness given that left the set (its
/// record says so, or it holds a record of this set the newest record's witnesses do not name)
/// is not used; a recorded witness not given is opened from its recorded path. Each logged.
fn recorded_witnesses(config: &Config, members: &mut Members, newest: &StateRecord) {
    let mut i = members.replicas;
    while i < members.all.len() {
        let w = Arc::clone(&members.all[i]);
        let record = w
            .call_within(config.timeout, |w| {
                match w.root().map(meta_files::read_state) {
                    Ok(Found::Record(rec)) => Some(rec),
                    _ => None,
                }
            })
            .flatten();
        let left = record.is_some_and(|r| {
            r.left
                || (r.set_id == newest.set_id
                    && !newest.witnesses.iter().any(|(id, _)| *id == r.replica_id))
        });
        if left {
            log::warn!(
                "the witness {} left the replica set (chironctl remove): it is not used; take \
                 --witness off the command line (OCF witness)",
                w.path.display()
            );
            members.all.remove(i);
            members.unreachable.remove(i);
        } else {
            i += 1;
        }
    }
    for (_, path) in &newest.witnesses {
        if members.all[members.replicas..]
            .iter()
            .any(|w| w.path == *path)
        {
            continue;
        }
        let Ok(w) = Replica::unopened(members.all.len(), path.clone(), false, 2) else {
            continue;
        };
        log::warn!(
            "{} is the witness of the replica set (generation {}) but not on the command line: \
             used from its recorded path; give it with --witness (OCF witness) to say so",
            path.display(),
            newest.generation.number
        );
        let why = open_recorded(config, &w);
        members.all.push(w);
        members.unreachable.push(why);
    }
}

/// Opens the root of a member found in the records (within `--timeout`): None once open,
/// else why it starts without its directory (a path not there on this node, a dead server).
fn open_recorded(config: &Config, member: &Arc<Replica>) -> Option<String> {
    match open_all_within(&[Arc::clone(member)], &[Some(config.timeout)], |_| {}).pop() {
        Some(Ok(())) => None,
        Some(Err(e)) => Some(format!("its directory did not open at start: {e}")),
        None => Some("its directory did not open at start".to_string()),
    }
}
