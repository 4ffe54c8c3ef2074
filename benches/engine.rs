//! husk as Docker's runtime next to runc under the same dockerd, with the
//! same image, in one run: `docker run --rm --network none IMG true` from
//! the command to its exit, `docker exec CONTAINER true` round trips,
//! `docker stop` of a process that traps TERM, and the memory of an idle
//! container as `docker stats` reads it from the container's cgroup (for
//! husk: the whole VM, whose monitor is in that cgroup).
//!
//! `cargo bench -p husk-bench --bench engine` (BENCH_RUNS, default 3;
//! BENCH_EXECS, default 10). As root: it installs Debian's docker.io if
//! missing and starts a dockerd of its own (its own data root and socket,
//! no bridge, no iptables). It drives the release `husk` (built first if
//! missing). On a PVM host the guest kernel runs emulated, so husk's column
//! there is an artefact of the host; runc's is the floor either way.

use std::time::{Duration, Instant};

use husk_e2e::engines::{Dockerd, ensure_docker, runtime_script, text};
use husk_e2e::{require_kvm, scratch};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// What one runtime measured.
struct Figures {
    run: Duration,
    exec: Duration,
    stop: Duration,
    memory: String,
}

fn timed(d: &Dockerd, args: &[&str]) -> (Duration, String) {
    let t = Instant::now();
    let out = d.ok(args);
    (t.elapsed(), out)
}

fn measure(d: &Dockerd, runtime: &str, runs: usize, execs: usize) -> Figures {
    let mut run = Vec::new();
    for i in 0..runs {
        let (t, _) = timed(
            d,
            &[
                "run",
                "--rm",
                "--runtime",
                runtime,
                "--network",
                "none",
                "bench-bb",
                "true",
            ],
        );
        eprintln!("{runtime}: run --rm true #{i}: {}", secs(t));
        run.push(t);
    }
    let id = d
        .ok(&[
            "run",
            "-d",
            "--runtime",
            runtime,
            "--network",
            "none",
            "bench-bb",
            "sh",
            "-c",
            "trap 'exit 0' TERM; echo ready; sleep 100000 & wait",
        ])
        .trim()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !d.ok(&["logs", &id]).contains("ready") {
        assert!(Instant::now() < deadline, "{runtime}: no 'ready'");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut exec = Vec::new();
    for _ in 0..execs {
        exec.push(timed(d, &["exec", &id, "true"]).0);
    }
    let memory = d
        .ok(&["stats", "--no-stream", "--format", "{{.MemUsage}}", &id])
        .trim()
        .to_string();
    let (stop, _) = timed(d, &["stop", "-t", "60", &id]);
    d.ok(&["rm", &id]);
    Figures {
        run: median(run),
        exec: median(exec),
        stop,
        memory,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("engine: bench");
        return;
    }
    require_kvm();
    let runs = env_num("BENCH_RUNS", 3).max(1);
    let execs = env_num("BENCH_EXECS", 10).max(1);
    ensure_docker();
    let host = husk_vmm::host::detect();
    eprintln!("host: {host}");
    let dir = scratch("bench-engine");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let husk = husk_e2e::release_husk_binary();
    let d = Dockerd::start(&dir.join("d"), &runtime_script(&dir, &husk));
    let tar = dir.join("busybox.tar");
    husk_e2e::engines::tar_dir(&husk_e2e::busybox_rootfs(), &tar);
    d.ok(&[
        "import",
        "-c",
        "ENV PATH=/bin",
        tar.to_str().unwrap(),
        "bench-bb",
    ]);
    let version = d.ok(&["version", "--format", "{{.Server.Version}}"]);
    let runc = measure(&d, "runc", runs, execs);
    let vm = measure(&d, "husk", runs, execs);
    drop(d);
    let runc_version = text(
        &std::process::Command::new("runc")
            .arg("--version")
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    );
    println!();
    println!(
        "Docker {} with runc {} and husk, {host}; busybox, --network none, {runs} runs, {execs} execs",
        version.trim(),
        runc_version
            .lines()
            .next()
            .unwrap_or("?")
            .trim_start_matches("runc version ")
    );
    println!("| what | runc (container) | husk (microVM) |");
    println!("| --- | --- | --- |");
    println!(
        "| `docker run --rm IMG true`, median | {} | {} |",
        secs(runc.run),
        secs(vm.run)
    );
    println!(
        "| `docker exec C true`, median | {} | {} |",
        secs(runc.exec),
        secs(vm.exec)
    );
    println!(
        "| `docker stop` (TERM trapped, exits at once) | {} | {} |",
        secs(runc.stop),
        secs(vm.stop)
    );
    println!(
        "| idle container, `docker stats` memory | {} | {} |",
        runc.memory, vm.memory
    );
}
