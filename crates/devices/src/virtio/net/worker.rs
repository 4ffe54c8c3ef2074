//! The net device's worker thread: one epoll loop over the kill eventfd,
//! the two queue notifications and the backend's fd.
//!
//! Each wake-up takes at most a queue's worth of TX chains and delivers a
//! bounded number of RX frames; if work is left, the next wait does not
//! sleep, so the kill eventfd is always seen promptly.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::Duration;

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::backend::{Backend, HDR_NO_NUMBUF, Offloads, RxPoll, Sent};
use super::{MAX_FRAME, MIN_FRAME, NetStats, QUEUE_SIZE, VNET_HDR_LEN};
use crate::virtio::Interrupt;

const KILL_TOKEN: u64 = 0;
const RXQ_TOKEN: u64 = 1;
const TXQ_TOKEN: u64 = 2;
const BACKEND_TOKEN: u64 = 3;

/// Guest mistakes logged at `warn` before they drop to `debug`.
const LOUD_GUEST_ERRORS: u64 = 16;

/// Everything a worker is built from.
#[derive(Debug)]
pub(super) struct Setup {
    pub mem: GuestMemoryMmap,
    /// RX, TX.
    pub queues: [Queue; 2],
    /// RX, TX notifications.
    pub evts: [EventFd; 2],
    pub kill: EventFd,
    pub interrupt: Interrupt,
    pub epoll: Epoll,
    pub backend: Backend,
    pub stats: Arc<NetStats>,
    pub offloads: Offloads,
    /// The NIC's MAC: the only source address a TX frame may carry.
    pub mac: [u8; 6],
}

/// Why a TX chain was dropped.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum TxChainError {
    /// No descriptor could be read (bad head, bad indirect table).
    Empty,
    /// More than a queue's worth of descriptors.
    TooManyDescriptors,
    /// The last descriptor read still points on (a loop, an index past the
    /// table, an unreadable descriptor).
    Unterminated,
    /// A device-writable descriptor in a TX chain.
    WriteOnly,
    /// A buffer outside guest memory.
    BadAddress(u64, u32),
    /// More than a header and [`MAX_FRAME`] bytes.
    TooLong,
    /// Less than a header and an Ethernet header.
    TooShort(usize),
}

impl std::fmt::Display for TxChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => write!(f, "empty chain"),
            Self::TooManyDescriptors => write!(f, "more than {QUEUE_SIZE} descriptors"),
            Self::Unterminated => write!(f, "chain does not end (loop or bad next index)"),
            Self::WriteOnly => write!(f, "device-writable descriptor"),
            Self::BadAddress(a, l) => write!(f, "buffer {a:#x}+{l} outside guest memory"),
            Self::TooLong => write!(f, "frame longer than {MAX_FRAME} bytes"),
            Self::TooShort(n) => write!(
                f,
                "{n} bytes, less than a {VNET_HDR_LEN}-byte header and a {MIN_FRAME}-byte frame"
            ),
        }
    }
}

/// What became of an RX frame.
#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    /// In the guest's buffers.
    Done,
    /// Not enough buffers yet; nothing consumed, the frame stays.
    NoRoom,
    /// Dropped; `true` if chains went to the used ring (returned empty).
    Dropped(String, bool),
}

pub(super) struct Worker {
    mem: GuestMemoryMmap,
    rxq: Queue,
    txq: Queue,
    evts: [EventFd; 2],
    kill: EventFd,
    interrupt: Interrupt,
    epoll: Epoll,
    backend: Backend,
    stats: Arc<NetStats>,
    offloads: Offloads,
    /// The backend fd's epoll interest; `None` when not registered.
    interest: Option<EventSet>,
    /// The backend reported hang-up or error: it is read without epoll
    /// until it says why.
    hup: bool,
    /// The head RX frame waits for guest buffers (the backend is not read).
    rx_blocked: bool,
    /// A budget ran out; come back without sleeping.
    more: bool,
    /// One TX chain's bytes (header and frame), at most one largest frame.
    tx_pkt: Vec<u8>,
    /// The NIC's MAC (TX frames from any other source are dropped).
    mac: [u8; 6],
    /// The RX chains one frame took: (head, bytes written).
    rx_chains: Vec<(u16, u32)>,
    guest_errors: u64,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("backend", &self.backend)
            .field("rx_blocked", &self.rx_blocked)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Registers the fds; on error the backend comes back.
    pub fn new(s: Setup) -> Result<Self, (std::io::Error, Backend)> {
        for (fd, token) in [
            (s.kill.as_raw_fd(), KILL_TOKEN),
            (s.evts[0].as_raw_fd(), RXQ_TOKEN),
            (s.evts[1].as_raw_fd(), TXQ_TOKEN),
        ] {
            if let Err(e) = s.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            ) {
                return Err((e, s.backend));
            }
        }
        let [rxq, txq] = s.queues;
        let mut w = Self {
            mem: s.mem,
            rxq,
            txq,
            evts: s.evts,
            kill: s.kill,
            interrupt: s.interrupt,
            epoll: s.epoll,
            backend: s.backend,
            stats: s.stats,
            offloads: s.offloads,
            interest: None,
            hup: false,
            rx_blocked: false,
            // Buffers may have been queued before the driver notified us.
            more: true,
            tx_pkt: Vec::with_capacity(VNET_HDR_LEN + MAX_FRAME),
            mac: s.mac,
            rx_chains: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            guest_errors: 0,
        };
        if let Err(e) = w.update_interest() {
            return Err((e, w.backend));
        }
        Ok(w)
    }

    /// Whether the backend works (the link is up).
    pub fn backend_alive(&self) -> bool {
        self.backend.alive()
    }

    /// Runs until the kill eventfd is written; hands the backend back.
    pub fn run(mut self) -> Backend {
        loop {
            match self.step(None) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    log::error!("net: worker failed, the device stops: {e}");
                    self.stats.set_link(false);
                    break;
                }
            }
        }
        self.backend
    }

    /// Waits for events (at most `max_wait`, if given) and handles them.
    /// Returns `Ok(false)` when asked to stop.
    pub fn step(&mut self, max_wait: Option<Duration>) -> std::io::Result<bool> {
        let timeout_ms = if self.more {
            0
        } else {
            match max_wait {
                Some(w) => w.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
                None => -1,
            }
        };
        let mut events = [EpollEvent::default(); 8];
        let n = match self.epoll.wait(timeout_ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        for ev in &events[..n] {
            match ev.data() {
                KILL_TOKEN => {
                    let _ = self.kill.read();
                    return Ok(false);
                }
                RXQ_TOKEN => {
                    let _ = self.evts[0].read();
                    self.rx_blocked = false;
                }
                TXQ_TOKEN => {
                    let _ = self.evts[1].read();
                }
                BACKEND_TOKEN => {
                    if ev
                        .event_set()
                        .intersects(EventSet::HANG_UP | EventSet::ERROR)
                    {
                        // Level-triggered and not maskable: read it to the
                        // end without epoll instead.
                        self.hup = true;
                    }
                }
                t => log::debug!("net: unknown epoll token {t}"),
            }
        }
        self.more = false;
        // Both queues are looked at on every wake-up, notified or not: a
        // missed notification then costs latency, never a stall.
        let tx_used = self.process_tx();
        let rx_used = self.process_rx();
        self.update_interest()?;
        let irq = (tx_used && wants_interrupt(&self.txq, &self.mem))
            | (rx_used && wants_interrupt(&self.rxq, &self.mem));
        if irq && let Err(e) = self.interrupt.signal_used_queue() {
            log::error!("net: cannot interrupt the guest: {e}");
        }
        Ok(true)
    }

    /// Takes the guest's TX chains to the backend (at most a queue's
    /// worth), then flushes the backend.
    fn process_tx(&mut self) -> bool {
        let used = self.tx_batch();
        self.flush();
        used
    }

    fn tx_batch(&mut self) -> bool {
        let mut used = false;
        for _ in 0..self.txq.size() {
            if self.backend.alive() && !self.backend.tx_room() {
                self.flush();
                if self.backend.alive() && !self.backend.tx_room() {
                    // The peer reads slowly: leave the chains in the ring
                    // until the socket is writable.
                    return used;
                }
            }
            let Some(chain) = self.txq.pop_descriptor_chain(&self.mem) else {
                return used;
            };
            let head = chain.head_index();
            match read_tx_chain(&self.mem, chain, &mut self.tx_pkt) {
                Ok(()) if !self.backend.alive() => self.stats.tx_drop(),
                Ok(()) if !from_mac(&self.tx_pkt, &self.mac) => {
                    // A guest that sends as another MAC would make passt
                    // (which follows the guest's source address) answer
                    // that address instead, and on a bridge impersonate
                    // its neighbours: dropped, as a cloud NIC drops it.
                    self.stats.tx_drop();
                    guest_error(
                        &mut self.guest_errors,
                        format_args!(
                            "dropping a TX frame from source MAC {} (the NIC is {})",
                            super::format_mac(&source_mac(&self.tx_pkt)),
                            super::format_mac(&self.mac)
                        ),
                    );
                }
                Ok(()) => match self.backend.send(&self.tx_pkt) {
                    Sent::Ok => self.stats.add_tx(self.tx_pkt.len() - VNET_HDR_LEN),
                    Sent::Dropped(why) => {
                        self.stats.tx_drop();
                        log::debug!("net: TX frame dropped: {why}");
                    }
                },
                Err(e) => {
                    self.stats.tx_drop();
                    guest_error(
                        &mut self.guest_errors,
                        format_args!("dropping a malformed TX chain: {e}"),
                    );
                }
            }
            if let Err(e) = self.txq.add_used(&self.mem, head, 0) {
                guest_error(
                    &mut self.guest_errors,
                    format_args!("cannot return TX descriptor {head}: {e}"),
                );
            }
            used = true;
        }
        self.more = true;
        used
    }

    fn flush(&mut self) {
        if let Err(why) = self.backend.flush() {
            self.link_down(&why);
        }
    }

    /// Gives the guest what the backend has, while it has buffers.
    fn process_rx(&mut self) -> bool {
        let mut used = false;
        // Buffers may have come without an RX notification (this wake-up
        // is for TX, say): try again, and wait on the backend again unless
        // the head frame still finds no room.
        self.rx_blocked = false;
        // Each turn reads the backend, or consumes or drops a frame.
        for _ in 0..2 * usize::from(self.rxq.size()) {
            if !self.backend.alive() {
                return used;
            }
            match self.backend.poll_rx() {
                RxPoll::Empty => {
                    if self.hup {
                        // Hung up yet nothing to read: it will not recover.
                        self.link_down("the backend hung up");
                    }
                    return used;
                }
                RxPoll::Again => {}
                RxPoll::Closed(why) => {
                    self.link_down(&why);
                    return used;
                }
                RxPoll::Dropped(why) => {
                    self.stats.rx_drop();
                    log::debug!("net: RX frame dropped: {why}");
                }
                RxPoll::Frame { hdr, frame } => {
                    let len = frame.len();
                    match deliver(
                        &mut self.rxq,
                        &self.mem,
                        self.offloads.mrg_rxbuf,
                        &hdr,
                        frame,
                        &mut self.rx_chains,
                    ) {
                        Delivery::Done => {
                            self.stats.add_rx(len);
                            self.backend.consume_rx();
                            used = true;
                        }
                        Delivery::NoRoom => {
                            // Stop reading the backend until the guest
                            // posts buffers (and notifies the RX queue).
                            self.rx_blocked = true;
                            return used;
                        }
                        Delivery::Dropped(why, any_used) => {
                            self.stats.rx_drop();
                            self.backend.consume_rx();
                            used |= any_used;
                            guest_error(
                                &mut self.guest_errors,
                                format_args!("RX frame dropped: {why}"),
                            );
                        }
                    }
                }
            }
        }
        self.more = true;
        used
    }

    /// The backend is gone: stop using it and tell the driver the link is
    /// down.
    fn link_down(&mut self, why: &str) {
        if !self.backend.alive() {
            return;
        }
        log::warn!("net: backend stopped, link down: {why}");
        self.backend.kill();
        self.stats.set_link(false);
        if let Err(e) = self.interrupt.signal_config_change() {
            log::error!("net: cannot raise the config interrupt: {e}");
        }
    }

    /// Registers the backend fd for what the worker waits on now.
    fn update_interest(&mut self) -> std::io::Result<()> {
        let fd: RawFd = self.backend.fd();
        if !self.backend.alive() || self.hup {
            if self.interest.take().is_some() {
                self.epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default())?;
            }
            return Ok(());
        }
        let mut want = EventSet::empty();
        if !self.rx_blocked {
            want |= EventSet::IN;
        }
        if self.backend.wants_write() {
            want |= EventSet::OUT;
        }
        let op = match self.interest {
            Some(cur) if cur == want => return Ok(()),
            Some(_) => ControlOperation::Modify,
            None => ControlOperation::Add,
        };
        self.epoll
            .ctl(op, fd, EpollEvent::new(want, BACKEND_TOKEN))?;
        self.interest = Some(want);
        Ok(())
    }

    #[cfg(test)]
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    #[cfg(test)]
    pub fn rx_blocked(&self) -> bool {
        self.rx_blocked
    }
}

/// Copies a TX chain (device-readable descriptors only) into `out`:
/// header and frame, lengths checked.
pub(super) fn read_tx_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    out: &mut Vec<u8>,
) -> Result<(), TxChainError> {
    out.clear();
    let mut count = 0usize;
    let mut last_next = false;
    for desc in chain {
        count += 1;
        if count > usize::from(QUEUE_SIZE) {
            return Err(TxChainError::TooManyDescriptors);
        }
        if desc.is_write_only() {
            return Err(TxChainError::WriteOnly);
        }
        let len = desc.len() as usize;
        if out.len() + len > VNET_HDR_LEN + MAX_FRAME {
            return Err(TxChainError::TooLong);
        }
        let at = out.len();
        out.resize(at + len, 0);
        if mem.read_slice(&mut out[at..], desc.addr()).is_err() {
            return Err(TxChainError::BadAddress(desc.addr().0, desc.len()));
        }
        last_next = desc.has_next();
    }
    if count == 0 {
        return Err(TxChainError::Empty);
    }
    if last_next {
        return Err(TxChainError::Unterminated);
    }
    if out.len() < VNET_HDR_LEN + MIN_FRAME {
        return Err(TxChainError::TooShort(out.len()));
    }
    Ok(())
}

/// Puts one frame in the guest's RX chains: the header (`hdr`, then
/// `num_buffers`) and the frame, over as many chains as it takes (one
/// without MRG_RXBUF), published in the used ring at once.
fn deliver(
    rxq: &mut Queue,
    mem: &GuestMemoryMmap,
    mrg_rxbuf: bool,
    hdr: &[u8; HDR_NO_NUMBUF],
    frame: &[u8],
    chains: &mut Vec<(u16, u32)>,
) -> Delivery {
    let mut head12 = [0u8; VNET_HDR_LEN];
    head12[..HDR_NO_NUMBUF].copy_from_slice(hdr);
    let total = VNET_HDR_LEN + frame.len();
    let mut out = RxCursor {
        head: &head12,
        frame,
        written: 0,
        numbuf_at: [None; 2],
    };
    chains.clear();
    let mut bad = None;
    while out.written < total {
        if !chains.is_empty() && !mrg_rxbuf {
            // The buffer may suit a smaller frame: leave it for that.
            rewind(rxq, chains.len());
            return Delivery::Dropped(
                format!("{total}-byte frame larger than the RX buffer"),
                false,
            );
        }
        if chains.len() >= usize::from(rxq.size()) {
            rewind(rxq, chains.len());
            return Delivery::Dropped(
                format!("{total}-byte frame larger than the whole RX ring"),
                false,
            );
        }
        let Some(chain) = rxq.pop_descriptor_chain(mem) else {
            // Bytes already written to these buffers are simply
            // overwritten when they are used.
            rewind(rxq, chains.len());
            return Delivery::NoRoom;
        };
        let head = chain.head_index();
        match out.fill(mem, chain) {
            Ok(n) => chains.push((head, n)),
            Err(e) => {
                chains.push((head, 0));
                bad = Some(e);
                break;
            }
        }
    }
    if bad.is_none() {
        let n = (chains.len() as u16).to_le_bytes();
        for (k, at) in out.numbuf_at.iter().enumerate() {
            match at {
                Some(a) if mem.write_obj(n[k], *a).is_ok() => {}
                _ => bad = Some("cannot write num_buffers".to_string()),
            }
        }
    }
    if let Some(why) = bad {
        // Every chain this frame took goes back empty: the driver drops
        // zero-length buffers.
        for c in chains.iter_mut() {
            c.1 = 0;
        }
        let published = publish_used(rxq, mem, chains).is_ok();
        return Delivery::Dropped(format!("malformed RX chain: {why}"), published);
    }
    match publish_used(rxq, mem, chains) {
        Ok(()) => Delivery::Done,
        Err(e) => Delivery::Dropped(format!("cannot write the used ring: {e}"), false),
    }
}

/// Undoes `n` pops of `rxq`.
fn rewind(rxq: &mut Queue, n: usize) {
    for _ in 0..n {
        rxq.go_to_previous_position();
    }
}

/// Writes `[head | frame]` into RX chains, one after the other.
struct RxCursor<'a> {
    head: &'a [u8; VNET_HDR_LEN],
    frame: &'a [u8],
    written: usize,
    /// Where bytes 10 and 11 of the header (num_buffers) went.
    numbuf_at: [Option<GuestAddress>; 2],
}

impl RxCursor<'_> {
    fn total(&self) -> usize {
        VNET_HDR_LEN + self.frame.len()
    }

    /// Fills one chain as far as the frame goes; returns the bytes written.
    fn fill(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<u32, String> {
        let mut n = 0u32;
        let mut count = 0usize;
        let mut last_next = false;
        for desc in chain {
            count += 1;
            if count > usize::from(QUEUE_SIZE) {
                return Err(format!("more than {QUEUE_SIZE} descriptors"));
            }
            if !desc.is_write_only() {
                return Err("device-readable descriptor".into());
            }
            last_next = desc.has_next();
            let take = (desc.len() as usize).min(self.total() - self.written);
            if take > 0 {
                let addr = desc.addr();
                if !mem.check_range(addr, take) {
                    return Err(format!(
                        "buffer {:#x}+{} outside guest memory",
                        addr.0,
                        desc.len()
                    ));
                }
                self.write(mem, addr, take)?;
                n += take as u32;
            }
            if self.written == self.total() {
                // The rest of the chain is not needed.
                last_next = false;
                break;
            }
        }
        if count == 0 {
            return Err("empty chain".into());
        }
        if last_next {
            return Err("chain does not end (loop or bad next index)".into());
        }
        if n == 0 {
            return Err("chain with no room".into());
        }
        Ok(n)
    }

    /// Writes the next `take` bytes at `addr` (checked to be guest memory).
    fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        take: usize,
    ) -> Result<(), String> {
        let start = self.written;
        let mut off = 0usize;
        while off < take {
            let pos = start + off;
            let (src, len) = if pos < VNET_HDR_LEN {
                let len = (VNET_HDR_LEN - pos).min(take - off);
                (&self.head[pos..pos + len], len)
            } else {
                let f = pos - VNET_HDR_LEN;
                let len = take - off;
                (&self.frame[f..f + len], len)
            };
            let at = addr
                .checked_add(off as u64)
                .ok_or_else(|| "buffer address overflows".to_string())?;
            mem.write_slice(src, at)
                .map_err(|e| format!("cannot write guest memory: {e}"))?;
            off += len;
        }
        for (k, slot) in self.numbuf_at.iter_mut().enumerate() {
            let b = HDR_NO_NUMBUF + k;
            if (start..start + take).contains(&b) {
                *slot = addr.checked_add((b - start) as u64);
            }
        }
        self.written += take;
        Ok(())
    }
}

/// Adds `entries` (head, length) to the used ring and makes them visible
/// together: a driver must never see part of a merged frame.
fn publish_used(
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    entries: &[(u16, u32)],
) -> Result<(), vm_memory::GuestMemoryError> {
    if entries.is_empty() {
        return Ok(());
    }
    let size = q.size();
    let ring = GuestAddress(q.used_ring());
    let next = q.next_used();
    let overflow = || vm_memory::GuestMemoryError::InvalidGuestAddress(ring);
    for (i, &(head, len)) in entries.iter().enumerate() {
        let slot = next.wrapping_add(i as u16) % size;
        let at = ring
            .checked_add(4 + 8 * u64::from(slot))
            .ok_or_else(overflow)?;
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        e[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&e, at)?;
    }
    let idx = next.wrapping_add(entries.len() as u16);
    let idx_at = ring.checked_add(2).ok_or_else(overflow)?;
    // The elements before the index that publishes them.
    mem.store(idx.to_le(), idx_at, Ordering::Release)?;
    q.set_next_used(idx);
    Ok(())
}

/// Whether the driver wants an interrupt for new used buffers of `q`
/// (it has not set `VRING_AVAIL_F_NO_INTERRUPT`).
fn wants_interrupt(q: &Queue, mem: &GuestMemoryMmap) -> bool {
    // The used index written before the flag is read (the driver re-checks
    // the used ring after clearing the flag).
    fence(Ordering::SeqCst);
    match mem.load::<u16>(GuestAddress(q.avail_ring()), Ordering::Acquire) {
        Ok(flags) => u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0,
        Err(_) => true,
    }
}

/// Logs a guest mistake: loudly for the first few, quietly after that, so a
/// hostile guest cannot flood the host's log.
/// The source MAC of a TX packet (virtio header, then Ethernet); a chain
/// shorter than that never gets here (`TxChainError::TooShort`).
fn source_mac(pkt: &[u8]) -> [u8; 6] {
    let mut m = [0u8; 6];
    if let Some(s) = pkt.get(VNET_HDR_LEN + 6..VNET_HDR_LEN + 12) {
        m.copy_from_slice(s);
    }
    m
}

/// Whether a TX packet's source MAC is `mac`.
fn from_mac(pkt: &[u8], mac: &[u8; 6]) -> bool {
    pkt.get(VNET_HDR_LEN + 6..VNET_HDR_LEN + 12) == Some(&mac[..])
}

fn guest_error(count: &mut u64, what: std::fmt::Arguments<'_>) {
    *count += 1;
    if *count <= LOUD_GUEST_ERRORS {
        log::warn!("net: {what}");
    } else {
        log::debug!("net: {what}");
    }
}
