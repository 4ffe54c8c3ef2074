//! The vCPU threads: run the guest, route its port I/O, notice when it stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use husk_devices::{ExitNotifier, GuestExit, MmioBus, PioBus};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// KVM_SYSTEM_EVENT_SHUTDOWN.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
/// KVM_SYSTEM_EVENT_RESET.
const SYSTEM_EVENT_RESET: u32 = 2;
/// KVM_SYSTEM_EVENT_CRASH.
const SYSTEM_EVENT_CRASH: u32 = 3;
/// KVM_INTERNAL_ERROR_EMULATION.
const INTERNAL_ERROR_EMULATION: u32 = 1;

/// Why a vCPU stopped running the guest because of an error.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_RUN failed.
    #[error("KVM_RUN failed on vCPU {vcpu}")]
    Run {
        /// vCPU index.
        vcpu: u8,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM could not emulate a guest instruction.
    #[error(
        "vCPU {vcpu}: KVM could not emulate the guest instruction at {rip:#x} (bytes {bytes}; internal error {suberror}, data {data:x?})"
    )]
    Emulation {
        /// vCPU index.
        vcpu: u8,
        /// Guest RIP.
        rip: u64,
        /// The instruction bytes at RIP, hex, if they could be read.
        bytes: String,
        /// KVM's internal-error sub-code.
        suberror: u32,
        /// KVM's extra data words.
        data: Vec<u64>,
    },
    /// VM entry failed.
    #[error("vCPU {vcpu}: VM entry failed (hardware reason {reason:#x})")]
    FailEntry {
        /// vCPU index.
        vcpu: u8,
        /// Hardware entry-failure reason.
        reason: u64,
    },
    /// The guest reported a crash (KVM_SYSTEM_EVENT_CRASH).
    #[error("vCPU {vcpu}: the guest reported a crash")]
    GuestCrash {
        /// vCPU index.
        vcpu: u8,
    },
    /// An exit husk does not handle.
    #[error("vCPU {vcpu}: unexpected KVM exit {exit}")]
    Unexpected {
        /// vCPU index.
        vcpu: u8,
        /// Description of the exit.
        exit: String,
    },
}

/// How a vCPU thread ended.
#[derive(Debug)]
pub enum VcpuOutcome {
    /// The guest stopped itself.
    Exit(GuestExit),
    /// The VMM asked the vCPU to stop.
    Stopped,
    /// Something went wrong.
    Error(VcpuError),
}

/// One vCPU and what it needs to run.
pub struct Vcpu {
    /// Index (also APIC ID).
    pub index: u8,
    /// KVM handle.
    pub fd: VcpuFd,
    /// Port-I/O devices.
    pub bus: PioBus,
    /// MMIO devices (virtio-mmio).
    pub mmio: MmioBus,
    /// Devices report guest-initiated stops here.
    pub exit: ExitNotifier,
    /// Set by the VMM to ask this vCPU to return.
    pub stop: Arc<AtomicBool>,
    /// Guest memory, to show the instruction bytes of an emulation failure.
    pub mem: GuestMemoryMmap,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Vcpu {
    /// Runs the guest until it stops, the VMM stops it, or an error.
    pub fn run(mut self) -> VcpuOutcome {
        loop {
            if self.stop.load(Ordering::Acquire) {
                return VcpuOutcome::Stopped;
            }
            let index = self.index;
            let step = match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    if !self.bus.write(port, data) {
                        log::trace!("vCPU {index}: write to unclaimed port {port:#x}");
                    }
                    None
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !self.bus.read(port, data) {
                        log::trace!("vCPU {index}: read of unclaimed port {port:#x}");
                    }
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !self.mmio.read(addr, data) {
                        log::trace!("vCPU {index}: read of unclaimed MMIO {addr:#x}");
                    }
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if !self.mmio.write(addr, data) {
                        log::trace!("vCPU {index}: write to unclaimed MMIO {addr:#x}");
                    }
                    None
                }
                // With the in-kernel LAPIC, HLT only exits when the vCPU can
                // never wake (interrupts off): that is the guest halting.
                Ok(VcpuExit::Hlt) => Some(VcpuOutcome::Exit(GuestExit::PowerOff)),
                // A triple fault: what `reboot=t` does, and what a broken
                // guest does. Both end the VM, as a reset.
                Ok(VcpuExit::Shutdown) => {
                    log::warn!("vCPU {index}: triple fault (guest reset)");
                    Some(VcpuOutcome::Exit(GuestExit::Reset))
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                    SYSTEM_EVENT_SHUTDOWN => VcpuOutcome::Exit(GuestExit::PowerOff),
                    SYSTEM_EVENT_RESET => VcpuOutcome::Exit(GuestExit::Reset),
                    SYSTEM_EVENT_CRASH => VcpuOutcome::Error(VcpuError::GuestCrash { vcpu: index }),
                    other => VcpuOutcome::Error(VcpuError::Unexpected {
                        vcpu: index,
                        exit: format!("system event {other}"),
                    }),
                }),
                Ok(VcpuExit::InternalError) => Some(VcpuOutcome::Error(self.internal_error())),
                Ok(VcpuExit::FailEntry(reason, _cpu)) => {
                    Some(VcpuOutcome::Error(VcpuError::FailEntry {
                        vcpu: index,
                        reason,
                    }))
                }
                Ok(VcpuExit::Intr) => None,
                Ok(other) => Some(VcpuOutcome::Error(VcpuError::Unexpected {
                    vcpu: index,
                    exit: format!("{other:?}"),
                })),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
                Err(source) => Some(VcpuOutcome::Error(VcpuError::Run {
                    vcpu: index,
                    source,
                })),
            };
            if let Some(outcome) = step {
                return outcome;
            }
            // A device on this vCPU's last I/O may have ended the guest.
            if let Some(exit) = self.exit.get() {
                return VcpuOutcome::Exit(exit);
            }
        }
    }

    /// Describes a KVM_EXIT_INTERNAL_ERROR, with the instruction bytes at RIP.
    fn internal_error(&mut self) -> VcpuError {
        let (suberror, data) = {
            let run = self.fd.get_kvm_run();
            // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR (the caller matched
            // VcpuExit::InternalError), so `internal` is the active union member.
            let internal = unsafe { run.__bindgen_anon_1.internal };
            let n = (internal.ndata as usize).min(internal.data.len());
            (internal.suberror, internal.data[..n].to_vec())
        };
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        let bytes = if suberror == INTERNAL_ERROR_EMULATION {
            self.bytes_at(rip).unwrap_or_else(|| "unreadable".into())
        } else {
            "n/a".into()
        };
        VcpuError::Emulation {
            vcpu: self.index,
            rip,
            bytes,
            suberror,
            data,
        }
    }

    fn bytes_at(&self, rip: u64) -> Option<String> {
        let t = self.fd.translate_gva(rip).ok()?;
        if t.valid == 0 {
            return None;
        }
        let mut buf = [0u8; 15];
        self.mem
            .read_slice(&mut buf, GuestAddress(t.physical_address))
            .ok()?;
        Some(
            buf.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
        )
    }
}
