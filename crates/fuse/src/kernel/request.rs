//! Requests from the kernel, decoded. Every field is read with its bounds checked: a request
//! too short for what its operation carries is refused with EINVAL, never read past.

use super::abi::{self, op, Fields, IN_HEADER};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Who asked, and the request's number.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    unique: u64,
    uid: u32,
    gid: u32,
    pid: u32,
}

impl Request {
    pub fn unique(&self) -> u64 {
        self.unique
    }
    pub fn uid(&self) -> u32 {
        self.uid
    }
    pub fn gid(&self) -> u32 {
        self.gid
    }
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// `struct fuse_in_header`'s fields that matter here.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub opcode: u32,
    pub nodeid: u64,
    pub req: Request,
}

/// A time a setattr sets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TimeOrNow {
    SpecificTime(SystemTime),
    Now,
}

/// What a setattr changes.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttrIn {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub fh: Option<u64>,
}

/// A byte-range lock request (`fuse_lk_in`).
#[derive(Clone, Copy, Debug)]
pub struct LockIn {
    pub fh: u64,
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    pub typ: i32,
    pub pid: u32,
}

/// One decoded operation; names and data borrow the request's buffer.
#[derive(Debug)]
pub enum Op<'a> {
    Init {
        major: u32,
        minor: u32,
        max_readahead: u32,
        flags: u64,
    },
    Destroy,
    Interrupt,
    Lookup {
        name: &'a OsStr,
    },
    Forget {
        nlookup: u64,
    },
    /// (node, nlookup) pairs.
    BatchForget(Vec<(u64, u64)>),
    GetAttr {
        fh: Option<u64>,
    },
    SetAttr(SetAttrIn),
    ReadLink,
    Symlink {
        name: &'a OsStr,
        target: &'a OsStr,
    },
    /// (The kernel applied the caller's umask to `mode` already.)
    Mknod {
        name: &'a OsStr,
        mode: u32,
        rdev: u32,
    },
    Mkdir {
        name: &'a OsStr,
        mode: u32,
    },
    Unlink {
        name: &'a OsStr,
    },
    Rmdir {
        name: &'a OsStr,
    },
    Rename {
        name: &'a OsStr,
        newparent: u64,
        newname: &'a OsStr,
        flags: u32,
    },
    Link {
        ino: u64,
        newname: &'a OsStr,
    },
    Open {
        flags: i32,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Write {
        fh: u64,
        offset: u64,
        data: &'a [u8],
        write_flags: u32,
    },
    StatFs,
    Release {
        fh: u64,
    },
    Fsync {
        fh: u64,
        datasync: bool,
    },
    SetXattr {
        name: &'a OsStr,
        value: &'a [u8],
        flags: i32,
    },
    GetXattr {
        name: &'a OsStr,
        size: u32,
    },
    ListXattr {
        size: u32,
    },
    RemoveXattr {
        name: &'a OsStr,
    },
    Flush {
        fh: u64,
        lock_owner: u64,
    },
    OpenDir,
    ReadDir {
        fh: u64,
        offset: u64,
        size: u32,
    },
    ReleaseDir {
        fh: u64,
    },
    FsyncDir,
    GetLk(LockIn),
    SetLk {
        lock: LockIn,
        sleep: bool,
    },
    Access,
    Create {
        name: &'a OsStr,
        mode: u32,
        flags: i32,
    },
    Ioctl,
    Fallocate {
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    },
    /// An operation this file system does not implement.
    Unknown(u32),
}

/// A request that does not hold what its header says.
#[derive(Debug, PartialEq)]
pub struct Malformed;

/// Splits a request as `/dev/fuse` delivers it, in one piece, into its header, its
/// operation's fixed argument and what follows.
pub fn split(buf: &[u8]) -> Result<(Header, &[u8], &[u8]), Malformed> {
    let h = Fields(buf.get(..IN_HEADER).ok_or(Malformed)?);
    let len = h.u32(0).ok_or(Malformed)? as usize;
    let body = buf.get(IN_HEADER..len).ok_or(Malformed)?;
    let header = header(h)?;
    let n = abi::arg_size(header.opcode);
    let arg = body.get(..n).ok_or(Malformed)?;
    Ok((header, arg, &body[n..]))
}

/// The header of a request whose parts come apart (FUSE over io_uring).
pub fn header_of(h: &[u8]) -> Result<Header, Malformed> {
    header(Fields(h.get(..IN_HEADER).ok_or(Malformed)?))
}

fn header(h: Fields) -> Result<Header, Malformed> {
    let m = |v: Option<u32>| v.ok_or(Malformed);
    Ok(Header {
        opcode: m(h.u32(4))?,
        nodeid: h.u64(16).ok_or(Malformed)?,
        req: Request {
            unique: h.u64(8).ok_or(Malformed)?,
            uid: m(h.u32(24))?,
            gid: m(h.u32(28))?,
            pid: m(h.u32(32))?,
        },
    })
}

/// Takes a NUL-terminated name off the front of `rest`.
fn name<'a>(rest: &mut &'a [u8]) -> Result<&'a OsStr, Malformed> {
    let end = rest.iter().position(|&c| c == 0).ok_or(Malformed)?;
    let n = &rest[..end];
    *rest = &rest[end + 1..];
    Ok(OsStr::from_bytes(n))
}

fn time(sec: u64, nsec: u32) -> SystemTime {
    // (The kernel sends a signed count of seconds in an unsigned field.)
    let t = match i64::try_from(sec) {
        Ok(s) => UNIX_EPOCH.checked_add(Duration::from_secs(s as u64)),
        Err(_) => UNIX_EPOCH.checked_sub(Duration::from_secs((sec as i64).unsigned_abs())),
    };
    let nsec = Duration::from_nanos(u64::from(nsec.min(999_999_999)));
    t.and_then(|t| t.checked_add(nsec)).unwrap_or(UNIX_EPOCH)
}

/// Decodes the operation of a request whose parts were split off.
pub fn decode<'a>(opcode: u32, arg: &'a [u8], mut rest: &'a [u8]) -> Result<Op<'a>, Malformed> {
    let a = Fields(arg);
    let u32_ = |at| a.u32(at).ok_or(Malformed);
    let u64_ = |at| a.u64(at).ok_or(Malformed);
    let rest = &mut rest;
    Ok(match opcode {
        // (`flags2` follows from protocol 7.36 on.)
        op::INIT => Op::Init {
            major: u32_(0)?,
            minor: u32_(4)?,
            max_readahead: u32_(8)?,
            flags: u64::from(u32_(12)?) | u64::from(Fields(rest).u32(0).unwrap_or(0)) << 32,
        },
        op::DESTROY => Op::Destroy,
        op::INTERRUPT => Op::Interrupt,
        op::LOOKUP => Op::Lookup { name: name(rest)? },
        op::FORGET => Op::Forget { nlookup: u64_(0)? },
        op::BATCH_FORGET => {
            let count = u32_(0)? as usize;
            let items = rest
                .get(..count.checked_mul(16).ok_or(Malformed)?)
                .ok_or(Malformed)?;
            Op::BatchForget(
                items
                    .chunks_exact(16)
                    .map(|c| {
                        let f = Fields(c);
                        (f.u64(0).unwrap_or(0), f.u64(8).unwrap_or(0))
                    })
                    .collect(),
            )
        }
        op::GETATTR => Op::GetAttr {
            fh: (u32_(0)? & abi::GETATTR_FH != 0).then_some(u64_(8)?),
        },
        op::SETATTR => {
            let valid = u32_(0)?;
            let has = |bit: u32| valid & bit != 0;
            let at = |bit, now, sec, nsec| -> Result<Option<TimeOrNow>, Malformed> {
                Ok(match (has(now), has(bit)) {
                    (true, _) => Some(TimeOrNow::Now),
                    (false, true) => Some(TimeOrNow::SpecificTime(time(u64_(sec)?, u32_(nsec)?))),
                    _ => None,
                })
            };
            use abi::fattr;
            Op::SetAttr(SetAttrIn {
                mode: has(fattr::MODE).then(|| u32_(68)).transpose()?,
                uid: has(fattr::UID).then(|| u32_(76)).transpose()?,
                gid: has(fattr::GID).then(|| u32_(80)).transpose()?,
                size: has(fattr::SIZE).then(|| u64_(16)).transpose()?,
                atime: at(fattr::ATIME, fattr::ATIME_NOW, 32, 56)?,
                mtime: at(fattr::MTIME, fattr::MTIME_NOW, 40, 60)?,
                fh: has(fattr::FH).then(|| u64_(8)).transpose()?,
            })
        }
        op::READLINK => Op::ReadLink,
        op::SYMLINK => Op::Symlink {
            name: name(rest)?,
            target: name(rest)?,
        },
        op::MKNOD => Op::Mknod {
            mode: u32_(0)?,
            rdev: u32_(4)?,
            name: name(rest)?,
        },
        op::MKDIR => Op::Mkdir {
            mode: u32_(0)?,
            name: name(rest)?,
        },
        op::UNLINK => Op::Unlink { name: name(rest)? },
        op::RMDIR => Op::Rmdir { name: name(rest)? },
        op::RENAME | op::RENAME2 => Op::Rename {
            newparent: u64_(0)?,
            flags: if opcode == op::RENAME2 { u32_(8)? } else { 0 },
            name: name(rest)?,
            newname: name(rest)?,
        },
        op::LINK => Op::Link {
            ino: u64_(0)?,
            newname: name(rest)?,
        },
        op::OPEN => Op::Open {
            flags: u32_(0)? as i32,
        },
        op::READ => Op::Read {
            fh: u64_(0)?,
            offset: u64_(8)?,
            size: u32_(16)?,
        },
        op::WRITE => {
            let size = u32_(16)? as usize;
            Op::Write {
                fh: u64_(0)?,
                offset: u64_(8)?,
                data: rest.get(..size).ok_or(Malformed)?,
                write_flags: u32_(20)?,
            }
        }
        op::STATFS => Op::StatFs,
        op::RELEASE => Op::Release { fh: u64_(0)? },
        op::FSYNC => Op::Fsync {
            fh: u64_(0)?,
            datasync: u32_(8)? & abi::FSYNC_FDATASYNC != 0,
        },
        op::SETXATTR => {
            let size = u32_(0)? as usize;
            let flags = u32_(4)? as i32;
            let name = name(rest)?;
            Op::SetXattr {
                name,
                value: rest.get(..size).ok_or(Malformed)?,
                flags,
            }
        }
        op::GETXATTR => Op::GetXattr {
            size: u32_(0)?,
            name: name(rest)?,
        },
        op::LISTXATTR => Op::ListXattr { size: u32_(0)? },
        op::REMOVEXATTR => Op::RemoveXattr { name: name(rest)? },
        op::FLUSH => Op::Flush {
            fh: u64_(0)?,
            lock_owner: u64_(16)?,
        },
        op::OPENDIR => Op::OpenDir,
        op::READDIR => Op::ReadDir {
            fh: u64_(0)?,
            offset: u64_(8)?,
            size: u32_(16)?,
        },
        op::RELEASEDIR => Op::ReleaseDir { fh: u64_(0)? },
        op::FSYNCDIR => Op::FsyncDir,
        op::GETLK | op::SETLK | op::SETLKW => {
            let lock = LockIn {
                fh: u64_(0)?,
                owner: u64_(8)?,
                start: u64_(16)?,
                end: u64_(24)?,
                typ: u32_(32)? as i32,
                pid: u32_(36)?,
            };
            match opcode {
                op::GETLK => Op::GetLk(lock),
                _ => Op::SetLk {
                    lock,
                    sleep: opcode == op::SETLKW,
                },
            }
        }
        op::ACCESS => Op::Access,
        op::CREATE => Op::Create {
            flags: u32_(0)? as i32,
            mode: u32_(4)?,
            name: name(rest)?,
        },
        op::IOCTL => Op::Ioctl,
        op::FALLOCATE => Op::Fallocate {
            fh: u64_(0)?,
            offset: u64_(8)?,
            length: u64_(16)?,
            mode: u32_(24)? as i32,
        },
        other => Op::Unknown(other),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A request as `/dev/fuse` would deliver it.
    pub fn request(opcode: u32, nodeid: u64, arg: &[u8], rest: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((IN_HEADER + arg.len() + rest.len()) as u32).to_le_bytes());
        b.extend_from_slice(&opcode.to_le_bytes());
        b.extend_from_slice(&7u64.to_le_bytes());
        b.extend_from_slice(&nodeid.to_le_bytes());
        b.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]);
        b.resize(IN_HEADER, 0);
        b.extend_from_slice(arg);
        b.extend_from_slice(rest);
        b
    }

    fn parse(buf: &[u8]) -> Result<(Header, Op<'_>), Malformed> {
        let (h, arg, rest) = split(buf)?;
        Ok((h, decode(h.opcode, arg, rest)?))
    }

    #[test]
    fn a_write_carries_its_data_and_who_sent_it() {
        let mut arg = vec![0u8; 40];
        arg[..8].copy_from_slice(&5u64.to_le_bytes());
        arg[8..16].copy_from_slice(&100u64.to_le_bytes());
        arg[16..20].copy_from_slice(&4u32.to_le_bytes());
        arg[20..24].copy_from_slice(&abi::WRITE_KILL_SUIDGID.to_le_bytes());
        let buf = request(op::WRITE, 9, &arg, b"abcd");
        let (h, op) = parse(&buf).expect("a write");
        assert_eq!(
            (h.nodeid, h.req.unique(), h.req.uid(), h.req.gid(), h.req.pid()),
            (9, 7, 1, 2, 3)
        );
        match op {
            Op::Write {
                fh,
                offset,
                data,
                write_flags,
            } => {
                assert_eq!(
                    (fh, offset, data, write_flags),
                    (5, 100, &b"abcd"[..], abi::WRITE_KILL_SUIDGID)
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_need_their_terminator_and_renames_take_two() {
        let buf = request(op::LOOKUP, 1, &[], b"name");
        assert_eq!(parse(&buf).err(), Some(Malformed));
        let mut arg = vec![0u8; 16];
        arg[..8].copy_from_slice(&4u64.to_le_bytes());
        arg[8..12].copy_from_slice(&1u32.to_le_bytes());
        let buf = request(op::RENAME2, 1, &arg, b"a\0bc\0");
        match parse(&buf).expect("a rename").1 {
            Op::Rename {
                name,
                newparent,
                newname,
                flags,
            } => {
                assert_eq!(
                    (name.as_bytes(), newparent, newname.as_bytes(), flags),
                    (&b"a"[..], 4, &b"bc"[..], 1)
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_requests_are_malformed_not_read_past() {
        // Shorter than its header, than its length says, than its operation's argument.
        let buf = request(op::WRITE, 1, &[0; 40], b"abcd");
        assert!(split(&buf[..20]).is_err());
        assert!(split(&buf[..buf.len() - 1]).is_err());
        let buf = request(op::WRITE, 1, &[0; 12], b"");
        assert!(split(&buf).is_err());
        // A write whose data is shorter than it says; a batch forget counting past its end.
        let mut arg = vec![0u8; 40];
        arg[16..20].copy_from_slice(&4096u32.to_le_bytes());
        assert!(parse(&request(op::WRITE, 1, &arg, b"ab")).is_err());
        let mut arg = vec![0u8; 8];
        arg[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&request(op::BATCH_FORGET, 0, &arg, &[0; 16])).is_err());
        // A length below the header's own.
        let mut buf = request(op::STATFS, 1, &[], b"");
        buf[..4].copy_from_slice(&8u32.to_le_bytes());
        assert!(split(&buf).is_err());
    }

    #[test]
    fn setattr_takes_only_the_fields_it_marks_valid() {
        let mut arg = vec![0u8; 88];
        let valid = abi::fattr::MODE | abi::fattr::MTIME_NOW | abi::fattr::ATIME;
        arg[..4].copy_from_slice(&valid.to_le_bytes());
        arg[32..40].copy_from_slice(&10u64.to_le_bytes());
        arg[56..60].copy_from_slice(&5u32.to_le_bytes());
        arg[68..72].copy_from_slice(&0o4755u32.to_le_bytes());
        arg[76..80].copy_from_slice(&33u32.to_le_bytes());
        match parse(&request(op::SETATTR, 2, &arg, b"")).expect("a setattr").1 {
            Op::SetAttr(s) => {
                assert_eq!(s.mode, Some(0o4755));
                assert_eq!(s.uid, None);
                assert_eq!(s.size, None);
                assert_eq!(s.mtime, Some(TimeOrNow::Now));
                let at = UNIX_EPOCH + Duration::new(10, 5);
                assert_eq!(s.atime, Some(TimeOrNow::SpecificTime(at)));
            }
            other => panic!("{other:?}"),
        }
    }
}
