//! husk's emulated devices.
//!
//! A husk microVM has almost no hardware: one 16550A UART for the console
//! (`legacy::Serial`, from vm-superio), the keyboard controller's reset line
//! (`legacy::I8042`) and a power-off port (`legacy::PowerOff`). Everything else
//! is virtio ([`virtio`]): the virtio-mmio transport, virtio-vsock,
//! virtio-fs and virtio-net. Devices on the port-I/O bus implement [`PioDevice`] and are
//! routed by [`PioBus`]; devices in the MMIO hole implement [`MmioDevice`]
//! and are routed by [`MmioBus`].

#![deny(missing_docs)]

pub mod bus;
pub mod exit;
pub mod legacy;
pub mod virtio;

pub use bus::{BusError, MmioBus, MmioDevice, PioBus, PioDevice};
pub use exit::{ExitNotifier, GuestExit};
pub use virtio::fs::{Fs, FsConfig, FsError, JailError};
pub use virtio::net::{Net, NetBackend, NetConfig, NetError, NetStats, TapError, open_tap};
pub use virtio::vsock::{Vsock, VsockConfig, VsockError};
pub use virtio::{Interrupt, MMIO_WINDOW_SIZE, MmioTransport, VirtioDevice, mmio_cmdline_arg};
