//! netdelay: a BENCH-ONLY TCP proxy that delays every byte by a fixed time in each direction
//! (this kernel has no `netem`), used by `bench/net.py` to put SSHFS servers "far away".
//!
//! `netdelay LISTEN_ADDR TARGET_ADDR UP_MS DOWN_MS` accepts on LISTEN_ADDR, connects each
//! client to TARGET_ADDR and forwards both ways: client->server bytes leave UP_MS after they
//! arrived, server->client bytes DOWN_MS after (fractions allowed: 0.25). Order is kept; the
//! bandwidth is not limited. It prints `ready` on stdout once listening, and runs until killed.
//!
//! Each direction has a reader thread (timestamps what it reads) and a writer thread (sleeps
//! until each chunk is due, then writes it): plain threads, since a sleep of 0.25 ms needs
//! better than the 1 ms granularity of an event loop's timeout.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Parses a delay in milliseconds (fractions allowed) into a `Duration`.
fn parse_ms(s: &str) -> Result<Duration, String> {
    let ms: f64 = s.parse().map_err(|_| format!("not a number of ms: {s}"))?;
    if !(0.0..=60_000.0).contains(&ms) {
        return Err(format!("delay out of range: {s}"));
    }
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

/// Forwards `from` to `to`, each chunk `delay` after it was read; shuts `to` down for writing
/// at end of stream.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = from.shutdown(Shutdown::Read);
}

/// Serves one client connection: connects to the target and pipes both ways.
fn serve(client: TcpStream, target: &str, up: Duration, down: Duration) {
    let server = match TcpStream::connect(target) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("netdelay: connect {target}: {e}");
            return;
        }
    };
    for s in [&client, &server] {
        let _ = s.set_nodelay(true);
    }
    let (c2, s2) = match (client.try_clone(), server.try_clone()) {
        (Ok(c), Ok(s)) => (c, s),
        _ => return,
    };
    let t = thread::spawn(move || pipe(c2, s2, up));
    pipe(server, client, down);
    let _ = t.join();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: netdelay LISTEN_ADDR TARGET_ADDR UP_MS DOWN_MS");
        std::process::exit(2);
    }
    let (up, down) = match (parse_ms(&args[3]), parse_ms(&args[4])) {
        (Ok(u), Ok(d)) => (u, d),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("netdelay: {e}");
            std::process::exit(2);
        }
    };
    let listener = TcpListener::bind(&args[1]).unwrap_or_else(|e| {
        eprintln!("netdelay: bind {}: {e}", args[1]);
        std::process::exit(1);
    });
    println!("ready");
    let _ = std::io::stdout().flush();
    for client in listener.incoming().flatten() {
        let target = args[2].clone();
        thread::spawn(move || serve(client, &target, up, down));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fractional_milliseconds() {
        assert_eq!(parse_ms("0.25").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_ms("5").unwrap(), Duration::from_millis(5));
        assert!(parse_ms("-1").is_err());
        assert!(parse_ms("x").is_err());
    }
}
