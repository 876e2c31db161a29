//! The shoal wire format.
//!
//! Every connection (client to brick, node to node) starts with a versioned, authenticated
//! handshake ([`auth`]) and then carries [`frame`]s: a fixed prefix with a request id, a
//! postcard-encoded header ([`msg`]) and raw data bytes that are never re-serialised.
//! Errors travel as errno values ([`errno`]) so that every layer can hand them to the kernel.

pub mod auth;
pub mod errno;
pub mod frame;
pub mod lane;
pub mod msg;
pub mod outbox;
pub mod piped;
pub mod rpc;
pub mod service;
pub mod transport;
pub mod types;

pub use errno::Errno;
pub use types::*;

/// Version of the message set spoken after the handshake. Bumped on any incompatible change;
/// peers agree on the highest version both speak.
/// 2: bricks send [`msg::Notice`]s and answer a release with the file's attributes.
/// 3: write orders (`msg::Request::Order`, `msg::Notice::Yield`).
pub const PROTOCOL_VERSION: u16 = 3;
/// Oldest message-set version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
