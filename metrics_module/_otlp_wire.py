"""OTLP/protobuf encoding of our metric families, written straight to the wire format.

Builds ``opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest`` bytes from families
``(name, type, help, samples)`` (see :mod:`metrics_module.exposition`) without protobuf message objects: each
series' encoded attributes (and, for cumulative series, its start time) are cached between exports, so an export
costs a dict lookup, one ``struct.pack`` and a few list appends per series. The output is checked field by field
against the official ``opentelemetry-proto`` messages in ``tests/test_otlp.py``.

Mapping (the same names and label sets as ``/metrics``):

* ``counter`` → ``Sum`` (cumulative, monotonic). Start time: the exporter's start time for series present at the
  first collection; for a series that appears later, or whose value went down (a reset, e.g. a series that expired
  and came back), the time of the previous collection -- the latest time at which it is known not to have had the
  counts it has now.
* ``gauge`` (and ``untyped``/``unknown``) → ``Gauge``, without start time.
* ``histogram`` → ``Histogram`` (cumulative) when the samples' values are :class:`HistogramValue`; other histogram
  samples, ``summary`` and other types are skipped (the caller is told which, to log once).

Values: ``int`` as ``as_int`` (``sfixed64``), anything else as ``as_double``.

A collection is split into requests of at most ``max_request_bytes`` (the series of one family may be split
across requests; every request carries the resource and scope). gRPC servers limit messages to 4 MiB by default
(the OpenTelemetry Collector included), hence the default of 4,000,000 bytes.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from typing import Any, NamedTuple
from retina_core.protowire import read_varint, tag, varint

__all__ = [
    "HistogramValue",
    "OtlpEncoder",
    "parse_label_text",
    "read_partial_success",
]

_pack_u64 = struct.Struct("<Q").pack
_pack_i64 = struct.Struct("<q").pack
_pack_f64 = struct.Struct("<d").pack

_CUMULATIVE = 2  # AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE

DEFAULT_MAX_REQUEST_BYTES = 4_000_000


class HistogramValue(NamedTuple):
    """The value of one histogram series (OTLP explicit-bucket histogram, cumulative).

    ``bounds``: the buckets' upper bounds, increasing, without ``+Inf``; ``counts``: per-bucket (not cumulative)
    counts, ``len(bounds) + 1`` of them (the last bucket is ``(bounds[-1], +Inf)``); ``sum`` and ``count`` of all
    observations.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float
    count: int


# -- primitives ------------------------------------------------------------------------------------------------




def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag(field, 2) + varint(len(payload)) + payload


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "replace")


def _any_value(value: Any) -> bytes:
    """An ``AnyValue`` message body (string, bool, int or double)."""
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _pack_f64(value)
    return _ld(1, _utf8(str(value)))


def _key_value(key: str, value: Any) -> bytes:
    """A ``KeyValue`` message body."""
    return _ld(1, _utf8(key)) + _ld(2, _any_value(value))


def _attributes(field: int, pairs: Iterable[tuple[str, Any]]) -> bytes:
    return b"".join(_ld(field, _key_value(k, v)) for k, v in pairs)


_KEY_FIELDS: dict[str, bytes] = {}  # label name -> encoded KeyValue.key field


def _label_attributes(tag: bytes, pairs: Iterable[tuple[str, str]]) -> bytes:
    """Attributes (field ``tag``) of label pairs: the fast path of :func:`_attributes` for string values."""
    out = []
    keys = _KEY_FIELDS
    for k, v in pairs:
        kb = keys.get(k)
        if kb is None:
            kb = _ld(1, _utf8(k))
            if len(keys) < 4096:
                keys[k] = kb
        if v.__class__ is str:
            vb = v.encode("utf-8", "replace")
            av = b"\x0a" + varint(len(vb)) + vb
        else:
            av = _any_value(v)
        kv = kb + b"\x12" + varint(len(av)) + av
        out.append(tag)
        out.append(varint(len(kv)))
        out.append(kv)
    return b"".join(out)


_LABEL = re.compile(r'([A-Za-z_:][A-Za-z0-9_:]*)="((?:[^"\\]|\\.)*)"', re.S)
_ESCAPE = re.compile(r"\\(.)", re.S)


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return _ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_label_text(text: str) -> tuple[tuple[str, str], ...]:
    """Label pairs of the exposition's pre-rendered label text ``{a="1",b="x\\"y"}`` (``""`` → no labels)."""
    if not text:
        return ()
    if "\\" not in text and text[:1] == "{" and text[-2:] == '"}':
        # No escapes, so no '"' inside values: '",' ends a value and the first '="' ends a name.
        return tuple(tuple(item.split('="', 1)) for item in text[1:-2].split('",'))  # type: ignore[misc]
    return tuple((m.group(1), _unescape(m.group(2))) for m in _LABEL.finditer(text))


def _label_pairs(labels: Any) -> Iterable[tuple[str, str]]:
    if labels.__class__ is str:
        return parse_label_text(labels)
    return labels or ()


# Data point field tags.
_T_START = b"\x11"  # start_time_unix_nano, fixed64, field 2 (NumberDataPoint and HistogramDataPoint)
_T_TIME = b"\x19"  # time_unix_nano, fixed64, field 3
_T_AS_DOUBLE = b"\x21"  # NumberDataPoint.as_double, field 4
_T_AS_INT = b"\x31"  # NumberDataPoint.as_int, sfixed64, field 6
# NumberDataPoint.attributes is field 7 (tag 0x3a), HistogramDataPoint.attributes field 9 (tag 0x4a).
_DP = b"\x0a"  # Gauge/Sum/Histogram.data_points, field 1

# Metric.data oneof tags and the trailer after the data points.
_GAUGE = (b"\x2a", b"")  # Metric.gauge, field 5
_SUM = (b"\x3a", b"\x10" + bytes([_CUMULATIVE]) + b"\x18\x01")  # Metric.sum: temporality, is_monotonic=true
_HISTOGRAM = (b"\x4a", b"\x10" + bytes([_CUMULATIVE]))  # Metric.histogram: temporality

_POINT_TAIL = 18  # time (1 + 8) and value (1 + 8) of a number data point

KIND_GAUGE = "gauge"
KIND_SUM = "sum"
KIND_HISTOGRAM = "histogram"
_KIND_OF_TYPE = {"counter": KIND_SUM, "gauge": KIND_GAUGE, "untyped": KIND_GAUGE, "unknown": KIND_GAUGE,
                 "histogram": KIND_HISTOGRAM}


def read_partial_success(body: bytes) -> tuple[int, str]:
    """``(rejected_data_points, error_message)`` of an ``ExportMetricsServiceResponse`` (``(0, "")`` if none)."""
    rejected, message = 0, ""
    for field, value in _fields(body):
        if field == 1 and isinstance(value, bytes):
            for f2, v2 in _fields(value):
                if f2 == 1 and isinstance(v2, int):
                    rejected = v2 - (1 << 64) if v2 >= 1 << 63 else v2
                elif f2 == 2 and isinstance(v2, bytes):
                    message = v2.decode("utf-8", "replace")
    return rejected, message


def _fields(buf: bytes):
    """(field number, value) of a protobuf message: varints as int, length-delimited as bytes; fixed skipped."""
    i, n = 0, len(buf)
    while i < n:
        key, i = read_varint(buf, i)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, i = read_varint(buf, i)
            yield field, value
        elif wire_type == 2:
            size, i = read_varint(buf, i)
            yield field, bytes(buf[i:i + size])
            i += size
        elif wire_type == 1:
            i += 8
        elif wire_type == 5:
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
    if i > n:
        raise ValueError("truncated protobuf message")




# -- the encoder -----------------------------------------------------------------------------------------------


class _Requests:
    """Assembles ExportMetricsServiceRequest payloads of at most ``limit`` bytes, joining each once."""

    def __init__(self, resource: bytes, scope: bytes, limit: int) -> None:
        self.resource = resource  # ResourceMetrics.resource (field 1), encoded
        self.scope = scope  # ScopeMetrics.scope (field 1), encoded
        self.limit = limit
        self.out: list[bytes] = []
        self.points = 0
        self._metrics: list[list] = []  # [metric header, data tag, data len, parts, trailer] of closed chunks
        self._metrics_size = 0  # encoded size of the closed chunks (with their ScopeMetrics.metrics tags)
        self._base = len(resource) + len(scope) + 16  # resource + scope + the wrappers' tags and lengths
        # the open chunk
        self._head = b""
        self._data_tag = b""
        self._trailer = b""
        self._parts: list[bytes] = []
        self._psize = 0

    def begin(self, head: bytes, data_tag: bytes, trailer: bytes) -> None:
        """Open a metric: ``head`` is its encoded name/description/unit, ``data_tag`` the oneof field's tag."""
        self._close_metric()
        self._head, self._data_tag, self._trailer = head, data_tag, trailer

    def room(self, pending: int, size: int) -> bool:
        """Whether a data point of ``size`` bytes fits in the current request after ``pending`` bytes of points
        not yet added with :meth:`add_size` (a request always takes at least one point)."""
        used = self._base + self._metrics_size + len(self._head) + 16 + self._psize + pending
        return used + size <= self.limit or (self._psize + pending == 0 and not self._metrics)

    def split(self) -> None:
        """Close the current request and continue the open metric in a new one."""
        head, tag, trailer = self._head, self._data_tag, self._trailer
        self._close_metric()
        self._flush()
        self._head, self._data_tag, self._trailer = head, tag, trailer

    @property
    def parts(self) -> list[bytes]:
        return self._parts

    def add_size(self, size: int, points: int = 1) -> None:
        self._psize += size
        self.points += points

    def _close_metric(self) -> None:
        if not self._psize:
            self._parts = []
            return
        data_len = self._psize + len(self._trailer)
        body_len = len(self._head) + len(self._data_tag) + len(varint(data_len)) + data_len
        self._metrics.append([varint(body_len), self._head, self._data_tag, varint(data_len), self._parts,
                              self._trailer])
        self._metrics_size += 1 + len(varint(body_len)) + body_len
        self._parts = []
        self._psize = 0

    def _flush(self) -> None:
        if not self._metrics:
            return
        scope_len = len(self.scope) + self._metrics_size
        rm_len = len(self.resource) + 1 + len(varint(scope_len)) + scope_len
        pieces = [b"\x0a", varint(rm_len), self.resource, b"\x12", varint(scope_len), self.scope]
        for body_vlen, head, data_tag, data_vlen, parts, trailer in self._metrics:
            pieces += (b"\x12", body_vlen, head, data_tag, data_vlen)
            pieces += parts
            pieces.append(trailer)
        self.out.append(b"".join(pieces))
        self._metrics = []
        self._metrics_size = 0

    def finish(self) -> list[bytes]:
        self._close_metric()
        self._flush()
        return self.out


class OtlpEncoder:
    """Turns successive collections of families into ExportMetricsServiceRequest payloads.

    Not thread-safe: one exporter thread calls :meth:`encode`. ``start_time_unix_nano`` is the start time of the
    cumulative series present at the first collection (the agent's start).
    """

    def __init__(
        self,
        resource_attributes: Iterable[tuple[str, Any]],
        *,
        scope_name: str,
        scope_version: str = "",
        start_time_unix_nano: int,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        if max_request_bytes < 1024:
            raise ValueError("max_request_bytes must be at least 1024")
        self.resource = _ld(1, _attributes(1, resource_attributes))
        scope = _ld(1, _utf8(scope_name)) + (_ld(2, _utf8(scope_version)) if scope_version else b"")
        self.scope = _ld(1, scope)
        self.start_time_unix_nano = start_time_unix_nano
        self.max_request_bytes = max_request_bytes
        self._series: dict[str, dict] = {}  # family name -> {labels: cached entry}
        self._heads: dict[tuple[str, str], bytes] = {}  # (name, help) -> encoded Metric name/description
        self._prev_collection_ns: int | None = None
        self.skipped: set[tuple[str, str]] = set()  # (family, type) not exportable, seen at the last collection
        self.last_points = 0
        self.last_series = 0

    def encode(self, families: Iterable[tuple], now_ns: int) -> list[bytes]:
        """Encode one collection taken at ``now_ns``; returns the request payloads (none if there is no data)."""
        prev_ns = self._prev_collection_ns
        reset_start = self.start_time_unix_nano if prev_ns is None else max(prev_ns, self.start_time_unix_nano)
        time_field = _T_TIME + _pack_u64(now_ns)
        out = _Requests(self.resource, self.scope, self.max_request_bytes)
        old_series = self._series
        new_series: dict[str, dict] = {}
        skipped: set[tuple[str, str]] = set()
        for name, mtype, help_text, samples in families:
            kind = _KIND_OF_TYPE.get(mtype)
            if kind is None:
                skipped.add((name, mtype))
                continue
            head_key = (name, help_text)
            head = self._heads.get(head_key)
            if head is None:
                head = _ld(1, _utf8(name)) + (_ld(2, _utf8(help_text)) if help_text else b"")
                self._heads[head_key] = head
            old = old_series.get(name) or {}
            new = new_series.get(name)
            if new is None:
                new = new_series[name] = {}
            if kind == KIND_GAUGE:
                out.begin(head, *_GAUGE)
                self._gauge(out, samples, old, new, time_field)
            elif kind == KIND_SUM:
                out.begin(head, *_SUM)
                self._sum(out, samples, old, new, time_field, reset_start)
            else:
                out.begin(head, *_HISTOGRAM)
                if not self._histogram(out, samples, old, new, time_field, reset_start):
                    skipped.add((name, mtype))
        if len(self._heads) > 4 * (len(new_series) + 64):
            self._heads.clear()  # families that went away (renamed help texts…)
        self._series = new_series
        self._prev_collection_ns = now_ns
        self.skipped = skipped
        self.last_series = sum(len(v) for v in new_series.values())
        requests = out.finish()
        self.last_points = out.points
        return requests

    # Number data points are cached as ``head`` = tag + length + attributes (+ start time for sums); the length
    # includes the 18 bytes of time and value appended at each export.

    @staticmethod
    def _gauge(out: _Requests, samples, old: dict, new: dict, time_field: bytes) -> None:
        parts = out.parts
        size = 0
        points = 0
        for labels, value in samples:
            head = old.get(labels)
            if head is None:
                body = _label_attributes(b"\x3a", _label_pairs(labels))
                head = _DP + varint(len(body) + _POINT_TAIL) + body
            new[labels] = head
            n = len(head) + _POINT_TAIL
            if not out.room(size, n):
                out.add_size(size, points)
                out.split()
                parts = out.parts
                size = points = 0
            if value.__class__ is int and -0x8000000000000000 <= value <= 0x7FFFFFFFFFFFFFFF:
                parts += (head, time_field, _T_AS_INT, _pack_i64(value))
            else:
                parts += (head, time_field, _T_AS_DOUBLE, _pack_f64(float(value)))
            size += n
            points += 1
        out.add_size(size, points)

    @staticmethod
    def _sum(out: _Requests, samples, old: dict, new: dict, time_field: bytes, later_start: int) -> None:
        parts = out.parts
        size = 0
        points = 0
        for labels, value in samples:
            entry = old.get(labels)
            if entry is None or value < entry[1]:  # new series, or a reset
                start = later_start
                body = _label_attributes(b"\x3a", _label_pairs(labels))
                head = _DP + varint(len(body) + 9 + _POINT_TAIL) + body + _T_START + _pack_u64(start)
                entry = [head, value]
            else:
                entry[1] = value
            new[labels] = entry
            head = entry[0]
            n = len(head) + _POINT_TAIL
            if not out.room(size, n):
                out.add_size(size, points)
                out.split()
                parts = out.parts
                size = points = 0
            if value.__class__ is int and -0x8000000000000000 <= value <= 0x7FFFFFFFFFFFFFFF:
                parts += (head, time_field, _T_AS_INT, _pack_i64(value))
            else:
                parts += (head, time_field, _T_AS_DOUBLE, _pack_f64(float(value)))
            size += n
            points += 1
        out.add_size(size, points)

    @staticmethod
    def _histogram(out: _Requests, samples, old: dict, new: dict, time_field: bytes, later_start: int) -> bool:
        ok = True
        for labels, value in samples:
            if not isinstance(value, HistogramValue) or len(value.counts) != len(value.bounds) + 1:
                ok = False
                continue
            entry = old.get(labels)
            if entry is None or value.count < entry[1]:
                attrs = _label_attributes(b"\x4a", _label_pairs(labels))
                entry = [attrs + _T_START + _pack_u64(later_start), value.count]
            else:
                entry[1] = value.count
            new[labels] = entry
            counts = b"".join(_pack_u64(int(c)) for c in value.counts)
            bounds = b"".join(_pack_f64(float(b)) for b in value.bounds)
            body = b"".join((
                entry[0], time_field,
                b"\x21", _pack_u64(int(value.count)),  # count, fixed64, field 4
                b"\x29", _pack_f64(float(value.sum)),  # sum, double, field 5
                b"\x32", varint(len(counts)), counts,  # bucket_counts, packed fixed64, field 6
                (b"\x3a" + varint(len(bounds)) + bounds) if bounds else b"",  # explicit_bounds, field 7
            ))
            point = _DP + varint(len(body)) + body
            if not out.room(0, len(point)):
                out.split()
            out.parts.append(point)
            out.add_size(len(point))
        return ok
