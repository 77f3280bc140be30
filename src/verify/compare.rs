//! The comparison of one path across replicas ([`compare`]): each replica's [`Entry`] in, one
//! [`Difference`] per attribute that is not the same everywhere out, in words; and where a
//! file's bytes first differ ([`first_mismatch`], [`content_difference`]).
//!
//! Pure: no I/O, no engine. It may touch only the report's types (`report.rs`) and the
//! resync's [`Meta`], which is plain data (`resync/plan.rs`), so both compare the same fields.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::resync::Meta;
use crate::view::report::{Difference, MISSING, SAME_CONTENT, Value};

/// One replica's view of one path, as the comparison needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// lstat (and symlink target).
    pub meta: Meta,
    /// Extended attributes, name -> value.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// For a regular file with several links: the first path of the walk naming its inode on
    /// this replica. Equal on every replica when the hard-link shape is the same (the walk
    /// visits paths in the same order on each).
    pub first_link: Option<String>,
}

/// A replica as it takes part in a comparison of one path.
#[derive(Clone, Copy, Debug)]
pub struct Side<'a> {
    /// Replica index.
    pub index: usize,
    /// Replica directory.
    pub name: &'a str,
    /// Its entry, None when the path is missing there.
    pub entry: Option<&'a Entry>,
}

/// The word for a file type (`st_mode & S_IFMT`).
pub fn kind_name(kind: u32) -> &'static str {
    match kind {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symlink",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        _ => "unknown type",
    }
}

/// Bytes in words: printable text quoted, anything else in hex; long values shortened.
fn show_bytes(b: &[u8]) -> String {
    const SHOWN: usize = 48;
    let cut = &b[..b.len().min(SHOWN)];
    let more = if b.len() > SHOWN { "..." } else { "" };
    if cut.iter().all(|&c| (0x20..0x7f).contains(&c)) {
        format!("\"{}{more}\"", String::from_utf8_lossy(cut))
    } else {
        let hex: String = cut.iter().map(|c| format!("{c:02x}")).collect();
        format!("0x{hex}{more} ({} bytes)", b.len())
    }
}

/// One attribute: its name and its value on an entry (None where it does not apply to that
/// kind of file).
type Attr = (&'static str, fn(&Entry) -> Option<String>);

/// The attributes compared once the type agrees, in the order they are reported. Directory
/// sizes and mtimes are left out: they depend on each replica's filesystem and move with
/// every entry created in them (the entries themselves are compared). atimes move with every
/// read and are never compared.
const ATTRS: &[Attr] = &[
    ("size", |e| {
        (e.meta.kind == libc::S_IFREG).then(|| e.meta.size.to_string())
    }),
    ("symlink target", |e| e.meta.link.as_deref().map(show_bytes)),
    ("device", |e| {
        matches!(e.meta.kind, libc::S_IFCHR | libc::S_IFBLK)
            .then(|| format!("{}:{}", libc::major(e.meta.rdev), libc::minor(e.meta.rdev)))
    }),
    ("mode", |e| {
        (e.meta.kind != libc::S_IFLNK).then(|| format!("{:04o}", e.meta.perm))
    }),
    ("owner", |e| Some(format!("{}:{}", e.meta.uid, e.meta.gid))),
    ("mtime", |e| {
        (e.meta.kind != libc::S_IFDIR).then(|| format!("{}.{:09}", e.meta.mtime.0, e.meta.mtime.1))
    }),
    ("links", |e| {
        (e.meta.kind == libc::S_IFREG).then(|| e.meta.nlink.to_string())
    }),
    ("hard link", |e| {
        (e.meta.kind == libc::S_IFREG).then(|| {
            e.first_link
                .as_ref()
                .map_or("no other link".into(), |p| format!("same file as {p}"))
        })
    }),
];

/// A difference if the values are not all equal (None: the attribute does not apply).
fn differs(
    path: &str,
    what: String,
    sides: &[Side<'_>],
    values: &[Option<String>],
) -> Option<Difference> {
    let present: BTreeSet<&Option<String>> = values.iter().collect();
    if present.len() < 2 {
        return None;
    }
    Some(Difference {
        path: path.to_owned(),
        rel: PathBuf::from(path.trim_start_matches('/')),
        what,
        values: sides
            .iter()
            .zip(values)
            .map(|(s, v)| Value {
                replica: s.index,
                path: s.name.to_owned(),
                value: v.clone().unwrap_or_else(|| "-".into()),
            })
            .collect(),
    })
}

/// Compares one path across replicas (reference first) and lists what is not the same, one
/// [`Difference`] per attribute. A path missing somewhere or of another type somewhere gives
/// only the `type` difference: its other attributes cannot be compared.
pub fn compare(path: &str, sides: &[Side<'_>]) -> Vec<Difference> {
    let kinds: Vec<Option<String>> = sides
        .iter()
        .map(|s| {
            Some(
                s.entry
                    .map_or(MISSING, |e| kind_name(e.meta.kind))
                    .to_owned(),
            )
        })
        .collect();
    if let Some(d) = differs(path, "type".into(), sides, &kinds) {
        return vec![d];
    }
    let entries: Vec<&Entry> = sides.iter().filter_map(|s| s.entry).collect();
    if entries.len() != sides.len() {
        return Vec::new(); // missing everywhere
    }
    let mut out = Vec::new();
    for (what, value) in ATTRS {
        let values: Vec<Option<String>> = entries.iter().map(|e| value(e)).collect();
        out.extend(differs(path, (*what).into(), sides, &values));
    }
    let names: BTreeSet<&Vec<u8>> = entries.iter().flat_map(|e| e.xattrs.keys()).collect();
    for name in names {
        let values: Vec<Option<String>> = entries
            .iter()
            .map(|e| Some(e.xattrs.get(name).map_or(MISSING.into(), |v| show_bytes(v))))
            .collect();
        let what = format!("xattr {}", String::from_utf8_lossy(name));
        out.extend(differs(path, what, sides, &values));
    }
    out
}

/// Where `b` first differs from `a` (a shorter one differs where it ends), None if equal.
pub fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => Some(i),
        None if a.len() != b.len() => Some(a.len().min(b.len())),
        None => None,
    }
}

/// The `content` difference of a path: `mismatch[i]` is where replica `i` first differs from
/// the reference (`sides[0]`), None where it matches.
pub fn content_difference(
    path: &str,
    sides: &[Side<'_>],
    mismatch: &[Option<u64>],
) -> Option<Difference> {
    if mismatch.iter().all(Option::is_none) {
        return None;
    }
    Some(Difference {
        path: path.to_owned(),
        rel: PathBuf::from(path.trim_start_matches('/')),
        what: "content".into(),
        values: sides
            .iter()
            .zip(mismatch)
            .map(|(s, m)| Value {
                replica: s.index,
                path: s.name.to_owned(),
                value: match m {
                    Some(at) => format!("differs from byte {at}"),
                    None => SAME_CONTENT.into(),
                },
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: u32) -> Meta {
        Meta {
            kind,
            perm: 0o644,
            uid: 0,
            gid: 0,
            size: 10,
            mtime: (1_700_000_000, 5),
            atime: (1_700_000_000, 5),
            rdev: 0,
            nlink: 1,
            ino: (1, 2),
            link: None,
        }
    }

    fn entry(kind: u32) -> Entry {
        Entry {
            meta: meta(kind),
            xattrs: BTreeMap::new(),
            first_link: None,
        }
    }

    fn two<'a>(a: Option<&'a Entry>, b: Option<&'a Entry>) -> Vec<Side<'a>> {
        vec![
            Side {
                index: 0,
                name: "/r1",
                entry: a,
            },
            Side {
                index: 1,
                name: "/r2",
                entry: b,
            },
        ]
    }

    fn lines(d: &[Difference]) -> Vec<String> {
        d.iter().map(Difference::describe).collect()
    }

    #[test]
    fn equal_entries_do_not_differ() {
        let a = entry(libc::S_IFREG);
        let mut b = a.clone();
        // The inode number and atime are per replica: never compared.
        b.meta.ino = (7, 8);
        b.meta.atime = (1, 1);
        assert!(compare("/f", &two(Some(&a), Some(&b))).is_empty());
        assert!(compare("/f", &two(None, None)).is_empty());
    }

    #[test]
    fn each_attribute_is_named_with_both_values() {
        let a = entry(libc::S_IFREG);
        let mut b = a.clone();
        b.meta.size = 12;
        b.meta.perm = 0o600;
        b.meta.uid = 1000;
        b.meta.mtime = (1_700_000_000, 6);
        assert_eq!(
            lines(&compare("/a/b", &two(Some(&a), Some(&b)))),
            [
                "/a/b: size 10 on /r1, 12 on /r2",
                "/a/b: mode 0644 on /r1, 0600 on /r2",
                "/a/b: owner 0:0 on /r1, 1000:0 on /r2",
                "/a/b: mtime 1700000000.000000005 on /r1, 1700000000.000000006 on /r2",
            ]
        );
    }

    #[test]
    fn missing_or_other_type_is_one_difference() {
        let a = entry(libc::S_IFREG);
        let d = entry(libc::S_IFDIR);
        assert_eq!(
            lines(&compare("/x", &two(Some(&a), None))),
            ["/x: type regular file on /r1, missing on /r2"]
        );
        assert_eq!(
            lines(&compare("/x", &two(Some(&a), Some(&d)))),
            ["/x: type regular file on /r1, directory on /r2"]
        );
    }

    #[test]
    fn directories_ignore_size_and_mtime_symlinks_compare_targets_not_modes() {
        let a = entry(libc::S_IFDIR);
        let mut b = a.clone();
        b.meta.size = 4096;
        b.meta.mtime = (2, 0);
        assert!(compare("/d", &two(Some(&a), Some(&b))).is_empty());
        let mut l1 = entry(libc::S_IFLNK);
        l1.meta.link = Some(b"target".to_vec());
        let mut l2 = l1.clone();
        l2.meta.link = Some(b"elsewhere".to_vec());
        l2.meta.perm = 0o777;
        assert_eq!(
            lines(&compare("/l", &two(Some(&l1), Some(&l2)))),
            ["/l: symlink target \"target\" on /r1, \"elsewhere\" on /r2"]
        );
    }

    #[test]
    fn xattrs_devices_and_hard_links() {
        let mut a = entry(libc::S_IFREG);
        a.xattrs.insert(b"user.k".to_vec(), b"v1".to_vec());
        a.xattrs.insert(b"user.bin".to_vec(), vec![0, 1, 2]);
        let mut b = a.clone();
        b.xattrs.insert(b"user.k".to_vec(), b"v2".to_vec());
        b.xattrs.remove(b"user.bin".as_slice());
        assert_eq!(
            lines(&compare("/f", &two(Some(&a), Some(&b)))),
            [
                "/f: xattr user.bin 0x000102 (3 bytes) on /r1, missing on /r2",
                "/f: xattr user.k \"v1\" on /r1, \"v2\" on /r2",
            ]
        );
        let mut c1 = entry(libc::S_IFCHR);
        c1.meta.rdev = libc::makedev(1, 3);
        let mut c2 = c1.clone();
        c2.meta.rdev = libc::makedev(1, 5);
        assert_eq!(
            lines(&compare("/c", &two(Some(&c1), Some(&c2)))),
            ["/c: device 1:3 on /r1, 1:5 on /r2"]
        );
        let mut h1 = entry(libc::S_IFREG);
        h1.meta.nlink = 2;
        h1.first_link = Some("/a".into());
        let mut h2 = h1.clone();
        h2.first_link = Some("/b".into());
        assert_eq!(
            lines(&compare("/b", &two(Some(&h1), Some(&h2)))),
            ["/b: hard link same file as /a on /r1, same file as /b on /r2"]
        );
        let mut h3 = h1.clone();
        h3.meta.nlink = 1;
        h3.first_link = None;
        assert_eq!(
            lines(&compare("/b", &two(Some(&h1), Some(&h3)))),
            [
                "/b: links 2 on /r1, 1 on /r2",
                "/b: hard link same file as /a on /r1, no other link on /r2"
            ]
        );
    }

    #[test]
    fn three_replicas_list_every_value() {
        let a = entry(libc::S_IFREG);
        let mut c = a.clone();
        c.meta.size = 3;
        let mut sides = two(Some(&a), Some(&a));
        sides.push(Side {
            index: 2,
            name: "/r3",
            entry: Some(&c),
        });
        assert_eq!(
            lines(&compare("/f", &sides)),
            ["/f: size 10 on /r1, 10 on /r2, 3 on /r3"]
        );
    }

    #[test]
    fn content_mismatch_offsets_and_wording() {
        assert_eq!(first_mismatch(b"abc", b"abc"), None);
        assert_eq!(first_mismatch(b"abc", b"abd"), Some(2));
        assert_eq!(first_mismatch(b"abc", b"ab"), Some(2));
        assert_eq!(first_mismatch(b"", b"x"), Some(0));
        let a = entry(libc::S_IFREG);
        let sides = two(Some(&a), Some(&a));
        assert_eq!(content_difference("/f", &sides, &[None, None]), None);
        let d = content_difference("/f", &sides, &[None, Some(4096)]).unwrap();
        assert_eq!(
            d.describe(),
            "/f: content differs from byte 4096 on /r2 (compared with /r1)"
        );
    }
}
