"""Metrics module costs: (a) scrape (render) time at 10k and 100k series; (b) records/s through the per-record
path (AdvancedMetrics.process, as the module's reader thread calls it) on one core with a realistic mix.

Run: ``.venv/bin/python bench/bench_metrics.py`` (``--quick`` for smaller runs). Prints results; asserts nothing
about time.
"""

from __future__ import annotations

import random
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retina_core.identity import WORLD, Identity  # noqa: E402
from metrics_module.advanced import AdvancedMetrics  # noqa: E402
from retina_core.metricsconfig import parse_metrics_configuration  # noqa: E402
from metrics_module.module import MetricsModule  # noqa: E402
from retina_core.record import (  # noqa: E402
    DIR_EGRESS,
    DIR_INGRESS,
    OBS_FROM_ENDPOINT,
    OBS_FROM_NETWORK,
    OBS_TO_ENDPOINT,
    OBS_TO_NETWORK,
    FlowRecord,
)

NODE = "node-a"
CTX = ["ip", "namespace", "podname", "workload"]


def default_config(extra_source=(), pod_label_keys=()):
    """Retina's enableAnnotations defaults (the implemented metrics), ip/namespace/podname/workload both sides."""
    names = ["forward_count", "forward_bytes", "drop_count", "drop_bytes", "tcp_flag_gauges",
             "tcp_retransmission_count", "dns_request_count", "dns_response_count"]
    labels = CTX + list(extra_source)
    return parse_metrics_configuration({
        "contextOptions": [{"metricName": n, "sourceLabels": labels, "destinationLabels": labels, "ttl": "5m"}
                           for n in names],
        "podLabelKeys": list(pod_label_keys),
    })


def make_pods(n, node, base, ns_count=5):
    pods = []
    for i in range(n):
        ip = struct.pack("!I", base + i)
        pods.append((ip, Identity("pod", namespace=f"ns-{i % ns_count}", pod_name=f"app-{i}-7d9f8c-x{i:04d}",
                                  labels=(f"app=app-{i}", "tier=web"),
                                  workloads=(("Deployment", f"app-{i}"), ("ReplicaSet", f"app-{i}-7d9f8c")),
                                  node_name=node, zone="zone-1", ip=socket.inet_ntop(socket.AF_INET, ip))))
    return pods


def make_records(n, connections=5000, seed=1):
    """A low-aggregation mix on one node: 50 local pods with ``connections`` TCP/UDP connections to each other
    (40%), to 200 remote pods (40%) and to 100 world addresses (20%), each direction of each connection seen at
    its observation points (pod->pod on the node: FROM_ENDPOINT + TO_ENDPOINT; to/from elsewhere: one veth point +
    one host-interface point). Records pick connections at random: 85% TCP (ACK, PSH-ACK, some SYN, SYN-ACK, FIN),
    15% UDP; 60..1500 bytes."""
    rnd = random.Random(seed)
    local = make_pods(50, NODE, 0x0A000100)
    remote = make_pods(200, "node-b", 0x0A000200)
    world = [(struct.pack("!I", 0x34000000 + i), WORLD) for i in range(100)]
    flags_choices = [(0, 0, 0, 0, 1, 0, 0, 0, 0, 0)] * 6 + [(0, 0, 0, 1, 1, 0, 0, 0, 0, 0)] * 3 + [
        (0, 1, 0, 0, 0, 0, 0, 0, 0, 0), (0, 1, 0, 0, 1, 0, 0, 0, 0, 1), (1, 0, 0, 0, 1, 0, 0, 0, 0, 0)]
    conns = []
    for _ in range(connections):
        a_ip, a = rnd.choice(local)
        kind = rnd.random()
        if kind < 0.4:
            (b_ip, b), here = rnd.choice(local), True
        elif kind < 0.8:
            (b_ip, b), here = rnd.choice(remote), False
        else:
            (b_ip, b), here = rnd.choice(world), False
        direction = DIR_EGRESS
        if not here and rnd.random() < 0.3:  # initiated from outside
            a_ip, a, b_ip, b = b_ip, b, a_ip, a
            direction = DIR_INGRESS
        tcp = rnd.random() < 0.85
        conns.append((a_ip, a, b_ip, b, here, direction, tcp, rnd.randint(32768, 60999),
                      rnd.choice((80, 443, 5432, 8080, 53))))
    recs = []
    while len(recs) < n:
        a_ip, a, b_ip, b, here, direction, tcp, sport, dport = rnd.choice(conns)
        reply = rnd.random() < 0.5
        if reply:
            a_ip, a, b_ip, b, sport, dport = b_ip, b, a_ip, a, dport, sport
        if here:
            points = (OBS_FROM_ENDPOINT, OBS_TO_ENDPOINT)
        elif a.kind == "pod" and a.node_name == NODE:
            points = (OBS_FROM_ENDPOINT, OBS_TO_NETWORK)
        else:
            points = (OBS_FROM_NETWORK, OBS_TO_ENDPOINT)
        flags = rnd.choice(flags_choices) if tcp else None
        size = rnd.randint(60, 1500)
        for obs in points:
            r = FlowRecord(0, 4, a_ip, b_ip, 6 if tcp else 17, sport, dport, obs_point=obs, direction=direction,
                           is_reply=reply, packets=1, bytes=size, flag_counts=flags)
            r.source, r.destination = a, b
            recs.append(r)
    return recs[:n]


def bench_records(remote_context, config, n, label):
    recs = make_records(n)
    adv = AdvancedMetrics(config, node_name=NODE, host_interfaces_observed=True, remote_context=remote_context)
    batch = 512
    rates = []
    for _ in range(2):  # cold: plans and series get created; warm: steady state
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            adv.process(recs[i:i + batch])
        rates.append(n / (time.perf_counter() - t0))
    print(f"  {label:55s} warm {rates[1] / 1000:6.0f} k rec/s ({1e6 / rates[1]:.2f} us), "
          f"cold {rates[0] / 1000:5.0f} k rec/s; {adv.series_count()} series")


def populate(n_series):
    """A remote-context adv_forward_count with n_series distinct (source ip, destination ip) series."""
    cfg = parse_metrics_configuration({"contextOptions": [
        {"metricName": "forward_count", "sourceLabels": CTX, "destinationLabels": CTX}],
        "maxSeriesPerMetric": 10_000_000})
    mod = MetricsModule(None, None, cfg, NODE, True, True)
    pods = make_pods(1000, NODE, 0x0A010000, ns_count=20)
    per = n_series // len(pods) + 1
    recs = []
    for i, (ip, ident) in enumerate(pods):
        for j in range(per):
            if len(recs) >= n_series:
                break
            r = FlowRecord(0, 4, ip, struct.pack("!I", 0x34000000 + i * per + j), 6, 40000, 443,
                           obs_point=OBS_FROM_ENDPOINT, direction=DIR_EGRESS, is_reply=False, packets=3, bytes=900)
            r.source, r.destination = ident, WORLD
            recs.append(r)
    mod.process(recs)
    assert mod.advanced.series_count() == n_series, mod.advanced.series_count()
    return mod


def bench_new_series(remote_context, n):
    """Every record is a new conversation (a new world address): the miss path that builds label values, plans
    and series."""
    cfg = default_config()
    adv = AdvancedMetrics(cfg, node_name=NODE, host_interfaces_observed=True, remote_context=remote_context)
    local = make_pods(50, NODE, 0x0A000100)
    recs = []
    for i in range(n):
        ip, ident = local[i % 50]
        r = FlowRecord(0, 4, ip, struct.pack("!I", 0x40000000 + i), 6, 40000, 443, obs_point=OBS_FROM_ENDPOINT,
                       direction=DIR_EGRESS, is_reply=False, packets=1, bytes=100,
                       flag_counts=(0, 0, 0, 1, 1, 0, 0, 0, 0, 0))
        r.source, r.destination = ident, WORLD
        recs.append(r)
    t0 = time.perf_counter()
    for i in range(0, n, 512):
        adv.process(recs[i:i + 512])
    dt = time.perf_counter() - t0
    ctx = "remote" if remote_context else "local"
    print(f"  {ctx} context, 8 metrics, every record a new peer address: {n / dt / 1000:6.0f} k rec/s "
          f"({dt / n * 1e6:.2f} us); {adv.series_count()} series")


def bench_render(n_series):
    mod = populate(n_series)
    for name, om in (("text 0.0.4", False), ("OpenMetrics", True)):
        t0 = time.perf_counter()
        text = mod.render(om)
        first = time.perf_counter() - t0
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            mod.render(om)
            times.append(time.perf_counter() - t0)
        print(f"  {n_series:>7} series, {name:12s}: first scrape {first * 1000:7.1f} ms, then "
              f"{min(times) * 1000:7.1f} ms ({len(text) / 1e6:.1f} MB)")


def main() -> None:
    quick = "--quick" in sys.argv
    n = 100_000 if quick else 400_000
    print(f"(b) per-record path, one core, {n} records, batches of 512 (realistic low-level mix)")
    cfg = default_config()
    bench_records(False, cfg, n, "local context, 8 metrics (Retina default set)")
    bench_records(True, cfg, n, "remote context, 8 metrics (Retina default set)")
    fwd_only = parse_metrics_configuration({"contextOptions": [
        {"metricName": "forward_count", "sourceLabels": CTX, "destinationLabels": CTX},
        {"metricName": "forward_bytes", "sourceLabels": CTX, "destinationLabels": CTX}]})
    bench_records(False, fwd_only, n, "local context, forward_count + forward_bytes")
    bench_records(True, fwd_only, n, "remote context, forward_count + forward_bytes")
    with_port = default_config(extra_source=["port", "zone"], pod_label_keys=["app"])
    bench_records(True, with_port, n, "remote context, default set + port, zone, podLabelKeys")
    bench_new_series(False, n // 4)
    bench_new_series(True, n // 4)
    print("(a) scrape (MetricsModule.render)")
    for s in (10_000, 100_000):
        bench_render(s)


if __name__ == "__main__":
    main()
