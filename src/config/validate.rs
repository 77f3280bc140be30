//! The filesystem checks that turn the [`Draft`] into a [`Config`] that can be mounted: the
//! replicas and the mount point exist and are directories, none is listed twice or lies in
//! another or in the mount point, the daemon's own files lie outside the mount point, and
//! `--force-source` and `--quorum` are resolved against the replicas. Also the replica list
//! syntax ([`split_spec`]).
//!
//! May touch: the filesystem, read only (metadata, canonicalize): nothing is created.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::{
    Config, ConfigError, Draft, FIRST_LOOK, ReplicaSpec, Unanswered, default_control_socket,
    default_status_file, os_reason,
};

/// A replica as given on the command line and as found.
struct Replica {
    given: String,
    canon: PathBuf,
    low_priority: bool,
}

/// `--quorum` against `members` (replicas and witness): the members mutations need, and
/// whether it is `auto` (a majority, kept one as members join or leave online).
fn resolve_quorum(
    quorum: Option<crate::rules::quorum::Setting>,
    members: usize,
) -> Result<(Option<u16>, bool), ConfigError> {
    let Some(q) = quorum else {
        return Ok((None, false));
    };
    let n = crate::rules::quorum::required(q, members)
        .map_err(|e| ConfigError::new(format!("chironfs: invalid --quorum: {e}")))?;
    // At most the member count, which never nears u16::MAX.
    let n = u16::try_from(n).unwrap_or(u16::MAX);
    Ok((Some(n), q == crate::rules::quorum::Setting::Auto))
}

/// Checks every rule that needs the real directories (existence, type, duplicates, nesting,
/// placement of the daemon's files) and produces the final [`Config`].
pub(super) fn validate(draft: Draft) -> Result<Config, ConfigError> {
    let Draft {
        spec,
        mut config,
        status_file,
        control_socket,
        force_source,
        quorum,
    } = draft;
    let given_mp = std::mem::take(&mut config.mountpoint);
    if given_mp.as_os_str().as_bytes().starts_with(b":") {
        return Err(ConfigError::new(
            "chironfs: a ':' before the mount point is not supported; list that directory as \
             a replica instead",
        ));
    }
    let split = split_spec(&spec)?;
    // Every directory at once, for a first look of at most a second: a directory on a dead
    // file server is then waited for by the daemon, whose log says so (see `FIRST_LOOK`).
    let mut dirs: Vec<(&str, PathBuf)> = split
        .iter()
        .map(|(given, _)| ("replica", PathBuf::from(given)))
        .collect();
    dirs.push(("mount point", given_mp.clone()));
    if let Some(w) = &config.witness {
        dirs.push(("witness", w.clone()));
    }
    let mut looked = look_at_all(&dirs, config.timeout.min(FIRST_LOOK)).into_iter();
    let mut found = |what: &str, p: &Path| {
        let look = looked.next().expect("one look per directory");
        match existing_dir(what, p, look)? {
            Found::Dir(canon) => Ok(canon),
            Found::Unanswered(canon, why) if what != "mount point" => {
                config.unanswered.push((canon.clone(), why));
                Ok(canon)
            }
            Found::Unanswered(_, why) => Err(ConfigError::new(format!(
                "chironfs: mount point '{}' cannot be used: {}",
                p.display(),
                match why {
                    Unanswered::NoAnswer => "it does not answer (hung?)".to_string(),
                    Unanswered::Failed(e) => os_reason(&std::io::Error::from_raw_os_error(e)),
                }
            ))),
        }
    };
    let replicas = split
        .into_iter()
        .map(|(given, low_priority)| {
            let canon = found("replica", Path::new(&given))?;
            Ok(Replica {
                given,
                canon,
                low_priority,
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let mountpoint = found("mount point", &given_mp)?;
    let witness = config
        .witness
        .clone()
        .map(|w| found("witness", &w))
        .transpose()?;
    check_placement(&replicas, &mountpoint, &given_mp)?;

    let (mp, given) = (mountpoint.as_path(), given_mp.as_path());
    config.log_file = config
        .log_file
        .map(|p| log_file(p, mp, given))
        .transpose()?;
    let status_file = status_file.unwrap_or_else(|| default_status_file(mp));
    config.status_file = runtime_file("status file", status_file, mp, given)?;
    let control_socket = control_socket.unwrap_or_else(|| default_control_socket(mp));
    config.control_socket = runtime_file("control socket", control_socket, mp, given)?;

    config.force_source = force_source
        .map(|given| replica_index(&given, &replicas))
        .transpose()?;
    // One majority rule with the lease: the witness is a member too.
    let members = replicas.len() + usize::from(config.witness.is_some());
    (config.quorum, config.quorum_auto) = resolve_quorum(quorum, members)?;
    if let Some(lease) = config.lease_time {
        let least = crate::rules::lease::Timing::minimum_lease(config.timeout);
        if lease < least {
            return Err(ConfigError::new(format!(
                "chironfs: --lease-time {} s is too short for --timeout {} s: at least {} s (the \
                 owner must have time to stop writing before another daemon takes over)",
                lease.as_secs_f64(),
                config.timeout.as_secs_f64(),
                least.as_secs_f64()
            )));
        }
    }
    config.witness = witness;
    if let Some(w) = &config.witness
        && (replicas.iter().any(|r| &r.canon == w) || w.starts_with(&mountpoint))
    {
        return Err(ConfigError::new(format!(
            "chironfs: the witness {} must be a directory of its own, neither a replica nor \
             inside the mount point",
            w.display()
        )));
    }
    config.replicas = replicas
        .into_iter()
        .map(|r| ReplicaSpec {
            path: r.canon,
            low_priority: r.low_priority,
        })
        .collect();
    config.mountpoint = mountpoint;
    Ok(config)
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

/// No replica twice, none inside another, none that is, holds or lies in the mount point.
fn check_placement(
    replicas: &[Replica],
    mountpoint: &Path,
    given_mp: &Path,
) -> Result<(), ConfigError> {
    let mp_shown = given_mp.display();
    for (i, r) in replicas.iter().enumerate() {
        let given_i = &r.given;
        for earlier in &replicas[..i] {
            let given_j = &earlier.given;
            if r.canon == earlier.canon {
                return Err(ConfigError::new(if given_i == given_j {
                    format!("chironfs: replica '{given_i}' is listed twice")
                } else {
                    format!(
                        "chironfs: replicas '{given_j}' and '{given_i}' are the same directory \
                         ('{}')",
                        r.canon.display()
                    )
                }));
            }
            for (inner, outer) in [(r, earlier), (earlier, r)] {
                if inner.canon.starts_with(&outer.canon) {
                    return Err(ConfigError::new(format!(
                        "chironfs: replica '{}' is inside replica '{}'",
                        inner.given, outer.given
                    )));
                }
            }
        }
        if r.canon == mountpoint {
            return Err(ConfigError::new(format!(
                "chironfs: replica '{given_i}' is the mount point '{mp_shown}' itself"
            )));
        }
        if r.canon.starts_with(mountpoint) {
            return Err(ConfigError::new(format!(
                "chironfs: replica '{given_i}' is inside the mount point '{mp_shown}'"
            )));
        }
        if mountpoint.starts_with(&r.canon) {
            return Err(ConfigError::new(format!(
                "chironfs: the mount point '{mp_shown}' is inside replica '{given_i}'"
            )));
        }
    }
    Ok(())
}

/// The log file: not a directory, in an existing directory, outside the mount point;
/// returned resolved.
fn log_file(p: PathBuf, mountpoint: &Path, given_mp: &Path) -> Result<PathBuf, ConfigError> {
    if p.is_dir() {
        return Err(ConfigError::new(format!(
            "chironfs: log file '{}' is a directory",
            p.display()
        )));
    }
    let resolved = resolve_file("log file", &p)?;
    refuse_inside("log file", &p, &resolved, mountpoint, given_mp)?;
    Ok(resolved)
}

/// The status file or the control socket (`what`), outside the mount point. Its directory may
/// not exist yet (the daemon creates it), so it is resolved only when it does.
fn runtime_file(
    what: &str,
    p: PathBuf,
    mountpoint: &Path,
    given_mp: &Path,
) -> Result<PathBuf, ConfigError> {
    let resolved = resolve_file(what, &p).unwrap_or_else(|_| p.clone());
    refuse_inside(what, &p, &resolved, mountpoint, given_mp)?;
    Ok(p)
}

/// The daemon's own files are written by the daemon itself: inside its own mount that would
/// deadlock.
fn refuse_inside(
    what: &str,
    p: &Path,
    resolved: &Path,
    mountpoint: &Path,
    given_mp: &Path,
) -> Result<(), ConfigError> {
    if resolved.starts_with(mountpoint) {
        return Err(ConfigError::new(format!(
            "chironfs: {what} '{}' is inside the mount point '{}'; it must be outside",
            p.display(),
            given_mp.display()
        )));
    }
    Ok(())
}

/// The index of the replica `given` names: its index (0-based) or its path.
fn replica_index(given: &str, replicas: &[Replica]) -> Result<u16, ConfigError> {
    let found = if given.bytes().all(|b| b.is_ascii_digit()) {
        given.parse::<usize>().ok().filter(|&i| i < replicas.len())
    } else {
        let canon = fs::canonicalize(given).ok();
        replicas
            .iter()
            .position(|r| r.given == given || Some(&r.canon) == canon.as_ref())
    };
    found.and_then(|i| u16::try_from(i).ok()).ok_or_else(|| {
        ConfigError::new(format!(
            "chironfs: --force-source '{given}' is not one of the replicas (give its index, \
             0-based, or its path)"
        ))
    })
}

/// What looking at one directory gave within the deadline.
enum Look {
    /// Its canonical path; None: it is not a directory.
    Answered(std::io::Result<Option<PathBuf>>),
    /// No answer within the deadline.
    NoAnswer,
}

/// A directory found usable: answering (its canonical path), or not answering in a way that
/// lets the mount start without it (its absolute path as given, and why).
enum Found {
    Dir(PathBuf),
    Unanswered(PathBuf, Unanswered),
}

/// Looks at each directory (`metadata`, then `canonicalize`) on a thread of its own, all at
/// once, waiting at most `deadline` in total. A directory on a dead file server leaves its
/// thread blocked in the kernel until the server answers; the start goes on.
fn look_at_all(dirs: &[(&str, PathBuf)], deadline: Duration) -> Vec<Look> {
    let end = Instant::now() + deadline;
    let pending: Vec<_> = dirs
        .iter()
        .map(|(_, p)| {
            let (tx, rx) = mpsc::channel();
            let p = p.clone();
            let spawned = thread::Builder::new()
                .name("look-at-dir".into())
                .spawn(move || {
                    let look = fs::metadata(&p)
                        .and_then(|md| md.is_dir().then(|| fs::canonicalize(&p)).transpose());
                    let _ = tx.send(look);
                });
            (rx, spawned)
        })
        .collect();
    pending
        .into_iter()
        .map(|(rx, spawned)| match spawned {
            Err(e) => Look::Answered(Err(e)),
            Ok(_) => match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(look) => Look::Answered(look),
                Err(_) => Look::NoAnswer,
            },
        })
        .collect()
}

/// Checks what [`look_at_all`] found at `p`: a directory (its canonical path), one whose
/// storage cannot be reached now (`rules::arbitrate::is_replica_fault`, or no answer), or a mistake in
/// the command line (the Err: missing, not a directory, not allowed).
fn existing_dir(what: &str, p: &Path, look: Look) -> Result<Found, ConfigError> {
    let absolute = || std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match look {
        Look::Answered(Ok(Some(canon))) => Ok(Found::Dir(canon)),
        Look::Answered(Ok(None)) => Err(ConfigError::new(format!(
            "chironfs: {what} '{}' is not a directory",
            p.display()
        ))),
        Look::Answered(Err(e))
            if e.raw_os_error()
                .is_some_and(crate::rules::arbitrate::is_replica_fault) =>
        {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            Ok(Found::Unanswered(absolute(), Unanswered::Failed(errno)))
        }
        Look::Answered(Err(e)) => Err(ConfigError::new(format!(
            "chironfs: {what} '{}' cannot be used: {}",
            p.display(),
            os_reason(&e)
        ))),
        Look::NoAnswer => Ok(Found::Unanswered(absolute(), Unanswered::NoAnswer)),
    }
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
