//! The daemon's own files in each replica's `.chironfs` directory (the state record, the
//! journal, the ownership lease): reached through the replica's held root handle, never by
//! path, so a replica directory replaced under a running daemon (`rm -rf b; mkdir b`) is never
//! written; only regular files are read, without following a symlink or blocking on a FIFO,
//! and never more than a cap, so a hostile file cannot hang, flood or mislead the daemon.
//!
//! May touch: `sys` only.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::rules::state::{Found, META_DIR, STATE_FILE, StateRecord};
use crate::sys;

/// Largest state file read: a record is a few hundred bytes plus its generation history.
pub const MAX_STATE_FILE: u64 = 1 << 20;

/// What is at a replica root: its state record, whether it is empty, or why it cannot be
/// told (a hostile or broken state file, an I/O error): never more than a short excerpt.
pub fn read_state(root: BorrowedFd<'_>) -> Found {
    match read(root, STATE_FILE, MAX_STATE_FILE) {
        Ok(Some(data)) => match StateRecord::parse(&String::from_utf8_lossy(&data)) {
            Ok(record) => Found::Record(record),
            Err(e) => Found::Unreadable(format!("{META_DIR}/{STATE_FILE}: {}", excerpt(&e))),
        },
        Ok(None) => match sys::read_dir_all(root, c".") {
            Ok(entries) => Found::Missing {
                empty: entries
                    .iter()
                    .all(|e| e.name == "lost+found" || e.name == META_DIR),
            },
            Err(e) => Found::Unreadable(format!("cannot list it: {}", words(&e))),
        },
        Err(why) => Found::Unreadable(why),
    }
}

/// Writes `record` as the replica's state atomically and durably (temp file, fsync, rename,
/// fsync of the directory).
pub fn write_state(root: BorrowedFd<'_>, record: &StateRecord) -> io::Result<()> {
    replace(root, STATE_FILE, record.render().as_bytes(), true, false).map(drop)
}

/// At most 200 characters of `text`, control characters shown as '?': what a log line may
/// quote of a file a replica holds.
pub fn excerpt(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(200).is_some() {
        out.push_str("...");
    }
    out
}

/// The `.chironfs` directory beneath `root`, created (mode 0700) if missing.
pub fn meta_dir(root: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let name = CString::new(META_DIR).expect("no NUL");
    match sys::open_dir_path(root, &name) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            match sys::mkdir_at(root, &name, 0o700) {
                Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
                _ => {}
            }
            sys::open_dir_path(root, &name)
        }
        other => other,
    }
}

/// What `.chironfs/NAME` beneath `root` holds: None when it does not exist (nor the
/// directory). An Err names what is wrong in words fit for a log line: not a regular file (a
/// FIFO, a directory, a symlink), larger than `cap`, or the errno.
pub fn read(root: BorrowedFd<'_>, name: &str, cap: u64) -> Result<Option<Vec<u8>>, String> {
    let dir = match sys::open_dir_path(root, &CString::new(META_DIR).expect("no NUL")) {
        Ok(dir) => dir,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(format!("cannot open {META_DIR}: {}", words(&e))),
    };
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
    match open_file(dir.as_fd(), name, flags)? {
        None => Ok(None),
        Some(fd) => content(fd.as_fd(), name, cap).map(Some),
    }
}

/// Reads `.chironfs/NAME` beneath `root` and rewrites it in place through one open, so that a
/// network replica pays one open and one close for both: `decide` gets what it holds (None:
/// no such file) and says what to answer and what to write, if anything. The checks of
/// [`read`] apply; a missing file is made by [`replace`]. Like [`overwrite`], readers may see
/// a torn file while it is written. Err: words for a log line.
pub fn update<T>(
    root: BorrowedFd<'_>,
    name: &str,
    cap: u64,
    decide: impl FnOnce(Option<&[u8]>) -> Result<(T, Option<Vec<u8>>), String>,
) -> Result<T, String> {
    let dir = meta_dir(root).map_err(|e| format!("cannot open {META_DIR}: {}", words(&e)))?;
    let flags = libc::O_RDWR | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
    let Some(fd) = open_file(dir.as_fd(), name, flags)? else {
        let (answer, data) = decide(None)?;
        if let Some(data) = data {
            replace(root, name, &data, false, false)
                .map_err(|e| format!("cannot write {META_DIR}/{name}: {}", words(&e)))?;
        }
        return Ok(answer);
    };
    let old = content(fd.as_fd(), name, cap)?;
    let (answer, data) = decide(Some(&old))?;
    if let Some(data) = data {
        let written =
            sys::pwrite_full(fd.as_fd(), &data, 0).and_then(|()| match old.len() > data.len() {
                true => sys::ftruncate(fd.as_fd(), data.len() as u64),
                false => Ok(()),
            });
        written.map_err(|e| format!("cannot write {META_DIR}/{name}: {}", words(&e)))?;
    }
    Ok(answer)
}

/// Opens `NAME` in the metadata directory `dir` with `flags` (which must hold O_NOFOLLOW):
/// None when it does not exist; a symlink or another failure in words.
fn open_file(dir: BorrowedFd<'_>, name: &str, flags: i32) -> Result<Option<OwnedFd>, String> {
    let cname = CString::new(name).map_err(|_| format!("bad file name {name:?}"))?;
    match sys::open_beneath(dir, &cname, flags, 0, true) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(format!(
            "{META_DIR}/{name} is a symlink, not a regular file"
        )),
        Err(e) => Err(format!("cannot open {META_DIR}/{name}: {}", words(&e))),
    }
}

/// The content of the open file `fd` (`NAME`): a regular file of at most `cap` bytes, else why
/// not in words.
fn content(fd: BorrowedFd<'_>, name: &str, cap: u64) -> Result<Vec<u8>, String> {
    let st = sys::fstat(fd).map_err(|e| format!("cannot stat {META_DIR}/{name}: {}", words(&e)))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(format!(
            "{META_DIR}/{name} is {}, not a regular file",
            kind_words(st.st_mode)
        ));
    }
    if st.st_size as u64 > cap {
        return Err(format!(
            "{META_DIR}/{name} is {} bytes, more than the {cap} a chironfs file may be",
            st.st_size
        ));
    }
    let data = sys::pread_full(fd, st.st_size as usize + 1, 0)
        .map_err(|e| format!("cannot read {META_DIR}/{name}: {}", words(&e)))?;
    if data.len() as u64 > cap {
        return Err(format!(
            "{META_DIR}/{name} grew past the {cap} bytes a chironfs file may be"
        ));
    }
    Ok(data)
}

/// Replaces `.chironfs/NAME` beneath `root` atomically: a temp file written (and with
/// `durable` fsynced), renamed over the old one (and with `durable` the directory fsynced).
/// Returns the new file opened for appending when `append` (the journal's appends go there).
pub fn replace(
    root: BorrowedFd<'_>,
    name: &str,
    data: &[u8],
    durable: bool,
    append: bool,
) -> io::Result<Option<std::fs::File>> {
    let dir = meta_dir(root)?;
    let tmp =
        CString::new(format!("{name}.{}.tmp", std::process::id())).map_err(io::Error::other)?;
    let target = CString::new(name).map_err(io::Error::other)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW;
    let fd = sys::open_beneath(dir.as_fd(), &tmp, flags, 0o600, true)?;
    sys::pwrite_full(fd.as_fd(), data, 0)?;
    if durable {
        sys::fsync(fd.as_fd(), false)?;
    }
    drop(fd);
    sys::rename_at(dir.as_fd(), &tmp, dir.as_fd(), &target, 0)?;
    if durable {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        sys::fsync(
            sys::open_beneath(dir.as_fd(), c".", flags, 0, true)?.as_fd(),
            false,
        )?;
    }
    if !append {
        return Ok(None);
    }
    let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_NOFOLLOW;
    Ok(Some(std::fs::File::from(sys::open_beneath(
        dir.as_fd(),
        &target,
        flags,
        0,
        true,
    )?)))
}

/// Rewrites `.chironfs/NAME` in place (created by [`replace`] if missing): a file that
/// keeps its size needs no new block, so a full replica still takes it. Readers may see a torn
/// file while it is written: the content must carry its own check (the lease does).
pub fn overwrite(root: BorrowedFd<'_>, name: &str, data: &[u8]) -> io::Result<()> {
    let dir = meta_dir(root)?;
    let target = CString::new(name).map_err(io::Error::other)?;
    let flags = libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let fd = match sys::open_beneath(dir.as_fd(), &target, flags, 0, true) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            return replace(root, name, data, false, false).map(drop);
        }
        other => other?,
    };
    let st = sys::fstat(fd.as_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    sys::pwrite_full(fd.as_fd(), data, 0)?;
    if st.st_size as u64 > data.len() as u64 {
        sys::ftruncate(fd.as_fd(), data.len() as u64)?;
    }
    Ok(())
}

fn words(e: &io::Error) -> String {
    crate::view::words::describe_errno(e.raw_os_error().unwrap_or(libc::EIO))
}

fn kind_words(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFIFO => "a FIFO",
        libc::S_IFDIR => "a directory",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFSOCK => "a socket",
        libc::S_IFLNK => "a symlink",
        _ => "not a regular file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root(tag: &str) -> (std::path::PathBuf, std::fs::File) {
        let dir = std::env::temp_dir().join(format!("chironfs-meta-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = std::fs::File::open(&dir).unwrap();
        (dir, f)
    }

    #[test]
    fn state_files_are_written_atomically_and_read_back() {
        let (dir, f) = root("state");
        let fd = f.as_fd();
        assert_eq!(read_state(fd), Found::Missing { empty: true });
        std::fs::create_dir(dir.join("lost+found")).unwrap();
        assert_eq!(read_state(fd), Found::Missing { empty: true });
        std::fs::write(dir.join("f"), "x").unwrap();
        assert_eq!(read_state(fd), Found::Missing { empty: false });
        let r = StateRecord {
            set_id: 1,
            replica_id: 2,
            generation: crate::rules::state::Gen { number: 1, id: 11 },
            history: vec![],
            in_service: vec![2],
            clean: true,
            updated: 3,
            ..StateRecord::default()
        };
        write_state(fd, &r).unwrap();
        write_state(fd, &r).unwrap();
        assert_eq!(read_state(fd), Found::Record(r));
        let names: Vec<_> = std::fs::read_dir(dir.join(META_DIR))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from(STATE_FILE)],
            "no temp file left"
        );
        std::fs::write(dir.join(META_DIR).join(STATE_FILE), "junk").unwrap();
        assert!(matches!(read_state(fd), Found::Unreadable(_)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn update_reads_and_rewrites_through_one_open() {
        let (dir, f) = root("update");
        let fd = f.as_fd();
        // Missing: decided on None, then made.
        let seen = update(fd, "lease", 64, |old| {
            Ok((old.is_none(), Some(b"first one".to_vec())))
        });
        assert_eq!(seen, Ok(true));
        assert_eq!(read(fd, "lease", 64), Ok(Some(b"first one".to_vec())));
        // Present: the old content decides; a shorter one leaves no tail.
        let seen = update(fd, "lease", 64, |old| {
            Ok((old.map(<[u8]>::to_vec), Some(b"two".to_vec())))
        });
        assert_eq!(seen, Ok(Some(b"first one".to_vec())));
        assert_eq!(read(fd, "lease", 64), Ok(Some(b"two".to_vec())));
        // Nothing to write: left as it is.
        assert_eq!(update(fd, "lease", 64, |_| Ok(((), None))), Ok(()));
        assert_eq!(read(fd, "lease", 64), Ok(Some(b"two".to_vec())));
        // The checks of read: never followed, never past the cap, never a FIFO.
        let meta = dir.join(META_DIR);
        symlink("/etc/passwd", meta.join("link")).unwrap();
        assert!(
            update(fd, "link", 64, |_| Ok(((), None)))
                .unwrap_err()
                .contains("symlink")
        );
        std::fs::write(meta.join("big"), vec![b'x'; 100]).unwrap();
        assert!(
            update(fd, "big", 64, |_| Ok(((), None)))
                .unwrap_err()
                .contains("more than")
        );
        let fifo = CString::new(meta.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let why = update(fd, "fifo", 64, |_| Ok(((), Some(b"x".to_vec())))).unwrap_err();
        assert!(why.contains("a FIFO"), "{why}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hostile_files_are_named_not_followed_read_whole_or_quoted() {
        let (dir, f) = root("hostile");
        let fd = f.as_fd();
        let meta = dir.join(META_DIR);
        std::fs::create_dir(&meta).unwrap();
        nix::unistd::mkfifo(
            &meta.join(STATE_FILE),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        // A FIFO would block a plain open forever; here it is named at once.
        match read_state(fd) {
            Found::Unreadable(why) => {
                assert!(why.contains("is a FIFO, not a regular file"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(meta.join(STATE_FILE)).unwrap();
        symlink("/etc/passwd", meta.join(STATE_FILE)).unwrap();
        match read_state(fd) {
            Found::Unreadable(why) => assert!(why.contains("symlink"), "{why}"),
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(meta.join(STATE_FILE)).unwrap();
        std::fs::write(meta.join(STATE_FILE), "x".repeat(2 << 20)).unwrap();
        match read_state(fd) {
            Found::Unreadable(why) => {
                assert!(why.contains("more than the"), "{why}");
                assert!(
                    why.len() < 300,
                    "a short reason, not the file: {} bytes",
                    why.len()
                );
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(
            meta.join(STATE_FILE),
            format!("format=1\n{}", "y".repeat(5000)),
        )
        .unwrap();
        match read_state(fd) {
            Found::Unreadable(why) => assert!(why.len() < 300, "{} bytes", why.len()),
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
