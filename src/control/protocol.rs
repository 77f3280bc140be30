//! The control protocol both ends speak: the request and response types, one JSON object per
//! line (`docs/control-protocol.md`), and the limits on a line. No sockets, no threads; imports
//! only `view::snapshot` and the verify report a response carries.

use std::io::{self, BufRead, Read};

use serde::{Deserialize, Deserializer, Serialize};

use crate::view::report::Report;
use crate::view::snapshot::Snapshot;

/// Protocol version carried in every response, so a client can refuse a daemon it does not
/// understand instead of misreading it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line accepted; requests are tiny, anything longer is garbage.
pub(super) const MAX_REQUEST_LINE: usize = 64 * 1024;
/// Longest response line accepted by the client (a snapshot of many replicas is still small).
pub(super) const MAX_RESPONSE_LINE: usize = 16 * 1024 * 1024;

/// One request line. Typed so that the server and `chironctl` cannot disagree on spelling.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Full snapshot of the replica set.
    Status,
    /// Same snapshot; `chironctl stats` shows only the counters.
    Stats,
    /// The daemon's counters in the Prometheus text exposition format (`chironctl metrics`),
    /// answered in `metrics`.
    Metrics,
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
    /// Add a member online (`chironctl add`): an empty directory, or a former member of this
    /// set, joins out of service and serves once its resync is done.
    Add {
        /// Absolute path of the directory.
        path: String,
        /// A witness rather than a data replica.
        #[serde(default)]
        witness: bool,
        /// Content bytes per second for its resync (0: no limit); absent: the daemon's
        /// `--resync-rate`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate: Option<u64>,
    },
    /// Remove a member online (`chironctl remove`); its directory is left as it is.
    Remove {
        /// Replica index (as a string or a JSON number) or path.
        #[serde(deserialize_with = "string_or_number")]
        replica: String,
    },
    /// Replace a member online (`chironctl replace`): `new` is added and synced while `old`
    /// serves, then `old` leaves.
    Replace {
        /// Replica index (as a string or a JSON number) or path.
        #[serde(deserialize_with = "string_or_number")]
        old: String,
        /// Absolute path of the new directory.
        new: String,
        /// Content bytes per second for the new replica's resync, as for `add`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate: Option<u64>,
    },
}

/// A replica named in a request: hand-written requests (`socat`) may give its index as a JSON
/// number, the typed ones give a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrNumber {
    Str(String),
    Num(u64),
}

impl From<StringOrNumber> for String {
    fn from(s: StringOrNumber) -> String {
        match s {
            StringOrNumber::Str(s) => s,
            StringOrNumber::Num(n) => n.to_string(),
        }
    }
}

/// [`string_or_number`] for an optional field (absent or `null`: None).
fn opt_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<StringOrNumber>::deserialize(d)?.map(String::from))
}

/// Accepts `"1"` and `1` alike, so hand-written requests (`socat`) are not refused for quoting.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(StringOrNumber::deserialize(d)?.into())
}

/// One response line: `ok` plus `snapshot`, `message` or `error` (and a `verify` report or
/// the `metrics` text with their message).
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
    /// Answer to `metrics`: the Prometheus text exposition, many lines in one string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
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
            metrics: None,
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
            metrics: None,
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
            metrics: None,
        }
    }

    /// A successful answer carrying a verify report.
    pub fn with_verify(r: Report) -> Self {
        Response {
            verify: Some(r),
            ..Response::with_message("verify done")
        }
    }

    /// A successful answer carrying the metrics text.
    pub fn with_metrics(text: String) -> Self {
        Response {
            metrics: Some(text),
            ..Response::with_message("metrics")
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

/// One request or response as it goes on the wire: its JSON and a newline. Both ends frame
/// with this, so they cannot disagree on the framing.
pub(super) fn encode_line<T: Serialize>(message: &T) -> serde_json::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    Ok(line)
}

/// Reads one `\n`-terminated line of at most `limit` bytes; `None` at end of stream. A last
/// line without newline is accepted.
pub(super) fn read_line_limited<R: BufRead>(
    r: &mut R,
    limit: usize,
) -> io::Result<Option<Vec<u8>>> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
            serde_json::from_str::<Request>(r#"{"cmd":"metrics"}"#).unwrap(),
            Request::Metrics
        );
        let r = Response::with_metrics("a 1\nb 2\n".into());
        let back: Response = serde_json::from_slice(&encode_line(&r).unwrap()).unwrap();
        assert_eq!(back.metrics.as_deref(), Some("a 1\nb 2\n"));
        assert_eq!(
            serde_json::to_string(&Response::with_message("done")).unwrap(),
            r#"{"ok":true,"version":1,"message":"done"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::with_error("no")).unwrap(),
            r#"{"ok":false,"version":1,"error":"no"}"#
        );
    }
}
