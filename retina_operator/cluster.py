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

Trimming, address extraction, zones, owner resolution, service selection and the object -> identity derivation
are :mod:`retina_core.kube.objects`, shared with the agent's direct ``kubernetes`` source, so an address gets the
same identity from the operator as from that source. The operator only supplies the owner lookup (its ReplicaSet
and Job stores).

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

from retina_core.identity import KIND_NODE, KIND_POD, KIND_SERVICE
from retina_core.kube.objects import (ANNOTATION, OBSERVE, OWNER_GROUPS, OwnerUnresolved, controller_key,
                                      controller_ref, creation_timestamp, index_service_selector, is_observed,
                                      node_identities, node_zone, owner_parent, pod_claims_addresses,
                                      pod_identities, pod_labels, pod_node, pod_workloads, resource_version,
                                      selecting_service, service_identities, service_selector, trim_node, trim_pod,
                                      trim_service)
from retina_core.kube.watch import DELETED, SYNCED, Informer, WatchEvent

from retina_operator.broadcast import DeltaLog
from retina_operator.ipmap import Delta, Entry, IpMap
from retina_operator.wire import framed_delete, framed_upsert

__all__ = ["ANNOTATION", "ClusterState", "INFORMER_NAMES", "OBSERVE", "trim_namespace", "trim_operator_pod",
           "trim_owner"]

log = logging.getLogger(__name__)

_OWNER_STORES = {"ReplicaSet": "replicasets", "Job": "jobs"}
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


def _uid(obj: Mapping[str, Any], fallback: str) -> str:
    return str((obj.get("metadata") or {}).get("uid") or fallback)


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
        if ref is not None and ref.get("kind") in OWNER_GROUPS:
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
        if ref is not None and ref.get("kind") in OWNER_GROUPS:
            ok = (meta.get("namespace", ""), str(ref["kind"]), str(ref.get("name", "")))
            s = self._pods_by_owner.get(ok)
            if s is not None:
                s.discard(key)
                if not s:
                    del self._pods_by_owner[ok]

    def _parent_of(self, kind: str, ns: str, name: str, uid: str | None) -> tuple[str, str] | None:
        """:data:`retina_core.kube.objects.ParentOf` from the ReplicaSet/Job stores: an owner not (yet) in its
        store is unresolved (the pod's workloads are guessed, and the pod is reclaimed when the owner shows up)."""
        owner = self.informers[_OWNER_STORES[kind]].get(f"{ns}/{name}")
        if owner is None:
            raise OwnerUnresolved(f"{kind} {ns}/{name} not in the store")
        return owner_parent(owner, uid)

    def _workloads(self, pod: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        return pod_workloads(pod, self._parent_of)[0]

    def _claim_pod(self, key: str) -> None:
        pod = self._pods.get(key)
        if pod is None:
            return
        owner = (KIND_POD, _uid(pod, key))
        if not pod_claims_addresses(pod):
            self._set(owner, {}, 0, "")
            return
        meta = pod.get("metadata") or {}
        ns = str(meta.get("namespace", ""))
        node = pod_node(pod)
        idents = pod_identities(pod, zone=node_zone(self._nodes[node]) if node in self._nodes else "",
                                service=selecting_service(self._selectors.get(ns), pod_labels(pod)),
                                workloads=self._workloads(pod))
        observed = is_observed(pod) or ns in self._observed_ns
        entries = {ip: Entry(KIND_POD, ident, observed) for ip, ident in idents.items()}
        self._set(owner, entries, resource_version(pod), creation_timestamp(pod),
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
            if ev.type == DELETED:
                self._services.pop(key, None)
                changed = index_service_selector(self._selectors, ns, name, None)
                self._set((KIND_SERVICE, _uid(ev.old or svc, key)), {}, 0, "")
            else:
                self._services[key] = svc
                changed = index_service_selector(self._selectors, ns, name, service_selector(svc))
                entries = {ip: Entry(KIND_SERVICE, ident) for ip, ident in service_identities(svc).items()}
                self._set((KIND_SERVICE, _uid(svc, key)), entries, resource_version(svc), creation_timestamp(svc))
            if changed:
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
                entries = {ip: Entry(KIND_NODE, ident) for ip, ident in node_identities(node, KIND_NODE).items()}
                self._set((KIND_NODE, _uid(node, key)), entries, resource_version(node), creation_timestamp(node))
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
            now = ev.type != DELETED and is_observed(ev.obj)
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
                self._parents.pop(key, None)
            else:
                state = (str(meta.get("uid", "")), controller_key(meta))
                if self._parents.get(key) == state:
                    return  # a status update: the pods' workloads did not change
                self._parents[key] = state
            self._reclaim(self._pods_by_owner.get(key))
