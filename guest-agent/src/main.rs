//! husk's guest agent: PID 1 in the microVM.
//!
//! It mounts the kernel filesystems, listens on vsock port
//! [`husk_protocol::AGENT_PORT`], and for each connection from the host runs
//! one process as asked, streaming its stdout and stderr back separately (or
//! its terminal), passing stdin, signals and terminal resizes to it, and
//! reporting its exit status after all its output. The process the host
//! marks as the container's main process ends the sandbox: when it has
//! exited and the host has closed its connection, the agent powers the VM
//! off, as a container ends when its main process does.

mod dns;
mod net;
mod process;
mod procinfo;
mod reaper;
mod sys;

use std::fs::File;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use husk_protocol::{
    Event, FrameReader, FrameWriter, MAX_DATA_CHUNK, Request, RunSpec, agent_handshake,
};

use crate::reaper::Reaper;

/// Where the container's root directory is: an overlay over the virtio-fs
/// share, or a directory the host packed into the initramfs. Without it,
/// processes run in the initramfs root.
const CONTAINER_ROOT: &str = "/rootfs";
/// How long the agent waits for the host to close the main process's
/// connection before it powers off anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

fn log(msg: &str) {
    let _ = writeln!(std::io::stderr(), "husk-agent: {msg}");
}

/// Mounts the kernel filesystems the agent itself uses.
fn agent_mounts() {
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let devpts = "newinstance,ptmxmode=0666,mode=0620,gid=5";
    let mounts: [(&str, &str, &str, libc::c_ulong, Option<&str>); 6] = [
        ("proc", "/proc", "proc", nosuid_nodev_noexec, None),
        ("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            libc::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some(devpts),
        ),
        (
            "shm",
            "/dev/shm",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        ),
    ];
    mount_all(&mounts);
    // /dev/ptmx must be the devpts instance's.
    let _ = std::fs::remove_file("/dev/ptmx");
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
}

/// Sets up the container root's /proc, /sys and /dev as Docker does: a
/// read-only sysfs, and a tmpfs /dev with only the standard device nodes
/// (null, zero, full, random, urandom, tty), the fd links, /dev/pts (the
/// agent's instance, bound in: the agent opens the container's terminals
/// and the container must find them), /dev/shm and /dev/mqueue.
fn container_mounts(root: &str) {
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let (proc_, sys_, dev) = (
        format!("{root}/proc"),
        format!("{root}/sys"),
        format!("{root}/dev"),
    );
    let mounts: [(&str, &str, &str, libc::c_ulong, Option<&str>); 3] = [
        ("proc", &proc_, "proc", nosuid_nodev_noexec, None),
        (
            "sysfs",
            &sys_,
            "sysfs",
            nosuid_nodev_noexec | libc::MS_RDONLY,
            None,
        ),
        (
            "tmpfs",
            &dev,
            "tmpfs",
            libc::MS_NOSUID,
            Some("mode=0755,size=65536k"),
        ),
    ];
    mount_all(&mounts);
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = format!("{dev}/{name}");
        if let Err(e) = sys::mknod_char(&path, 0o666, major, minor) {
            log(&format!("mknod {path}: {e}"));
        }
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let _ = std::os::unix::fs::symlink(target, format!("{dev}/{name}"));
    }
    let pts = format!("{dev}/pts");
    let _ = std::fs::create_dir_all(&pts);
    if let Err(e) = sys::mount("/dev/pts", &pts, "", libc::MS_BIND, None) {
        log(&format!("bind mount /dev/pts on {pts}: {e}"));
    }
    let (shm, mqueue) = (format!("{dev}/shm"), format!("{dev}/mqueue"));
    let more: [(&str, &str, &str, libc::c_ulong, Option<&str>); 2] = [
        (
            "shm",
            &shm,
            "tmpfs",
            nosuid_nodev_noexec,
            Some("mode=1777,size=65536k"),
        ),
        ("mqueue", &mqueue, "mqueue", nosuid_nodev_noexec, None),
    ];
    mount_all(&more);
}

fn mount_all(mounts: &[(&str, &str, &str, libc::c_ulong, Option<&str>)]) {
    for &(src, target, fs, flags, data) in mounts {
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = sys::mount(src, target, fs, flags, data) {
            // Already mounted (devtmpfs automount) is fine.
            if e.raw_os_error() != Some(libc::EBUSY) {
                log(&format!("mount {fs} on {target}: {e}"));
            }
        }
    }
}

type Writer = Arc<Mutex<FrameWriter<File>>>;

fn send(w: &Writer, ev: &Event) -> bool {
    w.lock().unwrap_or_else(|e| e.into_inner()).send(ev).is_ok()
}

/// Copies one output stream of the process to the host.
fn pump(mut from: File, to: Writer, stderr: bool) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; MAX_DATA_CHUNK];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let data = buf[..n].to_vec();
                    let ev = if stderr {
                        Event::Stderr { data }
                    } else {
                        Event::Stdout { data }
                    };
                    if !send(&to, &ev) {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // EIO: the terminal's last user went away.
                Err(_) => break,
            }
        }
    })
}

/// Writes stdin chunks to the process from a bounded queue, so a process that
/// never reads stdin blocks only this thread.
fn stdin_writer(mut to: File) -> SyncSender<Option<Vec<u8>>> {
    let (tx, rx) = sync_channel::<Option<Vec<u8>>>(16);
    std::thread::spawn(move || {
        while let Ok(Some(chunk)) = rx.recv() {
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        // Dropping `to` closes the process's stdin.
    });
    tx
}

struct Shared {
    reaper: Reaper,
    main_started: AtomicBool,
    /// The main process's pid while it runs.
    main_pid: Mutex<Option<i32>>,
    root: Option<String>,
}

impl Shared {
    fn main_pid(&self) -> Option<i32> {
        *self.main_pid.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs `f` on a short-lived thread of its own, so that the namespace
/// changes it makes for its children (`unshare`/`setns` of CLONE_NEWPID
/// apply to the calling thread's future children) go with it.
fn on_own_thread<T: Send>(f: impl FnOnce() -> std::io::Result<T> + Send) -> std::io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the spawning thread panicked")))
    })
}

/// The main process's namespaces and root, opened while it runs.
struct MainNs {
    pid: std::os::fd::OwnedFd,
    mnt: std::os::fd::OwnedFd,
    root: std::os::fd::OwnedFd,
}

fn open_main_ns(main: i32) -> std::io::Result<MainNs> {
    let open =
        |what: &str| File::open(format!("/proc/{main}/{what}")).map(std::os::fd::OwnedFd::from);
    Ok(MainNs {
        pid: open("ns/pid")?,
        mnt: open("ns/mnt")?,
        root: open("root")?,
    })
}

/// Starts `spec`: the main process as PID 1 of a new PID namespace with a
/// /proc of its own; any other process, while the main one runs, in the
/// main process's PID and mount namespaces (so it sees what the main
/// process sees); otherwise in a mount namespace of its own.
fn spawn(spec: &RunSpec, shared: &Shared) -> std::io::Result<(i32, process::Started)> {
    let root = shared.root.as_deref();
    if spec.main {
        let place = match root {
            Some(root) => process::Place::Root {
                root,
                fresh_proc: true,
            },
            None => process::Place::Agent,
        };
        return on_own_thread(|| {
            sys::unshare(libc::CLONE_NEWPID)?;
            shared.reaper.spawn(|| process::start(spec, place))
        });
    }
    let joined = shared.main_pid().map(open_main_ns).and_then(|r| {
        r.map_err(|e| {
            log(&format!(
                "cannot join the main process (it may have exited): {e}"
            ))
        })
        .ok()
    });
    match joined {
        Some(ns) => on_own_thread(|| {
            sys::setns(&ns.pid, libc::CLONE_NEWPID)?;
            shared.reaper.spawn(|| {
                process::start(
                    spec,
                    process::Place::Join {
                        mnt: &ns.mnt,
                        root: &ns.root,
                    },
                )
            })
        }),
        None => {
            let place = match root {
                Some(root) => process::Place::Root {
                    root,
                    fresh_proc: false,
                },
                None => process::Place::Agent,
            };
            shared.reaper.spawn(|| process::start(spec, place))
        }
    }
}

fn serve(conn: File, shared: Arc<Shared>) -> Result<(), String> {
    let mut reader = FrameReader::new(conn.try_clone().map_err(|e| e.to_string())?);
    let mut writer = FrameWriter::new(conn);
    agent_handshake(
        &mut reader,
        &mut writer,
        concat!("husk-agent ", env!("CARGO_PKG_VERSION")),
    )
    .map_err(|e| format!("handshake: {e}"))?;
    let writer: Writer = Arc::new(Mutex::new(writer));
    let spec = match reader.recv::<Request>() {
        Ok(Some(Request::Run(spec))) => spec,
        Ok(Some(Request::Top)) => {
            let (titles, processes) = procinfo::top(shared.main_pid(), shared.root.as_deref());
            send(&writer, &Event::Top { titles, processes });
            return Ok(());
        }
        Ok(Some(Request::Stats)) => {
            send(&writer, &Event::Stats(procinfo::stats(shared.main_pid())));
            return Ok(());
        }
        Ok(None) => return Ok(()),
        Ok(Some(other)) => {
            let message = format!("expected Run, got {other:?}");
            send(
                &writer,
                &Event::Error {
                    message: message.clone(),
                },
            );
            return Err(message);
        }
        Err(e) => return Err(e.to_string()),
    };
    let is_main = spec.main;
    if is_main && shared.main_started.swap(true, Ordering::SeqCst) {
        let message = "a main process was already started in this sandbox".to_owned();
        send(
            &writer,
            &Event::Error {
                message: message.clone(),
            },
        );
        return Err(message);
    }
    let started = spawn(&spec, &shared);
    let (pid, started) = match started {
        Ok(s) => s,
        Err(e) => {
            let argv0 = String::from_utf8_lossy(spec.argv.first().map_or(&[][..], |a| a));
            let message = format!("cannot start {argv0}: {e}");
            send(
                &writer,
                &Event::Error {
                    message: message.clone(),
                },
            );
            if is_main {
                power_off_after_close(&mut reader);
            }
            return Err(message);
        }
    };
    let exit_rx = shared.reaper.watch(pid);
    if is_main {
        *shared.main_pid.lock().unwrap_or_else(|e| e.into_inner()) = Some(pid);
    }
    send(&writer, &Event::Started { pid: pid as u32 });

    let out = pump(started.stdout, writer.clone(), false);
    let err = started.stderr.map(|e| pump(e, writer.clone(), true));
    let mut stdin = started.stdin.map(stdin_writer);
    let pty = started.pty;

    // The waiter: exit status, then the rest of the output, then Exited.
    let exited = Arc::new(AtomicBool::new(false));
    let waiter = {
        let writer = writer.clone();
        let exited = exited.clone();
        let shared = shared.clone();
        std::thread::spawn(move || {
            let status = exit_rx.recv().ok();
            // Reaped: from now on the pid is not ours to signal or kill.
            exited.store(true, Ordering::SeqCst);
            if is_main {
                *shared.main_pid.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            let _ = out.join();
            if let Some(e) = err {
                let _ = e.join();
            }
            if let Some(st) = status {
                send(&writer, &Event::Exited(st));
            }
        })
    };

    // Requests until the host closes the connection.
    loop {
        match reader.recv::<Request>() {
            Ok(Some(Request::Stdin { data })) => {
                if let Some(tx) = &stdin
                    && tx.send(Some(data)).is_err()
                {
                    stdin = None;
                }
            }
            Ok(Some(Request::CloseStdin)) => {
                if let Some(tx) = stdin.take() {
                    let _ = tx.send(None);
                }
            }
            Ok(Some(Request::Signal { signo })) => {
                if !exited.load(Ordering::SeqCst)
                    && let Err(e) = sys::kill(pid, signo)
                {
                    send(
                        &writer,
                        &Event::Error {
                            message: format!("signal {signo}: {e}"),
                        },
                    );
                }
            }
            Ok(Some(Request::Resize { rows, cols })) => {
                if let Some(p) = &pty {
                    let _ = process::resize(p, rows, cols);
                }
            }
            Ok(Some(Request::Wait)) => {
                // Exited is sent by the waiter when the process ends.
            }
            Ok(Some(other)) => {
                send(
                    &writer,
                    &Event::Error {
                        message: format!("unexpected request {other:?}"),
                    },
                );
            }
            Ok(None) | Err(_) => break,
        }
    }
    drop(stdin);
    if !is_main && !exited.load(Ordering::SeqCst) {
        // The host side of this process is gone: so is the process (its
        // process group: setsid made it the leader of one).
        if sys::kill(-pid, libc::SIGKILL).is_err() {
            let _ = sys::kill(pid, libc::SIGKILL);
        }
    }
    if is_main {
        // The host closed the main process's connection: once the process
        // has exited, the container is over.
        let _ = waiter.join();
        log("container exited; powering off");
        power_off();
    }
    Ok(())
}

fn power_off_after_close(reader: &mut FrameReader<File>) {
    let deadline = std::time::Instant::now() + CLOSE_GRACE;
    while std::time::Instant::now() < deadline {
        match reader.recv::<Request>() {
            Ok(Some(_)) => continue,
            _ => break,
        }
    }
    power_off();
}

fn power_off() -> ! {
    let e = sys::power_off();
    log(&format!("power-off failed: {e}"));
    std::process::exit(1);
}

/// What husk put on the kernel command line for the agent.
#[derive(Debug, Default, PartialEq)]
struct BootArgs {
    /// `husk.rootfs=virtiofs`: the root is the virtio-fs share `rootfs`.
    rootfs_virtiofs: bool,
    /// `husk.upper=virtiofs`: the overlay's upper layer is the read-write
    /// virtio-fs share `upper` (the container's writable layer on the host).
    upper_virtiofs: bool,
    /// `husk.rootfs=direct-rw|direct-ro`: the share `rootfs` is the
    /// container's root itself, mounted without an overlay (an OCI bundle's
    /// root, which its engine made writable; `Some(true)`: read-only).
    root_direct: Option<bool>,
    /// `husk.volume=TAG:PATH:ro|rw[:file]`, in order.
    volumes: Vec<VolumeArg>,
    /// `husk.tmpfs=PATH`: a fresh tmpfs in the container.
    tmpfs: Vec<String>,
    /// `husk.hostname=NAME`: the guest's hostname (1 to 63 of [A-Za-z0-9-.]).
    hostname: Option<String>,
    /// `husk.net=MAC,ADDR/PREFIX,GATEWAY,MTU`: the NIC's configuration.
    net: Option<net::NetConfig>,
    /// `husk.dns=ADDR`: loopback resolvers to relay to the host (at most 3).
    dns: Vec<std::net::Ipv4Addr>,
    /// The `husk.net` words ignored, and why (logged at boot).
    ignored: Vec<String>,
}

/// A hostname husk accepts: 1 to 63 characters of `[A-Za-z0-9-.]`.
fn hostname_ok(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// One volume from the command line.
#[derive(Debug, Clone, PartialEq)]
struct VolumeArg {
    tag: String,
    path: String,
    read_only: bool,
    /// The share holds one file, bind-mounted onto `path`.
    file: bool,
}

/// Paths husk passes: absolute, not "/", without "..".
fn guest_path_ok(path: &str) -> bool {
    path.starts_with('/') && path != "/" && !path.split('/').any(|c| c == "..")
}

fn parse_cmdline(cmdline: &str) -> BootArgs {
    let mut a = BootArgs::default();
    for word in cmdline.split_whitespace() {
        if word == "husk.rootfs=virtiofs" {
            a.rootfs_virtiofs = true;
        } else if let Some(mode) = word.strip_prefix("husk.rootfs=direct-") {
            if mode == "ro" || mode == "rw" {
                a.rootfs_virtiofs = true;
                a.root_direct = Some(mode == "ro");
            }
        } else if word == "husk.upper=virtiofs" {
            a.upper_virtiofs = true;
        } else if let Some(name) = word.strip_prefix("husk.hostname=") {
            if hostname_ok(name) {
                a.hostname = Some(name.to_owned());
            }
        } else if let Some(v) = word.strip_prefix("husk.net=") {
            match net::NetConfig::parse(v) {
                Ok(_) if a.net.is_some() => a
                    .ignored
                    .push(format!("{word}: only one husk.net is supported")),
                Ok(cfg) => a.net = Some(cfg),
                Err(e) => a.ignored.push(format!("{word}: {e}")),
            }
        } else if let Some(v) = word.strip_prefix("husk.dns=") {
            match dns::parse(v) {
                Ok(_) if a.dns.len() >= 3 => a.ignored.push(format!("{word}: at most 3")),
                Ok(ip) if !a.dns.contains(&ip) => a.dns.push(ip),
                Ok(_) => {}
                Err(e) => a.ignored.push(format!("{word}: {e}")),
            }
        } else if let Some(path) = word.strip_prefix("husk.tmpfs=") {
            if guest_path_ok(path) {
                a.tmpfs.push(path.to_owned());
            }
        } else if let Some(v) = word.strip_prefix("husk.volume=") {
            let parts: Vec<&str> = v.split(':').collect();
            let (tag, path, mode, file) = match parts.as_slice() {
                [t, p, m] => (*t, *p, *m, false),
                [t, p, m, "file"] => (*t, *p, *m, true),
                _ => continue,
            };
            if guest_path_ok(path) && (mode == "ro" || mode == "rw") {
                a.volumes.push(VolumeArg {
                    tag: tag.to_owned(),
                    path: path.to_owned(),
                    read_only: mode == "ro",
                    file,
                });
            }
        }
    }
    a
}

/// Builds the container root from the virtio-fs share: the share read-only
/// below, an overlay on top, so the host's directory is never changed and
/// each container's writes are its own. The overlay's upper layer is the
/// container's writable layer on the host (the read-write share `upper`)
/// or, without one, guest memory (tmpfs). On the share, overlayfs keeps its
/// metadata in `user.overlay.*` xattrs (`userxattr`), which the host
/// server may set without privileges; `trusted.*` would need
/// CAP_SYS_ADMIN on the host.
fn mount_virtiofs_root(upper_virtiofs: bool) -> std::io::Result<()> {
    for d in ["/lower", "/overlay", CONTAINER_ROOT] {
        std::fs::create_dir_all(d)?;
    }
    sys::mount("rootfs", "/lower", "virtiofs", libc::MS_RDONLY, None)?;
    let xattrs = if upper_virtiofs {
        sys::mount("upper", "/overlay", "virtiofs", 0, None)?;
        ",userxattr"
    } else {
        sys::mount("overlay-rw", "/overlay", "tmpfs", 0, Some("mode=0755"))?;
        ""
    };
    std::fs::create_dir_all("/overlay/upper")?;
    std::fs::create_dir_all("/overlay/work")?;
    sys::mount(
        "overlay",
        CONTAINER_ROOT,
        "overlay",
        0,
        Some(&format!(
            "lowerdir=/lower,upperdir=/overlay/upper,workdir=/overlay/work{xattrs}"
        )),
    )
}

/// Mounts the share `rootfs` as the container root itself (an OCI bundle's
/// root directory): the engine made it for this container, so writes go to
/// it, as with runc.
fn mount_direct_root(read_only: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(CONTAINER_ROOT)?;
    let flags = if read_only { libc::MS_RDONLY } else { 0 };
    sys::mount("rootfs", CONTAINER_ROOT, "virtiofs", flags, None)
}

/// Mounts the volumes in the container root. A directory volume is its
/// share mounted on the path; a file volume's share shows only that file,
/// which is mounted at /volumes/TAG and bind-mounted onto the path.
fn mount_volumes(volumes: &[VolumeArg]) {
    for v in volumes {
        let target = format!("{CONTAINER_ROOT}{}", v.path);
        let flags = if v.read_only { libc::MS_RDONLY } else { 0 };
        let result = if v.file {
            mount_file_volume(v, &target, flags)
        } else {
            std::fs::create_dir_all(&target)
                .and_then(|()| sys::mount(&v.tag, &target, "virtiofs", flags, None))
        };
        // A container without its volume would write into its root what
        // was meant for the host: it does not start (runc fails `create`).
        if let Err(e) = result {
            log(&format!("cannot mount volume {} on {}: {e}", v.tag, v.path));
            power_off();
        }
    }
}

fn mount_file_volume(v: &VolumeArg, target: &str, flags: libc::c_ulong) -> std::io::Result<()> {
    let share = format!("/volumes/{}", v.tag);
    std::fs::create_dir_all(&share)?;
    sys::mount(&v.tag, &share, "virtiofs", flags, None)?;
    let entry = std::fs::read_dir(&share)?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "the share is empty"))??;
    if let Some(parent) = std::path::Path::new(target).parent() {
        std::fs::create_dir_all(parent)?;
    }
    // The mount point: an empty file, unless the image has one there.
    if std::fs::symlink_metadata(target).is_err() {
        std::fs::File::create(target)?;
    }
    let source = entry.path();
    let source = source.to_str().unwrap_or_default();
    sys::mount(source, target, "", libc::MS_BIND, None)?;
    if v.read_only {
        sys::mount(
            "",
            target,
            "",
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

/// Mounts a fresh tmpfs on each `--tmpfs` path, as Docker does (noexec
/// off, nosuid and nodev on, mode 1777).
fn mount_tmpfs(paths: &[String]) {
    for path in paths {
        let target = format!("{CONTAINER_ROOT}{path}");
        let _ = std::fs::create_dir_all(&target);
        if let Err(e) = sys::mount(
            "tmpfs",
            &target,
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        ) {
            log(&format!("cannot mount a tmpfs on {path}: {e}"));
            power_off();
        }
    }
}

/// Where the agent keeps the files it bind-mounts into the container (a
/// tmpfs in the agent's own root, which the container cannot reach).
const AGENT_RUN_DIR: &str = "/run/husk-agent";

/// Docker's /etc/hosts for a container named `name`.
fn hosts_file(name: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n127.0.1.1\t{name}\n"
    )
}

/// Whether a volume is mounted on `path` in the container (`/etc//hosts`
/// and `/etc/hosts` are one path).
fn volume_targets(volumes: &[VolumeArg], path: &str) -> bool {
    let path = std::path::Path::new(path);
    volumes.iter().any(|v| {
        std::path::Path::new(&v.path)
            .components()
            .eq(path.components())
    })
}

/// The files of /etc the agent writes for hostname `name`, with their
/// text: /etc/hostname and /etc/hosts, less those a volume is mounted on
/// (the host shares its own /etc/hosts, kept up to date while the
/// container runs, when the container is on a network: the host's copy
/// wins).
fn etc_files(name: &str, volumes: &[VolumeArg]) -> Vec<(&'static str, String)> {
    [
        ("hostname", format!("{name}\n")),
        ("hosts", hosts_file(name)),
    ]
    .into_iter()
    .filter(|(file, _)| !volume_targets(volumes, &format!("/etc/{file}")))
    .collect()
}

/// Writes the container's /etc/hostname and /etc/hosts in the agent's
/// run directory and bind-mounts them into the container root, except
/// those a volume already covers (see [`etc_files`]).
fn container_etc_files(root: &str, name: &str, volumes: &[VolumeArg]) -> std::io::Result<()> {
    let files = etc_files(name, volumes);
    if files.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(AGENT_RUN_DIR)?;
    sys::mount(
        "husk-agent",
        AGENT_RUN_DIR,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )?;
    let etc = format!("{root}/etc");
    match std::fs::symlink_metadata(&etc) {
        Ok(m) if m.is_dir() => {}
        // A symlink would be followed in the agent's root, not the container's.
        Ok(_) => {
            return Err(std::io::Error::other("the image's /etc is not a directory"));
        }
        Err(_) => std::fs::create_dir(&etc)?,
    }
    for (file, text) in files {
        let source = format!("{AGENT_RUN_DIR}/{file}");
        std::fs::write(&source, text)?;
        let target = format!("{etc}/{file}");
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_file() => {}
            Ok(m) if m.is_dir() => {
                return Err(std::io::Error::other(format!(
                    "the image's /etc/{file} is a directory"
                )));
            }
            // A symlink (or other) is replaced: the mount must not follow it.
            Ok(_) => {
                std::fs::remove_file(&target)?;
                std::fs::File::create(&target)?;
            }
            Err(_) => {
                std::fs::File::create(&target)?;
            }
        }
        sys::mount(&source, &target, "", libc::MS_BIND, None)?;
    }
    Ok(())
}

fn main() {
    if std::process::id() != 1 {
        log("must run as PID 1 in a husk guest");
        std::process::exit(2);
    }
    agent_mounts();
    let args = parse_cmdline(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    for ignored in &args.ignored {
        log(&format!("ignored {ignored}"));
    }
    if let Some(name) = &args.hostname
        && let Err(e) = sys::sethostname(name)
    {
        log(&format!("sethostname {name}: {e}"));
    }
    // Before the vsock port is served: the container's first process has
    // its network.
    net::configure(args.net.as_ref());
    for ip in &args.dns {
        dns::start(*ip);
    }
    let mounted = match args.root_direct {
        Some(read_only) => mount_direct_root(read_only),
        None if args.rootfs_virtiofs => mount_virtiofs_root(args.upper_virtiofs),
        None => Ok(()),
    };
    if let Err(e) = mounted {
        log(&format!(
            "cannot mount the container root from virtio-fs: {e}"
        ));
        power_off();
    }
    mount_volumes(&args.volumes);
    mount_tmpfs(&args.tmpfs);
    let root = std::path::Path::new(CONTAINER_ROOT).is_dir().then(|| {
        // The root must be a mount of its own to be moved onto "/" (see
        // process.rs); the overlay is one, a packed directory is not.
        if !args.rootfs_virtiofs
            && let Err(e) = sys::mount(
                CONTAINER_ROOT,
                CONTAINER_ROOT,
                "",
                libc::MS_BIND | libc::MS_REC,
                None,
            )
        {
            log(&format!("bind mount {CONTAINER_ROOT} on itself: {e}"));
        }
        container_mounts(CONTAINER_ROOT);
        if let Some(name) = &args.hostname
            && let Err(e) = container_etc_files(CONTAINER_ROOT, name, &args.volumes)
        {
            log(&format!("cannot set up /etc/hostname and /etc/hosts: {e}"));
        }
        CONTAINER_ROOT.to_owned()
    });
    let shared = Arc::new(Shared {
        reaper: Reaper::start(),
        main_started: AtomicBool::new(false),
        main_pid: Mutex::new(None),
        root,
    });
    let listener = match sys::vsock_listen(husk_protocol::AGENT_PORT) {
        Ok(l) => l,
        Err(e) => {
            log(&format!(
                "cannot listen on vsock port {}: {e}",
                husk_protocol::AGENT_PORT
            ));
            power_off();
        }
    };
    log(&format!(
        "listening on vsock port {}",
        husk_protocol::AGENT_PORT
    ));
    loop {
        match sys::accept(&listener) {
            Ok(conn) => {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve(conn, shared) {
                        log(&e);
                    }
                });
            }
            Err(e) => {
                log(&format!("accept: {e}"));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_root_is_mounted_directly() {
        let a = parse_cmdline("quiet husk.rootfs=direct-ro");
        assert!(a.rootfs_virtiofs);
        assert_eq!(a.root_direct, Some(true));
        assert_eq!(
            parse_cmdline("husk.rootfs=direct-rw").root_direct,
            Some(false)
        );
        let bad = parse_cmdline("husk.rootfs=direct-xx");
        assert_eq!((bad.root_direct, bad.rootfs_virtiofs), (None, false));
    }

    #[test]
    fn reads_husk_args_from_the_command_line() {
        let a = parse_cmdline(
            "console=ttyS0 quiet husk.rootfs=virtiofs husk.upper=virtiofs husk.volume=vol0:/data:ro \
             husk.volume=vol1:/w:rw husk.volume=vol2:/etc/x.conf:ro:file husk.tmpfs=/run",
        );
        assert!(a.rootfs_virtiofs && a.upper_virtiofs);
        let v = |tag: &str, path: &str, read_only, file| VolumeArg {
            tag: tag.into(),
            path: path.into(),
            read_only,
            file,
        };
        assert_eq!(
            a.volumes,
            vec![
                v("vol0", "/data", true, false),
                v("vol1", "/w", false, false),
                v("vol2", "/etc/x.conf", true, true),
            ]
        );
        assert_eq!(a.tmpfs, vec!["/run".to_string()]);
        assert_eq!(a.hostname, None);
        let a = parse_cmdline("quiet husk.hostname=web-1.local");
        assert_eq!(a.hostname.as_deref(), Some("web-1.local"));
        for bad in ["", "a_b", "a;b", "é"] {
            let a = parse_cmdline(&format!("husk.hostname={bad}"));
            assert_eq!(a.hostname, None, "{bad}");
        }
        let long = "x".repeat(64);
        assert_eq!(
            parse_cmdline(&format!("husk.hostname={long}")).hostname,
            None
        );
        assert!(hosts_file("web").ends_with("127.0.1.1\tweb\n"));
        assert!(hosts_file("web").starts_with("127.0.0.1\tlocalhost\n::1\t"));
        let a = parse_cmdline(
            "husk.volume=bad husk.volume=v:relative:rw husk.volume=v:/a/../b:ro \
             husk.volume=v:/x:rx husk.volume=v:/x:ro:dir husk.tmpfs=rel husk.tmpfs=/ husk.tmpfs=/a/.. \
             husk.hostname=a/b",
        );
        assert_eq!(a, BootArgs::default());
    }

    #[test]
    fn reads_husk_dns_loopback_addresses_only() {
        let a = parse_cmdline("husk.dns=127.0.0.11 husk.dns=10.0.0.1 husk.dns=127.0.0.11");
        assert_eq!(a.dns, vec![std::net::Ipv4Addr::new(127, 0, 0, 11)]);
        assert_eq!(a.ignored.len(), 1);
    }

    #[test]
    fn reads_husk_net_and_ignores_bad_or_repeated_words() {
        let a = parse_cmdline(
            "quiet husk.net=02:42:0a:00:02:64,10.0.2.100/24,10.0.2.2,65520 husk.hostname=web",
        );
        let net = a.net.unwrap();
        assert_eq!(net.mac, [0x02, 0x42, 0x0a, 0x00, 0x02, 0x64]);
        assert_eq!(net.addr, std::net::Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(net.prefix, 24);
        assert_eq!(net.gateway, Some(std::net::Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(net.mtu, 65520);
        assert!(a.ignored.is_empty());
        let a = parse_cmdline("husk.net=02:42:0a:00:02:64,10.0.2.100/24,,1500");
        assert_eq!(a.net.unwrap().gateway, None);

        // A bad word is ignored (and said why); a good one after it counts.
        let a = parse_cmdline(
            "husk.net=02:42:0a:00:02:64,10.0.2.100/24,10.0.9.1,1500 husk.net= husk.net=x \
             husk.net=02:42:0a:00:02:64,10.0.2.100/24,,1500 \
             husk.net=02:42:0a:00:02:65,10.0.2.101/24,,1500",
        );
        assert_eq!(a.net.unwrap().addr, std::net::Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(a.ignored.len(), 4, "{:?}", a.ignored);
        assert!(a.ignored[0].contains("gateway 10.0.9.1"), "{:?}", a.ignored);
        assert!(
            a.ignored[3].contains("only one husk.net"),
            "{:?}",
            a.ignored
        );
    }

    #[test]
    fn etc_files_leave_out_those_a_volume_covers() {
        let names = |volumes: &[VolumeArg]| {
            etc_files("web", volumes)
                .into_iter()
                .map(|(f, _)| f)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&[]), ["hostname", "hosts"]);
        let files = etc_files("web", &[]);
        assert_eq!(files[0].1, "web\n");
        assert_eq!(files[1].1, hosts_file("web"));
        let a = parse_cmdline(
            "husk.volume=net0:/etc/hosts:rw:file husk.volume=net1:/etc/resolv.conf:rw:file",
        );
        assert_eq!(names(&a.volumes), ["hostname"]);
        let a = parse_cmdline(
            "husk.volume=net0:/etc//hosts:rw:file husk.volume=net2:/etc/hostname/:ro:file",
        );
        assert_eq!(names(&a.volumes), Vec::<&str>::new());
        // Other paths, or a directory above, do not count.
        let a = parse_cmdline(
            "husk.volume=d:/etc/hosts.d:rw husk.volume=e:/data/etc/hosts:rw:file husk.volume=f:/etc:ro",
        );
        assert_eq!(names(&a.volumes), ["hostname", "hosts"]);
    }
}
