//! Building a volume's translator tree from its spec.

use crate::conn::BrickConn;
use crate::distribute::Distribute;
use crate::heal::Healer;
use crate::protocol::Protocol;
use crate::replicate::Replicate;
use crate::stripe::Stripe;
use crate::xlator::Child;
use layout::{Graph, VolumeSpec};
use proto::auth::ClusterKey;
use std::sync::Arc;
use std::time::Duration;

/// A mounted view of a volume: the root translator and the brick connections under it.
pub struct Volume {
    pub spec: VolumeSpec,
    pub root: Child,
    pub conns: Vec<Arc<BrickConn>>,
    /// The healers' own connections to the same bricks (none where nothing heals).
    heal_conns: Vec<Option<Arc<BrickConn>>>,
}

/// Something cached from the bricks that may no longer hold.
#[derive(Debug)]
pub enum Stale {
    /// Another client changed these (see [`proto::msg::Notice`]).
    Changed(Vec<proto::msg::Change>),
    /// Anything may have changed: a brick's connection was lost, or it stopped tracking us.
    All,
}

/// Receives what went stale, on the thread that read the brick's notice: keep it quick.
pub type StaleFn = Arc<dyn Fn(Stale) + Send + Sync>;

/// Why a volume could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("invalid volume spec: {0}")]
    Spec(#[from] layout::SpecError),
    #[error("no brick of volume {0} could be reached")]
    Unreachable(String),
}

impl Volume {
    /// Connects to the bricks of `spec` (waiting up to `wait` for each) and builds the tree.
    /// Bricks that are down are retried in the background; the volume is usable as soon as
    /// its layout can serve (e.g. a replica quorum).
    pub async fn connect(
        spec: VolumeSpec,
        key: ClusterKey,
        client_name: &str,
        wait: Duration,
    ) -> Result<Volume, VolumeError> {
        spec.validate()?;
        let conns: Vec<Arc<BrickConn>> = spec
            .bricks
            .iter()
            .map(|b| BrickConn::new(&b.addr, key.clone(), "client", client_name))
            .collect();
        // Built before connecting: the bricks' translators say what each new connection
        // sends first (a session, the locks to take back). Healing takes guards that must
        // not cover this client's own requests: it has connections of its own (made when
        // first needed).
        let heal_name = format!("{client_name}/heal");
        let heal_conns: Vec<Option<Arc<BrickConn>>> = match spec.replica > 1 {
            true => conns
                .iter()
                .map(|c| Some(BrickConn::new(&c.addr(), key.clone(), "client", &heal_name)))
                .collect(),
            false => conns.iter().map(|_| None).collect(),
        };
        let healer = |i: usize| heal_conns[i].clone().unwrap_or_else(|| conns[i].clone());
        let root = build(&spec.graph(), &conns, &healer, false);
        let results = futures_util::future::join_all(conns.iter().map(|c| {
            let c = c.clone();
            async move {
                tokio::time::timeout(wait, c.connect())
                    .await
                    .unwrap_or(Err(proto::Errno::ETIMEDOUT))
            }
        }))
        .await;
        for (b, r) in spec.bricks.iter().zip(&results) {
            if let Err(e) = r {
                tracing::warn!(brick = %b.label(), addr = %b.addr, "brick unreachable: {e}");
            }
        }
        if results.iter().all(Result::is_err) {
            return Err(VolumeError::Unreachable(spec.name.clone()));
        }
        Ok(Volume {
            spec,
            root,
            conns,
            heal_conns,
        })
    }

    /// Brick `i` is now served at `addr` (replaced on another server): its connections
    /// follow. Requests under way fail as if the old brick had died.
    pub fn move_brick(&self, i: usize, addr: &str) {
        for c in self
            .conns
            .get(i)
            .into_iter()
            .chain(self.heal_conns.get(i).into_iter().flatten())
        {
            c.move_to(addr);
        }
    }

    /// Has every brick's notices (and connection losses) reported to `f`.
    pub fn on_stale(&self, f: StaleFn) {
        for c in &self.conns {
            let f = f.clone();
            c.on_notice(Arc::new(move |frame| {
                let stale = match frame.map(|fr| fr.decode::<proto::msg::Notice>()) {
                    None => Stale::All,
                    Some(Ok(proto::msg::Notice::Changed(c))) => Stale::Changed(c),
                    Some(Ok(proto::msg::Notice::All)) => Stale::All,
                    // For the replica sets (see `build`).
                    Some(Ok(proto::msg::Notice::Yield(_))) => return,
                    Some(Err(e)) => {
                        tracing::warn!("undecodable notice: {e}");
                        Stale::All
                    }
                };
                f(stale);
            }));
        }
    }
}

fn build(
    g: &Graph,
    conns: &[Arc<BrickConn>],
    healer: &dyn Fn(usize) -> Arc<BrickConn>,
    in_distribute: bool,
) -> Child {
    let all = |c: &[Graph]| c.iter().map(|g| build(g, conns, healer, false)).collect();
    match g {
        Graph::Brick(i) => Arc::new(Protocol::new(conns[*i].clone())),
        Graph::Distribute(c) => Arc::new(Distribute::new(
            c.iter().map(|g| build(g, conns, healer, true)).collect(),
        )),
        Graph::Replicate(c) => {
            let healers = c
                .iter()
                .map(|g| match g {
                    Graph::Brick(i) => {
                        let conn = healer(*i);
                        Healer {
                            child: Arc::new(Protocol::new(conn.clone())),
                            conn: Some(conn),
                            main: Some(conns[*i].clone()),
                        }
                    }
                    // Copies are bricks in every layout there is; anything else is not
                    // healed (it answers ENOSYS).
                    _ => Healer {
                        child: build(g, conns, healer, false),
                        conn: None,
                        main: None,
                    },
                })
                .collect();
            let r = Replicate::new(all(c), healers, in_distribute);
            // Bricks tell a holder of a write order that another client waits for it.
            for (k, g) in c.iter().enumerate() {
                if let Graph::Brick(i) = g {
                    let w = Arc::downgrade(&r);
                    conns[*i].on_notice(Arc::new(move |frame| {
                        let notice = frame.map(|fr| fr.decode::<proto::msg::Notice>());
                        if let (Some(Ok(proto::msg::Notice::Yield(ids))), Some(r)) = (notice, w.upgrade()) {
                            r.yield_orders(k, ids);
                        }
                    }));
                }
            }
            r
        }
        Graph::Stripe { size, children } => Arc::new(Stripe::new(all(children), *size)),
    }
}
