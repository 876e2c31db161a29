//! The control plane: a node's configuration, the cluster state every node agrees on
//! (replicated with Raft), the messages nodes exchange, and the node runtime that answers
//! the CLI.

pub mod admin;
pub mod config;
pub mod node;
pub mod peers;
pub mod raft;
pub mod rpc;
pub mod state;

pub use node::{BrickHost, Node};
