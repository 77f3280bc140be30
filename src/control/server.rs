//! The daemon's end of the control socket: binding it (refusing to steal a live one), checking
//! each client's credentials, serving each client on its own thread, and carrying requests out
//! through the [`ControlHandler`]. Imports `control::protocol`, the connect of
//! `control::client` (to tell a live socket from a stale one) and `view::snapshot`.

use std::collections::HashMap;
use std::fs::{self, DirBuilder};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::control::client::{connect_with_timeout, poll_one};
use crate::control::protocol::{
    MAX_REQUEST_LINE, Request, Response, encode_line, read_line_limited,
};
use crate::view::snapshot::ControlHandler;

/// How long the server waits for a client to start its next request (or to read a response)
/// before dropping it, so a silent client cannot hold a thread and a descriptor forever.
pub const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request line may take to arrive from its first byte on: a client that sends
/// part of a line and stops (or trickles it) is dropped then, so slow clients cannot hold
/// every slot and lock the admin out.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// How long a client the server is done with (refused, or sent an oversize line) may go on
/// sending before the server closes: its request is read and thrown away meanwhile, so it
/// can finish writing and read the error reply instead of a broken pipe or a reset.
pub const LINGER: Duration = Duration::from_secs(2);

/// Clients served at once; more are answered with an error and closed, so a flood of
/// connections cannot exhaust the daemon's threads or descriptors.
pub const MAX_CLIENTS: usize = 32;

/// Refused clients being answered at once (each on a short-lived thread, for at most
/// [`LINGER`]); beyond that a connection is closed unanswered.
const MAX_REFUSING: usize = 32;

/// The error reply of a connection beyond [`MAX_CLIENTS`] (`docs/control-protocol.md`).
pub const TOO_MANY_CLIENTS: &str = "too many control clients; try again";
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
        Request::Metrics => match handler.metrics() {
            Ok(text) => Response::with_metrics(text),
            Err(e) => Response::with_error(e),
        },
        Request::Enable { replica, force } => answer(handler.enable(&replica, force)),
        Request::Disable { replica } => answer(handler.disable(&replica)),
        Request::Resync { replica, rate } => answer(handler.resync(&replica, rate)),
        Request::Add {
            path,
            witness,
            rate,
        } => answer(handler.add(&path, witness, rate)),
        Request::Remove { replica } => answer(handler.remove(&replica)),
        Request::Replace { old, new, rate } => answer(handler.replace(&old, &new, rate)),
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
    spawn_server_with(path, handler, stop, Limits::default())
}

/// How long the server waits for a client, at each step (tests shorten them).
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// For the first byte of the next request, and for a response to be taken.
    idle: Duration,
    /// For the rest of a request line once its first byte came.
    request: Duration,
    /// For a client the server is done with to stop sending (see [`LINGER`]).
    linger: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle: SERVER_IO_TIMEOUT,
            request: REQUEST_DEADLINE,
            linger: LINGER,
        }
    }
}

/// [`spawn_server`] with the given [`Limits`].
fn spawn_server_with(
    path: &Path,
    handler: Arc<dyn ControlHandler>,
    stop: Arc<AtomicBool>,
    limits: Limits,
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
            .spawn(move || accept_loop(listener, handler, stop, quit, clients, limits))
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
    limits: Limits,
) {
    let next_id = AtomicU64::new(0);
    let refusing = Arc::new(AtomicUsize::new(0));
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
        let server = Server {
            handler: &handler,
            clients: &clients,
            quit: &quit,
            refusing: &refusing,
            our_uid,
            limits,
        };
        if let Err(e) = server.start_client(id, stream) {
            log::warn!("control socket: cannot serve a client: {e}");
        }
    }
}

/// What serving a new client needs from the accept loop.
struct Server<'a> {
    handler: &'a Arc<dyn ControlHandler>,
    clients: &'a Arc<Mutex<HashMap<u64, UnixStream>>>,
    quit: &'a Arc<AtomicBool>,
    /// Refused clients being answered right now (see [`MAX_REFUSING`]).
    refusing: &'a Arc<AtomicUsize>,
    our_uid: u32,
    limits: Limits,
}

impl Server<'_> {
    /// Registers a new client and serves it on its own thread, or answers "too many" when
    /// [`MAX_CLIENTS`] are being served.
    fn start_client(&self, id: u64, stream: UnixStream) -> io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_write_timeout(Some(self.limits.idle))?;
        {
            let mut map = self
                .clients
                .lock()
                .map_err(|_| io::Error::other("client table poisoned"))?;
            if map.len() >= MAX_CLIENTS {
                drop(map);
                return self.refuse(stream);
            }
            map.insert(id, stream.try_clone()?);
        }
        let (handler, clients, quit) = (
            Arc::clone(self.handler),
            Arc::clone(self.clients),
            Arc::clone(self.quit),
        );
        let (our_uid, limits) = (self.our_uid, self.limits);
        let spawned = thread::Builder::new()
            .name("chironfs-ctl-client".into())
            .spawn(move || {
                serve_client(&stream, handler.as_ref(), &quit, our_uid, limits);
                // Drops our clone: both descriptors of this client are closed now.
                if let Ok(mut map) = clients.lock() {
                    map.remove(&id);
                }
            });
        if let Err(e) = spawned {
            if let Ok(mut map) = self.clients.lock() {
                map.remove(&id);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Answers a client beyond [`MAX_CLIENTS`] with [`TOO_MANY_CLIENTS`] on a short-lived
    /// thread, which reads what the client sends until it leaves (at most [`LINGER`]): closed
    /// at once, a client still writing its request would see a broken pipe, not the reply.
    /// Beyond [`MAX_REFUSING`] such clients the connection is closed unanswered.
    fn refuse(&self, stream: UnixStream) -> io::Result<()> {
        if self.refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSING {
            self.refusing.fetch_sub(1, Ordering::SeqCst);
            return Ok(());
        }
        let (refusing, linger) = (Arc::clone(self.refusing), self.limits.linger);
        let spawned = thread::Builder::new()
            .name("chironfs-ctl-refuse".into())
            .spawn(move || {
                let _ = send(&stream, &Response::with_error(TOO_MANY_CLIENTS));
                close_after_linger(&stream, linger);
                refusing.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            self.refusing.fetch_sub(1, Ordering::SeqCst);
            return Err(e);
        }
        Ok(())
    }
}

/// A client's socket as the request reader sees it: each read waits at most until `until`
/// (the caller moves it: idle wait, then the request's deadline).
struct Timed<'a> {
    stream: &'a UnixStream,
    until: Instant,
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        (&*self.stream).read(buf)
    }
}

/// Stops writing to a client we are done with, then reads and drops what it still sends
/// until it leaves or `linger` is over, so that closing does not reset a connection whose
/// peer has not read our last reply yet.
fn close_after_linger(stream: &UnixStream, linger: Duration) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut rest = Timed {
        stream,
        until: Instant::now() + linger,
    };
    let mut sink = [0u8; 16 * 1024];
    loop {
        match rest.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
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
/// until it leaves, stays silent too long, is too slow with a request or sends garbage.
fn serve_client(
    stream: &UnixStream,
    handler: &dyn ControlHandler,
    quit: &AtomicBool,
    our_uid: u32,
    limits: Limits,
) {
    if let Err(e) = peer_allowed(stream, our_uid) {
        log::warn!("control socket: {e}");
        let _ = send(stream, &Response::with_error(e));
        close_after_linger(stream, limits.linger);
        return;
    }
    let mut reader = BufReader::new(Timed {
        stream,
        until: Instant::now(),
    });
    while !quit.load(Ordering::SeqCst) {
        let line = match next_request(&mut reader, limits) {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                log::debug!("control socket: idle or slow client dropped");
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let _ = send(stream, &Response::with_error(format!("bad request: {e}")));
                close_after_linger(stream, limits.linger);
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

/// The client's next request line (None once it left): its first byte awaited for
/// `limits.idle`, the whole line then due within `limits.request` (TimedOut otherwise).
fn next_request(reader: &mut BufReader<Timed<'_>>, limits: Limits) -> io::Result<Option<Vec<u8>>> {
    reader.get_mut().until = Instant::now() + limits.idle;
    if reader.fill_buf()?.is_empty() {
        return Ok(None);
    }
    reader.get_mut().until = Instant::now() + limits.request;
    read_line_limited(reader, MAX_REQUEST_LINE)
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
                membership: None,
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
                witnesses: None,
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
                        // A connection closed a moment ago may still hold its slot on a
                        // loaded machine: "try again" is an answer a client acts on.
                        let deadline = Instant::now() + Duration::from_secs(8);
                        let r = loop {
                            let r =
                                request_with_timeout(&sock, &req, Duration::from_secs(8)).unwrap();
                            if r.error.as_deref() != Some(TOO_MANY_CLIENTS)
                                || Instant::now() > deadline
                            {
                                break r;
                            }
                            thread::sleep(Duration::from_millis(10));
                        };
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

    /// `n` clients that each sent the start of a request and stopped, once `srv` serves them.
    fn half_written(srv: &ControlServer, n: usize) -> Vec<UnixStream> {
        let held: Vec<UnixStream> = (0..n)
            .map(|_| {
                let s = UnixStream::connect(srv.path()).unwrap();
                (&s).write_all(b"{\"cmd\":\"sta").unwrap();
                s
            })
            .collect();
        assert!(wait_until(|| srv.active_clients() == MAX_CLIENTS));
        held
    }

    #[test]
    fn a_client_beyond_the_limit_reads_the_too_many_reply() {
        let (d, srv, _h) = server("many");
        let held = half_written(&srv, MAX_CLIENTS + 8);
        for _ in 0..5 {
            let r = request(srv.path(), &Request::Status).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(r.error.as_deref(), Some(TOO_MANY_CLIENTS), "{r:?}");
        }
        // A client slow to write its request (the server has answered by then) must still
        // read the reply, never a broken pipe or a reset.
        let s = UnixStream::connect(srv.path()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        thread::sleep(Duration::from_millis(300));
        (&s).write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        let mut answer = String::new();
        BufReader::new(&s).read_line(&mut answer).unwrap();
        let r: Response = serde_json::from_str(&answer).unwrap();
        assert_eq!(r.error.as_deref(), Some(TOO_MANY_CLIENTS), "{r:?}");
        drop(held);
        assert!(wait_until(|| srv.active_clients() == 0));
        assert!(request(srv.path(), &Request::Status).unwrap().ok);
        drop(srv);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn slow_requests_time_out_and_free_their_slots() {
        let d = tempdir("slow");
        let sock = d.join("s.sock");
        let limits = Limits {
            request: Duration::from_millis(300),
            ..Limits::default()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let srv = spawn_server_with(&sock, TestHandler::new(), stop, limits).unwrap();
        let held = half_written(&srv, MAX_CLIENTS);
        // They go on trickling a byte now and then, well within the idle timeout: only the
        // deadline of the request as a whole can drop them.
        let t = Instant::now();
        let mut answered = None;
        while answered.is_none() && t.elapsed() < Duration::from_secs(8) {
            for s in &held {
                let _ = (&*s).write_all(b" ");
            }
            thread::sleep(Duration::from_millis(50));
            answered = request(&sock, &Request::Status).ok().filter(|r| r.ok);
        }
        assert!(answered.is_some(), "slow clients still hold every slot");
        drop(held);
        drop(srv);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_oversize_request_line_gets_the_error_reply() {
        let (d, srv, _h) = server("big");
        let s = UnixStream::connect(srv.path()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        // Far more than the socket buffers hold: written in full only if the server reads on.
        let mut line = vec![b'x'; 4 << 20];
        line.push(b'\n');
        (&s).write_all(&line).unwrap();
        let mut answer = String::new();
        BufReader::new(&s).read_line(&mut answer).unwrap();
        let r: Response = serde_json::from_str(&answer).unwrap();
        let e = r.error.unwrap();
        assert!(e.contains("longer than 65536 bytes"), "{e}");
        drop(s);
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
