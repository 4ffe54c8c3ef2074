//! The VMM's error type.

use std::path::PathBuf;
use std::time::Duration;

use crate::boot::cmdline::CmdlineError;
use crate::boot::loader::LoaderError;
use crate::boot::params::ParamsError;
use crate::memory::MemoryError;
use crate::vcpu::VcpuError;
use crate::x86_64::mptable::MpTableError;
use crate::x86_64::regs::RegsError;

/// Everything that can stop a VM from booting or running.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// No `/dev/kvm`.
    #[error(
        "/dev/kvm does not exist: this host offers no KVM (load kvm_intel, kvm_amd or kvm_pvm, or enable nested virtualisation for this VM)"
    )]
    NoKvm,
    /// `/dev/kvm` exists but cannot be opened.
    #[error(
        "permission denied opening /dev/kvm (run as root, or add your user to the group that owns /dev/kvm, usually 'kvm')"
    )]
    KvmPermission,
    /// Any other failure opening `/dev/kvm`.
    #[error("cannot open /dev/kvm")]
    KvmOpen(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM failed to set up the {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// The kernel file is missing.
    #[error("kernel {0} does not exist (build one with guest-kernel/build.sh)")]
    KernelMissing(PathBuf),
    /// A bad vCPU count.
    #[error("{0} vCPUs requested; husk supports 1 to {max}", max = crate::x86_64::mptable::MAX_CPUS)]
    VcpuCount(u8),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel or initramfs.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// Command line.
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    /// linux-loader refused the command line.
    #[error("invalid kernel command line")]
    LinuxCmdline(#[source] linux_loader::cmdline::Error),
    /// Writing the command line to guest memory.
    #[error("cannot write the kernel command line into guest memory")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    /// Zero page.
    #[error(transparent)]
    Params(#[from] ParamsError),
    /// MP table.
    #[error(transparent)]
    MpTable(#[from] MpTableError),
    /// vCPU registers.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// Device bus layout.
    #[error("cannot place a device on the I/O bus")]
    Bus(#[from] husk_devices::BusError),
    /// A virtio-mmio transport could not be created.
    #[error("cannot create a virtio-mmio transport")]
    Transport(#[source] husk_devices::virtio::TransportError),
    /// The vsock device could not be created.
    #[error("cannot create the vsock device")]
    Vsock(#[source] husk_devices::VsockError),
    /// A virtio-fs device could not be created.
    #[error("cannot create a virtio-fs device")]
    Fs(#[source] husk_devices::FsError),
    /// The virtio-net device could not be created.
    #[error("cannot create the virtio-net device")]
    Net(#[source] husk_devices::NetError),
    /// Guest memory write.
    #[error("cannot write the {0} into guest memory")]
    GuestMemory(&'static str, #[source] vm_memory::GuestMemoryError),
    /// eventfd creation.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The vCPU kick signal handler.
    #[error("cannot install the vCPU signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// Thread creation.
    #[error("cannot start a vCPU thread")]
    Thread(#[source] std::io::Error),
    /// A vCPU failed.
    #[error("the guest stopped with an error")]
    Vcpu(#[source] VcpuError),
    /// The guest ran past its deadline.
    #[error("the guest did not stop within {0:?}")]
    Timeout(Duration),
    /// The guest kernel panicked (and rebooted, as `panic=-1` says).
    #[error("the guest kernel panicked; the last lines of its console:\n{console_tail}")]
    GuestPanic {
        /// The last lines of the guest console.
        console_tail: String,
    },
    /// The initramfs file is empty.
    #[error("initramfs {0} is empty (0 bytes)")]
    EmptyInitrd(PathBuf),
    /// Pause or resume of a VM that has stopped.
    #[error("the VM is not running")]
    NotRunning,
    /// The vCPUs did not park in time.
    #[error("the vCPUs did not pause within {0:?}")]
    PauseTimeout(Duration),
    /// The VM's outcome was already taken by an earlier wait.
    #[error("the VM's outcome was already returned by an earlier wait")]
    AlreadyWaited,
    /// The VMM's monitor thread panicked.
    #[error("the VMM's monitor thread panicked")]
    MonitorPanicked,
}
