//! `husk run` end to end: a real microVM per run. Its exit status is the
//! container's (128+N for a signal), and SIGTERM sent to `husk run` reaches
//! the container process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_e2e::{agent_binary, busybox_rootfs, guest_kernel, require_kvm};

fn husk_run(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_husk"));
    c.arg("--root")
        .arg(husk_e2e::scratch("run-e2e-store"))
        .arg("run")
        .arg("--rm")
        .arg("--rootfs")
        .arg(busybox_rootfs())
        .arg("--kernel")
        .arg(guest_kernel())
        .arg("--agent")
        .arg(agent_binary())
        .args(["-m", "128"])
        .args(args);
    c
}

#[test]
fn exit_status_stdout_stderr_and_env() {
    require_kvm();
    let t = Instant::now();
    let out = husk_run(&[
        "-e",
        "GREETING=hi there",
        "-w",
        "/tmp",
        "--",
        "sh",
        "-c",
        "echo $GREETING from $(pwd); echo oops >&2; exit 3",
    ])
    .output()
    .expect("run husk");
    eprintln!("husk run took {:.2} s", t.elapsed().as_secs_f64());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi there from /tmp\n");
    assert_eq!(stderr, "oops\n");
}

#[test]
fn sigterm_reaches_the_container() {
    require_kvm();
    let mut child = husk_run(&[
        "--",
        "sh",
        "-c",
        "trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 1; done",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .expect("run husk");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a line").expect("read");
    assert_eq!(first, "ready");
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    // SAFETY: plain kill(2) of our own child process.
    let r = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
    let t = Instant::now();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert_eq!(rest, vec!["got TERM".to_string()]);
    assert_eq!(status.code(), Some(42));
    assert!(t.elapsed() < Duration::from_secs(120));
}

/// SIGTERM to `husk run --rm` while its VM boots (the process has not
/// started): the boot is given up at once (not after the boot timeout),
/// `run` ends with 137 as for a container killed before it ran, and the
/// `--rm` container, its sandbox directory and its monitor are gone.
#[test]
fn sigterm_during_boot_gives_the_boot_up_and_leaves_nothing() {
    require_kvm();
    let store = husk_e2e::scratch("run-e2e-store");
    let child = husk_run(&["--name", "cancelled", "--", "echo", "never"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run husk");
    // Until its monitor runs (the VM then takes 25 s or more to boot here).
    let root = store.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while husk_e2e::processes_matching("__monitor")
        .iter()
        .all(|p| !p.contains(&root))
    {
        assert!(Instant::now() < deadline, "no monitor for {root}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    // SAFETY: plain kill(2) of our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = t.elapsed();
    eprintln!(
        "run ended {:.1} s after SIGTERM during the boot, status {:?}",
        took.as_secs_f64(),
        out.status.code()
    );
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("never"));
    // Everything of it goes with the monitor.
    let deadline = Instant::now() + Duration::from_secs(30);
    while husk_e2e::processes_matching("__monitor")
        .iter()
        .any(|p| p.contains(&root))
    {
        assert!(
            Instant::now() < deadline,
            "the monitor outlived the cancelled boot"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // (The store's own lock stays; a container, or a .tmp-/.rm- leftover,
    // would not.)
    let left: Vec<_> = std::fs::read_dir(store.join("containers"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name())
                .filter(|n| n != ".create.lock")
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "--rm left {left:?}");
}

/// The image and container workflow, offline: `husk import` a root
/// directory, `husk images` lists it, `husk run IMAGE` runs its default
/// command or the one given, and its exit code is the container's (a
/// SIGKILL from inside cannot end it: its main process is PID 1 of its own
/// PID namespace, as in Docker; `rm -f` below and the lifecycle tests cover
/// 137). The
/// container's writes go to its own writable layer on the host, never to
/// the image's rootfs: a second container of the image does not see them,
/// `husk start` runs the first one again on them, `husk diff` lists them,
/// the image cannot be removed while the container exists, and `husk rm`
/// deletes them; `--rm` leaves nothing behind.
#[test]
fn import_an_image_and_run_it() {
    require_kvm();
    let store = husk_e2e::scratch("image-store");
    let husk = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_husk"));
        c.arg("--root").arg(&store).args(args);
        c
    };
    let rootfs = busybox_rootfs();
    let cmd = r#"["/bin/sh","-c","test -e /marker && echo kept || echo default; touch /marker; exit 42"]"#;
    let out = husk(&[
        "import",
        rootfs.to_str().unwrap(),
        "e2e-busybox:1",
        "--cmd",
        cmd,
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sha256:"));
    let out = husk(&["images"]).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("e2e-busybox") && l.contains(" 1 ")),
        "{listing}"
    );

    let kernel = guest_kernel();
    let agent = agent_binary();
    let vm = [
        "--kernel",
        kernel.to_str().unwrap(),
        "--agent",
        agent.to_str().unwrap(),
    ];
    let run = |extra: &[&str]| {
        let mut args = vec!["run"];
        args.extend_from_slice(&vm);
        args.extend_from_slice(&["-m", "128"]);
        args.extend_from_slice(extra);
        husk(&args).output().unwrap()
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let out = run(&["--name", "first", "e2e-busybox:1"]);
    assert_eq!(text(&out.stdout), "default\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(42), "{}", text(&out.stderr));
    // The container is kept, exited, with its write in its layer on the host.
    let out = husk(&["ps", "-a"]).output().unwrap();
    let ps = text(&out.stdout);
    let line = ps
        .lines()
        .find(|l| l.ends_with("first"))
        .unwrap_or_else(|| panic!("{ps}"));
    assert!(
        line.contains("e2e-busybox:1") && line.contains("Exited (42)"),
        "{ps}"
    );
    let id = line.split_whitespace().next().unwrap().to_string();
    let layers: Vec<_> = std::fs::read_dir(store.join("containers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&id))
        .collect();
    assert_eq!(layers.len(), 1, "{layers:?}");
    let marker = layers[0].join("rw/upper/marker");
    assert!(marker.exists(), "the write is not in the container's layer");
    assert!(!rootfs.join("marker").exists());
    let out = husk(&["inspect", "first"]).output().unwrap();
    let j = text(&out.stdout);
    assert!(
        j.contains("\"ExitCode\": 42") && j.contains("\"Status\": \"exited\""),
        "{j}"
    );
    assert!(
        j.contains(&format!("{}", layers[0].join("rw/upper").display())),
        "{j}"
    );
    let out = husk(&["diff", "first"]).output().unwrap();
    assert_eq!(text(&out.stdout), "A /marker\n", "{}", text(&out.stderr));

    // A second container of the same image does not see the first one's
    // writes (each has its own overlay over the shared, unchanged rootfs),
    // and with --rm leaves no container behind.
    let out = run(&[
        "--rm",
        "e2e-busybox:1",
        "sh",
        "-c",
        "test -e /marker && echo seen || echo clean",
    ]);
    assert_eq!(text(&out.stdout), "clean\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
    let out = husk(&["ps", "-a", "-q"]).output().unwrap();
    assert_eq!(text(&out.stdout), format!("{id}\n"));

    // The image stays while a container uses it.
    let out = husk(&["rmi", "e2e-busybox:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("container"),
        "{}",
        text(&out.stderr)
    );

    // `husk start` runs the container again on its writable layer.
    let out = husk(&["start", "-a", &id]).output().unwrap();
    assert_eq!(text(&out.stdout), "kept\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(42));

    // `husk rm` deletes the container and its writable layer.
    let out = husk(&["rm", "first"]).output().unwrap();
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "first\n".into())
    );
    assert!(!layers[0].exists() && !marker.exists());
    let out = husk(&["ps", "-a", "-q"]).output().unwrap();
    assert_eq!(text(&out.stdout), "");
    let out = husk(&["rm", "first"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("No such container: first"));
    assert!(!rootfs.join("marker").exists());
    let out = husk(&["rmi", "e2e-busybox:1"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(&store);
}

/// A running container shows as Up in `husk ps`; `husk rm` refuses it, and
/// `husk rm -f` kills a running container (its monitor and VM) and removes
/// it; the attached `husk run` exits 137.
#[test]
fn rm_force_removes_a_running_container() {
    require_kvm();
    let store = husk_e2e::scratch("rm-force-store");
    let husk = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_husk"));
        c.arg("--root").arg(&store).args(args);
        c
    };
    let (kernel, agent, rootfs) = (guest_kernel(), agent_binary(), busybox_rootfs());
    let mut child = husk(&[
        "run",
        "--name",
        "busy",
        "--kernel",
        kernel.to_str().unwrap(),
        "--agent",
        agent.to_str().unwrap(),
        "-m",
        "128",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo ready; while :; do sleep 1; done",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .expect("run husk");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().expect("a line").expect("read"), "ready");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let out = husk(&["ps"]).output().unwrap();
    let ps = text(&out.stdout);
    assert!(
        ps.lines()
            .any(|l| l.ends_with("busy") && l.contains(" Up ")),
        "{ps}"
    );
    let out = husk(&["rm", "busy"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("it is running"),
        "{}",
        text(&out.stderr)
    );
    let out = husk(&["rm", "-f", "busy"]).output().unwrap();
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "busy\n".to_string()),
        "{}",
        text(&out.stderr)
    );
    // The attached `husk run` reports the kill, as `docker run` does.
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(137));
    let out = husk(&["ps", "-a", "-q"]).output().unwrap();
    assert_eq!(text(&out.stdout), "");
    let left: Vec<_> = std::fs::read_dir(store.join("containers"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let _ = std::fs::remove_dir_all(&store);
}

/// `husk boot` of an initramfs without an init: the guest kernel panics
/// ("No working init found"), and husk says so with its own exit status
/// (3), quoting the console, instead of taking the reboot for a stop.
#[test]
fn husk_boot_reports_a_guest_panic_with_its_own_exit_status() {
    require_kvm();
    let t = Instant::now();
    let d = husk_e2e::scratch("run-e2e-panic");
    std::fs::create_dir_all(d.join("root/etc")).unwrap();
    std::fs::write(d.join("root/etc/no-init-here"), b"x").unwrap();
    let rd = d.join("rd.cpio");
    let bin = env!("CARGO_BIN_EXE_husk");
    let o = Command::new(bin)
        .args(["pack-initramfs", "--dir"])
        .arg(d.join("root"))
        .arg("-o")
        .arg(&rd)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(bin)
        .arg("boot")
        .arg("--kernel")
        .arg(guest_kernel())
        .arg("--initrd")
        .arg(&rd)
        .args(["--timeout", "600"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(3),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("Kernel panic"), "{stdout}");
    assert!(stderr.contains("panic"), "{stderr}");
    let _ = std::fs::remove_dir_all(&d);
    eprintln!(
        "husk_boot_reports_a_guest_panic_with_its_own_exit_status: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}
