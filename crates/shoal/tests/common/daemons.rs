//! Node daemons as real processes on loopback addresses of their own (127.a.b.i, a fresh
//! /24 per test so that tests run side by side), talked to through the real CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    pub address: String,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub witness: bool,
    child: Option<Child>,
}

pub struct Daemons {
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
    pub port: u16,
    pub nodes: Vec<Daemon>,
}

/// A CLI run: exit status and both outputs.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

impl Daemons {
    /// Configures `n` nodes (the last `witnesses` of them witnesses); starts all but those
    /// marked to join later.
    pub fn new(n: usize) -> Daemons {
        let dir = tempfile::Builder::new()
            .prefix("shoal-cluster-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let key = dir.path().join("cluster.key");
        std::fs::write(&key, proto::auth::ClusterKey::generate().to_text()).expect("key");
        let (a, b): (u8, u8) = (rand::random::<u8>().max(1), rand::random());
        let port = 20000 + rand::random::<u16>() % 20000;
        let mut d = Daemons {
            dir,
            key,
            port,
            nodes: Vec::new(),
        };
        let addrs: Vec<String> = (1..=n).map(|i| format!("127.{a}.{b}.{i}")).collect();
        for (i, addr) in addrs.iter().enumerate() {
            d.nodes.push(d.configure(i, addr, &addrs, false, &d.key.clone()));
        }
        d
    }

    fn configure(&self, i: usize, addr: &str, founders: &[String], join: bool, key: &Path) -> Daemon {
        let home = self.dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&home).expect("node dir");
        let config = home.join("shoal.toml");
        let nodes: Vec<String> = founders.iter().map(|a| format!("\"{a}\"")).collect();
        let text = format!(
            "name = \"node{i}\"\naddress = \"{addr}\"\nstate_dir = \"{}\"\nkey = \"{}\"\nsocket = \"{}\"\ncluster_port = {}\nbrick_base_port = {}\nnodes = [{}]\njoin = {join}\n",
            home.join("state").display(),
            key.display(),
            home.join("shoal.sock").display(),
            self.port,
            self.port + 1000,
            nodes.join(", ")
        );
        std::fs::write(&config, text).expect("config");
        Daemon {
            address: addr.to_string(),
            socket: home.join("shoal.sock"),
            log: home.join("daemon.log"),
            config,
            witness: false,
            child: None,
        }
    }

    /// Adds a node that waits to be added with `shoal node add` (not started).
    pub fn add_joiner(&mut self) -> usize {
        let i = self.nodes.len();
        let prefix = self.nodes[0]
            .address
            .rsplit_once('.')
            .map(|(p, _)| p.to_string())
            .expect("address");
        let addr = format!("{prefix}.{}", i + 1);
        let founders: Vec<String> = Vec::new();
        let key = self.key.clone();
        let d = self.configure(i, &addr, &founders, true, &key);
        self.nodes.push(d);
        i
    }

    /// Gives node `i` a key of its own (an impostor).
    pub fn use_other_key(&mut self, i: usize) {
        let other = self.dir.path().join(format!("other-{i}.key"));
        std::fs::write(&other, proto::auth::ClusterKey::generate().to_text()).expect("key");
        let text = std::fs::read_to_string(&self.nodes[i].config).expect("config");
        let text = text.replace(
            &format!("key = \"{}\"", self.key.display()),
            &format!("key = \"{}\"", other.display()),
        );
        std::fs::write(&self.nodes[i].config, text).expect("config");
    }

    pub fn start(&mut self, i: usize) {
        let d = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&d.log)
            .expect("log");
        let mut cmd = Command::new(super::shoal_bin());
        cmd.arg("daemon").arg("--config").arg(&d.config);
        if d.witness {
            cmd.arg("--witness");
        }
        let child = cmd
            .env("SHOAL_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("daemon");
        d.child = Some(child);
        let socket = d.socket.clone();
        super::wait_for("the daemon's admin socket", Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
    }

    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
    }

    /// SIGKILL of one daemon.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Runs the CLI against node `i`.
    pub fn cli(&self, i: usize, args: &[&str]) -> Run {
        let out = Command::new(super::shoal_bin())
            .arg("--socket")
            .arg(&self.nodes[i].socket)
            .args(args)
            .output()
            .expect("run shoal");
        Run::from(out)
    }

    /// Runs the CLI and insists that it succeeds.
    pub fn ok(&self, i: usize, args: &[&str]) -> Run {
        let r = self.cli(i, args);
        assert!(
            r.ok,
            "shoal {args:?} on node {i} failed:\n{}{}",
            r.stdout, r.stderr
        );
        r
    }

    /// The leader as node `i` sees it.
    pub fn leader(&self, i: usize) -> Option<u64> {
        let r = self.cli(i, &["status", "--json"]);
        if !r.ok {
            return None;
        }
        r.json()["leader"].as_u64()
    }

    /// Waits until node `i` knows a leader that is not `not`.
    pub fn wait_leader(&self, i: usize, not: Option<u64>, timeout: Duration) -> (u64, Duration) {
        let t = Instant::now();
        loop {
            if let Some(l) = self.leader(i) {
                if Some(l) != not {
                    return (l, t.elapsed());
                }
            }
            if t.elapsed() > timeout {
                panic!("node {i} knows no new leader after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until node `i` sees a leader and `n` registered nodes.
    pub fn wait_ready(&self, i: usize, n: usize) {
        super::wait_for("the cluster to form", Duration::from_secs(20), || {
            let r = self.cli(i, &["status", "--json"]);
            r.ok && r.json()["leader"].is_u64() && r.json()["nodes"].as_array().map(Vec::len) == Some(n)
        });
    }

    /// A directory for a brick of node `i`.
    pub fn brick_dir(&self, i: usize, name: &str) -> String {
        let p = self.dir.path().join(format!("node{i}")).join("bricks").join(name);
        std::fs::create_dir_all(&p).expect("brick dir");
        p.display().to_string()
    }

    /// `node{i}:/path` for a brick.
    pub fn brick(&self, i: usize, name: &str) -> String {
        format!("node{i}:{}", self.brick_dir(i, name))
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("{}:{}", self.nodes[i].address, self.port)
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    pub fn volume_names(&self, i: usize) -> Vec<String> {
        let mut v: Vec<String> = self
            .ok(i, &["volume", "list", "--json"])
            .json()
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect();
        v.sort();
        v
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
