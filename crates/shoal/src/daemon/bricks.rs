//! The bricks this daemon serves.

use anyhow::{Context, Result};
use cluster::rpc::BrickStatus;
use cluster::state::{ClusterState, VolumeState};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::sync::watch;

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
    pub fn new(address: IpAddr, key: proto::auth::ClusterKey) -> DaemonBricks {
        DaemonBricks {
            address,
            key,
            running: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn reconcile(&self, state: &ClusterState, pnn: u64) {
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
        let server = brick::BrickServer::new(store, brick::ServerConfig::new(self.key.clone()));
        let (stop, shutdown) = watch::channel(false);
        tokio::spawn(async move {
            if let Err(e) = server.serve(listener, shutdown).await {
                tracing::error!("brick server failed: {e}");
            }
        });
        Ok(stop)
    }

    pub fn stop_all(&self) {
        for (_, r) in self.lock().drain() {
            let _ = r.stop.send(true);
        }
    }
}

impl DaemonBricks {
    pub fn check(&self, path: &str, force: bool) -> Result<(), String> {
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

    pub fn status(&self) -> Vec<BrickStatus> {
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
