//! The daemon's end of the control socket: binding it (refusing to steal a live one), checking
//! each client's credentials, serving each client on its own thread, and carrying requests out
//! through the [`ControlHandler`]. Imports `control::protocol`, the connect of
//! `control::client` (to tell a live socket from a stale one) and `view::snapshot`.

use std::collections::HashMap;
use std::fs::{self, DirBuilder};
use std::io::{self, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::control::client::{connect_with_timeout, poll_one};
use crate::control::protocol::{
    MAX_REQUEST_LINE, Request, Response, encode_line, read_line_limited,
};
use crate::view::snapshot::ControlHandler;

/// How long the server waits for a client to send a request (or to read a response) before
/// dropping it, so a silent client cannot hold a thread and a descriptor forever.
pub const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Clients served at once; more are answered with an error and closed, so a flood of
/// connections cannot exhaust the daemon's threads or descriptors.
pub const MAX_CLIENTS: usize = 32;
/// How often the accept loop looks at its stop flags.
const ACCEPT_POLL: Duration = Duration::from_millis(200);

/// Carries out one request against the daemon; the single place where requests meet the
/// [`ControlHandler`].
pub fn dispatch(handler: &dyn ControlHandler, req: Request) -> Response {
    let answer = |r: Result<String, String>| match r {
        Ok(m) => Response::with_message(m),
        Err(e) => Response::with_error(e),
    };
    match req {
        Request::Status | Request::Stats => Response::with_snapshot(handler.snapshot()),
        Request::Enable { replica, force } => answer(handler.enable(&replica, force)),
        Request::Disable { replica } => answer(handler.disable(&replica)),
        Request::Resync { replica, rate } => answer(handler.resync(&replica, rate)),
        Request::Verify {
            replica,
            content,
            queue,
        } => match handler.verify(replica.as_deref(), content, queue) {
            Ok(r) => Response::with_verify(r),
            Err(e) => Response::with_error(e),
        },
    }
}

/// A running control-socket server. Dropping it (or [`ControlServer::shutdown`]) stops
/// accepting, disconnects clients and unlinks the socket file, so a clean exit leaves nothing
/// behind that a later daemon would have to clean up.
pub struct ControlServer {
    path: PathBuf,
    /// Device and inode of the socket we bound: we unlink only our own socket.
    ident: (u64, u64),
    quit: Arc<AtomicBool>,
    clients: Arc<Mutex<HashMap<u64, UnixStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Path of the socket being served.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Clients connected right now; lets tests (and debugging) check that descriptors are
    /// released when clients leave.
    pub fn active_clients(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Stops accepting, disconnects current clients and removes the socket file.
    pub fn shutdown(self) {
        drop(self);
    }

    fn stop_now(&mut self) {
        self.quit.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(clients) = self.clients.lock() {
            for s in clients.values() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        if let Ok(md) = fs::symlink_metadata(&self.path)
            && (md.dev(), md.ino()) == self.ident
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// `e` with what was being done in front of its text, keeping its kind.
fn with_context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Makes sure no other daemon owns `path`: a live socket is an error, a stale one (nobody
/// listening, left by a crash) is removed, anything else is refused rather than deleted.
fn clear_stale_socket(path: &Path) -> io::Result<()> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(with_context(
                e,
                format!("cannot examine {}", path.display()),
            ));
        }
    };
    if !md.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        ));
    }
    let in_use = || {
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another chironfs is already serving {}", path.display()),
        ))
    };
    match connect_with_timeout(path, Duration::from_secs(1)) {
        Ok(_) => in_use(),
        // Backlog full: somebody is listening.
        Err(e) if e.kind() == io::ErrorKind::TimedOut => in_use(),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("removing stale control socket {}", path.display());
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(with_context(
                    e,
                    format!("cannot remove stale socket {}", path.display()),
                )),
                _ => Ok(()),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(with_context(
            e,
            format!("cannot tell whether {} is in use", path.display()),
        )),
    }
}

/// Starts serving the control socket at `path`: creates the parent directory (0755) if
/// missing, refuses to steal a live socket, replaces a stale one, binds with mode 0600 and
/// serves each client on its own thread until `stop` is set or the server is shut down.
/// Setting `stop` only stops accepting; the socket file is removed when the returned
/// [`ControlServer`] is shut down or dropped.
pub fn spawn_server(
    path: &Path,
    handler: Arc<dyn ControlHandler>,
    stop: Arc<AtomicBool>,
) -> io::Result<ControlServer> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| with_context(e, format!("cannot create {}", dir.display())))?;
    }
    clear_stale_socket(path)?;
    let listener = UnixListener::bind(path)
        .map_err(|e| with_context(e, format!("cannot bind control socket {}", path.display())))?;
    let setup = (|| {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let md = fs::symlink_metadata(path)?;
        Ok::<_, io::Error>((md.dev(), md.ino()))
    })();
    let ident = match setup {
        Ok(i) => i,
        Err(e) => {
            let _ = fs::remove_file(path);
            return Err(with_context(
                e,
                format!("cannot set up control socket {}", path.display()),
            ));
        }
    };
    let quit = Arc::new(AtomicBool::new(false));
    let clients: Arc<Mutex<HashMap<u64, UnixStream>>> = Arc::default();
    let thread = {
        let (quit, clients) = (quit.clone(), clients.clone());
        thread::Builder::new()
            .name("chironfs-ctl".into())
            .spawn(move || accept_loop(listener, handler, stop, quit, clients))
    };
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            let _ = fs::remove_file(path);
            return Err(with_context(e, "cannot start the control thread".into()));
        }
    };
    Ok(ControlServer {
        path: path.to_path_buf(),
        ident,
        quit,
        clients,
        thread: Some(thread),
    })
}

/// The body of the server thread: accepts clients until `stop` or `quit` is set, backing off
/// (and logging once) when accept fails.
fn accept_loop(
    listener: UnixListener,
    handler: Arc<dyn ControlHandler>,
    stop: Arc<AtomicBool>,
    quit: Arc<AtomicBool>,
    clients: Arc<Mutex<HashMap<u64, UnixStream>>>,
) {
    let next_id = AtomicU64::new(0);
    let mut last_error: Option<String> = None;
    let our_uid = nix::unistd::geteuid().as_raw();
    while !stop.load(Ordering::SeqCst) && !quit.load(Ordering::SeqCst) {
        match poll_one(listener.as_raw_fd(), libc::POLLIN, ACCEPT_POLL) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                log::error!("control socket poll failed: {e}");
                thread::sleep(ACCEPT_POLL);
                continue;
            }
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and friends: log once, back off instead of spinning.
                let msg = e.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    log::error!("control socket accept failed: {msg}");
                    last_error = Some(msg);
                }
                thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        last_error = None;
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = start_client(id, stream, &handler, &clients, &quit, our_uid) {
            log::warn!("control socket: cannot serve a client: {e}");
        }
    }
}

/// Registers a new client and serves it on its own thread, or answers "too many" when
/// [`MAX_CLIENTS`] are being served.
fn start_client(
    id: u64,
    stream: UnixStream,
    handler: &Arc<dyn ControlHandler>,
    clients: &Arc<Mutex<HashMap<u64, UnixStream>>>,
    quit: &Arc<AtomicBool>,
    our_uid: u32,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(SERVER_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(SERVER_IO_TIMEOUT))?;
    {
        let mut map = clients
            .lock()
            .map_err(|_| io::Error::other("client table poisoned"))?;
        if map.len() >= MAX_CLIENTS {
            drop(map);
            let _ = send(
                &stream,
                &Response::with_error("too many control clients; try again"),
            );
            return Ok(());
        }
        map.insert(id, stream.try_clone()?);
    }
    let (handler, clients2, quit) = (handler.clone(), clients.clone(), quit.clone());
    let spawned = thread::Builder::new()
        .name("chironfs-ctl-client".into())
        .spawn(move || {
            serve_client(&stream, handler.as_ref(), &quit, our_uid);
            // Drops our clone: both descriptors of this client are closed now.
            if let Ok(mut map) = clients2.lock() {
                map.remove(&id);
            }
        });
    if let Err(e) = spawned {
        if let Ok(mut map) = clients.lock() {
            map.remove(&id);
        }
        return Err(e);
    }
    Ok(())
}

/// Writes one response line to a client.
fn send(mut stream: &UnixStream, resp: &Response) -> io::Result<()> {
    stream.write_all(&encode_line(resp).map_err(io::Error::other)?)?;
    stream.flush()
}

/// Refuses anyone but root and the daemon's own user: the socket can take replicas out of
/// service. Mode 0600 already says so; this also covers the moment between bind and chmod.
fn peer_allowed(stream: &UnixStream, our_uid: u32) -> Result<(), String> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    match getsockopt(stream, PeerCredentials) {
        Ok(c) if c.uid() == 0 || c.uid() == our_uid => Ok(()),
        Ok(c) => Err(format!(
            "permission denied: uid {} (pid {}) may not use the chironfs control socket",
            c.uid(),
            c.pid()
        )),
        Err(e) => Err(format!("cannot check the peer's credentials: {e}")),
    }
}

/// One client's thread: checks its credentials, then answers its request lines one by one
/// until it leaves, stays silent too long or sends garbage.
fn serve_client(
    stream: &UnixStream,
    handler: &dyn ControlHandler,
    quit: &AtomicBool,
    our_uid: u32,
) {
    if let Err(e) = peer_allowed(stream, our_uid) {
        log::warn!("control socket: {e}");
        let _ = send(stream, &Response::with_error(e));
        return;
    }
    let mut reader = BufReader::new(stream);
    while !quit.load(Ordering::SeqCst) {
        let line = match read_line_limited(&mut reader, MAX_REQUEST_LINE) {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                log::debug!("control socket: idle client dropped");
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let _ = send(stream, &Response::with_error(format!("bad request: {e}")));
                return;
            }
            Err(e) => {
                log::debug!("control socket: client read failed: {e}");
                return;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let resp = match serde_json::from_slice::<Request>(&line) {
            Ok(req) => {
                log::debug!("control request: {req:?}");
                dispatch(handler, req)
            }
            Err(e) => Response::with_error(format!("bad request: {e}")),
        };
        if let Err(e) = send(stream, &resp) {
            log::debug!("control socket: cannot answer a client: {e}");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::client::{ClientError, request, request_with_timeout};
    use crate::control::testing::tempdir;
    use crate::view::snapshot::{ReplicaSnapshot, ReplicaState, Snapshot};
    use std::io::{BufRead, Read};
    use std::os::unix::net::UnixListener as StdListener;
    use std::time::Instant;

    /// A stand-in for the daemon: replicas in a Mutex, enable/disable by index or path.
    struct TestHandler {
        replicas: Mutex<Vec<ReplicaSnapshot>>,
    }

    impl TestHandler {
        fn new() -> Arc<Self> {
            let r = |i: usize, p: &str| ReplicaSnapshot {
                index: i,
                path: p.into(),
                low_priority: false,
                state: ReplicaState::InService,
                reason: String::new(),
                since: 100,
                stale: false,
                reads: 0,
                writes: 0,
                errors: 0,
                resync: None,
            };
            Arc::new(TestHandler {
                replicas: Mutex::new(vec![r(0, "/srv/a"), r(1, "/srv/b")]),
            })
        }

        fn find(v: &[ReplicaSnapshot], which: &str) -> Result<usize, String> {
            v.iter()
                .position(|r| r.index.to_string() == which || r.path == which)
                .ok_or_else(|| format!("no replica {which}"))
        }
    }

    impl ControlHandler for TestHandler {
        fn snapshot(&self) -> Snapshot {
            let replicas = self.replicas.lock().unwrap().clone();
            Snapshot {
                pid: 7,
                mountpoint: "/mnt/t".into(),
                time: 200,
                state: Snapshot::overall_of(&replicas),
                replicas,
                quorum: None,
                lease: None,
                lease_epoch: 0,
                nodes: None,
            }
        }
        fn enable(&self, which: &str, force: bool) -> Result<String, String> {
            let mut v = self.replicas.lock().unwrap();
            let i = Self::find(&v, which)?;
            if v[i].stale && !force {
                return Err(format!("{} is stale; use --force", v[i].path));
            }
            v[i].state = ReplicaState::InService;
            v[i].stale = false;
            v[i].reason.clear();
            Ok(format!("{} enabled", v[i].path))
        }
        fn disable(&self, which: &str) -> Result<String, String> {
            let mut v = self.replicas.lock().unwrap();
            let i = Self::find(&v, which)?;
            v[i].state = ReplicaState::OutOfService;
            v[i].stale = true;
            v[i].reason = "disabled by admin".into();
            Ok(format!("{} disabled", v[i].path))
        }
    }

    fn server(tag: &str) -> (PathBuf, ControlServer, Arc<TestHandler>) {
        let d = tempdir(tag);
        let sock = d.join("run/t.sock");
        let h = TestHandler::new();
        let srv = spawn_server(&sock, h.clone(), Arc::new(AtomicBool::new(false))).unwrap();
        (d, srv, h)
    }

    fn wait_until(pred: impl Fn() -> bool) -> bool {
        for _ in 0..300 {
            if pred() {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn status_and_enable_disable_round_trip() {
        let (d, srv, _h) = server("rt");
        let sock = srv.path().to_path_buf();
        let mode = fs::symlink_metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let s = request(&sock, &Request::Status).unwrap().snapshot.unwrap();
        assert_eq!(s.replicas.len(), 2);
        assert_eq!(s.state, crate::view::snapshot::Overall::Ok);

        let r = request(
            &sock,
            &Request::Disable {
                replica: "/srv/b".into(),
            },
        )
        .unwrap();
        assert!(r.ok);
        assert_eq!(r.message.as_deref(), Some("/srv/b disabled"));
        let s = request(&sock, &Request::Stats).unwrap().snapshot.unwrap();
        assert_eq!(s.replicas[1].state, ReplicaState::OutOfService);
        assert_eq!(s.state, crate::view::snapshot::Overall::Degraded);

        let enable = |force| Request::Enable {
            replica: "1".into(),
            force,
        };
        let r = request(&sock, &enable(false)).unwrap();
        assert!(!r.ok);
        assert_eq!(
            r.clone().into_result().unwrap_err(),
            "/srv/b is stale; use --force"
        );
        let r = request(&sock, &enable(true)).unwrap();
        assert_eq!(
            r.into_result().unwrap().message.as_deref(),
            Some("/srv/b enabled")
        );
        let s = request(&sock, &Request::Status).unwrap().snapshot.unwrap();
        assert_eq!(s.state, crate::view::snapshot::Overall::Ok);

        let r = request(
            &sock,
            &Request::Disable {
                replica: "9".into(),
            },
        )
        .unwrap();
        assert_eq!(r.error.as_deref(), Some("no replica 9"));

        srv.shutdown();
        assert!(!sock.exists(), "socket unlinked on shutdown");
        assert!(matches!(
            request(&sock, &Request::Status),
            Err(ClientError::Connect { .. })
        ));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn several_requests_on_one_connection_and_bad_lines() {
        let (d, srv, _h) = server("multi");
        let s = UnixStream::connect(srv.path()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (&s).write_all(b"{\"cmd\":\"status\"}\n\nnot json\n{\"cmd\":\"stats\"}\n")
            .unwrap();
        let mut r = BufReader::new(&s);
        let mut answers = Vec::new();
        for _ in 0..3 {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            answers.push(serde_json::from_str::<Response>(&line).unwrap());
        }
        assert!(answers[0].ok && answers[0].snapshot.is_some());
        assert!(
            !answers[1].ok
                && answers[1]
                    .error
                    .as_ref()
                    .unwrap()
                    .starts_with("bad request")
        );
        assert!(answers[2].ok && answers[2].snapshot.is_some());
        drop(r);
        drop(s);
        assert!(wait_until(|| srv.active_clients() == 0), "client released");
        drop(srv);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn concurrent_clients_and_silent_client() {
        let (d, srv, _h) = server("conc");
        let sock = srv.path().to_path_buf();
        // Silent clients: connected, never send a byte.
        let silent: Vec<UnixStream> = (0..3)
            .map(|_| UnixStream::connect(&sock).unwrap())
            .collect();
        assert!(wait_until(|| srv.active_clients() == 3));
        // A server that served clients one at a time would not answer until it dropped the
        // silent clients as idle (SERVER_IO_TIMEOUT, 10 s): each request would run into its
        // 8 s timeout. That bound is not a speed goal; a loaded machine answers in far less.
        let workers: Vec<_> = (0..16)
            .map(|i| {
                let sock = sock.clone();
                thread::spawn(move || {
                    for _ in 0..10 {
                        let req = if i % 2 == 0 {
                            Request::Status
                        } else {
                            Request::Stats
                        };
                        let r = request_with_timeout(&sock, &req, Duration::from_secs(8)).unwrap();
                        assert!(r.ok, "{r:?}");
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert!(wait_until(|| srv.active_clients() <= 3));
        drop(silent);
        assert!(wait_until(|| srv.active_clients() == 0));
        drop(srv);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn shutdown_disconnects_clients() {
        let (d, srv, _h) = server("shut");
        let c = UnixStream::connect(srv.path()).unwrap();
        assert!(wait_until(|| srv.active_clients() == 1));
        let t = Instant::now();
        srv.shutdown();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!((&c).read(&mut buf).unwrap(), 0, "server side closed");
        assert!(t.elapsed() < Duration::from_secs(3));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn external_stop_flag_stops_accepting() {
        let d = tempdir("stop");
        let sock = d.join("s.sock");
        let stop = Arc::new(AtomicBool::new(false));
        let srv = spawn_server(&sock, TestHandler::new(), stop.clone()).unwrap();
        assert!(request(&sock, &Request::Status).is_ok());
        stop.store(true, Ordering::SeqCst);
        thread::sleep(ACCEPT_POLL * 2);
        assert!(request_with_timeout(&sock, &Request::Status, Duration::from_secs(1)).is_err());
        drop(srv);
        assert!(!sock.exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stale_socket_is_replaced() {
        let d = tempdir("stale");
        let sock = d.join("s.sock");
        drop(StdListener::bind(&sock).unwrap()); // leaves the file, nobody listening
        assert!(sock.exists());
        let srv =
            spawn_server(&sock, TestHandler::new(), Arc::new(AtomicBool::new(false))).unwrap();
        assert!(request(&sock, &Request::Status).unwrap().ok);
        drop(srv);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn live_socket_is_refused_and_kept() {
        let (d, srv, _h) = server("live");
        let sock = srv.path().to_path_buf();
        let err = spawn_server(&sock, TestHandler::new(), Arc::new(AtomicBool::new(false)))
            .err()
            .expect("second server must fail");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(
            err.to_string()
                .contains("another chironfs is already serving")
        );
        // The first server still works.
        assert!(request(&sock, &Request::Status).unwrap().ok);
        drop(srv);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn not_a_socket_is_refused() {
        let d = tempdir("nas");
        let p = d.join("s.sock");
        fs::write(&p, "precious").unwrap();
        let err = spawn_server(&p, TestHandler::new(), Arc::new(AtomicBool::new(false)))
            .err()
            .expect("must refuse");
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(fs::read_to_string(&p).unwrap(), "precious");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn peer_check_allows_our_own_uid() {
        let (a, b) = UnixStream::pair().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        assert!(peer_allowed(&a, me).is_ok());
        if me != 0 {
            // Pretend the daemon runs as someone else: we are then an outsider.
            let e = peer_allowed(&b, me + 1).unwrap_err();
            assert!(e.contains("permission denied"), "{e}");
        }
    }

    /// End to end, as root only: a forked child that drops to uid 65534 is refused.
    #[test]
    fn non_root_peer_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return; // covered by peer_check_allows_our_own_uid
        }
        let (d, srv, _h) = server("peer");
        // Let "nobody" reach the socket so the refusal comes from SO_PEERCRED, not from modes.
        for p in [d.as_path(), srv.path().parent().unwrap()] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::set_permissions(srv.path(), fs::Permissions::from_mode(0o666)).unwrap();
        // Everything the child needs is prepared before fork: it only makes raw syscalls.
        let addr = nix::sys::socket::UnixAddr::new(srv.path()).unwrap();
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: plain syscalls; the child uses async-signal-safe calls only, then _exit.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                libc::close(fds[0]);
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    libc::_exit(10);
                }
                let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                use nix::sys::socket::SockaddrLike;
                if libc::connect(s, addr.as_ptr().cast(), addr.len()) != 0 {
                    libc::_exit(11);
                }
                let req = b"{\"cmd\":\"status\"}\n";
                libc::write(s, req.as_ptr().cast(), req.len());
                let mut buf = [0u8; 512];
                let mut total = 0usize;
                loop {
                    let n = libc::read(s, buf[total..].as_mut_ptr().cast(), buf.len() - total);
                    if n <= 0 || total + n as usize >= buf.len() {
                        break;
                    }
                    total += n as usize;
                }
                libc::write(fds[1], buf.as_ptr().cast(), total);
                libc::_exit(0);
            }
            libc::close(fds[1]);
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "child failed: {status}"
            );
        }
        let mut got = String::new();
        // SAFETY: fds[0] is the pipe's read end, owned here from now on.
        let mut f = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
        f.read_to_string(&mut got).unwrap();
        let resp: Response = serde_json::from_str(got.trim()).unwrap();
        assert!(!resp.ok);
        assert!(resp.error.unwrap().contains("uid 65534"), "{got}");
        assert!(resp.snapshot.is_none());
        assert!(
            wait_until(|| srv.active_clients() == 0),
            "refused client closed"
        );
        drop(srv);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn server_unlinks_only_its_own_socket() {
        let (d, srv, _h) = server("own");
        let sock = srv.path().to_path_buf();
        fs::remove_file(&sock).unwrap();
        fs::write(&sock, "someone else's").unwrap();
        drop(srv);
        assert_eq!(fs::read_to_string(&sock).unwrap(), "someone else's");
        fs::remove_dir_all(&d).unwrap();
    }
}
