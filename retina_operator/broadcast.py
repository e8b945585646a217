"""The delta log: one bounded ring of encoded updates that every agent's stream reads at its own pace.

Every change to the address map is appended once (as framed bytes, :mod:`retina_operator.wire`) and gets the next
sequence number. An agent's stream is a *cursor* into the log: it reads from its cursor to the head, sends, and
advances. The ring holds the last ``capacity`` updates; a cursor that has fallen further behind than that (the
agent is ``capacity`` updates behind, its "queue" is full) can no longer be served in order and raises
:class:`Lagged` -- the stream ends with DATA_LOSS and the agent resyncs. So:

* appending costs the same whatever the number of agents and never waits for any of them (a slow agent cannot
  slow the others or the informers);
* memory is one ring, not one queue per agent;
* an agent's queue depth is ``head - cursor``.

Appends happen under the caller's lock (the operator's state lock, which also covers the snapshot, so that "take
a cursor, then the snapshot" is atomic). :meth:`DeltaLog.read` takes no lock: it copies the slots and then
re-checks that none of them was overwritten meanwhile.
"""

from __future__ import annotations

__all__ = ["DeltaLog", "Lagged"]


class Lagged(Exception):
    """A cursor fell out of the ring. ``behind``: how many updates behind the head it was."""

    def __init__(self, behind: int, capacity: int) -> None:
        super().__init__(f"{behind} updates behind, more than the queue holds ({capacity})")
        self.behind = behind
        self.capacity = capacity


class DeltaLog:
    """A ring of ``capacity`` framed updates with global sequence numbers (``head``: the next one)."""

    def __init__(self, capacity: int = 8192) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._ring: list[bytes | None] = [None] * capacity
        self.head = 0

    @property
    def tail(self) -> int:
        """The oldest sequence number still held."""
        return max(0, self.head - self.capacity)

    def append(self, items: list[bytes]) -> None:
        """Append ``items`` in order (caller holds the writers' lock)."""
        ring, cap = self._ring, self.capacity
        head = self.head
        for it in items:
            ring[head % cap] = it
            head += 1
            self.head = head  # published after the slot is written: readers never see an unwritten slot

    def depth(self, cursor: int) -> int:
        return self.head - cursor

    def read(self, cursor: int, max_items: int = 4096, max_bytes: int = 1 << 20) -> tuple[list[bytes], int]:
        """Updates from ``cursor`` on (at most ``max_items``, and ``max_bytes`` unless the first alone is larger)
        and the cursor after them. Raises :class:`Lagged` when ``cursor`` is no longer in the ring."""
        head = self.head
        cap = self.capacity
        if cursor < head - cap:
            raise Lagged(head - cursor, cap)
        out: list[bytes] = []
        size = 0
        seq = cursor
        end = min(head, cursor + max_items)
        ring = self._ring
        while seq < end:
            it = ring[seq % cap]
            assert it is not None
            if out and size + len(it) > max_bytes:
                break
            out.append(it)
            size += len(it)
            seq += 1
        if cursor < self.head - cap:  # a writer lapped us while we copied: some slots may be newer updates
            raise Lagged(self.head - cursor, cap)
        return out, seq
