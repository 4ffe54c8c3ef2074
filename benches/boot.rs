//! Boot benchmark: the same guest kernel and initramfs (the end-to-end test's
//! init, which makes its system calls, prints, and powers off) booted by husk and
//! by `qemu-system-x86_64 -M microvm -enable-kvm`, several times each, in one
//! run. Prints wall time to the guest's exit and the guest's own timestamp at
//! "Run /init", and the ratio husk/QEMU.
//!
//! `cargo bench -p husk-bench --bench boot` (BENCH_RUNS=N to change the count).
//! On a PVM host both VMMs run the guest kernel emulated, so absolute times
//! are emulation artefacts; compare the ratio.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_e2e::{guest_kernel, printk_time, require_kvm, scratch, test_init_initramfs};
use husk_vmm::boot::cmdline::KernelCmdline;
use husk_vmm::{CompatMode, GuestExit, VmConfig};

struct Sample {
    wall: Duration,
    run_init: Option<f64>,
}

fn husk_once(kernel: &std::path::Path, initrd: &std::path::Path) -> Sample {
    let console = husk_e2e::Console::default();
    let t = Instant::now();
    let out = husk_vmm::run(VmConfig {
        kernel: kernel.to_owned(),
        initrd: Some(initrd.to_owned()),
        cmdline_extra: String::new(),
        mem_size: 128 << 20,
        vcpus: 1,
        compat: CompatMode::Auto,
        console: Box::new(console.clone()),
        timeout: Some(Duration::from_secs(600)),
        vsock: None,
        fs: Vec::new(),
        net: None,
        exit: None,
    })
    .expect("husk boot");
    let wall = t.elapsed();
    let text = console.text();
    assert_eq!(out.exit, GuestExit::PowerOff);
    assert!(text.contains("husk-test: done"), "{text}");
    Sample {
        wall,
        run_init: printk_time(&text, "Run /init as init process"),
    }
}

fn qemu_once(kernel: &std::path::Path, initrd: &std::path::Path, cmdline: &str) -> Option<Sample> {
    let t = Instant::now();
    let out = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,x-option-roms=off,rtc=off",
            "-enable-kvm",
            "-cpu",
            "host",
            "-m",
            "128",
        ])
        .args([
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
        ])
        // The guest powers off through husk's port; QEMU's isa-debug-exit
        // device at the same port ends QEMU the same way.
        .args([
            "-device",
            &format!(
                "isa-debug-exit,iobase={:#x},iosize=1",
                husk_vmm::vm::POWEROFF_PORT
            ),
        ])
        .args(["-no-reboot", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", cmdline])
        .stdin(Stdio::null())
        .output();
    let wall = t.elapsed();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "qemu-system-x86_64 not runnable ({e}); install it with apt-get install qemu-system-x86"
            );
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("husk-test: done") {
        eprintln!(
            "QEMU's guest did not finish:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(Sample {
        wall,
        run_init: printk_time(&text, "Run /init as init process"),
    })
}

fn summary(name: &str, s: &[Sample]) -> Option<f64> {
    if s.is_empty() {
        println!("{name:<10} {:>10} {:>10} {:>16}", "-", "-", "-");
        return None;
    }
    let mut w: Vec<f64> = s.iter().map(|x| x.wall.as_secs_f64()).collect();
    w.sort_by(f64::total_cmp);
    let median = w[w.len() / 2];
    let init: Vec<f64> = s.iter().filter_map(|x| x.run_init).collect();
    let init_med = if init.is_empty() {
        f64::NAN
    } else {
        init[init.len() / 2]
    };
    println!("{name:<10} {median:>10.3} {:>10.3} {init_med:>16.3}", w[0]);
    Some(median)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("boot: bench");
        return;
    }
    require_kvm();
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let kernel = guest_kernel();
    let dir = scratch("bench-boot");
    let initrd = test_init_initramfs(&dir);

    // QEMU gets exactly the command line husk would give the guest here.
    let host = husk_vmm::host::detect();
    let cmdline = KernelCmdline::new(host, husk_vmm::vm::POWEROFF_PORT)
        .build()
        .unwrap();

    let mut husk = Vec::new();
    let mut qemu = Vec::new();
    for i in 0..runs {
        eprintln!("run {}/{runs}: husk", i + 1);
        husk.push(husk_once(&kernel, &initrd));
        eprintln!("run {}/{runs}: qemu -M microvm", i + 1);
        if let Some(s) = qemu_once(&kernel, &initrd, &cmdline) {
            qemu.push(s);
        }
    }
    println!("\nboot to guest exit, {runs} runs each, host: {host}");
    println!(
        "{:<10} {:>10} {:>10} {:>16}",
        "vmm", "median s", "min s", "'Run /init' s"
    );
    let h = summary("husk", &husk);
    let q = summary("qemu", &qemu);
    if let (Some(h), Some(q)) = (h, q) {
        println!("ratio husk/qemu (median wall): {:.2}", h / q);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
