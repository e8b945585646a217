"""Flow export to files (Hubble's exporter, beyond Retina): every flow that passes ``hubble.export.allowList`` /
``denyList`` is appended to ``hubble.export.filePath`` as one JSON line — a ``GetFlowsResponse`` in protojson
(``{"flow": {...}, "node_name": ..., "time": ...}``, Hubble's field names), for log shippers (Fluent Bit, Vector,
Promtail …). ``hubble.export.fieldMask`` keeps only those Flow fields.

Files rotate at ``maxSizeMb`` MiB keeping ``maxBackups`` older files (``flows.json.1`` …), with the standard
library's ``logging.handlers.RotatingFileHandler`` (maintained, tested rotation; our own would be the same ~40
lines). The exporter has its own reader on the output ring: a slow disk makes it fall behind and lose *its* flows,
counted in ``controlplane_networkobservability_lost_events_counter{type="hubble_export",reason="ring_overrun"}``;
the pipeline and the other readers never wait for it.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from typing import Any

from google.protobuf import field_mask_pb2, json_format

from retina_core.record import FlowRecord
from retina_core.settings import flow_filters
from retina_core.ring import LostMarker, Ring
from retina_core.worker import Worker
from retina_exporter.hubble.config import HubbleConfig
from retina_exporter.hubble.filters import FlowMatcher
from retina_exporter.hubble.observer import flow_response

__all__ = ["FlowFileExporter", "LOST_TYPE", "LOST_REASON"]

LOST_TYPE = "hubble_export"
LOST_REASON = "ring_overrun"
_MIB = 1024 * 1024


class FlowFileExporter(Worker):
    """Follows ``ring`` from now on and writes matching flows to the export file (see the module docstring)."""

    def __init__(self, cfg: HubbleConfig, ring: Ring, node_name: str, telemetry: Any = None) -> None:
        super().__init__("hubble-export")
        self.path = cfg.export_file_path
        self.ring = ring
        self.node_name = node_name
        self.telemetry = telemetry
        self.matcher = FlowMatcher(flow_filters(cfg.export_allow_list), flow_filters(cfg.export_deny_list))
        self.mask = field_mask_pb2.FieldMask(paths=list(cfg.export_field_mask)) if cfg.export_field_mask else None
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.handler = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=cfg.export_max_size_mb * _MIB, backupCount=cfg.export_max_backups, encoding="utf-8",
            delay=True)
        self.handler.setFormatter(logging.Formatter("%(message)s"))
        self._reader = ring.reader("now")
        self.written = 0
        self.lost = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.export(self._reader.next_batch(512, timeout_s=0.5))
        self.export(self._reader.next_batch(1 << 20, timeout_s=0))  # what was written before stop

    def _wake_thread(self) -> None:
        self.ring.notify_all()

    def export(self, batch: list) -> None:
        """Write the matching flows of ``batch`` (tests call this directly)."""
        matcher = self.matcher
        for rec in batch:
            if rec.__class__ is not FlowRecord:
                if isinstance(rec, LostMarker) and rec.__class__ is LostMarker:
                    self.lost += rec.count
                    if self.telemetry is not None:
                        self.telemetry.add_lost(LOST_TYPE, LOST_REASON, rec.count)
                continue
            if not matcher(rec):
                continue
            line = json_format.MessageToJson(flow_response(rec, self.mask, self.node_name), indent=None,
                                             preserving_proto_field_name=True)
            self.handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
            self.written += 1
        if batch:
            self.handler.flush()

    def stop(self, timeout_s: float = 5.0) -> bool:
        ended = super().stop(timeout_s)
        self.handler.close()
        return ended
