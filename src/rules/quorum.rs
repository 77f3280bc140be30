//! Quorum (`--quorum auto|N`): with it, a mutation is refused with EROFS while fewer than the
//! quorum of the set's members answer, so that two halves of a split replica set (say a
//! cluster whose nodes lost sight of each other, each mounting the replicas it still reaches)
//! can never both accept writes and diverge. Reads keep working: the mount behaves like a
//! read-only filesystem until enough members are back (`chironctl enable`, `resync`).
//!
//! One majority rule with the lease (`rules/lease.rs`): the members are the data replicas and
//! the witness (`--witness`); a replica counts while it is in service, a witness while it
//! answers the lease's renewals. So with two replicas and a witness, `auto` (2 of 3) keeps
//! writing on one replica and the witness, as GlusterFS's arbiter does, and the witness
//! records the generation, so that the other replica, alone or with the witness, can never
//! serve the older data (`rules::state::check_witness`).
//!
//! EROFS because it is what applications and admins already know from a read-only mount:
//! `open(O_WRONLY)`, `mkdir`, `rename`... fail at once with "Read-only file system", and
//! nothing half-applied is left behind. Every call the replica set treats as a mutation is
//! refused, `fsync` and the flush of `close(2)` of a file opened for writing earlier included:
//! the set counts them as mutations (an out-of-service replica "misses" them and becomes
//! stale), and a refused call reaches no replica, so a replica that was taken out while the
//! quorum was lost missed nothing and comes back with a plain `chironctl enable`.
//!
//! The rules are pure functions ([`parse_setting`], [`required`], [`warning`], [`allows`]),
//! unit-tested; [`Quorum`] holds the setting for the replica set and logs every transition
//! (lost at ALERT, regained at WARNING) once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The `--quorum` value as given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// A majority of the members (replicas and witness): floor(N/2)+1.
    Auto,
    /// Exactly this many members.
    Count(usize),
}

/// Parses `--quorum` / `-o quorum=`: `auto`, `off` (None: no quorum, the default) or a
/// number.
pub fn parse_setting(s: &str) -> Result<Option<Setting>, String> {
    match s.trim() {
        "auto" => Ok(Some(Setting::Auto)),
        "off" => Ok(None),
        n => n
            .parse::<usize>()
            .map(|n| Some(Setting::Count(n)))
            .map_err(|_| format!("'{s}' is not auto, off or a number of replicas")),
    }
}

/// The number of members (replicas in service, witnesses answering) mutations need, for a
/// set of `members` (replicas and witnesses); an error (one sentence) when a count is not
/// between 1 and `members`.
pub fn required(setting: Setting, members: usize) -> Result<usize, String> {
    match setting {
        Setting::Auto => Ok(members / 2 + 1),
        Setting::Count(0) => {
            Err("a quorum of 0 members means nothing; give 1 or more, or auto".into())
        }
        Setting::Count(n) if n > members => Err(format!(
            "a quorum of {n} cannot be met by {members} members (replicas and witness); give 1 \
             to {members}, or auto"
        )),
        Setting::Count(n) => Ok(n),
    }
}

/// Why a quorum setting is probably not what the admin wants (logged at mount, not refused:
/// it is still well defined), or None.
///
/// Below a majority, two halves can each hold a quorum: no protection against split-brain.
/// With fewer than 3 members a majority is all of them: any replica out of service stops
/// writes, which some want (never diverge) but should know.
pub fn warning(required: usize, members: usize) -> Option<String> {
    if required * 2 <= members {
        Some(format!(
            "quorum {required} of {members} members is not a majority: two halves of the set \
             could both accept writes (use auto = {})",
            members / 2 + 1
        ))
    } else if members < 3 {
        Some(format!(
            "quorum {required} of {members} members: any replica out of service makes the \
             mount refuse writes (EROFS); a quorum is meant for 3 or more members (a witness \
             counts: --witness)"
        ))
    } else {
        None
    }
}

/// Whether a mutation may run with `in_service` replicas in service under a quorum of
/// `required` (None: no quorum).
pub fn allows(required: Option<usize>, in_service: usize) -> bool {
    required.is_none_or(|q| in_service >= q)
}

/// The quorum of one replica set, with the memory of whether it is currently lost (so each
/// transition is logged once).
#[derive(Debug, Default)]
pub struct Quorum {
    /// Members mutations need; 0: no quorum. Atomic: it follows the member count under `auto`
    /// when members join or leave online ([`Quorum::members_changed`]).
    required: AtomicUsize,
    /// `--quorum auto`: a majority of however many members the set has.
    auto: bool,
    total: AtomicUsize,
    /// What is counted, in words: the replicas in service, and the witnesses answering when
    /// the set has any (one rule with the lease: both count the set's members).
    counted: &'static str,
    mountpoint: String,
    lost: AtomicBool,
}

impl Quorum {
    /// The quorum `required` (None: off; `auto`: a majority, kept one as members change) of a
    /// set of `replicas` and `witnesses` mounted on `mountpoint`; logs what it means at mount,
    /// and a [`warning`] if any. A witness counts while it answers the lease's renewals, as it
    /// does for the lease.
    pub fn new(
        required: Option<usize>,
        auto: bool,
        replicas: usize,
        witnesses: usize,
        mountpoint: String,
    ) -> Self {
        let total = replicas + witnesses;
        let counted = if witnesses == 0 {
            "replicas in service"
        } else {
            "members answering (replicas in service, witnesses)"
        };
        if let Some(q) = required {
            log::info!(
                "quorum on {mountpoint}: mutations need {q} of {total} {counted} (EROFS \
                 otherwise)"
            );
            if let Some(w) = warning(q, total) {
                log::warn!("{w}");
            }
        }
        Quorum {
            required: AtomicUsize::new(required.unwrap_or(0)),
            auto: auto && required.is_some(),
            total: AtomicUsize::new(total),
            counted,
            mountpoint,
            lost: AtomicBool::new(false),
        }
    }

    /// The replicas mutations need, None when there is no quorum.
    pub fn required(&self) -> Option<usize> {
        Some(self.required.load(Ordering::Acquire)).filter(|&q| q > 0)
    }

    /// What the quorum becomes for a set of `members` (None: off): `auto` follows the count,
    /// a fixed count stays.
    pub fn required_for(&self, members: usize) -> Option<usize> {
        match self.required() {
            Some(_) if self.auto => Some(members / 2 + 1),
            q => q,
        }
    }

    /// Members joined or left online: the set now has `members`. Returns the log line when the
    /// quorum changed with them (`auto`).
    pub fn members_changed(&self, members: usize) -> Option<String> {
        self.total.store(members, Ordering::Release);
        let before = self.required()?;
        let now = self.required_for(members)?;
        self.required.store(now, Ordering::Release);
        (now != before).then(|| {
            format!(
                "quorum on {}: mutations now need {now} of {members} {} (auto)",
                self.mountpoint, self.counted
            )
        })
    }

    /// Notes the number of replicas in service, logging a loss (ALERT) or a recovery
    /// (WARNING) of the quorum once per transition; returns whether it is met.
    pub fn observe(&self, in_service: usize) -> bool {
        let Some(q) = self.required() else {
            return true;
        };
        let met = in_service >= q;
        // Read first: every mutation comes here, and a store would bounce the cache line
        // between the FUSE threads even when nothing changes.
        if self.lost.load(Ordering::Acquire) != met {
            return met;
        }
        let was_lost = self.lost.swap(!met, Ordering::AcqRel);
        if !met && !was_lost {
            log::error!(
                target: crate::view::words::ALERT_TARGET,
                "quorum lost on {}: {in_service} of {} {}, {q} needed; mutations fail with \
                 EROFS (read-only) until members come back",
                self.mountpoint,
                self.total.load(Ordering::Relaxed),
                self.counted
            );
        } else if met && was_lost {
            log::warn!(
                "quorum regained on {}: {in_service} of {} {} ({q} needed); mutations \
                 accepted again",
                self.mountpoint,
                self.total.load(Ordering::Relaxed),
                self.counted
            );
        }
        met
    }

    /// The one check of every mutation: Ok to go on, or Err(EROFS) while the quorum is lost.
    pub fn admit(&self, op: &str, in_service: usize) -> Result<(), i32> {
        self.observe(in_service);
        if allows(self.required(), in_service) {
            Ok(())
        } else {
            log::debug!("{op} refused: no quorum on {}", self.mountpoint);
            Err(libc::EROFS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse() {
        assert_eq!(parse_setting("auto"), Ok(Some(Setting::Auto)));
        assert_eq!(parse_setting("off"), Ok(None));
        assert_eq!(parse_setting("2"), Ok(Some(Setting::Count(2))));
        let e = parse_setting("most").unwrap_err();
        assert_eq!(e, "'most' is not auto, off or a number of replicas");
        assert!(parse_setting("-1").is_err());
    }

    #[test]
    fn auto_is_a_majority_and_counts_are_bounded() {
        assert_eq!(required(Setting::Auto, 2), Ok(2));
        assert_eq!(required(Setting::Auto, 3), Ok(2));
        assert_eq!(required(Setting::Auto, 4), Ok(3));
        assert_eq!(required(Setting::Auto, 5), Ok(3));
        assert_eq!(required(Setting::Count(3), 3), Ok(3));
        assert_eq!(required(Setting::Count(1), 3), Ok(1));
        let e = required(Setting::Count(4), 3).unwrap_err();
        assert!(
            e.contains("cannot be met by 3 members (replicas and witness); give 1 to 3"),
            "{e}"
        );
        assert!(
            required(Setting::Count(0), 3)
                .unwrap_err()
                .contains("0 members")
        );
    }

    #[test]
    fn warnings_for_minorities_and_small_sets() {
        assert_eq!(warning(2, 3), None);
        assert_eq!(warning(3, 5), None);
        assert_eq!(warning(5, 5), None);
        assert!(warning(1, 3).unwrap().contains("not a majority"));
        assert!(warning(2, 4).unwrap().contains("use auto = 3"));
        assert!(
            warning(2, 2)
                .unwrap()
                .contains("any replica out of service")
        );
        assert!(warning(1, 2).unwrap().contains("not a majority"));
    }

    #[test]
    fn mutations_need_the_quorum() {
        assert!(allows(None, 0));
        assert!(allows(Some(2), 2));
        assert!(allows(Some(2), 3));
        assert!(!allows(Some(2), 1));
        assert!(!allows(Some(3), 0));
        assert!(allows(Some(1), 1));
    }

    #[test]
    fn transitions_are_tracked_and_refusals_are_erofs() {
        let q = Quorum::new(Some(2), true, 2, 1, "/mnt".into());
        assert!(q.observe(3));
        assert_eq!(q.admit("write", 2), Ok(()));
        assert_eq!(q.admit("write", 1), Err(libc::EROFS));
        assert!(q.lost.load(Ordering::Relaxed));
        assert_eq!(q.admit("fsync", 1), Err(libc::EROFS));
        assert!(q.observe(2));
        assert!(!q.lost.load(Ordering::Relaxed));
        let off = Quorum::default();
        assert_eq!(off.admit("write", 0), Ok(()));
        assert_eq!(off.required(), None);
    }

    #[test]
    fn auto_follows_the_member_count_and_a_fixed_count_stays() {
        let auto = Quorum::new(Some(2), true, 3, 0, "/mnt".into());
        let line = auto.members_changed(5).unwrap();
        assert!(line.contains("now need 3 of 5"), "{line}");
        assert_eq!(auto.required(), Some(3));
        assert_eq!(auto.members_changed(5), None);
        assert_eq!(auto.required_for(2), Some(2));
        let fixed = Quorum::new(Some(2), false, 3, 0, "/mnt".into());
        assert_eq!(fixed.members_changed(4), None);
        assert_eq!(fixed.required_for(4), Some(2));
        let off = Quorum::new(None, true, 3, 0, "/mnt".into());
        assert_eq!(off.members_changed(4), None);
        assert_eq!(off.required_for(4), None);
    }
}
