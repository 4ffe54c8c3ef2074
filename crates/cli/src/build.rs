//! `husk build`: parses the flags and prints Docker's classic progress; the
//! builder is `husk_build`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use husk_build::{BuildError, BuildOptions, Builder, Event, Network, Progress};

use crate::run::VmArgs;

/// `husk build` flags.
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Name and optionally a tag (NAME[:TAG]); repeatable.
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Set a build-time variable (KEY=VALUE, or KEY to take it from here).
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// The stage to build (default: the last).
    #[arg(long)]
    pub target: Option<String>,
    /// Do not use the build cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Set a label on the image (KEY=VALUE).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Print only the image id.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Networking of RUN steps: default (the default network, through
    /// passt, as Docker's builder has one) or none (loopback only).
    #[arg(long, value_enum, default_value_t = NetworkArg::Default)]
    pub network: NetworkArg,
    /// Guest memory of RUN steps, MiB.
    #[arg(short = 'm', long = "memory", default_value_t = 256)]
    pub memory: u64,
    /// vCPUs of RUN steps.
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,
    #[command(flatten)]
    pub vm: VmArgs,
    /// The build context (a directory).
    pub context: PathBuf,
}

/// `--network`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum NetworkArg {
    /// Loopback only.
    None,
    /// The default network (user-mode, through passt).
    Default,
}

/// Docker's classic output: steps and their results on stdout, the steps'
/// own stderr on stderr.
struct Classic {
    quiet: bool,
}

impl Progress for Classic {
    fn event(&self, e: Event<'_>) {
        if self.quiet {
            if let Event::Warning(w) = e {
                eprintln!("[Warning] {w}");
            }
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = match e {
            Event::Step { n, total, text } => writeln!(out, "Step {n}/{total} : {text}"),
            Event::UsingCache => writeln!(out, " ---> Using cache"),
            Event::Running(id) => writeln!(out, " ---> Running in {id}"),
            Event::Output {
                stderr: false,
                data,
            } => out.write_all(data),
            Event::Output { stderr: true, data } => {
                let _ = out.flush();
                std::io::stderr().write_all(data)
            }
            Event::Removed(id) => writeln!(out, "Removing intermediate container {id}"),
            Event::Image(id) => writeln!(out, " ---> {}", &id.hex()[..12]),
            Event::Warning(w) => {
                let _ = out.flush();
                writeln!(std::io::stderr(), "[Warning] {w}")
            }
            // Events added later are not shown.
            #[allow(unreachable_patterns)]
            _ => Ok(()),
        };
        let _ = out.flush();
    }
}

/// `husk build`: exits with a failed RUN step's code, 1 for other failures.
pub fn build(args: BuildArgs, root: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let engine = crate::run::engine(root)?;
    let vm = crate::run::vm_settings(&args.vm)?;
    // Ctrl-C and SIGTERM stop the build: the running step's container is
    // killed and removed, nothing is tagged.
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    crate::term::forward_signals(tx, false)?;
    {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            if rx.recv().is_ok() {
                cancel.store(true, Ordering::SeqCst);
            }
        });
    }
    let opts = BuildOptions {
        context: args.context.clone(),
        dockerfile: args.file.clone(),
        tags: args.tags.clone(),
        build_args: args.build_args.clone(),
        target: args.target.clone(),
        no_cache: args.no_cache,
        labels: args.labels.clone(),
        network: match args.network {
            NetworkArg::None => Network::None,
            NetworkArg::Default => Network::Default,
        },
        memory_mib: args.memory,
        cpus: args.cpus,
        vm,
        cancel: Some(cancel),
    };
    let builder = Builder::new(&engine).context("cannot open the build cache")?;
    let progress = Classic { quiet: args.quiet };
    let pull: Box<dyn husk_image::Progress> = if args.quiet {
        Box::new(husk_image::NoProgress)
    } else {
        Box::new(husk_image::StderrProgress::new())
    };
    match builder.build(&opts, &progress, pull.as_ref()) {
        Ok(built) => {
            if args.quiet {
                println!("{}", built.image.id);
            } else {
                println!("Successfully built {}", &built.image.id.hex()[..12]);
                for t in &built.tags {
                    println!("Successfully tagged {}", tagged(t));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ BuildError::RunFailed { .. }) => {
            let code = e.exit_code();
            crate::print_error(&anyhow::Error::new(e));
            Ok(ExitCode::from(code.clamp(1, 255) as u8))
        }
        Err(e) => Err(anyhow::Error::new(e).context("the build failed")),
    }
}

/// `name` as Docker prints it after a build (`app:latest`).
fn tagged(name: &str) -> String {
    husk_image::Reference::parse(name).map_or_else(|_| name.to_string(), |r| r.familiar())
}
