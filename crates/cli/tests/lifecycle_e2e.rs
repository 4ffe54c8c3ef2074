//! Containers that outlive the command, end to end with real microVMs: `run
//! -d`, `ps`, `logs` (`-f`, `--tail`, `-t`), `exec` (PID namespace, tty,
//! into a stopped container), `kill -s`, `top`, `stats`, `pause`/`unpause`,
//! `stop` with a TERM trap and with TERM ignored, `wait`, `restart` on the
//! same writable layer, a SIGKILLed CLI and a SIGKILLed monitor,
//! `--restart on-failure:2`, Docker's semantics for the main process
//! (`sleep 600 &` does not hold `run`; `yes | head -1` returns), Docker's
//! errors for unknown containers, and a start/remove loop that leaks
//! nothing. Boots cost ~25 s on PVM hosts, so one container serves many
//! checks.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use husk_e2e::{husk_vm_args, require_kvm};

struct Husk {
    root: PathBuf,
}

impl Husk {
    fn new(name: &str) -> Husk {
        let root = husk_e2e::scratch(name);
        let _ = std::fs::remove_dir_all(&root);
        Husk { root }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_husk"));
        c.arg("--root").arg(&self.root).args(args);
        c
    }

    fn out(&self, args: &[&str]) -> Output {
        let t = Instant::now();
        let o = self.cmd(args).stdin(Stdio::null()).output().unwrap();
        eprintln!(
            "husk {} -> {:?} in {:.2} s",
            args.join(" "),
            o.status.code(),
            t.elapsed().as_secs_f64()
        );
        o
    }

    /// stdout of a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.out(args);
        assert!(
            o.status.success(),
            "husk {args:?}: {:?}\nstdout: {}\nstderr: {}",
            o.status,
            text(&o.stdout),
            text(&o.stderr)
        );
        text(&o.stdout)
    }

    /// `husk run -d ... --rootfs BUSYBOX -- CMD...`; the container's id.
    fn run_d(&self, extra: &[&str], cmd: &[&str]) -> String {
        let vm = husk_vm_args();
        let mut args = vec!["run", "-d"];
        args.extend(vm.iter().map(String::as_str));
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(cmd);
        self.ok(&args).trim().to_string()
    }

    fn logs(&self, name: &str) -> String {
        self.ok(&["logs", name])
    }

    /// Waits until `husk logs NAME` satisfies `f`.
    fn wait_logs(&self, name: &str, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let l = self.logs(name);
            if f(&l) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {l}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn state(&self, name: &str) -> serde_json::Value {
        let out = self.ok(&["inspect", name]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["State"].clone()
    }
}

impl Drop for Husk {
    fn drop(&mut self) {
        // Nothing may keep running after a test.
        let ids = self.cmd(&["ps", "-aq"]).output();
        if let Ok(o) = ids {
            for id in text(&o.stdout).lines() {
                let _ = self.cmd(&["rm", "-f", id]).output();
            }
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ticks(log: &str) -> usize {
    log.lines().filter(|l| l.starts_with("tick ")).count()
}

#[test]
fn a_detached_container_lives_its_whole_life() {
    require_kvm();
    let t0 = Instant::now();
    let h = Husk::new("lifecycle-e2e-store");
    let script = "trap 'echo got TERM; exit 42' TERM; trap 'echo got USR1' USR1; echo ready; \
                  i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.1; done";
    let id = h.run_d(
        &["--name", "svc", "--hostname", "box1"],
        &["sh", "-c", script],
    );
    assert_eq!(id.len(), 64, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    eprintln!("run -d returned after {:.1} s", t0.elapsed().as_secs_f64());

    // ps: Up, with the PORTS column.
    let ps = h.ok(&["ps"]);
    let row = ps.lines().find(|l| l.ends_with("svc")).expect(&ps);
    assert!(row.contains("Up "), "{ps}");
    assert!(ps.lines().next().unwrap().contains("PORTS"), "{ps}");
    let f = h.ok(&["ps", "--format", "{{.Names}} {{.State}}", "-f", "name=svc"]);
    assert_eq!(f, "svc running\n");
    let f = h.ok(&["ps", "--format", "{{.Names}}", "-f", "status=running"]);
    assert_eq!(f, "svc\n");
    assert_eq!(h.ok(&["ps", "-q", "-f", "status=exited"]), "");
    // rename, and back.
    h.ok(&["rename", "svc", "svc-renamed"]);
    let f = h.ok(&["ps", "--format", "{{.Names}}"]);
    assert_eq!(f, "svc-renamed\n");
    h.ok(&["rename", "svc-renamed", "svc"]);

    // logs: in order, --tail, -t.
    let log = h.wait_logs("svc", "3 ticks", |l| ticks(l) >= 3);
    assert!(log.starts_with("ready\ntick 0\ntick 1\n"), "{log}");
    let tail = h.ok(&["logs", "--tail", "2", "svc"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    let stamped = h.ok(&["logs", "-t", "--tail", "1", "svc"]);
    let (ts, rest) = stamped.split_once(' ').unwrap();
    assert!(ts.ends_with('Z') && ts.contains('T'), "{stamped}");
    assert!(rest.starts_with("tick "), "{stamped}");
    // --since: an RFC 3339 time before the start keeps every line, one in
    // the future none.
    let all = h.ok(&["logs", "--since", "2000-01-01T00:00:00Z", "svc"]);
    assert!(all.starts_with("ready\ntick 0\n"), "{all}");
    assert_eq!(
        h.ok(&["logs", "--since", "2099-01-01T00:00:00Z", "svc"]),
        ""
    );

    // logs -f follows new lines.
    let mut follow = h
        .cmd(&["logs", "-f", "--tail", "0", "svc"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let first_new = lines.next().unwrap().unwrap();
    let second_new = lines.next().unwrap().unwrap();
    assert!(first_new.starts_with("tick ") && second_new.starts_with("tick "));
    let n1: u32 = first_new[5..].parse().unwrap();
    let n2: u32 = second_new[5..].parse().unwrap();
    assert_eq!(n2, n1 + 1);
    let _ = follow.kill();
    let _ = follow.wait();

    // attach: the live output; the attached client going away leaves the
    // container running.
    let mut att = h
        .cmd(&["attach", "--no-stdin", "svc"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(att.stdout.take().unwrap()).lines();
    let a = lines.next().unwrap().unwrap();
    let b = lines.next().unwrap().unwrap();
    assert!(
        a.starts_with("tick ") && b.starts_with("tick "),
        "{a} / {b}"
    );
    let _ = att.kill();
    let _ = att.wait();
    assert_eq!(h.state("svc")["Status"], "running");

    // exec: PID 1 is the main process; the same files; the hostname.
    let out = h.ok(&[
        "exec",
        "svc",
        "sh",
        "-c",
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname; cat /etc/hostname; grep box1 /etc/hosts; echo written > /exec-file",
    ]);
    let mut l = out.lines();
    assert!(l.next().unwrap().starts_with("sh -c trap"), "{out}");
    assert_eq!(l.next(), Some("box1"), "{out}");
    assert_eq!(l.next(), Some("box1"), "{out}");
    assert!(l.next().unwrap().contains("box1"), "{out}");
    assert_eq!(h.ok(&["exec", "svc", "cat", "/exec-file"]), "written\n");
    // On PVM hosts every process gets the tunable that keeps glibc off AVX
    // (the guest kernel cannot save that state there).
    let tunables = h.ok(&["exec", "svc", "sh", "-c", "echo $GLIBC_TUNABLES"]);
    if husk_vmm::host::detect() == husk_vmm::HostKind::Pvm {
        assert!(tunables.contains("-AVX512F"), "{tunables}");
    }
    // exit codes and -e/-w pass through.
    let o = h.out(&[
        "exec",
        "-e",
        "X=42",
        "-w",
        "/tmp",
        "svc",
        "sh",
        "-c",
        "echo $X $(pwd); exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(text(&o.stdout), "42 /tmp\n");
    let o = h.out(&["exec", "svc", "/no/such/program"]);
    assert_eq!(o.status.code(), Some(127), "{}", text(&o.stderr));
    // exec -u: another user and group.
    assert_eq!(
        h.ok(&[
            "exec",
            "-u",
            "65534:65533",
            "svc",
            "sh",
            "-c",
            "echo $(id -u) $(id -g)"
        ]),
        "65534 65533\n"
    );
    // exec -d: returns at once; the process goes on in the guest.
    h.ok(&[
        "exec",
        "-d",
        "svc",
        "sh",
        "-c",
        "sleep 1; echo detached > /exec-d-file",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = h.out(&["exec", "svc", "cat", "/exec-d-file"]);
        if o.status.success() {
            assert_eq!(text(&o.stdout), "detached\n");
            break;
        }
        assert!(Instant::now() < deadline, "exec -d never wrote its file");
        std::thread::sleep(Duration::from_millis(500));
    }
    // exec -t: a terminal.
    let o = h.out(&["exec", "-t", "svc", "tty"]);
    assert!(
        text(&o.stdout).starts_with("/dev/pts/"),
        "{}",
        text(&o.stdout)
    );
    // exec -i: stdin.
    let mut child = h
        .cmd(&["exec", "-i", "svc", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"through stdin\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(text(&o.stdout), "through stdin\n");

    // kill -s USR1 reaches the trap.
    h.ok(&["kill", "-s", "USR1", "svc"]);
    h.wait_logs("svc", "got USR1", |l| l.contains("got USR1"));

    // top and stats.
    let top = h.ok(&["top", "svc"]);
    assert!(top.lines().next().unwrap().contains("PID"), "{top}");
    assert!(top.contains("sh -c trap"), "{top}");
    let stats = h.ok(&["stats", "--no-stream", "svc"]);
    let row = stats.lines().nth(1).expect(&stats);
    assert!(
        row.contains("svc") && row.contains("MiB / 128.00MiB"),
        "{stats}"
    );
    assert!(!row.contains(" 0B /"), "{stats}");

    // pause: no ticks while paused; they resume after unpause.
    h.ok(&["pause", "svc"]);
    assert!(h.ok(&["ps"]).contains("(Paused)"));
    let before = ticks(&h.logs("svc"));
    std::thread::sleep(Duration::from_secs(2));
    let during = ticks(&h.logs("svc"));
    assert!(
        during <= before + 1,
        "ticks advanced while paused: {before} -> {during}"
    );
    let o = h.out(&["exec", "svc", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("paused"), "{}", text(&o.stderr));
    h.ok(&["unpause", "svc"]);
    h.wait_logs("svc", "ticks after unpause", |l| ticks(l) >= during + 3);

    // stop: the TERM trap's exit code; wait prints it.
    let t = Instant::now();
    assert_eq!(h.ok(&["stop", "svc"]), "svc\n");
    eprintln!("stop took {:.2} s", t.elapsed().as_secs_f64());
    assert!(h.logs("svc").contains("got TERM"));
    assert_eq!(h.ok(&["wait", "svc"]), "42\n");
    assert_eq!(h.state("svc")["ExitCode"], 42);
    let ps = h.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited (42)"), "{ps}");
    let f = h.ok(&["ps", "-a", "--format", "{{.Names}}", "-f", "status=exited"]);
    assert_eq!(f, "svc\n");
    // exec into a stopped container.
    let o = h.out(&["exec", "svc", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("is not running"),
        "{}",
        text(&o.stderr)
    );

    // restart (as start): the same writable layer; a CLI killed with
    // SIGKILL leaves it running.
    let mut fg = h
        .cmd(&["start", "-a", "svc"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = fg.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    out.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    fg.kill().unwrap();
    let _ = fg.wait();
    assert_eq!(h.ok(&["exec", "svc", "cat", "/exec-file"]), "written\n");
    let ps = h.ok(&["ps"]);
    assert!(
        ps.lines().any(|l| l.ends_with("svc") && l.contains("Up ")),
        "{ps}"
    );

    // The monitor killed with SIGKILL: no VM, no socket; ps says exited.
    let pid = h.state("svc")["Pid"].as_u64().unwrap() as i32;
    assert!(pid > 0);
    // SAFETY: plain kill(2) of the monitor's pid, which this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!std::path::Path::new(&format!("/proc/{pid}/status")).exists());
    let ps = h.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited (unknown)"), "{ps}");
    let dir = h.root.join("containers").join(&id);
    assert!(!dir.join("control.sock").exists());
    assert!(!dir.join("sandbox").exists());

    // A process that ignores TERM and whose stop signal (--stop-signal)
    // only prints: 137 after the timeout (-t, else --stop-timeout).
    let id2 = h.run_d(
        &[
            "--name",
            "stubborn",
            "--stop-signal",
            "USR2",
            "--stop-timeout",
            "5",
        ],
        &[
            "sh",
            "-c",
            // A loop of builtins (`read -t` on a FIFO nobody writes): no
            // fork between two chances to run the trap, which a loaded
            // PVM guest can take seconds over.
            "trap '' TERM; trap 'echo got USR2' USR2; mkfifo /tmp/f; exec 3<>/tmp/f; echo up; \
             while :; do read -t 1 x <&3; done",
        ],
    );
    // restart: stop (SIGKILL after 1 s here) and start again.
    h.wait_logs("stubborn", "up", |l| l.contains("up"));
    assert_eq!(h.ok(&["restart", "-t", "1", "stubborn"]), "stubborn\n");
    let ps = h.ok(&["ps"]);
    assert!(
        ps.lines()
            .any(|l| l.ends_with("stubborn") && l.contains("Up ")),
        "{ps}"
    );
    h.wait_logs("stubborn", "up twice", |l| l.matches("up").count() >= 2);
    let t = Instant::now();
    h.ok(&["stop", "stubborn"]);
    let took = t.elapsed();
    assert!(took >= Duration::from_secs(5), "{took:?}");
    assert_eq!(h.ok(&["wait", &id2]), "137\n");
    let log = h.logs("stubborn");
    assert!(log.contains("got USR2"), "{log}");

    // rm of a stopped one, then Docker's errors for unknown names.
    assert_eq!(h.ok(&["rm", "svc"]), "svc\n");
    assert!(!dir.exists());
    for verb in [
        vec!["logs", "nosuch"],
        vec!["stop", "nosuch"],
        vec!["rm", "nosuch"],
        vec!["exec", "nosuch", "true"],
        vec!["kill", "nosuch"],
    ] {
        let o = h.out(&verb);
        assert_eq!(o.status.code(), Some(1), "{verb:?}");
        assert!(
            text(&o.stderr).contains("No such container: nosuch"),
            "{verb:?}: {}",
            text(&o.stderr)
        );
    }
    let o = h.out(&["inspect", "nosuch"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(text(&o.stdout).trim(), "[]");
    assert!(text(&o.stderr).contains("No such object: nosuch"));
    let o = h.out(&["ps", "-f", "bogus=1"]);
    assert_eq!(o.status.code(), Some(1));
    eprintln!(
        "a_detached_container_lives_its_whole_life: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn main_process_semantics_and_restart_policy() {
    require_kvm();
    let t0 = Instant::now();
    let h = Husk::new("lifecycle-e2e-store2");
    let vm = husk_vm_args();
    let vm: Vec<&str> = vm.iter().map(String::as_str).collect();

    // A background child does not hold `run` (the PID namespace dies with
    // its init).
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(&vm);
    args.extend_from_slice(&["--", "sh", "-c", "sleep 600 & echo hi"]);
    let t = Instant::now();
    let o = h.out(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "hi\n");
    assert!(t.elapsed() < Duration::from_secs(300));

    // `yes | head -1` returns.
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(&vm);
    args.extend_from_slice(&["--", "yes"]);
    let mut yes = h.cmd(&args).stdout(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    BufReader::new(yes.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "y\n");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = yes.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "husk run yes | head -1 did not return"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(141));

    // --restart on-failure:2: three runs, then it stays exited.
    let id = h.run_d(
        &["--restart", "on-failure:2"],
        &["sh", "-c", "echo run; exit 3"],
    );
    assert_eq!(h.ok(&["wait", &id]), "3\n");
    let log = h.logs(&id);
    assert_eq!(log, "run\nrun\nrun\n");
    let v: serde_json::Value = serde_json::from_str(&h.ok(&["inspect", &id])).unwrap();
    assert_eq!(v[0]["RestartCount"], 2);
    assert_eq!(v[0]["State"]["Status"], "exited");
    eprintln!(
        "main_process_semantics_and_restart_policy: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// Files of this store held open by any process on the host (a monitor, a
/// VMM thread or a CLI that outlived its container would show here; the
/// test process's own fd count is not used, as the other tests of this
/// binary open and close pipes meanwhile), mounts under the store, the
/// monitor processes of
/// this store, and store entries.
fn footprint(h: &Husk) -> (Vec<String>, String, usize, Vec<String>) {
    let mut fds: Vec<String> = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(dir) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in dir.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if target.starts_with(&h.root) {
                    fds.push(format!("{} -> {}", fd.path().display(), target.display()));
                }
            }
        }
    }
    fds.sort();
    let root = h.root.display().to_string();
    // Mounts under the store only: other suites (an engine's dockerd, a
    // Podman) may mount and unmount their own meanwhile.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&root))
        .collect::<Vec<_>>()
        .join("\n");
    let monitors = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    let c = text(&c);
                    c.contains("__monitor") && c.contains(&root)
                })
                .unwrap_or(false)
        })
        .count();
    let mut entries: Vec<String> = std::fs::read_dir(h.root.join("containers"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    entries.sort();
    (fds, mounts, monitors, entries)
}

#[test]
fn starting_and_removing_in_a_loop_leaks_nothing() {
    require_kvm();
    let t0 = Instant::now();
    let h = Husk::new("lifecycle-e2e-store3");
    // Warm up the store (its directories and locks exist from here on).
    let _ = h.out(&["ps", "-a"]);
    let before = footprint(&h);
    let vm = husk_vm_args();
    let mut create = vec!["create".to_string()];
    create.extend(vm);
    create.extend(["--".into(), "sh".into(), "-c".into(), "sleep 1000".into()]);
    let create: Vec<&str> = create.iter().map(String::as_str).collect();
    // 20 containers created, started (the monitor and VM come up) and
    // removed with -f while they boot (a full boot each would take 20 x 25 s
    // on PVM hosts; the full run-to-Up path is covered by the other tests).
    for i in 0..20 {
        let id = h.ok(&create).trim().to_string();
        let mut start = h
            .cmd(&["start", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Until the monitor runs.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !h.ok(&["ps", "-q"]).contains(&id[..12]) {
            assert!(Instant::now() < deadline, "container {i} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(h.ok(&["rm", "-f", &id]), format!("{id}\n"));
        let _ = start.wait();
    }
    let after = footprint(&h);
    assert_eq!(before.0, after.0, "files of the store held open");
    assert_eq!(before.1, after.1, "mounts");
    assert_eq!(before.2, after.2, "monitor processes");
    assert_eq!(before.3, after.3, "store entries");
    eprintln!(
        "starting_and_removing_in_a_loop_leaks_nothing: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
