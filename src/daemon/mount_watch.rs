//! When the daemon ends a FUSE connection whose mount is gone. Pure: the text of
//! /proc/self/mountinfo, the open-handle count and the time are passed in; `mod.rs` reads them
//! and ends the connection (through fusectl, `sys::abort_fuse_connection`).
//!
//! An unmount ends the connection in the kernel only when the last mount of the filesystem
//! goes. A copy of the mount in another mount namespace (one made by `unshare -m`, a
//! container or a service started while chironfs was mounted, whose propagation is private)
//! keeps it alive after `fusermount3 -u` took it away here: the daemon's request threads then
//! waited for requests forever, and a SIGTERM could not unmount what was no longer mounted.
//! So the daemon watches its own namespace: once its mount is gone from it and no file or
//! directory is open through it (a lazy unmount of a busy mount keeps serving its open files
//! until the last one is closed), it ends the connection itself.

use std::time::{Duration, Instant};

/// How long the mount must have been gone before the daemon ends the connection itself: an
/// ordinary unmount ends it in the kernel within that time (the watcher must not race it).
pub const SETTLE: Duration = Duration::from_secs(1);

/// A FUSE connection's device number, as the mount's `st_dev` gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnDev {
    /// The device's major number (0: FUSE mounts take anonymous devices).
    pub major: u32,
    /// The device's minor number.
    pub minor: u32,
}

impl ConnDev {
    /// How /proc/self/mountinfo's third field names it ("major:minor").
    pub fn mountinfo_name(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }

    /// The kernel's own encoding of it (`MKDEV`), which names the connection's directory
    /// under /sys/fs/fuse/connections.
    pub fn kernel_number(&self) -> u64 {
        (u64::from(self.major) << 20) | u64::from(self.minor)
    }
}

/// Whether `mountinfo` (the text of /proc/self/mountinfo) lists a mount of `dev`.
pub fn lists_device(mountinfo: &str, dev: ConnDev) -> bool {
    let name = dev.mountinfo_name();
    mountinfo
        .lines()
        .any(|l| l.split(' ').nth(2) == Some(name.as_str()))
}

/// What the daemon does with its connection after one look at its mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep serving: the mount is there, or it left only now, or files are still open.
    Serve,
    /// End the connection: the mount is gone and nothing is open through it.
    End,
}

/// The watcher's memory: since when the mount has been gone from this namespace.
#[derive(Debug, Default)]
pub struct MountWatch {
    gone_since: Option<Instant>,
}

impl MountWatch {
    /// One look: whether the mount is still `present` in this namespace, how many files and
    /// directories are `open` through the connection, and whether a SIGTERM asked the daemon
    /// to stop (`stopping`: it need not wait for the kernel's own end, as it did the unmount).
    pub fn look(&mut self, present: bool, open: usize, stopping: bool, now: Instant) -> Next {
        if present {
            self.gone_since = None;
            return Next::Serve;
        }
        let since = *self.gone_since.get_or_insert(now);
        if open == 0 && (stopping || now.duration_since(since) >= SETTLE) {
            Next::End
        } else {
            Next::Serve
        }
    }

    /// Whether the mount was seen gone (it never comes back under the same device).
    pub fn gone(&self) -> bool {
        self.gone_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
45 22 0:40 / /tmp/x/mnt rw,nosuid,nodev,relatime shared:30 - fuse.chironfs a=b rw,user_id=0
46 22 0:400 / /tmp/y/mnt rw - fuse.other c rw
";

    #[test]
    fn lists_device_matches_the_whole_number() {
        let dev = |minor| ConnDev { major: 0, minor };
        assert!(lists_device(INFO, dev(40)));
        assert!(lists_device(INFO, dev(400)));
        assert!(!lists_device(INFO, dev(4)));
        assert!(!lists_device(
            INFO,
            ConnDev {
                major: 8,
                minor: 40
            }
        ));
        assert!(!lists_device("", dev(40)));
    }

    #[test]
    fn kernel_number_is_mkdev() {
        assert_eq!(
            ConnDev {
                major: 0,
                minor: 40
            }
            .kernel_number(),
            40
        );
        assert_eq!(
            ConnDev { major: 1, minor: 2 }.kernel_number(),
            (1 << 20) | 2
        );
        assert_eq!(
            ConnDev {
                major: 0,
                minor: 40
            }
            .mountinfo_name(),
            "0:40"
        );
    }

    #[test]
    fn a_present_mount_is_served() {
        let mut w = MountWatch::default();
        let t = Instant::now();
        assert_eq!(w.look(true, 0, true, t), Next::Serve);
        assert_eq!(w.look(true, 0, false, t + SETTLE * 10), Next::Serve);
        assert!(!w.gone());
    }

    #[test]
    fn a_gone_mount_ends_after_settling_or_at_once_when_stopping() {
        let t = Instant::now();
        let mut w = MountWatch::default();
        assert_eq!(w.look(false, 0, false, t), Next::Serve);
        assert!(w.gone());
        assert_eq!(w.look(false, 0, false, t + SETTLE / 2), Next::Serve);
        assert_eq!(w.look(false, 0, false, t + SETTLE), Next::End);
        let mut stopping = MountWatch::default();
        assert_eq!(stopping.look(false, 0, true, t), Next::End);
    }

    #[test]
    fn open_files_keep_a_gone_mount_served_until_closed() {
        let t = Instant::now();
        let mut w = MountWatch::default();
        assert_eq!(w.look(false, 2, true, t), Next::Serve);
        assert_eq!(w.look(false, 1, true, t + SETTLE * 100), Next::Serve);
        assert_eq!(w.look(false, 0, false, t + SETTLE * 100), Next::End);
    }
}
