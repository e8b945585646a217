"""metrics_module.otlp: OTLP push on the OpenTelemetry SDK (OTLPMetricExporter, gRPC and HTTP/protobuf) to a real
receiver (tests/support/otlp_receiver.py, decoding with the official opentelemetry-proto messages).

What /metrics renders (parsed back with prometheus_client) is what the receiver gets: names, labels as attributes,
values; counters as cumulative monotonic Sums (delta on request), gauges as Gauges; resource attributes (SDK
Resource with OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME); headers. The standard OTEL_* variables work on their
own and otlp.* settings override them. A collector that is down, slow or hung never blocks the caller; failures
are counted by reason and logged once per outage; exports resume when the collector is back. TLS with a
self-signed certificate, a private CA and mTLS. The cached-attribute encoder equals the SDK's encode_metrics.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from metrics_module._otlp_sdk import FamiliesProducer, HistogramValue, encode_metrics_fast, parse_label_text
from metrics_module._otlp_sdk import split_metrics_data
from metrics_module._otlp_settings import build_resource, resolve
from retina_core.identity import Identity
from retina_core.metricsconfig import parse_metrics_configuration
from metrics_module.exposition import _label_text, render
from metrics_module.module import MetricsModule
from metrics_module.otlp import (
    EXPORTS_COUNTER,
    FAILURES_COUNTER,
    REASONS,
    OtlpExporter,
    check_settings,
    parse_attributes,
    parse_headers,
)
from retina_core.record import OBS_FROM_ENDPOINT, OBS_TO_ENDPOINT, FlowRecord
from retina_core.telemetry import ControlPlane
from tests.support.otlp_receiver import OtlpReceiver, make_tls_files

PROTOCOLS = ["grpc", "http/protobuf"]
LOGGER = "metrics_module.otlp"
START_NS = 1_700_000_000_000_000_000
NODE = "node-a"

WEB = Identity("pod", namespace="shop", pod_name='we"b\\1', workloads=(("Deployment", "web"),), node_name=NODE)
DB = Identity("pod", namespace="data", pod_name="db-0", node_name=NODE)
CONFIG = parse_metrics_configuration({"contextOptions": [
    {"metricName": "forward_count", "sourceLabels": ["ip", "podname", "workload"],
     "destinationLabels": ["ip", "podname"]},
    {"metricName": "forward_bytes", "sourceLabels": ["podname"]},
    {"metricName": "tcp_flag_gauges", "sourceLabels": ["podname"]},
    {"metricName": "dns_request_count", "sourceLabels": ["podname"]},
]})


def rec(obs=OBS_FROM_ENDPOINT, packets=1, nbytes=100, src="10.0.0.5", dst="10.0.0.6", sport=40000):
    r = FlowRecord(0, 4, socket.inet_aton(src), socket.inet_aton(dst), 6, sport, 80, obs_point=obs,
                   direction=2, is_reply=False, packets=packets, bytes=nbytes,
                   flag_counts=(0, 0, 0, 1, packets, 0, 0, 0, 0, 0))
    r.source, r.destination = WEB, DB
    return r


def node_level_families():
    """A plugin-style node-level source: gauges like Retina's basic metrics, pre-rendered labels too."""
    return [
        ("networkobservability_forward_count", "gauge", "Total forwarded packets",
         [((("direction", "ingress"),), 10), ('{direction="egress"}', 20)]),
        ("networkobservability_drop_count", "gauge", "Total dropped packets",
         [((("direction", "egress"), ("reason", "IPTABLE_RULE_DROP")), 3)]),
    ]


def make_module():
    telemetry = ControlPlane()
    mod = MetricsModule(None, telemetry, CONFIG, NODE, False, False)
    mod.register(node_level_families)
    mod.process([rec(packets=3, nbytes=300), rec(obs=OBS_TO_ENDPOINT, packets=2, nbytes=200),
                 rec(src="10.0.0.7", sport=40001, packets=5, nbytes=50)])
    telemetry.add_lost("buffered_channel", "metricModule", 4)
    telemetry.failed_to_reconcile("dns")
    return mod


KNOWN = [
    ("test_gauge", "gauge", "A gauge with \\ and\nnewline in its help", [
        ((("a", "1"), ("b", "x")), 5),
        ((("a", "2"), ("b", 'quote " backslash \\ newline \n end')), 2.5),
        ('{a="3",b="pre\\"rendered\\\\ \\n"}', -7),
        ((), 0),
        ((("empty", ""),), 1e300),
    ]),
    ("test_counter", "counter", "A counter", [
        ((("reason", "x"),), 12),
        ('{reason="y"}', 2**53 + 1),
        ((("reason", "z"),), 0.5),
    ]),
    ("test_untyped", "untyped", "Untyped as a gauge", [((), 3)]),
    ("test_empty_family", "gauge", "No series", []),
]


def known_source():
    return [(n, t, h, list(s)) for n, t, h, s in KNOWN]


# -- helpers --------------------------------------------------------------------------------------------------


def expected_from_render(families) -> tuple[dict, dict]:
    """``({(name, attributes): value}, {name: type})`` of the text format 0.0.4 /metrics would serve."""
    values, types = {}, {}
    for fam in parse_text(render(families)):
        types[fam.name] = fam.type
        for s in fam.samples:
            key = (fam.name, tuple(sorted(s.labels.items())))
            assert key not in values, f"duplicate series {key}"
            values[key] = s.value
    return values, types


def received_values(points) -> tuple[dict, dict]:
    values, kinds = {}, {}
    for p in points:
        key = (p.name, p.attributes)
        assert key not in values, f"duplicate point {key}"
        values[key] = p.value
        kinds[p.name] = (p.kind, p.is_monotonic, p.temporality)
    return values, kinds


def assert_same_as_metrics(points, families):
    """Every sample /metrics renders arrives, with the same name, labels and value, and nothing else."""
    expected, types = expected_from_render(families)
    got, kinds = received_values(points)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == value or (math.isnan(value) and math.isnan(got[key])), key
    for name, kind in kinds.items():
        if types[name] == "counter":
            assert kind == ("sum", True, 2), name  # cumulative (2), monotonic
        else:
            assert kind == ("gauge", None, None), name
    return got


def exporter(rx: OtlpReceiver, protocol: str, source, **kw) -> OtlpExporter:
    kw.setdefault("env", {})  # the tests' own settings only, whatever the environment of the test run
    kw.setdefault("interval_s", 60.0)
    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("node_name", NODE)
    kw.setdefault("host_name", "host-1")
    kw.setdefault("service_version", "9.9.9")
    kw.setdefault("start_time_unix_nano", START_NS)
    return OtlpExporter(source, endpoint=kw.pop("endpoint", rx.endpoint(protocol)), protocol=protocol, **kw)


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def otlp_records(caplog, level):
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == level]


@pytest.fixture
def rx():
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("tls"))


# -- what arrives -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_known_families_arrive_as_metrics_renders_them(rx, protocol):
    ex = exporter(rx, protocol, known_source, headers={"Authorization": "Bearer s3cr3t", "X-Scope-OrgID": "t1"})
    before = time.time_ns()
    assert ex.export_once()
    after = time.time_ns()
    ex.stop()
    [req] = rx.requests()
    assert req.protocol == ("grpc" if protocol == "grpc" else "http")
    assert req.headers["authorization"] == "Bearer s3cr3t" and req.headers["x-scope-orgid"] == "t1"
    assert req.headers["user-agent"].startswith("retina-exporter/")
    points = rx.points()
    got = assert_same_as_metrics(points, known_source())
    assert got[("test_gauge", (("a", "2"), ("b", 'quote " backslash \\ newline \n end')))] == 2.5
    assert got[("test_gauge", (("a", "3"), ("b", 'pre"rendered\\ \n')))] == -7
    assert got[("test_counter", (("reason", "y"),))] == 2**53 + 1
    by_key = {(p.name, p.attributes): p for p in points}
    assert by_key[("test_counter", (("reason", "y"),))].value == 2**53 + 1  # int exactly (as_int)
    assert isinstance(by_key[("test_gauge", (("a", "2"), ("b", 'quote " backslash \\ newline \n end')))].value,
                      float)
    for p in points:
        resource = dict(p.resource)
        assert {k: resource[k] for k in ("host.name", "k8s.node.name", "service.instance.id", "service.name",
                                         "service.version")} == {
            "host.name": "host-1", "k8s.node.name": NODE, "service.instance.id": NODE,
            "service.name": "retina-exporter", "service.version": "9.9.9"}
        assert resource["telemetry.sdk.name"] == "opentelemetry"  # the SDK's Resource
        assert p.scope == ("retina-exporter", "9.9.9")
        assert before <= p.time_unix_nano <= after
        assert p.start_time_unix_nano == (START_NS if p.kind == "sum" else 0)
    assert {p.name: p.description for p in points}["test_gauge"] == "A gauge with \\ and\nnewline in its help"
    assert "test_empty_family" not in {p.name for p in points}


@pytest.mark.parametrize("prerendered", [False, True], ids=["label-tuples", "label-text"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_metrics_module_families_arrive_as_metrics_renders_them(rx, protocol, prerendered):
    mod = make_module()
    source = (lambda: mod.families(prerendered=True)) if prerendered else mod.families
    ex = exporter(rx, protocol, source)
    assert ex.export_once()
    ex.stop()
    got = assert_same_as_metrics(rx.points(), list(mod.families()))
    names = {name for name, _ in got}
    assert {"networkobservability_adv_forward_count", "networkobservability_adv_tcpflags_count",
            "networkobservability_forward_count", "controlplane_networkobservability_lost_events_counter"} <= names
    # the same text /metrics serves
    fams = {f.name: f for f in parse_text(mod.render())}
    fwd = fams["networkobservability_adv_forward_count"]
    assert fwd.type == "gauge"
    for s in fwd.samples:
        assert got[("networkobservability_adv_forward_count", tuple(sorted(s.labels.items())))] == s.value
    lost = got[("controlplane_networkobservability_lost_events_counter",
                (("reason", "metricModule"), ("type", "buffered_channel")))]
    assert lost == 4


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_periodic_thread_exports_current_values(rx, protocol):
    mod = make_module()
    ex = exporter(rx, protocol, mod.families, interval_s=0.1)
    ex.start()
    try:
        assert rx.wait_for(lambda r: r.count() >= 2)
        mod.process([rec(packets=7, nbytes=700)])
        n = rx.count()
        assert rx.wait_for(lambda r: r.count() >= n + 2)
        latest = rx.latest(n + 1)
        expected, _ = expected_from_render(list(mod.families()))
        assert {k: float(p.value) for k, p in latest.items()} == expected
    finally:
        ex.stop()
    assert not ex.alive()
    assert ex.exports >= 4 and sum(ex.failures.values()) == 0


def test_counter_start_times_new_series_and_resets(rx):
    """Series at the first collection start at the agent's start; a series first seen later, or reset (value went
    down, e.g. expired and re-created), starts at the previous collection; others keep their start."""
    state = {"a": 5}
    source = lambda: [("c", "counter", "", [((("k", k),), v) for k, v in state.items()])]  # noqa: E731
    ex = exporter(rx, "grpc", source)
    assert ex.export_once()
    t1 = rx.points()[-1].time_unix_nano
    state.update(a=6, b=1)
    assert ex.export_once()
    t2 = rx.points()[-1].time_unix_nano
    pts = {p.labels["k"]: p for p in rx.points(1)}
    assert pts["a"].start_time_unix_nano == START_NS and pts["a"].value == 6
    assert pts["b"].start_time_unix_nano == t1
    state.update(a=2, b=3)  # a reset
    assert ex.export_once()
    pts = {p.labels["k"]: p for p in rx.points(2)}
    assert pts["a"].start_time_unix_nano == t2 and pts["a"].value == 2
    assert pts["b"].start_time_unix_nano == t1
    del state["b"]  # gone, then back: a new series
    assert ex.export_once()
    t4 = rx.points()[-1].time_unix_nano
    state["b"] = 1
    assert ex.export_once()
    pts = {p.labels["k"]: p for p in rx.points(4)}
    assert pts["b"].start_time_unix_nano == t4
    assert pts["a"].start_time_unix_nano == t2
    ex.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_large_collections_are_split_into_bounded_requests(rx, protocol):
    n = 3000
    samples = [((("pod", f"pod-{i:05d}"), ("namespace", f"ns-{i % 7}")), i) for i in range(n)]
    source = lambda: [("big_gauge", "gauge", "g", samples), ("big_counter", "counter", "c", samples)]  # noqa: E731
    ex = exporter(rx, protocol, source, max_request_bytes=64 * 1024)
    assert ex.export_once()
    ex.stop()
    reqs = rx.requests()
    assert len(reqs) > 4
    assert all(r.request.ByteSize() <= 64 * 1024 for r in reqs)
    assert_same_as_metrics(rx.points(), source())
    assert ex.status()["last_export_points"] == 2 * n


def test_histograms_and_unsupported_types(rx, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    hist = HistogramValue(bounds=(0.1, 1.0), counts=(2, 3, 1), sum=4.5, count=6)
    source = lambda: [  # noqa: E731
        ("lat_seconds", "histogram", "Latency", [((("op", "get"),), hist)]),
        ("quantiles", "summary", "A summary", [((), 1.0)]),
        ("plain", "gauge", "", [((), 1)]),
    ]
    ex = exporter(rx, "grpc", source)
    assert ex.export_once() and ex.export_once()
    ex.stop()
    points = rx.points()
    assert {p.name for p in points} == {"lat_seconds", "plain"}
    h = next(p for p in points if p.name == "lat_seconds")
    assert h.kind == "histogram" and h.temporality == 2 and h.start_time_unix_nano == START_NS
    assert list(h.value.bucket_counts) == [2, 3, 1] and list(h.value.explicit_bounds) == [0.1, 1.0]
    assert h.value.count == 6 and h.value.sum == 4.5 and h.labels == {"op": "get"}
    warnings = [r.getMessage() for r in otlp_records(caplog, logging.WARNING)]
    assert len(warnings) == 1 and "quantiles" in warnings[0]  # once, not per export


def test_label_text_parsing_matches_rendering():
    for pairs in [(), (("a", "1"),), (("a", ""), ("b", 'x"y\\z\nw,"q=')), (("le", "+Inf"), ("c", "=\","))]:
        assert parse_label_text(_label_text(pairs)) == pairs


def _metrics_data(producer, now):
    resource = Resource.create({"service.name": "s"})
    scope = InstrumentationScope("retina-exporter", "1")
    return MetricsData([ResourceMetrics(resource, [ScopeMetrics(scope, producer.produce(now), "")], "")])


@pytest.mark.parametrize("source", ["known", "module", "histogram"])
def test_cached_encoder_equals_the_sdk_encoder(source):
    mod = make_module()
    hist = HistogramValue(bounds=(0.1, 1.0), counts=(2, 3, 1), sum=4.5, count=6)
    fams = {"known": known_source, "module": lambda: mod.families(prerendered=True),
            "histogram": lambda: [("h", "histogram", "", [((("op", "get"),), hist)])]}[source]
    producer = FamiliesProducer(fams, start_time_unix_nano=START_NS)
    for now in (START_NS + 10, START_NS + 20):  # the second time from the caches
        data = _metrics_data(producer, now)
        assert encode_metrics_fast(data) == encode_metrics(data)
        assert encode_metrics_fast(data).SerializeToString() == encode_metrics(data).SerializeToString()


def test_split_keeps_every_point_under_the_size():
    samples = [((("pod", f"pod-{i:05d}"),), i) for i in range(2000)]
    producer = FamiliesProducer(lambda: [("g", "gauge", "", samples), ("c", "counter", "", samples)],
                                start_time_unix_nano=START_NS)
    data = _metrics_data(producer, START_NS + 1)
    parts = split_metrics_data(data, 16 * 1024)
    assert len(parts) > 4
    assert all(encode_metrics_fast(p).ByteSize() <= 16 * 1024 for p in parts)
    whole = encode_metrics(data)
    merged = [dp for p in parts for rm in encode_metrics_fast(p).resource_metrics for sm in rm.scope_metrics
              for m in sm.metrics for dp in getattr(m, m.WhichOneof("data")).data_points]
    assert len(merged) == 4000
    assert merged == [dp for rm in whole.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
                      for dp in getattr(m, m.WhichOneof("data")).data_points]


# -- a collector that is down, slow, hung or refusing -------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_collector_down_is_counted_logged_once_and_exports_resume(rx, protocol, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    mod = make_module()
    calls = []

    def source():
        calls.append(time.monotonic())
        return mod.families()

    ex = exporter(rx, protocol, source, interval_s=0.2, timeout_s=0.5)
    mod.register(ex.families)
    port = rx.grpc_port if protocol == "grpc" else rx.http_port
    ex.start()
    try:
        assert rx.wait_for(lambda r: ex.exports >= 2)
        rx.stop()  # the collector is killed
        assert wait_for(lambda: sum(ex.failures.values()) >= 4, 20)
        # the caller is never blocked: the families and /metrics keep working at their normal speed
        for _ in range(20):
            t0 = time.perf_counter()
            text = mod.render()
            took = time.perf_counter() - t0
            assert took < 0.25, took
            assert list(source())
        assert 'controlplane_networkobservability_otlp_export_failures_counter{reason="unavailable"}' in text
        assert ex.failures["unavailable"] >= 3 and ex.consecutive_failures >= 4, ex.status()
        assert ex.alive()
        warnings = [r.getMessage() for r in otlp_records(caplog, logging.WARNING)]
        assert len(warnings) == 1, warnings  # once per outage, not per attempt
        assert wait_for(lambda: len([r for r in otlp_records(caplog, logging.DEBUG)
                                     if "failed again" in r.getMessage()]) >= 3)
        # the SDK exporters' own per-attempt records are DEBUG too
        sdk = [r for r in caplog.records if r.name.startswith("opentelemetry.exporter")]
        assert all(r.levelno == logging.DEBUG for r in sdk), [(r.name, r.levelname, r.getMessage()) for r in sdk]
        failures_during = sum(ex.failures.values())
        exports_before = ex.exports

        n = rx.count()
        rx.start()  # the collector is back, on the same port
        assert (rx.grpc_port if protocol == "grpc" else rx.http_port) == port
        assert rx.wait_for(lambda r: r.count() > n and ex.consecutive_failures == 0, 20), ex.status()
        assert ex.exports > exports_before
        assert rx.wait_for(lambda r: ex.exports >= exports_before + 2), ex.status()
    finally:
        ex.stop()
    warnings = [r.getMessage() for r in otlp_records(caplog, logging.WARNING)]
    assert len(warnings) == 1 and "failed (unavailable)" in warnings[0], warnings
    resumed = [r.getMessage() for r in otlp_records(caplog, logging.INFO) if "resumed" in r.getMessage()]
    assert len(resumed) == 1, resumed
    # the failures reached the receiver too, as a control-plane counter
    latest = rx.latest()
    p = latest[(FAILURES_COUNTER, (("reason", "unavailable"),))]
    assert p.kind == "sum" and p.is_monotonic and p.value >= failures_during - 1
    assert latest[(EXPORTS_COUNTER, ())].value >= exports_before


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_slow_collector_times_out_without_blocking_the_caller(rx, protocol, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    mod = make_module()
    rx.delay_s = 1.5
    ex = exporter(rx, protocol, mod.families, interval_s=0.1, timeout_s=0.5)
    ex.start()
    try:
        assert rx.wait_for(lambda r: r.arrivals >= 1)  # the exporter is now waiting on the collector
        t0 = time.perf_counter()
        mod.render()
        list(mod.families())
        assert time.perf_counter() - t0 < 0.2
        assert wait_for(lambda: ex.failures["timeout"] >= 2, 10), ex.status()
        assert len(otlp_records(caplog, logging.WARNING)) == 1
        rx.delay_s = 0
        assert wait_for(lambda: ex.consecutive_failures == 0 and ex.exports >= 1, 10)
    finally:
        ex.stop()
    assert "failed (timeout)" in otlp_records(caplog, logging.WARNING)[0].getMessage()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_hung_collector_does_not_delay_metrics_nor_stop(rx, protocol):
    """A collector that accepts and never answers: the exporter's thread waits (up to the timeout); /metrics,
    the families and stop() do not."""
    mod = make_module()
    rx.delay_s = 30
    ex = exporter(rx, protocol, lambda: mod.families(prerendered=True), interval_s=0.1, timeout_s=20.0)
    mod.register(ex.families)
    ex.start()
    try:
        assert rx.wait_for(lambda r: r.arrivals >= 1)
        worst = 0.0
        for _ in range(30):
            t0 = time.perf_counter()
            mod.render()
            worst = max(worst, time.perf_counter() - t0)
            time.sleep(0.01)
        assert worst < 0.2, worst
        assert ex.alive() and ex.exports == 0
    finally:
        t0 = time.monotonic()
        ex.stop(timeout_s=1.0)
        assert time.monotonic() - t0 < 2.0
        rx.delay_s = 0
        rx.stop()  # the abandoned export ends (connection closed), and its thread with it
        assert wait_for(lambda: not ex.alive(), 25)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("code,status,reason", [
    (grpc.StatusCode.UNAUTHENTICATED, 401, "rejected"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "throttled"),
    (grpc.StatusCode.INTERNAL, 503, "server_error"),
    (grpc.StatusCode.INVALID_ARGUMENT, 400, "rejected"),
])
def test_failure_reasons(rx, protocol, code, status, reason):
    rx.fail = (code, status)
    ex = exporter(rx, protocol, known_source, timeout_s=0.5)
    assert not ex.export_once()
    assert ex.failures[reason] == 1 and sum(ex.failures.values()) == 1, ex.status()
    assert ex.last_error.startswith(reason)
    rx.fail = None
    assert ex.export_once()
    ex.stop()
    assert ex.exports == 1 and ex.consecutive_failures == 0


def test_failure_reason_internal_when_a_source_breaks(rx, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    def broken():
        raise RuntimeError("boom")

    ex = exporter(rx, "grpc", broken)
    assert not ex.export_once() and not ex.export_once()
    assert ex.failures["internal"] == 2
    [warning] = otlp_records(caplog, logging.WARNING)
    assert warning.exc_info is not None  # a bug: logged with its traceback, once
    ex.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_partial_success_is_a_success_logged_once(rx, protocol, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    rx.reject_points = 2
    ex = exporter(rx, protocol, known_source)
    assert ex.export_once() and ex.export_once()
    warnings = otlp_records(caplog, logging.WARNING)
    assert len(warnings) == 1 and "rejected 2 of" in warnings[0].getMessage()
    rx.reject_points = 0
    assert ex.export_once()
    assert any("accepts all data points again" in r.getMessage() for r in otlp_records(caplog, logging.INFO))
    ex.stop()
    assert ex.exports == 3 and sum(ex.failures.values()) == 0


def test_stop_sends_the_last_values_and_does_not_wait_in_an_outage(rx):
    state = {"v": 1}
    source = lambda: [("g", "gauge", "", [((), state["v"])])]  # noqa: E731
    ex = exporter(rx, "grpc", source, interval_s=60)
    ex.start()
    state["v"] = 42
    ex.stop()
    assert [p.value for p in rx.points()] == [42]
    # in an outage, stop() ends the SDK exporter's retries instead of waiting for them, and does not try again
    rx.stop()
    ex2 = exporter(rx, "grpc", source, interval_s=0.05, timeout_s=5.0)
    ex2.start()
    assert wait_for(lambda: ex2.attempts.reason is not None or ex2.consecutive_failures)
    t0 = time.monotonic()
    ex2.stop()
    assert time.monotonic() - t0 < 1.0
    assert ex2.exports == 0


# -- TLS ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tls_self_signed_certificate(protocol, tls_files):
    files = {"server_cert": tls_files["self_signed_cert"], "server_key": tls_files["self_signed_key"]}
    with OtlpReceiver(tls=files) as rx:
        assert rx.endpoint(protocol).startswith("https://")
        ex = exporter(rx, protocol, known_source, ca_file=str(files["server_cert"]), headers={"x-token": "t"})
        assert ex.export_once(), ex.last_error
        ex.stop()
        assert rx.requests()[0].headers["x-token"] == "t"
        assert_same_as_metrics(rx.points(), known_source())
        # not trusted: the system roots, or an unrelated CA
        for ca in (None, str(tls_files["other_ca_cert"])):
            bad = exporter(rx, protocol, known_source, ca_file=ca, timeout_s=0.5)
            assert not bad.export_once()
            assert bad.failures["tls"] == 1, bad.last_error
            bad.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mutual_tls(protocol, tls_files):
    with OtlpReceiver(tls=tls_files, require_client_cert=True) as rx:
        ex = exporter(rx, protocol, known_source, ca_file=str(tls_files["ca_cert"]),
                      cert_file=str(tls_files["client_cert"]), key_file=str(tls_files["client_key"]))
        assert ex.export_once(), ex.last_error
        ex.stop()
        assert rx.count() == 1
        anonymous = exporter(rx, protocol, known_source, ca_file=str(tls_files["ca_cert"]), timeout_s=0.5)
        assert not anonymous.export_once()
        assert anonymous.failures["tls"] + anonymous.failures["unavailable"] == 1, anonymous.last_error
        anonymous.stop()
        assert rx.count() == 1


def test_plaintext_exporter_against_tls_receiver_fails_cleanly(tls_files):
    with OtlpReceiver(tls=tls_files) as rx:
        ex = exporter(rx, "grpc", known_source, endpoint=f"http://127.0.0.1:{rx.grpc_port}", timeout_s=0.5)
        assert not ex.export_once()
        assert sum(ex.failures.values()) == 1
        ex.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_collector_restart_between_exports_costs_no_failure(rx, protocol):
    """A kept-alive HTTP connection (or gRPC channel) the collector closed while idle is re-opened at once."""
    ex = exporter(rx, protocol, known_source)
    assert ex.export_once()
    rx.stop()
    rx.start()
    assert ex.export_once(), ex.last_error
    ex.stop()
    assert ex.exports == 2 and sum(ex.failures.values()) == 0


# -- the standard OTEL_* variables ----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_otel_environment_alone_reaches_the_receiver(rx, protocol, monkeypatch):
    """Only OTEL_EXPORTER_OTLP_ENDPOINT (+ _PROTOCOL for HTTP) and OTEL_RESOURCE_ATTRIBUTES, as a collector
    deployment sets them: the metrics arrive with those resource attributes (the real os.environ, as the agent
    reads it)."""
    for var in [v for v in list(__import__("os").environ) if v.startswith(("OTEL_", "RETINA_OTLP_"))]:
        monkeypatch.delenv(var)
    base = f"http://127.0.0.1:{rx.grpc_port if protocol == 'grpc' else rx.http_port}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", base)  # HTTP: /v1/metrics is appended
    if protocol != "grpc":
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,k8s.cluster.name=c%2C1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-scope-orgid=team-net")
    ex = OtlpExporter(known_source, node_name=NODE)
    assert ex.endpoint == (base if protocol == "grpc" else base + "/v1/metrics")
    assert ex.export_once(), ex.last_error
    ex.stop()
    assert_same_as_metrics(rx.points(), known_source())
    resource = dict(rx.points()[0].resource)
    assert resource["deployment.environment"] == "prod" and resource["k8s.cluster.name"] == "c,1"
    assert resource["service.name"] == "retina-exporter" and resource["k8s.node.name"] == NODE
    assert rx.requests()[0].headers["x-scope-orgid"] == "team-net"
    assert ex.status()["settings"]["sources"]["endpoint"] == "OTEL_EXPORTER_OTLP_ENDPOINT"


def test_precedence_otlp_keys_over_signal_variables_over_generic_variables_over_defaults(tls_files):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
           "OTEL_EXPORTER_OTLP_TIMEOUT": "2500", "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
           "OTEL_EXPORTER_OTLP_HEADERS": "a=1,b=2", "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "a=m"}
    s = resolve("metrics", env=env)
    assert (s.protocol, s.endpoint, s.timeout_s, s.compression) == ("http/protobuf", "http://generic:4318/v1/metrics",
                                                                   2.5, "none")
    assert s.headers == {"a": "m"}  # the signal's variable replaces the generic one
    env["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"] = "https://metrics:4318/custom"
    env["OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"] = "1000"
    s = resolve("metrics", env=env)
    assert (s.endpoint, s.tls, s.timeout_s) == ("https://metrics:4318/custom", True, 1.0)
    s = resolve("metrics", env=env, endpoint="http://cfg:4317", protocol="grpc", timeout_s=7, compression="gzip",
                headers={"A": "cfg", "c": "3"})
    assert (s.protocol, s.endpoint, s.timeout_s, s.compression) == ("grpc", "http://cfg:4317", 7.0, "gzip")
    assert s.headers == {"A": "cfg", "c": "3"}
    assert s.sources["endpoint"] == "otlp.endpoint" and s.sources["headers"].startswith("otlp.headers")
    assert resolve("metrics", env={}).endpoint == "http://localhost:4317"
    assert resolve("metrics", env={}, protocol="http").endpoint == "http://localhost:4318/v1/metrics"
    assert resolve("logs", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}, protocol="http").endpoint == \
        "http://c:4318/v1/logs"  # the same rules for another signal
    # insecure for an endpoint without scheme; TLS files from the environment
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317", "OTEL_EXPORTER_OTLP_INSECURE": "true"}
    assert resolve("metrics", env=env).endpoint == "http://collector:4317"
    assert resolve("metrics", env=env, insecure=False).endpoint == "https://collector:4317"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317",
           "OTEL_EXPORTER_OTLP_CERTIFICATE": str(tls_files["ca_cert"]),
           "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(tls_files["client_cert"]),
           "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(tls_files["client_key"])}
    s = resolve("metrics", env=env)
    assert (s.ca_file, s.cert_file, s.key_file) == (env["OTEL_EXPORTER_OTLP_CERTIFICATE"],
                                                    env["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"],
                                                    env["OTEL_EXPORTER_OTLP_CLIENT_KEY"])
    assert resolve("metrics", env=env, ca_file=str(tls_files["other_ca_cert"])).ca_file == \
        str(tls_files["other_ca_cert"])
    for bad in [{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, {"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"},
                {"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, {"OTEL_EXPORTER_OTLP_HEADERS": "novalue"},
                {"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://c"}, {"OTEL_EXPORTER_OTLP_INSECURE": "maybe"}]:
        with pytest.raises(ValueError) as e:
            resolve("metrics", env=bad)
        assert next(iter(bad)) in str(e.value)


def test_interval_from_otel_metric_export_interval():
    ex = OtlpExporter(known_source, env={"OTEL_METRIC_EXPORT_INTERVAL": "1500"})
    assert ex.interval_s == 1.5 and ex.status()["settings"]["sources"]["interval"] == "OTEL_METRIC_EXPORT_INTERVAL"
    assert OtlpExporter(known_source, env={"OTEL_METRIC_EXPORT_INTERVAL": "1500"}, interval_s=30).interval_s == 30
    assert OtlpExporter(known_source, env={}).interval_s == 60


def test_resource_precedence(monkeypatch):
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    r = build_resource(host_name="h", node_name="n", cluster_name="c1").attributes
    assert (r["service.name"], r["service.instance.id"], r["host.name"], r["k8s.node.name"],
            r["k8s.cluster.name"]) == ("retina-exporter", "n", "h", "n", "c1")
    assert build_resource(host_name="h").attributes["service.instance.id"] == "h"  # no node name: the host
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,k8s.cluster.name=env,team=net")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-service-name")
    r = build_resource(host_name="h", node_name="n", cluster_name="c1",
                       attributes={"team": "cfg"}).attributes
    assert (r["service.name"], r["k8s.cluster.name"], r["team"]) == ("from-service-name", "env", "cfg")
    assert r["telemetry.sdk.language"] == "python"


def test_delta_temporality_on_request(rx):
    state = {"a": 5}
    source = lambda: [("c", "counter", "", [((("k", k),), v) for k, v in state.items()]),  # noqa: E731
                      ("g", "gauge", "", [((), 3)])]
    ex = exporter(rx, "grpc", source, env={"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta"})
    assert ex.export_once()
    t1 = rx.points()[-1].time_unix_nano
    state.update(a=9, b=2)
    assert ex.export_once()
    state.update(a=1)  # a reset
    assert ex.export_once()
    ex.stop()
    first, second, third = ([p for p in rx.requests()[i] and __import__("tests.support.otlp_receiver",
                                                                         fromlist=["x"])._points_of(
        rx.requests()[i].request) if p.name == "c"] for i in range(3))
    assert first[0].value == 5 and first[0].temporality == 1 and first[0].start_time_unix_nano == START_NS
    got = {p.labels["k"]: (p.value, p.start_time_unix_nano) for p in second}
    assert got == {"a": (4, t1), "b": (2, t1)}
    assert {p.labels["k"]: p.value for p in third} == {"a": 1, "b": 0}
    assert {p.kind for p in rx.points() if p.name == "g"} == {"gauge"}


# -- settings -----------------------------------------------------------------------------------------------------


def test_parse_headers():
    assert parse_headers(None) == {} and parse_headers("") == {}
    assert parse_headers({"Authorization": "Bearer x", "x-n": 1}) == {"Authorization": "Bearer x", "x-n": "1"}
    assert parse_headers("api-key=a%20b, x-org = 1 ,") == {"api-key": "a b", "x-org": "1"}
    for bad in ["novalue", {"bad name": "x"}, {"x": "a\nb"}, {"grpc-timeout": "1"}, {"x-bin": "1"},
                {"A": "1", "a": "2"}, {"x": None}, ["x=1"]]:
        with pytest.raises(ValueError):
            parse_headers(bad)


def test_parse_attributes():
    assert parse_attributes(None) == {}
    assert parse_attributes({"k8s.cluster.name": "c1", "n": 2, "b": True}) == {"k8s.cluster.name": "c1", "n": "2",
                                                                              "b": "true"}
    assert parse_attributes("k8s.cluster.name=c%2C1, env=prod") == {"k8s.cluster.name": "c,1", "env": "prod"}
    for bad in ["x", {"": "v"}, {"k": None}, {"k": [1]}, 3]:
        with pytest.raises(ValueError):
            parse_attributes(bad)


def test_exporter_rejects_bad_settings(tls_files):
    src = known_source
    for kw in [dict(protocol="http/json"), dict(compression="zstd"), dict(interval_s=0),
               dict(endpoint="https://c:4317", cert_file=str(tls_files["client_cert"])),  # key missing
               dict(endpoint="http://c:4317", ca_file=str(tls_files["ca_cert"])),  # TLS files, plaintext
               dict(endpoint="https://c:4317", ca_file="/nonexistent/ca.pem"),
               dict(endpoint="https://c:4317", insecure=True), dict(endpoint="http://c:4317/x"),
               dict(resource_attributes="novalue")]:
        with pytest.raises(ValueError):
            OtlpExporter(src, env={}, **kw)
    ex = OtlpExporter(src, resource_attributes={"k8s.cluster.name": "c1"}, node_name="n", env={})
    assert ex.resource.attributes["k8s.cluster.name"] == "c1" and ex.endpoint == "http://localhost:4317"
    assert OtlpExporter(src, protocol="http/protobuf", env={}).endpoint == "http://localhost:4318/v1/metrics"
    assert OtlpExporter(src, protocol="http", endpoint="https://otlp.example.com/otlp/v1/metrics",
                        env={}).endpoint == "https://otlp.example.com/otlp/v1/metrics"
    assert OtlpExporter(src, endpoint="collector", env={}).endpoint == "https://collector:4317"


def test_check_settings_for_config_validation():
    assert check_settings(env={}) == "http://localhost:4317"
    assert check_settings(protocol="http/protobuf", endpoint="https://otlp.example.com", env={}) == \
        "https://otlp.example.com/v1/metrics"
    assert check_settings(endpoint="collector:4317", insecure=True, env={}) == "http://collector:4317"
    for bad in [dict(protocol="http/json"), dict(compression="zstd"), dict(cert_file="/c.pem"),
                dict(endpoint="http://c:4317", ca_file="/ca.pem"), dict(headers="x"),
                dict(endpoint="https://c:4317", insecure=True)]:
        with pytest.raises(ValueError):
            check_settings(env={}, **bad)


def test_control_plane_families_render():
    ex = OtlpExporter(known_source, env={})
    fams = {f.name: f for f in parse_text(render(ex.families()))}
    assert fams[EXPORTS_COUNTER].type == "counter"
    assert {s.labels["reason"] for s in fams[FAILURES_COUNTER].samples} == set(REASONS)
    assert all(s.value == 0 for f in fams.values() for s in f.samples)
