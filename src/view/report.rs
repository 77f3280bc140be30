//! What `chironctl verify` gets back ([`Report`]) and how it reads: the differences
//! ([`Difference`], one attribute of one path, each replica's value), their lines, the summary,
//! the JSON form sent over the control socket, and the paths a heal copies ([`heal_paths`]).
//!
//! Pure: no I/O, no engine; it may touch only `view::words`. It lives in `view`, not in
//! `verify`, because the admin handler's interface (`view::snapshot::ControlHandler`) returns it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::view::words::sanitize_value;

/// Most differences carried in one report: a replica that lost its whole tree differs on
/// every path, and the answer must still fit the control socket's line limit. The counts stay
/// exact beyond it.
pub const MAX_DIFFERENCES: usize = 10_000;

/// Value of a path that one replica does not have.
pub const MISSING: &str = "missing";
/// Value, in a `content` difference, of a replica whose bytes match the reference's.
pub const SAME_CONTENT: &str = "same";

/// One replica's value of a differing attribute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// Replica index (command-line order).
    pub replica: usize,
    /// Replica directory.
    pub path: String,
    /// The attribute on that replica, in words ("missing" when the path is not there).
    pub value: String,
}

/// One attribute of one path that is not the same on every compared replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// Path inside the mount ("/a/b").
    pub path: String,
    /// What differs: `type`, `size`, `mode`, `owner`, `mtime`, `symlink target`, `device`,
    /// `links`, `hard link`, `xattr NAME` or `content`.
    pub what: String,
    /// Each compared replica's value, reference replica first.
    pub values: Vec<Value>,
    /// The path relative to the replica roots, exactly (`path` is for reading: a name that is
    /// not UTF-8 is shown lossily there). Set by the walk for the recheck and the heal; not
    /// sent over the socket.
    #[serde(skip)]
    pub rel: PathBuf,
}

impl Difference {
    /// The line `chironctl verify` prints: "/a/b: size 10 on /r1, 12 on /r2".
    pub fn describe(&self) -> String {
        let on = |v: &Value| format!("{} on {}", v.value, v.path);
        if self.what == "content" {
            // "differs from byte N" only means something next to the replica it was compared
            // with: name the reference, list the others.
            let (reference, others) = self
                .values
                .split_first()
                .map_or((None, &[][..]), |(r, o)| (Some(r), o));
            let differing: Vec<String> = others
                .iter()
                .filter(|v| v.value != SAME_CONTENT)
                .map(on)
                .collect();
            return format!(
                "{}: content {} (compared with {})",
                self.path,
                differing.join(", "),
                reference.map_or("?", |r| r.path.as_str())
            );
        }
        let values: Vec<String> = self.values.iter().map(on).collect();
        format!("{}: {} {}", self.path, self.what, values.join(", "))
    }
}

/// The paths a heal (`verify --queue`) copies, inside the mount without the leading `/`:
/// each differing path once, `true` (copy its whole subtree) when its type differs, since
/// the walk did not go below it.
pub fn heal_paths(differences: &[Difference]) -> BTreeMap<PathBuf, bool> {
    let mut paths: BTreeMap<PathBuf, bool> = BTreeMap::new();
    for d in differences {
        *paths.entry(d.rel.clone()).or_default() |= d.what == "type";
    }
    paths
}

/// A compared replica, in a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compared {
    /// Replica index.
    pub index: usize,
    /// Replica directory.
    pub path: String,
}

/// What `chironctl verify` gets back from the daemon.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The replicas compared, the reference (first in-service in priority order) first.
    pub replicas: Vec<Compared>,
    /// Whether file content was compared too.
    pub content: bool,
    /// Paths compared (the root included).
    pub paths: u64,
    /// Bytes of file content compared, per replica.
    pub bytes: u64,
    /// How long the walk took, in milliseconds.
    pub millis: u64,
    /// Paths with at least one difference (exact, even beyond [`MAX_DIFFERENCES`]).
    pub differing_paths: u64,
    /// Differences found (exact count).
    pub difference_count: u64,
    /// The differences, at most [`MAX_DIFFERENCES`] of them, in walk order.
    pub differences: Vec<Difference>,
    /// Paths that differed when the walk passed them but agree when compared again right
    /// after (changed through the mount meanwhile); not reported as differences.
    #[serde(default)]
    pub settled: u64,
    /// Paths copied from the reference onto the other replicas (`verify --queue`).
    #[serde(default)]
    pub healed: Vec<String>,
}

impl Report {
    /// True when nothing differs.
    pub fn identical(&self) -> bool {
        self.difference_count == 0
    }

    /// The closing line: counts and time.
    pub fn summary(&self) -> String {
        let names: Vec<&str> = self.replicas.iter().map(|r| r.path.as_str()).collect();
        let content = if self.content {
            format!(", {} of content", human_bytes(self.bytes))
        } else {
            String::new()
        };
        let verdict = if self.identical() {
            "identical".to_owned()
        } else {
            let shown = if self.differences.len() as u64 != self.difference_count {
                format!(" ({} listed)", self.differences.len())
            } else {
                String::new()
            };
            format!(
                "{} difference{} in {} path{}{shown}",
                self.difference_count,
                plural(self.difference_count),
                self.differing_paths,
                plural(self.differing_paths),
            )
        };
        let settled = if self.settled > 0 {
            format!(" ({} changed during the walk and agree now)", self.settled)
        } else {
            String::new()
        };
        format!(
            "verified {} path{}{content} on {} in {:.1} s: {verdict}{settled}",
            self.paths,
            plural(self.paths),
            names.join(", "),
            self.millis as f64 / 1000.0
        )
    }

    /// The whole human-readable output: one line per difference, the healed paths, the
    /// summary.
    pub fn format(&self) -> String {
        let mut out = String::new();
        for d in &self.differences {
            out.push_str(&sanitize_value(&d.describe()));
            out.push('\n');
        }
        for p in &self.healed {
            out.push_str(&format!(
                "healed {} from {}\n",
                sanitize_value(p),
                self.replicas.first().map_or("?", |r| r.path.as_str())
            ));
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }
}

/// "s" unless `n` is one.
fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// A byte count in binary units, one decimal ("3.0 MiB").
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A difference as the comparison makes it, `values` on /r1, /r2, ... in order.
    fn difference(path: &str, what: &str, values: &[&str]) -> Difference {
        Difference {
            path: path.into(),
            rel: PathBuf::from(path.trim_start_matches('/')),
            what: what.into(),
            values: values
                .iter()
                .enumerate()
                .map(|(i, v)| Value {
                    replica: i,
                    path: format!("/r{}", i + 1),
                    value: (*v).into(),
                })
                .collect(),
        }
    }

    #[test]
    fn heal_paths_are_unique_and_recursive_only_for_type_differences() {
        let diffs = [
            difference("/d/f", "size", &["10", "1"]),
            difference("/d/f", "mode", &["0644", "0600"]),
            difference("/x", "type", &["directory", MISSING]),
        ];
        let p = heal_paths(&diffs);
        assert_eq!(
            p.into_iter().collect::<Vec<_>>(),
            [(PathBuf::from("d/f"), false), (PathBuf::from("x"), true)]
        );
    }

    #[test]
    fn summary_counts_and_json_round_trip() {
        let mut r = Report {
            replicas: vec![
                Compared {
                    index: 0,
                    path: "/r1".into(),
                },
                Compared {
                    index: 1,
                    path: "/r2".into(),
                },
            ],
            paths: 12,
            millis: 1500,
            ..Report::default()
        };
        assert!(r.identical());
        assert_eq!(
            r.summary(),
            "verified 12 paths on /r1, /r2 in 1.5 s: identical"
        );
        r.differences = vec![difference("/f", "size", &["10", "1"])];
        r.difference_count = 1;
        r.differing_paths = 1;
        r.content = true;
        r.bytes = 3 << 20;
        assert_eq!(
            r.format(),
            "/f: size 10 on /r1, 1 on /r2\n\
             verified 12 paths, 3.0 MiB of content on /r1, /r2 in 1.5 s: 1 difference in 1 path\n"
        );
        let json = serde_json::to_string(&r).unwrap();
        // Everything but the exact relative path, which stays in the daemon.
        r.differences[0].rel = PathBuf::new();
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), r);
    }
}
