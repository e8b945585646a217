"""Fixtures and helpers for the operator tests (tests/test_operator*.py); no tests here.

* ``operators``: a factory of started :class:`retina_operator.operator.Operator` instances talking to the test API
  server (gRPC and HTTP on 127.0.0.1, free ports), with fast backoffs; stopped at the end.
* ``agents``: a factory of started :class:`enricher.operator_source.OperatorSource` instances, each with its own
  :class:`RecordingCache`; stopped at the end.
* :func:`in_sync`: whether an agent's cache holds exactly the operator's map.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest

from retina_core.identity import KIND_HOST, KIND_NODE, KIND_POD, KIND_SERVICE, Identity
from enricher.ipcache import IPCache
from retina_core.addr import ip_bytes
from enricher.operator_source import OperatorSource
from retina_operator.operator import Operator
from tests.support.kube_fixtures import kube_server  # noqa: F401 - re-exported fixture

FAST_OPERATOR = dict(backoff_initial_s=0.05, backoff_max_s=0.4, resync_period_s=0, shutdown_grace_s=1.0,
                     watch_timeout_s=30)
FAST_AGENT = dict(backoff_initial_s=0.02, backoff_max_s=0.2, start_timeout_s=5.0)
B = ip_bytes


class RecordingCache(IPCache):
    """An IPCache that remembers every write, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple] = []
        self.lock = threading.Lock()

    def publish(self, source, pods=None, services=None, nodes=None):
        with self.lock:
            self.writes.append(("publish", dict(pods or {}), dict(services or {}), dict(nodes or {})))
        super().publish(source, pods, services, nodes)

    def apply(self, source, upserts=(), deletes=()):
        upserts, deletes = list(upserts), list(deletes)
        with self.lock:
            self.writes.append(("apply", upserts, deletes))
        super().apply(source, upserts, deletes)

    def history(self, ip: str) -> list[Identity | None]:
        """What happened to ``ip``, write by write: its Identity after each write that touched it (None: gone)."""
        out: list[Identity | None] = []
        with self.lock:
            writes = list(self.writes)
        for w in writes:
            if w[0] == "publish":
                for m in w[1:]:
                    if B(ip) in m:
                        out.append(m[B(ip)])
            else:
                ups = [ident for _k, p, ident in w[1] if p == B(ip)]
                if ups:
                    out += ups
                elif any(p == B(ip) for _k, p in w[2]):
                    out.append(None)
        return out

    def count(self, op: str) -> int:
        with self.lock:
            return sum(1 for w in self.writes if w[0] == op)


def expected_view(op: Operator, node: str) -> dict[bytes, Identity]:
    """The identities an agent on ``node`` should hold for the operator's current map."""
    with op.state.lock:
        items = dict(op.state.ipmap.resolved)
    out = {}
    for ip, e in items.items():
        ident = e.identity
        if e.kind == KIND_NODE and ident.node_name == node:
            ident = Identity(KIND_HOST, node_name=ident.node_name, zone=ident.zone, ip=ident.ip)
        out[B(ip)] = ident
    return out


def in_sync(op: Operator, cache: IPCache, node: str = "node-a") -> bool:
    return dict(cache.view()) == expected_view(op, node)


@pytest.fixture
def operators(kube_server):  # noqa: F811
    made: list[Operator] = []

    def make(start: bool = True, port: int = 0, **kw: Any) -> Operator:
        op = Operator(kube_server.configuration(), grpc_host="127.0.0.1", grpc_port=port, http_host="127.0.0.1",
                      http_port=0, **{**FAST_OPERATOR, **kw})
        made.append(op)
        if start:
            op.start()
        return op

    yield make
    for op in made:
        op.stop(send_shutdown=False)


@pytest.fixture
def agents():
    made: list[OperatorSource] = []

    def make(target: Operator | int | str, node: str = "node-a", cache: IPCache | None = None, start: bool = True,
             **kw: Any) -> tuple[OperatorSource, Any]:
        if isinstance(target, Operator):
            target = f"127.0.0.1:{target.grpc_port}"
        elif isinstance(target, int):
            target = f"127.0.0.1:{target}"
        src = OperatorSource(node, target, **{**FAST_AGENT, **kw})
        cache = cache if cache is not None else RecordingCache()
        made.append(src)
        if start:
            src.start(cache)
        return src, cache

    yield make
    for s in made:
        s.stop()


def http_get(op: Operator | int, path: str) -> tuple[int, str]:
    port = op.http_port if isinstance(op, Operator) else op
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def http_json(op: Operator | int, path: str) -> Any:
    code, body = http_get(op, path)
    assert code == 200, body
    return json.loads(body)


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text (``labels`` like ``{kind="pod"}``)."""
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")


__all__ = ["B", "FAST_AGENT", "FAST_OPERATOR", "KIND_HOST", "KIND_NODE", "KIND_POD", "KIND_SERVICE",
           "RecordingCache", "agents", "expected_view", "http_get", "http_json", "in_sync", "kube_server", "metric",
           "operators"]
