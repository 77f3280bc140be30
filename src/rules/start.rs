//! What a replica that fails the first look at its directory means at start: a mistake in the
//! command line (the mount is refused) or storage that cannot be reached now (the mount comes
//! up without it, the replica out of service and stale, as if it had failed at runtime).

/// Whether `errno`, from the first look at a replica's directory, means its storage cannot be
/// reached now (a dead file server, a broken network mount): the mount starts without it. Any
/// other error (no such directory, not a directory, permission denied) is a mistake in the
/// command line and refuses the mount, so that a typo never starts a degraded set.
pub fn unreachable(errno: i32) -> bool {
    matches!(
        errno,
        libc::EIO
            | libc::ENOTCONN
            | libc::ESTALE
            | libc::ETIMEDOUT
            | libc::EHOSTDOWN
            | libc::EHOSTUNREACH
            | libc::ECONNREFUSED
            | libc::ECONNRESET
            | libc::ECONNABORTED
            | libc::ENETDOWN
            | libc::ENETUNREACH
            | libc::ENOLINK
            | libc::EREMOTEIO
            | libc::ENXIO
            | libc::ENODEV
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_server_is_unreachable_a_typo_is_not() {
        for e in [libc::ENOTCONN, libc::EIO, libc::ESTALE, libc::ETIMEDOUT] {
            assert!(unreachable(e), "{e}");
        }
        for e in [libc::ENOENT, libc::ENOTDIR, libc::EACCES, libc::ELOOP] {
            assert!(!unreachable(e), "{e}");
        }
    }
}
