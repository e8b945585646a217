"""Python mirror of ``bpf/tcprtt.h`` (tests/test_bpf_layouts.py pins it)."""

from __future__ import annotations

import ctypes as ct
import struct

RTT_HIST_MAX_BOUNDS = 32
STAT_SAMPLES = 0
STAT_SUM_NS = 1
STAT_OUT_OF_SCOPE = 2
STAT_RINGBUF_FULL = 3
STAT_BUCKET0 = 4
STAT_SLOTS = STAT_BUCKET0 + RTT_HIST_MAX_BOUNDS + 1


class RttConfig(ct.Structure):
    """``struct rtt_config``: runtime configuration, array map index 0."""

    _fields_ = [
        ("interval_ns", ct.c_uint64),
        ("filter_netns", ct.c_uint32),
        ("emit_events", ct.c_uint32),
        ("n_bounds", ct.c_uint32),
        ("_pad", ct.c_uint32),
        ("bounds_ns", ct.c_uint64 * RTT_HIST_MAX_BOUNDS),
    ]


class RttEvent(ct.Structure):
    """``struct rtt_event`` (56 bytes): one socket's smoothed RTT sample."""

    _fields_ = [
        ("ts_ns", ct.c_uint64),
        ("saddr", ct.c_uint8 * 16),
        ("daddr", ct.c_uint8 * 16),
        ("srtt_us", ct.c_uint32),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("ip_version", ct.c_uint8),
        ("_pad", ct.c_uint8 * 7),
    ]


EVENT_STRUCT = struct.Struct("=Q16s16sIHHB7x")
EVENT_SIZE = EVENT_STRUCT.size
