//! Boots the real guest kernel with a static test program as init and checks
//! what it prints after making real system calls (write, getpid,
//! clock_gettime, mmap, open/read of a file in the initramfs, fork + waitpid
//! of a child that exits 3) and that its final power-off reaches the VMM as
//! a clean exit. The guest has two vCPUs, so the boot processor brings up an
//! application processor through the MP table and INIT/SIPI. One boot serves
//! every check: boots are slow on PVM hosts.

use std::time::{Duration, Instant};

use husk_e2e::{boot, guest_kernel, printk_time, require_kvm, scratch, test_init_initramfs};
use husk_vmm::{GuestExit, HostKind};

/// Asserts the test program's lines, in the order it prints them.
fn assert_checks(console: &str) {
    let expected = [
        "husk-test: write ok",
        "husk-test: getpid 1",
        "husk-test: clock_gettime monotonic",
        "husk-test: mmap 1024 pages sum 130560",
        "husk-test: read \"hello from the initramfs\"",
        "husk-test: child exited 3",
        "husk-test: done",
    ];
    let mut rest = console;
    for line in expected {
        match rest.find(line) {
            Some(i) => rest = &rest[i + line.len()..],
            None => panic!("missing (or out of order): {line:?}\n--- console ---\n{console}"),
        }
    }
    assert!(!console.contains("husk-test: FAIL"), "{console}");
}

/// The same kernel as an (LZ4-compressed) bzImage: husk loads its setup
/// header and protected-mode part and enters its 64-bit entry point.
#[test]
fn bzimage_boots_too() {
    require_kvm();
    let bzimage = guest_kernel().with_file_name("bzImage");
    assert!(
        bzimage.exists(),
        "guest-kernel/build.sh puts a bzImage beside the vmlinux"
    );
    let dir = scratch("bzimage");
    let initrd = test_init_initramfs(&dir);
    let b = boot(&bzimage, &initrd, "", 1, Duration::from_secs(600));
    let outcome = b
        .result
        .unwrap_or_else(|e| panic!("bzImage guest failed: {e}\n{}", b.console));
    assert_checks(&b.console);
    assert_eq!(outcome.exit, GuestExit::PowerOff);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn guest_runs_user_space_and_powers_off() {
    require_kvm();
    let kernel = guest_kernel();
    let dir = scratch("boot");
    let initrd = test_init_initramfs(&dir);

    let started = Instant::now();
    let b = boot(&kernel, &initrd, "", 2, Duration::from_secs(600));
    let wall = started.elapsed();
    let console = b.console;
    let outcome = match b.result {
        Ok(o) => o,
        Err(e) => {
            let mut chain = format!("{e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                chain.push_str(&format!(": {s}"));
                src = s.source();
            }
            panic!("guest failed: {chain}\n--- console ---\n{console}");
        }
    };

    // The checks, in the order init prints them.
    assert_checks(&console);
    assert!(
        console.contains("smp: Brought up 1 node, 2 CPUs"),
        "{console}"
    );
    assert_eq!(
        outcome.exit,
        GuestExit::PowerOff,
        "the guest should power off, not reboot"
    );
    assert!(console.contains("reboot: Power down"), "{console}");

    // The compatibility mode is on exactly where the host needs it.
    let pvm = outcome.host == HostKind::Pvm;
    assert_eq!(outcome.pvm_compat, pvm);
    assert_eq!(
        console.contains("husk: PVM compatibility mode on"),
        pvm,
        "{console}"
    );
    assert_eq!(outcome.cmdline.contains("husk.pvm=1"), pvm);

    eprintln!(
        "e2e boot on {}: 'Run /init' at {:?} s guest time, last line at {:?} s, power-off after {:.2} s wall",
        outcome.host,
        printk_time(&console, "Run /init as init process"),
        printk_time(&console, "reboot: Power down"),
        wall.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
