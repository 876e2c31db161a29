//! The FUSE front end: a shoal volume mounted as a local directory.
//!
//! The kernel's requests are read by the session's threads ([`kernel`]), which run each request until it first
//! waits (sending its brick requests themselves) and then go back to the kernel for more; the
//! waiting request finishes on the tokio runtime, woken by the reply, so many requests
//! (reads of several files, readahead, lookups) proceed together. Replies go straight back to
//! the kernel from the task that finishes the request.

mod attr;
mod behind;
mod cache;
mod dirs;
mod fs;
mod fusermount;
mod inline;
mod inodes;
pub mod kernel;
mod killpriv;
mod known;
pub mod mount;

pub use attr::negative;
pub use mount::{mount, raise_readahead, MountOptions};
