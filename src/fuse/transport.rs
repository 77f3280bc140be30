//! Which kernel transport `init` takes: FUSE over io_uring or /dev/fuse, and the one log line
//! that says why. Pure; the FUSE `init` in `mod.rs` asks it.

/// Whether init takes FUSE over io_uring, and what it logs, from what the kernel offered and
/// what fuser accepted: a fuser without chironfs's transport (upstream's refuses the flag) is
/// not a kernel with the switch off.
pub(super) fn io_uring_at_init(offered: bool, accepted: bool) -> (bool, log::Level, &'static str) {
    match (offered, accepted) {
        (_, true) => (
            true,
            log::Level::Info,
            "FUSE over io_uring: requests are served per CPU",
        ),
        (true, false) => (
            false,
            log::Level::Warn,
            "fuser refused the FUSE over io_uring the kernel offers (a fuser without chironfs's \
             transport, vendor/fuser/CHIRONFS.md): requests come through /dev/fuse",
        ),
        (false, false) => (
            false,
            log::Level::Info,
            "the kernel offers no FUSE over io_uring (fuse.enable_uring=0): requests come \
             through /dev/fuse",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_uring_at_init_tells_fuser_from_kernel() {
        let (on, _, served) = io_uring_at_init(true, true);
        assert!(on && served.contains("served per CPU"));
        let (on, level, refused) = io_uring_at_init(true, false);
        assert!(!on && level == log::Level::Warn && refused.contains("fuser refused"));
        let (on, level, off) = io_uring_at_init(false, false);
        assert!(!on && level == log::Level::Info && off.contains("offers no FUSE over io_uring"));
        assert!(!refused.contains("offers no FUSE over io_uring"));
    }
}
