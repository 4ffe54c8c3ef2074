//! The port-I/O bus and the MMIO bus: map guest I/O port ranges and
//! guest-physical address ranges to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A device on the port-I/O bus. `offset` is relative to the device's base
/// port. Reads fill all of `data`; a device that does not decode an offset
/// leaves `data` as the bus passed it (all ones, as on a real ISA bus).
pub trait PioDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// Errors from building the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A range is empty or wraps past port 0xffff.
    #[error("invalid I/O port range {base:#x}+{len:#x}")]
    InvalidRange {
        /// First port.
        base: u16,
        /// Number of ports.
        len: u16,
    },
    /// Two devices claim the same port.
    #[error("I/O port range {base:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap {
        /// First port.
        base: u16,
        /// Number of ports.
        len: u16,
    },
    /// An MMIO range is empty or wraps past the end of the address space.
    #[error("invalid MMIO range {base:#x}+{len:#x}")]
    InvalidMmioRange {
        /// First address.
        base: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Two devices claim the same MMIO address.
    #[error("MMIO range {base:#x}+{len:#x} overlaps a device already on the bus")]
    MmioOverlap {
        /// First address.
        base: u64,
        /// Length in bytes.
        len: u64,
    },
}

/// Devices by address range, the logic both buses share. Addresses are
/// widened to `u64`; `last` is the highest address the bus has.
struct Ranges<D: ?Sized> {
    // Keyed by base address; value is (length, device).
    map: BTreeMap<u64, (u64, Arc<Mutex<D>>)>,
}

impl<D: ?Sized> Default for Ranges<D> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
        }
    }
}

impl<D: ?Sized> Clone for Ranges<D> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
        }
    }
}

/// Why a range was refused.
enum RangeError {
    Invalid,
    Overlap,
}

impl<D: ?Sized> Ranges<D> {
    fn insert(
        &mut self,
        base: u64,
        len: u64,
        last: u64,
        device: Arc<Mutex<D>>,
    ) -> Result<(), RangeError> {
        let end = len
            .checked_sub(1)
            .and_then(|l| base.checked_add(l))
            .filter(|&e| e <= last)
            .ok_or(RangeError::Invalid)?;
        // The closest device starting at or below the new range's last address.
        if let Some((&b, &(l, _))) = self.map.range(..=end).next_back()
            && b + (l - 1) >= base
        {
            return Err(RangeError::Overlap);
        }
        self.map.insert(base, (len, device));
        Ok(())
    }

    /// The device at `addr` (locked) and the offset into it.
    fn find(&self, addr: u64) -> Option<(u64, MutexGuard<'_, D>)> {
        let (&base, (len, dev)) = self.map.range(..=addr).next_back()?;
        // A device that panicked mid-access poisoned its lock; its state is
        // still memory-safe, and a stuck console is worse than a glitch.
        (addr - base < *len).then(|| (addr - base, dev.lock().unwrap_or_else(|e| e.into_inner())))
    }

    fn describe(&self) -> Vec<String> {
        self.map
            .iter()
            .map(|(b, (l, _))| format!("{b:#x}+{l:#x}"))
            .collect()
    }
}

type Shared = Arc<Mutex<dyn PioDevice>>;

/// Port-I/O devices by range. Lookups are `O(log n)`; the bus is shared by
/// all vCPU threads, each device behind its own lock.
#[derive(Default, Clone)]
pub struct PioBus {
    devices: Ranges<dyn PioDevice>,
}

impl std::fmt::Debug for PioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PioBus")
            .field("ranges", &self.devices.describe())
            .finish()
    }
}

impl PioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at ports `base..base+len`.
    pub fn insert(&mut self, base: u16, len: u16, device: Shared) -> Result<(), BusError> {
        self.devices
            .insert(u64::from(base), u64::from(len), u64::from(u16::MAX), device)
            .map_err(|e| match e {
                RangeError::Invalid => BusError::InvalidRange { base, len },
                RangeError::Overlap => BusError::Overlap { base, len },
            })
    }

    /// Dispatches a guest read. Returns false if no device decodes `port`
    /// (`data` is then all ones).
    pub fn read(&self, port: u16, data: &mut [u8]) -> bool {
        data.fill(0xff);
        match self.devices.find(u64::from(port)) {
            Some((offset, mut dev)) => {
                dev.read(offset as u16, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a guest write. Returns false if no device decodes `port`.
    pub fn write(&self, port: u16, data: &[u8]) -> bool {
        match self.devices.find(u64::from(port)) {
            Some((offset, mut dev)) => {
                dev.write(offset as u16, data);
                true
            }
            None => false,
        }
    }
}

/// A device on the MMIO bus. `offset` is relative to the device's base
/// address. Reads fill all of `data`; offsets a device does not decode leave
/// `data` as the bus passed it (all ones).
pub trait MmioDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

type SharedMmio = Arc<Mutex<dyn MmioDevice>>;

/// MMIO devices by guest-physical range, shared by all vCPU threads like
/// [`PioBus`].
#[derive(Default, Clone)]
pub struct MmioBus {
    devices: Ranges<dyn MmioDevice>,
}

impl std::fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioBus")
            .field("ranges", &self.devices.describe())
            .finish()
    }
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at guest-physical addresses `base..base+len`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedMmio) -> Result<(), BusError> {
        self.devices
            .insert(base, len, u64::MAX, device)
            .map_err(|e| match e {
                RangeError::Invalid => BusError::InvalidMmioRange { base, len },
                RangeError::Overlap => BusError::MmioOverlap { base, len },
            })
    }

    /// Dispatches a guest read. Returns false if no device decodes `addr`
    /// (`data` is then all ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        data.fill(0xff);
        match self.devices.find(addr) {
            Some((offset, mut dev)) => {
                dev.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a guest write. Returns false if no device decodes `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.devices.find(addr) {
            Some((offset, mut dev)) => {
                dev.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u16, Vec<u8>)>,
    }

    impl PioDevice for Recorder {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let mut bus = PioBus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d, [5]);
        assert!(bus.write(0x3f8, b"x"));
        assert_eq!(a.lock().unwrap().writes, vec![(0, vec![b'x'])]);
        // Just past the end, and just before the start.
        assert!(!bus.read(0x400, &mut d));
        assert_eq!(d, [0xff]);
        assert!(!bus.write(0x3f7, &[0]));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = PioBus::new();
        let dev = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x60, 5, dev()).unwrap();
        assert!(matches!(
            bus.insert(0x64, 1, dev()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x5f, 2, dev()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x50, 0x100, dev()),
            Err(BusError::Overlap { .. })
        ));
        bus.insert(0x65, 1, dev()).unwrap();
        bus.insert(0x5f, 1, dev()).unwrap();
        assert!(matches!(
            bus.insert(0xffff, 2, dev()),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(0x10, 0, dev()),
            Err(BusError::InvalidRange { .. })
        ));
        bus.insert(0xffff, 1, dev()).unwrap();
    }

    #[derive(Default)]
    struct MmioRecorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl MmioDevice for MmioRecorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn mmio_routes_by_range_and_offset() {
        let mut bus = MmioBus::new();
        let a = Arc::new(Mutex::new(MmioRecorder::default()));
        let b = Arc::new(Mutex::new(MmioRecorder::default()));
        bus.insert(0xd000_0000, 0x1000, a.clone()).unwrap();
        bus.insert(0xd000_1000, 0x1000, b.clone()).unwrap();
        let mut d = [0u8; 4];
        assert!(bus.read(0xd000_0070, &mut d));
        assert_eq!(d, [0x70; 4]);
        assert!(bus.write(0xd000_1050, &[1, 0, 0, 0]));
        assert!(bus.write(0xd000_0fff, &[9]));
        assert_eq!(b.lock().unwrap().writes, vec![(0x50, vec![1, 0, 0, 0])]);
        assert_eq!(a.lock().unwrap().writes, vec![(0xfff, vec![9])]);
        // Outside both.
        assert!(!bus.read(0xd000_2000, &mut d));
        assert_eq!(d, [0xff; 4]);
        assert!(!bus.write(0xcfff_ffff, &[0]));
        assert!(!bus.read(0, &mut d));
    }

    #[test]
    fn mmio_rejects_overlaps_and_bad_ranges() {
        let mut bus = MmioBus::new();
        let dev = || Arc::new(Mutex::new(MmioRecorder::default()));
        bus.insert(0x1000, 0x1000, dev()).unwrap();
        for (base, len) in [(0x1fff, 1), (0x800, 0x801), (0, u64::MAX), (0x1800, 0x10)] {
            assert!(
                matches!(
                    bus.insert(base, len, dev()),
                    Err(BusError::MmioOverlap { .. })
                ),
                "{base:#x}+{len:#x}"
            );
        }
        assert!(matches!(
            bus.insert(u64::MAX, 2, dev()),
            Err(BusError::InvalidMmioRange { .. })
        ));
        assert!(matches!(
            bus.insert(0x5000, 0, dev()),
            Err(BusError::InvalidMmioRange { .. })
        ));
        bus.insert(0x2000, 0x1000, dev()).unwrap();
        bus.insert(0x800, 0x800, dev()).unwrap();
        bus.insert(u64::MAX, 1, dev()).unwrap();
        let mut d = [0u8; 1];
        assert!(bus.read(u64::MAX, &mut d));
        assert_eq!(d, [0]);
    }
}
