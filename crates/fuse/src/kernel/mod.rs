//! The mount's FUSE request layer: the kernel's wire protocol, read from `/dev/fuse` and
//! answered by a [`Filesystem`].
//!
//! Written here rather than taken from fuser (which the mount used before) because the
//! mount needs control over how requests reach it that fuser does not give: which thread
//! and CPU serves a request, and the kernel's FUSE over io_uring transport, whose requests
//! fuser cannot be handed. It keeps to what shoal's file system answers; anything else is
//! answered ENOSYS, as the kernel expects of an operation a file system lacks.

pub mod abi;
mod reply;
mod request;
mod session;
mod uring;

pub use reply::{
    Channel, FopenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Sender,
};
pub use request::{LockIn, Request, SetAttrIn, TimeOrNow};
pub use session::{MountSpec, Notifier, Session, Unmounter};

use std::ffi::OsStr;
use std::path::Path;
use std::time::SystemTime;

/// The kernel's number for a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct INodeNo(pub u64);

/// An open file's or directory's handle, as this file system numbered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileHandle(pub u64);

/// Who holds POSIX locks: the kernel's number for the open file table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LockOwner(pub u64);

/// A node number's generation (always 0 here: numbers are not reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    NamedPipe,
    CharDevice,
    BlockDevice,
    Directory,
    RegularFile,
    Symlink,
    Socket,
}

/// A node's attributes as the kernel is told them.
#[derive(Clone, Copy, Debug)]
pub struct FileAttr {
    pub ino: INodeNo,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub kind: FileType,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    pub flags: u32,
}

/// What the file system asks of the kernel at INIT.
#[derive(Debug)]
pub struct KernelConfig {
    offered: u64,
    wanted: u64,
    pub(crate) max_write: u32,
    pub(crate) max_readahead: u32,
    pub(crate) max_background: u16,
}

impl KernelConfig {
    fn new(offered: u64, max_readahead: u32) -> KernelConfig {
        KernelConfig {
            offered,
            wanted: 0,
            max_write: 128 << 10,
            max_readahead,
            max_background: 16,
        }
    }

    /// INIT flags the kernel offers (`abi::init`).
    pub fn capabilities(&self) -> u64 {
        self.offered
    }

    /// Asks for INIT flags; only those the kernel offers are taken.
    pub fn add_capabilities(&mut self, flags: u64) {
        self.wanted |= flags & self.offered;
    }

    pub fn set_max_write(&mut self, bytes: u32) {
        self.max_write = bytes.clamp(4096, 1 << 20);
    }

    /// At most what the kernel offered.
    pub fn set_max_readahead(&mut self, bytes: u32) {
        self.max_readahead = self.max_readahead.min(bytes);
    }

    pub fn set_max_background(&mut self, n: u16) {
        self.max_background = n.max(1);
    }
}

/// A file system served to the kernel. Each method answers through its reply object,
/// from any thread, at any time; requests run concurrently. An operation left out
/// answers ENOSYS.
#[allow(clippy::too_many_arguments, unused_variables)]
pub trait Filesystem: Send + Sync + 'static {
    fn init(&mut self, config: &mut KernelConfig);
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply.error(libc::ENOSYS)
    }
    /// The kernel dropped `nlookup` references to `ino` (no reply).
    fn forget(&self, ino: INodeNo, nlookup: u64) {}
    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.error(libc::ENOSYS)
    }
    fn setattr(&self, req: &Request, ino: INodeNo, set: SetAttrIn, reply: ReplyAttr) {
        reply.error(libc::ENOSYS)
    }
    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        reply.error(libc::ENOSYS)
    }
    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, rdev: u32, reply: ReplyEntry) {
        reply.error(libc::ENOSYS)
    }
    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, reply: ReplyEntry) {
        reply.error(libc::ENOSYS)
    }
    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply.error(libc::ENOSYS)
    }
    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply.error(libc::ENOSYS)
    }
    fn symlink(&self, req: &Request, parent: INodeNo, name: &OsStr, target: &Path, reply: ReplyEntry) {
        reply.error(libc::ENOSYS)
    }
    /// `flags`: `RENAME_NOREPLACE`, `RENAME_EXCHANGE`, `RENAME_WHITEOUT`.
    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(libc::ENOSYS)
    }
    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        reply.error(libc::ENOSYS)
    }
    fn open(&self, req: &Request, ino: INodeNo, flags: i32, reply: ReplyOpen) {
        reply.error(libc::ENOSYS)
    }
    fn read(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, size: u32, reply: ReplyData) {
        reply.error(libc::ENOSYS)
    }
    /// `write_flags`: `abi::WRITE_KILL_SUIDGID` and the like.
    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: u32,
        reply: ReplyWrite,
    ) {
        reply.error(libc::ENOSYS)
    }
    fn flush(&self, req: &Request, ino: INodeNo, fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.error(libc::ENOSYS)
    }
    fn release(&self, req: &Request, ino: INodeNo, fh: FileHandle, reply: ReplyEmpty) {
        reply.error(libc::ENOSYS)
    }
    fn fsync(&self, req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        reply.error(libc::ENOSYS)
    }
    fn opendir(&self, req: &Request, ino: INodeNo, reply: ReplyOpen) {
        reply.error(libc::ENOSYS)
    }
    fn readdir(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, reply: ReplyDirectory) {
        reply.error(libc::ENOSYS)
    }
    fn releasedir(&self, req: &Request, ino: INodeNo, fh: FileHandle, reply: ReplyEmpty) {
        reply.error(libc::ENOSYS)
    }
    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        reply.error(libc::ENOSYS)
    }
    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(libc::ENOSYS)
    }
    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply.error(libc::ENOSYS)
    }
    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply.error(libc::ENOSYS)
    }
    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply.error(libc::ENOSYS)
    }
    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(libc::ENOSYS)
    }
    fn getlk(&self, req: &Request, ino: INodeNo, lock: LockIn, reply: ReplyLock) {
        reply.error(libc::ENOSYS)
    }
    fn setlk(&self, req: &Request, ino: INodeNo, lock: LockIn, sleep: bool, reply: ReplyEmpty) {
        reply.error(libc::ENOSYS)
    }
    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(libc::ENOSYS)
    }
}
