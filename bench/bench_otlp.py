"""OTLP push cost at 10k and 100k series: CPU seconds per export and bytes sent, step by step.

Steps (each measured in steady state -- every series already seen once -- best of ``--reps``, CPU time of the
calling thread; the families are the metrics module's fast path: pre-rendered label text, 8 labels per series,
half gauges (Retina's ``adv_*`` counts), half counters):

1. ``sdk-default``: the SDK's default path -- observable instruments on a ``MeterProvider`` whose callbacks observe
   every series (labels parsed into an attribute dict at each collection), collected by the SDK's aggregation,
   encoded by the SDK's ``encode_metrics``, serialized and gzipped.
2. ``metricsdata``: ``MetricsData`` built straight from the families by ``FamiliesProducer`` (attribute sets
   cached per series), the SDK's ``encode_metrics``, serialize, gzip.
3. ``metricsdata+cached-encoding``: the same with ``encode_metrics_fast`` (each series' attributes encoded once).
4. ``export grpc`` / ``export http``: ``OtlpExporter.export_once()`` to a local OTLP receiver (the tests' one),
   i.e. step 3 plus request splitting, the SDK exporter and its transport (gzip).

Run: ``.venv/bin/python bench/bench_otlp.py`` (``--quick``: 10k only). Prints results; asserts nothing.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metrics_module._otlp_sdk import FamiliesProducer, encode_metrics_fast, parse_label_text  # noqa: E402
from metrics_module.exposition import _label_text  # noqa: E402
from metrics_module.otlp import OtlpExporter  # noqa: E402

LABELS = ("direction", "ip", "namespace", "podname", "workload_kind", "workload_name", "reason", "port")


def make_families(n: int, families: int = 8):
    per = n // families
    fams = []
    for f in range(families):
        samples = []
        for i in range(per):
            pairs = tuple((k, f"{k}-{i % 50}" if k in ("namespace", "workload_kind", "reason")
                           else f"{k}-{f}-{i:06d}") for k in LABELS)
            samples.append([_label_text(pairs), i * 7 + 1])
        fams.append((f"networkobservability_adv_bench_{f}", "counter" if f % 2 else "gauge", "bench family",
                     samples))
    return fams


def source_of(fams):
    def source():
        return [(name, t, h, [(labels, v) for labels, v in samples]) for name, t, h, samples in fams]
    return source


def bump(fams):
    for _name, _t, _h, samples in fams:
        for s in samples:
            s[1] += 3


def cpu(fn, reps: int, between=None):
    best = float("inf")
    out = None
    for _ in range(reps):
        if between:
            between()
        t0 = time.thread_time()
        out = fn()
        best = min(best, time.thread_time() - t0)
    return best, out


def step_sdk_default(fams, reps):
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.metrics import Observation
    from opentelemetry.sdk.metrics import MeterProvider, ObservableCounter, ObservableGauge
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader(cardinality_limits={ObservableGauge: 10**7, ObservableCounter: 10**7})
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    meter = provider.get_meter("retina-exporter")
    for name, mtype, help_text, samples in fams:
        def callback(_options, samples=samples):
            return [Observation(v, dict(parse_label_text(labels))) for labels, v in samples]
        create = meter.create_observable_counter if mtype == "counter" else meter.create_observable_gauge
        create(name, callbacks=[callback], description=help_text)

    def once():
        body = encode_metrics(reader.get_metrics_data()).SerializeToString()
        return len(body), len(gzip.compress(body))

    once()
    t, sizes = cpu(once, reps, lambda: bump(fams))
    provider.shutdown()
    return t, sizes


def step_metricsdata(fams, reps, fast: bool):
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    producer = FamiliesProducer(source_of(fams), start_time_unix_nano=time.time_ns())
    resource = Resource.create({"service.name": "retina-exporter"})
    scope = InstrumentationScope("retina-exporter", "0")
    encode = encode_metrics_fast if fast else encode_metrics

    def once():
        data = MetricsData([ResourceMetrics(resource, [ScopeMetrics(scope, producer.produce(), "")], "")])
        body = encode(data).SerializeToString()
        return len(body), len(gzip.compress(body))

    once()
    return cpu(once, reps, lambda: bump(fams))


def step_export(fams, reps, protocol):
    from tests.support.otlp_receiver import OtlpReceiver

    rx = OtlpReceiver().start()
    try:
        ex = OtlpExporter(source_of(fams), endpoint=rx.endpoint(protocol), protocol=protocol, insecure=True,
                          interval_s=60, timeout_s=30, compression="gzip", node_name="bench", env={})
        result = {}

        def run():  # in a fresh thread, as the exporter's own thread would
            assert ex.export_once(), ex.last_error
            sent0 = ex.attempts.bytes_sent
            n0 = rx.count()
            t, _ = cpu(ex.export_once, reps, lambda: bump(fams))
            reqs = rx.requests()[n0:]
            per_export = len(reqs) // reps
            result.update(t=t, requests=per_export,
                          raw=sum(r.request.ByteSize() for r in reqs) // reps,
                          wire=(ex.attempts.bytes_sent - sent0) // reps if protocol != "grpc" else None)

        th = threading.Thread(target=run)
        th.start()
        th.join()
        ex.stop()
        return result
    finally:
        rx.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-default", action="store_true", help="skip the slow SDK default path")
    args = ap.parse_args()
    sizes = [10_000] if args.quick else [10_000, 100_000]
    print(f"{'series':>7}  {'step':<32} {'CPU s/export':>12} {'us/series':>9}  bytes (raw / gzip or on the wire)")
    for n in sizes:
        fams = make_families(n)
        rows = []
        if not args.skip_default:
            t, (raw, gz) = step_sdk_default(fams, args.reps)
            rows.append(("1 sdk-default (observable)", t, f"{raw} / {gz}"))
        t, (raw, gz) = step_metricsdata(fams, args.reps, fast=False)
        rows.append(("2 metricsdata (cached attrs)", t, f"{raw} / {gz}"))
        t, (raw, gz) = step_metricsdata(fams, args.reps, fast=True)
        rows.append(("3 + cached attr encoding", t, f"{raw} / {gz}"))
        for protocol in ("grpc", "http/protobuf"):
            r = step_export(fams, args.reps, protocol)
            wire = f" / {r['wire']} sent" if r["wire"] is not None else " (gzip on the channel)"
            rows.append((f"4 export {protocol} ({r['requests']} req)", r["t"], f"{r['raw']}{wire}"))
        for label, t, b in rows:
            print(f"{n:>7}  {label:<32} {t:>12.3f} {t / n * 1e6:>9.2f}  {b}", flush=True)


if __name__ == "__main__":
    main()
