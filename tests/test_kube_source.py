"""The ``kubernetes`` enrichment source (enricher.kubernetes) against the test API server with the real client:
identities of pods/services/nodes, owner resolution, changes reaching the cache in order, address reuse, a
server that is down at start, garbage, 410 relists."""

from __future__ import annotations

import pytest
import yaml

from retina_core.identity import KIND_HOST, KIND_NODE, KIND_POD, KIND_SERVICE
from enricher.ipcache import IPCache
from retina_core.addr import ip_bytes
from enricher.kubernetes import KubeConfigError, KubernetesSource
from retina_core.kube import OwnerUnresolved as _Unresolved
from tests.support.kube_fixtures import kube_server, node_body, owner, run_pod, service_body, wait_for  # noqa: F401

NODE = "node-a"
FAST = dict(start_timeout_s=5.0, backoff_initial_s=0.05, backoff_max_s=0.4, owner_retry_s=0.05, resync_period_s=0)
B = ip_bytes


class RecordingCache(IPCache):
    """An IPCache that remembers every write, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple] = []

    def publish(self, source, pods=None, services=None, nodes=None):
        self.writes.append(("publish", dict(pods or {}), dict(services or {}), dict(nodes or {})))
        super().publish(source, pods, services, nodes)

    def apply(self, source, upserts=(), deletes=()):
        upserts, deletes = list(upserts), list(deletes)
        self.writes.append(("apply", upserts, deletes))
        super().apply(source, upserts, deletes)

    def history(self, ip: str, kind: str = KIND_POD) -> list:
        """What happened to ``ip`` in the ``kind`` map, write by write: an Identity (upsert) or None (delete)."""
        out = []
        for w in self.writes:
            if w[0] == "publish":
                m = {KIND_POD: w[1], KIND_SERVICE: w[2], KIND_NODE: w[3]}[kind]
                if B(ip) in m:
                    out.append(m[B(ip)])
            else:
                out += [None for k, p in w[2] if k == kind and p == B(ip)]
                out += [ident for k, p, ident in w[1] if k == kind and p == B(ip)]
        return out


@pytest.fixture
def make_source(kube_server):
    made: list[KubernetesSource] = []

    def make(node: str = NODE, start: bool = True, **kw) -> tuple[KubernetesSource, RecordingCache]:
        src = KubernetesSource(node, kube_server.configuration(), **{**FAST, **kw})
        cache = RecordingCache()
        made.append(src)
        if start:
            src.start(cache)
        return src, cache

    yield make
    for s in made:
        s.stop()


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
    deployment_pod(server, "web", "7d9f", "web-7d9f-abcde", NODE, ["10.0.0.5", "fd00:10::5"], {"app": "web"})
    run_pod(server, "remote", "node-b", ["10.0.1.5"], {"app": "web"})
    run_pod(server, "hostnet", NODE, ["192.168.0.1"], host_network=True)
    cj = server.create("cronjobs", {"metadata": {"name": "nightly"}, "spec": {}})
    job = server.create("jobs", {"metadata": {"name": "nightly-29000000", "ownerReferences": [
        owner("CronJob", "nightly", cj["metadata"]["uid"], "batch/v1")]}, "spec": {}})
    run_pod(server, "nightly-29000000-xyz", NODE, ["10.0.0.6"],
            owners=[owner("Job", "nightly-29000000", job["metadata"]["uid"], "batch/v1")])
    ds = server.create("daemonsets", {"metadata": {"name": "agent"}, "spec": {}})
    run_pod(server, "agent-q1", NODE, ["10.0.0.7"], owners=[owner("DaemonSet", "agent", ds["metadata"]["uid"])])
    run_pod(server, "bare", NODE, ["10.0.0.8"], {"b": "1", "a": "2"})
    server.create("services", service_body("web", {"app": "web"}, cluster_ip="10.96.1.1"))
    server.create("services", service_body("web-headless", {"app": "web"}, cluster_ip="None"))
    server.create("services", service_body("lb", {"app": "none"}, cluster_ip="10.96.1.2", type="LoadBalancer",
                                                externalIPs=["198.51.100.7"]))
    server.patch("services", "lb", {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"},
                                                                            {"hostname": "lb.example"}]}}},
                 namespace="default", status=True)


def test_initial_picture(kube_server, make_source):
    build_cluster(kube_server)
    src, cache = make_source()
    st = src.status()
    assert st["loaded"] and st["error"] is None and cache.loaded
    assert cache.writes[0][0] == "publish" and len(cache.writes) == 1  # one snapshot, only once all listed
    web = cache.get(B("10.0.0.5"))
    assert web.kind == KIND_POD and web.namespace == "default" and web.pod_name == "web-7d9f-abcde"
    assert web.labels == ("app=web", "pod-template-hash=7d9f")
    assert web.workloads == (("Deployment", "web"), ("ReplicaSet", "web-7d9f"))
    # web and web-headless both select it: the alphabetically first name wins (as in the inventory source).
    assert (web.service, web.node_name, web.zone, web.ip) == ("web", NODE, "zone-1", "10.0.0.5")
    assert cache.get(B("fd00:10::5")).pod_name == "web-7d9f-abcde"  # IPv6 pod address too
    assert cache.get(B("10.0.1.5")) is None  # another node's pod
    job = cache.get(B("10.0.0.6"))
    assert job.workloads == (("CronJob", "nightly"), ("Job", "nightly-29000000")) and job.service == ""
    assert cache.get(B("10.0.0.7")).workloads == (("DaemonSet", "agent"),)
    assert cache.get(B("10.0.0.8")).workloads == () and cache.get(B("10.0.0.8")).labels == ("a=2", "b=1")
    host = cache.get(B("192.168.0.1"))  # the hostNetwork pod is skipped: the address is the node's
    assert host.kind == KIND_HOST and host.node_name == NODE and host.zone == "zone-1"
    assert cache.get(B("fd00::1")).kind == KIND_HOST
    other = cache.get(B("192.168.0.2"))
    assert other.kind == KIND_NODE and other.zone == "zone-2"
    for ip in ("10.96.1.1", "10.96.1.2", "203.0.113.9", "198.51.100.7", "10.96.0.1"):
        assert cache.get(B(ip)).kind == KIND_SERVICE, ip
    assert cache.get(B("10.96.1.2")).service == "lb" and cache.get(B("10.96.0.1")).service == "kubernetes"
    assert st["pods"] == 5 and st["nodes"] == 2 and st["services"] == 4
    assert st["entries"] == len(cache) == 13  # 5 pod, 5 service, 3 node addresses
    assert set(st["informers"]) == {"pods", "services", "nodes"}


def test_changes_reach_the_cache_in_order(kube_server, make_source):
    kube_server.create("nodes", node_body(NODE, ["192.168.0.1"], zone="z1"))
    src, cache = make_source()
    ip = "10.0.0.20"
    run_pod(kube_server, "p", NODE, [ip], {"v": "1"})  # create, then the kubelet reports the address
    for v in ("2", "3"):
        kube_server.patch("pods", "p", {"metadata": {"labels": {"v": v}}}, namespace="default")
    # Each informer delivers in order; across informers (pods vs services) there is no order, so wait.
    wait_for(lambda: cache.get(B(ip)) is not None and cache.get(B(ip)).labels == ("v=3",), what="label v=3")
    kube_server.create("services", service_body("svc", {"v": "3"}, cluster_ip="10.96.5.5"))
    wait_for(lambda: cache.get(B(ip)) is not None and cache.get(B(ip)).service == "svc", what="service name")
    kube_server.patch("nodes", NODE, {"metadata": {"labels": {"topology.kubernetes.io/zone": "z2"}}})
    wait_for(lambda: cache.get(B(ip)).zone == "z2", what="the zone change")
    kube_server.delete("services", "svc", "default")
    wait_for(lambda: cache.get(B("10.96.5.5")) is None, what="the service delete")
    kube_server.delete("pods", "p", "default")  # graceful: terminating (still there), then gone
    wait_for(lambda: cache.get(B(ip)) is None, what="the pod delete")
    hist = [(h.labels, h.service, h.zone) if h else None for h in cache.history(ip)]
    assert hist == [(("v=1",), "", "z1"), (("v=2",), "", "z1"), (("v=3",), "", "z1"), (("v=3",), "svc", "z1"),
                    (("v=3",), "svc", "z2"), (("v=3",), "", "z2"), None]
    assert [h.service if h else None for h in cache.history("10.96.5.5", KIND_SERVICE)] == ["svc", None]


def test_address_reuse_beats_a_stale_delete(kube_server, make_source):
    kube_server.kubelet_delay_s = None  # terminating pods linger, as while a kubelet is still cleaning up
    src, cache = make_source()
    x = "10.0.0.30"
    run_pod(kube_server, "old", NODE, [x], {"gen": "old"})
    wait_for(lambda: cache.get(B(x)) is not None, what="the old pod")
    kube_server.delete("pods", "old", "default")  # terminating, still reports the address
    run_pod(kube_server, "new", NODE, [x], {"gen": "new"})
    wait_for(lambda: cache.get(B(x)).pod_name == "new", what="the new pod to take the address")
    kube_server.patch("pods", "old", {"metadata": {"labels": {"gen": "old2"}}}, namespace="default")
    kube_server.delete("pods", "old", "default", grace_period_s=0)  # the old pod's delete arrives last
    wait_for(lambda: src.status()["pods"] == 1, what="the old pod's delete")
    assert cache.get(B(x)).pod_name == "new"
    # A finished pod gives its address up at once.
    kube_server.patch("pods", "new", {"status": {"phase": "Succeeded"}}, namespace="default", status=True)
    wait_for(lambda: cache.get(B(x)) is None, what="the finished pod to release the address")


def test_a_delete_of_one_kind_never_removes_another_kinds_entry(kube_server, make_source):
    src, cache = make_source()
    ip = "10.0.0.77"
    kube_server.create("nodes", node_body("odd-node", [ip]))
    run_pod(kube_server, "p", NODE, [ip])
    wait_for(lambda: cache.get(B(ip)) is not None and cache.get(B(ip)).kind == KIND_POD, what="pod over node")
    kube_server.delete("nodes", "odd-node")
    wait_for(lambda: src.status()["nodes"] == 0, what="the node delete")
    assert cache.get(B(ip)).kind == KIND_POD
    kube_server.delete("pods", "p", "default", grace_period_s=0)
    wait_for(lambda: cache.get(B(ip)) is None, what="the pod delete")


def test_api_server_down_at_start(kube_server, make_source, caplog):
    build_cluster(kube_server)
    kube_server.set_down(True)
    src, cache = make_source(start_timeout_s=0.3)
    st = src.status()
    assert not st["loaded"] and not cache.loaded and len(cache) == 0
    assert "cannot reach the API server" in st["error"]
    assert any("continuing in the background" in r.getMessage() for r in caplog.records)
    kube_server.set_down(False)
    wait_for(lambda: src.status()["loaded"], what="readiness once the server is up")
    assert cache.loaded and src.status()["error"] is None
    assert cache.get(B("10.0.0.5")).workloads == (("Deployment", "web"), ("ReplicaSet", "web-7d9f"))


def test_garbage_does_not_crash_the_source(kube_server, make_source):
    src, cache = make_source()
    kube_server.garbage_mode(True)
    run_pod(kube_server, "during", NODE, ["10.0.0.40"])
    wait_for(lambda: "malformed" in (src.status()["error"] or ""), what="the garbage to be noticed")
    kube_server.garbage_mode(False)
    wait_for(lambda: cache.get(B("10.0.0.40")) is not None, what="the pod created during garbage")
    assert all(inf.alive() for inf in src.informers.values())
    wait_for(lambda: src.status()["error"] is None, what="all informers healthy")


def test_relist_after_410_updates_the_cache_exactly(kube_server, make_source):
    run_pod(kube_server, "stays", NODE, ["10.0.0.50"])
    run_pod(kube_server, "goes", NODE, ["10.0.0.51"])
    src, cache = make_source()
    kube_server.set_down(True)
    kube_server.delete("pods", "goes", "default", grace_period_s=0)
    run_pod(kube_server, "comes", NODE, ["10.0.0.51"])  # reuses the address
    kube_server.create("services", service_body("s", cluster_ip="10.96.9.9"))
    kube_server.compact()
    kube_server.set_down(False)
    wait_for(lambda: cache.get(B("10.96.9.9")) is not None and cache.get(B("10.0.0.51")).pod_name == "comes",
             what="the relisted picture")
    assert src.informers["pods"].relists_gone == 1
    assert cache.get(B("10.0.0.50")).pod_name == "stays"
    assert [h.pod_name if h else None for h in cache.history("10.0.0.50")] == ["stays"]  # nothing re-sent


def test_owner_lookups_are_cached_and_retried(kube_server, make_source, monkeypatch):
    d = kube_server.create("deployments", {"metadata": {"name": "api"}, "spec": {}})
    rs = kube_server.create("replicasets", {"metadata": {"name": "api-55c", "ownerReferences": [
        owner("Deployment", "api", d["metadata"]["uid"])]}, "spec": {}})
    for i in range(3):
        run_pod(kube_server, f"api-55c-{i}", NODE, [f"10.0.0.6{i}"], {"pod-template-hash": "55c"},
                [owner("ReplicaSet", "api-55c", rs["metadata"]["uid"])])
    # A ReplicaSet that does not exist (any more): the ReplicaSet is the top.
    run_pod(kube_server, "orphan", NODE, ["10.0.0.69"], owners=[owner("ReplicaSet", "gone-1", "u-1")])
    src, cache = make_source()
    gets = [p for m, p in kube_server.requests if m == "GET" and "/replicasets/" in p]
    assert sorted(gets) == ["/apis/apps/v1/namespaces/default/replicasets/api-55c",
                            "/apis/apps/v1/namespaces/default/replicasets/gone-1"]  # one GET per ReplicaSet
    assert cache.get(B("10.0.0.62")).workloads == (("Deployment", "api"), ("ReplicaSet", "api-55c"))
    assert cache.get(B("10.0.0.69")).workloads == (("ReplicaSet", "gone-1"),)

    # A lookup that fails for a transport reason: Job only, then corrected in the background.
    cj = kube_server.create("cronjobs", {"metadata": {"name": "cj"}, "spec": {}})
    job = kube_server.create("jobs", {"metadata": {"name": "cj-1", "ownerReferences": [
        owner("CronJob", "cj", cj["metadata"]["uid"], "batch/v1")]}, "spec": {}})
    real_read = src.owners._read
    failures = []

    def flaky(kind, ns, name):
        if len(failures) < 2:
            failures.append(name)
            raise _Unresolved("GET Job default/cj-1: connection refused")
        return real_read(kind, ns, name)

    monkeypatch.setattr(src.owners, "_read", flaky)
    run_pod(kube_server, "cj-1-abc", NODE, ["10.0.0.70"], owners=[owner("Job", "cj-1", job["metadata"]["uid"],
                                                                        "batch/v1")])
    wait_for(lambda: cache.get(B("10.0.0.70")) is not None, what="the job pod")
    assert cache.get(B("10.0.0.70")).workloads in ((("Job", "cj-1"),), (("CronJob", "cj"), ("Job", "cj-1")))
    wait_for(lambda: cache.get(B("10.0.0.70")).workloads == (("CronJob", "cj"), ("Job", "cj-1")),
             what="the background retry")
    assert len(failures) == 2 and src.status()["owners_pending"] == 0


def test_guessed_deployment_while_lookups_fail(kube_server, make_source, monkeypatch):
    src, cache = make_source()

    def down(kind, ns, name):
        raise _Unresolved("down")

    monkeypatch.setattr(src.owners, "_read", down)
    run_pod(kube_server, "web-6f7-x", NODE, ["10.0.0.80"], {"pod-template-hash": "6f7"},
            [owner("ReplicaSet", "web-6f7", "uid-rs")])
    wait_for(lambda: cache.get(B("10.0.0.80")) is not None, what="the pod")
    assert cache.get(B("10.0.0.80")).workloads == (("Deployment", "web"), ("ReplicaSet", "web-6f7"))
    assert src.status()["owners_pending"] == 1


def test_kubeconfig_file_and_config_errors(kube_server, tmp_path, make_source):
    kc = tmp_path / "kubeconfig"
    kc.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "c", "cluster": {"server": kube_server.url}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}]}))
    src = KubernetesSource(NODE, str(kc), **FAST)
    try:
        cache = IPCache()
        src.start(cache)
        assert src.status()["loaded"] and src.status()["server"] == kube_server.url
        assert cache.get(B("10.96.0.1")).service == "kubernetes"
    finally:
        src.stop()
    with pytest.raises(KubeConfigError, match="cannot load the kubeconfig"):
        KubernetesSource(NODE, str(tmp_path / "missing"))
    with pytest.raises(KubeConfigError, match="node name is empty"):
        KubernetesSource("", kube_server.configuration())


def test_stop_keeps_the_cache(kube_server, make_source):
    run_pod(kube_server, "p", NODE, ["10.0.0.90"])
    src, cache = make_source()
    src.stop()
    assert not any(inf.alive() for inf in src.informers.values())
    assert cache.get(B("10.0.0.90")).pod_name == "p"
