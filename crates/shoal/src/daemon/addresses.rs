//! Public addresses on this node: holding exactly those the cluster placed here (while the
//! lease lasts), the watchdog that gives them back if the daemon dies, and the periodic
//! duties that feed the node's reports (monitor event, interfaces, connections).

use anyhow::{Context, Result};
use cluster::tunables;
use cluster::Node;
use services::events::{Event, EventScripts};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Starts the watchdog: a small process that waits for this one to die (its stdin is a pipe
/// only this process writes to) and then removes every address listed in the hosted file.
pub fn spawn_watchdog(hosted: &Path, state_dir: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let (reader, writer) = std::io::pipe()?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("watchdog")
        .arg("--hosted")
        .arg(hosted)
        .stdin(reader)
        .stdout(Stdio::null());
    // SAFETY: setsid is async-signal-safe: the watchdog leaves our session so that a signal
    // meant for the daemon's terminal does not take it down first.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().context("cannot start the address watchdog")?;
    std::fs::write(state_dir.join("watchdog.pid"), child.id().to_string())?;
    // The write end stays open for as long as this process lives.
    std::mem::forget(writer);
    Ok(())
}

/// `shoal watchdog --hosted FILE`: waits for EOF on stdin, then gives the addresses back.
pub fn watchdog(hosted: &Path) -> Result<()> {
    let mut buf = [0u8; 64];
    loop {
        match std::io::Read::read(&mut std::io::stdin(), &mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let links = netif::Links::open()?;
        let gone = netif::keeper::give_back(&links, hosted).await;
        if !gone.is_empty() {
            eprintln!("shoal watchdog: the daemon died; removed {gone:?}");
        }
        Ok::<_, anyhow::Error>(())
    })
}

fn period(node: &Node) -> Duration {
    Duration::from_millis(tunables::get(&node.state(), "HeartbeatIntervalMs").max(10) as u64)
}

/// Holds the addresses placed here: releases first, then takes, after every state change,
/// every heartbeat period, and the moment the lease runs out. Event scripts run in order on
/// a task of their own, so that a slow script never delays a release.
pub async fn keep(node: Arc<Node>, keeper: Arc<netif::Keeper>, events: Arc<EventScripts>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(run_events(node.clone(), events, rx));
    let mut up: BTreeSet<String> = keeper.up_interfaces().await;
    let mut rx = node.watch_state();
    loop {
        if rx.is_none() {
            rx = node.watch_state();
        }
        let mut wait = period(&node);
        if let Some(until) = node.health().lease_until() {
            wait = wait.min(until.saturating_duration_since(std::time::Instant::now()));
        }
        match rx.as_mut() {
            Some(r) => {
                tokio::select! {
                    _ = r.changed() => {}
                    _ = node.health().keeper_wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            None => tokio::time::sleep(wait).await,
        }
        match keeper.forget_lost().await {
            Ok(lost) if !lost.is_empty() => {
                tracing::warn!(
                    ?lost,
                    "public addresses vanished from their interface; taking them again"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot list addresses: {e}"),
        }
        let (revision, desired) = node.desired_addresses();
        let desired: std::collections::BTreeMap<_, _> = desired.into_iter().collect();
        let held = keeper.held();
        let mut changed = false;
        let going: BTreeSet<IpAddr> = held
            .keys()
            .filter(|ip| !desired.contains_key(*ip))
            .copied()
            .collect();
        if !going.is_empty() {
            // The connections the new hosts are to tickle, as they are now (the periodic list
            // may be a second old); they go out with the release report. Listed before the
            // release, not after: reading the kernel's TCP tables takes milliseconds, which
            // would widen the gap in which nobody holds the address.
            let ips: BTreeSet<IpAddr> = held.keys().copied().collect();
            let conns = netif::conns::established(&ips);
            node.health()
                .set_conns(conns.into_iter().map(|c| (c.local, c.remote)).collect());
        }
        for ip in &going {
            match keeper.release(*ip).await {
                Ok(Some(h)) => {
                    changed = true;
                    let placed = node.state().placement.get(ip).copied();
                    let lease = node.health().has_lease();
                    tracing::info!(%ip, iface = %h.iface, revision, ?placed, lease, "released public address");
                    let _ = tx.send((
                        Event::ReleaseIp,
                        vec![h.iface, ip.to_string(), h.prefix.to_string()],
                    ));
                }
                Ok(None) => {}
                Err(e) => tracing::error!(%ip, "cannot release: {e}"),
            }
        }
        // Released what this revision no longer places here: say so now (a handover's new
        // host is waiting for exactly this report).
        node.health().set_held_at(revision);
        node.health().set_hosted(keeper.held().into_keys().collect());
        let missing: Vec<_> = desired.iter().filter(|(ip, _)| !held.contains_key(*ip)).collect();
        if !missing.is_empty() {
            up = keeper.up_interfaces().await;
        }
        for (ip, a) in missing {
            // The lease may have run out since `desired` was read.
            if !node.health().has_lease() {
                break;
            }
            let conns = node.health().conns_for(*ip);
            match keeper.take(*ip, a.prefix, &a.interfaces, &up, &conns).await {
                Ok(iface) => {
                    changed = true;
                    node.health().set_hosted(keeper.held().into_keys().collect());
                    let placed = node.state().placement.get(ip).copied();
                    tracing::info!(%ip, %iface, tickled = conns.len(), revision, ?placed, "took public address");
                    let _ = tx.send((Event::TakeIp, vec![iface, ip.to_string(), a.prefix.to_string()]));
                }
                Err(e) => tracing::error!(%ip, "cannot take public address: {e}"),
            }
        }
        node.health().set_hosted(keeper.held().into_keys().collect());
        node.health().set_held_at(revision);
        if changed {
            let _ = tx.send((Event::IpReallocated, Vec::new()));
        }
    }
}

/// Runs the address event scripts in the order the changes happened.
async fn run_events(
    node: Arc<Node>,
    events: Arc<EventScripts>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(Event, Vec<String>)>,
) {
    while let Some((event, args)) = rx.recv().await {
        let timeout = Duration::from_secs(tunables::get(&node.state(), "EventScriptTimeout").max(1) as u64);
        events.run(event, &args, timeout).await;
    }
}

/// The node's periodic self-checks: the monitor event (health), its interfaces, and the
/// client connections to its addresses (shared so that a new host can tickle them).
pub async fn monitor(node: Arc<Node>, events: Arc<EventScripts>) {
    let links = match netif::Links::open() {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!("no netlink: interfaces will not be reported: {e}");
            None
        }
    };
    let mut last_monitor = std::time::Instant::now() - Duration::from_secs(3600);
    let mut last_conns = last_monitor;
    loop {
        let state = node.state();
        let monitor_every = Duration::from_millis(tunables::get(&state, "MonitorIntervalMs").max(10) as u64);
        let conns_every =
            Duration::from_millis(tunables::get(&state, "TickleUpdateIntervalMs").max(10) as u64);
        let timeout = Duration::from_secs(tunables::get(&state, "EventScriptTimeout").max(1) as u64);
        if last_monitor.elapsed() >= monitor_every {
            last_monitor = std::time::Instant::now();
            let ok = events
                .run(
                    Event::Monitor,
                    &[],
                    timeout.min(monitor_every.max(Duration::from_secs(1)) * 10),
                )
                .await;
            if ok != node.health().healthy() {
                if ok {
                    tracing::info!("monitor passes again: node healthy");
                } else {
                    tracing::warn!("monitor failed: node unhealthy");
                }
            }
            node.health().set_healthy(ok);
        }
        if let Some(l) = &links {
            if let Ok(up) = l.up_interfaces().await {
                node.health().set_interfaces(up.into_iter().collect());
            }
        }
        if last_conns.elapsed() >= conns_every {
            last_conns = std::time::Instant::now();
            let hosted = node.health().hosted();
            let conns = netif::conns::established(&hosted);
            node.health()
                .set_conns(conns.into_iter().map(|c| (c.local, c.remote)).collect());
        }
        tokio::time::sleep(period(&node).min(monitor_every)).await;
    }
}
