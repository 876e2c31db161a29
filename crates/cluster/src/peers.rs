//! Connections to other nodes' cluster ports, one per endpoint, made on first use and kept.

use crate::rpc::{NodeReply, NodeRequest};
use proto::auth::ClusterKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub type NodeConn = proto::rpc::Conn<NodeRequest, NodeReply>;

pub struct Peers {
    key: ClusterKey,
    name: String,
    role: &'static str,
    conns: Mutex<HashMap<String, Arc<NodeConn>>>,
}

impl Peers {
    pub fn new(key: ClusterKey, name: &str, role: &'static str) -> Peers {
        Peers {
            key,
            name: name.to_string(),
            role,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// The connection to `endpoint` (`host:port`); it connects in the background.
    pub fn get(&self, endpoint: &str) -> Arc<NodeConn> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns
            .entry(endpoint.to_string())
            .or_insert_with(|| NodeConn::new(endpoint, self.key.clone(), self.role, &self.name))
            .clone()
    }

    /// Forgets a peer that left the cluster.
    pub fn drop_peer(&self, endpoint: &str) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(endpoint);
    }

    /// Whether a live connection to `endpoint` exists.
    pub fn is_up(&self, endpoint: &str) -> bool {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(endpoint)
            .is_some_and(|c| c.is_up())
    }
}
