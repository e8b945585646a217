"""The thread that drains one bcc ring buffer and hands the decoded events on in batches.

Shared by the packetparser, dropreason, dns and tcpretrans readers: each supplies how one event is turned into
records (a ``decode`` callable, or its own :meth:`BpfRingReader._callback`) and where batches go; this class owns
the thread, the poll loop, batching, stop and drain.

Why the callback hands on batches itself: bcc's ``ring_buffer_poll(timeout)`` calls the callback for every
record in the ring and returns only once the ring is empty, so under sustained load it never returns. The
callback therefore flushes every ``batch_size`` records, and stopping works through its return value (-1 makes
bcc stop consuming). The thread does nothing but poll, decode and hand on: anything slower on it (locks, I/O,
metric updates per event) delays draining, and a ring that is drained late overflows in the kernel, where the
events are lost (counted as ``ringbuf_full`` by the BPF programs).

Hot path: per event, one size check, one ``ctypes.string_at`` copy, one call of ``decode`` and one list
append; everything else (counters, ``on_batch``, the sink) is per batch.
"""

from __future__ import annotations

import ctypes as ct
import logging
import time
from typing import Any, Callable
from retina_core.worker import Worker

log = logging.getLogger(__name__)

#: ``ring_buffer_poll`` timeout, milliseconds: how long a stop request waits at most while the ring is idle.
POLL_TIMEOUT_MS = 100


class BpfRingReader(Worker):
    """Owns the thread that polls one bcc ring buffer and feeds record batches to ``write_batch(list)``.

    ``bpf`` is the ``bcc.BPF`` object holding the ring buffer; the subclass (or caller) routes the ring's records
    to :meth:`_callback`, e.g. ``bpf[b"events"].open_ring_buffer(self._callback)``. With ``decode`` given, the
    default :meth:`_callback` copies the first ``event_size`` bytes of each record (shorter records count as
    ``decode_errors`` and are skipped) and appends ``decode(bytes)`` to the batch. Subclasses with other per-event
    work override :meth:`_callback`, append to ``self._batch`` and call ``self._flush()`` once it holds
    ``self._batch_size`` records.

    ``events_read`` counts records handed on (per flush); ``on_batch(n)``, if given, is called after each batch
    of ``n`` records has been written. ``last_poll_monotonic`` is the ``time.monotonic()`` (seconds) of the
    latest poll started.
    """

    def __init__(
        self,
        bpf: Any,
        write_batch: Callable[[list], None],
        *,
        name: str,
        batch_size: int = 256,
        on_batch: Callable[[int], None] | None = None,
        decode: Callable[[bytes], Any] | None = None,
        event_size: int = 0,
    ) -> None:
        self._bpf = bpf
        self._write_batch = write_batch
        self._name = name
        self._batch_size = batch_size
        self._on_batch = on_batch
        self._decode = decode
        self._event_size = event_size
        self._batch: list = []
        super().__init__(f"{name}-reader")
        self.events_read = 0
        self.decode_errors = 0
        self.last_poll_monotonic = 0.0

    # --- runs on the reader thread (inside ring_buffer_poll) ------------------------------------------------
    def _callback(self, _ctx, data, size) -> int:
        """bcc ring-buffer callback: one record -> one decoded item in the batch. Returns -1 to stop bcc's
        consume loop once :meth:`stop` has been requested (checked when a full batch is handed on)."""
        event_size = self._event_size
        if size < event_size:
            self.decode_errors += 1
            return 0
        batch = self._batch
        batch.append(self._decode(ct.string_at(data, event_size)))
        if len(batch) >= self._batch_size:
            self._flush()
            return -1 if self._stop.is_set() else 0  # checked per batch, not per event
        return 0

    def _flush(self) -> None:
        """Hand the current batch on (no-op when empty)."""
        batch = self._batch
        if not batch:
            return
        self._batch = []
        self.events_read += len(batch)
        self._write_batch(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch))

    def _run(self) -> None:
        poll = self._bpf.ring_buffer_poll
        stop = self._stop
        while not stop.is_set():
            self.last_poll_monotonic = time.monotonic()
            try:
                poll(POLL_TIMEOUT_MS)
            except Exception:  # a callback error must not kill the reader
                log.exception("%s ring buffer poll failed", self._name)
            self._flush()
        self._flush()

    # --- control (any thread) ---------------------------------------------------------------------------------
    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread (waiting at most ``timeout`` seconds), then drain once: hand on whatever is still in
        the ring. A failing final drain (e.g. the BPF object already cleaned up) is logged, not raised."""
        ended = super().stop(timeout)
        self._stop.clear()  # the callback stops bcc's consume loop while the flag is set
        try:
            self.drain()
        except Exception:
            log.debug("%s final ring buffer drain failed", self._name, exc_info=True)
            self._flush()
        return ended

    def drain(self) -> None:
        """Consume what is in the ring now and hand it on (for callers that poll themselves: tests, benchmarks,
        shutdown)."""
        self._bpf.ring_buffer_consume()
        self._flush()


def close_ring_consumers(bpf: Any) -> None:
    """Forget every callback bcc has opened on ``bpf``'s ring buffers (bcc keeps one consumer per BPF object and
    has no API to remove a callback), so that a new reader can open the same ring buffer: for a program handed
    from one user to the next (tests, benchmarks). Events still in the ring stay there for the next reader."""
    from bcc import lib

    if getattr(bpf, "_ringbuf_manager", None):
        lib.bpf_free_ringbuf(bpf._ringbuf_manager)
        bpf._ringbuf_manager = None
