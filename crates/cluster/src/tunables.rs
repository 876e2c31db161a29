//! Tunables (`shoal setvar`/`getvar`/`listvars`): cluster-wide knobs kept in the replicated
//! state, with defaults for those never set.

use crate::state::ClusterState;

pub struct Tunable {
    pub name: &'static str,
    pub default: i64,
    pub min: i64,
    pub max: i64,
    pub help: &'static str,
}

pub const TUNABLES: &[Tunable] = &[
    Tunable {
        name: "HeartbeatIntervalMs",
        default: 100,
        min: 10,
        max: 10_000,
        help: "heartbeat period",
    },
    Tunable {
        name: "DeadAfterMissed",
        default: 5,
        min: 2,
        max: 100,
        help: "missed heartbeats before a node is dead",
    },
    Tunable {
        name: "MonitorIntervalMs",
        default: 1000,
        min: 100,
        max: 600_000,
        help: "period of the monitor event",
    },
    Tunable {
        name: "EventScriptTimeout",
        default: 30,
        min: 1,
        max: 3600,
        help: "seconds an event script may run",
    },
    Tunable {
        name: "NoIPFailback",
        default: 0,
        min: 0,
        max: 1,
        help: "1: addresses do not move back to a node that returns",
    },
    Tunable {
        name: "TickleUpdateIntervalMs",
        default: 1000,
        min: 100,
        max: 60_000,
        help: "how often connections to public addresses are shared",
    },
];

pub fn find(name: &str) -> Option<&'static Tunable> {
    TUNABLES.iter().find(|t| t.name.eq_ignore_ascii_case(name))
}

/// A tunable's value in this state (its default if never set).
pub fn get(state: &ClusterState, name: &str) -> i64 {
    let t = find(name);
    state
        .tunables
        .get(t.map(|t| t.name).unwrap_or(name))
        .copied()
        .or(t.map(|t| t.default))
        .unwrap_or(0)
}
