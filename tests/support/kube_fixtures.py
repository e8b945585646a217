"""Helpers for tests against :class:`tests.support.kube_api_server.KubeApiServer` with the real client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import pytest

from tests.support.kube_api_server import KubeApiServer

T = TypeVar("T")


def wait_for(cond: Callable[[], T], timeout_s: float = 5.0, what: str = "condition", interval_s: float = 0.01) -> T:
    """Poll ``cond`` until it returns something truthy; return that, or fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what} (last value {value!r})")
        time.sleep(interval_s)


@pytest.fixture
def kube_server():
    """A started test API server: bookmarks every 0.2 s, pods finish graceful deletion after 20 ms, a watch's
    ``timeoutSeconds`` lasts a quarter of that."""
    server = KubeApiServer(bookmark_interval_s=0.2, kubelet_delay_s=0.02, watch_timeout_scale=0.25).start()
    yield server
    server.stop()


@pytest.fixture
def kube_api(kube_server):
    """A ``kubernetes.client.ApiClient`` for ``kube_server``."""
    from kubernetes import client

    api = client.ApiClient(kube_server.configuration())
    yield api
    api.close()


def owner(kind: str, name: str, uid: str, api_version: str = "apps/v1") -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": True,
            "blockOwnerDeletion": True}


def pod_body(name: str, node: str = "", labels: Mapping[str, str] | None = None,
             owners: Iterable[Mapping[str, Any]] = (), host_network: bool = False,
             namespace: str = "default") -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    if host_network:
        spec["hostNetwork"] = True
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
    if owners:
        meta["ownerReferences"] = [dict(o) for o in owners]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def run_pod(server: KubeApiServer, name: str, node: str, ips: Iterable[str], labels: Mapping[str, str] | None = None,
            owners: Iterable[Mapping[str, Any]] = (), host_network: bool = False,
            namespace: str = "default") -> dict[str, Any]:
    """Create a pod and report it Running with ``ips`` through the status subresource, as the kubelet does."""
    server.create("pods", pod_body(name, node, labels, owners, host_network, namespace))
    ips = list(ips)
    status = {"phase": "Running", "podIP": ips[0] if ips else None, "podIPs": [{"ip": ip} for ip in ips]}
    return server.patch("pods", name, {"status": status}, namespace=namespace, status=True)


def node_body(name: str, ips: Iterable[str], zone: str = "") -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name}
    if zone:
        labels["topology.kubernetes.io/zone"] = zone
    addrs = [{"type": "InternalIP", "address": ip} for ip in ips] + [{"type": "Hostname", "address": name}]
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "status": {"addresses": addrs}}


def service_body(name: str, selector: Mapping[str, str] | None = None, cluster_ip: str | None = None,
                 namespace: str = "default", **spec: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"ports": [{"port": 80, "protocol": "TCP"}], **spec}
    if selector is not None:
        s["selector"] = dict(selector)
    if cluster_ip is not None:
        s["clusterIP"] = cluster_ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": s}
