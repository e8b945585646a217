"""Owner lookups by GET: the agent's ``kubernetes`` source resolves a pod's ReplicaSet or Job one level up without
a cluster-wide watch (one request per owner on its node, cached)."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from typing import Any

from retina_core.kube.objects import OwnerUnresolved, owner_parent

__all__ = ["OwnerResolver"]

_READERS = {"ReplicaSet": ("AppsV1Api", "read_namespaced_replica_set"),
            "Job": ("BatchV1Api", "read_namespaced_job")}


class OwnerResolver:
    """Controller of a ReplicaSet or Job, by GET, with an LRU+TTL cache. Thread-safe.

    :meth:`parent` has the signature of :data:`retina_core.kube.objects.ParentOf`, so it can be passed to
    :func:`~retina_core.kube.objects.pod_workloads`."""

    def __init__(self, api_client: Any, size: int = 1024, ttl_s: float = 600.0, negative_ttl_s: float = 60.0,
                 timeout_s: float = 5.0) -> None:
        self.api_client = api_client
        self.size = size
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.timeout_s = timeout_s
        self._cache: OrderedDict[tuple[str, str, str], tuple[str, tuple[str, str] | None, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.lookups = 0
        self.failures = 0
        self._apis: dict[str, Any] = {}

    def _read(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        """The object, or None (404). Raises :class:`OwnerUnresolved` for any other failure."""
        from kubernetes import client

        api_name, method = _READERS[kind]
        if kind not in self._apis:
            self._apis[kind] = getattr(client, api_name)(self.api_client)
        fn = getattr(self._apis[kind], method)
        self.lookups += 1
        try:
            resp = fn(name, ns, _preload_content=False, _request_timeout=(self.timeout_s, self.timeout_s))
        except Exception as exc:  # noqa: BLE001
            if getattr(exc, "status", None) == 404:
                return None
            self.failures += 1
            raise OwnerUnresolved(f"GET {kind} {ns}/{name}: {exc}") from None
        try:
            obj = json.loads(resp.data)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            return obj
        except ValueError as exc:
            self.failures += 1
            raise OwnerUnresolved(f"GET {kind} {ns}/{name}: malformed answer ({exc})") from None
        finally:
            resp.release_conn()

    def parent(self, kind: str, ns: str, name: str, uid: str | None) -> tuple[str, str] | None:
        """The controller owner (kind, name) of the ``kind`` object ``ns/name`` (None: it has none, or it is gone).
        Raises :class:`OwnerUnresolved` when the API cannot tell right now."""
        key = (kind, ns, name)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[2] > now and (not uid or not hit[0] or hit[0] == uid):
                self._cache.move_to_end(key)
                return hit[1]
        obj = self._read(kind, ns, name)
        if obj is None:
            entry: tuple[str, tuple[str, str] | None, float] = (uid or "", None, now + self.negative_ttl_s)
        else:
            meta = obj.get("metadata") or {}
            entry = (str(meta.get("uid") or uid or ""), owner_parent(obj, uid), now + self.ttl_s)
        with self._lock:
            self._cache[key] = entry
            self._cache.move_to_end(key)
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return entry[1]

    def __len__(self) -> int:
        return len(self._cache)
