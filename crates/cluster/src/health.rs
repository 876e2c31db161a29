//! Heartbeats, liveness and address leases.
//!
//! Every node sends every other node a heartbeat each interval (default 100 ms) carrying its
//! report (health, hosted addresses, interfaces, how long since it last heard each peer); the
//! peer answers with its own report. A node is dead to a peer after `DeadAfterMissed`
//! intervals without a word.
//!
//! **Leases.** A node may host public addresses only while a quorum of voters (itself
//! included) granted its heartbeats within the lease time (the dead-after time), counted from
//! when it sent them. An isolated node, or one on the minority side of a partition, loses its
//! lease and drops every address.
//!
//! **Fencing.** The leader takes addresses from a silent node in two committed steps. First
//! it fences the node (`Command::Fence`): its addresses become `Fenced`, and from then on no
//! node that has applied the fence grants that node a lease until the node itself reports
//! having applied it, at which point it knows its addresses are gone. Then, once a quorum of
//! voters that have applied the fence report they have not granted the node anything for
//! longer than the lease plus a margin, the addresses move: every quorum that could have
//! renewed its lease shares a member with that one, so the lease has surely run out and
//! cannot come back with stale state (a restarted node, or a healed partition). Planned moves
//! release first: the old host must report, at a revision that includes the release, that the
//! address is gone. An address is never up on two nodes.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a node says about itself in each heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub pnn: u64,
    /// The revision of the cluster state it has applied.
    pub revision: u64,
    /// The latest revision its hosted addresses were brought in line with: `hosted` is
    /// exactly what that revision placed here (or less, without a lease).
    pub held_at: u64,
    /// In an answer: it counts towards the asker's lease.
    pub grant: bool,
    /// Its monitor event passes.
    pub healthy: bool,
    /// It holds an address lease.
    pub lease: bool,
    pub hosted: Vec<IpAddr>,
    /// Interfaces up on it.
    pub interfaces: Vec<String>,
    /// Milliseconds since it last granted each peer's heartbeat (absent: never).
    pub silent_ms: Vec<(u64, u64)>,
    /// Client connections to its public addresses, when they changed or now and then.
    pub conns: Option<Vec<(SocketAddr, SocketAddr)>>,
    /// Addresses it has released for a committed handover: (address, new host, revision of
    /// the handover). The new host may take them on this word even before its own state
    /// has caught up with the handover.
    pub handed: Vec<(IpAddr, u64, u64)>,
}

#[derive(Default)]
struct Inner {
    heard: HashMap<u64, Instant>,
    acked_by: HashMap<u64, Instant>,
    acked_to: HashMap<u64, Instant>,
    reports: HashMap<u64, (Instant, NodeReport)>,
    peer_conns: HashMap<u64, Vec<(SocketAddr, SocketAddr)>>,
    healthy: bool,
    lease_until: Option<Instant>,
    hosted: BTreeSet<IpAddr>,
    held_at: u64,
    interfaces: Vec<String>,
    conns: Vec<(SocketAddr, SocketAddr)>,
    conns_dirty: bool,
    beats: u64,
}

pub struct Health {
    inner: Mutex<Inner>,
    /// This node's hosted set or health changed: tell the others now, not at the next beat.
    pub(crate) beat_now: tokio::sync::Notify,
    /// A peer's hosted set or health changed: the leader places again now.
    pub(crate) replan: tokio::sync::Notify,
    /// The same, for this node's address keeper (a handover may be ready).
    pub keeper_wake: tokio::sync::Notify,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            inner: Mutex::new(Inner {
                healthy: true,
                ..Default::default()
            }),
            beat_now: tokio::sync::Notify::new(),
            replan: tokio::sync::Notify::new(),
            keeper_wake: tokio::sync::Notify::new(),
        }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's report for its next heartbeat (or answer), at state `revision`.
    pub fn report(&self, pnn: u64, revision: u64) -> NodeReport {
        let mut i = self.lock();
        let now = Instant::now();
        i.beats += 1;
        let send_conns = i.conns_dirty || i.beats.is_multiple_of(10);
        i.conns_dirty = false;
        NodeReport {
            pnn,
            revision,
            grant: false,
            healthy: i.healthy,
            lease: i.lease_until.is_some_and(|t| now < t),
            hosted: i.hosted.iter().copied().collect(),
            held_at: i.held_at,
            interfaces: i.interfaces.clone(),
            silent_ms: i.acked_to.iter().map(|(p, t)| (*p, ms(now - *t))).collect(),
            conns: send_conns.then(|| i.conns.clone()),
            handed: Vec::new(),
        }
    }

    fn note_report(&self, i: &mut Inner, from: u64, r: NodeReport) {
        if let Some(c) = &r.conns {
            i.peer_conns.insert(from, c.clone());
        }
        let news = i.reports.get(&from).is_none_or(|(_, old)| {
            (old.healthy, old.lease, &old.hosted, &old.handed) != (r.healthy, r.lease, &r.hosted, &r.handed)
        });
        i.reports.insert(from, (Instant::now(), r));
        if news {
            self.replan.notify_one();
            self.keeper_wake.notify_one();
        }
    }

    /// A peer's heartbeat arrived and is answered; `grant` says whether the answer counts
    /// towards its lease.
    pub fn on_heartbeat(&self, from: u64, r: NodeReport, grant: bool) {
        let mut i = self.lock();
        let now = Instant::now();
        i.heard.insert(from, now);
        if grant {
            i.acked_to.insert(from, now);
        }
        self.note_report(&mut i, from, r);
    }

    /// A peer answered the heartbeat this node sent at `sent`.
    pub fn on_ack(&self, from: u64, r: NodeReport, sent: Instant) {
        let mut i = self.lock();
        i.heard.insert(from, Instant::now());
        if r.grant {
            let t = i.acked_by.entry(from).or_insert(sent);
            *t = (*t).max(sent);
        }
        self.note_report(&mut i, from, r);
    }

    /// Recomputes the lease: it lasts `lease` from the send time of the heartbeat by which a
    /// quorum of `voters` (this node counting for itself) had granted it. Returns whether it
    /// is held now.
    pub fn renew_lease(&self, me: u64, voters: &BTreeSet<u64>, lease: Duration) -> bool {
        let mut i = self.lock();
        let now = Instant::now();
        let until = if voters.contains(&me) {
            let mut grants: Vec<Instant> = voters
                .iter()
                .filter(|v| **v != me)
                .filter_map(|v| i.acked_by.get(v).copied())
                .collect();
            grants.sort_unstable_by(|a, b| b.cmp(a));
            // This node counts for itself; it needs the others to make up the rest.
            let needed = voters.len() / 2;
            match needed {
                0 => Some(now + lease),
                n => grants.get(n - 1).map(|t| *t + lease),
            }
        } else {
            None
        };
        i.lease_until = until;
        until.is_some_and(|t| now < t)
    }

    /// Holds a lease now (it runs out on its own, between renewals too).
    pub fn has_lease(&self) -> bool {
        self.lock().lease_until.is_some_and(|t| Instant::now() < t)
    }

    /// When the lease runs out, if one is held.
    pub fn lease_until(&self) -> Option<Instant> {
        self.lock().lease_until.filter(|t| Instant::now() < *t)
    }

    /// Heard from `pnn` within `dead_after`.
    pub fn alive(&self, pnn: u64, dead_after: Duration) -> bool {
        self.lock()
            .heard
            .get(&pnn)
            .is_some_and(|t| t.elapsed() < dead_after)
    }

    /// A peer's latest report, if it is no older than `fresh`.
    pub fn peer_report(&self, pnn: u64, fresh: Duration) -> Option<NodeReport> {
        self.lock()
            .reports
            .get(&pnn)
            .filter(|(t, _)| t.elapsed() < fresh)
            .map(|(_, r)| r.clone())
    }

    /// A peer's latest report, however old.
    pub fn last_report(&self, pnn: u64) -> Option<NodeReport> {
        self.lock().reports.get(&pnn).map(|(_, r)| r.clone())
    }

    /// True once a quorum of `voters` (this node with its own clock, the others through
    /// fresh reports made at `fence_rev` or later, so that they no longer grant `x` anything
    /// while it is behind) have not granted `x` anything for at least `needed`: `x`'s lease
    /// has surely run out and cannot be renewed on stale state.
    pub fn silence_confirmed(
        &self,
        me: u64,
        x: u64,
        voters: &BTreeSet<u64>,
        needed: Duration,
        fresh: Duration,
        fence_rev: u64,
    ) -> bool {
        let i = self.lock();
        let now = Instant::now();
        let silent = voters
            .iter()
            .filter(|v| **v != x)
            .filter(|v| {
                if **v == me {
                    return i.acked_to.get(&x).is_none_or(|t| now - *t >= needed);
                }
                match i.reports.get(v) {
                    Some((at, r)) if now - *at < fresh && r.revision >= fence_rev => {
                        let age = ms(now - *at);
                        let since = r.silent_ms.iter().find(|(p, _)| *p == x).map(|(_, m)| *m);
                        since.is_none_or(|m| m.saturating_add(age) >= ms(needed))
                    }
                    _ => false,
                }
            })
            .count();
        2 * silent > voters.len()
    }

    pub fn set_healthy(&self, healthy: bool) {
        let changed = std::mem::replace(&mut self.lock().healthy, healthy) != healthy;
        if changed {
            self.beat_now.notify_one();
        }
    }

    pub fn healthy(&self) -> bool {
        self.lock().healthy
    }

    pub fn set_hosted(&self, hosted: BTreeSet<IpAddr>) {
        let changed = std::mem::replace(&mut self.lock().hosted, hosted.clone()) != hosted;
        if changed {
            self.beat_now.notify_one();
        }
    }

    /// The addresses now held are what `revision` placed here.
    pub fn set_held_at(&self, revision: u64) {
        let mut i = self.lock();
        i.held_at = i.held_at.max(revision);
    }

    pub fn hosted(&self) -> BTreeSet<IpAddr> {
        self.lock().hosted.clone()
    }

    pub fn set_interfaces(&self, interfaces: Vec<String>) {
        self.lock().interfaces = interfaces;
    }

    pub fn set_conns(&self, conns: Vec<(SocketAddr, SocketAddr)>) {
        let mut i = self.lock();
        if i.conns != conns {
            i.conns = conns;
            i.conns_dirty = true;
        }
    }

    /// Client connections to `ip` that any peer last reported.
    pub fn conns_for(&self, ip: IpAddr) -> Vec<(SocketAddr, SocketAddr)> {
        let i = self.lock();
        i.peer_conns
            .values()
            .flatten()
            .filter(|(l, _)| l.ip() == ip)
            .copied()
            .collect()
    }

    /// Every fresh peer report, by pnn.
    pub fn reports(&self, fresh: Duration) -> BTreeMap<u64, NodeReport> {
        self.lock()
            .reports
            .iter()
            .filter(|(_, (t, _))| t.elapsed() < fresh)
            .map(|(p, (_, r))| (*p, r.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(pnn: u64, revision: u64, grant: bool, silent_ms: Vec<(u64, u64)>) -> NodeReport {
        NodeReport {
            pnn,
            revision,
            grant,
            silent_ms,
            ..Default::default()
        }
    }

    #[test]
    fn leases_need_a_quorum_of_grants_counted_from_sending() {
        let h = Health::default();
        let voters: BTreeSet<u64> = [0, 1, 2].into();
        let lease = Duration::from_secs(5);
        let now = Instant::now();
        assert!(!h.renew_lease(0, &voters, lease), "alone is no quorum");
        h.on_ack(1, answer(1, 0, false, vec![]), now);
        assert!(
            !h.renew_lease(0, &voters, lease),
            "an answer without a grant does not count"
        );
        h.on_ack(1, answer(1, 0, true, vec![]), now);
        assert!(h.renew_lease(0, &voters, lease));
        assert!(h.has_lease());
        // A grant for a heartbeat sent long ago gives a lease that is already over.
        let h = Health::default();
        h.on_ack(2, answer(2, 0, true, vec![]), now - Duration::from_secs(6));
        assert!(!h.renew_lease(0, &voters, lease));
        assert!(!h.has_lease());
        // Five voters: two grants besides our own are needed, and the older one counts.
        let five: BTreeSet<u64> = (0..5).collect();
        let h = Health::default();
        h.on_ack(1, answer(1, 0, true, vec![]), now);
        assert!(!h.renew_lease(0, &five, lease));
        h.on_ack(2, answer(2, 0, true, vec![]), now - Duration::from_secs(4));
        assert!(h.renew_lease(0, &five, lease));
        let until = h.lease_until().expect("held");
        assert!(until <= now + Duration::from_secs(1));
    }

    #[test]
    fn silence_needs_a_quorum_that_has_applied_the_fence() {
        let h = Health::default();
        let voters: BTreeSet<u64> = [0, 1, 2].into();
        let fresh = Duration::from_secs(60);
        let long = Duration::from_secs(3600);
        // We granted node 2 just now: no silence.
        h.on_heartbeat(2, answer(2, 0, false, vec![]), true);
        assert!(!h.silence_confirmed(0, 2, &voters, Duration::from_millis(100), fresh, 0));
        // An answer without a grant is not a grant.
        let h = Health::default();
        h.on_heartbeat(2, answer(2, 0, false, vec![]), false);
        // Node 1 never granted 2 either, but it has not applied the fence yet (revision 7).
        h.on_ack(1, answer(1, 6, true, vec![]), Instant::now());
        assert!(!h.silence_confirmed(0, 2, &voters, long, fresh, 7));
        h.on_ack(1, answer(1, 7, true, vec![]), Instant::now());
        assert!(h.silence_confirmed(0, 2, &voters, long, fresh, 7));
        // Node 1 granted 2 recently: no quorum of silence.
        h.on_ack(1, answer(1, 7, true, vec![(2, 0)]), Instant::now());
        assert!(!h.silence_confirmed(0, 2, &voters, long, fresh, 7));
    }
}
