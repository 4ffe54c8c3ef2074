//! Fixtures for husk's end-to-end tests: the guest kernel (built once per
//! machine by guest-kernel/build.sh), static guest programs compiled with the
//! host's gcc, and booting a guest with its console captured.
//!
//! These tests need `/dev/kvm` (as root or the kvm group), gcc, and the
//! kernel's build dependencies; `.ci/run` installs all of them. Where a
//! requirement is missing they fail and say what to install: they are never
//! skipped quietly.

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
/// with what is missing.
pub fn require_kvm() {
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

/// Boots `kernel` with `initrd` and captures the console.
pub fn boot(kernel: &Path, initrd: &Path, cmdline: &str, timeout: Duration) -> Boot {
    let console = Console::default();
    let result = husk_vmm::run(VmConfig {
        kernel: kernel.to_owned(),
        initrd: Some(initrd.to_owned()),
        cmdline_extra: cmdline.to_owned(),
        mem_size: 128 << 20,
        vcpus: 1,
        compat: CompatMode::Auto,
        console: Box::new(console.clone()),
        timeout: Some(timeout),
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
