//! A small in-memory file system that speaks the FUSE wire protocol itself, over either of
//! the kernel's transports: reads and writes of `/dev/fuse`, or FUSE over io_uring (Linux
//! 6.14 and later, `enable_uring` set on the fuse module). The same request handling runs
//! behind both, so `fusewire` measures what the transport alone costs a small file.
//!
//! Written by hand because fuser 0.18, which the mount uses, has no io_uring transport and no
//! way to hand it requests that did not come from its own `/dev/fuse` reads. It keeps only
//! what the benchmark's small-file work touches: one directory level, files, their data.

use std::collections::HashMap;
use std::sync::Mutex;

/// `struct fuse_in_header`.
pub const IN_HEADER: usize = 40;
/// `struct fuse_out_header`.
pub const OUT_HEADER: usize = 16;
const ROOT: u64 = 1;
/// Entry and attribute timeouts, as shoal's mount.
const TTL_SECS: u64 = 10;
/// The largest file it keeps (in memory): bigger sizes are refused with EFBIG.
const MAX_FILE: usize = 1 << 30;

/// INIT flags (`linux/fuse.h`): the first 32 in `flags`, the rest in `flags2`.
const ASYNC_READ: u64 = 1 << 0;
const PARALLEL_DIROPS: u64 = 1 << 18;
const MAX_PAGES: u64 = 1 << 22;
const HANDLE_KILLPRIV_V2: u64 = 1 << 28;
const INIT_EXT: u64 = 1 << 30;
pub const OVER_IO_URING: u64 = 1 << 41;

mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const GETXATTR: u32 = 22;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
}

/// Size of each operation's fixed header, the first argument after `fuse_in_header` (over
/// io_uring it travels apart from the rest, in the entry's `op_in`).
pub fn arg_size(opcode: u32) -> usize {
    match opcode {
        op::FORGET | op::MKDIR | op::OPEN | op::OPENDIR | op::GETXATTR | op::ACCESS => 8,
        op::BATCH_FORGET | op::INTERRUPT => 8,
        op::GETATTR | op::CREATE | op::FSYNC => 16,
        op::RELEASE | op::RELEASEDIR | op::FLUSH => 24,
        op::READ | op::READDIR | op::WRITE => 40,
        op::INIT => 64,
        op::SETATTR => 88,
        _ => 0,
    }
}

/// One request: the header's fields, the operation's fixed header and what follows it.
pub struct Request<'a> {
    pub opcode: u32,
    pub unique: u64,
    nodeid: u64,
    arg: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Request<'a> {
    /// A request as `/dev/fuse` delivers it, in one piece.
    pub fn parse(buf: &'a [u8]) -> Option<Request<'a>> {
        let h = buf.get(..IN_HEADER)?;
        let opcode = u32_at(h, 4)?;
        let body = &buf[IN_HEADER..];
        let n = arg_size(opcode).min(body.len());
        Some(Request {
            opcode,
            unique: u64_at(h, 8)?,
            nodeid: u64_at(h, 16)?,
            arg: &body[..n],
            rest: &body[n..],
        })
    }

    /// A request as an io_uring entry delivers it: the header, the operation's fixed header
    /// and the payload, each in its own buffer.
    pub fn parts(header: &'a [u8], arg: &'a [u8], rest: &'a [u8]) -> Option<Request<'a>> {
        let h = header.get(..IN_HEADER)?;
        let opcode = u32_at(h, 4)?;
        Some(Request {
            opcode,
            unique: u64_at(h, 8)?,
            nodeid: u64_at(h, 16)?,
            arg: arg.get(..arg_size(opcode))?,
            rest,
        })
    }

    fn name(&self) -> &'a [u8] {
        let end = self.rest.iter().position(|&c| c == 0).unwrap_or(self.rest.len());
        &self.rest[..end]
    }
}

/// A file size this file system keeps, or EFBIG.
fn capped(size: u64) -> Result<usize, i32> {
    usize::try_from(size)
        .ok()
        .filter(|s| *s <= MAX_FILE)
        .ok_or(libc::EFBIG)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// What a request gets back.
pub enum Answer {
    /// Nothing (forgets, interrupts).
    None,
    Error(i32),
    Ok(Vec<u8>),
}

impl Answer {
    /// The whole reply, `fuse_out_header` first, into `out`; false when there is none.
    pub fn encode(&self, unique: u64, out: &mut Vec<u8>) -> bool {
        out.clear();
        let (error, body): (i32, &[u8]) = match self {
            Answer::None => return false,
            Answer::Error(e) => (-e, &[]),
            Answer::Ok(b) => (0, b),
        };
        out.extend_from_slice(&((OUT_HEADER + body.len()) as u32).to_le_bytes());
        out.extend_from_slice(&error.to_le_bytes());
        out.extend_from_slice(&unique.to_le_bytes());
        out.extend_from_slice(body);
        true
    }
}

struct Node {
    dir: bool,
    mode: u32,
    data: Vec<u8>,
    children: HashMap<Vec<u8>, u64>,
}

impl Node {
    fn new(dir: bool, mode: u32) -> Node {
        Node {
            dir,
            mode: mode & 0o7777,
            data: Vec::new(),
            children: HashMap::new(),
        }
    }
}

/// The file system.
pub struct MemFs {
    nodes: Mutex<(HashMap<u64, Node>, u64)>,
    /// Whether INIT offers FUSE over io_uring.
    uring: bool,
}

fn put(out: &mut Vec<u8>, words: &[u64]) {
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

fn put32(out: &mut Vec<u8>, words: &[u32]) {
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

/// `struct fuse_attr`.
fn attr(out: &mut Vec<u8>, ino: u64, n: &Node) {
    let size = n.data.len() as u64;
    put(out, &[ino, size, size.div_ceil(512), 0, 0, 0]);
    let (kind, nlink) = match n.dir {
        true => (libc::S_IFDIR, 2),
        false => (libc::S_IFREG, 1),
    };
    put32(out, &[0, 0, 0, kind | n.mode, nlink, 0, 0, 0, 4096, 0]);
}

/// `struct fuse_entry_out`; `n` None for a remembered absence.
fn entry(out: &mut Vec<u8>, ino: u64, n: Option<&Node>) {
    put(out, &[ino, 0, TTL_SECS, TTL_SECS, 0]);
    match n {
        Some(n) => attr(out, ino, n),
        None => out.resize(out.len() + 88, 0),
    }
}

/// `struct fuse_attr_out`.
fn attr_out(out: &mut Vec<u8>, ino: u64, n: &Node) {
    put(out, &[TTL_SECS, 0]);
    attr(out, ino, n);
}

impl MemFs {
    pub fn new(uring: bool) -> MemFs {
        let root = Node::new(true, 0o755);
        MemFs {
            nodes: Mutex::new((HashMap::from([(ROOT, root)]), ROOT + 1)),
            uring,
        }
    }

    pub fn handle(&self, r: &Request) -> Answer {
        match self.answer(r) {
            Ok(Some(body)) => Answer::Ok(body),
            Ok(None) => Answer::None,
            Err(e) => Answer::Error(e),
        }
    }

    fn answer(&self, r: &Request) -> Result<Option<Vec<u8>>, i32> {
        let mut g = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let (nodes, next) = &mut *g;
        let mut out = Vec::new();
        let bad = libc::EINVAL;
        match r.opcode {
            op::INIT => {
                let offered =
                    u64::from(u32_at(r.arg, 12).ok_or(bad)?) | u64::from(u32_at(r.arg, 16).ok_or(bad)?) << 32;
                let mut wanted = ASYNC_READ | PARALLEL_DIROPS | MAX_PAGES | HANDLE_KILLPRIV_V2 | INIT_EXT;
                if self.uring {
                    wanted |= OVER_IO_URING;
                }
                let flags = offered & wanted;
                if self.uring && flags & OVER_IO_URING == 0 {
                    eprintln!("the kernel does not offer FUSE over io_uring");
                }
                put32(&mut out, &[7, 45, 1 << 20, flags as u32]);
                out.extend_from_slice(&64u16.to_le_bytes()); // max_background
                out.extend_from_slice(&48u16.to_le_bytes()); // congestion_threshold
                put32(&mut out, &[1 << 20, 1]); // max_write, time_gran
                out.extend_from_slice(&256u16.to_le_bytes()); // max_pages
                out.extend_from_slice(&0u16.to_le_bytes()); // map_alignment
                put32(&mut out, &[(flags >> 32) as u32]);
                out.resize(64, 0);
            }
            op::LOOKUP => {
                let p = nodes.get(&r.nodeid).ok_or(libc::ENOENT)?;
                let ino = p.children.get(r.name()).copied();
                match ino.and_then(|i| Some((i, nodes.get(&i)?))) {
                    Some((ino, n)) => entry(&mut out, ino, Some(n)),
                    None => entry(&mut out, 0, None),
                }
            }
            op::FORGET | op::BATCH_FORGET | op::INTERRUPT => return Ok(None),
            op::GETATTR => attr_out(&mut out, r.nodeid, nodes.get(&r.nodeid).ok_or(libc::ENOENT)?),
            op::SETATTR => {
                let n = nodes.get_mut(&r.nodeid).ok_or(libc::ENOENT)?;
                let valid = u32_at(r.arg, 0).ok_or(bad)?;
                // FATTR_SIZE, FATTR_MODE; `fuse_setattr_in` has the size at 16, the mode at 68.
                if valid & (1 << 3) != 0 {
                    let size = u64_at(r.arg, 16).ok_or(bad)?;
                    n.data.resize(capped(size)?, 0);
                }
                if valid & 1 != 0 {
                    n.mode = u32_at(r.arg, 68).ok_or(bad)? & 0o7777;
                }
                attr_out(&mut out, r.nodeid, n);
            }
            op::MKDIR | op::CREATE => {
                let dir = r.opcode == op::MKDIR;
                let mode = u32_at(r.arg, if dir { 0 } else { 4 }).ok_or(bad)?;
                let p = nodes.get_mut(&r.nodeid).ok_or(libc::ENOENT)?;
                if p.children.contains_key(r.name()) {
                    return Err(libc::EEXIST);
                }
                let ino = *next;
                *next += 1;
                p.children.insert(r.name().to_vec(), ino);
                let n = Node::new(dir, mode);
                entry(&mut out, ino, Some(&n));
                if !dir {
                    put(&mut out, &[ino, 0]); // fuse_open_out
                }
                nodes.insert(ino, n);
            }
            op::UNLINK | op::RMDIR => {
                let p = nodes.get_mut(&r.nodeid).ok_or(libc::ENOENT)?;
                let ino = p.children.remove(r.name()).ok_or(libc::ENOENT)?;
                nodes.remove(&ino);
            }
            op::OPEN | op::OPENDIR => put(&mut out, &[r.nodeid, 0]),
            op::READ => {
                let n = nodes.get(&r.nodeid).ok_or(libc::ENOENT)?;
                let at = usize::try_from(u64_at(r.arg, 8).ok_or(bad)?).unwrap_or(usize::MAX);
                let size = u32_at(r.arg, 16).ok_or(bad)? as usize;
                if let Some(d) = n.data.get(at..) {
                    out.extend_from_slice(&d[..size.min(d.len())]);
                }
            }
            op::WRITE => {
                let n = nodes.get_mut(&r.nodeid).ok_or(libc::ENOENT)?;
                let at = u64_at(r.arg, 8).ok_or(bad)?;
                let size = u32_at(r.arg, 16).ok_or(bad)? as usize;
                let data = r.rest.get(..size).ok_or(bad)?;
                let end = capped(at.saturating_add(size as u64))?;
                let at = end - size;
                if n.data.len() < end {
                    n.data.resize(end, 0);
                }
                n.data[at..end].copy_from_slice(data);
                put32(&mut out, &[size as u32, 0]);
            }
            op::STATFS => {
                put(&mut out, &[1 << 20, 1 << 19, 1 << 19, 1 << 20, 1 << 19]);
                put32(&mut out, &[4096, 255, 4096, 0]);
                out.resize(80, 0);
            }
            // An empty listing: the benchmark removes what it made by name.
            op::READDIR => {}
            op::RELEASE | op::RELEASEDIR | op::FLUSH | op::FSYNC | op::ACCESS | op::DESTROY => {}
            op::GETXATTR => return Err(libc::ENODATA),
            _ => return Err(libc::ENOSYS),
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(opcode: u32, nodeid: u64, arg: &[u8], rest: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        put32(&mut b, &[(IN_HEADER + arg.len() + rest.len()) as u32, opcode]);
        put(&mut b, &[7, nodeid]);
        b.resize(IN_HEADER, 0);
        b.extend_from_slice(arg);
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn a_file_is_created_written_and_read_back() {
        let fs = MemFs::new(false);
        let mut create = Vec::new();
        put32(&mut create, &[0, 0o644, 0, 0]);
        let buf = request(op::CREATE, ROOT, &create, b"f\0");
        let Answer::Ok(made) = fs.handle(&Request::parse(&buf).expect("parse")) else {
            panic!("create failed")
        };
        let ino = u64_at(&made, 0).expect("ino");
        let mut write = Vec::new();
        put(&mut write, &[ino, 3]);
        put32(&mut write, &[4, 0]);
        write.resize(40, 0);
        let buf = request(op::WRITE, ino, &write, b"abcd");
        assert!(matches!(
            fs.handle(&Request::parse(&buf).expect("parse")),
            Answer::Ok(_)
        ));
        let mut read = Vec::new();
        put(&mut read, &[ino, 0]);
        put32(&mut read, &[100, 0]);
        read.resize(40, 0);
        let buf = request(op::READ, ino, &read, b"");
        let Answer::Ok(data) = fs.handle(&Request::parse(&buf).expect("parse")) else {
            panic!("read failed")
        };
        assert_eq!(data, b"\0\0\0abcd");
    }

    #[test]
    fn setattr_changes_the_mode_and_refuses_absurd_sizes() {
        let fs = MemFs::new(false);
        // fuse_setattr_in: valid, padding, fh, size, lock_owner, atime, mtime, ctime,
        // atimensec, mtimensec, ctimensec, mode, ...
        let mut set = Vec::new();
        put32(&mut set, &[1, 0]);
        put(&mut set, &[0, 0, 0, 0, 0, 0]);
        put32(&mut set, &[7, 8, 9, 0o700]);
        set.resize(88, 0);
        let buf = request(op::SETATTR, ROOT, &set, b"");
        let Answer::Ok(out) = fs.handle(&Request::parse(&buf).expect("parse")) else {
            panic!("setattr failed")
        };
        // fuse_attr_out: valid, valid_nsec and dummy, then fuse_attr's mode at 60.
        assert_eq!(u32_at(&out, 16 + 60), Some(libc::S_IFDIR | 0o700));
        set[..4].copy_from_slice(&(1u32 << 3).to_le_bytes());
        set[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        let buf = request(op::SETATTR, ROOT, &set, b"");
        assert!(matches!(
            fs.handle(&Request::parse(&buf).expect("parse")),
            Answer::Error(libc::EFBIG)
        ));
    }

    #[test]
    fn truncated_requests_are_refused() {
        let fs = MemFs::new(false);
        let buf = request(op::WRITE, ROOT, &[0; 12], b"");
        assert!(Request::parse(&buf[..20]).is_none());
        assert!(matches!(
            fs.handle(&Request::parse(&buf).expect("parse")),
            Answer::Error(libc::ENOENT | libc::EINVAL)
        ));
        // A write whose data is shorter than it says.
        let mut write = Vec::new();
        put(&mut write, &[ROOT, 0]);
        put32(&mut write, &[4096, 0]);
        write.resize(40, 0);
        let buf = request(op::WRITE, ROOT, &write, b"ab");
        assert!(matches!(
            fs.handle(&Request::parse(&buf).expect("parse")),
            Answer::Error(libc::EINVAL)
        ));
    }
}
