//! Addresses on interfaces, through rtnetlink.

use futures_util::stream::TryStreamExt;
use rtnetlink::packet_core::ErrorMessage;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::{AddressMessageBuilder, Handle};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an interface or address operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetifError {
    #[error("no interface named {0}")]
    NoInterface(String),
    #[error("{addr} is already present on {iface}")]
    Exists { addr: IpAddr, iface: String },
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(ErrorMessage { code: Some(c), .. }) => Some(-c.get()),
        _ => None,
    }
}

fn nl(e: rtnetlink::Error) -> NetifError {
    NetifError::Netlink(e.to_string())
}

/// An address as found on an interface.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Assigned {
    pub iface: String,
    pub ip: IpAddr,
    pub prefix: u8,
}

/// A netlink connection in this process's network namespace.
#[derive(Clone)]
pub struct Links {
    handle: Handle,
}

impl Links {
    /// Opens the connection (inside a tokio runtime).
    pub fn open() -> Result<Links, NetifError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Links { handle })
    }

    async fn index(&self, iface: &str) -> Result<u32, NetifError> {
        let mut links = self.handle.link().get().match_name(iface.to_string()).execute();
        match links.try_next().await {
            Ok(Some(m)) => Ok(m.header.index),
            Ok(None) => Err(NetifError::NoInterface(iface.into())),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Err(NetifError::NoInterface(iface.into())),
            Err(e) => Err(nl(e)),
        }
    }

    /// Interfaces that are up and running, by name.
    pub async fn up_interfaces(&self) -> Result<BTreeSet<String>, NetifError> {
        let mut out = BTreeSet::new();
        let mut links = self.handle.link().get().execute();
        while let Some(l) = links.try_next().await.map_err(nl)? {
            let f = l.header.flags;
            if !(f.contains(LinkFlags::Up) && f.contains(LinkFlags::Running)) {
                continue;
            }
            for a in l.attributes {
                if let LinkAttribute::IfName(n) = a {
                    out.insert(n);
                }
            }
        }
        Ok(out)
    }

    /// Adds an address. Present already is an error ([`NetifError::Exists`]).
    pub async fn add(&self, iface: &str, ip: IpAddr, prefix: u8) -> Result<(), NetifError> {
        let index = self.index(iface).await?;
        if ip.is_ipv4() {
            promote_secondaries(iface);
        }
        match self.handle.address().add(index, ip, prefix).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Err(NetifError::Exists {
                addr: ip,
                iface: iface.into(),
            }),
            Err(e) => Err(nl(e)),
        }
    }

    /// Removes an address; absent already is fine.
    pub async fn del(&self, iface: &str, ip: IpAddr, prefix: u8) -> Result<(), NetifError> {
        let index = match self.index(iface).await {
            Ok(i) => i,
            Err(NetifError::NoInterface(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let msg = match ip {
            IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(index)
                .address(a, prefix)
                .build(),
            IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
                .index(index)
                .address(a, prefix)
                .build(),
        };
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL | libc::ENODEV)) => Ok(()),
            Err(e) => Err(nl(e)),
        }
    }

    /// Every address on every interface.
    pub async fn list(&self) -> Result<Vec<Assigned>, NetifError> {
        let mut names = std::collections::HashMap::new();
        let mut links = self.handle.link().get().execute();
        while let Some(l) = links.try_next().await.map_err(nl)? {
            for a in l.attributes {
                if let LinkAttribute::IfName(n) = a {
                    names.insert(l.header.index, n);
                    break;
                }
            }
        }
        let mut out = Vec::new();
        let mut addrs = self.handle.address().get().execute();
        while let Some(m) = addrs.try_next().await.map_err(nl)? {
            let (mut local, mut address) = (None, None);
            for a in &m.attributes {
                match a {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                out.push(Assigned {
                    iface: names.get(&m.header.index).cloned().unwrap_or_default(),
                    ip,
                    prefix: m.header.prefix_len,
                });
            }
        }
        Ok(out)
    }
}

/// Without this, removing the first IPv4 address of a subnet from an interface silently
/// removes every other address of that subnet with it (the kernel's "secondaries"), which
/// would take other public addresses down with one that moves.
fn promote_secondaries(iface: &str) {
    if iface.contains('/') || iface.starts_with('.') {
        return;
    }
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/promote_secondaries");
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::warn!(%iface, "cannot set promote_secondaries: {e}");
    }
}
