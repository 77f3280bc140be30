//! Mount-time recovery: reading every replica's state, the membership plan
//! (`rules::state::plan`), starting the journal, and crash recovery of the journaled paths.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::takeout::TakeOut;
use super::{ReplicaJob, ReplicaSet, shown};
use crate::engine::journal::{self, Journal, Recorder};
use crate::engine::meta_files;
use crate::engine::replica::{Replica, now};
use crate::resync::Run;
use crate::rules::arbitrate::Outcome;
use crate::rules::state;
use crate::sys::Credentials;

impl ReplicaSet {
    /// Before the mount answers: reads every replica's `.chironfs` state, decides who serves
    /// and who is stale (refusing a foreign replica or a split-brain: the Err), takes the stale
    /// ones out, writes the records the plan asks for, then starts the journal (crash recovery
    /// after an unclean shutdown). Every step runs on the replicas' own workers within the
    /// deadline.
    pub fn recover_at_mount(
        &self,
        force_source: Option<usize>,
        new_set: bool,
        journal_max: u32,
    ) -> Result<(), String> {
        let names: Vec<String> = self
            .replicas
            .iter()
            .map(|r| r.path.display().to_string())
            .collect();
        let mut plan = state::plan(
            &self.read_states(),
            &names,
            state::Choices {
                force_source,
                new_set,
            },
            &mut state::random_id,
            now(),
        )?;
        // Read first: a witness's own id comes from its record.
        let witness_states = self
            .lease
            .get()
            .map(|l| l.witness_states())
            .unwrap_or_default();
        if force_source.is_none() {
            // A witness that saw a generation these replicas never reached refuses them.
            for (name, found) in &witness_states {
                state::check_witness(found, name, &plan.membership)?;
            }
        }
        // The witnesses are recorded with the members.
        if let Some(lease) = self.lease.get() {
            plan.membership.witnesses = lease.witness_list();
            for (_, record) in &mut plan.writes {
                record.witnesses = plan.membership.witnesses.clone();
            }
        }
        if self.observer {
            log::info!(
                "{} is a read-only observer (-o ro): no lease, no journal, no crash recovery; it \
                 reads what the owner of the replica set writes (a last shutdown \"not clean\" \
                 below is the owner running)",
                self.mountpoint
            );
        }
        for (level, note) in &plan.notes {
            log::log!(*level, "{note}");
        }
        for (i, why) in plan.stale.iter().enumerate() {
            match why {
                // Logged with the plan's notes; no member, so no alert.
                Some(why) if plan.left.contains(&i) => {
                    let r = &self.replicas[i];
                    r.update_status(|s| s.take_out(why.clone(), now(), false));
                    r.mark_left();
                    self.ops().auto[i].hold();
                    if let Some(lease) = self.lease.get() {
                        lease.remove_replica(r);
                    }
                    r.release_root();
                }
                Some(why) => {
                    self.take_out_status(i, why.clone(), true, TakeOut::AtMount);
                }
                None => {}
            }
        }
        if !plan.left.is_empty()
            && let Some(line) = self.quorum.members_changed(self.member_count())
        {
            log::warn!("{line}");
        }
        let mut records = vec![None; self.replicas.len()];
        for (i, record) in &plan.writes {
            records[*i] = Some(record.clone());
        }
        for (i, problem) in self.store_records(records) {
            // Not fatal: a read-only or full replica still serves reads, and is taken out
            // (with the state written on the others) at its first failing write.
            log::error!(
                "cannot write the {} state of replica {}: {problem}",
                state::META_DIR,
                names[i]
            );
        }
        if let Some(lease) = self.lease.get() {
            lease.record_on_witnesses(&plan.membership, false);
        }
        self.install_membership(plan.membership);
        if self.observer {
            return Ok(());
        }
        self.start_journal(
            plan.unclean,
            &plan.in_flight_unknown,
            u64::from(journal_max),
        );
        Ok(())
    }

    /// What each replica's `.chironfs/state` holds, read on its own workers within the
    /// deadline (a failing or hung replica reads as unreadable).
    fn read_states(&self) -> Vec<state::Found> {
        let all: Vec<usize> = (0..self.replicas.len()).collect();
        let read: ReplicaJob<state::Found> =
            Arc::new(|r: &Replica| Ok(meta_files::read_state(r.root()?)));
        self.run(&all, &Credentials::root(), &read)
            .into_iter()
            .map(|(_, outcome)| match outcome {
                Outcome::Done(found) => found,
                other => state::Found::Unreadable(self.failure_words(&other).unwrap_or_default()),
            })
            .collect()
    }

    /// At mount, after [`ReplicaSet::install_membership`]: loads the journal of the first
    /// in-service replica (a missing, corrupt or untrusted one is replaced by an empty one
    /// starting now), heals the journaled paths across the in-service replicas if the last
    /// shutdown was `unclean` (crash recovery), then writes the journal to every in-service
    /// replica and records from then on, capped at `max_bytes`. `in_flight_unknown`: the
    /// replicas in service at an unclean shutdown that are not now (see
    /// [`state::Plan::in_flight_unknown`]); the journal is then started afresh, so that their
    /// resync compares whole trees.
    pub fn start_journal(&self, unclean: bool, in_flight_unknown: &[usize], max_bytes: u64) {
        let info = self
            .membership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|m| (m.set_id, m.generation));
        let Some((set_id, generation)) = info else {
            return;
        };
        let order = self.priority_order();
        let Some(&first) = order.first() else {
            return;
        };
        let read: ReplicaJob<journal::Loaded> =
            Arc::new(|r: &Replica| Ok(journal::read(r.root()?)));
        let boot = journal::boot_id();
        let trusted: Vec<(usize, Result<Journal, String>)> = self
            .run(&order, &Credentials::root(), &read)
            .into_iter()
            .map(|(i, outcome)| {
                let j = match outcome {
                    Outcome::Done(journal::Loaded::Found(j)) => {
                        j.trusted_after(set_id, !unclean, &boot).map(|()| j)
                    }
                    Outcome::Done(journal::Loaded::Missing) => Err("it has none".into()),
                    Outcome::Done(journal::Loaded::Corrupt(why)) => Err(why),
                    other => Err(format!(
                        "cannot read it: {}",
                        self.failure_words(&other).unwrap_or_default()
                    )),
                };
                (i, j)
            })
            .collect();
        if unclean {
            self.recover_crash(&order, &trusted);
        }
        let first_journal = if in_flight_unknown.is_empty() {
            trusted
                .iter()
                .find(|(i, _)| *i == first)
                .map(|(_, j)| j.clone())
                .unwrap_or_else(|| Err("it has none".into()))
        } else {
            let names: Vec<String> = in_flight_unknown
                .iter()
                .map(|&i| self.replicas[i].path.display().to_string())
                .collect();
            Err(format!(
                "not continued: {} served when the daemon died and cannot serve now, so what \
                 was in flight there is unknown",
                names.join(", ")
            ))
        };
        let mut journal = match first_journal {
            Ok(j) => j,
            Err(why) => {
                // Routine for a new set (or all replicas in service): only a replica out of
                // service now loses anything (its resync compares whole trees).
                let level = if order.len() < self.replicas.len() {
                    log::Level::Warn
                } else {
                    log::Level::Info
                };
                log::log!(
                    level,
                    "journal of {}: {why}; recording starts afresh at generation {} (a replica \
                     out of service now is resynced with a full tree compare)",
                    self.replicas[first].path.display(),
                    generation.number
                );
                Journal::new(journal::Header {
                    set_id,
                    start: generation,
                    boot: boot.clone(),
                })
            }
        };
        journal.header.boot = boot;
        let rec = Arc::new(Recorder::new(journal, self.replicas.capacity(), max_bytes));
        if self.journal.set(Arc::clone(&rec)).is_err() {
            return;
        }
        self.write_journals(&rec, &order, true);
    }

    /// Crash recovery, before the mount serves: every path in the in-service replicas'
    /// journals (files open for writing, mutations in flight when the daemon died) is copied
    /// from the first in-service replica to the others; without a trusted journal on each,
    /// whole trees are compared. A replica that cannot be healed is taken out (stale).
    pub(super) fn recover_crash(
        &self,
        order: &[usize],
        trusted: &[(usize, Result<Journal, String>)],
    ) {
        let src = order[0];
        let names = |i: usize| self.replicas[i].path.display().to_string();
        let mut paths: BTreeMap<PathBuf, bool> = BTreeMap::new();
        let mut full: Option<String> = None;
        for (i, j) in trusted {
            match j {
                Ok(j) if !j.overflowed => {
                    for (p, r) in j.paths() {
                        *paths.entry(p).or_insert(false) |= r;
                    }
                }
                Ok(_) => full = Some(format!("the journal of {} overflowed", names(*i))),
                Err(why) => full = Some(format!("journal of {}: {why}", names(*i))),
            }
        }
        if order.len() < 2 {
            log::warn!(
                "crash recovery: the last shutdown was not clean; only {} is in service, nothing \
                 to heal",
                names(src)
            );
            return;
        }
        match &full {
            None => log::warn!(
                "crash recovery: the last shutdown was not clean; healing {} journaled paths \
                 from {}",
                paths.len(),
                names(src)
            ),
            Some(why) => log::warn!(
                "crash recovery: the last shutdown was not clean; comparing whole trees with {} \
                 ({why})",
                names(src)
            ),
        }
        let paths = Arc::new(paths);
        for &dst in &order[1..] {
            let run = Run::new(src, dst);
            let (paths, whole) = (Arc::clone(&paths), full.is_some());
            let healed = self.engine_for(&run).and_then(|engine| {
                self.supervised(&run, &engine, move |e| {
                    e.set_tolerant(false);
                    if whole {
                        return e.sync_all();
                    }
                    e.sync_dirty(&paths)?;
                    if e.hard_links_seen() {
                        e.sync_all()?;
                    }
                    Ok(())
                })
                .map(|()| {
                    engine
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take_fixed()
                })
            });
            match healed {
                Ok(fixed) if fixed.is_empty() => log::info!(
                    "crash recovery: {} already agreed with {}",
                    names(dst),
                    names(src)
                ),
                Ok(fixed) => {
                    let total = run.progress.files.load(Ordering::Relaxed) as usize;
                    let mut list: Vec<String> = fixed.iter().take(20).map(|p| shown(p)).collect();
                    if total > list.len() {
                        list.push(format!("and {} more", total - list.len()));
                    }
                    log::warn!(
                        "crash recovery: healed {} entries of {} from {}: {}",
                        total,
                        names(dst),
                        names(src),
                        list.join(", ")
                    );
                }
                Err(e) => self.take_out_because(
                    dst,
                    format!("crash recovery from {} failed: {e}", names(src)),
                    true,
                ),
            }
        }
    }
}
