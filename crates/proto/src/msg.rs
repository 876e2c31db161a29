//! Requests a client sends to a brick and the replies it gets.
//!
//! The header of each frame is one of these, postcard-encoded. Bulk data (what `Write` writes,
//! what `Read` returns) travels in the frame's data section, never inside the header.
//! New operations are added at the end of the enums; removing or reordering one is an
//! incompatible change and needs a new [`crate::PROTOCOL_VERSION`].

use crate::errno::Errno;
use crate::types::*;
use serde::{Deserialize, Serialize};

/// A handle on a file opened on a brick, valid on the connection that opened it.
pub type Fh = u64;

/// An operation on a brick.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Round trip with no effect.
    Ping,
    /// The object named `name` in directory `parent`.
    Lookup {
        parent: FileId,
        name: Vec<u8>,
    },
    /// The object with this id.
    GetAttr {
        id: FileId,
    },
    SetAttr {
        id: FileId,
        fh: Option<Fh>,
        set: SetAttr,
    },
    /// Make a regular file, symlink, directory or special file under `parent`. For a regular
    /// file `open` says how to open it, and the reply carries the handle.
    Create {
        parent: FileId,
        name: Vec<u8>,
        node: NewNode,
        symlink_target: Option<Vec<u8>>,
        open: Option<u32>,
    },
    Unlink {
        parent: FileId,
        name: Vec<u8>,
    },
    Rmdir {
        parent: FileId,
        name: Vec<u8>,
    },
    Rename {
        parent: FileId,
        name: Vec<u8>,
        new_parent: FileId,
        new_name: Vec<u8>,
        flags: RenameFlags,
    },
    Link {
        id: FileId,
        new_parent: FileId,
        new_name: Vec<u8>,
    },
    ReadLink {
        id: FileId,
    },
    /// Entries of a directory after `cookie` (0: from the start), at most `max` of them, with
    /// their objects when `plus`.
    ReadDir {
        id: FileId,
        cookie: u64,
        max: u32,
        plus: bool,
    },
    /// Open with open(2) flags (O_CREAT and O_EXCL are ignored; O_TRUNC is honoured).
    Open {
        id: FileId,
        flags: u32,
    },
    Read {
        fh: Fh,
        offset: u64,
        size: u32,
    },
    /// Data to write follows in the frame's data section.
    Write {
        fh: Fh,
        offset: u64,
    },
    Fsync {
        fh: Fh,
        datasync: bool,
    },
    /// The handle's close by one process: releases that owner's locks on the file.
    Flush {
        fh: Fh,
        lock_owner: u64,
    },
    Release {
        fh: Fh,
    },
    Fallocate {
        fh: Fh,
        mode: u32,
        offset: u64,
        len: u64,
    },
    StatFs,
    GetXattr {
        id: FileId,
        name: Vec<u8>,
    },
    SetXattr {
        id: FileId,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
    },
    ListXattr {
        id: FileId,
    },
    RemoveXattr {
        id: FileId,
        name: Vec<u8>,
    },
    /// Add signed deltas to 64-bit counters kept in internal xattrs, atomically with respect to
    /// other `XattrAdd`s on the brick; returns the new values. A counter reaching zero is
    /// removed. Replication keeps its pending-heal markers this way.
    XattrAdd {
        id: FileId,
        deltas: Vec<(String, i64)>,
    },
    /// Set or remove (value None) internal xattrs.
    SetMeta {
        id: FileId,
        meta: Vec<(String, Option<Vec<u8>>)>,
    },
    GetLk {
        id: FileId,
        lock: Lock,
    },
    /// Take or release a lock; with `wait`, the reply comes once the lock is granted.
    SetLk {
        id: FileId,
        lock: Lock,
        wait: bool,
    },
    /// Unlink, unless the entry carries the internal xattr `keep`: then nothing is removed
    /// and the entry comes back (`Reply::Entry`; `Reply::Ok` when it was removed).
    UnlinkUnless {
        parent: FileId,
        name: Vec<u8>,
        keep: String,
    },
    /// Healing (replicate). With `guard`, the sender is about to repair this brick's copy of
    /// `id`: refused with EBUSY while another connection has the file open or heals it too;
    /// until `HealEnd`, other clients' changes to it (and, for a directory, to its entries)
    /// and opens of it wait (an `OpenNow` gets EBUSY at once). Without `guard`, a good copy
    /// is watched: `HealEnd` tells
    /// whether another client changed it meanwhile.
    HealBegin {
        id: FileId,
        guard: bool,
    },
    /// Ends what `HealBegin` started; the reply is `Reply::Changed`. A guard that shows no
    /// activity of its healer for 30 s while others wait is broken (its `HealEnd` then
    /// answers true).
    HealEnd {
        id: FileId,
        guard: bool,
    },
    /// Objects that carry pending-heal counters (`pending.*`, set by `XattrAdd`), in id
    /// order after `after`, at most `max`; the reply is `Reply::Ids`.
    ListPending {
        after: Option<FileId>,
        max: u32,
    },
    /// Ties this connection to a client session (sent first on each connection). The
    /// locks of a session outlive its connection for a while, and a new connection of the
    /// same session takes them over (and ends the old one, if the brick still has it).
    Session {
        token: u128,
    },
    /// Sets this connection's locks to what its client holds, after its connection was
    /// renewed: with `reset`, first drops every lock the connection has (those adopted from
    /// the session that the client no longer holds, or never heard were granted); then takes
    /// each of `locks` like a non-blocking `SetLk`, also while a brick that restarted
    /// waits for its clients' locks to come back (new locks wait then). All under one lock
    /// of the table, so nobody else gets in between. EAGAIN if some could not be taken (the
    /// brick logs which); the others are taken all the same.
    Reclaim {
        locks: Vec<(FileId, Lock)>,
        reset: bool,
    },
    /// A `Write` that also adds `mark` to the file's counters (as `XattrAdd`) once the data
    /// is written: replication marks the copies a write misses with the write itself. The
    /// write fails if the counters cannot be added.
    WriteMarked {
        fh: Fh,
        offset: u64,
        mark: Vec<(String, i64)>,
    },
    /// A directory's parent and its name there, or for a regular file, the directory it was
    /// made in or last moved to and its name there, if it is still there (ENOTDIR
    /// otherwise); the reply is
    /// `Reply::Parent`. How a client finds what a copy lacks above an object it must change
    /// (the root has none: EINVAL). (Bricks before file records answer ENOTDIR for files.)
    DirParent {
        id: FileId,
    },
    /// Where objects are, for people (`volume heal NAME info`): each one's path from the
    /// brick root, or none (not found within the brick's search budget, or unlinked but
    /// open). The reply is `Reply::Paths`, in the same order.
    PathsOf {
        ids: Vec<FileId>,
    },
    /// Reads several ranges of an open file at once (a stripe's pieces on this brick, one
    /// request where there were one per piece). The reply is `Reply::DataV`: each range's
    /// length (short at the end of the file), the bytes one range after the other in the
    /// frame's data section. At most [`MAX_RANGES`] ranges of at most
    /// [`crate::frame::MAX_DATA`] bytes in all (EINVAL otherwise).
    ReadV {
        fh: Fh,
        ranges: Vec<(u64, u32)>,
    },
    /// Writes several ranges of an open file at once (a stripe's pieces on this brick): the
    /// data section holds each range's bytes one after the other. The reply is
    /// `Reply::WrittenV` with how many bytes of each range were written, in order, stopping
    /// after the first that fell short; an error only if nothing was written. Bounded as
    /// `ReadV`; the lengths must add up to the data (EINVAL otherwise).
    WriteV {
        fh: Fh,
        ranges: Vec<(u64, u32)>,
    },
    /// Take (`take`: the reply comes once granted) or give up the write order of `id`: one
    /// connection at a time changes a replicated file's data (see `brick::order`). A
    /// holder is sent `Notice::Yield` when another connection asks. (Version 3 on.)
    Order {
        id: FileId,
        take: bool,
    },
    /// An `Open` that fails at once with EBUSY where another client heals the object
    /// (holds its guard, see `brick::heal`) instead of waiting for the heal to end: a
    /// replicated file then opens on its other copies. (Bricks before it answer ENOSYS.)
    OpenNow {
        id: FileId,
        flags: u32,
    },
}

/// Most ranges in one `Request::ReadV` or `Request::WriteV`.
pub const MAX_RANGES: usize = 256;

/// Whether `count` ranges of `total` bytes fit one `ReadV` or `WriteV`.
pub fn ranges_fit(count: usize, total: u64) -> bool {
    count <= MAX_RANGES && total <= crate::frame::MAX_DATA as u64
}

impl Request {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Lookup { .. } => "lookup",
            Request::GetAttr { .. } => "getattr",
            Request::SetAttr { .. } => "setattr",
            Request::Create { .. } => "create",
            Request::Unlink { .. } => "unlink",
            Request::Rmdir { .. } => "rmdir",
            Request::Rename { .. } => "rename",
            Request::Link { .. } => "link",
            Request::ReadLink { .. } => "readlink",
            Request::ReadDir { .. } => "readdir",
            Request::Open { .. } => "open",
            Request::Read { .. } => "read",
            Request::Write { .. } => "write",
            Request::Fsync { .. } => "fsync",
            Request::Flush { .. } => "flush",
            Request::Release { .. } => "release",
            Request::Fallocate { .. } => "fallocate",
            Request::StatFs => "statfs",
            Request::GetXattr { .. } => "getxattr",
            Request::SetXattr { .. } => "setxattr",
            Request::ListXattr { .. } => "listxattr",
            Request::RemoveXattr { .. } => "removexattr",
            Request::XattrAdd { .. } => "xattradd",
            Request::SetMeta { .. } => "setmeta",
            Request::GetLk { .. } => "getlk",
            Request::SetLk { .. } => "setlk",
            Request::UnlinkUnless { .. } => "unlink",
            Request::HealBegin { .. } => "healbegin",
            Request::HealEnd { .. } => "healend",
            Request::ListPending { .. } => "listpending",
            Request::Session { .. } => "session",
            Request::Reclaim { .. } => "reclaim",
            Request::WriteMarked { .. } => "write",
            Request::DirParent { .. } => "dirparent",
            Request::PathsOf { .. } => "pathsof",
            Request::ReadV { .. } => "readv",
            Request::WriteV { .. } => "writev",
            Request::Order { .. } => "order",
            Request::OpenNow { .. } => "open",
        }
    }
}

/// Number of operations in [`Request`]: a header naming an operation at or past this index
/// asks for something this build does not know (ENOSYS), anything else undecodable is
/// malformed (EBADMSG).
pub const REQUEST_OPS: u32 = 40;

/// The operation index at the start of an encoded request (postcard writes an enum's
/// variant index first, as a varint).
pub fn op_index(header: &[u8]) -> Option<u32> {
    let mut v: u32 = 0;
    for (i, b) in header.iter().take(5).enumerate() {
        v |= ((b & 0x7f) as u32) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

impl crate::rpc::Ping for Request {
    fn ping() -> Self {
        Request::Ping
    }
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Ok,
    Entry(Entry),
    /// A new object, and its handle when it was created open.
    Created {
        entry: Entry,
        fh: Option<Fh>,
    },
    /// Target of a symlink.
    Link(Vec<u8>),
    Dir {
        entries: Vec<DirEntry>,
        eof: bool,
    },
    Opened {
        fh: Fh,
    },
    /// The bytes read are in the frame's data section.
    Data,
    Written {
        size: u32,
    },
    StatFs(StatFs),
    Xattr(Vec<u8>),
    /// Names of the user-visible xattrs.
    XattrNames(Vec<Vec<u8>>),
    Counters(Vec<(String, i64)>),
    /// A conflicting lock, or one of kind Unlock if there is none.
    Lock(Lock),
    /// To `HealEnd`: true when the heal cannot be vouched for (another client changed a
    /// watched object meanwhile; a guard was broken for want of progress, or not held).
    Changed(bool),
    Ids(Vec<FileId>),
    Parent {
        parent: FileId,
        name: Vec<u8>,
    },
    Paths(Vec<Option<Vec<u8>>>),
    /// To `ReadV`: how many bytes of each range follow in the data section.
    DataV(Vec<u32>),
    /// To `WriteV`: bytes written of each range.
    WrittenV(Vec<u32>),
}

/// What comes back for one request.
pub type Response = Result<Reply, Errno>;

/// Frames a server sends unasked carry this request id (clients number theirs from 1).
pub const NOTICE_ID: u64 = 0;

/// Sent by a brick, unasked (protocol version 2 on), to each client that may cache something
/// another client's change made stale. A client hears about an object again only after it
/// asked about it again: each notice clears the brick's record of the client's interest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    Changed(Vec<Change>),
    /// Forget everything learnt from this brick. (Bricks of this version drop the oldest
    /// part of a full interest table and announce those ids instead; clients accept it.)
    All,
    /// Another connection waits for the write order of these files, which the client holds
    /// (version 3 on): it gives them up once its changes under way are done. (Last: the
    /// variants before keep their numbers.)
    Yield(Vec<FileId>),
}

/// One stale thing: an object's attributes and data, or with `name`, that entry of the
/// directory `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub id: FileId,
    pub name: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_count_matches_the_enum() {
        let last = Request::OpenNow {
            id: FileId(1),
            flags: 0,
        };
        let enc = postcard::to_allocvec(&last).unwrap();
        assert_eq!(op_index(&enc), Some(REQUEST_OPS - 1));
        assert_eq!(op_index(&postcard::to_allocvec(&Request::Ping).unwrap()), Some(0));
        assert_eq!(op_index(&[0xfa, 0x01]), Some(250));
        assert_eq!(op_index(&[0xff; 6]), None);
    }
}
