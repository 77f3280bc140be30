//! The ownership lease at work (the rules and the timing are in `rules/lease.rs`): taking it
//! at mount on a majority of the set's members (data replicas and witnesses), renewing it on
//! a thread of its own, fencing this daemon (mutations fail with EROFS) when it cannot renew
//! on a majority, and releasing it at a clean unmount. Every member access runs on that
//! member's own worker threads within one member deadline, so a hung member costs at most one
//! deadline per renewal round.
//!
//! May touch: `engine::replica`, `engine::meta_files`, `rules::lease`, `rules::state` (the
//! witness keeps the set's state record), `sys`, `view::words`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::engine::meta_files;
use crate::engine::replica::{Replica, now};
use crate::rules::lease::{self, Found, Hold, LeaseRecord, Owner, Timing, Watched};
use crate::rules::state::{self, Membership};
use crate::sys;
use crate::view::words::{ALERT_TARGET, utc_timestamp};

/// Largest lease file read (a record is about 200 bytes).
const MAX_LEASE_FILE: u64 = 64 * 1024;

/// What the keeper reports about the lease (status file, `chironctl status`, check).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Held and renewed at `epoch`.
    Held {
        /// The epoch this daemon holds.
        epoch: u64,
    },
    /// Not renewed on a majority for too long: mutations fail until it is renewed again.
    Fenced {
        /// Why, in words.
        why: String,
    },
    /// Another daemon took the lease over: this one never writes again.
    Lost {
        /// Who took it, in words.
        why: String,
    },
}

/// The lease of one mount: its members, its timing, and whether this daemon may write.
pub struct LeaseKeeper {
    /// The members, changed when replicas join or leave online.
    roster: std::sync::RwLock<Arc<Roster>>,
    /// Witnesses that answered the last renewal round: they count for the quorum
    /// (`rules/quorum.rs`) as they do for the lease.
    witnesses_answering: AtomicUsize,
    /// Each witness's own id in its state record (read at mount, or new).
    witness_ids: Mutex<Vec<u64>>,
    timing: Timing,
    strict: bool,
    me: Owner,
    epoch: AtomicU64,
    renewal: AtomicU64,
    /// Monotonic (boot) time of the start of the last renewal round that reached a majority.
    last_ok: Mutex<Duration>,
    /// Fenced, for the once-per-transition log lines.
    fenced: AtomicBool,
    /// Superseded by a newer epoch: never writes again.
    lost: Mutex<Option<String>>,
    /// Stops the renewal thread.
    stop: AtomicBool,
    /// What renewals write: held, or stopping once the mount is gone.
    hold: Mutex<Hold>,
    /// Held by a renewal round, so a release never races one (a round that read "ours"
    /// before the release must not write "held" after it).
    round: Mutex<()>,
}

impl std::fmt::Debug for LeaseKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lease epoch {}", self.epoch.load(Ordering::Relaxed))
    }
}

/// The members the lease is kept on: the data replicas first, then the witnesses. Each round
/// works on one roster (a snapshot), so a member joining meanwhile never shifts its indexes.
#[derive(Debug)]
struct Roster {
    members: Vec<Arc<Replica>>,
    /// How many of `members` are data replicas; the rest are witnesses.
    replicas: usize,
}

impl Roster {
    fn all(&self) -> Vec<usize> {
        (0..self.members.len()).collect()
    }

    fn witnesses(&self) -> Vec<usize> {
        (self.replicas..self.members.len()).collect()
    }
}

/// One member's answer: its record (None: no lease file), or what went wrong.
type Read = Result<Option<LeaseRecord>, String>;

impl LeaseKeeper {
    /// A keeper over `members` (the first `replicas` are the data replicas, then the
    /// witnesses) for the daemon serving `mountpoint`.
    pub fn new(
        members: Vec<Arc<Replica>>,
        replicas: usize,
        timing: Timing,
        strict: bool,
        mountpoint: &str,
    ) -> Self {
        let witnesses = members.len().saturating_sub(replicas);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        LeaseKeeper {
            roster: std::sync::RwLock::new(Arc::new(Roster { members, replicas })),
            witnesses_answering: AtomicUsize::new(witnesses),
            witness_ids: Mutex::new((0..witnesses).map(|_| state::random_id()).collect()),
            timing,
            strict,
            me: Owner {
                host,
                boot: crate::engine::journal::boot_id(),
                pid: std::process::id(),
                mountpoint: mountpoint.to_owned(),
                since: now(),
            },
            epoch: AtomicU64::new(0),
            renewal: AtomicU64::new(0),
            last_ok: Mutex::new(Duration::ZERO),
            fenced: AtomicBool::new(false),
            lost: Mutex::new(None),
            stop: AtomicBool::new(false),
            hold: Mutex::new(Hold::Held),
            round: Mutex::new(()),
        }
    }

    /// Takes the lease, or says who holds it. A free lease (none, released, or held by a
    /// daemon of this host that is gone) is taken at once; an owner of this host whose mount is
    /// gone (unmounting) is waited for (logged, bounded by twice the lease time); an owner
    /// serving a mount, here or on another host, is refused as soon as one of its renewals is
    /// seen, and taken over once its lease went unrenewed for the lease time on this daemon's
    /// clock (a frozen or dead owner). Writes nothing but the lease itself.
    pub fn acquire(&self) -> Result<(), String> {
        let ro = self.roster();
        let started = sys::boottime();
        let mut watched: Vec<Option<Watched>> = vec![None; ro.members.len()];
        let mut said_waiting = false;
        loop {
            let now_mono = sys::boottime();
            let reads = self.read_all(&ro);
            let answering = reads.iter().filter(|r| r.is_ok()).count();
            let need = lease::needed(ro.members.len(), answering, self.strict);
            if answering < need {
                return Err(self.too_few(&ro, &reads, need));
            }
            let mut waiting_for: Option<(String, &'static str)> = None;
            for (i, read) in reads.iter().enumerate() {
                let Ok(Some(r)) = read else { continue };
                let (owner, live) = match lease::assess(Some(r), &self.me, &sys::pid_alive) {
                    Found::Free => continue,
                    // Serving its mount: alive as soon as a renewal is seen.
                    Found::LiveHere(owner) if sys::is_chironfs_mounted(&owner.mountpoint) => {
                        (owner, true)
                    }
                    // No mount (yet, or any more): starting or shutting down; wait for it.
                    Found::LiveHere(owner) | Found::StoppingHere(owner) => (owner, false),
                    Found::Remote(owner) => (owner, r.hold == Hold::Held),
                };
                let w = watched[i].get_or_insert(Watched {
                    seen: (r.epoch, r.renewal),
                    since: now_mono,
                });
                if w.observe(r, now_mono) && live {
                    return Err(self.held_by(&owner, r.epoch));
                }
                if !w.expired(now_mono, self.timing.lease) {
                    let what = if live {
                        "to renew it (then it is alive), or its lease to expire"
                    } else {
                        "to release it"
                    };
                    waiting_for = Some((self.words(&owner), what));
                }
            }
            if let Some((owner, what)) = waiting_for {
                if now_mono.saturating_sub(started) > self.timing.lease * 2 {
                    return Err(format!(
                        "the replica set is still held by {owner} after {:.0} s; not mounting",
                        (self.timing.lease * 2).as_secs_f64()
                    ));
                }
                if !said_waiting {
                    log::warn!(
                        "the replica set is held by {owner}: waiting up to {:.1} s for it {what}",
                        self.timing.lease.as_secs_f64()
                    );
                    said_waiting = true;
                }
                std::thread::sleep(self.timing.renew_every());
                continue;
            }
            match self.claim(&ro, &reads) {
                Ok(()) => return Ok(()),
                Err(None) => {
                    // Another daemon claimed at the same instant: neither won; try again
                    // after a random pause (ours were withdrawn).
                    std::thread::sleep(Duration::from_millis(100 + u64::from(random_u8()) * 4));
                }
                Err(Some(e)) => return Err(e),
            }
        }
    }

    /// Writes our claim (the next epoch) on every member that answered, waits for every
    /// concurrent claim to have landed, and reads again: won with a majority of the members
    /// that could store it showing ours. Err(None) when a concurrent claim is seen (ours are
    /// withdrawn: try again); Err(Some) when too few members can store the lease.
    fn claim(&self, ro: &Roster, reads: &[Read]) -> Result<(), Option<String>> {
        let epoch = reads
            .iter()
            .filter_map(|r| r.as_ref().ok().and_then(|r| r.as_ref()))
            .map(|r| r.epoch)
            .max()
            .unwrap_or(0)
            + 1;
        self.epoch.store(epoch, Ordering::SeqCst);
        self.renewal.store(0, Ordering::SeqCst);
        let record = self.record(Hold::Held);
        let targets: Vec<usize> = (0..ro.members.len())
            .filter(|&i| reads[i].is_ok())
            .collect();
        let written = Instant::now();
        let stored_on = self.write_all(ro, &targets, &record);
        // A concurrent claimer read "free" before our write landed, and its own write lands
        // about as fast as ours did: wait four times our write's round (at least 100 ms, at
        // most two member deadlines) before reading who won.
        let settle = (written.elapsed() * 4)
            .max(Duration::from_millis(100))
            .min(self.timing.member_deadline() * 2);
        std::thread::sleep(settle);
        let round = sys::boottime();
        let again = self.read_all(ro);
        let is_ours = |r: &Read| matches!(r, Ok(Some(r)) if r.is(&self.me, epoch));
        let ours = again.iter().filter(|r| is_ours(r)).count();
        // A member that cannot store the lease (full, read-only) does not count.
        let stored = stored_on.iter().filter(|r| r.is_ok()).count();
        let need = lease::needed(ro.members.len(), stored, self.strict);
        if stored > 0 && ours >= need {
            *self.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = round;
            log::info!(
                "took the replica set's lease (epoch {epoch}) on {ours} of {} members",
                ro.members.len()
            );
            return Ok(());
        }
        let mine: Vec<usize> = (0..again.len()).filter(|&i| is_ours(&again[i])).collect();
        self.write_all(ro, &mine, &self.record(Hold::Released));
        let rival = again.iter().any(|r| {
            matches!(r, Ok(Some(r)) if !r.is(&self.me, epoch) && r.hold != Hold::Released && r.epoch >= epoch)
        });
        if rival {
            return Err(None);
        }
        Err(Some(format!(
            "cannot take the replica set's lease: it could be stored on {stored} of {} members, \
             {need} needed ({})",
            ro.members.len(),
            self.failures(ro, &targets, &stored_on)
        )))
    }

    /// Starts the renewal thread: every renewal interval, our record with the next renewal
    /// count on every member; a member showing a newer epoch means another daemon took over.
    pub fn start_renewing(self: &Arc<Self>) -> std::io::Result<()> {
        let keeper = Arc::clone(self);
        std::thread::Builder::new()
            .name("lease".into())
            .spawn(move || {
                while !keeper.stop.load(Ordering::SeqCst) && keeper.lost_why().is_none() {
                    let round = Instant::now();
                    keeper.renew_once();
                    let pause = keeper.timing.renew_every().saturating_sub(round.elapsed());
                    std::thread::sleep(pause);
                }
            })
            .map(drop)
    }

    /// One renewal round.
    fn renew_once(&self) {
        let ro = self.roster();
        let _round = self.round.lock().unwrap_or_else(|e| e.into_inner());
        if self.stop.load(Ordering::SeqCst) {
            return;
        }
        let round = sys::boottime();
        let epoch = self.epoch.load(Ordering::SeqCst);
        let renewal = self.renewal.fetch_add(1, Ordering::SeqCst) + 1;
        let hold = *self.hold.lock().unwrap_or_else(|e| e.into_inner());
        let mut record = self.record(hold);
        record.renewal = renewal;
        let me = self.me.clone();
        let text = record.render();
        // One open a member a round: read who holds it, and rewrite it unless a newer owner.
        let results = self.on_members(&ro, &ro.all(), move |r| {
            meta_files::update(
                r.root().map_err(|e| errno_words(&e))?,
                lease::LEASE_FILE,
                MAX_LEASE_FILE,
                |current| {
                    let current = current.map(parse_lease).transpose()?;
                    match current
                        .filter(|c| c.epoch > epoch || (c.epoch == epoch && !c.is(&me, epoch)))
                    {
                        Some(newer) => Ok((Some(newer), None)),
                        None => Ok((None, Some(text.clone().into_bytes()))),
                    }
                },
            )
        });
        if let Some(newer) = results
            .iter()
            .find_map(|r| r.as_ref().ok().and_then(|r| r.clone()))
        {
            let why = format!(
                "the replica set's lease was taken over by {} (epoch {} > {epoch})",
                self.words(&newer.owner),
                newer.epoch
            );
            log::error!(
                target: ALERT_TARGET,
                "{why}: this daemon ({} on {}) writes nothing more to the replicas; unmount it",
                self.me.host,
                self.me.mountpoint
            );
            *self.lost.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            return;
        }
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let witnesses_ok = results[ro.replicas..].iter().filter(|r| r.is_ok()).count();
        self.witnesses_answering
            .store(witnesses_ok, Ordering::SeqCst);
        if ok >= lease::needed(ro.members.len(), ok, self.strict) {
            *self.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = round;
            if self.fenced.swap(false, Ordering::SeqCst) {
                log::warn!(
                    "the replica set's lease is renewed again on {ok} of {} members (epoch {epoch}): mutations accepted again",
                    ro.members.len()
                );
            }
        } else {
            // Logged once, by the first mutation or this round, whichever notices first.
            self.fence_check();
            let all = ro.all();
            log::debug!(
                "lease renewal reached {ok} members ({})",
                self.failures(&ro, &all, &results)
            );
        }
    }

    /// Whether this daemon may write to the replicas now: the lease was renewed on a majority
    /// within the fencing time, and no newer epoch was seen. Cheap: every mutation asks.
    pub fn may_write(&self) -> bool {
        self.lost_why().is_none() && !self.fence_check()
    }

    /// True when fenced (logging the transition once, at ALERT).
    fn fence_check(&self) -> bool {
        let ro = self.roster();
        let last = *self.last_ok.lock().unwrap_or_else(|e| e.into_inner());
        let late = sys::boottime().saturating_sub(last) > self.timing.fence_after();
        if late && !self.fenced.swap(true, Ordering::SeqCst) {
            log::error!(
                target: ALERT_TARGET,
                "cannot renew the replica set's lease on a majority of its {} members for {:.1} s: \
                 fenced, mutations fail with EROFS (read-only) until it is renewed",
                ro.members.len(),
                self.timing.fence_after().as_secs_f64()
            );
        }
        late
    }

    /// The epoch this daemon holds (0 before it took the lease).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The lease as admins see it.
    pub fn state(&self) -> LeaseState {
        let ro = self.roster();
        if let Some(why) = self.lost_why() {
            return LeaseState::Lost { why };
        }
        if self.fence_check() {
            return LeaseState::Fenced {
                why: format!(
                    "not renewed on a majority of the {} members for {:.1} s",
                    ro.members.len(),
                    self.timing.fence_after().as_secs_f64()
                ),
            };
        }
        LeaseState::Held {
            epoch: self.epoch.load(Ordering::SeqCst),
        }
    }

    /// The owner is unmounting: a new daemon of this host waits for the release (renewals go
    /// on until then, so the clean-shutdown records are still written under the lease).
    pub fn stopping(&self) {
        let ro = self.roster();
        *self.hold.lock().unwrap_or_else(|e| e.into_inner()) = Hold::Stopping;
        if self.may_write() {
            let all = ro.all();
            self.write_all(&ro, &all, &self.record(Hold::Stopping));
        }
    }

    /// Releases the lease at a clean unmount (or a failed start): free at once for the next
    /// daemon. Only where the lease is still ours.
    pub fn release(&self) {
        let ro = self.roster();
        self.stop.store(true, Ordering::SeqCst);
        let _round = self.round.lock().unwrap_or_else(|e| e.into_inner());
        if self.lost_why().is_some() {
            return;
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let me = self.me.clone();
        let text = self.record(Hold::Released).render();
        let all = ro.all();
        self.on_members(&ro, &all, move |r| {
            meta_files::update(
                r.root().map_err(|e| errno_words(&e))?,
                lease::LEASE_FILE,
                MAX_LEASE_FILE,
                |current| match current.map(parse_lease).transpose()? {
                    Some(c) if c.is(&me, epoch) => Ok(((), Some(text.clone().into_bytes()))),
                    _ => Ok(((), None)),
                },
            )
        });
        log::info!("released the replica set's lease (epoch {epoch})");
    }

    /// The members now (one snapshot for a whole round).
    fn roster(&self) -> Arc<Roster> {
        Arc::clone(&self.roster.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// A replica joined the set online (`chironctl add`): the lease is kept on it from the
    /// next renewal on, and the majority counts it.
    pub fn add_replica(&self, replica: Arc<Replica>) {
        let mut roster = self.roster.write().unwrap_or_else(|e| e.into_inner());
        let mut members = roster.members.clone();
        members.insert(roster.replicas, replica);
        *roster = Arc::new(Roster {
            members,
            replicas: roster.replicas + 1,
        });
    }

    /// A replica left the set online (`chironctl remove`): the lease is no longer kept on it
    /// and its lease file says released (best effort: it may be dead), so the directory
    /// mounted alone later is not refused as held.
    pub fn remove_replica(&self, replica: &Replica) {
        let gone = {
            let mut roster = self.roster.write().unwrap_or_else(|e| e.into_inner());
            let Some(pos) = roster.members[..roster.replicas]
                .iter()
                .position(|m| std::ptr::eq(m.as_ref(), replica))
            else {
                return;
            };
            let mut members = roster.members.clone();
            let gone = members.remove(pos);
            *roster = Arc::new(Roster {
                members,
                replicas: roster.replicas - 1,
            });
            gone
        };
        let _round = self.round.lock().unwrap_or_else(|e| e.into_inner());
        let alone = Roster {
            members: vec![gone],
            replicas: 1,
        };
        self.write_all(&alone, &[0], &self.record(Hold::Released));
    }

    /// The witnesses' paths.
    pub fn witness_paths(&self) -> Vec<std::path::PathBuf> {
        let ro = self.roster();
        ro.witnesses()
            .into_iter()
            .map(|i| ro.members[i].path.clone())
            .collect()
    }

    /// The witnesses with their ids, for the state records.
    pub fn witness_list(&self) -> Vec<(u64, std::path::PathBuf)> {
        let ro = self.roster();
        let ids = self.witness_ids.lock().unwrap_or_else(|e| e.into_inner());
        ro.witnesses()
            .into_iter()
            .zip(ids.iter())
            .map(|(i, &id)| (id, ro.members[i].path.clone()))
            .collect()
    }

    /// A witness joined online (`chironctl add --witness`), with id `id`: the lease is kept
    /// on it from the next renewal on, and the majority counts it.
    pub fn add_witness(&self, witness: Arc<Replica>, id: u64) {
        let mut roster = self.roster.write().unwrap_or_else(|e| e.into_inner());
        let mut members = roster.members.clone();
        members.push(witness);
        self.witness_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
        *roster = Arc::new(Roster {
            members,
            replicas: roster.replicas,
        });
        self.witnesses_answering.fetch_add(1, Ordering::SeqCst);
    }

    /// A witness left online (`chironctl remove`): no longer a member; its lease file says
    /// released (best effort). Returns its id, None when it is no witness here.
    pub fn remove_witness(&self, witness: &Replica) -> Option<u64> {
        let (gone, id) = {
            let mut roster = self.roster.write().unwrap_or_else(|e| e.into_inner());
            let pos = roster.members[roster.replicas..]
                .iter()
                .position(|m| std::ptr::eq(m.as_ref(), witness))?;
            let mut members = roster.members.clone();
            let gone = members.remove(roster.replicas + pos);
            let id = self
                .witness_ids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(pos);
            *roster = Arc::new(Roster {
                members,
                replicas: roster.replicas,
            });
            (gone, id)
        };
        let _ = self
            .witnesses_answering
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        let _round = self.round.lock().unwrap_or_else(|e| e.into_inner());
        let alone = Roster {
            members: vec![gone],
            replicas: 0,
        };
        self.write_all(&alone, &[0], &self.record(Hold::Released));
        Some(id)
    }

    /// The witness at `path`, if it is one.
    pub fn witness_at(&self, path: &std::path::Path) -> Option<Arc<Replica>> {
        let ro = self.roster();
        ro.witnesses()
            .into_iter()
            .map(|i| &ro.members[i])
            .find(|m| m.path == path)
            .cloned()
    }

    /// The members the lease counts: data replicas and witnesses.
    pub fn members(&self) -> usize {
        self.roster().members.len()
    }

    /// The members the lease needs among `members` of which `answering` answer (the
    /// majority rule of `rules::lease`, strict or not as configured).
    pub fn needs(&self, members: usize, answering: usize) -> usize {
        lease::needed(members, answering, self.strict)
    }

    /// The witnesses among the members.
    pub fn witnesses(&self) -> usize {
        let ro = self.roster();
        ro.members.len() - ro.replicas
    }

    /// The witnesses that answered the last renewal round (all of them before the first).
    pub fn witnesses_answering(&self) -> usize {
        self.witnesses_answering.load(Ordering::SeqCst)
    }

    /// What each witness's `.chironfs/state` holds, with its path for messages, read within
    /// one member deadline (a witness that does not answer reads as unreadable). A witness's
    /// own id is kept from its record for the records written later.
    pub fn witness_states(&self) -> Vec<(String, state::Found)> {
        let ro = self.roster();
        let witnesses = ro.witnesses();
        let reads = self.on_members(&ro, &witnesses, |r| {
            Ok(meta_files::read_state(
                r.root().map_err(|e| errno_words(&e))?,
            ))
        });
        let mut ids = self.witness_ids.lock().unwrap_or_else(|e| e.into_inner());
        witnesses
            .iter()
            .zip(reads)
            .map(|(&i, read)| {
                let found = read.unwrap_or_else(state::Found::Unreadable);
                if let state::Found::Record(r) = &found {
                    ids[i - ro.replicas] = r.replica_id;
                }
                (ro.members[i].path.display().to_string(), found)
            })
            .collect()
    }

    /// Writes membership `m` as each witness's state, after the replicas' own (so a witness
    /// never knows a generation no replica recorded), within one member deadline; a witness
    /// that cannot store it is named in the log and counts for nothing it did not store.
    pub fn record_on_witnesses(&self, m: &Membership, clean: bool) {
        let ro = self.roster();
        if ro.replicas == ro.members.len() || !self.may_write() {
            return;
        }
        let witnesses = ro.witnesses();
        let ids = self
            .witness_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // By the witness's path: its position in the roster moves as replicas join.
        let records: Vec<_> = witnesses
            .iter()
            .zip(&ids)
            .map(|(&i, &id)| (ro.members[i].path.clone(), m.record_as(id, clean, now())))
            .collect();
        let results = self.on_members(&ro, &witnesses, move |r| {
            let root = r.root().map_err(|e| errno_words(&e))?;
            let (_, record) = records
                .iter()
                .find(|(path, _)| *path == r.path)
                .ok_or_else(|| "not a witness".to_string())?;
            meta_files::write_state(root, record).map_err(|e| errno_words(&e))
        });
        for (&i, result) in witnesses.iter().zip(results) {
            if let Err(why) = result {
                log::error!(
                    "cannot write the replica set's state (generation {}) to the witness {}: {why}",
                    m.generation.number,
                    ro.members[i].path.display()
                );
            }
        }
    }

    fn lost_why(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, hold: Hold) -> LeaseRecord {
        LeaseRecord {
            owner: self.me.clone(),
            epoch: self.epoch.load(Ordering::SeqCst),
            renewal: self.renewal.load(Ordering::SeqCst),
            hold,
        }
    }

    fn read_all(&self, ro: &Roster) -> Vec<Read> {
        let all = ro.all();
        self.on_members(ro, &all, read_member)
    }

    /// Writes `record` on each of `targets`; each member's outcome, in `targets` order.
    fn write_all(
        &self,
        ro: &Roster,
        targets: &[usize],
        record: &LeaseRecord,
    ) -> Vec<Result<(), String>> {
        let text = record.render();
        self.on_members(ro, targets, move |r| {
            meta_files::overwrite(
                r.root().map_err(|e| errno_words(&e))?,
                lease::LEASE_FILE,
                text.as_bytes(),
            )
            .map_err(|e| errno_words(&e))
        })
    }

    /// Runs `job` on each of `targets` (member indexes) on the member's own worker, within one
    /// member deadline; a member that does not answer in time reads as an error.
    fn on_members<T: Send + 'static>(
        &self,
        ro: &Roster,
        targets: &[usize],
        job: impl Fn(&Replica) -> Result<T, String> + Send + Sync + 'static,
    ) -> Vec<Result<T, String>> {
        let job = Arc::new(job);
        let (tx, rx) = mpsc::channel();
        for &i in targets {
            let (member, job, tx) = (Arc::clone(&ro.members[i]), Arc::clone(&job), tx.clone());
            ro.members[i].submit(Box::new(move || {
                let r = sys::set_thread_credentials(&sys::Credentials::root())
                    .map_err(|e| errno_words(&e))
                    .and_then(|()| job(&member));
                let _ = tx.send((i, r));
            }));
        }
        drop(tx);
        let deadline = Instant::now() + self.timing.member_deadline();
        let mut got: Vec<Option<Result<T, String>>> = (0..ro.members.len()).map(|_| None).collect();
        let mut missing = targets.len();
        while missing > 0 {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((i, r)) => {
                    got[i] = Some(r);
                    missing -= 1;
                }
                Err(_) => break,
            }
        }
        let no_answer = crate::view::words::no_answer_within(self.timing.member_deadline());
        let mut out = Vec::with_capacity(targets.len());
        for &i in targets {
            out.push(got[i].take().unwrap_or_else(|| Err(no_answer.clone())));
        }
        out
    }

    /// "host a (pid 12, mount point /mnt/x) since 2026-12-06 10:00:00 UTC".
    fn words(&self, owner: &Owner) -> String {
        lease::describe(owner, &utc_timestamp(owner.since))
    }

    /// The refusal: who holds the set.
    fn held_by(&self, owner: &Owner, epoch: u64) -> String {
        format!(
            "the replica set is in use by another chironfs: {} holds its lease (epoch {epoch}); \
             not mounting",
            self.words(owner)
        )
    }

    /// Too few members answer to take the lease.
    fn too_few(&self, ro: &Roster, reads: &[Read], need: usize) -> String {
        let all = ro.all();
        format!(
            "cannot take the replica set's lease: {} of {} members answer, {need} needed ({})",
            reads.iter().filter(|r| r.is_ok()).count(),
            ro.members.len(),
            self.failures(ro, &all, reads)
        )
    }

    /// "member: why; ..." for the members of `targets` whose `results` (in `targets` order)
    /// failed.
    fn failures<T>(&self, ro: &Roster, targets: &[usize], results: &[Result<T, String>]) -> String {
        targets
            .iter()
            .zip(results)
            .filter_map(|(&i, r)| {
                r.as_ref()
                    .err()
                    .map(|e| format!("{}: {e}", ro.members[i].path.display()))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// One member's lease record (None: none there).
fn read_member(r: &Replica) -> Read {
    match meta_files::read(
        r.root().map_err(|e| errno_words(&e))?,
        lease::LEASE_FILE,
        MAX_LEASE_FILE,
    )? {
        None => Ok(None),
        Some(data) => parse_lease(&data).map(Some),
    }
}

/// A member's lease file content, or why it is not one.
fn parse_lease(data: &[u8]) -> Result<LeaseRecord, String> {
    LeaseRecord::parse(&String::from_utf8_lossy(data))
        .map_err(|e| format!("its lease file is not one: {e}"))
}

fn errno_words(e: &std::io::Error) -> String {
    crate::view::words::describe_errno(e.raw_os_error().unwrap_or(libc::EIO))
}

/// A random byte, for the back-off after a tied claim.
fn random_u8() -> u8 {
    (crate::rules::state::random_id() & 0xff) as u8
}
