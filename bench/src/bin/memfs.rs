//! `memfs DIR`: an in-memory FUSE file system, the ceiling of any FUSE file system here.
//!
//! The storage benchmark mounts it as a row of its own, set up as shoal's mount is (1 MiB
//! requests, two request threads, 10 s attribute and entry timeouts, 1 MiB readahead), so
//! that shoal's rows can be read against what the kernel's FUSE round trips alone allow, with
//! no network and no disk behind them. It keeps files and directories only: what the
//! benchmark's workloads touch. Prints `ready` once mounted and serves until unmounted.

use anyhow::{bail, Context, Result};
use shoal_fuse::kernel::abi::init;
use shoal_fuse::kernel::{
    FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    MountSpec, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, Session, SetAttrIn, TimeOrNow,
};

/// An errno number.
type Errno = i32;
use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use rustix::io::{pread, pwrite};
use shoal_fuse::negative;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

const TTL: Duration = Duration::from_secs(10);
const MAX_IO: u32 = 1 << 20;
const ROOT: u64 = 1;

thread_local! {
    /// Each request thread's buffer for the data of a read.
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

struct Node {
    attr: FileAttr,
    /// A file's data, in a memory file (shmem, as tmpfs keeps files) as long as the file:
    /// the kernel fills its pages as it would a local file's page cache, where user memory
    /// would first be zeroed page by page.
    data: Option<OwnedFd>,
    /// A directory's entries.
    children: BTreeMap<OsString, u64>,
}

struct State {
    nodes: HashMap<u64, Node>,
    next: u64,
}

struct MemFs {
    state: Mutex<State>,
}

fn new_attr(ino: u64, kind: FileType, mode: u32, req: &Request) -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        kind,
        perm: (mode & 0o7777) as u16,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: req.uid(),
        gid: req.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn time(t: Option<TimeOrNow>) -> Option<SystemTime> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    })
}

impl Node {
    fn data(&mut self) -> Result<&OwnedFd, Errno> {
        if self.data.is_none() {
            let fd = memfd_create("memfs", MemfdFlags::CLOEXEC).map_err(io_errno)?;
            self.data = Some(fd);
        }
        self.data.as_ref().ok_or(libc::EIO)
    }

    /// A new size, and the blocks it is counted as (holes included: asking the memory file
    /// would cost every write a system call, and no workload here looks).
    fn set_size(&mut self, size: u64) {
        self.attr.size = size;
        self.attr.blocks = size.div_ceil(512);
    }

    fn resize(&mut self, size: u64) -> Result<(), Errno> {
        ftruncate(self.data()?, size).map_err(io_errno)?;
        self.set_size(size);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let fd = self.data()?;
        let mut done = 0;
        while done < data.len() {
            done += pwrite(fd, &data[done..], offset + done as u64).map_err(io_errno)?;
        }
        self.set_size(self.attr.size.max(offset + data.len() as u64));
        let now = SystemTime::now();
        self.attr.mtime = now;
        self.attr.ctime = now;
        Ok(())
    }

    /// Reads into `buf` (as much as it holds): the bytes read.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        let Some(fd) = &self.data else { return Ok(0) };
        let want = (self.attr.size.saturating_sub(offset) as usize).min(buf.len());
        let mut done = 0;
        while done < want {
            match pread(fd, &mut buf[done..want], offset + done as u64).map_err(io_errno)? {
                0 => break,
                n => done += n,
            }
        }
        Ok(done)
    }
}

fn io_errno(e: rustix::io::Errno) -> Errno {
    e.raw_os_error()
}

impl MemFs {
    fn new() -> Self {
        let mut nodes = HashMap::new();
        let now = SystemTime::now();
        let attr = FileAttr {
            ino: INodeNo(ROOT),
            kind: FileType::Directory,
            perm: 0o755,
            nlink: 2,
            atime: now,
            mtime: now,
            ctime: now,
            ..negative()
        };
        nodes.insert(
            ROOT,
            Node {
                attr,
                data: None,
                children: BTreeMap::new(),
            },
        );
        MemFs {
            state: Mutex::new(State {
                nodes,
                next: ROOT + 1,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `name` in `parent`: the new node's attributes, or why not.
    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: FileType,
        mode: u32,
    ) -> Result<FileAttr, Errno> {
        let mut st = self.state();
        let ino = st.next;
        let dir = st.nodes.get_mut(&parent.0).ok_or(libc::ENOENT)?;
        if dir.attr.kind != FileType::Directory {
            return Err(libc::ENOTDIR);
        }
        if dir.children.contains_key(name) {
            return Err(libc::EEXIST);
        }
        dir.children.insert(name.to_owned(), ino);
        let now = SystemTime::now();
        dir.attr.mtime = now;
        dir.attr.ctime = now;
        if kind == FileType::Directory {
            dir.attr.nlink += 1;
        }
        let attr = new_attr(ino, kind, mode, req);
        st.next += 1;
        st.nodes.insert(
            ino,
            Node {
                attr,
                data: None,
                children: BTreeMap::new(),
            },
        );
        Ok(attr)
    }

    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let mut st = self.state();
        let p = st.nodes.get(&parent.0).ok_or(libc::ENOENT)?;
        let ino = *p.children.get(name).ok_or(libc::ENOENT)?;
        let node = st.nodes.get(&ino).ok_or(libc::ENOENT)?;
        match (dir, node.attr.kind == FileType::Directory) {
            (true, false) => return Err(libc::ENOTDIR),
            (false, true) => return Err(libc::EISDIR),
            (true, true) if !node.children.is_empty() => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        // The kernel keeps no handle on a removed name's data in this benchmark's workloads,
        // so the node goes at once.
        st.nodes.remove(&ino);
        if let Some(p) = st.nodes.get_mut(&parent.0) {
            p.children.remove(name);
            let now = SystemTime::now();
            p.attr.mtime = now;
            p.attr.ctime = now;
            if dir {
                p.attr.nlink -= 1;
            }
        }
        Ok(())
    }
}

impl Filesystem for MemFs {
    fn init(&mut self, config: &mut KernelConfig) {
        // As shoal's mount asks.
        config.set_max_write(MAX_IO);
        config.set_max_readahead(MAX_IO);
        config.set_max_background(64);
        config.add_capabilities(init::PARALLEL_DIROPS | init::ASYNC_DIO);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let st = self.state();
        let Some(dir) = st.nodes.get(&parent.0) else {
            return reply.error(libc::ENOENT);
        };
        match dir.children.get(name).and_then(|i| st.nodes.get(i)) {
            Some(n) => reply.entry(&TTL, &n.attr, Generation(0)),
            None => reply.entry(&TTL, &negative(), Generation(0)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().nodes.get(&ino.0) {
            Some(n) => reply.attr(&TTL, &n.attr),
            None => reply.error(libc::ENOENT),
        }
    }

    fn setattr(&self, _req: &Request, ino: INodeNo, set: SetAttrIn, reply: ReplyAttr) {
        let SetAttrIn {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            ..
        } = set;
        let mut st = self.state();
        let Some(n) = st.nodes.get_mut(&ino.0) else {
            return reply.error(libc::ENOENT);
        };
        if let Some(m) = mode {
            n.attr.perm = (m & 0o7777) as u16;
        }
        n.attr.uid = uid.unwrap_or(n.attr.uid);
        n.attr.gid = gid.unwrap_or(n.attr.gid);
        if let Some(s) = size {
            if let Err(e) = n.resize(s) {
                return reply.error(e);
            }
            n.attr.mtime = SystemTime::now();
        }
        n.attr.atime = time(atime).unwrap_or(n.attr.atime);
        n.attr.mtime = time(mtime).unwrap_or(n.attr.mtime);
        n.attr.ctime = SystemTime::now();
        reply.attr(&TTL, &n.attr);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, reply: ReplyEntry) {
        match self.make(req, parent, name, FileType::Directory, mode) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.make(req, parent, name, FileType::RegularFile, mode) {
            Ok(a) => reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: i32, reply: ReplyOpen) {
        // Nothing but this mount changes a file, so the kernel's pages stay good (shoal keeps
        // them too when the file is the version they hold).
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, size: u32, reply: ReplyData) {
        BUF.with_borrow_mut(|buf| {
            buf.resize(buf.len().max(size as usize), 0);
            let read = match self.state().nodes.get(&ino.0) {
                Some(n) => n.read(offset, &mut buf[..size as usize]),
                None => Err(libc::ENOENT),
            };
            match read {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(e),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: u32,
        reply: ReplyWrite,
    ) {
        match self.state().nodes.get_mut(&ino.0) {
            Some(n) => match n.write(offset, data) {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => reply.error(e),
            },
            None => reply.error(libc::ENOENT),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let st = self.state();
        let Some(dir) = st.nodes.get(&ino.0) else {
            return reply.error(libc::ENOENT);
        };
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".")),
            (ino.0, FileType::Directory, OsStr::new("..")),
        ];
        let kids = dir.children.iter().map(|(name, i)| {
            let kind = st.nodes.get(i).map_or(FileType::RegularFile, |n| n.attr.kind);
            (*i, kind, name.as_os_str())
        });
        for (k, (i, kind, name)) in dots.into_iter().chain(kids).enumerate().skip(offset as usize) {
            if reply.add(INodeNo(i), k as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let free = 16u64 << 30;
        reply.statfs(
            free / 4096,
            free / 4096,
            free / 4096,
            1 << 20,
            1 << 20,
            4096,
            255,
            4096,
        );
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(libc::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }
}

fn main() -> Result<()> {
    let dir = match std::env::args_os().nth(1) {
        Some(d) => std::path::PathBuf::from(d),
        None => bail!("usage: memfs DIR"),
    };
    // A memory file per file: as many descriptors as the benchmark makes files.
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    )
    .context("cannot raise the open files limit")?;
    let spec = MountSpec {
        fsname: "memfs".into(),
        subtype: "memfs".into(),
        allow_other: false,
        default_permissions: true,
        read_only: false,
        dev_suid: false,
        threads: 2,
        // As shoal's mount: by io_uring where the kernel offers it.
        uring: true,
    };
    let dir = dir
        .canonicalize()
        .with_context(|| format!("no directory {}", dir.display()))?;
    let mut session = Session::mount(MemFs::new(), &dir, &spec)
        .with_context(|| format!("cannot mount on {}", dir.display()))?;
    let ra = dir.clone();
    session.on_init(move || shoal_fuse::raise_readahead(&ra));
    println!("ready");
    session.run().context("memfs session")?;
    Ok(())
}
