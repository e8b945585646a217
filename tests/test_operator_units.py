"""Operator pieces without servers: the address map (claims, precedence, reuse), the delta log (lag), the wire
framing, and the agent side's handling of batches (snapshot aside, deltas, kinds, garbage, Rust-style updates)."""

from __future__ import annotations

import pytest

from retina_core.identity import KIND_HOST, KIND_NODE, KIND_POD, KIND_SERVICE, Identity
from enricher.ipcache import IPCache
from retina_core.addr import ip_bytes
from enricher import OperatorSource, parse_enrichment, source_from_config
from enricher.operator_source import DEFAULT_ADDRESS


def source_from_options(options, node_name):
    return source_from_config(parse_enrichment(options), node_name)
from retina_core.units import ConfigError
from retina_core.proto import ipcache_pb2
from retina_operator.broadcast import DeltaLog, Lagged
from retina_operator.ipmap import Entry, IpMap
from retina_operator.wire import (SHUTDOWN_BATCH, SYNC_COMPLETE_BATCH, batches, frame, framed_delete,
                                  framed_upsert)

B = ip_bytes


def pod(name: str, ip: str, **kw) -> Entry:
    return Entry(KIND_POD, Identity(KIND_POD, namespace="default", pod_name=name, ip=ip, **kw))


def node(name: str, ip: str) -> Entry:
    return Entry(KIND_NODE, Identity(KIND_NODE, node_name=name, ip=ip))


def svc(name: str, ip: str) -> Entry:
    return Entry(KIND_SERVICE, Identity(KIND_SERVICE, namespace="default", service=name, ip=ip))


# -- the address map ---------------------------------------------------------------------------------------------


def test_ipmap_precedence_and_deletes_by_kind():
    m = IpMap()
    ip = "10.0.0.1"
    assert [(d.ip, d.entry, d.old) for d in m.set_claims(("node", "n1"), {ip: node("n", ip)}, rv=5)] == \
        [(ip, node("n", ip), None)]
    (d,) = m.set_claims(("service", "s1"), {ip: svc("s", ip)}, rv=6)
    assert d.entry.kind == KIND_SERVICE and d.old.kind == KIND_NODE
    (d,) = m.set_claims(("pod", "p1"), {ip: pod("p", ip)}, rv=7)
    assert d.entry.kind == KIND_POD
    assert m.release(("node", "n1")) == [] and m.release(("service", "s1")) == []  # the pod stays, untouched
    assert m.get(ip).kind == KIND_POD
    (d,) = m.release(("pod", "p1"))
    assert d.entry is None and d.old.kind == KIND_POD and len(m) == 0
    assert (m.upserts, m.deletes) == (3, 1)


def test_ipmap_reuse_later_claim_wins_and_stale_delete_is_harmless():
    m = IpMap()
    ip = "10.0.0.2"
    m.set_claims(("pod", "old"), {ip: pod("old", ip)}, rv=10)
    (d,) = m.set_claims(("pod", "new"), {ip: pod("new", ip)}, rv=20)
    assert d.entry.identity.pod_name == "new"
    # The old pod is modified later (a higher resourceVersion) but keeps the rank it first claimed with.
    assert m.set_claims(("pod", "old"), {ip: pod("old", ip, labels=("x=1",))}, rv=30) == []
    assert m.release(("pod", "old")) == [] and m.get(ip).identity.pod_name == "new"
    # After a restart everything is listed at once: a live pod beats a terminating one whatever the versions.
    m2 = IpMap()
    m2.set_claims(("pod", "new"), {ip: pod("new", ip)}, rv=20)
    assert m2.set_claims(("pod", "old"), {ip: pod("old", ip)}, rv=40, live=False) == []
    assert m2.get(ip).identity.pod_name == "new"


def test_ipmap_identical_upserts_are_skipped_and_counted():
    m = IpMap()
    m.set_claims(("pod", "p"), {"10.0.0.3": pod("p", "10.0.0.3"), "fd00::3": pod("p", "fd00::3")}, rv=1)
    before = m.get("10.0.0.3")
    assert m.set_claims(("pod", "p"), {"10.0.0.3": pod("p", "10.0.0.3"), "fd00::3": pod("p", "fd00::3")}, rv=2) == []
    assert m.skipped == 2 and m.get("10.0.0.3") is before  # the old object (and its encoded bytes) is kept
    (d,) = m.set_claims(("pod", "p"), {"10.0.0.3": pod("p", "10.0.0.3")}, rv=3)  # dropped its IPv6 address
    assert d.ip == "fd00::3" and d.entry is None
    assert m.kind_counts() == {KIND_POD: 1, KIND_SERVICE: 0, KIND_NODE: 0}
    with pytest.raises(ValueError, match="kind"):
        m.set_claims(("node", "n"), {"10.0.0.9": pod("p", "10.0.0.9")})


# -- the delta log -----------------------------------------------------------------------------------------------


def test_delta_log_reads_in_order_and_detects_lag():
    log = DeltaLog(4)
    log.append([b"a", b"b", b"c"])
    assert log.read(0) == ([b"a", b"b", b"c"], 3)
    assert log.read(1, max_items=1) == ([b"b"], 2)
    assert log.read(0, max_bytes=2) == ([b"a", b"b"], 2)
    assert log.read(3) == ([], 3)
    log.append([b"d", b"e"])  # 5 updates, ring of 4: sequence 0 is gone
    with pytest.raises(Lagged) as err:
        log.read(0)
    assert err.value.behind == 5 and "more than the queue holds (4)" in str(err.value)
    assert log.read(1) == ([b"b", b"c", b"d", b"e"], 5) and log.depth(1) == 4 and log.tail == 1
    with pytest.raises(ValueError):
        DeltaLog(0)


# -- the wire ----------------------------------------------------------------------------------------------------


def test_framed_updates_concatenate_into_batches():
    e = pod("p", "10.0.0.4", labels=("a=1",), workloads=(("Deployment", "d"), ("ReplicaSet", "d-1")),
            node_name="n", zone="z")
    data = framed_upsert("10.0.0.4", e) + framed_delete("10.0.0.5", KIND_SERVICE) + SYNC_COMPLETE_BATCH
    batch = ipcache_pb2.IpCacheBatch.FromString(data)
    up, dl, sync = batch.updates
    assert (up.update_type, up.ip, up.pod_name, list(up.labels), up.kind, up.zone, up.node_name) == \
        (ipcache_pb2.UPSERT, "10.0.0.4", "p", ["a=1"], ipcache_pb2.KIND_POD, "z", "n")
    assert [(w.kind, w.name) for w in up.workloads] == [("Deployment", "d"), ("ReplicaSet", "d-1")]
    assert (dl.update_type, dl.ip, dl.kind) == (ipcache_pb2.DELETE, "10.0.0.5", ipcache_pb2.KIND_SERVICE)
    assert sync.update_type == ipcache_pb2.SYNC_COMPLETE
    assert ipcache_pb2.IpCacheBatch.FromString(SHUTDOWN_BATCH).updates[0].update_type == ipcache_pb2.SHUTDOWN
    assert framed_upsert("10.0.0.4", e) is e.wire  # encoded once
    big = frame(b"x" * 300)  # a 2-byte varint length
    assert big[:3] == b"\x0a\xac\x02"
    parts = [frame(bytes([i]) * 40) for i in range(10)]
    out = list(batches(parts, max_bytes=100))
    assert [n for _, n in out] == [2, 2, 2, 2, 2] and b"".join(b for b, _ in out) == b"".join(parts)
    assert list(batches([big], max_bytes=10)) == [(big, 1)]


# -- the agent side, fed batches directly ------------------------------------------------------------------------


def update(t=ipcache_pb2.UPSERT, ip="", **kw):
    workloads = kw.pop("workloads", ())
    u = ipcache_pb2.IpCacheUpdate(update_type=t, ip=ip, **kw)
    for kind, name in workloads:
        u.workloads.add(kind=kind, name=name)
    return u


def batch(*updates):
    return ipcache_pb2.IpCacheBatch(updates=list(updates))


@pytest.fixture
def fed():
    src = OperatorSource("node-a", "127.0.0.1:1", start_timeout_s=0)
    cache = IPCache()
    src.cache = cache
    cache.register(src)
    return src, cache


def test_agent_builds_the_snapshot_aside_and_publishes_it_at_sync_complete(fed):
    src, cache = fed
    K = ipcache_pb2
    staging, _ = src._apply_batch(batch(
        update(ip="10.0.0.1", kind=K.KIND_POD, namespace="ns", pod_name="p", labels=["b=2", "a=1"],
               workloads=[("Deployment", "d"), ("ReplicaSet", "d-5")], node_name="node-b", zone="z", observed=True),
        update(ip="10.96.0.1", kind=K.KIND_SERVICE, namespace="default", service_name="kubernetes"),
        update(ip="192.168.0.1", kind=K.KIND_NODE, node_name="node-a", zone="z"),
        update(ip="192.168.0.2", kind=K.KIND_NODE, node_name="node-b")), {})
    assert staging is not None and len(cache) == 0 and not src.status()["loaded"]  # nothing published yet
    staging, _ = src._apply_batch(batch(update(K.SYNC_COMPLETE)), staging)
    assert staging is None and src.status()["loaded"] and src.status()["entries"] == 4 and cache.loaded
    p = cache.get(B("10.0.0.1"))
    assert (p.kind, p.namespace, p.pod_name, p.labels, p.workloads, p.node_name, p.zone, p.ip) == \
        (KIND_POD, "ns", "p", ("a=1", "b=2"), (("Deployment", "d"), ("ReplicaSet", "d-5")), "node-b", "z",
         "10.0.0.1")
    assert cache.get(B("192.168.0.1")).kind == KIND_HOST and cache.get(B("192.168.0.2")).kind == KIND_NODE
    assert src.observed_ips() == {B("10.0.0.1")}

    # Deltas: a batch is one apply; an address changing kind loses its old entry; updates merge per address.
    src._apply_batch(batch(update(ip="10.0.0.1", kind=K.KIND_NODE, node_name="node-c"),
                           update(ip="10.0.0.2", kind=K.KIND_POD, pod_name="q", namespace="ns"),
                           update(K.DELETE, ip="10.0.0.2"),
                           update(K.DELETE, ip="10.96.0.1"),
                           update(K.DELETE, ip="10.9.9.9")), None)
    assert cache.get(B("10.0.0.1")).kind == KIND_NODE and cache.kind_sizes()[KIND_POD] == 0
    assert cache.get(B("10.0.0.2")) is None and cache.get(B("10.96.0.1")) is None
    assert src.observed_ips() == frozenset() and src.status()["entries"] == 3

    # A reconnect: the old picture stays until the new snapshot is complete, then is replaced whole.
    staging, _ = src._apply_batch(batch(update(ip="10.0.0.7", kind=K.KIND_POD, pod_name="r", namespace="ns")), {})
    assert cache.get(B("10.0.0.1")) is not None and cache.get(B("10.0.0.7")) is None
    src._apply_batch(batch(update(K.SYNC_COMPLETE), update(ip="10.0.0.8", kind=K.KIND_POD, pod_name="s")), staging)
    assert {k for k in cache.view()} == {B("10.0.0.7"), B("10.0.0.8")} and src.status()["syncs"] == 2


def test_agent_ignores_garbage_and_understands_updates_without_kind(fed, caplog):
    src, cache = fed
    K = ipcache_pb2
    staging, ended = src._apply_batch(batch(
        update(ip="not-an-ip", kind=K.KIND_POD, pod_name="x"),
        update(K.DELETE, ip="also bad"),
        update(ip="10.0.0.3", kind=7),
        update(99, ip="10.0.0.4"),
        # The Rust reference operator sends no kind: pod_name -> pod, service_name -> service, else node.
        update(ip="10.0.0.5", pod_name="p", namespace="ns"),
        update(ip="10.96.0.5", service_name="s", namespace="ns"),
        update(ip="192.168.0.1", node_name="node-a"),
        update(K.SYNC_COMPLETE),
        update(K.SYNC_COMPLETE)), {})
    assert staging is None and not ended
    assert src.status()["invalid_updates"] == 4
    assert sum("ignoring an invalid update" in r.getMessage() for r in caplog.records) == 1  # logged once
    assert cache.get(B("10.0.0.5")).kind == KIND_POD and cache.get(B("10.96.0.5")).kind == KIND_SERVICE
    assert cache.get(B("192.168.0.1")).kind == KIND_HOST and len(cache) == 3
    # SHUTDOWN: the cache stays; the caller is told the stream ended on purpose.
    staging, ended = src._apply_batch(batch(update(K.SHUTDOWN), update(ip="10.0.0.6", pod_name="late")), None)
    assert ended and len(cache) == 3 and src.status()["shutdowns"] == 1
    assert "restarting (SHUTDOWN received)" in src.status()["error"]


def test_source_options(tmp_path):
    src = source_from_options({}, "n")
    assert (src.address, src.tls, src.start_timeout_s) == (DEFAULT_ADDRESS, False, 10.0)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    src = source_from_options({"operatorAddress": "[fd00::1]:9090", "operatorCAFile": str(ca),
                               "operatorServerName": "retina-operator", "operatorStartTimeout": "2s"}, "n")
    assert (src.address, src.tls, src.server_name, src.start_timeout_s) == \
        ("[fd00::1]:9090", True, "retina-operator", 2.0)
    assert source_from_options({"operatorTLS": True}, "n").tls
    for opts, match in (({"operatorAddress": "nohost"}, "operatorAddress: invalid value 'nohost' in the "
                                                         "enrichment options: not host:port"),
                        ({"operatorAddress": "h:99999"}, "operatorAddress"),
                        ({"operatorAddress": 5}, "operatorAddress: invalid value 5"),
                        ({"operatorTLS": "maybe"}, "operatorTLS: invalid value 'maybe'"),
                        ({"operatorCertFile": str(ca)}, "operatorCertFile: the client certificate and key"),
                        ({"operatorCAFile": str(tmp_path / "missing")}, "operatorCAFile: cannot read"),
                        ({"operatorStartTimeout": "soon"}, "operatorStartTimeout: invalid value 'soon'")):
        with pytest.raises(ConfigError, match=match):
            source_from_options(opts, "n")
