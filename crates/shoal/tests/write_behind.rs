//! Writes go behind (answered before the bricks have them), yet a failure is never lost:
//! the close or fsync of the file reports it, as a local file system or NFS would.

mod common;

use common::*;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A small tmpfs over a brick's directory, unmounted on every exit path.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "shoal-test"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Waits until the brick's file system has room for 3 MiB again: a removed file's blocks
/// are freed only once the brick has closed it too (its release comes after the unlink).
fn room(brick: &Path) {
    wait_for(
        "the brick to free a removed file",
        std::time::Duration::from_secs(10),
        || rustix::fs::statvfs(brick).is_ok_and(|s| s.f_bavail * s.f_frsize >= 3 << 20),
    );
}

/// Writes `mib` MiB in 1 MiB writes; the first error, if any.
fn fill(f: &mut std::fs::File, mib: usize) -> Option<std::io::Error> {
    let chunk = vec![0x5au8; 1 << 20];
    (0..mib).find_map(|_| f.write_all(&chunk).err())
}

#[test]
fn a_write_that_fails_behind_the_writer_is_reported_by_close_and_by_fsync() {
    if !require_root() {
        return;
    }
    let mut b = Bricks::start(1);
    // The brick's file system: 4 MiB.
    b.kill(0);
    let _fs = Tmpfs::mount(&b.bricks[0].path, "4m");
    b.restart(0);
    let m = b.mount(&b.spec("small", 1, 1), "a");

    // 8 MiB into 4: a later write may fail already; the close must.
    let mut f = std::fs::File::create(m.path("big")).unwrap();
    if let Some(e) = fill(&mut f, 8) {
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    }
    // SAFETY: the descriptor was just taken out of its File and is closed once.
    let closed = unsafe { libc::close(f.into_raw_fd()) };
    let err = std::io::Error::last_os_error();
    assert_eq!(closed, -1, "close reported no failure");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");

    // Once reported, it is gone: the file can be written again where there is room.
    std::fs::remove_file(m.path("big")).unwrap();
    room(&b.bricks[0].path);
    let mut f = std::fs::File::create(m.path("big2")).unwrap();
    assert!(fill(&mut f, 2).is_none());
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(std::fs::metadata(m.path("big2")).unwrap().len(), 2 << 20);

    // fsync reports it too, and the close after it has nothing more to say.
    let mut f = std::fs::File::create(m.path("big3")).unwrap();
    if let Some(e) = fill(&mut f, 8) {
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    }
    let err = f.sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::close(f.into_raw_fd()) }, 0);

    // The failure goes to every file open when it happened, whoever closes first (another
    // test's fork may even close inherited copies of these meanwhile), and not to one
    // opened after it.
    std::fs::remove_file(m.path("big2")).unwrap();
    std::fs::remove_file(m.path("big3")).unwrap();
    room(&b.bricks[0].path);
    let mut w = std::fs::File::create(m.path("big4")).unwrap();
    let r = std::fs::File::open(m.path("big4")).unwrap();
    if let Some(e) = fill(&mut w, 8) {
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    }
    w.flush().unwrap();
    let after = std::fs::File::open(m.path("big4")).unwrap();
    // SAFETY: as above, for each of the three.
    assert_eq!(
        unsafe { libc::close(after.into_raw_fd()) },
        0,
        "told a later opener"
    );
    for (f, who) in [(r, "reader"), (w, "writer")] {
        let closed = unsafe { libc::close(f.into_raw_fd()) };
        let err = std::io::Error::last_os_error();
        assert_eq!(closed, -1, "the {who} was not told");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{who}: {err}");
    }
}

#[test]
fn a_link_made_while_writes_are_in_flight_shows_them() {
    if !require_root() {
        return;
    }
    let mut b = Bricks::start(1);
    let m = b.mount(&b.spec("one", 1, 1), "a");
    let mut f = std::fs::File::create(m.path("f")).unwrap();
    assert!(fill(&mut f, 1).is_none()); // the first write goes straight through
                                        // The brick stops: the next writes are answered but stay on their way.
    b.stop(0);
    assert!(
        fill(&mut f, 4).is_none(),
        "writes behind were not answered at once"
    );
    // A hard link's reply carries the file's attributes. The brick answers a link at once
    // while the large writes run on its blocking pool, so its reply may predate them; the
    // kernel, told of the writes already, would believe the smaller size. (Seen in CI: 3
    // MiB instead of 5, when the reply was looked at after the writes had ended.)
    let (from, to) = (m.path("f"), m.path("g"));
    let link = std::thread::spawn(move || std::fs::hard_link(from, to));
    b.resume(0);
    link.join().unwrap().unwrap();
    assert_eq!(std::fs::metadata(m.path("f")).unwrap().len(), 5 << 20);
    drop(f);
    let data = std::fs::read(m.path("g")).unwrap();
    assert_eq!(data.len(), 5 << 20);
    assert!(data.iter().all(|&x| x == 0x5a));
}

/// Round after round, a file is rewritten in place (one write, which goes straight
/// through) while one thread keeps reading it and another mount keeps changing its mode:
/// each change drops the file's pages here and sends the write to fetch its mode first.
/// A read sent after the write can then reach the bricks before it: its older data must not stay in the pages once the
/// write is done, where a reader that keeps the file open (or a later open that finds it
/// unchanged) would read them.
#[test]
fn a_read_racing_a_write_leaves_no_older_pages() {
    if !require_root() {
        return;
    }
    // (Before the fix, older pages stayed in 4 of 5 runs of 200 rounds.)
    const ROUNDS: usize = 500;
    let b = Bricks::start(2);
    let spec = b.spec("racing", 1, 2);
    let (m, other) = (b.mount(&spec, "a"), b.mount(&spec, "b"));
    let p = m.path("f");
    std::fs::write(&p, [0u8; 4096]).unwrap();
    let reader = std::fs::File::open(&p).unwrap();
    let read = || {
        let mut buf = [0u8; 4096];
        reader.read_exact_at(&mut buf, 0).map(|_| buf)
    };
    for r in 1..=ROUNDS {
        let record = [(r % 255 + 1) as u8; 4096];
        let stop = std::sync::atomic::AtomicBool::new(false);
        let go_on = || !stop.load(std::sync::atomic::Ordering::SeqCst);
        std::thread::scope(|s| {
            s.spawn(|| {
                while go_on() {
                    assert_eq!(std::fs::read(&p).unwrap().len(), 4096);
                }
            });
            s.spawn(|| {
                for mode in [0o640, 0o644].into_iter().cycle() {
                    if !go_on() {
                        break;
                    }
                    let perm = std::os::unix::fs::PermissionsExt::from_mode(mode);
                    std::fs::set_permissions(other.path("f"), perm).unwrap();
                }
            });
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.write_all_at(&record, 0).unwrap();
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        wait_for(
            &format!("round {r}: the pages to hold the round's write"),
            Duration::from_secs(5),
            || read().unwrap() == record,
        );
    }
}
