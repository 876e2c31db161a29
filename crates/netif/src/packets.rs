//! Packets written by hand: a gratuitous ARP, an IPv6 unsolicited neighbour advertisement,
//! and a TCP "tickle" ACK. Each is a few dozen bytes of fixed layout that no crate of the
//! ecosystem builds without pulling in a whole packet framework.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// An Ethernet frame carrying an ARP message announcing that `ip` is at `mac`. `reply`
/// chooses an ARP reply (oper 2) over a request (oper 1); CTDB sends both, as some hosts
/// only heed one.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr, reply: bool) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]); // broadcast
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x0806u16.to_be_bytes()); // ARP
    f.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&(if reply { 2u16 } else { 1u16 }).to_be_bytes());
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&if reply { mac } else { [0; 6] });
    f.extend_from_slice(&ip.octets());
    f
}

/// The ICMPv6 body of an unsolicited neighbour advertisement for `ip` at `mac` (the kernel
/// fills in the checksum on ICMPv6 raw sockets).
pub fn neighbour_advert(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&[136, 0, 0, 0]); // type, code, checksum
    p.extend_from_slice(&0x2000_0000u32.to_be_bytes()); // Override
    p.extend_from_slice(&ip.octets());
    p.extend_from_slice(&[2, 1]); // target link-layer address, 8 bytes
    p.extend_from_slice(&mac);
    p
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn add_words(sum: &mut u32, bytes: &[u8]) {
    for c in bytes.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        *sum += w as u32;
    }
}

/// A bare TCP ACK from `local` to `remote` with sequence and acknowledgement 0: the client
/// answers it with its real sequence numbers, to which a node without the connection answers
/// with a reset, so the client reconnects at once instead of waiting out retransmissions.
/// Returns the TCP segment (header only) with its checksum.
pub fn tickle_ack(local: SocketAddr, remote: SocketAddr) -> Option<Vec<u8>> {
    let mut seg = Vec::with_capacity(20);
    seg.extend_from_slice(&local.port().to_be_bytes());
    seg.extend_from_slice(&remote.port().to_be_bytes());
    seg.extend_from_slice(&0u32.to_be_bytes()); // seq
    seg.extend_from_slice(&0u32.to_be_bytes()); // ack
    seg.push(5 << 4); // data offset: 5 words
    seg.push(0x10); // ACK
    seg.extend_from_slice(&1234u16.to_be_bytes()); // window
    seg.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
    let mut sum = 0u32;
    match (local, remote) {
        (SocketAddr::V4(l), SocketAddr::V4(r)) => {
            add_words(&mut sum, &l.ip().octets());
            add_words(&mut sum, &r.ip().octets());
            sum += 6; // protocol
            sum += seg.len() as u32;
        }
        (SocketAddr::V6(l), SocketAddr::V6(r)) => {
            add_words(&mut sum, &l.ip().octets());
            add_words(&mut sum, &r.ip().octets());
            sum += seg.len() as u32;
            sum += 6;
        }
        _ => return None,
    }
    add_words(&mut sum, &seg);
    let c = fold(sum);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
    Some(seg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_layout() {
        let mac = [2, 0, 0, 0, 0, 1];
        let f = gratuitous_arp(mac, Ipv4Addr::new(10, 0, 0, 7), false);
        assert_eq!(f.len(), 42);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[28..32], &[10, 0, 0, 7]);
        assert_eq!(&f[38..42], &[10, 0, 0, 7]);
        assert_eq!(gratuitous_arp(mac, Ipv4Addr::new(10, 0, 0, 7), true)[32..38], mac);
    }

    #[test]
    fn tickle_checksum_verifies() {
        let l: SocketAddr = "10.1.0.100:445".parse().unwrap();
        let r: SocketAddr = "10.1.0.200:51234".parse().unwrap();
        let seg = tickle_ack(l, r).unwrap();
        // Summing the pseudo header and the segment, checksum included, gives 0xffff.
        let mut sum = 0u32;
        add_words(&mut sum, &[10, 1, 0, 100]);
        add_words(&mut sum, &[10, 1, 0, 200]);
        sum += 6 + 20;
        add_words(&mut sum, &seg);
        assert_eq!(fold(sum), 0);
        assert!(tickle_ack(l, "[::1]:1".parse().unwrap()).is_none());
    }
}
