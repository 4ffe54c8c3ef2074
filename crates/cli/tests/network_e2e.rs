//! Networking end to end with real microVMs: the default network (passt)
//! with published TCP and UDP ports, outbound access to a host server on
//! the host's own address, the host's loopback out of reach, DNS and
//! /etc/hosts; `--network none`; user-defined networks (root: a bridge per
//! network, name resolution inside one, isolation between two, `-p`
//! through the userland proxy, nothing left behind, on a host whose
//! iptables drops forwarded traffic as Docker's does); and Docker's errors,
//! which boot nothing. (busybox 1.35's `wget -T` crashes when its timer
//! fires, so the guest side bounds waits with `timeout`.) Boots cost ~25-60 s on PVM hosts, so one container
//! serves many checks.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use husk_e2e::{Cli, require_kvm};

fn husk(name: &str) -> Cli {
    Cli::new(env!("CARGO_BIN_EXE_husk"), name)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The host's own non-loopback address (the source of its default route).
fn host_ip() -> IpAddr {
    let o = Command::new("ip")
        .args(["-4", "route", "get", "1.1.1.1"])
        .output()
        .expect("ip route get");
    let t = text(&o.stdout);
    let mut w = t.split_whitespace();
    while let Some(x) = w.next() {
        if x == "src" {
            return w.next().unwrap().parse().unwrap();
        }
    }
    panic!("this host has no non-loopback IPv4 address with a default route: {t}");
}

/// A tiny HTTP server on `addr` answering every request with `body`;
/// counts the connections it got.
fn http_server(addr: &str, body: &'static str) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind(addr).unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            h.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 2048];
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, hits)
}

/// GET `/` from `addr` on the host; the body, or `None` if it failed.
fn http_get(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (_, body) = out.split_once("\r\n\r\n")?;
    out.starts_with("HTTP/1.").then(|| body.to_owned())
}

/// Polls [`http_get`] until it returns a body (the guest's server comes up
/// after the boot); on failure quotes container `name`'s logs and console.
fn http_get_until(h: &Cli, name: &str, addr: &str, secs: u64) -> String {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    loop {
        if let Some(b) = http_get(addr) {
            eprintln!(
                "first HTTP answer from {addr} after {:.1} s",
                t0.elapsed().as_secs_f64()
            );
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "no HTTP answer from {addr} in {secs} s\n{}{}",
            h.diagnose(name),
            host_net_state()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The host's links, neighbours, routes and filter rules, for a failure
/// message.
fn host_net_state() -> String {
    let mut out = String::new();
    for c in [
        "ip -br addr",
        "ip neigh",
        "ip route",
        "iptables -w -S FORWARD",
        "nft list ruleset",
    ] {
        let w: Vec<&str> = c.split(' ').collect();
        let o = Command::new(w[0]).args(&w[1..]).output();
        let body = match o {
            Ok(o) => format!("{}{}", text(&o.stdout), text(&o.stderr)),
            Err(e) => e.to_string(),
        };
        out.push_str(&format!("--- {c}\n{body}"));
    }
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory with the static guest programs (the UDP echo server, the
/// hostile frame sender), shared into containers.
fn tools_dir() -> PathBuf {
    let d = husk_e2e::scratch("net-tools");
    for prog in ["udp_echo", "net_abuse"] {
        let out = d.join(prog);
        if !out.exists() {
            husk_e2e::compile_static_c(
                &husk_e2e::repo_root().join(format!("tests/guest/{prog}.c")),
                &out,
            );
        }
    }
    d
}

/// VmRSS of process `pid`, KiB.
fn rss_kib(pid: u64) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The shell command of a container that serves `body` over HTTP on
/// `port` (busybox httpd) and then runs `then`.
fn web_cmd(body: &str, port: u16, then: &str) -> String {
    format!(
        "mkdir -p /tmp/www && echo {body} > /tmp/www/index.html && httpd -p {port} -h /tmp/www && echo web-up && {then}"
    )
}

#[test]
fn bad_network_options_are_refused_before_anything_boots() {
    let h = husk("net-e2e-errors");
    let t0 = Instant::now();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--network", "none", "-p", "8080:80"],
            "conflicting options: port publishing",
        ),
        (&["-p", "99999:80"], "invalid publish spec"),
        (&["-p", "8080:80/sctp"], "the protocol must be tcp or udp"),
        (&["--network", "nosuch"], "network nosuch not found"),
        (&["--network", "host"], "--network host is not supported"),
        (&["--add-host", "nocolon"], "bad format for add-host"),
        (
            &["--add-host", "x:not-an-ip"],
            "invalid IP address in add-host",
        ),
        (&["--dns", "bogus"], "is not an ip address"),
        (
            &["--network-alias", "a"],
            "supported only for containers in user-defined networks",
        ),
    ];
    for (extra, want) in cases {
        let args = Cli::run_args(false, extra, &["true"]);
        let o = h.out(&strs(&args));
        assert_eq!(o.status.code(), Some(125), "{extra:?}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains(want),
            "{extra:?}: want {want:?} in {}",
            text(&o.stderr)
        );
    }
    // A host port that is taken: found by the monitor before the VM boots.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let args = Cli::run_args(true, &["-p", &format!("127.0.0.1:{port}:80")], &["true"]);
    let o = h.out(&strs(&args));
    assert_eq!(o.status.code(), Some(125), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains(&format!(
            "Bind for 127.0.0.1:{port} failed: port is already allocated"
        )),
        "{}",
        text(&o.stderr)
    );
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "these must not boot a VM"
    );
    eprintln!(
        "bad_network_options_are_refused_before_anything_boots: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn default_network_publishes_ports_reaches_out_and_not_the_host_loopback() {
    require_kvm();
    let t0 = Instant::now();
    let h = husk("net-e2e-default");
    let hip = host_ip();
    let (out_port, out_hits) = http_server(&format!("{hip}:0"), "hello-from-host");
    let (lo_port, lo_hits) = http_server("127.0.0.1:0", "loopback-secret");
    let (tcp, udp) = (free_port(), free_udp_port());
    let tools = tools_dir();
    let vol = format!("{}:/t:ro", tools.display());
    let cmd = web_cmd("hello-from-guest", 8080, "exec /t/udp_echo 9999");
    let args = Cli::run_args(
        true,
        &[
            "--name",
            "web",
            "-v",
            &vol,
            "-p",
            &format!("{tcp}:8080"),
            "-p",
            &format!("{udp}:9999/udp"),
            "-p",
            "127.0.0.1::8080",
            "--add-host",
            "extra.example:192.0.2.77",
        ],
        &["sh", "-c", &cmd],
    );
    let id = h.ok(&strs(&args)).trim().to_string();
    assert_eq!(id.len(), 64);

    // Host -> container over TCP, through passt's forward.
    assert_eq!(
        http_get_until(&h, &id, &format!("127.0.0.1:{tcp}"), 300).trim(),
        "hello-from-guest"
    );
    // And UDP, from the host's own address: Debian 12's passt (2023-03-09)
    // does not answer UDP from the host's loopback when the gateway is not
    // mapped to it (--no-map-gw, so that the guest cannot reach the host's
    // loopback); TCP from loopback works (above).
    let u = UdpSocket::bind((hip, 0)).unwrap();
    u.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 64];
    let got = loop {
        u.send_to(b"ping-udp", (hip, udp)).unwrap();
        if let Ok((n, _)) = u.recv_from(&mut buf) {
            break buf[..n].to_vec();
        }
        assert!(Instant::now() < deadline, "no UDP echo on port {udp}");
    };
    assert_eq!(got, b"ping-udp");

    // A hostile guest: runts, garbage ethertypes, IPv4 and ARP with lying
    // lengths, an MTU-sized frame, then 5 s of garbage as fast as it can
    // send. The VMM and passt drop what they cannot use, do not grow
    // without bound, and the network still works afterwards.
    let v: serde_json::Value = serde_json::from_str(&h.ok(&["inspect", "web"])).unwrap();
    let monitor = v[0]["State"]["Pid"].as_u64().unwrap();
    let rss_before = rss_kib(monitor);
    let abuse = h.ok(&["exec", "web", "/t/net_abuse", "eth0", "5"]);
    eprintln!("{}", abuse.trim());
    assert!(abuse.contains("abuse: 144 malformed"), "{abuse}");
    let rss_after = rss_kib(monitor);
    eprintln!("monitor VmRSS {rss_before} KiB before the abuse, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the monitor grew from {rss_before} to {rss_after} KiB under a TX flood"
    );
    assert_eq!(
        http_get_until(&h, &id, &format!("127.0.0.1:{tcp}"), 120).trim(),
        "hello-from-guest"
    );
    u.send_to(b"after-abuse", (hip, udp)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        if let Ok((n, _)) = u.recv_from(&mut buf) {
            if &buf[..n] == b"after-abuse" {
                break buf[..n].to_vec();
            }
        }
        assert!(Instant::now() < deadline, "no UDP echo after the abuse");
        u.send_to(b"after-abuse", (hip, udp)).unwrap();
    };
    assert_eq!(got, b"after-abuse");

    // What users see.
    let ps = h.ok(&["ps"]);
    assert!(ps.contains(&format!("0.0.0.0:{tcp}->8080/tcp")), "{ps}");
    assert!(ps.contains(&format!("0.0.0.0:{udp}->9999/udp")), "{ps}");
    let port = h.ok(&["port", "web"]);
    assert!(
        port.contains(&format!("8080/tcp -> 0.0.0.0:{tcp}")),
        "{port}"
    );
    assert!(
        port.contains(&format!("9999/udp -> 0.0.0.0:{udp}")),
        "{port}"
    );
    let picked = h.ok(&["port", "web", "8080/tcp"]);
    assert!(picked.contains(&format!("0.0.0.0:{tcp}")), "{picked}");
    assert!(
        picked
            .lines()
            .any(|l| l.starts_with("127.0.0.1:") && !l.ends_with(":0")),
        "-p 127.0.0.1::8080 got a host port: {picked}"
    );
    let v: serde_json::Value = serde_json::from_str(&h.ok(&["inspect", "web"])).unwrap();
    let ns = &v[0]["NetworkSettings"];
    assert_eq!(ns["IPAddress"], "10.0.2.100");
    assert_eq!(ns["Gateway"], "10.0.2.2");
    assert_eq!(ns["Networks"]["default"]["IPAddress"], "10.0.2.100");
    assert_eq!(
        ns["Ports"]["8080/tcp"][0]["HostPort"],
        tcp.to_string(),
        "{ns}"
    );

    // Inside: the NIC the agent configured, DNS and /etc/hosts, outbound
    // access to the host's own address, and no way to the host loopback.
    let script = format!(
        "ip -4 addr show eth0; ip route; cat /etc/resolv.conf /etc/hosts; \
         echo OUT=$(timeout 10 wget -q -O - http://{hip}:{out_port}/); \
         timeout 5 wget -q -O - http://10.0.2.2:{lo_port}/ ; echo GW=$?; \
         timeout 5 wget -q -O - http://127.0.0.1:{lo_port}/ ; echo LO=$?"
    );
    let inside = h.ok(&["exec", "web", "sh", "-c", &script]);
    eprintln!("inside the container:\n{inside}");
    assert!(inside.contains("inet 10.0.2.100/24"), "{inside}");
    assert!(inside.contains("mtu 65520"), "{inside}");
    assert!(inside.contains("default via 10.0.2.2"), "{inside}");
    assert!(inside.contains("nameserver 10.0.2.3"), "{inside}");
    assert!(inside.contains("192.0.2.77\textra.example"), "{inside}");
    assert!(inside.contains("OUT=hello-from-host"), "{inside}");
    assert!(out_hits.load(Ordering::SeqCst) >= 1);
    assert!(!inside.contains("loopback-secret"), "{inside}");
    assert!(!inside.contains("GW=0"), "{inside}");
    assert!(!inside.contains("LO=0"), "{inside}");
    assert_eq!(
        lo_hits.load(Ordering::SeqCst),
        0,
        "the host loopback was reached"
    );

    // Removal leaves no passt behind.
    let dir = h.root.join("containers").join(&id);
    h.ok(&["rm", "-f", "web"]);
    let passts = husk_e2e::processes_matching(&dir.display().to_string());
    assert!(passts.is_empty(), "left behind: {passts:?}");
    assert!(http_get(&format!("127.0.0.1:{tcp}")).is_none());
    eprintln!(
        "default_network_publishes_ports_reaches_out_and_not_the_host_loopback: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn network_none_has_only_loopback() {
    require_kvm();
    let t0 = Instant::now();
    let h = husk("net-e2e-none");
    let args = Cli::run_args(
        false,
        &["--network", "none"],
        &[
            "sh",
            "-c",
            "ip -o link | cut -d: -f2; echo ROUTES; ip route; echo END; ping -c1 -W1 127.0.0.1 >/dev/null && echo LO-UP",
        ],
    );
    let out = h.ok(&strs(&args));
    let links: Vec<&str> = out
        .split("ROUTES")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(links, ["lo"], "{out}");
    let routes = out
        .split("ROUTES")
        .nth(1)
        .unwrap()
        .split("END")
        .next()
        .unwrap();
    assert!(routes.trim().is_empty(), "{out}");
    assert!(out.contains("LO-UP"), "lo is not up: {out}");
    eprintln!(
        "network_none_has_only_loopback: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// What a user-defined network may leave behind on the host.
fn host_footprint(root: &str) -> (Vec<String>, String, Vec<String>) {
    let links = text(
        &Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .lines()
    .filter_map(|l| l.split(':').nth(1).map(|s| s.trim().to_owned()))
    .collect();
    let rules = text(
        &Command::new("nft")
            .args(["-s", "list", "ruleset"])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    );
    (links, rules, husk_e2e::processes_matching(root))
}

/// The host as Docker with iptables leaves it: iptables' `FORWARD` policy
/// DROP and bridged traffic through iptables (br_netfilter's
/// `bridge-nf-call-iptables`), for the test's length; restored on drop,
/// panic or not. Needs Debian's iptables (`./dev setup` installs it).
struct DockerLikeForwarding {
    policy: String,
    made_table: bool,
    bridge_nf: Option<String>,
}

const BRIDGE_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

fn iptables(args: &[&str]) -> String {
    let o = Command::new("iptables")
        .args(args)
        .output()
        .expect("iptables (Debian's iptables package; ./dev setup installs it)");
    assert!(o.status.success(), "iptables {args:?}: {}", text(&o.stderr));
    text(&o.stdout)
}

impl DockerLikeForwarding {
    fn set() -> DockerLikeForwarding {
        let had_table = Command::new("nft")
            .args(["list", "table", "ip", "filter"])
            .output()
            .is_ok_and(|o| o.status.success());
        let listing = iptables(&["-w", "-S", "FORWARD"]);
        let policy = listing
            .lines()
            .find_map(|l| l.strip_prefix("-P FORWARD "))
            .unwrap_or("ACCEPT")
            .trim()
            .to_owned();
        iptables(&["-w", "-P", "FORWARD", "DROP"]);
        let bridge_nf = std::fs::read_to_string(BRIDGE_NF).ok();
        if bridge_nf.is_some() {
            std::fs::write(BRIDGE_NF, "1").unwrap();
        }
        eprintln!(
            "host set as Docker leaves it: iptables FORWARD policy DROP (was {policy}), \
             bridge-nf-call-iptables {}",
            if bridge_nf.is_some() {
                "1"
            } else {
                "absent (no br_netfilter)"
            }
        );
        DockerLikeForwarding {
            policy,
            made_table: !had_table,
            bridge_nf,
        }
    }
}

impl Drop for DockerLikeForwarding {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(["-w", "-P", "FORWARD", &self.policy])
            .status();
        if self.made_table {
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", "filter"])
                .status();
        }
        if let Some(v) = &self.bridge_nf {
            let _ = std::fs::write(BRIDGE_NF, v.trim());
        }
    }
}

/// Removes what the user-network test made, if it fails half way (a
/// bridge left behind makes the next run's subnets overlap).
struct UserNetCleanup<'a>(&'a Cli);

impl Drop for UserNetCleanup<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.0.out(&["rm", "-f", "web"]);
            let _ = self.0.out(&["network", "rm", "n1", "n2"]);
        }
    }
}

#[test]
fn user_defined_networks_resolve_names_isolate_and_clean_up() {
    require_kvm();
    if !is_root() {
        eprintln!(
            "SKIP user_defined_networks_resolve_names_isolate_and_clean_up: needs root (bridges, TAPs, nftables)"
        );
        return;
    }
    let t0 = Instant::now();
    let h = husk("net-e2e-user");
    let root = h.root.display().to_string();
    // Declared first, dropped last: the cleanup runs while the host is
    // still set up as Docker leaves it.
    let _forwarding = DockerLikeForwarding::set();
    let _cleanup = UserNetCleanup(&h);
    let before = host_footprint(&root);
    let hip = host_ip();
    let (out_port, _) = http_server(&format!("{hip}:0"), "hello-from-host");

    let n1 = h.ok(&["network", "create", "n1"]).trim().to_string();
    assert_eq!(n1.len(), 64);
    h.ok(&["network", "create", "--subnet", "10.89.200.0/24", "n2"]);
    let ls = h.ok(&["network", "ls"]);
    assert!(ls.contains(" n1 ") && ls.contains(" n2 "), "{ls}");
    let dup = h.out(&["network", "create", "n1"]);
    assert!(!dup.status.success());
    assert!(
        text(&dup.stderr).contains("already exists"),
        "{}",
        text(&dup.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&h.ok(&["network", "inspect", "n2"])).unwrap();
    assert_eq!(v[0]["IPAM"]["Config"][0]["Subnet"], "10.89.200.0/24");

    let tcp = free_port();
    let cmd = web_cmd("hello-from-n1", 8080, "exec sleep 1000");
    let args = Cli::run_args(
        true,
        &[
            "--name",
            "web",
            "--network",
            "n1",
            "--network-alias",
            "www",
            "-p",
            &format!("127.0.0.1:{tcp}:8080"),
        ],
        &["sh", "-c", &cmd],
    );
    h.ok(&strs(&args));
    // -p on a user network: the monitor's userland proxy.
    assert_eq!(
        http_get_until(&h, "web", &format!("127.0.0.1:{tcp}"), 300).trim(),
        "hello-from-n1"
    );
    let v: serde_json::Value = serde_json::from_str(&h.ok(&["inspect", "web"])).unwrap();
    let web_ip = v[0]["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(web_ip.starts_with("10.89."), "{web_ip}");
    let busy = h.out(&["network", "rm", "n1"]);
    assert!(
        text(&busy.stderr).contains("active endpoints"),
        "{}",
        text(&busy.stderr)
    );

    // A client on n1 (by name and alias, and outbound through NAT) and
    // one on n2 (isolated), side by side. Four VMs on two cores make a
    // first connection slow (ARP, SYN retries): n1's client tries three
    // times; n2's, which must fail, once.
    let on_n1 = Cli::run_args(
        false,
        &["--rm", "--network", "n1"],
        &[
            "sh",
            "-c",
            &format!(
                "get() {{ for i in 1 2 3; do r=$(timeout 10 wget -q -O - $1) && echo $r && return; done; }}; \
                 echo A=$(get http://web:8080/); echo B=$(get http://www:8080/); echo C=$(get http://{hip}:{out_port}/); \
                 ping -c 1 -W 10 web >/dev/null && echo PING=ok"
            ),
        ],
    );
    let on_n2 = Cli::run_args(
        false,
        &["--rm", "--network", "n2"],
        &[
            "sh",
            "-c",
            &format!(
                "timeout 5 wget -q -O - http://{web_ip}:8080/; echo IP=$?; timeout 5 wget -q -O - http://web:8080/; echo NAME=$?"
            ),
        ],
    );
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| h.ok(&strs(&on_n1)));
        let b = s.spawn(|| h.ok(&strs(&on_n2)));
        (a.join().unwrap(), b.join().unwrap())
    });
    eprintln!("on n1:\n{a}\non n2:\n{b}");
    assert!(a.contains("A=hello-from-n1"), "{a}");
    assert!(a.contains("B=hello-from-n1"), "{a}");
    assert!(a.contains("C=hello-from-host"), "{a}");
    // ICMP echo between two VMs on one bridge.
    assert!(a.contains("PING=ok"), "{a}");
    assert!(!b.contains("hello-from-n1"), "{b}");
    assert!(!b.contains("IP=0") && !b.contains("NAME=0"), "{b}");

    h.ok(&["rm", "-f", "web"]);
    h.ok(&["network", "rm", "n1", "n2"]);
    let ps = h.ok(&["ps", "-aq"]);
    assert!(ps.trim().is_empty(), "{ps}");
    let after = host_footprint(&root);
    assert_eq!(before.0, after.0, "interfaces left behind");
    assert_eq!(before.1, after.1, "nftables rules left behind");
    assert_eq!(before.2, after.2, "processes left behind");
    eprintln!(
        "user_defined_networks_resolve_names_isolate_and_clean_up: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// Whether this process's effective uid is 0 (from /proc/self/status).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        .unwrap_or(false)
}
