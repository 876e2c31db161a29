//! Lanes: a client's further connections to a peer, one per CPU, each served on that CPU at
//! both ends.
//!
//! On this machine a request's time is mostly threads waking each other across CPUs (an
//! inter-processor interrupt each, tens of µs in a VM): the caller, the mount's thread, the
//! connection's reader, the brick's thread and back. A thread that serves one CPU's requests
//! (a FUSE over io_uring queue's, pinned) says so here ([`serve_here`]); its calls to a peer
//! that takes lanes then go on a connection of their own whose replies are read by that same
//! thread, and the peer serves that connection on a thread pinned to the same CPU. A lane
//! joins the session of the client's main connection: what it opens, locks or changes is
//! the main connection's, and it ends with it. Notices, pings and everything sent from other
//! threads stay on the main connection.
//!
//! `SHOAL_LANES=off` in a client's environment keeps every call on the main connection.

use std::cell::RefCell;
use std::sync::OnceLock;

/// The handshake role of a lane; its name is [`name`]'s.
pub const ROLE: &str = "lane";

/// Calls carrying more data than this keep to the main connection: storing it is work the
/// peer had better do on another CPU than the caller's, which goes on writing meanwhile (a
/// sequential writer on lanes measured a quarter slower).
pub const MAX_DATA: usize = 64 << 10;

thread_local! {
    static HERE: RefCell<Option<(usize, tokio::runtime::Handle)>> = const { RefCell::new(None) };
}

/// This thread serves CPU `cpu`'s requests, with `home` its own runtime: lanes made for its
/// calls are read there.
pub fn serve_here(cpu: usize, home: tokio::runtime::Handle) {
    HERE.with(|h| *h.borrow_mut() = Some((cpu, home)));
}

/// The CPU this thread serves and its runtime, if it serves one and lanes are not off.
pub fn here() -> Option<(usize, tokio::runtime::Handle)> {
    static ON: OnceLock<bool> = OnceLock::new();
    if !*ON.get_or_init(|| std::env::var("SHOAL_LANES").map_or(true, |v| v != "off")) {
        return None;
    }
    HERE.with(|h| h.borrow().clone())
}

/// The handshake name of a lane for CPU `cpu` of the session `session`.
pub fn name(session: u128, cpu: usize) -> String {
    format!("{session:032x}:{cpu}")
}

/// The session and CPU a lane's handshake name says; `None` if it is not one.
pub fn parse(name: &str) -> Option<(u128, usize)> {
    let (session, cpu) = name.split_once(':')?;
    if session.len() != 32 {
        return None;
    }
    Some((u128::from_str_radix(session, 16).ok()?, cpu.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_junk_is_refused() {
        let token = 0x0123_4567_89ab_cdef_0011_2233_4455_6677;
        assert_eq!(parse(&name(token, 7)), Some((token, 7)));
        for junk in [
            "",
            ":",
            "12:3",
            "0123456789abcdef0011223344556677",
            "0123456789abcdef001122334455667g:1",
            "0123456789abcdef0011223344556677:-1",
            "0123456789abcdef0011223344556677:x",
        ] {
            assert_eq!(parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn a_thread_serves_no_cpu_until_it_says() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(here().is_none());
                serve_here(3, rt.handle().clone());
                assert_eq!(here().map(|(cpu, _)| cpu), Some(3));
            });
        });
        assert!(here().is_none());
    }
}
