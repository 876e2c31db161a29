//! The admin protocol between the `shoal` CLI and its local daemon: one JSON request per line
//! on a unix socket, one JSON response back. Only local users allowed by the socket's
//! permissions get here, so it carries no key.

use crate::rpc::{BrickStatus, NodeStatus};
use crate::state::{NodeInfo, VolumeRecord};
use serde::{Deserialize, Serialize};

/// Which nodes a command is for (ctdb's `-n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    This,
    Pnn(u64),
    All,
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Target, String> {
        match s {
            "all" => Ok(Target::All),
            n => n
                .parse()
                .map(Target::Pnn)
                .map_err(|_| format!("-n takes a PNN or 'all', not {n:?}")),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AdminRequest {
    Status,
    ListNodes,
    Pnn,
    Ping {
        target: Target,
    },
    Uptime {
        target: Target,
    },
    VolumeCreate {
        name: String,
        stripe: u32,
        replica: u32,
        bricks: Vec<String>,
        force: bool,
        stripe_size: Option<u64>,
    },
    VolumeStart {
        name: String,
    },
    VolumeStop {
        name: String,
    },
    VolumeDelete {
        name: String,
    },
    VolumeSet {
        name: String,
        key: String,
        value: String,
    },
    VolumeInfo {
        name: Option<String>,
    },
    VolumeStatus {
        name: Option<String>,
    },
    VolumeList,
    NodeAdd {
        endpoint: String,
    },
    NodeRemove {
        pnn: u64,
    },
}

/// A node as `shoal status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRow {
    pub pnn: u64,
    pub name: String,
    pub address: String,
    pub state: String,
    pub witness: bool,
    pub this: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub nodes: Vec<NodeRow>,
    pub generation: u64,
    pub leader: Option<u64>,
    pub this: u64,
}

/// One answer to `ping`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PingRow {
    pub pnn: u64,
    /// Round trip in seconds, or why there was none.
    pub result: Result<f64, String>,
}

/// A brick in `volume status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BrickRow {
    pub label: String,
    pub status: Option<BrickStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeStatusView {
    pub volume: VolumeRecord,
    pub bricks: Vec<BrickRow>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AdminResponse {
    Done(String),
    Error(String),
    Status(ClusterStatus),
    Nodes(Vec<NodeInfo>),
    Pnn(u64),
    Pings(Vec<PingRow>),
    Uptimes(Vec<Result<NodeStatus, (u64, String)>>),
    Volumes(Vec<VolumeRecord>),
    VolumeStatus(Vec<VolumeStatusView>),
}
