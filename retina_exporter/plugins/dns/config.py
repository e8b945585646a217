"""The ``dnsLatency`` config section (owned by the dns plugin): DNS query → response latency and unanswered
queries (see :mod:`retina_core.dns.latency`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from retina_core.dns.latency import DEFAULT_BUCKETS_S, DEFAULT_MAX_PENDING, DEFAULT_TIMEOUT_NS
from retina_core.histogram import validate_bounds
from retina_core.settings import BOOL_ACCEPTED, Invalid, Key, Section, boolean, duration_at_least, int_range, str_list
from retina_core.units import NS_PER_S, format_duration

__all__ = ["DNS_LATENCY_SECTION", "DnsLatencyConfig"]


@dataclass(frozen=True)
class DnsLatencyConfig:
    enabled: bool = True
    """Track queries and responses (``dns_latency_seconds``, ``dns_unanswered_queries``, ``Layer7.latency_ns``)."""
    unanswered_timeout_ns: int = DEFAULT_TIMEOUT_NS
    """A query without a response within this time counts as unanswered, nanoseconds."""
    buckets: tuple[float, ...] = DEFAULT_BUCKETS_S
    """Histogram bucket upper bounds, seconds (node and pod level)."""
    max_pending: int = DEFAULT_MAX_PENDING
    """Queries waiting for their response at most; more are not tracked (counted)."""


def _buckets(value: Any) -> tuple[float, ...]:
    items = str_list(value) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise Invalid("not a list")
    try:
        return validate_bounds(tuple(items), "dnsLatency.buckets")
    except ValueError:
        raise Invalid("not positive, strictly increasing numbers") from None


DNS_LATENCY_SECTION = Section("dnsLatency", DnsLatencyConfig, (
    Key("enabled", "enabled", boolean, BOOL_ACCEPTED),
    Key("unansweredTimeout", "unanswered_timeout_ns", duration_at_least(NS_PER_S // 10),
        "a duration of at least 100ms such as '5s'", format_duration),
    Key("buckets", "buckets", _buckets, "a list of positive, strictly increasing numbers of seconds"),
    Key("maxPending", "max_pending", int_range(1, 16_777_216), "an integer from 1 to 16777216"),
))
