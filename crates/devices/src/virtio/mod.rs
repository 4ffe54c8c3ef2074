//! virtio: the virtio-mmio transport ([`MmioTransport`]) and the devices
//! behind it ([`vsock::Vsock`], [`fs::Fs`], [`net::Net`]).
//!
//! A device implements [`VirtioDevice`]; the transport owns it, decodes the
//! guest's register accesses, negotiates features, collects the queue
//! configuration and, when the driver sets `DRIVER_OK`, hands the device
//! its queues, their notification eventfds, guest memory and an
//! [`Interrupt`] ([`VirtioDevice::activate`]). A device typically runs a
//! worker thread from then on, until [`VirtioDevice::reset`].
//!
//! Wiring a device into the VMM:
//!
//! 1. `MmioTransport::new(device, mem)`, then put it on the
//!    [`MmioBus`](crate::MmioBus) at `base` with length [`MMIO_WINDOW_SIZE`];
//! 2. register [`Interrupt::irqfd`] as a KVM irqfd for the device's GSI;
//! 3. optionally register each of [`MmioTransport::queue_evts`] as a KVM
//!    ioeventfd at `base + NOTIFY_REG_OFFSET` with datamatch = queue index
//!    (without it, the transport signals the same eventfds from the MMIO
//!    exit);
//! 4. add [`mmio_cmdline_arg`]`(base, gsi)` to the kernel command line.

pub mod fs;
mod interrupt;
mod mmio;
pub mod net;
pub mod vsock;

pub use interrupt::Interrupt;
pub use mmio::{MMIO_WINDOW_SIZE, MmioTransport, NOTIFY_REG_OFFSET, TransportError};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// virtio device ids (virtio 1.2, 5).
pub mod device_type {
    /// virtio-net.
    pub const NET: u32 = 1;
    /// virtio-vsock.
    pub const VSOCK: u32 = 19;
    /// virtio-fs.
    pub const FS: u32 = 26;
}

/// Feature bits common to all devices.
pub mod features {
    /// The device is a virtio 1.x ("modern") device. Mandatory over the
    /// version-2 MMIO transport.
    pub const VERSION_1: u64 = 1 << 32;
    /// The driver may use indirect descriptor tables.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// used_event / avail_event notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready; the device may run.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Everything a device gets when the driver sets `DRIVER_OK`.
#[derive(Debug)]
pub struct Activation {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues as the driver configured them, in queue-index order, one
    /// per entry of [`VirtioDevice::queue_max_sizes`]. A queue the driver did
    /// not enable has `ready() == false`; ready queues lie in guest memory
    /// (the transport checked).
    pub queues: Vec<Queue>,
    /// Written when the driver notifies a queue (same order as `queues`).
    pub queue_evts: Vec<EventFd>,
    /// How the device interrupts the guest.
    pub interrupt: Interrupt,
    /// The features the driver accepted.
    pub acked_features: u64,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not enable a queue the device needs.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// The transport passed the wrong number of queues.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues passed.
        got: usize,
    },
    /// The device is already running.
    #[error("device already active")]
    AlreadyActive,
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// Setting up the device's epoll failed.
    #[error("cannot set up the device's epoll")]
    Epoll(#[source] std::io::Error),
    /// Starting the device's worker thread failed.
    #[error("cannot start the device's worker thread")]
    Thread(#[source] std::io::Error),
    /// The device's worker thread could not drop its privileges, so it
    /// serves nothing.
    #[error("cannot jail the device's worker thread")]
    Jail(#[source] fs::JailError),
    /// The device's host-side backend could not be set up, or was lost.
    #[error("cannot set up the device's backend")]
    Backend(#[source] std::io::Error),
    /// The device's worker thread ended before it reported it was ready.
    #[error("the device's worker thread died while starting")]
    ThreadDied,
}

/// A virtio device, as the transport sees it.
pub trait VirtioDevice: Send {
    /// The virtio device id (see [`device_type`]).
    fn device_type(&self) -> u32;
    /// The largest size of each queue (each a power of two); their number is
    /// the device's number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features the device offers. Must include [`features::VERSION_1`].
    fn features(&self) -> u64;
    /// The driver reads the device-specific configuration space. The
    /// transport zero-fills `data` first; bytes past the end stay zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver writes the device-specific configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device (the driver set `DRIVER_OK`).
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops the device and returns it to its initial state (the driver
    /// wrote 0 to the status register). Must stop any worker thread before
    /// returning; the device may be activated again afterwards.
    fn reset(&mut self);
}

/// A device's worker thread and the eventfd that tells it to stop.
#[derive(Debug)]
pub(crate) struct WorkerThread {
    pub handle: std::thread::JoinHandle<()>,
    pub kill: EventFd,
}

impl WorkerThread {
    /// Tells the worker to stop and waits for it; `name` labels the log.
    pub fn stop(self, name: &str) {
        if let Err(e) = self.kill.write(1) {
            log::error!("{name}: cannot stop the worker: {e}");
        }
        if self.handle.join().is_err() {
            log::error!("{name}: the worker thread panicked");
        }
    }
}

/// Copies the device configuration space `cfg` at `offset` into `data` for
/// a driver's read; bytes past the end of `cfg` are left as they are (the
/// transport zero-fills them).
pub fn copy_config(cfg: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        if let Some(v) = offset
            .checked_add(i as u64)
            .and_then(|o| cfg.get(usize::try_from(o).ok()?))
        {
            *b = *v;
        }
    }
}

/// The kernel command-line argument that announces a virtio-mmio device at
/// `base` with interrupt `irq` (the `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`
/// syntax): `virtio_mmio.device=4K@0xd0000000:5`.
pub fn mmio_cmdline_arg(base: u64, irq: u32) -> String {
    format!(
        "virtio_mmio.device={}K@{base:#x}:{irq}",
        MMIO_WINDOW_SIZE >> 10
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_arg_format() {
        assert_eq!(
            mmio_cmdline_arg(0xd000_0000, 5),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(
            mmio_cmdline_arg(0x1_0000_1000, 12),
            "virtio_mmio.device=4K@0x100001000:12"
        );
    }
}
