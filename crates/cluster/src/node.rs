//! A running node: its Raft member, its cluster port, and the answers to admin commands.

#![allow(clippy::result_large_err)]

use crate::admin::{
    AdminRequest, AdminResponse, BrickRow, ClusterStatus, HealEntry, HealRow, NodeRow, PingRow, SplitBrainOp,
    Target, VolumeStatusView,
};
use crate::config::{NodeConfig, PublicAddress};
use crate::peers::{NodeConn, Peers};
use crate::raft::{
    log_store::LogStore, network::Network, raft_config, state_machine::StateMachineStore, Raft, RaftNode,
};
use crate::rpc::{BrickStatus, Hello, NodeReply, NodeRequest, NodeStatus, VolumeView};
use crate::state::{join_host_port, BrickRequest, ClusterState, Command, NodeInfo, Outcome};
use bytes::Bytes;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::ChangeMembers;
use proto::auth::{ClusterKey, Peer};
use proto::outbox::Body;
use proto::service::{Handled, Service};
use proto::Errno;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How long a command may take to commit before the CLI is told the cluster has no quorum.
pub const COMMIT_DEADLINE: Duration = Duration::from_secs(5);
/// How long a mount's watch waits before answering with no change.
const WATCH_WAIT: Duration = Duration::from_secs(20);
/// Format of the identity file.
const IDENTITY_VERSION: u32 = 1;

/// What only the machine itself can do, provided by the daemon (which knows about file data,
/// interfaces and scripts).
pub trait LocalHost: Send + Sync + 'static {
    /// May `path` become a brick here (an `empty` one, to be filled from other copies)?
    /// With `force`, a missing directory is made and a used one taken. With `stamp` (a
    /// volume id), it is also stamped as a brick of that volume.
    fn check(&self, path: &str, force: bool, stamp: Option<u128>, empty: bool) -> Result<(), String>;
    /// Marks brick `brick` of `spec` behind on the root directory of the other copies of
    /// its replica set, so that healing refills it; says how many copies took the marker
    /// (at least one, or an error).
    fn mark_behind(&self, spec: layout::VolumeSpec, brick: usize) -> HostFuture<'_, Result<usize, String>>;
    /// Takes brick `brick` of `spec` (served here) in again after its disk was replaced:
    /// marks it behind on the other copies of its replica set, stamps its directory and
    /// serves it, so that the volume's healers refill it. Says what it did.
    fn reset(
        &self,
        spec: layout::VolumeSpec,
        brick: usize,
        force: bool,
    ) -> HostFuture<'_, Result<String, String>>;
    /// Lists the split brains of `spec` (their ids, in hex), or settles one or more as
    /// `work` says (what was done, one line each).
    fn split_brain(
        &self,
        spec: layout::VolumeSpec,
        work: SplitBrainWork,
    ) -> HostFuture<'_, Result<Vec<String>, String>>;
    /// The bricks served here now.
    fn status(&self) -> Vec<BrickStatus>;
    /// Announces a public address hosted here again (gratuitous ARP).
    fn announce(&self, ip: std::net::IpAddr) -> Result<(), String>;
    /// The last results of the event scripts.
    fn script_status(&self) -> Vec<crate::rpc::ScriptRow>;
}

/// What a node is asked to do about a volume's split brains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitBrainWork {
    List,
    /// Settle the object at `path` in the volume, or with `SettleBy::Brick` and no path
    /// every one in that brick's replica set.
    Settle {
        path: Option<String>,
        by: SettleBy,
    },
}

/// Which copy a settled file keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettleBy {
    /// The copy on the volume's brick with this index.
    Brick(usize),
    BiggerFile,
    LatestMtime,
}

/// What [`LocalHost`] does in the background.
pub type HostFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("state directory {path}: {source}")]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error("identity file {path}: {message}")]
    Identity { path: PathBuf, message: String },
    #[error("raft storage: {0}")]
    Storage(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
}

/// What a node remembers about itself across restarts.
#[derive(Serialize, Deserialize)]
struct Identity {
    version: u32,
    pnn: u64,
}

pub struct Node {
    pub(crate) health: crate::health::Health,
    /// Addresses `moveip` asked to put on a given node, until placed there.
    pub(crate) pins: Mutex<std::collections::HashMap<std::net::IpAddr, u64>>,
    /// This node's public_addresses file has been proposed.
    synced: std::sync::atomic::AtomicBool,
    /// Applied everything the cluster had committed when it last (re)started: until then
    /// its state may be stale (applied state is not flushed at every entry) and it holds no
    /// addresses.
    pub(crate) caught_up: std::sync::atomic::AtomicBool,
    pub(crate) cfg: NodeConfig,
    name: String,
    key: ClusterKey,
    pub(crate) pnn: OnceLock<u64>,
    pub(crate) raft: OnceLock<Raft>,
    state: OnceLock<watch::Receiver<Arc<ClusterState>>>,
    pub(crate) peers: Arc<Peers>,
    pub(crate) host: Arc<dyn LocalHost>,
    started: SystemTime,
    leader_change: Mutex<(Option<u64>, SystemTime)>,
    pub(crate) publics: Vec<PublicAddress>,
    /// Serialises joins: a node joins one cluster once.
    joining: tokio::sync::Mutex<()>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn fail(msg: impl Into<String>) -> AdminResponse {
    AdminResponse::Error(msg.into())
}

impl Node {
    /// Starts a node: its Raft member (unless it waits to be added), its cluster port.
    pub async fn start(
        cfg: NodeConfig,
        publics: Vec<PublicAddress>,
        key: ClusterKey,
        host: Arc<dyn LocalHost>,
    ) -> Result<Arc<Node>, NodeError> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(|source| NodeError::StateDir {
            path: cfg.state_dir.clone(),
            source,
        })?;
        let name = cfg.node_name();
        let node = Arc::new(Node {
            health: crate::health::Health::default(),
            pins: Mutex::new(std::collections::HashMap::new()),
            synced: std::sync::atomic::AtomicBool::new(false),
            caught_up: std::sync::atomic::AtomicBool::new(false),
            peers: Arc::new(Peers::new(key.clone(), &name, "node")),
            name,
            key,
            pnn: OnceLock::new(),
            raft: OnceLock::new(),
            state: OnceLock::new(),
            host,
            started: SystemTime::now(),
            leader_change: Mutex::new((None, SystemTime::now())),
            publics,
            joining: tokio::sync::Mutex::new(()),
            cfg,
        });
        let identity = node.read_identity()?;
        let pnn = match identity {
            Some(p) => Some(p),
            None if !node.cfg.join => node
                .cfg
                .nodes
                .iter()
                .position(|a| *a == node.cfg.address)
                .map(|i| i as u64),
            None => None,
        };
        if let Some(pnn) = pnn {
            node.start_raft(pnn).await?;
            if identity.is_none() {
                node.write_identity(pnn)?;
                node.bootstrap().await;
            }
        }
        let listen = join_host_port(&node.cfg.address.to_string(), node.cfg.cluster_port);
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|source| NodeError::Listen {
                addr: listen.clone(),
                source,
            })?;
        let (_, never) = watch::channel(false);
        let key = node.key.clone();
        tokio::spawn(proto::service::serve(node.clone(), listener, key, never));
        tokio::spawn(node.clone().housekeeping());
        tokio::spawn(node.clone().heartbeats());
        tokio::spawn(node.clone().placement_loop());
        tracing::info!(node = %node.name, pnn = ?node.pnn.get(), %listen, "node started");
        Ok(node)
    }

    fn identity_path(&self) -> PathBuf {
        self.cfg.state_dir.join("identity.toml")
    }

    fn read_identity(&self) -> Result<Option<u64>, NodeError> {
        let path = self.identity_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let id: Identity = toml::from_str(&text).map_err(|e| NodeError::Identity {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                if id.version != IDENTITY_VERSION {
                    return Err(NodeError::Identity {
                        path,
                        message: format!("unknown version {}", id.version),
                    });
                }
                Ok(Some(id.pnn))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NodeError::Identity {
                path,
                message: e.to_string(),
            }),
        }
    }

    fn write_identity(&self, pnn: u64) -> Result<(), NodeError> {
        let path = self.identity_path();
        let text = toml::to_string(&Identity {
            version: IDENTITY_VERSION,
            pnn,
        })
        .map_err(|e| NodeError::Identity {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| NodeError::Identity {
                path,
                message: e.to_string(),
            })
    }

    async fn start_raft(&self, pnn: u64) -> Result<(), NodeError> {
        let dir = &self.cfg.state_dir;
        let log =
            LogStore::open(&dir.join("raft-log.redb")).map_err(|e| NodeError::Storage(e.to_string()))?;
        let (sm, state) = StateMachineStore::open(&dir.join("raft-state.redb"))
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        let config = Arc::new(
            raft_config()
                .validate()
                .map_err(|e| NodeError::Storage(e.to_string()))?,
        );
        let raft = Raft::new(
            pnn,
            config,
            Network {
                peers: self.peers.clone(),
            },
            log,
            sm,
        )
        .await
        .map_err(|e| NodeError::Storage(e.to_string()))?;
        let _ = self.pnn.set(pnn);
        let _ = self.raft.set(raft);
        let _ = self.state.set(state);
        Ok(())
    }

    /// First start of a founding member: form the cluster with the configured node list.
    /// Every founder proposes the same membership, which Raft accepts once.
    async fn bootstrap(&self) {
        let Some(raft) = self.raft.get() else { return };
        let members: BTreeMap<u64, RaftNode> = self
            .cfg
            .nodes
            .iter()
            .enumerate()
            .map(|(i, a)| {
                (
                    i as u64,
                    RaftNode {
                        addr: join_host_port(&a.to_string(), self.cfg.cluster_port),
                    },
                )
            })
            .collect();
        match raft.initialize(members).await {
            Ok(()) => tracing::info!("cluster formed with {} nodes", self.cfg.nodes.len()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => tracing::error!("cannot form the cluster: {e}"),
        }
    }

    /// Stops Raft cleanly (its stores are closed as it ends).
    pub async fn shutdown(&self) {
        if let Some(r) = self.raft.get() {
            if let Err(e) = r.shutdown().await {
                tracing::warn!("raft shutdown: {e}");
            }
        }
    }

    pub fn pnn(&self) -> Option<u64> {
        self.pnn.get().copied()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn public_addresses(&self) -> &[PublicAddress] {
        &self.publics
    }

    /// The latest applied cluster state (empty until this node is a member).
    pub fn state(&self) -> Arc<ClusterState> {
        self.state.get().map(|s| s.borrow().clone()).unwrap_or_default()
    }

    /// A receiver of state changes, once this node is a member.
    pub fn watch_state(&self) -> Option<watch::Receiver<Arc<ClusterState>>> {
        self.state.get().cloned()
    }

    pub(crate) fn leader(&self) -> Option<u64> {
        self.raft.get().and_then(|r| r.metrics().borrow().current_leader)
    }

    pub(crate) fn endpoint_of(&self, pnn: u64) -> Option<String> {
        if let Some(n) = self.state().nodes.get(&pnn) {
            return Some(n.endpoint());
        }
        let raft = self.raft.get()?;
        let m = raft.metrics().borrow().membership_config.clone();
        m.membership().get_node(&pnn).map(|n| n.addr.clone())
    }

    fn me(&self) -> NodeInfo {
        NodeInfo {
            pnn: self.pnn().unwrap_or(u64::MAX),
            name: self.name.clone(),
            address: self.cfg.address.to_string(),
            cluster_port: self.cfg.cluster_port,
            brick_base_port: self.cfg.brick_base_port,
            witness: self.cfg.witness,
        }
    }

    /// Background duties: keep this node registered in the cluster state, keep connections to
    /// every member warm (so that status knows who is reachable), note leader changes.
    async fn housekeeping(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        // One receiver for the whole loop: a fresh clone would report every past change again
        // and spin.
        let mut metrics = None;
        loop {
            if metrics.is_none() {
                metrics = self.raft.get().map(|r| r.metrics());
            }
            // Act as soon as Raft's view changes (a leader appears), or every half second.
            match metrics.as_mut() {
                Some(m) => {
                    tokio::select! {
                        _ = m.changed() => {}
                        _ = tick.tick() => {}
                    }
                }
                None => {
                    tick.tick().await;
                }
            }
            let Some(pnn) = self.pnn() else { continue };
            let leader = self.leader();
            {
                let mut lc = self.leader_change.lock().unwrap_or_else(|p| p.into_inner());
                if lc.0 != leader {
                    *lc = (leader, SystemTime::now());
                }
            }
            let state = self.state();
            for n in state.nodes.values().filter(|n| n.pnn != pnn) {
                let _ = self.peers.get(&n.endpoint());
            }
            if leader.is_some()
                && !self.caught_up.load(std::sync::atomic::Ordering::SeqCst)
                && self.read_barrier().await
            {
                self.caught_up.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if leader.is_some()
                && state.nodes.contains_key(&pnn)
                && !self.synced.load(std::sync::atomic::Ordering::SeqCst)
            {
                match self.sync_public_addresses().await {
                    Ok(n) => {
                        if n > 0 {
                            tracing::info!(count = n, "public addresses registered");
                        }
                        match self.seed_tunables(&state).await {
                            Ok(()) => self.synced.store(true, std::sync::atomic::Ordering::SeqCst),
                            Err(e) => tracing::warn!("cannot set tunables from the configuration: {e}"),
                        }
                    }
                    Err(e) => tracing::warn!("cannot register public addresses: {e}"),
                }
            }
            if leader.is_some() && !state.nodes.contains_key(&pnn) {
                match self.propose(Command::AddNode(self.me())).await {
                    Ok(Outcome::Done) => tracing::info!(pnn, "registered in the cluster state"),
                    Ok(Outcome::Refused(why)) => {
                        tracing::warn!("cannot register in the cluster state: {why}")
                    }
                    Err(e) => tracing::debug!("registration deferred: {e}"),
                }
            }
        }
    }

    /// Commits a command through the leader, wherever it is, and waits until this node has
    /// applied it (so that what follows here sees it). Fails within the commit deadline when
    /// there is no quorum.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, String> {
        let (outcome, index) = self.propose_at(cmd).await?;
        if let Some(raft) = self.raft.get() {
            let _ = raft
                .wait(Some(COMMIT_DEADLINE))
                .applied_index_at_least(Some(index), "own command")
                .await;
        }
        Ok(outcome)
    }

    async fn propose_at(&self, cmd: Command) -> Result<(Outcome, u64), String> {
        let raft = self
            .raft
            .get()
            .ok_or("this node is not a member of a cluster yet")?;
        let deadline = Instant::now() + COMMIT_DEADLINE;
        let mut last = String::from("no leader");
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, raft.client_write(cmd.clone())).await {
                Err(_) => break,
                Ok(Ok(resp)) => return Ok((resp.data, resp.log_id.index)),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    if let Some(node) = f.leader_node {
                        let conn = self.peers.get(&node.addr);
                        let req = NodeRequest::Propose(cmd.clone());
                        match tokio::time::timeout(left, conn.call(&req, Bytes::new())).await {
                            Ok(Ok((NodeReply::Outcome(r), _, _))) => return r,
                            Ok(Ok((other, _, _))) => {
                                return Err(format!("unexpected reply from the leader: {other:?}"))
                            }
                            Ok(Err(e)) => last = format!("leader {} unreachable: {e}", node.addr),
                            Err(_) => break,
                        }
                    }
                }
                Ok(Err(e)) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "the cluster has no quorum: the command was not committed within {}s ({last}); it may still take effect if the cluster recovers",
            COMMIT_DEADLINE.as_secs()
        ))
    }

    /// Runs `req` on the leader (here if this node leads).
    pub(crate) async fn on_leader(self: &Arc<Self>, req: NodeRequest) -> Result<NodeReply, String> {
        let deadline = Instant::now() + COMMIT_DEADLINE;
        while Instant::now() < deadline {
            match self.leader() {
                Some(l) if Some(l) == self.pnn() => return Ok(self.leader_duty(req).await),
                Some(l) => {
                    let ep = self.endpoint_of(l).ok_or("leader endpoint unknown")?;
                    let left = deadline.saturating_duration_since(Instant::now());
                    let conn = self.peers.get(&ep);
                    match tokio::time::timeout(left + Duration::from_secs(10), conn.call(&req, Bytes::new()))
                        .await
                    {
                        Ok(Ok((r, _, _))) => return Ok(r),
                        Ok(Err(e)) if e.is_transport() => {}
                        Ok(Err(e)) => return Err(e.to_string()),
                        Err(_) => return Err("the leader did not answer".into()),
                    }
                }
                None => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "the cluster has no quorum: no leader within {}s",
            COMMIT_DEADLINE.as_secs()
        ))
    }

    /// Membership changes, which only the leader makes.
    async fn leader_duty(self: &Arc<Self>, req: NodeRequest) -> NodeReply {
        let r = match req {
            NodeRequest::AddMember { endpoint } => self.add_member(&endpoint).await,
            NodeRequest::RemoveMember { pnn } => self.remove_member(pnn).await,
            NodeRequest::MoveIp { ip, pnn } => self.move_ip(ip, pnn).await,
            _ => Err("not a leader request".to_string()),
        };
        NodeReply::Outcome(r.map(|msg| {
            tracing::info!("{msg}");
            (Outcome::Done, 0)
        }))
    }

    async fn add_member(self: &Arc<Self>, endpoint: &str) -> Result<String, String> {
        let raft = self.raft.get().ok_or("not a member")?;
        let conn: Arc<NodeConn> = self.peers.get(endpoint);
        let hello = match conn.call_patiently(&NodeRequest::Hello, Duration::from_secs(5), Duration::from_secs(5)).await {
            Ok(NodeReply::Hello(h)) => h,
            Ok(_) => return Err(format!("{endpoint} gave an unexpected answer")),
            Err(e) => {
                return Err(format!(
                    "cannot reach {endpoint}: {e} (is its daemon running with join = true, and the same cluster key?)"
                ))
            }
        };
        if let Some(p) = hello.pnn {
            return Err(format!(
                "{} at {endpoint} is already a member (pnn {p})",
                hello.name
            ));
        }
        let state = self.state();
        if let Some(n) = state
            .nodes
            .values()
            .find(|n| n.name == hello.name || n.address == hello.address)
        {
            return Err(format!(
                "node {} ({}) is already a member as pnn {}",
                n.name, n.address, n.pnn
            ));
        }
        let membership = raft.metrics().borrow().membership_config.clone();
        let ids: BTreeSet<u64> = membership
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .chain(state.nodes.keys().copied())
            .collect();
        let pnn = ids.iter().max().map(|m| m + 1).unwrap_or(0);
        let members: BTreeMap<u64, RaftNode> = membership
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        match conn.call(&NodeRequest::Join { pnn, members }, Bytes::new()).await {
            Ok((NodeReply::Outcome(Ok(_)), _, _)) => {}
            Ok((NodeReply::Outcome(Err(e)), _, _)) => return Err(format!("{endpoint} refused to join: {e}")),
            Ok(_) => return Err("unexpected answer to join".into()),
            Err(e) => return Err(format!("cannot reach {endpoint}: {e}")),
        }
        let node = RaftNode {
            addr: endpoint.to_string(),
        };
        tokio::time::timeout(Duration::from_secs(15), raft.add_learner(pnn, node, true))
            .await
            .map_err(|_| "the new node did not catch up within 15s".to_string())?
            .map_err(|e| format!("cannot add learner: {e}"))?;
        raft.change_membership(ChangeMembers::AddVoterIds([pnn].into()), false)
            .await
            .map_err(|e| format!("cannot change membership: {e}"))?;
        let info = NodeInfo {
            pnn,
            name: hello.name.clone(),
            address: hello.address,
            cluster_port: hello.cluster_port,
            brick_base_port: hello.brick_base_port,
            witness: hello.witness,
        };
        match self.propose(Command::AddNode(info)).await? {
            Outcome::Done | Outcome::Refused(_) => {}
        }
        Ok(format!("node {} added as pnn {pnn}", hello.name))
    }

    async fn remove_member(self: &Arc<Self>, pnn: u64) -> Result<String, String> {
        let raft = self.raft.get().ok_or("not a member")?;
        let state = self.state();
        // Refuse before touching membership if the state says no.
        state.check(&Command::RemoveNode { pnn })?;
        let voters: BTreeSet<u64> = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if voters.contains(&pnn) {
            if voters.len() <= 1 {
                return Err("cannot remove the last voter".into());
            }
            raft.change_membership(ChangeMembers::RemoveVoters([pnn].into()), false)
                .await
                .map_err(|e| format!("cannot change membership: {e}"))?;
        }
        match self.propose(Command::RemoveNode { pnn }).await? {
            Outcome::Done => Ok(format!("node {pnn} removed")),
            Outcome::Refused(why) => Err(why),
        }
    }

    async fn join(&self, pnn: u64, members: BTreeMap<u64, RaftNode>) -> Result<(), String> {
        let _g = self.joining.lock().await;
        if let Some(p) = self.pnn() {
            return if p == pnn {
                Ok(())
            } else {
                Err(format!("already a member as pnn {p}"))
            };
        }
        if !self.cfg.join {
            return Err("this node is not configured to join a cluster (join = true)".into());
        }
        self.start_raft(pnn).await.map_err(|e| e.to_string())?;
        self.write_identity(pnn).map_err(|e| e.to_string())?;
        tracing::info!(pnn, members = members.len(), "joining the cluster");
        Ok(())
    }

    fn status(&self) -> NodeStatus {
        let (term, role, leader) = match self.raft.get() {
            Some(r) => {
                let m = r.metrics().borrow().clone();
                (m.current_term, format!("{:?}", m.state), m.current_leader)
            }
            None => (0, "Waiting to join".into(), None),
        };
        NodeStatus {
            pnn: self.pnn().unwrap_or(u64::MAX),
            name: self.name.clone(),
            address: self.cfg.address.to_string(),
            witness: self.cfg.witness,
            leader,
            term,
            role,
            started: unix(self.started),
            last_leader_change: unix(self.leader_change.lock().unwrap_or_else(|p| p.into_inner()).1),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn volume_view(&self, name: &str) -> Option<VolumeView> {
        let state = self.state();
        state.volumes.get(name).map(|record| VolumeView {
            record: record.clone(),
            revision: state.revision,
            nodes: state.nodes.values().cloned().collect(),
        })
    }

    /// Waits until this node has applied everything the cluster had committed when the
    /// call began, so that a read here sees every change already acknowledged anywhere.
    /// Without a quorum it gives up after a moment: reads still answer, from what this node
    /// knows.
    /// Waits until this node has applied what the leader had committed when asked; false if
    /// that could not be learnt (no leader, no quorum) or reached in time.
    pub(crate) async fn read_barrier(self: &Arc<Self>) -> bool {
        let Some(raft) = self.raft.get() else { return false };
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut index = None;
        while index.is_none() && Instant::now() < deadline {
            // Right after a restart a node may still name an old leader (even itself): ask
            // whoever it names, and follow the answer until a real leader confirms.
            index = match self.leader() {
                Some(l) if Some(l) == self.pnn() => self.read_index().await.ok(),
                Some(l) => match self.endpoint_of(l) {
                    Some(ep) => {
                        let conn = self.peers.get(&ep);
                        match conn
                            .call_patiently(
                                &NodeRequest::ReadIndex,
                                Duration::from_millis(500),
                                Duration::from_secs(2),
                            )
                            .await
                        {
                            Ok(NodeReply::ReadIndex(Ok(i))) => Some(i),
                            _ => None,
                        }
                    }
                    None => None,
                },
                None => None,
            };
            if index.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        match index {
            Some(Some(i)) => raft
                .wait(Some(Duration::from_secs(3)))
                .applied_index_at_least(Some(i), "read barrier")
                .await
                .is_ok(),
            Some(None) => true,
            None => false,
        }
    }

    async fn read_index(&self) -> Result<Option<u64>, String> {
        let raft = self.raft.get().ok_or("not a member")?;
        match tokio::time::timeout(Duration::from_secs(1), raft.ensure_linearizable()).await {
            Ok(Ok(id)) => Ok(id.map(|l| l.index)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no quorum".into()),
        }
    }

    // ---- admin ------------------------------------------------------------------------

    /// Answers one admin request from the local CLI.
    pub async fn admin(self: &Arc<Self>, req: AdminRequest) -> AdminResponse {
        if self.raft.get().is_none()
            && !matches!(
                req,
                AdminRequest::Pnn | AdminRequest::Ping { target: Target::This }
            )
        {
            return fail("this node waits to be added to a cluster: run `shoal node add` on a member");
        }
        if matches!(
            req,
            AdminRequest::ListNodes
                | AdminRequest::VolumeInfo { .. }
                | AdminRequest::VolumeList
                | AdminRequest::VolumeStatus { .. }
                | AdminRequest::VolumeHealInfo { .. }
                | AdminRequest::VolumeSplitBrain { .. }
        ) {
            self.read_barrier().await;
        }
        match req {
            AdminRequest::Status => AdminResponse::Status(self.cluster_status()),
            AdminRequest::ListNodes => AdminResponse::Nodes(self.state().nodes.values().cloned().collect()),
            AdminRequest::Pnn => match self.pnn() {
                Some(p) => AdminResponse::Pnn(p),
                None => fail("this node is not a member yet"),
            },
            AdminRequest::Ping { target } => AdminResponse::Pings(self.ping(target).await),
            AdminRequest::Uptime { target } => AdminResponse::Uptimes(self.uptime(target).await),
            AdminRequest::VolumeCreate {
                name,
                stripe,
                replica,
                bricks,
                force,
                stripe_size,
            } => {
                self.volume_create(name, stripe, replica, bricks, force, stripe_size)
                    .await
            }
            AdminRequest::VolumeStart { name } => {
                let r = self
                    .commit(
                        Command::StartVolume { name: name.clone() },
                        format!("volume start: {name}: success"),
                    )
                    .await;
                if matches!(r, AdminResponse::Done(_)) {
                    self.wait_bricks_online(&name).await;
                }
                r
            }
            AdminRequest::VolumeStop { name } => {
                self.commit(
                    Command::StopVolume { name: name.clone() },
                    format!("volume stop: {name}: success"),
                )
                .await
            }
            AdminRequest::VolumeDelete { name } => {
                self.commit(
                    Command::DeleteVolume { name: name.clone() },
                    format!("volume delete: {name}: success"),
                )
                .await
            }
            AdminRequest::VolumeSet { name, key, value } => {
                self.commit(
                    Command::SetVolumeOption {
                        name: name.clone(),
                        key,
                        value,
                    },
                    format!("volume set: {name}: success"),
                )
                .await
            }
            AdminRequest::VolumeInfo { name } => match self.select_volumes(name.as_deref()) {
                Ok(v) => AdminResponse::Volumes(v),
                Err(e) => fail(e),
            },
            AdminRequest::VolumeList => {
                AdminResponse::Volumes(self.state().volumes.values().cloned().collect())
            }
            AdminRequest::VolumeStatus { name } => match self.select_volumes(name.as_deref()) {
                Ok(v) => AdminResponse::VolumeStatus(self.volume_status(v).await),
                Err(e) => fail(e),
            },
            AdminRequest::VolumeHealInfo { name } => match self.select_volumes(Some(&name)) {
                Ok(v) if v.iter().any(|v| v.spec.replica < 2) => {
                    fail(format!("volume {name} is not replicated: nothing to heal"))
                }
                Ok(v) => AdminResponse::HealInfo(self.heal_info(v).await),
                Err(e) => fail(e),
            },
            AdminRequest::VolumeSplitBrain { name, op } => self.volume_split_brain(name, op).await,
            AdminRequest::VolumeResetBrick { name, brick, force } => {
                self.volume_reset_brick(name, brick, force).await
            }
            AdminRequest::VolumeReplaceBrick {
                name,
                old,
                new,
                force,
            } => self.volume_replace_brick(name, old, new, force).await,
            AdminRequest::NodeAdd { endpoint } => {
                let endpoint = if endpoint.contains(':')
                    && !endpoint.starts_with('[')
                    && endpoint.matches(':').count() == 1
                {
                    endpoint
                } else if endpoint.parse::<std::net::IpAddr>().is_ok() {
                    join_host_port(&endpoint, self.cfg.cluster_port)
                } else {
                    endpoint
                };
                self.leader_op(
                    NodeRequest::AddMember {
                        endpoint: endpoint.clone(),
                    },
                    format!("node add: {endpoint}: success"),
                )
                .await
            }
            AdminRequest::NodeRemove { pnn } => {
                self.leader_op(
                    NodeRequest::RemoveMember { pnn },
                    format!("node remove: {pnn}: success"),
                )
                .await
            }
            AdminRequest::Ip { target } => self.admin_ip(target).await,
            AdminRequest::Flags {
                target,
                disabled,
                stopped,
                ban,
            } => {
                let target = if target == Target::This {
                    self.pnn().map(Target::Pnn).unwrap_or(target)
                } else {
                    target
                };
                self.admin_flags(target, disabled, stopped, ban).await
            }
            AdminRequest::MoveIp { ip, pnn } => {
                self.leader_op(
                    NodeRequest::MoveIp { ip, pnn },
                    format!("moveip: {ip} to node {pnn}: success"),
                )
                .await
            }
            AdminRequest::ReloadIps => match self.sync_public_addresses().await {
                Ok(n) => {
                    AdminResponse::Done(format!("reloadips: {n} public addresses from this node's file"))
                }
                Err(e) => fail(e),
            },
            AdminRequest::AddIp {
                ip,
                prefix,
                interfaces,
            } => self.admin_addip(ip, prefix, interfaces).await,
            AdminRequest::DelIp { ip } => {
                self.commit(
                    Command::DeletePublicAddress { ip },
                    format!("delip: {ip}: success"),
                )
                .await
            }
            AdminRequest::GratArp { ip } => self.admin_gratarp(ip).await,
            AdminRequest::SetVar { name, value } => {
                self.commit(
                    Command::SetTunable {
                        name: name.clone(),
                        value,
                    },
                    format!("{name} = {value}"),
                )
                .await
            }
            AdminRequest::GetVar { name } => self.admin_vars(Some(&name)),
            AdminRequest::ListVars => self.admin_vars(None),
            AdminRequest::ScriptStatus { target } => self.admin_scripts(target).await,
        }
    }

    pub(crate) async fn leader_op(self: &Arc<Self>, req: NodeRequest, ok: String) -> AdminResponse {
        match self.on_leader(req).await {
            Ok(NodeReply::Outcome(Ok(_))) => AdminResponse::Done(ok),
            Ok(NodeReply::Outcome(Err(e))) => fail(e),
            Ok(other) => fail(format!("unexpected reply {other:?}")),
            Err(e) => fail(e),
        }
    }

    pub(crate) async fn commit(self: &Arc<Self>, cmd: Command, ok: String) -> AdminResponse {
        // Refuse at once what the current state already refuses; the commit re-checks.
        self.read_barrier().await;
        if let Err(why) = self.state().check(&cmd) {
            return fail(why);
        }
        match self.propose(cmd).await {
            Ok(Outcome::Done) => AdminResponse::Done(ok),
            Ok(Outcome::Refused(why)) => fail(why),
            Err(e) => fail(e),
        }
    }

    fn select_volumes(&self, name: Option<&str>) -> Result<Vec<crate::state::VolumeRecord>, String> {
        let state = self.state();
        match name {
            Some(n) => state
                .volumes
                .get(n)
                .map(|v| vec![v.clone()])
                .ok_or_else(|| format!("volume {n} does not exist")),
            None => Ok(state.volumes.values().cloned().collect()),
        }
    }

    async fn volume_create(
        self: &Arc<Self>,
        name: String,
        stripe: u32,
        replica: u32,
        bricks: Vec<String>,
        force: bool,
        stripe_size: Option<u64>,
    ) -> AdminResponse {
        let mut parsed = Vec::new();
        for b in &bricks {
            match BrickRequest::parse(b) {
                Ok(r) => parsed.push(r),
                Err(e) => return fail(e),
            }
        }
        let id = rand_id();
        let cmd = Command::CreateVolume {
            name: name.clone(),
            id,
            stripe,
            replica,
            stripe_size: stripe_size.unwrap_or(layout::spec::DEFAULT_STRIPE_SIZE),
            bricks: parsed.clone(),
        };
        self.read_barrier().await;
        let state = self.state();
        if let Err(why) = state.check(&cmd) {
            return fail(format!("volume create: {name}: failed: {why}"));
        }
        // Each brick's node checks the directory itself; once all agree, each stamps it with
        // the volume's id (a stamp left by a create that then fails to commit is harmless: a
        // stamp alone does not make a directory a brick).
        for stamp in [None, Some(id)] {
            if let Err(why) = self.check_bricks(&state, &parsed, force, stamp, false).await {
                return fail(format!("volume create: {name}: failed: {why}"));
            }
        }
        match self.propose(cmd).await {
            Ok(Outcome::Done) => AdminResponse::Done(format!(
                "volume create: {name}: success: please start the volume to access data"
            )),
            Ok(Outcome::Refused(why)) => fail(format!("volume create: {name}: failed: {why}")),
            Err(e) => fail(e),
        }
    }

    async fn check_bricks(
        self: &Arc<Self>,
        state: &ClusterState,
        bricks: &[BrickRequest],
        force: bool,
        stamp: Option<u128>,
        empty: bool,
    ) -> Result<(), String> {
        for b in bricks {
            let Some(node) = state.node_by_name(&b.node) else {
                continue;
            };
            let verdict = if Some(node.pnn) == self.pnn() {
                self.host.check(&b.path, force, stamp, empty)
            } else {
                let conn = self.peers.get(&node.endpoint());
                let req = NodeRequest::CheckBrick {
                    path: b.path.clone(),
                    force,
                    stamp,
                    empty,
                };
                match conn
                    .call_patiently(&req, Duration::from_secs(2), Duration::from_secs(5))
                    .await
                {
                    Ok(NodeReply::Checked(r)) => r,
                    Ok(_) => Err("unexpected answer".into()),
                    Err(e) => Err(format!("node {} is unreachable ({e})", node.name)),
                }
            };
            verdict.map_err(|why| format!("brick {}:{}: {why}", node.name, b.path))?;
        }
        Ok(())
    }

    /// `volume heal NAME info split-brain` and `volume heal NAME split-brain ...`: done by this
    /// node's host, with a client of the volume.
    async fn volume_split_brain(self: &Arc<Self>, name: String, op: SplitBrainOp) -> AdminResponse {
        let failed = |why: String| fail(format!("volume heal {name} split-brain: failed: {why}"));
        let state = self.state();
        let Some(v) = state.volumes.get(&name) else {
            return failed(format!("volume {name} does not exist"));
        };
        if v.spec.replica < 2 {
            return failed("the volume is not replicated: it has no split brains".into());
        }
        if v.state != crate::state::VolumeState::Started {
            return failed("the volume is not started".into());
        }
        let work = match op {
            SplitBrainOp::Info => SplitBrainWork::List,
            SplitBrainOp::SourceBrick { brick, path } => {
                let i = match BrickRequest::parse(&brick).and_then(|b| state.brick_index(&name, &b)) {
                    Ok(i) => i,
                    Err(e) => return failed(e),
                };
                SplitBrainWork::Settle {
                    path,
                    by: SettleBy::Brick(i),
                }
            }
            SplitBrainOp::BiggerFile { path } => SplitBrainWork::Settle {
                path: Some(path),
                by: SettleBy::BiggerFile,
            },
            SplitBrainOp::LatestMtime { path } => SplitBrainWork::Settle {
                path: Some(path),
                by: SettleBy::LatestMtime,
            },
        };
        let listing = work == SplitBrainWork::List;
        let spec = v.spec.clone();
        match self.host.split_brain(spec.clone(), work).await {
            Ok(ids) if listing => {
                let ids: Vec<proto::FileId> = ids.iter().filter_map(|i| proto::FileId::from_hex(i)).collect();
                let mut paths = vec![None; ids.len()];
                // Directories are named by any brick, a file by one of those holding it.
                for b in &spec.bricks {
                    let wanted: Vec<usize> = (0..ids.len()).filter(|i| paths[*i].is_none()).collect();
                    if wanted.is_empty() {
                        break;
                    }
                    let asked: Vec<proto::FileId> = wanted.iter().map(|i| ids[*i]).collect();
                    for (i, p) in wanted.into_iter().zip(self.paths_on(&b.addr, asked).await) {
                        paths[i] = p;
                    }
                }
                AdminResponse::SplitBrains(
                    ids.iter()
                        .zip(paths)
                        .map(|(id, path)| HealEntry {
                            id: id.to_string(),
                            path,
                        })
                        .collect(),
                )
            }
            Ok(lines) => {
                // Bricks by their names rather than their addresses (the longest first: one
                // address may begin another).
                let mut bricks: Vec<_> = spec.bricks.iter().collect();
                bricks.sort_by_key(|b| std::cmp::Reverse(b.addr.len()));
                let named = lines.iter().map(|l| {
                    bricks
                        .iter()
                        .fold(l.clone(), |l, b| l.replace(&b.addr, &b.label()))
                });
                AdminResponse::Done(named.collect::<Vec<_>>().join("\n"))
            }
            Err(why) => failed(why),
        }
    }

    /// Paths of `ids` as the brick at `addr` finds them (None for each it cannot name).
    async fn paths_on(&self, addr: &str, ids: Vec<proto::FileId>) -> Vec<Option<String>> {
        let n = ids.len();
        let conn = proto::rpc::Conn::<proto::msg::Request, proto::msg::Reply>::new(
            addr,
            self.key.clone(),
            "client",
            "split-brain-info",
        );
        let asked = async {
            match tokio::time::timeout(Duration::from_secs(3), conn.connect()).await {
                Ok(Ok(())) => Self::paths_over(&conn, ids).await,
                _ => vec![None; n],
            }
        };
        tokio::time::timeout(Duration::from_secs(20), asked)
            .await
            .unwrap_or_else(|_| vec![None; n])
    }

    /// Paths of `ids` asked over `conn` (None for each the brick cannot name).
    async fn paths_over(
        conn: &proto::rpc::Conn<proto::msg::Request, proto::msg::Reply>,
        ids: Vec<proto::FileId>,
    ) -> Vec<Option<String>> {
        let n = ids.len();
        let req = proto::msg::Request::PathsOf { ids };
        match conn.call(&req, bytes::Bytes::new()).await.map(|r| r.0) {
            Ok(proto::msg::Reply::Paths(p)) if p.len() == n => p
                .into_iter()
                .map(|p| p.map(|p| String::from_utf8_lossy(&p).into_owned()))
                .collect(),
            _ => vec![None; n],
        }
    }

    /// `volume reset-brick`: the brick's own node does the work (`LocalHost::reset`).
    async fn volume_reset_brick(self: &Arc<Self>, name: String, brick: String, force: bool) -> AdminResponse {
        let failed = |why: String| fail(format!("volume reset-brick: {name}: failed: {why}"));
        let b = match BrickRequest::parse(&brick) {
            Ok(b) => b,
            Err(e) => return failed(e),
        };
        self.read_barrier().await;
        let state = self.state();
        let Some(v) = state.volumes.get(&name) else {
            return failed(format!("volume {name} does not exist"));
        };
        if let Err(why) = refillable(v) {
            return failed(why);
        }
        let (node, i) = match state.brick_index(&name, &b) {
            Ok(i) => (&state.nodes[&v.brick_nodes[i]], i),
            Err(e) => return failed(e),
        };
        let spec = v.spec.clone();
        let outcome = if Some(node.pnn) == self.pnn() {
            self.host.reset(spec, i, force).await
        } else {
            let conn = self.peers.get(&node.endpoint());
            let req = NodeRequest::ResetBrick {
                spec,
                brick: i,
                force,
            };
            match conn
                .call_patiently(&req, Duration::from_secs(2), Duration::from_secs(30))
                .await
            {
                Ok(NodeReply::Reset(r)) => r,
                Ok(_) => Err("unexpected answer".into()),
                Err(e) => Err(format!("node {} is unreachable ({e})", node.name)),
            }
        };
        match outcome {
            Ok(what) => AdminResponse::Done(format!("volume reset-brick: {name}: success: {what}")),
            Err(why) => failed(why),
        }
    }

    /// `volume replace-brick`: the new directory is checked (empty), the brick is marked
    /// behind on its replicas, the directory stamped, and the new place committed: its node
    /// serves it, mounts follow it there, and healing refills it.
    async fn volume_replace_brick(
        self: &Arc<Self>,
        name: String,
        old: String,
        new: String,
        force: bool,
    ) -> AdminResponse {
        let failed = |why: String| fail(format!("volume replace-brick: {name}: failed: {why}"));
        let (old_b, new_b) = match (BrickRequest::parse(&old), BrickRequest::parse(&new)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return failed(e),
        };
        let cmd = Command::ReplaceBrick {
            name: name.clone(),
            old: old_b.clone(),
            new: new_b.clone(),
        };
        self.read_barrier().await;
        let state = self.state();
        if let Err(why) = state.check(&cmd) {
            return failed(why);
        }
        let (Some(v), Ok(i)) = (state.volumes.get(&name), state.brick_index(&name, &old_b)) else {
            return failed(format!("{old} is not a brick of the volume"));
        };
        if let Err(why) = refillable(v) {
            return failed(why);
        }
        let new_dir = std::slice::from_ref(&new_b);
        if let Err(why) = self.check_bricks(&state, new_dir, force, None, true).await {
            return failed(why);
        }
        let marked = match self.host.mark_behind(v.spec.clone(), i).await {
            Ok(n) => n,
            Err(why) => return failed(why),
        };
        if let Err(why) = self
            .check_bricks(&state, new_dir, force, Some(v.spec.id), true)
            .await
        {
            return failed(why);
        }
        let r = self
            .commit(
                cmd,
                format!(
                    "volume replace-brick: {name}: success: {new} replaces {old} and is refilled \
                     from {marked} of its copies in the background (progress: `shoal volume heal \
                     {name} info`)"
                ),
            )
            .await;
        if matches!(r, AdminResponse::Done(_)) {
            self.wait_bricks_online(&name).await;
        }
        r
    }

    /// Waits (a bounded while) until every brick of a volume that was just started serves,
    /// so that a mount made right after `volume start` finds them.
    async fn wait_bricks_online(self: &Arc<Self>, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let Ok(vols) = self.select_volumes(Some(name)) else {
                return;
            };
            let views = self.volume_status(vols).await;
            if views.iter().all(|v| {
                v.bricks
                    .iter()
                    .all(|b| b.status.as_ref().is_some_and(|s| s.online))
            }) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(volume = %name, "some bricks did not come online within 10s");
    }

    /// Asks each brick of `vols` what it lists as waiting for heal (all at once: a brick
    /// may search its tree for paths for a few seconds).
    async fn heal_info(&self, vols: Vec<crate::state::VolumeRecord>) -> Vec<HealRow> {
        let asks = vols.iter().flat_map(|v| &v.spec.bricks).map(|b| async move {
            let conn = proto::rpc::Conn::<proto::msg::Request, proto::msg::Reply>::new(
                &b.addr,
                self.key.clone(),
                "client",
                "heal-info",
            );
            let asked = async {
                tokio::time::timeout(Duration::from_secs(3), conn.connect())
                    .await
                    .map_err(|_| proto::Errno::ETIMEDOUT)??;
                let req = proto::msg::Request::ListPending {
                    after: None,
                    max: crate::admin::HEAL_INFO_MAX,
                };
                let ids = match conn.call(&req, bytes::Bytes::new()).await?.0 {
                    proto::msg::Reply::Ids(ids) => ids,
                    _ => return Err(proto::Errno::EIO),
                };
                // Where they are, for people; ids alone from a brick that cannot say.
                let paths = match ids.is_empty() {
                    true => Vec::new(),
                    false => Self::paths_over(&conn, ids.clone()).await,
                };
                Ok(ids
                    .iter()
                    .zip(paths)
                    .map(|(id, path)| HealEntry {
                        id: id.to_string(),
                        path,
                    })
                    .collect())
            };
            let entries = match tokio::time::timeout(Duration::from_secs(20), asked).await {
                Ok(Ok(entries)) => Ok(entries),
                Ok(Err(e)) => Err(format!("not reachable: {e}")),
                Err(_) => Err("no answer".to_string()),
            };
            HealRow {
                brick: b.label(),
                entries,
            }
        });
        futures_util::future::join_all(asks).await
    }

    async fn volume_status(self: &Arc<Self>, vols: Vec<crate::state::VolumeRecord>) -> Vec<VolumeStatusView> {
        let state = self.state();
        let owners: BTreeSet<u64> = vols.iter().flat_map(|v| v.brick_nodes.iter().copied()).collect();
        let mut reports: BTreeMap<u64, Vec<BrickStatus>> = BTreeMap::new();
        for pnn in owners {
            let r = if Some(pnn) == self.pnn() {
                Some(self.host.status())
            } else if let Some(n) = state.nodes.get(&pnn) {
                let conn = self.peers.get(&n.endpoint());
                match conn
                    .call_patiently(
                        &NodeRequest::Bricks,
                        Duration::from_secs(1),
                        Duration::from_secs(2),
                    )
                    .await
                {
                    Ok(NodeReply::Bricks(b)) => Some(b),
                    _ => None,
                }
            } else {
                None
            };
            if let Some(r) = r {
                reports.insert(pnn, r);
            }
        }
        vols.into_iter()
            .map(|v| {
                let bricks = v
                    .spec
                    .bricks
                    .iter()
                    .zip(&v.brick_nodes)
                    .map(|(b, owner)| BrickRow {
                        label: b.label(),
                        status: reports.get(owner).and_then(|r| {
                            r.iter()
                                .find(|s| s.volume == v.spec.name && s.path == b.path)
                                .cloned()
                        }),
                    })
                    .collect();
                VolumeStatusView { volume: v, bricks }
            })
            .collect()
    }

    pub(crate) fn targets(&self, target: Target) -> Vec<u64> {
        match target {
            Target::This => self.pnn().into_iter().collect(),
            Target::Pnn(p) => vec![p],
            Target::All => self.state().nodes.keys().copied().collect(),
        }
    }

    pub(crate) async fn ask(&self, pnn: u64, req: NodeRequest) -> Result<NodeReply, String> {
        let ep = self
            .endpoint_of(pnn)
            .ok_or_else(|| format!("no node with pnn {pnn}"))?;
        let conn = self.peers.get(&ep);
        conn.call_patiently(&req, Duration::from_secs(2), Duration::from_secs(2))
            .await
            .map_err(|e| format!("node {pnn} is unreachable: {e}"))
    }

    async fn ping(&self, target: Target) -> Vec<PingRow> {
        let mut out = Vec::new();
        for pnn in self.targets(target) {
            let t = Instant::now();
            let result = if Some(pnn) == self.pnn() {
                Ok(t.elapsed().as_secs_f64())
            } else {
                match self.ask(pnn, NodeRequest::Ping).await {
                    Ok(NodeReply::Pong) => Ok(t.elapsed().as_secs_f64()),
                    Ok(other) => Err(format!("unexpected reply {other:?}")),
                    Err(e) => Err(e),
                }
            };
            out.push(PingRow { pnn, result });
        }
        out
    }

    async fn uptime(&self, target: Target) -> Vec<Result<NodeStatus, (u64, String)>> {
        let mut out = Vec::new();
        for pnn in self.targets(target) {
            out.push(if Some(pnn) == self.pnn() {
                Ok(self.status())
            } else {
                match self.ask(pnn, NodeRequest::Status).await {
                    Ok(NodeReply::Status(s)) => Ok(s),
                    Ok(other) => Err((pnn, format!("unexpected reply {other:?}"))),
                    Err(e) => Err((pnn, e)),
                }
            });
        }
        out
    }

    fn cluster_status(&self) -> ClusterStatus {
        let state = self.state();
        let me = self.pnn().unwrap_or(u64::MAX);
        let nodes = state
            .nodes
            .values()
            .map(|n| NodeRow {
                pnn: n.pnn,
                name: n.name.clone(),
                address: n.address.clone(),
                state: self.node_state(&state, n.pnn),
                witness: n.witness,
                this: n.pnn == me,
            })
            .collect();
        let m = self.raft.get().map(|r| r.metrics().borrow().clone());
        ClusterStatus {
            nodes,
            generation: m.as_ref().map(|m| m.current_term).unwrap_or(0),
            leader: m.and_then(|m| m.current_leader),
            this: me,
        }
    }
}

/// Whether a brick of `v` can be refilled from its copies.
fn refillable(v: &crate::state::VolumeRecord) -> Result<(), String> {
    if v.spec.replica < 2 {
        return Err("the volume is not replicated: a lost brick cannot be refilled from copies".into());
    }
    if v.state != crate::state::VolumeState::Started {
        return Err("the volume is not started (the brick is refilled from the copies it serves)".into());
    }
    Ok(())
}

fn rand_id() -> u128 {
    proto::FileId::random().0
}

/// The cluster port: Raft, control requests from peers, volume specs for mounts.
impl Service for Node {
    type Req = NodeRequest;
    type Resp = NodeReply;
    type Session = Peer;

    fn label(&self) -> String {
        format!("node {}", self.name)
    }

    fn open(
        &self,
        peer: &Peer,
        _closed: watch::Receiver<bool>,
        _out: Arc<proto::outbox::Outbox>,
    ) -> Arc<Peer> {
        Arc::new(peer.clone())
    }

    fn handle(self: &Arc<Self>, peer: &Arc<Peer>, req: NodeRequest, _data: Bytes) -> Handled<NodeReply> {
        let node = self.clone();
        let nodes_only = !matches!(
            req,
            NodeRequest::Ping | NodeRequest::GetVolume { .. } | NodeRequest::WatchVolume { .. }
        );
        if nodes_only && peer.role != "node" {
            return Handled::Now((Err(Errno::EACCES), Body::default()));
        }
        match req {
            NodeRequest::Ping => Handled::Now((Ok(NodeReply::Pong), Body::default())),
            NodeRequest::Heartbeat(report) => {
                let from = report.pnn;
                let state = self.state();
                // A member gets a grant towards its lease unless it is fenced and has not yet
                // caught up with its fence (see `health`).
                let grant = state.nodes.contains_key(&from)
                    && state.fences.get(&from).is_none_or(|f| report.held_at >= *f);
                self.health.on_heartbeat(from, report, grant);
                let mut mine = self.report(&state, self.pnn().unwrap_or(u64::MAX));
                mine.grant = grant;
                Handled::Now((Ok(NodeReply::Heartbeat(mine)), Body::default()))
            }
            NodeRequest::ScriptStatus => {
                Handled::Now((Ok(NodeReply::Scripts(self.host.script_status())), Body::default()))
            }
            NodeRequest::Announce { ip } => {
                Handled::Now((Ok(NodeReply::Checked(self.host.announce(ip))), Body::default()))
            }
            NodeRequest::Hello => Handled::Now((
                Ok(NodeReply::Hello(Hello {
                    name: self.name.clone(),
                    address: self.cfg.address.to_string(),
                    cluster_port: self.cfg.cluster_port,
                    brick_base_port: self.cfg.brick_base_port,
                    witness: self.cfg.witness,
                    pnn: self.pnn(),
                })),
                Body::default(),
            )),
            NodeRequest::Status => Handled::Now((Ok(NodeReply::Status(self.status())), Body::default())),
            NodeRequest::Bricks => Handled::Now((Ok(NodeReply::Bricks(self.host.status())), Body::default())),
            NodeRequest::GetVolume { name } => {
                Handled::Now((Ok(NodeReply::Volume(self.volume_view(&name))), Body::default()))
            }
            NodeRequest::CheckBrick {
                path,
                force,
                stamp,
                empty,
            } => {
                let verdict = if self.cfg.witness {
                    Err(format!("{} is a witness and holds no bricks", self.name))
                } else {
                    self.host.check(&path, force, stamp, empty)
                };
                Handled::Now((Ok(NodeReply::Checked(verdict)), Body::default()))
            }
            other => Handled::Later(Box::pin(async move {
                (node.serve_later(other).await, Body::default())
            })),
        }
    }

    fn close(&self, _peer: &Peer) {}
}

impl Node {
    async fn serve_later(self: Arc<Self>, req: NodeRequest) -> Result<NodeReply, Errno> {
        let raft = || self.raft.get().ok_or(Errno::ENOTCONN);
        Ok(match req {
            NodeRequest::Append(r) => NodeReply::Append(raft()?.append_entries(r).await),
            NodeRequest::Vote(r) => NodeReply::Vote(raft()?.vote(r).await),
            NodeRequest::Snapshot(r) => NodeReply::Snapshot(raft()?.install_snapshot(r).await),
            NodeRequest::Propose(cmd) => NodeReply::Outcome(self.propose_at(cmd).await),
            req @ (NodeRequest::AddMember { .. }
            | NodeRequest::RemoveMember { .. }
            | NodeRequest::MoveIp { .. }) => {
                if self.leader() == self.pnn() {
                    self.leader_duty(req).await
                } else {
                    NodeReply::Outcome(Err("not the leader any more: try again".into()))
                }
            }
            NodeRequest::Join { pnn, members } => {
                NodeReply::Outcome(self.join(pnn, members).await.map(|_| (Outcome::Done, 0)))
            }
            NodeRequest::ReadIndex => NodeReply::ReadIndex(self.read_index().await),
            NodeRequest::ResetBrick { spec, brick, force } => NodeReply::Reset(if self.cfg.witness {
                Err(format!("{} is a witness and holds no bricks", self.name))
            } else {
                self.host.reset(spec, brick, force).await
            }),
            NodeRequest::WatchVolume { name, revision } => {
                if let Some(mut rx) = self.watch_state() {
                    let _ = tokio::time::timeout(WATCH_WAIT, rx.wait_for(|s| s.revision > revision)).await;
                }
                NodeReply::Volume(self.volume_view(&name))
            }
            other => {
                tracing::warn!("request {other:?} reached the slow path");
                return Err(Errno::ENOSYS);
            }
        })
    }
}
