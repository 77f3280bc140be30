//! The ownership lease: one daemon writes a replica set at a time. The lease lives in
//! `.chironfs/lease` on every member of the set (the data replicas and the witnesses); its
//! owner renews it at a fixed interval, and a daemon that finds it held decides whether the
//! owner is alive from renewals seen over its **own** monotonic clock (a delta lease, as
//! sanlock's), never by comparing two hosts' clocks. Pure: the record format, the timing
//! relations, the majority, and what one member's record means to a daemon that wants it;
//! `engine/lease.rs` does the I/O and the renewal thread.
//!
//! The timing (L = `--lease-time`, T = `--timeout`, see [`Timing`]): the owner renews every
//! `F / 4` and stops acknowledging mutations `F = (L - T) / 2` after the start of its last
//! renewal round that reached a majority; a mutation in flight then ends by `F + T`; a daemon
//! taking over waits until it saw no renewal for `L` on its own clock. `L - (F + T) = F` is the
//! margin for clock-rate differences and scheduling.

use std::time::Duration;

/// The lease file's name in `.chironfs`.
pub const LEASE_FILE: &str = "lease";

/// Who holds (or held) the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Host name, for messages.
    pub host: String,
    /// The host's boot id (`/proc/sys/kernel/random/boot_id`): same boot id = same running
    /// kernel, where a pid can be checked.
    pub boot: String,
    /// The daemon's pid.
    pub pid: u32,
    /// Its mount point.
    pub mountpoint: String,
    /// When it took the lease (Unix seconds, the owner's clock: for messages only).
    pub since: u64,
}

/// Whether the owner still holds the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Held and renewed.
    Held,
    /// The owner is unmounting: it will release soon (a new daemon on its host waits).
    Stopping,
    /// Released at a clean unmount: free at once.
    Released,
}

/// One member's `.chironfs/lease`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The owner.
    pub owner: Owner,
    /// Raised at every change of owner; a daemon whose epoch is no longer the newest never
    /// writes again.
    pub epoch: u64,
    /// Raised at every renewal: what another daemon watches move.
    pub renewal: u64,
    /// Held, stopping or released.
    pub hold: Hold,
}

impl LeaseRecord {
    /// The file's text: `key=value` lines, a checksum of them (a record rewritten in place can
    /// be read torn), padded with spaces to a multiple of 512 bytes so that a rewrite keeps
    /// the file's size (and needs no new block on a full replica).
    pub fn render(&self) -> String {
        let hold = match self.hold {
            Hold::Held => "held",
            Hold::Stopping => "stopping",
            Hold::Released => "released",
        };
        let body = format!(
            "format=1\nhost={}\nboot={}\npid={}\nmountpoint={}\nsince={}\nepoch={}\nrenewal={}\nhold={hold}\n",
            one_line(&self.owner.host),
            one_line(&self.owner.boot),
            self.owner.pid,
            one_line(&self.owner.mountpoint),
            self.owner.since,
            self.epoch,
            self.renewal,
        );
        let mut text = format!("{body}sum={:016x}\n", checksum(&body));
        let padded = text.len().div_ceil(512) * 512;
        text.extend(std::iter::repeat_n(' ', padded - text.len()));
        text
    }

    /// Parses [`LeaseRecord::render`]'s text; Err says what is wrong.
    pub fn parse(text: &str) -> Result<LeaseRecord, String> {
        let get = |key: &str| -> Result<String, String> {
            text.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                .map(str::to_owned)
                .ok_or_else(|| format!("no {key}"))
        };
        if get("format")? != "1" {
            return Err("unknown lease format".into());
        }
        let body = text.split("sum=").next().unwrap_or_default();
        if get("sum")? != format!("{:016x}", checksum(body)) {
            return Err("its checksum does not match (torn or edited)".into());
        }
        let num = |v: String, key: &str| v.parse::<u64>().map_err(|_| format!("bad {key}"));
        let hold = match get("hold")?.as_str() {
            "held" => Hold::Held,
            "stopping" => Hold::Stopping,
            "released" => Hold::Released,
            _ => return Err("bad hold".into()),
        };
        Ok(LeaseRecord {
            owner: Owner {
                host: get("host")?,
                boot: get("boot")?,
                pid: num(get("pid")?, "pid")? as u32,
                mountpoint: get("mountpoint")?,
                since: num(get("since")?, "since")?,
            },
            epoch: num(get("epoch")?, "epoch")?,
            renewal: num(get("renewal")?, "renewal")?,
            hold,
        })
    }

    /// Whether this record is `me` (same boot, same pid) at `epoch`.
    pub fn is(&self, me: &Owner, epoch: u64) -> bool {
        self.owner.boot == me.boot && self.owner.pid == me.pid && self.epoch == epoch
    }
}

/// FNV-1a of the record's lines.
fn checksum(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The lease's timing, from the lease time and the per-replica deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// L: how long a lease must go unrenewed before another daemon takes it.
    pub lease: Duration,
    /// T: the per-replica deadline (`--timeout`).
    pub timeout: Duration,
}

impl Timing {
    /// The smallest lease time for a deadline: the owner must have at least a second between
    /// its last renewal and fencing itself.
    pub fn minimum_lease(timeout: Duration) -> Duration {
        timeout + Duration::from_secs(2)
    }

    /// The default lease time: twice the deadline, at least 4 s.
    pub fn default_lease(timeout: Duration) -> Duration {
        (timeout * 2).max(Duration::from_secs(4))
    }

    /// F: the owner stops acknowledging mutations this long after the start of its last
    /// renewal round that reached a majority.
    pub fn fence_after(&self) -> Duration {
        self.lease.saturating_sub(self.timeout) / 2
    }

    /// How often the owner renews: four tries before it would fence itself.
    pub fn renew_every(&self) -> Duration {
        (self.fence_after() / 4).max(Duration::from_millis(100))
    }

    /// The deadline of one member's lease read or write (a hung member costs at most this per
    /// renewal round). One and a half renewal intervals: with a member hung, a round takes this
    /// long and the next starts at once, so a round's start is at most twice this, three
    /// intervals, old when the next one records it, an interval short of fencing (at two
    /// intervals the owner fenced itself now and then while one of two members hung).
    pub fn member_deadline(&self) -> Duration {
        self.timeout.min(self.renew_every() * 3 / 2)
    }
}

/// How many members must hold the lease: a majority, except that a set of two members
/// without `strict` may run on the one that answers (refusing would turn every single
/// failure into an outage; a storage partition can then still split the set, which a witness
/// closes).
pub fn needed(members: usize, answering: usize, strict: bool) -> usize {
    let majority = members / 2 + 1;
    if members == 2 && !strict && answering < 2 {
        1
    } else {
        majority
    }
}

/// What one member's record means to a daemon (`me`) that wants the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// No lease, released, or held by a daemon of this host whose pid is gone: free now.
    Free,
    /// Held by a live daemon of this host: refuse at once.
    LiveHere(Owner),
    /// Held by a daemon of this host that is unmounting: wait for its release.
    StoppingHere(Owner),
    /// Held by a daemon of another host (or boot): alive only if its renewals move.
    Remote(Owner),
}

/// Classifies one member's record; `pid_alive` says whether a pid of this host runs.
pub fn assess(record: Option<&LeaseRecord>, me: &Owner, pid_alive: &dyn Fn(u32) -> bool) -> Found {
    let Some(r) = record else {
        return Found::Free;
    };
    if r.hold == Hold::Released {
        return Found::Free;
    }
    // Another host: another boot, or another host name on this kernel (a container or a
    // network namespace with its own UTS name, whose pids are not ours to look at).
    if r.owner.boot != me.boot || r.owner.host != me.host {
        return Found::Remote(r.owner.clone());
    }
    if r.owner.pid == me.pid || !pid_alive(r.owner.pid) {
        return Found::Free;
    }
    match r.hold {
        Hold::Stopping => Found::StoppingHere(r.owner.clone()),
        _ => Found::LiveHere(r.owner.clone()),
    }
}

/// A remote owner's renewals as this daemon saw them on one member: the counter and when (on
/// this daemon's monotonic clock) it was first seen at that value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watched {
    /// The renewal counter (with the epoch: a new owner is a change too).
    pub seen: (u64, u64),
    /// Since when (monotonic) it has not moved.
    pub since: Duration,
}

impl Watched {
    /// Notes the record seen `now`; true when it moved since the last look (the owner lives).
    pub fn observe(&mut self, record: &LeaseRecord, now: Duration) -> bool {
        let seen = (record.epoch, record.renewal);
        if seen != self.seen {
            self.seen = seen;
            self.since = now;
            return true;
        }
        false
    }

    /// Whether the lease went unrenewed for the lease time.
    pub fn expired(&self, now: Duration, lease: Duration) -> bool {
        now.saturating_sub(self.since) >= lease
    }
}

/// Who holds a lease, in words: "host a (pid 12, /mnt/x) since 2026-12-06 10:00:00 UTC".
pub fn describe(owner: &Owner, since_words: &str) -> String {
    format!(
        "{} (pid {}, mount point {}) since {since_words}",
        owner.host, owner.pid, owner.mountpoint
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Owner {
        Owner {
            host: "a".into(),
            boot: "boot-a".into(),
            pid: 10,
            mountpoint: "/mnt".into(),
            since: 1,
        }
    }

    fn rec(boot: &str, pid: u32, hold: Hold, renewal: u64) -> LeaseRecord {
        LeaseRecord {
            owner: Owner {
                host: "a".into(),
                boot: boot.into(),
                pid,
                mountpoint: "/m".into(),
                since: 5,
            },
            epoch: 3,
            renewal,
            hold,
        }
    }

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let r = rec("b\nx", 7, Hold::Stopping, 9);
        let back = LeaseRecord::parse(&r.render()).unwrap();
        assert_eq!(back.owner.boot, "b x");
        assert_eq!(
            (back.epoch, back.renewal, back.hold),
            (3, 9, Hold::Stopping)
        );
        assert!(LeaseRecord::parse("format=2\n").is_err());
        assert_eq!(r.render().len() % 512, 0);
        let torn = r.render().replace("renewal=9", "renewal=8");
        assert!(LeaseRecord::parse(&torn).unwrap_err().contains("checksum"));
        assert!(LeaseRecord::parse(&r.render().replace("pid=7", "pid=x")).is_err());
        assert!(LeaseRecord::parse("").is_err());
    }

    #[test]
    fn a_lease_is_free_when_missing_released_or_its_local_owner_is_gone() {
        let alive = |_: u32| true;
        let dead = |_: u32| false;
        assert_eq!(assess(None, &me(), &alive), Found::Free);
        let released = rec("boot-x", 7, Hold::Released, 1);
        assert_eq!(assess(Some(&released), &me(), &alive), Found::Free);
        let here = rec("boot-a", 7, Hold::Held, 1);
        assert_eq!(assess(Some(&here), &me(), &dead), Found::Free);
        assert!(matches!(
            assess(Some(&here), &me(), &alive),
            Found::LiveHere(_)
        ));
        let stopping = rec("boot-a", 7, Hold::Stopping, 1);
        assert!(matches!(
            assess(Some(&stopping), &me(), &alive),
            Found::StoppingHere(_)
        ));
        let remote = rec("boot-b", 10, Hold::Held, 1);
        assert!(matches!(
            assess(Some(&remote), &me(), &dead),
            Found::Remote(_)
        ));
        // Same kernel, another host name (a container, a namespace): its pid says nothing
        // here, so it is remote, never taken over because a pid of ours is free.
        let mut neighbour = rec("boot-a", 7, Hold::Held, 1);
        neighbour.owner.host = "b".into();
        assert!(matches!(
            assess(Some(&neighbour), &me(), &dead),
            Found::Remote(_)
        ));
    }

    #[test]
    fn a_remote_lease_expires_only_after_going_unrenewed_for_the_lease_time() {
        let lease = Duration::from_secs(10);
        let mut w = Watched {
            seen: (0, 0),
            since: Duration::ZERO,
        };
        let r = rec("boot-b", 1, Hold::Held, 4);
        assert!(w.observe(&r, Duration::from_secs(100)));
        assert!(!w.observe(&r, Duration::from_secs(105)));
        assert!(!w.expired(Duration::from_secs(109), lease));
        let renewed = rec("boot-b", 1, Hold::Held, 5);
        assert!(w.observe(&renewed, Duration::from_secs(109)));
        assert!(!w.expired(Duration::from_secs(118), lease));
        assert!(w.expired(Duration::from_secs(119), lease));
    }

    #[test]
    fn the_owner_fences_itself_with_a_margin_before_anyone_takes_over() {
        let t = Timing {
            lease: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        };
        let f = t.fence_after();
        assert_eq!(f, Duration::from_millis(2500));
        // Fenced, plus the longest mutation in flight, plus a margin of F: the lease time.
        assert_eq!(f + t.timeout + f, t.lease);
        assert!(t.renew_every() * 4 <= f);
        assert!(t.member_deadline() <= t.timeout);
        // Two rounds each waiting on a hung member end before the owner would fence itself.
        assert!(t.member_deadline() * 2 + t.renew_every() <= f);
        assert!(Timing::default_lease(t.timeout) >= Timing::minimum_lease(t.timeout));
    }

    #[test]
    fn a_majority_of_members_except_two_without_strict() {
        assert_eq!(needed(3, 3, false), 2);
        assert_eq!(needed(3, 1, false), 2);
        assert_eq!(needed(2, 2, false), 2);
        assert_eq!(needed(2, 1, false), 1);
        assert_eq!(needed(2, 1, true), 2);
        assert_eq!(needed(1, 1, false), 1);
        assert_eq!(needed(5, 5, false), 3);
    }
}
