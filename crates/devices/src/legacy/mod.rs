//! The legacy PC devices a microVM keeps.

mod i8042;
mod poweroff;
mod serial;

pub use i8042::I8042;
pub use poweroff::{POWEROFF_PORT, PowerOff};
pub use serial::{COM1_IRQ, COM1_PORT, EventFdTrigger, Serial};
