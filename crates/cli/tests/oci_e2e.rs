//! husk as Docker's OCI runtime, end to end with real microVMs: the test
//! installs Debian's docker.io if missing, starts a dockerd of its own
//! (its own --data-root, --exec-root, --pidfile and socket; a developer's
//! Docker is untouched) with `--add-runtime husk=<husk oci>`, imports a
//! busybox image offline and checks, with `--runtime husk --network none`:
//! `uname -r` is the guest kernel's, exit codes, `-e` and `-w` pass through
//! (one container); `run -d`, `logs`, `top`, `exec` (output and exit
//! code), `stop` with a TERM trap, the exit code and `rm` (a second one).
//! Engine-mode networking (`-p`, user networks) is checked by hand so far,
//! not here: hence `--network none`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use husk_e2e::require_kvm;

const DOCKER: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";

/// A dockerd of the test's own, stopped when dropped.
struct Dockerd {
    dir: PathBuf,
    child: Child,
}

impl Dockerd {
    fn start(dir: &Path, runtime: &Path) -> Dockerd {
        Self::start_with(dir, runtime, false)
    }

    /// `iptables`: Docker's NAT and port rules on (user networks, `-p`).
    fn start_with(dir: &Path, runtime: &Path, iptables: bool) -> Dockerd {
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
            // default bridge and no iptables changes on the host.
            .args(["--storage-driver", "vfs", "--bridge", "none"])
            .arg(format!("--iptables={iptables}"))
            .arg(format!("--ip-masq={iptables}"))
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

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(DOCKER);
        c.arg("-H")
            .arg(format!("unix://{}", self.dir.join("docker.sock").display()))
            .args(args);
        c
    }

    fn docker(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    fn timed(&self, args: &[&str]) -> Output {
        let t = Instant::now();
        let o = self.docker(args);
        eprintln!(
            "docker {} -> {:?} in {:.1} s",
            args.join(" "),
            o.status.code(),
            t.elapsed().as_secs_f64()
        );
        o
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.timed(args);
        assert!(
            o.status.success(),
            "docker {args:?}: {:?}\nstdout: {}\nstderr: {}\ndockerd log tail: {}",
            o.status,
            text(&o.stdout),
            text(&o.stderr),
            self.log_tail()
        );
        text(&o.stdout)
    }

    fn log_tail(&self) -> String {
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
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Installs docker.io (which brings containerd and runc) if missing,
/// without starting the system's Docker service.
fn ensure_docker() {
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

#[test]
fn docker_runs_containers_in_husk_microvms() {
    require_kvm();
    let t0 = Instant::now();
    ensure_docker();
    let dir = husk_e2e::scratch("oci-docker");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The runtime Docker calls: `husk oci`, with the test's kernel and agent.
    let runtime = runtime_script(&dir);
    let d = Dockerd::start(&dir.join("d"), &runtime);

    // The image, offline: a busybox root directory as a tar.
    let tar = dir.join("busybox.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(husk_e2e::busybox_rootfs())
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    d.ok(&[
        "import",
        "-c",
        "ENV PATH=/bin",
        tar.to_str().unwrap(),
        "husk-bb",
    ]);

    // One VM: the guest's kernel, -e, -w and the exit code.
    let host = text(&Command::new("uname").arg("-r").output().unwrap().stdout);
    let o = d.timed(&[
        "run",
        "--rm",
        "--runtime",
        "husk",
        "--network",
        "none",
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        "husk-bb",
        "sh",
        "-c",
        "uname -r; echo $FOO; pwd; exit 3",
    ]);
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        o.status.code(),
        Some(3),
        "stdout: {out}\nstderr: {}\n{}",
        text(&o.stderr),
        d.log_tail()
    );
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        !lines[0].is_empty() && lines[0] != host.trim(),
        "guest kernel {out} vs host {host}"
    );
    assert_eq!(&lines[1..], ["bar", "/tmp"]);

    // A second: in the background, logs, top, exec, stop with a TERM trap.
    let id = d
        .ok(&[
            "run",
            "-d",
            "--runtime",
            "husk",
            "--network",
            "none",
            "husk-bb",
            "sh",
            "-c",
            "trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 1; done",
        ])
        .trim()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !d.ok(&["logs", &id]).contains("ready") {
        assert!(Instant::now() < deadline, "no 'ready' in the logs");
        std::thread::sleep(Duration::from_millis(500));
    }
    let top = d.ok(&["top", &id]);
    assert!(
        top.contains("__monitor"),
        "docker top lists the VM's monitor: {top}"
    );
    let o = d.timed(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo exec-ok; echo to-err >&2; exit 5",
    ]);
    assert_eq!(
        (
            o.status.code(),
            text(&o.stdout).trim(),
            text(&o.stderr).trim()
        ),
        (Some(5), "exec-ok", "to-err"),
        "{}",
        d.log_tail()
    );
    d.ok(&["stop", &id]);
    assert_eq!(d.ok(&["logs", &id]), "ready\ngot TERM\n");
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.ExitCode}}", &id]).trim(),
        "0"
    );
    d.ok(&["rm", &id]);
    assert!(d.ok(&["ps", "-aq"]).trim().is_empty());
    drop(d);
    eprintln!(
        "oci_e2e: docker_runs_containers_in_husk_microvms took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// The runtime script and the busybox image, for a dockerd in `dir`.
fn runtime_script(dir: &Path) -> PathBuf {
    let runtime = dir.join("husk-oci");
    std::fs::write(
        &runtime,
        format!(
            "#!/bin/sh\nexport HUSK_KERNEL={} HUSK_AGENT={}\nexec {} oci \"$@\"\n",
            husk_e2e::guest_kernel().display(),
            husk_e2e::agent_binary().display(),
            env!("CARGO_BIN_EXE_husk"),
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

#[test]
#[ignore = "written after session 5's CI run; the same steps passed by hand: run with --ignored, then drop this"]
fn docker_networks_reach_husk_microvms() {
    require_kvm();
    let t0 = Instant::now();
    ensure_docker();
    let dir = husk_e2e::scratch("oci-docker-net");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = runtime_script(&dir);
    let d = Dockerd::start_with(&dir.join("d"), &runtime, true);
    // A busybox root with a page to serve.
    let root = dir.join("root");
    let st = Command::new("cp")
        .arg("-a")
        .arg(husk_e2e::busybox_rootfs())
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::create_dir_all(root.join("www")).unwrap();
    std::fs::write(root.join("www/index.html"), "hello from a docker network\n").unwrap();
    let tar = dir.join("bb.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    d.ok(&[
        "import",
        "-c",
        "ENV PATH=/bin",
        tar.to_str().unwrap(),
        "husk-bb",
    ]);
    d.ok(&["network", "create", "--subnet", "172.31.252.0/24", "hknet"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publish = format!("{port}:80");
    let web = d
        .ok(&[
            "run",
            "-d",
            "--runtime",
            "husk",
            "--network",
            "hknet",
            "--name",
            "web",
            "-p",
            &publish,
            "husk-bb",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ])
        .trim()
        .to_string();
    // -p: a host GET through Docker's port forward to the guest.
    let url = format!("http://127.0.0.1:{port}/index.html");
    let deadline = Instant::now() + Duration::from_secs(120);
    let page = loop {
        let o = Command::new("busybox")
            .args(["wget", "-q", "-O", "-", &url])
            .output()
            .unwrap();
        if o.status.success() {
            break text(&o.stdout);
        }
        assert!(
            Instant::now() < deadline,
            "no answer on {url}: {}",
            d.log_tail()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(page, "hello from a docker network\n");
    // By name, through Docker's embedded DNS (127.0.0.11), relayed out of
    // the VM.
    let out = d.ok(&[
        "run",
        "--rm",
        "--runtime",
        "husk",
        "--network",
        "hknet",
        "husk-bb",
        "sh",
        "-c",
        "nslookup web 127.0.0.11 | grep -c 172.31.252.; wget -q -O - http://web/index.html",
    ]);
    assert_eq!(out, "1\nhello from a docker network\n");
    d.ok(&["rm", "-f", &web]);
    d.ok(&["network", "rm", "hknet"]);
    drop(d);
    eprintln!(
        "oci_e2e: docker_networks_reach_husk_microvms took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
