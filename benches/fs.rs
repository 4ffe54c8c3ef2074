//! virtio-fs benchmark: sequential read and write of a large file and `stat`
//! of many files, through husk's virtio-fs (a read-write volume in a real
//! guest) beside the same work done directly on the host, in one run.
//!
//! `cargo bench -p husk-bench --bench fs` (BENCH_FS_MIB, default 256;
//! BENCH_FS_FILES, default 10000). Guest times are measured on the host
//! around each command, less the time of an empty command in the same
//! guest. Where the time goes is printed beside them: the guest kernel
//! copying the same bytes with no I/O at all (`dd` from /dev/zero to
//! /dev/null), and, when the VM stops, the number of FUSE requests each
//! share served and the host time spent serving them. On a PVM host the
//! guest kernel (FUSE client, page cache copies) runs emulated, so the
//! ratios there say more about PVM than about the virtio-fs server.

use std::io::Write;
use std::time::{Duration, Instant};

use husk_e2e::{Capture, busybox_rootfs, require_kvm, sandbox_config, scratch};
use husk_runtime::{ExitStatus, RunSpec, Sandbox, Stdio, Volume};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn guest(sb: &Sandbox, script: &str) -> Duration {
    let (out, err) = (Capture::default(), Capture::default());
    let stdio = Stdio {
        stdin: None,
        stdout: Box::new(out.clone()),
        stderr: Box::new(err.clone()),
    };
    let t = Instant::now();
    let (st, _) = sb
        .exec(
            RunSpec::new(["/bin/sh", "-c", script]).env("PATH", "/bin"),
            stdio,
            None,
        )
        .expect("guest command");
    let d = t.elapsed();
    assert_eq!(st, ExitStatus::Code(0), "{script}: {}", err.text());
    d
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("fs: bench");
        return;
    }
    // The virtio-fs worker logs how many requests it served and how long
    // the host spent on them when the VM stops: the host's share. (Before
    // require_kvm, which would install the tests' logger.)
    let _ = env_logger::Builder::new()
        .parse_filters("warn,husk_devices::virtio::fs::worker=info")
        .format_target(false)
        .try_init();
    require_kvm();
    let mib = env_num("BENCH_FS_MIB", 256);
    let files = env_num("BENCH_FS_FILES", 10_000);
    let dir = scratch("bench-fs");
    let data = dir.join("share");
    std::fs::create_dir_all(data.join("files")).unwrap();

    // Host side, directly.
    let big = data.join("big");
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(&big).unwrap();
    for _ in 0..mib {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let host_write = t.elapsed();
    let t = Instant::now();
    let n = std::io::copy(
        &mut std::fs::File::open(&big).unwrap(),
        &mut std::io::sink(),
    )
    .unwrap();
    let host_read = t.elapsed();
    assert_eq!(n, (mib as u64) << 20);
    for i in 0..files {
        std::fs::write(data.join("files").join(format!("f{i}")), b"x").unwrap();
    }
    let t = Instant::now();
    for i in 0..files {
        std::fs::metadata(data.join("files").join(format!("f{i}"))).unwrap();
    }
    let host_stat = t.elapsed();

    // The same through virtio-fs, in a guest.
    let mut config = sandbox_config("bench-fs-vm", &busybox_rootfs());
    config.volumes = vec![Volume::parse(&format!("{}:/bench", data.display())).unwrap()];
    let sb = Sandbox::start(&config).expect("sandbox");
    let empty = guest(&sb, "true");
    // The guest kernel alone, no I/O: what copying the same bytes costs
    // there (it bounds the virtio-fs numbers from above).
    let g_copy = guest(
        &sb,
        &format!("dd if=/dev/zero of=/dev/null bs=1048576 count={mib} 2>/dev/null"),
    )
    .saturating_sub(empty);
    let g_read = guest(&sb, "cat /bench/big > /dev/null").saturating_sub(empty);
    let g_write = guest(
        &sb,
        &format!("dd if=/dev/zero of=/bench/out bs=1048576 count={mib} 2>/dev/null; sync"),
    )
    .saturating_sub(empty);
    let g_stat = guest(&sb, "ls -l /bench/files > /dev/null").saturating_sub(empty);
    eprintln!("(the VM stops: each share's request count and host time follow)");
    drop(sb);

    let mbps = |d: Duration| mib as f64 / d.as_secs_f64().max(1e-9);
    println!(
        "\nvirtio-fs vs host, {mib} MiB file, {files} files ({})",
        husk_vmm::host::detect()
    );
    println!(
        "{:<22} {:>14} {:>14} {:>10}",
        "operation", "host", "virtio-fs", "ratio"
    );
    println!(
        "{:<22} {:>10.1} MiB/s {:>10.2} MiB/s {:>9.0}x",
        "sequential read",
        mbps(host_read),
        mbps(g_read),
        mbps(host_read) / mbps(g_read)
    );
    println!(
        "{:<22} {:>10.1} MiB/s {:>10.2} MiB/s {:>9.0}x",
        "sequential write",
        mbps(host_write),
        mbps(g_write),
        mbps(host_write) / mbps(g_write)
    );
    println!(
        "{:<22} {:>14} {:>10.2} MiB/s   (the guest kernel copying {mib} MiB from /dev/zero to /dev/null, no I/O)",
        "guest copy only",
        "",
        mbps(g_copy)
    );
    let per = |d: Duration| d.as_secs_f64() * 1e6 / files as f64;
    println!(
        "{:<22} {:>11.1} us {:>11.0} us {:>9.0}x",
        "stat per file",
        per(host_stat),
        per(g_stat),
        per(g_stat) / per(host_stat)
    );
    println!(
        "(an empty command in the guest took {:.2} s and is subtracted)",
        empty.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
