//! The power-off port. husk's guest kernel (patch 0002-husk-poweroff) writes
//! a byte here when asked to power off, because the microVM has no ACPI.

use crate::bus::PioDevice;
use crate::exit::{ExitNotifier, GuestExit};

/// The port husk gives the guest as `husk.poweroff_port=`. Unused by any
/// legacy PC device, and the default port of QEMU's `isa-debug-exit`, so the
/// same guest also powers off a QEMU microvm that has one. (Not 0x510: that
/// is QEMU's fw_cfg selector, which its firmware writes at every boot.)
pub const POWEROFF_PORT: u16 = 0x501;

/// One port; any write powers the guest off.
#[derive(Debug)]
pub struct PowerOff {
    exit: ExitNotifier,
}

impl PowerOff {
    /// A power-off port reporting to `exit`.
    pub fn new(exit: ExitNotifier) -> Self {
        Self { exit }
    }
}

impl PioDevice for PowerOff {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u16, _data: &[u8]) {
        self.exit.notify(GuestExit::PowerOff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_write_powers_off() {
        let n = ExitNotifier::new().unwrap();
        let mut p = PowerOff::new(n.clone());
        let mut d = [1u8];
        p.read(0, &mut d);
        assert_eq!(n.get(), None);
        p.write(0, &[1]);
        assert_eq!(n.get(), Some(GuestExit::PowerOff));
    }
}
