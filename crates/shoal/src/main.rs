//! `shoal`: the command line, the node daemon and the mount helper in one binary.
//! Wiring only: the work is done by the library crates.

mod cmd_brick;
mod cmd_mount;
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
    match cli.cmd {
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
