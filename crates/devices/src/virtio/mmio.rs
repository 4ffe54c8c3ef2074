//! The virtio-mmio transport, version 2 ("modern", virtio 1.2, 4.2).

use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{Activation, Interrupt, VirtioDevice, features, status};
use crate::bus::MmioDevice;

/// Size of a device's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// Offset of the QueueNotify register: a KVM ioeventfd for queue `i` goes at
/// `base + NOTIFY_REG_OFFSET` with datamatch `i` (4 bytes).
pub const NOTIFY_REG_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

/// "virt" in little-endian.
const MAGIC: u32 = 0x7472_6976;
/// The modern (non-legacy) register layout.
const VERSION: u32 = 2;
/// husk does not claim a PCI vendor id.
const VENDOR_ID: u32 = 0;

/// Errors building a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The device declared a queue size the virtqueue code cannot use.
    #[error("queue {index}: invalid maximum size {size}")]
    QueueSize {
        /// Queue index.
        index: usize,
        /// Declared size.
        size: u16,
    },
    /// The device does not offer VIRTIO_F_VERSION_1.
    #[error("device does not offer VIRTIO_F_VERSION_1")]
    NotModern,
    /// Creating a queue eventfd or the interrupt failed.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}

/// A virtio device behind the virtio-mmio register interface. Put it on the
/// MMIO bus at its base with length [`MMIO_WINDOW_SIZE`].
#[derive(Debug)]
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemoryMmap,
    interrupt: Interrupt,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    active: bool,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// A transport for `device` in guest memory `mem`.
    pub fn new(device: D, mem: GuestMemoryMmap) -> Result<Self, TransportError> {
        if device.features() & features::VERSION_1 == 0 {
            return Err(TransportError::NotModern);
        }
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for (index, &size) in device.queue_max_sizes().iter().enumerate() {
            queues.push(Queue::new(size).map_err(|_| TransportError::QueueSize { index, size })?);
            queue_evts.push(EventFd::new(EFD_NONBLOCK).map_err(TransportError::EventFd)?);
        }
        Ok(Self {
            device,
            mem,
            interrupt: Interrupt::new().map_err(TransportError::EventFd)?,
            queues,
            queue_evts,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            active: false,
        })
    }

    /// The device's interrupt; register [`Interrupt::irqfd`] as a KVM irqfd.
    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    /// One eventfd per queue, signalled when the guest notifies the queue.
    /// The VMM may also register them as KVM ioeventfds (see
    /// [`NOTIFY_REG_OFFSET`]); the transport writes them itself when the
    /// notification arrives as an MMIO exit instead.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Whether the device is running (the driver set `DRIVER_OK` and the
    /// device started).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Stops the device (and its worker thread) as a guest reset would. For
    /// the VMM's shutdown path; the guest may start the device again.
    pub fn shutdown(&mut self) {
        self.reset();
    }

    /// Tells the driver the device configuration changed.
    pub fn notify_config_change(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if let Err(e) = self.interrupt.signal_config_change() {
            log::error!("virtio-mmio: cannot raise the config interrupt: {e}");
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn has_status(&self, set: u32, clear: u32) -> bool {
        self.status & set == set && self.status & clear == 0
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        // Drop notifications that arrived before the reset.
        for e in &self.queue_evts {
            let _ = e.read();
        }
        self.interrupt.clear();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & old != old {
            log::warn!("virtio-mmio: driver cleared status bits ({old:#x} -> {value:#x}); ignored");
            return;
        }
        let added = value & !old;
        if added & status::FAILED != 0 {
            log::warn!("virtio-mmio: the driver failed the device (status {value:#x})");
            self.status |= status::FAILED;
        }
        if added & status::ACKNOWLEDGE != 0 {
            self.status |= status::ACKNOWLEDGE;
        }
        if added & status::DRIVER != 0 && self.has_status(status::ACKNOWLEDGE, 0) {
            self.status |= status::DRIVER;
        }
        if added & status::FEATURES_OK != 0 && self.has_status(status::DRIVER, 0) {
            let offered = self.device.features();
            let unknown = self.driver_features & !offered;
            if unknown != 0 {
                log::warn!(
                    "virtio-mmio: driver accepted features {unknown:#x} the device does not offer"
                );
            } else if self.driver_features & features::VERSION_1 == 0 {
                log::warn!("virtio-mmio: driver did not accept VIRTIO_F_VERSION_1");
            } else {
                self.status |= status::FEATURES_OK;
            }
        }
        if added & status::DRIVER_OK != 0
            && self.has_status(status::FEATURES_OK, status::FAILED | status::DRIVER_OK)
        {
            self.status |= status::DRIVER_OK;
            self.activate();
        }
        if self.status != value {
            log::debug!(
                "virtio-mmio: status {value:#x} requested, {:#x} set",
                self.status
            );
        }
    }

    fn activate(&mut self) {
        let res = self.activation().and_then(|a| {
            self.device
                .activate(a)
                .map_err(|e| format!("device refused to start: {e}"))
        });
        match res {
            Ok(()) => self.active = true,
            Err(e) => {
                log::error!("virtio-mmio: cannot activate device: {e}");
                self.status |= status::DEVICE_NEEDS_RESET;
                if let Err(e) = self.interrupt.signal_config_change() {
                    log::error!("virtio-mmio: cannot raise the config interrupt: {e}");
                }
            }
        }
    }

    fn activation(&mut self) -> Result<Activation, String> {
        let event_idx = self.driver_features & features::RING_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        let mut queue_evts = Vec::with_capacity(self.queues.len());
        for (i, (q, e)) in self.queues.iter_mut().zip(&self.queue_evts).enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(format!("queue {i} does not lie in guest memory"));
            }
            q.set_event_idx(event_idx);
            // The device gets its own copy; ours keeps answering register reads.
            queues.push(Queue::try_from(q.state()).map_err(|e| format!("queue {i}: {e}"))?);
            queue_evts.push(
                e.try_clone()
                    .map_err(|e| format!("queue {i} eventfd: {e}"))?,
            );
        }
        Ok(Activation {
            mem: self.mem.clone(),
            queues,
            queue_evts,
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
        })
    }

    fn read_reg(&mut self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            // No shared-memory regions: a length of all ones says so.
            VIRTIO_MMIO_SHM_LEN_LOW
            | VIRTIO_MMIO_SHM_LEN_HIGH
            | VIRTIO_MMIO_SHM_BASE_LOW
            | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => {
                log::debug!("virtio-mmio: read of register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u32, v: u32) {
        // Queue registers may change only between FEATURES_OK and DRIVER_OK;
        // feature registers only between DRIVER and FEATURES_OK.
        let queue_setup = self.has_status(
            status::FEATURES_OK,
            status::DRIVER_OK | status::FAILED | status::DEVICE_NEEDS_RESET,
        );
        let feature_setup = self.has_status(status::DRIVER, status::FEATURES_OK | status::FAILED);
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES if feature_setup => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                sel => {
                    if v != 0 {
                        log::warn!("virtio-mmio: driver features {v:#x} in window {sel} ignored");
                    }
                }
            },
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM if queue_setup => {
                if let Some(q) = self.selected_queue()
                    && q.try_set_size(v.min(u32::from(u16::MAX)) as u16).is_err()
                {
                    log::warn!("virtio-mmio: invalid queue size {v}");
                }
            }
            VIRTIO_MMIO_QUEUE_READY if queue_setup => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW if queue_setup => {
                self.with_queue(|q| q.set_desc_table_address(Some(v), None))
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH if queue_setup => {
                self.with_queue(|q| q.set_desc_table_address(None, Some(v)))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW if queue_setup => {
                self.with_queue(|q| q.set_avail_ring_address(Some(v), None))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH if queue_setup => {
                self.with_queue(|q| q.set_avail_ring_address(None, Some(v)))
            }
            VIRTIO_MMIO_QUEUE_USED_LOW if queue_setup => {
                self.with_queue(|q| q.set_used_ring_address(Some(v), None))
            }
            VIRTIO_MMIO_QUEUE_USED_HIGH if queue_setup => {
                self.with_queue(|q| q.set_used_ring_address(None, Some(v)))
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => match self.queue_evts.get(v as usize) {
                Some(e) => {
                    if let Err(e) = e.write(1) {
                        log::error!("virtio-mmio: cannot signal queue {v}: {e}");
                    }
                }
                None => log::debug!("virtio-mmio: notify of missing queue {v}"),
            },
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(v),
            VIRTIO_MMIO_STATUS => self.set_status(v),
            VIRTIO_MMIO_SHM_SEL => {}
            _ => log::debug!(
                "virtio-mmio: write {v:#x} to register {offset:#x} ignored (status {:#x})",
                self.status
            ),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }
}

impl<D: VirtioDevice> MmioDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            data.fill(0);
            self.device
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            log::debug!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored",
                data.len()
            );
            data.fill(0);
            return;
        }
        let v = self.read_reg(offset as u32);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
            return;
        };
        if offset % 4 != 0 {
            log::debug!("virtio-mmio: unaligned write at {offset:#x} ignored");
            return;
        }
        self.write_reg(offset as u32, u32::from_le_bytes(bytes));
    }
}

impl<D: VirtioDevice> Drop for MmioTransport<D> {
    fn drop(&mut self) {
        if self.active {
            self.device.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::ActivateError;
    use std::sync::{Arc, Mutex};
    use vm_memory::GuestAddress;

    /// (ready, size, descriptor table, avail ring, used ring, event idx).
    type QueueSummary = (bool, u16, u64, u64, u64, bool);

    /// What the dummy device saw, shared with the test.
    #[derive(Debug, Default)]
    struct Seen {
        activations: Vec<(Vec<QueueSummary>, u64)>,
        resets: u32,
        config_writes: Vec<(u64, Vec<u8>)>,
        evts: Vec<EventFd>,
        interrupt: Option<Interrupt>,
    }

    #[derive(Debug)]
    struct Dummy {
        seen: Arc<Mutex<Seen>>,
        fail: bool,
        sizes: Vec<u16>,
    }

    const DUMMY_FEATURES: u64 = features::VERSION_1 | features::RING_EVENT_IDX | 1 << 3;

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn features(&self) -> u64 {
            DUMMY_FEATURES
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            let cfg = [0x11u8, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
            for (i, b) in data.iter_mut().enumerate() {
                if let Some(v) = cfg.get(offset as usize + i) {
                    *b = *v;
                }
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.seen
                .lock()
                .unwrap()
                .config_writes
                .push((offset, data.to_vec()));
        }
        fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
            if self.fail {
                return Err(ActivateError::QueueNotReady(0));
            }
            let mut seen = self.seen.lock().unwrap();
            seen.activations.push((
                a.queues
                    .iter()
                    .map(|q| {
                        (
                            q.ready(),
                            q.size(),
                            q.desc_table(),
                            q.avail_ring(),
                            q.used_ring(),
                            q.event_idx_enabled(),
                        )
                    })
                    .collect(),
                a.acked_features,
            ));
            seen.evts = a.queue_evts;
            seen.interrupt = Some(a.interrupt);
            Ok(())
        }
        fn reset(&mut self) {
            self.seen.lock().unwrap().resets += 1;
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn transport(fail: bool) -> (MmioTransport<Dummy>, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let d = Dummy {
            seen: seen.clone(),
            fail,
            sizes: vec![256, 16],
        };
        (MmioTransport::new(d, mem()).unwrap(), seen)
    }

    fn r(t: &mut MmioTransport<Dummy>, off: u32) -> u32 {
        let mut d = [0xaau8; 4];
        MmioDevice::read(t, off.into(), &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport<Dummy>, off: u32, v: u32) {
        MmioDevice::write(t, off.into(), &v.to_le_bytes());
    }

    /// The Linux driver's sequence up to FEATURES_OK, accepting `feats`.
    fn negotiate(t: &mut MmioTransport<Dummy>, feats: u64) {
        w(t, VIRTIO_MMIO_STATUS, 0);
        w(t, VIRTIO_MMIO_STATUS, status::ACKNOWLEDGE);
        w(t, VIRTIO_MMIO_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        w(t, VIRTIO_MMIO_DRIVER_FEATURES, (feats >> 32) as u32);
        w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        w(t, VIRTIO_MMIO_DRIVER_FEATURES, feats as u32);
        w(
            t,
            VIRTIO_MMIO_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    fn setup_queue(t: &mut MmioTransport<Dummy>, i: u32, size: u32, base: u64) {
        w(t, VIRTIO_MMIO_QUEUE_SEL, i);
        w(t, VIRTIO_MMIO_QUEUE_NUM, size);
        for (lo, hi, addr) in [
            (
                VIRTIO_MMIO_QUEUE_DESC_LOW,
                VIRTIO_MMIO_QUEUE_DESC_HIGH,
                base,
            ),
            (
                VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                base + 0x4000,
            ),
            (
                VIRTIO_MMIO_QUEUE_USED_LOW,
                VIRTIO_MMIO_QUEUE_USED_HIGH,
                base + 0x8000,
            ),
        ] {
            w(t, lo, addr as u32);
            w(t, hi, (addr >> 32) as u32);
        }
        w(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }

    const ALL_OK: u32 =
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    #[test]
    fn identification_registers() {
        let (mut t, _) = transport(false);
        assert_eq!(r(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(r(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_ID), 42);
        assert_eq!(r(&mut t, VIRTIO_MMIO_VENDOR_ID), 0);
        assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(r(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 0);
        assert_eq!(r(&mut t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
        assert_eq!(r(&mut t, VIRTIO_MMIO_SHM_LEN_HIGH), u32::MAX);
        // Wrong widths and misaligned accesses read as zero and do nothing.
        let mut two = [0xffu8; 2];
        MmioDevice::read(&mut t, 0, &mut two);
        assert_eq!(two, [0, 0]);
        let mut four = [0xffu8; 4];
        MmioDevice::read(&mut t, 2, &mut four);
        assert_eq!(four, [0; 4]);
        MmioDevice::write(&mut t, VIRTIO_MMIO_STATUS.into(), &[1]);
        MmioDevice::write(&mut t, u64::from(VIRTIO_MMIO_STATUS) + 1, &[1, 0, 0, 0]);
        assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), 0);
    }

    #[test]
    fn feature_windows_and_negotiation() {
        let (mut t, _) = transport(false);
        w(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        assert_eq!(
            r(&mut t, VIRTIO_MMIO_DEVICE_FEATURES),
            DUMMY_FEATURES as u32
        );
        w(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
        w(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
        assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0);

        // Features written before DRIVER are ignored.
        w(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 8);
        assert_eq!(t.driver_features, 0);

        // Accepting a subset works.
        negotiate(&mut t, features::VERSION_1 | 1 << 3);
        assert_eq!(
            r(&mut t, VIRTIO_MMIO_STATUS),
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK
        );
        assert_eq!(t.driver_features, features::VERSION_1 | 1 << 3);
        // After FEATURES_OK the features are frozen.
        w(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0);
        assert_eq!(t.driver_features, features::VERSION_1 | 1 << 3);

        // A feature the device does not offer: FEATURES_OK is not set.
        negotiate(&mut t, features::VERSION_1 | 1 << 5);
        assert_eq!(
            r(&mut t, VIRTIO_MMIO_STATUS),
            status::ACKNOWLEDGE | status::DRIVER
        );
        // A legacy driver (no VERSION_1): refused too.
        negotiate(&mut t, 1 << 3);
        assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS) & status::FEATURES_OK, 0);
        // A bogus feature window is ignored.
        w(&mut t, VIRTIO_MMIO_STATUS, 0);
        w(
            &mut t,
            VIRTIO_MMIO_STATUS,
            status::ACKNOWLEDGE | status::DRIVER,
        );
        w(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 7);
        w(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, u32::MAX);
        assert_eq!(t.driver_features, 0);
    }

    #[test]
    fn status_bits_must_come_in_order_and_cannot_be_cleared() {
        let (mut t, seen) = transport(false);
        // DRIVER without ACKNOWLEDGE.
        w(&mut t, VIRTIO_MMIO_STATUS, status::DRIVER);
        assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), 0);
        // DRIVER_OK straight away: not set, nothing activated.
        w(&mut t, VIRTIO_MMIO_STATUS, ALL_OK & !status::FEATURES_OK);
        assert_eq!(
            r(&mut t, VIRTIO_MMIO_STATUS),
            status::ACKNOWLEDGE | status::DRIVER
        );
        assert!(seen.lock().unwrap().activations.is_empty());
        // Clearing a bit is ignored.
        w(&mut t, VIRTIO_MMIO_STATUS, status::ACKNOWLEDGE);
        assert_eq!(
            r(&mut t, VIRTIO_MMIO_STATUS),
            status::ACKNOWLEDGE | status::DRIVER
        );
        // FAILED sticks until reset.
        w(
            &mut t,
            VIRTIO_MMIO_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FAILED,
        );
        assert_ne!(r(&mut t, VIRTIO_MMIO_STATUS) & status::FAILED, 0);
        w(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), 0);
    }

    #[test]
    fn queue_setup_and_activation_on_driver_ok() {
        let (mut t, seen) = transport(false);
        // Queue registers before FEATURES_OK are ignored.
        setup_queue(&mut t, 0, 128, 0x1_0000);
        assert!(!t.queues[0].ready());

        negotiate(
            &mut t,
            features::VERSION_1 | features::RING_EVENT_IDX | 1 << 3,
        );
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 2);
        assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
        assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);

        setup_queue(&mut t, 0, 128, 0x1_0000);
        // Queue 1: an invalid size (not a power of two, then too big) keeps the default.
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        w(&mut t, VIRTIO_MMIO_QUEUE_NUM, 3);
        w(&mut t, VIRTIO_MMIO_QUEUE_NUM, 32);
        assert_eq!(t.queues[1].size(), 16);
        // Misaligned descriptor table: ignored.
        w(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x2_0008);
        assert_eq!(t.queues[1].desc_table(), 0);
        // Writes to a missing queue go nowhere.
        setup_queue(&mut t, 5, 16, 0x2_0000);
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);

        w(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), ALL_OK);
        assert!(t.is_active());
        {
            let s = seen.lock().unwrap();
            assert_eq!(s.activations.len(), 1);
            let (queues, acked) = &s.activations[0];
            assert_eq!(
                *acked,
                features::VERSION_1 | features::RING_EVENT_IDX | 1 << 3
            );
            assert_eq!(queues[0], (true, 128, 0x1_0000, 0x1_4000, 0x1_8000, true));
            assert!(!queues[1].0);
        }
        // Queue registers are frozen while running.
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        w(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
        assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
        // A second DRIVER_OK write does not activate again.
        w(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert_eq!(seen.lock().unwrap().activations.len(), 1);
    }

    #[test]
    fn notify_and_interrupt_registers() {
        let (mut t, seen) = transport(false);
        negotiate(&mut t, features::VERSION_1);
        setup_queue(&mut t, 0, 256, 0x1_0000);
        setup_queue(&mut t, 1, 16, 0x2_0000);
        w(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert!(t.is_active());

        // QueueNotify signals the queue's eventfd, as seen by the device
        // (its clones) and by the VMM (queue_evts, for ioeventfd).
        w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 9);
        {
            let s = seen.lock().unwrap();
            assert_eq!(s.evts[1].read().unwrap(), 2);
            assert!(s.evts[0].read().is_err());
        }
        // A write that KVM would deliver to the ioeventfd reaches the device too.
        t.queue_evts()[0].write(1).unwrap();
        assert_eq!(seen.lock().unwrap().evts[0].read().unwrap(), 1);

        // The device raises the interrupt; the driver reads and acks it.
        let irq = seen.lock().unwrap().interrupt.clone().unwrap();
        irq.signal_used_queue().unwrap();
        assert_eq!(t.interrupt().irqfd().read().unwrap(), 1);
        assert_eq!(
            r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_VRING
        );
        w(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
        assert_eq!(r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);

        // Config change bumps the generation and raises the config bit.
        t.notify_config_change();
        assert_eq!(r(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 1);
        assert_eq!(
            r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_CONFIG
        );
    }

    #[test]
    fn config_space_goes_to_the_device() {
        let (mut t, seen) = transport(false);
        let mut b = [0u8; 1];
        MmioDevice::read(&mut t, 0x101, &mut b);
        assert_eq!(b, [0x22]);
        let mut q = [0u8; 8];
        MmioDevice::read(&mut t, 0x100, &mut q);
        assert_eq!(q, [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
        // Past the device's config: zeros (not the bus's all-ones).
        let mut d = [0xffu8; 4];
        MmioDevice::read(&mut t, 0x106, &mut d);
        assert_eq!(d, [0x77, 0x88, 0, 0]);
        MmioDevice::read(&mut t, 0xffc, &mut d);
        assert_eq!(d, [0; 4]);
        MmioDevice::write(&mut t, 0x104, &[1, 2]);
        assert_eq!(seen.lock().unwrap().config_writes, vec![(4, vec![1, 2])]);
    }

    #[test]
    fn reset_tears_down_the_device_and_the_registers() {
        let (mut t, seen) = transport(false);
        negotiate(&mut t, features::VERSION_1);
        setup_queue(&mut t, 0, 64, 0x1_0000);
        setup_queue(&mut t, 1, 16, 0x2_0000);
        w(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert!(t.is_active());
        seen.lock()
            .unwrap()
            .interrupt
            .clone()
            .unwrap()
            .signal_used_queue()
            .unwrap();
        w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);

        w(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert!(!t.is_active());
        assert_eq!(seen.lock().unwrap().resets, 1);
        assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(t.driver_features, 0);
        for q in 0..2 {
            w(&mut t, VIRTIO_MMIO_QUEUE_SEL, q);
            assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        }
        assert_eq!(t.queues[0].size(), 256);
        assert_eq!(t.queues[0].desc_table(), 0);
        // The stale notification was drained.
        assert!(t.queue_evts()[0].read().is_err());

        // A reset of an inactive device does not reset the device again.
        w(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(seen.lock().unwrap().resets, 1);

        // And it can start again.
        negotiate(&mut t, features::VERSION_1);
        setup_queue(&mut t, 0, 256, 0x3_0000);
        w(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert!(t.is_active());
        assert_eq!(seen.lock().unwrap().activations.len(), 2);
        // Shutdown (the VMM's path) and drop reset it once each at most.
        t.shutdown();
        assert_eq!(seen.lock().unwrap().resets, 2);
        drop(t);
        assert_eq!(seen.lock().unwrap().resets, 2);
    }

    #[test]
    fn failed_activation_sets_needs_reset() {
        let (mut t, seen) = transport(true);
        negotiate(&mut t, features::VERSION_1);
        setup_queue(&mut t, 0, 256, 0x1_0000);
        w(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert!(!t.is_active());
        assert_ne!(
            r(&mut t, VIRTIO_MMIO_STATUS) & status::DEVICE_NEEDS_RESET,
            0
        );
        assert_eq!(
            r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_CONFIG
        );
        assert_eq!(seen.lock().unwrap().resets, 0);
        drop(t);
        assert_eq!(seen.lock().unwrap().resets, 0);
    }

    #[test]
    fn queues_outside_guest_memory_are_refused() {
        let (mut t, seen) = transport(false);
        negotiate(&mut t, features::VERSION_1);
        // Memory is 1 MiB: a ring at 2 MiB is outside it.
        setup_queue(&mut t, 0, 256, 0x20_0000);
        w(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert!(!t.is_active());
        assert!(seen.lock().unwrap().activations.is_empty());
        assert_ne!(
            r(&mut t, VIRTIO_MMIO_STATUS) & status::DEVICE_NEEDS_RESET,
            0
        );
        // Straddling the end of memory.
        negotiate(&mut t, features::VERSION_1);
        setup_queue(&mut t, 0, 256, 0x10_0000 - 0x8000 - 0x400);
        w(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert!(!t.is_active());
        // The used ring wrapping past the top of the address space.
        negotiate(&mut t, features::VERSION_1);
        setup_queue(&mut t, 0, 256, u64::MAX - 0x8003);
        w(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert!(!t.is_active());
    }

    #[test]
    fn refuses_devices_without_version_1_or_with_bad_queue_sizes() {
        #[derive(Debug)]
        struct Legacy(Vec<u16>, u64);
        impl VirtioDevice for Legacy {
            fn device_type(&self) -> u32 {
                1
            }
            fn queue_max_sizes(&self) -> &[u16] {
                &self.0
            }
            fn features(&self) -> u64 {
                self.1
            }
            fn read_config(&self, _: u64, _: &mut [u8]) {}
            fn write_config(&mut self, _: u64, _: &[u8]) {}
            fn activate(&mut self, _: Activation) -> Result<(), ActivateError> {
                Ok(())
            }
            fn reset(&mut self) {}
        }
        assert!(matches!(
            MmioTransport::new(Legacy(vec![16], 0), mem()),
            Err(TransportError::NotModern)
        ));
        assert!(matches!(
            MmioTransport::new(Legacy(vec![16, 15], features::VERSION_1), mem()),
            Err(TransportError::QueueSize { index: 1, size: 15 })
        ));
    }
}
