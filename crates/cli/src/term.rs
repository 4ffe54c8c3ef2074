//! The host terminal and signals for `husk run`: raw mode and window size
//! for `-t`, and forwarding signals to the container process.

use std::sync::mpsc::Sender;

use husk_runtime::{Control, TermSize};

/// The window size of terminal `fd`.
pub fn size(fd: libc::c_int) -> Option<TermSize> {
    // SAFETY: winsize is plain data; all-zero is valid.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize to a valid pointer.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some(TermSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Puts a terminal in raw mode until dropped (as `docker run -t` does, so
/// keys such as Ctrl-C reach the container's terminal).
pub struct RawMode {
    fd: libc::c_int,
    saved: libc::termios,
}

impl RawMode {
    /// Enters raw mode on `fd`.
    pub fn enter(fd: libc::c_int) -> std::io::Result<Self> {
        // SAFETY: termios is plain data; all-zero is valid before tcgetattr fills it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes a termios to a valid pointer.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the termios it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: tcsetattr reads a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the termios saved at entry.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// The signals `husk run` passes on to the container process.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Blocks the forwarded signals (and SIGWINCH) in this thread, which every
/// thread started later inherits, and starts a thread that receives them with
/// sigwait and sends them on `tx`. Call before starting other threads.
pub fn forward_signals(tx: Sender<Control>, tty: bool) -> std::io::Result<()> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for s in FORWARDED.into_iter().chain([libc::SIGWINCH]) {
        // SAFETY: set is a valid, initialised sigset_t.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    // SAFETY: set is valid; the old mask is not needed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: set and sig are valid; the signals in set are blocked.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                let c = if sig == libc::SIGWINCH {
                    match (tty, size(0)) {
                        (true, Some(sz)) => Control::Resize(sz),
                        _ => continue,
                    }
                } else {
                    log::debug!("forwarding signal {sig} to the container");
                    Control::Signal(sig)
                };
                if tx.send(c).is_err() {
                    break;
                }
            }
        })?;
    Ok(())
}
