//! Where things go in guest physical memory (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)              0x0000_0520  IDT (empty)
//! 0x0000_7000  boot_params (the zero page)   0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000 PD (identity map of the first 1 GiB)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (the last KiB of base memory, where Linux looks)
//! 0x0010_0000  high memory starts; vmlinux links at 16 MiB
//! top of RAM below 3 GiB: initramfs
//! 3 GiB..4 GiB: MMIO hole (virtio-mmio devices, I/O APIC, local APIC)
//! ```

/// The GDT.
pub const GDT_START: u64 = 0x500;
/// The (empty) IDT used until the kernel loads its own.
pub const IDT_START: u64 = 0x520;
/// `struct boot_params`.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// The command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line, including the NUL (Linux's COMMAND_LINE_SIZE on x86).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; the MP table goes here.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of memory above the legacy 640 KiB..1 MiB hole.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// The I/O APIC's MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APIC's MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// Where KVM puts its TSS (three pages below the identity-map page).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page for real mode on Intel.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// Smallest guest the VMM accepts: room for the boot structures, the
/// kernel at 16 MiB and a little working memory.
pub const MIN_MEMORY: u64 = 32 << 20;
