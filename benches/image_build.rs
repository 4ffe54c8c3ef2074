//! `husk build` benchmark: a 6-step Dockerfile (FROM, ENV, WORKDIR, COPY,
//! RUN, CMD), cold (`--no-cache`, one RUN step: one microVM) and cached
//! (every step from the cache, no VM), beside `docker build` of the same
//! Dockerfile and context with runc when a Docker daemon answers, in one
//! table.
//!
//! `cargo bench -p husk-bench --bench build` (BENCH_RUNS, default 2). It
//! drives the real `husk` binary (`target/release/husk`, built first if
//! missing; or `HUSK_BIN`). Docker builds from `busybox` (pulled by
//! Docker); husk from the same static busybox imported offline. On a PVM
//! host the guest kernel runs emulated, so the cold husk build is mostly
//! that emulated boot; the cached build is the builder's own cost.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use husk_e2e::{agent_binary, busybox_rootfs, guest_kernel, require_kvm, scratch};

fn husk_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HUSK_BIN") {
        return p.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "husk-cli"])
        .current_dir(&root)
        .status()
        .expect("cargo build husk");
    assert!(status.success(), "building husk failed");
    root.join("target/release/husk")
}

const DOCKERFILE: &str = "FROM BASE\n\
ENV GREETING=hello\n\
WORKDIR /app\n\
COPY data.txt ./\n\
RUN wc -c data.txt > size.txt && echo \"$GREETING\" >> size.txt\n\
CMD [\"cat\", \"/app/size.txt\"]\n";

/// Runs a command, returning its wall time; panics if it fails.
fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let o = cmd.output().expect("run the build");
    assert!(
        o.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Whether a Docker daemon answers, and with runc.
fn docker_runc() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.DefaultRuntime}}"])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "runc")
        .unwrap_or(false)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("build: bench");
        return;
    }
    require_kvm();
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
        .max(1);
    let bin = husk_binary();
    let dir = scratch("bench-build");
    let _ = std::fs::remove_dir_all(&dir);
    let store = dir.join("store");
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("data.txt"), "x".repeat(1 << 16)).unwrap();
    let husk = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.arg("--root").arg(&store).args(args);
        c
    };
    timed(&mut husk(&[
        "import",
        &busybox_rootfs().display().to_string(),
        "bb",
        "--cmd",
        "sh",
    ]));
    std::fs::write(ctx.join("Dockerfile"), DOCKERFILE.replace("BASE", "bb")).unwrap();
    let kernel = guest_kernel().display().to_string();
    let agent = agent_binary().display().to_string();
    let ctx_s = ctx.display().to_string();
    let build = |extra: &[&str]| {
        let mut args = vec![
            "build", "--kernel", &kernel, "--agent", &agent, "-m", "128", "-t", "bench:1",
        ];
        args.extend_from_slice(extra);
        args.push(&ctx_s);
        timed(&mut husk(&args))
    };
    let mut cold = Vec::new();
    let mut cached = Vec::new();
    for i in 0..runs {
        let c = build(&["--no-cache"]);
        eprintln!("husk cold #{i}: {}", secs(c));
        cold.push(c);
        let w = build(&[]);
        eprintln!("husk cached #{i}: {}", secs(w));
        cached.push(w);
    }
    let docker = if docker_runc() {
        let dctx = dir.join("docker-ctx");
        std::fs::create_dir_all(&dctx).unwrap();
        std::fs::copy(ctx.join("data.txt"), dctx.join("data.txt")).unwrap();
        std::fs::write(
            dctx.join("Dockerfile"),
            DOCKERFILE.replace("BASE", "busybox"),
        )
        .unwrap();
        let d = dctx.display().to_string();
        let dbuild = |extra: &[&str]| {
            let mut c = Command::new("docker");
            c.env("DOCKER_BUILDKIT", "0")
                .args(["build", "-q", "-t", "husk-bench:1"])
                .args(extra)
                .arg(&d);
            timed(&mut c)
        };
        // The base image is pulled once, outside the timings.
        timed(Command::new("docker").args(["pull", "-q", "busybox"]));
        let (mut dc, mut dw) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            dc.push(dbuild(&["--no-cache"]));
            dw.push(dbuild(&[]));
        }
        Some((median(dc), median(dw)))
    } else {
        eprintln!("no Docker daemon with runc answers: the docker column is left empty");
        None
    };
    let host = husk_vmm::host::detect();
    let col = |p: Option<Duration>| p.map_or_else(|| "n/a (no docker.io)".to_string(), secs);
    println!();
    println!("husk build of a 6-step Dockerfile (1 RUN), {host}, median of {runs}");
    println!("| what | husk (RUN in a microVM) | docker build (runc) |");
    println!("| --- | --- | --- |");
    println!(
        "| cold build (--no-cache) | {} | {} |",
        secs(median(cold)),
        col(docker.map(|d| d.0))
    );
    println!(
        "| cached rebuild | {} | {} |",
        secs(median(cached)),
        col(docker.map(|d| d.1))
    );
}
