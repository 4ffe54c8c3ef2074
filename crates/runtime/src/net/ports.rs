//! Published ports: Docker's `-p [IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]`
//! (ports or ranges), and how `ps`, `port` and `inspect` show them.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The most ports one container may publish (ranges count each port).
pub const MAX_PUBLISHED: usize = 1024;

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortBinding {
    /// The host address it listens on (`None`: all addresses).
    pub host_ip: Option<IpAddr>,
    /// The host port; 0 until a port is picked for `-p CONTAINER_PORT`.
    pub host_port: u16,
    /// The container's port.
    pub container_port: u16,
    /// TCP or UDP.
    pub proto: Proto,
}

impl PortBinding {
    /// The host address as Docker shows it (`0.0.0.0` for all).
    pub fn host_ip_text(&self) -> String {
        match self.host_ip {
            None => "0.0.0.0".into(),
            Some(IpAddr::V6(a)) => format!("[{a}]"),
            Some(a) => a.to_string(),
        }
    }

    /// Docker's `ps` form: `0.0.0.0:8080->80/tcp`.
    pub fn ps_text(&self) -> String {
        format!(
            "{}:{}->{}/{}",
            self.host_ip_text(),
            self.host_port,
            self.container_port,
            self.proto
        )
    }

    /// The host side, as `docker port` prints it: `0.0.0.0:8080`.
    pub fn host_text(&self) -> String {
        format!("{}:{}", self.host_ip_text(), self.host_port)
    }
}

/// Why a `-p` or `--expose` value is not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortError {
    /// The whole value is malformed.
    #[error("invalid publish spec {spec:?}: {why}")]
    Invalid {
        /// What was given.
        spec: String,
        /// What is wrong.
        why: &'static str,
    },
    /// Too many ports in all.
    #[error("at most {MAX_PUBLISHED} ports may be published")]
    TooMany,
}

/// A port or an inclusive range `A-B` (1..=65535; 0 only where allowed).
fn parse_range(s: &str, allow_zero: bool) -> Option<(u16, u16)> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a, b),
        None => (s, s),
    };
    let num = |t: &str| -> Option<u16> {
        if t.is_empty() || t.len() > 5 || !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (a, b) = (num(a)?, num(b)?);
    if a > b || (a == 0 && !(allow_zero && b == 0)) {
        return None;
    }
    Some((a, b))
}

/// Parses Docker's `-p` value into one binding per port.
pub fn parse_publish(spec: &str) -> Result<Vec<PortBinding>, PortError> {
    let bad = |why| PortError::Invalid {
        spec: spec.to_owned(),
        why,
    };
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((r, "tcp")) => (r, Proto::Tcp),
        Some((r, "udp")) => (r, Proto::Udp),
        Some(_) => return Err(bad("the protocol must be tcp or udp")),
        None => (spec, Proto::Tcp),
    };
    // An IPv6 host address is bracketed: [::1]:8080:80.
    let (host_ip, rest) = if let Some(r) = rest.strip_prefix('[') {
        let (ip, tail) = r
            .split_once("]:")
            .ok_or_else(|| bad("unclosed [ in the address"))?;
        let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| bad("invalid IPv6 address"))?;
        (Some(IpAddr::V6(ip)), tail)
    } else {
        let parts: Vec<&str> = rest.split(':').collect();
        match parts.len() {
            1 | 2 => (None, rest),
            3 => {
                let ip = parts[0];
                let ip = if ip.is_empty() {
                    None
                } else {
                    Some(
                        ip.parse::<IpAddr>()
                            .map_err(|_| bad("invalid host address"))?,
                    )
                };
                (ip, &rest[parts[0].len() + 1..])
            }
            _ => return Err(bad("too many colons")),
        }
    };
    let (host, container) = match rest.split_once(':') {
        Some((h, c)) => (Some(h), c),
        None => (None, rest),
    };
    let (c0, c1) = parse_range(container, false).ok_or_else(|| bad("invalid container port"))?;
    let (h0, h1) = match host {
        None | Some("") => (0, 0),
        Some(h) => parse_range(h, false).ok_or_else(|| bad("invalid host port"))?,
    };
    let count = usize::from(c1 - c0) + 1;
    if count > MAX_PUBLISHED {
        return Err(PortError::TooMany);
    }
    if h0 != 0 && usize::from(h1 - h0) + 1 != count {
        return Err(bad("host and container port ranges differ in size"));
    }
    Ok((0..count as u16)
        .map(|i| PortBinding {
            host_ip,
            host_port: if h0 == 0 { 0 } else { h0 + i },
            container_port: c0 + i,
            proto,
        })
        .collect())
}

/// Parses an image's `ExposedPorts` key or `--expose` value: `80`,
/// `80/tcp`, `53/udp`, `8000-8010`.
pub fn parse_exposed(spec: &str) -> Result<Vec<(u16, Proto)>, PortError> {
    let bad = |why| PortError::Invalid {
        spec: spec.to_owned(),
        why,
    };
    let (port, proto) = match spec.rsplit_once('/') {
        Some((p, "tcp")) => (p, Proto::Tcp),
        Some((p, "udp")) => (p, Proto::Udp),
        Some(_) => return Err(bad("the protocol must be tcp or udp")),
        None => (spec, Proto::Tcp),
    };
    let (a, b) = parse_range(port, false).ok_or_else(|| bad("invalid port"))?;
    if usize::from(b - a) + 1 > MAX_PUBLISHED {
        return Err(PortError::TooMany);
    }
    Ok((a..=b).map(|p| (p, proto)).collect())
}

/// Checks a set of bindings: no two may claim the same host port and
/// protocol on overlapping addresses.
pub fn check_conflicts(ports: &[PortBinding]) -> Result<(), String> {
    if ports.len() > MAX_PUBLISHED {
        return Err(format!("at most {MAX_PUBLISHED} ports may be published"));
    }
    for (i, a) in ports.iter().enumerate() {
        for b in &ports[i + 1..] {
            let same_addr = a.host_ip.is_none() || b.host_ip.is_none() || a.host_ip == b.host_ip;
            if a.host_port != 0 && a.host_port == b.host_port && a.proto == b.proto && same_addr {
                return Err(format!(
                    "Bind for {}:{} failed: port is already allocated",
                    a.host_ip_text(),
                    a.host_port
                ));
            }
        }
    }
    Ok(())
}

/// `ps`'s PORTS column: published ports as `0.0.0.0:8080->80/tcp`, exposed
/// but unpublished ones as `80/tcp`, in Docker's order and joined by ", ".
pub fn ps_column(published: &[PortBinding], exposed: &[(u16, Proto)]) -> String {
    let mut items: Vec<(u16, Proto, String)> = published
        .iter()
        .map(|p| (p.container_port, p.proto, p.ps_text()))
        .collect();
    for (port, proto) in exposed {
        if !published
            .iter()
            .any(|p| p.container_port == *port && p.proto == *proto)
        {
            items.push((*port, *proto, format!("{port}/{proto}")));
        }
    }
    items.sort();
    items.dedup();
    items
        .into_iter()
        .map(|(_, _, t)| t)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(spec: &str) -> PortBinding {
        let v = parse_publish(spec).unwrap();
        assert_eq!(v.len(), 1, "{spec}");
        v[0]
    }

    #[test]
    fn publish_forms() {
        let p = one("8080:80");
        assert_eq!(
            (p.host_ip, p.host_port, p.container_port, p.proto),
            (None, 8080, 80, Proto::Tcp)
        );
        let p = one("127.0.0.1:8080:80/udp");
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p.proto, Proto::Udp);
        assert_eq!(p.ps_text(), "127.0.0.1:8080->80/udp");
        let p = one("80");
        assert_eq!((p.host_port, p.container_port), (0, 80));
        let p = one("127.0.0.1::80");
        assert_eq!((p.host_port, p.container_port), (0, 80));
        assert!(p.host_ip.is_some());
        let p = one("[::1]:8080:80");
        assert_eq!(p.host_text(), "[::1]:8080");
        let v = parse_publish("8000-8002:80-82/tcp").unwrap();
        assert_eq!(
            v.iter()
                .map(|p| (p.host_port, p.container_port))
                .collect::<Vec<_>>(),
            vec![(8000, 80), (8001, 81), (8002, 82)]
        );
        assert_eq!(one("0.0.0.0:1:65535").container_port, 65535);
    }

    #[test]
    fn publish_malformed() {
        for bad in [
            "",
            ":",
            "80:",
            "abc",
            "8080:80/sctp",
            "8080:0",
            "0:80",
            "65536:80",
            "1.2.3:80:80",
            "a:b:c:d",
            "8000-7999:80",
            "8000-8001:80-82",
            "[::1:80:80",
            "[zz]:80:80",
            "080808:80",
            "-1:80",
            "80/",
            "1-65535",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(matches!(parse_publish("1-2000"), Err(PortError::TooMany)));
    }

    #[test]
    fn exposed_and_ps_column() {
        assert_eq!(parse_exposed("53/udp").unwrap(), vec![(53, Proto::Udp)]);
        assert_eq!(parse_exposed("80").unwrap(), vec![(80, Proto::Tcp)]);
        assert!(parse_exposed("80/icmp").is_err());
        let published = parse_publish("8080:80").unwrap();
        let col = ps_column(&published, &[(80, Proto::Tcp), (443, Proto::Tcp)]);
        assert_eq!(col, "0.0.0.0:8080->80/tcp, 443/tcp");
        assert_eq!(ps_column(&[], &[]), "");
    }

    #[test]
    fn conflicts() {
        let mut v = parse_publish("8080:80").unwrap();
        v.extend(parse_publish("127.0.0.1:8080:81").unwrap());
        assert!(
            check_conflicts(&v)
                .unwrap_err()
                .contains("already allocated")
        );
        let mut v = parse_publish("8080:80").unwrap();
        v.extend(parse_publish("8080:80/udp").unwrap());
        assert!(check_conflicts(&v).is_ok());
    }
}
