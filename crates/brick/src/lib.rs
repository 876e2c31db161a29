//! A brick: one local directory served to shoal clients.
//!
//! Files stay files: what a client writes lands as a plain file at the same path under the
//! brick directory. Each object carries its 128-bit id in an xattr, and the hidden `.shoal/`
//! folder holds an id index (hard links for files, symlinks naming parent and name for
//! directories), so that any object can be reached by id in O(1).

mod cores;
pub mod heal;
pub mod health;
pub mod index;
mod interest;
pub mod locks;
pub mod ns;
pub mod order;
pub mod paths;
pub mod readahead;
pub mod server;
pub mod sessions;
pub mod stamp;
pub mod store;
mod sys;
mod writeback;

pub use server::{BrickServer, ServerConfig};
pub use store::{Store, StoreError};
