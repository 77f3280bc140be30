//! The status file's format: a small `key=value` text file the daemon rewrites every second,
//! so that monitors that cannot (or must not) talk to the root-only control socket — the OCF
//! resource agent in POSIX shell, Nagios plugins run as an unprivileged user — can read the
//! replica state with `grep`/`sed`, and can tell a dead daemon from a live one by its age.
//!
//! The format is documented in `docs/status-file.md`; [`render`] and [`parse`] are its only
//! writer and reader in Rust. Pure; imports only `view/` (snapshot, check, words). The thread
//! that writes the file is `daemon::status_writer`.

use std::collections::BTreeMap;

use crate::view::check::check_summary;
use crate::view::snapshot::{Overall, ReplicaSnapshot, ReplicaState, ResyncProgress, Snapshot};
// `verify` still names the sanitizer by this path; its home is `view::words`.
use crate::view::words::one_line;
use crate::view::words::sanitize_value;

/// Value of the first line; a reader that sees another value must not guess.
pub const FORMAT_LINE: &str = "format=chironfs-status 1";

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Renders a snapshot in the status-file format, so every consumer (shell, Nagios, `chironctl
/// check --status-file`) reads the same facts; see `docs/status-file.md`.
pub fn render(s: &Snapshot) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(256 + 256 * s.replicas.len());
    // Writing into a String cannot fail.
    let _ = writeln!(out, "{FORMAT_LINE}");
    let _ = writeln!(out, "pid={}", s.pid);
    let _ = writeln!(out, "mountpoint={}", sanitize_value(&s.mountpoint));
    let _ = writeln!(out, "time={}", s.time);
    let _ = writeln!(out, "state={}", s.state.as_str());
    let _ = writeln!(out, "replicas={}", s.replicas.len());
    if let Some(q) = s.quorum {
        let _ = writeln!(out, "quorum={q}");
        let state = if s.quorum_lost() { "lost" } else { "met" };
        let _ = writeln!(out, "quorum_state={state}");
    }
    if let Some(w) = s.witnesses {
        let _ = writeln!(out, "witnesses_answering={w}");
    }
    if let Some(lease) = &s.lease {
        let (state, reason) = lease.split_once(": ").unwrap_or((lease, ""));
        let _ = writeln!(out, "lease_state={}", sanitize_value(state));
        let _ = writeln!(out, "lease_epoch={}", s.lease_epoch);
        if !reason.is_empty() {
            let _ = writeln!(out, "lease_reason={}", sanitize_value(reason));
        }
    }
    // The Nagios verdict and its reason, so a shell monitor needs no logic of its own.
    let (check, reason) = check_summary(s);
    let _ = writeln!(out, "check={}", check.label().to_ascii_lowercase());
    let _ = writeln!(out, "check_reason={}", sanitize_value(&reason));
    for r in &s.replicas {
        let n = r.index;
        let _ = writeln!(out, "replica.{n}.path={}", sanitize_value(&r.path));
        let prio = if r.low_priority { "low" } else { "normal" };
        let _ = writeln!(out, "replica.{n}.priority={prio}");
        let _ = writeln!(out, "replica.{n}.state={}", r.state.as_str());
        let _ = writeln!(out, "replica.{n}.stale={}", yes_no(r.stale));
        let _ = writeln!(out, "replica.{n}.reason={}", one_line(&r.reason));
        let _ = writeln!(out, "replica.{n}.since={}", r.since);
        let _ = writeln!(out, "replica.{n}.reads={}", r.reads);
        let _ = writeln!(out, "replica.{n}.writes={}", r.writes);
        let _ = writeln!(out, "replica.{n}.errors={}", r.errors);
        if let Some(m) = &r.membership {
            let _ = writeln!(out, "replica.{n}.membership={}", sanitize_value(m));
        }
        if let Some(rs) = &r.resync {
            let _ = writeln!(out, "replica.{n}.resync={}", sanitize_value(&rs.state));
            let _ = writeln!(
                out,
                "replica.{n}.resync_phase={}",
                sanitize_value(&rs.phase)
            );
            let _ = writeln!(out, "replica.{n}.resync_source={}", rs.source);
            let _ = writeln!(out, "replica.{n}.resync_files={}", rs.files);
            let _ = writeln!(out, "replica.{n}.resync_bytes={}", rs.bytes);
            let _ = writeln!(out, "replica.{n}.resync_checked={}", rs.checked);
            let _ = writeln!(out, "replica.{n}.resync_seconds={}", rs.seconds);
            let _ = writeln!(
                out,
                "replica.{n}.resync_error={}",
                sanitize_value(&rs.error)
            );
            let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
            let _ = writeln!(out, "replica.{n}.resync_total={}", opt(rs.total));
            let _ = writeln!(out, "replica.{n}.resync_done={}", rs.done);
            let _ = writeln!(out, "replica.{n}.resync_bytes_per_sec={}", rs.bytes_per_sec);
            let _ = writeln!(
                out,
                "replica.{n}.resync_entries_per_sec={}",
                rs.entries_per_sec
            );
            let _ = writeln!(out, "replica.{n}.resync_eta={}", opt(rs.eta));
            let _ = writeln!(out, "replica.{n}.resync_rate_limit={}", rs.rate_limit);
        }
    }
    out
}

/// The keys of one part of the file (the top, or one replica's without its `replica.N.`
/// prefix) and their values.
type Fields = BTreeMap<String, String>;

fn take<'a>(map: &'a Fields, key: &str, what: &str) -> Result<&'a str, String> {
    map.get(key)
        .map(String::as_str)
        .ok_or_else(|| format!("missing key {what}{key}"))
}

fn num<T: std::str::FromStr>(v: &str, key: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{key}={v}: not a non-negative integer"))
}

/// The value of `key` as one of the `choices` words ("expected a, b or c" otherwise).
fn choose<T: Copy>(key: &str, value: &str, choices: &[(&str, T)]) -> Result<T, String> {
    if let Some(&(_, v)) = choices.iter().find(|(word, _)| *word == value) {
        return Ok(v);
    }
    let words: Vec<&str> = choices.iter().map(|(word, _)| *word).collect();
    let (last, rest) = words.split_last().unwrap_or((&"", &[]));
    Err(format!(
        "{key}={value}: expected {} or {last}",
        rest.join(", ")
    ))
}

/// Step 1 of [`parse`]: checks the format line and sorts the `key=value` lines into the top
/// keys and each replica's keys, refusing a line without `=` and a duplicate key.
fn split_keys(text: &str) -> Result<(Fields, BTreeMap<usize, Fields>), String> {
    let mut lines = text.lines();
    match lines.next() {
        Some(l) if l == FORMAT_LINE => {}
        Some(l) => return Err(format!("unsupported status file format line: {l:?}")),
        None => return Err("empty status file".into()),
    }
    let mut top = Fields::new();
    let mut reps: BTreeMap<usize, Fields> = BTreeMap::new();
    for (i, line) in lines.enumerate() {
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: no '=' in {line:?}", i + 2))?;
        let dup = if let Some(rest) = key.strip_prefix("replica.") {
            let Some((idx, field)) = rest.split_once('.') else {
                continue; // unknown key shape: ignore, like any unknown key
            };
            let idx: usize = num(idx, key)?;
            reps.entry(idx)
                .or_default()
                .insert(field.to_string(), value.to_string())
                .is_some()
        } else {
            top.insert(key.to_string(), value.to_string()).is_some()
        };
        if dup {
            return Err(format!("duplicate key {key}"));
        }
    }
    Ok((top, reps))
}

/// Step 2 of [`parse`]: one replica from its keys (`pre` is its `replica.N.` prefix, for the
/// error wording).
fn parse_replica(index: usize, f: &Fields) -> Result<ReplicaSnapshot, String> {
    let pre = format!("replica.{index}.");
    let key = |k: &str| format!("{pre}{k}");
    let word = |k: &str| take(f, k, &pre);
    let count = |k: &str| -> Result<u64, String> { num(word(k)?, &key(k)) };
    let low_priority = choose(
        &key("priority"),
        word("priority")?,
        &[("normal", false), ("low", true)],
    )?;
    let state = choose(
        &key("state"),
        word("state")?,
        &[
            ("in-service", ReplicaState::InService),
            ("out-of-service", ReplicaState::OutOfService),
        ],
    )?;
    let stale = choose(
        &key("stale"),
        word("stale")?,
        &[("yes", true), ("no", false)],
    )?;
    Ok(ReplicaSnapshot {
        index,
        path: word("path")?.to_string(),
        low_priority,
        state,
        reason: word("reason")?.to_string(),
        since: count("since")?,
        stale,
        reads: count("reads")?,
        writes: count("writes")?,
        errors: count("errors")?,
        resync: match f.get("resync") {
            None => None,
            Some(state) => Some(parse_resync(state, f, &pre)?),
        },
        membership: f.get("membership").cloned(),
    })
}

/// Step 3 of [`parse`]: a replica's resync progress, present when its `resync` key is. Absent
/// numbers read 0 and absent texts empty (older files); an empty total or ETA means unknown.
fn parse_resync(state: &str, f: &Fields, pre: &str) -> Result<ResyncProgress, String> {
    let key = |k: &str| format!("{pre}{k}");
    let n = |k: &str| -> Result<u64, String> { f.get(k).map_or(Ok(0), |v| num(v, &key(k))) };
    let text = |k: &str| f.get(k).cloned().unwrap_or_default();
    let opt = |k: &str| -> Result<Option<u64>, String> {
        match f.get(k).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(v) => num(v, &key(k)).map(Some),
        }
    };
    Ok(ResyncProgress {
        state: state.to_string(),
        phase: text("resync_phase"),
        source: n("resync_source")? as usize,
        files: n("resync_files")?,
        bytes: n("resync_bytes")?,
        checked: n("resync_checked")?,
        seconds: n("resync_seconds")?,
        error: text("resync_error"),
        total: opt("resync_total")?,
        done: n("resync_done")?,
        bytes_per_sec: n("resync_bytes_per_sec")?,
        entries_per_sec: n("resync_entries_per_sec")?,
        eta: opt("resync_eta")?,
        rate_limit: n("resync_rate_limit")?,
    })
}

/// Parses a status file back into a snapshot (the inverse of [`render`] for sanitized
/// values), so `chironctl check --status-file` and tests need no second reader. Unknown keys
/// are ignored (later versions may add some); missing or malformed ones are errors.
pub fn parse(text: &str) -> Result<Snapshot, String> {
    let (top, reps) = split_keys(text)?;
    let pid = num(take(&top, "pid", "")?, "pid")?;
    let mountpoint = take(&top, "mountpoint", "")?.to_string();
    let time = num(take(&top, "time", "")?, "time")?;
    let state = choose(
        "state",
        take(&top, "state", "")?,
        &[
            ("ok", Overall::Ok),
            ("degraded", Overall::Degraded),
            ("failed", Overall::Failed),
        ],
    )?;
    let count: usize = num(take(&top, "replicas", "")?, "replicas")?;
    if reps.len() != count || reps.keys().enumerate().any(|(pos, idx)| pos != *idx) {
        return Err(format!(
            "replicas={count} but the file describes replica indices {:?}",
            reps.keys().collect::<Vec<_>>()
        ));
    }
    let replicas = reps
        .iter()
        .map(|(&index, f)| parse_replica(index, f))
        .collect::<Result<Vec<_>, _>>()?;
    let quorum = match top.get("quorum") {
        None => None,
        Some(v) => Some(num(v, "quorum")?),
    };
    let lease = top
        .get("lease_state")
        .map(|state| match top.get("lease_reason") {
            Some(reason) => format!("{state}: {reason}"),
            None => state.clone(),
        });
    let witnesses = match top.get("witnesses_answering") {
        None => None,
        Some(v) => Some(num(v, "witnesses_answering")?),
    };
    let lease_epoch = match top.get("lease_epoch") {
        None => 0,
        Some(v) => num(v, "lease_epoch")?,
    };
    Ok(Snapshot {
        pid,
        mountpoint,
        time,
        state,
        replicas,
        quorum,
        lease,
        lease_epoch,
        witnesses,
        nodes: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::fixtures::sample;

    #[test]
    fn render_is_exact() {
        let text = render(&sample());
        let expected = "\
format=chironfs-status 1
pid=4242
mountpoint=/mnt/data
time=1700000200
state=degraded
replicas=2
check=warning
check_reason=1/2 replicas in service; out of service: /srv/b=c (write failed: Input/output error (os error 5); stale, needs a resync)
replica.0.path=/srv/a dir
replica.0.priority=normal
replica.0.state=in-service
replica.0.stale=no
replica.0.reason=
replica.0.since=1700000000
replica.0.reads=12
replica.0.writes=34
replica.0.errors=0
replica.1.path=/srv/b=c
replica.1.priority=low
replica.1.state=out-of-service
replica.1.stale=yes
replica.1.reason=write failed: Input/output error (os error 5)
replica.1.since=1700000100
replica.1.reads=0
replica.1.writes=30
replica.1.errors=4
";
        assert_eq!(text, expected);
    }

    #[test]
    fn lease_is_rendered_and_parsed_back() {
        let mut s = sample();
        s.lease = Some("fenced: not renewed on a majority".into());
        s.lease_epoch = 4;
        let text = render(&s);
        assert!(
            text.contains(
                "\nlease_state=fenced\nlease_epoch=4\nlease_reason=not renewed on a majority\n"
            ),
            "{text}"
        );
        assert_eq!(parse(&text).unwrap(), s);
        s.lease = Some("held".into());
        assert_eq!(parse(&render(&s)).unwrap(), s);
    }

    #[test]
    fn a_membership_change_is_rendered_and_parsed_back() {
        let mut s = sample();
        s.replicas[1].membership = Some("leaving: replaced by /srv/c".into());
        let text = render(&s);
        assert!(
            text.contains("\nreplica.1.membership=leaving: replaced by /srv/c\n"),
            "{text}"
        );
        assert_eq!(parse(&text).unwrap(), s);
        // Absent: no change (and older files).
        assert!(!render(&sample()).contains("membership"));
    }

    #[test]
    fn quorum_is_rendered_and_parsed_back() {
        let mut s = sample();
        s.quorum = Some(2);
        let text = render(&s);
        assert!(text.contains("\nquorum=2\nquorum_state=lost\n"), "{text}");
        assert_eq!(parse(&text).unwrap(), s);
        s.quorum = Some(1);
        assert!(render(&s).contains("\nquorum=1\nquorum_state=met\n"));
        // Absent: no quorum (and older files).
        assert_eq!(parse(&render(&sample())).unwrap().quorum, None);
    }

    #[test]
    fn round_trip() {
        let s = sample();
        assert_eq!(parse(&render(&s)).unwrap(), s);
        let empty = Snapshot {
            replicas: vec![],
            state: Overall::Failed,
            ..sample()
        };
        assert_eq!(parse(&render(&empty)).unwrap(), empty);
        // A replica being resynced: its progress lines are written and read back.
        let mut resyncing = sample();
        resyncing.replicas[1].resync = Some(ResyncProgress {
            state: "failed".into(),
            phase: String::new(),
            source: 0,
            files: 12,
            bytes: 3456,
            checked: 78,
            seconds: 9,
            error: "/big on target /srv/b: ENOSPC".into(),
            ..Default::default()
        });
        let text = render(&resyncing);
        assert!(text.contains("replica.1.resync=failed\n"), "{text}");
        assert!(
            text.contains("replica.1.resync_eta=\n"),
            "unknown is empty: {text}"
        );
        assert_eq!(parse(&text).unwrap(), resyncing);
        // Running, with a total, rates and an ETA.
        resyncing.replicas[1].resync = Some(ResyncProgress {
            state: "running".into(),
            phase: "copying".into(),
            total: Some(500),
            done: 120,
            bytes_per_sec: 2 << 20,
            entries_per_sec: 40,
            eta: Some(10),
            rate_limit: 4 << 20,
            ..Default::default()
        });
        let text = render(&resyncing);
        for line in [
            "replica.1.resync_total=500\n",
            "replica.1.resync_eta=10\n",
            "replica.1.resync_bytes_per_sec=2097152\n",
            "replica.1.resync_rate_limit=4194304\n",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
        assert_eq!(parse(&text).unwrap(), resyncing);
    }

    #[test]
    fn parse_ignores_unknown_keys_and_rejects_bad_input() {
        let mut text = render(&sample());
        text.push_str("future.key=1\nreplica.0.future=x\n");
        assert_eq!(parse(&text).unwrap(), sample());

        assert!(parse("").is_err());
        assert!(parse("format=chironfs-status 2\n").is_err());
        let no_pid = render(&sample()).replace("pid=4242\n", "");
        assert!(parse(&no_pid).unwrap_err().contains("pid"));
        let dup = format!("{}pid=1\n", render(&sample()));
        assert!(parse(&dup).unwrap_err().contains("duplicate"));
        let bad_count = render(&sample()).replace("replicas=2", "replicas=3");
        assert!(parse(&bad_count).is_err());
        let bad_state =
            render(&sample()).replace("replica.1.state=out-of-service", "replica.1.state=gone");
        assert!(parse(&bad_state).unwrap_err().contains("replica.1.state"));
        let bad_num = render(&sample()).replace("replica.0.reads=12", "replica.0.reads=-1");
        assert!(parse(&bad_num).is_err());
    }

    #[test]
    fn sanitizing_keeps_one_entry_per_line() {
        let mut s = sample();
        s.mountpoint = "/mnt/evil\nstate=ok".into();
        s.replicas[1].path = "/srv/x\r\nreplica.1.state=in-service".into();
        s.replicas[1].reason = "line one\nline two\n".into();
        let text = render(&s);
        // Every line is a key=value pair and no injected key appears.
        assert_eq!(text.lines().count(), 8 + 9 * 2);
        let starting = |k: &str| text.lines().filter(|l| l.starts_with(k)).count();
        assert_eq!(starting("check_reason="), 1);
        assert_eq!(starting("state="), 1);
        assert_eq!(starting("replica.1.state="), 1);
        let back = parse(&text).unwrap();
        assert_eq!(back.mountpoint, "/mnt/evil state=ok");
        assert_eq!(back.replicas[1].path, "/srv/x  replica.1.state=in-service");
        assert_eq!(back.replicas[1].reason, "line one line two");
        assert_eq!(back.replicas[1].state, ReplicaState::OutOfService);
    }
}
