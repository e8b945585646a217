"""The output ring of flow records: one writer at a time, any number of independent readers (Hubble's ring
semantics).

Layout and rules (as in Hubble's ``pkg/hubble/container/ring.go``, see hubble-api.md §5):

* The array has ``2**n`` slots; record number ``s`` (0, 1, 2, … counted over all writes) lives in slot
  ``s & mask``. One slot is always reserved for the write in progress and never readable, so the ring holds
  ``capacity = 2**n - 1`` readable records (4095 by default).
* **One writer at a time**, enforced by the ring: :meth:`Ring.write` and :meth:`Ring.write_batch` hold the
  ring's writer lock for the call (one uncontended acquisition per batch, not per record), so several producer
  threads (the plugins' readers) may share a ring and each batch stays contiguous and in order. The writer never
  waits for a reader: it announces how far it is about to write (``_claim``), stores the records (slice
  assignment), then publishes the new write counter (``_write``). Waiting readers are woken once per call, and only if a
  reader is actually waiting (the :class:`threading.Condition` is not touched otherwise).
* **Readers** (:meth:`Ring.reader`) each have their own cursor and read without any lock, seqlock style: a
  reader reads the slots for records ``[pos, end)`` with ``end <= _write``, *then* re-reads ``_claim``; a
  record ``s`` is valid only if ``s >= _claim - capacity`` at that moment (the writer cannot have started to
  overwrite its slot). Records that were overwritten before they could be read are replaced by one
  :class:`LostMarker` carrying their exact number, so for every reader
  ``records delivered + sum(LostMarker.count) == records written`` since its start position.

Thread safety relies on the GIL: single attribute loads and stores and list slice operations are atomic and
sequentially consistent in CPython.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal

__all__ = ["DEFAULT_CAPACITY", "LostMarker", "Ring", "RingReader", "validate_capacity"]

DEFAULT_CAPACITY = 4095
_MAX_ORDER = 20  # 2**20 - 1 = 1_048_575 records at most


class LostMarker:
    """Stands in a reader's output for ``count`` consecutive records the writer overwrote before they were read.

    Maps to Hubble's ``LostEvent{source: HUBBLE_RING_BUFFER, num_events_lost: count}``.
    """

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LostMarker) and other.count == self.count

    def __hash__(self) -> int:
        return hash(("LostMarker", self.count))

    def __repr__(self) -> str:
        return f"LostMarker(count={self.count})"


def validate_capacity(capacity: int) -> int:
    """Return ``n`` such that ``capacity == 2**n - 1`` (1 <= n <= 20), else raise :class:`ValueError`."""
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise ValueError(f"ring capacity {capacity!r} must be one less than a power of two (an integer)")
    size = capacity + 1
    if capacity < 1 or size & (size - 1):
        raise ValueError(f"ring capacity {capacity} must be one less than a power of two (1, 3, 7, ..., 4095, ...)")
    order = size.bit_length() - 1
    if order > _MAX_ORDER:
        raise ValueError(
            f"ring capacity {capacity} is too large: it must be one less than a power of two, at most "
            f"{(1 << _MAX_ORDER) - 1} (2^{_MAX_ORDER} - 1)"
        )
    return order


class Ring:
    """Fixed-capacity ring of records (any objects) with one writer and independent readers.

    ``capacity`` must be ``2**n - 1`` with ``1 <= n <= 20`` (default 4095).
    """

    __slots__ = ("_size", "_mask", "_cap", "_slots", "_write", "_claim", "_cond", "_waiters", "_epoch", "_wlock")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        order = validate_capacity(capacity)
        self._size = 1 << order
        self._mask = self._size - 1
        self._cap = capacity
        self._slots: list[Any] = [None] * self._size
        # Records [0, _write) are published. _claim >= _write: records [_write, _claim) are being written. A
        # record s is readable only while s >= _claim - capacity (its slot is neither reused nor reserved).
        self._write = 0
        self._claim = 0
        self._cond = threading.Condition(threading.Lock())
        self._waiters = 0
        self._epoch = 0  # bumped by notify_all(): waiting readers return even without new records
        self._wlock = threading.Lock()  # the single-writer rule: one write call at a time

    # -- writer ------------------------------------------------------------------------------------------------

    def write(self, item: Any) -> None:
        """Append one record. Never blocks on readers (only on another writer's call in progress)."""
        with self._wlock:
            w = self._write
            self._claim = w + 1
            self._slots[w & self._mask] = item
            self._write = w + 1
        if self._waiters:
            self._wake()

    def write_batch(self, items: Sequence[Any] | Iterable[Any]) -> None:
        """Append records in order, contiguously; readers are woken once for the whole batch."""
        if not isinstance(items, list):
            items = list(items)
        k = len(items)
        if k == 0:
            return
        size = self._size
        with self._wlock:
            w = self._write
            end = w + k
            self._claim = end
            if k > size:  # only the last `size` records can land in the array; the rest are overwritten at once
                items = items[k - size :]
                k = size
            i0 = (end - k) & self._mask
            first = size - i0
            slots = self._slots
            if k <= first:
                slots[i0 : i0 + k] = items
            else:
                slots[i0:size] = items[:first]
                slots[0 : k - first] = items[first:]
            self._write = end
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def notify_all(self) -> None:
        """Wake every waiting reader now (e.g. at shutdown or client cancel); their ``next_batch`` returns what
        is available, possibly ``[]``, without waiting for the rest of its timeout."""
        with self._cond:
            self._epoch += 1
            self._cond.notify_all()

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Readable records the ring holds at most (``2**n - 1``)."""
        return self._cap

    @property
    def total_written(self) -> int:
        """Records written since creation (also the sequence number the next record will get)."""
        return self._write

    @property
    def oldest_seq(self) -> int:
        """Sequence number of the oldest record still readable (== ``total_written`` when the ring is empty)."""
        oldest = self._claim - self._cap
        return oldest if oldest > 0 else 0

    def __len__(self) -> int:
        """Readable records: ``min(total_written, capacity)`` (Hubble's ``Len()``/``num_flows``)."""
        w = self._write
        return w if w < self._cap else self._cap

    # -- reading -----------------------------------------------------------------------------------------------

    def _read(self, start: int, end: int) -> tuple[list[Any], int]:
        """Read records ``[start, end)`` (end <= published write). Returns (valid records, records lost before
        them); the valid records are the suffix ``[start + lost, end)``."""
        lost = 0
        oldest = self._claim - self._cap
        if start < oldest:
            lost = (oldest if oldest < end else end) - start
            start += lost
        if start >= end:
            return [], lost
        mask = self._mask
        i0 = start & mask
        i1 = end & mask
        slots = self._slots
        if i0 < i1:
            out = slots[i0:i1]
        else:
            out = slots[i0:] + slots[:i1]
        # Seqlock re-check: anything the writer may have started overwriting meanwhile is lost, not delivered.
        oldest = self._claim - self._cap
        if start < oldest:
            bad = (oldest if oldest < end else end) - start
            lost += bad
            del out[:bad]
        return out, lost

    def read(self, start: int, end: int) -> tuple[list[Any], int]:
        """Records with sequence numbers ``[start, end)`` still readable, and how many of them were already
        overwritten: returns ``(records, lost)`` where ``records`` are ``[start + lost, end)``. ``end`` is clamped to
        the published write counter. For readers that walk back from the newest record (Hubble's ``--last N``)."""
        w = self._write
        if end > w:
            end = w
        if start >= end:
            return [], 0
        return self._read(start, end)

    def last(self, n: int) -> list[Any]:
        """The newest ``n`` readable records (fewer if the ring holds fewer), oldest first."""
        if n <= 0:
            return []
        w = self._write
        start = w - n
        oldest = self._claim - self._cap
        if start < oldest:
            start = oldest
        if start < 0:
            start = 0
        out, _ = self._read(start, w)
        return out

    def reader(self, start: Literal["oldest", "newest", "now"] | int = "oldest") -> RingReader:
        """A new independent reader.

        ``start``: ``"oldest"`` = the oldest readable record; ``"newest"`` = the newest record (it is replayed),
        or new records if the ring is empty; ``"now"`` = only records written after this call; an ``int`` = that
        sequence number (records before :attr:`oldest_seq` are reported as lost).
        """
        w = self._write
        if start == "oldest":
            pos = self.oldest_seq
        elif start == "newest":
            pos = w - 1 if w > 0 else 0
        elif start == "now":
            pos = w
        elif isinstance(start, int) and not isinstance(start, bool):
            if start < 0 or start > w:
                raise ValueError(f"reader start {start} is outside [0, {w}]")
            pos = start
        else:
            raise ValueError(f"reader start must be 'oldest', 'newest', 'now' or a sequence number, not {start!r}")
        return RingReader(self, pos)


class RingReader:
    """One reader's cursor over a :class:`Ring`. Use from one thread at a time."""

    __slots__ = ("_ring", "_pos", "lost_total", "delivered_total")

    def __init__(self, ring: Ring, pos: int) -> None:
        self._ring = ring
        self._pos = pos
        #: Records this reader lost (overwritten before read), and records it delivered, since creation.
        self.lost_total = 0
        self.delivered_total = 0

    @property
    def position(self) -> int:
        """Sequence number of the next record this reader will return."""
        return self._pos

    @property
    def lag(self) -> int:
        """Records written but not yet consumed by this reader (lost ones included)."""
        lag = self._ring._write - self._pos
        return lag if lag > 0 else 0

    def next_batch(self, max_items: int = 256, timeout_s: float | None = 0.0) -> list[Any]:
        """Return up to ``max_items`` records in write order, oldest first.

        If the reader was overtaken, a :class:`LostMarker` with the exact number of overwritten records comes
        first (it does not count against ``max_items``). Waits up to ``timeout_s`` seconds (None = forever,
        0 = do not wait) for a record when none is available, and returns ``[]`` on timeout.
        """
        ring = self._ring
        pos = self._pos
        w = ring._write
        if pos >= w:
            if timeout_s is not None and timeout_s <= 0:
                return []
            w = self._wait(pos, timeout_s)
            if pos >= w:
                return []
        lost = 0
        oldest = ring._claim - ring._cap
        if pos < oldest:  # overtaken: skip straight to the oldest readable record
            lost = oldest - pos
            pos = oldest
        end = pos + max_items
        if end > w:
            end = w
        if end > pos:
            out, lost2 = ring._read(pos, end)
            lost += lost2
        else:  # only during a write_batch larger than the ring: nothing readable yet
            out = []
            end = pos
        self._pos = end
        self.delivered_total += len(out)
        if lost:
            self.lost_total += lost
            out.insert(0, LostMarker(lost))
        return out

    def _wait(self, pos: int, timeout_s: float | None) -> int:
        ring = self._ring
        cond = ring._cond
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with cond:
            ring._waiters += 1
            epoch = ring._epoch
            try:
                while ring._write <= pos and ring._epoch == epoch:
                    if deadline is None:
                        cond.wait()
                    else:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        cond.wait(remaining)
            finally:
                ring._waiters -= 1
        return ring._write
