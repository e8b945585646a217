"""Prometheus text exposition (format 0.0.4) for our own metric families.

Retina's metric names carry no ``_total`` suffix, and its counters are exposed as ``# TYPE name counter`` with
samples named ``name``: prometheus_client's renderer would append ``_total``, so families from our collectors are
rendered here. A family is ``(name, type, help, samples)`` with samples ``(labels_tuple, value)`` where
``labels_tuple`` is a tuple of ``(label_name, label_value)`` pairs.
"""

from __future__ import annotations

import math
from typing import Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Family = tuple[str, str, str, Iterable[tuple[tuple[tuple[str, str], ...], float]]]


def _escape_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


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


def render(families: Iterable[Family]) -> str:
    out: list[str] = []
    append = out.append
    for name, mtype, help_text, samples in families:
        append(f"# HELP {name} {_escape_help(help_text)}\n# TYPE {name} {mtype}\n")
        for labels, value in samples:
            if labels:
                body = ",".join(f'{k}="{_escape_value(v)}"' for k, v in labels)
                append(f"{name}{{{body}}} {_fmt(value)}\n")
            else:
                append(f"{name} {_fmt(value)}\n")
    return "".join(out)
