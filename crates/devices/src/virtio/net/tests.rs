//! net device tests: a hand-built driver (descriptor tables and rings
//! written straight into guest memory) on one side, a real socketpair (or
//! TAP) on the other, and the worker stepped by hand so every test is
//! deterministic.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::worker::Worker;
use super::*;
use crate::virtio::{Activation, Interrupt};

const MEM_SIZE: u64 = 16 << 20;
const BUF_BASE: u64 = 0x10_0000;
const RX: usize = 0;
const TX: usize = 1;
const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;
const MAC: [u8; 6] = [0x02, 0x48, 0x55, 0x53, 0x4b, 0x01];
const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// Queue `q`'s area: descriptors at +0, available ring at +0x1000, used
/// ring at +0x2000.
fn qbase(q: usize) -> u64 {
    q as u64 * 0x1_0000
}

/// The guest driver's side of the two queues.
struct Driver {
    mem: GuestMemoryMmap,
    next_desc: [u16; 2],
    avail_idx: [u16; 2],
    used_seen: [u16; 2],
    /// Per queue: head index -> the chain's buffers (addr, len).
    bufs: [HashMap<u16, Vec<(u64, u32)>>; 2],
    next_buf: u64,
}

impl Driver {
    fn new() -> Self {
        Self {
            mem: mem(),
            next_desc: [0; 2],
            avail_idx: [0; 2],
            used_seen: [0; 2],
            bufs: Default::default(),
            next_buf: BUF_BASE,
        }
    }

    fn queues(&self) -> Vec<Queue> {
        (0..2)
            .map(|i| {
                let mut q = Queue::new(QUEUE_SIZE).unwrap();
                let b = qbase(i);
                q.set_desc_table_address(Some(b as u32), Some(0));
                q.set_avail_ring_address(Some((b + 0x1000) as u32), Some(0));
                q.set_used_ring_address(Some((b + 0x2000) as u32), Some(0));
                q.set_ready(true);
                assert!(q.is_valid(&self.mem));
                q
            })
            .collect()
    }

    fn alloc(&mut self, len: u32) -> u64 {
        if self.next_buf + u64::from(len) > MEM_SIZE {
            self.next_buf = BUF_BASE;
        }
        let a = self.next_buf;
        self.next_buf = (self.next_buf + u64::from(len) + 15) & !15;
        a
    }

    fn store(&self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = qbase(q) + 16 * u64::from(index);
        let m = &self.mem;
        m.write_obj(addr, GuestAddress(at)).unwrap();
        m.write_obj(len, GuestAddress(at + 8)).unwrap();
        m.write_obj(flags, GuestAddress(at + 12)).unwrap();
        m.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    /// Makes `head` available.
    fn publish(&mut self, q: usize, head: u16) {
        let avail = qbase(q) + 0x1000;
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

    /// Sets the driver's VRING_AVAIL_F_NO_INTERRUPT for `q`.
    fn set_no_interrupt(&self, q: usize, on: bool) {
        self.mem
            .write_obj(u16::from(on), GuestAddress(qbase(q) + 0x1000))
            .unwrap();
    }

    /// Adds a chain of `(addr, len, flags)` buffers (NEXT added).
    fn push_chain(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> u16 {
        let n = descs.len() as u16;
        let head = self.next_desc[q];
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QUEUE_SIZE;
            let flags = if i as u16 == n - 1 { flags } else { flags | N };
            self.store(q, idx, addr, len, flags, (idx + 1) % QUEUE_SIZE);
        }
        self.next_desc[q] = (head + n) % QUEUE_SIZE;
        self.bufs[q].insert(head, descs.iter().map(|&(a, l, _)| (a, l)).collect());
        self.publish(q, head);
        head
    }

    /// `n` single-descriptor RX buffers of `size` bytes.
    fn add_rx(&mut self, n: usize, size: u32) {
        for _ in 0..n {
            let a = self.alloc(size);
            self.push_chain(RX, &[(a, size, W)]);
        }
    }

    /// Sends `frame` after a 12-byte header `hdr`, in `pieces` descriptors.
    fn send_with(&mut self, hdr: [u8; 12], frame: &[u8], pieces: usize) -> u16 {
        let mut pkt = hdr.to_vec();
        pkt.extend_from_slice(frame);
        let a = self.alloc(pkt.len() as u32);
        self.mem.write_slice(&pkt, GuestAddress(a)).unwrap();
        let step = pkt.len().div_ceil(pieces);
        let descs: Vec<_> = (0..pkt.len())
            .step_by(step)
            .map(|o| (a + o as u64, step.min(pkt.len() - o) as u32, 0))
            .collect();
        self.push_chain(TX, &descs)
    }

    /// Sends `frame` with a zero header, header and frame in two descriptors.
    fn send(&mut self, frame: &[u8]) -> u16 {
        let mut pkt = vec![0u8; 12];
        pkt.extend_from_slice(frame);
        let a = self.alloc(pkt.len() as u32);
        self.mem.write_slice(&pkt, GuestAddress(a)).unwrap();
        self.push_chain(TX, &[(a, 12, 0), (a + 12, frame.len() as u32, 0)])
    }

    /// New used-ring entries of queue `q`.
    fn used(&mut self, q: usize) -> Vec<(u16, u32)> {
        let used = qbase(q) + 0x2000;
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

    /// `len` bytes of the RX chain `head`.
    fn read_chain(&self, head: u16, len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut left = len as usize;
        for &(a, l) in &self.bufs[RX][&head] {
            let n = left.min(l as usize);
            let mut b = vec![0u8; n];
            self.mem.read_slice(&mut b, GuestAddress(a)).unwrap();
            out.extend_from_slice(&b);
            left -= n;
        }
        assert_eq!(left, 0, "used length past the chain");
        out
    }

    /// Frames the device put in RX buffers, as a Linux driver with
    /// MRG_RXBUF reads them: (header, frame, used lengths). Zero-length
    /// buffers are skipped (the driver drops them).
    fn recv(&mut self) -> Vec<([u8; 12], Vec<u8>, Vec<u32>)> {
        let used = self.used(RX);
        let mut out = Vec::new();
        let mut i = 0;
        while i < used.len() {
            let (head, len) = used[i];
            i += 1;
            if len == 0 {
                continue;
            }
            let mut bytes = self.read_chain(head, len);
            let mut hdr = [0u8; 12];
            hdr.copy_from_slice(&bytes[..12]);
            let nb = u16::from_le_bytes([hdr[10], hdr[11]]) as usize;
            assert!(nb >= 1, "num_buffers {nb}");
            let mut lens = vec![len];
            for _ in 1..nb {
                let (h, l) = *used.get(i).expect("a merged frame published in part");
                i += 1;
                bytes.extend_from_slice(&self.read_chain(h, l));
                lens.push(l);
            }
            out.push((hdr, bytes[12..].to_vec(), lens));
        }
        out
    }
}

/// A test frame: an Ethernet header (to and from the NIC's MAC, so the
/// same frame serves RX and TX, which drops other sources), then
/// `len - 14` bytes from `seed`.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&MAC);
    f[6..12].copy_from_slice(&MAC);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    for (i, b) in f[14..].iter_mut().enumerate() {
        *b = seed.wrapping_add((i % 251) as u8);
    }
    f
}

fn framed(f: &[u8]) -> Vec<u8> {
    let mut v = (f.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(f);
    v
}

fn stream_net(mtu: u16) -> (Net, UnixStream) {
    let (ours, peer) = UnixStream::pair().unwrap();
    let net = Net::new(NetConfig {
        mac: MAC,
        mtu,
        backend: NetBackend::Stream(OwnedFd::from(ours)),
    })
    .unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    (net, peer)
}

struct Rig {
    net: Net,
    worker: Worker,
    evts: [EventFd; 2],
    interrupt: Interrupt,
    peer: UnixStream,
}

impl Rig {
    fn new(d: &Driver, acked: u64) -> Self {
        let (mut net, peer) = stream_net(65520);
        let evts: [EventFd; 2] = std::array::from_fn(|_| EventFd::new(EFD_NONBLOCK).unwrap());
        let interrupt = Interrupt::new().unwrap();
        let a = Activation {
            mem: d.mem.clone(),
            queues: d.queues(),
            queue_evts: evts.iter().map(|e| e.try_clone().unwrap()).collect(),
            interrupt: interrupt.clone(),
            acked_features: features::VERSION_1 | acked,
        };
        let worker = net
            .build_worker(a, EventFd::new(EFD_NONBLOCK).unwrap())
            .unwrap();
        net.stats.set_link(true);
        Self {
            net,
            worker,
            evts,
            interrupt,
            peer,
        }
    }

    /// Runs the worker a few rounds (short waits), as after a notification
    /// of queue `q`.
    fn pump_q(&mut self, q: usize) {
        self.evts[q].write(1).unwrap();
        for _ in 0..4 {
            assert!(self.worker.step(Some(Duration::from_millis(2))).unwrap());
        }
    }

    fn pump(&mut self) {
        self.pump_q(TX);
    }

    fn counters(&self) -> NetCounters {
        self.net.stats().snapshot()
    }

    /// Reads `n` bytes from the peer.
    fn peer_read(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.peer.read_exact(&mut b).unwrap();
        b
    }

    /// Pumps until the guest has `n` frames (or 3 s).
    fn recv_n(&mut self, d: &mut Driver, n: usize) -> Vec<([u8; 12], Vec<u8>, Vec<u32>)> {
        let start = Instant::now();
        let mut got = Vec::new();
        while got.len() < n && start.elapsed() < Duration::from_secs(3) {
            self.pump_q(RX);
            got.extend(d.recv());
        }
        got
    }
}

#[test]
fn config_checks_features_and_config_space() {
    let (ours, _p) = UnixStream::pair().unwrap();
    let bad_mac = Net::new(NetConfig {
        mac: [1, 2, 3, 4, 5, 6],
        mtu: 1500,
        backend: NetBackend::Stream(ours.into()),
    });
    assert!(matches!(bad_mac, Err(NetError::InvalidMac(m)) if m == "01:02:03:04:05:06"));
    for mtu in [0, MIN_MTU - 1, MAX_MTU + 1] {
        let (ours, _p) = UnixStream::pair().unwrap();
        let r = Net::new(NetConfig {
            mac: MAC,
            mtu,
            backend: NetBackend::Stream(ours.into()),
        });
        assert!(matches!(r, Err(NetError::InvalidMtu(m)) if m == mtu));
    }
    let (dgram, _p) = UnixDatagram::pair().unwrap();
    let r = Net::new(NetConfig {
        mac: MAC,
        mtu: 1500,
        backend: NetBackend::Stream(dgram.into()),
    });
    assert!(matches!(r, Err(NetError::NotUnixStream)), "{r:?}");
    let (ours, _p) = UnixStream::pair().unwrap();
    let r = Net::new(NetConfig {
        mac: MAC,
        mtu: 1500,
        backend: NetBackend::Tap(ours.into()),
    });
    assert!(matches!(r, Err(NetError::NotVnetTap)), "{r:?}");

    let (net, _peer) = stream_net(65520);
    assert_eq!(net.device_type(), 1);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    // Stream: no checksum or segmentation offloads.
    assert_eq!(
        net.features(),
        features::VERSION_1
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_MTU
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_NET_F_MRG_RXBUF
    );
    let mut cfg = [0xffu8; 12];
    net.read_config(0, &mut cfg);
    // Link down until activated; one queue pair; MTU 65520.
    assert_eq!(cfg, [2, 0x48, 0x55, 0x53, 0x4b, 1, 0, 0, 1, 0, 0xf0, 0xff]);
    let mut mtu = [0u8; 2];
    net.read_config(10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 65520);
    let mut past = [0xffu8; 4];
    net.read_config(12, &mut past);
    assert_eq!(past, [0xff; 4], "bytes past the config are the transport's");
}

#[test]
fn tx_frames_from_another_source_mac_are_dropped() {
    let mut d = Driver::new();
    let mut rig = Rig::new(&d, MRG);
    // Another unicast source, a broadcast source, and the NIC's own.
    let mut spoofed = frame(100, 1);
    spoofed[6..12].copy_from_slice(&[0x02, 0xba, 0xd0, 0, 0, 1]);
    let mut bcast = frame(100, 2);
    bcast[6..12].copy_from_slice(&[0xff; 6]);
    let good = frame(100, 3);
    let heads = [d.send(&spoofed), d.send(&bcast), d.send(&good)];
    rig.pump();
    // Every chain goes back to the guest; only the NIC's own frame leaves.
    assert_eq!(
        d.used(TX),
        heads.iter().map(|h| (*h, 0)).collect::<Vec<_>>()
    );
    assert_eq!(rig.peer_read(4 + good.len()), framed(&good));
    let c = rig.counters();
    assert_eq!((c.tx_frames, c.tx_dropped), (1, 2));
}

#[test]
fn tx_frame_reaches_the_stream_peer_with_a_length_prefix() {
    let mut d = Driver::new();
    let mut rig = Rig::new(&d, MRG);
    let f = frame(1000, 1);
    // A header the stream backend must strip, whatever it holds.
    let head = d.send_with([0xaa; 12], &f, 3);
    rig.pump();
    assert_eq!(d.used(TX), vec![(head, 0)]);
    let wire = rig.peer_read(4 + f.len());
    assert_eq!(&wire[..4], &1000u32.to_be_bytes());
    assert_eq!(&wire[4..], &f[..]);
    let f2 = frame(MAX_FRAME, 2);
    d.send(&f2);
    rig.pump();
    assert_eq!(rig.peer_read(4 + MAX_FRAME), framed(&f2));
    let c = rig.counters();
    assert_eq!(
        (c.tx_frames, c.tx_bytes, c.tx_dropped),
        (2, 1000 + MAX_FRAME as u64, 0)
    );
    assert_ne!(rig.interrupt.status(), 0);
}

#[test]
fn rx_frame_from_the_stream_peer_reaches_the_guest() {
    for acked in [MRG, 0] {
        let mut d = Driver::new();
        let mut rig = Rig::new(&d, acked);
        d.add_rx(4, 2048);
        let a = frame(60, 3);
        let b = frame(1514, 4);
        let mut wire = framed(&a);
        wire.extend(framed(&b));
        rig.peer.write_all(&wire).unwrap();
        let got = rig.recv_n(&mut d, 2);
        assert_eq!(got.len(), 2, "acked {acked:#x}");
        let mut want_hdr = [0u8; 12];
        want_hdr[10] = 1;
        assert_eq!(got[0], (want_hdr, a.clone(), vec![72]));
        assert_eq!(got[1], (want_hdr, b.clone(), vec![1526]));
        let c = rig.counters();
        assert_eq!((c.rx_frames, c.rx_bytes, c.rx_dropped), (2, 1574, 0));
    }
}

#[test]
fn frames_round_trip_both_ways_byte_for_byte() {
    let mut d = Driver::new();
    let mut rig = Rig::new(&d, MRG);
    d.add_rx(64, 4096);
    for (i, len) in [14usize, 15, 100, 1514, 4096, 9000, 65520]
        .into_iter()
        .enumerate()
    {
        let f = frame(len, i as u8);
        d.send(&f);
        rig.pump();
        let wire = rig.peer_read(4 + len);
        assert_eq!(wire, framed(&f), "TX {len}");
        // The peer echoes it back.
        rig.peer.write_all(&wire).unwrap();
        let got = rig.recv_n(&mut d, 1);
        assert_eq!(got.len(), 1, "RX {len}");
        assert_eq!(got[0].1, f, "RX {len}");
        d.add_rx(got[0].2.len(), 4096);
    }
}

#[test]
fn mrg_rxbuf_spreads_a_65520_byte_frame_over_4k_buffers() {
    let mut d = Driver::new();
    let mut rig = Rig::new(&d, MRG);
    let f = frame(65520, 7);
    // Half the buffers it needs: the frame waits, nothing is published.
    d.add_rx(8, 4096);
    rig.peer.write_all(&framed(&f)).unwrap();
    rig.pump_q(RX);
    assert!(rig.worker.rx_blocked());
    assert!(d.used(RX).is_empty());
    assert_eq!(rig.counters().rx_frames, 0);
    // The rest: the frame arrives in 16 buffers, num_buffers 16.
    d.add_rx(8, 4096);
    let got = rig.recv_n(&mut d, 1);
    assert_eq!(got.len(), 1);
    let (hdr, data, lens) = &got[0];
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 16);
    assert_eq!(&hdr[..10], &[0; 10]);
    assert_eq!(data, &f);
    let total = 12 + 65520;
    assert_eq!(lens.len(), 16);
    assert!(lens[..15].iter().all(|&l| l == 4096));
    assert_eq!(lens[15] as usize, total - 15 * 4096);
    assert!(!rig.worker.rx_blocked());
    assert_eq!(rig.counters().rx_bytes, 65520);
}

#[test]
fn rx_resumes_on_any_wake_up_and_then_waits_on_the_backend_again() {
    let mut d = Driver::new();
    let mut rig = Rig::new(&d, MRG);
    rig.peer.write_all(&framed(&frame(100, 1))).unwrap();
    rig.pump_q(RX);
    assert!(rig.worker.rx_blocked());
    // Buffers arrive, but the wake-up is a TX notification.
    d.add_rx(4, 4096);
    rig.pump_q(TX);
    assert_eq!(d.recv().len(), 1);
    assert!(!rig.worker.rx_blocked());
    // No notification at all now: the readable backend wakes the worker.
    rig.peer.write_all(&framed(&frame(200, 2))).unwrap();
    for _ in 0..4 {
        rig.worker.step(Some(Duration::from_millis(50))).unwrap();
    }
    let got = d.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, frame(200, 2));
}

#[test]
fn without_mrg_rxbuf_a_frame_too_big_for_the_buffer_is_dropped() {
    let mut d = Driver::new();
    let mut rig = Rig::new(&d, 0);
    d.add_rx(2, 4096);
    let mut wire = framed(&frame(9000, 1));
    wire.extend(framed(&frame(1000, 2)));
    rig.peer.write_all(&wire).unwrap();
    let got = rig.recv_n(&mut d, 1);
    // The big one is dropped and its buffer kept for the small one.
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, frame(1000, 2));
    let c = rig.counters();
    assert_eq!((c.rx_frames, c.rx_dropped), (1, 1));
}

#[test]
fn rx_frame_larger_than_the_whole_ring_is_dropped() {
    let mut d = Driver::new();
    let mut rig = Rig::new(&d, MRG);
    // 256 buffers of 64 bytes: 16 KiB, never enough for a 20000-byte frame.
    d.add_rx(256, 64);
    let mut wire = framed(&frame(20000, 1));
    wire.extend(framed(&frame(100, 2)));
    rig.peer.write_all(&wire).unwrap();
    let got = rig.recv_n(&mut d, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, frame(100, 2));
    assert_eq!(got[0].2.len(), 2);
    assert_eq!(rig.counters().rx_dropped, 1);
}

#[test]
fn malformed_tx_chains_are_dropped_and_the_device_keeps_working() {
    let mut d = Driver::new();
    let mut rig = Rig::new(&d, MRG);
    let good = frame(200, 9);
    let buf = d.alloc(70000);
    d.mem
        .write_slice(&vec![0u8; 70000], GuestAddress(buf))
        .unwrap();
    let mut heads = vec![
        // Too short: header + 13 bytes.
        d.push_chain(TX, &[(buf, 12 + 13, 0)]),
        // Header only.
        d.push_chain(TX, &[(buf, 12, 0)]),
        // Too long: header + 65536 bytes, in two descriptors.
        d.push_chain(TX, &[(buf, 12, 0), (buf, 65536, 0)]),
        // A device-writable descriptor.
        d.push_chain(TX, &[(buf, 12, 0), (buf, 100, W)]),
        // Outside guest memory, straddling its end, wrapping the address space.
        d.push_chain(TX, &[(buf, 12, 0), (MEM_SIZE + 0x1000, 100, 0)]),
        d.push_chain(TX, &[(MEM_SIZE - 50, 100, 0)]),
        d.push_chain(TX, &[(u64::MAX - 10, 100, 0)]),
    ];
    // A descriptor loop: a -> b -> a.
    let a = d.next_desc[TX];
    let b = a + 1;
    d.store(TX, a, buf, 64, N, b);
    d.store(TX, b, buf, 64, N, a);
    d.next_desc[TX] += 2;
    d.publish(TX, a);
    heads.push(a);
    // A self-loop of zero-length descriptors (no length bound helps).
    let c = d.next_desc[TX];
    d.store(TX, c, buf, 0, N, c);
    d.next_desc[TX] += 1;
    d.publish(TX, c);
    heads.push(c);
    // A next index past the table.
    let e = d.next_desc[TX];
    d.store(TX, e, buf, 64, N, 999);
    d.next_desc[TX] += 1;
    d.publish(TX, e);
    heads.push(e);
    // Then a good frame.
    heads.push(d.send(&good));
    rig.pump();
    let used: Vec<u16> = d.used(TX).into_iter().map(|(h, _)| h).collect();
    assert_eq!(used, heads, "every chain comes back, in order");
    assert_eq!(rig.peer_read(4 + good.len()), framed(&good));
    let c = rig.counters();
    assert_eq!((c.tx_frames, c.tx_dropped), (1, heads.len() as u64 - 1));
    // Still working.
    d.send(&good);
    rig.pump();
    assert_eq!(rig.peer_read(4 + good.len()), framed(&good));
    assert!(rig.net.stats().link_up());
}

#[test]
fn malformed_rx_chains_are_returned_empty_and_the_device_keeps_working() {
    let mut d = Driver::new();
    let mut rig = Rig::new(&d, MRG);
    let buf = d.alloc(4096);
    // A device-readable RX descriptor, a buffer outside memory, a loop.
    let h1 = d.push_chain(RX, &[(buf, 4096, 0)]);
    rig.peer.write_all(&framed(&frame(100, 1))).unwrap();
    rig.pump_q(RX);
    let h2 = d.push_chain(RX, &[(MEM_SIZE - 10, 4096, W)]);
    rig.peer.write_all(&framed(&frame(100, 2))).unwrap();
    rig.pump_q(RX);
    let a = d.next_desc[RX];
    d.store(RX, a, buf, 0, W | N, a);
    d.next_desc[RX] += 1;
    d.publish(RX, a);
    rig.peer.write_all(&framed(&frame(100, 3))).unwrap();
    rig.pump_q(RX);
    assert_eq!(d.used(RX), vec![(h1, 0), (h2, 0), (a, 0)]);
    assert_eq!(rig.counters().rx_dropped, 3);
    // A merged frame whose second chain is bad: both go back empty.
    let g = d.alloc(4096);
    let h3 = d.push_chain(RX, &[(g, 4096, W)]);
    let h4 = d.push_chain(RX, &[(g, 4096, 0)]);
    rig.peer.write_all(&framed(&frame(6000, 4))).unwrap();
    rig.pump_q(RX);
    assert_eq!(d.used(RX), vec![(h3, 0), (h4, 0)]);
    // Good buffers work.
    d.add_rx(2, 4096);
    rig.peer.write_all(&framed(&frame(5000, 5))).unwrap();
    let got = rig.recv_n(&mut d, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, frame(5000, 5));
    assert_eq!(rig.counters().rx_dropped, 4);
}

#[test]
fn tx_flood_with_a_peer_that_never_reads_is_bounded() {
    let mut d = Driver::new();
    let mut rig = Rig::new(&d, MRG);
    let f = frame(MAX_FRAME, 5);
    let mut pkt = vec![0u8; 12];
    pkt.extend_from_slice(&f);
    let buf = d.alloc(pkt.len() as u32);
    d.mem.write_slice(&pkt, GuestAddress(buf)).unwrap();
    let total = 200;
    let mut pushed = 0;
    let mut consumed = 0;
    // The guest keeps the ring full; the peer reads nothing.
    let start = Instant::now();
    for _ in 0..20 {
        while pushed - consumed < usize::from(QUEUE_SIZE) && pushed < total {
            d.push_chain(TX, &[(buf, pkt.len() as u32, 0)]);
            pushed += 1;
        }
        let t = Instant::now();
        rig.pump();
        assert!(t.elapsed() < Duration::from_secs(1), "a step blocked");
        consumed += d.used(TX).len();
        assert!(rig.worker.backend().tx_backlog() <= STREAM_TX_BACKLOG);
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    // Socket buffer plus backlog: far from the 200 frames (13 MiB).
    assert!(consumed < 60, "{consumed} frames taken with nobody reading");
    assert!(consumed > 0);
    // The worker still answers the kill eventfd.
    // Now the peer reads: everything arrives, in order, framed.
    let mut peer = rig.peer.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = 0;
        let mut b = vec![0u8; 4 + MAX_FRAME];
        while got < total {
            peer.read_exact(&mut b).unwrap();
            assert_eq!(&b[..4], &(MAX_FRAME as u32).to_be_bytes());
            assert!(b[4..] == f[..], "frame {got} differs");
            got += 1;
        }
        got
    });
    let until = Instant::now() + Duration::from_secs(20);
    while consumed < total && Instant::now() < until {
        while pushed - consumed < usize::from(QUEUE_SIZE) && pushed < total {
            d.push_chain(TX, &[(buf, pkt.len() as u32, 0)]);
            pushed += 1;
        }
        rig.pump();
        consumed += d.used(TX).len();
    }
    assert_eq!(consumed, total);
    for _ in 0..50 {
        if rig.worker.backend().tx_backlog() == 0 {
            break;
        }
        rig.pump();
    }
    assert_eq!(reader.join().unwrap(), total);
    assert_eq!(rig.counters().tx_frames, total as u64);
    assert_eq!(rig.counters().tx_dropped, 0);
}

#[test]
fn rx_flood_with_no_guest_buffers_stops_reading_the_peer() {
    let mut d = Driver::new();
    let mut rig = Rig::new(&d, MRG);
    rig.peer.set_nonblocking(true).unwrap();
    let f = frame(1500, 6);
    let wire = framed(&f);
    // The peer writes until the socket refuses, the worker running all along.
    let mut sent = 0usize;
    let mut off = 0usize;
    let mut refused = 0;
    while refused < 5 && sent < 10_000 {
        match rig.peer.write(&wire[off..]) {
            Ok(n) => {
                off += n;
                if off == wire.len() {
                    sent += 1;
                    off = 0;
                }
                refused = 0;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                refused += 1;
                rig.pump_q(RX);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(rig.worker.rx_blocked());
    // What the device holds is its fixed buffer: the peer was stopped by
    // the socket after at most that much plus the socket's own buffering.
    assert!(
        sent * wire.len() < STREAM_RX_BUF + 4 * 1024 * 1024,
        "{sent} frames accepted"
    );
    // Blocked, the worker sleeps rather than spinning on the readable fd.
    let t = Instant::now();
    let mut steps = 0;
    while t.elapsed() < Duration::from_millis(100) {
        rig.worker.step(Some(Duration::from_millis(20))).unwrap();
        steps += 1;
    }
    assert!(steps <= 8, "{steps} wake-ups in 100 ms while blocked");
    assert_eq!(rig.counters().rx_frames, 0);
    // Buffers: every frame arrives, none lost (the stream never drops).
    // A frame the socket took in part is finished as room appears.
    if off > 0 {
        sent += 1;
    }
    let mut got = 0;
    let until = Instant::now() + Duration::from_secs(10);
    while got < sent && Instant::now() < until {
        if off > 0
            && let Ok(n) = rig.peer.write(&wire[off..])
        {
            off = (off + n) % wire.len();
        }
        d.add_rx(64, 2048);
        for (_, data, _) in rig.recv_n(&mut d, 64) {
            assert_eq!(data, f);
            got += 1;
        }
    }
    assert_eq!(got, sent);
    assert_eq!(rig.counters().rx_dropped, 0);
}

#[test]
fn no_interrupt_while_the_driver_suppresses_them() {
    let mut d = Driver::new();
    let mut rig = Rig::new(&d, MRG);
    d.set_no_interrupt(TX, true);
    d.send(&frame(100, 1));
    rig.pump();
    assert_eq!(d.used(TX).len(), 1);
    assert_eq!(rig.interrupt.status(), 0);
    d.set_no_interrupt(TX, false);
    d.send(&frame(100, 1));
    rig.pump();
    assert_ne!(rig.interrupt.status(), 0);
}

#[test]
fn an_oversized_length_prefix_stops_the_backend() {
    for len in [MAX_FRAME as u32 + 1, u32::MAX] {
        let mut d = Driver::new();
        let mut rig = Rig::new(&d, MRG);
        d.add_rx(4, 4096);
        rig.peer.write_all(&framed(&frame(100, 1))).unwrap();
        let mut bad = len.to_be_bytes().to_vec();
        bad.extend_from_slice(&[0u8; 64]);
        rig.peer.write_all(&bad).unwrap();
        let got = rig.recv_n(&mut d, 1);
        assert_eq!(got.len(), 1, "the frame before the bad prefix arrives");
        rig.pump_q(RX);
        assert!(!rig.net.stats().link_up());
        assert!(!rig.worker.backend_alive());
        assert_ne!(rig.interrupt.status() & VIRTIO_MMIO_INT_CONFIG, 0);
        // The peer sees the end of the stream.
        let mut b = [0u8; 8];
        assert_eq!(rig.peer.read(&mut b).unwrap(), 0);
        // TX is still taken from the guest (and dropped), never stuck.
        d.send(&frame(100, 2));
        rig.pump();
        assert_eq!(d.used(TX).len(), 1);
        assert_eq!(rig.counters().tx_dropped, 1);
        let mut cfg = [0u8; 2];
        rig.net.read_config(6, &mut cfg);
        assert_eq!(cfg, [0, 0], "status: link down");
    }
}

#[test]
fn short_frames_from_the_peer_are_dropped_and_the_stream_goes_on() {
    let mut d = Driver::new();
    let mut rig = Rig::new(&d, MRG);
    d.add_rx(4, 4096);
    let mut wire = 0u32.to_be_bytes().to_vec();
    wire.extend(framed(&[1u8; 13]));
    wire.extend(framed(&frame(60, 1)));
    rig.peer.write_all(&wire).unwrap();
    let got = rig.recv_n(&mut d, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, frame(60, 1));
    assert_eq!(rig.counters().rx_dropped, 2);
    assert!(rig.net.stats().link_up());
}

#[test]
fn peer_closing_takes_the_link_down() {
    let mut d = Driver::new();
    let mut rig = Rig::new(&d, MRG);
    d.add_rx(4, 4096);
    rig.peer.write_all(&framed(&frame(60, 1))).unwrap();
    rig.peer.shutdown(std::net::Shutdown::Both).unwrap();
    let got = rig.recv_n(&mut d, 1);
    assert_eq!(got.len(), 1, "data sent before the close still arrives");
    rig.pump_q(RX);
    assert!(!rig.net.stats().link_up());
    assert_ne!(rig.interrupt.status() & VIRTIO_MMIO_INT_CONFIG, 0);
}

/// Polls `f` every millisecond for up to 3 s.
fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

fn activation(d: &Driver, interrupt: &Interrupt, evts: &[EventFd; 2], acked: u64) -> Activation {
    Activation {
        mem: d.mem.clone(),
        queues: d.queues(),
        queue_evts: evts.iter().map(|e| e.try_clone().unwrap()).collect(),
        interrupt: interrupt.clone(),
        acked_features: features::VERSION_1 | acked,
    }
}

#[test]
fn reset_then_reactivate_keeps_the_stream_framing() {
    let (mut net, mut peer) = stream_net(1500);
    let stats = net.stats();
    let interrupt = Interrupt::new().unwrap();
    let evts: [EventFd; 2] = std::array::from_fn(|_| EventFd::new(EFD_NONBLOCK).unwrap());

    // Refused activations keep the backend.
    let mut bad = activation(&Driver::new(), &interrupt, &evts, MRG);
    bad.queues.pop();
    assert!(matches!(
        net.activate(bad),
        Err(ActivateError::QueueCount { expected: 2, .. })
    ));
    let mut bad = activation(&Driver::new(), &interrupt, &evts, MRG);
    bad.queues[1].set_ready(false);
    assert!(matches!(
        net.activate(bad),
        Err(ActivateError::QueueNotReady(1))
    ));

    let mut d = Driver::new();
    net.activate(activation(&d, &interrupt, &evts, MRG))
        .unwrap();
    assert!(net.is_running());
    assert!(stats.link_up());
    assert_ne!(interrupt.status() & VIRTIO_MMIO_INT_CONFIG, 0);
    assert!(matches!(
        net.activate(activation(&d, &interrupt, &evts, MRG)),
        Err(ActivateError::AlreadyActive)
    ));
    d.add_rx(4, 4096);
    evts[RX].write(1).unwrap();
    peer.write_all(&framed(&frame(100, 1))).unwrap();
    let mut got = Vec::new();
    assert!(wait_for(|| {
        got.extend(d.recv());
        !got.is_empty()
    }));
    assert_eq!(got[0].1, frame(100, 1));
    d.send(&frame(300, 2));
    evts[TX].write(1).unwrap();
    let mut b = vec![0u8; 304];
    peer.read_exact(&mut b).unwrap();
    assert_eq!(b, framed(&frame(300, 2)));

    // Half a frame arrives, then the driver resets the device.
    let wire = framed(&frame(1000, 3));
    peer.write_all(&wire[..500]).unwrap();
    assert!(wait_for(|| stats.snapshot().rx_frames == 1));
    std::thread::sleep(Duration::from_millis(20));
    net.reset();
    assert!(!net.is_running());
    assert!(!stats.link_up());
    peer.write_all(&wire[500..]).unwrap();

    // A new driver instance: fresh rings; the frame arrives whole.
    let mut d = Driver::new();
    net.activate(activation(&d, &interrupt, &evts, 0)).unwrap();
    assert!(stats.link_up());
    d.add_rx(4, 2048);
    evts[RX].write(1).unwrap();
    let mut got = Vec::new();
    assert!(wait_for(|| {
        got.extend(d.recv());
        !got.is_empty()
    }));
    assert_eq!(got[0].1, frame(1000, 3));
    let c = stats.snapshot();
    assert_eq!((c.rx_frames, c.tx_frames, c.rx_dropped), (2, 1, 0));
    // Dropping the device stops the worker and closes the stream.
    drop(net);
    let mut b = [0u8; 4];
    assert_eq!(peer.read(&mut b).unwrap(), 0);
}

fn link_exists(name: &str) -> bool {
    std::process::Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn open_tap_as_root() {
    // SAFETY: geteuid(2) has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP open_tap_as_root: not running as root (TUNSETIFF needs CAP_NET_ADMIN)");
        return;
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        println!("SKIP open_tap_as_root: no /dev/net/tun");
        return;
    }
    let (fd, name) = match open_tap("hsknet%d") {
        Ok(t) => t,
        Err(TapError::SetIff { source, .. }) if source.raw_os_error() == Some(libc::EPERM) => {
            println!("SKIP open_tap_as_root: TUNSETIFF refused (EPERM: no CAP_NET_ADMIN here)");
            return;
        }
        Err(e) => panic!("open_tap: {e:?}"),
    };
    assert!(name.starts_with("hsknet"), "{name}");
    assert!(!name.contains('%'));
    assert!(link_exists(&name), "ip link does not show {name}");

    let mut net = Net::new(NetConfig {
        mac: MAC,
        mtu: 1500,
        backend: NetBackend::Tap(fd),
    })
    .unwrap();
    let all = BASE_FEATURES | TAP_OFFLOAD_FEATURES;
    assert_eq!(net.features(), all);
    // Activation applies the acked offloads (TUNSETOFFLOAD must accept them).
    let d = Driver::new();
    let interrupt = Interrupt::new().unwrap();
    let evts: [EventFd; 2] = std::array::from_fn(|_| EventFd::new(EFD_NONBLOCK).unwrap());
    let acked = MRG
        | 1 << VIRTIO_NET_F_CSUM
        | 1 << VIRTIO_NET_F_GUEST_CSUM
        | 1 << VIRTIO_NET_F_GUEST_TSO4
        | 1 << VIRTIO_NET_F_GUEST_TSO6;
    net.activate(activation(&d, &interrupt, &evts, acked))
        .unwrap();
    assert!(net.stats().link_up());
    net.reset();
    // And again with none.
    net.activate(activation(&Driver::new(), &interrupt, &evts, 0))
        .unwrap();
    net.reset();

    // TX into the TAP once the interface is up: the kernel counts it.
    let up = std::process::Command::new("ip")
        .args(["link", "set", "dev", &name, "up"])
        .status()
        .is_ok_and(|s| s.success());
    if up {
        let rx_before =
            std::fs::read_to_string(format!("/sys/class/net/{name}/statistics/rx_packets"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok());
        let mut d = Driver::new();
        net.activate(activation(&d, &interrupt, &evts, acked))
            .unwrap();
        // A broadcast frame with a valid header (no offload).
        let mut f = frame(60, 1);
        f[..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&MAC);
        d.send(&f);
        evts[TX].write(1).unwrap();
        assert!(
            wait_for(|| net.stats().snapshot().tx_frames == 1),
            "{:?}",
            net.stats().snapshot()
        );
        if let Some(before) = rx_before {
            let after =
                std::fs::read_to_string(format!("/sys/class/net/{name}/statistics/rx_packets"))
                    .unwrap();
            assert!(after.trim().parse::<u64>().unwrap() > before);
        }
        // A header with an offload the guest did not negotiate is dropped.
        let mut hdr = [0u8; 12];
        hdr[1] = 5; // GSO_UDP_L4
        d.send_with(hdr, &f, 1);
        evts[TX].write(1).unwrap();
        assert!(wait_for(|| net.stats().snapshot().tx_dropped == 1));
        net.reset();
    } else {
        println!("note: open_tap_as_root: cannot set {name} up; TX through the TAP not checked");
    }
    drop(net);
    assert!(!link_exists(&name), "{name} outlived its fd");
}
