//! What admins read, in one set of words: the snapshot of the replica set shared by the
//! status file, the control socket and `chironctl`, the resync progress wording, and the
//! status file's format. Pure: rendering and parsing only.

pub mod progress;
pub mod snapshot;
pub mod status_file;
pub mod words;
