//! `husk` as an OCI runtime (runc's command line), for dockerd, containerd
//! and podman: called as `husk-oci` / `husk-runc` (a symlink to `husk`) or
//! as `husk oci ...`. This only parses and presents; the lifecycle is
//! `husk_runtime::oci`.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use husk_runtime::container::VmSettings;
use husk_runtime::oci::{CreateRequest, DEFAULT_ROOT, OciRuntime};

/// runc's global flags and commands.
#[derive(Parser, Debug)]
#[command(
    name = "husk-oci",
    disable_version_flag = true,
    about = "husk as an OCI runtime (runc's command line)"
)]
pub struct OciCli {
    /// Where container state lives.
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Append errors and warnings to this file (the engine reads it).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// The format of --log.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// linux.cgroupsPath is systemd's slice:prefix:name (expanded to the
    /// cgroup directory systemd would use; no unit is registered).
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Debug logging (and the guest console in each container's monitor.log).
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for compatibility (true, false, auto).
    #[arg(
        long,
        global = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    rootless: Option<String>,
    /// Print the version (runc's format).
    #[arg(short = 'v', long)]
    version: bool,
    #[command(subcommand)]
    command: Option<OciCommand>,
}

/// `--log-format`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    /// `time="..." level=error msg="..."`.
    Text,
    /// One JSON object per line: level, msg, time.
    Json,
}

#[derive(Subcommand, Debug)]
enum OciCommand {
    /// Create a container from a bundle (its VM boots; start runs the process).
    Create {
        /// The bundle directory.
        #[arg(short = 'b', long, default_value = ".")]
        bundle: PathBuf,
        /// Write the container's pid (its monitor) here.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Send the pty master here (with process.terminal).
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Accepted (there is no pivot_root on the host).
        #[arg(long)]
        no_pivot: bool,
        /// Accepted (no session keyring on the host).
        #[arg(long)]
        no_new_keyring: bool,
        /// Extra fds to pass (only 0 is supported).
        #[arg(long, default_value_t = 0)]
        preserve_fds: u32,
        /// The container id.
        id: String,
    },
    /// Run a created container's process.
    Start {
        /// The container id.
        id: String,
    },
    /// The container's state as JSON.
    State {
        /// The container id.
        id: String,
    },
    /// Send a signal to the container's process.
    Kill {
        /// Every process of the container (they are all in its VM).
        #[arg(short = 'a', long)]
        all: bool,
        /// The container id.
        id: String,
        /// The signal: a number or a name (TERM, SIGTERM).
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Remove a stopped container (--force: any).
    Delete {
        /// Kill and remove a running container.
        #[arg(short = 'f', long)]
        force: bool,
        /// The container id.
        id: String,
    },
    /// Run another process in a running container.
    Exec {
        /// The process as the spec's JSON.
        #[arg(short = 'p', long)]
        process: Option<PathBuf>,
        /// Return once it started; a proxy process (--pid-file) stands for it.
        #[arg(short = 'd', long)]
        detach: bool,
        /// Write the proxy's pid here.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Send the pty master here (with a terminal).
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Allocate a terminal (without --process).
        #[arg(short = 't', long)]
        tty: bool,
        /// Working directory (without --process).
        #[arg(long, default_value = "/")]
        cwd: String,
        /// Environment (without --process).
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Extra fds to pass (only 0 is supported).
        #[arg(long, default_value_t = 0)]
        preserve_fds: u32,
        /// The container id.
        id: String,
        /// The command (without --process).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// The container's host processes.
    Ps {
        /// table or json.
        #[arg(short = 'f', long, default_value = "table")]
        format: String,
        /// The container id.
        id: String,
    },
    /// Stop the container's VM.
    Pause {
        /// The container id.
        id: String,
    },
    /// Resume it.
    Resume {
        /// The container id.
        id: String,
    },
    /// What husk supports, as the spec's features JSON.
    Features,
    /// New limits for the VM's cgroup: CPU and pids apply at once; memory
    /// may grow, not shrink below what the VM booted with.
    Update {
        /// LinuxResources JSON (a file, or - for stdin).
        #[arg(short = 'r', long)]
        resources: Option<String>,
        /// Memory limit in bytes (k, m, g suffixes).
        #[arg(long)]
        memory: Option<String>,
        /// CPU shares (relative weight).
        #[arg(long = "cpu-share")]
        cpu_share: Option<u64>,
        /// CFS period, µs.
        #[arg(long)]
        cpu_period: Option<u64>,
        /// CFS quota, µs per period.
        #[arg(long, allow_hyphen_values = true)]
        cpu_quota: Option<i64>,
        /// CPUs to run on (0-3, 0,1).
        #[arg(long)]
        cpuset_cpus: Option<String>,
        /// Memory nodes to use.
        #[arg(long)]
        cpuset_mems: Option<String>,
        /// The most tasks (0 or -1: no limit).
        #[arg(long, allow_hyphen_values = true)]
        pids_limit: Option<i64>,
        /// The container id.
        id: String,
    },
    /// The proxy of a detached exec (started by `exec --detach`).
    #[command(name = "__exec-proxy", hide = true)]
    ExecProxy {
        /// The staged process.
        #[arg(long)]
        spec: PathBuf,
        /// Its pid file.
        #[arg(long)]
        pid_file: PathBuf,
        /// Its console socket.
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// The container id.
        id: String,
    },
}

/// The `log` sink of the OCI front end: the engine's `--log` file
/// (appended, one line per record, JSON or text).
struct FileLogger {
    file: Mutex<std::fs::File>,
    json: bool,
    level: log::LevelFilter,
}

impl log::Log for FileLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let line = log_line(self.json, r.level(), &r.args().to_string());
            let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
            let _ = f.write_all(line.as_bytes());
        }
    }
    fn flush(&self) {}
}

/// One line of `--log`: `{"level":"error","msg":"...","time":"..."}` or
/// logrus's text form.
fn log_line(json: bool, level: log::Level, msg: &str) -> String {
    let level = match level {
        log::Level::Error => "error",
        log::Level::Warn => "warning",
        log::Level::Info => "info",
        log::Level::Debug | log::Level::Trace => "debug",
    };
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let time = husk_runtime::engine::rfc3339(secs);
    if json {
        format!(
            "{}\n",
            serde_json::json!({ "level": level, "msg": msg, "time": time })
        )
    } else {
        format!("time={time:?} level={level} msg={msg:?}\n")
    }
}

/// Whether this process was called as the OCI runtime: argv[0]'s
/// basename `husk-oci` / `husk-runc`, or `husk oci ...`. Returns the
/// arguments for [`OciCli`].
pub fn oci_args(args: &[OsString]) -> Option<Vec<OsString>> {
    let base = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|b| b.to_str())?;
    if base == "husk-oci" || base == "husk-runc" {
        return Some(args.to_vec());
    }
    if args.get(1).is_some_and(|a| a == "oci") {
        let mut v = vec![OsString::from("husk-oci")];
        v.extend(args[2..].iter().cloned());
        return Some(v);
    }
    None
}

/// The OCI front end: parses, runs, reports errors on stderr and in
/// `--log`; exits 0 or 1 (or, for the exec proxy, the process's status).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let cli = match OciCli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let level = if cli.debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    };
    let json = cli.log_format == LogFormat::Json;
    let log_file = cli.log.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    // Without --log, husk's own warnings go nowhere: create's and exec's
    // stderr are the container's.
    if let Some(f) = &log_file
        && let Ok(file) = f.try_clone()
    {
        let _ = log::set_boxed_logger(Box::new(FileLogger {
            file: Mutex::new(file),
            json,
            level,
        }));
        log::set_max_level(level);
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            if let Some(mut f) = log_file {
                let _ = f.write_all(log_line(json, log::Level::Error, &msg).as_bytes());
            }
            eprintln!("husk-oci: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn version() {
    println!("husk version {}", env!("CARGO_PKG_VERSION"));
    println!(
        "commit: {}",
        option_env!("HUSK_COMMIT").unwrap_or("unknown")
    );
    println!("spec: {}", husk_runtime::oci::OCI_VERSION);
}

fn vm_settings(debug: bool) -> anyhow::Result<VmSettings> {
    let kernel =
        husk_runtime::agent::find_kernel(std::env::var_os("HUSK_KERNEL").map(PathBuf::from))?;
    let agent = husk_runtime::agent::find_agent(std::env::var_os("HUSK_AGENT").map(PathBuf::from))?;
    let abs = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
    Ok(VmSettings {
        kernel: abs(kernel),
        agent: abs(agent),
        boot_timeout_s: 600,
        kernel_args: String::new(),
        console: debug,
    })
}

/// The most a resources JSON may hold (a LinuxResources is a few hundred
/// bytes; the engine's input is not trusted with memory).
const MAX_RESOURCES_JSON: u64 = 1 << 20;

/// `update -r FILE` or `-r -` (stdin): a LinuxResources JSON.
fn read_resources(src: &str) -> anyhow::Result<oci_spec::runtime::LinuxResources> {
    use std::io::Read;
    let input: Box<dyn Read> = if src == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(src).with_context(|| format!("cannot open {src}"))?)
    };
    let mut text = String::new();
    input
        .take(MAX_RESOURCES_JSON + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read the resources from {src}"))?;
    if text.len() as u64 > MAX_RESOURCES_JSON {
        anyhow::bail!("the resources JSON from {src} is larger than {MAX_RESOURCES_JSON} bytes");
    }
    serde_json::from_str(&text)
        .with_context(|| format!("the resources from {src} are not a LinuxResources JSON"))
}

/// `--memory 300m`: bytes, with an optional k, m or g (binary) suffix and
/// an optional b, as runc takes it.
fn parse_bytes(s: &str) -> anyhow::Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, shift) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 10),
        Some('m') => (&t[..t.len() - 1], 20),
        Some('g') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    num.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| {
            anyhow::anyhow!("invalid memory size {s:?}: bytes, or a number with k, m or g")
        })
}

fn warn_all(warnings: Vec<String>) {
    for w in warnings {
        log::warn!("{w}");
    }
}

fn run(cli: OciCli) -> anyhow::Result<ExitCode> {
    if cli.version {
        version();
        return Ok(ExitCode::SUCCESS);
    }
    let Some(command) = cli.command else {
        anyhow::bail!(
            "no command given (create, start, state, kill, delete, exec, ps, pause, resume, features)"
        );
    };
    if let OciCommand::Features = command {
        println!("{:#}", husk_runtime::oci::features());
        return Ok(ExitCode::SUCCESS);
    }
    let root = cli
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
    let program = std::env::current_exe().context("cannot find the husk binary")?;
    let level = if cli.debug { "debug" } else { "info" };
    let rt = OciRuntime::open(&root, &program, level)?;
    match command {
        OciCommand::Create {
            bundle,
            pid_file,
            console_socket,
            no_pivot: _,
            no_new_keyring: _,
            preserve_fds,
            id,
        } => {
            if preserve_fds > 0 {
                anyhow::bail!(
                    "--preserve-fds {preserve_fds}: passing extra fds into a VM is not supported"
                );
            }
            let req = CreateRequest {
                bundle,
                pid_file,
                console_socket,
                systemd_cgroup: cli.systemd_cgroup,
                vm: vm_settings(cli.debug)?,
            };
            warn_all(rt.create(&id, &req)?);
        }
        OciCommand::Start { id } => warn_all(rt.start(&id)?),
        OciCommand::State { id } => println!("{:#}", rt.state(&id)?),
        OciCommand::Kill { all, id, signal } => {
            let signo = husk_runtime::engine::parse_signal(&signal)?;
            rt.kill(&id, signo, all)?;
        }
        OciCommand::Delete { force, id } => warn_all(rt.delete(&id, force)?),
        OciCommand::Pause { id } => rt.pause(&id)?,
        OciCommand::Resume { id } => rt.resume(&id)?,
        OciCommand::Ps { format, id } => {
            let pids = rt.ps(&id)?;
            match format.as_str() {
                "json" => println!("{}", serde_json::to_string(&pids)?),
                "table" => {
                    println!("PID");
                    for p in pids {
                        println!("{p}");
                    }
                }
                f => anyhow::bail!("invalid format {f:?}: table or json"),
            }
        }
        OciCommand::Update {
            resources,
            memory,
            cpu_share,
            cpu_period,
            cpu_quota,
            cpuset_cpus,
            cpuset_mems,
            pids_limit,
            id,
        } => {
            let mut r = match resources.as_deref() {
                Some(src) => read_resources(src)?,
                None => oci_spec::runtime::LinuxResources::default(),
            };
            if let Some(m) = memory {
                let bytes = parse_bytes(&m)?;
                let mut mem = (*r.memory()).unwrap_or_default();
                mem.set_limit(Some(bytes));
                r.set_memory(Some(mem));
            }
            if cpu_share.is_some()
                || cpu_period.is_some()
                || cpu_quota.is_some()
                || cpuset_cpus.is_some()
                || cpuset_mems.is_some()
            {
                let mut cpu = r.cpu().clone().unwrap_or_default();
                if cpu_share.is_some() {
                    cpu.set_shares(cpu_share);
                }
                if cpu_period.is_some() {
                    cpu.set_period(cpu_period);
                }
                if cpu_quota.is_some() {
                    cpu.set_quota(cpu_quota);
                }
                if cpuset_cpus.is_some() {
                    cpu.set_cpus(cpuset_cpus);
                }
                if cpuset_mems.is_some() {
                    cpu.set_mems(cpuset_mems);
                }
                r.set_cpu(Some(cpu));
            }
            if let Some(p) = pids_limit {
                let mut pids = oci_spec::runtime::LinuxPids::default();
                pids.set_limit(p);
                r.set_pids(Some(pids));
            }
            warn_all(rt.update(&id, &r)?)
        }
        OciCommand::Features => unreachable!("answered above"),
        OciCommand::Exec {
            process,
            detach,
            pid_file,
            console_socket,
            tty,
            cwd,
            env,
            preserve_fds,
            id,
            args,
        } => {
            if preserve_fds > 0 {
                anyhow::bail!(
                    "--preserve-fds {preserve_fds}: passing extra fds into a VM is not supported"
                );
            }
            let (bytes, what) = match &process {
                Some(p) => (
                    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
                    p.clone(),
                ),
                None => {
                    if args.is_empty() {
                        anyhow::bail!("exec needs --process FILE or a command");
                    }
                    let p = serde_json::json!({
                        "terminal": tty, "args": args, "env": env, "cwd": cwd,
                        "user": { "uid": 0, "gid": 0 },
                    });
                    (
                        p.to_string().into_bytes(),
                        PathBuf::from("the command line"),
                    )
                }
            };
            let spec = rt.exec_spec(&id, &bytes, &what)?;
            if detach {
                let pid_file = pid_file.context("exec --detach needs --pid-file")?;
                rt.exec_detached(&id, &spec, &pid_file, console_socket.as_deref(), cli.debug)?;
            } else {
                let (tx, rx) = std::sync::mpsc::channel();
                crate::term::forward_signals(tx, false)?;
                let code = rt.exec_process(
                    &id,
                    spec,
                    pid_file.as_deref(),
                    console_socket.as_deref(),
                    rx,
                )?;
                return Ok(ExitCode::from(code.clamp(0, 255) as u8));
            }
        }
        OciCommand::ExecProxy {
            spec,
            pid_file,
            console_socket,
            id,
        } => {
            let (tx, rx) = std::sync::mpsc::channel();
            crate::term::forward_signals(tx, false)?;
            let code = rt.exec_proxy(&id, &spec, &pid_file, console_socket.as_deref(), rx)?;
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> OciCli {
        OciCli::try_parse_from(args).unwrap()
    }

    #[test]
    fn called_as_a_runtime() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(oci_args(&os(&["/usr/local/bin/husk-oci", "state", "x"])).is_some());
        assert!(oci_args(&os(&["husk-runc", "--version"])).is_some());
        assert_eq!(
            oci_args(&os(&["husk", "oci", "state", "x"])).unwrap(),
            os(&["husk-oci", "state", "x"])
        );
        assert!(oci_args(&os(&["husk", "ps"])).is_none());
        assert!(oci_args(&os(&["/x/husk"])).is_none());
    }

    #[test]
    fn go_runc_create_parses() {
        // containerd's runc shim, in go-runc's order.
        let cli = parse(&[
            "husk-oci",
            "--root",
            "/var/run/docker/runtime-runc/moby",
            "--log",
            "/b/log.json",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/b/init.pid",
            "--console-socket",
            "/tmp/pty.sock",
            "--no-pivot",
            "--no-new-keyring",
            "abc",
        ]);
        assert_eq!(
            cli.root.as_deref(),
            Some(Path::new("/var/run/docker/runtime-runc/moby"))
        );
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(cli.systemd_cgroup);
        match cli.command {
            Some(OciCommand::Create {
                bundle,
                pid_file,
                console_socket,
                no_pivot,
                id,
                ..
            }) => {
                assert_eq!(bundle, Path::new("/b"));
                assert_eq!(pid_file.as_deref(), Some(Path::new("/b/init.pid")));
                assert_eq!(console_socket.as_deref(), Some(Path::new("/tmp/pty.sock")));
                assert!(no_pivot);
                assert_eq!(id, "abc");
            }
            other => panic!("{other:?}"),
        }
        // --rootless=true and a bare --rootless.
        assert_eq!(
            parse(&["husk-oci", "--rootless=true", "state", "x"])
                .rootless
                .as_deref(),
            Some("true")
        );
        assert_eq!(
            parse(&["husk-oci", "--rootless", "state", "x"])
                .rootless
                .as_deref(),
            Some("true")
        );
    }

    #[test]
    fn kill_exec_delete_ps_parse() {
        match parse(&["husk-oci", "kill", "--all", "abc", "9"]).command {
            Some(OciCommand::Kill { all, id, signal }) => {
                assert!(all);
                assert_eq!((id.as_str(), signal.as_str()), ("abc", "9"));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["husk-oci", "kill", "abc"]).command {
            Some(OciCommand::Kill { signal, .. }) => assert_eq!(signal, "TERM"),
            other => panic!("{other:?}"),
        }
        match parse(&[
            "husk-oci",
            "exec",
            "--process",
            "/tmp/p.json",
            "--detach",
            "--pid-file",
            "/b/e.pid",
            "abc",
        ])
        .command
        {
            Some(OciCommand::Exec {
                process,
                detach,
                pid_file,
                id,
                args,
                ..
            }) => {
                assert_eq!(process.as_deref(), Some(Path::new("/tmp/p.json")));
                assert!(detach && args.is_empty());
                assert_eq!(pid_file.as_deref(), Some(Path::new("/b/e.pid")));
                assert_eq!(id, "abc");
            }
            other => panic!("{other:?}"),
        }
        match parse(&["husk-oci", "delete", "--force", "abc"]).command {
            Some(OciCommand::Delete { force, id }) => assert!(force && id == "abc"),
            other => panic!("{other:?}"),
        }
        match parse(&["husk-oci", "ps", "--format", "json", "abc"]).command {
            Some(OciCommand::Ps { format, .. }) => assert_eq!(format, "json"),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["husk-oci", "--version"]).version);
    }

    #[test]
    fn update_sizes_parse_as_runc_takes_them() {
        assert_eq!(parse_bytes("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("300m").unwrap(), 300 << 20);
        assert_eq!(parse_bytes("2G").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("64kb").unwrap(), 64 << 10);
        for bad in ["", "m", "-1", "0", "1x", "99999999999999g"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn update_resources_json_is_bounded_and_checked() {
        let d = std::env::temp_dir().join(format!("husk-oci-res-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let ok = d.join("ok.json");
        std::fs::write(
            &ok,
            r#"{"memory":{"limit":314572800},"cpu":{"shares":512,"quota":50000,"period":100000},"pids":{"limit":100}}"#,
        )
        .unwrap();
        let r = read_resources(ok.to_str().unwrap()).unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(314_572_800));
        assert_eq!(r.cpu().as_ref().unwrap().shares(), Some(512));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 100);
        let bad = d.join("bad.json");
        std::fs::write(&bad, r#"{"memory":{"limit":"lots"}}"#).unwrap();
        assert!(read_resources(bad.to_str().unwrap()).is_err());
        let big = d.join("big.json");
        std::fs::write(&big, vec![b' '; (MAX_RESOURCES_JSON + 10) as usize]).unwrap();
        let e = read_resources(big.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        assert!(read_resources(d.join("none.json").to_str().unwrap()).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn log_lines_are_what_the_shim_parses() {
        let line = log_line(true, log::Level::Error, "container \"x\" does not exist");
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container \"x\" does not exist");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        let text = log_line(false, log::Level::Warn, "w");
        assert!(text.contains("level=warning msg=\"w\""), "{text}");
    }
}
