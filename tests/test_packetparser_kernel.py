"""The packetparser kernel program fed crafted packets through BPF_PROG_TEST_RUN (no interfaces involved).

Each test uses its own 5-tuples, resets the conntrack map and drains the ring buffer before it starts."""

from __future__ import annotations

import ctypes as ct
import socket
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from retina_exporter.datapath.syscall import prog_test_run
from retina_core import record as R
from retina_exporter.bpf import packetparser as layout
from retina_exporter.plugins.packetparser.loader import LoadOptions
from retina_exporter.plugins.packetparser.reader import EventDecoder, RingBufferReader
from retina_exporter.plugins.packetparser.sweeper import ConntrackSweeper

TC_ACT_UNSPEC = -1  # "no verdict": the packet continues
A4, B4 = "10.1.0.1", "10.1.0.2"
A6, B6 = "fd00::1", "fd00::2"


class ListSink:
    def __init__(self):
        self.items = []

    def write_batch(self, items):
        self.items.extend(items)


@pytest.fixture(scope="module")
def harness(pp_program_low):
    sink = ListSink()
    reader = RingBufferReader(pp_program_low.bpf, "events", EventDecoder("test-node"), sink, batch_size=1)
    h = Harness(pp_program_low, reader, sink)
    yield h
    pp_program_low.configure(LoadOptions())


class Harness:
    def __init__(self, prog, reader, sink):
        self.prog = prog
        self.reader = reader
        self.sink = sink

    def reset(self, **opts):
        self.prog.configure(LoadOptions(**opts))
        self.prog.conntrack.clear()
        self.prog.bpf[b"tcp_attempts"].clear()
        self.reader.drain()
        self.sink.items.clear()

    def run(self, pkt, hook="retina_from_ep", repeat=1) -> int:
        res = prog_test_run(self.prog.prog_fd(hook), bytes(pkt), repeat=repeat)
        assert res.retval == TC_ACT_UNSPEC, "a packetparser program must never change the verdict"
        return res.retval

    def events(self):
        self.reader.drain()
        out = list(self.sink.items)
        self.sink.items.clear()
        return out


def eth(payload):
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / payload


def ip4(s):
    return socket.inet_aton(s)


def ip6(s):
    return socket.inet_pton(socket.AF_INET6, s)


def test_layouts_match_the_compiled_c(pp_program_low):
    """The Python mirror has the C compiler's sizes and offsets (bcc builds its ctypes from the C types)."""
    assert ct.sizeof(pp_program_low.conntrack.Key) == ct.sizeof(layout.CtKey) == 44
    assert ct.sizeof(pp_program_low.conntrack.Leaf) == ct.sizeof(layout.CtEntry) == 176
    assert ct.sizeof(pp_program_low.config_map.Leaf) == ct.sizeof(layout.PpConfig) == 64 + 8 * layout.HIST_MAX_BOUNDS
    assert ct.sizeof(layout.PacketEvent) == layout.EVENT_SIZE == 128
    for ours, theirs in ((layout.CtKey, pp_program_low.conntrack.Key), (layout.CtEntry, pp_program_low.conntrack.Leaf)):
        for name, *_ in ours._fields_:
            if name.startswith("_"):
                continue
            assert getattr(ours, name).offset == getattr(theirs, name).offset, name
    # The struct.Struct decoder agrees with the ctypes layout field by field.
    ev = layout.PacketEvent()
    ev.ts_ns, ev.bytes, ev.packets, ev.ifindex, ev.packet_bytes = 1, 2, 3, 4, 5
    ev.src_port, ev.dst_port, ev.tcp_flags, ev.proto, ev.ip_version = 6, 7, 8, 9, 10
    ev.obs_point, ev.traffic_direction, ev.is_reply, ev.report_reason = 11, 12, 13, 14
    ev.icmp_type, ev.icmp_code, ev.conn_event, ev.connect_latency_ns = 15, 16, 17, 2**40 + 18
    for i in range(10):
        ev.flag_counts[i] = 100 + i
    vals = layout.EVENT_STRUCT.unpack(bytes(ev))
    assert vals[0:2] == (1, 2) and vals[4:19] == (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17)
    assert vals[20:30] == tuple(range(100, 110)) and vals[31] == 2**40 + 18


def test_low_every_packet_tcp_handshake_direction_and_flags(harness):
    harness.reset()
    syn = eth(IP(src=A4, dst=B4) / TCP(sport=40000, dport=80, flags="S"))
    synack = eth(IP(src=B4, dst=A4) / TCP(sport=80, dport=40000, flags="SA"))
    ack = eth(IP(src=A4, dst=B4) / TCP(sport=40000, dport=80, flags="A"))
    harness.run(syn, "retina_from_ep")  # the pod sent it: FROM_ENDPOINT, egress
    harness.run(synack, "retina_to_ep")
    harness.run(ack, "retina_from_ep")
    evs = harness.events()
    assert [e.tcp_flags for e in evs] == [R.TCP_SYN, R.TCP_SYN | R.TCP_ACK, R.TCP_ACK]
    assert [e.is_reply for e in evs] == [False, True, False]
    assert [e.obs_point for e in evs] == [R.OBS_FROM_ENDPOINT, R.OBS_TO_ENDPOINT, R.OBS_FROM_ENDPOINT]
    assert all(e.direction == R.DIR_EGRESS for e in evs)
    assert [e.packets for e in evs] == [1, 1, 1]
    assert [e.bytes for e in evs] == [len(syn), len(synack), len(ack)]
    assert [e.packet_bytes for e in evs] == [len(syn), len(synack), len(ack)]
    assert evs[0].src_ip == ip4(A4) and evs[0].dst_ip == ip4(B4) and evs[0].ip_version == 4
    assert (evs[1].src_port, evs[1].dst_port) == (80, 40000)
    assert evs[1].flag_counts[1] == 1 and evs[1].flag_counts[4] == 1 and evs[1].flag_counts[9] == 1
    assert all(e.report_reason == layout.REPORT_EVERY_PACKET for e in evs)


def test_tcp_flags_ece_cwr_ns(harness):
    harness.reset()
    pkt = eth(IP(src=A4, dst=B4) / TCP(sport=40001, dport=80, flags="SECN"))
    harness.run(pkt)
    (ev,) = harness.events()
    assert ev.tcp_flags == R.TCP_SYN | R.TCP_ECE | R.TCP_CWR | R.TCP_NS
    assert ev.flag_counts == (0, 1, 0, 0, 0, 0, 1, 1, 1, 0)


def test_high_aggregation_rides_and_teardown_is_exact(harness):
    """High level: data packets accumulate; the FINs and the final ACK are reported; totals are exact."""
    harness.reset(aggregation_high=True, report_interval_ns=3600 * 10**9)
    c, s = (A4, 41000), (B4, 8080)

    def tcp(src, dst, flags, payload=b""):
        return eth(IP(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], flags=flags) / Raw(payload))

    pkts = [
        (tcp(c, s, "S"), "retina_from_ep"),
        (tcp(s, c, "SA"), "retina_to_ep"),
        (tcp(c, s, "A"), "retina_from_ep"),
    ]
    pkts += [(tcp(c, s, "PA", b"x" * 100), "retina_from_ep") for _ in range(10)]
    pkts += [(tcp(s, c, "A"), "retina_to_ep") for _ in range(5)]
    pkts += [
        (tcp(c, s, "FA"), "retina_from_ep"),
        (tcp(s, c, "A"), "retina_to_ep"),
        (tcp(s, c, "FA"), "retina_to_ep"),
        (tcp(c, s, "A"), "retina_from_ep"),  # the final ACK: the reference agents never report it
    ]
    for p, hook in pkts:
        harness.run(p, hook)
    evs = harness.events()
    assert sum(e.packets for e in evs) == len(pkts)
    assert sum(e.bytes for e in evs) == sum(len(p) for p, _ in pkts)
    # Per direction exactness.
    fwd = [e for e in evs if not e.is_reply]
    rev = [e for e in evs if e.is_reply]
    assert sum(e.packets for e in fwd) == 1 + 1 + 10 + 1 + 1
    assert sum(e.packets for e in rev) == 1 + 5 + 1 + 1
    # Flag totals over all packets.
    totals = [sum(e.flag_counts[i] for e in evs) for i in range(10)]
    assert totals[layout.FLAG_COUNT - 1] == 1  # one SYN-ACK
    assert totals[1] == 2  # SYN: the SYN and the SYN-ACK
    assert totals[0] == 2  # FIN
    assert totals[3] == 10  # PSH
    assert totals[4] == len(pkts) - 1  # every packet but the SYN has ACK
    # Fewer events than packets, and the last event is the final ACK.
    assert len(evs) < len(pkts)
    assert evs[-1].report_reason == layout.REPORT_CLOSE and evs[-1].tcp_flags == R.TCP_ACK
    assert evs[0].report_reason == layout.REPORT_NEW


def test_high_aggregation_sweep_harvests_quiet_udp(harness):
    harness.reset(aggregation_high=True, report_interval_ns=10**9)
    pkt = eth(IP(src=A4, dst=B4) / UDP(sport=5000, dport=6000) / Raw(b"y" * 50))
    for _ in range(20):
        harness.run(pkt)
    evs = harness.events()
    assert sum(e.packets for e in evs) == 1  # only the new-connection report so far
    sweeper = ConntrackSweeper(harness.prog, interval_ns=10**9)
    # Not quiet long enough yet: nothing is harvested.
    assert sweeper.sweep_once().harvested == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sweeper.sweep_once().harvested == 0:
        time.sleep(0.05)
    evs += harness.events()
    assert sum(e.packets for e in evs) == 20
    assert sum(e.bytes for e in evs) == 20 * len(pkt)
    assert evs[-1].report_reason == layout.REPORT_SWEEP and evs[-1].packet_bytes == 0
    assert evs[-1].packets == 19 and evs[-1].obs_point == R.OBS_FROM_ENDPOINT


def test_repeat_counts_exactly_under_test_run_repeat(harness):
    harness.reset()
    pkt = eth(IP(src=A4, dst=B4) / UDP(sport=5001, dport=6001) / Raw(b"z" * 10))
    harness.run(pkt, repeat=1000)
    evs = harness.events()
    lost = harness.prog.lost_counts()["ringbuf_full"]
    assert sum(e.packets for e in evs) == 1000, lost


def test_ipv6_and_icmp(harness):
    harness.reset()
    harness.run(eth(IPv6(src=A6, dst=B6) / UDP(sport=7000, dport=53) / Raw(b"q" * 30)))
    harness.run(eth(IP(src=A4, dst=B4) / ICMP(type=8, id=77, seq=1)))
    harness.run(eth(IP(src=B4, dst=A4) / ICMP(type=0, id=77, seq=1)), "retina_to_ep")
    harness.run(eth(IPv6(src=A6, dst=B6) / ICMPv6EchoRequest(id=5, seq=1)))
    u6, echo, reply, echo6 = harness.events()
    assert u6.ip_version == 6 and u6.src_ip == ip6(A6) and u6.dst_ip == ip6(B6)
    assert (u6.proto, u6.src_port, u6.dst_port) == (17, 7000, 53)
    assert (echo.proto, echo.icmp_type, echo.is_reply) == (1, 8, False)
    assert (reply.icmp_type, reply.is_reply) == (0, True)  # matched through the echo identifier
    assert (echo6.proto, echo6.icmp_type, echo6.ip_version) == (58, 128, 6)


@pytest.mark.parametrize(
    "pkt,expect",
    [
        # Truncated: IPv4 header cut short -> not an IP flow, not counted. (The kernel's test-run refuses a short
        # IP header behind a plain Ethernet header, so the packet goes behind a VLAN tag.)
        (bytes(Ether() / Dot1Q(vlan=3) / IP(src=A4, dst=B4) / UDP())[:18 + 12], None),
        # Bad IHL (< 5) -> not counted.
        (bytes(eth(IP(src=A4, dst=B4, ihl=4) / UDP(sport=1, dport=2))), None),
        # Not IP at all.
        (bytes(Ether(type=0x0806) / Raw(b"\x00" * 28)), None),
        # Truncated TCP header: counted with ports 0.
        (bytes(eth(IP(src=A4, dst=B4) / TCP(sport=1, dport=2)))[:14 + 20 + 6], (6, 0, 0)),
        # IPv4 options (IHL 6): ports still found.
        (bytes(eth(IP(src=A4, dst=B4, options=b"\x01\x01\x01\x01") / UDP(sport=11, dport=12))), (17, 11, 12)),
        # Non-first IPv4 fragment: counted, ports unknown.
        (bytes(eth(IP(src=A4, dst=B4, frag=100, proto=17) / Raw(b"a" * 40))), (17, 0, 0)),
        # First IPv4 fragment (MF set, offset 0): ports known.
        (bytes(eth(IP(src=A4, dst=B4, flags="MF") / UDP(sport=13, dport=14) / Raw(b"b" * 40))), (17, 13, 14)),
        # IPv6 with hop-by-hop, routing and destination-options headers.
        (bytes(eth(IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt()
                   / TCP(sport=15, dport=16, flags="S"))), (6, 15, 16)),
        # IPv6 first fragment, then a later fragment.
        (bytes(eth(IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(offset=0, m=1) / UDP(sport=17, dport=18))), (17, 17, 18)),
        (bytes(eth(IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(offset=10, nh=17) / Raw(b"c" * 16))), (17, 0, 0)),
        # IPv6 header truncated.
        (bytes(Ether() / Dot1Q(vlan=3) / IPv6(src=A6, dst=B6) / UDP())[:18 + 30], None),
        # VLAN and QinQ.
        (bytes(Ether() / Dot1Q(vlan=5) / IP(src=A4, dst=B4) / UDP(sport=19, dport=20)), (17, 19, 20)),
        (bytes(Ether() / Dot1AD(vlan=6) / Dot1Q(vlan=7) / IP(src=A4, dst=B4) / UDP(sport=21, dport=22)), (17, 21, 22)),
        # VLAN header itself cut short.
        (bytes(Ether() / Dot1Q(vlan=3) / IP(src=A4, dst=B4))[:16], None),
    ],
    ids=["trunc-ipv4", "bad-ihl", "arp", "trunc-tcp", "ipv4-options", "ipv4-frag-later", "ipv4-frag-first",
         "ipv6-exthdrs", "ipv6-frag-first", "ipv6-frag-later", "trunc-ipv6", "vlan", "qinq", "trunc-vlan"],
)
def test_malformed_and_unusual_packets(harness, pkt, expect):
    harness.reset()
    harness.run(pkt)
    evs = harness.events()
    if expect is None:
        assert evs == []
    else:
        (ev,) = evs
        assert (ev.proto, ev.src_port, ev.dst_port) == expect
        assert ev.packets == 1 and ev.bytes == len(pkt) == ev.packet_bytes


def test_sampling_thins_reports_not_accounting(harness):
    """dataSamplingRate: flag-change reports become rare, yet every packet is still accounted for."""
    harness.reset(aggregation_high=True, sampling_rate=1 << 30, report_interval_ns=3600 * 10**9)
    c, s = (A4, 42000), (B4, 8443)
    pkts = [eth(IP(src=c[0], dst=s[0]) / TCP(sport=c[1], dport=s[1], flags="S"))]
    # Alternate PSH and plain ACK: each direction sees a "new" flag combination early on.
    for i in range(50):
        flags = "PA" if i % 2 else "A"
        pkts.append(eth(IP(src=c[0], dst=s[0]) / TCP(sport=c[1], dport=s[1], flags=flags) / Raw(b"d" * i)))
    for p in pkts:
        harness.run(p)
    ConntrackSweeper(harness.prog, interval_ns=10**9).sweep_once(force=True)
    evs = harness.events()
    assert sum(e.packets for e in evs) == len(pkts)
    assert sum(e.bytes for e in evs) == sum(len(p) for p in pkts)
    # SYN (forced) and the sweep: the unsampled flag changes did not produce events of their own.
    assert [e.report_reason for e in evs] == [layout.REPORT_FLAGS, layout.REPORT_SWEEP]
    assert sum(e.flag_counts[3] for e in evs) == 25  # PSH


def test_ring_buffer_overflow_loses_events_not_counts():
    """With a ring buffer too small for a burst, reservations fail and are counted as lost events, but the
    packets' counts stay in the conntrack entry and ride on the next event: totals stay exact."""
    from retina_exporter.plugins.packetparser.loader import PacketParserProgram

    prog = PacketParserProgram(LoadOptions(ct_map_size=1024, ring_buffer_bytes=4096))
    try:
        sink = ListSink()
        reader = RingBufferReader(prog.bpf, "events", EventDecoder("n"), sink, batch_size=1)
        pkt = eth(IP(src=A4, dst=B4) / UDP(sport=5555, dport=6666) / Raw(b"o" * 20))
        res = prog_test_run(prog.prog_fd("retina_from_ep"), bytes(pkt), repeat=5000)
        assert res.retval == TC_ACT_UNSPEC
        lost = prog.lost_counts()["ringbuf_full"]
        assert lost > 0  # 4 KiB holds about 30 events
        reader.drain()
        assert sum(e.packets for e in sink.items) < 5000
        prog_test_run(prog.prog_fd("retina_from_ep"), bytes(pkt), repeat=1)
        reader.drain()
        assert sum(e.packets for e in sink.items) == 5001
        assert sum(e.bytes for e in sink.items) == 5001 * len(pkt)
    finally:
        prog.close()


def test_sweep_deletes_expired_entries_after_harvesting(harness):
    harness.reset(aggregation_high=True, report_interval_ns=3600 * 10**9, nontcp_lifetime_ns=50_000_000)
    pkt = eth(IP(src=A4, dst=B4) / UDP(sport=5002, dport=6002) / Raw(b"e" * 10))
    for _ in range(7):
        harness.run(pkt)
    assert len(list(harness.prog.conntrack.items())) == 1
    sweeper = ConntrackSweeper(harness.prog, interval_ns=3600 * 10**9)  # never "quiet": only expiry applies
    deadline = time.monotonic() + 5
    stats = sweeper.sweep_once()
    while stats.expired == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
        stats = sweeper.sweep_once()
    assert stats.expired == 1
    assert len(list(harness.prog.conntrack.items())) == 0
    evs = harness.events()
    assert sum(e.packets for e in evs) == 7
    assert evs[-1].report_reason == layout.REPORT_EXPIRED and evs[-1].packets == 6


def test_ip_of_interest_filter(harness):
    """With the filter on, only packets with a source or destination in retina_filter are tracked; IPv4 entries
    are IPv4-mapped, CIDRs work, and owners' claims are reference-counted."""
    harness.reset(filter_enabled=True)
    flt = harness.prog.filter
    flt.set_owner("ns:lab", ["10.1.0.2", "fd00::2"])
    flt.set_owner("pod:x", ["10.1.0.2", "10.7.0.0/16"])
    try:
        send = [
            (A4, B4, 1),          # to an IP of interest
            ("10.9.9.9", "10.9.9.8", 2),  # neither
            ("10.7.3.4", "10.9.9.8", 3),  # source in the /16
        ]
        for src, dst, port in send:
            harness.run(eth(IP(src=src, dst=dst) / UDP(sport=port, dport=port)))
        harness.run(eth(IPv6(src=A6, dst=B6) / UDP(sport=4, dport=4)))
        harness.run(eth(IPv6(src=A6, dst="fd00::9") / UDP(sport=5, dport=5)))
        assert sorted(e.src_port for e in harness.events()) == [1, 3, 4]
        # Dropping one owner keeps what another still claims.
        flt.remove_owner("ns:lab")
        assert flt.addresses() == {"10.1.0.2/32", "10.7.0.0/16"}
        harness.run(eth(IPv6(src=A6, dst=B6) / UDP(sport=6, dport=6)))
        harness.run(eth(IP(src=A4, dst=B4) / UDP(sport=7, dport=7)))
        assert [e.src_port for e in harness.events()] == [7]
    finally:
        flt.remove_owner("ns:lab")
        flt.remove_owner("pod:x")
        harness.reset()


# --- connection attempts: connect latency and failed connections -----------------------------------------------

BOUNDS_NS = (1_000, 10**9)  # 1 µs and 1 s: a test run's SYN -> SYN-ACK lands in the second bucket


def test_connect_latency_and_failures_count_each_attempt_once(harness):
    """Per attempt (5-tuple + ISN): retransmitted SYNs are one attempt; an acknowledging SYN-ACK is a latency
    sample, an acknowledging RST a failure (reset), no answer until the sweep's timeout a failure (timeout); an
    RST that does not acknowledge the SYN, and answers after the attempt was settled, count nothing."""
    harness.reset(aggregation_high=True, report_interval_ns=3600 * 10**9, conn_enabled=True, bounds_ns=BOUNDS_NS)
    before = harness.prog.tcp_counts()

    def tcp(sport, dport, flags, seq=0, ack=0, reply=False):
        src, dst = (B4, A4) if reply else (A4, B4)
        ports = dict(sport=dport, dport=sport) if reply else dict(sport=sport, dport=dport)
        return eth(IP(src=src, dst=dst) / TCP(flags=flags, seq=seq, ack=ack, **ports))

    # 1: three transmissions of one SYN, then the SYN-ACK: one latency sample
    for _ in range(3):
        harness.run(tcp(42001, 80, "S", seq=1000))
    harness.run(tcp(42001, 80, "SA", seq=9, ack=1001, reply=True), "retina_to_ep")
    # 2: a closed port: RST-ACK acknowledging the SYN; then the tuple reused by a new attempt, reset again
    harness.run(tcp(42002, 81, "S", seq=5000))
    harness.run(tcp(42002, 81, "RA", ack=5001, reply=True), "retina_to_ep")
    harness.run(tcp(42002, 81, "S", seq=6000))
    harness.run(tcp(42002, 81, "S", seq=6000))
    harness.run(tcp(42002, 81, "RA", ack=6001, reply=True), "retina_to_ep")
    # 3: never answered (two transmissions)
    harness.run(tcp(42003, 82, "S", seq=7000))
    harness.run(tcp(42003, 82, "S", seq=7000))
    # 4: an RST that does not acknowledge the SYN is no answer; the SYN-ACK then is
    harness.run(tcp(42004, 83, "S", seq=9000))
    harness.run(tcp(42004, 83, "RA", ack=1234, reply=True), "retina_to_ep")
    harness.run(tcp(42004, 83, "SA", seq=1, ack=9001, reply=True), "retina_to_ep")
    # 5: the initiator gives up with its own RST: not a failed connection
    harness.run(tcp(42005, 84, "S", seq=3000))
    harness.run(tcp(42005, 84, "R", seq=3001))
    # 6: a new attempt (new ISN) on the same 5-tuple while the first is unanswered: the first failed (timeout,
    # reported on the new SYN's event), the second is answered by an RST
    harness.run(tcp(42006, 85, "S", seq=100))
    harness.run(tcp(42006, 85, "S", seq=200))
    harness.run(tcp(42006, 85, "RA", ack=201, reply=True), "retina_to_ep")

    evs = harness.events()
    outcomes = sorted((e.dst_port if not e.is_reply else e.src_port, e.conn_event) for e in evs if e.conn_event)
    assert outcomes == [(80, R.CONN_ESTABLISHED), (81, R.CONN_RESET), (81, R.CONN_RESET), (83, R.CONN_ESTABLISHED),
                        (85, R.CONN_RESET), (85, R.CONN_TIMEOUT)]
    lat = [e.connect_latency_ns for e in evs if e.conn_event == R.CONN_ESTABLISHED]
    assert all(BOUNDS_NS[0] < x <= BOUNDS_NS[1] for x in lat), lat
    assert all(e.connect_latency_ns == 0 for e in evs if e.conn_event != R.CONN_ESTABLISHED)

    sweeper = ConntrackSweeper(harness.prog, interval_ns=3600 * 10**9, connect_timeout_ns=1)
    sweeper.sweep_once()
    sweeper.sweep_once()  # settled once only
    harness.run(tcp(42003, 82, "SA", seq=1, ack=7001, reply=True), "retina_to_ep")  # too late: not a sample
    evs = harness.events()
    timeouts = [e for e in evs if e.conn_event]
    assert [(e.dst_port, e.conn_event, e.packets, e.report_reason) for e in timeouts] == [
        (82, R.CONN_TIMEOUT, 0, layout.REPORT_CONNECT)]

    after = harness.prog.tcp_counts()
    delta = {k: after[k] - before[k] for k in ("reset", "timeout", "count")}
    assert delta == {"reset": 3, "timeout": 2, "count": 2}
    assert [a - b for a, b in zip(after["buckets"], before["buckets"])] == [0, 2, 0]
    assert after["sum_ns"] - before["sum_ns"] == sum(lat)


def test_connect_tracking_off_counts_nothing(harness):
    harness.reset(conn_enabled=False, bounds_ns=BOUNDS_NS)
    before = harness.prog.tcp_counts()
    harness.run(eth(IP(src=A4, dst=B4) / TCP(sport=42010, dport=80, flags="S", seq=10)))
    harness.run(eth(IP(src=B4, dst=A4) / TCP(sport=80, dport=42010, flags="RA", ack=11)), "retina_to_ep")
    assert not any(e.conn_event for e in harness.events())
    assert harness.prog.tcp_counts() == before


def attempts(harness) -> set[tuple[int, int, int]]:
    """``(src_port, dst_port, isn)`` of every tcp_attempts key."""
    return {(k.src_port, k.dst_port, k.isn) for k in harness.prog.bpf[b"tcp_attempts"].keys()}


def test_tcp_attempts_holds_only_live_attempts(harness):
    """The attempt map forgets an attempt with its owner's conntrack entry (sweep expiry) and when the entry's
    5-tuple starts a new attempt, so it stays flat under connection churn (make soak); an observer's expiry leaves
    the owner's attempt alone."""
    ms = 1_000_000
    harness.reset(aggregation_high=True, report_interval_ns=3600 * 10**9, conn_enabled=True, bounds_ns=BOUNDS_NS,
                  syn_timeout_ns=300 * ms, tcp_lifetime_ns=300 * ms, time_wait_ns=300 * ms)

    def tcp(sport, flags, seq=0, ack=0, reply=False):
        ips, ports = ((B4, A4), (80, sport)) if reply else ((A4, B4), (sport, 80))
        return eth(IP(src=ips[0], dst=ips[1]) / TCP(sport=ports[0], dport=ports[1], flags=flags, seq=seq, ack=ack))

    # An attempt another interface owns (its key is already there): this entry only observes it.
    probe = tcp(42023, "S", seq=600)
    harness.run(probe)
    harness.prog.conntrack.clear()  # forget the entry that owned it: the next SYN meets the key "of another"
    harness.run(probe)
    harness.run(tcp(42020, "S", seq=100))                                        # answered
    harness.run(tcp(42020, "SA", seq=1, ack=101, reply=True), "retina_to_ep")
    harness.run(tcp(42021, "S", seq=300))                                        # unanswered
    harness.run(tcp(42022, "S", seq=400))                                        # reset, then a new attempt
    harness.run(tcp(42022, "RA", ack=401, reply=True), "retina_to_ep")
    harness.run(tcp(42022, "S", seq=500))
    assert attempts(harness) == {(42020, 80, 100), (42021, 80, 300), (42022, 80, 500), (42023, 80, 600)}
    observer = [e for k, e in harness.prog.conntrack.items() if k.src_port == 42023]
    assert [e.conn_state for e in observer] == [layout.CONN_OBSERVER]

    sweeper = ConntrackSweeper(harness.prog, interval_ns=3600 * 10**9)
    deadline = time.monotonic() + 10
    while len(harness.prog.conntrack) and time.monotonic() < deadline:
        sweeper.sweep_once()
        time.sleep(0.05)
    assert len(harness.prog.conntrack) == 0
    assert attempts(harness) == {(42023, 80, 600)}  # the observer's expiry left the owner's attempt
    harness.events()
