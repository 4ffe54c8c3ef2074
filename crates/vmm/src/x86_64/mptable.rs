//! The Intel MultiProcessor Specification 1.4 table, which tells a guest
//! without ACPI where its CPUs and I/O APIC are and how ISA interrupts are
//! wired. Linux finds it in the last KiB of base memory (0x9fc00).
//!
//! Written by hand: the format is a few fixed-size records with byte-sum
//! checksums, and no maintained crate builds it (Firecracker and
//! Cloud Hypervisor each carry their own).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{APIC_START, EBDA_START, IOAPIC_START};

/// Largest vCPU count the table (and husk) supports. The I/O APIC takes the
/// next APIC ID.
pub const MAX_CPUS: u8 = 32;
/// Interrupt pins on KVM's I/O APIC.
const IOAPIC_PINS: u8 = 24;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
const ISA_BUS: u8 = 0;

/// Errors writing the table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// Zero or too many CPUs.
    #[error("{0} vCPUs: husk supports 1 to {MAX_CPUS}")]
    CpuCount(u8),
    /// The table does not fit below 640 KiB.
    #[error("MP table for {0} vCPUs does not fit in the EBDA")]
    TooBig(u8),
    /// Guest memory write failed.
    #[error("cannot write the MP table into guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

fn entry8(bytes: [u8; 8]) -> Vec<u8> {
    bytes.to_vec()
}

/// The table bytes for `cpus` vCPUs, to be placed at `base`.
pub fn build(cpus: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MpTableError::CpuCount(cpus));
    }
    let ioapic_id = cpus;
    let mut entries: Vec<Vec<u8>> = Vec::new();
    for id in 0..cpus {
        let mut e = vec![
            MP_PROCESSOR,
            id,
            LAPIC_VERSION,
            CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 },
        ];
        e.extend_from_slice(&0x600u32.to_le_bytes()); // signature: family 6
        e.extend_from_slice(&0x201u32.to_le_bytes()); // features: FPU, APIC
        e.extend_from_slice(&[0; 8]);
        entries.push(e);
    }
    entries.push(entry8([
        MP_BUS, ISA_BUS, b'I', b'S', b'A', b' ', b' ', b' ',
    ]));
    let mut io = vec![MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1];
    io.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    entries.push(io);
    for pin in 0..IOAPIC_PINS {
        // ISA IRQ n on I/O APIC pin n, bus-default polarity and trigger.
        entries.push(entry8([
            MP_INTSRC, MP_INT, 0, 0, ISA_BUS, pin, ioapic_id, pin,
        ]));
    }
    entries.push(entry8([MP_LINTSRC, MP_EXTINT, 0, 0, ISA_BUS, 0, 0, 0]));
    entries.push(entry8([MP_LINTSRC, MP_NMI, 0, 0, ISA_BUS, 0, 0xff, 1]));

    let body: Vec<u8> = entries.concat();
    let table_len = 44 + body.len();
    let config_addr = base + 16;
    // Configuration table header.
    let mut cfg = Vec::with_capacity(table_len);
    cfg.extend_from_slice(b"PCMP");
    cfg.extend_from_slice(&(table_len as u16).to_le_bytes());
    cfg.push(4); // spec revision 1.4
    cfg.push(0); // checksum, below
    cfg.extend_from_slice(b"HUSK    ");
    cfg.extend_from_slice(b"MICROVM     ");
    cfg.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    cfg.extend_from_slice(&0u16.to_le_bytes());
    cfg.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    cfg.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    cfg.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    cfg.extend_from_slice(&body);
    cfg[7] = checksum(&cfg);
    // Floating pointer structure.
    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(config_addr as u32).to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4); // spec revision
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0; 5]); // feature bytes: a configuration table is present
    fp[10] = checksum(&fp);
    fp.extend_from_slice(&cfg);
    if base + fp.len() as u64 > 0xa0000 {
        return Err(MpTableError::TooBig(cpus));
    }
    Ok(fp)
}

/// Writes the table for `cpus` vCPUs at [`EBDA_START`].
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MpTableError> {
    let bytes = build(cpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MpTableError::GuestMemory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_layout() {
        for cpus in [1u8, 2, 8, MAX_CPUS] {
            let t = build(cpus, EBDA_START).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, EBDA_START + 16);
            let cfg = &t[16..];
            assert_eq!(&cfg[..4], b"PCMP");
            let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
            assert_eq!(len, cfg.len());
            assert_eq!(sum(cfg), 0, "config table checksum");
            let count = u16::from_le_bytes([cfg[34], cfg[35]]) as usize;
            // CPUs + bus + I/O APIC + 24 pins + 2 local sources.
            assert_eq!(count, cpus as usize + 1 + 1 + 24 + 2);
            assert_eq!(len, 44 + 20 * cpus as usize + 8 * (count - cpus as usize));
            // First CPU is the BSP; the I/O APIC ID follows the CPUs.
            assert_eq!(cfg[44 + 3], CPU_ENABLED | CPU_BSP);
            let io = 44 + 20 * cpus as usize + 8;
            assert_eq!((cfg[io], cfg[io + 1]), (MP_IOAPIC, cpus));
        }
    }

    #[test]
    fn rejects_bad_counts() {
        assert!(matches!(
            build(0, EBDA_START),
            Err(MpTableError::CpuCount(0))
        ));
        assert!(matches!(
            build(MAX_CPUS + 1, EBDA_START),
            Err(MpTableError::CpuCount(_))
        ));
    }

    #[test]
    fn writes_into_guest_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
