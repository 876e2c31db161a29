//! Whether the brick's disk still answers.
//!
//! A disk that stops completing I/O (a failing drive, a hung controller or network block
//! device) leaves every request that touches it waiting for good, while the brick's
//! connections stay up and answer pings: its clients would wait with it. So the brick
//! writes and syncs a small file every `every`; when that takes longer than `timeout`, it
//! goes offline (ends its connections, turns new ones away) so that clients carry on with
//! the other copies, and comes back once the probe completes.

use crate::index::META_DIR;
use proto::Errno;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const PROBE_FILE: &str = "health";

/// How often the disk is probed, and how long a probe may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub every: Duration,
    pub timeout: Duration,
}

impl Default for HealthCheck {
    fn default() -> HealthCheck {
        HealthCheck {
            every: Duration::from_secs(5),
            timeout: Duration::from_secs(20),
        }
    }
}

/// One probe: a small write, synced to the disk.
fn probe(path: &Path) -> Result<(), Errno> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(Errno::from)?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut buf = Vec::with_capacity(40);
    let _ = writeln!(buf, "{now}");
    f.write_all_at(&buf, 0).map_err(Errno::from)?;
    f.sync_data().map_err(Errno::from)
}

/// Probes the disk under `root` from threads of its own (the runtime's may all be stuck in
/// the disk too) until `stop` turns true; `healthy` follows the outcome and `went_down`
/// runs each time the disk stops answering in time.
pub fn watch(
    root: PathBuf,
    check: HealthCheck,
    healthy: Arc<AtomicBool>,
    went_down: impl Fn() + Send + 'static,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let path = root.join(META_DIR).join(PROBE_FILE);
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            // A probe that fails (rather than hangs) is told once, not every time.
            let mut failing = false;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(check.every);
                let (tx, rx) = std::sync::mpsc::channel();
                let p = path.clone();
                let probing = std::thread::Builder::new()
                    .name("health-probe".into())
                    .spawn(move || {
                        let _ = tx.send(probe(&p));
                    });
                if let Err(e) = probing {
                    tracing::warn!("cannot start a disk health probe: {e}");
                    continue;
                }
                match rx.recv_timeout(check.timeout) {
                    Ok(Ok(())) => {
                        if std::mem::take(&mut failing) {
                            tracing::info!("disk health probe succeeds again");
                        }
                    }
                    Ok(Err(e)) => {
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!("disk health probe failed: {e}");
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                        tracing::warn!("disk health probe panicked")
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        tracing::error!(
                            "the disk has not answered for {:?}: brick offline until it does",
                            check.timeout
                        );
                        healthy.store(false, Ordering::SeqCst);
                        went_down();
                        // Back once the stuck probe finally completes.
                        let late = rx.recv();
                        healthy.store(true, Ordering::SeqCst);
                        tracing::warn!("the disk answers again ({late:?}): brick back online");
                    }
                }
            }
        })
        .map(|_| ())
}
