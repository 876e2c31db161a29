//! High-availability harness: a root sandbox (nodes and a client in network namespaces), a
//! TCP responder in every node's namespace, a client connecting to a public address every
//! 20 ms from the client namespace, and a sampler that reads every node's public interface
//! every few milliseconds and records any address seen on two nodes at once.

use super::shoal_bin;
use netif::netns::{in_netns, ipv4_on};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The port the responders listen on in every node namespace.
pub const PORT: u16 = 7999;

/// A sandbox brought up by `shoal sandbox up` as root, brought down on drop.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub env: HashMap<String, String>,
    pub nodes: usize,
}

fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

impl Sandbox {
    pub fn up(nodes: usize) -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(shoal_bin())
            .args(["sandbox", "up", "--nodes", &nodes.to_string(), "--dir"])
            .arg(dir.path())
            .env("SHOAL_LOG", "info,openraft=warn")
            .output()
            .expect("run shoal sandbox up");
        let mut sb = Sandbox {
            env: HashMap::new(),
            dir,
            nodes,
        };
        assert!(
            out.status.success(),
            "sandbox up: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(sb.dir.path().join("sandbox.env")).expect("sandbox.env");
        sb.env = parse_env(&text);
        sb
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Namespace of node `pnn`.
    pub fn netns(&self, pnn: usize) -> String {
        self.env["SHOAL_NETNS"]
            .split_whitespace()
            .nth(pnn)
            .expect("node namespace")
            .to_string()
    }

    pub fn client_netns(&self) -> String {
        self.env["SHOAL_CLIENT_NETNS"].clone()
    }

    pub fn publics(&self) -> Vec<Ipv4Addr> {
        self.env["SHOAL_PUBLIC"]
            .split_whitespace()
            .map(|a| a.parse().expect("public address"))
            .collect()
    }

    pub fn socket(&self, pnn: usize) -> PathBuf {
        self.path().join(format!("node{pnn}")).join("shoal.sock")
    }

    /// Runs the CLI against node `via`'s daemon.
    pub fn shoal_via(&self, via: usize, args: &[&str]) -> Output {
        Command::new(shoal_bin())
            .args(args)
            .env("SHOAL_SOCKET", self.socket(via))
            .output()
            .expect("run shoal")
    }

    /// Runs the CLI against node `via` and insists that it succeeds.
    pub fn ok(&self, via: usize, args: &[&str]) -> String {
        let out = self.shoal_via(via, args);
        assert!(
            out.status.success(),
            "shoal {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `shoal sandbox OP --dir DIR PNN` (kill, cut, start), with extra flags.
    pub fn node_op(&self, op: &str, pnn: usize, extra: &[&str]) {
        let out = Command::new(shoal_bin())
            .args(["sandbox", op])
            .args(extra)
            .arg("--dir")
            .arg(self.path())
            .arg(pnn.to_string())
            .output()
            .expect("run shoal sandbox");
        assert!(
            out.status.success(),
            "sandbox {op} {pnn}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Each node's state as `shoal status --json` reports it through node `via`.
    pub fn states(&self, via: usize) -> BTreeMap<u64, String> {
        let out = self.shoal_via(via, &["status", "--json"]);
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return BTreeMap::new();
        };
        v["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| Some((n["pnn"].as_u64()?, n["state"].as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn log(&self, pnn: usize) -> String {
        std::fs::read_to_string(self.path().join(format!("node{pnn}")).join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the nodes were doing, for the failure report.
            for pnn in 0..self.env["SHOAL_NETNS"]
                .split_whitespace()
                .count()
                .saturating_sub(1)
            {
                let log = self.log(pnn);
                let lines: Vec<&str> = log.lines().collect();
                eprintln!("--- node {pnn} daemon.log (last lines) ---");
                for l in &lines[lines.len().saturating_sub(80)..] {
                    eprintln!("{l}");
                }
            }
        }
        let out = Command::new(shoal_bin())
            .args(["sandbox", "down", "--dir"])
            .arg(self.dir.path())
            .output();
        if let Ok(o) = out {
            if !o.status.success() {
                eprintln!("sandbox down: {}", String::from_utf8_lossy(&o.stderr));
            }
        }
    }
}

/// Background threads, stopped and joined on drop.
#[derive(Default)]
struct Threads {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// When, and each node's public addresses then.
type Sample = (Instant, Vec<BTreeSet<Ipv4Addr>>);

/// Every `every`, each node's public addresses; duplicates are recorded as they are seen.
pub struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    doubles: Arc<Mutex<Vec<String>>>,
    _threads: Threads,
}

impl Sampler {
    pub fn start(namespaces: Vec<String>, every: Duration) -> Sampler {
        let threads = Threads::default();
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let doubles: Arc<Mutex<Vec<String>>> = Arc::default();
        let (s, d, stop) = (samples.clone(), doubles.clone(), threads.stop.clone());
        let h = std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let at = Instant::now();
                let sets: Vec<BTreeSet<Ipv4Addr>> = namespaces
                    .iter()
                    .map(|ns| {
                        in_netns(ns, || ipv4_on("eth1"))
                            .and_then(|r| r)
                            .unwrap_or_default()
                    })
                    .collect();
                let mut seen: BTreeMap<Ipv4Addr, Vec<usize>> = BTreeMap::new();
                for (i, set) in sets.iter().enumerate() {
                    for ip in set {
                        seen.entry(*ip).or_default().push(i);
                    }
                }
                for (ip, on) in seen.iter().filter(|(_, on)| on.len() > 1) {
                    d.lock()
                        .unwrap()
                        .push(format!("{ip} on nodes {on:?} at {:?}", at.elapsed()));
                }
                s.lock().unwrap().push((at, sets));
                std::thread::sleep(every);
            }
        });
        let mut threads = threads;
        threads.handles.push(h);
        Sampler {
            samples,
            doubles,
            _threads: threads,
        }
    }

    /// Addresses seen on more than one node at once, so far.
    pub fn doubles(&self) -> Vec<String> {
        self.doubles.lock().unwrap().clone()
    }

    /// The latest sample: each address and the nodes it is on.
    pub fn now(&self) -> BTreeMap<Ipv4Addr, Vec<usize>> {
        let s = self.samples.lock().unwrap();
        let mut out: BTreeMap<Ipv4Addr, Vec<usize>> = BTreeMap::new();
        if let Some((_, sets)) = s.last() {
            for (i, set) in sets.iter().enumerate() {
                for ip in set {
                    out.entry(*ip).or_default().push(i);
                }
            }
        }
        out
    }

    /// The single node holding `ip` now.
    pub fn host(&self, ip: Ipv4Addr) -> Option<usize> {
        match self.now().get(&ip).map(Vec::as_slice) {
            Some([one]) => Some(*one),
            _ => None,
        }
    }

    /// The first sample at or after `since` in which node `pnn` does not hold `ip`.
    pub fn gone_from(&self, pnn: usize, ip: Ipv4Addr, since: Instant) -> Option<Instant> {
        let s = self.samples.lock().unwrap();
        s.iter()
            .filter(|(at, _)| *at >= since)
            .find(|(_, sets)| !sets.get(pnn).is_some_and(|set| set.contains(&ip)))
            .map(|(at, _)| *at)
    }

    /// Waits until every address in `all` is held by exactly one of `live`, and the counts
    /// per live node differ by at most one.
    pub fn wait_balanced(&self, all: &[Ipv4Addr], live: &[usize], timeout: Duration) {
        super::wait_for("addresses balanced over the live nodes", timeout, || {
            let now = self.now();
            let mut count: BTreeMap<usize, usize> = live.iter().map(|p| (*p, 0)).collect();
            for ip in all {
                match now.get(ip).map(Vec::as_slice) {
                    Some([one]) if live.contains(one) => *count.entry(*one).or_default() += 1,
                    _ => return false,
                }
            }
            let (lo, hi) = (count.values().min(), count.values().max());
            matches!((lo, hi), (Some(l), Some(h)) if h - l <= 1)
        });
    }
}

/// A TCP responder in each node namespace: it answers every connection with its pnn.
pub struct Responders {
    _threads: Threads,
}

impl Responders {
    pub fn start(namespaces: &[String]) -> Responders {
        let mut threads = Threads::default();
        for (pnn, ns) in namespaces.iter().enumerate() {
            let l = in_netns(ns, || TcpListener::bind(("0.0.0.0", PORT)))
                .expect("enter namespace")
                .expect("bind responder");
            l.set_nonblocking(true).expect("nonblocking");
            let stop = threads.stop.clone();
            threads.handles.push(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok((mut c, _)) => {
                            let _ = c.set_nonblocking(false);
                            let _ = c.write_all(&[pnn as u8]);
                        }
                        // Wakes the moment a connection arrives, as a real server does (a
                        // connection left unanswered for long could be caught by a planned
                        // release); the timeout lets the thread notice `stop`.
                        Err(_) => {
                            let mut p = libc::pollfd {
                                fd: l.as_raw_fd(),
                                events: libc::POLLIN,
                                revents: 0,
                            };
                            // SAFETY: one valid pollfd for the listener this thread owns.
                            unsafe { libc::poll(&mut p, 1, 20) };
                        }
                    }
                }
            }));
        }
        Responders { _threads: threads }
    }
}

/// One connection attempt: when it started and ended, and which node answered.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub start: Instant,
    pub end: Instant,
    pub answer: Result<usize, String>,
}

/// Connects to `target` every 20 ms from the client namespace, one attempt at a time.
pub struct Client {
    pub attempts: Arc<Mutex<Vec<Attempt>>>,
    _threads: Threads,
}

impl Client {
    pub fn start(netns: &str, target: Ipv4Addr, connect_timeout: Duration) -> Client {
        let mut threads = Threads::default();
        let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
        let (a, stop, ns) = (attempts.clone(), threads.stop.clone(), netns.to_string());
        threads.handles.push(std::thread::spawn(move || {
            let addr = SocketAddr::from((target, PORT));
            while !stop.load(Ordering::SeqCst) {
                let start = Instant::now();
                let answer = in_netns(&ns, || {
                    let mut c =
                        TcpStream::connect_timeout(&addr, connect_timeout).map_err(|e| e.to_string())?;
                    c.set_read_timeout(Some(connect_timeout))
                        .map_err(|e| e.to_string())?;
                    let mut b = [0u8; 1];
                    c.read_exact(&mut b).map_err(|e| e.to_string())?;
                    Ok(b[0] as usize)
                })
                .unwrap_or_else(|e| Err(e.to_string()));
                let end = Instant::now();
                a.lock().unwrap().push(Attempt { start, end, answer });
                let next = start + Duration::from_millis(20);
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
        }));
        Client {
            attempts,
            _threads: threads,
        }
    }

    pub fn since(&self, t: Instant) -> Vec<Attempt> {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.start >= t)
            .cloned()
            .collect()
    }

    /// Waits for an attempt that started after `t` and was answered by a node in `by`;
    /// returns when it ended.
    pub fn wait_answer(&self, t: Instant, by: impl Fn(usize) -> bool, timeout: Duration) -> Instant {
        let end = Instant::now() + timeout;
        loop {
            let recent = self.since(t);
            if let Some(a) = recent.iter().find(|a| a.answer.as_ref().is_ok_and(|p| by(*p))) {
                return a.end;
            }
            if Instant::now() > end {
                let last: Vec<_> = recent.iter().rev().take(3).map(|a| &a.answer).collect();
                panic!("timed out after {timeout:?} waiting for the client to be answered (last: {last:?})");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The longest time between the end of one answered attempt and the end of the next,
    /// over attempts that started in [from, to].
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let a = self.attempts.lock().unwrap();
        let ends: Vec<Instant> = a
            .iter()
            .filter(|x| x.start >= from && x.start <= to && x.answer.is_ok())
            .map(|x| x.end)
            .collect();
        ends.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    }
}
