//! Mounting, the INIT handshake, and the threads that read `/dev/fuse` and hand each
//! request to the file system.

use super::abi::{self, init, out_header, Out, IN_HEADER};
use super::reply::*;
use super::request::{decode, header_of, split, Op};
use super::{FileHandle, Filesystem, INodeNo, KernelConfig, LockOwner};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{Error, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One `/dev/fuse` descriptor of the session. Each reading thread has its own (a clone): the
/// kernel takes a reply only on the descriptor its request was read from.
pub(super) struct Dev(pub(super) File);

impl Channel for Dev {
    fn send(&self, parts: &[&[u8]]) -> std::io::Result<()> {
        let iov: Vec<std::io::IoSlice> = parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
        let want: usize = parts.iter().map(|p| p.len()).sum();
        // The kernel takes a message in one write, whole or not at all.
        let n = (&self.0).write_vectored(&iov)?;
        if n != want {
            return Err(Error::other(format!("the kernel took {n} of {want} bytes")));
        }
        Ok(())
    }
}

/// How the file system is mounted.
#[derive(Clone, Debug)]
pub struct MountSpec {
    /// Shown as the mount's source.
    pub fsname: String,
    /// The file system type is `fuse.SUBTYPE`.
    pub subtype: String,
    pub allow_other: bool,
    pub default_permissions: bool,
    pub read_only: bool,
    /// Device nodes and set-id programs work (root only).
    pub dev_suid: bool,
    /// Threads reading requests from `/dev/fuse`.
    pub threads: usize,
    /// Take requests by FUSE over io_uring where the kernel offers it (see `uring`).
    pub uring: bool,
}

/// A mounted file system, served by [`Session::run`] until it is unmounted. Dropped, it
/// unmounts what it mounted.
pub struct Session<F: Filesystem> {
    fs: Option<F>,
    dev: Arc<Dev>,
    threads: usize,
    uring: bool,
    mount: Arc<Mounted>,
    /// Run once the kernel has the INIT's answer.
    on_init: Option<Box<dyn FnOnce() + Send>>,
}

struct Mounted {
    dir: PathBuf,
    /// Mounted by `fusermount3` (as a user), so unmounted by it too.
    helper: bool,
    mounted: AtomicBool,
}

impl Mounted {
    fn unmount(&self) -> std::io::Result<()> {
        if !self.mounted.load(Ordering::SeqCst) {
            return Ok(());
        }
        if self.helper {
            crate::fusermount::unmount(&self.dir)?;
        } else {
            rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::empty())?;
        }
        self.mounted.store(false, Ordering::SeqCst);
        Ok(())
    }
}

/// Unmounts the session's file system from another thread.
pub struct Unmounter(Arc<Mounted>);

impl Unmounter {
    pub fn unmount(&mut self) -> std::io::Result<()> {
        self.0.unmount()
    }
}

/// Tells the kernel to drop what it cached.
#[derive(Clone)]
pub struct Notifier(Arc<Dev>);

impl Notifier {
    fn notify(&self, code: i32, body: &[&[u8]]) -> std::io::Result<()> {
        let len = abi::OUT_HEADER + body.iter().map(|b| b.len()).sum::<usize>();
        let h = out_header(len, code, 0);
        let mut parts: Vec<&[u8]> = vec![&h];
        parts.extend_from_slice(body);
        self.0.send(&parts)
    }

    /// Drops `ino`'s attributes and, `offset` ≥ 0, its cached data from `offset`, `len` bytes
    /// (0: to the end). ENOENT when the kernel does not have it.
    pub fn inval_inode(&self, ino: INodeNo, offset: i64, len: i64) -> std::io::Result<()> {
        let mut o = Out::with_capacity(24);
        o.u64(ino.0).u64(offset as u64).u64(len as u64);
        self.notify(abi::NOTIFY_INVAL_INODE, &[&o.0])
    }

    /// Drops the kernel's entry for `name` in `parent`.
    pub fn inval_entry(&self, parent: INodeNo, name: &OsStr) -> std::io::Result<()> {
        let mut o = Out::with_capacity(16);
        o.u64(parent.0).u32(name.len() as u32).u32(0);
        self.notify(abi::NOTIFY_INVAL_ENTRY, &[&o.0, name.as_bytes(), &[0]])
    }
}

/// Bytes a read of `/dev/fuse` needs: the largest write and its headers.
const READ_BUF: usize = (1 << 20) + 2 * 4096;

fn open_dev() -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| Error::new(e.kind(), format!("cannot open /dev/fuse: {e}")))
}

impl<F: Filesystem> Session<F> {
    /// Mounts `fs` on `dir` (canonical): as root with mount(2), otherwise through the
    /// `fusermount3` helper.
    pub fn mount(fs: F, dir: &Path, spec: &MountSpec) -> std::io::Result<Session<F>> {
        let root = rustix::process::geteuid().is_root();
        let mut opts = vec![
            format!("fsname={}", spec.fsname),
            format!("subtype={}", spec.subtype),
        ];
        if spec.default_permissions {
            opts.push("default_permissions".into());
        }
        if spec.allow_other {
            opts.push("allow_other".into());
        }
        let (dev, helper) = if root {
            let dev = open_dev()?;
            use rustix::mount::MountFlags;
            let mut flags = MountFlags::empty();
            if !spec.dev_suid {
                flags |= MountFlags::NOSUID | MountFlags::NODEV;
            }
            if spec.read_only {
                flags |= MountFlags::RDONLY;
            }
            let mut data = format!(
                "fd={},rootmode=40000,user_id={},group_id={}",
                dev.as_raw_fd(),
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw()
            );
            for o in opts
                .iter()
                .filter(|o| !o.starts_with("fsname=") && !o.starts_with("subtype="))
            {
                data.push(',');
                data.push_str(o);
            }
            let data =
                CString::new(data).map_err(|_| Error::new(ErrorKind::InvalidInput, "NUL in options"))?;
            let fstype = format!("fuse.{}", spec.subtype);
            rustix::mount::mount(
                spec.fsname.as_str(),
                dir,
                fstype.as_str(),
                flags,
                Some(data.as_c_str()),
            )
            .map_err(Error::from)?;
            (dev, false)
        } else {
            if spec.read_only {
                opts.push("ro".into());
            }
            let fd: OwnedFd = crate::fusermount::mount(dir, &opts.join(","))?;
            (File::from(fd), true)
        };
        Ok(Session {
            fs: Some(fs),
            dev: Arc::new(Dev(dev)),
            threads: spec.threads.max(1),
            uring: spec.uring,
            on_init: None,
            mount: Arc::new(Mounted {
                dir: dir.to_path_buf(),
                helper,
                mounted: AtomicBool::new(true),
            }),
        })
    }

    pub fn notifier(&self) -> Notifier {
        Notifier(self.dev.clone())
    }

    pub fn unmount_callable(&mut self) -> Unmounter {
        Unmounter(self.mount.clone())
    }

    /// Runs `f` once the kernel has taken the INIT's answer (which sets what the mount's
    /// readahead may be, among others), before any request is served: `f` must not use the
    /// mount itself, which would wait for ever.
    pub fn on_init(&mut self, f: impl FnOnce() + Send + 'static) {
        self.on_init = Some(Box::new(f));
    }

    /// Answers the kernel's INIT, then serves requests until the file system is unmounted.
    pub fn run(mut self) -> std::io::Result<()> {
        let mut fs = self
            .fs
            .take()
            .ok_or_else(|| Error::other("the session already ran"))?;
        let mut buf = vec![0u8; READ_BUF];
        let init = read_init(&self.dev, &mut buf)?;
        // Asked for only with every queue ready to register: the kernel holds every request
        // until each has.
        let queues = match self.uring && init.flags & init::OVER_IO_URING != 0 {
            true => match super::uring::prepare::<F>(&self.dev) {
                Ok(q) => q,
                Err(e) => {
                    tracing::warn!("FUSE over io_uring unavailable ({e}): serving /dev/fuse");
                    Vec::new()
                }
            },
            false => Vec::new(),
        };
        answer_init(&self.dev, &mut fs, init, !queues.is_empty())?;
        if let Some(f) = self.on_init.take() {
            f();
        }
        let fs = Arc::new(fs);
        if !queues.is_empty() {
            tracing::info!("FUSE over io_uring: {} queues", queues.len());
        }
        // (Not waited for at the end: a queue whose entries all hold requests that never
        // end gets no word of the unmount. Forgets and interrupts come through /dev/fuse.)
        for q in queues {
            q.start(fs.clone());
        }
        let mut workers = Vec::new();
        for i in 1..self.threads {
            let dev = Arc::new(Dev(clone_dev(&self.dev.0)?));
            let fs = fs.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("fuse-{i}"))
                    .spawn(move || serve(&dev, &*fs, &mut vec![0u8; READ_BUF]))?,
            );
        }
        let served = serve(&self.dev, &*fs, &mut buf);
        for w in workers {
            match w.join() {
                Ok(Err(e)) => tracing::warn!("a FUSE reader stopped: {e}"),
                Err(_) => tracing::warn!("a FUSE reader panicked"),
                Ok(Ok(())) => {}
            }
        }
        if served.is_ok() {
            // Unmounted (ENODEV), no need to try again on drop.
            self.mount.mounted.store(false, Ordering::SeqCst);
        }
        served
    }
}

impl<F: Filesystem> Drop for Session<F> {
    fn drop(&mut self) {
        if let Err(e) = self.mount.unmount() {
            tracing::debug!("unmount {}: {e}", self.mount.dir.display());
        }
    }
}

/// A second descriptor on the same session (`FUSE_DEV_IOC_CLONE`), with its own queue of
/// requests being answered.
fn clone_dev(dev: &File) -> std::io::Result<File> {
    let clone = open_dev()?;
    let fd = dev.as_raw_fd() as u32;
    // SAFETY: the ioctl reads one u32 from the pointer, which lives across the call.
    let r = unsafe { libc::ioctl(clone.as_raw_fd(), abi::DEV_IOC_CLONE as _, &fd as *const u32) };
    if r != 0 {
        return Err(Error::last_os_error());
    }
    Ok(clone)
}

/// One request read from `dev` into `buf`; None once the file system is unmounted.
fn next(dev: &Dev, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    loop {
        match (&dev.0).read(buf) {
            // (Not from /dev/fuse, which ends with ENODEV: the end of a test's socket.)
            Ok(0) => return Ok(None),
            Ok(n) => return Ok(Some(n)),
            // Interrupted, or a request that went away before it was read.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::ENOENT)) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// The kernel's INIT.
struct Init {
    unique: u64,
    max_readahead: u32,
    flags: u64,
}

fn read_init(dev: &Arc<Dev>, buf: &mut [u8]) -> std::io::Result<Init> {
    let n = next(dev, buf)?.ok_or_else(|| Error::other("unmounted before INIT"))?;
    let bad = || Error::new(ErrorKind::InvalidData, "a malformed INIT from the kernel");
    let (h, arg, rest) = split(&buf[..n]).map_err(|_| bad())?;
    let Ok(Op::Init {
        major,
        minor,
        max_readahead,
        flags,
    }) = decode(h.opcode, arg, rest)
    else {
        return Err(bad());
    };
    if major != abi::MAJOR || minor < abi::OLDEST_MINOR {
        ReplyEmpty::new(Sender::new(dev.clone(), h.req.unique())).error(libc::EPROTO);
        return Err(Error::other(format!(
            "kernel FUSE protocol {major}.{minor} is not supported"
        )));
    }
    Ok(Init {
        unique: h.req.unique(),
        max_readahead,
        flags,
    })
}

/// Answers the kernel's INIT, asking for FUSE over io_uring if `uring`.
fn answer_init<F: Filesystem>(dev: &Arc<Dev>, fs: &mut F, init: Init, uring: bool) -> std::io::Result<()> {
    let sender = Sender::new(dev.clone(), init.unique);
    let mut config = KernelConfig::new(init.flags, init.max_readahead);
    config.add_capabilities(init::ASYNC_READ | init::BIG_WRITES | init::MAX_PAGES);
    fs.init(&mut config);
    if uring {
        config.add_capabilities(init::OVER_IO_URING | init::INIT_EXT);
    }
    let wanted = config.wanted;
    let mut o = Out::with_capacity(64);
    o.u32(abi::MAJOR)
        .u32(abi::MINOR)
        .u32(config.max_readahead)
        .u32(wanted as u32);
    let congestion = (u32::from(config.max_background) * 3 / 4) as u16;
    o.u16(config.max_background).u16(congestion);
    o.u32(config.max_write).u32(1); // time granularity: 1 ns
    o.u16(config.max_write.div_ceil(4096) as u16).u16(0);
    o.u32((wanted >> 32) as u32);
    o.zeros(64 - o.0.len());
    ReplyData::new(sender).data(&o.0);
    Ok(())
}

/// Reads and dispatches requests until the file system is unmounted.
fn serve<F: Filesystem>(dev: &Arc<Dev>, fs: &F, buf: &mut [u8]) -> std::io::Result<()> {
    while let Some(n) = next(dev, buf)? {
        let Ok(h) = header_of(&buf[..n]) else {
            // Without a header there is nobody to answer.
            tracing::warn!("a request of {n} bytes, shorter than its header ({IN_HEADER})");
            continue;
        };
        let sender = Sender::new(dev.clone(), h.req.unique());
        let Ok((_, arg, rest)) = split(&buf[..n]) else {
            ReplyEmpty::new(sender).error(libc::EINVAL);
            continue;
        };
        match decode(h.opcode, arg, rest) {
            Ok(Op::Destroy) => {
                ReplyEmpty::new(sender).ok();
                return Ok(());
            }
            Ok(op) => dispatch(fs, h.nodeid, &h.req, op, sender),
            Err(_) => ReplyEmpty::new(sender).error(libc::EINVAL),
        }
    }
    Ok(())
}

/// Hands a request to the file system. A panic there answers the request EIO (its reply
/// object is dropped) and leaves the thread serving.
pub(super) fn dispatch<F: Filesystem>(fs: &F, nodeid: u64, req: &super::Request, op: Op, s: Sender) {
    let run = std::panic::AssertUnwindSafe(|| dispatch_op(fs, nodeid, req, op, s));
    if std::panic::catch_unwind(run).is_err() {
        tracing::error!("a FUSE request (operation of node {nodeid}) panicked");
    }
}

fn dispatch_op<F: Filesystem>(fs: &F, nodeid: u64, req: &super::Request, op: Op, s: Sender) {
    let ino = INodeNo(nodeid);
    match op {
        Op::Lookup { name } => fs.lookup(req, ino, name, ReplyEntry::new(s)),
        Op::Forget { nlookup } => {
            fs.forget(ino, nlookup);
            drop(s);
        }
        Op::BatchForget(items) => {
            for (node, nlookup) in items {
                fs.forget(INodeNo(node), nlookup);
            }
            drop(s);
        }
        Op::GetAttr { fh } => fs.getattr(req, ino, fh.map(FileHandle), ReplyAttr::new(s)),
        Op::SetAttr(set) => fs.setattr(req, ino, set, ReplyAttr::new(s)),
        Op::ReadLink => fs.readlink(req, ino, ReplyData::new(s)),
        Op::Symlink { name, target } => fs.symlink(req, ino, name, Path::new(target), ReplyEntry::new(s)),
        Op::Mknod { name, mode, rdev } => fs.mknod(req, ino, name, mode, rdev, ReplyEntry::new(s)),
        Op::Mkdir { name, mode } => fs.mkdir(req, ino, name, mode, ReplyEntry::new(s)),
        Op::Unlink { name } => fs.unlink(req, ino, name, ReplyEmpty::new(s)),
        Op::Rmdir { name } => fs.rmdir(req, ino, name, ReplyEmpty::new(s)),
        Op::Rename {
            name,
            newparent,
            newname,
            flags,
        } => fs.rename(
            req,
            ino,
            name,
            INodeNo(newparent),
            newname,
            flags,
            ReplyEmpty::new(s),
        ),
        Op::Link { ino: target, newname } => fs.link(req, INodeNo(target), ino, newname, ReplyEntry::new(s)),
        Op::Open { flags } => fs.open(req, ino, flags, ReplyOpen::new(s)),
        Op::Read { fh, offset, size } => fs.read(req, ino, FileHandle(fh), offset, size, ReplyData::new(s)),
        Op::Write {
            fh,
            offset,
            data,
            write_flags,
        } => fs.write(
            req,
            ino,
            FileHandle(fh),
            offset,
            data,
            write_flags,
            ReplyWrite::new(s),
        ),
        Op::StatFs => fs.statfs(req, ino, ReplyStatfs::new(s)),
        Op::Release { fh } => fs.release(req, ino, FileHandle(fh), ReplyEmpty::new(s)),
        Op::Fsync { fh, datasync } => fs.fsync(req, ino, FileHandle(fh), datasync, ReplyEmpty::new(s)),
        Op::SetXattr { name, value, flags } => fs.setxattr(req, ino, name, value, flags, ReplyEmpty::new(s)),
        Op::GetXattr { name, size } => fs.getxattr(req, ino, name, size, ReplyXattr::new(s)),
        Op::ListXattr { size } => fs.listxattr(req, ino, size, ReplyXattr::new(s)),
        Op::RemoveXattr { name } => fs.removexattr(req, ino, name, ReplyEmpty::new(s)),
        Op::Flush { fh, lock_owner } => fs.flush(
            req,
            ino,
            FileHandle(fh),
            LockOwner(lock_owner),
            ReplyEmpty::new(s),
        ),
        Op::OpenDir => fs.opendir(req, ino, ReplyOpen::new(s)),
        Op::ReadDir { fh, offset, size } => {
            fs.readdir(req, ino, FileHandle(fh), offset, ReplyDirectory::new(s, size))
        }
        Op::ReleaseDir { fh } => fs.releasedir(req, ino, FileHandle(fh), ReplyEmpty::new(s)),
        // Directory changes are made synchronously on the bricks.
        Op::FsyncDir => ReplyEmpty::new(s).ok(),
        Op::GetLk(lock) => fs.getlk(req, ino, lock, ReplyLock::new(s)),
        Op::SetLk { lock, sleep } => fs.setlk(req, ino, lock, sleep, ReplyEmpty::new(s)),
        // Permissions are checked by the kernel (default_permissions).
        Op::Access => ReplyEmpty::new(s).ok(),
        Op::Create { name, mode, flags } => fs.create(req, ino, name, mode, flags, ReplyCreate::new(s)),
        // Asked on every open by programs checking for a terminal (isatty); the kernel does
        // not remember a refusal, so it must be cheap and quiet.
        Op::Ioctl => ReplyEmpty::new(s).error(libc::ENOTTY),
        Op::Fallocate {
            fh,
            offset,
            length,
            mode,
        } => fs.fallocate(req, ino, FileHandle(fh), offset, length, mode, ReplyEmpty::new(s)),
        // ENOSYS to an interrupt: the kernel sends no more of them (requests here are not
        // cancelled; a blocking lock waits for its brick).
        Op::Interrupt => ReplyEmpty::new(s).error(libc::ENOSYS),
        Op::Unknown(code) => {
            tracing::debug!("FUSE operation {code} is not implemented");
            ReplyEmpty::new(s).error(libc::ENOSYS)
        }
        Op::Init { .. } => ReplyEmpty::new(s).error(libc::EIO),
        Op::Destroy => ReplyEmpty::new(s).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::request::tests::request;

    struct Nothing;

    impl Filesystem for Nothing {
        fn init(&mut self, _config: &mut KernelConfig) {}
    }

    /// `serve` over one end of a packet socket pair (one message per read, as /dev/fuse).
    fn serving() -> (
        std::os::unix::net::UnixStream,
        std::thread::JoinHandle<std::io::Result<()>>,
    ) {
        use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socket pair");
        let dev = Arc::new(Dev(File::from(a)));
        let t = std::thread::spawn(move || serve(&dev, &Nothing, &mut vec![0u8; 1 << 16]));
        let b = std::os::unix::net::UnixStream::from(b);
        // (An unanswered request fails the test rather than hanging it.)
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        (b, t)
    }

    fn answer(s: &std::os::unix::net::UnixStream) -> (i32, u64) {
        let mut got = [0u8; 64];
        let n = (&*s).read(&mut got).expect("an answer");
        assert_eq!(n, abi::OUT_HEADER);
        let f = abi::Fields(&got);
        (f.u32(4).expect("error") as i32, f.u64(8).expect("unique"))
    }

    #[test]
    fn bad_requests_are_answered_or_dropped_and_serving_goes_on() {
        let (s, t) = serving();
        // A getattr too short for its argument: EINVAL, to the request that sent it.
        let mut short = request(abi::op::GETATTR, 1, &[0; 16], b"");
        short.truncate(abi::IN_HEADER + 4);
        short[..4].copy_from_slice(&((abi::IN_HEADER + 4) as u32).to_le_bytes());
        (&s).write_all(&short).expect("send");
        assert_eq!(answer(&s), (-libc::EINVAL, 7));
        // Shorter than a header: nobody to answer; the next request is served.
        (&s).write_all(&[1, 2, 3]).expect("send");
        (&s).write_all(&request(999, 1, &[], b"")).expect("send");
        assert_eq!(answer(&s), (-libc::ENOSYS, 7));
        // An operation the file system leaves out.
        (&s).write_all(&request(abi::op::READLINK, 1, &[], b""))
            .expect("send");
        assert_eq!(answer(&s), (-libc::ENOSYS, 7));
        drop(s);
        t.join().expect("serving thread").expect("served");
    }

    #[test]
    fn a_notification_names_its_code_and_no_request() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let n = Notifier(Arc::new(Dev(File::from(OwnedFd::from(a)))));
        n.inval_entry(INodeNo(4), OsStr::new("ab")).expect("sent");
        let mut got = [0u8; 64];
        let k = (&b).read(&mut got).expect("read");
        assert_eq!(k, 16 + 16 + 3);
        assert_eq!(
            i32::from_le_bytes(got[4..8].try_into().expect("4")),
            abi::NOTIFY_INVAL_ENTRY
        );
        assert_eq!(u64::from_le_bytes(got[8..16].try_into().expect("8")), 0);
        assert_eq!(&got[32..35], b"ab\0");
    }
}
