//! The `husk` command.

mod run;
mod term;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use husk_vmm::{CompatMode, GuestExit, VmConfig, VmmError};

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a kernel and initramfs and stream the guest's serial console (for debugging).
    Boot(BootArgs),
    /// Run a command in a new container, in its own microVM.
    Run(run::RunArgs),
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
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Compat {
    Auto,
    On,
    Off,
}

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
        exit: None,
    };
    let outcome = husk_vmm::run(config).context("cannot boot the guest")?;
    let what = match outcome.exit {
        GuestExit::PowerOff => "powered off",
        GuestExit::Reset => "rebooted",
    };
    log::info!("guest {what} after {:.3} s", outcome.run_time.as_secs_f64());
    Ok(ExitCode::SUCCESS)
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .parse_filters(&cli.log_level)
        .format_target(false)
        .init();
    let result = match cli.command {
        Command::Boot(args) => boot(args),
        Command::Host => Ok(host()),
        Command::Run(args) => run::run(args),
        Command::PackInitramfs { dir, output } => pack_initramfs(&dir, &output),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("husk: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if let Some(h) = hint(&err) {
                eprintln!("hint: {h}");
            }
            ExitCode::from(125)
        }
    }
}
