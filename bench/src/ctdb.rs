//! CTDB from Debian's packages on the same topology as the shoal sandbox, for the failover
//! benchmark's side-by-side rows: 3 nodes, each in its own network namespace with a private
//! and a public interface, a client namespace on the public bridge, CTDB at its defaults.
//!
//! Each ctdbd runs in its own mount namespace with private copies of /etc/ctdb, /run/ctdb and
//! /var/lib/ctdb bind-mounted over the real ones (CTDB's test mode would turn gratuitous ARP
//! off, which is the very thing measured). The `ctdb` tool reaches a node through
//! `CTDB_SOCKET`.

use crate::{run, run_ok, wait_until};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Names of everything this rig creates start with this (swept before each run).
const PREFIX: &str = "shct";
pub const NODES: usize = 3;

pub struct Ctdb {
    dir: PathBuf,
    daemons: Vec<Option<Child>>,
}

fn ns(i: usize) -> String {
    format!("{PREFIX}n{i}")
}

fn ip(args: &[&str]) -> Result<()> {
    run("ip", args).map(|_| ())
}

/// Removes whatever an earlier run left: namespaces, bridges, daemons.
fn sweep() {
    let _ = Command::new("pkill")
        .args(["-9", "-f", "shoal-bench-ctdb/n[0-9]"])
        .status();
    for i in 0..NODES {
        let _ = run_ok("ip", &["netns", "del", &ns(i)]);
    }
    let _ = run_ok("ip", &["netns", "del", &format!("{PREFIX}cl")]);
    for b in ["pv", "pb"] {
        let _ = run_ok("ip", &["link", "del", &format!("{PREFIX}{b}")]);
    }
}

impl Ctdb {
    pub fn client_ns() -> String {
        format!("{PREFIX}cl")
    }

    pub fn netns(i: usize) -> String {
        ns(i)
    }

    pub fn publics() -> Vec<Ipv4Addr> {
        (0..NODES as u8)
            .map(|i| Ipv4Addr::new(10, 232, 0, 100 + i))
            .collect()
    }

    /// Builds the topology and the nodes' configuration, and starts every ctdbd.
    pub fn up(dir: &Path) -> Result<Ctdb> {
        if !run_ok("sh", &["-c", "command -v ctdbd"]) {
            bail!("ctdbd is not installed (apt-get install ctdb)");
        }
        sweep();
        let dir = dir.join("shoal-bench-ctdb");
        let _ = std::fs::remove_dir_all(&dir);
        let (pv, pb) = (format!("{PREFIX}pv"), format!("{PREFIX}pb"));
        ip(&["link", "add", &pv, "type", "bridge"])?;
        ip(&["link", "set", &pv, "up"])?;
        ip(&["link", "add", &pb, "type", "bridge"])?;
        ip(&["addr", "add", "10.232.0.254/24", "dev", &pb])?;
        ip(&["link", "set", &pb, "up"])?;
        let nodes: String = (0..NODES).map(|i| format!("10.231.0.{}\n", i + 1)).collect();
        let publics: String = Self::publics().iter().map(|a| format!("{a}/24 eth1\n")).collect();
        for i in 0..NODES {
            let n = ns(i);
            ip(&["netns", "add", &n])?;
            for (end, bridge, inner) in [("a", &pv, "eth0"), ("b", &pb, "eth1")] {
                let outer = format!("{n}{end}");
                ip(&[
                    "link", "add", &outer, "type", "veth", "peer", "name", inner, "netns", &n,
                ])?;
                ip(&["link", "set", &outer, "master", bridge, "up"])?;
            }
            ip(&[
                "-n",
                &n,
                "addr",
                "add",
                &format!("10.231.0.{}/24", i + 1),
                "dev",
                "eth0",
            ])?;
            for l in ["lo", "eth0", "eth1"] {
                ip(&["-n", &n, "link", "set", l, "up"])?;
            }
            let home = dir.join(format!("n{i}"));
            for d in ["etc", "run", "lib/persistent", "lib/state", "lib/volatile"] {
                std::fs::create_dir_all(home.join(d))?;
            }
            run(
                "cp",
                &["-a", "/etc/ctdb/.", &home.join("etc").display().to_string()],
            )?;
            std::fs::write(
                home.join("etc/ctdb.conf"),
                "[logging]\n\tlocation = file:/var/lib/ctdb/log.ctdb\n\tlog level = NOTICE\n",
            )?;
            std::fs::write(home.join("etc/nodes"), &nodes)?;
            std::fs::write(home.join("etc/public_addresses"), &publics)?;
            crate::failing_monitor(
                &home.join("etc/events/legacy/50.bench.script"),
                &home.join("fail"),
            )?;
        }
        let cl = Self::client_ns();
        ip(&["netns", "add", &cl])?;
        let outer = format!("{PREFIX}cla");
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &cl,
        ])?;
        ip(&["link", "set", &outer, "master", &pb, "up"])?;
        ip(&["-n", &cl, "addr", "add", "10.232.0.200/24", "dev", "eth0"])?;
        ip(&["-n", &cl, "link", "set", "eth0", "up"])?;
        ip(&["-n", &cl, "link", "set", "lo", "up"])?;
        std::fs::create_dir_all("/run/ctdb")?;
        let mut c = Ctdb {
            dir,
            daemons: (0..NODES).map(|_| None).collect(),
        };
        for i in 0..NODES {
            c.start(i)?;
        }
        Ok(c)
    }

    fn home(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{i}"))
    }

    pub fn fail_flag(&self, i: usize) -> PathBuf {
        self.home(i).join("fail")
    }

    /// Starts node `i`'s ctdbd (in the foreground, in a process group of its own).
    pub fn start(&mut self, i: usize) -> Result<()> {
        let h = self.home(i);
        let script = format!(
            "mount --bind {h}/etc /etc/ctdb && mount --bind {h}/run /run/ctdb && \
             mount --bind {h}/lib /var/lib/ctdb && exec ctdbd --interactive",
            h = h.display()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(h.join("ctdbd.out"))?;
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns(i),
                "unshare",
                "-m",
                "--propagation",
                "private",
            ])
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("cannot start ctdbd")?;
        self.daemons[i] = Some(child);
        Ok(())
    }

    fn ctdb(&self, via: usize, args: &[&str]) -> Result<String> {
        let out = Command::new("ctdb")
            .args(args)
            .env("CTDB_SOCKET", self.home(via).join("run/ctdbd.socket"))
            .output()?;
        if !out.status.success() {
            bail!("ctdb {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ctdb -X` rows, without the header.
    fn rows(&self, via: usize, args: &[&str]) -> Result<Vec<Vec<String>>> {
        let mut a = vec!["-X"];
        a.extend_from_slice(args);
        Ok(self
            .ctdb(via, &a)?
            .lines()
            .skip(1)
            .map(|l| l.trim_matches('|').split('|').map(str::to_string).collect())
            .collect())
    }

    /// Where each public address is, as node `via` sees it.
    pub fn placement(&self, via: usize) -> Result<BTreeMap<Ipv4Addr, Option<usize>>> {
        let mut out = BTreeMap::new();
        for r in self.rows(via, &["ip"])? {
            let a: Ipv4Addr = r.first().ok_or_else(|| anyhow!("empty row"))?.parse()?;
            let pnn = r.get(1).and_then(|p| p.parse::<i64>().ok()).filter(|p| *p >= 0);
            out.insert(a, pnn.map(|p| p as usize));
        }
        Ok(out)
    }

    /// Every node OK (as node `via` sees it) and every address hosted. Not necessarily one
    /// per node: CTDB may take its time to move an address back to a recovered node.
    pub fn settled(&self, via: usize) -> bool {
        let ok = self.rows(via, &["status"]).is_ok_and(|rows| {
            rows.len() == NODES
                && rows
                    .iter()
                    .all(|r| r.get(2..9).is_some_and(|f| f.iter().all(|x| x == "0")))
        });
        ok && self.placement(via).is_ok_and(|p| p.values().all(Option::is_some))
    }

    pub fn wait_settled(&self, via: usize, timeout: Duration) -> Result<()> {
        wait_until(timeout, || self.settled(via)).context("waiting for CTDB to settle")
    }

    /// SIGKILL of node `i`'s ctdbd and everything it started.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut c) = self.daemons[i].take() {
            let _ = rustix::process::kill_process_group(
                rustix::process::Pid::from_raw(c.id() as i32).ok_or_else(|| anyhow!("bad pid"))?,
                rustix::process::Signal::KILL,
            );
            let _ = c.wait();
        }
        Ok(())
    }

    /// A machine crash: links down first (a machine that loses power says nothing more; a
    /// killed process would close its connections first), processes killed, its addresses
    /// gone with the power.
    pub fn crash(&mut self, i: usize) -> Result<()> {
        self.links(i, false)?;
        self.kill(i)?;
        ip(&["-n", &ns(i), "addr", "flush", "dev", "eth1"])
    }

    pub fn links(&self, i: usize, up: bool) -> Result<()> {
        for end in ["a", "b"] {
            ip(&[
                "link",
                "set",
                &format!("{}{end}", ns(i)),
                if up { "up" } else { "down" },
            ])?;
        }
        Ok(())
    }

    /// Node `i` back: links up, ctdbd started if it is not running.
    pub fn restore(&mut self, i: usize) -> Result<()> {
        self.links(i, true)?;
        if self.daemons[i].is_none() {
            self.start(i)?;
        }
        Ok(())
    }

    pub fn moveip(&self, via: usize, addr: Ipv4Addr, to: usize) -> Result<()> {
        self.ctdb(via, &["moveip", &addr.to_string(), &to.to_string()])
            .map(|_| ())
    }
}

impl Drop for Ctdb {
    fn drop(&mut self) {
        for i in 0..NODES {
            let _ = self.kill(i);
        }
        sweep();
    }
}
