//! The control plane: a node's configuration, the cluster state every node agrees on
//! (replicated with Raft), the messages nodes exchange, and the node runtime that answers
//! the CLI.

pub mod admin;
pub mod config;
mod ha;
pub mod health;
pub mod node;
pub mod peers;
pub mod placement;
pub mod raft;
pub mod rpc;
pub mod state;
pub mod tunables;

pub use node::{HostFuture, LocalHost, Node, SettleBy, SplitBrainWork};
