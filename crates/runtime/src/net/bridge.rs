//! The host side of user-defined networks: a Linux bridge per network
//! with the gateway address, nftables rules for NAT and isolation, and a
//! TAP per VM on the bridge. Done with iproute2's `ip` and nftables' `nft`
//! (as Docker drives iptables): every rule carries the comment
//! `husk:<network id>` and is removed by handle with its network; the
//! table `ip husk` goes with the last network, so the ruleset is as it was.
//!
//! Per network, in table `ip husk`:
//! - chain `forward` (hook forward): traffic from this bridge to another
//!   husk bridge is dropped (networks are isolated); an `--internal`
//!   network drops everything that would leave its bridge;
//! - chain `postrouting` (nat): traffic from the subnet that leaves by
//!   another interface is masqueraded (outbound access).
//!
//! Traffic between containers of one network is bridged, not routed, and
//! never reaches these chains (unless br_netfilter is loaded, where the
//! rules above still let it pass).
//!
//! On a host whose iptables filters forwarded traffic (Docker with
//! iptables makes `FORWARD`'s policy DROP), two tagged ACCEPT rules per
//! network go at the top of iptables' `FORWARD` too, as libvirt's do:
//! see [`ensure_iptables_accept`].

use std::net::Ipv4Addr;

use super::cmd::{self, CmdError};

/// Bridges are named `hkbr` and 10 hex digits of the network id.
pub const BRIDGE_PREFIX: &str = "hkbr";
/// TAPs are named `hktp` and 10 hex digits of the container id.
pub const TAP_PREFIX: &str = "hktp";
/// The nftables table (family ip).
pub const TABLE: &str = "husk";

/// Why a host network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// `ip`, `nft` or `iptables` failed.
    #[error(transparent)]
    Cmd(#[from] CmdError),
    /// Enabling IP forwarding failed.
    #[error("cannot enable IPv4 forwarding (/proc/sys/net/ipv4/ip_forward)")]
    Forwarding(#[source] std::io::Error),
    /// Opening the TAP failed.
    #[error("cannot create the TAP {0}")]
    Tap(String, #[source] std::io::Error),
}

fn ip(args: &[&str]) -> Result<String, BridgeError> {
    Ok(cmd::run("ip", args)?)
}

fn nft(args: &[&str]) -> Result<String, BridgeError> {
    Ok(cmd::run("nft", args)?)
}

/// The bridge name of network `id`.
pub fn bridge_name(id: &str) -> String {
    format!("{BRIDGE_PREFIX}{}", &id[..10.min(id.len())])
}

/// The TAP name of container `id`.
pub fn tap_name(id: &str) -> String {
    format!("{TAP_PREFIX}{}", &id[..10.min(id.len())])
}

fn comment(id: &str) -> String {
    format!("husk:{}", &id[..12.min(id.len())])
}

/// IPv4 networks the host routes already (so a new network's subnet does
/// not shadow them): `(address, prefix)` from `ip -4 route`.
pub fn host_routes() -> Vec<(Ipv4Addr, u8)> {
    let Ok(text) = ip(&["-4", "route", "show", "table", "all"]) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let dst = l.split_whitespace().next()?;
            if dst == "default" {
                return None;
            }
            let (a, p) = dst.split_once('/').unwrap_or((dst, "32"));
            Some((a.parse().ok()?, p.parse().ok().filter(|p: &u8| *p <= 32)?))
        })
        .collect()
}

/// Whether two IPv4 networks overlap.
pub fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let p = a.1.min(b.1);
    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    (u32::from(a.0) & mask) == (u32::from(b.0) & mask)
}

/// Creates network `id`'s bridge with `gateway/prefix` and its rules.
pub fn create(
    id: &str,
    subnet: (Ipv4Addr, u8),
    gateway: Ipv4Addr,
    internal: bool,
) -> Result<(), BridgeError> {
    let br = bridge_name(id);
    ip(&["link", "add", &br, "type", "bridge"])?;
    let done = (|| {
        ip(&[
            "addr",
            "add",
            &format!("{gateway}/{}", subnet.1),
            "dev",
            &br,
        ])?;
        ip(&["link", "set", &br, "up"])?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(BridgeError::Forwarding)?;
        add_rules(id, subnet, internal)?;
        ensure_iptables_accept(id)
    })();
    if done.is_err() {
        let _ = remove(id);
    }
    done
}

fn add_rules(id: &str, subnet: (Ipv4Addr, u8), internal: bool) -> Result<(), BridgeError> {
    let br = bridge_name(id);
    let tag = comment(id);
    let script = format!(
        "table ip {TABLE} {{\n\
         \tchain forward {{ type filter hook forward priority filter; policy accept; }}\n\
         \tchain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         }}\n"
    );
    nft_script(&script)?;
    let mut rules = vec![format!(
        "add rule ip {TABLE} forward iifname \"{br}\" oifname \"{BRIDGE_PREFIX}*\" oifname != \"{br}\" drop comment \"{tag}\"\n"
    )];
    if internal {
        rules.push(format!(
            "add rule ip {TABLE} forward iifname \"{br}\" oifname != \"{br}\" drop comment \"{tag}\"\n"
        ));
        rules.push(format!(
            "add rule ip {TABLE} forward oifname \"{br}\" iifname != \"{br}\" drop comment \"{tag}\"\n"
        ));
    } else {
        rules.push(format!(
            "add rule ip {TABLE} postrouting ip saddr {}/{} oifname != \"{br}\" masquerade comment \"{tag}\"\n",
            subnet.0, subnet.1
        ));
    }
    nft_script(&rules.concat())
}

fn nft_script(script: &str) -> Result<(), BridgeError> {
    cmd::run_with_stdin("nft", &["-f", "-"], Some(script))?;
    Ok(())
}

/// Removes network `id`'s rules (by handle) and bridge; the table goes
/// when no rule is left in it. Parts already gone are no error.
pub fn remove(id: &str) -> Result<(), BridgeError> {
    let tag = comment(id);
    let mut first_err = remove_iptables(id).err();
    if let Ok(text) = nft(&["-a", "list", "table", "ip", TABLE]) {
        let (mine, left) = rules_tagged(&text, &tag);
        for (chain, handle) in mine {
            if let Err(e) = nft(&["delete", "rule", "ip", TABLE, &chain, "handle", &handle]) {
                first_err.get_or_insert(e);
            }
        }
        if left == 0
            && let Err(e) = nft(&["delete", "table", "ip", TABLE])
        {
            first_err.get_or_insert(e);
        }
    }
    let br = bridge_name(id);
    if std::path::Path::new("/sys/class/net").join(&br).exists()
        && let Err(e) = ip(&["link", "del", &br])
    {
        first_err.get_or_insert(e);
    }
    first_err.map_or(Ok(()), Err)
}

/// In `nft -a list table` output, the rules whose comment is `tag`
/// (chain, handle), and how many other rules there are.
fn rules_tagged(text: &str, tag: &str) -> (Vec<(String, String)>, usize) {
    let mut chain = String::new();
    let mut mine = Vec::new();
    let mut left = 0;
    for line in text.lines() {
        let t = line.trim();
        // `chain forward { # handle 1`
        if let Some(rest) = t.strip_prefix("chain ") {
            chain = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            continue;
        }
        let Some((_, handle)) = t.rsplit_once("# handle ") else {
            continue;
        };
        if t.starts_with("type ") || t.starts_with("table ") {
            continue;
        }
        if t.contains(&format!("comment \"{tag}\"")) {
            mine.push((chain.clone(), handle.trim().to_owned()));
        } else {
            left += 1;
        }
    }
    (mine, left)
}

/// The rules network `id` needs in iptables' `FORWARD` chain on a host
/// whose iptables filters forwarded traffic (Docker with iptables sets
/// its policy to DROP, and with br_netfilter even traffic between two
/// ports of one bridge passes that chain): an nftables accept in our own
/// table cannot overrule a drop in another base chain, so, as libvirt and
/// LXD do, the bridge's traffic is accepted there too. Traffic that our
/// table drops (isolation, `--internal`) stays dropped: a drop in any
/// base chain is final.
fn iptables_rules(id: &str) -> [Vec<String>; 2] {
    let br = bridge_name(id);
    let tag = comment(id);
    let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    [
        own(&[
            "-i",
            &br,
            "-m",
            "comment",
            "--comment",
            &tag,
            "-j",
            "ACCEPT",
        ]),
        own(&[
            "-o",
            &br,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-m",
            "comment",
            "--comment",
            &tag,
            "-j",
            "ACCEPT",
        ]),
    ]
}

/// iptables' `FORWARD` chain as `iptables -S` prints it, or `None` when
/// iptables is not installed or cannot list it (no iptables, no rules).
/// Listing creates nothing, with either backend.
fn iptables_forward() -> Option<String> {
    match cmd::run("iptables", &["-w", "-S", "FORWARD"]) {
        Ok(text) => Some(text),
        Err(e) => {
            log::debug!("network: no iptables FORWARD chain: {e}");
            None
        }
    }
}

/// Whether a `FORWARD` chain listing can drop anything: a policy other
/// than ACCEPT, or any rule.
fn forward_filters(listing: &str) -> bool {
    listing
        .lines()
        .map(str::trim)
        .any(|l| !l.is_empty() && l != "-P FORWARD ACCEPT")
}

/// Makes sure iptables lets network `id`'s traffic through, when the
/// host's iptables filters forwarded traffic at all (checked at network
/// create and again at each container start: Docker may have started in
/// between). Nothing is added to a host whose iptables is absent or empty.
pub fn ensure_iptables_accept(id: &str) -> Result<(), BridgeError> {
    let Some(listing) = iptables_forward() else {
        return Ok(());
    };
    if !forward_filters(&listing) {
        return Ok(());
    }
    for rule in iptables_rules(id) {
        if forward_rule("-C", &rule).is_ok() {
            continue;
        }
        forward_rule("-I", &rule)?;
    }
    Ok(())
}

/// `iptables -w OP FORWARD RULE...` (`-I` inserts at the top: before
/// Docker's jumps and any DROP).
fn forward_rule(op: &str, rule: &[String]) -> Result<String, CmdError> {
    let mut args = vec!["-w", op, "FORWARD"];
    if op == "-I" {
        args.push("1");
    }
    args.extend(rule.iter().map(String::as_str));
    cmd::run("iptables", &args)
}

/// Removes network `id`'s iptables rules, if there are any.
fn remove_iptables(id: &str) -> Result<(), BridgeError> {
    let tag = comment(id);
    let Some(listing) = iptables_forward() else {
        return Ok(());
    };
    if !listing.contains(&tag) {
        return Ok(());
    }
    for rule in iptables_rules(id) {
        // Inserted once per ensure that found it missing; a copy made by
        // hand or by a racing start goes too (bounded, in case -D lies).
        for _ in 0..16 {
            if forward_rule("-D", &rule).is_err() {
                break;
            }
        }
    }
    match iptables_forward() {
        Some(l) if l.contains(&tag) => Err(BridgeError::Cmd(CmdError::Failed {
            command: "iptables -w -D FORWARD".into(),
            stderr: format!("rules tagged {tag} are still in iptables' FORWARD chain"),
        })),
        _ => Ok(()),
    }
}

/// Whether network `id`'s bridge exists.
pub fn exists(id: &str) -> bool {
    std::path::Path::new("/sys/class/net")
        .join(bridge_name(id))
        .exists()
}

/// Puts TAP `tap` on network `id`'s bridge and sets it up.
pub fn plug(id: &str, tap: &str) -> Result<(), BridgeError> {
    ensure_iptables_accept(id)?;
    ip(&["link", "set", tap, "master", &bridge_name(id)])?;
    ip(&["link", "set", tap, "up"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(bridge_name(id), "hkbr0123456789");
        assert!(bridge_name(id).len() <= 15);
        assert!(tap_name(id).len() <= 15);
    }

    #[test]
    fn tagged_rules_found_by_chain_and_handle() {
        let text = "table ip husk { # handle 1\n\tchain forward { # handle 1\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tiifname \"hkbr570c8bef96\" oifname \"hkbr*\" oifname != \"hkbr570c8bef96\" drop comment \"husk:570c8bef96cb\" # handle 3\n\t\tiifname \"hkbr76f2f5f298\" drop comment \"husk:76f2f5f29801\" # handle 5\n\t}\n\n\tchain postrouting { # handle 2\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tip saddr 10.89.0.0/24 oifname != \"hkbr570c8bef96\" masquerade comment \"husk:570c8bef96cb\" # handle 4\n\t}\n}\n";
        let (mine, left) = rules_tagged(text, "husk:570c8bef96cb");
        assert_eq!(
            mine,
            vec![
                ("forward".to_string(), "3".to_string()),
                ("postrouting".to_string(), "4".to_string())
            ]
        );
        assert_eq!(left, 1);
        assert_eq!(rules_tagged(text, "husk:000000000000").1, 3);
    }

    #[test]
    fn only_a_forward_chain_that_filters_needs_rules() {
        assert!(!forward_filters("-P FORWARD ACCEPT\n"));
        assert!(!forward_filters(""));
        assert!(forward_filters("-P FORWARD DROP\n"));
        assert!(forward_filters(
            "-P FORWARD ACCEPT\n-A FORWARD -j DOCKER-USER\n-A FORWARD -j REJECT\n"
        ));
    }

    #[test]
    fn iptables_rules_are_tagged_and_scoped_to_the_bridge() {
        let [inbound, replies] = iptables_rules("0123456789abcdef");
        assert_eq!(
            inbound.join(" "),
            "-i hkbr0123456789 -m comment --comment husk:0123456789ab -j ACCEPT"
        );
        assert_eq!(
            replies.join(" "),
            "-o hkbr0123456789 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment husk:0123456789ab -j ACCEPT"
        );
    }

    #[test]
    fn overlap() {
        let n = |s: &str, p| (s.parse::<Ipv4Addr>().unwrap(), p);
        assert!(overlaps(n("10.89.1.0", 24), n("10.89.1.7", 32)));
        assert!(overlaps(n("10.0.0.0", 8), n("10.89.1.0", 24)));
        assert!(!overlaps(n("10.89.1.0", 24), n("10.89.2.0", 24)));
        assert!(overlaps(n("0.0.0.0", 0), n("10.89.2.0", 24)));
    }
}
