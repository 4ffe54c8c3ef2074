//! `husk run`, `create`, `start`, `attach` and `exec`: the commands that
//! connect this terminal to a container's process. The lifecycle itself is
//! `husk_runtime::engine`; this file parses flags and moves bytes.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use husk_runtime::container::{RestartPolicy, VmSettings};
use husk_runtime::control::{CtlEvent, CtlRequest, Session};
use husk_runtime::engine::{CreateOptions, Engine, EngineError};
use husk_runtime::{Control, RootfsVia};

use crate::term;

/// Where the guest comes from.
#[derive(clap::Args, Debug, Clone)]
pub struct VmArgs {
    /// The guest kernel (default: $HUSK_KERNEL, husk-vmlinux beside husk, or the newest built one).
    #[arg(long, env = "HUSK_KERNEL")]
    pub kernel: Option<PathBuf>,
    /// The guest agent, a static binary (default: $HUSK_AGENT or husk-init beside husk).
    #[arg(long, env = "HUSK_AGENT")]
    pub agent: Option<PathBuf>,
    /// Copy the guest's kernel console to the container's monitor.log.
    #[arg(long)]
    pub console: bool,
    /// Extra guest kernel command-line arguments (debugging).
    #[arg(long, default_value = "")]
    pub kernel_args: String,
    /// Seconds to wait for the guest to boot.
    #[arg(long, default_value_t = 600)]
    pub boot_timeout: u64,
}

/// `husk run` / `husk create` flags.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Run in the background and print the container's id.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Run in this root directory instead of an image (then every argument
    /// is the command).
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// Assign a name to the container.
    #[arg(long)]
    pub name: Option<String>,
    /// Remove the container (and its writable layer) when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Overwrite the image's entrypoint ("" clears it).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Mount a host directory or file: HOST:CONTAINER[:ro].
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<String>,
    /// Mount a fresh tmpfs on this container path (mode 1777, nosuid, nodev).
    #[arg(long)]
    pub tmpfs: Vec<String>,
    /// How the root directory reaches the guest: virtiofs (shared read-only,
    /// under the container's writable layer kept on the host) or initramfs
    /// (copied; for debugging: the container's writes are not kept).
    #[arg(long, value_enum, default_value_t = RootfsViaArg::Virtiofs)]
    pub rootfs_via: RootfsViaArg,
    /// Set an environment variable (NAME=VALUE, or NAME to copy it from here).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// User (name or UID[:GROUP]) to run as.
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Keep stdin open and pass it to the container.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the container a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The container's hostname (default: its short id).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Restart policy: no, on-failure[:N], always, unless-stopped.
    #[arg(long, default_value = "no")]
    pub restart: String,
    /// Signal that `stop` sends first (default: the image's, else SIGTERM).
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Seconds `stop` waits before SIGKILL (default 10).
    #[arg(long)]
    pub stop_timeout: Option<u64>,
    /// Log options: max-size=SIZE, max-file=N.
    #[arg(long = "log-opt")]
    pub log_opts: Vec<String>,
    /// Keys that detach from the container (default ctrl-p,ctrl-q).
    #[arg(long, default_value = "ctrl-p,ctrl-q")]
    pub detach_keys: String,
    /// Connect to a network: default (user-mode, through passt), none, or a
    /// user-defined network's name.
    #[arg(long = "network", visible_alias = "net")]
    pub network: Option<String>,
    /// Add network-scoped aliases (user-defined networks).
    #[arg(long = "network-alias", visible_alias = "net-alias")]
    pub network_alias: Vec<String>,
    /// Publish a container's port: [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|/udp].
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Publish all exposed ports to random host ports.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// Expose a port or range without publishing it.
    #[arg(long)]
    pub expose: Vec<String>,
    /// Set DNS servers.
    #[arg(long)]
    pub dns: Vec<String>,
    /// Set DNS search domains.
    #[arg(long = "dns-search")]
    pub dns_search: Vec<String>,
    /// Set DNS options.
    #[arg(long = "dns-option")]
    pub dns_option: Vec<String>,
    /// Add a line to /etc/hosts: NAME:IP (IP may be host-gateway: the host).
    #[arg(long = "add-host")]
    pub add_host: Vec<String>,
    /// Guest memory in MiB.
    #[arg(short = 'm', long = "memory", default_value_t = 256)]
    pub memory: u64,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,
    #[command(flatten)]
    pub vm: VmArgs,
    /// IMAGE [COMMAND [ARG...]], or with --rootfs: COMMAND [ARG...].
    #[arg(
        trailing_var_arg = true,
        required = true,
        value_name = "IMAGE [COMMAND]"
    )]
    pub args: Vec<String>,
}

/// `husk start` flags.
#[derive(clap::Args, Debug)]
pub struct StartArgs {
    /// Attach stdout and stderr and wait for the container to exit.
    #[arg(short = 'a', long)]
    pub attach: bool,
    /// Attach stdin.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Keys that detach from the container.
    #[arg(long, default_value = "ctrl-p,ctrl-q")]
    pub detach_keys: String,
    /// The containers: names, ids or id prefixes.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// `husk attach` flags.
#[derive(clap::Args, Debug)]
pub struct AttachArgs {
    /// Do not attach stdin.
    #[arg(long)]
    pub no_stdin: bool,
    /// Keys that detach from the container.
    #[arg(long, default_value = "ctrl-p,ctrl-q")]
    pub detach_keys: String,
    /// Pass received signals to the container.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub sig_proxy: bool,
    /// The container.
    pub container: String,
}

/// `husk exec` flags.
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the process a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Run it in the background.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Set an environment variable.
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// User (name or UID[:GROUP]).
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Keys that detach (ignored: an exec ends with its process).
    #[arg(long, default_value = "ctrl-p,ctrl-q")]
    pub detach_keys: String,
    /// CONTAINER COMMAND [ARG...]
    #[arg(trailing_var_arg = true, required = true, num_args = 2..)]
    pub args: Vec<String>,
}

/// `--rootfs-via`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum RootfsViaArg {
    /// virtio-fs share + overlay.
    Virtiofs,
    /// Copied into the initramfs.
    Initramfs,
}

pub fn vm_settings(vm: &VmArgs) -> anyhow::Result<VmSettings> {
    let kernel = husk_runtime::agent::find_kernel(vm.kernel.clone())?;
    let agent = husk_runtime::agent::find_agent(vm.agent.clone())?;
    let abs = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
    Ok(VmSettings {
        kernel: abs(kernel),
        agent: abs(agent),
        boot_timeout_s: vm.boot_timeout,
        kernel_args: vm.kernel_args.clone(),
        console: vm.console,
    })
}

/// Parses `--detach-keys` (`ctrl-p,ctrl-q`, `a`, `ctrl-@`).
pub fn parse_detach_keys(s: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for k in s.split(',') {
        let k = k.trim();
        if let Some(c) = k.strip_prefix("ctrl-") {
            let b = match c.as_bytes() {
                [b] if b.is_ascii_alphabetic() => b.to_ascii_lowercase() - b'a' + 1,
                [b'@'] => 0,
                [b'['] => 27,
                [b'\\'] => 28,
                [b']'] => 29,
                [b'^'] => 30,
                [b'_'] => 31,
                _ => bail!("invalid detach key {k:?}"),
            };
            out.push(b);
        } else if k.len() == 1 {
            out.push(k.as_bytes()[0]);
        } else {
            bail!("invalid detach key {k:?}: expected a letter or ctrl-<value>");
        }
    }
    Ok(out)
}

/// The engine over the store.
pub fn engine(root: Option<PathBuf>) -> anyhow::Result<Engine> {
    let root = root.unwrap_or_else(husk_image::Store::default_root);
    let program = std::env::current_exe().context("cannot find the husk binary")?;
    Engine::open(
        &root,
        husk_runtime::engine::MonitorCommand {
            program,
            args: vec!["--log-level".into(), "info".into(), "__monitor".into()],
        },
    )
    .with_context(|| format!("cannot open the store at {}", root.display()))
}

fn create_options(args: &RunArgs, tty: bool) -> anyhow::Result<CreateOptions> {
    let (image, cmd) = match &args.rootfs {
        Some(_) => (String::new(), args.args.clone()),
        None => (args.args[0].clone(), args.args[1..].to_vec()),
    };
    Ok(CreateOptions {
        image,
        rootfs: args.rootfs.clone(),
        name: args.name.clone(),
        cmd,
        entrypoint: args.entrypoint.clone(),
        env: args.env.clone(),
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        tty: args.tty,
        term_size: if tty { term::size(0) } else { None },
        open_stdin: args.interactive,
        volumes: args.volumes.clone(),
        tmpfs: args.tmpfs.clone(),
        memory_mib: args.memory,
        cpus: args.cpus,
        hostname: args.hostname.clone(),
        stop_signal: args.stop_signal.clone(),
        stop_timeout: args.stop_timeout,
        restart: RestartPolicy::parse(&args.restart).map_err(anyhow::Error::msg)?,
        log_opts: args.log_opts.clone(),
        auto_remove: args.rm,
        rootfs_via: match args.rootfs_via {
            RootfsViaArg::Virtiofs => RootfsVia::VirtioFs,
            RootfsViaArg::Initramfs => RootfsVia::Initramfs,
        },
        vm: VmSettings::default(),
        network: args.network.clone(),
        publish: args.publish.clone(),
        publish_all: args.publish_all,
        expose: args.expose.clone(),
        dns: args.dns.clone(),
        dns_search: args.dns_search.clone(),
        dns_option: args.dns_option.clone(),
        add_host: args.add_host.clone(),
        network_alias: args.network_alias.clone(),
    })
}

/// The options, checked (bad flags fail before anything else), with the
/// kernel and agent found.
fn checked_options(engine: &Engine, args: &RunArgs, tty: bool) -> anyhow::Result<CreateOptions> {
    let mut opts = create_options(args, tty)?;
    engine.check(&opts)?;
    opts.vm = vm_settings(&args.vm)?;
    Ok(opts)
}

/// `husk create`: prints the new container's id.
pub fn create(args: RunArgs, root: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let engine = engine(root)?;
    let opts = checked_options(&engine, &args, false)?;
    let c = engine
        .create(&opts, &husk_image::StderrProgress::new())
        .context("cannot create the container")?;
    println!("{}", c.id);
    Ok(ExitCode::SUCCESS)
}

/// `husk run`: creates a container and runs it, in the foreground (attached)
/// or with `-d` in the background.
pub fn run(args: RunArgs, root: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    if args.detach && args.rm && args.restart != "no" {
        bail!("conflicting options: --restart and --rm");
    }
    let tty = args.tty && std::io::stdin().is_terminal();
    let detach_keys = parse_detach_keys(&args.detach_keys)?;
    let engine = engine(root)?;
    let opts = checked_options(&engine, &args, tty)?;
    // Signals go to the container: block them here (before any thread
    // starts, so every thread inherits the mask) and forward from one thread.
    let (ctl_tx, ctl_rx) = mpsc::channel();
    if !args.detach {
        term::forward_signals(ctl_tx, tty)?;
    }
    let c = engine
        .create(&opts, &husk_image::StderrProgress::new())
        .context("cannot create the container")?;
    log::info!("container {} ({})", c.name, c.short_id());
    if args.detach {
        engine
            .start(&c.id)
            .with_context(|| format!("cannot start container {}", c.name))?;
        println!("{}", c.id);
        return Ok(ExitCode::SUCCESS);
    }
    let session = engine
        .start_attached(&c.id, args.interactive)
        .with_context(|| format!("cannot start container {}", c.name))?;
    let code = pump(
        session,
        Pump {
            stdin: args.interactive,
            tty,
            detach_keys,
            signals: Some(ctl_rx),
        },
    )?;
    match code {
        Some(code) => Ok(exit_code(code)),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// `husk start`: detached, printing each name; with `-a`, attached to one.
pub fn start(args: StartArgs, root: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let engine = engine(root)?;
    if args.attach || args.interactive {
        if args.containers.len() > 1 {
            bail!("you cannot start and attach multiple containers at once");
        }
        let c = engine.find(&args.containers[0])?;
        let tty = c.config.spec.tty && std::io::stdin().is_terminal();
        let (ctl_tx, ctl_rx) = mpsc::channel();
        term::forward_signals(ctl_tx, tty)?;
        let stdin = args.interactive && c.config.open_stdin;
        let session = engine
            .start_attached(&c.id, stdin)
            .with_context(|| format!("cannot start container {}", c.name))?;
        let code = pump(
            session,
            Pump {
                stdin,
                tty,
                detach_keys: parse_detach_keys(&args.detach_keys)?,
                signals: Some(ctl_rx),
            },
        )?;
        return Ok(code.map_or(ExitCode::SUCCESS, exit_code));
    }
    let mut failed = false;
    for name in &args.containers {
        match engine.start(name) {
            Ok(_) => println!("{name}"),
            Err(e) => {
                crate::print_error(&anyhow::Error::new(e));
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `husk attach`.
pub fn attach(args: AttachArgs, root: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let engine = engine(root)?;
    let c = engine.find(&args.container)?;
    let tty = c.config.spec.tty && std::io::stdin().is_terminal();
    let (ctl_tx, ctl_rx) = mpsc::channel();
    if args.sig_proxy {
        term::forward_signals(ctl_tx, tty)?;
    }
    let stdin = !args.no_stdin && c.config.open_stdin;
    let session = engine.attach(&c.id, stdin)?;
    let code = pump(
        session,
        Pump {
            stdin,
            tty,
            detach_keys: parse_detach_keys(&args.detach_keys)?,
            signals: args.sig_proxy.then_some(ctl_rx),
        },
    )?;
    Ok(code.map_or(ExitCode::SUCCESS, exit_code))
}

/// `husk exec`.
pub fn exec(args: ExecArgs, root: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let engine = engine(root)?;
    let c = engine.find(&args.args[0])?;
    let tty = args.tty && std::io::stdin().is_terminal();
    let spec = engine.exec_spec(
        &c,
        &husk_runtime::engine::ExecOptions {
            cmd: args.args[1..].to_vec(),
            env: args.env.clone(),
            workdir: args.workdir.clone(),
            user: args.user.clone(),
            tty: args.tty,
            term_size: if tty { term::size(0) } else { None },
        },
    )?;
    let (ctl_tx, ctl_rx) = mpsc::channel();
    if !args.detach {
        term::forward_signals(ctl_tx, tty)?;
    }
    let mut session = engine.exec(&c.id, spec, args.detach)?;
    if args.detach {
        return match session.recv()? {
            Some(CtlEvent::Ok) => Ok(ExitCode::SUCCESS),
            Some(CtlEvent::Error { message, code }) => {
                eprintln!("Error response from daemon: {message}");
                Ok(exit_code(code.unwrap_or(1)))
            }
            other => bail!("unexpected answer from the monitor: {other:?}"),
        };
    }
    let code = pump(
        session,
        Pump {
            stdin: args.interactive,
            tty,
            detach_keys: Vec::new(),
            signals: Some(ctl_rx),
        },
    )?;
    Ok(code.map_or(ExitCode::SUCCESS, exit_code))
}

/// How to connect this terminal to a session.
struct Pump {
    stdin: bool,
    tty: bool,
    detach_keys: Vec<u8>,
    signals: Option<mpsc::Receiver<Control>>,
}

/// Scans stdin for the detach sequence.
struct DetachScanner {
    keys: Vec<u8>,
    matched: usize,
}

impl DetachScanner {
    /// Passes `data` through; returns what to send and whether the
    /// sequence was completed (then nothing after it is sent).
    fn feed(&mut self, data: &[u8]) -> (Vec<u8>, bool) {
        if self.keys.is_empty() {
            return (data.to_vec(), false);
        }
        let mut out = Vec::with_capacity(data.len());
        for &b in data {
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    return (out, true);
                }
            } else {
                // Not the sequence after all: what was held back goes on.
                out.extend_from_slice(&self.keys[..self.matched]);
                self.matched = 0;
                if b == self.keys[0] {
                    self.matched = 1;
                } else {
                    out.push(b);
                }
            }
        }
        (out, false)
    }
}

/// A write of the container's output (`what`) to ours failed: if our
/// reader went away (`husk run IMG yes | head -1`, or the same on stderr),
/// the container's process is killed and the run ends with 141, as the
/// SIGPIPE the process would have got; any other error ends it too.
fn output_failed(
    e: std::io::Error,
    what: &str,
    writer: &husk_runtime::control::SessionWriter,
) -> anyhow::Result<Option<i32>> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        let _ = writer.send(&CtlRequest::Signal { signo: 9 });
        writer.close();
        return Ok(Some(128 + 13));
    }
    Err(anyhow::Error::new(e).context(format!("cannot write the container's {what}")))
}

/// Moves bytes between this terminal and a session until the process
/// exits (its code) or the user detaches (`None`).
fn pump(mut session: Session, p: Pump) -> anyhow::Result<Option<i32>> {
    let writer = session.writer();
    let raw = if p.tty {
        term::RawMode::enter(0).ok()
    } else {
        None
    };
    let (detach_tx, detach_rx) = mpsc::channel::<()>();
    if p.stdin {
        let w = writer.clone();
        let keys = if p.tty {
            p.detach_keys.clone()
        } else {
            Vec::new()
        };
        std::thread::spawn(move || {
            let mut scan = DetachScanner { keys, matched: 0 };
            let mut buf = vec![0u8; 32 * 1024];
            let mut input = std::io::stdin();
            loop {
                match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let (data, detach) = scan.feed(&buf[..n]);
                        if !data.is_empty() && w.send(&CtlRequest::Stdin { data }).is_err() {
                            return;
                        }
                        if detach {
                            let _ = detach_tx.send(());
                            w.close();
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = w.send(&CtlRequest::CloseStdin);
        });
    } else {
        let _ = writer.send(&CtlRequest::CloseStdin);
    }
    if let Some(signals) = p.signals {
        let w = writer.clone();
        std::thread::spawn(move || {
            while let Ok(c) = signals.recv() {
                let req = match c {
                    Control::Signal(signo) => CtlRequest::Signal { signo },
                    Control::Resize(sz) => CtlRequest::Resize {
                        rows: sz.rows,
                        cols: sz.cols,
                    },
                };
                if w.send(&req).is_err() {
                    break;
                }
            }
        });
    }
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    // An error before the process started is husk's own failure (125, as
    // `docker run` reports it), not the container's exit code.
    let (mut started, mut failed) = (false, false);
    let result = loop {
        let ev = match session.recv() {
            Ok(ev) => ev,
            Err(_) if detach_rx.try_recv().is_ok() => break Ok(None),
            Err(e) => break Err(anyhow::Error::new(e)),
        };
        match ev {
            Some(CtlEvent::Stdout { data }) => {
                if let Err(e) = out.write_all(&data).and_then(|()| out.flush()) {
                    break output_failed(e, "output", &writer);
                }
            }
            Some(CtlEvent::Stderr { data }) => {
                if let Err(e) = err.write_all(&data).and_then(|()| err.flush()) {
                    break output_failed(e, "error output", &writer);
                }
            }
            Some(CtlEvent::Started) => started = true,
            Some(CtlEvent::Ok) => {}
            Some(CtlEvent::Exited { .. }) if failed && !started => break Ok(Some(125)),
            Some(CtlEvent::Exited { code }) => break Ok(Some(code)),
            Some(CtlEvent::Error { message, code }) => {
                eprintln!("husk: error: {message}");
                if let Some(code) = code {
                    break Ok(Some(code));
                }
                // The monitor reports an error and then ends the session.
                failed = true;
            }
            Some(other) => log::debug!("ignoring {other:?}"),
            None => {
                if detach_rx.try_recv().is_ok() {
                    break Ok(None);
                }
                break Err(anyhow::anyhow!(
                    "the container's monitor closed the connection before the container exited"
                ));
            }
        }
    };
    drop(raw);
    if matches!(result, Ok(None)) {
        eprintln!("read escape sequence");
    }
    // Give a monitor that removes the container (--rm) time to finish.
    session.set_read_timeout(Some(Duration::from_secs(30)));
    while let Ok(Some(_)) = session.recv() {}
    result
}

/// The error of an engine call as Docker prints it for daemon errors.
pub fn daemon_error(e: &EngineError) -> String {
    match e {
        EngineError::NoSuchContainer(n) => format!("Error: No such container: {n}"),
        other => format!("Error response from daemon: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse_and_match() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q").unwrap(), vec![16, 17]);
        assert_eq!(parse_detach_keys("a,ctrl-@").unwrap(), vec![b'a', 0]);
        assert!(parse_detach_keys("ctrl-").is_err());
        assert!(parse_detach_keys("abc").is_err());
        let mut s = DetachScanner {
            keys: vec![16, 17],
            matched: 0,
        };
        assert_eq!(s.feed(b"ab\x10c"), (b"ab\x10c".to_vec(), false));
        assert_eq!(s.feed(b"x\x10"), (b"x".to_vec(), false));
        assert_eq!(s.feed(b"\x11rest"), (Vec::new(), true));
        let mut s = DetachScanner {
            keys: vec![16, 17],
            matched: 0,
        };
        assert_eq!(s.feed(b"\x10\x10\x11"), (b"\x10".to_vec(), true));
    }
}
