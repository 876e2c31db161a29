//! TCP connections to public addresses, as the kernel lists them, and resetting them.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One established connection: our (public) end and the client's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Conn {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

fn parse_v4(hex: &str) -> Option<Ipv4Addr> {
    let v = u32::from_str_radix(hex, 16).ok()?;
    // /proc prints the address as the host-order integer of network-order bytes.
    Some(Ipv4Addr::from(v.to_le_bytes()))
}

fn parse_v6(hex: &str) -> Option<Ipv6Addr> {
    if hex.len() != 32 {
        return None;
    }
    let mut b = [0u8; 16];
    for w in 0..4 {
        let v = u32::from_str_radix(&hex[w * 8..w * 8 + 8], 16).ok()?;
        b[w * 4..w * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    Some(Ipv6Addr::from(b))
}

fn parse_endpoint(s: &str, v6: bool) -> Option<SocketAddr> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let ip = if v6 {
        IpAddr::V6(parse_v6(a)?)
    } else {
        IpAddr::V4(parse_v4(a)?)
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses one /proc/net/tcp{,6} table, keeping established connections whose local address
/// is in `locals`.
pub fn parse_table(text: &str, v6: bool, locals: &BTreeSet<IpAddr>) -> Vec<Conn> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(3) != Some(&"01") {
                return None; // not ESTABLISHED
            }
            let local = parse_endpoint(f.get(1)?, v6)?;
            let remote = parse_endpoint(f.get(2)?, v6)?;
            locals.contains(&local.ip()).then_some(Conn { local, remote })
        })
        .collect()
}

/// Established TCP connections to any of `locals` in this network namespace.
pub fn established(locals: &BTreeSet<IpAddr>) -> Vec<Conn> {
    let mut out = Vec::new();
    for (path, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        if let Ok(t) = std::fs::read_to_string(path) {
            out.extend(parse_table(&t, v6, locals));
        }
    }
    out
}

/// Resets every TCP connection whose local end is `ip` (the kernel sends the peers a reset),
/// through sock_diag's destroy as `ss -K` does it.
pub async fn reset(ip: IpAddr) {
    let r = tokio::process::Command::new("ss")
        .args(["-K", "-t", "state", "established", "src", &ip.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    if let Err(e) = r {
        tracing::warn!(%ip, "cannot reset connections (ss -K): {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_tables_parse() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 6400010A:01BD C800010A:C822 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0\n   1: 6400010A:01BD C800010A:C823 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n";
        let locals: BTreeSet<IpAddr> = ["10.1.0.100".parse().unwrap()].into();
        let c = parse_table(v4, false, &locals);
        assert_eq!(
            c,
            vec![Conn {
                local: "10.1.0.100:445".parse().unwrap(),
                remote: "10.1.0.200:51234".parse().unwrap()
            }]
        );
        assert!(parse_table(v4, false, &BTreeSet::new()).is_empty());
        let v6 =
            "header\n   0: 000080FE00000000FF97A6B2C3D4E5F6:0016 0000000000000000000000000100000:1234 01 x\n";
        assert!(parse_table(v6, true, &BTreeSet::new()).is_empty());
        assert_eq!(
            parse_v6("00000000000000000000000001000000"),
            Some("::1".parse().unwrap())
        );
    }
}
