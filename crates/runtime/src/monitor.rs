//! The monitor: one process per running container, in the spirit of conmon
//! and containerd-shim. It owns the container's VM (the VMM runs in it, so
//! if the monitor dies the VM dies with it), outlives the command that
//! started it, writes the container's output to its json-file log, serves
//! the control socket ([`crate::control`]), carries out the restart policy
//! and records the exit status in `state.json`.
//!
//! [`run`] is its whole life; the `husk` binary calls it from a hidden
//! subcommand that [`crate::engine::Engine::start`] spawns.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use husk_protocol::{ExitStatus, RunSpec, TermSize};

use crate::container::{Container, ContainerStore, RunGuard, Status};
use crate::control::{CtlEvent, CtlRequest, Peer, PeerWriter};
use crate::logs::{LogWriter, Stream};
use crate::{Control, RuntimeError, Sandbox, SandboxConfig, Stdio};

/// How long a monitor started for a foreground `run` waits for its client
/// to attach before it runs the main process anyway.
const ATTACH_WAIT: Duration = Duration::from_secs(60);

/// Where the main process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The VM is booting.
    Booting,
    /// The main process runs.
    Running,
    /// The main process exited (code); a restart may follow.
    Exited(Option<i32>),
    /// The monitor is about to exit.
    Done,
}

/// What the monitor's threads share.
struct Mon {
    name: String,
    config: crate::container::ContainerConfig,
    guard: Mutex<Option<RunGuard>>,
    phase: Mutex<Phase>,
    changed: Condvar,
    /// Attached clients (output goes to each).
    clients: Mutex<Vec<PeerWriter>>,
    attached: AtomicBool,
    /// The current run's main-process stdin and control channel.
    stdin: Mutex<Option<Sender<Option<Vec<u8>>>>>,
    control: Mutex<Option<Sender<Control>>>,
    sandbox: Mutex<Option<Arc<Sandbox>>>,
    cancel: Arc<AtomicBool>,
    /// The user stopped it: no restart.
    stopped: AtomicBool,
    /// Clients waiting for the end, and what to tell them.
    waiters: Mutex<Vec<(PeerWriter, bool)>>,
    log: Mutex<LogWriter>,
    /// Started for an OCI engine: the main process runs on
    /// [`CtlRequest::Start`], with `oci_stdio`.
    oci: bool,
    start_requested: AtomicBool,
    oci_stdio: Mutex<Option<crate::oci::OciStdio>>,
}

impl Mon {
    fn set_phase(&self, p: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = p;
        self.changed.notify_all();
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut crate::container::State)) {
        if let Some(g) = self
            .guard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            && let Err(e) = g.update(f)
        {
            log::warn!("cannot record the container's state: {e}");
        }
    }

    fn broadcast(&self, ev: &CtlEvent) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c| c.send(ev));
    }

    fn not_running(&self) -> CtlEvent {
        CtlEvent::Error {
            message: format!("Container {} is not running", self.name),
            code: None,
        }
    }

    fn current(&self) -> Option<Arc<Sandbox>> {
        self.sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn send_control(&self, c: Control) -> bool {
        self.control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|tx| tx.send(c).is_ok())
    }

    /// Waits until the main process is no longer running, at most `d`.
    fn wait_not_running(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        while matches!(*p, Phase::Running) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            p = self
                .changed
                .wait_timeout(p, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// Output of the main process: to the log and every attached client.
struct Out {
    mon: Arc<Mon>,
    stream: Stream,
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Err(e) = self
            .mon
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(self.stream, buf)
        {
            log::warn!("{e}");
        }
        let data = buf.to_vec();
        self.mon.broadcast(&match self.stream {
            Stream::Stdout => CtlEvent::Stdout { data },
            Stream::Stderr => CtlEvent::Stderr { data },
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads what a channel delivers; `None` (or the sender gone) is the end.
struct ChannelReader {
    rx: Receiver<Option<Vec<u8>>>,
    pending: Vec<u8>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pending.is_empty() {
            match self.rx.recv() {
                Ok(Some(d)) => self.pending = d,
                _ => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

/// A writer that sends each chunk to one client as an event.
struct ToClient {
    peer: PeerWriter,
    stderr: bool,
}

impl Write for ToClient {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let data = buf.to_vec();
        let ev = if self.stderr {
            CtlEvent::Stderr { data }
        } else {
            CtlEvent::Stdout { data }
        };
        if self.peer.send(&ev) {
            Ok(buf.len())
        } else {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Docker's exit code for a process that could not start.
fn start_failure_code(msg: &str) -> i32 {
    if msg.contains("No such file") || msg.contains("not found") {
        127
    } else {
        126
    }
}

/// Runs the monitor of container `id` in the store at `root` until the
/// container stops for good; returns the process's exit code. With
/// `attach_first`, the main process starts only once a client has attached
/// (a foreground `husk run`), so none of its output is missed.
pub fn run(root: &Path, id: &str, attach_first: bool) -> i32 {
    // Out of the starting command's session and terminal.
    let _ = rustix::process::setsid();
    match monitor(root, id, attach_first, None) {
        Ok(code) => code,
        Err(e) => {
            log::error!("monitor of {id}: {e}");
            1
        }
    }
}

/// The monitor of a container created from an OCI bundle (`husk oci
/// create` spawned it): it takes over the stdio it inherited (the
/// container's, see [`crate::oci::OciStdio::take`]) before anything can
/// write to them, joins the spec's network namespace, boots the VM, runs
/// the main process on `start` and exits with its status.
pub fn run_oci(root: &Path, id: &str) -> i32 {
    let stdio = match crate::oci::OciStdio::take(root, id) {
        Ok(s) => s,
        Err(e) => {
            log::error!("monitor of {id}: {e}");
            return 1;
        }
    };
    let _ = rustix::process::setsid();
    match monitor(root, id, false, Some(stdio)) {
        Ok(code) => code,
        Err(e) => {
            log::error!("monitor of {id}: {e}");
            1
        }
    }
}

fn monitor(
    root: &Path,
    id: &str,
    attach_first: bool,
    oci_stdio: Option<crate::oci::OciStdio>,
) -> Result<i32, crate::engine::EngineError> {
    use crate::engine::EngineError;
    let containers = ContainerStore::open(root)?;
    let images = husk_image::Store::open(root).map_err(EngineError::Store)?;
    let mut container = containers.find(id)?;
    let guard = container.begin()?;
    let dir = container.dir().to_owned();
    let (sock_path, _dir_handle) = crate::control::socket_path(&dir, crate::control::SOCKET)
        .map_err(|e| EngineError::Monitor(format!("cannot open {}: {e}", dir.display())))?;
    let _ = std::fs::remove_file(dir.join(crate::control::SOCKET));
    let listener = UnixListener::bind(&sock_path)
        .map_err(|e| EngineError::Monitor(format!("cannot listen on {sock_path:?}: {e}")))?;
    let _ = std::fs::set_permissions(
        dir.join(crate::control::SOCKET),
        std::fs::Permissions::from_mode(0o600),
    );
    let log = LogWriter::open(&container.log_path(), container.config.log)?;
    let mon = Arc::new(Mon {
        name: container.name.clone(),
        config: container.config.clone(),
        guard: Mutex::new(Some(guard)),
        phase: Mutex::new(Phase::Booting),
        changed: Condvar::new(),
        clients: Mutex::new(Vec::new()),
        attached: AtomicBool::new(false),
        stdin: Mutex::new(None),
        control: Mutex::new(None),
        sandbox: Mutex::new(None),
        cancel: Arc::new(AtomicBool::new(false)),
        stopped: AtomicBool::new(false),
        waiters: Mutex::new(Vec::new()),
        log: Mutex::new(log),
        oci: oci_stdio.is_some(),
        start_requested: AtomicBool::new(false),
        oci_stdio: Mutex::new(oci_stdio),
    });
    {
        let mon = mon.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let mon = mon.clone();
                    std::thread::spawn(move || {
                        if let Ok(peer) = Peer::new(conn) {
                            serve(&mon, peer);
                        }
                    });
                }
            })
            .map_err(|e| EngineError::Monitor(format!("cannot start a thread: {e}")))?;
    }

    let mut restarts = 0u32;
    let mut first = true;
    let code = loop {
        let code = run_once(&mon, &images, &mut container, attach_first && first);
        first = false;
        mon.set_phase(Phase::Exited(code));
        let again = !mon.cancel.load(Ordering::SeqCst)
            && code.is_some()
            && container.config.restart.restarts(
                code.unwrap_or(0),
                restarts,
                mon.stopped.load(Ordering::SeqCst),
            );
        if !again {
            break code;
        }
        // Docker's back-off: 100 ms, doubling, at most a minute.
        restarts += 1;
        mon.update(|s| {
            s.status = Status::Restarting;
            s.exit_code = code;
            s.restart_count = restarts;
            s.main_started = false;
            s.finished_at = Some(now());
        });
        let delay = Duration::from_millis(100u64 << restarts.min(9)).min(Duration::from_secs(60));
        let until = Instant::now() + delay;
        while Instant::now() < until && !mon.stopped.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if mon.stopped.load(Ordering::SeqCst) {
            break code;
        }
        mon.update(|s| {
            s.status = Status::Running;
            s.started_at = Some(now());
        });
    };

    // The end: record it, answer the waiters, tell attached clients.
    let _ = mon
        .log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .flush_partial();
    if let Some(g) = mon.guard.lock().unwrap_or_else(|e| e.into_inner()).take()
        && let Err(e) = g.finish(code)
    {
        log::warn!("cannot record the container's exit: {e}");
    }
    mon.set_phase(Phase::Done);
    let _ = std::fs::remove_file(dir.join(crate::control::SOCKET));
    let _ = std::fs::remove_dir_all(container.sandbox_dir());
    if container.config.auto_remove {
        match containers.find(&container.id) {
            Ok(c) => {
                if let Err(e) = containers.remove(&c, false) {
                    log::warn!("cannot remove container {}: {e}", c.name);
                }
            }
            Err(e) => log::warn!("cannot remove container {}: {e}", container.name),
        }
    }
    let exit = CtlEvent::Exited {
        code: code.unwrap_or(255),
    };
    for (w, wants_exit) in mon
        .waiters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
    {
        w.send(if wants_exit { &exit } else { &CtlEvent::Ok });
        w.close();
    }
    for c in mon
        .clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
    {
        c.send(&exit);
        c.close();
    }
    Ok(code.unwrap_or(255))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One boot and one run of the main process; its exit code (`None`: it
/// never ran, or husk failed).
fn run_once(
    mon: &Arc<Mon>,
    images: &husk_image::Store,
    container: &mut Container,
    attach_first: bool,
) -> Option<i32> {
    mon.set_phase(Phase::Booting);
    if mon.oci {
        // An engine finishes the container's network namespace between
        // create and start (Docker 20.10 in its prestart hook, which runs
        // once this monitor is up; newer Docker and CNI after create): the
        // VM boots at start, with the namespace's network as it is then.
        while !mon.start_requested.load(Ordering::SeqCst) && !mon.cancel.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if mon.cancel.load(Ordering::SeqCst) {
            return cancelled_code();
        }
    }
    let fail = |msg: String| {
        log::error!("{msg}");
        mon.update(|s| s.error = Some(msg.clone()));
        mon.broadcast(&CtlEvent::Error {
            message: msg,
            code: None,
        });
        None
    };
    // The image's rootfs, leased while the VM runs.
    let _lease = match &container.config.image_id {
        Some(image_id) => {
            let image = match images.resolve(image_id) {
                Ok(i) => i,
                Err(e) => {
                    return fail(format!(
                        "the image of container {} ({image_id}) is no longer in the store: {e}",
                        container.name
                    ));
                }
            };
            match images.rootfs(&image, husk_image::UnpackLimits::default()) {
                Ok(r) => {
                    container.config.rootfs = r.path.clone();
                    Some(r)
                }
                Err(e) => return fail(format!("cannot unpack the image: {e}")),
            }
        }
        None => None,
    };
    let sandbox_dir = container.sandbox_dir();
    let _ = std::fs::remove_dir_all(&sandbox_dir);
    if let Err(e) = std::fs::create_dir(&sandbox_dir) {
        return fail(format!("cannot create {}: {e}", sandbox_dir.display()));
    }
    // Socket paths are short whatever the store's path: through an open
    // handle of the directory.
    let (dir_path, _handle) = match crate::control::socket_path(&sandbox_dir, "vsock.sock") {
        // Through the handle: `/proc/self/fd/N/vsock.sock` → `/proc/self/fd/N`.
        Ok((p, Some(h))) => (p.parent().map(Path::to_path_buf).unwrap_or(p), Some(h)),
        Ok((_, None)) => (sandbox_dir.clone(), None),
        Err(e) => return fail(format!("cannot open {}: {e}", sandbox_dir.display())),
    };
    // The network: passt, or a TAP on a user-defined network's bridge,
    // and the container's /etc/hosts and /etc/resolv.conf. It ends with
    // this run.
    let attachment =
        match crate::net::attach::attach(images.root(), container, &dir_path.join("vsock.sock")) {
            Ok(a) => a,
            Err(e) => return fail(format!("cannot set up the network: {}", error_chain(&e))),
        };
    if let Some(pid) = attachment.passt_pid() {
        log::info!("network: passt (pid {pid})");
    }
    let cfg = &container.config;
    // A user's own -v onto /etc/hosts or /etc/resolv.conf wins.
    let mut volumes = cfg.volumes.clone();
    volumes.extend(
        attachment
            .volumes
            .iter()
            .filter(|v| !cfg.volumes.iter().any(|u| u.guest == v.guest))
            .cloned(),
    );
    let config = SandboxConfig {
        kernel: cfg.vm.kernel.clone(),
        agent: cfg.vm.agent.clone(),
        rootfs: Some(cfg.rootfs.clone()),
        rootfs_via: cfg.rootfs_via,
        volumes,
        upper: (cfg.rootfs_via == crate::RootfsVia::VirtioFs).then(|| container.rw_dir()),
        tmpfs: cfg.tmpfs.clone(),
        mem_size: cfg.mem_size,
        vcpus: cfg.vcpus,
        dir: dir_path,
        console_log: Some(container.console_log_path()),
        boot_timeout: Duration::from_secs(cfg.vm.boot_timeout_s.max(1)),
        cmdline_extra: std::iter::once(cfg.vm.kernel_args.as_str())
            .chain(attachment.kernel_args.iter().map(String::as_str))
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
        console_to_stderr: cfg.vm.console,
        cancel: Some(mon.cancel.clone()),
        hostname: Some(container.hostname()),
        net: attachment.sandbox.clone(),
    };
    let sandbox = match Sandbox::start(&config) {
        Ok(s) => Arc::new(s),
        Err(RuntimeError::Cancelled) => return cancelled_code(),
        Err(e) => return fail(error_chain(&e)),
    };
    log::info!("agent ready after {:.3} s", sandbox.boot_time.as_secs_f64());
    if let Some(net) = &attachment.state {
        let net = net.clone();
        mon.update(|s| s.network = Some(net));
    }
    *mon.sandbox.lock().unwrap_or_else(|e| e.into_inner()) = Some(sandbox.clone());
    if attach_first {
        let until = Instant::now() + ATTACH_WAIT;
        while !mon.attached.load(Ordering::SeqCst)
            && Instant::now() < until
            && !mon.cancel.load(Ordering::SeqCst)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if mon.oci {
        // OCI `start` runs the main process, whenever it comes.
        while !mon.start_requested.load(Ordering::SeqCst) && !mon.cancel.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if mon.cancel.load(Ordering::SeqCst) {
        *mon.sandbox.lock().unwrap_or_else(|e| e.into_inner()) = None;
        return cancelled_code();
    }
    // The main process, its stdin from attached clients, its output to
    // the log and them.
    let (ctl_tx, ctl_rx) = mpsc::channel();
    *mon.control.lock().unwrap_or_else(|e| e.into_inner()) = Some(ctl_tx);
    let stdin: Option<Box<dyn Read + Send>> = if cfg.open_stdin {
        let (tx, rx) = mpsc::channel();
        *mon.stdin.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        Some(Box::new(ChannelReader {
            rx,
            pending: Vec::new(),
        }))
    } else {
        None
    };
    let oci_stdio = mon
        .oci_stdio
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let stdio = match oci_stdio {
        // The engine's fds (or the console's pty) are the container's.
        Some(o) => {
            if let Some(resizes) = o.resizes() {
                let mon = mon.clone();
                std::thread::spawn(move || {
                    resizes.watch(
                        &|| matches!(mon.phase(), Phase::Booting | Phase::Running),
                        &mut |sz| {
                            mon.send_control(Control::Resize(sz));
                        },
                    )
                });
            }
            o.into_stdio()
        }
        None => Stdio {
            stdin,
            stdout: Box::new(Out {
                mon: mon.clone(),
                stream: Stream::Stdout,
            }),
            stderr: Box::new(Out {
                mon: mon.clone(),
                stream: Stream::Stderr,
            }),
        },
    };
    let started = {
        let mon = mon.clone();
        move |pid: u32| {
            log::info!("main process started (guest pid {pid})");
            mon.update(|s| {
                s.main_started = true;
                s.error = None;
            });
            mon.set_phase(Phase::Running);
            mon.broadcast(&CtlEvent::Started);
        }
    };
    let spec = cfg.spec.clone().main();
    let result = sandbox.exec_notify(spec, stdio, Some(ctl_rx), started);
    *mon.control.lock().unwrap_or_else(|e| e.into_inner()) = None;
    *mon.stdin.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let code = match result {
        Ok((status, _)) => Some(status.shell_code()),
        Err(RuntimeError::Start(msg)) => {
            let code = start_failure_code(&msg);
            let msg = format!("cannot start the container process: {msg}");
            mon.update(|s| s.error = Some(msg.clone()));
            mon.broadcast(&CtlEvent::Error {
                message: msg,
                code: Some(code),
            });
            Some(code)
        }
        Err(e) => {
            let _ = fail(error_chain(&e));
            None
        }
    };
    mon.update(|s| {
        s.exit_code = code;
        s.main_started = false;
    });
    *mon.sandbox.lock().unwrap_or_else(|e| e.into_inner()) = None;
    // The agent powers the VM off after the main process; wait for that.
    match Arc::try_unwrap(sandbox) {
        Ok(sb) => {
            if let Err(e) = sb.wait(Duration::from_secs(30)) {
                log::warn!("the VM stopped with an error: {}", error_chain(&e));
            }
        }
        Err(sb) => {
            // Someone (a stats or exec thread) still holds it: stop it now.
            drop(sb);
        }
    }
    code
}

/// The code of a container whose start was given up (a kill or stop
/// during boot): 128 + SIGKILL, as Docker reports a killed container.
use crate::oci::error_chain;

fn cancelled_code() -> Option<i32> {
    Some(ExitStatus::Signal(9).shell_code())
}

/// Host-side resource use of this process (which holds the VM).
fn host_usage() -> (u64, u64) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 (index 11 and 12 after the name).
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .map_or(0, |ticks| ticks * 10_000_000);
    (rss, cpu)
}

/// One control connection.
fn serve(mon: &Arc<Mon>, mut peer: Peer) {
    let Ok(Some(first)) = peer.reader.recv::<CtlRequest>() else {
        return;
    };
    let w = peer.writer.clone();
    match first {
        CtlRequest::Ping => {
            w.send(&CtlEvent::Ok);
        }
        CtlRequest::Start => {
            let ev = match mon.phase() {
                Phase::Booting if mon.oci => {
                    mon.start_requested.store(true, Ordering::SeqCst);
                    CtlEvent::Ok
                }
                Phase::Booting | Phase::Running => CtlEvent::Error {
                    message: format!("container {} is not waiting to be started", mon.name),
                    code: None,
                },
                _ => mon.not_running(),
            };
            w.send(&ev);
        }
        CtlRequest::Attach { stdin } => attach(mon, peer, stdin),
        CtlRequest::Exec { spec, detach } => exec(mon, peer, spec, detach),
        CtlRequest::Signal { signo } => {
            let ev = match mon.phase() {
                Phase::Running => {
                    if signo == 9 {
                        mon.stopped.store(true, Ordering::SeqCst);
                    }
                    if mon.send_control(Control::Signal(signo)) {
                        CtlEvent::Ok
                    } else {
                        mon.not_running()
                    }
                }
                Phase::Booting => {
                    // Killed before its process started: give up the boot.
                    mon.stopped.store(true, Ordering::SeqCst);
                    mon.cancel.store(true, Ordering::SeqCst);
                    CtlEvent::Ok
                }
                _ => mon.not_running(),
            };
            w.send(&ev);
        }
        CtlRequest::Stop { signo, timeout_s } => {
            mon.stopped.store(true, Ordering::SeqCst);
            match mon.phase() {
                Phase::Booting => mon.cancel.store(true, Ordering::SeqCst),
                Phase::Running => {
                    if let Some(sb) = mon.current() {
                        let _ = sb.resume();
                    }
                    mon.send_control(Control::Signal(signo));
                    if !mon.wait_not_running(Duration::from_secs(timeout_s)) {
                        log::info!("stop: no exit after {timeout_s} s; SIGKILL");
                        mon.send_control(Control::Signal(9));
                        if !mon.wait_not_running(Duration::from_secs(10)) {
                            log::warn!("stop: the guest does not answer; stopping the VM");
                            if let Some(sb) = mon.current() {
                                sb.stop_vm();
                            }
                        }
                    }
                }
                _ => {}
            }
            // Answered when the monitor is done.
            mon.waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((w, false));
        }
        CtlRequest::Wait => mon
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((w, true)),
        CtlRequest::Pause | CtlRequest::Resume => {
            let pause = first == CtlRequest::Pause;
            let ev = match (mon.phase(), mon.current()) {
                (Phase::Running, Some(sb)) => {
                    let r = if pause { sb.pause() } else { sb.resume() };
                    match r {
                        Ok(()) => {
                            mon.update(|s| {
                                s.status = if pause {
                                    Status::Paused
                                } else {
                                    Status::Running
                                }
                            });
                            CtlEvent::Ok
                        }
                        Err(e) => CtlEvent::Error {
                            message: error_chain(&e),
                            code: None,
                        },
                    }
                }
                _ => mon.not_running(),
            };
            w.send(&ev);
        }
        CtlRequest::Stats => {
            let (host_rss, host_cpu_ns) = host_usage();
            let paused = mon
                .guard
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_some_and(|g| g.state().status == Status::Paused);
            let guest = match (mon.phase(), mon.current()) {
                (Phase::Running, Some(sb)) if !paused => sb.stats().ok(),
                _ => None,
            };
            w.send(&CtlEvent::Stats(crate::control::MonitorStats {
                host_rss,
                host_cpu_ns,
                mem_limit: mon.config.mem_size,
                vcpus: mon.config.vcpus,
                guest,
            }));
        }
        CtlRequest::Top => {
            let ev = match (mon.phase(), mon.current()) {
                (Phase::Running, Some(sb)) => match sb.top() {
                    Ok((titles, processes)) => CtlEvent::Top { titles, processes },
                    Err(e) => CtlEvent::Error {
                        message: error_chain(&e),
                        code: None,
                    },
                },
                _ => mon.not_running(),
            };
            w.send(&ev);
        }
        CtlRequest::Resize { rows, cols } => {
            mon.send_control(Control::Resize(TermSize { rows, cols }));
            w.send(&CtlEvent::Ok);
        }
        CtlRequest::Stdin { .. } | CtlRequest::CloseStdin => {
            w.send(&CtlEvent::Error {
                message: "not in a session".into(),
                code: None,
            });
        }
    }
}

/// An attach session: output from now on; stdin, resizes and signals in.
fn attach(mon: &Arc<Mon>, mut peer: Peer, stdin: bool) {
    if matches!(mon.phase(), Phase::Done) {
        peer.writer.send(&mon.not_running());
        return;
    }
    mon.clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(peer.writer.clone());
    if matches!(mon.phase(), Phase::Running) {
        peer.writer.send(&CtlEvent::Started);
    }
    mon.attached.store(true, Ordering::SeqCst);
    loop {
        match peer.reader.recv::<CtlRequest>() {
            Ok(Some(CtlRequest::Stdin { data })) if stdin => {
                if let Some(tx) = mon.stdin.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    let _ = tx.send(Some(data));
                }
            }
            Ok(Some(CtlRequest::CloseStdin)) if stdin => {
                if let Some(tx) = mon.stdin.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    let _ = tx.send(None);
                }
            }
            Ok(Some(CtlRequest::Resize { rows, cols })) => {
                mon.send_control(Control::Resize(TermSize { rows, cols }));
            }
            Ok(Some(CtlRequest::Signal { signo })) => match mon.phase() {
                Phase::Running => {
                    mon.send_control(Control::Signal(signo));
                }
                Phase::Booting => {
                    // Ctrl-C before the process started: give up.
                    mon.stopped.store(true, Ordering::SeqCst);
                    mon.cancel.store(true, Ordering::SeqCst);
                }
                _ => {}
            },
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    // Detached (or gone): stop sending to it.
    let me = peer.writer;
    me.close();
}

/// An exec session (or a detached exec).
fn exec(mon: &Arc<Mon>, mut peer: Peer, mut spec: RunSpec, detach: bool) {
    let w = peer.writer.clone();
    let paused = mon
        .guard
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|g| g.state().status == Status::Paused);
    let sandbox = match (mon.phase(), mon.current()) {
        (Phase::Running, Some(sb)) if !paused => sb,
        (Phase::Running, Some(_)) => {
            w.send(&CtlEvent::Error {
                message: format!(
                    "Container {} is paused, unpause the container before exec",
                    mon.name
                ),
                code: None,
            });
            return;
        }
        _ => {
            w.send(&mon.not_running());
            return;
        }
    };
    spec.main = false;
    let (ctl_tx, ctl_rx) = mpsc::channel();
    let (in_tx, in_rx) = mpsc::channel();
    let done = Arc::new(AtomicBool::new(false));
    let stdio = if detach {
        Stdio {
            stdin: None,
            stdout: Box::new(std::io::sink()),
            stderr: Box::new(std::io::sink()),
        }
    } else {
        Stdio {
            stdin: Some(Box::new(ChannelReader {
                rx: in_rx,
                pending: Vec::new(),
            })),
            stdout: Box::new(ToClient {
                peer: w.clone(),
                stderr: false,
            }),
            stderr: Box::new(ToClient {
                peer: w.clone(),
                stderr: true,
            }),
        }
    };
    let runner = {
        let w = w.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let started = {
                let w = w.clone();
                move |_pid: u32| {
                    w.send(&if detach {
                        CtlEvent::Ok
                    } else {
                        CtlEvent::Started
                    });
                }
            };
            let r = sandbox.exec_notify(spec, stdio, Some(ctl_rx), started);
            done.store(true, Ordering::SeqCst);
            match r {
                Ok((st, _)) => {
                    if !detach {
                        w.send(&CtlEvent::Exited {
                            code: st.shell_code(),
                        });
                    }
                }
                Err(RuntimeError::Start(msg)) => {
                    w.send(&CtlEvent::Error {
                        code: Some(start_failure_code(&msg)),
                        message: msg,
                    });
                }
                Err(e) => {
                    w.send(&CtlEvent::Error {
                        message: error_chain(&e),
                        code: None,
                    });
                }
            }
            w.close();
        })
    };
    if detach {
        // The runner thread lives as long as the process; nothing waits.
        drop((in_tx, runner));
        return;
    }
    loop {
        match peer.reader.recv::<CtlRequest>() {
            Ok(Some(CtlRequest::Stdin { data })) => {
                let _ = in_tx.send(Some(data));
            }
            Ok(Some(CtlRequest::CloseStdin)) => {
                let _ = in_tx.send(None);
            }
            Ok(Some(CtlRequest::Resize { rows, cols })) => {
                let _ = ctl_tx.send(Control::Resize(TermSize { rows, cols }));
            }
            Ok(Some(CtlRequest::Signal { signo })) => {
                let _ = ctl_tx.send(Control::Signal(signo));
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    // The client is gone: its process goes too (an exec lives as long as
    // the command that started it).
    if !done.load(Ordering::SeqCst) {
        let _ = ctl_tx.send(Control::Signal(9));
    }
    let _ = in_tx.send(None);
    let _ = runner.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_reader_reads_chunks_then_eof() {
        let (tx, rx) = mpsc::channel();
        let mut r = ChannelReader {
            rx,
            pending: Vec::new(),
        };
        tx.send(Some(b"hello".to_vec())).unwrap();
        tx.send(None).unwrap();
        let mut buf = [0u8; 3];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf, b"hel");
        assert_eq!(r.read(&mut buf).unwrap(), 2);
        assert_eq!(r.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn host_usage_is_nonzero() {
        let (rss, _) = host_usage();
        assert!(rss > 0);
    }

    #[test]
    fn start_failures_get_dockers_codes() {
        assert_eq!(
            start_failure_code("cannot start nope: No such file or directory"),
            127
        );
        assert_eq!(
            start_failure_code("cannot start /etc: Permission denied"),
            126
        );
    }
}
