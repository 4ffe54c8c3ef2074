//! PID 1 reaps every process in the guest (orphans are reparented to it).
//! One thread waits for any child; a process the agent started registers its
//! pid and gets its exit status through a channel. A child that exits before
//! it is registered is remembered, so no status is lost.
//!
//! The reaper must not steal a child from `std::process::Command::spawn`,
//! which reaps a child whose exec failed itself (and panics if it cannot).
//! So it first only looks at which child exited (`WNOWAIT`), then reaps it
//! with the lock held that [`Reaper::spawn`] holds while spawning.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};

use husk_protocol::ExitStatus;

use crate::sys;

#[derive(Default)]
struct State {
    waiting: HashMap<i32, Sender<ExitStatus>>,
    /// Exited before anyone asked (bounded: only our own children are kept).
    early: HashMap<i32, ExitStatus>,
    /// Pids the agent started and has not yet claimed.
    ours: std::collections::HashSet<i32>,
}

/// Shared with the connection threads.
#[derive(Clone, Default)]
pub struct Reaper {
    state: Arc<(Mutex<State>, Condvar)>,
}

fn decode(status: libc::c_int) -> ExitStatus {
    if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    }
}

impl Reaper {
    /// Starts the reaping thread.
    pub fn start() -> Self {
        let r = Reaper::default();
        let r2 = r.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r2.run())
            .expect("spawn reaper thread");
        r
    }

    fn run(&self) {
        let (lock, cv) = &*self.state;
        loop {
            match sys::peek_exited() {
                Ok(Some(pid)) => {
                    let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
                    // Gone already: spawn reaped a child whose exec failed.
                    let Some(status) = sys::reap(pid) else {
                        continue;
                    };
                    let st = decode(status);
                    if let Some(tx) = s.waiting.remove(&pid) {
                        let _ = tx.send(st);
                    } else if s.ours.remove(&pid) {
                        s.early.insert(pid, st);
                    }
                    // Anything else was an orphan: reaped and forgotten.
                }
                Ok(None) => {
                    // No children: sleep until one is started.
                    let s = lock.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = cv.wait_timeout(s, std::time::Duration::from_millis(200));
                }
                Err(e) => {
                    eprintln!("husk-agent: waitpid: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }

    /// Runs `spawn` (which starts a child and returns its pid) with the
    /// reaper's lock held, so the child cannot be reaped before it is known,
    /// and wakes the reaper.
    pub fn spawn<T>(
        &self,
        spawn: impl FnOnce() -> std::io::Result<(i32, T)>,
    ) -> std::io::Result<(i32, T)> {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        let r = spawn()?;
        s.ours.insert(r.0);
        drop(s);
        cv.notify_all();
        Ok(r)
    }

    /// A channel that receives `pid`'s exit status.
    pub fn watch(&self, pid: i32) -> Receiver<ExitStatus> {
        let (tx, rx) = channel();
        let (lock, _) = &*self.state;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(st) = s.early.remove(&pid) {
            let _ = tx.send(st);
        } else {
            s.ours.remove(&pid);
            s.waiting.insert(pid, tx);
        }
        rx
    }
}
