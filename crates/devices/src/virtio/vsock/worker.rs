//! The vsock device's worker thread: one epoll loop over the queue
//! notifications, the host socket and the connections' streams.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::MAX_PKT_DATA;
use super::muxer::{LISTENER_TOKEN, Muxer, STREAM_TOKEN_BASE};
use super::packet::{Header, peek_tx_header};
use crate::virtio::Interrupt;

const KILL_TOKEN: u64 = 0;
const RXQ_TOKEN: u64 = 1;
const TXQ_TOKEN: u64 = 2;
const EVQ_TOKEN: u64 = 3;

/// Guest mistakes logged at `warn` before they drop to `debug`.
const LOUD_GUEST_ERRORS: u64 = 16;

pub(super) struct Worker {
    mem: GuestMemoryMmap,
    rxq: Queue,
    txq: Queue,
    // Held so the driver's event buffers stay untouched; husk sends no events.
    _evq: Queue,
    evts: [EventFd; 3],
    kill: EventFd,
    interrupt: Interrupt,
    muxer: Muxer,
    /// TX processing stopped at its budget; come back without sleeping.
    more_tx: bool,
    guest_errors: u64,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("muxer", &self.muxer)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// `queues` and `evts` are rx, tx, event in that order.
    pub fn new(
        mem: GuestMemoryMmap,
        queues: [Queue; 3],
        evts: [EventFd; 3],
        kill: EventFd,
        interrupt: Interrupt,
        muxer: Muxer,
    ) -> std::io::Result<Self> {
        let epoll = muxer.epoll();
        for (fd, token) in [
            (kill.as_raw_fd(), KILL_TOKEN),
            (evts[0].as_raw_fd(), RXQ_TOKEN),
            (evts[1].as_raw_fd(), TXQ_TOKEN),
            (evts[2].as_raw_fd(), EVQ_TOKEN),
        ] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        let [rxq, txq, evq] = queues;
        Ok(Self {
            mem,
            rxq,
            txq,
            _evq: evq,
            evts,
            kill,
            interrupt,
            muxer,
            // Buffers may have been queued before the driver notified us.
            more_tx: true,
            guest_errors: 0,
        })
    }

    /// Runs until the kill eventfd is written.
    pub fn run(mut self) {
        loop {
            match self.step(None) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    log::error!("vsock: worker failed, the device stops: {e}");
                    return;
                }
            }
        }
    }

    /// Waits for events (at most `max_wait`, if given) and handles them.
    /// Returns `Ok(false)` when asked to stop.
    pub fn step(&mut self, max_wait: Option<Duration>) -> std::io::Result<bool> {
        let now = Instant::now();
        let mut wait = self
            .muxer
            .next_deadline()
            .map(|d| d.saturating_duration_since(now));
        if let Some(m) = max_wait {
            wait = Some(wait.map_or(m, |w| w.min(m)));
        }
        if self.more_tx {
            wait = Some(Duration::ZERO);
        }
        let timeout_ms = match wait {
            // Round up so a deadline is not missed by a sub-millisecond wait.
            Some(w) => w.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
            None => -1,
        };
        let mut events = [EpollEvent::default(); 64];
        let n = match self.muxer.epoll().wait(timeout_ms, &mut events) {
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
                }
                TXQ_TOKEN => {
                    let _ = self.evts[1].read();
                }
                EVQ_TOKEN => {
                    let _ = self.evts[2].read();
                }
                LISTENER_TOKEN => self.muxer.accept_clients(),
                t if t >= STREAM_TOKEN_BASE => {
                    let fd = (t - STREAM_TOKEN_BASE) as RawFd;
                    self.muxer.on_stream_event(fd, ev.event_set());
                }
                t => log::debug!("vsock: unknown epoll token {t}"),
            }
        }
        // TX is processed on every wake-up, notified or not: a missed
        // notification then costs latency, never a stall.
        let mut used = self.process_tx();
        self.muxer.expire(Instant::now());
        used |= self.process_rx();
        if used && let Err(e) = self.interrupt.signal_used_queue() {
            log::error!("vsock: cannot interrupt the guest: {e}");
        }
        Ok(true)
    }

    /// Consumes the guest's TX packets (at most a queue's worth per call).
    fn process_tx(&mut self) -> bool {
        let mut used = false;
        let budget = self.txq.size();
        self.more_tx = false;
        for _ in 0..budget {
            let Some(mut chain) = self.txq.pop_descriptor_chain(&self.mem) else {
                return used;
            };
            let head = chain.head_index();
            let copy = chain.clone();
            match VsockPacket::from_tx_virtq_chain(&self.mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => {
                    let h = Header::of(&pkt);
                    self.muxer.on_guest_packet(&h, pkt.data_slice());
                }
                Err(e) => {
                    guest_error(
                        &mut self.guest_errors,
                        format_args!("dropping a malformed TX packet: {e}"),
                    );
                    if let Some(h) = peek_tx_header(copy) {
                        self.muxer.on_bad_guest_packet(&h);
                    }
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
        self.more_tx = true;
        used
    }

    /// Fills the guest's RX buffers with what the host side owes it.
    fn process_rx(&mut self) -> bool {
        let mut used = false;
        // Bounded by the queue size: each turn consumes a buffer or stops.
        for _ in 0..=self.rxq.size() {
            if !self.muxer.has_rx_work() {
                break;
            }
            let Some(mut chain) = self.rxq.pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            // Any buffer size is accepted (Linux gives 4 KiB ones); what we
            // write is capped at MAX_PKT_DATA by the connection.
            let (len, usable) =
                match VsockPacket::from_rx_virtq_chain(&self.mem, &mut chain, u32::MAX) {
                    Ok(mut pkt) => {
                        let usable = pkt.data_slice().is_some_and(|d| !d.is_empty());
                        (self.muxer.fill_rx(&mut pkt), usable)
                    }
                    Err(e) => {
                        guest_error(
                            &mut self.guest_errors,
                            format_args!("unusable RX buffer: {e}"),
                        );
                        (Some(0), false)
                    }
                };
            match len {
                Some(len) => {
                    if let Err(e) = self.rxq.add_used(&self.mem, head, len) {
                        guest_error(
                            &mut self.guest_errors,
                            format_args!("cannot return RX descriptor {head}: {e}"),
                        );
                    }
                    used = true;
                }
                // Nothing to send after all: leave the buffer for later.
                None if usable => {
                    self.rxq.go_to_previous_position();
                    break;
                }
                // This buffer cannot carry data; hand it back empty.
                None => {
                    if let Err(e) = self.rxq.add_used(&self.mem, head, 0) {
                        guest_error(
                            &mut self.guest_errors,
                            format_args!("cannot return RX descriptor {head}: {e}"),
                        );
                    }
                    used = true;
                }
            }
        }
        used
    }

    #[cfg(test)]
    pub fn muxer(&self) -> &Muxer {
        &self.muxer
    }
}

/// Logs a guest mistake: loudly for the first few, quietly after that, so a
/// hostile guest cannot flood the host's log.
fn guest_error(count: &mut u64, what: std::fmt::Arguments<'_>) {
    *count += 1;
    if *count <= LOUD_GUEST_ERRORS {
        log::warn!("vsock: {what}");
    } else {
        log::debug!("vsock: {what}");
    }
}
