//! The default network's backend: one `passt` (Debian's `passt` package)
//! per VM, connected to the guest NIC over a socketpair with passt's
//! framing (a 4-byte big-endian length before each Ethernet frame).
//!
//! passt runs in the foreground as the monitor's child (`-f`), with the
//! socket as `--fd` (which implies `--one-off`: it exits when the VMM closes
//! its end), IPv4 only (the guest kernel has no IPv6), without its DHCP,
//! NDP and RA servers (the agent configures the NIC statically with the
//! same address, prefix and gateway), with DNS queries to
//! [`DEFAULT_DNS`](super::DEFAULT_DNS) forwarded to the host's resolver,
//! and with `--no-map-gw` unless `--add-host NAME:host-gateway` asked for
//! the host's loopback (so by default a guest cannot reach services that
//! listen only on the host's 127.0.0.1). Published ports are passt's
//! `-t`/`-u` forwards; passt binds them on the host itself, so the client's
//! source address reaches the guest unchanged.

use super::{DEFAULT_DNS, DEFAULT_GATEWAY, DEFAULT_GUEST_IP, DEFAULT_MTU, DEFAULT_PREFIX};
use super::{PortBinding, Proto};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why passt could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    /// No `passt` binary.
    #[error(
        "passt not found (looked for {0}): the default network needs Debian's passt package (apt-get install passt); or run with --network none"
    )]
    NotFound(String),
    /// Creating the socketpair failed.
    #[error("cannot create the socketpair for passt")]
    Socket(#[source] std::io::Error),
    /// Starting the process failed.
    #[error("cannot start {0}")]
    Spawn(String, #[source] std::io::Error),
    /// passt exited at once.
    #[error("passt exited while starting ({status}): {log}")]
    Exited {
        /// Its exit status.
        status: String,
        /// The end of its log.
        log: String,
    },
    /// A published port is taken.
    #[error("Bind for {0} failed: port is already allocated")]
    PortInUse(String),
    /// Picking a free host port failed.
    #[error("cannot find a free host port")]
    NoFreePort(#[source] std::io::Error),
}

/// The passt binary: `$HUSK_PASST`, else `passt` on `$PATH` (or in
/// /usr/bin, /usr/sbin, /usr/local/bin).
pub fn find() -> Result<PathBuf, PasstError> {
    if let Some(p) = std::env::var_os("HUSK_PASST") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(PasstError::NotFound(p.display().to_string()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join("passt");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(PasstError::NotFound("passt on $PATH".into()))
}

/// Picks host ports for bindings without one and checks that the others
/// are free (passt would only log a failed bind), as Docker reports it.
pub fn resolve_ports(ports: &[PortBinding]) -> Result<Vec<PortBinding>, PasstError> {
    let mut out = Vec::with_capacity(ports.len());
    for p in ports {
        let ip = p
            .host_ip
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let mut p = *p;
        let taken = || PasstError::PortInUse(format!("{}:{}", p.host_ip_text(), p.host_port));
        match p.proto {
            Proto::Tcp => {
                let l = std::net::TcpListener::bind((ip, p.host_port)).map_err(|e| {
                    if p.host_port == 0 {
                        PasstError::NoFreePort(e)
                    } else {
                        taken()
                    }
                })?;
                p.host_port = l.local_addr().map_err(PasstError::NoFreePort)?.port();
            }
            Proto::Udp => {
                let s = std::net::UdpSocket::bind((ip, p.host_port)).map_err(|e| {
                    if p.host_port == 0 {
                        PasstError::NoFreePort(e)
                    } else {
                        taken()
                    }
                })?;
                p.host_port = s.local_addr().map_err(PasstError::NoFreePort)?.port();
            }
        }
        out.push(p);
    }
    Ok(out)
}

/// passt's `-t`/`-u` values for `ports` of `proto` (`none` if there are
/// none: passt forwards a TCP port's UDP twin unless `-u` is explicit).
fn forward_specs(ports: &[PortBinding], proto: Proto) -> Vec<String> {
    let v: Vec<String> = ports
        .iter()
        .filter(|p| p.proto == proto)
        .map(|p| match p.host_ip {
            Some(ip) => format!("{ip}/{}:{}", p.host_port, p.container_port),
            None => format!("{}:{}", p.host_port, p.container_port),
        })
        .collect();
    if v.is_empty() { vec!["none".into()] } else { v }
}

/// The arguments passt gets, without `--fd`.
pub fn args(ports: &[PortBinding], map_host_loopback: bool, log: &Path) -> Vec<String> {
    let mut a: Vec<String> = [
        "--foreground",
        "--quiet",
        "--ipv4-only",
        "--no-dhcp",
        "--no-ndp",
        "--no-dhcpv6",
        "--no-ra",
    ]
    .map(String::from)
    .to_vec();
    a.extend(["--log-file".into(), log.display().to_string()]);
    a.extend(["--address".into(), DEFAULT_GUEST_IP.to_string()]);
    a.extend(["--netmask".into(), DEFAULT_PREFIX.to_string()]);
    a.extend(["--gateway".into(), DEFAULT_GATEWAY.to_string()]);
    a.extend(["--mtu".into(), DEFAULT_MTU.to_string()]);
    a.extend(["--dns-forward".into(), DEFAULT_DNS.to_string()]);
    if !map_host_loopback {
        a.push("--no-map-gw".into());
    }
    for s in forward_specs(ports, Proto::Tcp) {
        a.extend(["--tcp-ports".into(), s]);
    }
    for s in forward_specs(ports, Proto::Udp) {
        a.extend(["--udp-ports".into(), s]);
    }
    a
}

/// A running passt; killed (and reaped) when dropped. A watcher thread
/// notices if it dies while the VM runs (a crash, a kill by hand): the
/// container's network is then down, which the monitor's log says with
/// passt's exit status and the end of its log.
#[derive(Debug)]
pub struct Passt {
    child: Child,
    /// Set when husk itself stops passt: its exit is then expected.
    stopping: Arc<AtomicBool>,
    /// Why passt exited on its own, once it has.
    exited: Arc<Mutex<Option<String>>>,
}

impl Passt {
    /// Starts passt for one VM; returns it and the VMM's end of the
    /// socketpair (a [`husk_devices`] stream backend). `log` is its log file.
    pub fn start(
        ports: &[PortBinding],
        map_host_loopback: bool,
        log: &Path,
    ) -> Result<(Passt, OwnedFd), PasstError> {
        let bin = find()?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(PasstError::Socket)?;
        let theirs = OwnedFd::from(theirs);
        let fd = theirs.as_raw_fd();
        let _ = std::fs::remove_file(log);
        let mut cmd = Command::new(&bin);
        cmd.args(args(ports, map_host_loopback, log))
            .arg("--fd")
            .arg(fd.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // The socketpair is created close-on-exec; passt's end must stay
        // open across exec. (Another child forked meanwhile may inherit it
        // too; passt still exits when the VMM's end closes.)
        rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty())
            .map_err(|e| PasstError::Socket(e.into()))?;
        let mut child = cmd
            .spawn()
            .map_err(|e| PasstError::Spawn(bin.display().to_string(), e))?;
        drop(theirs);
        // passt checks its options and binds the forwarded ports at once;
        // one that exits within this window failed.
        let until = Instant::now() + Duration::from_millis(150);
        while Instant::now() < until {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(PasstError::Exited {
                    status: status.to_string(),
                    log: crate::tail_lines(log, 5),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let stopping = Arc::new(AtomicBool::new(false));
        let exited = Arc::new(Mutex::new(None));
        watch(&child, log, stopping.clone(), exited.clone());
        Ok((
            Passt {
                child,
                stopping,
                exited,
            },
            OwnedFd::from(ours),
        ))
    }

    /// passt's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Why passt exited by itself (its status and the end of its log), if
    /// it has: the container's network is down.
    pub fn exited(&self) -> Option<String> {
        self.exited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// How a process ended, as a shell shows it.
fn describe(st: &rustix::process::WaitIdStatus) -> String {
    if let Some(code) = st.exit_status() {
        format!("exit code {code}")
    } else if let Some(sig) = st.terminating_signal() {
        let core = if st.dumped() { ", core dumped" } else { "" };
        format!("killed by signal {sig}{core}")
    } else {
        "ended".into()
    }
}

/// Starts the thread that waits (through a pidfd, without reaping: the
/// [`Drop`] of [`Passt`] reaps) for `child` to exit and reports an exit
/// that husk did not ask for.
fn watch(child: &Child, log: &Path, stopping: Arc<AtomicBool>, exited: Arc<Mutex<Option<String>>>) {
    let pid = child.id();
    let Some(fd) = rustix::process::Pid::from_raw(pid as i32)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
    else {
        log::warn!("cannot watch passt (pid {pid}): no pidfd");
        return;
    };
    let log = log.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("passt-watch".into())
        .spawn(move || {
            use rustix::event::{PollFd, PollFlags, poll};
            use rustix::process::{WaitId, WaitIdOptions, waitid};
            loop {
                let mut fds = [PollFd::new(&fd, PollFlags::IN)];
                match poll(&mut fds, None) {
                    Ok(_) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => {
                        log::warn!("cannot watch passt (pid {pid}): {e}");
                        return;
                    }
                }
            }
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            let status = waitid(
                WaitId::PidFd(fd.as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
            )
            .ok()
            .flatten()
            .map_or_else(|| "ended".to_string(), |st| describe(&st));
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            let tail = crate::tail_lines(&log, 3);
            let why = format!("passt (pid {pid}) {status}; passt.log: {tail}");
            log::error!("{why}: the container's network is down");
            *exited.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        });
    if let Err(e) = spawned {
        log::warn!("cannot watch passt (pid {pid}): {e}");
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // It exits by itself when the VMM closes the socket; this covers a
        // VM that never started.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::ports::parse_publish;

    #[test]
    fn arguments() {
        let mut ports = parse_publish("8080:80").unwrap();
        ports.extend(parse_publish("127.0.0.1:5353:53/udp").unwrap());
        let a = args(&ports, false, Path::new("/x/passt.log"));
        let joined = a.join(" ");
        assert!(joined.contains("--tcp-ports 8080:80"), "{joined}");
        assert!(joined.contains("--udp-ports 127.0.0.1/5353:53"), "{joined}");
        assert!(joined.contains("--no-map-gw"));
        assert!(joined.contains("--address 10.0.2.100 --netmask 24 --gateway 10.0.2.2"));
        let a = args(&[], true, Path::new("/x/passt.log")).join(" ");
        assert!(a.contains("--tcp-ports none --udp-ports none"), "{a}");
        assert!(!a.contains("--no-map-gw"));
    }

    #[test]
    fn ports_resolved_and_conflicts_reported() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let busy = parse_publish(&format!("127.0.0.1:{port}:80")).unwrap();
        let e = resolve_ports(&busy).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("Bind for 127.0.0.1:{port} failed: port is already allocated")
        );
        let any = parse_publish("127.0.0.1::80").unwrap();
        let r = resolve_ports(&any).unwrap();
        assert_ne!(r[0].host_port, 0);
    }

    /// passt really starts with these arguments and exits when its socket
    /// closes (skipped, visibly, where passt is not installed).
    #[test]
    fn passt_runs_and_exits_with_its_socket() {
        if find().is_err() {
            eprintln!("SKIP passt_runs_and_exits_with_its_socket: passt is not installed");
            return;
        }
        let dir = std::env::temp_dir().join(format!("husk-passt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let free = resolve_ports(&parse_publish("127.0.0.1::80").unwrap()).unwrap();
        let (mut p, sock) = Passt::start(&free, false, &dir.join("passt.log")).unwrap();
        // Its forward listens on the host.
        let addr = format!("127.0.0.1:{}", free[0].host_port);
        let until = Instant::now() + Duration::from_secs(5);
        while std::net::TcpListener::bind(&addr).is_ok() {
            assert!(Instant::now() < until, "passt does not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(sock);
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            if p.child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(Instant::now() < until, "passt outlived its socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A passt that dies under a running VM (here: SIGSEGV, as Debian's
    /// passt does in --debug mode) is noticed and reported with its status;
    /// one husk stops is not.
    #[test]
    fn a_passt_that_dies_is_reported() {
        if find().is_err() {
            eprintln!("SKIP a_passt_that_dies_is_reported: passt is not installed");
            return;
        }
        let dir = std::env::temp_dir().join(format!("husk-passt-die-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (p, _sock) = Passt::start(&[], false, &dir.join("passt.log")).unwrap();
        assert_eq!(p.exited(), None);
        let pid = rustix::process::Pid::from_raw(p.pid() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::SEGV).unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        let why = loop {
            if let Some(w) = p.exited() {
                break w;
            }
            assert!(Instant::now() < until, "the watcher did not notice");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(why.contains("killed by signal 11"), "{why}");
        drop(p);

        // Stopped by husk: nothing to report.
        let (p, _sock) = Passt::start(&[], false, &dir.join("passt.log")).unwrap();
        let exited = p.exited.clone();
        drop(p);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(*exited.lock().unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
