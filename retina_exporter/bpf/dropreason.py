"""Python mirror of ``bpf/dropreason.h`` (tests compare these with the C compiler's view)."""

from __future__ import annotations

import ctypes as ct
import struct

HINT_UNKNOWN = 0
HINT_RECEIVED = 1
HINT_LOCAL = 2

STAT_RINGBUF_FULL = 0
STAT_IGNORED = 1
STAT_OUT_OF_SCOPE = 2
STAT_COUNTS_FULL = 3
STAT_SLOTS = 4
STAT_NAMES = ("ringbuf_full", "ignored", "out_of_scope", "counts_full")

IGNORE_WORDS = 8
IGNORE_MAX = IGNORE_WORDS * 64


class DrKey(ct.Structure):
    _fields_ = [("reason", ct.c_uint32), ("hint", ct.c_uint8), ("_pad", ct.c_uint8 * 3)]


class DrValue(ct.Structure):
    _fields_ = [("packets", ct.c_uint64), ("bytes", ct.c_uint64)]


class DrConfig(ct.Structure):
    _fields_ = [
        ("ignore_mask", ct.c_uint64 * IGNORE_WORDS),
        ("emit_events", ct.c_uint32),
        ("filter_netns", ct.c_uint32),
    ]


class DropEvent(ct.Structure):
    _fields_ = [
        ("ts_ns", ct.c_uint64),
        ("location", ct.c_uint64),
        ("src_ip", ct.c_uint8 * 16),
        ("dst_ip", ct.c_uint8 * 16),
        ("reason", ct.c_uint32),
        ("bytes", ct.c_uint32),
        ("packets", ct.c_uint32),
        ("ifindex", ct.c_uint32),
        ("netns", ct.c_uint32),
        ("src_port", ct.c_uint16),
        ("dst_port", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("ip_version", ct.c_uint8),
        ("hint", ct.c_uint8),
        ("tcp_flags", ct.c_uint8),
        ("icmp_type", ct.c_uint8),
        ("icmp_code", ct.c_uint8),
        ("_pad", ct.c_uint8 * 2),
    ]


EVENT_STRUCT = struct.Struct("=QQ16s16sIIIIIHHBBBBBB2x")
EVENT_SIZE = EVENT_STRUCT.size


def ignore_mask(codes) -> list[int]:
    """The ``ignore_mask`` words for reason codes (codes beyond the mask cannot be ignored in the kernel)."""
    words = [0] * IGNORE_WORDS
    for c in codes:
        if 0 <= c < IGNORE_MAX:
            words[c // 64] |= 1 << (c % 64)
    return words
