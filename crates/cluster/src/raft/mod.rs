//! Raft, from the `openraft` crate: the replicated log of [`Command`]s, stored in redb, and the
//! [`ClusterState`] it builds.
//!
//! Persisted records start with a format version byte; reading an unknown version is an error
//! that names it, so that a node never misreads a newer node's data.

#![allow(clippy::result_large_err)] // openraft's error types are large by design

pub mod log_store;
pub mod network;
pub mod state_machine;

use crate::state::{Command, Outcome};
use serde::{Deserialize, Serialize};

/// How a Raft member is reached: its cluster endpoint (`host:port`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftNode {
    pub addr: String,
}

openraft::declare_raft_types!(
    /// The Raft types of shoal's configuration log.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = RaftNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;

/// Version byte of every record shoal writes to its Raft stores.
pub const RECORD_VERSION: u8 = 1;

/// Errors of the Raft stores.
pub type StorageError = openraft::StorageError<NodeId>;

pub(crate) fn read_err<E: std::error::Error + 'static>(e: E) -> StorageError {
    openraft::StorageIOError::<NodeId>::read(&e).into()
}

pub(crate) fn write_err<E: std::error::Error + 'static>(e: E) -> StorageError {
    openraft::StorageIOError::<NodeId>::write(&e).into()
}

/// Encodes a record: version byte, then postcard.
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    let mut out = vec![RECORD_VERSION];
    out.extend(postcard::to_allocvec(v).map_err(write_err)?);
    Ok(out)
}

/// Decodes a record written by [`encode`], refusing versions this build does not know.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, rest)) => postcard::from_bytes(rest).map_err(read_err),
        Some((v, _)) => Err(read_err(std::io::Error::other(format!(
            "record format version {v} is not known to this shoal (it knows {RECORD_VERSION}): written by a newer version?"
        )))),
        None => Err(read_err(std::io::Error::other("empty record"))),
    }
}

/// Raft timing. A follower starts an election once the leader's lease (the maximum election
/// timeout) and then its own random timeout have passed without a heartbeat: 650–800 ms
/// after a leader dies, a new one is elected. Heartbeats (every 60 ms) carry no fsync; appends
/// must fsync within the heartbeat interval or be retried.
pub fn raft_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "shoal".into(),
        heartbeat_interval: 60,
        election_timeout_min: 250,
        election_timeout_max: 400,
        install_snapshot_timeout: 2000,
        max_in_snapshot_log_to_keep: 500,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        ..Default::default()
    }
}
