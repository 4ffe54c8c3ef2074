//! User-defined networks (`husk network create|ls|rm|inspect|...`): their
//! records under `<root>/networks/<id>/`, address management, and the
//! [`Endpoint`] a running container holds on one.
//!
//! A network is a Linux bridge on the host ([`super::bridge`]); a running
//! container on it has a TAP on that bridge (created by its monitor, gone
//! when the monitor's last fd of it closes), an address leased from the
//! subnet (`endpoints/<container id>.json`, taken under the network's lock
//! and reclaimed when the monitor that took it is gone), and `/etc/hosts`
//! naming every running container of the network; each join and leave
//! rewrites the others' files in place, so names resolve while they run.
//! Published ports are userland proxies in the monitor ([`super::proxy`]).
//! All of this needs root (CAP_NET_ADMIN); rootless containers have the
//! default network.

use super::bridge::{self, BridgeError};
use super::proxy::{PortProxy, ProxyError};
use super::{
    GuestNic, HostResolv, NetworkState, PortBinding, bridge_nameservers, hosts_file, mac_for,
    mac_text, resolv_conf, write_in_place,
};
use crate::container::{Container, process_start_time};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The most networks a store may have.
pub const MAX_NETWORKS: usize = 256;

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// No such network.
    #[error("network {0} not found")]
    NotFound(String),
    /// The name is taken.
    #[error("network with name {0} already exists")]
    Exists(String),
    /// A bad name or option.
    #[error("{0}")]
    BadInput(String),
    /// Running containers use it.
    #[error("error while removing network: network {name} id {id} has active endpoints")]
    InUse {
        /// Its name.
        name: String,
        /// Its id.
        id: String,
    },
    /// Not root.
    #[error(
        "user-defined networks need root (CAP_NET_ADMIN: a bridge, TAPs and nftables rules); rootless containers can use the default network"
    )]
    NotRoot,
    /// No address left.
    #[error("no free address in network {0}")]
    Full(String),
    /// No subnet left.
    #[error("no free subnet in 10.89.0.0/16 for a new network; give one with --subnet")]
    NoSubnet,
    /// The host side failed.
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    /// A published port failed.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// A store file.
    #[error("cannot {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A store file is corrupt.
    #[error("corrupt network record {0}")]
    Corrupt(PathBuf, #[source] serde_json::Error),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> NetworkError + 'a {
    move |source| NetworkError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A user-defined network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Network {
    /// 64 hex digits.
    pub id: String,
    /// Its unique name.
    pub name: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// The subnet's address.
    pub subnet: Ipv4Addr,
    /// The subnet's prefix length (16 to 29).
    pub prefix: u8,
    /// The host's address on it (the containers' gateway).
    pub gateway: Ipv4Addr,
    /// No outbound access (`--internal`).
    pub internal: bool,
    /// `--label`.
    pub labels: BTreeMap<String, String>,
}

impl Network {
    /// The host bridge.
    pub fn bridge(&self) -> String {
        bridge::bridge_name(&self.id)
    }

    /// The first 12 hex digits of its id.
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }

    /// Docker's `network inspect` object (`containers`: its endpoints).
    pub fn inspect_json(&self, endpoints: &[EndpointRecord]) -> serde_json::Value {
        let containers: serde_json::Map<String, serde_json::Value> = endpoints
            .iter()
            .map(|e| {
                (
                    e.container_id.clone(),
                    serde_json::json!({
                        "Name": e.container_name,
                        "MacAddress": e.mac,
                        "IPv4Address": format!("{}/{}", e.ip, self.prefix),
                        "IPv6Address": "",
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "Name": self.name,
            "Id": self.id,
            "Created": crate::engine::rfc3339(self.created),
            "Scope": "local",
            "Driver": "bridge",
            "EnableIPv6": false,
            "IPAM": {
                "Driver": "default",
                "Options": {},
                "Config": [{
                    "Subnet": format!("{}/{}", self.subnet, self.prefix),
                    "Gateway": self.gateway.to_string(),
                }],
            },
            "Internal": self.internal,
            "Attachable": false,
            "Containers": containers,
            "Options": { "com.docker.network.bridge.name": self.bridge() },
            "Labels": self.labels,
        })
    }
}

/// A running container's place on a network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointRecord {
    /// The container.
    pub container_id: String,
    /// Its name.
    pub container_name: String,
    /// The names it resolves by on the network.
    pub names: Vec<String>,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its NIC's MAC.
    pub mac: String,
    /// Its TAP.
    pub tap: String,
    /// Its `/etc/hosts` on the host.
    pub hosts_file: PathBuf,
    /// Its `--add-host` entries.
    pub extra_hosts: Vec<(String, String)>,
    /// The monitor that holds it (pid, start time), for reclaiming.
    pub owner: (u32, u64),
}

impl EndpointRecord {
    fn alive(&self) -> bool {
        process_start_time(self.owner.0) == Some(self.owner.1)
    }
}

/// What `network create` takes.
#[derive(Debug, Clone, Default)]
pub struct CreateNetwork {
    /// `--subnet A.B.C.D/P`.
    pub subnet: Option<String>,
    /// `--gateway`.
    pub gateway: Option<String>,
    /// `--internal`.
    pub internal: bool,
    /// `--label K=V`.
    pub labels: Vec<String>,
    /// `--driver` (only `bridge`).
    pub driver: Option<String>,
}

/// The networks of a store.
#[derive(Debug, Clone)]
pub struct NetworkStore {
    dir: PathBuf,
}

/// Names as Docker allows them for networks.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Names the built-in networks have.
pub const RESERVED: &[&str] = &["default", "bridge", "none", "host"];

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), NetworkError> {
    let bad = || {
        NetworkError::BadInput(format!(
            "invalid subnet {s:?}: expected A.B.C.D/P (IPv4, P from 16 to 29)"
        ))
    };
    let (a, p) = s.split_once('/').ok_or_else(bad)?;
    let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let p: u8 = p.parse().map_err(|_| bad())?;
    if !(16..=29).contains(&p) {
        return Err(bad());
    }
    let mask = u32::MAX << (32 - p);
    Ok((Ipv4Addr::from(u32::from(a) & mask), p))
}

fn in_subnet(ip: Ipv4Addr, net: (Ipv4Addr, u8)) -> bool {
    bridge::overlaps((ip, 32), net)
}

impl NetworkStore {
    /// The networks under store root `root`.
    pub fn open(root: &Path) -> Result<NetworkStore, NetworkError> {
        let dir = root.join("networks");
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        Ok(NetworkStore { dir })
    }

    fn lock(&self) -> Result<std::fs::File, NetworkError> {
        let path = self.dir.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io("lock", &path)(e.into()))?;
        Ok(f)
    }

    fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, NetworkError> {
        let bytes = std::fs::read(path).map_err(io("read", path))?;
        serde_json::from_slice(&bytes).map_err(|e| NetworkError::Corrupt(path.to_owned(), e))
    }

    fn write<T: Serialize>(path: &Path, v: &T) -> Result<(), NetworkError> {
        let tmp = path.with_extension("tmp");
        let bytes =
            serde_json::to_vec_pretty(v).map_err(|e| NetworkError::Corrupt(path.to_owned(), e))?;
        std::fs::write(&tmp, bytes).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("write", path))
    }

    /// Every network, oldest first.
    pub fn list(&self) -> Result<Vec<Network>, NetworkError> {
        let mut v = Vec::new();
        let rd = std::fs::read_dir(&self.dir).map_err(io("read", &self.dir))?;
        for e in rd.flatten() {
            let p = e.path().join("network.json");
            if p.is_file() {
                v.push(Self::read::<Network>(&p)?);
            }
        }
        v.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        Ok(v)
    }

    /// A network by name, id or unique id prefix.
    pub fn find(&self, query: &str) -> Result<Network, NetworkError> {
        let all = self.list()?;
        if let Some(n) = all.iter().find(|n| n.name == query || n.id == query) {
            return Ok(n.clone());
        }
        let by_prefix: Vec<&Network> =
            if query.len() >= 3 && query.bytes().all(|b| b.is_ascii_hexdigit()) {
                all.iter().filter(|n| n.id.starts_with(query)).collect()
            } else {
                Vec::new()
            };
        match by_prefix.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(NetworkError::NotFound(query.to_owned())),
        }
    }

    /// Creates a network (`network create`).
    pub fn create(&self, name: &str, opts: &CreateNetwork) -> Result<Network, NetworkError> {
        if !valid_name(name) {
            return Err(NetworkError::BadInput(format!(
                "invalid network name {name:?}: 1 to 64 of [a-zA-Z0-9][a-zA-Z0-9_.-]"
            )));
        }
        if RESERVED.contains(&name) {
            return Err(NetworkError::BadInput(format!(
                "{name} is a pre-defined network and cannot be created"
            )));
        }
        if let Some(d) = &opts.driver
            && d != "bridge"
        {
            return Err(NetworkError::BadInput(format!(
                "network driver {d:?} is not supported: husk has bridge"
            )));
        }
        let mut labels = BTreeMap::new();
        for l in &opts.labels {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            if k.is_empty() {
                return Err(NetworkError::BadInput(format!("invalid label {l:?}")));
            }
            labels.insert(k.to_owned(), v.to_owned());
        }
        let wanted = opts.subnet.as_deref().map(parse_cidr).transpose()?;
        if !is_root() {
            return Err(NetworkError::NotRoot);
        }
        let _lock = self.lock()?;
        let all = self.list()?;
        if all.iter().any(|n| n.name == name) {
            return Err(NetworkError::Exists(name.to_owned()));
        }
        if all.len() >= MAX_NETWORKS {
            return Err(NetworkError::BadInput(format!(
                "at most {MAX_NETWORKS} networks"
            )));
        }
        let taken: Vec<(Ipv4Addr, u8)> = all
            .iter()
            .map(|n| (n.subnet, n.prefix))
            .chain(bridge::host_routes())
            .collect();
        let subnet = match wanted {
            Some(s) => {
                if let Some(t) = taken.iter().find(|t| bridge::overlaps(s, **t)) {
                    return Err(NetworkError::BadInput(format!(
                        "subnet {}/{} overlaps {}/{} (another network or a host route)",
                        s.0, s.1, t.0, t.1
                    )));
                }
                s
            }
            None => (0..=255u8)
                .map(|i| (Ipv4Addr::new(10, 89, i, 0), 24))
                .find(|c| !taken.iter().any(|t| bridge::overlaps(*c, *t)))
                .ok_or(NetworkError::NoSubnet)?,
        };
        let gateway = match &opts.gateway {
            Some(g) => {
                let g: Ipv4Addr = g
                    .parse()
                    .map_err(|_| NetworkError::BadInput(format!("invalid gateway {g:?}")))?;
                if !in_subnet(g, subnet) {
                    return Err(NetworkError::BadInput(format!(
                        "gateway {g} is not in subnet {}/{}",
                        subnet.0, subnet.1
                    )));
                }
                g
            }
            None => Ipv4Addr::from(u32::from(subnet.0) + 1),
        };
        let id = crate::container::new_id()
            .map_err(|e| NetworkError::BadInput(format!("cannot make an id: {e}")))?;
        let net = Network {
            id: id.clone(),
            name: name.to_owned(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            subnet: subnet.0,
            prefix: subnet.1,
            gateway,
            internal: opts.internal,
            labels,
        };
        let dir = self.dir.join(&id);
        std::fs::create_dir_all(dir.join("endpoints")).map_err(io("create", &dir))?;
        if let Err(e) = bridge::create(&id, subnet, gateway, opts.internal) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
        if let Err(e) = Self::write(&dir.join("network.json"), &net) {
            let _ = bridge::remove(&id);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(net)
    }

    /// The live endpoints of a network (records of dead monitors are
    /// removed on the way).
    pub fn endpoints(&self, net: &Network) -> Result<Vec<EndpointRecord>, NetworkError> {
        let dir = self.dir.join(&net.id).join("endpoints");
        let mut v = Vec::new();
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(v);
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match Self::read::<EndpointRecord>(&p) {
                Ok(r) if r.alive() => v.push(r),
                _ => {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        v.sort_by_key(|r| r.ip);
        Ok(v)
    }

    /// Removes a network (`network rm`): refused while containers run on
    /// it; its bridge and rules go.
    pub fn remove(&self, net: &Network) -> Result<(), NetworkError> {
        let _lock = self.lock()?;
        if !self.endpoints(net)?.is_empty() {
            return Err(NetworkError::InUse {
                name: net.name.clone(),
                id: net.id.clone(),
            });
        }
        if !is_root() {
            return Err(NetworkError::NotRoot);
        }
        bridge::remove(&net.id)?;
        let dir = self.dir.join(&net.id);
        std::fs::remove_dir_all(&dir).map_err(io("remove", &dir))
    }

    /// Rewrites the `/etc/hosts` of every endpoint of `net` (each names
    /// itself and the others).
    fn refresh_hosts(&self, net: &Network) -> Result<(), NetworkError> {
        let eps = self.endpoints(net)?;
        for me in &eps {
            let peers: Vec<(Ipv4Addr, Vec<String>)> = eps
                .iter()
                .filter(|e| e.container_id != me.container_id)
                .map(|e| (e.ip, e.names.clone()))
                .collect();
            let text = hosts_file(
                Some((me.ip, &me.names)),
                &peers,
                &me.extra_hosts,
                net.gateway,
            );
            if let Err(e) = write_in_place(&me.hosts_file, &text) {
                log::warn!("cannot update {}: {e}", me.hosts_file.display());
            }
        }
        Ok(())
    }

    /// Joins container `c` (its monitor is this process) to network `id`:
    /// an address, a TAP on the bridge, its published ports, and the
    /// others' `/etc/hosts` updated.
    pub fn join(&self, id: &str, c: &Container) -> Result<Endpoint, NetworkError> {
        let net = self.find(id)?;
        if !is_root() {
            return Err(NetworkError::NotRoot);
        }
        if !bridge::exists(&net.id) {
            return Err(NetworkError::BadInput(format!(
                "the bridge of network {} ({}) is gone (the host rebooted?): remove the network and create it again",
                net.name,
                net.bridge()
            )));
        }
        let me = std::process::id();
        let owner = (me, process_start_time(me).unwrap_or(0));
        let lock = self.lock()?;
        let eps = self.endpoints(&net)?;
        // .1 is usually the gateway; the network's address and broadcast
        // are never leased.
        let base = u32::from(net.subnet);
        let size = 1u32 << (32 - net.prefix);
        let ip = (2..size - 1)
            .map(|i| Ipv4Addr::from(base + i))
            .find(|ip| *ip != net.gateway && !eps.iter().any(|e| e.ip == *ip))
            .ok_or_else(|| NetworkError::Full(net.name.clone()))?;
        let tap = bridge::tap_name(&c.id);
        let (fd, tap) = crate::net::open_tap(&tap).map_err(|e| BridgeError::Tap(tap.clone(), e))?;
        bridge::plug(&net.id, &tap)?;
        let record = EndpointRecord {
            container_id: c.id.clone(),
            container_name: c.name.clone(),
            names: super::attach::names_of(c),
            ip,
            mac: mac_text(&mac_for(ip)),
            tap: tap.clone(),
            hosts_file: c.dir().join("hosts"),
            extra_hosts: c.config.network.extra_hosts.clone(),
            owner,
        };
        let path = self
            .dir
            .join(&net.id)
            .join("endpoints")
            .join(format!("{}.json", c.id));
        Self::write(&path, &record)?;
        drop(lock);
        let mut ep = Endpoint {
            store: self.clone(),
            net,
            record,
            tap: Arc::new(fd),
            proxies: Vec::new(),
            ports: Vec::new(),
            resolv: String::new(),
            left: false,
        };
        // Ports: a userland proxy each, bound now so a taken port fails
        // the start.
        for p in &c.config.network.ports {
            let listen = SocketAddr::new(
                p.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                p.host_port,
            );
            let target = SocketAddr::new(IpAddr::V4(ip), p.container_port);
            let proxy = PortProxy::start(listen, target, p.proto)?;
            let mut bound = *p;
            bound.host_port = proxy.local_addr().port();
            ep.ports.push(bound);
            ep.proxies.push(proxy);
        }
        let host = HostResolv::host();
        ep.resolv = resolv_conf(&c.config.network, &bridge_nameservers(&host), &host);
        Ok(ep)
    }
}

/// A running container's place on a user-defined network, held by its
/// monitor; [`Endpoint::leave`] (or drop) gives it up.
#[derive(Debug)]
pub struct Endpoint {
    store: NetworkStore,
    net: Network,
    record: EndpointRecord,
    tap: Arc<OwnedFd>,
    proxies: Vec<PortProxy>,
    ports: Vec<PortBinding>,
    resolv: String,
    left: bool,
}

impl Endpoint {
    /// The guest NIC.
    pub fn nic(&self) -> GuestNic {
        GuestNic {
            mac: mac_for(self.record.ip),
            ip: self.record.ip,
            prefix: self.net.prefix,
            gateway: Some(self.net.gateway),
            mtu: 1500,
        }
    }

    /// The TAP's fd.
    pub fn tap_fd(&self) -> Arc<OwnedFd> {
        self.tap.clone()
    }

    /// The container's `/etc/hosts` now (the others are updated when the
    /// record is written, see [`Endpoint::announce`]).
    pub fn hosts_text(&self) -> String {
        let peers: Vec<(Ipv4Addr, Vec<String>)> = self
            .store
            .endpoints(&self.net)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.container_id != self.record.container_id)
            .map(|e| (e.ip, e.names))
            .collect();
        hosts_file(
            Some((self.record.ip, &self.record.names)),
            &peers,
            &self.record.extra_hosts,
            self.net.gateway,
        )
    }

    /// The container's `/etc/resolv.conf`.
    pub fn resolv_text(&self) -> String {
        self.resolv.clone()
    }

    /// Tells the network's other containers about this one (once its
    /// `/etc/hosts` exists).
    pub fn announce(&self) {
        if let Err(e) = self.store.refresh_hosts(&self.net) {
            log::warn!("cannot update the network's hosts files: {e}");
        }
    }

    /// What `inspect` shows.
    pub fn state(&self) -> NetworkState {
        NetworkState {
            network: self.net.name.clone(),
            network_id: self.net.id.clone(),
            ip: self.record.ip,
            prefix: self.net.prefix,
            gateway: Some(self.net.gateway),
            mac: self.record.mac.clone(),
            mtu: 1500,
            ports: self.ports.clone(),
            backend: "bridge".into(),
            interface: Some(self.record.tap.clone()),
        }
    }

    /// Leaves the network: proxies stop, the address is released, the
    /// others forget the name. (The TAP goes when the VM's fd and this one
    /// close.)
    pub fn leave(mut self) {
        self.leave_now();
    }

    fn leave_now(&mut self) {
        if self.left {
            return;
        }
        self.left = true;
        self.proxies.clear();
        let path = self
            .store
            .dir
            .join(&self.net.id)
            .join("endpoints")
            .join(format!("{}.json", self.record.container_id));
        if let Ok(_lock) = self.store.lock() {
            let _ = std::fs::remove_file(&path);
        }
        self.announce();
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.leave_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_cidrs() {
        assert!(valid_name("front-end_1.x"));
        assert!(!valid_name("-x"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
        assert_eq!(
            parse_cidr("10.1.2.3/24").unwrap(),
            ("10.1.2.0".parse().unwrap(), 24)
        );
        for bad in ["10.1.2.3", "10.1.2.3/8", "10.1.2.3/30", "x/24", "10.1.2.3/"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        assert!(in_subnet(
            "10.89.3.7".parse().unwrap(),
            ("10.89.3.0".parse().unwrap(), 24)
        ));
        assert!(!in_subnet(
            "10.89.4.7".parse().unwrap(),
            ("10.89.3.0".parse().unwrap(), 24)
        ));
    }

    #[test]
    fn find_and_list_without_root_side_effects() {
        let root = tempfile::tempdir().unwrap();
        let s = NetworkStore::open(root.path()).unwrap();
        assert!(s.list().unwrap().is_empty());
        let net = Network {
            id: "ab".repeat(32),
            name: "n1".into(),
            created: 1,
            subnet: "10.89.9.0".parse().unwrap(),
            prefix: 24,
            gateway: "10.89.9.1".parse().unwrap(),
            internal: false,
            labels: BTreeMap::new(),
        };
        let dir = root.path().join("networks").join(&net.id);
        std::fs::create_dir_all(&dir).unwrap();
        NetworkStore::write(&dir.join("network.json"), &net).unwrap();
        assert_eq!(s.find("n1").unwrap(), net);
        assert_eq!(s.find("abab").unwrap(), net);
        assert!(matches!(s.find("n2"), Err(NetworkError::NotFound(_))));
        assert!(matches!(s.find("ab"), Err(NetworkError::NotFound(_))));
        let j = net.inspect_json(&[]);
        assert_eq!(j["IPAM"]["Config"][0]["Subnet"], "10.89.9.0/24");
        assert_eq!(
            j["Options"]["com.docker.network.bridge.name"],
            "hkbrababababab"
        );
        // An endpoint of a process that is gone is reclaimed.
        let rec = EndpointRecord {
            container_id: "c".repeat(64),
            container_name: "c1".into(),
            names: vec!["c1".into()],
            ip: "10.89.9.2".parse().unwrap(),
            mac: "02:42:0a:59:09:02".into(),
            tap: "hktpcccccccccc".into(),
            hosts_file: root.path().join("hosts"),
            extra_hosts: vec![],
            owner: (u32::MAX - 1, 1),
        };
        let p = dir.join("endpoints");
        std::fs::create_dir_all(&p).unwrap();
        NetworkStore::write(&p.join("x.json"), &rec).unwrap();
        assert!(s.endpoints(&net).unwrap().is_empty());
        assert!(!p.join("x.json").exists());
    }
}
