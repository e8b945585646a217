"""The test API server, driven by the real ``kubernetes`` client: discovery, CRUD, resource versions, selectors,
pagination, watch (bookmarks, 410 Gone, selector transitions), status subresources, graceful deletion, and the
test controls. Each check mirrors a documented behaviour of kube-apiserver
(https://kubernetes.io/docs/reference/using-api/api-concepts/)."""

from __future__ import annotations

import base64
import json
import socket

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch import Watch
from kubernetes.watch.watch import iter_resp_lines

from tests.support.kube_api_server import KubeApiServer
from tests.support.kube_fixtures import (kube_api, kube_server, node_body, pod_body, run_pod,  # noqa: F401
                                         service_body, wait_for)

MC = ("retina.sh", "v1alpha1", "metricsconfigurations")


def status_of(exc: ApiException) -> dict:
    return json.loads(exc.body)


def raw_request(server, method: str, path: str, body=None, headers=None) -> tuple[int, dict]:
    """One request without the client (which validates or shapes some bodies itself)."""
    r = urllib3.PoolManager().request(method, server.url + path, body=json.dumps(body).encode(), retries=False,
                                      headers={"Content-Type": "application/json", **(headers or {})})
    return r.status, json.loads(r.data)


def raw_watch(list_func, *args, **kwargs) -> list[dict]:
    """All events of one watch request, parsed from the raw stream with the client's own line reader."""
    resp = list_func(*args, watch=True, _preload_content=False, **kwargs)
    try:
        return [json.loads(line) for line in iter_resp_lines(resp) if line]
    finally:
        resp.release_conn()


def test_discovery(kube_api):
    assert client.CoreApi(kube_api).get_api_versions().versions == ["v1"]
    groups = {g.name: g.preferred_version.group_version for g in client.ApisApi(kube_api).get_api_versions().groups}
    assert groups == {"apps": "apps/v1", "batch": "batch/v1", "retina.sh": "retina.sh/v1alpha1"}
    core = {r.name: r for r in client.CoreV1Api(kube_api).get_api_resources().resources}
    assert {"pods", "pods/status", "services", "nodes", "namespaces"} <= core.keys()
    assert core["pods"].namespaced and not core["nodes"].namespaced and "watch" in core["pods"].verbs
    assert core["pods/status"].verbs == ["get", "patch", "update"]
    apps = {r.name for r in client.AppsV1Api(kube_api).get_api_resources().resources}
    assert {"deployments", "replicasets", "daemonsets", "statefulsets"} <= apps
    batch = {r.name for r in client.BatchV1Api(kube_api).get_api_resources().resources}
    assert {"jobs", "cronjobs"} <= batch
    crd = client.CustomObjectsApi(kube_api).get_api_resources(*MC[:2])
    mc = {r.name: r for r in crd.resources}
    assert mc["metricsconfigurations"].kind == "MetricsConfiguration" and not mc["metricsconfigurations"].namespaced
    assert "metricsconfigurations/status" in mc


def test_create_sets_metadata_and_lists_carry_the_revision(kube_api, kube_server):
    core = client.CoreV1Api(kube_api)
    p = core.create_namespaced_pod("default", pod_body("web-1", "node-a", {"app": "web"}))
    assert p.metadata.uid and p.metadata.creation_timestamp is not None
    assert int(p.metadata.resource_version) == kube_server.resource_version
    assert p.status.phase == "Pending"  # status is not settable on create
    raw = json.loads(core.list_namespaced_pod("default", _preload_content=False).data)
    assert raw["kind"] == "PodList" and raw["apiVersion"] == "v1"
    assert raw["metadata"]["resourceVersion"] == str(kube_server.resource_version)
    assert "kind" not in raw["items"][0]  # built-in list items carry no kind/apiVersion, like the real server
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_pod("default", pod_body("web-1"))
    assert exc.value.status == 409 and status_of(exc.value)["reason"] == "AlreadyExists"
    assert status_of(exc.value)["message"] == 'pods "web-1" already exists'
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_pod("nope", pod_body("x", namespace="nope"))
    assert exc.value.status == 404 and status_of(exc.value)["message"] == 'namespaces "nope" not found'
    # (the client validates this one itself, so send it raw)
    code, st = raw_request(kube_server, "POST", "/api/v1/namespaces/default/pods", {"metadata": {"name": "x"},
                                                                                  "spec": {}})
    assert code == 422 and st["reason"] == "Invalid" and st["details"]["causes"][0]["field"] == "spec.containers"
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_pod("missing", "default")
    assert exc.value.status == 404 and status_of(exc.value)["message"] == 'pods "missing" not found'


def test_status_subresource_and_optimistic_concurrency(kube_api):
    core = client.CoreV1Api(kube_api)
    p = core.create_namespaced_pod("default", pod_body("p", "n1"))
    rv0 = p.metadata.resource_version
    s = core.patch_namespaced_pod_status("p", "default", {"status": {"phase": "Running", "podIP": "10.1.0.5"},
                                                           "metadata": {"labels": {"ignored": "yes"}}})
    assert s.status.pod_ip == "10.1.0.5" and not (s.metadata.labels or {}).get("ignored")
    assert int(s.metadata.resource_version) > int(rv0)
    # The main endpoint keeps status; labels change; stale resourceVersion -> 409.
    stale = json.loads(core.read_namespaced_pod("p", "default", _preload_content=False).data)
    m = core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"a": "1"}}, "status": {"podIP": "x"}})
    assert m.metadata.labels == {"a": "1"} and m.status.pod_ip == "10.1.0.5"
    with pytest.raises(ApiException) as exc:
        core.replace_namespaced_pod("p", "default", stale)
    assert exc.value.status == 409 and status_of(exc.value)["reason"] == "Conflict"
    assert "the object has been modified" in status_of(exc.value)["message"]
    # A merge patch carrying a stale resourceVersion is a precondition too.
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_pod("p", "default", {"metadata": {"resourceVersion": rv0, "labels": {"b": "2"}}})
    assert exc.value.status == 409
    # A no-op update changes nothing, not even the resourceVersion.
    same = core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"a": "1"}}})
    assert same.metadata.resource_version == m.metadata.resource_version
    # JSON patch.
    j = core.patch_namespaced_pod("p", "default", [{"op": "add", "path": "/metadata/labels/c", "value": "3"}])
    assert j.metadata.labels == {"a": "1", "c": "3"}


def test_custom_resource_status_generation_and_patch_types(kube_api, kube_server):
    co = client.CustomObjectsApi(kube_api)
    body = {"apiVersion": "retina.sh/v1alpha1", "kind": "MetricsConfiguration", "metadata": {"name": "cfg"},
            "spec": {"contextOptions": [{"metricName": "drop_count"}]}, "status": {"state": "Accepted"}}
    o = co.create_cluster_custom_object(*MC, body)
    assert "status" not in o and o["metadata"]["generation"] == 1  # status is dropped on create
    st = co.patch_cluster_custom_object_status(*MC, "cfg", {"status": {"state": "Accepted", "reason": "ok"},
                                                             "spec": {"ignored": True}})
    assert st["status"] == {"state": "Accepted", "reason": "ok"} and "ignored" not in st["spec"]
    assert st["metadata"]["generation"] == 1  # status writes do not bump generation
    sp = co.patch_cluster_custom_object(*MC, "cfg", {"spec": {"namespaces": {"include": ["a"]}}})
    assert sp["metadata"]["generation"] == 2 and sp["status"]["state"] == "Accepted"
    # PUT without resourceVersion is refused for custom resources (no unconditional updates).
    with pytest.raises(ApiException) as exc:
        co.replace_cluster_custom_object(*MC, "cfg", {k: v for k, v in body.items() if k != "status"})
    assert exc.value.status == 422 and "must be specified for an update" in status_of(exc.value)["message"]
    lst = co.list_cluster_custom_object(*MC)
    assert lst["kind"] == "MetricsConfigurationList" and lst["items"][0]["kind"] == "MetricsConfiguration"
    # Strategic merge patch does not exist for custom resources.
    code, st = raw_request(kube_server, "PATCH", "/apis/retina.sh/v1alpha1/metricsconfigurations/cfg", {"spec": {}},
                           {"Content-Type": "application/strategic-merge-patch+json"})
    assert code == 415 and st["reason"] == "UnsupportedMediaType"
    gone = co.delete_cluster_custom_object(*MC, "cfg")
    assert gone["metadata"]["name"] == "cfg"


def test_label_and_field_selectors(kube_api, kube_server):
    core = client.CoreV1Api(kube_api)
    kube_server.create("namespaces", {"metadata": {"name": "other"}})
    for name, node, labels, ns in [("a", "n1", {"app": "web", "tier": "fe"}, "default"),
                                   ("b", "n1", {"app": "db"}, "default"),
                                   ("c", "n2", {"app": "web"}, "default"),
                                   ("d", "n1", {}, "other")]:
        kube_server.create("pods", pod_body(name, node, labels, namespace=ns))

    def names(**kw):
        return sorted(p.metadata.name for p in core.list_pod_for_all_namespaces(**kw).items)

    assert names(label_selector="app=web") == ["a", "c"]
    assert names(label_selector="app==web,tier=fe") == ["a"]
    assert names(label_selector="app!=web") == ["b", "d"]  # != also selects pods without the label
    assert names(label_selector="app in (web, db)") == ["a", "b", "c"]
    assert names(label_selector="app notin (web)") == ["b", "d"]
    assert names(label_selector="tier") == ["a"]
    assert names(label_selector="!app") == ["d"]
    assert names(field_selector="spec.nodeName=n1") == ["a", "b", "d"]
    assert names(field_selector="spec.nodeName=n1,metadata.namespace!=other") == ["a", "b"]
    assert names(field_selector="metadata.name=c") == ["c"]
    assert names(field_selector="metadata.namespace=other") == ["d"]
    assert names(field_selector="spec.nodeName=n1", label_selector="app=web") == ["a"]
    with pytest.raises(ApiException) as exc:
        core.list_pod_for_all_namespaces(field_selector="spec.foo=1")
    assert exc.value.status == 400 and status_of(exc.value)["message"] == "field label not supported: spec.foo"
    with pytest.raises(ApiException) as exc:
        core.list_pod_for_all_namespaces(label_selector="app in web")
    assert exc.value.status == 400 and "unable to parse requirement" in status_of(exc.value)["message"]
    nodes = client.CoreV1Api(kube_api)
    kube_server.create("nodes", node_body("n1", ["192.168.0.1"]))
    assert [n.metadata.name for n in nodes.list_node(field_selector="metadata.name=n1").items] == ["n1"]


def test_pagination_is_a_consistent_snapshot(kube_api, kube_server):
    core = client.CoreV1Api(kube_api)
    for i in range(5):
        kube_server.create("pods", pod_body(f"p{i}"))
    first = core.list_namespaced_pod("default", limit=2)
    assert [p.metadata.name for p in first.items] == ["p0", "p1"]
    assert first.metadata._continue and first.metadata.remaining_item_count == 3
    token = json.loads(base64.urlsafe_b64decode(first.metadata._continue + "=="))
    assert token == {"v": "meta.k8s.io/v1", "rv": int(first.metadata.resource_version), "start": "default/p1\x00"}
    kube_server.create("pods", pod_body("p2a"))  # created after the first page: not in this list
    kube_server.delete("pods", "p3", "default")  # deleted after the first page: still in this list
    rest = core.list_namespaced_pod("default", limit=10, _continue=first.metadata._continue)
    assert [p.metadata.name for p in rest.items] == ["p2", "p3", "p4"]
    assert rest.metadata.resource_version == first.metadata.resource_version and not rest.metadata._continue
    kube_server.compact()
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_pod("default", limit=10, _continue=first.metadata._continue)
    assert exc.value.status == 410 and status_of(exc.value)["reason"] == "Expired"


def test_list_resource_version_semantics(kube_api, kube_server):
    core = client.CoreV1Api(kube_api)
    kube_server.create("pods", pod_body("a"))
    rv_a = str(kube_server.resource_version)
    kube_server.create("pods", pod_body("b"))
    # Not older than an old revision: the current state, never 410.
    now = core.list_namespaced_pod("default", resource_version=rv_a)
    assert [p.metadata.name for p in now.items] == ["a", "b"]
    assert now.metadata.resource_version == str(kube_server.resource_version)
    # Exact: the state at that revision, from history.
    then = core.list_namespaced_pod("default", resource_version=rv_a, resource_version_match="Exact")
    assert [p.metadata.name for p in then.items] == ["a"] and then.metadata.resource_version == rv_a
    # "0": any state, here the current one.
    assert len(core.list_namespaced_pod("default", resource_version="0").items) == 2
    kube_server.compact()
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_pod("default", resource_version=rv_a, resource_version_match="Exact")
    assert exc.value.status == 410 and status_of(exc.value)["reason"] == "Expired"
    assert len(core.list_namespaced_pod("default", resource_version=rv_a).items) == 2  # still fine
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_pod("default", resource_version=str(kube_server.resource_version + 100))
    assert exc.value.status == 504 and "Too large resource version" in status_of(exc.value)["message"]
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_pod("default", resource_version_match="Exact")
    assert exc.value.status == 422


def test_watch_replays_from_a_revision_and_expires_after_compaction(kube_api, kube_server):
    core = client.CoreV1Api(kube_api)
    start = str(kube_server.resource_version)
    kube_server.create("pods", pod_body("w", "n1"))
    kube_server.patch("pods", "w", {"metadata": {"labels": {"v": "2"}}}, namespace="default")
    kube_server.delete("pods", "w", "default")  # scheduled pod: graceful (MODIFIED) then the kubelet (DELETED)
    wait_for(lambda: kube_server.get("pods", "w", "default") is None, what="kubelet to finish the deletion")
    events = raw_watch(core.list_namespaced_pod, "default", resource_version=start, timeout_seconds=1)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]
    assert events[2]["object"]["metadata"]["deletionTimestamp"]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and len(set(rvs)) == 4
    assert events[0]["object"]["kind"] == "Pod"  # watch objects carry kind/apiVersion
    # No resourceVersion: synthetic ADDED for what exists, then live events.
    kube_server.create("pods", pod_body("x"))
    events = raw_watch(core.list_namespaced_pod, "default", timeout_seconds=1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "x")]
    # After compaction an old revision gets exactly the real server's ERROR event, and the stream ends.
    kube_server.compact()
    events = raw_watch(core.list_namespaced_pod, "default", resource_version=start, timeout_seconds=5)
    assert events == [{"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f"too old resource version: {start} ({kube_server.resource_version})",
        "reason": "Expired", "code": 410}}]
    # The client's own Watch turns it into ApiException(410), as documented for the real server.
    with pytest.raises(ApiException) as exc:
        for _ in Watch().stream(core.list_namespaced_pod, "default", resource_version=start, timeout_seconds=1):
            pass
    assert exc.value.status == 410


def test_watch_bookmarks_and_timeout(kube_api, kube_server):
    core = client.CoreV1Api(kube_api)
    kube_server.create("pods", pod_body("a"))
    rv = str(kube_server.resource_version)
    events = raw_watch(core.list_namespaced_pod, "default", resource_version=rv, allow_watch_bookmarks=True,
                       timeout_seconds=1)
    assert events and all(e["type"] == "BOOKMARK" for e in events)
    assert events[0]["object"] == {"kind": "Pod", "apiVersion": "v1",
                                   "metadata": {"resourceVersion": rv, "creationTimestamp": None}}
    assert raw_watch(core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=1) == []


def test_watch_selector_transitions(kube_api, kube_server):
    """An object that stops matching a watch's selector is sent as DELETED, one that starts matching as ADDED."""
    core = client.CoreV1Api(kube_api)
    kube_server.create("pods", pod_body("p", labels={"app": "web"}))
    rv = str(kube_server.resource_version)
    kube_server.patch("pods", "p", {"metadata": {"labels": {"app": "db"}}}, namespace="default")
    kube_server.patch("pods", "p", {"metadata": {"labels": {"app": "web"}}}, namespace="default")
    kube_server.create("pods", pod_body("q", labels={"app": "db"}))
    events = raw_watch(core.list_namespaced_pod, "default", resource_version=rv, label_selector="app=web",
                       timeout_seconds=1)
    assert [(e["type"], e["object"]["metadata"]["name"], e["object"]["metadata"]["labels"]["app"])
            for e in events] == [("DELETED", "p", "web"), ("ADDED", "p", "web")]


def test_deletion_semantics(kube_api, kube_server):
    core, apps = client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    # Unscheduled pod: deleted at once, the pod is returned.
    kube_server.create("pods", pod_body("unscheduled"))
    assert core.delete_namespaced_pod("unscheduled", "default").metadata.name == "unscheduled"
    assert kube_server.get("pods", "unscheduled", "default") is None
    # gracePeriodSeconds=0 deletes a scheduled pod at once.
    run_pod(kube_server, "now", "n1", ["10.0.0.9"])
    core.delete_namespaced_pod("now", "default", grace_period_seconds=0)
    assert kube_server.get("pods", "now", "default") is None
    # Deployments answer a Status.
    kube_server.create("deployments", {"metadata": {"name": "d"}, "spec": {"replicas": 1}})
    st = json.loads(apps.delete_namespaced_deployment("d", "default", _preload_content=False).data)
    assert st["kind"] == "Status" and st["status"] == "Success" and st["details"]["group"] == "apps"
    # Finalizers hold the object (deletionTimestamp set) until they are removed.
    kube_server.create("replicasets", {"metadata": {"name": "rs", "finalizers": ["x/y"]}, "spec": {}})
    apps.delete_namespaced_replica_set("rs", "default")
    held = kube_server.get("replicasets", "rs", "default")
    assert held is not None and held["metadata"]["deletionTimestamp"]
    kube_server.patch("replicasets", "rs", {"metadata": {"finalizers": None}}, namespace="default")
    assert kube_server.get("replicasets", "rs", "default") is None
    # Preconditions.
    kube_server.create("pods", pod_body("pre"))
    with pytest.raises(ApiException) as exc:
        core.delete_namespaced_pod("pre", "default", body=client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid="00000000-0000-0000-0000-000000000000")))
    assert exc.value.status == 409


def test_services_get_cluster_ips(kube_api, kube_server):
    core = client.CoreV1Api(kube_api)
    assert core.read_namespaced_service("kubernetes", "default").spec.cluster_ip == "10.96.0.1"
    s = core.create_namespaced_service("default", service_body("web", {"app": "web"}))
    spec = kube_api.sanitize_for_serialization(s.spec)  # JSON field names, whatever the client version
    assert spec["clusterIP"].startswith("10.96.") and spec["clusterIPs"] == [spec["clusterIP"]]
    assert spec["ipFamilies"] == ["IPv4"] and spec["type"] == "ClusterIP"
    h = core.create_namespaced_service("default", service_body("headless", {"app": "web"}, cluster_ip="None"))
    assert h.spec.cluster_ip == "None"
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_service("default", service_body("dup", cluster_ip=s.spec.cluster_ip))
    assert exc.value.status == 422 and "already allocated" in status_of(exc.value)["message"]
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_service("web", "default", {"spec": {"clusterIP": "10.96.200.200",
                                                                  "clusterIPs": ["10.96.200.200"]}})
    assert exc.value.status == 422


def test_controls_down_503_garbage_and_closed_watches(kube_api, kube_server):
    core = client.CoreV1Api(kube_api)
    port = kube_server.port
    kube_server.set_down(True)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    kube_server.create("pods", pod_body("while-down"))  # the store still works
    kube_server.set_down(False)
    assert kube_server.port == port
    assert [p.metadata.name for p in core.list_namespaced_pod("default").items] == ["while-down"]
    kube_server.set_down(True, how="503")
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_pod("default")
    assert exc.value.status == 503 and status_of(exc.value)["reason"] == "ServiceUnavailable"
    kube_server.set_down(False)
    kube_server.garbage_mode(True)
    with pytest.raises(ValueError):
        json.loads(core.list_namespaced_pod("default", _preload_content=False).data)
    kube_server.garbage_mode(False)
    # An open watch is cut mid-stream.
    resp = core.list_namespaced_pod("default", watch=True, _preload_content=False,
                                    resource_version=str(kube_server.resource_version))
    wait_for(lambda: kube_server.open_watches() == 1, what="the watch to register")
    assert kube_server.close_watches() == 1
    with pytest.raises(Exception) as exc:
        list(iter_resp_lines(resp))
    assert "ProtocolError" in type(exc.value).__name__ or "Connection broken" in str(exc.value) or \
        isinstance(exc.value, OSError)
    resp.release_conn()
    wait_for(lambda: kube_server.open_watches() == 0, what="the watch to go away")


def test_token_auth():
    server = KubeApiServer(token="s3cret").start()
    try:
        good = client.CoreV1Api(client.ApiClient(server.configuration()))
        assert [n.metadata.name for n in good.list_namespace().items][:1] == ["default"]
        cfg = server.configuration()
        cfg.api_key = {}
        with pytest.raises(ApiException) as exc:
            client.CoreV1Api(client.ApiClient(cfg)).list_namespace()
        assert exc.value.status == 401
    finally:
        server.stop()


def test_bounded_history_expires_old_revisions():
    """Without any compact(): once more than history_size writes happened, older revisions are gone."""
    server = KubeApiServer(history_size=3, watch_timeout_scale=0.25).start()
    try:
        core = client.CoreV1Api(client.ApiClient(server.configuration()))
        start = str(server.resource_version)
        for i in range(3):
            server.create("pods", pod_body(f"p{i}"))
        assert len(raw_watch(core.list_namespaced_pod, "default", resource_version=start, timeout_seconds=1)) == 3
        server.create("pods", pod_body("p3"))  # the 4th write pushes the first one out
        events = raw_watch(core.list_namespaced_pod, "default", resource_version=start, timeout_seconds=1)
        assert [e["type"] for e in events] == ["ERROR"] and events[0]["object"]["code"] == 410
        floor = int(events[0]["object"]["message"].split("(")[1].rstrip(")"))
        kept = raw_watch(core.list_namespaced_pod, "default", resource_version=str(floor), timeout_seconds=1)
        assert [e["object"]["metadata"]["name"] for e in kept] == ["p1", "p2", "p3"]
    finally:
        server.stop()
