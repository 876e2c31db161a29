//! A node's configuration file, and the CTDB-format `nodes` and `public_addresses` files it
//! may point to.
//!
//! ```toml
//! name = "server1"                 # this node (default: the host name)
//! address = "10.0.0.1"             # private address: cluster traffic, bricks
//! state_dir = "/var/lib/shoal"
//! key = "/etc/shoal/cluster.key"
//! nodes = ["10.0.0.1", "10.0.0.2"] # or nodes_file = "/etc/shoal/nodes"
//! public_addresses_file = "/etc/shoal/public_addresses"
//! ```

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Default port for cluster traffic (Raft, control, volume specs). Not glusterd's 24007, so
/// that both can run side by side during a migration.
pub const DEFAULT_CLUSTER_PORT: u16 = 7780;
/// First port handed to bricks: below the kernel's ephemeral range (32768 and up), so that a
/// brick's port is never taken by an outgoing connection, and clear of GlusterFS's bricks.
pub const DEFAULT_BRICK_BASE_PORT: u16 = 7800;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path} line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("configuration: {0}")]
    Invalid(String),
}

fn default_state_dir() -> PathBuf {
    "/var/lib/shoal".into()
}
fn default_key() -> PathBuf {
    "/etc/shoal/cluster.key".into()
}
fn default_socket() -> PathBuf {
    "/run/shoal/shoal.sock".into()
}
fn default_event_dir() -> PathBuf {
    "/etc/shoal/events.d".into()
}
fn default_cluster_port() -> u16 {
    DEFAULT_CLUSTER_PORT
}
fn default_brick_port() -> u16 {
    DEFAULT_BRICK_BASE_PORT
}

/// The configuration file as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's name; defaults to the host name.
    #[serde(default)]
    pub name: Option<String>,
    /// This node's private address.
    pub address: IpAddr,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_key")]
    pub key: PathBuf,
    /// The admin socket the CLI talks to.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    #[serde(default = "default_cluster_port")]
    pub cluster_port: u16,
    #[serde(default = "default_brick_port")]
    pub brick_base_port: u16,
    /// Private addresses of the cluster's first members, in PNN order.
    #[serde(default)]
    pub nodes: Vec<IpAddr>,
    /// The same as a CTDB-style file: one address per line.
    #[serde(default)]
    pub nodes_file: Option<PathBuf>,
    /// CTDB-style public addresses file: `ADDR/PREFIX IFACE[,IFACE]` per line.
    #[serde(default)]
    pub public_addresses_file: Option<PathBuf>,
    /// Event scripts (CTDB style), run in name order.
    #[serde(default = "default_event_dir")]
    pub event_dir: PathBuf,
    /// A voter that holds no bricks and hosts no addresses.
    #[serde(default)]
    pub witness: bool,
    /// Wait to be added with `shoal node add` instead of forming a cluster.
    #[serde(default)]
    pub join: bool,
    /// Tunables by their `shoal listvars` names: seeded into the replicated configuration
    /// when the cluster has no value yet (`shoal setvar` changes them later, cluster-wide).
    #[serde(default)]
    pub tunables: std::collections::BTreeMap<String, i64>,
}

/// A public address line.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicAddress {
    pub addr: IpAddr,
    pub prefix: u8,
    pub interfaces: Vec<String>,
}

impl NodeConfig {
    /// Reads and checks a configuration file (and the files it names).
    pub fn load(path: &Path) -> Result<(NodeConfig, Vec<PublicAddress>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.into(),
            source,
        })?;
        let mut cfg: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        if let Some(f) = &cfg.nodes_file {
            if !cfg.nodes.is_empty() {
                return Err(ConfigError::Invalid(
                    "give either nodes or nodes_file, not both".into(),
                ));
            }
            cfg.nodes = parse_nodes_file(f)?;
        }
        let publics = match &cfg.public_addresses_file {
            Some(f) => parse_public_addresses_file(f)?,
            None => Vec::new(),
        };
        cfg.check()?;
        Ok((cfg, publics))
    }

    fn check(&self) -> Result<(), ConfigError> {
        let name = self.node_name();
        if !valid_node_name(&name) {
            return Err(ConfigError::Invalid(format!(
                "node name {name:?} is invalid: use letters, digits, '-' and '.', at most 63"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for a in &self.nodes {
            if !seen.insert(a) {
                return Err(ConfigError::Invalid(format!("node address {a} is listed twice")));
            }
        }
        if !self.join && !self.nodes.is_empty() && !self.nodes.contains(&self.address) {
            return Err(ConfigError::Invalid(format!(
                "this node's address {} is not in the node list (set join = true to be added later)",
                self.address
            )));
        }
        for (name, value) in &self.tunables {
            let t = crate::tunables::find(name).ok_or_else(|| {
                ConfigError::Invalid(format!("unknown tunable {name} (shoal listvars lists them)"))
            })?;
            if t.name != name {
                return Err(ConfigError::Invalid(format!(
                    "tunable {name} is spelled {}",
                    t.name
                )));
            }
            if !(t.min..=t.max).contains(value) {
                return Err(ConfigError::Invalid(format!(
                    "tunable {name} = {value} is out of range {}..={}",
                    t.min, t.max
                )));
            }
        }
        Ok(())
    }

    /// The node's name: as configured, or the host name.
    pub fn node_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| rustix::system::uname().nodename().to_string_lossy().into_owned())
    }
}

/// Node names as they appear in `NODE:/path`: DNS-label-like.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !name.starts_with('-')
}

fn lines(path: &Path) -> Result<Vec<(usize, String)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.into(),
        source,
    })?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.split('#').next().unwrap_or("").trim().to_string()))
        .filter(|(_, l)| !l.is_empty())
        .collect())
}

/// CTDB's `nodes` file: one private address per line; `#` starts a comment.
pub fn parse_nodes_file(path: &Path) -> Result<Vec<IpAddr>, ConfigError> {
    let mut out = Vec::new();
    for (line, text) in lines(path)? {
        // CTDB marks deleted nodes with a leading '#', already stripped as a comment.
        let addr = text.parse().map_err(|_| ConfigError::Line {
            path: path.into(),
            line,
            message: format!("{text:?} is not an IP address"),
        })?;
        out.push(addr);
    }
    Ok(out)
}

/// One line of CTDB's `public_addresses`: `ADDR/PREFIX IFACE[,IFACE]`.
pub fn parse_public_address(text: &str) -> Result<PublicAddress, String> {
    let mut parts = text.split_whitespace();
    let cidr = parts.next().ok_or("empty line")?;
    let (addr, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} lacks /PREFIX"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("{prefix:?} is not a prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix == 0 || prefix > max {
        return Err(format!("prefix /{prefix} is out of range for {addr}"));
    }
    let ifaces = parts
        .next()
        .ok_or_else(|| format!("{cidr}: no interface given"))?;
    if let Some(extra) = parts.next() {
        return Err(format!("unexpected {extra:?} after the interface list"));
    }
    let interfaces: Vec<String> = ifaces.split(',').map(str::to_string).collect();
    for i in &interfaces {
        if i.is_empty() || i.len() > 15 || i.contains('/') || i.contains(char::is_whitespace) {
            return Err(format!("{i:?} is not an interface name"));
        }
    }
    Ok(PublicAddress {
        addr,
        prefix,
        interfaces,
    })
}

pub fn parse_public_addresses_file(path: &Path) -> Result<Vec<PublicAddress>, ConfigError> {
    let mut out: Vec<PublicAddress> = Vec::new();
    for (line, text) in lines(path)? {
        let pa = parse_public_address(&text).map_err(|message| ConfigError::Line {
            path: path.into(),
            line,
            message,
        })?;
        if out.iter().any(|p| p.addr == pa.addr) {
            return Err(ConfigError::Line {
                path: path.into(),
                line,
                message: format!("{} is listed twice", pa.addr),
            });
        }
        out.push(pa);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn ctdb_files_are_read_as_is() {
        let d = tempfile::tempdir().unwrap();
        let nodes = write(
            d.path(),
            "nodes",
            "10.0.0.1\n# retired\n10.0.0.2   # second\n\n10.0.0.3\n",
        );
        assert_eq!(parse_nodes_file(&nodes).unwrap().len(), 3);
        let pubs = write(
            d.path(),
            "pa",
            "10.1.0.100/24 eth1\n10.1.0.101/24 eth1,eth2\nfd00::10/64 eth1\n",
        );
        let p = parse_public_addresses_file(&pubs).unwrap();
        assert_eq!(p[1].interfaces, vec!["eth1", "eth2"]);
        assert_eq!(p[2].prefix, 64);
    }

    #[test]
    fn bad_lines_say_where() {
        let d = tempfile::tempdir().unwrap();
        let nodes = write(d.path(), "nodes", "10.0.0.1\nnot-an-ip\n");
        let e = parse_nodes_file(&nodes).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        for bad in [
            "10.1.0.1 eth0",
            "10.1.0.1/33 eth0",
            "10.1.0.1/24",
            "10.1.0.1/24 eth0 extra",
            "x/24 eth0",
        ] {
            assert!(parse_public_address(bad).is_err(), "{bad}");
        }
        let dup = write(d.path(), "pa", "10.1.0.1/24 eth0\n10.1.0.1/24 eth1\n");
        assert!(parse_public_addresses_file(&dup)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn config_is_checked() {
        let d = tempfile::tempdir().unwrap();
        let ok = write(
            d.path(),
            "a.toml",
            "name = \"n1\"\naddress = \"10.0.0.1\"\nnodes = [\"10.0.0.1\", \"10.0.0.2\"]\n",
        );
        let (c, _) = NodeConfig::load(&ok).unwrap();
        assert_eq!(c.cluster_port, DEFAULT_CLUSTER_PORT);
        let stranger = write(
            d.path(),
            "b.toml",
            "name = \"n9\"\naddress = \"10.0.0.9\"\nnodes = [\"10.0.0.1\"]\n",
        );
        assert!(NodeConfig::load(&stranger).is_err());
        let typo = write(
            d.path(),
            "c.toml",
            "name = \"n1\"\naddress = \"10.0.0.1\"\nnodez = []\n",
        );
        assert!(NodeConfig::load(&typo).unwrap_err().to_string().contains("nodez"));
        let badname = write(
            d.path(),
            "d.toml",
            "name = \"bad name\"\naddress = \"10.0.0.1\"\n",
        );
        assert!(NodeConfig::load(&badname).is_err());
    }

    #[test]
    fn tunables_are_checked_by_name_and_range() {
        let d = tempfile::tempdir().unwrap();
        let base = "address = \"10.0.0.1\"\n[tunables]\n";
        let load =
            |name: &str, extra: &str| NodeConfig::load(&write(d.path(), name, &format!("{base}{extra}")));
        let (c, _) = load("ok.toml", "HeartbeatIntervalMs = 50\nNoIPFailback = 1\n").unwrap();
        assert_eq!(c.tunables["HeartbeatIntervalMs"], 50);
        let e = load("unknown.toml", "HeartbeatMs = 50\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown tunable HeartbeatMs"), "{e}");
        let e = load("range.toml", "NoIPFailback = 2\n").unwrap_err().to_string();
        assert!(e.contains("out of range"), "{e}");
        let e = load("case.toml", "noipfailback = 1\n").unwrap_err().to_string();
        assert!(e.contains("spelled NoIPFailback"), "{e}");
    }
}
