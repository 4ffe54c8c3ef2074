//! Building and running a microVM: the linear recipe from a [`VmConfig`] to a
//! guest that runs until it powers off.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub use husk_devices::legacy::POWEROFF_PORT;
use husk_devices::legacy::{COM1_IRQ, COM1_PORT, I8042, PowerOff, Serial};
use husk_devices::{ExitNotifier, GuestExit, PioBus};
use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::load_cmdline;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::boot::cmdline::KernelCmdline;
use crate::boot::{loader, params};
use crate::console::{ConsoleTail, TailSink};
use crate::error::VmmError;
use crate::host::{self, HostKind};
use crate::layout::{CMDLINE_START, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS, ZERO_PAGE_START};
use crate::memory;
use crate::vcpu::{PauseGate, Vcpu, VcpuOutcome};
use crate::x86_64::{cpuid, mptable, regs};

/// Whether to switch on the guest kernel's PVM compatibility mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompatMode {
    /// From the detected host kind.
    #[default]
    Auto,
    /// Always (for testing the mode itself).
    On,
    /// Never.
    Off,
}

/// Everything needed to boot a guest.
pub struct VmConfig {
    /// The kernel: a vmlinux ELF or a bzImage.
    pub kernel: PathBuf,
    /// The initramfs (a newc cpio), if any.
    pub initrd: Option<PathBuf>,
    /// Extra kernel command-line arguments, after husk's own.
    pub cmdline_extra: String,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// PVM compatibility mode.
    pub compat: CompatMode,
    /// Where the serial console's output goes.
    pub console: Box<dyn Write + Send>,
    /// Stop the guest (with an error) if it runs longer than this.
    pub timeout: Option<Duration>,
    /// A virtio-vsock device whose host side is this Unix socket (the
    /// hybrid-vsock convention: host programs connect and write
    /// `CONNECT <port>`), with the guest's context id.
    pub vsock: Option<VsockSpec>,
    /// Host directories shared with the guest over virtio-fs, one device
    /// each; the guest mounts one with `mount -t virtiofs <tag> <dir>`.
    pub fs: Vec<FsShare>,
    /// A virtio-net device (after the vsock and virtio-fs devices on the
    /// MMIO bus): the guest's MAC and MTU and the host-side backend (a
    /// passt-framed Unix stream or a TAP).
    pub net: Option<husk_devices::virtio::net::NetConfig>,
    /// Shared with the caller, who can stop the VM early by notifying it
    /// (the guest is then stopped as if it had powered off).
    pub exit: Option<ExitNotifier>,
}

/// The vsock device of a VM.
#[derive(Debug, Clone)]
pub struct VsockSpec {
    /// Host-side Unix socket path.
    pub uds_path: PathBuf,
    /// The guest's context id (3 or more).
    pub cid: u64,
}

/// A host directory (or one file of it) shared with the guest over
/// virtio-fs.
#[derive(Debug, Clone)]
pub struct FsShare {
    /// The mount tag (1 to 36 bytes): `mount -t virtiofs <tag> <dir>`.
    pub tag: String,
    /// The host directory.
    pub host_dir: PathBuf,
    /// Refuse every change with `EROFS`, on the host side.
    pub read_only: bool,
    /// Share one file: `host_dir` is its directory, and this entry (a
    /// regular file's name) is all the guest sees in it; nothing can be
    /// created, removed, renamed or linked beside it. `None`: the whole
    /// directory.
    pub only: Option<std::ffi::OsString>,
    /// Never make set-user-ID or set-group-ID files on the host (see
    /// `husk_devices::FsConfig::no_setid`): for shares host users reach.
    pub no_setid: bool,
}

/// Where virtio-mmio devices go: the first 4 KiB window, and the first
/// legacy IRQ line (COM1 has 4).
const VIRTIO_MMIO_START: u64 = 0xd000_0000;
const VIRTIO_FIRST_IRQ: u32 = 5;

/// A virtio-mmio device placed in the VM.
struct PlacedDevice {
    transport: Arc<Mutex<dyn Shutdown>>,
}

trait Shutdown: Send {
    fn shutdown(&mut self);
}

impl<D: husk_devices::VirtioDevice> Shutdown for husk_devices::MmioTransport<D> {
    fn shutdown(&mut self) {
        husk_devices::MmioTransport::shutdown(self);
    }
}

/// Puts `device` on the MMIO bus at the next window, wires its interrupt
/// (irqfd) and queue notifications (ioeventfd, where KVM offers it), and
/// announces it on the command line.
fn attach_virtio<D: husk_devices::VirtioDevice + 'static>(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut husk_devices::MmioBus,
    cmdline: &mut KernelCmdline,
    placed: &mut Vec<PlacedDevice>,
    device: D,
) -> Result<(), VmmError> {
    let index = placed.len() as u64;
    let base = VIRTIO_MMIO_START + index * husk_devices::MMIO_WINDOW_SIZE;
    let irq = VIRTIO_FIRST_IRQ + index as u32;
    let transport =
        husk_devices::MmioTransport::new(device, mem.clone()).map_err(VmmError::Transport)?;
    vm.register_irqfd(transport.interrupt().irqfd(), irq)
        .map_err(kvm_err("virtio interrupt (irqfd)"))?;
    for (q, evt) in transport.queue_evts().iter().enumerate() {
        let addr = kvm_ioctls::IoEventAddress::Mmio(base + husk_devices::virtio::NOTIFY_REG_OFFSET);
        if let Err(e) = vm.register_ioevent(evt, &addr, q as u32) {
            // The transport signals the queue itself on the MMIO exit.
            log::debug!(
                "no ioeventfd for queue {q} at {base:#x}: {e}; notifications go through MMIO exits"
            );
        }
    }
    cmdline.push(husk_devices::mmio_cmdline_arg(base, irq));
    let transport = Arc::new(Mutex::new(transport));
    mmio.insert(base, husk_devices::MMIO_WINDOW_SIZE, transport.clone())?;
    placed.push(PlacedDevice { transport });
    Ok(())
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("kernel", &self.kernel)
            .field("initrd", &self.initrd)
            .field("cmdline_extra", &self.cmdline_extra)
            .field("mem_size", &self.mem_size)
            .field("vcpus", &self.vcpus)
            .field("compat", &self.compat)
            .field("timeout", &self.timeout)
            .field("vsock", &self.vsock)
            .field("fs", &self.fs)
            .field("net", &self.net)
            .finish_non_exhaustive()
    }
}

/// How a guest run ended.
#[derive(Debug, Clone)]
pub struct VmOutcome {
    /// What the guest did.
    pub exit: GuestExit,
    /// The host kind detected.
    pub host: HostKind,
    /// Whether the PVM compatibility mode was on.
    pub pvm_compat: bool,
    /// The command line the guest got.
    pub cmdline: String,
    /// From creating the VM to the guest stopping.
    pub run_time: Duration,
}

/// Opens `/dev/kvm`, turning the common failures into errors that say what to do.
fn open_kvm(host: HostKind) -> Result<Kvm, VmmError> {
    if host == HostKind::NoKvm {
        return Err(VmmError::NoKvm);
    }
    Kvm::new().map_err(open_error)
}

/// What a failure to open `/dev/kvm` means for the user.
fn open_error(e: kvm_ioctls::Error) -> VmmError {
    match e.errno() {
        libc::ENOENT | libc::ENXIO | libc::ENODEV => VmmError::NoKvm,
        libc::EACCES | libc::EPERM => VmmError::KvmPermission,
        _ => VmmError::KvmOpen(e),
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |e| VmmError::Kvm(what, e)
}

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem.get_host_address(region.start_addr()).map_err(|_| {
            VmmError::Kvm("guest memory region", kvm_ioctls::Error::new(libc::EINVAL))
        })?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region's host mapping is owned by `mem`, which the
        // caller keeps alive (in the vCPUs) for as long as the VM runs.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("guest memory region"))?;
    }
    Ok(())
}

fn install_kick_handler() -> Result<(), VmmError> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        res = register_signal_handler(SIGRTMIN(), noop).map_err(VmmError::Signal);
    });
    res
}

/// Boots a guest as `config` says and runs it until it powers off, reboots,
/// fails, or times out. Blocks the calling thread: [`Vm::start`] then
/// [`Vm::wait`].
pub fn run(config: VmConfig) -> Result<VmOutcome, VmmError> {
    Vm::start(config)?.wait()
}

/// What the handle, its controllers, the vCPU threads and the monitor
/// thread share.
struct Shared {
    /// Asks the vCPUs to return.
    stop: Arc<AtomicBool>,
    /// Where the vCPUs park while paused.
    gate: Arc<PauseGate>,
    /// Guest- and caller-initiated stops.
    exit: ExitNotifier,
    /// The vCPU threads, for kicking them out of KVM_RUN; the monitor
    /// empties it (under the lock) before it joins them.
    vcpus: Mutex<Vec<JoinHandle<()>>>,
    /// The last console output.
    tail: ConsoleTail,
    /// Set (and `done_cv` notified) once the monitor has torn down the VM.
    done: Mutex<bool>,
    done_cv: Condvar,
}

impl Shared {
    /// Sends the kick signal to every vCPU thread still running.
    fn kick(&self) {
        let vcpus = self.vcpus.lock().unwrap_or_else(|e| e.into_inner());
        for t in vcpus.iter().filter(|t| !t.is_finished()) {
            let _ = t.kill(SIGRTMIN());
        }
    }

    fn is_done(&self) -> bool {
        *self.done.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops every vCPU (kicking them until they return, at most 5 s) and
    /// joins them.
    fn stop_vcpus(&self) {
        self.stop.store(true, Ordering::Release);
        self.gate.wake();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let running = {
                let vcpus = self.vcpus.lock().unwrap_or_else(|e| e.into_inner());
                vcpus.iter().any(|t| !t.is_finished())
            };
            if !running || Instant::now() >= deadline {
                break;
            }
            self.kick();
            self.gate.wake();
            thread::sleep(Duration::from_millis(2));
        }
        let vcpus = std::mem::take(&mut *self.vcpus.lock().unwrap_or_else(|e| e.into_inner()));
        for t in vcpus {
            if t.is_finished() {
                let _ = t.join();
            } else {
                log::error!("a vCPU thread did not stop within 5 s; leaving it behind");
            }
        }
    }
}

/// The virtio devices of a VM; dropping it stops their worker threads
/// (they hold sockets and guest memory), on every path.
struct Devices(Vec<PlacedDevice>);

impl Drop for Devices {
    fn drop(&mut self) {
        for d in &self.0 {
            d.transport
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .shutdown();
        }
    }
}

/// What the monitor thread needs to decide how the run ended.
struct Monitor {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<(u8, VcpuOutcome)>,
    devices: Devices,
    host: HostKind,
    pvm_compat: bool,
    cmdline: String,
    started: Instant,
    timeout: Option<Duration>,
    /// The VM's file descriptor and /dev/kvm: closing the VM's descriptor
    /// releases its irqfds (the guest would never see an interrupt
    /// again), so they live until the vCPUs are joined.
    vm_fd: VmFd,
    kvm: Kvm,
}

impl Monitor {
    /// Waits for the first vCPU to end, a stop, or the deadline; then stops
    /// the rest and the devices, and says how the guest ended.
    fn run(self) -> Result<VmOutcome, VmmError> {
        let deadline = self.timeout.map(|t| self.started + t);
        let first = loop {
            match self.rx.recv_timeout(Duration::from_millis(20)) {
                Ok(msg) => break Some(msg),
                Err(mpsc::RecvTimeoutError::Disconnected) => break None,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Some(e) = self.shared.exit.get() {
                break Some((u8::MAX, VcpuOutcome::Exit(e)));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break None;
            }
        };
        self.shared.stop_vcpus();
        drop(self.devices);
        drop(self.vm_fd);
        drop(self.kvm);
        let outcome = VmOutcome {
            exit: GuestExit::PowerOff,
            host: self.host,
            pvm_compat: self.pvm_compat,
            cmdline: self.cmdline,
            run_time: self.started.elapsed(),
        };
        let timeout = VmmError::Timeout(self.timeout.unwrap_or_default());
        let result = match first {
            None | Some((_, VcpuOutcome::Stopped)) => Err(timeout),
            Some((_, VcpuOutcome::Exit(e))) => Ok(VmOutcome { exit: e, ..outcome }),
            Some((_, VcpuOutcome::Error(e))) => Err(VmmError::Vcpu(e)),
        };
        // With `panic=-1` a panicking guest kernel reboots at once: that
        // reset (or any stop after a panic) is a failure, not a clean stop.
        match result {
            Ok(_) if self.shared.tail.shows_panic() => Err(VmmError::GuestPanic {
                console_tail: self.shared.tail.last_lines(TAIL_LINES),
            }),
            r => r,
        }
    }
}

/// How many console lines errors and [`Vm::console_tail`] quote.
pub const TAIL_LINES: usize = 30;

/// A running VM. [`Vm::start`] returns as soon as the vCPUs run;
/// [`Vm::wait`] waits for the guest to stop. Dropping it stops the guest
/// and joins every thread. Use [`Vm::controller`] to pause, resume or stop
/// it from other threads.
pub struct Vm {
    control: VmControl,
    monitor: Option<JoinHandle<Result<VmOutcome, VmmError>>>,
    net_stats: Option<Arc<husk_devices::NetStats>>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("finished", &self.is_finished())
            .field("paused", &self.is_paused())
            .finish_non_exhaustive()
    }
}

/// Pauses, resumes and stops a [`Vm`] from any thread; cheap to clone.
/// Once the VM has stopped, its methods do nothing (or fail, for pause).
#[derive(Clone)]
pub struct VmControl {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for VmControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmControl").finish_non_exhaustive()
    }
}

/// How long [`VmControl::pause`] waits for the vCPUs to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

impl VmControl {
    /// Stops the guest running: returns once every vCPU is out of KVM_RUN
    /// and parked. Pausing a paused VM is a no-op.
    pub fn pause(&self) -> Result<(), VmmError> {
        let s = &self.shared;
        if s.is_done() || s.stop.load(Ordering::Acquire) {
            return Err(VmmError::NotRunning);
        }
        s.gate.request();
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        loop {
            if s.gate.all_parked() {
                return Ok(());
            }
            if s.is_done() || s.stop.load(Ordering::Acquire) {
                s.gate.release();
                return Err(VmmError::NotRunning);
            }
            if Instant::now() >= deadline {
                s.gate.release();
                return Err(VmmError::PauseTimeout(PAUSE_TIMEOUT));
            }
            s.kick();
            s.gate.wait_change(Duration::from_millis(2));
        }
    }

    /// Lets a paused guest run again (a no-op if it is not paused).
    pub fn resume(&self) -> Result<(), VmmError> {
        if self.shared.is_done() {
            return Err(VmmError::NotRunning);
        }
        self.shared.gate.release();
        Ok(())
    }

    /// Whether the guest is paused.
    pub fn is_paused(&self) -> bool {
        self.shared.gate.is_paused()
    }

    /// Asks the VM to stop now, as if the guest had powered off; returns at
    /// once. Idempotent.
    pub fn stop(&self) {
        self.shared.exit.notify(GuestExit::PowerOff);
        self.shared.gate.wake();
    }

    /// Whether the VM has stopped (by itself, by [`VmControl::stop`], or
    /// with an error) and been torn down: [`Vm::wait`] returns at once.
    pub fn is_finished(&self) -> bool {
        self.shared.is_done()
    }

    /// The last [`TAIL_LINES`] lines of the guest's console output.
    pub fn console_tail(&self) -> String {
        self.shared.tail.last_lines(TAIL_LINES)
    }
}

impl Vm {
    /// Builds the VM as `config` says and starts its vCPUs; returns at once.
    pub fn start(config: VmConfig) -> Result<Vm, VmmError> {
        let started = Instant::now();
        let host = host::detect();
        let pvm_compat = match config.compat {
            CompatMode::Auto => host.needs_pvm_compat(),
            CompatMode::On => true,
            CompatMode::Off => false,
        };
        match host {
            HostKind::Pvm if pvm_compat => log::info!(
                "host: {host}; guest kernel mode is emulated here (about 1,500x slower than hardware KVM); PVM compatibility mode on"
            ),
            HostKind::Pvm => log::warn!(
                "host: {host}; PVM compatibility mode forced off: guest user space will not run"
            ),
            HostKind::Unknown => log::warn!("host: {host}; assuming hardware virtualisation"),
            _ => log::info!(
                "host: {host}{}",
                if pvm_compat {
                    "; PVM compatibility mode forced on"
                } else {
                    ""
                }
            ),
        }
        if config.vcpus == 0 || config.vcpus > mptable::MAX_CPUS {
            return Err(VmmError::VcpuCount(config.vcpus));
        }
        // Check inputs before touching KVM, so bad input fails fast and clearly.
        if !config.kernel.is_file() {
            return Err(VmmError::KernelMissing(config.kernel.clone()));
        }
        if let Some(initrd) = &config.initrd
            && std::fs::metadata(initrd).is_ok_and(|m| m.len() == 0)
        {
            return Err(VmmError::EmptyInitrd(initrd.clone()));
        }
        memory::ram_ranges(config.mem_size)?;

        let kvm = open_kvm(host)?;
        let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
        if let Err(e) = vm.set_tss_address(KVM_TSS_ADDRESS as usize) {
            log::debug!("KVM_SET_TSS_ADDR: {e} (ignored)");
        }
        if let Err(e) = vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS) {
            log::debug!("KVM_SET_IDENTITY_MAP_ADDR: {e} (ignored)");
        }
        vm.create_irq_chip()
            .map_err(kvm_err("in-kernel interrupt controller"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("PIT"))?;

        let mem = memory::create(config.mem_size)?;
        register_memory(&vm, &mem)?;

        // Kernel, initramfs, command line, zero page, MP table, boot tables.
        let kernel = loader::load_kernel(&mem, &config.kernel)?;
        if kernel.format == loader::KernelFormat::BzImage && host == HostKind::Pvm {
            log::warn!(
                "booting a compressed bzImage on a PVM host: its decompressor runs emulated and can take minutes; use the uncompressed vmlinux"
            );
        }
        let initrd = match &config.initrd {
            Some(p) => Some(loader::load_initrd(&mem, config.mem_size, kernel.end, p)?),
            None => None,
        };
        let mut cmdline =
            KernelCmdline::new(if pvm_compat { HostKind::Pvm } else { host }, POWEROFF_PORT);

        // virtio-mmio devices (announced on the command line, so before it is built).
        let mut mmio = husk_devices::MmioBus::new();
        let mut devices = Devices(Vec::new());
        let placed = &mut devices.0;
        if let Some(v) = &config.vsock {
            let mut vcfg = husk_devices::VsockConfig::new(v.cid, v.uds_path.clone());
            if host == HostKind::Pvm {
                // The guest kernel runs emulated: answering a connection or
                // closing one can take seconds under load, so the device waits
                // longer before it gives up on the guest.
                vcfg.connect_timeout = Duration::from_secs(60);
                vcfg.close_timeout = Duration::from_secs(60);
            }
            let dev = husk_devices::Vsock::new(vcfg).map_err(VmmError::Vsock)?;
            attach_virtio(&vm, &mem, &mut mmio, &mut cmdline, placed, dev)?;
        }
        for share in &config.fs {
            let dev = husk_devices::Fs::new(husk_devices::FsConfig {
                tag: share.tag.clone(),
                host_dir: share.host_dir.clone(),
                read_only: share.read_only,
                only: share.only.clone(),
                no_setid: share.no_setid,
            })
            .map_err(VmmError::Fs)?;
            attach_virtio(&vm, &mem, &mut mmio, &mut cmdline, placed, dev)?;
        }
        let mut net_stats = None;
        if let Some(net) = config.net {
            let dev = husk_devices::Net::new(net).map_err(VmmError::Net)?;
            net_stats = Some(dev.stats());
            attach_virtio(&vm, &mem, &mut mmio, &mut cmdline, placed, dev)?;
        }
        cmdline.push(&config.cmdline_extra);
        let cmdline_str = cmdline.build()?;
        let mut kcmd =
            Cmdline::new(crate::layout::CMDLINE_MAX_SIZE).map_err(VmmError::LinuxCmdline)?;
        kcmd.insert_str(&cmdline_str)
            .map_err(VmmError::LinuxCmdline)?;
        load_cmdline(&mem, GuestAddress(CMDLINE_START), &kcmd).map_err(VmmError::WriteCmdline)?;
        let zero_page = params::build(&params::BootParamsSpec {
            setup_header: kernel.setup_header,
            cmdline_addr: CMDLINE_START,
            cmdline_size: cmdline_str.len() + 1,
            initrd,
            e820: params::e820_map(config.mem_size),
        })?;
        mem.write_obj(zero_page, GuestAddress(ZERO_PAGE_START))
            .map_err(|e| VmmError::GuestMemory("boot parameters", e))?;
        mptable::write(&mem, config.vcpus)?;
        regs::write_boot_tables(&mem)?;
        log::debug!(
            "kernel {:?} entry {:#x}, command line: {cmdline_str}",
            kernel.format,
            kernel.entry
        );

        // Devices.
        let exit = match config.exit {
            Some(e) => e,
            None => ExitNotifier::new().map_err(VmmError::EventFd)?,
        };
        let tail = ConsoleTail::new();
        let console = TailSink::new(config.console, tail.clone());
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(VmmError::EventFd)?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(kvm_err("serial interrupt (irqfd)"))?;
        let mut bus = PioBus::new();
        bus.insert(
            COM1_PORT,
            8,
            Arc::new(Mutex::new(Serial::new(serial_irq, console))),
        )?;
        bus.insert(
            I8042::BASE,
            I8042::LEN,
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
        )?;
        bus.insert(
            POWEROFF_PORT,
            1,
            Arc::new(Mutex::new(PowerOff::new(exit.clone()))),
        )?;

        // vCPUs.
        install_kick_handler()?;
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("supported CPUID"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(PauseGate::new());
        let mut vcpus = Vec::new();
        for index in 0..config.vcpus {
            let fd = vm
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("create vCPU"))?;
            fd.set_cpuid2(&cpuid::for_vcpu(&supported, index, config.vcpus))
                .map_err(kvm_err("CPUID"))?;
            regs::setup_vcpu(&fd, kernel.entry, index == 0)?;
            vcpus.push(Vcpu {
                index,
                fd,
                bus: bus.clone(),
                mmio: mmio.clone(),
                exit: exit.clone(),
                stop: stop.clone(),
                pause: gate.clone(),
                mem: mem.clone(),
            });
        }
        let shared = Arc::new(Shared {
            stop,
            gate,
            exit,
            vcpus: Mutex::new(Vec::new()),
            tail,
            done: Mutex::new(false),
            done_cv: Condvar::new(),
        });
        // From here on threads exist: every error stops and joins them (and
        // `devices` stops the device workers when dropped).
        let (tx, rx) = mpsc::channel::<(u8, VcpuOutcome)>();
        for vcpu in vcpus {
            let index = vcpu.index;
            let tx = tx.clone();
            let gate = shared.gate.clone();
            gate.enter();
            let spawned = thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    let outcome = vcpu.run();
                    gate.exit();
                    let _ = tx.send((index, outcome));
                });
            match spawned {
                Ok(h) => shared
                    .vcpus
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(h),
                Err(e) => {
                    shared.gate.exit();
                    shared.stop_vcpus();
                    return Err(VmmError::Thread(e));
                }
            }
        }
        drop(tx);
        let monitor = Monitor {
            shared: shared.clone(),
            rx,
            devices,
            host,
            pvm_compat,
            cmdline: cmdline_str,
            started,
            timeout: config.timeout,
            vm_fd: vm,
            kvm,
        };
        let done = shared.clone();
        let spawned = thread::Builder::new()
            .name("vmm-monitor".into())
            .spawn(move || {
                let result = monitor.run();
                *done.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
                done.done_cv.notify_all();
                result
            });
        match spawned {
            Ok(h) => Ok(Vm {
                control: VmControl { shared },
                monitor: Some(h),
                net_stats,
            }),
            // The monitor (with the devices) was dropped with the closure.
            Err(e) => {
                shared.stop_vcpus();
                Err(VmmError::Thread(e))
            }
        }
    }

    /// The virtio-net device's counters and link state (a shared handle
    /// that stays current), if the VM has one.
    pub fn net_stats(&self) -> Option<Arc<husk_devices::NetStats>> {
        self.net_stats.clone()
    }

    /// A handle to pause, resume or stop this VM from other threads.
    pub fn controller(&self) -> VmControl {
        self.control.clone()
    }

    /// See [`VmControl::pause`].
    pub fn pause(&self) -> Result<(), VmmError> {
        self.control.pause()
    }

    /// See [`VmControl::resume`].
    pub fn resume(&self) -> Result<(), VmmError> {
        self.control.resume()
    }

    /// See [`VmControl::is_paused`].
    pub fn is_paused(&self) -> bool {
        self.control.is_paused()
    }

    /// See [`VmControl::stop`].
    pub fn stop(&self) {
        self.control.stop();
    }

    /// See [`VmControl::is_finished`].
    pub fn is_finished(&self) -> bool {
        self.control.is_finished()
    }

    /// See [`VmControl::console_tail`].
    pub fn console_tail(&self) -> String {
        self.control.console_tail()
    }

    /// Waits for the guest to stop; joins the vCPUs and device workers.
    pub fn wait(mut self) -> Result<VmOutcome, VmmError> {
        self.join()
    }

    /// Waits at most `timeout` for the guest to stop: `None` if it still
    /// runs. Once it has returned `Some`, the outcome is spent: later calls
    /// (and [`Vm::wait`]) return [`VmmError::AlreadyWaited`].
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Result<VmOutcome, VmmError>> {
        let s = &self.control.shared;
        let deadline = Instant::now() + timeout;
        let mut done = s.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*done && self.monitor.is_some() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            done = s
                .done_cv
                .wait_timeout(done, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(done);
        Some(self.join())
    }

    fn join(&mut self) -> Result<VmOutcome, VmmError> {
        match self.monitor.take() {
            Some(h) => h.join().unwrap_or(Err(VmmError::MonitorPanicked)),
            None => Err(VmmError::AlreadyWaited),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.monitor.is_some() {
            self.stop();
            let _ = self.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_open_failures_say_what_to_do() {
        let e = open_error(kvm_ioctls::Error::new(libc::EACCES));
        assert!(matches!(e, VmmError::KvmPermission));
        assert!(e.to_string().contains("add your user to the group"), "{e}");
        let e = open_error(kvm_ioctls::Error::new(libc::ENOENT));
        assert!(e.to_string().contains("/dev/kvm does not exist"), "{e}");
        assert!(matches!(
            open_error(kvm_ioctls::Error::new(libc::EIO)),
            VmmError::KvmOpen(_)
        ));
        assert!(matches!(open_kvm(HostKind::NoKvm), Err(VmmError::NoKvm)));
    }

    #[test]
    fn the_handle_is_shareable_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Vm>();
        send_sync::<VmControl>();
    }

    #[test]
    fn an_empty_initramfs_is_refused_before_kvm() {
        let dir = std::env::temp_dir().join(format!("husk-vmm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (kernel, initrd) = (dir.join("vmlinux"), dir.join("initrd"));
        std::fs::write(&kernel, b"not really a kernel").unwrap();
        std::fs::write(&initrd, b"").unwrap();
        let config = VmConfig {
            kernel,
            initrd: Some(initrd.clone()),
            cmdline_extra: String::new(),
            mem_size: 64 << 20,
            vcpus: 1,
            compat: CompatMode::Auto,
            console: Box::new(std::io::sink()),
            timeout: None,
            vsock: None,
            fs: Vec::new(),
            net: None,
            exit: None,
        };
        let e = Vm::start(config).unwrap_err();
        assert!(
            matches!(&e, VmmError::EmptyInitrd(p) if *p == initrd),
            "{e}"
        );
        assert!(e.to_string().contains("is empty"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_panic_error_quotes_the_console() {
        let e = VmmError::GuestPanic {
            console_tail: "Kernel panic - not syncing: VFS".into(),
        };
        let msg = e.to_string();
        assert!(msg.contains("guest kernel panicked"), "{msg}");
        assert!(msg.contains("not syncing: VFS"), "{msg}");
    }
}
