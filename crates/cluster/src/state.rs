//! The replicated configuration: what every node agrees on, changed only by committed
//! [`Command`]s applied in log order. Applying is deterministic and does no I/O, so every
//! node reaches the same state; a command that breaks a rule changes nothing and says why.

use crate::config::valid_node_name;
use layout::{BrickSpec, VolumeSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Version of the persisted state and command formats.
pub const STATE_VERSION: u32 = 1;

/// A member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub pnn: u64,
    pub name: String,
    /// Private address.
    pub address: String,
    pub cluster_port: u16,
    pub brick_base_port: u16,
    pub witness: bool,
}

impl NodeInfo {
    /// `address:cluster_port`.
    pub fn endpoint(&self) -> String {
        join_host_port(&self.address, self.cluster_port)
    }
}

/// `host:port`, bracketing IPv6 hosts.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeState {
    Created,
    Started,
    Stopped,
}

impl std::fmt::Display for VolumeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VolumeState::Created => "Created",
            VolumeState::Started => "Started",
            VolumeState::Stopped => "Stopped",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub spec: VolumeSpec,
    pub state: VolumeState,
    pub options: BTreeMap<String, String>,
    /// The owner node of each brick, by brick index.
    pub brick_nodes: Vec<u64>,
}

/// A floating public address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicAddr {
    pub prefix: u8,
    /// Interfaces it may live on (a node hosts it on the first of these it has up).
    pub interfaces: Vec<String>,
    /// The node whose public_addresses file listed it; None when added with `addip`.
    pub source: Option<u64>,
}

/// Where a public address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Placement {
    /// Hosted by this node.
    Host(u64),
    /// Being released by this node before it moves (a planned move: release first, then
    /// take over, so that it is never up twice).
    Releasing(u64),
    /// Was on this node, which went silent and is fenced: it moves once no node can hold it
    /// (every live node says so, every silent one's lease has surely run out; see `health`).
    Fenced(u64),
    /// A planned move: `from` releases it, and `to` takes it the moment `from` reports it
    /// gone (heartbeats go to every node), without waiting for another commit.
    Handover { from: u64, to: u64 },
}

impl Placement {
    /// The node the address is on, or was on last.
    pub fn node(&self) -> u64 {
        match self {
            Placement::Host(p) | Placement::Releasing(p) | Placement::Fenced(p) => *p,
            Placement::Handover { from, .. } => *from,
        }
    }

    /// Whether this placement names `pnn` as a node that holds or may hold the address.
    pub fn involves(&self, pnn: u64) -> bool {
        match self {
            Placement::Host(p) | Placement::Releasing(p) => *p == pnn,
            Placement::Handover { from, to } => *from == pnn || *to == pnn,
            Placement::Fenced(_) => false,
        }
    }
}

/// What the administrator said about a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFlags {
    /// Healthy, but hosts no addresses.
    pub disabled: bool,
    /// Stopped by the admin: a member that takes no part until `continue`.
    pub stopped: bool,
    /// Banned until this unix time (seconds).
    pub banned_until: Option<u64>,
}

impl NodeFlags {
    pub fn banned(&self, now_unix: u64) -> bool {
        self.banned_until.is_some_and(|t| t > now_unix)
    }
}

/// Everything the cluster agrees on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: BTreeMap<u64, NodeInfo>,
    pub volumes: BTreeMap<String, VolumeRecord>,
    /// Cluster-wide tunables (`setvar`), by name.
    pub tunables: BTreeMap<String, i64>,
    pub public_addresses: BTreeMap<IpAddr, PublicAddr>,
    pub placement: BTreeMap<IpAddr, Placement>,
    pub flags: BTreeMap<u64, NodeFlags>,
    /// Revision at which each fenced node was fenced: no node grants it a lease again until
    /// it has applied that revision (and so knows its addresses are gone).
    #[serde(default)]
    pub fences: BTreeMap<u64, u64>,
    /// Revision at which each address's placement last changed.
    #[serde(default)]
    pub placed_at: BTreeMap<IpAddr, u64>,
    /// Bumped by every applied change: lets watchers see that something moved.
    pub revision: u64,
}

/// A brick as the user names it in `volume create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickRequest {
    /// Node name or address.
    pub node: String,
    pub path: String,
}

impl BrickRequest {
    /// Parses `NODE:/path`.
    pub fn parse(s: &str) -> Result<BrickRequest, String> {
        let (node, path) = s
            .split_once(':')
            .ok_or_else(|| format!("brick {s:?} is not NODE:/path"))?;
        if node.is_empty() || !path.starts_with('/') {
            return Err(format!("brick {s:?} is not NODE:/absolute/path"));
        }
        if path.split('/').any(|c| c == ".." || c == ".") || path.contains('\0') {
            return Err(format!(
                "brick path {path:?} must not contain '.' or '..' components"
            ));
        }
        let path = if path.len() > 1 {
            path.trim_end_matches('/')
        } else {
            path
        };
        Ok(BrickRequest {
            node: node.to_string(),
            path: path.to_string(),
        })
    }
}

/// A change to the configuration: the payload of Raft log entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    AddNode(NodeInfo),
    RemoveNode {
        pnn: u64,
    },
    CreateVolume {
        name: String,
        id: u128,
        stripe: u32,
        replica: u32,
        stripe_size: u64,
        bricks: Vec<BrickRequest>,
    },
    StartVolume {
        name: String,
    },
    StopVolume {
        name: String,
    },
    DeleteVolume {
        name: String,
    },
    SetVolumeOption {
        name: String,
        key: String,
        value: String,
    },
    SetTunable {
        name: String,
        value: i64,
    },
    AddPublicAddress {
        ip: IpAddr,
        prefix: u8,
        interfaces: Vec<String>,
        source: Option<u64>,
    },
    DeletePublicAddress {
        ip: IpAddr,
    },
    /// A node's public_addresses file as it reads now: adds what is new, drops what that node
    /// listed before and lists no more.
    SyncPublicAddresses {
        pnn: u64,
        list: Vec<(IpAddr, u8, Vec<String>)>,
    },
    SetFlags {
        pnn: u64,
        disabled: Option<bool>,
        stopped: Option<bool>,
        banned_until: Option<Option<u64>>,
    },
    /// The leader's placement decisions, each applied only if the address is still placed as
    /// the leader saw it (`from`), so that a stale decision never undoes a newer one.
    Place {
        changes: Vec<PlaceChange>,
    },
    /// A silent node is fenced: its addresses become `Fenced` and it gets no lease until it
    /// has caught up with this.
    Fence {
        pnn: u64,
    },
    /// A brick of a replicated volume moves to another directory or server (its old one is
    /// lost); it keeps its place in the volume, so it is refilled from its replicas.
    ReplaceBrick {
        name: String,
        old: BrickRequest,
        new: BrickRequest,
    },
}

/// One address's move: from where the leader saw it to where it goes (None: unplaced).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceChange {
    pub ip: IpAddr,
    pub from: Option<Placement>,
    pub to: Option<Placement>,
}

/// The outcome of applying one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    Refused(String),
}

/// Checks an option's value.
pub type OptionCheck = fn(&str) -> bool;

/// Volume options that may be set, with a check of their value.
pub const VOLUME_OPTIONS: &[(&str, OptionCheck)] = &[
    ("performance.attr-timeout", |v| {
        v.parse::<f64>().is_ok_and(|x| (0.0..=3600.0).contains(&x))
    }),
    ("performance.entry-timeout", |v| {
        v.parse::<f64>().is_ok_and(|x| (0.0..=3600.0).contains(&x))
    }),
    ("nfs.disable", |v| matches!(v, "on" | "off")),
    ("user.comment", |v| v.len() <= 256),
];

impl ClusterState {
    /// The node named `who`, by name or private address.
    pub fn node_by_name(&self, who: &str) -> Option<&NodeInfo> {
        self.nodes.values().find(|n| n.name == who || n.address == who)
    }

    /// Which volume uses a brick directory on a node, if any.
    pub fn brick_user(&self, pnn: u64, path: &str) -> Option<&str> {
        self.volumes.iter().find_map(|(name, v)| {
            v.spec
                .bricks
                .iter()
                .zip(&v.brick_nodes)
                .any(|(b, n)| *n == pnn && nested(&b.path, path))
                .then_some(name.as_str())
        })
    }

    /// Which brick of volume `name` `b` names (node by name or address, and path).
    pub fn brick_index(&self, name: &str, b: &BrickRequest) -> Result<usize, String> {
        let v = self
            .volumes
            .get(name)
            .ok_or_else(|| format!("volume {name} does not exist"))?;
        let node = self
            .node_by_name(&b.node)
            .ok_or_else(|| format!("{} is not a node of this cluster", b.node))?;
        v.spec
            .bricks
            .iter()
            .zip(&v.brick_nodes)
            .position(|(s, owner)| *owner == node.pnn && s.path == b.path)
            .ok_or_else(|| format!("{}:{} is not a brick of volume {name}", b.node, b.path))
    }

    fn replace_brick(&mut self, name: &str, old: &BrickRequest, new: &BrickRequest) -> Result<(), String> {
        let i = self.brick_index(name, old)?;
        let node = self
            .node_by_name(&new.node)
            .ok_or_else(|| format!("{} is not a node of this cluster", new.node))?
            .clone();
        if node.witness {
            return Err(format!("{} is a witness and holds no bricks", node.name));
        }
        if let Some(other) = self.brick_user(node.pnn, &new.path) {
            return Err(format!(
                "brick {}:{} is already part of volume {other}",
                node.name, new.path
            ));
        }
        let port = self.next_brick_port(&node, &[]);
        let v = self.volume_mut(name)?;
        if v.spec.replica < 2 {
            return Err(format!(
                "volume {name} is not replicated: a brick's data cannot be rebuilt elsewhere"
            ));
        }
        v.spec.bricks[i] = BrickSpec {
            node: node.name.clone(),
            path: new.path.clone(),
            addr: join_host_port(&node.address, port),
        };
        v.brick_nodes[i] = node.pnn;
        Ok(())
    }

    fn next_brick_port(&self, node: &NodeInfo, taken: &[u16]) -> u16 {
        let mut used: Vec<u16> = self
            .volumes
            .values()
            .flat_map(|v| v.spec.bricks.iter().zip(&v.brick_nodes))
            .filter(|(_, n)| **n == node.pnn)
            .filter_map(|(b, _)| b.addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
            .collect();
        used.extend_from_slice(taken);
        let mut port = node.brick_base_port;
        while used.contains(&port) {
            port = port.saturating_add(1);
        }
        port
    }

    /// Checks a command against the current state without applying it.
    pub fn check(&self, cmd: &Command) -> Result<(), String> {
        self.clone().apply(cmd).map(|_| ())
    }

    /// Applies a command. On refusal the state is left exactly as it was.
    pub fn apply(&mut self, cmd: &Command) -> Result<(), String> {
        let mut next = self.clone();
        next.apply_in_place(cmd)?;
        next.revision += 1;
        *self = next;
        Ok(())
    }

    fn volume_mut(&mut self, name: &str) -> Result<&mut VolumeRecord, String> {
        self.volumes
            .get_mut(name)
            .ok_or_else(|| format!("volume {name} does not exist"))
    }

    fn apply_in_place(&mut self, cmd: &Command) -> Result<(), String> {
        match cmd {
            Command::AddNode(n) => {
                if !valid_node_name(&n.name) {
                    return Err(format!("node name {:?} is invalid", n.name));
                }
                if self.nodes.contains_key(&n.pnn) {
                    return Err(format!("pnn {} is taken", n.pnn));
                }
                if let Some(o) = self
                    .nodes
                    .values()
                    .find(|o| o.name == n.name || o.address == n.address)
                {
                    return Err(format!(
                        "node {} ({}) is already a member as pnn {}",
                        o.name, o.address, o.pnn
                    ));
                }
                self.nodes.insert(n.pnn, n.clone());
            }
            Command::RemoveNode { pnn } => {
                let node = self
                    .nodes
                    .get(pnn)
                    .ok_or_else(|| format!("no node with pnn {pnn}"))?;
                if let Some((vol, _)) = self.volumes.iter().find(|(_, v)| v.brick_nodes.contains(pnn)) {
                    return Err(format!(
                        "node {} holds bricks of volume {vol}: delete or move them first",
                        node.name
                    ));
                }
                let pnn = *pnn;
                self.nodes.remove(&pnn);
                self.flags.remove(&pnn);
                self.fence(pnn);
            }
            Command::CreateVolume {
                name,
                id,
                stripe,
                replica,
                stripe_size,
                bricks,
            } => {
                if self.volumes.contains_key(name) {
                    return Err(format!("volume {name} already exists"));
                }
                let mut specs = Vec::new();
                let mut owners = Vec::new();
                let mut taken: BTreeMap<u64, Vec<u16>> = BTreeMap::new();
                for b in bricks {
                    let node = self.node_by_name(&b.node).ok_or_else(|| {
                        format!(
                            "brick {}:{}: {} is not a node of this cluster",
                            b.node, b.path, b.node
                        )
                    })?;
                    if node.witness {
                        return Err(format!(
                            "brick {}:{}: {} is a witness and holds no bricks",
                            b.node, b.path, node.name
                        ));
                    }
                    if let Some(other) = self.brick_user(node.pnn, &b.path) {
                        return Err(format!(
                            "brick {}:{} is already part of volume {other}",
                            node.name, b.path
                        ));
                    }
                    let t = taken.entry(node.pnn).or_default();
                    let port = self.next_brick_port(node, t);
                    t.push(port);
                    specs.push(BrickSpec {
                        node: node.name.clone(),
                        path: b.path.clone(),
                        addr: join_host_port(&node.address, port),
                    });
                    owners.push(node.pnn);
                }
                // Bricks of one volume must not contain one another either.
                for (i, a) in specs.iter().enumerate() {
                    for b in &specs[i + 1..] {
                        if a.node == b.node && nested(&a.path, &b.path) {
                            return Err(format!(
                                "brick {} is given more than once (or inside another brick)",
                                b.label()
                            ));
                        }
                    }
                }
                let spec = VolumeSpec {
                    version: layout::spec::SPEC_VERSION,
                    name: name.clone(),
                    id: *id,
                    stripe: *stripe,
                    replica: *replica,
                    stripe_size: *stripe_size,
                    bricks: specs,
                };
                spec.validate().map_err(|e| e.to_string())?;
                self.volumes.insert(
                    name.clone(),
                    VolumeRecord {
                        spec,
                        state: VolumeState::Created,
                        options: BTreeMap::new(),
                        brick_nodes: owners,
                    },
                );
            }
            Command::ReplaceBrick { name, old, new } => self.replace_brick(name, old, new)?,
            Command::StartVolume { name } => {
                let v = self.volume_mut(name)?;
                if v.state == VolumeState::Started {
                    return Err(format!("volume {name} already started"));
                }
                v.state = VolumeState::Started;
            }
            Command::StopVolume { name } => {
                let v = self.volume_mut(name)?;
                if v.state != VolumeState::Started {
                    return Err(format!("volume {name} is not in the started state"));
                }
                v.state = VolumeState::Stopped;
            }
            Command::DeleteVolume { name } => {
                let v = self.volume_mut(name)?;
                if v.state == VolumeState::Started {
                    return Err(format!("volume {name} has been started: stop it before deleting"));
                }
                self.volumes.remove(name);
            }
            Command::SetVolumeOption { name, key, value } => {
                let check = VOLUME_OPTIONS
                    .iter()
                    .find(|(k, _)| k == key)
                    .ok_or_else(|| format!("option {key} does not exist (known: {})", option_names()))?
                    .1;
                if !check(value) {
                    return Err(format!("value {value:?} is not valid for option {key}"));
                }
                self.volume_mut(name)?.options.insert(key.clone(), value.clone());
            }
            Command::SetTunable { name, value } => {
                let t =
                    crate::tunables::find(name).ok_or_else(|| format!("no tunable {name} (see listvars)"))?;
                if !(t.min..=t.max).contains(value) {
                    return Err(format!("{name} must be between {} and {}", t.min, t.max));
                }
                self.tunables.insert(t.name.to_string(), *value);
            }
            Command::AddPublicAddress {
                ip,
                prefix,
                interfaces,
                source,
            } => {
                check_public(*ip, *prefix, interfaces)?;
                if self.public_addresses.contains_key(ip) {
                    return Err(format!("public address {ip} is already configured"));
                }
                self.public_addresses.insert(
                    *ip,
                    PublicAddr {
                        prefix: *prefix,
                        interfaces: interfaces.clone(),
                        source: *source,
                    },
                );
            }
            Command::DeletePublicAddress { ip } => {
                if self.public_addresses.remove(ip).is_none() {
                    return Err(format!("public address {ip} is not configured"));
                }
                self.placement.remove(ip);
                self.placed_at.remove(ip);
            }
            Command::SyncPublicAddresses { pnn, list } => {
                for (ip, prefix, ifaces) in list {
                    check_public(*ip, *prefix, ifaces)?;
                }
                let listed: std::collections::BTreeSet<IpAddr> = list.iter().map(|(ip, _, _)| *ip).collect();
                let gone: Vec<IpAddr> = self
                    .public_addresses
                    .iter()
                    .filter(|(ip, a)| a.source == Some(*pnn) && !listed.contains(ip))
                    .map(|(ip, _)| *ip)
                    .collect();
                for ip in gone {
                    self.public_addresses.remove(&ip);
                    self.placement.remove(&ip);
                    self.placed_at.remove(&ip);
                }
                for (ip, prefix, ifaces) in list {
                    self.public_addresses.entry(*ip).or_insert_with(|| PublicAddr {
                        prefix: *prefix,
                        interfaces: ifaces.clone(),
                        source: Some(*pnn),
                    });
                }
            }
            Command::SetFlags {
                pnn,
                disabled,
                stopped,
                banned_until,
            } => {
                if !self.nodes.contains_key(pnn) {
                    return Err(format!("no node with pnn {pnn}"));
                }
                let f = self.flags.entry(*pnn).or_default();
                if let Some(d) = disabled {
                    f.disabled = *d;
                }
                if let Some(s) = stopped {
                    f.stopped = *s;
                }
                if let Some(b) = banned_until {
                    f.banned_until = *b;
                }
            }
            Command::Place { changes } => {
                let rev = self.revision + 1;
                for c in changes {
                    // Deleted or moved meanwhile: this decision is stale.
                    if !self.public_addresses.contains_key(&c.ip)
                        || self.placement.get(&c.ip) != c.from.as_ref()
                    {
                        continue;
                    }
                    match c.to {
                        Some(p) => self.placement.insert(c.ip, p),
                        None => self.placement.remove(&c.ip),
                    };
                    self.placed_at.insert(c.ip, rev);
                }
            }
            Command::Fence { pnn } => {
                if !self.nodes.contains_key(pnn) {
                    return Err(format!("no node with pnn {pnn}"));
                }
                self.fence(*pnn);
            }
        }
        Ok(())
    }
}

impl ClusterState {
    /// Marks `pnn` fenced at the revision being applied, its addresses `Fenced`.
    fn fence(&mut self, pnn: u64) {
        let rev = self.revision + 1;
        self.fences.insert(pnn, rev);
        for (ip, p) in self.placement.iter_mut() {
            if p.involves(pnn) {
                *p = Placement::Fenced(pnn);
                self.placed_at.insert(*ip, rev);
            }
        }
    }
}

fn check_public(ip: IpAddr, prefix: u8, interfaces: &[String]) -> Result<(), String> {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix == 0 || prefix > max {
        return Err(format!("prefix /{prefix} is out of range for {ip}"));
    }
    if ip.is_loopback() || ip.is_multicast() || ip.is_unspecified() {
        return Err(format!("{ip} cannot be a public address"));
    }
    if interfaces.is_empty()
        || interfaces
            .iter()
            .any(|i| i.is_empty() || i.len() > 15 || i.contains('/'))
    {
        return Err(format!("public address {ip}: give one or more interface names"));
    }
    Ok(())
}

fn option_names() -> String {
    VOLUME_OPTIONS
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

/// True if one path is the other or lies inside it.
fn nested(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_end_matches('/'), b.trim_end_matches('/'));
    a == b || b.starts_with(&format!("{a}/")) || a.starts_with(&format!("{b}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        for i in 0..3u64 {
            s.apply(&Command::AddNode(NodeInfo {
                pnn: i,
                name: format!("n{i}"),
                address: format!("10.0.0.{}", i + 1),
                cluster_port: 24007,
                brick_base_port: 49152,
                witness: false,
            }))
            .unwrap();
        }
        s
    }

    fn create(name: &str, replica: u32, bricks: &[&str]) -> Command {
        Command::CreateVolume {
            name: name.into(),
            id: 1,
            stripe: 1,
            replica,
            stripe_size: 131072,
            bricks: bricks.iter().map(|b| BrickRequest::parse(b).unwrap()).collect(),
        }
    }

    #[test]
    fn a_replaced_brick_keeps_its_place_on_its_new_node() {
        let mut s = state();
        s.apply(&create("r", 2, &["n0:/b/r", "n1:/b/r"])).unwrap();
        s.apply(&create("plain", 1, &["n2:/b/p"])).unwrap();
        let replace = |vol: &str, old: &str, new: &str| Command::ReplaceBrick {
            name: vol.into(),
            old: BrickRequest::parse(old).unwrap(),
            new: BrickRequest::parse(new).unwrap(),
        };
        let before = s.clone();
        for (cmd, why) in [
            (replace("r", "n2:/b/r", "n2:/b/q"), "not a brick of volume r"),
            (replace("r", "n1:/b/r", "n9:/b/q"), "not a node"),
            (
                replace("r", "n1:/b/r", "n2:/b/p/in"),
                "already part of volume plain",
            ),
            (replace("plain", "n2:/b/p", "n0:/b/q"), "not replicated"),
            (replace("none", "n0:/b/r", "n0:/b/q"), "does not exist"),
        ] {
            let e = s.apply(&cmd).unwrap_err();
            assert!(e.contains(why), "{cmd:?}: {e}");
            assert_eq!(s, before, "a refused command changes nothing");
        }
        s.apply(&replace("r", "10.0.0.2:/b/r", "n2:/b/q")).unwrap();
        let v = &s.volumes["r"];
        assert_eq!(v.brick_nodes, [0, 2]);
        assert_eq!(v.spec.bricks[1].node, "n2");
        assert_eq!(v.spec.bricks[1].path, "/b/q");
        assert_eq!(
            v.spec.bricks[1].addr, "10.0.0.3:49153",
            "a port free on the new node"
        );
    }

    #[test]
    fn volume_lifecycle() {
        let mut s = state();
        s.apply(&create("v", 1, &["n0:/b/v", "10.0.0.2:/b/v"])).unwrap();
        let v = &s.volumes["v"];
        assert_eq!(v.spec.bricks[1].node, "n1", "addresses resolve to names");
        assert_eq!(v.spec.bricks[0].addr, "10.0.0.1:49152");
        s.apply(&create("w", 1, &["n0:/b/w"])).unwrap();
        assert_eq!(
            s.volumes["w"].spec.bricks[0].addr, "10.0.0.1:49153",
            "ports are not reused"
        );
        assert!(s.apply(&Command::StartVolume { name: "v".into() }).is_ok());
        let rev = s.revision;
        let before = s.clone();
        for (cmd, why) in [
            (Command::StartVolume { name: "v".into() }, "already started"),
            (Command::DeleteVolume { name: "v".into() }, "stop it"),
            (
                Command::StopVolume { name: "w".into() },
                "not in the started state",
            ),
            (create("x", 1, &["n9:/b/x"]), "not a node"),
            (create("x", 1, &["n0:/b/v"]), "already part of volume v"),
            (create("x", 1, &["n0:/b/v/inner"]), "already part of volume v"),
            (
                create("x", 2, &["n0:/b/x", "n1:/b/x", "n2:/b/x"]),
                "not a multiple",
            ),
            (create("x", 1, &["n0:/b/x", "n0:/b/x"]), "more than once"),
            (create("9x", 1, &["n0:/b/x"]), "invalid"),
            (create("v", 1, &["n0:/b/z"]), "already exists"),
            (
                Command::SetVolumeOption {
                    name: "v".into(),
                    key: "bogus".into(),
                    value: "1".into(),
                },
                "does not exist",
            ),
        ] {
            let e = s.apply(&cmd).unwrap_err();
            assert!(e.contains(why), "{cmd:?}: {e}");
            assert_eq!(s, before, "a refused command changes nothing");
        }
        assert_eq!(s.revision, rev);
        s.apply(&Command::StopVolume { name: "v".into() }).unwrap();
        s.apply(&Command::DeleteVolume { name: "v".into() }).unwrap();
        assert!(!s.volumes.contains_key("v"));
    }

    #[test]
    fn brick_names_are_parsed_strictly() {
        assert!(BrickRequest::parse("n0:/a/b/").is_ok_and(|b| b.path == "/a/b"));
        for bad in ["n0", "n0:rel", ":/x", "n0:/a/../b", "n0:/a/./b"] {
            assert!(BrickRequest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nodes_holding_bricks_cannot_leave() {
        let mut s = state();
        s.apply(&create("v", 1, &["n2:/b"])).unwrap();
        assert!(s
            .apply(&Command::RemoveNode { pnn: 2 })
            .unwrap_err()
            .contains("holds bricks"));
        s.apply(&Command::RemoveNode { pnn: 1 }).unwrap();
        assert_eq!(s.nodes.len(), 2);
    }
}
