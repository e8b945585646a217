"""Python mirror of ``bpf/tcpretrans.h``: decoding retransmission events (tests/test_bpf_layouts.py pins it)."""

from __future__ import annotations

import ctypes as ct
import struct

KIND_SKB = 0
KIND_SYNACK = 1

STAT_EVENTS = 0
STAT_SEGMENTS = 1
STAT_NOT_SENT = 2
STAT_OUT_OF_SCOPE = 3
STAT_RINGBUF_FULL = 4
STAT_SYNACK = 5
STAT_SLOTS = 6
STAT_NAMES = ("events", "segments", "not_sent", "out_of_scope", "ringbuf_full", "synack")


class RtConfig(ct.Structure):
    _fields_ = [("filter_netns", ct.c_uint32), ("emit_events", ct.c_uint32)]


class RtEvent(ct.Structure):
    """``struct rt_event`` (64 bytes)."""

    _fields_ = [
        ("ts_ns", ct.c_uint64),
        ("saddr", ct.c_uint8 * 16),
        ("daddr", ct.c_uint8 * 16),
        ("netns", ct.c_uint32),
        ("err", ct.c_int32),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("segs", ct.c_uint16),
        ("ip_version", ct.c_uint8),
        ("state", ct.c_uint8),
        ("kind", ct.c_uint8),
        ("tcp_flags", ct.c_uint8),
        ("_pad", ct.c_uint8 * 6),
    ]


EVENT_STRUCT = struct.Struct("<Q16s16sIiHHHBBBB6x")
EVENT_SIZE = EVENT_STRUCT.size
assert EVENT_SIZE == ct.sizeof(RtEvent) == 64
