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
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert_eq!(rest, vec!["got TERM".to_string()]);
    assert_eq!(status.code(), Some(42));
    assert!(t.elapsed() < Duration::from_secs(120));
}

#[test]
fn killed_container_exits_137() {
    require_kvm();
    let out = husk_run(&["--", "sh", "-c", "kill -9 $$"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
