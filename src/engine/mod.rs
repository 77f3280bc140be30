//! The replication engine: each replica (its root handle, worker threads, service state), the
//! replica set that fans mutations out and takes failing replicas out of service, the
//! journal of changed paths and the records kept in each replica's `.chironfs` directory.

pub mod counters;
pub mod dirfds;
pub mod job_queue;
pub mod journal;
pub mod lease;
pub mod meta_files;
pub mod replica;
pub mod replica_list;
pub mod set;
