//! The optional metrics listener (`--metrics-listen ADDR:PORT`, off by default): a minimal
//! HTTP/1.0-style server on one thread answering `GET /metrics` with the Prometheus text
//! (`ControlHandler::metrics`) and closing each connection. Unauthenticated and read-only: it
//! never changes anything and shows what `chironctl metrics` shows. One scrape at a time, each
//! bounded by [`IO_TIMEOUT`], so a stuck client delays the next scrape, never the mount.
//! Imports only `view::snapshot`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::view::snapshot::ControlHandler;

/// Longest a client may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head read; a scrape's is a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(200);

/// The whole answer (status line, headers, body) to a request whose head is `head`; `metrics`
/// is called only for a `GET` or `HEAD` of `/metrics`.
pub fn response_for(head: &str, metrics: impl FnOnce() -> Result<String, String>) -> Vec<u8> {
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, body, text) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => match metrics() {
            Ok(text) => ("200 OK", text, true),
            Err(e) => ("500 Internal Server Error", format!("{e}\n"), false),
        },
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "chironfs serves its metrics at /metrics\n".to_string(),
            false,
        ),
        _ => (
            "405 Method Not Allowed",
            "only GET and HEAD are answered\n".to_string(),
            false,
        ),
    };
    let kind = if text {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Reads a request head (up to the blank line, at most [`MAX_HEAD`] bytes).
fn read_head(stream: &mut TcpStream) -> io::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Answers one connection; errors (a client gone, too slow) only end that connection.
fn serve_one(mut stream: TcpStream, source: &dyn ControlHandler) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = read_head(&mut stream)?;
    stream.write_all(&response_for(&head, || source.metrics()))?;
    stream.flush()
}

/// Binds `addr` and starts the listener thread; it ends once `stop` is set. Err: the one
/// sentence why it cannot listen.
pub fn spawn(
    addr: SocketAddr,
    source: Arc<dyn ControlHandler>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, String> {
    let fail = |e: io::Error| format!("cannot serve metrics on {addr}: {e}");
    let listener = TcpListener::bind(addr).map_err(fail)?;
    listener.set_nonblocking(true).map_err(fail)?;
    thread::Builder::new()
        .name("chironfs-metrics".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = serve_one(stream, source.as_ref()) {
                            log::debug!("metrics client on {addr}: {e}");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(ACCEPT_POLL);
                    }
                    Err(e) => {
                        log::warn!("metrics listener on {addr}: {e}");
                        thread::sleep(ACCEPT_POLL);
                    }
                }
            }
        })
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Vec<u8>) -> String {
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn get_metrics_answers_the_text_with_its_length_and_type() {
        let r = text(response_for(
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            || Ok("a 1\n".into()),
        ));
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
        assert!(r.contains("Content-Length: 4\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\na 1\n"), "{r}");
        let r = text(response_for("HEAD /metrics?x=1 HTTP/1.1\r\n\r\n", || {
            Ok("a 1\n".into())
        }));
        assert!(
            r.starts_with("HTTP/1.1 200 OK") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
    }

    #[test]
    fn other_paths_methods_and_failures_are_refused_without_collecting() {
        let never = || -> Result<String, String> { panic!("collected for a refused request") };
        let r = text(response_for("GET / HTTP/1.1\r\n\r\n", never));
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = text(response_for("POST /metrics HTTP/1.1\r\n\r\n", never));
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        let r = text(response_for("", never));
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        let r = text(response_for("GET /metrics HTTP/1.0\r\n\r\n", || {
            Err("cannot collect metrics: no".into())
        }));
        assert!(r.starts_with("HTTP/1.1 500 "), "{r}");
        assert!(r.ends_with("cannot collect metrics: no\n"), "{r}");
    }
}
