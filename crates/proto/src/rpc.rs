//! A client connection to one peer (a brick, another node's control port), shared by every
//! caller that talks to it.
//!
//! Requests are multiplexed by id; any number may be in flight. When the connection drops,
//! every pending request fails with ENOTCONN at once and a background task reconnects (twice
//! a second), so callers never wait on a dead peer: replicated layers learn within one
//! round trip that a child is gone. A ping every second notices a silent peer (a cut link)
//! within `DEAD_AFTER`.
//!
//! A caller can wait until everything that arrived from the peer has been handled
//! ([`Conn::caught_up`]): what it sent unasked (a brick's notice that another client changed
//! a file) is then known here.

use crate::auth::{self, ClusterKey};
use crate::frame;
use crate::outbox::Outbox;
use crate::Errno;
use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, BufReader, ReadBuf};
use tokio::sync::{oneshot, Notify};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RETRY_EVERY: Duration = Duration::from_millis(250);
const PING_EVERY: Duration = Duration::from_secs(1);
/// A link that has not answered anything for this long is declared dead.
const DEAD_AFTER: Duration = Duration::from_secs(5);
/// Longest wait in `Conn::caught_up` (a peer stalled in the middle of a frame).
const CATCH_UP_WITHIN: Duration = Duration::from_secs(1);

type Pending<R> = oneshot::Sender<Result<(R, Bytes), Errno>>;

/// Called with each frame the peer sends unasked, and with `None` when the connection is
/// lost (whatever the peer would have announced meanwhile is unknown).
pub type NoticeFn = Arc<dyn Fn(Option<&frame::Frame>) + Send + Sync>;

/// Makes the requests a new connection sends before any other (each with what it is, for
/// the log if the peer refuses it).
pub type HelloFn<Q> = Arc<dyn Fn() -> Vec<(Q, String)> + Send + Sync>;

struct Link<R> {
    gen: u64,
    /// Requests are written by their callers, on whatever thread they run.
    out: Arc<Outbox>,
    pending: Mutex<HashMap<u64, Pending<R>>>,
    next_id: AtomicU64,
    dead: AtomicBool,
    last_rx: Mutex<Instant>,
    /// The reader task, stopped when the link dies so that a silent peer does not keep a
    /// socket open.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Bytes the reader took from the socket, and how many of them were whole frames it has
    /// handled; `handled_more` wakes whoever waits for the latter to grow. The count is
    /// locked across each read, so that it and the socket's unread bytes add up to
    /// everything that arrived (see `caught_up`).
    received: Arc<Mutex<u64>>,
    handled: AtomicU64,
    handled_more: Notify,
    /// Its lanes, by CPU ([`crate::lane`]): they die with it.
    lanes: Mutex<HashMap<usize, LaneSlot<R>>>,
}

enum LaneSlot<R> {
    Making,
    Up(Arc<Link<R>>),
    /// Refused, failed or lost: this CPU's calls keep to the link itself.
    None,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<R> Link<R> {
    fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        for (_, p) in lock(&self.pending).drain() {
            let _ = p.send(Err(Errno::ENOTCONN));
        }
        self.out.close();
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        self.handled_more.notify_waiters();
        for (_, lane) in lock(&self.lanes).drain() {
            if let LaneSlot::Up(lane) = lane {
                lane.kill();
            }
        }
    }

    fn new(gen: u64, out: Arc<Outbox>) -> Link<R> {
        Link {
            gen,
            out,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            dead: AtomicBool::new(false),
            last_rx: Mutex::new(Instant::now()),
            tasks: Mutex::new(Vec::new()),
            received: Arc::new(Mutex::new(0)),
            handled: AtomicU64::new(0),
            handled_more: Notify::new(),
            lanes: Mutex::new(HashMap::new()),
        }
    }
}

/// Counts the bytes read through it.
struct Counted<T> {
    inner: T,
    count: Arc<Mutex<u64>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        // (Held for one recv at most: a read that would block returns at once.)
        let mut count = lock(&me.count);
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        *count += (buf.filled().len() - before) as u64;
        r
    }
}

/// A link being made: killed when dropped before it was installed.
struct Unused<R>(Option<Arc<Link<R>>>);

impl<R> Unused<R> {
    fn installed(mut self) {
        self.0 = None;
    }
}

impl<R> Drop for Unused<R> {
    fn drop(&mut self) {
        if let Some(link) = self.0.take() {
            link.kill();
        }
    }
}

/// The request every peer answers at once, used to notice silent peers.
pub trait Ping {
    fn ping() -> Self;
}

/// A multiplexed connection to one peer that reconnects by itself. `Q` is what it sends,
/// `R` what comes back (as `Result<R, Errno>` on the wire).
pub struct Conn<Q, R> {
    /// Where the peer is; a brick that moved to another server is followed (`move_to`).
    addr: Mutex<String>,
    key: ClusterKey,
    role: &'static str,
    name: String,
    link: Mutex<Option<Arc<Link<R>>>>,
    reconnecting: AtomicBool,
    /// Held while a connection is being made (see `establish`).
    connecting: tokio::sync::Mutex<()>,
    gen: AtomicU64,
    notices: Mutex<Vec<NoticeFn>>,
    /// Requests sent first on every new connection, before anyone else's.
    hello: Mutex<Option<HelloFn<Q>>>,
    /// The session lanes join, once the peer was told it (see [`Conn::use_lanes`]).
    lane_session: Mutex<Option<u128>>,
    me: Weak<Conn<Q, R>>,
    _sends: std::marker::PhantomData<fn(Q)>,
}

impl<Q, R> Conn<Q, R>
where
    Q: Serialize + Ping + Send + Sync + 'static,
    R: DeserializeOwned + Send + 'static,
{
    /// A connection to `addr` (host:port) as `role` ("client", "node"), not yet established.
    pub fn new(addr: &str, key: ClusterKey, role: &'static str, name: &str) -> Arc<Conn<Q, R>> {
        Arc::new_cyclic(|me| Conn {
            addr: Mutex::new(addr.to_string()),
            key,
            role,
            name: name.to_string(),
            link: Mutex::new(None),
            reconnecting: AtomicBool::new(false),
            connecting: tokio::sync::Mutex::new(()),
            gen: AtomicU64::new(0),
            notices: Mutex::new(Vec::new()),
            hello: Mutex::new(None),
            lane_session: Mutex::new(None),
            me: me.clone(),
            _sends: std::marker::PhantomData,
        })
    }

    pub fn addr(&self) -> String {
        lock(&self.addr).clone()
    }

    /// The peer moved to `addr`: the current connection is dropped (its requests fail with
    /// ENOTCONN, as when a peer dies) and the next ones go to the new address.
    pub fn move_to(&self, addr: &str) {
        {
            let mut cur = lock(&self.addr);
            if *cur == addr {
                return;
            }
            tracing::info!(from = %cur, to = %addr, "peer moved");
            *cur = addr.to_string();
        }
        let link = lock(&self.link).clone();
        match link {
            Some(l) => self.lost(&l),
            None => self.start_reconnect(),
        }
    }

    /// Has every connection made from now on send what `f` makes, in order, before any
    /// other request: say a session the peer ties the connection to, and what to take back
    /// under it. A refusal is logged and the connection used all the same.
    pub fn set_hello(&self, f: HelloFn<Q>) {
        *lock(&self.hello) = Some(f);
    }

    /// Has calls made on a thread that serves one CPU ([`crate::lane::serve_here`]) go on a
    /// lane of that CPU, joining `session`, which every connection's hello names to the peer.
    /// A peer that refuses lanes gets every call on the connection itself.
    pub fn use_lanes(&self, session: u128) {
        *lock(&self.lane_session) = Some(session);
    }

    /// Adds a receiver of the frames the peer sends unasked (each receiver gets every one).
    pub fn on_notice(&self, f: NoticeFn) {
        lock(&self.notices).push(f);
    }

    fn notice(&self, frame: Option<&frame::Frame>) {
        let receivers = lock(&self.notices).clone();
        for f in receivers {
            f(frame);
        }
    }

    /// True while a live connection exists.
    pub fn is_up(&self) -> bool {
        lock(&self.link)
            .as_ref()
            .is_some_and(|l| !l.dead.load(Ordering::SeqCst))
    }

    /// The current connection's lanes that are up, and those refused or lost (whose CPUs'
    /// calls keep to the connection itself).
    pub fn lanes(&self) -> (usize, usize) {
        let Some(link) = lock(&self.link).clone() else {
            return (0, 0);
        };
        let lanes = lock(&link.lanes);
        let up = lanes
            .values()
            .filter(|l| matches!(l, LaneSlot::Up(l) if !l.dead.load(Ordering::SeqCst)))
            .count();
        let none = lanes.values().filter(|l| matches!(l, LaneSlot::None)).count();
        (up, none)
    }

    /// The generation of the current connection: handles from another generation are void.
    pub fn generation(&self) -> u64 {
        lock(&self.link).as_ref().map(|l| l.gen).unwrap_or(0)
    }

    /// Connects now, waiting for the outcome; later drops reconnect in the background.
    pub async fn connect(&self) -> Result<(), Errno> {
        if self.is_up() {
            return Ok(());
        }
        match self.establish().await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.start_reconnect();
                Err(e)
            }
        }
    }

    async fn establish(&self) -> Result<(), Errno> {
        // One at a time (a caller's `connect` and the reconnect loop may meet): a brick
        // takes a second connection that names the same session (in its `hello`) for the
        // client coming back and closes the first, possibly after it was installed here.
        let _one = self.connecting.lock().await;
        if self.is_up() {
            return Ok(());
        }
        let addr = self.addr();
        let stream = self.dial(&addr, self.role, &self.name).await?;
        let link = self.start_link(stream, self.gen.fetch_add(1, Ordering::SeqCst) + 1, None)?;
        // Killed unless installed, also when the caller gives up waiting midway: a link left
        // open after its hello named the session could make the brick close the next one.
        let unused = Unused(Some(link.clone()));
        let hello = lock(&self.hello).clone();
        for (req, what) in hello.map(|f| f()).unwrap_or_default() {
            let header = frame::encode_header(&req).map_err(|_| Errno::EINVAL)?;
            let answer = tokio::time::timeout(CONNECT_TIMEOUT, Self::send_on(&link, header, &[]));
            match answer.await.unwrap_or(Err(Errno::ETIMEDOUT)) {
                // (ENOSYS: a peer that predates it.)
                Ok(_) | Err(Errno::ENOSYS) => {}
                Err(e) if e.is_transport() => return Err(e),
                Err(e) => tracing::error!(peer = %addr, "{what}: refused on connecting: {e}"),
            }
        }
        let mut cur = lock(&self.link);
        if *lock(&self.addr) != addr {
            // The peer moved while this connection was being made (the guard kills it).
            return Err(Errno::ECONNRESET);
        }
        tokio::spawn(ping_loop(self.me.clone(), Arc::downgrade(&link)));
        tracing::debug!(peer = %addr, gen = link.gen, "connected");
        unused.installed();
        *cur = Some(link);
        Ok(())
    }

    /// A link of generation `gen` on `stream` (a lane of `lane`'s link and CPU), its reader
    /// started on the current runtime.
    fn start_link(
        &self,
        stream: crate::transport::Stream,
        gen: u64,
        lane: Option<(Weak<Link<R>>, usize)>,
    ) -> Result<Arc<Link<R>>, Errno> {
        let (rd, wr) = stream.into_split().map_err(Errno::from)?;
        let link = Arc::new(Link::new(gen, Outbox::start(wr)));
        let rd = Counted {
            inner: rd,
            count: link.received.clone(),
        };
        let reader = BufReader::with_capacity(frame::READ_BUFFER, rd);
        let r = tokio::spawn(read_loop(self.me.clone(), link.clone(), reader, lane));
        lock(&link.tasks).push(r.abort_handle());
        Ok(link)
    }

    /// A connection to the peer at `addr` that passed the handshake as `role` `name`.
    async fn dial(&self, addr: &str, role: &str, name: &str) -> Result<crate::transport::Stream, Errno> {
        let attempt = async {
            let mut s = crate::transport::connect(addr).await.map_err(Errno::from)?;
            match self.handshake(&mut s, role, name).await {
                Ok(()) => Ok(s),
                // Whoever holds the local socket's name is not our peer: TCP decides.
                Err(_) if s.is_local() => {
                    let mut s = crate::transport::connect_tcp(addr).await.map_err(Errno::from)?;
                    self.handshake(&mut s, role, name).await.map(|()| s)
                }
                Err(e) => Err(e),
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .map_err(|_| Errno::ETIMEDOUT)?
    }

    /// The lane of this thread's CPU on `link` for a call carrying `data` bytes, if it has
    /// one; asks for it if it was never asked for.
    fn lane_of(&self, link: &Arc<Link<R>>, data: usize) -> Option<Arc<Link<R>>> {
        if data > crate::lane::MAX_DATA {
            return None;
        }
        let session = (*lock(&self.lane_session))?;
        let (cpu, home) = crate::lane::here()?;
        let mut lanes = lock(&link.lanes);
        match lanes.get(&cpu) {
            Some(LaneSlot::Up(lane)) if !lane.dead.load(Ordering::SeqCst) => return Some(lane.clone()),
            // Dropped with the runtime that read it (its thread ended): made again.
            Some(LaneSlot::Up(_)) => {}
            Some(_) => return None,
            None => {}
        }
        lanes.insert(cpu, LaneSlot::Making);
        drop(lanes);
        // Made, and then read, on this thread's own runtime.
        let unmade = Unmade(Arc::downgrade(link), cpu);
        home.spawn(make_lane(self.me.clone(), unmade, session, cpu));
        None
    }

    /// Opens a lane of `main` for CPU `cpu` and sees the peer answer on it.
    async fn open_lane(
        &self,
        main: &Weak<Link<R>>,
        session: u128,
        cpu: usize,
    ) -> Result<Arc<Link<R>>, Errno> {
        let gen = main.upgrade().ok_or(Errno::ENOTCONN)?.gen;
        let stream = self
            .dial(&self.addr(), crate::lane::ROLE, &crate::lane::name(session, cpu))
            .await?;
        let lane = self.start_link(stream, gen, Some((main.clone(), cpu)))?;
        // A peer that refuses the lane closes it without answering.
        let header = frame::encode_header(&Q::ping()).map_err(|_| Errno::EINVAL)?;
        let answer = tokio::time::timeout(CONNECT_TIMEOUT, Self::send_on(&lane, header, &[])).await;
        match answer.unwrap_or(Err(Errno::ETIMEDOUT)) {
            Ok(_) => Ok(lane),
            Err(e) => {
                lane.kill();
                Err(e)
            }
        }
    }

    async fn handshake(&self, s: &mut crate::transport::Stream, role: &str, name: &str) -> Result<(), Errno> {
        auth::client(s, &self.key, role, name)
            .await
            .map(|_| ())
            .map_err(|e| {
                // Over the local socket TCP is tried next, and tells.
                if s.is_local() {
                    tracing::debug!(peer = %self.addr(), "handshake over the local socket failed: {e}");
                } else {
                    tracing::warn!(peer = %self.addr(), "handshake failed: {e}");
                }
                match e {
                    auth::HandshakeError::Frame(frame::FrameError::Io(io)) => Errno::from(io),
                    auth::HandshakeError::Frame(_) => Errno::ECONNRESET,
                    _ => Errno::EACCES,
                }
            })
    }

    fn start_reconnect(&self) {
        if self.reconnecting.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            loop {
                if me.establish().await.is_ok() {
                    tracing::info!(peer = %me.addr(), "connected");
                    break;
                }
                // Stop when nobody holds this connection any more.
                if Arc::strong_count(&me) == 1 {
                    break;
                }
                tokio::time::sleep(RETRY_EVERY).await;
            }
            me.reconnecting.store(false, Ordering::SeqCst);
        });
    }

    fn lost(&self, link: &Arc<Link<R>>) {
        link.kill();
        let mut cur = lock(&self.link);
        if cur.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
            *cur = None;
            drop(cur);
            tracing::warn!(peer = %self.addr(), "connection lost");
            self.notice(None);
            self.start_reconnect();
        }
    }

    fn current(&self) -> Result<Arc<Link<R>>, Errno> {
        match lock(&self.link).as_ref() {
            Some(l) if !l.dead.load(Ordering::SeqCst) => Ok(l.clone()),
            _ => {
                self.start_reconnect();
                Err(Errno::ENOTCONN)
            }
        }
    }

    /// Waits until every frame that had reached this host on the main connection when
    /// called is handled: replies delivered, notices passed on (lanes carry replies only).
    /// A brick writes the notices a change causes before it
    /// answers the change, so on one host, while the brick's queue to this client is empty
    /// (it is unless this client falls behind reading), a change another client was told
    /// is done is then known here. Across hosts it narrows the window to the network's
    /// delay. False when that cannot be vouched for: no live connection (what was announced
    /// meanwhile is unknown), or not handled within `CATCH_UP_WITHIN`.
    pub async fn caught_up(&self) -> bool {
        let Some(link) = lock(&self.link).clone() else {
            return false;
        };
        // Under the count's lock no read is under way: what was read plus what waits in
        // the socket is everything that arrived.
        let target = {
            let read = lock(&link.received);
            match link.out.unread() {
                Ok(unread) => *read + unread,
                Err(_) => return false,
            }
        };
        let handled = async {
            loop {
                let more = link.handled_more.notified();
                tokio::pin!(more);
                more.as_mut().enable();
                if link.dead.load(Ordering::SeqCst) {
                    return false;
                }
                if link.handled.load(Ordering::SeqCst) >= target {
                    return true;
                }
                more.await;
            }
        };
        tokio::time::timeout(CATCH_UP_WITHIN, handled)
            .await
            .unwrap_or(false)
    }

    /// Sends a request and waits for its reply. Returns the reply, its data and the
    /// generation of the connection that carried it.
    pub async fn call(&self, req: &Q, data: Bytes) -> Result<(R, Bytes, u64), Errno> {
        let link = self.current()?;
        let link = self.lane_of(&link, data.len()).unwrap_or(link);
        let header = frame::encode_header(req).map_err(|_| Errno::EINVAL)?;
        Self::send_on(&link, header, &[data]).await
    }

    /// [`Conn::call`] with the data in pieces, sent one after the other without being
    /// copied together.
    pub async fn call_parts(&self, req: &Q, parts: &[Bytes]) -> Result<(R, Bytes, u64), Errno> {
        let link = self.current()?;
        let size = parts.iter().map(Bytes::len).sum();
        let link = self.lane_of(&link, size).unwrap_or(link);
        let header = frame::encode_header(req).map_err(|_| Errno::EINVAL)?;
        Self::send_on(&link, header, parts).await
    }

    async fn send_on(link: &Arc<Link<R>>, header: Vec<u8>, data: &[Bytes]) -> Result<(R, Bytes, u64), Errno> {
        let id = link.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&link.pending).insert(id, tx);
        if link.dead.load(Ordering::SeqCst) {
            lock(&link.pending).remove(&id);
            return Err(Errno::ENOTCONN);
        }
        if link.out.send_parts(id, &header, data).is_err() {
            lock(&link.pending).remove(&id);
            return Err(Errno::ENOTCONN);
        }
        let (reply, data) = rx.await.map_err(|_| Errno::ENOTCONN)??;
        Ok((reply, data, link.gen))
    }
}

impl<Q, R> Conn<Q, R>
where
    Q: Serialize + Ping + Send + Sync + 'static,
    R: DeserializeOwned + Send + 'static,
{
    /// Like [`Conn::call`], but while the peer is unreachable keeps trying (a fresh
    /// connection may still be in its handshake) until `patience` has passed; the whole call
    /// is bounded by `patience` plus `answer_within`.
    pub async fn call_patiently(
        &self,
        req: &Q,
        patience: Duration,
        answer_within: Duration,
    ) -> Result<R, Errno> {
        let deadline = Instant::now() + patience;
        loop {
            match tokio::time::timeout(answer_within, self.call(req, Bytes::new())).await {
                Ok(Ok((r, _, _))) => return Ok(r),
                Ok(Err(e)) if e.is_transport() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(Errno::ETIMEDOUT),
            }
        }
    }
}

/// Kills its link when dropped: the end of the link's reader.
struct Reader<R>(Arc<Link<R>>);

impl<R> Drop for Reader<R> {
    fn drop(&mut self) {
        if !self.0.dead.load(Ordering::SeqCst) {
            self.0.kill();
        }
    }
}

/// Makes a lane of `main` for CPU `cpu` (see [`Conn::lane_of`]) and installs it there,
/// unless `main` died meanwhile.
/// A lane being made for a link and CPU: dropped unfinished (its runtime ended, even
/// before it ran), it leaves the CPU free to ask again.
struct Unmade<R>(Weak<Link<R>>, usize);

impl<R> Drop for Unmade<R> {
    fn drop(&mut self) {
        if let Some(main) = self.0.upgrade() {
            let mut lanes = lock(&main.lanes);
            if matches!(lanes.get(&self.1), Some(LaneSlot::Making)) {
                lanes.remove(&self.1);
            }
        }
    }
}

async fn make_lane<Q, R>(conn: Weak<Conn<Q, R>>, unmade: Unmade<R>, session: u128, cpu: usize)
where
    Q: Serialize + Ping + Send + Sync + 'static,
    R: DeserializeOwned + Send + 'static,
{
    let main = unmade.0.clone();
    let Some(c) = conn.upgrade() else { return };
    let made = c.open_lane(&main, session, cpu).await;
    if let Err(e) = &made {
        tracing::debug!(peer = %c.addr(), cpu, "no lane: {e}");
    }
    let Some(main) = main.upgrade() else {
        if let Ok(lane) = made {
            lane.kill();
        }
        return;
    };
    let mut lanes = lock(&main.lanes);
    match made {
        Ok(lane) if main.dead.load(Ordering::SeqCst) => lane.kill(),
        Ok(lane) => drop(lanes.insert(cpu, LaneSlot::Up(lane))),
        Err(_) => drop(lanes.insert(cpu, LaneSlot::None)),
    }
}

/// Reads what comes on `link` (`lane`: the link it is a lane of, and its CPU) until it ends.
async fn read_loop<Q, R>(
    conn: Weak<Conn<Q, R>>,
    link: Arc<Link<R>>,
    mut r: BufReader<Counted<crate::transport::ReadHalf>>,
    lane: Option<(Weak<Link<R>>, usize)>,
) where
    Q: Serialize + Ping + Send + Sync + 'static,
    R: DeserializeOwned + Send + 'static,
{
    // Also when the task is dropped unfinished (a lane's runtime ended with its thread):
    // its callers must not wait for replies nobody reads.
    let _reader = Reader(link.clone());
    loop {
        // Everything before what the buffer holds was handled (the previous frame last).
        let handled = *lock(&link.received) - r.buffer().len() as u64;
        if link.handled.swap(handled, Ordering::SeqCst) != handled {
            link.handled_more.notify_waiters();
        }
        let frame = match frame::read_frame_buffered(&mut r).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("connection: {e}");
                break;
            }
        };
        *lock(&link.last_rx) = Instant::now();
        if frame.id == crate::msg::NOTICE_ID {
            if let Some(c) = conn.upgrade() {
                c.notice(Some(&frame));
            }
            continue;
        }
        let resp: Result<R, Errno> = match frame.decode() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("undecodable reply: {e}");
                break;
            }
        };
        let waiting = lock(&link.pending).remove(&frame.id);
        if let Some(p) = waiting {
            let _ = p.send(resp.map(|reply| (reply, frame.data)));
        }
    }
    if let Some((main, cpu)) = lane {
        link.kill();
        let Some(main) = main.upgrade() else { return };
        let installed = matches!(lock(&main.lanes).get(&cpu), Some(LaneSlot::Up(l)) if Arc::ptr_eq(l, &link));
        // A lane in use lost alone (a bad frame, say): what the peer did of its calls is
        // the session's, and they failed here, so the whole connection is lost, and made
        // again as after any loss. (One not yet in use was refused: that CPU keeps to the
        // main link.)
        // (Ended by shutting the main link's socket: its own reader, on the runtime that
        // owns the connection, then loses it and reconnects from there, not from this CPU's.)
        if let (true, Some(c)) = (installed, conn.upgrade()) {
            tracing::warn!(peer = %c.addr(), cpu, "lane lost");
            main.out.close();
        }
        return;
    }
    match conn.upgrade() {
        Some(c) => c.lost(&link),
        None => link.kill(),
    }
}

async fn ping_loop<Q, R>(conn: Weak<Conn<Q, R>>, link: Weak<Link<R>>)
where
    Q: Serialize + Ping + Send + Sync + 'static,
    R: DeserializeOwned + Send + 'static,
{
    loop {
        tokio::time::sleep(PING_EVERY).await;
        let (Some(c), Some(l)) = (conn.upgrade(), link.upgrade()) else {
            return;
        };
        if l.dead.load(Ordering::SeqCst) {
            return;
        }
        if lock(&l.last_rx).elapsed() > DEAD_AFTER {
            tracing::warn!(peer = %c.addr(), "no answer for {DEAD_AFTER:?}");
            c.lost(&l);
            return;
        }
        // Lanes too: a peer whose thread for one CPU is stuck would otherwise keep calls
        // waiting on that lane for ever while the main link answers.
        let lanes: Vec<Arc<Link<R>>> = lock(&l.lanes)
            .values()
            .filter_map(|s| match s {
                LaneSlot::Up(lane) if !lane.dead.load(Ordering::SeqCst) => Some(lane.clone()),
                _ => None,
            })
            .collect();
        for lane in lanes {
            // Unread replies waiting in the socket: the peer answered, this host's thread
            // that reads them is what is late.
            let waiting = lane.out.unread().is_ok_and(|n| n > 0);
            if lock(&lane.last_rx).elapsed() > DEAD_AFTER && !waiting {
                tracing::warn!(peer = %c.addr(), "no answer on a lane for {DEAD_AFTER:?}");
                c.lost(&l);
                return;
            }
            let Ok(header) = frame::encode_header(&Q::ping()) else {
                continue;
            };
            tokio::spawn(async move {
                let _ = Conn::<Q, R>::send_on(&lane, header, &[]).await;
            });
        }
        let c2 = c.clone();
        drop(l);
        tokio::spawn(async move {
            let _ = c2.call(&Q::ping(), Bytes::new()).await;
        });
    }
}

impl<Q, R> Drop for Conn<Q, R> {
    fn drop(&mut self) {
        if let Some(l) = lock(&self.link).take() {
            l.kill();
        }
    }
}
