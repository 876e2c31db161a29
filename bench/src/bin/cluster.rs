//! Control-plane benchmark: how fast a cluster comes up, elects a new leader, creates
//! volumes, and what an idle node costs, on this machine.
//!
//! - `shoal sandbox up` (3 nodes) until the volume is mounted and writable;
//! - leader failover: SIGKILL of the leader until another node names a new one;
//! - `shoal volume create` round trips;
//! - 16 node daemons: start to a converged cluster, and each idle daemon's RSS.
//!
//! Medians (and worst) of several trials; targets are printed beside each figure.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use shoal_bench::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "shoal control-plane benchmark")]
struct Args {
    /// Trials per measure.
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// Nodes in the scale run.
    #[arg(long, default_value_t = 16)]
    scale_nodes: usize,
    #[arg(long, default_value = "/var/tmp/shoal-bench-cluster")]
    dir: PathBuf,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn stats(v: &[f64]) -> (f64, f64) {
    (median(v.to_vec()), v.iter().cloned().fold(0.0, f64::max))
}

/// Node daemons on loopback addresses 127.a.b.i.
struct Nodes {
    shoal: PathBuf,
    dir: PathBuf,
    addrs: Vec<String>,
    procs: Vec<Option<Child>>,
}

impl Nodes {
    fn new(shoal: &Path, dir: &Path, n: usize) -> Result<Nodes> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let key = dir.join("cluster.key");
        std::fs::write(&key, proto::auth::ClusterKey::generate().to_text())?;
        let (a, b) = (rand::random::<u8>().max(1), rand::random::<u8>());
        let addrs: Vec<String> = (1..=n).map(|i| format!("127.{a}.{b}.{i}")).collect();
        let list: Vec<String> = addrs.iter().map(|x| format!("\"{x}\"")).collect();
        for (i, addr) in addrs.iter().enumerate() {
            let home = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&home)?;
            std::fs::write(
                home.join("shoal.toml"),
                format!(
                    "name = \"node{i}\"\naddress = \"{addr}\"\nstate_dir = \"{}\"\nkey = \"{}\"\nsocket = \"{}\"\nnodes = [{}]\n",
                    home.join("state").display(),
                    key.display(),
                    home.join("shoal.sock").display(),
                    list.join(", ")
                ),
            )?;
        }
        Ok(Nodes {
            shoal: shoal.into(),
            dir: dir.into(),
            addrs,
            procs: (0..n).map(|_| None).collect(),
        })
    }

    fn start(&mut self, i: usize) -> Result<()> {
        let home = self.dir.join(format!("node{i}"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.join("daemon.log"))?;
        let c = Command::new(&self.shoal)
            .arg("daemon")
            .arg("--config")
            .arg(home.join("shoal.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.procs[i] = Some(c);
        Ok(())
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn socket(&self, i: usize) -> String {
        self.dir
            .join(format!("node{i}"))
            .join("shoal.sock")
            .display()
            .to_string()
    }

    fn status(&self, i: usize) -> Option<serde_json::Value> {
        let out = Command::new(&self.shoal)
            .args(["--socket", &self.socket(i), "status", "--json"])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn converged(&self, i: usize, n: usize) -> bool {
        self.status(i)
            .is_some_and(|s| s["leader"].is_u64() && s["nodes"].as_array().map(Vec::len) == Some(n))
    }

    fn leader(&self, i: usize) -> Option<u64> {
        self.status(i).and_then(|s| s["leader"].as_u64())
    }

    /// The leader every running node names, once they agree.
    fn agreed_leader(&self) -> Option<u64> {
        let views: Vec<Option<u64>> = (0..self.procs.len())
            .filter(|i| self.procs[*i].is_some())
            .map(|i| self.leader(i))
            .collect();
        let first = *views.first()?;
        views.iter().all(|v| *v == first).then_some(first).flatten()
    }

    fn rss_kib(&self, i: usize) -> Option<u64> {
        let pid = self.procs[i].as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}

fn sandbox_up(shoal: &Path, dir: &Path, trials: usize) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for t in 0..trials {
        let d = dir.join(format!("sandbox-{t}"));
        let _ = std::fs::remove_dir_all(&d);
        let start = Instant::now();
        let up = Command::new(shoal)
            .args(["sandbox", "up", "--dir"])
            .arg(&d)
            .output()?;
        if !up.status.success() {
            bail!("sandbox up: {}", String::from_utf8_lossy(&up.stderr));
        }
        std::fs::write(d.join("mnt").join("probe"), b"writable").context("write into the sandbox mount")?;
        out.push(secs(start.elapsed()));
        let _ = Command::new(shoal)
            .args(["sandbox", "down", "--dir"])
            .arg(&d)
            .output();
        let _ = std::fs::remove_dir_all(&d);
    }
    Ok(out)
}

fn failover(shoal: &Path, dir: &Path, trials: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut n = Nodes::new(shoal, &dir.join("failover"), 3)?;
    for i in 0..3 {
        n.start(i)?;
    }
    wait_until(Duration::from_secs(30), || n.converged(0, 3)).context("cluster did not form")?;
    let (mut elections, mut creates) = (Vec::new(), Vec::new());
    for t in 0..trials {
        let mut agreed = None;
        wait_until(Duration::from_secs(20), || {
            agreed = n.agreed_leader();
            agreed.is_some()
        })
        .context("the nodes do not agree on a leader")?;
        let leader = agreed.ok_or_else(|| anyhow!("no leader"))? as usize;
        let watcher = (leader + 1) % 3;
        let term = n
            .status(watcher)
            .and_then(|s| s["generation"].as_u64())
            .unwrap_or(0);
        let start = Instant::now();
        n.kill(leader);
        // A new leader, in a later term (a stale view of the old one cannot have that).
        wait_until(Duration::from_secs(20), || {
            n.status(watcher).is_some_and(|s| {
                s["generation"].as_u64().unwrap_or(0) > term
                    && s["leader"].as_u64().is_some_and(|l| l as usize != leader)
            })
        })?;
        elections.push(secs(start.elapsed()));
        // Volume creation through the new leader's cluster.
        let brick = dir.join(format!("failover/brick-{t}"));
        std::fs::create_dir_all(&brick)?;
        let start = Instant::now();
        let out = Command::new(shoal)
            .args([
                "--socket",
                &n.socket(watcher),
                "volume",
                "create",
                &format!("v{t}"),
            ])
            .arg(format!("node{watcher}:{}", brick.display()))
            .output()?;
        if !out.status.success() {
            bail!("volume create: {}", String::from_utf8_lossy(&out.stderr));
        }
        creates.push(secs(start.elapsed()));
        n.start(leader)?;
        wait_until(Duration::from_secs(30), || n.converged(leader, 3))?;
    }
    let _ = &n.addrs;
    Ok((elections, creates))
}

fn scale(shoal: &Path, dir: &Path, nodes: usize) -> Result<(f64, Vec<f64>)> {
    let mut n = Nodes::new(shoal, &dir.join("scale"), nodes)?;
    let start = Instant::now();
    for i in 0..nodes {
        n.start(i)?;
    }
    wait_until(Duration::from_secs(120), || n.converged(0, nodes))
        .context("the scale cluster did not converge")?;
    let converge = secs(start.elapsed());
    // Idle for a while, then read every daemon's resident memory.
    std::thread::sleep(Duration::from_secs(10));
    let rss: Vec<f64> = (0..nodes)
        .filter_map(|i| n.rss_kib(i))
        .map(|k| k as f64 / 1024.0)
        .collect();
    Ok((converge, rss))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let shoal = shoal_bin()?;
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    eprintln!("sandbox up ...");
    let up = sandbox_up(&shoal, &args.dir, args.trials.min(3))?;
    eprintln!("leader failover and volume create ...");
    let (elect, create) = failover(&shoal, &args.dir, args.trials)?;
    eprintln!("{} nodes ...", args.scale_nodes);
    let (converge, rss) = scale(&shoal, &args.dir, args.scale_nodes)?;

    let (u_med, u_max) = stats(&up);
    let (e_med, e_max) = stats(&elect);
    let (c_med, c_max) = stats(&create);
    let (r_med, r_max) = stats(&rss);
    println!(
        "\nshoal control-plane benchmark ({} trials; sandbox as {})\n",
        args.trials,
        if is_root() {
            "root, in network namespaces"
        } else {
            "a user, on loopback"
        }
    );
    println!("| measure | median | worst | target |");
    println!("|---|---|---|---|");
    println!("| `shoal sandbox up` (3 nodes) → volume mounted and writable | {u_med:.2} s | {u_max:.2} s | < 3 s |");
    println!("| leader failover: SIGKILL of the leader → a new leader named | {e_med:.2} s | {e_max:.2} s | < 2 s |");
    println!(
        "| `shoal volume create` (CLI round trip, committed) | {:.0} ms | {:.0} ms | |",
        c_med * 1000.0,
        c_max * 1000.0
    );
    println!(
        "| {} node daemons: start → converged (leader, all registered) | {converge:.2} s | | |",
        args.scale_nodes
    );
    println!(
        "| idle daemon RSS, {} nodes | {r_med:.1} MiB | {r_max:.1} MiB | < 40 MiB |",
        args.scale_nodes
    );
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(())
}
