"""The packetparser plugin's config sections.

``tcpMetrics``: TCP connect latency, failed connections and round-trip time, which come with packetparser::

    tcpMetrics:
      connect: true            # ..._tcp_connect_latency_seconds and ..._tcp_failed_connections (opt-out)
      rtt: true                # ..._tcp_rtt_seconds (opt-out)
      connectTimeout: 10s      # an attempt not answered within this is failed, reason "timeout"
      rttSampleInterval: 10s   # at most one RTT sample per connection in this interval
      buckets: [0.00005, ..., 10]   # histogram upper bounds in seconds, ascending, at most 32

``conntrackLifetimes``: how long a connection without packets stays in the kernel conntrack map before the
sweeper deletes it (CLOCK_BOOTTIME durations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from retina_core.settings import BOOL_ACCEPTED, Invalid, Key, Section, boolean, duration_at_least
from retina_core.telemetry import LATENCY_BUCKETS_S
from retina_core.units import NS_PER_S, ConfigError, format_duration

__all__ = ["CONNTRACK_LIFETIMES_SECTION", "DEFAULT_BUCKETS", "MAX_BUCKETS", "TCP_METRICS_SECTION",
           "ConntrackLifetimes", "TcpMetricsConfig", "check_connect_timeout"]

DEFAULT_BUCKETS = LATENCY_BUCKETS_S  # the RTT and connect-latency histograms' upper bounds (s): 50 µs to 10 s
MAX_BUCKETS = 32  # HIST_MAX_BOUNDS in bpf/packetparser.h and bpf/tcprtt.h


@dataclass(frozen=True)
class TcpMetricsConfig:
    connect: bool = True
    """Connect latency and failed connections (packetparser's conntrack)."""
    rtt: bool = True
    """Smoothed RTT samples (tcp:tcp_probe)."""
    connect_timeout_ns: int = 10 * NS_PER_S
    """An attempt whose SYN is not answered (SYN-ACK or RST) within this counts as failed, reason ``timeout``."""
    rtt_sample_interval_ns: int = 10 * NS_PER_S
    """At most one RTT sample per socket per interval."""
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    """Histogram upper bounds in seconds (``+Inf`` is implicit)."""

    def bounds_ns(self) -> tuple[int, ...]:
        return tuple(round(b * NS_PER_S) for b in self.buckets)


def bucket_list(value: Any) -> tuple[float, ...]:
    """Ascending positive seconds, 1 to ``MAX_BUCKETS`` of them, distinct at nanosecond resolution (a YAML list,
    or a comma-separated string from the environment)."""
    if isinstance(value, str):
        try:
            value = [float(item) for item in value.split(",") if item.strip()]
        except ValueError:
            raise Invalid("not a comma-separated list of seconds") from None
    if not isinstance(value, list) or not value:
        raise Invalid("not a non-empty list of seconds")
    out: list[float] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not item > 0 or item == float("inf"):
            raise Invalid(f"item {item!r} is not a positive number of seconds")
        out.append(float(item))
    if len(out) > MAX_BUCKETS:
        raise Invalid(f"{len(out)} buckets, at most {MAX_BUCKETS}")
    ns = [round(b * NS_PER_S) for b in out]
    if any(b <= a for a, b in zip(ns, ns[1:])):
        raise Invalid("not strictly ascending")
    return tuple(out)


def check_connect_timeout(tcp: "TcpMetricsConfig", lifetimes: "ConntrackLifetimes") -> None:
    """The conntrack keeps a handshake-only entry ``conntrackLifetimes.synTimeout``: a connect timeout must be
    shorter, or the sweep would delete the attempt before settling it."""
    if tcp.connect and tcp.connect_timeout_ns >= lifetimes.syn_timeout_ns:
        raise ConfigError(f"tcpMetrics.connectTimeout: {format_duration(tcp.connect_timeout_ns)} is not below "
                          f"conntrackLifetimes.synTimeout ({format_duration(lifetimes.syn_timeout_ns)}), the "
                          "conntrack's handshake lifetime; set it lower (or raise synTimeout)")


TCP_METRICS_SECTION = Section("tcpMetrics", TcpMetricsConfig, (
    Key("connect", "connect", boolean, BOOL_ACCEPTED),
    Key("rtt", "rtt", boolean, BOOL_ACCEPTED),
    Key("connectTimeout", "connect_timeout_ns", duration_at_least(NS_PER_S // 10),
        "a duration of at least 100ms and below 60s", render=format_duration),
    Key("rttSampleInterval", "rtt_sample_interval_ns", duration_at_least(NS_PER_S // 1000),
        "a duration of at least 1ms", render=format_duration),
    Key("buckets", "buckets", bucket_list, f"1 to {MAX_BUCKETS} ascending positive numbers of seconds"),
))


@dataclass(frozen=True)
class ConntrackLifetimes:
    """Nanoseconds; the defaults are the reference agents'."""

    tcp_ns: int = 360 * NS_PER_S
    """An established TCP connection."""
    syn_timeout_ns: int = 60 * NS_PER_S
    """A TCP handshake that has not completed."""
    time_wait_ns: int = 30 * NS_PER_S
    """A TCP connection after FIN or RST."""
    other_ns: int = 60 * NS_PER_S
    """UDP, ICMP and every other protocol."""


_DURATION = "a duration of at least 1s such as '30s'"

CONNTRACK_LIFETIMES_SECTION = Section("conntrackLifetimes", ConntrackLifetimes, (
    Key("tcp", "tcp_ns", duration_at_least(NS_PER_S), _DURATION, format_duration),
    Key("synTimeout", "syn_timeout_ns", duration_at_least(NS_PER_S), _DURATION, format_duration),
    Key("timeWait", "time_wait_ns", duration_at_least(NS_PER_S), _DURATION, format_duration),
    Key("other", "other_ns", duration_at_least(NS_PER_S), _DURATION, format_duration),
))
