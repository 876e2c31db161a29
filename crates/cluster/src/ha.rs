//! High availability on top of the node: heartbeats and leases ([`crate::health`]), the
//! leader's placement of public addresses ([`crate::placement`]), node states, and the admin
//! commands about addresses, flags and tunables.

use crate::admin::{AdminResponse, IpRow, Target};
use crate::config::parse_public_addresses_file;
use crate::node::Node;
use crate::placement::{plan, View};
use crate::rpc::{NodeReply, NodeRequest};
use crate::state::PlaceChange;
use crate::state::{ClusterState, Command, Outcome, Placement, PublicAddr};
use crate::tunables;
use bytes::Bytes;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Heartbeat period and dead-after time, from the tunables.
pub(crate) fn timing(state: &ClusterState) -> (Duration, Duration) {
    let h = tunables::get(state, "HeartbeatIntervalMs").max(1) as u64;
    let n = tunables::get(state, "DeadAfterMissed").max(1) as u64;
    (Duration::from_millis(h), Duration::from_millis(h * n))
}

impl Node {
    pub(crate) fn voters(&self) -> BTreeSet<u64> {
        self.raft
            .get()
            .map(|r| {
                r.metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The node's health, hosted addresses and connections, as the daemon reports them.
    pub fn health(&self) -> &crate::health::Health {
        &self.health
    }

    /// This node's report, with the handovers it has done its part of.
    pub(crate) fn report(&self, state: &ClusterState, me: u64) -> crate::health::NodeReport {
        let mut r = self.health.report(me, state.revision);
        r.handed = state
            .placement
            .iter()
            .filter_map(|(ip, p)| match p {
                Placement::Handover { from, to } if *from == me => {
                    let since = state.placed_at.get(ip).copied().unwrap_or(0);
                    (r.held_at >= since && !r.hosted.contains(ip)).then_some((*ip, *to, since))
                }
                _ => None,
            })
            .collect();
        r
    }

    /// Every heartbeat period: a heartbeat to every member, and the lease renewed (or lost).
    pub(crate) async fn heartbeats(self: Arc<Self>) {
        loop {
            let state = self.state();
            let (period, dead_after) = timing(&state);
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.health.beat_now.notified() => {}
            }
            let state = self.state();
            let Some(me) = self.pnn() else { continue };
            let report = self.report(&state, me);
            for n in state.nodes.values().filter(|n| n.pnn != me) {
                let conn = self.peers.get(&n.endpoint());
                let (node, report, pnn) = (self.clone(), report.clone(), n.pnn);
                tokio::spawn(async move {
                    let req = NodeRequest::Heartbeat(report);
                    // The lease counts from here: the peer granted it no earlier than this.
                    let sent = std::time::Instant::now();
                    if let Ok(Ok((NodeReply::Heartbeat(r), _, _))) =
                        tokio::time::timeout(dead_after, conn.call(&req, Bytes::new())).await
                    {
                        if r.pnn == pnn {
                            node.health.on_ack(pnn, r, sent);
                        }
                    }
                });
            }
            let had = self.health.has_lease();
            let has = self.health.renew_lease(me, &self.voters(), dead_after);
            if had != has {
                if has {
                    tracing::info!("address lease granted by a quorum");
                } else {
                    tracing::warn!("address lease lost: no quorum answers; dropping public addresses");
                }
            }
        }
    }

    /// The leader's duty: every heartbeat period, place the public addresses.
    pub(crate) async fn placement_loop(self: Arc<Self>) {
        let mut leader_since: Option<std::time::Instant> = None;
        loop {
            let state = self.state();
            let (period, dead_after) = timing(&state);
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.health.replan.notified() => {}
            }
            let state = self.state();
            let Some(me) = self.pnn() else { continue };
            let Some(raft) = self.raft.get() else { continue };
            if !raft.metrics().borrow().state.is_leader() {
                leader_since = None;
                continue;
            }
            let since = *leader_since.get_or_insert_with(std::time::Instant::now);
            if state.public_addresses.is_empty() {
                continue;
            }
            let view = self.view(&state, me);
            // Until every node that could host has reported (or for one dead-after time).
            let waiting = state
                .nodes
                .values()
                .filter(|n| !n.witness)
                .any(|n| !view.reports.get(&n.pnn).is_some_and(|r| r.lease));
            let view = View {
                hold_unplaced: waiting && since.elapsed() < dead_after * 2,
                ..view
            };
            let mut plan = plan(&state, &view);
            if !plan.fence.is_empty() {
                for pnn in plan.fence {
                    tracing::warn!(pnn, "node silent: fencing it");
                    if let Err(e) = self.propose(Command::Fence { pnn }).await {
                        tracing::warn!("cannot commit a fence: {e}");
                    }
                }
                continue;
            }
            self.apply_pins(&plan.eligible, &mut plan.changes);
            if plan.changes.is_empty() {
                continue;
            }
            tracing::info!(changes = ?plan.changes, "placing public addresses");
            if let Err(e) = self
                .propose(Command::Place {
                    changes: plan.changes,
                })
                .await
            {
                tracing::warn!("cannot commit address placement: {e}");
            }
        }
    }

    /// What the leader knows of the nodes now, for placement.
    fn view(&self, state: &ClusterState, me: u64) -> View {
        let (period, dead_after) = timing(state);
        let voters = self.voters();
        let fresh = dead_after * 2;
        let mut reports = self.health.reports(fresh);
        let mut own = self.report(state, me);
        own.conns = None;
        reports.insert(me, own);
        // Members, and nodes fenced on their way out (they may still hold something).
        let known: BTreeSet<u64> = state.nodes.keys().chain(state.fences.keys()).copied().collect();
        let alive: BTreeSet<u64> = known
            .iter()
            .copied()
            .filter(|p| *p == me || self.health.alive(*p, dead_after))
            .collect();
        // The silent node checks its lease every time it could change; the margin covers
        // the release itself.
        let margin = period * 2;
        let expired: BTreeSet<u64> = state
            .fences
            .iter()
            .filter(|(p, _)| !alive.contains(p))
            .filter(|(p, fence)| {
                self.health
                    .silence_confirmed(me, **p, &voters, dead_after + margin, fresh, **fence)
            })
            .map(|(p, _)| *p)
            .collect();
        // Silent members not fenced since they were last seen caught up.
        let unfenced = state
            .nodes
            .values()
            .filter(|n| !n.witness && !alive.contains(&n.pnn))
            .filter(|n| match state.fences.get(&n.pnn) {
                None => true,
                Some(f) => self.health.last_report(n.pnn).is_some_and(|r| r.held_at >= *f),
            })
            .map(|n| n.pnn)
            .collect();
        View {
            me,
            now_unix: now_unix(),
            alive,
            expired,
            unfenced,
            reports,
            failback: tunables::get(state, "NoIPFailback") == 0,
            hold_unplaced: false,
            sticky: self.sticky(state),
        }
    }

    /// Addresses `moveip` put where they are: rebalancing leaves them there. A wish lasts
    /// until its address is placed elsewhere for another reason (its node failed, say).
    fn sticky(&self, state: &ClusterState) -> BTreeSet<IpAddr> {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        pins.retain(|ip, pnn| match state.placement.get(ip) {
            Some(Placement::Host(h)) => h == pnn,
            Some(Placement::Handover { to, .. }) => to == pnn,
            _ => false,
        });
        pins.iter()
            .filter(|(ip, pnn)| state.placement.get(ip) == Some(&Placement::Host(**pnn)))
            .map(|(ip, _)| *ip)
            .collect()
    }

    /// `moveip` wishes: an address being released goes to the node asked for (when it may
    /// host it).
    fn apply_pins(&self, eligible: &BTreeSet<u64>, changes: &mut [PlaceChange]) {
        let pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        for c in changes.iter_mut() {
            let Some(&want) = pins.get(&c.ip) else { continue };
            if !eligible.contains(&want) {
                continue;
            }
            c.to = match c.to {
                Some(Placement::Host(_)) => Some(Placement::Host(want)),
                Some(Placement::Handover { from, .. }) if from != want => {
                    Some(Placement::Handover { from, to: want })
                }
                other => other,
            };
        }
    }

    /// Leader side of `moveip`: a handover of the address to `pnn`, which then stays there
    /// (rebalancing moves other addresses instead).
    pub(crate) async fn move_ip(self: &Arc<Self>, ip: IpAddr, pnn: u64) -> Result<String, String> {
        // An address in flight finishes its move first (changing its target midway could
        // double it): wait for that, within the commit deadline.
        let settled = |s: &ClusterState| {
            !matches!(
                s.placement.get(&ip),
                Some(Placement::Handover { .. } | Placement::Releasing(_) | Placement::Fenced(_))
            )
        };
        if let Some(mut rx) = self.watch_state() {
            let _ = tokio::time::timeout(crate::node::COMMIT_DEADLINE, rx.wait_for(|s| settled(s))).await;
        }
        let state = self.state();
        if !state.public_addresses.contains_key(&ip) {
            return Err(format!("{ip} is not a public address of this cluster"));
        }
        let node = state
            .nodes
            .get(&pnn)
            .ok_or_else(|| format!("no node with pnn {pnn}"))?;
        if node.witness {
            return Err(format!("node {pnn} is a witness and hosts no addresses"));
        }
        let me = self.pnn().ok_or("not a member")?;
        // Eligibility comes from the nodes' latest reports; give a report in flight (a lease
        // just renewed, a monitor just passed) a moment before refusing.
        let (period, dead_after) = timing(&state);
        let deadline = std::time::Instant::now() + dead_after;
        let state = loop {
            let state = self.state();
            let eligible = crate::placement::eligible(&state, &self.view(&state, me));
            if eligible.iter().any(|h| h.pnn == pnn) {
                break state;
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "node {pnn} cannot host addresses now ({})",
                    self.node_state(&state, pnn)
                ));
            }
            tokio::time::sleep(period / 2).await;
        };
        let now = state.placement.get(&ip).copied();
        let to = match now {
            Some(Placement::Host(h)) if h == pnn => {
                // Asked for where it is: it stays there from now on, as if moved.
                self.pins
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(ip, pnn);
                return Ok(format!("{ip} is already on node {pnn}"));
            }
            Some(Placement::Host(h)) => Placement::Handover { from: h, to: pnn },
            None => Placement::Host(pnn),
            Some(other) => return Err(format!("{ip} is moving already ({other:?}); try again")),
        };
        let change = PlaceChange {
            ip,
            from: now,
            to: Some(to),
        };
        match self
            .propose(Command::Place {
                changes: vec![change],
            })
            .await?
        {
            Outcome::Done => {
                // Pinned once placed: a pin made before would be dropped by a placement round
                // that still sees the old host (`sticky`), and the next rebalance could move
                // the address straight back. (A proposal that errs at its deadline and commits
                // later leaves the address unpinned, as if rebalanced there.)
                self.pins
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(ip, pnn);
                Ok(format!("moving {ip} to node {pnn}"))
            }
            Outcome::Refused(why) => Err(why),
        }
    }

    /// The addresses this node should hold now (placed here, and only with a lease), and the
    /// revision of the state that says so.
    pub fn desired_addresses(&self) -> (u64, Vec<(IpAddr, PublicAddr)>) {
        let state = self.state();
        let Some(me) = self.pnn() else {
            return (state.revision, Vec::new());
        };
        let caught_up = self.caught_up.load(std::sync::atomic::Ordering::SeqCst);
        if self.config().witness || !caught_up || !self.health.has_lease() {
            return (state.revision, Vec::new());
        }
        let (_, dead_after) = timing(&state);
        let reports = self.health.reports(dead_after);
        // A handover is taken the moment the old host reports, at a revision that includes
        // it, that the address is gone; or, before this node has applied the handover itself,
        // on the old host's word that it released the address for this node.
        let handed = |ip: &IpAddr, from: u64| {
            let since = state.placed_at.get(ip).copied().unwrap_or(0);
            reports
                .get(&from)
                .is_some_and(|r| r.held_at >= since && !r.hosted.contains(ip))
        };
        let ahead: BTreeSet<IpAddr> = reports
            .values()
            .flat_map(|r| r.handed.iter())
            .filter(|(_, to, since)| *to == me && state.revision < *since)
            .map(|(ip, _, _)| *ip)
            .collect();
        let list = state
            .placement
            .iter()
            .filter(|(ip, p)| match p {
                Placement::Host(h) => *h == me,
                Placement::Handover { from, to } => *to == me && handed(ip, *from),
                _ => ahead.contains(ip),
            })
            .filter_map(|(ip, _)| state.public_addresses.get(ip).map(|a| (*ip, a.clone())))
            .collect();
        (state.revision, list)
    }

    /// A node's state as CTDB users know it.
    pub(crate) fn node_state(&self, state: &ClusterState, pnn: u64) -> String {
        let (_, dead_after) = timing(state);
        let me = self.pnn() == Some(pnn);
        let mut flags: Vec<&str> = Vec::new();
        let connected = me || self.health.alive(pnn, dead_after);
        if !connected {
            flags.push("DISCONNECTED");
        }
        let f = state.flags.get(&pnn).copied().unwrap_or_default();
        if f.banned(now_unix()) {
            flags.push("BANNED");
        }
        if f.stopped {
            flags.push("STOPPED");
        }
        if f.disabled {
            flags.push("DISABLED");
        }
        let healthy = if me {
            self.health.healthy()
        } else {
            self.health
                .peer_report(pnn, dead_after * 2)
                .is_none_or(|r| r.healthy)
        };
        if connected && !healthy {
            flags.push("UNHEALTHY");
        }
        if !connected || f.banned(now_unix()) || f.stopped {
            flags.push("INACTIVE");
        }
        if flags.is_empty() {
            "OK".into()
        } else {
            flags.join("|")
        }
    }

    /// Proposes this node's public_addresses file (at start and on `reloadips`).
    pub async fn sync_public_addresses(&self) -> Result<usize, String> {
        let Some(pnn) = self.pnn() else {
            return Err("not a member yet".into());
        };
        let Some(file) = self.config().public_addresses_file.clone() else {
            return Ok(0);
        };
        let list = parse_public_addresses_file(&file).map_err(|e| e.to_string())?;
        let n = list.len();
        let cmd = Command::SyncPublicAddresses {
            pnn,
            list: list
                .into_iter()
                .map(|p| (p.addr, p.prefix, p.interfaces))
                .collect(),
        };
        match self.propose(cmd).await? {
            Outcome::Done => Ok(n),
            Outcome::Refused(why) => Err(why),
        }
    }

    /// Tunables this node's configuration sets and the cluster has no value for yet.
    pub(crate) async fn seed_tunables(&self, state: &ClusterState) -> Result<(), String> {
        for (name, value) in &self.config().tunables {
            if state.tunables.contains_key(name) {
                continue;
            }
            let cmd = Command::SetTunable {
                name: name.clone(),
                value: *value,
            };
            if let Outcome::Refused(why) = self.propose(cmd).await? {
                return Err(why);
            }
            tracing::info!(%name, value, "tunable set from the configuration");
        }
        Ok(())
    }

    // ---- admin ------------------------------------------------------------------------

    pub(crate) async fn admin_ip(self: &Arc<Self>, target: Target) -> AdminResponse {
        self.read_barrier().await;
        let state = self.state();
        let rows = state
            .public_addresses
            .iter()
            .map(|(ip, a)| {
                let place = state.placement.get(ip).copied();
                let (pnn, releasing) = match place {
                    Some(Placement::Host(p)) => (Some(p), false),
                    Some(p) => (Some(p.node()), true),
                    None => (None, false),
                };
                IpRow {
                    ip: *ip,
                    prefix: a.prefix,
                    pnn,
                    releasing,
                    interfaces: a.interfaces.clone(),
                }
            })
            .filter(|r: &IpRow| match target {
                Target::Pnn(p) => r.pnn == Some(p),
                Target::All | Target::This => true,
            })
            .collect();
        AdminResponse::Ips(rows)
    }

    pub(crate) async fn admin_flags(
        self: &Arc<Self>,
        target: Target,
        disabled: Option<bool>,
        stopped: Option<bool>,
        ban: Option<crate::admin::BanChange>,
    ) -> AdminResponse {
        let mut done = Vec::new();
        for pnn in self.targets(target) {
            let banned_until = ban.map(|b| match b {
                crate::admin::BanChange::For { seconds } => Some(now_unix().saturating_add(seconds)),
                crate::admin::BanChange::Lift => None,
            });
            let cmd = Command::SetFlags {
                pnn,
                disabled,
                stopped,
                banned_until,
            };
            match self.commit(cmd, String::new()).await {
                AdminResponse::Done(_) => done.push(pnn.to_string()),
                other => return other,
            }
        }
        AdminResponse::Done(format!("nodes {} updated", done.join(", ")))
    }

    pub(crate) async fn admin_addip(
        self: &Arc<Self>,
        ip: IpAddr,
        prefix: u8,
        interfaces: Vec<String>,
    ) -> AdminResponse {
        // Refuse an address some machine of the cluster already has (and we do not host).
        self.read_barrier().await;
        if self.state().placement.contains_key(&ip) || self.state().public_addresses.contains_key(&ip) {
            return AdminResponse::Error(format!("public address {ip} is already configured"));
        }
        self.commit(
            Command::AddPublicAddress {
                ip,
                prefix,
                interfaces,
                source: None,
            },
            format!("addip: {ip}: success"),
        )
        .await
    }

    pub(crate) async fn admin_scripts(self: &Arc<Self>, target: Target) -> AdminResponse {
        let mut out = Vec::new();
        for pnn in self.targets(target) {
            let r = if Some(pnn) == self.pnn() {
                Ok(self.host.script_status())
            } else {
                match self.ask(pnn, NodeRequest::ScriptStatus).await {
                    Ok(NodeReply::Scripts(s)) => Ok(s),
                    Ok(other) => Err(format!("unexpected reply {other:?}")),
                    Err(e) => Err(e),
                }
            };
            out.push((pnn, r));
        }
        AdminResponse::Scripts(out)
    }

    pub(crate) async fn admin_gratarp(self: &Arc<Self>, ip: IpAddr) -> AdminResponse {
        let state = self.state();
        let Some(Placement::Host(pnn)) = state.placement.get(&ip).copied() else {
            return AdminResponse::Error(format!("{ip} is not hosted anywhere now"));
        };
        let r = if Some(pnn) == self.pnn() {
            self.host.announce(ip)
        } else {
            match self.ask(pnn, NodeRequest::Announce { ip }).await {
                Ok(NodeReply::Checked(r)) => r,
                Ok(other) => Err(format!("unexpected reply {other:?}")),
                Err(e) => Err(e),
            }
        };
        match r {
            Ok(()) => AdminResponse::Done(format!("gratarp: {ip} announced by node {pnn}")),
            Err(e) => AdminResponse::Error(e),
        }
    }

    pub(crate) fn admin_vars(&self, name: Option<&str>) -> AdminResponse {
        let state = self.state();
        match name {
            Some(n) => match tunables::find(n) {
                Some(t) => AdminResponse::Vars(vec![(t.name.to_string(), tunables::get(&state, t.name))]),
                None => AdminResponse::Error(format!("no tunable {n} (see listvars)")),
            },
            None => AdminResponse::Vars(
                tunables::TUNABLES
                    .iter()
                    .map(|t| (t.name.to_string(), tunables::get(&state, t.name)))
                    .collect(),
            ),
        }
    }
}
