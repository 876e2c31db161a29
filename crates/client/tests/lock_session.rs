//! A lock outlives a cut in its client's link to the brick: the brick keeps it for a while,
//! and the client's new connection takes it over. A client that does not come back loses
//! its locks once that while is over.

mod common;

use common::{node, serve_brick};
use proto::auth::ClusterKey;
use proto::{Errno, FileId, FileKind, Lock, LockKind};
use shoal_client::Volume;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const LINGER: Duration = Duration::from_secs(2);

/// A TCP relay to the brick whose connections can be cut, and which can stop accepting.
struct Relay {
    addr: String,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

impl Relay {
    async fn new(to: String) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let kept = links.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((mut a, _)) = l.accept().await {
                let to = to.clone();
                kept.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut b) = TcpStream::connect(&to).await {
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                }));
            }
        });
        Relay {
            addr,
            links,
            acceptor,
        }
    }

    /// Drops every relayed connection (both ends see them close).
    fn cut(&self) {
        for l in self.links.lock().unwrap().drain(..) {
            l.abort();
        }
    }
}

/// A volume of the one brick at `addr`.
fn spec(addr: &str) -> layout::VolumeSpec {
    common::spec(&[addr])
}

/// A blocking request of `v`'s, granted within 20 s.
async fn granted_waiting(v: &Volume, id: FileId, owner: u64, what: &str) {
    let l = lock(LockKind::Write, owner);
    let asked = v.root.setlk(id, &l, true);
    tokio::time::timeout(Duration::from_secs(20), asked)
        .await
        .unwrap_or_else(|_| panic!("not granted: {what}"))
        .unwrap();
}

fn lock(kind: LockKind, owner: u64) -> Lock {
    Lock {
        kind,
        start: 0,
        end: u64::MAX,
        owner,
        pid: owner as u32,
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_survives_a_cut_link_and_goes_with_a_client_that_does_not_return() {
    let key = ClusterKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let config = brick::ServerConfig {
        linger: LINGER,
        ..brick::ServerConfig::new(key.clone())
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let brick_addr = listener.local_addr().unwrap().to_string();
    let _stop = serve_brick(dir.path(), listener, config);

    let relay = Relay::new(brick_addr.clone()).await;
    let wait = Duration::from_secs(5);
    let a = Volume::connect(spec(&relay.addr), key.clone(), "a", wait)
        .await
        .unwrap();
    let b = Volume::connect(spec(&brick_addr), key.clone(), "b", wait)
        .await
        .unwrap();
    let node = node(FileKind::File, 0o644);
    b.root
        .create(FileId::ROOT, b"f", &node, None, None)
        .await
        .unwrap();
    let id = node.id;
    let (oa, ob) = (1, 2);
    a.root.setlk(id, &lock(LockKind::Write, oa), false).await.unwrap();

    // The link is cut; `a` reconnects by itself and its session takes the lock over.
    let gen = a.conns[0].generation();
    relay.cut();
    assert_eq!(
        b.root.setlk(id, &lock(LockKind::Write, ob), false).await,
        Err(Errno::EAGAIN)
    );
    until("`a` to reconnect", || {
        a.conns[0].is_up() && a.conns[0].generation() != gen
    })
    .await;
    // Well past the time the brick keeps a gone connection's locks, it is still `a`'s.
    let past = Instant::now() + LINGER + LINGER / 2;
    while Instant::now() < past {
        assert_eq!(
            b.root.setlk(id, &lock(LockKind::Write, ob), false).await,
            Err(Errno::EAGAIN),
            "the lock went while its holder was back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        b.root.getlk(id, &lock(LockKind::Write, ob)).await.unwrap().kind,
        LockKind::Write
    );
    a.root
        .setlk(id, &lock(LockKind::Unlock, oa), false)
        .await
        .unwrap();
    b.root.setlk(id, &lock(LockKind::Write, ob), false).await.unwrap();
    b.root
        .setlk(id, &lock(LockKind::Unlock, ob), false)
        .await
        .unwrap();

    // `a` locks again, then is cut off for good: a waiter gets the lock once the brick
    // gives up on `a`, and not before.
    a.root.setlk(id, &lock(LockKind::Write, oa), false).await.unwrap();
    relay.acceptor.abort();
    let cut = Instant::now();
    relay.cut();
    assert_eq!(
        b.root.setlk(id, &lock(LockKind::Write, ob), false).await,
        Err(Errno::EAGAIN)
    );
    granted_waiting(&b, id, ob, "once the brick gave up on `a`").await;
    assert!(cut.elapsed() >= LINGER, "granted after {:?}", cut.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brick_that_restarts_gives_locks_back_to_their_holders_first() {
    let key = ClusterKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_secs(5);
    let serve = |listener: TcpListener| {
        let config = brick::ServerConfig {
            grace,
            ..brick::ServerConfig::new(key.clone())
        };
        serve_brick(dir.path(), listener, config)
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = serve(listener);
    let wait = Duration::from_secs(5);
    let a = Volume::connect(spec(&addr), key.clone(), "a", wait)
        .await
        .unwrap();
    let b = Volume::connect(spec(&addr), key.clone(), "b", wait)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for name in [&b"f"[..], b"g"] {
        let node = node(FileKind::File, 0o644);
        b.root
            .create(FileId::ROOT, name, &node, None, None)
            .await
            .unwrap();
        ids.push(node.id);
    }
    let (f, g) = (ids[0], ids[1]);
    let (oa, ob) = (1, 2);
    a.root.setlk(f, &lock(LockKind::Write, oa), false).await.unwrap();

    // The brick stops (its locks are gone with it) and starts again.
    let gen = a.conns[0].generation();
    let _ = stop.send(true);
    until("`a` to see the brick go", || !a.conns[0].is_up()).await;
    let listener = loop {
        match TcpListener::bind(&addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let restarted = Instant::now();
    let _stop = serve(listener);
    // New locks wait while the holders come back.
    let refused = loop {
        match b.root.setlk(g, &lock(LockKind::Write, ob), false).await {
            Err(Errno::ENOTCONN) => tokio::time::sleep(Duration::from_millis(20)).await,
            r => break r,
        }
    };
    assert!(
        restarted.elapsed() < grace,
        "test too slow to see the grace period"
    );
    assert_eq!(refused, Err(Errno::EAGAIN), "a new lock during the grace period");
    until("`a` to reconnect", || {
        a.conns[0].is_up() && a.conns[0].generation() != gen
    })
    .await;
    // `a` took its lock back: `b` cannot have it, during the grace period or after.
    assert_eq!(
        b.root.setlk(f, &lock(LockKind::Write, ob), false).await,
        Err(Errno::EAGAIN)
    );
    granted_waiting(&b, g, ob, "a new lock after the grace period").await;
    assert!(restarted.elapsed() >= grace);
    assert_eq!(
        b.root.setlk(f, &lock(LockKind::Write, ob), false).await,
        Err(Errno::EAGAIN),
        "the lock is still `a`'s"
    );
    a.root.setlk(f, &lock(LockKind::Unlock, oa), false).await.unwrap();
    b.root.setlk(f, &lock(LockKind::Write, ob), false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_at_once_make_one_connection() {
    // (A second connection of the same session would have the brick close the first.)
    let key = ClusterKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let brick = listener.local_addr().unwrap().to_string();
    let _serving = serve_brick(dir.path(), listener, brick::ServerConfig::new(key.clone()));
    let relay = Relay::new(brick).await;
    let c = shoal_client::conn::BrickConn::new(&relay.addr, key, "client", "twice");
    let (a, b, d) = tokio::join!(c.connect(), c.connect(), c.connect());
    assert_eq!((a, b, d), (Ok(()), Ok(()), Ok(())));
    assert_eq!(relay.links.lock().unwrap().len(), 1);
    assert_eq!(c.generation(), 1);
}
