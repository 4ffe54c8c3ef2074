//! virtio-vsock (device id 19) with a "hybrid" host side, the Firecracker
//! convention: the host end of every connection is a Unix stream.
//!
//! * Host to guest: a host program connects to the device's Unix socket
//!   ([`VsockConfig::uds_path`]) and writes `CONNECT <port>\n`. The device
//!   sends the guest a connection request for `<port>`; when the guest
//!   accepts, the program reads `OK <host port>\n` and the stream is
//!   connected to the guest socket. If the guest refuses (nothing listens on
//!   `<port>`) or does not answer within [`VsockConfig::connect_timeout`],
//!   the device closes the stream.
//! * Guest to host: a guest connection to host (CID 2) port `P` is
//!   connected to the Unix socket `<uds_path>_P`, on which a host program
//!   listens; if nothing does, the guest's connection is reset.
//!
//! Guest memory is hostile input: packets come out of descriptor chains
//! only through `virtio-vsock`'s checked parser (see [`packet`]), every
//! length is capped, and malformed chains are returned to the guest unused.
//! Host memory per connection is bounded by [`VsockConfig::conn_buf_size`],
//! and connections by [`VsockConfig::max_connections`].

mod conn;
mod muxer;
pub mod packet;
mod worker;

#[cfg(test)]
mod tests;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{
    ActivateError, Activation, VirtioDevice, WorkerThread, copy_config, device_type, features,
};
use conn::Limits;
use muxer::{Muxer, Settings};
use worker::Worker;

/// The host's context id.
pub const HOST_CID: u64 = 2;

/// Largest payload of one packet, either way (Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PKT_DATA: u32 = 64 * 1024;

/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;

/// How the device is set up.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The guest's context id (3 or more, below `u32::MAX`).
    pub guest_cid: u64,
    /// The Unix socket the device listens on; guest connections to host
    /// port `P` go to `<uds_path>_P`. Must not exist yet.
    pub uds_path: PathBuf,
    /// Most connections (and host clients in their handshake) at once.
    pub max_connections: usize,
    /// Receive buffer per connection, advertised to the guest as
    /// `buf_alloc`: at most this many bytes from the guest wait for a slow
    /// host reader, per connection.
    pub conn_buf_size: u32,
    /// How long a host client may take to send `CONNECT`, and the guest to
    /// accept the connection.
    pub connect_timeout: Duration,
    /// How long a closing connection waits for the guest's RST (and a reset
    /// one for an RX buffer to send the RST in).
    pub close_timeout: Duration,
}

impl VsockConfig {
    /// Defaults: 256 connections, 256 KiB buffers, 5 s timeouts.
    pub fn new(guest_cid: u64, uds_path: impl Into<PathBuf>) -> Self {
        Self {
            guest_cid,
            uds_path: uds_path.into(),
            max_connections: 256,
            conn_buf_size: 256 * 1024,
            connect_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is reserved or out of range.
    #[error("invalid guest CID {0}: it must be at least 3 and below 2^32 - 1")]
    InvalidCid(u64),
    /// A limit in the configuration is out of range.
    #[error("invalid vsock configuration: {0}")]
    InvalidConfig(&'static str),
    /// The Unix socket could not be created.
    #[error("cannot listen on {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// The virtio-vsock device. Put it behind a
/// [`MmioTransport`](crate::virtio::MmioTransport).
#[derive(Debug)]
pub struct Vsock {
    config: VsockConfig,
    listener: UnixListener,
    worker: Option<WorkerThread>,
}

impl Vsock {
    /// Creates the device and starts listening on `config.uds_path` (host
    /// clients may connect at once; they are served once the guest driver
    /// starts the device).
    pub fn new(config: VsockConfig) -> Result<Self, VsockError> {
        if config.guest_cid < 3 || config.guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(config.guest_cid));
        }
        if config.max_connections == 0 {
            return Err(VsockError::InvalidConfig("max_connections must not be 0"));
        }
        if !(4096..=(64 << 20)).contains(&config.conn_buf_size) {
            return Err(VsockError::InvalidConfig(
                "conn_buf_size must be between 4 KiB and 64 MiB",
            ));
        }
        let listener = UnixListener::bind(&config.uds_path).map_err(|source| VsockError::Bind {
            path: config.uds_path.clone(),
            source,
        })?;
        Ok(Self {
            config,
            listener,
            worker: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VsockConfig {
        &self.config
    }

    /// The Unix socket host clients connect to.
    pub fn uds_path(&self) -> &Path {
        &self.config.uds_path
    }

    /// Whether the worker thread runs.
    pub fn is_running(&self) -> bool {
        self.worker
            .as_ref()
            .is_some_and(|w| !w.handle.is_finished())
    }

    fn settings(&self) -> Settings {
        Settings {
            uds_path: self.config.uds_path.clone(),
            max_connections: self.config.max_connections,
            connect_timeout: self.config.connect_timeout,
            limits: Limits {
                guest_cid: self.config.guest_cid,
                buf_alloc: self.config.conn_buf_size,
                close_timeout: self.config.close_timeout,
            },
        }
    }

    /// Builds the worker for `a` (without starting a thread).
    fn build_worker(&self, a: Activation, kill: EventFd) -> Result<Worker, ActivateError> {
        let n = a.queues.len();
        if n != 3 || a.queue_evts.len() != 3 {
            return Err(ActivateError::QueueCount {
                expected: 3,
                got: n.min(a.queue_evts.len()),
            });
        }
        if let Some(i) = a
            .queues
            .iter()
            .position(|q| !virtio_queue::QueueT::ready(q))
        {
            return Err(ActivateError::QueueNotReady(i));
        }
        let listener = self.listener.try_clone().map_err(ActivateError::Epoll)?;
        let epoll = Epoll::new().map_err(ActivateError::Epoll)?;
        let muxer = Muxer::new(self.settings(), epoll, listener).map_err(ActivateError::Epoll)?;
        let Ok(queues) = <[_; 3]>::try_from(a.queues) else {
            return Err(ActivateError::QueueCount {
                expected: 3,
                got: n,
            });
        };
        let Ok(evts) = <[_; 3]>::try_from(a.queue_evts) else {
            return Err(ActivateError::QueueCount {
                expected: 3,
                got: n,
            });
        };
        // Queue 0 is RX, 1 TX, 2 the event queue (virtio 1.2, 5.10.2).
        Worker::new(a.mem, queues, evts, kill, a.interrupt, muxer).map_err(ActivateError::Epoll)
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop("vsock");
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        features::VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        let cfg = self.config.guest_cid.to_le_bytes();
        copy_config(&cfg, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("vsock: guest wrote read-only config at {offset:#x}");
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let kill = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::EventFd)?;
        let kill2 = kill.try_clone().map_err(ActivateError::EventFd)?;
        let worker = self.build_worker(a, kill2)?;
        let handle = std::thread::Builder::new()
            .name("vsock".into())
            .spawn(move || worker.run())
            .map_err(ActivateError::Thread)?;
        self.worker = Some(WorkerThread { handle, kill });
        Ok(())
    }

    fn reset(&mut self) {
        // Connections die with the worker: their host streams close.
        self.stop_worker();
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.stop_worker();
        if let Err(e) = std::fs::remove_file(&self.config.uds_path) {
            log::debug!(
                "vsock: cannot remove {}: {e}",
                self.config.uds_path.display()
            );
        }
    }
}
