//! High availability, as a client on the public network sees it: nodes and a client in
//! network namespaces (`shoal sandbox up` as root), a client connecting to a public address
//! every 20 ms, and every node's public interface sampled throughout so that an address on
//! two nodes at once is caught.

mod common;

use common::ha::{Client, Responders, Sampler, Sandbox};
use common::{require_root, wait_for};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Loose bounds for a loaded CI machine; `bench/failover` measures the real numbers.
const RECOVERY: Duration = Duration::from_secs(4);
const SETTLE: Duration = Duration::from_secs(15);

struct Rig {
    sb: Sandbox,
    sampler: Sampler,
    _responders: Responders,
}

impl Rig {
    fn up(nodes: usize) -> Rig {
        let sb = Sandbox::up(nodes);
        let total = sb.env["SHOAL_NETNS"].split_whitespace().count() - 1;
        let data: Vec<String> = (0..nodes).map(|i| sb.netns(i)).collect();
        let all: Vec<String> = (0..total).map(|i| sb.netns(i)).collect();
        let sampler = Sampler::start(all, Duration::from_millis(5));
        let responders = Responders::start(&data);
        let rig = Rig {
            sb,
            sampler,
            _responders: responders,
        };
        rig.balanced(&(0..nodes).collect::<Vec<_>>());
        rig
    }

    fn balanced(&self, live: &[usize]) {
        self.sampler.wait_balanced(&self.sb.publics(), live, SETTLE);
    }

    fn host(&self, ip: Ipv4Addr) -> usize {
        let mut h = None;
        wait_for(&format!("{ip} to be on one node"), SETTLE, || {
            h = self.sampler.host(ip);
            h.is_some()
        });
        h.expect("hosted")
    }

    /// A node other than `not` to send commands through.
    fn via(&self, not: usize) -> usize {
        (0..self.sb.nodes).find(|p| *p != not).expect("another node")
    }

    fn no_doubles(&self) {
        let d = self.sampler.doubles();
        assert!(d.is_empty(), "an address was up on two nodes at once: {d:?}");
    }

    fn wait_state(&self, via: usize, pnn: usize, what: &str) {
        wait_for(&format!("node {pnn} to be {what}"), SETTLE, || {
            self.sb
                .states(via)
                .get(&(pnn as u64))
                .is_some_and(|s| s.contains(what))
        });
    }

    /// Crashes (or cuts) the node hosting the first public address and checks that the
    /// client gets answers again from another node, then brings the node back.
    fn fail_over(&self, op: &str, extra: &[&str], label: &str) -> Duration {
        let ip = self.sb.publics()[0];
        let h = self.host(ip);
        let client = Client::start(&self.sb.client_netns(), ip, Duration::from_millis(250));
        client.wait_answer(Instant::now(), |p| p == h, SETTLE);
        let t0 = Instant::now();
        self.sb.node_op(op, h, extra);
        let back = client.wait_answer(t0, |p| p != h, RECOVERY);
        let outage = back - t0;
        eprintln!("{label}: node {h} -> clients answered again after {outage:?}");
        if op == "cut" {
            // The cut-off node runs on: it must drop the address within its lease.
            let gone = self
                .sampler
                .gone_from(h, ip, t0)
                .expect("the isolated node dropped its address");
            let held = gone - t0;
            eprintln!("{label}: isolated node {h} dropped {ip} after {held:?}");
            assert!(
                held < Duration::from_millis(1500),
                "isolated node held {ip} for {held:?}"
            );
        }
        let live: Vec<usize> = (0..self.sb.nodes).filter(|p| *p != h).collect();
        self.balanced(&live);
        self.sb.node_op("start", h, &[]);
        self.wait_state(self.via(h), h, "OK");
        self.balanced(&(0..self.sb.nodes).collect::<Vec<_>>());
        self.no_doubles();
        outage
    }

    /// A planned move of `ip` done by `act`: it lands on a node `lands` accepts, and the
    /// client (patient, as real clients are) loses no connection.
    fn planned(&self, ip: Ipv4Addr, label: &str, act: impl FnOnce(), lands: impl Fn(usize) -> bool) {
        let client = Client::start(&self.sb.client_netns(), ip, Duration::from_secs(5));
        let from = self.host(ip);
        client.wait_answer(Instant::now(), |p| p == from, SETTLE);
        let t0 = Instant::now();
        act();
        let back = client.wait_answer(t0, &lands, SETTLE);
        let after = client.wait_answer(back, &lands, SETTLE);
        let failed: Vec<_> = client
            .since(t0)
            .into_iter()
            .filter(|a| a.start <= after && a.answer.is_err())
            .collect();
        assert!(failed.is_empty(), "{label}: failed connections: {failed:?}");
        for a in client
            .since(t0)
            .iter()
            .filter(|a| a.end - a.start > Duration::from_millis(50))
        {
            eprintln!(
                "{label}: slow attempt at +{:?} took {:?} ({:?})",
                a.start - t0,
                a.end - a.start,
                a.answer
            );
        }
        eprintln!(
            "{label}: {ip} moved off node {from} with no failed connection (longest gap {:?})",
            client.longest_gap(t0, after)
        );
        self.no_doubles();
    }

    /// A planned change after which some address moves (which one is the allocator's
    /// choice): clients of every address lose no connection, and the addresses end up
    /// balanced over `live`.
    fn planned_any(&self, label: &str, act: impl FnOnce(), live: &[usize]) {
        let clients: Vec<Client> = self
            .sb
            .publics()
            .into_iter()
            .map(|ip| Client::start(&self.sb.client_netns(), ip, Duration::from_secs(5)))
            .collect();
        for c in &clients {
            c.wait_answer(Instant::now(), |_| true, SETTLE);
        }
        let t0 = Instant::now();
        act();
        self.balanced(live);
        let settled = Instant::now();
        for c in &clients {
            c.wait_answer(settled, |_| true, SETTLE);
            let failed: Vec<_> = c.since(t0).into_iter().filter(|a| a.answer.is_err()).collect();
            assert!(failed.is_empty(), "{label}: failed connections: {failed:?}");
        }
        eprintln!("{label}: rebalanced with no failed connection");
        self.no_doubles();
    }
}

#[test]
fn crash_daemon_kill_and_link_cut_move_addresses_and_never_double_them() {
    if !require_root() {
        return;
    }
    let rig = Rig::up(3);
    rig.fail_over("kill", &[], "machine crash");
    rig.fail_over("kill", &["--daemon"], "daemon crash");
    rig.fail_over("cut", &[], "link cut (the node isolated)");
    rig.no_doubles();
}

#[test]
fn disable_moveip_and_ban_move_addresses_without_a_failed_connection() {
    if !require_root() {
        return;
    }
    let rig = Rig::up(3);
    let ip = rig.sb.publics()[0];
    let all: Vec<usize> = (0..3).collect();

    let h = rig.host(ip);
    let n = h.to_string();
    rig.planned(
        ip,
        "disable",
        || drop(rig.sb.ok(rig.via(h), &["disable", "-n", &n])),
        |p| p != h,
    );
    rig.wait_state(rig.via(h), h, "DISABLED");
    rig.balanced(&all.iter().copied().filter(|p| *p != h).collect::<Vec<_>>());
    rig.planned_any(
        "enable (failback)",
        || drop(rig.sb.ok(rig.via(h), &["enable", "-n", &n])),
        &all,
    );

    let h = rig.host(ip);
    let to = (h + 1) % 3;
    let args = ["moveip", &ip.to_string(), &to.to_string()];
    rig.planned(ip, "moveip", || drop(rig.sb.ok(rig.via(h), &args)), |p| p == to);

    let h = rig.host(ip);
    let n = h.to_string();
    rig.planned(
        ip,
        "ban",
        || drop(rig.sb.ok(rig.via(h), &["ban", "60", "-n", &n])),
        |p| p != h,
    );
    rig.wait_state(rig.via(h), h, "BANNED");
    rig.planned_any(
        "unban",
        || drop(rig.sb.ok(rig.via(h), &["unban", "-n", &n])),
        &all,
    );
    rig.no_doubles();
}

#[test]
fn a_failing_monitor_moves_addresses_and_recovery_follows_no_ip_failback() {
    if !require_root() {
        return;
    }
    let rig = Rig::up(3);
    let ip = rig.sb.publics()[0];
    let h = rig.host(ip);
    let flag = rig.sb.path().join("monitor-fails");
    let script = rig
        .sb
        .path()
        .join(format!("node{h}"))
        .join("events.d")
        .join("50.probe");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = monitor ] || exit 0\nif [ -e {} ]; then echo probe failing; exit 1; fi\n",
            flag.display()
        ),
    )
    .expect("write script");
    let exec = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
    std::fs::set_permissions(&script, exec).expect("chmod");
    let via = rig.via(h);
    let others: Vec<usize> = (0..3).filter(|p| *p != h).collect();

    // Failing: UNHEALTHY, and its address moves; scriptstatus shows why.
    std::fs::write(&flag, "").expect("flag");
    rig.wait_state(via, h, "UNHEALTHY");
    rig.balanced(&others);
    let status = rig.sb.ok(h, &["scriptstatus"]);
    assert!(
        status.contains("50.probe") && status.contains("probe failing"),
        "{status}"
    );
    // Passing again: OK, and with failback on (the default) its addresses come back.
    std::fs::remove_file(&flag).expect("unflag");
    rig.wait_state(via, h, "OK");
    rig.balanced(&[0, 1, 2]);

    // With NoIPFailback, a node that recovers gets nothing back until something else moves.
    rig.sb.ok(via, &["setvar", "NoIPFailback", "1"]);
    std::fs::write(&flag, "").expect("flag");
    rig.wait_state(via, h, "UNHEALTHY");
    rig.balanced(&others);
    std::fs::remove_file(&flag).expect("unflag");
    rig.wait_state(via, h, "OK");
    let healthy_at = Instant::now();
    // Watch for several placement rounds: nothing may come back to it.
    while healthy_at.elapsed() < Duration::from_millis(1500) {
        let now = rig.sampler.now();
        assert!(
            !now.values().any(|on| on.contains(&h)),
            "an address failed back to node {h} despite NoIPFailback: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    rig.no_doubles();
}

#[test]
fn two_data_nodes_and_a_witness_survive_a_crash_of_either() {
    if !require_root() {
        return;
    }
    let rig = Rig::up(2);
    for pnn in 0..2 {
        let ip = *rig
            .sb
            .publics()
            .iter()
            .find(|ip| rig.sampler.host(**ip) == Some(pnn))
            .expect("each data node hosts an address");
        let client = Client::start(&rig.sb.client_netns(), ip, Duration::from_millis(250));
        client.wait_answer(Instant::now(), |p| p == pnn, SETTLE);
        let t0 = Instant::now();
        rig.sb.node_op("kill", pnn, &[]);
        let back = client.wait_answer(t0, |p| p != pnn, RECOVERY);
        eprintln!(
            "witness cluster: node {pnn} crashed -> answered again after {:?}",
            back - t0
        );
        rig.balanced(&[1 - pnn]);
        // The survivor still takes commands (it and the witness are a quorum).
        rig.sb.ok(
            1 - pnn,
            &[
                "volume",
                "set",
                "nas",
                "user.comment",
                &format!("after-crash-{pnn}"),
            ],
        );
        rig.sb.node_op("start", pnn, &[]);
        rig.wait_state(1 - pnn, pnn, "OK");
        rig.balanced(&[0, 1]);
    }
    rig.no_doubles();
}
