"""Pod-level DNS latency: ``networkobservability_adv_dns_latency_seconds`` (histogram; ``query_type``,
``return_code``, context labels) and ``networkobservability_adv_dns_unanswered_queries`` (counter; ``query_type``,
context labels), from the dns plugin's query records.

The dns plugin's reader matches queries and responses (:mod:`retina_core.dns.latency`); this module only reads its
decisions, from the *query's* record: a query is kept (its label values taken when it arrives: the client that
sent it, whatever NAT its response went through) until the reader decides its ``l7.outcome``; answered, it is one
observation of its answer's ``latency_ns`` with the answer's return code; unanswered, it counts once. So the
pod-level counts are exactly the node-level ones restricted to the admitted pods. Queries awaiting their outcome:
at most :data:`MAX_WAITING` (more are dropped and counted in the series-overflow counter); they are checked on every
sweep of the metrics module (every 0.5 s at most).

Which pod a query counts for is the rule of adv_dns_* (local context: the pod on this node -- the client when both
are; remote context: both sides' labels).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from retina_core.dns.latency import (DEFAULT_MAX_PENDING, OUTCOME_ANSWERED, OUTCOME_PENDING, OUTCOME_UNANSWERED,
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
        # (query DnsRecord, latency context labels, unanswered context labels, identities), in arrival order
        self.waiting: deque[tuple[Any, tuple | None, tuple | None, tuple]] = deque()

    def add(self, rec: Any, now: float) -> None:
        info = rec.l7
        if info is None or info.qr or info.outcome == 0:  # a response, or a query the dns plugin does not track
            return
        side = self.owner.dns_side(rec)
        if side is None:
            return
        if len(self.waiting) >= MAX_WAITING:
            for m in (self.latency, self.unanswered):
                if m is not None:
                    self.owner.count_overflow(m.name)
            return
        lat, un = self.latency, self.unanswered
        self.waiting.append((info, lat.context_values(rec, side) if lat is not None else None,
                             un.context_values(rec, side) if un is not None else None, (rec.source, rec.destination)))

    def poll(self, now: float) -> None:
        """Count the waiting queries that were decided (oldest first, up to the first undecided one)."""
        waiting = self.waiting
        while waiting:
            info, lat_ctx, un_ctx, owners = waiting[0]
            outcome = info.outcome
            if outcome == OUTCOME_PENDING:
                break
            waiting.popleft()
            if outcome == OUTCOME_ANSWERED and lat_ctx is not None and info.answer is not None:
                answer = info.answer
                e = self._entry(self.latency, (query_type_label(info), return_code_label(answer)) + lat_ctx, now,
                                owners)
                if e is not None:
                    if e[0] == 0:
                        e[0] = Histogram(self.owner.dns_latency_buckets)
                    e[0].observe(answer.latency_ns / 1e9)
            elif outcome == OUTCOME_UNANSWERED and un_ctx is not None:
                e = self._entry(self.unanswered, (query_type_label(info),) + un_ctx, now, owners)
                if e is not None:
                    e[0] += 1

    def _entry(self, m: Any, labels: tuple, now: float, owners: tuple) -> list | None:
        e = m.entry(labels, now, owners)
        if e is None:
            self.owner.count_overflow(m.name)
        else:
            e[1] = now
        return e
