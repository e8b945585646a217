"""The agent's Kubernetes control loop: MetricsConfiguration resources and annotation opt-in.

It runs when the agent can reach the Kubernetes API (``enrichment.source: kubernetes`` or ``operator``; the client
comes from ``enrichment.kubeconfig``, else in-cluster credentials, else the default kubeconfig), and has one of two
modes, as Retina (docs/annotations.md has the user's view):

**MetricsConfiguration mode** (``enableAnnotations: false``). An informer watches the cluster-scoped
``retina.sh/v1alpha1`` ``metricsconfigurations``. The resource in force is one whose ``status.state`` is
``Accepted`` (the operator validated it); its spec goes to the metrics module with the same semantics as the
config file's ``metricsConfiguration`` (``MetricsModule.apply(parse_metrics_configuration(spec))``: series whose
family and label names are unchanged keep their counts). Precisely:

* The accepted spec is ``status.lastKnownSpec`` when the operator recorded one (what it validated: the spec may
  have been edited since and not judged yet), else ``spec``.
* A resource that is not Accepted, or whose accepted spec this agent cannot parse, changes nothing (the latter is
  logged and counted in ``controlplane_networkobservability_metricsconfiguration_rejected_counter``).
* Several Accepted resources (the operator prevents it): the oldest (``creationTimestamp``, then name) is in force,
  with a warning, as the operator would pick.
* When the resource in force is deleted (or re-created under the same name and not yet accepted) and no other
  one is Accepted, the config file's ``metricsConfiguration`` is applied again (None: no pod-level metrics).
  While a resource is in force, run-time edits of the config file's ``metricsConfiguration`` are remembered as
  the fallback but do not replace it (:meth:`KubeControl.set_file_configuration`).
* Until the informer has listed once, the config file's configuration stays. If the CRD is not installed (404),
  the agent is still ready and keeps the config file's configuration; the informer keeps retrying.

**Annotation mode** (``enableAnnotations: true``). MetricsConfiguration resources are ignored (not even watched),
as in Retina (microsoft/retina#1632). Two informers watch namespaces and the pods of this node (all pods in remote
context). A namespace annotated ``retina.sh: observe`` observes all its pods; a pod annotated ``retina.sh:
observe`` is observed by itself. Within ~0.1 s of a change (and every ``tick_s`` anyway):

* the metrics module gets the annotation configuration: Retina's default metrics (``ANNOTATION_METRICS``, context
  labels ip, namespace, podname, workload; on both sides in remote context), or the contextOptions of the config
  file's ``metricsConfiguration`` when it has one (its ``namespaces`` are ignored), with ``namespaces.include`` =
  the annotated namespaces and ``pods_include`` = the individually annotated pods;
* the packetparser IP-of-interest map (``IpFilterMap``) gets the addresses of every observed pod, unless
  ``bypassLookupIPOfInterest``: the namespace rule and the pod rule are two owners (``OWNER_NAMESPACES``,
  ``OWNER_PODS``), each recomputed from the current pods, so removing one rule never removes an address the other
  still claims, and the late delete of a pod whose address was already reused by another observed pod does not
  remove it. Pods on the host network (their address is the node's) and finished pods (Succeeded/Failed: their
  address may already be someone else's) claim nothing; terminating pods keep their claim until they are gone.

Traffic of pods that are not observed then produces no pod-level series and, with the filter, no user-space event
at all: the kernel drops it before conntrack and the ring buffer.

Readiness (:meth:`KubeControl.not_ready_reasons`): not ready until every informer has listed once and the state
has been reconciled into the metrics module and the filter map.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from retina_core.units import ConfigError
from retina_core.worker import Worker
from retina_core.kube.objects import ANNOTATION, OBSERVE, is_observed, pod_claims_addresses, pod_ips

__all__ = [
    "ANNOTATION",
    "ANNOTATION_LABELS",
    "ANNOTATION_METRICS",
    "OBSERVE",
    "OWNER_NAMESPACES",
    "OWNER_PODS",
    "KubeControl",
    "KubeControlConfigError",
    "annotation_spec",
    "build_for_agent",
    "is_observed",
    "packetparser_filter",
    "supports_pod_include",
]

log = logging.getLogger(__name__)

OWNER_NAMESPACES = "annotations/namespaces"
OWNER_PODS = "annotations/pods"
MC_GROUP, MC_VERSION, MC_PLURAL = "retina.sh", "v1alpha1", "metricsconfigurations"
STATE_ACCEPTED = "Accepted"

#: Retina's metrics under enableAnnotations (pkg/module/metrics), in its order.
ANNOTATION_METRICS: tuple[str, ...] = (
    "forward_count",
    "forward_bytes",
    "drop_count",
    "drop_bytes",
    "tcp_flag_gauges",
    "tcp_retransmission_count",
    "node_apiserver_latency",
    "node_apiserver_handshake_latency",
    "node_apiserver_no_response",
    "dns_request_count",
    "dns_response_count",
)
#: Retina's context options under enableAnnotations (source and destination).
ANNOTATION_LABELS: tuple[str, ...] = ("ip", "namespace", "podname", "workload")

class KubeControlConfigError(ValueError):
    """The Kubernetes client configuration cannot be loaded; ``str()`` is one line."""


# -- helpers -----------------------------------------------------------------------------------------------------


def annotation_spec(remote_context: bool) -> dict[str, Any]:
    """The MetricsConfiguration spec Retina uses under ``enableAnnotations`` (without namespaces). Destination
    labels only in remote context: local context takes every label from sourceLabels."""
    options = []
    for name in ANNOTATION_METRICS:
        opt: dict[str, Any] = {"metricName": name, "sourceLabels": list(ANNOTATION_LABELS)}
        if remote_context:
            opt["destinationLabels"] = list(ANNOTATION_LABELS)
        options.append(opt)
    return {"contextOptions": options}


@functools.lru_cache(maxsize=1)
def supports_pod_include() -> bool:
    """Whether the metrics module's MetricsConfiguration has ``pods_include`` (per-pod opt-in)."""
    from retina_core.metricsconfig import MetricsConfiguration

    return any(f.name == "pods_include" for f in dataclasses.fields(MetricsConfiguration))


def _trim_meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    m = obj.get("metadata") or {}
    out = {k: m[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in m}
    ann = m.get("annotations")
    if isinstance(ann, Mapping) and ANNOTATION in ann:
        out["annotations"] = {ANNOTATION: ann[ANNOTATION]}  # the only annotation we read
    return out


def trim_namespace(obj: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": _trim_meta(obj)}


def trim_pod(obj: dict[str, Any]) -> dict[str, Any]:
    spec, st = obj.get("spec") or {}, obj.get("status") or {}
    return {"metadata": _trim_meta(obj),
            "spec": {k: spec[k] for k in ("nodeName", "hostNetwork") if k in spec},
            "status": {k: st[k] for k in ("phase", "podIP", "podIPs") if k in st}}


class _PodView(NamedTuple):
    """What the control loop needs of a pod; equal views mean an update changed nothing that matters."""

    namespace: str
    name: str
    addresses: tuple[str, ...]
    observed: bool  # annotated itself
    live: bool  # may claim its addresses (not host network, not finished)


def _pod_view(pod: Mapping[str, Any]) -> _PodView:
    meta = pod.get("metadata") or {}
    return _PodView(str(meta.get("namespace", "")), str(meta.get("name", "")), tuple(sorted(pod_ips(pod))),
                    is_observed(pod), pod_claims_addresses(pod))


def packetparser_filter(manager: Any) -> Any:
    """The running packetparser's ``IpFilterMap`` (``program.filter``), or None (not enabled or not started)."""
    for plugin in list(getattr(manager, "started", ())):
        if getattr(plugin, "name", "") == "packetparser":
            return getattr(getattr(plugin, "program", None), "filter", None)
    return None


# -- the control loop --------------------------------------------------------------------------------------------


class KubeControl(Worker):
    """See the module docstring.

    * ``kube_config``: kubeconfig path, ``kubernetes.client.Configuration`` or ``ApiClient``, or None (in-cluster
      when ``KUBERNETES_SERVICE_HOST`` is set, else the default kubeconfig); ``context``: kubeconfig context.
    * ``node_name``: this node (annotation mode watches its pods only, unless ``remote_context``).
    * ``metrics_module``: a :class:`metrics_module.module.MetricsModule` or None (then only the filter is kept).
    * ``filter_map``: a callable returning the packetparser ``IpFilterMap`` or None; called on every reconcile, so
      the plugin may come up later (a new map object gets the full claims).
    * ``file_configuration``: the config file's parsed ``metricsConfiguration`` (or None): the fallback in
      MetricsConfiguration mode, the template in annotation mode.
    * ``debounce_s``: events within this long are reconciled together; ``tick_s``: reconcile at least this often.
    * The rest tune the informers.

    Raises :class:`KubeControlConfigError` when the client configuration cannot be loaded.
    """

    def __init__(
        self,
        kube_config: Any = None,
        *,
        node_name: str,
        context: str | None = None,
        metrics_module: Any = None,
        filter_map: Callable[[], Any] | None = None,
        enable_annotations: bool = False,
        bypass_lookup_ip_of_interest: bool = False,
        remote_context: bool = False,
        file_configuration: Any = None,
        debounce_s: float = 0.05,
        tick_s: float = 1.0,
        resync_period_s: float = 300.0,
        watch_timeout_s: float = 300.0,
        request_timeout_s: float = 30.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        from retina_core.kube.client import describe_target, make_api_client

        if enable_annotations and not remote_context and not node_name:
            raise KubeControlConfigError("kubernetes control: the node name is empty (set nodeName)")
        try:
            self.api_client = make_api_client(kube_config, context=context)
        except Exception as exc:  # ConfigException, OSError, TypeError ...
            where = f"kubeconfig {kube_config}" if isinstance(kube_config, str) else "kube config"
            raise KubeControlConfigError(
                f"kubernetes control: cannot load the {where}: {exc}".replace("\n", " ")) from None
        self.server = describe_target(self.api_client)
        self.node_name = node_name
        self.metrics_module = metrics_module
        self.filter_map = filter_map
        self.annotations = enable_annotations
        self.filter_enabled = enable_annotations and not bypass_lookup_ip_of_interest
        self.remote_context = remote_context
        self.debounce_s = debounce_s
        self.tick_s = tick_s
        self.mode = "annotations" if enable_annotations else "metricsconfiguration"

        self._lock = threading.Lock()  # state written by informer threads
        self._reconcile_lock = threading.Lock()
        self._file_cfg = file_configuration
        self._ns_observed: set[str] = set()
        self._pods: dict[str, _PodView] = {}
        self._wake = threading.Event()
        super().__init__("kube-control")

        # What was done (reconcile thread).
        self.applied_from: str | None = None  # "annotations", "MetricsConfiguration/<name>", "config file"
        self.applies = 0
        self.reconciles = 0
        self.reconciled = False  # a reconcile ran with every informer synced
        self.last_reconcile_at: float | None = None
        self._filter_obj: Any = None
        self._pushed: dict[str, frozenset[str]] = {}
        self._claims: dict[str, frozenset[str]] = {OWNER_NAMESPACES: frozenset(), OWNER_PODS: frozenset()}
        self._pods_include: frozenset[tuple[str, str]] = frozenset()
        self._ns_include: frozenset[str] = frozenset()
        self._warned: set[str] = set()
        self._template_cache: tuple[Any, Any] | None = None  # (file cfg, template)
        # MetricsConfiguration mode.
        self.rejected = 0
        self._parsed: dict[str, tuple[tuple, Any]] = {}  # name -> ((uid, rv), MetricsConfiguration | ConfigError)
        self._active: tuple[str, str] | None = None  # (name, uid) of the resource in force
        self._accepted_names: list[str] = []

        from kubernetes import client

        from retina_core.kube.watch import Informer

        common = dict(resync_period_s=resync_period_s, watch_timeout_s=watch_timeout_s,
                      request_timeout_s=request_timeout_s, backoff_initial_s=backoff_initial_s,
                      backoff_max_s=backoff_max_s)
        self.informers: dict[str, Informer] = {}
        if enable_annotations:
            core = client.CoreV1Api(self.api_client)
            self.informers["namespaces"] = Informer(core.list_namespace, name="control-namespaces",
                                                    transform=trim_namespace, **common)
            self.informers["pods"] = Informer(
                core.list_pod_for_all_namespaces, name="control-pods",
                field_selector=None if remote_context else f"spec.nodeName={node_name}", transform=trim_pod,
                **common)
            self.informers["namespaces"].add_handler(self._on_namespace)
            self.informers["pods"].add_handler(self._on_pod)
        elif metrics_module is not None:
            custom = client.CustomObjectsApi(self.api_client)
            self.informers["metricsconfigurations"] = Informer(
                functools.partial(custom.list_cluster_custom_object, MC_GROUP, MC_VERSION, MC_PLURAL),
                name="metricsconfigurations", **common)
            self.informers["metricsconfigurations"].add_handler(self._on_metrics_configuration)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Reconcile once now (annotation mode: nothing observed yet), then start the informers and the loop."""
        if self.alive():
            raise RuntimeError("kubernetes control already started")
        if self.annotations:
            log.info("kubernetes control: annotation opt-in (retina.sh: observe) from %s; MetricsConfiguration "
                     "resources are ignored while enableAnnotations is on", self.server)
        else:
            log.info("kubernetes control: MetricsConfiguration resources from %s", self.server)
        self.reconcile()
        for inf in self.informers.values():
            inf.start()
        super().start()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop the informers and the loop (idempotent). The metrics module and the filter keep their state."""
        self._stop.set()
        for inf in self.informers.values():
            inf.stop(timeout_s)
        return super().stop(timeout_s)

    def _wake_thread(self) -> None:
        self._wake.set()

    def kick(self) -> None:
        """Reconcile soon (e.g. after the plugins started, so the filter map gets its claims at once)."""
        self._wake.set()

    def set_file_configuration(self, config: Any) -> None:
        """The config file's ``metricsConfiguration`` changed at run time (the agent's config watcher): it becomes
        the fallback (MetricsConfiguration mode) or the template (annotation mode) and is applied if in force."""
        with self._lock:
            self._file_cfg = config
        self.kick()

    @property
    def synced(self) -> bool:
        """Every informer has listed once (a MetricsConfiguration informer answered 404, CRD not installed, counts
        as listed: there is nothing to wait for)."""
        return all(inf.synced or (name == "metricsconfigurations" and _not_found(inf.error))
                   for name, inf in self.informers.items())

    # -- readiness, status, metrics ----------------------------------------------------------------------------

    def not_ready_reasons(self) -> list[str]:
        reasons = []
        for name, inf in self.informers.items():
            if inf.synced or (name == "metricsconfigurations" and _not_found(inf.error)):
                continue  # (CRD not installed: the config file's configuration stays; not a reason to wait)
            reasons.append(f"kubernetes control: {name} not listed yet from {self.server}"
                           + (f" ({inf.error})" if inf.error else ""))
        if reasons:
            return reasons
        if not self.reconciled:
            reasons.append("kubernetes control: first reconcile pending")
        elif self.filter_enabled and self.filter_map is not None:
            flt = self.filter_map()
            if flt is not None and flt is not self._filter_obj:
                reasons.append("kubernetes control: IP-of-interest map not written yet")
        return reasons

    def status(self) -> dict[str, Any]:
        """For ``/debug/kubernetes``: mode, server, informers, what is applied and what the filter holds."""
        out: dict[str, Any] = {
            "mode": self.mode,
            "server": self.server,
            "node": self.node_name,
            "synced": self.synced,
            "reconciled": self.reconciled,
            "reconciles": self.reconciles,
            "applies": self.applies,
            "applied_from": self.applied_from,
            "last_reconcile_at": self.last_reconcile_at,
            "informers": {name: inf.health() for name, inf in self.informers.items()},
        }
        if self.annotations:
            with self._lock:
                ns_obs = sorted(self._ns_observed)
                pods = sorted(f"{v.namespace}/{v.name}" for v in self._pods.values() if v.observed)
            out["annotations"] = {
                "namespaces": ns_obs,
                "pods": pods,
                "namespaces_include": sorted(self._ns_include),
                "pods_include": sorted(f"{ns}/{name}" for ns, name in self._pods_include),
                "pods_include_supported": supports_pod_include(),
                "filter": {
                    "enabled": self.filter_enabled,
                    "written": self._filter_obj is not None,
                    # what the kernel map holds (written), and whether claims are still being written
                    "owners": {k: sorted(v) for k, v in self._pushed.items()},
                    "pending": bool(self.filter_enabled) and self._pushed != self._claims,
                    "overflow": getattr(self._filter_obj, "overflow", 0),
                },
            }
        else:
            inf = self.informers.get("metricsconfigurations")
            out["metricsconfiguration"] = {
                "in_force": self._active[0] if self._active else None,
                "accepted": list(self._accepted_names),
                "rejected": self.rejected,
                "crd_installed": not (inf is not None and not inf.synced and _not_found(inf.error)),
            }
        return out

    def families(self) -> list[tuple]:
        """Control-plane families for /metrics (register with the agent's FamilyRegistry)."""
        from retina_core.telemetry import CONTROL_PLANE_PREFIX

        if self.annotations:
            return []
        return [(CONTROL_PLANE_PREFIX + "metricsconfiguration_rejected_counter", "counter",
                 "Accepted MetricsConfiguration resources this agent could not apply (the previous configuration "
                 "was kept)", [((), self.rejected)])]

    # -- informer handlers (informer threads) ------------------------------------------------------------------

    def _on_namespace(self, ev: Any) -> None:
        if ev.type == "SYNCED":
            self.kick()
            return
        name = str((ev.obj.get("metadata") or {}).get("name", ""))
        observed = ev.type != "DELETED" and is_observed(ev.obj)
        with self._lock:
            was = name in self._ns_observed
            if observed:
                self._ns_observed.add(name)
            else:
                self._ns_observed.discard(name)
        if observed != was:
            self.kick()

    def _on_pod(self, ev: Any) -> None:
        if ev.type == "SYNCED":
            self.kick()
            return
        key = ev.key
        view = None if ev.type == "DELETED" else _pod_view(ev.obj)
        with self._lock:
            old = self._pods.get(key)
            if view is None:
                self._pods.pop(key, None)
            else:
                self._pods[key] = view
        if old != view:
            self.kick()

    def _on_metrics_configuration(self, ev: Any) -> None:
        self.kick()

    # -- reconcile ---------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            woke = self._wake.wait(self.tick_s)
            if self._stop.is_set():
                break
            if woke:
                self._stop.wait(self.debounce_s)  # take a burst of events in one go
                self._wake.clear()
            try:
                self.reconcile()
            except Exception:  # a bug must not stop the loop
                log.exception("kubernetes control: reconcile failed")

    def reconcile(self) -> None:
        """Bring the metrics module (and the filter map) in line with the current state. Thread-safe."""
        with self._reconcile_lock:
            synced = self.synced
            if self.annotations:
                complete = self._reconcile_annotations()
            else:
                complete = self._reconcile_metrics_configuration(synced)
            self.reconciles += 1
            self.last_reconcile_at = time.time()
            if synced and complete and not self.reconciled:
                self.reconciled = True
                log.info("kubernetes control: in sync with %s (%s)", self.server, self.applied_from or "nothing")

    def _apply(self, source: str, config: Any) -> None:
        mm = self.metrics_module
        if mm is None:
            return
        if mm.config != config:
            mm.apply(config)
            self.applies += 1
            if source != self.applied_from:
                log.info("kubernetes control: pod-level metrics configuration from %s applied", source)
        self.applied_from = source

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    # annotation mode

    def _template(self, file_cfg: Any) -> Any:
        cached = self._template_cache
        if cached is not None and cached[0] is file_cfg:
            return cached[1]
        if file_cfg is not None:
            if file_cfg.namespaces_include is not None or file_cfg.namespaces_exclude is not None:
                log.warning("kubernetes control: metricsConfiguration.namespaces is ignored under enableAnnotations "
                            "(the annotated namespaces decide)")
            template = file_cfg
        else:
            from retina_core.metricsconfig import parse_metrics_configuration

            template = parse_metrics_configuration(annotation_spec(self.remote_context),
                                                   remote_context=self.remote_context)
        self._template_cache = (file_cfg, template)
        return template

    def _reconcile_annotations(self) -> bool:
        with self._lock:
            ns_observed = frozenset(self._ns_observed)
            pods = list(self._pods.values())
            file_cfg = self._file_cfg
        ns_claims: set[str] = set()
        pod_claims: set[str] = set()
        pods_include: set[tuple[str, str]] = set()
        for v in pods:
            if not v.live:
                continue
            if v.namespace in ns_observed:
                ns_claims.update(v.addresses)
            if v.observed:
                pod_claims.update(v.addresses)
                pods_include.add((v.namespace, v.name))
        claims = {OWNER_NAMESPACES: frozenset(ns_claims), OWNER_PODS: frozenset(pod_claims)}
        include = frozenset(pods_include)
        self._claims = claims

        if self.metrics_module is not None:
            extra: dict[str, Any] = {}
            if supports_pod_include():
                extra["pods_include"] = include
            elif pods_include - {(ns, n) for ns, n in pods_include if ns in ns_observed}:
                self._warn_once("pods_include", "kubernetes control: pods annotated retina.sh=observe outside "
                                "annotated namespaces get no pod-level series: the metrics module has no per-pod "
                                "include (their addresses are in the IP-of-interest map)")
            config = dataclasses.replace(self._template(file_cfg), namespaces_include=ns_observed,
                                         namespaces_exclude=None, **extra)
            self._apply("annotations", config)
        # Published once applied: /debug/kubernetes reports what is in force, never what is about to be.
        self._ns_include = ns_observed
        self._pods_include = include
        if not self.filter_enabled or self.filter_map is None:
            return True
        flt = self.filter_map()
        if flt is None:
            return True  # no packetparser (yet): nothing to write
        pushed = dict(self._pushed) if flt is self._filter_obj else {}
        for owner, addresses in claims.items():
            if pushed.get(owner) != addresses:
                flt.set_owner(owner, addresses)  # in the kernel map when it returns
                pushed[owner] = addresses
        self._pushed = pushed  # a new dict each time: status() reads it without a lock
        self._filter_obj = flt
        overflow = getattr(flt, "overflow", 0)
        if overflow:
            self._warn_once("overflow", "kubernetes control: the IP-of-interest map is full (filterMapMaxEntries "
                            "%d): some observed pods' traffic is not tracked", getattr(flt, "capacity", 0))
        return True

    # MetricsConfiguration mode

    def _accepted(self, cr: Mapping[str, Any]) -> Any:
        """The parsed accepted spec of an Accepted resource (cached per uid+resourceVersion), or a ConfigError."""
        from retina_core.metricsconfig import parse_metrics_configuration

        meta = cr.get("metadata") or {}
        name = str(meta.get("name", ""))
        key = (meta.get("uid"), meta.get("resourceVersion"))
        cached = self._parsed.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        spec, where = cr.get("spec"), "spec"
        last = (cr.get("status") or {}).get("lastKnownSpec")
        if isinstance(last, dict) and last:  # what the operator validated (the spec may have been edited since)
            if last != spec:
                log.info("kubernetes control: MetricsConfiguration %s: spec changed since it was accepted; running "
                         "status.lastKnownSpec until the operator accepts the change", name)
            spec, where = last, "status.lastKnownSpec"
        try:
            result: Any = parse_metrics_configuration(spec, path=f"MetricsConfiguration {name} {where}",
                                                      remote_context=self.remote_context)
            for w in result.warnings:
                log.warning("kubernetes control: %s", w)
        except ConfigError as exc:
            result = exc
            self.rejected += 1
            log.error("kubernetes control: MetricsConfiguration %s is Accepted but cannot be applied; keeping the "
                      "current configuration: %s", name, exc)
        self._parsed[name] = (key, result)
        return result

    def _reconcile_metrics_configuration(self, synced: bool) -> bool:
        if self.metrics_module is None:
            return True
        inf = self.informers["metricsconfigurations"]
        with self._lock:
            file_cfg = self._file_cfg
        if not inf.synced:
            # Before the first list (or without the CRD): the config file's configuration.
            self._apply("config file", file_cfg)
            return _not_found(inf.error)
        crs = inf.items()
        by_name = {str((cr.get("metadata") or {}).get("name", "")): cr for cr in crs}
        for name in list(self._parsed):
            if name not in by_name:
                del self._parsed[name]
        candidates = []
        for name, cr in by_name.items():
            if (cr.get("status") or {}).get("state") != STATE_ACCEPTED:
                continue
            parsed = self._accepted(cr)
            if isinstance(parsed, ConfigError):
                continue
            meta = cr.get("metadata") or {}
            candidates.append((str(meta.get("creationTimestamp") or ""), name, str(meta.get("uid", "")), parsed))
        candidates.sort(key=lambda c: (c[0], c[1]))
        self._accepted_names = [c[1] for c in candidates]
        if len(candidates) > 1:
            self._warn_once("several:" + ",".join(sorted(self._accepted_names)),
                            "kubernetes control: %d MetricsConfiguration resources are Accepted (%s); the oldest, "
                            "%s, is in force", len(candidates), ", ".join(self._accepted_names), candidates[0][1])
        if candidates:
            _created, name, uid, parsed = candidates[0]
            self._active = (name, uid)
            self._apply(f"MetricsConfiguration/{name}", parsed)
            return True
        if self._active is not None:
            name, uid = self._active
            cur = by_name.get(name)
            if cur is not None and str((cur.get("metadata") or {}).get("uid", "")) == uid:
                return True  # still there, no longer accepted (or not applicable): changes nothing
            log.info("kubernetes control: MetricsConfiguration %s is gone; back to the config file's "
                     "metricsConfiguration", name)
            self._active = None
        self._apply("config file", file_cfg)
        return True


def _not_found(error: str | None) -> bool:
    return bool(error) and "HTTP 404" in str(error)


# -- agent integration -------------------------------------------------------------------------------------------


def build_for_agent(agent: Any, kube_config: Any = None, **kwargs: Any) -> KubeControl | None:
    """The control loop for an assembled ``Agent``, or None when the agent has no API access (enrichment.source is
    neither ``kubernetes`` nor ``operator``) or nothing to do (no metrics module and no annotations).

    ``kube_config`` overrides ``enrichment.kubeconfig`` (tests); ``kwargs`` go to :class:`KubeControl`. Raises
    :class:`retina_exporter.errors.StartupError` when the client configuration cannot be loaded."""
    from retina_exporter.errors import StartupError

    cfg = agent.cfg
    if cfg.enrichment.source not in ("kubernetes", "operator"):
        if cfg.enable_annotations:
            log.warning("enableAnnotations needs the Kubernetes API (enrichment.source: kubernetes or operator); "
                        "without it nothing is observed")
        return None
    mm = agent.metrics_module
    if mm is None and not cfg.enable_annotations:
        return None  # no pod-level metrics (enablePodLevel off): no MetricsConfiguration to apply
    if kube_config is None:
        kube_config = cfg.enrichment.kubeconfig or None
    context = cfg.enrichment.kube_context or None
    try:
        return KubeControl(
            kube_config,
            context=context,
            node_name=cfg.node_name,
            metrics_module=mm,
            filter_map=functools.partial(packetparser_filter, agent.manager),
            enable_annotations=cfg.enable_annotations,
            bypass_lookup_ip_of_interest=cfg.bypass_lookup_ip_of_interest,
            remote_context=cfg.remote_context,
            file_configuration=mm.config if mm is not None else None,
            **kwargs,
        )
    except KubeControlConfigError as exc:
        raise StartupError(str(exc)) from exc

