//! What nodes (and mount clients) ask of a node over its cluster port.

use crate::raft::{RaftNode, TypeConfig};
use crate::state::{Command, NodeInfo, Outcome, VolumeRecord};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Serialize, Deserialize)]
pub enum NodeRequest {
    Ping,
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// Commit a command (sent to the leader).
    Propose(Command),
    /// Add the node listening at `endpoint` to the cluster (sent to the leader).
    AddMember {
        endpoint: String,
    },
    /// Remove a node from the cluster (sent to the leader).
    RemoveMember {
        pnn: u64,
    },
    /// Who are you, and may you join?
    Hello,
    /// Become member `pnn` of the cluster whose current members are `members`.
    Join {
        pnn: u64,
        members: BTreeMap<u64, RaftNode>,
    },
    /// This node's own view: role, leader, uptime.
    Status,
    /// May `path` on this node become a brick? With `stamp` (a volume id), stamp it as a
    /// brick of that volume.
    CheckBrick {
        path: String,
        force: bool,
        stamp: Option<u128>,
        /// It must also be empty (it is to be filled from other copies).
        empty: bool,
    },
    /// Take brick `brick` of `spec`, served here, in again after its disk was replaced: it is
    /// refilled from the other copies of its replica set.
    ResetBrick {
        spec: layout::VolumeSpec,
        brick: usize,
        force: bool,
    },
    /// The bricks this node serves.
    Bricks,
    /// The leader's commit index, confirmed with a quorum (for reads that must see every
    /// committed change).
    ReadIndex,
    /// A node's heartbeat: its report; the answer is the receiver's.
    Heartbeat(crate::health::NodeReport),
    /// The last results of this node's event scripts.
    ScriptStatus,
    /// Announce a public address hosted here again.
    Announce {
        ip: std::net::IpAddr,
    },
    /// Move a public address to a node (sent to the leader).
    MoveIp {
        ip: std::net::IpAddr,
        pnn: u64,
    },
    /// A volume's record (for mounts).
    GetVolume {
        name: String,
    },
    /// Like GetVolume, but answers only once the cluster state has moved past `revision`
    /// (or after a while, with the current record).
    WatchVolume {
        name: String,
        revision: u64,
    },
}

impl proto::rpc::Ping for NodeRequest {
    fn ping() -> Self {
        NodeRequest::Ping
    }
}

/// What a node says about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub name: String,
    pub address: String,
    pub cluster_port: u16,
    pub brick_base_port: u16,
    pub witness: bool,
    /// Its pnn if it is a member already.
    pub pnn: Option<u64>,
}

/// A node's view of itself and the cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    pub pnn: u64,
    pub name: String,
    pub address: String,
    pub witness: bool,
    pub leader: Option<u64>,
    pub term: u64,
    pub role: String,
    /// Unix time the daemon started, seconds.
    pub started: u64,
    /// Unix time this node last saw the leader change.
    pub last_leader_change: u64,
    pub version: String,
}

/// One brick as served by its node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BrickStatus {
    pub volume: String,
    pub path: String,
    pub port: u16,
    pub online: bool,
    pub pid: u32,
    /// Why the node does not serve it, when it does not.
    pub problem: Option<String>,
}

/// A volume as a mount needs it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeView {
    pub record: VolumeRecord,
    /// Revision of the cluster state this was read at.
    pub revision: u64,
    /// Every node's cluster endpoint, to follow changes if the first node goes away.
    pub nodes: Vec<NodeInfo>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum NodeReply {
    Pong,
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// A committed command's outcome and log index, or why it was not committed.
    Outcome(Result<(Outcome, u64), String>),
    Hello(Hello),
    Status(NodeStatus),
    Checked(Result<(), String>),
    /// What a reset did, or why it did not.
    Reset(Result<String, String>),
    Bricks(Vec<BrickStatus>),
    Volume(Option<VolumeView>),
    ReadIndex(Result<Option<u64>, String>),
    Heartbeat(crate::health::NodeReport),
    Scripts(Vec<ScriptRow>),
}

/// One event script's last run, for `shoal scriptstatus`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScriptRow {
    pub event: String,
    pub script: String,
    /// OK, ERROR(code), TIMEDOUT, DISABLED.
    pub status: String,
    pub duration: f64,
    pub started: u64,
    pub output: String,
}
