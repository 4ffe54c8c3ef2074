//! The container engines husk plugs into, for end-to-end tests and
//! benchmarks: a dockerd of the caller's own (its own --data-root,
//! --exec-root, --pidfile and socket; a developer's Docker is untouched)
//! with husk added as a runtime, Podman with its own storage, and the
//! runtime script both call. Debian's packages are installed when missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";

/// A dockerd of the test's own, stopped when dropped.
#[derive(Debug)]
pub struct Dockerd {
    dir: PathBuf,
    child: Child,
}

impl Dockerd {
    pub fn start(dir: &Path, runtime: &Path) -> Dockerd {
        Self::start_with(dir, runtime, &[])
    }

    /// With more dockerd flags: `--iptables=true --ip-masq=true` for
    /// Docker's NAT and port rules (user networks, `-p`), `--default-runtime
    /// husk` for `docker build`.
    pub fn start_with(dir: &Path, runtime: &Path, extra: &[&str]) -> Dockerd {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new(DOCKERD)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .arg("--add-runtime")
            .arg(format!("husk={}", runtime.display()))
            // A plain directory per container (no overlay-on-overlay), no
            // default bridge and, unless `extra` says, no iptables changes
            // on the host (a later flag wins).
            .args(["--storage-driver", "vfs", "--bridge", "none"])
            .args(["--iptables=false", "--ip-masq=false"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let d = Dockerd {
            dir: dir.to_owned(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.docker(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not come up: {}",
                std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        d
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(DOCKER);
        c.arg("-H")
            .arg(format!("unix://{}", self.dir.join("docker.sock").display()))
            .args(args);
        c
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    pub fn timed(&self, args: &[&str]) -> Output {
        crate::timed_output("docker", args, &mut self.cmd(args))
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.timed(args);
        let context = if o.status.success() {
            String::new()
        } else {
            format!("\ndockerd log tail: {}", self.log_tail())
        };
        crate::succeeded("docker", args, &o, &context)
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM: dockerd stops its containerd (and kills containers).
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut stopped = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                stopped = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A failed test leaves its containers running: their shims outlive
        // dockerd by design, and each holds a husk monitor (a VM). Everything
        // started under this daemon's exec root goes with it.
        let exec_root = self.dir.join("exec").display().to_string();
        for p in crate::processes_matching(&exec_root) {
            if let Some(pid) = p.split_whitespace().next() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Installs docker.io (which brings containerd and runc) if missing,
/// without starting the system's Docker service.
pub fn ensure_docker() {
    if Path::new(DOCKERD).exists() && Path::new(DOCKER).exists() {
        return;
    }
    eprintln!("installing docker.io");
    let st = Command::new("sh")
        .arg("-c")
        .arg(
            "export DEBIAN_FRONTEND=noninteractive; \
             printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d; \
             (apt-get install -y -qq --no-install-recommends docker.io || \
              (apt-get update -qq && apt-get install -y -qq --no-install-recommends docker.io)) >/dev/null; \
             rc=$?; rm -f /usr/sbin/policy-rc.d; exit $rc",
        )
        .status()
        .expect("run apt-get");
    assert!(st.success(), "installing docker.io failed");
}

/// The runtime an engine calls, in `dir`: `husk oci` with the tests'
/// kernel and agent (`husk`: the binary under test).
pub fn runtime_script(dir: &Path, husk: &Path) -> PathBuf {
    let runtime = dir.join("husk-oci");
    std::fs::write(
        &runtime,
        format!(
            "#!/bin/sh\nexport HUSK_KERNEL={} HUSK_AGENT={}\nexec {} oci \"$@\"\n",
            crate::guest_kernel().display(),
            crate::agent_binary().display(),
            husk.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &runtime,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    runtime
}

/// Installs Debian's podman (with conmon and its network stack) if
/// missing.
pub fn ensure_podman() {
    if Path::new("/usr/bin/podman").exists() {
        return;
    }
    eprintln!("installing podman");
    let st = Command::new("sh")
        .arg("-c")
        .arg(
            "export DEBIAN_FRONTEND=noninteractive; \
             (apt-get install -y -qq --no-install-recommends podman || \
              (apt-get update -qq && apt-get install -y -qq --no-install-recommends podman)) >/dev/null",
        )
        .status()
        .expect("run apt-get");
    assert!(st.success(), "installing podman failed");
}

/// Podman 4.3 (Debian's, through conmon) with `--runtime` husk: its own
/// storage and run directories under the test's scratch directory, the
/// cgroupfs manager (no systemd here), `--network none`. podman calls
/// `state` with no `--root`: husk's default root serves it.
#[derive(Debug)]
pub struct Podman {
    /// Its storage and run directories are under this.
    pub dir: PathBuf,
    /// The runtime podman calls.
    pub runtime: PathBuf,
}

impl Podman {
    pub fn cmd(&self, args: &[&str]) -> Output {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .arg("--runtime")
            .arg(&self.runtime)
            .args(args);
        crate::timed_output("podman", args, &mut c)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        crate::succeeded("podman", args, &self.cmd(args), "")
    }
}

/// Packs directory `src` into the tar `tar` (an image for `docker import`
/// or `podman import`).
pub fn tar_dir(src: &Path, tar: &Path) {
    let st = Command::new("tar")
        .arg("-C")
        .arg(src)
        .arg("-cf")
        .arg(tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(
        st.success(),
        "tar -C {} -cf {}",
        src.display(),
        tar.display()
    );
}
