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

/// A change to a node's ban. (An enum, not `Option<Option<_>>`, which JSON cannot tell apart.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BanChange {
    For { seconds: u64 },
    Lift,
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
    /// What each brick of a replicated volume lists as waiting for heal.
    VolumeHealInfo {
        name: String,
    },
    /// Objects in split brain, or settle one (or all of a brick's replica set).
    VolumeSplitBrain {
        name: String,
        op: SplitBrainOp,
    },
    /// Take brick `brick` (NODE:/path) of a replicated volume in again after its disk was
    /// replaced, and refill it from its replicas.
    VolumeResetBrick {
        name: String,
        brick: String,
        force: bool,
    },
    /// Move brick `old` of a replicated volume to `new` (NODE:/path), refilled from its
    /// replicas.
    VolumeReplaceBrick {
        name: String,
        old: String,
        new: String,
        force: bool,
    },
    VolumeList,
    NodeAdd {
        endpoint: String,
    },
    NodeRemove {
        pnn: u64,
    },
    Ip {
        target: Target,
    },
    /// disable/enable, stop/continue, ban/unban (None leaves a flag as it is).
    Flags {
        target: Target,
        disabled: Option<bool>,
        stopped: Option<bool>,
        ban: Option<BanChange>,
    },
    MoveIp {
        ip: std::net::IpAddr,
        pnn: u64,
    },
    ReloadIps,
    AddIp {
        ip: std::net::IpAddr,
        prefix: u8,
        interfaces: Vec<String>,
    },
    DelIp {
        ip: std::net::IpAddr,
    },
    GratArp {
        ip: std::net::IpAddr,
    },
    SetVar {
        name: String,
        value: i64,
    },
    GetVar {
        name: String,
    },
    ListVars,
    ScriptStatus {
        target: Target,
    },
}

/// A public address in `shoal ip`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IpRow {
    pub ip: std::net::IpAddr,
    pub prefix: u8,
    /// Hosting (or releasing) node.
    pub pnn: Option<u64>,
    pub releasing: bool,
    pub interfaces: Vec<String>,
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

/// A brick in `volume heal NAME info`: the objects it lists as waiting for heal (at most
/// `HEAL_INFO_MAX`), or why it could not be asked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HealRow {
    pub brick: String,
    pub entries: Result<Vec<HealEntry>, String>,
}

/// An object waiting for heal: its id, and its path in the volume when the brick found it
/// (directories always; files within the brick's search budget).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HealEntry {
    pub id: String,
    pub path: Option<String>,
}

/// `volume heal NAME split-brain ...` (and `info split-brain`): a split brain is an object
/// whose copies each mark another as behind, which the heal leaves to an administrator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SplitBrainOp {
    /// List the objects in split brain.
    Info,
    /// Keep the copies on `brick` (NODE:/path): of the object at `path` in the volume, or of
    /// every object in split brain in that brick's replica set.
    SourceBrick { brick: String, path: Option<String> },
    /// Keep the largest copy of the file at `path`.
    BiggerFile { path: String },
    /// Keep the copy of `path` modified last.
    LatestMtime { path: String },
}

/// Most entries `volume heal NAME info` lists per brick.
pub const HEAL_INFO_MAX: u32 = 4096;

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
    HealInfo(Vec<HealRow>),
    /// Objects in split brain.
    SplitBrains(Vec<HealEntry>),
    Ips(Vec<IpRow>),
    Vars(Vec<(String, i64)>),
    Scripts(Vec<(u64, Result<Vec<crate::rpc::ScriptRow>, String>)>),
}
