"""metrics_module.module and exposition: the ring reader thread, lost events, family sources, text 0.0.4 and
OpenMetrics output (parsed back with prometheus_client's parsers), content negotiation."""

from __future__ import annotations

import socket
import time

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from retina_core.identity import Identity
from retina_core.metricsconfig import parse_metrics_configuration
from metrics_module.exposition import (
    CONTENT_TYPE,
    OPENMETRICS_CONTENT_TYPE,
    PIECE_LINES,
    negotiate,
    render,
    render_openmetrics,
)
from metrics_module.module import MetricsModule
from retina_core.record import OBS_FROM_ENDPOINT, OBS_TO_ENDPOINT, FlowRecord
from retina_core.ring import LostMarker, Ring
from retina_core.telemetry import ControlPlane

NODE = "node-a"
WEB = Identity("pod", namespace="shop", pod_name='we"b\\1', workloads=(("Deployment", "web"),), node_name=NODE)
DB = Identity("pod", namespace="data", pod_name="db-0", node_name=NODE)

CONFIG = parse_metrics_configuration({"contextOptions": [
    {"metricName": "forward_count", "sourceLabels": ["ip", "podname", "workload"]},
    {"metricName": "forward_bytes", "sourceLabels": ["podname"]},
    {"metricName": "tcp_flag_gauges", "sourceLabels": ["podname"]},
    {"metricName": "dns_request_count", "sourceLabels": ["podname"]},
]})


def rec(obs=OBS_FROM_ENDPOINT, packets=1, nbytes=100):
    r = FlowRecord(0, 4, socket.inet_aton("10.0.0.5"), socket.inet_aton("10.0.0.6"), 6, 40000, 80, obs_point=obs,
                   direction=2, is_reply=False, packets=packets, bytes=nbytes,
                   flag_counts=(0, 0, 0, 1, packets, 0, 0, 0, 0, 0))
    r.source, r.destination = WEB, DB
    return r


def module(**kw):
    return MetricsModule(kw.pop("ring", None), kw.pop("telemetry", ControlPlane()), kw.pop("config", CONFIG), NODE,
                         False, kw.pop("remote_context", False), **kw)


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_reader_thread_follows_ring_and_counts_lost():
    ring = Ring(7)
    telemetry = ControlPlane()
    mod = module(ring=ring, telemetry=telemetry)
    ring.write(rec())  # written before start: read from the oldest record
    mod.start()
    try:
        assert mod.alive()
        ring.write(rec(obs=OBS_TO_ENDPOINT))
        assert wait_for(lambda: mod.records_processed == 2)
        ring.write_batch([rec() for _ in range(20)])  # overtakes the reader: 13 of these are lost to it
        assert wait_for(lambda: mod.records_processed + mod.records_lost == 22)
    finally:
        mod.stop()
    assert not mod.alive()
    lost = telemetry.lost_events.get(("buffered_channel", "metricModule"), 0)
    assert lost == mod.records_lost
    values = {(s.name, s.labels.get("direction")): s.value
              for f in parse_text(mod.render()) for s in f.samples}
    assert values[("networkobservability_adv_forward_count", "egress")] == 1 + 20 - lost
    assert values[("networkobservability_adv_forward_count", "ingress")] == 1


def test_lost_markers_from_batch():
    telemetry = ControlPlane()
    mod = module(telemetry=telemetry)
    mod.process([LostMarker(5), rec(), LostMarker(2)])
    assert telemetry.lost_events == {("buffered_channel", "metricModule"): 7}
    assert mod.records_processed == 1


def test_families_order_and_registered_sources():
    mod = module()
    mod.register(lambda: [("networkobservability_forward_count", "gauge", "Total forwarded packets",
                           [((("direction", "ingress"),), 10), ((("direction", "egress"),), 20)])])

    def broken():
        raise RuntimeError("boom")

    mod.register(broken)  # a failing source is skipped, the scrape still works
    mod.process([rec()])
    names = [f[0] for f in mod.families()]
    assert names == [
        "networkobservability_forward_count",
        "networkobservability_adv_forward_count",
        "networkobservability_adv_forward_bytes",
        "networkobservability_adv_tcpflags_count",
        "networkobservability_adv_dns_request_count",
        "controlplane_networkobservability_plugin_manager_failed_to_reconcile",
        "controlplane_networkobservability_lost_events_counter",
        "controlplane_networkobservability_parsed_packets_counter",
        "controlplane_networkobservability_expired_metrics_counter",
        "controlplane_networkobservability_metrics_series_overflow_counter",
    ]
    mod.unregister(broken)
    # plain label pairs from families(), pre-rendered text for render()
    fam = {f[0]: list(f[3]) for f in mod.families()}
    assert fam["networkobservability_adv_forward_bytes"] == [
        ((("direction", "egress"), ("podname", 'we"b\\1')), 100)]
    fam = {f[0]: list(f[3]) for f in mod.families(prerendered=True)}
    assert fam["networkobservability_adv_forward_bytes"] == [('{direction="egress",podname="we\\"b\\\\1"}', 100)]


def test_text_exposition_parses_back():
    mod = module()
    mod.process([rec(packets=3, nbytes=300), rec(obs=OBS_TO_ENDPOINT, packets=3, nbytes=300)])
    text = mod.render()
    assert "_total" not in text
    assert 'networkobservability_adv_forward_bytes{direction="egress",podname="we\\"b\\\\1"} 300\n' in text
    fams = {f.name: f for f in parse_text(text)}
    fwd = fams["networkobservability_adv_forward_count"]
    assert fwd.type == "gauge"
    assert sorted((s.labels["direction"], s.labels["podname"], s.labels["ip"], s.value) for s in fwd.samples) == [
        ("egress", 'we"b\\1', "10.0.0.5", 3.0), ("ingress", "db-0", "10.0.0.6", 3.0)]
    assert fwd.samples[0].labels["workload_kind"] in ("Deployment", "unknown")
    flags = fams["networkobservability_adv_tcpflags_count"]
    assert sorted((s.labels["flag"], s.labels["podname"], s.value) for s in flags.samples) == [
        ("ACK", "db-0", 3.0), ("ACK", 'we"b\\1', 3.0), ("PSH", "db-0", 1.0), ("PSH", 'we"b\\1', 1.0)]
    assert fams["controlplane_networkobservability_lost_events_counter"].type == "counter"


def test_openmetrics_output_is_valid():
    mod = module()
    mod.process([rec(packets=3, nbytes=300), LostMarker(4)])
    text = mod.render(openmetrics=True)
    assert text.endswith("# EOF\n")
    # Retina's counter names (no _total) stay as they are: typed unknown, so no scraper renames them.
    assert "# TYPE controlplane_networkobservability_lost_events_counter unknown\n" in text
    assert ('controlplane_networkobservability_lost_events_counter{type="buffered_channel",'
            'reason="metricModule"} 4\n') in text
    assert "_total" not in text
    fams = {f.name: f for f in parse_openmetrics(text)}
    lost = fams["controlplane_networkobservability_lost_events_counter"]
    assert lost.type == "unknown"
    assert [(s.name, s.value) for s in lost.samples] == [
        ("controlplane_networkobservability_lost_events_counter", 4.0)]
    fwd = fams["networkobservability_adv_forward_count"]
    assert fwd.type == "gauge" and [s.value for s in fwd.samples] == [3.0]
    assert fams["networkobservability_adv_dns_request_count"].type == "unknown"


def test_render_openmetrics_families_directly():
    families = [
        ("x_total", "counter", 'help "quoted"\nline', [((("a", "1"),), 2)]),
        ("y", "untyped", "h", [((), 1.5)]),
        ("z", "gauge", "h", [("", float("inf")), ('{k="v"}', float("nan"))]),
    ]
    text = render_openmetrics(families)
    assert text == (
        '# HELP x help \\"quoted\\"\\nline\n# TYPE x counter\nx_total{a="1"} 2\n'
        "# HELP y h\n# TYPE y unknown\ny 1.5\n"
        '# HELP z h\n# TYPE z gauge\nz +Inf\nz{k="v"} NaN\n# EOF\n'
    )
    assert [f.name for f in parse_openmetrics(text)] == ["x", "y", "z"]
    assert render(families[2:]) == '# HELP z h\n# TYPE z gauge\nz +Inf\nz{k="v"} NaN\n'


def test_render_in_pieces_is_the_same_text():
    """/metrics writes the body as pieces of PIECE_LINES lines: joined, they are exactly the text (both formats),
    and no piece holds more than PIECE_LINES samples."""
    n = 3 * PIECE_LINES + 7
    families = [("a", "gauge", "h", [((("i", str(i)), ("q", 'x"\\é')), i) for i in range(n)]),
                ("b", "counter", "h", [('{k="v"}', 1.5)]), ("c", "gauge", "h", [])]
    for fn in (render, render_openmetrics):
        pieces = fn(families, chunks=True)
        assert b"".join(pieces) == fn(families).encode()
        assert max(p.count(b"\n") for p in pieces) <= PIECE_LINES
        assert len(pieces) >= n // PIECE_LINES


def test_advanced_label_text_escapes_only_when_needed():
    """Series keep no rendered text: it is rendered at each scrape, escaping the values that need it."""
    mod = module()
    mod.process([rec(packets=3, nbytes=300), rec(obs=OBS_TO_ENDPOINT, packets=3, nbytes=300)])
    text = mod.render()
    assert ('networkobservability_adv_forward_count{direction="egress",ip="10.0.0.5",podname="we\\"b\\\\1",'
            'workload_kind="Deployment",workload_name="web"} 3\n') in text
    assert ('networkobservability_adv_forward_count{direction="ingress",ip="10.0.0.6",podname="db-0",'
            'workload_kind="unknown",workload_name="unknown"} 3\n') in text
    assert mod.render() == text


def test_negotiate():
    prom2 = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
             "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    prom3 = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
             "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
             "text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
    assert negotiate(prom2) == (OPENMETRICS_CONTENT_TYPE, render_openmetrics)
    assert negotiate(prom3) == (OPENMETRICS_CONTENT_TYPE, render_openmetrics)
    assert negotiate("application/openmetrics-text") == (OPENMETRICS_CONTENT_TYPE, render_openmetrics)
    assert negotiate("text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.5") == (CONTENT_TYPE, render)
    assert negotiate("application/openmetrics-text;version=0.0.1") == (CONTENT_TYPE, render)
    assert negotiate("application/openmetrics-text;q=0") == (CONTENT_TYPE, render)
    assert negotiate(None) == (CONTENT_TYPE, render)
    assert negotiate("") == (CONTENT_TYPE, render)
    assert negotiate("application/json") == (CONTENT_TYPE, render)
    assert OPENMETRICS_CONTENT_TYPE == "application/openmetrics-text; version=1.0.0; charset=utf-8"


def test_apply_at_run_time_keeps_counts():
    mod = module()
    mod.process([rec(packets=2)])
    mod.apply(parse_metrics_configuration({"contextOptions": [
        {"metricName": "forward_count", "sourceLabels": ["ip", "podname", "workload"], "ttl": "10m"}]}))
    mod.process([rec(packets=1)])
    fams = {f.name: f for f in parse_text(mod.render())}
    assert [s.value for s in fams["networkobservability_adv_forward_count"].samples] == [3.0]
    assert "networkobservability_adv_forward_bytes" not in fams
    assert mod.config.context_options[0].ttl_ns == 600 * 10**9


def test_scrape_work_does_not_depend_on_records():
    mod = module()
    mod.process([rec() for _ in range(5000)])
    # rendering 4 families' few series: the text does not grow with the records
    assert len(mod.render()) < 4000


def test_shared_registry_as_the_agent_wires_it():
    from metrics_module.registry import FamilyRegistry

    telemetry = ControlPlane()
    registry = FamilyRegistry()
    registry.register(telemetry.families)  # the agent registers the control-plane families itself
    mod = module(telemetry=telemetry, registry=registry)
    mod.register(lambda: [("networkobservability_forward_count", "gauge", "h", [])])
    mod.process([rec()])
    names = [f[0] for f in mod.families()]
    assert names.count("controlplane_networkobservability_lost_events_counter") == 1  # not twice
    assert names[0] == "controlplane_networkobservability_plugin_manager_failed_to_reconcile"
    assert "networkobservability_forward_count" in names and "networkobservability_adv_forward_count" in names
    assert [f.name for f in parse_openmetrics(mod.render(openmetrics=True))] == [
        n[: -len("_total")] if n.endswith("_total") else n for n in names]


def test_histogram_families_render_in_both_formats():
    """A histogram family's HistogramValue samples become cumulative ``_bucket`` samples with ``le`` (as
    prometheus_client writes bounds), ``_sum`` and ``_count``; Prometheus' parser reads them back."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
    from prometheus_client.parser import text_string_to_metric_families

    from metrics_module import HistogramValue, render, render_openmetrics

    h = HistogramValue((0.00005, 0.01, 1.0), (1, 2, 0, 3), 7.5, 6)
    fam = ("x_seconds", "histogram", "help", [((("pod", "a"),), h), ((), h)])
    for text, parse in ((render([fam]), text_string_to_metric_families),
                        (render_openmetrics([fam]), om_parse)):
        (f,) = list(parse(text))
        assert f.type == "histogram"
        got = [(s.name, s.labels, s.value) for s in f.samples if s.labels.get("pod") == "a"]
        bucket = "x_seconds_bucket"
        assert got == [(bucket, {"pod": "a", "le": "5e-05"}, 1), (bucket, {"pod": "a", "le": "0.01"}, 3),
                       (bucket, {"pod": "a", "le": "1.0"}, 3), (bucket, {"pod": "a", "le": "+Inf"}, 6),
                       ("x_seconds_sum", {"pod": "a"}, 7.5), ("x_seconds_count", {"pod": "a"}, 6)], text
