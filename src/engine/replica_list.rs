//! The replicas of a set by index, append-only: replicas join online (`chironctl add`) without
//! moving the others, since open handles, the journal and the membership keep one slot per
//! replica index. A replica that leaves keeps its slot (out of service, marked left) until the
//! next mount. The capacity is fixed at mount: the replicas given plus [`ONLINE_ADDS`].

use std::ops::Index;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::engine::replica::Replica;

/// Replicas that may join online before the next mount (each `add`, and each `replace`, takes
/// a slot that a removal does not give back): a fixed room keeps per-replica slots in handles
/// and the journal plain arrays, read without a lock.
pub const ONLINE_ADDS: usize = 8;

/// The replicas by index; see the module documentation.
#[derive(Debug)]
pub struct ReplicaList {
    slots: Box<[OnceLock<Arc<Replica>>]>,
    len: AtomicUsize,
    /// Serializes [`ReplicaList::push`].
    adding: Mutex<()>,
}

impl ReplicaList {
    /// The list of `initial` (their indexes must be 0, 1, ...), with room for `spare` more.
    pub fn new(initial: Vec<Arc<Replica>>, spare: usize) -> Self {
        let slots: Box<[OnceLock<Arc<Replica>>]> = (0..initial.len() + spare)
            .map(|_| OnceLock::new())
            .collect();
        let len = initial.len();
        for (i, r) in initial.into_iter().enumerate() {
            debug_assert_eq!(r.index, i);
            let _ = slots[i].set(r);
        }
        ReplicaList {
            slots,
            len: AtomicUsize::new(len),
            adding: Mutex::new(()),
        }
    }

    /// Replicas so far (those that left included).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether the list holds no replica.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots per-replica arrays must have: every index a replica may ever get in this mount.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Replica `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<&Arc<Replica>> {
        self.slots[..self.len()].get(index)?.get()
    }

    /// The replicas in index order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Replica>> {
        self.slots[..self.len()].iter().filter_map(OnceLock::get)
    }

    /// Appends the replica `make` builds for the next index; Err when the list is full or
    /// `make` fails (nothing appended).
    pub fn push(
        &self,
        make: impl FnOnce(usize) -> Result<Arc<Replica>, String>,
    ) -> Result<Arc<Replica>, String> {
        let _one = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        let index = self.len();
        let Some(slot) = self.slots.get(index) else {
            return Err(format!(
                "no room for another replica before the next mount ({} replica slots, {} \
                 online additions per mount); unmount and mount the set to add more",
                self.slots.len(),
                ONLINE_ADDS
            ));
        };
        let r = make(index)?;
        let _ = slot.set(Arc::clone(&r));
        self.len.store(index + 1, Ordering::Release);
        Ok(r)
    }
}

impl Index<usize> for ReplicaList {
    type Output = Arc<Replica>;

    fn index(&self, index: usize) -> &Arc<Replica> {
        self.get(index)
            .unwrap_or_else(|| panic!("no replica {index} (of {})", self.len()))
    }
}

impl<'a> IntoIterator for &'a ReplicaList {
    type Item = &'a Arc<Replica>;
    type IntoIter = Box<dyn Iterator<Item = &'a Arc<Replica>> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(index: usize) -> Result<Arc<Replica>, String> {
        Replica::unopened(index, format!("/r{index}").into(), false, 1).map_err(|e| e.to_string())
    }

    #[test]
    fn replicas_join_at_the_next_index_until_the_room_is_used() {
        let list = ReplicaList::new(vec![replica(0).unwrap(), replica(1).unwrap()], 1);
        assert_eq!((list.len(), list.capacity()), (2, 3));
        let r = list.push(replica).unwrap();
        assert_eq!(r.index, 2);
        assert_eq!(list[2].path, std::path::Path::new("/r2"));
        assert_eq!(list.iter().count(), 3);
        let full = list.push(replica).unwrap_err();
        assert!(full.contains("no room for another replica"), "{full}");
        assert_eq!(list.len(), 3);
        assert!(list.get(3).is_none());
    }

    #[test]
    fn a_failed_make_appends_nothing() {
        let list = ReplicaList::new(vec![replica(0).unwrap()], 2);
        assert!(list.push(|_| Err("no".into())).is_err());
        assert_eq!(list.len(), 1);
        assert_eq!(list.push(replica).unwrap().index, 1);
    }
}
