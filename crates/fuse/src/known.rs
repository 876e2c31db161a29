//! What the mount knows of each file: the data version the kernel was last told of (to
//! decide at open whether its cached pages are still good), and its permission bits, group
//! and capabilities (for what a write drops, `crate::killpriv`; these may come from
//! attributes fetched for that, which the kernel was not given).
//!
//! A reply is recorded stale when a brick announced a change of the file while it was on
//! its way, or when a change of permission bits, owner, capabilities or ACL was made
//! through this mount meanwhile: a close's reply, say, sent by the bricks before a chmod but handled
//! after it, would otherwise pass for the file's mode, and a write by a user without
//! `CAP_FSETID` would leave set-id bits in place. The count of those changes is one for the
//! whole mount, so a reply that crossed a change of another file is taken as stale too (it
//! costs a fetch when that file is next written; a `tar x` that sets modes as it goes pays
//! that for files written while it changed others).

use proto::{Attr, Timespec};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What changes whenever a file's data changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    size: u64,
    mtime: Timespec,
    ctime: Timespec,
}

impl Version {
    pub fn of(a: &Attr) -> Version {
        Version {
            size: a.size,
            mtime: a.mtime,
            ctime: a.ctime,
        }
    }
}

/// One file's record.
struct Seen {
    version: Version,
    has_caps: bool,
    perm: u32,
    gid: u32,
    /// When those were learnt.
    at: Instant,
    /// They may be out of date.
    stale: bool,
    /// The kernel was given data of this version (read, or written through this mount):
    /// it may have the file's pages.
    paged: bool,
}

/// The records, by inode number.
pub struct Known {
    files: Mutex<HashMap<u64, Seen>>,
    /// Changes of permissions made through the mount, counted as they end.
    changes: AtomicU64,
    /// How long a record is trusted.
    ttl: Duration,
}

impl Known {
    pub fn new(ttl: Duration) -> Known {
        Known {
            files: Mutex::new(HashMap::new()),
            changes: AtomicU64::new(0),
            ttl,
        }
    }

    fn files(&self) -> MutexGuard<'_, HashMap<u64, Seen>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The count of changes of permissions so far: taken when a request begins, it tells
    /// [`Known::note`] whether one crossed the request.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// After a change of `ino`'s permission bits, owner or capabilities through the mount
    /// (made, failed, or failed half way): counts it and marks its record stale (a reply
    /// that crossed it may have been noted already). The change then notes its own reply,
    /// begun after the count.
    pub fn changed(&self, ino: u64) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.stale(Some(ino));
    }

    /// Records what a reply about `ino` told the kernel, to a request begun when the count
    /// of changes was `since`; `fresh` says whether no change of the file was announced
    /// since it began. Both are read under the lock: a change counts before it marks the
    /// record, an announcement marks its file before the records, so either this record is
    /// marked after it is made or it sees the count or the mark.
    pub fn note(&self, ino: u64, attr: &Attr, has_caps: bool, since: u64, fresh: impl FnOnce() -> bool) {
        let mut files = self.files();
        let stale = !fresh() || self.changes() != since;
        let version = Version::of(attr);
        let paged = files.get(&ino).is_some_and(|s| s.paged && s.version == version);
        let seen = Seen {
            version,
            has_caps,
            perm: attr.perm,
            gid: attr.gid,
            at: Instant::now(),
            stale,
            paged,
        };
        files.insert(ino, seen);
    }

    /// As [`Known::note`], for attributes the kernel was not given: only what is known of
    /// the permissions changes (the version stays that of the kernel's pages).
    pub fn note_perm(&self, ino: u64, attr: &Attr, has_caps: bool, since: u64, fresh: impl FnOnce() -> bool) {
        let mut files = self.files();
        let stale = !fresh() || self.changes() != since;
        if let Some(s) = files.get_mut(&ino) {
            (s.perm, s.gid, s.has_caps) = (attr.perm, attr.gid, has_caps);
            (s.at, s.stale) = (Instant::now(), stale);
        }
    }

    /// The file's capabilities were removed through the mount.
    pub fn caps_dropped(&self, ino: u64) {
        self.files()
            .get_mut(&ino)
            .into_iter()
            .for_each(|s| s.has_caps = false);
    }

    /// Marks the record of `ino`, or of every file, as possibly out of date.
    pub fn stale(&self, ino: Option<u64>) {
        let mut files = self.files();
        match ino {
            Some(ino) => files.get_mut(&ino).into_iter().for_each(|s| s.stale = true),
            None => files.values_mut().for_each(|s| s.stale = true),
        }
    }

    /// The data version the kernel was last told of.
    pub fn version(&self, ino: u64) -> Option<Version> {
        self.files().get(&ino).map(|s| s.version)
    }

    /// The kernel was given the file's data of the version last noted.
    pub fn paged(&self, ino: u64) {
        self.files()
            .get_mut(&ino)
            .into_iter()
            .for_each(|s| s.paged = true);
    }

    /// Whether the kernel may have pages of the file at version `v`.
    pub fn has_pages(&self, ino: u64, v: Version) -> bool {
        self.files().get(&ino).is_some_and(|s| s.paged && s.version == v)
    }

    pub fn forget(&self, ino: u64) {
        self.files().remove(&ino);
    }

    /// True if what is known of the file, as of less than the timeout ago and not stale,
    /// satisfies `f`.
    fn surely(&self, ino: u64, f: impl Fn(&Seen) -> bool) -> bool {
        self.files()
            .get(&ino)
            .is_some_and(|s| !s.stale && s.at.elapsed() < self.ttl && f(s))
    }

    /// True if the file surely has no file capabilities.
    pub fn surely_no_caps(&self, ino: u64) -> bool {
        self.surely(ino, |s| !s.has_caps)
    }

    /// True if the file surely has none of the permission bits `bits`.
    pub fn surely_without(&self, ino: u64, bits: u32) -> bool {
        self.surely(ino, |s| s.perm & bits == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{FileId, FileKind};

    const SET_ID: u32 = 0o6000;

    fn attr(perm: u32) -> Attr {
        crate::attr::test_attr(FileId(0x1_0000), FileKind::File, perm, 0)
    }

    #[test]
    fn a_reply_is_trusted_until_the_timeout() {
        let k = Known::new(Duration::from_secs(60));
        assert!(!k.surely_no_caps(2), "nothing known yet");
        k.note(2, &attr(0o755), false, k.changes(), || true);
        assert!(k.surely_no_caps(2));
        assert!(k.surely_without(2, SET_ID));
        let k = Known::new(Duration::ZERO);
        k.note(2, &attr(0o755), false, k.changes(), || true);
        assert!(!k.surely_without(2, SET_ID), "past the timeout");
    }

    #[test]
    fn a_reply_that_crossed_a_change_of_permissions_is_stale() {
        let k = Known::new(Duration::from_secs(60));
        // A close's reply, sent before a chmod 6777 and handled after the chmod's own.
        let close_began = k.changes();
        k.changed(2);
        let chmod_began = k.changes();
        k.note(2, &attr(0o6777), false, chmod_began, || true);
        k.note(2, &attr(0o777), false, close_began, || true);
        assert!(!k.surely_without(2, SET_ID), "the close's 0777 is not believed");
        // Handled in order, the chmod's reply stands.
        k.note(2, &attr(0o6777), false, chmod_began, || true);
        assert!(!k.surely_without(2, SET_ID));
        assert!(k.surely_no_caps(2));
        // A fetch after the change is believed.
        let k2 = Known::new(Duration::from_secs(60));
        k2.changed(3);
        k2.note(3, &attr(0o777), false, k2.changes(), || true);
        assert!(k2.surely_without(3, SET_ID));
    }

    #[test]
    fn a_change_marks_a_record_noted_before_it() {
        let k = Known::new(Duration::from_secs(60));
        let began = k.changes();
        k.note(2, &attr(0o777), false, began, || true);
        assert!(k.surely_without(2, SET_ID));
        // The chmod failed half way, or its reply is still to come.
        k.changed(2);
        assert!(!k.surely_without(2, SET_ID));
        assert!(!k.surely_no_caps(2));
    }

    #[test]
    fn an_announced_change_makes_a_reply_stale() {
        let k = Known::new(Duration::from_secs(60));
        k.note(2, &attr(0o777), false, k.changes(), || false);
        assert!(!k.surely_no_caps(2));
        k.note(2, &attr(0o777), false, k.changes(), || true);
        assert!(k.surely_no_caps(2));
        k.stale(None);
        assert!(!k.surely_no_caps(2));
    }

    #[test]
    fn permissions_fetched_for_a_write_update_the_record_only() {
        let k = Known::new(Duration::from_secs(60));
        k.note_perm(2, &attr(0o6777), true, k.changes(), || true);
        assert_eq!(k.version(2), None, "no record made");
        let mut a = attr(0o777);
        k.note(2, &a, false, k.changes(), || true);
        a.size = 5;
        k.note_perm(2, &a, true, k.changes(), || true);
        assert_eq!(
            k.version(2),
            Some(Version::of(&attr(0o777))),
            "the kernel's version"
        );
        assert!(!k.surely_no_caps(2));
        k.caps_dropped(2);
        assert!(k.surely_no_caps(2));
        k.forget(2);
        assert!(!k.surely_no_caps(2));
    }
}
