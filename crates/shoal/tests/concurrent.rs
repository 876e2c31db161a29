//! Two mounts change one namespace at once, two threads each. The volume should stay
//! consistent: both mounts and a fresh third list the same tree, every file holds one whole
//! record some writer wrote, no request fails with anything but the errors the races make
//! (a name gone or taken), and on the bricks the layout holds: replicated copies identical
//! with nothing marked for heal, each distributed file's data on exactly one brick, and no
//! pointer or data left under a name the volume does not show (ESTALE is still taken as
//! one of the races' errors: a known gap listed in docs/architecture.md). A storm that
//! fails prints, for each path at fault, what the bricks hold there and every request that
//! named it. Two mounts overwriting one replicated block, or renaming onto one name, at
//! the same moment leave the copies alike; lockstep rounds of a stripe directory's removal
//! against changes inside it, and of a stripe link against the file's last unlink, leave
//! the bricks alike.

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const DIRS: usize = 3;
const SUBDIRS: usize = 2;
const NAMES: usize = 6;
/// Every file is one record: a 32-byte tag repeated to 4 KiB, written by one `write`.
const RECORD: usize = 4096;
const TAG: usize = 32;
const OPS_PER_WORKER: usize = 300;
const WORKERS_PER_MOUNT: usize = 2;
/// Far below the mounts' cache lifetime (10 s): only the bricks' announcements make
/// another mount's last changes show within it.
const SETTLE: Duration = Duration::from_secs(5);

fn record(tag: &str) -> Vec<u8> {
    let mut t = format!("{tag:<width$}", width = TAG - 1).into_bytes();
    t.push(b'\n');
    t.repeat(RECORD / TAG)
}

/// The tag of a whole record, or what is wrong with the bytes.
fn tag_of(data: &[u8]) -> Result<String, String> {
    if data.len() != RECORD {
        return Err(format!("{} bytes", data.len()));
    }
    let first = &data[..TAG];
    if data.chunks(TAG).any(|c| c != first) {
        return Err("records mixed within the file".into());
    }
    Ok(String::from_utf8_lossy(first).trim().to_string())
}

/// A directory the workers use: a top one (always there) or one of its subdirectories
/// (made, removed and moved between top directories as they go).
fn some_dir(rng: &mut StdRng) -> String {
    let top = format!("d{}", rng.random_range(0..DIRS));
    match rng.random_range(0..3) {
        0 => format!("{top}/s{}", rng.random_range(0..SUBDIRS)),
        _ => top,
    }
}

fn some_file(rng: &mut StdRng) -> String {
    format!("{}/n{}", some_dir(rng), rng.random_range(0..NAMES))
}

/// Errors the races themselves make: what a name named is gone, taken, or of the other kind.
/// ESTALE too, for now: a known gap (docs/architecture.md, "Known gaps"), where a request
/// through a directory another mount just removed or moved, or a read of a file another
/// mount just removed, can fail with it.
fn expected(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::AlreadyExists)
        || matches!(
            e.raw_os_error(),
            Some(libc::ENOTEMPTY | libc::EISDIR | libc::ENOTDIR | libc::EEXIST | libc::ENOENT | libc::ESTALE)
        )
}

/// Fails if a lockstep test recorded rounds that left `what` different.
fn no_round_differs<T: std::fmt::Debug>(differ: &[T], rounds: usize, what: &str) {
    assert!(
        differ.is_empty(),
        "{} of {rounds} rounds left the {what} different, first: {:?}",
        differ.len(),
        differ.first()
    );
}

/// One mount's part of a lockstep round: what it sets up, then what it does at once with
/// the other mount. Errors are part of the race, not panics (a panic ends the test, with
/// no word of what the other mount's part did).
type Part<'a> = (&'a (dyn Fn(usize) + Sync), &'a (dyn Fn(usize) + Sync));

/// Runs `rounds` rounds: both mounts set up, act at the same moment, then `check` looks
/// with both idle, before anyone sets up the next. Returns the rounds `check` found wrong.
fn lockstep<T>(rounds: usize, a: Part, b: Part, mut check: impl FnMut() -> Option<T>) -> Vec<(usize, T)> {
    // Each round meets three times: go, done, checked.
    let meet = Meet::new(3);
    let mut differ = Vec::new();
    std::thread::scope(|s| {
        for (setup, act) in [a, b] {
            let meet = &meet;
            s.spawn(move || {
                let _member = meet.member();
                for r in 0..rounds {
                    setup(r);
                    meet.wait();
                    act(r);
                    meet.wait();
                    meet.wait();
                }
            });
        }
        let _member = meet.member();
        for r in 0..rounds {
            meet.wait();
            meet.wait();
            differ.extend(check().map(|d| (r, d)));
            meet.wait();
        }
    });
    differ
}

/// What the workers did, each request with its start and end (µs into the storm) and its
/// result: printed for a path that fails a check afterwards.
struct Journal {
    epoch: Instant,
    lines: Mutex<Vec<(u128, String)>>,
}

impl Journal {
    fn new() -> Journal {
        Journal {
            epoch: Instant::now(),
            lines: Mutex::new(Vec::new()),
        }
    }

    fn now(&self) -> u128 {
        self.epoch.elapsed().as_micros()
    }

    fn record(&self, start: u128, what: String) {
        let end = self.now();
        self.lines
            .lock()
            .unwrap()
            .push((start, format!("{start}..{end} {what}")));
    }

    /// The requests that named `path` or its directory, in the order they began.
    fn print_about(&self, path: &str) {
        let mut lines = self.lines.lock().unwrap().clone();
        lines.sort();
        let dir = path.rsplit_once('/').map(|(d, _)| d);
        let names =
            |line: &str, p: &str| line.contains(&format!("/{p} ")) || line.contains(&format!("/{p}:"));
        for (_, line) in lines {
            if names(&line, path) || dir.is_some_and(|d| names(&line, d)) {
                eprintln!("  {line}");
            }
        }
    }
}

fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

/// A path as a mount shows it: inode, size, mtime and links, and the record read past the
/// kernel's pages.
fn describe(root: &Path, rel: &str) -> String {
    let p = root.join(rel);
    let md = std::fs::symlink_metadata(&p).map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.nlink()));
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&p)
        .and_then(|f| {
            let mut buf = vec![0u8; 2 * RECORD + 4096];
            let at = buf.as_ptr().align_offset(4096);
            let n = f.read_at(&mut buf[at..at + 2 * RECORD], 0)?;
            Ok(tag_of(&buf[at..at + n]))
        });
    format!("{md:?}, read directly {direct:?}")
}

/// One worker's bounded run of random namespace and data changes through `m`.
fn worker(m: &Mount, id: usize, seed: u64, journal: &Journal) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut failures = Vec::new();
    for i in 0..OPS_PER_WORKER {
        let start = journal.now();
        let tag = format!("w{id}-{i}");
        let (what, r): (String, std::io::Result<()>) = match rng.random_range(0..100) {
            // A whole new file put in place under a name, as editors and rsync do.
            0..30 => {
                let (dir, name) = (some_dir(&mut rng), rng.random_range(0..NAMES));
                let tmp = m.path(&format!("{dir}/.tmp-{id}"));
                let to = m.path(&format!("{dir}/n{name}"));
                let r = std::fs::write(&tmp, record(&tag)).and_then(|_| std::fs::rename(&tmp, &to));
                if r.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                (format!("put {}", to.display()), r)
            }
            // The same size written again in place.
            30..45 => {
                let p = m.path(&some_file(&mut rng));
                let r = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.write_all_at(&record(&tag), 0));
                (format!("overwrite {}", p.display()), r)
            }
            45..60 => {
                let (a, b) = (m.path(&some_file(&mut rng)), m.path(&some_file(&mut rng)));
                (
                    format!("rename {} {}", a.display(), b.display()),
                    std::fs::rename(&a, &b),
                )
            }
            60..70 => {
                let p = m.path(&some_file(&mut rng));
                (format!("unlink {}", p.display()), std::fs::remove_file(&p))
            }
            70..78 => {
                let (a, b) = (m.path(&some_file(&mut rng)), m.path(&some_file(&mut rng)));
                (
                    format!("link {} {}", a.display(), b.display()),
                    std::fs::hard_link(&a, &b),
                )
            }
            // A read racing the others sees a whole file's size (its bytes may be mid-write).
            78..88 => {
                let p = m.path(&some_file(&mut rng));
                let r = std::fs::read(&p).and_then(|d| match d.len() {
                    RECORD => Ok(()),
                    n => Err(std::io::Error::other(format!("read {n} bytes"))),
                });
                (format!("read {}", p.display()), r)
            }
            88..93 => {
                let p = m.path(&format!(
                    "d{}/s{}",
                    rng.random_range(0..DIRS),
                    rng.random_range(0..SUBDIRS)
                ));
                (format!("mkdir {}", p.display()), std::fs::create_dir(&p))
            }
            93..96 => {
                let p = m.path(&format!(
                    "d{}/s{}",
                    rng.random_range(0..DIRS),
                    rng.random_range(0..SUBDIRS)
                ));
                (format!("rmdir {}", p.display()), std::fs::remove_dir(&p))
            }
            // A directory moved to another top directory (never into one of its own: no
            // loops to refuse).
            _ => {
                let s = rng.random_range(0..SUBDIRS);
                let a = m.path(&format!("d{}/s{s}", rng.random_range(0..DIRS)));
                let b = m.path(&format!(
                    "d{}/s{}",
                    rng.random_range(0..DIRS),
                    rng.random_range(0..SUBDIRS)
                ));
                (
                    format!("rename {} {}", a.display(), b.display()),
                    std::fs::rename(&a, &b),
                )
            }
        };
        journal.record(start, format!("w{id}-{i} {what}: {r:?}"));
        if let Err(e) = r {
            if !expected(&e) {
                failures.push(format!("{what}: {e}"));
            }
        }
    }
    failures
}

/// What a mount shows: each path under the root with, for a file, the tag of its record.
fn tree(root: &Path) -> BTreeMap<String, Result<String, String>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&rel)) else {
            out.insert(rel.display().to_string(), Err("unreadable directory".into()));
            continue;
        };
        for e in rd {
            let Ok(e) = e else {
                out.insert(rel.display().to_string(), Err("listing failed".into()));
                continue;
            };
            let r = rel.join(e.file_name());
            let key = r.display().to_string();
            match std::fs::symlink_metadata(root.join(&r)) {
                Ok(md) if md.is_dir() => {
                    out.insert(key, Ok("dir".into()));
                    todo.push(r);
                }
                Ok(_) => {
                    let v = std::fs::read(root.join(&r)).map_err(|e| e.to_string());
                    out.insert(key, v.and_then(|d| tag_of(&d)));
                }
                Err(e) => {
                    out.insert(key, Err(e.to_string()));
                }
            }
        }
    }
    out
}

/// A brick's tree outside its own `.shoal`: each path with its kind and, for a regular
/// file, its bytes.
fn brick_tree(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            if rel.as_os_str().is_empty() && e.file_name() == ".shoal" {
                continue;
            }
            let r = rel.join(e.file_name());
            let md = std::fs::symlink_metadata(root.join(&r)).unwrap();
            let data = if md.is_file() {
                std::fs::read(root.join(&r)).unwrap()
            } else {
                Vec::new()
            };
            if md.is_dir() {
                todo.push(r.clone());
            }
            out.insert(r.display().to_string(), (md.mode(), data));
        }
    }
    out
}

/// A distribute pointer: empty, mode `---------T`, naming the child with the data.
fn is_pointer(p: &Path, mode: u32) -> bool {
    mode & 0o7777 == 0o1000 && xattr_of(p, "trusted.shoal.linkto").is_some()
}

fn storm(stripe: u32, replica: u32, n: usize, seed: u64) {
    let layout = format!("stripe {stripe} replica {replica} over {n}");
    let b = Bricks::start(n);
    let spec = b.spec("storm", stripe, replica);
    let (ma, mb) = (b.mount(&spec, "a"), b.mount(&spec, "b"));
    for d in 0..DIRS {
        std::fs::create_dir(ma.path(&format!("d{d}"))).unwrap();
    }
    let journal = Journal::new();
    let failures: Vec<String> = std::thread::scope(|s| {
        let mut workers = Vec::new();
        for (k, m) in [&ma, &mb].into_iter().enumerate() {
            for t in 0..WORKERS_PER_MOUNT {
                let id = k * WORKERS_PER_MOUNT + t;
                let journal = &journal;
                workers.push(s.spawn(move || worker(m, id, seed * 100 + id as u64, journal)));
            }
        }
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    assert!(
        failures.is_empty(),
        "{layout}: {} requests failed, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );

    // The tree as the bricks hold it, through a mount with nothing cached.
    let fresh = b.mount(&spec, "fresh");
    let truth = tree(&fresh.dir);
    let files = truth
        .values()
        .filter(|v| v.as_ref().is_ok_and(|t| t != "dir"))
        .count();
    assert!(files > 0, "{layout}: the storm left no file at all");
    let broken: Vec<_> = truth.iter().filter(|(_, v)| v.is_err()).collect();
    // What the bricks hold under a path that fails a check, and what was done to it.
    let explain = |k: &str, what: &str| {
        eprintln!("{layout}: {k} {what}");
        for br in &b.bricks {
            // The path and each directory above it.
            let mut p = br.path.join(k);
            while p != br.path {
                let md = std::fs::symlink_metadata(&p).map(|m| (m.size(), m.mode(), m.nlink()));
                let id = xattr_of(&p, "trusted.shoal.id").map(|v| hex(&v));
                let to = xattr_of(&p, "trusted.shoal.linkto").map(|v| hex(&v));
                eprintln!("  {}: {md:?}, id {id:?}, pointer {to:?}", p.display());
                p.pop();
            }
        }
        journal.print_about(k);
    };
    for (k, _) in &broken {
        explain(k, "is not one whole record");
    }
    assert!(
        broken.is_empty(),
        "{layout}: files without one whole record: {broken:#?}"
    );
    for (label, m) in [("a", &ma), ("b", &mb)] {
        let mut seen = BTreeMap::new();
        let same = |seen: &mut BTreeMap<_, _>| {
            *seen = tree(&m.dir);
            *seen == truth
        };
        if !same(&mut seen) {
            let until = std::time::Instant::now() + SETTLE;
            while std::time::Instant::now() < until && !same(&mut seen) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let differ: Vec<_> = truth
            .keys()
            .chain(seen.keys())
            .filter(|k| truth.get(*k) != seen.get(*k))
            .map(|k| (k, truth.get(k), seen.get(k)))
            .collect();
        for (k, _, _) in &differ {
            eprintln!("{layout}: {k} through mount {label}: {}", describe(&m.dir, k));
            eprintln!("  through the fresh mount: {}", describe(&fresh.dir, k));
            journal.print_about(k);
        }
        assert!(
            differ.is_empty(),
            "{layout}: mount {label} differs from a fresh mount: {differ:#?}"
        );
    }

    let bricks: Vec<_> = b.bricks.iter().map(|br| brick_tree(&br.path)).collect();
    if replica > 1 {
        for (g, copies) in bricks.chunks(replica as usize).enumerate() {
            for (c, other) in copies.iter().enumerate().skip(1) {
                let differ: Vec<_> = copies[0]
                    .keys()
                    .chain(other.keys())
                    .filter(|k| copies[0].get(*k) != other.get(*k))
                    .collect();
                assert!(
                    differ.is_empty(),
                    "{layout}: group {g} copy {c} differs from copy 0: {differ:#?}"
                );
            }
        }
        wait_for(&format!("{layout}: nothing marked for heal"), SETTLE, || {
            b.bricks.iter().all(|br| pending_heals(&br.path) == 0)
        });
    }
    if stripe == 1 {
        // Each file name the volume shows has its data on exactly one child (a group of
        // copies counts once), and no child holds a name the volume does not show.
        let children: Vec<_> = b.bricks.iter().zip(&bricks).step_by(replica as usize).collect();
        for (name, v) in &truth {
            let dir = v.as_ref().is_ok_and(|t| t == "dir");
            let mut data = 0;
            for (br, t) in &children {
                match t.get(name) {
                    Some((mode, _)) if dir => {
                        assert!(mode & libc::S_IFMT == libc::S_IFDIR, "{layout}: {name}")
                    }
                    Some((mode, _)) if !is_pointer(&br.path.join(name), *mode) => data += 1,
                    Some(_) => {}
                    None => assert!(
                        !dir,
                        "{layout}: directory {name} missing on {}",
                        br.path.display()
                    ),
                }
            }
            if !dir && data != 1 {
                explain(name, "has its data on several children");
            }
            assert!(
                dir || data == 1,
                "{layout}: {name} has its data on {data} children"
            );
        }
        for (br, t) in &children {
            let hidden: Vec<_> = t.keys().filter(|k| !truth.contains_key(*k)).collect();
            for k in &hidden {
                explain(k, "is on a brick but not in the volume");
            }
            assert!(
                hidden.is_empty(),
                "{layout}: {} holds names the volume does not show: {hidden:#?}",
                br.path.display()
            );
        }
    }
}

#[test]
fn distribute_3_stays_consistent() {
    if require_root() {
        storm(1, 1, 3, 1);
    }
}

#[test]
fn replica_2_stays_consistent() {
    if require_root() {
        storm(1, 2, 2, 2);
    }
}

#[test]
fn distributed_replicate_2x2_stays_consistent() {
    if require_root() {
        storm(1, 2, 4, 3);
    }
}

#[test]
fn stripe_2_stays_consistent() {
    if require_root() {
        storm(2, 1, 2, 4);
    }
}

/// Two mounts write the same bytes of a replicated file at the same moment, round after
/// round: each round ends with the copies identical (one writer's bytes or the other's on
/// both), as the write order makes every copy take the two writes in the same order.
#[test]
fn replica_copies_agree_under_concurrent_overwrites() {
    if !require_root() {
        return;
    }
    const ROUNDS: usize = 200;
    let b = Bricks::start(2);
    let spec = b.spec("overwrite", 1, 2);
    let (ma, mb) = (b.mount(&spec, "a"), b.mount(&spec, "b"));
    std::fs::write(ma.path("f"), record("start")).unwrap();
    // O_DSYNC: the writes do not go behind, so the round ends with them on the bricks.
    let files = [&ma, &mb].map(|m| {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DSYNC)
            .open(m.path("f"))
            .unwrap()
    });
    let copies = [0, 1].map(|i| b.bricks[i].path.join("f"));
    // Each round meets twice: go, done.
    let meet = Meet::new(3);
    let mut differ = Vec::new();
    std::thread::scope(|s| {
        for (k, f) in files.iter().enumerate() {
            let meet = &meet;
            s.spawn(move || {
                let _member = meet.member();
                for r in 0..ROUNDS {
                    meet.wait();
                    f.write_all_at(&record(&format!("m{k}-{r}")), 0).unwrap();
                    meet.wait();
                }
            });
        }
        let _member = meet.member();
        for r in 0..ROUNDS {
            meet.wait();
            meet.wait();
            let [c0, c1] = copies.clone().map(|p| std::fs::read(p).unwrap());
            if c0 != c1 {
                differ.push((r, tag_of(&c0), tag_of(&c1)));
            }
        }
    });
    no_round_differs(&differ, ROUNDS, "copies");
}

/// The same with writes behind: each mount has several writes of the file on their way at
/// once (each wants the order), and the copies still agree at every fsync, in bounded time.
#[test]
fn replica_copies_agree_under_concurrent_buffered_writes() {
    if !require_root() {
        return;
    }
    const ROUNDS: usize = 10;
    const SIZE: usize = 2 << 20;
    let b = Bricks::start(2);
    let spec = b.spec("behind", 1, 2);
    let (ma, mb) = (b.mount(&spec, "a"), b.mount(&spec, "b"));
    std::fs::write(ma.path("g"), b"").unwrap();
    let copies = [0, 1].map(|i| b.bricks[i].path.join("g"));
    let meet = Meet::new(2);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        for (k, m) in [&ma, &mb].into_iter().enumerate() {
            let (meet, tx, copies) = (&meet, tx.clone(), &copies);
            s.spawn(move || {
                let _member = meet.member();
                let f = std::fs::OpenOptions::new().write(true).open(m.path("g")).unwrap();
                for r in 0..ROUNDS {
                    meet.wait();
                    let block = record(&format!("m{k}-{r}")).repeat(32);
                    for off in (0..SIZE).step_by(block.len()) {
                        f.write_all_at(&block, off as u64).unwrap();
                    }
                    f.sync_data().unwrap();
                    meet.wait();
                    if k == 0 {
                        let [c0, c1] = copies.clone().map(|p| std::fs::read(p).unwrap());
                        tx.send((r, c0 == c1)).unwrap();
                    }
                    meet.wait();
                }
            });
        }
        // (The writers hold the senders: once both ended, by a failure, nothing comes.)
        drop(tx);
        for _ in 0..ROUNDS {
            use std::sync::mpsc::RecvTimeoutError;
            let (r, same) = match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(round) => round,
                Err(RecvTimeoutError::Disconnected) => panic!("a writer failed (above)"),
                Err(RecvTimeoutError::Timeout) => {
                    // Whatever waits on the mounts fails now, so that the writers end too.
                    for m in [&ma, &mb] {
                        abort_fuse(&m.dir);
                    }
                    meet.break_up();
                    panic!("a round did not end within 60 s: the writers wait for each other");
                }
            };
            assert!(same, "round {r} left the copies different");
        }
    });
}

/// Two mounts rename a file of their own onto the same name at the same moment, round
/// after round: each round ends with both copies of the name holding the same file, as
/// the directory's changes reach every copy in one order.
#[test]
fn replica_copies_agree_under_concurrent_renames() {
    if !require_root() {
        return;
    }
    const ROUNDS: usize = 200;
    let b = Bricks::start(2);
    let spec = b.spec("renames", 1, 2);
    let (ma, mb) = (b.mount(&spec, "a"), b.mount(&spec, "b"));
    let copies = [0, 1].map(|i| b.bricks[i].path.join("n"));
    // Each round meets twice: go, done.
    let meet = Meet::new(3);
    let mut differ = Vec::new();
    let failed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for (k, m) in [&ma, &mb].into_iter().enumerate() {
            let (meet, failed) = (&meet, &failed);
            s.spawn(move || {
                let _member = meet.member();
                // (A failure is recorded, not a panic, to be reported with the others.)
                for r in 0..ROUNDS {
                    let tmp = m.path(&format!("t{k}"));
                    let made = std::fs::write(&tmp, record(&format!("m{k}-{r}")));
                    meet.wait();
                    if let Err(e) = made.and_then(|_| std::fs::rename(&tmp, m.path("n"))) {
                        failed.lock().unwrap().push(format!("mount {k} round {r}: {e}"));
                    }
                    meet.wait();
                }
            });
        }
        let _member = meet.member();
        for r in 0..ROUNDS {
            meet.wait();
            meet.wait();
            let [c0, c1] = copies
                .clone()
                .map(|p| std::fs::read(p).map_err(|e| e.to_string()));
            if c0 != c1 {
                differ.push((r, c0.map(|c| tag_of(&c)), c1.map(|c| tag_of(&c))));
            }
        }
    });
    let failed = failed.into_inner().unwrap();
    assert!(failed.is_empty(), "renames failed: {failed:?}");
    no_round_differs(&differ, ROUNDS, "copies");
}

/// The names in `rel` on each brick, or why it could not be listed. (Errors are returned,
/// not unwrapped: a lockstep check reports every round that went wrong.)
fn listings(b: &Bricks, rel: &str) -> Vec<Result<Vec<std::ffi::OsString>, std::io::ErrorKind>> {
    b.bricks
        .iter()
        .map(|br| {
            std::fs::read_dir(br.path.join(rel))
                .and_then(|rd| {
                    let mut names = rd
                        .map(|e| e.map(|e| e.file_name()))
                        .collect::<Result<Vec<_>, _>>()?;
                    names.sort();
                    Ok(names)
                })
                .map_err(|e| e.kind())
        })
        .collect()
}

/// A lockstep part's setup: directory `t` there, and its file `f` there in even rounds,
/// gone in odd ones.
fn file_in_t_ready(m: &Mount, r: usize) {
    let _ = std::fs::create_dir(m.path("t"));
    match r % 2 {
        0 => drop(std::fs::write(m.path("t/f"), record("a"))),
        _ => drop(std::fs::remove_file(m.path("t/f"))),
    }
}

/// Its act: `t/f` removed in even rounds, made in odd ones.
fn file_in_t_changed(m: &Mount, r: usize) {
    let _ = match r % 2 {
        0 => std::fs::remove_file(m.path("t/f")),
        _ => std::fs::write(m.path("t/f"), record("a")),
    };
}

/// On replica 2, one mount renames an empty directory over another while the other makes
/// or removes a file in that one, round after round: each round ends with both copies
/// alike, as names made in a directory are ordered against its replacement (the rename
/// finds it empty on every copy, or on none).
#[test]
fn replica_directory_replaced_by_a_rename_goes_on_every_copy_or_none() {
    if !require_root() {
        return;
    }
    const ROUNDS: usize = 300;
    let b = Bricks::start(2);
    let spec = b.spec("replaced", 1, 2);
    let (ma, mb) = (b.mount(&spec, "a"), b.mount(&spec, "b"));
    let differ = lockstep(
        ROUNDS,
        // Mount a: a file in `t` made (odd rounds) or removed (even rounds).
        (&|r| file_in_t_ready(&ma, r), &|r| file_in_t_changed(&ma, r)),
        // Mount b: an empty directory renamed over `t`.
        (&|_| drop(std::fs::create_dir(mb.path("s"))), &|_| {
            drop(std::fs::rename(mb.path("s"), mb.path("t")))
        }),
        || {
            let seen = ["t", "s"].map(|rel| listings(&b, rel));
            seen.iter().any(|s| s[0] != s[1]).then_some(seen)
        },
    );
    no_round_differs(&differ, ROUNDS, "copies");
}

/// On distribute 3, one mount makes a file in a directory while the other tries to remove
/// it, round after round. The directory keeps a file on the child its name hashes to, so
/// each removal takes it off the other children first for a moment, then fails there (not
/// empty) and makes it again. Every file is made all the same: a create that finds the
/// directory gone from its child waits for it to be made again.
#[test]
fn distribute_files_made_while_a_removal_fails_are_made() {
    if !require_root() {
        return;
    }
    const ROUNDS: usize = 500;
    let b = Bricks::start(3);
    let spec = b.spec("nonempty", 1, 1);
    let (ma, mb) = (b.mount(&spec, "a"), b.mount(&spec, "b"));
    std::fs::create_dir(ma.path("t")).unwrap();
    let hashed = |dir: proto::FileId, name: &str| layout::pick(layout::hash_name(dir, name.as_bytes()), 3);
    let t = xattr_of(&b.bricks[0].path.join("t"), "trusted.shoal.id")
        .and_then(|v| proto::FileId::from_bytes(&v))
        .expect("id of t");
    let home = hashed(proto::FileId::ROOT, "t");
    let keep = (0..)
        .map(|i| format!("keep{i}"))
        .find(|n| hashed(t, n) == home)
        .unwrap();
    std::fs::write(ma.path(&format!("t/{keep}")), b"x").unwrap();
    let failed = Mutex::new(Vec::new());
    lockstep(
        ROUNDS,
        (
            // (The last round's file goes: only `keep` holds the directory.)
            &|r| {
                drop(std::fs::remove_file(
                    ma.path(&format!("t/f{}", r.wrapping_sub(1))),
                ))
            },
            &|r| {
                if let Err(e) = std::fs::write(ma.path(&format!("t/f{r}")), record("a")) {
                    failed.lock().unwrap().push(format!("round {r}: {e}"));
                }
            },
        ),
        (&|_| {}, &|_| drop(std::fs::remove_dir(mb.path("t")))),
        || None::<()>,
    );
    let failed = failed.into_inner().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {ROUNDS} files not made: {failed:?}",
        failed.len()
    );
}

/// On stripe 2, one mount removes a directory (or renames another over it) while the
/// other makes or removes a file in it, round after round: each round ends with the
/// directory on both bricks or on neither, holding the same names, as changes inside a
/// directory never interleave with its removal.
#[test]
fn stripe_directory_goes_on_every_brick_or_none() {
    if !require_root() {
        return;
    }
    const ROUNDS: usize = 300;
    let b = Bricks::start(2);
    let spec = b.spec("rmdirs", 2, 1);
    let (ma, mb) = (b.mount(&spec, "a"), b.mount(&spec, "b"));
    let on_bricks = |rel: &str| listings(&b, rel);
    let differ = lockstep(
        ROUNDS,
        // Mount a: a file in `t` made (odd rounds) or removed (even rounds).
        (&|r| file_in_t_ready(&ma, r), &|r| file_in_t_changed(&ma, r)),
        // Mount b: `t` removed, or an empty directory renamed over it.
        (
            &|r| {
                if r % 4 >= 2 {
                    let _ = std::fs::create_dir(mb.path("s"));
                }
            },
            &|r| {
                let _ = match r % 4 >= 2 {
                    true => std::fs::rename(mb.path("s"), mb.path("t")),
                    false => std::fs::remove_dir(mb.path("t")),
                };
            },
        ),
        || {
            let seen = ["t", "s"].map(on_bricks);
            seen.iter().any(|s| s[0] != s[1]).then_some(seen)
        },
    );
    no_round_differs(&differ, ROUNDS, "bricks");
}

/// On stripe 2, one mount makes a hard link to a file while the other removes the file's
/// only other name, round after round: the new name ends on both bricks (the same file) or
/// on neither, as a link reaching a child after the file went there is taken back.
#[test]
fn stripe_link_racing_the_last_unlink_is_all_or_nothing() {
    if !require_root() {
        return;
    }
    const ROUNDS: usize = 300;
    let b = Bricks::start(2);
    let spec = b.spec("links", 2, 1);
    let (ma, mb) = (b.mount(&spec, "a"), b.mount(&spec, "b"));
    let ids = |rel: &str| {
        b.bricks
            .iter()
            .map(|br| xattr_of(&br.path.join(rel), "trusted.shoal.id"))
            .collect::<Vec<_>>()
    };
    let differ = lockstep(
        ROUNDS,
        (
            &|_| {
                let _ = std::fs::remove_file(ma.path("l"));
                let _ = std::fs::write(ma.path("f"), record("a"));
            },
            &|_| drop(std::fs::hard_link(ma.path("f"), ma.path("l"))),
        ),
        (&|_| {}, &|_| drop(std::fs::remove_file(mb.path("f")))),
        || {
            let seen = ids("l");
            (seen[0] != seen[1]).then_some(seen)
        },
    );
    no_round_differs(&differ, ROUNDS, "bricks");
}
