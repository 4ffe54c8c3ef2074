//! The console UART: vm-superio's 16550A on the port-I/O bus.

use std::io::Write;

use vm_superio::Trigger;
use vm_superio::serial::NoEvents;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::PioDevice;

/// COM1's base port.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's legacy interrupt line.
pub const COM1_IRQ: u32 = 4;

/// Raises the UART's interrupt by writing an eventfd that KVM routes to a GSI
/// (an irqfd).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// A 16550A UART whose output goes to `W` (the console stream).
pub struct Serial<W: Write + Send> {
    inner: vm_superio::Serial<EventFdTrigger, NoEvents, W>,
}

impl<W: Write + Send> std::fmt::Debug for Serial<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial").finish_non_exhaustive()
    }
}

impl<W: Write + Send> Serial<W> {
    /// A UART that interrupts through `irq` and writes to `out`.
    pub fn new(irq: EventFd, out: W) -> Self {
        Self {
            inner: vm_superio::Serial::new(EventFdTrigger(irq), out),
        }
    }

    /// Queues console input for the guest to read.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.inner
            .enqueue_raw_bytes(bytes)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))
    }

    /// The output stream.
    pub fn writer_mut(&mut self) -> &mut W {
        self.inner.writer_mut()
    }
}

impl<W: Write + Send> PioDevice for Serial<W> {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        if data.len() == 1 && offset < 8 {
            data[0] = self.inner.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if data.len() == 1
            && offset < 8
            && let Err(e) = self.inner.write(offset as u8, data[0])
        {
            // The console's sink went away (a closed pipe): the guest runs on.
            log::debug!("serial write failed: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn transmits_to_writer_and_reports_line_status() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(irq, Vec::new());
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(s.writer_mut().as_slice(), b"hi\n");
        // LSR: transmitter empty (THRE | TEMT), as the kernel's polling expects.
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
        // Wrong-size accesses are ignored, not panics.
        s.write(0, &[1, 2]);
        let mut two = [0u8; 2];
        s.read(0, &mut two);
        s.read(200, &mut lsr);
    }
}
