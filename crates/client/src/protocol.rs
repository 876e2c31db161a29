//! The leaf translator: one brick, reached over its connection.

use crate::conn::BrickConn;
use crate::lockset::LockSet;
use crate::xlator::{DirCursor, DirPage, Handle, Result, Xlator};
use async_trait::async_trait;
use bytes::Bytes;
use proto::msg::{Fh, Reply, Request};
use proto::{Entry, Errno, FileId, Lock, NewNode, RenameFlags, SetAttr, StatFs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Entries asked for per directory page.
const DIR_PAGE: u32 = 512;

/// A file open on a brick. The brick handle is tied to one connection; after a reconnect the
/// file is reopened on first use.
pub struct BrickFile {
    id: FileId,
    flags: u32,
    fh: Mutex<(u64, Fh)>,
    /// Held while the file is reopened: two requests that each found the handle stale
    /// would otherwise each open it, and the brick would keep the first open for the
    /// life of the connection (which keeps any heal of that copy away).
    reopening: tokio::sync::Mutex<()>,
}

impl BrickFile {
    fn new(id: FileId, flags: u32, gen: u64, fh: Fh) -> BrickFile {
        BrickFile {
            id,
            flags,
            fh: Mutex::new((gen, fh)),
            reopening: tokio::sync::Mutex::new(()),
        }
    }
}

pub struct Protocol {
    conn: Arc<BrickConn>,
    /// The connection (generation, 0 for none) on which the brick answered a `ReadV` with
    /// ENOSYS (it predates it): ranges are read each on its own there. A brick upgraded
    /// since is asked again on its next connection.
    no_readv: AtomicU64,
    /// The same for `WriteV`.
    no_writev: AtomicU64,
    /// The same for `OpenNow`.
    no_open_now: AtomicU64,
    /// The locks this client holds on the brick, as it was told: what every new
    /// connection makes the brick's locks for it.
    locks: Arc<Mutex<LockSet>>,
}

/// Locks per `Reclaim` (well inside a frame header's bound).
const RECLAIM_BATCH: usize = 8192;

fn unexpected(r: Reply) -> Errno {
    tracing::error!("unexpected reply from brick: {r:?}");
    Errno::EIO
}

impl Protocol {
    /// The brick behind `conn`. Every connection made from now on says first which client
    /// session it belongs to (the brick keeps a session's locks across a reconnect), then
    /// takes back the locks held (a brick that restarted has lost them).
    pub fn new(conn: Arc<BrickConn>) -> Protocol {
        let locks: Arc<Mutex<LockSet>> = Arc::default();
        let token = FileId::random().0;
        let held = Arc::downgrade(&locks);
        conn.use_lanes(token);
        conn.set_hello(Arc::new(move || {
            let mut first = vec![(Request::Session { token }, "the client session".to_string())];
            let all = match held.upgrade() {
                Some(h) => h.lock().unwrap_or_else(|p| p.into_inner()).all(),
                None => Vec::new(),
            };
            // The brick's locks for this connection become exactly these: the session's
            // may include some this client let go of meanwhile (an unlock lost with its
            // connection) or never heard were granted.
            let mut batches: Vec<Vec<(FileId, Lock)>> =
                all.chunks(RECLAIM_BATCH).map(<[_]>::to_vec).collect();
            if batches.is_empty() {
                batches.push(Vec::new());
            }
            for (i, locks) in batches.into_iter().enumerate() {
                let what = format!("taking back {} lock(s) (some are lost)", locks.len());
                first.push((Request::Reclaim { locks, reset: i == 0 }, what));
            }
            first
        }));
        Protocol {
            conn,
            no_readv: AtomicU64::new(0),
            no_writev: AtomicU64::new(0),
            no_open_now: AtomicU64::new(0),
            locks,
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, LockSet> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn conn(&self) -> &Arc<BrickConn> {
        &self.conn
    }

    async fn call(&self, req: Request) -> Result<Reply> {
        Ok(self.conn.call(&req, Bytes::new()).await?.0)
    }

    async fn entry(&self, req: Request) -> Result<Entry> {
        match self.call(req).await? {
            Reply::Entry(e) => Ok(e),
            r => Err(unexpected(r)),
        }
    }

    async fn ok(&self, req: Request) -> Result<()> {
        match self.call(req).await? {
            Reply::Ok => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    fn file(h: &Handle) -> Result<&Arc<BrickFile>> {
        match h {
            Handle::Brick(f) => Ok(f),
            _ => Err(Errno::EBADF),
        }
    }

    /// The brick handle of an open file, reopening it if the connection was renewed.
    async fn fh(&self, f: &BrickFile) -> Result<Fh> {
        let (gen, fh) = *f.fh.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.conn.generation();
        if gen == cur {
            return Ok(fh);
        }
        let _one = f.reopening.lock().await;
        let (gen, fh) = *f.fh.lock().unwrap_or_else(|p| p.into_inner());
        if gen == self.conn.generation() {
            return Ok(fh); // reopened meanwhile
        }
        let flags = f.flags & !(libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL) as u32;
        match self
            .conn
            .call(&Request::Open { id: f.id, flags }, Bytes::new())
            .await?
        {
            (Reply::Opened { fh }, _, gen) => {
                *f.fh.lock().unwrap_or_else(|p| p.into_inner()) = (gen, fh);
                Ok(fh)
            }
            (r, _, _) => Err(unexpected(r)),
        }
    }

    async fn open_with(&self, req: Request, id: FileId, flags: u32) -> Result<Handle> {
        match self.conn.call(&req, Bytes::new()).await? {
            (Reply::Opened { fh }, _, gen) => Ok(Handle::Brick(Arc::new(BrickFile::new(id, flags, gen, fh)))),
            (r, _, _) => Err(unexpected(r)),
        }
    }

    /// Whether the brick refused a request on the current connection (`no_readv`).
    fn refused(&self, on: &AtomicU64) -> bool {
        let generation = on.load(Ordering::Relaxed);
        generation != 0 && generation == self.conn.generation()
    }

    /// Sends a request that needs the file's handle; on a connection that was renewed
    /// between looking up the handle and sending, tries once more with a fresh one.
    async fn with_fh(&self, h: &Handle, make: impl Fn(Fh) -> Request, data: Bytes) -> Result<(Reply, Bytes)> {
        self.with_fh_parts(h, make, &[data]).await
    }

    /// [`Protocol::with_fh`] with the data in pieces.
    async fn with_fh_parts(
        &self,
        h: &Handle,
        make: impl Fn(Fh) -> Request,
        parts: &[Bytes],
    ) -> Result<(Reply, Bytes)> {
        let f = Self::file(h)?;
        for _ in 0..2 {
            let fh = self.fh(f).await?;
            match self.conn.call_parts(&make(fh), parts).await {
                Err(Errno::EBADF)
                    if f.fh.lock().unwrap_or_else(|p| p.into_inner()).0 != self.conn.generation() =>
                {
                    continue
                }
                r => return r.map(|(reply, data, _)| (reply, data)),
            }
        }
        Err(Errno::EBADF)
    }
}

#[async_trait]
impl Xlator for Protocol {
    async fn lookup(&self, parent: FileId, name: &[u8]) -> Result<Entry> {
        self.entry(Request::Lookup {
            parent,
            name: name.to_vec(),
        })
        .await
    }

    async fn getattr(&self, id: FileId) -> Result<Entry> {
        self.entry(Request::GetAttr { id }).await
    }

    async fn setattr(&self, id: FileId, h: Option<&Handle>, set: &SetAttr) -> Result<Entry> {
        let reply = match h {
            Some(h) if set.size.is_some() => {
                self.with_fh(
                    h,
                    |fh| Request::SetAttr {
                        id,
                        fh: Some(fh),
                        set: set.clone(),
                    },
                    Bytes::new(),
                )
                .await?
                .0
            }
            _ => {
                self.call(Request::SetAttr {
                    id,
                    fh: None,
                    set: set.clone(),
                })
                .await?
            }
        };
        match reply {
            Reply::Entry(e) => Ok(e),
            r => Err(unexpected(r)),
        }
    }

    async fn create(
        &self,
        parent: FileId,
        name: &[u8],
        node: &NewNode,
        symlink_target: Option<&[u8]>,
        open: Option<u32>,
    ) -> Result<(Entry, Option<Handle>)> {
        let req = Request::Create {
            parent,
            name: name.to_vec(),
            node: node.clone(),
            symlink_target: symlink_target.map(<[u8]>::to_vec),
            open,
        };
        match self.conn.call(&req, Bytes::new()).await? {
            (Reply::Created { entry, fh }, _, gen) => {
                let handle = match (fh, open) {
                    (Some(fh), Some(flags)) => {
                        Some(Handle::Brick(Arc::new(BrickFile::new(node.id, flags, gen, fh))))
                    }
                    _ => None,
                };
                Ok((entry, handle))
            }
            (r, _, _) => Err(unexpected(r)),
        }
    }

    async fn unlink(&self, parent: FileId, name: &[u8]) -> Result<()> {
        self.ok(Request::Unlink {
            parent,
            name: name.to_vec(),
        })
        .await
    }

    async fn unlink_unless(&self, parent: FileId, name: &[u8], keep: &str) -> Result<Option<Entry>> {
        match self
            .call(Request::UnlinkUnless {
                parent,
                name: name.to_vec(),
                keep: keep.to_string(),
            })
            .await?
        {
            Reply::Ok => Ok(None),
            Reply::Entry(e) => Ok(Some(e)),
            r => Err(unexpected(r)),
        }
    }

    async fn rmdir(&self, parent: FileId, name: &[u8]) -> Result<()> {
        self.ok(Request::Rmdir {
            parent,
            name: name.to_vec(),
        })
        .await
    }

    async fn rename(
        &self,
        parent: FileId,
        name: &[u8],
        new_parent: FileId,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        self.ok(Request::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            flags,
        })
        .await
    }

    async fn link(&self, id: FileId, new_parent: FileId, new_name: &[u8]) -> Result<Entry> {
        self.entry(Request::Link {
            id,
            new_parent,
            new_name: new_name.to_vec(),
        })
        .await
    }

    async fn readlink(&self, id: FileId) -> Result<Vec<u8>> {
        match self.call(Request::ReadLink { id }).await? {
            Reply::Link(t) => Ok(t),
            r => Err(unexpected(r)),
        }
    }

    async fn readdir(&self, id: FileId, cursor: &DirCursor, plus: bool) -> Result<DirPage> {
        let cookie = cursor.0.first().copied().unwrap_or(0);
        match self
            .call(Request::ReadDir {
                id,
                cookie,
                max: DIR_PAGE,
                plus,
            })
            .await?
        {
            Reply::Dir { entries, eof } => {
                let next = match (eof, entries.last()) {
                    (false, Some(last)) => Some(DirCursor(vec![last.cookie])),
                    _ => None,
                };
                Ok(DirPage { entries, next })
            }
            r => Err(unexpected(r)),
        }
    }

    async fn open(&self, id: FileId, flags: u32) -> Result<Handle> {
        self.open_with(Request::Open { id, flags }, id, flags).await
    }

    async fn open_now(&self, id: FileId, flags: u32) -> Result<Handle> {
        if self.refused(&self.no_open_now) {
            return self.open(id, flags).await;
        }
        let generation = self.conn.generation();
        match self.open_with(Request::OpenNow { id, flags }, id, flags).await {
            Err(Errno::ENOSYS) => {
                self.no_open_now.store(generation, Ordering::Relaxed);
                self.open(id, flags).await
            }
            r => r,
        }
    }

    async fn read(&self, h: &Handle, offset: u64, size: u32) -> Result<Bytes> {
        match self
            .with_fh(h, |fh| Request::Read { fh, offset, size }, Bytes::new())
            .await?
        {
            (Reply::Data, data) => Ok(data),
            (r, _) => Err(unexpected(r)),
        }
    }

    async fn read_ranges(&self, h: &Handle, ranges: &[(u64, u32)]) -> Result<Vec<Bytes>> {
        let one_by_one = crate::xlator::read_each(self, h, ranges);
        let total: u64 = ranges.iter().map(|r| r.1 as u64).sum();
        if ranges.len() < 2 || !proto::msg::ranges_fit(ranges.len(), total) || self.refused(&self.no_readv) {
            return one_by_one.await;
        }
        // (Taken before asking: a refusal marks the connection it came on, or an older one.)
        let generation = self.conn.generation();
        let asked = |fh| Request::ReadV {
            fh,
            ranges: ranges.to_vec(),
        };
        match self.with_fh(h, asked, Bytes::new()).await {
            Ok((Reply::DataV(lens), mut data)) => {
                let whole = lens.len() == ranges.len()
                    && lens.iter().zip(ranges).all(|(n, r)| n <= &r.1)
                    && lens.iter().map(|&n| n as usize).sum::<usize>() == data.len();
                if !whole {
                    tracing::error!(
                        "brick answered a read of {} ranges with lengths {lens:?}",
                        ranges.len()
                    );
                    return Err(Errno::EIO);
                }
                Ok(lens.iter().map(|&n| data.split_to(n as usize)).collect())
            }
            Ok((r, _)) => Err(unexpected(r)),
            Err(Errno::ENOSYS) => {
                self.no_readv.store(generation, Ordering::Relaxed);
                one_by_one.await
            }
            Err(e) => Err(e),
        }
    }

    async fn write_ranges(&self, h: &Handle, pieces: &[(u64, Bytes)]) -> Result<Vec<u32>> {
        let one_by_one = crate::xlator::write_each(self, h, pieces);
        let total: u64 = pieces.iter().map(|p| p.1.len() as u64).sum();
        if pieces.len() < 2 || !proto::msg::ranges_fit(pieces.len(), total) || self.refused(&self.no_writev) {
            return one_by_one.await;
        }
        let ranges: Vec<(u64, u32)> = pieces.iter().map(|(o, d)| (*o, d.len() as u32)).collect();
        let parts: Vec<Bytes> = pieces.iter().map(|p| p.1.clone()).collect();
        let generation = self.conn.generation();
        let asked = |fh| Request::WriteV {
            fh,
            ranges: ranges.clone(),
        };
        match self.with_fh_parts(h, asked, &parts).await {
            Ok((Reply::WrittenV(written), _)) => {
                let sane =
                    written.len() <= pieces.len() && written.iter().zip(&ranges).all(|(n, r)| n <= &r.1);
                if !sane {
                    tracing::error!(
                        "brick answered a write of {} ranges with {written:?}",
                        ranges.len()
                    );
                    return Err(Errno::EIO);
                }
                Ok(written)
            }
            Ok((r, _)) => Err(unexpected(r)),
            Err(Errno::ENOSYS) => {
                self.no_writev.store(generation, Ordering::Relaxed);
                one_by_one.await
            }
            Err(e) => Err(e),
        }
    }

    async fn write(&self, h: &Handle, offset: u64, data: Bytes) -> Result<u32> {
        match self.with_fh(h, |fh| Request::Write { fh, offset }, data).await? {
            (Reply::Written { size }, _) => Ok(size),
            (r, _) => Err(unexpected(r)),
        }
    }

    async fn write_marked(
        &self,
        h: &Handle,
        offset: u64,
        data: Bytes,
        mark: &[(String, i64)],
    ) -> Result<u32> {
        if mark.is_empty() {
            return self.write(h, offset, data).await;
        }
        let req = |fh| Request::WriteMarked {
            fh,
            offset,
            mark: mark.to_vec(),
        };
        match self.with_fh(h, req, data.clone()).await {
            Ok((Reply::Written { size }, _)) => Ok(size),
            Ok((r, _)) => Err(unexpected(r)),
            // A brick from before WriteMarked: two requests.
            Err(Errno::ENOSYS) => {
                let size = self.write(h, offset, data).await?;
                self.xattr_add(Self::file(h)?.id, mark).await?;
                Ok(size)
            }
            Err(e) => Err(e),
        }
    }

    async fn fsync(&self, h: &Handle, datasync: bool) -> Result<()> {
        match self
            .with_fh(h, |fh| Request::Fsync { fh, datasync }, Bytes::new())
            .await?
            .0
        {
            Reply::Ok => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    async fn flush(&self, h: &Handle, lock_owner: u64) -> Result<()> {
        let id = Self::file(h)?.id;
        let r = self
            .with_fh(h, |fh| Request::Flush { fh, lock_owner }, Bytes::new())
            .await;
        // Gone whether or not the brick heard: a new connection resets its locks to ours.
        self.held().drop_owner(id, lock_owner);
        match r?.0 {
            Reply::Ok => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    async fn release(&self, h: &Handle) -> Result<Option<Entry>> {
        let f = Self::file(h)?;
        let (gen, fh) = *f.fh.lock().unwrap_or_else(|p| p.into_inner());
        if gen != self.conn.generation() {
            return Ok(None); // the brick dropped it with the old connection
        }
        match self.call(Request::Release { fh }).await? {
            Reply::Ok => Ok(None),
            Reply::Entry(e) => Ok(Some(e)),
            r => Err(unexpected(r)),
        }
    }

    async fn fallocate(&self, h: &Handle, mode: u32, offset: u64, len: u64) -> Result<()> {
        match self
            .with_fh(
                h,
                |fh| Request::Fallocate {
                    fh,
                    mode,
                    offset,
                    len,
                },
                Bytes::new(),
            )
            .await?
            .0
        {
            Reply::Ok => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    async fn statfs(&self) -> Result<StatFs> {
        match self.call(Request::StatFs).await? {
            Reply::StatFs(s) => Ok(s),
            r => Err(unexpected(r)),
        }
    }

    async fn getxattr(&self, id: FileId, name: &[u8]) -> Result<Vec<u8>> {
        match self
            .call(Request::GetXattr {
                id,
                name: name.to_vec(),
            })
            .await?
        {
            Reply::Xattr(v) => Ok(v),
            r => Err(unexpected(r)),
        }
    }

    async fn setxattr(&self, id: FileId, name: &[u8], value: &[u8], flags: u32) -> Result<()> {
        self.ok(Request::SetXattr {
            id,
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
        })
        .await
    }

    async fn listxattr(&self, id: FileId) -> Result<Vec<Vec<u8>>> {
        match self.call(Request::ListXattr { id }).await? {
            Reply::XattrNames(n) => Ok(n),
            r => Err(unexpected(r)),
        }
    }

    async fn removexattr(&self, id: FileId, name: &[u8]) -> Result<()> {
        self.ok(Request::RemoveXattr {
            id,
            name: name.to_vec(),
        })
        .await
    }

    async fn xattr_add(&self, id: FileId, deltas: &[(String, i64)]) -> Result<()> {
        match self
            .call(Request::XattrAdd {
                id,
                deltas: deltas.to_vec(),
            })
            .await?
        {
            Reply::Counters(_) => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    async fn set_meta(&self, id: FileId, meta: &[(String, Option<Vec<u8>>)]) -> Result<()> {
        self.ok(Request::SetMeta {
            id,
            meta: meta.to_vec(),
        })
        .await
    }

    async fn getlk(&self, id: FileId, lock: &Lock) -> Result<Lock> {
        match self.call(Request::GetLk { id, lock: *lock }).await? {
            Reply::Lock(l) => Ok(l),
            r => Err(unexpected(r)),
        }
    }

    async fn setlk(&self, id: FileId, lock: &Lock, wait: bool) -> Result<()> {
        let r = self
            .ok(Request::SetLk {
                id,
                lock: *lock,
                wait,
            })
            .await;
        // An unlock counts whether or not the brick heard (as for a flush).
        if r.is_ok() || lock.kind == proto::LockKind::Unlock {
            self.held().apply(id, lock);
        }
        r
    }

    async fn heal_begin(&self, id: FileId, guard: bool) -> Result<()> {
        self.ok(Request::HealBegin { id, guard }).await
    }

    async fn heal_end(&self, id: FileId, guard: bool) -> Result<bool> {
        match self.call(Request::HealEnd { id, guard }).await? {
            Reply::Changed(c) => Ok(c),
            r => Err(unexpected(r)),
        }
    }

    async fn dir_parent(&self, id: FileId) -> Result<(FileId, Vec<u8>)> {
        match self.call(Request::DirParent { id }).await? {
            Reply::Parent { parent, name } => Ok((parent, name)),
            r => Err(unexpected(r)),
        }
    }

    async fn list_pending(&self, after: Option<FileId>, max: u32) -> Result<Vec<FileId>> {
        match self.call(Request::ListPending { after, max }).await? {
            Reply::Ids(ids) => Ok(ids),
            r => Err(unexpected(r)),
        }
    }

    fn is_up(&self) -> bool {
        self.conn.is_up()
    }

    async fn order(&self, id: FileId, take: bool) -> Result<()> {
        self.ok(Request::Order { id, take }).await
    }

    fn generation(&self) -> u64 {
        self.conn.generation()
    }

    async fn caught_up(&self) -> bool {
        self.conn.caught_up().await
    }
}
