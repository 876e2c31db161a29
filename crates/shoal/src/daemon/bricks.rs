//! The bricks this daemon serves.

use anyhow::{bail, Context, Result};
use brick::stamp::{self, Stamp};
use client::conn::BrickConn;
use client::Xlator;
use cluster::rpc::BrickStatus;
use cluster::state::{ClusterState, VolumeState};
use layout::VolumeSpec;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a reset waits for each other copy of the brick to answer.
const COPY_WAIT: Duration = Duration::from_secs(3);
/// How long a stopped brick server may take to let go of its port.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// A brick: its volume's name and its directory.
type Key = (String, String);

struct Running {
    port: u16,
    stop: watch::Sender<bool>,
    served: JoinHandle<()>,
}

/// The bricks this daemon serves, each on its own port like a GlusterFS brick process.
pub struct DaemonBricks {
    address: IpAddr,
    key: proto::auth::ClusterKey,
    /// The client name other bricks see when a reset marks them.
    client_name: String,
    running: Mutex<HashMap<Key, Running>>,
    /// Bricks that cannot be served now, with the port they would use and why (retried at
    /// every reconcile: a disk mounted late is served once it is there).
    refused: Mutex<HashMap<Key, (u16, String)>>,
    /// Bricks a reset is taking in: reconciling leaves them alone.
    resetting: Mutex<HashSet<Key>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

/// Serves a directory only as a brick of the volume it is stamped for. A brick made before
/// stamps existed is stamped now.
fn admit(volume: &str, id: u128, path: &Path) -> Result<()> {
    match stamp::read(path)? {
        Stamp::Volume(v) if v == id => Ok(()),
        Stamp::Volume(v) => bail!("it is stamped as a brick of another volume (id {v:032x}, not {id:032x})"),
        Stamp::Unstamped => {
            stamp::write(path, id)?;
            tracing::info!(%volume, path = %path.display(), "brick stamped with its volume id");
            Ok(())
        }
        Stamp::Missing => bail!(
            "it holds no brick of this volume: is its disk mounted? (a new, empty disk is \
             taken in with `shoal volume reset-brick {volume} NODE:{}`)",
            path.display()
        ),
    }
}

fn is_mount_point(p: &Path, m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    match p.parent().map(std::fs::metadata) {
        Some(Ok(parent)) => parent.dev() != m.dev(),
        _ => true,
    }
}

/// Whether a directory holds anything but what a new file system has (`lost+found`) or a
/// stamp.
fn holds_data(path: &Path) -> std::io::Result<bool> {
    for e in std::fs::read_dir(path)? {
        let name = e?.file_name();
        let brick_meta = name == brick::index::META_DIR && !stamp::holds_brick(path);
        if name != "lost+found" && !brick_meta {
            return Ok(true);
        }
    }
    Ok(false)
}

impl DaemonBricks {
    pub fn new(address: IpAddr, key: proto::auth::ClusterKey, node: &str) -> DaemonBricks {
        DaemonBricks {
            address,
            key,
            client_name: format!("reset@{node}"),
            running: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            resetting: Mutex::new(HashSet::new()),
        }
    }

    pub async fn reconcile(&self, state: &ClusterState, pnn: u64) {
        let mut desired: HashMap<Key, (u16, u128)> = HashMap::new();
        for (name, v) in &state.volumes {
            if v.state != VolumeState::Started {
                continue;
            }
            for (b, owner) in v.spec.bricks.iter().zip(&v.brick_nodes) {
                if let (true, Some(port)) = (*owner == pnn, port_of(&b.addr)) {
                    desired.insert((name.clone(), b.path.clone()), (port, v.spec.id));
                }
            }
        }
        let resetting = lock(&self.resetting).clone();
        desired.retain(|k, _| !resetting.contains(k));
        lock(&self.refused).retain(|k, _| desired.contains_key(k));
        let stopped: Vec<Running> = {
            let mut running = lock(&self.running);
            let gone: Vec<Key> = running
                .iter()
                .filter(|(k, r)| !resetting.contains(*k) && desired.get(*k).map(|d| d.0) != Some(r.port))
                .map(|(k, _)| k.clone())
                .collect();
            desired.retain(|k, _| !running.contains_key(k));
            gone.into_iter()
                .filter_map(|k| {
                    tracing::info!(volume = %k.0, path = %k.1, "brick stopped");
                    running.remove(&k)
                })
                .collect()
        };
        for r in stopped {
            let _ = r.stop.send(true);
        }
        for ((volume, path), (port, id)) in desired {
            match self.start(&volume, id, &path, port).await {
                Ok(r) => {
                    tracing::info!(%volume, %path, port, "brick started");
                    lock(&self.refused).remove(&(volume.clone(), path.clone()));
                    lock(&self.running).insert((volume, path), r);
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    let mut refused = lock(&self.refused);
                    // Said once, not at every retry.
                    if refused.get(&(volume.clone(), path.clone())).map(|r| &r.1) != Some(&why) {
                        tracing::error!(%volume, %path, port, "cannot serve brick: {why}");
                    }
                    refused.insert((volume, path), (port, why));
                }
            }
        }
    }

    async fn start(&self, volume: &str, id: u128, path: &str, port: u16) -> Result<Running> {
        let p = PathBuf::from(path);
        let name = volume.to_string();
        let store = tokio::task::spawn_blocking(move || -> Result<brick::Store> {
            admit(&name, id, &p)?;
            Ok(brick::Store::open_dir(&p)?)
        })
        .await??;
        let addr = cluster::state::join_host_port(&self.address.to_string(), port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let server = brick::BrickServer::new(store, brick::ServerConfig::new(self.key.clone()));
        let (stop, shutdown) = watch::channel(false);
        let served = tokio::spawn(async move {
            if let Err(e) = server.serve(listener, shutdown).await {
                tracing::error!("brick server failed: {e}");
            }
        });
        Ok(Running { port, stop, served })
    }

    pub fn stop_all(&self) {
        for (_, r) in lock(&self.running).drain() {
            let _ = r.stop.send(true);
        }
    }

    /// `volume reset-brick`: takes brick `i` of `spec` in again after its disk was replaced.
    /// Its copies are told first that it is behind on everything (a marker on their root
    /// directory, which healing follows down the whole tree), so that no client reads the
    /// empty brick meanwhile; then it is stamped and served, and the volume's healers refill
    /// it. The directory must be empty unless `force`.
    pub async fn reset(&self, spec: VolumeSpec, i: usize, force: bool) -> Result<String, String> {
        let Some(b) = spec.bricks.get(i) else {
            return Err(format!("volume {} has no brick {i}", spec.name));
        };
        let port = port_of(&b.addr).ok_or_else(|| format!("brick address {} has no port", b.addr))?;
        let key: Key = (spec.name.clone(), b.path.clone());
        if !lock(&self.resetting).insert(key.clone()) {
            return Err("a reset of this brick is under way".into());
        }
        let r = self.take_in(&spec, i, port, &key, force).await;
        lock(&self.resetting).remove(&key);
        r
    }

    async fn take_in(
        &self,
        spec: &VolumeSpec,
        i: usize,
        port: u16,
        key: &Key,
        force: bool,
    ) -> Result<String, String> {
        let b = &spec.bricks[i];
        let path = Path::new(&b.path);
        match stamp::read(path) {
            Ok(Stamp::Volume(v)) if v != spec.id && !force => {
                return Err(format!(
                    "{} is stamped as a brick of another volume (id {v:032x}): add 'force' to take it anyway",
                    b.path
                ))
            }
            Ok(_) if !force && holds_data(path).map_err(|e| format!("{}: {e}", b.path))? => {
                return Err(format!(
                    "{} is not empty: a reset takes in an empty disk (add 'force' to keep what \
                     it holds: names its copies lack are removed and missing ones made, but \
                     files it has already are not compared with theirs)",
                    b.path
                ))
            }
            Ok(_) => {}
            Err(stamp::StampError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && force =>
            {
                std::fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", b.path))?;
            }
            Err(stamp::StampError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("{} does not exist (add 'force' to create it)", b.path))
            }
            Err(e) => return Err(e.to_string()),
        }
        // Whatever served this directory (or the disk it replaces) stops first.
        let old = lock(&self.running).remove(key);
        if let Some(old) = old {
            let _ = old.stop.send(true);
            if tokio::time::timeout(STOP_WAIT, old.served).await.is_err() {
                return Err("the brick's old server did not stop".into());
            }
        }
        lock(&self.refused).remove(key);
        let marked = self.mark_set_behind(spec, i).await?;
        stamp::write(path, spec.id).map_err(|e| e.to_string())?;
        let running = self
            .start(&spec.name, spec.id, &b.path, port)
            .await
            .map_err(|e| format!("{e:#}"))?;
        lock(&self.running).insert(key.clone(), running);
        tracing::info!(volume = %spec.name, path = %b.path, "brick reset: refilled from its copies");
        Ok(format!(
            "{} is served again and is refilled from {marked} of its copies in the background \
             (progress: `shoal volume heal {} info`)",
            b.label(),
            spec.name
        ))
    }

    /// Marks brick `i` of `spec` behind on the root directory of the other copies of its
    /// replica set (healing follows the marker down the tree). At least one must take it.
    pub async fn mark_set_behind(&self, spec: &VolumeSpec, i: usize) -> Result<usize, String> {
        let set = spec
            .replica_set(i)
            .ok_or_else(|| format!("volume {} has no brick {i}", spec.name))?;
        let child = i - set.start;
        let mut marked = 0;
        let mut errors = Vec::new();
        for j in set.filter(|j| *j != i) {
            match self.mark_behind(&spec.bricks[j].addr, child).await {
                Ok(()) => marked += 1,
                Err(e) => errors.push(format!("{}: {e}", spec.bricks[j].label())),
            }
        }
        if marked == 0 {
            return Err(format!(
                "no other copy of the brick answered, so nothing can refill it now ({})",
                errors.join("; ")
            ));
        }
        for e in &errors {
            tracing::warn!(volume = %spec.name, "a copy could not be marked to refill brick {i}: {e}");
        }
        Ok(marked)
    }

    /// Marks copy `child` of a replica set as behind on the root directory of the brick at
    /// `addr`.
    async fn mark_behind(&self, addr: &str, child: usize) -> Result<(), proto::Errno> {
        let conn = BrickConn::new(addr, self.key.clone(), "client", &self.client_name);
        let brick = client::protocol::Protocol::new(conn.clone());
        tokio::time::timeout(COPY_WAIT, conn.connect())
            .await
            .unwrap_or(Err(proto::Errno::ETIMEDOUT))?;
        let marker = client::replicate::pending_key(child);
        brick.xattr_add(proto::FileId::ROOT, &[(marker, 1)]).await
    }
}

impl DaemonBricks {
    /// May `path` become a brick (an `empty` one)? With `stamp`, it is stamped as a brick of
    /// that volume.
    pub fn check(&self, path: &str, force: bool, stamp: Option<u128>, empty: bool) -> Result<(), String> {
        let p = Path::new(path);
        match std::fs::metadata(p) {
            Ok(m) if !m.is_dir() => return Err("is not a directory".into()),
            Ok(m) if !force && is_mount_point(p, &m) => {
                return Err(
                    "is a mount point: use a directory under it as the brick, so that \
                     the disk not being mounted leaves no brick directory behind (add 'force' \
                     to use it anyway)"
                        .into(),
                )
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !force {
                    return Err("does not exist (add 'force' to create it)".into());
                }
                std::fs::create_dir_all(p).map_err(|e| format!("cannot create it: {e}"))?;
            }
            Err(e) => return Err(e.to_string()),
        }
        // A stamp alone is left by a volume create that did not go through.
        if stamp::holds_brick(p) && !force {
            return Err("already holds a shoal brick (add 'force' to reuse it)".into());
        }
        if empty && !force && holds_data(p).map_err(|e| e.to_string())? {
            return Err(
                "is not empty: a brick refilled from its copies goes into an empty \
                 directory (add 'force' to use it anyway: names its copies lack are removed)"
                    .into(),
            );
        }
        match stamp {
            Some(id) => stamp::write(p, id).map_err(|e| format!("cannot stamp it: {e}")),
            None => Ok(()),
        }
    }

    pub fn status(&self) -> Vec<BrickStatus> {
        let row = |(volume, path): &Key, port, online, problem| BrickStatus {
            volume: volume.clone(),
            path: path.clone(),
            port,
            online,
            pid: std::process::id(),
            problem,
        };
        let mut rows: Vec<BrickStatus> = lock(&self.running)
            .iter()
            .map(|(k, r)| row(k, r.port, !r.stop.is_closed() && !*r.stop.borrow(), None))
            .collect();
        rows.extend(
            lock(&self.refused)
                .iter()
                .map(|(k, (port, why))| row(k, *port, false, Some(why.clone()))),
        );
        rows.extend(
            lock(&self.resetting)
                .iter()
                .map(|k| row(k, 0, false, Some("being reset".into()))),
        );
        rows
    }
}
