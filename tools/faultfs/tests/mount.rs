//! Mounts faultfs (needs root and /dev/fuse), checks passthrough, then injects faults.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

fn is_mounted(mnt: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mnt = mnt.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(&*mnt) && l.contains(" - fuse faultfs "))
}

/// Running faultfs; on drop: SIGTERM, then lazy unmount and kill as a fallback.
struct Mount {
    child: Child,
    dir: PathBuf,
    mnt: PathBuf,
}

impl Mount {
    fn start(dir: PathBuf) -> Mount {
        let (src, mnt) = (dir.join("src"), dir.join("mnt"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&mnt).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_faultfs"))
            .arg("--control")
            .args([dir.join("control"), src, mnt.clone()])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut mount = Mount { child, dir, mnt };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_mounted(&mount.mnt) {
            if let Some(status) = mount.child.try_wait().unwrap() {
                panic!("faultfs exited early: {status}");
            }
            assert!(Instant::now() < deadline, "faultfs did not mount");
            sleep(Duration::from_millis(20));
        }
        mount
    }

    fn control(&self, rules: &str) {
        fs::write(self.dir.join("control"), rules).unwrap();
    }

    /// SIGTERM and wait for a clean exit; true if faultfs exited successfully.
    fn stop(&mut self) -> bool {
        if self.child.try_wait().unwrap().is_none() {
            // SAFETY: plain syscall on our child's pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !is_mounted(&self.mnt) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn errno<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    r.expect_err("expected an error").raw_os_error().unwrap()
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn get_xattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and buffer.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

#[test]
fn passthrough_and_faults() {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
        eprintln!("skipping faultfs mount test: needs root and /dev/fuse");
        return;
    }
    let dir = std::env::temp_dir().join(format!("faultfs-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let mut m = Mount::start(dir.clone());
    let (mnt, src) = (m.mnt.clone(), dir.join("src"));

    // Passthrough.
    fs::write(mnt.join("a"), b"hello").unwrap();
    assert_eq!(fs::read(mnt.join("a")).unwrap(), b"hello");
    assert_eq!(fs::read(src.join("a")).unwrap(), b"hello");
    fs::create_dir(mnt.join("d")).unwrap();
    fs::rename(mnt.join("a"), mnt.join("d/b")).unwrap();
    assert_eq!(fs::read(src.join("d/b")).unwrap(), b"hello");
    assert!(!mnt.join("a").exists());
    std::os::unix::fs::symlink("d/b", mnt.join("link")).unwrap();
    assert_eq!(fs::read_link(mnt.join("link")).unwrap(), Path::new("d/b"));
    assert_eq!(fs::read(mnt.join("link")).unwrap(), b"hello");
    fs::hard_link(mnt.join("d/b"), mnt.join("hard")).unwrap();
    assert_eq!(fs::metadata(mnt.join("hard")).unwrap().len(), 5);
    fs::set_permissions(mnt.join("d/b"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(src.join("d/b")).unwrap().permissions().mode() & 0o777,
        0o640
    );
    let fifo = CString::new(mnt.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    assert!(
        fs::symlink_metadata(src.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let names: Vec<_> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    match set_xattr(&src.join("d/b"), "user.probe", b"1") {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            eprintln!("skipping xattr checks: {} lacks user xattrs", src.display())
        }
        r => {
            r.unwrap();
            set_xattr(&mnt.join("d/b"), "user.test", b"value").unwrap();
            assert_eq!(get_xattr(&src.join("d/b"), "user.test").unwrap(), b"value");
            assert_eq!(get_xattr(&mnt.join("d/b"), "user.probe").unwrap(), b"1");
        }
    }

    // Faults.
    m.control("write EIO\n");
    let mut f = OpenOptions::new()
        .write(true)
        .open(mnt.join("d/b"))
        .unwrap();
    assert_eq!(
        errno(f.write_all(b"x").and_then(|_| f.sync_all())),
        libc::EIO
    );
    m.control("# off\n");
    f.write_all(b"y").unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::read(src.join("d/b")).unwrap(), b"yello");

    m.control("read EIO\n");
    let mut buf = Vec::new();
    assert_eq!(
        errno(
            fs::File::open(mnt.join("d/b"))
                .unwrap()
                .read_to_end(&mut buf)
        ),
        libc::EIO
    );
    // With TTL 0 and default_permissions, path walks and opens also send getattr.
    m.control("getattr EIO d/\n");
    assert_eq!(errno(fs::metadata(mnt.join("d/b"))), libc::EIO);
    fs::metadata(mnt.join("fifo")).unwrap(); // path-limited rule: others unaffected
    m.control("mutations EROFS\n");
    assert_eq!(errno(fs::create_dir(mnt.join("e"))), libc::EROFS);
    assert_eq!(errno(fs::remove_file(mnt.join("hard"))), libc::EROFS);
    m.control("readlink hang\n");
    let link = mnt.join("link");
    let reader = std::thread::spawn(move || fs::read_link(link));
    sleep(Duration::from_millis(400));
    assert!(!reader.is_finished(), "readlink should hang");
    m.control("");
    assert_eq!(reader.join().unwrap().unwrap(), Path::new("d/b"));
    fs::remove_file(mnt.join("hard")).unwrap();

    // Clean shutdown on SIGTERM.
    assert!(m.stop(), "faultfs should exit cleanly on SIGTERM");
    assert!(!is_mounted(&mnt));
}
