//! Length-prefixed frames over blocking streams.
//!
//! A frame is `len: u32` (little-endian) then `len` bytes of postcard. The
//! reader checks `len` against its limit before allocating, so a hostile or
//! confused peer cannot make it allocate more than the limit.

use std::io::{ErrorKind, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{MAX_FRAME_LEN, ProtocolError, Result};

const PREFIX: usize = 4;

/// Encodes `msg` as one complete frame (prefix and payload).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    encode_into(msg, &mut buf, MAX_FRAME_LEN)?;
    Ok(buf)
}

/// Replaces `buf` with the frame for `msg`.
fn encode_into<T: Serialize>(msg: &T, buf: &mut Vec<u8>, max: u32) -> Result<()> {
    buf.clear();
    buf.extend_from_slice(&[0; PREFIX]);
    let mut out = postcard::to_extend(msg, std::mem::take(buf)).map_err(ProtocolError::Encode)?;
    let len = out.len() - PREFIX;
    if len as u64 > u64::from(max) {
        out.clear();
        *buf = out;
        return Err(ProtocolError::FrameTooLarge {
            len: len as u64,
            max,
        });
    }
    out[..PREFIX].copy_from_slice(&(len as u32).to_le_bytes());
    *buf = out;
    Ok(())
}

/// Decodes a frame's payload (without the length prefix). The payload must
/// hold exactly one message.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
    if payload.is_empty() {
        return Err(ProtocolError::EmptyFrame);
    }
    let (msg, rest) = postcard::take_from_bytes(payload).map_err(ProtocolError::Decode)?;
    if !rest.is_empty() {
        return Err(ProtocolError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// Reads frames from a blocking stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    max: u32,
}

impl<R: Read> FrameReader<R> {
    /// A reader accepting frames up to [`MAX_FRAME_LEN`].
    pub fn new(inner: R) -> Self {
        Self::with_max_frame_len(inner, MAX_FRAME_LEN)
    }

    /// A reader accepting frames up to `max` bytes (at most [`MAX_FRAME_LEN`]).
    pub fn with_max_frame_len(inner: R, max: u32) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            max: max.min(MAX_FRAME_LEN),
        }
    }

    /// Reads the next message. `Ok(None)` means the stream ended cleanly
    /// between frames; a stream that ends inside a frame is an error.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        let mut prefix = [0u8; PREFIX];
        let got = read_full(&mut self.inner, &mut prefix)?;
        if got == 0 {
            return Ok(None);
        }
        if got < PREFIX {
            return Err(ProtocolError::Truncated {
                expected: PREFIX,
                got,
            });
        }
        let len = u32::from_le_bytes(prefix);
        if len > self.max {
            return Err(ProtocolError::FrameTooLarge {
                len: u64::from(len),
                max: self.max,
            });
        }
        if len == 0 {
            return Err(ProtocolError::EmptyFrame);
        }
        let len = len as usize;
        self.buf.clear();
        self.buf.resize(len, 0);
        let got = read_full(&mut self.inner, &mut self.buf)?;
        if got < len {
            return Err(ProtocolError::Truncated { expected: len, got });
        }
        decode_payload(&self.buf).map(Some)
    }

    /// The stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The stream, mutably (reading from it directly desynchronises frames).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Gives the stream back.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Reads until `buf` is full or end-of-stream; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtocolError::Io(e)),
        }
    }
    Ok(got)
}

/// Writes frames to a blocking stream. Each frame goes out in one
/// `write_all` and is flushed, so a writer shared behind a mutex never
/// interleaves frames.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
    max: u32,
}

impl<W: Write> FrameWriter<W> {
    /// A writer refusing frames over [`MAX_FRAME_LEN`].
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            max: MAX_FRAME_LEN,
        }
    }

    /// Encodes and sends `msg`. A message too large for one frame is an
    /// error and nothing is written.
    pub fn send<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        encode_into(msg, &mut self.buf, self.max)?;
        self.inner
            .write_all(&self.buf)
            .and_then(|()| self.inner.flush())
            .map_err(ProtocolError::Io)
    }

    /// The stream.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The stream, mutably.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Gives the stream back.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, ExitStatus, Hello, MAX_DATA_CHUNK, Request, RunSpec, TermSize};
    use std::io::Cursor;

    fn all_requests() -> Vec<Request> {
        vec![
            Request::Hello(Hello::new("husk 0.1.0")),
            Request::Run(
                RunSpec::new(["/bin/sh", "-c", "echo hi; exit 3"])
                    .env("PATH", "/bin:/usr/bin")
                    .env("EMPTY", "")
                    .cwd("/work")
                    .user(1000, 1000)
                    .tty(Some(TermSize {
                        rows: 50,
                        cols: 132,
                    })),
            ),
            Request::Run(RunSpec::new(["true"])),
            Request::Run({
                // Every limit and security field, and the largest rlimit.
                let mut s = crate::message::tests::full();
                s.rlimits[0].hard = u64::MAX;
                s
            }),
            Request::Signal { signo: 15 },
            Request::Stdin {
                data: (0..=255).collect(),
            },
            Request::Stdin { data: Vec::new() },
            Request::CloseStdin,
            Request::Resize {
                rows: 1,
                cols: 65535,
            },
            Request::Wait,
        ]
    }

    fn all_events() -> Vec<Event> {
        vec![
            Event::Hello(Hello::new("husk-agent 0.1.0")),
            Event::Started { pid: 42 },
            Event::Stdout {
                data: vec![0xff; MAX_DATA_CHUNK],
            },
            Event::Stderr {
                data: b"oops\n".to_vec(),
            },
            Event::Exited(ExitStatus::Code(3)),
            Event::Exited(ExitStatus::Signal(9)),
            Event::Error {
                message: "no such file: /bin/nope".into(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips_through_one_stream() {
        let mut w = FrameWriter::new(Vec::new());
        for r in all_requests() {
            w.send(&r).unwrap();
        }
        let mut r = FrameReader::new(Cursor::new(w.into_inner()));
        for want in all_requests() {
            assert_eq!(r.recv::<Request>().unwrap(), Some(want));
        }
        assert_eq!(r.recv::<Request>().unwrap(), None);

        let mut w = FrameWriter::new(Vec::new());
        for e in all_events() {
            w.send(&e).unwrap();
        }
        let mut r = FrameReader::new(Cursor::new(w.into_inner()));
        for want in all_events() {
            assert_eq!(r.recv::<Event>().unwrap(), Some(want));
        }
        assert_eq!(r.recv::<Event>().unwrap(), None);
    }

    #[test]
    fn wire_format_is_stable() {
        // Variant indexes and field order are the wire format: this pins
        // them. Changing it needs a PROTOCOL_VERSION bump.
        assert_eq!(
            encode_frame(&Request::Signal { signo: 9 }).unwrap(),
            [2, 0, 0, 0, 2, 18]
        );
        assert_eq!(
            encode_frame(&Event::Stdout {
                data: b"hi".to_vec()
            })
            .unwrap(),
            [4, 0, 0, 0, 2, 2, b'h', b'i']
        );
        assert_eq!(
            encode_frame(&Event::Exited(ExitStatus::Signal(9))).unwrap(),
            [3, 0, 0, 0, 4, 1, 18]
        );
        assert_eq!(encode_frame(&Request::Wait).unwrap(), [1, 0, 0, 0, 6]);
    }

    #[test]
    fn oversized_frames_are_refused_before_allocating() {
        // Announces 4 GiB - 1; the payload is never read.
        let mut input = u32::MAX.to_le_bytes().to_vec();
        input.extend([0u8; 16]);
        let mut r = FrameReader::new(Cursor::new(input));
        match r.recv::<Event>() {
            Err(ProtocolError::FrameTooLarge { len, max }) => {
                assert_eq!(len, u64::from(u32::MAX));
                assert_eq!(max, MAX_FRAME_LEN);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.get_ref().position(), 4);
        assert!(r.buf.capacity() < 1024);

        // Just over a custom limit.
        let frame = encode_frame(&Event::Stdout { data: vec![7; 100] }).unwrap();
        let mut r = FrameReader::with_max_frame_len(Cursor::new(frame.clone()), 50);
        assert!(matches!(
            r.recv::<Event>(),
            Err(ProtocolError::FrameTooLarge { max: 50, .. })
        ));
        let mut r = FrameReader::with_max_frame_len(Cursor::new(frame), 102);
        assert!(r.recv::<Event>().unwrap().is_some());
    }

    #[test]
    fn oversized_messages_are_not_sent() {
        let mut w = FrameWriter::new(Vec::new());
        let big = Event::Stdout {
            data: vec![0; MAX_FRAME_LEN as usize],
        };
        assert!(matches!(
            w.send(&big),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        assert!(w.get_ref().is_empty());
        // The writer still works afterwards.
        w.send(&Request::Wait).unwrap();
        assert_eq!(w.get_ref().len(), 5);
        assert!(encode_frame(&big).is_err());
    }

    #[test]
    fn truncated_frames_are_errors() {
        let frame = encode_frame(&Event::Stderr {
            data: b"hello".to_vec(),
        })
        .unwrap();
        for cut in 1..frame.len() {
            let mut r = FrameReader::new(Cursor::new(frame[..cut].to_vec()));
            match r.recv::<Event>() {
                Err(ProtocolError::Truncated { expected, got }) => {
                    assert!(got < expected, "cut {cut}");
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let frame = |payload: &[u8]| {
            let mut f = (payload.len() as u32).to_le_bytes().to_vec();
            f.extend_from_slice(payload);
            FrameReader::new(Cursor::new(f))
        };
        // Zero-length frame.
        assert!(matches!(
            frame(&[]).recv::<Request>(),
            Err(ProtocolError::EmptyFrame)
        ));
        // Unknown variant.
        assert!(matches!(
            frame(&[200]).recv::<Request>(),
            Err(ProtocolError::Decode(_))
        ));
        // Data length beyond the payload.
        assert!(matches!(
            frame(&[3, 0x80, 0x80, 0x04, 1, 2]).recv::<Request>(),
            Err(ProtocolError::Decode(_))
        ));
        // Overlong varint.
        assert!(matches!(
            frame(&[2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).recv::<Request>(),
            Err(ProtocolError::Decode(_))
        ));
        // Invalid UTF-8 in a String.
        assert!(matches!(
            frame(&[5, 2, 0xc3, 0x28]).recv::<Event>(),
            Err(ProtocolError::Decode(_))
        ));
        // Invalid bool.
        let mut spec = postcard::to_stdvec(&Request::Run(RunSpec::new(["x"]))).unwrap();
        // ..., tty, term_size(None), main, rlimits(0), capabilities(None),
        // no_new_privileges, umask(None), oom_score_adj(None), masked(0),
        // readonly(0), sysctls(0)
        let tty = spec.len() - 11;
        assert_eq!(spec[tty..], [0; 11]);
        spec[tty] = 7;
        assert!(matches!(
            frame(&spec).recv::<Request>(),
            Err(ProtocolError::Decode(_))
        ));
        // A valid message with bytes after it.
        assert!(matches!(
            frame(&[6, 0]).recv::<Request>(),
            Err(ProtocolError::TrailingBytes(1))
        ));
        // A request read as an event: CloseStdin's index is Exited's,
        // which needs a status that is not there.
        let mut r = FrameReader::new(Cursor::new(encode_frame(&Request::CloseStdin).unwrap()));
        assert!(matches!(r.recv::<Event>(), Err(ProtocolError::Decode(_))));
    }

    #[test]
    fn garbage_streams_never_panic() {
        // A cheap deterministic fuzz: random prefixes and payloads.
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let len = (next() % 64) as usize;
            let mut payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Bias towards our variant range so decoding goes deep.
            if let Some(b) = payload.first_mut() {
                *b %= 8;
            }
            let mut f = (len as u32).to_le_bytes().to_vec();
            f.extend(&payload);
            let _ = FrameReader::new(Cursor::new(f.clone())).recv::<Request>();
            let _ = FrameReader::new(Cursor::new(f)).recv::<Event>();
        }
    }

    #[test]
    fn io_errors_surface_and_interrupts_are_retried() {
        struct Flaky {
            data: Cursor<Vec<u8>>,
            calls: u32,
        }
        impl Read for Flaky {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.calls += 1;
                if self.calls % 2 == 1 {
                    return Err(std::io::Error::from(ErrorKind::Interrupted));
                }
                // One byte at a time: exercises the partial-read loop.
                let n = buf.len().min(1);
                self.data.read(&mut buf[..n])
            }
        }
        let mut r = FrameReader::new(Flaky {
            data: Cursor::new(encode_frame(&Event::Started { pid: 7 }).unwrap()),
            calls: 0,
        });
        assert_eq!(r.recv::<Event>().unwrap(), Some(Event::Started { pid: 7 }));

        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from(ErrorKind::ConnectionReset))
            }
        }
        assert!(matches!(
            FrameReader::new(Broken).recv::<Event>(),
            Err(ProtocolError::Io(e)) if e.kind() == ErrorKind::ConnectionReset
        ));
    }
}
