//! The `husk` command.

mod build;
mod containers;
mod images;
mod network;
mod oci;
mod run;
mod term;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use husk_vmm::{CompatMode, FsShare, GuestExit, VmConfig, VmmError};

#[derive(Parser, Debug)]
#[command(
    name = "husk",
    version,
    about = "Run containers, each in its own KVM microVM"
)]
struct Cli {
    /// Log level for husk's own messages (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "warn", env = "HUSK_LOG")]
    log_level: String,
    /// The image store (default: $HUSK_ROOT, /var/lib/husk as root, else ~/.local/share/husk).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a kernel and initramfs and stream the guest's serial console (for debugging).
    ///
    /// Exit status: 0 the guest powered off, 1 it rebooted, 3 its kernel
    /// panicked, 125 the VM could not run.
    Boot(BootArgs),
    /// Run a command in a new container, in its own microVM.
    Run(run::RunArgs),
    /// Build an image from a Dockerfile (each RUN step in its own microVM).
    Build(build::BuildArgs),
    /// Create a container without starting it.
    Create(run::RunArgs),
    /// Start stopped containers (in the background; -a to attach).
    Start(run::StartArgs),
    /// Stop running containers: the stop signal, then SIGKILL after a grace period.
    Stop {
        /// Seconds to wait before killing.
        #[arg(short = 't', long = "time")]
        time: Option<u64>,
        /// The containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Restart containers.
    Restart {
        /// Seconds to wait before killing.
        #[arg(short = 't', long = "time")]
        time: Option<u64>,
        /// The containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to containers' main processes (default SIGKILL).
    Kill {
        /// The signal (name or number).
        #[arg(short = 's', long = "signal", default_value = "KILL")]
        signal: String,
        /// The containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Wait for containers to stop and print their exit codes.
    Wait {
        /// The containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Attach this terminal to a running container's main process.
    Attach(run::AttachArgs),
    /// Run a command in a running container.
    Exec(run::ExecArgs),
    /// Show a container's output.
    Logs(containers::LogsArgs),
    /// Stop all processes of containers (the VM's vCPUs).
    Pause {
        /// The containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Resume paused containers.
    Unpause {
        /// The containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Show a container's processes.
    Top {
        /// The container.
        container: String,
    },
    /// Show containers' resource use (CPU and memory of each VM).
    Stats {
        /// Print one sample and exit.
        #[arg(long)]
        no_stream: bool,
        /// The containers (default: all running).
        containers: Vec<String>,
    },
    /// Rename a container.
    Rename {
        /// The container.
        container: String,
        /// Its new name.
        new_name: String,
    },
    /// List containers.
    Ps(containers::PsArgs),
    /// Manage networks.
    Network {
        #[command(subcommand)]
        command: network::NetworkCommand,
    },
    /// List a container's published ports.
    Port {
        /// The container.
        container: String,
        /// PRIVATE_PORT[/PROTO]
        private: Option<String>,
    },
    /// Remove containers and their writable layers.
    Rm {
        /// Kill and remove a running container.
        #[arg(short = 'f', long)]
        force: bool,
        /// The containers: names, ids or id prefixes.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Show containers' or images' details as JSON.
    Inspect {
        /// Containers or images.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show what a container changed in its filesystem (A added, C changed, D deleted).
    Diff {
        /// The container.
        container: String,
    },
    /// The monitor of one container (started by husk itself).
    #[command(name = "__monitor", hide = true)]
    Monitor {
        /// Run the main process once a client has attached.
        #[arg(long)]
        attach: bool,
        /// Started by `husk oci create`: the inherited stdio are the
        /// container's, the main process runs on `husk oci start`.
        #[arg(long, conflicts_with = "attach")]
        oci: bool,
        /// The container's id.
        id: String,
    },
    /// Download an image from a registry.
    Pull {
        /// Verify the registry's TLS certificate; `--tls-verify=false` also allows
        /// plain HTTP (as podman and skopeo do).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        tls_verify: bool,
        /// NAME[:TAG|@DIGEST]
        image: String,
    },
    /// Upload an image to a registry.
    Push {
        /// Verify the registry's TLS certificate; `--tls-verify=false` also allows
        /// plain HTTP (as podman and skopeo do).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        tls_verify: bool,
        /// NAME[:TAG]
        image: String,
    },
    /// Load images from a `docker save` tar, an OCI archive or an OCI layout directory.
    Load {
        /// The archive or layout (default: standard input).
        #[arg(short = 'i', long = "input")]
        input: Option<PathBuf>,
    },
    /// Save images to a tar archive (docker save format, also an OCI layout).
    Save {
        /// Write to this file instead of standard output.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// The images.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Create a new image from a container's changes.
    Commit {
        /// Apply a Dockerfile instruction (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, VOLUME, WORKDIR).
        #[arg(short = 'c', long = "change")]
        change: Vec<String>,
        /// Commit message.
        #[arg(short = 'm', long)]
        message: Option<String>,
        /// Author (e.g. "Jane <jane@example.com>").
        #[arg(short = 'a', long)]
        author: Option<String>,
        /// The container.
        container: String,
        /// REPOSITORY[:TAG]
        name: Option<String>,
    },
    /// Export a container's filesystem as a tar archive.
    Export {
        /// Write to this file instead of standard output.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// The container.
        container: String,
    },
    /// Create an image from a root directory (offline), as `docker import` does from a tarball.
    Import {
        /// The directory that becomes the image's root.
        dir: PathBuf,
        /// NAME[:TAG]
        name: String,
        /// The image's default command: a JSON array (`["/bin/sh","-c","echo hi"]`) or
        /// words separated by spaces.
        #[arg(short = 'c', long = "cmd", allow_hyphen_values = true)]
        cmd: Option<String>,
    },
    /// List images.
    Images,
    /// Show the history of an image.
    History {
        /// Do not truncate the output.
        #[arg(long)]
        no_trunc: bool,
        /// Only show image IDs.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Print sizes and dates in human-readable format.
        #[arg(short = 'H', long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        human: bool,
        /// The image.
        image: String,
    },
    /// Remove images.
    Rmi {
        /// Remove even if other names point at it.
        #[arg(short = 'f', long)]
        force: bool,
        /// The images.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Give an image another name.
    Tag {
        /// SOURCE_IMAGE[:TAG]
        source: String,
        /// TARGET_IMAGE[:TAG]
        target: String,
    },
    /// Container subcommands (`husk container prune`).
    Container {
        #[command(subcommand)]
        command: ContainerCommand,
    },
    /// System subcommands (`husk system df`).
    System {
        #[command(subcommand)]
        command: SystemCommand,
    },
    /// Image subcommands (`husk image inspect`, `husk image prune`).
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Log in to a registry.
    Login {
        /// User name.
        #[arg(short = 'u', long)]
        username: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// The registry (host[:port]).
        registry: String,
    },
    /// Log out from a registry.
    Logout {
        /// The registry (host[:port]).
        registry: String,
    },
    /// Show what kind of KVM this host has and what husk will do about it.
    Host,
    /// Pack a directory into an initramfs (newc cpio) for `husk boot`.
    PackInitramfs {
        /// The directory that becomes the guest's root.
        #[arg(long)]
        dir: PathBuf,
        /// Where to write the archive.
        #[arg(long, short = 'o')]
        output: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum ContainerCommand {
    /// Remove all stopped containers.
    Prune {
        /// Do not prompt for confirmation.
        #[arg(short = 'f', long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum SystemCommand {
    /// Show husk's disk usage.
    Df,
    /// Remove stopped containers, unused networks and dangling (with -a: unused) images.
    Prune {
        /// Remove all unused images, not just dangling ones.
        #[arg(short = 'a', long)]
        all: bool,
        /// Do not prompt for confirmation.
        #[arg(short = 'f', long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Remove unused images (dangling ones; with -a, all no container uses).
    Prune {
        /// Remove all unused images, not just dangling ones.
        #[arg(short = 'a', long)]
        all: bool,
        /// Do not prompt for confirmation.
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Show images' details as JSON.
    Inspect {
        /// The images.
        #[arg(required = true)]
        images: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
struct BootArgs {
    /// The guest kernel: an uncompressed vmlinux (preferred) or a bzImage.
    #[arg(long)]
    kernel: PathBuf,
    /// An initramfs (newc cpio) to give the guest.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Extra kernel command-line arguments, after husk's own.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, short = 'm', default_value_t = 128)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// The guest kernel's PVM compatibility mode.
    #[arg(long, value_enum, default_value_t = Compat::Auto)]
    pvm_compat: Compat,
    /// Stop the guest after this many seconds.
    #[arg(long)]
    timeout: Option<u64>,
    /// Share a host directory over virtio-fs: TAG=DIR, or TAG=DIR:ro for a
    /// read-only share; the guest mounts it with `mount -t virtiofs TAG
    /// /mnt`. Repeatable.
    #[arg(long = "share", value_name = "TAG=DIR[:ro]", value_parser = parse_share)]
    shares: Vec<FsShare>,
}

/// Parses `--share TAG=DIR[:ro]`.
fn parse_share(s: &str) -> Result<FsShare, String> {
    let (tag, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected TAG=DIR or TAG=DIR:ro"))?;
    let (dir, read_only) = match rest.strip_suffix(":ro") {
        Some(d) => (d, true),
        None => (rest.strip_suffix(":rw").unwrap_or(rest), false),
    };
    if tag.is_empty() || dir.is_empty() {
        return Err(format!("{s:?}: expected TAG=DIR or TAG=DIR:ro"));
    }
    Ok(FsShare {
        tag: tag.to_owned(),
        host_dir: PathBuf::from(dir),
        read_only,
        only: None,
        no_setid: true,
    })
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Compat {
    Auto,
    On,
    Off,
}

/// `husk boot`'s exit status when the guest kernel panicked.
const GUEST_PANIC_EXIT: u8 = 3;

fn boot(args: BootArgs) -> anyhow::Result<ExitCode> {
    let config = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline_extra: args.cmdline,
        mem_size: args
            .memory
            .checked_mul(1 << 20)
            .context("--memory is too large")?,
        vcpus: args.cpus,
        compat: match args.pvm_compat {
            Compat::Auto => CompatMode::Auto,
            Compat::On => CompatMode::On,
            Compat::Off => CompatMode::Off,
        },
        console: Box::new(std::io::stdout()),
        timeout: args.timeout.map(Duration::from_secs),
        vsock: None,
        fs: args.shares,
        net: None,
        exit: None,
    };
    let outcome = match husk_vmm::run(config) {
        Ok(o) => o,
        // A kernel panic is the guest's failure, not husk's: its own code.
        Err(e @ husk_vmm::VmmError::GuestPanic { .. }) => {
            print_error(&anyhow::Error::new(e));
            return Ok(ExitCode::from(GUEST_PANIC_EXIT));
        }
        Err(e) => return Err(anyhow::Error::new(e).context("cannot boot the guest")),
    };
    let secs = outcome.run_time.as_secs_f64();
    // A reboot is not a clean stop: the guest did not power off.
    match outcome.exit {
        GuestExit::PowerOff => {
            log::info!("guest powered off after {secs:.3} s");
            Ok(ExitCode::SUCCESS)
        }
        GuestExit::Reset => {
            log::warn!("guest rebooted after {secs:.3} s (it did not power off)");
            Ok(ExitCode::from(1))
        }
    }
}

fn pack_initramfs(dir: &std::path::Path, output: &std::path::Path) -> anyhow::Result<ExitCode> {
    let mut rd = husk_initramfs::Initramfs::new();
    rd.add_tree(dir, "")
        .with_context(|| format!("cannot pack {}", dir.display()))?;
    if !rd.contains("dev/console") {
        // The kernel opens /dev/console for init's standard streams.
        rd.char_dev("dev/console", 0o600, 5, 1)?;
    }
    let bytes = rd.to_bytes()?;
    std::fs::write(output, &bytes).with_context(|| format!("cannot write {}", output.display()))?;
    eprintln!("{}: {} bytes", output.display(), bytes.len());
    Ok(ExitCode::SUCCESS)
}

fn host() -> ExitCode {
    let kind = husk_vmm::host::detect();
    println!("host: {kind}");
    if kind.needs_pvm_compat() {
        println!(
            "guest kernels run with husk's PVM compatibility mode (husk.pvm=1); kernel mode is emulated, expect boots of minutes, not milliseconds"
        );
    }
    if kind == husk_vmm::HostKind::NoKvm {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// A hint for the errors users can fix themselves.
fn hint(err: &anyhow::Error) -> Option<&'static str> {
    if err.chain().any(|e| {
        matches!(
            e.downcast_ref::<husk_image::RegistryError>(),
            Some(husk_image::RegistryError::Tls { .. })
        )
    }) {
        return Some(
            "for a registry that speaks plain HTTP or has an unverifiable certificate: HUSK_INSECURE_REGISTRIES=host:port, or --tls-verify=false",
        );
    }
    err.chain()
        .find_map(|e| match e.downcast_ref::<VmmError>()? {
            VmmError::NoKvm => Some(
                "husk needs KVM; on a cloud VM, pick an instance type with nested virtualisation",
            ),
            VmmError::KvmPermission => Some("try: sudo usermod -aG kvm $USER, then log in again"),
            VmmError::KernelMissing(_) => {
                Some("build the guest kernel with: guest-kernel/build.sh")
            }
            VmmError::Vcpu(_) => {
                Some("run with --log-level debug and look at the console output above")
            }
            _ => None,
        })
}

/// Prints an error with its cause chain and a hint.
pub fn print_error(err: &anyhow::Error) {
    eprintln!("husk: error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    if let Some(h) = hint(err) {
        eprintln!("hint: {h}");
    }
}

fn main() -> ExitCode {
    // Called as an OCI runtime (husk-oci, husk-runc, husk oci ...).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(args) = oci::oci_args(&args) {
        return oci::main(args);
    }
    let cli = Cli::parse();
    let run_family = matches!(
        cli.command,
        Command::Run(_) | Command::Create(_) | Command::Start(_) | Command::Boot(_)
    );
    env_logger::Builder::new()
        .parse_filters(&cli.log_level)
        .format_target(false)
        .init();
    let root = cli.root.clone();
    let engine = || run::engine(root.clone());
    let result =
        match cli.command {
            Command::Boot(args) => boot(args),
            Command::Host => Ok(host()),
            Command::Run(args) => run::run(args, cli.root),
            Command::Build(args) => build::build(args, cli.root),
            Command::Create(args) => run::create(args, cli.root),
            Command::Start(args) => run::start(args, cli.root),
            Command::Attach(args) => run::attach(args, cli.root),
            Command::Exec(args) => run::exec(args, cli.root),
            Command::Monitor { attach, oci, id } => {
                let root = cli.root.unwrap_or_else(husk_image::Store::default_root);
                let code = if oci {
                    husk_runtime::monitor::run_oci(&root, &id)
                } else {
                    husk_runtime::monitor::run(&root, &id, attach)
                };
                Ok(ExitCode::from(code.clamp(0, 255) as u8))
            }
            Command::Stop { time, containers } => engine()
                .and_then(|e| containers::each(&containers, |n| e.stop(n, time).map(|_| ()))),
            Command::Restart { time, containers } => engine()
                .and_then(|e| containers::each(&containers, |n| e.restart(n, time).map(|_| ()))),
            Command::Kill { signal, containers } => engine().and_then(|e| {
                let signo = husk_runtime::engine::parse_signal(&signal)?;
                containers::each(&containers, |n| e.kill(n, signo))
            }),
            Command::Wait { containers } => engine().map(|e| {
                let mut failed = false;
                for n in &containers {
                    match e.wait(n) {
                        Ok(code) => println!("{code}"),
                        Err(err) => {
                            eprintln!("{}", run::daemon_error(&err));
                            failed = true;
                        }
                    }
                }
                if failed {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }),
            Command::Logs(args) => engine().and_then(|e| containers::logs(&e, &args)),
            Command::Pause { containers } => {
                engine().and_then(|e| containers::each(&containers, |n| e.pause(n)))
            }
            Command::Unpause { containers } => {
                engine().and_then(|e| containers::each(&containers, |n| e.unpause(n)))
            }
            Command::Network { command } => engine().and_then(|e| network::network(&e, command)),
            Command::Port { container, private } => {
                engine().and_then(|e| network::port(&e, &container, private.as_deref()))
            }
            Command::Top { container } => engine().and_then(|e| containers::top(&e, &container)),
            Command::Stats {
                no_stream,
                containers,
            } => engine().and_then(|e| containers::stats(&e, &containers, no_stream)),
            Command::Rename {
                container,
                new_name,
            } => engine().map(|e| match containers::one(e.rename(&container, &new_name)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(code) => code,
            }),
            Command::Ps(args) => engine().and_then(|e| containers::ps(&e, &args)),
            Command::Rm {
                force,
                containers: list,
            } => engine().and_then(|e| containers::each(&list, |n| e.remove(n, force).map(|_| ()))),
            Command::Inspect { names } => engine().and_then(|e| containers::inspect(&e, &names)),
            Command::Diff { container } => engine().and_then(|e| containers::diff(&e, &container)),
            Command::Pull { image, tls_verify } => {
                images::open_store(cli.root).and_then(|s| images::pull(&s, &image, tls_verify))
            }
            Command::Push { image, tls_verify } => {
                images::open_store(cli.root).and_then(|s| images::push(&s, &image, tls_verify))
            }
            Command::Load { input } => {
                images::open_store(cli.root).and_then(|s| images::load(&s, input))
            }
            Command::Save {
                output,
                images: list,
            } => images::open_store(cli.root).and_then(|s| images::save(&s, &list, output)),
            Command::Commit {
                change,
                message,
                author,
                container,
                name,
            } => images::open_store(cli.root).and_then(|s| {
                let cs = husk_runtime::container::ContainerStore::open(s.root())?;
                images::commit(&s, &cs, &container, name, &change, message, author)
            }),
            Command::Export { output, container } => images::open_store(cli.root).and_then(|s| {
                let cs = husk_runtime::container::ContainerStore::open(s.root())?;
                images::export(&s, &cs, &container, output)
            }),
            Command::Import { dir, name, cmd } => {
                images::open_store(cli.root).and_then(|s| images::import(&s, dir, &name, cmd))
            }
            Command::Images => images::open_store(cli.root).and_then(|s| images::images(&s)),
            Command::History {
                no_trunc,
                quiet,
                human,
                image,
            } => images::open_store(cli.root).and_then(|s| {
                let f = husk_image::HistoryFormat {
                    no_trunc,
                    quiet,
                    raw: !human,
                };
                images::history(&s, &image, f)
            }),
            Command::Rmi {
                force,
                images: list,
            } => images::open_store(cli.root).and_then(|s| {
                let containers = husk_runtime::container::ContainerStore::open(s.root())?;
                images::rmi(&s, &containers, &list, force)
            }),
            Command::Tag { source, target } => {
                images::open_store(cli.root).and_then(|s| images::tag(&s, &source, &target))
            }
            Command::Image {
                command: ImageCommand::Inspect { images: list },
            } => images::open_store(cli.root).and_then(|s| images::inspect(&s, &list)),
            Command::Image {
                command: ImageCommand::Prune { all, force },
            } => images::open_store(cli.root).and_then(|s| {
                let containers = husk_runtime::container::ContainerStore::open(s.root())?;
                images::image_prune(&s, &containers, all, force)
            }),
            Command::Container {
                command: ContainerCommand::Prune { force },
            } => engine().and_then(|e| images::container_prune(&e, force)),
            Command::System {
                command: SystemCommand::Prune { all, force },
            } => engine().and_then(|e| {
                let s = images::open_store(cli.root.clone())?;
                images::system_prune(&e, &s, all, force)
            }),
            Command::System {
                command: SystemCommand::Df,
            } => images::open_store(cli.root).and_then(|s| {
                let containers = husk_runtime::container::ContainerStore::open(s.root())?;
                images::system_df(&s, &containers)
            }),
            Command::Login {
                username,
                password_stdin,
                registry,
            } => images::open_store(cli.root)
                .and_then(|s| images::login(&s, &registry, username, password_stdin)),
            Command::Logout { registry } => {
                images::open_store(cli.root).and_then(|s| images::logout(&s, &registry))
            }
            Command::PackInitramfs { dir, output } => pack_initramfs(&dir, &output),
        };
    match result {
        Ok(code) => code,
        Err(err) => {
            print_error(&err);
            // Docker's: 125 for the run family's own failures, 1 otherwise.
            ExitCode::from(if run_family { 125 } else { 1 })
        }
    }
}
