"""retina-operator end to end: the test API server (real Kubernetes client) -> the operator's informers and address
map -> real gRPC on 127.0.0.1 -> OperatorSource agents and their IP caches.

Identities of pods/services/nodes, changes in order, late agents, operator restarts (SHUTDOWN and crash), 410
relists, address reuse, lagging agents, an API server that is down at start, garbage, TLS, the debug endpoints.
"""

from __future__ import annotations

import threading

import grpc
import pytest

from retina_core.identity import KIND_HOST, KIND_NODE, KIND_POD, KIND_SERVICE
from retina_core.proto import ipcache_pb2, ipcache_pb2_grpc
from retina_operator.operator import TlsFiles
from tests.support.kube_fixtures import node_body, owner, run_pod, service_body, wait_for
from tests.support.otlp_receiver import make_tls_files
from tests.test_operator_support import (B, RecordingCache, agents, http_get, http_json,  # noqa: F401
                                         in_sync, kube_server, metric, operators)

NODE = "node-a"


def deployment_pod(server, deploy: str, hash_: str, pod: str, node: str, ips, labels=None):
    d = server.create("deployments", {"metadata": {"name": deploy}, "spec": {"replicas": 1}})
    rs_name = f"{deploy}-{hash_}"
    rs = server.create("replicasets", {"metadata": {"name": rs_name, "labels": {"pod-template-hash": hash_},
                                                    "ownerReferences": [owner("Deployment", deploy,
                                                                              d["metadata"]["uid"])]},
                                       "spec": {}})
    lab = {**(labels or {}), "pod-template-hash": hash_}
    return run_pod(server, pod, node, ips, lab, [owner("ReplicaSet", rs_name, rs["metadata"]["uid"])])


def build_cluster(server) -> None:
    server.create("nodes", node_body(NODE, ["192.168.0.1", "fd00::1"], zone="zone-1"))
    server.create("nodes", node_body("node-b", ["192.168.0.2"], zone="zone-2"))
    server.create("namespaces", {"metadata": {"name": "watched", "annotations": {"retina.sh": "observe"}}})
    deployment_pod(server, "web", "7d9f", "web-7d9f-abcde", NODE, ["10.0.0.5", "fd00:10::5"], {"app": "web"})
    run_pod(server, "remote", "node-b", ["10.0.1.5"], {"app": "web"})
    run_pod(server, "hostnet", NODE, ["192.168.0.1"], host_network=True)
    cj = server.create("cronjobs", {"metadata": {"name": "nightly"}, "spec": {}})
    job = server.create("jobs", {"metadata": {"name": "nightly-29000000", "ownerReferences": [
        owner("CronJob", "nightly", cj["metadata"]["uid"], "batch/v1")]}, "spec": {}})
    run_pod(server, "nightly-29000000-xyz", "node-b", ["10.0.1.6"],
            owners=[owner("Job", "nightly-29000000", job["metadata"]["uid"], "batch/v1")])
    ds = server.create("daemonsets", {"metadata": {"name": "agent"}, "spec": {}})
    run_pod(server, "agent-q1", NODE, ["10.0.0.7"], owners=[owner("DaemonSet", "agent", ds["metadata"]["uid"])])
    run_pod(server, "in-watched", NODE, ["10.0.0.8"], {"b": "1", "a": "2"}, namespace="watched")
    server.create("pods", {"metadata": {"name": "opted-in", "namespace": "default",
                                        "annotations": {"retina.sh": "observe"}},
                           "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "x"}]}})
    server.patch("pods", "opted-in", {"status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.9"}]}},
                 namespace="default", status=True)
    server.create("services", service_body("web", {"app": "web"}, cluster_ip="10.96.1.1"))
    server.create("services", service_body("web-headless", {"app": "web"}, cluster_ip="None"))
    server.create("services", service_body("lb", {"app": "none"}, cluster_ip="10.96.1.2", type="LoadBalancer",
                                           externalIPs=["198.51.100.7"]))
    server.patch("services", "lb", {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"},
                                                                            {"hostname": "lb.example"}]}}},
                 namespace="default", status=True)


# -- identities, snapshot, deltas --------------------------------------------------------------------------------


def test_snapshot_identities_and_debug_endpoints(kube_server, operators, agents):
    build_cluster(kube_server)
    op = operators()
    src, cache = agents(op)
    st = src.status()
    assert st["loaded"] and st["synced"] and st["error"] is None and cache.loaded
    assert cache.writes[0][0] == "publish" and len(cache.writes) == 1  # the snapshot, published once
    web = cache.get(B("10.0.0.5"))
    assert web.kind == KIND_POD and (web.namespace, web.pod_name) == ("default", "web-7d9f-abcde")
    assert web.labels == ("app=web", "pod-template-hash=7d9f")
    assert web.workloads == (("Deployment", "web"), ("ReplicaSet", "web-7d9f"))
    assert (web.service, web.node_name, web.zone, web.ip) == ("web", NODE, "zone-1", "10.0.0.5")
    assert cache.get(B("fd00:10::5")).pod_name == "web-7d9f-abcde"  # IPv6 too
    remote = cache.get(B("10.0.1.5"))  # cluster-wide: other nodes' pods too
    assert (remote.pod_name, remote.zone, remote.service) == ("remote", "zone-2", "web")
    job = cache.get(B("10.0.1.6"))
    assert job.workloads == (("CronJob", "nightly"), ("Job", "nightly-29000000"))
    assert cache.get(B("10.0.0.7")).workloads == (("DaemonSet", "agent"),)
    assert cache.get(B("10.0.0.8")).labels == ("a=2", "b=1")
    host = cache.get(B("192.168.0.1"))  # the hostNetwork pod is skipped; our own node is "host"
    assert host.kind == KIND_HOST and host.node_name == NODE and host.zone == "zone-1"
    assert cache.get(B("fd00::1")).kind == KIND_HOST
    other = cache.get(B("192.168.0.2"))
    assert other.kind == KIND_NODE and other.zone == "zone-2"
    for ip in ("10.96.1.1", "10.96.1.2", "203.0.113.9", "198.51.100.7", "10.96.0.1"):
        assert cache.get(B(ip)).kind == KIND_SERVICE, ip
    assert cache.get(B("10.96.1.2")).service == "lb"
    assert src.observed_ips() == {B("10.0.0.8"), B("10.0.0.9")}  # namespace annotation, pod annotation
    assert in_sync(op, cache, NODE) and len(cache) == 15  # 7 pod, 5 service, 3 node addresses

    # The operator's own view.
    assert http_get(op, "/healthz") == (200, "ok\n")
    assert http_get(op, "/readyz") == (200, "ready\n")
    dbg = http_json(op, "/debug/ipcache")
    assert dbg["ready"] and dbg["entries"] == 15
    assert dbg["ips"]["10.0.0.8"] == {"kind": "pod", "namespace": "watched", "pod_name": "in-watched",
                                      "labels": ["a=2", "b=1"], "node_name": NODE, "zone": "zone-1",
                                      "ip": "10.0.0.8", "identity": cache.get(B("10.0.0.8")).identity,
                                      "observed": True}
    one = http_json(op, "/debug/ipcache?ip=192.168.0.1")
    assert list(one["ips"]) == ["192.168.0.1"] and one["claims"][0]["owner_kind"] == "node"
    stats = http_json(op, "/debug/stats")
    assert stats["entries_by_kind"] == {"pod": 7, "service": 5, "node": 3}
    assert stats["objects"]["pods"] == 7 and stats["connected_agents"] == 1
    (agent,) = stats["agents"]
    assert agent["node"] == NODE and agent["phase"] == "live" and agent["snapshot_entries"] == 15
    assert agent["queue_depth"] == 0 and agent["queue_capacity"] == 8192
    assert set(stats["informers"]) == {"pods", "services", "nodes", "namespaces", "replicasets", "jobs"}
    code, text = http_get(op, "/metrics")
    assert code == 200
    assert metric(text, "retina_operator_connected_agents") == 1
    assert metric(text, "retina_operator_ipcache_entries", '{kind="pod"}') == 7
    assert metric(text, "retina_operator_updates_sent_total") == 16  # 15 entries + SYNC_COMPLETE
    assert metric(text, "retina_operator_informer_synced", '{informer="pods"}') == 1
    assert metric(text, "retina_operator_lagging_disconnects_total") == 0
    assert http_get(op, "/nope")[0] == 404


class RawSubscriber:
    """A bare gRPC client recording every update it receives, in order (no coalescing, unlike an agent)."""

    def __init__(self, port: int, node: str = "raw") -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stream = ipcache_pb2_grpc.IpCacheStub(self.channel).StreamUpdates(
            ipcache_pb2.IpCacheRequest(node_name=node))
        self.updates: list = []
        self.batches = 0
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for batch in self.stream:
                self.batches += 1
                self.updates.extend(batch.updates)
        except grpc.RpcError as exc:
            self.error = exc

    def of(self, ip: str) -> list:
        return [u for u in list(self.updates) if u.ip == ip]

    def close(self) -> None:
        self.stream.cancel()
        self.channel.close()
        self.thread.join(5)


def test_changes_reach_agents_in_order_and_late_agents_get_snapshot_then_deltas(kube_server, operators, agents):
    kube_server.create("nodes", node_body(NODE, ["192.168.0.1"], zone="z1"))
    op = operators()
    src, cache = agents(op)
    raw = RawSubscriber(op.grpc_port)
    try:
        wait_for(lambda: any(u.update_type == ipcache_pb2.SYNC_COMPLETE for u in raw.updates), what="raw sync")
        ip = "10.0.0.20"

        def pod_is(**want):
            return lambda: (cache.get(B(ip)) is not None
                            and all(getattr(cache.get(B(ip)), k) == v for k, v in want.items()))

        run_pod(kube_server, "p", NODE, [ip], {"v": "1"})
        wait_for(pod_is(labels=("v=1",)), what="the pod")
        for v in ("2", "3"):
            kube_server.patch("pods", "p", {"metadata": {"labels": {"v": v}}}, namespace="default")
            wait_for(pod_is(labels=(f"v={v}",)), what=f"label v={v}")
        late, late_cache = agents(op, node="node-b")  # joins now: a snapshot, then deltas
        assert late_cache.writes[0][0] == "publish" and late_cache.get(B(ip)).labels == ("v=3",)
        kube_server.create("services", service_body("svc", {"v": "3"}, cluster_ip="10.96.5.5"))
        wait_for(pod_is(service="svc"), what="the service name on the pod")
        kube_server.patch("nodes", NODE, {"metadata": {"labels": {"topology.kubernetes.io/zone": "z2"}}})
        wait_for(pod_is(zone="z2"), what="the zone change")
        kube_server.patch("services", "svc", {"spec": {"externalIPs": ["198.51.100.1"]}}, namespace="default")
        wait_for(lambda: cache.get(B("198.51.100.1")) is not None, what="the external IP")
        kube_server.delete("services", "svc", "default")
        wait_for(lambda: cache.get(B("10.96.5.5")) is None and cache.get(B("198.51.100.1")) is None,
                 what="the service delete")
        kube_server.delete("pods", "p", "default")  # graceful: terminating (same identity), then gone
        wait_for(lambda: cache.get(B(ip)) is None, what="the pod delete")
        kube_server.delete("nodes", NODE)
        wait_for(lambda: cache.get(B("192.168.0.1")) is None, what="the node delete")

        want = [(("v=1",), "", "z1"), (("v=2",), "", "z1"), (("v=3",), "", "z1"), (("v=3",), "svc", "z1"),
                (("v=3",), "svc", "z2"), (("v=3",), "", "z2"), None]
        hist = [(h.labels, h.service, h.zone) if h else None for h in cache.history(ip)]
        assert hist == want
        assert [h.service if h else None for h in cache.history("10.96.5.5")] == ["svc", None]
        assert cache.count("publish") == 1  # one snapshot, then only deltas
        # On the wire: every update, in order (agents may merge updates of one address within a batch).
        wait_for(lambda: [u.update_type for u in raw.of("192.168.0.1")] == [ipcache_pb2.UPSERT] * 2
                 + [ipcache_pb2.DELETE], what="the raw subscriber to see the node's zone change and delete")
        wire = [(tuple(u.labels), u.service_name, u.zone) if u.update_type == ipcache_pb2.UPSERT else None
                for u in raw.of(ip)]
        assert wire == want
        # The late agent saw the same changes from its snapshot on, in the same order.
        wait_for(lambda: in_sync(op, late_cache, "node-b"), what="the late agent in sync")
        late_hist = [(h.labels, h.service, h.zone) if h else None for h in late_cache.history(ip)]
        assert late_hist == want[2:]
        assert in_sync(op, cache, NODE)
        stats = http_json(op, "/debug/stats")
        assert stats["connected_agents"] == 3 and stats["deletes_total"] >= 4
    finally:
        raw.close()


def test_address_reuse_and_kinds_do_not_delete_each_other(kube_server, operators, agents):
    kube_server.kubelet_delay_s = None  # terminating pods linger, as while a kubelet is still cleaning up
    op = operators()
    src, cache = agents(op)
    x = "10.0.0.30"
    run_pod(kube_server, "old", NODE, [x], {"gen": "old"})
    wait_for(lambda: cache.get(B(x)) is not None, what="the old pod")
    kube_server.delete("pods", "old", "default")  # terminating, still reports the address
    run_pod(kube_server, "new", NODE, [x], {"gen": "new"})
    wait_for(lambda: cache.get(B(x)).pod_name == "new", what="the new pod to take the address")
    kube_server.patch("pods", "old", {"metadata": {"labels": {"gen": "old2"}}}, namespace="default")
    kube_server.delete("pods", "old", "default", grace_period_s=0)  # the old pod's delete arrives last
    wait_for(lambda: op.stats()["objects"]["pods"] == 1, what="the old pod's delete")
    assert [h.pod_name if h else None for h in cache.history(x)] == ["old", "new"]  # no stale delete, no flap

    # One address, three kinds: pod > service > node; a delete of one kind never removes another's entry.
    y = "10.0.0.77"
    kube_server.create("nodes", node_body("odd-node", [y]))
    kube_server.create("services", service_body("ext", cluster_ip="10.96.7.7", externalIPs=[y]))
    run_pod(kube_server, "p", NODE, [y])
    wait_for(lambda: cache.get(B(y)) is not None and cache.get(B(y)).kind == KIND_POD, what="pod over the others")
    assert {o[0] for o in op.state.ipmap.claims(y)} == {"pod", "service", "node"}
    seen = len(cache.history(y))
    kube_server.delete("nodes", "odd-node")
    kube_server.delete("services", "ext", "default")
    wait_for(lambda: cache.get(B("10.96.7.7")) is None and not op.state.ipmap.claims("192.168.0.1"),
             what="the service and node deletes")
    assert cache.get(B(y)).kind == KIND_POD and len(cache.history(y)) == seen  # not touched at all
    kube_server.create("services", service_body("ext2", cluster_ip="10.96.7.8", externalIPs=[y]))
    kube_server.delete("pods", "p", "default", grace_period_s=0)
    wait_for(lambda: cache.get(B(y)) is not None and cache.get(B(y)).kind == KIND_SERVICE,
             what="the service entry once the pod is gone")
    kube_server.delete("services", "ext2", "default")
    wait_for(lambda: cache.get(B(y)) is None, what="the last claim gone")
    assert in_sync(op, cache, NODE)
    # A finished pod gives its address up at once.
    kube_server.patch("pods", "new", {"status": {"phase": "Succeeded"}}, namespace="default", status=True)
    wait_for(lambda: cache.get(B(x)) is None, what="the finished pod to release the address")


def test_relist_after_410_neither_loses_nor_duplicates(kube_server, operators, agents):
    run_pod(kube_server, "stays", NODE, ["10.0.0.50"])
    run_pod(kube_server, "changes", NODE, ["10.0.0.51"], {"v": "1"})
    run_pod(kube_server, "goes", NODE, ["10.0.0.52"])
    op = operators()
    src, cache = agents(op)
    # Changes the watches never hear about (lost events), then the history is compacted and the watches drop:
    # resuming from the old resourceVersion gets 410 Gone, and only a relist can tell what happened.
    changed = kube_server.get("pods", "changes", "default")
    changed["metadata"]["labels"] = {"v": "2"}
    kube_server.store_silently("pods", changed)
    kube_server.delete_silently("pods", "goes", "default")
    comes = kube_server.get("pods", "stays", "default")
    comes["metadata"] = {"name": "comes", "namespace": "default", "labels": {"new": "1"}}
    comes["status"] = {"phase": "Running", "podIP": "10.0.0.53", "podIPs": [{"ip": "10.0.0.53"}]}
    kube_server.store_silently("pods", comes)
    kube_server.compact()
    kube_server.close_watches()
    wait_for(lambda: op.state.informers["pods"].relists_gone >= 1, what="the 410 relist")
    wait_for(lambda: cache.get(B("10.0.0.53")) is not None and cache.get(B("10.0.0.52")) is None
             and cache.get(B("10.0.0.51")).labels == ("v=2",), what="the relisted picture")
    assert [h.pod_name for h in cache.history("10.0.0.50")] == ["stays"]  # unchanged: nothing re-sent
    assert [h.labels if h else None for h in cache.history("10.0.0.51")] == [("v=1",), ("v=2",)]
    assert [h.pod_name if h else None for h in cache.history("10.0.0.52")] == ["goes", None]
    assert [h.pod_name for h in cache.history("10.0.0.53")] == ["comes"]
    assert in_sync(op, cache, NODE) and cache.count("publish") == 1
    code, text = http_get(op, "/metrics")
    assert metric(text, "retina_operator_informer_relists_total", '{informer="pods"}') >= 1


# -- operator restarts -------------------------------------------------------------------------------------------


def test_operator_restart_keeps_agent_caches_and_resyncs(kube_server, operators, agents):
    kube_server.create("nodes", node_body(NODE, ["192.168.0.1"]))
    run_pod(kube_server, "a", NODE, ["10.0.0.60"], {"v": "1"})
    run_pod(kube_server, "b", NODE, ["10.0.0.61"])
    op1 = operators()
    port = op1.grpc_port
    src, cache = agents(op1)
    src2, cache2 = agents(op1, node="node-b")
    before = dict(cache.view())

    op1.stop()  # SIGTERM path: every agent gets SHUTDOWN
    wait_for(lambda: src.status()["shutdowns"] == 1 and src2.status()["shutdowns"] == 1, what="SHUTDOWN")
    assert dict(cache.view()) == before and src.status()["loaded"] and not src.status()["synced"]
    assert "restarting (SHUTDOWN received)" in src.status()["error"]
    writes_before = len(cache.writes)

    # Changes while no operator runs.
    kube_server.patch("pods", "a", {"metadata": {"labels": {"v": "2"}}}, namespace="default")
    kube_server.delete("pods", "b", "default", grace_period_s=0)
    run_pod(kube_server, "c", NODE, ["10.0.0.62"])
    op2 = operators(port=port)
    wait_for(lambda: src.status()["syncs"] == 2 and src2.status()["syncs"] == 2, what="both agents resynced")
    assert in_sync(op2, cache, NODE) and in_sync(op2, cache2, "node-b")
    assert cache.get(B("10.0.0.60")).labels == ("v=2",) and cache.get(B("10.0.0.61")) is None
    # Replaced in one publish: the cache was never empty nor half-filled in between.
    assert [w[0] for w in cache.writes[writes_before:]] == ["publish"]

    # A crash (no SHUTDOWN): the stream just breaks; the cache stays, and catches up with the next operator.
    op2.stop(send_shutdown=False)
    wait_for(lambda: not src.status()["connected"] and src.status()["error"], what="the broken stream")
    assert src.status()["shutdowns"] == 1 and cache.get(B("10.0.0.62")) is not None
    kube_server.delete("pods", "c", "default", grace_period_s=0)
    op3 = operators(port=port)
    wait_for(lambda: src.status()["syncs"] == 3 and cache.get(B("10.0.0.62")) is None, what="the third sync")
    assert in_sync(op3, cache, NODE) and src.status()["error"] is None
    run_pod(kube_server, "d", NODE, ["10.0.0.63"])
    wait_for(lambda: cache.get(B("10.0.0.63")) is not None, what="deltas after the resync")


def test_api_server_down_at_start_then_ready(kube_server, operators, agents):
    build_cluster(kube_server)
    kube_server.set_down(True)
    op = operators()
    src, cache = agents(op, start_timeout_s=0.3)
    assert not src.status()["loaded"] and len(cache) == 0
    wait_for(lambda: op.state.informers["pods"].failures >= 2, what="retries")
    code, body = http_get(op, "/readyz")
    assert code == 503 and "informer pods not synced yet" in body and "cannot reach the API server" in body
    assert http_get(op, "/healthz")[0] == 200
    stats = http_json(op, "/debug/stats")
    assert stats["agents"][0]["phase"] == "waiting"  # held until the picture is complete, not served a partial one
    fails = op.state.informers["pods"].failures
    assert fails < 40  # backoff, not a busy loop
    kube_server.set_down(False)
    wait_for(lambda: src.status()["loaded"], what="the agent loaded once the API server is up")
    assert http_get(op, "/readyz") == (200, "ready\n")
    assert in_sync(op, cache, NODE) and cache.count("publish") == 1
    code, text = http_get(op, "/metrics")
    assert metric(text, "retina_operator_informer_errors_total", '{informer="pods"}') >= 2


def test_garbage_does_not_crash_anything(kube_server, operators, agents):
    op = operators()
    src, cache = agents(op)
    kube_server.garbage_mode(True)
    run_pod(kube_server, "during", NODE, ["10.0.0.40"])
    wait_for(lambda: "malformed" in (op.state.informers["pods"].error or ""), what="the garbage to be noticed")
    kube_server.garbage_mode(False)
    wait_for(lambda: cache.get(B("10.0.0.40")) is not None, what="the pod created during garbage")
    assert all(inf.alive() for inf in op.state.informers.values())
    # Garbage on the gRPC side: a request that is not an IpCacheRequest, and unknown methods.
    with grpc.insecure_channel(f"127.0.0.1:{op.grpc_port}") as ch:
        raw = ch.unary_stream("/ipcache.IpCache/StreamUpdates", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            list(raw(b"\xff\xff\xff", timeout=5))
        assert err.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
        other = ch.unary_unary("/ipcache.IpCache/Nope", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            other(b"", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    run_pod(kube_server, "after", NODE, ["10.0.0.41"])
    wait_for(lambda: cache.get(B("10.0.0.41")) is not None, what="the stream still flowing")
    assert src.status()["streams"] == 1 and in_sync(op, cache, NODE)
    assert http_get(op, "/debug/ipcache?ip=not-an-ip")[0] == 200


# -- lagging agents ----------------------------------------------------------------------------------------------


class GatedCache(RecordingCache):
    """A cache whose apply() blocks while the gate is closed: an agent that stops reading its stream."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.blocked = threading.Event()

    def apply(self, source, upserts=(), deletes=()):
        if not self.gate.is_set():
            self.blocked.set()
            self.gate.wait(20)
        super().apply(source, upserts, deletes)


def test_lagging_agent_is_disconnected_without_delaying_others(kube_server, operators, agents):
    op = operators(queue_size=16)
    fast, fast_cache = agents(op)
    slow_cache = GatedCache()
    # Without BDP probing the agent's HTTP/2 receive window stays at 64 KiB: a few updates fill it.
    slow, _ = agents(op, node="node-slow", cache=slow_cache, channel_options=[("grpc.http2.bdp_probe", 0)])
    slow_cache.gate.clear()
    try:
        _lagging_scenario(kube_server, op, fast, fast_cache, slow, slow_cache)
    finally:
        slow_cache.gate.set()


def _lagging_scenario(kube_server, op, fast, fast_cache, slow, slow_cache):
    big = {f"label-{i:03d}": "x" * 60 for i in range(60)}  # ~5 KiB per update, so HTTP/2 flow control bites
    for i in range(80):  # the fast agent gets every change at once while the slow one is stuck
        run_pod(kube_server, f"p{i}", NODE, [f"10.1.0.{i}"], big)
        wait_for(lambda: fast_cache.get(B(f"10.1.0.{i}")) is not None, timeout_s=2, what=f"pod {i} at the fast agent")
    assert in_sync(op, fast_cache) and slow_cache.blocked.is_set() and fast.status()["streams"] == 1
    lagging = wait_for(lambda: [a for a in op.server.agents() if a["node"] == "node-slow" and a["lagging"]],
                       what="the slow agent to show as lagging")
    assert lagging[0]["queue_depth"] > 16
    slow_cache.gate.set()  # it reads again: what was in flight, then DATA_LOSS, then a fresh snapshot
    wait_for(lambda: slow.status()["lagging_disconnects"] == 1 and slow.status()["syncs"] == 2,
             what="the slow agent to be dropped and resync")
    wait_for(lambda: in_sync(op, slow_cache, "node-slow"), what="the slow agent in sync")
    assert op.server.lagging_disconnects == 1 and fast.status()["streams"] == 1
    assert metric(http_get(op, "/metrics")[1], "retina_operator_lagging_disconnects_total") == 1


def test_lagging_status_is_clear_to_a_raw_client(kube_server, operators):
    op = operators(queue_size=4)
    with grpc.insecure_channel(f"127.0.0.1:{op.grpc_port}", options=[("grpc.http2.bdp_probe", 0)]) as ch:
        stream = ipcache_pb2_grpc.IpCacheStub(ch).StreamUpdates(ipcache_pb2.IpCacheRequest(node_name="raw"))
        first = next(stream)
        assert [u.ip for u in first.updates] == ["10.96.0.1"]
        assert next(stream).updates[0].update_type == ipcache_pb2.SYNC_COMPLETE
        big = {f"k{i:03d}": "v" * 60 for i in range(60)}
        for i in range(60):
            run_pod(kube_server, f"p{i}", NODE, [f"10.2.0.{i}"], big)
        wait_for(lambda: op.server.lagging_disconnects == 1 or any(a["lagging"] for a in op.server.agents()),
                 what="lagging")
        with pytest.raises(grpc.RpcError) as err:
            for _ in stream:
                pass
        assert err.value.code() == grpc.StatusCode.DATA_LOSS
        assert "agent raw is lagging" in err.value.details() and "reconnect" in err.value.details()


# -- TLS ---------------------------------------------------------------------------------------------------------


def test_tls_and_mutual_tls(kube_server, operators, agents, tmp_path):
    files = make_tls_files(tmp_path)
    op = operators(tls=TlsFiles(str(files["server_cert"]), str(files["server_key"]), str(files["ca_cert"])))
    src, cache = agents(op, ca_file=str(files["ca_cert"]), cert_file=str(files["client_cert"]),
                        key_file=str(files["client_key"]), server_name="localhost")
    assert src.status()["loaded"] and src.status()["tls"] and in_sync(op, cache, NODE)
    anonymous, _ = agents(op, ca_file=str(files["ca_cert"]), start_timeout_s=0.3)  # no client certificate
    plain, _ = agents(op, start_timeout_s=0.3)
    wait_for(lambda: anonymous.status()["error"] and plain.status()["error"], what="both refused")
    assert not anonymous.status()["loaded"] and not plain.status()["loaded"]
    assert "cannot reach the operator" in plain.status()["error"]
    assert [a["node"] for a in op.server.agents()] == [NODE]
