"""Cost of Hubble filter evaluation on compact records (retina_exporter.hubble.filters) against converting every
record with to_proto, in one run, in records/s (best of 3 passes over a mix of records).

Run: ``.venv/bin/python bench/bench_filters.py``. Prints results; asserts nothing about time.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retina_core.proto import ensure_generated  # noqa: E402

ensure_generated()

from google.protobuf import json_format  # noqa: E402

from retina_core.convert import to_proto  # noqa: E402
from retina_core.dns.record import DnsRecord  # noqa: E402
from retina_core.identity import Identity  # noqa: E402
from retina_core.proto import flow_pb2  # noqa: E402
from retina_core.record import DIR_EGRESS, DIR_INGRESS, TCP_ACK, TCP_PSH, TCP_SYN, FlowRecord  # noqa: E402
from retina_exporter.hubble.filters import FilterBuilder, FlowMatcher  # noqa: E402

N = 20_000


def records() -> list[FlowRecord]:
    """A mix like a busy node's: TCP between pods of several namespaces, DNS, UDP, ICMP, some drops."""
    pods = []
    for i, ns in enumerate(("shop", "data", "kube-system", "web", "batch")):
        for j in range(8):
            pods.append(Identity("pod", namespace=ns, pod_name=f"{ns}-app-{j}-7d9f", labels=(f"app={ns}-{j % 3}",
                                 "tier=backend"), workloads=(("Deployment", f"{ns}-app-{j}"),), service=f"{ns}-svc",
                                 names=(f"{ns}-app-{j}.{ns}.svc.cluster.local",)))
    world = Identity("world")
    out = []
    for k in range(N):
        src, dst = pods[k % len(pods)], pods[(k * 7 + 3) % len(pods)]
        a = socket.inet_aton(f"10.244.{k % 5}.{k % 200 + 1}")
        b = socket.inet_aton(f"10.244.{(k + 2) % 5}.{(k * 3) % 200 + 1}")
        kind = k % 10
        if kind < 6:
            r = FlowRecord(time.time_ns(), 4, a, b, 6, 40000 + k % 1000, (80, 443, 5432)[k % 3],
                           TCP_PSH | TCP_ACK if k % 4 else TCP_SYN, direction=DIR_EGRESS, is_reply=bool(k % 2),
                           ifindex=17, ifname="veth1", packets=10, bytes=9000, packet_bytes=900,
                           flag_counts=(0, 1, 0, 5, 9, 0, 0, 0, 0, 1), node_name="node-a")
        elif kind < 8:
            r = FlowRecord(time.time_ns(), 4, a, b, 17, 50000, 53, verdict=16, direction=DIR_EGRESS,
                           node_name="node-a")
            r.l7 = DnsRecord(False, f"svc{k % 17}.example.com.", ("A",))
        elif kind == 8:
            r = FlowRecord(time.time_ns(), 4, a, b, 1, icmp_type=8, direction=DIR_INGRESS, node_name="node-a")
        else:
            r = FlowRecord(time.time_ns(), 4, a, b, 6, 41000, 5432, TCP_SYN, verdict=2, drop_reason=5,
                           drop_reason_name="NETFILTER_DROP", node_name="node-a")
        r.source = src
        r.destination = dst if k % 13 else world
        out.append(r)
    return out


def rate(fn, recs) -> tuple[float, int]:
    best = float("inf")
    hits = 0
    for _ in range(3):
        t0 = time.perf_counter()
        hits = fn(recs)
        best = min(best, time.perf_counter() - t0)
    return len(recs) / best, hits


def filtered(matcher: FlowMatcher):
    match = matcher.match

    def run(recs):
        n = 0
        for r in recs:
            if match(r):
                n += 1
        return n
    return run


def convert_all(recs):
    n = 0
    for r in recs:
        to_proto(r)
        n += 1
    return n


def main() -> None:
    recs = records()
    ff = lambda **kw: json_format.ParseDict(kw, flow_pb2.FlowFilter())  # noqa: E731
    cases = {
        "no filter (is_empty fast path)": FlowMatcher([], []),
        "1 field: {source_pod: shop/}": FlowMatcher([ff(source_pod=["shop/"])], []),
        "1 field: {verdict: DROPPED}": FlowMatcher([ff(verdict=["DROPPED"])], []),
        "1 field: {destination_port: 5432}": FlowMatcher([ff(destination_port=["5432"])], []),
        "1 field: {source_label: app=shop-1}": FlowMatcher([ff(source_label=["app=shop-1"])], []),
        "--pod shop/ (2 filters)": FlowMatcher(*FilterBuilder().pod("shop/").build()),
        "3 fields: pod+protocol+port": FlowMatcher([ff(source_pod=["shop/"], protocol=["tcp"],
                                                       destination_port=["5432"])], []),
        "3 fields: ip CIDR+verdict+tcp_flags": FlowMatcher([ff(destination_ip=["10.244.2.0/24"],
                                                               verdict=["FORWARDED"], tcp_flags=[{"SYN": True}])], []),
        "-n shop --protocol tcp --not --verdict DROPPED": FlowMatcher(
            *FilterBuilder().namespace("shop").protocol("tcp").not_().verdict("DROPPED").build()),
    }
    print(f"python {sys.version.split()[0]}, {len(recs):,} records, best of 3")
    conv, _ = rate(convert_all, recs)
    print(f"{'to_proto on every record':48s} {conv:12,.0f} records/s")
    for name, m in cases.items():
        r, hits = rate(filtered(m), recs)
        print(f"{name:48s} {r:12,.0f} records/s  ({hits / len(recs):5.1%} match, {r / conv:5.1f}x to_proto)")
    t0 = time.perf_counter()
    for _ in range(1000):
        FlowMatcher(*FilterBuilder().namespace("shop").protocol("tcp").not_().verdict("DROPPED").build())
    print(f"{'compile (builder + FlowMatcher), per request':48s} {(time.perf_counter() - t0) * 1000:10.1f} µs")


if __name__ == "__main__":
    main()
