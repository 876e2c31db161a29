//! What the mount remembers between the kernel's questions, and forgetting it when a brick
//! says another client changed something.
//!
//! Bricks announce changes ([`client::Stale`]), so the kernel may keep names and attributes
//! for long: each announcement becomes a kernel invalidation at once. Two things make that
//! airtight. A reply that was in flight when an announcement about its object arrived may
//! carry the old state: [`Coherence`] tells, and such replies are given to the kernel with
//! no lifetime. And the kernel drops attributes on its own after this mount's writes and
//! namespace changes; [`AttrCache`] answers those getattrs here, from what the bricks said
//! at the close of the file or what the change did to its directory.

use crate::kernel::{INodeNo, Notifier};
use proto::{Entry, FileId, Timespec};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Ids whose last announcement is remembered; past this, anything older counts as changed.
const TRACKED: usize = 64 * 1024;
/// Attributes kept here at most.
const CACHED: usize = 256 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts announcements, to tell whether one arrived while a request was in flight.
#[derive(Default)]
pub struct Coherence {
    seq: AtomicU64,
    last: Mutex<HashMap<FileId, u64>>,
    /// Requests started before this may have missed an announcement.
    floor: AtomicU64,
}

impl Coherence {
    /// A mark to take before asking the bricks.
    pub fn now(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// True if any of `ids` was announced as changed after `start`.
    pub fn changed_since(&self, ids: &[FileId], start: u64) -> bool {
        if self.floor.load(Ordering::SeqCst) > start {
            return true;
        }
        let last = lock(&self.last);
        ids.iter().any(|id| last.get(id).is_some_and(|&s| s > start))
    }

    /// True if another client's change of `id` may ever have been announced.
    pub fn ever_changed(&self, id: FileId) -> bool {
        self.floor.load(Ordering::SeqCst) > 0 || lock(&self.last).contains_key(&id)
    }

    pub fn mark(&self, id: FileId) {
        let s = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let mut last = lock(&self.last);
        if last.len() >= TRACKED {
            last.clear();
            self.floor.store(s, Ordering::SeqCst);
        }
        last.insert(id, s);
    }

    pub fn mark_all(&self) {
        let s = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.floor.store(s, Ordering::SeqCst);
        lock(&self.last).clear();
    }
}

struct Cached {
    entry: Entry,
    until: Instant,
    /// Valid only while no name was removed by this mount since (see [`AttrCache::removed`]).
    epoch: u64,
}

/// Attributes this mount may answer from, per inode.
#[derive(Default)]
pub struct AttrCache {
    map: Mutex<HashMap<u64, Cached>>,
    epoch: AtomicU64,
}

impl AttrCache {
    /// The attributes of `ino` and how long they stay good, if known.
    pub fn get(&self, ino: u64) -> Option<(Entry, Duration)> {
        let map = lock(&self.map);
        let c = map.get(&ino)?;
        let left = c.until.checked_duration_since(Instant::now())?;
        (c.epoch == self.epoch.load(Ordering::SeqCst)).then(|| (c.entry.clone(), left))
    }

    /// A mark to take before asking the bricks, for [`AttrCache::put`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Keeps `entry`, fetched by a request begun at `since` (an [`AttrCache::epoch`]): a
    /// name this mount removed meanwhile leaves it unused, like everything cached before.
    pub fn put(&self, ino: u64, entry: &Entry, ttl: Duration, since: u64) {
        if ttl.is_zero() {
            self.drop(ino);
            return;
        }
        let mut map = lock(&self.map);
        if map.len() >= CACHED {
            map.clear();
        }
        map.insert(
            ino,
            Cached {
                entry: entry.clone(),
                until: Instant::now() + ttl,
                epoch: since,
            },
        );
    }

    pub fn drop(&self, ino: u64) {
        lock(&self.map).remove(&ino);
    }

    pub fn clear(&self) {
        lock(&self.map).clear();
    }

    /// This mount removed a name: the link count of whatever it named changed, and that
    /// object is not known here by inode. Everything cached before goes.
    pub fn removed(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// This mount added or removed an entry of directory `ino` at (about) `when`: its
    /// times move on, as they did on the brick. The directory's cached attributes stay good
    /// (even past a [`AttrCache::removed`]).
    pub fn touch_dir(&self, ino: u64, when: Timespec) {
        let mut map = lock(&self.map);
        let epoch = self.epoch.load(Ordering::SeqCst);
        if let Some(c) = map.get_mut(&ino) {
            let a = &mut c.entry.attr;
            let next = if when > a.mtime {
                when
            } else {
                // Never backwards, and always visibly changed.
                Timespec {
                    sec: a.mtime.sec + (a.mtime.nsec + 1) as i64 / 1_000_000_000,
                    nsec: (a.mtime.nsec + 1) % 1_000_000_000,
                }
            };
            a.mtime = next;
            a.ctime = a.ctime.max(next);
            c.epoch = epoch;
        }
    }
}

/// Directories whose every name this mount knows: those it made itself. A new directory has
/// a new id, so no brick holds anything in it but what this mount puts there, and a brick
/// announces anything another client does in it. Looking up a name absent from such a
/// directory (as every file being created in it is) needs no round trip.
#[derive(Default)]
pub struct Complete {
    dirs: Mutex<HashMap<u64, std::collections::HashSet<Vec<u8>>>>,
}

/// Directories tracked at most, and names in each.
const COMPLETE_DIRS: usize = 1024;
const COMPLETE_NAMES: usize = 100_000;

impl Complete {
    /// `dir` was just made, empty, by this mount.
    pub fn made(&self, dir: u64) {
        let mut dirs = lock(&self.dirs);
        if dirs.len() >= COMPLETE_DIRS {
            dirs.clear();
        }
        dirs.insert(dir, Default::default());
    }

    /// True if `name` surely does not exist in `dir`.
    pub fn surely_absent(&self, dir: u64, name: &[u8]) -> bool {
        lock(&self.dirs)
            .get(&dir)
            .is_some_and(|names| !names.contains(name))
    }

    pub fn added(&self, dir: u64, name: &[u8]) {
        let mut dirs = lock(&self.dirs);
        if let Some(names) = dirs.get_mut(&dir) {
            if names.len() >= COMPLETE_NAMES {
                dirs.remove(&dir);
            } else {
                names.insert(name.to_vec());
            }
        }
    }

    pub fn removed(&self, dir: u64, name: &[u8]) {
        if let Some(names) = lock(&self.dirs).get_mut(&dir) {
            names.remove(name);
        }
    }

    /// Something about `dir` is no longer known for sure.
    pub fn forget(&self, dir: u64) {
        lock(&self.dirs).remove(&dir);
    }

    pub fn clear(&self) {
        lock(&self.dirs).clear();
    }
}

/// A kernel cache entry to drop.
pub enum Inval {
    /// Attributes and cached data of an inode.
    Inode(u64),
    /// Attributes of an inode only (its mode changed, not its data).
    Attrs(u64),
    /// Attributes of an inode and its cached data from `offset`, `len` bytes.
    Pages(u64, u64, u64),
    /// A name in a directory.
    Entry(u64, Vec<u8>),
}

/// Starts the thread that passes invalidations to the kernel. They get a thread of their
/// own: the kernel may hold one until a request in progress on the same directory is
/// answered, and requests must never wait for that. The thread ends when the sender goes.
pub fn invalidator(notifier: Arc<OnceLock<Notifier>>) -> std::io::Result<Sender<Inval>> {
    let (tx, rx) = channel::<Inval>();
    std::thread::Builder::new()
        .name("invalidate".into())
        .spawn(move || {
            while let Ok(inval) = rx.recv() {
                let Some(n) = notifier.get() else { continue };
                // ENOENT: the kernel did not have it cached; nothing to do.
                let _ = match inval {
                    Inval::Inode(ino) => n.inval_inode(INodeNo(ino), 0, 0),
                    Inval::Attrs(ino) => n.inval_inode(INodeNo(ino), -1, 0),
                    Inval::Pages(ino, offset, len) => {
                        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                        n.inval_inode(INodeNo(ino), clamp(offset), clamp(len).max(1))
                    }
                    Inval::Entry(dir, name) => n.inval_entry(INodeNo(dir), OsStr::from_bytes(&name)),
                };
            }
        })?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::FileKind;

    fn entry(mtime: i64) -> Entry {
        Entry {
            attr: crate::attr::test_attr(FileId(5), FileKind::Dir, 0o755, mtime),
            meta: Vec::new(),
            has_caps: false,
        }
    }

    #[test]
    fn made_directories_know_their_names() {
        let c = Complete::default();
        assert!(!c.surely_absent(7, b"a"), "unknown directories know nothing");
        c.made(7);
        assert!(c.surely_absent(7, b"a"));
        c.added(7, b"a");
        assert!(!c.surely_absent(7, b"a"));
        c.removed(7, b"a");
        assert!(c.surely_absent(7, b"a"));
        c.forget(7);
        assert!(!c.surely_absent(7, b"b"));
    }

    #[test]
    fn announcements_during_a_request_are_seen() {
        let c = Coherence::default();
        let start = c.now();
        assert!(!c.changed_since(&[FileId(1)], start));
        c.mark(FileId(1));
        assert!(c.changed_since(&[FileId(2), FileId(1)], start));
        assert!(!c.changed_since(&[FileId(2)], start));
        assert!(!c.changed_since(&[FileId(1)], c.now()));
        c.mark_all();
        assert!(c.changed_since(&[FileId(2)], start));
    }

    #[test]
    fn removals_drop_all_but_touched_directories() {
        let a = AttrCache::default();
        let ttl = Duration::from_secs(60);
        a.put(1, &entry(10), ttl, a.epoch());
        a.put(2, &entry(10), ttl, a.epoch());
        a.removed();
        a.touch_dir(1, Timespec { sec: 20, nsec: 0 });
        let (e, _) = a.get(1).expect("touched directory kept");
        assert_eq!(e.attr.mtime.sec, 20);
        assert!(a.get(2).is_none(), "anything else may have lost a link");
        // A clock behind the brick's still moves the time forward.
        a.touch_dir(1, Timespec { sec: 5, nsec: 0 });
        let (e, _) = a.get(1).unwrap();
        assert_eq!((e.attr.mtime.sec, e.attr.mtime.nsec), (20, 1));
        a.put(3, &entry(1), Duration::ZERO, a.epoch());
        assert!(a.get(3).is_none());
        // Fetched before a removal, kept after it (a close's answer arriving late).
        let since = a.epoch();
        a.removed();
        a.put(4, &entry(1), ttl, since);
        assert!(a.get(4).is_none(), "attributes older than a removal were kept");
    }
}
