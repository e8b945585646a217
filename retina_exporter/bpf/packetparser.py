"""Python mirror of ``bpf/packetparser.h``: one ctypes structure per C struct, plus precompiled decoders.

The ctypes structures are the single source of size and offsets on the user side (tests compare them with the C
compiler's view); the hot-path decoder is a ``struct.Struct`` built from the same field list.
"""

from __future__ import annotations

import ctypes as ct
import struct

from retina_core.record import CONN_EVENTS, FLAG_NAMES, REPORT_REASONS

# packet_event.flag_counts: one count per retina_core.record FLAG_NAMES entry (FLAG_IDX_* in packetparser.h).
FLAG_COUNT = len(FLAG_NAMES)

# Report reasons (REPORT_* in packetparser.h): the index of the reason's name in retina_core.record REPORT_REASONS.
REPORT_EVERY_PACKET = REPORT_REASONS.index("every_packet")
REPORT_NEW = REPORT_REASONS.index("new_connection")
REPORT_FLAGS = REPORT_REASONS.index("flags")
REPORT_FLAG_CHANGE = REPORT_REASONS.index("flag_change")
REPORT_INTERVAL = REPORT_REASONS.index("interval")
REPORT_CLOSE = REPORT_REASONS.index("close")
REPORT_SWEEP = REPORT_REASONS.index("sweep")
REPORT_EXPIRED = REPORT_REASONS.index("expired")
REPORT_CONNECT = REPORT_REASONS.index("connect")

# Connection-attempt states (CONN_*) and the outcome an event reports (CONN_EV_*: retina_core.record CONN_EVENTS).
CONN_NONE = 0
CONN_SYN_SENT = 1
CONN_ESTABLISHED = 2
CONN_RESET = 3
CONN_TIMEOUT = 4
CONN_ABORTED = 5
CONN_OBSERVER = 6
CONN_EV_NONE = CONN_EVENTS.index("")
CONN_EV_ESTABLISHED = CONN_EVENTS.index("established")
CONN_EV_RESET = CONN_EVENTS.index("reset")
CONN_EV_TIMEOUT = CONN_EVENTS.index("timeout")

# Node-level TCP connection counters (tcp_stats per-CPU array).
HIST_MAX_BOUNDS = 32
TCP_STAT_RESET = 0
TCP_STAT_TIMEOUT = 1
TCP_STAT_CONNECT_COUNT = 2
TCP_STAT_CONNECT_SUM_NS = 3
TCP_STAT_CONNECT_BUCKET0 = 4
TCP_STAT_SLOTS = TCP_STAT_CONNECT_BUCKET0 + HIST_MAX_BOUNDS + 1

CT_STATE_OPEN = 0
CT_STATE_CLOSING = 1
CT_STATE_CLOSED = 2

LOST_RINGBUF_FULL = 0
LOST_CT_FULL = 1
LOST_SLOTS = 2

SWEEP_F_EXPIRE = 1
SWEEP_F_CONNECT_TIMEOUT = 2
SWEEP_RET_NO_ENTRY = 0xFF00
SWEEP_RET_RINGBUF_FULL = 0xFF01
SWEEP_RET_BAD_REQUEST = 0xFF02

RARE_LANES = ("FIN", "SYN", "RST", "URG", "ECE", "CWR", "NS", "SYNACK")


class CtKey(ct.Structure):
    """``struct ct_key`` (44 bytes): the 5-tuple in the initiator's direction plus the interface."""

    _fields_ = [
        ("src_ip", ct.c_uint8 * 16),
        ("dst_ip", ct.c_uint8 * 16),
        ("src_port", ct.c_uint16),
        ("dst_port", ct.c_uint16),
        ("ifindex", ct.c_uint32),
        ("proto", ct.c_uint8),
        ("ip_version", ct.c_uint8),
        ("_pad", ct.c_uint8 * 2),
    ]


class CtCounters(ct.Structure):
    """``struct ct_counters`` (40 bytes): one direction's unreported counts."""

    _fields_ = [
        ("bytes", ct.c_uint64),
        ("packets", ct.c_uint64),
        ("ack", ct.c_uint64),
        ("psh", ct.c_uint64),
        ("rare_flags", ct.c_uint64),
    ]


class CtEntry(ct.Structure):
    """``struct ct_entry`` (176 bytes). Index 0 of each pair: initiator -> responder; 1: replies."""

    _fields_ = [
        ("eviction_ns", ct.c_uint64),
        ("last_seen_ns", ct.c_uint64),
        ("last_report_ns", ct.c_uint64 * 2),
        ("unreported", CtCounters * 2),
        ("total_bytes", ct.c_uint64 * 2),
        ("total_packets", ct.c_uint64 * 2),
        ("flags_seen", ct.c_uint16 * 2),
        ("traffic_direction", ct.c_uint8),
        ("direction_unknown", ct.c_uint8),
        ("obs_point", ct.c_uint8 * 2),
        ("state", ct.c_uint8),
        ("_pad", ct.c_uint8 * 3),
        ("syn_seq", ct.c_uint32),
        ("conn_state", ct.c_uint64),
        ("syn_ns", ct.c_uint64),
    ]


class AttemptKey(ct.Structure):
    """``struct attempt_key`` (44 bytes): one connection attempt (initiator's 5-tuple and ISN, no interface)."""

    _fields_ = [
        ("src_ip", ct.c_uint8 * 16),
        ("dst_ip", ct.c_uint8 * 16),
        ("src_port", ct.c_uint16),
        ("dst_port", ct.c_uint16),
        ("isn", ct.c_uint32),
        ("ip_version", ct.c_uint8),
        ("_pad", ct.c_uint8 * 3),
    ]


class PacketEvent(ct.Structure):
    """``struct packet_event`` (128 bytes), one ring-buffer record."""

    _fields_ = [
        ("ts_ns", ct.c_uint64),
        ("bytes", ct.c_uint64),
        ("src_ip", ct.c_uint8 * 16),
        ("dst_ip", ct.c_uint8 * 16),
        ("packets", ct.c_uint32),
        ("ifindex", ct.c_uint32),
        ("packet_bytes", ct.c_uint32),
        ("src_port", ct.c_uint16),
        ("dst_port", ct.c_uint16),
        ("tcp_flags", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("ip_version", ct.c_uint8),
        ("obs_point", ct.c_uint8),
        ("traffic_direction", ct.c_uint8),
        ("is_reply", ct.c_uint8),
        ("report_reason", ct.c_uint8),
        ("icmp_type", ct.c_uint8),
        ("icmp_code", ct.c_uint8),
        ("conn_event", ct.c_uint8),
        ("_pad", ct.c_uint8),
        ("flag_counts", ct.c_uint32 * FLAG_COUNT),
        ("_pad2", ct.c_uint32),
        ("connect_latency_ns", ct.c_uint64),
    ]


class PpConfig(ct.Structure):
    """``struct pp_config``: runtime configuration, array map index 0."""

    _fields_ = [
        ("report_interval_ns", ct.c_uint64),
        ("aggregation_high", ct.c_uint32),
        ("sampling_threshold", ct.c_uint32),
        ("tcp_lifetime_ns", ct.c_uint64),
        ("syn_timeout_ns", ct.c_uint64),
        ("time_wait_ns", ct.c_uint64),
        ("nontcp_lifetime_ns", ct.c_uint64),
        ("filter_enabled", ct.c_uint32),
        ("conn_enabled", ct.c_uint32),
        ("n_bounds", ct.c_uint32),
        ("_pad", ct.c_uint32),
        ("bounds_ns", ct.c_uint64 * HIST_MAX_BOUNDS),
    ]


class FilterKey(ct.Structure):
    """``struct filter_key``: LPM trie key; IPv4 as IPv4-mapped IPv6 (``::ffff:a.b.c.d``)."""

    _fields_ = [("prefixlen", ct.c_uint32), ("ip", ct.c_uint8 * 16)]


class SweepRequest(ct.Structure):
    """``struct sweep_request``: input of ``ct_sweep`` after a 14-byte dummy Ethernet header."""

    _fields_ = [("key", CtKey), ("flags", ct.c_uint32)]


# Hot-path decoder of PacketEvent: native byte order and no padding surprises (checked against ctypes in tests).
EVENT_STRUCT = struct.Struct(f"=QQ16s16sIIIHHHBBBBBBBBBB{FLAG_COUNT}IIQ")
EVENT_SIZE = EVENT_STRUCT.size

CT_KEY_STRUCT = struct.Struct("=16s16sHHIBB2x")


def sampling_threshold(rate: int) -> int:
    """``dataSamplingRate`` N -> the u32 threshold under which ``bpf_get_prandom_u32()`` marks a packet sampled."""
    if rate <= 1:
        return 0xFFFFFFFF
    return 0xFFFFFFFF // rate


def unpack_rare_flags(value: int) -> dict[str, int]:
    """Split ``ct_counters.rare_flags`` into its eight 8-bit lanes."""
    return {name: (value >> (8 * i)) & 0xFF for i, name in enumerate(RARE_LANES)}
