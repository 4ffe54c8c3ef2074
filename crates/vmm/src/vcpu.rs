//! The vCPU threads: run the guest, route its port I/O, notice when it stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

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

/// Pausing: the VMM asks ([`PauseGate::request`]) and kicks the vCPUs out
/// of KVM_RUN; each parks here at the top of its run loop until the VMM
/// releases them or stops the VM. The gate counts the live vCPU threads and
/// the parked ones, so the VMM knows when the guest is fully stopped.
#[derive(Debug, Default)]
pub struct PauseGate {
    requested: AtomicBool,
    state: Mutex<GateState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    paused: bool,
    alive: usize,
    parked: usize,
}

impl PauseGate {
    /// A gate with no vCPUs, not paused.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a pause is asked for (cheap; the vCPU loop's check).
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// A vCPU thread starts.
    pub fn enter(&self) {
        self.lock().alive += 1;
        self.cv.notify_all();
    }

    /// A vCPU thread ends (it will never park again).
    pub fn exit(&self) {
        let mut s = self.lock();
        s.alive = s.alive.saturating_sub(1);
        drop(s);
        self.cv.notify_all();
    }

    /// vCPU side: waits here while the pause lasts and `stop` is not set.
    pub fn park(&self, stop: &AtomicBool) {
        let mut s = self.lock();
        s.parked += 1;
        self.cv.notify_all();
        while s.paused && !stop.load(Ordering::Acquire) {
            // The timeout only bounds a missed wake-up from a stop.
            s = self
                .cv
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.parked -= 1;
        drop(s);
        self.cv.notify_all();
    }

    /// Asks the vCPUs to park.
    pub fn request(&self) {
        self.lock().paused = true;
        self.requested.store(true, Ordering::Release);
    }

    /// Lets parked vCPUs run again.
    pub fn release(&self) {
        let mut s = self.lock();
        s.paused = false;
        self.requested.store(false, Ordering::Release);
        drop(s);
        self.cv.notify_all();
    }

    /// Wakes every waiter (after a stop was requested).
    pub fn wake(&self) {
        drop(self.lock());
        self.cv.notify_all();
    }

    /// Whether a pause is in force (asked for and not released).
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Whether some vCPU thread is alive and every live one is parked.
    pub fn all_parked(&self) -> bool {
        let s = self.lock();
        s.alive > 0 && s.parked == s.alive
    }

    /// Waits at most `timeout` for the parked or live counts to change.
    pub fn wait_change(&self, timeout: Duration) {
        let s = self.lock();
        drop(self.cv.wait_timeout(s, timeout));
    }
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
    /// Where this vCPU parks while the VM is paused.
    pub pause: Arc<PauseGate>,
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
            if self.pause.requested() {
                self.pause.park(&self.stop);
                continue;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_gate_counts_parked_vcpus_and_releases_them() {
        let gate = Arc::new(PauseGate::new());
        let stop = Arc::new(AtomicBool::new(false));
        let ran = Arc::new(std::sync::atomic::AtomicU64::new(0));
        // Two fake vCPU loops.
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (gate, stop, ran) = (gate.clone(), stop.clone(), ran.clone());
                gate.enter();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        if gate.requested() {
                            gate.park(&stop);
                            continue;
                        }
                        ran.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    gate.exit();
                })
            })
            .collect();
        assert!(!gate.all_parked());
        gate.request();
        assert!(gate.is_paused());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !gate.all_parked() {
            assert!(std::time::Instant::now() < deadline, "vCPUs never parked");
            gate.wait_change(Duration::from_millis(5));
        }
        let before = ran.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(ran.load(Ordering::Relaxed), before, "a parked vCPU ran");
        gate.release();
        assert!(!gate.is_paused());
        while ran.load(Ordering::Relaxed) == before {
            assert!(std::time::Instant::now() < deadline, "vCPUs never resumed");
            std::thread::sleep(Duration::from_millis(1));
        }
        // A stop wakes parked vCPUs too.
        gate.request();
        while !gate.all_parked() {
            gate.wait_change(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Release);
        gate.wake();
        for t in threads {
            t.join().unwrap();
        }
        assert!(!gate.all_parked(), "no live vCPU is not all parked");
    }
}
