//! Docker's container semantics in one real microVM (one boot): the main
//! process is PID 1 of the container's own PID namespace, with a /proc of
//! its own; `exec`'d processes join it (they see the main process as PID 1
//! and only the container's processes); the hostname and /etc/hostname and
//! /etc/hosts are the configured ones; `top` and `stats` answer; pausing
//! the VM stops the guest and resuming continues it; an exec'd process
//! whose host connection goes away is killed; when the main process exits,
//! the rest of the container goes with it (a background child holding its
//! stdout does not keep it alive), and the VM powers off.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use husk_e2e::{Capture, busybox_rootfs, require_kvm, sandbox_config};
use husk_protocol::{Event, FrameReader, FrameWriter, Request};
use husk_runtime::{Control, ExitStatus, RunSpec, Sandbox, Stdio};
use husk_vmm::GuestExit;

const PATH: &str = "/bin:/usr/bin";
const NAME: &str = "web-1.test";

fn spec(script: &str) -> RunSpec {
    RunSpec::new(["/bin/sh", "-c", script]).env("PATH", PATH)
}

/// Runs `script` with no stdin; returns (status, stdout, stderr).
fn sh(sb: &Sandbox, script: &str) -> (ExitStatus, String, String) {
    let (out, err) = (Capture::default(), Capture::default());
    let stdio = Stdio {
        stdin: None,
        stdout: Box::new(out.clone()),
        stderr: Box::new(err.clone()),
    };
    let (st, _) = sb
        .exec(spec(script), stdio, None)
        .unwrap_or_else(|e| panic!("exec {script:?}: {e}"));
    (st, out.text(), err.text())
}

/// Waits until `f` holds, at most `timeout`.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn container_semantics() {
    require_kvm();
    let mut config = sandbox_config("container", &busybox_rootfs());
    config.hostname = Some(NAME.into());
    let t = Instant::now();
    let sb = Sandbox::start(&config).unwrap_or_else(|e| panic!("sandbox start: {e}"));
    eprintln!(
        "container: agent ready after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let uds = config.dir.join("vsock.sock");

    let main_out = Capture::default();
    let (main_tx, main_rx) = mpsc::channel();
    std::thread::scope(|s| {
        // The main process: a background child that would hold its stdout
        // for 10 minutes; SIGTERM ends it with 0. It waits without waking
        // up: on this PVM host, guest processes that run while another one
        // keeps waking up now and then crash (SIGSEGV reading their TLS;
        // once the agent itself, with "free(): invalid pointer"), also on
        // the agent's old paths without any namespace: see the report.
        let main = {
            let (sb, out) = (&sb, main_out.clone());
            s.spawn(move || {
                let stdio = Stdio {
                    stdin: None,
                    stdout: Box::new(out),
                    stderr: Box::new(std::io::sink()),
                };
                let r = sb.exec(
                    spec("sleep 600 & trap 'exit 0' TERM; echo ready; wait").main(),
                    stdio,
                    Some(main_rx),
                );
                (r, Instant::now())
            })
        };
        assert!(
            main_out.wait_for("ready\n", Duration::from_secs(120)),
            "the main process never got ready: {:?}",
            main_out.text()
        );

        // An exec'd process is in the container's PID namespace: the main
        // process is its PID 1, and /proc shows only the container.
        let (st, out, err) = sh(
            &sb,
            "echo $$; tr '\\0' ' ' < /proc/1/cmdline; echo; \
             ls /proc | grep '^[0-9]*$' | tr '\\n' ' '; echo; \
             test -e /proc/1/root/init && echo agent-root || echo container-root",
        );
        assert_eq!(st, ExitStatus::Code(0), "{out}{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        let me: u32 = lines[0].parse().unwrap();
        assert!(me > 1, "{out}");
        assert!(lines[1].contains("trap 'exit 0' TERM"), "{out}");
        let pids: Vec<u32> = lines[2]
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert!(pids.contains(&1) && pids.contains(&me), "{out}");
        assert!(
            pids.len() <= 8,
            "more than the container's processes: {out}"
        );
        assert_eq!(lines[3], "container-root", "{out}");

        // Hostname and Docker's /etc files.
        let (st, out, err) = sh(&sb, "hostname; cat /etc/hostname; cat /etc/hosts");
        assert!(
            out.starts_with(&format!("{NAME}\n{NAME}\n127.0.0.1\tlocalhost\n")),
            "{st:?} {out:?} {err:?}\n{}",
            sb.console_tail()
        );
        assert!(
            out.contains("::1\tlocalhost ip6-localhost ip6-loopback\n"),
            "{out}"
        );
        assert!(out.ends_with(&format!("127.0.1.1\t{NAME}\n")), "{out}");

        // Files one process writes, the other sees (one mount namespace).
        let (_, out, _) = sh(&sb, "echo shared > /tmp/f; cat /proc/1/root/tmp/f");
        assert_eq!(out, "shared\n");

        // top and stats.
        let (titles, procs) = sb.top().expect("top");
        assert_eq!(titles, ["PID", "USER", "TIME", "CMD"]);
        assert!(
            procs
                .iter()
                .any(|p| p[1] == "root" && p[3].contains("trap 'exit 0' TERM")),
            "{procs:?}"
        );
        assert!(procs.iter().any(|p| p[3] == "sleep 600"), "{procs:?}");
        let stats = sb.stats().expect("stats");
        assert!(stats.mem_total > 0 && stats.mem_available > 0, "{stats:?}");
        assert!(stats.mem_available <= stats.mem_total, "{stats:?}");
        assert!(stats.cpu_busy_ns > 0 && stats.pids >= 2, "{stats:?}");

        // Pause: a counter (waiting with the shell's own `read -t` on a
        // FIFO that never delivers, so it does not fork) prints nothing
        // while the VM is paused, and continues after resume.
        let count_out = Capture::default();
        let (count_tx, count_rx) = mpsc::channel();
        let counter = {
            let (sb, out) = (&sb, count_out.clone());
            s.spawn(move || {
                let stdio = Stdio {
                    stdin: None,
                    stdout: Box::new(out),
                    stderr: Box::new(std::io::sink()),
                };
                sb.exec(
                    spec(
                        "mkfifo /tmp/tick; exec 3<>/tmp/tick; i=0; \
                         while :; do echo n$i; i=$((i+1)); read -t 0.2 x <&3; done",
                    ),
                    stdio,
                    Some(count_rx),
                )
            })
        };
        assert!(
            count_out.wait_for("n2\n", Duration::from_secs(120)),
            "the counter never counted: {:?}",
            count_out.text()
        );
        sb.pause().expect("pause");
        assert!(sb.is_paused());
        // What was in flight before the pause may still arrive.
        std::thread::sleep(Duration::from_millis(500));
        let paused_at = count_out.len();
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(count_out.len(), paused_at, "output while paused");
        sb.resume().expect("resume");
        assert!(!sb.is_paused());
        assert!(
            eventually(Duration::from_secs(30), || count_out.len() > paused_at),
            "no output after resume"
        );
        count_tx.send(Control::Signal(9)).unwrap();
        let (st, _) = counter.join().unwrap().expect("counter exec");
        assert_eq!(st, ExitStatus::Signal(9));

        // An exec'd process whose host connection goes away is killed.
        let stream = husk_protocol::hybrid::connect(
            &uds,
            husk_protocol::AGENT_PORT,
            Duration::from_secs(30),
        )
        .expect("connect");
        let mut reader = FrameReader::new(stream.try_clone().unwrap());
        let mut writer = FrameWriter::new(stream.try_clone().unwrap());
        husk_protocol::host_handshake(&mut reader, &mut writer, "husk-e2e").expect("handshake");
        writer
            .send(&Request::Run(RunSpec::new(["/bin/sleep", "300"])))
            .unwrap();
        let started = reader.recv::<Event>().unwrap();
        assert!(
            matches!(started, Some(Event::Started { .. })),
            "{started:?}"
        );
        let listed = |sb: &Sandbox| {
            let (_, procs) = sb.top().expect("top");
            procs.iter().any(|p| p[3] == "/bin/sleep 300")
        };
        assert!(
            eventually(Duration::from_secs(20), || listed(&sb)),
            "the exec'd sleep ({started:?}) is not listed: {:?}\n{}",
            sb.top(),
            sh(&sb, "dmesg | tail -n 5").1
        );
        drop((reader, writer));
        stream.shutdown(std::net::Shutdown::Both).unwrap();
        drop(stream);
        assert!(
            eventually(Duration::from_secs(60), || !listed(&sb)),
            "the exec'd sleep outlived its connection"
        );

        // SIGTERM ends the main process (it traps it); its background
        // sleep goes with it, so the exec returns at once.
        main_tx.send(Control::Signal(15)).unwrap();
        let signalled = Instant::now();
        let (r, returned) = main.join().unwrap();
        let (st, _) = r.expect("main exec");
        assert_eq!(st, ExitStatus::Code(0));
        let took = returned - signalled;
        eprintln!(
            "container: main returned {:.1} s after SIGTERM",
            took.as_secs_f64()
        );
        assert!(took < Duration::from_secs(60), "took {took:?}");
    });
    let outcome = sb
        .wait(Duration::from_secs(120))
        .expect("wait")
        .expect("outcome");
    assert_eq!(outcome.exit, GuestExit::PowerOff);
}
