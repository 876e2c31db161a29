//! Writes go behind (answered before the bricks have them), yet a failure is never lost:
//! the close or fsync of the file reports it, as a local file system or NFS would.

mod common;

use common::*;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

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
}
