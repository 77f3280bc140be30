//! Command line -> validated [`Config`]. The arguments are parsed (ChironFS 1.1 compatible,
//! mount.fuse3 compatible), then checked against the filesystem, so that `main` only ever sees
//! a configuration that can be mounted.
//!
//! This file holds what the rest of the crate uses ([`Config`], [`Action`], [`ConfigError`],
//! [`parse_args`], [`command`], the runtime file names) and runs the steps, one file each:
//!
//! - `options.rs`: the one table of options (clap definition + where the value goes);
//! - `cli.rs`: the clap command built from that table, and clap's errors as one line;
//! - `mount_opts.rs`: `-o key=value,...` rewritten into `--key=value` for the same parser,
//!   plus the kernel mount flags;
//! - `validate.rs`: the filesystem checks that turn the `Draft` into a [`Config`].
//!
//! # How to add an option
//!
//! 1. Add its field to [`Config`] (what the daemon reads).
//! 2. Add one entry to `OPTIONS` in `options.rs`: the clap definition (long and short name,
//!    value name, value parser, default, help text) and the line that stores the value in the
//!    field.
//!
//! That entry alone gives `--long-name`, the `-o long_name=` key (unless `mount_opt: false`),
//! the `--help` line, the `-o` key list of the help, and (through `tools/gen-docs`) the man
//! page entry and the shell completions. Only a value that needs the replicas or the mount
//! point (a path that must stay outside the mount, a replica named by path) also needs a check
//! in `validate.rs`. Then describe it in README.md's option table.

mod cli;
mod mount_opts;
mod options;
mod validate;

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use clap::ArgMatches;
use clap::error::ErrorKind;

pub use validate::split_spec;

/// One replica directory from the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSpec {
    /// Canonical absolute path of the replica directory.
    pub path: PathBuf,
    /// `:`-prefixed: read only when no normal-priority replica can serve.
    pub low_priority: bool,
}

/// Everything the daemon needs to mount, validated (built by [`parse_args`]).
///
/// If every replica was given with `:` (all low priority), all are stored with
/// `low_priority == false`: priority is only relative, so "all low" means "all equal".
/// `mount_options` holds only kernel flags; the caller adds `FSName(fsname)`,
/// `DefaultPermissions` and the allow-other setting itself.
///
/// `Config::default()` is only the blank that [`parse_args`] fills in (no replicas, no mount
/// point): it cannot be mounted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Replicas in command-line order (the order decides priority and error choice).
    pub replicas: Vec<ReplicaSpec>,
    /// Canonical mount point.
    pub mountpoint: PathBuf,
    /// Stay in the foreground (`-f`, `-d`); otherwise daemonize.
    pub foreground: bool,
    /// Debug logging (`-d`).
    pub debug: bool,
    /// Name shown by df/mount (`-n`, `-o fsname=`); default: the replica spec as given.
    pub fsname: String,
    /// Extra log file (`-l/--log FILE`, `--log=FILE`, `-o log=FILE`), reopened on SIGHUP.
    pub log_file: Option<PathBuf>,
    /// Do not print errors to stderr (`-q`, `-o quiet`).
    pub quiet: bool,
    /// Per-replica deadline; a replica slower than this is taken out (`--timeout`, `-o timeout=`).
    pub timeout: Duration,
    /// Status file path (`--status-file`, `-o status_file=`).
    pub status_file: PathBuf,
    /// Control socket path (`-c/--ctl`, `-o ctl=`).
    pub control_socket: PathBuf,
    /// Syslog socket (`--syslog-socket`, `-o syslog_socket=`); default /dev/log.
    pub syslog_socket: PathBuf,
    /// FUSE request threads (`--threads`, `-o threads=`).
    pub threads: usize,
    /// How long the kernel may keep the attributes and names it was given (`--cache-time`,
    /// `-o cache_time=`); see [`DEFAULT_CACHE_TIME`].
    pub cache_time: Duration,
    /// Kernel passthrough for read-only opens of local replicas (`--passthrough`,
    /// `-o passthrough=`): the kernel reads the replica's file itself, at native speed.
    pub passthrough: bool,
    /// Writable opens bypass the kernel's page cache (`--direct-writes`, `-o direct_writes=`):
    /// writes to disjoint ranges of one file run in parallel and are not copied into the
    /// cache, but reads through an O_RDWR descriptor reach the daemon every time.
    pub direct_writes: bool,
    /// Serve requests through FUSE over io_uring when the kernel offers it (`--io-uring`,
    /// `-o io_uring=`): one queue per CPU, so a request is served on the CPU that made it.
    /// The kernel offers it only with `fuse.enable_uring=1`; otherwise /dev/fuse serves.
    pub io_uring: bool,
    /// Size cap of each replica's journal of changed paths, in bytes (`--journal-max`,
    /// `-o journal_max=`); past it a resync compares whole trees. A u32 (at most 4 GiB)
    /// keeps `Config` small.
    pub journal_max: u32,
    /// `allow_other` was asked for.
    pub allow_other: bool,
    /// Kernel mount flags passed through (ro, nosuid, nodev, noexec, noatime, ...).
    pub mount_options: Vec<fuser::MountOption>,
    /// After a split-brain, the replica (index) whose data wins (`--force-source`,
    /// `-o force_source=`). A u16 (replicas are few) keeps `Config` small.
    pub force_source: Option<u16>,
    /// Replicas that must be in service for a mutation to be accepted (`--quorum auto|N`,
    /// `-o quorum=`), resolved against the replica count; None: no quorum (the default). A
    /// u16 like `force_source`, for the same reason.
    pub quorum: Option<u16>,
    /// `--quorum auto`: the quorum stays a majority when members join or leave online.
    pub quorum_auto: bool,
    /// Limit on the content bytes per second an online resync copies (`--resync-rate`,
    /// `-o resync_rate=`), bytes per second; 0 = no limit.
    pub resync_rate: u64,
    /// Resync a replica that is out of service by itself once it is reachable again

    /// (`--auto-resync`, `-o auto_resync`).
    pub auto_resync: bool,
    /// How long the ownership lease must go unrenewed before another daemon takes it over
    /// (`--lease-time`); None: twice the timeout, at least 4 s (`rules::lease::Timing`).
    pub lease_time: Option<Duration>,
    /// A witness directory: a lease member that holds no data (`--witness`).
    pub witness: Option<PathBuf>,
    /// Two members take and keep the lease only while both answer (`--strict-majority`).
    pub strict_majority: bool,
    /// Never make a new replica set: refuse to start when no replica holds chironfs state
    /// (`--no-new-set`, `-o no_new_set`): what a cluster wants, where replicas whose
    /// filesystems are not mounted would else become a new, empty set.
    pub no_new_set: bool,
    /// Serve the metrics over HTTP on this address (`--metrics-listen`, `-o metrics_listen=`);
    /// None: no listener (the default).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Replica and witness directories (as in `replicas` and `witness`) that could not be
    /// looked at while the command line was checked: no answer within [`FIRST_LOOK`], or an
    /// error of unreachable storage (`rules::arbitrate::is_replica_fault`). The daemon waits for the
    /// silent ones up to the rest of `timeout`, saying so in its log, then starts without them.
    pub unanswered: Vec<(PathBuf, Unanswered)>,
}

/// Why a replica or witness directory could not be looked at when the mount started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unanswered {
    /// No answer within [`FIRST_LOOK`] (slow, or a hung file server).
    NoAnswer,
    /// It failed with this errno, one that means its storage cannot be reached now.
    Failed(i32),
}

/// How long the command-line check waits for the directories (at most `--timeout`): a
/// directory still silent then is waited for by the daemon, once its log can say which one
/// it waits for, up to the rest of `--timeout`.
pub const FIRST_LOOK: Duration = Duration::from_secs(1);

/// Default per-replica deadline (`--timeout`; its entry in `options.rs` gives it as text, and
/// a unit test keeps the two equal, like `DEFAULT_THREADS`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `--cache-time`: how long the kernel may keep an attribute or a name it was given
/// before asking again. Every change made through this mount updates or drops the kernel's
/// copy at once, so a longer time is safe while this daemon is the only writer of the
/// replicas (the set's lease makes it the only read-write daemon); what it costs is how late
/// this mount notices a change made on a replica behind its back, and an `ro` observer mount
/// of the same replicas sees this daemon's changes that late (1 s: as soon as before).
pub const DEFAULT_CACHE_TIME: Duration = Duration::from_secs(1);
/// Largest accepted `--cache-time` in seconds.
pub const MAX_CACHE_TIME_SECS: f64 = 3_600.0;
/// Default number of FUSE request threads (`--threads`).
pub const DEFAULT_THREADS: usize = 8;
/// Largest accepted `--threads` value; more only adds contention on the replicas.
pub const MAX_THREADS: usize = 64;
/// Largest accepted `--timeout` in seconds (one day), so deadline arithmetic cannot overflow.
pub const MAX_TIMEOUT_SECS: f64 = 86_400.0;
/// Default syslog socket.
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";
/// Directory holding the default status file and control socket of each mount.
pub const RUNTIME_DIR: &str = "/run/chironfs";

/// What the command line asks for. Help and version text are returned, not printed, so that
/// `main` decides where they go (stdout, exit code 0) and the parser stays testable.
#[derive(Clone, Debug, PartialEq, Eq)]
// Built once per process and moved into `main` at once: the size of `Mount` costs nothing, and
// boxing it would change the contract every caller uses.
#[allow(clippy::large_enum_variant)]
pub enum Action<M = Box<Config>> {
    /// Mount with this configuration: validated ([`parse_args`]), or still to be checked
    /// against the filesystem ([`parse_command_line`]: [`Unchecked`]).
    Mount(M),
    /// `-h`/`--help`: the full help text (no trailing newline; print it with `println!`).
    Help(String),
    /// `-V`/`--version`: `chironfs VERSION` (no trailing newline).
    Version(String),
    /// `-o remount,...` (what `mount -o remount,ro MOUNTPOINT` runs through mount.fuse3):
    /// change the kernel flags of the chironfs mount at `mountpoint`, start no daemon.
    Remount {
        /// The mount point as given.
        mountpoint: PathBuf,
        /// Every kernel flag given (a remount sets the whole list: ro or rw, nosuid, ...).
        flags: Vec<fuser::MountOption>,
    },
}

/// A command-line or configuration problem. Its `Display` is exactly one line, starting with
/// `chironfs: `, fit to be printed on stderr as the only explanation of why nothing was mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
    usage: bool,
}

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
            usage: false,
        }
    }

    fn usage(detail: impl std::fmt::Display) -> Self {
        ConfigError {
            message: format!("chironfs: {detail}; try 'chironfs --help'"),
            usage: true,
        }
    }

    /// The one-line message (same text as `Display`), for callers that want a `&str`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True for malformed command lines (unknown option, missing argument, bad number), as
    /// opposed to a well-formed command line naming unusable paths; lets `main` pick an exit
    /// code (e.g. 2 for usage errors, 1 otherwise).
    pub fn is_usage(&self) -> bool {
        self.usage
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A configuration being built, before the filesystem is looked at: every option stores its
/// value here (its `set` in `options.rs`), then `validate` checks it all and yields the
/// [`Config`].
#[derive(Debug, Default)]
struct Draft {
    /// The replica list as given.
    spec: String,
    /// Options that need no later check are stored here directly. `replicas` is empty and
    /// `mountpoint` is as given until `validate`.
    config: Config,
    /// `--status-file`; None: the default, which depends on the canonical mount point.
    status_file: Option<PathBuf>,
    /// `--ctl`; None: the default, as for `status_file`.
    control_socket: Option<PathBuf>,
    /// `--force-source` as given (an index or a path), resolved against the replicas.
    force_source: Option<String>,
    /// `--quorum`, resolved against the replica count.
    quorum: Option<crate::rules::quorum::Setting>,
}

/// A command line parsed, whose directories are still to be looked at: the daemon checks it
/// ([`Unchecked::check`]) once it has forked, because a replica on a dead file server can
/// leave the looking thread blocked in the kernel, and a process with such a thread cannot
/// exit (the caller waiting for `chironfs` to return would wait with it).
#[derive(Debug)]
pub struct Unchecked(Draft);

impl Unchecked {
    /// `-f`: the daemon stays in the foreground.
    pub fn foreground(&self) -> bool {
        self.0.config.foreground
    }

    /// `-q`: nothing on stderr.
    pub fn quiet(&self) -> bool {
        self.0.config.quiet
    }

    /// Checks the command line against the filesystem (see [`parse_args`]).
    pub fn check(self) -> Result<Config, ConfigError> {
        validate::validate(self.0)
    }
}

/// [`parse_args`] without the filesystem checks, which the caller runs with
/// [`Unchecked::check`] (the daemon, after it forked).
pub fn parse_command_line<I, T>(args: I) -> Result<Action<Box<Unchecked>>, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = command();
    let given = match cmd.try_get_matches_from_mut(&args) {
        Ok(m) => m,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp => Ok(Action::Help(help_text())),
                ErrorKind::DisplayVersion => Ok(Action::Version(version_text())),
                _ => Err(cli::clap_error(&e)),
            };
        }
    };
    let mut draft = positionals(&given)?;
    let o = mount_opts::rewrite(&given, &mut cmd)?;
    if o.remount {
        return Ok(Action::Remount {
            mountpoint: draft.config.mountpoint,
            flags: o.mount_options,
        });
    }
    draft.config.allow_other = o.allow_other;
    draft.config.mount_options = o.mount_options;
    // The -o settings go before the whole command line: an option given both ways is then
    // given twice, and the last one (the command line's) wins.
    let argv0 = args.first().cloned().unwrap_or_else(|| "chironfs".into());
    let merged = std::iter::once(argv0)
        .chain(o.args)
        .chain(args.into_iter().skip(1));
    let matches = cmd
        .try_get_matches_from_mut(merged)
        .map_err(|e| cli::clap_error(&e))?;
    options::apply(&mut draft, &matches)?;
    Ok(Action::Mount(Box::new(Unchecked(draft))))
}

/// Parses a full command line (`args` includes argv\[0\]) into what to do.
///
/// Accepts `chironfs [options] [:]PATH=[:]PATH[=...] MOUNTPOINT [options]`, with options
/// before or after the positionals (so `mount.fuse3`'s `chironfs SPEC MNT -o rw,...` works).
/// On [`Action::Mount`] the configuration has been validated against the filesystem (replicas
/// and mount point exist, are directories, are distinct and not nested; the log file is
/// outside the mount point). A spec in which every replica has `:` is accepted and treated as
/// all normal priority, because priority is only relative.
pub fn parse_args<I, T>(args: I) -> Result<Action, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Ok(match parse_command_line(args)? {
        Action::Mount(unchecked) => Action::Mount(Box::new(unchecked.check()?)),
        Action::Help(text) => Action::Help(text),
        Action::Version(text) => Action::Version(text),
        Action::Remount { mountpoint, flags } => Action::Remount { mountpoint, flags },
    })
}

/// The replica list and the mount point (optional for clap, so that a missing one gets this
/// one-line message), as the start of the draft.
fn positionals(given: &ArgMatches) -> Result<Draft, ConfigError> {
    let spec = given.get_one::<String>("spec");
    match (spec, given.get_one::<PathBuf>("mountpoint")) {
        (Some(spec), Some(mountpoint)) => Ok(Draft {
            spec: spec.clone(),
            config: Config {
                mountpoint: mountpoint.clone(),
                fsname: spec.clone(),
                ..Config::default()
            },
            ..Draft::default()
        }),
        (Some(spec), None) => Err(ConfigError::usage(format!(
            "missing the mount point after the replica list '{spec}'"
        ))),
        _ => Err(ConfigError::usage(
            "missing the replica list and the mount point",
        )),
    }
}

/// The `-h` text, also useful for a man page or README.
pub fn help_text() -> String {
    command().render_help().to_string().trim_end().to_string()
}

/// The clap command `chironfs` parses with, for generated documentation (man page, shell
/// completions). Its two positionals are hidden in `--help` (the help template describes
/// them); a generator that wants them listed un-hides `spec` and `mountpoint`.
pub fn command() -> clap::Command {
    cli::command()
}

/// The `-V` text: `chironfs VERSION`.
pub fn version_text() -> String {
    format!("chironfs {}", env!("CARGO_PKG_VERSION"))
}

/// Name used for a mount's runtime files (`/run/chironfs/<name>.status`, `.sock`): the mount
/// point's components joined with `-` (`/mnt/data` -> `mnt-data`, `/` -> `root`). Shared with
/// chironctl so both find the same files. Expects a canonical (absolute, normalized) path.
pub fn runtime_name(mountpoint: &Path) -> String {
    let parts: Vec<String> = mountpoint
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    if parts.is_empty() {
        "root".to_string()
    } else {
        parts.join("-")
    }
}

/// Default status file of the mount at `mountpoint` (canonical): `/run/chironfs/<name>.status`.
pub fn default_status_file(mountpoint: &Path) -> PathBuf {
    Path::new(RUNTIME_DIR).join(format!("{}.status", runtime_name(mountpoint)))
}

/// The node_exporter textfile of the metrics, next to `status_file`: the same name with
/// `.prom` for its extension (`/run/chironfs/<name>.prom`), or `.prom` added to a status file
/// that already ends in it.
pub fn metrics_file_of(status_file: &Path) -> PathBuf {
    let swapped = status_file.with_extension("prom");
    if swapped == status_file {
        let mut name = status_file.as_os_str().to_owned();
        name.push(".prom");
        return PathBuf::from(name);
    }
    swapped
}

/// Default control socket of the mount at `mountpoint` (canonical): `/run/chironfs/<name>.sock`.
pub fn default_control_socket(mountpoint: &Path) -> PathBuf {
    Path::new(RUNTIME_DIR).join(format!("{}.sock", runtime_name(mountpoint)))
}

/// The OS reason of an I/O error, without Rust's " (os error N)" suffix.
fn os_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests;
