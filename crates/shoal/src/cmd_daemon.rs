//! `shoal daemon`: one node of a cluster. Wires the control plane (cluster crate) to the
//! bricks it must serve (brick crate) and to the admin socket the CLI talks to.

use anyhow::{Context, Result};
use clap::Args;
use cluster::admin::{AdminRequest, AdminResponse};
use cluster::config::NodeConfig;
use cluster::rpc::BrickStatus;
use cluster::state::{ClusterState, VolumeState};
use cluster::{BrickHost, Node};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

#[derive(Args)]
pub struct DaemonArgs {
    /// The node's configuration file.
    #[arg(long, default_value = "/etc/shoal/shoal.toml")]
    pub config: PathBuf,
    /// Run as a witness: a Raft voter that holds no bricks and hosts no addresses.
    #[arg(long)]
    pub witness: bool,
}

pub fn run(args: DaemonArgs) -> Result<()> {
    crate::logging::init("info");
    let (mut cfg, publics) = NodeConfig::load(&args.config)?;
    cfg.witness |= args.witness;
    let key = proto::auth::ClusterKey::load(&cfg.key)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async move {
        let bricks = Arc::new(DaemonBricks {
            address: cfg.address,
            key: key.clone(),
            running: Mutex::new(HashMap::new()),
        });
        let socket = cfg.socket.clone();
        let node = Node::start(cfg, publics, key, bricks.clone()).await?;
        let admin = bind_admin_socket(&socket)?;
        tokio::spawn(serve_admin(admin, node.clone()));
        tokio::spawn(keep_bricks(node.clone(), bricks.clone()));
        wait_for_signal().await;
        tracing::info!("shutting down");
        bricks.stop_all();
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
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
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
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot bind {}", path.display()))?;
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

/// Serves exactly the bricks of started volumes that live on this node, as the cluster
/// state changes (and retries any that failed to start).
async fn keep_bricks(node: Arc<Node>, bricks: Arc<DaemonBricks>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        let mut rx = node.watch_state();
        if let (Some(pnn), Some(_)) = (node.pnn(), rx.as_ref()) {
            bricks.reconcile(&node.state(), pnn).await;
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

struct Running {
    port: u16,
    stop: watch::Sender<bool>,
}

/// The bricks this daemon serves, each on its own port like a GlusterFS brick process.
pub struct DaemonBricks {
    address: IpAddr,
    key: proto::auth::ClusterKey,
    running: Mutex<HashMap<(String, String), Running>>,
}

impl DaemonBricks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn reconcile(&self, state: &ClusterState, pnn: u64) {
        let mut desired: HashMap<(String, String), u16> = HashMap::new();
        for (name, v) in &state.volumes {
            if v.state != VolumeState::Started {
                continue;
            }
            for (b, owner) in v.spec.bricks.iter().zip(&v.brick_nodes) {
                let port = b.addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
                if let (true, Some(port)) = (*owner == pnn, port) {
                    desired.insert((name.clone(), b.path.clone()), port);
                }
            }
        }
        {
            let mut running = self.lock();
            running.retain(|k, r| {
                let keep = desired.get(k) == Some(&r.port);
                if !keep {
                    let _ = r.stop.send(true);
                    tracing::info!(volume = %k.0, path = %k.1, "brick stopped");
                }
                keep
            });
            desired.retain(|k, _| !running.contains_key(k));
        }
        for ((volume, path), port) in desired {
            match self.start(&path, port).await {
                Ok(stop) => {
                    tracing::info!(%volume, %path, port, "brick started");
                    self.lock().insert((volume, path), Running { port, stop });
                }
                Err(e) => tracing::error!(%volume, %path, port, "cannot start brick: {e:#}"),
            }
        }
    }

    async fn start(&self, path: &str, port: u16) -> Result<watch::Sender<bool>> {
        let p = PathBuf::from(path);
        let store = tokio::task::spawn_blocking(move || brick::Store::open_dir(&p)).await??;
        let addr = cluster::state::join_host_port(&self.address.to_string(), port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let server = brick::BrickServer::new(
            store,
            brick::ServerConfig {
                key: self.key.clone(),
            },
        );
        let (stop, shutdown) = watch::channel(false);
        tokio::spawn(async move {
            if let Err(e) = server.serve(listener, shutdown).await {
                tracing::error!("brick server failed: {e}");
            }
        });
        Ok(stop)
    }

    fn stop_all(&self) {
        for (_, r) in self.lock().drain() {
            let _ = r.stop.send(true);
        }
    }
}

impl BrickHost for DaemonBricks {
    fn check(&self, path: &str, force: bool) -> Result<(), String> {
        let p = Path::new(path);
        match std::fs::metadata(p) {
            Ok(m) if !m.is_dir() => return Err("is not a directory".into()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !force {
                    return Err("does not exist (add 'force' to create it)".into());
                }
                std::fs::create_dir_all(p).map_err(|e| format!("cannot create it: {e}"))?;
            }
            Err(e) => return Err(e.to_string()),
        }
        if p.join(brick::index::META_DIR).exists() && !force {
            return Err("already holds a shoal brick (add 'force' to reuse it)".into());
        }
        Ok(())
    }

    fn status(&self) -> Vec<BrickStatus> {
        self.lock()
            .iter()
            .map(|((volume, path), r)| BrickStatus {
                volume: volume.clone(),
                path: path.clone(),
                port: r.port,
                online: !r.stop.is_closed() && !*r.stop.borrow(),
                pid: std::process::id(),
            })
            .collect()
    }
}
