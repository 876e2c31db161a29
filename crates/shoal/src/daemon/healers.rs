//! Self-heal on the nodes: a node that serves a brick of a started replicated volume keeps a
//! client of that volume, whose replica sets heal in the background (`client::heal`), so
//! that copies are repaired even when no mount or gateway uses the volume.

use client::Volume;
use cluster::state::{ClusterState, VolumeState};
use cluster::SplitBrainWork;
use layout::VolumeSpec;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::Mutex;

/// How long a new healer waits for each brick (the rest are reached in the background).
const CONNECT_WAIT: Duration = Duration::from_secs(2);
/// How long `split_brain` heals what it settled before leaving it to the volume's healers.
const SETTLE_HEAL_WAIT: Duration = Duration::from_secs(30);

pub struct DaemonHealers {
    key: proto::auth::ClusterKey,
    /// The client name the bricks see.
    name: String,
    running: Mutex<HashMap<String, (VolumeSpec, Volume)>>,
}

impl DaemonHealers {
    pub fn new(key: proto::auth::ClusterKey, node: &str) -> DaemonHealers {
        DaemonHealers {
            key,
            name: format!("heal@{node}"),
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps a healing client for exactly the started replicated volumes with a brick here
    /// (a new one when a volume's bricks moved).
    pub async fn reconcile(&self, state: &ClusterState, pnn: u64) {
        let desired: HashMap<&String, &VolumeSpec> = state
            .volumes
            .iter()
            .filter(|(_, v)| {
                v.state == VolumeState::Started && v.spec.replica > 1 && v.brick_nodes.contains(&pnn)
            })
            .map(|(name, v)| (name, &v.spec))
            .collect();
        let mut running = self.running.lock().await;
        running.retain(|name, (spec, _)| desired.get(name).is_some_and(|s| *s == spec));
        for (name, spec) in desired {
            if running.contains_key(name) {
                continue;
            }
            match Volume::connect(spec.clone(), self.key.clone(), &self.name, CONNECT_WAIT).await {
                Ok(v) => {
                    tracing::info!(volume = %name, "healing its replicas");
                    running.insert(name.clone(), (spec.clone(), v));
                }
                // Tried again at the next reconcile.
                Err(e) => tracing::debug!(volume = %name, "no healer yet: {e}"),
            }
        }
    }

    /// Split brains of `spec`: listed, or settled as `work` says (see `super::split_brain`),
    /// through this node's healer of the volume if it has one (which then carries what was
    /// settled over), else through a client made for this, which heals it (bounded).
    pub async fn split_brain(&self, spec: VolumeSpec, work: SplitBrainWork) -> Result<Vec<String>, String> {
        let settling = work != SplitBrainWork::List;
        // This node's healer of the volume if it has one, else a client made for this.
        let running = self.running.lock().await;
        let healer = running
            .get(&spec.name)
            .filter(|(s, _)| *s == spec)
            .map(|(_, v)| v.root.clone());
        drop(running);
        let (root, made) = match healer {
            Some(root) => (root, None),
            None => {
                let name = format!("{}/split-brain", self.name);
                let vol = Volume::connect(spec.clone(), self.key.clone(), &name, CONNECT_WAIT)
                    .await
                    .map_err(|e| e.to_string())?;
                (vol.root.clone(), Some(vol))
            }
        };
        let mut lines = super::split_brain::run(&root, &spec, work).await?;
        if !settling {
            return Ok(lines);
        }
        let background = "the heal carries the copies kept over in the background (volume heal NAME info shows what waits)";
        match made {
            None => {
                tokio::spawn(async move { root.heal().await });
                lines.push(background.into());
            }
            Some(_) => match tokio::time::timeout(SETTLE_HEAL_WAIT, root.heal()).await {
                Ok(Ok(r)) => lines.push(format!("healed {} objects", r.healed)),
                _ => lines.push(background.into()),
            },
        }
        Ok(lines)
    }

    pub async fn stop_all(&self) {
        self.running.lock().await.clear();
    }
}
