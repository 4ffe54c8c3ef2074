//! What the monitor does to give one run of a container its network:
//! start the backend, pick host ports, write the container's `/etc/hosts`
//! and `/etc/resolv.conf`, and say what the guest NIC is. Everything it
//! starts ends when the [`Attachment`] is dropped (passt exits with its
//! socket, a TAP vanishes with its fd, proxies stop).

use super::passt::{Passt, PasstError};
use super::{
    DEFAULT_DNS, DEFAULT_GATEWAY, DEFAULT_GUEST_IP, DEFAULT_MTU, DEFAULT_NETWORK, DEFAULT_PREFIX,
    GuestNic, HostResolv, NetworkMode, NetworkState, hosts_file, mac_for, mac_text, resolv_conf,
    write_in_place,
};
use crate::container::Container;
use crate::{SandboxNet, Volume};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a container's network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// passt failed.
    #[error(transparent)]
    Passt(#[from] PasstError),
    /// Writing /etc/hosts or /etc/resolv.conf failed.
    #[error("cannot write {0}")]
    File(PathBuf, #[source] std::io::Error),
    /// A user-defined network failed.
    #[error(transparent)]
    Network(#[from] super::store::NetworkError),
    /// The engine's network namespace could not be carried into the VM.
    #[error(transparent)]
    Netns(#[from] super::netns::NetnsError),
    /// The DNS relay could not start.
    #[error(transparent)]
    Dns(#[from] super::dns::DnsError),
}

/// A container's network for one run.
#[derive(Debug, Default)]
pub struct Attachment {
    /// The guest NIC and its backend (none with `--network none`).
    pub sandbox: Option<SandboxNet>,
    /// `/etc/hosts` and `/etc/resolv.conf`, shared from the container's
    /// directory.
    pub volumes: Vec<Volume>,
    /// What `inspect` shows while it runs.
    pub state: Option<NetworkState>,
    /// Words for the guest's kernel command line (`husk.dns=`).
    pub kernel_args: Vec<String>,
    passt: Option<Passt>,
    bridge: Option<super::store::Endpoint>,
    engine: Option<super::netns::EngineNet>,
    dns: Option<super::dns::DnsForwarder>,
}

impl Attachment {
    /// A NIC with its backend, shown as `state`, and the files shared for
    /// it; the rest (what the run holds) is set by the caller.
    fn nic(state: NetworkState, sandbox: SandboxNet, volumes: Vec<Volume>) -> Attachment {
        let mut a = Attachment::default();
        a.state = Some(state);
        a.sandbox = Some(sandbox);
        a.volumes = volumes;
        a
    }

    /// passt's pid, with the default network.
    pub fn passt_pid(&self) -> Option<u32> {
        self.passt.as_ref().map(Passt::pid)
    }

    /// Leaves the network (the TAP, proxies and address go; other
    /// containers' `/etc/hosts` forget this one). Also done on drop.
    pub fn detach(&mut self) {
        self.passt = None;
        self.dns = None;
        self.engine = None;
        if let Some(ep) = self.bridge.take() {
            ep.leave();
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.detach();
    }
}

/// The files the container's `/etc/hosts` and `/etc/resolv.conf` are.
fn etc_files(c: &Container, hosts: &str, resolv: &str) -> Result<Vec<Volume>, AttachError> {
    let mut v = Vec::new();
    for (name, text, guest) in [
        ("hosts", hosts, "/etc/hosts"),
        ("resolv.conf", resolv, "/etc/resolv.conf"),
    ] {
        let path = c.dir().join(name);
        write_in_place(&path, text).map_err(|e| AttachError::File(path.clone(), e))?;
        v.push(Volume {
            host: path,
            guest: guest.into(),
            read_only: false,
        });
    }
    Ok(v)
}

/// The names a container is known by on its network: its hostname, its
/// name, its short id and its aliases.
pub fn names_of(c: &Container) -> Vec<String> {
    let mut v = vec![c.hostname()];
    for n in [c.name.clone(), c.short_id().to_owned()]
        .into_iter()
        .chain(c.config.network.aliases.iter().cloned())
    {
        if !v.contains(&n) {
            v.push(n);
        }
    }
    v
}

/// The loopback nameservers of a `resolv.conf` (which a guest cannot
/// reach where they are: on the host side of the VM).
pub fn loopback_nameservers(resolv: &str) -> Vec<std::net::Ipv4Addr> {
    let mut v = Vec::new();
    for line in resolv.lines() {
        let mut w = line.split_whitespace();
        if w.next() != Some("nameserver") {
            continue;
        }
        if let Some(Ok(ip)) = w.next().map(str::parse::<std::net::Ipv4Addr>)
            && ip.is_loopback()
            && !v.contains(&ip)
            && v.len() < 3
        {
            v.push(ip);
        }
    }
    v
}

/// Engine mode: the namespace's interface carried into the VM, and a DNS
/// relay for the loopback resolvers of the `/etc/resolv.conf` the engine
/// bind-mounts (Docker's 127.0.0.11).
fn attach_engine(c: &Container, vsock_uds: &std::path::Path) -> Result<Attachment, AttachError> {
    let mut a = Attachment::default();
    if let Some(engine) = super::netns::EngineNet::attach()? {
        let nic = engine.found.nic.clone();
        a.state = Some(NetworkState {
            network: "engine".into(),
            network_id: "engine".into(),
            ip: nic.ip,
            prefix: nic.prefix,
            gateway: nic.gateway,
            mac: mac_text(&nic.mac),
            mtu: nic.mtu,
            ports: Vec::new(),
            backend: format!("tap (tc mirred from {})", engine.found.ifname),
            interface: Some(super::netns::TAP_NAME.into()),
        });
        let tap = engine
            .tap
            .as_ref()
            .map(|fd| fd.try_clone())
            .transpose()
            .map_err(super::netns::NetnsError::Tap)?;
        if let Some(tap) = tap {
            a.sandbox = Some(SandboxNet {
                nic,
                backend: crate::NetFd::Tap(Arc::new(tap)),
            });
        }
        a.engine = Some(engine);
    }
    let resolv = c
        .config
        .volumes
        .iter()
        .find(|v| v.guest == "/etc/resolv.conf")
        .and_then(|v| std::fs::read_to_string(&v.host).ok())
        .unwrap_or_default();
    let relayed = loopback_nameservers(&resolv);
    if !relayed.is_empty() {
        let port = husk_protocol::DNS_PORT;
        let path = std::path::PathBuf::from(format!("{}_{port}", vsock_uds.display()));
        let upstream = relayed
            .iter()
            .map(|ip| std::net::SocketAddr::from((*ip, 53)))
            .collect();
        a.dns = Some(super::dns::DnsForwarder::start(&path, upstream)?);
        a.kernel_args = relayed.iter().map(|ip| format!("husk.dns={ip}")).collect();
        log::info!("network: DNS to {relayed:?} relayed from the guest");
    }
    Ok(a)
}

/// Sets up the network of one run of `c` (`root`: the store's root;
/// `vsock_uds`: the vsock device's socket, for the DNS relay).
pub fn attach(
    root: &std::path::Path,
    c: &Container,
    vsock_uds: &std::path::Path,
) -> Result<Attachment, AttachError> {
    let cfg = &c.config.network;
    match &cfg.mode {
        NetworkMode::None => Ok(Attachment::default()),
        NetworkMode::Engine => attach_engine(c, vsock_uds),
        NetworkMode::Default => {
            let ports = super::passt::resolve_ports(&cfg.ports)?;
            let (passt, fd) =
                Passt::start(&ports, cfg.maps_host_loopback(), &c.dir().join("passt.log"))?;
            let nic = GuestNic {
                mac: mac_for(DEFAULT_GUEST_IP),
                ip: DEFAULT_GUEST_IP,
                prefix: DEFAULT_PREFIX,
                gateway: Some(DEFAULT_GATEWAY),
                mtu: DEFAULT_MTU,
            };
            let hosts = hosts_file(
                Some((DEFAULT_GUEST_IP, &[c.hostname()])),
                &[],
                &cfg.extra_hosts,
                DEFAULT_GATEWAY,
            );
            let resolv = resolv_conf(cfg, &[IpAddr::V4(DEFAULT_DNS)], &HostResolv::host());
            let volumes = etc_files(c, &hosts, &resolv)?;
            let mut a = Attachment::nic(
                NetworkState {
                    network: DEFAULT_NETWORK.into(),
                    network_id: DEFAULT_NETWORK.into(),
                    ip: nic.ip,
                    prefix: nic.prefix,
                    gateway: nic.gateway,
                    mac: mac_text(&nic.mac),
                    mtu: nic.mtu,
                    ports,
                    backend: "passt".into(),
                    interface: None,
                },
                SandboxNet {
                    nic,
                    backend: crate::NetFd::Stream(Arc::new(fd)),
                },
                volumes,
            );
            a.passt = Some(passt);
            Ok(a)
        }
        NetworkMode::Named(id) => {
            let ep = super::store::NetworkStore::open(root)?.join(id, c)?;
            let nic = ep.nic();
            let volumes = etc_files(c, &ep.hosts_text(), &ep.resolv_text())?;
            ep.announce();
            let mut a = Attachment::nic(
                ep.state(),
                SandboxNet {
                    nic,
                    backend: crate::NetFd::Tap(ep.tap_fd()),
                },
                volumes,
            );
            a.bridge = Some(ep);
            Ok(a)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_nameservers_are_relayed() {
        let r = "search x\nnameserver 127.0.0.11\nnameserver 8.8.8.8\noptions ndots:0\nnameserver 127.0.0.11\n";
        assert_eq!(
            super::loopback_nameservers(r),
            vec![std::net::Ipv4Addr::new(127, 0, 0, 11)]
        );
        assert!(super::loopback_nameservers("nameserver 10.0.2.3\nnameserver bogus\n").is_empty());
    }
}
