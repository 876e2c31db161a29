//! FUSE over io_uring (Linux 6.14 on, with the fuse module's `enable_uring` set): a queue
//! per possible CPU, each with a few entries handed to the kernel in advance. A request goes
//! to the queue of the CPU its caller runs on, and its answer goes back with the fetch of the
//! next one, in one system call.
//!
//! Each queue is served by a thread pinned to its CPU that runs a tokio runtime of its own:
//! a request is decoded and started there, a request that waits finishes there
//! (`crate::inline` continues it on the runtime of the thread that started it), and its
//! answer is committed there. So a request and its answer never cross CPUs on the mount's
//! side, where `/dev/fuse` wakes whichever reading thread is first in line, on whichever
//! CPU (each such hop costs tens of µs in a VM). Forgets and interrupts still come through
//! `/dev/fuse`, whose readers keep running.

use super::abi::{self, OUT_HEADER};
use super::reply::{Channel, Sender};
use super::request::{decode, header_of, Op};
use super::session::{dispatch, Dev};
use super::Filesystem;
use io_uring::{opcode, squeue::Entry128, types, IoUring};
use std::cell::{Cell, RefCell};
use std::io::{Error, ErrorKind};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use tokio::io::unix::AsyncFd;

/// Bytes of an entry's payload: the largest write or read and a page more.
const PAYLOAD: usize = (1 << 20) + 4096;
/// `struct fuse_uring_req_header`: `in_out[128]`, `op_in[128]`, `fuse_uring_ent_in_out`.
const ENT_HEADER: usize = 288;
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = 256;
/// `enum fuse_uring_cmd`.
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// Entries a queue starts with: an online CPU's, an offline one's (it only has to exist
/// for the kernel to take requests this way).
const ENTRIES: usize = 16;
const ENTRIES_OFFLINE: usize = 2;
/// A request that waits long (a blocked lock, a hung brick's) keeps its entry; with every
/// entry held so, the CPU's other requests (the unlock among them) would wait in the
/// kernel. So a queue left with fewer free entries than this registers more, up to the cap.
const FREE_LOW: usize = 4;
const ENTRIES_MAX: usize = 1024;

/// The CPUs of a kernel CPU list ("0-1", "0", "0-3,8-11").
fn cpu_list(path: &str) -> std::io::Result<Vec<usize>> {
    let s = std::fs::read_to_string(path)?;
    let bad = || Error::new(ErrorKind::InvalidData, format!("{path}: {s:?}"));
    let mut cpus = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b) = (
            a.parse::<usize>().map_err(|_| bad())?,
            b.parse::<usize>().map_err(|_| bad())?,
        );
        if b < a || b - a > 1 << 16 {
            return Err(bad());
        }
        cpus.extend(a..=b);
    }
    Ok(cpus)
}

/// The CPUs the kernel may ever bring up: it keeps a queue for each (numbered 0 on, as
/// many as there are) and takes requests by io_uring only once each has registered.
pub fn possible_cpus() -> std::io::Result<Vec<usize>> {
    cpu_list("/sys/devices/system/cpu/possible")
}

/// One entry's buffers, which the kernel fills with a request and reads the answer from.
struct Entry {
    header: Box<[u8; ENT_HEADER]>,
    payload: Vec<u8>,
    iov: Box<[libc::iovec; 2]>,
}

impl Entry {
    /// The kernel takes the buffers' addresses once, at registration: they never move.
    fn new() -> Entry {
        let mut header = Box::new([0u8; ENT_HEADER]);
        let mut payload = vec![0u8; PAYLOAD];
        let iov = Box::new([
            libc::iovec {
                iov_base: header.as_mut_ptr().cast(),
                iov_len: ENT_HEADER,
            },
            libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: PAYLOAD,
            },
        ]);
        Entry { header, payload, iov }
    }

    fn field(&self, at: usize) -> u64 {
        abi::Fields(&self.header[..]).u64(at).unwrap_or(0)
    }
}

/// A queue, owned by its thread.
struct Queue {
    qid: u16,
    /// The session's `/dev/fuse`, kept open while the queue lives.
    fd: RawFd,
    _dev: Arc<Dev>,
    ring: RefCell<IoUring<Entry128>>,
    /// Declared after the ring, dropped after it: the kernel may write into them until the
    /// ring is gone.
    entries: RefCell<Vec<Entry>>,
    /// Entries whose last command was a registration (not a commit).
    registering: RefCell<Vec<bool>>,
    /// Entries holding a request being answered, and entries the kernel refused.
    held: Cell<usize>,
    dead: Cell<usize>,
    /// The entry whose request is being started on this thread, if its arguments are in the
    /// entry's payload, and an answer to it given meanwhile, which waits for the start to
    /// end. (A request with an empty payload is answered at once: its header and argument
    /// were copied out, and the kernel may put the next request in the entry.)
    starting: Cell<Option<usize>>,
    early: RefCell<Option<Vec<u8>>>,
}

thread_local! {
    /// The queue this thread serves, if it serves one.
    static QUEUE: RefCell<Option<Rc<Queue>>> = const { RefCell::new(None) };
}

/// A `FUSE_IO_URING_CMD_*` for entry `index` of queue `qid`.
fn command(dev: RawFd, cmd: u32, qid: u16, commit_id: u64, e: &Entry, index: usize) -> Entry128 {
    // `struct fuse_uring_cmd_req`: flags, commit_id, qid.
    let mut req = [0u8; 80];
    req[8..16].copy_from_slice(&commit_id.to_le_bytes());
    req[16..18].copy_from_slice(&qid.to_le_bytes());
    let sqe = opcode::UringCmd80::new(types::Fd(dev), cmd)
        .cmd(req)
        .addr(Some(e.iov.as_ptr() as u64))
        .build()
        .user_data(index as u64);
    // The kernel also wants the iovec count in the entry's `len` (offset 24), which the crate
    // has no setter for. SAFETY: Entry128 is `repr(C)` over the 128 bytes of a big submission
    // entry, plain integers in which any bytes are valid.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&2u32.to_le_bytes());
    unsafe { std::mem::transmute::<[u8; 128], Entry128>(raw) }
}

impl Queue {
    fn push(&self, sqe: &Entry128) -> std::io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: the entry's buffers (which the command points at) live in `entries` until
        // after the ring is dropped.
        unsafe { ring.submission().push(sqe) }.map_err(|_| Error::other("io_uring submission queue full"))?;
        loop {
            match ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Puts a reply (`fuse_out_header` and body, as [`Sender`] makes them) in entry `index`
    /// and hands it back with a fetch of the next request.
    fn commit(&self, index: usize, parts: &[&[u8]]) -> std::io::Result<()> {
        if self.starting.get() == Some(index) {
            *self.early.borrow_mut() = Some(parts.concat());
            return Ok(());
        }
        let mut entries = self.entries.borrow_mut();
        let e = entries
            .get_mut(index)
            .ok_or_else(|| Error::other("no such entry"))?;
        let head = parts
            .first()
            .filter(|h| h.len() == OUT_HEADER)
            .ok_or_else(|| Error::other("no header"))?;
        let commit_id = abi::Fields(head).u64(8).unwrap_or(0);
        let body_len: usize = parts[1..].iter().map(|p| p.len()).sum();
        if body_len <= e.payload.len() {
            e.header[..OUT_HEADER].copy_from_slice(head);
            let mut at = 0;
            for p in &parts[1..] {
                e.payload[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
        } else {
            // (The kernel asks for no more than a payload holds.)
            e.header[..OUT_HEADER].copy_from_slice(&abi::out_header(OUT_HEADER, -libc::EIO, commit_id));
        }
        let sent = if body_len <= e.payload.len() { body_len } else { 0 };
        e.header[ENT_IN_OUT + 16..ENT_IN_OUT + 20].copy_from_slice(&(sent as u32).to_le_bytes());
        let sqe = command(self.fd, CMD_COMMIT_AND_FETCH, self.qid, commit_id, e, index);
        drop(entries);
        self.held.set(self.held.get().saturating_sub(1));
        if let Some(r) = self.registering.borrow_mut().get_mut(index) {
            *r = false;
        }
        self.push(&sqe)
    }

    /// Registers more entries if few are left free (see `FREE_LOW`).
    fn grow_if_short(&self) -> std::io::Result<()> {
        let total = self.entries.borrow().len();
        let busy = self.held.get() + self.dead.get();
        if total.saturating_sub(busy) >= FREE_LOW || total >= ENTRIES_MAX {
            return Ok(());
        }
        // (The Vec may move the entries; their buffers, which the kernel writes, do not.)
        self.entries
            .borrow_mut()
            .extend((0..ENTRIES).map(|_| Entry::new()));
        self.registering.borrow_mut().resize(total + ENTRIES, false);
        for i in total..total + ENTRIES {
            self.register(i)?;
        }
        Ok(())
    }

    /// Hands entry `index` to the kernel, empty.
    fn register(&self, index: usize) -> std::io::Result<()> {
        let sqe = {
            let entries = self.entries.borrow();
            let e = entries.get(index).ok_or_else(|| Error::other("no such entry"))?;
            command(self.fd, CMD_REGISTER, self.qid, 0, e, index)
        };
        if let Some(r) = self.registering.borrow_mut().get_mut(index) {
            *r = true;
        }
        self.push(&sqe)
    }

    /// Starts the request in entry `index`. Its data is read where the kernel put it (an
    /// answer given before the start returns is held until then).
    fn start<F: Filesystem>(self: &Rc<Self>, index: usize, fs: &F, home: &tokio::runtime::Handle) {
        let (head, arg, payload) = {
            let entries = self.entries.borrow();
            let Some(e) = entries.get(index) else { return };
            let mut head = [0u8; abi::IN_HEADER];
            head.copy_from_slice(&e.header[..abi::IN_HEADER]);
            let mut arg = [0u8; OP_IN];
            arg.copy_from_slice(&e.header[OP_IN..2 * OP_IN]);
            let size = (e.field(ENT_IN_OUT + 16) as usize).min(PAYLOAD);
            // SAFETY: the entry's payload buffer never moves nor is freed while the queue
            // lives, and nothing writes to it until this request is answered: the kernel
            // waits for the commit, and a commit during the start is held (`early`) when
            // the payload is not empty (an empty one is not read).
            let payload = unsafe { std::slice::from_raw_parts(e.payload.as_ptr(), size) };
            (head, arg, payload)
        };
        // An answer can go at once unless the request's arguments are still in the entry.
        if !payload.is_empty() {
            self.starting.set(Some(index));
        }
        let chan: Arc<dyn Channel> = Arc::new(EntryChan {
            qid: self.qid,
            index,
            home: home.clone(),
        });
        let commit_id = abi::Fields(&head).u64(8).unwrap_or(0);
        match header_of(&head) {
            Ok(h) => {
                let n = abi::arg_size(h.opcode);
                let sender = Sender::new(chan, h.req.unique());
                match decode(h.opcode, &arg[..n.min(OP_IN)], payload) {
                    // Replied to by nobody: sent through /dev/fuse, never this way.
                    Ok(Op::Forget { .. } | Op::BatchForget(_)) => sender.fail(libc::ENOSYS),
                    Ok(op) => dispatch(fs, h.nodeid, &h.req, op, sender),
                    Err(_) => sender.fail(libc::EINVAL),
                }
            }
            Err(_) => Sender::new(chan, commit_id).fail(libc::EIO),
        }
        self.starting.set(None);
        let early = self.early.borrow_mut().take();
        if let Some(msg) = early {
            let (head, body) = msg.split_at(OUT_HEADER.min(msg.len()));
            if let Err(e) = self.commit(index, &[head, body]) {
                tracing::warn!("io_uring commit: {e}");
            }
        }
    }
}

/// The way back for a request that came by entry `index` of queue `qid`.
struct EntryChan {
    qid: u16,
    index: usize,
    /// The queue thread's runtime.
    home: tokio::runtime::Handle,
}

impl Channel for EntryChan {
    fn send(&self, parts: &[&[u8]]) -> std::io::Result<()> {
        let here = QUEUE.with(|q| q.borrow().as_ref().filter(|q| q.qid == self.qid).cloned());
        if let Some(q) = here {
            return q.commit(self.index, parts);
        }
        // Answered on another thread: committed on the queue's own (only it submits).
        let msg = parts.concat();
        let index = self.index;
        self.home.spawn(async move {
            let q = QUEUE.with(|q| q.borrow().clone());
            if let Some(q) = q {
                let (head, body) = msg.split_at(OUT_HEADER.min(msg.len()));
                if let Err(e) = q.commit(index, &[head, body]) {
                    tracing::warn!("io_uring commit: {e}");
                }
            }
        });
        Ok(())
    }
}

/// The ring's descriptor, for the runtime to wait on (readable: completions are queued).
struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A queue's thread with its ring made, waiting to be told to serve.
pub struct Prepared<F>(std::sync::mpsc::Sender<Arc<F>>);

impl<F> Prepared<F> {
    /// Registers the queue's entries with the kernel and serves them.
    pub fn start(self, fs: Arc<F>) {
        let _ = self.0.send(fs);
    }
}

/// Makes a queue's thread, runtime and ring for every possible CPU. Only if all are made
/// may INIT ask for io_uring: the kernel then holds every request until each queue has
/// registered. Queues dropped without being started end.
pub fn prepare<F: Filesystem>(dev: &Arc<Dev>) -> std::io::Result<Vec<Prepared<F>>> {
    let online = cpu_list("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut made = Vec::new();
    for (qid, cpu) in possible_cpus()?.into_iter().enumerate() {
        let qid = u16::try_from(qid).map_err(|_| Error::other("too many CPUs"))?;
        let entries = if online.contains(&cpu) {
            ENTRIES
        } else {
            ENTRIES_OFFLINE
        };
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        let dev = dev.clone();
        std::thread::Builder::new()
            .name(format!("fuse-q{qid}"))
            .spawn(move || queue_thread::<F>(dev, qid, cpu, entries, ready_tx, go_rx))?;
        made.push((ready, go));
    }
    let mut prepared = Vec::new();
    for (ready, go) in made {
        match ready.recv() {
            Ok(Ok(())) => prepared.push(Prepared(go)),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Error::other("a queue's thread ended before its ring was made")),
        }
    }
    Ok(prepared)
}

fn make_queue(
    dev: Arc<Dev>,
    qid: u16,
    cpu: usize,
    entries: usize,
) -> std::io::Result<(tokio::runtime::Runtime, Rc<Queue>)> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        // (An offline CPU: its queue still has to exist; it serves from anywhere.)
        tracing::debug!("queue {qid} not pinned: {e}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ring: IoUring<Entry128> = IoUring::builder()
        .setup_single_issuer()
        .build(2 * ENTRIES as u32)?;
    let q = Rc::new(Queue {
        qid,
        fd: dev.0.as_raw_fd(),
        _dev: dev,
        ring: RefCell::new(ring),
        entries: RefCell::new((0..entries).map(|_| Entry::new()).collect()),
        registering: RefCell::new(vec![false; entries]),
        held: Cell::new(0),
        dead: Cell::new(0),
        starting: Cell::new(None),
        early: RefCell::new(None),
    });
    Ok((rt, q))
}

/// Serves queue `qid` (pinned to CPU `cpu`) once told to, until the file system goes away.
fn queue_thread<F: Filesystem>(
    dev: Arc<Dev>,
    qid: u16,
    cpu: usize,
    entries: usize,
    ready: std::sync::mpsc::Sender<std::io::Result<()>>,
    go: std::sync::mpsc::Receiver<Arc<F>>,
) {
    let (rt, q) = match make_queue(dev, qid, cpu, entries) {
        Ok(made) => {
            let _ = ready.send(Ok(()));
            made
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let Ok(fs) = go.recv() else { return };
    QUEUE.with(|s| *s.borrow_mut() = Some(q.clone()));
    crate::inline::set_home(Some(rt.handle().clone()));
    // Calls to bricks made here go on lanes read here.
    proto::lane::serve_here(cpu, rt.handle().clone());
    let serve = std::panic::AssertUnwindSafe(|| rt.block_on(run(q.clone(), fs, rt.handle().clone())));
    let failed = match std::panic::catch_unwind(serve) {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("panicked".into()),
    };
    if let Some(e) = failed {
        // The kernel keeps sending this CPU's requests here: rather than leave them
        // waiting for ever, the mount ends (the requests it holds fail, ECONNABORTED, and
        // later ones ENOTCONN, until the mount point is unmounted).
        tracing::error!("FUSE over io_uring queue {qid} failed: {e}; the mount ends");
        std::process::exit(1);
    }
    crate::inline::set_home(None);
    QUEUE.with(|s| *s.borrow_mut() = None);
    // Requests still running here end with the runtime (the file system is gone).
    drop(rt);
}

async fn run<F: Filesystem>(q: Rc<Queue>, fs: Arc<F>, home: tokio::runtime::Handle) -> std::io::Result<()> {
    for i in 0..q.entries.borrow().len() {
        q.register(i)?;
    }
    // SAFETY: the ring (which owns the descriptor) outlives `ready`, both in this function.
    let ready = unsafe { AsyncFd::register(RingFd(q.ring.borrow().as_raw_fd())) }?;
    loop {
        let done: Vec<(u64, i32)> = q
            .ring
            .borrow_mut()
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        if done.is_empty() {
            let mut guard = ready.readable().await?;
            if q.ring.borrow_mut().completion().is_empty() {
                guard.clear_ready();
            }
            continue;
        }
        for (index, res) in done {
            let index = index as usize;
            if res < 0 {
                let registering = q.registering.borrow().get(index).copied().unwrap_or(true);
                match -res {
                    // The file system went away.
                    libc::ENOTCONN | libc::ECANCELED | libc::ECONNABORTED | libc::ENODEV => return Ok(()),
                    // A commit the kernel refused (its request gone): the entry is offered
                    // again, so that the queue does not shrink.
                    e if !registering => {
                        let e = Error::from_raw_os_error(e);
                        tracing::warn!("FUSE over io_uring queue {}, entry {index}: {e}", q.qid);
                        q.register(index)?;
                    }
                    // A registration refused: the kernel then turns io_uring off for the
                    // mount if it was not ready yet (requests go through /dev/fuse), or
                    // the queue serves with the entries it has.
                    e => {
                        let e = Error::from_raw_os_error(e);
                        tracing::warn!("FUSE over io_uring queue {}: an entry was refused: {e}", q.qid);
                        q.dead.set(q.dead.get() + 1);
                    }
                }
                continue;
            }
            q.held.set(q.held.get() + 1);
            q.start(index, &*fs, &home);
        }
        q.grow_if_short()?;
        // Under a steady stream of requests the ring always has more: the requests that
        // wait, and answers from other threads, get their turn here.
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_read_range_by_range() {
        let dir = std::env::temp_dir().join(format!("shoal-cpus-{}", std::process::id()));
        let read = |text: &str| {
            std::fs::write(&dir, text).expect("write");
            cpu_list(dir.to_str().expect("path"))
        };
        assert_eq!(read("0-1\n").expect("list"), vec![0, 1]);
        assert_eq!(read("0\n").expect("list"), vec![0]);
        assert_eq!(read("0-2,8-9\n").expect("list"), vec![0, 1, 2, 8, 9]);
        assert!(read("3-1\n").is_err());
        assert!(read("x\n").is_err());
        let _ = std::fs::remove_file(&dir);
    }
}
