//! A first end-to-end check: mount two replicas, write through the mount, find it on both.
mod common;
use common::*;

#[test]
fn write_through_mount_reaches_every_replica() {
    if !can_mount() {
        return;
    }
    let m = Mount::two();
    std::fs::write(m.path("hello"), b"hello world\n").unwrap();
    std::fs::create_dir(m.path("dir")).unwrap();
    std::fs::write(m.path("dir/inner"), b"x").unwrap();
    assert_eq!(std::fs::read(m.on(0, "hello")).unwrap(), b"hello world\n");
    assert_eq!(std::fs::read(m.on(1, "hello")).unwrap(), b"hello world\n");
    assert_replicas_identical(&m);
    assert!(m.stop(), "SIGTERM must unmount and end the daemon");
}
