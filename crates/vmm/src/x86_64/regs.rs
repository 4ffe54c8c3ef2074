//! Putting a vCPU into 64-bit mode at the kernel's entry point, as Linux's
//! 64-bit boot protocol asks: long mode, paging with an identity map, flat
//! segments, interrupts off, RSI pointing at the zero page.

use kvm_bindings::{Msrs, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{self, CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use crate::layout::{
    BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START, ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM vCPU ioctl failed.
    #[error("KVM refused to set the vCPU's {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// Writing boot structures into guest memory failed.
    #[error("cannot write the {0} into guest memory")]
    GuestMemory(&'static str, #[source] vm_memory::GuestMemoryError),
    /// KVM accepted fewer MSRs than given.
    #[error("KVM accepted only {set} of {want} boot MSRs")]
    Msrs {
        /// Accepted.
        set: usize,
        /// Given.
        want: usize,
    },
}

/// Writes the GDT, an empty IDT and identity-mapping page tables for the
/// first 1 GiB (2 MiB pages) into guest memory. Shared by all vCPUs.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let gm = |what| move |e| RegsError::GuestMemory(what, e);
    for (i, entry) in gdt::boot_gdt().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + 8 * i as u64))
            .map_err(gm("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(gm("IDT"))?;
    // PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] -> 2 MiB page i. Present | RW (| PS).
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(gm("page tables"))?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))
        .map_err(gm("page tables"))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))
            .map_err(gm("page tables"))?;
    }
    Ok(())
}

/// The special registers for 64-bit entry, starting from KVM's defaults.
pub fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let g = gdt::boot_gdt();
    let code = gdt::segment(CODE_SELECTOR, g[1]);
    let data = gdt::segment(DATA_SELECTOR, g[2]);
    let tss = gdt::segment(TSS_SELECTOR, g[3]);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&g) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// The general registers for entry at `entry`.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2, // reserved bit 1 only: interrupts off
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// MSRs with their reset values for a Linux guest.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        e(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let b = &l.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = *b as _;
    }
}

/// LINT0 as ExtINT (the PIC) and LINT1 as NMI, as a PC's firmware leaves them.
pub fn set_lint(l: &mut kvm_lapic_state) {
    let with_mode = |v: u32, mode: u32| (v & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(l, APIC_LVT0);
    set_lapic_reg(l, APIC_LVT0, with_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(l, APIC_LVT1);
    set_lapic_reg(l, APIC_LVT1, with_mode(lvt1, APIC_MODE_NMI));
}

/// Configures `vcpu` for 64-bit entry at `entry` (the boot processor) or
/// leaves it waiting for the BSP's INIT/SIPI (application processors, whose
/// MSRs, FPU and LAPIC are still set).
pub fn setup_vcpu(vcpu: &VcpuFd, entry: u64, is_bsp: bool) -> Result<(), RegsError> {
    let kvm = |what| move |e| RegsError::Kvm(what, e);
    let msrs = boot_msrs();
    let want = msrs.len();
    let set = vcpu
        .set_msrs(&Msrs::from_entries(&msrs).map_err(|_| RegsError::Msrs { set: 0, want })?)
        .map_err(kvm("MSRs"))?;
    if set != want {
        return Err(RegsError::Msrs { set, want });
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU"))?;
    let mut lapic = vcpu.get_lapic().map_err(kvm("local APIC"))?;
    set_lint(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(kvm("local APIC"))?;
    if is_bsp {
        let sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
        vcpu.set_sregs(&long_mode_sregs(sregs))
            .map_err(kvm("special registers"))?;
        vcpu.set_regs(&boot_regs(entry)).map_err(kvm("registers"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn page_tables_identity_map_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PML4_START)).unwrap(),
            0xa003
        );
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PDPTE_START)).unwrap(),
            0xb003
        );
        assert_eq!(mem.read_obj::<u64>(GuestAddress(PDE_START)).unwrap(), 0x83);
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PDE_START + 511 * 8))
                .unwrap(),
            (511 << 21) | 0x83
        );
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(GDT_START + 8)).unwrap(),
            0x00af_9b00_0000_ffff
        );
    }

    #[test]
    fn sregs_enter_long_mode() {
        let s = long_mode_sregs(kvm_sregs::default());
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr0 & X86_CR0_PE, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.cs.selector, s.cs.l), (CODE_SELECTOR, 1));
        assert_eq!(s.ss.selector, DATA_SELECTOR);
        assert_eq!(s.gdt.limit, 31);
    }

    #[test]
    fn regs_point_at_zero_page() {
        let r = boot_regs(0x100_0000);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100_0000, ZERO_PAGE_START, 2));
    }

    #[test]
    fn lint_modes() {
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, APIC_LVT0, 0x0001_0700);
        set_lint(&mut l);
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&l, APIC_LVT1), 0x400);
    }
}
