//! The Prometheus metrics of a mounted set: `chironctl metrics`, the node_exporter textfile
//! next to the status file and the `--metrics-listen` listener all pass `promtool check
//! metrics`, and count what was done through the mount.
mod common;
use common::*;

use std::io::{Read, Write};
use std::time::Duration;

/// GET `path` from the listener at `port` on 127.0.0.1: (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// A TCP port nobody listens on now (bound and released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn replica(i: usize) -> (&'static str, &'static str) {
    ("replica", ["0", "1"][i])
}

#[test]
fn metrics_of_a_mounted_set_pass_promtool_and_count_what_was_done() {
    if !can_mount() {
        return;
    }
    let port = free_port();
    let m = MountBuilder::new(2)
        .arg("--passthrough")
        .arg("off")
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{port}"))
        .start();
    let before = m.metrics();
    let write_class = ("class", "data_write");
    let ops = |text: &str, i: usize| {
        metric(
            text,
            "chironfs_replica_operations_total",
            &[replica(i), write_class],
        )
        .unwrap()
    };
    let data = vec![7u8; 4096];
    for n in 0..20 {
        std::fs::write(m.path(&format!("f{n}")), &data).unwrap();
        assert_eq!(std::fs::read(m.path(&format!("f{n}"))).unwrap(), data);
    }
    // One health check later the capacity is known too.
    std::thread::sleep(Duration::from_millis(1500));
    let after = m.metrics();
    assert_promtool_clean(&after, "chironctl metrics");
    for i in 0..2 {
        assert!(
            ops(&after, i) >= ops(&before, i) + 20.0,
            "replica {i}:\n{after}"
        );
        let count = "chironfs_replica_operation_duration_seconds_count";
        let done = |t: &str| metric(t, count, &[replica(i), write_class]).unwrap();
        assert!(
            done(&after) >= done(&before) + 20.0,
            "replica {i}:\n{after}"
        );
        let free = metric(&after, "chironfs_replica_available_bytes", &[replica(i)]);
        assert!(free.is_some_and(|f| f > 0.0), "replica {i}:\n{after}");
        let state = [replica(i), ("state", "in_service")];
        assert_eq!(metric(&after, "chironfs_replica_state", &state), Some(1.0));
    }
    let bytes = |name: &str| metric(&after, name, &[]).unwrap();
    assert!(
        bytes("chironfs_written_bytes_total") >= 20.0 * 4096.0,
        "{after}"
    );
    assert!(
        bytes("chironfs_read_bytes_total") >= 20.0 * 4096.0,
        "{after}"
    );

    // The textfile for node_exporter, next to the status file.
    let prom = m.status_file.with_extension("prom");
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&prom)
            .is_ok_and(|t| t.contains("chironfs_replica_available_bytes"))),
        "no metrics file {}",
        prom.display()
    );
    assert_promtool_clean(&std::fs::read_to_string(&prom).unwrap(), "the textfile");

    // The listener.
    let (status, body) = http_get(port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_promtool_clean(&body, "the listener's answer");
    assert!(body.contains("chironfs_replica_operation_duration_seconds_bucket"));
    assert!(http_get(port, "/").0.starts_with("HTTP/1.1 404"));

    // A replica taken out and missing a write: stale, with a heal backlog.
    ctl_ok(&m, &["disable", "1"]);
    std::fs::write(m.path("missed"), b"x").unwrap();
    let out = m.metrics();
    assert_promtool_clean(&out, "the metrics of a degraded set");
    let stale = [replica(1), ("state", "stale")];
    assert_eq!(
        metric(&out, "chironfs_replica_state", &stale),
        Some(1.0),
        "{out}"
    );
    let pending = metric(&out, "chironfs_replica_heal_pending_paths", &[replica(1)]);
    assert!(pending.is_some_and(|p| p >= 1.0), "{out}");
    let degraded = [("state", "degraded")];
    assert_eq!(
        metric(&out, "chironfs_state", &degraded),
        Some(1.0),
        "{out}"
    );

    assert!(m.stop(), "SIGTERM must unmount and end the daemon");
    assert!(!prom.exists(), "the metrics file outlived the daemon");
}

#[test]
fn the_grafana_dashboard_queries_parse_and_name_only_metrics_the_daemon_has() {
    let text = include_str!("../examples/grafana-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    // Every metric named is one the daemon writes.
    let families = chironfs::view::metrics::FAMILIES;
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("chironfs_") {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .filter(|b| b.ends_with("_seconds"))
                    .unwrap_or(word);
                assert!(
                    families.contains(&base),
                    "{word} in {e} is no chironfs metric"
                );
            }
        }
    }
    // Every query parses: promtool checks them as recording rules (Grafana's variables
    // replaced by what they stand for).
    let mut rules = String::from("groups:\n- name: dashboard\n  rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$mountpoint", ".*");
        rules += &format!(
            "  - record: dashboard:q{i}\n    expr: {}\n",
            serde_json::to_string(&e).unwrap()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, rules).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool not found: run scripts/setup.sh (Debian package prometheus)");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_resync_shows_in_the_metrics_and_they_still_pass_promtool() {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(2).start();
    ctl_ok(&m, &["disable", "1"]);
    let data = vec![3u8; 64 * 1024];
    for n in 0..10 {
        std::fs::write(m.path(&format!("missed{n}")), &data).unwrap();
    }
    let before = m.metrics();
    let stale = [replica(1), ("state", "stale")];
    assert_eq!(
        metric(&before, "chironfs_replica_state", &stale),
        Some(1.0),
        "{before}"
    );
    assert!(!before.contains("chironfs_resync_state"), "{before}");
    ctl_ok(&m, &["resync", "1", "--wait"]);
    let after = m.metrics();
    assert_promtool_clean(&after, "the metrics after a resync");
    let done = [replica(1), ("state", "done")];
    assert_eq!(
        metric(&after, "chironfs_resync_state", &done),
        Some(1.0),
        "{after}"
    );
    let copied = metric(&after, "chironfs_resync_copied_bytes", &[replica(1)]);
    assert!(copied.is_some_and(|b| b >= 10.0 * 64.0 * 1024.0), "{after}");
    let source = metric(&after, "chironfs_resync_source_replica", &[replica(1)]);
    assert_eq!(source, Some(0.0), "{after}");
    let back = [replica(1), ("state", "in_service")];
    assert_eq!(
        metric(&after, "chironfs_replica_state", &back),
        Some(1.0),
        "{after}"
    );
    assert!(
        metric(&after, "chironfs_membership_generation", &[]).unwrap()
            > metric(&before, "chironfs_membership_generation", &[]).unwrap(),
        "{after}"
    );
}
