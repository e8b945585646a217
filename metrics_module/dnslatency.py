"""Pod-level DNS latency: ``networkobservability_adv_dns_latency_seconds`` (histogram; ``query_type``,
``return_code``, context labels) and ``networkobservability_adv_dns_unanswered_queries`` (counter; ``query_type``,
context labels), from the dns plugin's records.

The dns plugin's reader matches queries and responses (:mod:`retina_core.dns.latency`); this module only reads its
decisions: a response record with ``l7.latency_ns`` (it answered a query) is one observation; a query record is
kept (its label values taken when it arrives) until the reader decides its ``l7.outcome``, and counts once if that
is *unanswered*. So the pod-level counts are exactly the node-level ones restricted to the admitted pods. Queries
awaiting their outcome: at most :data:`MAX_WAITING` (more are dropped and counted in the series-overflow counter of
``adv_dns_unanswered_queries``); they are checked on every sweep of the metrics module (every 0.5 s at most).

Which pod a record counts for is the rule of adv_dns_* (local context: the pod on this node, the client when both
are; remote context: both sides' labels).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from retina_core.dns.latency import (DEFAULT_MAX_PENDING, OUTCOME_PENDING, OUTCOME_UNANSWERED,
                                     query_type_label, return_code_label)
from retina_core.histogram import Histogram

__all__ = ["DnsLatencyMetrics", "LATENCY", "MAX_WAITING", "UNANSWERED"]

LATENCY = "adv_dns_latency_seconds"
UNANSWERED = "adv_dns_unanswered_queries"
MAX_WAITING = 2 * DEFAULT_MAX_PENDING


class DnsLatencyMetrics:
    """The configured families among :data:`LATENCY` and :data:`UNANSWERED` (``AdvMetric`` objects of
    ``owner``); ``owner.dns_side(rec)`` picks the side, ``owner.dns_latency_buckets`` are the bucket bounds of new
    series. Called under the owner's lock."""

    def __init__(self, owner: Any, metrics: list) -> None:
        self.owner = owner
        self.latency = next((m for m in metrics if m.name == LATENCY), None)
        self.unanswered = next((m for m in metrics if m.name == UNANSWERED), None)
        self.waiting: deque[tuple[Any, Any, tuple]] = deque()  # (query DnsRecord, context labels, identities)

    def add(self, rec: Any, now: float) -> None:
        info = rec.l7
        if info is None:
            return
        if info.qr:
            m = self.latency
            if m is None or not info.latency_ns:
                return
            side = self.owner.dns_side(rec)
            if side is None:
                return
            e = m.entry((query_type_label(info), return_code_label(info)) + m.context_values(rec, side), now,
                        (rec.source, rec.destination))
            if e is None:
                self.owner.count_overflow(m.name)
                return
            if e[0] == 0:
                e[0] = Histogram(self.owner.dns_latency_buckets)
            e[0].observe(info.latency_ns / 1e9)
            e[1] = now
            return
        m = self.unanswered
        if m is None or info.outcome == 0:  # not tracked by the dns plugin
            return
        side = self.owner.dns_side(rec)
        if side is None:
            return
        if len(self.waiting) >= MAX_WAITING:
            self.owner.count_overflow(m.name)
            return
        self.waiting.append((info, m.context_values(rec, side), (rec.source, rec.destination)))

    def poll(self, now: float) -> None:
        """Count the waiting queries that were decided unanswered; forget the decided ones (oldest first)."""
        m = self.unanswered
        waiting = self.waiting
        while waiting:
            info, ctx, owners = waiting[0]
            outcome = info.outcome
            if outcome == OUTCOME_PENDING:
                break
            waiting.popleft()
            if outcome != OUTCOME_UNANSWERED or m is None:
                continue
            e = m.entry((query_type_label(info),) + ctx, now, owners)
            if e is None:
                self.owner.count_overflow(m.name)
                continue
            e[0] += 1
            e[1] = now
