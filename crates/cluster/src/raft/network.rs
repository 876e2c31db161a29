//! Raft's messages between nodes, over the nodes' multiplexed cluster connections.

use super::{NodeId, RaftNode, TypeConfig};
use crate::peers::Peers;
use crate::rpc::{NodeReply, NodeRequest};
use bytes::Bytes;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use std::sync::Arc;
use std::time::Duration;

pub struct Network {
    pub peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &RaftNode) -> PeerClient {
        PeerClient {
            target,
            peers: self.peers.clone(),
            addr: node.addr.clone(),
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    peers: Arc<Peers>,
    addr: String,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, RaftNode, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn call(
        &self,
        req: NodeRequest,
        ttl: Duration,
    ) -> Result<NodeReply, RPCError<NodeId, RaftNode, RaftError<NodeId, openraft::error::Infallible>>> {
        let conn = self.peers.get(&self.addr);
        match tokio::time::timeout(ttl, conn.call(&req, Bytes::new())).await {
            Err(elapsed) => Err(RPCError::Network(NetworkError::new(&elapsed))),
            Ok(Err(e)) if e.is_transport() => {
                Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::from(e))))
            }
            Ok(Err(e)) => Err(RPCError::Network(NetworkError::new(&std::io::Error::from(e)))),
            Ok(Ok((reply, _, _))) => Ok(reply),
        }
    }
}

/// Turns a transport error of one error type into the same for another.
fn retype<E: std::error::Error>(
    e: RPCError<NodeId, RaftNode, RaftError<NodeId, openraft::error::Infallible>>,
) -> RPCError<NodeId, RaftNode, RaftError<NodeId, E>> {
    match e {
        RPCError::Unreachable(u) => RPCError::Unreachable(u),
        RPCError::Timeout(t) => RPCError::Timeout(t),
        RPCError::PayloadTooLarge(p) => RPCError::PayloadTooLarge(p),
        RPCError::Network(n) => RPCError::Network(n),
        RPCError::RemoteError(r) => RPCError::Network(NetworkError::new(&r)),
    }
}

fn unexpected<E: std::error::Error>(r: NodeReply) -> RPCError<NodeId, RaftNode, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
        "unexpected reply {r:?}"
    ))))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        match self.call(NodeRequest::Append(rpc), option.hard_ttl()).await? {
            NodeReply::Append(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self
            .call(NodeRequest::Snapshot(rpc), option.hard_ttl())
            .await
            .map_err(retype)?
        {
            NodeReply::Snapshot(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        match self.call(NodeRequest::Vote(rpc), option.hard_ttl()).await? {
            NodeReply::Vote(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(unexpected(other)),
        }
    }
}
