"""The enricher: a thread that reads flow records from an input ring, stamps ``source``/``destination``
identities on them from the IP cache, and writes them to an output ring.

Per record the work is two ``dict.get`` calls on one cache snapshot (taken once per batch, so a batch never mixes
two cache versions) and two attribute stores. Records are enriched **in place** (the output ring carries the same
objects as the input ring). A record that already carries an identity (``source``/``destination`` not ``None``)
keeps it. Unknown addresses get :data:`retina_core.identity.WORLD`; service addresses get the service identity
(kind ``service``) and node addresses the node's (kind ``node``/``host``), as the cache resolves them.

Falling behind: when the writer overruns this reader, the reader reports a :class:`~retina_core.ring.LostMarker`;
the enricher counts it with ``telemetry.add_lost("enricher_ring", "enricher", n)`` and **forwards** it to the
output ring as an :class:`EnricherLost` (a ``LostMarker`` subclass with ``where == "enricher_ring"``) in the
place of the missing records, so downstream readers (``/debug/flows``, a Hubble observer) can show the gap and
tell it from their own overruns. Downstream code that only needs records skips every ``LostMarker`` (subclasses
included) and must not count an ``EnricherLost`` as its own loss: it is already counted here. Forwarding can be
turned off with ``forward_lost=False``. Other non-record items found in the input (e.g. markers an upstream
stage wrote) are passed through unchanged.

The enricher is the single writer of its output ring. Without an input ring (``input_ring=None``) it has no
thread: the agent's reader threads call :meth:`Enricher.process` on each batch themselves
(``retina_exporter/pipeline.py``), and ``output_ring`` is only informational.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from retina_core.worker import Worker
from retina_core.ring import LostMarker, Ring
from retina_core.telemetry import LOST_ENRICHER_RING

from retina_core.identity import WORLD
from enricher.ipcache import IPCache

__all__ = ["Enricher", "EnricherLost", "LOST_REASON"]

log = logging.getLogger(__name__)

LOST_REASON = "enricher"
"""The ``reason`` label of the enricher's lost-event count (``type`` is ``enricher_ring``)."""


class EnricherLost(LostMarker):
    """``count`` records the enricher lost because its input ring overran it (forwarded downstream)."""

    __slots__ = ()
    where = LOST_ENRICHER_RING

    def __repr__(self) -> str:
        return f"EnricherLost(count={self.count})"


class Enricher(Worker):
    """Input ring -> identities -> output ring, in one daemon thread.

    * ``batch_size``: records taken from the input ring per read.
    * ``wait_s``: seconds a read waits for records before checking for ``stop()``; also bounds the stop latency
      when the input ring is not notified.
    * ``start``: where the input reader starts (``"oldest"``, ``"now"``, … as for :meth:`Ring.reader`).

    Counters (read from any thread): ``records`` (items written out, forwarded ``EnricherLost`` markers not
    counted), ``lost`` (input records lost),
    ``batches``, ``errors`` (batches whose enrichment raised; they are forwarded unenriched).
    """

    def __init__(
        self,
        cache: IPCache,
        input_ring: Ring | None,
        output_ring: Ring,
        telemetry: Any = None,
        *,
        batch_size: int = 256,
        wait_s: float = 0.2,
        forward_lost: bool = True,
        start: Literal["oldest", "newest", "now"] | int = "oldest",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        super().__init__("enricher")
        self.cache = cache
        self.input = input_ring
        self.output = output_ring
        self.telemetry = telemetry
        self.batch_size = batch_size
        self.wait_s = wait_s
        self.forward_lost = forward_lost
        self._reader = input_ring.reader(start) if input_ring is not None else None
        self._drain_to = 0  # input sequence number stop() asked to drain up to
        self.records = 0
        self.lost = 0
        self.batches = 0
        self.errors = 0

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (needs an input ring)."""
        if self.input is None:
            raise RuntimeError("an enricher without an input ring has no thread: call process() with each batch")
        super().start()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Ask the thread to finish: it enriches and forwards what was in the input ring when ``stop`` was called
        (records written later are left), then exits. Waits up to ``timeout_s`` seconds; returns True if the thread
        has ended."""
        if self.input is not None:
            self._drain_to = self.input.total_written
        return super().stop(timeout_s)

    def _wake_thread(self) -> None:
        if self.input is not None:
            self.input.notify_all()  # wake the reader if it waits; other readers just return early once

    @property
    def lag(self) -> int:
        """Input records written but not yet read by the enricher."""
        return self._reader.lag if self._reader is not None else 0

    # -- work ---------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        rd = self._reader
        out = self.output
        while True:
            stopping = self._stop.is_set()
            if stopping and rd.position >= self._drain_to:
                return
            batch = rd.next_batch(self.batch_size, 0 if stopping else self.wait_s)
            if not batch:
                if stopping:
                    return
                continue
            try:
                batch = self.process(batch)
            except Exception:
                self.errors += 1
                log.exception("enricher: a batch could not be enriched; forwarding it as is")
            if batch:
                out.write_batch(batch)
                self.records += len(batch) - (batch[0].__class__ is EnricherLost)
            self.batches += 1

    def process(self, batch: list[Any]) -> list[Any]:
        """Enrich ``batch`` (a list from a ring reader) in place and return the list to write downstream.

        A leading reader ``LostMarker`` is counted and replaced by an :class:`EnricherLost` (or dropped when
        ``forward_lost`` is False). All records of the batch are looked up in one cache snapshot.
        """
        if not batch:
            return batch
        first = batch[0]
        if first.__class__ is LostMarker:  # exactly the reader's own marker: this reader fell behind
            self._count_lost(first.count)
            if self.forward_lost:
                batch[0] = EnricherLost(first.count)
            else:
                del batch[0]
        get = self.cache._map.get  # one snapshot for the whole batch
        world = WORLD
        try:
            for rec in batch:
                if rec.source is None:
                    rec.source = get(rec.src_ip, world)
                if rec.destination is None:
                    rec.destination = get(rec.dst_ip, world)
        except AttributeError:  # a marker or other non-record item in the batch: take the careful path
            for rec in batch:
                if isinstance(rec, LostMarker) or not hasattr(rec, "src_ip"):
                    continue
                if rec.source is None:
                    rec.source = get(rec.src_ip, world)
                if rec.destination is None:
                    rec.destination = get(rec.dst_ip, world)
        return batch

    def _count_lost(self, n: int) -> None:
        self.lost += n
        if self.telemetry is not None:
            self.telemetry.add_lost(LOST_ENRICHER_RING, LOST_REASON, n)

    def stats(self) -> dict[str, int]:
        """``{"records", "lost", "batches", "errors", "lag"}`` for a debug page."""
        return {"records": self.records, "lost": self.lost, "batches": self.batches, "errors": self.errors,
                "lag": self.lag}
