#!/usr/bin/env python3
"""Shows, with passt alone (no VM, no husk), that Debian 12's passt
(0.0~git20230309) resets a TCP connection the guest opened 24 s after its
handshake when the peer has not sent a byte.

passt runs with husk's own arguments on one end of a socketpair (its
`--fd` mode, 4-byte big-endian length before each Ethernet frame); this
script is the guest on the other end: it answers nothing but ARP, opens a
TCP connection to a listener on the host, ACKs passt's SYN,ACK, sends 9
bytes every GAP seconds (default 2) and prints what passt sends back.

    python3 benches/passt_outbound_reset.py            # peer silent: RST at 24.0 s
    python3 benches/passt_outbound_reset.py --greet    # peer sends 1 byte: no RST

Runs passt with husk's arguments (as root it drops to nobody by itself, as
in husk); needs `passt` (apt-get install passt). Exits 0 when the
outcome is the one this passt is known for (a reset without --greet, none
with it within 40 s), 1 otherwise, 2 if it could not run.
"""
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time

GUEST_MAC = bytes.fromhex("02420a000264")
GUEST_IP = bytes([10, 0, 2, 100])
GATEWAY_IP = bytes([10, 0, 2, 2])
LIMIT_S = 40


def host_ip():
    """The host's address on its default route (what a container reaches)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("203.0.113.1", 9))  # TEST-NET-3: a route lookup, nothing sent
        return s.getsockname()[0]
    finally:
        s.close()


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def listener(ip, greet):
    """A host peer that reads (and, with greet, first sends one byte)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, 0))
    srv.listen(1)

    def serve():
        c, _ = srv.accept()
        if greet:
            c.send(b"h")
        while c.recv(65536):
            pass

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1]


def main():
    greet = "--greet" in sys.argv[1:]
    gap = float(os.environ.get("GAP", "2"))
    dst_ip = host_ip()
    dst = socket.inet_aton(dst_ip)
    port = listener(dst_ip, greet)
    sport = 40000 + os.getpid() % 20000
    ours, theirs = socket.socketpair()
    log = "/tmp/passt-outbound-reset-%d.log" % os.getpid()
    args = ["passt", "--foreground", "--quiet", "--ipv4-only", "--no-dhcp",
            "--no-ndp", "--no-dhcpv6", "--no-ra", "--log-file", log,
            "--address", "10.0.2.100", "--netmask", "24", "--gateway", "10.0.2.2",
            "--mtu", "65520", "--dns-forward", "10.0.2.3", "--no-map-gw",
            "--tcp-ports", "none", "--udp-ports", "none",
            "--fd", str(theirs.fileno())]
    try:
        passt = subprocess.Popen(args, pass_fds=[theirs.fileno()])
    except FileNotFoundError:
        print("passt is not installed (apt-get install passt)")
        return 2
    theirs.close()
    peer_mac = [b"\xff" * 6]

    def send_frame(frame):
        ours.sendall(struct.pack("!I", len(frame)) + frame)

    def send_tcp(seq, ack, flags, data=b"", opts=b""):
        th = struct.pack("!HHIIBBHHH", sport, port, seq, ack,
                         ((20 + len(opts)) // 4) << 4, flags, 2047, 0, 0) + opts
        pseudo = GUEST_IP + dst + struct.pack("!BBH", 0, 6, len(th) + len(data))
        th = th[:16] + struct.pack("!H", checksum(pseudo + th + data)) + th[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(th) + len(data), 1,
                         0x4000, 64, 6, 0, GUEST_IP, dst)
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        send_frame(peer_mac[0] + GUEST_MAC + b"\x08\x00" + ip + th + data)

    # ARP for the gateway: passt learns the guest's MAC and answers.
    send_frame(b"\xff" * 6 + GUEST_MAC + b"\x08\x06"
               + struct.pack("!HHBBH", 1, 0x800, 6, 4, 1)
               + GUEST_MAC + GUEST_IP + b"\0" * 6 + GATEWAY_IP)
    buf = b""
    state, iss, sent, rcv, last, t_conn = "arp", 1000, 0, 0, 0.0, None
    start = time.time()
    outcome = None
    while outcome is None:
        now = time.time()
        if t_conn and now - t_conn > LIMIT_S:
            outcome = "none"
            break
        if now - start > LIMIT_S + 20:
            print("no connection: see", log)
            passt.kill()
            return 2
        ready, _, _ = select.select([ours], [], [], 0.2)
        if ready:
            data = ours.recv(1 << 20)
            if not data:
                print("passt closed its socket: see", log)
                return 2
            buf += data
        while len(buf) >= 4 and len(buf) >= 4 + struct.unpack("!I", buf[:4])[0]:
            n = struct.unpack("!I", buf[:4])[0]
            frame, buf = buf[4:4 + n], buf[4 + n:]
            if frame[12:14] == b"\x08\x06" and state == "arp":
                peer_mac[0] = frame[6:12]
                send_tcp(iss, 0, 0x02, opts=b"\x02\x04\xff\xc8\x01\x03\x03\x07")
                state = "syn"
            elif frame[12:14] == b"\x08\x00":
                ip = frame[14:]
                ihl = (ip[0] & 15) * 4
                th = ip[ihl:]
                _, _, seq, _, off, flags = struct.unpack("!HHIIBB", th[:14])
                plen = len(ip) - ihl - (off >> 4) * 4
                if flags & 0x12 == 0x12 and state == "syn":
                    rcv, sent, state, t_conn = seq + 1, iss + 1, "est", time.time()
                    send_tcp(sent, rcv, 0x10)
                    print("connected to %s:%d" % (dst_ip, port))
                elif state == "est" and plen > 0:
                    rcv = seq + plen
                    send_tcp(sent, rcv, 0x10)
                    print("%.1f s: %d byte(s) from the peer, acknowledged"
                          % (time.time() - t_conn, plen))
                if flags & 0x04:
                    outcome = "%.1f" % (time.time() - t_conn)
        if state == "est" and time.time() - last > gap:
            send_tcp(sent, rcv, 0x18, b"x" * 9)
            sent += 9
            last = time.time()
    passt.kill()
    passt.wait()
    if outcome == "none":
        print("no reset within %d s" % LIMIT_S)
        return 0 if greet else 1
    print("passt reset the connection %s s after the handshake" % outcome)
    return 1 if greet else 0


if __name__ == "__main__":
    sys.exit(main())
