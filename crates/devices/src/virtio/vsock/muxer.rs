//! The host side of the vsock device: the Unix socket host clients connect
//! to, the connections, and which of them owe the guest a packet.
//!
//! Every collection here is bounded: connections by
//! `VsockConfig::max_connections`, host clients still sending their
//! `CONNECT` line by [`MAX_CLIENTS`], RSTs for packets that match no
//! connection by [`MAX_STRAY_RST`], and the RX queue holds each live
//! connection at most once.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use virtio_vsock::packet::VsockPacket;
use vm_memory::VolatileSlice;
use vm_memory::bitmap::BitmapSlice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::HOST_CID;
use super::conn::{Conn, Limits, State};
use super::packet::*;

/// Host clients that have connected but not yet sent `CONNECT <port>\n`.
pub(super) const MAX_CLIENTS: usize = 32;
/// RSTs owed for packets that matched no connection; more are dropped.
pub(super) const MAX_STRAY_RST: usize = 256;
/// Longest `CONNECT <port>` line, newline included.
const MAX_CONNECT_LINE: usize = 32;
/// How long the listener is ignored after `accept` fails.
const LISTENER_PAUSE: Duration = Duration::from_millis(100);
/// Host-initiated connections get local ports from here up.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// epoll token of the first host stream: tokens below are the worker's.
pub(super) const STREAM_TOKEN_BASE: u64 = 16;
/// epoll token of the listener.
pub(super) const LISTENER_TOKEN: u64 = 4;

/// (local port, peer port): the host side's port and the guest's.
type Key = (u32, u32);

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub uds_path: PathBuf,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    pub limits: Limits,
}

/// A host client that has not finished its `CONNECT` line.
#[derive(Debug)]
struct Client {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

#[derive(Debug)]
pub(super) struct Muxer {
    settings: Settings,
    epoll: Epoll,
    listener: UnixListener,
    conns: HashMap<Key, Conn>,
    by_fd: HashMap<RawFd, Key>,
    clients: HashMap<RawFd, Client>,
    rxq: VecDeque<Key>,
    stray: VecDeque<Header>,
    next_port: u32,
    /// The listener is out of epoll until then (accept kept failing).
    listener_paused_until: Option<Instant>,
}

fn stream_events() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

impl Muxer {
    pub fn new(settings: Settings, epoll: Epoll, listener: UnixListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        Ok(Self {
            settings,
            epoll,
            listener,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            clients: HashMap::new(),
            rxq: VecDeque::new(),
            stray: VecDeque::new(),
            next_port: FIRST_LOCAL_PORT,
            listener_paused_until: None,
        })
    }

    pub fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    #[cfg(test)]
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    #[cfg(test)]
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    #[cfg(test)]
    pub fn stray_count(&self) -> usize {
        self.stray.len()
    }

    #[cfg(test)]
    pub fn rxq_len(&self) -> usize {
        self.rxq.len()
    }

    fn register(&self, fd: RawFd) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(stream_events(), STREAM_TOKEN_BASE + fd as u64),
        )
    }

    fn deregister(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// Accepts host clients waiting on the listener.
    pub fn accept_clients(&mut self) {
        // Bounded per wake-up; the listener is level-triggered.
        for _ in 0..MAX_CLIENTS {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of file descriptors, say: the connection stays in
                    // the backlog and the level-triggered listener would
                    // wake us at once, forever. Stop watching it a while.
                    log::warn!("vsock: accept on the host socket failed: {e}; pausing");
                    let _ = self.epoll.ctl(
                        ControlOperation::Delete,
                        self.listener.as_raw_fd(),
                        EpollEvent::default(),
                    );
                    self.listener_paused_until = Some(Instant::now() + LISTENER_PAUSE);
                    return;
                }
            };
            if self.clients.len() >= MAX_CLIENTS
                || self.conns.len() + self.clients.len() >= self.settings.max_connections
            {
                log::warn!("vsock: too many host connections; refusing one");
                continue;
            }
            let fd = stream.as_raw_fd();
            if let Err(e) = stream
                .set_nonblocking(true)
                .and_then(|()| self.register(fd))
            {
                log::warn!("vsock: cannot set up a host connection: {e}");
                continue;
            }
            self.clients.insert(
                fd,
                Client {
                    stream,
                    line: Vec::new(),
                    deadline: Instant::now() + self.settings.connect_timeout,
                },
            );
            self.read_client(fd);
        }
    }

    /// Readiness on a host stream (token minus [`STREAM_TOKEN_BASE`]).
    pub fn on_stream_event(&mut self, fd: RawFd, ev: EventSet) {
        if self.clients.contains_key(&fd) {
            self.read_client(fd);
        } else if let Some(&key) = self.by_fd.get(&fd) {
            if let Some(c) = self.conns.get_mut(&key) {
                c.on_host_event(ev);
                c.flush_host();
            }
            self.touch(key);
        }
    }

    fn drop_client(&mut self, fd: RawFd) {
        if self.clients.remove(&fd).is_some() {
            self.deregister(fd);
        }
    }

    /// Reads a client's `CONNECT <port>\n`, a byte at a time so that
    /// nothing after the newline is consumed.
    fn read_client(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        let port = loop {
            let mut b = [0u8];
            match client.stream.read(&mut b) {
                Ok(0) => return self.drop_client(fd),
                Ok(_) if b[0] == b'\n' => match parse_connect(&client.line) {
                    Some(p) => break p,
                    None => {
                        log::debug!(
                            "vsock: bad host request {:?}",
                            String::from_utf8_lossy(&client.line)
                        );
                        return self.drop_client(fd);
                    }
                },
                Ok(_) => {
                    client.line.push(b[0]);
                    if client.line.len() >= MAX_CONNECT_LINE {
                        return self.drop_client(fd);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.drop_client(fd),
            }
        };
        let Some(client) = self.clients.remove(&fd) else {
            return;
        };
        if self.conns.len() >= self.settings.max_connections {
            log::warn!("vsock: too many connections; refusing CONNECT {port}");
            self.deregister(fd);
            return;
        }
        let Some(local) = self.alloc_local_port() else {
            self.deregister(fd);
            return;
        };
        let conn = Conn::new_local(
            client.stream,
            local,
            port,
            self.settings.limits,
            self.settings.connect_timeout,
        );
        self.conns.insert((local, port), conn);
        self.by_fd.insert(fd, (local, port));
        self.touch((local, port));
    }

    fn alloc_local_port(&mut self) -> Option<u32> {
        for _ in 0..=self.settings.max_connections {
            let p = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|&(l, _)| l == p) {
                return Some(p);
            }
        }
        None
    }

    /// A packet from the guest's TX queue. `data` is its payload, if any.
    pub fn on_guest_packet<B: BitmapSlice>(&mut self, h: &Header, data: Option<&VolatileSlice<B>>) {
        let cid = self.settings.limits.guest_cid;
        if h.src_cid != cid || h.dst_cid != HOST_CID {
            log::debug!(
                "vsock: dropping {} from cid {} to cid {}",
                h.op_name(),
                h.src_cid,
                h.dst_cid
            );
            return;
        }
        if h.type_ != TYPE_STREAM {
            self.stray_rst(h);
            return;
        }
        let key = (h.dst_port, h.src_port);
        // A new request on the ports of a connection we are resetting: the
        // guest has moved on; forget the old one (and the RST it was owed,
        // which would now reset the new connection).
        if h.op == OP_REQUEST
            && self
                .conns
                .get(&key)
                .is_some_and(|c| c.state() == State::Killed)
        {
            self.remove(key);
        }
        match self.conns.get_mut(&key) {
            Some(c) => {
                c.on_guest_packet(h, data);
                self.touch(key);
            }
            None if h.op == OP_REQUEST => self.guest_connect(h),
            None => self.stray_rst(h),
        }
    }

    /// The guest failed to send a well-formed packet whose header we could
    /// still read: reset its connection, if it has one.
    pub fn on_bad_guest_packet(&mut self, h: &Header) {
        if h.src_cid != self.settings.limits.guest_cid || h.dst_cid != HOST_CID {
            return;
        }
        let key = (h.dst_port, h.src_port);
        if let Some(c) = self.conns.get_mut(&key) {
            c.kill();
            self.touch(key);
        } else {
            self.stray_rst(h);
        }
    }

    fn guest_connect(&mut self, h: &Header) {
        if self.conns.len() + self.clients.len() >= self.settings.max_connections {
            log::warn!(
                "vsock: too many connections; refusing the guest's request for port {}",
                h.dst_port
            );
            return self.stray_rst(h);
        }
        let mut path = self.settings.uds_path.clone().into_os_string();
        path.push(format!("_{}", h.dst_port));
        let stream = match connect_nonblocking(path.as_ref()) {
            Ok(s) => s,
            Err(e) => {
                log::debug!(
                    "vsock: guest connection to host port {} refused ({}: {e})",
                    h.dst_port,
                    PathBuf::from(&path).display()
                );
                return self.stray_rst(h);
            }
        };
        let fd = stream.as_raw_fd();
        if let Err(e) = self.register(fd) {
            log::warn!("vsock: cannot watch a host connection: {e}");
            return self.stray_rst(h);
        }
        let key = (h.dst_port, h.src_port);
        self.conns
            .insert(key, Conn::new_peer(stream, h, self.settings.limits));
        self.by_fd.insert(fd, key);
        self.touch(key);
    }

    fn stray_rst(&mut self, h: &Header) {
        if h.op == OP_RST {
            return;
        }
        if self.stray.len() >= MAX_STRAY_RST {
            log::debug!("vsock: RST backlog full; dropping one");
            return;
        }
        self.stray.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.settings.limits.guest_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            len: 0,
            type_: h.type_,
            op: OP_RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    /// Re-evaluates a connection after anything happened to it: removes it
    /// if it is gone, queues it if it owes the guest a packet.
    fn touch(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.is_gone() {
            self.remove(key);
        } else if !c.queued && c.has_rx_work() {
            c.queued = true;
            self.rxq.push_back(key);
        }
    }

    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            let fd = c.stream().as_raw_fd();
            self.deregister(fd);
            self.by_fd.remove(&fd);
            if c.queued {
                self.rxq.retain(|k| *k != key);
            }
        }
    }

    /// Whether anything is owed to the guest.
    pub fn has_rx_work(&self) -> bool {
        !self.stray.is_empty() || !self.rxq.is_empty()
    }

    /// Writes the next packet owed to the guest into `pkt`. Each queued
    /// connection is tried at most once; `None` if none had anything that
    /// fits.
    pub fn fill_rx<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>) -> Option<u32> {
        if let Some(h) = self.stray.front().copied() {
            return match h.write_to(pkt) {
                Ok(()) => {
                    self.stray.pop_front();
                    Some(HDR_LEN as u32)
                }
                Err(e) => {
                    log::warn!("vsock: cannot write a packet header to guest memory: {e}");
                    None
                }
            };
        }
        for _ in 0..self.rxq.len() {
            let key = self.rxq.pop_front()?;
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.queued = false;
            let sent = c.fill_rx(pkt);
            self.touch(key);
            if sent.is_some() {
                return sent;
            }
        }
        None
    }

    /// Times out clients and connections; resumes a paused listener.
    pub fn expire(&mut self, now: Instant) {
        if self.listener_paused_until.is_some_and(|t| t <= now) {
            self.listener_paused_until = None;
            if let Err(e) = self.epoll.ctl(
                ControlOperation::Add,
                self.listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
            ) {
                log::error!("vsock: cannot watch the host socket again: {e}");
            }
        }
        let late: Vec<RawFd> = self
            .clients
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in late {
            log::debug!("vsock: host client sent no CONNECT in time");
            self.drop_client(fd);
        }
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(&k, _)| k)
            .collect();
        for key in late {
            if let Some(c) = self.conns.get_mut(&key) {
                c.on_deadline(now);
            }
            self.touch(key);
        }
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let c = self.clients.values().map(|c| c.deadline);
        let k = self.conns.values().filter_map(|c| c.deadline);
        c.chain(k).chain(self.listener_paused_until).min()
    }

    #[cfg(test)]
    pub fn conn_state(&self, local: u32, peer: u32) -> Option<State> {
        self.conns.get(&(local, peer)).map(|c| c.state())
    }
}

/// Parses `CONNECT <port>` (the newline already stripped).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let port = s.strip_prefix("CONNECT ")?.trim();
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Connects to a host listener without blocking: a Unix-socket connect
/// either completes at once or fails (with `WouldBlock` when the listener's
/// backlog is full), so a host program that stops accepting cannot stall
/// the device.
fn connect_nonblocking(path: &std::path::Path) -> std::io::Result<UnixStream> {
    let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    sock.set_nonblocking(true)?;
    sock.connect(&socket2::SockAddr::unix(path)?)?;
    Ok(UnixStream::from(std::os::fd::OwnedFd::from(sock)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 52 "), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT",
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT +1",
            b"connect 1",
            b"CONNECT 0x10",
            b"CONNECT 1 2",
            b"\xff\xfe",
        ] {
            assert_eq!(
                parse_connect(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn nonblocking_connect_fails_fast_when_nobody_listens() {
        let p = std::env::temp_dir().join(format!("husk-nolistener-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        assert!(connect_nonblocking(&p).is_err());
        let l = UnixListener::bind(&p).unwrap();
        let s = connect_nonblocking(&p).unwrap();
        let (_a, _) = l.accept().unwrap();
        drop(s);
        std::fs::remove_file(&p).unwrap();
    }
}
