"""The IP cache (enricher.ipcache) and the enricher thread (enricher.enricher): exact identities, precedence,
atomic updates, the debug snapshot, and records through two rings."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from enricher.enricher import Enricher, EnricherLost
from retina_core.identity import (IDENTITY_HOST, IDENTITY_REMOTE_NODE, IDENTITY_WORLD, KIND_HOST, KIND_NODE,
                               KIND_POD, KIND_SERVICE, KIND_WORLD, WORLD, Identity)
from enricher.inventory import parse_inventory
from enricher.ipcache import IPCache
from retina_core.addr import ip_bytes, ip_text
from retina_core.record import IPPROTO_TCP, FlowRecord
from retina_core.ring import LostMarker, Ring
from retina_core.telemetry import ControlPlane


def wait_until(cond, timeout: float = 5.0, interval: float = 0.005):
    """Poll ``cond`` until it is truthy or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


def B(text: str) -> bytes:
    return ip_bytes(text)


INVENTORY = {
    "endpoints": [
        {"ips": ["10.0.0.5", "fd00::5"], "namespace": "shop", "podName": "web-1",
         "labels": {"app": "web", "tier": "front"},
         "workload": {"kind": "Deployment", "name": "web"}, "owner": {"kind": "ReplicaSet", "name": "web-7d9"},
         "node": "node-a"},
        {"ips": ["10.0.1.7"], "namespace": "shop", "podName": "db-0", "labels": {"app": "db"},
         "workload": {"kind": "StatefulSet", "name": "db"}, "node": "node-b"},
    ],
    "services": [
        {"ip": "10.96.0.20", "namespace": "shop", "name": "web", "selector": {"app": "web"}},
        {"ips": ["10.96.0.30", "fd00:96::30"], "namespace": "shop", "name": "db"},
    ],
    "nodes": [
        {"name": "node-a", "ips": ["192.168.1.10", "fd00:1::10"], "zone": "zone-1"},
        {"name": "node-b", "ips": ["192.168.1.11"], "zone": "zone-2"},
    ],
}


@pytest.fixture
def cache() -> IPCache:
    inv = parse_inventory(INVENTORY, node_name="node-a")
    c = IPCache()
    c.publish("inventory", pods=inv.pods, services=inv.services, nodes=inv.nodes)
    return c


# -- helpers ---------------------------------------------------------------------------------------------------


def test_ip_bytes_and_text():
    assert ip_bytes("10.0.0.5") == b"\x0a\x00\x00\x05"
    assert ip_bytes("fd00::5") == b"\xfd" + b"\x00" * 14 + b"\x05"
    assert ip_text(b"\x0a\x00\x00\x05") == "10.0.0.5"
    assert ip_text(ip_bytes("FD00:0::5")) == "fd00::5"
    with pytest.raises(ValueError, match="'x' is not an IP address"):
        ip_bytes("x")
    with pytest.raises(ValueError, match="4 or 16 bytes, not 3"):
        ip_text(b"abc")


# -- identities ------------------------------------------------------------------------------------------------


def test_pod_identities_ipv4_and_ipv6(cache):
    want = Identity(KIND_POD, namespace="shop", pod_name="web-1", labels=("tier=front", "app=web"),
                    workloads=(("Deployment", "web"), ("ReplicaSet", "web-7d9")), service="web",
                    node_name="node-a", zone="zone-1", ip="10.0.0.5")
    got = cache.get(B("10.0.0.5"))
    assert got == want
    assert got.labels == ("app=web", "tier=front")
    assert got.workload_kind == "Deployment" and got.workload_name == "web"
    assert 256 <= got.identity < 65536
    v6 = cache.lookup(B("fd00::5"))
    assert v6.kind == KIND_POD and v6.pod_name == "web-1" and v6.ip == "fd00::5" and v6.zone == "zone-1"
    assert v6.identity == got.identity  # same namespace and labels
    db = cache.get(B("10.0.1.7"))
    assert db == Identity(KIND_POD, namespace="shop", pod_name="db-0", labels=("app=db",),
                          workloads=(("StatefulSet", "db"),), node_name="node-b", zone="zone-2", ip="10.0.1.7")
    assert db.service == ""  # the db service has no selector


def test_service_identities(cache):
    assert cache.get(B("10.96.0.20")) == Identity(KIND_SERVICE, namespace="shop", service="web", ip="10.96.0.20")
    got6 = cache.get(B("fd00:96::30"))
    assert got6 == Identity(KIND_SERVICE, namespace="shop", service="db", ip="fd00:96::30")
    assert got6.pod_name == "" and got6.workloads == ()


def test_node_identities(cache):
    own = cache.get(B("192.168.1.10"))
    assert own == Identity(KIND_HOST, node_name="node-a", zone="zone-1", ip="192.168.1.10")
    assert own.identity == IDENTITY_HOST
    assert cache.get(B("fd00:1::10")).kind == KIND_HOST
    other = cache.get(B("192.168.1.11"))
    assert other == Identity(KIND_NODE, node_name="node-b", zone="zone-2", ip="192.168.1.11")
    assert other.identity == IDENTITY_REMOTE_NODE


def test_world_on_miss(cache):
    for text in ("8.8.8.8", "2001:db8::1"):
        assert cache.get(B(text)) is None
        assert cache.lookup(B(text)) is WORLD
    assert WORLD.kind == KIND_WORLD and WORLD.identity == IDENTITY_WORLD
    assert B("10.0.0.5") in cache and len(cache) == 9


def test_ipv4_mapped_ipv6_is_a_different_key(cache):
    assert cache.get(B("::ffff:10.0.0.5")) is None


# -- precedence ----------------------------------------------------------------------------------------------


def test_pod_over_service_over_node():
    ip = B("10.1.2.3")
    pod = Identity(KIND_POD, namespace="ns", pod_name="p", ip="10.1.2.3")
    svc = Identity(KIND_SERVICE, namespace="ns", service="s", ip="10.1.2.3")
    node = Identity(KIND_NODE, node_name="n", ip="10.1.2.3")
    c = IPCache()
    c.publish("src", pods={ip: pod}, services={ip: svc}, nodes={ip: node})
    assert c.get(ip) is pod
    c.apply("src", deletes=[(KIND_POD, ip)])
    assert c.get(ip) is svc
    c.apply("src", deletes=[(KIND_SERVICE, ip)])
    assert c.get(ip) is node
    c.apply("src", upserts=[(KIND_POD, ip, pod)])
    assert c.get(ip) is pod
    c.apply("src", deletes=[(KIND_POD, ip), (KIND_NODE, ip)])
    assert c.get(ip) is None and c.lookup(ip) is WORLD
    assert c.kind_sizes() == {"pod": 0, "service": 0, "node": 0}


def test_precedence_across_sources():
    ip = B("fd00::9")
    pod = Identity(KIND_POD, namespace="netns", pod_name="p", ip="fd00::9")
    node = Identity(KIND_NODE, node_name="n", ip="fd00::9")
    c = IPCache()
    c.publish("netns", pods={ip: pod})
    c.publish("inventory", nodes={ip: node})  # published later, but node < pod
    assert c.get(ip) is pod
    c.publish("netns", pods={})
    assert c.get(ip) is node
    c.remove_source("inventory")
    assert c.get(ip) is None


def test_same_kind_later_source_wins():
    ip = B("10.9.9.9")
    a = Identity(KIND_POD, namespace="a", pod_name="a")
    b = Identity(KIND_POD, namespace="b", pod_name="b")
    c = IPCache()
    c.publish("first", pods={ip: a})
    c.publish("second", pods={ip: b})
    assert c.get(ip) is b
    c.apply("first", upserts=[(KIND_POD, ip, a)])  # re-resolved on apply too
    assert c.get(ip) is b


def test_version_and_loaded():
    c = IPCache()
    assert c.version == 0 and c.loaded is False and c.updated_at is None
    c.publish("s")
    assert c.version == 1 and c.loaded is True and c.updated_at is not None
    c.apply("s", upserts=[(KIND_POD, B("1.2.3.4"), Identity(KIND_POD, pod_name="x"))])
    assert c.version == 2


def test_apply_rejects_bad_input():
    c = IPCache()
    with pytest.raises(ValueError, match="unknown map kind 'world': expected one of pod, service, node"):
        c.apply("s", upserts=[("world", B("1.2.3.4"), WORLD)])
    with pytest.raises(ValueError, match="packed address must be 4 or 16 bytes, not 9"):
        c.apply("s", deletes=[(KIND_POD, b"1.2.3.4.5")])
    assert c.version == 0


def test_publish_copies_the_callers_mapping():
    pods = {B("1.1.1.1"): Identity(KIND_POD, pod_name="a")}
    c = IPCache()
    c.publish("s", pods=pods)
    view = c.view()
    pods[B("2.2.2.2")] = Identity(KIND_POD, pod_name="b")
    assert c.get(B("2.2.2.2")) is None and len(view) == 1


# -- atomic updates ----------------------------------------------------------------------------------------------

N_IPS = 600
ATOMIC_IPS = [B(f"10.{i // 250}.{i % 250}.1") for i in range(N_IPS // 2)] + \
    [B(f"fd00:a::{i:x}") for i in range(N_IPS // 2)]
PROBES = (ATOMIC_IPS[0], ATOMIC_IPS[N_IPS // 2], ATOMIC_IPS[-1])  # first v4, first v6, last v6


def _generation(g: int) -> dict[bytes, Identity]:
    tag = (f"gen={g}",)
    return {ip: Identity(KIND_POD, namespace="atomic", pod_name=f"p{g}", labels=tag) for ip in ATOMIC_IPS}


class InPlacePublish(IPCache):
    """A deliberately broken cache whose publish updates the live dict entry by entry (apply is correct)."""

    def publish(self, source, pods=None, services=None, nodes=None):
        if not self._map:
            return super().publish(source, pods, services, nodes)
        m = self._map
        for ip, ident in (pods or {}).items():
            m[ip] = ident
        self.version += 1


class InPlaceApply(IPCache):
    """A deliberately broken cache whose apply updates the live dict entry by entry (publish is correct)."""

    def apply(self, source, upserts=(), deletes=()):
        m = self._map
        for _kind, ip, ident in upserts:
            m[ip] = ident
        self.version += 1


def _hammer(cache: IPCache, max_rounds: int, stop_on_mixed: bool) -> tuple[int, int]:
    """A writer alternates whole-snapshot publishes and batch applies, each moving every address to a new
    generation; a reader takes one view at a time and checks that its probe addresses agree on the generation.
    Returns (checks, mixed views seen)."""
    gens = [_generation(g) for g in range(4)]
    cache.publish("atomic", pods=gens[0])
    done = threading.Event()
    result = {"checks": 0, "mixed": 0}

    def reader():
        while not done.is_set():
            m = cache.view()
            tags = {m[ip].labels for ip in PROBES}
            result["checks"] += 1
            if len(tags) != 1:
                result["mixed"] += 1
                if stop_on_mixed:
                    done.set()

    t = threading.Thread(target=reader)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so a non-atomic update would be observed mid-way
    try:
        t.start()
        for r in range(1, max_rounds + 1):
            if done.is_set():
                break
            g = gens[r % 4]
            if r % 2:
                cache.publish("atomic", pods=g)
            else:
                cache.apply("atomic", upserts=[(KIND_POD, ip, ident) for ip, ident in g.items()])
        done.set()
        t.join(10)
    finally:
        sys.setswitchinterval(old)
    return result["checks"], result["mixed"]


def test_updates_are_atomic_for_readers():
    cache = IPCache()
    checks, mixed = _hammer(cache, max_rounds=400, stop_on_mixed=False)
    assert mixed == 0
    assert checks > 100  # the reader really ran alongside the writer
    assert cache.version == 401


@pytest.mark.parametrize("broken", [InPlacePublish, InPlaceApply])
def test_the_atomicity_check_catches_in_place_updates(broken):
    """Proof that the test above can fail: the same check against a cache that updates its live dict in place
    (in publish, or in apply) sees mixed snapshots."""
    checks, mixed = _hammer(broken(), max_rounds=20000, stop_on_mixed=True)
    assert mixed >= 1


# -- debug snapshot ----------------------------------------------------------------------------------------------


def test_snapshot_json(cache):
    class Fake:
        name = "inventory"

        def status(self):
            return {"loaded": True, "error": None, "entries": 10, "updated_at": 1.5}

    cache.register(Fake())
    snap = cache.snapshot_json()
    assert snap["version"] == 1 and snap["loaded"] is True and snap["entries"] == 9
    assert snap["kinds"] == {"pod": 3, "service": 3, "node": 3}
    assert snap["sources"] == {"inventory": {"loaded": True, "error": None, "entries": 10, "updated_at": 1.5}}
    assert list(snap["ips"]) == ["10.0.0.5", "10.0.1.7", "10.96.0.20", "10.96.0.30", "192.168.1.10",
                                 "192.168.1.11", "fd00::5", "fd00:1::10", "fd00:96::30"]
    assert snap["ips"]["10.96.0.20"] == {"kind": "service", "namespace": "shop", "service": "web",
                                         "identity": cache.get(B("10.96.0.20")).identity, "ip": "10.96.0.20"}
    assert snap["ips"]["192.168.1.10"] == {"kind": "host", "node_name": "node-a", "zone": "zone-1",
                                           "identity": 1, "ip": "192.168.1.10"}
    import json

    json.dumps(snap)  # JSON-ready


# -- the enricher thread -----------------------------------------------------------------------------------------


def rec(src: str, dst: str, sport: int = 1000) -> FlowRecord:
    v = 6 if ":" in src else 4
    return FlowRecord(time.time_ns(), v, B(src), B(dst), IPPROTO_TCP, sport, 80)


def drain(reader) -> list:
    out = []
    while True:
        batch = reader.next_batch(1000, timeout_s=0)
        if not batch:
            return out
        out.extend(batch)


@pytest.fixture
def rings():
    return Ring(1023), Ring(4095)


def test_enricher_end_to_end(cache, rings):
    inp, out = rings
    tel = ControlPlane()
    enr = Enricher(cache, inp, out, tel, batch_size=64)
    downstream = out.reader("oldest")
    enr.start()
    assert wait_until(enr.alive)
    pairs = [("10.0.0.5", "10.96.0.20"), ("fd00::5", "fd00:96::30"), ("10.0.1.7", "192.168.1.11"),
             ("8.8.8.8", "10.0.0.5"), ("2001:db8::1", "fd00:1::10")]
    sent = [rec(s, d, sport=i) for i in range(100) for s, d in pairs]
    for i in range(0, len(sent), 37):
        inp.write_batch(sent[i:i + 37])
    assert wait_until(lambda: enr.records == len(sent))
    got = drain(downstream)
    assert got == sent  # the same objects, in order, nothing else
    assert all(a is b for a, b in zip(got, sent))
    for r in got:
        assert r.source is cache.lookup(r.src_ip) and r.destination is cache.lookup(r.dst_ip)
    first = got[0]
    assert (first.source.kind, first.source.pod_name, first.destination.kind, first.destination.service) == \
        (KIND_POD, "web-1", KIND_SERVICE, "web")
    assert got[1].source.ip == "fd00::5" and got[1].destination.service == "db"
    assert got[2].destination.kind == KIND_NODE and got[2].destination.zone == "zone-2"
    assert got[3].source is WORLD and got[3].destination.pod_name == "web-1"
    assert got[4].source is WORLD and got[4].destination.kind == KIND_HOST
    assert enr.lost == 0 and tel.lost_events == {}
    assert enr.stop() is True
    assert not enr.alive()


def test_enricher_keeps_existing_identities(cache, rings):
    inp, out = rings
    enr = Enricher(cache, inp, out)
    mine = Identity(KIND_POD, namespace="x", pod_name="preset")
    r = rec("10.0.0.5", "10.96.0.20")
    r.destination = mine
    enr.start()
    inp.write(r)
    assert wait_until(lambda: enr.records == 1)
    assert r.destination is mine and r.source.pod_name == "web-1"
    enr.stop()


def test_enricher_counts_and_forwards_lost_records(cache, rings):
    inp, out = rings
    tel = ControlPlane()
    enr = Enricher(cache, inp, out, tel)  # reader positioned at 0, thread not running yet
    sent = [rec("10.0.0.5", "8.8.8.8", sport=i % 65536) for i in range(3000)]
    inp.write_batch(sent)  # overruns the 1023-slot input ring
    downstream = out.reader("oldest")
    enr.start()
    assert wait_until(lambda: enr.records == 1023)
    got = drain(downstream)
    assert got[0] == LostMarker(3000 - 1023) and type(got[0]) is EnricherLost
    assert got[0].where == "enricher_ring"
    assert got[1:] == sent[3000 - 1023:]
    assert all(r.source.pod_name == "web-1" and r.destination is WORLD for r in got[1:])
    assert all(r.source is None for r in sent[:3000 - 1023])  # never seen
    assert enr.lost == 1977
    assert tel.lost_events == {("enricher_ring", "enricher"): 1977}
    assert tel.lost_total("enricher_ring", "enricher") == 1977
    enr.stop()


def test_enricher_can_drop_lost_markers(cache, rings):
    inp, out = rings
    tel = ControlPlane()
    enr = Enricher(cache, inp, out, tel, forward_lost=False)
    inp.write_batch([rec("10.0.0.5", "8.8.8.8") for _ in range(1030)])
    downstream = out.reader("oldest")
    enr.start()
    assert wait_until(lambda: enr.records == 1023)
    got = drain(downstream)
    assert len(got) == 1023 and not any(isinstance(x, LostMarker) for x in got)
    assert tel.lost_events == {("enricher_ring", "enricher"): 7}
    enr.stop()


def test_enricher_passes_other_items_through(cache, rings):
    inp, out = rings
    enr = Enricher(cache, inp, out)
    upstream_marker = LostMarker(5)
    items = [rec("10.0.0.5", "8.8.8.8"), upstream_marker, "junk", rec("8.8.8.8", "fd00::5")]
    inp.write_batch(items)
    downstream = out.reader("oldest")
    enr.start()
    assert wait_until(lambda: out.total_written == 4)
    got = drain(downstream)
    assert got == items and got[1] is upstream_marker
    assert items[0].source.pod_name == "web-1" and items[3].destination.ip == "fd00::5"
    assert enr.lost == 0
    enr.stop()


def test_enricher_stop_drains_the_input(cache, rings):
    inp, out = rings
    enr = Enricher(cache, inp, out, wait_s=60.0)  # a long wait: stop() must wake it, not time out
    enr.start()
    assert wait_until(enr.alive)
    sent = [rec("10.0.1.7", "10.0.0.5", sport=i) for i in range(900)]
    inp.write_batch(sent)
    t0 = time.monotonic()
    assert enr.stop(timeout_s=10) is True
    assert time.monotonic() - t0 < 5
    assert not enr.alive()
    assert drain(out.reader("oldest")) == sent
    assert all(r.source.pod_name == "db-0" for r in sent)


def test_enricher_sees_cache_updates(rings):
    inp, out = rings
    c = IPCache()
    enr = Enricher(c, inp, out)
    enr.start()
    a = rec("10.5.5.5", "10.6.6.6")
    inp.write(a)
    assert wait_until(lambda: enr.records == 1)
    assert a.source is WORLD
    c.publish("s", pods={B("10.5.5.5"): Identity(KIND_POD, namespace="n", pod_name="new")})
    b = rec("10.5.5.5", "10.6.6.6")
    inp.write(b)
    assert wait_until(lambda: enr.records == 2)
    assert b.source.pod_name == "new" and b.destination is WORLD
    enr.stop()


def test_enricher_rejects_double_start(cache, rings):
    enr = Enricher(cache, *rings)
    enr.start()
    with pytest.raises(RuntimeError, match="already started"):
        enr.start()
    enr.stop()
    assert Enricher(cache, *rings).stop() is True  # never started



def test_enricher_stop_ends_despite_a_busy_writer(cache, rings):
    """stop() drains up to where the input was when it was called, not forever behind a writer that keeps on."""
    inp, out = rings
    enr = Enricher(cache, inp, out)
    enr.start()
    halt = threading.Event()
    batch = [rec("10.0.0.5", "8.8.8.8") for _ in range(64)]

    def writer():
        while not halt.is_set():
            inp.write_batch(batch)

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert wait_until(lambda: enr.records > 10_000)
        assert enr.stop(timeout_s=10) is True
    finally:
        halt.set()
        t.join()
