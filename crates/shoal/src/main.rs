//! `shoal`: the command line, the node daemon and the mount helper in one binary.
//! Wiring only: the work is done by the library crates.

mod cmd_brick;
mod cmd_cli;
mod cmd_mount;
mod cmd_sandbox;
mod daemon;
mod logging;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "shoal", version, about = "shoal: a high-availability clustered NAS")]
struct Cli {
    /// The local daemon's admin socket.
    #[arg(
        long,
        global = true,
        env = "SHOAL_SOCKET",
        default_value = "/run/shoal/shoal.sock"
    )]
    socket: PathBuf,
    /// Print read commands' answers as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Which node(s) a command is about: PNN or all (as ctdb's -n).
    #[arg(short = 'n', global = true, value_name = "PNN|all")]
    node: Option<cluster::admin::Target>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a new cluster key (install the same key on every node).
    Keygen {
        /// Where to write it (refuses to overwrite).
        #[arg(default_value = "/etc/shoal/cluster.key")]
        file: PathBuf,
    },
    /// Serve one local directory as a brick (standalone; `shoal daemon` does this for a node).
    Brick(cmd_brick::BrickArgs),
    /// Mount a volume.
    Mount(cmd_mount::MountArgs),
    /// Run this machine's node of a cluster.
    Daemon(daemon::DaemonArgs),
    /// (internal) Gives back a dead daemon's public addresses.
    #[command(hide = true)]
    Watchdog {
        #[arg(long)]
        hosted: PathBuf,
    },
    /// A whole cluster on this machine: `up`, `down`, or (plain) up until Ctrl-C.
    Sandbox(cmd_sandbox::SandboxArgs),
    /// Volumes: create, start, stop, delete, info, status, list, set.
    #[command(subcommand)]
    Volume(cmd_cli::VolumeCmd),
    /// Cluster membership: add or remove a node.
    #[command(subcommand)]
    Node(cmd_cli::NodeCmd),
    /// Nodes, their states, the leader and the generation (as ctdb status).
    Status,
    /// The nodes' private addresses.
    Listnodes,
    /// This node's PNN.
    Pnn,
    /// Round trip to a node (-n PNN|all).
    Ping,
    /// When the daemon started and when the leader last changed (-n PNN|all).
    Uptime,
    /// Public addresses and the node hosting each (-n PNN|all; -v for interfaces).
    Ip {
        #[arg(short, long)]
        verbose: bool,
    },
    /// Keep a node (-n, default this one) from hosting public addresses.
    Disable,
    /// Let a disabled node host public addresses again.
    Enable,
    /// Stop a node (-n): it stays a member but takes no part.
    Stop,
    /// Undo `stop`.
    Continue,
    /// Ban a node (-n) for SECONDS.
    Ban { seconds: u64 },
    /// Lift a ban.
    Unban,
    /// Move a public address to node PNN (a planned move: released first, then taken).
    Moveip { address: std::net::IpAddr, pnn: u64 },
    /// Re-read this node's public_addresses file.
    Reloadips,
    /// Add a public address to the cluster (kept in the replicated configuration).
    Addip {
        /// ADDR/PREFIX
        address: String,
        /// Interface(s), comma separated.
        interfaces: String,
    },
    /// Remove a public address from the cluster.
    Delip { address: std::net::IpAddr },
    /// Announce a public address again from the node hosting it.
    Gratarp { address: std::net::IpAddr },
    /// Set a tunable.
    Setvar { name: String, value: i64 },
    /// Show a tunable.
    Getvar { name: String },
    /// Show every tunable.
    Listvars,
    /// The last result of each event script (-n PNN|all).
    Scriptstatus,
    /// Unmount a mounted volume.
    Umount {
        dir: PathBuf,
        /// Detach even if busy.
        #[arg(short, long)]
        lazy: bool,
    },
}

fn main() {
    // Installed as /sbin/mount.shoal, this binary is mount(8)'s helper.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let result = if name.as_deref() == Some("mount.shoal") {
        cmd_mount::mount_helper(std::env::args_os().skip(1).collect())
    } else {
        run(Cli::parse())
    };
    if let Err(e) = result {
        eprintln!("shoal: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let ctx = cmd_cli::Ctx {
        socket: cli.socket,
        json: cli.json,
        target: cli.node,
    };
    match cli.cmd {
        Cmd::Daemon(args) => daemon::run(args),
        Cmd::Watchdog { hosted } => daemon::watchdog(&hosted),
        Cmd::Sandbox(args) => cmd_sandbox::run(args),
        Cmd::Volume(c) => cmd_cli::volume(&ctx, c),
        Cmd::Node(c) => cmd_cli::node(&ctx, c),
        Cmd::Status => cmd_cli::status(&ctx),
        Cmd::Listnodes => cmd_cli::listnodes(&ctx),
        Cmd::Pnn => cmd_cli::pnn(&ctx),
        Cmd::Ping => cmd_cli::ping(&ctx),
        Cmd::Uptime => cmd_cli::uptime(&ctx),
        Cmd::Ip { verbose } => cmd_cli::ip(&ctx, verbose),
        Cmd::Disable => cmd_cli::flags(&ctx, Some(true), None, None),
        Cmd::Enable => cmd_cli::flags(&ctx, Some(false), None, None),
        Cmd::Stop => cmd_cli::flags(&ctx, None, Some(true), None),
        Cmd::Continue => cmd_cli::flags(&ctx, None, Some(false), None),
        Cmd::Ban { seconds } => {
            cmd_cli::flags(&ctx, None, None, Some(cluster::admin::BanChange::For { seconds }))
        }
        Cmd::Unban => cmd_cli::flags(&ctx, None, None, Some(cluster::admin::BanChange::Lift)),
        Cmd::Moveip { address, pnn } => {
            cmd_cli::done(&ctx, &cluster::admin::AdminRequest::MoveIp { ip: address, pnn })
        }
        Cmd::Reloadips => cmd_cli::done(&ctx, &cluster::admin::AdminRequest::ReloadIps),
        Cmd::Addip { address, interfaces } => cmd_cli::addip(&ctx, &address, &interfaces),
        Cmd::Delip { address } => cmd_cli::done(&ctx, &cluster::admin::AdminRequest::DelIp { ip: address }),
        Cmd::Gratarp { address } => {
            cmd_cli::done(&ctx, &cluster::admin::AdminRequest::GratArp { ip: address })
        }
        Cmd::Setvar { name, value } => {
            cmd_cli::done(&ctx, &cluster::admin::AdminRequest::SetVar { name, value })
        }
        Cmd::Getvar { name } => cmd_cli::vars(&ctx, Some(name)),
        Cmd::Listvars => cmd_cli::vars(&ctx, None),
        Cmd::Scriptstatus => cmd_cli::scriptstatus(&ctx),
        Cmd::Keygen { file } => keygen(&file),
        Cmd::Brick(args) => cmd_brick::run(args),
        Cmd::Mount(args) => cmd_mount::run(args),
        Cmd::Umount { dir, lazy } => cmd_mount::umount(&dir, lazy),
    }
}

fn keygen(file: &std::path::Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let key = proto::auth::ClusterKey::generate();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", file.display()))?;
    f.write_all(key.to_text().as_bytes())?;
    println!(
        "wrote a new cluster key to {}; copy it to every node",
        file.display()
    );
    Ok(())
}
