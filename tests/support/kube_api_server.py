"""A local stand-in for kube-apiserver that speaks its HTTP/JSON wire protocol, for tests with the real client.

No kube-apiserver binary (nor etcd) can run in the test environment, so this module serves the parts of the API
the agent and operator use, with the semantics a client can observe: resource versions, list snapshots and
pagination, label/field selectors, watch streams with bookmarks, "410 Gone" after compaction, optimistic
concurrency (409), status subresources, graceful pod deletion and finalizers. docs/kubernetes.md lists what is
covered and what is not; the short version is at the end of this docstring.

Usage::

    server = KubeApiServer()          # port 0: pick a free port, kept across stop()/start() and set_down()
    server.start()
    api = kubernetes.client.ApiClient(server.configuration())
    ...
    server.close_watches()            # drop every open watch stream (abruptly; graceful=True ends them cleanly)
    server.set_down(True)             # refuse connections (how="503": answer 503 ServiceUnavailable instead)
    server.garbage_mode(True)         # answer malformed JSON; open watches receive a malformed line
    server.compact()                  # forget the event history: older resourceVersions get 410 Expired
    server.stop()

Resources (``KubeApiServer.RESOURCES``): core/v1 namespaces, nodes, pods, services; apps/v1 deployments,
replicasets, daemonsets, statefulsets; batch/v1 jobs, cronjobs; retina.sh/v1alpha1 metricsconfigurations
(cluster-scoped custom resource). All have a ``/status`` subresource.

Resource versions are one global counter (like etcd's revision). Every write bumps it and is recorded in a
bounded event history (``history_size`` events); the oldest retained revision is the *compaction floor*.

* WATCH ``?watch=true&resourceVersion=N``: events with revision > N, in order. N below the floor gets one
  ``ERROR`` event with a ``410 Expired`` Status (``too old resource version: N (floor)``) and the stream ends, as
  the watch cache does. No resourceVersion or ``0``: synthetic ``ADDED`` events for the current objects first.
  With ``allowWatchBookmarks=true`` a ``BOOKMARK`` carrying the current revision is sent every
  ``bookmark_interval_s`` while the watcher is idle (and on :meth:`KubeApiServer.send_bookmarks`). The stream ends
  after ``timeoutSeconds``. Selectors are applied to old and new state, so an object that stops matching is sent
  as ``DELETED`` and one that starts matching as ``ADDED`` (cacheWatcher semantics).
* LIST: ``metadata.resourceVersion`` is the snapshot's revision. ``resourceVersion`` unset or ``0`` or N (Not
  older than) answer from the current state; ``resourceVersionMatch=Exact`` answers the state at N,
  reconstructed from the history, or 410 Expired below the floor. N above the current revision answers 504
  (``Too large resource version``) at once (the real server waits up to 3 s first). ``limit``/``continue``:
  consistent pages of the first page's snapshot; the token is base64 of ``{"v":"meta.k8s.io/v1","rv":N,
  "start":"key\\x00"}`` like the real one and gives 410 once N is below the floor. Items of built-in lists carry
  no kind/apiVersion (as the real server sends them); custom resource items do.
* Writes: POST/PUT/PATCH (merge, JSON, and strategic merge treated as merge: lists replaced) bump the revision;
  a stale ``metadata.resourceVersion`` is a 409 Conflict; a no-op write changes nothing and sends no event; the
  main endpoint keeps ``status``, ``/status`` changes only ``status``; ``generation`` follows spec changes.
  DELETE honours preconditions and finalizers; a pod bound to a node is deleted gracefully (deletionTimestamp,
  MODIFIED) and removed ``kubelet_delay_s`` later by the emulated kubelet (DELETED).

Not covered: authentication beyond one optional bearer token, authorization, admission, most validation,
defaulting beyond a few fields, controllers (no garbage collection of dependents, no Deployment → ReplicaSet →
Pod creation, no namespace cascade), server-side apply, protobuf/CBOR, aggregated discovery, OpenAPI, watch-list
(``sendInitialEvents``), ``dryRun``, ``deletecollection``, HTTP/2, TLS.
"""

from __future__ import annotations

import base64
import copy
import datetime
import itertools
import json
import queue
import random
import re
import socket
import string
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.kube_selectors import (PatchError, SelectorError, json_patch, merge_patch, parse_field_selector,
                                          parse_label_selector)

__all__ = ["ApiError", "KubeApiServer", "Resource", "RESOURCES"]

Getter = Callable[[Mapping[str, Any]], str]


def _path(*keys: str) -> Getter:
    def get(obj: Mapping[str, Any]) -> str:
        cur: Any = obj
        for k in keys:
            if not isinstance(cur, Mapping):
                return ""
            cur = cur.get(k)
        if cur is None:
            return ""
        if isinstance(cur, bool):
            return "true" if cur else "false"
        return str(cur)
    return get


_META_FIELDS: dict[str, Getter] = {"metadata.name": _path("metadata", "name"),
                                   "metadata.namespace": _path("metadata", "namespace")}


@dataclass(frozen=True)
class Resource:
    """One served resource type."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    fields: Mapping[str, Getter] = field(default_factory=dict)
    """Field labels the resource supports in field selectors, besides metadata.name/metadata.namespace."""
    custom: bool = False
    """A custom resource (CRD): list items keep kind/apiVersion, unconditional updates are refused."""
    generation: bool = True
    """Whether metadata.generation is maintained."""
    returns_deleted: bool = False
    """DELETE answers with the object (pods, services, custom resources) rather than a Status."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    def field_getters(self) -> dict[str, Getter]:
        return {**_META_FIELDS, **self.fields}


RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "namespaces", "Namespace", False, ("ns",), {"status.phase": _path("status", "phase")},
             generation=False),
    Resource("", "v1", "nodes", "Node", False, ("no",), {"spec.unschedulable": _path("spec", "unschedulable")},
             generation=False),
    Resource("", "v1", "pods", "Pod", True, ("po",), {
        "spec.nodeName": _path("spec", "nodeName"),
        "spec.restartPolicy": _path("spec", "restartPolicy"),
        "spec.schedulerName": _path("spec", "schedulerName"),
        "spec.serviceAccountName": _path("spec", "serviceAccountName"),
        "spec.hostNetwork": lambda o: "true" if (o.get("spec") or {}).get("hostNetwork") else "false",
        "status.phase": _path("status", "phase"),
        "status.podIP": _path("status", "podIP"),
        "status.nominatedNodeName": _path("status", "nominatedNodeName"),
    }, returns_deleted=True),
    Resource("", "v1", "services", "Service", True, ("svc",), generation=False, returns_deleted=True),
    Resource("apps", "v1", "deployments", "Deployment", True, ("deploy",)),
    Resource("apps", "v1", "replicasets", "ReplicaSet", True, ("rs",),
             {"status.replicas": _path("status", "replicas")}),
    Resource("apps", "v1", "daemonsets", "DaemonSet", True, ("ds",)),
    Resource("apps", "v1", "statefulsets", "StatefulSet", True, ("sts",)),
    Resource("batch", "v1", "jobs", "Job", True, (), {"status.successful": _path("status", "successful")}),
    Resource("batch", "v1", "cronjobs", "CronJob", True, ("cj",)),
    Resource("retina.sh", "v1alpha1", "metricsconfigurations", "MetricsConfiguration", False, (), custom=True,
             returns_deleted=True),
)

_BUILTIN_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_SERVICE_CIDR_BASE = (10, 96)


class ApiError(Exception):
    """An error answered as a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})
        self.retry_after = retry_after

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                               "message": self.message, "reason": self.reason}
        if self.details:
            out["details"] = self.details
        out["code"] = self.code
        return out


def _not_found(res: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{res.plural}{"." + res.group if res.group else ""} "{name}" not found',
                    {"name": name, "group": res.group, "kind": res.plural} if res.group else
                    {"name": name, "kind": res.plural})


def _conflict(res: Resource, name: str) -> ApiError:
    qual = f"{res.plural}.{res.group}" if res.group else res.plural
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {qual} "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                    {"name": name, "group": res.group, "kind": res.plural} if res.group else
                    {"name": name, "kind": res.plural})


def _invalid(res: Resource, name: str, causes: list[tuple[str, str]]) -> ApiError:
    msg = "; ".join(f"{f}: {m}" for f, m in causes)
    details: dict[str, Any] = {"name": name, "kind": res.kind,
                               "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f}
                                          for f, m in causes]}
    if res.group:
        details["group"] = res.group
    return ApiError(422, "Invalid", f'{res.kind} "{name}" is invalid: {msg}', details)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


Key = tuple[str, str, str]  # (plural, namespace or "", name)


@dataclass
class _HistoryEntry:
    rv: int
    plural: str
    type: str  # ADDED | MODIFIED | DELETED
    obj: dict[str, Any]
    old: dict[str, Any] | None


class _Watcher:
    """One open watch stream: its filter and the queue the store feeds."""

    def __init__(self, res: Resource, namespace: str | None, label_sel: Callable[..., bool],
                 field_sel: Callable[..., bool], bookmarks: bool) -> None:
        self.res = res
        self.namespace = namespace
        self.label_sel = label_sel
        self.field_sel = field_sel
        self.bookmarks = bookmarks
        self.queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.sock: socket.socket | None = None
        self.finished = threading.Event()

    def matches(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return self.label_sel(meta.get("labels") or {}) and self.field_sel(obj)

    def translate(self, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> tuple[str, dict] | None:
        """The event this watcher sees for a store event (or None), applying selectors to old and new state."""
        if etype == "ADDED":
            return ("ADDED", obj) if self.matches(obj) else None
        if etype == "DELETED":
            return ("DELETED", obj) if self.matches(old if old is not None else obj) else None
        was, now = self.matches(old), self.matches(obj)
        if was and now:
            return ("MODIFIED", obj)
        if now:
            return ("ADDED", obj)
        if was:
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"]
            return ("DELETED", gone)
        return None


class _Store:
    """Objects, the revision counter, the event history and the open watchers. One lock for all of it."""

    def __init__(self, history_size: int) -> None:
        self.lock = threading.RLock()
        self.objects: dict[Key, dict[str, Any]] = {}
        self.rv = 1
        self.history: deque[_HistoryEntry] = deque()
        self.history_size = history_size
        self.floor = 1  # oldest revision a watch may start from
        self.watchers: set[_Watcher] = set()

    def _trim(self) -> None:
        while len(self.history) > self.history_size:
            e = self.history.popleft()
            self.floor = e.rv

    def commit(self, res: Resource, etype: str, key: Key, obj: dict[str, Any] | None, old: dict[str, Any] | None,
               notify: bool = True) -> dict[str, Any]:
        """Write ``obj`` (None = delete) under a new revision; returns the stored (or last) object."""
        with self.lock:
            self.rv += 1
            if obj is None:
                assert old is not None
                final = copy.deepcopy(old)
                final["metadata"]["resourceVersion"] = str(self.rv)
                self.objects.pop(key, None)
                stored = final
            else:
                obj["metadata"]["resourceVersion"] = str(self.rv)
                self.objects[key] = obj
                stored = obj
            if not notify:
                # A change the watchers never hear of: resuming across it is fine, only a relist shows it.
                return copy.deepcopy(stored)
            entry = _HistoryEntry(self.rv, res.plural, etype, copy.deepcopy(stored),
                                  copy.deepcopy(old) if old is not None else None)
            self.history.append(entry)
            self._trim()
            for w in list(self.watchers):
                if w.res.plural == res.plural:
                    ev = w.translate(entry.type, entry.obj, entry.old)
                    if ev is not None:
                        w.queue.put(("event", ev))
            return copy.deepcopy(stored)

    def state_at(self, res: Resource, rv: int) -> dict[Key, dict[str, Any]]:
        """The objects of ``res`` at revision ``rv`` (>= floor), undoing newer history entries."""
        with self.lock:
            state = {k: v for k, v in self.objects.items() if k[0] == res.plural}
            for e in reversed(self.history):
                if e.rv <= rv:
                    break
                if e.plural != res.plural:
                    continue
                meta = e.obj["metadata"]
                key = (res.plural, meta.get("namespace") or "", meta["name"])
                if e.type == "ADDED":
                    state.pop(key, None)
                elif e.old is not None:
                    state[key] = e.old
            return state


class KubeApiServer:
    """The test API server. Thread-safe; the HTTP side runs in its own threads.

    ``port``: 0 picks a free port at the first :meth:`start` and keeps it. ``history_size``: events kept for
    watch resumption and consistent pagination. ``bookmark_interval_s``: how often an idle watcher with bookmarks
    gets one. ``kubelet_delay_s``: how long after a graceful pod delete the emulated kubelet removes the pod
    (None: never, as with a dead node). ``watch_timeout_scale``: multiplies ``timeoutSeconds`` (the client only
    sends whole seconds; tests shorten them with e.g. 0.25). ``token``: if set, requests must carry
    ``Authorization: Bearer <token>``. ``builtin_objects``: create the four standard namespaces and the
    ``default/kubernetes`` service (10.96.0.1), as a fresh cluster has them.
    """

    RESOURCES = RESOURCES

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, history_size: int = 1000,
                 bookmark_interval_s: float = 1.0, kubelet_delay_s: float | None = 0.05,
                 default_watch_timeout_s: float = 1800.0, watch_timeout_scale: float = 1.0,
                 token: str | None = None, builtin_objects: bool = True) -> None:
        self.host = host
        self.port = port
        self.bookmark_interval_s = bookmark_interval_s
        self.kubelet_delay_s = kubelet_delay_s
        self.default_watch_timeout_s = default_watch_timeout_s
        self.watch_timeout_scale = watch_timeout_scale
        self.token = token
        self.store = _Store(history_size)
        self.by_path: dict[tuple[str, str], dict[str, Resource]] = {}
        for r in RESOURCES:
            self.by_path.setdefault((r.group, r.version), {})[r.plural] = r
        self.by_plural = {r.plural: r for r in RESOURCES}
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._state_lock = threading.Lock()
        self.down_mode: str | None = None
        self.garbage = False
        self.requests: list[tuple[str, str]] = []
        """(method, path with query) of every request answered, in order."""
        self.watch_requests = 0
        self._ip_counter = itertools.count(10)
        self._timers: set[threading.Timer] = set()
        if builtin_objects:
            for ns in _BUILTIN_NAMESPACES:
                self.create("namespaces", {"metadata": {"name": ns}})
            self.create("services", {"metadata": {"name": "kubernetes", "namespace": "default",
                                                  "labels": {"component": "apiserver", "provider": "kubernetes"}},
                                     "spec": {"clusterIP": "10.96.0.1", "type": "ClusterIP",
                                              "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                                                         "targetPort": 6443}]}})

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> KubeApiServer:
        """Listen (on the same port as before, if any) and serve from a background thread."""
        with self._state_lock:
            if self._httpd is not None:
                return self
            httpd = _HTTPServer((self.host, self.port), _Handler)
            httpd.api = self
            self.port = httpd.server_address[1]
            self._httpd = httpd
            self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=f"kube-api-server:{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop every connection (the store is kept: start() serves it again)."""
        with self._state_lock:
            httpd, self._httpd = self._httpd, None
            thread, self._thread = self._thread, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        self._abort_watchers()
        httpd.kill_connections()
        if thread is not None:
            thread.join(5)

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def configuration(self) -> Any:
        """A ``kubernetes.client.Configuration`` pointing at this server."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        if self.token:
            cfg.api_key = {"authorization": f"Bearer {self.token}"}
        return cfg

    # -- test controls -----------------------------------------------------------------------------------------

    def close_watches(self, graceful: bool = False) -> int:
        """End every open watch stream; abruptly (connection reset mid-stream) unless ``graceful`` (the stream's
        terminating chunk, as on timeoutSeconds). Returns how many were open."""
        with self.store.lock:
            watchers = list(self.store.watchers)
        for w in watchers:
            if graceful:
                w.queue.put(("end", None))
            else:
                w.queue.put(("abort", None))
                self._shutdown_sock(w.sock)
        return len(watchers)

    def set_down(self, down: bool, how: str = "refuse") -> None:
        """Take the server down or bring it back. ``how="refuse"``: stop listening and reset every connection
        (connection refused, as when the API server process is gone); ``how="503"``: keep listening but answer
        every request 503 ServiceUnavailable (as a load balancer in front of a dead server does) and drop watches."""
        if how not in ("refuse", "503"):
            raise ValueError(f"how must be 'refuse' or '503', not {how!r}")
        if down:
            self.down_mode = how
            if how == "refuse":
                self.stop()
            else:
                self.close_watches()
        else:
            was = self.down_mode
            self.down_mode = None
            if was == "refuse" or self._httpd is None:
                self.start()

    def garbage_mode(self, on: bool) -> None:
        """While on, every answer is malformed JSON (200, application/json) and open watches get a malformed line
        (and stay open, so the client must notice and reconnect by itself)."""
        self.garbage = on
        if on:
            with self.store.lock:
                watchers = list(self.store.watchers)
            for w in watchers:
                w.queue.put(("garbage", None))

    def compact(self) -> int:
        """Forget the whole event history (like etcd compaction at the current revision): watches and Exact
        lists or continue tokens from older revisions get 410 Expired. Returns the new floor."""
        with self.store.lock:
            self.store.history.clear()
            self.store.floor = self.store.rv
            return self.store.floor

    def send_bookmarks(self) -> None:
        """Ask every watcher that allows bookmarks to send one now (if its queue is drained)."""
        with self.store.lock:
            for w in self.store.watchers:
                w.queue.put(("bookmark", None))

    @property
    def resource_version(self) -> int:
        return self.store.rv

    def open_watches(self) -> int:
        with self.store.lock:
            return len(self.store.watchers)

    # -- direct store access (same semantics as HTTP, no network) ----------------------------------------------

    def create(self, plural: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create like POST; returns the stored object. Raises :class:`ApiError`."""
        res = self.by_plural[plural]
        ns = (obj.get("metadata") or {}).get("namespace") or ("default" if res.namespaced else None)
        return self._create(res, ns, copy.deepcopy(dict(obj)))

    def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        with self.store.lock:
            obj = self.store.objects.get((plural, namespace or "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def update(self, plural: str, obj: Mapping[str, Any], status: bool = False) -> dict[str, Any]:
        """Replace like PUT (``status``: the /status subresource); returns the stored object."""
        res = self.by_plural[plural]
        meta = obj.get("metadata") or {}
        return self._update(res, meta.get("namespace") if res.namespaced else None, meta["name"],
                            copy.deepcopy(dict(obj)), status)

    def patch(self, plural: str, name: str, patch: Mapping[str, Any], namespace: str | None = None,
              status: bool = False) -> dict[str, Any]:
        """JSON merge patch like PATCH; returns the stored object."""
        res = self.by_plural[plural]
        return self._patch(res, namespace if res.namespaced else None, name, "application/merge-patch+json",
                           dict(patch), status)

    def delete(self, plural: str, name: str, namespace: str | None = None, grace_period_s: int | None = None
               ) -> dict[str, Any]:
        res = self.by_plural[plural]
        code, body = self._delete(res, namespace if res.namespaced else None, name,
                                  {"gracePeriodSeconds": grace_period_s} if grace_period_s is not None else {})
        del code
        return body

    def store_silently(self, plural: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``obj`` (create or replace, no checks) under a new revision WITHOUT telling any watcher and without
        a history entry: the change only shows up in lists. Simulates a watch event lost on the way."""
        res = self.by_plural[plural]
        obj = copy.deepcopy(dict(obj))
        meta = obj.setdefault("metadata", {})
        key = (plural, meta.get("namespace") or "", meta["name"])
        with self.store.lock:
            old = self.store.objects.get(key)
            obj.setdefault("kind", res.kind)
            obj.setdefault("apiVersion", res.api_version)
            if old is not None:
                for k in ("uid", "creationTimestamp"):
                    meta[k] = old["metadata"].get(k)
            else:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _now())
            return self.store.commit(res, "MODIFIED", key, obj, old, notify=False)

    def delete_silently(self, plural: str, name: str, namespace: str | None = None) -> None:
        """Remove an object WITHOUT telling any watcher (see :meth:`store_silently`)."""
        res = self.by_plural[plural]
        key = (plural, namespace or "", name)
        with self.store.lock:
            old = self.store.objects.get(key)
            if old is not None:
                self.store.commit(res, "DELETED", key, None, old, notify=False)

    # -- the API's semantics -----------------------------------------------------------------------------------

    def _check_namespace(self, res: Resource, ns: str | None) -> None:
        if res.namespaced and (("namespaces", "", ns or "") not in self.store.objects):
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})

    def _check_kind(self, res: Resource, obj: Mapping[str, Any]) -> None:
        kind, av = obj.get("kind"), obj.get("apiVersion")
        if (kind and kind != res.kind) or (av and av != res.api_version):
            raise ApiError(400, "BadRequest", f"the API version in the data ({av}) does not match the expected API "
                           f"version ({res.api_version})" if av and av != res.api_version else
                           f"the kind in the data ({kind}) does not match the expected kind ({res.kind})")

    def _validate(self, res: Resource, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        meta = obj["metadata"]
        name = meta.get("name") or ""
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", name) or \
                len(name) > 253:
            raise _invalid(res, name, [("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 '
                                        "subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                                        "and must start and end with an alphanumeric character")])
        spec = obj.get("spec") or {}
        if res.plural == "pods" and not spec.get("containers"):
            raise _invalid(res, name, [("spec.containers", "Required value")])
        if res.plural == "services":
            stype = spec.get("type", "ClusterIP")
            if stype != "ExternalName" and spec.get("clusterIP") != "None" and not spec.get("ports"):
                raise _invalid(res, name, [("spec.ports", "Required value")])
            if old is not None:
                o = (old.get("spec") or {}).get("clusterIP")
                if o and spec.get("clusterIP") and spec.get("clusterIP") != o and stype != "ExternalName":
                    raise _invalid(res, name, [("spec.clusterIPs[0]", f'Invalid value: []string{{"'
                                                f'{spec.get("clusterIP")}"}}: may not change once set')])

    def _allocate_cluster_ip(self, res: Resource, obj: dict[str, Any]) -> None:
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec["type"] == "ExternalName":
            return
        used = {ip for o in self.store.objects.values() if o["kind"] == "Service"
                for ip in (o.get("spec") or {}).get("clusterIPs") or []}
        ip = spec.get("clusterIP") or (spec.get("clusterIPs") or [None])[0]
        if ip and ip != "None":
            if ip in used:
                raise _invalid(res, obj["metadata"]["name"], [("spec.clusterIPs", f'Invalid value: []string{{"{ip}"'
                                                               f'}}: failed to allocate IP {ip}: provided IP is '
                                                               "already allocated")])
        elif not ip:
            while True:
                n = next(self._ip_counter)
                ip = f"{_SERVICE_CIDR_BASE[0]}.{_SERVICE_CIDR_BASE[1]}.{n // 256}.{n % 256}"
                if ip not in used:
                    break
        spec["clusterIP"] = ip
        spec["clusterIPs"] = spec.get("clusterIPs") or [ip]
        if ip != "None":
            fam = "IPv6" if ":" in ip else "IPv4"
            spec.setdefault("ipFamilies", [fam])
            spec.setdefault("ipFamilyPolicy", "SingleStack")

    def _create(self, res: Resource, ns: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the body of the request must be a JSON object")
        self._check_kind(res, obj)
        if not isinstance(obj.get("metadata"), dict):
            obj["metadata"] = {}
        meta = obj["metadata"]
        if res.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and ns and body_ns != ns:
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the "
                               "namespace sent on the request")
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise ApiError(400, "BadRequest", "resourceVersion should not be set on objects to be created")
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + "".join(random.choices(string.ascii_lowercase + string.digits,
                                                                             k=5))
            else:
                raise _invalid(res, "", [("metadata.name", "Required value: name or generateName is required")])
        obj["kind"] = res.kind
        obj["apiVersion"] = res.api_version
        # Status is not settable on create for resources with a status subresource (PrepareForCreate).
        if res.plural == "pods":
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
            spec = obj.setdefault("spec", {})
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("schedulerName", "default-scheduler")
            spec.setdefault("terminationGracePeriodSeconds", 30)
            spec.setdefault("dnsPolicy", "ClusterFirst")
        elif res.plural == "namespaces":
            obj["status"] = {"phase": "Active"}
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        elif res.plural == "services":
            obj["status"] = {"loadBalancer": {}}
        elif res.plural != "nodes":
            obj.pop("status", None)
            if not res.custom:
                obj["status"] = {}
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(k, None)
        if res.generation:
            meta["generation"] = 1
        with self.store.lock:
            self._check_namespace(res, ns)
            key = (res.plural, ns or "", meta["name"])
            if key in self.store.objects:
                raise ApiError(409, "AlreadyExists", f'{res.plural}{"." + res.group if res.group else ""} '
                               f'"{meta["name"]}" already exists',
                               {"name": meta["name"], "group": res.group, "kind": res.plural} if res.group else
                               {"name": meta["name"], "kind": res.plural})
            self._validate(res, obj, None)
            if res.plural == "services":
                self._allocate_cluster_ip(res, obj)
            return self.store.commit(res, "ADDED", key, obj, None)

    def _current(self, res: Resource, ns: str | None, name: str) -> tuple[Key, dict[str, Any]]:
        key = (res.plural, ns or "", name)
        obj = self.store.objects.get(key)
        if obj is None:
            raise _not_found(res, name)
        return key, obj

    def _update(self, res: Resource, ns: str | None, name: str, new: dict[str, Any], status: bool,
                from_patch: bool = False) -> dict[str, Any]:
        if not isinstance(new, dict):
            raise ApiError(400, "BadRequest", "the body of the request must be a JSON object")
        self._check_kind(res, new)
        if not isinstance(new.get("metadata"), dict):
            new["metadata"] = {}
        meta = new["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise ApiError(400, "BadRequest", f"the name of the object ({meta['name']}) does not match the name on "
                           f"the URL ({name})")
        if res.namespaced and meta.get("namespace") and meta["namespace"] != ns:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                           "sent on the request")
        with self.store.lock:
            key, old = self._current(res, ns, name)
            want = meta.get("resourceVersion")
            if want:
                if str(want) != old["metadata"]["resourceVersion"]:
                    raise _conflict(res, name)
            elif res.custom and not from_patch:
                raise _invalid(res, name, [("metadata.resourceVersion",
                                            "Invalid value: 0x0: must be specified for an update")])
            if status:
                obj = copy.deepcopy(old)
                if "status" in new:
                    obj["status"] = new["status"]
                else:
                    obj.pop("status", None)
            else:
                obj = new
                obj["kind"], obj["apiVersion"] = res.kind, res.api_version
                obj["metadata"] = meta
                if "status" in old:
                    obj["status"] = copy.deepcopy(old["status"])
                else:
                    obj.pop("status", None)
                m = obj["metadata"]
                m["name"] = name
                if res.namespaced:
                    m["namespace"] = ns
                for k in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                          "generation"):
                    if k in old["metadata"]:
                        m[k] = old["metadata"][k]
                    else:
                        m.pop(k, None)
                if res.plural == "services":
                    spec, ospec = obj.setdefault("spec", {}), old.get("spec") or {}
                    for k in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy", "type",
                              "sessionAffinity"):
                        if not spec.get(k) and ospec.get(k):
                            spec[k] = copy.deepcopy(ospec[k])
                self._validate(res, obj, old)
            obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            if obj == old:
                return copy.deepcopy(old)  # no-op: no new revision, no event
            if res.generation and not status:
                strip = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}  # noqa: E731
                if strip(obj) != strip(old):
                    obj["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
            m = obj["metadata"]
            if m.get("deletionTimestamp") and not m.get("finalizers") and not self._graceful_pending(res, obj):
                return self.store.commit(res, "DELETED", key, None, obj)
            return self.store.commit(res, "MODIFIED", key, obj, old)

    def _graceful_pending(self, res: Resource, obj: Mapping[str, Any]) -> bool:
        """A pod still waiting for its kubelet to finish a graceful deletion."""
        return res.plural == "pods" and bool((obj["metadata"].get("deletionGracePeriodSeconds") or 0) > 0)

    def _patch(self, res: Resource, ns: str | None, name: str, ctype: str, patch: Any, status: bool
               ) -> dict[str, Any]:
        ctype = (ctype or "").split(";")[0].strip().lower()
        if ctype == "application/strategic-merge-patch+json" and res.custom:
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                           "accepted media types include: application/json-patch+json, "
                           "application/merge-patch+json, application/apply-patch+yaml")
        with self.store.lock:
            _, old = self._current(res, ns, name)
            try:
                if ctype == "application/json-patch+json":
                    new = json_patch(old, patch)
                elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                    if not isinstance(patch, dict):
                        raise PatchError("the body of a merge patch must be a JSON object", 400)
                    if ctype.startswith("application/strategic") and any(k.startswith("$") for k in
                                                                          _walk_keys(patch)):
                        raise PatchError("strategic merge patch directives ($patch, $retainKeys, "
                                         "$setElementOrder, ...) are not supported by the test server", 400)
                    new = merge_patch(old, patch)
                else:
                    raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown "
                                   f"format - accepted media types include: application/json-patch+json, "
                                   "application/merge-patch+json, application/strategic-merge-patch+json")
            except PatchError as exc:
                raise ApiError(exc.code, "BadRequest" if exc.code == 400 else "Invalid", str(exc)) from None
            if not isinstance(new, dict):
                raise ApiError(400, "BadRequest", "the patched object is not a JSON object")
            # The patched object's resourceVersion is the precondition, if the patch set one.
            if (new.get("metadata") or {}).get("resourceVersion") == old["metadata"]["resourceVersion"] and \
                    not _patch_sets_rv(patch, ctype):
                new["metadata"].pop("resourceVersion", None)
            return self._update(res, ns, name, new, status, from_patch=True)

    def _delete(self, res: Resource, ns: str | None, name: str, opts: Mapping[str, Any]) -> tuple[int, dict]:
        with self.store.lock:
            key, old = self._current(res, ns, name)
            pre = opts.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
                raise ApiError(409, "Conflict", f"Precondition failed: UID in precondition: {pre['uid']}, UID in "
                               f"object meta: {old['metadata']['uid']}", {"name": name, "kind": res.plural})
            if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f"Precondition failed: ResourceVersion in precondition: "
                               f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                               f"{old['metadata']['resourceVersion']}", {"name": name, "kind": res.plural})
            meta = old["metadata"]
            grace = opts.get("gracePeriodSeconds")
            if res.plural == "pods":
                spec, st = old.get("spec") or {}, old.get("status") or {}
                if grace is None:
                    grace = int(spec.get("terminationGracePeriodSeconds", 30))
                if not spec.get("nodeName") or st.get("phase") in ("Succeeded", "Failed"):
                    grace = 0
                grace = int(grace)
                if grace > 0:
                    cur = meta.get("deletionGracePeriodSeconds")
                    if cur is not None and cur <= grace:
                        return 202, copy.deepcopy(old)
                    new = copy.deepcopy(old)
                    new["metadata"]["deletionTimestamp"] = _rfc3339(time.time() + grace)
                    new["metadata"]["deletionGracePeriodSeconds"] = grace
                    stored = self.store.commit(res, "MODIFIED", key, new, old)
                    self._schedule_kubelet(res, ns, name, stored["metadata"]["uid"])
                    return 202, stored
            if meta.get("finalizers"):
                if meta.get("deletionTimestamp"):
                    return 202, copy.deepcopy(old)
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = _now()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                return 202, self.store.commit(res, "MODIFIED", key, new, old)
            final = self.store.commit(res, "DELETED", key, None, old)
        if res.returns_deleted:
            return 200, final
        details: dict[str, Any] = {"name": name, "kind": res.plural, "uid": meta["uid"]}
        if res.group:
            details["group"] = res.group
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}

    def _schedule_kubelet(self, res: Resource, ns: str | None, name: str, uid: str) -> None:
        if self.kubelet_delay_s is None:
            return

        def finish() -> None:
            self._timers.discard(timer)
            with self.store.lock:
                key = (res.plural, ns or "", name)
                obj = self.store.objects.get(key)
                if obj is None or obj["metadata"]["uid"] != uid:
                    return
                if obj["metadata"].get("finalizers"):
                    new = copy.deepcopy(obj)
                    new["metadata"]["deletionGracePeriodSeconds"] = 0
                    self.store.commit(res, "MODIFIED", key, new, obj)
                    return
                self.store.commit(res, "DELETED", key, None, obj)

        timer = threading.Timer(self.kubelet_delay_s, finish)
        timer.daemon = True
        self._timers.add(timer)
        timer.start()

    # -- reads -------------------------------------------------------------------------------------------------

    def _selectors(self, res: Resource, q: Mapping[str, str]) -> tuple[Callable[..., bool], Callable[..., bool]]:
        try:
            return (parse_label_selector(q.get("labelSelector")),
                    parse_field_selector(q.get("fieldSelector"), res.field_getters()))
        except SelectorError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None

    @staticmethod
    def _parse_rv(text: str | None) -> int | None:
        if text is None or text == "":
            return None
        try:
            rv = int(text)
            if rv < 0:
                raise ValueError
        except ValueError:
            raise ApiError(400, "BadRequest", f"invalid resource version: strconv.ParseUint: parsing {text!r}: "
                           "invalid syntax") from None
        return rv

    def _too_large(self, rv: int) -> ApiError:
        return ApiError(504, "Timeout", f"Too large resource version: {rv}, current: {self.store.rv}",
                        {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                         "retryAfterSeconds": 1}, retry_after=1)

    def _list(self, res: Resource, ns: str | None, q: Mapping[str, str]) -> dict[str, Any]:
        label_sel, field_sel = self._selectors(res, q)
        rv = self._parse_rv(q.get("resourceVersion"))
        match = q.get("resourceVersionMatch", "")
        cont = q.get("continue", "")
        limit = int(q["limit"]) if q.get("limit", "").isdigit() and int(q["limit"]) > 0 else 0
        if match and rv is None:
            raise _invalid(res, "", [("resourceVersionMatch", "Forbidden: resourceVersionMatch is forbidden unless "
                                      "resourceVersion is provided")])
        if match and match not in ("Exact", "NotOlderThan"):
            raise _invalid(res, "", [("resourceVersionMatch", f'Unsupported value: "{match}": supported values: '
                                      '"Exact", "NotOlderThan"')])
        if match == "Exact" and rv == 0:
            raise _invalid(res, "", [("resourceVersionMatch", 'Forbidden: resourceVersionMatch "exact" is '
                                      'forbidden for resourceVersion "0"')])
        if cont and rv is not None and rv != 0:
            raise ApiError(400, "BadRequest", "specifying resource version is not allowed when using continue")
        start = ""
        with self.store.lock:
            current = self.store.rv
            if cont:
                try:
                    token = json.loads(base64.urlsafe_b64decode(cont + "=" * (-len(cont) % 4)))
                    snap, start = int(token["rv"]), str(token["start"])
                    if token.get("v") != "meta.k8s.io/v1":
                        raise ValueError
                except (ValueError, KeyError, TypeError):
                    raise ApiError(400, "BadRequest", "continue key is not valid: incorrect encoded start "
                                   "resourceVersion (version meta.k8s.io/v1)") from None
                if snap < self.store.floor:
                    raise ApiError(410, "Expired", "The provided continue parameter is too old to display a "
                                   "consistent list result. You can start a new list without the continue parameter, "
                                   "or use the continue value from the response.")
            elif match == "Exact" and rv is not None:
                if rv > current:
                    raise self._too_large(rv)
                if rv < self.store.floor:
                    raise ApiError(410, "Expired", f"too old resource version: {rv} ({self.store.floor})")
                snap = rv
            else:
                if rv is not None and rv > current:
                    raise self._too_large(rv)
                snap = current
            state = self.store.state_at(res, snap) if snap != current else \
                {k: v for k, v in self.store.objects.items() if k[0] == res.plural}
            keys = sorted(k for k in state if ns is None or k[1] == ns)
            items = []
            for k in keys:
                skey = f"{k[1]}/{k[2]}" if res.namespaced else k[2]
                if start and skey < start:
                    continue
                obj = state[k]
                if label_sel((obj["metadata"].get("labels") or {})) and field_sel(obj):
                    items.append((skey, obj))
            more = 0
            if limit and len(items) > limit:
                more = len(items) - limit
                items = items[:limit]
            out_items = []
            for _, obj in items:
                o = copy.deepcopy(obj)
                if not res.custom:
                    o.pop("kind", None)
                    o.pop("apiVersion", None)
                out_items.append(o)
        lmeta: dict[str, Any] = {"resourceVersion": str(snap)}
        if more:
            token = {"v": "meta.k8s.io/v1", "rv": snap, "start": items[-1][0] + "\x00"}
            lmeta["continue"] = base64.urlsafe_b64encode(json.dumps(token, separators=(",", ":")).encode()
                                                         ).decode().rstrip("=")
            if not q.get("labelSelector") and not q.get("fieldSelector"):
                lmeta["remainingItemCount"] = more
        elif res.custom:
            lmeta["continue"] = ""
        return {"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": lmeta, "items": out_items}

    # -- HTTP plumbing -----------------------------------------------------------------------------------------

    def _abort_watchers(self) -> None:
        with self.store.lock:
            watchers = list(self.store.watchers)
        for w in watchers:
            w.queue.put(("abort", None))
            self._shutdown_sock(w.sock)

    @staticmethod
    def _shutdown_sock(sock: socket.socket | None) -> None:
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def route(self, path: str) -> tuple[Resource, str | None, str | None, str | None] | None:
        """(resource, namespace, name, subresource) for a resource path, or None."""
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "api":
            gv, rest = ("", parts[1]), parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            gv, rest = (parts[1], parts[2]), parts[3:]
        else:
            return None
        table = self.by_path.get(gv)
        if table is None or not rest:
            return None
        ns: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] in table and table[rest[2]].namespaced:
            ns, rest = rest[1], rest[2:]
        res = table.get(rest[0])
        if res is None or (res.namespaced and ns is None and len(rest) > 1):
            return None
        if not res.namespaced and ns is not None:
            return None
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if len(rest) > 3 or (sub is not None and sub != "status"):
            return None
        return res, ns, name, sub

    def discovery(self, path: str) -> dict[str, Any] | None:
        parts = [p for p in path.split("/") if p]
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                    "serverAddress": f"{self.host}:{self.port}"}]}
        groups: dict[str, list[str]] = {}
        for g, v in self.by_path:
            if g:
                groups.setdefault(g, []).append(v)

        def group(g: str) -> dict[str, Any]:
            versions = [{"groupVersion": f"{g}/{v}", "version": v} for v in groups[g]]
            return {"name": g, "versions": versions, "preferredVersion": versions[0]}

        if parts == ["apis"]:
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group(g) for g in groups]}
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
            return {"kind": "APIGroup", "apiVersion": "v1", **group(parts[1])}
        gv = ("", parts[1]) if len(parts) == 2 and parts[0] == "api" else \
            (parts[1], parts[2]) if len(parts) == 3 and parts[0] == "apis" else None
        if gv is None or gv not in self.by_path:
            return None
        resources = []
        for r in self.by_path[gv].values():
            verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
            entry = {"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
                     "verbs": verbs}
            if r.short_names:
                entry["shortNames"] = list(r.short_names)
            resources.append(entry)
            resources.append({"name": f"{r.plural}/status", "singularName": "", "namespaced": r.namespaced,
                              "kind": r.kind, "verbs": ["get", "patch", "update"]})
        out: dict[str, Any] = {"kind": "APIResourceList", "groupVersion": "/".join(x for x in gv if x),
                               "resources": resources}
        if gv[0]:
            out["apiVersion"] = "v1"
        return out


def _bool_param(q: Mapping[str, str], name: str) -> bool:
    """A boolean query parameter as apimachinery reads it (Convert_Slice_string_To_bool): absent, "false" or "0"
    (any case) is false, anything else, even an empty value or "True" as older Python clients send, is true."""
    return name in q and q[name].lower() not in ("false", "0")


def _walk_keys(obj: Any) -> Iterable[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _walk_keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_keys(v)


def _patch_sets_rv(patch: Any, ctype: str) -> bool:
    if ctype == "application/json-patch+json":
        return any(isinstance(op, dict) and op.get("path") == "/metadata/resourceVersion" for op in patch or [])
    return isinstance(patch, dict) and "resourceVersion" in (patch.get("metadata") or {})


_GARBAGE = b'{"kind":"Status","apiVersion":"v1","metadata":{},"items":[{"metadata":{"name":\x00\xff'


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: KubeApiServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def kill_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
        for c in conns:
            KubeApiServer._shutdown_sock(c)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-answer is normal here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kube-api-server-test"
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # One method for every verb.
    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _send(self, code: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: ApiError) -> None:
        headers = {"Retry-After": str(err.retry_after)} if err.retry_after else None
        self._send(err.code, err.status(), headers)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"the object provided is unrecognized: {exc}") from None

    def _serve(self, method: str) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            body = self._body() if method in ("POST", "PUT", "PATCH", "DELETE") else None
        except ApiError as err:
            self._error(err)
            return
        api.requests.append((method, self.path))
        if api.down_mode == "503":
            self._error(ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request"))
            return
        if api.token and self.headers.get("Authorization") != f"Bearer {api.token}":
            self._error(ApiError(401, "Unauthorized", "Unauthorized"))
            return
        if api.garbage:
            self._send(200, _GARBAGE)
            return
        try:
            if method == "GET":
                if url.path in ("/healthz", "/readyz", "/livez"):
                    data = b"ok"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if url.path == "/version":
                    self._send(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-retina-test",
                                     "platform": "linux/amd64"})
                    return
                disc = api.discovery(url.path)
                if disc is not None:
                    self._send(200, disc)
                    return
            routed = api.route(url.path)
            if routed is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            res, ns, name, sub = routed
            status = sub == "status"
            if method == "GET" and name is None:
                if _bool_param(q, "watch"):
                    self._watch(res, ns, q)
                else:
                    self._send(200, api._list(res, ns, q))
            elif method == "GET":
                with api.store.lock:
                    _, obj = api._current(res, ns, name)
                    self._send(200, copy.deepcopy(obj))
            elif method == "POST" and name is None:
                self._send(201, api._create(res, ns, body))
            elif method == "PUT" and name is not None:
                self._send(200, api._update(res, ns, name, body, status))
            elif method == "PATCH" and name is not None:
                self._send(200, api._patch(res, ns, name, self.headers.get("Content-Type", ""), body, status))
            elif method == "DELETE" and name is not None and not status:
                opts = dict(body or {})
                if "gracePeriodSeconds" in q:
                    opts["gracePeriodSeconds"] = int(q["gracePeriodSeconds"])
                code, out = api._delete(res, ns, name, opts)
                self._send(code, out)
            else:
                raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested "
                               "resource")
        except ApiError as err:
            self._error(err)

    # -- watch -------------------------------------------------------------------------------------------------

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _event(self, etype: str, obj: Mapping[str, Any]) -> None:
        self._chunk(json.dumps({"type": etype, "object": obj}, separators=(",", ":")).encode() + b"\n")

    def _watch(self, res: Resource, ns: str | None, q: Mapping[str, str]) -> None:
        api = self.server.api
        label_sel, field_sel = api._selectors(res, q)
        if _bool_param(q, "sendInitialEvents"):
            raise _invalid(res, "", [("sendInitialEvents", "Forbidden: sendInitialEvents is forbidden for watch "
                                      "unless the WatchList feature gate is enabled")])
        rv = api._parse_rv(q.get("resourceVersion"))
        try:
            timeout = float(q["timeoutSeconds"]) * api.watch_timeout_scale if q.get("timeoutSeconds") else \
                api.default_watch_timeout_s
        except ValueError:
            raise ApiError(400, "BadRequest", f"invalid timeoutSeconds {q['timeoutSeconds']!r}") from None
        w = _Watcher(res, ns, label_sel, field_sel, _bool_param(q, "allowWatchBookmarks"))
        w.sock = self.connection
        initial: list[tuple[str, dict[str, Any]]] = []
        error: ApiError | None = None
        with api.store.lock:
            api.watch_requests += 1
            if rv is None or rv == 0:
                for k in sorted(k for k in api.store.objects if k[0] == res.plural):
                    obj = api.store.objects[k]
                    if w.matches(obj):
                        initial.append(("ADDED", copy.deepcopy(obj)))
            elif rv < api.store.floor:
                error = ApiError(410, "Expired", f"too old resource version: {rv} ({api.store.floor})")
            elif rv > api.store.rv:
                error = api._too_large(rv)
            else:
                for e in api.store.history:
                    if e.rv > rv and e.plural == res.plural:
                        ev = w.translate(e.type, e.obj, e.old)
                        if ev is not None:
                            initial.append(ev)
            if error is None:
                api.store.watchers.add(w)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache, private")
            self.end_headers()
            if error is not None:
                self._event("ERROR", error.status())
                self._chunk(b"")
                return
            for etype, obj in initial:
                self._event(etype, obj)
            deadline = time.monotonic() + timeout
            last_sent = time.monotonic()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    what, payload = w.queue.get(timeout=min(left, 0.05))
                except queue.Empty:
                    if w.bookmarks and time.monotonic() - last_sent >= api.bookmark_interval_s:
                        what, payload = "bookmark", None
                    else:
                        continue
                if what == "event":
                    self._event(*payload)
                elif what == "bookmark":
                    if not w.bookmarks:
                        continue
                    with api.store.lock:
                        if not w.queue.empty():
                            continue  # events first: a bookmark must not overtake them
                        mark = {"kind": res.kind, "apiVersion": res.api_version,
                                "metadata": {"resourceVersion": str(api.store.rv), "creationTimestamp": None}}
                    self._event("BOOKMARK", mark)
                elif what == "garbage":
                    self._chunk(b'{"type":"MODIFIED","object":{"metadata":{"name":"x\x00\n')
                elif what == "end":
                    break
                elif what == "abort":
                    self.close_connection = True
                    return
                last_sent = time.monotonic()
            self._chunk(b"")
        except OSError:
            self.close_connection = True
        finally:
            with api.store.lock:
                api.store.watchers.discard(w)
            w.finished.set()


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.support.kube_api_server [--port 6443]``: serve until interrupted (for manual runs)."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=6443)
    args = ap.parse_args(argv)
    server = KubeApiServer(args.host, args.port).start()
    print(f"serving the test Kubernetes API at {server.url} (kubectl --server {server.url})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
