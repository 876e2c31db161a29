//! The kernel's requests ([`crate::kernel::Filesystem`]) answered from a shoal volume.

use crate::attr::{file_attr, kind, negative, timespec};
use crate::behind::Behind;
use crate::cache::{AttrCache, Coherence, Complete, Inval};
use crate::dirs::DirState;
use crate::inodes::{Inodes, ROOT_INO};
use crate::kernel::abi::{init, WRITE_KILL_SUIDGID};
use crate::kernel::{
    FileHandle, FopenFlags, Generation, INodeNo, KernelConfig, LockIn, LockOwner, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, SetAttrIn, TimeOrNow,
};
use crate::killpriv::{self, Caller};
use crate::known::{Known, Version};
use bytes::Bytes;
use client::{Handle, Stale, StaleFn, Xlator};
use proto::{Entry, Errno, FileId, FileKind, Lock, LockKind, NewNode, RenameFlags, SetAttr, TimeSet};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// Largest read or write request the kernel sends.
pub const MAX_IO: u32 = 1 << 20;
/// POSIX's OFFSET_MAX: what the kernel sends for "to the end of the file".
const OFFSET_MAX: u64 = i64::MAX as u64;

pub struct ShoalFs {
    rt: tokio::runtime::Handle,
    inner: Arc<Inner>,
}

struct Inner {
    rt: tokio::runtime::Handle,
    vol: Arc<dyn Xlator>,
    inodes: Inodes,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirState>>>>,
    next_fh: AtomicU64,
    /// Open files that were opened lazily (`OpenFile::at_open`): while there are none, a
    /// change notice need not look through the open files.
    lazy_opens: AtomicU64,
    attr_ttl: Duration,
    entry_ttl: Duration,
    notifier: Arc<OnceLock<crate::kernel::Notifier>>,
    /// What the kernel was last told of each file's data version, and what is known of
    /// its mode and capabilities.
    known: Known,
    /// Inodes that ever had a lock request through this mount: only their closes need to
    /// reach the bricks (to drop the closing process's locks).
    locked: Mutex<HashSet<u64>>,
    /// Per inode, the latest read request (by the kernel's request number) begun here. A
    /// read the kernel sent after a write, the write's data already in its pages (another
    /// open then dropped them), can reach the bricks before the write does and fill the
    /// pages with what the write replaces. A read that begins once the write is counted in
    /// flight waits for it (`Behind::settle`); the write's end drops the written pages if
    /// one sent after it began before that.
    reads: Mutex<HashMap<u64, u64>>,
    coherence: Coherence,
    attrs: AttrCache,
    complete: Complete,
    inval: Mutex<Option<Sender<Inval>>>,
    /// Counts writes and other changes of attributes through this mount as they start and
    /// end: attributes fetched across one may be older than the change and are not kept.
    writes: AtomicU64,
    behind: Arc<Behind>,
}

/// A file the kernel opened. Read-only opens reach the bricks only when a read misses the
/// kernel's cache (most reads of a file just written or read do not): `handle` is filled
/// then.
struct OpenFile {
    id: FileId,
    flags: u32,
    handle: tokio::sync::OnceCell<Arc<Handle>>,
    /// Written through before.
    wrote: AtomicBool,
    /// Failures of writes behind to this file that it was told of (or that came before it
    /// was opened).
    seen: AtomicU64,
    /// Its attributes as it was opened, for a lazy open: what it answers once another
    /// client has removed it (opened before the removal, it is still there for its opener).
    at_open: Option<Entry>,
}

/// Where a request began, to tell what happened while it was in flight.
#[derive(Clone, Copy)]
struct Start {
    notices: u64,
    writes: u64,
    perms: u64,
    /// Names this mount removed (`AttrCache::epoch`).
    removals: u64,
}

fn ferr(e: Errno) -> i32 {
    e.code()
}

impl Inner {
    fn id(&self, ino: INodeNo) -> Result<FileId, Errno> {
        self.inodes.id(ino.0)
    }

    /// The bricks' handle of an open file, opening it there first if it was opened lazily.
    async fn file(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        let f = self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)?;
        self.materialize(&f).await
    }

    /// The attributes `id` had when opened lazily, while such an open of it is not open
    /// on the bricks. (A scan of the open files, only while some were opened lazily.)
    fn lazily_opened(&self, id: FileId) -> Option<Entry> {
        if self.lazy_opens.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files
            .values()
            .filter(|f| f.id == id && f.handle.get().is_none())
            .find_map(|f| f.at_open.clone())
    }

    async fn materialize(&self, f: &OpenFile) -> Result<Arc<Handle>, Errno> {
        f.handle
            .get_or_try_init(|| async { self.vol.open(f.id, f.flags).await.map(Arc::new) })
            .await
            .cloned()
    }

    /// Before this mount removes or replaces `name` in `parent`: if it names a file opened
    /// here lazily, that file gets opened on the bricks, so that it stays readable once
    /// unlinked, as POSIX wants. Costs a lookup only while lazily opened files exist.
    async fn keep_readable(&self, parent: FileId, name: &[u8]) {
        let lazy = || -> Vec<Arc<OpenFile>> {
            self.files
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|f| f.handle.get().is_none())
                .cloned()
                .collect()
        };
        if lazy().is_empty() {
            return;
        }
        let Ok(e) = self.vol.lookup(parent, name).await else {
            return;
        };
        for f in lazy().into_iter().filter(|f| f.id == e.attr.id) {
            if let Err(err) = self.materialize(&f).await {
                tracing::debug!("opening a lazily opened file: {err}");
            }
        }
    }

    fn add_file(&self, ino: u64, id: FileId, flags: u32, h: Option<Handle>, at_open: Option<Entry>) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let at_open = at_open.filter(|_| h.is_none());
        if at_open.is_some() {
            self.lazy_opens.fetch_add(1, Ordering::Relaxed);
        }
        let f = OpenFile {
            id,
            flags,
            at_open,
            handle: tokio::sync::OnceCell::new_with(h.map(Arc::new)),
            wrote: AtomicBool::new(false),
            seen: AtomicU64::new(self.behind.failures(ino)),
        };
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(f));
        fh
    }

    /// Remembers what a reply about `ino`, to a request begun at `start`, told the kernel
    /// (see `crate::known`).
    fn note(&self, ino: u64, e: &Entry, start: Start) {
        if e.attr.kind == FileKind::File {
            let fresh = || self.fresh_since(e.attr.id, start);
            self.known.note(ino, &e.attr, e.has_caps, start.perms, fresh);
        }
    }

    /// Updates what is known of a file's permissions and capabilities from attributes the
    /// kernel was not given.
    fn note_perm(&self, ino: u64, e: &Entry, start: Start) {
        let fresh = || self.fresh_since(e.attr.id, start);
        self.known.note_perm(ino, &e.attr, e.has_caps, start.perms, fresh);
    }

    /// Whether no change to `id` was announced since `start`: what a reply says of it is
    /// current (a change in its directory says nothing of its own attributes).
    fn fresh_since(&self, id: FileId, start: Start) -> bool {
        !self.coherence.changed_since(&[id], start.notices)
    }

    /// True if the file is surely without file capabilities.
    fn surely_no_caps(&self, ino: u64) -> bool {
        self.known.surely_no_caps(ino)
    }

    /// True if the file surely has no set-id bits.
    fn surely_no_set_id(&self, ino: u64) -> bool {
        self.known.surely_without(ino, killpriv::SET_ID)
    }

    /// What the kernel leaves to the mount before a write or an allocation
    /// (`crate::killpriv`): the file's capabilities go (a brick's kernel drops them from
    /// the copies a write reaches, but a stripe's write reaches some bricks only), and, for
    /// a caller without CAP_FSETID, the set-id bits that `set_id` (given the permission bits
    /// and group) says it drops. Nothing to ask of the bricks when the file is known to
    /// have neither; otherwise its attributes are read anew, so that the mode set is the
    /// current one but for those bits.
    async fn drop_privs(
        &self,
        ino: u64,
        id: FileId,
        set_id: Option<impl Fn(u32, u32) -> u32>,
    ) -> Result<(), Errno> {
        if self.surely_no_caps(ino) && (set_id.is_none() || self.surely_no_set_id(ino)) {
            return Ok(());
        }
        let start = self.start();
        let e = match self.vol.getattr(id).await {
            Ok(e) => e,
            // Capabilities alone do not fail a write (a stripe's getattr needs every brick,
            // its write only some); set-id bits cannot be left unchecked.
            Err(err) if set_id.is_none() => {
                tracing::debug!(%id, "cannot check a written file's capabilities: {err}");
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        self.note_perm(ino, &e, start);
        if e.has_caps {
            match self.vol.removexattr(id, b"security.capability").await {
                Ok(()) | Err(Errno::ENODATA) => self.known.caps_dropped(ino),
                // The data matters more: a write does not fail for this.
                Err(err) => tracing::debug!(%id, "cannot drop the capabilities of a file written: {err}"),
            }
        }
        let perm = e.attr.perm;
        let bits = match (set_id, perm & killpriv::SET_ID) {
            (Some(set_id), 1..) => set_id(perm, e.attr.gid),
            _ => 0,
        };
        if bits != 0 {
            self.set_perm(ino, id, perm & !bits).await?;
        }
        Ok(())
    }

    /// Sets the permission bits, the kernel to fetch them anew.
    async fn set_perm(&self, ino: u64, id: FileId, perm: u32) -> Result<Entry, Errno> {
        let (e, start) = self
            .change(ino, true, self.vol.setattr(id, None, &perm_only(perm)))
            .await;
        let e = e?;
        self.note_perm(ino, &e, start);
        self.invalidate(Inval::Attrs(ino));
        Ok(e)
    }

    /// Runs `op`, a change of `ino`'s attributes through this mount (of its permission
    /// bits, owner, capabilities or ACL if `perms`), counted as a write is: what was fetched
    /// across it is not kept nor trusted, made or not. The start it returns is past the
    /// change (its own reply is current).
    async fn change<T>(&self, ino: u64, perms: bool, op: impl std::future::Future<Output = T>) -> (T, Start) {
        self.wrote(ino);
        let notices = self.start().notices;
        let r = op.await;
        if perms {
            self.known.changed(ino);
        }
        self.wrote(ino);
        (
            r,
            Start {
                notices,
                ..self.start()
            },
        )
    }

    /// How long the kernel (and this mount) may keep what a request begun at `start` got
    /// about `ids`: nothing if a change to one of them was announced meanwhile.
    fn ttls(&self, ids: &[FileId], start: Start) -> (Duration, Duration) {
        if self.coherence.changed_since(ids, start.notices) {
            (Duration::ZERO, Duration::ZERO)
        } else {
            (self.attr_ttl, self.entry_ttl)
        }
    }

    /// Keeps `e` to answer the kernel's next getattr of `ino` here, unless a write through
    /// this mount ran meanwhile.
    fn keep(&self, ino: u64, e: &Entry, ttl: Duration, start: Start) {
        if self.writes.load(Ordering::SeqCst) == start.writes {
            self.attrs.put(ino, e, ttl, start.removals);
            // A change counted between the check and the put may have dropped the file
            // before this put it back (`wrote` counts, then drops).
            if self.writes.load(Ordering::SeqCst) == start.writes {
                return;
            }
        }
        self.attrs.drop(ino);
    }

    fn start(&self) -> Start {
        Start {
            notices: self.coherence.now(),
            writes: self.writes.load(Ordering::SeqCst),
            perms: self.known.changes(),
            removals: self.attrs.epoch(),
        }
    }

    fn reply_entry(&self, reply: ReplyEntry, e: &Entry, start: Start, parent: FileId) {
        let ino = self.inodes.lookup(e.attr.id);
        self.reply_entry_at(reply, ino, e, start, parent);
    }

    /// As [`Inner::reply_entry`], for an entry whose lookup was already counted as `ino`.
    fn reply_entry_at(&self, reply: ReplyEntry, ino: u64, e: &Entry, start: Start, parent: FileId) {
        let (attr_ttl, entry_ttl) = self.ttls(&[e.attr.id, parent], start);
        self.note(ino, e, start);
        self.keep(ino, e, attr_ttl, start);
        reply.entry_with_ttls(&attr_ttl, &entry_ttl, &file_attr(ino, &e.attr), Generation(0));
    }

    fn attr_reply(&self, reply: ReplyAttr, ino: INodeNo, e: &Entry, start: Start) {
        let (ttl, _) = self.ttls(&[e.attr.id], start);
        self.note(ino.0, e, start);
        self.keep(ino.0, e, ttl, start);
        reply.attr(&ttl, &file_attr(ino.0, &e.attr));
    }

    fn invalidate(&self, i: Inval) {
        if let Some(tx) = self.inval.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = tx.send(i);
        }
    }

    /// A brick announced that another client changed something (or that anything may have
    /// changed): forget it here and in the kernel.
    fn on_stale(self: &Arc<Self>, stale: Stale) {
        match stale {
            Stale::All => {
                self.coherence.mark_all();
                self.attrs.clear();
                self.complete.clear();
                self.known.stale(None);
                for ino in self.inodes.all() {
                    self.invalidate(Inval::Inode(ino));
                }
            }
            Stale::Changed(changes) => {
                for c in changes {
                    self.coherence.mark(c.id);
                    let Some(ino) = self.inodes.known(c.id) else {
                        continue;
                    };
                    self.attrs.drop(ino);
                    self.complete.forget(ino);
                    if c.name.is_none() && self.lazily_opened(c.id).is_some() {
                        self.check_pages(ino, c.id);
                    } else {
                        self.known.stale(Some(ino));
                        self.invalidate(Inval::Inode(ino));
                    }
                    if let Some(name) = c.name {
                        self.invalidate(Inval::Entry(ino, name));
                    }
                }
            }
        }
    }

    /// Another client changed a file opened lazily here, whose reads the kernel's pages
    /// serve: most often it removed it (its data unchanged), and a read that misses the
    /// pages then would find it gone from the bricks. Its attributes go at once; its pages
    /// only if its version moved from theirs (a file gone keeps what it had).
    fn check_pages(self: &Arc<Self>, ino: u64, id: FileId) {
        // The pages' version, before a getattr of the kernel's notes a newer one.
        let pages = self.known.version(ino);
        self.known.stale(Some(ino));
        self.invalidate(Inval::Attrs(ino));
        let s = self.clone();
        self.rt.spawn(async move {
            let changed = match s.vol.getattr(id).await {
                Ok(e) => pages != Some(Version::of(&e.attr)),
                Err(Errno::ENOENT | Errno::ESTALE) => false,
                Err(_) => true,
            };
            if changed {
                s.invalidate(Inval::Inode(ino));
            }
        });
    }

    /// Writes all of `data`, as a writer would: after a short write, the rest again, to get
    /// the reason it stopped (ENOSPC, EDQUOT, ...).
    async fn write_all(&self, h: &Handle, mut offset: u64, mut data: Bytes) -> Result<(), Errno> {
        while !data.is_empty() {
            match self.vol.write(h, offset, data.clone()).await? {
                0 => return Err(Errno::EIO),
                n => {
                    let n = (n as usize).min(data.len());
                    offset += n as u64;
                    data = data.slice(n..);
                }
            }
        }
        Ok(())
    }

    /// Waits for the writes behind to `ino` so far, and reports a failure among them that
    /// the open file `fh` was not told of; `clear` (fsync) counts it as told.
    async fn report(&self, ino: u64, fh: FileHandle, clear: bool) -> Result<(), Errno> {
        let f = self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh.0)
            .cloned();
        match f {
            Some(f) => self.behind.report(ino, &f.seen, clear).await,
            None => {
                self.behind.settle(ino).await;
                Ok(())
            }
        }
    }

    /// `e`, asked for at `epoch` while writes behind to it were in flight, may show it
    /// before them (a smaller size the kernel would believe): fetched again once they have
    /// ended.
    async fn settled(&self, e: Entry, epoch: u64) -> Result<Entry, Errno> {
        match self.inodes.known(e.attr.id) {
            Some(ino) if self.behind.raced(ino, epoch) => {
                self.behind.settle(ino).await;
                self.vol.getattr(e.attr.id).await
            }
            _ => Ok(e),
        }
    }

    /// This mount changed `ino` (or is about to): wrote to it, or set its attributes or
    /// xattrs.
    fn wrote(&self, ino: u64) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.attrs.drop(ino);
    }

    /// Whether a read of `ino` the kernel sent after the write request `unique` already
    /// began here (asked once the write counts in flight; see `Inner::reads`).
    fn read_after(&self, ino: u64, unique: u64) -> bool {
        self.reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino)
            .is_some_and(|&r| r > unique)
    }

    async fn open_existing(
        &self,
        parent: FileId,
        name: &[u8],
        flags: i32,
        caller: impl FnOnce() -> Caller,
    ) -> Result<(Entry, Handle), Errno> {
        let e = self.vol.lookup(parent, name).await?;
        if e.attr.kind == FileKind::Dir {
            return Err(Errno::EISDIR);
        }
        let h = self.vol.open(e.attr.id, (flags & !libc::O_CREAT) as u32).await?;
        if flags & libc::O_TRUNC == 0 {
            return Ok((e, h));
        }
        // Truncated by the bricks: the file as it is now, less the set-id bits the caller's
        // truncation drops (see `crate::killpriv`).
        let id = e.attr.id;
        let mut e = self.vol.getattr(id).await?;
        let truncation = SetAttr {
            size: Some(0),
            ..SetAttr::default()
        };
        let bits = killpriv::dropped_by_setattr(&truncation, &e.attr, caller);
        if bits != 0 {
            let r = self.vol.setattr(id, None, &perm_only(e.attr.perm & !bits)).await;
            // A change like any other for what this mount holds of the file, if it holds
            // anything (the caller's own note then counts as stale: it began before).
            if let Some(ino) = self.inodes.known(id) {
                self.known.changed(ino);
                self.wrote(ino);
            }
            e = r?;
        }
        Ok((e, h))
    }

    fn new_node(req: &Request, kind: FileKind, mode: u32, rdev: u64) -> NewNode {
        NewNode {
            id: FileId::random(),
            kind,
            perm: mode & 0o7777,
            uid: req.uid(),
            gid: req.gid(),
            rdev,
            meta: Vec::new(),
        }
    }
}

/// Whether setting or removing the xattr `name` may change what the mount knows of a
/// file's permissions: its capabilities, or an ACL (which sets the mode's bits).
fn changes_perms(name: &[u8]) -> bool {
    name == b"security.capability" || name.starts_with(b"system.posix_acl_")
}

/// A setattr of the permission bits alone.
fn perm_only(perm: u32) -> SetAttr {
    SetAttr {
        perm: Some(perm & 0o7777),
        ..SetAttr::default()
    }
}

/// The kernel's lock request as the bricks take it (to the end of the file: `u64::MAX`).
fn lock_of(l: &LockIn) -> Result<Lock, Errno> {
    let kind = match l.typ {
        libc::F_RDLCK => LockKind::Read,
        libc::F_WRLCK => LockKind::Write,
        libc::F_UNLCK => LockKind::Unlock,
        _ => return Err(Errno::EINVAL),
    };
    Ok(Lock {
        kind,
        start: l.start,
        end: if l.end >= OFFSET_MAX { u64::MAX } else { l.end },
        owner: l.owner,
        pid: l.pid,
    })
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(timespec(t)),
    }
}

impl ShoalFs {
    pub fn new(
        vol: Arc<dyn Xlator>,
        rt: tokio::runtime::Handle,
        attr_ttl: Duration,
        entry_ttl: Duration,
    ) -> ShoalFs {
        let notifier = Arc::new(OnceLock::new());
        let inval = match crate::cache::invalidator(notifier.clone()) {
            Ok(tx) => Some(tx),
            Err(e) => {
                tracing::warn!("no thread for cache invalidations ({e}): other clients' changes show only as caches expire");
                None
            }
        };
        ShoalFs {
            rt: rt.clone(),
            inner: Arc::new(Inner {
                rt,
                vol,
                inodes: Inodes::new(),
                files: Mutex::new(HashMap::new()),
                dirs: Mutex::new(HashMap::new()),
                next_fh: AtomicU64::new(1),
                lazy_opens: AtomicU64::new(0),
                attr_ttl,
                entry_ttl,
                notifier,
                known: Known::new(attr_ttl),
                locked: Mutex::new(HashSet::new()),
                reads: Mutex::new(HashMap::new()),
                coherence: Coherence::default(),
                attrs: AttrCache::default(),
                complete: Complete::default(),
                inval: Mutex::new(inval),
                writes: AtomicU64::new(0),
                behind: Arc::new(Behind::default()),
            }),
        }
    }

    /// Where the volume's announcements of other clients' changes go.
    pub fn stale_fn(&self) -> StaleFn {
        // Weak: the volume's connections hold this, and this mount holds the volume.
        let inner = Arc::downgrade(&self.inner);
        Arc::new(move |stale| {
            if let Some(i) = inner.upgrade() {
                i.on_stale(stale);
            }
        })
    }

    /// Where the session's notifier goes once the session exists.
    pub fn notifier_slot(&self) -> Arc<OnceLock<crate::kernel::Notifier>> {
        self.inner.notifier.clone()
    }

    /// Runs a request: on this thread until it first waits, then on the runtime.
    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Inner>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let inner = self.inner.clone();
        crate::inline::run(&self.rt, f(inner));
    }
}

macro_rules! tryr {
    ($reply:ident, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => {
                $reply.error(ferr(e));
                return;
            }
        }
    };
}

impl crate::kernel::Filesystem for ShoalFs {
    fn init(&mut self, config: &mut KernelConfig) {
        config.set_max_write(MAX_IO);
        config.set_max_readahead(MAX_IO);
        config.set_max_background(64);
        let wanted = init::POSIX_LOCKS
            | init::PARALLEL_DIROPS
            | init::ASYNC_DIO
            | init::CACHE_SYMLINKS
            // Set-id bits are dropped here, so the kernel no longer asks for a file's
            // capabilities before each write (see `crate::killpriv`).
            | init::HANDLE_KILLPRIV_V2;
        // Not FUSE_AUTO_INVAL_DATA: it drops a file's cached pages whenever its mtime moves,
        // which this mount's own writes do every time. Pages go instead when a brick
        // announces another client's change, and at open when the file is not the version
        // the kernel's pages hold.
        config.add_capabilities(wanted);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        // (A name the bricks would refuse goes to them, for their error.)
        if proto::check_name(name.as_bytes()).is_ok()
            && self.inner.complete.surely_absent(parent.0, name.as_bytes())
        {
            reply.entry(&self.inner.entry_ttl, &negative(), Generation(0));
            return;
        }
        let name = name.as_bytes().to_vec();
        self.spawn(move |s| async move {
            let p = tryr!(reply, s.id(parent));
            let start = s.start();
            let epoch = s.behind.epoch();
            match s.vol.lookup(p, &name).await {
                Ok(e) => {
                    let e = tryr!(reply, s.settled(e, epoch).await);
                    s.reply_entry(reply, &e, start, p)
                }
                Err(Errno::ENOENT) => match s.ttls(&[p], start) {
                    // The kernel remembers the absence too; a brick announces the name's
                    // creation by another client.
                    (_, ttl) if !ttl.is_zero() => reply.entry(&ttl, &negative(), Generation(0)),
                    _ => reply.error(libc::ENOENT),
                },
                Err(e) => reply.error(ferr(e)),
            }
        });
    }

    fn forget(&self, ino: INodeNo, nlookup: u64) {
        if self.inner.inodes.forget(ino.0, nlookup) {
            self.inner.attrs.drop(ino.0);
            self.inner.complete.forget(ino.0);
            self.inner.behind.forget_inode(ino.0);
            self.inner
                .reads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&ino.0);
            self.inner.known.forget(ino.0);
            self.inner
                .locked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        // The kernel drops attributes after this mount's own writes and namespace changes;
        // what they did is known here.
        if let Some((e, left)) = self.inner.attrs.get(ino.0) {
            reply.attr(&left, &file_attr(ino.0, &e.attr));
            return;
        }
        self.spawn(move |s| async move {
            let id = tryr!(reply, s.id(ino));
            s.behind.settle(ino.0).await;
            let start = s.start();
            let e = match s.vol.getattr(id).await {
                // Removed by another client since a lazy open of it here (an fstat of the
                // open file, which the kernel sends without its handle): its attributes as
                // opened, not ESTALE.
                Err(err @ (Errno::ENOENT | Errno::ESTALE)) => {
                    let mut e = tryr!(reply, s.lazily_opened(id).ok_or(err));
                    e.attr.nlink = 0;
                    reply.attr(&Duration::ZERO, &file_attr(ino.0, &e.attr));
                    return;
                }
                r => tryr!(reply, r),
            };
            s.attr_reply(reply, ino, &e, start);
        });
    }

    fn setattr(&self, req: &Request, ino: INodeNo, set: SetAttrIn, reply: ReplyAttr) {
        let fh = set.fh.map(FileHandle);
        let set = SetAttr {
            perm: set.mode.map(|m| m & 0o7777),
            uid: set.uid,
            gid: set.gid,
            size: set.size,
            atime: set.atime.map(time_set),
            mtime: set.mtime.map(time_set),
        };
        let (pid, caller_gid) = (req.pid(), req.gid());
        self.spawn(move |s| async move {
            let id = tryr!(reply, s.id(ino));
            s.behind.settle(ino.0).await;
            let h = match fh {
                Some(fh) if set.size.is_some() => s.file(fh).await.ok(),
                _ => None,
            };
            let perms = set.perm.is_some() || set.uid.is_some() || set.gid.is_some();
            let (r, mut start) = s
                .change(ino.0, perms, s.vol.setattr(id, h.as_deref(), &set))
                .await;
            let mut e = tryr!(reply, r);
            // Set-id bits the change drops, from the mode it left (see `crate::killpriv`).
            let bits = killpriv::dropped_by_setattr(&set, &e.attr, || Caller::of(pid, caller_gid));
            if bits != 0 {
                e = tryr!(reply, s.set_perm(ino.0, id, e.attr.perm & !bits).await);
                // Counted as a change of its own, it is current too (the kernel holds the
                // inode's lock across a setattr: no other change of it from here crossed).
                start = Start {
                    notices: start.notices,
                    ..s.start()
                };
            }
            s.attr_reply(reply, ino, &e, start);
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(move |s| async move {
            let id = tryr!(reply, s.id(ino));
            let t = tryr!(reply, s.vol.readlink(id).await);
            reply.data(&t);
        });
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, rdev: u32, reply: ReplyEntry) {
        let name = name.as_bytes().to_vec();
        let Some(k) = FileKind::from_mode(mode) else {
            reply.error(libc::EINVAL);
            return;
        };
        let node = Inner::new_node(req, k, mode, rdev as u64);
        self.spawn(move |s| async move {
            let p = tryr!(reply, s.id(parent));
            let start = s.start();
            let (e, _) = tryr!(reply, s.vol.create(p, &name, &node, None, None).await);
            s.attrs.touch_dir(parent.0, e.attr.ctime);
            s.complete.added(parent.0, &name);
            s.reply_entry(reply, &e, start, p);
        });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, reply: ReplyEntry) {
        let name = name.as_bytes().to_vec();
        let node = Inner::new_node(req, FileKind::Dir, mode, 0);
        self.spawn(move |s| async move {
            let p = tryr!(reply, s.id(parent));
            let start = s.start();
            let (e, _) = tryr!(reply, s.vol.create(p, &name, &node, None, None).await);
            // The parent's link count changed too.
            s.attrs.drop(parent.0);
            s.complete.added(parent.0, &name);
            let ino = s.inodes.lookup(e.attr.id);
            if !s.coherence.changed_since(&[e.attr.id], start.notices) {
                s.complete.made(ino);
            }
            s.reply_entry_at(reply, ino, &e, start, p);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.spawn(move |s| async move {
            let p = tryr!(reply, s.id(parent));
            s.keep_readable(p, &name).await;
            let r = s.vol.unlink(p, &name).await;
            s.attrs.removed();
            tryr!(reply, r);
            s.complete.removed(parent.0, &name);
            s.attrs.touch_dir(parent.0, timespec(SystemTime::now()));
            reply.ok();
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.spawn(move |s| async move {
            let p = tryr!(reply, s.id(parent));
            let r = s.vol.rmdir(p, &name).await;
            s.attrs.removed();
            s.attrs.drop(parent.0);
            tryr!(reply, r);
            s.complete.removed(parent.0, &name);
            reply.ok();
        });
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let name = link_name.as_bytes().to_vec();
        let target = target.as_os_str().as_bytes().to_vec();
        let node = Inner::new_node(req, FileKind::Symlink, 0o777, 0);
        self.spawn(move |s| async move {
            let p = tryr!(reply, s.id(parent));
            let start = s.start();
            let (e, _) = tryr!(reply, s.vol.create(p, &name, &node, Some(&target), None).await);
            s.attrs.touch_dir(parent.0, e.attr.ctime);
            s.complete.added(parent.0, &name);
            s.reply_entry(reply, &e, start, p);
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let name = name.as_bytes().to_vec();
        let newname = newname.as_bytes().to_vec();
        if flags & libc::RENAME_WHITEOUT != 0 {
            reply.error(libc::EINVAL);
            return;
        }
        let rflags = RenameFlags {
            noreplace: flags & libc::RENAME_NOREPLACE != 0,
            exchange: flags & libc::RENAME_EXCHANGE != 0,
        };
        self.spawn(move |s| async move {
            let p = tryr!(reply, s.id(parent));
            let np = tryr!(reply, s.id(newparent));
            s.keep_readable(np, &newname).await;
            let r = s.vol.rename(p, &name, np, &newname, rflags).await;
            s.attrs.removed();
            s.attrs.drop(parent.0);
            s.attrs.drop(newparent.0);
            if r.is_err() || rflags.exchange {
                s.complete.forget(parent.0);
                s.complete.forget(newparent.0);
            }
            tryr!(reply, r);
            s.complete.removed(parent.0, &name);
            s.complete.added(newparent.0, &newname);
            // The kernel moves the entry it has under the old name, which may be what
            // another client replaced there just before (its announcement not yet handled):
            // where another client changes the directory, the new name is looked up again.
            // Not a directory's: dropping it would cut off processes working inside it.
            let recheck = |dir: FileId, name: Vec<u8>, ino: u64| {
                let s = s.clone();
                async move {
                    let file = s
                        .vol
                        .lookup(dir, &name)
                        .await
                        .is_ok_and(|e| e.attr.kind != FileKind::Dir);
                    if file {
                        s.invalidate(Inval::Entry(ino, name));
                    }
                }
            };
            let (again, back) = (
                s.coherence.ever_changed(p),
                rflags.exchange && s.coherence.ever_changed(np),
            );
            reply.ok();
            if again {
                recheck(np, newname, newparent.0).await;
            }
            if back {
                recheck(p, name, parent.0).await;
            }
        });
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let newname = newname.as_bytes().to_vec();
        self.spawn(move |s| async move {
            let id = tryr!(reply, s.id(ino));
            let np = tryr!(reply, s.id(newparent));
            let start = s.start();
            let epoch = s.behind.epoch();
            let e = tryr!(reply, s.vol.link(id, np, &newname).await);
            let e = tryr!(reply, s.settled(e, epoch).await);
            s.attrs.touch_dir(newparent.0, e.attr.ctime);
            s.complete.added(newparent.0, &newname);
            s.reply_entry(reply, &e, start, np);
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: i32, reply: ReplyOpen) {
        // Close-to-open consistency, as NFS gives it: an open sees the file as it is now.
        // The file's current version is fetched alongside the open; if it is what the kernel
        // already knows, its cached pages stay (no re-read of unchanged data); otherwise the
        // kernel's attributes are invalidated and its pages dropped.
        let flags = flags as u32;
        let lazy = flags as i32 & libc::O_ACCMODE == libc::O_RDONLY && flags as i32 & libc::O_TRUNC == 0;
        self.spawn(move |s| async move {
            let id = tryr!(reply, s.id(ino));
            // The version check below must see this mount's writes.
            s.behind.settle(ino.0).await;
            let start = s.start();
            let open = || async {
                match lazy {
                    true => Ok(None),
                    false => s.vol.open(id, flags).await.map(Some),
                }
            };
            // Attributes known here are current: a brick announces another client's change
            // to this one before it answers the client that made it. The open waits until
            // what reached this host is handled (`Xlator::caught_up`): a lazy one asks no
            // brick, and the answer of one that does may come on a lane (`proto::lane`),
            // beside the announcements on each brick's main connection.
            let (mut opened, mut start) = (None, start);
            let cached = s.attrs.get(ino.0).is_some();
            if cached {
                if !lazy {
                    opened = Some(open().await);
                }
                // (A successful open on this thread may have been answered on a lane.)
                let lane = proto::lane::here().is_some() && opened.as_ref().is_some_and(|o| o.is_ok());
                if (lazy || lane) && !s.vol.caught_up().await {
                    s.attrs.drop(ino.0);
                }
            }
            let keep = |f: &Result<Entry, Errno>, start: Start| {
                if let Ok(e) = f {
                    let (ttl, _) = s.ttls(&[id], start);
                    s.keep(ino.0, e, ttl, start);
                }
            };
            // (Only what was cached before is trusted: attributes another request put there
            // meanwhile were fetched before the open's answer.)
            let known = cached.then(|| s.attrs.get(ino.0)).flatten();
            let (opened, fresh) = match (opened, known) {
                (Some(o), Some((e, _))) => (o, Ok(e)),
                (None, Some((e, _))) => (open().await, Ok(e)),
                (Some(o), None) => {
                    // An announcement came with the open's answer: the version is fetched
                    // after it.
                    start = s.start();
                    let f = s.vol.getattr(id).await;
                    keep(&f, start);
                    (o, f)
                }
                (None, None) => {
                    let (o, f) = tokio::join!(open(), s.vol.getattr(id));
                    keep(&f, start);
                    (o, f)
                }
            };
            let mut h = tryr!(reply, opened);
            if lazy {
                // The file must exist for a lazy open to succeed.
                tryr!(reply, fresh.as_ref().map_err(|e| *e));
            }
            let unchanged = fresh
                .as_ref()
                .is_ok_and(|e| s.known.version(ino.0) == Some(Version::of(&e.attr)));
            // The kernel's pages go (or it never had them): the first read needs the
            // bricks, and the file must be open there before another client can remove it
            // (an open file stays readable).
            // Opened now, a file replaced meanwhile answers ESTALE here, where the kernel
            // looks its name up again and opens what is there now. (Before the version is
            // noted: a failed open leaves the pages to be dropped by the next.)
            let paged = fresh
                .as_ref()
                .is_ok_and(|e| s.known.has_pages(ino.0, Version::of(&e.attr)));
            if lazy && !(unchanged && paged) {
                h = Some(tryr!(reply, s.vol.open(id, flags).await));
            }
            if let Ok(e) = &fresh {
                s.note(ino.0, e, start);
            }
            if !unchanged {
                if let Some(n) = s.notifier.get() {
                    if let Err(e) = n.inval_inode(ino, -1, 0) {
                        tracing::debug!("attribute invalidation: {e}");
                    }
                }
            }
            let fh = s.add_file(ino.0, id, flags, h, fresh.ok());
            let fopen = if unchanged {
                FopenFlags::FOPEN_KEEP_CACHE
            } else {
                FopenFlags::empty()
            };
            reply.opened(FileHandle(fh), fopen);
        });
    }

    fn read(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, size: u32, reply: ReplyData) {
        // (Before the read is sent: a write the kernel sent before it may still be on its
        // way here.)
        let unique = req.unique();
        self.inner
            .reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(ino.0)
            .and_modify(|r| *r = (*r).max(unique))
            .or_insert(unique);
        self.spawn(move |s| async move {
            s.behind.settle(ino.0).await;
            let h = tryr!(reply, s.file(fh).await);
            let data = tryr!(reply, s.vol.read(&h, offset, size).await);
            s.known.paged(ino.0);
            reply.data(&data);
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: u32,
        reply: ReplyWrite,
    ) {
        let data = Bytes::copy_from_slice(data);
        let unique = req.unique();
        // The writer lacks CAP_FSETID: the set-id bits go (see `crate::killpriv`).
        let kill = (write_flags & WRITE_KILL_SUIDGID != 0).then(|| (req.pid(), req.gid()));
        // A handle's first write goes straight through: a small file written at once gains
        // nothing from going behind (its close waits for the write anyway) and would pay
        // for the extra hand-off.
        let sync = libc::O_SYNC | libc::O_DSYNC | libc::O_DIRECT;
        let (behind, seen, id) = self
            .inner
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh.0)
            .map_or((false, 0, None), |f| {
                let behind = f.flags as i32 & sync == 0 && f.wrote.swap(true, Ordering::Relaxed);
                (behind, f.seen.load(Ordering::SeqCst), Some(f.id))
            });
        self.spawn(move |s| async move {
            let h = tryr!(reply, s.file(fh).await);
            // (Known, the handle being open.)
            let id = tryr!(reply, id.ok_or(Errno::EBADF));
            let set_id = kill.map(|(pid, gid)| {
                move |perm, file_gid| {
                    // (The kernel's flag says the writer lacks CAP_FSETID.)
                    let caller = Caller {
                        fsetid: false,
                        ..Caller::of(pid, gid)
                    };
                    killpriv::dropped_by_write(perm, file_gid, &caller)
                }
            });
            tryr!(reply, s.drop_privs(ino.0, id, set_id).await);
            if !behind {
                // After any of the file's writes that went behind, as it must land after them;
                // and, as those would, failing after one of them failed.
                s.behind.settle(ino.0).await;
                if let Some(e) = s.behind.failed(ino.0, seen) {
                    reply.error(ferr(e));
                    return;
                }
                // Counted in flight, so that reads of the file wait for it; its failure is
                // this writer's answer, not one to report again.
                let len = data.len() as u64;
                let ticket = tryr!(reply, s.behind.admit(ino.0, offset, data.len(), seen).await);
                let raced = s.read_after(ino.0, unique);
                s.wrote(ino.0);
                let r = s.vol.write(&h, offset, data).await;
                s.wrote(ino.0);
                if raced {
                    s.invalidate(Inval::Pages(ino.0, offset, len));
                }
                ticket.done(Ok(()));
                let n = tryr!(reply, r);
                reply.written(n);
                return;
            }
            let len = data.len() as u32;
            let ticket = tryr!(reply, s.behind.admit(ino.0, offset, data.len(), seen).await);
            let raced = s.read_after(ino.0, unique);
            s.wrote(ino.0);
            let inner = s.clone();
            // Sent from this thread; the reply finishes it wherever it arrives.
            crate::inline::run_shared(&s.rt, async move {
                let r = inner.write_all(&h, offset, data).await;
                inner.wrote(ino.0);
                if raced {
                    inner.invalidate(Inval::Pages(ino.0, offset, u64::from(len)));
                }
                ticket.done(r);
            });
            reply.written(len);
        });
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        // A close waits for the file's writes still on their way, and drops the closing
        // process's locks if it could have any.
        let locked = self
            .inner
            .locked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&ino.0);
        if !locked && !self.inner.behind.pending(ino.0) {
            reply.ok();
            return;
        }
        self.spawn(move |s| async move {
            let written = s.report(ino.0, fh, false).await;
            if locked {
                // The locks go even if a write failed.
                let h = tryr!(reply, s.file(fh).await);
                tryr!(reply, s.vol.flush(&h, lock_owner.0).await);
            }
            tryr!(reply, written);
            reply.ok();
        });
    }

    fn release(&self, _req: &Request, ino: INodeNo, fh: FileHandle, reply: ReplyEmpty) {
        let h = self
            .inner
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        if h.as_ref().is_some_and(|f| f.at_open.is_some()) {
            self.inner.lazy_opens.fetch_sub(1, Ordering::Relaxed);
        }
        self.spawn(move |s| async move {
            let Some(f) = h else {
                reply.ok();
                return;
            };
            // The file's writes still use the handle.
            s.behind.settle(ino.0).await;
            // At the last close nobody is left to tell of a failure. (The scan of open files
            // only when there is something to forget: most closes have nothing behind.)
            if s.behind.pending(ino.0) {
                let open = s
                    .files
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .any(|o| o.id == f.id);
                if !open {
                    s.behind.forget(ino.0);
                }
            }
            if let Some(h) = f.handle.get().cloned() {
                let start = s.start();
                match s.vol.release(&h).await {
                    // The file as it was closed, after this mount's writes: the next stat
                    // and open need not ask, and the pages those writes left in the
                    // kernel are of this version.
                    Ok(Some(e)) => {
                        let (ttl, _) = s.ttls(&[e.attr.id], start);
                        if !ttl.is_zero() && s.writes.load(Ordering::SeqCst) == start.writes {
                            s.note(ino.0, &e, start);
                            if f.wrote.load(Ordering::Relaxed) {
                                s.known.paged(ino.0);
                            }
                            s.keep(ino.0, &e, ttl, start);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!("release: {e}"),
                }
            }
            reply.ok();
        });
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        self.spawn(move |s| async move {
            // What did reach the bricks is made durable even if a write failed.
            let written = s.report(ino.0, fh, true).await;
            let h = tryr!(reply, s.file(fh).await);
            tryr!(reply, s.vol.fsync(&h, datasync).await);
            tryr!(reply, written);
            reply.ok();
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, reply: ReplyOpen) {
        let id = tryr!(reply, self.inner.id(ino));
        let fh = self.inner.next_fh.fetch_add(1, Ordering::Relaxed);
        self.inner
            .dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(tokio::sync::Mutex::new(DirState::new(id))));
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let state = self
            .inner
            .dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh.0)
            .cloned();
        self.spawn(move |s| async move {
            let Some(state) = state else {
                reply.error(libc::EBADF);
                return;
            };
            let mut st = state.lock().await;
            let items = tryr!(reply, st.at(s.vol.as_ref(), offset).await);
            for (pos, it) in items {
                let child_ino = match (&it.id, it.name.as_slice()) {
                    (_, b"..") => {
                        if ino.0 == ROOT_INO {
                            ROOT_INO
                        } else {
                            ino.0
                        }
                    }
                    (Some(id), _) => s.inodes.peek(*id),
                    (None, name) => layout::hash_name(FileId::ROOT, name).max(2),
                };
                if reply.add(
                    INodeNo(child_ino),
                    pos + 1,
                    kind(it.kind),
                    OsStr::from_bytes(&it.name),
                ) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, reply: ReplyEmpty) {
        self.inner
            .dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(move |s| async move {
            let st = tryr!(reply, s.vol.statfs().await);
            reply.statfs(
                st.blocks, st.bfree, st.bavail, st.files, st.ffree, st.bsize, st.namemax, st.frsize,
            );
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        reply: ReplyEmpty,
    ) {
        let name = name.as_bytes().to_vec();
        let value = value.to_vec();
        self.spawn(move |s| async move {
            let id = tryr!(reply, s.id(ino));
            let setxattr = s.vol.setxattr(id, &name, &value, flags as u32);
            let (r, _) = s.change(ino.0, changes_perms(&name), setxattr).await;
            tryr!(reply, r);
            reply.ok();
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // The kernel asks this before a write to a file it has not seen without capabilities
        // since it last fetched its attributes, to know whether the write drops them.
        if name.as_bytes() == b"security.capability" && self.inner.surely_no_caps(ino.0) {
            reply.error(libc::ENODATA);
            return;
        }
        let name = name.as_bytes().to_vec();
        self.spawn(move |s| async move {
            let id = tryr!(reply, s.id(ino));
            let v = tryr!(reply, s.vol.getxattr(id, &name).await);
            xattr_reply(reply, size, &v);
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.spawn(move |s| async move {
            let id = tryr!(reply, s.id(ino));
            let names = tryr!(reply, s.vol.listxattr(id).await);
            let mut buf = Vec::new();
            for n in names {
                buf.extend_from_slice(&n);
                buf.push(0);
            }
            xattr_reply(reply, size, &buf);
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.spawn(move |s| async move {
            let id = tryr!(reply, s.id(ino));
            let (r, _) = s
                .change(ino.0, changes_perms(&name), s.vol.removexattr(id, &name))
                .await;
            tryr!(reply, r);
            reply.ok();
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name.as_bytes().to_vec();
        let node = Inner::new_node(req, FileKind::File, mode, 0);
        let (pid, gid) = (req.pid(), req.gid());
        self.spawn(move |s| async move {
            let p = tryr!(reply, s.id(parent));
            let start = s.start();
            let created = match s.vol.create(p, &name, &node, None, Some(flags as u32)).await {
                // Another client made the name since the kernel saw it absent: without
                // O_EXCL, the open goes to that file, as it would have.
                Err(Errno::EEXIST) if flags & libc::O_EXCL == 0 => {
                    s.open_existing(p, &name, flags, || Caller::of(pid, gid)).await
                }
                other => other.and_then(|(e, h)| Ok((e, h.ok_or(Errno::EIO)?))),
            };
            let (e, h) = tryr!(reply, created);
            let ino = s.inodes.lookup(e.attr.id);
            let (ttl, _) = s.ttls(&[e.attr.id, p], start);
            s.note(ino, &e, start);
            s.keep(ino, &e, ttl, start);
            s.attrs.touch_dir(parent.0, e.attr.ctime);
            s.complete.added(parent.0, &name);
            let fh = s.add_file(ino, e.attr.id, flags as u32, Some(h), None);
            reply.created(
                &ttl,
                &file_attr(ino, &e.attr),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            );
        });
    }

    fn getlk(&self, _req: &Request, ino: INodeNo, lock: LockIn, reply: ReplyLock) {
        self.inner
            .locked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ino.0);
        self.spawn(move |s| async move {
            let id = tryr!(reply, s.id(ino));
            // Whoever takes the lock next must find this mount's writes made under it.
            s.behind.settle(ino.0).await;
            let l = tryr!(reply, lock_of(&lock));
            let got = tryr!(reply, s.vol.getlk(id, &l).await);
            let typ = match got.kind {
                LockKind::Read => libc::F_RDLCK,
                LockKind::Write => libc::F_WRLCK,
                LockKind::Unlock => libc::F_UNLCK,
            };
            let end = if got.end == u64::MAX { OFFSET_MAX } else { got.end };
            reply.locked(got.start, end, typ, got.pid);
        });
    }

    fn setlk(&self, _req: &Request, ino: INodeNo, lock: LockIn, sleep: bool, reply: ReplyEmpty) {
        self.inner
            .locked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ino.0);
        self.spawn(move |s| async move {
            let id = tryr!(reply, s.id(ino));
            // Whoever takes the lock next must find this mount's writes made under it.
            s.behind.settle(ino.0).await;
            let l = tryr!(reply, lock_of(&lock));
            tryr!(reply, s.vol.setlk(id, &l, sleep).await);
            reply.ok();
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let (pid, gid) = (req.pid(), req.gid());
        self.spawn(move |s| async move {
            s.behind.settle(ino.0).await;
            let h = tryr!(reply, s.file(fh).await);
            // As before a write (the caller's capabilities read, as no flag tells them).
            let id = tryr!(reply, s.id(ino));
            let set_id = |perm, file_gid| killpriv::dropped_by(perm, file_gid, &Caller::of(pid, gid));
            tryr!(reply, s.drop_privs(ino.0, id, Some(set_id)).await);
            s.wrote(ino.0);
            let r = s.vol.fallocate(&h, mode as u32, offset, length).await;
            s.wrote(ino.0);
            tryr!(reply, r);
            reply.ok();
        });
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, v: &[u8]) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if v.len() > size as usize {
        reply.error(libc::ERANGE);
    } else {
        reply.data(v);
    }
}
