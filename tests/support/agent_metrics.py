"""Reading the real agent's ``/metrics`` in lab tests: samples by name (Retina's counter names, without the
``_total`` the Prometheus parser adds), sums over matching labels, and waiting until a reading equals a want."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")


def scrape(agent) -> dict[str, list[tuple[dict, float]]]:
    """``{sample name: [(labels, value), ...]}`` of one ``GET /metrics`` of ``agent`` (an ``AgentProcess``)."""
    status, body = agent.get("/metrics")
    assert status == 200, body[:500]
    out = defaultdict(list)
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            name = fam.name if fam.type == "counter" and s.name == fam.name + "_total" else s.name
            out[name].append((s.labels, s.value))
    return out


def value(m: dict[str, list[tuple[dict, float]]], name: str, **match: str) -> float:
    """Sum of ``name``'s samples in ``m`` whose labels include ``match``."""
    return sum(v for labels, v in m.get(name, []) if all(labels.get(k) == want for k, want in match.items()))


def wait_equal(read: Callable[[], T], want: T, timeout: float = 20.0, interval: float = 0.2) -> T:
    """Call ``read`` until it returns ``want`` or ``timeout`` seconds pass; the last reading."""
    deadline = time.monotonic() + timeout
    got = read()
    while got != want and time.monotonic() < deadline:
        time.sleep(interval)
        got = read()
    return got
