"""The RTT sample decoder: ``struct rtt_event`` bytes -> EventRecord (addresses, ports, srtt in ns)."""

from __future__ import annotations

import socket

from retina_core.record import CONN_RTT, FlowRecord
from retina_exporter.bpf import tcprtt as layout
from retina_exporter.plugins.packetparser.rtt import RttDecoder


def event(saddr: bytes, daddr: bytes, ipv: int, srtt_us: int = 77, sport: int = 40000, dport: int = 5711) -> bytes:
    return layout.EVENT_STRUCT.pack(123, saddr.ljust(16, b"\0"), daddr.ljust(16, b"\0"), srtt_us, sport, dport, ipv)


def test_decode_ipv4_ipv6_and_v4_mapped():
    d = RttDecoder("node")
    a4, b4 = socket.inet_aton("10.244.0.10"), socket.inet_aton("10.244.0.11")
    a6, b6 = socket.inet_pton(socket.AF_INET6, "fd00:244::10"), socket.inet_pton(socket.AF_INET6, "fd00:244::11")
    mapped = b"\0" * 10 + b"\xff\xff"
    for raw, want in ((event(a4, b4, 4), (4, a4, b4)), (event(a6, b6, 6), (6, a6, b6)),
                      (event(mapped + a4, mapped + b4, 6), (4, a4, b4))):
        rec = d.decode(raw)
        assert (rec.ip_version, rec.src_ip, rec.dst_ip) == want
        assert (rec.src_port, rec.dst_port, rec.rtt_ns, rec.conn_event, rec.packets) == (40000, 5711, 77_000,
                                                                                         CONN_RTT, 0)
        assert rec.__class__ is not FlowRecord and isinstance(rec, FlowRecord)  # an event: Hubble skips it
        assert rec.time_ns == 123 + d.offset_ns and rec.node_name == "node"
