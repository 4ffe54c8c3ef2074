//! The guest kernel command line husk builds.

use crate::host::HostKind;
use crate::layout::CMDLINE_MAX_SIZE;

/// Errors from building the command line.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    /// The result does not fit the kernel's limit.
    #[error("kernel command line is {len} bytes; the guest kernel accepts at most {max}")]
    TooLong {
        /// Length with the NUL.
        len: usize,
        /// Limit with the NUL.
        max: usize,
    },
    /// A NUL byte or a non-ASCII character, which the kernel cannot take.
    #[error("kernel command line contains a NUL or non-ASCII character: {0:?}")]
    BadChar(String),
}

/// What husk always passes, and why:
/// * `console=ttyS0`: the one UART is the console;
/// * `reboot=k`: reboot through the keyboard controller, which the VMM sees;
/// * `panic=-1`: a panic reboots at once, so the VMM stops instead of hanging;
/// * `8250.nr_uarts=1`: only COM1 exists; probing others costs boot time;
/// * `cryptomgr.notests`: skip crypto self-tests at boot;
/// * `swiotlb=noforce`: no bounce buffers, there is no DMA-limited device;
/// * `tsc=reliable`: the TSC is stable on KVM; skip the watchdog;
/// * `husk.poweroff_port=`: see the guest kernel's patch 0002.
pub const BASE_ARGS: &[&str] = &[
    "console=ttyS0",
    "reboot=k",
    "panic=-1",
    "8250.nr_uarts=1",
    "cryptomgr.notests",
    "swiotlb=noforce",
    "tsc=reliable",
];

/// What the PVM compatibility mode adds: the switch for the kernel patch,
/// and the CPU features whose instructions the PVM host's emulator of guest
/// kernel mode lacks (each was seen as a `KVM_EXIT_INTERNAL_ERROR`, see
/// guest-kernel/README.md).
///
/// The last one is not a kernel parameter but the environment of the guest's
/// init (the kernel hands unknown `NAME=value` words to init), which the
/// agent passes on to every process it starts. Guest user mode runs on the
/// host CPU, whose CPUID offers AVX and AVX-512, but the guest kernel (booted
/// with `noxsave`, as the host's emulator lacks XSAVE) saves only the SSE
/// state on a context switch: two guest processes using AVX registers
/// corrupt each other (seen as segfaults of busybox while the agent served
/// an `exec`). The tunable stops glibc from choosing its AVX routines.
pub const PVM_ARGS: &[&str] = &[
    "husk.pvm=1",
    "noxsave",
    "clearcpuid=smap,popcnt,rdrand,rdseed,fsgsbase",
    PVM_GLIBC_TUNABLES,
];

/// See [`PVM_ARGS`].
pub const PVM_GLIBC_TUNABLES: &str = "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX2,-AVX,-FMA,-F16C,-AVX_Fast_Unaligned_Load";

/// Builds a command line: husk's base arguments, the compatibility arguments
/// the host needs, the power-off port, then the caller's extra arguments
/// (which come last so they can override).
#[derive(Debug, Clone)]
pub struct KernelCmdline {
    args: Vec<String>,
}

impl KernelCmdline {
    /// The command line for a guest on `host` with power-off through `poweroff_port`.
    pub fn new(host: HostKind, poweroff_port: u16) -> Self {
        let mut args: Vec<String> = BASE_ARGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("husk.poweroff_port={poweroff_port:#x}"));
        if host.needs_pvm_compat() {
            args.extend(PVM_ARGS.iter().map(|s| s.to_string()));
        }
        Self { args }
    }

    /// Appends `arg` (one or more space-separated words).
    pub fn push(&mut self, arg: impl AsRef<str>) -> &mut Self {
        let arg = arg.as_ref().trim();
        if !arg.is_empty() {
            self.args.push(arg.to_owned());
        }
        self
    }

    /// The command line as the kernel reads it, checked.
    pub fn build(&self) -> Result<String, CmdlineError> {
        let s = self.args.join(" ");
        if s.bytes().any(|b| b == 0 || !b.is_ascii()) {
            return Err(CmdlineError::BadChar(s));
        }
        if s.len() + 1 > CMDLINE_MAX_SIZE {
            return Err(CmdlineError::TooLong {
                len: s.len() + 1,
                max: CMDLINE_MAX_SIZE,
            });
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HwVendor;

    #[test]
    fn hardware_host_gets_no_compat_args() {
        let c = KernelCmdline::new(
            HostKind::Hardware {
                vendor: HwVendor::Vmx,
            },
            0x501,
        )
        .build()
        .unwrap();
        assert!(c.starts_with("console=ttyS0 reboot=k panic=-1"));
        assert!(c.contains("husk.poweroff_port=0x501"));
        assert!(!c.contains("husk.pvm"));
        assert!(!c.contains("noxsave"));
    }

    #[test]
    fn pvm_host_gets_compat_args() {
        let c = KernelCmdline::new(HostKind::Pvm, 0x501).build().unwrap();
        assert!(c.contains(" husk.pvm=1 "));
        assert!(c.contains(" noxsave "));
        assert!(c.contains("clearcpuid=smap,popcnt"));
        // init's environment: glibc kept off AVX state the guest cannot save.
        assert!(c.contains(" GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,"));
    }

    #[test]
    fn extra_args_come_last_and_blank_ones_vanish() {
        let mut k = KernelCmdline::new(HostKind::Pvm, 0x501);
        k.push("  ").push("init=/test quiet");
        let c = k.build().unwrap();
        assert!(c.ends_with(" init=/test quiet"));
        assert!(!c.contains("  "));
    }

    #[test]
    fn rejects_too_long_and_bad_bytes() {
        let mut k = KernelCmdline::new(HostKind::Pvm, 0x501);
        k.push("x".repeat(CMDLINE_MAX_SIZE));
        assert!(matches!(k.build(), Err(CmdlineError::TooLong { .. })));
        let mut k = KernelCmdline::new(HostKind::Pvm, 0x501);
        k.push("a\0b");
        assert!(matches!(k.build(), Err(CmdlineError::BadChar(_))));
        let mut k = KernelCmdline::new(HostKind::Pvm, 0x501);
        k.push("é");
        assert!(matches!(k.build(), Err(CmdlineError::BadChar(_))));
    }
}
