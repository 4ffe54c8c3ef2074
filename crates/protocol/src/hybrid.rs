//! The host side of hybrid vsock: reaching a guest vsock port through the
//! VMM's Unix socket.
//!
//! The VMM's vsock device listens on a Unix socket (one per sandbox). A host
//! program connects to it and writes `CONNECT <port>\n`; the device opens a
//! vsock connection to `<port>` in the guest and, once the guest accepts,
//! answers `OK <host port>\n` (the host-side vsock port it picked). If
//! nothing in the guest listens on the port, the device closes the stream
//! without an answer. After the `OK` line the stream carries the
//! connection's bytes both ways.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest `OK <port>\n` answer accepted ("OK 4294967295\n" is 14 bytes).
const MAX_REPLY: usize = 32;

/// Errors reaching a guest port.
#[derive(Debug, thiserror::Error)]
pub enum HybridError {
    /// The Unix socket could not be connected.
    #[error("cannot connect to the vsock socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the handshake failed.
    #[error("vsock handshake I/O failed")]
    Io(#[source] std::io::Error),
    /// The device closed the stream without `OK`: nothing in the guest
    /// accepted a connection on the port.
    #[error("the guest refused the connection to vsock port {port}")]
    Refused {
        /// The guest port.
        port: u32,
    },
    /// The device answered something other than `OK <port>`.
    #[error("unexpected answer from the vsock device: {0:?}")]
    BadReply(String),
    /// No answer in time.
    #[error("no connection to guest vsock port {port} within {waited:?}")]
    Timeout {
        /// The guest port.
        port: u32,
        /// How long we tried.
        waited: Duration,
    },
}

/// Connects once to guest `port` through the device socket `uds`, waiting at
/// most `timeout` for the answer. Returns the stream, positioned after the
/// `OK` line, with no timeouts set.
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, HybridError> {
    let mut stream = UnixStream::connect(uds).map_err(|source| HybridError::Connect {
        path: uds.to_owned(),
        source,
    })?;
    let timeout = timeout.max(Duration::from_millis(1));
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(HybridError::Io)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(HybridError::Io)?;
    // One byte at a time: whatever follows the line is the guest's data and
    // must stay in the socket.
    let mut line = Vec::with_capacity(MAX_REPLY);
    loop {
        let mut b = [0u8];
        match stream.read(&mut b) {
            Ok(0) => return Err(HybridError::Refused { port }),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => {
                line.push(b[0]);
                if line.len() >= MAX_REPLY {
                    return Err(HybridError::BadReply(
                        String::from_utf8_lossy(&line).into_owned(),
                    ));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(HybridError::Timeout {
                    port,
                    waited: timeout,
                });
            }
            // The device resets the stream when the guest refuses.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return Err(HybridError::Refused { port });
            }
            Err(e) => return Err(HybridError::Io(e)),
        }
    }
    let text = String::from_utf8_lossy(&line);
    let ok = text
        .strip_prefix("OK ")
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some();
    if !ok {
        return Err(HybridError::BadReply(text.into_owned()));
    }
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(HybridError::Io)?;
    Ok(stream)
}

/// Like [`connect`], but retries for up to `timeout` while the socket does
/// not exist yet or the guest refuses (the agent is not listening yet).
/// Other errors are returned at once.
pub fn connect_retry(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, HybridError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        let err = match connect(uds, port, left) {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        let retry = match &err {
            HybridError::Refused { .. } => true,
            HybridError::Connect { source, .. } => matches!(
                source.kind(),
                ErrorKind::NotFound | ErrorKind::ConnectionRefused
            ),
            _ => false,
        };
        if !retry {
            return Err(err);
        }
        if start.elapsed() + pause >= timeout {
            return Err(HybridError::Timeout {
                port,
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    use std::thread;

    fn sock_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "husk-proto-{}-{name}-{:?}.sock",
            std::process::id(),
            thread::current().id()
        ))
    }

    /// A fake device that answers each connection with `answer(port)`.
    fn fake_device(
        name: &str,
        conns: usize,
        answer: impl Fn(u32, &mut UnixStream) + Send + 'static,
    ) -> (PathBuf, thread::JoinHandle<Vec<String>>) {
        let path = sock_path(name);
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        let h = thread::spawn(move || {
            let mut lines = Vec::new();
            for _ in 0..conns {
                let (mut s, _) = l.accept().unwrap();
                let mut line = String::new();
                std::io::BufReader::new(s.try_clone().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                let port = line
                    .trim()
                    .strip_prefix("CONNECT ")
                    .unwrap()
                    .parse()
                    .unwrap();
                lines.push(line);
                answer(port, &mut s);
            }
            lines
        });
        (path, h)
    }

    #[test]
    fn connects_and_leaves_the_data_after_ok_in_the_stream() {
        let (path, dev) = fake_device("ok", 1, |port, s| {
            // The OK line and the first data in one write.
            s.write_all(format!("OK {}\nhello", port + 1).as_bytes())
                .unwrap();
        });
        let mut s = connect(&path, 1024, Duration::from_secs(5)).unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(s.read_timeout().unwrap(), None);
        assert_eq!(dev.join().unwrap(), vec!["CONNECT 1024\n".to_string()]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn refusal_bad_replies_and_silence() {
        let (path, dev) = fake_device("bad", 3, |port, s| match port {
            1 => {} // closed without answer
            2 => s.write_all(b"NO\n").unwrap(),
            _ => {
                s.write_all(&[b'O'; 100]).unwrap();
            }
        });
        assert!(matches!(
            connect(&path, 1, Duration::from_secs(5)),
            Err(HybridError::Refused { port: 1 })
        ));
        assert!(matches!(
            connect(&path, 2, Duration::from_secs(5)),
            Err(HybridError::BadReply(r)) if r == "NO"
        ));
        assert!(matches!(
            connect(&path, 3, Duration::from_secs(5)),
            Err(HybridError::BadReply(_))
        ));
        dev.join().unwrap();

        // A device that never answers.
        let path2 = sock_path("silent");
        let _ = std::fs::remove_file(&path2);
        let _l = UnixListener::bind(&path2).unwrap();
        let t = Instant::now();
        assert!(matches!(
            connect(&path2, 9, Duration::from_millis(50)),
            Err(HybridError::Timeout { port: 9, .. })
        ));
        assert!(t.elapsed() < Duration::from_secs(5));
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&path2).unwrap();
    }

    #[test]
    fn retry_waits_for_the_socket_and_the_listener() {
        let path = sock_path("retry");
        let _ = std::fs::remove_file(&path);
        // No socket at all: retries until the timeout.
        assert!(matches!(
            connect_retry(&path, 5, Duration::from_millis(30)),
            Err(HybridError::Timeout { port: 5, .. })
        ));
        // Refuses twice (the agent is not up yet), then accepts.
        let p = path.clone();
        let dev = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            let l = UnixListener::bind(&p).unwrap();
            for i in 0..3 {
                let (mut s, _) = l.accept().unwrap();
                let mut line = String::new();
                std::io::BufReader::new(s.try_clone().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                if i == 2 {
                    s.write_all(b"OK 1073741824\n").unwrap();
                    return s;
                }
            }
            unreachable!()
        });
        let mut s = connect_retry(&path, 5, Duration::from_secs(10)).unwrap();
        let mut peer = dev.join().unwrap();
        peer.write_all(b"x").unwrap();
        let mut b = [0u8];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
        std::fs::remove_file(&path).unwrap();
    }
}
