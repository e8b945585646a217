"""Costs of the issue-14 additions, each against its own baseline in the same run (alternating order, median):

(a) metrics module per-record path (AdvancedMetrics.process) with the Retina default set vs the default set plus
    adv_interzone_bytes/_count and adv_dns_latency_seconds/adv_dns_unanswered_queries (realistic low-level mix
    with remote pods in another zone, so inter-zone counting runs on ~40% of the records);
(b) the dns plugin's user-space processor (DnsProcessor.process) on query/response event pairs with dnsLatency
    off vs on (the kernel side is unchanged: no data-plane cost);
(c) series that leave with their pod: one departure check after a cache change (10k pods) and marking a departed
    pod's series in a family of 100k series.

Run: ``.venv/bin/python bench/bench_issue14.py`` (``--quick`` for smaller runs). Prints results; asserts nothing
about time.
"""

from __future__ import annotations

import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_metrics import CTX, NODE, default_config, make_pods, make_records  # noqa: E402
from metrics_module.advanced import AdvancedMetrics  # noqa: E402
from metrics_module.departures import PodDepartures  # noqa: E402
from retina_core.dns.encoder import RR, build_query, build_response  # noqa: E402
from retina_core.metricsconfig import parse_metrics_configuration  # noqa: E402
from retina_exporter.bpf.dns import DNS_CAPTURE, EVENT_HEADER, EVENT_SIZE  # noqa: E402
from retina_exporter.plugins.dns.config import DnsLatencyConfig  # noqa: E402
from retina_exporter.plugins.dns.processor import DnsProcessor  # noqa: E402


def rounds(fns: dict, repeat: int) -> dict:
    """Median seconds per function; the order alternates between rounds (no position bias)."""
    times: dict = {k: [] for k in fns}
    for i in range(repeat):
        for k, fn in (list(fns.items()) if i % 2 == 0 else list(reversed(fns.items()))):
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_metrics(n: int, repeat: int) -> None:
    recs = make_records(n)
    for r in recs:
        for ident in (r.source, r.destination):
            if ident.kind == "pod" and ident.node_name != NODE:
                ident.zone = "zone-2"
    base = default_config()
    spec = base.to_dict()
    spec["contextOptions"] += [{"metricName": "interzone_bytes"}, {"metricName": "interzone_count"},
                               {"metricName": "dns_latency_seconds", "sourceLabels": CTX},
                               {"metricName": "dns_unanswered_queries", "sourceLabels": CTX}]
    more = parse_metrics_configuration(spec)
    for remote in (False, True):
        advs = {k: AdvancedMetrics(c, node_name=NODE, host_interfaces_observed=True, remote_context=remote)
                for k, c in (("off", base), ("on", more))}

        def run(adv):
            def go():
                for i in range(0, n, 512):
                    adv.process(recs[i:i + 512])
            return go

        for adv in advs.values():
            run(adv)()  # cold: plans and series
        t = rounds({k: run(a) for k, a in advs.items()}, repeat)
        iz = sum(v for name, _t, _h, s in advs["on"].families() if name.endswith("interzone_count") for _l, v in s)
        print(f"  {'remote' if remote else 'local '} context: default set {n / t['off'] / 1000:6.0f} k rec/s, "
              f"+ interzone and DNS latency {n / t['on'] / 1000:6.0f} k rec/s (ratio {t['on'] / t['off']:.3f}); "
              f"{iz // (repeat + 1)} of the {n} records counted as inter-zone per pass")


def dns_events(pairs: int) -> list[bytes]:
    a = bytes([10, 244, 0, 10]) + bytes(12)
    b = bytes([10, 96, 0, 10]) + bytes(12)
    out = []
    for i in range(pairs):
        q = build_query(f"svc-{i % 500}.ns.svc.cluster.local", "A", msg_id=i & 0xFFFF)
        r = build_response(q, [RR(f"svc-{i % 500}.ns.svc.cluster.local", "A", 30, "10.96.1.1")])
        sport = 30000 + i % 20000
        for payload, ts, src, dst, sp, dp in ((q, 1000 * i, a, b, sport, 53), (r, 1000 * i + 500_000, b, a, 53, sport)):
            cap = payload[:DNS_CAPTURE]
            head = EVENT_HEADER.pack(ts, src, dst, 5, 100 + len(payload), 0, sp, dp, len(payload), len(cap), 4, 17,
                                     0, 0x18)
            out.append(head + cap + bytes(EVENT_SIZE - len(head) - len(cap)))
    return out


def bench_dns(pairs: int, repeat: int) -> None:
    events = dns_events(pairs)
    for pod_level in (False, True):
        def run(cfg):
            def go():
                p = DnsProcessor("n", {}, pod_level=pod_level, emit=(lambda r: None), latency=cfg)
                for e in events:
                    p.process(e)
            return go

        t = rounds({"off": run(DnsLatencyConfig(enabled=False)), "on": run(DnsLatencyConfig())}, repeat)
        n = len(events)
        print(f"  pod level {'on ' if pod_level else 'off'}: dnsLatency off {n / t['off'] / 1000:6.1f} k msg/s, "
              f"on {n / t['on'] / 1000:6.1f} k msg/s (ratio {t['on'] / t['off']:.3f})")


def bench_departures(pods: int, series: int) -> None:
    idents = make_pods(pods, NODE, 0x0A100000)
    state = {"version": 1, "map": dict(idents)}
    d = PodDepartures(lambda: (state["version"], state["map"]))
    d.check()
    gone_ip = idents[0][0]
    state["map"] = {ip: i for ip, i in idents if ip != gone_ip}
    state["version"] = 2
    t0 = time.perf_counter()
    gone = d.check()
    t_check = time.perf_counter() - t0
    cfg = parse_metrics_configuration({"contextOptions": [{"metricName": "forward_count",
                                                           "sourceLabels": ["ip", "podname"]}],
                                       "maxSeriesPerMetric": series + 10})
    adv = AdvancedMetrics(cfg, node_name=NODE, host_interfaces_observed=True)
    m = adv.metrics[0]
    for i in range(series):
        m.series[("egress", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", f"p{i}")] = [1, 0.0, None]
    t0 = time.perf_counter()
    adv.pods_left(gone, 0.0)
    t_mark = time.perf_counter() - t0
    print(f"  departure check over {pods} pods: {t_check * 1000:.1f} ms; marking in {series} series: "
          f"{t_mark * 1000:.1f} ms")


def main() -> None:
    quick = "--quick" in sys.argv
    repeat = 3 if quick else 5
    n = 100_000 if quick else 300_000
    print(f"(a) metrics module per-record path, {n} records, median of {repeat} alternating rounds")
    bench_metrics(n, repeat)
    pairs = 10_000 if quick else 40_000
    print(f"(b) dns processor, {pairs} query/response pairs, median of {repeat} alternating rounds")
    bench_dns(pairs, repeat)
    print("(c) series that leave with their pod")
    bench_departures(10_000, 100_000)


if __name__ == "__main__":
    main()
