//! The control socket: a Unix stream socket on which root (or the daemon's own user) can ask
//! a running chironfs for its state and take replicas in and out of service, without
//! remounting. The protocol is newline-delimited JSON (`docs/control-protocol.md`) so that it
//! can be driven by `chironctl`, by scripts with `socat`, and by tests alike.
//!
//! This module also holds the presentation used by `chironctl` (tables, the Nagios check
//! line), so that the binary stays thin and the wording is unit-tested.

pub mod cli;

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, DirBuilder};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize};

use crate::verify::Report;
use crate::view::snapshot::{ControlHandler, ReplicaSnapshot, ReplicaState, Snapshot};

/// Protocol version carried in every response, so a client can refuse a daemon it does not
/// understand instead of misreading it.
pub const PROTOCOL_VERSION: u32 = 1;

/// How long `request` waits for the daemon in total: `chironctl` and monitors must never hang
/// on a wedged daemon.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server waits for a client to send a request (or to read a response) before
/// dropping it, so a silent client cannot hold a thread and a descriptor forever.
pub const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Clients served at once; more are answered with an error and closed, so a flood of
/// connections cannot exhaust the daemon's threads or descriptors.
pub const MAX_CLIENTS: usize = 32;

/// Longest request line accepted; requests are tiny, anything longer is garbage.
const MAX_REQUEST_LINE: usize = 64 * 1024;
/// Longest response line accepted by the client (a snapshot of many replicas is still small).
const MAX_RESPONSE_LINE: usize = 16 * 1024 * 1024;
/// How often the accept loop looks at its stop flags.
const ACCEPT_POLL: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------------------------
// Protocol types
// ---------------------------------------------------------------------------------------------

/// One request line. Typed so that the server and `chironctl` cannot disagree on spelling.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Full snapshot of the replica set.
    Status,
    /// Same snapshot; `chironctl stats` shows only the counters.
    Stats,
    /// Put a replica (index or path) back in service; `force` accepts a stale one.
    Enable {
        /// Replica index (as a string or a JSON number) or path.
        #[serde(deserialize_with = "string_or_number")]
        replica: String,
        /// Re-enable even when the replica missed mutations.
        #[serde(default)]
        force: bool,
    },
    /// Take a replica (index or path) out of service.
    Disable {
        /// Replica index (as a string or a JSON number) or path.
        #[serde(deserialize_with = "string_or_number")]
        replica: String,
    },
    /// Start an online resync of an out-of-service replica (index or path); its progress
    /// shows in the snapshot (`resync` of that replica).
    Resync {
        /// Replica index (as a string or a JSON number) or path.
        #[serde(deserialize_with = "string_or_number")]
        replica: String,
        /// Content bytes per second for this run (0: no limit); absent: the daemon's
        /// `--resync-rate`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate: Option<u64>,
    },
    /// Compare the replicas path by path (`chironctl verify`); answered with a `verify`
    /// report once the walk is over.
    Verify {
        /// Compare only this replica (index or path, in or out of service) with the first
        /// in-service one; absent: every in-service replica.
        #[serde(default, deserialize_with = "opt_string_or_number")]
        replica: Option<String>,
        /// Compare file content too, not only metadata.
        #[serde(default)]
        content: bool,
        /// Heal: copy each differing path from the first in-service replica onto the others.
        #[serde(default)]
        queue: bool,
    },
}

/// [`string_or_number`] for an optional field (absent or `null`: None).
fn opt_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        Str(String),
        Num(u64),
    }
    Ok(Option::<S>::deserialize(d)?.map(|s| match s {
        S::Str(s) => s,
        S::Num(n) => n.to_string(),
    }))
}

/// Accepts `"1"` and `1` alike, so hand-written requests (`socat`) are not refused for quoting.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        Str(String),
        Num(u64),
    }
    Ok(match S::deserialize(d)? {
        S::Str(s) => s,
        S::Num(n) => n.to_string(),
    })
}

/// One response line: `ok` plus exactly one of `snapshot`, `message` or `error`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Always [`PROTOCOL_VERSION`] from this daemon.
    pub version: u32,
    /// Answer to `status` and `stats`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
    /// One-line confirmation from `enable`/`disable`, for the admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why the request was refused or failed (`ok` is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Answer to `verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Report>,
}

impl Response {
    /// A successful answer carrying a snapshot.
    pub fn with_snapshot(s: Snapshot) -> Self {
        Response {
            ok: true,
            version: PROTOCOL_VERSION,
            snapshot: Some(s),
            message: None,
            error: None,
            verify: None,
        }
    }

    /// A successful answer carrying a message.
    pub fn with_message(m: impl Into<String>) -> Self {
        Response {
            ok: true,
            version: PROTOCOL_VERSION,
            snapshot: None,
            message: Some(m.into()),
            error: None,
            verify: None,
        }
    }

    /// A refusal or failure.
    pub fn with_error(e: impl Into<String>) -> Self {
        Response {
            ok: false,
            version: PROTOCOL_VERSION,
            snapshot: None,
            message: None,
            error: Some(e.into()),
            verify: None,
        }
    }

    /// A successful answer carrying a verify report.
    pub fn with_verify(r: Report) -> Self {
        Response {
            verify: Some(r),
            ..Response::with_message("verify done")
        }
    }

    /// Turns a refusal into `Err(error text)`, so callers handle one result type.
    pub fn into_result(self) -> Result<Response, String> {
        if self.ok {
            Ok(self)
        } else {
            Err(self
                .error
                .unwrap_or_else(|| "the daemon refused the request without a reason".into()))
        }
    }
}

/// Carries out one request against the daemon; the single place where requests meet the
/// [`ControlHandler`].
pub fn dispatch(handler: &dyn ControlHandler, req: Request) -> Response {
    match req {
        Request::Status | Request::Stats => Response::with_snapshot(handler.snapshot()),
        Request::Enable { replica, force } => match handler.enable(&replica, force) {
            Ok(m) => Response::with_message(m),
            Err(e) => Response::with_error(e),
        },
        Request::Disable { replica } => match handler.disable(&replica) {
            Ok(m) => Response::with_message(m),
            Err(e) => Response::with_error(e),
        },
        Request::Resync { replica, rate } => match handler.resync(&replica, rate) {
            Ok(m) => Response::with_message(m),
            Err(e) => Response::with_error(e),
        },
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

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

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
    match connect_with_timeout(path, Duration::from_secs(1)) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another chironfs is already serving {}", path.display()),
        )),
        // Backlog full: somebody is listening.
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another chironfs is already serving {}", path.display()),
        )),
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

/// Waits until `fd` is readable or `timeout` passes; `Ok(false)` on timeout or EINTR.
fn poll_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd, count 1.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(r > 0)
}

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
        match poll_readable(listener.as_raw_fd(), ACCEPT_POLL) {
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

fn send(mut stream: &UnixStream, resp: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(resp).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    stream.flush()
}

/// Reads one `\n`-terminated line of at most `limit` bytes; `None` at end of stream. A last
/// line without newline is accepted.
fn read_line_limited<R: BufRead>(r: &mut R, limit: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let n = r.take(limit as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("line longer than {limit} bytes"),
        ));
    }
    Ok(Some(buf))
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

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// Why a control request got no usable answer; the wording names the socket so the admin
/// knows which daemon did not answer.
#[derive(Debug)]
pub enum ClientError {
    /// Nobody is serving the socket (daemon not running, wrong path, permission).
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The daemon did not answer in time.
    Timeout {
        /// The socket path.
        path: PathBuf,
    },
    /// The connection failed mid-request.
    Io {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The answer was not a valid protocol-1 response.
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { path, source } => {
                let hint = match source.kind() {
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                        " (is chironfs running?)"
                    }
                    io::ErrorKind::PermissionDenied => " (the control socket is for root only)",
                    _ => "",
                };
                write!(
                    f,
                    "cannot connect to control socket {}: {source}{hint}",
                    path.display()
                )
            }
            ClientError::Timeout { path } => write!(
                f,
                "control socket {} did not answer within {} s",
                path.display(),
                CLIENT_TIMEOUT.as_secs()
            ),
            ClientError::Io { path, source } => {
                write!(
                    f,
                    "I/O error on control socket {}: {source}",
                    path.display()
                )
            }
            ClientError::Protocol { path, detail } => {
                write!(
                    f,
                    "bad answer from control socket {}: {detail}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect { source, .. } | ClientError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// `connect(2)` bounded by `timeout`: a blocking connect on a Unix socket whose backlog is
/// full would wait forever. Times out with `ErrorKind::TimedOut`.
fn connect_with_timeout(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    use nix::errno::Errno;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    let deadline = Instant::now() + timeout;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    loop {
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {
                if Instant::now() >= deadline {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                thread::sleep(Duration::from_millis(20));
            }
            Err(Errno::EINPROGRESS) => {
                // Not used by Linux for AF_UNIX, but handled for completeness.
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                let ms = deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(i32::MAX as u128) as libc::c_int;
                // SAFETY: one valid pollfd, count 1.
                if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                let err =
                    nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SocketError)?;
                if err != 0 {
                    return Err(io::Error::from_raw_os_error(err));
                }
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Sends one request and waits for its response, all within [`CLIENT_TIMEOUT`].
pub fn request(path: &Path, req: &Request) -> Result<Response, ClientError> {
    request_with_timeout(path, req, CLIENT_TIMEOUT)
}

/// [`request`] with an explicit overall timeout (tests, impatient monitors).
pub fn request_with_timeout(
    path: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let p = || path.to_path_buf();
    let stream = connect_with_timeout(path, timeout).map_err(|e| {
        if e.kind() == io::ErrorKind::TimedOut {
            ClientError::Timeout { path: p() }
        } else {
            ClientError::Connect {
                path: p(),
                source: e,
            }
        }
    })?;
    let io_err = |e: io::Error| {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            ClientError::Timeout { path: p() }
        } else {
            ClientError::Io {
                path: p(),
                source: e,
            }
        }
    };
    let remaining = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol {
        path: p(),
        detail: e.to_string(),
    })?;
    line.push(b'\n');
    stream
        .set_write_timeout(Some(remaining()))
        .map_err(io_err)?;
    (&stream).write_all(&line).map_err(io_err)?;
    stream.set_read_timeout(Some(remaining())).map_err(io_err)?;
    let mut reader = BufReader::new(&stream);
    let answer = read_line_limited(&mut reader, MAX_RESPONSE_LINE).map_err(io_err)?;
    let Some(answer) = answer else {
        return Err(ClientError::Protocol {
            path: p(),
            detail: "the daemon closed the connection without answering".into(),
        });
    };
    let resp: Response = serde_json::from_slice(&answer).map_err(|e| ClientError::Protocol {
        path: p(),
        detail: e.to_string(),
    })?;
    if resp.version != PROTOCOL_VERSION {
        return Err(ClientError::Protocol {
            path: p(),
            detail: format!(
                "protocol version {} (this chironctl speaks {PROTOCOL_VERSION})",
                resp.version
            ),
        });
    }
    Ok(resp)
}

/// Finds the one control socket in `dir` (normally `/run/chironfs`), so that `chironctl` needs
/// no option on a host with a single mount; with none or several it says which and why.
pub fn find_default_socket(dir: &Path) -> Result<PathBuf, String> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!(
                "no control socket: {} does not exist (is chironfs running?)",
                dir.display()
            ));
        }
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sock"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.path())
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!(
            "no control socket in {} (is chironfs running?); use -s PATH or -m DIR",
            dir.display()
        )),
        _ => Err(format!(
            "several chironfs control sockets in {} ({}); choose one with -m DIR or -s PATH",
            dir.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Presentation for chironctl
// ---------------------------------------------------------------------------------------------

/// Makes text safe for one terminal/Nagios line: control characters become spaces.
fn one_line(s: &str) -> String {
    crate::view::status_file::sanitize_value(s.trim())
}

/// Left-aligned table with columns two spaces apart; `right[i]` right-aligns column i.
fn table(headers: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let head: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = width[i].saturating_sub(cell.chars().count());
            if right.get(i).copied().unwrap_or(false) {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn in_service(s: &Snapshot) -> usize {
    s.replicas
        .iter()
        .filter(|r| r.state == ReplicaState::InService)
        .count()
}

/// Short human duration ("45s", "12m03s", "3h07m", "2d04h") for how long a replica has been
/// out.
fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

fn reason_cell(s: &Snapshot, r: &ReplicaSnapshot) -> String {
    let reason = one_line(&r.reason);
    if r.state == ReplicaState::OutOfService && r.since > 0 && r.since <= s.time {
        let a = age(s.time - r.since);
        if reason.is_empty() {
            format!("(for {a})")
        } else {
            format!("{reason} (for {a})")
        }
    } else {
        reason
    }
}

/// ", quorum 2 met" / ", quorum 2 LOST: mutations refused (EROFS)"; empty without quorum.
fn quorum_words(s: &Snapshot) -> String {
    match s.quorum {
        None => String::new(),
        Some(q) if s.quorum_lost() => {
            format!(", quorum {q} LOST: mutations refused (read-only, EROFS)")
        }
        Some(q) => format!(", quorum {q} met"),
    }
}

/// `chironctl status`: a header with mount point, pid and overall state, then one row per
/// replica, so an admin sees at a glance which replica is out and why.
pub fn format_status(s: &Snapshot) -> String {
    let mut out = format!(
        "chironfs {} (pid {}): {}, {}/{} replicas in service{}\n",
        one_line(&s.mountpoint),
        s.pid,
        s.state.as_str(),
        in_service(s),
        s.replicas.len(),
        quorum_words(s)
    );
    let rows: Vec<Vec<String>> = s
        .replicas
        .iter()
        .map(|r| {
            vec![
                r.index.to_string(),
                one_line(&r.path),
                if r.low_priority { "low" } else { "normal" }.to_string(),
                r.state.as_str().to_string(),
                if r.stale { "yes" } else { "no" }.to_string(),
                r.reads.to_string(),
                r.writes.to_string(),
                r.errors.to_string(),
                reason_cell(s, r),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "#", "PATH", "PRIORITY", "STATE", "STALE", "READS", "WRITES", "ERRORS", "REASON",
        ],
        &rows,
        &[true, false, false, false, false, true, true, true, false],
    ));
    for r in &s.replicas {
        if let Some(p) = &r.resync {
            out.push_str(&format!(
                "resync of {} from replica {}: {}\n",
                r.index,
                p.source,
                one_line(&crate::resync::describe(p))
            ));
        }
    }
    out
}

/// One line saying where a resync stands (`chironctl resync --wait`).
pub fn describe_resync(p: &crate::view::snapshot::ResyncProgress) -> String {
    one_line(&crate::resync::describe(p))
}

/// `chironctl stats`: the per-replica counters and their totals.
pub fn format_stats(s: &Snapshot) -> String {
    let mut rows: Vec<Vec<String>> = s
        .replicas
        .iter()
        .map(|r| {
            vec![
                r.index.to_string(),
                one_line(&r.path),
                r.reads.to_string(),
                r.writes.to_string(),
                r.errors.to_string(),
            ]
        })
        .collect();
    let sum = |f: fn(&ReplicaSnapshot) -> u64| s.replicas.iter().map(f).sum::<u64>().to_string();
    rows.push(vec![
        String::new(),
        "total".into(),
        sum(|r| r.reads),
        sum(|r| r.writes),
        sum(|r| r.errors),
    ]);
    let mut out = format!("chironfs {} (pid {})\n", one_line(&s.mountpoint), s.pid);
    out.push_str(&table(
        &["#", "PATH", "READS", "WRITES", "ERRORS"],
        &rows,
        &[true, false, true, true, true],
    ));
    out
}

/// Counters of one replica, as `chironctl stats --json` prints them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplicaStats {
    /// Replica index (0-based).
    pub index: usize,
    /// Replica path.
    pub path: String,
    /// Read-type requests answered.
    pub reads: u64,
    /// Mutations applied.
    pub writes: u64,
    /// Failed or timed-out operations.
    pub errors: u64,
}

/// `chironctl stats --json`: the counters only, a stable JSON shape for scripts (fields in
/// declaration order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Pid of the daemon.
    pub pid: u32,
    /// Canonical mount point.
    pub mountpoint: String,
    /// Unix time of the snapshot.
    pub time: u64,
    /// One entry per replica.
    pub replicas: Vec<ReplicaStats>,
}

/// Extracts the counters from a snapshot.
pub fn stats_of(s: &Snapshot) -> Stats {
    Stats {
        pid: s.pid,
        mountpoint: s.mountpoint.clone(),
        time: s.time,
        replicas: s
            .replicas
            .iter()
            .map(|r| ReplicaStats {
                index: r.index,
                path: r.path.clone(),
                reads: r.reads,
                writes: r.writes,
                errors: r.errors,
            })
            .collect(),
    }
}

/// Nagios plugin states; the discriminant is the exit code the plugin API prescribes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckStatus {
    /// Every replica in service and none stale (exit 0).
    Ok = 0,
    /// Still serving, but a replica is out of service or stale (exit 1).
    Warning = 1,
    /// No replica in service (exit 2).
    Critical = 2,
    /// The state could not be read (exit 3).
    Unknown = 3,
}

impl CheckStatus {
    /// Process exit code for the plugin.
    pub fn exit_code(self) -> i32 {
        self as i32
    }

    /// Word used in the check line.
    pub fn label(self) -> &'static str {
        match self {
            CheckStatus::Ok => "OK",
            CheckStatus::Warning => "WARNING",
            CheckStatus::Critical => "CRITICAL",
            CheckStatus::Unknown => "UNKNOWN",
        }
    }
}

/// Outcome of `chironctl check`: one line of output and the exit code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// Nagios state (and exit code).
    pub status: CheckStatus,
    /// The single output line (no trailing newline).
    pub line: String,
}

/// Nagios splits the status text from performance data at `|`: keep it out of the text.
fn check_text(s: &str) -> String {
    one_line(s).replace('|', "/")
}

/// A check that could not read the state: UNKNOWN with the reason.
pub fn check_unknown(reason: &str) -> CheckResult {
    CheckResult {
        status: CheckStatus::Unknown,
        line: format!("CHIRONFS UNKNOWN - {}", check_text(reason)),
    }
}

/// Judges a snapshot by the Nagios rules: OK when all replicas are in service and none is
/// stale, WARNING when some are out or stale but one still serves, CRITICAL when none serves.
/// Out-of-service and stale replicas are named in the line so the alert says what to fix.
pub fn check_snapshot(s: &Snapshot) -> CheckResult {
    let (status, text) = check_summary(s);
    let total = s.replicas.len();
    let up = in_service(s);
    let out = total - up;
    let stale_count = s.replicas.iter().filter(|r| r.stale).count();
    CheckResult {
        status,
        line: format!(
            "CHIRONFS {} - {text} | in_service={up};;;0;{total} out_of_service={out} stale={stale_count}",
            status.label(),
        ),
    }
}

/// The verdict of [`check_snapshot`] and its one-line reason (no performance data), also
/// written to the status file: replicas being resynced are named with their progress, the
/// others out of service with their reason (and whether they are stale).
pub fn check_summary(s: &Snapshot) -> (CheckStatus, String) {
    let total = s.replicas.len();
    let up = in_service(s);
    let resyncing = |r: &ReplicaSnapshot| {
        r.resync
            .as_ref()
            .filter(|p| p.state == "running" && r.state == ReplicaState::OutOfService)
            .map(crate::view::progress::check_reason)
    };
    let syncing: Vec<String> = s
        .replicas
        .iter()
        .filter_map(|r| resyncing(r).map(|why| format!("{} ({why})", check_text(&r.path))))
        .collect();
    let out: Vec<&ReplicaSnapshot> = s
        .replicas
        .iter()
        .filter(|r| r.state == ReplicaState::OutOfService && resyncing(r).is_none())
        .collect();
    let stale_count = s.replicas.iter().filter(|r| r.stale).count();
    let stale_in: Vec<&ReplicaSnapshot> = s
        .replicas
        .iter()
        .filter(|r| r.stale && r.state == ReplicaState::InService)
        .collect();
    let status = if up == 0 || s.quorum_lost() {
        CheckStatus::Critical
    } else if up < total || stale_count > 0 {
        CheckStatus::Warning
    } else {
        CheckStatus::Ok
    };
    let mut text = format!("{up}/{total} replicas in service");
    if let Some(q) = s.quorum.filter(|_| s.quorum_lost()) {
        text.push_str(&format!("; quorum lost ({q} needed): mutations refused"));
    }
    if !syncing.is_empty() {
        text.push_str(&format!("; resyncing: {}", syncing.join(", ")));
    }
    if !out.is_empty() {
        let names: Vec<String> = out
            .iter()
            .map(|r| {
                let mut reason = check_text(&r.reason);
                if r.stale {
                    if !reason.is_empty() {
                        reason.push_str("; ");
                    }
                    reason.push_str("stale, needs a resync");
                }
                if reason.is_empty() {
                    check_text(&r.path)
                } else {
                    format!("{} ({reason})", check_text(&r.path))
                }
            })
            .collect();
        text.push_str(&format!("; out of service: {}", names.join(", ")));
    }
    if !stale_in.is_empty() {
        let names: Vec<String> = stale_in.iter().map(|r| check_text(&r.path)).collect();
        text.push_str(&format!("; stale: {}", names.join(", ")));
    }
    (status, text)
}

/// `chironctl check --status-file`: reads and judges the status file without root; a missing,
/// unreadable, malformed or older-than-`max_age` file is UNKNOWN (the daemon is presumably
/// dead). `now` is the current unix time, passed in for testability.
pub fn check_status_file(path: &Path, max_age: u64, now: u64) -> CheckResult {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return check_unknown(&format!(
                "status file {} does not exist (is chironfs running?)",
                path.display()
            ));
        }
        Err(e) => {
            return check_unknown(&format!("cannot read status file {}: {e}", path.display()));
        }
    };
    let s = match crate::view::status_file::parse(&text) {
        Ok(s) => s,
        Err(e) => return check_unknown(&format!("bad status file {}: {e}", path.display())),
    };
    let old = now.saturating_sub(s.time);
    if old > max_age {
        return check_unknown(&format!(
            "status file {} is {old} s old (max {max_age} s): is chironfs running?",
            path.display()
        ));
    }
    check_snapshot(&s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener as StdListener;

    fn tempdir(tag: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        // Short: socket paths are limited to 108 bytes.
        let d = std::env::temp_dir().join(format!(
            "chfs-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

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
    fn request_json_shapes() {
        let r: Request = serde_json::from_str(r#"{"cmd":"status"}"#).unwrap();
        assert_eq!(r, Request::Status);
        let r: Request =
            serde_json::from_str(r#"{"cmd":"enable","replica":"1","force":false}"#).unwrap();
        assert_eq!(
            r,
            Request::Enable {
                replica: "1".into(),
                force: false
            }
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"enable","replica":2}"#).unwrap();
        assert_eq!(
            r,
            Request::Enable {
                replica: "2".into(),
                force: false
            }
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"disable","replica":"/srv/b"}"#).unwrap();
        assert_eq!(
            r,
            Request::Disable {
                replica: "/srv/b".into()
            }
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"resync","replica":1}"#).unwrap();
        assert_eq!(
            r,
            Request::Resync {
                replica: "1".into(),
                rate: None
            }
        );
        let r: Request =
            serde_json::from_str(r#"{"cmd":"resync","replica":"1","rate":2097152}"#).unwrap();
        assert_eq!(
            r,
            Request::Resync {
                replica: "1".into(),
                rate: Some(2 << 20)
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Stats).unwrap(),
            r#"{"cmd":"stats"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Response::with_message("done")).unwrap(),
            r#"{"ok":true,"version":1,"message":"done"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::with_error("no")).unwrap(),
            r#"{"ok":false,"version":1,"error":"no"}"#
        );
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
        let start = Instant::now();
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
                        let r = request_with_timeout(&sock, &req, Duration::from_secs(3)).unwrap();
                        assert!(r.ok);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "silent clients blocked others"
        );
        assert!(wait_until(|| srv.active_clients() == 3));
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

    #[test]
    fn client_times_out_on_a_mute_server() {
        let d = tempdir("mute");
        let sock = d.join("m.sock");
        let _l = StdListener::bind(&sock).unwrap(); // listens, never accepts or answers
        let t = Instant::now();
        let e =
            request_with_timeout(&sock, &Request::Status, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn find_default_socket_rules() {
        let d = tempdir("find");
        assert!(
            find_default_socket(&d.join("missing"))
                .unwrap_err()
                .contains("does not exist")
        );
        assert!(
            find_default_socket(&d)
                .unwrap_err()
                .contains("no control socket")
        );
        fs::write(d.join("x.sock"), "").unwrap(); // not a socket: ignored
        assert!(find_default_socket(&d).is_err());
        let _a = StdListener::bind(d.join("mnt-a.sock")).unwrap();
        assert_eq!(find_default_socket(&d).unwrap(), d.join("mnt-a.sock"));
        let _b = StdListener::bind(d.join("mnt-b.sock")).unwrap();
        let e = find_default_socket(&d).unwrap_err();
        assert!(e.contains("mnt-a.sock") && e.contains("mnt-b.sock"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }

    fn snap(states: &[(ReplicaState, bool)]) -> Snapshot {
        let replicas: Vec<ReplicaSnapshot> = states
            .iter()
            .enumerate()
            .map(|(i, &(state, stale))| ReplicaSnapshot {
                index: i,
                path: format!("/srv/r{i}"),
                low_priority: i == 2,
                state,
                reason: if state == ReplicaState::OutOfService {
                    "write error | EIO\n".into()
                } else {
                    String::new()
                },
                since: 1000,
                stale,
                reads: 10 * i as u64,
                writes: 5,
                errors: i as u64,
                resync: None,
            })
            .collect();
        Snapshot {
            pid: 99,
            mountpoint: "/mnt/data".into(),
            time: 4723,
            state: Snapshot::overall_of(&replicas),
            replicas,
            quorum: None,
        }
    }

    use ReplicaState::{InService as In, OutOfService as Out};

    #[test]
    fn quorum_lost_is_critical_and_shown_in_status() {
        let mut s = snap(&[(In, false), (Out, true), (Out, true)]);
        s.quorum = Some(2);
        let c = check_snapshot(&s);
        assert_eq!(c.status, CheckStatus::Critical);
        assert!(
            c.line.starts_with(
                "CHIRONFS CRITICAL - 1/3 replicas in service; quorum lost (2 needed): mutations refused; out of service:"
            ),
            "{}",
            c.line
        );
        let head = format_status(&s);
        assert!(
            head.lines().next().unwrap().ends_with(
                "1/3 replicas in service, quorum 2 LOST: mutations refused (read-only, EROFS)"
            ),
            "{head}"
        );
        s.replicas[1].state = In;
        assert_eq!(check_snapshot(&s).status, CheckStatus::Warning);
        assert!(
            format_status(&s)
                .lines()
                .next()
                .unwrap()
                .ends_with(", quorum 2 met")
        );
    }

    #[test]
    fn check_lines() {
        let ok = check_snapshot(&snap(&[(In, false), (In, false)]));
        assert_eq!(ok.status, CheckStatus::Ok);
        assert_eq!(
            ok.line,
            "CHIRONFS OK - 2/2 replicas in service | in_service=2;;;0;2 out_of_service=0 stale=0"
        );
        let warn = check_snapshot(&snap(&[(In, false), (Out, true)]));
        assert_eq!(warn.status, CheckStatus::Warning);
        assert_eq!(warn.status.exit_code(), 1);
        assert_eq!(
            warn.line,
            "CHIRONFS WARNING - 1/2 replicas in service; out of service: /srv/r1 (write error / EIO; \
             stale, needs a resync) | in_service=1;;;0;2 out_of_service=1 stale=1"
        );
        // Being resynced: named with its progress instead of the old reason.
        let mut syncing = snap(&[(In, false), (Out, true)]);
        syncing.replicas[1].resync = Some(crate::view::snapshot::ResyncProgress {
            state: "running".into(),
            phase: "copying".into(),
            total: Some(200),
            done: 50,
            eta: Some(130),
            ..Default::default()
        });
        let r = check_snapshot(&syncing);
        assert_eq!(r.status, CheckStatus::Warning);
        assert_eq!(
            r.line,
            "CHIRONFS WARNING - 1/2 replicas in service; resyncing: /srv/r1 (resync running \
             (copying, 25%, ETA 2m10s)) | in_service=1;;;0;2 out_of_service=1 stale=1"
        );
        // A resync that ended (failed) no longer counts as running.
        syncing.replicas[1].resync.as_mut().unwrap().state = "failed".into();
        assert!(
            check_snapshot(&syncing)
                .line
                .contains("out of service: /srv/r1 (")
        );
        let stale_only = check_snapshot(&snap(&[(In, false), (In, true)]));
        assert_eq!(stale_only.status, CheckStatus::Warning);
        assert!(
            stale_only
                .line
                .contains("2/2 replicas in service; stale: /srv/r1 |")
        );
        let crit = check_snapshot(&snap(&[(Out, false), (Out, true)]));
        assert_eq!(crit.status, CheckStatus::Critical);
        assert_eq!(crit.status.exit_code(), 2);
        assert!(
            crit.line.starts_with(
                "CHIRONFS CRITICAL - 0/2 replicas in service; out of service: /srv/r0"
            )
        );
        assert_eq!(crit.line.matches('|').count(), 1);
        assert_eq!(crit.line.lines().count(), 1);
        let unk = check_unknown("cannot connect\nto x | y");
        assert_eq!(unk.status.exit_code(), 3);
        assert_eq!(unk.line, "CHIRONFS UNKNOWN - cannot connect to x / y");
    }

    #[test]
    fn check_status_file_freshness() {
        let d = tempdir("chk");
        let p = d.join("st");
        let r = check_status_file(&p, 10, 5000);
        assert_eq!(r.status, CheckStatus::Unknown);
        assert!(r.line.contains("does not exist"));
        let s = snap(&[(In, false), (Out, false)]);
        crate::view::status_file::write_atomic(&p, &crate::view::status_file::render(&s)).unwrap();
        assert_eq!(
            check_status_file(&p, 10, s.time + 10).status,
            CheckStatus::Warning
        );
        let old = check_status_file(&p, 10, s.time + 11);
        assert_eq!(old.status, CheckStatus::Unknown);
        assert!(old.line.contains("11 s old"), "{}", old.line);
        fs::write(&p, "garbage").unwrap();
        assert_eq!(
            check_status_file(&p, 10, s.time).status,
            CheckStatus::Unknown
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn tables() {
        let s = snap(&[(In, false), (Out, true), (In, false)]);
        let t = format_status(&s);
        let expected = "\
chironfs /mnt/data (pid 99): degraded, 2/3 replicas in service
#  PATH     PRIORITY  STATE           STALE  READS  WRITES  ERRORS  REASON
0  /srv/r0  normal    in-service      no         0       5       0
1  /srv/r1  normal    out-of-service  yes       10       5       1  write error | EIO (for 1h02m)
2  /srv/r2  low       in-service      no        20       5       2
";
        assert_eq!(t, expected);
        let st = format_stats(&s);
        let expected = "\
chironfs /mnt/data (pid 99)
#  PATH     READS  WRITES  ERRORS
0  /srv/r0      0       5       0
1  /srv/r1     10       5       1
2  /srv/r2     20       5       2
   total       30      15       3
";
        assert_eq!(st, expected);
        let j = serde_json::to_string(&stats_of(&s)).unwrap();
        assert!(j.starts_with(r#"{"pid":99,"mountpoint":"/mnt/data","time":4723,"replicas":[{"index":0,"path":"/srv/r0","reads":0,"writes":5,"errors":0}"#), "{j}");
        assert_eq!(age(45), "45s");
        assert_eq!(age(3 * 86400 + 7200), "3d02h");
    }
}
