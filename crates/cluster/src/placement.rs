//! The leader's placement of public addresses: from the cluster state and what the leader
//! knows of each node now, the changes to commit.
//!
//! - An address stays on its node while that node may host it.
//! - A planned move (the node is disabled, stopped, banned, unhealthy, or rebalancing) is a
//!   `Handover`: the old node releases, and the new one takes the address as soon as the old
//!   one's report says it is gone, with no commit in between. With nowhere to go, the old
//!   node just releases it (`Releasing`).
//! - A silent node is fenced; its addresses become `Fenced` and move once no node can hold
//!   them: every live node reports (at a revision that includes the change) it does not,
//!   and every silent node is fenced with its lease surely over (see [`crate::health`]).
//! - Where addresses go is [`layout::alloc::allocate_with`].

use crate::health::NodeReport;
use crate::state::{ClusterState, PlaceChange, Placement};
use layout::alloc::{allocate_with, Address, Host};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// What the leader knows of the nodes now.
pub struct View {
    pub me: u64,
    pub now_unix: u64,
    /// Nodes heard from recently (the leader counts itself).
    pub alive: BTreeSet<u64>,
    /// Fenced nodes whose lease has surely run out.
    pub expired: BTreeSet<u64>,
    /// Silent nodes not fenced since they were last seen: to fence.
    pub unfenced: BTreeSet<u64>,
    /// Fresh reports (the leader's own included).
    pub reports: BTreeMap<u64, NodeReport>,
    pub failback: bool,
    /// Unplaced addresses wait (a new leader lets every node report first, so that they do
    /// not all land on the first node ready and move again at once).
    pub hold_unplaced: bool,
    /// Addresses an administrator placed (`moveip`): rebalancing moves others instead.
    pub sticky: BTreeSet<IpAddr>,
}

/// What the leader should commit now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Silent nodes to fence first.
    pub fence: BTreeSet<u64>,
    pub changes: Vec<PlaceChange>,
    /// The nodes that may host addresses now.
    pub eligible: BTreeSet<u64>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.fence.is_empty() && self.changes.is_empty()
    }
}

/// The nodes that may host addresses now, with their interfaces.
pub fn eligible(state: &ClusterState, view: &View) -> Vec<Host> {
    state
        .nodes
        .values()
        .filter(|n| !n.witness && view.alive.contains(&n.pnn))
        .filter(|n| {
            let f = state.flags.get(&n.pnn).copied().unwrap_or_default();
            !f.disabled && !f.stopped && !f.banned(view.now_unix)
        })
        .filter_map(|n| {
            let r = view.reports.get(&n.pnn)?;
            (r.healthy && r.lease).then(|| Host {
                pnn: n.pnn,
                interfaces: r.interfaces.iter().cloned().collect(),
            })
        })
        .collect()
}

/// The placement changes to commit now.
pub fn plan(state: &ClusterState, view: &View) -> Plan {
    let eligible = eligible(state, view);
    let eligible_set: BTreeSet<u64> = eligible.iter().map(|h| h.pnn).collect();
    let report = |x: u64, since: u64| view.reports.get(&x).filter(|r| r.held_at >= since);
    // `x` says, having acted on revision `since` or later, that it does not hold `ip`.
    let let_go = |x: u64, ip: &IpAddr, since: u64| report(x, since).is_some_and(|r| !r.hosted.contains(ip));
    // No node can hold `ip`: live ones say so, silent ones are fenced and their leases over.
    let clear = |ip: &IpAddr, since: u64| {
        let candidates = state.nodes.values().filter(|n| !n.witness).map(|n| n.pnn);
        candidates.chain(state.fences.keys().copied()).all(|m| {
            if view.alive.contains(&m) {
                let_go(m, ip, since)
            } else {
                view.expired.contains(&m)
            }
        })
    };

    let mut out = Plan {
        eligible: eligible_set.clone(),
        ..Plan::default()
    };
    // Every silent node gets fenced, so that a limbo address can tell it cannot hold it.
    out.fence.extend(view.unfenced.iter().copied());
    let mut current = BTreeMap::new();
    let mut frozen = BTreeSet::new();
    for ip in state.public_addresses.keys() {
        let now = state.placement.get(ip).copied();
        let since = state.placed_at.get(ip).copied().unwrap_or(0);
        let homeless = match now {
            None => true,
            Some(Placement::Host(x)) if eligible_set.contains(&x) => {
                current.insert(*ip, x);
                false
            }
            Some(Placement::Host(x)) | Some(Placement::Releasing(x)) if !view.alive.contains(&x) => {
                out.fence.insert(x);
                false
            }
            // Alive but may not host it: moves (below, once we know where to).
            Some(Placement::Host(_)) => true,
            Some(Placement::Releasing(x)) => let_go(x, ip, since),
            Some(Placement::Handover { from, to }) => {
                let change = if report(to, since).is_some_and(|r| r.hosted.contains(ip)) {
                    Some(Placement::Host(to))
                } else if !view.alive.contains(&from) || !view.alive.contains(&to) {
                    out.fence
                        .extend([from, to].into_iter().filter(|n| !view.alive.contains(n)));
                    None
                } else if !eligible_set.contains(&to) && let_go(from, ip, since) {
                    // The new host may no longer take it: it gives it up if it already did.
                    Some(Placement::Releasing(to))
                } else {
                    None
                };
                if let Some(to) = change {
                    out.changes.push(PlaceChange {
                        ip: *ip,
                        from: now,
                        to: Some(to),
                    });
                }
                false
            }
            Some(Placement::Fenced(_)) => clear(ip, since),
        };
        if !homeless && !current.contains_key(ip) {
            frozen.insert(*ip);
        }
    }
    let addrs: Vec<Address> = state
        .public_addresses
        .iter()
        .filter(|(ip, _)| !frozen.contains(*ip))
        .map(|(ip, a)| Address {
            ip: *ip,
            prefix: a.prefix,
            interfaces: a.interfaces.clone(),
        })
        .collect();
    let target = allocate_with(&addrs, &eligible, &current, view.failback, &view.sticky);
    for a in &addrs {
        let now = state.placement.get(&a.ip).copied();
        let to = match (now, current.get(&a.ip), target.get(&a.ip).copied()) {
            (_, Some(&x), Some(t)) if x != t => Some(Placement::Handover { from: x, to: t }),
            (_, Some(_), _) => continue,
            // Its node may no longer host it.
            (Some(Placement::Host(x)), None, Some(t)) => Some(Placement::Handover { from: x, to: t }),
            (Some(Placement::Host(x)), None, None) => Some(Placement::Releasing(x)),
            (None, None, Some(_)) if view.hold_unplaced => continue,
            (_, None, Some(t)) => Some(Placement::Host(t)),
            (_, None, None) => None,
        };
        if to != now {
            out.changes.push(PlaceChange {
                ip: a.ip,
                from: now,
                to,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, NodeInfo};

    fn state(n: u64, addrs: usize) -> ClusterState {
        let mut s = ClusterState::default();
        for i in 0..n {
            s.apply(&Command::AddNode(NodeInfo {
                pnn: i,
                name: format!("n{i}"),
                address: format!("10.0.0.{}", i + 1),
                cluster_port: 7780,
                brick_base_port: 7800,
                witness: false,
            }))
            .unwrap();
        }
        for a in 0..addrs {
            s.apply(&Command::AddPublicAddress {
                ip: format!("10.1.0.{}", 100 + a).parse().unwrap(),
                prefix: 24,
                interfaces: vec!["eth1".into()],
                source: None,
            })
            .unwrap();
        }
        s
    }

    fn report(pnn: u64, hosted: &[IpAddr], held_at: u64) -> NodeReport {
        NodeReport {
            pnn,
            revision: held_at,
            held_at,
            healthy: true,
            lease: true,
            hosted: hosted.to_vec(),
            interfaces: vec!["eth1".into()],
            ..Default::default()
        }
    }

    /// Every live node reports, caught up, exactly what the state places on it.
    fn view(alive: &[u64], expired: &[u64], s: &ClusterState) -> View {
        let hosted = |p: u64| -> Vec<IpAddr> {
            s.placement
                .iter()
                .filter(|(_, pl)| **pl == Placement::Host(p))
                .map(|(ip, _)| *ip)
                .collect()
        };
        View {
            me: 0,
            now_unix: 1000,
            alive: alive.iter().copied().collect(),
            expired: expired.iter().copied().collect(),
            unfenced: s
                .nodes
                .keys()
                .filter(|p| !alive.contains(p) && !s.fences.contains_key(p))
                .copied()
                .collect(),
            reports: alive
                .iter()
                .map(|p| (*p, report(*p, &hosted(*p), s.revision)))
                .collect(),
            failback: true,
            hold_unplaced: false,
            sticky: BTreeSet::new(),
        }
    }

    fn commit(s: &mut ClusterState, plan: Plan) {
        for pnn in plan.fence {
            s.apply(&Command::Fence { pnn }).unwrap();
        }
        if !plan.changes.is_empty() {
            s.apply(&Command::Place {
                changes: plan.changes,
            })
            .unwrap();
        }
    }

    fn hosts(s: &ClusterState) -> BTreeMap<u64, usize> {
        let mut c = BTreeMap::new();
        for p in s.placement.values() {
            if let Placement::Host(h) = p {
                *c.entry(*h).or_insert(0) += 1;
            }
        }
        c
    }

    fn up(n: u64, addrs: usize) -> ClusterState {
        let mut s = state(n, addrs);
        let all: Vec<u64> = (0..n).collect();
        let p = plan(&s, &view(&all, &[], &s));
        commit(&mut s, p);
        s
    }

    #[test]
    fn a_silent_node_is_fenced_then_its_addresses_move_once_its_lease_is_over() {
        let mut s = up(3, 3);
        assert_eq!(hosts(&s).values().copied().collect::<Vec<_>>(), vec![1, 1, 1]);
        let ip = *s
            .placement
            .iter()
            .find(|(_, p)| **p == Placement::Host(2))
            .unwrap()
            .0;
        // Node 2 goes silent: it is fenced first, nothing moves yet.
        let p = plan(&s, &view(&[0, 1], &[], &s));
        assert_eq!(p.fence, [2].into());
        assert!(p.changes.is_empty());
        commit(&mut s, p);
        assert_eq!(s.placement[&ip], Placement::Fenced(2));
        assert_eq!(s.fences[&2], s.revision);
        // While its lease may still run, the address stays put.
        assert!(plan(&s, &view(&[0, 1], &[], &s)).is_empty());
        // Its lease is surely over: the address moves straight to a live node.
        let p = plan(&s, &view(&[0, 1], &[2], &s));
        assert!(p.fence.is_empty());
        assert!(matches!(p.changes.as_slice(),
            [PlaceChange { ip: i, from: Some(Placement::Fenced(2)), to: Some(Placement::Host(h)) }] if *i == ip && *h != 2));
    }

    #[test]
    fn a_fenced_node_back_early_lets_go_only_once_it_knows() {
        let mut s = up(3, 3);
        let ip = *s
            .placement
            .iter()
            .find(|(_, p)| **p == Placement::Host(2))
            .unwrap()
            .0;
        let p = plan(&s, &view(&[0, 1], &[], &s));
        commit(&mut s, p);
        // Node 2 is heard again, but it still acts on the state before its fence.
        let mut v = view(&[0, 1, 2], &[], &s);
        v.reports.insert(2, report(2, &[ip], s.revision - 1));
        assert!(plan(&s, &v).is_empty());
        // Caught up and the address is gone from it: it may go anywhere, node 2 included.
        let p = plan(&s, &view(&[0, 1, 2], &[], &s));
        assert!(
            matches!(p.changes.as_slice(), [PlaceChange { ip: i, to: Some(Placement::Host(_)), .. }] if *i == ip)
        );
    }

    #[test]
    fn planned_moves_hand_over_once_the_old_host_reports_it_gone() {
        let mut s = up(3, 3);
        s.apply(&Command::SetFlags {
            pnn: 1,
            disabled: Some(true),
            stopped: None,
            banned_until: None,
        })
        .unwrap();
        let p = plan(&s, &view(&[0, 1, 2], &[], &s));
        assert_eq!(p.changes.len(), 1);
        let ip = p.changes[0].ip;
        let Some(Placement::Handover { from: 1, to }) = p.changes[0].to else {
            panic!("expected a handover from node 1: {p:?}");
        };
        commit(&mut s, p);
        // Node 1 still reports it, node `to` has not taken it: nothing to commit.
        let mut v = view(&[0, 1, 2], &[], &s);
        v.reports.insert(1, report(1, &[ip], s.revision));
        assert!(plan(&s, &v).is_empty());
        // Node `to` took it (at the handover's revision): the placement catches up.
        let mut v = view(&[0, 1, 2], &[], &s);
        let mut held = s
            .placement
            .iter()
            .filter(|(_, p)| **p == Placement::Host(to))
            .map(|(i, _)| *i)
            .collect::<Vec<_>>();
        held.push(ip);
        v.reports.insert(to, report(to, &held, s.revision));
        let p = plan(&s, &v);
        assert!(matches!(p.changes.as_slice(),
            [PlaceChange { ip: i, to: Some(Placement::Host(h)), .. }] if *i == ip && *h == to));
    }

    #[test]
    fn a_handover_whose_new_host_goes_silent_waits_for_both() {
        let mut s = up(3, 3);
        s.apply(&Command::SetFlags {
            pnn: 1,
            disabled: Some(true),
            stopped: None,
            banned_until: None,
        })
        .unwrap();
        let p = plan(&s, &view(&[0, 1, 2], &[], &s));
        let ip = p.changes[0].ip;
        let Some(Placement::Handover { to, .. }) = p.changes[0].to else {
            panic!("expected a handover: {p:?}");
        };
        commit(&mut s, p);
        // The new host goes silent (it may have taken the address): fenced.
        let alive: Vec<u64> = (0..3).filter(|n| *n != to).collect();
        let p = plan(&s, &view(&alive, &[], &s));
        assert_eq!(p.fence, [to].into());
        commit(&mut s, p);
        assert_eq!(s.placement[&ip], Placement::Fenced(to));
        // Node 1 (the old host) has not reported at the fence's revision: no move yet.
        let mut v = view(&alive, &[to], &s);
        v.reports.insert(1, report(1, &[], s.revision - 1));
        assert!(plan(&s, &v).changes.is_empty());
        // Everyone live says it is gone and the silent one is expired: it moves.
        let p = plan(&s, &view(&alive, &[to], &s));
        let moved = p.changes.iter().find(|c| c.ip == ip).expect("the address moves");
        assert!(
            matches!(moved.to, Some(Placement::Host(h)) if h != to && h != 1),
            "{p:?}"
        );
    }

    #[test]
    fn stale_decisions_change_nothing() {
        let mut s = up(2, 1);
        let ip = *s.placement.keys().next().unwrap();
        let before = s.placement.clone();
        s.apply(&Command::Place {
            changes: vec![PlaceChange {
                ip,
                from: None,
                to: Some(Placement::Host(1)),
            }],
        })
        .unwrap();
        assert_eq!(s.placement, before);
    }

    #[test]
    fn unhealthy_or_leaseless_nodes_host_nothing() {
        let mut s = state(2, 2);
        let mut v = view(&[0, 1], &[], &s);
        v.reports.get_mut(&1).unwrap().healthy = false;
        let p = plan(&s, &v);
        commit(&mut s, p);
        assert_eq!(hosts(&s), [(0, 2)].into());
        let mut v = view(&[0, 1], &[], &s);
        v.reports.get_mut(&0).unwrap().lease = false;
        v.reports.get_mut(&1).unwrap().lease = false;
        let p = plan(&s, &v);
        assert!(p.changes.iter().all(|c| c.to == Some(Placement::Releasing(0))));
    }
}
