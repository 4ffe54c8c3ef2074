//! `husk run`: a container process in its own microVM, with Docker's flags
//! and exit-code conventions.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use husk_runtime::{ExitStatus, RunSpec, RuntimeError, SandboxConfig, Stdio, TermSize};

use crate::term;

/// Where the guest comes from: shared by `husk run` and `husk start`.
#[derive(clap::Args, Debug, Clone)]
pub struct VmArgs {
    /// The guest kernel (default: $HUSK_KERNEL, husk-vmlinux beside husk, or the newest built one).
    #[arg(long, env = "HUSK_KERNEL")]
    pub kernel: Option<PathBuf>,
    /// The guest agent (default: $HUSK_AGENT or husk-agent beside husk).
    #[arg(long, env = "HUSK_AGENT")]
    pub agent: Option<PathBuf>,
    /// Copy the guest's kernel console to stderr.
    #[arg(long)]
    pub console: bool,
    /// Extra guest kernel command-line arguments (debugging).
    #[arg(long, default_value = "")]
    pub kernel_args: String,
    /// Seconds to wait for the guest to boot.
    #[arg(long, default_value_t = 600)]
    pub boot_timeout: u64,
}

/// `husk run` flags.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
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
    /// (copied; for debugging: the container's writes are not kept, as with
    /// --rm).
    #[arg(long, value_enum, default_value_t = RootfsViaArg::Virtiofs)]
    pub rootfs_via: RootfsViaArg,
    /// Set an environment variable (NAME=VALUE, or NAME to copy it from here).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// User (UID[:GID], numeric) to run as.
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Keep stdin open and pass it to the container.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the container a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
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
    /// Attach stdout and stderr (always: husk has no daemon, so the
    /// container runs in the foreground, as `docker start -a`).
    #[arg(short = 'a', long)]
    pub attach: bool,
    /// Attach stdin.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    #[command(flatten)]
    pub vm: VmArgs,
    /// The container: name, id or id prefix.
    pub container: String,
}

/// `--rootfs-via`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum RootfsViaArg {
    /// virtio-fs share + overlay.
    Virtiofs,
    /// Copied into the initramfs.
    Initramfs,
}

fn beside_exe(name: &str) -> Option<PathBuf> {
    let p = std::env::current_exe().ok()?.parent()?.join(name);
    p.exists().then_some(p)
}

/// The guest kernel to use.
pub fn find_kernel(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(k) = explicit.or_else(|| beside_exe("husk-vmlinux")) {
        return Ok(k);
    }
    let home = std::env::var_os("HUSK_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("husk")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/husk")));
    let newest = home.and_then(|h| {
        std::fs::read_dir(h.join("kernel"))
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("vmlinux"))
            .filter(|p| p.is_file())
            .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
    });
    newest.context("no guest kernel found (give --kernel or HUSK_KERNEL, or build one with guest-kernel/build.sh)")
}

fn find_agent(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    explicit
        .or_else(|| beside_exe("husk-agent"))
        .context("no guest agent found (give --agent or HUSK_AGENT; ./dev build puts husk-agent beside husk)")
}

fn parse_user(s: &str) -> anyhow::Result<(u32, u32)> {
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid: u32 = u.parse().with_context(|| {
        format!("--user {s}: only numeric UID[:GID] is supported without an image")
    })?;
    let gid: u32 = match g {
        Some(g) => g
            .parse()
            .with_context(|| format!("--user {s}: GID must be numeric"))?,
        None => uid,
    };
    Ok((uid, gid))
}

/// The process for `--rootfs`: the command as given, Docker's default environment.
fn build_spec(args: &RunArgs, size: Option<TermSize>) -> anyhow::Result<RunSpec> {
    let mut spec = RunSpec::new(&args.args);
    // Docker's defaults for a container without an image config.
    spec = spec.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    spec = spec.env("HOSTNAME", "husk");
    if args.tty {
        spec = spec.env(
            "TERM",
            std::env::var("TERM").unwrap_or_else(|_| "xterm".into()),
        );
    }
    for e in &args.env {
        match e.split_once('=') {
            Some(("", _)) => bail!("-e {e}: empty variable name"),
            Some((k, v)) => spec = spec.env(k, v),
            None => {
                if let Some(v) = std::env::var_os(e) {
                    spec = spec.env(e, v);
                }
            }
        }
    }
    if let Some(w) = &args.workdir {
        if !w.starts_with('/') {
            bail!("-w {w}: the working directory must be an absolute path");
        }
        spec = spec.cwd(w);
    }
    if let Some(u) = &args.user {
        let (uid, gid) = parse_user(u)?;
        spec = spec.user(uid, gid);
    }
    if args.tty {
        spec = spec.tty(size);
    }
    Ok(spec)
}

/// The process for an image: its config with the overrides, as Docker resolves it.
fn image_spec(
    args: &RunArgs,
    image: &husk_image::Image,
    rootfs: &std::path::Path,
    size: Option<TermSize>,
) -> anyhow::Result<RunSpec> {
    let overrides = husk_image::RunOverrides {
        entrypoint: args.entrypoint.clone(),
        cmd: args.args[1..].to_vec(),
        env: args.env.clone(),
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        hostname: Some("husk".into()),
        tty: args.tty,
    };
    let p = husk_image::resolve_process(&image.config, Some(rootfs), &overrides, &|k| {
        std::env::var(k).ok()
    })
    .context("cannot work out the container's process from the image")?;
    if p.args.is_empty() {
        bail!(
            "no command specified: the image has no Entrypoint or Cmd; give one after the image name"
        );
    }
    let mut spec = RunSpec::new(&p.args)
        .cwd(&p.cwd)
        .user(p.user.uid, p.user.gid);
    spec.additional_gids = p.user.additional_gids.clone();
    for kv in &p.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        spec = spec.env(k, v);
    }
    if args.tty {
        spec = spec.tty(size);
    }
    Ok(spec)
}

/// The container's root directory and process, and the image lease that
/// keeps its rootfs from being garbage collected while it runs.
struct Root {
    image: String,
    image_id: Option<String>,
    path: PathBuf,
    spec: RunSpec,
    _lease: Option<husk_image::Rootfs>,
}

fn resolve_root(
    args: &RunArgs,
    store: &husk_image::Store,
    size: Option<TermSize>,
) -> anyhow::Result<Root> {
    if let Some(dir) = &args.rootfs {
        if !dir.is_dir() {
            bail!("--rootfs {}: not a directory", dir.display());
        }
        if args.entrypoint.is_some() {
            bail!("--entrypoint needs an image, not --rootfs");
        }
        let path =
            std::fs::canonicalize(dir).with_context(|| format!("--rootfs {}", dir.display()))?;
        return Ok(Root {
            image: path.display().to_string(),
            image_id: None,
            path,
            spec: build_spec(args, size)?,
            _lease: None,
        });
    }
    let name = &args.args[0];
    let opts = husk_image::RegistryOptions::for_store(store);
    let image = husk_image::resolve_or_pull(store, name, &opts, &husk_image::StderrProgress::new())
        .with_context(|| format!("cannot find or pull image {name}"))?;
    let rootfs = store
        .rootfs(&image, husk_image::UnpackLimits::default())
        .with_context(|| format!("cannot unpack image {name}"))?;
    let spec = image_spec(args, &image, &rootfs.path, size)?;
    Ok(Root {
        image: name.clone(),
        image_id: Some(image.id.to_string()),
        path: rootfs.path.clone(),
        spec,
        _lease: Some(rootfs),
    })
}

/// Exit code of `husk run`/`start` for a container's exit status.
fn exit_code(status: ExitStatus) -> i32 {
    match status {
        ExitStatus::Code(c) => c,
        ExitStatus::Signal(s) => 128 + s,
    }
}

/// What runs one container's VM, for `run` and `start`.
struct Launch {
    interactive: bool,
    /// The host terminal is a tty and the container has one.
    tty: bool,
}

/// Boots the container's VM and runs its main process in the foreground;
/// returns husk's exit code (Docker's: the process's, 125 for husk's own
/// failures, 126/127 when the process cannot start) and records it.
fn launch(
    container: &mut husk_runtime::container::Container,
    vm: &VmArgs,
    launch: Launch,
    ctl_rx: mpsc::Receiver<husk_runtime::Control>,
) -> anyhow::Result<ExitCode> {
    // The lock first: the sandbox directory is the container's, and a
    // running one must keep it.
    let guard = container.begin().context("cannot start the container")?;
    let sandbox = sandbox_config(
        Some(container.short_id()),
        vm,
        &container.config,
        Some(container.rw_dir()),
        husk_runtime::RootfsVia::VirtioFs,
    )?;
    let (code, err) = foreground(&sandbox, container.config.spec.clone(), &launch, ctl_rx);
    if let Err(e) = guard.finish(code) {
        log::warn!("cannot record the container's exit: {e}");
    }
    exit(code, err)
}

/// `husk`'s exit code: the container's, else 125 or the error.
fn exit(code: Option<i32>, err: Option<anyhow::Error>) -> anyhow::Result<ExitCode> {
    match (code, err) {
        (_, Some(e)) => Err(e),
        (c, None) => Ok(ExitCode::from(c.unwrap_or(125).clamp(0, 255) as u8)),
    }
}

/// Runs the sandbox with `spec` as its main process, attached to this
/// terminal (raw while the container has a tty); removes the sandbox's
/// directory after. Returns what [`finish`] makes of it.
fn foreground(
    sandbox: &SandboxConfig,
    mut spec: RunSpec,
    launch: &Launch,
    ctl_rx: mpsc::Receiver<husk_runtime::Control>,
) -> (Option<i32>, Option<anyhow::Error>) {
    if spec.tty {
        spec.term_size = if launch.tty { term::size(0) } else { None };
    }
    let stdio = Stdio {
        stdin: launch
            .interactive
            .then(|| Box::new(std::io::stdin()) as Box<dyn std::io::Read + Send>),
        stdout: Box::new(std::io::stdout()),
        stderr: Box::new(std::io::stderr()),
    };
    let raw = if launch.tty {
        term::RawMode::enter(0).ok()
    } else {
        None
    };
    let result = husk_runtime::run(sandbox, spec, stdio, Some(ctl_rx));
    drop(raw);
    let _ = std::fs::remove_dir_all(&sandbox.dir);
    finish(result)
}

/// The container's exit code (if it ran), or husk's error.
fn finish(
    result: Result<husk_runtime::RunOutcome, RuntimeError>,
) -> (Option<i32>, Option<anyhow::Error>) {
    match result {
        Ok(o) => {
            log::info!(
                "agent ready after {:.3} s; first output after {:?}; process ran {:.3} s",
                o.boot_time.as_secs_f64(),
                o.exec.first_output,
                o.exec.total.as_secs_f64()
            );
            (Some(exit_code(o.status)), None)
        }
        // Docker's codes: 127 the command was not found, 126 it could not run.
        Err(RuntimeError::Start(msg)) => {
            eprintln!("husk: error: cannot start the container process: {msg}");
            (
                Some(if msg.contains("No such file") {
                    127
                } else {
                    126
                }),
                None,
            )
        }
        Err(e) => (
            None,
            Some(anyhow::Error::new(e).context("cannot run the container")),
        ),
    }
}

fn sandbox_config(
    container: Option<&str>,
    vm: &VmArgs,
    config: &husk_runtime::container::ContainerConfig,
    upper: Option<PathBuf>,
    rootfs_via: husk_runtime::RootfsVia,
) -> anyhow::Result<SandboxConfig> {
    Ok(SandboxConfig {
        kernel: find_kernel(vm.kernel.clone())?,
        agent: find_agent(vm.agent.clone())?,
        rootfs: Some(config.rootfs.clone()),
        rootfs_via,
        volumes: config.volumes.clone(),
        upper,
        tmpfs: config.tmpfs.clone(),
        mem_size: config.mem_size,
        vcpus: config.vcpus,
        dir: sandbox_dir(container)?,
        boot_timeout: Duration::from_secs(vm.boot_timeout),
        cmdline_extra: vm.kernel_args.clone(),
        console_to_stderr: vm.console,
        hostname: None,
    })
}

/// `husk run`: creates a container and runs it; returns the exit code
/// `husk run` exits with.
pub fn run(args: RunArgs, store_root: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let tty = args.tty && std::io::stdin().is_terminal();
    let size = if tty { term::size(0) } else { None };
    let store = crate::images::open_store(store_root)?;
    let containers = husk_runtime::container::ContainerStore::open(store.root())
        .context("cannot open the container store")?;
    if let Some(n) = &args.name
        && !husk_runtime::container::valid_name(n)
    {
        bail!("invalid container name {n:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed");
    }
    // The root directory and the process: from --rootfs, or from an image
    // (pulled if it is not in the store), unpacked once and shared.
    let root = resolve_root(&args, &store, size)?;
    let volumes = args
        .volumes
        .iter()
        .map(|v| husk_runtime::Volume::parse(v).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for t in &args.tmpfs {
        husk_runtime::check_guest_path(t).map_err(|e| anyhow::anyhow!("--tmpfs {t}: {e}"))?;
    }
    let config = husk_runtime::container::ContainerConfig {
        image: root.image.clone(),
        image_id: root.image_id.clone(),
        rootfs: root.path.clone(),
        spec: root.spec.clone(),
        volumes,
        tmpfs: args.tmpfs.clone(),
        mem_size: args
            .memory
            .checked_mul(1 << 20)
            .context("--memory is too large")?,
        vcpus: args.cpus,
    };
    // Find the kernel and agent before creating anything.
    find_kernel(args.vm.kernel.clone())?;
    find_agent(args.vm.agent.clone())?;
    // Signals go to the container: block them here (before any thread
    // starts, so every thread inherits the mask) and forward from one thread.
    let (ctl_tx, ctl_rx) = mpsc::channel();
    term::forward_signals(ctl_tx, tty)?;
    let run_launch = Launch {
        interactive: args.interactive,
        tty,
    };
    if let RootfsViaArg::Initramfs = args.rootfs_via {
        // Debugging path: no container is kept.
        let sandbox = sandbox_config(
            None,
            &args.vm,
            &config,
            None,
            husk_runtime::RootfsVia::Initramfs,
        )?;
        let (code, err) = foreground(&sandbox, config.spec.clone(), &run_launch, ctl_rx);
        return exit(code, err);
    }
    let mut container = containers
        .create(args.name.as_deref(), config)
        .context("cannot create the container")?;
    log::info!("container {} ({})", container.name, container.short_id());
    let result = launch(&mut container, &args.vm, run_launch, ctl_rx);
    if args.rm {
        // Reload: the state changed while it ran.
        match containers.find(&container.id) {
            Ok(c) => {
                if let Err(e) = containers.remove(&c, true) {
                    eprintln!("husk: error: cannot remove container {}: {e}", c.name);
                }
            }
            Err(e) => eprintln!(
                "husk: error: cannot remove container {}: {e}",
                container.name
            ),
        }
    }
    drop(root);
    result
}

/// `husk start`: runs a stopped container again, on the writable layer it
/// left.
pub fn start(args: StartArgs, store_root: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let store = crate::images::open_store(store_root)?;
    let containers = husk_runtime::container::ContainerStore::open(store.root())
        .context("cannot open the container store")?;
    let mut container = containers.find(&args.container)?;
    // The image's rootfs again, with a lease while the container runs.
    let _lease = match &container.config.image_id {
        Some(id) => {
            let image = store.resolve(id).with_context(|| {
                format!(
                    "the image of container {} ({}, {id}) is no longer in the store; remove the container with: husk rm {}",
                    container.name, container.config.image, container.name
                )
            })?;
            let rootfs = store
                .rootfs(&image, husk_image::UnpackLimits::default())
                .with_context(|| format!("cannot unpack image {}", container.config.image))?;
            container.config.rootfs = rootfs.path.clone();
            Some(rootfs)
        }
        None => {
            if !container.config.rootfs.is_dir() {
                bail!(
                    "the root directory of container {} ({}) is gone",
                    container.name,
                    container.config.rootfs.display()
                );
            }
            None
        }
    };
    // Find the kernel and agent before touching the container's state.
    find_kernel(args.vm.kernel.clone())?;
    find_agent(args.vm.agent.clone())?;
    let tty = container.config.spec.tty && std::io::stdin().is_terminal();
    let (ctl_tx, ctl_rx) = mpsc::channel();
    term::forward_signals(ctl_tx, tty)?;
    launch(
        &mut container,
        &args.vm,
        Launch {
            interactive: args.interactive,
            tty,
        },
        ctl_rx,
    )
}

/// Where a running VM's socket, initramfs and console log go: short (Unix
/// socket paths are limited to 108 bytes), per container (`husk rm -f` of a
/// container whose `husk` was killed removes it), or per process.
pub fn sandbox_dir_for(container: Option<&str>) -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join("husk").join(match container {
        Some(id) => format!("c-{id}"),
        None => format!("sandbox-{}-{}", std::process::id(), nanos()),
    })
}

fn sandbox_dir(container: Option<&str>) -> anyhow::Result<PathBuf> {
    let dir = sandbox_dir_for(container);
    // A stale one is from a husk that was killed.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        assert_eq!(parse_user("1000").unwrap(), (1000, 1000));
        assert_eq!(parse_user("1000:50").unwrap(), (1000, 50));
        assert!(parse_user("nobody").is_err());
        assert!(parse_user("1:x").is_err());
    }
}
