//! `-o key[=value],...` lists (mount.fuse3 style; also fstab's options column) rewritten for
//! the command-line parser: a chironfs key becomes `--key=value` (its long option, spelt with
//! '-' for '_'), checked on the way by the very parser and `set` of that option, so keys are
//! defined only in the options table (`options.rs`). The tables below hold the keys that are
//! not 1:1 with an option: kernel mount flags, and keys accepted and ignored.
//!
//! May touch: the options table and the clap command (to check a value); nothing else.

use std::ffi::OsString;

use clap::error::ErrorKind;
use clap::{ArgMatches, Command};
use fuser::MountOption;

use super::options::{self, Opt};
use super::{ConfigError, Draft, cli};

/// What a kernel `-o` key does.
pub(super) enum Kernel {
    /// A mount flag passed to the kernel.
    Flag(MountOption),
    /// `allow_other`, `allow_root`: other users may use the mount (the daemon sets it up).
    AllowOther,
    /// `default_permissions`: always on anyway.
    AlwaysOn,
}

/// The kernel keys, as listed in the help. None takes a value.
pub(super) const KERNEL: &[(&str, Kernel)] = &[
    ("allow_other", Kernel::AllowOther),
    ("allow_root", Kernel::AllowOther),
    ("default_permissions", Kernel::AlwaysOn),
    ("rw", Kernel::Flag(MountOption::RW)),
    ("ro", Kernel::Flag(MountOption::RO)),
    ("suid", Kernel::Flag(MountOption::Suid)),
    ("nosuid", Kernel::Flag(MountOption::NoSuid)),
    ("dev", Kernel::Flag(MountOption::Dev)),
    ("nodev", Kernel::Flag(MountOption::NoDev)),
    ("exec", Kernel::Flag(MountOption::Exec)),
    ("noexec", Kernel::Flag(MountOption::NoExec)),
    ("noatime", Kernel::Flag(MountOption::NoAtime)),
    ("sync", Kernel::Flag(MountOption::Sync)),
    ("async", Kernel::Flag(MountOption::Async)),
    ("dirsync", Kernel::Flag(MountOption::DirSync)),
];

/// Accepted with or without a value, and ignored: fstab and mount(8) bookkeeping, atime
/// variants the kernel handles by itself, and the FUSE subtype that mount.fuse3 may pass. So
/// is any key starting with `x-`.
pub(super) const IGNORED: &[&str] = &[
    "defaults",
    "relatime",
    "norelatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "nonempty",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "subtype",
    "comment",
];

/// The `-o` lists of a command line, read.
pub(super) struct MountOpts {
    /// The chironfs keys as command-line arguments (`--key=value`, `--switch`), in order.
    pub args: Vec<OsString>,
    /// `allow_other` or `allow_root` was given.
    pub allow_other: bool,
    /// The kernel mount flags, in order.
    pub mount_options: Vec<MountOption>,
    /// `remount` was given: change the flags of the existing mount, start nothing.
    pub remount: bool,
}

/// Given on a remount only, by mount.fuse3 from the mount table (the kernel's own FUSE
/// options): accepted and left alone, as the kernel keeps them.
const REMOUNT_ONLY: &[&str] = &[
    "user_id", "group_id", "fd", "rootmode", "max_read", "blksize",
];

/// Reads every `-o` list of the parsed command line, in order. An unknown key, a missing or
/// unwanted value, and a value the option refuses are errors, naming the `-o` item.
pub(super) fn rewrite(given: &ArgMatches, cmd: &mut Command) -> Result<MountOpts, ConfigError> {
    let mut o = MountOpts {
        args: Vec::new(),
        allow_other: false,
        mount_options: Vec::new(),
        remount: false,
    };
    let items: Vec<&str> = given
        .get_many::<String>("fuseoptions")
        .into_iter()
        .flatten()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .collect();
    o.remount = items.contains(&"remount");
    for item in items {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        if item.is_empty() {
            continue;
        }
        if let Some(opt) = options::by_mount_key(key) {
            o.args.push(as_argument(opt, item, key, value, cmd)?);
            continue;
        }
        if matches!(key, "atime" | "strictatime") {
            return Err(ConfigError::usage(format!(
                "-o {key} cannot be honoured: chironfs does not move access times on reads (a \
                 read would have to write every replica, and an access time set from user space \
                 moves the change time too); its mounts behave as noatime"
            )));
        }
        let Some((_, kernel)) = KERNEL.iter().find(|(k, _)| *k == key) else {
            if IGNORED.contains(&key)
                || key.starts_with("x-")
                || (o.remount && (key == "remount" || REMOUNT_ONLY.contains(&key)))
            {
                continue;
            }
            return Err(ConfigError::usage(format!("unknown mount option '{item}'")));
        };
        if value.is_some() {
            return Err(takes_no_value(key));
        }
        match kernel {
            Kernel::Flag(flag) => o.mount_options.push(flag.clone()),
            Kernel::AllowOther => o.allow_other = true,
            Kernel::AlwaysOn => {}
        }
    }
    Ok(o)
}

/// The `-o` item `key[=value]` of `opt` as a command-line argument, once checked the way the
/// command line checks that option (its clap parser, then its `set` on a scratch draft).
fn as_argument(
    opt: &Opt,
    item: &str,
    key: &str,
    value: Option<&str>,
    cmd: &mut Command,
) -> Result<OsString, ConfigError> {
    let arg = match (value, opt.arg().get_action().takes_values()) {
        (None, false) => format!("--{}", opt.long),
        (Some(_), false) => return Err(takes_no_value(key)),
        (Some(v), true) if !v.is_empty() => format!("--{}={v}", opt.long),
        (_, true) => {
            return Err(ConfigError::usage(format!(
                "mount option '{key}' needs a value ({key}=...)"
            )));
        }
    };
    let matches = cmd
        .try_get_matches_from_mut(["chironfs", arg.as_str()])
        .map_err(|e| match (e.kind(), std::error::Error::source(&e)) {
            (ErrorKind::ValueValidation, Some(reason)) => {
                options::invalid_value(Some(item), opt.long, reason)
            }
            _ => cli::clap_error(&e),
        })?;
    opt.store(&mut Draft::default(), &matches, Some(item))?;
    Ok(arg.into())
}

fn takes_no_value(key: &str) -> ConfigError {
    ConfigError::usage(format!("mount option '{key}' takes no value"))
}
