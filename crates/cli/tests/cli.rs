//! The `husk` binary's behaviour on bad input: clear errors with their
//! causes and a hint, exit status 125 (as `docker run` uses for its own
//! failures), nothing booted.

use std::process::{Command, Output};

fn husk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(args)
        .output()
        .expect("run husk")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("husk-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn missing_kernel_is_a_clear_error_with_a_hint() {
    let o = husk(&["boot", "--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(o.status.code(), Some(125));
    let e = stderr(&o);
    assert!(e.contains("husk: error: cannot boot the guest"), "{e}");
    assert!(
        e.contains("caused by: kernel /nonexistent/vmlinux does not exist"),
        "{e}"
    );
    assert!(
        e.contains("hint: build the guest kernel with: guest-kernel/build.sh"),
        "{e}"
    );
}

#[test]
fn garbage_kernel_is_rejected() {
    let d = scratch("garbage");
    let k = d.join("vmlinux");
    std::fs::write(&k, b"definitely not a kernel").unwrap();
    let o = husk(&["boot", "--kernel", k.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("is neither a vmlinux ELF nor a bzImage"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn too_little_memory_and_bad_cpu_counts_are_rejected() {
    let d = scratch("mem");
    let k = d.join("vmlinux");
    std::fs::write(&k, b"\x7fELF").unwrap();
    let o = husk(&["boot", "--kernel", k.to_str().unwrap(), "--memory", "8"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("8 MiB of guest memory is too little"),
        "{}",
        stderr(&o)
    );
    let o = husk(&["boot", "--kernel", k.to_str().unwrap(), "--cpus", "0"]);
    assert!(
        stderr(&o).contains("0 vCPUs requested; husk supports 1 to 32"),
        "{}",
        stderr(&o)
    );
    // A flag clap cannot parse: clap's own usage error.
    let o = husk(&["boot", "--kernel", k.to_str().unwrap(), "--cpus", "lots"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("invalid value 'lots'"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn host_command_names_the_host_kind() {
    let o = husk(&["host"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("host: "), "{out}");
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert!(out.contains("PVM"), "{out}");
        assert!(out.contains("compatibility mode"), "{out}");
    }
}

#[test]
fn pack_initramfs_writes_a_newc_archive() {
    let d = scratch("pack");
    std::fs::create_dir_all(d.join("root/etc")).unwrap();
    std::fs::write(d.join("root/etc/hello"), b"hi").unwrap();
    let out = d.join("rd.cpio");
    let o = husk(&[
        "pack-initramfs",
        "--dir",
        d.join("root").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&out).unwrap();
    assert!(bytes.starts_with(b"070701"));
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("dev/console") && text.contains("etc/hello") && text.contains("TRAILER!!!")
    );
    std::fs::remove_dir_all(d).unwrap();
}

/// Container commands on bad input: unknown containers, bad names, bad
/// volumes and tmpfs paths are refused before anything is created or booted.
#[test]
fn container_commands_refuse_bad_input() {
    let root = scratch("containers");
    let r = root.to_str().unwrap();
    let o = husk(&["--root", r, "rm", "nosuch"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("Error: No such container: nosuch"),
        "{}",
        stderr(&o)
    );
    let o = husk(&["--root", r, "start", "nosuch"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("No such container: nosuch"),
        "{}",
        stderr(&o)
    );
    let o = husk(&["--root", r, "diff", "nosuch"]);
    assert_eq!(o.status.code(), Some(1));
    let o = husk(&["--root", r, "inspect", "nosuch"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");
    assert!(
        stderr(&o).contains("Error: No such object: nosuch"),
        "{}",
        stderr(&o)
    );
    let o = husk(&["--root", r, "ps", "-a"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "CONTAINER ID   IMAGE   COMMAND   CREATED   STATUS   PORTS   NAMES\n"
    );
    let rootfs = scratch("containers-rootfs");
    let rf = rootfs.to_str().unwrap();
    for (args, want) in [
        (vec!["--name", "bad name!"], "invalid container name"),
        (
            vec!["-v", "/dev/null:/x"],
            "neither a directory nor a regular file",
        ),
        (
            vec!["-v", "/tmp:/a,b"],
            "must not contain spaces, commas or colons",
        ),
        (vec!["--tmpfs", "relative"], "--tmpfs relative"),
        (vec!["--tmpfs", "/a/../b"], "must not contain '..'"),
    ] {
        let mut a = vec!["--root", r, "run", "--rootfs", rf];
        a.extend_from_slice(&args);
        a.extend_from_slice(&["--", "true"]);
        let o = husk(&a);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    // Nothing was created.
    let o = husk(&["--root", r, "ps", "-a", "-q"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "");
    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(rootfs).unwrap();
}
