//! x86_64 specifics: GDT, page tables, registers, CPUID, MSRs, LAPIC, MP table.

pub mod cpuid;
pub mod gdt;
pub mod mptable;
pub mod regs;
