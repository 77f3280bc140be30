//! The control socket: a Unix stream socket on which root (or the daemon's own user) can ask
//! a running chironfs for its state and take replicas in and out of service, without
//! remounting. The protocol is newline-delimited JSON (`docs/control-protocol.md`) so that it
//! can be driven by `chironctl`, by scripts with `socat`, and by tests alike.
//!
//! - [`protocol`]: the request and response types and their framing, shared by both ends.
//! - [`server`]: the daemon's end (binding, peer credentials, one thread per client).
//! - [`client`]: `chironctl`'s end (finding the socket, asking within a deadline) and the check
//!   of the status file.
//! - [`cli`]: `chironctl`'s command line.
//!
//! What `chironctl` prints (tables, the Nagios line) is in `view/`, so the wording is pure and
//! unit-tested. Imports `view/` and, for the verify report, `verify`; never `daemon` or `fuse`.

pub mod cli;
pub mod client;
pub mod protocol;
pub mod server;

#[cfg(test)]
mod testing {
    use std::fs;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A fresh directory for one test; short, since socket paths are limited to 108 bytes.
    pub fn tempdir(tag: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "chfs-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }
}
