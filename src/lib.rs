//! chironfs: a FUSE filesystem that replicates one directory tree onto N directories.
//!
//! The layers, lowest first (a module imports only from its own layer or lower ones;
//! `scripts/module-deps.py` checks that no import cycle exists; `docs/architecture.md` maps
//! them and follows one write through them):
//!
//! - [`sys`]: every system call, each `unsafe` block saying why.
//! - [`rules`]: pure rules (no I/O, no threads, clocks injected), unit-tested without FUSE.
//! - [`view`]: what admins read (snapshot types, wording, the status file format).
//! - [`engine`]: the replica set and its replicas: fan-out, take-out, journal, crash
//!   recovery, health, the resync driver, the admin handler, mount-time recovery.
//! - [`resync`], [`verify`]: copying one replica onto another, and comparing them.
//! - [`fuse`]: the thin FUSE glue over the engine.
//! - [`control`]: the control socket (protocol, server, client) and `chironctl`'s command line.
//! - [`config`]: command line -> validated configuration.
//! - [`daemon`]: start-up, serving and shutdown, logging, the status-file writer.
//!
//! The `chironfs` and `chironctl` binaries are thin wrappers.

pub mod config;
pub mod control;
pub mod daemon;
pub mod engine;
pub mod fuse;
pub mod resync;
pub mod rules;
pub mod sys;
pub mod verify;
pub mod view;
