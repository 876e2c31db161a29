//! Volume specifications and the translator graph they describe.
//!
//! Brick order decides the groups, as GlusterFS users expect: consecutive bricks form a
//! replica set; consecutive replica sets (or bricks) form a stripe set; several such groups
//! are distributed over.

use serde::{Deserialize, Serialize};

/// Default stripe block size.
pub const DEFAULT_STRIPE_SIZE: u64 = 128 * 1024;
/// Version of the volume spec format.
pub const SPEC_VERSION: u32 = 1;

/// Where one brick lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BrickSpec {
    /// The node name (as in `NODE:/path`).
    pub node: String,
    /// Directory on that node.
    pub path: String,
    /// `host:port` where the brick is served.
    pub addr: String,
}

impl BrickSpec {
    /// `node:/path`, the form users type and see.
    pub fn label(&self) -> String {
        format!("{}:{}", self.node, self.path)
    }
}

/// A volume: its bricks and how they are grouped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub version: u32,
    pub name: String,
    /// Random id made at creation; part of NFS handles.
    pub id: u128,
    /// Bricks per stripe set (1: no striping).
    pub stripe: u32,
    /// Bricks per replica set (1: no replication).
    pub replica: u32,
    pub stripe_size: u64,
    pub bricks: Vec<BrickSpec>,
}

/// The named volume types, as `volume info` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeType {
    Distribute,
    Stripe,
    Replicate,
    StripedReplicate,
    DistributedStripe,
    DistributedReplicate,
    DistributedStripedReplicate,
}

impl std::fmt::Display for VolumeType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VolumeType::Distribute => "Distribute",
            VolumeType::Stripe => "Stripe",
            VolumeType::Replicate => "Replicate",
            VolumeType::StripedReplicate => "Striped-Replicate",
            VolumeType::DistributedStripe => "Distributed-Stripe",
            VolumeType::DistributedReplicate => "Distributed-Replicate",
            VolumeType::DistributedStripedReplicate => "Distributed-Striped-Replicate",
        })
    }
}

/// Why a spec is not a valid volume.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("volume name {0:?} is invalid: use 1-64 letters, digits, '-' or '_', starting with a letter")]
    BadName(String),
    #[error("a volume needs at least one brick")]
    NoBricks,
    #[error("{what} count must be at least 2, got {count}")]
    BadCount { what: &'static str, count: u32 },
    #[error("number of bricks ({bricks}) is not a multiple of {what} count ({count})")]
    NotMultiple {
        bricks: usize,
        what: &'static str,
        count: u32,
    },
    #[error("brick {0} is given more than once")]
    Duplicate(String),
    #[error("brick path {0:?} must be an absolute path")]
    BadPath(String),
    #[error("stripe size {0} must be a power of two between 4 KiB and 64 MiB")]
    BadStripeSize(u64),
    #[error("unsupported volume spec version {0}")]
    Version(u32),
}

/// A translator tree over brick indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Graph {
    Brick(usize),
    Distribute(Vec<Graph>),
    Stripe { size: u64, children: Vec<Graph> },
    Replicate(Vec<Graph>),
}

/// Checks a volume name: letters, digits, '-', '_', starting with a letter, at most 64.
pub fn check_volume_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadName(name.to_string()))
    }
}

impl VolumeSpec {
    /// Checks every rule a volume must satisfy.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.version != SPEC_VERSION {
            return Err(SpecError::Version(self.version));
        }
        check_volume_name(&self.name)?;
        if self.bricks.is_empty() {
            return Err(SpecError::NoBricks);
        }
        for (what, count) in [("stripe", self.stripe), ("replica", self.replica)] {
            if count == 0 {
                return Err(SpecError::BadCount { what, count });
            }
        }
        let group = (self.stripe * self.replica) as usize;
        if !self.bricks.len().is_multiple_of(group) {
            let (what, count) = if self.stripe > 1 && self.replica > 1 {
                ("stripe × replica", self.stripe * self.replica)
            } else if self.stripe > 1 {
                ("stripe", self.stripe)
            } else {
                ("replica", self.replica)
            };
            return Err(SpecError::NotMultiple {
                bricks: self.bricks.len(),
                what,
                count,
            });
        }
        if !self.stripe_size.is_power_of_two() || !(4096..=64 << 20).contains(&self.stripe_size) {
            return Err(SpecError::BadStripeSize(self.stripe_size));
        }
        let mut seen = std::collections::HashSet::new();
        for b in &self.bricks {
            if !b.path.starts_with('/') {
                return Err(SpecError::BadPath(b.path.clone()));
            }
            if !seen.insert((b.node.as_str(), b.path.trim_end_matches('/'))) {
                return Err(SpecError::Duplicate(b.label()));
            }
        }
        Ok(())
    }

    /// The named type of this volume.
    pub fn volume_type(&self) -> VolumeType {
        let groups = self.bricks.len() / (self.stripe * self.replica).max(1) as usize;
        match (groups > 1, self.stripe > 1, self.replica > 1) {
            (false, false, false) | (true, false, false) => VolumeType::Distribute,
            (false, true, false) => VolumeType::Stripe,
            (false, false, true) => VolumeType::Replicate,
            (false, true, true) => VolumeType::StripedReplicate,
            (true, true, false) => VolumeType::DistributedStripe,
            (true, false, true) => VolumeType::DistributedReplicate,
            (true, true, true) => VolumeType::DistributedStripedReplicate,
        }
    }

    /// "2 x 2 = 4" in the style of `gluster volume info`.
    pub fn brick_count_text(&self) -> String {
        let n = self.bricks.len();
        let group = (self.stripe * self.replica) as usize;
        if group == 1 {
            return n.to_string();
        }
        let inner = match (self.stripe > 1, self.replica > 1) {
            (true, true) => format!("{} x {}", self.stripe, self.replica),
            (true, false) => self.stripe.to_string(),
            _ => self.replica.to_string(),
        };
        format!("{} x {} = {}", n / group, inner, n)
    }

    /// The bricks of the replica set that brick `i` belongs to (in child order: brick `i` is
    /// child `i - start` of its set), if the volume has it.
    pub fn replica_set(&self, i: usize) -> Option<std::ops::Range<usize>> {
        if i >= self.bricks.len() {
            return None;
        }
        let r = self.replica.max(1) as usize;
        let start = i - i % r;
        Some(start..(start + r).min(self.bricks.len()))
    }

    /// The translator tree. Call [`VolumeSpec::validate`] first.
    pub fn graph(&self) -> Graph {
        let mut level: Vec<Graph> = (0..self.bricks.len()).map(Graph::Brick).collect();
        if self.replica > 1 {
            level = group(level, self.replica as usize, Graph::Replicate);
        }
        if self.stripe > 1 {
            let size = self.stripe_size;
            level = group(level, self.stripe as usize, |children| Graph::Stripe {
                size,
                children,
            });
        }
        if level.len() == 1 {
            level.pop().unwrap_or(Graph::Distribute(Vec::new()))
        } else {
            Graph::Distribute(level)
        }
    }
}

fn group(level: Vec<Graph>, size: usize, make: impl Fn(Vec<Graph>) -> Graph) -> Vec<Graph> {
    let mut out = Vec::new();
    let mut it = level.into_iter().peekable();
    while it.peek().is_some() {
        out.push(make(it.by_ref().take(size).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(stripe: u32, replica: u32, n: usize) -> VolumeSpec {
        VolumeSpec {
            version: SPEC_VERSION,
            name: "v".into(),
            id: 7,
            stripe,
            replica,
            stripe_size: DEFAULT_STRIPE_SIZE,
            bricks: (0..n)
                .map(|i| BrickSpec {
                    node: format!("n{i}"),
                    path: format!("/b{i}"),
                    addr: format!("127.0.0.1:{}", 5000 + i),
                })
                .collect(),
        }
    }

    #[test]
    fn replica_sets_are_the_graphs_replicate_nodes() {
        assert_eq!(spec(1, 2, 4).replica_set(3), Some(2..4));
        assert_eq!(spec(2, 3, 6).replica_set(4), Some(3..6));
        assert_eq!(spec(1, 1, 3).replica_set(1), Some(1..2));
        assert_eq!(spec(1, 2, 4).replica_set(4), None);
    }

    #[test]
    fn graphs_follow_brick_order() {
        use Graph::*;
        assert_eq!(
            spec(1, 1, 3).graph(),
            Distribute(vec![Brick(0), Brick(1), Brick(2)])
        );
        assert_eq!(spec(1, 1, 1).graph(), Brick(0));
        assert_eq!(spec(1, 2, 2).graph(), Replicate(vec![Brick(0), Brick(1)]));
        assert_eq!(
            spec(1, 2, 4).graph(),
            Distribute(vec![
                Replicate(vec![Brick(0), Brick(1)]),
                Replicate(vec![Brick(2), Brick(3)])
            ])
        );
        let s = DEFAULT_STRIPE_SIZE;
        assert_eq!(
            spec(2, 1, 4).graph(),
            Distribute(vec![
                Stripe {
                    size: s,
                    children: vec![Brick(0), Brick(1)]
                },
                Stripe {
                    size: s,
                    children: vec![Brick(2), Brick(3)]
                }
            ])
        );
        assert_eq!(
            spec(2, 2, 4).graph(),
            Stripe {
                size: s,
                children: vec![
                    Replicate(vec![Brick(0), Brick(1)]),
                    Replicate(vec![Brick(2), Brick(3)])
                ]
            }
        );
        assert_eq!(spec(2, 1, 4).volume_type(), VolumeType::DistributedStripe);
        assert_eq!(spec(1, 2, 4).brick_count_text(), "2 x 2 = 4");
        assert_eq!(spec(1, 3, 3).brick_count_text(), "1 x 3 = 3");
    }

    #[test]
    fn invalid_specs_are_refused() {
        assert!(spec(2, 1, 4).validate().is_ok());
        assert!(matches!(
            spec(2, 1, 3).validate(),
            Err(SpecError::NotMultiple { .. })
        ));
        assert!(matches!(
            spec(1, 3, 4).validate(),
            Err(SpecError::NotMultiple { .. })
        ));
        let mut s = spec(1, 1, 2);
        s.bricks[1] = s.bricks[0].clone();
        assert!(matches!(s.validate(), Err(SpecError::Duplicate(_))));
        let mut s = spec(1, 1, 2);
        s.name = "9bad".into();
        assert!(matches!(s.validate(), Err(SpecError::BadName(_))));
        let mut s = spec(2, 1, 2);
        s.stripe_size = 1000;
        assert!(matches!(s.validate(), Err(SpecError::BadStripeSize(1000))));
        assert!(matches!(spec(1, 1, 0).validate(), Err(SpecError::NoBricks)));
    }
}
