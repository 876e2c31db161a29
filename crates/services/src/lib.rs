//! Services that follow a node's health. For now: event scripts, as CTDB users know them.

pub mod events;
