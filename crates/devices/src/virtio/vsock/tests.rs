//! vsock device tests: a mock driver (virtio-queue's `MockSplitQueue` in
//! real guest memory) on one side, real Unix sockets on the other, and the
//! worker stepped by hand so every test is deterministic.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::packet::*;
use super::worker::Worker;
use super::*;
use crate::virtio::{Activation, Interrupt};

const GUEST_CID: u64 = 3;
const MEM_SIZE: u64 = 8 << 20;
const BUF_BASE: u64 = 0x10_0000;
const RX: usize = 0;
const TX: usize = 1;
const W: u16 = VRING_DESC_F_WRITE as u16;
/// Each queue's area is 0x4000 bytes: descriptors, available ring, then
/// the used ring here.
const USED_OFFSET: u64 = 0x2000;

/// A descriptor chain as (address, length, flags) per descriptor.
type Chain = Vec<(u64, u32, u16)>;

fn sock_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("husk-vsock-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// The guest driver's side of the three queues.
///
/// `MockSplitQueue` provides the descriptor tables and available rings.
/// Its used ring is not used: in virtio-queue 0.17 `MockSplitQueue::create`
/// places it over the available ring (`SplitQueueRing::end` adds the element
/// count, not the byte size), so the driver puts the used ring at
/// `USED_OFFSET` in each queue's area and reads it itself.
struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    qs: [MockSplitQueue<'a, GuestMemoryMmap>; 3],
    next_desc: [u16; 3],
    avail_idx: [u16; 3],
    used_seen: [u16; 3],
    /// Per queue: head index -> the chain's buffers (addr, len).
    bufs: [HashMap<u16, Vec<(u64, u32)>>; 3],
    next_buf: u64,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        let q = |i: u64| MockSplitQueue::create(mem, GuestAddress(i * 0x4000), QUEUE_SIZE);
        Self {
            mem,
            qs: [q(0), q(1), q(2)],
            next_desc: [0; 3],
            avail_idx: [0; 3],
            used_seen: [0; 3],
            bufs: Default::default(),
            next_buf: BUF_BASE,
        }
    }

    fn used_addr(&self, q: usize) -> u64 {
        self.qs[q].desc_table_addr().0 + USED_OFFSET
    }

    fn queues(&self) -> Vec<Queue> {
        (0..3)
            .map(|i| {
                let mut q: Queue = self.qs[i].create_queue().unwrap();
                let used = self.used_addr(i);
                q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
                assert_eq!(q.used_ring(), used);
                q
            })
            .collect()
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let a = self.next_buf;
        self.next_buf = (self.next_buf + u64::from(len) + 15) & !15;
        if self.next_buf > MEM_SIZE - 0x10_0000 {
            self.next_buf = BUF_BASE;
        }
        a
    }

    fn store(&self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.qs[q]
            .desc_table()
            .store(
                index,
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next)),
            )
            .unwrap();
    }

    /// Makes `head` available.
    fn publish(&mut self, q: usize, head: u16) {
        let avail = self.qs[q].avail_addr().0;
        let i = self.avail_idx[q];
        self.mem
            .write_obj(
                head,
                GuestAddress(avail + 4 + 2 * u64::from(i % QUEUE_SIZE)),
            )
            .unwrap();
        self.avail_idx[q] = i.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx[q], GuestAddress(avail + 2))
            .unwrap();
    }

    /// Adds a well-formed chain of `(addr, len, flags)` buffers.
    fn push_chain(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> u16 {
        let n = descs.len() as u16;
        let head = self.next_desc[q];
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QUEUE_SIZE;
            let last = i as u16 == n - 1;
            let flags = if last {
                flags
            } else {
                flags | VRING_DESC_F_NEXT as u16
            };
            self.store(q, idx, addr, len, flags, (idx + 1) % QUEUE_SIZE);
        }
        self.next_desc[q] = (head + n) % QUEUE_SIZE;
        self.bufs[q].insert(head, descs.iter().map(|&(a, l, _)| (a, l)).collect());
        self.publish(q, head);
        head
    }

    /// `n` single-descriptor RX buffers of `size` bytes (header and data).
    fn add_rx(&mut self, n: usize, size: u32) {
        for _ in 0..n {
            let a = self.alloc(size);
            self.push_chain(RX, &[(a, size, W)]);
        }
    }

    /// Sends a packet in two descriptors (header, data), or one if no data.
    fn send(&mut self, mut h: Header, data: &[u8]) {
        h.len = data.len() as u32;
        let ha = self.alloc(HDR_LEN as u32);
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(ha))
            .unwrap();
        if data.is_empty() {
            self.push_chain(TX, &[(ha, HDR_LEN as u32, 0)]);
        } else {
            let da = self.alloc(data.len() as u32);
            self.mem.write_slice(data, GuestAddress(da)).unwrap();
            self.push_chain(TX, &[(ha, HDR_LEN as u32, 0), (da, data.len() as u32, 0)]);
        }
    }

    /// Sends a packet with header and data in one descriptor (Linux 6.2+).
    fn send_one_desc(&mut self, mut h: Header, data: &[u8]) {
        h.len = data.len() as u32;
        let len = (HDR_LEN + data.len()) as u32;
        let a = self.alloc(len);
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(a))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(a + HDR_LEN as u64))
            .unwrap();
        self.push_chain(TX, &[(a, len, 0)]);
    }

    /// New used-ring entries of queue `q`.
    fn used(&mut self, q: usize) -> Vec<(u16, u32)> {
        let used = self.used_addr(q);
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen[q] != idx {
            let at = used + 4 + 8 * u64::from(self.used_seen[q] % QUEUE_SIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id as u16, len));
            self.used_seen[q] = self.used_seen[q].wrapping_add(1);
        }
        out
    }

    /// New packets the device put in RX buffers.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        for (id, len) in self.used(RX) {
            let bufs = self.bufs[RX].get(&id).cloned().unwrap_or_default();
            assert!(len == 0 || len as usize >= HDR_LEN, "used len {len}");
            if len == 0 {
                continue;
            }
            let mut hb = [0u8; HDR_LEN];
            self.mem
                .read_slice(&mut hb, GuestAddress(bufs[0].0))
                .unwrap();
            let h = Header::from_bytes(&hb);
            let dlen = len as usize - HDR_LEN;
            assert_eq!(h.len as usize, dlen, "header len vs used len");
            let mut data = vec![0u8; dlen];
            let daddr = if bufs.len() == 1 {
                bufs[0].0 + HDR_LEN as u64
            } else {
                bufs[1].0
            };
            self.mem.read_slice(&mut data, GuestAddress(daddr)).unwrap();
            out.push((h, data));
        }
        out
    }
}

/// A packet header from the guest.
fn gh(src_port: u32, dst_port: u32, op: u16) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

struct Rig {
    dev: Vsock,
    worker: Worker,
    evts: [EventFd; 3],
    interrupt: Interrupt,
}

impl Rig {
    fn new(cfg: VsockConfig, d: &Driver<'_>) -> Self {
        let dev = Vsock::new(cfg).unwrap();
        let evts: [EventFd; 3] = std::array::from_fn(|_| EventFd::new(EFD_NONBLOCK).unwrap());
        let interrupt = Interrupt::new().unwrap();
        let a = Activation {
            mem: d.mem.clone(),
            queues: d.queues(),
            queue_evts: evts.iter().map(|e| e.try_clone().unwrap()).collect(),
            interrupt: interrupt.clone(),
            acked_features: features::VERSION_1,
        };
        let worker = dev
            .build_worker(a, EventFd::new(EFD_NONBLOCK).unwrap())
            .unwrap();
        Self {
            dev,
            worker,
            evts,
            interrupt,
        }
    }

    /// Runs the worker a few rounds (short waits).
    fn pump(&mut self) {
        self.evts[TX].write(1).unwrap();
        for _ in 0..4 {
            assert!(self.worker.step(Some(Duration::from_millis(2))).unwrap());
        }
    }

    /// Pumps until the guest has received `n` packets (or 3 s).
    fn recv_n(&mut self, d: &mut Driver<'_>, n: usize) -> Vec<(Header, Vec<u8>)> {
        let start = Instant::now();
        let mut got = Vec::new();
        while got.len() < n && start.elapsed() < Duration::from_secs(3) {
            self.pump();
            got.extend(d.recv());
        }
        got
    }
}

fn config(name: &str) -> VsockConfig {
    VsockConfig::new(GUEST_CID, sock_path(name))
}

fn host_connect(rig: &Rig, port: u32) -> UnixStream {
    let mut s = UnixStream::connect(rig.dev.uds_path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    s
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Whether the host stream has been closed by the device (EOF or reset).
fn closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        _ => false,
    }
}

/// Opens a host-initiated connection to guest port `port`; returns the
/// host stream and the local (host-side) port.
fn establish_from_host(rig: &mut Rig, d: &mut Driver<'_>, port: u32) -> (UnixStream, u32) {
    let mut s = host_connect(rig, port);
    let pkts = rig.recv_n(d, 1);
    assert_eq!(pkts.len(), 1, "no REQUEST");
    let (h, _) = &pkts[0];
    assert_eq!(h.op, OP_REQUEST);
    let local = h.src_port;
    d.send(gh(port, local, OP_RESPONSE), &[]);
    rig.pump();
    assert_eq!(read_line(&mut s), format!("OK {local}"));
    (s, local)
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

#[test]
fn host_to_guest_connection_with_data_credit_and_close() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut cfg = config("h2g");
    cfg.conn_buf_size = 4096;
    let mut rig = Rig::new(cfg, &d);
    d.add_rx(32, 4096);

    // CONNECT: the guest sees a REQUEST from the host for port 1024.
    let mut s = host_connect(&rig, 1024);
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts.len(), 1);
    let (h, data) = &pkts[0];
    assert!(data.is_empty());
    assert_eq!(
        (h.op, h.src_cid, h.dst_cid, h.dst_port, h.type_),
        (OP_REQUEST, HOST_CID, GUEST_CID, 1024, TYPE_STREAM)
    );
    assert_eq!(h.buf_alloc, 4096);
    assert_eq!(h.fwd_cnt, 0);
    let local = h.src_port;
    assert!(local >= 1 << 30);
    // The interrupt was raised for the used buffer.
    assert!(rig.interrupt.irqfd().read().unwrap() >= 1);
    assert_eq!(rig.interrupt.status() & 1, 1);

    // The guest accepts, with a small receive buffer (10 bytes).
    let mut resp = gh(1024, local, OP_RESPONSE);
    resp.buf_alloc = 10;
    d.send(resp, &[]);
    rig.pump();
    assert_eq!(read_line(&mut s), format!("OK {local}"));

    // Host to guest, bounded by the guest's credit: 10 of 25 bytes, then a
    // credit request.
    s.write_all(b"0123456789abcdefghijklmno").unwrap();
    let pkts = rig.recv_n(&mut d, 2);
    assert_eq!(pkts.len(), 2);
    assert_eq!(pkts[0].0.op, OP_RW);
    assert_eq!(pkts[0].1, b"0123456789");
    assert_eq!(pkts[1].0.op, OP_CREDIT_REQUEST);
    rig.pump();
    assert!(d.recv().is_empty(), "sent past the guest's credit");
    // The guest consumed 10 bytes: the rest flows.
    let mut cu = gh(1024, local, OP_CREDIT_UPDATE);
    cu.buf_alloc = 10;
    cu.fwd_cnt = 10;
    d.send(cu, &[]);
    let pkts = rig.recv_n(&mut d, 2);
    assert_eq!(pkts[0].1, b"abcdefghij");
    assert_eq!(pkts[1].0.op, OP_CREDIT_REQUEST);
    let mut cu = gh(1024, local, OP_CREDIT_UPDATE);
    cu.buf_alloc = 64 * 1024;
    cu.fwd_cnt = 20;
    d.send(cu, &[]);
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts[0].1, b"klmno");

    // Guest to host, in both packet layouts.
    let mut rw = gh(1024, local, OP_RW);
    rw.fwd_cnt = 25;
    d.send(rw, b"hello ");
    d.send_one_desc(rw, b"world");
    rig.pump();
    let mut buf = [0u8; 11];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello world");
    // 11 of 4096 forwarded: no credit update needed yet.
    assert!(d.recv().is_empty());

    // Past half the buffer the device tells the guest its fwd_cnt.
    d.send(rw, &[b'x'; 3000]);
    rig.pump();
    let mut big = vec![0u8; 3000];
    s.read_exact(&mut big).unwrap();
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts[0].0.op, OP_CREDIT_UPDATE);
    assert_eq!(pkts[0].0.fwd_cnt, 3011);
    // And on request.
    d.send(gh(1024, local, OP_CREDIT_REQUEST), &[]);
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts[0].0.op, OP_CREDIT_UPDATE);
    assert_eq!((pkts[0].0.buf_alloc, pkts[0].0.fwd_cnt), (4096, 3011));

    // The host half-closes: the guest gets SHUTDOWN(SEND) and can still send.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts[0].0.op, OP_SHUTDOWN);
    assert_eq!(pkts[0].0.flags, SHUTDOWN_SEND);
    d.send(rw, b"bye");
    rig.pump();
    let mut b3 = [0u8; 3];
    s.read_exact(&mut b3).unwrap();
    assert_eq!(&b3, b"bye");

    // The guest closes: the device resets the connection, the host reads EOF.
    let mut sd = gh(1024, local, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_BOTH;
    d.send(sd, &[]);
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts[0].0.op, OP_RST);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (local, 1024));
    assert!(closed(&mut s));
    assert_eq!(rig.worker.muxer().connection_count(), 0);
}

#[test]
fn host_close_sends_shutdown_both_and_waits_for_rst() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut rig = Rig::new(config("hclose"), &d);
    d.add_rx(16, 4096);
    let (mut s, local) = establish_from_host(&mut rig, &mut d, 52);
    s.write_all(b"last words").unwrap();
    drop(s);
    let pkts = rig.recv_n(&mut d, 2);
    assert_eq!(pkts[0].1, b"last words");
    assert_eq!(pkts[1].0.op, OP_SHUTDOWN);
    assert_eq!(pkts[1].0.flags, SHUTDOWN_BOTH);
    assert_eq!(
        rig.worker.muxer().conn_state(local, 52),
        Some(super::conn::State::Established)
    );
    d.send(gh(52, local, OP_RST), &[]);
    rig.pump();
    assert_eq!(rig.worker.muxer().connection_count(), 0);
    assert!(d.recv().is_empty(), "no answer to an RST");
}

#[test]
fn guest_to_host_connection() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let cfg = config("g2h");
    let mut lpath = cfg.uds_path.clone().into_os_string();
    lpath.push("_5000");
    let _ = std::fs::remove_file(&lpath);
    let listener = UnixListener::bind(&lpath).unwrap();
    let mut rig = Rig::new(cfg, &d);
    d.add_rx(16, 4096);

    d.send(gh(2000, 5000, OP_REQUEST), &[]);
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts.len(), 1);
    let h = pkts[0].0;
    assert_eq!(h.op, OP_RESPONSE);
    assert_eq!(
        (h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (HOST_CID, GUEST_CID, 5000, 2000)
    );
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();

    d.send(gh(2000, 5000, OP_RW), b"ping");
    rig.pump();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    s.write_all(b"pong").unwrap();
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts[0].0.op, OP_RW);
    assert_eq!(pkts[0].1, b"pong");
    assert_eq!(pkts[0].0.fwd_cnt, 4, "fwd_cnt rides on every packet");

    // A second connection from another guest port to the same listener.
    d.send(gh(2001, 5000, OP_REQUEST), &[]);
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts[0].0.op, OP_RESPONSE);
    assert_eq!(pkts[0].0.dst_port, 2001);
    let (mut s2, _) = listener.accept().unwrap();
    assert_eq!(rig.worker.muxer().connection_count(), 2);

    // The guest resets the first: the host sees it closed, no reply.
    d.send(gh(2000, 5000, OP_RST), &[]);
    rig.pump();
    assert!(closed(&mut s));
    assert!(d.recv().is_empty());
    assert_eq!(rig.worker.muxer().connection_count(), 1);

    // The guest shuts down sending on the second: the host reads EOF but
    // can still write.
    let mut sd = gh(2001, 5000, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_SEND;
    d.send(sd, &[]);
    rig.pump();
    assert!(closed(&mut s2));
    s2.write_all(b"still here").unwrap();
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts[0].1, b"still here");
    std::fs::remove_file(&lpath).unwrap();
}

#[test]
fn rst_for_unknown_ports_and_bad_packets() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut rig = Rig::new(config("rst"), &d);
    d.add_rx(32, 4096);

    // Nothing listens on host port 6000.
    d.send(gh(3000, 6000, OP_REQUEST), &[]);
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts.len(), 1);
    let h = pkts[0].0;
    assert_eq!(h.op, OP_RST);
    assert_eq!(
        (h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (HOST_CID, GUEST_CID, 6000, 3000)
    );
    // Data, credit traffic and shutdowns for no connection: RST each.
    for op in [OP_RW, OP_CREDIT_UPDATE, OP_SHUTDOWN, OP_RESPONSE] {
        d.send(gh(3001, 6001, op), b"zz");
        let pkts = rig.recv_n(&mut d, 1);
        assert_eq!(pkts[0].0.op, OP_RST, "op {op}");
    }
    // An RST for no connection gets no answer; neither do packets from the
    // wrong CID or to another CID.
    d.send(gh(3002, 6002, OP_RST), &[]);
    let mut wrong = gh(3003, 6003, OP_REQUEST);
    wrong.src_cid = 7;
    d.send(wrong, &[]);
    let mut elsewhere = gh(3003, 6003, OP_REQUEST);
    elsewhere.dst_cid = 9;
    d.send(elsewhere, &[]);
    rig.pump();
    assert!(d.recv().is_empty());
    // A seqpacket request: RST, of the same type.
    let mut seq = gh(3004, 6004, OP_REQUEST);
    seq.type_ = 2;
    d.send(seq, &[]);
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!((pkts[0].0.op, pkts[0].0.type_), (OP_RST, 2));

    // An established connection that gets an unknown op is reset.
    let (mut s, local) = establish_from_host(&mut rig, &mut d, 77);
    d.send(gh(77, local, 99), &[]);
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts[0].0.op, OP_RST);
    assert!(closed(&mut s));
    // ... so does a duplicate REQUEST.
    let (mut s, local) = establish_from_host(&mut rig, &mut d, 78);
    d.send(gh(78, local, OP_REQUEST), &[]);
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts[0].0.op, OP_RST);
    assert!(closed(&mut s));
    assert_eq!(rig.worker.muxer().connection_count(), 0);
}

#[test]
fn a_new_request_replaces_a_connection_being_reset() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let cfg = config("reuse");
    let mut lpath = cfg.uds_path.clone().into_os_string();
    lpath.push("_5001");
    let _ = std::fs::remove_file(&lpath);
    let listener = UnixListener::bind(&lpath).unwrap();
    let mut rig = Rig::new(cfg, &d);
    d.add_rx(1, 4096);
    d.send(gh(2100, 5001, OP_REQUEST), &[]);
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts[0].0.op, OP_RESPONSE);
    let (_old, _) = listener.accept().unwrap();
    // A protocol error resets it, but the guest has no RX buffer for the RST.
    d.send(gh(2100, 5001, 99), &[]);
    rig.pump();
    assert_eq!(
        rig.worker.muxer().conn_state(5001, 2100),
        Some(super::conn::State::Killed)
    );
    // The guest reconnects from the same port: a fresh connection, and the
    // stale RST is not sent.
    d.send(gh(2100, 5001, OP_REQUEST), &[]);
    rig.pump();
    d.add_rx(4, 4096);
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_RESPONSE);
    rig.pump();
    assert!(d.recv().is_empty());
    assert_eq!(
        rig.worker.muxer().conn_state(5001, 2100),
        Some(super::conn::State::Established)
    );
    std::fs::remove_file(&lpath).unwrap();
}

#[test]
fn host_connect_refused_by_the_guest_closes_the_stream() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut rig = Rig::new(config("refused"), &d);
    d.add_rx(8, 4096);
    let mut s = host_connect(&rig, 1024);
    let pkts = rig.recv_n(&mut d, 1);
    let local = pkts[0].0.src_port;
    d.send(gh(1024, local, OP_RST), &[]);
    rig.pump();
    assert!(closed(&mut s), "no OK, just EOF");
    assert_eq!(rig.worker.muxer().connection_count(), 0);
}

#[test]
fn bad_host_requests_and_timeouts() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut cfg = config("badhost");
    cfg.connect_timeout = Duration::from_millis(100);
    cfg.close_timeout = Duration::from_millis(100);
    let mut rig = Rig::new(cfg, &d);
    d.add_rx(16, 4096);

    let connect = |line: &[u8]| {
        let mut s = UnixStream::connect(rig.dev.uds_path()).unwrap();
        s.write_all(line).unwrap();
        s
    };
    let mut garbage = connect(b"HELLO 5\n");
    let mut long = connect(&[b'C'; 100]);
    let mut bad_port = connect(b"CONNECT 99999999999\n");
    let mut silent = connect(b"CONN");
    rig.pump();
    assert!(closed(&mut garbage));
    assert!(closed(&mut long));
    assert!(closed(&mut bad_port));
    assert_eq!(rig.worker.muxer().client_count(), 1);
    // The silent one times out.
    std::thread::sleep(Duration::from_millis(150));
    rig.pump();
    assert!(closed(&mut silent));
    assert_eq!(rig.worker.muxer().client_count(), 0);
    assert!(d.recv().is_empty());

    // A guest that never answers a REQUEST: the host stream is closed and
    // the guest gets an RST.
    let mut s = host_connect(&rig, 1234);
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts[0].0.op, OP_REQUEST);
    std::thread::sleep(Duration::from_millis(150));
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts[0].0.op, OP_RST);
    assert!(closed(&mut s));
    assert_eq!(rig.worker.muxer().connection_count(), 0);

    // Data sent right after the CONNECT line is not lost.
    let mut s = UnixStream::connect(rig.dev.uds_path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"CONNECT 9\nearly").unwrap();
    let pkts = rig.recv_n(&mut d, 1);
    let local = pkts[0].0.src_port;
    d.send(gh(9, local, OP_RESPONSE), &[]);
    rig.pump();
    assert_eq!(read_line(&mut s), format!("OK {local}"));
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts[0].1, b"early");
}

#[test]
fn connection_limits_and_credit_overrun() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut cfg = config("limits");
    cfg.max_connections = 2;
    cfg.conn_buf_size = 4096;
    let mut lpath = cfg.uds_path.clone().into_os_string();
    lpath.push("_7000");
    let _ = std::fs::remove_file(&lpath);
    let listener = UnixListener::bind(&lpath).unwrap();
    let mut rig = Rig::new(cfg, &d);
    d.add_rx(32, 4096);

    let (_a, la) = establish_from_host(&mut rig, &mut d, 1);
    let (_b, _) = establish_from_host(&mut rig, &mut d, 2);
    // A third host connection is refused.
    let mut c = host_connect(&rig, 3);
    rig.pump();
    assert!(closed(&mut c));
    // So is a guest connection.
    d.send(gh(4000, 7000, OP_REQUEST), &[]);
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts[0].0.op, OP_RST);
    assert_eq!(rig.worker.muxer().connection_count(), 2);

    // The guest sends more than the 4 KiB it was granted while the host
    // does not read: the connection is reset, nothing more is buffered.
    let mut a = _a;
    let chunk = vec![7u8; 4096];
    // Fill the host socket's buffer first so the device has to buffer.
    for _ in 0..256 {
        d.send(gh(1, la, OP_RW), &chunk);
        d.add_rx(1, 4096);
        rig.pump();
        if rig.worker.muxer().connection_count() < 2 {
            break;
        }
    }
    assert_eq!(rig.worker.muxer().connection_count(), 1);
    let pkts = d.recv();
    assert!(pkts.iter().any(|(h, _)| h.op == OP_RST && h.src_port == la));
    // The host side of the reset connection is closed (after what it had).
    a.set_nonblocking(true).unwrap();
    let mut sink = vec![0u8; 1 << 16];
    let mut eof = false;
    for _ in 0..10_000 {
        match a.read(&mut sink) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(_) => {
                eof = true;
                break;
            }
        }
    }
    assert!(eof);
    drop(listener);
    std::fs::remove_file(&lpath).unwrap();
}

#[test]
fn stray_rsts_and_the_rx_queue_stay_bounded_without_rx_buffers() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut cfg = config("bounded");
    cfg.max_connections = 4;
    let mut lpath = cfg.uds_path.clone().into_os_string();
    lpath.push("_8000");
    let _ = std::fs::remove_file(&lpath);
    let _listener = UnixListener::bind(&lpath).unwrap();
    let mut rig = Rig::new(cfg, &d);
    // No RX buffers at all: nothing can be delivered.
    for i in 0..(muxer::MAX_STRAY_RST as u32 + 100) {
        d.send(gh(10_000 + i, 9, OP_RW), b"x");
        if i % 128 == 0 {
            rig.pump();
        }
    }
    rig.pump();
    assert_eq!(rig.worker.muxer().stray_count(), muxer::MAX_STRAY_RST);
    // Connections made and reset over and over: the RX queue holds each
    // live connection at most once.
    for round in 0..50u32 {
        d.send(gh(20_000 + round, 8000, OP_REQUEST), &[]);
        d.send(gh(20_000 + round, 8000, OP_RST), &[]);
        if round % 10 == 0 {
            rig.pump();
        }
    }
    rig.pump();
    assert_eq!(rig.worker.muxer().connection_count(), 0);
    assert_eq!(rig.worker.muxer().rxq_len(), 0);
    // Once buffers come, the backlog drains.
    d.add_rx(QUEUE_SIZE as usize, 256);
    rig.pump();
    let pkts = d.recv();
    assert!(pkts.iter().all(|(h, _)| h.op == OP_RST));
    assert!(pkts.len() >= 200);
    std::fs::remove_file(&lpath).unwrap();
}

/// Malformed TX chains: each is returned unused, nothing panics, and a
/// real connection still works afterwards.
#[test]
fn malformed_tx_descriptors() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut rig = Rig::new(config("badtx"), &d);
    d.add_rx(32, 4096);
    let hdr = gh(1, 2, OP_REQUEST).to_bytes();
    let ha = d.alloc(HDR_LEN as u32);
    mem.write_slice(&hdr, GuestAddress(ha)).unwrap();
    let mut rw = gh(1, 2, OP_RW);
    rw.len = 100;
    let rwa = d.alloc(HDR_LEN as u32);
    mem.write_slice(&rw.to_bytes(), GuestAddress(rwa)).unwrap();
    let mut huge = gh(1, 2, OP_RW);
    huge.len = u32::MAX;
    let hugea = d.alloc(HDR_LEN as u32);
    mem.write_slice(&huge.to_bytes(), GuestAddress(hugea))
        .unwrap();

    let cases: Vec<(&str, Chain)> = vec![
        ("header too short", vec![(ha, 20, 0)]),
        ("header empty", vec![(ha, 0, 0)]),
        ("header write-only", vec![(ha, HDR_LEN as u32, W)]),
        ("header outside memory", vec![(MEM_SIZE, HDR_LEN as u32, 0)]),
        (
            "header straddling the end of memory",
            vec![(MEM_SIZE - 20, HDR_LEN as u32, 0)],
        ),
        (
            "header address overflows",
            vec![(u64::MAX - 10, HDR_LEN as u32, 0)],
        ),
        ("data missing", vec![(rwa, HDR_LEN as u32, 0)]),
        (
            "data shorter than len",
            vec![(rwa, HDR_LEN as u32, 0), (BUF_BASE + 0x8000, 10, 0)],
        ),
        (
            "data write-only",
            vec![(rwa, HDR_LEN as u32, 0), (BUF_BASE + 0x8000, 100, W)],
        ),
        (
            "data outside memory",
            vec![(rwa, HDR_LEN as u32, 0), (MEM_SIZE + 0x1000, 100, 0)],
        ),
        (
            "data overflows the address space",
            vec![(rwa, HDR_LEN as u32, 0), (u64::MAX - 50, 100, 0)],
        ),
        (
            "len beyond the maximum",
            vec![(hugea, HDR_LEN as u32, 0), (BUF_BASE, u32::MAX, 0)],
        ),
    ];
    for (what, chain) in &cases {
        let head = d.push_chain(TX, chain);
        rig.pump();
        let used = d.used(TX);
        assert_eq!(used, vec![(head, 0)], "{what}");
    }
    // Loops: a chain whose descriptors point at each other, and one that
    // points at itself.
    let h0 = d.next_desc[TX];
    let h1 = (h0 + 1) % QUEUE_SIZE;
    d.store(TX, h0, rwa, HDR_LEN as u32, VRING_DESC_F_NEXT as u16, h1);
    d.store(TX, h1, BUF_BASE, 8, VRING_DESC_F_NEXT as u16, h0);
    d.next_desc[TX] = (h0 + 2) % QUEUE_SIZE;
    d.publish(TX, h0);
    let h2 = d.next_desc[TX];
    d.store(TX, h2, ha, HDR_LEN as u32, VRING_DESC_F_NEXT as u16, h2);
    d.next_desc[TX] = (h2 + 1) % QUEUE_SIZE;
    d.publish(TX, h2);
    // A head index past the queue, and a `next` past the queue.
    d.publish(TX, QUEUE_SIZE + 5);
    let h3 = d.next_desc[TX];
    d.store(TX, h3, rwa, HDR_LEN as u32, VRING_DESC_F_NEXT as u16, 999);
    d.next_desc[TX] = (h3 + 1) % QUEUE_SIZE;
    d.publish(TX, h3);
    // An indirect table outside memory, and one of bad length.
    let h4 = d.next_desc[TX];
    d.store(TX, h4, MEM_SIZE * 2, 64, VRING_DESC_F_INDIRECT as u16, 0);
    let h5 = h4 + 1;
    d.store(TX, h5, BUF_BASE, 17, VRING_DESC_F_INDIRECT as u16, 0);
    d.next_desc[TX] = (h4 + 2) % QUEUE_SIZE;
    d.publish(TX, h4);
    d.publish(TX, h5);
    rig.pump();
    let used: Vec<u16> = d.used(TX).into_iter().map(|(id, _)| id).collect();
    // The out-of-range head cannot be returned; everything else is.
    assert_eq!(used, vec![h0, h2, h3, h4, h5]);
    // The self-looping REQUEST to port 2 parsed (its data is its own
    // header) and was refused: nobody listens there. The rest produced
    // only RSTs for unknown connections, if anything.
    assert!(d.recv().iter().all(|(h, _)| h.op == OP_RST));

    // The device still works.
    let (mut s, local) = establish_from_host(&mut rig, &mut d, 1024);
    d.send(gh(1024, local, OP_RW), b"fine");
    rig.pump();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"fine");

    // A malformed packet on a live connection resets it instead of
    // silently dropping its data.
    let mut bad = gh(1024, local, OP_RW);
    bad.len = 50;
    let ba = d.alloc(HDR_LEN as u32);
    mem.write_slice(&bad.to_bytes(), GuestAddress(ba)).unwrap();
    d.push_chain(TX, &[(ba, HDR_LEN as u32, 0), (BUF_BASE, 10, 0)]);
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts[0].0.op, OP_RST);
    assert!(closed(&mut s));
}

#[test]
fn malformed_avail_ring_index_does_not_hang_or_panic() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut rig = Rig::new(config("badidx"), &d);
    // The driver claims 1000 new buffers on a 256-entry ring.
    let avail = d.qs[TX].avail_addr().0;
    mem.write_obj(1000u16, GuestAddress(avail + 2)).unwrap();
    rig.pump();
    assert!(d.used(TX).is_empty());
    let avail = d.qs[RX].avail_addr().0;
    mem.write_obj(5000u16, GuestAddress(avail + 2)).unwrap();
    let _s = host_connect(&rig, 5);
    rig.pump();
    assert!(d.used(RX).is_empty());
}

/// Malformed RX buffers are handed back empty; writes never leave the
/// buffer the guest gave.
#[test]
fn malformed_rx_descriptors_and_buffer_bounds() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut rig = Rig::new(config("badrx"), &d);
    let a = d.alloc(4096);
    let cases: Vec<(&str, Chain)> = vec![
        ("read-only", vec![(a, 4096, 0)]),
        ("header only", vec![(a, HDR_LEN as u32, W)]),
        ("too short", vec![(a, 10, W)]),
        ("outside memory", vec![(MEM_SIZE + 4096, 4096, W)]),
        ("straddling the end", vec![(MEM_SIZE - 100, 4096, W)]),
        ("overflowing", vec![(u64::MAX - 100, 4096, W)]),
        (
            "read-only data",
            vec![(a, HDR_LEN as u32, W), (a + 0x100, 4096, 0)],
        ),
        (
            "data outside memory",
            vec![(a, HDR_LEN as u32, W), (MEM_SIZE, 4096, W)],
        ),
        (
            "data past the end of memory",
            vec![(a, HDR_LEN as u32, W), (MEM_SIZE - 0x100, 0x1000, W)],
        ),
    ];
    let mut heads = Vec::new();
    for (_, chain) in &cases {
        heads.push(d.push_chain(RX, chain));
    }
    // Something to deliver: a REQUEST.
    let mut s = host_connect(&rig, 1024);
    rig.pump();
    let used = d.used(RX);
    assert_eq!(
        used,
        heads.iter().map(|&h| (h, 0)).collect::<Vec<_>>(),
        "each bad buffer returned empty, in order"
    );
    // A good but tiny buffer (header + 16 bytes) surrounded by canaries.
    let tiny = d.alloc(HDR_LEN as u32 + 16 + 64);
    let tiny = tiny + 32;
    mem.write_slice(&[0xcc; 32], GuestAddress(tiny - 32))
        .unwrap();
    mem.write_slice(&[0xcc; 32], GuestAddress(tiny + HDR_LEN as u64 + 16))
        .unwrap();
    d.push_chain(RX, &[(tiny, HDR_LEN as u32 + 16, W)]);
    let pkts = rig.recv_n(&mut d, 1);
    assert_eq!(pkts[0].0.op, OP_REQUEST);
    let local = pkts[0].0.src_port;
    d.send(gh(1024, local, OP_RESPONSE), &[]);
    rig.pump();
    assert_eq!(read_line(&mut s), format!("OK {local}"));
    // 100 bytes from the host, 16 per tiny buffer.
    s.write_all(&[0x5a; 100]).unwrap();
    let mut got = Vec::new();
    for _ in 0..7 {
        let t = d.alloc(HDR_LEN as u32 + 16);
        d.push_chain(RX, &[(t, HDR_LEN as u32 + 16, W)]);
        for (h, data) in rig.recv_n(&mut d, 1) {
            assert!(h.len <= 16);
            got.extend(data);
        }
    }
    assert_eq!(got, vec![0x5a; 100]);
    let mut canary = [0u8; 32];
    mem.read_slice(&mut canary, GuestAddress(tiny - 32))
        .unwrap();
    assert_eq!(canary, [0xcc; 32]);
    mem.read_slice(&mut canary, GuestAddress(tiny + HDR_LEN as u64 + 16))
        .unwrap();
    assert_eq!(canary, [0xcc; 32]);
}

#[test]
fn two_descriptor_rx_buffers_work() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut rig = Rig::new(config("rx2"), &d);
    for _ in 0..8 {
        let h = d.alloc(HDR_LEN as u32);
        let b = d.alloc(4096);
        d.push_chain(RX, &[(h, HDR_LEN as u32, W), (b, 4096, W)]);
    }
    let (mut s, _) = establish_from_host(&mut rig, &mut d, 99);
    let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    s.write_all(&payload).unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < payload.len() && start.elapsed() < Duration::from_secs(3) {
        let pkts = rig.recv_n(&mut d, 1);
        for (h, data) in pkts {
            assert_eq!(h.op, OP_RW);
            assert!(data.len() <= 4096);
            got.extend(data);
            let hb = d.alloc(HDR_LEN as u32);
            let bb = d.alloc(4096);
            d.push_chain(RX, &[(hb, HDR_LEN as u32, W), (bb, 4096, W)]);
        }
    }
    assert_eq!(got, payload);
}

#[test]
fn large_rx_buffers_carry_at_most_64k() {
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut rig = Rig::new(config("rxbig"), &d);
    d.add_rx(4, 4096);
    let (s, local) = establish_from_host(&mut rig, &mut d, 99);
    let mut cu = gh(99, local, OP_CREDIT_UPDATE);
    cu.buf_alloc = 1 << 20;
    d.send(cu, &[]);
    rig.pump();
    let payload = vec![0x42u8; 200_000];
    let writer = {
        let mut s2 = s.try_clone().unwrap();
        let p = payload.clone();
        std::thread::spawn(move || s2.write_all(&p).unwrap())
    };
    let mut got = 0;
    let start = Instant::now();
    while got < payload.len() && start.elapsed() < Duration::from_secs(5) {
        d.add_rx(1, 256 * 1024);
        for (h, data) in rig.recv_n(&mut d, 1) {
            assert_eq!(h.op, OP_RW);
            assert!(data.len() <= MAX_PKT_DATA as usize);
            assert!(data.iter().all(|&b| b == 0x42));
            got += data.len();
        }
    }
    writer.join().unwrap();
    assert_eq!(got, payload.len());
    s.shutdown(std::net::Shutdown::Both).unwrap();
}

fn checksum(data: &[u8]) -> u64 {
    // FNV-1a.
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// 10 MiB each way with a guest that honours the credit the device grants
/// and grants credit as it consumes: flow control never stalls and every
/// byte arrives in order.
#[test]
fn ten_mib_each_way_under_flow_control() {
    const TOTAL: usize = 10 << 20;
    let mem = mem();
    let mut d = Driver::new(&mem);
    let mut rig = Rig::new(config("bulk"), &d);
    d.add_rx(64, 4096);
    let (s, local) = establish_from_host(&mut rig, &mut d, 1024);
    let payload: Vec<u8> = (0..TOTAL).map(|i| (i * 7 + i / 4093) as u8).collect();
    let want = checksum(&payload);

    // Guest to host: the host reads on a thread.
    let mut rd = s.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; TOTAL];
        rd.read_exact(&mut got).unwrap();
        checksum(&got)
    });
    // What the device granted in its REQUEST: its default buffer size.
    let (mut sent, mut peer_fwd, mut peer_alloc) = (0usize, 0u32, 256 * 1024u32);
    let mut updates = 0;
    let start = Instant::now();
    while sent < TOTAL {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "stalled at {sent}"
        );
        let in_flight = sent as u32 - peer_fwd;
        let credit = (peer_alloc - in_flight) as usize;
        let n = credit.min(TOTAL - sent).min(MAX_PKT_DATA as usize);
        if n > 0 {
            d.send(gh(1024, local, OP_RW), &payload[sent..sent + n]);
            sent += n;
        }
        rig.pump();
        for (h, _) in d.recv() {
            peer_fwd = h.fwd_cnt;
            peer_alloc = h.buf_alloc;
            updates += usize::from(h.op == OP_CREDIT_UPDATE);
            d.add_rx(1, 4096);
        }
    }
    assert_eq!(reader.join().unwrap(), want);
    assert!(updates > 0);

    // Host to guest: the host writes on a thread; the guest consumes and
    // tells the device as it goes.
    let mut wr = s.try_clone().unwrap();
    let p = payload.clone();
    let writer = std::thread::spawn(move || wr.write_all(&p).unwrap());
    let mut got = Vec::with_capacity(TOTAL);
    let mut consumed = 0u32;
    let start = Instant::now();
    while got.len() < TOTAL {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "stalled at {}",
            got.len()
        );
        rig.pump();
        let mut n = 0;
        for (h, data) in d.recv() {
            if h.op == OP_CREDIT_REQUEST || data.is_empty() {
                d.add_rx(1, 4096);
                continue;
            }
            assert_eq!(h.op, OP_RW);
            got.extend_from_slice(&data);
            consumed = consumed.wrapping_add(data.len() as u32);
            n += 1;
            d.add_rx(1, 4096);
        }
        if n > 0 {
            let mut cu = gh(1024, local, OP_CREDIT_UPDATE);
            cu.buf_alloc = 64 * 1024;
            cu.fwd_cnt = consumed;
            d.send(cu, &[]);
        }
    }
    writer.join().unwrap();
    assert_eq!(got.len(), TOTAL);
    assert_eq!(checksum(&got), want);
}

/// The whole device: register-level setup through the MMIO transport, the
/// real worker thread, interrupts through the irqfd, and reset.
#[test]
fn through_the_mmio_transport_with_its_worker_thread() {
    use crate::MmioDevice;
    use crate::virtio::{MmioTransport, status};
    use virtio_bindings::virtio_mmio::*;

    let mem = mem();
    let mut d = Driver::new(&mem);
    let dev = Vsock::new(config("mmio")).unwrap();
    let path = dev.uds_path().to_owned();
    let mut t = MmioTransport::new(dev, mem.clone()).unwrap();
    let w = |t: &mut MmioTransport<Vsock>, off: u32, v: u32| {
        MmioDevice::write(t, off.into(), &v.to_le_bytes())
    };
    let r = |t: &mut MmioTransport<Vsock>, off: u32| {
        let mut b = [0u8; 4];
        MmioDevice::read(t, off.into(), &mut b);
        u32::from_le_bytes(b)
    };
    assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_ID), 19);
    let mut cid = [0u8; 8];
    MmioDevice::read(&mut t, 0x100, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    let mut hi = [0u8; 4];
    MmioDevice::read(&mut t, 0x104, &mut hi);
    assert_eq!(hi, [0; 4]);

    let setup = |t: &mut MmioTransport<Vsock>, d: &Driver<'_>| {
        w(t, VIRTIO_MMIO_STATUS, 0);
        w(t, VIRTIO_MMIO_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
        w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        w(t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        w(
            t,
            VIRTIO_MMIO_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        for (i, q) in d.qs.iter().enumerate() {
            w(t, VIRTIO_MMIO_QUEUE_SEL, i as u32);
            assert_eq!(r(t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
            w(t, VIRTIO_MMIO_QUEUE_NUM, 256);
            w(t, VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc_table_addr().0 as u32);
            w(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
            w(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail_addr().0 as u32);
            w(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
            w(t, VIRTIO_MMIO_QUEUE_USED_LOW, d.used_addr(i) as u32);
            w(t, VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
            w(t, VIRTIO_MMIO_QUEUE_READY, 1);
        }
        w(
            t,
            VIRTIO_MMIO_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
    };
    setup(&mut t, &d);
    assert!(t.is_active());
    assert!(t.device().is_running());

    d.add_rx(8, 4096);
    w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"CONNECT 1024\n").unwrap();

    let wait_rx = |d: &mut Driver<'_>| {
        let start = Instant::now();
        loop {
            let p = d.recv();
            if !p.is_empty() || start.elapsed() > Duration::from_secs(5) {
                return p;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let pkts = wait_rx(&mut d);
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_REQUEST);
    // The interrupt arrived through the irqfd; the driver reads and acks.
    assert!(t.interrupt().irqfd().read().unwrap() >= 1);
    assert_eq!(r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS) & 1, 1);
    w(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);

    // The guest accepts; a notification through the queue eventfd as KVM
    // would deliver it (ioeventfd) wakes the worker.
    let local = pkts[0].0.src_port;
    d.send(gh(1024, local, OP_RESPONSE), &[]);
    t.queue_evts()[1].write(1).unwrap();
    assert_eq!(read_line(&mut s), format!("OK {local}"));
    // And through an MMIO write to QueueNotify.
    d.send(gh(1024, local, OP_RW), b"via mmio");
    w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    let mut b = [0u8; 8];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"via mmio");

    // Reset: the worker stops and the host stream is closed.
    w(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert!(!t.is_active());
    assert!(!t.device().is_running());
    assert!(closed(&mut s));

    // The device starts again on fresh queues.
    let mut d = Driver::new(&mem);
    for q in 0..3 {
        let used = d.used_addr(q);
        mem.write_obj(0u16, GuestAddress(used + 2)).unwrap();
        let avail = d.qs[q].avail_addr().0;
        mem.write_obj(0u16, GuestAddress(avail + 2)).unwrap();
    }
    setup(&mut t, &d);
    assert!(t.device().is_running());
    d.add_rx(4, 4096);
    w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(b"CONNECT 7\n").unwrap();
    let pkts = wait_rx(&mut d);
    assert_eq!(pkts[0].0.op, OP_REQUEST);
    assert_eq!(pkts[0].0.dst_port, 7);

    // Dropping the transport stops the worker and removes the socket.
    drop(t);
    assert!(!path.exists());
}

#[test]
fn config_validation() {
    assert!(matches!(
        Vsock::new(VsockConfig::new(2, sock_path("cid2"))),
        Err(VsockError::InvalidCid(2))
    ));
    assert!(matches!(
        Vsock::new(VsockConfig::new(u64::from(u32::MAX), sock_path("cidmax"))),
        Err(VsockError::InvalidCid(_))
    ));
    let mut c = config("zero");
    c.max_connections = 0;
    assert!(matches!(Vsock::new(c), Err(VsockError::InvalidConfig(_))));
    let mut c = config("tinybuf");
    c.conn_buf_size = 100;
    assert!(matches!(Vsock::new(c), Err(VsockError::InvalidConfig(_))));
    // An existing path is not clobbered.
    let p = sock_path("exists");
    std::fs::write(&p, b"not a socket").unwrap();
    assert!(matches!(
        Vsock::new(VsockConfig::new(3, &p)),
        Err(VsockError::Bind { .. })
    ));
    assert_eq!(std::fs::read(&p).unwrap(), b"not a socket");
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn activation_needs_three_ready_queues() {
    let mem = mem();
    let d = Driver::new(&mem);
    let mut dev = Vsock::new(config("act")).unwrap();
    let mk = |queues: Vec<Queue>| Activation {
        mem: mem.clone(),
        queue_evts: (0..queues.len())
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect(),
        queues,
        interrupt: Interrupt::new().unwrap(),
        acked_features: features::VERSION_1,
    };
    let mut qs = d.queues();
    qs.pop();
    assert!(matches!(
        dev.activate(mk(qs)),
        Err(ActivateError::QueueCount { .. })
    ));
    let mut qs = d.queues();
    qs[2].set_ready(false);
    assert!(matches!(
        dev.activate(mk(qs)),
        Err(ActivateError::QueueNotReady(2))
    ));
    assert!(!dev.is_running());
    dev.activate(mk(d.queues())).unwrap();
    assert!(dev.is_running());
    assert!(matches!(
        dev.activate(mk(d.queues())),
        Err(ActivateError::AlreadyActive)
    ));
    dev.reset();
    assert!(!dev.is_running());
    dev.activate(mk(d.queues())).unwrap();
    assert!(dev.is_running());
}
