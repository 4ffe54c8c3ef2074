//! The protocol between husk on the host and the agent inside the guest.
//!
//! # Transport
//!
//! The agent listens on AF_VSOCK port [`AGENT_PORT`] in the guest. The host
//! reaches it through the VMM's hybrid-vsock Unix socket (the Firecracker
//! convention, see [`hybrid`]): it connects to the socket, writes
//! `CONNECT 1024\n`, reads `OK <host port>\n`, and from then on the stream is
//! a byte pipe to the agent. The host therefore never listens on anything:
//! no `<uds>_<port>` listener to create, race for, or clean up, and any host
//! tool that can open the sandbox's socket can talk to its agent. The price is
//! that the host must retry until the agent is listening ([`hybrid::connect_retry`]).
//!
//! # Framing
//!
//! Each message is one frame: a little-endian `u32` payload length followed
//! by the payload, a [postcard]-encoded [`Request`] (host to agent) or
//! [`Event`] (agent to host). Frames larger than [`MAX_FRAME_LEN`] are
//! refused before anything is allocated. postcard was chosen over JSON
//! because stdout/stderr are raw bytes (JSON would need base64 and a third
//! more bytes on a 10 MiB stream), and over bincode because its wire format
//! is specified and stable across 1.x releases and it is compact (varint
//! lengths) without configuration. Debugging is served by the `Debug`
//! implementations of the messages instead.
//!
//! # Conversation
//!
//! One connection runs one process:
//!
//! 1. host sends [`Request::Hello`], agent answers [`Event::Hello`] (see
//!    [`host_handshake`] and [`agent_handshake`]); on a version mismatch the
//!    agent also sends [`Event::Error`] and closes;
//! 2. host sends [`Request::Run`]; agent answers [`Event::Started`] (or
//!    [`Event::Error`]);
//! 3. then, in any order: host sends [`Request::Stdin`], [`Request::CloseStdin`],
//!    [`Request::Signal`], [`Request::Resize`], [`Request::Wait`]; agent sends
//!    [`Event::Stdout`] and [`Event::Stderr`] chunks of at most
//!    [`MAX_DATA_CHUNK`] bytes;
//! 4. agent sends [`Event::Exited`] once the process has exited and all its
//!    output has been sent, then closes the connection.
//!
//! More processes (an `exec`) are more connections. A process that is not
//! the main one joins the main process's PID and mount namespaces while the
//! main process runs, and is killed if its connection closes before it
//! exits. A connection may instead open with [`Request::Top`] or
//! [`Request::Stats`], answered by one [`Event::Top`] or [`Event::Stats`].
//!
//! The codec is blocking and generic over [`std::io::Read`] and
//! [`std::io::Write`], so the agent (a static binary, no async runtime) and
//! the host use the same code.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod frame;
pub mod hybrid;
pub mod message;

pub use frame::{FrameReader, FrameWriter, decode_payload, encode_frame};
pub use message::{
    CAP_MAX, Capabilities, Event, ExitStatus, GuestStats, Hello, MAX_PATH_LEN, MAX_PATHS,
    MAX_RLIMITS, MAX_SYSCTL_NAME_LEN, MAX_SYSCTLS, RLIMIT_NLIMITS, Request, Rlimit, RunSpec,
    TermSize, check_path, sysctl_path, valid_sysctl_name,
};

/// The protocol version this crate speaks. Bumped on any incompatible
/// change to the messages (postcard encodes enum variants by index, so
/// reordering or inserting variants is incompatible; appending is too, for
/// an older peer that receives the new variant; so is a field added to a
/// struct, which postcard encodes as a tuple: 3 added `RunSpec`'s limits,
/// capabilities and the container-wide masked/read-only paths and sysctls).
pub const PROTOCOL_VERSION: u32 = 3;

/// Identifies a husk peer in [`Hello`]: "husk" in ASCII.
pub const MAGIC: u32 = u32::from_be_bytes(*b"husk");

/// The vsock port the agent listens on in the guest.
pub const AGENT_PORT: u32 = 1024;

/// The host's vsock port (guest to host) of the DNS forwarder: DNS
/// messages framed as over TCP (a 2-byte big-endian length before each),
/// which the host sends to the resolver the guest cannot reach itself
/// (an engine's embedded DNS on the network namespace's loopback).
pub const DNS_PORT: u32 = 53;

/// The host's vsock context id (fixed by the vsock specification).
pub const HOST_CID: u64 = 2;

/// The guest's context id husk gives every sandbox (the first id that is
/// not reserved; each sandbox has its own device, so they never clash).
pub const GUEST_CID: u64 = 3;

/// Largest frame payload either side accepts, in bytes.
pub const MAX_FRAME_LEN: u32 = 1 << 20;

/// Largest `data` a sender should put in one [`Request::Stdin`],
/// [`Event::Stdout`] or [`Event::Stderr`]; well below [`MAX_FRAME_LEN`].
pub const MAX_DATA_CHUNK: usize = 64 * 1024;

/// Errors of the codec and the handshake.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Reading or writing the stream failed.
    #[error("protocol stream I/O failed")]
    Io(#[source] std::io::Error),
    /// The peer announced a frame larger than allowed, or we tried to send one.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced or encoded payload length.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// A frame with no payload (no message is empty).
    #[error("empty frame")]
    EmptyFrame,
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes the frame needed (length prefix or payload).
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// The payload is not a valid message.
    #[error("malformed message")]
    Decode(#[source] postcard::Error),
    /// The payload holds a valid message followed by extra bytes.
    #[error("{0} trailing bytes after the message in a frame")]
    TrailingBytes(usize),
    /// A message could not be encoded.
    #[error("cannot encode message")]
    Encode(#[source] postcard::Error),
    /// The peer's hello does not carry husk's magic number.
    #[error("peer is not a husk peer (magic {0:#010x})")]
    BadMagic(u32),
    /// The peers speak different protocol versions.
    #[error("protocol version mismatch: we speak {ours}, the peer speaks {theirs}")]
    VersionMismatch {
        /// [`PROTOCOL_VERSION`].
        ours: u32,
        /// The peer's.
        theirs: u32,
    },
    /// The peer sent a message that does not belong at this point.
    #[error("unexpected message: expected {expected}, got {got}")]
    Unexpected {
        /// What was expected.
        expected: &'static str,
        /// What came, in `Debug` form (truncated).
        got: String,
    },
    /// The peer closed the connection where a message was required.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer reported an error.
    #[error("the peer reported an error: {0}")]
    Remote(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;

fn describe(msg: &impl std::fmt::Debug) -> String {
    let mut s = format!("{msg:?}");
    if s.len() > 120 {
        let mut cut = 120;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn check_hello(h: &Hello) -> Result<()> {
    if h.magic != MAGIC {
        return Err(ProtocolError::BadMagic(h.magic));
    }
    if h.version != PROTOCOL_VERSION {
        return Err(ProtocolError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: h.version,
        });
    }
    Ok(())
}

/// The host's side of the handshake: sends our [`Hello`] (with `software`
/// naming the host program) and returns the agent's, after checking its
/// magic and version.
pub fn host_handshake<R: std::io::Read, W: std::io::Write>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    software: &str,
) -> Result<Hello> {
    writer.send(&Request::Hello(Hello::new(software)))?;
    match reader.recv::<Event>()? {
        Some(Event::Hello(h)) => {
            check_hello(&h)?;
            Ok(h)
        }
        Some(Event::Error { message }) => Err(ProtocolError::Remote(message)),
        Some(other) => Err(ProtocolError::Unexpected {
            expected: "Hello",
            got: describe(&other),
        }),
        None => Err(ProtocolError::Closed),
    }
}

/// The agent's side of the handshake: waits for the host's [`Hello`],
/// answers with ours (always, so the host learns our version), and returns
/// the host's. On a bad magic or version it also sends [`Event::Error`] and
/// returns the error; the caller should then close the connection.
pub fn agent_handshake<R: std::io::Read, W: std::io::Write>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    software: &str,
) -> Result<Hello> {
    let theirs = match reader.recv::<Request>()? {
        Some(Request::Hello(h)) => h,
        Some(other) => {
            let err = ProtocolError::Unexpected {
                expected: "Hello",
                got: describe(&other),
            };
            let _ = writer.send(&Event::Error {
                message: err.to_string(),
            });
            return Err(err);
        }
        None => return Err(ProtocolError::Closed),
    };
    writer.send(&Event::Hello(Hello::new(software)))?;
    if let Err(e) = check_hello(&theirs) {
        let _ = writer.send(&Event::Error {
            message: e.to_string(),
        });
        return Err(e);
    }
    Ok(theirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Runs the host handshake against canned agent output; returns the
    /// result and what the host wrote.
    fn host_against(agent_frames: &[Event]) -> (Result<Hello>, Vec<u8>) {
        let mut input = Vec::new();
        for e in agent_frames {
            input.extend(encode_frame(e).unwrap());
        }
        let mut r = FrameReader::new(Cursor::new(input));
        let mut w = FrameWriter::new(Vec::new());
        let res = host_handshake(&mut r, &mut w, "host-test");
        (res, w.into_inner())
    }

    #[test]
    fn handshake_between_host_and_agent() {
        let (h, a) = std::os::unix::net::UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            let mut r = FrameReader::new(a.try_clone().unwrap());
            let mut w = FrameWriter::new(a);
            agent_handshake(&mut r, &mut w, "agent 0.1")
        });
        let mut r = FrameReader::new(h.try_clone().unwrap());
        let mut w = FrameWriter::new(h);
        let theirs = host_handshake(&mut r, &mut w, "husk 0.1").unwrap();
        assert_eq!(theirs.software, "agent 0.1");
        assert_eq!(theirs.version, PROTOCOL_VERSION);
        let host = agent.join().unwrap().unwrap();
        assert_eq!(host.software, "husk 0.1");
        assert_eq!(host.magic, MAGIC);
    }

    #[test]
    fn host_rejects_wrong_version_and_magic_and_reports_remote_errors() {
        let mut old = Hello::new("agent");
        old.version = PROTOCOL_VERSION + 1;
        let (res, _) = host_against(&[Event::Hello(old)]);
        assert!(matches!(
            res,
            Err(ProtocolError::VersionMismatch { ours: PROTOCOL_VERSION, theirs }) if theirs == PROTOCOL_VERSION + 1
        ));
        let mut alien = Hello::new("agent");
        alien.magic = 0xdead_beef;
        let (res, _) = host_against(&[Event::Hello(alien)]);
        assert!(matches!(res, Err(ProtocolError::BadMagic(0xdead_beef))));
        let (res, _) = host_against(&[Event::Error {
            message: "nope".into(),
        }]);
        assert!(matches!(res, Err(ProtocolError::Remote(m)) if m == "nope"));
        let (res, _) = host_against(&[Event::Started { pid: 1 }]);
        assert!(matches!(
            res,
            Err(ProtocolError::Unexpected {
                expected: "Hello",
                ..
            })
        ));
    }

    #[test]
    fn agent_answers_a_mismatched_host_with_hello_then_error() {
        let mut h = Hello::new("future husk");
        h.version = 99;
        let mut r = FrameReader::new(Cursor::new(encode_frame(&Request::Hello(h)).unwrap()));
        let mut w = FrameWriter::new(Vec::new());
        let res = agent_handshake(&mut r, &mut w, "agent");
        assert!(matches!(
            res,
            Err(ProtocolError::VersionMismatch { theirs: 99, .. })
        ));
        let mut rr = FrameReader::new(Cursor::new(w.into_inner()));
        assert!(
            matches!(rr.recv::<Event>().unwrap(), Some(Event::Hello(h)) if h.version == PROTOCOL_VERSION)
        );
        assert!(
            matches!(rr.recv::<Event>().unwrap(), Some(Event::Error { message }) if message.contains("99"))
        );
        assert!(rr.recv::<Event>().unwrap().is_none());
    }

    #[test]
    fn agent_refuses_a_first_message_other_than_hello() {
        let mut r = FrameReader::new(Cursor::new(encode_frame(&Request::Wait).unwrap()));
        let mut w = FrameWriter::new(Vec::new());
        assert!(matches!(
            agent_handshake(&mut r, &mut w, "agent"),
            Err(ProtocolError::Unexpected { .. })
        ));
        let mut rr = FrameReader::new(Cursor::new(w.into_inner()));
        assert!(matches!(
            rr.recv::<Event>().unwrap(),
            Some(Event::Error { .. })
        ));
    }

    #[test]
    fn describe_truncates_on_a_char_boundary() {
        let long = "é".repeat(200);
        let d = describe(&long);
        assert!(d.len() <= 124);
        assert!(d.ends_with('…'));
    }
}
