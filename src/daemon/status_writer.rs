//! The thread that keeps the status file fresh, and the node_exporter textfile of the metrics
//! next to it, and the atomic replace it writes both with: the daemon side of
//! `view::status_file`, whose format it renders. Imports only `view/` (snapshot,
//! status_file).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::view::snapshot::ControlHandler;
use crate::view::status_file::render;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The directory `path` is in (`.` for a bare name).
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

/// Writes the status file once from a fresh snapshot: at start-up, before the mount answers,
/// and then every period from the writer thread.
pub fn write_now(path: &Path, source: &dyn ControlHandler) -> io::Result<()> {
    write_atomic(path, &render(&source.snapshot()))
}

/// Writes the metrics textfile once (`ControlHandler::metrics`, the Prometheus text format).
pub fn write_metrics(path: &Path, source: &dyn ControlHandler) -> io::Result<()> {
    let text = source.metrics().map_err(io::Error::other)?;
    write_atomic(path, &text)
}

/// The files the writer thread keeps fresh.
pub struct Files {
    /// The status file.
    pub status: PathBuf,
    /// The metrics textfile for node_exporter (None: not written).
    pub metrics: Option<PathBuf>,
}

/// Starts the thread that keeps the status file (and the metrics textfile) fresh: it writes
/// at once, then every `period`, until `stop` is set, and then removes the files (a missing
/// file tells monitors the daemon is gone). A failing write is logged once per distinct
/// error, not every period, so a full disk does not flood the log.
pub fn spawn_writer(
    files: Files,
    source: Arc<dyn ControlHandler>,
    period: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    thread::Builder::new()
        .name("chironfs-status".into())
        .spawn(move || writer_loop(&files, source.as_ref(), period, &stop))
        .expect("cannot start the status-file thread")
}

/// One file the writer keeps, with the last error logged for it.
struct Kept<'a> {
    path: &'a Path,
    what: &'static str,
    write: fn(&Path, &dyn ControlHandler) -> io::Result<()>,
    last_error: Option<String>,
}

impl Kept<'_> {
    fn refresh(&mut self, source: &dyn ControlHandler) {
        match (self.write)(self.path, source) {
            Ok(()) => {
                if self.last_error.take().is_some() {
                    log::info!(
                        "{} {} is being written again",
                        self.what,
                        self.path.display()
                    );
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_error.as_deref() != Some(msg.as_str()) {
                    log::error!("cannot write {} {}: {msg}", self.what, self.path.display());
                    self.last_error = Some(msg);
                }
            }
        }
    }

    fn remove(&self) {
        match fs::remove_file(self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot remove {} {}: {e}", self.what, self.path.display()),
        }
    }
}

/// The body of [`spawn_writer`]'s thread.
fn writer_loop(files: &Files, source: &dyn ControlHandler, period: Duration, stop: &AtomicBool) {
    let slice = period
        .min(Duration::from_millis(100))
        .max(Duration::from_millis(1));
    let mut kept = vec![Kept {
        path: &files.status,
        what: "status file",
        write: write_now,
        last_error: None,
    }];
    if let Some(path) = &files.metrics {
        kept.push(Kept {
            path,
            what: "metrics file",
            write: write_metrics,
            last_error: None,
        });
    }
    while !stop.load(Ordering::SeqCst) {
        for k in &mut kept {
            k.refresh(source);
        }
        let mut waited = Duration::ZERO;
        while waited < period && !stop.load(Ordering::SeqCst) {
            thread::sleep(slice);
            waited += slice;
        }
    }
    for k in &kept {
        k.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::fixtures::sample;
    use crate::view::snapshot::Snapshot;
    use crate::view::status_file::parse;
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
        fn metrics(&self) -> Result<String, String> {
            Ok(format!("t {}\n", self.0.lock().unwrap().time))
        }
    }

    #[test]
    fn writer_refreshes_and_removes_file_on_stop() {
        let d = tempdir("writer");
        let p = d.join("run/status");
        let prom = d.join("run/status.prom");
        let src = Arc::new(Fixed(Mutex::new(sample())));
        let stop = Arc::new(AtomicBool::new(false));
        let files = Files {
            status: p.clone(),
            metrics: Some(prom.clone()),
        };
        let h = spawn_writer(files, src.clone(), Duration::from_millis(20), stop.clone());
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
        let t = sample().time + 5;
        assert!(wait_for(
            &|| fs::read_to_string(&prom).is_ok_and(|m| m == format!("t {t}\n"))
        ));
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
        assert!(!p.exists());
        assert!(!prom.exists());
        assert!(dir_entries(&d.join("run")).is_empty());
        fs::remove_dir_all(&d).unwrap();
    }
}
