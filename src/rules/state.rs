//! Durable replica state: the `.chironfs` directory at each replica root, its state file
//! format, the decision taken at mount (who is in service, who is stale, split-brain), and the
//! generation bookkeeping at every membership change. Pure logic except the small file
//! helpers at the end; `docs/replica-state.md` describes the format.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::rules::escape;

/// Name of the metadata directory at each replica root: hidden from the mount, never
/// replicated as user data.
pub const META_DIR: &str = ".chironfs";
/// The state file inside [`META_DIR`].
pub const STATE_FILE: &str = "state";
/// Format version written in the state file.
pub const FORMAT: u32 = 1;
/// Generations kept in a record's history (to tell "behind" from "diverged").
pub const HISTORY_LEN: usize = 256;

/// One generation of the replica set's membership: a number bumped at every change and a
/// random id telling two generations with the same number apart (two halves that each went
/// on alone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gen {
    /// Bumped at every membership change; 0 = never in sync.
    pub number: u64,
    /// Random; 0 with number 0.
    pub id: u64,
}

impl Gen {
    /// "Never in sync": a new replica, or the loser of a split-brain.
    pub const NONE: Gen = Gen { number: 0, id: 0 };

    /// `NUMBER:ID`, as in the state file and the journal header.
    pub(crate) fn render(self) -> String {
        format!("{}:{:016x}", self.number, self.id)
    }

    /// Reads [`Gen::render`]'s form.
    pub(crate) fn parse(s: &str) -> Option<Gen> {
        let (n, id) = s.split_once(':')?;
        Some(Gen {
            number: n.parse().ok()?,
            id: u64::from_str_radix(id, 16).ok()?,
        })
    }
}

/// The content of one replica's state file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateRecord {
    /// The replica set this replica belongs to.
    pub set_id: u64,
    /// This replica's own id (stable whatever the command-line order).
    pub replica_id: u64,
    /// The generation this replica is in sync with.
    pub generation: Gen,
    /// Earlier generations this replica went through, oldest first.
    pub history: Vec<Gen>,
    /// Ids of the replicas in service at `generation`.
    pub in_service: Vec<u64>,
    /// The daemon stopped cleanly (false while mounted).
    pub clean: bool,
    /// Unix time of the write.
    pub updated: u64,
    /// The set's data replicas at `generation`, id and path, in service or not (empty in a
    /// record written before members were recorded): a mount whose command line names other
    /// ones follows this (docs/replica-state.md, "The members").
    pub members: Vec<(u64, PathBuf)>,
    /// This replica left the set (`chironctl remove`): it is never served again.
    pub left: bool,
    /// The set's witnesses at `generation`, id and path (recorded with `members`).
    pub witnesses: Vec<(u64, PathBuf)>,
}

/// The separator of the `members` list, escaped in the paths.
const MEMBER_SEPARATOR: &[u8] = b",";

/// `ID:PATH,ID:PATH`, paths escaped.
fn render_members(members: &[(u64, PathBuf)]) -> String {
    members
        .iter()
        .map(|(id, path)| format!("{}:{}", hex(*id), escape::escape(path, MEMBER_SEPARATOR)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads [`render_members`]'s form; `key` names the field in the error.
fn parse_members(items: &[String], key: &str) -> Result<Vec<(u64, PathBuf)>, String> {
    items
        .iter()
        .map(|s| {
            let (id, path) = s.split_once(':')?;
            Some((u64::from_str_radix(id, 16).ok()?, escape::unescape(path)?))
        })
        .collect::<Option<_>>()
        .ok_or_else(|| format!("bad '{key}' field"))
}

fn hex(v: u64) -> String {
    format!("{v:016x}")
}

impl StateRecord {
    /// The file content.
    pub fn render(&self) -> String {
        let list = |v: &[String]| v.join(",");
        format!(
            "# chironfs replica state (docs/replica-state.md); written by the daemon, do not edit\n\
             format={FORMAT}\nset={}\nreplica={}\ngeneration={}\nin_service={}\nclean={}\n\
             updated={}\nhistory={}\nmembers={}\nwitnesses={}\n{}",
            hex(self.set_id),
            hex(self.replica_id),
            self.generation.render(),
            list(&self.in_service.iter().map(|i| hex(*i)).collect::<Vec<_>>()),
            if self.clean { "yes" } else { "no" },
            self.updated,
            list(&self.history.iter().map(|g| g.render()).collect::<Vec<_>>()),
            render_members(&self.members),
            render_members(&self.witnesses),
            if self.left { "left=yes\n" } else { "" },
        )
    }

    /// Parses a state file; the error says what is wrong.
    pub fn parse(text: &str) -> Result<StateRecord, String> {
        let mut get = std::collections::HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("malformed line '{line}'"))?;
            get.insert(k.to_string(), v.to_string());
        }
        let field = |k: &str| get.get(k).ok_or_else(|| format!("no '{k}' field"));
        let id = |k: &str| -> Result<u64, String> {
            u64::from_str_radix(field(k)?, 16).map_err(|_| format!("bad '{k}' field"))
        };
        let format: u32 = field("format")?
            .parse()
            .map_err(|_| "bad 'format' field".to_string())?;
        if format != FORMAT {
            return Err(format!(
                "format {format} is not supported (this chironfs writes {FORMAT})"
            ));
        }
        let items = |k: &str| -> Vec<String> {
            get.get(k)
                .map(|v| {
                    v.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let in_service = items("in_service")
            .iter()
            .map(|s| u64::from_str_radix(s, 16).map_err(|_| "bad 'in_service' field".to_string()))
            .collect::<Result<_, _>>()?;
        let history = items("history")
            .iter()
            .map(|s| Gen::parse(s).ok_or_else(|| "bad 'history' field".to_string()))
            .collect::<Result<_, _>>()?;
        let members = parse_members(&items("members"), "members")?;
        let witnesses = parse_members(&items("witnesses"), "witnesses")?;
        Ok(StateRecord {
            members,
            witnesses,
            left: get.get("left").is_some_and(|v| v == "yes"),
            set_id: id("set")?,
            replica_id: id("replica")?,
            generation: Gen::parse(field("generation")?)
                .ok_or_else(|| "bad 'generation' field".to_string())?,
            history,
            in_service,
            clean: match field("clean")?.as_str() {
                "yes" => true,
                "no" => false,
                _ => return Err("bad 'clean' field".into()),
            },
            updated: get.get("updated").and_then(|v| v.parse().ok()).unwrap_or(0),
        })
    }

    /// This replica's data is older than `other`'s: its generation is in the other's history
    /// (it stopped getting writes there), or it was never in sync.
    pub fn is_behind(&self, other: &StateRecord) -> bool {
        if self.generation == other.generation {
            return false;
        }
        self.generation == Gen::NONE || other.history.contains(&self.generation)
    }
}

/// What was found at one replica root at mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// A state file.
    Record(StateRecord),
    /// No state file; `empty` says the replica holds no files either.
    Missing {
        /// Nothing but possibly `lost+found` in it.
        empty: bool,
    },
    /// The state could not be read (I/O error, hung, garbage): the replica starts out of
    /// service and stale, the mount goes on with the others.
    Unreadable(String),
}

/// The membership of the running set: written to the in-service replicas at every change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Replica-set id.
    pub set_id: u64,
    /// Replica id of each replica, by command-line index.
    pub ids: Vec<u64>,
    /// Current generation.
    pub generation: Gen,
    /// Earlier generations, oldest first.
    pub history: Vec<Gen>,
    /// Ids in service at `generation`, sorted.
    pub in_service: Vec<u64>,
    /// Path of each replica, by index.
    pub paths: Vec<PathBuf>,
    /// By index: the replica left the set (`chironctl remove`, or found left at mount); it
    /// keeps its index until the next mount but is no member.
    pub gone: Vec<bool>,
    /// The witnesses (id, path), recorded with the members.
    pub witnesses: Vec<(u64, PathBuf)>,
}

impl Membership {
    /// The members (id, path): every replica by index that has not left.
    pub fn members(&self) -> Vec<(u64, PathBuf)> {
        (0..self.ids.len())
            .filter(|&i| !self.gone.get(i).copied().unwrap_or(false))
            .map(|i| (self.ids[i], self.paths.get(i).cloned().unwrap_or_default()))
            .collect()
    }

    /// A replica joins with index `ids.len()` (`chironctl add`): a member from now on, not in
    /// service yet; the generation is bumped (with `new_id`) so every member records it.
    pub fn join(&mut self, id: u64, path: &Path, new_id: u64) -> usize {
        self.ids.push(id);
        self.paths.push(path.to_path_buf());
        self.gone.push(false);
        self.bump(new_id);
        self.ids.len() - 1
    }

    /// Replica `index` leaves the set (`chironctl remove`); the caller has taken it out of
    /// service. Bumps the generation (with `new_id`).
    pub fn leave(&mut self, index: usize, new_id: u64) {
        if let Some(g) = self.gone.get_mut(index) {
            *g = true;
        }
        let id = self.ids[index];
        self.in_service.retain(|&i| i != id);
        self.bump(new_id);
    }

    /// The record written to replica `index` as it leaves: the membership it left (which no
    /// longer names it), marked `left`.
    pub fn record_left(&self, index: usize, now: u64) -> StateRecord {
        StateRecord {
            left: true,
            ..self.record(index, true, now)
        }
    }

    /// Makes `in_service` (command-line indexes) the current membership; bumps the generation
    /// (with `new_id`) when it differs. Returns whether it changed.
    pub fn change(&mut self, in_service: &[usize], new_id: u64) -> bool {
        let ids: Vec<u64> = sorted(in_service.iter().map(|&i| self.ids[i]));
        if ids == self.in_service {
            return false;
        }
        self.bump(new_id);
        self.in_service = ids;
        true
    }

    /// A new generation (with `new_id`), the current one going to the history.
    pub fn bump(&mut self, new_id: u64) {
        if self.generation != Gen::NONE {
            self.history.push(self.generation);
        }
        let excess = self.history.len().saturating_sub(HISTORY_LEN);
        self.history.drain(..excess);
        self.generation = Gen {
            number: self.generation.number + 1,
            id: new_id,
        };
    }

    /// The record of replica `index` as an in-service member.
    pub fn record(&self, index: usize, clean: bool, now: u64) -> StateRecord {
        self.record_as(self.ids[index], clean, now)
    }

    /// The record of the member with id `id`: a replica's, or a witness's (which holds no
    /// data, so it is never in service itself, but keeps the set's generation and who was in
    /// service, see [`check_witness`]).
    pub fn record_as(&self, id: u64, clean: bool, now: u64) -> StateRecord {
        StateRecord {
            set_id: self.set_id,
            replica_id: id,
            generation: self.generation,
            history: self.history.clone(),
            in_service: self.in_service.clone(),
            clean,
            updated: now,
            members: self.members(),
            left: false,
            witnesses: self.witnesses.clone(),
        }
    }
}

/// Whether the replicas reachable at mount, whose membership is now `m`, may serve, given
/// what witness `name` holds (`found`). The witness is written after the replicas at every
/// change of membership, so it has seen every generation the replicas went through: one it
/// saw that `m` never reached means the replicas reachable now missed writes that others, not
/// reachable now, acknowledged. Err: the reason to refuse the mount (one sentence).
pub fn check_witness(found: &Found, name: &str, m: &Membership) -> Result<(), String> {
    let Found::Record(w) = found else {
        // A new witness, or one whose record cannot be read: it vouches for nothing.
        return Ok(());
    };
    if w.set_id != m.set_id {
        return Err(format!(
            "the witness {name} belongs to another replica set ({} is not this set's {}): empty \
             its {META_DIR} directory to make it this set's witness",
            hex(w.set_id),
            hex(m.set_id)
        ));
    }
    if w.generation == Gen::NONE
        || w.generation == m.generation
        || m.history.contains(&w.generation)
    {
        return Ok(());
    }
    let named = |ids: &[u64]| {
        let known: Vec<String> = ids
            .iter()
            .map(|id| match m.ids.iter().position(|i| i == id) {
                Some(i) => format!("replica {i}"),
                None => format!("replica id {}", hex(*id)),
            })
            .collect();
        known.join(", ")
    };
    Err(format!(
        "the witness {name} has seen generation {} of the replica set (in service then: {}), \
         which none of the replicas reachable now reached: they missed writes that are only on \
         replicas not reachable now; bring those back, or give --force-source REPLICA to serve \
         without their writes",
        w.generation.number,
        named(&w.in_service)
    ))
}

fn sorted(ids: impl Iterator<Item = u64>) -> Vec<u64> {
    ids.collect::<BTreeSet<_>>().into_iter().collect()
}

/// The decision taken at mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The membership from now on.
    pub membership: Membership,
    /// Per replica: None = in service, Some(why) = out of service and stale.
    pub stale: Vec<Option<String>>,
    /// Records to write now (index, record): the in-service replicas, new replicas, and
    /// split-brain losers reset to "never in sync". Other stale replicas are left untouched.
    pub writes: Vec<(usize, StateRecord)>,
    /// Lines for the log, each with its level (a routine event, such as a fresh set of empty
    /// replicas, is INFO; an assumption or a change of membership is a WARNING).
    pub notes: Vec<(log::Level, String)>,
    /// The last shutdown of a replica now in service was not clean (the daemon was killed or
    /// the machine crashed): crash recovery heals the journaled paths before serving.
    pub unclean: bool,
    /// After an unclean shutdown, the replicas that were in service then and are not now
    /// (their state unreadable, say). An operation in flight at the kill may have reached
    /// them and be written ahead only in their own journals, so the journal of the others
    /// must not vouch for them: their resync compares whole trees.
    pub in_flight_unknown: Vec<usize>,
    /// Replicas that left the set (their record says so, or the source's members do not
    /// name them): never served, never resynced; not written.
    pub left: Vec<usize>,
}

/// What the admin chose for the decision at mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Choices {
    /// The replica to trust after a split-brain, or when too few answer (`--force-source`).
    pub force_source: Option<usize>,
    /// Whether replicas without any state may become a new set (false: `--no-new-set`).
    pub new_set: bool,
}

/// Decides, from what was found at each replica (`names` for messages), who serves and who is
/// stale, as the admin chose (`choices`). `fresh` gives new random ids. An Err is the reason to
/// refuse the mount.
///
/// The phases: nothing readable refuses; no state anywhere makes a new set ([`new_set`]);
/// else the records must form one set ([`check_one_set`]), the source is the replica no other
/// one is ahead of ([`choose_source`]), every replica is judged against it ([`judge`]), and
/// the membership, the records to write and the crash facts follow.
pub fn plan(
    found: &[Found],
    names: &[String],
    choices: Choices,
    fresh: &mut dyn FnMut() -> u64,
    now: u64,
) -> Result<Plan, String> {
    let force_source = choices.force_source;
    let seen = Seen { found, names };
    if (0..found.len()).all(|i| seen.unreadable(i).is_some()) {
        return Err(format!(
            "cannot read the {META_DIR} state of any replica ({})",
            seen.unreadable(0).unwrap_or_default()
        ));
    }
    let known = seen.known();
    if known.is_empty() {
        if !choices.new_set {
            return Err(format!(
                "no replica holds chironfs state (none of the {} that answer): with \
                 --no-new-set no new replica set is made; are the replicas' filesystems \
                 mounted? (mount once without --no-new-set, or start the OCF resource once \
                 with new_set=true, to make one)",
                (0..found.len())
                    .filter(|&i| seen.unreadable(i).is_none())
                    .count()
            ));
        }
        return new_set(&seen, force_source, fresh, now);
    }
    check_one_set(&seen, &known)?;
    // Replicas that left the set are never served, nor chosen as the source.
    let mut left = marked_left(&seen, &known)?;
    let known: Vec<usize> = known.into_iter().filter(|i| !left.contains(i)).collect();
    let source = choose_source(&seen, &known, force_source)?;
    let reference = seen.record(source).expect("the source holds a record");
    // A replica removed while it did not answer holds no `left` mark: the source's members
    // (when recorded) do not name it.
    if !reference.members.is_empty() {
        left.extend(known.iter().copied().filter(|&i| {
            seen.record(i)
                .is_some_and(|r| !reference.members.iter().any(|(id, _)| *id == r.replica_id))
        }));
    }
    let known: Vec<usize> = known.into_iter().filter(|i| !left.contains(i)).collect();
    if force_source.is_none() {
        check_recorded_majority(&seen, &known, reference)?;
    }
    let verdict = judge(&seen, source, &left);
    let mut notes = Vec::new();
    let ids: Vec<u64> = found
        .iter()
        .map(|f| match f {
            Found::Record(r) => r.replica_id,
            Found::Missing { .. } | Found::Unreadable(_) => fresh(),
        })
        .collect();
    let mut membership = Membership {
        set_id: reference.set_id,
        ids,
        generation: reference.generation,
        history: reference.history.clone(),
        in_service: sorted(reference.in_service.iter().copied()),
        paths: seen.names.iter().map(PathBuf::from).collect(),
        gone: (0..found.len()).map(|i| left.contains(&i)).collect(),
        witnesses: reference.witnesses.clone(),
    };
    notes.extend(member_changes(
        &seen,
        &left,
        &mut membership,
        reference,
        fresh,
    ));
    if membership.change(&verdict.in_service, fresh()) {
        notes.push((
            log::Level::Warn,
            format!(
                "membership changed: generation {}",
                membership.generation.number
            ),
        ));
    }
    if !reference.clean {
        notes.push((
            log::Level::Warn,
            format!("the last shutdown of {} was not clean", names[source]),
        ));
    }
    let writes = records_to_write(&seen, &verdict, &membership, now);
    let unclean = verdict
        .in_service
        .iter()
        .any(|&i| matches!(&found[i], Found::Record(r) if !r.clean));
    let in_flight_unknown = if unclean {
        in_flight_unknown(&seen, &known, reference, &verdict.in_service)
    } else {
        Vec::new()
    };
    Ok(Plan {
        membership,
        stale: verdict.stale,
        writes,
        notes,
        unclean,
        in_flight_unknown,
        left,
    })
}

/// The replicas among `known` whose record says they left the set; Err (one sentence) when
/// every one did.
fn marked_left(seen: &Seen, known: &[usize]) -> Result<Vec<usize>, String> {
    let left: Vec<usize> = known
        .iter()
        .copied()
        .filter(|&i| seen.record(i).is_some_and(|r| r.left))
        .collect();
    if left.len() < known.len() {
        return Ok(left);
    }
    Err(format!(
        "every replica given that holds chironfs state left the replica set ({}): give its \
         current members (their paths are in the {META_DIR}/state of any of them)",
        left.iter()
            .map(|&i| seen.names[i].as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// How the members given differ from those `reference` recorded, in log lines: each replica
/// that `left` (not mounted), and recorded members not given. A difference is recorded at a
/// new generation (with `fresh`) in `membership`. Records without members (older ones) say
/// nothing of who is a member: nothing to compare.
fn member_changes(
    seen: &Seen,
    left: &[usize],
    membership: &mut Membership,
    reference: &StateRecord,
    fresh: &mut dyn FnMut() -> u64,
) -> Vec<(log::Level, String)> {
    let mut notes: Vec<(log::Level, String)> = left
        .iter()
        .map(|&i| {
            (
                log::Level::Warn,
                format!(
                    "replica {} left the replica set (chironctl remove): it is not mounted; take \
                     it off the command line (fstab, OCF replicas)",
                    seen.names[i]
                ),
            )
        })
        .collect();
    let mut now = membership.members();
    let mut then = reference.members.clone();
    now.sort();
    then.sort();
    if now == then || reference.members.is_empty() {
        return notes;
    }
    let ids: Vec<u64> = now.iter().map(|(id, _)| *id).collect();
    let absent: Vec<String> = then
        .iter()
        .filter(|(id, _)| !ids.contains(id))
        .map(|(_, p)| p.display().to_string())
        .collect();
    if !absent.is_empty() {
        notes.push((
            log::Level::Warn,
            format!(
                "members of the replica set at generation {} not given: {} (they leave the set; \
                 chironctl add brings one back)",
                reference.generation.number,
                absent.join(", ")
            ),
        ));
    }
    // A member joined or left since the record: recorded at a new generation.
    membership.bump(fresh());
    notes
}

/// The replicas that answer with their state must include a majority of those the newest
/// record (`reference`) names in service (of two, one: as the lease runs on one of two
/// members). Otherwise the missing ones may hold writes the reachable ones never saw: a
/// replica whose filesystem is not mounted shows as an empty directory, which would else join
/// as a new replica while the stale one serves. Err: why, in one sentence.
fn check_recorded_majority(
    seen: &Seen,
    known: &[usize],
    reference: &StateRecord,
) -> Result<(), String> {
    let recorded = &reference.in_service;
    let present: Vec<usize> = known
        .iter()
        .copied()
        .filter(|&i| {
            seen.record(i)
                .is_some_and(|r| recorded.contains(&r.replica_id))
        })
        .collect();
    let needed = match recorded.len() {
        n if n <= 2 => n.min(1),
        n => n / 2 + 1,
    };
    if present.len() >= needed {
        return Ok(());
    }
    let names: Vec<&str> = present.iter().map(|&i| seen.names[i].as_str()).collect();
    Err(format!(
        "only {} of the {} replicas in service at generation {} answer with their {META_DIR} \
         state ({}): the others may hold writes these never saw (an empty directory may be a \
         replica whose filesystem is not mounted); bring them back, or give --force-source \
         REPLICA to serve from what is here",
        present.len(),
        recorded.len(),
        reference.generation.number,
        names.join(", ")
    ))
}

/// What was found at the replica roots, with their names for messages.
struct Seen<'a> {
    found: &'a [Found],
    names: &'a [String],
}

impl Seen<'_> {
    /// Replica `i`'s record, if it has one.
    fn record(&self, i: usize) -> Option<&StateRecord> {
        match &self.found[i] {
            Found::Record(r) => Some(r),
            Found::Missing { .. } | Found::Unreadable(_) => None,
        }
    }

    /// The replicas holding a record.
    fn known(&self) -> Vec<usize> {
        (0..self.found.len())
            .filter(|&i| self.record(i).is_some())
            .collect()
    }

    /// Why replica `i` starts out when its state could not be read.
    fn unreadable(&self, i: usize) -> Option<String> {
        match &self.found[i] {
            Found::Unreadable(why) => Some(format!("cannot read its {META_DIR} state: {why}")),
            _ => None,
        }
    }
}

/// No replica holds state: a new set, every readable replica in service.
fn new_set(
    seen: &Seen,
    force_source: Option<usize>,
    fresh: &mut dyn FnMut() -> u64,
    now: u64,
) -> Result<Plan, String> {
    if let Some(f) = force_source {
        return Err(format!(
            "--force-source {}: no replica holds chironfs state yet, there is nothing to choose",
            seen.names[f]
        ));
    }
    let n = seen.found.len();
    let ids: Vec<u64> = (0..n).map(|_| fresh()).collect();
    let mut membership = Membership {
        set_id: fresh(),
        ids,
        generation: Gen::NONE,
        history: Vec::new(),
        in_service: Vec::new(),
        paths: seen.names.iter().map(PathBuf::from).collect(),
        gone: vec![false; n],
        witnesses: Vec::new(),
    };
    let all: Vec<usize> = (0..n).filter(|&i| seen.unreadable(i).is_none()).collect();
    membership.change(&all, fresh());
    let holding = seen
        .found
        .iter()
        .any(|f| matches!(f, Found::Missing { empty: false }));
    let (level, what) = if holding {
        (
            log::Level::Warn,
            "adopting the existing files of every replica as identical",
        )
    } else {
        (log::Level::Info, "initialized empty replicas")
    };
    let notes = vec![(
        level,
        format!(
            "new replica set {}: {what} (generation {})",
            hex(membership.set_id),
            membership.generation.number
        ),
    )];
    let writes = all
        .iter()
        .map(|&i| (i, membership.record(i, false, now)))
        .collect();
    Ok(Plan {
        stale: (0..n).map(|i| seen.unreadable(i)).collect(),
        membership,
        writes,
        notes,
        unclean: false,
        in_flight_unknown: Vec::new(),
        left: Vec::new(),
    })
}

/// The records must be of one set, and every replica a different one.
fn check_one_set(seen: &Seen, known: &[usize]) -> Result<(), String> {
    let rec = |i: usize| seen.record(i).expect("known");
    let names = seen.names;
    let first = known[0];
    for (pos, &i) in known.iter().enumerate().skip(1) {
        if rec(i).set_id != rec(first).set_id {
            return Err(format!(
                "replica {} belongs to another replica set (set id {}) than {} (set id {}); \
                 refusing to mount them together",
                names[i],
                hex(rec(i).set_id),
                names[first],
                hex(rec(first).set_id)
            ));
        }
        if let Some(&j) = known[..pos]
            .iter()
            .find(|&&j| rec(j).replica_id == rec(i).replica_id)
        {
            return Err(format!(
                "replicas {} and {} carry the same replica id {} (one is a copy of the other?); \
                 remove the {META_DIR} directory of the copy so it is added as a new replica",
                names[j],
                names[i],
                hex(rec(i).replica_id)
            ));
        }
    }
    Ok(())
}

/// The source: `force_source`, or the replica no other one is ahead of; two such replicas at
/// different generations are a split-brain (Err).
fn choose_source(
    seen: &Seen,
    known: &[usize],
    force_source: Option<usize>,
) -> Result<usize, String> {
    let rec = |i: usize| seen.record(i).expect("known");
    if let Some(f) = force_source {
        if seen.record(f).is_none() {
            return Err(format!(
                "--force-source {}: it holds no chironfs state (a new replica cannot be the source)",
                seen.names[f]
            ));
        }
        return Ok(f);
    }
    let ahead = known
        .iter()
        .copied()
        .filter(|&i| !known.iter().any(|&j| rec(i).is_behind(rec(j))))
        .filter(|&i| rec(i).generation != Gen::NONE);
    let mut groups: Vec<(Gen, Vec<usize>)> = Vec::new();
    for i in ahead {
        match groups.iter_mut().find(|(g, _)| *g == rec(i).generation) {
            Some((_, v)) => v.push(i),
            None => groups.push((rec(i).generation, vec![i])),
        }
    }
    match groups.len() {
        0 => Err(
            "no replica holds up-to-date data (all were reset or never synced); \
             name the one to trust with --force-source REPLICA"
                .into(),
        ),
        1 => Ok(groups[0].1[0]),
        _ => {
            let described: Vec<String> = groups
                .iter()
                .map(|(g, v)| {
                    let members: Vec<&str> = v.iter().map(|&i| seen.names[i].as_str()).collect();
                    format!("{} (generation {})", members.join(", "), g.number)
                })
                .collect();
            Err(format!(
                "split-brain: replicas {} each went on without the other; nothing is \
                 merged: name the survivor with --force-source REPLICA (the others will \
                 be resynced from it)",
                described.join(" and ")
            ))
        }
    }
}

/// Every replica judged against the source.
struct Verdict {
    /// Per replica: None = in service, Some(why) = out of service and stale.
    stale: Vec<Option<String>>,
    /// The replicas in service.
    in_service: Vec<usize>,
    /// Split-brain losers: their records are reset to "never in sync".
    reset: Vec<usize>,
}

/// Who serves and who starts out (and why), measured against the `source`'s record.
fn judge(seen: &Seen, source: usize, left: &[usize]) -> Verdict {
    let reference = seen.record(source).expect("the source holds a record");
    let mut verdict = Verdict {
        stale: vec![None; seen.found.len()],
        in_service: Vec::new(),
        reset: Vec::new(),
    };
    for (i, f) in seen.found.iter().enumerate() {
        let why = match f {
            _ if left.contains(&i) => Some("it left the replica set (chironctl remove)".into()),
            Found::Missing { empty: true } => {
                Some("new replica: not synced yet, resync it".to_string())
            }
            Found::Missing { empty: false } => Some(format!(
                "holds files but no {META_DIR} state: not synced yet, resync it"
            )),
            Found::Unreadable(_) => seen.unreadable(i),
            Found::Record(r) if r.generation == reference.generation => {
                if r.in_service.contains(&r.replica_id) || i == source {
                    None
                } else {
                    Some(format!(
                        "it was out of service at generation {}: resync it",
                        r.generation.number
                    ))
                }
            }
            Found::Record(r) if r.is_behind(reference) => Some(format!(
                "stale: it missed writes before the restart (generation {} < {}), resync it",
                r.generation.number, reference.generation.number
            )),
            Found::Record(r) => {
                verdict.reset.push(i);
                Some(format!(
                    "split-brain loser (generation {}): {} was chosen with --force-source, resync it",
                    r.generation.number, seen.names[source]
                ))
            }
        };
        if why.is_none() {
            verdict.in_service.push(i);
        }
        verdict.stale[i] = why;
    }
    verdict
}

/// The records to write now: the in-service replicas' as members, new replicas' and
/// split-brain losers' reset to "never in sync"; other stale replicas are left untouched.
fn records_to_write(
    seen: &Seen,
    verdict: &Verdict,
    membership: &Membership,
    now: u64,
) -> Vec<(usize, StateRecord)> {
    let mut writes: Vec<(usize, StateRecord)> = verdict
        .in_service
        .iter()
        .map(|&i| (i, membership.record(i, false, now)))
        .collect();
    for (i, f) in seen.found.iter().enumerate() {
        if matches!(f, Found::Missing { .. }) || verdict.reset.contains(&i) {
            writes.push((
                i,
                StateRecord {
                    generation: Gen::NONE,
                    history: Vec::new(),
                    clean: true,
                    ..membership.record(i, true, now)
                },
            ));
        }
    }
    writes.sort_by_key(|(i, _)| *i);
    writes
}

/// After an unclean shutdown, the replicas not in service now that were (or may have been)
/// in service at the kill: see [`Plan::in_flight_unknown`].
fn in_flight_unknown(
    seen: &Seen,
    known: &[usize],
    reference: &StateRecord,
    in_service: &[usize],
) -> Vec<usize> {
    // An unreadable replica's id is unknown: it is suspect if some replica in service at the
    // kill is not among the readable ones.
    let readable: Vec<u64> = known
        .iter()
        .filter_map(|&i| seen.record(i).map(|r| r.replica_id))
        .collect();
    let unaccounted = reference.in_service.iter().any(|id| !readable.contains(id));
    (0..seen.found.len())
        .filter(|i| !in_service.contains(i))
        .filter(|&i| match &seen.found[i] {
            Found::Unreadable(_) => unaccounted,
            Found::Record(r) => reference.in_service.contains(&r.replica_id),
            Found::Missing { .. } => false,
        })
        .collect()
}

/// A random 64-bit id (from the standard library's randomly keyed hasher, mixed with the
/// time, the pid and a counter).
pub fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let v = h.finish();
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The admin's choices with a new set allowed and `force_source`.
    fn ok(force_source: Option<usize>) -> Choices {
        Choices {
            force_source,
            new_set: true,
        }
    }

    fn counter() -> impl FnMut() -> u64 {
        let mut n = 100;
        move || {
            n += 1;
            n
        }
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("/r{i}")).collect()
    }

    fn rec(set: u64, id: u64, generation: Gen, history: &[Gen], in_service: &[u64]) -> Found {
        Found::Record(StateRecord {
            set_id: set,
            replica_id: id,
            generation,
            history: history.to_vec(),
            in_service: in_service.to_vec(),
            clean: true,
            updated: 1,
            ..StateRecord::default()
        })
    }

    const G1: Gen = Gen { number: 1, id: 11 };
    const G2: Gen = Gen { number: 2, id: 22 };
    const G2X: Gen = Gen { number: 2, id: 99 };

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let r = StateRecord {
            set_id: 0xabc,
            replica_id: 7,
            generation: G2,
            history: vec![G1],
            in_service: vec![7, 8],
            clean: false,
            updated: 42,
            members: vec![(7, "/srv/a,1".into()), (8, "/srv/b".into())],
            left: true,
            witnesses: vec![(9, "/w".into())],
        };
        assert_eq!(StateRecord::parse(&r.render()), Ok(r.clone()));
        // A hostile or torn members list is a bad record, never a member.
        for bad in [
            "members=zz:/x",
            "members=0000000000000001",
            "witnesses=1:%G0",
        ] {
            let text = format!("{}{bad}\n", r.render());
            assert!(StateRecord::parse(&text).is_err(), "{bad}");
        }
        let empty = StateRecord {
            history: vec![],
            in_service: vec![],
            ..r
        };
        assert_eq!(StateRecord::parse(&empty.render()), Ok(empty));
        assert!(
            StateRecord::parse("format=2\n")
                .unwrap_err()
                .contains("format 2")
        );
        assert!(StateRecord::parse("hello\n").is_err());
        assert!(StateRecord::parse("format=1\nset=zz\n").is_err());
    }

    #[test]
    fn all_new_replicas_make_a_new_set_all_in_service() {
        let p = plan(
            &[
                Found::Missing { empty: true },
                Found::Missing { empty: true },
            ],
            &names(2),
            ok(None),
            &mut counter(),
            5,
        )
        .unwrap();
        assert_eq!(p.stale, vec![None, None]);
        assert_eq!(p.membership.generation.number, 1);
        assert_eq!(p.writes.len(), 2);
        assert_ne!(p.writes[0].1.replica_id, p.writes[1].1.replica_id);
        assert_eq!(p.writes[0].1.set_id, p.writes[1].1.set_id);
        assert_eq!(p.writes[0].1.in_service.len(), 2);
        assert!(!p.writes[0].1.clean);
    }

    #[test]
    fn a_replica_of_another_set_is_refused() {
        let e = plan(
            &[rec(1, 1, G1, &[], &[1, 2]), rec(2, 2, G1, &[], &[1, 2])],
            &names(2),
            ok(None),
            &mut counter(),
            5,
        )
        .unwrap_err();
        assert!(e.contains("/r1 belongs to another replica set"), "{e}");
    }

    #[test]
    fn a_copied_replica_is_refused() {
        let e = plan(
            &[rec(1, 1, G1, &[], &[1]), rec(1, 1, G1, &[], &[1])],
            &names(2),
            ok(None),
            &mut counter(),
            5,
        )
        .unwrap_err();
        assert!(e.contains("same replica id"), "{e}");
    }

    #[test]
    fn a_replica_behind_is_stale_whatever_the_order() {
        for order in [[0, 1], [1, 0]] {
            let f = [rec(1, 1, G2, &[G1], &[1]), rec(1, 2, G1, &[], &[1, 2])];
            let found: Vec<Found> = order.iter().map(|&i| f[i].clone()).collect();
            let p = plan(&found, &names(2), ok(None), &mut counter(), 5).unwrap();
            let behind = order.iter().position(|&i| i == 1).unwrap();
            assert!(
                p.stale[behind]
                    .as_deref()
                    .unwrap()
                    .contains("missed writes")
            );
            assert!(p.stale[1 - behind].is_none());
            // Same membership as recorded: no bump, only the in-service one is written.
            assert_eq!(p.membership.generation, G2);
            assert_eq!(p.writes.len(), 1);
            assert_eq!(p.writes[0].0, 1 - behind);
        }
    }

    #[test]
    fn an_unclean_shutdown_of_a_replica_in_service_is_reported() {
        let mut dirty = rec(1, 1, G2, &[G1], &[1, 2]);
        if let Found::Record(r) = &mut dirty {
            r.clean = false;
        }
        let p = plan(
            &[dirty.clone(), rec(1, 2, G2, &[G1], &[1, 2])],
            &names(2),
            ok(None),
            &mut counter(),
            5,
        )
        .unwrap();
        assert!(p.unclean);
        assert!(p.notes.iter().any(|(_, n)| n.contains("not clean")));
        // A stale replica's old unclean record is no crash of the running set.
        let p = plan(
            &[rec(1, 2, Gen { number: 3, id: 33 }, &[G1, G2], &[2]), dirty],
            &names(2),
            ok(None),
            &mut counter(),
            5,
        )
        .unwrap();
        assert!(p.stale[1].is_some());
        assert!(!p.unclean);
    }

    #[test]
    fn after_a_kill_a_replica_that_served_then_and_is_unreadable_now_is_flagged() {
        let dirty = |id: u64, in_service: &[u64]| {
            let mut f = rec(1, id, G2, &[G1], in_service);
            if let Found::Record(r) = &mut f {
                r.clean = false;
            }
            f
        };
        let unreadable = || Found::Unreadable("EIO".into());
        let flagged = |found: &[Found]| {
            plan(found, &names(found.len()), ok(None), &mut counter(), 5)
                .unwrap()
                .in_flight_unknown
        };
        // Replica 0 served at the kill (id 1 in the survivors' record) and cannot be read.
        assert_eq!(flagged(&[unreadable(), dirty(2, &[1, 2])]), vec![0]);
        // It was already out at the kill: the survivors' journal covers it.
        assert!(flagged(&[unreadable(), dirty(2, &[2])]).is_empty());
        // A clean shutdown: nothing was in flight.
        assert!(flagged(&[unreadable(), rec(1, 2, G2, &[G1], &[1, 2])]).is_empty());
        // Everyone that served is readable and back: crash recovery reads every journal.
        assert!(flagged(&[dirty(1, &[1, 2]), dirty(2, &[1, 2]), unreadable()]).is_empty());
    }

    #[test]
    fn a_replica_recorded_out_of_service_stays_out() {
        let p = plan(
            &[rec(1, 1, G2, &[G1], &[1]), rec(1, 2, G2, &[G1], &[1])],
            &names(2),
            ok(None),
            &mut counter(),
            5,
        )
        .unwrap();
        assert!(p.stale[0].is_none());
        assert!(p.stale[1].as_deref().unwrap().contains("out of service"));
    }

    #[test]
    fn diverged_replicas_are_a_split_brain_until_one_is_forced() {
        let found = [rec(1, 1, G2, &[G1], &[1]), rec(1, 2, G2X, &[G1], &[2])];
        let e = plan(&found, &names(2), ok(None), &mut counter(), 5).unwrap_err();
        assert!(
            e.contains("split-brain") && e.contains("/r0") && e.contains("/r1"),
            "{e}"
        );
        assert!(e.contains("--force-source"), "{e}");
        let p = plan(&found, &names(2), ok(Some(1)), &mut counter(), 5).unwrap();
        assert!(p.stale[1].is_none());
        assert!(p.stale[0].as_deref().unwrap().contains("split-brain loser"));
        // The loser is reset to "never in sync": the next mount needs no --force-source.
        let loser = p.writes.iter().find(|(i, _)| *i == 0).unwrap();
        assert_eq!(loser.1.generation, Gen::NONE);
        let winner = p.writes.iter().find(|(i, _)| *i == 1).unwrap().1.clone();
        assert_eq!(winner.generation, G2X);
        let again = plan(
            &[Found::Record(loser.1.clone()), Found::Record(winner)],
            &names(2),
            ok(None),
            &mut counter(),
            5,
        )
        .unwrap();
        assert!(again.stale[0].is_some() && again.stale[1].is_none());
    }

    #[test]
    fn a_new_empty_replica_joins_out_of_service() {
        let p = plan(
            &[rec(1, 1, G1, &[], &[1, 2]), Found::Missing { empty: true }],
            &names(2),
            ok(None),
            &mut counter(),
            5,
        )
        .unwrap();
        assert!(p.stale[0].is_none());
        assert!(p.stale[1].as_deref().unwrap().contains("new replica"));
        let new = &p.writes.iter().find(|(i, _)| *i == 1).unwrap().1;
        assert_eq!((new.set_id, new.generation), (1, Gen::NONE));
        // The old member 2 is not here any more: the generation moves on without it.
        assert_eq!(p.membership.generation.number, 2);
        assert_eq!(p.membership.in_service, vec![1]);
    }

    #[test]
    fn an_unreadable_replica_starts_out_and_the_others_serve() {
        let p = plan(
            &[
                Found::Unreadable("EIO".into()),
                rec(1, 1, G1, &[], &[1, 2]),
                rec(1, 2, G1, &[], &[1, 2]),
            ],
            &names(3),
            ok(None),
            &mut counter(),
            5,
        )
        .unwrap();
        assert!(p.stale[0].as_deref().unwrap().contains("cannot read"));
        assert!(p.stale[1].is_none() && p.stale[2].is_none());
        assert!(p.writes.iter().all(|(i, _)| *i != 0));
        let fresh = plan(
            &[
                Found::Unreadable("EIO".into()),
                Found::Missing { empty: true },
            ],
            &names(2),
            ok(None),
            &mut counter(),
            5,
        )
        .unwrap();
        assert!(fresh.stale[0].is_some() && fresh.stale[1].is_none());
        assert_eq!(fresh.writes.len(), 1);
        let e = plan(
            &[
                Found::Unreadable("EIO".into()),
                Found::Unreadable("EIO".into()),
            ],
            &names(2),
            ok(None),
            &mut counter(),
            5,
        )
        .unwrap_err();
        assert!(e.contains("any replica"), "{e}");
    }

    #[test]
    fn membership_changes_bump_the_generation_and_keep_history() {
        let mut m = Membership {
            set_id: 1,
            ids: vec![10, 20],
            generation: G1,
            history: vec![],
            in_service: vec![10, 20],
            ..Membership::default()
        };
        assert!(!m.change(&[1, 0], 5));
        assert!(m.change(&[0], 6));
        assert_eq!(m.generation, Gen { number: 2, id: 6 });
        assert_eq!(m.history, vec![G1]);
        let r = m.record(1, true, 9);
        assert_eq!((r.replica_id, r.in_service.clone()), (20, vec![10]));
        for n in 0..(HISTORY_LEN as u64 + 10) {
            m.change(if n % 2 == 0 { &[0, 1] } else { &[0] }, 100 + n);
        }
        assert_eq!(m.history.len(), HISTORY_LEN);
    }

    #[test]
    fn a_witness_refuses_replicas_that_missed_a_generation_it_saw() {
        let mut m = Membership {
            set_id: 7,
            ids: vec![10, 11],
            generation: Gen { number: 3, id: 33 },
            history: vec![Gen { number: 2, id: 22 }],
            in_service: vec![10, 11],
            ..Membership::default()
        };
        let seen = |m: &Membership| Found::Record(m.record_as(99, false, 0));
        // The same generation, an older one, or none: the replicas are as new as it knows.
        assert_eq!(check_witness(&seen(&m), "/w", &m), Ok(()));
        let older = m.clone();
        assert!(m.change(&[0], 44));
        assert_eq!(check_witness(&seen(&older), "/w", &m), Ok(()));
        assert_eq!(
            check_witness(&Found::Missing { empty: true }, "/w", &m),
            Ok(())
        );
        // Replica 0 went on alone (generation 4, with the witness); replica 1 alone at
        // generation 3 must not serve.
        let why = check_witness(&seen(&m), "/w", &older).unwrap_err();
        assert!(
            why.starts_with("the witness /w has seen generation 4 of the replica set (in service then: replica 0)"),
            "{why}"
        );
        assert!(why.contains("--force-source"), "{why}");
        let other_set = Membership {
            set_id: 8,
            ..m.clone()
        };
        let why = check_witness(&seen(&other_set), "/w", &m).unwrap_err();
        assert!(why.contains("belongs to another replica set"), "{why}");
    }

    #[test]
    fn a_minority_of_the_recorded_replicas_never_serves_alone() {
        let names: Vec<String> = ["/a", "/b", "/c"].iter().map(|s| s.to_string()).collect();
        let m = Membership {
            set_id: 7,
            ids: vec![10, 11, 12],
            generation: Gen { number: 3, id: 33 },
            history: vec![],
            in_service: vec![10, 11, 12],
            ..Membership::default()
        };
        let rec = |i: usize| Found::Record(m.record(i, true, 0));
        let empty = Found::Missing { empty: true };
        let dead = Found::Unreadable("ENOTCONN".into());
        // Two of three answer: they serve (the third starts out of service).
        let plan2 = plan(
            &[rec(0), rec(1), dead.clone()],
            &names,
            ok(None),
            &mut || 99,
            0,
        );
        assert!(plan2.is_ok(), "{plan2:?}");
        // One of three, the others empty (not mounted?) or dead: refused, unless forced.
        for others in [
            [empty.clone(), empty.clone()],
            [dead.clone(), empty.clone()],
        ] {
            let found = [rec(2), others[0].clone(), others[1].clone()];
            let why = plan(&found, &names, ok(None), &mut || 99, 0).unwrap_err();
            assert!(
                why.starts_with("only 1 of the 3 replicas in service at generation 3 answer"),
                "{why}"
            );
            assert!(why.contains("(/a)"), "{why}");
            assert!(plan(&found, &names, ok(Some(0)), &mut || 99, 0).is_ok());
        }
        // Of two recorded, one is enough (the two-member rule of the lease).
        let two = Membership {
            in_service: vec![10, 11],
            ..m.clone()
        };
        let found = [Found::Record(two.record(0, true, 0)), empty, dead];
        assert!(plan(&found, &names, ok(None), &mut || 99, 0).is_ok());
    }

    #[test]
    fn with_no_new_set_replicas_without_state_are_refused() {
        let empty = || Found::Missing { empty: true };
        let choices = Choices {
            force_source: None,
            new_set: false,
        };
        let why = plan(&[empty(), empty()], &names(2), choices, &mut counter(), 5).unwrap_err();
        assert!(
            why.starts_with("no replica holds chironfs state (none of the 2 that answer)"),
            "{why}"
        );
        // A set that exists is mounted as ever.
        let found = [rec(1, 1, G1, &[], &[1, 2]), rec(1, 2, G1, &[], &[1, 2])];
        assert!(plan(&found, &names(2), choices, &mut counter(), 5).is_ok());
    }

    #[test]
    fn replicas_that_left_are_never_served_and_the_recorded_members_are_kept() {
        let names: Vec<String> = ["/a", "/b", "/c"].iter().map(|s| s.to_string()).collect();
        let mut m = Membership {
            set_id: 7,
            ids: vec![10, 11, 12],
            generation: Gen { number: 3, id: 33 },
            history: vec![],
            in_service: vec![10, 11, 12],
            paths: names.iter().map(PathBuf::from).collect(),
            gone: vec![false; 3],
            witnesses: Vec::new(),
        };
        let before = m.clone();
        m.leave(1, 44);
        assert_eq!(m.generation.number, 4);
        assert_eq!(m.in_service, vec![10, 12]);
        assert_eq!(
            m.members(),
            vec![(10, PathBuf::from("/a")), (12, PathBuf::from("/c"))]
        );
        let left = m.record_left(1, 0);
        assert!(left.left && !left.members.iter().any(|(id, _)| *id == 11));
        // /b says it left: not served, not written, and the others serve.
        let found = [
            Found::Record(m.record(0, true, 0)),
            Found::Record(left.clone()),
            Found::Record(m.record(2, true, 0)),
        ];
        let p = plan(&found, &names, ok(None), &mut || 99, 0).unwrap();
        assert_eq!(p.left, vec![1]);
        assert!(
            p.stale[1]
                .as_deref()
                .unwrap()
                .contains("left the replica set")
        );
        assert!(p.stale[0].is_none() && p.stale[2].is_none());
        assert!(p.writes.iter().all(|(i, _)| *i != 1));
        assert_eq!(p.membership.generation.number, 4, "nothing changed since");
        // Removed while it was dead: its own record is older and says nothing, but the
        // members recorded by the others do not name it.
        let found = [
            Found::Record(m.record(0, true, 0)),
            Found::Record(before.record(1, true, 0)),
            Found::Record(m.record(2, true, 0)),
        ];
        let p = plan(&found, &names, ok(None), &mut || 99, 0).unwrap();
        assert_eq!(p.left, vec![1]);
        // Only replicas that left: refused, in one sentence.
        let why = plan(
            &[Found::Record(left)],
            &names[1..2],
            ok(None),
            &mut || 99,
            0,
        )
        .unwrap_err();
        assert!(
            why.starts_with("every replica given that holds chironfs state left"),
            "{why}"
        );
        // A member joins: recorded by every member at a new generation.
        let mut grown = m.clone();
        let index = grown.join(13, Path::new("/d"), 55);
        assert_eq!((index, grown.generation.number), (3, 5));
        assert_eq!(grown.members().len(), 3);
        assert!(!grown.in_service.contains(&13));
    }
}
