//! virtio-net (device id 1): one RX/TX queue pair whose host side is a
//! user-space backend ([`NetBackend`]).
//!
//! The device is hand-written: rust-vmm has no virtio-net device crate
//! (vm-virtio has none; the `vhost` crate only drives the kernel's
//! vhost-net or a vhost-user back end, which need more than a socket).
//!
//! # Backends
//!
//! * [`NetBackend::Stream`]: a connected `AF_UNIX` `SOCK_STREAM` socket
//!   with QEMU's "stream" framing, the one passt (`--fd`), gvproxy and
//!   libkrun speak: each Ethernet frame (no FCS, no `virtio_net_hdr`)
//!   preceded by its length as a 4-byte big-endian number. passt wants
//!   complete frames with valid checksums, so this backend offers no
//!   checksum or segmentation offload: the guest computes every checksum
//!   and sends frames of at most its MTU. On RX the device writes a zeroed
//!   12-byte `virtio_net_hdr_v1` (only `num_buffers` set) before the frame;
//!   on TX it strips the guest's header.
//! * [`NetBackend::Tap`]: a TAP fd opened with
//!   `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte vnet header (see
//!   [`open_tap`]). The header is the kernel's own format, so it passes
//!   through both ways and the device offers checksum offload and TSO
//!   (`CSUM`, `GUEST_CSUM`, `HOST_TSO4/6`, `GUEST_TSO4/6`). The TAP's
//!   offloads (`TUNSETOFFLOAD`) follow what the driver *acked*, as
//!   Firecracker does: `TUN_F_CSUM` from `GUEST_CSUM`, `TUN_F_TSO4/6` from
//!   `GUEST_TSO4/6`.
//!
//! Both backends also get `VERSION_1`, `MAC`, `MTU`, `STATUS` (link up
//! while the device runs and the backend lives; a config-change interrupt
//! when the backend dies) and `MRG_RXBUF`, so a 65520-byte MTU (passt's
//! default) works with the 4 KiB buffers Linux posts: one frame fills
//! several buffers and `num_buffers` says how many. `EVENT_IDX` is not
//! offered (the device does honour `VRING_AVAIL_F_NO_INTERRUPT`).
//!
//! # Hostile guests
//!
//! Descriptor chains are walked with every address checked against guest
//! memory, at most [`QUEUE_SIZE`] descriptors per chain (loops and
//! unterminated chains are malformed), and a TX frame must be
//! [`MIN_FRAME`]..=[`MAX_FRAME`] bytes after the header: anything else is
//! dropped, counted ([`NetStats`]) and its chain returned. Host memory is
//! fixed per device: one receive staging buffer ([`STREAM_RX_BUF`] for a
//! stream, one frame for a TAP) and a TX backlog of at most
//! [`STREAM_TX_BACKLOG`] bytes for a stream whose peer reads slowly. When
//! the guest posts no RX buffers, the device stops reading the backend
//! (passt or the TAP queue then buffer or drop) until the guest notifies
//! the RX queue; when the stream peer does not read, the device stops
//! taking TX buffers until the socket is writable. Each wake-up of the
//! worker does a bounded amount of work.
//!
//! A stream peer that announces a frame longer than [`MAX_FRAME`] breaks
//! the protocol: the device logs it, stops using the backend and reports
//! the link down; nothing of that size is ever allocated.

mod backend;
mod tap;
mod worker;

#[cfg(test)]
mod tests;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{ActivateError, Activation, VirtioDevice, copy_config, device_type, features};
use backend::{Backend, Offloads};
pub use tap::{TapError, open_tap};
use worker::Worker;

/// Size of each of the two queues (0 = RX, 1 = TX).
pub const QUEUE_SIZE: u16 = 256;

/// Length of the `virtio_net_hdr_v1` before every frame in the queues.
pub const VNET_HDR_LEN: usize = 12;

/// Shortest frame the device passes on: an Ethernet header.
pub const MIN_FRAME: usize = 14;

/// Longest frame, either way (`ETH_MAX_MTU`, passt's limit).
pub const MAX_FRAME: usize = 65535;

/// Smallest MTU the device accepts (IPv4's minimum).
pub const MIN_MTU: u16 = 68;

/// Largest MTU: a frame of `MAX_MTU` plus its Ethernet header is
/// [`MAX_FRAME`].
pub const MAX_MTU: u16 = (MAX_FRAME - MIN_FRAME) as u16;

/// Receive staging buffer of a stream backend: several frames per read,
/// and always room for a whole one.
pub const STREAM_RX_BUF: usize = 256 * 1024;

/// Most bytes waiting for a slow stream peer; the device takes no TX
/// buffer from the guest unless a largest frame still fits.
pub const STREAM_TX_BACKLOG: usize = 256 * 1024;

/// Which feature bits the device offers with each backend.
const BASE_FEATURES: u64 = features::VERSION_1
    | 1 << VIRTIO_NET_F_MAC
    | 1 << VIRTIO_NET_F_MTU
    | 1 << VIRTIO_NET_F_STATUS
    | 1 << VIRTIO_NET_F_MRG_RXBUF;
const TAP_OFFLOAD_FEATURES: u64 = 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6;

/// How the device is set up.
#[derive(Debug)]
pub struct NetConfig {
    /// The guest's MAC address (unicast, not all zeros).
    pub mac: [u8; 6],
    /// The MTU the driver is told ([`MIN_MTU`]..=[`MAX_MTU`]).
    pub mtu: u16,
    /// Where the guest's frames go.
    pub backend: NetBackend,
}

/// The host side of the device.
#[derive(Debug)]
pub enum NetBackend {
    /// AF_UNIX SOCK_STREAM, passt's framing: each Ethernet frame preceded by a 4-byte big-endian length (no virtio_net_hdr).
    Stream(OwnedFd),
    /// A TAP fd opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (see open_tap).
    Tap(OwnedFd),
}

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The MAC address is multicast or all zeros.
    #[error("invalid MAC address {0}: it must be a unicast, non-zero address")]
    InvalidMac(String),
    /// The MTU is out of range.
    #[error("invalid MTU {0}: it must be between {MIN_MTU} and {MAX_MTU}")]
    InvalidMtu(u16),
    /// The stream backend is not a Unix stream socket.
    #[error("the stream backend must be a connected AF_UNIX SOCK_STREAM socket")]
    NotUnixStream,
    /// The TAP backend is not a TAP opened the way the device needs.
    #[error("the TAP backend must be opened with IFF_TAP, IFF_NO_PI and IFF_VNET_HDR")]
    NotVnetTap,
    /// Inspecting or setting up the backend's fd failed.
    #[error("cannot set up the network backend ({what})")]
    Backend {
        /// The step that failed.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// The device's counters and link state, shared with whoever watches it
/// ([`Net::stats`]); reading them costs a few atomic loads.
#[derive(Debug, Default)]
pub struct NetStats {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
    link_up: AtomicBool,
}

/// A snapshot of [`NetStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames given to the guest.
    pub rx_frames: u64,
    /// Their bytes (Ethernet frames, without the virtio header).
    pub rx_bytes: u64,
    /// Frames from the backend the guest did not get (no room, too short,
    /// or lost to a malformed RX buffer).
    pub rx_dropped: u64,
    /// Frames from the guest passed to the backend.
    pub tx_frames: u64,
    /// Their bytes (Ethernet frames, without the virtio header).
    pub tx_bytes: u64,
    /// Frames from the guest dropped: malformed chains, bad lengths or
    /// headers, a dead backend, a TAP that refused them.
    pub tx_dropped: u64,
}

impl NetStats {
    /// The counters now.
    pub fn snapshot(&self) -> NetCounters {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetCounters {
            rx_frames: l(&self.rx_frames),
            rx_bytes: l(&self.rx_bytes),
            rx_dropped: l(&self.rx_dropped),
            tx_frames: l(&self.tx_frames),
            tx_bytes: l(&self.tx_bytes),
            tx_dropped: l(&self.tx_dropped),
        }
    }

    /// Whether the link is up (the device runs and its backend works).
    pub fn link_up(&self) -> bool {
        self.link_up.load(Ordering::Acquire)
    }

    fn set_link(&self, up: bool) {
        self.link_up.store(up, Ordering::Release);
    }

    fn add_rx(&self, bytes: usize) {
        self.rx_frames.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn add_tx(&self, bytes: usize) {
        self.tx_frames.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn rx_drop(&self) {
        self.rx_dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn tx_drop(&self) {
        self.tx_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// The worker thread; it hands the backend (and its buffered bytes, so a
/// stream keeps its framing) back when it stops.
#[derive(Debug)]
struct NetWorker {
    handle: JoinHandle<Backend>,
    kill: EventFd,
}

/// The virtio-net device. Put it behind a
/// [`MmioTransport`](crate::virtio::MmioTransport).
#[derive(Debug)]
pub struct Net {
    mac: [u8; 6],
    mtu: u16,
    tap: bool,
    /// `None` while the worker owns it, or if a worker was lost.
    backend: Option<Backend>,
    stats: Arc<NetStats>,
    worker: Option<NetWorker>,
}

impl Net {
    /// Checks the configuration and the backend's fd (made non-blocking);
    /// the backend is used once the guest driver starts the device.
    pub fn new(config: NetConfig) -> Result<Self, NetError> {
        let mac = config.mac;
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(NetError::InvalidMac(format_mac(&mac)));
        }
        if !(MIN_MTU..=MAX_MTU).contains(&config.mtu) {
            return Err(NetError::InvalidMtu(config.mtu));
        }
        let (tap, backend) = match config.backend {
            NetBackend::Stream(fd) => (false, Backend::stream(fd)?),
            NetBackend::Tap(fd) => (true, Backend::tap(fd)?),
        };
        Ok(Self {
            mac,
            mtu: config.mtu,
            tap,
            backend: Some(backend),
            stats: Arc::new(NetStats::default()),
            worker: None,
        })
    }

    /// The counters and link state (a shared handle: it stays current).
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Whether the worker thread runs.
    pub fn is_running(&self) -> bool {
        self.worker
            .as_ref()
            .is_some_and(|w| !w.handle.is_finished())
    }

    /// Builds the worker for `a` (without starting a thread). On error the
    /// backend stays with the device.
    fn build_worker(&mut self, a: Activation, kill: EventFd) -> Result<Worker, ActivateError> {
        let n = a.queues.len().min(a.queue_evts.len());
        if n != 2 || a.queues.len() != 2 || a.queue_evts.len() != 2 {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: n,
            });
        }
        if let Some(i) = a
            .queues
            .iter()
            .position(|q| !virtio_queue::QueueT::ready(q))
        {
            return Err(ActivateError::QueueNotReady(i));
        }
        let Some(backend) = self.backend.as_mut() else {
            return Err(ActivateError::Backend(std::io::Error::other(
                "the backend was lost with a previous worker",
            )));
        };
        let offloads = Offloads::from_acked(a.acked_features);
        backend
            .set_offloads(&offloads)
            .map_err(ActivateError::Backend)?;
        let epoll = vmm_sys_util::epoll::Epoll::new().map_err(ActivateError::Epoll)?;
        let Ok(queues) = <[_; 2]>::try_from(a.queues) else {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: n,
            });
        };
        let Ok(evts) = <[_; 2]>::try_from(a.queue_evts) else {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: n,
            });
        };
        // Checked above; taken only now that nothing else can fail first.
        let backend = self.backend.take().ok_or(ActivateError::AlreadyActive)?;
        Worker::new(worker::Setup {
            mem: a.mem,
            queues,
            evts,
            kill,
            interrupt: a.interrupt,
            epoll,
            backend,
            stats: self.stats.clone(),
            offloads,
            mac: self.mac,
        })
        .map_err(|(e, backend)| {
            self.backend = Some(backend);
            ActivateError::Epoll(e)
        })
    }

    fn stop_worker(&mut self) {
        let Some(w) = self.worker.take() else {
            return;
        };
        if let Err(e) = w.kill.write(1) {
            log::error!("net: cannot stop the worker: {e}");
        }
        match w.handle.join() {
            Ok(backend) => self.backend = Some(backend),
            Err(_) => log::error!("net: the worker thread panicked; the backend is lost"),
        }
        self.stats.set_link(false);
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        if self.tap {
            BASE_FEATURES | TAP_OFFLOAD_FEATURES
        } else {
            BASE_FEATURES
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config { u8 mac[6]; le16 status;
        //   le16 max_virtqueue_pairs; le16 mtu; }
        let mut cfg = [0u8; 12];
        cfg[..6].copy_from_slice(&self.mac);
        let status = if self.stats.link_up() {
            VIRTIO_NET_S_LINK_UP as u16
        } else {
            0
        };
        cfg[6..8].copy_from_slice(&status.to_le_bytes());
        cfg[8..10].copy_from_slice(&1u16.to_le_bytes());
        cfg[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        copy_config(&cfg, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // Without VIRTIO_NET_F_CTRL_MAC_ADDR the config space is read-only.
        log::debug!("net: guest wrote read-only config at {offset:#x}");
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let kill = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::EventFd)?;
        let kill2 = kill.try_clone().map_err(ActivateError::EventFd)?;
        let interrupt = a.interrupt.clone();
        let worker = self.build_worker(a, kill2)?;
        // Up before the thread starts: from then on only the worker takes
        // it down (when the backend dies).
        let up = worker.backend_alive();
        self.stats.set_link(up);
        let handle = match std::thread::Builder::new()
            .name("net".into())
            .spawn(move || worker.run())
        {
            Ok(h) => h,
            Err(e) => {
                self.stats.set_link(false);
                log::error!("net: the backend is lost with the worker that did not start");
                return Err(ActivateError::Thread(e));
            }
        };
        self.worker = Some(NetWorker { handle, kill });
        // Linux reads the status once the device runs; the interrupt makes
        // sure a driver that read it earlier looks again.
        if up && let Err(e) = interrupt.signal_config_change() {
            log::debug!("net: cannot raise the config interrupt: {e}");
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

/// `aa:bb:cc:dd:ee:ff`.
fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
