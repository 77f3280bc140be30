//! Many callers at once: identities stay per request (owners, supplementary groups), and
//! concurrent writers to one file leave every replica byte-identical.
mod common;
use common::*;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::sync::{Arc, Barrier};

#[test]
fn concurrent_users_each_own_their_files_on_every_replica() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::create_dir(m.path("shared")).unwrap();
    fs::set_permissions(m.path("shared"), fs::Permissions::from_mode(0o1777)).unwrap();
    let users: Vec<u32> = (1001..=1004).collect();
    let barrier = Arc::new(Barrier::new(users.len()));
    let dir = m.path("shared");
    let workers: Vec<_> = users
        .iter()
        .map(|&uid| {
            let (barrier, dir) = (Arc::clone(&barrier), dir.clone());
            std::thread::spawn(move || {
                barrier.wait();
                // Shell builtins only: 200 creates (with content) and a directory per user.
                let cmd = format!(
                    "cd {} && mkdir d{uid} && i=0; while [ $i -lt 200 ]; do \
                     echo $i > f{uid}_$i || exit 1; i=$((i+1)); done",
                    dir.display()
                );
                run_as(uid, uid, &[], &cmd)
            })
        })
        .collect();
    for (uid, w) in users.iter().zip(workers) {
        let out = w.join().unwrap();
        assert!(
            out.status.success(),
            "uid {uid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut wrong = Vec::new();
    for &uid in &users {
        for i in 0..200 {
            let rel = format!("shared/f{uid}_{i}");
            for (where_, p) in [
                ("mount".to_string(), m.path(&rel)),
                ("replica 0".to_string(), m.on(0, &rel)),
                ("replica 1".to_string(), m.on(1, &rel)),
            ] {
                let md = fs::metadata(&p).unwrap();
                if (md.uid(), md.gid()) != (uid, uid) {
                    wrong.push(format!("{rel} on {where_}: {}:{}", md.uid(), md.gid()));
                }
            }
            assert_eq!(fs::read_to_string(m.on(1, &rel)).unwrap(), format!("{i}\n"));
        }
        for i in 0..2 {
            let md = fs::metadata(m.on(i, &format!("shared/d{uid}"))).unwrap();
            assert_eq!(
                (md.uid(), md.gid()),
                (uid, uid),
                "dir of {uid} on replica {i}"
            );
        }
    }
    assert!(
        wrong.is_empty(),
        "{} files with the wrong owner, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    // And nobody can remove another user's file in the sticky directory.
    let other = m.path("shared/f1002_0");
    let out = run_as(1001, 1001, &[], &format!("rm -f {}", other.display()));
    assert!(!out.status.success(), "sticky bit ignored");
    assert!(m.on(0, "shared/f1002_0").exists() && m.on(1, "shared/f1002_0").exists());
    assert_replicas_identical(&m);
}

#[test]
fn supplementary_groups_are_honoured() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::write(m.path("secret"), b"group eyes only\n").unwrap();
    std::os::unix::fs::chown(m.path("secret"), Some(0), Some(2000)).unwrap();
    fs::set_permissions(m.path("secret"), fs::Permissions::from_mode(0o640)).unwrap();
    let secret = m.path("secret").display().to_string();

    let with = run_as(1001, 1001, &[2000], &format!("cat {secret}"));
    assert!(
        with.status.success(),
        "uid 1001 in group 2000 must read it: {}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert_eq!(with.stdout, b"group eyes only\n");
    let without = run_as(1001, 1001, &[], &format!("cat {secret}"));
    assert!(!without.status.success(), "read without the group");
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("Permission denied"),
        "EACCES expected: {}",
        String::from_utf8_lossy(&without.stderr)
    );
    // access(2) agrees with open(2) (ChironFS 1.1 answered access as root).
    let probe = format!("test -r {secret} && echo R; test -w {secret} && echo W; true");
    assert_eq!(run_as(1001, 1001, &[2000], &probe).stdout, b"R\n");
    assert_eq!(run_as(1001, 1001, &[], &probe).stdout, b"");

    // Creating in a directory writable only through a supplementary group: the replicas
    // must see the caller's groups too, not only the kernel.
    fs::create_dir(m.path("team")).unwrap();
    std::os::unix::fs::chown(m.path("team"), Some(0), Some(2000)).unwrap();
    fs::set_permissions(m.path("team"), fs::Permissions::from_mode(0o770)).unwrap();
    let team = m.path("team").display().to_string();
    let out = run_as(
        1001,
        1001,
        &[2000],
        &format!("echo work > {team}/by1001 && mkdir {team}/sub"),
    );
    assert!(
        out.status.success(),
        "create via group 2000: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..2 {
        let md = fs::metadata(m.on(i, "team/by1001")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1001, 1001), "owner on replica {i}");
        assert!(m.on(i, "team/sub").is_dir());
    }
    let out = run_as(1002, 1002, &[], &format!("echo x > {team}/by1002"));
    assert!(!out.status.success(), "create without the group must fail");
    assert!(!m.on(0, "team/by1002").exists() && !m.on(1, "team/by1002").exists());
    // The refusal was the caller's, not a replica fault: both stay in service.
    let snap = m.snapshot();
    assert!(snap.replicas.iter().all(|r| r.errors == 0), "{snap:?}");
    assert_replicas_identical(&m);
}

#[test]
fn overlapping_writers_leave_replicas_identical() {
    racing_writers(256 * 1024, 200);
}

/// Small writes run concurrently when their ranges are disjoint: the replicas finish them in
/// different orders, and must still end with the same bytes and the same mtime.
#[test]
fn small_racing_writers_leave_replicas_identical_to_the_mtime() {
    racing_writers(4096 + 7, 3000);
}

/// Four threads write `region`-byte blocks at pseudo-random unaligned offsets of one 1 MiB
/// file (some overlapping, some not), then every replica must match the mount.
fn racing_writers(region: usize, rounds: usize) {
    if !can_mount() {
        return;
    }
    let m = MountBuilder::new(3).start();
    const SPAN: u64 = 1024 * 1024;
    File::create(m.path("shared")).unwrap();
    let barrier = Arc::new(Barrier::new(4));
    let workers: Vec<_> = (0..4u8)
        .map(|t| {
            let path = m.path("shared");
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let f = OpenOptions::new().write(true).open(&path).unwrap();
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1);
                barrier.wait();
                for round in 0..rounds {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Unaligned offsets that overlap the other writers' regions.
                    let offset = x % (SPAN - region as u64);
                    let fill = t.wrapping_mul(64).wrapping_add(round as u8);
                    f.write_all_at(&vec![fill; region], offset).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let through = fs::read(m.path("shared")).unwrap();
    assert!(through.len() > region);
    for i in 0..3 {
        let on = fs::read(m.on(i, "shared")).unwrap();
        assert_eq!(on.len(), through.len(), "size on replica {i}");
        let first_diff = on.iter().zip(&through).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "replica {i} differs from the mount");
    }
    assert_replicas_identical(&m);
}

#[test]
fn each_callers_umask_applies_even_when_they_create_at_once() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    fs::create_dir(m.path("shared")).unwrap();
    fs::set_permissions(m.path("shared"), fs::Permissions::from_mode(0o1777)).unwrap();
    let dir = m.path("shared");
    let umasks = [
        (1001u32, 0o077u32),
        (1002, 0o027),
        (1003, 0o022),
        (1004, 0o002),
    ];
    let barrier = Arc::new(Barrier::new(umasks.len()));
    let workers: Vec<_> = umasks
        .iter()
        .map(|&(uid, umask)| {
            let (barrier, dir) = (Arc::clone(&barrier), dir.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let cmd = format!(
                    "umask {umask:03o}; cd {} && i=0; while [ $i -lt 50 ]; do \
                     : > f{uid}_$i && mkdir d{uid}_$i || exit 1; i=$((i+1)); done",
                    dir.display()
                );
                run_as(uid, uid, &[], &cmd)
            })
        })
        .collect();
    for w in workers {
        let out = w.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for &(uid, umask) in &umasks {
        for i in 0..50 {
            for (rel, base) in [
                (format!("f{uid}_{i}"), 0o666),
                (format!("d{uid}_{i}"), 0o777),
            ] {
                let rel = format!("shared/{rel}");
                for p in [m.path(&rel), m.on(0, &rel), m.on(1, &rel)] {
                    let mode = fs::metadata(&p).unwrap().mode() & 0o777;
                    assert_eq!(mode, base & !umask, "{} (umask {umask:03o})", p.display());
                }
            }
        }
    }
    assert_replicas_identical(&m);
}

#[test]
fn directory_renames_racing_with_work_inside_keep_replicas_identical() {
    if !can_mount() {
        return;
    }
    // A subtree moves back and forth while other threads create, write, chmod and remove
    // files deep inside it. The kernel does not order these against each other, so the
    // daemon must: every replica has to see them in the same order, and none may be blamed.
    let m = MountBuilder::new(3).start();
    fs::create_dir_all(m.path("a/sub/deeper")).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mover = {
        let (a, b, stop) = (m.path("a"), m.path("b"), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 400 {
                let (from, to) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
                fs::rename(from, to).unwrap();
                n += 1;
            }
            n
        })
    };
    let workers: Vec<_> = (0..3)
        .map(|t| {
            let (a, b) = (m.path("a"), m.path("b"));
            std::thread::spawn(move || {
                let mut done = 0;
                for i in 0..300 {
                    for root in [&a, &b] {
                        let f = root.join(format!("sub/deeper/t{t}_{i}"));
                        if fs::write(&f, b"data").is_ok() {
                            let _ = fs::set_permissions(&f, fs::Permissions::from_mode(0o600));
                            if i % 3 == 0 {
                                let _ = fs::remove_file(&f);
                            }
                            done += 1;
                            break;
                        }
                    }
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for w in workers {
        done += w.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let moves = mover.join().unwrap();
    assert!(
        done > 100 && moves > 10,
        "the race did not happen ({done} files, {moves} moves)"
    );
    let snap = m.snapshot();
    for r in &snap.replicas {
        assert_eq!(r.errors, 0, "replica {} was blamed: {}", r.path, r.reason);
    }
    assert_replicas_identical(&m);
}

#[test]
fn opens_racing_with_rename_and_unlink_of_the_same_name() {
    if !can_mount() {
        return;
    }
    // The atomic-save pattern (write a temp file, rename it over the real one) against
    // writers that open the real name: every replica must open the same file, and a replica
    // that sees the rename first must not be blamed for it.
    let m = MountBuilder::new(3).start();
    fs::write(m.path("f"), b"start\n").unwrap();
    let saver = {
        let (f, tmp) = (m.path("f"), m.path("f.tmp"));
        std::thread::spawn(move || {
            for i in 0..300 {
                fs::write(&tmp, format!("version {i}\n")).unwrap();
                fs::rename(&tmp, &f).unwrap();
                if i % 10 == 0 {
                    fs::remove_file(&f).unwrap();
                }
            }
        })
    };
    let writers: Vec<_> = (0..3)
        .map(|t| {
            let f = m.path("f");
            std::thread::spawn(move || {
                for i in 0..300 {
                    if let Ok(file) = OpenOptions::new().append(true).open(&f) {
                        file.write_all_at(format!("w{t} {i}\n").as_bytes(), 0)
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    saver.join().unwrap();
    for w in writers {
        w.join().unwrap();
    }
    let snap = m.snapshot();
    for r in &snap.replicas {
        assert_eq!(r.errors, 0, "replica {} was blamed: {}", r.path, r.reason);
    }
    assert_replicas_identical(&m);
}
