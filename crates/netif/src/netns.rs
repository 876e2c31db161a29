//! Named network namespaces (`ip netns`), entered for a moment by the calling thread: for
//! tools and tests that watch several nodes of one machine, each in its own namespace.

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

fn setns(f: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) on a namespace file we hold open; it only changes this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` with this thread in network namespace `name` (as made by `ip netns add`), then
/// back in its own. Sockets made inside stay in that namespace.
pub fn in_netns<T>(name: &str, f: impl FnOnce() -> T) -> std::io::Result<T> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("bad namespace name {name:?}"),
        ));
    }
    let own = File::open("/proc/thread-self/ns/net")?;
    let target = File::open(format!("/run/netns/{name}"))?;
    setns(&target)?;
    let out = f();
    setns(&own)?;
    Ok(out)
}

/// The IPv4 addresses on interface `iface` in this thread's namespace, up or down.
pub fn ipv4_on(iface: &str) -> std::io::Result<BTreeSet<Ipv4Addr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = BTreeSet::new();
    let mut p = head;
    while !p.is_null() {
        // SAFETY: `p` walks the list getifaddrs returned, which stays valid until freed.
        let ifa = unsafe { &*p };
        if !ifa.ifa_addr.is_null() && !ifa.ifa_name.is_null() {
            // SAFETY: non-null pointers into that list: a sockaddr and a C string.
            let (family, name) = unsafe { ((*ifa.ifa_addr).sa_family, CStr::from_ptr(ifa.ifa_name)) };
            if i32::from(family) == libc::AF_INET && name.to_bytes() == iface.as_bytes() {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.insert(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
        }
        p = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs gave us, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_its_address_and_bad_names_are_refused() {
        let lo = ipv4_on("lo").expect("getifaddrs");
        assert!(lo.contains(&Ipv4Addr::LOCALHOST));
        assert!(in_netns("../x", || ()).is_err());
        assert!(in_netns("", || ()).is_err());
    }
}
