//! Online membership changes: a replica joins (`chironctl add`: checked, added out of
//! service, filled by an online resync, then in service), leaves (`chironctl remove`: refused
//! when it would leave no up-to-date copy, break the quorum or the lease's majority), or is
//! replaced (`chironctl replace`: the new one is added and synced while the old one serves,
//! then the old one leaves). Every change is recorded on every member (a generation bump) and
//! logged. The rules are `rules::membership`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::ReplicaSet;
use crate::engine::meta_files;
use crate::engine::replica::{Replica, now};
use crate::resync::Run;
use crate::rules::membership::{self, Joiner, Removal};
use crate::rules::state::{self, Found, StateRecord};

/// The index a witness's own threads are named with: it is no replica of the list.
const WITNESS_INDEX: usize = 999;

/// A replica joining: filled by the resync now running; `replacing` leaves once it serves.
#[derive(Debug)]
pub(super) struct Join {
    index: usize,
    replacing: Option<Arc<Replica>>,
}

impl ReplicaSet {
    /// The members the quorum and the lease count: the replicas that have not left, and the
    /// witnesses.
    pub(super) fn member_count(&self) -> usize {
        self.replica_members() + self.lease.get().map_or(0, |l| l.witnesses())
    }

    /// The replicas that have not left the set (for "N of M replicas" in messages).
    pub(super) fn replica_members(&self) -> usize {
        self.replicas.iter().filter(|r| !r.is_left()).count()
    }

    /// Why no membership change may start now, if so: an observer, a daemon without the
    /// lease, a set without state, or another change or a resync in progress.
    fn membership_busy(&self) -> Option<String> {
        if let Some(why) = self.observer_refusal() {
            return Some(why);
        }
        if !self.may_write() {
            return Some("this daemon does not hold the replica set's lease".into());
        }
        if self.membership_guard().is_none() {
            return Some("this replica set keeps no state".into());
        }
        if let Some(index) = self.joining().as_ref().map(|j| j.index) {
            return Some(format!(
                "a membership change is in progress ({} joining)",
                self.replicas[index].path.display()
            ));
        }
        if let Some(run) = self.current_resync().filter(|r| !r.ended()) {
            return Some(format!(
                "a resync of {} is running; try again once it is over",
                self.replicas[run.target].path.display()
            ));
        }
        None
    }

    /// The membership, when the set keeps state.
    fn membership_guard(&self) -> Option<std::sync::MutexGuard<'_, Option<state::Membership>>> {
        let guard = self.membership.lock().unwrap_or_else(|e| e.into_inner());
        guard.is_some().then_some(guard)
    }

    /// `chironctl add PATH`: checks the directory (empty, or a former member of this set),
    /// adds it out of service, records the new membership on every member and starts its
    /// resync, after which it serves. Returns its index and the answer for the admin.
    pub fn add_replica(&self, path: &str, rate: Option<u64>) -> Result<(usize, String), String> {
        let _one = self
            .one_change()
            .map_err(|why| format!("refusing to add {path}: {why}"))?;
        self.add_member(path, None, rate)
    }

    /// The right to make a membership change now; Err when another is being made.
    fn one_change(&self) -> Result<std::sync::MutexGuard<'_, ()>, String> {
        match self.changing.try_lock() {
            Ok(guard) => Ok(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => {
                Err("another membership change is being made".into())
            }
        }
    }

    /// [`ReplicaSet::add_replica`]; `replacing`: the replica that leaves once this one is in
    /// service (`chironctl replace`); `rate`: its resync's limit (None: `--resync-rate`).
    fn add_member(
        &self,
        path: &str,
        replacing: Option<Arc<Replica>>,
        rate: Option<u64>,
    ) -> Result<(usize, String), String> {
        let refusing = |why: String| format!("refusing to add {path}: {why}");
        if let Some(why) = self.membership_busy() {
            return Err(refusing(why));
        }
        let wanted = self.new_member_path(path).map_err(refusing)?;
        let (set_id, mut ids) = self
            .member_ids()
            .ok_or_else(|| refusing("no state".into()))?;
        if let Some(lease) = self.lease.get() {
            ids.extend(lease.witness_list().iter().map(|(id, _)| *id));
        }
        let workers = self.replicas.get(0).map_or(2, |r| r.workers);
        let mut joiner = Joiner::New;
        let timeout = self.timeout;
        let r = self
            .replicas
            .push(|index| {
                let r = Replica::unopened(index, wanted.clone(), false, workers)
                    .map_err(|e| format!("cannot start its threads: {e}"))?;
                let found = look_within(&r, timeout)?;
                joiner = membership::check_join(&found, set_id, &ids)?;
                Ok(r)
            })
            .map_err(refusing)?;
        let index = r.index;
        r.update_status(|s| {
            s.take_out(
                "joining the replica set: filled by an online resync".into(),
                now(),
                true,
            )
        });
        *self.joining() = Some(Join {
            index,
            replacing: replacing.clone(),
        });
        let id = match joiner {
            Joiner::New => state::random_id(),
            Joiner::Former(id) => id,
        };
        let generation = self.record_membership(|m| {
            let joined = m.join(id, &wanted, state::random_id());
            debug_assert_eq!(joined, index);
        });
        if let Some(lease) = self.lease.get() {
            lease.add_replica(Arc::clone(&r));
        }
        self.members_changed();
        let members = self.member_count();
        log::warn!(
            "replica {} joins the replica set of {} as replica {index} (chironctl add, {}): \
             generation {generation}, {members} members; it serves once its resync is done",
            wanted.display(),
            self.mountpoint,
            match joiner {
                Joiner::New => "a new replica".to_string(),
                Joiner::Former(_) => "a former member".to_string(),
            }
        );
        let answer = match self.start_resync(&index.to_string(), rate) {
            Ok(started) => format!(
                "{} joined as replica {index}, out of service until its resync is done; {started}",
                wanted.display()
            ),
            Err(e) => {
                self.joining().take();
                format!(
                    "{} joined as replica {index}, out of service; its resync did not start: {e} \
                     (chironctl resync {index}{})",
                    wanted.display(),
                    match &replacing {
                        Some(old) => format!(", then chironctl remove {}", old.index),
                        None => String::new(),
                    }
                )
            }
        };
        Ok((index, answer))
    }

    /// `chironctl remove REPLICA`: the replica leaves the set, unless it would leave no
    /// up-to-date copy, break the quorum or the lease's majority. Its directory is left as it
    /// is, its state marked as having left (if it answers).
    pub fn remove_replica(&self, replica: &str) -> Result<String, String> {
        let refusing = |why: String| format!("refusing to remove {replica}: {why}");
        let _one = self.one_change().map_err(refusing)?;
        if let Some(why) = self.membership_busy() {
            return Err(refusing(why));
        }
        if let Some(w) = self.witness_named(replica) {
            return self.remove_witness(&w);
        }
        let r = Arc::clone(self.find(replica)?);
        self.remove_member(&r)
    }

    /// The witness `given` names (its path), if any.
    fn witness_named(&self, given: &str) -> Option<Arc<Replica>> {
        let lease = self.lease.get()?;
        let path = Path::new(given.trim_end_matches('/'));
        lease
            .witness_at(path)
            .or_else(|| lease.witness_at(&super::resolve_parent(path).ok()?))
    }

    /// `chironctl add --witness PATH`: the directory (empty, or a former member of this set)
    /// becomes the set's witness at once (it holds no data, so there is nothing to sync):
    /// recorded on every member, counted by the lease and the quorum from now on. One witness
    /// per set, as at mount: `replacing` is the one it takes over from (`chironctl replace`).
    pub fn add_witness(
        &self,
        path: &str,
        replacing: Option<&Arc<Replica>>,
    ) -> Result<String, String> {
        let refusing = |why: String| format!("refusing to add {path} as a witness: {why}");
        // A replace holds the change already.
        let _one = match replacing {
            None => Some(self.one_change().map_err(refusing)?),
            Some(_) => None,
        };
        if replacing.is_none()
            && let Some(why) = self.membership_busy()
        {
            return Err(refusing(why));
        }
        let Some(lease) = self.lease.get() else {
            return Err(refusing("this replica set keeps no lease".into()));
        };
        if let (None, Some((_, w))) = (replacing, lease.witness_list().first()) {
            return Err(refusing(format!(
                "the set has a witness already ({}): chironctl replace it",
                w.display()
            )));
        }
        let wanted = self.new_member_path(path).map_err(refusing)?;
        let (set_id, mut ids) = self
            .member_ids()
            .ok_or_else(|| refusing("no state".into()))?;
        ids.extend(lease.witness_list().iter().map(|(id, _)| *id));
        let witness = Replica::unopened(WITNESS_INDEX, wanted.clone(), false, 2)
            .map_err(|e| refusing(format!("cannot start its threads: {e}")))?;
        let found = look_within(&witness, self.timeout).map_err(refusing)?;
        let id = match membership::check_join(&found, set_id, &ids).map_err(refusing)? {
            Joiner::New => state::random_id(),
            Joiner::Former(id) => id,
        };
        let generation = self.record_membership(|m| {
            lease.add_witness(Arc::clone(&witness), id);
            m.witnesses = lease.witness_list();
            m.bump(state::random_id());
        });
        self.members_changed();
        log::warn!(
            "{} is the witness of the replica set of {} (chironctl add --witness): generation \
             {generation}, {} members",
            wanted.display(),
            self.mountpoint,
            self.member_count()
        );
        Ok(format!(
            "{} is the set's witness (generation {generation})",
            wanted.display()
        ))
    }

    /// The witness `w` leaves the set, unless the quorum or the lease's majority would break.
    fn remove_witness(&self, w: &Arc<Replica>) -> Result<String, String> {
        let refusing = |why: String| format!("refusing to remove {}: {why}", w.path.display());
        let Some(lease) = self.lease.get() else {
            return Err(refusing("this replica set keeps no lease".into()));
        };
        let others_in_service = self.priority_order().len();
        // As if it answered: the rules must hold without it whatever it does now.
        let witnesses_answering = lease.witnesses_answering().saturating_sub(1);
        let members_after = self.member_count() - 1;
        membership::check_remove(&Removal {
            in_service: false,
            others_in_service,
            witnesses_answering,
            members_after,
            quorum_after: self.quorum.required_for(members_after),
            lease_needs_after: Some(
                lease.needs(members_after, others_in_service + witnesses_answering),
            ),
        })
        .map_err(refusing)?;
        let mut left_record = None;
        let generation = self.record_membership(|m| {
            if let Some(id) = lease.remove_witness(w) {
                m.witnesses = lease.witness_list();
                m.bump(state::random_id());
                left_record = Some(StateRecord {
                    left: true,
                    ..m.record_as(id, true, now())
                });
            }
        });
        let written = left_record.map(|record| {
            w.call_within(self.timeout, move |w| {
                w.root()
                    .and_then(|root| meta_files::write_state(root, &record))
            })
        });
        w.release_root();
        let marked = match written {
            Some(Some(Ok(()))) => "its state says it left".to_string(),
            Some(Some(Err(e))) => format!("its state could not be marked ({e})"),
            _ => "its state could not be marked (no answer)".to_string(),
        };
        self.members_changed();
        log::warn!(
            "the witness {} left the replica set of {} (chironctl remove): generation \
             {generation}, {} members; {marked}",
            w.path.display(),
            self.mountpoint,
            self.member_count()
        );
        Ok(format!(
            "the witness {} left the replica set (generation {generation}); {marked}",
            w.path.display()
        ))
    }

    /// The set's id and the ids of its members (replicas that have not left).
    fn member_ids(&self) -> Option<(u64, Vec<u64>)> {
        let guard = self.membership_guard()?;
        let m = guard.as_ref()?;
        Some((
            m.set_id,
            m.members().into_iter().map(|(id, _)| id).collect(),
        ))
    }

    /// `chironctl replace OLD NEW`: NEW is added and synced while OLD keeps serving (if it
    /// can), then OLD leaves, so the up-to-date copies never drop during the swap.
    pub fn replace_replica(
        &self,
        old: &str,
        new: &str,
        rate: Option<u64>,
    ) -> Result<String, String> {
        let refusing = |why: String| format!("refusing to replace {old}: {why}");
        let _one = self.one_change().map_err(refusing)?;
        if let Some(why) = self.membership_busy() {
            return Err(refusing(why));
        }
        if let Some(w) = self.witness_named(old) {
            // A witness holds no data: the new one takes over at once, then the old one leaves.
            let added = self.add_witness(new, Some(&w))?;
            let removed = self
                .remove_witness(&w)
                .map_err(|why| format!("{added}, but the old witness stays: {why}"))?;
            return Ok(format!("{added}; {removed}"));
        }
        let old_r = Arc::clone(self.find(old)?);
        let (_, added) = self.add_member(new, Some(Arc::clone(&old_r)), rate)?;
        log::warn!(
            "replacing replica {} by {new} on {}: it leaves once the new one is in service",
            old_r.path.display(),
            self.mountpoint,
        );
        Ok(format!(
            "replacing {}: {added}; {} leaves once it is in service",
            old_r.path.display(),
            old_r.path.display()
        ))
    }

    /// The replica `r` leaves the set (the checks first).
    fn remove_member(&self, r: &Arc<Replica>) -> Result<String, String> {
        let refusing = |why: String| format!("refusing to remove {}: {why}", r.path.display());
        if self.resync_running_on(r.index)
            || self
                .current_resync()
                .is_some_and(|run| !run.ended() && run.source == r.index)
        {
            return Err(refusing("a resync of it, or from it, is running".into()));
        }
        let others_in_service = self
            .priority_order()
            .into_iter()
            .filter(|&i| i != r.index)
            .count();
        let witnesses_answering = self.lease.get().map_or(0, |l| l.witnesses_answering());
        let members_after = self.member_count() - 1;
        let answering_after = others_in_service + witnesses_answering;
        membership::check_remove(&Removal {
            in_service: r.is_in_service(),
            others_in_service,
            witnesses_answering,
            members_after,
            quorum_after: self.quorum.required_for(members_after),
            lease_needs_after: self
                .lease
                .get()
                .map(|l| l.needs(members_after, answering_after)),
        })
        .map_err(refusing)?;
        r.update_status(|s| {
            s.take_out(
                "left the replica set (chironctl remove)".into(),
                now(),
                false,
            )
        });
        r.mark_left();
        self.ops().auto[r.index].hold();
        let index = r.index;
        let mut left_record = None;
        let generation = self.record_membership(|m| {
            m.leave(index, state::random_id());
            left_record = Some(m.record_left(index, now()));
        });
        // Its own record says it left, so that it is never served again even if the others'
        // records are lost; best effort: a dead server cannot be told.
        let mut records = vec![None; index + 1];
        records[index] = left_record;
        let marked = match self.store_records(records).pop() {
            None => "its state says it left".to_string(),
            Some((_, why)) => {
                log::warn!(
                    "replica {} left the set but its state could not be marked ({why}): the \
                     other members' records exclude it",
                    r.path.display()
                );
                format!("its state could not be marked ({why}); the members' records exclude it")
            }
        };
        if let Some(lease) = self.lease.get() {
            lease.remove_replica(r);
        }
        // Its last records written, its journal and its directory are let go (on its own
        // workers: a close on a dead server may block), so that its filesystem can be
        // unmounted.
        if let Some(rec) = self.journal.get() {
            let rec = Arc::clone(rec);
            r.submit(Box::new(move || rec.detach(index)));
        }
        r.release_root();
        self.members_changed();
        log::warn!(
            "replica {} left the replica set of {} (chironctl remove): generation \
             {generation}, {} members; its directory is left as it is",
            r.path.display(),
            self.mountpoint,
            self.member_count()
        );
        Ok(format!(
            "{} left the replica set (generation {generation}); its directory is left as it \
             is, {marked}",
            r.path.display()
        ))
    }

    /// Applies `change` to the membership and writes it to every in-service replica (and the
    /// witness); returns the new generation number.
    fn record_membership(&self, change: impl FnOnce(&mut state::Membership)) -> u64 {
        let mut guard = self.membership.lock().unwrap_or_else(|e| e.into_inner());
        let Some(m) = guard.as_mut() else {
            return 0;
        };
        change(m);
        self.generation
            .store(m.generation.number, Ordering::Relaxed);
        let mut targets = self.priority_order();
        targets.sort_unstable();
        let generation = m.generation.number;
        let took_out = self.write_records(m, &targets, false);
        drop(guard);
        if took_out {
            self.persist_membership();
        }
        generation
    }

    /// The quorum (`auto`) follows the new member count.
    fn members_changed(&self) {
        if let Some(line) = self.quorum.members_changed(self.member_count()) {
            log::warn!("{line}");
        }
    }

    fn joining(&self) -> std::sync::MutexGuard<'_, Option<Join>> {
        self.joining.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the change in progress does with each replica it involves, for the status:
    /// `joining` (`joining: replaces OLD`) and `leaving: replaced by NEW`.
    pub(super) fn membership_roles(&self) -> Vec<(usize, String)> {
        let joining = self.joining();
        let Some(j) = joining.as_ref() else {
            return Vec::new();
        };
        let new = &self.replicas[j.index];
        match &j.replacing {
            None => vec![(j.index, "joining".into())],
            Some(old) => vec![
                (j.index, format!("joining: replaces {}", old.path.display())),
                (
                    old.index,
                    format!("leaving: replaced by {}", new.path.display()),
                ),
            ],
        }
    }

    /// Called by the resync thread as the resync `run` ends, before it says so (so that a
    /// `chironctl add --wait` that returns finds the change over): a plain join is over.
    /// Returns the replica a replacement replaces, which leaves next; the change lasts until
    /// then ([`ReplicaSet::retire_replaced`]).
    pub(super) fn join_ended(&self, run: &Run) -> Option<Arc<Replica>> {
        let mut joining = self.joining();
        let j = joining.as_ref().filter(|j| j.index == run.target)?;
        let replacing = j.replacing.clone();
        if replacing.is_none() {
            joining.take();
        }
        replacing
    }

    /// After the resync of a replacement (`run`) ended: the replaced replica `old` leaves if
    /// the new one is in service; else both stay, logged. The change is over then.
    pub(super) fn retire_replaced(&self, run: &Run, old: &Arc<Replica>) {
        let new = &self.replicas[run.target];
        if !new.is_in_service() {
            self.joining().take();
            log::error!(
                "replace of replica {} by {} stopped: its resync failed ({}); both stay \
                 members and {} serves as before (chironctl resync {}, then chironctl remove {})",
                old.path.display(),
                new.path.display(),
                run.snapshot().error,
                old.path.display(),
                new.index,
                old.index
            );
            return;
        }
        let removed = self.remove_member(old);
        self.joining().take();
        match removed {
            Ok(done) => log::warn!(
                "replaced replica {} by {}: {done}",
                old.path.display(),
                new.path.display()
            ),
            Err(why) => log::error!(
                "replace of replica {} by {}: the new one is in service, but {why}",
                old.path.display(),
                new.path.display()
            ),
        }
    }

    /// The path a new member is given as, made absolute with its parent's symlinks resolved
    /// (a stat of the directory itself could hang on a dead network mount, and with it the
    /// control socket); refused when it is a member already, the witness, or overlaps the
    /// mount point.
    fn new_member_path(&self, given: &str) -> Result<PathBuf, String> {
        let wanted = super::resolve_parent(Path::new(given.trim_end_matches('/')))?;
        if let Some(r) = self
            .replicas
            .iter()
            .find(|r| !r.is_left() && r.path == wanted)
        {
            return Err(format!("it is replica {} of this set already", r.index));
        }
        if self
            .lease
            .get()
            .is_some_and(|l| l.witness_paths().contains(&wanted))
        {
            return Err("it is this set's witness".into());
        }
        let mountpoint = Path::new(&self.mountpoint);
        if wanted.starts_with(mountpoint) || mountpoint.starts_with(&wanted) {
            return Err(format!(
                "it overlaps the mount point {} (a replica inside the mount, or the mount \
                 inside the replica, would loop)",
                self.mountpoint
            ));
        }
        Ok(wanted)
    }
}

/// Opens `r`'s root and reads its state on its own worker, within `timeout`: a directory that
/// does not answer (a dead server) is refused, never waited for.
fn look_within(r: &Arc<Replica>, timeout: Duration) -> Result<Found, String> {
    let found = r.call_within(timeout, |replica| {
        replica.try_open_root()?;
        let root = replica.root()?;
        let st = crate::sys::fstat(root)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        Ok(meta_files::read_state(root))
    });
    match found {
        Some(Ok(found)) => Ok(found),
        Some(Err(e)) => Err(format!("cannot open it: {e}")),
        None => Err(format!(
            "it gave {}",
            crate::view::words::no_answer_within(timeout)
        )),
    }
}
