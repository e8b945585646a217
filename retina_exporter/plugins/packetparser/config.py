"""The ``conntrackLifetimes`` config section (owned by the packetparser plugin): how long a connection without
packets stays in the kernel conntrack map before the sweeper deletes it (CLOCK_BOOTTIME durations)."""

from __future__ import annotations

from dataclasses import dataclass

from retina_core.settings import Key, Section, duration_at_least
from retina_core.units import NS_PER_S, format_duration

__all__ = ["CONNTRACK_LIFETIMES_SECTION", "ConntrackLifetimes"]


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
