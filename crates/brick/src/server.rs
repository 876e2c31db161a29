//! The brick's network face: a [`proto::service::Service`] answering brick requests. File
//! handles and locks belong to the connection and are released when it goes away.
//!
//! The brick also remembers which objects each client was told about, and when another
//! client changes one, sends it a [`Notice`]: clients can then cache attributes and entries
//! for long and still see every change at once (see `crate::interest`).

use crate::heal::{Heals, Touched};
use crate::health::HealthCheck;
use crate::interest::{Effect, Interest};
use crate::locks::LockTable;
use crate::order::{Orders, Take};
use crate::readahead::Stride;
use crate::sessions::Sessions;
use crate::store::{OpenFile, Store};
use crate::writeback::{self, Written};
use bytes::Bytes;
use proto::auth::{ClusterKey, Peer};
use proto::msg::{Fh, Notice, Reply, Request, Response, NOTICE_ID};
use proto::outbox::{Body, Outbox};
use proto::service::{Answer, Handled, Lane, Service};
use proto::transport::Via;
use proto::{Entry, Errno, LockKind};
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Writes up to this size are done in the reader (see [`BrickServer::quick`]).
const QUICK_WRITE: usize = 64 * 1024;
/// Handles one connection may hold open.
const MAX_HANDLES: usize = 65536;
/// Most objects one `ListPending` answers with.
const MAX_PENDING_LIST: usize = 4096;

/// What a brick server needs besides its store.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub key: ClusterKey,
    /// How long the locks of a client session outlive its connection, waiting for the
    /// client to come back on a new one.
    pub linger: Duration,
    /// After a restart that may have lost clients' locks, how long only their reclaims
    /// are granted.
    pub grace: Duration,
    /// How the disk is watched (see `crate::health`).
    pub health: HealthCheck,
}

impl ServerConfig {
    pub fn new(key: ClusterKey) -> ServerConfig {
        ServerConfig {
            key,
            linger: LINGER,
            grace: LINGER + Duration::from_secs(5),
            health: HealthCheck::default(),
        }
    }
}

/// Present while locks may be held: a brick that starts and finds it may have lost some.
const LOCKS_MARKER: &str = "locks";

/// See [`ServerConfig::linger`]: longer than a client takes to notice a dead link (5 s) and
/// reconnect.
pub const LINGER: Duration = Duration::from_secs(10);

pub struct BrickServer {
    store: Arc<Store>,
    locks: Arc<LockTable>,
    sessions: Sessions,
    config: ServerConfig,
    next_conn: AtomicU64,
    /// Connections that take notices.
    listeners: Mutex<HashMap<u64, Arc<Conn>>>,
    heals: Arc<Heals>,
    /// Which connection may change each replicated file's data (see `crate::order`).
    orders: Orders,
    /// The locks marker is in place.
    marked: std::sync::atomic::AtomicBool,
    /// The disk answers (see `crate::health`); connections are turned away while not.
    healthy: Arc<std::sync::atomic::AtomicBool>,
    /// Threads that serve local clients' lanes, one per CPU.
    cores: crate::cores::Cores,
}

/// An open handle; closing it (drop) tells the store, which may remove an unlinked file.
struct Handle {
    store: Arc<Store>,
    file: Option<OpenFile>,
    /// The pattern of its reads, to read ahead of a strided reader.
    stride: Mutex<Stride>,
    /// The markers writes through this handle added, and the heal epoch then
    /// (`Heals::epoch`): until it moves, they are still counted, and need not be added again.
    marks: Mutex<(u64, Vec<String>)>,
    /// What was written through it since it last started a write-out.
    written: Mutex<Written>,
    /// A write-out it started is still running (see [`Handle::wrote`]).
    writing_back: Arc<std::sync::atomic::AtomicBool>,
}

impl Handle {
    fn file(&self) -> &OpenFile {
        // Only taken in drop.
        self.file.as_ref().expect("handle used after close")
    }

    /// After `n` bytes were written at `offset`: once enough was written, starts writing it
    /// out (see [`crate::writeback`]), on the blocking pool and one at a time per handle (while
    /// one runs, the writes go on counting: a disk that falls behind gets larger spans rather
    /// than more threads). Called from a runtime context.
    fn wrote(self: &Arc<Self>, offset: u64, n: u32) {
        let span = {
            let mut written = lock(&self.written);
            if !written.add(offset, n as u64) || self.writing_back.swap(true, Ordering::AcqRel) {
                return;
            }
            written.take()
        };
        let busy = self.writing_back.clone();
        // On a descriptor of its own: holding the handle would keep it open after its
        // release was answered (a heal would find the file busy).
        let Some((fd, (from, len))) = span.and_then(|s| Some((self.file().fd.try_clone().ok()?, s))) else {
            busy.store(false, Ordering::Release);
            return;
        };
        tokio::task::spawn_blocking(move || {
            writeback::start(fd.as_fd(), from, len);
            busy.store(false, Ordering::Release);
        });
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            self.store.close(f);
        }
    }
}

pub struct Conn {
    id: u64,
    handles: Mutex<HashMap<Fh, Arc<Handle>>>,
    next_fh: AtomicU64,
    closed: watch::Receiver<bool>,
    out: Arc<Outbox>,
    /// The peer's protocol version: notices and attributes on release from 2 on.
    version: u16,
    interest: Interest,
    /// Heal guards and watches this connection holds: (object, guard).
    heals: Mutex<Vec<(proto::FileId, bool)>>,
    /// The client session it belongs to.
    session: Mutex<Option<u128>>,
}

impl Conn {
    fn handle(&self, fh: Fh) -> Result<Arc<Handle>, Errno> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    /// How many of its handles are open on `id`.
    fn opens(&self, id: proto::FileId) -> u32 {
        opens_in(&self.handles.lock().unwrap_or_else(|p| p.into_inner()), id)
    }

    fn add(&self, store: &Arc<Store>, file: OpenFile) -> Result<Fh, Errno> {
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        // A lane may still read requests after its session's connection closed and took
        // its handles (under this lock, after `closed` turned true).
        let refused = if handles.len() >= MAX_HANDLES {
            Some(Errno::EMFILE)
        } else {
            self.closed.borrow().then_some(Errno::ECONNRESET)
        };
        if let Some(e) = refused {
            // Closed as a handle would be, outside the lock.
            drop(handles);
            store.close(file);
            return Err(e);
        }
        let h = Arc::new(Handle {
            store: store.clone(),
            file: Some(file),
            stride: Mutex::new(Stride::default()),
            marks: Mutex::new((0, Vec::new())),
            written: Mutex::new(Written::default()),
            writing_back: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        });
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        handles.insert(fh, h);
        Ok(fh)
    }
}

/// How many of `handles` are open on `id`.
fn opens_in(handles: &HashMap<Fh, Arc<Handle>>, id: proto::FileId) -> u32 {
    handles.values().filter(|h| h.file().id == id).count() as u32
}

/// Where a request goes: answered at once, or handed to a task of its own.
enum Quick {
    Done(Response),
    Slow(Request),
}

impl BrickServer {
    pub fn new(store: Store, config: ServerConfig) -> Arc<BrickServer> {
        let locks = Arc::new(LockTable::default());
        let marker = store.root().join(crate::index::META_DIR).join(LOCKS_MARKER);
        let marked = marker.exists();
        if marked {
            tracing::info!(
                "this brick stopped while locks may have been held: for {:?} only their holders get locks",
                config.grace
            );
            locks.start_grace(config.grace);
        }
        let sessions = Sessions::new(locks.clone(), config.linger);
        Arc::new(BrickServer {
            marked: std::sync::atomic::AtomicBool::new(marked),
            healthy: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            store: Arc::new(store),
            locks,
            sessions,
            config,
            next_conn: AtomicU64::new(1),
            listeners: Mutex::new(HashMap::new()),
            heals: Arc::new(Heals::default()),
            orders: Orders::default(),
            cores: Default::default(),
        })
    }

    /// Tells the connection `holder` that others wait for the write order of `id`.
    fn tell_holder(&self, id: proto::FileId, holder: u64) {
        let conn = lock(&self.listeners).get(&holder).cloned();
        if let Some(conn) = conn {
            send_notice(&conn, &Notice::Yield(vec![id]));
        }
    }

    /// The outcome `r` of `conn`'s take of the order of `id`. Granted to a connection that
    /// ended meanwhile (its close let go of what it held before this took): given back, or
    /// nobody would ever get it.
    fn granted(&self, conn: &Conn, id: proto::FileId, r: Response) -> Response {
        if r.is_ok() && *conn.closed.borrow() {
            self.give_order(id, conn.id);
            return Err(Errno::ECONNRESET);
        }
        r
    }

    /// `conn` gives up the write order of `id`; its next holder hears if others wait.
    fn give_order(&self, id: proto::FileId, conn: u64) {
        if let Some(holder) = self.orders.give(id, conn) {
            self.tell_holder(id, holder);
        }
    }

    fn others_listen(&self, conn: &Conn) -> bool {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .any(|&id| id != conn.id)
    }

    /// After a request: what its reply showed the client, and who else must hear of what it
    /// changed.
    fn settle(&self, conn: &Conn, effect: Effect, resp: &Response) {
        let Ok(reply) = resp else { return };
        if conn.version >= 2 {
            let dropped = conn
                .interest
                .learn(effect.shown.iter().copied().chain(shown(reply)));
            // In pieces that stay well inside a frame's header bound.
            for ids in dropped.chunks(8192) {
                let forget = ids.iter().map(|&id| proto::msg::Change { id, name: None });
                send_notice(conn, &Notice::Changed(forget.collect()));
            }
        }
        if effect.changes.is_empty() {
            return;
        }
        let others: Vec<Arc<Conn>> = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|c| c.id != conn.id)
            .cloned()
            .collect();
        for other in others {
            let hits = other.interest.hits(&effect.changes);
            if !hits.is_empty() {
                send_notice(&other, &Notice::Changed(hits));
            }
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Serves connections until the listener fails or `shutdown` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let key = self.config.key.clone();
        let me = Arc::downgrade(&self);
        let stop_watch = Arc::new(std::sync::atomic::AtomicBool::new(false));
        crate::health::watch(
            self.store.root().to_path_buf(),
            self.config.health,
            self.healthy.clone(),
            move || {
                if let Some(server) = me.upgrade() {
                    server.end_connections();
                }
            },
            stop_watch.clone(),
        )?;
        let served = proto::service::serve(self.clone(), listener, key, shutdown).await;
        stop_watch.store(true, Ordering::SeqCst);
        // A brick that stops holding no lock has none to give back when it starts again.
        if !self.locks.any() {
            let _ = std::fs::remove_file(self.marker());
        }
        served
    }

    /// Ends every client connection (the disk stopped answering).
    fn end_connections(&self) {
        let conns: Vec<Arc<Conn>> = lock(&self.listeners).values().cloned().collect();
        for c in conns {
            c.out.close();
        }
    }

    fn marker(&self) -> std::path::PathBuf {
        self.store.root().join(crate::index::META_DIR).join(LOCKS_MARKER)
    }

    /// A lock was granted: from now on, a brick that starts again may have lost locks.
    fn locked(&self) {
        if !self.marked.swap(true, Ordering::SeqCst) {
            if let Err(e) = std::fs::write(self.marker(), b"") {
                tracing::warn!("cannot note that locks are held: {e}");
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, Errno> + Send + 'static,
    ) -> Result<T, Errno> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .unwrap_or(Err(Errno::EIO))
    }

    /// Runs a request that is quick enough to answer in the connection's reader, without a
    /// hop to the blocking pool: on a busy machine each thread hand-off costs as much as the
    /// work. Anything that may wait on the disk (data, fsync, truncation, listing, freeing a
    /// file's blocks) or on another client (blocking locks) is handed back as slow.
    fn quick(&self, conn: &Conn, req: Request, data: &Bytes) -> Quick {
        let s = &*self.store;
        Quick::Done(match req {
            // Small writes land in the page cache at once.
            Request::Write { fh, offset } if data.len() <= QUICK_WRITE => conn
                .handle(fh)
                .and_then(|h| {
                    let n = s.write(h.file(), offset, data)?;
                    h.wrote(offset, n);
                    Ok(n)
                })
                .map(|size| Reply::Written { size }),
            Request::WriteMarked { fh, offset, mark } if data.len() <= QUICK_WRITE => conn
                .handle(fh)
                .and_then(|h| {
                    let n = write_marked(s, &self.heals, &h, offset, data, &mark)?;
                    h.wrote(offset, n);
                    Ok(n)
                })
                .map(|size| Reply::Written { size }),
            Request::Ping => Ok(Reply::Ok),
            // A directory's from the index; a file's reads a directory (see below).
            Request::DirParent { id } if !s.is_file(id) => s
                .dir_parent(id)
                .map(|(parent, name)| Reply::Parent { parent, name }),
            Request::Lookup { parent, name } => s.lookup(parent, &name).map(Reply::Entry),
            Request::GetAttr { id } => s.getattr(id).map(Reply::Entry),
            Request::SetAttr { id, fh: None, set } if set.size.is_none() => {
                s.setattr(id, None, &set).map(Reply::Entry)
            }
            Request::Create {
                parent,
                name,
                node,
                symlink_target,
                open,
            } => match s.create(parent, &name, &node, symlink_target.as_deref(), open) {
                Ok((entry, file)) => match file.map(|f| conn.add(&self.store, f)).transpose() {
                    Ok(fh) => Ok(Reply::Created { entry, fh }),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            Request::Rmdir { parent, name } => s.rmdir(parent, &name).map(|_| Reply::Ok),
            Request::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
            } => s
                .rename(parent, &name, new_parent, &new_name, flags)
                .map(|_| Reply::Ok),
            Request::Link {
                id,
                new_parent,
                new_name,
            } => s.link(id, new_parent, &new_name).map(Reply::Entry),
            Request::ReadLink { id } => s.readlink(id).map(Reply::Link),
            Request::Open { id, flags } if flags as i32 & libc::O_TRUNC == 0 => s
                .open(id, flags)
                .and_then(|f| conn.add(&self.store, f))
                .map(|fh| Reply::Opened { fh }),
            Request::Flush { fh, lock_owner } => conn.handle(fh).map(|h| {
                self.locks.release_owner(h.file().id, conn.id, lock_owner);
                Reply::Ok
            }),
            Request::StatFs => s.statfs().map(Reply::StatFs),
            // Removing or closing a small file frees next to nothing: done here too.
            Request::Unlink { parent, name } if s.cheap_to_remove(parent, &name) => {
                s.unlink(parent, &name).map(|_| Reply::Ok)
            }
            Request::UnlinkUnless { parent, name, keep } if s.cheap_to_remove(parent, &name) => {
                s.unlink_unless(parent, &name, Some(&keep)).map(unlinked)
            }
            Request::Release { fh } => {
                let h = conn.handle(fh);
                // A write order goes with the connection's last handle on the file, here in
                // the reader: before anything the connection sends next (a take) is read.
                // Under the handles' lock, as the session's lanes open handles too: an open
                // and then a take on another lane either count here or come after the give.
                if let Ok(id) = h.as_ref().map(|h| h.file().id) {
                    let handles = lock(&conn.handles);
                    if opens_in(&handles, id) == 1 && self.orders.holder(id) == Some(conn.id) {
                        self.give_order(id, conn.id);
                    }
                }
                match h.and_then(|h| s.closing(h.file())) {
                    Ok((entry, true)) => self.release(conn, fh, Some(entry)),
                    _ => return Quick::Slow(Request::Release { fh }),
                }
            }
            Request::GetXattr { id, name } => s.getxattr(id, &name).map(Reply::Xattr),
            Request::SetXattr {
                id,
                name,
                value,
                flags,
            } => s.setxattr(id, &name, &value, flags).map(|_| Reply::Ok),
            Request::ListXattr { id } => s.listxattr(id).map(Reply::XattrNames),
            Request::RemoveXattr { id, name } => s.removexattr(id, &name).map(|_| Reply::Ok),
            Request::XattrAdd { id, deltas } => {
                if deltas.iter().any(|(_, n)| *n < 0) {
                    self.heals.markers_taken_off();
                }
                s.xattr_add(id, &deltas).map(Reply::Counters)
            }
            Request::SetMeta { id, meta } => s.set_meta(id, &meta).map(|_| Reply::Ok),
            Request::GetLk { id, lock } => s
                .kind(id)
                .map(|_| Reply::Lock(self.locks.test(id, conn.id, &lock))),
            Request::Session { token } => {
                *lock(&conn.session) = Some(token);
                if let Some(old) = self.sessions.join(conn.id, token) {
                    let stale = lock(&self.listeners).get(&old).cloned();
                    if let Some(stale) = stale {
                        stale.out.close();
                    }
                }
                Ok(Reply::Ok)
            }
            Request::HealEnd { id, guard } => {
                let held = {
                    let mut heals = lock(&conn.heals);
                    let pos = heals.iter().position(|h| *h == (id, guard));
                    pos.map(|p| heals.swap_remove(p))
                };
                // One that was never begun (or was already ended) vouches for nothing.
                Ok(Reply::Changed(match held {
                    Some(_) => self.heals.end(id, conn.id, guard),
                    None => true,
                }))
            }
            // An unlock goes through even if the file is gone meanwhile: its locks would
            // outlive it (and block whoever locks the same id again, such as a directory
            // made again with its id).
            Request::SetLk {
                id,
                lock,
                wait: false,
            } => match lock.kind {
                LockKind::Unlock => Ok(()),
                _ => s.kind(id).map(|_| ()),
            }
            .and_then(|_| self.locks.set(id, conn.id, &lock))
            .map(|_| {
                self.locked();
                Reply::Ok
            }),
            Request::Reclaim { locks, reset } => {
                let refused = self.locks.reclaim(conn.id, &locks, reset);
                if locks.len() > refused.len() {
                    self.locked();
                }
                for (id, l) in &refused {
                    tracing::warn!(%id, owner = l.owner, "a client's lock could not be taken back: it is lost");
                }
                match refused.is_empty() {
                    true => Ok(Reply::Ok),
                    false => Err(Errno::EAGAIN),
                }
            }
            Request::Order { id, take: false } => {
                self.give_order(id, conn.id);
                Ok(Reply::Ok)
            }
            // (Read on a lane, `proto::lane`, it may come after the session closed.)
            Request::Order { id, take: true } if self.orders.try_take(id, conn.id) => {
                self.granted(conn, id, Ok(Reply::Ok))
            }
            slow => return Quick::Slow(slow),
        })
    }

    /// Closes a handle. The file's attributes as it is closed (`entry` if just read) let the
    /// client answer the next stat itself.
    fn release(&self, conn: &Conn, fh: Fh, entry: Option<Entry>) -> Response {
        let h = conn.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&fh);
        let h = h.ok_or(Errno::EBADF)?;
        let entry = match conn.version >= 2 {
            true => entry.or_else(|| self.store.closing(h.file()).ok().map(|(e, _)| e)),
            false => None,
        };
        drop(h);
        Ok(entry.map_or(Reply::Ok, Reply::Entry))
    }

    /// Requests that may wait: run on the blocking pool (or wait for a lock) in a task of
    /// their own, so that the connection's other requests go on meanwhile.
    async fn slow(self: &Arc<Self>, conn: &Arc<Conn>, req: Request, data: Bytes) -> Answer<Reply> {
        let handle = |fh| conn.handle(fh);
        let r = match req {
            Request::SetAttr { id, fh, set } => match fh.map(handle).transpose() {
                Ok(h) => self
                    .blocking(move |s| s.setattr(id, h.as_ref().map(|h| &h.file().fd), &set))
                    .await
                    .map(Reply::Entry),
                Err(e) => Err(e),
            },
            Request::Unlink { parent, name } => self
                .blocking(move |s| s.unlink(parent, &name))
                .await
                .map(|_| Reply::Ok),
            Request::UnlinkUnless { parent, name, keep } => self
                .blocking(move |s| s.unlink_unless(parent, &name, Some(&keep)))
                .await
                .map(unlinked),
            Request::ReadDir {
                id,
                cookie,
                max,
                plus,
            } => self
                .blocking(move |s| s.readdir(id, cookie, max, plus))
                .await
                .map(|(entries, eof)| Reply::Dir { entries, eof }),
            Request::Open { id, flags } => match self.blocking(move |s| s.open(id, flags)).await {
                Ok(f) => conn.add(&self.store, f).map(|fh| Reply::Opened { fh }),
                Err(e) => Err(e),
            },
            Request::Read { fh, offset, size } => {
                return match handle(fh) {
                    Ok(h) => {
                        // Noted in the order the reads came in, before they run in parallel.
                        let ahead = lock(&h.stride).next(offset, size as u64);
                        let read = self.blocking(move |s| {
                            let r = s.read_body(h.file(), offset, size);
                            if let Some(a) = ahead {
                                s.read_ahead(h.file(), a);
                            }
                            r
                        });
                        match read.await {
                            Ok(body) => (Ok(Reply::Data), body),
                            Err(e) => (Err(e), Body::default()),
                        }
                    }
                    Err(e) => (Err(e), Body::default()),
                };
            }
            Request::ReadV { fh, ranges } => {
                let total: u64 = ranges.iter().map(|r| r.1 as u64).sum();
                if !proto::msg::ranges_fit(ranges.len(), total) {
                    return (Err(Errno::EINVAL), Body::default());
                }
                return match handle(fh) {
                    Ok(h) => {
                        let ahead: Vec<_> = {
                            let mut stride = lock(&h.stride);
                            ranges
                                .iter()
                                .filter_map(|&(offset, size)| stride.next(offset, size as u64))
                                .collect()
                        };
                        let read = self.blocking(move |s| {
                            let r = s.read_ranges(h.file(), &ranges);
                            for a in ahead {
                                s.read_ahead(h.file(), a);
                            }
                            r
                        });
                        match read.await {
                            Ok((body, lens)) => (Ok(Reply::DataV(lens)), body),
                            Err(e) => (Err(e), Body::default()),
                        }
                    }
                    Err(e) => (Err(e), Body::default()),
                };
            }
            Request::WriteV { fh, ranges } => {
                let total: u64 = ranges.iter().map(|r| r.1 as u64).sum();
                if !proto::msg::ranges_fit(ranges.len(), total) || total != data.len() as u64 {
                    return (Err(Errno::EINVAL), Body::default());
                }
                match handle(fh) {
                    Ok(h) => self
                        .blocking(move |s| write_ranges(s, &h, &ranges, &data))
                        .await
                        .map(Reply::WrittenV),
                    Err(e) => Err(e),
                }
            }
            // (The handle is dropped on the blocking pool: a last drop may free a big orphan.)
            Request::Write { fh, offset } => match handle(fh) {
                Ok(h) => self
                    .blocking(move |s| {
                        let n = s.write(h.file(), offset, &data)?;
                        h.wrote(offset, n);
                        Ok(n)
                    })
                    .await
                    .map(|size| Reply::Written { size }),
                Err(e) => Err(e),
            },
            Request::WriteMarked { fh, offset, mark } => match handle(fh) {
                Ok(h) => {
                    let heals = self.heals.clone();
                    self.blocking(move |s| {
                        let n = write_marked(s, &heals, &h, offset, &data, &mark)?;
                        h.wrote(offset, n);
                        Ok(n)
                    })
                    .await
                    .map(|size| Reply::Written { size })
                }
                Err(e) => Err(e),
            },
            Request::Fsync { fh, datasync } => match handle(fh) {
                Ok(h) => self
                    .blocking(move |s| s.fsync(h.file(), datasync))
                    .await
                    .map(|_| Reply::Ok),
                Err(e) => Err(e),
            },
            Request::Release { fh } => {
                // Closing may unlink a big orphan: keep that off the reactor.
                let (server, conn) = (self.clone(), conn.clone());
                tokio::task::spawn_blocking(move || server.release(&conn, fh, None))
                    .await
                    .unwrap_or(Err(Errno::EIO))
            }
            Request::Fallocate {
                fh,
                mode,
                offset,
                len,
            } => match handle(fh) {
                Ok(h) => self
                    .blocking(move |s| s.fallocate(h.file(), mode, offset, len))
                    .await
                    .map(|_| Reply::Ok),
                Err(e) => Err(e),
            },
            Request::SetLk { id, lock, wait: true } => match self.blocking(move |s| s.kind(id)).await {
                Ok(_) => {
                    let mut closed = conn.closed.clone();
                    tokio::select! {
                        r = self.locks.set_wait(id, conn.id, &lock) => r.map(|_| {
                            self.locked();
                            Reply::Ok
                        }),
                        _ = closed.wait_for(|c| *c) => Err(Errno::ECONNRESET),
                    }
                }
                Err(e) => Err(e),
            },
            Request::HealBegin { id, guard } => {
                if lock(&conn.heals).contains(&(id, guard)) {
                    return (Err(Errno::EBUSY), Body::default());
                }
                let r = match self.blocking(move |s| s.kind(id)).await {
                    Ok(_) if guard => {
                        // Its own handles do not count: a client heals in place the file
                        // it has open (and orders its own writes against that).
                        let (store, me) = (self.store.clone(), conn.clone());
                        self.heals
                            .guard(id, conn.id, || store.open_count(id) > me.opens(id))
                            .await
                    }
                    Ok(_) => {
                        self.heals.watch(id, conn.id);
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                if r.is_ok() {
                    lock(&conn.heals).push((id, guard));
                    // A connection that went away meanwhile leaves nothing behind.
                    if *conn.closed.borrow() {
                        self.end_heals(conn);
                    }
                }
                r.map(|_| Reply::Ok)
            }
            Request::Order { id, take: true } => {
                let r = match self.orders.take(id, conn.id) {
                    Take::Granted => Ok(Reply::Ok),
                    Take::Wait { granted, tell } => {
                        if let Some(holder) = tell {
                            self.tell_holder(id, holder);
                        }
                        let mut closed = conn.closed.clone();
                        tokio::select! {
                            r = granted => r.map(|_| Reply::Ok).map_err(|_| Errno::EAGAIN),
                            _ = closed.wait_for(|c| *c) => Err(Errno::ECONNRESET),
                        }
                    }
                };
                self.granted(conn, id, r)
            }
            Request::DirParent { id } => self
                .blocking(move |s| s.dir_parent(id))
                .await
                .map(|(parent, name)| Reply::Parent { parent, name }),
            Request::PathsOf { ids } if ids.len() <= MAX_PENDING_LIST => self
                .blocking(move |s| Ok(s.paths_of(&ids, crate::paths::Budget::default())))
                .await
                .map(Reply::Paths),
            Request::PathsOf { .. } => Err(Errno::EINVAL),
            Request::ListPending { after, max } => {
                let max = (max as usize).clamp(1, MAX_PENDING_LIST);
                self.blocking(move |s| s.pending(after, max))
                    .await
                    .map(Reply::Ids)
            }
            other => match self.quick(conn, other, &data) {
                Quick::Done(r) => r,
                Quick::Slow(r) => {
                    tracing::error!("request {} has no handler", r.name());
                    Err(Errno::ENOSYS)
                }
            },
        };
        (r, Body::default())
    }
}

impl Service for BrickServer {
    type Req = Request;
    type Resp = Reply;
    type Session = Conn;

    fn label(&self) -> String {
        format!("brick {}", self.store.root().display())
    }

    fn admits(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    fn open(&self, peer: &Peer, closed: watch::Receiver<bool>, out: Arc<Outbox>) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            closed,
            out,
            version: peer.version,
            interest: Interest::default(),
            heals: Mutex::new(Vec::new()),
            session: Mutex::new(None),
        });
        self.locks.open_conn(conn.id);
        if conn.version >= 2 {
            self.listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(conn.id, conn.clone());
        }
        conn
    }

    fn handle(self: &Arc<Self>, conn: &Arc<Conn>, req: Request, data: Bytes) -> Handled<Reply> {
        let (req, at_once) = match req {
            Request::OpenNow { id, flags } => (Request::Open { id, flags }, true),
            req => (req, false),
        };
        let touched = Touched::of(&req, |fh| conn.handle(fh).ok().map(|h| h.file().id));
        let running = match touched.is_empty() {
            true => None,
            false => match self.heals.try_enter(touched, conn.id) {
                Some(r) => Some(r),
                None if at_once => return Handled::Now((Err(Errno::EBUSY), Body::default())),
                None => {
                    // Another client heals what this changes: it waits for the heal to end.
                    let (server, conn) = (self.clone(), conn.clone());
                    return Handled::Later(Box::pin(async move {
                        let running = server.heals.enter(touched, conn.id).await;
                        let answer = server.run(&conn, req, data).await;
                        drop(running);
                        answer
                    }));
                }
            },
        };
        match self.dispatch(conn, req, data) {
            Handled::Now(answer) => Handled::Now(answer),
            Handled::Later(fut) => Handled::Later(Box::pin(async move {
                let answer = fut.await;
                drop(running);
                answer
            })),
        }
    }

    fn close(&self, conn: &Conn) {
        // Handles close as the last request holding them finishes (off the runtime: a last
        // close may free a big orphan); locks go now, or after a while if the client may
        // come back for them.
        let handles = std::mem::take(&mut *conn.handles.lock().unwrap_or_else(|p| p.into_inner()));
        tokio::task::spawn_blocking(move || drop(handles));
        self.sessions.leave(conn.id, *lock(&conn.session));
        self.end_heals(conn);
        for (id, holder) in self.orders.end(conn.id) {
            self.tell_holder(id, holder);
        }
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&conn.id);
    }

    /// A lane joins the connection that has its session now, if that is open, and is
    /// served on its CPU if it comes from this host (a CPU's number means nothing on
    /// another).
    fn lane(&self, peer: &Peer, via: Via) -> Option<Lane<Conn>> {
        let (token, cpu) = proto::lane::parse(&peer.name)?;
        let id = self.sessions.conn_of(token)?;
        let conn = lock(&self.listeners).get(&id).cloned()?;
        if *conn.closed.borrow() {
            return None;
        }
        Some(Lane {
            ended: conn.closed.clone(),
            home: matches!(via, Via::Local).then(|| self.cores.home(cpu)).flatten(),
            session: conn,
        })
    }

    fn undecodable(&self, header: &[u8]) -> Errno {
        match proto::msg::op_index(header) {
            Some(op) if op >= proto::msg::REQUEST_OPS => Errno::ENOSYS,
            _ => Errno::EBADMSG,
        }
    }
}

impl BrickServer {
    /// Runs a request that may go ahead now.
    async fn run(self: &Arc<Self>, conn: &Arc<Conn>, req: Request, data: Bytes) -> Answer<Reply> {
        match self.dispatch(conn, req, data) {
            Handled::Now(answer) => answer,
            Handled::Later(fut) => fut.await,
        }
    }

    fn end_heals(&self, conn: &Conn) {
        let held = std::mem::take(&mut *lock(&conn.heals));
        for (id, guard) in held {
            self.heals.end(id, conn.id, guard);
        }
    }

    fn dispatch(self: &Arc<Self>, conn: &Arc<Conn>, req: Request, data: Bytes) -> Handled<Reply> {
        let mut effect = Effect::of(&req, |fh| conn.handle(fh).ok().map(|h| h.file().id));
        // What a removed or replaced name named loses a link: clients caching it must hear.
        if let Some((dir, name)) = crate::interest::doomed(&req).filter(|_| self.others_listen(conn)) {
            if let Ok(e) = self.store.lookup(dir, name) {
                effect.changes.push(proto::msg::Change {
                    id: e.attr.id,
                    name: None,
                });
            }
        }
        match self.quick(conn, req, &data) {
            Quick::Done(resp) => {
                self.settle(conn, effect, &resp);
                Handled::Now((resp, Body::default()))
            }
            Quick::Slow(req) => {
                let (server, conn) = (self.clone(), conn.clone());
                Handled::Later(Box::pin(async move {
                    let answer = server.slow(&conn, req, data).await;
                    server.settle(&conn, effect, &answer.0);
                    answer
                }))
            }
        }
    }
}

/// Writes each range's piece of `data` in turn, stopping after one that falls short (see
/// `Request::WriteV`). An error only if nothing was written.
fn write_ranges(s: &Store, h: &Arc<Handle>, ranges: &[(u64, u32)], data: &[u8]) -> Result<Vec<u32>, Errno> {
    let mut written = Vec::with_capacity(ranges.len());
    let mut at = 0usize;
    for &(offset, len) in ranges {
        let piece = &data[at..at + len as usize];
        at += len as usize;
        match s.write(h.file(), offset, piece) {
            Ok(n) => {
                h.wrote(offset, n);
                written.push(n);
                if n < len {
                    break;
                }
            }
            Err(e) if written.is_empty() => return Err(e),
            Err(e) => {
                tracing::debug!("write of ranges cut short: {e}");
                break;
            }
        }
    }
    Ok(written)
}

/// Writes, then adds the replication markers the write carries, unless writes through
/// the same handle added them since the last time a heal may have counted markers here:
/// while a copy is down, a marker per write would cost an xattr update per write. (A heal
/// reads the counts it clears after its watch here began, and a write that lands while it
/// watches keeps it from clearing them, so a marker added before can only be cleared
/// together with the data it stands for.)
fn write_marked(
    s: &Store,
    heals: &Heals,
    h: &Handle,
    offset: u64,
    data: &[u8],
    mark: &[(String, i64)],
) -> Result<u32, Errno> {
    let size = s.write(h.file(), offset, data)?;
    let epoch = heals.epoch();
    let mut done = lock(&h.marks);
    if done.0 != epoch {
        *done = (epoch, Vec::new());
    }
    let new: Vec<(String, i64)> = mark
        .iter()
        .filter(|(k, n)| *n <= 0 || !done.1.contains(k))
        .cloned()
        .collect();
    if !new.is_empty() {
        s.xattr_add(h.file().id, &new)?;
        done.1.extend(new.into_iter().map(|(k, _)| k));
    }
    Ok(size)
}

/// The reply to an `UnlinkUnless`: done, or the entry that was kept.
fn unlinked(kept: Option<proto::Entry>) -> Reply {
    kept.map_or(Reply::Ok, Reply::Entry)
}

/// The ids a reply tells the client about.
fn shown(reply: &Reply) -> Vec<proto::FileId> {
    match reply {
        Reply::Entry(e) | Reply::Created { entry: e, .. } => vec![e.attr.id],
        Reply::Dir { entries, .. } => entries
            .iter()
            .filter_map(|d| d.entry.as_ref().map(|e| e.attr.id))
            .collect(),
        _ => Vec::new(),
    }
}

/// Notice bytes that may wait for a client before it counts as not reading at all.
const MAX_NOTICE_BACKLOG: usize = 16 << 20;

fn send_notice(conn: &Conn, notice: &Notice) {
    // Notices are sent whatever the client asks; one that never reads must not make them
    // pile up here. Dropping one would leave it trusting stale caches: it is cut off
    // instead (it reconnects, and forgets everything on the loss).
    if conn.out.backlog() > MAX_NOTICE_BACKLOG {
        tracing::warn!(
            conn = conn.id,
            "client does not read its notices: closing its connection"
        );
        conn.out.close();
        return;
    }
    match proto::frame::encode_header(notice) {
        Ok(header) => {
            if let Err(e) = conn.out.send(NOTICE_ID, &header, &Bytes::new()) {
                tracing::debug!("notice not sent: {e}");
            }
        }
        Err(e) => tracing::error!("cannot encode a notice: {e}"),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
