//! Opening the set's members (the replicas and the witness) at start, all at once and within
//! `--timeout`: a member whose storage does not answer (a dead file server) or fails as
//! unreachable storage does starts out of service and stale, and the mount comes up with the
//! others when the replica-state rules allow it. The log says which member is waited for.

use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, FIRST_LOOK, Unanswered};
use crate::engine::replica::{Replica, open_all_within};
use crate::rules::arbitrate::is_replica_fault;
use crate::view::words::{describe_errno, no_answer_within};

/// The opened members: the replicas in command-line order, then the witness if any, and for
/// each member that could not be opened, why (words for its alert line).
pub struct Members {
    /// Replicas, then the witness.
    pub all: Vec<Arc<Replica>>,
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
        all,
        unreachable: why_not,
    })
}
