"""Throughput of the output ring (retina_core.ring): writes/s and reads/s, with 1 and 3 readers.

Run: ``.venv/bin/python bench/bench_ring.py``. Prints results; asserts nothing about time.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retina_core.ring import LostMarker, Ring  # noqa: E402

N = 2_000_000
BATCH = 256


def bench_write_single(n: int = N) -> float:
    """write() one record at a time, no readers; returns records/s."""
    r = Ring(4095)
    item = object()
    w = r.write
    t0 = time.perf_counter()
    for _ in range(n):
        w(item)
    return n / (time.perf_counter() - t0)


def bench_write_batch(n: int = N, batch: int = BATCH) -> float:
    """write_batch() of `batch` records, no readers; returns records/s."""
    r = Ring(4095)
    items = [object()] * batch
    t0 = time.perf_counter()
    for _ in range(n // batch):
        r.write_batch(items)
    return (n // batch) * batch / (time.perf_counter() - t0)


def bench_read_only(n: int = N, batch: int = BATCH) -> float:
    """next_batch() over a pre-filled ring by one reader, no writer running; returns records/s."""
    cap = (1 << 20) - 1
    r = Ring(cap)
    r.write_batch([object()] * cap)
    rd = r.reader("oldest")
    got = 0
    t0 = time.perf_counter()
    while got < cap:
        got += len(rd.next_batch(batch, timeout_s=0))
    return got / (time.perf_counter() - t0)


def bench_concurrent(readers: int, n: int = N, batch: int = BATCH) -> dict[str, float]:
    """One writer thread (write_batch of `batch`, yielding the GIL after each) and `readers` reader threads
    (next_batch(batch, 10 ms)); returns the writer's records/s and per-reader delivered and lost records."""
    r = Ring(4095)
    items = [object()] * batch
    done = threading.Event()
    stats: list[tuple[int, int]] = [(0, 0)] * readers

    def read(i: int) -> None:
        rd = r.reader("oldest")
        delivered = lost = 0
        while True:
            b = rd.next_batch(batch, timeout_s=0.01)
            if not b:
                if done.is_set() and rd.position >= r.total_written:
                    break
                continue
            if isinstance(b[0], LostMarker):
                lost += b[0].count
                delivered += len(b) - 1
            else:
                delivered += len(b)
        stats[i] = (delivered, lost)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(readers)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    for _ in range(n // batch):
        r.write_batch(items)
        time.sleep(0)  # a real writer waits for kernel events between batches
    elapsed_w = time.perf_counter() - t0
    done.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    total = (n // batch) * batch
    out = {"writes_per_s": total / elapsed_w, "elapsed_s": elapsed}
    for i, (d, l) in enumerate(stats):
        out[f"reader{i}_reads_per_s"] = d / elapsed
        out[f"reader{i}_lost_pct"] = 100.0 * l / total
    return out


def main() -> None:
    print(f"python {sys.version.split()[0]}, {N:,} records per run, batch {BATCH}")
    print(f"write() single, no reader:        {bench_write_single() / 1e6:6.2f} M records/s")
    print(f"write_batch({BATCH}), no reader:    {bench_write_batch() / 1e6:6.2f} M records/s")
    print(f"next_batch({BATCH}), 1 reader alone: {bench_read_only() / 1e6:6.2f} M records/s")
    for k in (1, 3):
        res = bench_concurrent(k)
        readers = ", ".join(
            f"r{i} {res[f'reader{i}_reads_per_s'] / 1e6:.2f} M/s (lost {res[f'reader{i}_lost_pct']:.1f}%)"
            for i in range(k)
        )
        print(f"writer + {k} reader(s): writes {res['writes_per_s'] / 1e6:.2f} M records/s; reads: {readers}")


if __name__ == "__main__":
    main()
