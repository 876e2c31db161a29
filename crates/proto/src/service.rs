//! The server side of [`crate::rpc`]: authenticated connections carrying multiplexed
//! requests to a [`Service`].
//!
//! Each connection has a reader that decodes frames and hands each request to the service,
//! which answers at once or returns a future that runs as a task of its own (up to a bound
//! per connection: the backpressure on a greedy client). Replies are written by whoever has
//! them, through the connection's [`Outbox`]; a client that does not read its replies stops
//! the reader once `MAX_BACKLOG` bytes of them wait.

use crate::auth::{self, ClusterKey, Peer};
use crate::frame::{self, FrameError};
use crate::outbox::{Body, Outbox};
use crate::transport::{Listener, Stream, Via};
use crate::Errno;
use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::BufReader;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Requests one connection may have in progress at once.
const MAX_IN_FLIGHT: usize = 256;
/// Reply bytes that may wait for a slow client before its requests stop being read.
const MAX_BACKLOG: usize = 16 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer that sends nothing for this long is gone (clients ping every second): its
/// connection is closed, so that what it held is let go even if no reset ever arrives.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// A reply and its data section.
pub type Answer<R> = (Result<R, Errno>, Body);

/// How a service handles one request.
pub enum Handled<R> {
    /// Answered already (cheap work, done in the connection's reader).
    Now(Answer<R>),
    /// To be answered by this future, run as a task of its own.
    Later(Pin<Box<dyn Future<Output = Answer<R>> + Send>>),
}

/// What a server does with its requests.
pub trait Service: Send + Sync + Sized + 'static {
    type Req: DeserializeOwned + Send + 'static;
    type Resp: Serialize + Send + 'static;
    /// State kept per connection.
    type Session: Send + Sync + 'static;

    /// For logs: what this server serves.
    fn label(&self) -> String;
    /// Whether new connections are taken now (those that come meanwhile are closed at once).
    fn admits(&self) -> bool {
        true
    }
    /// A peer passed the handshake. `closed` turns true when its connection ends; `out` sends
    /// frames to it unasked (with id [`crate::msg::NOTICE_ID`]).
    fn open(&self, peer: &Peer, closed: watch::Receiver<bool>, out: Arc<Outbox>) -> Arc<Self::Session>;
    fn handle(
        self: &Arc<Self>,
        session: &Arc<Self::Session>,
        req: Self::Req,
        data: Bytes,
    ) -> Handled<Self::Resp>;
    /// The connection ended (its in-flight requests may still be finishing).
    fn close(&self, session: &Self::Session);
    /// A lane ([`crate::lane`]) asks to join its session: where to serve it, or `None` to
    /// refuse it (its connection is closed).
    fn lane(&self, _peer: &Peer, _via: Via) -> Option<Lane<Self::Session>> {
        None
    }
    /// The error for a well-framed request that does not decode.
    fn undecodable(&self, _header: &[u8]) -> Errno {
        Errno::EBADMSG
    }
}

/// Where a lane is served: on the session it joins, until that session's own connection
/// ends.
pub struct Lane<S> {
    pub session: Arc<S>,
    /// Turns true (or is dropped) when the session's connection ends.
    pub ended: watch::Receiver<bool>,
    /// The runtime it runs on (a thread pinned to the lane's CPU); `None`: the one that
    /// accepted it.
    pub home: Option<tokio::runtime::Handle>,
}

/// Accepts connections, by TCP on `listener` and by the Unix socket beside it
/// ([`crate::transport`]), until the listener fails or `shutdown` turns true; connections end
/// with the shutdown too.
pub async fn serve<S: Service>(
    svc: Arc<S>,
    listener: TcpListener,
    key: ClusterKey,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = Listener::new(listener);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut shutdown) => return Ok(()),
        };
        let (stream, addr) = match accepted {
            Ok(_) if !svc.admits() => continue,
            Ok(x) => x,
            Err(e) if is_transient_accept_error(&e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        tokio::spawn(connection(
            svc.clone(),
            stream,
            addr,
            key.clone(),
            shutdown.clone(),
        ));
    }
}

async fn connection<S: Service>(
    svc: Arc<S>,
    mut stream: Stream,
    addr: Via,
    key: ClusterKey,
    shutdown: watch::Receiver<bool>,
) {
    let peer = match tokio::time::timeout(HANDSHAKE_TIMEOUT, auth::server(&mut stream, &key)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::warn!(%addr, server = %svc.label(), "refused connection: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(%addr, server = %svc.label(), "refused connection: handshake timed out");
            return;
        }
    };
    if peer.role == crate::lane::ROLE {
        return lane(svc, stream, addr, &peer, shutdown).await;
    }
    let (rd, wr) = match stream.into_split() {
        Ok(halves) => halves,
        Err(e) => {
            tracing::warn!(%addr, server = %svc.label(), "cannot set up connection: {e}");
            return;
        }
    };
    let (closed_tx, closed_rx) = watch::channel(false);
    let out = Outbox::start(wr);
    let session = svc.open(&peer, closed_rx, out.clone());
    tracing::debug!(%addr, role = %peer.role, name = %peer.name, "connected");
    serve_frames(&svc, &session, rd, &out, addr, shutdown, None).await;
    let _ = closed_tx.send(true);
    // Replies of requests still running go out as they finish; the socket closes after the
    // last of them.
    drop(out);
    svc.close(&session);
    tracing::debug!(%addr, "disconnected");
}

/// Serves a lane on its session, on the runtime the service chose for it.
async fn lane<S: Service>(
    svc: Arc<S>,
    stream: Stream,
    addr: Via,
    peer: &Peer,
    shutdown: watch::Receiver<bool>,
) {
    let Some(lane) = svc.lane(peer, addr) else {
        tracing::debug!(%addr, server = %svc.label(), name = %peer.name, "lane refused");
        return;
    };
    let serve = move |stream: Stream| async move {
        let (rd, wr) = match stream.into_split() {
            Ok(halves) => halves,
            Err(e) => {
                tracing::warn!(%addr, server = %svc.label(), "cannot set up a lane: {e}");
                return;
            }
        };
        let out = Outbox::start(wr);
        serve_frames(&svc, &lane.session, rd, &out, addr, shutdown, Some(lane.ended)).await;
    };
    let Some(home) = lane.home.clone() else {
        return serve(stream).await;
    };
    // The socket is registered with the runtime that polls it: it moves with the lane.
    match stream.detach() {
        Ok(detached) => drop(home.spawn(async move {
            match detached.attach() {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::warn!(%addr, "cannot move a lane to its CPU: {e}"),
            }
        })),
        Err(e) => tracing::warn!(%addr, "cannot move a lane to its CPU: {e}"),
    }
}

/// Reads a connection's requests and has them answered, until it ends, the server shuts
/// down, or (a lane) its session's connection ends. Only a session's own connection is
/// closed when silent: its client pings it, a lane's never.
async fn serve_frames<S: Service>(
    svc: &Arc<S>,
    session: &Arc<S::Session>,
    rd: crate::transport::ReadHalf,
    out: &Arc<Outbox>,
    addr: Via,
    mut shutdown: watch::Receiver<bool>,
    mut ended: Option<watch::Receiver<bool>>,
) {
    let idle = match ended {
        Some(_) => None,
        None => Some(IDLE_TIMEOUT),
    };
    let mut rd = BufReader::with_capacity(frame::READ_BUFFER, rd);
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        out.wait_below(MAX_BACKLOG).await;
        let next = async {
            match idle {
                Some(idle) => tokio::time::timeout(idle, frame::read_frame_buffered(&mut rd)).await,
                None => Ok(frame::read_frame_buffered(&mut rd).await),
            }
        };
        let read = tokio::select! {
            r = next => match r {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(%addr, server = %svc.label(), "peer silent for {IDLE_TIMEOUT:?}: closing");
                    break;
                }
            },
            _ = stopped(&mut shutdown) => break,
            _ = session_ended(&mut ended) => break,
        };
        let frame = match read {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(FrameError::Io(e)) => {
                tracing::debug!(%addr, "connection lost: {e}");
                break;
            }
            Err(e) => {
                tracing::warn!(%addr, server = %svc.label(), "closing connection after a bad frame: {e}");
                break;
            }
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let req: S::Req = match frame.decode() {
            Ok(r) => r,
            Err(e) => {
                // The frame boundary is intact, so the connection can go on: answer this
                // request id with an error.
                tracing::warn!(%addr, server = %svc.label(), "undecodable request: {e}");
                let errno = svc.undecodable(&frame.header);
                reply::<S::Resp>(out, frame.id, (Err(errno), Body::default()));
                continue;
            }
        };
        match svc.handle(session, req, frame.data) {
            Handled::Now(answer) => reply(out, frame.id, answer),
            Handled::Later(fut) => {
                let out = out.clone();
                tokio::spawn(async move {
                    let answer = fut.await;
                    reply(&out, frame.id, answer);
                    drop(permit);
                });
            }
        }
    }
}

/// Resolves once a lane's session has ended; never for a session's own connection.
async fn session_ended(ended: &mut Option<watch::Receiver<bool>>) {
    match ended {
        Some(rx) => {
            let _ = rx.wait_for(|e| *e).await;
        }
        None => std::future::pending().await,
    }
}

/// Resolves once shutdown is asked for; never if the sender is gone without asking.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn reply<R: Serialize>(out: &Outbox, id: u64, (resp, data): Answer<R>) {
    let header = frame::encode_header(&resp).unwrap_or_else(|e| {
        tracing::error!("cannot encode a reply: {e}");
        frame::encode_header(&Result::<R, Errno>::Err(Errno::EIO)).unwrap_or_default()
    });
    if let Err(e) = out.send_body(id, &header, data) {
        tracing::debug!("reply not sent: {e}");
    }
}

fn is_transient_accept_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | Interrupted | OutOfMemory)
        || matches!(e.raw_os_error(), Some(23 | 24 | 105)) // ENFILE, EMFILE, ENOBUFS
}
