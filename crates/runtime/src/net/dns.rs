//! The host half of the guest's DNS relay (the agent's `husk.dns=`): the
//! monitor listens on the vsock device's socket for host port
//! [`husk_protocol::DNS_PORT`] and asks a resolver the guest cannot reach
//! (Docker's embedded DNS at 127.0.0.11, on the loopback of the network
//! namespace the monitor lives in) each query that comes, as UDP, and
//! sends the answer back framed as DNS over TCP.
//!
//! Guest input is hostile: a message is at most 65,535 bytes (its length
//! field), at most [`MAX_CONNS`] connections are served at once, a
//! connection idle for [`IDLE`] is closed, and each upstream wait is
//! bounded by [`UPSTREAM_TIMEOUT`].

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Connections served at once.
pub const MAX_CONNS: usize = 32;
/// A connection without a query for this long is closed.
pub const IDLE: Duration = Duration::from_secs(30);
/// The wait for each upstream answer.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(4);

/// Why the forwarder could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {0} for the guest's DNS queries")]
pub struct DnsError(PathBuf, #[source] std::io::Error);

/// Serves until dropped.
#[derive(Debug)]
pub struct DnsForwarder {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl DnsForwarder {
    /// Listens on `path` (the vsock device's `<uds>_53`) and forwards to
    /// `upstream` (tried in order).
    pub fn start(path: &Path, upstream: Vec<SocketAddr>) -> Result<DnsForwarder, DnsError> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|e| DnsError(path.to_owned(), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(AtomicUsize::new(0));
        let upstream = Arc::new(upstream);
        {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    if conns.fetch_add(1, Ordering::SeqCst) >= MAX_CONNS {
                        conns.fetch_sub(1, Ordering::SeqCst);
                        log::debug!("dns: too many guest connections; one refused");
                        continue;
                    }
                    let (conns, upstream) = (conns.clone(), upstream.clone());
                    std::thread::spawn(move || {
                        if let Err(e) = serve(conn, &upstream) {
                            log::debug!("dns: guest connection: {e}");
                        }
                        conns.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            });
        }
        Ok(DnsForwarder {
            path: path.to_owned(),
            stop,
        })
    }
}

impl Drop for DnsForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees `stop`.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Answers one guest connection's queries, one at a time.
fn serve(mut conn: UnixStream, upstream: &[SocketAddr]) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IDLE))?;
    conn.set_write_timeout(Some(IDLE))?;
    let mut answer = vec![0u8; 65535];
    loop {
        let mut len = [0u8; 2];
        match conn.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        conn.read_exact(&mut query)?;
        let Some(n) = ask(&query, upstream, &mut answer) else {
            // No answer: closing tells the guest's client at once (it
            // would otherwise wait for its own timeout).
            return Ok(());
        };
        let mut out = Vec::with_capacity(2 + n);
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.extend_from_slice(&answer[..n]);
        conn.write_all(&out)?;
    }
}

/// The first upstream answer with `query`'s id, as UDP.
fn ask(query: &[u8], upstream: &[SocketAddr], answer: &mut [u8]) -> Option<usize> {
    if query.len() < 12 {
        return None;
    }
    for up in upstream {
        let bind: SocketAddr = if up.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(sock) = UdpSocket::bind(bind) else {
            continue;
        };
        if sock.set_read_timeout(Some(UPSTREAM_TIMEOUT)).is_err()
            || sock.connect(up).is_err()
            || sock.send(query).is_err()
        {
            continue;
        }
        // Answers to other ids (a late one) are skipped, within the wait.
        let deadline = std::time::Instant::now() + UPSTREAM_TIMEOUT;
        while std::time::Instant::now() < deadline {
            match sock.recv(answer) {
                Ok(n) if n >= 2 && answer[..2] == query[..2] => return Some(n),
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_framed_queries_to_a_udp_resolver_and_back() {
        // A resolver that answers each query with its bytes reversed after
        // the id.
        let resolver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = resolver.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 512];
            while let Ok((n, from)) = resolver.recv_from(&mut b) {
                let mut a = b[..n].to_vec();
                a[2..].reverse();
                resolver.send_to(&a, from).unwrap();
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock_53");
        let fwd = DnsForwarder::start(&path, vec![addr]).unwrap();
        let mut c = UnixStream::connect(&path).unwrap();
        for q in [
            b"\x12\x34abcdefghij".to_vec(),
            b"\x00\x01zyxwvutsrqpo".to_vec(),
        ] {
            let mut f = (q.len() as u16).to_be_bytes().to_vec();
            f.extend_from_slice(&q);
            c.write_all(&f).unwrap();
            let mut len = [0u8; 2];
            c.read_exact(&mut len).unwrap();
            let mut a = vec![0u8; u16::from_be_bytes(len) as usize];
            c.read_exact(&mut a).unwrap();
            let mut want = q.clone();
            want[2..].reverse();
            assert_eq!(a, want);
        }
        // A runt query ends the connection (no answer, no hang).
        c.write_all(b"\x00\x03abc").unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        drop(fwd);
        assert!(!path.exists());
    }

    #[test]
    fn an_unanswered_query_closes_the_connection() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s_53");
        let _fwd = DnsForwarder::start(&path, vec![silent.local_addr().unwrap()]).unwrap();
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(b"\x00\x0c\x01\x02abcdefghij").unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
}
