//! `shoal`: the command line, the node daemon and the mount helper in one binary.
//! Wiring only: the work is done by the library crates.

mod cmd_brick;
mod cmd_cli;
mod cmd_daemon;
mod cmd_mount;
mod cmd_sandbox;
mod logging;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "shoal: a high-availability clustered NAS"
)]
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
    Daemon(cmd_daemon::DaemonArgs),
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
        Cmd::Daemon(args) => cmd_daemon::run(args),
        Cmd::Sandbox(args) => cmd_sandbox::run(args),
        Cmd::Volume(c) => cmd_cli::volume(&ctx, c),
        Cmd::Node(c) => cmd_cli::node(&ctx, c),
        Cmd::Status => cmd_cli::status(&ctx),
        Cmd::Listnodes => cmd_cli::listnodes(&ctx),
        Cmd::Pnn => cmd_cli::pnn(&ctx),
        Cmd::Ping => cmd_cli::ping(&ctx),
        Cmd::Uptime => cmd_cli::uptime(&ctx),
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
