"""A delaying forwarder for lab tests (this kernel has no netem, fq or ETF qdisc): run inside a pod's network
namespace, it creates a TUN device, and every IPv4 packet the pod routes into it is sent on to ``eth0`` as an
Ethernet frame to the peer's MAC address ``delay_ms`` later (AF_PACKET). Route a destination through the device
(``ip route add <peer>/32 dev <tun> src <own ip>``) and that direction of the path gets the delay; the other
direction is untouched, so a TCP connection's RTT is the delay plus the bridge's.

Usage: ``python delayer.py <tun name> <eth0> <own MAC> <peer MAC> <delay ms>``; prints ``ready`` once the device
exists, runs until killed.
"""

from __future__ import annotations

import fcntl
import heapq
import os
import select
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
ETH_P_IP = 0x0800


def main() -> None:
    name, eth, own_mac, peer_mac, delay_ms = sys.argv[1:6]
    delay = float(delay_ms) / 1000
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    out.bind((eth, 0))
    header = bytes.fromhex(peer_mac.replace(":", "")) + bytes.fromhex(own_mac.replace(":", "")) + \
        struct.pack("!H", ETH_P_IP)
    print("ready", flush=True)
    queue: list[tuple[float, int, bytes]] = []
    seq = 0
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else 1.0
        if select.select([fd], [], [], timeout)[0]:
            pkt = os.read(fd, 65536)
            if pkt and pkt[0] >> 4 == 4:
                heapq.heappush(queue, (time.monotonic() + delay, seq, pkt))
                seq += 1
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            out.send(header + heapq.heappop(queue)[2])


if __name__ == "__main__":
    main()
