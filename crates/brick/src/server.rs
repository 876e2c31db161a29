//! The brick's network face: authenticated connections carrying multiplexed requests.
//!
//! Each connection has a reader that decodes frames and starts one task per request (up to
//! a bound, which is the backpressure on a greedy client), and a writer that sends replies
//! as they complete, batching them into as few writes as the socket allows. File handles and
//! locks belong to the connection and are released when it goes away.

use crate::locks::LockTable;
use crate::store::{OpenFile, Store};
use bytes::Bytes;
use proto::auth::{self, ClusterKey};
use proto::frame::{self, FrameError};
use proto::msg::{Fh, Reply, Request, Response};
use proto::Errno;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

/// Requests one connection may have in progress at once.
const MAX_IN_FLIGHT: usize = 256;
/// Writes up to this size are done in the reader (see [`BrickServer::quick`]).
const QUICK_WRITE: usize = 64 * 1024;
/// Handles one connection may hold open.
const MAX_HANDLES: usize = 65536;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a brick server needs besides its store.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub key: ClusterKey,
}

pub struct BrickServer {
    store: Arc<Store>,
    locks: LockTable,
    config: ServerConfig,
    next_conn: AtomicU64,
}

/// An open handle; closing it (drop) tells the store, which may remove an unlinked file.
struct Handle {
    store: Arc<Store>,
    file: Option<OpenFile>,
}

impl Handle {
    fn file(&self) -> &OpenFile {
        // Only taken in drop.
        self.file.as_ref().expect("handle used after close")
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            self.store.close(f);
        }
    }
}

struct Conn {
    id: u64,
    peer: SocketAddr,
    handles: Mutex<HashMap<Fh, Arc<Handle>>>,
    next_fh: AtomicU64,
    closed: watch::Receiver<bool>,
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

    fn add(&self, store: &Arc<Store>, file: OpenFile) -> Result<Fh, Errno> {
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        let h = Arc::new(Handle {
            store: store.clone(),
            file: Some(file),
        });
        if handles.len() >= MAX_HANDLES {
            return Err(Errno::EMFILE);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        handles.insert(fh, h);
        Ok(fh)
    }
}

/// Where a request goes: answered at once, or handed to a task of its own.
enum Quick {
    Done(Response),
    Slow(Request),
}

struct Outgoing {
    id: u64,
    header: Vec<u8>,
    data: Bytes,
}

impl BrickServer {
    pub fn new(store: Store, config: ServerConfig) -> Arc<BrickServer> {
        Arc::new(BrickServer {
            store: Arc::new(store),
            locks: LockTable::default(),
            config,
            next_conn: AtomicU64::new(1),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Accepts connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) if is_transient_accept_error(&e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            tokio::spawn(self.clone().connection(stream, peer));
        }
    }

    async fn connection(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let who = match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            auth::server(&mut stream, &self.config.key),
        )
        .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::warn!(%peer, brick = %self.store.root().display(), "refused connection: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "refused connection: handshake timed out");
                return;
            }
        };
        let (closed_tx, closed_rx) = watch::channel(false);
        let conn = Arc::new(Conn {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            peer,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            closed: closed_rx,
        });
        tracing::debug!(%peer, role = %who.role, name = %who.name, conn = conn.id, "connected");
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::channel::<Outgoing>(MAX_IN_FLIGHT);
        let writer = tokio::spawn(write_loop(BufWriter::with_capacity(256 * 1024, wr), rx));
        let mut rd = BufReader::with_capacity(256 * 1024, rd);
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        loop {
            let frame = match frame::read_frame(&mut rd).await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(FrameError::Io(e)) => {
                    tracing::debug!(%peer, "connection lost: {e}");
                    break;
                }
                Err(e) => {
                    tracing::warn!(%peer, "closing connection after a bad frame: {e}");
                    break;
                }
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let req: Request = match frame.decode() {
                Ok(r) => r,
                Err(e) => {
                    // The frame boundary is intact, so the connection can go on: answer this
                    // request id with an error.
                    tracing::warn!(%peer, "undecodable request: {e}");
                    let errno = match proto::msg::op_index(&frame.header) {
                        Some(op) if op >= proto::msg::REQUEST_OPS => Errno::ENOSYS,
                        _ => Errno::EBADMSG,
                    };
                    let _ = tx.send(reply(frame.id, Err(errno), Bytes::new())).await;
                    continue;
                }
            };
            let req = match self.quick(&conn, req, &frame.data) {
                Quick::Done(resp) => {
                    let _ = tx.send(reply(frame.id, resp, Bytes::new())).await;
                    continue;
                }
                Quick::Slow(slow) => slow,
            };
            let (server, conn, tx) = (self.clone(), conn.clone(), tx.clone());
            tokio::spawn(async move {
                let (resp, data) = server.slow(&conn, req, frame.data).await;
                let _ = tx.send(reply(frame.id, resp, data)).await;
                drop(permit);
            });
        }
        let _ = closed_tx.send(true);
        drop(tx);
        let _ = writer.await;
        // Handles close as the last request holding them finishes; locks go now.
        conn.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.locks.release_conn(conn.id);
        tracing::debug!(peer = %conn.peer, conn = conn.id, "disconnected");
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
                .and_then(|h| s.write(h.file(), offset, data))
                .map(|size| Reply::Written { size }),
            Request::Ping => Ok(Reply::Ok),
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
            Request::GetXattr { id, name } => s.getxattr(id, &name).map(Reply::Xattr),
            Request::SetXattr {
                id,
                name,
                value,
                flags,
            } => s.setxattr(id, &name, &value, flags).map(|_| Reply::Ok),
            Request::ListXattr { id } => s.listxattr(id).map(Reply::XattrNames),
            Request::RemoveXattr { id, name } => s.removexattr(id, &name).map(|_| Reply::Ok),
            Request::XattrAdd { id, deltas } => s.xattr_add(id, &deltas).map(Reply::Counters),
            Request::SetMeta { id, meta } => s.set_meta(id, &meta).map(|_| Reply::Ok),
            Request::GetLk { id, lock } => s
                .kind(id)
                .map(|_| Reply::Lock(self.locks.test(id, conn.id, &lock))),
            Request::SetLk {
                id,
                lock,
                wait: false,
            } => s
                .kind(id)
                .and_then(|_| self.locks.set(id, conn.id, &lock))
                .map(|_| Reply::Ok),
            slow => return Quick::Slow(slow),
        })
    }

    /// Requests that may wait: run on the blocking pool (or wait for a lock) in a task of
    /// their own, so that the connection's other requests go on meanwhile.
    async fn slow(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        req: Request,
        data: Bytes,
    ) -> (Response, Bytes) {
        let none = Bytes::new();
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
                    Ok(h) => match self.blocking(move |s| s.read(h.file(), offset, size)).await {
                        Ok(buf) => (Ok(Reply::Data), Bytes::from(buf)),
                        Err(e) => (Err(e), none),
                    },
                    Err(e) => (Err(e), none),
                };
            }
            Request::Write { fh, offset } => match handle(fh) {
                Ok(h) => self
                    .blocking(move |s| s.write(h.file(), offset, &data))
                    .await
                    .map(|size| Reply::Written { size }),
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
                let h = conn
                    .handles
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&fh);
                match h {
                    // Closing may unlink an orphan: keep that off the reactor.
                    Some(h) => self
                        .blocking(move |_| {
                            drop(h);
                            Ok(())
                        })
                        .await
                        .map(|_| Reply::Ok),
                    None => Err(Errno::EBADF),
                }
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
            Request::SetLk {
                id,
                lock,
                wait: true,
            } => match self.blocking(move |s| s.kind(id)).await {
                Ok(_) => {
                    let mut closed = conn.closed.clone();
                    tokio::select! {
                        r = self.locks.set_wait(id, conn.id, &lock) => r.map(|_| Reply::Ok),
                        _ = closed.wait_for(|c| *c) => Err(Errno::ECONNRESET),
                    }
                }
                Err(e) => Err(e),
            },
            other => match self.quick(conn, other, &data) {
                Quick::Done(r) => r,
                Quick::Slow(r) => {
                    tracing::error!("request {} has no handler", r.name());
                    Err(Errno::ENOSYS)
                }
            },
        };
        (r, none)
    }
}

fn reply(id: u64, resp: Response, data: Bytes) -> Outgoing {
    let header = frame::encode_header(&resp).unwrap_or_else(|e| {
        tracing::error!("cannot encode a reply: {e}");
        frame::encode_header(&Response::Err(Errno::EIO)).unwrap_or_default()
    });
    Outgoing { id, header, data }
}

async fn write_loop<W: tokio::io::AsyncWrite + Unpin>(
    mut w: BufWriter<W>,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    while let Some(mut out) = rx.recv().await {
        loop {
            if let Err(e) = frame::write_frame(&mut w, out.id, &out.header, &out.data).await {
                tracing::debug!("write failed: {e}");
                return;
            }
            match rx.try_recv() {
                Ok(next) => out = next,
                Err(_) => break,
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
}

fn is_transient_accept_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::EINTR
        )
    )
}
