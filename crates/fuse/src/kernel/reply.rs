//! Answers to the kernel. Each request gets one reply object of the kind its operation
//! answers with; it may be sent from any thread, once. One dropped unanswered answers EIO,
//! so that the caller never waits for ever.

use super::abi::{out_header, Out, FOPEN_KEEP_CACHE, OUT_HEADER};
use super::{FileAttr, FileHandle, FileType, Generation, INodeNo};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the session's messages to the kernel go: each message is written whole, in one
/// call, from the parts given.
pub trait Channel: Send + Sync {
    fn send(&self, parts: &[&[u8]]) -> std::io::Result<()>;
}

/// The way back for one request.
pub struct Sender {
    chan: Arc<dyn Channel>,
    unique: u64,
}

impl Sender {
    pub fn new(chan: Arc<dyn Channel>, unique: u64) -> Sender {
        Sender { chan, unique }
    }

    /// Answers `errno` without a reply object (a request that could not be decoded).
    pub fn fail(self, errno: i32) {
        self.send(-errno.abs(), &[])
    }

    fn send(self, error: i32, body: &[&[u8]]) {
        let len = OUT_HEADER + body.iter().map(|b| b.len()).sum::<usize>();
        let h = out_header(len, error, self.unique);
        let mut parts: Vec<&[u8]> = Vec::with_capacity(body.len() + 1);
        parts.push(&h);
        parts.extend_from_slice(body);
        match self.chan.send(&parts) {
            Ok(()) => {}
            // The request was interrupted meanwhile, or the mount went away.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => {}
            Err(e) => tracing::warn!("reply to the kernel: {e}"),
        }
    }
}

/// What every reply kind shares: it answers once; unanswered, EIO.
struct Once(Option<Sender>);

impl Once {
    fn ok(mut self, body: &[&[u8]]) {
        if let Some(s) = self.0.take() {
            s.send(0, body);
        }
    }

    fn error(mut self, errno: i32) {
        if let Some(s) = self.0.take() {
            s.send(-errno.abs(), &[]);
        }
    }
}

impl Drop for Once {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.send(-libc::EIO, &[]);
        }
    }
}

macro_rules! reply_kind {
    ($($(#[$m:meta])* $name:ident),* $(,)?) => {$(
        $(#[$m])*
        pub struct $name(Once);

        impl $name {
            pub fn new(s: Sender) -> Self {
                $name(Once(Some(s)))
            }

            pub fn error(self, errno: i32) {
                self.0.error(errno)
            }
        }
    )*};
}

reply_kind!(
    /// Success with nothing to say.
    ReplyEmpty,
    /// A name's node (`fuse_entry_out`).
    ReplyEntry,
    /// A node's attributes (`fuse_attr_out`).
    ReplyAttr,
    /// An open file (`fuse_open_out`).
    ReplyOpen,
    /// A created and opened file.
    ReplyCreate,
    /// Bytes: file data, a link's target.
    ReplyData,
    /// How much a write took.
    ReplyWrite,
    ReplyStatfs,
    /// An extended attribute's value or names, or the size they need.
    ReplyXattr,
    /// The lock that conflicts with a test (`fuse_lk_out`).
    ReplyLock,
);

fn secs(d: &Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

/// Seconds since the epoch (negative before it) and nanoseconds, as `fuse_attr` has them.
fn stamp(t: SystemTime) -> (u64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs(), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (mut s, mut ns) = (-(d.as_secs() as i64), d.subsec_nanos());
            if ns > 0 {
                s -= 1;
                ns = 1_000_000_000 - ns;
            }
            (s as u64, ns)
        }
    }
}

fn mode_type(kind: FileType) -> u32 {
    match kind {
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Directory => libc::S_IFDIR,
        FileType::RegularFile => libc::S_IFREG,
        FileType::Symlink => libc::S_IFLNK,
        FileType::Socket => libc::S_IFSOCK,
    }
}

/// `struct fuse_attr`.
fn attr(o: &mut Out, a: &FileAttr) {
    let (at, atn) = stamp(a.atime);
    let (mt, mtn) = stamp(a.mtime);
    let (ct, ctn) = stamp(a.ctime);
    o.u64(a.ino.0).u64(a.size).u64(a.blocks).u64(at).u64(mt).u64(ct);
    o.u32(atn).u32(mtn).u32(ctn);
    o.u32(mode_type(a.kind) | u32::from(a.perm));
    o.u32(a.nlink)
        .u32(a.uid)
        .u32(a.gid)
        .u32(a.rdev)
        .u32(a.blksize)
        .u32(a.flags);
}

/// `struct fuse_entry_out`.
fn entry(o: &mut Out, attr_ttl: &Duration, entry_ttl: &Duration, a: &FileAttr, generation: Generation) {
    let (es, en) = secs(entry_ttl);
    let (as_, an) = secs(attr_ttl);
    o.u64(a.ino.0).u64(generation.0).u64(es).u64(as_).u32(en).u32(an);
    attr(o, a);
}

impl ReplyEmpty {
    pub fn ok(self) {
        self.0.ok(&[])
    }
}

impl ReplyEntry {
    pub fn entry(self, ttl: &Duration, a: &FileAttr, generation: Generation) {
        self.entry_with_ttls(ttl, ttl, a, generation)
    }

    pub fn entry_with_ttls(self, attr_ttl: &Duration, entry_ttl: &Duration, a: &FileAttr, g: Generation) {
        let mut o = Out::with_capacity(128);
        entry(&mut o, attr_ttl, entry_ttl, a, g);
        self.0.ok(&[&o.0])
    }
}

impl ReplyAttr {
    pub fn attr(self, ttl: &Duration, a: &FileAttr) {
        let (s, n) = secs(ttl);
        let mut o = Out::with_capacity(104);
        o.u64(s).u32(n).u32(0);
        attr(&mut o, a);
        self.0.ok(&[&o.0])
    }
}

/// `fuse_open_out.open_flags`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FopenFlags(u32);

impl FopenFlags {
    /// The kernel keeps the file's cached pages.
    pub const FOPEN_KEEP_CACHE: FopenFlags = FopenFlags(FOPEN_KEEP_CACHE);

    pub fn empty() -> FopenFlags {
        FopenFlags(0)
    }
}

impl ReplyOpen {
    pub fn opened(self, fh: FileHandle, flags: FopenFlags) {
        let mut o = Out::with_capacity(16);
        o.u64(fh.0).u32(flags.0).u32(0);
        self.0.ok(&[&o.0])
    }
}

impl ReplyCreate {
    pub fn created(self, ttl: &Duration, a: &FileAttr, g: Generation, fh: FileHandle, flags: FopenFlags) {
        let mut o = Out::with_capacity(144);
        entry(&mut o, ttl, ttl, a, g);
        o.u64(fh.0).u32(flags.0).u32(0);
        self.0.ok(&[&o.0])
    }
}

impl ReplyData {
    pub fn data(self, data: &[u8]) {
        self.0.ok(&[data])
    }
}

impl ReplyWrite {
    pub fn written(self, size: u32) {
        let mut o = Out::with_capacity(8);
        o.u32(size).u32(0);
        self.0.ok(&[&o.0])
    }
}

impl ReplyStatfs {
    #[allow(clippy::too_many_arguments)]
    pub fn statfs(
        self,
        blocks: u64,
        bfree: u64,
        bavail: u64,
        files: u64,
        ffree: u64,
        bsize: u32,
        namelen: u32,
        frsize: u32,
    ) {
        let mut o = Out::with_capacity(80);
        o.u64(blocks).u64(bfree).u64(bavail).u64(files).u64(ffree);
        o.u32(bsize).u32(namelen).u32(frsize).u32(0).zeros(24);
        self.0.ok(&[&o.0])
    }
}

impl ReplyXattr {
    pub fn size(self, size: u32) {
        let mut o = Out::with_capacity(8);
        o.u32(size).u32(0);
        self.0.ok(&[&o.0])
    }

    pub fn data(self, data: &[u8]) {
        self.0.ok(&[data])
    }
}

impl ReplyLock {
    pub fn locked(self, start: u64, end: u64, typ: i32, pid: u32) {
        let mut o = Out::with_capacity(24);
        o.u64(start).u64(end).u32(typ as u32).u32(pid);
        self.0.ok(&[&o.0])
    }
}

/// A directory listing, filled entry by entry up to the size the kernel asked for.
pub struct ReplyDirectory {
    once: Once,
    buf: Out,
    size: usize,
}

impl ReplyDirectory {
    pub fn new(s: Sender, size: u32) -> ReplyDirectory {
        let size = size as usize;
        ReplyDirectory {
            once: Once(Some(s)),
            buf: Out::with_capacity(size.min(64 << 10)),
            size,
        }
    }

    /// Adds an entry (`fuse_dirent`); true when it does not fit, and was not added.
    pub fn add(&mut self, ino: INodeNo, offset: u64, kind: FileType, name: &OsStr) -> bool {
        let name = name.as_bytes();
        let len = (24 + name.len()).next_multiple_of(8);
        if self.buf.0.len() + len > self.size {
            return true;
        }
        self.buf
            .u64(ino.0)
            .u64(offset)
            .u32(name.len() as u32)
            .u32(mode_type(kind) >> 12);
        self.buf.0.extend_from_slice(name);
        self.buf.pad8();
        false
    }

    pub fn ok(self) {
        self.once.ok(&[&self.buf.0])
    }

    pub fn error(self, errno: i32) {
        self.once.error(errno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Kept(Mutex<Vec<Vec<u8>>>);

    impl Channel for Kept {
        fn send(&self, parts: &[&[u8]]) -> std::io::Result<()> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(parts.concat());
            Ok(())
        }
    }

    fn sent(k: &Kept) -> Vec<Vec<u8>> {
        std::mem::take(&mut *k.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn word(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
    }

    #[test]
    fn an_unanswered_request_gets_eio_once() {
        let k = Arc::new(Kept::default());
        drop(ReplyEmpty::new(Sender::new(k.clone(), 9)));
        ReplyEmpty::new(Sender::new(k.clone(), 10)).error(libc::ENOENT);
        let got = sent(&k);
        assert_eq!(got.len(), 2);
        assert_eq!((word(&got[0], 0), word(&got[0], 4) as i32), (16, -libc::EIO));
        assert_eq!(got[0][8], 9);
        assert_eq!(word(&got[1], 4) as i32, -libc::ENOENT);
    }

    #[test]
    fn a_listing_stops_at_the_size_asked() {
        let k = Arc::new(Kept::default());
        let mut d = ReplyDirectory::new(Sender::new(k.clone(), 1), 64);
        assert!(!d.add(INodeNo(5), 1, FileType::RegularFile, OsStr::new("abc")));
        assert!(!d.add(INodeNo(6), 2, FileType::Directory, OsStr::new("defgh")));
        assert!(d.add(INodeNo(7), 3, FileType::Directory, OsStr::new("x")));
        d.ok();
        let got = sent(&k);
        assert_eq!(got[0].len(), OUT_HEADER + 64);
        // The second entry's type: a directory.
        assert_eq!(word(&got[0], OUT_HEADER + 32 + 20), libc::S_IFDIR >> 12);
    }

    #[test]
    fn times_before_the_epoch_are_negative_seconds() {
        let t = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(stamp(t), ((-2i64) as u64, 500_000_000));
    }
}
