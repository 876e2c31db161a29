//! Replication survives a brick server's death: reads and writes go on, the surviving
//! bricks mark every file changed meanwhile as pending for the dead one, and the mount heals
//! it once it is back, also a file held open and written all along. Without a quorum, writes
//! are refused rather than allowed to diverge. Distribute makes again, on a brick that was
//! down, the directories made meanwhile, and gives it the attribute changes of
//! directories it missed; distribute and stripe rename a directory on every brick or on
//! none.

mod common;

use common::*;
use std::io::Write;
use std::time::Duration;

fn pending(brick: &std::path::Path, rel: &str, child: usize) -> i64 {
    let mut buf = [0u8; 8];
    match rustix::fs::lgetxattr(
        brick.join(rel),
        format!("trusted.shoal.pending.{child}"),
        &mut buf[..],
    ) {
        Ok(8) => i64::from_be_bytes(buf),
        _ => 0,
    }
}

/// Makes `dir` in `parent` through the mount under the first name `{stem}-{k}` the
/// volume takes (a name that hashes to a brick that is down is refused): its path.
fn mkdir_somewhere(parent: &std::path::Path, stem: &str) -> std::path::PathBuf {
    for k in 0..64 {
        let p = parent.join(format!("{stem}-{k}"));
        if std::fs::create_dir(&p).is_ok() {
            return p;
        }
    }
    panic!("no name for {stem} in {} was taken", parent.display());
}

/// Whether `m` writes, at its root, `n` files whose names hash to child `child` of 3:
/// it reaches that brick.
fn reaches(m: &Mount, child: usize, n: usize) -> bool {
    (0..)
        .map(|i| format!("probe-{i}"))
        .filter(|name| layout::pick(layout::hash_name(proto::FileId::ROOT, name.as_bytes()), 3) == child)
        .take(n)
        .all(|name| std::fs::write(m.path(&name), b"x").is_ok())
}

#[test]
fn distribute_makes_again_on_a_brick_that_was_down_the_directories_made_meanwhile() {
    if !require_root() {
        return;
    }
    let mut b = Bricks::start(3);
    let spec = b.spec("d3", 1, 1);
    let m = b.mount(&spec, "a");
    b.kill(2);
    // Two levels made while brick 2 is down (each where its name does not hash to it),
    // given a mode and an xattr it misses too.
    let top = mkdir_somewhere(&m.dir, "top");
    let sub = mkdir_somewhere(&top, "sub");
    sh(&format!(
        "chmod 0750 {0} && setfattr -n user.colour -v blue {0}",
        sub.display()
    ));
    b.restart(2);
    wait_for(
        "the mount to reach brick 2 again",
        Duration::from_secs(10),
        || reaches(&m, 2, 3),
    );
    // Every name in it can be made, a third of them hashing to brick 2.
    for i in 0..30 {
        let p = sub.join(format!("f{i}"));
        if let Err(e) = std::fs::write(&p, pattern(i, 1000)) {
            panic!("{}: {e}", p.display());
        }
    }
    let mut listed: Vec<_> = std::fs::read_dir(&sub)
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    let mut want: Vec<_> = (0..30).map(|i| format!("f{i}")).collect();
    want.sort();
    assert_eq!(listed, want);
    // Brick 2 has both directories as the others do.
    let rel = sub.strip_prefix(&m.dir).unwrap();
    let (d0, d2) = (b.bricks[0].path.join(rel), b.bricks[2].path.join(rel));
    assert!(d2.is_dir(), "{} not made again", d2.display());
    for name in ["trusted.shoal.id", "user.colour"] {
        assert_eq!(xattr_of(&d2, name), xattr_of(&d0, name), "{name}");
    }
    assert_eq!(xattr_of(&d2, "user.colour").as_deref(), Some(&b"blue"[..]));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&d2).unwrap().mode() & 0o7777, 0o750);
    // A fresh mount (nothing cached) finds everything, by name and by listing.
    let m2 = b.mount(&spec, "b");
    let sub2 = m2.dir.join(rel);
    for i in 0..30 {
        assert!(std::fs::read(sub2.join(format!("f{i}"))).unwrap() == pattern(i, 1000));
    }
    assert_eq!(std::fs::read_dir(&sub2).unwrap().count(), 30);
    // Brick 0 answers listings for directories: one made while it was down is made again
    // there once looked up, and listed from then on.
    b.kill(0);
    let late = mkdir_somewhere(&top, "late");
    b.restart(0);
    let name = late.file_name().unwrap().to_owned();
    let m3 = b.mount(&spec, "c");
    let top3 = m3.dir.join(top.strip_prefix(&m.dir).unwrap());
    wait_for("the new mount to reach brick 0", Duration::from_secs(10), || {
        reaches(&m3, 0, 3)
    });
    assert!(std::fs::metadata(top3.join(&name)).unwrap().is_dir());
    assert!(b.bricks[0].path.join(late.strip_prefix(&m.dir).unwrap()).is_dir());
    assert!(std::fs::read_dir(&top3)
        .unwrap()
        .any(|d| d.unwrap().file_name() == name));
}

/// The names directly in `dir` (a brick's directory), sorted.
fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// Asserts that every brick's root holds exactly `names`.
fn on_every_brick(b: &Bricks, names: &[&str]) {
    for (i, br) in b.bricks.iter().enumerate() {
        assert_eq!(names_in(&br.path), names, "brick {i}");
    }
}

#[test]
fn distribute_changes_a_directory_on_every_brick_or_on_none() {
    if !require_root() {
        return;
    }
    let mut b = Bricks::start(3);
    let spec = b.spec("d3", 1, 1);
    let m = b.mount(&spec, "a");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    // `away` is neither where "dir" nor where "moved" hashes (the kernel's lookups of
    // them reach the volume), nor the home of `sub` (where its name in "dir" hashes),
    // which answers for its attributes.
    let hashed =
        |parent: proto::FileId, name: &str| layout::pick(layout::hash_name(parent, name.as_bytes()), 3);
    let root = proto::FileId::ROOT;
    let away = (0..3)
        .find(|&k| k != hashed(root, "dir") && k != hashed(root, "moved"))
        .unwrap();
    std::fs::create_dir(m.path("dir")).unwrap();
    let dir = b.bricks[0].path.join("dir");
    let dir_id = proto::FileId::from_bytes(&xattr_of(&dir, "trusted.shoal.id").unwrap()).unwrap();
    let name = (0..)
        .map(|n| format!("sub-{n}"))
        .find(|n| hashed(dir_id, n) != away)
        .unwrap();
    let home = hashed(dir_id, &name);
    let rel = format!("dir/{name}");
    let sub = m.path(&rel);
    std::fs::create_dir(&sub).unwrap();
    for i in 0..30 {
        std::fs::write(sub.join(format!("f{i}")), pattern(i, 1000)).unwrap();
    }
    on_every_brick(&b, &["dir"]);
    let counts = |b: &Bricks| {
        let at = b.bricks[home].path.join(&rel);
        [
            xattr_of(&at, "trusted.shoal.dir-behind"),
            xattr_of(&at, "trusted.shoal.dir-times-behind"),
        ]
    };
    // With a brick down no directory is renamed: nothing moves anywhere.
    b.kill(away);
    let err = std::fs::rename(m.path("dir"), m.path("moved")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    for (i, br) in b.bricks.iter().enumerate().filter(|(i, _)| *i != away) {
        assert_eq!(names_in(&br.path), ["dir"], "brick {i}");
    }
    // A directory's attributes change on its home and the others up; the home counts
    // the changes the brick down missed.
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&sub, Some(1234), None).unwrap();
    rustix::fs::setxattr(&sub, "user.colour", b"blue", rustix::fs::XattrFlags::empty()).unwrap();
    sh(&format!("touch -m -d @1000000000 {}", sub.display()));
    let changed = |p: &std::path::Path| {
        let md = std::fs::metadata(p).unwrap();
        md.mode() & 0o7777 == 0o700
            && md.uid() == 1234
            && md.mtime() == 1_000_000_000
            && xattr_of(p, "user.colour").as_deref() == Some(&b"blue"[..])
    };
    for (i, br) in b.bricks.iter().enumerate().filter(|(i, _)| *i != away) {
        assert!(changed(&br.path.join(&rel)), "brick {i}");
    }
    assert!(counts(&b).iter().all(Option::is_some));
    b.restart(away);
    wait_for(
        "the mount to reach the brick again",
        Duration::from_secs(10),
        || reaches(&m, away, 3),
    );
    // A fresh mount looks it up: it answers with the home's attributes, and the brick
    // that missed them gets them.
    let m2 = b.mount(&spec, "b");
    wait_for(
        "the new mount to reach the brick",
        Duration::from_secs(10),
        || reaches(&m2, away, 3),
    );
    assert!(changed(&m2.path(&rel)));
    assert!(changed(&b.bricks[away].path.join(&rel)));
    assert!(counts(&b).iter().all(Option::is_none));
    drop(m2);
    // With its home down, a directory's attributes do not change (through a descriptor
    // opened before: a lookup would stop at the home).
    let fd = std::fs::File::open(&sub).unwrap();
    b.kill(home);
    let err = rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(0o755)).unwrap_err();
    assert_eq!(err, rustix::io::Errno::NOTCONN);
    drop(fd);
    for (i, br) in b.bricks.iter().enumerate().filter(|(i, _)| *i != home) {
        assert_eq!(mode(&br.path.join(&rel)), 0o700, "brick {i}");
    }
    b.restart(home);
    wait_for(
        "the mount to reach the brick again",
        Duration::from_secs(10),
        || reaches(&m, home, 3),
    );
    for br in &b.bricks {
        for n in names_in(&br.path).iter().filter(|n| n.starts_with("probe-")) {
            std::fs::remove_file(br.path.join(n)).unwrap();
        }
    }
    on_every_brick(&b, &["dir"]);
    // A brick that refuses (something else under the new name there, which the volume
    // does not see: it is not where the name hashes) fails the rename after the others
    // made it: they take it back.
    let k = away;
    let squatter = b.bricks[k].path.join("moved");
    std::fs::create_dir_all(squatter.join("full")).unwrap();
    let err = std::fs::rename(m.path("dir"), m.path("moved")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY), "{err}");
    for (i, br) in b.bricks.iter().enumerate() {
        let want: &[&str] = if i == k { &["dir", "moved"] } else { &["dir"] };
        assert_eq!(names_in(&br.path), want, "brick {i}");
    }
    std::fs::remove_dir_all(&squatter).unwrap();
    // With every brick up it is renamed on each, and a fresh mount finds everything.
    std::fs::rename(m.path("dir"), m.path("moved")).unwrap();
    on_every_brick(&b, &["moved"]);
    let m3 = b.mount(&spec, "c");
    let moved = m3.path(&format!("moved/{name}"));
    assert_eq!(std::fs::read_dir(&moved).unwrap().count(), 30);
    for i in 0..30 {
        assert!(std::fs::read(moved.join(format!("f{i}"))).unwrap() == pattern(i, 1000));
    }
}

#[test]
fn stripe_renames_on_every_brick_or_on_none() {
    if !require_root() {
        return;
    }
    let mut b = Bricks::start(2);
    let m = b.mount(&b.spec("s2", 2, 1), "a");
    std::fs::create_dir(m.path("dir")).unwrap();
    std::fs::write(m.path("dir/big"), pattern(7, 300_000)).unwrap();
    std::fs::write(m.path("dir/other"), pattern(8, 1000)).unwrap();
    b.kill(1);
    // Both names known to the kernel (entries cached for 10 s), so the rename reaches
    // the volume, which starts nothing.
    let err = std::fs::rename(m.path("dir/big"), m.path("dir/other")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    // New names are looked up first, which needs every brick.
    for (from, to) in [("dir", "moved"), ("dir/big", "dir/renamed")] {
        let err = std::fs::rename(m.path(from), m.path(to)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{from}: {err}");
    }
    assert_eq!(names_in(&b.bricks[0].path), ["dir"]);
    assert_eq!(names_in(&b.bricks[0].path.join("dir")), ["big", "other"]);
    b.restart(1);
    wait_for(
        "the mount to reach brick 1 again",
        Duration::from_secs(10),
        || std::fs::rename(m.path("dir/big"), m.path("dir/renamed")).is_ok(),
    );
    // Brick 1 refuses (something the volume does not see under the new name there,
    // since brick 0 lacks it) after brick 0 renamed: brick 0 takes it back.
    let squatter = b.bricks[1].path.join("moved");
    std::fs::create_dir_all(squatter.join("full")).unwrap();
    let err = std::fs::rename(m.path("dir"), m.path("moved")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY), "{err}");
    assert_eq!(names_in(&b.bricks[0].path), ["dir"]);
    assert_eq!(names_in(&b.bricks[1].path), ["dir", "moved"]);
    std::fs::remove_dir_all(&squatter).unwrap();
    std::fs::rename(m.path("dir"), m.path("moved")).unwrap();
    for br in &b.bricks {
        assert_eq!(names_in(&br.path), ["moved"]);
        assert_eq!(names_in(&br.path.join("moved")), ["other", "renamed"]);
    }
    assert!(std::fs::read(m.path("moved/renamed")).unwrap() == pattern(7, 300_000));
    assert!(std::fs::read(m.path("moved/other")).unwrap() == pattern(8, 1000));
}

#[test]
fn replica_3_carries_on_without_one_brick_marks_what_it_missed_and_heals_it() {
    if !require_root() {
        return;
    }
    let mut b = Bricks::start(3);
    let m = b.mount(&b.spec("r3", 1, 3), "a");
    std::fs::create_dir(m.path("dir")).unwrap();
    for i in 0..20 {
        std::fs::write(m.path(&format!("dir/before-{i}")), pattern(i, 100_000)).unwrap();
    }
    b.kill(2);
    // Every file written before stays readable (whichever copy served it).
    for i in 0..20 {
        assert!(std::fs::read(m.path(&format!("dir/before-{i}"))).unwrap() == pattern(i, 100_000));
    }
    // New files and changes to old ones.
    for i in 0..30 {
        std::fs::write(m.path(&format!("dir/during-{i}")), pattern(100 + i, 50_000)).unwrap();
    }
    for i in 0..10 {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(m.path(&format!("dir/before-{i}")))
            .unwrap();
        f.write_all(b"appended while a brick was down").unwrap();
    }
    std::fs::create_dir(m.path("dir/newdir")).unwrap();
    for i in 0..30 {
        assert!(std::fs::read(m.path(&format!("dir/during-{i}"))).unwrap() == pattern(100 + i, 50_000));
    }
    // The survivors know exactly what brick 2 missed.
    for survivor in [0, 1] {
        let p = &b.bricks[survivor].path;
        for i in 0..10 {
            assert!(
                pending(p, &format!("dir/before-{i}"), 2) > 0,
                "before-{i} on brick {survivor}"
            );
        }
        for i in 10..20 {
            assert_eq!(
                pending(p, &format!("dir/before-{i}"), 2),
                0,
                "before-{i} was not changed"
            );
        }
        // New entries are marked on their directory (the entry change), and files written
        // after creation on the file itself.
        assert!(pending(p, "dir", 2) > 0, "dir on brick {survivor}");
        for i in 0..30 {
            assert!(
                pending(p, &format!("dir/during-{i}"), 2) > 0,
                "during-{i} on brick {survivor}"
            );
        }
        assert_eq!(pending(p, "dir/during-0", 0) + pending(p, "dir/during-0", 1), 0);
    }

    // Back up, brick 2 is healed by the mount without being asked: same files, same bytes,
    // and no marker left anywhere.
    b.restart(2);
    wait_for("brick 2 to be healed", std::time::Duration::from_secs(60), || {
        (0..3).all(|i| pending_heals(&b.bricks[i].path) == 0)
    });
    let (p0, p2) = (&b.bricks[0].path, &b.bricks[2].path);
    let names = |p: &std::path::Path| {
        let mut v: Vec<_> = std::fs::read_dir(p.join("dir"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(p0), names(p2));
    assert_eq!(names(p2).len(), 20 + 30 + 1);
    for n in names(p0) {
        let (a, c) = (p0.join("dir").join(&n), p2.join("dir").join(&n));
        if a.is_file() {
            assert!(std::fs::read(&a).unwrap() == std::fs::read(&c).unwrap(), "{n:?}");
        }
        for child in 0..3 {
            assert_eq!(pending(p0, &format!("dir/{}", n.to_string_lossy()), child), 0);
        }
    }
    assert_eq!(
        pending(p0, "dir", 2) + pending(b.bricks[1].path.as_path(), "dir", 2),
        0
    );
}

#[test]
fn replica_2_without_its_first_brick_refuses_writes() {
    if !require_root() {
        return;
    }
    let mut b = Bricks::start(2);
    let m = b.mount(&b.spec("r2", 1, 2), "a");
    std::fs::write(m.path("f"), b"hello").unwrap();
    // The second brick alone is no quorum: EROFS, and nothing diverges.
    b.kill(0);
    let err = std::fs::write(m.path("g"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert!(!b.bricks[1].path.join("g").exists());
    assert_eq!(std::fs::read(m.path("f")).unwrap(), b"hello", "reads still work");
    // The first brick alone is a quorum for replica 2.
    b.restart(0);
    wait_for("brick 0 to be back", std::time::Duration::from_secs(10), || {
        std::fs::write(m.path("g"), b"x").is_ok()
    });
    b.kill(1);
    std::fs::write(m.path("h"), b"with the first brick only").unwrap();
    assert!(
        pending(&b.bricks[0].path, "", 1) > 0,
        "root directory marked for brick 1"
    );
}

#[test]
fn replica_2_takes_back_a_create_that_only_its_second_brick_took() {
    if !require_root() {
        return;
    }
    let mut b = Bricks::start(2);
    let m = b.mount(&b.spec("r2", 1, 2), "a");
    // Made by this mount, so it knows every name in it: the create is the first request
    // to reach the bricks.
    std::fs::create_dir(m.path("d")).unwrap();
    // (And the kernel knows the root's attributes again, which the mkdir dropped.)
    std::fs::metadata(m.path("d/.")).unwrap();
    // The first brick stops answering without closing its connection: the mount learns
    // it is gone only when its pings go unanswered, after sending the create to both.
    b.stop(0);
    let err = std::fs::write(m.path("d/g"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert!(
        !b.bricks[1].path.join("d/g").exists(),
        "a refused create left its file behind"
    );
    // Brick 0 may still make it when it runs again: its copy of the directory is marked.
    assert!(pending(&b.bricks[1].path, "d", 0) > 0, "d not marked for brick 0");
    b.kill(0);
}

#[test]
fn a_file_held_open_through_the_mount_is_healed_while_it_is_written() {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    if !require_root() {
        return;
    }
    let mut b = Bricks::start(3);
    let m = b.mount(&b.spec("r3", 1, 3), "a");
    // A disk image, open for good through the mount.
    const SIZE: usize = 4 << 20;
    let mut model = pattern(1, SIZE);
    std::fs::write(m.path("image"), &model).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("image"))
        .unwrap();
    b.kill(2);
    f.write_all_at(&[0xa1; 70_000], 5000).unwrap();
    model[5000..75_000].fill(0xa1);
    f.sync_all().unwrap();
    assert!(pending(&b.bricks[0].path, "image", 2) > 0);
    b.restart(2);

    // The writer goes on through the same descriptor (its writes go behind, several in
    // flight) while the copy that came back is healed.
    let stop = AtomicBool::new(false);
    let model = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let (mut model, mut x, mut writes) = (model, 0x9e37_79b9_7f4a_7c15u64, 0);
            while !stop.load(Ordering::SeqCst) || writes < 200 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = (x % (SIZE as u64 + (256 << 10))) as usize;
                let len = 1 + (x >> 40) as usize % (64 << 10);
                let byte = (x >> 32) as u8 | 1;
                f.write_all_at(&vec![byte; len], off as u64).unwrap();
                if model.len() < off + len {
                    model.resize(off + len, 0);
                }
                model[off..off + len].fill(byte);
                writes += 1;
            }
            model
        });
        // (The writer stops on every path, or a failure here would wait for it forever.)
        let healed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(
                "the copy to be healed while the file is open and written",
                std::time::Duration::from_secs(60),
                || (0..3).all(|i| pending_heals(&b.bricks[i].path) == 0),
            )
        }));
        stop.store(true, Ordering::SeqCst);
        let model = writer.join().unwrap();
        if let Err(e) = healed {
            std::panic::resume_unwind(e);
        }
        model
    });
    f.sync_all().unwrap();
    for i in 0..3 {
        let copy = std::fs::read(b.bricks[i].path.join("image")).unwrap();
        assert!(copy == model, "brick {i} holds what was written");
    }
    assert!((0..3).all(|i| pending_heals(&b.bricks[i].path) == 0));
}

/// What the fault schedule does to one brick while the writer goes on.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL, then started again.
    Kill,
    /// SIGSTOP (connections stay open, nothing answers) until the mount gives up on it,
    /// then SIGKILL and started again: a hung server that is reset.
    HangThenKill,
    /// SIGSTOP for a second, then SIGCONT: a stall the mount waits out.
    Stall,
}

/// A file the random writer changes, through two descriptors, and what it must hold.
struct Target {
    path: std::path::PathBuf,
    fds: [std::fs::File; 2],
    model: Vec<u8>,
}

/// One writer changing files at random, checked against an in-memory copy of each after
/// every step. Several files, as each file's reads go to a copy of its own (by its id).
struct RandomWriter {
    rng: rand::rngs::StdRng,
    files: Vec<Target>,
    steps: usize,
    recent: std::collections::VecDeque<String>,
    /// The bricks' directories, to say what their copies hold when a read is wrong.
    bricks: Vec<std::path::PathBuf>,
    /// Copies of each file (the markers each copy holds).
    replica: usize,
}

impl RandomWriter {
    const MAX: usize = 2 << 20;

    fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new().read(true).write(true).open(path)
    }

    fn new(
        paths: Vec<std::path::PathBuf>,
        bricks: Vec<std::path::PathBuf>,
        replica: usize,
        seed: u64,
    ) -> RandomWriter {
        use rand::SeedableRng;
        let files = paths
            .into_iter()
            .map(|path| {
                std::fs::write(&path, b"").unwrap();
                let fds = [Self::open(&path).unwrap(), Self::open(&path).unwrap()];
                Target {
                    path,
                    fds,
                    model: Vec::new(),
                }
            })
            .collect();
        RandomWriter {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            files,
            steps: 0,
            recent: Default::default(),
            bricks,
            replica,
        }
    }

    /// One random step; an error says which step and what it saw.
    fn step(&mut self) -> Result<(), String> {
        use rand::{Rng, RngCore};
        use std::os::unix::fs::FileExt;
        self.steps += 1;
        let (n, which) = (
            self.rng.random_range(0..self.files.len()),
            self.rng.random_range(0..2),
        );
        let size = self.files[n].model.len();
        let name = format!("file {n} fd {which}");
        let op = match self.rng.random_range(0..100) {
            0..=39 => {
                let off = self.rng.random_range(0..Self::MAX);
                let mut data = vec![0u8; self.rng.random_range(1..160 << 10)];
                self.rng.fill_bytes(&mut data);
                let op = format!("{name} write {}@{off}", data.len());
                let t = &mut self.files[n];
                let done = t.fds[which].write_all_at(&data, off as u64);
                done.map_err(|e| self.failed(&op, e))?;
                let t = &mut self.files[n];
                if size < off + data.len() {
                    t.model.resize(off + data.len(), 0);
                }
                t.model[off..off + data.len()].copy_from_slice(&data);
                op
            }
            40..=49 => {
                let len = self.rng.random_range(0..Self::MAX);
                let op = format!("{name} truncate to {len}");
                let done = self.files[n].fds[which].set_len(len as u64);
                done.map_err(|e| self.failed(&op, e))?;
                self.files[n].model.resize(len, 0);
                op
            }
            50..=79 => {
                let off = self.rng.random_range(0..size + 1000);
                let mut buf = vec![0u8; self.rng.random_range(1..300 << 10)];
                let op = format!("{name} read {}@{off}", buf.len());
                let t = &self.files[n];
                let mut got = 0;
                while got < buf.len() {
                    let read = t.fds[which].read_at(&mut buf[got..], (off + got) as u64);
                    match read.map_err(|e| self.failed(&op, e))? {
                        0 => break,
                        k => got += k,
                    }
                }
                let want = &t.model[off.min(size)..(off + buf.len()).min(size)];
                if &buf[..got] != want {
                    let first = buf.iter().zip(want).position(|(a, b)| a != b);
                    return Err(self.failed(
                        &op,
                        format!(
                            "read {got} bytes, {} expected; first difference at {first:?}; {}",
                            want.len(),
                            self.look_again(n, which, off, buf.len())
                        ),
                    ));
                }
                op
            }
            80..=86 => {
                let op = format!("{name} fsync");
                self.files[n].fds[which]
                    .sync_all()
                    .map_err(|e| self.failed(&op, e))?;
                op
            }
            _ => {
                let op = format!("{name} reopen");
                let fd = Self::open(&self.files[n].path).map_err(|e| self.failed(&op, e))?;
                let len = fd.metadata().map_err(|e| self.failed(&op, e))?.len();
                self.files[n].fds[which] = fd;
                if len != size as u64 {
                    return Err(self.failed(&op, format!("size {len}, {size} expected")));
                }
                op
            }
        };
        if self.recent.len() == 20 {
            self.recent.pop_front();
        }
        self.recent.push_back(op);
        Ok(())
    }

    /// What a wrong read finds when it looks again: for the failure's message.
    fn look_again(&self, n: usize, which: usize, off: usize, len: usize) -> String {
        use std::os::unix::fs::FileExt;
        let t = &self.files[n];
        let want = &t.model[off.min(t.model.len())..(off + len).min(t.model.len())];
        let again = |f: &std::fs::File| {
            let mut buf = vec![0u8; len];
            match f.read_at(&mut buf, off as u64) {
                Ok(k) => format!("{k} bytes, {}", if &buf[..k] == want { "right" } else { "wrong" }),
                Err(e) => e.to_string(),
            }
        };
        let size = |p: &std::path::Path| {
            let name = p.file_name().unwrap().to_string_lossy();
            let marks: Vec<i64> = (0..self.replica)
                .map(|c| pending(p.parent().unwrap(), &name, c))
                .collect();
            (std::fs::metadata(p).map(|m| m.len()), marks)
        };
        let copies: Vec<_> = self
            .bricks
            .iter()
            .map(|b| size(&b.join(t.path.file_name().unwrap())))
            .collect();
        format!(
            "model size {}, fstat size {:?}, read again: {}, through a new descriptor: {}, copies' sizes {copies:?}",
            t.model.len(),
            t.fds[which].metadata().map(|m| m.len()),
            again(&t.fds[which]),
            Self::open(&t.path).map_or_else(|e| e.to_string(), |f| again(&f)),
        )
    }

    fn failed(&self, op: &str, e: impl std::fmt::Display) -> String {
        format!(
            "step {} ({op}): {e}; the steps before: {:?}",
            self.steps, self.recent
        )
    }
}

#[test]
fn a_random_writer_on_replica_3_reads_what_it_wrote_while_bricks_die_hang_and_return() {
    if !require_root() {
        return;
    }
    // One brick fails at a time. Bricks 1 and 2 take turns without waiting for heals, so
    // that a copy may fail while another is behind; brick 0 fails only once the copies are
    // healed, and the next fault waits for that too. So some copy that has every change is
    // always up, and nothing the writer does may be refused: any error is a failure.
    let schedule = [
        (Fault::Kill, 1),
        (Fault::HangThenKill, 2),
        (Fault::Kill, 1),
        (Fault::Stall, 2),
        (Fault::Kill, 1),
        (Fault::Kill, 2),
        (Fault::Kill, 0),
        (Fault::Kill, 1),
        (Fault::Kill, 2),
        (Fault::Stall, 0),
        (Fault::Kill, 1),
    ];
    random_writer_under_faults(Bricks::start(3), 3, &schedule, &[0]);
}

/// The same on distributed-replicate 2×2 (bricks 0 and 1 hold one set of copies, 2 and 3
/// the other): the second brick of each pair fails, one at a time, each pair's first
/// being the one replica 2 cannot write without.
#[test]
fn a_random_writer_on_distributed_replicate_2x2_reads_what_it_wrote_while_second_bricks_fail() {
    if !require_root() {
        return;
    }
    let schedule = [
        (Fault::Kill, 1),
        (Fault::Kill, 3),
        (Fault::HangThenKill, 1),
        (Fault::Stall, 3),
        (Fault::Kill, 3),
        (Fault::Stall, 1),
        (Fault::HangThenKill, 3),
        (Fault::Kill, 1),
    ];
    random_writer_under_faults(Bricks::start(4), 2, &schedule, &[]);
}

/// The random writer (`SHOAL_TEST_SEED` picks its sequence) through a mount of `b`'s bricks
/// as a volume of `replica` copies, while `schedule` fails them one after another. A fault
/// of a brick in `heal_first` waits until every copy is healed, and so does the next.
fn random_writer_under_faults(
    mut b: Bricks,
    replica: usize,
    schedule: &[(Fault, usize)],
    heal_first: &[usize],
) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let seed = std::env::var("SHOAL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    eprintln!("random writer seed {seed} (SHOAL_TEST_SEED to change)");
    let n = b.bricks.len();
    let spec = b.spec("chaos", 1, replica as u32);
    let (m, other) = (b.mount(&spec, "a"), b.mount(&spec, "b"));
    let steps = AtomicUsize::new(0);
    let (stop, failed) = (AtomicBool::new(false), AtomicBool::new(false));
    let events = Mutex::new(Vec::<String>::new());
    let bricks: Vec<_> = b.bricks.iter().map(|b| b.path.clone()).collect();

    const FILES: usize = 4;
    let models = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let names = (0..FILES).map(|i| m.path(&format!("chaos-{i}"))).collect();
            let mut w = RandomWriter::new(names, bricks, replica, seed);
            while !stop.load(Ordering::SeqCst) {
                if let Err(e) = w.step() {
                    failed.store(true, Ordering::SeqCst);
                    return Err(e);
                }
                steps.fetch_add(1, Ordering::SeqCst);
            }
            Ok(w.files.into_iter().map(|t| t.model).collect::<Vec<_>>())
        });
        // The writer stops on every path out of here, or a failure would wait for it forever.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _stop = Stop(&stop);
        // Waits until the writer has taken `n` more steps (or failed).
        let progress = |n: usize, what: &str| {
            let from = steps.load(Ordering::SeqCst);
            wait_for(what, Duration::from_secs(60), || {
                failed.load(Ordering::SeqCst) || steps.load(Ordering::SeqCst) >= from + n
            });
        };
        let note = |what: String| {
            events
                .lock()
                .unwrap()
                .push(format!("{what} at step {}", steps.load(Ordering::SeqCst)))
        };
        let mut after_first = false;
        for &(fault, victim) in schedule {
            progress(150, "the writer to go on with every brick up");
            if heal_first.contains(&victim) || after_first {
                wait_for("the copies to be healed", Duration::from_secs(60), || {
                    failed.load(Ordering::SeqCst) || (0..n).all(|i| pending_heals(&b.bricks[i].path) == 0)
                });
            }
            after_first = heal_first.contains(&victim);
            if failed.load(Ordering::SeqCst) {
                break;
            }
            note(format!("{fault:?} brick {victim}"));
            match fault {
                Fault::Kill => {
                    b.kill(victim);
                    progress(150, "the writer to go on without a brick");
                }
                Fault::HangThenKill => {
                    b.stop(victim);
                    progress(150, "the writer to go on once the mount gave up on a hung brick");
                    b.kill(victim);
                }
                Fault::Stall => {
                    b.stop(victim);
                    std::thread::sleep(Duration::from_secs(1));
                    b.resume(victim);
                }
            }
            if !matches!(fault, Fault::Stall) {
                b.restart(victim);
            }
            // The next fault takes another brick: until the mount is connected to this
            // one again, that would leave it without a quorum.
            let addr = b.bricks[victim].addr.clone();
            wait_for("the mount to reconnect", Duration::from_secs(30), || {
                m.connected_to(&addr)
            });
            // And takes changes there again (its handshake done): a new name made through
            // it shows on that brick (a new name each try: with distribution, only those
            // placed on the brick's set of copies can).
            let mut probe = 0;
            wait_for(
                "the mount to use the brick again",
                Duration::from_secs(30),
                || {
                    probe += 1;
                    let name = format!("probe-{victim}-{probe}");
                    std::fs::write(m.path(&name), b"p").is_ok() && b.bricks[victim].path.join(&name).exists()
                },
            );
            note(format!("brick {victim} back"));
        }
        progress(150, "the writer to go on after the last fault");
        stop.store(true, Ordering::SeqCst);
        match writer.join().unwrap() {
            Ok(models) => models,
            Err(e) => panic!("{e}\nfaults: {:?}", events.lock().unwrap()),
        }
    });
    eprintln!(
        "{} steps through {:?}",
        steps.load(Ordering::SeqCst),
        events.lock().unwrap()
    );

    // Through both mounts, then on every brick once healed.
    for (i, model) in models.iter().enumerate() {
        let name = format!("chaos-{i}");
        assert!(
            std::fs::read(m.path(&name)).unwrap() == *model,
            "{name} through the writing mount"
        );
        assert!(
            std::fs::read(other.path(&name)).unwrap() == *model,
            "{name} through another mount"
        );
    }
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while (0..n).any(|i| pending_heals(&b.bricks[i].path) > 0) {
        if std::time::Instant::now() > end {
            let names = ["."]
                .into_iter()
                .map(String::from)
                .chain((0..FILES).map(|f| format!("chaos-{f}")));
            let marks: Vec<String> = names
                .map(|name| {
                    let m: Vec<Vec<i64>> = (0..n)
                        .map(|i| {
                            (0..replica)
                                .map(|c| pending(&b.bricks[i].path, &name, c))
                                .collect()
                        })
                        .collect();
                    format!("{name}: {m:?}")
                })
                .collect();
            panic!("the copies were not healed within 60 s; markers on each brick: {marks:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Each file on `replica` bricks (all of them but for distribution), each holding it.
    for (f, model) in models.iter().enumerate() {
        let copies: Vec<Vec<u8>> = (0..n)
            .filter_map(|i| std::fs::read(b.bricks[i].path.join(format!("chaos-{f}"))).ok())
            .collect();
        assert_eq!(copies.len(), replica, "copies of chaos-{f}");
        assert!(
            copies.iter().all(|c| c == model),
            "every copy holds what was written to chaos-{f}"
        );
    }
}
