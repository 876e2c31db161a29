//! Sending the hand-made packets: AF_PACKET for ARP, raw ICMPv6 and raw TCP sockets for the
//! rest. All need CAP_NET_RAW.

use crate::packets;
use std::ffi::CString;
use std::io::{Error, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn check(r: libc::c_int) -> Result<libc::c_int> {
    if r < 0 {
        Err(Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is owned at once.
    let fd = check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An interface's index.
pub fn ifindex(iface: &str) -> Result<u32> {
    let name = CString::new(iface).map_err(|_| Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: name is a valid C string.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if i == 0 {
        Err(Error::last_os_error())
    } else {
        Ok(i)
    }
}

/// An interface's hardware address.
pub fn mac(iface: &str) -> Result<[u8; 6]> {
    if iface.len() >= libc::IFNAMSIZ {
        return Err(Error::from_raw_os_error(libc::EINVAL));
    }
    let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, b) in req.ifr_name.iter_mut().zip(iface.as_bytes()) {
        *d = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills req.ifr_ifru with a sockaddr; req outlives the call.
    check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) })?;
    // SAFETY: after SIOCGIFHWADDR the union holds ifru_hwaddr.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut m = [0u8; 6];
    for (d, b) in m.iter_mut().zip(sa.sa_data.iter()) {
        *d = *b as u8;
    }
    Ok(m)
}

/// Announces that `ip` now lives on `iface` (ARP request and reply, or an IPv6 neighbour
/// advertisement).
pub fn announce(iface: &str, ip: IpAddr) -> Result<()> {
    let m = mac(iface)?;
    let index = ifindex(iface)?;
    match ip {
        IpAddr::V4(v4) => {
            // One socket for both: closing a packet socket waits for an RCU grace period
            // (tens of milliseconds on a busy machine).
            let proto = (libc::ETH_P_ARP as u16).to_be() as libc::c_int;
            let s = socket(libc::AF_PACKET, libc::SOCK_RAW, proto)?;
            garp(&s, index, m, v4, false)?;
            garp(&s, index, m, v4, true)
        }
        IpAddr::V6(v6) => neighbour_advert(index, m, v6),
    }
}

fn garp(s: &OwnedFd, index: u32, mac: [u8; 6], ip: Ipv4Addr, reply: bool) -> Result<()> {
    let frame = packets::gratuitous_arp(mac, ip, reply);
    // SAFETY: sockaddr_ll is plain data.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: frame and to are valid for the lengths given.
    check(unsafe {
        libc::sendto(
            s.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) as libc::c_int
    })?;
    Ok(())
}

fn neighbour_advert(index: u32, mac: [u8; 6], ip: Ipv6Addr) -> Result<()> {
    let s = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)?;
    let hops: libc::c_int = 255;
    let set = |opt, v: &libc::c_int| {
        // SAFETY: v points to an int for the duration of the call.
        check(unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IPV6,
                opt,
                (v as *const libc::c_int).cast(),
                4,
            )
        })
    };
    set(libc::IPV6_MULTICAST_HOPS, &hops)?;
    set(libc::IPV6_MULTICAST_IF, &(index as libc::c_int))?;
    // SAFETY: sockaddr_in6 is plain data.
    let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    from.sin6_family = libc::AF_INET6 as u16;
    from.sin6_addr.s6_addr = ip.octets();
    // SAFETY: from is a valid sockaddr_in6.
    check(unsafe {
        libc::bind(
            s.as_raw_fd(),
            (&from as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as u32,
        )
    })?;
    let body = packets::neighbour_advert(mac, ip);
    let mut to = from;
    to.sin6_addr.s6_addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
    to.sin6_scope_id = index;
    // SAFETY: body and to are valid for the lengths given.
    check(unsafe {
        libc::sendto(
            s.as_raw_fd(),
            body.as_ptr().cast(),
            body.len(),
            0,
            (&to as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as u32,
        ) as libc::c_int
    })?;
    Ok(())
}

/// Sends a tickle ACK (see [`packets::tickle_ack`]) from `local` (a public address on this
/// node) to a client.
pub fn tickle(local: SocketAddr, remote: SocketAddr) -> Result<()> {
    let seg =
        packets::tickle_ack(local, remote).ok_or_else(|| Error::from_raw_os_error(libc::EAFNOSUPPORT))?;
    match (local, remote) {
        (SocketAddr::V4(l), SocketAddr::V4(r)) => {
            let s = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP)?;
            let sa = |a: std::net::SocketAddrV4| {
                // SAFETY: sockaddr_in is plain data.
                let mut x: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                x.sin_family = libc::AF_INET as u16;
                x.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                x
            };
            let (from, to) = (sa(l), sa(r));
            // SAFETY: from/to are valid sockaddr_in; seg lives across the calls.
            check(unsafe {
                libc::bind(
                    s.as_raw_fd(),
                    (&from as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            })?;
            check(unsafe {
                libc::sendto(
                    s.as_raw_fd(),
                    seg.as_ptr().cast(),
                    seg.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                ) as libc::c_int
            })?;
        }
        (SocketAddr::V6(l), SocketAddr::V6(r)) => {
            let s = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_TCP)?;
            let sa = |a: std::net::SocketAddrV6| {
                // SAFETY: sockaddr_in6 is plain data.
                let mut x: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                x.sin6_family = libc::AF_INET6 as u16;
                x.sin6_addr.s6_addr = a.ip().octets();
                x
            };
            let (from, to) = (sa(l), sa(r));
            // SAFETY: as above.
            check(unsafe {
                libc::bind(
                    s.as_raw_fd(),
                    (&from as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as u32,
                )
            })?;
            check(unsafe {
                libc::sendto(
                    s.as_raw_fd(),
                    seg.as_ptr().cast(),
                    seg.len(),
                    0,
                    (&to as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as u32,
                ) as libc::c_int
            })?;
        }
        _ => return Err(Error::from_raw_os_error(libc::EAFNOSUPPORT)),
    }
    Ok(())
}
