"""retina_exporter.pipeline (enrich -> count -> publish on the caller's thread), the thread-less enricher and the
sweep-only metrics module it runs with."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from enricher import Enricher, IPCache
from metrics_module import MetricsModule
from retina_core.identity import WORLD, Identity
from retina_core.metricsconfig import parse_metrics_configuration
from retina_core.record import OBS_FROM_ENDPOINT, OBS_TO_ENDPOINT, FlowRecord
from retina_core.ring import Ring
from retina_exporter.pipeline import FlowPipeline

NODE = "node-a"
WEB = Identity("pod", namespace="shop", pod_name="web", node_name=NODE)
DB = Identity("pod", namespace="data", pod_name="db", node_name=NODE)
WEB_IP, DB_IP, FAR_IP = (socket.inet_aton(a) for a in ("10.0.0.5", "10.0.0.6", "93.184.0.1"))
CONFIG = {"contextOptions": [{"metricName": "forward_count", "sourceLabels": ["podname"], "ttl": "2s"}]}


def rec(src, dst, obs=OBS_FROM_ENDPOINT, packets=1):
    return FlowRecord(0, 4, src, dst, 17, 40000, 53, obs_point=obs, direction=2, is_reply=False, packets=packets,
                      bytes=100 * packets)


def forward(module) -> dict[tuple[str, str], float]:
    out = {}
    for name, _t, _h, samples in module.advanced.families():
        if name.endswith("adv_forward_count"):
            for labels, value in samples:
                d = dict(labels)
                out[(d["direction"], d["podname"])] = value
    return out


@pytest.fixture
def parts():
    cache = IPCache()
    cache.publish("test", pods={WEB_IP: WEB, DB_IP: DB})
    ring = Ring(7)
    module = MetricsModule(None, None, parse_metrics_configuration(CONFIG), NODE, False)
    return cache, ring, module


def test_batch_is_enriched_counted_then_published_on_the_callers_thread(parts):
    cache, ring, module = parts
    seen = []

    class Spy:  # the output ring, noting the thread and what was counted when the batch is published
        def write_batch(self, items):
            seen.append((threading.current_thread(), forward(module)))
            ring.write_batch(items)

    pipe = FlowPipeline(Spy(), Enricher(cache, None, ring), module)
    reader = ring.reader("now")
    batch = [rec(WEB_IP, DB_IP, packets=3), rec(WEB_IP, DB_IP, OBS_TO_ENDPOINT, 2), rec(WEB_IP, FAR_IP)]
    pipe.write_batch(batch)
    assert seen == [(threading.current_thread(), {("egress", "web"): 4, ("ingress", "db"): 2})]
    out = reader.next_batch(10)
    assert out == batch
    assert [(r.source, r.destination) for r in out] == [(WEB, DB), (WEB, DB), (WEB, WORLD)]
    assert pipe.stats() == {"batches": 1, "records": 3, "errors": 0}
    assert module.records_processed == 3


def test_a_failing_stage_is_counted_and_the_batch_still_published(parts):
    _cache, ring, module = parts

    class Broken:
        def process(self, batch):
            raise ValueError("boom")

    pipe = FlowPipeline(ring, Broken(), module)
    reader = ring.reader("now")
    pipe.write_batch([rec(WEB_IP, DB_IP)])
    pipe.write_batch([])
    assert pipe.stats() == {"batches": 1, "records": 1, "errors": 1}
    assert len(reader.next_batch(10)) == 1


def test_enricher_without_input_ring_has_no_thread(parts):
    cache, ring, _module = parts
    enricher = Enricher(cache, None, ring)
    with pytest.raises(RuntimeError, match="no thread"):
        enricher.start()
    assert enricher.lag == 0
    assert enricher.stop() is True
    r = enricher.process([rec(DB_IP, FAR_IP)])[0]
    assert (r.source, r.destination) == (DB, WORLD)


def test_module_without_ring_only_sweeps():
    now = [100.0]
    module = MetricsModule(None, None, parse_metrics_configuration(CONFIG), NODE, False, clock=lambda: now[0])
    module.count([_stamped(rec(WEB_IP, DB_IP))])
    assert forward(module) == {("egress", "web"): 1}
    module.start()
    try:
        assert module.alive()
        now[0] += 10  # past the 2 s ttl: the thread's next due sweep removes the series
        deadline = time.monotonic() + 10
        while forward(module) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert forward(module) == {}
        assert module.advanced.expired == {"adv_forward_count": 1}
    finally:
        assert module.stop()


def _stamped(r):
    r.source, r.destination = WEB, DB
    return r
