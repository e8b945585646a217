"""End-to-end records/s through enricher + metrics module (the pod-level path after the ring-buffer reader).

A writer thread feeds FlowRecords (a realistic mix: 200 pods on this node talking to each other and to world
addresses, each packet seen at both of its observation points, high-aggregation sized counts) into the
enricher's input ring; the Enricher thread stamps identities from a 10k-entry cache and writes the output ring;
the MetricsModule thread follows it with Retina's default context options. Reported: records/s that reached the
metrics module with no lost record. Run it pinned to one core: ``taskset -c 0 .venv/bin/python bench/bench_pipeline.py``.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enricher.enricher import Enricher  # noqa: E402
from retina_core.identity import Identity  # noqa: E402
from enricher.ipcache import IPCache  # noqa: E402
from retina_core.metricsconfig import parse_metrics_configuration  # noqa: E402
from metrics_module.module import MetricsModule  # noqa: E402
from retina_core.record import OBS_FROM_ENDPOINT, OBS_TO_ENDPOINT, FlowRecord  # noqa: E402
from retina_core.ring import Ring  # noqa: E402
from retina_core.telemetry import ControlPlane  # noqa: E402

N_RECORDS = 600_000


def build():
    cache = IPCache()
    pods = {}
    for i in range(10_000):
        ip = bytes([10, 244, i // 256, i % 256])
        pods[ip] = Identity("pod", f"ns-{i % 20}", f"pod-{i}", (f"app=a{i % 50}",), (("Deployment", f"d{i % 50}"),),
                            node_name="node" if i < 200 else "other", zone="z1")
    cache.publish("bench", pods=pods)
    local = [ip for ip in list(pods)[:200]]
    world = [bytes([93, 184, 0, i]) for i in range(100)]
    rng = random.Random(1)
    records = []
    conns = [(rng.choice(local), rng.choice(local + world), rng.randrange(30000, 60000), rng.choice((80, 443, 53)))
             for _ in range(5000)]
    for k in range(N_RECORDS):
        s, d, sp, dp = conns[k % len(conns)]
        obs = OBS_FROM_ENDPOINT if k % 2 == 0 else OBS_TO_ENDPOINT
        records.append(FlowRecord(time.time_ns(), 4, s, d, 6, sp, dp, 0x10, 0, 0, obs, 2, False, 4, "veth",
                                  3, 4500, 1500, (0, 0, 0, 1, 3, 0, 0, 0, 0, 0), 4, "node"))
    return cache, records


def main() -> int:
    cache, records = build()
    telemetry = ControlPlane()
    inp, out = Ring(65535), Ring(65535)
    enricher = Enricher(cache, inp, out, telemetry)
    opts = [{"metricName": m, "sourceLabels": ["ip", "namespace", "podname", "workload"]}
            for m in ("forward_count", "forward_bytes", "tcp_flag_gauges")]
    module = MetricsModule(out, telemetry, parse_metrics_configuration({"contextOptions": opts}), "node", False)
    enricher.start()
    module.start()
    t0 = time.perf_counter()
    batch = 256
    for i in range(0, len(records), batch):
        inp.write_batch(records[i:i + batch])
        while inp.total_written - module.records_processed > 30000:  # no stage may be lapped: zero loss
            time.sleep(0.0005)
    deadline = time.monotonic() + 60
    while module.records_processed + module.records_lost < len(records) and time.monotonic() < deadline:
        time.sleep(0.001)
    elapsed = time.perf_counter() - t0
    enricher.stop()
    module.stop()
    lost = telemetry.lost_total("enricher_ring", "enricher") + module.records_lost
    print(f"pipeline (enricher + metrics module, local context, 3 metrics): {len(records) / elapsed:,.0f} records/s, "
          f"{module.records_processed:,} processed, {lost} lost, {module.advanced.series_count():,} series")
    return 0


if __name__ == "__main__":
    sys.exit(main())
