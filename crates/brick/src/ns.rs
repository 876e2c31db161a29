//! shoal's own extended attributes on brick objects.
//!
//! They live under `trusted.shoal.` when the brick runs with CAP_SYS_ADMIN (as in
//! production: invisible and untouchable for unprivileged users on the brick host) and under
//! `user.shoal.` otherwise (development without root). Clients name them without the prefix
//! ("id", "pending.2", "linkto", ...); clients can never read or write the prefixed names
//! through the user-xattr operations.

use proto::Errno;

/// The xattr holding an object's id.
pub const ID: &str = "id";

/// The xattr recording the directory a regular file was made in or last moved to (its id,
/// 16 bytes: small enough to stay in the inode on ext4 beside the id). Its name there is
/// the entry with the file's inode number. Only the brick writes it; a hard link's
/// removal can leave it naming a directory the file is no longer in.
pub const PARENT: &str = "parent";

/// Which namespace this brick's internal xattrs use.
#[derive(Clone, Debug)]
pub struct Namespace {
    prefix: &'static str,
}

impl Namespace {
    pub const TRUSTED: Namespace = Namespace {
        prefix: "trusted.shoal.",
    };
    pub const USER: Namespace = Namespace {
        prefix: "user.shoal.",
    };

    /// The on-disk name of an internal xattr.
    pub fn disk_name(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    /// The internal name of an on-disk xattr name, if it is one of ours.
    pub fn internal<'a>(&self, disk: &'a [u8]) -> Option<&'a str> {
        let rest = disk.strip_prefix(self.prefix.as_bytes())?;
        std::str::from_utf8(rest).ok()
    }

    /// True if a user-visible xattr name would touch our namespace.
    pub fn is_reserved(&self, name: &[u8]) -> bool {
        name.starts_with(self.prefix.as_bytes())
    }

    /// The prefix itself, for display.
    pub fn prefix(&self) -> &'static str {
        self.prefix
    }
}

/// Checks a client-supplied internal name: short, plain ASCII, and not the id or the parent
/// record (which only the brick writes).
pub fn check_meta_name(name: &str) -> Result<(), Errno> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != ID
        && name != PARENT
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Errno::EINVAL)
    }
}

/// Checks a user xattr name: non-empty, at most XATTR_NAME_MAX, no NUL, and has a namespace.
pub fn check_user_name(ns: &Namespace, name: &[u8]) -> Result<(), Errno> {
    if name.is_empty() || name.len() > 255 {
        return Err(Errno::ERANGE);
    }
    if name.contains(&0) || !name.contains(&b'.') {
        return Err(Errno::EOPNOTSUPP);
    }
    if ns.is_reserved(name) {
        return Err(Errno::EPERM);
    }
    Ok(())
}
