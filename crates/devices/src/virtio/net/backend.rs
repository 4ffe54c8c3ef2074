//! The host side of the device: a stream socket with passt's framing or a
//! TAP, behind one interface for the worker. Every buffer here has a fixed
//! size; nothing grows with what the peer or the guest sends.

use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
};

use super::tap;
use super::{MAX_FRAME, MIN_FRAME, NetError, STREAM_RX_BUF, STREAM_TX_BACKLOG, VNET_HDR_LEN};

/// Bytes of the length prefix of the stream framing.
const PREFIX_LEN: usize = 4;

/// The part of `virtio_net_hdr_v1` before `num_buffers`.
pub(super) const HDR_NO_NUMBUF: usize = 10;

/// Reads per [`Backend::poll_rx`] call that bring no whole frame before it
/// gives the worker a turn.
const READS_PER_POLL: usize = 8;

/// What the driver accepted, as the data path needs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Offloads {
    /// MRG_RXBUF: a frame may span several RX chains.
    pub mrg_rxbuf: bool,
    /// GUEST_CSUM: RX frames may carry partial checksums.
    pub guest_csum: bool,
    /// GUEST_TSO4/6: RX frames may be TCP segmentation super-frames.
    pub guest_tso4: bool,
    /// See `guest_tso4`.
    pub guest_tso6: bool,
    /// CSUM: TX frames may carry partial checksums.
    pub host_csum: bool,
    /// HOST_TSO4/6: TX frames may be TCP segmentation super-frames.
    pub host_tso4: bool,
    /// See `host_tso4`.
    pub host_tso6: bool,
}

impl Offloads {
    /// From the features the driver accepted.
    pub fn from_acked(acked: u64) -> Self {
        let has = |bit: u32| acked & (1 << bit) != 0;
        Self {
            mrg_rxbuf: has(VIRTIO_NET_F_MRG_RXBUF),
            guest_csum: has(VIRTIO_NET_F_GUEST_CSUM),
            guest_tso4: has(VIRTIO_NET_F_GUEST_TSO4),
            guest_tso6: has(VIRTIO_NET_F_GUEST_TSO6),
            host_csum: has(VIRTIO_NET_F_CSUM),
            host_tso4: has(VIRTIO_NET_F_HOST_TSO4),
            host_tso6: has(VIRTIO_NET_F_HOST_TSO6),
        }
    }

    /// The TAP offloads (`TUN_F_*`) for these features: what the TAP may
    /// hand the guest.
    pub fn tun_flags(&self) -> libc::c_uint {
        let mut f = 0;
        if self.guest_csum {
            f |= libc::TUN_F_CSUM;
            // TSO without checksum offload is meaningless (and refused).
            if self.guest_tso4 {
                f |= libc::TUN_F_TSO4;
            }
            if self.guest_tso6 {
                f |= libc::TUN_F_TSO6;
            }
        }
        f
    }
}

/// What [`Backend::poll_rx`] found.
#[derive(Debug)]
pub(super) enum RxPoll<'a> {
    /// A frame for the guest, with the header fields before `num_buffers`.
    Frame {
        /// flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
        hdr: [u8; HDR_NO_NUMBUF],
        /// The Ethernet frame.
        frame: &'a [u8],
    },
    /// A frame was dropped (already consumed).
    Dropped(&'static str),
    /// Nothing now; the fd is not readable.
    Empty,
    /// Bytes came but no whole frame yet; call again later.
    Again,
    /// The backend is gone (peer closed, error, protocol violation).
    Closed(String),
}

/// What [`Backend::send`] did with a guest frame.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Sent {
    /// Passed on (or queued for the stream peer).
    Ok,
    /// Refused; the frame is dropped.
    Dropped(String),
}

/// The host side of the device.
#[derive(Debug)]
pub(super) enum Backend {
    /// passt's framing over a Unix stream.
    Stream(StreamBackend),
    /// A TAP with a vnet header.
    Tap(TapBackend),
}

/// A Unix stream carrying length-prefixed frames.
#[derive(Debug)]
pub(super) struct StreamBackend {
    sock: UnixStream,
    rx: StreamRx,
    tx: TxBacklog,
    alive: bool,
}

/// A TAP fd.
#[derive(Debug)]
pub(super) struct TapBackend {
    file: File,
    /// One frame read from the TAP and not yet given to the guest: vnet
    /// header, then the frame.
    buf: Box<[u8]>,
    pending: Option<usize>,
    offloads: Offloads,
    alive: bool,
}

impl Backend {
    /// A stream backend on `fd`, which must be an `AF_UNIX`
    /// `SOCK_STREAM` socket; made non-blocking.
    pub fn stream(fd: OwnedFd) -> Result<Self, NetError> {
        let sock = socket2::SockRef::from(&fd);
        let ty = sock.r#type().map_err(|source| NetError::Backend {
            what: "socket type",
            source,
        })?;
        let unix = sock
            .local_addr()
            .map(|a| a.domain() == socket2::Domain::UNIX)
            .map_err(|source| NetError::Backend {
                what: "socket address",
                source,
            })?;
        if ty != socket2::Type::STREAM || !unix {
            return Err(NetError::NotUnixStream);
        }
        sock.set_nonblocking(true)
            .map_err(|source| NetError::Backend {
                what: "O_NONBLOCK",
                source,
            })?;
        Ok(Self::Stream(StreamBackend {
            sock: UnixStream::from(fd),
            rx: StreamRx::new(),
            tx: TxBacklog::new(),
            alive: true,
        }))
    }

    /// A TAP backend on `fd` (see [`tap::check_tap`]); made non-blocking.
    pub fn tap(fd: OwnedFd) -> Result<Self, NetError> {
        match tap::check_tap(fd.as_fd()) {
            Ok(true) => {}
            Ok(false) => return Err(NetError::NotVnetTap),
            Err(source) => {
                return Err(NetError::Backend {
                    what: "TAP flags",
                    source,
                });
            }
        }
        tap::set_nonblocking(fd.as_fd()).map_err(|source| NetError::Backend {
            what: "O_NONBLOCK",
            source,
        })?;
        Ok(Self::Tap(TapBackend {
            file: File::from(fd),
            buf: vec![0u8; VNET_HDR_LEN + MAX_FRAME].into_boxed_slice(),
            pending: None,
            offloads: Offloads::default(),
            alive: true,
        }))
    }

    /// The fd to poll.
    pub fn fd(&self) -> RawFd {
        match self {
            Self::Stream(s) => s.sock.as_raw_fd(),
            Self::Tap(t) => t.file.as_raw_fd(),
        }
    }

    /// Whether the backend still works.
    pub fn alive(&self) -> bool {
        match self {
            Self::Stream(s) => s.alive,
            Self::Tap(t) => t.alive,
        }
    }

    /// Stops using the backend for good: a stream is shut down (so the peer
    /// sees the end), buffered frames are dropped.
    pub fn kill(&mut self) {
        match self {
            Self::Stream(s) => {
                if s.alive
                    && let Err(e) = s.sock.shutdown(std::net::Shutdown::Both)
                {
                    log::debug!("net: shutdown of the stream backend: {e}");
                }
                s.alive = false;
                s.rx.start = 0;
                s.rx.end = 0;
                s.tx.clear();
            }
            Self::Tap(t) => {
                t.alive = false;
                t.pending = None;
            }
        }
    }

    /// Applies what the driver accepted (for a TAP, its offloads).
    pub fn set_offloads(&mut self, o: &Offloads) -> io::Result<()> {
        match self {
            Self::Stream(_) => Ok(()),
            Self::Tap(t) => {
                tap::set_offload(t.file.as_fd(), o.tun_flags())?;
                t.offloads = *o;
                Ok(())
            }
        }
    }

    /// The next frame for the guest, reading the fd if need be. The frame
    /// stays until [`consume_rx`](Self::consume_rx).
    pub fn poll_rx(&mut self) -> RxPoll<'_> {
        match self {
            Self::Stream(s) => s.poll_rx(),
            Self::Tap(t) => t.poll_rx(),
        }
    }

    /// The frame [`poll_rx`](Self::poll_rx) returned is done with.
    pub fn consume_rx(&mut self) {
        match self {
            Self::Stream(s) => s.rx.consume_frame(),
            Self::Tap(t) => t.pending = None,
        }
    }

    /// Whether a frame of the largest size can be taken from the guest
    /// now (a stream's backlog has room for it).
    pub fn tx_room(&self) -> bool {
        match self {
            Self::Stream(s) => s.tx.free() >= PREFIX_LEN + MAX_FRAME,
            Self::Tap(_) => true,
        }
    }

    /// Passes `pkt` (vnet header and frame, lengths checked) on. A stream
    /// only queues it: call [`flush`](Self::flush).
    pub fn send(&mut self, pkt: &[u8]) -> Sent {
        match self {
            Self::Stream(s) => {
                let frame = &pkt[VNET_HDR_LEN..];
                if !s.tx.push_frame(frame) {
                    return Sent::Dropped("no room in the TX backlog".into());
                }
                Sent::Ok
            }
            Self::Tap(t) => t.send(pkt),
        }
    }

    /// Writes what a stream has queued, as far as the socket takes it.
    /// `Err` when the backend is gone.
    pub fn flush(&mut self) -> Result<(), String> {
        match self {
            Self::Stream(s) if s.alive => s.tx.flush(&s.sock),
            _ => Ok(()),
        }
    }

    /// Whether queued bytes wait for the fd to become writable.
    pub fn wants_write(&self) -> bool {
        match self {
            Self::Stream(s) => s.alive && !s.tx.is_empty(),
            Self::Tap(_) => false,
        }
    }

    /// Bytes waiting in a stream's TX backlog.
    #[cfg(test)]
    pub fn tx_backlog(&self) -> usize {
        match self {
            Self::Stream(s) => s.tx.len(),
            Self::Tap(_) => 0,
        }
    }
}

impl StreamBackend {
    fn poll_rx(&mut self) -> RxPoll<'_> {
        if !self.alive {
            return RxPoll::Empty;
        }
        for _ in 0..READS_PER_POLL {
            match self.rx.peek() {
                Peek::Frame => break,
                Peek::Short(len) => {
                    self.rx.consume_frame();
                    return RxPoll::Dropped(if len == 0 {
                        "empty frame from the stream peer"
                    } else {
                        "frame shorter than an Ethernet header from the stream peer"
                    });
                }
                Peek::Oversize(len) => {
                    return RxPoll::Closed(format!(
                        "the stream peer announced a {len}-byte frame (at most {MAX_FRAME}): protocol error"
                    ));
                }
                Peek::Partial => match self.rx.fill(&self.sock) {
                    Ok(0) => return RxPoll::Closed("the stream peer closed the connection".into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return RxPoll::Empty,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return RxPoll::Closed(format!("cannot read the stream: {e}")),
                },
            }
        }
        match self.rx.frame() {
            Some(frame) => RxPoll::Frame {
                hdr: [0; HDR_NO_NUMBUF],
                frame,
            },
            None => RxPoll::Again,
        }
    }
}

impl TapBackend {
    fn poll_rx(&mut self) -> RxPoll<'_> {
        if !self.alive {
            return RxPoll::Empty;
        }
        if self.pending.is_none() {
            match (&self.file).read(&mut self.buf) {
                Ok(n) if n < VNET_HDR_LEN + MIN_FRAME => {
                    return RxPoll::Dropped("short frame from the TAP");
                }
                Ok(n) => self.pending = Some(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return RxPoll::Empty,
                Err(e) if e.kind() == ErrorKind::Interrupted => return RxPoll::Again,
                Err(e) => return RxPoll::Closed(format!("cannot read the TAP: {e}")),
            }
        }
        let Some(n) = self.pending else {
            return RxPoll::Empty;
        };
        let mut hdr = [0u8; HDR_NO_NUMBUF];
        hdr.copy_from_slice(&self.buf[..HDR_NO_NUMBUF]);
        // The TAP hands over only the offloads TUNSETOFFLOAD allowed, but
        // check: the driver must never see a header it did not negotiate.
        let gso = hdr[1] as u32;
        let gso_ok = match gso {
            VIRTIO_NET_HDR_GSO_NONE => true,
            VIRTIO_NET_HDR_GSO_TCPV4 => self.offloads.guest_tso4,
            VIRTIO_NET_HDR_GSO_TCPV6 => self.offloads.guest_tso6,
            _ => false,
        };
        if !gso_ok {
            self.pending = None;
            return RxPoll::Dropped("TAP frame with a segmentation offload the guest lacks");
        }
        if !self.offloads.guest_csum {
            // Without GUEST_CSUM the flags must be 0 (virtio 1.2, 5.1.6.4.1);
            // the TAP checksummed the frame in full.
            hdr[0] = 0;
        }
        RxPoll::Frame {
            hdr,
            frame: &self.buf[VNET_HDR_LEN..n],
        }
    }

    fn send(&mut self, pkt: &[u8]) -> Sent {
        if !self.alive {
            return Sent::Dropped("the TAP is gone".into());
        }
        let flags = u32::from(pkt[0]);
        let gso = u32::from(pkt[1]);
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && !self.offloads.host_csum {
            return Sent::Dropped("partial checksum without VIRTIO_NET_F_CSUM".into());
        }
        let gso_ok = match gso {
            VIRTIO_NET_HDR_GSO_NONE => true,
            VIRTIO_NET_HDR_GSO_TCPV4 => self.offloads.host_tso4,
            VIRTIO_NET_HDR_GSO_TCPV6 => self.offloads.host_tso6,
            _ => false,
        };
        if !gso_ok {
            return Sent::Dropped(format!("segmentation type {gso:#x} not negotiated"));
        }
        // One write is one frame; the TAP ignores num_buffers.
        match (&self.file).write(pkt) {
            Ok(n) if n == pkt.len() => Sent::Ok,
            Ok(n) => Sent::Dropped(format!("the TAP took {n} of {} bytes", pkt.len())),
            Err(e) => Sent::Dropped(format!("the TAP refused a frame: {e}")),
        }
    }
}

/// What is at the head of a stream's receive buffer.
#[derive(Debug, PartialEq, Eq)]
enum Peek {
    /// A whole frame of acceptable length.
    Frame,
    /// A frame too short to be Ethernet (drop it, keep the stream).
    Short(usize),
    /// A length over [`MAX_FRAME`]: the stream is broken.
    Oversize(u32),
    /// Not a whole frame yet.
    Partial,
}

/// The receive side of the stream framing: a fixed buffer of
/// [`STREAM_RX_BUF`] bytes holding `[start, end)` unread.
#[derive(Debug)]
struct StreamRx {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl StreamRx {
    fn new() -> Self {
        Self {
            buf: vec![0u8; STREAM_RX_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// The announced length of the head frame, if its prefix is here.
    fn head_len(&self) -> Option<u32> {
        let p = self.buf.get(self.start..self.start + PREFIX_LEN)?;
        if self.end - self.start < PREFIX_LEN {
            return None;
        }
        Some(u32::from_be_bytes([p[0], p[1], p[2], p[3]]))
    }

    fn peek(&self) -> Peek {
        let Some(len) = self.head_len() else {
            return Peek::Partial;
        };
        if len as usize > MAX_FRAME {
            return Peek::Oversize(len);
        }
        if self.end - self.start < PREFIX_LEN + len as usize {
            return Peek::Partial;
        }
        if (len as usize) < MIN_FRAME {
            return Peek::Short(len as usize);
        }
        Peek::Frame
    }

    /// The head frame, if whole.
    fn frame(&self) -> Option<&[u8]> {
        match self.peek() {
            Peek::Frame => {
                let len = self.head_len()? as usize;
                let at = self.start + PREFIX_LEN;
                self.buf.get(at..at + len)
            }
            _ => None,
        }
    }

    /// Drops the head frame (whole, or short).
    fn consume_frame(&mut self) {
        if let Some(len) = self.head_len() {
            let n = PREFIX_LEN + len as usize;
            if self.end - self.start >= n {
                self.start += n;
            }
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads what the socket has into the free space (called only when the
    /// head frame is incomplete, so moving it to the front always leaves
    /// room for a whole one).
    fn fill(&mut self, mut sock: &UnixStream) -> io::Result<usize> {
        if self.start > 0 && self.buf.len() - self.end < PREFIX_LEN + MAX_FRAME {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let free = &mut self.buf[self.end..];
        if free.is_empty() {
            // Unreachable by the argument above; never spin on it.
            return Err(io::Error::other("stream receive buffer full"));
        }
        let n = sock.read(free)?;
        self.end += n;
        Ok(n)
    }
}

/// Frames (with their length prefixes) waiting for a slow stream peer:
/// at most [`STREAM_TX_BACKLOG`] bytes, `[head, buf.len())` unsent.
#[derive(Debug)]
struct TxBacklog {
    buf: Vec<u8>,
    head: usize,
}

impl TxBacklog {
    fn new() -> Self {
        Self {
            buf: Vec::with_capacity(STREAM_TX_BACKLOG),
            head: 0,
        }
    }

    fn len(&self) -> usize {
        self.buf.len() - self.head
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn free(&self) -> usize {
        STREAM_TX_BACKLOG - self.len()
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.head = 0;
    }

    /// Queues `frame` with its prefix; false if it does not fit.
    fn push_frame(&mut self, frame: &[u8]) -> bool {
        if frame.len() > MAX_FRAME || self.free() < PREFIX_LEN + frame.len() {
            return false;
        }
        if self.head > 0 && self.buf.len() + PREFIX_LEN + frame.len() > STREAM_TX_BACKLOG {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        self.buf
            .extend_from_slice(&(frame.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(frame);
        true
    }

    /// Sends as much as the socket takes without blocking.
    fn flush(&mut self, sock: &UnixStream) -> Result<(), String> {
        let s = socket2::SockRef::from(sock);
        while self.head < self.buf.len() {
            match s.send_with_flags(
                &self.buf[self.head..],
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            ) {
                Ok(0) => return Err("the stream peer takes no more bytes".into()),
                Ok(n) => self.head += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("cannot write the stream: {e}")),
            }
        }
        if self.head == self.buf.len() {
            self.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in frames {
            v.extend_from_slice(&(f.len() as u32).to_be_bytes());
            v.extend_from_slice(f);
        }
        v
    }

    #[test]
    fn stream_rx_parses_frames_split_anywhere() {
        let a = [1u8; 60];
        let b = [2u8; 1500];
        let wire = framed(&[&a, &b]);
        let (mut peer, ours) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut rx = StreamRx::new();
        // One byte at a time: never a frame before its last byte.
        for (i, byte) in wire.iter().enumerate() {
            peer.write_all(&[*byte]).unwrap();
            assert_eq!(rx.fill(&ours).unwrap(), 1);
            let whole_a = i + 1 == 4 + a.len();
            if i + 1 < 4 + a.len() {
                assert_eq!(rx.peek(), Peek::Partial, "byte {i}");
            } else if whole_a {
                assert_eq!(rx.frame().unwrap(), &a[..]);
                rx.consume_frame();
            }
        }
        assert_eq!(rx.frame().unwrap(), &b[..]);
        rx.consume_frame();
        assert_eq!((rx.start, rx.end), (0, 0));
        assert!(matches!(rx.fill(&ours), Err(e) if e.kind() == ErrorKind::WouldBlock));
    }

    #[test]
    fn stream_rx_compacts_and_always_has_room_for_a_frame() {
        let big = vec![7u8; MAX_FRAME];
        let (mut peer, ours) = UnixStream::pair().unwrap();
        let mut rx = StreamRx::new();
        // Fill so the head sits near the end, then a max frame must still fit.
        rx.start = STREAM_RX_BUF - 10;
        rx.end = STREAM_RX_BUF - 10;
        let wire = framed(&[&big]);
        let writer = std::thread::spawn(move || peer.write_all(&wire).unwrap());
        while rx.frame().is_none() {
            rx.fill(&ours).unwrap();
        }
        writer.join().unwrap();
        assert_eq!(rx.frame().unwrap().len(), MAX_FRAME);
    }

    #[test]
    fn stream_rx_length_checks() {
        let mut rx = StreamRx::new();
        rx.buf[..4].copy_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes());
        rx.end = 4;
        assert_eq!(rx.peek(), Peek::Oversize(MAX_FRAME as u32 + 1));
        rx.buf[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(rx.peek(), Peek::Oversize(u32::MAX));
        rx.buf[..4].copy_from_slice(&13u32.to_be_bytes());
        assert_eq!(rx.peek(), Peek::Partial);
        rx.end = 4 + 13;
        assert_eq!(rx.peek(), Peek::Short(13));
        rx.consume_frame();
        assert_eq!((rx.start, rx.end), (0, 0));
    }

    #[test]
    fn tx_backlog_is_bounded_and_keeps_order() {
        let (peer, ours) = UnixStream::pair().unwrap();
        let mut tx = TxBacklog::new();
        let f = vec![9u8; MAX_FRAME];
        let mut n = 0;
        while tx.push_frame(&f) {
            n += 1;
        }
        assert_eq!(n, STREAM_TX_BACKLOG / (MAX_FRAME + 4));
        assert!(tx.len() <= STREAM_TX_BACKLOG);
        assert!(tx.buf.capacity() <= STREAM_TX_BACKLOG);
        assert!(!tx.push_frame(&vec![0u8; MAX_FRAME + 1]));
        // The peer reads nothing: flushing stops without blocking, and the
        // backlog stays full once the socket's buffer is.
        for _ in 0..64 {
            tx.flush(&ours).unwrap();
            while tx.push_frame(&f) {
                n += 1;
            }
        }
        assert!(tx.free() < MAX_FRAME + 4);
        assert!(tx.buf.capacity() <= STREAM_TX_BACKLOG);
        // Room frees up as the peer reads; order and framing are kept.
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut p = &peer;
            let mut b = vec![0u8; 65536];
            while got.len() < n * (MAX_FRAME + 4) {
                let k = p.read(&mut b).unwrap();
                got.extend_from_slice(&b[..k]);
            }
            got
        });
        while !tx.is_empty() {
            tx.flush(&ours).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let got = reader.join().unwrap();
        assert_eq!(got.len(), n * (MAX_FRAME + 4));
        for chunk in got.chunks(MAX_FRAME + 4) {
            assert_eq!(&chunk[..4], &(MAX_FRAME as u32).to_be_bytes());
            assert!(chunk[4..].iter().all(|&b| b == 9));
        }
    }

    #[test]
    fn tun_flags_follow_the_acked_guest_features() {
        let o = Offloads::from_acked(0);
        assert_eq!(o.tun_flags(), 0);
        let o = Offloads::from_acked(1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4);
        assert_eq!(o.tun_flags(), libc::TUN_F_CSUM | libc::TUN_F_TSO4);
        // Host-side (TX) offloads do not change what the TAP may send.
        let o = Offloads::from_acked(
            1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_HOST_TSO4 | 1 << VIRTIO_NET_F_GUEST_TSO6,
        );
        assert_eq!(o.tun_flags(), 0);
    }
}
