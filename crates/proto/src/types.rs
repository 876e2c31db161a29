//! Value types shared by every layer: ids, attributes, directory entries, locks.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The 128-bit identity of a file or directory, the same on every brick copy.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId(pub u128);

impl FileId {
    /// The root directory of every volume and brick.
    pub const ROOT: FileId = FileId(1);

    /// A fresh random id. Ids are made by the client so that every replica or stripe member
    /// of one file gets the same id.
    pub fn random() -> FileId {
        loop {
            let v: u128 = rand::random();
            // Small values are reserved for well-known ids such as the root.
            if v > 0xffff {
                return FileId(v);
            }
        }
    }

    /// Lower-case hex, 32 digits: the spelling used in the brick's id index.
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }

    /// Parses the 32-digit hex spelling.
    pub fn from_hex(s: &str) -> Option<FileId> {
        if s.len() != 32 {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(FileId)
    }

    /// Big-endian bytes, the form stored in xattrs.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Reads the xattr form; None unless exactly 16 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<FileId> {
        let arr: [u8; 16] = b.try_into().ok()?;
        Some(FileId(u128::from_be_bytes(arr)))
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = self.to_hex();
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

/// What kind of object an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl FileKind {
    /// The S_IFMT bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => 0o100000,
            FileKind::Dir => 0o040000,
            FileKind::Symlink => 0o120000,
            FileKind::Fifo => 0o010000,
            FileKind::Socket => 0o140000,
            FileKind::CharDev => 0o020000,
            FileKind::BlockDev => 0o060000,
        }
    }

    /// The kind named by the S_IFMT bits of a mode, if any.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & 0o170000 {
            0o100000 => FileKind::File,
            0o040000 => FileKind::Dir,
            0o120000 => FileKind::Symlink,
            0o010000 => FileKind::Fifo,
            0o140000 => FileKind::Socket,
            0o020000 => FileKind::CharDev,
            0o060000 => FileKind::BlockDev,
            _ => return None,
        })
    }
}

/// Seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

/// Attributes of one object as a brick (or a translator combining bricks) sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub id: FileId,
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (no S_IFMT bits).
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    /// Allocated 512-byte blocks.
    pub blocks: u64,
    pub blksize: u32,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
}

/// A time to set: the server's clock, or a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeSet {
    Now,
    At(Timespec),
}

/// Which attributes to change; None leaves one as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

impl SetAttr {
    /// True when nothing but the size is to change.
    pub fn only_size(&self) -> bool {
        self.size.is_some()
            && self.perm.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
    }
}

/// An internal extended attribute of shoal's own (pending markers, pointers, stripe geometry),
/// named without the brick's namespace prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaXattr {
    pub name: String,
    pub value: Vec<u8>,
}

/// An object as returned by lookups and entry operations: attributes plus shoal's internal
/// xattrs, which translators need to interpret what they see.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub attr: Attr,
    pub meta: Vec<MetaXattr>,
    /// Whether the object carries file capabilities (`security.capability`). The kernel asks
    /// before every write; knowing the answer spares a round trip per write.
    pub has_caps: bool,
}

impl Entry {
    /// The value of an internal xattr, if present.
    pub fn meta(&self, name: &str) -> Option<&[u8]> {
        self.meta
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value.as_slice())
    }
}

/// One directory entry. `cookie` resumes the listing after this entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub kind: FileKind,
    pub cookie: u64,
    /// The object behind the name, when the listing was asked to include it.
    pub entry: Option<Entry>,
}

/// The type of a POSIX byte-range lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LockKind {
    Read,
    Write,
    Unlock,
}

/// A POSIX byte-range lock request or answer. `end` is inclusive; `u64::MAX` means to the end
/// of the file, whatever its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub kind: LockKind,
    pub start: u64,
    pub end: u64,
    /// The lock owner as the client knows it (FUSE's lock_owner); the brick scopes it by
    /// connection.
    pub owner: u64,
    pub pid: u32,
}

/// File-system statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    pub bsize: u32,
    pub frsize: u32,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub namemax: u32,
}

/// Parameters of a new object, made by the client so that all copies agree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewNode {
    pub id: FileId,
    pub kind: FileKind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    /// Internal xattrs to set atomically with the creation (before the name appears).
    pub meta: Vec<MetaXattr>,
}

/// Flags of a rename, as renameat2 knows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
}

/// Longest file name accepted anywhere, as Linux's NAME_MAX.
pub const NAME_MAX: usize = 255;

/// Checks that a name is a single path component: not empty, not `.` or `..`, no `/` or NUL,
/// at most NAME_MAX bytes.
pub fn check_name(name: &[u8]) -> Result<(), crate::Errno> {
    if name.len() > NAME_MAX {
        return Err(crate::Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(crate::Errno::EINVAL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_components() {
        assert!(check_name(b"a").is_ok());
        assert!(check_name(&[b'x'; 255]).is_ok());
        assert_eq!(check_name(&[b'x'; 256]), Err(crate::Errno::ENAMETOOLONG));
        for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0b"] {
            assert_eq!(check_name(bad), Err(crate::Errno::EINVAL), "{bad:?}");
        }
        assert!(check_name(b"...").is_ok());
    }

    #[test]
    fn id_round_trips() {
        let id = FileId::random();
        assert_eq!(FileId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(FileId::from_bytes(&id.to_bytes()), Some(id));
        assert_eq!(FileId::from_bytes(&[1, 2, 3]), None);
        assert_eq!(FileId::from_hex("zz"), None);
    }
}
