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
    /// A machine crash of node PNN: its processes killed (SIGKILL) and its links down.
    Kill {
        #[arg(long, default_value_os_t = default_dir())]
        dir: PathBuf,
        /// Kill only the node's `shoal daemon` (SIGKILL); the machine stays up.
        #[arg(long)]
        daemon: bool,
        pnn: usize,
    },
    /// Cut node PNN's network links (the node keeps running).
    Cut {
        #[arg(long, default_value_os_t = default_dir())]
        dir: PathBuf,
        pnn: usize,
    },
    /// Bring node PNN back: links up, daemon started if it is not running.
    Start {
        #[arg(long, default_value_os_t = default_dir())]
        dir: PathBuf,
        pnn: usize,
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

/// What `down` needs to undo, and what `kill`/`cut`/`start` need to find.
#[derive(Serialize, Deserialize, Default)]
struct State {
    netns: Vec<String>,
    bridge: Option<String>,
    public_bridge: Option<String>,
    /// Host-side ends of each node's links (private, then public if any).
    links: Vec<Vec<String>>,
    daemons: Vec<u32>,
    /// How each node's daemon is started.
    commands: Vec<Vec<String>>,
    mount_pid: Option<u32>,
    mount: Option<PathBuf>,
}

pub fn run(args: SandboxArgs) -> Result<()> {
    match args.cmd {
        Some(SandboxCmd::Up(up)) => up_cmd(&up),
        Some(SandboxCmd::Down { dir }) => down(&dir),
        Some(SandboxCmd::Kill { dir, pnn, daemon }) => {
            node_op(&dir, pnn, if daemon { Op::KillDaemon } else { Op::Kill })
        }
        Some(SandboxCmd::Cut { dir, pnn }) => node_op(&dir, pnn, Op::Cut),
        Some(SandboxCmd::Start { dir, pnn }) => node_op(&dir, pnn, Op::Start),
        None => {
            use std::io::Write;
            use tokio::signal::unix::{signal, SignalKind};
            up_cmd(&args.up)?;
            // Written without println!: a closed stdout must not skip the teardown below.
            let _ = writeln!(std::io::stdout(), "\nPress Ctrl-C to stop the sandbox.");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                // Ctrl-C, kill, or the terminal closing: all tear the sandbox down.
                let (mut term, mut hup) = (signal(SignalKind::terminate())?, signal(SignalKind::hangup())?);
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
                Ok::<_, std::io::Error>(())
            })?;
            let _ = writeln!(std::io::stdout());
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
    // Public addresses live on a bridge of their own; the host (.254) and a client namespace (.200) reach them.
    let public_net = format!("10.{}.{y}", 150 + x % 50);
    let publics: Vec<String> = if root {
        (0..a.nodes)
            .map(|i| format!("{public_net}.{}", 100 + i))
            .collect()
    } else {
        Vec::new()
    };
    let mut st = State::default();
    if root {
        sweep(&prefix);
        setup_network(&prefix, &addrs, a.nodes, &public_net, &mut st)?;
        save(&dir, &st)?;
        let text: String = publics.iter().map(|p| format!("{p}/24 eth1\n")).collect();
        std::fs::write(dir.join("public_addresses"), text)?;
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
        let events = home.join("events.d");
        std::fs::create_dir_all(&events)?;
        let is_witness = witness && i == total - 1;
        let publics_line = if root && !is_witness {
            format!(
                "public_addresses_file = \"{}\"\n",
                dir.join("public_addresses").display()
            )
        } else {
            String::new()
        };
        std::fs::write(
            &config,
            format!(
                "name = \"node{i}\"\naddress = \"{addr}\"\nstate_dir = \"{}\"\nkey = \"{}\"\nsocket = \"{}\"\ncluster_port = {CLUSTER_PORT}\nnodes = [{}]\nwitness = {is_witness}\nevent_dir = \"{}\"\n{publics_line}",
                home.join("state").display(),
                key.display(),
                home.join("shoal.sock").display(),
                nodes_list.join(", "),
                events.display(),
            ),
        )?;
        let mut argv: Vec<String> = Vec::new();
        if root {
            argv.extend([
                "ip".into(),
                "netns".into(),
                "exec".into(),
                format!("{prefix}n{i}"),
            ]);
        }
        argv.extend([
            exe.display().to_string(),
            "daemon".into(),
            "--config".into(),
            config.display().to_string(),
        ]);
        st.daemons.push(start_daemon(&argv, &home.join("daemon.log"))?);
        st.commands.push(argv);
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
    let exists =
        matches!(&vols, cluster::admin::AdminResponse::Volumes(v) if v.iter().any(|v| v.spec.name == "nas"));
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

    if !publics.is_empty() {
        let want = publics.len();
        wait(
            "every public address to be hosted",
            Duration::from_secs(20),
            || {
                Ok(matches!(
                    admin(&cluster::admin::AdminRequest::Ip { target: cluster::admin::Target::All }),
                    Ok(cluster::admin::AdminResponse::Ips(rows))
                        if rows.len() == want && rows.iter().all(|r| r.pnn.is_some() && !r.releasing)
                ))
            },
        )?;
    }
    let client_ns = if root {
        format!("{prefix}cl")
    } else {
        String::new()
    };
    let env = format!(
        "# shoal sandbox in {d}: source this file to use it\nexport SHOAL_SOCKET={s}\nexport SHOAL_KEY={k}\nexport SHOAL_MOUNT={m}\nexport SHOAL_VOLUME={v}\nexport SHOAL_NODES=\"{n}\"\nexport SHOAL_NETNS=\"{ns}\"\nexport SHOAL_PUBLIC=\"{p}\"\nexport SHOAL_CLIENT_NETNS={c}\n",
        p = publics.join(" "),
        c = client_ns,
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
    if root {
        println!(
            "  shoal ip                     # public addresses {} and their nodes",
            publics.join(" ")
        );
        println!(
            "  ip netns exec $SHOAL_CLIENT_NETNS ping {}   # a client on the public network",
            publics[0]
        );
        println!(
            "  shoal sandbox kill --dir {} 0  # crash node 0: its address moves",
            dir.display()
        );
        println!("  shoal sandbox start --dir {} 0", dir.display());
    }
    println!("  shoal sandbox down --dir {}", dir.display());
    Ok(())
}

fn start_daemon(argv: &[String], log: &Path) -> Result<u32> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    Ok(detached(&mut cmd)
        .spawn()
        .context("cannot start a node daemon")?
        .id())
}

enum Op {
    Kill,
    KillDaemon,
    Cut,
    Start,
}

fn node_op(dir: &Path, pnn: usize, op: Op) -> Result<()> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("no sandbox in {}", dir.display()))?;
    let text = std::fs::read_to_string(dir.join(STATE_FILE))
        .with_context(|| format!("no sandbox state in {}", dir.display()))?;
    let mut st: State = serde_json::from_str(&text).context("unreadable sandbox state")?;
    if pnn >= st.daemons.len() {
        bail!(
            "the sandbox has nodes 0 to {}",
            st.daemons.len().saturating_sub(1)
        );
    }
    let links = st.links.get(pnn).cloned().unwrap_or_default();
    if links.is_empty() && matches!(op, Op::Kill | Op::Cut) {
        bail!("kill and cut need the sandbox to run as root (nodes in namespaces)");
    }
    let set = |state: &str| -> Result<()> {
        for l in &links {
            sh("ip", &["link", "set", l, state])?;
        }
        Ok(())
    };
    match op {
        Op::Kill => {
            let home = dir.join(format!("node{pnn}"));
            let watchdog = std::fs::read_to_string(home.join("state").join("watchdog.pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok());
            // A power loss: links and processes go at once, nothing is given back.
            set("down")?;
            for pid in std::iter::once(st.daemons[pnn]).chain(watchdog) {
                // SAFETY: kill(2) on a PID this sandbox started (or its daemon's watchdog).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            // A machine that lost power comes back without the addresses it had.
            if let Some(ns) = st.netns.get(pnn) {
                let _ = sh("ip", &["-n", ns, "addr", "flush", "dev", "eth1"]);
            }
            println!("node {pnn}: processes killed, links down");
        }
        Op::KillDaemon => {
            // SAFETY: kill(2) on a PID this sandbox started.
            unsafe { libc::kill(st.daemons[pnn] as i32, libc::SIGKILL) };
            println!("node {pnn}: daemon killed");
        }
        Op::Cut => {
            set("down")?;
            println!("node {pnn}: links down");
        }
        Op::Start => {
            set("up")?;
            if !alive(st.daemons[pnn]) {
                let argv = st
                    .commands
                    .get(pnn)
                    .cloned()
                    .ok_or_else(|| anyhow!("no command recorded for node {pnn}"))?;
                st.daemons[pnn] = start_daemon(&argv, &dir.join(format!("node{pnn}")).join("daemon.log"))?;
                save(&dir, &st)?;
                println!("node {pnn}: links up, daemon started");
            } else {
                println!("node {pnn}: links up");
            }
        }
    }
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

/// A private bridge on the host and, per node, a namespace joined to it by a veth pair
/// (eth0); for data nodes also a second veth (eth1) on a public bridge, where a client
/// namespace lives too.
fn setup_network(
    prefix: &str,
    addrs: &[String],
    data_nodes: usize,
    public_net: &str,
    st: &mut State,
) -> Result<()> {
    let br = format!("{prefix}br");
    sh("ip", &["link", "add", &br, "type", "bridge"])?;
    st.bridge = Some(br.clone());
    let host_addr = {
        let (net, _) = addrs[0].rsplit_once('.').ok_or_else(|| anyhow!("bad address"))?;
        format!("{net}.254/24")
    };
    sh("ip", &["addr", "add", &host_addr, "dev", &br])?;
    sh("ip", &["link", "set", &br, "up"])?;
    let pb = format!("{prefix}pb");
    sh("ip", &["link", "add", &pb, "type", "bridge"])?;
    st.public_bridge = Some(pb.clone());
    sh(
        "ip",
        &["addr", "add", &format!("{public_net}.254/24"), "dev", &pb],
    )?;
    sh("ip", &["link", "set", &pb, "up"])?;
    let veth =
        |host: &str, peer: &str, bridge: &str, ns: &str, name: &str, addr: Option<&str>| -> Result<()> {
            sh("ip", &["link", "add", host, "type", "veth", "peer", "name", peer])?;
            sh("ip", &["link", "set", peer, "netns", ns])?;
            sh("ip", &["link", "set", host, "master", bridge])?;
            sh("ip", &["link", "set", host, "up"])?;
            sh("ip", &["-n", ns, "link", "set", peer, "name", name])?;
            if let Some(a) = addr {
                sh("ip", &["-n", ns, "addr", "add", a, "dev", name])?;
            }
            sh("ip", &["-n", ns, "link", "set", name, "up"])?;
            Ok(())
        };
    for (i, addr) in addrs.iter().enumerate() {
        let ns = format!("{prefix}n{i}");
        sh("ip", &["netns", "add", &ns])?;
        st.netns.push(ns.clone());
        sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        let (host, peer) = (format!("{prefix}n{i}h"), format!("{prefix}n{i}c"));
        veth(&host, &peer, &br, &ns, "eth0", Some(&format!("{addr}/24")))?;
        let mut links = vec![host];
        if i < data_nodes {
            let (host, peer) = (format!("{prefix}n{i}p"), format!("{prefix}n{i}q"));
            veth(&host, &peer, &pb, &ns, "eth1", None)?;
            links.push(host);
        }
        st.links.push(links);
    }
    let cl = format!("{prefix}cl");
    sh("ip", &["netns", "add", &cl])?;
    st.netns.push(cl.clone());
    sh("ip", &["-n", &cl, "link", "set", "lo", "up"])?;
    veth(
        &format!("{prefix}clh"),
        &format!("{prefix}clc"),
        &pb,
        &cl,
        "eth0",
        Some(&format!("{public_net}.200/24")),
    )?;
    Ok(())
}

/// Removes namespaces and links of this prefix left by an earlier run that did not finish.
fn sweep(prefix: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(ns) = line.split_whitespace().next().filter(|n| n.starts_with(prefix)) {
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

/// The address watchdogs of the sandbox's `nodes` daemons that are running.
fn watchdogs(dir: &Path, nodes: usize) -> Vec<u32> {
    (0..nodes)
        .filter_map(|pnn| {
            let file = dir.join(format!("node{pnn}")).join("state").join("watchdog.pid");
            std::fs::read_to_string(file).ok()?.trim().parse().ok()
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"watchdog"))
        })
        .collect()
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
    // Found while their daemons live (a PID read later might be someone else's by then).
    let dogs = watchdogs(&dir, st.daemons.len());
    kill_all(&st.daemons);
    // Each gives its node's addresses back once its daemon is gone, then ends.
    let end = Instant::now() + Duration::from_secs(5);
    while dogs.iter().any(|p| alive(*p)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    kill_all(&dogs.into_iter().filter(|p| alive(*p)).collect::<Vec<_>>());
    for ns in &st.netns {
        let _ = sh("ip", &["netns", "del", ns]);
    }
    for br in st.bridge.iter().chain(&st.public_bridge) {
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
