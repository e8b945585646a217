"""Hubble end to end: the real agent in lab nodes with packetparser, an inventory and `hubble.enabled`, real traffic,
and Hubble clients on the agents' UNIX sockets — `observe` for a known TCP transfer shows the pods, ports and
identities; the file export writes the allowed flows; Relay-style merging by time across two nodes; 50 concurrent
filtered followers leave the metrics pipeline without loss; Peer and GetNodes name each node."""

from __future__ import annotations

import io
import json
import threading
import time

import grpc
import pytest

from retina_core.proto import observer_pb2, observer_pb2_grpc, peer_pb2, peer_pb2_grpc
from retina_exporter.hubble import client
from retina_exporter.hubble.filters import FilterBuilder
from retina_exporter.lab import traffic
from retina_exporter.lab.agent_process import AgentProcess
from retina_exporter.lab.topology import Lab
from tests.support.kube_fixtures import wait_for

PORT = 5401


def hubble_config(lab: Lab, sock, node: str, **hubble) -> dict:
    return {
        "enablePodLevel": True,
        "dataAggregationLevel": "high",
        "conntrackReportInterval": "1s",
        "enrichment": {"source": "inventory", "inventoryFile": str(lab.inventory_path)},
        "hostInterfaces": [lab.uplink],
        "nodeName": node,
        "metricsConfiguration": {"contextOptions": [{"metricName": "forward_count", "sourceLabels": ["podname"]}]},
        "hubble": {"enabled": True, "socketPath": str(sock), **hubble},
    }


@pytest.fixture(scope="module")
def node_a(tmp_path_factory):
    d = tmp_path_factory.mktemp("hubble-a")
    with Lab(pods=2) as lab:
        lab.inventory_path = lab.write_inventory(d / "inventory.yaml")
        cfg = hubble_config(lab, d / "hubble.sock", "node-a",
                            export={"filePath": str(d / "export" / "flows.json"),
                                    "allowList": [{"source_pod": ["lab/pod-0"]}]})
        agent = AgentProcess(lab.node_ns, cfg, port=10111)
        try:
            agent.start()
            yield lab, agent, f"unix://{d / 'hubble.sock'}", d / "export" / "flows.json"
        finally:
            agent.close()


def observe(server, *flags) -> list[str]:
    out, err = io.StringIO(), io.StringIO()
    rc = client.main_observe(["--server", server, *flags], out, err)
    assert rc == 0, err.getvalue()
    return out.getvalue().splitlines()


def test_observe_shows_a_known_tcp_transfer_with_pod_names(node_a):
    lab, agent, sock, _ = node_a
    p0, p1 = lab.pods
    res = traffic.tcp_transfer(lab, p0, p1, nbytes=60_000, port=PORT)
    cport = res.client_port

    def conn_lines():
        return [ln for ln in observe(sock, "--all", "--from-pod", "lab/pod-0", "--to-port", str(PORT))
                if f":{cport} " in ln]

    lines = wait_for(lambda: [ln for ln in conn_lines() if "FIN" in ln] and conn_lines(), timeout_s=20,
                     what="the connection's flows up to its FIN")
    ident = {p.name: None for p in lab.pods}
    for ln in lines:
        # time [node]: lab/pod-0:<cport> (ID:n) -> lab/pod-1:5401 (ID:m) from-endpoint|to-endpoint FORWARDED (...)
        head, _, summary = ln.partition(" (TCP Flags: ")
        words = head.split()
        assert words[3] == "[node-a]:" and words[4] == f"lab/pod-0:{cport}" and words[6] == "->"
        assert words[7] == f"lab/pod-1:{PORT}" and words[-1] == "FORWARDED"
        assert words[5].startswith("(ID:") and words[8].startswith("(ID:")
        ident["pod-0"], ident["pod-1"] = words[5], words[8]
        assert summary.endswith(")")
    assert any(ln.endswith("(TCP Flags: SYN)") for ln in lines)
    # Replies come the other way, from pod-1's port, marked as replies.
    replies = [ln for ln in observe(sock, "--all", "--from-pod", "lab/pod-1", "--from-port", str(PORT))
               if f":{cport}" in ln]
    assert replies and all(f"lab/pod-0:{cport} {ident['pod-0']} <- lab/pod-1:{PORT} {ident['pod-1']}" in ln
                           for ln in replies)
    # The same flows as protojson carry the node, the time and Cilium-form labels.
    (doc, *_) = [json.loads(ln) for ln in observe(sock, "--all", "--from-port", str(cport), "-o", "json")]
    flow = doc["flow"]
    assert doc["node_name"] == flow["node_name"] == "node-a" and doc["time"] == flow["time"]
    assert flow["source"]["pod_name"] == "pod-0" and flow["source"]["namespace"] == "lab"
    assert "k8s:io.kubernetes.pod.namespace=lab" in flow["source"]["labels"]
    assert flow["source"]["workloads"] and flow["destination"]["pod_name"] == "pod-1"


def test_status_nodes_and_peer(node_a):
    lab, agent, sock, _ = node_a
    out = io.StringIO()
    assert client.main_status(["--server", sock], out, io.StringIO()) == 0
    assert out.getvalue().startswith(f"Healthcheck (via {sock}): Ok\nCurrent/Max Flows: ")
    ch = grpc.insecure_channel(sock)
    try:
        (node,) = observer_pb2_grpc.ObserverStub(ch).GetNodes(observer_pb2.GetNodesRequest(), timeout=5).nodes
        assert node.name == "node-a" and node.max_flows == 4095
        call = peer_pb2_grpc.PeerStub(ch).Notify(peer_pb2.NotifyRequest())
        first = next(call)
        assert (first.name, first.type) == ("node-a", peer_pb2.PEER_ADDED)
        call.cancel()
    finally:
        ch.close()


def test_export_writes_the_allowed_flows(node_a):
    lab, agent, sock, path = node_a
    p0, p1 = lab.pods
    res = traffic.tcp_transfer(lab, p0, p1, nbytes=20_000, port=PORT + 1)
    traffic.udp_burst(lab, p1, p0, count=5, payload_size=20, dport=9411)  # pod-1's flows are not allowed

    def exported():
        if not path.exists():
            return []
        return [json.loads(ln) for ln in path.read_text().splitlines()]

    docs = wait_for(lambda: [d for d in exported() if d["flow"].get("l4", {}).get("TCP", {}).get("source_port")
                             == res.client_port] and exported(), timeout_s=20, what="the transfer exported")
    assert docs and all(d["flow"]["source"]["pod_name"] == "pod-0" for d in docs)
    assert all(d["node_name"] == "node-a" and d["time"] == d["flow"]["time"] for d in docs)
    status, body = agent.get("/debug/hubble")
    assert status == 200 and json.loads(body)["export"]["written"] >= len(docs)


def test_fifty_filtered_followers_leave_the_pipeline_without_loss(node_a):
    lab, agent, sock, _ = node_a
    p0, p1 = lab.pods
    channels, calls, got = [], [], [[] for _ in range(50)]

    def follow(i: int) -> None:
        try:
            for resp in calls[i]:
                if resp.HasField("flow"):
                    got[i].append(resp.flow)
        except grpc.RpcError:
            pass

    threads = []
    for i in range(50):
        ch = grpc.insecure_channel(sock)
        channels.append(ch)
        builder = FilterBuilder()
        builder.from_pod("lab/pod-0" if i % 2 == 0 else "lab/pod-1")
        wl, bl = builder.build()
        calls.append(observer_pb2_grpc.ObserverStub(ch).GetFlows(
            observer_pb2.GetFlowsRequest(follow=True, whitelist=wl, blacklist=bl)))
        threads.append(threading.Thread(target=follow, args=(i,), daemon=True))
        threads[-1].start()
    try:
        wait_for(lambda: json.loads(agent.get("/debug/hubble")[1])["streams"] >= 50, timeout_s=20,
                 what="50 follow streams open")
        for k in range(3):
            traffic.tcp_transfer(lab, p0, p1, nbytes=200_000, port=PORT + 10 + k)
            traffic.tcp_transfer(lab, p1, p0, nbytes=100_000, port=PORT + 20 + k)
        wait_for(lambda: all(got), timeout_s=20, what="every follower got its flows")
        for i, flows in enumerate(got):
            want = "pod-0" if i % 2 == 0 else "pod-1"
            assert all(f.source.pod_name == want for f in flows), i
    finally:
        for c in calls:
            c.cancel()
        for ch in channels:
            ch.close()
    # The metrics module and the enricher lost nothing (a slow Hubble reader loses only its own flows).
    status, body = agent.get("/metrics")
    lost = [ln for ln in body.decode().splitlines() if ln.startswith("controlplane_networkobservability_lost_events_"
                                                                     "counter{")
            and ('type="buffered_channel"' in ln or 'type="enricher_ring"' in ln)]
    assert all(ln.endswith(" 0") for ln in lost), lost


def test_relay_style_merge_by_time_across_two_nodes(node_a, tmp_path):
    lab_a, agent_a, sock_a, _ = node_a
    with Lab(pods=2) as lab_b:
        lab_b.inventory_path = lab_b.write_inventory(tmp_path / "inventory.yaml")
        agent_b = AgentProcess(lab_b.node_ns, hubble_config(lab_b, tmp_path / "hubble.sock", "node-b"), port=10112)
        try:
            agent_b.start()
            sock_b = f"unix://{tmp_path / 'hubble.sock'}"
            for lab in (lab_a, lab_b, lab_a):
                traffic.tcp_transfer(lab, lab.pods[0], lab.pods[1], nbytes=10_000, port=PORT + 30)
            def merged():
                return [json.loads(ln) for ln in observe(sock_a, "--server", sock_b, "--all", "--port",
                                                         str(PORT + 30), "-o", "json")]
            docs = wait_for(lambda: (d := merged()) and {x["node_name"] for x in d} == {"node-a", "node-b"} and d,
                            timeout_s=20, what="flows of both nodes")
            stamps = [d["time"] for d in docs]
            assert stamps == sorted(stamps)  # one stream, ordered by time (RFC 3339, same length and zone)
            for d in docs:
                assert d["flow"]["node_name"] == d["node_name"]
            both = observe(sock_a, "--server", sock_b, "--last", "3", "--port", str(PORT + 30))
            assert len(both) == 6  # --last N is per node, as with Relay
        finally:
            agent_b.close()
