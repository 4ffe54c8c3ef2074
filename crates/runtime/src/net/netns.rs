//! Engine mode: a container created from an OCI bundle (Docker,
//! containerd, Podman) gets the network the engine made in its network
//! namespace, which the monitor lives in. The engine's interface there
//! (a veth on docker0 or a user network's bridge) is carried into the VM
//! as Kata does: a TAP in the same namespace, and tc `mirred` redirects
//! from the veth's ingress to the TAP and back, so every frame the engine
//! sends the container reaches the guest NIC and every frame of the guest
//! leaves by the veth. The guest NIC takes the veth's MAC, address,
//! prefix, default gateway and MTU, so the engine's ARP tables, port
//! forwards (DNAT to the container's address) and bridges see the guest
//! as they would see a runc container.
//!
//! Done with iproute2's `ip` and `tc` (as [`super::bridge`] drives `ip`);
//! the TAP goes with its fd and the ingress qdisc with [`EngineNet`]'s
//! drop.
//!
//! Docker's embedded DNS (127.0.0.11 on user networks) listens in the
//! namespace's own loopback, which the guest cannot reach: see
//! [`super::dns`].

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use super::GuestNic;
use super::cmd::{self, CmdError};

/// The TAP's name inside the container's namespace (one per namespace).
pub const TAP_NAME: &str = "husktap0";

/// The first local port of the namespace's own sockets (to 65535; a
/// multiple of 4096, so one u32 mask matches the range). The guest's
/// kernel picks its ports below it (Linux's default range ends at 60999).
pub const OWN_PORTS_FIRST: u16 = 61440;

/// Why the namespace's network could not be carried into the VM.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `ip` or `tc` failed.
    #[error(transparent)]
    Cmd(#[from] CmdError),
    /// `ip -j` printed something else than expected.
    #[error("cannot parse the output of {command}")]
    Parse {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Opening the TAP failed.
    #[error("cannot create the TAP {TAP_NAME} in the container's network namespace")]
    Tap(#[source] std::io::Error),
}

fn run(tool: &'static str, args: &[&str]) -> Result<String, NetnsError> {
    Ok(cmd::run(tool, args)?)
}

fn ip_json(args: &[&str]) -> Result<serde_json::Value, NetnsError> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let text = run("ip", &full)?;
    let text = if text.trim().is_empty() { "[]" } else { &text };
    serde_json::from_str(text).map_err(|source| NetnsError::Parse {
        command: format!("ip {}", full.join(" ")),
        source,
    })
}

/// The engine's interface in the namespace, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its name (`eth0`).
    pub ifname: String,
    /// What the guest NIC becomes.
    pub nic: GuestNic,
}

/// Picks the interface to carry into the VM from `ip -j addr show` and
/// `ip -j -4 route show default`: the first Ethernet link (not loopback,
/// not our TAP) with an IPv4 address. `None`: the namespace has only `lo`
/// (`--network none`).
pub fn choose(addrs: &serde_json::Value, routes: &serde_json::Value) -> Option<Found> {
    for link in addrs.as_array()? {
        let name = link.get("ifname")?.as_str()?;
        if name == "lo" || name == TAP_NAME {
            continue;
        }
        if link.get("link_type").and_then(|t| t.as_str()) != Some("ether") {
            continue;
        }
        let Some(mac) = link
            .get("address")
            .and_then(|a| a.as_str())
            .and_then(parse_mac)
        else {
            continue;
        };
        let mtu = link
            .get("mtu")
            .and_then(|m| m.as_u64())
            .unwrap_or(1500)
            .clamp(68, 65535) as u16;
        let inet = link
            .get("addr_info")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
            .find(|a| a.get("family").and_then(|f| f.as_str()) == Some("inet"));
        let Some(inet) = inet else { continue };
        let Some(ip) = inet
            .get("local")
            .and_then(|l| l.as_str())
            .and_then(|l| l.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let prefix = inet
            .get("prefixlen")
            .and_then(|p| p.as_u64())
            .filter(|p| *p <= 32)
            .unwrap_or(32) as u8;
        let gateway = routes.as_array().into_iter().flatten().find_map(|r| {
            let dev = r.get("dev").and_then(|d| d.as_str());
            if dev.is_some() && dev != Some(name) {
                return None;
            }
            r.get("gateway")?.as_str()?.parse::<Ipv4Addr>().ok()
        });
        return Some(Found {
            ifname: name.to_owned(),
            nic: GuestNic {
                mac,
                ip,
                prefix,
                gateway,
                mtu,
            },
        });
    }
    None
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The namespace's interface carried into the VM: the TAP (the guest NIC's
/// backend) and the redirects. Dropping it removes the redirect from the
/// engine's interface (the TAP and its own filters go with its fd).
#[derive(Debug)]
pub struct EngineNet {
    /// The interface it carries.
    pub found: Found,
    /// The TAP's fd, for the VMM.
    pub tap: Option<OwnedFd>,
}

impl EngineNet {
    /// Finds the engine's interface in this process's network namespace
    /// and redirects it to a new TAP. `Ok(None)`: there is none (only
    /// `lo`; the guest gets only `lo` too).
    pub fn attach() -> Result<Option<EngineNet>, NetnsError> {
        run("ip", &["link", "set", "lo", "up"])?;
        let addrs = ip_json(&["addr", "show"])?;
        let routes = ip_json(&["-4", "route", "show", "default"])?;
        let Some(found) = choose(&addrs, &routes) else {
            return Ok(None);
        };
        let (tap, name) = crate::net::open_tap(TAP_NAME).map_err(NetnsError::Tap)?;
        let mtu = found.nic.mtu.to_string();
        let net = EngineNet {
            found,
            tap: Some(tap),
        };
        let dev = net.found.ifname.as_str();
        run("ip", &["link", "set", &name, "mtu", &mtu, "up"])?;
        // The namespace's own sockets (the engine's DNS server asking the
        // outside for a name, through this interface) take their ports
        // from a range the guest does not use, so their answers can be
        // told from the guest's.
        if let Err(e) = std::fs::write(
            "/proc/sys/net/ipv4/ip_local_port_range",
            format!("{OWN_PORTS_FIRST} 65535"),
        ) {
            log::warn!("network: cannot set the namespace's local port range: {e}");
        }
        let tc = |args: &[&str]| run("tc", args);
        for from in [dev, name.as_str()] {
            tc(&["qdisc", "add", "dev", from, "ingress"])?;
        }
        // From the engine's interface: ARP is copied to the guest and
        // still seen by the namespace (both answer for the one address,
        // with the one MAC); DNS answers to the namespace's own ports stay;
        // everything else goes to the guest. (A filter without an action passes
        // the frame on: no gact module needed.)
        let filter = |prio: &str, proto: &str, rest: &[&str]| {
            let mut a = vec![
                "filter", "add", "dev", dev, "parent", "ffff:", "prio", prio, "protocol", proto,
                "u32",
            ];
            a.extend_from_slice(rest);
            tc(&a)
        };
        let mirror = ["action", "mirred", "egress", "mirror", "dev", name.as_str()];
        let redirect = [
            "action",
            "mirred",
            "egress",
            "redirect",
            "dev",
            name.as_str(),
        ];
        filter(
            "1",
            "arp",
            &[&["match", "u32", "0", "0"][..], &mirror].concat(),
        )?;
        let own = format!("{OWN_PORTS_FIRST:#06x}");
        for (prio, l4) in [("2", "17"), ("3", "6")] {
            filter(
                prio,
                "ip",
                &[
                    "match", "ip", "protocol", l4, "0xff", "match", "ip", "sport", "53", "0xffff",
                    "match", "ip", "dport", &own, &own, "classid", "ffff:1",
                ],
            )?;
        }
        filter(
            "10",
            "all",
            &[&["match", "u32", "0", "0"][..], &redirect].concat(),
        )?;
        // From the guest: everything to the engine's interface.
        tc(&[
            "filter", "add", "dev", &name, "parent", "ffff:", "prio", "10", "protocol", "all",
            "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", dev,
        ])?;
        log::info!(
            "network: {dev} ({}/{}, MTU {}) carried into the VM through {name}",
            net.found.nic.ip,
            net.found.nic.prefix,
            net.found.nic.mtu
        );
        Ok(Some(net))
    }
}

impl Drop for EngineNet {
    fn drop(&mut self) {
        // The engine's veth outlives the VM (the engine removes it): take
        // the redirect off it, so a later VM in this namespace starts clean.
        if let Err(e) = run(
            "tc",
            &["qdisc", "del", "dev", &self.found.ifname, "ingress"],
        ) {
            log::debug!("network: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_dockers_veth_with_its_address_gateway_and_mtu() {
        let addrs: serde_json::Value = serde_json::from_str(
            r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP"],"mtu":65536,
                 "link_type":"loopback","address":"00:00:00:00:00:00",
                 "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
                {"ifindex":7,"link_index":8,"ifname":"eth0","flags":["BROADCAST","UP"],
                 "mtu":1450,"link_type":"ether","address":"02:42:ac:11:00:02",
                 "addr_info":[{"family":"inet","local":"172.17.0.2","prefixlen":16}]}]"#,
        )
        .unwrap();
        let routes: serde_json::Value = serde_json::from_str(
            r#"[{"dst":"default","gateway":"172.17.0.1","dev":"eth0","flags":[]}]"#,
        )
        .unwrap();
        let f = choose(&addrs, &routes).unwrap();
        assert_eq!(f.ifname, "eth0");
        assert_eq!(f.nic.mac, [0x02, 0x42, 0xac, 0x11, 0, 2]);
        assert_eq!(f.nic.ip, Ipv4Addr::new(172, 17, 0, 2));
        assert_eq!(f.nic.prefix, 16);
        assert_eq!(f.nic.gateway, Some(Ipv4Addr::new(172, 17, 0, 1)));
        assert_eq!(f.nic.mtu, 1450);
        assert_eq!(
            f.nic.kernel_arg(),
            "husk.net=02:42:ac:11:00:02,172.17.0.2/16,172.17.0.1,1450"
        );
    }

    #[test]
    fn only_lo_or_garbage_gives_nothing() {
        let lo: serde_json::Value = serde_json::from_str(
            r#"[{"ifname":"lo","link_type":"loopback","address":"00:00:00:00:00:00","addr_info":[]}]"#,
        )
        .unwrap();
        assert_eq!(choose(&lo, &serde_json::json!([])), None);
        // An interface without IPv4, a bad MAC, our own TAP: skipped.
        let odd: serde_json::Value = serde_json::from_str(
            r#"[{"ifname":"eth0","link_type":"ether","address":"02:42:ac:11:00:02","addr_info":[{"family":"inet6","local":"fe80::1","prefixlen":64}]},
                {"ifname":"eth1","link_type":"ether","address":"zz:42:ac:11:00:02","addr_info":[{"family":"inet","local":"10.0.0.2","prefixlen":24}]},
                {"ifname":"husktap0","link_type":"ether","address":"02:42:ac:11:00:03","addr_info":[{"family":"inet","local":"10.0.0.3","prefixlen":24}]}]"#,
        )
        .unwrap();
        assert_eq!(choose(&odd, &serde_json::json!([])), None);
        assert_eq!(
            choose(&serde_json::json!({"x": 1}), &serde_json::json!(3)),
            None
        );
        // No default route: no gateway (an --internal network).
        let one: serde_json::Value = serde_json::from_str(
            r#"[{"ifname":"eth0","link_type":"ether","address":"02:42:ac:11:00:02","mtu":1500,"addr_info":[{"family":"inet","local":"10.0.0.2","prefixlen":24}]}]"#,
        )
        .unwrap();
        let f = choose(&one, &serde_json::json!([])).unwrap();
        assert_eq!(f.nic.gateway, None);
        assert_eq!(parse_mac("02:42:ac:11:00"), None);
        assert_eq!(parse_mac("02:42:ac:11:00:02:03"), None);
    }
}
