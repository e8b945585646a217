"""Encoding the IpCache stream (proto/ipcache/ipcache.proto) once, for every agent.

An ``IpCacheBatch`` is a protobuf message whose only field is ``repeated IpCacheUpdate updates = 1``; its encoding
is the concatenation of each update's encoding *framed* as field 1 (tag ``0x0a``, varint length, bytes). So each
update is serialized once, when it happens (:func:`framed_upsert`, :func:`framed_delete`), and a batch for any
agent is ``b"".join(framed updates)``: the gRPC server sends those bytes as they are (no serializer), whatever
the number of agents.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from retina_core.identity import KIND_NODE, KIND_POD, KIND_SERVICE
from retina_core.proto import ipcache_pb2

from retina_operator.ipmap import Entry
from retina_core.protowire import length_delimited

__all__ = ["KIND_TO_PROTO", "MAX_BATCH_BYTES", "SHUTDOWN_BATCH", "SYNC_COMPLETE_BATCH", "batches", "frame",
           "framed_delete", "framed_upsert", "update_message"]

MAX_BATCH_BYTES = 1 << 20
"""Snapshot and delta batches stay under this (agents accept up to 64 MiB; gRPC's default limit is 4 MiB)."""

KIND_TO_PROTO = {KIND_POD: ipcache_pb2.KIND_POD, KIND_SERVICE: ipcache_pb2.KIND_SERVICE,
                 KIND_NODE: ipcache_pb2.KIND_NODE}


def frame(update: bytes) -> bytes:
    """``update`` (an encoded IpCacheUpdate) as one element of ``IpCacheBatch.updates``."""
    return length_delimited(1, update)


def update_message(ip: str, entry: Entry) -> object:
    """The UPSERT ``IpCacheUpdate`` for ``ip``."""
    ident = entry.identity
    msg = ipcache_pb2.IpCacheUpdate(
        update_type=ipcache_pb2.UPSERT, ip=ip, namespace=ident.namespace, pod_name=ident.pod_name,
        service_name=ident.service, node_name=ident.node_name, labels=list(ident.labels),
        kind=KIND_TO_PROTO[entry.kind], zone=ident.zone, observed=entry.observed)
    for kind, name in ident.workloads:
        msg.workloads.add(name=name, kind=kind)
    return msg


def framed_upsert(ip: str, entry: Entry) -> bytes:
    """The framed UPSERT for ``ip``; cached on the entry (entries are immutable and shared)."""
    wire = entry.wire
    if wire is None:
        wire = entry.wire = frame(update_message(ip, entry).SerializeToString())
    return wire


def framed_delete(ip: str, kind: str) -> bytes:
    return frame(ipcache_pb2.IpCacheUpdate(update_type=ipcache_pb2.DELETE, ip=ip,
                                           kind=KIND_TO_PROTO[kind]).SerializeToString())


SYNC_COMPLETE_BATCH = frame(ipcache_pb2.IpCacheUpdate(update_type=ipcache_pb2.SYNC_COMPLETE).SerializeToString())
SHUTDOWN_BATCH = frame(ipcache_pb2.IpCacheUpdate(update_type=ipcache_pb2.SHUTDOWN).SerializeToString())


def batches(framed: Iterable[bytes], max_bytes: int = MAX_BATCH_BYTES) -> Iterator[tuple[bytes, int]]:
    """Group framed updates, in order, into encoded batches of at most ``max_bytes`` (a single larger update is a
    batch of its own). Yields ``(batch bytes, number of updates)``."""
    parts: list[bytes] = []
    size = 0
    for f in framed:
        if parts and size + len(f) > max_bytes:
            yield b"".join(parts), len(parts)
            parts, size = [], 0
        parts.append(f)
        size += len(f)
    if parts:
        yield b"".join(parts), len(parts)
