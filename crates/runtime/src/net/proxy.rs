//! A userland port proxy, as docker-proxy: a published port (`-p
//! HOST:CONTAINER`) of a container on a user-defined network is a socket
//! on the host that forwards to the container's address.
//!
//! [`PortProxy::start`] binds the host address (so "port is already
//! allocated" is reported at once, with the address) and serves it on a
//! thread of its own:
//!
//! - TCP: each accepted connection gets a thread that connects to the
//!   target (with a timeout) and copies both ways through bounded buffers,
//!   passing half-closes on (an EOF from one side is a `shutdown(Write)` to
//!   the other). At most [`MAX_TCP_CONNECTIONS`] run at once; beyond, new
//!   connections are closed as soon as they are accepted.
//! - UDP: each client address is a flow with its own socket connected to
//!   the target, whose replies go back to that client from the published
//!   socket. Flows idle for [`UDP_FLOW_IDLE`] expire; at most
//!   [`MAX_UDP_FLOWS`] exist at once (a datagram from a new client beyond
//!   that is dropped). Datagrams of up to 65507 bytes (IPv4's largest) pass.
//!
//! Every thread waits in poll(2) on its sockets and on a pipe whose write
//! end the proxy holds: [`PortProxy::stop`] (or dropping it) closes that
//! end, which wakes them all; it joins them, and every socket is closed
//! when it returns.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

/// The most TCP connections one proxy forwards at once.
pub const MAX_TCP_CONNECTIONS: usize = 1024;
/// The most UDP flows (client addresses) one proxy keeps at once.
pub const MAX_UDP_FLOWS: usize = 1024;
/// How long a UDP flow lives without a datagram either way.
pub const UDP_FLOW_IDLE: Duration = Duration::from_secs(60);
/// How long connecting to the target may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Each direction of a TCP connection buffers at most this much.
const TCP_BUFFER: usize = 16 * 1024;
/// Room for any UDP datagram.
const UDP_BUFFER: usize = 65536;
/// The stack of a connection thread (its buffers are on the heap).
const CONNECTION_STACK: usize = 128 * 1024;
/// How long the accept loop rests when accept fails for want of
/// descriptors (the listener stays readable, so it would spin).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub use super::ports::Proto;

/// Errors starting a port proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Something else is bound to the host address (Docker's words).
    #[error("Bind for {addr} failed: port is already allocated")]
    PortAllocated {
        /// The protocol.
        proto: Proto,
        /// The host address.
        addr: SocketAddr,
        /// Cause (EADDRINUSE).
        #[source]
        source: io::Error,
    },
    /// The host address cannot be bound for another reason (not an
    /// address of this host, a privileged port, ...).
    #[error("Bind for {addr} failed ({proto})")]
    Bind {
        /// The protocol.
        proto: Proto,
        /// The host address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The proxy's socket or thread could not be set up.
    #[error("cannot start the {proto} proxy on {addr}")]
    Start {
        /// The protocol.
        proto: Proto,
        /// The host address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// The bounds a proxy runs within (the constants above, smaller in tests).
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    max_flows: usize,
    flow_idle: Duration,
    connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_TCP_CONNECTIONS,
            max_flows: MAX_UDP_FLOWS,
            flow_idle: UDP_FLOW_IDLE,
            connect_timeout: CONNECT_TIMEOUT,
        }
    }
}

/// A running port proxy; see the [module](self) documentation.
#[derive(Debug)]
pub struct PortProxy {
    proto: Proto,
    local: SocketAddr,
    target: SocketAddr,
    /// The stop pipe's write end: closing it stops every thread.
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    /// Connections (TCP) or flows (UDP) open now.
    active: Arc<AtomicUsize>,
}

impl PortProxy {
    /// Binds `listen` and forwards what arrives there to `target`, until
    /// [`stop`](Self::stop). Port 0 picks a free port (see
    /// [`local_addr`](Self::local_addr)).
    pub fn start(
        listen: SocketAddr,
        target: SocketAddr,
        proto: Proto,
    ) -> Result<PortProxy, ProxyError> {
        Self::start_with(listen, target, proto, Limits::default())
    }

    fn start_with(
        listen: SocketAddr,
        target: SocketAddr,
        proto: Proto,
        limits: Limits,
    ) -> Result<PortProxy, ProxyError> {
        let bind_error = |source: io::Error| {
            if source.kind() == io::ErrorKind::AddrInUse {
                ProxyError::PortAllocated {
                    proto,
                    addr: listen,
                    source,
                }
            } else {
                ProxyError::Bind {
                    proto,
                    addr: listen,
                    source,
                }
            }
        };
        let start_error = |source: io::Error| ProxyError::Start {
            proto,
            addr: listen,
            source,
        };
        let socket = match proto {
            Proto::Tcp => Socket::Tcp(TcpListener::bind(listen).map_err(bind_error)?),
            Proto::Udp => Socket::Udp(UdpSocket::bind(listen).map_err(bind_error)?),
        };
        let local = socket.local_addr().map_err(start_error)?;
        socket.set_nonblocking().map_err(start_error)?;
        let (stop_rx, stop_tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| start_error(e.into()))?;
        let stop_rx = Arc::new(stop_rx);
        let active = Arc::new(AtomicUsize::new(0));
        let name = format!("proxy-{proto}-{}", local.port());
        let thread = {
            let active = active.clone();
            std::thread::Builder::new()
                .name(name)
                .spawn(move || match socket {
                    Socket::Tcp(l) => serve_tcp(&l, target, &stop_rx, &active, limits),
                    Socket::Udp(s) => serve_udp(&s, target, &stop_rx, &active, limits),
                })
        }
        .map_err(start_error)?;
        log::debug!("{proto} proxy {local} -> {target} started");
        Ok(PortProxy {
            proto,
            local,
            target,
            stop: Some(stop_tx),
            thread: Some(thread),
            active,
        })
    }

    /// The host address it listens on (its port resolved, when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The address it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Its protocol.
    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// Stops it: every thread ends and every socket (the listening one,
    /// connections, flows) is closed when this returns.
    pub fn stop(mut self) {
        self.shut_down();
    }

    /// Connections (TCP) or flows (UDP) open now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    fn shut_down(&mut self) {
        // Closing the write end wakes every poll on the read end (POLLHUP).
        drop(self.stop.take());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::warn!("the {} proxy on {} panicked", self.proto, self.local);
        }
    }
}

impl Drop for PortProxy {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The published socket.
enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Socket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Socket::Tcp(l) => l.local_addr(),
            Socket::Udp(s) => s.local_addr(),
        }
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Socket::Tcp(l) => l.set_nonblocking(true),
            Socket::Udp(s) => s.set_nonblocking(true),
        }
    }
}

/// Waits in poll(2) for `fds` (the stop pipe is added last) up to
/// `timeout` (`None`: no limit). Returns each fd's events, or `None` when
/// the proxy is stopping.
fn wait(
    fds: &[(&dyn AsFd, PollFlags)],
    stop: &OwnedFd,
    timeout: Option<Duration>,
) -> io::Result<Option<Vec<PollFlags>>> {
    let timeout = timeout.map(|t| {
        Timespec::try_from(t).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        })
    });
    let mut pollfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|(fd, events)| PollFd::from_borrowed_fd(fd.as_fd(), *events))
        .collect();
    pollfds.push(PollFd::new(stop, PollFlags::IN));
    loop {
        match rustix::event::poll(&mut pollfds, timeout.as_ref()) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    match pollfds.split_last() {
        Some((stop, fds)) if stop.revents().is_empty() => {
            Ok(Some(fds.iter().map(PollFd::revents).collect()))
        }
        _ => Ok(None),
    }
}

/// Decrements the count of open connections or flows when dropped.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve_tcp(
    listener: &TcpListener,
    target: SocketAddr,
    stop: &Arc<OwnedFd>,
    active: &Arc<AtomicUsize>,
    limits: Limits,
) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    loop {
        match wait(&[(listener, PollFlags::IN)], stop, None) {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                log::error!("tcp proxy: poll: {e}");
                break;
            }
        }
        connections.retain(|c| !c.is_finished());
        loop {
            let (client, peer) = match listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    // EMFILE and the like: rest, or the loop would spin.
                    log::warn!("tcp proxy: accept: {e}");
                    std::thread::sleep(ACCEPT_BACKOFF);
                    break;
                }
            };
            if active.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
                active.fetch_sub(1, Ordering::SeqCst);
                log::warn!(
                    "tcp proxy: {} connections already; closing the one from {peer}",
                    limits.max_connections
                );
                continue;
            }
            let counted = Counted(active.clone());
            let stop = stop.clone();
            let spawned = std::thread::Builder::new()
                .name("proxy-tcp-conn".into())
                .stack_size(CONNECTION_STACK)
                .spawn(move || {
                    let _counted = counted;
                    if let Err(e) = forward_tcp(client, target, &stop, limits.connect_timeout) {
                        log::debug!("tcp proxy: {peer} -> {target}: {e}");
                    }
                });
            match spawned {
                Ok(c) => connections.push(c),
                Err(e) => log::warn!("tcp proxy: cannot start a thread for {peer}: {e}"),
            }
        }
    }
    for c in connections {
        let _ = c.join();
    }
}

/// Connects to `target` without blocking past `timeout` or a stop;
/// `Ok(None)` when the proxy stopped first.
fn connect(target: SocketAddr, stop: &OwnedFd, timeout: Duration) -> io::Result<Option<TcpStream>> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let family = if target.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let sock = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    match rustix::net::connect(&sock, &target) {
        Ok(()) => {}
        Err(rustix::io::Errno::INPROGRESS | rustix::io::Errno::INTR) => {
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting timed out after {timeout:?}"),
                    ));
                }
                match wait(&[(&sock, PollFlags::OUT)], stop, Some(left))? {
                    None => return Ok(None),
                    Some(ev) if ev[0].is_empty() => continue,
                    Some(_) => break,
                }
            }
            rustix::net::sockopt::socket_error(&sock)??;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Some(TcpStream::from(sock)))
}

/// One direction of a TCP connection: a bounded buffer between a read
/// from one socket and a write to the other.
struct Pipe {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The source said EOF.
    eof: bool,
    /// The EOF was passed on (shutdown(Write) of the destination).
    done: bool,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            buf: vec![0; TCP_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            done: false,
        }
    }

    fn wants_read(&self) -> bool {
        !self.eof && self.end < self.buf.len()
    }

    fn wants_write(&self) -> bool {
        self.start < self.end
    }

    /// Reads what `from` has, up to the room left.
    fn fill(&mut self, mut from: &TcpStream) -> io::Result<()> {
        while self.wants_read() {
            match from.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes what `to` takes; passes the EOF on once all is written.
    fn drain(&mut self, mut to: &TcpStream) -> io::Result<()> {
        while self.wants_write() {
            match to.write(&self.buf[self.start..self.end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.start += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
            if self.eof && !self.done {
                self.done = true;
                to.shutdown(Shutdown::Write)?;
            }
        }
        Ok(())
    }
}

/// The events to wait for on a socket that `out` reads from and `inc`
/// writes to.
fn interest(out: &Pipe, inc: &Pipe) -> PollFlags {
    let mut f = PollFlags::empty();
    if out.wants_read() {
        f |= PollFlags::IN;
    }
    if inc.wants_write() {
        f |= PollFlags::OUT;
    }
    f
}

/// Forwards one accepted connection until both directions have ended,
/// either side fails, or the proxy stops; both sockets are closed then.
fn forward_tcp(
    client: TcpStream,
    target: SocketAddr,
    stop: &OwnedFd,
    connect_timeout: Duration,
) -> io::Result<()> {
    let Some(server) = connect(target, stop, connect_timeout)? else {
        return Ok(());
    };
    for s in [&client, &server] {
        s.set_nonblocking(true)?;
        // As docker-proxy (Go's default): small writes go out at once.
        let _ = s.set_nodelay(true);
    }
    let (mut up, mut down) = (Pipe::new(), Pipe::new());
    loop {
        if up.done && down.done {
            return Ok(());
        }
        // A socket with nothing to wait for stays out of the set: its
        // POLLHUP would wake the loop again and again.
        let (ci, si) = (interest(&up, &down), interest(&down, &up));
        let mut fds: Vec<(&dyn AsFd, PollFlags)> = Vec::with_capacity(2);
        if !ci.is_empty() {
            fds.push((&client, ci));
        }
        if !si.is_empty() {
            fds.push((&server, si));
        }
        if wait(&fds, stop, None)?.is_none() {
            return Ok(());
        }
        // Try whatever is wanted: a socket not ready says WouldBlock.
        up.fill(&client)?;
        down.fill(&server)?;
        up.drain(&server)?;
        down.drain(&client)?;
    }
}

/// One UDP client and its socket connected to the target.
struct Flow {
    socket: UdpSocket,
    last: Instant,
    _counted: Counted,
}

fn serve_udp(
    published: &UdpSocket,
    target: SocketAddr,
    stop: &Arc<OwnedFd>,
    active: &Arc<AtomicUsize>,
    limits: Limits,
) {
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; UDP_BUFFER];
    let unspecified: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    loop {
        let now = Instant::now();
        flows.retain(|_, f| now.duration_since(f.last) < limits.flow_idle);
        let next_expiry = flows
            .values()
            .map(|f| (f.last + limits.flow_idle).saturating_duration_since(now))
            .min();
        let mut clients: Vec<SocketAddr> = Vec::with_capacity(flows.len());
        let ready = {
            let mut fds: Vec<(&dyn AsFd, PollFlags)> = vec![(published, PollFlags::IN)];
            for (client, flow) in &flows {
                clients.push(*client);
                fds.push((&flow.socket, PollFlags::IN));
            }
            match wait(&fds, stop, next_expiry) {
                Ok(Some(ready)) => ready,
                Ok(None) => break,
                Err(e) => {
                    log::error!("udp proxy: poll: {e}");
                    break;
                }
            }
        };
        // Replies first: they free nothing but keep flows alive.
        for (client, ev) in clients.iter().zip(&ready[1..]) {
            if ev.is_empty() {
                continue;
            }
            let Some(flow) = flows.get_mut(client) else {
                continue;
            };
            loop {
                match flow.socket.recv(&mut buf) {
                    Ok(n) => {
                        flow.last = Instant::now();
                        if let Err(e) = published.send_to(&buf[..n], client) {
                            log::debug!("udp proxy: reply to {client}: {e}");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // ECONNREFUSED: an ICMP error from the target; the
                    // client's next datagram may still get through.
                    Err(e) => {
                        log::debug!("udp proxy: from {target} for {client}: {e}");
                        break;
                    }
                }
            }
        }
        if ready[0].is_empty() {
            continue;
        }
        loop {
            let (n, client) = match published.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("udp proxy: recv: {e}");
                    break;
                }
            };
            if !flows.contains_key(&client) {
                if flows.len() >= limits.max_flows {
                    log::warn!(
                        "udp proxy: {} flows already; dropping a datagram from {client}",
                        limits.max_flows
                    );
                    continue;
                }
                match new_flow(unspecified, target, active) {
                    Ok(f) => {
                        flows.insert(client, f);
                    }
                    Err(e) => {
                        log::warn!("udp proxy: cannot open a flow for {client}: {e}");
                        continue;
                    }
                }
            }
            if let Some(flow) = flows.get_mut(&client) {
                flow.last = Instant::now();
                if let Err(e) = flow.socket.send(&buf[..n]) {
                    log::debug!("udp proxy: {client} -> {target}: {e}");
                }
            }
        }
    }
}

fn new_flow(
    unspecified: SocketAddr,
    target: SocketAddr,
    active: &Arc<AtomicUsize>,
) -> io::Result<Flow> {
    let socket = UdpSocket::bind(unspecified)?;
    socket.connect(target)?;
    socket.set_nonblocking(true)?;
    active.fetch_add(1, Ordering::SeqCst);
    Ok(Flow {
        socket,
        last: Instant::now(),
        _counted: Counted(active.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn loopback() -> SocketAddr {
        (Ipv4Addr::LOCALHOST, 0).into()
    }

    /// A TCP echo server on loopback: echoes each connection until its
    /// EOF, then shuts its own write side.
    fn tcp_echo() -> SocketAddr {
        let l = TcpListener::bind(loopback()).unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { break };
                std::thread::spawn(move || {
                    let mut r = c.try_clone().unwrap();
                    let _ = io::copy(&mut r, &mut c);
                    let _ = c.shutdown(Shutdown::Write);
                });
            }
        });
        addr
    }

    /// A UDP echo server on loopback.
    fn udp_echo() -> SocketAddr {
        let s = UdpSocket::bind(loopback()).unwrap();
        let addr = s.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; UDP_BUFFER];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        });
        addr
    }

    fn connect_client(addr: SocketAddr) -> TcpStream {
        let c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    }

    /// Waits up to 5 s for `cond`.
    fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        cond()
    }

    #[test]
    fn tcp_round_trip() {
        let p = PortProxy::start(loopback(), tcp_echo(), Proto::Tcp).unwrap();
        assert_eq!(p.proto(), Proto::Tcp);
        assert_ne!(p.local_addr().port(), 0);
        let mut c = connect_client(p.local_addr());
        for msg in [&b"ping"[..], b"pong pong", &[7u8; 100_000][..]] {
            c.write_all(msg).unwrap();
            let mut back = vec![0; msg.len()];
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, msg);
        }
        p.stop();
    }

    #[test]
    fn tcp_half_close_passes_both_ways() {
        let p = PortProxy::start(loopback(), tcp_echo(), Proto::Tcp).unwrap();
        let mut c = connect_client(p.local_addr());
        // More than both buffers hold, so the EOF waits for the data.
        let sent: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        c.write_all(&sent).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        // The echo server only ends its side after our EOF reached it.
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), sent.len());
        assert!(back == sent);
        assert!(eventually(|| p.active() == 0), "{}", p.active());
    }

    #[test]
    fn tcp_many_concurrent_connections() {
        let p = PortProxy::start(loopback(), tcp_echo(), Proto::Tcp).unwrap();
        let addr = p.local_addr();
        let mut clients: Vec<TcpStream> = (0..100).map(|_| connect_client(addr)).collect();
        assert!(eventually(|| p.active() == 100), "{}", p.active());
        std::thread::scope(|s| {
            for (i, c) in clients.iter_mut().enumerate() {
                s.spawn(move || {
                    let msg = format!("client {i}").repeat(50);
                    c.write_all(msg.as_bytes()).unwrap();
                    let mut back = vec![0; msg.len()];
                    c.read_exact(&mut back).unwrap();
                    assert_eq!(back, msg.as_bytes());
                });
            }
        });
        drop(clients);
        assert!(eventually(|| p.active() == 0), "{}", p.active());
    }

    #[test]
    fn tcp_connections_beyond_the_limit_are_closed() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let p = PortProxy::start_with(loopback(), tcp_echo(), Proto::Tcp, limits).unwrap();
        let mut held: Vec<TcpStream> = (0..2).map(|_| connect_client(p.local_addr())).collect();
        for c in &mut held {
            c.write_all(b"x").unwrap();
            c.read_exact(&mut [0]).unwrap();
        }
        let mut third = connect_client(p.local_addr());
        let mut buf = [0u8; 1];
        // Closed by the proxy: EOF (or a reset, had we written first).
        assert!(matches!(third.read(&mut buf), Ok(0) | Err(_)));
        drop(held);
        assert!(eventually(|| p.active() == 0));
        let mut fourth = connect_client(p.local_addr());
        fourth.write_all(b"y").unwrap();
        fourth.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"y");
    }

    #[test]
    fn tcp_target_refusing_closes_the_client() {
        let closed = TcpListener::bind(loopback()).unwrap().local_addr().unwrap();
        let p = PortProxy::start(loopback(), closed, Proto::Tcp).unwrap();
        let mut c = connect_client(p.local_addr());
        assert!(matches!(c.read(&mut [0u8; 1]), Ok(0) | Err(_)));
        assert!(eventually(|| p.active() == 0));
    }

    #[test]
    fn port_in_use_is_reported_with_the_address() {
        let taken = TcpListener::bind(loopback()).unwrap();
        let addr = taken.local_addr().unwrap();
        let e = PortProxy::start(addr, tcp_echo(), Proto::Tcp).unwrap_err();
        assert!(matches!(e, ProxyError::PortAllocated { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "Bind for 127.0.0.1:{} failed: port is already allocated",
                addr.port()
            )
        );
        assert!(std::error::Error::source(&e).is_some());
        let taken = UdpSocket::bind(loopback()).unwrap();
        let addr = taken.local_addr().unwrap();
        let e = PortProxy::start(addr, udp_echo(), Proto::Udp).unwrap_err();
        assert!(
            matches!(
                e,
                ProxyError::PortAllocated {
                    proto: Proto::Udp,
                    ..
                }
            ),
            "{e:?}"
        );
        // Not an address of this host: another error, still with the address.
        let foreign: SocketAddr = "192.0.2.1:8080".parse().unwrap();
        let e = PortProxy::start(foreign, tcp_echo(), Proto::Tcp).unwrap_err();
        assert!(matches!(e, ProxyError::Bind { .. }), "{e:?}");
        assert!(e.to_string().contains("192.0.2.1:8080"), "{e}");
    }

    #[test]
    fn stop_closes_the_listener_and_the_connections() {
        let p = PortProxy::start(loopback(), tcp_echo(), Proto::Tcp).unwrap();
        let addr = p.local_addr();
        let mut c = connect_client(addr);
        c.write_all(b"hi").unwrap();
        c.read_exact(&mut [0u8; 2]).unwrap();
        let started = Instant::now();
        p.stop();
        assert!(started.elapsed() < Duration::from_secs(2));
        // The port is free again, and the connection was closed.
        TcpListener::bind(addr).unwrap();
        assert!(matches!(c.read(&mut [0u8; 1]), Ok(0) | Err(_)));

        let p = PortProxy::start(loopback(), udp_echo(), Proto::Udp).unwrap();
        let addr = p.local_addr();
        drop(p);
        UdpSocket::bind(addr).unwrap();
    }

    fn udp_client() -> UdpSocket {
        let c = UdpSocket::bind(loopback()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    }

    #[test]
    fn udp_echo_from_two_clients() {
        let p = PortProxy::start(loopback(), udp_echo(), Proto::Udp).unwrap();
        let addr = p.local_addr();
        let (a, b) = (udp_client(), udp_client());
        let mut buf = vec![0u8; UDP_BUFFER];
        for round in 0..3 {
            a.send_to(format!("a{round}").as_bytes(), addr).unwrap();
            b.send_to(format!("b{round}").as_bytes(), addr).unwrap();
            let (n, from) = a.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (format!("a{round}").as_bytes(), addr));
            let (n, from) = b.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (format!("b{round}").as_bytes(), addr));
        }
        assert_eq!(p.active(), 2);
        // The largest IPv4 datagram passes whole.
        let big: Vec<u8> = (0..65507u32).map(|i| (i % 251) as u8).collect();
        a.send_to(&big, addr).unwrap();
        let n = a.recv(&mut buf).unwrap();
        assert_eq!(n, big.len());
        assert!(buf[..n] == big[..]);
    }

    #[test]
    fn udp_flows_expire_and_are_bounded() {
        let limits = Limits {
            max_flows: 2,
            flow_idle: Duration::from_secs(1),
            ..Limits::default()
        };
        let p = PortProxy::start_with(loopback(), udp_echo(), Proto::Udp, limits).unwrap();
        let addr = p.local_addr();
        let clients: Vec<UdpSocket> = (0..3).map(|_| udp_client()).collect();
        let mut buf = [0u8; 16];
        for c in &clients[..2] {
            c.send_to(b"hi", addr).unwrap();
            assert_eq!(c.recv(&mut buf).unwrap(), 2);
        }
        // A third client is dropped while two flows live.
        clients[2]
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        clients[2].send_to(b"hi", addr).unwrap();
        assert!(clients[2].recv(&mut buf).is_err());
        // Idle flows expire, and then it gets through.
        assert!(eventually(|| p.active() == 0), "{}", p.active());
        clients[2]
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        clients[2].send_to(b"again", addr).unwrap();
        assert_eq!(clients[2].recv(&mut buf).unwrap(), 5);
        assert_eq!(p.active(), 1);
    }
}
