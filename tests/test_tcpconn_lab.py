"""TCP connect latency and failed connections end to end: the real agent (packetparser, pod level, inventory) in
a lab's node namespace, real connection attempts between two pods on the node's bridge.

Pod 0 makes N successful connects to a listener on pod 1, R attempts to a closed port of pod 1 (answered by an
RST), and T attempts to a port whose SYNs pod 1 drops (an nft rule of the test: never answered; the client gives
up after its kernel retransmitted the SYN, so each of those attempts is several SYNs of one ISN). Pod 1 makes one
successful connect to pod 0. Every attempt crosses both pods' veths (two observation points of this node), and
must count exactly once: node-level ``tcp_failed_connections{reason}`` and ``tcp_connect_latency_seconds_count``,
and the pod-level ``adv_*`` series per pod, equal the ground truth exactly.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from retina_exporter.lab import traffic
from retina_exporter.lab.agent_process import AgentProcess

from tests.test_metrics_lab import lab, scrape, total  # noqa: F401 - lab: the module fixture (2 pods, inventory)

N_OK, N_RESET, N_TIMEOUT = 4, 3, 2
DROPPED_PORT, CLOSED_PORT, LISTEN_PORT = 5611, 5612, 5613
NFT_TABLE = "rxtest_tcpconn"

# Connect with a deadline; the kernel retransmits the SYN meanwhile (1 s, then 3 s): "timeout" when no answer.
_CONNECT = r"""
import json, socket, sys
src, dst, port, wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET); s.bind((src, 0)); s.settimeout(wait)
try:
    s.connect((dst, port)); out = "ok"
except socket.timeout:
    out = "timeout"
except ConnectionRefusedError:
    out = "refused"
print(json.dumps({"result": out, "sport": s.getsockname()[1]}))
"""


@pytest.fixture
def syn_drop(lab):
    """Pod 1 drops SYNs to DROPPED_PORT (a listener that never answers)."""
    p1 = lab.pods[1]
    lab.run(p1, ["nft", f"add table inet {NFT_TABLE}"])
    try:
        lab.run(p1, ["nft", f"add chain inet {NFT_TABLE} in {{ type filter hook input priority 0 ; }}"])
        lab.run(p1, ["nft", f"add rule inet {NFT_TABLE} in tcp dport {DROPPED_PORT} tcp flags & (syn|ack) == syn "
                            "drop"])
        yield
    finally:
        lab.run(p1, ["nft", f"delete table inet {NFT_TABLE}"], check=False)


def connect(lab, client, server, port: int, wait: float, ipv6: bool) -> str:
    p = lab.run(client, [sys.executable, "-c", _CONNECT, client.ip(ipv6), server.ip(ipv6), str(port), str(wait)],
                timeout=wait + 20)
    return json.loads(p.stdout.strip().splitlines()[-1])["result"]


def sweeps(agent) -> int:
    status, body = agent.get("/debug/plugins")
    assert status == 200
    return int(json.loads(body)["packetparser"]["sweeps"])


def read(agent) -> dict:
    m = scrape(agent)
    out = {
        "node_reset": total(m["networkobservability_tcp_failed_connections"], reason="reset"),
        "node_timeout": total(m["networkobservability_tcp_failed_connections"], reason="timeout"),
        "node_connects": total(m["networkobservability_tcp_connect_latency_seconds_count"]),
        "node_inf": total(m["networkobservability_tcp_connect_latency_seconds_bucket"], le="+Inf"),
    }
    for pod in ("pod-0", "pod-1"):
        out[f"{pod}_reset"] = total(m["networkobservability_adv_tcp_failed_connections"], podname=pod,
                                    reason="reset")
        out[f"{pod}_timeout"] = total(m["networkobservability_adv_tcp_failed_connections"], podname=pod,
                                      reason="timeout")
        out[f"{pod}_connects"] = total(m["networkobservability_adv_tcp_connect_latency_seconds_count"], podname=pod)
    return {k: int(v) for k, v in out.items()}


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_connect_latency_and_failures_are_exact_per_reason_and_pod(lab, syn_drop, ipv6):
    agent = AgentProcess(lab.node_ns, {
        "enablePodLevel": True,
        "dataAggregationLevel": "high",
        "conntrackReportInterval": "1s",
        "enrichment": {"source": "inventory", "inventoryFile": str(lab.inventory_path)},
        "hostInterfaces": [lab.uplink],
        "nodeName": "node",
        "tcpMetrics": {"connectTimeout": "1s"},
        "metricsConfiguration": {"contextOptions": [
            {"metricName": "tcp_connect_latency_seconds", "sourceLabels": ["podname"]},
            {"metricName": "tcp_failed_connections", "sourceLabels": ["podname"]},
        ]},
    })
    try:
        agent.start()
        p0, p1 = lab.pods
        base = read(agent)
        assert base["node_reset"] == base["node_timeout"] == base["node_connects"] == 0
        for _ in range(N_OK):
            traffic.tcp_transfer(lab, p0, p1, nbytes=0, port=LISTEN_PORT, ipv6=ipv6)
        traffic.tcp_transfer(lab, p1, p0, nbytes=0, port=LISTEN_PORT, ipv6=ipv6)
        for _ in range(N_RESET):
            assert connect(lab, p0, p1, CLOSED_PORT, 5.0, ipv6) == "refused"
        for _ in range(N_TIMEOUT):
            assert connect(lab, p0, p1, DROPPED_PORT, 2.5, ipv6) == "timeout"  # SYN at 0 s and 1 s: one attempt

        want = {"node_reset": N_RESET, "node_timeout": N_TIMEOUT, "node_connects": N_OK + 1, "node_inf": N_OK + 1,
                "pod-0_reset": N_RESET, "pod-0_timeout": N_TIMEOUT, "pod-0_connects": N_OK,
                "pod-1_reset": 0, "pod-1_timeout": 0, "pod-1_connects": 1}
        deadline = time.monotonic() + 20
        got = read(agent)
        while got != want and time.monotonic() < deadline:
            time.sleep(0.3)
            got = read(agent)
        assert got == want
        # Settled attempts stay settled: no second count after three more sweeps.
        target = sweeps(agent) + 3
        deadline = time.monotonic() + 20
        while sweeps(agent) < target and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sweeps(agent) >= target
        assert read(agent) == want
        # Every connect latency is a real, positive sample in the 1 s bucket on this idle bridge (le as prometheus_client writes it).
        m = scrape(agent)
        assert total(m["networkobservability_tcp_connect_latency_seconds_bucket"], le="1.0") == N_OK + 1
        assert 0 < total(m["networkobservability_tcp_connect_latency_seconds_sum"]) < N_OK + 1
        # The timeouts are events, not flows: every flow to the dropped port is one of its SYNs.
        dropped = [f for f in agent.flows(4095) if f.get("l4", {}).get("TCP", {}).get("destination_port") ==
                   DROPPED_PORT]
        assert dropped and all(f["l4"]["TCP"].get("flags", {}).get("SYN") for f in dropped), dropped
    finally:
        agent.close()
