//! Pure rules: no I/O, no threads, no clocks of their own (time is passed in), so each is
//! unit-tested without FUSE or replicas. Everything that decides something the engine then
//! carries out lives here.

pub mod arbitrate;
pub mod auto_resync;
pub mod dir_attrs;
pub mod escape;
pub mod iomode;
pub mod lease;
pub mod listed;
pub mod membership;
pub mod order;
pub mod quorum;
pub mod select;
pub mod state;
pub mod throttle;
pub mod trim;
