//! The virtio-fs device's worker thread: one epoll loop over the two queue
//! notifications; each request chain goes through the FUSE server.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{ByteValued, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::share::ShareFs;
use crate::virtio::Interrupt;

const KILL_TOKEN: u64 = 0;
/// Queue `i` has token `QUEUE_TOKEN_BASE + i`.
const QUEUE_TOKEN_BASE: u64 = 1;

/// Guest mistakes logged at `warn` before they drop to `debug`.
const LOUD_GUEST_ERRORS: u64 = 16;

/// The FUSE server of one share.
pub(super) type FsServer = Server<Arc<ShareFs>>;

pub(super) struct Worker {
    tag: String,
    mem: GuestMemoryMmap,
    /// hiprio, then the request queue.
    queues: [Queue; 2],
    evts: [EventFd; 2],
    kill: EventFd,
    epoll: Epoll,
    interrupt: Interrupt,
    server: Arc<FsServer>,
    /// A queue stopped at its budget; come back without sleeping.
    more: [bool; 2],
    guest_errors: u64,
    /// Requests served, and the time spent serving them (logged when the
    /// worker stops: it tells the host's share of a workload's time).
    requests: u64,
    busy: Duration,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub fn new(
        tag: String,
        mem: GuestMemoryMmap,
        queues: [Queue; 2],
        evts: [EventFd; 2],
        kill: EventFd,
        interrupt: Interrupt,
        server: Arc<FsServer>,
    ) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            kill.as_raw_fd(),
            EpollEvent::new(EventSet::IN, KILL_TOKEN),
        )?;
        for (i, evt) in evts.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                evt.as_raw_fd(),
                EpollEvent::new(EventSet::IN, QUEUE_TOKEN_BASE + i as u64),
            )?;
        }
        Ok(Self {
            tag,
            mem,
            queues,
            evts,
            kill,
            epoll,
            interrupt,
            server,
            // Requests may have been queued before the driver notified us.
            more: [true; 2],
            guest_errors: 0,
            requests: 0,
            busy: Duration::ZERO,
        })
    }

    /// Runs until the kill eventfd is written. The thread must be jailed
    /// first ([`super::jail`]): that also gives it its own umask, which the
    /// passthrough sets to 0 at INIT.
    pub fn run(mut self) {
        loop {
            match self.step(None) {
                Ok(true) => {}
                Ok(false) => {
                    log::info!(
                        "virtio-fs {}: served {} requests in {:.3} s of host time",
                        self.tag,
                        self.requests,
                        self.busy.as_secs_f64()
                    );
                    return;
                }
                Err(e) => {
                    log::error!(
                        "virtio-fs {}: worker failed, the device stops: {e}",
                        self.tag
                    );
                    return;
                }
            }
        }
    }

    /// Waits for notifications (at most `max_wait`, if given) and serves the
    /// queues. Returns `Ok(false)` when asked to stop.
    pub fn step(&mut self, max_wait: Option<Duration>) -> std::io::Result<bool> {
        let timeout_ms = if self.more.iter().any(|&m| m) {
            0
        } else {
            match max_wait {
                Some(w) => w.as_millis().min(i32::MAX as u128) as i32,
                None => -1,
            }
        };
        let mut events = [EpollEvent::default(); 4];
        let n = match self.epoll.wait(timeout_ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        for ev in &events[..n] {
            match ev.data() {
                KILL_TOKEN => {
                    let _ = self.kill.read();
                    return Ok(false);
                }
                t if (QUEUE_TOKEN_BASE..QUEUE_TOKEN_BASE + 2).contains(&t) => {
                    let i = (t - QUEUE_TOKEN_BASE) as usize;
                    let _ = self.evts[i].read();
                    self.more[i] = true;
                }
                t => log::debug!("virtio-fs {}: unknown epoll token {t}", self.tag),
            }
        }
        let mut used = false;
        for i in 0..2 {
            if self.more[i] {
                used |= self.process_queue(i);
            }
        }
        if used && let Err(e) = self.interrupt.signal_used_queue() {
            log::error!("virtio-fs {}: cannot interrupt the guest: {e}", self.tag);
        }
        Ok(true)
    }

    /// Serves up to a queue's worth of requests from queue `i`; sets
    /// `more[i]` if it stopped at that budget. Returns whether it put
    /// anything in the used ring.
    pub fn process_queue(&mut self, i: usize) -> bool {
        let mut used = false;
        let budget = self.queues[i].size();
        self.more[i] = false;
        for _ in 0..budget {
            let Some(chain) = self.queues[i].pop_descriptor_chain(&self.mem) else {
                return used;
            };
            let head = chain.head_index();
            let t = std::time::Instant::now();
            let (len, err) = serve(&self.server, &self.mem, chain);
            self.busy += t.elapsed();
            self.requests += 1;
            if let Some(e) = err {
                guest_error(&self.tag, &mut self.guest_errors, e);
            }
            if let Err(e) = self.queues[i].add_used(&self.mem, head, len) {
                guest_error(
                    &self.tag,
                    &mut self.guest_errors,
                    format!("cannot return descriptor {head}: {e}"),
                );
            }
            used = true;
        }
        self.more[i] = true;
        used
    }
}

/// Runs one FUSE request from `chain` through `server`. Returns the number
/// of bytes written into the chain's device-writable buffers (the reply),
/// and what went wrong, if anything.
///
/// When the server gives up on a request (it cannot decode it, or writing
/// the reply failed) the guest still gets a reply if the request had a
/// readable header and room for one: an error with the request's `unique`,
/// so its driver does not wait for an answer that never comes.
pub(super) fn serve(
    server: &FsServer,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> (u32, Option<String>) {
    let fallback = chain.clone();
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(r) => r,
        Err(e) => return (0, Some(format!("unusable request buffers: {e}"))),
    };
    let writer = match VirtioFsWriter::new(mem, chain) {
        Ok(w) => w,
        Err(e) => return (0, Some(format!("unusable reply buffers: {e}"))),
    };
    // fuse-backend-rs parses guest-controlled input; a bug there must cost
    // the guest one request, not the VMM.
    let (errno, what) = match catch_unwind(AssertUnwindSafe(|| {
        server.handle_message(reader, writer.into(), None, None)
    })) {
        Ok(Ok(n)) => return (u32::try_from(n).unwrap_or(u32::MAX), None),
        Ok(Err(e)) => (libc::EINVAL, format!("bad request: {e}")),
        Err(_) => {
            CAUGHT_PANICS.fetch_add(1, Ordering::Relaxed);
            (
                libc::EIO,
                "the FUSE server panicked on a request".to_string(),
            )
        }
    };
    (reply_error(mem, fallback, errno), Some(what))
}

/// Panics caught in the FUSE server, process-wide.
static CAUGHT_PANICS: AtomicU64 = AtomicU64::new(0);

/// How many requests made the FUSE server panic (each cost only that
/// request), since the process started.
#[cfg(test)]
pub(super) fn caught_panics() -> u64 {
    CAUGHT_PANICS.load(Ordering::Relaxed)
}

/// Writes an error reply for the request in `chain`, if it has a header
/// and the request expects a reply. Returns the bytes written.
fn reply_error(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>, errno: i32) -> u32 {
    let Ok(mut reader) = Reader::from_descriptor_chain(mem, chain.clone()) else {
        return 0;
    };
    let Ok(h) = reader.read_obj::<InHeader>() else {
        return 0;
    };
    if h.opcode == Opcode::Forget as u32 || h.opcode == Opcode::BatchForget as u32 {
        return 0;
    }
    let Ok(mut writer) = VirtioFsWriter::new(mem, chain) else {
        return 0;
    };
    let out = OutHeader {
        len: std::mem::size_of::<OutHeader>() as u32,
        error: -errno,
        unique: h.unique,
    };
    match writer.write_all(out.as_slice()) {
        Ok(()) => out.len,
        Err(_) => 0,
    }
}

/// Logs a guest mistake: loudly for the first few, quietly after that, so a
/// hostile guest cannot flood the host's log.
fn guest_error(tag: &str, count: &mut u64, what: String) {
    *count += 1;
    if *count <= LOUD_GUEST_ERRORS {
        log::warn!("virtio-fs {tag}: {what}");
    } else {
        log::debug!("virtio-fs {tag}: {what}");
    }
}
