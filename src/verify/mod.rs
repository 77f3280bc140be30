//! `chironctl verify`: compares the replicas path by path (type, size, mode, owner, mtime,
//! symlink target, device number, xattrs, hard-link shape, and with `content` the bytes), so
//! an admin can prove the replicas identical, or see exactly where they are not, without
//! unmounting.
//!
//! The folder, walk apart from report:
//!
//! - `compare.rs`: the comparison of one path across replicas ([`compare`]), pure and
//!   unit-tested.
//! - `report.rs`: what the admin gets ([`Report`], [`Difference`]): lines, summary, JSON, and
//!   the paths a heal copies; pure.
//! - `walk.rs`: the walk ([`verify`]) over the replicas through their own worker threads, each
//!   job bounded by the replica deadline. Entries are read exactly as the resync reads them
//!   (`resync::stat_of`, `resync::xattrs_of`), so "verify says identical" and "resync has
//!   nothing to copy" agree.
//!
//! The walk is not a snapshot: a path changed through the mount while the walk passes it can
//! show as a difference. Run it again (or on a quiet mount) before acting on one.

mod compare;
mod walk;

pub use crate::view::report::{
    Compared, Difference, MAX_DIFFERENCES, MISSING, Report, SAME_CONTENT, Value, heal_paths,
};
pub use compare::{Entry, Side, compare, content_difference, first_mismatch, kind_name};
pub use walk::verify;
