//! chironfs: a FUSE filesystem that replicates one directory tree onto N directories.
//!
//! The library holds the pure logic (configuration, replica choice, arbitration, state) and a
//! thin FUSE glue layer; the `chironfs` and `chironctl` binaries are thin wrappers.

pub mod arbitrate;
pub mod auto_resync;
pub mod callers;
pub mod config;
pub mod control;
pub mod ctl_cli;
pub mod daemon;
pub mod dirfds;
pub mod fs;
pub mod iomode;
pub mod journal;
pub mod logging;
pub mod nodes;
pub mod order;
pub mod quorum;
pub mod replica;
pub mod resync;
pub mod resync_view;
pub mod select;
pub mod set;
pub mod snapshot;
pub mod state;
pub mod status_file;
pub mod sys;
pub mod throttle;
pub mod verify;
