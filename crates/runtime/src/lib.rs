//! The sandbox: one microVM running husk's guest agent, and the processes it
//! runs for the host.
//!
//! [`Sandbox::start`] packs the agent (as `/init`) into an initramfs, shares
//! the container's root directory read-only over virtio-fs (or packs it into
//! the initramfs), shares the volumes, boots the VM on a thread with a vsock
//! device whose host side is a Unix socket in the sandbox's directory, and
//! waits for the agent to answer. [`Sandbox::exec`] runs one process
//! over its own vsock connection, streaming stdio and forwarding signals,
//! and returns its exit status. The process marked [`RunSpec::main`] is the
//! container's main process: the agent powers the VM off when it has exited
//! and its connection is closed. [`run`] does all of it for `husk run`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod agent;
pub mod cgroup;
pub mod container;
pub mod control;
pub mod engine;
pub mod logs;
pub mod monitor;
pub mod net;
pub mod oci;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use husk_protocol::{Event, FrameReader, FrameWriter, MAX_DATA_CHUNK, Request};
pub use husk_protocol::{ExitStatus, GuestStats, RunSpec, TermSize};
use husk_vmm::{CompatMode, FsShare, Vm, VmConfig, VmOutcome, VmmError, VsockSpec};

/// Errors running a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Preparing the sandbox directory or initramfs failed.
    #[error("cannot prepare the sandbox in {path}")]
    Prepare {
        /// The directory or file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Packing the initramfs failed.
    #[error("cannot pack the guest's initramfs")]
    Initramfs(#[source] husk_initramfs::InitramfsError),
    /// The VM failed to boot or stopped with an error.
    #[error("the microVM failed")]
    Vm(#[source] VmmError),
    /// The VM stopped before the agent answered.
    #[error(
        "the microVM stopped before its agent answered; the last lines of the guest console:\n{tail}\n(the whole log is in {console})"
    )]
    VmStoppedEarly {
        /// Where the guest's console output went.
        console: String,
        /// The last lines of the guest console.
        tail: String,
    },
    /// A bad hostname in the configuration.
    #[error("invalid hostname {0:?}: use 1 to 63 characters of A-Z, a-z, 0-9, '-' and '.'")]
    Hostname(String),
    /// The agent answered a query with something else.
    #[error("unexpected answer from the guest agent: {0}")]
    Unexpected(String),
    /// The agent did not answer in time.
    #[error("the guest agent did not answer within {0:?}")]
    AgentTimeout(Duration),
    /// Reaching the agent failed.
    #[error("cannot reach the guest agent")]
    Connect(#[source] husk_protocol::hybrid::HybridError),
    /// The conversation with the agent failed.
    #[error("talking to the guest agent failed")]
    Protocol(#[source] husk_protocol::ProtocolError),
    /// The agent could not start the process.
    #[error("cannot start the container process: {0}")]
    Start(String),
    /// The connection ended without an exit status.
    #[error("the guest agent closed the connection before the process exited")]
    NoExitStatus,
    /// The boot was given up ([`SandboxConfig::cancel`]).
    #[error("the start was cancelled")]
    Cancelled,
}

/// How to build a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest agent binary (static), packed as `/init`.
    pub agent: PathBuf,
    /// The container's root directory.
    pub rootfs: Option<PathBuf>,
    /// How the root directory reaches the guest.
    pub rootfs_via: RootfsVia,
    /// Host directories and files shared into the container.
    pub volumes: Vec<Volume>,
    /// The container's writable layer on the host, used with
    /// [`RootfsVia::VirtioFs`]: shared read-write (tag `upper`), the guest's
    /// overlay keeps its upper and work directories in it, so the
    /// container's writes outlive the VM. `None`: the upper layer is guest
    /// memory and goes with the VM.
    pub upper: Option<PathBuf>,
    /// Paths in the container that get a fresh tmpfs (`--tmpfs`).
    pub tmpfs: Vec<String>,
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// A directory of its own for this sandbox (socket, initramfs, console log).
    pub dir: PathBuf,
    /// Where the guest console goes instead of `dir/console.log`: a file
    /// that outlives `dir` (a container keeps its last boot's console next
    /// to its monitor log, so an error can point at it after the monitor
    /// has cleaned up).
    pub console_log: Option<PathBuf>,
    /// How long to wait for the agent after starting the VM.
    pub boot_timeout: Duration,
    /// Extra kernel command-line arguments.
    pub cmdline_extra: String,
    /// Also copy the guest console to this process's stderr.
    pub console_to_stderr: bool,
    /// Set (by another thread) to give up booting: [`Sandbox::start`] stops
    /// the VM and returns [`RuntimeError::Cancelled`].
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// The container's hostname (`husk.hostname=NAME` for the agent, which
    /// sets it and writes /etc/hostname and /etc/hosts); `None`: none.
    pub hostname: Option<String>,
    /// The guest NIC and its backend (`None`: only `lo`).
    pub net: Option<SandboxNet>,
}

/// A sandbox's NIC: what the agent configures, and the host side of it.
#[derive(Debug, Clone)]
pub struct SandboxNet {
    /// Address, gateway, MAC, MTU.
    pub nic: net::GuestNic,
    /// The host side.
    pub backend: NetFd,
}

/// The host side of a sandbox's NIC (shared: the VMM gets a duplicate).
#[derive(Debug, Clone)]
pub enum NetFd {
    /// A socket to passt (its framing).
    Stream(std::sync::Arc<std::os::fd::OwnedFd>),
    /// A TAP (with virtio-net headers).
    Tap(std::sync::Arc<std::os::fd::OwnedFd>),
}

/// Checks a hostname: 1 to 63 characters of `[A-Za-z0-9-.]`.
pub fn check_hostname(name: &str) -> Result<(), RuntimeError> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Hostname(name.to_owned()))
    }
}

/// How the container's root directory reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsVia {
    /// A read-only virtio-fs share (tag `rootfs`), never changed; the
    /// container writes to an overlay whose upper layer is
    /// [`SandboxConfig::upper`] on the host, or guest memory.
    #[default]
    VirtioFs,
    /// Copied into the initramfs (slow to unpack where the guest kernel is
    /// emulated; kept for kernels without virtio-fs).
    Initramfs,
    /// The directory itself, shared over virtio-fs and mounted as the
    /// container's root without an overlay: an OCI bundle's `root.path`,
    /// which the engine (Docker's graph driver, containerd's snapshotter)
    /// made writable for this container. `read_only`: `root.readonly`.
    Bundle {
        /// Share and mount it read-only.
        read_only: bool,
    },
}

/// A host directory or file mounted into the container
/// (`-v HOST:GUEST[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Volume {
    /// The host directory or regular file (canonical).
    pub host: PathBuf,
    /// Where it appears in the container (absolute).
    pub guest: String,
    /// Refuse writes (enforced by the host's virtio-fs server).
    pub read_only: bool,
}

impl Volume {
    /// Parses Docker's `HOST:GUEST[:ro|rw]`.
    pub fn parse(spec: &str) -> Result<Volume, String> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (host, guest, mode) = match parts.as_slice() {
            [h, g] => (*h, *g, "rw"),
            [h, g, m] => (*h, *g, *m),
            _ => return Err(format!("invalid volume {spec:?}: expected HOST:GUEST[:ro]")),
        };
        let read_only = match mode {
            "ro" => true,
            "rw" => false,
            m => {
                return Err(format!(
                    "invalid volume mode {m:?} in {spec:?}: expected ro or rw"
                ));
            }
        };
        check_guest_path(guest).map_err(|e| format!("invalid volume {spec:?}: {e}"))?;
        let host =
            std::fs::canonicalize(host).map_err(|e| format!("volume {spec:?}: {host}: {e}"))?;
        if !host.is_dir() && !host.is_file() {
            return Err(format!(
                "volume {spec:?}: {} is neither a directory nor a regular file",
                host.display()
            ));
        }
        Ok(Volume {
            host,
            guest: guest.trim_end_matches('/').to_owned(),
            read_only,
        })
    }
}

/// Checks a path in the container that husk passes to the agent on the
/// kernel command line: absolute, not `/`, no `..`, no spaces or commas.
pub fn check_guest_path(guest: &str) -> Result<(), String> {
    if !guest.starts_with('/') || guest.trim_end_matches('/').is_empty() {
        return Err("the container path must be absolute and not /".into());
    }
    if guest.split('/').any(|c| c == "..") {
        return Err("the container path must not contain '..'".into());
    }
    if guest
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == ':')
    {
        return Err("the container path must not contain spaces, commas or colons".into());
    }
    Ok(())
}

/// Where a process's streams come from and go to.
pub struct Stdio {
    /// Its stdin (`None`: closed at once, as `docker run` without `-i`).
    pub stdin: Option<Box<dyn Read + Send>>,
    /// Its stdout (and its terminal, with a tty).
    pub stdout: Box<dyn Write + Send>,
    /// Its stderr.
    pub stderr: Box<dyn Write + Send>,
}

impl std::fmt::Debug for Stdio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stdio")
            .field("stdin", &self.stdin.is_some())
            .finish_non_exhaustive()
    }
}

/// What the host sends a running process besides stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Deliver this signal.
    Signal(i32),
    /// Its terminal changed size.
    Resize(TermSize),
}

/// What a process run measured.
#[derive(Debug, Clone, Copy)]
pub struct ExecTimes {
    /// From connecting to the agent to the first byte of output, if any.
    pub first_output: Option<Duration>,
    /// From connecting to the exit status.
    pub total: Duration,
}

/// A running microVM with its agent. It is `Send + Sync`: one thread may
/// run processes while another pauses the VM or lists its processes.
pub struct Sandbox {
    uds: PathBuf,
    console_log: PathBuf,
    vm: Option<Vm>,
    /// From starting the VM to the agent's first answer.
    pub boot_time: Duration,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("uds", &self.uds)
            .field("boot_time", &self.boot_time)
            .finish()
    }
}

fn prep(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Prepare {
        path: path.to_owned(),
        source,
    }
}

/// Copies the guest console to a log file and, optionally, stderr.
struct ConsoleSink {
    file: std::fs::File,
    tee: bool,
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write_all(buf)?;
        if self.tee {
            let _ = std::io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Builds the guest's initramfs: the agent as `/init`, the container root
/// under `/rootfs`.
pub fn build_initramfs(agent: &Path, rootfs: Option<&Path>) -> Result<Vec<u8>, RuntimeError> {
    let mut rd = husk_initramfs::Initramfs::new();
    rd.file_from("init", 0o755, agent)
        .map_err(RuntimeError::Initramfs)?;
    rd.char_dev("dev/console", 0o600, 5, 1)
        .map_err(RuntimeError::Initramfs)?;
    for d in ["proc", "sys", "tmp", "dev/pts", "dev/shm"] {
        rd.dir(d, 0o755).map_err(RuntimeError::Initramfs)?;
    }
    if let Some(root) = rootfs {
        rd.dir("rootfs", 0o755).map_err(RuntimeError::Initramfs)?;
        rd.add_tree(root, "rootfs")
            .map_err(RuntimeError::Initramfs)?;
    }
    rd.to_bytes().map_err(RuntimeError::Initramfs)
}

impl Sandbox {
    /// Boots the VM and waits for its agent.
    pub fn start(config: &SandboxConfig) -> Result<Sandbox, RuntimeError> {
        std::fs::create_dir_all(&config.dir).map_err(prep(&config.dir))?;
        let uds = config.dir.join("vsock.sock");
        let _ = std::fs::remove_file(&uds);
        let initrd = config.dir.join("initrd.cpio");
        // The shares the guest mounts, and the agent's instructions for
        // them on the command line (it reads /proc/cmdline).
        let mut fs = Vec::new();
        let mut args = vec!["quiet".to_owned()];
        let packed_root = match (&config.rootfs, config.rootfs_via) {
            (Some(root), RootfsVia::VirtioFs) => {
                fs.push(FsShare {
                    tag: "rootfs".into(),
                    host_dir: root.clone(),
                    read_only: true,
                    only: None,
                    no_setid: false,
                });
                args.push("husk.rootfs=virtiofs".into());
                if let Some(upper) = &config.upper {
                    fs.push(FsShare {
                        tag: "upper".into(),
                        host_dir: upper.clone(),
                        read_only: false,
                        only: None,
                        no_setid: false,
                    });
                    args.push("husk.upper=virtiofs".into());
                }
                None
            }
            (Some(root), RootfsVia::Bundle { read_only }) => {
                fs.push(FsShare {
                    tag: "rootfs".into(),
                    host_dir: root.clone(),
                    read_only,
                    only: None,
                    no_setid: false,
                });
                args.push(if read_only {
                    "husk.rootfs=direct-ro".into()
                } else {
                    "husk.rootfs=direct-rw".into()
                });
                None
            }
            (root, _) => root.as_deref(),
        };
        for (i, v) in config.volumes.iter().enumerate() {
            let tag = format!("vol{i}");
            let mode = if v.read_only { "ro" } else { "rw" };
            // A file is shared as its directory with only that entry
            // visible; the agent bind-mounts it onto the container path.
            let file = std::fs::metadata(&v.host).map_err(prep(&v.host))?.is_file();
            let (host_dir, only) = match (file, v.host.parent(), v.host.file_name()) {
                (true, Some(dir), Some(name)) => (dir.to_owned(), Some(name.to_owned())),
                _ => (v.host.clone(), None),
            };
            args.push(if only.is_some() {
                format!("husk.volume={tag}:{}:{mode}:file", v.guest)
            } else {
                format!("husk.volume={tag}:{}:{mode}", v.guest)
            });
            fs.push(FsShare {
                tag,
                host_dir,
                read_only: v.read_only,
                only,
                // A volume is a host directory other users may reach.
                no_setid: true,
            });
        }
        if let Some(name) = &config.hostname {
            check_hostname(name)?;
            args.push(format!("husk.hostname={name}"));
        }
        for t in &config.tmpfs {
            check_guest_path(t).map_err(|e| {
                prep(Path::new(t))(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?;
            args.push(format!("husk.tmpfs={t}"));
        }
        let net = match &config.net {
            Some(n) => {
                args.push(n.nic.kernel_arg());
                let dup = |fd: &std::os::fd::OwnedFd| {
                    fd.try_clone()
                        .map_err(prep(Path::new("the network backend's fd")))
                };
                Some(husk_devices::virtio::net::NetConfig {
                    mac: n.nic.mac,
                    mtu: n.nic.mtu,
                    backend: match &n.backend {
                        NetFd::Stream(fd) => {
                            husk_devices::virtio::net::NetBackend::Stream(dup(fd)?)
                        }
                        NetFd::Tap(fd) => husk_devices::virtio::net::NetBackend::Tap(dup(fd)?),
                    },
                })
            }
            None => None,
        };
        args.push(config.cmdline_extra.clone());
        let bytes = build_initramfs(&config.agent, packed_root)?;
        std::fs::write(&initrd, bytes).map_err(prep(&initrd))?;
        let console_log = config
            .console_log
            .clone()
            .unwrap_or_else(|| config.dir.join("console.log"));
        let file = std::fs::File::create(&console_log).map_err(prep(&console_log))?;
        let vm_config = VmConfig {
            kernel: config.kernel.clone(),
            initrd: Some(initrd),
            cmdline_extra: args.join(" "),
            mem_size: config.mem_size,
            vcpus: config.vcpus,
            compat: CompatMode::Auto,
            console: Box::new(ConsoleSink {
                file,
                tee: config.console_to_stderr,
            }),
            timeout: None,
            vsock: Some(VsockSpec {
                uds_path: uds.clone(),
                cid: husk_protocol::GUEST_CID,
            }),
            fs,
            exit: None,
            net,
        };
        let started = Instant::now();
        let vm = Vm::start(vm_config).map_err(RuntimeError::Vm)?;
        let mut sandbox = Sandbox {
            uds,
            console_log,
            vm: Some(vm),
            boot_time: Duration::ZERO,
        };
        // Wait for the agent: retry while the VM runs.
        loop {
            if let Some(vm) = sandbox.vm.take_if(|vm| vm.is_finished()) {
                let tail = vm.console_tail();
                return Err(match vm.wait() {
                    Err(e) => RuntimeError::Vm(e),
                    Ok(_) => RuntimeError::VmStoppedEarly {
                        console: sandbox.console_log.display().to_string(),
                        tail,
                    },
                });
            }
            if config
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
            {
                sandbox.kill();
                return Err(RuntimeError::Cancelled);
            }
            if started.elapsed() > config.boot_timeout {
                sandbox.kill();
                return Err(RuntimeError::AgentTimeout(config.boot_timeout));
            }
            // Each attempt waits up to 3 s for the guest to answer: the
            // vsock device keeps an unanswered connection until the guest's
            // driver is up (up to a minute on PVM hosts), so short attempts
            // would pile up connections until the device refuses more.
            match husk_protocol::hybrid::connect_retry(
                &sandbox.uds,
                husk_protocol::AGENT_PORT,
                Duration::from_secs(3),
            ) {
                Ok(probe) => {
                    // Check the agent speaks our protocol; a connection that
                    // closes without a Run is ignored by the agent.
                    let hello = probe
                        .try_clone()
                        .map_err(|e| RuntimeError::Protocol(husk_protocol::ProtocolError::Io(e)));
                    let hello = hello.and_then(|r| {
                        let mut reader = FrameReader::new(r);
                        let mut writer = FrameWriter::new(probe);
                        husk_protocol::host_handshake(
                            &mut reader,
                            &mut writer,
                            concat!("husk ", env!("CARGO_PKG_VERSION")),
                        )
                        .map_err(RuntimeError::Protocol)
                    });
                    if let Err(e) = hello {
                        sandbox.kill();
                        return Err(e);
                    }
                    break;
                }
                Err(husk_protocol::hybrid::HybridError::Timeout { .. }) => continue,
                // While the guest boots (slowly where its kernel is
                // emulated), the vsock device may refuse or drop attempts
                // it cannot hold yet: try again until the boot timeout.
                Err(e) => {
                    log::debug!("agent not reachable yet: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        sandbox.boot_time = started.elapsed();
        Ok(sandbox)
    }

    /// Where the guest's console output goes.
    pub fn console_log(&self) -> &Path {
        &self.console_log
    }

    /// The last lines of the guest's console output.
    pub fn console_tail(&self) -> String {
        self.vm.as_ref().map(Vm::console_tail).unwrap_or_default()
    }

    fn vm(&self) -> Result<&Vm, RuntimeError> {
        self.vm
            .as_ref()
            .ok_or(RuntimeError::Vm(VmmError::NotRunning))
    }

    /// Pauses the VM: returns once no vCPU runs the guest.
    pub fn pause(&self) -> Result<(), RuntimeError> {
        self.vm()?.pause().map_err(RuntimeError::Vm)
    }

    /// Lets a paused VM run again.
    pub fn resume(&self) -> Result<(), RuntimeError> {
        self.vm()?.resume().map_err(RuntimeError::Vm)
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.vm.as_ref().is_some_and(Vm::is_paused)
    }

    /// Whether the VM has stopped.
    pub fn is_finished(&self) -> bool {
        self.vm.as_ref().is_none_or(Vm::is_finished)
    }

    /// Connects to the agent and handshakes.
    fn session(
        &self,
    ) -> Result<(UnixStream, FrameReader<UnixStream>, FrameWriter<UnixStream>), RuntimeError> {
        let stream = self.connect()?;
        let io = |e| RuntimeError::Protocol(husk_protocol::ProtocolError::Io(e));
        let mut reader = FrameReader::new(stream.try_clone().map_err(io)?);
        let mut writer = FrameWriter::new(stream.try_clone().map_err(io)?);
        husk_protocol::host_handshake(
            &mut reader,
            &mut writer,
            concat!("husk ", env!("CARGO_PKG_VERSION")),
        )
        .map_err(RuntimeError::Protocol)?;
        Ok((stream, reader, writer))
    }

    /// Sends a one-shot request and reads its one answer.
    fn query(&self, req: Request) -> Result<Event, RuntimeError> {
        let (stream, mut reader, mut writer) = self.session()?;
        writer.send(&req).map_err(RuntimeError::Protocol)?;
        let ev = reader.recv::<Event>().map_err(RuntimeError::Protocol)?;
        let _ = stream.shutdown(std::net::Shutdown::Both);
        match ev {
            Some(Event::Error { message }) => Err(RuntimeError::Unexpected(message)),
            Some(ev) => Ok(ev),
            None => Err(RuntimeError::Unexpected(
                "the connection closed without an answer".into(),
            )),
        }
    }

    /// The container's processes (those in its main process's PID
    /// namespace), `ps`-style: column titles and one row per process.
    /// Empty without a running main process.
    pub fn top(&self) -> Result<(Vec<String>, Vec<Vec<String>>), RuntimeError> {
        match self.query(Request::Top)? {
            Event::Top { titles, processes } => Ok((titles, processes)),
            other => Err(RuntimeError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The guest's view of its memory, CPU time and container processes.
    pub fn stats(&self) -> Result<GuestStats, RuntimeError> {
        match self.query(Request::Stats)? {
            Event::Stats(s) => Ok(s),
            other => Err(RuntimeError::Unexpected(format!("{other:?}"))),
        }
    }

    fn connect(&self) -> Result<UnixStream, RuntimeError> {
        husk_protocol::hybrid::connect_retry(
            &self.uds,
            husk_protocol::AGENT_PORT,
            Duration::from_secs(30),
        )
        .map_err(RuntimeError::Connect)
    }

    /// Runs a process in the sandbox and waits for it: its output goes to
    /// `stdio`, and what arrives on `control` (signals, terminal resizes)
    /// is passed to it.
    pub fn exec(
        &self,
        spec: RunSpec,
        stdio: Stdio,
        control: Option<Receiver<Control>>,
    ) -> Result<(ExitStatus, ExecTimes), RuntimeError> {
        self.exec_notify(spec, stdio, control, |_| {})
    }

    /// [`Sandbox::exec`], calling `started` with the process's guest pid
    /// once the agent has started it.
    pub fn exec_notify(
        &self,
        spec: RunSpec,
        stdio: Stdio,
        control: Option<Receiver<Control>>,
        started: impl FnOnce(u32),
    ) -> Result<(ExitStatus, ExecTimes), RuntimeError> {
        let t0 = Instant::now();
        let (stream, mut reader, mut writer) = self.session()?;
        writer
            .send(&Request::Run(spec))
            .map_err(RuntimeError::Protocol)?;
        match reader.recv::<Event>().map_err(RuntimeError::Protocol)? {
            Some(Event::Started { pid }) => {
                log::debug!("container process started as guest pid {pid}");
                started(pid);
            }
            Some(Event::Error { message }) => return Err(RuntimeError::Start(message)),
            Some(other) => return Err(RuntimeError::Start(format!("unexpected answer {other:?}"))),
            None => return Err(RuntimeError::NoExitStatus),
        }
        let writer = std::sync::Arc::new(std::sync::Mutex::new(writer));

        // stdin: copied in chunks; end-of-file closes the process's stdin.
        // The thread is not joined: a process that never reads its stdin must
        // not keep us waiting.
        {
            let writer = writer.clone();
            let stdin = stdio.stdin;
            std::thread::spawn(move || {
                let send = |r: Request| {
                    writer
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .send(&r)
                        .is_ok()
                };
                if let Some(mut input) = stdin {
                    let mut buf = vec![0u8; MAX_DATA_CHUNK];
                    loop {
                        match input.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if !send(Request::Stdin {
                                    data: buf[..n].to_vec(),
                                }) {
                                    return;
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(_) => break,
                        }
                    }
                }
                send(Request::CloseStdin);
            });
        }
        if let Some(control) = control {
            let writer = writer.clone();
            std::thread::spawn(move || {
                while let Ok(c) = control.recv() {
                    let req = match c {
                        Control::Signal(signo) => Request::Signal { signo },
                        Control::Resize(TermSize { rows, cols }) => Request::Resize { rows, cols },
                    };
                    if writer
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .send(&req)
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
        let (mut out, mut err) = (stdio.stdout, stdio.stderr);
        let mut first_output = None;
        let status = loop {
            match reader.recv::<Event>().map_err(RuntimeError::Protocol)? {
                Some(Event::Stdout { data }) => {
                    first_output.get_or_insert_with(|| t0.elapsed());
                    let _ = out.write_all(&data).and_then(|()| out.flush());
                }
                Some(Event::Stderr { data }) => {
                    first_output.get_or_insert_with(|| t0.elapsed());
                    let _ = err.write_all(&data).and_then(|()| err.flush());
                }
                Some(Event::Exited(st)) => break st,
                Some(Event::Error { message }) => log::warn!("guest agent: {message}"),
                Some(other) => log::debug!("ignoring {other:?}"),
                None => return Err(RuntimeError::NoExitStatus),
            }
        };
        // Closing the connection tells the agent we are done with it.
        let _ = stream.shutdown(std::net::Shutdown::Both);
        Ok((
            status,
            ExecTimes {
                first_output,
                total: t0.elapsed(),
            },
        ))
    }

    /// Waits for the VM to stop by itself (the agent powers it off after the
    /// main process), at most `timeout`; then stops it.
    pub fn wait(mut self, timeout: Duration) -> Result<Option<VmOutcome>, RuntimeError> {
        let Some(mut vm) = self.vm.take() else {
            return Ok(None);
        };
        let result = match vm.wait_timeout(timeout) {
            Some(r) => r,
            None => {
                log::warn!("the guest did not power off within {timeout:?}; stopping it");
                vm.stop();
                vm.wait()
            }
        };
        result.map(Some).map_err(RuntimeError::Vm)
    }

    /// Asks the VM to stop now, without waiting (another thread may be
    /// running a process in it; its connection then ends).
    pub fn stop_vm(&self) {
        if let Some(vm) = &self.vm {
            vm.stop();
        }
    }

    /// Stops the VM now (and waits for its threads).
    pub fn kill(&mut self) {
        if let Some(vm) = self.vm.take() {
            vm.stop();
            let _ = vm.wait();
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What `husk run` measured.
#[derive(Debug, Clone, Copy)]
pub struct RunOutcome {
    /// How the container's process ended.
    pub status: ExitStatus,
    /// VM start to agent ready.
    pub boot_time: Duration,
    /// The process's own timings.
    pub exec: ExecTimes,
}

/// Boots a sandbox, runs `spec` as its main process, and stops it.
pub fn run(
    config: &SandboxConfig,
    spec: RunSpec,
    stdio: Stdio,
    control: Option<Receiver<Control>>,
) -> Result<RunOutcome, RuntimeError> {
    let sandbox = Sandbox::start(config)?;
    let boot_time = sandbox.boot_time;
    let (status, exec) = sandbox.exec(spec.main(), stdio, control)?;
    sandbox.wait(Duration::from_secs(30))?;
    Ok(RunOutcome {
        status,
        boot_time,
        exec,
    })
}

/// The last `n` lines of a text file (a log), joined with " | "; empty
/// if it cannot be read.
pub(crate) fn tail_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Sandbox>();
    }

    #[test]
    fn hostnames_are_checked() {
        for ok in ["a", "web-1", "db.local", &"x".repeat(63)] {
            assert!(check_hostname(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a_b", "é", "a;b", &"x".repeat(64), "a\nb"] {
            assert!(check_hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn volumes_parse_like_docker() {
        let tmp = std::env::temp_dir();
        let v = Volume::parse(&format!("{}:/data", tmp.display())).unwrap();
        assert_eq!((v.guest.as_str(), v.read_only), ("/data", false));
        let v = Volume::parse(&format!("{}:/data/:ro", tmp.display())).unwrap();
        assert_eq!((v.guest.as_str(), v.read_only), ("/data", true));
        let file = tempfile::NamedTempFile::new().unwrap();
        let v = Volume::parse(&format!("{}:/etc/x.conf:ro", file.path().display())).unwrap();
        assert_eq!(v.host, std::fs::canonicalize(file.path()).unwrap());
        for bad in [
            "nocolon",
            "/tmp:relative",
            "/tmp:/",
            "/tmp:/a/../b",
            "/tmp:/x:rx",
            "/tmp:/a b",
            "/tmp:/a:b:ro",
            "/dev/null:/x",
            "/nonexistent-husk:/x",
            "/tmp:/x:ro:extra",
        ] {
            assert!(Volume::parse(bad).is_err(), "{bad}");
        }
    }
}
