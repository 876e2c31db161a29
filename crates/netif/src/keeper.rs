//! The public addresses this machine holds, made to match what it should hold.
//!
//! Every address taken is first written to a file (`hosted`), so that whatever happens to the
//! daemon, what it took can be given back: by its watchdog the moment it dies, or by its next
//! start.

use crate::addrs::{Links, NetifError};
use crate::conns;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An address held here, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub iface: String,
    pub prefix: u8,
}

/// How long after a planned release its connections are reset (the new host takes the
/// address within milliseconds of the release).
const RESET_DELAY: Duration = Duration::from_millis(100);

pub struct Keeper {
    links: Links,
    file: PathBuf,
    /// The hosted file, kept open and rewritten in place: a rename over it, or a truncation
    /// to nothing, makes ext4 flush it (auto_da_alloc), which took tens of milliseconds on a
    /// busy disk, on the path between a release and the new host's take. Its readers (the
    /// watchdog, the next start) need the page cache, not the disk: a reboot takes the
    /// addresses away anyway.
    out: Mutex<Option<std::fs::File>>,
    held: Arc<Mutex<BTreeMap<IpAddr, Held>>>,
}

fn parse_line(l: &str) -> Option<(String, IpAddr, u8)> {
    let mut f = l.split_whitespace();
    let iface = f.next()?.to_string();
    let ip = f.next()?.parse().ok()?;
    let prefix = f.next()?.parse().ok()?;
    Some((iface, ip, prefix))
}

/// The addresses a hosted file lists.
pub fn read_hosted(file: &Path) -> Vec<(String, IpAddr, u8)> {
    std::fs::read_to_string(file)
        .map(|t| t.lines().filter_map(parse_line).collect())
        .unwrap_or_default()
}

/// Removes every address a hosted file lists (and empties it): for a watchdog whose daemon
/// died, and for a daemon starting after one that did not finish.
pub async fn give_back(links: &Links, file: &Path) -> Vec<IpAddr> {
    let mut gone = Vec::new();
    for (iface, ip, prefix) in read_hosted(file) {
        match links.del(&iface, ip, prefix).await {
            Ok(()) => gone.push(ip),
            Err(e) => tracing::warn!(%ip, %iface, "cannot remove a left-over public address: {e}"),
        }
    }
    let _ = std::fs::write(file, "");
    gone
}

impl Keeper {
    /// Opens the keeper, first giving back what an earlier run left behind.
    pub async fn open(links: Links, file: &Path) -> Keeper {
        let gone = give_back(&links, file).await;
        if !gone.is_empty() {
            tracing::warn!(?gone, "removed public addresses a previous run left behind");
        }
        Keeper {
            links,
            file: file.to_path_buf(),
            out: Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(false)
                    .open(file)
                    .map_err(|e| tracing::error!(file = %file.display(), "cannot open the hosted file: {e}"))
                    .ok(),
            ),
            held: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<IpAddr, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn held(&self) -> BTreeMap<IpAddr, Held> {
        self.lock().clone()
    }

    fn save(&self, held: &BTreeMap<IpAddr, Held>) {
        let text: String = held
            .iter()
            .map(|(ip, h)| format!("{} {ip} {}\n", h.iface, h.prefix))
            .collect();
        // Never empty (see `out`): a header line first.
        let text = format!("# public addresses held by shoal: IFACE ADDRESS PREFIX\n{text}");
        let out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let r = match out.as_ref() {
            Some(f) => std::os::unix::fs::FileExt::write_all_at(f, text.as_bytes(), 0)
                .and_then(|_| f.set_len(text.len() as u64)),
            None => Err(std::io::Error::other("not open")),
        };
        if let Err(e) = r {
            tracing::error!(file = %self.file.display(), "cannot record hosted addresses: {e}");
        }
    }

    /// Held addresses no longer on their interface (removed by someone else): forgotten, so
    /// that they are taken again.
    pub async fn forget_lost(&self) -> Result<Vec<IpAddr>, NetifError> {
        if self.lock().is_empty() {
            return Ok(Vec::new());
        }
        let present: BTreeSet<(String, IpAddr)> = self
            .links
            .list()
            .await?
            .into_iter()
            .map(|a| (a.iface, a.ip))
            .collect();
        let mut held = self.lock();
        let lost: Vec<IpAddr> = held
            .iter()
            .filter(|(ip, h)| !present.contains(&(h.iface.clone(), **ip)))
            .map(|(ip, _)| *ip)
            .collect();
        if !lost.is_empty() {
            for ip in &lost {
                held.remove(ip);
            }
            self.save(&held);
        }
        Ok(lost)
    }

    /// Whether `ip` is on this machine without this keeper holding it.
    pub async fn present_elsewhere(&self, ip: IpAddr) -> Result<Option<String>, NetifError> {
        if self.lock().contains_key(&ip) {
            return Ok(None);
        }
        Ok(self
            .links
            .list()
            .await?
            .into_iter()
            .find(|a| a.ip == ip)
            .map(|a| a.iface))
    }

    /// Takes `ip` on the first of `interfaces` that is up, announces it, and tickles the
    /// clients `conns` had with its previous host. Returns the interface.
    pub async fn take(
        &self,
        ip: IpAddr,
        prefix: u8,
        interfaces: &[String],
        up: &BTreeSet<String>,
        conns: &[(SocketAddr, SocketAddr)],
    ) -> Result<String, NetifError> {
        let iface = interfaces
            .iter()
            .find(|i| up.contains(*i))
            .cloned()
            .ok_or_else(|| NetifError::NoInterface(interfaces.join(",")))?;
        if let Some(other) = self.present_elsewhere(ip).await? {
            return Err(NetifError::Exists {
                addr: ip,
                iface: other,
            });
        }
        {
            // Recorded before it exists: a crash between the two leaves a harmless line.
            let mut held = self.lock();
            held.insert(
                ip,
                Held {
                    iface: iface.clone(),
                    prefix,
                },
            );
            self.save(&held);
        }
        if let Err(e) = self.links.add(&iface, ip, prefix).await {
            let mut held = self.lock();
            held.remove(&ip);
            self.save(&held);
            return Err(e);
        }
        // Announce at once (clients still send to the old host until they hear this), then
        // twice more, as switches and ARP caches may miss one. Off the runtime's threads:
        // packet sockets block on close.
        let announce_iface = iface.clone();
        tokio::spawn(async move {
            for delay in [0u64, 100, 300] {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let i = announce_iface.clone();
                match tokio::task::spawn_blocking(move || crate::raw::announce(&i, ip)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(%ip, iface = %announce_iface, "cannot announce: {e}"),
                    Err(e) => tracing::warn!(%ip, "announce task failed: {e}"),
                }
            }
        });
        for (local, remote) in conns.iter().filter(|(l, _)| l.ip() == ip) {
            if let Err(e) = crate::raw::tickle(*local, *remote) {
                tracing::debug!(%local, %remote, "tickle failed: {e}");
            }
        }
        Ok(iface)
    }

    /// Gives `ip` up: it is removed at once, then its connections here are reset in the
    /// background (so that services let go of their clients, who reconnect to wherever the
    /// address goes next).
    /// Gives an address up for a planned move: its connections are reset a moment later,
    /// once the new host has taken and announced it; a client reset at once would reconnect
    /// into the gap and wait a whole SYN retransmission (a second). Not if the address came
    /// back here meanwhile: those connections are new.
    pub async fn release(&self, ip: IpAddr) -> Result<Option<Held>, NetifError> {
        let h = self.drop_address(ip).await?;
        if h.is_some() {
            let held = self.held.clone();
            tokio::spawn(async move {
                tokio::time::sleep(RESET_DELAY).await;
                if !held.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&ip) {
                    conns::reset(ip).await;
                }
            });
        }
        Ok(h)
    }

    async fn drop_address(&self, ip: IpAddr) -> Result<Option<Held>, NetifError> {
        let Some(h) = self.lock().get(&ip).cloned() else {
            return Ok(None);
        };
        self.links.del(&h.iface, ip, h.prefix).await?;
        let mut held = self.lock();
        held.remove(&ip);
        self.save(&held);
        Ok(Some(h))
    }

    /// Gives everything up (lease lost, shutting down).
    pub async fn release_all(&self) -> Vec<(IpAddr, Held)> {
        let mut out = Vec::new();
        for ip in self.held().into_keys() {
            // No new host is waiting (or the process is going away): reset now.
            match self.drop_address(ip).await {
                Ok(Some(h)) => {
                    conns::reset(ip).await;
                    out.push((ip, h))
                }
                Ok(None) => {}
                Err(e) => tracing::error!(%ip, "cannot release: {e}"),
            }
        }
        out
    }

    pub async fn up_interfaces(&self) -> BTreeSet<String> {
        self.links.up_interfaces().await.unwrap_or_default()
    }

    /// Announces a held address again.
    pub fn announce(&self, ip: IpAddr) -> Result<(), String> {
        let Some(h) = self.lock().get(&ip).cloned() else {
            return Err(format!("{ip} is not held here"));
        };
        crate::raw::announce(&h.iface, ip).map_err(|e| e.to_string())
    }
}
