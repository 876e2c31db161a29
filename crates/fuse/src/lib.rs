//! The FUSE front end: a shoal volume mounted as a local directory.
//!
//! The kernel's requests are read by fuser's threads and handed to the tokio runtime at once,
//! so that many requests (reads of several files, readahead, lookups) proceed together while
//! the translators wait on bricks. Replies go straight back to the kernel from the task
//! that finishes the request.

mod attr;
mod dirs;
mod fs;
pub mod fusermount;
mod inodes;
pub mod mount;

pub use mount::{mount, MountOptions};
