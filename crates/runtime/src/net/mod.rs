//! Container networking: what a container asked for ([`NetworkConfig`],
//! kept in its config), what one run of it got ([`NetworkState`], kept in
//! its state while it runs), and the backends the monitor drives:
//!
//! - the **default network**: one [`passt`] per VM, user-mode, rootless
//!   and root alike; the guest NIC's frames go over a socketpair to passt,
//!   which turns them into ordinary host sockets (and `-p` into host
//!   listeners);
//! - **user-defined networks** (root only): a Linux bridge per network,
//!   a TAP per VM on it, nftables rules for NAT and isolation
//!   ([`bridge`], [`store`]), `-p` through a userland [`proxy`];
//! - `--network none`: no NIC, only `lo`.
//!
//! The guest agent configures the NIC itself from `husk.net=` on the kernel
//! command line ([`GuestNic::kernel_arg`]); `/etc/hosts` and
//! `/etc/resolv.conf` are files of the container's directory on the host,
//! shared into the guest, so they can change while it runs (other
//! containers joining a network).

pub mod attach;
pub mod bridge;
pub mod cmd;
pub mod dns;
pub mod netns;
pub mod passt;
pub mod ports;
pub mod proxy;
pub mod store;

pub use ports::{PortBinding, Proto};

/// Creates a TAP (non-persistent: it vanishes when its last fd closes)
/// named `name`, with virtio-net headers; returns it and its name.
pub fn open_tap(name: &str) -> std::io::Result<(std::os::fd::OwnedFd, String)> {
    husk_devices::virtio::net::open_tap(name).map_err(std::io::Error::other)
}

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};

/// The default network's guest address (slirp's and passt's conventions).
pub const DEFAULT_GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// The default network's gateway, as the guest sees it; with
/// `--add-host NAME:host-gateway` it is the host's loopback.
pub const DEFAULT_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The default network's DNS address: passt forwards queries to it to the
/// host's resolver.
pub const DEFAULT_DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The default network's prefix length.
pub const DEFAULT_PREFIX: u8 = 24;
/// The default network's MTU: passt's largest (65535 minus the Ethernet
/// header, rounded down to 32-bit words).
pub const DEFAULT_MTU: u16 = 65520;
/// The name the default network has in `inspect` and `--network`.
pub const DEFAULT_NETWORK: &str = "default";

/// The network mode of a container (`--network`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Only `lo`. Also what containers created before husk had networking
    /// get.
    #[default]
    None,
    /// The default network: user-mode through passt.
    Default,
    /// A user-defined network, by id.
    Named(String),
    /// Engine mode (a container from an OCI bundle): the interface the
    /// engine made in the monitor's network namespace, carried into the VM
    /// ([`netns`]).
    Engine,
}

/// `--add-host`'s special address: the host itself.
pub const HOST_GATEWAY: &str = "host-gateway";

/// A container's network settings, fixed at create time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetworkConfig {
    /// `--network`.
    pub mode: NetworkMode,
    /// `-p`, as given (host port 0: one is picked at each start).
    #[serde(default)]
    pub ports: Vec<PortBinding>,
    /// The image's `ExposedPorts` and `--expose` (`ps` shows them; `-P`
    /// published them all).
    #[serde(default)]
    pub exposed: Vec<(u16, Proto)>,
    /// `--dns`.
    #[serde(default)]
    pub dns: Vec<IpAddr>,
    /// `--dns-search`.
    #[serde(default)]
    pub dns_search: Vec<String>,
    /// `--dns-option`.
    #[serde(default)]
    pub dns_options: Vec<String>,
    /// `--add-host NAME:IP` (IP may be [`HOST_GATEWAY`]).
    #[serde(default)]
    pub extra_hosts: Vec<(String, String)>,
    /// `--network-alias`: more names other containers on the network reach
    /// it by.
    #[serde(default)]
    pub aliases: Vec<String>,
}

impl NetworkConfig {
    /// Whether the host's loopback is reachable from the guest (only when
    /// `--add-host NAME:host-gateway` asked for it).
    pub fn maps_host_loopback(&self) -> bool {
        self.extra_hosts.iter().any(|(_, ip)| ip == HOST_GATEWAY)
    }
}

/// What one run of a container got: kept in its state while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkState {
    /// The network's name.
    pub network: String,
    /// The network's id (the name for the default network).
    pub network_id: String,
    /// The guest's address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The guest's default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// The guest NIC's MAC address.
    pub mac: String,
    /// The NIC's MTU.
    pub mtu: u16,
    /// The published ports, host ports picked.
    pub ports: Vec<PortBinding>,
    /// `passt` or `bridge`.
    pub backend: String,
    /// The host interface (the TAP), if any.
    #[serde(default)]
    pub interface: Option<String>,
}

/// The guest's NIC, as the agent configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNic {
    /// MAC address.
    pub mac: [u8; 6],
    /// Address.
    pub ip: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// MTU.
    pub mtu: u16,
}

impl GuestNic {
    /// The agent's `husk.net=MAC,ADDR/PREFIX,GATEWAY,MTU` argument.
    pub fn kernel_arg(&self) -> String {
        format!(
            "husk.net={},{}/{},{},{}",
            mac_text(&self.mac),
            self.ip,
            self.prefix,
            self.gateway.map(|g| g.to_string()).unwrap_or_default(),
            self.mtu
        )
    }
}

/// Docker's MAC for an IPv4 address: `02:42:` and the address's bytes.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// `02:42:0a:00:02:64`.
pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Checks a host name for `/etc/hosts` (`--add-host`, container names,
/// aliases): 1 to 253 characters of letters, digits, `-`, `_` and `.`.
pub fn valid_host_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The container's `/etc/hosts`: Docker's fixed lines, the container's own
/// address and names, then `peers` (other containers on its network:
/// address and names), then `--add-host` entries (`host_gateway`: what
/// `host-gateway` stands for).
pub fn hosts_file(
    own: Option<(Ipv4Addr, &[String])>,
    peers: &[(Ipv4Addr, Vec<String>)],
    extra: &[(String, String)],
    host_gateway: Ipv4Addr,
) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for (name, ip) in extra {
        let ip = if ip == HOST_GATEWAY {
            host_gateway.to_string()
        } else {
            ip.clone()
        };
        s.push_str(&format!("{ip}\t{name}\n"));
    }
    for (ip, names) in peers {
        if !names.is_empty() {
            s.push_str(&format!("{ip}\t{}\n", names.join(" ")));
        }
    }
    if let Some((ip, names)) = own {
        s.push_str(&format!("{ip}\t{}\n", names.join(" ")));
    }
    s
}

/// The host's resolver configuration, as `/etc/resolv.conf` has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostResolv {
    /// `nameserver` lines.
    pub nameservers: Vec<IpAddr>,
    /// `search` (or `domain`) words.
    pub search: Vec<String>,
    /// `options` words.
    pub options: Vec<String>,
}

impl HostResolv {
    /// Parses resolv.conf text (at most 64 KiB are looked at).
    pub fn parse(text: &str) -> HostResolv {
        let mut r = HostResolv::default();
        let text = &text[..text.len().min(64 << 10)];
        for line in text.lines() {
            let mut w = line.split_whitespace();
            match w.next() {
                Some("nameserver") => {
                    if let Some(Ok(ip)) = w.next().map(str::parse::<IpAddr>) {
                        r.nameservers.push(ip);
                    }
                }
                Some("search") | Some("domain") => {
                    r.search = w.map(str::to_owned).collect();
                }
                Some("options") => r.options.extend(w.map(str::to_owned)),
                _ => {}
            }
        }
        r
    }

    /// The host's own (`/etc/resolv.conf`; empty if unreadable).
    pub fn host() -> HostResolv {
        HostResolv::parse(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
    }
}

/// The container's `/etc/resolv.conf`. `nameservers` are what the guest
/// can reach (the default network: passt's forwarder; a bridge network:
/// the host's own if not loopback, else public ones, as Docker does),
/// unless `--dns` replaced them; search and options from the host unless
/// `--dns-search`/`--dns-option` were given.
pub fn resolv_conf(cfg: &NetworkConfig, nameservers: &[IpAddr], host: &HostResolv) -> String {
    let mut s = String::new();
    let search = if cfg.dns_search.is_empty() {
        &host.search
    } else {
        &cfg.dns_search
    };
    if !search.is_empty() && search.iter().all(|d| d != ".") {
        s.push_str(&format!("search {}\n", search.join(" ")));
    }
    let servers: &[IpAddr] = if cfg.dns.is_empty() {
        nameservers
    } else {
        &cfg.dns
    };
    for ns in servers {
        s.push_str(&format!("nameserver {ns}\n"));
    }
    let options = if cfg.dns_options.is_empty() {
        &host.options
    } else {
        &cfg.dns_options
    };
    if !options.is_empty() {
        s.push_str(&format!("options {}\n", options.join(" ")));
    }
    s
}

/// The host's nameservers a guest on a bridge can use: the non-loopback
/// ones, else Google's public resolvers (Docker's fallback).
pub fn bridge_nameservers(host: &HostResolv) -> Vec<IpAddr> {
    let v: Vec<IpAddr> = host
        .nameservers
        .iter()
        .copied()
        .filter(|ip| !ip.is_loopback())
        .filter(|ip| ip.is_ipv4())
        .collect();
    if v.is_empty() {
        vec![
            IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
            IpAddr::V4(Ipv4Addr::new(8, 8, 4, 4)),
        ]
    } else {
        v
    }
}

/// Writes `text` into `path` in place (truncate and write, not a rename:
/// the guest's view of the file is of this inode).
pub fn write_in_place(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()
}

/// Docker's `Ports` map: `"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]`,
/// exposed but unpublished ports with `null`.
pub fn ports_json(published: &[PortBinding], exposed: &[(u16, Proto)]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (port, proto) in exposed {
        m.insert(format!("{port}/{proto}"), serde_json::Value::Null);
    }
    for p in published {
        let key = format!("{}/{}", p.container_port, p.proto);
        let entry = serde_json::json!({
            "HostIp": p.host_ip.map(|i| i.to_string()).unwrap_or_else(|| "0.0.0.0".into()),
            "HostPort": if p.host_port == 0 { String::new() } else { p.host_port.to_string() },
        });
        match m.get_mut(&key) {
            Some(serde_json::Value::Array(a)) => a.push(entry),
            _ => {
                m.insert(key, serde_json::Value::Array(vec![entry]));
            }
        }
    }
    serde_json::Value::Object(m)
}

/// Docker's `NetworkSettings` for a container on network `name` (its
/// addresses while `state` says it runs).
pub fn settings_json(
    cfg: &NetworkConfig,
    name: &str,
    state: Option<&NetworkState>,
) -> serde_json::Value {
    let ip = state.map(|s| s.ip.to_string()).unwrap_or_default();
    let gw = state
        .and_then(|s| s.gateway)
        .map(|g| g.to_string())
        .unwrap_or_default();
    let prefix = state.map_or(0, |s| s.prefix);
    let mac = state.map(|s| s.mac.clone()).unwrap_or_default();
    let mut networks = serde_json::Map::new();
    networks.insert(
        name.to_owned(),
        serde_json::json!({
            "IPAMConfig": null,
            "Links": null,
            "Aliases": if cfg.aliases.is_empty() { serde_json::Value::Null } else { serde_json::json!(cfg.aliases) },
            "NetworkID": state.map(|s| s.network_id.clone()).unwrap_or_default(),
            "Gateway": gw,
            "IPAddress": ip,
            "IPPrefixLen": prefix,
            "MacAddress": mac,
        }),
    );
    let ports = match state {
        Some(s) => ports_json(&s.ports, &cfg.exposed),
        None => serde_json::json!({}),
    };
    serde_json::json!({
        "Bridge": state.and_then(|s| s.interface.clone()).unwrap_or_default(),
        "Ports": ports,
        "Gateway": gw,
        "IPAddress": ip,
        "IPPrefixLen": prefix,
        "MacAddress": mac,
        "Networks": networks,
        "Backend": state.map(|s| s.backend.clone()).unwrap_or_default(),
        "Mtu": state.map_or(0, |s| s.mtu),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_arg_format() {
        let nic = GuestNic {
            mac: mac_for(DEFAULT_GUEST_IP),
            ip: DEFAULT_GUEST_IP,
            prefix: 24,
            gateway: Some(DEFAULT_GATEWAY),
            mtu: DEFAULT_MTU,
        };
        assert_eq!(
            nic.kernel_arg(),
            "husk.net=02:42:0a:00:02:64,10.0.2.100/24,10.0.2.2,65520"
        );
        let nic = GuestNic {
            gateway: None,
            mtu: 1500,
            ..nic
        };
        assert_eq!(
            nic.kernel_arg(),
            "husk.net=02:42:0a:00:02:64,10.0.2.100/24,,1500"
        );
    }

    #[test]
    fn hosts_and_resolv() {
        let names = vec!["web".to_string(), "abc123".to_string()];
        let peers = vec![(Ipv4Addr::new(10, 89, 0, 3), vec!["db".to_string()])];
        let extra = vec![
            ("gw".to_string(), HOST_GATEWAY.to_string()),
            ("x".to_string(), "1.2.3.4".to_string()),
        ];
        let h = hosts_file(
            Some((Ipv4Addr::new(10, 89, 0, 2), &names)),
            &peers,
            &extra,
            DEFAULT_GATEWAY,
        );
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.contains("10.0.2.2\tgw\n"));
        assert!(h.contains("1.2.3.4\tx\n"));
        assert!(h.contains("10.89.0.3\tdb\n"));
        assert!(h.ends_with("10.89.0.2\tweb abc123\n"));

        let host = HostResolv::parse(
            "# c\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver bogus\nsearch a.example b.example\noptions ndots:2\n",
        );
        assert_eq!(host.nameservers.len(), 2);
        assert_eq!(host.search, vec!["a.example", "b.example"]);
        let cfg = NetworkConfig::default();
        let r = resolv_conf(&cfg, &[IpAddr::V4(DEFAULT_DNS)], &host);
        assert_eq!(
            r,
            "search a.example b.example\nnameserver 10.0.2.3\noptions ndots:2\n"
        );
        assert_eq!(
            bridge_nameservers(&host),
            vec!["192.0.2.53".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            bridge_nameservers(&HostResolv::parse("nameserver 127.0.0.1\n")).len(),
            2
        );
        let cfg = NetworkConfig {
            dns: vec!["9.9.9.9".parse().unwrap()],
            dns_search: vec!["c.example".into()],
            ..Default::default()
        };
        assert_eq!(
            resolv_conf(&cfg, &[IpAddr::V4(DEFAULT_DNS)], &HostResolv::default()),
            "search c.example\nnameserver 9.9.9.9\n"
        );
    }

    #[test]
    fn names() {
        assert!(valid_host_name("db"));
        assert!(valid_host_name("my_db.local"));
        assert!(!valid_host_name(""));
        assert!(!valid_host_name("-x"));
        assert!(!valid_host_name("a b"));
        assert!(!valid_host_name("a\nb"));
    }
}
