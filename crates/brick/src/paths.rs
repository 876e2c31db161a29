//! Paths of objects, for people (`volume heal NAME info`). The brick finds objects by id
//! and never needs their paths: a directory's path follows its parent links, and a file's
//! from the directory it was made in or last moved to (`ns::PARENT`), where its entry has
//! its inode number. A file whose record no longer holds (it left that directory through
//! a hard link) or that has none (made before records were kept) is found by a search of
//! the tree for its inode number, bounded in entries and time so that a huge brick answers
//! in seconds with what it found.

use crate::index::META_DIR;
use crate::sys::errno;
use proto::Errno;
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

/// How much of the tree one search may read.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub entries: usize,
    pub time: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            entries: 2_000_000,
            time: Duration::from_secs(5),
        }
    }
}

/// The names in directory `dir` of the entries whose inode numbers are keys of `wanted`
/// (the first met of each), reading it once within `budget`.
pub fn names_in(dir: &OwnedFd, wanted: &HashMap<u64, ()>, budget: Budget) -> HashMap<u64, Vec<u8>> {
    let mut found = HashMap::new();
    let Ok(fd) = reopen(dir) else { return found };
    let Ok(entries) = Dir::read_from(&fd) else {
        return found;
    };
    let deadline = Instant::now() + budget.time;
    for (n, entry) in entries.enumerate() {
        if found.len() == wanted.len() || n >= budget.entries || (n % 1024 == 0 && Instant::now() > deadline)
        {
            break;
        }
        let Ok(entry) = entry else { break };
        let name = entry.file_name().to_bytes();
        if wanted.contains_key(&entry.ino()) && name != b"." && name != b".." {
            found.entry(entry.ino()).or_insert_with(|| name.to_vec());
        }
    }
    found
}

/// Walks the tree under `root` (leaving out the brick's own `.shoal`) for the non-directory
/// entries whose inode numbers are keys of `wanted`, and gives each found one path (its first
/// name met, from the root, starting with `/`). Stops once all are found or the budget is
/// spent; what was not found by then is left out.
pub fn find_inodes(root: &OwnedFd, wanted: &HashMap<u64, ()>, budget: Budget) -> HashMap<u64, Vec<u8>> {
    let mut found = HashMap::new();
    if wanted.is_empty() {
        return found;
    }
    let deadline = Instant::now() + budget.time;
    let mut seen = 0usize;
    let mut stack: Vec<(Vec<u8>, OwnedFd)> = match reopen(root) {
        Ok(fd) => vec![(Vec::new(), fd)],
        Err(e) => {
            tracing::debug!("cannot read the brick root: {e}");
            return found;
        }
    };
    while let Some((path, fd)) = stack.pop() {
        let Ok(mut dir) = Dir::new(fd) else { continue };
        while let Some(Ok(entry)) = dir.read() {
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." || (path.is_empty() && name == META_DIR.as_bytes()) {
                continue;
            }
            seen += 1;
            if seen > budget.entries || (seen.is_multiple_of(1024) && Instant::now() > deadline) {
                return found;
            }
            let mut child = path.clone();
            child.push(b'/');
            child.extend_from_slice(name);
            let kind = match entry.file_type() {
                // (A file system that does not say in its listing.)
                FileType::Unknown => dir
                    .fd()
                    .and_then(|d| rustix::fs::statat(d, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW))
                    .map_or(FileType::Unknown, |st| FileType::from_raw_mode(st.st_mode)),
                k => k,
            };
            if kind == FileType::Directory {
                if let Ok(fd) = dir
                    .fd()
                    .and_then(|d| rustix::fs::openat(d, entry.file_name(), dir_flags(), Mode::empty()))
                {
                    stack.push((child, fd));
                }
            } else if wanted.contains_key(&entry.ino()) && !found.contains_key(&entry.ino()) {
                found.insert(entry.ino(), child);
                if found.len() == wanted.len() {
                    return found;
                }
            }
        }
    }
    found
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn reopen(fd: &OwnedFd) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(fd.as_fd(), ".", dir_flags(), Mode::empty()).map_err(errno)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn files_are_found_by_inode_within_the_budget() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join(".shoal/ids")).unwrap();
        std::fs::write(root.join("a/b/f"), b"x").unwrap();
        std::fs::write(root.join("top"), b"y").unwrap();
        std::fs::write(root.join(".shoal/ids/hidden"), b"z").unwrap();
        let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
        let wanted: HashMap<u64, ()> = [ino("a/b/f"), ino("top"), ino(".shoal/ids/hidden")]
            .into_iter()
            .map(|i| (i, ()))
            .collect();
        let fd: OwnedFd = std::fs::File::open(root).unwrap().into();
        let found = find_inodes(&fd, &wanted, Budget::default());
        assert_eq!(found.get(&ino("a/b/f")).map(Vec::as_slice), Some(&b"/a/b/f"[..]));
        assert_eq!(found.get(&ino("top")).map(Vec::as_slice), Some(&b"/top"[..]));
        assert!(
            !found.contains_key(&ino(".shoal/ids/hidden")),
            "the index is not searched"
        );

        // A budget of one entry finds at most one.
        let tight = Budget {
            entries: 1,
            time: Duration::from_secs(5),
        };
        assert!(find_inodes(&fd, &wanted, tight).len() <= 1);
    }
}
