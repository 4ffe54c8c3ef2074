//! The guest's network, configured over rtnetlink before the agent serves
//! the host: `lo` always comes up (programs expect 127.0.0.1 to work, and
//! with `--network none` it is the only interface), and the NIC the host
//! describes with `husk.net=MAC,ADDR/PREFIX,GATEWAY,MTU` gets its MTU, its
//! IPv4 address and broadcast, is set up, and gets a default route via the
//! gateway when there is one. There is no DHCP client: the host decides
//! the address. The guest kernel has no IPv6.
//!
//! The messages are framed with `netlink-packet-core`, their headers are
//! `netlink-packet-route`'s, and they go over a plain (blocking)
//! `netlink-sys` socket; every request asks for an acknowledgement and a
//! kernel error comes back as its errno. Attributes are plain NLAs (see
//! [`Request`] for why).

use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    DefaultNla, Emitable, ErrorBuffer, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE,
    NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NlasIterator,
};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressHeader, AddressScope};
use netlink_packet_route::link::{LinkFlags, LinkHeader, LinkLayerType};
use netlink_packet_route::route::{RouteHeader, RouteProtocol, RouteScope, RouteType};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::log;

/// The NIC's configuration from `husk.net=MAC,ADDR/PREFIX,GATEWAY,MTU`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// The interface's MAC address, which finds it among the guest's links.
    pub mac: [u8; 6],
    /// The guest's IPv4 address.
    pub addr: Ipv4Addr,
    /// The prefix length of its subnet (1 to 32).
    pub prefix: u8,
    /// The default route's gateway, in the subnet; `None`: no default route.
    pub gateway: Option<Ipv4Addr>,
    /// The interface's MTU (68, IPv4's minimum, to 65535).
    pub mtu: u32,
}

/// The smallest MTU IPv4 allows (RFC 791).
const MIN_MTU: u32 = 68;
/// The largest MTU a virtio-net device can offer.
const MAX_MTU: u32 = 65535;
/// How long the agent waits for the NIC to appear (built-in virtio-net
/// probes before PID 1 starts, so this is only a safety margin).
const LINK_WAIT: Duration = Duration::from_secs(2);
/// The receive buffer: rtnetlink dumps come in messages of at most a few
/// pages.
const RECV_BUF: usize = 64 * 1024;
/// The length of `struct nlmsghdr`.
const NLMSG_HDR_LEN: usize = 16;

impl NetConfig {
    /// Parses the value of `husk.net=`: `MAC,ADDR/PREFIX,GATEWAY,MTU`, e.g.
    /// `02:42:0a:00:02:64,10.0.2.100/24,10.0.2.2,65520`; GATEWAY may be
    /// empty. The MAC is six pairs of hex digits, unicast and not all zero;
    /// ADDR a unicast IPv4 address (in a subnet of up to /30, neither its
    /// network nor its broadcast address); PREFIX 1 to 32 and MTU 68 to
    /// 65535 in plain decimal; GATEWAY an address in the subnet other than
    /// ADDR. Says what is wrong otherwise.
    pub fn parse(value: &str) -> Result<NetConfig, String> {
        let fields: Vec<&str> = value.split(',').collect();
        let [mac, cidr, gateway, mtu] = fields.as_slice() else {
            return Err(format!(
                "expected MAC,ADDR/PREFIX,GATEWAY,MTU, got {} field(s)",
                fields.len()
            ));
        };
        let mac = parse_mac(mac)?;
        let (addr, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| format!("address {cidr:?} has no /PREFIX"))?;
        let addr = parse_ipv4(addr)?;
        let prefix = parse_decimal(prefix)
            .filter(|p| (1..=32).contains(p))
            .ok_or_else(|| format!("prefix length {prefix:?} is not 1 to 32"))?
            as u8;
        let mtu = parse_decimal(mtu)
            .filter(|m| (MIN_MTU..=MAX_MTU).contains(m))
            .ok_or_else(|| format!("MTU {mtu:?} is not {MIN_MTU} to {MAX_MTU}"))?;
        if addr.is_unspecified()
            || addr.is_loopback()
            || addr.is_multicast()
            || addr.is_broadcast()
            || addr.is_link_local()
            || u32::from(addr) >> 24 == 0
            || u32::from(addr) >> 28 == 0xf
        {
            return Err(format!("{addr} is not a unicast address"));
        }
        let cfg = NetConfig {
            mac,
            addr,
            prefix,
            gateway: None,
            mtu,
        };
        if prefix <= 30 && (addr == cfg.network() || Some(addr) == cfg.broadcast()) {
            return Err(format!(
                "{addr} is the network or broadcast address of {}/{prefix}",
                cfg.network()
            ));
        }
        let gateway = match *gateway {
            "" => None,
            g => {
                let g = parse_ipv4(g)?;
                if !cfg.contains(g) || g == addr || Some(g) == cfg.broadcast() || g == cfg.network()
                {
                    return Err(format!(
                        "gateway {g} is not another host of {}/{prefix}",
                        cfg.network()
                    ));
                }
                Some(g)
            }
        };
        Ok(NetConfig { gateway, ..cfg })
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// The subnet's network address.
    fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// The subnet's broadcast address; none for /31 (RFC 3021) and /32.
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        (self.prefix <= 30).then(|| Ipv4Addr::from(u32::from(self.addr) | !self.mask()))
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }
}

/// A MAC address written as six `:`-separated pairs of hex digits.
fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("MAC address {s:?} is not six pairs of hex digits");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(format!("MAC address {s} is not a unicast address"));
    }
    Ok(mac)
}

/// A dotted-quad IPv4 address (std's parser: four decimal octets, no
/// leading zeros).
fn parse_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address"))
}

/// A plain decimal number: digits only, no sign, no leading zero.
fn parse_decimal(s: &str) -> Option<u32> {
    let plain = !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    plain.then(|| s.parse().ok()).flatten()
}

/// Formats a MAC address as `ip link` does.
fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Brings `lo` up and configures the NIC `cfg` describes, logging what it
/// did and every failure (with the kernel's errno); the agent goes on
/// without a network rather than without a container.
pub fn configure(cfg: Option<&NetConfig>) {
    let mut nl = match Rtnl::open() {
        Ok(nl) => nl,
        Err(e) => {
            log(&format!("network: cannot open an rtnetlink socket: {e}"));
            return;
        }
    };
    if let Err(e) = configure_with(&mut nl, cfg) {
        log(&format!("network: {e}"));
    }
}

fn configure_with(nl: &mut Rtnl, cfg: Option<&NetConfig>) -> Result<(), String> {
    let deadline = Instant::now() + LINK_WAIT;
    let links = loop {
        let links = nl
            .links()
            .map_err(|e| format!("cannot list the interfaces (RTM_GETLINK): {e}"))?;
        let nic_missing = cfg.is_some() && !links.iter().any(|l| !l.loopback);
        if !nic_missing || Instant::now() >= deadline {
            break links;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // lo first, and on its own: a failed NIC must not leave lo down.
    let lo_result = match links.iter().find(|l| l.loopback) {
        Some(lo) => nl
            .set_up(lo.index)
            .map_err(|e| format!("cannot set {} up: {e}", lo.name)),
        None => Err("no loopback interface".to_owned()),
    };
    let Some(cfg) = cfg else {
        return lo_result;
    };
    if let Err(e) = lo_result {
        log(&format!("network: {e}"));
    }
    let link = match choose_link(&links, &cfg.mac) {
        Some((link, true)) => link,
        Some((link, false)) => {
            log(&format!(
                "network: no interface has MAC {}; configuring {} ({})",
                mac_string(&cfg.mac),
                link.name,
                link.mac
                    .as_deref()
                    .map_or_else(|| "no MAC".into(), mac_string)
            ));
            link
        }
        None => {
            return Err(format!(
                "no interface but loopback for MAC {}",
                mac_string(&cfg.mac)
            ));
        }
    };
    let name = &link.name;
    // A gratuitous ARP when the link comes up: user-mode backends (passt)
    // learn the guest's MAC from its first frame, and a guest that only
    // serves published ports would otherwise never send one, so the
    // first inbound connection would go to the wrong MAC; a bridge's
    // forwarding table learns it the same way.
    for conf in ["all", "default", name.as_str()] {
        let path = format!("/proc/sys/net/ipv4/conf/{conf}/arp_notify");
        if let Err(e) = std::fs::write(&path, "1") {
            log(&format!("network: cannot write {path}: {e}"));
        }
    }
    nl.set_mtu(link.index, cfg.mtu)
        .map_err(|e| format!("cannot set the MTU of {name} to {}: {e}", cfg.mtu))?;
    nl.add_address(link.index, cfg).map_err(|e| {
        format!(
            "cannot add {}/{} to {name} (RTM_NEWADDR): {e}",
            cfg.addr, cfg.prefix
        )
    })?;
    nl.set_up(link.index)
        .map_err(|e| format!("cannot set {name} up: {e}"))?;
    // virtio-net turns the carrier on only after the interface is up (a
    // work item reads the device's link status), and until then the qdisc
    // drops what is sent, the gratuitous ARP of the set-up included. So
    // once the carrier is on, the MAC is set again (to itself): the kernel
    // announces it (NETDEV_CHANGEADDR with arp_notify).
    let deadline = Instant::now() + CARRIER_WAIT;
    loop {
        let carrier = nl
            .links()
            .ok()
            .and_then(|l| l.into_iter().find(|l| l.index == link.index))
            .and_then(|l| l.carrier);
        if carrier != Some(false) {
            break;
        }
        if Instant::now() >= deadline {
            log(&format!(
                "network: {name} has no carrier after {CARRIER_WAIT:?}"
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(mac) = &link.mac
        && let Err(e) = nl.set_mac(link.index, mac)
    {
        log(&format!("network: cannot announce {name}'s MAC: {e}"));
    }
    if let Some(gw) = cfg.gateway {
        nl.add_default_route(link.index, gw)
            .map_err(|e| format!("cannot add the default route via {gw} on {name}: {e}"))?;
    }
    let gateway = cfg.gateway.map_or_else(|| "none".into(), |g| g.to_string());
    log(&format!(
        "network: {name} {} {}/{} gateway {gateway} mtu {}",
        mac_string(&cfg.mac),
        cfg.addr,
        cfg.prefix,
        cfg.mtu
    ));
    Ok(())
}

/// One interface of an RTM_GETLINK dump.
#[derive(Debug, Clone, PartialEq)]
struct Link {
    index: u32,
    name: String,
    mac: Option<Vec<u8>>,
    loopback: bool,
    /// IFLA_CARRIER: whether the driver reports the link as up (known
    /// even while the interface is down).
    carrier: Option<bool>,
}

/// `IFLA_CARRIER` (linux/if_link.h), which the libc crate has only for
/// Android.
const IFLA_CARRIER: u16 = 33;

/// How long the agent waits for the NIC's carrier after setting it up.
const CARRIER_WAIT: Duration = Duration::from_secs(3);

/// The length of `struct ifinfomsg`, before a link message's attributes.
const IFINFOMSG_LEN: usize = 16;

impl Link {
    /// Reads the payload of an RTM_NEWLINK message: its header, and of its
    /// attributes only the name and the MAC (parsing all of them with
    /// `LinkMessage::parse` would link the parsers of every kind of link
    /// into the agent, near a megabyte).
    fn parse(payload: &[u8]) -> io::Result<Link> {
        let bad = |e: netlink_packet_core::DecodeError| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad RTM_NEWLINK: {e}"))
        };
        let header = LinkHeader::parse(payload).map_err(bad)?;
        let mut link = Link {
            index: header.index,
            name: format!("if{}", header.index),
            mac: None,
            loopback: header.flags.contains(LinkFlags::Loopback)
                || header.link_layer_type == LinkLayerType::Loopback,
            carrier: None,
        };
        for nla in NlasIterator::new(payload.get(IFINFOMSG_LEN..).unwrap_or_default()) {
            let nla = nla.map_err(bad)?;
            match nla.kind() {
                libc::IFLA_IFNAME => {
                    let name = nla.value().split(|&b| b == 0).next().unwrap_or_default();
                    link.name = String::from_utf8_lossy(name).into_owned();
                }
                libc::IFLA_ADDRESS => link.mac = Some(nla.value().to_vec()),
                IFLA_CARRIER => link.carrier = nla.value().first().map(|c| *c != 0),
                _ => {}
            }
        }
        Ok(link)
    }
}

/// The interface with MAC `mac` (`true`), else the first one that is not
/// a loopback (`false`).
fn choose_link<'a>(links: &'a [Link], mac: &[u8; 6]) -> Option<(&'a Link, bool)> {
    links
        .iter()
        .find(|l| !l.loopback && l.mac.as_deref() == Some(&mac[..]))
        .map(|l| (l, true))
        .or_else(|| links.iter().find(|l| !l.loopback).map(|l| (l, false)))
}

/// A blocking rtnetlink socket connected to the kernel.
struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// What one received message means for the request waiting on it.
enum Step {
    More,
    Done,
}

impl Rtnl {
    fn open() -> io::Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Sends a message of type `msg_type` with `payload` and `flags` (and
    /// NLM_F_REQUEST) and hands the type and payload of every answer to
    /// its sequence number to `on_message` until it says `Done`. An
    /// NLMSG_ERROR with an error code ends the request with that errno.
    fn request(
        &mut self,
        msg_type: u16,
        flags: u16,
        payload: &impl Emitable,
        mut on_message: impl FnMut(u16, &[u8]) -> io::Result<Step>,
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut out = vec![0; NLMSG_HDR_LEN + payload.buffer_len()];
        payload.emit(&mut out[NLMSG_HDR_LEN..]);
        let len = out.len() as u32;
        let mut packet = NetlinkBuffer::new(&mut out[..]);
        packet.set_length(len);
        packet.set_message_type(msg_type);
        packet.set_flags(NLM_F_REQUEST | flags);
        packet.set_sequence_number(seq);
        packet.set_port_number(0);
        let sent = self.sock.send(&out, 0)?;
        if sent != out.len() {
            return Err(io::Error::other("short send on the rtnetlink socket"));
        }
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], libc::MSG_TRUNC)?;
            if n > self.buf.len() {
                return Err(io::Error::other(format!(
                    "an rtnetlink answer of {n} bytes was truncated"
                )));
            }
            let bad = |e: netlink_packet_core::DecodeError| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad rtnetlink answer: {e}"),
                )
            };
            let mut offset = 0;
            while offset < n {
                let m = NetlinkBuffer::new_checked(&self.buf[offset..n]).map_err(bad)?;
                offset += (m.length() as usize).next_multiple_of(4);
                if m.sequence_number() != seq {
                    continue;
                }
                let payload = m.payload();
                if m.message_type() == NLMSG_ERROR {
                    let err = ErrorBuffer::new_checked(payload).map_err(bad)?;
                    if let Some(code) = err.code() {
                        // The kernel sends -errno.
                        return Err(io::Error::from_raw_os_error(code.get().saturating_neg()));
                    }
                }
                if let Step::Done = on_message(m.message_type(), payload)? {
                    return Ok(());
                }
            }
        }
    }

    /// Sends `payload` as a `msg_type` and waits for its acknowledgement.
    fn ack(&mut self, msg_type: u16, flags: u16, payload: &impl Emitable) -> io::Result<()> {
        self.request(msg_type, flags | NLM_F_ACK, payload, |t, _| {
            Ok(if t == NLMSG_ERROR {
                Step::Done
            } else {
                Step::More
            })
        })
    }

    /// Every interface (RTM_GETLINK dump).
    fn links(&mut self) -> io::Result<Vec<Link>> {
        let mut links = Vec::new();
        self.request(
            libc::RTM_GETLINK,
            NLM_F_DUMP,
            &Request::new(LinkHeader::default(), vec![]),
            |t, payload| match t {
                libc::RTM_NEWLINK => {
                    links.push(Link::parse(payload)?);
                    Ok(Step::More)
                }
                NLMSG_DONE | NLMSG_ERROR => Ok(Step::Done),
                _ => Ok(Step::More),
            },
        )?;
        Ok(links)
    }

    /// Sets interface `index` up (RTM_SETLINK).
    fn set_up(&mut self, index: u32) -> io::Result<()> {
        let header = LinkHeader {
            index,
            flags: LinkFlags::Up,
            change_mask: LinkFlags::Up,
            ..LinkHeader::default()
        };
        let req = Request::new(header, vec![]);
        self.ack(libc::RTM_SETLINK, 0, &req)
    }

    /// Sets the MTU of interface `index`, leaving its flags alone.
    fn set_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        let header = LinkHeader {
            index,
            ..LinkHeader::default()
        };
        let req = Request::new(header, vec![nla(libc::IFLA_MTU, mtu.to_ne_bytes())]);
        self.ack(libc::RTM_SETLINK, 0, &req)
    }

    /// Sets interface `index`'s MAC address (RTM_SETLINK IFLA_ADDRESS).
    fn set_mac(&mut self, index: u32, mac: &[u8]) -> io::Result<()> {
        let header = LinkHeader {
            index,
            ..LinkHeader::default()
        };
        let req = Request::new(header, vec![nla(libc::IFLA_ADDRESS, mac.to_vec())]);
        self.ack(libc::RTM_SETLINK, 0, &req)
    }

    /// Adds (or replaces) `cfg`'s address with its prefix and broadcast on
    /// interface `index` (RTM_NEWADDR, as `ip addr replace ... brd +`).
    fn add_address(&mut self, index: u32, cfg: &NetConfig) -> io::Result<()> {
        let header = AddressHeader {
            family: AddressFamily::Inet,
            prefix_len: cfg.prefix,
            scope: AddressScope::Universe,
            index,
            ..AddressHeader::default()
        };
        let mut nlas = vec![
            nla(libc::IFA_LOCAL, cfg.addr.octets()),
            nla(libc::IFA_ADDRESS, cfg.addr.octets()),
        ];
        nlas.extend(
            cfg.broadcast()
                .map(|b| nla(libc::IFA_BROADCAST, b.octets())),
        );
        let req = Request::new(header, nlas);
        self.ack(libc::RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &req)
    }

    /// Adds (or replaces) the default route via `gateway` on interface
    /// `index` in the main table (RTM_NEWROUTE, as `ip route replace
    /// default via GATEWAY dev IF`).
    fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let header = RouteHeader {
            address_family: AddressFamily::Inet,
            destination_prefix_length: 0,
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Boot,
            scope: RouteScope::Universe,
            kind: RouteType::Unicast,
            ..RouteHeader::default()
        };
        let nlas = vec![
            nla(libc::RTA_GATEWAY, gateway.octets()),
            nla(libc::RTA_OIF, index.to_ne_bytes()),
        ];
        let req = Request::new(header, nlas);
        self.ack(libc::RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &req)
    }
}

/// A request's payload: a header of netlink-packet-route's (`ifinfomsg`,
/// `ifaddrmsg`, `rtmsg`) and its attributes as plain NLAs. The crate's
/// typed `LinkMessage`/`AddressMessage`/`RouteMessage` would do too, but
/// emitting their attribute enums links the encoders of every kind of
/// link, tunnel and route into the static agent (1.65 MB grew to 1.97 MB,
/// and to 2.6 MB parsing answers as `RouteNetlinkMessage`); this way the
/// network setup costs it under 0.1 MB.
struct Request<H> {
    header: H,
    nlas: Vec<DefaultNla>,
}

impl<H: Emitable> Request<H> {
    fn new(header: H, nlas: Vec<DefaultNla>) -> Request<H> {
        Request { header, nlas }
    }
}

impl<H: Emitable> Emitable for Request<H> {
    fn buffer_len(&self) -> usize {
        self.header.buffer_len() + self.nlas.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        let at = self.header.buffer_len();
        self.header.emit(&mut buffer[..at]);
        self.nlas.as_slice().emit(&mut buffer[at..]);
    }
}

/// An attribute of kind `kind` holding `value` (in the kernel's byte
/// order: native for numbers, network for addresses).
fn nla(kind: u16, value: impl Into<Vec<u8>>) -> DefaultNla {
    DefaultNla::new(kind, value.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_good_husk_net_values() {
        let c = NetConfig::parse("02:42:0a:00:02:64,10.0.2.100/24,10.0.2.2,65520").unwrap();
        assert_eq!(
            c,
            NetConfig {
                mac: [0x02, 0x42, 0x0a, 0x00, 0x02, 0x64],
                addr: Ipv4Addr::new(10, 0, 2, 100),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
                mtu: 65520,
            }
        );
        assert_eq!(c.broadcast(), Some(Ipv4Addr::new(10, 0, 2, 255)));
        let c = NetConfig::parse("02:42:AC:11:00:02,172.17.0.2/16,,1500").unwrap();
        assert_eq!(c.mac, [0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
        assert_eq!(c.gateway, None);
        assert_eq!(c.mtu, 1500);
        assert_eq!(c.broadcast(), Some(Ipv4Addr::new(172, 17, 255, 255)));
        // /31 and /32 have no broadcast address; /31's both ends are hosts.
        let c = NetConfig::parse("02:00:00:00:00:01,192.168.7.0/31,192.168.7.1,68").unwrap();
        assert_eq!(c.broadcast(), None);
        let c = NetConfig::parse("02:00:00:00:00:01,192.168.7.9/32,,9000").unwrap();
        assert_eq!((c.prefix, c.broadcast()), (32, None));
        let c = NetConfig::parse("02:00:00:00:00:01,10.1.2.3/8,10.255.255.254,65535").unwrap();
        assert_eq!(c.broadcast(), Some(Ipv4Addr::new(10, 255, 255, 255)));
    }

    #[test]
    fn refuses_malformed_husk_net_values() {
        for bad in [
            "",
            ",,,",
            "02:42:0a:00:02:64,10.0.2.100/24,10.0.2.2",
            "02:42:0a:00:02:64,10.0.2.100/24,10.0.2.2,1500,x",
            // MAC
            "02:42:0a:00:02,10.0.2.100/24,,1500",
            "02:42:0a:00:02:64:01,10.0.2.100/24,,1500",
            "2:42:0a:00:02:64,10.0.2.100/24,,1500",
            "02-42-0a-00-02-64,10.0.2.100/24,,1500",
            "02:42:0a:00:02:6g,10.0.2.100/24,,1500",
            "02:42:0a:00:02:+6,10.0.2.100/24,,1500",
            "01:00:5e:00:00:01,10.0.2.100/24,,1500",
            "00:00:00:00:00:00,10.0.2.100/24,,1500",
            // address and prefix
            "02:42:0a:00:02:64,10.0.2.100,,1500",
            "02:42:0a:00:02:64,10.0.2/24,,1500",
            "02:42:0a:00:02:64,010.0.2.100/24,,1500",
            "02:42:0a:00:02:64,10.0.2.100/0,,1500",
            "02:42:0a:00:02:64,10.0.2.100/33,,1500",
            "02:42:0a:00:02:64,10.0.2.100/024,,1500",
            "02:42:0a:00:02:64,10.0.2.100/+24,,1500",
            "02:42:0a:00:02:64,10.0.2.100/,,1500",
            "02:42:0a:00:02:64,fd00::2/64,,1500",
            "02:42:0a:00:02:64,0.0.0.0/24,,1500",
            "02:42:0a:00:02:64,127.0.0.2/8,,1500",
            "02:42:0a:00:02:64,224.0.0.5/24,,1500",
            "02:42:0a:00:02:64,255.255.255.255/32,,1500",
            "02:42:0a:00:02:64,240.0.0.1/8,,1500",
            "02:42:0a:00:02:64,169.254.1.1/16,,1500",
            "02:42:0a:00:02:64,10.0.2.0/24,,1500",
            "02:42:0a:00:02:64,10.0.2.255/24,,1500",
            // gateway
            "02:42:0a:00:02:64,10.0.2.100/24,10.0.3.1,1500",
            "02:42:0a:00:02:64,10.0.2.100/24,10.0.2.100,1500",
            "02:42:0a:00:02:64,10.0.2.100/24,10.0.2.255,1500",
            "02:42:0a:00:02:64,10.0.2.100/24,10.0.2.0,1500",
            "02:42:0a:00:02:64,10.0.2.100/24,gw,1500",
            "02:42:0a:00:02:64,10.0.2.100/32,10.0.2.1,1500",
            // MTU
            "02:42:0a:00:02:64,10.0.2.100/24,,",
            "02:42:0a:00:02:64,10.0.2.100/24,,67",
            "02:42:0a:00:02:64,10.0.2.100/24,,65536",
            "02:42:0a:00:02:64,10.0.2.100/24,,01500",
            "02:42:0a:00:02:64,10.0.2.100/24,,+1500",
            "02:42:0a:00:02:64,10.0.2.100/24,,-1",
            "02:42:0a:00:02:64,10.0.2.100/24,,99999999999999999999",
            "02:42:0a:00:02:64,10.0.2.100/24,,1500 ",
        ] {
            let r = NetConfig::parse(bad);
            assert!(r.is_err(), "{bad:?} gave {r:?}");
        }
        let e = NetConfig::parse("02:42:0a:00:02:64,10.0.2.100/24,10.0.3.1,1500").unwrap_err();
        assert!(e.contains("gateway 10.0.3.1"), "{e}");
        let e = NetConfig::parse("02:42:0a:00:02:64,10.0.2.100/24,,70000").unwrap_err();
        assert!(e.contains("MTU \"70000\""), "{e}");
    }

    #[test]
    fn picks_the_interface_by_mac_else_the_first_non_loopback() {
        let link = |index, name: &str, mac: Option<[u8; 6]>, loopback| Link {
            index,
            name: name.into(),
            mac: mac.map(|m| m.to_vec()),
            loopback,
            carrier: None,
        };
        let mac = [2, 0, 0, 0, 0, 2];
        let links = [
            link(1, "lo", Some([0; 6]), true),
            link(2, "eth0", Some([2, 0, 0, 0, 0, 1]), false),
            link(3, "eth1", Some(mac), false),
        ];
        let (l, exact) = choose_link(&links, &mac).unwrap();
        assert_eq!((l.name.as_str(), exact), ("eth1", true));
        let (l, exact) = choose_link(&links, &[2, 0, 0, 0, 0, 9]).unwrap();
        assert_eq!((l.name.as_str(), exact), ("eth0", false));
        // lo never matches, not even by MAC.
        assert_eq!(choose_link(&links[..1], &[0; 6]), None);
        assert_eq!(choose_link(&[], &mac), None);
    }

    #[test]
    fn reads_the_name_and_mac_of_a_link_message() {
        // ifinfomsg: family, pad, type ARPHRD_ETHER, index 2, flags, change.
        let mut msg = vec![0u8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        // IFLA_IFNAME "eth0\0" (padded to 4), IFLA_MTU, IFLA_ADDRESS.
        msg.extend([9, 0, 3, 0, b'e', b't', b'h', b'0', 0, 0, 0, 0]);
        msg.extend([8, 0, 4, 0, 0xdc, 0x05, 0, 0]);
        msg.extend([10, 0, 1, 0, 2, 0x42, 0x0a, 0, 2, 0x64, 0, 0]);
        // IFLA_CARRIER 1.
        msg.extend([5, 0, 33, 0, 1, 0, 0, 0]);
        let link = Link::parse(&msg).unwrap();
        assert_eq!(
            link,
            Link {
                index: 2,
                name: "eth0".into(),
                mac: Some(vec![2, 0x42, 0x0a, 0, 2, 0x64]),
                loopback: false,
                carrier: Some(true),
            }
        );
        // Truncated or bad attributes, a short header: errors, not panics.
        for end in [0, 15, 17, 21, msg.len() - 1] {
            let _ = Link::parse(&msg[..end]);
        }
        assert!(Link::parse(&msg[..15]).is_err());
        let mut bad = msg.clone();
        bad[16] = 200; // an NLA longer than the message
        assert!(Link::parse(&bad).is_err());
        // ARPHRD_LOOPBACK.
        let mut lo = msg.clone();
        lo[2..4].copy_from_slice(&772u16.to_ne_bytes());
        assert!(Link::parse(&lo).unwrap().loopback);
    }

    /// Runs `f` on a thread of its own in a fresh network namespace
    /// (CLONE_NEWNET applies to the calling thread only); `None` where the
    /// test may not create one (not root).
    fn in_fresh_netns<T: Send>(f: impl FnOnce() -> T + Send) -> Option<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                if let Err(e) = crate::sys::unshare(libc::CLONE_NEWNET) {
                    eprintln!("skipped: cannot create a network namespace: {e}");
                    return None;
                }
                Some(f())
            })
            .join()
            .expect("the test thread panicked")
        })
    }

    fn ip(args: &[&str]) -> Option<String> {
        let out = std::process::Command::new("ip").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    #[test]
    fn brings_lo_up_in_a_fresh_namespace() {
        in_fresh_netns(|| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            // Down at first: 127.0.0.1 is unreachable.
            let e = std::net::TcpStream::connect(addr).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENETUNREACH), "{e}");
            configure(None);
            std::net::TcpStream::connect(addr).unwrap();
            l.accept().unwrap();
            // Twice is harmless.
            configure_with(&mut Rtnl::open().unwrap(), None).unwrap();
        });
    }

    #[test]
    fn configures_the_interface_with_the_mac_in_a_fresh_namespace() {
        in_fresh_netns(|| {
            let made = ip(&[
                "link",
                "add",
                "v0",
                "address",
                "02:42:0a:00:02:64",
                "type",
                "veth",
                "peer",
                "name",
                "v1",
                "address",
                "02:42:0a:00:02:65",
            ]);
            if made.is_none() {
                eprintln!("skipped: `ip link add ... type veth` failed");
                return;
            }
            // The peer up too, so the route's gateway has a live link.
            ip(&["link", "set", "v1", "up"]).unwrap();
            let cfg = NetConfig::parse("02:42:0a:00:02:64,10.0.2.100/24,10.0.2.2,9000").unwrap();
            let mut nl = Rtnl::open().unwrap();
            configure_with(&mut nl, Some(&cfg)).unwrap();
            let link = ip(&["-o", "link", "show", "v0"]).unwrap();
            assert!(link.contains("mtu 9000"), "{link}");
            assert!(link.contains(",UP"), "{link}");
            let addr = ip(&["-o", "-4", "addr", "show", "v0"]).unwrap();
            assert!(addr.contains("inet 10.0.2.100/24 brd 10.0.2.255"), "{addr}");
            assert_eq!(ip(&["-o", "-4", "addr", "show", "v1"]).unwrap(), "");
            let route = ip(&["-4", "route", "show", "default"]).unwrap();
            assert!(route.contains("default via 10.0.2.2 dev v0"), "{route}");
            let lo = ip(&["-o", "link", "show", "lo"]).unwrap();
            assert!(lo.contains(",UP"), "{lo}");
            // Again (replace, not add): no EEXIST.
            configure_with(&mut nl, Some(&cfg)).unwrap();
            // A kernel refusal comes back with its errno: no such interface.
            let e = nl.set_mtu(9999, 1500).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
        });
    }
}
