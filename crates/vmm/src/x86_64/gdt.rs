//! The boot GDT: null, 64-bit code, data, TSS.

use kvm_bindings::kvm_segment;

/// Selector of the 64-bit code segment.
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the data segment.
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of the TSS.
pub const TSS_SELECTOR: u16 = 0x18;

/// Packs a segment descriptor: `flags` holds the access byte in bits 0..8
/// and the flags nibble (G, D/B, L, AVL) in bits 12..16.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The four boot descriptors.
pub const fn boot_gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(0xa09b, 0, 0xfffff), // code: present, exec/read, accessed, L=1, G=1
        gdt_entry(0xc093, 0, 0xfffff), // data: present, read/write, accessed, D/B=1, G=1
        gdt_entry(0x808b, 0, 0xfffff), // TSS: present, 64-bit busy TSS, G=1
    ]
}

/// The `kvm_segment` that loading `selector` from `entry` would produce.
pub fn segment(selector: u16, entry: u64) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    if g == 1 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 0 { 1 } else { 0 },
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_known_descriptors() {
        // The values every 64-bit boot GDT uses.
        let g = boot_gdt();
        assert_eq!(g[1], 0x00af_9b00_0000_ffff);
        assert_eq!(g[2], 0x00cf_9300_0000_ffff);
        assert_eq!(g[3], 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn decodes_into_kvm_segments() {
        let g = boot_gdt();
        let cs = segment(CODE_SELECTOR, g[1]);
        assert_eq!(
            (cs.l, cs.db, cs.type_, cs.present, cs.s, cs.g),
            (1, 0, 0xb, 1, 1, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(DATA_SELECTOR, g[2]);
        assert_eq!((ds.l, ds.db, ds.type_, ds.unusable), (0, 1, 3, 0));
        let tss = segment(TSS_SELECTOR, g[3]);
        assert_eq!((tss.s, tss.type_), (0, 0xb));
        let null = segment(0, g[0]);
        assert_eq!(null.unusable, 1);
        // Base bits are split across the descriptor.
        let e = gdt_entry(0x0093, 0x1234_5678, 0xabcde);
        let s = segment(0x10, e);
        assert_eq!((s.base, s.limit), (0x1234_5678, 0xabcde));
    }
}
