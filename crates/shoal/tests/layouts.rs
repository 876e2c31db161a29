//! Every volume layout through a real FUSE mount: file sizes at the edges, a long random
//! sequence of operations against an in-memory model, namespace operations, and real tools
//! (tar, rsync, sqlite3). Writes go through one mount and are checked through another.

mod common;

use common::tree::assert_same;
use common::*;
use rand::{Rng, SeedableRng};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

/// The kernel's switch for FUSE over io_uring (Linux 6.14 on), which mounts take up when
/// it is on.
const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";
/// The switch holds for every mount made while it is on: the test that turns it on runs
/// alone.
static TRANSPORT: RwLock<()> = RwLock::new(());

fn suite(bricks: usize, stripe: u32, replica: u32, seed: u64) {
    let _transport = TRANSPORT.read().unwrap_or_else(|p| p.into_inner());
    suite_then(bricks, stripe, replica, seed, |_, _| {});
}

/// The suite, then `after` with its two mounts.
fn suite_then(bricks: usize, stripe: u32, replica: u32, seed: u64, after: impl FnOnce(&Bricks, &[&Mount])) {
    if !require_root() {
        return;
    }
    let b = Bricks::start(bricks);
    let spec = b.spec("vol", stripe, replica);
    let a = b.mount(&spec, "a");
    let other = b.mount(&spec, "b");
    sizes_round_trip(&a, &other);
    close_to_open(&a, &other);
    random_ops_match_model(&a, &other, seed);
    namespace_ops(&a, &other);
    // User nobody must reach the mounts.
    // (Search permission only: the directory holds the cluster key.)
    sh(&format!("chmod 711 {}", b.dir.path().display()));
    let bricks: Vec<PathBuf> = b.bricks.iter().map(|x| x.path.clone()).collect();
    set_id_bits(&a, &other, &bricks);
    tar_round_trip(&a, b.dir.path());
    rsync_round_trip(&a, b.dir.path());
    sqlite_on_mount(&a);
    after(&b, &[&a, &other]);
}

fn sizes_round_trip(a: &Mount, other: &Mount) {
    let sizes = [0usize, 1, 4095, 4096, 131071, 131073, 65 << 20];
    for (i, &n) in sizes.iter().enumerate() {
        let data = pattern(i as u64, n);
        let name = format!("size-{n}");
        std::fs::write(a.path(&name), &data).unwrap();
        let back = std::fs::read(other.path(&name)).unwrap();
        assert_eq!(back.len(), n, "{name}: length through the other mount");
        assert!(back == data, "{name}: content differs through the other mount");
        assert_eq!(std::fs::metadata(other.path(&name)).unwrap().len(), n as u64);
    }
}

/// A file written and closed through one mount reads back through the other at its next
/// open, every time: with both mounts caching it, each rewrite races the bricks'
/// announcement to the other mount.
fn close_to_open(a: &Mount, other: &Mount) {
    let name = "close-to-open";
    for round in 0..300u64 {
        // Same size each round: only the announcement tells the reader its pages are old.
        let data = pattern(round, 4096);
        let (w, r) = if round % 2 == 0 { (a, other) } else { (other, a) };
        std::fs::write(w.path(name), &data).unwrap();
        let back = std::fs::read(r.path(name)).unwrap();
        assert!(
            back == data,
            "round {round}: the other mount read an older version"
        );
        // The writer reads it too, so that both cache it for the next round.
        assert!(
            std::fs::read(w.path(name)).unwrap() == data,
            "round {round}: the writer's own read"
        );
    }
}

fn random_ops_match_model(a: &Mount, other: &Mount, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let path = a.path("model");
    let mut model: Vec<u8> = Vec::new();
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap()
    };
    let mut f = open();
    for step in 0..2000 {
        match rng.random_range(0..100) {
            0..=44 => {
                let off = rng.random_range(0..=model.len() + 65536);
                let len = rng.random_range(1..262144);
                let data = pattern(rng.random(), len);
                f.seek(SeekFrom::Start(off as u64)).unwrap();
                f.write_all(&data).unwrap();
                if model.len() < off + len {
                    model.resize(off + len, 0);
                }
                model[off..off + len].copy_from_slice(&data);
            }
            45..=59 => {
                let len = rng.random_range(0..=model.len() * 2 + 1000);
                f.set_len(len as u64).unwrap();
                model.resize(len, 0);
            }
            60..=84 => {
                let off = rng.random_range(0..=model.len() + 1000);
                let len = rng.random_range(0..300000);
                let mut buf = vec![0u8; len];
                f.seek(SeekFrom::Start(off as u64)).unwrap();
                let mut got = 0;
                while got < len {
                    let n = f.read(&mut buf[got..]).unwrap();
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                let end = (off + len).min(model.len()).max(off.min(model.len()));
                let want = &model[off.min(model.len())..end];
                assert_eq!(got, want.len(), "step {step}: read length at {off}+{len}");
                assert!(&buf[..got] == want, "step {step}: read content at {off}+{len}");
            }
            85..=92 => f.sync_all().unwrap(),
            _ => {
                drop(f);
                f = open();
                assert_eq!(
                    f.metadata().unwrap().len(),
                    model.len() as u64,
                    "step {step}: size after reopen"
                );
            }
        }
    }
    f.sync_all().unwrap();
    drop(f);
    assert!(
        std::fs::read(&path).unwrap() == model,
        "final content through the writing mount"
    );
    assert!(
        std::fs::read(other.path("model")).unwrap() == model,
        "final content through the other mount"
    );
}

fn namespace_ops(a: &Mount, other: &Mount) {
    // Deep trees.
    let deep: String = (0..40).map(|i| format!("d{i}/")).collect();
    std::fs::create_dir_all(a.path(&deep)).unwrap();
    std::fs::write(a.path(&format!("{deep}leaf")), b"deep").unwrap();
    assert_eq!(
        std::fs::read(other.path(&format!("{deep}leaf"))).unwrap(),
        b"deep"
    );

    // Renames of files across directories, over an existing target, and of directories.
    std::fs::create_dir_all(a.path("r1/sub")).unwrap();
    std::fs::create_dir_all(a.path("r2")).unwrap();
    for i in 0..30 {
        std::fs::write(a.path(&format!("r1/f{i}")), format!("file {i}")).unwrap();
    }
    std::fs::write(a.path("r1/sub/inner"), b"inner").unwrap();
    for i in 0..30 {
        std::fs::rename(a.path(&format!("r1/f{i}")), a.path(&format!("r2/g{i}"))).unwrap();
    }
    for i in 0..30 {
        assert!(!other.path(&format!("r1/f{i}")).exists());
        assert_eq!(
            std::fs::read_to_string(other.path(&format!("r2/g{i}"))).unwrap(),
            format!("file {i}")
        );
    }
    std::fs::write(a.path("r2/victim"), b"old").unwrap();
    std::fs::rename(a.path("r2/g0"), a.path("r2/victim")).unwrap();
    assert_eq!(
        std::fs::read_to_string(other.path("r2/victim")).unwrap(),
        "file 0"
    );
    std::fs::rename(a.path("r1/sub"), a.path("r2/moved")).unwrap();
    assert_eq!(std::fs::read(other.path("r2/moved/inner")).unwrap(), b"inner");
    assert!(!other.path("r1/sub").exists());
    let mut names: Vec<String> = std::fs::read_dir(other.path("r2"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names.len(),
        31,
        "r2 lists each name once (29 files, victim, moved): {names:?}"
    );

    // Hard links.
    std::fs::write(a.path("h1"), b"linked").unwrap();
    std::fs::hard_link(a.path("h1"), a.path("r2/h2")).unwrap();
    assert_eq!(std::fs::metadata(other.path("h1")).unwrap().nlink(), 2);
    OpenOptions::new()
        .append(true)
        .open(a.path("r2/h2"))
        .unwrap()
        .write_all(b"+more")
        .unwrap();
    assert_eq!(std::fs::read(other.path("h1")).unwrap(), b"linked+more");
    std::fs::remove_file(a.path("h1")).unwrap();
    assert_eq!(std::fs::read(other.path("r2/h2")).unwrap(), b"linked+more");
    assert_eq!(std::fs::metadata(a.path("r2/h2")).unwrap().nlink(), 1);

    // Symlinks.
    std::os::unix::fs::symlink("r2/h2", a.path("sl")).unwrap();
    assert_eq!(std::fs::read_link(other.path("sl")).unwrap(), Path::new("r2/h2"));
    assert_eq!(std::fs::read(other.path("sl")).unwrap(), b"linked+more");

    // Ownership, permissions, times.
    let p = a.path("attrs");
    std::fs::write(&p, b"x").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_000_000_000, 123_456_789);
    File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
        .unwrap();
    let m = std::fs::metadata(other.path("attrs")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 1234, 5678));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!((m.atime(), m.atime_nsec()), (1_000_000_000, 123_456_789));

    // Extended attributes.
    let xp = a.path("attrs");
    rustix::fs::setxattr(&xp, "user.colour", b"blue", rustix::fs::XattrFlags::empty()).unwrap();
    let mut buf = [0u8; 64];
    let n = rustix::fs::getxattr(other.path("attrs"), "user.colour", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"blue");
    let n = rustix::fs::listxattr(other.path("attrs"), &mut buf[..]).unwrap();
    let names: Vec<&[u8]> = buf[..n].split(|b| *b == 0).filter(|s| !s.is_empty()).collect();
    assert_eq!(names, vec![&b"user.colour"[..]], "internal xattrs must not show");
    // Under names that hash elsewhere (a pointer there, the data where it was), the file's
    // xattrs are still read from where its data is, by the other mount too.
    let mut name = "attrs".to_string();
    for i in 0..8 {
        let to = format!("attrs-renamed-{i}");
        std::fs::rename(a.path(&name), a.path(&to)).unwrap();
        name = to;
        let n = rustix::fs::getxattr(other.path(&name), "user.colour", &mut buf[..]).unwrap();
        assert_eq!(&buf[..n], b"blue", "after the rename to {name}");
        let n = rustix::fs::listxattr(a.path(&name), &mut buf[..]).unwrap();
        assert_eq!(&buf[..n], b"user.colour\0", "after the rename to {name}");
    }
    let xp = a.path(&name);
    rustix::fs::removexattr(&xp, "user.colour").unwrap();
    assert_eq!(
        rustix::fs::getxattr(&xp, "user.colour", &mut buf[..]),
        Err(rustix::io::Errno::NODATA)
    );
}

/// Permission bits of `p`, with the set-id bits.
fn perm(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

/// Runs `cmd` in a shell as user nobody, in group `gid` and no other.
fn as_nobody(gid: u32, cmd: &str) {
    sh(&format!("{NOBODY} {gid} --clear-groups sh -c '{cmd}'"));
}

/// `setpriv` as user nobody, its group to follow.
const NOBODY: &str = "setpriv --reuid 65534 --regid";

/// Writes, truncations and allocations by a process without CAP_FSETID, and changes of
/// owner, drop set-id bits as on a local file system (the mount does it: the kernel leaves
/// it to it); root's keep them. Any write drops a file's capabilities on every brick.
fn set_id_bits(a: &Mount, other: &Mount, bricks: &[PathBuf]) {
    std::fs::create_dir(a.path("setid")).unwrap();
    let f = a.path("setid/f");
    let path = f.display().to_string();
    std::fs::write(&f, b"#!/bin/sh\n").unwrap();
    let set = |mode: u32| std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    set(0o6777);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(b"# root\n")
        .unwrap();
    assert_eq!(perm(&f), 0o6777, "root's write keeps the bits");
    for cmd in ["truncate -s 1 {}", "fallocate -l 65536 {}"] {
        sh(&cmd.replace("{}", &path));
        assert_eq!(perm(&f), 0o6777, "{cmd} as root keeps them");
    }
    as_nobody(65534, &format!("printf x >> {path}"));
    assert_eq!(perm(&f), 0o777, "a write by another user drops them");
    for cmd in ["truncate -s 1 {}", "fallocate -l 65536 {}", ": > {}"] {
        set(0o6777);
        as_nobody(65534, &cmd.replace("{}", &path));
        assert_eq!(perm(&f), 0o777, "{cmd} as another user drops them");
    }
    // Closes, chmods and writes by another user in quick succession. (Whether a close's
    // attributes, answered by the bricks before a chmod, get handled after it is up to
    // timing here: `fuse::known`'s tests make that crossing happen.)
    let mut writer = Writer::open(&path, true);
    for round in 0..50 {
        let mut root = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
        root.write_all(b"r").unwrap();
        drop(root);
        set(0o6777);
        writer.append();
        assert_eq!(
            perm(&f),
            0o777,
            "round {round}: a write by another user after a chmod"
        );
    }
    drop(writer);
    // Bits set through the other mount while a writer holds the file open here: this
    // kernel is not told (it would fetch the attributes at the next open), only the
    // writes' own flag tells the mount, which must take them off (once it has heard of the
    // change: until then, its knowledge is as old as the kernel's).
    let seen_by_other = other.path("setid/f");
    let mut writer = Writer::open(&path, true);
    writer.append();
    std::fs::set_permissions(&seen_by_other, std::fs::Permissions::from_mode(0o6777)).unwrap();
    wait_for(
        "a write to drop bits set through another mount",
        Duration::from_secs(10),
        || {
            writer.append();
            perm(&seen_by_other) == 0o777
        },
    );
    drop(writer);
    // Set-group-ID without group execution (a locking mark): only a writer outside the
    // file's group (root's) drops it.
    set(0o2666);
    as_nobody(0, &format!("printf x >> {path}"));
    assert_eq!(perm(&f), 0o2666);
    as_nobody(65534, &format!("printf x >> {path}"));
    assert_eq!(perm(&f), 0o666);
    // A change of owner drops them from a file (the bricks' kernel does), not from a
    // directory.
    set(0o6755);
    std::os::unix::fs::chown(&f, Some(65534), None).unwrap();
    assert_eq!(perm(&f), 0o755);
    let d = a.path("setid/d");
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o2755)).unwrap();
    std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
    assert_eq!(perm(&d), 0o2755);
    // Capabilities set through the other mount while a writer (root) holds the file open
    // here go with its next write, also one that reaches some bricks only (a stripe's
    // first chunk, the file being small: only stripes need the mount for this, on other
    // layouts every copy is written and the bricks' kernel drops them).
    let mut writer = Writer::open(&path, false);
    writer.append();
    sh(&format!("setcap cap_net_raw+ep {}", seen_by_other.display()));
    let on_bricks = || {
        bricks
            .iter()
            .map(|b| b.join("setid/f"))
            .filter(|p| p.exists())
            .filter(|p| xattr_of(p, "security.capability").is_some())
            .count()
    };
    assert!(on_bricks() > 0, "the capability is on the bricks");
    wait_for(
        "a write to drop the file's capabilities",
        Duration::from_secs(10),
        || {
            writer.append();
            on_bricks() == 0
        },
    );
}

/// A shell holding a file open for appending, as user nobody or as root, that appends a
/// byte when asked; killed when dropped.
struct Writer {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Writer {
    fn open(path: &str, nobody: bool) -> Writer {
        use std::process::{Command, Stdio};
        let script = format!(
            "exec 3>>{path} && echo ready && while read x; do printf z >&3 && echo done || echo failed; done"
        );
        // As nobody (in group nogroup), or as root.
        let shell = match nobody {
            true => format!("{NOBODY} 65534 --clear-groups sh"),
            false => "sh".to_string(),
        };
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!("exec {shell} -c \"$0\""));
        let mut child = cmd
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut w = Writer { child, stdin, stdout };
        assert_eq!(w.line(), "ready", "the writer opened {path}");
        w
    }

    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut l = String::new();
        self.stdout.read_line(&mut l).unwrap();
        l.trim().to_string()
    }

    /// Appends a byte through the open file, once the shell says it did.
    fn append(&mut self) {
        writeln!(self.stdin, "x").unwrap();
        assert_eq!(self.line(), "done", "the writer appended");
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn source_tree() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
        .join("crates")
}

fn tar_round_trip(a: &Mount, scratch: &Path) {
    let src = source_tree();
    let ball = scratch.join("src.tar");
    let out = scratch.join("tar-out");
    std::fs::create_dir_all(a.path("tar")).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    sh(&format!("tar -C {} -cf {} .", src.display(), ball.display()));
    sh(&format!(
        "tar -C {} -xpf {}",
        a.path("tar").display(),
        ball.display()
    ));
    sh(&format!(
        "tar -C {} -cf - . | tar -C {} -xpf -",
        a.path("tar").display(),
        out.display()
    ));
    assert_same(&src, &out);
    assert_same(&src, &a.path("tar"));
}

fn rsync_round_trip(a: &Mount, scratch: &Path) {
    let src = source_tree();
    let back = scratch.join("rsync-back");
    sh(&format!(
        "rsync -a {}/ {}/",
        src.display(),
        a.path("rsync").display()
    ));
    sh(&format!(
        "rsync -a {}/ {}/",
        a.path("rsync").display(),
        back.display()
    ));
    assert_same(&src, &back);
    // A second pass finds nothing to do: sizes, times and modes came through.
    let changes = sh(&format!(
        "rsync -ai {}/ {}/",
        src.display(),
        a.path("rsync").display()
    ));
    assert!(changes.trim().is_empty(), "rsync found changes: {changes}");
}

fn sqlite_on_mount(a: &Mount) {
    let db = a.path("test.sqlite");
    let mut sql = String::from("create table t(a integer primary key, b text);\nbegin;\n");
    for i in 1..=1000 {
        sql.push_str(&format!("insert into t values({i}, 'row {i}');\n"));
    }
    sql.push_str("commit;\ncreate index tb on t(b);\n");
    let script = a.path("fill.sql");
    std::fs::write(&script, sql).unwrap();
    sh(&format!("sqlite3 {} < {}", db.display(), script.display()));
    let out = sh(&format!(
        "sqlite3 {} 'select count(*), sum(a) from t where b like \"row %\"; pragma integrity_check;'",
        db.display()
    ));
    assert_eq!(out.trim(), "1000|500500\nok");
}

#[test]
fn distribute_3() {
    suite(3, 1, 1, 1);
}

#[test]
fn stripe_2() {
    suite(2, 2, 1, 2);
}

#[test]
fn replica_2() {
    suite(2, 1, 2, 3);
}

#[test]
fn replica_3() {
    suite(3, 1, 3, 4);
}

#[test]
fn distributed_replicate_2x2() {
    suite(4, 1, 2, 5);
}

#[test]
fn distributed_stripe_2x2() {
    suite(4, 2, 1, 6);
}

/// Puts the kernel's io_uring switch back as it was.
struct Switch(String);

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = std::fs::write(ENABLE_URING, self.0.trim());
    }
}

/// Turns FUSE over io_uring on for a test, which runs alone while it holds what this
/// returns; None without root or where the kernel lacks it (said why).
fn uring_on() -> Option<(Switch, std::sync::RwLockWriteGuard<'static, ()>)> {
    if !require_root() {
        return None;
    }
    let alone = TRANSPORT.write().unwrap_or_else(|p| p.into_inner());
    let Ok(before) = std::fs::read_to_string(ENABLE_URING) else {
        eprintln!("skipped: this kernel has no FUSE over io_uring ({ENABLE_URING} is missing)");
        return None;
    };
    let switch = Switch(before);
    std::fs::write(ENABLE_URING, "1").expect("turn FUSE over io_uring on");
    // (The switch goes back before the others may run: a tuple drops in order.)
    Some((switch, alone))
}

/// How many times the threads of process `pid` named `prefix...` went to sleep (to be
/// woken to serve: the mount's io_uring queues' `fuse-qN`, a brick's lanes' `brick-cpuN`).
fn thread_wakeups(pid: u32, prefix: &str) -> u64 {
    let mut n = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        n += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    n
}

#[test]
fn replica_3_over_io_uring() {
    let Some(_uring) = uring_on() else { return };
    suite_then(3, 1, 3, 7, |bricks, mounts| {
        for m in mounts {
            // Thousands of requests went by: each queue thread woke for many of them.
            let woke = thread_wakeups(m.pid(), "fuse-q");
            assert!(
                woke > 1000,
                "the io_uring queues of {} woke {woke} times",
                m.dir.display()
            );
        }
        // And the queues' calls went on lanes, which the bricks serve on their CPUs'
        // threads (`proto::lane`).
        for i in 0..bricks.bricks.len() {
            let pid = bricks.pid(i).expect("brick running");
            let woke = thread_wakeups(pid, "brick-cpu");
            assert!(woke > 1000, "brick {i}'s lanes woke {woke} times");
        }
    });
}

/// A process pinned to CPU 0 that runs `python3 -c CODE FILE`.
fn pinned_python(code: &str, file: &Path) -> std::process::Child {
    std::process::Command::new("taskset")
        .args(["-c", "0", "python3", "-c", code])
        .arg(file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start python3")
}

/// Over io_uring each CPU's queue holds a bounded number of requests; processes blocked
/// on a lock keep theirs. More of them than a queue starts with, all on one CPU, must not
/// hold up that CPU's other requests: the holder's unlock, from the same CPU, gets through.
#[test]
fn blocked_locks_do_not_hold_up_their_cpus_other_requests_over_io_uring() {
    use std::io::{BufRead, BufReader};
    let Some(_uring) = uring_on() else { return };
    let b = Bricks::start(1);
    let m = b.mount(&b.spec("locks", 1, 1), "a");
    let file = m.path("lock");
    std::fs::write(&file, b"x").unwrap();
    let mut holder = pinned_python(
        "import fcntl, sys\nf = open(sys.argv[1], 'r+')\nfcntl.lockf(f, fcntl.LOCK_EX)\nprint('locked', flush=True)\nsys.stdin.readline()\nfcntl.lockf(f, fcntl.LOCK_UN)\nprint('unlocked', flush=True)",
        &file,
    );
    let mut said = BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    said.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    // Twice as many waiters as a queue's first entries.
    let mut waiters: Vec<_> = (0..32)
        .map(|_| {
            pinned_python(
                "import fcntl, sys\nf = open(sys.argv[1], 'r+')\nfcntl.lockf(f, fcntl.LOCK_EX)",
                &file,
            )
        })
        .collect();
    let in_fcntl = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/syscall"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse::<i64>().ok()))
            == Some(libc::SYS_fcntl)
    };
    wait_for(
        "every waiter blocked on the lock",
        Duration::from_secs(60),
        || waiters.iter().all(|w| in_fcntl(w.id())),
    );
    let mut tell = holder.stdin.take().unwrap();
    writeln!(tell).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = said.read_line(&mut line);
        let _ = tx.send(line);
    });
    let unlocked = rx.recv_timeout(Duration::from_secs(60));
    if unlocked.as_deref().map(str::trim) != Ok("unlocked") {
        // (Ends the waiters and the holder, which the stuck mount would keep.)
        abort_fuse(&m.dir);
        panic!("the holder's unlock did not get through: {unlocked:?}");
    }
    wait_for(
        "every waiter got the lock and ended",
        Duration::from_secs(60),
        || waiters.iter_mut().all(|w| matches!(w.try_wait(), Ok(Some(_)))),
    );
    for w in &mut waiters {
        assert!(w.wait().unwrap().success());
    }
    assert!(holder.wait().unwrap().success());
}
