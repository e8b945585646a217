"""What the operator watches, and the address map it keeps from it.

Informers (:class:`retina_core.kube.watch.Informer`, cluster-wide, objects trimmed to what is used):

* **Pods**: every address in ``status.podIPs`` (IPv4 and IPv6), skipping ``hostNetwork`` pods (their address is
  the node's) and finished pods (phase Succeeded/Failed). Identity: namespace, name, labels, node and its zone,
  the first service (by name) of the namespace whose selector matches, the workloads ``(top, direct)`` and the
  ``observed`` flag (annotation ``retina.sh=observe`` on the pod or its namespace).
* **ReplicaSets** and **Jobs**: only to resolve a pod's top owner (ReplicaSet -> Deployment, Job -> CronJob) from
  the local store, without a request per pod. A pod whose ReplicaSet is not (yet) known is taken to belong to the
  Deployment its name implies (``<deployment>-<pod-template-hash>``) until the ReplicaSet shows up.
* **Services**: ``spec.clusterIPs`` unless ``None``, ``status.loadBalancer.ingress[].ip``, ``spec.externalIPs``.
* **Nodes**: every ``InternalIP``; zone from ``topology.kubernetes.io/zone``.
* **Namespaces**: only their ``retina.sh`` annotation.

Address extraction, trimming, zone and owner helpers are the agent's (:mod:`enricher.kubernetes`), so an address
gets the same identity from the operator as from the agent's direct ``kubernetes`` source.

Changes go through :class:`~retina_operator.ipmap.IpMap` (claims, precedence, address reuse) and the resulting
deltas are appended to the :class:`~retina_operator.broadcast.DeltaLog`, all under :attr:`ClusterState.lock`, so
the log's order is the order in which the map changed. :meth:`ClusterState.subscribe` takes a cursor and the
snapshot under the same lock. The state is **ready** once every informer has listed once: before that a
snapshot would be partial (an agent would drop entries it still needs), so no agent is served.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from retina_core.identity import KIND_NODE, KIND_POD, KIND_SERVICE, Identity
from enricher.kubernetes import (controller_ref, guess_parent, node_ips, node_zone, pod_ips, service_ips, trim_node,
                                 trim_pod, trim_service)
from retina_operator.broadcast import DeltaLog
from retina_operator.ipmap import Delta, Entry, IpMap
from retina_core.kube.watch import DELETED, SYNCED, Informer, WatchEvent
from retina_operator.wire import framed_delete, framed_upsert

__all__ = ["ANNOTATION", "ClusterState", "INFORMER_NAMES", "OBSERVE", "trim_namespace", "trim_operator_pod",
           "trim_owner"]

log = logging.getLogger(__name__)

ANNOTATION = "retina.sh"
OBSERVE = "observe"
_OWNER_KINDS = {"ReplicaSet": "apps", "Job": "batch"}
INFORMER_NAMES = ("pods", "services", "nodes", "namespaces", "replicasets", "jobs")


# -- trimming (what the stores keep) -----------------------------------------------------------------------------


def _annotation(obj: Mapping[str, Any]) -> dict[str, str]:
    ann = (obj.get("metadata") or {}).get("annotations") or {}
    return {ANNOTATION: str(ann[ANNOTATION])} if isinstance(ann, Mapping) and ANNOTATION in ann else {}


def trim_operator_pod(obj: dict[str, Any]) -> dict[str, Any]:
    """The agent's pod trim plus the ``retina.sh`` annotation."""
    out = trim_pod(obj)
    ann = _annotation(obj)
    if ann:
        out["metadata"]["annotations"] = ann
    return out


def trim_namespace(obj: dict[str, Any]) -> dict[str, Any]:
    m = obj.get("metadata") or {}
    meta = {k: m[k] for k in ("name", "uid", "resourceVersion") if k in m}
    ann = _annotation(obj)
    if ann:
        meta["annotations"] = ann
    return {"metadata": meta}


def trim_owner(obj: dict[str, Any]) -> dict[str, Any]:
    """A ReplicaSet or Job: who it is and who controls it."""
    m = obj.get("metadata") or {}
    return {"metadata": {k: m[k] for k in ("name", "namespace", "uid", "resourceVersion", "ownerReferences")
                         if k in m}}


def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def _uid(obj: Mapping[str, Any], fallback: str) -> str:
    return str((obj.get("metadata") or {}).get("uid") or fallback)


def _observed(meta: Mapping[str, Any]) -> bool:
    return ((meta.get("annotations") or {}).get(ANNOTATION) or "").strip().lower() == OBSERVE


class ClusterState:
    """The informers, the address map and the delta log (see the module docstring).

    ``api_client``: a ``kubernetes.client.ApiClient``. ``queue_size``: the delta log's capacity, i.e. how many
    updates an agent may fall behind before it is disconnected. ``informer_options``: passed to every
    :class:`Informer` (``resync_period_s``, ``backoff_initial_s``, ``backoff_max_s``, ``watch_timeout_s``,
    ``request_timeout_s``).
    """

    def __init__(self, api_client: Any, *, queue_size: int = 8192, **informer_options: Any) -> None:
        from kubernetes import client

        self.lock = threading.RLock()
        self.ipmap = IpMap()
        self.log = DeltaLog(queue_size)
        self.ready = threading.Event()
        self.ready_at: float | None = None
        self._listeners: list[Callable[[], None]] = []
        self._pods: dict[str, dict[str, Any]] = {}
        self._pods_by_ns: dict[str, set[str]] = {}
        self._pods_by_node: dict[str, set[str]] = {}
        self._pods_by_owner: dict[tuple[str, str, str], set[str]] = {}
        self._services: dict[str, dict[str, Any]] = {}
        self._selectors: dict[str, dict[str, dict[str, str]]] = {}  # namespace -> service name -> selector
        self._nodes: dict[str, dict[str, Any]] = {}
        self._observed_ns: set[str] = set()
        self._parents: dict[tuple[str, str, str], tuple[str, tuple[str, str] | None]] = {}

        core = client.CoreV1Api(api_client)
        apps = client.AppsV1Api(api_client)
        batch = client.BatchV1Api(api_client)
        spec: dict[str, tuple[Callable[..., Any], Callable[[dict[str, Any]], dict[str, Any]],
                              Callable[[WatchEvent], None]]] = {
            "pods": (core.list_pod_for_all_namespaces, trim_operator_pod, self._on_pod),
            "services": (core.list_service_for_all_namespaces, trim_service, self._on_service),
            "nodes": (core.list_node, trim_node, self._on_node),
            "namespaces": (core.list_namespace, trim_namespace, self._on_namespace),
            "replicasets": (apps.list_replica_set_for_all_namespaces, trim_owner,
                            lambda ev: self._on_owner("ReplicaSet", ev)),
            "jobs": (batch.list_job_for_all_namespaces, trim_owner, lambda ev: self._on_owner("Job", ev)),
        }
        self.informers: dict[str, Informer] = {}
        for name in INFORMER_NAMES:
            list_func, transform, handler = spec[name]
            inf = Informer(list_func, name=name, transform=transform, **informer_options)
            inf.add_handler(handler)
            self.informers[name] = inf

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        for inf in self.informers.values():
            inf.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        for inf in self.informers.values():
            inf.stop(timeout_s)

    def add_listener(self, fn: Callable[[], None]) -> None:
        """``fn()`` is called (under the lock, so it must not block) after every append to the log and when the
        state becomes ready."""
        self._listeners.append(fn)

    def _notify(self) -> None:
        for fn in self._listeners:
            try:
                fn()
            except Exception:  # a listener bug must not break the informers
                log.exception("operator: state listener failed")

    # -- reading -----------------------------------------------------------------------------------------------

    def subscribe(self) -> tuple[int, list[bytes]]:
        """A cursor into the delta log and the snapshot it follows (framed UPSERTs, by address), taken atomically:
        the snapshot is exactly the map after every update before the cursor."""
        with self.lock:
            cursor = self.log.head
            items = list(self.ipmap.resolved.items())
        items.sort(key=lambda kv: kv[0])
        return cursor, [framed_upsert(ip, e) for ip, e in items]

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {"pods": len(self._pods), "services": len(self._services), "nodes": len(self._nodes),
                    "observed_namespaces": len(self._observed_ns)}

    def informer_health(self) -> dict[str, dict[str, Any]]:
        return {name: inf.health() for name, inf in self.informers.items()}

    def not_synced(self) -> list[str]:
        return [name for name, inf in self.informers.items() if not inf.synced]

    # -- writing (informer threads, under the lock) ------------------------------------------------------------

    def _publish(self, deltas: list[Delta]) -> None:
        if not deltas:
            return
        self.log.append([framed_upsert(d.ip, d.entry) if d.entry is not None
                         else framed_delete(d.ip, d.old.kind if d.old is not None else KIND_POD) for d in deltas])
        self._notify()

    def _set(self, owner: tuple[str, str], entries: Mapping[str, Entry], rv: int, created: str,
             live: bool = True) -> None:
        self._publish(self.ipmap.set_claims(owner, entries, rv=rv, created=created, live=live))

    def _check_ready(self) -> None:
        if self.ready.is_set() or not all(inf.synced for inf in self.informers.values()):
            return
        with self.lock:
            if self.ready.is_set():
                return
            self.ready_at = time.time()
            self.ready.set()
            counts = self.ipmap.kind_counts()
            log.info("operator: all informers listed: %d addresses (%d pods, %d services, %d nodes); serving agents",
                     len(self.ipmap), counts[KIND_POD], counts[KIND_SERVICE], counts[KIND_NODE])
            self._notify()

    # pods

    def _on_pod(self, ev: WatchEvent) -> None:
        if ev.type == SYNCED:
            self._check_ready()
            return
        key = ev.key
        with self.lock:
            old = self._pods.get(key)
            if old is not None:
                self._unindex_pod(key, old)
            if ev.type == DELETED:
                self._pods.pop(key, None)
                gone = ev.old or ev.obj or {}
                self._set((KIND_POD, _uid(gone, key)), {}, 0, "")
                return
            self._pods[key] = ev.obj
            self._index_pod(key, ev.obj)
            self._claim_pod(key)

    def _index_pod(self, key: str, pod: Mapping[str, Any]) -> None:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        self._pods_by_ns.setdefault(meta.get("namespace", ""), set()).add(key)
        node = spec.get("nodeName")
        if node:
            self._pods_by_node.setdefault(node, set()).add(key)
        ref = controller_ref(meta)
        if ref is not None and ref.get("kind") in _OWNER_KINDS:
            self._pods_by_owner.setdefault((meta.get("namespace", ""), str(ref["kind"]), str(ref.get("name", ""))),
                                           set()).add(key)

    def _unindex_pod(self, key: str, pod: Mapping[str, Any]) -> None:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        for index, k in ((self._pods_by_ns, meta.get("namespace", "")), (self._pods_by_node, spec.get("nodeName"))):
            s = index.get(k)
            if s is not None:
                s.discard(key)
                if not s:
                    del index[k]
        ref = controller_ref(meta)
        if ref is not None and ref.get("kind") in _OWNER_KINDS:
            ok = (meta.get("namespace", ""), str(ref["kind"]), str(ref.get("name", "")))
            s = self._pods_by_owner.get(ok)
            if s is not None:
                s.discard(key)
                if not s:
                    del self._pods_by_owner[ok]

    def _workloads(self, pod: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        meta = pod.get("metadata") or {}
        ref = controller_ref(meta)
        if ref is None:
            return ()
        direct = (str(ref["kind"]), str(ref.get("name", "")))
        top: tuple[str, str] | None = None
        group = str(ref.get("apiVersion", "")).split("/")[0]
        if _OWNER_KINDS.get(direct[0]) == group:
            store = self.informers["replicasets" if direct[0] == "ReplicaSet" else "jobs"]
            owner = store.get(f"{meta.get('namespace', '')}/{direct[1]}")
            if owner is None:
                top = guess_parent(direct[0], direct[1], meta.get("labels") or {})
            elif not ref.get("uid") or _uid(owner, "") in ("", ref.get("uid")):
                pref = controller_ref(owner.get("metadata") or {})
                top = (str(pref["kind"]), str(pref.get("name", ""))) if pref else None
        if top is None or top == direct:
            return (direct,)
        return (top, direct)

    def _selecting_service(self, ns: str, labels: Mapping[str, str]) -> str:
        sels = self._selectors.get(ns)
        if not sels:
            return ""
        for name in sorted(sels):
            if all(labels.get(k) == v for k, v in sels[name].items()):
                return name
        return ""

    def _claim_pod(self, key: str) -> None:
        pod = self._pods.get(key)
        if pod is None:
            return
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        owner = (KIND_POD, _uid(pod, key))
        phase = (pod.get("status") or {}).get("phase")
        if spec.get("hostNetwork") or phase in ("Succeeded", "Failed"):
            self._set(owner, {}, 0, "")
            return
        ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
        node = str(spec.get("nodeName") or "")
        zone = node_zone(self._nodes[node]) if node in self._nodes else ""
        label_list = tuple(f"{k}={v}" for k, v in labels.items())
        workloads = self._workloads(pod)
        service = self._selecting_service(ns, labels)
        observed = _observed(meta) or ns in self._observed_ns
        entries = {ip: Entry(KIND_POD, Identity(KIND_POD, namespace=ns, pod_name=name, labels=label_list,
                                                workloads=workloads, service=service, node_name=node, zone=zone,
                                                ip=ip), observed)
                   for ip in pod_ips(pod)}
        self._set(owner, entries, _rv(pod), str(meta.get("creationTimestamp") or ""),
                  live=not meta.get("deletionTimestamp"))

    def _reclaim(self, keys: set[str] | None) -> None:
        for key in sorted(keys or ()):
            self._claim_pod(key)

    # services

    def _on_service(self, ev: WatchEvent) -> None:
        if ev.type == SYNCED:
            self._check_ready()
            return
        with self.lock:
            svc, key = ev.obj or {}, ev.key
            meta = svc.get("metadata") or {}
            ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
            before = dict(self._selectors.get(ns, {}))
            if ev.type == DELETED:
                self._services.pop(key, None)
                self._selectors.get(ns, {}).pop(name, None)
                self._set((KIND_SERVICE, _uid(ev.old or svc, key)), {}, 0, "")
            else:
                self._services[key] = svc
                sel = (svc.get("spec") or {}).get("selector") or {}
                if sel and isinstance(sel, Mapping):
                    self._selectors.setdefault(ns, {})[name] = {str(k): str(v) for k, v in sel.items()}
                else:
                    self._selectors.get(ns, {}).pop(name, None)
                entries = {ip: Entry(KIND_SERVICE, Identity(KIND_SERVICE, namespace=ns, service=name, ip=ip))
                           for ip in service_ips(svc)}
                self._set((KIND_SERVICE, _uid(svc, key)), entries, _rv(svc), str(meta.get("creationTimestamp") or ""))
            if not self._selectors.get(ns):
                self._selectors.pop(ns, None)
            if self._selectors.get(ns, {}) != before:
                self._reclaim(self._pods_by_ns.get(ns))

    # nodes

    def _on_node(self, ev: WatchEvent) -> None:
        if ev.type == SYNCED:
            self._check_ready()
            return
        with self.lock:
            node, key = ev.obj or {}, ev.key
            name = str((node.get("metadata") or {}).get("name", ""))
            old_zone = node_zone(self._nodes[name]) if name in self._nodes else None
            if ev.type == DELETED:
                self._nodes.pop(name, None)
                self._set((KIND_NODE, _uid(ev.old or node, key)), {}, 0, "")
                zone = None
            else:
                self._nodes[name] = node
                zone = node_zone(node)
                entries = {ip: Entry(KIND_NODE, Identity(KIND_NODE, node_name=name, zone=zone, ip=ip))
                           for ip in node_ips(node)}
                self._set((KIND_NODE, _uid(node, key)), entries, _rv(node),
                          str(node["metadata"].get("creationTimestamp") or ""))
            if (zone or "") != (old_zone or ""):
                self._reclaim(self._pods_by_node.get(name))

    # namespaces

    def _on_namespace(self, ev: WatchEvent) -> None:
        if ev.type == SYNCED:
            self._check_ready()
            return
        with self.lock:
            meta = (ev.obj or {}).get("metadata") or {}
            name = str(meta.get("name", ""))
            was = name in self._observed_ns
            now = ev.type != DELETED and _observed(meta)
            if now:
                self._observed_ns.add(name)
            else:
                self._observed_ns.discard(name)
            if now != was:
                self._reclaim(self._pods_by_ns.get(name))

    # replicasets and jobs

    def _on_owner(self, kind: str, ev: WatchEvent) -> None:
        if ev.type == SYNCED:
            self._check_ready()
            return
        with self.lock:
            meta = (ev.obj or {}).get("metadata") or {}
            key = (str(meta.get("namespace", "")), kind, str(meta.get("name", "")))
            if ev.type == DELETED:
                parent = None
                self._parents.pop(key, None)
            else:
                ref = controller_ref(meta)
                parent = (str(ref["kind"]), str(ref.get("name", ""))) if ref else None
                state = (str(meta.get("uid", "")), parent)
                if self._parents.get(key) == state:
                    return  # a status update: the pods' workloads did not change
                self._parents[key] = state
            self._reclaim(self._pods_by_owner.get(key))
