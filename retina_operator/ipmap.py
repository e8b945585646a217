"""The operator's address map: one identity per IP, resolved from every object that claims the address.

Several objects can claim one address at once: a pod that is being deleted and the new pod that already got its
address, a node and a Service whose ``externalIPs`` list that node's address, a hostNetwork-free pod whose address
is also a node's (odd, but seen). Each object (an *owner*: ``(kind, uid)``) holds **claims**; the address resolves
to the best claim:

1. kind precedence **pod > service > node** (Retina's lookup order);
2. a *live* claim beats a terminating one (a pod with a ``deletionTimestamp``: its address can only have been handed
   out again if its sandbox is gone);
3. the later claim wins: the object's resourceVersion when it was first seen holding the address (kept for as long
   as it holds it), then its creation time, then its uid.

Withdrawing a claim (a delete, or an object that no longer lists the address) only removes that owner's claim, so
a pod's delete never removes a node's or a service's entry, and the stale delete of an old pod never removes the
new pod that reused its address. Owners are keyed by uid, so a pod deleted and re-created under the same name is
two owners.

Every change returns the resulting **deltas** -- :class:`Delta` ``(ip, entry, old)``, ``entry`` None for a delete --
and only for addresses whose resolved entry actually changed; a re-claim that resolves to an identical entry is counted
in :attr:`IpMap.skipped` and produces nothing. Not thread-safe: the caller holds its lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from retina_core.identity import KIND_NODE, KIND_POD, KIND_SERVICE, Identity

__all__ = ["Delta", "Entry", "IpMap", "Owner", "PRECEDENCE", "Rank"]

PRECEDENCE: dict[str, int] = {KIND_POD: 3, KIND_SERVICE: 2, KIND_NODE: 1}

Owner = tuple[str, str]
"""``(kind, uid)`` of the claiming object."""
Rank = tuple[int, int, int, str, str]
"""``(precedence, live, first resourceVersion, creationTimestamp, uid)``; the highest wins."""


class Entry:
    """What an address resolves to: the owner's ``kind`` (pod | service | node), its :class:`Identity` and the
    ``observed`` opt-in flag (pods annotated ``retina.sh=observe``, or in a namespace that is). Immutable; equal
    entries compare equal (used to skip identical upserts). ``wire`` caches the encoded update (see
    :mod:`retina_operator.wire`), computed once and shared by every agent's stream."""

    __slots__ = ("kind", "identity", "observed", "wire")

    def __init__(self, kind: str, identity: Identity, observed: bool = False) -> None:
        if kind not in PRECEDENCE:
            raise ValueError(f"unknown entry kind {kind!r}")
        self.kind = kind
        self.identity = identity
        self.observed = observed
        self.wire: bytes | None = None

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Entry) and self.kind == other.kind and self.observed == other.observed
                and self.identity == other.identity)

    def __hash__(self) -> int:
        return hash((self.kind, self.identity))

    def __repr__(self) -> str:
        return f"Entry({self.kind}, {self.identity!r}{', observed' if self.observed else ''})"

    def to_dict(self) -> dict[str, Any]:
        d = self.identity.to_dict()
        d["kind"] = self.kind
        if self.observed:
            d["observed"] = True
        return d


class Delta(NamedTuple):
    """One change of the resolved map: ``entry`` is the new entry (None: the address is gone), ``old`` the
    previous one (None: the address is new)."""

    ip: str
    entry: Entry | None
    old: Entry | None


def rank_of(kind: str, uid: str, first_rv: int, created: str, live: bool = True) -> Rank:
    return (PRECEDENCE[kind], 1 if live else 0, first_rv, created, uid)


class IpMap:
    """IP (canonical text) -> :class:`Entry`, from claims; see the module docstring.

    Counters: ``upserts``, ``deletes`` (deltas produced), ``skipped`` (re-claims that resolved to an identical
    entry, i.e. upserts not sent).
    """

    def __init__(self) -> None:
        self._claims: dict[str, dict[Owner, tuple[Rank, Entry]]] = {}
        self._held: dict[Owner, dict[str, int]] = {}  # owner -> ip -> first resourceVersion
        self.resolved: dict[str, Entry] = {}
        self.upserts = 0
        self.deletes = 0
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.resolved)

    def get(self, ip: str) -> Entry | None:
        return self.resolved.get(ip)

    def claims(self, ip: str) -> dict[Owner, tuple[Rank, Entry]]:
        """Every claim on ``ip`` (for debugging and tests)."""
        return dict(self._claims.get(ip, {}))

    def held(self, owner: Owner) -> Iterable[str]:
        return tuple(self._held.get(owner, {}))

    def kind_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(PRECEDENCE, 0)
        for e in self.resolved.values():
            counts[e.kind] += 1
        return counts

    def set_claims(self, owner: Owner, entries: Mapping[str, Entry], *, rv: int = 0, created: str = "",
                   live: bool = True) -> list[Delta]:
        """Make ``owner``'s claims exactly ``entries`` (ip -> entry, each of ``owner``'s kind). ``rv`` is the
        object's current resourceVersion: it becomes the rank of addresses the owner did not hold yet. Returns the
        deltas, in a stable order (the owner's addresses in the order given, then released ones)."""
        kind, uid = owner
        held = self._held.get(owner, {})
        now: dict[str, int] = {}
        touched: list[str] = []
        for ip, entry in entries.items():
            if entry.kind != kind:
                raise ValueError(f"owner {owner} claims {ip} with an entry of kind {entry.kind}")
            first = held.get(ip, rv)
            now[ip] = first
            self._claims.setdefault(ip, {})[owner] = (rank_of(kind, uid, first, created, live), entry)
            touched.append(ip)
        for ip in held:
            if ip not in now:
                c = self._claims.get(ip)
                if c is not None:
                    c.pop(owner, None)
                    if not c:
                        del self._claims[ip]
                touched.append(ip)
        if now:
            self._held[owner] = now
        else:
            self._held.pop(owner, None)
        return self._resolve(touched, owner)

    def release(self, owner: Owner) -> list[Delta]:
        """Withdraw every claim of ``owner`` (it was deleted)."""
        return self.set_claims(owner, {})

    def _resolve(self, ips: Iterable[str], owner: Owner) -> list[Delta]:
        deltas: list[Delta] = []
        for ip in ips:
            c = self._claims.get(ip)
            old = self.resolved.get(ip)
            if not c:
                if old is not None:
                    del self.resolved[ip]
                    deltas.append(Delta(ip, None, old))
                    self.deletes += 1
                continue
            win_owner, (_, win) = max(c.items(), key=lambda kv: kv[1][0])
            if old is not None and old == win:
                if win is not old:
                    # Same value, new object: keep the old one (and its cached wire bytes).
                    c[win_owner] = (c[win_owner][0], old)
                if win_owner == owner:
                    self.skipped += 1
                continue
            self.resolved[ip] = win
            deltas.append(Delta(ip, win, old))
            self.upserts += 1
        return deltas
