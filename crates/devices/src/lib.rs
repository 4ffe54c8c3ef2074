//! husk's emulated devices.
//!
//! A husk microVM has almost no hardware: one 16550A UART for the console
//! (`legacy::Serial`, from vm-superio), the keyboard controller's reset line
//! (`legacy::I8042`) and a power-off port (`legacy::PowerOff`). Everything else
//! is virtio (in later modules). Devices on the port-I/O bus implement
//! [`PioDevice`] and are routed by [`PioBus`].

#![deny(missing_docs)]

pub mod bus;
pub mod exit;
pub mod legacy;

pub use bus::{BusError, PioBus, PioDevice};
pub use exit::{ExitNotifier, GuestExit};
