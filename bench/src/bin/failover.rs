//! Failover benchmark: how long a client on the public network goes unanswered when the node
//! hosting its address fails, and what a planned move costs it.
//!
//! A root sandbox (3 nodes and a client, each in its own network namespace), a TCP responder
//! in every node's namespace, and a client that starts a connection to a public address every
//! 20 ms (attempts overlap, so a lost SYN does not hide the moment the address is back).
//! For each kind of fault, over several trials: the time from the fault to the first answer
//! from another node. Also: `sandbox up` to every node OK with every address hosted, and the
//! allocation of 1,000 addresses over 64 nodes. With `--with-ctdb`, the same trials run
//! against CTDB from Debian's packages on the same topology, side by side.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use layout::alloc::{allocate, Address, Host};
use netif::netns::in_netns;
use shoal_bench::ctdb::Ctdb;
use shoal_bench::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PORT: u16 = 7999;

#[derive(Parser)]
#[command(about = "shoal failover benchmark (root: nodes in network namespaces)")]
struct Args {
    /// Trials per measure.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    #[arg(long, default_value = "/var/tmp/shoal-bench-failover")]
    dir: PathBuf,
    /// Also run CTDB (Debian's ctdb package) on the same topology, at its defaults.
    #[arg(long)]
    with_ctdb: bool,
    /// Trials per measure for CTDB (its failovers take tens of seconds each).
    #[arg(long, default_value_t = 3)]
    ctdb_trials: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One connection attempt.
#[derive(Clone)]
struct Attempt {
    start: Instant,
    end: Instant,
    answer: Option<u8>,
}

/// Starts a connection to `target` every 20 ms from namespace `ns`, each in its own thread
/// with its own timeout, so that attempts overlap.
struct Prober {
    attempts: Arc<Mutex<Vec<Attempt>>>,
    /// When each attempt started (finished or not).
    started: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
}

impl Prober {
    fn start(ns: &str, target: Ipv4Addr, timeout: Duration) -> Prober {
        let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
        let started: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (a, st, s, ns) = (attempts.clone(), started.clone(), stop.clone(), ns.to_string());
        std::thread::spawn(move || {
            let addr = SocketAddr::from((target, PORT));
            while !s.load(Ordering::SeqCst) {
                let (a, ns) = (a.clone(), ns.clone());
                let start = Instant::now();
                if let Ok(mut v) = st.lock() {
                    v.push(start);
                }
                std::thread::spawn(move || {
                    let answer = in_netns(&ns, || -> Option<u8> {
                        let mut c = TcpStream::connect_timeout(&addr, timeout).ok()?;
                        c.set_read_timeout(Some(timeout)).ok()?;
                        let mut b = [0u8; 1];
                        c.read_exact(&mut b).ok()?;
                        Some(b[0])
                    })
                    .ok()
                    .flatten();
                    let end = Instant::now();
                    if let Ok(mut v) = a.lock() {
                        v.push(Attempt { start, end, answer });
                    }
                });
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Prober {
            attempts,
            started,
            stop,
        }
    }

    fn since(&self, t: Instant) -> Vec<Attempt> {
        self.attempts
            .lock()
            .map(|v| v.iter().filter(|a| a.start >= t).cloned().collect())
            .unwrap_or_default()
    }

    /// Waits until every attempt started in [from, to] has finished; returns them.
    fn finished(&self, from: Instant, to: Instant, timeout: Duration) -> Result<Vec<Attempt>> {
        let begun = |t: &Instant| *t >= from && *t <= to;
        let want = self
            .started
            .lock()
            .map(|v| v.iter().filter(|t| begun(t)).count())
            .unwrap_or(0);
        let mut done = Vec::new();
        wait_until(timeout, || {
            done = self.since(from).into_iter().filter(|a| begun(&a.start)).collect();
            done.len() >= want
        })
        .context("waiting for connection attempts to finish")?;
        Ok(done)
    }

    /// The first attempt started after `t` that `ok` accepts: when it ended.
    fn first(&self, t: Instant, ok: impl Fn(u8) -> bool, timeout: Duration) -> Result<Instant> {
        let mut at = None;
        wait_until(timeout, || {
            at = self
                .since(t)
                .iter()
                .filter(|a| a.answer.is_some_and(&ok))
                .map(|a| a.end)
                .min();
            at.is_some()
        })
        .context("waiting for the client to be answered")?;
        at.ok_or_else(|| anyhow!("not answered"))
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Whatever an earlier run left in `dir`, gone.
fn clear_sandbox(shoal: &Path, dir: &Path) {
    let _ = Command::new(shoal)
        .args(["sandbox", "down", "--dir"])
        .arg(dir)
        .output();
    let _ = std::fs::remove_dir_all(dir);
}

fn sandbox_up(shoal: &Path, dir: &Path) -> Result<()> {
    let out = Command::new(shoal)
        .args(["sandbox", "up", "--dir"])
        .arg(dir)
        .output()?;
    if !out.status.success() {
        bail!("sandbox up: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A TCP responder in each namespace that answers every connection with its node's number.
fn responders(namespaces: &[String], stop: Arc<AtomicBool>) -> Result<()> {
    for (pnn, ns) in namespaces.iter().enumerate() {
        let l = in_netns(ns, || TcpListener::bind(("0.0.0.0", PORT)))??;
        l.set_nonblocking(true)?;
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.write_all(&[pnn as u8]);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
    }
    Ok(())
}

/// The sandbox, responders in every node namespace, and the CLI.
struct Rig {
    shoal: PathBuf,
    dir: PathBuf,
    env: BTreeMap<String, String>,
    stop: Arc<AtomicBool>,
}

impl Rig {
    fn up(shoal: &Path, dir: &Path) -> Result<Rig> {
        clear_sandbox(shoal, dir);
        sandbox_up(shoal, dir)?;
        let env = std::fs::read_to_string(dir.join("sandbox.env"))?
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        let rig = Rig {
            shoal: shoal.to_path_buf(),
            dir: dir.to_path_buf(),
            env,
            stop: Arc::new(AtomicBool::new(false)),
        };
        let namespaces: Vec<String> = (0..3).map(|p| rig.netns(p)).collect::<Result<_>>()?;
        responders(&namespaces, rig.stop.clone())?;
        for pnn in 0..3 {
            let home = dir.join(format!("node{pnn}"));
            failing_monitor(&home.join("events.d").join("50.bench"), &rig.fail_flag(pnn))?;
        }
        Ok(rig)
    }

    fn fail_flag(&self, pnn: usize) -> PathBuf {
        self.dir.join(format!("node{pnn}")).join("fail")
    }

    fn netns(&self, pnn: usize) -> Result<String> {
        self.env["SHOAL_NETNS"]
            .split_whitespace()
            .nth(pnn)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no namespace for node {pnn}"))
    }

    fn publics(&self) -> Vec<Ipv4Addr> {
        self.env["SHOAL_PUBLIC"]
            .split_whitespace()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    fn cli(&self, via: usize, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.shoal)
            .args(args)
            .env(
                "SHOAL_SOCKET",
                self.dir.join(format!("node{via}")).join("shoal.sock"),
            )
            .output()?;
        if !out.status.success() {
            bail!("shoal {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn sandbox(&self, op: &[&str], pnn: usize) -> Result<()> {
        let out = Command::new(&self.shoal)
            .arg("sandbox")
            .args(op)
            .arg("--dir")
            .arg(&self.dir)
            .arg(pnn.to_string())
            .output()?;
        if !out.status.success() {
            bail!("sandbox {op:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Where each public address is, as node `via` sees it.
    fn placement(&self, via: usize) -> Result<BTreeMap<Ipv4Addr, Option<u64>>> {
        let v: serde_json::Value = serde_json::from_str(&self.cli(via, &["ip", "--json"])?)?;
        let mut out = BTreeMap::new();
        for row in v.as_array().ok_or_else(|| anyhow!("ip --json: not a list"))? {
            let ip: Ipv4Addr = row["ip"].as_str().unwrap_or_default().parse()?;
            let settled = !row["releasing"].as_bool().unwrap_or(true);
            out.insert(ip, row["pnn"].as_u64().filter(|_| settled));
        }
        Ok(out)
    }

    /// Every node OK, every address hosted, one per node.
    fn settled(&self) -> bool {
        let ok = self
            .cli(0, &["status", "--json"])
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| {
                v["nodes"]
                    .as_array()
                    .map(|n| n.iter().all(|n| n["state"].as_str() == Some("OK")))
            })
            .unwrap_or(false);
        let spread = self.placement(0).is_ok_and(|p| {
            let hosts: std::collections::BTreeSet<_> = p.values().flatten().collect();
            p.values().all(Option::is_some) && hosts.len() == p.len()
        });
        ok && spread
    }

    fn wait_settled(&self) -> Result<()> {
        wait_until(Duration::from_secs(30), || self.settled()).context("waiting for the cluster to settle")
    }

    fn host_of(&self, ip: Ipv4Addr) -> Result<usize> {
        self.placement(0)?
            .get(&ip)
            .copied()
            .flatten()
            .map(|p| p as usize)
            .ok_or_else(|| anyhow!("{ip} is not hosted"))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = Command::new(&self.shoal)
            .args(["sandbox", "down", "--dir"])
            .arg(&self.dir)
            .output();
    }
}

#[derive(Clone, Copy)]
enum Fault {
    MachineCrash,
    DaemonCrash,
    LinkCut,
    MonitorFails,
}

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Fault::MachineCrash => "machine crash (processes killed, links down: `sandbox kill`)",
            Fault::DaemonCrash => "daemon crash (SIGKILL of the cluster daemon alone)",
            Fault::LinkCut => "link cut (the node's links down: `sandbox cut`)",
            Fault::MonitorFails => "monitor event starts failing",
        }
    }
}

/// What the trials need of a cluster under test: shoal's sandbox or CTDB.
trait Cluster {
    fn client_ns(&self) -> String;
    fn first_public(&self) -> Ipv4Addr;
    fn host_of(&self, ip: Ipv4Addr) -> Result<usize>;
    fn wait_settled(&self) -> Result<()>;
    fn fault(&mut self, fault: Fault, pnn: usize) -> Result<()>;
    fn restore(&mut self, fault: Fault, pnn: usize) -> Result<()>;
    fn moveip(&self, ip: Ipv4Addr, to: usize, via: usize) -> Result<()>;
    /// How long a failover may take before the trial gives up.
    fn patience(&self) -> Duration;
}

impl Cluster for Rig {
    fn client_ns(&self) -> String {
        self.env["SHOAL_CLIENT_NETNS"].clone()
    }

    fn first_public(&self) -> Ipv4Addr {
        self.publics()[0]
    }

    fn host_of(&self, ip: Ipv4Addr) -> Result<usize> {
        Rig::host_of(self, ip)
    }

    fn wait_settled(&self) -> Result<()> {
        Rig::wait_settled(self)
    }

    fn fault(&mut self, fault: Fault, h: usize) -> Result<()> {
        match fault {
            Fault::MachineCrash => self.sandbox(&["kill"], h),
            Fault::DaemonCrash => self.sandbox(&["kill", "--daemon"], h),
            Fault::LinkCut => self.sandbox(&["cut"], h),
            Fault::MonitorFails => Ok(std::fs::write(self.fail_flag(h), "")?),
        }
    }

    fn restore(&mut self, fault: Fault, h: usize) -> Result<()> {
        match fault {
            Fault::MonitorFails => Ok(std::fs::remove_file(self.fail_flag(h))?),
            _ => self.sandbox(&["start"], h),
        }
    }

    fn moveip(&self, ip: Ipv4Addr, to: usize, via: usize) -> Result<()> {
        self.cli(via, &["moveip", &ip.to_string(), &to.to_string()])
            .map(|_| ())
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// CTDB on the same topology, with the same responders.
struct CtdbRig {
    ctdb: Ctdb,
    stop: Arc<AtomicBool>,
}

impl CtdbRig {
    fn up(dir: &Path) -> Result<CtdbRig> {
        let ctdb = Ctdb::up(dir)?;
        let stop = Arc::new(AtomicBool::new(false));
        let namespaces: Vec<String> = (0..3).map(Ctdb::netns).collect();
        responders(&namespaces, stop.clone())?;
        Ok(CtdbRig { ctdb, stop })
    }
}

impl Drop for CtdbRig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Cluster for CtdbRig {
    fn client_ns(&self) -> String {
        Ctdb::client_ns()
    }

    fn first_public(&self) -> Ipv4Addr {
        Ctdb::publics()[0]
    }

    fn host_of(&self, ip: Ipv4Addr) -> Result<usize> {
        self.ctdb
            .placement(0)?
            .get(&ip)
            .copied()
            .flatten()
            .ok_or_else(|| anyhow!("{ip} is not hosted"))
    }

    fn wait_settled(&self) -> Result<()> {
        self.ctdb.wait_settled(0, Duration::from_secs(120))
    }

    fn fault(&mut self, fault: Fault, h: usize) -> Result<()> {
        match fault {
            Fault::MachineCrash => self.ctdb.crash(h),
            Fault::DaemonCrash => self.ctdb.kill(h),
            Fault::LinkCut => self.ctdb.links(h, false),
            Fault::MonitorFails => Ok(std::fs::write(self.ctdb.fail_flag(h), "")?),
        }
    }

    fn restore(&mut self, fault: Fault, h: usize) -> Result<()> {
        match fault {
            Fault::MonitorFails => Ok(std::fs::remove_file(self.ctdb.fail_flag(h))?),
            // A killed ctdbd leaves its addresses up (nothing removes them): clear them, as an
            // administrator would, before it starts again.
            Fault::DaemonCrash => {
                run("ip", &["-n", &Ctdb::netns(h), "addr", "flush", "dev", "eth1"])?;
                self.ctdb.restore(h)
            }
            _ => self.ctdb.restore(h),
        }
    }

    fn moveip(&self, ip: Ipv4Addr, to: usize, via: usize) -> Result<()> {
        self.ctdb.moveip(via, ip, to)
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(120)
    }
}

/// One trial: the fault on the node hosting the first address, the time until another node
/// answers, then the node restored and the cluster settled again.
fn fault_trial(rig: &mut dyn Cluster, fault: Fault) -> Result<f64> {
    rig.wait_settled()?;
    let ip = rig.first_public();
    let h = rig.host_of(ip)?;
    let probe = Prober::start(&rig.client_ns(), ip, Duration::from_millis(900));
    probe.first(Instant::now(), |p| p as usize == h, rig.patience())?;
    let t0 = Instant::now();
    rig.fault(fault, h)?;
    let back = probe.first(t0, |p| p as usize != h, rig.patience());
    drop(probe);
    // Restored whatever happened, so that the next trial starts from a whole cluster.
    rig.restore(fault, h)?;
    Ok(ms(back? - t0))
}

/// One planned move of the first address to the next node: the worst time any connection
/// attempt took while it moved, and how many failed.
fn planned_trial(rig: &mut dyn Cluster) -> Result<(f64, usize)> {
    rig.wait_settled()?;
    let ip = rig.first_public();
    let h = rig.host_of(ip)?;
    let to = (h + 1) % 3;
    // Patient, as real clients are: a SYN lost while the address moves is sent again.
    let probe = Prober::start(&rig.client_ns(), ip, Duration::from_secs(5));
    probe.first(Instant::now(), |p| p as usize == h, rig.patience())?;
    let t0 = Instant::now();
    rig.moveip(ip, to, h)?;
    let landed = probe.first(t0, |p| p as usize == to, rig.patience())?;
    // Every attempt started while it moved, including any whose SYN was sent again.
    let during = probe.finished(t0 - Duration::from_millis(100), landed, Duration::from_secs(15))?;
    let failed = during.iter().filter(|a| a.answer.is_none()).count();
    let worst = during.iter().map(|a| ms(a.end - a.start)).fold(0.0, f64::max);
    Ok((worst, failed))
}

/// CTDB started on every node until every node is OK with every address hosted.
fn ctdb_start_trial(dir: &Path) -> Result<f64> {
    let t0 = Instant::now();
    let c = Ctdb::up(dir)?;
    c.wait_settled(0, Duration::from_secs(120))?;
    Ok(ms(t0.elapsed()))
}

/// Every measure of one system: fault kinds, planned move, start.
struct Results {
    faults: Vec<Vec<f64>>,
    planned: Vec<f64>,
    failed: usize,
    start: Vec<f64>,
}

const FAULTS: [Fault; 4] = [
    Fault::MachineCrash,
    Fault::DaemonCrash,
    Fault::LinkCut,
    Fault::MonitorFails,
];

fn measure(rig: &mut dyn Cluster, trials: usize, who: &str, timeouts: &mut usize) -> Result<Results> {
    let mut faults = Vec::new();
    for fault in FAULTS {
        eprintln!("{who}: {} ...", fault.label());
        let mut v = Vec::new();
        for _ in 0..trials {
            match fault_trial(rig, fault) {
                Ok(t) => v.push(t),
                // Counted at the limit (the table says so), and on to the next trial.
                Err(e) => {
                    eprintln!("{who}: {}: a trial did not finish: {e:#}", fault.label());
                    v.push(ms(rig.patience()));
                    *timeouts += 1;
                }
            }
        }
        faults.push(v);
    }
    eprintln!("{who}: planned move ...");
    let (mut planned, mut failed) = (Vec::new(), 0);
    for _ in 0..trials {
        match planned_trial(rig) {
            Ok((w, f)) => {
                planned.push(w);
                failed += f;
            }
            Err(e) => {
                eprintln!("{who}: planned move: a trial did not finish: {e:#}");
                planned.push(ms(rig.patience()));
                *timeouts += 1;
            }
        }
    }
    Ok(Results {
        faults,
        planned,
        failed,
        start: Vec::new(),
    })
}

/// `shoal sandbox up` until every node is OK with every address hosted.
fn start_trial(shoal: &Path, dir: &Path) -> Result<f64> {
    clear_sandbox(shoal, dir);
    let t0 = Instant::now();
    sandbox_up(shoal, dir)?;
    let rig_env = dir.join("node0").join("shoal.sock");
    wait_until(Duration::from_secs(30), || {
        let o = Command::new(shoal)
            .args(["status", "--json"])
            .env("SHOAL_SOCKET", &rig_env)
            .output();
        o.ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| {
                v["nodes"]
                    .as_array()
                    .map(|n| n.iter().all(|n| n["state"].as_str() == Some("OK")))
            })
            .unwrap_or(false)
    })?;
    let took = t0.elapsed();
    let _ = Command::new(shoal)
        .args(["sandbox", "down", "--dir"])
        .arg(dir)
        .output();
    Ok(ms(took))
}

/// Allocation of 1,000 addresses (ten /24 subnets) over 64 nodes: from nothing, and again
/// after one node leaves. Milliseconds, median of `runs`.
fn allocation(runs: usize) -> (f64, f64) {
    let addrs: Vec<Address> = (0..1000u32)
        .map(|i| Address {
            ip: std::net::IpAddr::V4(Ipv4Addr::new(10, 50 + (i / 100) as u8, 0, (i % 100) as u8 + 1)),
            prefix: 24,
            interfaces: vec!["eth1".into()],
        })
        .collect();
    let hosts: Vec<Host> = (0..64)
        .map(|pnn| Host {
            pnn,
            interfaces: ["eth1".to_string()].into(),
        })
        .collect();
    let (mut fresh, mut again) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let a = allocate(&addrs, &hosts, &BTreeMap::new(), true);
        fresh.push(ms(t.elapsed()));
        let t = Instant::now();
        let _ = allocate(&addrs, &hosts[1..], &a, true);
        again.push(ms(t.elapsed()));
    }
    (median(fresh), median(again))
}

fn stats(v: &[f64]) -> String {
    let worst = v.iter().cloned().fold(0.0, f64::max);
    format!("{:.0} ms | {worst:.0} ms | {}", median(v.to_vec()), v.len())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !is_root() {
        bail!("the failover benchmark needs root (nodes in network namespaces)");
    }
    let shoal = shoal_bin()?;
    let trials = args.trials.max(1);

    eprintln!("shoal: start to all healthy ...");
    let mut start = Vec::new();
    for _ in 0..trials {
        start.push(start_trial(&shoal, &args.dir)?);
    }
    let mut rig = Rig::up(&shoal, &args.dir)?;
    let mut our_timeouts = 0;
    let mut ours = measure(&mut rig, trials, "shoal", &mut our_timeouts)?;
    ours.start = start;
    drop(rig);

    let mut their_timeouts = 0;
    let theirs = if args.with_ctdb {
        let n = args.ctdb_trials.max(1);
        eprintln!("CTDB: start to all healthy ...");
        let mut start = Vec::new();
        for _ in 0..n {
            start.push(ctdb_start_trial(&args.dir)?);
        }
        let mut rig = CtdbRig::up(&args.dir)?;
        let mut r = measure(&mut rig, n, "CTDB", &mut their_timeouts)?;
        r.start = start;
        Some(r)
    } else {
        None
    };
    let (fresh, again) = allocation(21);

    println!("\nfailover benchmark: 3 nodes + a client in network namespaces, defaults (shoal: heartbeat 100 ms, dead after 5)\n");
    let mut head =
        "| measure (client connects every 20 ms) | shoal median | worst | trials | target |".to_string();
    let mut rule = "|---|---|---|---|---|".to_string();
    if theirs.is_some() {
        head.push_str(" CTDB 4.17 median | worst | trials | CTDB / shoal |");
        rule.push_str("---|---|---|---|");
    }
    println!("{head}\n{rule}");
    let line = |label: &str, a: &[f64], b: Option<&[f64]>, target: &str| {
        let mut l = format!("| {label} | {} | {target} |", stats(a));
        if let Some(b) = b {
            let ratio = median(b.to_vec()) / median(a.to_vec()).max(1.0);
            l.push_str(&format!(" {} | {ratio:.0}× |", stats(b)));
        }
        println!("{l}");
    };
    for (i, fault) in FAULTS.iter().enumerate() {
        let target = match fault {
            Fault::MachineCrash | Fault::LinkCut => "median < 1 s",
            _ => "",
        };
        line(
            fault.label(),
            &ours.faults[i],
            theirs.as_ref().map(|t| t.faults[i].as_slice()),
            target,
        );
    }
    let failed = match &theirs {
        Some(t) => format!("failed: shoal {}, CTDB {}", ours.failed, t.failed),
        None => format!("{} failed", ours.failed),
    };
    line(
        &format!("planned move (`moveip`): slowest connection while it moves; {failed}"),
        &ours.planned,
        theirs.as_ref().map(|t| t.planned.as_slice()),
        "< 200 ms, none failed",
    );
    line(
        "start → every node OK, every address hosted",
        &ours.start,
        theirs.as_ref().map(|t| t.start.as_slice()),
        "< 3 s",
    );
    println!("| allocation: 1,000 addresses over 64 nodes, from nothing | {fresh:.1} ms | | 21 | < 50 ms |");
    println!("| allocation: the same after one node leaves | {again:.1} ms | | 21 | < 50 ms |");
    if our_timeouts + their_timeouts > 0 {
        println!(
            "\nTrials that did not finish (counted at the limit: shoal 30 s, CTDB 120 s): shoal {our_timeouts}, CTDB {their_timeouts}."
        );
    }
    Ok(())
}
