//! `shoal brick`: serve a directory as a brick.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct BrickArgs {
    /// The directory to serve (made if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "0.0.0.0:0")]
    pub listen: String,
    /// The cluster key file.
    #[arg(long, env = "SHOAL_KEY", default_value = "/etc/shoal/cluster.key")]
    pub key: PathBuf,
}

pub fn run(args: BrickArgs) -> Result<()> {
    crate::logging::init("info");
    let key = proto::auth::ClusterKey::load(&args.key)?;
    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot make {}", args.dir.display()))?;
    let store = brick::Store::open_dir(&args.dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        // The first line of output says where the brick listens (scripts and tests read it).
        println!("listening on {}", listener.local_addr()?);
        let server = brick::BrickServer::new(store, brick::ServerConfig::new(key));
        let (_, never) = tokio::sync::watch::channel(false);
        tokio::select! {
            r = server.serve(listener, never) => r.context("brick server stopped"),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}
