"""Python mirror of ``bpf/dns.h`` (the lab tests decode real kernel events with it; tests/test_bpf_layouts.py
compares it with the compiled C)."""

from __future__ import annotations

import ctypes as ct
import struct

DNS_CAPTURE = 512

STAT_EMITTED = 0
STAT_RINGBUF_FULL = 1
STAT_SEEN_EARLIER = 2
STAT_NO_PAYLOAD = 3
STAT_SLOTS = 4
STAT_NAMES = ("emitted", "ringbuf_full", "seen_earlier", "tcp_no_payload")

#: Flag in ``obs_point``: a response seen again where it leaves toward its client (latency matching only).
OBS_LATENCY_ONLY = 0x80


class DnsEvent(ct.Structure):
    """``struct dns_event`` (64 + DNS_CAPTURE bytes)."""

    _fields_ = [
        ("ts_ns", ct.c_uint64),
        ("src_ip", ct.c_uint8 * 16),
        ("dst_ip", ct.c_uint8 * 16),
        ("ifindex", ct.c_uint32),
        ("skb_len", ct.c_uint32),
        ("tcp_seq", ct.c_uint32),
        ("src_port", ct.c_uint16),
        ("dst_port", ct.c_uint16),
        ("msg_len", ct.c_uint16),
        ("cap_len", ct.c_uint16),
        ("ip_version", ct.c_uint8),
        ("proto", ct.c_uint8),
        ("obs_point", ct.c_uint8),  # OBS_* of common.h = retina_core.record.OBS_*
        ("tcp_flags", ct.c_uint8),
        ("data", ct.c_uint8 * DNS_CAPTURE),
    ]


EVENT_HEADER = struct.Struct("<Q16s16sIIIHHHHBBBB")
HEADER_SIZE = EVENT_HEADER.size  # 64
EVENT_SIZE = ct.sizeof(DnsEvent)
assert HEADER_SIZE == DnsEvent.data.offset
