//! Thin helpers over the system calls the store needs.

use proto::{Attr, Errno, FileId, FileKind, Timespec};
use rustix::fs::Stat;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

/// Largest xattr value we read or write (Linux's XATTR_SIZE_MAX).
pub const XATTR_MAX: usize = 64 * 1024;

/// A path that reaches `name` inside the directory open as `dir`, through /proc: it lets the
/// path-only syscalls (l*xattr) work relative to a descriptor without following a final
/// symlink. Without a name it is the descriptor's magic link (for open(2) and linkat(2)).
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

/// Attributes as the client sees them. A non-directory's link count leaves out the id
/// index's own hard link.
pub fn attr_from_stat(id: FileId, st: &Stat) -> Result<Attr, Errno> {
    let kind = FileKind::from_mode(st.st_mode).ok_or(Errno::EIO)?;
    let nlink = if kind == FileKind::Dir {
        st.st_nlink
    } else {
        st.st_nlink.saturating_sub(1)
    };
    Ok(Attr {
        id,
        kind,
        perm: st.st_mode & 0o7777,
        nlink: nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        blksize: st.st_blksize as u32,
        atime: Timespec {
            sec: st.st_atime,
            nsec: st.st_atime_nsec as u32,
        },
        mtime: Timespec {
            sec: st.st_mtime,
            nsec: st.st_mtime_nsec as u32,
        },
        ctime: Timespec {
            sec: st.st_ctime,
            nsec: st.st_ctime_nsec as u32,
        },
    })
}

/// Where an xattr call goes: an open descriptor (f*xattr), or a path whose last component
/// must not be followed (l*xattr). A /proc/self/fd/N path with no component after it would
/// name the magic link itself, so descriptors must use the descriptor form.
pub enum XTarget<'a> {
    Fd(BorrowedFd<'a>),
    Path(CString),
}

fn cname(name: &[u8]) -> Result<CString, Errno> {
    CString::new(name).map_err(|_| Errno::EINVAL)
}

fn get_into(t: &XTarget<'_>, name: &CString, buf: &mut [u8]) -> rustix::io::Result<usize> {
    match t {
        XTarget::Fd(fd) => rustix::fs::fgetxattr(fd, name.as_c_str(), buf),
        XTarget::Path(p) => rustix::fs::lgetxattr(p.as_c_str(), name.as_c_str(), buf),
    }
}

fn list_into(t: &XTarget<'_>, buf: &mut [u8]) -> rustix::io::Result<usize> {
    match t {
        XTarget::Fd(fd) => rustix::fs::flistxattr(fd, buf),
        XTarget::Path(p) => rustix::fs::llistxattr(p.as_c_str(), buf),
    }
}

/// Reads an xattr; None if absent.
pub fn get(t: &XTarget<'_>, name: &[u8]) -> Result<Option<Vec<u8>>, Errno> {
    let name = cname(name)?;
    let mut buf = vec![0u8; 256];
    loop {
        match get_into(t, &name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::NODATA) => return Ok(None),
            Err(rustix::io::Errno::RANGE) if buf.len() < XATTR_MAX => {
                let need = get_into(t, &name, &mut [0u8; 0][..]).map_err(errno)?;
                buf.resize(need.clamp(buf.len() * 2, XATTR_MAX), 0);
            }
            Err(e) => return Err(errno(e)),
        }
    }
}

/// Lists xattr names.
pub fn list(t: &XTarget<'_>) -> Result<Vec<Vec<u8>>, Errno> {
    let mut buf = vec![0u8; 1024];
    let n = loop {
        match list_into(t, &mut buf) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) if buf.len() < XATTR_MAX => {
                let need = list_into(t, &mut [0u8; 0][..]).map_err(errno)?;
                buf.resize(need.clamp(buf.len() * 2, XATTR_MAX), 0);
            }
            Err(e) => return Err(errno(e)),
        }
    };
    Ok(buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

pub fn set(t: &XTarget<'_>, name: &[u8], value: &[u8], flags: u32) -> Result<(), Errno> {
    let name = cname(name)?;
    let flags = rustix::fs::XattrFlags::from_bits(flags).ok_or(Errno::EINVAL)?;
    match t {
        XTarget::Fd(fd) => rustix::fs::fsetxattr(fd, name.as_c_str(), value, flags),
        XTarget::Path(p) => rustix::fs::lsetxattr(p.as_c_str(), name.as_c_str(), value, flags),
    }
    .map_err(errno)
}

pub fn remove(t: &XTarget<'_>, name: &[u8]) -> Result<(), Errno> {
    let name = cname(name)?;
    match t {
        XTarget::Fd(fd) => rustix::fs::fremovexattr(fd, name.as_c_str()),
        XTarget::Path(p) => rustix::fs::lremovexattr(p.as_c_str(), name.as_c_str()),
    }
    .map_err(errno)
}
