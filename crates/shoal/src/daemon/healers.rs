//! Self-heal on the nodes: a node that serves a brick of a started replicated volume keeps a
//! client of that volume, whose replica sets heal in the background (`client::heal`), so
//! that copies are repaired even when no mount or gateway uses the volume.

use client::Volume;
use cluster::state::{ClusterState, VolumeState};
use layout::VolumeSpec;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::Mutex;

/// How long a new healer waits for each brick (the rest are reached in the background).
const CONNECT_WAIT: Duration = Duration::from_secs(2);

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

    pub async fn stop_all(&self) {
        self.running.lock().await.clear();
    }
}
