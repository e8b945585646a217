"""Prometheus text exposition (format 0.0.4) and OpenMetrics 1.0 for our own metric families.

Retina's metric names carry no ``_total`` suffix, and its counters are exposed as ``# TYPE name counter`` with
samples named ``name``: prometheus_client's renderer would append ``_total``, so families from our collectors are
rendered here. A family is ``(name, type, help, samples)`` with samples ``(labels, value)`` where ``labels`` is a
tuple of ``(label_name, label_value)`` pairs -- or, as a fast path for large families, the already rendered and
escaped label set as a string (``'{a="1",b="x"}'``, or ``""`` for none). A ``histogram`` family's values are
:class:`~retina_core.histogram.HistogramValue` snapshots, rendered as ``_bucket``/``_sum``/``_count`` samples.

:func:`render` writes format 0.0.4 (:data:`CONTENT_TYPE`). :func:`render_openmetrics` writes OpenMetrics 1.0.0
(:data:`OPENMETRICS_CONTENT_TYPE`): there a counter's samples must be named ``<family>_total`` (the family name in
``# TYPE`` stays without it) and the text ends with ``# EOF``. :func:`negotiate` picks one from an ``Accept``
header.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator

from retina_core.histogram import HistogramValue

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

Family = tuple[str, str, str, Iterable[tuple[tuple[tuple[str, str], ...] | str, float]]]


def escape_label_value(v: str) -> str:
    """Escape a label value for both formats (backslash, newline, double quote)."""
    if "\\" not in v and '"' not in v and "\n" not in v:
        return v
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_escape_value = escape_label_value  # former private name


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_help_om(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _label_text(labels) -> str:
    if labels.__class__ is str:
        return labels
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels) + "}"


#: Lines per piece of rendered text (~64 KiB at ~250 bytes a line): pieces stay below glibc's mmap threshold, so a
#: large scrape reuses the same heap memory each time instead of a fresh multi-MiB buffer.
PIECE_LINES = 256


def _sample_pieces(name: str, samples) -> Iterator[str]:
    out: list[str] = []
    append = out.append
    for labels, value in samples:
        if labels.__class__ is not str:
            labels = _label_text(labels)
        if value.__class__ is HistogramValue:
            _histogram_samples(out, name, labels, value)
            continue
        append(f"{name}{labels} {value if value.__class__ is int else _fmt(value)}\n")
        if len(out) >= PIECE_LINES:
            yield "".join(out)
            out.clear()
    if out:
        yield "".join(out)


def _histogram_samples(out: list[str], name: str, labels: str, h: HistogramValue) -> None:
    """``name_bucket{…,le="b"}`` (cumulative, ending with ``le="+Inf"``), ``name_sum``, ``name_count``."""
    inner = labels[1:-1] + "," if labels else ""
    cum = 0
    for bound, n in zip(h.bounds + (math.inf,), h.counts):
        cum += n
        le = "+Inf" if bound == math.inf else repr(float(bound))  # as prometheus_client: 1.0, 0.25, +Inf
        out.append(f'{name}_bucket{{{inner}le="{le}"}} {cum}\n')
    out.append(f"{name}_sum{labels} {_fmt(float(h.sum))}\n{name}_count{labels} {h.count}\n")


def _text_pieces(families: Iterable[Family]) -> Iterator[str]:
    for name, mtype, help_text, samples in families:
        yield f"# HELP {name} {_escape_help(help_text)}\n# TYPE {name} {mtype}\n"
        yield from _sample_pieces(name, samples)


def _openmetrics_pieces(families: Iterable[Family]) -> Iterator[str]:
    for name, mtype, help_text, samples in families:
        sample_name = name
        if mtype == "counter":
            if name.endswith("_total"):
                name = name[: -len("_total")]
            else:
                mtype = "unknown"
        elif mtype not in ("gauge", "histogram", "summary", "info", "stateset", "gaugehistogram"):
            mtype = "unknown"
        yield f"# HELP {name} {_escape_help_om(help_text)}\n# TYPE {name} {mtype}\n"
        yield from _sample_pieces(sample_name, samples)
    yield "# EOF\n"


def _output(pieces: Iterator[str], chunks: bool) -> str | list[bytes]:
    if chunks:
        return [p.encode() for p in pieces]
    return "".join(pieces)


def render(families: Iterable[Family], *, chunks: bool = False) -> str | list[bytes]:
    """Text format 0.0.4; ``chunks``: as a list of UTF-8 pieces of about :data:`PIECE_LINES` lines (for a reply
    written piece by piece: no whole-body string and bytes copies of a large scrape)."""
    return _output(_text_pieces(families), chunks)


def render_openmetrics(families: Iterable[Family], *, chunks: bool = False) -> str | list[bytes]:
    """OpenMetrics 1.0.0 text, ending with ``# EOF``; ``chunks`` as for :func:`render`.

    Retina's counters have no ``_total`` (``controlplane_networkobservability_lost_events_counter``). OpenMetrics
    requires counter samples to end in ``_total``, which would rename every such series in the scraper's storage
    depending on which format it negotiated, and break Retina's dashboards and ours. So a counter family whose name
    does not end in ``_total`` is exposed with ``# TYPE <name> unknown`` and its samples keep Retina's name: the same
    series names in both formats. A family named ``..._total`` is a proper OpenMetrics counter."""
    return _output(_openmetrics_pieces(families), chunks)


def _media_params(item: str) -> tuple[str, dict[str, str]]:
    parts = item.split(";")
    media = parts[0].strip().lower()
    params: dict[str, str] = {}
    for p in parts[1:]:
        k, sep, v = p.partition("=")
        if sep:
            params[k.strip().lower()] = v.strip().strip('"')
    return media, params


def negotiate(accept_header: str | None) -> tuple[str, Callable[[Iterable[Family]], str]]:
    """``(content_type, renderer)`` for an ``Accept`` header.

    OpenMetrics is chosen when ``application/openmetrics-text`` (version 1.0.0 or no version) has the highest
    q-value among what we can serve; on equal q-values the earlier entry wins. Otherwise -- including ``text/plain``
    of any version, ``*/*``, a missing or unparsable header -- text format 0.0.4.
    """
    best_q = -1.0
    best_om = False
    for item in (accept_header or "").split(","):
        if not item.strip():
            continue
        media, params = _media_params(item)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        if q <= 0:
            continue
        if media == "application/openmetrics-text":
            if params.get("version", "1.0.0") != "1.0.0":
                continue
            om = True
        elif media in ("text/plain", "text/*", "*/*"):
            om = False
        else:
            continue
        if q > best_q:
            best_q, best_om = q, om
    if best_om:
        return OPENMETRICS_CONTENT_TYPE, render_openmetrics
    return CONTENT_TYPE, render
