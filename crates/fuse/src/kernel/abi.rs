//! The kernel's FUSE wire format (`linux/fuse.h`, protocol 7.40): operation numbers, flags,
//! and the fixed-size structures, read and written field by field in little-endian order
//! (FUSE is host-endian; shoal builds for little-endian Linux only).

/// `struct fuse_in_header`.
pub const IN_HEADER: usize = 40;
/// `struct fuse_out_header`.
pub const OUT_HEADER: usize = 16;

/// The protocol version answered to the kernel's INIT.
pub const MAJOR: u32 = 7;
pub const MINOR: u32 = 40;
/// The oldest kernel protocol served: the argument layouts below are those of 7.23 on.
pub const OLDEST_MINOR: u32 = 23;

pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const RENAME2: u32 = 45;
}

/// INIT flags: the first 32 in `flags`, the rest in `flags2` (with `INIT_EXT`).
pub mod init {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const POSIX_LOCKS: u64 = 1 << 1;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const ASYNC_DIO: u64 = 1 << 15;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const CACHE_SYMLINKS: u64 = 1 << 23;
    pub const HANDLE_KILLPRIV_V2: u64 = 1 << 28;
    pub const INIT_EXT: u64 = 1 << 30;
    pub const OVER_IO_URING: u64 = 1 << 41;
}

/// `fuse_setattr_in.valid`.
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
}

/// `fuse_open_out.open_flags`.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// `fuse_write_in.write_flags`: the writer lacks CAP_FSETID.
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `fuse_getattr_in.getattr_flags`: `fh` is set.
pub const GETATTR_FH: u32 = 1 << 0;
/// `fuse_fsync_in.fsync_flags`: data only.
pub const FSYNC_FDATASYNC: u32 = 1 << 0;
/// Notification codes, sent in `fuse_out_header.error` with `unique` 0.
pub const NOTIFY_INVAL_INODE: i32 = 2;
pub const NOTIFY_INVAL_ENTRY: i32 = 3;
/// `ioctl(FUSE_DEV_IOC_CLONE)`: `_IOR(229, 0, uint32_t)`.
pub const DEV_IOC_CLONE: u64 = 0x8004_e500;

/// Size of each operation's fixed argument, the first after `fuse_in_header`.
pub fn arg_size(opcode: u32) -> usize {
    match opcode {
        op::FORGET | op::MKDIR | op::OPEN | op::OPENDIR | op::GETXATTR | op::LISTXATTR => 8,
        op::ACCESS | op::INTERRUPT | op::BATCH_FORGET | op::RENAME | op::LINK | op::SETXATTR => 8,
        op::GETATTR | op::CREATE | op::FSYNC | op::FSYNCDIR | op::MKNOD | op::RENAME2 => 16,
        op::RELEASE | op::RELEASEDIR | op::FLUSH => 24,
        op::FALLOCATE | op::IOCTL => 32,
        op::READ | op::READDIR | op::WRITE => 40,
        op::GETLK | op::SETLK | op::SETLKW => 48,
        op::INIT => 16,
        op::SETATTR => 88,
        _ => 0,
    }
}

/// Reads little-endian fields of a structure, each bounds-checked.
#[derive(Clone, Copy)]
pub struct Fields<'a>(pub &'a [u8]);

impl Fields<'_> {
    pub fn u32(&self, at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(
            self.0.get(at..at.checked_add(4)?)?.try_into().ok()?,
        ))
    }

    pub fn u64(&self, at: usize) -> Option<u64> {
        Some(u64::from_le_bytes(
            self.0.get(at..at.checked_add(8)?)?.try_into().ok()?,
        ))
    }
}

/// Appends little-endian fields.
pub struct Out(pub Vec<u8>);

impl Out {
    pub fn with_capacity(n: usize) -> Out {
        Out(Vec::with_capacity(n))
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Zero bytes up to a multiple of 8 (directory entries are 8-byte aligned).
    pub fn pad8(&mut self) -> &mut Self {
        let n = self.0.len().next_multiple_of(8);
        self.0.resize(n, 0);
        self
    }

    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

/// `struct fuse_out_header`.
pub fn out_header(len: usize, error: i32, unique: u64) -> [u8; OUT_HEADER] {
    let mut h = [0u8; OUT_HEADER];
    h[..4].copy_from_slice(&(len as u32).to_le_bytes());
    h[4..8].copy_from_slice(&error.to_le_bytes());
    h[8..].copy_from_slice(&unique.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_out_of_bounds_are_none() {
        let b = [1u8, 0, 0, 0, 2, 0, 0];
        let f = Fields(&b);
        assert_eq!(f.u32(0), Some(1));
        assert_eq!(f.u32(4), None);
        assert_eq!(f.u64(0), None);
        assert_eq!(f.u32(usize::MAX - 2), None);
    }

    #[test]
    fn directory_entries_pad_to_eight_bytes() {
        let mut o = Out::with_capacity(16);
        o.u32(1).u16(2).pad8();
        assert_eq!(o.0.len(), 8);
        o.pad8();
        assert_eq!(o.0.len(), 8);
    }
}
