//! The resync's pure decisions: what one entry looks like ([`Meta`]), its hard-link situation
//! ([`Group`]), what to do with it given both sides ([`decide`] -> [`Plan`]) and which of its
//! attributes to fix ([`attr_fix`]).
//!
//! No I/O, no clock, no engine: it may touch only `libc`'s constants and the stat buffer it is
//! handed, so every rule is unit-tested here without a replica.

/// What the resync needs to know about one entry (from `lstat`, plus a symlink's target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// `st_mode & S_IFMT`.
    pub kind: u32,
    /// Permission bits (`st_mode & 07777`).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Access time (seconds, nanoseconds).
    pub atime: (i64, i64),
    /// Device number of a device node.
    pub rdev: u64,
    /// Hard link count.
    pub nlink: u64,
    /// (st_dev, st_ino): the inode's identity on its replica.
    pub ino: (u64, u64),
    /// A symlink's target.
    pub link: Option<Vec<u8>>,
}

impl Meta {
    /// From a stat buffer (and the link target for a symlink).
    pub fn of(st: &libc::stat, link: Option<Vec<u8>>) -> Meta {
        Meta {
            kind: st.st_mode & libc::S_IFMT,
            perm: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            atime: (st.st_atime, st.st_atime_nsec),
            rdev: st.st_rdev,
            nlink: st.st_nlink,
            ino: (st.st_dev, st.st_ino),
            link,
        }
    }

    /// Whether it is of file type `kind` (`S_IFREG`, `S_IFDIR`, ...).
    pub fn is(&self, kind: u32) -> bool {
        self.kind == kind
    }

    /// A regular file with several links: its other names must become links to the same
    /// target inode, never separate copies.
    pub fn hard_linked(&self) -> bool {
        self.is(libc::S_IFREG) && self.nlink > 1
    }
}

/// The hard-link situation of a source regular file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// A single link (or not a regular file).
    Single,
    /// The first link of its inode seen: it is copied, the others will be linked to it.
    /// `claimed`: the target entry's inode already stands for another source inode.
    Leader {
        /// The target inode belongs to another group: it must not be written in place.
        claimed: bool,
    },
    /// Another link of an inode already copied to the target as inode `target_ino`.
    Member {
        /// The target inode the group was copied to.
        target_ino: (u64, u64),
    },
}

/// What to do with one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Both sides agree (or neither has it).
    Nothing,
    /// Only the target has it: remove it (recursively).
    Remove,
    /// Create it on the target from the source (removing what is there first if `replace`).
    Create {
        /// Something of another kind or identity is in the way.
        replace: bool,
    },
    /// Hard-link it to the group's target inode (removing what is there first if `replace`).
    Link {
        /// Something else is in the way.
        replace: bool,
    },
    /// Same kind on both sides: fix the attributes, and the content if `content`.
    Update {
        /// Copy the file's bytes.
        content: bool,
    },
}

/// Decides what to do with one path given both sides. `force` copies a regular file's content
/// even when size and mtime agree (a path written during the resync).
pub fn decide(src: Option<&Meta>, dst: Option<&Meta>, group: Group, force: bool) -> Plan {
    let (s, d) = match (src, dst) {
        (None, None) => return Plan::Nothing,
        (None, Some(_)) => return Plan::Remove,
        (Some(_), None) => {
            return match group {
                Group::Member { .. } => Plan::Link { replace: false },
                _ => Plan::Create { replace: false },
            };
        }
        (Some(s), Some(d)) => (s, d),
    };
    let replace = match group {
        Group::Member { .. } => Plan::Link { replace: true },
        _ => Plan::Create { replace: true },
    };
    if s.kind != d.kind {
        return replace;
    }
    match s.kind {
        libc::S_IFLNK if s.link != d.link => replace,
        libc::S_IFCHR | libc::S_IFBLK if s.rdev != d.rdev => replace,
        libc::S_IFREG => {
            let differs = force || s.size != d.size || s.mtime != d.mtime;
            match group {
                Group::Member { target_ino } if d.ino == target_ino => {
                    // The same inode as the group's first link: copied with it.
                    if force {
                        Plan::Update { content: true }
                    } else {
                        Plan::Nothing
                    }
                }
                Group::Member { .. } => replace,
                // A link the source does not share, or an inode that stands for another
                // group: writing it in place would change other names too.
                Group::Single if d.nlink > 1 => replace,
                Group::Leader { claimed: true } if d.nlink > 1 => replace,
                _ => Plan::Update { content: differs },
            }
        }
        _ => Plan::Update { content: false },
    }
}

/// Which attributes of an existing target entry differ from the source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttrFix {
    /// uid or gid.
    pub owner: bool,
    /// Permission bits (never for a symlink).
    pub mode: bool,
    /// atime or mtime.
    pub times: bool,
}

/// Compares the attributes of `s` and `d` (same kind). Directory and symlink atimes move with
/// every listing or readlink (the resync's own included), so only their mtime counts.
pub fn attr_fix(s: &Meta, d: &Meta) -> AttrFix {
    let atime_counts = !s.is(libc::S_IFDIR) && !s.is(libc::S_IFLNK);
    AttrFix {
        owner: (s.uid, s.gid) != (d.uid, d.gid),
        mode: !s.is(libc::S_IFLNK) && s.perm != d.perm,
        times: s.mtime != d.mtime || (atime_counts && s.atime != d.atime),
    }
}

/// Whether carrying out `plan` changes the target's entry (what the progress counts in
/// `files`): anything beyond "nothing" or "attributes only", or attributes that differ.
pub fn changes_target(plan: Plan, src: Option<&Meta>, dst: Option<&Meta>) -> bool {
    let fixes = match (src, dst) {
        (Some(s), Some(d)) if s.kind == d.kind => attr_fix(s, d) != AttrFix::default(),
        _ => false,
    };
    !matches!(plan, Plan::Nothing | Plan::Update { content: false }) || fixes
}

/// The attributes to set on the target once `plan` is carried out for source entry `s`
/// (`dst`: the target's entry before): all of them on a created entry, the times too after
/// a content copy (writing moved them), else those that differ.
pub fn attrs_to_fix(plan: Plan, s: &Meta, dst: Option<&Meta>) -> AttrFix {
    if let Plan::Create { .. } = plan {
        return AttrFix {
            owner: true,
            mode: true,
            times: true,
        };
    }
    let mut fix = dst.map_or_else(AttrFix::default, |d| attr_fix(s, d));
    if plan == (Plan::Update { content: true }) {
        fix.times = true;
    }
    fix
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: u32) -> Meta {
        Meta {
            kind,
            perm: 0o644,
            uid: 1,
            gid: 1,
            size: 10,
            mtime: (100, 5),
            atime: (90, 0),
            rdev: 0,
            nlink: 1,
            ino: (1, 10),
            link: None,
        }
    }

    const REG: u32 = libc::S_IFREG;

    #[test]
    fn missing_extra_and_equal_entries() {
        let f = meta(REG);
        assert_eq!(decide(None, None, Group::Single, false), Plan::Nothing);
        assert_eq!(decide(None, Some(&f), Group::Single, false), Plan::Remove);
        assert_eq!(
            decide(Some(&f), None, Group::Single, false),
            Plan::Create { replace: false }
        );
        let other = Meta {
            ino: (2, 20),
            ..f.clone()
        };
        assert_eq!(
            decide(Some(&f), Some(&other), Group::Single, false),
            Plan::Update { content: false }
        );
        assert_eq!(
            decide(Some(&f), Some(&other), Group::Single, true),
            Plan::Update { content: true }
        );
    }

    #[test]
    fn content_is_copied_when_size_or_mtime_differ() {
        let s = meta(REG);
        let bigger = Meta {
            size: 11,
            ..s.clone()
        };
        let older = Meta {
            mtime: (100, 4),
            ..s.clone()
        };
        for d in [bigger, older] {
            assert_eq!(
                decide(Some(&s), Some(&d), Group::Single, false),
                Plan::Update { content: true }
            );
        }
    }

    #[test]
    fn another_kind_symlink_target_or_device_is_replaced() {
        let s = meta(REG);
        let dir = meta(libc::S_IFDIR);
        assert_eq!(
            decide(Some(&s), Some(&dir), Group::Single, false),
            Plan::Create { replace: true }
        );
        let mut l1 = meta(libc::S_IFLNK);
        l1.link = Some(b"a".to_vec());
        let mut l2 = l1.clone();
        assert_eq!(
            decide(Some(&l1), Some(&l2), Group::Single, false),
            Plan::Update { content: false }
        );
        l2.link = Some(b"b".to_vec());
        assert_eq!(
            decide(Some(&l1), Some(&l2), Group::Single, false),
            Plan::Create { replace: true }
        );
        let c1 = Meta {
            rdev: 5,
            ..meta(libc::S_IFCHR)
        };
        let c2 = Meta {
            rdev: 6,
            ..c1.clone()
        };
        assert_eq!(
            decide(Some(&c1), Some(&c2), Group::Single, false),
            Plan::Create { replace: true }
        );
    }

    #[test]
    fn hard_links_are_relinked_and_never_written_through_a_foreign_link() {
        let s = Meta {
            nlink: 2,
            ..meta(REG)
        };
        let d = Meta {
            ino: (7, 70),
            ..meta(REG)
        };
        let member = Group::Member {
            target_ino: (7, 70),
        };
        // Already the group's inode: nothing (unless written during the resync).
        assert_eq!(decide(Some(&s), Some(&d), member, false), Plan::Nothing);
        assert_eq!(
            decide(Some(&s), Some(&d), member, true),
            Plan::Update { content: true }
        );
        let elsewhere = Group::Member {
            target_ino: (7, 71),
        };
        assert_eq!(
            decide(Some(&s), Some(&d), elsewhere, false),
            Plan::Link { replace: true }
        );
        assert_eq!(
            decide(Some(&s), None, elsewhere, false),
            Plan::Link { replace: false }
        );
        // The target shares an inode the source does not: never written in place.
        let shared = Meta {
            nlink: 2,
            ..d.clone()
        };
        let single = meta(REG);
        assert_eq!(
            decide(Some(&single), Some(&shared), Group::Single, false),
            Plan::Create { replace: true }
        );
        assert_eq!(
            decide(
                Some(&s),
                Some(&shared),
                Group::Leader { claimed: true },
                false
            ),
            Plan::Create { replace: true }
        );
        assert_eq!(
            decide(
                Some(&s),
                Some(&shared),
                Group::Leader { claimed: false },
                false
            ),
            Plan::Update { content: false }
        );
    }

    #[test]
    fn attributes_that_differ_are_named() {
        let s = meta(REG);
        assert_eq!(attr_fix(&s, &s), AttrFix::default());
        let d = Meta {
            uid: 2,
            perm: 0o600,
            atime: (1, 1),
            ..s.clone()
        };
        assert_eq!(
            attr_fix(&s, &d),
            AttrFix {
                owner: true,
                mode: true,
                times: true
            }
        );
        let l = meta(libc::S_IFLNK);
        let l2 = Meta {
            perm: 0o777,
            ..l.clone()
        };
        assert!(!attr_fix(&l, &l2).mode, "a symlink has no mode of its own");
        let dir = meta(libc::S_IFDIR);
        let dir2 = Meta {
            atime: (5, 5),
            ..dir.clone()
        };
        assert!(!attr_fix(&dir, &dir2).times, "directory atimes move");
    }

    #[test]
    fn what_counts_as_a_change_and_which_attributes_follow_it() {
        let s = meta(REG);
        let newer = Meta {
            mtime: (200, 0),
            ..s.clone()
        };
        let nothing = Plan::Update { content: false };
        assert!(!changes_target(nothing, Some(&s), Some(&s)));
        assert!(changes_target(nothing, Some(&s), Some(&newer)));
        assert!(changes_target(Plan::Remove, None, Some(&s)));
        let dir = meta(libc::S_IFDIR);
        let create = Plan::Create { replace: true };
        assert!(changes_target(create, Some(&s), Some(&dir)));
        let all = AttrFix {
            owner: true,
            mode: true,
            times: true,
        };
        assert_eq!(attrs_to_fix(create, &s, Some(&dir)), all);
        assert_eq!(attrs_to_fix(nothing, &s, Some(&s)), AttrFix::default());
        let copied = attrs_to_fix(Plan::Update { content: true }, &s, Some(&s));
        assert!(copied.times && !copied.owner && !copied.mode);
    }
}
