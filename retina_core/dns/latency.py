"""DNS latency: each query matched to its response by transport, addresses, ports and message id.

A query is remembered (``pending``) with its kernel timestamp where the dns plugin counts it: its *first
observation point on the node* -- the client pod's veth for a pod's query (as the client sent it, before any
Service DNAT), the uplink for a query from outside (see ``bpf/dns.bpf.c``). The kernel reports every message
once per node, so a query seen on a pod veth and again on the host interface is one pending entry. A response
whose reversed 5-tuple and id match a pending query answers it: latency = response timestamp - query timestamp.
The response matches at its own first observation point when no NAT changed its addresses (pod to pod, node to
pod, pod to an outside server without SNAT), else where the kernel reports it again as it leaves toward its
client (after the reverse NAT; ``OBS_LATENCY_ONLY``, not counted). So the latency is the node's view of the
client's wait: for a pod, from its query leaving its veth to the response reaching its veth (or, without NAT,
reaching the node); for two pods on the node, the server's handling time plus both veth crossings.

Outcomes are decided by timestamps alone, so they do not depend on when :meth:`QueryTracker.expire` runs: a
response that comes more than ``timeout_ns`` after its query does not count as an answer -- the query counts as
unanswered (once), at expiry or when that late response arrives, whichever is first. A query repeated with the
same 5-tuple and id while the first is pending (a client retry) is the same query: the first one's timestamp
stays, and the repeat is counted in ``duplicates``. At most ``max_pending`` queries are pending; a query that
would exceed it is not tracked (counted in ``overflow``) -- neither answered nor unanswered.

Each query's :class:`~retina_core.dns.record.DnsRecord` gets its ``outcome`` (``OUTCOME_*``) when it is decided
and, when answered, its ``answer`` (the response's record, whose ``latency_ns`` is set): the pod-level metrics read
them from the query's record (so a query counts for the client that sent it, whatever NAT the response went
through).

Responses are matched where their 5-tuple is the reverse of the query's: at their first observation point, or --
through a Service VIP's DNAT or an SNAT -- where the kernel reports them again toward their client (see the dns
plugin's processor); ``unmatched_responses`` counts observations that matched nothing (a NAT'd response's first
one included).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from retina_core.dns.names import rcode_name

__all__ = ["DEFAULT_BUCKETS_S", "DEFAULT_MAX_PENDING", "DEFAULT_TIMEOUT_NS", "OUTCOME_ANSWERED", "OUTCOME_NONE",
           "OUTCOME_PENDING", "OUTCOME_UNANSWERED", "OUTCOME_UNTRACKED", "QueryTracker", "query_type_label",
           "return_code_label"]

#: Histogram bucket bounds, seconds: 0.5 ms to 10 s.
DEFAULT_BUCKETS_S: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                                        5.0, 10.0)
DEFAULT_TIMEOUT_NS = 5_000_000_000
DEFAULT_MAX_PENDING = 65_536

OUTCOME_NONE = 0  # a response, or a query nobody tracked (latency off)
OUTCOME_PENDING = 1
OUTCOME_ANSWERED = 2
OUTCOME_UNANSWERED = 3
OUTCOME_UNTRACKED = 4  # pending table full, or a repeat of a pending query


def query_type_label(info: Any) -> str:
    """``query_type`` label value: the question types joined by commas (``A``; ``""`` with no question)."""
    return ",".join(info.qtypes)


def return_code_label(info: Any) -> str:
    """``return_code`` label value: the response code's name (``NOERROR``, ``NXDOMAIN`` …; the number if unnamed)."""
    return rcode_name(info.rcode)


class QueryTracker:
    """Pending queries of one processor. Single-threaded (the dns ring reader's thread).

    ``on_answer(info_of_response, latency_s)`` and ``on_unanswered(info_of_query)`` are called once per decided
    query."""

    def __init__(self, on_answer, on_unanswered, *, timeout_ns: int = DEFAULT_TIMEOUT_NS,
                 max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.on_answer = on_answer
        self.on_unanswered = on_unanswered
        self.timeout_ns = timeout_ns
        self.max_pending = max_pending
        self.pending: OrderedDict[tuple, tuple[int, Any]] = OrderedDict()  # in arrival (timestamp) order
        self.overflow = 0
        self.duplicates = 0
        self.unmatched_responses = 0

    def query(self, key: tuple, ts_ns: int, info: Any) -> None:
        """A query: ``key`` = (proto, src, dst, sport, dport, id) as sent; ``ts_ns`` its kernel timestamp."""
        pending = self.pending
        if key in pending:
            self.duplicates += 1
            info.outcome = OUTCOME_UNTRACKED
            return
        if len(pending) >= self.max_pending:
            self.overflow += 1
            info.outcome = OUTCOME_UNTRACKED
            return
        info.outcome = OUTCOME_PENDING
        pending[key] = (ts_ns, info)

    def response(self, key: tuple, ts_ns: int, info: Any) -> bool:
        """A response; ``key`` as the query's (the response's 5-tuple reversed). Returns whether it matched a
        pending query (answered it, or came too late)."""
        hit = self.pending.pop(key, None)
        if hit is None:
            self.unmatched_responses += 1
            return False
        q_ts, q_info = hit
        latency = ts_ns - q_ts
        if latency > self.timeout_ns:
            q_info.outcome = OUTCOME_UNANSWERED
            self.on_unanswered(q_info)
            return True
        info.latency_ns = max(latency, 0)
        q_info.answer = info
        q_info.outcome = OUTCOME_ANSWERED  # last: a reader that sees ANSWERED finds the answer
        self.on_answer(info, info.latency_ns / 1e9)
        return True

    def expire(self, now_ns: int) -> int:
        """Count pending queries older than the timeout as unanswered; return how many."""
        pending = self.pending
        cutoff = now_ns - self.timeout_ns
        n = 0
        while pending:
            key, (ts, info) = next(iter(pending.items()))
            if ts >= cutoff:
                break
            del pending[key]
            info.outcome = OUTCOME_UNANSWERED
            self.on_unanswered(info)
            n += 1
        return n
