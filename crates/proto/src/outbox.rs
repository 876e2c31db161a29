//! Sending frames on a shared socket from any thread.
//!
//! A frame is written straight onto the socket by whoever sends it (a FUSE thread, a
//! connection's reader answering a quick request), with one `writev` (and a splice for data
//! waiting in a pipe, [`crate::piped`]). Only when the socket is full does the rest wait in a
//! queue that a small task drains as the socket becomes writable. A hand-off to a writer
//! task costs a thread wake-up per frame, which on a small machine is as much as the rest of
//! a request's round trip; this path has none.

use crate::frame::{self, FrameError};
use crate::piped::Piped;
use crate::transport::WriteHalf;
use bytes::Bytes;
use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Pieces handed to one `writev`.
const MAX_IOV: usize = 64;

struct State {
    /// What could not be written yet, in order.
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    /// The drain task has been told about the queue.
    draining: bool,
    closed: bool,
}

/// A frame's data section.
#[derive(Debug)]
pub enum Body {
    Bytes(Bytes),
    /// In a pipe, spliced into the socket without a copy where it takes them at once.
    Piped(Piped),
}

impl Default for Body {
    fn default() -> Body {
        Body::Bytes(Bytes::new())
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Body {
        Body::Bytes(b)
    }
}

/// The sending half of a connection. Dropping it stops the drain task (queued frames are
/// dropped with it).
pub struct Outbox(Arc<Shared>);

struct Shared {
    sock: WriteHalf,
    state: Mutex<State>,
    /// Wakes the drain task when something was queued.
    queued: Notify,
    /// Wakes senders waiting for the queue to shrink.
    drained: Notify,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn closed() -> FrameError {
    FrameError::Io(std::io::Error::from(ErrorKind::BrokenPipe))
}

impl Outbox {
    /// Takes over `sock` and starts the task that drains what could not be written at once
    /// (on the current runtime). The task ends when the outbox is closed or dropped.
    pub fn start(sock: impl Into<WriteHalf>) -> Arc<Outbox> {
        let shared = Arc::new(Shared {
            sock: sock.into(),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued_bytes: 0,
                draining: false,
                closed: false,
            }),
            queued: Notify::new(),
            drained: Notify::new(),
        });
        tokio::spawn(drain(shared.clone()));
        Arc::new(Outbox(shared))
    }

    /// Sends one frame. Never waits: what the socket does not take now is queued.
    pub fn send(&self, id: u64, header: &[u8], data: &Bytes) -> Result<(), FrameError> {
        self.0.send(id, header, std::slice::from_ref(data))
    }

    /// Sends one frame whose data section is `parts` one after the other (gathered by the
    /// `writev`, not copied together first). Never waits either.
    pub fn send_parts(&self, id: u64, header: &[u8], parts: &[Bytes]) -> Result<(), FrameError> {
        self.0.send(id, header, parts)
    }

    /// Sends one frame whose data may wait in a pipe. Never waits either.
    pub fn send_body(&self, id: u64, header: &[u8], body: Body) -> Result<(), FrameError> {
        match body {
            Body::Bytes(data) => self.0.send(id, header, &[data]),
            Body::Piped(p) => self.0.send_piped(id, header, p),
        }
    }

    /// Bytes the peer sent that are still in the socket, unread.
    pub fn unread(&self) -> std::io::Result<u64> {
        Ok(rustix::io::ioctl_fionread(&self.0.sock)?)
    }

    /// Bytes waiting for the socket.
    pub fn backlog(&self) -> usize {
        lock(&self.0.state).queued_bytes
    }

    /// Waits until at most `limit` bytes wait for the socket (or the outbox is closed): the
    /// backpressure for a peer that does not read.
    pub async fn wait_below(&self, limit: usize) {
        loop {
            let notified = self.0.drained.notified();
            {
                let st = lock(&self.0.state);
                if st.closed || st.queued_bytes <= limit {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Stops sending and shuts the connection down (both ways: the reader sees its end);
    /// queued frames are dropped.
    pub fn close(&self) {
        self.0.close();
        let _ = rustix::net::shutdown(&self.0.sock, rustix::net::Shutdown::Both);
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Shared {
    /// A frame's prefix, and the state locked for sending it while the outbox is open.
    fn begin(
        &self,
        id: u64,
        header: &[u8],
        len: usize,
    ) -> Result<([u8; 16], MutexGuard<'_, State>), FrameError> {
        let prefix = frame::prefix(id, header.len(), len)?;
        let st = lock(&self.state);
        if st.closed {
            return Err(closed());
        }
        Ok((prefix, st))
    }

    fn send(&self, id: u64, header: &[u8], data: &[Bytes]) -> Result<(), FrameError> {
        let (prefix, st) = self.begin(id, header, data.iter().map(Bytes::len).sum())?;
        let mut written = 0;
        if st.queue.is_empty() {
            let mut parts: Vec<&[u8]> = Vec::with_capacity(2 + data.len());
            parts.extend([&prefix[..], header]);
            parts.extend(data.iter().map(|d| &d[..]));
            written = match self.write_now(&parts) {
                Ok(n) => n,
                Err(e) => return Err(self.fail(st, e)),
            };
        }
        self.queue_rest(st, [&prefix, header], data, written);
        Ok(())
    }

    fn send_piped(&self, id: u64, header: &[u8], mut data: Piped) -> Result<(), FrameError> {
        let (prefix, st) = self.begin(id, header, data.len())?;
        let mut written = 0;
        if st.queue.is_empty() {
            let head = prefix.len() + header.len();
            let sent = self.write_now(&[&prefix, header]).and_then(|n| {
                if n == head {
                    self.splice_now(&mut data)?;
                }
                Ok(n)
            });
            written = match sent {
                Ok(n) => n,
                Err(e) => return Err(self.fail(st, e)),
            };
        }
        // What the socket did not take waits in the queue like any data.
        let rest = match data.into_bytes() {
            Ok(rest) => rest,
            Err(e) => return Err(self.fail(st, e)),
        };
        self.queue_rest(st, [&prefix, header], &[rest], written);
        Ok(())
    }

    /// Queues what is left of a frame whose first `written` bytes are out (the data without
    /// copying it), and tells the drain task.
    fn queue_rest(&self, mut st: MutexGuard<'_, State>, head: [&[u8]; 2], data: &[Bytes], written: usize) {
        let mut skip = written;
        for part in head {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            let rest = Bytes::copy_from_slice(&part[skip..]);
            skip = 0;
            st.queued_bytes += rest.len();
            st.queue.push_back(rest);
        }
        for part in data {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            let rest = part.slice(skip..);
            skip = 0;
            st.queued_bytes += rest.len();
            st.queue.push_back(rest);
        }
        if !st.queue.is_empty() && !st.draining {
            st.draining = true;
            drop(st);
            self.queued.notify_one();
        }
    }

    /// A frame could not be sent whole: the connection cannot go on (part of the frame may be
    /// out), so it is shut down, and its reader and the peer see the end.
    fn fail(&self, mut st: MutexGuard<'_, State>, e: std::io::Error) -> FrameError {
        st.closed = true;
        drop(st);
        self.drained.notify_waiters();
        let _ = rustix::net::shutdown(&self.sock, rustix::net::Shutdown::Both);
        e.into()
    }

    /// Moves as much of `data` into the socket as it takes without waiting.
    fn splice_now(&self, data: &mut Piped) -> std::io::Result<()> {
        while !data.is_empty() {
            match self.sock.try_splice(data) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn close(&self) {
        let mut st = lock(&self.state);
        st.closed = true;
        st.queue.clear();
        st.queued_bytes = 0;
        drop(st);
        self.queued.notify_one();
        self.drained.notify_waiters();
    }

    /// Writes as much of `parts` as the socket takes without waiting.
    fn write_now(&self, parts: &[&[u8]]) -> std::io::Result<usize> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut done = 0;
        while done < total {
            let mut skip = done;
            let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len());
            for p in parts {
                if skip >= p.len() {
                    skip -= p.len();
                } else if iov.len() < MAX_IOV {
                    iov.push(IoSlice::new(&p[skip..]));
                    skip = 0;
                }
            }
            match self.sock.try_write_vectored(&iov) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Writes queued bytes until the queue is empty (true) or the socket is full (false).
    fn write_queued(&self, st: &mut State) -> std::io::Result<bool> {
        while !st.queue.is_empty() {
            let iov: Vec<IoSlice<'_>> = st.queue.iter().take(MAX_IOV).map(|b| IoSlice::new(b)).collect();
            let mut n = match self.sock.try_write_vectored(&iov) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            st.queued_bytes -= n;
            while n > 0 {
                let Some(front) = st.queue.front_mut() else { break };
                if n >= front.len() {
                    n -= front.len();
                    st.queue.pop_front();
                } else {
                    let _ = front.split_to(n);
                    n = 0;
                }
            }
        }
        Ok(true)
    }
}

async fn drain(o: Arc<Shared>) {
    loop {
        let queued = o.queued.notified();
        tokio::pin!(queued);
        let draining = {
            let st = lock(&o.state);
            if st.closed {
                return;
            }
            st.draining
        };
        if !draining {
            queued.await;
            continue;
        }
        // Wait for room on the socket, or for a close.
        let writable = tokio::select! {
            w = o.sock.writable() => w,
            _ = &mut queued => continue,
        };
        if writable.is_err() {
            o.close();
            return;
        }
        let mut st = lock(&o.state);
        match o.write_queued(&mut st) {
            Ok(done) => {
                if done {
                    st.draining = false;
                }
                drop(st);
                o.drained.notify_waiters();
            }
            Err(e) => {
                tracing::debug!("write failed: {e}");
                drop(st);
                o.close();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::read_frame;
    use crate::transport;
    use tokio::io::BufReader;
    use tokio::net::tcp::OwnedReadHalf;
    use tokio::net::{TcpListener, TcpStream};

    /// An outbox, the peer's end, and the outbox's own reading half (kept open).
    async fn pair() -> (Arc<Outbox>, BufReader<TcpStream>, OwnedReadHalf) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        let (rd, wr) = c.unwrap().into_split();
        (Outbox::start(wr), BufReader::new(s.unwrap().0), rd)
    }

    /// The same over a Unix connection, whose writability is watched only while a sender
    /// waits for room.
    async fn unix_pair() -> (Arc<Outbox>, BufReader<transport::Stream>, transport::ReadHalf) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap().to_string();
        let l = transport::Listener::new(tcp);
        let (c, s) = tokio::join!(transport::connect(&addr), l.accept());
        let c = c.unwrap();
        assert!(c.is_local(), "expected a Unix connection");
        let (rd, wr) = c.into_split().unwrap();
        (Outbox::start(wr), BufReader::new(s.unwrap().0), rd)
    }

    /// Frames with their data in memory or in a pipe alike.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_arrive_whole_and_in_order_when_the_socket_fills() {
        for piped in [false, true] {
            let (out, rd, _own) = pair().await;
            fill_then_drain(out, rd, piped).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_arrive_whole_and_in_order_when_a_unix_socket_fills() {
        for piped in [false, true] {
            let (out, rd, _own) = unix_pair().await;
            fill_then_drain(out, rd, piped).await;
        }
    }

    /// Sends frames of 1 MiB, from memory or (`piped`) spliced from a file.
    async fn fill_then_drain(out: Arc<Outbox>, mut rd: impl tokio::io::AsyncRead + Unpin, piped: bool) {
        use std::io::Write;
        use std::os::fd::AsFd;
        let data = Bytes::from((0..1u32 << 20).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&data).unwrap();
        // Far more than the socket buffers hold, sent before the peer reads anything.
        let n = 40u64;
        for id in 0..n {
            if piped {
                let p = Piped::from_file(file.as_fd(), 0, data.len()).unwrap().unwrap();
                out.send_body(id, &id.to_le_bytes(), Body::Piped(p)).unwrap();
            } else if id % 4 == 0 {
                out.send(id, &id.to_le_bytes(), &data).unwrap();
            } else if id % 4 == 2 {
                // More pieces than one writev takes.
                let parts: Vec<Bytes> = (0..data.len())
                    .step_by(10_000)
                    .map(|at| data.slice(at..(at + 10_000).min(data.len())))
                    .collect();
                assert!(parts.len() > MAX_IOV);
                out.send_parts(id, &id.to_le_bytes(), &parts).unwrap();
            } else {
                // In uneven pieces, one of them empty.
                let cut = (id as usize * 7919) % data.len();
                let parts = [data.slice(..cut), Bytes::new(), data.slice(cut..)];
                out.send_parts(id, &id.to_le_bytes(), &parts).unwrap();
            }
        }
        assert!(
            out.backlog() > 0,
            "the socket took everything: the test proves nothing"
        );
        for id in 0..n {
            let f = read_frame(&mut rd).await.unwrap().unwrap();
            assert_eq!(f.id, id);
            assert_eq!(&f.header[..], &id.to_le_bytes());
            assert!(f.data == data, "frame {id} carries other bytes");
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), out.wait_below(0))
            .await
            .unwrap();
        assert_eq!(out.backlog(), 0);
    }

    #[tokio::test]
    async fn a_closed_outbox_refuses() {
        let (out, _rd, _own) = pair().await;
        out.close();
        assert!(out.send(1, b"h", &Bytes::new()).is_err());
    }
}
