//! A brick whose disk stops answering goes offline by itself, so that a replica volume
//! carries on without it, and comes back (and is healed) when the disk answers again.

mod common;

use common::*;
use std::os::unix::fs::FileExt;
use std::time::Duration;

#[test]
fn a_brick_whose_disk_hangs_goes_offline_and_the_volume_carries_on() {
    if !require_root() {
        return;
    }
    // The third brick's "disk" is itself a FUSE mount (of a one-brick volume): while that
    // mount's process is stopped, everything under it waits, as on a disk that hangs.
    let outer = Bricks::start(1);
    let disk = outer.mount(&outer.spec("disk", 1, 1), "disk");
    std::fs::create_dir(disk.path("b")).unwrap();
    let mut b = Bricks::start(2);
    let health = ["--health-every", "0.5", "--health-timeout", "2"];
    b.add(&disk.path("b"), &health);
    let m = b.mount(&b.spec("hung", 1, 3), "v");
    std::fs::write(m.path("before"), pattern(1, 300_000)).unwrap();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.path("f"))
        .unwrap();

    let stopped = stop_process(disk.pid());
    // A large write and its fsync run on the bricks' blocking threads: the third brick still
    // answers pings, and only its disk probe can tell that it will never answer them.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let data = pattern(2, 1 << 20);
        let r = f.write_all_at(&data, 0).and_then(|_| f.sync_all());
        let _ = tx.send(r.map(|_| f));
    });
    let f = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a write waited for a brick whose disk hangs")
        .unwrap();
    let mut back = vec![0u8; 1 << 20];
    f.read_exact_at(&mut back, 0).unwrap();
    assert!(back == pattern(2, 1 << 20));
    assert!(std::fs::read(m.path("before")).unwrap() == pattern(1, 300_000));
    std::fs::write(m.path("during"), b"while the disk hung").unwrap();
    assert!(
        pending_heals(&b.bricks[0].path) > 0 && pending_heals(&b.bricks[1].path) > 0,
        "what the third brick missed is marked"
    );
    drop(f);

    // The disk answers again: the brick comes back online and is healed.
    drop(stopped);
    wait_for("the third brick to be healed", Duration::from_secs(60), || {
        (0..2).all(|i| pending_heals(&b.bricks[i].path) == 0)
    });
    assert!(std::fs::read(b.bricks[2].path.join("f")).unwrap() == pattern(2, 1 << 20));
    assert_eq!(
        std::fs::read(b.bricks[2].path.join("during")).unwrap(),
        b"while the disk hung"
    );
}

/// The harness's own guard against a suite that never ends: a test stuck on a mount that
/// stopped answering is released once the mount has been up too long (`HUNG_AFTER`, 300 s
/// in other tests; 5 s here), its FUSE connection aborted so that the stuck call fails,
/// and the test fails too when the mount goes.
#[test]
fn a_test_stuck_on_a_mount_that_stopped_answering_is_released() {
    if !require_root() {
        return;
    }
    let b = Bricks::start(1);
    let dir = b.dir.path().join("mnt-stuck");
    std::fs::create_dir_all(&dir).unwrap();
    let hung_after = Duration::from_secs(5);
    // (Before the watchdog starts, at the end of the mount.)
    let mounted = std::time::Instant::now();
    let m = Mount::watched(&b.spec("stuck", 1, 1), &b.key, &dir, hung_after);
    std::fs::write(m.path("before"), b"answered").unwrap();
    let _stopped = stop_process(m.pid());
    let (tx, rx) = std::sync::mpsc::channel();
    let path = m.path("during");
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::write(path, b"never answered"));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a call on a stopped mount still stuck 60 s on");
    let errno = r.expect_err("a stopped mount answered").raw_os_error();
    // (ECANCELED: a request the kernel had handed to the mount over FUSE io_uring, ended
    // with the mount's process.)
    assert!(
        matches!(errno, Some(libc::ECONNABORTED | libc::ENOTCONN | libc::ECANCELED)),
        "the aborted call failed with {errno:?}"
    );
    // It was stuck until the watchdog, not failed by anything else.
    assert!(
        mounted.elapsed() >= hung_after,
        "released {:?} after the mount",
        mounted.elapsed()
    );
    // (Taken as hung, the test would fail when its mount goes: here that is the point.)
    assert!(m.taken_as_hung(), "released, but not by the watchdog");
}
