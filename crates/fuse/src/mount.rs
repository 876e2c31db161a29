//! Mounting a volume.

use crate::fs::ShoalFs;
use crate::kernel::MountSpec;
use client::Xlator;
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
    /// How long the kernel may trust attributes and names without asking. Bricks announce
    /// other clients' changes, which drop what they touch at once; these bound how long
    /// anything can stay stale if an announcement is lost with its connection.
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
    /// Threads reading requests from the kernel.
    pub threads: usize,
    pub read_only: bool,
    /// Take the kernel's requests by FUSE over io_uring when it offers it (the fuse
    /// module's `enable_uring`).
    pub uring: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            source: "shoal".into(),
            allow_other: rustix::process::geteuid().is_root(),
            attr_ttl: Duration::from_secs(10),
            entry_ttl: Duration::from_secs(10),
            threads: 2,
            read_only: false,
            uring: true,
        }
    }
}

/// The session type a mount runs.
pub type Session = crate::kernel::Session<ShoalFs>;

/// Mounts `vol` on `dir`. The session serves until it is unmounted or dropped. `announce`
/// is given where the volume's announcements of other clients' changes must go
/// ([`client::Volume::on_stale`]).
pub fn mount(
    vol: Arc<dyn Xlator>,
    dir: &Path,
    opts: &MountOptions,
    rt: tokio::runtime::Handle,
    announce: &dyn Fn(client::StaleFn),
) -> std::io::Result<Session> {
    let fs = ShoalFs::new(vol, rt, opts.attr_ttl, opts.entry_ttl);
    announce(fs.stale_fn());
    let root = rustix::process::geteuid().is_root();
    let spec = MountSpec {
        fsname: opts.source.clone(),
        subtype: "shoal".into(),
        // (fusermount3 refuses allow_other to users unless fuse.conf allows it.)
        allow_other: opts.allow_other && root,
        default_permissions: true,
        read_only: opts.read_only,
        // Device nodes and set-id programs work as on a local disk; fusermount refuses these
        // to other users.
        dev_suid: root,
        threads: opts.threads,
        uring: opts.uring,
    };
    let slot = fs.notifier_slot();
    // Resolved before mounting: once mounted, resolving it would ask this very session.
    let canonical = dir.canonicalize()?;
    let mut session = Session::mount(fs, &canonical, &spec)?;
    let _ = slot.set(session.notifier());
    // (After INIT: the kernel sets the readahead from its answer.)
    session.on_init(move || raise_readahead(&canonical));
    Ok(session)
}

/// The kernel caps a FUSE mount's readahead at 128 KiB whatever the file system asks; a
/// network volume streams far better with 1 MiB. Needs root (sysfs); harmless without.
/// The device number comes from mountinfo: a stat of the mount point would wait on the
/// session that is not serving yet.
pub fn raise_readahead(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let want = dir.to_string_lossy().replace(' ', "\\040");
    let dev = info.lines().rev().find_map(|l| {
        let mut f = l.split(' ');
        let dev = f.nth(2)?;
        let mountpoint = f.nth(1)?;
        (mountpoint == want).then(|| dev.to_string())
    });
    let Some(dev) = dev else { return };
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    if let Err(e) = std::fs::write(&path, "1024") {
        tracing::debug!("cannot raise readahead ({path}): {e}");
    }
}
