//! The control plane: a node's configuration, the cluster state every node agrees on
//! (replicated with Raft), and the messages nodes exchange.

pub mod config;
pub mod state;
