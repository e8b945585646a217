"""Structure-aware fuzzing of the packet-parsing kernel programs through BPF_PROG_TEST_RUN.

Three parts, shared by ``tests/test_fuzz_kernel.py`` (a fixed-seed subset in ``make test``) and
``bench/fuzz_kernel.py`` (``make fuzz``, >= 100k cases):

* :class:`FrameGen` -- a seeded generator that builds frames layer by layer (Ethernet, 0-3 VLAN tags, IPv4 with
  options and fragments, IPv6 with extension-header chains, TCP with options, UDP, ICMP/ICMPv6, GRE, VXLAN,
  Geneve, IP-in-IP, non-IP EtherTypes, DNS payloads) and then damages them (truncation, wrong length fields,
  flipped header bytes, trailers after the IP packet, Ethernet padding, frames shorter than a header).
  Pure ``struct``: scapy is far too slow for 100k frames.
* :func:`reference` -- an independent reading of a frame, written from the RFCs and the programs' documented
  rules (not from their C): what packetparser must report (or that it is not IP), which DNS event the dns
  program must emit, and whether BPF_PROG_TEST_RUN refuses the frame at all.
* :class:`FuzzRig` -- runs every frame through packetparser (every packet reported), dns and packetforward,
  and compares the verdicts, events and counters with the reference.

The rules the reference applies (the programs' contract, see common.h and the programs' headers):

* L2: Ethernet, then at most two 802.1Q/802.1ad tags in any order; a third tag is "not IP".
* IPv4 is a flow when its 20-byte header is in the frame with version 4 and IHL >= 5; IPv6 when its 40-byte
  header is in the frame with version 6. Everything else (ARP, MPLS, LLC, bad version, truncated header) is not
  a flow: no event, no count.
* The IP packet ends at its length field (IPv4 total length, IPv6 40 + payload length), or at the end of the
  frame when that field is 0 (GSO "big" packets) or larger than the frame. Bytes after it (Ethernet padding,
  trailers) are not part of the packet: no header is read from them.
* IPv6 extension headers walked: hop-by-hop (0), routing (43), fragment (44, 8 bytes), AH (51, (len+2)*4),
  destination options (60), at most 6 of them; an unknown next header ends the walk (it is the protocol). When a
  walked header's next-header byte (for a fragment header: also its offset field) is not in the packet the chain
  is truncated: protocol 255, no L4. After 6 headers the walk stops: the 7th header's type is the protocol.
* Later fragments (IPv4 offset != 0, IPv6 fragment offset != 0) have no L4 header.
* TCP: ports and flags (the flag byte, NS as bit 8) when the first 14 bytes are in the packet; UDP: ports when
  4 bytes are; ICMP (protocol 1 or 58, whichever IP version): type and code when 2 bytes are, and for echo
  request/reply (8, 0, 128, 129) the identifier as both ports when 8 bytes are.
* DNS: an event for UDP (8-byte header in the packet) or TCP (14 bytes in the packet, data offset >= 5) with
  port 53 on either side, not a later fragment; TCP segments without payload only when SYN is set.
"""

from __future__ import annotations

import ctypes as ct
import errno
import random
import struct
import time
from dataclasses import dataclass, field

TC_ACT_UNSPEC = -1
MAX_FRAME = 3712  # BPF_PROG_TEST_RUN's limit for SCHED_CLS data (one page minus headroom and shared info)
MIN_FRAME = 14

ETH_IP, ETH_IP6, ETH_8021Q, ETH_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
NON_IP_TYPES = (0x0806, 0x8847, 0x8848, 0x8864, 0x8863, 0x88CC, 0x88B5, 0x8035, 0x9000, 0x0000, 0x05DC, 0x0600,
                0x88E5, 0x8906, 0x22F0, 0xFFFF, 0x0801, 0x86DC, 0x0081, 0x0008)
EXT_WALKED = (0, 43, 44, 51, 60)
EXT_UNKNOWN = (59, 50, 135, 139, 140, 253, 254, 2, 255)
WALK_MAX = 6
L4_NONE = 0xFF
ECHO_TYPES = (0, 8, 128, 129)
DNS_PORT = 53
DNS_CAPTURE = 512


# --- the reference ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PpExpect:
    """What packetparser must report for one IP frame (every packet reported)."""

    ip_version: int
    src: bytes  # 16 bytes: IPv4 in the first 4, rest zero
    dst: bytes
    proto: int
    sport: int
    dport: int
    tcp_flags: int
    icmp_type: int
    icmp_code: int
    has_tcp: bool


@dataclass(frozen=True)
class DnsExpect:
    ip_version: int
    src: bytes
    dst: bytes
    proto: int
    sport: int
    dport: int
    tcp_seq: int
    tcp_flags: int
    msg_len: int
    data: bytes  # the captured payload (cap_len = len(data))


@dataclass(frozen=True)
class Expect:
    refused: bool  # BPF_PROG_TEST_RUN rejects the frame (EINVAL): no program runs
    pp: PpExpect | None  # None: not IP, no event
    dns: DnsExpect | None


def _u16(b: bytes, o: int) -> int:
    return (b[o] << 8) | b[o + 1]


def reference(frame: bytes) -> Expect:
    n = len(frame)
    if n < MIN_FRAME:
        return Expect(True, None, None)
    outer = _u16(frame, 12)
    # The kernel's test run itself wants a whole IP header behind a plain Ethernet header.
    if (outer == ETH_IP and n < 14 + 20) or (outer == ETH_IP6 and n < 14 + 40):
        return Expect(True, None, None)
    etype, off = outer, 14
    for _ in range(2):
        if etype not in (ETH_8021Q, ETH_8021AD):
            break
        if off + 4 > n:
            return Expect(False, None, None)
        etype = _u16(frame, off + 2)
        off += 4

    later = False
    if etype == ETH_IP:
        if off + 20 > n or frame[off] >> 4 != 4 or frame[off] & 15 < 5:
            return Expect(False, None, None)
        ipv = 4
        tot = _u16(frame, off + 2)
        end = off + tot if tot else n
        later = (_u16(frame, off + 6) & 0x1FFF) != 0
        proto = frame[off + 9]
        src = frame[off + 12:off + 16] + bytes(12)
        dst = frame[off + 16:off + 20] + bytes(12)
        l4 = off + (frame[off] & 15) * 4
        end = min(end, n)
    elif etype == ETH_IP6:
        if off + 40 > n or frame[off] >> 4 != 6:
            return Expect(False, None, None)
        ipv = 6
        plen = _u16(frame, off + 4)
        end = min(off + 40 + plen if plen else n, n)
        proto = frame[off + 6]
        src, dst = frame[off + 8:off + 24], frame[off + 24:off + 40]
        l4 = off + 40
        for _ in range(WALK_MAX):
            if proto not in EXT_WALKED:
                break
            need = 4 if proto == 44 else 2
            if l4 + need > end:
                proto = L4_NONE
                break
            nxt, hlen = frame[l4], frame[l4 + 1]
            if proto == 44:
                later = later or (_u16(frame, l4 + 2) & 0xFFF8) != 0
                l4 += 8
            elif proto == 51:
                l4 += (hlen + 2) * 4
            else:
                l4 += (hlen + 1) * 8
            proto = nxt
    else:
        return Expect(False, None, None)

    def have(k: int) -> bool:
        return l4 + k <= end

    sport = dport = flags = itype = icode = 0
    has_tcp = False
    if not later:
        if proto == 6 and have(14):
            sport, dport = _u16(frame, l4), _u16(frame, l4 + 2)
            flags = frame[l4 + 13] | ((frame[l4 + 12] & 1) << 8)
            has_tcp = True
        elif proto == 17 and have(4):
            sport, dport = _u16(frame, l4), _u16(frame, l4 + 2)
        elif proto in (1, 58) and have(2):
            itype, icode = frame[l4], frame[l4 + 1]
            if itype in ECHO_TYPES and have(8):
                sport = dport = _u16(frame, l4 + 4)
    pp = PpExpect(ipv, src, dst, proto, sport, dport, flags, itype, icode, has_tcp)

    dns = None
    if not later and (sport == DNS_PORT or dport == DNS_PORT):
        if proto == 17 and have(8):
            ulen = _u16(frame, l4 + 4)
            pay = l4 + 8
            dns = DnsExpect(ipv, src, dst, 17, sport, dport, 0, 0, max(ulen - 8, 0),
                            frame[pay:min(end, pay + DNS_CAPTURE)] if end > pay else b"")
        elif proto == 6 and have(14) and frame[l4 + 12] >> 4 >= 5:
            pay = l4 + (frame[l4 + 12] >> 4) * 4
            msg = max(end - pay, 0)
            tflags = frame[l4 + 13]
            if msg or tflags & 0x02:
                dns = DnsExpect(ipv, src, dst, 6, sport, dport, struct.unpack_from("!I", frame, l4 + 4)[0], tflags,
                                min(msg, 0xFFFF), frame[pay:min(end, pay + DNS_CAPTURE)] if end > pay else b"")
    return Expect(False, pp, dns)


# --- the generator ------------------------------------------------------------------------------------------------


def _csum_free_ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, options: bytes = b"", frag: int = 0,
                    tot_len: int | None = None, ihl: int | None = None, version: int = 4, ttl: int = 64) -> bytes:
    if len(options) % 4:
        options += b"\x00" * (4 - len(options) % 4)
    ihl = 5 + len(options) // 4 if ihl is None else ihl
    tot = 20 + len(options) + len(payload) if tot_len is None else tot_len
    return struct.pack("!BBHHHBBH4s4s", (version << 4) | (ihl & 15), 0, tot & 0xFFFF, 0x1234, frag, ttl, proto, 0,
                       src, dst) + options + payload


def _ipv6(src: bytes, dst: bytes, nh: int, payload: bytes, plen: int | None = None, version: int = 6) -> bytes:
    pl = len(payload) if plen is None else plen
    return struct.pack("!IHBB16s16s", version << 28, pl & 0xFFFF, nh, 64, src, dst) + payload


class FrameGen:
    """Seeded, structure-aware frame builder. ``next()`` returns ``(frame, description)``."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.count = 0

    # small helpers
    def _bytes(self, k: int) -> bytes:
        return self.r.getrandbits(8 * k).to_bytes(k, "big") if k > 0 else b""

    def _addr4(self) -> bytes:
        return bytes((10, self.r.randrange(256), self.r.randrange(256), self.r.randrange(1, 255)))

    def _addr6(self) -> bytes:
        return b"\xfd\x00" + self._bytes(14)

    def _port(self) -> int:
        x = self.r.random()
        if x < 0.3:
            return DNS_PORT
        if x < 0.4:
            return self.r.choice((0, 80, 443, 4789, 6081, 65535, 1))
        return self.r.randrange(1024, 65536)

    def _payload_len(self) -> int:
        x = self.r.random()
        if x < 0.25:
            return 0
        if x < 0.65:
            return self.r.randrange(1, 64)
        if x < 0.9:
            return self.r.randrange(64, 1500)
        return self.r.randrange(1500, MAX_FRAME)  # jumbo-ish: as large as the test run takes

    def _dns_message(self) -> bytes:
        name = b"".join(bytes([k]) + b"a" * k for k in (self.r.randrange(1, 20), 3)) + b"\x00"
        return struct.pack("!HHHHHH", self.r.randrange(65536), 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"

    def _payload(self, dns: bool, tcp: bool = False) -> bytes:
        if dns and self.r.random() < 0.6:
            m = self._dns_message()
            return struct.pack("!H", len(m)) + m if tcp else m
        return self._bytes(self._payload_len())

    # L4
    def _tcp(self, sport: int, dport: int, payload: bytes) -> bytes:
        r = self.r
        opts = b""
        if r.random() < 0.5:
            parts = []
            for _ in range(r.randrange(1, 6)):
                kind = r.choice(("mss", "sack", "ts", "ws", "nop", "eol", "junk"))
                parts.append({"mss": b"\x02\x04\x05\xb4", "sack": b"\x04\x02", "nop": b"\x01", "eol": b"\x00",
                              "ts": b"\x08\x0a" + self._bytes(8), "ws": b"\x03\x03\x07",
                              "junk": bytes([r.randrange(256), r.randrange(256)]) + self._bytes(r.randrange(4))}[kind])
            opts = b"".join(parts)[:40]
            opts += b"\x01" * (-len(opts) % 4)
        doff = 5 + len(opts) // 4
        if r.random() < 0.05:
            doff = r.randrange(16)  # a lying data offset
        x = r.random()
        if x < 0.5:
            flags = r.choice((0x002, 0x012, 0x010, 0x018, 0x011, 0x004, 0x014, 0x001))
        else:
            flags = r.getrandbits(9)
        return struct.pack("!HHIIBBHHH", sport, dport, r.getrandbits(32), r.getrandbits(32),
                           (doff << 4) | (flags >> 8), flags & 0xFF, 65535, 0, 0) + opts + payload

    def _udp(self, sport: int, dport: int, payload: bytes) -> bytes:
        ulen = 8 + len(payload)
        if self.r.random() < 0.05:
            ulen = self.r.choice((0, 7, 8, 65535, self.r.randrange(65536)))
        return struct.pack("!HHHH", sport, dport, ulen & 0xFFFF, 0) + payload

    def _icmp(self, v6: bool) -> bytes:
        r = self.r
        t = r.choice((0, 8, 128, 129, 3, 11, 1, 133, 135, r.randrange(256)))
        return struct.pack("!BBHHH", t, r.randrange(4), 0, r.randrange(65536), r.randrange(65536)) + \
            self._bytes(r.choice((0, 8, 56)))

    def _inner_frame(self, depth: int) -> bytes:
        frame, _ = self._build(depth + 1)
        return frame[:1400]

    def _l4(self, v6: bool, depth: int) -> tuple[int, bytes, str]:
        """Returns (protocol number, L4 bytes, description)."""
        r = self.r
        x = r.random()
        if x < 0.32:
            sp, dp = self._port(), self._port()
            return 6, self._tcp(sp, dp, self._payload(DNS_PORT in (sp, dp), tcp=True)), "tcp"
        if x < 0.64:
            sp, dp = self._port(), self._port()
            return 17, self._udp(sp, dp, self._payload(DNS_PORT in (sp, dp))), "udp"
        if x < 0.74:
            return (58 if v6 else 1), self._icmp(v6), "icmp"
        if x < 0.77:
            return (1 if v6 else 58), self._icmp(not v6), "icmp-cross"
        if x < 0.87 and depth < 2:
            kind = r.choice(("vxlan", "geneve", "gre", "gre-eth", "ipip"))
            inner = self._inner_frame(depth)
            if kind == "vxlan":
                return 17, self._udp(r.randrange(1024, 65536), 4789, struct.pack("!II", 0x08000000, 42 << 8) + inner), kind
            if kind == "geneve":
                opt = self._bytes(4 * r.randrange(3))
                gen = struct.pack("!BBHI", len(opt) // 4, 0, 0x6558, 7 << 8) + opt
                return 17, self._udp(r.randrange(1024, 65536), 6081, gen + inner), kind
            if kind == "gre":
                return 47, struct.pack("!HH", 0, 0x0800 if inner[12:14] != b"\x86\xdd" else 0x86DD) + inner[14:], kind
            if kind == "gre-eth":
                return 47, struct.pack("!HHI", 0x2000, 0x6558, 99) + inner, kind
            return (41 if inner[12:14] == b"\x86\xdd" else 4), inner[14:], kind
        proto = r.choice((50, 51, 132, 136, 2, 0, 255, 59, r.randrange(256)))
        return proto, self._bytes(self._payload_len() // 4), f"proto{proto}"

    def _ext_chain(self, final: int) -> tuple[int, bytes, str]:
        """An IPv6 extension-header chain ending in ``final``: (first next-header, bytes, description)."""
        r = self.r
        x = r.random()
        if x < 0.45:
            return final, b"", ""
        if x < 0.6:
            count = r.randrange(WALK_MAX - 1, WALK_MAX + 4)  # around the program's limit
        else:
            count = r.randrange(1, 4)
        kinds = [r.choice(EXT_WALKED + (EXT_WALKED[0], 60, 60, 43)) for _ in range(count)]
        if r.random() < 0.1:
            kinds.append(r.choice(EXT_UNKNOWN))  # an unknown header: the walk ends there
        chain = b""
        nxt = final
        for kind in reversed(kinds):
            if kind == 44:
                fo = 0 if r.random() < 0.6 else r.randrange(1, 8192)
                hdr = struct.pack("!BBHI", nxt, 0, (fo << 3) | r.randrange(2), r.getrandbits(32))
            elif kind == 51:
                ln = r.randrange(1, 6)
                hdr = bytes([nxt, ln]) + self._bytes((ln + 2) * 4 - 2)
            elif kind in EXT_WALKED:
                ln = r.choice((0, 0, 1, 2, r.randrange(256) if r.random() < 0.05 else 0))
                body = self._bytes((ln + 1) * 8 - 2)
                if kind == 43 and len(body) >= 2:
                    body = bytes([0, r.randrange(3)]) + body[2:]
                hdr = bytes([nxt, ln]) + body
            else:
                hdr = bytes([nxt, 0]) + self._bytes(6)
            chain = hdr + chain
            nxt = kind
        return nxt, chain, "ext" + "-".join(map(str, kinds))

    def _ip(self, depth: int) -> tuple[int, bytes, str]:
        """(EtherType, L3 packet, description)."""
        r = self.r
        x = r.random()
        if x < 0.46:
            proto, l4, d = self._l4(False, depth)
            opts = b""
            if r.random() < 0.2:
                opts = r.choice((b"\x01\x01\x01\x00", b"\x07\x07\x04" + bytes(4), b"\x44\x0c\x05\x00" + bytes(8),
                                 b"\x94\x04\x00\x00", self._bytes(4 * r.randrange(1, 11))))[:40]
            frag = 0
            y = r.random()
            if y < 0.08:
                frag = 0x2000  # MF, first fragment
            elif y < 0.18:
                frag = r.choice((0, 0x2000)) | r.randrange(1, 0x2000)  # a later fragment
            elif y < 0.25:
                frag = 0x4000  # DF
            return ETH_IP, _csum_free_ipv4(self._addr4(), self._addr4(), proto, l4, opts, frag), "ipv4-" + d
        if x < 0.88:
            proto, l4, d = self._l4(True, depth)
            first, chain, dc = self._ext_chain(proto)
            return ETH_IP6, _ipv6(self._addr6(), self._addr6(), first, chain + l4), f"ipv6-{dc}-{d}"
        et = r.choice(NON_IP_TYPES)
        body = self._bytes(r.randrange(0, 80))
        if r.random() < 0.3:  # something that looks like IP behind a non-IP EtherType
            body = _csum_free_ipv4(self._addr4(), self._addr4(), 17, self._udp(53, 53, b"x" * 12))
        return et, body, f"nonip-{et:04x}"

    def _build(self, depth: int = 0) -> tuple[bytes, str]:
        r = self.r
        et, l3, d = self._ip(depth)
        tags = []
        x = r.random()
        if x < 0.12:
            tags = [ETH_8021Q]
        elif x < 0.2:
            tags = [ETH_8021AD, ETH_8021Q]
        elif x < 0.23:
            tags = [ETH_8021Q, ETH_8021Q]
        elif x < 0.26:
            tags = [ETH_8021AD, ETH_8021Q, ETH_8021Q]  # one more than the programs walk
        elif x < 0.28:
            tags = [ETH_8021AD]
        types = tags + [et]
        hdr = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01" + struct.pack("!H", types[0])
        for i in range(len(tags)):
            hdr += struct.pack("!HH", r.randrange(4096), types[i + 1])
        desc = ("vlan" * bool(tags) + "x".join(f"{t:x}" for t in tags) + "-" if tags else "") + d
        return hdr + l3, desc

    def next(self) -> tuple[bytes, str]:
        r = self.r
        self.count += 1
        if r.random() < 0.01:
            return self._bytes(r.randrange(MIN_FRAME)), "runt"
        frame, desc = self._build()
        b = bytearray(frame[:MAX_FRAME])
        l3 = 14
        while l3 + 4 <= len(b) and _u16(b, l3 - 2) in (ETH_8021Q, ETH_8021AD) and l3 < 26:
            l3 += 4
        muts = []
        if r.random() < 0.12 and len(b) > l3 + 4:  # a lying IP length field
            v = r.choice((0, 1, 19, 20, 39, 40, r.randrange(65536), len(b) - l3 + r.randrange(-30, 30)))
            if b[l3] >> 4 == 4:
                struct.pack_into("!H", b, l3 + 2, v & 0xFFFF)
            elif b[l3] >> 4 == 6 and len(b) >= l3 + 6:
                struct.pack_into("!H", b, l3 + 4, v & 0xFFFF)
            muts.append(f"len{v}")
        if r.random() < 0.1:  # flip a few header bytes
            for _ in range(r.randrange(1, 4)):
                i = r.randrange(min(len(b), l3 + 120))
                b[i] = r.randrange(256)
            muts.append("flip")
        if r.random() < 0.12:  # bytes after the IP packet: padding or a trailer
            b += bytes(r.randrange(1, 40)) if r.random() < 0.5 else self._bytes(r.randrange(1, 40))
            muts.append("trailer")
        if r.random() < 0.25:
            cut = r.randrange(len(b) + 1)
            del b[cut:]
            muts.append(f"cut{cut}")
        if len(b) < 60 and r.random() < 0.3:  # short frames padded by a NIC
            b += bytes(60 - len(b)) if r.random() < 0.7 else self._bytes(60 - len(b))
            muts.append("pad60")
        del b[MAX_FRAME:]
        return bytes(b), desc + ("/" + ",".join(muts) if muts else "")


# --- fixed templates, truncated at every offset -------------------------------------------------------------------


def templates() -> list[tuple[bytes, str]]:
    a4, b4 = bytes((10, 1, 0, 1)), bytes((10, 1, 0, 2))
    a6, b6 = bytes.fromhex("fd00" + "00" * 13 + "01"), bytes.fromhex("fd00" + "00" * 13 + "02")
    eth = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01"
    g = FrameGen(0)
    dnsq = g._dns_message()
    tcp_opts = struct.pack("!HHIIBBHHH", 40000, 53, 1000, 0, (10 << 4), 0x18, 65535, 0, 0) + \
        b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + bytes(8) + b"\x01\x03\x03\x07" + struct.pack("!H", len(dnsq)) + dnsq
    udp_dns = struct.pack("!HHHH", 40001, 53, 8 + len(dnsq), 0) + dnsq
    hbh = bytes([60, 0]) + b"\x01\x04" + bytes(4)
    dst = bytes([44, 1]) + bytes(14)
    frag = struct.pack("!BBHI", 51, 0, 0, 7)
    ah = bytes([17, 1]) + bytes(10)
    inner = eth + b"\x08\x00" + _csum_free_ipv4(a4, b4, 17, udp_dns)
    vxlan = struct.pack("!HHHH", 50000, 4789, 16 + len(inner), 0) + struct.pack("!II", 0x08000000, 42 << 8) + inner
    echo6 = struct.pack("!BBHHH", 128, 0, 0, 77, 1) + b"ping"
    return [
        (eth + b"\x81\x00\x00\x05\x08\x00" + _csum_free_ipv4(a4, b4, 6, tcp_opts, b"\x01\x01\x01\x00"), "vlan-ipv4opt-tcp-dns"),
        (eth + b"\x88\xa8\x00\x06\x81\x00\x00\x07\x86\xdd" + _ipv6(a6, b6, 0, hbh + dst + frag + ah + udp_dns),
         "qinq-ipv6-hbh-dst-frag-ah-udp-dns"),
        (eth + b"\x86\xdd" + _ipv6(a6, b6, 6, tcp_opts), "ipv6-tcp-dns"),
        (eth + b"\x08\x00" + _csum_free_ipv4(a4, b4, 17, vxlan), "ipv4-vxlan"),
        (eth + b"\x81\x00\x00\x09\x86\xdd" + _ipv6(a6, b6, 58, echo6), "vlan-ipv6-echo"),
    ]


def truncations() -> list[tuple[bytes, str]]:
    return [(frame[:k], f"{name}/cut{k}") for frame, name in templates() for k in range(len(frame) + 1)]


# --- running the programs -----------------------------------------------------------------------------------------


PP_HOOKS = ("retina_from_ep", "retina_to_ep", "retina_from_net", "retina_to_net")
DNS_HOOKS = ("rdns_from_ep", "rdns_to_ep", "rdns_from_net", "rdns_to_net")
FLAG_BITS = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x100)  # FIN SYN RST PSH ACK URG ECE CWR NS


def flag_counts(flags: int, is_tcp: bool) -> tuple:
    if not is_tcp:
        return (0,) * 10
    return tuple(1 if flags & bit else 0 for bit in FLAG_BITS) + (1 if flags & 0x12 == 0x12 else 0,)


@dataclass
class FuzzStats:
    cases: int = 0
    refused: int = 0
    not_ip: int = 0
    pp_events: int = 0
    dns_events: int = 0
    runs: int = 0
    seconds: float = 0.0
    mismatches: list = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.cases} cases ({self.refused} refused by the test run, {self.not_ip} not IP), "
                f"{self.pp_events} packetparser events, {self.dns_events} dns events, {self.runs} program runs, "
                f"{self.seconds:.1f} s, {len(self.mismatches)} mismatches")


class FuzzRig:
    """The three programs, their ring buffers and counters, and the comparison with :func:`reference`.

    ``pp`` is a PacketParserProgram (configured here for every-packet reports), ``dns`` a DnsProgram, ``pf`` a
    PacketForwardProgram; each must be this rig's alone (their ring buffers are opened here)."""

    BATCH = 2000  # frames between ring-buffer drains (1 MiB rings hold about 8000 packetparser events)

    def __init__(self, pp, dns, pf, max_mismatches: int = 20) -> None:
        from retina_exporter.bpf import dns as dns_layout
        from retina_exporter.bpf import packetparser as pp_layout
        from retina_exporter.datapath.syscall import prog_test_run
        from retina_exporter.plugins.packetparser.loader import LoadOptions

        self.pp, self.dns, self.pf = pp, dns, pf
        self._run = prog_test_run
        pp.configure(LoadOptions())  # dataAggregationLevel low: every packet reported
        dns.set_seen(set())
        self.pp_fds = [pp.prog_fd(h) for h in PP_HOOKS]
        self.dns_fds = [dns.prog_fd(h) for h in DNS_HOOKS]
        self.pf_fds = {d: pf.prog_fd(d) for d in ("ingress", "egress")}
        self._pp_unpack = pp_layout.EVENT_STRUCT.unpack_from
        self._pp_size = pp_layout.EVENT_SIZE
        self._dns_unpack = dns_layout.EVENT_HEADER.unpack_from
        self._dns_head = dns_layout.HEADER_SIZE
        self.pp_raw: list[bytes] = []
        self.dns_raw: list[bytes] = []
        pp.bpf[b"events"].open_ring_buffer(self._pp_cb)
        dns.set_event_handler(self._dns_cb)
        self.max_mismatches = max_mismatches

    def _pp_cb(self, _ctx, data, size) -> int:
        self.pp_raw.append(ct.string_at(data, size))
        return 0

    def _dns_cb(self, _ctx, data, size) -> int:
        self.dns_raw.append(ct.string_at(data, size))
        return 0

    def _drain(self) -> None:
        self.pp.bpf.ring_buffer_consume()
        self.dns.bpf.ring_buffer_consume()

    def _test_run(self, fd: int, frame: bytes) -> int | None:
        from retina_exporter.datapath.syscall import BpfError

        try:
            return self._run(fd, frame).retval
        except BpfError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return None

    def run(self, cases, stats: FuzzStats | None = None) -> FuzzStats:
        """Run ``cases`` (an iterable of ``(frame, description)``) and compare; returns the statistics."""
        st = stats or FuzzStats()
        t0 = time.perf_counter()
        self.pf.reset()
        pf_want = {"ingress": [0, 0], "egress": [0, 0]}
        lost0 = self.pp.lost_counts()
        dstats0 = self.dns.stats()
        batch = []
        for frame, desc in cases:
            exp = reference(frame)
            st.cases += 1
            pp_hook = st.cases % 4
            dns_hook = (st.cases // 4) % 4
            rets = (self._test_run(self.pp_fds[pp_hook], frame), self._test_run(self.dns_fds[dns_hook], frame),
                    self._test_run(self.pf_fds["ingress"], frame), self._test_run(self.pf_fds["egress"], frame))
            st.runs += 4
            if exp.refused:
                st.refused += 1
                if rets != (None,) * 4:
                    self._mismatch(st, frame, desc, f"the test run should refuse it, got {rets}")
                continue
            if rets != (TC_ACT_UNSPEC,) * 4:
                self._mismatch(st, frame, desc, f"verdicts {rets} (pp, dns, pf in, pf out): all must be -1")
            for d in pf_want:
                pf_want[d][0] += 1
                pf_want[d][1] += len(frame)
            if exp.pp is None:
                st.not_ip += 1
            batch.append((frame, desc, exp, pp_hook, dns_hook))
            if len(batch) >= self.BATCH:
                self._check(batch, st)
                batch = []
        self._check(batch, st)
        got = self.pf.totals()
        if got != {d: tuple(v) for d, v in pf_want.items()}:
            self._mismatch(st, b"", "packetforward totals", f"got {got}, want {pf_want}")
        lost = self.pp.lost_counts()
        if lost != lost0:
            self._mismatch(st, b"", "packetparser lost counters", f"{lost0} -> {lost}")
        dstats = self.dns.stats()
        if dstats["ringbuf_full"] != dstats0["ringbuf_full"]:
            self._mismatch(st, b"", "dns ring buffer full", f"{dstats0} -> {dstats}")
        st.seconds += time.perf_counter() - t0
        return st

    def _mismatch(self, st: FuzzStats, frame: bytes, desc: str, what: str) -> None:
        if len(st.mismatches) < self.max_mismatches:
            st.mismatches.append(f"{desc}: {what}\n    frame ({len(frame)} bytes) {frame.hex()}")
        else:
            st.mismatches.append(desc)

    def _check(self, batch, st: FuzzStats) -> None:
        self._drain()
        pp_events, dns_events = self.pp_raw, self.dns_raw
        self.pp_raw, self.dns_raw = [], []
        st.pp_events += len(pp_events)
        st.dns_events += len(dns_events)
        want_pp = [b for b in batch if b[2].pp is not None]
        want_dns = [b for b in batch if b[2].dns is not None]
        if len(pp_events) != len(want_pp):
            self._bisect(batch, st, "pp")
        else:
            for raw, (frame, desc, exp, hook, _) in zip(pp_events, want_pp):
                got = self._pp_fields(raw)
                e = exp.pp
                want = (e.ip_version, e.src, e.dst, e.proto, e.sport, e.dport, e.tcp_flags, e.icmp_type,
                        e.icmp_code, 1, len(frame), len(frame), hook, flag_counts(e.tcp_flags, e.has_tcp))
                if got != want:
                    self._mismatch(st, frame, desc, f"packetparser event {got}\n    want {want}")
        if len(dns_events) != len(want_dns):
            self._bisect(batch, st, "dns")
        else:
            for raw, (frame, desc, exp, _, hook) in zip(dns_events, want_dns):
                got = self._dns_fields(raw)
                e = exp.dns
                want = (e.ip_version, e.src, e.dst, e.proto, e.sport, e.dport, e.tcp_seq, e.tcp_flags, e.msg_len,
                        len(e.data), e.data, len(frame), hook)
                if got != want:
                    self._mismatch(st, frame, desc, f"dns event {got}\n    want {want}")

    def _pp_fields(self, raw: bytes) -> tuple:
        (_ts, nbytes, src, dst, packets, _ifindex, packet_bytes, sport, dport, tcp_flags, proto, ipv, obs,
         _direction, _is_reply, _reason, icmp_type, icmp_code, _conn_event, _pad, *rest) = self._pp_unpack(raw)
        return (ipv, src, dst, proto, sport, dport, tcp_flags, icmp_type, icmp_code, packets, nbytes, packet_bytes,
                obs, tuple(rest[:10]))

    def _dns_fields(self, raw: bytes) -> tuple:
        (_ts, src, dst, _ifindex, skb_len, seq, sport, dport, msg_len, cap_len, ipv, proto, obs, flags
         ) = self._dns_unpack(raw)
        data = raw[self._dns_head:self._dns_head + cap_len]
        return (ipv, src, dst, proto, sport, dport, seq, flags, msg_len, cap_len, data, skb_len, obs)

    def _bisect(self, batch, st, which: str) -> None:
        """A batch's event count is off: replay it one frame at a time to name the frames responsible."""
        found = False
        for frame, desc, exp, pp_hook, dns_hook in batch:
            if which == "pp":
                self._test_run(self.pp_fds[pp_hook], frame)
                want = exp.pp is not None
            else:
                self._test_run(self.dns_fds[dns_hook], frame)
                want = exp.dns is not None
            self._drain()
            got = len(self.pp_raw if which == "pp" else self.dns_raw)
            self.pp_raw, self.dns_raw = [], []
            if got != want:
                found = True
                name = "packetparser" if which == "pp" else "dns"
                self._mismatch(st, frame, desc, f"{name} emitted {got} events, want {int(want)}")
        if not found:
            self._mismatch(st, b"", "batch", f"{which}: the batch's event count was off, one by one it is not")


def random_cases(seed: int, n: int):
    gen = FrameGen(seed)
    for _ in range(n):
        yield gen.next()
