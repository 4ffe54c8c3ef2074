//! `husk run` end to end: a real microVM per run. Its exit status is the
//! container's (128+N for a signal), and SIGTERM sent to `husk run` reaches
//! the container process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_e2e::{agent_binary, busybox_rootfs, guest_kernel, require_kvm};

fn husk_run(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_husk"));
    c.arg("run")
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

/// The image workflow, offline: `husk import` a root directory, `husk images`
/// lists it, `husk run IMAGE` runs its default command or the one given; a
/// container killed by SIGKILL exits 137; a second container of the image
/// does not see the first one's writes.
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
    let cmd = r#"["/bin/sh","-c","echo default; touch /marker; kill -9 $$"]"#;
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
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--agent",
            agent.to_str().unwrap(),
            "-m",
            "128",
            "e2e-busybox:1",
        ];
        args.extend_from_slice(extra);
        husk(&args).output().unwrap()
    };
    let out = run(&[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "default\n");
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second container of the same image does not see the first one's
    // writes (each has its own overlay over the shared, unchanged rootfs).
    let out = run(&["sh", "-c", "test -e /marker && echo seen || echo clean"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "clean\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(!rootfs.join("marker").exists());
    let _ = std::fs::remove_dir_all(&store);
}
