//! husk as Docker's OCI runtime, end to end with real microVMs: the test
//! installs Debian's docker.io if missing, starts a dockerd of its own
//! (its own --data-root, --exec-root, --pidfile and socket; a developer's
//! Docker is untouched) with `--add-runtime husk=<husk oci>`, imports a
//! busybox image offline and checks, with `--runtime husk --network none`:
//! `uname -r` is the guest kernel's, exit codes, `-e`, `-w`, `-u`, a volume
//! both ways and `--read-only` pass through (one container); `docker
//! build`; `run -d`, `logs`, `top`, `exec` (output and exit code), `exec
//! -t`, `exec -it` from the test's pty (typing, size, resize), `update`,
//! `stop` with a TERM trap, the exit code and `rm` (a second one, run with
//! `-t` (a pty through --console-socket) and `--memory`: its monitor is in
//! the container's cgroup and `docker stats` shows the limit, and the
//! cgroup goes with `rm`); `run -it` from a pty, `pause`/`unpause` and
//! `kill` (a third). A second test
//! runs Docker with iptables: a user network, `-p` and the embedded DNS;
//! a third Podman 4.3 through conmon (run attached and `-d`, exec, the
//! cgroup and `podman stats`, stop, rm); a fourth containerd through
//! `ctr run --runc-binary`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use husk_e2e::engines::{Dockerd, Podman, ensure_docker, ensure_podman, text};
use husk_e2e::pty::Pty;
use husk_e2e::require_kvm;

/// A fresh scratch directory `name` for one engine test, and in it the
/// runtime the engine calls: `husk oci` (the husk under test, or
/// `$HUSK_E2E_HUSK`: a copy that a rebuild cannot change under a running
/// test) with the tests' kernel and agent.
fn engine_dir(name: &str) -> (PathBuf, PathBuf) {
    let dir = husk_e2e::scratch(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let husk = std::env::var_os("HUSK_E2E_HUSK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_husk")));
    let runtime = husk_e2e::engines::runtime_script(&dir, &husk);
    (dir, runtime)
}

/// Types `line` and Enter into `t` every few seconds until `needle` shows
/// up after it (an exec starts, and a resize reaches the guest,
/// asynchronously), for up to 180 s.
fn until_shown(t: &Pty, line: &str, needle: &str, d: &Dockerd) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let mark = t.len();
        t.write(&format!("{line}\r"));
        if t.wait_for(mark, needle, Duration::from_secs(3)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "typed {line:?}, never saw {needle:?}: {}\n{}",
            t.text(),
            d.log_tail()
        );
    }
}

#[test]
fn docker_runs_containers_in_husk_microvms() {
    require_kvm();
    let t0 = Instant::now();
    ensure_docker();
    let (dir, runtime) = engine_dir("oci-docker");
    // husk is also the default runtime, for `docker build`'s RUN steps.
    let d = Dockerd::start_with(&dir.join("d"), &runtime, &["--default-runtime", "husk"]);

    // The image, offline: a busybox root directory as a tar.
    let tar = dir.join("busybox.tar");
    husk_e2e::engines::tar_dir(&husk_e2e::busybox_rootfs(), &tar);
    d.ok(&[
        "import",
        "-c",
        "ENV PATH=/bin",
        tar.to_str().unwrap(),
        "husk-bb",
    ]);

    // One VM: the guest's kernel, -e, -w, -u, a volume both ways, a
    // read-only root and the exit code.
    let host = text(&Command::new("uname").arg("-r").output().unwrap().stdout);
    let vol = dir.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("in.txt"), "from-the-host\n").unwrap();
    std::fs::set_permissions(&vol, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let volume = format!("{}:/data", vol.display());
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
        "-u",
        "65534:65534",
        "-v",
        &volume,
        "--read-only",
        // The process's limits and privileges, and the container's
        // sysctls, masked and read-only paths, applied in the guest.
        "--ulimit",
        "nofile=1234:2345",
        "--cap-drop",
        "NET_RAW",
        "--security-opt",
        "no-new-privileges",
        "--sysctl",
        "net.ipv4.ip_forward=1",
        "husk-bb",
        "sh",
        "-c",
        "uname -r; echo $FOO; pwd; id -u; id -g; cat /data/in.txt; \
         echo from-the-guest > /data/out.txt; \
         if touch /etc/x 2>/dev/null; then echo root-writable; else echo root-read-only; fi; \
         echo nofile $(ulimit -Sn) $(ulimit -Hn); \
         grep -E '^(CapBnd|NoNewPrivs):' /proc/self/status | tr -s ' \\t' ' '; \
         echo ip_forward $(cat /proc/sys/net/ipv4/ip_forward); \
         echo firmware-masked $(grep -c ' /sys/firmware ro,' /proc/self/mountinfo); \
         echo proc-sys-ro $(grep -c ' /proc/sys ro,' /proc/self/mountinfo); \
         exit 3",
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
    assert_eq!(lines.len(), 13, "{out}");
    assert!(
        !lines[0].is_empty() && lines[0] != host.trim(),
        "guest kernel {out} vs host {host}"
    );
    assert_eq!(
        &lines[1..],
        [
            "bar",
            "/tmp",
            "65534",
            "65534",
            "from-the-host",
            "root-read-only",
            "nofile 1234 2345",
            // Docker's default set (0xa80425fb) without CAP_NET_RAW (13).
            "CapBnd: 00000000a80405fb",
            "NoNewPrivs: 1",
            "ip_forward 1",
            // Docker masks /sys/firmware (an empty read-only tmpfs over
            // it); the guest kernel has no /proc/kcore to mask.
            "firmware-masked 1",
            "proc-sys-ro 1",
        ]
    );
    // The guest's write reached the host, as the guest's user.
    assert_eq!(
        std::fs::read_to_string(vol.join("out.txt")).unwrap(),
        "from-the-guest\n"
    );
    let meta = std::fs::metadata(vol.join("out.txt")).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&meta),
            std::os::unix::fs::MetadataExt::gid(&meta)
        ),
        (65534, 65534)
    );

    // docker build (the classic builder of Docker 20.10) with husk as the
    // default runtime: the RUN step runs in a microVM, so the file records
    // the guest's kernel. Read back with docker cp from a created (never
    // started) container: no second VM.
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM husk-bb\nRUN uname -r > /k && echo built-in-a-vm\n",
    )
    .unwrap();
    let args = [
        "build",
        "--network",
        "none",
        "-t",
        "husk-built",
        ctx.to_str().unwrap(),
    ];
    let mut build = d.cmd(&args);
    build.env("DOCKER_BUILDKIT", "0");
    let o = husk_e2e::timed_output("docker", &args, &mut build);
    husk_e2e::succeeded("docker", &args, &o, &d.log_tail());
    assert!(
        text(&o.stdout).contains("built-in-a-vm"),
        "{}",
        text(&o.stdout)
    );
    let cid = d
        .ok(&["create", "--network", "none", "husk-built", "true"])
        .trim()
        .to_string();
    let o = d.docker(&["cp", &format!("{cid}:/k"), "-"]);
    assert!(o.status.success(), "docker cp: {}", text(&o.stderr));
    let tar = text(&o.stdout);
    assert!(
        tar.contains(&format!("{}\n", lines[0])),
        "/k of the built image does not hold the guest kernel {}: {tar:?}",
        lines[0]
    );
    d.ok(&["rm", &cid]);

    // A second: in the background, logs, top, exec, stop with a TERM trap.
    // With -t: its terminal is a host pty whose master husk hands Docker
    // over --console-socket.
    let id = d
        .ok(&[
            "run",
            "-d",
            "-t",
            "--runtime",
            "husk",
            "--network",
            "none",
            "--memory",
            "300m",
            "--pids-limit",
            "200",
            "husk-bb",
            "sh",
            "-c",
            // `wait` returns at the signal; a `sleep 1` loop would fork
            // every second, which a loaded PVM guest takes seconds over.
            "trap 'echo got TERM; exit 0' TERM; echo ready; sleep 1000 & wait",
        ])
        .trim()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !d.ok(&["logs", &id]).contains("ready") {
        assert!(Instant::now() < deadline, "no 'ready' in the logs");
        std::thread::sleep(Duration::from_millis(500));
    }
    // The VM's monitor is in the container's cgroup: Docker's stats and
    // limits cover the whole VM.
    let pid = d
        .ok(&["inspect", "-f", "{{.State.Pid}}", &id])
        .trim()
        .to_string();
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cg.lines().any(|l| l.ends_with(&format!("/docker/{id}"))),
        "the monitor {pid} is not in /docker/{id}: {cg}"
    );
    let mem = d.ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.MemUsage}}|{{.PIDs}}",
        &id,
    ]);
    let (usage, limit) = mem
        .trim()
        .split_once(" / ")
        .unwrap_or_else(|| panic!("{mem}"));
    assert!(limit.starts_with("300MiB"), "docker stats: {mem}");
    assert!(!usage.starts_with("0B"), "docker stats: {mem}");
    let cgroup_dirs = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"]
        .map(|base| PathBuf::from(base).join("docker").join(&id));
    assert!(cgroup_dirs.iter().any(|d| d.is_dir()), "{cgroup_dirs:?}");
    // docker update (runc's `update --resources -`): a higher memory
    // limit and a CPU quota reach the VM's cgroup; a limit below what the
    // running VM booted with is refused with husk's reason.
    d.ok(&[
        "update",
        "--memory",
        "400m",
        "--memory-swap",
        "800m",
        "--cpus",
        "0.5",
        &id,
    ]);
    let read = |f: &str| {
        cgroup_dirs
            .iter()
            .chain(&[PathBuf::from("/sys/fs/cgroup/cpu/docker").join(&id)])
            .map(|d| d.join(f))
            .find_map(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_else(|| panic!("no {f} in the container's cgroup"))
    };
    let mem_file = if cgroup_dirs[0].is_dir() {
        "memory.limit_in_bytes"
    } else {
        "memory.max"
    };
    assert_eq!(read(mem_file).trim(), (400u64 << 20).to_string());
    let quota = if cgroup_dirs[0].is_dir() {
        read("cpu.cfs_quota_us")
    } else {
        read("cpu.max")
    };
    assert!(
        quota.starts_with("50000"),
        "cpu quota after --cpus 0.5: {quota}"
    );
    let o = d.timed(&["update", "--memory", "100m", "--memory-swap", "200m", &id]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("a running VM cannot shrink"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(read(mem_file).trim(), (400u64 << 20).to_string());
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
    // exec -t: a terminal of its own, through --console-socket too.
    let tty = d.ok(&["exec", "-t", &id, "tty"]);
    assert!(tty.starts_with("/dev/pts/"), "docker exec -t: {tty:?}");
    // exec -it from a terminal: typing reaches the guest, the window's
    // size and its resizes too, and the exit code comes back.
    let mut t = Pty::spawn(
        d.cmd(&[
            "exec",
            "-it",
            &id,
            "sh",
            "-c",
            "while read x; do [ \"$x\" = q ] && exit 7; echo \"got-$x\"; stty size; done",
        ]),
        30,
        100,
    );
    until_shown(&t, "hello", "got-hello", &d);
    until_shown(&t, "", "30 100", &d);
    t.resize(40, 120);
    until_shown(&t, "", "40 120", &d);
    t.write("q\r");
    let st = t.wait(Duration::from_secs(60));
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(7),
        "docker exec -it: {st:?}\n{}",
        t.text()
    );
    drop(t);
    d.ok(&["stop", "-t", "30", &id]);
    // A terminal's line discipline ends lines with CR LF.
    assert_eq!(
        d.ok(&["logs", &id]).replace("\r\n", "\n"),
        "ready\ngot TERM\n"
    );
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.ExitCode}}", &id]).trim(),
        "0"
    );
    d.ok(&["rm", &id]);

    // A third, `run -it` from a terminal: the window's first size reaches
    // the guest (Docker 20.10 sizes the pty only after start), then a
    // resize; pause stops the VM (nothing echoes) and unpause resumes it;
    // `docker kill` ends it with SIGKILL (137).
    let mut t = Pty::spawn(
        d.cmd(&[
            "run",
            "-it",
            "--runtime",
            "husk",
            "--network",
            "none",
            "--name",
            "husk-tty",
            "husk-bb",
            "sh",
        ]),
        33,
        99,
    );
    assert!(
        t.wait_for(0, "# ", Duration::from_secs(300)),
        "no prompt from docker run -it: {}\n{}",
        t.text(),
        d.log_tail()
    );
    until_shown(&t, "stty size", "33 99", &d);
    t.resize(45, 140);
    until_shown(&t, "stty size", "45 140", &d);
    d.ok(&["pause", "husk-tty"]);
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Status}}", "husk-tty"])
            .trim(),
        "paused"
    );
    let mark = t.len();
    t.write("echo $((6*7))\r");
    assert!(
        !t.wait_for(mark, "42", Duration::from_secs(3)),
        "a paused VM answered: {}",
        t.text()
    );
    d.ok(&["unpause", "husk-tty"]);
    assert!(
        t.wait_for(mark, "42", Duration::from_secs(60)),
        "no answer after unpause: {}",
        t.text()
    );
    d.ok(&["kill", "husk-tty"]);
    let st = t.wait(Duration::from_secs(60));
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(137),
        "docker run -it after kill: {st:?}"
    );
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.ExitCode}}", "husk-tty"])
            .trim(),
        "137"
    );
    drop(t);
    d.ok(&["rm", "husk-tty"]);

    assert!(d.ok(&["ps", "-aq"]).trim().is_empty());
    for dir in &cgroup_dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    drop(d);
    eprintln!(
        "oci_e2e: docker_runs_containers_in_husk_microvms took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// Docker with iptables: a user network's container serves a page to the
/// host through `-p` (Docker's DNAT and proxy to the guest's address),
/// and another container finds it by name through Docker's embedded DNS.
/// Leaves the host's FORWARD policy as Docker sets it (DROP):
/// network_e2e's user networks must cope with that.
#[test]
fn docker_networks_reach_husk_microvms() {
    require_kvm();
    let t0 = Instant::now();
    ensure_docker();
    let (dir, runtime) = engine_dir("oci-docker-net");
    let d = Dockerd::start_with(
        &dir.join("d"),
        &runtime,
        &["--iptables=true", "--ip-masq=true"],
    );
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
    husk_e2e::engines::tar_dir(&root, &tar);
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

#[test]
fn podman_runs_containers_in_husk_microvms() {
    require_kvm();
    let t0 = Instant::now();
    ensure_podman();
    let (dir, runtime) = engine_dir("oci-podman");
    let p = Podman {
        runtime,
        dir: dir.clone(),
    };
    let tar = dir.join("busybox.tar");
    husk_e2e::engines::tar_dir(&husk_e2e::busybox_rootfs(), &tar);
    p.ok(&[
        "import",
        "--change",
        "ENV PATH=/bin",
        tar.to_str().unwrap(),
        "husk-bb",
    ]);

    // Attached: the guest's kernel, -e and the exit code.
    let host = text(&Command::new("uname").arg("-r").output().unwrap().stdout);
    let o = p.cmd(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-e",
        "FOO=bar",
        "husk-bb",
        "sh",
        "-c",
        "uname -r; echo $FOO; exit 3",
    ]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{out}\n{}", text(&o.stderr));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0] != host.trim(), "guest kernel {out} vs host {host}");
    assert_eq!(lines[1], "bar");

    // Detached: exec, the cgroup and stats, stop with a TERM trap, rm.
    let id = p
        .ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "--memory",
            "300m",
            "husk-bb",
            "sh",
            "-c",
            "trap 'echo got TERM; exit 0' TERM; echo ready; sleep 1000 & wait",
        ])
        .trim()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(240);
    while !p.ok(&["logs", &id]).contains("ready") {
        assert!(Instant::now() < deadline, "no 'ready' in the logs");
        std::thread::sleep(Duration::from_secs(1));
    }
    let o = p.cmd(&["exec", &id, "sh", "-c", "echo exec-ok; exit 5"]);
    assert_eq!(
        (o.status.code(), text(&o.stdout).trim()),
        (Some(5), "exec-ok"),
        "{}",
        text(&o.stderr)
    );
    let pid = p
        .ok(&["inspect", "-f", "{{.State.Pid}}", &id])
        .trim()
        .to_string();
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cg.lines().any(|l| l.ends_with(&format!("/libpod-{id}"))),
        "the monitor {pid} is not in podman's cgroup: {cg}"
    );
    // 300 MiB is podman's 314.6MB.
    let mem = p.ok(&["stats", "--no-stream", "--format", "{{.MemUsage}}", &id]);
    assert!(mem.trim().ends_with("/ 314.6MB"), "podman stats: {mem}");
    p.ok(&["stop", "-t", "30", &id]);
    assert_eq!(p.ok(&["logs", &id]), "ready\ngot TERM\n");
    assert_eq!(
        p.ok(&["inspect", "-f", "{{.State.ExitCode}}", &id]).trim(),
        "0"
    );
    p.ok(&["rm", &id]);
    assert!(p.ok(&["ps", "-aq"]).trim().is_empty());
    eprintln!(
        "oci_e2e: podman_runs_containers_in_husk_microvms took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// containerd (Debian's, which docker.io brings) with `ctr run
/// --runc-binary`: its runc shim drives husk as it would runc (a root
/// directory from `--rootfs`, a fresh network namespace with only `lo`),
/// the task's stdio through the shim's FIFOs, and the exit code back to
/// ctr. A containerd of the test's own (its own root, state
/// and socket; the CRI plugin off).
#[test]
fn containerd_runs_a_container_in_a_husk_microvm() {
    require_kvm();
    let t0 = Instant::now();
    ensure_docker();
    let (dir, runtime) = engine_dir("oci-ctr");
    let sock = dir.join("containerd.sock");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
    let mut containerd = Command::new("/usr/bin/containerd")
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--address")
        .arg(&sock)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("containerd (Debian's containerd package, which docker.io depends on)");
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("kill").arg(self.0.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sock.exists() {
        assert!(
            containerd.try_wait().unwrap().is_none() && Instant::now() < deadline,
            "containerd did not come up: {}",
            std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _stop = Stop(containerd);
    let ctr = |args: &[&str]| {
        let mut c = Command::new("/usr/bin/ctr");
        c.arg("--address")
            .arg(&sock)
            .args(["--namespace", "husk-e2e"])
            .args(args);
        husk_e2e::timed_output("ctr", args, &mut c)
    };
    let rootfs = husk_e2e::busybox_rootfs();
    let host = text(&Command::new("uname").arg("-r").output().unwrap().stdout);
    let args = [
        "run",
        "--rm",
        "--runc-binary",
        runtime.to_str().unwrap(),
        "--env",
        "GREETING=from-ctr",
        // --rootfs: the first argument is a root directory, not an image.
        "--rootfs",
        rootfs.to_str().unwrap(),
        "husk-ctr-1",
        "sh",
        "-c",
        "uname -r; echo $GREETING; exit 3",
    ];
    let o = ctr(&args);
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        o.status.code(),
        Some(3),
        "stdout: {out}\nstderr: {}\ncontainerd log: {}",
        text(&o.stderr),
        std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
    );
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        !lines[0].is_empty() && lines[0] != host.trim(),
        "guest kernel {out} vs host {host}"
    );
    assert_eq!(lines[1], "from-ctr");
    // --rm removed the container; nothing of it is left to containerd.
    let left = text(&ctr(&["containers", "ls", "-q"]).stdout);
    assert!(left.trim().is_empty(), "containers left: {left}");
    eprintln!(
        "oci_e2e: containerd_runs_a_container_in_a_husk_microvm took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
