"""OTLP from the real agent in a lab (the OpenTelemetry SDK path): a real OTLP receiver (gRPC and HTTP/protobuf) gets
the same series and values as /metrics at a quiet moment; killing the receiver does not disturb /metrics or the flow
pipeline, and exports resume when it comes back; the standard OTEL_* variables alone configure the push."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from retina_exporter.lab import traffic
from retina_exporter.lab.agent_process import AgentProcess
from retina_exporter.lab.topology import Lab, in_netns
from tests.support.otlp_receiver import OtlpReceiver


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with Lab(pods=2) as lab:
        lab.inventory_path = lab.write_inventory(tmp_path_factory.mktemp("inv") / "inventory.yaml")
        yield lab


def scrape(agent) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(agent.get("/metrics")[1].decode()):
        for s in fam.samples:
            name = fam.name if fam.type == "counter" and s.name == fam.name + "_total" else s.name
            out[(name, tuple(sorted(s.labels.items())))] = s.value
    return out


def wait(cond, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.1)
    return cond()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_otlp_matches_metrics_and_survives_receiver_outage(lab, protocol):
    receiver = OtlpReceiver()
    in_netns(lab.node_ns, receiver.start)  # the agent pushes from the node namespace
    agent = AgentProcess(lab.node_ns, {
        "enabledPlugin": ["packetparser"],
        "enablePodLevel": True,
        "enrichment": {"source": "inventory", "inventoryFile": str(lab.inventory_path)},
        "nodeName": lab.node_name,
        "metricsConfiguration": {"contextOptions": [
            {"metricName": "forward_count", "sourceLabels": ["podname"]},
            {"metricName": "forward_bytes", "sourceLabels": ["podname"]}]},
        "otlp": {"enabled": True, "protocol": protocol, "interval": "1s", "insecure": True,
                 "endpoint": receiver.endpoint("grpc" if protocol == "grpc" else "http")},
    })
    p0, p1 = lab.pods
    try:
        agent.start()
        traffic.ping(lab, p0, p1.ipv4, count=4)
        # A quiet moment: two consecutive exports after the traffic equal /metrics for every adv_* series and the
        # parsed-packets counter (which stop moving when traffic stops).
        watched = ("networkobservability_adv_forward_count", "networkobservability_adv_forward_bytes",
                   "controlplane_networkobservability_parsed_packets_counter")

        def matches():
            prom = {k: v for k, v in scrape(agent).items() if k[0] in watched}
            n = receiver.count()
            if n == 0 or not prom:
                return False
            got = {(p.name, tuple(sorted((k, str(v)) for k, v in p.attributes))): p.value
                   for p in receiver.latest(since=max(0, n - 1)).values() if p.name in watched}
            want = {(name, tuple(sorted(labels))): v for (name, labels), v in prom.items()}
            return got == want and any(v > 0 for v in want.values())

        assert wait(matches), (receiver.count(), agent.log()[-2000:])
        pts = receiver.latest(since=receiver.count() - 1)
        kinds = {p.name: (p.kind, p.is_monotonic) for p in pts.values()}
        assert kinds["networkobservability_adv_forward_count"][0] == "gauge"  # Retina's counts are gauges
        assert kinds["controlplane_networkobservability_parsed_packets_counter"] == ("sum", True)
        resource = dict(next(iter(pts.values())).resource)
        assert resource["service.name"] == "retina-exporter" and resource["k8s.node.name"] == lab.node_name

        # The collector goes away: /metrics keeps answering and the flow pipeline keeps counting.
        receiver.stop()
        before = scrape(agent)[("controlplane_networkobservability_parsed_packets_counter", ())]
        traffic.ping(lab, p0, p1.ipv4, count=3)
        assert wait(lambda: scrape(agent)[("controlplane_networkobservability_parsed_packets_counter", ())]
                    >= before + 6)  # 3 requests + 3 replies, each seen at both veths: at least 6 events
        assert wait(lambda: sum(v for (name, _), v in scrape(agent).items()
                                if name == "controlplane_networkobservability_otlp_export_failures_counter") >= 1)
        # It comes back on the same port: exports resume.
        n = receiver.count()
        in_netns(lab.node_ns, receiver.start)
        assert wait(lambda: receiver.count() > n, timeout=90)
    finally:
        agent.close()
        receiver.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_otel_environment_alone_configures_the_push(lab, protocol, monkeypatch):
    """Only the standard variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_RESOURCE_ATTRIBUTES; _PROTOCOL for HTTP) and
    ``otlp.enabled: true``: the agent's metrics reach the receiver with those resource attributes (the export
    made at shutdown, so the default 60 s interval needs no waiting)."""
    for var in [v for v in os.environ if v.startswith(("OTEL_", "RETINA_OTLP_"))]:
        monkeypatch.delenv(var)
    receiver = OtlpReceiver()
    in_netns(lab.node_ns, receiver.start)
    base = receiver.endpoint("grpc") if protocol == "grpc" else f"http://127.0.0.1:{receiver.http_port}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", base)
    if protocol != "grpc":
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.cluster.name=lab-cluster,deployment.environment=test")
    agent = AgentProcess(lab.node_ns, {"enabledPlugin": ["packetparser"], "nodeName": lab.node_name,
                                       "otlp": {"enabled": True}})
    try:
        agent.start()
        status = json.loads(agent.get("/debug/otlp")[1])
        assert status["settings"]["sources"]["endpoint"] == "OTEL_EXPORTER_OTLP_ENDPOINT", status
        assert status["interval_s"] == 60
        traffic.ping(lab, lab.pods[0], lab.pods[1].ipv4, count=2)
        assert agent.stop() == 0
        assert receiver.wait_for(lambda r: r.count() >= 1, 15), agent.log()[-2000:]
        pts = receiver.latest()
        resource = dict(next(iter(pts.values())).resource)
        assert resource["k8s.cluster.name"] == "lab-cluster" and resource["deployment.environment"] == "test"
        assert resource["service.name"] == "retina-exporter" and resource["k8s.node.name"] == lab.node_name
        parsed = pts[("controlplane_networkobservability_parsed_packets_counter", ())]
        assert parsed.kind == "sum" and parsed.value > 0
    finally:
        agent.close()
        receiver.stop()
