//! One vsock stream connection between a guest socket and a host Unix
//! stream, with virtio-vsock's credit-based flow control.
//!
//! Guest to host: data from the guest is written to the host stream at
//! once; what the stream does not take is kept in `tx_buf`, which never
//! exceeds the `buf_alloc` this side advertises (a guest that sends beyond
//! its credit gets the connection reset). `fwd_cnt` counts bytes handed to
//! the host stream; the guest learns it from every packet we send and from
//! CREDIT_UPDATEs, sent when the guest's view of our free space falls below
//! half.
//!
//! Host to guest: bytes are read from the host stream straight into the
//! guest's RX buffer, never more than the guest's credit (`buf_alloc` minus
//! bytes in flight), so nothing is buffered on the host side.
//!
//! The host stream is registered edge-triggered; `host_readable` and
//! `host_writable` remember readiness until a read or write returns
//! `WouldBlock`.

use std::io::{ErrorKind, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};
use vmm_sys_util::epoll::EventSet;

use super::packet::*;
use super::{HOST_CID, MAX_PKT_DATA};

/// Packets owed to the guest.
mod pending {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const RST: u8 = 4;
    pub const SHUTDOWN: u8 = 8;
    pub const CREDIT_UPDATE: u8 = 16;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// The host connected; the guest has not accepted yet.
    LocalInit,
    /// Data flows.
    Established,
    /// Being reset: an RST is owed to the guest, then the connection goes.
    Killed,
    /// To be removed.
    Gone,
}

/// Timeouts and sizes, from the device configuration.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub guest_cid: u64,
    pub buf_alloc: u32,
    pub close_timeout: Duration,
}

#[derive(Debug)]
pub(super) struct Conn {
    stream: UnixStream,
    pub local_port: u32,
    pub peer_port: u32,
    state: State,
    limits: Limits,
    pending: u8,
    request_sent: bool,
    /// Shutdown flags we owe the guest / have sent it.
    shutdown_want: u32,
    shutdown_sent: u32,
    /// Shutdown flags the guest sent.
    peer_shutdown: u32,
    // Host to guest.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    credit_requested: bool,
    // Guest to host.
    recv_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    tx_buf: Vec<u8>,
    tx_off: usize,
    /// The `OK <port>\n` line owed to a host client (not guest data).
    hs_out: Vec<u8>,
    // Host stream readiness.
    host_readable: bool,
    host_writable: bool,
    host_eof: bool,
    host_hup: bool,
    host_write_closed: bool,
    pub deadline: Option<Instant>,
    /// In the muxer's RX queue.
    pub queued: bool,
}

impl Conn {
    fn new(stream: UnixStream, local_port: u32, peer_port: u32, limits: Limits) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state: State::LocalInit,
            limits,
            pending: 0,
            request_sent: false,
            shutdown_want: 0,
            shutdown_sent: 0,
            peer_shutdown: 0,
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            credit_requested: false,
            recv_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_buf: Vec::new(),
            tx_off: 0,
            hs_out: Vec::new(),
            host_readable: true,
            host_writable: true,
            host_eof: false,
            host_hup: false,
            host_write_closed: false,
            deadline: None,
            queued: false,
        }
    }

    /// A host client asked for guest port `peer_port`: a REQUEST is owed.
    pub fn new_local(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        limits: Limits,
        connect_timeout: Duration,
    ) -> Self {
        let mut c = Self::new(stream, local_port, peer_port, limits);
        c.pending = pending::REQUEST;
        c.deadline = Some(Instant::now() + connect_timeout);
        c
    }

    /// The guest's REQUEST `h` reached a host listener: a RESPONSE is owed.
    pub fn new_peer(stream: UnixStream, h: &Header, limits: Limits) -> Self {
        let mut c = Self::new(stream, h.dst_port, h.src_port, limits);
        c.state = State::Established;
        c.pending = pending::RESPONSE;
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        c
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_gone(&self) -> bool {
        self.state == State::Gone
    }

    /// Resets the connection: closes the host stream and owes the guest an
    /// RST if it knows about the connection.
    pub fn kill(&mut self) {
        if matches!(self.state, State::Killed | State::Gone) {
            return;
        }
        let guest_knows = self.state == State::Established || self.request_sent;
        let _ = self.stream.shutdown(Shutdown::Both);
        self.tx_buf = Vec::new();
        self.tx_off = 0;
        self.hs_out = Vec::new();
        if guest_knows {
            self.state = State::Killed;
            self.pending = pending::RST;
            // If the guest never gives us an RX buffer for the RST, give up.
            self.deadline = Some(Instant::now() + self.limits.close_timeout);
        } else {
            self.state = State::Gone;
            self.pending = 0;
        }
    }

    /// The guest reset the connection: it goes, without an answer.
    fn drop_quietly(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        self.state = State::Gone;
        self.pending = 0;
    }

    pub fn on_deadline(&mut self, now: Instant) {
        if self.deadline.is_none_or(|d| d > now) {
            return;
        }
        self.deadline = None;
        match self.state {
            State::Killed | State::Gone => self.state = State::Gone,
            State::LocalInit => {
                log::debug!(
                    "vsock: guest port {} did not answer in time",
                    self.peer_port
                );
                self.kill();
            }
            State::Established => {
                log::debug!(
                    "vsock: guest did not close {}:{} in time; resetting",
                    self.local_port,
                    self.peer_port
                );
                self.kill();
            }
        }
    }

    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn needs_credit_update(&self) -> bool {
        if self.fwd_cnt == self.last_fwd_cnt_sent {
            return false;
        }
        let unacked = (self.recv_cnt - self.last_fwd_cnt_sent).0;
        let seen_free = self.limits.buf_alloc.saturating_sub(unacked);
        seen_free < self.limits.buf_alloc / 2
    }

    fn can_read_host(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
    }

    /// Whether the connection has a packet for the guest now.
    pub fn has_rx_work(&self) -> bool {
        match self.state {
            State::Gone => false,
            State::Killed => self.pending & pending::RST != 0,
            State::LocalInit => self.pending != 0,
            State::Established => {
                self.pending != 0
                    || (self.can_read_host() && (self.peer_credit() > 0 || !self.credit_requested))
                    || self.needs_credit_update()
            }
        }
    }

    fn want_shutdown(&mut self, flags: u32) {
        self.shutdown_want |= flags;
        if self.shutdown_want & !self.shutdown_sent != 0 {
            self.pending |= pending::SHUTDOWN;
        }
    }

    /// Readiness reported by epoll for the host stream.
    pub fn on_host_event(&mut self, ev: EventSet) {
        if ev
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            self.host_readable = true;
        }
        if ev.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
            self.host_writable = true;
        }
        if ev.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            self.host_hup = true;
            if self.host_eof {
                self.want_shutdown(SHUTDOWN_BOTH);
            }
        }
    }

    /// A packet from the guest for this connection.
    pub fn on_guest_packet<B: BitmapSlice>(&mut self, h: &Header, data: Option<&VolatileSlice<B>>) {
        match self.state {
            State::Killed | State::Gone => return,
            State::LocalInit | State::Established => {}
        }
        if h.op == OP_RST {
            self.drop_quietly();
            return;
        }
        if self.peer_buf_alloc != h.buf_alloc || self.peer_fwd_cnt.0 != h.fwd_cnt {
            self.credit_requested = false;
        }
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        match (self.state, h.op) {
            (State::LocalInit, OP_RESPONSE) if self.request_sent => {
                self.state = State::Established;
                self.deadline = None;
                self.hs_out = format!("OK {}\n", self.local_port).into_bytes();
                self.flush_host();
            }
            (State::Established, OP_RW) => self.recv_data(h, data),
            (State::Established, OP_CREDIT_UPDATE) => {}
            (State::Established, OP_CREDIT_REQUEST) => self.pending |= pending::CREDIT_UPDATE,
            (State::Established, OP_SHUTDOWN) => self.on_peer_shutdown(h.flags),
            _ => {
                log::debug!(
                    "vsock: unexpected {} on {}:{} in state {:?}; resetting",
                    h.op_name(),
                    self.local_port,
                    self.peer_port,
                    self.state
                );
                self.kill();
            }
        }
    }

    fn on_peer_shutdown(&mut self, flags: u32) {
        let new = flags & SHUTDOWN_BOTH & !self.peer_shutdown;
        self.peer_shutdown |= flags & SHUTDOWN_BOTH;
        if new & SHUTDOWN_RCV != 0 {
            // The guest reads no more: the host's writes fail from now on.
            let _ = self.stream.shutdown(Shutdown::Read);
        }
        // SEND: the host stream's write side closes once tx_buf is drained.
        self.flush_host();
    }

    fn recv_data<B: BitmapSlice>(&mut self, h: &Header, data: Option<&VolatileSlice<B>>) {
        let len = h.len as usize;
        if len == 0 {
            return;
        }
        let Some(data) = data.filter(|d| d.len() == len) else {
            self.kill();
            return;
        };
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            log::debug!("vsock: data after SHUTDOWN(SEND); resetting");
            self.kill();
            return;
        }
        let buffered = self.tx_buf.len() - self.tx_off;
        if buffered + len > self.limits.buf_alloc as usize {
            log::warn!(
                "vsock: guest overran its credit on {}:{} ({buffered} + {len} > {}); resetting",
                self.local_port,
                self.peer_port,
                self.limits.buf_alloc
            );
            self.kill();
            return;
        }
        self.recv_cnt += Wrapping(len as u32);
        let mut written = 0;
        if buffered == 0 && self.hs_out.is_empty() && self.host_writable {
            match (&self.stream).write_volatile(data) {
                Ok(n) => {
                    written = n;
                    if n < len {
                        self.host_writable = false;
                    }
                }
                Err(VolatileMemoryError::IOError(e)) if would_block(&e) => {
                    self.host_writable = false;
                }
                Err(e) => {
                    log::debug!("vsock: host stream write failed: {e}; resetting");
                    self.kill();
                    return;
                }
            }
            self.fwd_cnt += Wrapping(written as u32);
        }
        if written < len {
            let Ok(rest) = data.offset(written) else {
                self.kill();
                return;
            };
            let old = self.tx_buf.len();
            self.tx_buf.resize(old + rest.len(), 0);
            rest.copy_to(&mut self.tx_buf[old..]);
        }
    }

    /// Writes what is owed to the host stream while it takes it.
    pub fn flush_host(&mut self) {
        if !matches!(self.state, State::LocalInit | State::Established) {
            return;
        }
        while !self.hs_out.is_empty() && self.host_writable {
            match (&self.stream).write(&self.hs_out) {
                Ok(n) => {
                    self.hs_out.drain(..n);
                }
                Err(e) if would_block(&e) => self.host_writable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("vsock: host stream write failed: {e}; resetting");
                    self.kill();
                    return;
                }
            }
        }
        if !self.hs_out.is_empty() {
            return;
        }
        while self.tx_off < self.tx_buf.len() && self.host_writable {
            match (&self.stream).write(&self.tx_buf[self.tx_off..]) {
                Ok(n) => {
                    self.tx_off += n;
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if would_block(&e) => self.host_writable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("vsock: host stream write failed: {e}; resetting");
                    self.kill();
                    return;
                }
            }
        }
        if self.tx_off == self.tx_buf.len() {
            self.tx_buf.clear();
            self.tx_off = 0;
        } else if self.tx_off > self.tx_buf.len() / 2 {
            self.tx_buf.drain(..self.tx_off);
            self.tx_off = 0;
        }
        if self.tx_buf.is_empty() && self.peer_shutdown & SHUTDOWN_SEND != 0 {
            if !self.host_write_closed {
                let _ = self.stream.shutdown(Shutdown::Write);
                self.host_write_closed = true;
            }
            if self.peer_shutdown == SHUTDOWN_BOTH {
                // The guest closed its socket and everything it sent has
                // been delivered: it waits for our RST to finish closing.
                self.kill();
            }
        }
    }

    fn header(&self, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.limits.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: self.limits.buf_alloc,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    fn emit<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>, h: Header) -> Option<u32> {
        if let Err(e) = h.write_to(pkt) {
            log::warn!("vsock: cannot write a packet header to guest memory: {e}");
            return None;
        }
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Some(HDR_LEN as u32 + h.len)
    }

    /// Writes the connection's next packet for the guest into `pkt`, an RX
    /// buffer. Returns the bytes written (header and data), or `None` if the
    /// connection has nothing to send (or nothing that fits `pkt`).
    pub fn fill_rx<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>) -> Option<u32> {
        match self.state {
            State::Gone => return None,
            State::Killed => {
                if self.pending & pending::RST == 0 {
                    return None;
                }
                let n = self.emit(pkt, self.header(OP_RST))?;
                self.pending = 0;
                self.state = State::Gone;
                return Some(n);
            }
            State::LocalInit | State::Established => {}
        }
        if self.pending & pending::REQUEST != 0 {
            let n = self.emit(pkt, self.header(OP_REQUEST))?;
            self.pending &= !pending::REQUEST;
            self.request_sent = true;
            return Some(n);
        }
        if self.state != State::Established {
            return None;
        }
        if self.pending & pending::RESPONSE != 0 {
            let n = self.emit(pkt, self.header(OP_RESPONSE))?;
            self.pending &= !pending::RESPONSE;
            return Some(n);
        }
        if self.can_read_host() {
            if let Some(n) = self.read_host_into(pkt) {
                return Some(n);
            }
            if self.state == State::Killed {
                return self.fill_rx(pkt);
            }
        }
        if self.pending & pending::SHUTDOWN != 0 {
            let mut h = self.header(OP_SHUTDOWN);
            h.flags = self.shutdown_want;
            let n = self.emit(pkt, h)?;
            self.pending &= !pending::SHUTDOWN;
            self.shutdown_sent = self.shutdown_want;
            if self.shutdown_sent == SHUTDOWN_BOTH {
                // Wait for the guest's RST, but not forever.
                self.deadline = Some(Instant::now() + self.limits.close_timeout);
            }
            return Some(n);
        }
        if self.pending & pending::CREDIT_UPDATE != 0 || self.needs_credit_update() {
            let n = self.emit(pkt, self.header(OP_CREDIT_UPDATE))?;
            self.pending &= !pending::CREDIT_UPDATE;
            return Some(n);
        }
        None
    }

    /// Data (or a credit request) from the host stream; `None` if the
    /// stream has nothing now (or has ended: a SHUTDOWN is then owed).
    fn read_host_into<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>) -> Option<u32> {
        let credit = self.peer_credit();
        if credit == 0 {
            if self.credit_requested {
                return None;
            }
            let n = self.emit(pkt, self.header(OP_CREDIT_REQUEST))?;
            self.credit_requested = true;
            return Some(n);
        }
        let data = pkt.data_slice()?;
        let max = (credit as usize).min(data.len()).min(MAX_PKT_DATA as usize);
        let mut buf = data.subslice(0, max).ok()?;
        loop {
            match (&self.stream).read_volatile(&mut buf) {
                Ok(0) => {
                    self.host_eof = true;
                    self.want_shutdown(if self.host_hup {
                        SHUTDOWN_BOTH
                    } else {
                        SHUTDOWN_SEND
                    });
                    return None;
                }
                Ok(n) => {
                    let mut h = self.header(OP_RW);
                    h.len = n as u32;
                    let sent = self.emit(pkt, h)?;
                    self.rx_cnt += Wrapping(n as u32);
                    return Some(sent);
                }
                Err(VolatileMemoryError::IOError(e)) if e.kind() == ErrorKind::Interrupted => {}
                Err(VolatileMemoryError::IOError(e)) if would_block(&e) => {
                    self.host_readable = false;
                    return None;
                }
                Err(e) => {
                    log::debug!("vsock: host stream read failed: {e}; resetting");
                    self.kill();
                    return None;
                }
            }
        }
    }
}

fn would_block(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock
}
