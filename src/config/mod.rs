//! Command line -> validated [`Config`]. Raw arguments are parsed (ChironFS 1.1 compatible,
//! mount.fuse3 compatible), then checked against the filesystem, so that `main` only ever sees
//! a configuration that can be mounted.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, ColorChoice, CommandFactory, Parser};
use fuser::MountOption;

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
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// Limit on the content bytes per second an online resync copies (`--resync-rate`,
    /// `-o resync_rate=`), bytes per second; 0 = no limit.
    pub resync_rate: u64,
    /// Resync a replica that is out of service by itself once it is reachable again
    /// (`--auto-resync`, `-o auto_resync`).
    pub auto_resync: bool,
}

/// Default per-replica deadline (`--timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
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
pub enum Action {
    /// Mount with this validated configuration (boxed: it is far larger than the others).
    Mount(Box<Config>),
    /// `-h`/`--help`: the full help text (no trailing newline; print it with `println!`).
    Help(String),
    /// `-V`/`--version`: `chironfs VERSION` (no trailing newline).
    Version(String),
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

const ABOUT: &str =
    "ChironFS: a replicating FUSE filesystem. Every change is applied to all replicas;
reads are served by one replica, with fail-over to the others.";

const AFTER_HELP: &str = "\
Replicas: PATH=PATH[=PATH...] lists two or more existing directories that hold copies of the
same tree. A ':' before a path gives that replica low read priority: it is read only when no
normal replica can serve. If every replica has ':', all are treated as normal priority.

Mount options (-o, comma-separated, also usable in fstab):
  chironfs: log=FILE fsname=NAME quiet debug ctl=SOCKET status_file=PATH
            timeout=SECS threads=N passthrough=on|off direct_writes=on|off io_uring=on|off
            syslog_socket=PATH force_source=REPLICA quorum=auto|N|off
            resync_rate=RATE auto_resync journal_max=SIZE
  kernel:   allow_other allow_root default_permissions rw ro suid nosuid dev nodev
            exec noexec atime noatime sync async dirsync
  ignored:  defaults relatime norelatime strictatime lazytime nonempty user users
            nouser owner group auto noauto nofail _netdev subtype=... x-... comment=...
A command-line option wins over the same setting given with -o.

Defaults: timeout 5 s, 8 threads, passthrough on, direct writes on, io_uring on (used
when the kernel offers it: fuse.enable_uring=1), fsname = the replica list
as given, syslog socket /dev/log, status file /run/chironfs/NAME.status and control socket
/run/chironfs/NAME.sock, where NAME is the mount point with '/' turned into '-'
(/mnt/data -> mnt-data, / -> root).

Example fstab line:
  /srv/a=/srv/b  /mnt/data  fuse.chironfs  allow_other,log=/var/log/chironfs.log  0 0";

/// Help layout: the positionals are optional for clap (so that missing ones get our own
/// message) and hidden, and described here instead, without clap's `[...]` brackets.
const HELP_TEMPLATE: &str = "\
{about-with-newline}
{usage-heading} {usage}

Arguments:
  [:]PATH=[:]PATH[=...]   Replica directories separated by '=' (':' = low read priority)
  MOUNTPOINT              Existing directory to mount the replicated tree on

Options:
{options}{after-help}";

/// Raw clap view of the command line; positionals are optional so that missing ones get our
/// own one-line message instead of clap's multi-line one.
#[derive(Parser, Debug)]
#[command(
    name = "chironfs",
    version = env!("CARGO_PKG_VERSION"),
    about = ABOUT,
    after_help = AFTER_HELP,
    override_usage = "chironfs [OPTIONS] [:]PATH=[:]PATH[=[:]PATH...] MOUNTPOINT [OPTIONS]",
    help_template = HELP_TEMPLATE,
    disable_help_flag = true,
    disable_version_flag = true,
    args_override_self = true,
    color = ColorChoice::Never,
)]
struct Cli {
    /// Replica directories separated by '='
    #[arg(value_name = "[:]PATH=[:]PATH[=...]", hide = true)]
    spec: Option<String>,

    /// Directory to mount on
    #[arg(value_name = "MOUNTPOINT", hide = true)]
    mountpoint: Option<PathBuf>,

    /// Stay in the foreground instead of daemonizing
    #[arg(short = 'f', long)]
    foreground: bool,

    /// Debug logging; implies --foreground
    #[arg(short = 'd', long)]
    debug: bool,

    /// Comma-separated mount options (repeatable; see below)
    #[arg(short = 'o', long = "fuseoptions", value_name = "OPTS", action = ArgAction::Append)]
    options: Vec<String>,

    /// Also log to FILE (appended; reopened on SIGHUP)
    #[arg(short = 'l', long = "log", value_name = "FILE")]
    log: Option<PathBuf>,

    /// Do not print errors on stderr (logs are unaffected)
    #[arg(short = 'q', long)]
    quiet: bool,

    /// Name shown by df and mount [default: the replica list]
    #[arg(short = 'n', long, value_name = "NAME")]
    fsname: Option<String>,

    /// Control socket for chironctl [default: /run/chironfs/NAME.sock]
    #[arg(short = 'c', long = "ctl", value_name = "SOCKET")]
    ctl: Option<PathBuf>,

    /// Status file [default: /run/chironfs/NAME.status]
    #[arg(long, value_name = "PATH")]
    status_file: Option<PathBuf>,

    /// Per-replica deadline in seconds, e.g. 2.5 [default: 5]
    #[arg(short = 't', long, value_name = "SECS", value_parser = parse_timeout,
          allow_negative_numbers = true)]
    timeout: Option<Duration>,

    /// FUSE request threads, 1 to 64 [default: 8]
    #[arg(long, value_name = "N", value_parser = parse_threads, allow_negative_numbers = true)]
    threads: Option<usize>,

    /// Kernel passthrough for read-only opens of local replicas: on or off [default: on]
    #[arg(long, value_name = "on|off", value_parser = parse_switch)]
    passthrough: Option<bool>,

    /// Writable opens bypass the page cache (parallel writes; reads of O_RDWR files come to
    /// the daemon): on or off [default: on]
    #[arg(long, value_name = "on|off", value_parser = parse_switch)]
    direct_writes: Option<bool>,

    /// Serve requests through FUSE over io_uring when the kernel allows it
    /// (fuse.enable_uring=1): on or off [default: on]
    #[arg(long, value_name = "on|off", value_parser = parse_switch)]
    io_uring: Option<bool>,

    /// Size cap of the journal of changed paths, bytes (K, M, G suffixes) [default: 16M]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    journal_max: Option<u32>,

    /// Syslog socket [default: /dev/log]
    #[arg(long, value_name = "PATH")]
    syslog_socket: Option<PathBuf>,

    /// After a split-brain, trust this replica (index or path); the others are resynced from it
    #[arg(long, value_name = "REPLICA")]
    force_source: Option<String>,

    /// Refuse every mutation with EROFS (reads go on) while fewer than this many replicas are
    /// in service, so two halves of a split set never both write: auto = a majority
    /// (replicas/2+1), N = 1 to the replica count, off [default: off]
    #[arg(long, value_name = "auto|N")]
    quorum: Option<String>,

    /// Limit on the file content an online resync copies, in bytes per second: 50M, 800K, 1G
    /// (powers of 1024; at least 64K), or 0 / unlimited. The default is no limit: a resync
    /// runs when the admin asks (or with --auto-resync), and no fixed figure suits both a slow
    /// link and local SSDs; `chironctl resync --rate` overrides it per run [default: 0]
    #[arg(long, value_name = "RATE", value_parser = crate::throttle::parse_rate)]
    resync_rate: Option<u64>,

    /// Resync an out-of-service replica by itself once it answers again with this set's id
    /// (one at a time, backing off after a failure). Off by default: a replica taken out by an
    /// admin or by a failing disk usually wants a look before it comes back
    #[arg(long)]
    auto_resync: bool,

    /// Print this help and exit
    #[arg(short = 'h', long, short_alias = '?', action = ArgAction::Help)]
    help: Option<bool>,

    /// Print the version and exit
    #[arg(short = 'V', long, action = ArgAction::Version)]
    version: Option<bool>,
}

/// Settings found inside `-o` lists (chironfs's own keys and kernel flags).
#[derive(Debug, Default, PartialEq)]
struct MountOpts {
    log: Option<PathBuf>,
    fsname: Option<String>,
    quiet: bool,
    debug: bool,
    ctl: Option<PathBuf>,
    status_file: Option<PathBuf>,
    timeout: Option<Duration>,
    threads: Option<usize>,
    passthrough: Option<bool>,
    direct_writes: Option<bool>,
    io_uring: Option<bool>,
    journal_max: Option<u32>,
    syslog_socket: Option<PathBuf>,
    force_source: Option<String>,
    quorum: Option<Option<crate::quorum::Setting>>,
    resync_rate: Option<u64>,
    auto_resync: bool,
    allow_other: bool,
    mount_options: Vec<MountOption>,
}

/// The command line after pure parsing: options merged, relative paths made absolute, but
/// nothing checked against the filesystem yet.
#[derive(Debug)]
struct RawConfig {
    spec: String,
    mountpoint: PathBuf,
    foreground: bool,
    debug: bool,
    fsname: Option<String>,
    log_file: Option<PathBuf>,
    quiet: bool,
    timeout: Duration,
    status_file: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    syslog_socket: PathBuf,
    threads: usize,
    passthrough: bool,
    direct_writes: bool,
    io_uring: bool,
    journal_max: u32,
    force_source: Option<String>,
    quorum: Option<crate::quorum::Setting>,
    resync_rate: u64,
    auto_resync: bool,
    allow_other: bool,
    mount_options: Vec<MountOption>,
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
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp => Ok(Action::Help(help_text())),
                ErrorKind::DisplayVersion => Ok(Action::Version(version_text())),
                _ => Err(clap_error(&e)),
            };
        }
    };
    let raw = raw_config(cli)?;
    validate(raw).map(|c| Action::Mount(Box::new(c)))
}

/// The `-h` text, also useful for a man page or README.
pub fn help_text() -> String {
    Cli::command()
        .render_help()
        .to_string()
        .trim_end()
        .to_string()
}

/// The clap command `chironfs` parses with, for generated documentation (man page, shell
/// completions). Its two positionals are hidden in `--help` (the help template describes
/// them); a generator that wants them listed un-hides `spec` and `mountpoint`.
pub fn command() -> clap::Command {
    Cli::command()
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

/// Default control socket of the mount at `mountpoint` (canonical): `/run/chironfs/<name>.sock`.
pub fn default_control_socket(mountpoint: &Path) -> PathBuf {
    Path::new(RUNTIME_DIR).join(format!("{}.sock", runtime_name(mountpoint)))
}

/// Splits a replica spec (`[:]PATH=[:]PATH[=...]`) into `(path, low_priority)` pairs, in
/// order, without touching the filesystem. Rejects empty entries (`a==b`, leading or
/// trailing `=`, a lone `:`) and fewer than two replicas. If every entry has `:`, all are
/// returned as normal priority (priority is only relative, so "all low" means "all equal").
pub fn split_spec(spec: &str) -> Result<Vec<(String, bool)>, ConfigError> {
    if spec.is_empty() {
        return Err(ConfigError::new(
            "chironfs: the replica list is empty; give at least two directories separated by '='",
        ));
    }
    let mut out = Vec::new();
    for (i, entry) in spec.split('=').enumerate() {
        let (path, low) = match entry.strip_prefix(':') {
            Some(rest) => (rest, true),
            None => (entry, false),
        };
        if path.is_empty() {
            let what = if low {
                "only ':' with no path after it"
            } else {
                "empty (check for '==' or a leading or trailing '=')"
            };
            return Err(ConfigError::new(format!(
                "chironfs: replica {} of the replica list '{spec}' is {what}",
                i + 1
            )));
        }
        out.push((path.to_string(), low));
    }
    if out.len() < 2 {
        return Err(ConfigError::new(format!(
            "chironfs: at least two replicas separated by '=' are needed; got one: '{spec}'"
        )));
    }
    if out.iter().all(|(_, low)| *low) {
        for entry in &mut out {
            entry.1 = false;
        }
    }
    Ok(out)
}

/// Parses a timeout in (possibly fractional) seconds: finite, > 0, at most one day.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| "not a number of seconds".to_string())?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err("must be a number of seconds greater than 0".to_string());
    }
    if secs > MAX_TIMEOUT_SECS {
        return Err(format!("must be at most {MAX_TIMEOUT_SECS} seconds"));
    }
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err("must be a number of seconds greater than 0".to_string()),
    }
}

/// Parses a thread count in `1..=MAX_THREADS`.
/// A byte count with an optional K, M or G suffix (powers of 1024), from 4K to 4G - 1.
fn parse_size(s: &str) -> Result<u32, String> {
    let (num, mult) = match s.to_ascii_uppercase().chars().last() {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n >= 4096)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("'{s}' is not a size from 4K to 4G - 1 (e.g. 4096, 512K, 16M)"))
}

fn parse_threads(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(format!("must be a whole number from 1 to {MAX_THREADS}")),
    }
}

/// Parses an on/off switch (also yes/no, true/false, 1/0).
fn parse_switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "yes" | "true" | "1" => Ok(true),
        "off" | "no" | "false" | "0" => Ok(false),
        _ => Err("must be on or off".to_string()),
    }
}

/// Turns a clap error into one sentence plus the `--help` hint.
fn clap_error(e: &clap::Error) -> ConfigError {
    if e.kind() == ErrorKind::UnknownArgument
        && let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg)
    {
        return if arg.starts_with('-') {
            ConfigError::usage(format!("unknown option '{arg}'"))
        } else {
            ConfigError::usage(format!(
                "unexpected extra argument '{arg}' (only the replica list and the mount point \
                 are expected)"
            ))
        };
    }
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or("invalid command line").trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    ConfigError::usage(line)
}

/// Makes a path absolute against the current directory (lexically; the daemon later chdirs
/// to `/`, so relative paths must be fixed now).
fn absolute(p: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(p).map_err(|e| {
        ConfigError::new(format!(
            "chironfs: cannot make '{}' absolute: {}",
            p.display(),
            os_reason(&e)
        ))
    })
}

/// Reads a list of `-o` option strings, taking out chironfs's own keys and mapping kernel
/// flags; any unknown key is an error. Later keys win over earlier ones.
fn parse_mount_opts(lists: &[String]) -> Result<MountOpts, ConfigError> {
    let mut o = MountOpts::default();
    for item in lists.iter().flat_map(|l| l.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        let need = |v: Option<&str>| -> Result<String, ConfigError> {
            match v {
                Some(v) if !v.is_empty() => Ok(v.to_string()),
                _ => Err(ConfigError::usage(format!(
                    "mount option '{key}' needs a value ({key}=...)"
                ))),
            }
        };
        let bad = |reason: String| {
            ConfigError::usage(format!("invalid value in mount option '{item}': {reason}"))
        };
        let flag = |mo: MountOption| -> Result<MountOption, ConfigError> {
            match value {
                None => Ok(mo),
                Some(_) => Err(ConfigError::usage(format!(
                    "mount option '{key}' takes no value"
                ))),
            }
        };
        match key {
            "log" => o.log = Some(PathBuf::from(need(value)?)),
            "fsname" => o.fsname = Some(need(value)?),
            "ctl" => o.ctl = Some(PathBuf::from(need(value)?)),
            "status_file" => o.status_file = Some(PathBuf::from(need(value)?)),
            "syslog_socket" => o.syslog_socket = Some(PathBuf::from(need(value)?)),
            "force_source" => o.force_source = Some(need(value)?),
            "quorum" => {
                o.quorum = Some(crate::quorum::parse_setting(&need(value)?).map_err(bad)?);
            }
            "timeout" => o.timeout = Some(parse_timeout(&need(value)?).map_err(bad)?),
            "threads" => o.threads = Some(parse_threads(&need(value)?).map_err(bad)?),
            "journal_max" => o.journal_max = Some(parse_size(&need(value)?).map_err(bad)?),
            "passthrough" => o.passthrough = Some(parse_switch(&need(value)?).map_err(bad)?),
            "direct_writes" => o.direct_writes = Some(parse_switch(&need(value)?).map_err(bad)?),
            "io_uring" => o.io_uring = Some(parse_switch(&need(value)?).map_err(bad)?),
            "resync_rate" => {
                o.resync_rate = Some(crate::throttle::parse_rate(&need(value)?).map_err(bad)?)
            }
            "quiet"
            | "debug"
            | "allow_other"
            | "allow_root"
            | "default_permissions"
            | "auto_resync" => {
                if value.is_some() {
                    return Err(ConfigError::usage(format!(
                        "mount option '{key}' takes no value"
                    )));
                }
                match key {
                    "quiet" => o.quiet = true,
                    "debug" => o.debug = true,
                    "auto_resync" => o.auto_resync = true,
                    "allow_other" | "allow_root" => o.allow_other = true,
                    _ => {} // default_permissions: always on anyway
                }
            }
            "rw" => o.mount_options.push(flag(MountOption::RW)?),
            "ro" => o.mount_options.push(flag(MountOption::RO)?),
            "suid" => o.mount_options.push(flag(MountOption::Suid)?),
            "nosuid" => o.mount_options.push(flag(MountOption::NoSuid)?),
            "dev" => o.mount_options.push(flag(MountOption::Dev)?),
            "nodev" => o.mount_options.push(flag(MountOption::NoDev)?),
            "exec" => o.mount_options.push(flag(MountOption::Exec)?),
            "noexec" => o.mount_options.push(flag(MountOption::NoExec)?),
            "atime" => o.mount_options.push(flag(MountOption::Atime)?),
            "noatime" => o.mount_options.push(flag(MountOption::NoAtime)?),
            "sync" => o.mount_options.push(flag(MountOption::Sync)?),
            "async" => o.mount_options.push(flag(MountOption::Async)?),
            "dirsync" => o.mount_options.push(flag(MountOption::DirSync)?),
            // Accepted and ignored: fstab/mount(8) bookkeeping, atime variants the kernel
            // handles by itself, and the FUSE subtype that mount.fuse3 may pass.
            "defaults" | "relatime" | "norelatime" | "strictatime" | "nostrictatime"
            | "lazytime" | "nolazytime" | "diratime" | "nodiratime" | "nonempty" | "user"
            | "users" | "nouser" | "owner" | "group" | "auto" | "noauto" | "nofail" | "_netdev"
            | "subtype" | "comment" => {}
            k if k.starts_with("x-") => {}
            _ => {
                return Err(ConfigError::usage(format!("unknown mount option '{item}'")));
            }
        }
    }
    Ok(o)
}

/// Pure step: merges `-o` settings with the explicit options (explicit options win), applies
/// defaults and makes relative file paths absolute. Does not look at the filesystem.
fn raw_config(cli: Cli) -> Result<RawConfig, ConfigError> {
    let (spec, mountpoint) = match (cli.spec, cli.mountpoint) {
        (Some(s), Some(m)) => (s, m),
        (Some(s), None) => {
            return Err(ConfigError::usage(format!(
                "missing the mount point after the replica list '{s}'"
            )));
        }
        _ => {
            return Err(ConfigError::usage(
                "missing the replica list and the mount point",
            ));
        }
    };
    let o = parse_mount_opts(&cli.options)?;
    let debug = cli.debug || o.debug;
    let abs = |p: Option<PathBuf>| p.map(|p| absolute(&p)).transpose();
    Ok(RawConfig {
        spec,
        mountpoint,
        foreground: cli.foreground || debug,
        debug,
        fsname: cli.fsname.or(o.fsname),
        log_file: abs(cli.log.or(o.log))?,
        quiet: cli.quiet || o.quiet,
        timeout: cli.timeout.or(o.timeout).unwrap_or(DEFAULT_TIMEOUT),
        status_file: abs(cli.status_file.or(o.status_file))?,
        control_socket: abs(cli.ctl.or(o.ctl))?,
        syslog_socket: abs(cli.syslog_socket.or(o.syslog_socket))?
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SYSLOG_SOCKET)),
        threads: cli.threads.or(o.threads).unwrap_or(DEFAULT_THREADS),
        passthrough: cli.passthrough.or(o.passthrough).unwrap_or(true),
        direct_writes: cli.direct_writes.or(o.direct_writes).unwrap_or(true),
        io_uring: cli.io_uring.or(o.io_uring).unwrap_or(true),
        journal_max: cli
            .journal_max
            .or(o.journal_max)
            .unwrap_or(crate::journal::DEFAULT_MAX_BYTES as u32),
        force_source: cli.force_source.or(o.force_source),
        quorum: match cli.quorum {
            Some(q) => crate::quorum::parse_setting(&q)
                .map_err(|e| ConfigError::usage(format!("invalid value for --quorum: {e}")))?,
            None => o.quorum.flatten(),
        },
        resync_rate: cli.resync_rate.or(o.resync_rate).unwrap_or(0),
        auto_resync: cli.auto_resync || o.auto_resync,
        allow_other: o.allow_other,
        mount_options: o.mount_options,
    })
}

/// The OS reason of an I/O error, without Rust's " (os error N)" suffix.
fn os_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    }
}

/// Checks that `p` exists and is a directory, and returns its canonical path.
fn existing_dir(what: &str, p: &Path) -> Result<PathBuf, ConfigError> {
    let cannot = |e: std::io::Error| {
        ConfigError::new(format!(
            "chironfs: {what} '{}' cannot be used: {}",
            p.display(),
            os_reason(&e)
        ))
    };
    let md = fs::metadata(p).map_err(cannot)?;
    if !md.is_dir() {
        return Err(ConfigError::new(format!(
            "chironfs: {what} '{}' is not a directory",
            p.display()
        )));
    }
    fs::canonicalize(p).map_err(cannot)
}

/// Resolves a file path whose file may not exist yet: the parent directory is canonicalized
/// (it must exist), and the file itself too if it already exists (following symlinks).
fn resolve_file(what: &str, p: &Path) -> Result<PathBuf, ConfigError> {
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(ConfigError::new(format!(
            "chironfs: {what} '{}' does not name a file",
            p.display()
        )));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let dir = fs::canonicalize(parent).map_err(|e| {
        ConfigError::new(format!(
            "chironfs: directory of {what} '{}' cannot be used: {}",
            p.display(),
            os_reason(&e)
        ))
    })?;
    let full = dir.join(name);
    Ok(fs::canonicalize(&full).unwrap_or(full))
}

/// Filesystem step: checks every rule that needs the real directories (existence, type,
/// duplicates, nesting, log file placement) and produces the final [`Config`].
fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    if raw.mountpoint.as_os_str().as_bytes().starts_with(b":") {
        return Err(ConfigError::new(
            "chironfs: a ':' before the mount point is not supported; list that directory as \
             a replica instead",
        ));
    }
    let entries = split_spec(&raw.spec)?;

    let mut replicas: Vec<(String, PathBuf, bool)> = Vec::with_capacity(entries.len());
    for (given, low) in entries {
        let canon = existing_dir("replica", Path::new(&given))?;
        replicas.push((given, canon, low));
    }
    let mountpoint = existing_dir("mount point", &raw.mountpoint)?;
    let mp_shown = raw.mountpoint.display();

    for (i, (given_i, canon_i, _)) in replicas.iter().enumerate() {
        for (given_j, canon_j, _) in &replicas[..i] {
            if canon_i == canon_j {
                return Err(ConfigError::new(if given_i == given_j {
                    format!("chironfs: replica '{given_i}' is listed twice")
                } else {
                    format!(
                        "chironfs: replicas '{given_j}' and '{given_i}' are the same directory \
                         ('{}')",
                        canon_i.display()
                    )
                }));
            }
            for (inner, outer, outer_given, inner_given) in [
                (canon_i, canon_j, given_j, given_i),
                (canon_j, canon_i, given_i, given_j),
            ] {
                if inner.starts_with(outer) {
                    return Err(ConfigError::new(format!(
                        "chironfs: replica '{inner_given}' is inside replica '{outer_given}'"
                    )));
                }
            }
        }
        if *canon_i == mountpoint {
            return Err(ConfigError::new(format!(
                "chironfs: replica '{given_i}' is the mount point '{mp_shown}' itself"
            )));
        }
        if canon_i.starts_with(&mountpoint) {
            return Err(ConfigError::new(format!(
                "chironfs: replica '{given_i}' is inside the mount point '{mp_shown}'"
            )));
        }
        if mountpoint.starts_with(canon_i) {
            return Err(ConfigError::new(format!(
                "chironfs: the mount point '{mp_shown}' is inside replica '{given_i}'"
            )));
        }
    }

    let log_file = match &raw.log_file {
        None => None,
        Some(p) => {
            if p.is_dir() {
                return Err(ConfigError::new(format!(
                    "chironfs: log file '{}' is a directory",
                    p.display()
                )));
            }
            let resolved = resolve_file("log file", p)?;
            if resolved.starts_with(&mountpoint) {
                return Err(ConfigError::new(format!(
                    "chironfs: log file '{}' is inside the mount point '{mp_shown}'; it must be \
                     outside",
                    p.display()
                )));
            }
            Some(resolved)
        }
    };

    // The status file and socket are written by the daemon itself; inside its own mount that
    // would deadlock. Their directory may not exist yet, so only resolve it when it does.
    let status_file = raw
        .status_file
        .unwrap_or_else(|| default_status_file(&mountpoint));
    let control_socket = raw
        .control_socket
        .unwrap_or_else(|| default_control_socket(&mountpoint));
    for (what, p) in [
        ("status file", &status_file),
        ("control socket", &control_socket),
    ] {
        let resolved = resolve_file(what, p).unwrap_or_else(|_| p.clone());
        if resolved.starts_with(&mountpoint) {
            return Err(ConfigError::new(format!(
                "chironfs: {what} '{}' is inside the mount point '{mp_shown}'; it must be outside",
                p.display()
            )));
        }
    }

    let force_source = match &raw.force_source {
        None => None,
        Some(given) => {
            let is_index = given.bytes().all(|b| b.is_ascii_digit());
            let found = if is_index {
                given.parse::<usize>().ok().filter(|&i| i < replicas.len())
            } else {
                let canon = fs::canonicalize(given).ok();
                replicas
                    .iter()
                    .position(|(g, c, _)| g == given || Some(c) == canon.as_ref())
            }
            .and_then(|i| u16::try_from(i).ok());
            Some(found.ok_or_else(|| {
                ConfigError::new(format!(
                    "chironfs: --force-source '{given}' is not one of the replicas (give its \
                     index, 0-based, or its path)"
                ))
            })?)
        }
    };

    let quorum = match raw.quorum {
        None => None,
        Some(q) => {
            let n = crate::quorum::required(q, replicas.len())
                .map_err(|e| ConfigError::new(format!("chironfs: invalid --quorum: {e}")))?;
            // At most the replica count, which never nears u16::MAX.
            Some(u16::try_from(n).unwrap_or(u16::MAX))
        }
    };

    Ok(Config {
        force_source,
        quorum,
        replicas: replicas
            .into_iter()
            .map(|(_, path, low_priority)| ReplicaSpec { path, low_priority })
            .collect(),
        mountpoint,
        foreground: raw.foreground,
        debug: raw.debug,
        fsname: raw.fsname.unwrap_or(raw.spec),
        log_file,
        quiet: raw.quiet,
        timeout: raw.timeout,
        status_file,
        control_socket,
        syslog_socket: raw.syslog_socket,
        threads: raw.threads,
        passthrough: raw.passthrough,
        direct_writes: raw.direct_writes,
        io_uring: raw.io_uring,
        resync_rate: raw.resync_rate,
        auto_resync: raw.auto_resync,
        journal_max: raw.journal_max,
        allow_other: raw.allow_other,
        mount_options: raw.mount_options,
    })
}

#[cfg(test)]
mod tests;
