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
    /// Seconds between two probes of the disk (a small synced write).
    #[arg(long, default_value_t = 5.0)]
    pub health_every: f64,
    /// Seconds a probe may take before the brick goes offline until the disk answers.
    #[arg(long, default_value_t = 20.0)]
    pub health_timeout: f64,
}

fn secs(what: &str, v: f64) -> Result<std::time::Duration> {
    if !(0.01..=3600.0).contains(&v) {
        anyhow::bail!("--{what} {v}: must be between 0.01 and 3600 seconds");
    }
    Ok(std::time::Duration::from_secs_f64(v))
}

pub fn run(args: BrickArgs) -> Result<()> {
    crate::logging::init("info");
    let key = proto::auth::ClusterKey::load(&args.key)?;
    let health = brick::health::HealthCheck {
        every: secs("health-every", args.health_every)?,
        timeout: secs("health-timeout", args.health_timeout)?,
    };
    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot make {}", args.dir.display()))?;
    let store = brick::Store::open_dir(&args.dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        // The first line of output says where the brick listens (scripts and tests read it).
        println!("listening on {}", listener.local_addr()?);
        let config = brick::ServerConfig {
            health,
            ..brick::ServerConfig::new(key)
        };
        let server = brick::BrickServer::new(store, config);
        let (_, never) = tokio::sync::watch::channel(false);
        tokio::select! {
            r = server.serve(listener, never) => r.context("brick server stopped"),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}
