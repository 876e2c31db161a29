//! Mounting a volume.

use crate::fs::ShoalFs;
use client::Xlator;
use fuser::{Config, MountOption, SessionACL};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How a volume is mounted.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Shown as the mount's source (`HOST:VOLUME`).
    pub source: String,
    /// Let every user use the mount (as root; the kernel checks permissions).
    pub allow_other: bool,
    /// How long the kernel may trust attributes and names without asking.
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
    /// Threads reading requests from the kernel.
    pub threads: usize,
    pub read_only: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            source: "shoal".into(),
            allow_other: rustix::process::geteuid().is_root(),
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            threads: 2,
            read_only: false,
        }
    }
}

/// The session type a mount runs.
pub type Session = fuser::Session<ShoalFs>;

/// Mounts `vol` on `dir`. The session serves until it is unmounted or dropped.
pub fn mount(vol: Arc<dyn Xlator>, dir: &Path, opts: &MountOptions, rt: tokio::runtime::Handle) -> std::io::Result<Session> {
    let fs = ShoalFs::new(vol, rt, opts.attr_ttl, opts.entry_ttl);
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(opts.source.clone()),
        MountOption::Subtype("shoal".into()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
    ];
    if opts.read_only {
        config.mount_options.push(MountOption::RO);
    }
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = opts.threads > 1;
    let slot = fs.notifier_slot();
    let session = fuser::Session::new(fs, dir, &config)?;
    let _ = slot.set(session.notifier());
    Ok(session)
}
