//! The status file: a small `key=value` text file the daemon rewrites every second, so that
//! monitors that cannot (or must not) talk to the root-only control socket — the OCF resource
//! agent in POSIX shell, Nagios plugins run as an unprivileged user — can read the replica
//! state with `grep`/`sed`, and can tell a dead daemon from a live one by its age.
//!
//! The format is documented in `docs/status-file.md`; [`render`] and [`parse`] are its only
//! writer and reader in Rust.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::view::snapshot::{ControlHandler, Overall, ReplicaSnapshot, ReplicaState, Snapshot};

/// Value of the first line; a reader that sees another value must not guess.
pub const FORMAT_LINE: &str = "format=chironfs-status 1";

/// Makes a value safe for a one-line `key=value` entry: every control character (newline,
/// carriage return, tab, NUL, ...) becomes a space, so a hostile or odd path or error text can
/// neither inject keys nor break a line-oriented shell parser.
pub fn sanitize_value(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

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
    // The Nagios verdict and its reason, so a shell monitor needs no logic of its own.
    let (check, reason) = crate::control::check_summary(s);
    let _ = writeln!(out, "check={}", check.label().to_ascii_lowercase());
    let _ = writeln!(out, "check_reason={}", sanitize_value(&reason));
    for r in &s.replicas {
        let n = r.index;
        let _ = writeln!(out, "replica.{n}.path={}", sanitize_value(&r.path));
        let prio = if r.low_priority { "low" } else { "normal" };
        let _ = writeln!(out, "replica.{n}.priority={prio}");
        let _ = writeln!(out, "replica.{n}.state={}", r.state.as_str());
        let _ = writeln!(out, "replica.{n}.stale={}", yes_no(r.stale));
        let _ = writeln!(
            out,
            "replica.{n}.reason={}",
            sanitize_value(r.reason.trim())
        );
        let _ = writeln!(out, "replica.{n}.since={}", r.since);
        let _ = writeln!(out, "replica.{n}.reads={}", r.reads);
        let _ = writeln!(out, "replica.{n}.writes={}", r.writes);
        let _ = writeln!(out, "replica.{n}.errors={}", r.errors);
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

#[derive(Default)]
struct PartialReplica {
    fields: BTreeMap<String, String>,
}

fn take<'a>(map: &'a BTreeMap<String, String>, key: &str, what: &str) -> Result<&'a str, String> {
    map.get(key)
        .map(String::as_str)
        .ok_or_else(|| format!("missing key {what}{key}"))
}

fn num<T: std::str::FromStr>(v: &str, key: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{key}={v}: not a non-negative integer"))
}

/// Parses a status file back into a snapshot (the inverse of [`render`] for sanitized
/// values), so `chironctl check --status-file` and tests need no second reader. Unknown keys
/// are ignored (later versions may add some); missing or malformed ones are errors.
pub fn parse(text: &str) -> Result<Snapshot, String> {
    let mut lines = text.lines();
    match lines.next() {
        Some(l) if l == FORMAT_LINE => {}
        Some(l) => return Err(format!("unsupported status file format line: {l:?}")),
        None => return Err("empty status file".into()),
    }
    let mut top: BTreeMap<String, String> = BTreeMap::new();
    let mut reps: BTreeMap<usize, PartialReplica> = BTreeMap::new();
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
                .fields
                .insert(field.to_string(), value.to_string())
                .is_some()
        } else {
            top.insert(key.to_string(), value.to_string()).is_some()
        };
        if dup {
            return Err(format!("duplicate key {key}"));
        }
    }

    let pid = num(take(&top, "pid", "")?, "pid")?;
    let mountpoint = take(&top, "mountpoint", "")?.to_string();
    let time = num(take(&top, "time", "")?, "time")?;
    let state = match take(&top, "state", "")? {
        "ok" => Overall::Ok,
        "degraded" => Overall::Degraded,
        "failed" => Overall::Failed,
        other => return Err(format!("state={other}: expected ok, degraded or failed")),
    };
    let count: usize = num(take(&top, "replicas", "")?, "replicas")?;
    if reps.len() != count || reps.keys().enumerate().any(|(pos, idx)| pos != *idx) {
        return Err(format!(
            "replicas={count} but the file describes replica indices {:?}",
            reps.keys().collect::<Vec<_>>()
        ));
    }
    let mut replicas = Vec::with_capacity(count);
    for (index, p) in reps {
        let f = &p.fields;
        let pre = format!("replica.{index}.");
        let key = |k: &str| format!("{pre}{k}");
        let low_priority = match take(f, "priority", &pre)? {
            "normal" => false,
            "low" => true,
            other => {
                return Err(format!(
                    "{}={other}: expected normal or low",
                    key("priority")
                ));
            }
        };
        let state = match take(f, "state", &pre)? {
            "in-service" => ReplicaState::InService,
            "out-of-service" => ReplicaState::OutOfService,
            other => {
                return Err(format!(
                    "{}={other}: expected in-service or out-of-service",
                    key("state")
                ));
            }
        };
        let stale = match take(f, "stale", &pre)? {
            "yes" => true,
            "no" => false,
            other => return Err(format!("{}={other}: expected yes or no", key("stale"))),
        };
        replicas.push(ReplicaSnapshot {
            index,
            path: take(f, "path", &pre)?.to_string(),
            low_priority,
            state,
            reason: take(f, "reason", &pre)?.to_string(),
            since: num(take(f, "since", &pre)?, &key("since"))?,
            stale,
            reads: num(take(f, "reads", &pre)?, &key("reads"))?,
            writes: num(take(f, "writes", &pre)?, &key("writes"))?,
            errors: num(take(f, "errors", &pre)?, &key("errors"))?,
            resync: match f.get("resync") {
                None => None,
                Some(state) => {
                    let n = |k: &str| -> Result<u64, String> {
                        f.get(k).map_or(Ok(0), |v| num(v, &key(k)))
                    };
                    let text = |k: &str| f.get(k).cloned().unwrap_or_default();
                    // Empty (or absent) means unknown.
                    let opt = |k: &str| -> Result<Option<u64>, String> {
                        match f.get(k).map(String::as_str) {
                            None | Some("") => Ok(None),
                            Some(v) => num(v, &key(k)).map(Some),
                        }
                    };
                    Some(crate::view::snapshot::ResyncProgress {
                        state: state.clone(),
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
            },
        });
    }
    let quorum = match top.get("quorum") {
        None => None,
        Some(v) => Some(num(v, "quorum")?),
    };
    Ok(Snapshot {
        pid,
        mountpoint,
        time,
        state,
        replicas,
        quorum,
    })
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replaces `path` with `contents` so that a reader sees either the old or the new file, never
/// a half-written one, and the new one survives a crash: temp file in the same directory,
/// fsync, rename over, fsync the directory. Creates a missing parent directory (0755); the
/// file is mode 0644 so unprivileged monitors can read it.
pub fn write_atomic(path: &Path, contents: &str) -> io::Result<()> {
    let dir = parent_dir(path);
    if !dir.is_dir() {
        DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    }
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "status file path has no file name",
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        // The umask may have removed read bits that monitors need.
        f.set_permissions(fs::Permissions::from_mode(0o644))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()
}

/// Starts the thread that keeps the status file fresh: it writes at once, then every
/// `period`, until `stop` is set, and then removes the file (a missing file tells monitors the
/// daemon is gone). A failing write is logged once per distinct error, not every period, so a
/// full disk does not flood the log.
pub fn spawn_writer(
    path: PathBuf,
    source: Arc<dyn ControlHandler>,
    period: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    thread::Builder::new()
        .name("chironfs-status".into())
        .spawn(move || writer_loop(&path, source.as_ref(), period, &stop))
        .expect("cannot start the status-file thread")
}

fn writer_loop(path: &Path, source: &dyn ControlHandler, period: Duration, stop: &AtomicBool) {
    let slice = period
        .min(Duration::from_millis(100))
        .max(Duration::from_millis(1));
    let mut last_error: Option<String> = None;
    while !stop.load(Ordering::SeqCst) {
        match write_atomic(path, &render(&source.snapshot())) {
            Ok(()) => {
                if last_error.take().is_some() {
                    log::info!("status file {} is being written again", path.display());
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    log::error!("cannot write status file {}: {msg}", path.display());
                    last_error = Some(msg);
                }
            }
        }
        let mut waited = Duration::ZERO;
        while waited < period && !stop.load(Ordering::SeqCst) {
            thread::sleep(slice);
            waited += slice;
        }
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cannot remove status file {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn tempdir(tag: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "chironfs-sf-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn sample() -> Snapshot {
        let replicas = vec![
            ReplicaSnapshot {
                index: 0,
                path: "/srv/a dir".into(),
                low_priority: false,
                state: ReplicaState::InService,
                reason: String::new(),
                since: 1_700_000_000,
                stale: false,
                reads: 12,
                writes: 34,
                errors: 0,
                resync: None,
            },
            ReplicaSnapshot {
                index: 1,
                path: "/srv/b=c".into(),
                low_priority: true,
                state: ReplicaState::OutOfService,
                reason: "write failed: Input/output error (os error 5)".into(),
                since: 1_700_000_100,
                stale: true,
                reads: 0,
                writes: 30,
                errors: 4,
                resync: None,
            },
        ];
        Snapshot {
            pid: 4242,
            mountpoint: "/mnt/data".into(),
            time: 1_700_000_200,
            state: Snapshot::overall_of(&replicas),
            replicas,
            quorum: None,
        }
    }

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
        resyncing.replicas[1].resync = Some(crate::view::snapshot::ResyncProgress {
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
        resyncing.replicas[1].resync = Some(crate::view::snapshot::ResyncProgress {
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
        assert_eq!(sanitize_value("a\tb\0c"), "a b c");
    }

    fn dir_entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp_file() {
        let d = tempdir("atomic");
        let p = d.join("sub/dir/status");
        write_atomic(&p, "one\n").unwrap();
        write_atomic(&p, "two\n").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "two\n");
        assert_eq!(dir_entries(&d.join("sub/dir")), vec!["status"]);
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let dmode = fs::metadata(d.join("sub")).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode & 0o755, dmode, "parent created no wider than 0755");

        // A failing rename (target is a non-empty directory) must not leave the temp file.
        let blocker = d.join("blocked");
        fs::create_dir(&blocker).unwrap();
        fs::write(blocker.join("x"), "x").unwrap();
        assert!(write_atomic(&blocker, "data").is_err());
        assert_eq!(dir_entries(&d), vec!["blocked", "sub"]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn concurrent_reader_never_sees_partial_file() {
        let d = tempdir("reader");
        let p = d.join("status");
        let big = render(&sample()).repeat(200);
        write_atomic(&p, &big).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (p, big, stop) = (p.clone(), big.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    assert_eq!(fs::read_to_string(&p).unwrap(), big);
                }
            })
        };
        for _ in 0..50 {
            write_atomic(&p, &big).unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        reader.join().unwrap();
        assert_eq!(dir_entries(&d), vec!["status"]);
        fs::remove_dir_all(&d).unwrap();
    }

    struct Fixed(Mutex<Snapshot>);
    impl ControlHandler for Fixed {
        fn snapshot(&self) -> Snapshot {
            self.0.lock().unwrap().clone()
        }
        fn enable(&self, _: &str, _: bool) -> Result<String, String> {
            Err("no".into())
        }
        fn disable(&self, _: &str) -> Result<String, String> {
            Err("no".into())
        }
    }

    #[test]
    fn writer_refreshes_and_removes_file_on_stop() {
        let d = tempdir("writer");
        let p = d.join("run/status");
        let src = Arc::new(Fixed(Mutex::new(sample())));
        let stop = Arc::new(AtomicBool::new(false));
        let h = spawn_writer(
            p.clone(),
            src.clone(),
            Duration::from_millis(20),
            stop.clone(),
        );
        let wait_for = |pred: &dyn Fn() -> bool| {
            for _ in 0..500 {
                if pred() {
                    return true;
                }
                thread::sleep(Duration::from_millis(10));
            }
            false
        };
        assert!(wait_for(&|| fs::read_to_string(&p).is_ok_and(|t| parse(
            &t
        ) == Ok(
            sample()
        ))));
        src.0.lock().unwrap().time += 5;
        let mut want = sample();
        want.time += 5;
        assert!(wait_for(&|| fs::read_to_string(&p).is_ok_and(|t| parse(
            &t
        ) == Ok(
            want.clone()
        ))));
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
        assert!(!p.exists());
        assert!(dir_entries(&d.join("run")).is_empty());
        fs::remove_dir_all(&d).unwrap();
    }
}
