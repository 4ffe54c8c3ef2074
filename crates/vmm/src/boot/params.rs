//! `struct boot_params` (the "zero page") and its e820 memory map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};

use crate::layout::{EBDA_START, HIMEM_START, MMIO_HOLE_END, MMIO_HOLE_START};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// `boot_flag` magic.
const BOOT_FLAG: u16 = 0xaa55;
/// `header` magic, "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader type (0xff): we are not a registered loader.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `loadflags` bit: the kernel is loaded high (at 1 MiB or above).
const LOADED_HIGH: u8 = 0x01;
/// Kernel alignment husk promises (2 MiB, what vmlinux links for).
const KERNEL_ALIGNMENT: u32 = 0x20_0000;
/// `boot_params.e820_table` has room for this many entries.
pub const E820_MAX_ENTRIES: usize = 128;

/// Errors building the zero page.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    /// More e820 entries than the table holds.
    #[error("e820 map needs {0} entries; boot_params holds {E820_MAX_ENTRIES}")]
    TooManyE820Entries(usize),
    /// An address that does not fit the 32-bit field it goes in.
    #[error("{what} at {addr:#x} is above 4 GiB, which the boot protocol cannot express")]
    Above4G {
        /// Which field.
        what: &'static str,
        /// The address.
        addr: u64,
    },
}

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The memory map for a guest with `ram_size` bytes of RAM laid out by
/// [`crate::memory::ram_ranges`]: base memory below the EBDA (where the MP
/// table sits), the MMIO hole reserved, RAM from 1 MiB to the hole, the rest
/// above 4 GiB.
pub fn e820_map(ram_size: u64) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    let low_end = ram_size.min(MMIO_HOLE_START);
    map.push(E820Entry {
        addr: HIMEM_START,
        size: low_end - HIMEM_START,
        kind: E820_RAM,
    });
    if ram_size > MMIO_HOLE_START {
        map.push(E820Entry {
            addr: MMIO_HOLE_END,
            size: ram_size - MMIO_HOLE_START,
            kind: E820_RAM,
        });
    }
    map
}

/// What goes into the zero page.
#[derive(Debug, Clone)]
pub struct BootParamsSpec {
    /// The bzImage's own setup header, or `None` for a vmlinux ELF.
    pub setup_header: Option<setup_header>,
    /// Guest address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Its length including the NUL.
    pub cmdline_size: usize,
    /// Guest address and size of the initramfs, if any.
    pub initrd: Option<(u64, u64)>,
    /// The memory map.
    pub e820: Vec<E820Entry>,
}

fn u32_addr(what: &'static str, addr: u64) -> Result<u32, ParamsError> {
    u32::try_from(addr).map_err(|_| ParamsError::Above4G { what, addr })
}

/// Builds the zero page for Linux's 64-bit boot protocol.
pub fn build(spec: &BootParamsSpec) -> Result<boot_params, ParamsError> {
    if spec.e820.len() > E820_MAX_ENTRIES {
        return Err(ParamsError::TooManyE820Entries(spec.e820.len()));
    }
    let mut p = boot_params::default();
    if let Some(hdr) = spec.setup_header {
        p.hdr = hdr;
    } else {
        p.hdr.boot_flag = BOOT_FLAG;
        p.hdr.header = HDRS_MAGIC;
        p.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    p.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    p.hdr.loadflags |= LOADED_HIGH;
    p.hdr.cmd_line_ptr = u32_addr("command line", spec.cmdline_addr)?;
    p.hdr.cmdline_size = spec.cmdline_size as u32;
    if let Some((addr, size)) = spec.initrd {
        p.hdr.ramdisk_image = u32_addr("initramfs", addr)?;
        p.hdr.ramdisk_size = u32_addr("initramfs size", size)?;
    }
    for (slot, e) in p.e820_table.iter_mut().zip(&spec.e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
        };
    }
    p.e820_entries = spec.e820.len() as u8;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_small_guest() {
        let m = e820_map(128 << 20);
        assert_eq!(
            m,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: (128 << 20) - 0x10_0000,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn e820_large_guest_has_ram_above_4g() {
        let m = e820_map(6 << 30);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].addr + m[1].size, MMIO_HOLE_START);
        assert_eq!(m[2].addr, 1 << 32);
        // Total RAM is what was asked for, less the legacy hole and EBDA.
        let total: u64 = m.iter().map(|e| e.size).sum();
        assert_eq!(total, (6 << 30) - (HIMEM_START - EBDA_START));
    }

    fn spec() -> BootParamsSpec {
        BootParamsSpec {
            setup_header: None,
            cmdline_addr: 0x20000,
            cmdline_size: 42,
            initrd: Some((0x700_0000, 0x1234)),
            e820: e820_map(128 << 20),
        }
    }

    #[test]
    fn zero_page_for_vmlinux() {
        let p = build(&spec()).unwrap();
        // Copy out of the packed struct before comparing.
        let (flag, hdr, ptr, size) = (
            p.hdr.boot_flag,
            p.hdr.header,
            p.hdr.cmd_line_ptr,
            p.hdr.cmdline_size,
        );
        assert_eq!((flag, hdr, ptr, size), (0xaa55, 0x5372_6448, 0x20000, 42));
        let (img, rsz, ty, lf) = (
            p.hdr.ramdisk_image,
            p.hdr.ramdisk_size,
            p.hdr.type_of_loader,
            p.hdr.loadflags,
        );
        assert_eq!((img, rsz, ty, lf & 1), (0x700_0000, 0x1234, 0xff, 1));
        assert_eq!(p.e820_entries, 2);
        let e1 = p.e820_table[1];
        let (a, s, t) = (e1.addr, e1.size, e1.type_);
        assert_eq!((a, s, t), (0x10_0000, (128 << 20) - 0x10_0000, E820_RAM));
    }

    #[test]
    fn zero_page_keeps_bzimage_header() {
        let mut s = spec();
        s.setup_header = Some(setup_header {
            version: 0x020f,
            header: HDRS_MAGIC,
            ..Default::default()
        });
        s.initrd = None;
        let p = build(&s).unwrap();
        let (v, img) = (p.hdr.version, p.hdr.ramdisk_image);
        assert_eq!((v, img), (0x020f, 0));
    }

    #[test]
    fn rejects_overflowing_fields() {
        let mut s = spec();
        s.e820 = vec![
            E820Entry {
                addr: 0,
                size: 1,
                kind: E820_RAM
            };
            E820_MAX_ENTRIES + 1
        ];
        assert!(matches!(
            build(&s),
            Err(ParamsError::TooManyE820Entries(129))
        ));
        let mut s = spec();
        s.initrd = Some((1 << 32, 10));
        assert!(matches!(
            build(&s),
            Err(ParamsError::Above4G {
                what: "initramfs",
                ..
            })
        ));
    }
}
