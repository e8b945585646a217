"""The packet-parsing kernel programs (packetparser, dns, packetforward) under hostile frames, through
BPF_PROG_TEST_RUN: every verdict is TC_ACT_UNSPEC, and every event and counter equals what an independent
reference parser (tests/support/fuzzframes.py) says. A fixed-seed subset; ``make fuzz`` runs far more cases
(bench/fuzz_kernel.py).

The programs are compiled once for this module (their ring buffers are opened here, so they are not shared with
other modules' fixtures)."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, Jumbo
from scapy.layers.l2 import GRE, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from tests.support import fuzzframes as F

SEED = 20240915
CASES = 20_000  # about 1.5 s of generation, reference and test runs on one core


@pytest.fixture(scope="module")
def rig():
    from retina_exporter.plugins.dns.loader import DnsProgram
    from retina_exporter.plugins.packetforward.loader import PacketForwardProgram
    from retina_exporter.plugins.packetparser.loader import LoadOptions, PacketParserProgram

    progs = []
    try:
        progs.append(PacketParserProgram(LoadOptions(ct_map_size=4096, ring_buffer_bytes=1 << 20)))
        progs.append(DnsProgram(ring_buffer_bytes=1 << 20))
        progs.append(PacketForwardProgram())
        yield F.FuzzRig(*progs)
    finally:
        for p in progs:
            p.close()


def assert_clean(st: F.FuzzStats) -> None:
    assert not st.mismatches, f"{st.summary()}\n" + "\n".join(map(str, st.mismatches[:10]))


def test_truncation_at_every_offset(rig):
    cases = F.truncations()
    st = rig.run(cases)
    assert_clean(st)
    assert st.cases == len(cases) > 500
    # Each template is cut inside every one of its headers: runts the test run refuses, cut VLAN tags (not IP),
    # IP packets without a whole L4 header, and DNS events with every possible capture length.
    assert st.refused and st.not_ip and st.pp_events and st.dns_events


def test_fixed_seed_structured_frames(rig):
    st = rig.run(F.random_cases(SEED, CASES))
    assert_clean(st)
    assert st.cases == CASES
    # The mix is broad: a good share of every outcome.
    assert st.refused > CASES // 50 and st.not_ip > CASES // 10
    assert st.pp_events > CASES // 2 and st.dns_events > CASES // 20


def test_generator_is_deterministic_and_varied():
    a = [f for f, _ in F.random_cases(7, 300)]
    assert a == [f for f, _ in F.random_cases(7, 300)]
    descs = " ".join(d for _, d in F.random_cases(7, 3000))
    for word in ("vlan8100", "vlan88a8x8100", "vlan88a8x8100x8100", "ext", "tcp", "udp", "icmp", "vxlan", "geneve",
                 "gre", "ipip", "nonip", "runt", "cut", "trailer", "pad60", "flip", "len"):
        assert word in descs, word
    sizes = [len(f) for f, _ in F.random_cases(7, 3000)]
    assert min(sizes) < 14 and max(sizes) > 3000


# --- directed cases: the reference's rules, stated independently, then the programs against them --------------------

A4, B4, A6, B6 = "10.1.0.1", "10.1.0.2", "fd00::1", "fd00::2"


def eth(payload):
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / payload


def dest_opts(n):
    chain = IPv6ExtHdrDestOpt()
    for _ in range(n - 1):
        chain = chain / IPv6ExtHdrDestOpt()
    return chain


# (frame, expected (proto, sport, dport) for packetparser or None for "not IP", dns event expected)
DIRECTED = {
    "six-ext-headers-the-limit": (bytes(eth(IPv6(src=A6, dst=B6) / dest_opts(6) / UDP(sport=1000, dport=53)
                                             / Raw(b"q" * 12))), (17, 1000, 53), True),
    "seven-ext-headers-past-the-limit": (bytes(eth(IPv6(src=A6, dst=B6) / dest_opts(7) / UDP(sport=1000, dport=53))),
                                         (60, 0, 0), False),
    "unknown-header-ends-the-walk": (bytes(eth(IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop(nh=253)
                                               / Raw(bytes([17, 0]) + bytes(6)) / UDP(sport=1, dport=53))),
                                     (253, 0, 0), False),
    "ext-chain-past-payload-length": (bytes(eth(IPv6(src=A6, dst=B6, plen=8) / IPv6ExtHdrHopByHop()
                                                / IPv6ExtHdrDestOpt() / UDP(sport=1, dport=53))), (255, 0, 0), False),
    "ipv6-jumbogram-length-zero": (bytes(eth(IPv6(src=A6, dst=B6, plen=0)
                                             / IPv6ExtHdrHopByHop(options=[Jumbo(jumboplen=3000)])
                                             / UDP(sport=2, dport=53) / Raw(b"j" * 2900))), (17, 2, 53), True),
    "tcp-header-in-padding-only": (bytes(eth(IP(src=A4, dst=B4, proto=6, len=20)))
                                   + struct.pack("!HHIIBB", 53, 53, 1, 2, 0x50, 0x12) + b"\xff" * 12,
                                   (6, 0, 0), False),
    "udp-within-ip-padding-after": (bytes(eth(IP(src=A4, dst=B4) / UDP(sport=3, dport=53) / Raw(b"d" * 4)))
                                    + b"\xee" * 14, (17, 3, 53), True),
    "tcp-data-offset-below-5": (bytes(eth(IP(src=A4, dst=B4) / TCP(sport=4, dport=53, dataofs=2, flags="PA")
                                          / Raw(b"x" * 20))), (6, 4, 53), False),
    "three-vlan-tags": (bytes(Ether() / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / IP(src=A4, dst=B4)
                              / UDP(sport=5, dport=53)), None, False),
    "qinq": (bytes(Ether() / Dot1AD(vlan=1) / Dot1Q(vlan=2) / IP(src=A4, dst=B4) / UDP(sport=5, dport=53)
                   / Raw(b"q" * 12)), (17, 5, 53), True),
    "jumbo-frame": (bytes(eth(IP(src=A4, dst=B4) / UDP(sport=6, dport=7) / Raw(b"J" * (F.MAX_FRAME - 42)))),
                    (17, 6, 7), False),
    "vxlan-outer-only": (bytes(eth(IP(src=A4, dst=B4) / UDP(sport=40000, dport=4789) / VXLAN(vni=5)
                                   / eth(IP() / UDP(sport=53, dport=53)))), (17, 40000, 4789), False),
    "gre-outer-only": (bytes(eth(IP(src=A4, dst=B4) / GRE() / IP() / UDP(sport=53, dport=53))), (47, 0, 0), False),
    "ipv4-later-fragment": (bytes(eth(IP(src=A4, dst=B4, frag=3, proto=17) / Raw(b"\x00\x35\x00\x35" + b"z" * 20))),
                            (17, 0, 0), False),
    "arp": (bytes(Ether(type=0x0806) / Raw(bytes(28))), None, False),
    "llc-length-field": (bytes(Ether(type=46) / Raw(bytes(46))), None, False),
    "ip-behind-mpls": (bytes(Ether(type=0x8847) / Raw(b"\x00\x01\x01\x40") / IP(src=A4, dst=B4) / UDP(dport=53)),
                       None, False),
}


@pytest.mark.parametrize("name", list(DIRECTED))
def test_directed_frames(rig, name):
    frame, pp, dns = DIRECTED[name]
    exp = F.reference(frame)
    assert not exp.refused
    assert (None if exp.pp is None else (exp.pp.proto, exp.pp.sport, exp.pp.dport)) == pp
    assert (exp.dns is not None) == dns
    assert_clean(rig.run([(frame, name)]))


@pytest.mark.parametrize("frame,refused", [(b"", True), (bytes(13), True), (bytes(14), False),
                                           (bytes(12) + b"\x08\x00" + bytes(19), True),
                                           (bytes(12) + b"\x86\xdd" + bytes(39), True),
                                           (bytes(12) + b"\x81\x00" + bytes(3), False)])
def test_zero_length_and_runt_frames(rig, frame, refused):
    """The kernel's test run refuses frames shorter than an Ethernet header (and a plain-Ethernet IP frame shorter
    than its IP header); what it accepts is never IP here."""
    assert F.reference(frame).refused == refused
    st = rig.run([(frame, "runt")])
    assert_clean(st)
    assert st.refused == int(refused)
