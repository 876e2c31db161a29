//! `shoal daemon`: one node of a cluster. Wires the control plane (cluster crate) to what
//! only this machine can do: serve bricks (brick crate), hold public addresses (netif crate),
//! run event scripts (services crate), and answer the CLI on its admin socket.

mod addresses;
mod bricks;
mod healers;
mod split_brain;

use anyhow::{bail, Context, Result};
use clap::Args;
use cluster::admin::{AdminRequest, AdminResponse};
use cluster::config::NodeConfig;
use cluster::rpc::{BrickStatus, ScriptRow};
use cluster::{HostFuture, LocalHost, Node};
use services::events::{Event, EventScripts, Verdict};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub use addresses::watchdog;

#[derive(Args)]
pub struct DaemonArgs {
    /// The node's configuration file.
    #[arg(long, default_value = "/etc/shoal/shoal.toml")]
    pub config: std::path::PathBuf,
    /// Run as a witness: a Raft voter that holds no bricks and hosts no addresses.
    #[arg(long)]
    pub witness: bool,
}

/// What this machine does for the cluster.
pub struct Local {
    bricks: bricks::DaemonBricks,
    healers: healers::DaemonHealers,
    events: Arc<EventScripts>,
    keeper: OnceLock<Arc<netif::Keeper>>,
}

impl LocalHost for Local {
    fn check(&self, path: &str, force: bool, stamp: Option<u128>, empty: bool) -> Result<(), String> {
        self.bricks.check(path, force, stamp, empty)
    }

    fn mark_behind(&self, spec: layout::VolumeSpec, brick: usize) -> HostFuture<'_, Result<usize, String>> {
        Box::pin(async move { self.bricks.mark_set_behind(&spec, brick).await })
    }

    fn reset(
        &self,
        spec: layout::VolumeSpec,
        brick: usize,
        force: bool,
    ) -> HostFuture<'_, Result<String, String>> {
        Box::pin(self.bricks.reset(spec, brick, force))
    }

    fn split_brain(
        &self,
        spec: layout::VolumeSpec,
        work: cluster::SplitBrainWork,
    ) -> HostFuture<'_, Result<Vec<String>, String>> {
        Box::pin(self.healers.split_brain(spec, work))
    }

    fn status(&self) -> Vec<BrickStatus> {
        self.bricks.status()
    }

    fn announce(&self, ip: IpAddr) -> Result<(), String> {
        self.keeper
            .get()
            .ok_or("this node holds no public addresses")?
            .announce(ip)
    }

    fn script_status(&self) -> Vec<ScriptRow> {
        let events = [
            Event::Init,
            Event::Startup,
            Event::Monitor,
            Event::TakeIp,
            Event::ReleaseIp,
            Event::IpReallocated,
        ];
        events
            .iter()
            .flat_map(|e| {
                self.events.status(*e).into_iter().map(move |r| ScriptRow {
                    event: e.name().into(),
                    script: r.script,
                    status: match r.verdict {
                        Verdict::Ok => "OK".into(),
                        Verdict::Error(c) => format!("ERROR({c})"),
                        Verdict::TimedOut => "TIMEDOUT".into(),
                        Verdict::Disabled => "DISABLED".into(),
                    },
                    duration: r.duration,
                    started: r.started,
                    output: r.output,
                })
            })
            .collect()
    }
}

pub fn run(args: DaemonArgs) -> Result<()> {
    crate::logging::init("info");
    let (mut cfg, publics) = NodeConfig::load(&args.config)?;
    cfg.witness |= args.witness;
    let key = proto::auth::ClusterKey::load(&cfg.key)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot make {}", cfg.state_dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(async move {
        let events = Arc::new(EventScripts::new(&cfg.event_dir));
        let script_timeout = Duration::from_secs(30);
        if !events.run(Event::Init, &[], script_timeout).await {
            bail!("the init event failed (see shoal scriptstatus / the daemon log)");
        }
        let local =
            Arc::new(Local {
                bricks: bricks::DaemonBricks::new(cfg.address, key.clone(), &cfg.node_name()),
                healers: healers::DaemonHealers::new(key.clone(), &cfg.node_name()),
                events: events.clone(),
                keeper: OnceLock::new(),
            });
        let hosted_file = cfg.state_dir.join("hosted");
        if !cfg.witness {
            // Addresses are given back by a watchdog the moment this process dies.
            addresses::spawn_watchdog(&hosted_file, &cfg.state_dir)?;
            let links = netif::Links::open()?;
            let keeper = Arc::new(netif::Keeper::open(links, &hosted_file).await);
            for p in &publics {
                if let Some(iface) = keeper.present_elsewhere(p.addr).await? {
                    bail!(
                        "public address {} is already present on this machine (on {iface}): refusing to manage it",
                        p.addr
                    );
                }
            }
            let _ = local.keeper.set(keeper);
        }
        let socket = cfg.socket.clone();
        let node = Node::start(cfg, publics, key, local.clone()).await?;
        let admin = bind_admin_socket(&socket)?;
        tokio::spawn(serve_admin(admin, node.clone()));
        tokio::spawn(keep_bricks(node.clone(), local.clone()));
        tokio::spawn(addresses::monitor(node.clone(), events.clone()));
        if let Some(k) = local.keeper.get() {
            tokio::spawn(addresses::keep(node.clone(), k.clone(), events.clone()));
        }
        let started = node.clone();
        let ev = events.clone();
        tokio::spawn(async move {
            while started.pnn().is_none() || !started.state().nodes.contains_key(&started.pnn().unwrap_or(u64::MAX)) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ev.run(Event::Startup, &[], script_timeout).await;
        });
        wait_for_signal().await;
        tracing::info!("shutting down");
        if let Some(k) = local.keeper.get() {
            for (ip, h) in k.release_all().await {
                let args = [h.iface.clone(), ip.to_string(), h.prefix.to_string()];
                events.run(Event::ReleaseIp, &args, script_timeout).await;
            }
        }
        events.run(Event::Shutdown, &[], script_timeout).await;
        local.healers.stop_all().await;
        local.bricks.stop_all();
        node.shutdown().await;
        let _ = std::fs::remove_file(&socket);
        Ok(())
    });
    // Raft's and the bricks' tasks need not finish: their state is on disk.
    rt.shutdown_timeout(Duration::from_millis(300));
    result
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

fn bind_admin_socket(path: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another daemon answers on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let l =
        tokio::net::UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    // Admin rights follow the socket's permissions: owner and group.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

/// Longest admin request line accepted.
const MAX_ADMIN_LINE: usize = 1 << 20;

async fn serve_admin(listener: tokio::net::UnixListener, node: Arc<Node>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            let mut rd = BufReader::new(tokio::io::AsyncReadExt::take(rd, MAX_ADMIN_LINE as u64));
            let resp = match rd.read_line(&mut line).await {
                Ok(0) => return,
                Ok(_) => match serde_json::from_str::<AdminRequest>(&line) {
                    Ok(req) => node.admin(req).await,
                    Err(e) => AdminResponse::Error(format!("malformed admin request: {e}")),
                },
                Err(e) => AdminResponse::Error(format!("cannot read request: {e}")),
            };
            if let Ok(mut text) = serde_json::to_string(&resp) {
                text.push('\n');
                let _ = wr.write_all(text.as_bytes()).await;
            }
        });
    }
}

/// Serves exactly the bricks of started volumes that live on this node, and heals their
/// replicas, as the cluster state changes (and retries any that failed to start).
async fn keep_bricks(node: Arc<Node>, local: Arc<Local>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    // One receiver for the whole loop: a fresh clone would report every past change again
    // and spin.
    let mut rx = None;
    loop {
        if rx.is_none() {
            rx = node.watch_state();
        }
        if let (Some(pnn), Some(_)) = (node.pnn(), rx.as_ref()) {
            let state = node.state();
            local.bricks.reconcile(&state, pnn).await;
            local.healers.reconcile(&state, pnn).await;
        }
        match rx.as_mut() {
            Some(rx) => {
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() {
                        return; // the node is shutting down
                    },
                    _ = tick.tick() => {}
                }
            }
            None => {
                tick.tick().await;
            }
        }
    }
}
