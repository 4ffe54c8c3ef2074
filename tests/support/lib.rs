//! Fixtures for husk's end-to-end tests: the guest kernel (built once per
//! machine by guest-kernel/build.sh), static guest programs compiled with the
//! host's gcc, and booting a guest with its console captured.
//!
//! These tests need `/dev/kvm` (as root or the kvm group), gcc, and the
//! kernel's build dependencies; `.ci/run` installs all of them. Where a
//! requirement is missing they fail and say what to install: they are never
//! skipped quietly.

pub mod engines;
pub mod pty;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub use husk_initramfs::Initramfs;
use husk_vmm::{CompatMode, VmConfig, VmOutcome, VmmError};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// A scratch directory for one test, under the target directory.
pub fn scratch(name: &str) -> PathBuf {
    let d = repo_root()
        .join("target")
        .join("e2e")
        .join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// The guest kernel: `$HUSK_KERNEL` if set, else built (or found in the
/// cache) by guest-kernel/build.sh. The first call can take minutes.
pub fn guest_kernel() -> PathBuf {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            if let Some(k) = std::env::var_os("HUSK_KERNEL") {
                return PathBuf::from(k);
            }
            let script = repo_root().join("guest-kernel/build.sh");
            eprintln!(
                "e2e: building or finding the guest kernel with {}",
                script.display()
            );
            let out = Command::new("bash")
                .arg(&script)
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("run guest-kernel/build.sh");
            assert!(
                out.status.success(),
                "guest-kernel/build.sh failed (see its output above)"
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            PathBuf::from(
                stdout
                    .lines()
                    .last()
                    .expect("build.sh prints the kernel path")
                    .trim(),
            )
        })
        .clone()
}

/// Checks that this machine can run guests, failing loudly (not skipping)
/// with what is missing. Also sends husk's own warnings, and the vsock
/// device's debug messages (why it reset a connection), to the test's
/// output, which the harness shows only for a failing test: an intermittent
/// "agent closed the connection" then names its cause.
pub fn require_kvm() {
    let _ = env_logger::Builder::new()
        .parse_filters(
            &std::env::var("HUSK_LOG")
                .unwrap_or_else(|_| "warn,husk_devices::virtio::vsock=debug".into()),
        )
        .is_test(true)
        .try_init();
    let kvm = Path::new("/dev/kvm");
    assert!(
        kvm.exists(),
        "/dev/kvm does not exist: these end-to-end tests boot real guests and need KVM (CI machines have it)"
    );
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(kvm) {
        panic!("cannot open /dev/kvm ({e}): run the tests as root or in the kvm group");
    }
}

/// Compiles `src` (C) into a static executable at `out` with the host's gcc.
pub fn compile_static_c(src: &Path, out: &Path) {
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(out)
        .arg(src)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run gcc ({e}); install it with apt-get install gcc libc6-dev")
        });
    assert!(status.success(), "gcc failed to build {}", src.display());
}

/// `tests/guest/init.c` built static, packed with the file it reads into an
/// initramfs in `dir`; returns the archive's path. Shared by the boot test
/// and the boot benchmark.
pub fn test_init_initramfs(dir: &Path) -> PathBuf {
    let init = dir.join("init");
    compile_static_c(&repo_root().join("tests/guest/init.c"), &init);
    let mut rd = Initramfs::new();
    rd.file_from("init", 0o755, &init).unwrap();
    rd.file(
        "etc/husk-test.txt",
        0o644,
        b"hello from the initramfs\n".to_vec(),
    )
    .unwrap();
    rd.char_dev("dev/console", 0o600, 5, 1).unwrap();
    let initrd = dir.join("initrd.cpio");
    std::fs::write(&initrd, rd.to_bytes().unwrap()).unwrap();
    initrd
}

/// A console sink the test can read while the guest writes.
#[derive(Clone, Default, Debug)]
pub struct Console(Arc<Mutex<Vec<u8>>>);

impl Console {
    /// Everything the guest printed so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        if std::env::var_os("HUSK_E2E_CONSOLE").is_some() {
            let _ = std::io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a boot produced.
#[derive(Debug)]
pub struct Boot {
    /// The VMM's result.
    pub result: Result<VmOutcome, VmmError>,
    /// The serial console's output.
    pub console: String,
}

/// Boots `kernel` with `initrd` on `vcpus` vCPUs and captures the console.
pub fn boot(kernel: &Path, initrd: &Path, cmdline: &str, vcpus: u8, timeout: Duration) -> Boot {
    let console = Console::default();
    let result = husk_vmm::run(VmConfig {
        kernel: kernel.to_owned(),
        initrd: Some(initrd.to_owned()),
        cmdline_extra: cmdline.to_owned(),
        mem_size: 128 << 20,
        vcpus,
        compat: CompatMode::Auto,
        console: Box::new(console.clone()),
        timeout: Some(timeout),
        vsock: None,
        fs: Vec::new(),
        net: None,
        exit: None,
    });
    Boot {
        result,
        console: console.text(),
    }
}

/// The kernel's printk timestamp (seconds) on the first console line that
/// contains `needle`.
pub fn printk_time(console: &str, needle: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(needle))?;
    let inner = line.trim_start().strip_prefix('[')?.split(']').next()?;
    inner.trim().parse().ok()
}

/// The guest agent, built static (glibc, crt-static) for the guest:
/// `$HUSK_AGENT` if set, else built once per test process with cargo into
/// `target/agent`.
pub fn agent_binary() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            if let Some(a) = std::env::var_os("HUSK_AGENT") {
                return PathBuf::from(a);
            }
            let root = repo_root();
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(&root)
                .env("RUSTFLAGS", AGENT_RUSTFLAGS)
                .args([
                    "build",
                    "-q",
                    "--release",
                    "-p",
                    "husk-agent",
                    "--target",
                    AGENT_TARGET,
                    "--target-dir",
                ])
                .arg(root.join("target/agent"))
                .status()
                .expect("run cargo to build the guest agent");
            assert!(status.success(), "building the guest agent failed");
            root.join("target/agent")
                .join(AGENT_TARGET)
                .join("release/husk-agent")
        })
        .clone()
}

/// The agent's target: the host's, linked statically (`--target` keeps the
/// flags off build scripts and proc macros).
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";
/// Static, without debug info (the initramfs is unpacked by the guest
/// kernel, which is slow where it is emulated).
pub const AGENT_RUSTFLAGS: &str = "-C target-feature=+crt-static -C debuginfo=0 -C strip=symbols";

/// A container root with Debian's static busybox as `/bin/busybox` and a
/// symlink for each of its applets, built once per test process.
pub fn busybox_rootfs() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let bb = Path::new("/bin/busybox");
        assert!(
            bb.exists(),
            "/bin/busybox is missing: install it with apt-get install busybox-static"
        );
        let root = scratch("busybox-rootfs");
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for d in ["etc", "tmp", "root"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy(bb, bin.join("busybox")).unwrap();
        let list = Command::new(bb)
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" && !applet.is_empty() {
                let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
            }
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
        root
    })
    .clone()
}

/// A sandbox configuration for tests: the test kernel, agent and `rootfs`.
pub fn sandbox_config(name: &str, rootfs: &Path) -> husk_runtime::SandboxConfig {
    husk_runtime::SandboxConfig {
        kernel: guest_kernel(),
        agent: agent_binary(),
        rootfs: Some(rootfs.to_owned()),
        rootfs_via: husk_runtime::RootfsVia::VirtioFs,
        volumes: Vec::new(),
        upper: None,
        tmpfs: Vec::new(),
        mem_size: 128 << 20,
        vcpus: 1,
        dir: scratch(name),
        console_log: None,
        boot_timeout: Duration::from_secs(600),
        cmdline_extra: String::new(),
        console_to_stderr: std::env::var_os("HUSK_E2E_CONSOLE").is_some(),
        cancel: None,
        hostname: None,
        net: None,
    }
}

/// A stream sink the test can read while a process writes to it.
#[derive(Clone, Default, Debug)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// The bytes so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
    /// The bytes so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    /// How many bytes so far.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    /// Whether nothing arrived yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Waits until the text contains `needle`, at most `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let end = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < end {
            if self.text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `husk run`/`create` arguments for a test container: the test kernel and
/// agent, 128 MiB, and the busybox root directory (`--rootfs`).
pub fn husk_vm_args() -> Vec<String> {
    vec![
        "--kernel".into(),
        guest_kernel().display().to_string(),
        "--agent".into(),
        agent_binary().display().to_string(),
        "-m".into(),
        "128".into(),
        "--rootfs".into(),
        busybox_rootfs().display().to_string(),
    ]
}

/// The `husk` binary driven as a user types it, on a store of its own
/// (`--root`), printing each command's exit status and duration.
#[derive(Debug)]
pub struct Cli {
    /// The `husk` binary.
    pub bin: PathBuf,
    /// The store root.
    pub root: PathBuf,
}

impl Cli {
    /// A fresh store named `name` under target/e2e for binary `bin` (the
    /// CLI crate's tests pass `env!("CARGO_BIN_EXE_husk")`).
    pub fn new(bin: &str, name: &str) -> Cli {
        let root = scratch(name);
        let _ = std::fs::remove_dir_all(&root);
        Cli {
            bin: PathBuf::from(bin),
            root,
        }
    }

    /// `husk --root ROOT ARGS...`, not yet run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root).args(args);
        c
    }

    /// Runs it with stdin from /dev/null.
    pub fn out(&self, args: &[&str]) -> std::process::Output {
        timed_output("husk", args, &mut self.cmd(args))
    }

    /// stdout of a command that must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        succeeded("husk", args, &self.out(args), "")
    }

    /// `husk run [-d] VM-ARGS EXTRA... -- CMD...` with [`husk_vm_args`].
    pub fn run_args(detach: bool, extra: &[&str], cmd: &[&str]) -> Vec<String> {
        let mut a = vec!["run".to_string()];
        if detach {
            a.push("-d".into());
        }
        a.extend(husk_vm_args());
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push("--".into());
        a.extend(cmd.iter().map(|s| s.to_string()));
        a
    }

    /// What a failing check should quote about container `name`: its
    /// `ps`, `logs`, and the last lines of its monitor log, guest console
    /// and passt log (found by the id `inspect` gives).
    pub fn diagnose(&self, name: &str) -> String {
        let run = |args: &[&str]| match self.cmd(args).output() {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("cannot run husk {args:?}: {e}"),
        };
        let mut out = format!(
            "--- husk ps -a\n{}--- husk logs {name}\n{}",
            run(&["ps", "-a"]),
            run(&["logs", name])
        );
        let inspect = run(&["inspect", name]);
        let id = inspect
            .split_once("\"Id\"")
            .and_then(|(_, rest)| rest.split('"').nth(1))
            .unwrap_or("unknown");
        let dir = self.root.join("containers").join(id);
        for file in ["monitor.log", "console.log", "passt.log"] {
            let body = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| format!("({e})"));
            let lines: Vec<&str> = body.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            out.push_str(&format!("--- last lines of {file}\n{tail}\n"));
        }
        out
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        // No container of a test outlives it.
        if let Ok(o) = Command::new(&self.bin)
            .arg("--root")
            .arg(&self.root)
            .args(["ps", "-aq"])
            .output()
        {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new(&self.bin)
                    .arg("--root")
                    .arg(&self.root)
                    .args(["rm", "-f", id])
                    .output();
            }
        }
    }
}

/// Runs `cmd` (`tool args...`) with stdin from /dev/null, printing its
/// exit status and how long it took.
pub fn timed_output(tool: &str, args: &[&str], cmd: &mut Command) -> std::process::Output {
    let t = std::time::Instant::now();
    let o = cmd.stdin(std::process::Stdio::null()).output().unwrap();
    eprintln!(
        "{tool} {} -> {:?} in {:.2} s",
        args.join(" "),
        o.status.code(),
        t.elapsed().as_secs_f64()
    );
    o
}

/// The stdout of `o`, which must have succeeded: else the test fails with
/// the command, its status, stdout, stderr and `context`.
pub fn succeeded(tool: &str, args: &[&str], o: &std::process::Output, context: &str) -> String {
    assert!(
        o.status.success(),
        "{tool} {args:?}: {:?}\nstdout: {}\nstderr: {}{context}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The processes (pid and command line) whose command line contains
/// `needle`, this one aside.
pub fn processes_matching(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == me || !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                v.push(format!("{name} {c}"));
            }
        }
    }
    v.sort();
    v
}

/// The release `husk` binary for benchmarks: `$HUSK_BIN`, else
/// `target/release/husk`, built first.
pub fn release_husk_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HUSK_BIN") {
        return p.into();
    }
    let root = repo_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "husk-cli"])
        .current_dir(&root)
        .status()
        .expect("cargo build husk");
    assert!(status.success(), "building husk failed");
    root.join("target/release/husk")
}
