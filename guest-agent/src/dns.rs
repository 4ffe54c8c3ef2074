//! A DNS relay for resolvers the guest cannot reach: `husk.dns=ADDR`
//! names a loopback address of the container's `/etc/resolv.conf` (Docker's
//! embedded DNS, 127.0.0.11, lives on the loopback of the engine's network
//! namespace, on the host side of the VM). The agent answers on ADDR:53,
//! UDP and TCP, in the guest, and carries every query to the host over
//! vsock (host port [`husk_protocol::DNS_PORT`], messages framed as in DNS
//! over TCP), where the container's monitor asks the real resolver.
//!
//! Bounds: a UDP query is at most 65,535 bytes (the datagram's own limit),
//! at most [`MAX_INFLIGHT`] UDP queries and [`MAX_TCP`] TCP clients at once
//! (more are dropped: the client retries), and every wait on the host is
//! bounded by [`TIMEOUT`].

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// UDP queries relayed at once.
pub const MAX_INFLIGHT: usize = 64;
/// TCP clients relayed at once.
pub const MAX_TCP: usize = 16;
/// The longest wait for the host's answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Parses `husk.dns=`'s value: an IPv4 loopback address.
pub fn parse(value: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = value
        .parse()
        .map_err(|_| format!("{value:?} is not an IPv4 address"))?;
    if !ip.is_loopback() {
        return Err(format!("{ip} is not a loopback address"));
    }
    Ok(ip)
}

/// Frames `msg` as DNS over TCP does.
pub fn frame(msg: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(msg.len()).ok()?;
    let mut v = Vec::with_capacity(2 + msg.len());
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(msg);
    Some(v)
}

/// Reads one framed message.
pub fn read_framed(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len)?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut msg)?;
    Ok(msg)
}

fn host_stream() -> std::io::Result<std::fs::File> {
    let s = crate::sys::vsock_connect_host(husk_protocol::DNS_PORT)?;
    crate::sys::set_timeouts(&s, TIMEOUT)?;
    Ok(s)
}

/// One UDP query: to the host and back.
fn relay_udp(sock: &UdpSocket, query: &[u8], from: SocketAddr) -> std::io::Result<()> {
    let Some(framed) = frame(query) else {
        return Ok(());
    };
    let mut host = host_stream()?;
    host.write_all(&framed)?;
    let answer = read_framed(&mut host)?;
    sock.send_to(&answer, from)?;
    Ok(())
}

/// Serves `addr`:53 (UDP and TCP) in threads of their own.
pub fn start(addr: Ipv4Addr) {
    let udp = match UdpSocket::bind((addr, 53)) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            crate::log(&format!("dns relay: cannot bind {addr}:53/udp: {e}"));
            return;
        }
    };
    let inflight = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65535];
        loop {
            let (n, from) = match udp.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) => {
                    crate::log(&format!("dns relay: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if inflight.fetch_add(1, Ordering::SeqCst) >= MAX_INFLIGHT {
                inflight.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let query = buf[..n].to_vec();
            let (udp, inflight) = (udp.clone(), inflight.clone());
            std::thread::spawn(move || {
                let _ = relay_udp(&udp, &query, from);
                inflight.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    let tcp = match TcpListener::bind((addr, 53)) {
        Ok(l) => l,
        Err(e) => {
            crate::log(&format!("dns relay: cannot bind {addr}:53/tcp: {e}"));
            return;
        }
    };
    let clients = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for conn in tcp.incoming() {
            let Ok(mut conn) = conn else { continue };
            if clients.fetch_add(1, Ordering::SeqCst) >= MAX_TCP {
                clients.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let clients = clients.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(TIMEOUT));
                // Message by message, so a client cannot make the host
                // hold more than one query of it.
                if let Ok(mut host) = host_stream() {
                    while let Ok(q) = read_framed(&mut conn) {
                        let Some(framed) = frame(&q) else { break };
                        if host.write_all(&framed).is_err() {
                            break;
                        }
                        let Ok(a) = read_framed(&mut host) else { break };
                        let Some(a) = frame(&a) else { break };
                        if conn.write_all(&a).is_err() {
                            break;
                        }
                    }
                }
                clients.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    crate::log(&format!("dns relay on {addr}:53 to the host"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses() {
        assert_eq!(parse("127.0.0.11"), Ok(Ipv4Addr::new(127, 0, 0, 11)));
        assert!(parse("10.0.0.1").is_err());
        assert!(parse("127.0.0.11:53").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn framing_round_trips_and_is_bounded() {
        let f = frame(b"abc").unwrap();
        assert_eq!(f, b"\x00\x03abc");
        assert_eq!(read_framed(&mut &f[..]).unwrap(), b"abc");
        assert!(frame(&vec![0u8; 65536]).is_none());
        // A short message is an error, not a hang or a panic.
        assert!(read_framed(&mut &b"\x00\x05ab"[..]).is_err());
        assert!(read_framed(&mut &b"\x00"[..]).is_err());
    }
}
