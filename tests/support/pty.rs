//! Driving a program through a pseudo-terminal, as a person at a terminal
//! would: the program's stdin, stdout and stderr are the replica of a pty
//! that is its controlling terminal; the test types into the master, reads
//! what the program shows, and resizes the window (the kernel sends the
//! program SIGWINCH, as a terminal emulator's resize does).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;

/// A program on a pty of the test's.
#[derive(Debug)]
pub struct Pty {
    master: File,
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    what: String,
}

fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl Pty {
    /// Starts `cmd` on a new `rows` x `cols` pty, in a session of its own
    /// with the pty as its controlling terminal.
    pub fn spawn(mut cmd: Command, rows: u16, cols: u16) -> Pty {
        let what = format!("{cmd:?}");
        let master =
            rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
                .expect("open a pty");
        rustix::pty::grantpt(&master).expect("grantpt");
        rustix::pty::unlockpt(&master).expect("unlockpt");
        let name = rustix::pty::ptsname(&master, Vec::new()).expect("ptsname");
        rustix::termios::tcsetwinsize(&master, winsize(rows, cols)).expect("size the pty");
        let replica: OwnedFd = rustix::fs::open(
            name.as_c_str(),
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .expect("open the pty's replica");
        let dup = || Stdio::from(replica.try_clone().expect("dup the pty's replica"));
        cmd.stdin(dup()).stdout(dup()).stderr(dup());
        // SAFETY: the closure runs in the forked child before exec and
        // makes only two system calls (setsid, ioctl on fd 0), both
        // async-signal-safe, touching no memory of the parent's.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::setsid()?;
                rustix::process::ioctl_tiocsctty(std::io::stdin())?;
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
        // Only the child holds the replica now: the master reads EOF (EIO)
        // once it and its descendants are gone.
        drop(cmd);
        drop(replica);
        let master = File::from(master);
        let out = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, sink) = (master.try_clone().expect("dup the pty"), out.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            master,
            child,
            out,
            what,
        }
    }

    /// Types `s`.
    pub fn write(&self, s: &str) {
        (&self.master)
            .write_all(s.as_bytes())
            .unwrap_or_else(|e| panic!("type into {}: {e}", self.what));
    }

    /// Everything shown so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Whether `needle` shows up, at or after byte `from` of the output,
    /// within `timeout`.
    pub fn wait_for(&self, from: usize, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = {
                let out = self.out.lock().unwrap();
                out.len() > from && String::from_utf8_lossy(&out[from..]).contains(needle)
            };
            if seen {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many bytes have been shown.
    pub fn len(&self) -> usize {
        self.out.lock().unwrap().len()
    }

    /// Whether nothing has been shown yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resizes the window: the program gets SIGWINCH.
    pub fn resize(&self, rows: u16, cols: u16) {
        rustix::termios::tcsetwinsize(self.master.as_fd(), winsize(rows, cols))
            .expect("resize the pty");
    }

    /// Waits up to `timeout` for the program to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait for the pty's program") {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
