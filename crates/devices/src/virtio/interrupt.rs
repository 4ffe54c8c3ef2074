//! A virtio-mmio device's interrupt: the InterruptStatus bits and the
//! eventfd that raises the device's interrupt line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Shared by the transport (which reads and acknowledges the status bits
/// for the guest) and the device's worker (which sets them and raises the
/// interrupt). Cloning shares the same state.
///
/// The VMM registers [`Interrupt::irqfd`] with KVM as an irqfd for the
/// device's GSI: each write then pulses the line (edge-triggered through the
/// I/O APIC, as Firecracker does). A VMM without irqfd can instead poll the
/// eventfd and inject the interrupt itself.
#[derive(Debug, Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    evt: Arc<EventFd>,
}

impl Interrupt {
    /// A new interrupt with no bits set.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            status: Arc::new(AtomicU32::new(0)),
            evt: Arc::new(EventFd::new(EFD_NONBLOCK)?),
        })
    }

    /// The eventfd to register as the KVM irqfd.
    pub fn irqfd(&self) -> &EventFd {
        &self.evt
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// The device put buffers in a used ring.
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.raise(VIRTIO_MMIO_INT_VRING)
    }

    /// The device's configuration changed (or it needs a reset).
    pub fn signal_config_change(&self) -> std::io::Result<()> {
        self.raise(VIRTIO_MMIO_INT_CONFIG)
    }

    fn raise(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::AcqRel);
        self.evt.write(1)
    }

    /// The driver acknowledged `bits` (InterruptACK).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Clears all bits (device reset).
    pub(crate) fn clear(&self) {
        self.status.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_ack_and_clear() {
        let i = Interrupt::new().unwrap();
        let j = i.clone();
        assert_eq!(i.status(), 0);
        j.signal_used_queue().unwrap();
        assert_eq!(i.status(), VIRTIO_MMIO_INT_VRING);
        j.signal_config_change().unwrap();
        assert_eq!(i.status(), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(i.irqfd().read().unwrap(), 2);
        i.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(j.status(), VIRTIO_MMIO_INT_CONFIG);
        i.clear();
        assert_eq!(j.status(), 0);
        // Nothing raised since the read: the eventfd is empty.
        assert!(i.irqfd().read().is_err());
    }
}
