"""The ``kubernetes`` source: identities straight from the Kubernetes API, for small clusters without the operator.

Three informers (:class:`retina_core.kube.watch.Informer`) feed the cache:

* **Pods of this node** (``fieldSelector=spec.nodeName=<node>``, as Retina's local context): every address in
  ``status.podIPs`` (IPv4 and IPv6; ``status.podIP`` for old servers), skipping ``hostNetwork`` pods (their
  address is the node's) and pods that have finished (phase Succeeded/Failed: their sandbox is gone and the
  address may already be someone else's). Identity: namespace, pod name, labels, node and its zone, and the
  workloads ``((top kind, top name), (owner kind, owner name))`` from the controller ownerReference resolved one
  level up for ReplicaSets of group ``apps`` (→ Deployment) and Jobs of group ``batch`` (→ CronJob); DaemonSets,
  StatefulSets and other owners are the top themselves. The ReplicaSet/Job is fetched with a GET once and cached
  (``owner_cache_size`` entries, ``owner_cache_ttl_s``), which costs one request per ReplicaSet on this node rather
  than a cluster-wide watch per agent. When the GET fails for a transport reason, a ReplicaSet whose name is
  ``<deployment>-<pod-template-hash>`` is taken to belong to that Deployment meanwhile, and the lookup is retried
  in the background.
* **Services** (all namespaces): ``spec.clusterIPs`` (``clusterIP`` for old servers) unless ``None``,
  ``status.loadBalancer.ingress[].ip`` and ``spec.externalIPs``. A pod gets the name of the alphabetically first
  service of its namespace whose (non-empty) selector matches its labels.
* **Nodes** (all): every ``InternalIP`` address; zone from ``topology.kubernetes.io/zone`` (or the deprecated
  ``failure-domain.beta.kubernetes.io/zone``). This agent's node gets kind ``host``, the others ``node``.

The derivation itself (trimming, addresses, zones, owners, service selection, object -> identities) is
:mod:`retina_core.kube.objects`, shared with the operator; owner GETs are
:class:`retina_core.kube.owners.OwnerResolver`. This module keeps the informers, claims and cache updates.

Cache updates: nothing is published until all three informers have listed once; then the whole picture is
published in one snapshot (``IPCache.publish``) and ``status()["loaded"]`` turns True. After that every change is
one ``IPCache.apply`` batch holding only the addresses whose identity changed. Pods, services and nodes live in the
cache's separate per-kind maps, so a delete for one kind never removes another kind's entry. Within a kind, an
address claimed by two objects (a new pod got the address of a pod whose deletion has not been seen yet) goes to
the later claim (the object's resourceVersion when it was first seen holding the address, then creation time),
and the old object's delete only withdraws its own claim: the new pod keeps the address.

Trouble with the API server never stops the source: each informer retries with backoff and relists after a 410;
the cache keeps the last good picture meanwhile; ``status()["error"]`` names the first failing informer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from retina_core.addr import ip_bytes
from retina_core.identity import KIND_HOST, KIND_NODE, KIND_POD, KIND_SERVICE, Identity
from retina_core.kube.objects import (OwnerUnresolved, creation_timestamp, index_service_selector, node_identities,
                                      node_zone, pod_claims_addresses, pod_identities, pod_labels, pod_node,
                                      pod_workloads, resource_version, selecting_service, service_identities,
                                      service_selector, trim_node, trim_pod, trim_service)
from retina_core.kube.owners import OwnerResolver

from enricher.ipcache import IPCache

__all__ = ["KubeConfigError", "KubernetesSource"]

log = logging.getLogger(__name__)

_KINDS = (KIND_POD, KIND_SERVICE, KIND_NODE)


class KubeConfigError(ValueError):
    """The Kubernetes client configuration cannot be loaded; ``str()`` is one line."""


# -- the source --------------------------------------------------------------------------------------------------


class KubernetesSource:
    """Feeds the cache from the Kubernetes API (see the module docstring).

    ``node_name``: this agent's node. ``kube_config``: a kubeconfig path, a ``kubernetes.client.Configuration``
    or ``ApiClient``, or None (in-cluster when ``KUBERNETES_SERVICE_HOST`` is set, else the default kubeconfig);
    ``context``: kubeconfig context. ``start_timeout_s``: how long :meth:`start` waits for the first full picture
    before returning (it keeps coming in the background). The rest tune the informers and the owner cache.
    Raises :class:`KubeConfigError` when the client configuration cannot be loaded.
    """

    name = "kubernetes"

    def __init__(
        self,
        node_name: str,
        kube_config: Any = None,
        *,
        context: str | None = None,
        start_timeout_s: float = 10.0,
        resync_period_s: float = 300.0,
        watch_timeout_s: float = 300.0,
        request_timeout_s: float = 30.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        owner_cache_size: int = 1024,
        owner_cache_ttl_s: float = 600.0,
        owner_retry_s: float = 5.0,
    ) -> None:
        from retina_core.kube.client import describe_target, make_api_client

        if not node_name:
            raise KubeConfigError("kubernetes source: the node name is empty (set nodeName)")
        try:
            self.api_client = make_api_client(kube_config, context=context)
        except Exception as exc:  # ConfigException, OSError, TypeError ...
            where = f"kubeconfig {kube_config}" if isinstance(kube_config, str) else "kube config"
            raise KubeConfigError(f"kubernetes source: cannot load the {where}: {exc}".replace("\n", " ")) from None
        self.server = describe_target(self.api_client)
        self.node_name = node_name
        self.start_timeout_s = start_timeout_s
        self.owner_retry_s = owner_retry_s
        self.telemetry: Any = None
        self.cache: IPCache | None = None
        self.loaded = False
        self.entries = 0
        self.updated_at: float | None = None
        self.owners = OwnerResolver(self.api_client, size=owner_cache_size, ttl_s=owner_cache_ttl_s,
                                    timeout_s=min(5.0, request_timeout_s))
        self._lock = threading.RLock()
        self._pods: dict[str, dict[str, Any]] = {}
        self._pod_workloads: dict[str, tuple[tuple[str, str], ...]] = {}
        self._services: dict[str, dict[str, Any]] = {}
        self._selectors: dict[str, dict[str, dict[str, str]]] = {}  # namespace -> service name -> selector
        self._nodes: dict[str, dict[str, Any]] = {}
        self._claims: dict[str, dict[bytes, dict[str, tuple[tuple[int, str], Identity]]]] = {k: {} for k in _KINDS}
        self._held: dict[str, dict[str, dict[bytes, tuple[int, str]]]] = {k: {} for k in _KINDS}  # key -> ip -> rank
        self._published: dict[str, dict[bytes, Identity]] = {k: {} for k in _KINDS}
        self._dirty: dict[str, set[bytes]] = {k: set() for k in _KINDS}
        self._pending_owners: set[str] = set()
        self._stop = threading.Event()
        self._retry_thread: threading.Thread | None = None

        from kubernetes import client

        from retina_core.kube.watch import Informer

        core = client.CoreV1Api(self.api_client)
        common = dict(resync_period_s=resync_period_s, watch_timeout_s=watch_timeout_s,
                      request_timeout_s=request_timeout_s, backoff_initial_s=backoff_initial_s,
                      backoff_max_s=backoff_max_s)
        self.informers = {
            "pods": Informer(core.list_pod_for_all_namespaces, name="pods",
                             field_selector=f"spec.nodeName={node_name}", transform=trim_pod, **common),
            "services": Informer(core.list_service_for_all_namespaces, name="services", transform=trim_service,
                                 **common),
            "nodes": Informer(core.list_node, name="nodes", transform=trim_node, **common),
        }
        self.informers["pods"].add_handler(self._on_pod)
        self.informers["services"].add_handler(self._on_service)
        self.informers["nodes"].add_handler(self._on_node)

    # -- Source protocol ---------------------------------------------------------------------------------------

    def start(self, cache: IPCache) -> None:
        """Register, start the informers and wait up to ``start_timeout_s`` for the first full picture."""
        if self.cache is not None:
            raise RuntimeError("kubernetes source already started")
        self.cache = cache
        cache.register(self)
        self._stop.clear()
        for inf in self.informers.values():
            inf.start()
        self._retry_thread = threading.Thread(target=self._retry_owners, name="enricher-kubernetes-owners",
                                              daemon=True)
        self._retry_thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        for inf in self.informers.values():
            if not inf.wait_synced(max(0.0, deadline - time.monotonic())):
                log.warning("enrichment kubernetes: %s not listed from %s within %gs (%s); continuing in the "
                            "background", inf.name, self.server, self.start_timeout_s, inf.error or "no answer yet")
                return

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the informers (the cache keeps the last picture). Idempotent."""
        self._stop.set()
        for inf in self.informers.values():
            inf.stop(timeout_s)
        t = self._retry_thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout_s)
        self._retry_thread = None

    @property
    def error(self) -> str | None:
        for name, inf in self.informers.items():
            if inf.error:
                return f"{name}: {inf.error}"
        return None

    def status(self) -> dict[str, Any]:
        """``loaded`` (all informers listed and the picture published), ``error`` (the first failing informer's
        error), ``entries``, ``updated_at``, plus ``server``, ``node``, object counts, owner lookups and each
        informer's :meth:`~retina_core.kube.watch.Informer.health`."""
        return {
            "loaded": self.loaded,
            "error": self.error,
            "entries": self.entries,
            "updated_at": self.updated_at,
            "server": self.server,
            "node": self.node_name,
            "pods": len(self._pods),
            "services": len(self._services),
            "nodes": len(self._nodes),
            "owner_lookups": self.owners.lookups,
            "owner_lookup_failures": self.owners.failures,
            "owners_pending": len(self._pending_owners),
            "informers": {name: inf.health() for name, inf in self.informers.items()},
        }

    # -- handlers (informer threads) ---------------------------------------------------------------------------

    def _on_pod(self, ev: Any) -> None:
        if ev.type == "SYNCED":
            with self._lock:
                self._flush()
            return
        pod = ev.obj
        key = ev.key
        if ev.type == "DELETED":
            with self._lock:
                self._pods.pop(key, None)
                self._pod_workloads.pop(key, None)
                self._pending_owners.discard(key)
                self._set_claims(KIND_POD, key, {})
                self._flush()
            return
        workloads, complete = self._workloads(pod)
        with self._lock:
            self._pods[key] = pod
            self._pod_workloads[key] = workloads
            if complete:
                self._pending_owners.discard(key)
            else:
                self._pending_owners.add(key)
            self._claim_pod(key)
            self._flush()

    def _on_service(self, ev: Any) -> None:
        with self._lock:
            if ev.type == "SYNCED":
                self._flush()
                return
            svc, key = ev.obj, ev.key
            meta = svc["metadata"]
            ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
            if ev.type == "DELETED":
                self._services.pop(key, None)
                changed = index_service_selector(self._selectors, ns, name, None)
                self._set_claims(KIND_SERVICE, key, {})
            else:
                self._services[key] = svc
                changed = index_service_selector(self._selectors, ns, name, service_selector(svc))
                self._set_claims(KIND_SERVICE, key, service_identities(svc), resource_version(svc),
                                 creation_timestamp(svc))
            if changed:
                for pkey, pod in self._pods.items():
                    if str(pod["metadata"].get("namespace", "")) == ns:
                        self._claim_pod(pkey)
            self._flush()

    def _on_node(self, ev: Any) -> None:
        with self._lock:
            if ev.type == "SYNCED":
                self._flush()
                return
            node, key = ev.obj, ev.key
            name = str(node["metadata"].get("name", ""))
            old_zone = node_zone(self._nodes[name]) if name in self._nodes else None
            if ev.type == "DELETED":
                self._nodes.pop(name, None)
                self._set_claims(KIND_NODE, key, {})
                zone = None
            else:
                self._nodes[name] = node
                zone = node_zone(node)
                kind = KIND_HOST if name == self.node_name else KIND_NODE
                self._set_claims(KIND_NODE, key, node_identities(node, kind), resource_version(node),
                                 creation_timestamp(node))
            if zone != old_zone:
                for pkey, pod in self._pods.items():
                    if pod_node(pod) == name:
                        self._claim_pod(pkey)
            self._flush()

    # -- identities and claims (under self._lock) --------------------------------------------------------------

    def _parent_of(self, kind: str, ns: str, name: str, uid: str | None) -> tuple[str, str] | None:
        try:
            return self.owners.parent(kind, ns, name, uid)
        except OwnerUnresolved as exc:
            log.debug("enrichment kubernetes: %s", exc)
            raise

    def _workloads(self, pod: Mapping[str, Any]) -> tuple[tuple[tuple[str, str], ...], bool]:
        """The pod's workloads and whether they are final (False: a lookup failed, retry later). No lock held."""
        return pod_workloads(pod, self._parent_of)

    def _claim_pod(self, key: str) -> None:
        pod = self._pods.get(key)
        if pod is None:
            return
        if not pod_claims_addresses(pod):
            self._set_claims(KIND_POD, key, {})
            return
        ns = str(pod["metadata"].get("namespace", ""))
        node = pod_node(pod)
        ident = pod_identities(pod, zone=node_zone(self._nodes[node]) if node in self._nodes else "",
                               service=selecting_service(self._selectors.get(ns), pod_labels(pod)),
                               workloads=self._pod_workloads.get(key, ()))
        self._set_claims(KIND_POD, key, ident, resource_version(pod), creation_timestamp(pod))

    def _set_claims(self, kind: str, key: str, idents: Mapping[str, Identity], rv: int = 0, created: str = "") -> None:
        """Make ``key``'s claims in ``kind`` exactly ``idents`` (text address -> identity)."""
        held = self._held[kind].get(key, {})
        claims = self._claims[kind]
        now: dict[bytes, tuple[int, str]] = {}
        for text, ident in idents.items():
            ip = ip_bytes(text)
            rank = held.get(ip) or (rv, created)  # a claim keeps the rank it started with
            now[ip] = rank
            claims.setdefault(ip, {})[key] = (rank, ident)
            self._dirty[kind].add(ip)
        for ip in held.keys() - now.keys():
            c = claims.get(ip)
            if c is not None:
                c.pop(key, None)
                if not c:
                    del claims[ip]
            self._dirty[kind].add(ip)
        if now:
            self._held[kind][key] = now
        else:
            self._held[kind].pop(key, None)

    def _winner(self, kind: str, ip: bytes) -> Identity | None:
        c = self._claims[kind].get(ip)
        if not c:
            return None
        return max(c.items(), key=lambda kv: (kv[1][0], kv[0]))[1][1]

    def _flush(self) -> None:
        """Push dirty addresses to the cache: one snapshot once everything has listed, then deltas."""
        cache = self.cache
        if cache is None:
            return
        if not self.loaded:
            if not all(inf.synced for inf in self.informers.values()):
                return
            maps = {k: {ip: self._winner(k, ip) for ip in self._claims[k]} for k in _KINDS}
            cache.publish(self.name, pods=maps[KIND_POD], services=maps[KIND_SERVICE], nodes=maps[KIND_NODE])
            self._published = {k: dict(v) for k, v in maps.items()}  # type: ignore[misc]
            for k in _KINDS:
                self._dirty[k].clear()
            self.loaded = True
            self._after_publish()
            log.info("enrichment kubernetes: loaded from %s: %d pods on %s, %d services, %d nodes, %d addresses",
                     self.server, len(self._pods), self.node_name, len(self._services), len(self._nodes),
                     self.entries)
            return
        upserts: list[tuple[str, bytes, Identity]] = []
        deletes: list[tuple[str, bytes]] = []
        for kind in _KINDS:
            pub = self._published[kind]
            for ip in self._dirty[kind]:
                win = self._winner(kind, ip)
                if win is None:
                    if ip in pub:
                        deletes.append((kind, ip))
                        del pub[ip]
                elif pub.get(ip) != win:
                    upserts.append((kind, ip, win))
                    pub[ip] = win
            self._dirty[kind].clear()
        if upserts or deletes:
            cache.apply(self.name, upserts=upserts, deletes=deletes)
            self._after_publish()

    def _after_publish(self) -> None:
        self.entries = sum(len(v) for v in self._published.values())
        self.updated_at = time.time()

    # -- background owner retries ------------------------------------------------------------------------------

    def _retry_owners(self) -> None:
        delay = self.owner_retry_s
        while not self._stop.wait(delay):
            with self._lock:
                pending = [(k, self._pods[k]) for k in self._pending_owners if k in self._pods]
            if not pending:
                delay = self.owner_retry_s
                continue
            failed = False
            for key, pod in pending:
                workloads, complete = self._workloads(pod)
                failed |= not complete
                with self._lock:
                    cur = self._pods.get(key)
                    if cur is None or cur["metadata"].get("uid") != pod["metadata"].get("uid"):
                        continue
                    self._pod_workloads[key] = workloads
                    if complete:
                        self._pending_owners.discard(key)
                    self._claim_pod(key)
                    self._flush()
            delay = min(delay * 2, 60.0) if failed else self.owner_retry_s
