//! Self-heal: a replica copy that was down while the volume changed becomes identical to the
//! others again, by itself, and every pending marker is cleared; a file open on the stale
//! copy elsewhere is healed once it is closed there, one this client holds open is healed
//! in place while it goes on writing to it.

mod common;

use bytes::Bytes;
use common::{node, serve_brick, spec};
use proto::auth::ClusterKey;
use proto::{Entry, FileId, FileKind, SetAttr, TimeSet};
use shoal_client::{DirCursor, Volume, Xlator};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A brick served in this process, that can be stopped and started again on its address.
struct TestBrick {
    dir: tempfile::TempDir,
    addr: String,
    stop: Option<watch::Sender<bool>>,
}

impl TestBrick {
    async fn new(key: &ClusterKey) -> TestBrick {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Some(serve_brick(
            dir.path(),
            listener,
            brick::ServerConfig::new(key.clone()),
        ));
        TestBrick { dir, addr, stop }
    }

    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
    }

    async fn start(&mut self, key: &ClusterKey) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(&self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.stop = Some(serve_brick(
            self.dir.path(),
            listener,
            brick::ServerConfig::new(key.clone()),
        ));
    }

    /// Objects this brick lists as carrying pending markers.
    fn pending(&self) -> usize {
        let fans = std::fs::read_dir(self.dir.path().join(".shoal/pending")).unwrap();
        fans.map(|f| std::fs::read_dir(f.unwrap().path()).unwrap().count())
            .sum()
    }
}

/// A test's bricks stop with it, also when it fails.
impl Drop for TestBrick {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Root = Arc<dyn Xlator>;

async fn mkdir(v: &Root, parent: FileId, name: &str) -> FileId {
    let (e, _) = v
        .create(parent, name.as_bytes(), &node(FileKind::Dir, 0o755), None, None)
        .await
        .unwrap();
    e.attr.id
}

/// Writes `parts` (offset, bytes) into a new file.
async fn file(v: &Root, parent: FileId, name: &str, parts: &[(u64, Vec<u8>)]) -> FileId {
    let (e, h) = v
        .create(
            parent,
            name.as_bytes(),
            &node(FileKind::File, 0o644),
            None,
            Some(libc::O_RDWR as u32),
        )
        .await
        .unwrap();
    let h = h.unwrap();
    for (off, data) in parts {
        v.write(&h, *off, Bytes::from(data.clone())).await.unwrap();
    }
    v.release(&h).await.unwrap();
    e.attr.id
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// What one brick holds under `dir`, by path: the object as the brick serves it (times,
/// modes, owners, size, link counts, translator metadata), its user xattrs, and its bytes
/// or symlink target.
type Tree = BTreeMap<String, (Entry, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>)>;

async fn tree(c: &Root) -> Tree {
    let mut out = Tree::new();
    let mut dirs = vec![(String::new(), FileId::ROOT)];
    while let Some((path, dir)) = dirs.pop() {
        let mut cursor = DirCursor::default();
        loop {
            let page = c.readdir(dir, &cursor, true).await.unwrap();
            for d in page.entries {
                if d.name == b"." || d.name == b".." {
                    continue;
                }
                let p = format!("{path}/{}", String::from_utf8_lossy(&d.name));
                let e = d.entry.unwrap();
                let id = e.attr.id;
                let mut xattrs = Vec::new();
                for n in c.listxattr(id).await.unwrap() {
                    let v = c.getxattr(id, &n).await.unwrap();
                    xattrs.push((n, v));
                }
                xattrs.sort();
                let body = match e.attr.kind {
                    FileKind::File => {
                        let h = c.open(id, libc::O_RDONLY as u32).await.unwrap();
                        let data = c.read(&h, 0, 16 << 20).await.unwrap().to_vec();
                        c.release(&h).await.unwrap();
                        data
                    }
                    FileKind::Symlink => c.readlink(id).await.unwrap(),
                    FileKind::Dir => {
                        dirs.push((p.clone(), id));
                        Vec::new()
                    }
                    _ => Vec::new(),
                };
                out.insert(p, (e, xattrs, body));
            }
            match page.next {
                Some(n) => cursor = n,
                None => break,
            }
        }
    }
    out
}

/// What the brick at `addr` holds, seen on its own.
async fn brick_tree(key: &ClusterKey, addr: &str) -> Tree {
    let one = Volume::connect(spec(&[addr]), key.clone(), "look", Duration::from_secs(5))
        .await
        .unwrap();
    tree(&one.root).await
}

/// The parts of two bricks' trees that must agree (ctime and the directories' sizes and
/// block counts are the brick file system's own).
fn same_copies(a: &Tree, b: &Tree) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (path, (ea, xa, da)) in a {
        let (eb, xb, db) = &b[path];
        let (x, y) = (&ea.attr, &eb.attr);
        assert_eq!(
            (x.id, x.kind, x.perm, x.uid, x.gid, x.nlink, x.mtime),
            (y.id, y.kind, y.perm, y.uid, y.gid, y.nlink, y.mtime),
            "{path}"
        );
        if x.kind == FileKind::File {
            assert_eq!(x.size, y.size, "{path}");
            // (Within an xattr block: where markers once were, a brick may keep one.)
            assert!(y.blocks.abs_diff(x.blocks) <= 16, "{path}: holes are kept");
        }
        assert_eq!(ea.meta, eb.meta, "{path}");
        assert!(!ea.meta.iter().any(|m| m.name.starts_with("pending.")), "{path}");
        assert_eq!(xa, xb, "{path}");
        assert!(da == db, "{path}: contents differ");
    }
}

/// `same_copies` but for times and owners: a file no heal touched keeps the times its own
/// brick gave it.
fn agree_but_times(a: &Tree, b: &Tree) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (path, (ea, xa, da)) in a {
        let (eb, xb, db) = &b[path];
        let (p, q) = (&ea.attr, &eb.attr);
        assert_eq!(
            (p.id, p.kind, p.perm, p.nlink, p.size, &ea.meta, xa),
            (q.id, q.kind, q.perm, q.nlink, q.size, &eb.meta, xb),
            "{path}"
        );
        assert!(da == db, "{path}: contents differ");
    }
}

/// Three bricks in this process and a replica 3 volume over them.
async fn replica_3() -> (ClusterKey, Vec<TestBrick>, Vec<String>, Volume) {
    replica(3).await
}

/// `n` bricks in this process and a replica `n` volume over them.
async fn replica(n: usize) -> (ClusterKey, Vec<TestBrick>, Vec<String>, Volume) {
    let key = ClusterKey::generate();
    let mut b = Vec::new();
    for _ in 0..n {
        b.push(TestBrick::new(&key).await);
    }
    let addrs: Vec<String> = b.iter().map(|x| x.addr.clone()).collect();
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let vol = Volume::connect(spec(&refs), key.clone(), "heal", Duration::from_secs(5))
        .await
        .unwrap();
    (key, b, addrs, vol)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_was_down_is_healed_in_the_background() {
    let (key, mut b, owned, vol) = replica_3().await;
    let addrs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let v = vol.root.clone();

    let d = mkdir(&v, FileId::ROOT, "d").await;
    let keep = file(&v, FileId::ROOT, "keep", &[(0, pattern(10_000, 1))]).await;
    file(&v, FileId::ROOT, "gone", &[(0, pattern(100, 2))]).await;
    let grow = file(&v, FileId::ROOT, "grow", &[(0, pattern(256 << 10, 3))]).await;
    let old = mkdir(&v, d, "old").await;
    file(&v, old, "inside", &[(0, pattern(10, 4))]).await;

    // The third brick goes down; meanwhile every kind of change is made.
    b[2].stop();
    until("the volume to see the third brick down", || !vol.conns[2].is_up()).await;
    // A sparse file: data, a 196 KiB hole, data.
    let new = file(
        &v,
        d,
        "new",
        &[(0, pattern(4096, 5)), (200 << 10, pattern(100 << 10, 6))],
    )
    .await;
    let h = v.open(grow, libc::O_RDWR as u32).await.unwrap();
    v.write(&h, 64 << 10, Bytes::from(vec![0xee; 4096]))
        .await
        .unwrap();
    v.release(&h).await.unwrap();
    let shrink = SetAttr {
        size: Some(200 << 10),
        ..SetAttr::default()
    };
    v.setattr(grow, None, &shrink).await.unwrap();
    let chmod = SetAttr {
        perm: Some(0o600),
        ..SetAttr::default()
    };
    v.setattr(keep, None, &chmod).await.unwrap();
    v.setxattr(keep, b"user.colour", b"blue", 0).await.unwrap();
    v.unlink(FileId::ROOT, b"gone").await.unwrap();
    v.unlink(old, b"inside").await.unwrap();
    v.rmdir(d, b"old").await.unwrap();
    let sub = mkdir(&v, d, "sub").await;
    file(&v, sub, "deep", &[(0, pattern(5000, 7))]).await;
    v.link(new, d, b"new2").await.unwrap();
    v.create(d, b"ln", &node(FileKind::Symlink, 0o777), Some(b"new"), None)
        .await
        .unwrap();
    v.rename(FileId::ROOT, b"keep", d, b"kept", Default::default())
        .await
        .unwrap();
    assert!(
        b[0].pending() > 0 && b[1].pending() > 0,
        "changes the third brick missed are marked"
    );
    assert_eq!(b[2].pending(), 0);

    // Back up: the volume heals it without being asked.
    b[2].start(&key).await;
    until("the third brick's copy to be healed", || {
        b.iter().all(|x| x.pending() == 0)
    })
    .await;

    // Each brick, seen on its own, now holds the same thing.
    let (t0, t2) = (brick_tree(&key, addrs[0]).await, brick_tree(&key, addrs[2]).await);
    same_copies(&t0, &t2);
    let names: Vec<&str> = t2.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "/d",
            "/d/kept",
            "/d/ln",
            "/d/new",
            "/d/new2",
            "/d/sub",
            "/d/sub/deep",
            "/grow"
        ]
    );
    assert_eq!(t2["/d/new"].0.attr.nlink, 2, "a hard link stays one file");
    let sparse = &t2["/d/new"].0.attr;
    assert!(sparse.blocks * 512 < 150 << 10, "the hole is a hole: {sparse:?}");
    assert_eq!(t2["/d/kept"].1, [(b"user.colour".to_vec(), b"blue".to_vec())]);
    assert_eq!(t2["/d/kept"].0.attr.perm, 0o600);
    assert_eq!(t2["/grow"].0.attr.size, 200 << 10);
    assert_eq!(&t2["/grow"].2[64 << 10..65 << 10], &[0xee; 1024][..]);
    assert_eq!(t2["/d/ln"].2, b"new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_open_on_the_stale_copy_is_healed_once_closed_there() {
    let (key, mut b, owned, vol) = replica_3().await;
    let addrs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let wait = Duration::from_secs(5);
    let v = vol.root.clone();
    let f = file(&v, FileId::ROOT, "f", &[(0, pattern(8192, 1))]).await;

    b[2].stop();
    until("the volume to see the third brick down", || !vol.conns[2].is_up()).await;
    let h = v.open(f, libc::O_RDWR as u32).await.unwrap();
    v.write(&h, 100, Bytes::from(vec![7u8; 1000])).await.unwrap();
    v.release(&h).await.unwrap();
    drop(h);
    b[2].start(&key).await;
    until("the volume to see the third brick back", || vol.conns[2].is_up()).await;

    // A client has the file open on the stale copy (as one that opened it before that copy
    // fell behind would): no heal can be exact while it may write there, so the file is
    // left for later.
    let other = Volume::connect(spec(&addrs[2..]), key.clone(), "other", wait)
        .await
        .unwrap();
    let held = other.root.open(f, libc::O_RDONLY as u32).await.unwrap();
    let report = v.heal().await.unwrap();
    assert!(report.left >= 1, "{report:?}");
    assert!(b[0].pending() > 0);
    // Opened for writing through the volume now, the file is open on the stale copy here
    // too: it is healed in place once the other client closes it.
    let through = v.open(f, libc::O_RDWR as u32).await.unwrap();

    other.root.release(&held).await.unwrap();
    v.heal().await.unwrap();
    until("the file to be healed once closed there", || {
        b.iter().all(|x| x.pending() == 0)
    })
    .await;
    v.release(&through).await.unwrap();
    same_copies(
        &brick_tree(&key, addrs[0]).await,
        &brick_tree(&key, addrs[2]).await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_marks_every_change_a_copy_misses_even_after_a_heal() {
    let (key, mut b, owned, vol) = replica_3().await;
    let addrs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let v = vol.root.clone();
    let f = file(&v, FileId::ROOT, "f", &[(0, pattern(8192, 1))]).await;
    let h = v.open(f, libc::O_RDWR as u32).await.unwrap();

    // A first outage: a write through the handle misses the third copy, which is healed
    // once back (the handle, idle, holds nothing open on the restarted brick).
    b[2].stop();
    until("the volume to see the third brick down", || !vol.conns[2].is_up()).await;
    v.write(&h, 0, Bytes::from(vec![1u8; 100])).await.unwrap();
    // (The second write marks the copy with the write itself, and the bricks remember
    // having done so for this handle.)
    v.write(&h, 4096, Bytes::from(vec![3u8; 100])).await.unwrap();
    b[2].start(&key).await;
    until("the first outage to be healed", || {
        vol.conns[2].is_up() && b.iter().all(|x| x.pending() == 0)
    })
    .await;

    // A second outage: what the same handle writes now is marked again, although the
    // bricks' record says the handle marked it already (a heal cleared that since).
    b[2].stop();
    until("the volume to see the third brick down", || !vol.conns[2].is_up()).await;
    v.write(&h, 200, Bytes::from(vec![2u8; 100])).await.unwrap();
    assert!(b[0].pending() > 0, "the change the third copy missed is marked");
    v.release(&h).await.unwrap();
    b[2].start(&key).await;
    until("the second outage to be healed", || {
        vol.conns[2].is_up() && b.iter().all(|x| x.pending() == 0)
    })
    .await;
    same_copies(
        &brick_tree(&key, addrs[0]).await,
        &brick_tree(&key, addrs[2]).await,
    );
}

/// A brick's plain copy of the file `file_read_from` made (under the name it found).
fn plain_copy(b: &TestBrick) -> std::path::PathBuf {
    std::fs::read_dir(b.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('f'))
        })
        .unwrap()
}

/// `chattr FLAG path` (the immutable flag makes a brick's copy refuse writes).
fn chattr(flag: &str, path: &std::path::Path) {
    let ok = std::process::Command::new("chattr")
        .arg(flag)
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success(), "chattr {flag} {}", path.display());
}

/// A new file (as `file` makes it) whose handles read from child `want` of `n` first.
async fn file_read_from(v: &Root, want: usize, n: usize, name: &str, data: Vec<u8>) -> FileId {
    // Reads are spread over the copies by id.
    for k in 0.. {
        let id = file(v, FileId::ROOT, &format!("{name}{k}"), &[(0, data.clone())]).await;
        if (id.0 % n as u128) as usize == want {
            return id;
        }
        v.unlink(FileId::ROOT, format!("{name}{k}").as_bytes())
            .await
            .unwrap();
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_do_not_read_a_copy_back_from_an_outage_before_it_is_healed() {
    let (key, mut b, owned, vol) = replica_3().await;
    let v = vol.root.clone();
    let other = Volume::connect(
        spec(&[&owned[0], &owned[1], &owned[2]]),
        key.clone(),
        "other",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // Three files whose handles read from the third copy, each open here since before it
    // goes away.
    let cut = file_read_from(&v, 2, 3, "cut", pattern(8192, 1)).await;
    let mine = file_read_from(&v, 2, 3, "mine", pattern(8192, 2)).await;
    let theirs = file_read_from(&v, 2, 3, "theirs", pattern(8192, 3)).await;
    let truncating = v.open(cut, libc::O_RDWR as u32).await.unwrap();
    let writing = v.open(mine, libc::O_RDWR as u32).await.unwrap();
    let reading_mine = v.open(mine, libc::O_RDONLY as u32).await.unwrap();
    let reading_theirs = v.open(theirs, libc::O_RDONLY as u32).await.unwrap();
    let theirs_there = other.root.open(theirs, libc::O_RDWR as u32).await.unwrap();

    b[2].stop();
    until("both clients to see the third brick down", || {
        !vol.conns[2].is_up() && !other.conns[2].is_up()
    })
    .await;
    // A truncation through a handle; a write through another handle of the same file; a
    // write by another client.
    let grow = SetAttr {
        size: Some(20000),
        ..SetAttr::default()
    };
    v.setattr(cut, Some(&truncating), &grow).await.unwrap();
    v.write(&writing, 0, Bytes::from(vec![9u8; 100])).await.unwrap();
    other
        .root
        .write(&theirs_there, 0, Bytes::from(vec![7u8; 100]))
        .await
        .unwrap();
    b[2].start(&key).await;
    // Open on the restarted brick by a client of its own, the files cannot be healed yet.
    let holder = Volume::connect(spec(&[&owned[2]]), key.clone(), "holder", Duration::from_secs(5))
        .await
        .unwrap();
    let mut held = Vec::new();
    for id in [cut, mine, theirs] {
        held.push(holder.root.open(id, libc::O_RDONLY as u32).await.unwrap());
    }
    until("the volume to see the third brick back", || vol.conns[2].is_up()).await;

    let grown = v.read(&truncating, 8192, 20000).await.unwrap();
    assert_eq!(
        grown.len(),
        20000 - 8192,
        "the truncation is read where the copy missed it"
    );
    assert!(grown.iter().all(|x| *x == 0));
    let got = v.read(&reading_mine, 0, 100).await.unwrap();
    assert_eq!(&got[..], &[9u8; 100][..], "another handle's write is read");
    let got = v.read(&reading_theirs, 0, 100).await.unwrap();
    assert_eq!(&got[..], &[7u8; 100][..], "another client's write is read");
    assert_eq!(b[0].pending(), 3, "the reads came before any heal");

    for h in held {
        holder.root.release(&h).await.unwrap();
    }
    for h in [truncating, writing, reading_mine, reading_theirs] {
        v.release(&h).await.unwrap();
    }
    other.root.release(&theirs_there).await.unwrap();
    until("the copies to be healed", || b.iter().all(|x| x.pending() == 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_does_not_read_a_copy_another_handle_saw_miss_a_write() {
    let (_key, b, _owned, vol) = replica_3().await;
    let v = vol.root.clone();
    let f = file_read_from(&v, 2, 3, "f", pattern(8192, 1)).await;
    let name = plain_copy(&b[2]);
    let writing = v.open(f, libc::O_RDWR as u32).await.unwrap();
    let reading = v.open(f, libc::O_RDONLY as u32).await.unwrap();
    // The third copy refuses the write (its brick's file made immutable) without its
    // connection going anywhere; nothing can heal it while it stays so.
    let chattr = |flag: &str| chattr(flag, &name);
    chattr("+i");
    let wrote = v.write(&writing, 0, Bytes::from(vec![9u8; 100])).await;
    let got = v.read(&reading, 0, 100).await;
    chattr("-i");
    assert_eq!(wrote.unwrap(), 100);
    assert_eq!(
        &got.unwrap()[..],
        &[9u8; 100][..],
        "the write is read through the other handle"
    );
    for h in [writing, reading] {
        v.release(&h).await.unwrap();
    }
    until("the copy to be healed", || b.iter().all(|x| x.pending() == 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_reopen_a_file_at_once_leave_no_open_behind() {
    let (key, mut b, _owned, vol) = replica_3().await;
    let v = vol.root.clone();
    let data = pattern(256 << 10, 1);
    let f = file_read_from(&v, 2, 3, "f", data.clone()).await;
    let h = v.open(f, libc::O_RDWR as u32).await.unwrap();
    // The third brick restarts: the handle's file is opened there again by the first
    // requests that use it, here many at once.
    b[2].stop();
    until("the volume to see the third brick down", || !vol.conns[2].is_up()).await;
    b[2].start(&key).await;
    until("the volume to see the third brick back", || vol.conns[2].is_up()).await;
    let reads = (0..64u64).map(|i| v.read(&h, i * 4096, 4096));
    for (i, r) in futures_util::future::join_all(reads)
        .await
        .into_iter()
        .enumerate()
    {
        assert!(r.unwrap()[..] == data[i * 4096..(i + 1) * 4096], "read {i}");
    }
    v.release(&h).await.unwrap();

    // The copy misses a change (its file made immutable, the connection up): it is healed
    // once nothing has the file open there, so not at all if one of those opens was kept.
    let name = plain_copy(&b[2]);
    let chattr = |flag: &str| chattr(flag, &name);
    chattr("+i");
    let w = v.open(f, libc::O_RDWR as u32).await.unwrap();
    let wrote = v.write(&w, 0, Bytes::from(vec![9u8; 100])).await;
    chattr("-i");
    assert_eq!(wrote.unwrap(), 100);
    v.release(&w).await.unwrap();
    assert!(b[0].pending() > 0, "the change the third copy missed is marked");
    until("the copy to be healed", || b.iter().all(|x| x.pending() == 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_would_reach_only_copies_behind_is_refused() {
    let (key, mut b, owned, vol) = replica_3().await;
    let addrs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let wait = Duration::from_secs(5);
    let v = vol.root.clone();
    let f = file(&v, FileId::ROOT, "f", &[(0, pattern(8192, 1))]).await;
    // Each brick held open by a client of its own once back, nothing is healed.
    let holders = [
        Volume::connect(spec(&addrs[1..2]), key.clone(), "holder1", wait)
            .await
            .unwrap(),
        Volume::connect(spec(&addrs[2..3]), key.clone(), "holder2", wait)
            .await
            .unwrap(),
    ];
    let mut held = Vec::new();

    // The third copy misses a change; a handle opened once it is back keeps it, behind.
    b[2].stop();
    until("the volume to see the third brick down", || !vol.conns[2].is_up()).await;
    let early = v.open(f, libc::O_RDWR as u32).await.unwrap();
    v.write(&early, 0, Bytes::from(vec![1u8; 10])).await.unwrap();
    v.release(&early).await.unwrap();
    drop(early);
    b[2].start(&key).await;
    until("its holder to reach it", || holders[1].conns[0].is_up()).await;
    held.push((1, holders[1].root.open(f, libc::O_RDONLY as u32).await.unwrap()));
    until("the volume to see the third brick back", || vol.conns[2].is_up()).await;
    let h = v.open(f, libc::O_RDWR as u32).await.unwrap();

    // The second copy misses a change through that handle (the first and third take it).
    b[1].stop();
    until("the volume to see the second brick down", || {
        !vol.conns[1].is_up()
    })
    .await;
    v.write(&h, 100, Bytes::from(vec![2u8; 10])).await.unwrap();
    b[1].start(&key).await;
    until("its holder to reach it", || holders[0].conns[0].is_up()).await;
    held.push((0, holders[0].root.open(f, libc::O_RDONLY as u32).await.unwrap()));
    until("the volume to see the second brick back", || vol.conns[1].is_up()).await;

    // With the first copy lost, the two left are a quorum, but each lacks a change the
    // other has: a change they took would leave no copy with everything.
    b[0].stop();
    until("the volume to see the first brick down", || !vol.conns[0].is_up()).await;
    assert_eq!(
        v.write(&h, 200, Bytes::from(vec![3u8; 10])).await,
        Err(proto::Errno::EROFS)
    );
    assert!(
        b[1].pending() > 0 && b[2].pending() > 0,
        "nothing was healed meanwhile"
    );

    b[0].start(&key).await;
    for (i, x) in held {
        holders[i].root.release(&x).await.unwrap();
    }
    v.release(&h).await.unwrap();
    until("the copies to be healed", || {
        vol.conns[0].is_up() && b.iter().all(|x| x.pending() == 0)
    })
    .await;
    for a in &addrs[1..] {
        same_copies(&brick_tree(&key, addrs[0]).await, &brick_tree(&key, a).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_held_open_and_written_all_along_is_healed_in_place() {
    healed_while_written(Opened::BeforeOutage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_opened_for_writing_while_a_copy_is_behind_is_healed_while_written() {
    healed_while_written(Opened::WhileBehind).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_opened_for_writing_while_a_copy_is_away_is_healed_while_written() {
    healed_while_written(Opened::WhileAway).await;
}

/// When the handle of `healed_while_written` was opened.
#[derive(PartialEq)]
enum Opened {
    BeforeOutage,
    /// Once the third copy was back, before it was healed.
    WhileBehind,
    /// While the third copy's brick was away (it writes what that copy misses).
    WhileAway,
}

/// A file written all the time while its third copy, back from an outage, is healed.
/// Healed, it counts for the writes' quorum: losing another copy then leaves the file
/// writable.
async fn healed_while_written(opened: Opened) {
    let (key, mut b, owned, vol) = replica_3().await;
    let addrs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let v = vol.root.clone();
    // A disk image: several heal ranges long, open for good, written to all the time.
    const SIZE: usize = 3 << 20;
    let mut model = pattern(SIZE, 1);
    let f = file(&v, FileId::ROOT, "image", &[(0, model.clone())]).await;
    let early = v.open(f, libc::O_RDWR as u32).await.unwrap();

    b[2].stop();
    until("the volume to see the third brick down", || !vol.conns[2].is_up()).await;
    let first = match opened {
        Opened::WhileAway => {
            v.release(&early).await.unwrap();
            drop(early);
            v.open(f, libc::O_RDWR as u32).await.unwrap()
        }
        _ => early,
    };
    for (off, len, byte) in [(5000usize, 70_000usize, 0xa1u8), (2 << 20, 4096, 0xa2)] {
        v.write(&first, off as u64, Bytes::from(vec![byte; len]))
            .await
            .unwrap();
        model[off..off + len].fill(byte);
    }
    b[2].start(&key).await;
    let h = match opened {
        Opened::BeforeOutage | Opened::WhileAway => Arc::new(first),
        Opened::WhileBehind => {
            v.release(&first).await.unwrap();
            drop(first);
            // Open on the restarted brick by a client of its own until the writer has
            // opened it, the copy is still behind then.
            let holder = Volume::connect(spec(&addrs[2..]), key.clone(), "holder", Duration::from_secs(5))
                .await
                .unwrap();
            let held = holder.root.open(f, libc::O_RDONLY as u32).await.unwrap();
            until("the volume to see the third brick back", || vol.conns[2].is_up()).await;
            let h = v.open(f, libc::O_RDWR as u32).await.unwrap();
            assert!(b[0].pending() > 0, "opened while the copy is behind");
            holder.root.release(&held).await.unwrap();
            Arc::new(h)
        }
    };

    // The writer goes on, through the same handle, at offsets all over the file (past its
    // end too), while the copy that came back is healed.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (v, h, stop) = (v.clone(), h.clone(), stop.clone());
        tokio::spawn(async move {
            let mut model = model;
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut writes = 0u32;
            while !stop.load(Ordering::SeqCst) || writes < 50 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = (x % (SIZE as u64 + (256 << 10))) as usize;
                let len = 1 + (x >> 40) as usize % (48 << 10);
                let byte = (x >> 32) as u8 | 1;
                v.write(&h, off as u64, Bytes::from(vec![byte; len]))
                    .await
                    .unwrap();
                if model.len() < off + len {
                    model.resize(off + len, 0);
                }
                model[off..off + len].fill(byte);
                writes += 1;
            }
            (model, writes)
        })
    };
    until("the copy to be healed while the file is open and written", || {
        vol.conns[2].is_up() && b.iter().all(|x| x.pending() == 0)
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let (mut model, writes) = writer.await.unwrap();
    eprintln!("{writes} writes while healing");
    {
        b[1].stop();
        until("the volume to see the second brick down", || {
            !vol.conns[1].is_up()
        })
        .await;
        v.write(&h, 0, Bytes::from(vec![0x5a; 10])).await.unwrap();
        model[..10].fill(0x5a);
        b[1].start(&key).await;
        until("the second copy to be healed", || {
            vol.conns[1].is_up() && b.iter().all(|x| x.pending() == 0)
        })
        .await;
    }

    // The three copies hold exactly what was written, the file still open. (The bricks
    // stamp writes with their own clocks: one mtime for all, to compare the rest.)
    let when = SetAttr {
        mtime: Some(TimeSet::At(proto::Timespec {
            sec: 1_700_000_000,
            nsec: 0,
        })),
        ..SetAttr::default()
    };
    v.setattr(f, Some(&h), &when).await.unwrap();
    let trees = [
        brick_tree(&key, addrs[0]).await,
        brick_tree(&key, addrs[1]).await,
        brick_tree(&key, addrs[2]).await,
    ];
    assert!(
        trees[2]["/image"].2 == model,
        "the healed copy holds what was written"
    );
    same_copies(&trees[0], &trees[2]);
    same_copies(&trees[1], &trees[2]);
    assert!(b.iter().all(|x| x.pending() == 0));
    v.release(&h).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_answers_with_a_good_copys_attributes_while_the_first_is_behind() {
    let (key, mut b, owned, vol) = replica_3().await;
    let addrs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let v = vol.root.clone();
    let f = file(&v, FileId::ROOT, "f", &[(0, pattern(1000, 1))]).await;

    // The first copy misses the file's growth.
    b[0].stop();
    until("the volume to see the first brick down", || !vol.conns[0].is_up()).await;
    let h = v.open(f, libc::O_RDWR as u32).await.unwrap();
    v.write(&h, 1000, Bytes::from(vec![2u8; 5000])).await.unwrap();
    v.release(&h).await.unwrap();
    b[0].start(&key).await;
    until("the volume to see the first brick back", || vol.conns[0].is_up()).await;
    // Held open there by another client, it stays behind (no heal while it is open).
    let other = Volume::connect(spec(&addrs[..1]), key.clone(), "other", Duration::from_secs(5))
        .await
        .unwrap();
    let held = other.root.open(f, libc::O_RDONLY as u32).await.unwrap();

    // Changes reach every copy, but what they answer (which the kernel caches) is a good
    // copy's: the first one's size is still the old one.
    let chmod = SetAttr {
        perm: Some(0o600),
        ..SetAttr::default()
    };
    let e = v.setattr(f, None, &chmod).await.unwrap();
    assert_eq!((e.attr.size, e.attr.perm), (6000, 0o600));
    let e = v.link(f, FileId::ROOT, b"f2").await.unwrap();
    assert_eq!((e.attr.size, e.attr.nlink), (6000, 2));
    assert!(b[1].pending() > 0, "the first copy is still behind");

    other.root.release(&held).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_first_copy_takes_changes_in_directories_the_heal_has_not_reached() {
    let (key, mut b, owned, vol) = replica(2).await;
    let addrs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let v = vol.root.clone();
    let a = mkdir(&v, FileId::ROOT, "a").await;
    let ab = mkdir(&v, a, "b").await;
    let abc = mkdir(&v, ab, "c").await;
    file(&v, abc, "old", &[(0, pattern(3000, 1))]).await;
    file(&v, abc, "gone", &[(0, pattern(30, 1))]).await;
    file(&v, abc, "was", &[(0, pattern(40, 1))]).await;
    mkdir(&v, ab, "d").await;
    // A file held open across the disk's replacement, and one changed by id alone.
    let kept = file(&v, abc, "kept-open", &[(0, pattern(2000, 5))]).await;
    let held = v.open(kept, libc::O_RDWR as u32).await.unwrap();
    let by_id = file(&v, ab, "by-id", &[(0, pattern(10, 6))]).await;
    // And one opened by id alone after it (the kernel knows its name still).
    let opened = file(&v, ab, "opened", &[(0, pattern(3000, 7))]).await;
    // Enough names in the root that the heal is busy there for a while.
    for i in 0..1000 {
        file(&v, FileId::ROOT, &format!("f{i:04}"), &[(0, pattern(10, 2))]).await;
    }

    // The first brick's disk is replaced by an empty one, which is marked behind on the
    // other copy's root (as `volume reset-brick` does).
    b[0].stop();
    until("the volume to see the first brick down", || !vol.conns[0].is_up()).await;
    for e in std::fs::read_dir(b[0].dir.path()).unwrap() {
        let p = e.unwrap().path();
        match p.is_dir() {
            true => std::fs::remove_dir_all(&p).unwrap(),
            false => std::fs::remove_file(&p).unwrap(),
        }
    }
    let second = Volume::connect(spec(&addrs[1..]), key.clone(), "mark", Duration::from_secs(5))
        .await
        .unwrap();
    second
        .root
        .xattr_add(FileId::ROOT, &[(shoal_client::replicate::pending_key(0), 1)])
        .await
        .unwrap();
    b[0].start(&key).await;
    until("the volume to see the first brick back", || vol.conns[0].is_up()).await;

    // With replica 2 the first copy must take every change, also deep in directories it
    // does not have yet: a name removed is absent there already, and for a new name the
    // directories are made there first.
    assert!(
        !b[0].dir.path().join("a/b").exists(),
        "the heal has not reached a/b yet"
    );
    v.unlink(abc, b"gone").await.unwrap();
    v.rmdir(ab, b"d").await.unwrap();
    v.rename(abc, b"was", ab, b"is", Default::default())
        .await
        .unwrap();
    let data = pattern(5000, 3);
    file(&v, abc, "new", &[(0, data.clone())]).await;
    assert_eq!(std::fs::read(b[0].dir.path().join("a/b/c/new")).unwrap(), data);
    // A file it does not have yet is made there once looked up, so that it takes writes,
    // attribute changes and hard links too.
    let lacks = |path: &str| !b[0].dir.path().join(path).exists();
    assert!(lacks("a/b/c/old"), "the heal has not made a/b/c/old yet");
    let old = v.lookup(abc, b"old").await.unwrap().attr.id;
    let h = v.open(old, libc::O_RDWR as u32).await.unwrap();
    v.write(&h, 100, Bytes::from_static(b"changed")).await.unwrap();
    v.release(&h).await.unwrap();
    let chmod = SetAttr {
        perm: Some(0o600),
        ..SetAttr::default()
    };
    v.setattr(old, None, &chmod).await.unwrap();
    v.link(old, ab, b"old-link").await.unwrap();
    let mut changed = pattern(3000, 1);
    changed[100..107].copy_from_slice(b"changed");
    // Files reached by id (an open file, an attribute change) are made there too, where
    // the other copy records them.
    assert!(
        lacks("a/b/c/kept-open") && lacks("a/b/by-id") && lacks("a/b/opened"),
        "nor these"
    );
    v.write(&held, 0, Bytes::from_static(b"still open"))
        .await
        .unwrap();
    let mut kept_data = pattern(2000, 5);
    kept_data[..10].copy_from_slice(b"still open");
    // Read through that handle: never from the copy just made (it holds only that write).
    assert_eq!(v.read(&held, 0, 4000).await.unwrap(), kept_data);
    v.release(&held).await.unwrap();
    v.setattr(by_id, None, &chmod).await.unwrap();
    let h = v.open(opened, libc::O_RDWR as u32).await.unwrap();
    v.write(&h, 2990, Bytes::from_static(b"opened late"))
        .await
        .unwrap();
    let mut opened_data = pattern(3000, 7);
    opened_data.truncate(2990);
    opened_data.extend_from_slice(b"opened late");
    // Read through that handle: never from the copy made at its open.
    assert_eq!(v.read(&h, 0, 4000).await.unwrap(), opened_data);
    v.release(&h).await.unwrap();

    // The heal then makes the copies identical.
    until("the first copy to be refilled", || {
        b.iter().all(|x| x.pending() == 0)
    })
    .await;
    let (mut t0, mut t1) = (brick_tree(&key, addrs[0]).await, brick_tree(&key, addrs[1]).await);
    // (Written to both copies, each brick giving it its own mtime; the rest was healed.)
    let by_id_data = pattern(10, 6);
    for (path, want) in [
        ("/a/b/c/new", &data),
        ("/a/b/c/old", &changed),
        ("/a/b/old-link", &changed),
        ("/a/b/c/kept-open", &kept_data),
        ("/a/b/by-id", &by_id_data),
        ("/a/b/opened", &opened_data),
    ] {
        let (n0, n1) = (t0.remove(path).unwrap(), t1.remove(path).unwrap());
        assert_eq!((n0.0.attr.id, &n0.2), (n1.0.attr.id, want), "{path}");
        let (a0, a1) = (&n0.0.attr, &n1.0.attr);
        assert_eq!((a0.perm, a0.nlink), (a1.perm, a1.nlink), "{path}");
        match path {
            "/a/b/c/old" | "/a/b/old-link" => assert_eq!((a0.perm, a0.nlink), (0o600, 2), "{path}"),
            "/a/b/by-id" => assert_eq!(a0.perm, 0o600),
            _ => {}
        }
    }
    same_copies(&t0, &t1);
    assert!(t0.contains_key("/f0999"));
    assert!(!t0.contains_key("/a/b/c/gone") && !t0.contains_key("/a/b/d"));
    assert!(!t0.contains_key("/a/b/c/was") && t0.contains_key("/a/b/is"));
}

/// A file whose copy another client is healing (a big file's copy takes minutes) opens for
/// reading at once, on its other copies; an open for writing waits for the heal, so that
/// its handle has every copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_opens_for_reading_at_once_while_a_copy_of_it_is_being_healed() {
    let (key, b, owned, vol) = replica_3().await;
    let addrs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let v = vol.root.clone();
    let want = pattern(100_000, 1);
    let id = file(&v, FileId::ROOT, "f", &[(0, want.clone())]).await;
    // Another client's healer holds the third copy's guard on the file.
    let healer = Volume::connect(spec(&[addrs[2]]), key.clone(), "healer", Duration::from_secs(5))
        .await
        .unwrap();
    healer.root.heal_begin(id, true).await.unwrap();

    let open = v.open(id, libc::O_RDONLY as u32);
    let h = tokio::time::timeout(Duration::from_secs(5), open)
        .await
        .expect("the open for reading waited for the heal")
        .unwrap();
    assert!(v.read(&h, 0, 100_000).await.unwrap() == want);
    // (An fsync of it marks nothing: nothing was written through it.)
    v.fsync(&h, false).await.unwrap();
    v.release(&h).await.unwrap();
    assert_eq!(b[0].pending(), 0, "the copy being healed was marked");

    let mut writer = tokio::spawn({
        let v = v.clone();
        async move { v.open(id, libc::O_RDWR as u32).await }
    });
    // (Bounded: it must not finish at all while the guard is held.)
    let early = tokio::time::timeout(Duration::from_millis(300), &mut writer).await;
    assert!(early.is_err(), "an open for writing went by the heal");
    healer.root.heal_end(id, true).await.unwrap();
    let h = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("the open for writing still waits after the heal")
        .unwrap()
        .unwrap();
    v.write(&h, 4096, Bytes::from(pattern(8192, 2))).await.unwrap();
    v.release(&h).await.unwrap();
    let mut now = want.clone();
    now[4096..4096 + 8192].copy_from_slice(&pattern(8192, 2));
    for x in &b {
        assert!(std::fs::read(x.dir.path().join("f")).unwrap() == now);
    }
    assert_eq!(
        b.iter().map(|x| x.pending()).sum::<usize>(),
        0,
        "every copy took the write"
    );
}

/// An open for reading goes by a copy being healed only while the copies that answered
/// are a quorum: with one copy down and another under a heal, it waits for the heal, as
/// an open for writing does, and then reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_for_reading_waits_for_a_copy_being_healed_when_the_others_are_no_quorum() {
    let (key, mut b, owned, vol) = replica_3().await;
    let addrs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let v = vol.root.clone();
    let want = pattern(100_000, 3);
    let id = file(&v, FileId::ROOT, "f", &[(0, want.clone())]).await;
    let healer = Volume::connect(spec(&[addrs[2]]), key.clone(), "healer", Duration::from_secs(5))
        .await
        .unwrap();
    healer.root.heal_begin(id, true).await.unwrap();
    b[0].stop();
    until("the client to see the first brick down", || !vol.conns[0].is_up()).await;

    let mut reader = tokio::spawn({
        let v = v.clone();
        async move { v.open(id, libc::O_RDONLY as u32).await }
    });
    // (Bounded: it must not finish at all while the guard is held.)
    let early = tokio::time::timeout(Duration::from_millis(300), &mut reader).await;
    assert!(
        early.is_err(),
        "an open for reading went by the heal with one other copy"
    );
    healer.root.heal_end(id, true).await.unwrap();
    let h = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the open for reading still waits after the heal")
        .unwrap()
        .unwrap();
    assert!(v.read(&h, 0, 100_000).await.unwrap() == want);
    v.release(&h).await.unwrap();
}

/// A write through a handle that lacks a copy (opened while its brick was away) and that
/// would otherwise be refused for want of copies waits for another client's heal of that
/// copy, back now, to end, and is made there: before, it was refused (EROFS) at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_short_of_copies_waits_for_another_clients_heal_of_one_that_came_back() {
    let (key, mut b, owned, vol) = replica_3().await;
    let addrs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let v = vol.root.clone();
    let id = file(&v, FileId::ROOT, "f", &[(0, pattern(100_000, 4))]).await;
    b[2].stop();
    until("the client to see the third brick down", || !vol.conns[2].is_up()).await;
    let h = Arc::new(v.open(id, libc::O_RDWR as u32).await.unwrap());
    b[2].start(&key).await;
    until("the client to see the third brick back", || vol.conns[2].is_up()).await;
    let healer = Volume::connect(spec(&[addrs[2]]), key.clone(), "healer", Duration::from_secs(5))
        .await
        .unwrap();
    healer.root.heal_begin(id, true).await.unwrap();
    b[1].stop();
    until("the client to see the second brick down", || {
        !vol.conns[1].is_up()
    })
    .await;

    let data = pattern(2000, 5);
    let mut write = tokio::spawn({
        let (v, h, data) = (v.clone(), h.clone(), Bytes::from(data.clone()));
        async move { v.write(&h, 0, data).await }
    });
    // (Bounded: it must not end at all while the guard is held.)
    let early = tokio::time::timeout(Duration::from_millis(300), &mut write).await;
    assert!(early.is_err(), "a write with one copy it could reach: {early:?}");
    healer.root.heal_end(id, true).await.unwrap();
    let written = tokio::time::timeout(Duration::from_secs(5), write)
        .await
        .expect("the write still waits after the heal")
        .unwrap();
    assert_eq!(written, Ok(2000));
    assert!(v.read(&h, 0, 2000).await.unwrap() == data);
    v.release(&h).await.unwrap();
    let copy = std::fs::read(b[2].dir.path().join("f")).unwrap();
    assert!(copy[..2000] == data[..], "the copy that came back took the write");
}

/// Two clients healing at once (each mount heals) get in each other's way on the guards of
/// the directories a move leaves and enters: the moves wait for a later pass, and are
/// still made as moves, not as copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_moved_while_a_copy_was_down_are_moved_there_by_two_healing_clients() {
    use std::os::unix::fs::MetadataExt;
    let (key, mut b, owned, vol) = replica_3().await;
    let addrs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let other = Volume::connect(spec(&addrs), key.clone(), "other", Duration::from_secs(5))
        .await
        .unwrap();
    let v = vol.root.clone();
    let mut dirs = Vec::new();
    for i in 0..8 {
        let (from, to) = (
            mkdir(&v, FileId::ROOT, &format!("p{i}")).await,
            mkdir(&v, FileId::ROOT, &format!("q{i}")).await,
        );
        let d = mkdir(&v, from, "d").await;
        file(&v, d, "data", &[(0, pattern(3000, i))]).await;
        dirs.push((from, to));
    }
    let held: Vec<std::fs::File> = (0..8)
        .map(|i| std::fs::File::open(b[2].dir.path().join(format!("p{i}/d/data"))).unwrap())
        .collect();

    b[2].stop();
    until("both clients to see the third brick down", || {
        !vol.conns[2].is_up() && !other.conns[2].is_up()
    })
    .await;
    for (from, to) in &dirs {
        v.rename(*from, b"d", *to, b"e", Default::default())
            .await
            .unwrap();
    }
    b[2].start(&key).await;
    until("the third brick's copy to be healed", || {
        b.iter().all(|x| x.pending() == 0)
    })
    .await;
    for (i, f) in held.iter().enumerate() {
        let now = b[2].dir.path().join(format!("q{i}/e/data"));
        let ino = std::fs::metadata(&now).unwrap().ino();
        assert_eq!(
            ino,
            f.metadata().unwrap().ino(),
            "p{i}/d was copied again as q{i}/e"
        );
        assert!(!b[2].dir.path().join(format!("p{i}/d")).exists());
    }
}

/// Directories that trade names while a copy is down (a rotation in one directory, a swap
/// between two) are moved on that copy too, whichever heal comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_that_trade_names_while_a_copy_is_down_are_moved_there() {
    use std::os::unix::fs::MetadataExt;
    let (key, mut b, owned, vol) = replica_3().await;
    let addrs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let v = vol.root.clone();
    let (a, c) = (
        mkdir(&v, FileId::ROOT, "a").await,
        mkdir(&v, FileId::ROOT, "c").await,
    );
    let mut files = Vec::new();
    for (parent, pname, name) in [(a, "a", "cur"), (a, "a", "new"), (a, "a", "x"), (c, "c", "y")] {
        let d = mkdir(&v, parent, name).await;
        file(&v, d, "data", &[(0, pattern(5000, name.len() as u8))]).await;
        files.push(format!("{pname}/{name}/data"));
    }
    let held: Vec<std::fs::File> = files
        .iter()
        .map(|p| std::fs::File::open(b[2].dir.path().join(p)).unwrap())
        .collect();

    b[2].stop();
    until("the volume to see the third brick down", || !vol.conns[2].is_up()).await;
    let rename = |p: FileId, n: &'static str, q: FileId, m: &'static str| {
        let v = v.clone();
        async move {
            v.rename(p, n.as_bytes(), q, m.as_bytes(), Default::default())
                .await
                .unwrap()
        }
    };
    // a/cur -> a/old, a/new -> a/cur; a/x <-> c/y.
    rename(a, "cur", a, "old").await;
    rename(a, "new", a, "cur").await;
    rename(a, "x", c, "tmp").await;
    rename(c, "y", a, "x").await;
    rename(c, "tmp", c, "y").await;

    b[2].start(&key).await;
    until("the third brick's copy to be healed", || {
        b.iter().all(|x| x.pending() == 0)
    })
    .await;
    agree_but_times(
        &brick_tree(&key, addrs[0]).await,
        &brick_tree(&key, addrs[2]).await,
    );
    // Each file is where its directory went, and is the file the copy had.
    let now = ["a/old/data", "a/cur/data", "c/y/data", "a/x/data"];
    for ((was, f), new) in files.iter().zip(&held).zip(now) {
        let ino = std::fs::metadata(b[2].dir.path().join(new)).unwrap().ino();
        assert_eq!(
            ino,
            f.metadata().unwrap().ino(),
            "{was} was copied again as {new}"
        );
    }
}

/// A directory moved while a copy was down is moved on that copy too, with what it holds:
/// its files are neither removed there nor copied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_moved_while_a_copy_was_down_is_moved_there_not_copied_again() {
    use std::os::unix::fs::MetadataExt;
    let (key, mut b, owned, vol) = replica_3().await;
    let addrs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let v = vol.root.clone();
    let a = mkdir(&v, FileId::ROOT, "a").await;
    let to = mkdir(&v, FileId::ROOT, "b").await;
    let d = mkdir(&v, a, "d").await;
    let sub = mkdir(&v, d, "sub").await;
    let x = mkdir(&v, a, "x").await;
    let mut moved = Vec::new();
    for i in 0..20u8 {
        file(&v, d, &format!("f{i}"), &[(0, pattern(8192, i))]).await;
        moved.push((format!("a/d/f{i}"), format!("b/e/f{i}")));
    }
    file(&v, sub, "deep", &[(0, pattern(5000, 30))]).await;
    file(&v, x, "inside", &[(0, pattern(700, 31))]).await;
    moved.push(("a/d/sub/deep".into(), "b/e/sub/deep".into()));
    moved.push(("a/x/inside".into(), "a/y/inside".into()));
    // Held open, so that a file removed and made again could not get the same inode.
    let held: Vec<std::fs::File> = moved
        .iter()
        .map(|(old, _)| std::fs::File::open(b[2].dir.path().join(old)).unwrap())
        .collect();

    // While the third copy is down: a/d moves to another directory (and a new directory
    // takes its old name), a/x moves within its directory, and the moved tree changes.
    b[2].stop();
    until("the volume to see the third brick down", || !vol.conns[2].is_up()).await;
    v.rename(a, b"d", to, b"e", Default::default()).await.unwrap();
    v.rename(a, b"x", a, b"y", Default::default()).await.unwrap();
    mkdir(&v, a, "d").await;
    file(&v, d, "new", &[(0, pattern(3000, 32))]).await;
    v.unlink(d, b"f0").await.unwrap();

    b[2].start(&key).await;
    until("the third brick's copy to be healed", || {
        b.iter().all(|x| x.pending() == 0)
    })
    .await;
    let t2 = brick_tree(&key, addrs[2]).await;
    agree_but_times(&brick_tree(&key, addrs[0]).await, &t2);
    assert!(t2.contains_key("/b/e/new") && t2.contains_key("/a/d") && !t2.contains_key("/b/e/f0"));
    // The files the copy had are the same files, under their new names.
    let ino = |p: &str| std::fs::metadata(b[2].dir.path().join(p)).unwrap().ino();
    for ((old, new), was) in moved.iter().zip(&held).skip(1) {
        let was = was.metadata().unwrap().ino();
        assert_eq!(ino(new), was, "{old} was copied again as {new} instead of moved");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_the_first_copy_removed_does_not_come_back_through_the_stale_one() {
    let (key, mut b, _owned, vol) = replica(2).await;
    let v = vol.root.clone();
    let a = mkdir(&v, FileId::ROOT, "a").await;
    let ab = mkdir(&v, a, "b").await;

    // The second copy misses the removal of a/b and a (the first copy alone may change).
    b[1].stop();
    until("the volume to see the second brick down", || {
        !vol.conns[1].is_up()
    })
    .await;
    v.rmdir(a, b"b").await.unwrap();
    v.rmdir(FileId::ROOT, b"a").await.unwrap();
    b[1].start(&key).await;
    until("the volume to see the second brick back", || vol.conns[1].is_up()).await;

    // A client that still knows a/b makes a name there: only the stale copy has it. The
    // first copy lacks a/b because it removed it, so it is not made again there, and the
    // change is refused.
    let r = v.create(ab, b"x", &node(FileKind::File, 0o644), None, None).await;
    assert!(r.is_err(), "the change was taken: {:?}", r.map(|(e, _)| e));
    assert!(
        !b[0].dir.path().join("a").exists(),
        "a came back on the first copy"
    );
    until("the second copy to be healed", || {
        b.iter().all(|x| x.pending() == 0)
    })
    .await;
    assert!(!b[1].dir.path().join("a").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_the_first_copy_removed_alone_is_not_split_brain_when_changed_again() {
    let (key, mut b, _owned, vol) = replica(2).await;
    let v = vol.root.clone();
    let d = mkdir(&v, FileId::ROOT, "d").await;
    file(&v, d, "n", &[(0, pattern(10, 1))]).await;
    file(&v, d, "r", &[(0, pattern(10, 2))]).await;
    let l = file(&v, d, "l", &[(0, pattern(10, 3))]).await;
    let e = mkdir(&v, FileId::ROOT, "e").await;

    // The second copy misses the removals (the first copy alone may change).
    b[1].stop();
    until("the volume to see the second brick down", || {
        !vol.conns[1].is_up()
    })
    .await;
    v.unlink(d, b"n").await.unwrap();
    v.unlink(d, b"r").await.unwrap();
    v.unlink(d, b"l").await.unwrap();
    b[1].start(&key).await;
    until("the volume to see the second brick back", || vol.conns[1].is_up()).await;

    // A client that still knows d/n removes it again: only the stale copy has it. The
    // answer is the first copy's (no such name), and the copies do not end up blaming each
    // other: the heal settles them.
    assert_eq!(v.unlink(d, b"n").await, Err(proto::Errno::ENOENT));
    // Likewise a rename, here into another directory: the stale copy's new name goes.
    let moved = v.rename(d, b"r", e, b"moved", Default::default()).await;
    assert_eq!(moved, Err(proto::Errno::ENOENT));
    // A hard link to a file only the stale copy still has finds no such file, and does not
    // bring the file back on the first copy.
    let linked = v.link(l, e, b"hard").await.map(|e| e.attr.id);
    assert_eq!(linked, Err(proto::Errno::ENOENT));
    until("the copies to be healed", || b.iter().all(|x| x.pending() == 0)).await;
    for p in ["d/n", "d/r", "e/moved", "d/l", "e/hard"] {
        assert!(
            !b[0].dir.path().join(p).exists() && !b[1].dir.path().join(p).exists(),
            "{p}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_gets_its_directories_ahead_of_the_files_data() {
    let (key, mut b, _owned, vol) = replica_3().await;
    let v = vol.root.clone();

    // The third copy misses many files' data and a few directories under them.
    b[2].stop();
    until("the volume to see the third brick down", || !vol.conns[2].is_up()).await;
    const FILES: usize = 150;
    let data = pattern(1 << 20, 4);
    for i in 0..FILES {
        file(&v, FileId::ROOT, &format!("big{i:03}"), &[(0, data.clone())]).await;
    }
    let a = mkdir(&v, FileId::ROOT, "a").await;
    let ab = mkdir(&v, a, "b").await;
    mkdir(&v, ab, "c").await;
    b[2].start(&key).await;

    // Each directory the heal makes goes ahead of the files it made before it: the whole
    // tree of names is there while most files still wait for their data.
    let deep = b[2].dir.path().join("a/b/c");
    until("a/b/c to be made on the third copy", || deep.exists()).await;
    let whole = (0..FILES)
        .filter(|i| {
            let p = b[2].dir.path().join(format!("big{i:03}"));
            std::fs::metadata(p).is_ok_and(|m| m.len() == data.len() as u64)
        })
        .count();
    assert!(
        whole < FILES / 2,
        "{whole} of {FILES} files were whole before a/b/c was made"
    );
    until("the third copy to be healed", || {
        b.iter().all(|x| x.pending() == 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_healing_at_once_take_each_marker_off_once() {
    let (key, mut b, owned, vol) = replica(2).await;
    let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let mut others = Vec::new();
    for i in 0..3 {
        let name = format!("heal-{i}");
        let v = Volume::connect(spec(&refs), key.clone(), &name, Duration::from_secs(5));
        others.push(v.await.unwrap());
    }
    let v = vol.root.clone();

    b[1].stop();
    until("the volume to see the second brick down", || {
        !vol.conns[1].is_up()
    })
    .await;
    const FILES: usize = 500;
    for i in 0..FILES {
        file(
            &v,
            FileId::ROOT,
            &format!("f{i:03}"),
            &[(0, pattern(4096, i as u8))],
        )
        .await;
    }
    // Four clients heal the copy at once, each object by one at a time. A marker taken
    // off by two of them (each having read it before the other took it off) would cancel
    // the marker of the next change the copy missed: that must be recorded.
    b[1].start(&key).await;
    until("the second copy to be healed", || {
        b.iter().all(|x| x.pending() == 0)
    })
    .await;
    b[1].stop();
    until("every client to see the second brick down", || {
        !vol.conns[1].is_up() && others.iter().all(|o| !o.conns[1].is_up())
    })
    .await;
    for i in 0..FILES {
        v.unlink(FileId::ROOT, format!("f{i:03}").as_bytes())
            .await
            .unwrap();
    }
    assert_eq!(
        b[0].pending(),
        1,
        "the root, marked for the names the second copy missed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_brains_are_listed_and_settled_as_asked() {
    use shoal_client::replicate::pending_key;
    use shoal_client::split_brain::Settle;
    let (key, b, owned, vol) = replica(2).await;
    let addrs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let v = vol.root.clone();
    let mut ids = BTreeMap::new();
    for name in ["by-brick", "by-size", "by-time", "tie"] {
        ids.insert(name, file(&v, FileId::ROOT, name, &[(0, pattern(100, 1))]).await);
    }
    let d = mkdir(&v, FileId::ROOT, "d").await;
    ids.insert("d", d);
    // Each copy changed on its own brick (a copy of its own of each file, a name of its own
    // in d), and each marking the other as behind: split brains.
    let one = |i: usize| Volume::connect(spec(&addrs[i..=i]), key.clone(), "alone", Duration::from_secs(5));
    let alone = [one(0).await.unwrap(), one(1).await.unwrap()];
    let content = |name: &str, i: usize| match name {
        "by-size" => pattern(1000 * (i + 1), i as u8),
        "tie" => pattern(500, i as u8),
        _ => pattern(300, 10 + i as u8),
    };
    let base = std::time::SystemTime::now() - Duration::from_secs(3600);
    for i in 0..2 {
        for name in ["by-brick", "by-size", "by-time", "tie"] {
            let path = b[i].dir.path().join(name);
            std::fs::write(&path, content(name, i)).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(base + Duration::from_secs(100 * i as u64))
                .unwrap();
        }
        let only = format!("only{i}");
        alone[i]
            .root
            .create(d, only.as_bytes(), &node(FileKind::File, 0o644), None, None)
            .await
            .unwrap();
        for id in ids.values() {
            let blame = [(pending_key(1 - i), 1)];
            alone[i].root.xattr_add(*id, &blame).await.unwrap();
        }
    }

    let mut listed = v.split_brains().await.unwrap();
    listed.sort();
    let mut want: Vec<FileId> = ids.values().copied().collect();
    want.sort();
    assert_eq!(listed, want);
    // Equal sizes say nothing: refused, and nothing changes.
    assert_eq!(
        v.settle(ids["tie"], &Settle::BiggerFile).await,
        Err(proto::Errno::EAGAIN)
    );
    // A brick of no replica set here settles nothing.
    let elsewhere = Settle::Source("127.0.0.1:1".into());
    assert_eq!(v.settle(ids["tie"], &elsewhere).await, Ok(Vec::new()));
    let done = v
        .settle(ids["by-brick"], &Settle::Source(owned[1].clone()))
        .await
        .unwrap();
    assert_eq!(done, [format!("kept the copy on {}", owned[1])]);
    v.settle(ids["by-size"], &Settle::BiggerFile).await.unwrap();
    v.settle(ids["by-time"], &Settle::LatestMtime).await.unwrap();
    let merged = v.settle(d, &Settle::LatestMtime).await.unwrap();
    assert_eq!(merged, ["merged the copies (2 missing names made)"]);
    assert_eq!(
        v.settle(d, &Settle::LatestMtime).await.unwrap(),
        Vec::<String>::new()
    );
    let mut left = v.split_brains().await.unwrap();
    assert_eq!(left, [ids["tie"]]);
    v.settle(ids["tie"], &Settle::Source(owned[0].clone()))
        .await
        .unwrap();
    left = v.split_brains().await.unwrap();
    assert!(left.is_empty(), "{left:?}");

    // The heal carries each choice over to the other copy.
    until("the settled copies to be healed", || {
        b.iter().all(|x| x.pending() == 0)
    })
    .await;
    let (t0, t1) = (brick_tree(&key, addrs[0]).await, brick_tree(&key, addrs[1]).await);
    same_copies(&t0, &t1);
    assert_eq!(t0["/by-brick"].2, content("by-brick", 1));
    assert_eq!(t0["/by-size"].2, content("by-size", 1));
    assert_eq!(t0["/by-time"].2, content("by-time", 1));
    assert_eq!(t0["/tie"].2, content("tie", 0));
    assert!(t0.contains_key("/d/only0") && t0.contains_key("/d/only1"));
}
