"""Hubble's cost to the pipeline, in one run: the pod-level pipeline of ``bench_pipeline.py`` (records -> enricher
-> output ring -> metrics module, zero loss) with 0, 1 and 50 ``GetFlows`` followers on the agent's Hubble server,
and the flows/s those followers receive.

The followers run in another process (over the UNIX socket, as ``hubble observe`` would), each with one filter
(``--from-pod`` of one of 20 namespaces' pods for the 50, none for the single follower). Reported per case: the
pipeline's zero-loss records/s, the flows/s delivered to all followers together, and the records lost by the
metrics module (must be 0). Run: ``.venv/bin/python bench/bench_hubble.py``. Prints; asserts nothing about time.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_pipeline import build  # noqa: E402

from enricher import Enricher  # noqa: E402
from metrics_module import MetricsModule  # noqa: E402
from retina_core.metricsconfig import parse_metrics_configuration  # noqa: E402
from retina_core.ring import Ring  # noqa: E402
from retina_core.telemetry import ControlPlane  # noqa: E402
from retina_exporter.hubble.config import HubbleConfig  # noqa: E402
from retina_exporter.hubble.server import HubbleServer  # noqa: E402

DURATION_S = 6.0


def followers(sock: str, n: int, filtered: bool, ready, counts, stop) -> None:
    """Child process: ``n`` follow streams; ``counts[i]`` = flows received by stream ``i``."""
    import grpc

    from retina_core.proto import observer_pb2, observer_pb2_grpc
    from retina_exporter.hubble.filters import FilterBuilder

    def run(i: int) -> None:
        ch = grpc.insecure_channel(f"unix://{sock}")
        req = observer_pb2.GetFlowsRequest(follow=True)
        if filtered:
            wl, _ = FilterBuilder().from_pod(f"ns-{i % 20}/").build()
            req.whitelist.extend(wl)
        call = observer_pb2_grpc.ObserverStub(ch).GetFlows(req)
        threading.Thread(target=lambda: (stop.wait(), call.cancel()), daemon=True).start()
        ready.release()
        try:
            for resp in call:
                if resp.HasField("flow"):
                    counts[i] += 1
        except grpc.RpcError:
            pass
        ch.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run_case(n_followers: int, filtered: bool, records, paced: float = 0.0) -> tuple[float, float, int]:
    """One case: ``paced`` records/s (0 = as fast as the pipeline goes without loss)."""
    cache, _ = records
    recs = records[1]
    telemetry = ControlPlane()
    inp, out = Ring(65535), Ring(65535)
    enricher = Enricher(cache, inp, out, telemetry)
    opts = [{"metricName": m, "sourceLabels": ["ip", "namespace", "podname", "workload"]}
            for m in ("forward_count", "forward_bytes", "tcp_flag_gauges")]
    module = MetricsModule(out, telemetry, parse_metrics_configuration({"contextOptions": opts}), "node", False)
    sock = tempfile.mktemp(prefix="bench-hubble-", suffix=".sock")
    server = HubbleServer(HubbleConfig(enabled=True, socket_path=sock), out, "node", "bench", max_streams=64)
    server.start()
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Semaphore(0), ctx.Event()
    counts = ctx.Array("q", max(n_followers, 1), lock=False)
    child = None
    if n_followers:
        child = ctx.Process(target=followers, args=(sock, n_followers, filtered, ready, counts, stop))
        child.start()
        for _ in range(n_followers):
            ready.acquire()
        deadline = time.monotonic() + 30
        while server.observer.streams < n_followers and time.monotonic() < deadline:
            time.sleep(0.05)
    enricher.start()
    module.start()
    t0 = time.perf_counter()
    written = 0
    i = 0
    while time.perf_counter() - t0 < DURATION_S:
        if paced and written > paced * (time.perf_counter() - t0):
            time.sleep(0.001)
            continue
        batch = recs[i:i + 256]
        i = (i + 256) % (len(recs) - 256)
        inp.write_batch(batch)
        written += len(batch)
        while inp.total_written - module.records_processed > 30000:  # no stage may be lapped: zero loss
            time.sleep(0.0005)
    while module.records_processed + module.records_lost < written and time.perf_counter() - t0 < DURATION_S + 30:
        time.sleep(0.001)
    elapsed = time.perf_counter() - t0
    before = sum(counts[:n_followers]) if n_followers else 0
    time.sleep(0.5)  # the followers drain what they were sent
    delivered = sum(counts[:n_followers]) if n_followers else 0
    stop.set()
    if child is not None:
        child.join(20)
    server.stop()
    enricher.stop()
    module.stop()
    lost = telemetry.lost_total("enricher_ring", "enricher") + module.records_lost
    del before
    return written / elapsed, delivered / elapsed, lost


def main() -> int:
    records = build()
    print(f"python {sys.version.split()[0]}, {DURATION_S:.0f} s per case, pipeline = enricher + metrics module, "
          "followers in another process over the UNIX socket")
    for n, filtered, label in ((0, False, "no follower"), (1, False, "1 follower, no filter"),
                               (50, True, "50 followers, one --from-pod filter each")):
        rate, flows, lost = run_case(n, filtered, records)
        print(f"{label:42s} pipeline {rate:>11,.0f} records/s zero-loss ({lost} lost); "
              f"followers got {flows:>9,.0f} flows/s")
    print("paced at 20,000 records/s (a busy node's flow rate), what the followers receive:")
    for n, filtered, label in ((1, False, "1 follower, no filter"), (50, True, "50 followers, one filter each")):
        rate, flows, lost = run_case(n, filtered, records, paced=20_000)
        print(f"{label:42s} pipeline {rate:>11,.0f} records/s ({lost} lost); followers got {flows:>9,.0f} flows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
