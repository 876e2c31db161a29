//! The kernel's two FUSE transports, serving `crate::wire::MemFs`.
//!
//! `/dev/fuse`: threads block in `read` and any of them takes the next request, wherever the
//! caller runs. FUSE over io_uring: a queue per CPU, each with a few entries the server hands
//! the kernel in advance; a request goes to the queue of the CPU its caller runs on, and the
//! answer goes back with the next fetch in the same system call. With each queue's thread
//! pinned to its CPU, a request and its answer never cross CPUs.

use crate::wire::{Answer, MemFs, Request, IN_HEADER, OUT_HEADER};
use anyhow::{bail, Context, Result};
use io_uring::{opcode, squeue::Entry128, types, IoUring};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum Transport {
    /// Two threads reading `/dev/fuse`, as shoal's mount.
    Dev,
    /// FUSE over io_uring, a queue per CPU served by a thread pinned to it.
    Uring,
    /// FUSE over io_uring with the queue threads left wherever the scheduler puts them.
    UringUnpinned,
}

impl Transport {
    /// Its name on the command line.
    pub fn arg(self) -> &'static str {
        match self {
            Transport::Dev => "dev",
            Transport::Uring => "uring",
            Transport::UringUnpinned => "uring-unpinned",
        }
    }
}

/// Bytes of the largest request or reply body (1 MiB writes, and their headers).
const PAYLOAD: usize = (1 << 20) + 4096;
/// `struct fuse_uring_req_header`: `in_out[128]`, `op_in[128]`, `fuse_uring_ent_in_out`.
const ENT_HEADER: usize = 288;
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = 256;
/// `enum fuse_uring_cmd`.
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// Entries each queue hands the kernel.
const ENTRIES: usize = 4;

/// Requests served by io_uring, reported at the end.
pub static BY_URING: AtomicU64 = AtomicU64::new(0);

/// Mounts a FUSE file system at `dir` and returns its `/dev/fuse`.
pub fn mount(dir: &Path) -> Result<File> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .context("cannot open /dev/fuse")?;
    let data = std::ffi::CString::new(format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
        dev.as_raw_fd()
    ))?;
    rustix::mount::mount(
        "fusewire",
        dir,
        "fuse.fusewire",
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
        Some(data.as_c_str()),
    )
    .with_context(|| format!("cannot mount on {}", dir.display()))?;
    Ok(dev)
}

/// Serves until the file system is unmounted.
pub fn serve(dev: File, transport: Transport) -> Result<()> {
    let fs = Arc::new(MemFs::new(transport != Transport::Dev));
    // INIT comes through /dev/fuse in any case; its answer turns io_uring on.
    read_dev(&dev, &fs, true)?;
    let dev = Arc::new(dev);
    let mut threads = Vec::new();
    match transport {
        Transport::Dev => {
            let (fs, dev) = (fs.clone(), dev.clone());
            threads.push(std::thread::spawn(move || read_dev(&dev, &fs, false)));
        }
        Transport::Uring | Transport::UringUnpinned => {
            // The kernel takes requests by io_uring once every possible CPU has a queue.
            for qid in 0..possible_cpus()? {
                let (fs, dev) = (fs.clone(), dev.clone());
                let pin = (transport == Transport::Uring).then_some(qid);
                threads.push(std::thread::spawn(move || {
                    serve_queue(&dev, qid as u16, pin, &fs)
                }));
            }
        }
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    // This thread keeps reading /dev/fuse: forgets and interrupts come that way in any case.
    let served = read_dev(&dev, &fs, false);
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            eprintln!("{e:#}");
        }
    }
    served
}

/// How many CPUs the kernel may ever bring up (`/sys/devices/system/cpu/possible`: "0-1").
fn possible_cpus() -> Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let last = s.trim().rsplit([',', '-']).next().unwrap_or("0");
    Ok(last.parse::<usize>().context("cannot read the possible CPUs")? + 1)
}

/// Answers requests read from `/dev/fuse` until it is unmounted (or, `init_only`, the INIT).
fn read_dev(dev: &File, fs: &MemFs, init_only: bool) -> Result<()> {
    let mut buf = vec![0u8; PAYLOAD + IN_HEADER + 4096];
    let mut out = Vec::new();
    loop {
        let n = match (&*dev).read(&mut buf) {
            Ok(n) => n,
            // Interrupted, or a request that went away before it was read.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ENOENT)) => continue,
            // ENODEV: unmounted.
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(()),
            Err(e) => return Err(e).context("read /dev/fuse"),
        };
        let Some(r) = Request::parse(&buf[..n]) else {
            bail!("a request of {n} bytes, shorter than its header");
        };
        if fs.handle(&r).encode(r.unique, &mut out) {
            // ENOENT: the request was interrupted meanwhile.
            if let Err(e) = (&*dev).write(&out) {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    return Err(e).context("write /dev/fuse");
                }
            }
        }
        if init_only {
            return Ok(());
        }
    }
}

/// One entry's buffers, which the kernel fills with a request and reads the answer from.
struct Entry {
    header: Box<[u8; ENT_HEADER]>,
    payload: Vec<u8>,
    iov: Box<[libc::iovec; 2]>,
}

impl Entry {
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
        let b: [u8; 8] = self.header[at..at + 8].try_into().unwrap_or_default();
        u64::from_le_bytes(b)
    }

    /// The request it holds, answered into its buffers; the commit id to send back (the
    /// request's `unique`). One it cannot make sense of is answered EIO.
    fn answer(&mut self, fs: &MemFs, out: &mut Vec<u8>) -> u64 {
        let commit_id = self.field(ENT_IN_OUT + 8);
        let payload_sz = self.field(ENT_IN_OUT + 16) as u32 as usize;
        let request = self
            .payload
            .get(..payload_sz)
            .and_then(|rest| Request::parts(&self.header[..IN_HEADER], &self.header[OP_IN..OP_IN * 2], rest));
        let answer = match request {
            Some(r) => fs.handle(&r),
            None => Answer::Error(libc::EIO),
        };
        BY_URING.fetch_add(1, Ordering::Relaxed);
        // (Every request that comes this way expects an answer.)
        if !answer.encode(commit_id, out) {
            Answer::Error(libc::EIO).encode(commit_id, out);
        }
        // The reply's header goes to `in_out`, its body to the payload, its size beside them.
        let body = &out[OUT_HEADER..];
        self.header[..OUT_HEADER].copy_from_slice(&out[..OUT_HEADER]);
        self.payload[..body.len()].copy_from_slice(body);
        self.header[ENT_IN_OUT + 16..ENT_IN_OUT + 20].copy_from_slice(&(body.len() as u32).to_le_bytes());
        commit_id
    }
}

/// A `FUSE_IO_URING_CMD_*` for entry `index` of queue `qid`.
fn command(dev: i32, cmd: u32, qid: u16, commit_id: u64, e: &Entry, index: usize) -> Entry128 {
    // `struct fuse_uring_cmd_req`: flags, commit_id, qid.
    let mut req = [0u8; 80];
    req[8..16].copy_from_slice(&commit_id.to_le_bytes());
    req[16..18].copy_from_slice(&qid.to_le_bytes());
    let sqe = opcode::UringCmd80::new(types::Fd(dev), cmd)
        .cmd(req)
        .addr(Some(e.iov.as_ptr() as u64))
        .build()
        .user_data(index as u64);
    // The kernel also wants the iovec count in the entry's `len` (offset 24), which the
    // crate has no setter for. SAFETY: Entry128 is `repr(C)` over the 128 bytes of a big
    // submission entry, plain integers in which any bytes are valid.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&2u32.to_le_bytes());
    unsafe { std::mem::transmute::<[u8; 128], Entry128>(raw) }
}

/// Serves queue `qid` until the file system goes away.
fn serve_queue(dev: &File, qid: u16, pin: Option<usize>, fs: &MemFs) -> Result<()> {
    if let Some(cpu) = pin {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set).context("cannot pin a queue's thread")?;
    }
    // (Before the ring, so that they are dropped after it.)
    let mut entries: Vec<Entry> = (0..ENTRIES).map(|_| Entry::new()).collect();
    // Completions are run by this thread when it waits, not by interrupting it.
    let mut ring: IoUring<Entry128> = IoUring::builder()
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_defer_taskrun()
        .build(2 * ENTRIES as u32)
        .context("io_uring_setup")?;
    let fd = dev.as_raw_fd();
    for (i, e) in entries.iter().enumerate() {
        let sqe = command(fd, CMD_REGISTER, qid, 0, e, i);
        // SAFETY: the entry's buffers live in `entries` until this function returns, after
        // the ring (declared later, so dropped first) no longer uses them.
        unsafe { ring.submission().push(&sqe) }.context("submission queue full")?;
    }
    let mut out = Vec::new();
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e).context("io_uring_enter"),
        }
        let done: Vec<(u64, i32)> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (i, res) in done {
            // The file system went away (ENOTCONN) or the queue was refused.
            if res < 0 {
                return match -res {
                    libc::ENOTCONN | libc::ECANCELED | libc::ECONNABORTED | libc::ENODEV => Ok(()),
                    e => bail!("queue {qid}: {}", std::io::Error::from_raw_os_error(e)),
                };
            }
            let e = entries.get_mut(i as usize).context("a completion for no entry")?;
            let commit_id = e.answer(fs, &mut out);
            let sqe = command(fd, CMD_COMMIT_AND_FETCH, qid, commit_id, e, i as usize);
            // SAFETY: as above.
            unsafe { ring.submission().push(&sqe) }.context("submission queue full")?;
        }
    }
}
