//! `chironctl`'s end of the control socket: finding the socket of the one mount, connecting
//! and asking within a deadline, and the check of the status file without the socket. Imports
//! `control::protocol` and `view/` (check, status_file, words).

use std::fmt;
use std::fs;
use std::io::{self, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::control::protocol::{
    MAX_RESPONSE_LINE, PROTOCOL_VERSION, Request, Response, encode_line, read_line_limited,
};
use crate::view::check::{CheckResult, check_snapshot, check_unknown};
use crate::view::status_file;
use crate::view::words::IS_IT_RUNNING;

/// How long `request` waits for the daemon in total: `chironctl` and monitors must never hang
/// on a wedged daemon.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

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
                        format!(" ({IS_IT_RUNNING})")
                    }
                    io::ErrorKind::PermissionDenied => {
                        " (the control socket is for root only)".to_string()
                    }
                    _ => String::new(),
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

pub(super) use crate::sys::poll_one;

/// `connect(2)` bounded by `timeout`: a blocking connect on a Unix socket whose backlog is
/// full would wait forever. Times out with `ErrorKind::TimedOut`.
pub(super) fn connect_with_timeout(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
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
                let left = deadline.saturating_duration_since(Instant::now());
                if !matches!(poll_one(fd.as_raw_fd(), libc::POLLOUT, left), Ok(true)) {
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
    let line = encode_line(req).map_err(|e| ClientError::Protocol {
        path: p(),
        detail: e.to_string(),
    })?;
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
                "no control socket: {} does not exist ({IS_IT_RUNNING})",
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
            "no control socket in {} ({IS_IT_RUNNING}); use -s PATH or -m DIR",
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

/// `chironctl check --status-file`: reads and judges the status file without root; a missing,
/// unreadable, malformed or older-than-`max_age` file is UNKNOWN (the daemon is presumably
/// dead). `now` is the current unix time, passed in for testability.
pub fn check_status_file(path: &Path, max_age: u64, now: u64) -> CheckResult {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return check_unknown(&format!(
                "status file {} does not exist ({IS_IT_RUNNING})",
                path.display()
            ));
        }
        Err(e) => {
            return check_unknown(&format!("cannot read status file {}: {e}", path.display()));
        }
    };
    let s = match status_file::parse(&text) {
        Ok(s) => s,
        Err(e) => return check_unknown(&format!("bad status file {}: {e}", path.display())),
    };
    let old = now.saturating_sub(s.time);
    if old > max_age {
        return check_unknown(&format!(
            "status file {} is {old} s old (max {max_age} s): {IS_IT_RUNNING}",
            path.display()
        ));
    }
    check_snapshot(&s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::tempdir;
    use crate::view::check::CheckStatus;
    use crate::view::fixtures::snap;
    use crate::view::snapshot::ReplicaState::{InService as In, OutOfService as Out};
    use std::os::unix::net::UnixListener as StdListener;

    #[test]
    fn client_times_out_on_a_mute_server() {
        let d = tempdir("mute");
        let sock = d.join("m.sock");
        let _l = StdListener::bind(&sock).unwrap(); // listens, never accepts or answers
        let t = Instant::now();
        let e =
            request_with_timeout(&sock, &Request::Status, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
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

    #[test]
    fn check_status_file_freshness() {
        let d = tempdir("chk");
        let p = d.join("st");
        let r = check_status_file(&p, 10, 5000);
        assert_eq!(r.status, CheckStatus::Unknown);
        assert!(r.line.contains("does not exist"));
        let s = snap(&[(In, false), (Out, false)]);
        fs::write(&p, status_file::render(&s)).unwrap();
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
}
