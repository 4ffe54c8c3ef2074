//! The CPUID each vCPU sees: what KVM supports, with this vCPU's APIC ID and
//! the topology of the VM filled in.

use kvm_bindings::{CpuId, kvm_cpuid_entry2};

/// Leaf 1 ECX bit: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit: HTT (the logical-processor count in EBX is valid).
const LEAF1_EDX_HTT: u32 = 1 << 28;

/// Adjusts `entry` for vCPU `id` of `count`. The VM is one package of
/// `count` single-threaded cores, whatever the host's topology is, and the
/// legacy (leaf 1 and 4) and extended (leaf 0xb/0x1f) descriptions agree, as
/// Linux's topology code checks.
pub fn patch_entry(entry: &mut kvm_cpuid_entry2, id: u8, count: u8) {
    let count32 = u32::from(count.max(1));
    // Bits needed to number the cores.
    let core_bits = count32.next_power_of_two().trailing_zeros();
    match entry.function {
        0x1 => {
            // EBX[31:24] initial APIC ID, EBX[23:16] logical processors per package.
            entry.ebx = (entry.ebx & 0x0000_ffff)
                | (u32::from(id) << 24)
                | (count32.next_power_of_two() << 16);
            entry.ecx |= LEAF1_ECX_HYPERVISOR;
            entry.edx |= LEAF1_EDX_HTT;
        }
        0x4 => {
            // EAX[31:26] cores per package - 1; EAX[25:14] threads sharing
            // this cache - 1: the last level is shared by all cores, the
            // others belong to one core.
            let cache_level = (entry.eax >> 5) & 0x7;
            let sharing = if cache_level >= 3 {
                count32.next_power_of_two() - 1
            } else {
                0
            };
            entry.eax =
                (entry.eax & 0x3fff) | (sharing << 14) | ((count32.next_power_of_two() - 1) << 26);
        }
        0xb | 0x1f => {
            // Extended topology: sub-leaf 0 is the SMT level (one thread per
            // core), sub-leaf 1 the core level; EDX is the x2APIC ID.
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = 1 << 8;
                }
                1 => {
                    entry.eax = core_bits;
                    entry.ebx = count32;
                    entry.ecx = (2 << 8) | 1;
                }
                n => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = n;
                }
            }
            entry.edx = u32::from(id);
        }
        _ => {}
    }
}

/// CPUID for vCPU `id` of `count`, from the host's supported set.
pub fn for_vcpu(supported: &CpuId, id: u8, count: u8) -> CpuId {
    let mut c = supported.clone();
    for e in c.as_mut_slice() {
        patch_entry(e, id, count);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apic_ids_and_counts() {
        let mut leaf1 = kvm_cpuid_entry2 {
            function: 1,
            ebx: 0xffff_0800,
            ..Default::default()
        };
        patch_entry(&mut leaf1, 3, 4);
        assert_eq!(leaf1.ebx, 0x0304_0800);
        assert_ne!(leaf1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(leaf1.edx & LEAF1_EDX_HTT, 0);
        // Three vCPUs round up to a 4-core package in the legacy leaves.
        let mut leaf1 = kvm_cpuid_entry2 {
            function: 1,
            ..Default::default()
        };
        patch_entry(&mut leaf1, 0, 3);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        let mut topo = kvm_cpuid_entry2 {
            function: 0xb,
            index: 1,
            edx: 77,
            ..Default::default()
        };
        patch_entry(&mut topo, 2, 4);
        assert_eq!((topo.eax, topo.ebx, topo.ecx, topo.edx), (2, 4, 0x201, 2));
        let mut smt = kvm_cpuid_entry2 {
            function: 0xb,
            index: 0,
            ..Default::default()
        };
        patch_entry(&mut smt, 2, 4);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        let mut end = kvm_cpuid_entry2 {
            function: 0x1f,
            index: 2,
            eax: 9,
            ..Default::default()
        };
        patch_entry(&mut end, 2, 4);
        assert_eq!((end.eax, end.ebx, end.ecx), (0, 0, 2));
        // Leaf 4: a host with 32 cores sharing L3 becomes a 2-core package.
        let mut l1 = kvm_cpuid_entry2 {
            function: 4,
            eax: (31 << 26) | (1 << 14) | (1 << 5) | 1,
            ..Default::default()
        };
        patch_entry(&mut l1, 0, 2);
        assert_eq!(
            (l1.eax >> 26, (l1.eax >> 14) & 0xfff, l1.eax & 0x3fff),
            (1, 0, (1 << 5) | 1)
        );
        let mut l3 = kvm_cpuid_entry2 {
            function: 4,
            eax: (31 << 26) | (63 << 14) | (3 << 5) | 3,
            ..Default::default()
        };
        patch_entry(&mut l3, 0, 2);
        assert_eq!((l3.eax >> 26, (l3.eax >> 14) & 0xfff), (1, 1));
        let mut other = kvm_cpuid_entry2 {
            function: 7,
            ebx: 5,
            ..Default::default()
        };
        patch_entry(&mut other, 2, 4);
        assert_eq!(other.ebx, 5);
    }

    #[test]
    fn whole_table() {
        let s = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 0,
                eax: 0xd,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 1,
                ..Default::default()
            },
        ])
        .unwrap();
        let c = for_vcpu(&s, 1, 2);
        assert_eq!(c.as_slice()[1].ebx >> 24, 1);
        assert_eq!(c.as_slice()[0].eax, 0xd);
    }
}
