//! Dropping set-user-ID and set-group-ID bits when a file changes, as the mount does itself.
//!
//! Left to the kernel, every write asks the mount for the file's `security.capability`
//! first (one more round trip per write). With `FUSE_HANDLE_KILLPRIV_V2` the kernel skips
//! that for files it has seen without set-id bits or capabilities, and leaves the clearing
//! to the file system: a write, truncation or allocation by a process without
//! `CAP_FSETID` must drop the bits as the kernel would, since the bricks write as root,
//! which keeps them. A change of owner needs nothing here: the bricks change it as root too,
//! and their kernel drops the bits then as for anyone. Capabilities are dropped by the
//! bricks' kernel on the copies a write reaches; the mount removes them from the file on
//! every write unless it knows the file has none (a stripe's write reaches some bricks only).
//!
//! The kernel tells a write's caller lacks `CAP_FSETID` by a flag; a truncation's flag
//! (`FATTR_KILL_SUIDGID`) is not decoded yet, and an allocation or the kernel's own
//! request to drop the bits (an empty setattr) carries none, so the caller's capabilities
//! are read from `/proc` then, only when the file has set-id bits at all.

use proto::{Attr, FileKind, SetAttr};

/// The capability's number (`linux/capability.h`), its bit in `/proc/PID/status`.
const CAP_FSETID: u32 = 4;

/// Set-id bits a setattr `set` that left the file with `after` takes off, the kernel having
/// left that to the mount: a truncation by a caller without `CAP_FSETID`, and the kernel's
/// own request to drop them, a setattr that changes nothing, sent before a write or an
/// allocation by such a caller. None when the setattr sets the mode itself.
pub fn dropped_by_setattr(set: &SetAttr, after: &Attr, caller: impl FnOnce() -> Caller) -> u32 {
    let nothing = *set == SetAttr::default();
    let truncation = set.size.is_some() && set.perm.is_none();
    if after.kind != FileKind::File || after.perm & SET_ID == 0 || !(nothing || truncation) {
        return 0;
    }
    dropped_by(after.perm, after.gid, &caller())
}

/// Bits a change by `caller` takes off `mode`, unless it has `CAP_FSETID`.
pub fn dropped_by(mode: u32, file_gid: u32, caller: &Caller) -> u32 {
    match caller.fsetid {
        true => 0,
        false => dropped_by_write(mode, file_gid, caller),
    }
}

/// Set-user-ID and set-group-ID.
pub const SET_ID: u32 = libc::S_ISUID | libc::S_ISGID;

/// Bits a write or truncation by `caller` takes off `mode`: set-user-ID, and set-group-ID
/// where group execution is allowed or the caller is not in the file's group `file_gid`
/// (as `setattr_should_drop_sgid` in the kernel).
pub fn dropped_by_write(mode: u32, file_gid: u32, caller: &Caller) -> u32 {
    let mut bits = mode & libc::S_ISUID;
    if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !caller.in_group(file_gid)) {
        bits |= libc::S_ISGID;
    }
    bits
}

/// What matters about the process behind a request.
#[derive(Debug, Default, PartialEq)]
pub struct Caller {
    pub gid: u32,
    /// May keep set-id bits on what it changes (`CAP_FSETID`).
    pub fsetid: bool,
    pub groups: Vec<u32>,
}

impl Caller {
    fn in_group(&self, gid: u32) -> bool {
        self.fsetid || self.gid == gid || self.groups.contains(&gid)
    }

    /// The process (thread) `pid` of a request, whose primary group the request gave as
    /// `gid`. One that cannot be read (gone already) counts as unprivileged and in no
    /// other group: the bits go rather than stay. Capabilities count only in the mount's
    /// own user namespace (the first one, where the kernel's `capable()` looks, unless the
    /// mount itself runs in another): a process that is root in a namespace of its own has
    /// none there. (PID 1's namespace is no reference: its links may be unreadable.)
    pub fn of(pid: u32, gid: u32) -> Caller {
        let mut caller = match std::fs::read_to_string(format!("/proc/{pid}/status")) {
            Ok(status) => Caller::parse(&status, gid),
            Err(e) => {
                tracing::debug!(pid, "cannot read a caller's status: {e}");
                return Caller {
                    gid,
                    ..Caller::default()
                };
            }
        };
        if caller.fsetid {
            let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/user")).ok();
            let theirs = ns(&pid.to_string());
            caller.fsetid = theirs.is_some() && theirs == ns("self");
        }
        caller
    }

    /// From the text of `/proc/PID/status`.
    fn parse(status: &str, gid: u32) -> Caller {
        let mut caller = Caller {
            gid,
            ..Caller::default()
        };
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("CapEff:") {
                let caps = u64::from_str_radix(v.trim(), 16).unwrap_or(0);
                caller.fsetid = caps & (1 << CAP_FSETID) != 0;
            } else if let Some(v) = line.strip_prefix("Groups:") {
                caller.groups = v.split_whitespace().filter_map(|g| g.parse().ok()).collect();
            }
        }
        caller
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUID: u32 = libc::S_ISUID;
    const SGID: u32 = libc::S_ISGID;

    fn user(gid: u32, groups: &[u32]) -> Caller {
        Caller {
            gid,
            fsetid: false,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn writes_drop_set_id_bits_as_the_kernel_does() {
        let member = user(100, &[]);
        let other = user(200, &[300]);
        assert_eq!(dropped_by_write(0o755, 100, &other), 0);
        assert_eq!(dropped_by_write(SUID | 0o755, 100, &member), SUID);
        // Set-group-ID with group execution goes for anyone...
        assert_eq!(dropped_by_write(SUID | SGID | 0o755, 100, &member), SUID | SGID);
        // ...without it, only for a writer outside the file's group.
        assert_eq!(dropped_by_write(SGID | 0o644, 100, &member), 0);
        assert_eq!(dropped_by_write(SGID | 0o644, 300, &other), 0);
        assert_eq!(dropped_by_write(SGID | 0o644, 100, &other), SGID);
        let capable = Caller {
            fsetid: true,
            ..user(200, &[])
        };
        assert_eq!(dropped_by_write(SGID | 0o644, 100, &capable), 0);
    }

    fn attr(kind: FileKind, perm: u32) -> Attr {
        Attr {
            id: proto::FileId::ROOT,
            kind,
            perm,
            nlink: 1,
            uid: 1000,
            gid: 100,
            rdev: 0,
            size: 0,
            blocks: 0,
            blksize: 4096,
            atime: Default::default(),
            mtime: Default::default(),
            ctime: Default::default(),
        }
    }

    #[test]
    fn setattrs_drop_set_id_bits_where_the_kernel_leaves_it_to_the_mount() {
        let file = attr(FileKind::File, SUID | SGID | 0o755);
        let other = || user(200, &[]);
        let root = || Caller {
            fsetid: true,
            ..user(0, &[])
        };
        let truncate = SetAttr {
            size: Some(0),
            ..SetAttr::default()
        };
        assert_eq!(dropped_by_setattr(&truncate, &file, other), SUID | SGID);
        assert_eq!(dropped_by_setattr(&truncate, &file, root), 0);
        // The kernel's request before a write: nothing to set.
        assert_eq!(dropped_by_setattr(&SetAttr::default(), &file, other), SUID | SGID);
        assert_eq!(dropped_by_setattr(&SetAttr::default(), &file, root), 0);
        // A change of owner: the bricks' kernel drops them (it changes it as root).
        let chown = SetAttr {
            uid: Some(5),
            ..SetAttr::default()
        };
        assert_eq!(dropped_by_setattr(&chown, &file, other), 0);
        let dir = attr(FileKind::Dir, SGID | 0o755);
        assert_eq!(dropped_by_setattr(&SetAttr::default(), &dir, other), 0);
        // Setting the mode, or times only, keeps what it sets.
        let chmod = SetAttr {
            perm: Some(SUID | 0o755),
            size: Some(0),
            ..SetAttr::default()
        };
        assert_eq!(dropped_by_setattr(&chmod, &file, other), 0);
        let touch = SetAttr {
            mtime: Some(proto::TimeSet::Now),
            ..SetAttr::default()
        };
        assert_eq!(dropped_by_setattr(&touch, &file, other), 0);
        assert_eq!(
            dropped_by_setattr(&truncate, &attr(FileKind::File, 0o755), other),
            0
        );
    }

    #[test]
    fn callers_are_read_from_proc_status() {
        let status = "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 1000 \nCapInh:\t0000000000000000\nCapEff:\t0000000000000010\n";
        assert_eq!(
            Caller::parse(status, 1000),
            Caller {
                gid: 1000,
                fsetid: true,
                groups: vec![4, 24, 1000],
            }
        );
        let status = "Groups:\t\nCapEff:\t000001ffffffffef\n";
        let c = Caller::parse(status, 5);
        assert!(!c.fsetid && c.groups.is_empty());
        // Our own process can be read (its capabilities are whatever the test runs with).
        assert_eq!(Caller::of(std::process::id(), 7).gid, 7);
        assert_eq!(Caller::of(u32::MAX, 7), user(7, &[]));
    }
}
