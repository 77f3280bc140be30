//! The one escaping of names in chironfs's own text files (the journal's paths, the member
//! paths of a state record): `%XX` for `%`, control bytes, DEL, bytes past ASCII and any byte
//! the format uses as a separator, so that no name can split a record.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Whether `b` is written as `%XX`, `also` naming the format's own separators.
pub fn needs_escape(b: u8, also: &[u8]) -> bool {
    b == b'%' || !(0x20..0x7f).contains(&b) || also.contains(&b)
}

/// Appends `path`, escaped (see [`needs_escape`]), to `out`. Byte by byte, without `format!`:
/// every mutation of a new path renders one journal line.
pub fn escape_into(out: &mut Vec<u8>, path: &Path, also: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in path.as_os_str().as_bytes() {
        if needs_escape(b, also) {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        } else {
            out.push(b);
        }
    }
}

/// The length of `path` escaped, without rendering it.
pub fn escaped_len(path: &Path, also: &[u8]) -> usize {
    path.as_os_str()
        .as_bytes()
        .iter()
        .map(|&b| if needs_escape(b, also) { 3 } else { 1 })
        .sum()
}

/// `path` escaped, as text.
pub fn escape(path: &Path, also: &[u8]) -> String {
    let mut out = Vec::with_capacity(escaped_len(path, also));
    escape_into(&mut out, path, also);
    // Only printable ASCII is left unescaped.
    String::from_utf8_lossy(&out).into_owned()
}

/// The path `s` names, or None when an escape is malformed.
pub fn unescape(s: &str) -> Option<PathBuf> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(PathBuf::from(OsStr::from_bytes(&out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_and_odd_bytes_round_trip() {
        let path = Path::new(OsStr::from_bytes(b"/srv/a,b:c%\n\xff"));
        let text = escape(path, b",");
        assert_eq!(text, "/srv/a%2Cb:c%25%0A%FF");
        assert_eq!(escaped_len(path, b","), text.len());
        assert_eq!(unescape(&text).unwrap(), path);
        assert_eq!(escape(Path::new("a,b"), b""), "a,b");
        assert!(unescape("%4").is_none());
        assert!(unescape("%zz").is_none());
    }
}
