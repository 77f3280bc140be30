//! Directory attributes asked ahead: after this daemon changed a directory's entries (a
//! create, an unlink, a rename...), the kernel forgets that directory's attributes, and with
//! `default_permissions` it asks for them again (a GETATTR) before the next lookup or change in
//! it, to check the caller's permissions. On a network metadata replica that is a round trip
//! before every create or delete in a directory. So the daemon asks for them itself the moment
//! the change is done, on the replica's worker, while the kernel answers the caller, and the
//! GETATTR that follows is answered from that answer (or waits for it, already on its way).
//!
//! An answer is used only while nothing has changed the directory since it was asked (every
//! mutation touching it bumps its count first) and for at most the kernel's own cache time:
//! as this daemon is the replicas' only writer, it is what the kernel would have kept had it
//! not forgotten it. [`DirAttrs`] is the state, pure and unit-tested; [`AskAhead`] is told of
//! the mutations by the replica set and does the asking, on the metadata replica's worker,
//! only where that replica is a network one (a local one answers in microseconds anyway).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::engine::replica::Replica;
use crate::engine::set::{MutationWatch, ReplicaSet};
use crate::sys::{self, Credentials};

/// Above this many directories tracked, answers past their age are dropped.
const PRUNE_ABOVE: usize = 1024;

/// The operations that change their paths' parent directories (entries added or removed).
const ENTRY_OPS: &[&str] = &[
    "create", "mkdir", "mknod", "symlink", "link", "unlink", "rmdir", "rename", "tmpfile",
];

/// One directory's answer, asked or in hand.
#[derive(Default)]
struct Slot {
    /// Changes started since the slot was made.
    changes: u64,
    /// A fetch in flight, asked after this many changes.
    fetching: Option<u64>,
    /// The answer of the last fetch that no change has overtaken: (when, replica, stat).
    fetched: Option<(Instant, usize, libc::stat)>,
}

/// The directories' answers (see the module documentation).
#[derive(Default)]
pub(super) struct DirAttrs {
    slots: Mutex<HashMap<PathBuf, Slot>>,
    answered: Condvar,
}

impl std::fmt::Debug for DirAttrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} directories asked ahead", self.slots().len())
    }
}

/// Asks for the directories' attributes after their changes (see the module documentation).
#[derive(Debug)]
pub(super) struct AskAhead {
    pub(super) attrs: Arc<DirAttrs>,
    pub(super) set: Weak<ReplicaSet>,
}

/// The `stat` of the directory at `rel` (empty: the root) on replica `r`, reached beneath its
/// root with no symlink followed, as root.
fn stat_dir(r: &Replica, rel: &Path) -> std::io::Result<libc::stat> {
    sys::set_thread_credentials(&Credentials::root())?;
    let root = r.root()?;
    if rel.as_os_str().is_empty() {
        return sys::fstat(root);
    }
    let dir = sys::open_dir_path(root, &sys::rel_cstr(rel)?)?;
    sys::fstat(std::os::fd::AsFd::as_fd(&dir))
}

impl MutationWatch for AskAhead {
    fn changing(&self, op: &str, path: &Path, also: Option<&Path>) {
        self.attrs.changing(op, path, also);
    }

    fn changed(&self, op: &str, path: &Path, also: Option<&Path>) {
        let Some(set) = self.set.upgrade() else {
            return;
        };
        let Some(&first) = set.priority_order().first() else {
            return;
        };
        let replica = Arc::clone(&set.replicas()[first]);
        if replica.is_local() {
            return;
        }
        for (dir, changes) in self.attrs.to_fetch(op, path, also) {
            let attrs = Arc::clone(&self.attrs);
            let r = Arc::clone(&replica);
            replica.submit(Box::new(move || {
                let answer = stat_dir(&r, &dir).ok().map(|st| (first, st));
                attrs.fetched(&dir, changes, answer);
            }));
        }
    }
}

/// The directories a mutation `op` of `path` (and `also`) changes: the paths themselves (a
/// directory's own attributes), and their parents for an operation on entries.
fn affected<'a>(op: &str, path: &'a Path, also: Option<&'a Path>) -> Vec<&'a Path> {
    let entries = ENTRY_OPS.contains(&op);
    let mut out = Vec::new();
    for p in std::iter::once(path).chain(also) {
        out.push(p);
        if let (true, Some(parent)) = (entries, p.parent()) {
            out.push(parent);
        }
    }
    out
}

impl DirAttrs {
    fn slots(&self) -> MutexGuard<'_, HashMap<PathBuf, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A mutation starts: the attributes of the directories it changes are no longer known
    /// (a rename also forgets everything below its two paths, which moved).
    pub(super) fn changing(&self, op: &str, path: &Path, also: Option<&Path>) {
        let mut slots = self.slots();
        if slots.is_empty() {
            return;
        }
        for p in affected(op, path, also) {
            if let Some(slot) = slots.get_mut(p) {
                slot.changes += 1;
                slot.fetched = None;
            }
        }
        if op == "rename" {
            let moved = |p: &Path| p.starts_with(path) || also.is_some_and(|a| p.starts_with(a));
            slots.retain(|p, slot| slot.fetching.is_some() || !moved(p));
        }
        slots.retain(|_, slot| slot.fetching.is_some() || slot.fetched.is_some());
    }

    /// A mutation ended well: the directories whose entries it changed, each with the count
    /// to hand back to [`DirAttrs::fetched`], to ask now (none already being asked).
    pub(super) fn to_fetch(
        &self,
        op: &str,
        path: &Path,
        also: Option<&Path>,
    ) -> Vec<(PathBuf, u64)> {
        if !ENTRY_OPS.contains(&op) {
            return Vec::new();
        }
        let mut slots = self.slots();
        let mut out = Vec::new();
        for p in affected(op, path, also) {
            if p == path || Some(p) == also {
                continue;
            }
            let slot = slots.entry(p.to_path_buf()).or_default();
            if slot.fetching.is_none() {
                slot.fetching = Some(slot.changes);
                out.push((p.to_path_buf(), slot.changes));
            }
        }
        out
    }

    /// A fetch asked after `changes` changes answered (`Some((replica, stat))`) or failed:
    /// kept if no change came since, and anyone waiting for it woken.
    pub(super) fn fetched(&self, path: &Path, changes: u64, answer: Option<(usize, libc::stat)>) {
        let mut slots = self.slots();
        if let Some(slot) = slots.get_mut(path) {
            slot.fetching = None;
            if let (Some((index, st)), true) = (answer, slot.changes == changes) {
                slot.fetched = Some((Instant::now(), index, st));
            }
            if slot.fetched.is_none() {
                slots.remove(path);
            }
        }
        if slots.len() > PRUNE_ABOVE {
            let now = Instant::now();
            slots.retain(|_, s| {
                s.fetching.is_some()
                    || s.fetched
                        .is_some_and(|(at, _, _)| now - at < Duration::from_secs(60))
            });
        }
        drop(slots);
        self.answered.notify_all();
    }

    /// For a GETATTR of directory `path` answered by replica `index`: the attributes fetched
    /// since its last change, at most `max_age` old, waiting up to `wait` for a fetch on its
    /// way. None: ask the replica.
    pub(super) fn get(
        &self,
        path: &Path,
        index: usize,
        max_age: Duration,
        wait: Duration,
    ) -> Option<libc::stat> {
        let until = Instant::now() + wait;
        let mut slots = self.slots();
        loop {
            let slot = slots.get(path)?;
            if let Some((at, from, st)) = slot.fetched {
                return (from == index && at.elapsed() <= max_age).then_some(st);
            }
            // Only a fetch asked after the last change is worth the wait.
            slot.fetching.filter(|&c| c == slot.changes)?;
            let left = until.checked_duration_since(Instant::now())?;
            slots = self
                .answered
                .wait_timeout(slots, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn stat(size: i64) -> libc::stat {
        // SAFETY: libc::stat is plain old data; all zeros is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        st.st_size = size;
        st
    }

    const AGE: Duration = Duration::from_secs(1);
    const NO_WAIT: Duration = Duration::ZERO;

    #[test]
    fn a_create_asks_for_its_directory_and_the_answer_serves_until_the_next_change() {
        let d = DirAttrs::default();
        let dir = Path::new("a/b");
        d.changing("create", Path::new("a/b/f"), None);
        assert_eq!(d.get(dir, 0, AGE, NO_WAIT).map(|s| s.st_size), None);
        let asked = d.to_fetch("create", Path::new("a/b/f"), None);
        assert_eq!(asked, vec![(dir.to_path_buf(), 0)]);
        assert!(
            d.to_fetch("create", Path::new("a/b/g"), None).is_empty(),
            "one fetch at a time"
        );
        d.fetched(dir, 0, Some((0, stat(7))));
        assert_eq!(d.get(dir, 0, AGE, NO_WAIT).map(|s| s.st_size), Some(7));
        assert_eq!(
            d.get(dir, 1, AGE, NO_WAIT).map(|s| s.st_size),
            None,
            "another replica"
        );
        d.changing("write", Path::new("a/b/f"), None);
        assert!(
            d.get(dir, 0, AGE, NO_WAIT).is_some(),
            "a write leaves the directory"
        );
        d.changing("unlink", Path::new("a/b/f"), None);
        assert!(
            d.get(dir, 0, AGE, NO_WAIT).is_none(),
            "an unlink changes it"
        );
    }

    #[test]
    fn an_answer_overtaken_by_a_change_is_not_kept() {
        let d = DirAttrs::default();
        let dir = Path::new("d");
        let asked = d.to_fetch("mkdir", Path::new("d/x"), None);
        d.changing("rmdir", Path::new("d/x"), None);
        d.fetched(dir, asked[0].1, Some((0, stat(1))));
        assert!(d.get(dir, 0, AGE, NO_WAIT).is_none());
    }

    #[test]
    fn a_setattr_of_the_directory_itself_and_a_rename_forget_it() {
        let d = DirAttrs::default();
        for (op, path, also, d_forgotten) in [
            ("setattr", "d", None, true),
            ("rename", "d", Some("e"), true),
            ("rename", "x", Some("d"), true),
            ("rename", "p", Some("q"), false),
        ] {
            let asked = d.to_fetch("create", Path::new("p/d/f"), None);
            d.fetched(Path::new("p/d"), asked[0].1, Some((0, stat(1))));
            let asked = d.to_fetch("create", Path::new("d/f"), None);
            d.fetched(Path::new("d"), asked[0].1, Some((0, stat(1))));
            d.changing(op, Path::new(path), also.map(Path::new));
            let kept = |p: &str| d.get(Path::new(p), 0, AGE, NO_WAIT).is_some();
            assert_eq!(kept("d"), !d_forgotten, "{op} {path} {also:?}");
            assert_eq!(
                kept("p/d"),
                path != "p",
                "{op} {path} {also:?}: below a move"
            );
        }
    }

    #[test]
    fn a_getattr_waits_for_a_fetch_on_its_way_and_not_past_the_age() {
        let d = Arc::new(DirAttrs::default());
        let dir = Path::new("w");
        let asked = d.to_fetch("create", Path::new("w/f"), None);
        let answering = Arc::clone(&d);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            answering.fetched(Path::new("w"), asked[0].1, Some((0, stat(3))));
        });
        let got = d.get(dir, 0, AGE, Duration::from_secs(5));
        t.join().unwrap();
        assert_eq!(got.map(|s| s.st_size), Some(3));
        assert!(d.get(dir, 0, Duration::ZERO, NO_WAIT).is_none(), "too old");
        let failed = d.to_fetch("create", Path::new("v/f"), None);
        d.fetched(Path::new("v"), failed[0].1, None);
        assert!(
            d.get(Path::new("v"), 0, AGE, Duration::from_secs(5))
                .is_none()
        );
    }
}
