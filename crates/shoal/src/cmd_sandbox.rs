//! `shoal sandbox`: a whole cluster on this machine in one command, for trying shoal out and
//! for tests. As root every node gets a network namespace of its own on a bridge (so that
//! addresses really move between nodes); without root the nodes share the host's network on
//! loopback addresses of their own.
//!
//! Everything the sandbox makes is recorded in DIR/sandbox.state so that `down` removes it
//! all: processes (by PID), the mount, namespaces, veths and the bridge.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct SandboxArgs {
    #[command(subcommand)]
    pub cmd: Option<SandboxCmd>,
    #[command(flatten)]
    pub up: UpArgs,
}

#[derive(Subcommand)]
pub enum SandboxCmd {
    /// Bring the sandbox up and return once the volume is mounted.
    Up(UpArgs),
    /// Stop everything the sandbox started and unmount.
    Down {
        #[arg(long, default_value_os_t = default_dir())]
        dir: PathBuf,
    },
}

#[derive(Args, Clone)]
pub struct UpArgs {
    /// Where the sandbox keeps its nodes, bricks, mount and env file.
    #[arg(long, default_value_os_t = default_dir())]
    pub dir: PathBuf,
    /// Data nodes (with 2, a witness is added so that either can fail).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// How volume `nas` spreads over the nodes' bricks.
    #[arg(long, value_enum, default_value_t = LayoutArg::Replica)]
    pub layout: LayoutArg,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LayoutArg {
    Replica,
    Stripe,
    Distribute,
}

fn default_dir() -> PathBuf {
    let uid = rustix::process::getuid().as_raw();
    if uid == 0 {
        "/var/tmp/shoal-sandbox".into()
    } else {
        format!("/var/tmp/shoal-sandbox-{uid}").into()
    }
}

const CLUSTER_PORT: u16 = cluster::config::DEFAULT_CLUSTER_PORT;
const STATE_FILE: &str = "sandbox.state";

/// What `down` needs to undo.
#[derive(Serialize, Deserialize, Default)]
struct State {
    netns: Vec<String>,
    bridge: Option<String>,
    daemons: Vec<u32>,
    mount_pid: Option<u32>,
    mount: Option<PathBuf>,
}

pub fn run(args: SandboxArgs) -> Result<()> {
    match args.cmd {
        Some(SandboxCmd::Up(up)) => up_cmd(&up),
        Some(SandboxCmd::Down { dir }) => down(&dir),
        None => {
            up_cmd(&args.up)?;
            println!("\nPress Ctrl-C to stop the sandbox.");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            println!();
            down(&args.up.dir)
        }
    }
}

/// A short tag for this sandbox's directory: names its interfaces and picks its subnet, so
/// that sandboxes in different directories never collide and leftovers can be swept.
fn tag(dir: &Path) -> u16 {
    let h = blake3::hash(dir.as_os_str().as_encoded_bytes());
    u16::from_le_bytes([h.as_bytes()[0], h.as_bytes()[1]])
}

fn sh(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn save(dir: &Path, st: &State) -> Result<()> {
    std::fs::write(dir.join(STATE_FILE), serde_json::to_string_pretty(st)?)?;
    Ok(())
}

/// Whether a process still runs (a zombie waiting for its reaper does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

fn up_cmd(a: &UpArgs) -> Result<()> {
    let t0 = Instant::now();
    if !(1..=16).contains(&a.nodes) {
        bail!("--nodes must be between 1 and 16");
    }
    if a.layout == LayoutArg::Stripe && a.nodes < 2 {
        bail!("a stripe needs at least 2 nodes");
    }
    std::fs::create_dir_all(&a.dir).with_context(|| format!("cannot make {}", a.dir.display()))?;
    let dir = a.dir.canonicalize()?;
    if let Ok(text) = std::fs::read_to_string(dir.join(STATE_FILE)) {
        let old: State = serde_json::from_str(&text).unwrap_or_default();
        if old.daemons.iter().any(|p| alive(*p)) {
            bail!(
                "a sandbox is already up in {} (run: shoal sandbox down --dir {})",
                dir.display(),
                dir.display()
            );
        }
        down(&dir)?;
    }
    let root = rustix::process::geteuid().is_root();
    // A directory keeps its cluster across up and down; it must be brought up the same way.
    let params = format!(
        "format=1 nodes={} layout={} root={root} port={CLUSTER_PORT}\n",
        a.nodes,
        a.layout
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    );
    match std::fs::read_to_string(dir.join("sandbox.params")) {
        Ok(old) if old != params => bail!(
            "{} holds a sandbox made with other settings ({}); use another --dir, or remove it",
            dir.display(),
            old.trim()
        ),
        Ok(_) => {}
        Err(_) => std::fs::write(dir.join("sandbox.params"), &params)?,
    }
    let t = tag(&dir);
    let prefix = format!("sb{t:04x}");
    let (x, y) = ((t >> 8) as u8, (t & 0xff) as u8);
    let witness = a.nodes == 2;
    let total = a.nodes + usize::from(witness);
    let addrs: Vec<String> = (1..=total)
        .map(|i| {
            if root {
                format!("10.{}.{y}.{i}", 200 + x % 50)
            } else {
                format!("127.{}.{y}.{i}", x.max(1))
            }
        })
        .collect();
    let mut st = State::default();
    if root {
        sweep(&prefix);
        setup_network(&prefix, &addrs, &mut st)?;
        save(&dir, &st)?;
    }
    let key = dir.join("cluster.key");
    if !key.exists() {
        std::fs::write(&key, proto::auth::ClusterKey::generate().to_text())?;
        restrict(&key)?;
    }
    let exe = std::env::current_exe()?;
    let nodes_list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    for (i, addr) in addrs.iter().enumerate() {
        let home = dir.join(format!("node{i}"));
        std::fs::create_dir_all(&home)?;
        let config = home.join("shoal.toml");
        std::fs::write(
            &config,
            format!(
                "name = \"node{i}\"\naddress = \"{addr}\"\nstate_dir = \"{}\"\nkey = \"{}\"\nsocket = \"{}\"\ncluster_port = {CLUSTER_PORT}\nnodes = [{}]\nwitness = {}\n",
                home.join("state").display(),
                key.display(),
                home.join("shoal.sock").display(),
                nodes_list.join(", "),
                witness && i == total - 1
            ),
        )?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.join("daemon.log"))?;
        let mut cmd = if root {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &format!("{prefix}n{i}")])
                .arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.arg("daemon")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = detached(&mut cmd)
            .spawn()
            .context("cannot start a node daemon")?;
        st.daemons.push(child.id());
        save(&dir, &st)?;
    }
    let socket = dir.join("node0").join("shoal.sock");
    let admin = |req: &cluster::admin::AdminRequest| crate::cmd_cli::call(&socket, req);
    let pids = st.daemons.clone();
    wait("the nodes to form a cluster", Duration::from_secs(30), || {
        if let Some(i) = pids.iter().position(|p| !alive(*p)) {
            return Err(anyhow!("node {i} stopped: {}", last_line(&dir.join(format!("node{i}")).join("daemon.log"))));
        }
        Ok(matches!(admin(&cluster::admin::AdminRequest::Status), Ok(cluster::admin::AdminResponse::Status(s)) if s.leader.is_some() && s.nodes.len() == total))
    })
    .map_err(|e| anyhow!("{e} (logs: {}/node*/daemon.log)", dir.display()))?;

    let bricks: Vec<String> = (0..a.nodes)
        .map(|i| {
            let b = dir.join(format!("node{i}")).join("brick");
            std::fs::create_dir_all(&b).map(|_| format!("node{i}:{}", b.display()))
        })
        .collect::<std::io::Result<_>>()?;
    let n = a.nodes as u32;
    let (stripe, replica) = match a.layout {
        LayoutArg::Replica if n > 1 => (1, n),
        LayoutArg::Stripe => (n, 1),
        _ => (1, 1),
    };
    let vols = admin(&cluster::admin::AdminRequest::VolumeList)?;
    let exists = matches!(&vols, cluster::admin::AdminResponse::Volumes(v) if v.iter().any(|v| v.spec.name == "nas"));
    if !exists {
        let req = cluster::admin::AdminRequest::VolumeCreate {
            name: "nas".into(),
            stripe,
            replica,
            bricks,
            force: true,
            stripe_size: None,
        };
        expect_done(admin(&req)?)?;
        expect_done(admin(&cluster::admin::AdminRequest::VolumeStart {
            name: "nas".into(),
        })?)?;
    }
    wait("the bricks to come online", Duration::from_secs(20), || {
        Ok(
            matches!(admin(&cluster::admin::AdminRequest::VolumeStatus { name: Some("nas".into()) }),
            Ok(cluster::admin::AdminResponse::VolumeStatus(v)) if v.iter().all(|v| v.bricks.iter().all(|b| b.status.as_ref().is_some_and(|s| s.online)))),
        )
    })?;

    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let volume_source = format!("{}:nas", addrs[0]);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("mount.log"))?;
    let mut m = Command::new(&exe);
    m.args(["mount", "-f", "--key"])
        .arg(&key)
        .arg(&volume_source)
        .arg(&mnt);
    m.env("SHOAL_MOUNT_NOTIFY", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    let mut child = detached(&mut m).spawn().context("cannot start the mount")?;
    st.mount_pid = Some(child.id());
    st.mount = Some(mnt.clone());
    save(&dir, &st)?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no pipe to the mount"))?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
    if line.trim() != "ready" {
        bail!(
            "the mount failed: {} (see {}/mount.log)",
            line.trim(),
            dir.display()
        );
    }

    let env = format!(
        "# shoal sandbox in {d}: source this file to use it\nexport SHOAL_SOCKET={s}\nexport SHOAL_KEY={k}\nexport SHOAL_MOUNT={m}\nexport SHOAL_VOLUME={v}\nexport SHOAL_NODES=\"{n}\"\nexport SHOAL_NETNS=\"{ns}\"\n",
        d = dir.display(),
        s = socket.display(),
        k = key.display(),
        m = mnt.display(),
        v = volume_source,
        n = addrs.join(" "),
        ns = st.netns.join(" "),
    );
    std::fs::write(dir.join("sandbox.env"), env)?;
    let kind = match (a.layout, stripe, replica) {
        (_, s, _) if s > 1 => format!("stripe {s}"),
        (_, _, r) if r > 1 => format!("replica {r}"),
        _ => "distribute".into(),
    };
    println!(
        "shoal sandbox is up in {:.1} s: {} nodes{} ({}), volume nas ({kind}) mounted at {}",
        t0.elapsed().as_secs_f64(),
        a.nodes,
        if witness { " + a witness" } else { "" },
        if root {
            "each in its own network namespace"
        } else {
            "on loopback addresses"
        },
        mnt.display()
    );
    println!();
    println!("  source {}/sandbox.env", dir.display());
    println!("  shoal status                 # nodes, leader, generation");
    println!("  shoal volume info nas        # the volume and its bricks");
    println!("  cp -r /usr/share/doc $SHOAL_MOUNT/   # use the mounted volume");
    println!("  shoal sandbox down --dir {}", dir.display());
    Ok(())
}

fn expect_done(r: cluster::admin::AdminResponse) -> Result<()> {
    match r {
        cluster::admin::AdminResponse::Done(_) => Ok(()),
        cluster::admin::AdminResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// The last line of a log, for error messages.
fn last_line(p: &Path) -> String {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|t| t.lines().last().map(str::to_string))
        .unwrap_or_default()
}

fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let end = Instant::now() + timeout;
    while !cond()? {
        if Instant::now() > end {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(())
}

fn restrict(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Makes a command survive this process: its own session, no terminal.
fn detached(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        })
    }
}

/// A bridge on the host and, per node, a namespace joined to it by a veth pair.
fn setup_network(prefix: &str, addrs: &[String], st: &mut State) -> Result<()> {
    let br = format!("{prefix}br");
    sh("ip", &["link", "add", &br, "type", "bridge"])?;
    st.bridge = Some(br.clone());
    let host_addr = {
        let (net, _) = addrs[0]
            .rsplit_once('.')
            .ok_or_else(|| anyhow!("bad address"))?;
        format!("{net}.254/24")
    };
    sh("ip", &["addr", "add", &host_addr, "dev", &br])?;
    sh("ip", &["link", "set", &br, "up"])?;
    for (i, addr) in addrs.iter().enumerate() {
        let ns = format!("{prefix}n{i}");
        sh("ip", &["netns", "add", &ns])?;
        st.netns.push(ns.clone());
        let (host, peer) = (format!("{prefix}n{i}h"), format!("{prefix}n{i}c"));
        sh(
            "ip",
            &["link", "add", &host, "type", "veth", "peer", "name", &peer],
        )?;
        sh("ip", &["link", "set", &peer, "netns", &ns])?;
        sh("ip", &["link", "set", &host, "master", &br])?;
        sh("ip", &["link", "set", &host, "up"])?;
        sh("ip", &["-n", &ns, "link", "set", &peer, "name", "eth0"])?;
        sh(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ],
        )?;
        sh("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
    }
    Ok(())
}

/// Removes namespaces and links of this prefix left by an earlier run that did not finish.
fn sweep(prefix: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(ns) = line
                .split_whitespace()
                .next()
                .filter(|n| n.starts_with(prefix))
            {
                let _ = sh("ip", &["netns", "del", ns]);
            }
        }
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line
                .split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap_or("").to_string());
            if let Some(n) = name.filter(|n| n.starts_with(prefix)) {
                let _ = sh("ip", &["link", "del", &n]);
            }
        }
    }
}

fn kill_all(pids: &[u32]) {
    for &p in pids {
        // SAFETY: kill(2) on PIDs this sandbox recorded.
        unsafe { libc::kill(p as i32, libc::SIGTERM) };
    }
    let end = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &p in pids.iter().filter(|p| alive(**p)) {
        // SAFETY: as above.
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
}

pub fn down(dir: &Path) -> Result<()> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("no sandbox in {}", dir.display()))?;
    let text = std::fs::read_to_string(dir.join(STATE_FILE))
        .with_context(|| format!("no sandbox state in {}", dir.display()))?;
    let st: State = serde_json::from_str(&text).context("unreadable sandbox state")?;
    if let Some(m) = &st.mount {
        let _ = crate::cmd_mount::umount(m, true);
    }
    kill_all(&st.mount_pid.into_iter().collect::<Vec<_>>());
    kill_all(&st.daemons);
    for ns in &st.netns {
        let _ = sh("ip", &["netns", "del", ns]);
    }
    if let Some(br) = &st.bridge {
        let _ = sh("ip", &["link", "del", br]);
    }
    if rustix::process::geteuid().is_root() {
        sweep(&format!("sb{:04x}", tag(&dir)));
    }
    std::fs::remove_file(dir.join(STATE_FILE))?;
    let _ = std::fs::remove_file(dir.join("sandbox.env"));
    println!("shoal sandbox in {} is down", dir.display());
    Ok(())
}
