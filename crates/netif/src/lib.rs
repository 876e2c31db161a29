//! Public addresses on this machine's interfaces: adding and removing them (rtnetlink),
//! announcing them (gratuitous ARP, unsolicited neighbour advertisements), waking the clients
//! of a moved address (tickle ACKs), and resetting connections to a released one.
//!
//! Knows nothing of cluster policy: the daemon decides which addresses to hold.

pub mod addrs;
pub mod conns;
pub mod keeper;
pub mod netns;
pub mod packets;
pub mod raw;

pub use addrs::{Assigned, Links, NetifError};
pub use keeper::{Held, Keeper};
