//! The byte streams connections run on: TCP, or a Unix socket when the peer listens in the
//! same network namespace.
//!
//! Every server that listens on a TCP address also listens on the abstract Unix socket named
//! after that address (`shoal:IP:PORT`, `shoal:[IP]:PORT` for IPv6). Abstract names belong to
//! a network namespace, so a client finding the name for an address configured on one of
//! its namespace's interfaces (or a loopback address) has found a process of this host that
//! listens on it. Abstract names carry no permissions, so the client also requires the
//! listener to run as root or as itself (SO_PEERCRED), and the handshake is the same as on
//! TCP; if it fails there, the client tries TCP. A loopback TCP round trip costs about half
//! again as much as a Unix one on a small machine, and a node's mount reaches its own bricks
//! that way on every request.
//!
//! `SHOAL_LOCAL_SOCKETS=off` in a client's environment keeps it on TCP.

use std::io::{ErrorKind, IoSlice};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{tcp, TcpListener, TcpStream, UnixListener, UnixStream};

/// Send buffer asked for on a Unix connection (the kernel doubles it): the default, about
/// 200 KiB, would split a 1 MiB frame into several wake-ups of the reader. A Unix socket
/// counts as writable again only once three quarters of it are free.
const UNIX_SNDBUF: usize = 4 << 20;

/// The abstract socket name of a server listening on `addr`.
fn local_name(addr: &SocketAddr) -> String {
    format!("shoal:{addr}")
}

fn local_sockets_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("SHOAL_LOCAL_SOCKETS").map_or(true, |v| v != "off"))
}

/// A connection's byte stream.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Where an accepted connection came from, for logs.
#[derive(Clone, Copy, Debug)]
pub enum Via {
    Tcp(SocketAddr),
    /// A process of this network namespace, through the Unix socket.
    Local,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Via::Tcp(a) => a.fmt(f),
            Via::Local => f.write_str("local socket"),
        }
    }
}

/// Connects to `addr` (`HOST:PORT`): through the server's Unix socket when it listens in
/// this network namespace, else by TCP.
pub async fn connect(addr: &str) -> std::io::Result<Stream> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
    if local_sockets_enabled() {
        for a in &addrs {
            if let Some(s) = connect_local(a) {
                return Ok(Stream::Unix(s));
            }
        }
    }
    tcp(&addrs).await
}

/// Connects to `addr` by TCP whatever listens locally.
pub async fn connect_tcp(addr: &str) -> std::io::Result<Stream> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
    tcp(&addrs).await
}

async fn tcp(addrs: &[SocketAddr]) -> std::io::Result<Stream> {
    let s = TcpStream::connect(addrs).await?;
    let _ = s.set_nodelay(true);
    Ok(Stream::Tcp(s))
}

/// The Unix connection to whoever listens on `addr` in this namespace, if anyone does.
fn connect_local(addr: &SocketAddr) -> Option<UnixStream> {
    if !is_own_address(addr.ip()) {
        return None;
    }
    // The exact address first, then a server listening on every address with that port.
    let any: &[IpAddr] = match addr.ip() {
        IpAddr::V4(_) => &[
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ],
        IpAddr::V6(_) => &[IpAddr::V6(Ipv6Addr::UNSPECIFIED)],
    };
    let mut candidates = std::iter::once(*addr).chain(any.iter().map(|ip| SocketAddr::new(*ip, addr.port())));
    candidates.find_map(|a| match connect_abstract(&local_name(&a)) {
        Ok(s) => Some(s),
        Err(e) => {
            // Nobody listens under that name (refused), or its backlog is full (again).
            if e.kind() != ErrorKind::ConnectionRefused {
                tracing::debug!(%a, "no local connection: {e}");
            }
            None
        }
    })
}

/// True if `ip` is this host's in this network namespace: a loopback address, or one
/// configured on an interface. (Binding to it would not tell: nonlocal binding may be on.)
fn is_own_address(ip: IpAddr) -> bool {
    ip.is_loopback() || interface_addresses().is_ok_and(|own| own.contains(&ip))
}

/// The addresses on this network namespace's interfaces. By hand over libc's getifaddrs:
/// one call, where the netlink crates would bring a runtime of their own.
fn interface_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that stays valid until freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut own = Vec::new();
    let mut p = head;
    while !p.is_null() {
        // SAFETY: `p` is an element of the list, which is still allocated; `ifa_addr`, when
        // set, points to a socket address of the family it names.
        let ifa = unsafe { &*p };
        if !ifa.ifa_addr.is_null() {
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    own.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    own.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        p = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(own)
}

fn unix_socket() -> std::io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    raise_sndbuf(&fd);
    Ok(fd)
}

fn raise_sndbuf(fd: impl AsFd) {
    // Raising past the system maximum needs CAP_NET_ADMIN; without it, take what is allowed.
    if rustix::net::sockopt::set_socket_send_buffer_size_force(&fd, UNIX_SNDBUF).is_err() {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&fd, UNIX_SNDBUF);
    }
}

fn connect_abstract(name: &str) -> std::io::Result<UnixStream> {
    let fd = unix_socket()?;
    let addr = rustix::net::SocketAddrUnix::new_abstract_name(name.as_bytes())?;
    // A Unix connect completes at once or fails (EAGAIN when the backlog is full).
    rustix::net::connect(&fd, &addr)?;
    // Anyone may bind an abstract name first: only root's or our own listener is ours.
    let peer = rustix::net::sockopt::socket_peercred(&fd)?;
    if !peer.uid.is_root() && peer.uid != rustix::process::geteuid() {
        tracing::warn!(
            name,
            uid = peer.uid.as_raw(),
            "a stranger holds the local socket name: using TCP"
        );
        return Err(ErrorKind::PermissionDenied.into());
    }
    UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))
}

/// A TCP listener and, beside it, the Unix socket named after its address.
pub struct Listener {
    tcp: TcpListener,
    local: Option<UnixListener>,
}

impl Listener {
    /// Listens on `tcp`'s address through the Unix socket too. Without the Unix socket (its
    /// name taken, say) clients use TCP.
    pub fn new(tcp: TcpListener) -> Listener {
        let local = tcp.local_addr().and_then(|a| listen_abstract(&local_name(&a)));
        let local = match local {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("no local socket beside the TCP listener: {e}");
                None
            }
        };
        Listener { tcp, local }
    }

    pub async fn accept(&self) -> std::io::Result<(Stream, Via)> {
        let unix = async {
            match &self.local {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            a = self.tcp.accept() => {
                let (s, addr) = a?;
                let _ = s.set_nodelay(true);
                Ok((Stream::Tcp(s), Via::Tcp(addr)))
            }
            a = unix => {
                let (s, _) = a?;
                raise_sndbuf(&s);
                Ok((Stream::Unix(s), Via::Local))
            }
        }
    }
}

fn listen_abstract(name: &str) -> std::io::Result<UnixListener> {
    let fd = unix_socket()?;
    let addr = rustix::net::SocketAddrUnix::new_abstract_name(name.as_bytes())?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, 1024)?;
    UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))
}

impl Stream {
    /// True for a Unix connection.
    pub fn is_local(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }

    /// Takes the connection off the runtime it was made on, to be served on another
    /// ([`Detached::attach`]).
    pub fn detach(self) -> std::io::Result<Detached> {
        Ok(match self {
            Stream::Tcp(s) => Detached::Tcp(s.into_std()?),
            Stream::Unix(s) => Detached::Unix(s.into_std()?),
        })
    }

    /// Splits a connection whose handshake is done.
    pub fn into_split(self) -> std::io::Result<(ReadHalf, WriteHalf)> {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                Ok((ReadHalf::Tcp(r), WriteHalf::Tcp(w)))
            }
            Stream::Unix(s) => {
                let fd = Arc::new(register(OwnedFd::from(s.into_std()?), Interest::READABLE)?);
                Ok((ReadHalf::Unix(fd.clone()), WriteHalf::Unix(UnixWrite(fd))))
            }
        }
    }
}

fn register(fd: OwnedFd, interest: Interest) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the descriptor, which stays open until it is dropped.
    Ok(unsafe { AsyncFd::register_with_interest(fd, interest) }?)
}

/// A [`Stream`] on no runtime.
pub enum Detached {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Detached {
    /// The connection on the current runtime.
    pub fn attach(self) -> std::io::Result<Stream> {
        Ok(match self {
            Detached::Tcp(s) => Stream::Tcp(TcpStream::from_std(s)?),
            Detached::Unix(s) => Stream::Unix(UnixStream::from_std(s)?),
        })
    }
}

/// Reading half of a [`Stream`].
pub enum ReadHalf {
    Tcp(tcp::OwnedReadHalf),
    Unix(Arc<AsyncFd<OwnedFd>>),
}

/// Writing half of a [`Stream`]: written without waiting, from any thread ([`crate::outbox`]).
pub enum WriteHalf {
    Tcp(tcp::OwnedWriteHalf),
    Unix(UnixWrite),
}

/// The writing side of a Unix connection, written straight on its descriptor.
///
/// The descriptor is registered with the runtime for readability only. A Unix socket tells
/// its epoll it is writable each time the peer consumes data from it, so with writability
/// registered every reply the peer reads would wake a thread here for nothing (TCP tells
/// only a writer that found its buffer full). Room is waited for on a duplicate of the
/// descriptor registered just for that wait, which only a sender that filled the 4 MiB
/// buffer ever does.
pub struct UnixWrite(Arc<AsyncFd<OwnedFd>>);

impl Drop for UnixWrite {
    fn drop(&mut self) {
        // As a TCP write half does: the peer sees the end of the stream.
        let _ = rustix::net::shutdown(self.0.get_ref(), rustix::net::Shutdown::Write);
    }
}

impl WriteHalf {
    pub fn try_write_vectored(&self, iov: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            WriteHalf::Tcp(w) => w.try_write_vectored(iov),
            WriteHalf::Unix(w) => Ok(rustix::net::sendmsg(
                w.0.get_ref(),
                iov,
                &mut Default::default(),
                rustix::net::SendFlags::NOSIGNAL,
            )?),
        }
    }

    /// Moves what the socket takes now of `data` into it. (Splice cannot ask for
    /// MSG_NOSIGNAL: a peer gone raises SIGPIPE, which Rust programs ignore from the start.)
    pub fn try_splice(&self, data: &mut crate::piped::Piped) -> std::io::Result<usize> {
        match self {
            // Through the runtime, so that a full socket clears its readiness.
            WriteHalf::Tcp(w) => w
                .as_ref()
                .try_io(Interest::WRITABLE, || data.splice_into(w.as_ref().as_fd())),
            WriteHalf::Unix(w) => data.splice_into(w.0.get_ref().as_fd()),
        }
    }

    /// Waits until the socket takes more bytes.
    pub async fn writable(&self) -> std::io::Result<()> {
        match self {
            WriteHalf::Tcp(w) => w.writable().await,
            WriteHalf::Unix(w) => {
                let dup = rustix::io::fcntl_dupfd_cloexec(w.0.get_ref(), 0)?;
                let watch = register(dup, Interest::WRITABLE)?;
                // Registering reports the present state: no wake-up is missed.
                let _ready = watch.writable().await?;
                Ok(())
            }
        }
    }
}

impl AsFd for WriteHalf {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            WriteHalf::Tcp(w) => w.as_ref().as_fd(),
            WriteHalf::Unix(w) => w.0.get_ref().as_fd(),
        }
    }
}

impl From<tcp::OwnedWriteHalf> for WriteHalf {
    fn from(w: tcp::OwnedWriteHalf) -> WriteHalf {
        WriteHalf::Tcp(w)
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Unix(fd) => loop {
                let mut ready = std::task::ready!(fd.poll_read_ready(cx))?;
                // SAFETY: recv only writes into the unfilled part, and `n` bytes of it are
                // initialised once it returns `n`.
                let unfilled = unsafe { buf.unfilled_mut() };
                let wanted = unfilled.len();
                match rustix::net::recv(fd.get_ref(), unfilled, rustix::net::RecvFlags::empty()) {
                    Ok((_, n)) => {
                        unsafe { buf.assume_init(n) };
                        buf.advance(n);
                        // A short read emptied the socket (a stream socket's recv takes
                        // from every queued message until the buffer is full), so the next
                        // read waits for the poller instead of asking the socket for an
                        // EAGAIN; as tokio does for its own sockets. Data arriving
                        // meanwhile raised a newer readiness, which this does not clear.
                        if n > 0 && n < wanted {
                            ready.clear_ready();
                        }
                        return Poll::Ready(Ok(()));
                    }
                    Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Poll::Ready(Err(e.into())),
                }
            },
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_once(l: Listener) -> Via {
        let (mut s, via) = l.accept().await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        s.write_all(&b).await.unwrap();
        via
    }

    #[tokio::test]
    async fn a_server_in_this_namespace_is_reached_through_its_unix_socket() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap().to_string();
        let server = tokio::spawn(echo_once(Listener::new(tcp)));
        let mut s = connect(&addr).await.unwrap();
        assert!(matches!(s, Stream::Unix(_)), "expected the Unix path");
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        assert!(matches!(server.await.unwrap(), Via::Local));
    }

    #[tokio::test]
    async fn a_server_listening_on_every_address_is_reached_through_its_unix_socket() {
        let tcp = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let server = tokio::spawn(echo_once(Listener::new(tcp)));
        let mut s = connect(&format!("127.0.0.1:{port}")).await.unwrap();
        assert!(matches!(s, Stream::Unix(_)), "expected the Unix path");
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert!(matches!(server.await.unwrap(), Via::Local));
    }

    #[tokio::test]
    async fn an_address_of_another_host_is_never_taken_for_a_local_one() {
        // TEST-NET-1 (RFC 5737) is never an address of this machine.
        assert!(!is_own_address("192.0.2.1".parse().unwrap()));
        assert!(is_own_address("127.0.0.1".parse().unwrap()));
        assert!(connect_local(&"192.0.2.1:9".parse().unwrap()).is_none());
    }

    #[tokio::test]
    async fn without_a_unix_socket_the_connection_is_tcp() {
        // A plain TCP listener, with no Unix socket beside it.
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap().to_string();
        let accept = tokio::spawn(async move { tcp.accept().await.map(|_| ()) });
        let s = connect(&addr).await.unwrap();
        assert!(matches!(s, Stream::Tcp(_)));
        accept.await.unwrap().unwrap();
    }
}
