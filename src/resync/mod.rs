//! Online resync: copies the tree of an in-service replica (the source) onto an out-of-service
//! one (the target) while the mount keeps serving, so the target can come back in service.
//!
//! The folder, plan before copy:
//!
//! - `plan.rs`: the pure decisions (what to copy, delete or relink given the two sides'
//!   metadata, which attributes to fix), unit-tested without a replica.
//! - `read.rs`: how an entry is read (metadata, xattrs, content), shared with `verify`.
//! - `copy.rs`: the [`Engine`]: the walks (whole tree, chosen paths) and each entry's steps.
//! - `write.rs`: the engine's writes on the target (create, link, content, attributes,
//!   remove), relative to the replica's root fd (`openat2` beneath, never following a symlink).
//! - `progress.rs`: the counters and the rate limit ([`Progress`]).
//! - `run.rs`: one resync as the daemon sees it ([`Run`]: state, cancel, dirty set, snapshot).
//!
//! How the passes are run against concurrent mutations (dirty set, write barrier) lives in
//! `engine/set/`.

mod copy;
mod plan;
mod progress;
mod read;
mod run;
mod write;

pub use copy::{Engine, Side, SyncError};
pub use plan::{AttrFix, Group, Meta, Plan, attr_fix, attrs_to_fix, changes_target, decide};
pub use progress::Progress;
pub use read::{gone, open_to_read, stat_of, xattrs_of};
pub use run::{Run, RunStatus};
