//! `chironctl verify` on real mounts: identical replicas pass; every kind of corruption done
//! behind the mount's back (content of the same size, mode, owner, truncation, extra and
//! missing files, symlink target, xattr) is reported in words and in JSON with exit 1; `--queue`
//! heals it; a replica out of service, vanished or alone gives a clear error (exit 2), a
//! missing daemon exit 3. (A hung replica: `tests/faults.rs`, which has the fault injector.)
mod common;
use common::*;

use std::fs;
use std::os::unix::fs::FileExt;
use std::process::{Command, Output};

use chironfs::verify::Report;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// The replica paths as the daemon names them (canonical).
fn names(m: &Mount) -> Vec<String> {
    m.snapshot().replicas.into_iter().map(|r| r.path).collect()
}

/// A tree written through the mount: directories, files, a symlink, a hard link, an xattr,
/// a fifo and a file of several content chunks.
fn populate(m: &Mount) {
    fs::create_dir_all(m.path("data/sub")).unwrap();
    for name in [
        "same-size.txt",
        "mode.txt",
        "owner.txt",
        "gone.txt",
        "target.txt",
    ] {
        fs::write(
            m.path(&format!("data/{name}")),
            format!("hello world {name}\n"),
        )
        .unwrap();
    }
    fs::write(m.path("data/trunc.txt"), vec![b'x'; 100]).unwrap();
    let big: Vec<u8> = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(m.path("data/sub/big.bin"), big).unwrap();
    std::os::unix::fs::symlink("target.txt", m.path("data/link")).unwrap();
    fs::hard_link(m.path("data/target.txt"), m.path("data/sub/hard")).unwrap();
    set_xattr(&m.path("data/target.txt"), "user.k", b"v");
    let fifo = std::ffi::CString::new(m.path("data/fifo").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
}

#[test]
fn identical_replicas_verify_clean() {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(3).start();
    populate(&m);
    let out = m.chironctl(&["verify", "--content"]);
    assert_eq!(code(&out), 0, "{}{}", text(&out.stdout), text(&out.stderr));
    let t = text(&out.stdout);
    let n = names(&m);
    assert!(t.contains(": identical"), "{t}");
    assert!(
        t.contains(&n.join(", ")),
        "the summary names every replica: {t}"
    );
    assert!(t.contains("MiB of content"), "{t}");
    let out = m.chironctl(&["verify", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let r: Report = serde_json::from_slice(&out.stdout).expect("verify --json parses");
    assert!(r.identical() && r.differences.is_empty(), "{r:?}");
    // The root, data, its 9 entries and the 2 of data/sub (the hidden state dir not counted).
    assert_eq!(r.paths, 13, "{r:?}");
    assert_eq!(r.replicas.len(), 3);
}

#[test]
fn every_corruption_behind_the_mounts_back_is_reported_then_healed() {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(2).start();
    populate(&m);
    let n = names(&m);
    let (r0, r1) = (&n[0], &n[1]);
    // Content changed, same size, same mtime: only --content can see it.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.on(1, "data/same-size.txt"))
        .unwrap();
    f.write_all_at(b"HELLO", 0).unwrap();
    drop(f);
    let touch = Command::new("touch")
        .arg("-r")
        .arg(m.on(0, "data/same-size.txt"))
        .arg(m.on(1, "data/same-size.txt"))
        .status()
        .unwrap();
    assert!(touch.success());
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(m.on(1, "data/mode.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(m.on(1, "data/owner.txt"), Some(1234), Some(1234)).unwrap();
    let mtime = fs::metadata(m.on(1, "data/trunc.txt"))
        .unwrap()
        .modified()
        .unwrap();
    let t = fs::OpenOptions::new()
        .write(true)
        .open(m.on(1, "data/trunc.txt"))
        .unwrap();
    t.set_len(3).unwrap();
    t.set_modified(mtime).unwrap(); // only the size differs
    drop(t);
    fs::write(m.on(1, "data/extra.txt"), b"extra").unwrap();
    fs::remove_file(m.on(1, "data/gone.txt")).unwrap();
    let link = m.on(1, "data/link");
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("other", &link).unwrap();
    set_xattr(&m.on(1, "data/target.txt"), "user.k", b"changed");

    let out = m.chironctl(&["verify", "--content"]);
    let t = text(&out.stdout);
    eprintln!("{t}");
    assert_eq!(code(&out), 1, "{t}{}", text(&out.stderr));
    let want = [
        format!("/data/extra.txt: type missing on {r0}, regular file on {r1}"),
        format!("/data/gone.txt: type regular file on {r0}, missing on {r1}"),
        format!("/data/link: symlink target \"target.txt\" on {r0}, \"other\" on {r1}"),
        format!("/data/mode.txt: mode 0644 on {r0}, 0600 on {r1}"),
        format!("/data/owner.txt: owner 0:0 on {r0}, 1234:1234 on {r1}"),
        format!("/data/same-size.txt: content differs from byte 0 on {r1} (compared with {r0})"),
        format!("/data/sub/hard: xattr user.k \"v\" on {r0}, \"changed\" on {r1}"),
        format!("/data/target.txt: xattr user.k \"v\" on {r0}, \"changed\" on {r1}"),
        format!("/data/trunc.txt: size 100 on {r0}, 3 on {r1}"),
    ];
    for w in &want {
        assert!(t.lines().any(|l| l == w), "missing line {w:?} in:\n{t}");
    }
    assert!(t.contains("in 9 paths"), "{t}");

    // JSON: the same differences, machine readable.
    let out = m.chironctl(&["verify", "--content", "--json"]);
    assert_eq!(code(&out), 1);
    let r: Report = serde_json::from_slice(&out.stdout).expect("verify --json parses");
    assert_eq!(r.differing_paths, 9, "{r:?}");
    assert_eq!(r.difference_count as usize, r.differences.len());
    let trunc = r
        .differences
        .iter()
        .find(|d| d.path == "/data/trunc.txt")
        .expect("trunc.txt in the JSON");
    assert_eq!(trunc.what, "size");
    assert_eq!(
        trunc
            .values
            .iter()
            .map(|v| v.value.as_str())
            .collect::<Vec<_>>(),
        ["100", "3"]
    );
    assert_eq!(trunc.values[1].replica, 1);

    // Metadata only: the same-size content change goes unseen, the rest is there.
    let out = m.chironctl(&["verify"]);
    let t = text(&out.stdout);
    assert_eq!(code(&out), 1, "{t}");
    assert!(!t.contains("same-size"), "{t}");
    assert!(t.contains("in 8 paths"), "{t}");

    // Heal: the first replica's version is copied onto the other, the mount serving.
    let out = m.chironctl(&["verify", "--content", "--queue"]);
    let t = text(&out.stdout);
    assert_eq!(code(&out), 1, "{t}{}", text(&out.stderr));
    assert!(
        t.contains(&format!("healed /data/same-size.txt from {r0}")),
        "{t}"
    );
    let out = m.chironctl(&["verify", "--content"]);
    assert_eq!(code(&out), 0, "{}{}", text(&out.stdout), text(&out.stderr));
    assert_replicas_identical(&m);
    assert_eq!(
        fs::read(m.on(1, "data/same-size.txt")).unwrap(),
        b"hello world same-size.txt\n"
    );
    assert!(
        m.log_text().contains("verify healed 9 path(s)"),
        "{}",
        m.log_text()
    );
    // And the mount still writes to both.
    fs::write(m.path("data/after"), b"after").unwrap();
    assert_eq!(fs::read(m.on(1, "data/after")).unwrap(), b"after");
}

#[test]
fn one_replica_even_out_of_service_can_be_verified_but_not_healed() {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(3).start();
    populate(&m);
    let n = names(&m);
    let out = m.chironctl(&["disable", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    fs::write(m.path("data/new.txt"), b"written while 2 was out").unwrap();
    // The in-service replicas agree.
    let out = m.chironctl(&["verify"]);
    let t = text(&out.stdout);
    assert_eq!(code(&out), 0, "{t}{}", text(&out.stderr));
    assert!(t.contains(&format!("on {}, {} in", n[0], n[1])), "{t}");
    // The out-of-service one is compared with the first in-service one on request.
    let out = m.chironctl(&["verify", "2"]);
    let t = text(&out.stdout);
    assert_eq!(code(&out), 1, "{t}{}", text(&out.stderr));
    assert!(
        t.contains(&format!(
            "/data/new.txt: type regular file on {}, missing on {}",
            n[0], n[2]
        )),
        "{t}"
    );
    let out = m.chironctl(&["verify", &n[2], "--queue"]);
    assert_eq!(code(&out), 2, "{}", text(&out.stdout));
    let e = text(&out.stderr);
    assert!(e.contains("out of service") && e.contains("resync"), "{e}");
    // A name that is no replica.
    let out = m.chironctl(&["verify", "7"]);
    assert_eq!(code(&out), 2);
    assert!(
        text(&out.stderr).contains("no replica '7'"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn vanished_or_lone_replicas_give_a_clear_error() {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(2).start();
    populate(&m);
    let gone = m.tmp.path().join("r1-moved");
    fs::rename(&m.replicas[1], &gone).unwrap();
    assert!(
        m.wait_out_of_service(1),
        "the vanished replica stays in service"
    );
    let out = m.chironctl(&["verify"]);
    assert_eq!(code(&out), 2, "{}", text(&out.stdout));
    let e = text(&out.stderr);
    assert!(
        e.contains("cannot verify: 1 of 2 replicas in service") && e.contains("nothing to compare"),
        "{e}"
    );
    let out = m.chironctl(&["verify", "1"]);
    assert_eq!(code(&out), 2, "{}", text(&out.stdout));
    let e = text(&out.stderr);
    assert!(
        e.contains("cannot verify") && e.contains("its directory"),
        "{e}"
    );
    // No daemon at all: exit 3.
    let out = Command::new(chironctl_bin())
        .args(["-s", "/nonexistent/chironfs.sock", "verify"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot connect"),
        "{}",
        text(&out.stderr)
    );
    // Bad usage is trouble too, not "differences".
    let out = m.chironctl(&["verify", "--no-such-option"]);
    assert_eq!(code(&out), 2);
}

#[test]
fn verify_while_a_writer_works_reports_nothing_outside_its_files() {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(2).start();
    populate(&m);
    fs::create_dir(m.path("busy")).unwrap();
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let steps = std::sync::Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, steps, dir) = (stop.clone(), steps.clone(), m.path("busy"));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Relaxed) {
                let f = dir.join(format!("f{}", n % 50));
                fs::write(&f, vec![b'a' + (n % 26) as u8; (n % 7000) as usize]).unwrap();
                if n.is_multiple_of(3) {
                    let _ = fs::rename(&f, dir.join(format!("g{}", n % 20)));
                }
                if n.is_multiple_of(5) {
                    let _ = fs::remove_file(dir.join(format!("g{}", n % 20)));
                }
                n += 1;
                steps.store(n, Relaxed);
            }
            n
        })
    };
    let (mut settled, mut rounds) = (0, 0);
    // Until the writer did a few hundred steps while verifies ran (bounded, for a slow box).
    while steps.load(Relaxed) < 300 && rounds < 300 {
        rounds += 1;
        let out = m.chironctl(&["verify", "--content", "--json"]);
        assert!(
            matches!(code(&out), 0 | 1),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let r: Report = serde_json::from_slice(&out.stdout).expect("verify --json parses");
        for d in &r.differences {
            assert!(
                d.path.starts_with("/busy"),
                "a path nobody writes differs: {d:?}"
            );
        }
        settled += r.settled;
    }
    stop.store(true, Relaxed);
    let writes = writer.join().unwrap();
    eprintln!("{writes} writer steps during {rounds} verifies; {settled} paths settled on recheck");
    let out = m.chironctl(&["verify", "--content"]);
    assert_eq!(code(&out), 0, "{}{}", text(&out.stdout), text(&out.stderr));
    assert_replicas_identical(&m);
}

#[test]
fn a_name_that_is_not_utf8_is_reported_and_healed() {
    if !can_mount() {
        return;
    }
    use std::os::unix::ffi::OsStrExt;
    let m = MountBuilder::new(2).start();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    fs::write(m.mnt.join(name), b"latin-1 name").unwrap();
    fs::write(m.replicas[1].join(name), b"LATIN-1 NAME").unwrap();
    let n = names(&m);
    let out = m.chironctl(&["verify", "--content"]);
    let t = text(&out.stdout);
    assert_eq!(code(&out), 1, "{t}{}", text(&out.stderr));
    assert!(
        t.contains(&format!(
            "/caf\u{fffd}.txt: content differs from byte 0 on {} (compared with {})",
            n[1], n[0]
        )),
        "{t}"
    );
    let out = m.chironctl(&["verify", "--content", "--queue"]);
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    let out = m.chironctl(&["verify", "--content"]);
    assert_eq!(code(&out), 0, "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(fs::read(m.replicas[1].join(name)).unwrap(), b"latin-1 name");
}
