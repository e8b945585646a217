"""The accounting path: a plugin reader's batch is enriched, counted and only then published, on the reader's
own thread.

``FlowPipeline`` is the ``flow_sink`` the agent hands to the plugins (``PluginContext.flow_sink``). Its
:meth:`FlowPipeline.write_batch` runs, for one batch of decoded records, on the calling reader thread:

1. **enrich**: :meth:`enricher.Enricher.process` stamps ``source``/``destination`` from one IP-cache snapshot
   (two ``dict.get`` per record);
2. **count**: :meth:`metrics_module.MetricsModule.count` adds the batch to the adv_* series (under the advanced
   metrics' one lock; several plugin readers may call concurrently);
3. **publish**: the batch goes to the output ring for Hubble, ``/debug/flows``, the file export and flow logs.

Why synchronous (measured in ``bench/bench_pipeline.py``): there is no user-space queue between the kernel's ring
buffer and the counters, so the counts cannot be lost in user space. When the reader cannot keep up it simply
drains the BPF ring buffer later; the kernel's reservations fail, and packetparser keeps the unreported counts in
its conntrack entry, to ride on a later event (or the sweeper's harvest): pod- and node-level counts stay exact
under overload. Only the output ring's readers (Hubble, flow logs, ``/debug/flows``) may be overtaken, and they
report it (``LostMarker`` → Hubble ``LostEvent``, lost-event counters). It also saves two thread hops and two
ring passes per record, which on one GIL is the pipeline's main cost.

A batch whose enrichment or counting raises is logged, counted in ``errors`` and still published; the reader
thread never dies of it.
"""

from __future__ import annotations

import logging
from typing import Any

from retina_core.ring import Ring

__all__ = ["FlowPipeline"]

log = logging.getLogger(__name__)


class FlowPipeline:
    """``write_batch(records)``: enrich (``enricher``, may be None), count (``metrics``, a MetricsModule, may be
    None), then publish to ``ring``. ``batches``/``records``/``errors`` count calls, records and failed batches."""

    __slots__ = ("enricher", "metrics", "ring", "batches", "records", "errors")

    def __init__(self, ring: Ring, enricher: Any = None, metrics: Any = None) -> None:
        self.ring = ring
        self.enricher = enricher
        self.metrics = metrics
        self.batches = self.records = self.errors = 0

    def write_batch(self, batch: list) -> None:
        """Enrich, count and publish one batch of records (runs on the calling reader thread)."""
        if not batch:
            return
        try:
            if self.enricher is not None:
                batch = self.enricher.process(batch)
            if self.metrics is not None:
                self.metrics.count(batch)
        except Exception:
            self.errors += 1
            log.exception("flow pipeline: a batch could not be enriched or counted; publishing it as is")
        self.batches += 1
        self.records += len(batch)
        self.ring.write_batch(batch)

    def stats(self) -> dict[str, int]:
        """``{"batches", "records", "errors"}`` for a debug page."""
        return {"batches": self.batches, "records": self.records, "errors": self.errors}
