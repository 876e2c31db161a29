//! Public-address allocation: which node hosts which floating address.
//!
//! A pure function of the addresses, the nodes that may host addresses now, and where the
//! addresses are. It keeps every address where it is when that node may still host it, puts
//! each homeless address on the least loaded node that can host it (spreading addresses of
//! one subnet across nodes), and, when failback is on, moves addresses from the most to the
//! least loaded nodes until per-node counts differ by at most one. So every address gets
//! exactly one host (when any node can host it), and a change moves as few addresses as it
//! can.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// A floating address and the interfaces it may live on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub ip: IpAddr,
    pub prefix: u8,
    pub interfaces: Vec<String>,
}

/// A node that may host addresses now, with the interfaces it has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub pnn: u64,
    pub interfaces: BTreeSet<String>,
}

/// The network part of an address.
pub fn subnet(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix.min(32) as u32)
            };
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix.min(128) as u32)
            };
            IpAddr::V6((bits & mask).into())
        }
    }
}

struct Tally {
    count: BTreeMap<u64, usize>,
    per_subnet: BTreeMap<(u64, IpAddr), usize>,
}

impl Tally {
    fn add(&mut self, host: u64, net: IpAddr, delta: isize) {
        let c = self.count.entry(host).or_insert(0);
        *c = c.saturating_add_signed(delta);
        let s = self.per_subnet.entry((host, net)).or_insert(0);
        *s = s.saturating_add_signed(delta);
    }
    fn count(&self, host: u64) -> usize {
        self.count.get(&host).copied().unwrap_or(0)
    }
    fn in_subnet(&self, host: u64, net: IpAddr) -> usize {
        self.per_subnet.get(&(host, net)).copied().unwrap_or(0)
    }
}

/// Where every address should be. Addresses no node can host are left out.
pub fn allocate(
    addresses: &[Address],
    hosts: &[Host],
    current: &BTreeMap<IpAddr, u64>,
    failback: bool,
) -> BTreeMap<IpAddr, u64> {
    allocate_with(addresses, hosts, current, failback, &BTreeSet::new())
}

/// [`allocate`], where rebalancing leaves the `sticky` addresses where they are (an
/// administrator put them there) and moves others instead.
pub fn allocate_with(
    addresses: &[Address],
    hosts: &[Host],
    current: &BTreeMap<IpAddr, u64>,
    failback: bool,
    sticky: &BTreeSet<IpAddr>,
) -> BTreeMap<IpAddr, u64> {
    let mut addrs: Vec<&Address> = addresses.iter().collect();
    addrs.sort_by_key(|a| a.ip);
    let can = |h: &Host, a: &Address| a.interfaces.iter().any(|i| h.interfaces.contains(i));
    let by_pnn: BTreeMap<u64, &Host> = hosts.iter().map(|h| (h.pnn, h)).collect();
    let mut tally = Tally {
        count: hosts.iter().map(|h| (h.pnn, 0)).collect(),
        per_subnet: BTreeMap::new(),
    };
    let mut out: BTreeMap<IpAddr, u64> = BTreeMap::new();

    // 1. Addresses stay where they are while their node may keep them.
    for a in &addrs {
        if let Some(&h) = current.get(&a.ip) {
            if by_pnn.get(&h).is_some_and(|host| can(host, a)) {
                out.insert(a.ip, h);
                tally.add(h, subnet(a.ip, a.prefix), 1);
            }
        }
    }
    // 2. Homeless addresses go to the least loaded capable node, spreading subnets.
    for a in &addrs {
        if out.contains_key(&a.ip) {
            continue;
        }
        let net = subnet(a.ip, a.prefix);
        let best = hosts
            .iter()
            .filter(|h| can(h, a))
            .min_by_key(|h| (tally.count(h.pnn), tally.in_subnet(h.pnn, net), h.pnn));
        if let Some(h) = best {
            out.insert(a.ip, h.pnn);
            tally.add(h.pnn, net, 1);
        }
    }
    // 3. Failback: move from the most to the least loaded until balanced within one.
    if failback {
        let by_ip: BTreeMap<IpAddr, &Address> = addrs.iter().map(|a| (a.ip, *a)).collect();
        let mut held: BTreeMap<u64, BTreeSet<IpAddr>> =
            hosts.iter().map(|h| (h.pnn, BTreeSet::new())).collect();
        for (ip, h) in &out {
            held.entry(*h).or_default().insert(*ip);
        }
        'rebalance: loop {
            let mut order: Vec<&Host> = hosts.iter().collect();
            order.sort_by_key(|h| (std::cmp::Reverse(tally.count(h.pnn)), h.pnn));
            for from in &order {
                for to in order.iter().rev() {
                    let (cf, ct) = (tally.count(from.pnn), tally.count(to.pnn));
                    if cf < ct + 2 {
                        break; // `to` is the least loaded left: nothing to gain from `from`
                    }
                    // The address to move: one `to` can host, from a subnet crowded on
                    // `from` and sparse on `to`.
                    let pick = held[&from.pnn]
                        .iter()
                        .filter(|ip| can(to, by_ip[*ip]) && !sticky.contains(*ip))
                        .min_by_key(|ip| {
                            let net = subnet(**ip, by_ip[*ip].prefix);
                            (
                                std::cmp::Reverse(tally.in_subnet(from.pnn, net)),
                                tally.in_subnet(to.pnn, net),
                                **ip,
                            )
                        })
                        .copied();
                    if let Some(ip) = pick {
                        let net = subnet(ip, by_ip[&ip].prefix);
                        tally.add(from.pnn, net, -1);
                        tally.add(to.pnn, net, 1);
                        held.entry(from.pnn).or_default().remove(&ip);
                        held.entry(to.pnn).or_default().insert(ip);
                        out.insert(ip, to.pnn);
                        continue 'rebalance;
                    }
                }
            }
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str, ifaces: &[&str]) -> Address {
        let (ip, prefix) = s.split_once('/').unwrap();
        Address {
            ip: ip.parse().unwrap(),
            prefix: prefix.parse().unwrap(),
            interfaces: ifaces.iter().map(|s| s.to_string()).collect(),
        }
    }
    fn host(pnn: u64, ifaces: &[&str]) -> Host {
        Host {
            pnn,
            interfaces: ifaces.iter().map(|s| s.to_string()).collect(),
        }
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn counts(m: &BTreeMap<IpAddr, u64>) -> BTreeMap<u64, usize> {
        let mut c = BTreeMap::new();
        for h in m.values() {
            *c.entry(*h).or_insert(0) += 1;
        }
        c
    }

    #[test]
    fn sticky_addresses_stay_and_others_move_instead() {
        let addrs: Vec<Address> = (100..103)
            .map(|i| addr(&format!("10.1.0.{i}/24"), &["eth1"]))
            .collect();
        let three = [host(0, &["eth1"]), host(1, &["eth1"]), host(2, &["eth1"])];
        // An administrator moved .100 from node 0 to node 2.
        let current: BTreeMap<IpAddr, u64> = [
            (ip("10.1.0.100"), 2),
            (ip("10.1.0.101"), 1),
            (ip("10.1.0.102"), 2),
        ]
        .into();
        let sticky = [ip("10.1.0.100")].into();
        let a = allocate_with(&addrs, &three, &current, true, &sticky);
        assert_eq!(a[&ip("10.1.0.100")], 2);
        assert_eq!(a[&ip("10.1.0.102")], 0);
        // Without it, rebalancing may undo the move.
        let b = allocate(&addrs, &three, &current, true);
        assert_eq!(counts(&b).values().copied().collect::<Vec<_>>(), vec![1, 1, 1]);
    }

    #[test]
    fn table() {
        let addrs: Vec<Address> = (100..106)
            .map(|i| addr(&format!("10.1.0.{i}/24"), &["eth1"]))
            .collect();
        let three = [host(0, &["eth1"]), host(1, &["eth1"]), host(2, &["eth1"])];
        // From nothing: two each.
        let a = allocate(&addrs, &three, &BTreeMap::new(), true);
        assert_eq!(counts(&a).values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
        // A node leaves: only its addresses move, one to each survivor.
        let two = [three[0].clone(), three[2].clone()];
        let b = allocate(&addrs, &two, &a, true);
        for (ipa, h) in &a {
            if *h != 1 {
                assert_eq!(b[ipa], *h, "{ipa} moved needlessly");
            }
        }
        assert_eq!(counts(&b).values().copied().collect::<Vec<_>>(), vec![3, 3]);
        // It comes back: with failback it gets two again (two moves); without, nothing moves.
        let c = allocate(&addrs, &three, &b, true);
        assert_eq!(counts(&c).values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
        assert_eq!(c.iter().filter(|(k, v)| b[*k] != **v).count(), 2);
        let d = allocate(&addrs, &three, &b, false);
        assert_eq!(d, b);
        // An address only some nodes can host goes to one of them.
        let odd = [addr("10.2.0.1/24", &["eth2"])];
        let e = allocate(
            &odd,
            &[host(0, &["eth1"]), host(5, &["eth1", "eth2"])],
            &BTreeMap::new(),
            true,
        );
        assert_eq!(e[&ip("10.2.0.1")], 5);
        // Nobody can: the address is left out.
        assert!(allocate(&odd, &three, &BTreeMap::new(), true).is_empty());
        // No hosts at all.
        assert!(allocate(&addrs, &[], &a, true).is_empty());
    }

    #[test]
    fn subnets_spread() {
        // Two subnets of two addresses over two nodes: each node gets one of each.
        let addrs = [
            addr("10.1.0.1/24", &["e"]),
            addr("10.1.0.2/24", &["e"]),
            addr("10.2.0.1/24", &["e"]),
            addr("10.2.0.2/24", &["e"]),
        ];
        let a = allocate(
            &addrs,
            &[host(0, &["e"]), host(1, &["e"])],
            &BTreeMap::new(),
            true,
        );
        assert_ne!(a[&ip("10.1.0.1")], a[&ip("10.1.0.2")]);
        assert_ne!(a[&ip("10.2.0.1")], a[&ip("10.2.0.2")]);
        assert_eq!(subnet(ip("fd00::1:2"), 112), ip("fd00::1:0"));
        assert_eq!(subnet(ip("10.1.2.3"), 16), ip("10.1.0.0"));
    }

    fn cluster() -> impl Strategy<Value = (Vec<Address>, Vec<Host>, BTreeMap<IpAddr, u64>)> {
        (1usize..64, 0usize..1000)
            .prop_flat_map(|(n, m)| {
                let current = proptest::collection::vec(0u64..80, m);
                (
                    Just(n),
                    Just(m),
                    current,
                    proptest::collection::vec(any::<bool>(), n),
                )
            })
            .prop_map(|(n, m, cur, up)| {
                let addrs: Vec<Address> = (0..m)
                    .map(|i| Address {
                        ip: IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i as u32)),
                        prefix: 22,
                        interfaces: vec!["eth1".into()],
                    })
                    .collect();
                let hosts: Vec<Host> = (0..n as u64)
                    .filter(|p| up[*p as usize] || *p == 0)
                    .map(|p| host(p, &["eth1"]))
                    .collect();
                let current = addrs.iter().zip(cur).map(|(a, h)| (a.ip, h)).collect();
                (addrs, hosts, current)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn invariants((addrs, hosts, current) in cluster()) {
            let out = allocate(&addrs, &hosts, &current, true);
            // Every address, exactly one host, a host that is up.
            prop_assert_eq!(out.len(), addrs.len());
            let up: BTreeSet<u64> = hosts.iter().map(|h| h.pnn).collect();
            prop_assert!(out.values().all(|h| up.contains(h)));
            // Balanced within one.
            let mut c: BTreeMap<u64, usize> = hosts.iter().map(|h| (h.pnn, 0)).collect();
            for h in out.values() { *c.entry(*h).or_insert(0) += 1; }
            let (lo, hi) = (c.values().min().copied().unwrap_or(0), c.values().max().copied().unwrap_or(0));
            prop_assert!(hi - lo <= 1, "counts {:?}", c);
            // Calm: a second run moves nothing.
            prop_assert_eq!(&allocate(&addrs, &hosts, &out, true), &out);
            // A node going away moves only its own addresses.
            if hosts.len() > 1 {
                let gone = hosts[hosts.len() / 2].pnn;
                let rest: Vec<Host> = hosts.iter().filter(|h| h.pnn != gone).cloned().collect();
                let after = allocate(&addrs, &rest, &out, true);
                for (ipa, h) in &out {
                    if *h != gone {
                        prop_assert_eq!(after[ipa], *h);
                    }
                }
            }
        }
    }
}
