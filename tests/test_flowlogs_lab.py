"""Flow logs from the real agent in a lab: a known TCP transfer between two pods reaches a real OTLP receiver as log
records carrying the pods' names and the connection's exact ports; the deny list keeps another connection out and
the counters on /metrics agree with what arrived."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from retina_exporter.lab import traffic
from retina_exporter.lab.agent_process import AgentProcess
from retina_exporter.lab.topology import Lab, in_netns
from tests.support.otlp_receiver import OtlpReceiver

PORT = 5411
DENIED_PORT = 5412


def counters(agent) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(agent.get("/metrics")[1].decode()):
        for s in fam.samples:
            if "otlp_flow_logs" in s.name:
                out[(s.name.removesuffix("_total"), tuple(sorted(s.labels.items())))] = s.value
    return out


def test_tcp_transfer_flow_logs_arrive_with_pod_names_and_ports(tmp_path):
    with Lab(pods=2) as lab:
        inventory = lab.write_inventory(tmp_path / "inventory.yaml")
        receiver = OtlpReceiver()
        in_netns(lab.node_ns, receiver.start)
        agent = AgentProcess(lab.node_ns, {
            "enabledPlugin": ["packetparser"],
            "enablePodLevel": True,
            "dataAggregationLevel": "low",
            "enrichment": {"source": "inventory", "inventoryFile": str(inventory)},
            "nodeName": lab.node_name,
            "otlp": {"enabled": True, "protocol": "grpc", "interval": "1h", "insecure": True,
                     "endpoint": receiver.endpoint("grpc"),
                     "flowLogs": {"enabled": True, "maxPerSecond": 0,
                                  "allowList": [{"source_pod": ["lab/"]}, {"destination_pod": ["lab/"]}],
                                  "denyList": [{"destination_port": [str(DENIED_PORT)]},
                                               {"source_port": [str(DENIED_PORT)]}]}},
        })
        p0, p1 = lab.pods
        try:
            agent.start()
            res = traffic.tcp_transfer(lab, p0, p1, nbytes=30_000, port=PORT)
            denied = traffic.tcp_transfer(lab, p0, p1, nbytes=1_000, port=DENIED_PORT)
            cport = res.client_port

            def conn(records):
                return [r for r in records if {r.attributes.get("source.port"), r.attributes.get("destination.port")}
                        == {cport, PORT}]

            def has_fin():
                return any("FIN" in r.body for r in conn(receiver.log_records()))

            assert receiver.wait_for(lambda r: has_fin(), 30), agent.log()[-3000:]
            records = conn(receiver.log_records())
            forward = [r for r in records if r.attributes["source.port"] == cport]
            replies = [r for r in records if r.attributes["source.port"] == PORT]
            assert forward and replies
            for r in forward:
                a = r.attributes
                assert (a["source.address"], a["destination.address"]) == (res.client_ip, res.server_ip)
                assert a["destination.port"] == PORT and a["network.transport"] == "tcp" and a["network.type"] == "ipv4"
                assert a["source.k8s.pod.name"] == p0.name and a["destination.k8s.pod.name"] == p1.name
                assert a["source.k8s.namespace.name"] == a["destination.k8s.namespace.name"] == "lab"
                assert a["k8s.node.name"] == lab.node_name and a["retina.verdict"] == "FORWARDED"
                assert a["k8s.pod.name"] in (p0.name, p1.name)  # the pod at the observing veth
                assert r.body.startswith("TCP Flags: ")
            assert any(r.body == "TCP Flags: SYN" for r in forward)
            assert all(r.attributes["source.k8s.pod.name"] == p1.name and r.attributes["retina.is_reply"]
                       for r in replies)
            assert sum(r.attributes["retina.bytes"] for r in forward
                       if r.attributes["retina.observation_point"] == "FROM_ENDPOINT") > 30_000
            assert not [r for r in receiver.log_records()
                        if DENIED_PORT in (r.attributes.get("source.port"), r.attributes.get("destination.port"))]
            assert denied.client_port != cport
            # What the counters say agrees with the receiver (at a quiet moment: everything sent).
            status = json.loads(agent.get("/debug/otlp")[1])["flow_logs"]
            assert status["filtered"] > 0 and status["dropped"]["rate_limited"] == 0, status
            c = counters(agent)
            sent = c[("controlplane_networkobservability_otlp_flow_logs_sent_counter", ())]
            assert sent == len(receiver.log_records()) == status["emitted"], (sent, status)
            assert c[("controlplane_networkobservability_otlp_flow_logs_dropped_counter",
                      (("reason", "queue_full"),))] == 0
        finally:
            agent.close()
            receiver.stop()
