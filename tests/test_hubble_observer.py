"""The Hubble server on a ring of known records, through real gRPC clients: GetFlows' number/first/follow/since/
until semantics, LostEvent, filters and field masks, invalid requests, ServerStatus/GetNodes/GetNamespaces,
health, reflection, Peer, TLS and mTLS (certificates re-read when they change), and our `observe`/`status`/`list`
clients."""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from retina_core.identity import Identity
from retina_core.proto import flow_pb2, observer_pb2, observer_pb2_grpc, peer_pb2, peer_pb2_grpc
from retina_core.record import (DIR_EGRESS, OBS_FROM_ENDPOINT, OBS_TO_ENDPOINT, TCP_ACK, TCP_SYN,
                                VERDICT_DROPPED, FlowRecord)
from retina_core.ring import Ring
from retina_exporter.hubble import client
from retina_exporter.hubble.config import HubbleConfig
from retina_exporter.hubble.observer import ALL_FLOWS
from retina_exporter.hubble.server import HEALTH_SERVICE, HubbleServer
from tests.support.kube_fixtures import wait_for
from tests.support.otlp_receiver import make_tls_files

NODE = "node-a"
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in ns
WEB = Identity("pod", "shop", "web-1", ("app=web",), (("Deployment", "web"),), node_name=NODE, ip="10.0.0.5")
DB = Identity("pod", "db", "db-0", ("app=db",), (("StatefulSet", "db"),), node_name=NODE, ip="10.0.0.6")


def rec(i: int, *, src=WEB, dst=DB, port=5432, verdict=1, reply=False) -> FlowRecord:
    """Record number ``i`` at T0 + i ms: TCP from web-1 to db-0 (or as given)."""
    r = FlowRecord(T0 + i * 1_000_000, 4, socket.inet_aton(src.ip), socket.inet_aton(dst.ip), 6, 40000 + i, port,
                   TCP_ACK if i % 2 else TCP_SYN, obs_point=OBS_FROM_ENDPOINT if i % 3 else OBS_TO_ENDPOINT,
                   direction=DIR_EGRESS, is_reply=reply, ifindex=4, ifname="vweb", packets=1, bytes=100,
                   packet_bytes=100, node_name=NODE, verdict=verdict,
                   drop_reason=3 if verdict == VERDICT_DROPPED else 0,
                   drop_reason_name="NO_SOCKET" if verdict == VERDICT_DROPPED else "")
    r.source, r.destination = src, dst
    return r


@pytest.fixture
def server(tmp_path):
    """A server on a fresh ring (capacity 63) over a UNIX socket and TCP; yields (server, ring, stubs)."""
    ring = Ring(63)
    ready = threading.Event()
    cfg = HubbleConfig(enabled=True, listen_address="127.0.0.1:0", socket_path=str(tmp_path / "hubble.sock"))
    peers = {NODE: "127.0.0.1:4244"}
    srv = HubbleServer(cfg, ring, NODE, "9.9.9", ready=ready.is_set, peers=lambda: dict(peers))
    srv.start()
    ch = grpc.insecure_channel(f"unix://{tmp_path / 'hubble.sock'}")
    try:
        yield srv, ring, observer_pb2_grpc.ObserverStub(ch), ch, ready, peers
    finally:
        ch.close()
        srv.stop()


def flows(stub, **req) -> list:
    return list(stub.GetFlows(observer_pb2.GetFlowsRequest(**req), timeout=10))


def ports(resps) -> list[int]:
    return [r.flow.l4.TCP.source_port - 40000 for r in resps if r.HasField("flow")]


def test_number_first_all_since_until(server):
    srv, ring, stub, *_ = server
    ring.write_batch([rec(i) for i in range(40)])
    assert ports(flows(stub, number=5)) == [35, 36, 37, 38, 39]  # the newest 5, oldest first
    assert ports(flows(stub, number=5, first=True)) == [0, 1, 2, 3, 4]
    assert ports(flows(stub, number=ALL_FLOWS)) == list(range(40))
    assert ports(flows(stub)) == list(range(40))  # number 0 without follow: everything
    since = flow_pb2.Flow().time.__class__(seconds=T0 // 10**9, nanos=10_000_000)  # record 10
    until = flow_pb2.Flow().time.__class__(seconds=T0 // 10**9, nanos=20_000_000)  # record 20
    assert ports(flows(stub, since=since)) == list(range(10, 40))
    assert ports(flows(stub, since=since, until=until)) == list(range(10, 21))
    assert ports(flows(stub, since=since, number=3)) == [10, 11, 12]  # the first 3 since
    # every response carries the flow's own time and node name (Relay merges by time)
    for r in flows(stub, number=3):
        assert r.time == r.flow.time and r.node_name == NODE == r.flow.node_name


def test_number_counts_matching_flows_only(server):
    srv, ring, stub, *_ = server
    ring.write_batch([rec(i, port=53 if i % 4 == 0 else 5432) for i in range(40)])
    wl = [flow_pb2.FlowFilter(destination_port=["53"])]
    assert ports(flows(stub, number=3, whitelist=wl)) == [28, 32, 36]
    assert ports(flows(stub, number=3, first=True, whitelist=wl)) == [0, 4, 8]
    assert len(flows(stub, number=ALL_FLOWS, blacklist=wl)) == 30


def test_follow_streams_new_flows_after_the_history(server):
    srv, ring, stub, *_ = server
    ring.write_batch([rec(i) for i in range(10)])
    call = stub.GetFlows(observer_pb2.GetFlowsRequest(number=2, follow=True))
    got = [next(call), next(call)]
    assert ports(got) == [8, 9]
    ring.write_batch([rec(i) for i in range(10, 13)])
    assert ports([next(call) for _ in range(3)]) == [10, 11, 12]
    call.cancel()
    wait_for(lambda: srv.observer.streams == 0, what="the follower's stream closed")
    # follow without number starts now: nothing of the history
    call = stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True))
    wait_for(lambda: srv.observer.streams == 1, what="the follower's stream opened")
    ring.write(rec(50))
    assert ports([next(call)]) == [50]
    call.cancel()


def test_overtaken_follower_gets_an_exact_lost_event(server):
    srv, ring, stub, *_ = server
    call = stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True))
    wait_for(lambda: srv.observer.streams == 1, what="the follower's stream opened")
    ring.write_batch([rec(i) for i in range(200)])  # > 3x the capacity at once: the reader is overtaken
    lost = 0
    seen = []
    while len(seen) + lost < 200:
        r = next(call)
        if r.HasField("lost_events"):
            assert r.lost_events.source == flow_pb2.HUBBLE_RING_BUFFER and r.node_name == NODE
            lost += r.lost_events.num_events_lost
        else:
            seen.append(r)
    call.cancel()
    assert lost == 200 - 63 and ports(seen) == list(range(137, 200))


@pytest.mark.parametrize("req,words", [
    ({"first": True, "follow": True}, "first and follow"),
    ({"whitelist": [flow_pb2.FlowFilter(source_ip=["10.0.0.300"])]}, "source_ip"),
    ({"blacklist": [flow_pb2.FlowFilter(dns_query=["("])]}, "dns_query"),
    ({"whitelist": [flow_pb2.FlowFilter(source_pod=[""])]}, "source_pod"),
    ({"whitelist": [flow_pb2.FlowFilter(destination_port=["http"])]}, "destination_port"),
    ({"field_mask": {"paths": ["source.nope"]}}, "field_mask"),
])
def test_invalid_requests_name_the_field(server, req, words):
    srv, ring, stub, *_ = server
    ring.write(rec(1))
    with pytest.raises(grpc.RpcError) as info:
        flows(stub, number=1, **req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in info.value.details()


def test_field_mask_is_honoured(server):
    srv, ring, stub, *_ = server
    ring.write(rec(1))
    (r,) = flows(stub, number=1, field_mask={"paths": ["source.pod_name", "verdict"]})
    assert r.flow.source.pod_name == "web-1" and r.flow.verdict == flow_pb2.FORWARDED
    assert not r.flow.HasField("IP") and not r.flow.destination.pod_name and r.flow.Summary == ""
    assert r.time.seconds == T0 // 10**9  # the response keeps the time even when the mask drops it


def test_status_nodes_namespaces_and_empty_event_streams(server):
    srv, ring, stub, *_ = server
    ring.write_batch([rec(i) for i in range(100)])
    st = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
    assert (st.num_flows, st.max_flows, st.seen_flows, st.version) == (63, 63, 100, "9.9.9")
    assert st.uptime_ns > 0 and not st.HasField("num_connected_nodes")
    (node,) = stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=5).nodes
    assert (node.name, node.address, node.num_flows, node.max_flows, node.seen_flows) == \
        (NODE, "127.0.0.1:" + str(srv.tcp_port), 63, 63, 100)
    wait_for(lambda: stub.GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=5).namespaces,
             what="namespaces seen")
    names = [(n.cluster, n.namespace) for n in stub.GetNamespaces(observer_pb2.GetNamespacesRequest()).namespaces]
    assert names == [("", "db"), ("", "shop")]
    assert list(stub.GetAgentEvents(observer_pb2.GetAgentEventsRequest(number=5), timeout=5)) == []
    assert list(stub.GetDebugEvents(observer_pb2.GetDebugEventsRequest(number=5), timeout=5)) == []


def test_health_follows_readiness_and_reflection_lists_the_services(server):
    srv, ring, stub, ch, ready, _ = server
    health = health_pb2_grpc.HealthStub(ch)
    check = health_pb2.HealthCheckRequest(service=HEALTH_SERVICE)
    assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
    ready.set()
    wait_for(lambda: health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.SERVING,
             what="SERVING once ready")
    ready.clear()
    wait_for(lambda: health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING,
             what="NOT_SERVING when not ready")
    stub_r = reflection_pb2_grpc.ServerReflectionStub(ch)
    (resp,) = list(stub_r.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                timeout=5))
    names = {s.name for s in resp.list_services_response.service}
    assert {"observer.Observer", "peer.Peer", "grpc.health.v1.Health"} <= names


def test_peer_notify_announces_nodes_and_changes(server):
    srv, ring, stub, ch, ready, peers = server
    call = peer_pb2_grpc.PeerStub(ch).Notify(peer_pb2.NotifyRequest())
    first = next(call)
    assert (first.name, first.address, first.type, first.HasField("tls")) == \
        (NODE, "127.0.0.1:4244", peer_pb2.PEER_ADDED, False)
    peers["node-b"] = "10.0.0.2:4244"
    b = next(call)
    assert (b.name, b.address, b.type) == ("node-b", "10.0.0.2:4244", peer_pb2.PEER_ADDED)
    peers["node-b"] = "10.0.0.3:4244"
    assert (next(call).type, ) == (peer_pb2.PEER_UPDATED,)
    del peers["node-b"]
    gone = next(call)
    assert (gone.name, gone.type) == ("node-b", peer_pb2.PEER_DELETED)
    call.cancel()


def _tls_server(tmp_path, ring, mtls: bool) -> tuple[HubbleServer, dict]:
    files = make_tls_files(tmp_path / "tls")
    cfg = HubbleConfig(enabled=True, listen_address="127.0.0.1:0", socket_path="",
                       tls_cert_file=str(files["server_cert"]), tls_key_file=str(files["server_key"]),
                       tls_client_ca_files=(str(files["ca_cert"]),) if mtls else ())
    srv = HubbleServer(cfg, ring, NODE, "9.9.9")
    srv.start()
    return srv, files


def _tls_channel(port: int, files: dict, client_cert: bool) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(files["ca_cert"]).read_bytes(),
        private_key=Path(files["client_key"]).read_bytes() if client_cert else None,
        certificate_chain=Path(files["client_cert"]).read_bytes() if client_cert else None)
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def test_tls_and_mtls(tmp_path):
    ring = Ring(63)
    ring.write(rec(1))
    srv, files = _tls_server(tmp_path / "tls1", ring, mtls=False)
    try:
        ch = _tls_channel(srv.tcp_port, files, client_cert=False)
        assert ports(flows(observer_pb2_grpc.ObserverStub(ch), number=1)) == [1]
        ch.close()
        plain = grpc.insecure_channel(f"127.0.0.1:{srv.tcp_port}")
        with pytest.raises(grpc.RpcError):
            flows(observer_pb2_grpc.ObserverStub(plain), number=1)
        plain.close()
        # the server certificate is re-read when its files change: the new one is served to new connections
        other = make_tls_files(tmp_path / "rotated")
        shutil.copy(other["server_cert"], files["server_cert"])
        shutil.copy(other["server_key"], files["server_key"])
        ch = _tls_channel(srv.tcp_port, other, client_cert=False)
        assert ports(flows(observer_pb2_grpc.ObserverStub(ch), number=1)) == [1]
        ch.close()
        assert srv.status()["tls_reloads"] == 1
    finally:
        srv.stop()
    srv, files = _tls_server(tmp_path / "tls2", ring, mtls=True)
    try:
        ch = _tls_channel(srv.tcp_port, files, client_cert=True)
        assert ports(flows(observer_pb2_grpc.ObserverStub(ch), number=1)) == [1]
        ch.close()
        ch = _tls_channel(srv.tcp_port, files, client_cert=False)  # no client certificate: refused
        with pytest.raises(grpc.RpcError) as info:
            flows(observer_pb2_grpc.ObserverStub(ch), number=1)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        ch.close()
    finally:
        srv.stop()


def test_observe_status_and_list_clients(server, tmp_path):
    srv, ring, stub, ch, ready, _ = server
    sock = f"unix://{tmp_path / 'hubble.sock'}"
    ring.write_batch([rec(i, port=53 if i == 7 else 5432) for i in range(10)])
    ring.write(rec(10, verdict=VERDICT_DROPPED))
    out, err = io.StringIO(), io.StringIO()
    assert client.main_observe(["--server", sock, "--last", "2"], out, err) == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("shop/web-1:40009 (ID:{}) -> db/db-0:5432 (ID:{}) to-endpoint FORWARDED (TCP Flags: "
                             "ACK)".format(WEB.identity, DB.identity)) and f" [{NODE}]: " in lines[0]
    assert lines[1].endswith(" Unknown reason DROPPED (TCP Flags: SYN)")
    out = io.StringIO()
    assert client.main_observe(["--server", sock, "--all", "--to-port", "53", "-o", "jsonpb"], out, err) == 0
    (line,) = out.getvalue().splitlines()
    assert '"destination_port":53' in line and '"node_name":"node-a"' in line
    out = io.StringIO()
    assert client.main_observe(["--server", sock, "--all", "--not", "--verdict", "FORWARDED"], out, err) == 0
    assert len(out.getvalue().splitlines()) == 1 and "DROPPED" in out.getvalue()
    out = io.StringIO()
    assert client.main_observe(["--server", sock, "--all", "--from-ip", "10.0.0.300"], out, err) == 2
    assert "from-ip" in err.getvalue() or "source_ip" in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert client.main_status(["--server", sock], out, err) == 1 and "Unavailable" in err.getvalue()
    ready.set()
    wait_for(lambda: client.main_status(["--server", sock], io.StringIO(), io.StringIO()) == 0, what="ready")
    out = io.StringIO()
    assert client.main_status(["--server", sock], out, io.StringIO()) == 0
    assert out.getvalue().splitlines()[:2] == [f"Healthcheck (via {sock}): Ok", "Current/Max Flows: 11/63 (17.46%)"]
    out = io.StringIO()
    assert client.main_list(["nodes", "--server", sock], out, io.StringIO()) == 0
    rows = out.getvalue().splitlines()
    assert rows[0].split() == ["NAME", "STATUS", "AGE", "FLOWS", "VERSION", "TLS"]
    assert rows[1].split()[:2] == [NODE, "Connected"] and rows[1].split()[3:] == ["11/63", "9.9.9", "Disabled"]
    assert client.main_observe(["--server", "unix:///nonexistent.sock", "--timeout", "0.5"], io.StringIO(),
                               err := io.StringIO()) == 1 and "cannot connect" in err.getvalue()


def test_stop_ends_followers_and_removes_the_socket(tmp_path):
    ring = Ring(63)
    cfg = HubbleConfig(enabled=True, socket_path=str(tmp_path / "s" / "hubble.sock"))
    srv = HubbleServer(cfg, ring, NODE, "1")
    srv.start()
    ch = grpc.insecure_channel(f"unix://{tmp_path / 's' / 'hubble.sock'}")
    call = observer_pb2_grpc.ObserverStub(ch).GetFlows(observer_pb2.GetFlowsRequest(follow=True))
    wait_for(lambda: srv.observer.streams == 1, what="follower open")
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 5
    with pytest.raises(grpc.RpcError):
        for _ in call:
            pass
    ch.close()
    assert not (tmp_path / "s" / "hubble.sock").exists()


def test_peers_from_identities_lists_every_node_once():
    from retina_exporter.hubble.peer import peers_from_identities

    view = {
        socket.inet_pton(socket.AF_INET6, "fd00::2"): Identity("node", node_name="node-b", ip="fd00::2"),
        socket.inet_aton("10.0.0.3"): Identity("node", node_name="node-b", ip="10.0.0.3"),
        socket.inet_aton("10.0.0.1"): Identity("host", node_name=NODE, ip="10.0.0.1"),
        socket.inet_aton("10.0.0.9"): Identity("node", node_name="node-c", ip="10.0.0.9"),
        socket.inet_aton("10.244.0.5"): WEB,  # a pod: not a peer
    }
    assert peers_from_identities(view, NODE, "10.0.0.1:4244", 4244) == {
        NODE: "10.0.0.1:4244", "node-b": "10.0.0.3:4244", "node-c": "10.0.0.9:4244"}
    only_v6 = {socket.inet_pton(socket.AF_INET6, "fd00::2"): Identity("node", node_name="node-b", ip="fd00::2")}
    assert peers_from_identities(only_v6, NODE, "x:1", 4244) == {NODE: "x:1", "node-b": "[fd00::2]:4244"}


def test_file_export_filters_masks_rotates_and_counts_its_losses(tmp_path):
    import json

    from retina_core.telemetry import ControlPlane
    from retina_exporter.hubble.export import LOST_REASON, LOST_TYPE, FlowFileExporter

    ring = Ring(1023)
    telemetry = ControlPlane()
    cfg = HubbleConfig(export_file_path=str(tmp_path / "out" / "flows.json"),
                       export_allow_list=('{"source_pod": ["shop/"]}',), export_deny_list=('{"verdict": ["DROPPED"]}',),
                       export_field_mask=("time", "verdict", "source.pod_name", "l4"), export_max_size_mb=1,
                       export_max_backups=2)
    exp = FlowFileExporter(cfg, ring, NODE, telemetry)
    ring.write_batch([rec(1), rec(2, src=DB, dst=WEB), rec(3, verdict=VERDICT_DROPPED)])
    exp.export(exp._reader.next_batch(100))
    lines = (tmp_path / "out" / "flows.json").read_text().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert set(doc) == {"flow", "node_name", "time"} and doc["node_name"] == NODE
    assert set(doc["flow"]) == {"time", "verdict", "source", "l4"} and doc["flow"]["source"] == {"pod_name": "web-1"}
    # Rotation at 1 MiB, 2 backups kept (~200 bytes a line: 15,000 lines are ~3 MiB).
    for _ in range(50):
        ring.write_batch([rec(i) for i in range(1, 601, 2)])
        exp.export(exp._reader.next_batch(1000))
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["flows.json", "flows.json.1", "flows.json.2"]
    assert all((tmp_path / "out" / f).stat().st_size <= 1024 * 1024 for f in files)
    # A lagging exporter loses its own flows, counted exactly; nobody else does.
    ring.write_batch([rec(1)] * 3000)  # 3000 records into a ring of 1023
    exp.export(exp._reader.next_batch(5000))
    assert exp.lost == 3000 - 1023 == telemetry.lost_total(LOST_TYPE, LOST_REASON)
    exp.stop()


def test_the_command_line_runs_the_clients(server, tmp_path, capsys):
    """`retina-exporter observe --last N` through the real entry point (its flags come first, before any
    positional argument)."""
    from retina_exporter import cli

    srv, ring, stub, *_ = server
    ring.write_batch([rec(i) for i in range(5)])
    sock = f"unix://{tmp_path / 'hubble.sock'}"
    assert cli.main(["observe", "--last", "2", "--server", sock]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split()[4] == "shop/web-1:40003"
    assert cli.main(["list", "nodes", "--server", sock]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[0] == NODE
