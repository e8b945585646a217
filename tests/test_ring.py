"""The output ring (retina_core.ring): capacity, order, readers, lost markers, concurrency."""

from __future__ import annotations

import random
import sys
import threading
import time

import pytest

from retina_core.ring import DEFAULT_CAPACITY, LostMarker, Ring, validate_capacity


def drain(reader, max_items=1000):
    out = []
    while True:
        batch = reader.next_batch(max_items, timeout_s=0)
        if not batch:
            return out
        out.extend(batch)


# -- capacity ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cap", [1, 3, 7, 15, 4095, 65535, (1 << 20) - 1])
def test_valid_capacities(cap):
    r = Ring(cap)
    assert r.capacity == cap
    assert len(r._slots) == cap + 1
    assert validate_capacity(cap) == (cap + 1).bit_length() - 1


@pytest.mark.parametrize("cap", [0, 2, 4, 100, 4096, -1, (1 << 21) - 1, 1.0, "7", True])
def test_invalid_capacities(cap):
    with pytest.raises(ValueError, match="must be one less than a power of two"):
        Ring(cap)


def test_default_capacity():
    r = Ring()
    assert r.capacity == DEFAULT_CAPACITY == 4095
    assert len(r) == 0 and r.total_written == 0


# -- order, len, last ----------------------------------------------------------------------------------------------


def test_order_len_and_last():
    r = Ring(7)
    assert r.last(3) == []
    for i in range(5):
        r.write(i)
    assert len(r) == 5 and r.total_written == 5
    assert r.last(3) == [2, 3, 4]
    assert r.last(100) == [0, 1, 2, 3, 4]
    r.write_batch(range(5, 20))
    assert len(r) == 7 and r.total_written == 20
    assert r.last(7) == list(range(13, 20))
    assert r.last(100) == list(range(13, 20))  # one slot reserved: only capacity (7) of the 8 slots readable
    assert r.last(1) == [19]
    assert r.last(0) == []
    assert r.oldest_seq == 13


def test_write_batch_wraps_and_oversize_batch():
    r = Ring(7)
    r.write_batch([0, 1, 2, 3, 4, 5])
    r.write_batch([6, 7, 8, 9])  # wraps around the 8-slot array
    assert r.last(7) == [3, 4, 5, 6, 7, 8, 9]
    r.write_batch(list(range(10, 40)))  # larger than the array
    assert r.total_written == 40
    assert r.last(7) == list(range(33, 40))
    r.write_batch([])
    assert r.total_written == 40
    r.write_batch(x for x in (40, 41))  # any iterable
    assert r.last(2) == [40, 41]


def test_capacity_one():
    r = Ring(1)
    rd = r.reader("oldest")
    r.write("a")
    assert rd.next_batch(10) == ["a"]
    r.write("b")
    r.write("c")
    assert rd.next_batch(10) == [LostMarker(1), "c"]
    assert r.last(5) == ["c"]


# -- readers -------------------------------------------------------------------------------------------------------


def test_reader_start_positions():
    r = Ring(15)
    r.write_batch(range(5))
    oldest, newest, now = r.reader("oldest"), r.reader("newest"), r.reader("now")
    at2 = r.reader(2)
    assert oldest.next_batch(100) == [0, 1, 2, 3, 4]
    assert newest.next_batch(100) == [4]
    assert now.next_batch(100) == []
    assert at2.next_batch(100) == [2, 3, 4]
    r.write(5)
    for rd in (oldest, newest, now, at2):
        assert rd.next_batch(100) == [5]
    with pytest.raises(ValueError):
        r.reader("bogus")
    with pytest.raises(ValueError):
        r.reader(99)
    empty = Ring(3)
    rd = empty.reader("newest")
    empty.write("x")
    assert rd.next_batch(10) == ["x"]


def test_max_items_and_independent_readers():
    r = Ring(63)
    a, b = r.reader("oldest"), r.reader("oldest")
    r.write_batch(range(50))
    assert a.next_batch(10) == list(range(10))
    assert a.next_batch(10) == list(range(10, 20))
    assert b.next_batch(45) == list(range(45))  # b is unaffected by a
    assert a.next_batch(100) == list(range(20, 50))
    assert b.next_batch(100) == [45, 46, 47, 48, 49]
    assert a.next_batch(100) == [] and b.next_batch(100) == []
    assert a.position == b.position == 50
    assert a.delivered_total == b.delivered_total == 50


def test_lost_marker_exact_count_when_overtaken():
    r = Ring(7)
    rd = r.reader("oldest")
    r.write_batch(range(3))
    assert rd.next_batch(2) == [0, 1]  # reader at 2
    r.write_batch(range(3, 30))  # 30 written; readable: 23..29
    out = rd.next_batch(100)
    assert out[0] == LostMarker(21)  # records 2..22 were overwritten
    assert out[1:] == list(range(23, 30))
    assert rd.lost_total == 21 and rd.delivered_total == 2 + 7
    assert rd.next_batch(100) == []
    # max_items limits records, not the marker; the marker comes first, once.
    r.write_batch(range(30, 50))  # readable: 43..49; reader at 30
    assert rd.next_batch(3) == [LostMarker(13), 43, 44, 45]
    assert rd.next_batch(3) == [46, 47, 48]
    assert rd.next_batch(3) == [49]
    assert rd.lost_total == 34


def test_lost_marker_boundary_one_slot_reserved():
    r = Ring(7)  # 8 slots, 7 readable
    rd = r.reader("oldest")
    r.write_batch(range(7))
    assert drain(rd) == list(range(7))
    rd2 = r.reader(0)
    r.write(7)  # record 0 is no longer readable (its slot is the next to be written)
    assert drain(rd2) == [LostMarker(1), *range(1, 8)]


def test_seqlock_recheck_discards_overwritten_slots():
    # Simulate a write in progress between the reader's slot read and its re-check: the reader must not deliver
    # a value from a slot whose record may have been overwritten.
    r = Ring(7)
    r.write_batch(range(7))
    rd = r.reader("oldest")
    real_read = r._slots.__class__.__getitem__

    class SlotsSpy(list):
        def __getitem__(self, idx):  # called by the reader's slice reads
            value = real_read(self, idx)
            if not getattr(self, "fired", False):
                self.fired = True
                r.write_batch([100, 101])  # claims and overwrites the slots of records 0..1 (and reserves 2)
            return value

    r._slots = SlotsSpy(r._slots)
    out = rd.next_batch(100)
    assert out[0] == LostMarker(2)
    assert out[1:] == [2, 3, 4, 5, 6]
    assert drain(rd) == [100, 101]


def test_writer_never_blocks_while_reader_is_stalled():
    r = Ring(255)
    stalled = r.reader("oldest")  # never reads
    waiting = r.reader("now")
    got = []
    t = threading.Thread(target=lambda: got.append(waiting.next_batch(10, timeout_s=30)))
    t.start()
    time.sleep(0.05)
    n = 200_000
    t0 = time.perf_counter()
    for i in range(0, n, 100):
        r.write_batch(range(i, i + 100))
    for i in range(n, n + 1000):
        r.write(i)
    elapsed = time.perf_counter() - t0
    t.join(5)
    assert not t.is_alive()
    assert got and got[0]  # the waiting reader was woken
    assert elapsed < 5.0  # generous: in practice a few tens of milliseconds
    out = stalled.next_batch(1000)
    assert out[0] == LostMarker(n + 1000 - 255)
    assert out[1:] == list(range(n + 1000 - 255, n + 1000))


def test_wait_timeout_and_notify_all():
    r = Ring(7)
    rd = r.reader("now")
    t0 = time.perf_counter()
    assert rd.next_batch(10, timeout_s=0.05) == []
    assert time.perf_counter() - t0 >= 0.04
    assert rd.next_batch(10, timeout_s=0) == []
    assert rd.lag == 0
    done = threading.Event()

    def wait_forever():
        rd.next_batch(10, timeout_s=None)
        done.set()

    th = threading.Thread(target=wait_forever, daemon=True)
    th.start()
    time.sleep(0.05)
    r.write("x")
    assert done.wait(2)
    # notify_all() releases a waiter even when nothing was written.
    got = []
    th = threading.Thread(target=lambda: got.append(rd.next_batch(10, timeout_s=30)), daemon=True)
    th.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    r.notify_all()
    th.join(2)
    assert not th.is_alive() and got == [[]]
    assert time.perf_counter() - t0 < 1


# -- concurrency -------------------------------------------------------------------------------------------------


def test_concurrent_writer_and_readers_account_for_every_record():
    cap = 1023
    total = 300_000
    r = Ring(cap)
    rng = random.Random(1234)
    results: dict[int, tuple[int, int, list[str]]] = {}
    start_evt = threading.Event()
    writer_done = threading.Event()

    def reader_thread(idx: int, max_items: int, stall_every: int):
        rd = r.reader("oldest")
        expected = rd.position
        assert expected == 0
        delivered = lost = 0
        errors: list[str] = []
        calls = 0
        start_evt.wait()
        while True:
            batch = rd.next_batch(max_items, timeout_s=0.05)
            calls += 1
            if not batch:
                if writer_done.is_set() and rd.position >= r.total_written:
                    break
                continue
            for item in batch:
                if isinstance(item, LostMarker):
                    if item.count <= 0:
                        errors.append(f"non-positive marker {item}")
                    lost += item.count
                    expected += item.count
                else:
                    if item != expected:
                        errors.append(f"reader {idx}: got {item}, expected {expected}")
                        expected = item
                    expected += 1
                    delivered += 1
            if stall_every and calls % stall_every == 0:
                time.sleep(0.002)  # fall behind now and then
        results[idx] = (delivered, lost, errors[:5])

    readers = [
        threading.Thread(target=reader_thread, args=(0, 4096, 0)),
        threading.Thread(target=reader_thread, args=(1, 64, 7)),
        threading.Thread(target=reader_thread, args=(2, 16, 3)),
    ]
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to interleave reads with writes
    try:
        for t in readers:
            t.start()
        start_evt.set()
        written = 0
        while written < total:
            k = min(rng.choice((1, 1, 5, 32, 100, 300, 1500)), total - written)
            if k == 1:
                r.write(written)
            else:
                r.write_batch(list(range(written, written + k)))
            written += k
            # Yield the GIL after each batch (a real writer waits for kernel events) and pause now and then,
            # so readers mostly keep up but are sometimes overtaken.
            time.sleep(0 if rng.random() < 0.9 else 0.0005)
        writer_done.set()
        for t in readers:
            t.join(60)
            assert not t.is_alive()
    finally:
        sys.setswitchinterval(old_interval)
    assert r.total_written == total
    for idx, (delivered, lost, errors) in results.items():
        assert errors == [], errors
        assert delivered + lost == total, (idx, delivered, lost)
    # The fast reader delivered most records; the stalling readers really were overtaken.
    assert results[0][0] > total // 4
    assert results[2][1] > 0


def test_concurrent_writers_are_serialized_by_the_ring():
    """Several plugin reader threads share one ring (the ring serializes write calls itself): every record arrives
    once, each writer's records in order, each batch contiguous. The slot array gives the GIL away in the middle of
    every store (as a preemption may), so writers that were not serialized would interleave and lose records."""
    import threading
    import time

    class PreemptedSlots(list):
        def __setitem__(self, key, value):
            time.sleep(0)
            super().__setitem__(key, value)

    ring = Ring(2**16 - 1)
    ring._slots = PreemptedSlots(ring._slots)
    reader = ring.reader("oldest")

    def writer(tag):
        for i in range(0, 2000, 100):
            ring.write_batch([(tag, j) for j in range(i, i + 100)])

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = []
    while True:
        batch = reader.next_batch(4096, timeout_s=0)
        if not batch:
            break
        got.extend(batch)
    assert len(got) == 8000 and len(set(got)) == 8000
    for tag in range(4):
        assert [j for t, j in got if t == tag] == list(range(2000))
    for start in range(0, 8000, 100):  # batches of 100 were never interleaved
        assert len({t for t, _ in got[start:start + 100]}) == 1