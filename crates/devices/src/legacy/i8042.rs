//! The keyboard controller, reduced to what a microVM uses: its CPU reset
//! line. Linux reboots with `reboot=k` by writing 0xfe (pulse reset) to port
//! 0x64; husk treats that as the guest asking to stop.

use crate::bus::PioDevice;
use crate::exit::{ExitNotifier, GuestExit};

/// The controller's command/status port, relative to its base 0x60.
const CMD_OFFSET: u16 = 4;
/// "Pulse output line 0": resets the CPU.
const CMD_RESET: u8 = 0xfe;

/// The i8042 at ports 0x60..=0x64.
#[derive(Debug)]
pub struct I8042 {
    exit: ExitNotifier,
}

impl I8042 {
    /// Base port.
    pub const BASE: u16 = 0x60;
    /// Ports covered (0x60..=0x64).
    pub const LEN: u16 = 5;

    /// A controller that reports resets to `exit`.
    pub fn new(exit: ExitNotifier) -> Self {
        Self { exit }
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty. The kernel's
        // reset path waits for the input buffer to drain before writing.
        data.fill(0);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if offset == CMD_OFFSET && data.first() == Some(&CMD_RESET) {
            self.exit.notify(GuestExit::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_ends_the_guest() {
        let n = ExitNotifier::new().unwrap();
        let mut k = I8042::new(n.clone());
        let mut st = [0xffu8];
        k.read(CMD_OFFSET, &mut st);
        assert_eq!(st, [0]);
        k.write(0, &[CMD_RESET]); // data port: ignored
        k.write(CMD_OFFSET, &[0xaa]); // self-test: ignored
        assert_eq!(n.get(), None);
        k.write(CMD_OFFSET, &[CMD_RESET]);
        assert_eq!(n.get(), Some(GuestExit::Reset));
    }
}
