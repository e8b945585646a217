"""Flow logs over OTLP (retina_exporter/flowlogs.py, metrics_module.OtlpLogPipeline): the record -> log record
mapping (exact attributes; the body is Hubble's Summary), allow/deny lists with the Hubble filter code, maxPerSecond
with an injected clock, ring overrun and a full SDK queue counted, the config keys, and records reaching a real OTLP
receiver over gRPC and HTTP through the SDK's logs pipeline."""

from __future__ import annotations

import socket
import time

import pytest

from metrics_module import OTLP_SECTION, OtlpExporter
from metrics_module._otlp_settings import resolve, resolve_blrp
from retina_core.convert import to_proto
from retina_core.dns.record import VERDICT_DNS, DnsRecord
from retina_core.identity import Identity
from retina_core.record import (DIR_EGRESS, DIR_INGRESS, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, OBS_FROM_ENDPOINT,
                                OBS_TO_ENDPOINT, VERDICT_DROPPED, FlowRecord)
from retina_core.ring import Ring
from retina_core.units import ConfigError
from retina_exporter.flowlogs import (DROPPED_COUNTER, SENT_COUNTER, FlowLogExporter, TokenBucket, compile_matcher,
                                      flow_log)
from tests.support.otlp_receiver import OtlpReceiver

SRC = Identity("pod", "lab", "pod-0", labels=("app=web",), workloads=(("Deployment", "web"), ("ReplicaSet", "web-1")),
               node_name="node-a", identity=1234)
DST = Identity("pod", "lab", "pod-1", labels=("app=db",), workloads=(("StatefulSet", "db"),), node_name="node-a",
               service="db", identity=5678)
T0 = 1_700_000_000_123_456_789


def tcp(sport=40000, dport=5401, src=SRC, dst=DST, obs=OBS_FROM_ENDPOINT, **kw) -> FlowRecord:
    rec = FlowRecord(T0, 4, socket.inet_aton("10.1.0.1"), socket.inet_aton("10.1.0.2"), IPPROTO_TCP, sport, dport,
                     tcp_flags=0x12, obs_point=obs, direction=DIR_EGRESS, is_reply=False, packets=3, bytes=300,
                     packet_bytes=100, flag_counts=(0, 1, 0, 0, 3, 0, 0, 0, 0, 1), report_reason=4, node_name="node-a",
                     ifname="veth0", ifindex=7, **kw)
    rec.source, rec.destination = src, dst
    return rec


def test_tcp_record_attributes_exact() -> None:
    body, attrs, severity, text = flow_log(tcp())
    assert body == "TCP Flags: SYN, ACK" == to_proto(tcp()).Summary
    assert (severity.value, text) == (9, "INFO")
    assert attrs == {
        "source.address": "10.1.0.1", "source.port": 40000,
        "destination.address": "10.1.0.2", "destination.port": 5401,
        "network.type": "ipv4", "network.transport": "tcp",
        "k8s.node.name": "node-a",
        # the pod on this node's side of FROM_ENDPOINT: the source
        "k8s.namespace.name": "lab", "k8s.pod.name": "pod-0", "k8s.deployment.name": "web",
        "source.k8s.namespace.name": "lab", "source.k8s.pod.name": "pod-0",
        "source.k8s.workload.kind": "Deployment", "source.k8s.workload.name": "web",
        "source.k8s.deployment.name": "web", "source.k8s.node.name": "node-a",
        "destination.k8s.namespace.name": "lab", "destination.k8s.pod.name": "pod-1",
        "destination.k8s.workload.kind": "StatefulSet", "destination.k8s.workload.name": "db",
        "destination.k8s.statefulset.name": "db", "destination.k8s.service.name": "db",
        "destination.k8s.node.name": "node-a",
        "retina.source.kind": "pod", "retina.source.identity": 1234,
        "retina.destination.kind": "pod", "retina.destination.identity": 5678,
        "retina.verdict": "FORWARDED", "retina.direction": "egress", "retina.observation_point": "FROM_ENDPOINT",
        "retina.packets": 3, "retina.bytes": 300, "retina.is_reply": False, "retina.interface.name": "veth0",
        "retina.report_reason": "interval",
    }
    # At TO_ENDPOINT the local pod is the destination.
    _, attrs, _, _ = flow_log(tcp(obs=OBS_TO_ENDPOINT))
    assert (attrs["k8s.pod.name"], attrs["k8s.statefulset.name"]) == ("pod-1", "db")
    assert "k8s.deployment.name" not in attrs


def test_other_records_summaries_and_attributes() -> None:
    udp = FlowRecord(T0, 6, socket.inet_pton(socket.AF_INET6, "fd00::1"), socket.inet_pton(socket.AF_INET6, "fd00::2"),
                     IPPROTO_UDP, 5000, 53, direction=DIR_INGRESS, node_name="")
    body, attrs, _, _ = flow_log(udp, node_name="node-b")
    assert body == "UDP" == to_proto(udp).Summary
    assert attrs["network.type"] == "ipv6" and attrs["source.address"] == "fd00::1" and attrs["destination.port"] == 53
    assert attrs["k8s.node.name"] == "node-b" and "retina.is_reply" not in attrs and "k8s.pod.name" not in attrs
    icmp = FlowRecord(T0, 4, b"\x0a\0\0\x01", b"\x0a\0\0\x02", IPPROTO_ICMP, icmp_type=8, verdict=VERDICT_DROPPED,
                      drop_reason=6, drop_reason_name="NETFILTER_DROP")
    body, attrs, severity, text = flow_log(icmp)
    assert body == to_proto(icmp).Summary == "ICMPv4 EchoRequest"
    assert (attrs["retina.verdict"], attrs["retina.drop_reason"], text, severity.value) == \
        ("DROPPED", "NETFILTER_DROP", "WARN", 13)
    assert (attrs["retina.icmp.type"], attrs["retina.icmp.code"]) == (8, 0) and "source.port" not in attrs
    dns = FlowRecord(T0, 4, b"\x0a\0\0\x01", b"\x0a\0\0\x02", IPPROTO_UDP, 5353, 53, verdict=VERDICT_DNS)
    dns.l7 = DnsRecord(True, "example.com.", ("A",), ips=("1.2.3.4",), ttl=30, num_answers=1)
    body, attrs, _, _ = flow_log(dns)
    assert body == to_proto(dns).Summary and body.startswith("DNS Answer")
    assert attrs["dns.question.name"] == "example.com." and attrs["retina.dns.answers"] == ["1.2.3.4"]
    assert attrs["retina.verdict"] == "FORWARDED" and attrs["retina.dns.rcode"] == "NOERROR"


class FakePipeline:
    def __init__(self, capacity: int = 1 << 20) -> None:
        self.capacity = capacity
        self.records: list[tuple] = []
        self.sent = 0
        self.failed = 0

    def room(self) -> int:
        return self.capacity - len(self.records)

    def emit(self, *args) -> None:
        self.records.append(args)


def test_allow_and_deny_lists_use_the_hubble_filters() -> None:
    ring = Ring(1023)
    pipe = FakePipeline()
    w = FlowLogExporter(ring, pipe, allow_list=('{"source_pod": ["lab/pod-0"]}',),
                        deny_list=('{"destination_port": ["9999"]}',))
    other = Identity("pod", "lab", "pod-9")
    batch = [tcp(dport=5401)] * 5 + [tcp(dport=9999)] * 3 + [tcp(src=other)] * 4
    ring.write_batch(batch)
    w.process(w._reader.next_batch(100))
    assert (w.seen, w.filtered, w.emitted, len(pipe.records)) == (12, 7, 5, 5)
    assert {r[5]["destination.port"] for r in pipe.records} == {5401}
    assert pipe.records[0][0] == T0 and pipe.records[0][6] == "retina.flow"


def test_max_per_second_with_an_injected_clock() -> None:
    now = [100.0]
    ring = Ring(4095)
    pipe = FakePipeline()
    w = FlowLogExporter(ring, pipe, max_per_second=10, clock=lambda: now[0])
    ring.write_batch([tcp()] * 25)
    w.process(w._reader.next_batch(1000))
    assert (w.emitted, w.dropped["rate_limited"]) == (10, 15)  # one second of burst
    now[0] += 0.5  # half a second: 5 tokens
    ring.write_batch([tcp()] * 25)
    w.process(w._reader.next_batch(1000))
    assert (w.emitted, w.dropped["rate_limited"]) == (15, 35)
    now[0] += 60  # a long pause saves up one second only
    ring.write_batch([tcp()] * 25)
    w.process(w._reader.next_batch(1000))
    assert (w.emitted, w.dropped["rate_limited"]) == (25, 50)
    fam = dict((f[0], f[3]) for f in w.families())
    assert dict(fam[DROPPED_COUNTER])[(("reason", "rate_limited"),)] == 50
    unlimited = TokenBucket(0)
    assert all(unlimited.take() for _ in range(10_000))


def test_ring_overrun_and_full_queue_are_counted() -> None:
    ring = Ring(7)
    pipe = FakePipeline(capacity=3)
    w = FlowLogExporter(ring, pipe)
    for _ in range(20):  # the writer never waits: this reader is overtaken
        ring.write(tcp())
    w.process(w._reader.next_batch(100))
    assert w.dropped["ring_overrun"] == 13 and w.seen == 7
    assert (w.emitted, w.dropped["queue_full"]) == (3, 4)
    assert w._reader.lost_total == 13
    fam = {f[0]: dict(f[3]) for f in w.families()}
    assert fam[DROPPED_COUNTER] == {(("reason", "ring_overrun"),): 13, (("reason", "rate_limited"),): 0,
                                    (("reason", "queue_full"),): 4, (("reason", "export_failed"),): 0}
    assert fam[SENT_COUNTER] == {(): 0}


def test_filters_are_compiled_and_bad_ones_named() -> None:
    with pytest.raises(ValueError, match=r"^otlp\.flowLogs\.denyList: item 1: source_ip"):
        compile_matcher((), ('{"source_pod": ["lab/"]}', '{"source_ip": ["10.0.0.300"]}'))
    assert compile_matcher((), ()).is_empty


def _parse(raw: dict):
    return OTLP_SECTION.parse({f"otlp.{k}": (v, "in the file") for k, v in raw.items()})


def test_config_keys() -> None:
    cfg = _parse({"enabled": True, "flowLogs.enabled": True, "flowLogs.allowList": [{"sourcePod": ["lab/"]}],
                  "flowLogs.denyList": '[{"verdict": ["DROPPED"]}]', "flowLogs.maxPerSecond": "50"})
    assert cfg.flow_logs_enabled and cfg.flow_logs_max_per_second == 50
    assert cfg.flow_logs_allow_list == ('{"source_pod": ["lab/"]}',)
    assert cfg.flow_logs_deny_list == ('{"verdict": ["DROPPED"]}',)
    assert OTLP_SECTION.to_dict(cfg)["flowLogs"] == {"enabled": True, "allowList": [{"source_pod": ["lab/"]}],
                                                     "denyList": [{"verdict": ["DROPPED"]}], "maxPerSecond": 50}
    assert _parse({}).flow_logs_max_per_second == 1000
    with pytest.raises(ConfigError, match="otlp.flowLogs.enabled: true needs otlp.enabled: true"):
        _parse({"flowLogs.enabled": True})
    with pytest.raises(ConfigError, match="otlp.flowLogs.allowList: invalid value"):
        _parse({"flowLogs.allowList": [{"nope": 1}]})
    with pytest.raises(ConfigError, match="otlp.flowLogs.maxPerSecond: invalid value"):
        _parse({"flowLogs.maxPerSecond": -1})


def test_logs_settings_and_batch_variables() -> None:
    s = resolve("logs", endpoint="http://c:4318/v1/metrics", protocol="http/protobuf", env={})
    assert s.endpoint == "http://c:4318/v1/logs"
    s = resolve("logs", endpoint="http://c:4318", protocol="http/protobuf", env={})
    assert s.endpoint == "http://c:4318/v1/logs"
    s = resolve("logs", protocol="http/protobuf", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                                                       "OTEL_EXPORTER_OTLP_LOGS_HEADERS": "a=b"})
    assert s.endpoint == "http://c:4318/v1/logs" and s.headers == {"a": "b"}
    batch, sources = resolve_blrp({"OTEL_BLRP_MAX_QUEUE_SIZE": "100", "OTEL_BLRP_SCHEDULE_DELAY": "250"})
    assert batch == {"schedule_delay_millis": 250, "max_queue_size": 100, "max_export_batch_size": 100,
                     "export_timeout_millis": 30000}
    assert sources["max_queue_size"] == "OTEL_BLRP_MAX_QUEUE_SIZE"
    with pytest.raises(ValueError, match="OTEL_BLRP_MAX_QUEUE_SIZE"):
        resolve_blrp({"OTEL_BLRP_MAX_QUEUE_SIZE": "x"})


def test_bad_filter_stops_the_agent_naming_the_key(monkeypatch) -> None:
    from retina_exporter.agent import Agent
    from retina_exporter.config import load_config
    from retina_exporter.errors import StartupError

    cfg = load_config(None, {"RETINA_OTLP_ENABLED": "true", "RETINA_OTLP_ENDPOINT": "http://127.0.0.1:1",
                             "RETINA_OTLP_FLOWLOGS_ENABLED": "true", "RETINA_NODENAME": "n",
                             "RETINA_OTLP_FLOWLOGS_ALLOWLIST": '[{"source_ip": ["10.0.0.300"]}]'})
    with pytest.raises(StartupError, match=r"otlp\.flowLogs\.allowList: item 0: source_ip"):
        Agent(cfg, plugins=[])


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_flow_logs_reach_a_real_receiver(protocol) -> None:
    with OtlpReceiver() as receiver:
        exporter = OtlpExporter(lambda: [], endpoint=receiver.endpoint("grpc" if protocol == "grpc" else "http"),
                                protocol=protocol, interval_s=3600, logs=True, node_name="node-a", env={})
        pipeline = exporter.logs
        assert pipeline.queue_observable and pipeline.room() == 2048  # the SDK's queue can be watched
        ring = Ring(1023)
        w = FlowLogExporter(ring, pipeline, node_name="node-a", deny_list=('{"destination_port": ["9999"]}',))
        w.start()
        try:
            ring.write_batch([tcp(sport=40000 + i) for i in range(20)] + [tcp(dport=9999)] * 5)
            assert receiver.wait_for(lambda r: len(r.log_records()) >= 20, 15)  # OTEL_BLRP_SCHEDULE_DELAY: 1 s
        finally:
            w.stop()
            exporter.stop()
        records = receiver.log_records()
        assert len(records) == 20 and {r.attributes["source.port"] for r in records} == set(range(40000, 40020))
        r = records[0]
        assert r.body == "TCP Flags: SYN, ACK" and r.event_name == "retina.flow" and r.severity_text == "INFO"
        assert r.attributes == {**flow_log(tcp())[1], "source.port": r.attributes["source.port"]}
        assert r.time_unix_nano == T0 and r.observed_time_unix_nano > 0
        assert r.resource["service.name"] == "retina-exporter" and r.resource["k8s.node.name"] == "node-a"
        assert r.scope[0] == "retina-exporter.flowlogs"
        fam = {f[0]: dict(f[3]) for f in w.families()}
        assert fam[SENT_COUNTER] == {(): 20} and w.filtered == 5
        assert pipeline.status()["failures"] == {} and pipeline.sent == 20


def test_collector_down_counts_export_failures_without_blocking() -> None:
    receiver = OtlpReceiver().start()
    endpoint = receiver.endpoint("http")
    receiver.stop()
    exporter = OtlpExporter(lambda: [], endpoint=endpoint, protocol="http/protobuf", interval_s=3600, logs=True,
                            timeout_s=0.5, env={"OTEL_BLRP_SCHEDULE_DELAY": "50"})
    ring = Ring(1023)
    w = FlowLogExporter(ring, exporter.logs)
    t = time.monotonic()
    ring.write_batch([tcp()] * 10)
    w.process(w._reader.next_batch(100))
    assert time.monotonic() - t < 0.2 and w.emitted == 10  # emitting never waits on the collector
    deadline = time.monotonic() + 10
    while exporter.logs.failed < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    exporter.stop()
    fam = {f[0]: dict(f[3]) for f in w.families()}
    assert fam[DROPPED_COUNTER][(("reason", "export_failed"),)] == 10
    assert exporter.logs.failures["unavailable"] >= 1
