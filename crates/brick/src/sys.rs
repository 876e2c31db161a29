//! Thin helpers over the system calls the store needs.

use proto::{Attr, Errno, FileId, FileKind, Timespec};
use rustix::fs::Stat;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};

/// Largest xattr value we read or write (Linux's XATTR_SIZE_MAX).
pub const XATTR_MAX: usize = 64 * 1024;

/// A path that reaches `name` inside the directory open as `dir`, through /proc: it lets the
/// path-only syscalls (l*xattr) work relative to a descriptor without following a final
/// symlink.
pub fn proc_path(dir: impl AsFd, name: Option<&[u8]>) -> CString {
    let mut p = format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd()).into_bytes();
    if let Some(n) = name {
        p.push(b'/');
        p.extend_from_slice(n);
    }
    // Names are checked for NUL before they get here; a NUL would make this fail safely.
    CString::new(p).unwrap_or_default()
}

pub fn errno(e: rustix::io::Errno) -> Errno {
    Errno(e.raw_os_error())
}

pub fn attr_from_stat(id: FileId, st: &Stat) -> Result<Attr, Errno> {
    let kind = FileKind::from_mode(st.st_mode).ok_or(Errno::EIO)?;
    Ok(Attr {
        id,
        kind,
        perm: st.st_mode & 0o7777,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        blksize: st.st_blksize as u32,
        atime: Timespec { sec: st.st_atime, nsec: st.st_atime_nsec as u32 },
        mtime: Timespec { sec: st.st_mtime, nsec: st.st_mtime_nsec as u32 },
        ctime: Timespec { sec: st.st_ctime, nsec: st.st_ctime_nsec as u32 },
    })
}

/// Reads an xattr of the object at `path` (not following a final symlink); None if absent.
pub fn lget(path: &CString, name: &str) -> Result<Option<Vec<u8>>, Errno> {
    lget_raw(path, name.as_bytes())
}

pub fn lget_raw(path: &CString, name: &[u8]) -> Result<Option<Vec<u8>>, Errno> {
    let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::lgetxattr(path.as_c_str(), name.as_c_str(), &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::NODATA) => return Ok(None),
            Err(rustix::io::Errno::RANGE) if buf.len() < XATTR_MAX => {
                let need = rustix::fs::lgetxattr(path.as_c_str(), name.as_c_str(), &mut [0u8; 0][..])
                    .map_err(errno)?;
                buf.resize(need.clamp(buf.len() * 2, XATTR_MAX), 0);
            }
            Err(e) => return Err(errno(e)),
        }
    }
}

/// Lists the xattr names of the object at `path` (not following a final symlink).
pub fn llist(path: &CString) -> Result<Vec<Vec<u8>>, Errno> {
    let mut buf = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::llistxattr(path.as_c_str(), &mut buf[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) if buf.len() < XATTR_MAX => {
                let need =
                    rustix::fs::llistxattr(path.as_c_str(), &mut [0u8; 0][..]).map_err(errno)?;
                buf.resize(need.clamp(buf.len() * 2, XATTR_MAX), 0);
            }
            Err(e) => return Err(errno(e)),
        }
    };
    Ok(buf[..n].split(|&b| b == 0).filter(|s| !s.is_empty()).map(<[u8]>::to_vec).collect())
}

pub fn lset(path: &CString, name: &[u8], value: &[u8], flags: u32) -> Result<(), Errno> {
    let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
    let flags = rustix::fs::XattrFlags::from_bits(flags).ok_or(Errno::EINVAL)?;
    rustix::fs::lsetxattr(path.as_c_str(), name.as_c_str(), value, flags).map_err(errno)
}

pub fn lremove(path: &CString, name: &[u8]) -> Result<(), Errno> {
    let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
    rustix::fs::lremovexattr(path.as_c_str(), name.as_c_str()).map_err(errno)
}
