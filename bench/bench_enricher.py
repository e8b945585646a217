"""Throughput of the enricher (enricher.enricher) with a 10k-entry IP cache: records/s on one core.

Run: ``.venv/bin/python bench/bench_enricher.py``. Prints results; asserts nothing about time.

* ``process``: ``Enricher.process`` called directly on batches of 256 (the per-record cost, no rings, no thread)
  for all-hit, all-miss, half/half, IPv6 and already-enriched records.
* ``thread``: the enricher thread between two rings, fed by a writer thread that keeps the input lag below half
  the ring (so nothing is lost) and drained by one downstream reader; all three threads share the GIL.
* cache costs: ``lookup`` per call, ``publish`` of a 10k snapshot, ``apply`` of 100 upserts on 10k entries.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enricher.enricher import Enricher  # noqa: E402
from retina_core.identity import KIND_NODE, KIND_POD, KIND_SERVICE, Identity  # noqa: E402
from enricher.ipcache import IPCache  # noqa: E402
from retina_core.addr import ip_bytes  # noqa: E402
from retina_core.record import IPPROTO_TCP, FlowRecord  # noqa: E402
from retina_core.ring import Ring  # noqa: E402

N = 500_000
BATCH = 256
ENTRIES = 10_000


def build_cache() -> tuple[IPCache, list[bytes]]:
    """10k entries: 6000 IPv4 pods, 2000 IPv6 pods, 1000 services, 1000 nodes. Returns (cache, pod keys)."""
    pods, services, nodes = {}, {}, {}
    for i in range(6000):
        ip = f"10.{i // 250}.{i % 250}.{1 + i % 7}"
        pods[ip_bytes(ip)] = Identity(KIND_POD, namespace=f"ns{i % 20}", pod_name=f"pod-{i}",
                                      labels=(f"app=a{i % 50}",), workloads=(("Deployment", f"a{i % 50}"),),
                                      node_name=f"node-{i % 100}", zone=f"z{i % 3}", ip=ip)
    for i in range(2000):
        ip = f"fd00:10::{i:x}"
        pods[ip_bytes(ip)] = Identity(KIND_POD, namespace="v6", pod_name=f"pod6-{i}", ip=ip)
    for i in range(1000):
        ip = f"10.96.{i // 250}.{i % 250}"
        services[ip_bytes(ip)] = Identity(KIND_SERVICE, namespace="svc", service=f"s{i}", ip=ip)
    for i in range(1000):
        ip = f"192.168.{i // 250}.{i % 250}"
        nodes[ip_bytes(ip)] = Identity(KIND_NODE, node_name=f"node-{i}", ip=ip)
    cache = IPCache()
    cache.publish("bench", pods=pods, services=services, nodes=nodes)
    assert len(cache) == ENTRIES
    return cache, list(pods)


def make_records(n: int, kind: str, hits: list[bytes]) -> list[FlowRecord]:
    misses = [ip_bytes(f"172.16.{i // 250}.{i % 250}") for i in range(1000)]
    v6_hits = [k for k in hits if len(k) == 16]
    out = []
    for i in range(n):
        if kind == "hits":
            s, d = hits[i % len(hits)], hits[(i * 7 + 3) % len(hits)]
        elif kind == "misses":
            s, d = misses[i % 1000], misses[(i * 7 + 3) % 1000]
        elif kind == "ipv6":
            s, d = v6_hits[i % len(v6_hits)], v6_hits[(i * 7 + 3) % len(v6_hits)]
        else:  # half: source hits, destination misses
            s, d = hits[i % len(hits)], misses[i % 1000]
        out.append(FlowRecord(0, 6 if len(s) == 16 else 4, s, d, IPPROTO_TCP, 1000 + i % 50000, 80))
    return out


def bench_process(cache: IPCache, records: list[FlowRecord]) -> float:
    """Enricher.process over batches of BATCH; returns records/s."""
    enr = Enricher(cache, Ring(1023), Ring(1023))
    batches = [records[i:i + BATCH] for i in range(0, len(records), BATCH)]
    process = enr.process
    t0 = time.perf_counter()
    for b in batches:
        process(b)
    return len(records) / (time.perf_counter() - t0)


def bench_thread(cache: IPCache, records: list[FlowRecord]) -> dict[str, float]:
    """Writer thread -> input ring -> enricher thread -> output ring -> reader thread; returns records/s."""
    inp, out = Ring(4095), Ring(4095)
    enr = Enricher(cache, inp, out, batch_size=BATCH, wait_s=0.05)
    downstream = out.reader("now")
    got = {"n": 0, "lost": 0}
    n = len(records)

    def consume() -> None:
        while got["n"] + got["lost"] < n:
            for item in downstream.next_batch(1024, timeout_s=0.05):
                if isinstance(item, FlowRecord):
                    got["n"] += 1
                else:
                    got["lost"] += item.count

    reader = threading.Thread(target=consume)
    enr.start()
    reader.start()
    t0 = time.perf_counter()
    for i in range(0, n, BATCH):
        while enr.lag > 2048 or downstream.lag > 2048:  # keep both rings from overrunning: measure throughput
            time.sleep(0)
        inp.write_batch(records[i:i + BATCH])
    reader.join(60)
    dt = time.perf_counter() - t0
    enr.stop()
    return {"rps": n / dt, "delivered": got["n"], "lost": got["lost"] + enr.lost}


def bench_cache(cache: IPCache, keys: list[bytes]) -> dict[str, float]:
    n = 1_000_000
    probe = keys[:1000] * (n // 1000)
    lookup = cache.lookup
    t0 = time.perf_counter()
    for k in probe:
        lookup(k)
    t_lookup = (time.perf_counter() - t0) / n
    get = cache.view().get
    t0 = time.perf_counter()
    for k in probe:
        get(k)
    t_get = (time.perf_counter() - t0) / n
    snap = dict(cache.view())
    t0 = time.perf_counter()
    for _ in range(20):
        cache.publish("bench2", pods=snap)
    t_publish = (time.perf_counter() - t0) / 20
    cache.remove_source("bench2")
    ups = [(KIND_POD, k, Identity(KIND_POD, pod_name="x")) for k in keys[:100]]
    t0 = time.perf_counter()
    for _ in range(20):
        cache.apply("bench", upserts=ups)
    t_apply = (time.perf_counter() - t0) / 20
    return {"lookup_ns": t_lookup * 1e9, "view_get_ns": t_get * 1e9, "publish_ms": t_publish * 1e3,
            "apply_ms": t_apply * 1e3}


def main() -> None:
    cache, hits = build_cache()
    print(f"IP cache: {len(cache)} entries; {N} records per run, batches of {BATCH}")
    for kind in ("hits", "misses", "half", "ipv6"):
        rps = bench_process(cache, make_records(N, kind, hits))
        print(f"  process {kind:<9} {rps / 1e6:6.2f} M records/s  ({1e9 / rps:5.0f} ns/record)")
    pre = make_records(N, "hits", hits)
    bench_process(cache, pre)  # now every record carries identities
    rps = bench_process(cache, pre)
    print(f"  process {'enriched':<9} {rps / 1e6:6.2f} M records/s  ({1e9 / rps:5.0f} ns/record)")
    r = bench_thread(cache, make_records(N, "half", hits))
    print(f"  thread  {'half':<9} {r['rps'] / 1e6:6.2f} M records/s end to end "
          f"(writer + enricher + reader threads, one GIL); delivered {r['delivered']}, lost {r['lost']}")
    c = bench_cache(cache, hits)
    print(f"  cache.lookup {c['lookup_ns']:.0f} ns/call, view().get {c['view_get_ns']:.0f} ns/call, "
          f"publish 10k {c['publish_ms']:.2f} ms, apply 100 upserts {c['apply_ms']:.2f} ms")


if __name__ == "__main__":
    main()
