//! What admins read, in one set of words: the snapshot of the replica set shared by the
//! status file, the control socket and `chironctl`, the resync progress wording, the Nagios
//! check, `chironctl`'s tables, the status file's format and the Prometheus metrics. Pure:
//! rendering and parsing only; imports only `sys` and `rules`.

pub mod check;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod metrics;
pub mod progress;
pub mod report;
pub mod snapshot;
pub mod status_file;
pub mod table;
pub mod words;
