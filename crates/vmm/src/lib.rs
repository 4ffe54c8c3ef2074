//! husk's virtual machine monitor.
//!
//! [`Vm::start`] takes a [`VmConfig`] (kernel, initramfs, memory, vCPUs,
//! console) and boots a Linux guest on KVM with Linux's 64-bit boot
//! protocol; the [`Vm`] handle (and its [`VmControl`]) pauses, resumes and
//! stops it and waits for the guest to power off or reboot. [`run`] does
//! both and blocks. [`host::detect`] tells what kind of KVM
//! this is and so whether the guest kernel's PVM compatibility mode is on.

pub mod boot;
pub mod console;
pub mod error;
pub mod host;
pub mod layout;
pub mod memory;
pub mod vcpu;
pub mod vm;
pub mod x86_64;

pub use error::VmmError;
pub use host::HostKind;
pub use husk_devices::virtio::net::{
    NetBackend, NetConfig, NetCounters, NetStats, TapError, open_tap,
};
pub use husk_devices::{ExitNotifier, GuestExit};
pub use vm::{CompatMode, FsShare, TAIL_LINES, Vm, VmConfig, VmControl, VmOutcome, VsockSpec, run};
