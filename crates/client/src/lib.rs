//! A shoal volume as one file system.
//!
//! [`Volume`] turns a [`layout::VolumeSpec`] into a tree of translators ([`xlator::Xlator`])
//! over brick connections: distribute, stripe and replicate compose, each knowing only its
//! children. Front ends (FUSE, NFS) talk to the root of the tree.

pub mod conn;
mod dirattrs;
mod dirheal;
mod dirmove;
pub mod distribute;
pub mod gate;
mod heal;
pub mod lockset;
mod namelock;
pub mod openfiles;
pub mod order;
pub mod protocol;
pub mod replicate;
pub mod split_brain;
pub mod stripe;
pub mod volume;
pub mod xlator;

pub use volume::{Stale, StaleFn, Volume};
pub use xlator::{DirCursor, DirPage, Handle, HealReport, Xlator};
