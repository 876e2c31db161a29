//! The connection to one brick: a multiplexed, self-reconnecting [`proto::rpc::Conn`]
//! carrying brick requests.

use proto::msg::{Reply, Request};

/// A connection to one brick, shared by every translator that talks to it.
pub type BrickConn = proto::rpc::Conn<Request, Reply>;
