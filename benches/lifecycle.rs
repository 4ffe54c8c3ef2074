//! Container lifecycle benchmark: `husk run -d` until the main process
//! runs, `husk exec CONTAINER true` round trips (median and p95), `husk
//! stop` of a process that traps TERM, and the monitor's resident memory
//! per idle container, beside the host doing the same without a VM (a
//! host process started and waited for: the limit) in one run.
//!
//! `cargo bench -p husk-bench --bench lifecycle` (BENCH_EXECS, default 50;
//! BENCH_RUNS, default 3). It drives the real `husk` binary
//! (`target/release/husk`, built first if missing), as a user would. On a
//! PVM host the guest kernel runs emulated, so absolute guest times are an
//! artefact of the host; the host column is the floor either way.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use husk_e2e::{husk_vm_args, require_kvm, scratch};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn husk_binary() -> PathBuf {
    husk_e2e::release_husk_binary()
}

struct Husk {
    bin: PathBuf,
    root: PathBuf,
}

impl Husk {
    fn run(&self, args: &[&str]) -> (Duration, String) {
        let t = Instant::now();
        let o = Command::new(&self.bin)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .output()
            .expect("run husk");
        let d = t.elapsed();
        assert!(
            o.status.success(),
            "husk {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        (d, String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn rss_kib(pid: u64) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("lifecycle: bench");
        return;
    }
    require_kvm();
    let execs = env_num("BENCH_EXECS", 50).max(1);
    let runs = env_num("BENCH_RUNS", 3).max(1);
    let h = Husk {
        bin: husk_binary(),
        root: scratch("bench-lifecycle-store"),
    };
    let _ = std::fs::remove_dir_all(&h.root);
    let vm_args = husk_vm_args();
    let vm: Vec<&str> = vm_args.iter().map(String::as_str).collect();
    let host = husk_vmm::host::detect();
    eprintln!("host: {host}");

    // run -d until the main process runs.
    let mut up = Vec::new();
    let mut ids = Vec::new();
    for i in 0..runs {
        let mut args = vec!["run", "-d"];
        args.extend_from_slice(&vm);
        let name = format!("bench{i}");
        args.extend_from_slice(&["--name", &name, "--", "sh", "-c"]);
        args.push("trap 'exit 0' TERM; while :; do sleep 1; done");
        let (d, out) = h.run(&args);
        eprintln!("run -d #{i}: {:.2} s", d.as_secs_f64());
        up.push(d);
        ids.push(out.trim().to_string());
    }
    up.sort();
    let host_start = {
        let t = Instant::now();
        let mut c = Command::new("/bin/sh")
            .args(["-c", "true"])
            .spawn()
            .unwrap();
        c.wait().unwrap();
        t.elapsed()
    };

    // exec true round trips.
    let mut ex = Vec::new();
    for _ in 0..execs {
        ex.push(h.run(&["exec", &ids[0], "true"]).0);
    }
    ex.sort();
    let mut hx = Vec::new();
    for _ in 0..execs {
        let t = Instant::now();
        Command::new("/bin/true").status().unwrap();
        hx.push(t.elapsed());
    }
    hx.sort();

    // Monitor memory per idle container.
    std::thread::sleep(Duration::from_secs(2));
    let mut rss = Vec::new();
    for id in &ids {
        let (_, out) = h.run(&["inspect", id]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let pid = v[0]["State"]["Pid"].as_u64().unwrap_or(0);
        rss.push(rss_kib(pid));
    }
    let rss_avg = rss.iter().sum::<u64>() / rss.len() as u64;

    // stop of a process that traps TERM.
    let mut stops = Vec::new();
    for id in &ids {
        stops.push(h.run(&["stop", id]).0);
    }
    stops.sort();
    let host_stop = {
        let mut c = Command::new("/bin/sh")
            .args(["-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        // SAFETY: kill(2) of our own child, which has not been waited for.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().unwrap();
        t.elapsed()
    };
    for id in &ids {
        h.run(&["rm", id]);
    }

    println!();
    println!("container lifecycle, {host}, {runs} containers, {execs} execs");
    println!("| what | husk (microVM) | host process (the limit) |");
    println!("| --- | --- | --- |");
    println!(
        "| `run -d` to running, median of {runs} | {} | {} (fork+exec+wait of sh) |",
        ms(percentile(&up, 0.5)),
        ms(host_start)
    );
    println!(
        "| `exec CONTAINER true`, median / p95 of {execs} | {} / {} | {} / {} (`/bin/true`) |",
        ms(percentile(&ex, 0.5)),
        ms(percentile(&ex, 0.95)),
        ms(percentile(&hx, 0.5)),
        ms(percentile(&hx, 0.95))
    );
    println!(
        "| `stop` (TERM trapped), median | {} | {} (kill + wait) |",
        ms(percentile(&stops, 0.5)),
        ms(host_stop)
    );
    println!(
        "| monitor RSS per idle container (VMM + touched guest RAM of 128 MiB) | {} MiB | - |",
        rss_avg / 1024
    );
}
