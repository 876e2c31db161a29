//! Locks on a replica volume stay exclusive between clients that reach different children,
//! and a request only some children grant leaves the locks as they were.

mod common;

use common::{node, serve_brick, spec};
use proto::auth::ClusterKey;
use proto::{Errno, FileId, FileKind, Lock, LockKind};
use shoal_client::Volume;
use std::time::Duration;

/// A brick served in this process; its directory lives as long as the returned guard.
async fn brick(key: &ClusterKey) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Never told to stop: it serves until the test ends.
    drop(serve_brick(
        dir.path(),
        listener,
        brick::ServerConfig::new(key.clone()),
    ));
    (dir, addr)
}

/// An address nothing listens on.
fn dead() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn lock(kind: LockKind, start: u64, end: u64, owner: u64) -> Lock {
    Lock {
        kind,
        start,
        end,
        owner,
        pid: owner as u32,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_hold_between_clients_that_reach_different_children() {
    use LockKind::{Read, Unlock, Write};
    let key = ClusterKey::generate();
    let (_d0, b0) = brick(&key).await;
    let (_d1, b1) = brick(&key).await;
    let (_d2, b2) = brick(&key).await;
    let (x, y) = (dead(), dead());
    let wait = Duration::from_secs(5);
    let connect = |addrs: &[&str], name: &'static str| Volume::connect(spec(addrs), key.clone(), name, wait);
    // `a` reaches every brick; `b` cannot reach the first (a partial partition); `c` reaches
    // only the first, to look at what it holds.
    let a = connect(&[&b0, &b1, &b2], "a").await.unwrap();
    let b = connect(&[&x, &b1, &b2], "b").await.unwrap();
    let c = connect(&[&b0, &x, &y], "c").await.unwrap();
    let node = node(FileKind::File, 0o644);
    let (e, _) = a
        .root
        .create(FileId::ROOT, b"f", &node, None, None)
        .await
        .unwrap();
    let id = e.attr.id;
    let (oa, ob) = (1, 2);

    // What `a` holds, `b` cannot take, though the child it would ask first never saw it.
    a.root
        .setlk(id, &lock(Write, 0, u64::MAX, oa), false)
        .await
        .unwrap();
    assert_eq!(
        b.root.setlk(id, &lock(Write, 0, 0, ob), false).await,
        Err(Errno::EAGAIN)
    );
    assert_eq!(b.root.getlk(id, &lock(Read, 0, 0, ob)).await.unwrap().kind, Write);
    a.root
        .setlk(id, &lock(Unlock, 0, u64::MAX, oa), false)
        .await
        .unwrap();

    // A request only some children grant changes nothing: `a` holds a read lock on 0-9,
    // `b` a write lock on 100-199 (on the children it reaches), and `a`'s upgrade to a write
    // lock on 0-199 is granted by the first child alone.
    a.root.setlk(id, &lock(Read, 0, 9, oa), false).await.unwrap();
    b.root.setlk(id, &lock(Write, 100, 199, ob), false).await.unwrap();
    assert_eq!(
        a.root.setlk(id, &lock(Write, 0, 199, oa), false).await,
        Err(Errno::EAGAIN)
    );
    // The first child has `a`'s read lock back, as it was, and nothing more.
    let seen = c.root.getlk(id, &lock(Write, 0, 199, 9)).await.unwrap();
    assert_eq!((seen.kind, seen.start, seen.end), (Read, 0, 9));
    assert_eq!(
        c.root.getlk(id, &lock(Write, 10, 199, 9)).await.unwrap().kind,
        Unlock
    );
    // And `b` still cannot write where `a` reads.
    assert_eq!(
        b.root.setlk(id, &lock(Write, 5, 5, ob), false).await,
        Err(Errno::EAGAIN)
    );

    // A blocking request waits for the holder on every child, and gets the lock after it.
    let b_root = b.root.clone();
    let mut waiter = tokio::spawn(async move { b_root.setlk(id, &lock(Write, 0, 9, ob), true).await });
    let early = tokio::time::timeout(Duration::from_millis(300), &mut waiter).await;
    assert!(early.is_err(), "granted while `a` reads: {early:?}");
    a.root
        .setlk(id, &lock(Unlock, 0, u64::MAX, oa), false)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("waiter granted once `a` unlocked")
        .unwrap()
        .unwrap();
    assert_eq!(
        a.root.setlk(id, &lock(Read, 0, 0, oa), false).await,
        Err(Errno::EAGAIN)
    );
}

/// A lock on a directory that is removed meanwhile can still be given back: made again
/// with the same id (as distribute makes a directory again when a removal fails on another
/// child), the directory is not locked by a leftover that nobody can release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlock_goes_through_after_the_file_is_gone() {
    use LockKind::{Unlock, Write};
    let key = ClusterKey::generate();
    let (_d0, b0) = brick(&key).await;
    let wait = Duration::from_secs(5);
    let a = Volume::connect(spec(&[&b0]), key.clone(), "a", wait)
        .await
        .unwrap();
    let b = Volume::connect(spec(&[&b0]), key.clone(), "b", wait)
        .await
        .unwrap();
    let dir = node(FileKind::Dir, 0o755);
    let (e, _) = a.root.create(FileId::ROOT, b"d", &dir, None, None).await.unwrap();
    let id = e.attr.id;
    let l = |kind, owner| lock(kind, 1 << 63, 1 << 63, owner);
    a.root.setlk(id, &l(Write, 1), false).await.unwrap();
    a.root.rmdir(FileId::ROOT, b"d").await.unwrap();
    a.root.setlk(id, &l(Unlock, 1), false).await.unwrap();
    let again = proto::NewNode { id, ..dir };
    a.root
        .create(FileId::ROOT, b"d", &again, None, None)
        .await
        .unwrap();
    b.root.setlk(id, &l(Write, 2), false).await.unwrap();
}
