//! The control socket of a container's monitor: `control.sock` in the
//! container's directory (0700, so only husk's user reaches it).
//!
//! A connection opens with one [`CtlRequest`]. Most get one [`CtlEvent`]
//! answer ([`call`]). [`CtlRequest::Attach`] and [`CtlRequest::Exec`] open a
//! session ([`Session`]): the monitor streams the process's output
//! ([`CtlEvent::Stdout`], [`CtlEvent::Stderr`]) and finally
//! [`CtlEvent::Exited`]; the client may send [`CtlRequest::Stdin`],
//! [`CtlRequest::CloseStdin`], [`CtlRequest::Resize`] and
//! [`CtlRequest::Signal`], which apply to the session's process. Frames are
//! husk-protocol's (length-prefixed postcard), bounded on both sides.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use husk_protocol::{FrameReader, FrameWriter, GuestStats, RunSpec};
use serde::{Deserialize, Serialize};

/// The socket's file name in the container's directory.
pub const SOCKET: &str = "control.sock";

/// Errors talking to a monitor.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The monitor's socket could not be reached (it is not running).
    #[error("cannot reach the container's monitor at {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The conversation broke.
    #[error("talking to the container's monitor failed")]
    Protocol(#[source] husk_protocol::ProtocolError),
    /// The monitor closed the connection without an answer.
    #[error("the container's monitor closed the connection")]
    Closed,
}

/// Client to monitor.
// One request per connection, handled at once: boxing `Exec`'s spec would
// save nothing worth the indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtlRequest {
    /// Is the monitor there? Answered [`CtlEvent::Ok`].
    Ping,
    /// Attach to the main process: its output from now on, and stdin if
    /// `stdin` (and the container was created with it open).
    Attach {
        /// Send stdin.
        stdin: bool,
    },
    /// Run another process in the container; a session unless `detach`.
    Exec {
        /// What to run (not the main process).
        spec: RunSpec,
        /// Run it in the background; answered [`CtlEvent::Ok`] once it started.
        detach: bool,
    },
    /// Send a signal: to the session's process, or (as the first request)
    /// to the main process.
    Signal {
        /// Linux signal number.
        signo: i32,
    },
    /// Stop: `signo` to the main process, SIGKILL after `timeout_s`;
    /// answered once the container has stopped. Also ends restarts.
    Stop {
        /// The stop signal.
        signo: i32,
        /// Seconds before SIGKILL.
        timeout_s: u64,
    },
    /// Stop the VM's vCPUs.
    Pause,
    /// Run them again.
    Resume,
    /// Resource use ([`CtlEvent::Stats`]).
    Stats,
    /// The container's processes ([`CtlEvent::Top`]).
    Top,
    /// Answered [`CtlEvent::Exited`] when the container stops (and no
    /// restart follows).
    Wait,
    /// The session's terminal (or the main process's) changed size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Bytes for the session process's stdin.
    Stdin {
        /// The bytes (at most 64 KiB).
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Close the session process's stdin.
    CloseStdin,
    /// Run the main process of a container created from an OCI bundle
    /// (`husk oci start`); its monitor booted the VM at `create` and waits
    /// for this. Answered [`CtlEvent::Ok`].
    Start,
}

/// Resource use of a running container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MonitorStats {
    /// Resident memory of the monitor process, which holds the VM's RAM and
    /// the VMM, in bytes.
    pub host_rss: u64,
    /// CPU time of the monitor (vCPUs, devices), nanoseconds.
    pub host_cpu_ns: u64,
    /// The guest's RAM size, bytes.
    pub mem_limit: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// The guest's own view; `None` while paused or booting.
    pub guest: Option<GuestStats>,
}

/// Monitor to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtlEvent {
    /// Done.
    Ok,
    /// It failed; `code` is the exit code a CLI should use for an exec that
    /// could not start (126, 127), if it is that.
    Error {
        /// For people.
        message: String,
        /// Docker's exit code for it, if it has one.
        code: Option<i32>,
    },
    /// The session's process started.
    Started,
    /// Output.
    Stdout {
        /// Bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Error output.
    Stderr {
        /// Bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The process (or the container) ended with this code (128+N for a
    /// signal).
    Exited {
        /// The code.
        code: i32,
    },
    /// The answer to [`CtlRequest::Stats`].
    Stats(MonitorStats),
    /// The answer to [`CtlRequest::Top`].
    Top {
        /// Column titles.
        titles: Vec<String>,
        /// Rows.
        processes: Vec<Vec<String>>,
    },
}

/// Largest frame on the control socket.
const MAX_FRAME: u32 = 1 << 20;

/// A path for `name` in `dir` that fits a Unix socket address (108 bytes):
/// the path itself, or one through `/proc/self/fd` of an open handle of
/// `dir`, which the caller keeps while it binds or connects.
pub fn socket_path(dir: &Path, name: &str) -> std::io::Result<(PathBuf, Option<std::fs::File>)> {
    let direct = dir.join(name);
    if direct.as_os_str().len() < 100 {
        return Ok((direct, None));
    }
    let handle = std::fs::File::open(dir)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&handle);
    Ok((
        PathBuf::from(format!("/proc/self/fd/{fd}/{name}")),
        Some(handle),
    ))
}

/// Connects to the monitor of the container whose directory is `dir`.
pub fn connect(dir: &Path) -> Result<UnixStream, ControlError> {
    let err = |source| ControlError::Connect {
        path: dir.join(SOCKET),
        source,
    };
    let (path, _handle) = socket_path(dir, SOCKET).map_err(err)?;
    UnixStream::connect(&path).map_err(err)
}

/// One request, one answer.
pub fn call(dir: &Path, req: &CtlRequest) -> Result<CtlEvent, ControlError> {
    let mut s = Session::open(dir, req)?;
    s.recv()?.ok_or(ControlError::Closed)
}

/// A connection to a monitor on which a session runs.
#[derive(Debug)]
pub struct Session {
    reader: FrameReader<UnixStream>,
    writer: SessionWriter,
}

/// The sending half of a [`Session`], for other threads.
#[derive(Debug, Clone)]
pub struct SessionWriter {
    inner: Arc<Mutex<FrameWriter<UnixStream>>>,
    stream: Arc<UnixStream>,
}

impl SessionWriter {
    /// Sends a request on the session.
    pub fn send(&self, req: &CtlRequest) -> Result<(), ControlError> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(req)
            .map_err(ControlError::Protocol)
    }

    /// Ends the session (the monitor sees the connection close).
    pub fn close(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl Session {
    /// Connects and sends the first request.
    pub fn open(dir: &Path, first: &CtlRequest) -> Result<Session, ControlError> {
        let stream = connect(dir)?;
        let clone = |s: &UnixStream| {
            s.try_clone()
                .map_err(|e| ControlError::Protocol(husk_protocol::ProtocolError::Io(e)))
        };
        let reader = FrameReader::with_max_frame_len(clone(&stream)?, MAX_FRAME);
        let writer = SessionWriter {
            inner: Arc::new(Mutex::new(FrameWriter::new(clone(&stream)?))),
            stream: Arc::new(stream),
        };
        writer.send(first)?;
        Ok(Session { reader, writer })
    }

    /// The next event; `None` when the monitor closed the connection.
    pub fn recv(&mut self) -> Result<Option<CtlEvent>, ControlError> {
        self.reader.recv().map_err(ControlError::Protocol)
    }

    /// Waits at most `timeout` for the next event.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) {
        let _ = self.reader.get_ref().set_read_timeout(timeout);
    }

    /// The sending half.
    pub fn writer(&self) -> SessionWriter {
        self.writer.clone()
    }
}

/// The monitor's side of one connection.
#[derive(Debug)]
pub struct Peer {
    /// Reads the client's requests.
    pub reader: FrameReader<UnixStream>,
    /// Sends events (shared by the threads of a session).
    pub writer: PeerWriter,
}

/// Sends events to a client.
#[derive(Debug, Clone)]
pub struct PeerWriter {
    inner: Arc<Mutex<FrameWriter<UnixStream>>>,
    stream: Arc<UnixStream>,
}

impl PeerWriter {
    /// Sends one event; false if the client is gone.
    pub fn send(&self, ev: &CtlEvent) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(ev)
            .is_ok()
    }

    /// Closes the connection.
    pub fn close(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl Peer {
    /// Wraps an accepted connection.
    pub fn new(stream: UnixStream) -> std::io::Result<Peer> {
        // A client that stops reading must not block the monitor forever.
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(Peer {
            reader: FrameReader::with_max_frame_len(stream.try_clone()?, MAX_FRAME),
            writer: PeerWriter {
                inner: Arc::new(Mutex::new(FrameWriter::new(stream.try_clone()?))),
                stream: Arc::new(stream),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_directories_get_short_socket_paths() {
        let root = tempfile::tempdir().unwrap();
        let long = root.path().join("d".repeat(120));
        std::fs::create_dir(&long).unwrap();
        let (path, handle) = socket_path(&long, SOCKET).unwrap();
        assert!(handle.is_some() && path.as_os_str().len() < 40, "{path:?}");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(long.join(SOCKET).exists());
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut peer = Peer::new(s).unwrap();
            let req: CtlRequest = peer.reader.recv().unwrap().unwrap();
            assert_eq!(req, CtlRequest::Ping);
            peer.writer.send(&CtlEvent::Ok);
        });
        assert_eq!(call(&long, &CtlRequest::Ping).unwrap(), CtlEvent::Ok);
        server.join().unwrap();
        let (short, none) = socket_path(root.path(), SOCKET).unwrap();
        assert!(none.is_none() && short == root.path().join(SOCKET));
    }

    #[test]
    fn oversized_frames_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut peer = Peer::new(a).unwrap();
        let mut raw = b;
        std::io::Write::write_all(&mut raw, &(MAX_FRAME + 1).to_le_bytes()).unwrap();
        assert!(peer.reader.recv::<CtlRequest>().is_err());
    }
}
