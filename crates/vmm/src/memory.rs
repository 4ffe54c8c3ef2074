//! Guest RAM: one anonymous mapping per region, registered with KVM.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::{MIN_MEMORY, MMIO_HOLE_END, MMIO_HOLE_START};

/// Errors from laying out or mapping guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is below the minimum.
    #[error("{requested} MiB of guest memory is too little; husk needs at least {} MiB", MIN_MEMORY >> 20)]
    TooSmall {
        /// Requested MiB.
        requested: u64,
    },
    /// The requested size is not a whole number of pages, or absurdly large.
    #[error("guest memory size {0:#x} bytes is not a multiple of 4 KiB or exceeds 1 TiB")]
    BadSize(u64),
    /// mmap failed.
    #[error("cannot map {size_mib} MiB of guest memory")]
    Map {
        /// MiB.
        size_mib: u64,
        /// Cause.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The guest-physical RAM ranges for `size` bytes of memory: everything below
/// the MMIO hole first, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Result<Vec<(GuestAddress, usize)>, MemoryError> {
    if size < MIN_MEMORY {
        return Err(MemoryError::TooSmall {
            requested: size >> 20,
        });
    }
    if size % 4096 != 0 || size > (1 << 40) {
        return Err(MemoryError::BadSize(size));
    }
    let low = size.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if size > low {
        ranges.push((GuestAddress(MMIO_HOLE_END), (size - low) as usize));
    }
    Ok(ranges)
}

/// Maps `size` bytes of guest RAM.
pub fn create(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges = ram_ranges(size)?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Map {
        size_mib: size >> 20,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        let r = ram_ranges(128 << 20).unwrap();
        assert_eq!(r, vec![(GuestAddress(0), 128 << 20)]);
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let r = ram_ranges(4 << 30).unwrap();
        assert_eq!(
            r,
            vec![
                (GuestAddress(0), MMIO_HOLE_START as usize),
                (
                    GuestAddress(MMIO_HOLE_END),
                    ((4u64 << 30) - MMIO_HOLE_START) as usize
                )
            ]
        );
    }

    #[test]
    fn rejects_tiny_and_odd_sizes() {
        assert!(matches!(
            ram_ranges(16 << 20),
            Err(MemoryError::TooSmall { requested: 16 })
        ));
        assert!(matches!(
            ram_ranges((64 << 20) + 1),
            Err(MemoryError::BadSize(_))
        ));
        assert!(matches!(ram_ranges(2 << 40), Err(MemoryError::BadSize(_))));
    }

    #[test]
    fn maps_real_memory() {
        use vm_memory::{Bytes, GuestMemory};
        let m = create(64 << 20).unwrap();
        assert_eq!(m.num_regions(), 1);
        m.write_obj(0xdead_beef_u32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            m.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
    }
}
