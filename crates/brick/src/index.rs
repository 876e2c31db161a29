//! The id index under `.shoal/`: reach any object by id in O(1).
//!
//! ```text
//! .shoal/format          "shoal-brick-format 1"
//! .shoal/volume-id       the volume the brick belongs to (`crate::stamp`)
//! .shoal/ids/ab/<id>     hard link to each non-directory (file, symlink, fifo, ...)
//! .shoal/dirs/ab/<id>    symlink whose target is "<parent id>/<name>" for each directory
//! .shoal/orphans/<id>    files unlinked while still open, removed on last close or restart
//! .shoal/pending/ab/<id> objects that carry pending-heal counters (what healing must visit)
//! ```
//!
//! Directories cannot be hard-linked, so they are found by walking parent links; a directory
//! rename rewrites only its own entry.

use crate::sys::errno;
use proto::{Errno, FileId};
use rustix::fs::{AtFlags, Mode, OFlags};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Name of the hidden folder at the brick root.
pub const META_DIR: &str = ".shoal";
pub(crate) const FORMAT_FILE: &str = "format";
const FORMAT: &str = "shoal-brick-format 1\n";

pub struct Index {
    ids: OwnedFd,
    dirs: OwnedFd,
    orphans: OwnedFd,
    pending: OwnedFd,
}

fn open_dir(at: BorrowedFd<'_>, name: &str) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

fn ensure_dir(at: BorrowedFd<'_>, name: &str) -> Result<OwnedFd, Errno> {
    match rustix::fs::mkdirat(at, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => open_dir(at, name),
        Err(e) => Err(errno(e)),
    }
}

/// Where an id sits inside `ids/` or `dirs/`.
pub fn key(id: FileId) -> String {
    let hex = id.to_hex();
    format!("{}/{}", &hex[..2], hex)
}

impl Index {
    /// Opens the index of the brick at `root`, making it if the brick is new.
    pub fn open(root: BorrowedFd<'_>) -> Result<Index, Errno> {
        let meta = ensure_dir(root, META_DIR)?;
        match rustix::fs::openat(
            meta.as_fd(),
            FORMAT_FILE,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => {
                let mut buf = [0u8; 64];
                let n = rustix::io::read(&fd, &mut buf).map_err(errno)?;
                if &buf[..n] != FORMAT.as_bytes() {
                    return Err(Errno::EPROTO);
                }
            }
            Err(rustix::io::Errno::NOENT) => {
                let fd = rustix::fs::openat(
                    meta.as_fd(),
                    FORMAT_FILE,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(errno)?;
                rustix::io::write(&fd, FORMAT.as_bytes()).map_err(errno)?;
            }
            Err(e) => return Err(errno(e)),
        }
        let ids = ensure_dir(meta.as_fd(), "ids")?;
        let dirs = ensure_dir(meta.as_fd(), "dirs")?;
        let pending = ensure_dir(meta.as_fd(), "pending")?;
        for fan in 0..=255u8 {
            let name = format!("{fan:02x}");
            drop(ensure_dir(ids.as_fd(), &name)?);
            drop(ensure_dir(dirs.as_fd(), &name)?);
            drop(ensure_dir(pending.as_fd(), &name)?);
        }
        let orphans = ensure_dir(meta.as_fd(), "orphans")?;
        let index = Index {
            ids,
            dirs,
            orphans,
            pending,
        };
        index.clear_orphans()?;
        Ok(index)
    }

    pub fn ids_fd(&self) -> BorrowedFd<'_> {
        self.ids.as_fd()
    }

    pub fn orphans_fd(&self) -> BorrowedFd<'_> {
        self.orphans.as_fd()
    }

    /// Adds a non-directory: a hard link to `name` in `dir`.
    pub fn link_file(&self, dir: BorrowedFd<'_>, name: &[u8], id: FileId) -> Result<(), Errno> {
        rustix::fs::linkat(dir, name, self.ids.as_fd(), key(id), AtFlags::empty()).map_err(errno)
    }

    pub fn stat_file(&self, id: FileId) -> Result<rustix::fs::Stat, Errno> {
        rustix::fs::statat(self.ids.as_fd(), key(id), AtFlags::SYMLINK_NOFOLLOW).map_err(errno)
    }

    pub fn remove_file(&self, id: FileId) -> Result<(), Errno> {
        match rustix::fs::unlinkat(self.ids.as_fd(), key(id), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(errno(e)),
        }
    }

    /// Moves a file's index link aside: its last name is gone but someone still has it open.
    /// (A file without an index link has nothing to move: it goes with its last close.)
    pub fn orphan(&self, id: FileId) -> Result<(), Errno> {
        match rustix::fs::renameat(self.ids.as_fd(), key(id), self.orphans.as_fd(), id.to_hex()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(errno(e)),
        }
    }

    pub fn remove_orphan(&self, id: FileId) -> Result<(), Errno> {
        match rustix::fs::unlinkat(self.orphans.as_fd(), id.to_hex(), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(errno(e)),
        }
    }

    pub fn is_orphan(&self, id: FileId) -> bool {
        rustix::fs::statat(self.orphans.as_fd(), id.to_hex(), AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    fn clear_orphans(&self) -> Result<(), Errno> {
        let dir = rustix::fs::Dir::read_from(&self.orphans).map_err(errno)?;
        for entry in dir {
            let entry = entry.map_err(errno)?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                rustix::fs::unlinkat(self.orphans.as_fd(), entry.file_name(), AtFlags::empty())
                    .map_err(errno)?;
            }
        }
        Ok(())
    }

    /// Notes that `id` carries pending-heal counters (true) or no longer does (false).
    pub fn set_pending(&self, id: FileId, pending: bool) -> Result<(), Errno> {
        let name = key(id);
        let r = if pending {
            // An empty file would do as well; a symlink is made in one call.
            rustix::fs::symlinkat("p", self.pending.as_fd(), &name)
        } else {
            rustix::fs::unlinkat(self.pending.as_fd(), &name, AtFlags::empty())
        };
        match r {
            Ok(()) | Err(rustix::io::Errno::EXIST) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(errno(e)),
        }
    }

    /// Up to `max` of the objects noted as carrying pending-heal counters, in id order,
    /// after `after`. (Only the fan-out folders from `after`'s on are read.)
    pub fn pending(&self, after: Option<FileId>, max: usize) -> Result<Vec<FileId>, Errno> {
        // The fan-out folder is the id's top byte (its first two hex digits).
        let first = after.map_or(0, |a| (a.0 >> 120) as u8);
        let mut out = Vec::new();
        for fan in first..=255u8 {
            let sub = open_dir(self.pending.as_fd(), &format!("{fan:02x}"))?;
            let mut ids = Vec::new();
            for entry in rustix::fs::Dir::read_from(&sub).map_err(errno)? {
                let entry = entry.map_err(errno)?;
                let name = entry.file_name().to_bytes();
                match std::str::from_utf8(name).ok().and_then(FileId::from_hex) {
                    Some(id) if after.is_none_or(|a| id > a) => ids.push(id),
                    Some(_) => {}
                    None if name == b"." || name == b".." => {}
                    None => {
                        tracing::warn!(name = %String::from_utf8_lossy(name), "stray entry in the pending index")
                    }
                }
            }
            ids.sort();
            for id in ids {
                if out.len() >= max {
                    return Ok(out);
                }
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Records (or moves) a directory: its parent and its name there.
    pub fn set_dir(&self, id: FileId, parent: FileId, name: &[u8]) -> Result<(), Errno> {
        let mut target = parent.to_hex().into_bytes();
        target.push(b'/');
        target.extend_from_slice(name);
        let k = key(id);
        let tmp = format!("{k}.new");
        let _ = rustix::fs::unlinkat(self.dirs.as_fd(), &tmp, AtFlags::empty());
        rustix::fs::symlinkat(target.as_slice(), self.dirs.as_fd(), &tmp).map_err(errno)?;
        rustix::fs::renameat(self.dirs.as_fd(), &tmp, self.dirs.as_fd(), &k).map_err(errno)
    }

    /// The parent and name recorded for a directory.
    pub fn dir_entry(&self, id: FileId) -> Result<(FileId, Vec<u8>), Errno> {
        let target = rustix::fs::readlinkat(self.dirs.as_fd(), key(id), Vec::new()).map_err(errno)?;
        let bytes = target.as_bytes();
        if bytes.len() < 34 || bytes[32] != b'/' {
            return Err(Errno::EIO);
        }
        let parent = std::str::from_utf8(&bytes[..32])
            .ok()
            .and_then(FileId::from_hex)
            .ok_or(Errno::EIO)?;
        Ok((parent, bytes[33..].to_vec()))
    }

    pub fn remove_dir(&self, id: FileId) -> Result<(), Errno> {
        match rustix::fs::unlinkat(self.dirs.as_fd(), key(id), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(errno(e)),
        }
    }
}
