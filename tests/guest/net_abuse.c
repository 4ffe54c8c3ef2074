/* A hostile guest's frames, for the network end-to-end test: sends raw
 * Ethernet frames that no stack would (runts, garbage ethertypes, IPv4 and
 * ARP with lying length fields, broadcast garbage, the largest frame the
 * MTU lets through) on an interface through AF_PACKET, then floods it with
 * garbage for a few seconds as fast as the guest can. The host side (the
 * virtio-net device, passt or the bridge) must drop what it cannot use and
 * keep serving the VM.
 *
 *   net_abuse IFACE SECONDS [PHASES]
 *
 * PHASES: a comma-separated subset of runt,ether,ipv4,arp,big,spoof,flood
 * (all by default), to find which kind of frame a backend mishandles.
 * Every frame comes from the interface's own MAC except in `spoof`, which
 * sends as other MACs (a device that let those through would have passt
 * answer the forged address, and on a bridge impersonate neighbours).
 *
 * Prints "abuse: N malformed, F flood frames (B bytes) in S s, R refused"
 * and exits 0 when the socket worked; nonzero when it could not start.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static unsigned char frame[65536];
static uint32_t seed = 12345;

static uint32_t rnd(void) {
    seed = seed * 1103515245u + 12345u;
    return seed >> 8;
}

static void garbage(unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)rnd();
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int fd;
static struct sockaddr_ll to;
static long refused;

/* Sends n bytes of frame; counts what the guest kernel refuses. */
static int put(size_t n) {
    if (sendto(fd, frame, n, MSG_DONTWAIT, (struct sockaddr *)&to, sizeof to) < 0) {
        refused++;
        return 0;
    }
    return 1;
}

/* The interface's own MAC, the source of every frame but the spoofed. */
static unsigned char own[6];

/* An Ethernet header: to `dst` (6 bytes), from the interface. */
static void eth(const unsigned char *dst, uint16_t type) {
    memcpy(frame, dst, 6);
    memcpy(frame + 6, own, 6);
    frame[12] = type >> 8;
    frame[13] = type & 0xff;
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: net_abuse IFACE SECONDS [runt,ether,ipv4,arp,big,spoof,flood]\n");
        return 2;
    }
    const char *phases = argc == 4 ? argv[3] : "runt,ether,ipv4,arp,big,spoof,flood";
#define PHASE(name) (strstr(phases, name) != NULL)
    double secs = atof(argv[2]);
    fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (fd < 0) {
        perror("socket(AF_PACKET)");
        return 1;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", argv[1]);
    if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0) {
        perror("SIOCGIFINDEX");
        return 1;
    }
    int ifindex = ifr.ifr_ifindex;
    if (ioctl(fd, SIOCGIFMTU, &ifr) < 0) {
        perror("SIOCGIFMTU");
        return 1;
    }
    int mtu = ifr.ifr_mtu;
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) {
        perror("SIOCGIFHWADDR");
        return 1;
    }
    memcpy(own, ifr.ifr_hwaddr.sa_data, 6);
    memset(&to, 0, sizeof to);
    to.sll_family = AF_PACKET;
    to.sll_ifindex = ifindex;
    to.sll_halen = 6;

    const unsigned char bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    const unsigned char uni[6] = {0x02, 0x00, 0x00, 0x00, 0x00, 0x02};
    long malformed = 0;

    /* Runts: a bare header, and shorter than the 60-byte minimum. */
    for (size_t n = 14; PHASE("runt") && n < 60; n += 7) {
        eth(uni, (uint16_t)rnd());
        garbage(frame + 14, n - 14);
        malformed += put(n);
    }
    /* Garbage ethertypes, to a unicast and the broadcast address. */
    for (int i = 0; PHASE("ether") && i < 64; i++) {
        eth(i % 2 ? bcast : uni, (uint16_t)rnd());
        size_t n = 60 + rnd() % 1454;
        garbage(frame + 14, n - 14);
        malformed += put(n);
    }
    /* IPv4 whose header lies: IHL below 5 and past the frame, total
     * length 0 and 65535, bad checksums, truncated after the header. */
    const unsigned char ihl[] = {0x40, 0x41, 0x4f, 0x45, 0x46};
    for (int i = 0; PHASE("ipv4") && i < 40; i++) {
        eth(i % 2 ? bcast : uni, ETHERTYPE_IP);
        garbage(frame + 14, 60);
        frame[14] = ihl[i % sizeof ihl];
        uint16_t total = (i % 3 == 0) ? 0 : (i % 3 == 1) ? 65535 : (uint16_t)rnd();
        frame[16] = total >> 8;
        frame[17] = total & 0xff;
        frame[23] = (i % 2) ? 6 : 17; /* TCP, UDP */
        malformed += put(14 + 20 + (i % 4) * 10);
    }
    /* ARP with wrong hardware and protocol lengths. */
    for (int i = 0; PHASE("arp") && i < 16; i++) {
        eth(bcast, ETHERTYPE_ARP);
        garbage(frame + 14, 46);
        frame[18] = (unsigned char)rnd(); /* hlen */
        frame[19] = (unsigned char)rnd(); /* plen */
        malformed += put(60);
    }
    /* The largest frame the MTU allows, and one byte more (refused by the
     * guest kernel, which is fine: the device never sees it). */
    if (PHASE("big")) {
        eth(uni, (uint16_t)rnd());
        garbage(frame + 14, (size_t)mtu);
        malformed += put(14 + (size_t)mtu);
        put(14 + (size_t)mtu + 1);
    }

    /* Spoofed sources: other unicast MACs, the broadcast address, zero. */
    for (int i = 0; PHASE("spoof") && i < 16; i++) {
        eth(i % 2 ? bcast : uni, ETHERTYPE_ARP);
        unsigned char src[6] = {0x02, 0xba, 0xd0, 0x00, 0x00, (unsigned char)i};
        if (i == 14)
            memset(src, 0xff, 6);
        if (i == 15)
            memset(src, 0, 6);
        memcpy(frame + 6, src, 6);
        garbage(frame + 14, 46);
        malformed += put(60);
    }

    /* The flood. */
    long flood = 0;
    long long bytes = 0;
    double t0 = now();
    while (PHASE("flood") && now() - t0 < secs) {
        for (int i = 0; i < 64; i++) {
            eth(i % 8 ? uni : bcast, (uint16_t)rnd());
            size_t n = 60 + rnd() % 1454;
            frame[14] = (unsigned char)rnd();
            if (put(n)) {
                flood++;
                bytes += (long long)n;
            }
        }
    }
    printf("abuse: %ld malformed, %ld flood frames (%lld bytes) in %.1f s, %ld refused, mtu %d\n",
           malformed, flood, bytes, now() - t0, refused, mtu);
    return 0;
}
