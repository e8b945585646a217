"""The DNS part of a flow record (``FlowRecord.l7``): what Hubble's ``flow.DNS`` and Retina's adv_dns_* need.

Field meanings:

* ``qr``: False for a query, True for a response (``is_response`` is the same, the name the
  metrics module reads).
* ``id``: the message id; ``query``: the first question's name with the trailing dot (``"example.com."``),
  ``""`` when the message has no question; ``qtypes``: type names of every question (``("A",)``).
* ``rcode``: the header's 4-bit response code (0 in queries); ``num_answers``: ANCOUNT from the header.
* ``ips``: A and AAAA answer addresses as text, in message order; ``cnames``: CNAME targets; ``rrtypes``: type
  names of every answer record read; ``ttl``: the lowest TTL among A, AAAA and CNAME answers (0 when there is
  none), as Cilium's DNS proxy reports it.
* ``complete``: False when the captured payload ended before the answer section did (the agent keeps at most
  512 bytes of a message): ``ips``/``cnames``/``rrtypes`` then list only the answers that were captured.
* ``latency_ns``: on a response that answered a tracked query, the time since the query (see
  :mod:`retina_core.dns.latency`); 0 otherwise. ``outcome``: on a query, what became of it
  (``retina_core.dns.latency.OUTCOME_*``; set later, by the dns plugin's reader thread), and ``answer`` the
  response's record when it was answered.
"""

from __future__ import annotations

from retina_core.dns.names import type_name
from retina_core.dns.parser import Message

from retina_core.record import VERDICT_DNS

__all__ = ["DnsRecord", "VERDICT_DNS"]


class DnsRecord:
    __slots__ = ("qr", "id", "query", "qtypes", "rcode", "ips", "ttl", "cnames", "rrtypes", "num_answers", "complete",
                 "latency_ns", "outcome", "answer")

    def __init__(self, qr: bool, query: str, qtypes: tuple[str, ...] = (), rcode: int = 0,
                 ips: tuple[str, ...] = (), ttl: int = 0, cnames: tuple[str, ...] = (),
                 rrtypes: tuple[str, ...] = (), num_answers: int = 0, id: int = 0,  # noqa: A002
                 complete: bool = True) -> None:
        self.qr = qr
        self.id = id
        self.query = query
        self.qtypes = qtypes
        self.rcode = rcode
        self.ips = ips
        self.ttl = ttl
        self.cnames = cnames
        self.rrtypes = rrtypes
        self.num_answers = num_answers
        self.complete = complete
        self.latency_ns = 0
        self.outcome = 0
        self.answer: DnsRecord | None = None

    @property
    def is_response(self) -> bool:
        return self.qr

    @classmethod
    def from_message(cls, msg: Message) -> "DnsRecord":
        questions = msg.questions
        ips: list[str] = []
        cnames: list[str] = []
        rrtypes: list[str] = []
        ttl = -1
        for a in msg.answers:
            t = a.rtype
            rrtypes.append(type_name(t))
            if t == 1 or t == 28:
                ips.append(a.data)  # type: ignore[arg-type]
            elif t == 5:
                cnames.append(a.data)  # type: ignore[arg-type]
            else:
                continue
            if ttl < 0 or a.ttl < ttl:
                ttl = a.ttl
        flags = msg.flags
        return cls(
            bool(flags & 0x8000),
            questions[0].name if questions else "",
            tuple(type_name(q.qtype) for q in questions),
            flags & 0xF,
            tuple(ips),
            ttl if ttl > 0 else 0,
            tuple(cnames),
            tuple(rrtypes),
            msg.ancount,
            msg.id,
            msg.complete,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DnsRecord):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__
                   if s not in ("outcome", "answer"))  # state, not data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{s}={getattr(self, s)!r}" for s in self.__slots__)
        return f"DnsRecord({fields})"
