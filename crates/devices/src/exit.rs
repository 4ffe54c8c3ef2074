//! How devices tell the VMM that the guest wants to stop.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Why the guest stopped, as the devices saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest powered off (wrote the power-off port).
    PowerOff,
    /// The guest rebooted (keyboard-controller reset, or a triple fault).
    Reset,
}

/// Shared by the devices that can end the VM and by the VMM, which waits on
/// [`ExitNotifier::eventfd`]. The first exit recorded wins.
#[derive(Debug, Clone)]
pub struct ExitNotifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    exit: Mutex<Option<GuestExit>>,
    event: EventFd,
}

impl ExitNotifier {
    /// A notifier with nothing recorded.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                exit: Mutex::new(None),
                event: EventFd::new(EFD_NONBLOCK)?,
            }),
        })
    }

    /// Records `exit` (unless one is already recorded) and wakes the waiter.
    pub fn notify(&self, exit: GuestExit) {
        let mut slot = self.inner.exit.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(exit);
        }
        drop(slot);
        if let Err(e) = self.inner.event.write(1) {
            log::error!("cannot signal guest exit: {e}");
        }
    }

    /// The exit recorded so far, if any.
    pub fn get(&self) -> Option<GuestExit> {
        *self.inner.exit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Becomes readable once an exit is recorded.
    pub fn eventfd(&self) -> &EventFd {
        &self.inner.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_exit_wins_and_wakes() {
        let n = ExitNotifier::new().unwrap();
        assert_eq!(n.get(), None);
        n.notify(GuestExit::PowerOff);
        n.clone().notify(GuestExit::Reset);
        assert_eq!(n.get(), Some(GuestExit::PowerOff));
        assert_eq!(n.eventfd().read().unwrap(), 2);
    }
}
