//! The one table of `chironfs` options, [`OPTIONS`]: for each, its clap definition (long and
//! short name, value name, value parser, default, help text) and where its value goes in the
//! [`Draft`]. Everything else is derived from it: the clap command (`cli.rs`, hence `--help`,
//! the man page and the shell completions), the `-o` key (`mount_opts.rs`: the long name with
//! '_' for '-'), and the `-o` key list of the help. See "How to add an option" in `mod.rs`.
//!
//! May touch: the [`Draft`] being built, and the value parsers of `crate::rules::quorum` and
//! `crate::rules::throttle`. Nothing here looks at the filesystem.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, value_parser};

use super::{ConfigError, Draft, MAX_CACHE_TIME_SECS, MAX_THREADS, MAX_TIMEOUT_SECS, os_reason};

/// One option of the command line.
pub(super) struct Opt {
    /// `--long`; also the clap id.
    pub long: &'static str,
    /// Also accepted inside `-o`, spelt with '_' for '-' (`-o status_file=...`).
    pub mount_opt: bool,
    /// The rest of the clap definition, added to `Arg::new(long).long(long)`. A default value
    /// is shown at the end of the help text, as `[default: ...]`.
    pub arg: fn(Arg) -> Arg,
    /// Stores the value (given, else the default) in the draft. It runs for every parse, so it
    /// must not fail for an absent value; it may refuse a value that clap let through, with
    /// [`Given::invalid`].
    pub set: fn(&mut Draft, &Given) -> Result<(), ConfigError>,
}

impl Opt {
    /// The full clap definition.
    pub fn arg(&self) -> Arg {
        (self.arg)(Arg::new(self.long).long(self.long))
    }

    /// The `-o` key, if the option has one.
    pub fn mount_key(&self) -> Option<String> {
        self.mount_opt.then(|| self.long.replace('-', "_"))
    }

    /// Runs `set` on the value this option has in `matches`; `item` is the `-o` item being
    /// checked, if that is what `matches` came from (for the error message).
    pub fn store(
        &self,
        draft: &mut Draft,
        matches: &ArgMatches,
        item: Option<&str>,
    ) -> Result<(), ConfigError> {
        let given = Given {
            matches,
            long: self.long,
            item,
        };
        (self.set)(draft, &given)
    }
}

/// Every option, in `--help` order. `-h` and `-V` are added by `cli.rs`.
pub(super) static OPTIONS: &[Opt] = &[
    Opt {
        long: "foreground",
        mount_opt: false,
        arg: |a| {
            a.short('f')
                .action(ArgAction::SetTrue)
                .help("Stay in the foreground instead of daemonizing")
        },
        set: |d, v| {
            d.config.foreground |= v.flag();
            Ok(())
        },
    },
    Opt {
        long: "debug",
        mount_opt: true,
        arg: |a| {
            a.short('d')
                .action(ArgAction::SetTrue)
                .help("Debug logging; implies --foreground")
        },
        set: |d, v| {
            d.config.debug = v.flag();
            d.config.foreground |= d.config.debug;
            Ok(())
        },
    },
    // The -o lists themselves, read (and rewritten) by mount_opts.rs.
    Opt {
        long: "fuseoptions",
        mount_opt: false,
        arg: |a| {
            a.short('o')
                .value_name("OPTS")
                .action(ArgAction::Append)
                .help("Comma-separated mount options (repeatable; see below)")
        },
        set: |_, _| Ok(()),
    },
    Opt {
        long: "log",
        mount_opt: true,
        arg: |a| {
            a.short('l')
                .value_name("FILE")
                .value_parser(value_parser!(PathBuf))
                .help("Also log to FILE (appended; reopened on SIGHUP)")
        },
        set: |d, v| {
            d.config.log_file = v.path()?;
            Ok(())
        },
    },
    Opt {
        long: "quiet",
        mount_opt: true,
        arg: |a| {
            a.short('q')
                .action(ArgAction::SetTrue)
                .help("Do not print errors on stderr (logs are unaffected)")
        },
        set: |d, v| v.store(&mut d.config.quiet),
    },
    Opt {
        long: "fsname",
        mount_opt: true,
        arg: |a| {
            a.short('n')
                .value_name("NAME")
                .help("Name shown by df and mount [default: the replica list]")
        },
        set: |d, v| v.store(&mut d.config.fsname),
    },
    Opt {
        long: "ctl",
        mount_opt: true,
        arg: |a| {
            a.short('c')
                .value_name("SOCKET")
                .value_parser(value_parser!(PathBuf))
                .help("Control socket for chironctl [default: /run/chironfs/NAME.sock]")
        },
        set: |d, v| {
            d.control_socket = v.path()?;
            Ok(())
        },
    },
    Opt {
        long: "status-file",
        mount_opt: true,
        arg: |a| {
            a.value_name("PATH")
                .value_parser(value_parser!(PathBuf))
                .help("Status file [default: /run/chironfs/NAME.status]")
        },
        set: |d, v| {
            d.status_file = v.path()?;
            Ok(())
        },
    },
    Opt {
        long: "timeout",
        mount_opt: true,
        arg: |a| {
            a.short('t')
                .value_name("SECS")
                .value_parser(parse_timeout)
                .allow_negative_numbers(true)
                .default_value("5")
                .help("Per-replica deadline in seconds, e.g. 2.5")
        },
        set: |d, v| v.store(&mut d.config.timeout),
    },
    Opt {
        long: "cache-time",
        mount_opt: true,
        arg: |a| {
            a.value_name("SECS")
                .value_parser(parse_cache_time)
                .default_value("1")
                .help(
                    "How long the kernel keeps attributes and names before asking again \
                     (and chironfs a directory's on a network replica, carried through its \
                     own changes), 0 to 3600 seconds, e.g. 0.5. Changes through this mount \
                     are seen at once whatever it is; longer saves a request per file on `ls -l` and \
                     stat-heavy work, and is safe while this daemon is the replicas' only \
                     writer; a change made on a replica behind its back (and, for an `ro` \
                     observer mount, this daemon's changes) shows that late",
                )
        },
        set: |d, v| v.store(&mut d.config.cache_time),
    },
    Opt {
        long: "threads",
        mount_opt: true,
        arg: |a| {
            a.value_name("N")
                .value_parser(parse_threads)
                .allow_negative_numbers(true)
                .default_value("8")
                .help("FUSE request threads, 1 to 64")
        },
        set: |d, v| v.store(&mut d.config.threads),
    },
    Opt {
        long: "passthrough",
        mount_opt: true,
        arg: |a| {
            a.value_name("on|off")
                .value_parser(parse_switch)
                .default_value("on")
                .help("Kernel passthrough for read-only opens of local replicas: on or off")
        },
        set: |d, v| v.store(&mut d.config.passthrough),
    },
    Opt {
        long: "direct-writes",
        mount_opt: true,
        arg: |a| {
            a.value_name("on|off")
                .value_parser(parse_switch)
                .default_value("on")
                .help(
                    "Writable opens bypass the page cache (parallel writes; reads of O_RDWR \
                     files come to the daemon): on or off",
                )
        },
        set: |d, v| v.store(&mut d.config.direct_writes),
    },
    Opt {
        long: "io-uring",
        mount_opt: true,
        arg: |a| {
            a.value_name("on|off")
                .value_parser(parse_switch)
                .default_value("on")
                .help(
                    "Serve requests through FUSE over io_uring when the kernel allows it \
                     (fuse.enable_uring=1): on or off",
                )
        },
        set: |d, v| v.store(&mut d.config.io_uring),
    },
    Opt {
        long: "journal-max",
        mount_opt: true,
        arg: |a| {
            a.value_name("SIZE")
                .value_parser(parse_size)
                .default_value("16M")
                .help("Size cap of the journal of changed paths, bytes (K, M, G suffixes)")
        },
        set: |d, v| v.store(&mut d.config.journal_max),
    },
    Opt {
        long: "syslog-socket",
        mount_opt: true,
        arg: |a| {
            a.value_name("PATH")
                .value_parser(value_parser!(PathBuf))
                .default_value(super::DEFAULT_SYSLOG_SOCKET)
                .help("Syslog socket")
        },
        set: |d, v| {
            d.config.syslog_socket = v.path()?.unwrap_or_default();
            Ok(())
        },
    },
    Opt {
        long: "force-source",
        mount_opt: true,
        arg: |a| {
            a.value_name("REPLICA").help(
                "After a split-brain, trust this replica (index or path); the others are \
                 resynced from it",
            )
        },
        set: |d, v| v.store_opt(&mut d.force_source),
    },
    // Checked by its `set` rather than by clap, for its message: "invalid value for --quorum".
    Opt {
        long: "quorum",
        mount_opt: true,
        arg: |a| {
            a.value_name("auto|N").default_value("off").help(
                "Refuse every mutation with EROFS (reads go on) while fewer than this many \
                 replicas are in service, so two halves of a split set never both write: auto \
                 = a majority (replicas/2+1), N = 1 to the replica count, off",
            )
        },
        set: |d, v| {
            let text: String = v.get().unwrap_or_default();
            d.quorum = crate::rules::quorum::parse_setting(&text).map_err(|e| v.invalid(e))?;
            Ok(())
        },
    },
    Opt {
        long: "resync-rate",
        mount_opt: true,
        arg: |a| {
            a.value_name("RATE")
                .value_parser(crate::rules::throttle::parse_rate)
                .default_value("0")
                .help(
                    "Limit on the file content an online resync copies, in bytes per second: \
                     50M, 800K, 1G (powers of 1024; at least 64K), or 0 / unlimited. The \
                     default is no limit: a resync runs when the admin asks (or with \
                     --auto-resync), and no fixed figure suits both a slow link and local \
                     SSDs; `chironctl resync --rate` overrides it per run",
                )
        },
        set: |d, v| v.store(&mut d.config.resync_rate),
    },
    Opt {
        long: "auto-resync",
        mount_opt: true,
        arg: |a| {
            a.action(ArgAction::SetTrue).help(
                "Resync an out-of-service replica by itself once it answers again with this \
                 set's id (one at a time, backing off after a failure). Off by default: a \
                 replica taken out by an admin or by a failing disk usually wants a look \
                 before it comes back",
            )
        },
        set: |d, v| v.store(&mut d.config.auto_resync),
    },
    Opt {
        long: "lease-time",
        mount_opt: true,
        arg: |a| {
            a.value_name("SECS|auto")
                .value_parser(parse_lease_time)
                .default_value("auto")
                .help(
                    "How long the replica set's ownership lease must go unrenewed before \
                     another daemon may take it over (after its owner died): auto = twice \
                     --timeout, at least 4 s; at least --timeout + 2 s. The owner stops \
                     acknowledging writes (EROFS) well before, when it cannot renew on a \
                     majority of the members",
                )
        },
        set: |d, v| {
            d.config.lease_time = v.get::<Option<Duration>>().flatten();
            Ok(())
        },
    },
    Opt {
        long: "witness",
        mount_opt: true,
        arg: |a| {
            a.value_name("DIR")
                .value_parser(value_parser!(PathBuf))
                .help(
                    "A directory on a third machine that holds no data, only the set's ownership \
                     lease and state: two replicas and a witness keep a majority when any one of \
                     the three is lost, so a partition between the front servers cannot split \
                     the set, and the witness refuses a replica that missed writes",
                )
        },
        set: |d, v| {
            d.config.witness = v.path()?;
            Ok(())
        },
    },
    Opt {
        long: "no-new-set",
        mount_opt: true,
        arg: |a| {
            a.action(ArgAction::SetTrue).help(
                "Never make a new replica set: refuse to start when no replica holds chironfs \
                 state, rather than turn directories whose filesystems are not mounted into a \
                 new, empty set (the OCF agent passes it unless new_set=true)",
            )
        },
        set: |d, v| v.store(&mut d.config.no_new_set),
    },
    Opt {
        long: "strict-majority",
        mount_opt: true,
        arg: |a| {
            a.action(ArgAction::SetTrue).help(
                "With two members (two replicas, no witness), take and keep the lease only \
                 while both answer: an outage when one is lost, rather than a possible split \
                 (without it, two members run on the one that answers)",
            )
        },
        set: |d, v| v.store(&mut d.config.strict_majority),
    },
    Opt {
        long: "metrics-listen",
        mount_opt: true,
        arg: |a| {
            a.value_name("ADDR:PORT")
                .value_parser(value_parser!(std::net::SocketAddr))
                .help(
                    "Serve the Prometheus metrics over HTTP on ADDR:PORT (e.g. 127.0.0.1:9580): \
                     unauthenticated and read-only, so bind it to an address only the monitoring \
                     can reach [default: no listener; chironctl metrics and the NAME.prom file \
                     next to the status file serve them]",
                )
        },
        set: |d, v| v.store_opt(&mut d.config.metrics_listen),
    },
];

/// Stores every option's value (given, else its default) in the draft, in table order.
pub(super) fn apply(draft: &mut Draft, matches: &ArgMatches) -> Result<(), ConfigError> {
    OPTIONS
        .iter()
        .try_for_each(|opt| opt.store(draft, matches, None))
}

/// The option of a `-o` key, if chironfs has one.
pub(super) fn by_mount_key(key: &str) -> Option<&'static Opt> {
    OPTIONS
        .iter()
        .find(|opt| opt.mount_key().is_some_and(|k| k == key))
}

/// One option's value in a parsed command line, as its `set` sees it.
pub(super) struct Given<'a> {
    matches: &'a ArgMatches,
    long: &'static str,
    item: Option<&'a str>,
}

impl Given<'_> {
    /// The value: as given, else the default; None if there is neither. A switch has one
    /// (true or false).
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.matches.get_one::<T>(self.long).cloned()
    }

    /// Whether a switch was given.
    pub fn flag(&self) -> bool {
        self.matches.get_flag(self.long)
    }

    /// Stores the value in `slot`, if there is one.
    pub fn store<T: Clone + Send + Sync + 'static>(&self, slot: &mut T) -> Result<(), ConfigError> {
        if let Some(value) = self.get() {
            *slot = value;
        }
        Ok(())
    }

    /// Stores the value or None in `slot`.
    pub fn store_opt<T: Clone + Send + Sync + 'static>(
        &self,
        slot: &mut Option<T>,
    ) -> Result<(), ConfigError> {
        *slot = self.get();
        Ok(())
    }

    /// The value as an absolute path: the daemon later chdirs to `/`, so a relative path is
    /// made absolute against the current directory now (lexically).
    pub fn path(&self) -> Result<Option<PathBuf>, ConfigError> {
        self.get::<PathBuf>().map(|p| absolute(&p)).transpose()
    }

    /// The error for a value this option refuses, naming the `-o` item it came from, if any.
    pub fn invalid(&self, reason: impl std::fmt::Display) -> ConfigError {
        invalid_value(self.item, self.long, reason)
    }
}

/// The error for a refused value: `-o` items are named as written, since the key differs from
/// the option's name.
pub(super) fn invalid_value(
    item: Option<&str>,
    long: &str,
    reason: impl std::fmt::Display,
) -> ConfigError {
    ConfigError::usage(match item {
        Some(item) => format!("invalid value in mount option '{item}': {reason}"),
        None => format!("invalid value for --{long}: {reason}"),
    })
}

fn absolute(p: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(p).map_err(|e| {
        ConfigError::new(format!(
            "chironfs: cannot make '{}' absolute: {}",
            p.display(),
            os_reason(&e)
        ))
    })
}

/// Parses `--lease-time`: "auto" (None) or seconds, like a timeout.
fn parse_lease_time(s: &str) -> Result<Option<Duration>, String> {
    if s == "auto" {
        return Ok(None);
    }
    parse_timeout(s).map(Some)
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

/// Seconds in `0..=MAX_CACHE_TIME_SECS` (0: the kernel keeps nothing).
fn parse_cache_time(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| "not a number of seconds".to_string())?;
    if !secs.is_finite() || !(0.0..=MAX_CACHE_TIME_SECS).contains(&secs) {
        return Err(format!("must be 0 to {MAX_CACHE_TIME_SECS} seconds"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

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

/// Parses a thread count in `1..=MAX_THREADS`.
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
