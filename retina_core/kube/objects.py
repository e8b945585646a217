"""Kubernetes objects -> identities: the one derivation shared by the agent's ``kubernetes`` source
(:mod:`enricher.kubernetes`) and the operator (:mod:`retina_operator.cluster`), so that an address gets the same
identity from either.

Objects are plain JSON mappings as the API server sends them (what :class:`~retina_core.kube.watch.Informer`
stores, usually after one of the ``trim_*`` functions kept only what is used here).

* Trimming: :func:`trim_pod`, :func:`trim_service`, :func:`trim_node` (the informers' ``transform``).
* Addresses (canonical text, in order, without duplicates; invalid and ``"None"`` values skipped):
  :func:`pod_ips` (``status.podIPs``, or ``status.podIP`` for old servers), :func:`service_ips`
  (``spec.clusterIPs`` or ``clusterIP``, ``status.loadBalancer.ingress[].ip``, ``spec.externalIPs``),
  :func:`node_ips` (every ``InternalIP``).
* :func:`node_zone`: ``topology.kubernetes.io/zone`` or the deprecated ``failure-domain.beta.kubernetes.io/zone``.
* Owners: :func:`controller_ref` (the controller ownerReference, else the first one), :func:`controller_key`,
  :func:`owner_parent` (the controller of a fetched owner object, with the uid check), :func:`guess_parent`
  (``<deployment>-<pod-template-hash>``) and :func:`pod_workloads`, which resolves a pod's direct owner one level
  up (ReplicaSet -> Deployment, Job -> CronJob) through a caller-supplied ``parent_of`` lookup.
* Identities: :func:`pod_claims_addresses`, :func:`pod_labels`, :func:`selecting_service` (with
  :func:`service_selector` / :func:`index_service_selector` for the per-namespace selector index),
  :func:`pod_identities`, :func:`service_identities`, :func:`node_identities`.
* Claim ranks: :func:`resource_version`, :func:`creation_timestamp`.
* Opt-in: :func:`is_observed` (annotation ``retina.sh: observe`` on a pod or namespace).

Where the agent's and the operator's former copies differed, the stricter behaviour was kept:

* An owner is resolved one level up only when its API group matches its kind (``ReplicaSet`` in ``apps``,
  ``Job`` in ``batch``, see :data:`OWNER_GROUPS`); the agent used to accept either group for either kind (and
  would GET ``apps/ReplicaSet`` for a ``batch/ReplicaSet`` reference).
* Names, namespaces, node names, uids and timestamps are normalised with ``str()`` (a missing ``nodeName`` is
  ``""``, never None), as the operator did.
* A fetched owner whose uid differs from the reference's (same name, another object: the pod's owner is gone) has
  no parent; both copies did this, it now lives in :func:`owner_parent` only.
* :func:`resource_version` is 0 for anything that is not an integer (the agent's copy raised on a non-string).
* :func:`is_observed` matches the annotation value exactly (``observe``), as Retina does and as the agent's
  annotation control (``retina_exporter.k8s_control``) does; the operator used to accept any case and surrounding
  blanks, so ``retina.sh: " Observe"`` marked pods observed for agents of the operator but not for the agent's
  own annotation mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from retina_core.addr import ip_bytes, ip_text
from retina_core.identity import KIND_POD, KIND_SERVICE, Identity

__all__ = [
    "ANNOTATION",
    "FINISHED_PHASES",
    "OBSERVE",
    "OWNER_GROUPS",
    "ZONE_LABELS",
    "OwnerUnresolved",
    "ParentOf",
    "address_texts",
    "controller_key",
    "controller_ref",
    "creation_timestamp",
    "guess_parent",
    "index_service_selector",
    "is_observed",
    "node_identities",
    "node_ips",
    "node_zone",
    "owner_parent",
    "pod_claims_addresses",
    "pod_identities",
    "pod_ips",
    "pod_labels",
    "pod_node",
    "pod_workloads",
    "resource_version",
    "selecting_service",
    "service_identities",
    "service_ips",
    "service_selector",
    "trim_node",
    "trim_pod",
    "trim_service",
]

ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")
#: Owner kinds resolved one level up, with the API group their ownerReference must name.
OWNER_GROUPS: dict[str, str] = {"ReplicaSet": "apps", "Job": "batch"}
#: The opt-in annotation (on a pod or its namespace) and its value, as Retina's ``enableAnnotations``.
ANNOTATION = "retina.sh"
OBSERVE = "observe"
#: Pod phases whose sandbox is gone: the address may already be someone else's.
FINISHED_PHASES = ("Succeeded", "Failed")


class OwnerUnresolved(Exception):
    """Raised by a ``parent_of`` lookup that cannot tell right now (API error, object not seen yet)."""


#: ``parent_of(kind, namespace, name, uid)``: the controller (kind, name) of the owner object, None when it has
#: none or is gone; raises :class:`OwnerUnresolved` when it cannot tell now.
ParentOf = Callable[[str, str, str, str | None], tuple[str, str] | None]


# -- trimming (what the informers keep) --------------------------------------------------------------------------


def _meta(obj: Mapping[str, Any], *extra: str) -> dict[str, Any]:
    m = obj.get("metadata") or {}
    keep = ("name", "namespace", "uid", "resourceVersion", "labels", "creationTimestamp") + extra
    return {k: m[k] for k in keep if k in m}


def trim_pod(obj: dict[str, Any]) -> dict[str, Any]:
    spec, st = obj.get("spec") or {}, obj.get("status") or {}
    return {"metadata": _meta(obj, "ownerReferences", "deletionTimestamp"),
            "spec": {k: spec[k] for k in ("nodeName", "hostNetwork") if k in spec},
            "status": {k: st[k] for k in ("phase", "podIP", "podIPs") if k in st}}


def trim_service(obj: dict[str, Any]) -> dict[str, Any]:
    spec, st = obj.get("spec") or {}, obj.get("status") or {}
    return {"metadata": _meta(obj),
            "spec": {k: spec[k] for k in ("type", "clusterIP", "clusterIPs", "externalIPs", "selector") if k in spec},
            "status": {"loadBalancer": (st.get("loadBalancer") or {})}}


def trim_node(obj: dict[str, Any]) -> dict[str, Any]:
    st = obj.get("status") or {}
    return {"metadata": _meta(obj), "status": {"addresses": st.get("addresses") or []}}


# -- addresses, zone, ranks --------------------------------------------------------------------------------------


def address_texts(values: Any) -> list[str]:
    """Canonical text of every valid address in ``values`` (strings), in order, without duplicates."""
    out: list[str] = []
    for v in values or []:
        if not isinstance(v, str) or not v or v == "None":
            continue
        try:
            t = ip_text(ip_bytes(v.strip()))
        except ValueError:
            continue
        if t not in out:
            out.append(t)
    return out


def pod_ips(pod: Mapping[str, Any]) -> list[str]:
    st = pod.get("status") or {}
    ips = [p.get("ip") for p in st.get("podIPs") or [] if isinstance(p, Mapping)]
    return address_texts(ips or [st.get("podIP")])


def service_ips(svc: Mapping[str, Any]) -> list[str]:
    spec, st = svc.get("spec") or {}, svc.get("status") or {}
    ips = list(spec.get("clusterIPs") or [spec.get("clusterIP")])
    ips += [i.get("ip") for i in (st.get("loadBalancer") or {}).get("ingress") or [] if isinstance(i, Mapping)]
    ips += list(spec.get("externalIPs") or [])
    return address_texts(ips)


def node_ips(node: Mapping[str, Any]) -> list[str]:
    addrs = (node.get("status") or {}).get("addresses") or []
    return address_texts([a.get("address") for a in addrs if isinstance(a, Mapping) and a.get("type") == "InternalIP"])


def node_zone(node: Mapping[str, Any]) -> str:
    labels = (node.get("metadata") or {}).get("labels") or {}
    for k in ZONE_LABELS:
        if labels.get(k):
            return str(labels[k])
    return ""


def resource_version(obj: Mapping[str, Any]) -> int:
    """``metadata.resourceVersion`` as an integer (0 when missing or not a number)."""
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def creation_timestamp(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("creationTimestamp") or "")


# -- owners ------------------------------------------------------------------------------------------------------


def controller_ref(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ownerReference marked ``controller`` in ``meta``, else the first one with a kind, else None."""
    refs = [r for r in meta.get("ownerReferences") or [] if isinstance(r, Mapping) and r.get("kind")]
    for r in refs:
        if r.get("controller"):
            return r
    return refs[0] if refs else None


def controller_key(meta: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(kind, name)`` of :func:`controller_ref`, or None."""
    ref = controller_ref(meta)
    return (str(ref["kind"]), str(ref.get("name", ""))) if ref is not None else None


def owner_parent(owner: Mapping[str, Any], uid: str | None) -> tuple[str, str] | None:
    """The controller ``(kind, name)`` of a fetched owner object (a ReplicaSet or Job), or None. ``uid`` is the
    uid the pod's ownerReference names: an object of the same name with another uid is not the pod's owner (that
    one is gone), so it has no parent to give."""
    meta = owner.get("metadata") or {}
    if uid and meta.get("uid") and str(meta["uid"]) != str(uid):
        return None
    return controller_key(meta)


def guess_parent(kind: str, name: str, labels: Mapping[str, str]) -> tuple[str, str] | None:
    """The Deployment a ReplicaSet most likely belongs to, from its name and the pod's ``pod-template-hash``."""
    h = labels.get("pod-template-hash")
    if kind == "ReplicaSet" and h and name.endswith("-" + h) and len(name) > len(h) + 1:
        return ("Deployment", name[: -len(h) - 1])
    return None


def pod_workloads(pod: Mapping[str, Any], parent_of: ParentOf) -> tuple[tuple[tuple[str, str], ...], bool]:
    """``(workloads, complete)`` of a pod: ``()`` without owner, ``((direct kind, name),)`` or
    ``((top kind, name), (direct kind, name))``.

    The direct owner is the pod's :func:`controller_ref`. A ReplicaSet (group ``apps``) or Job (group ``batch``)
    is resolved one level up with ``parent_of(kind, namespace, name, uid)`` (see :data:`ParentOf`); other owners
    (DaemonSet, StatefulSet, ...) are the top themselves. When ``parent_of`` raises :class:`OwnerUnresolved`, the
    top is guessed (:func:`guess_parent`) and ``complete`` is False: the caller should try again later."""
    meta = pod.get("metadata") or {}
    ref = controller_ref(meta)
    if ref is None:
        return (), True
    direct = (str(ref["kind"]), str(ref.get("name", "")))
    top: tuple[str, str] | None = None
    complete = True
    if OWNER_GROUPS.get(direct[0]) == str(ref.get("apiVersion", "")).split("/")[0]:
        uid = ref.get("uid")
        try:
            top = parent_of(direct[0], str(meta.get("namespace", "")), direct[1], str(uid) if uid else None)
        except OwnerUnresolved:
            top = guess_parent(direct[0], direct[1], meta.get("labels") or {})
            complete = False
    if top is None or top == direct:
        return (direct,), complete
    return (top, direct), complete


# -- services ----------------------------------------------------------------------------------------------------


def service_selector(svc: Mapping[str, Any]) -> dict[str, str] | None:
    """The service's pod selector (str -> str), or None when it has none (an empty selector selects nothing)."""
    sel = (svc.get("spec") or {}).get("selector") or {}
    if sel and isinstance(sel, Mapping):
        return {str(k): str(v) for k, v in sel.items()}
    return None


def index_service_selector(index: dict[str, dict[str, dict[str, str]]], namespace: str, name: str,
                           selector: Mapping[str, str] | None) -> bool:
    """Record service ``namespace/name``'s ``selector`` (None: none, or the service is gone) in ``index``
    (namespace -> service name -> selector; namespaces without selectors are dropped). Returns whether the
    namespace's selectors changed, i.e. whether its pods' service may have changed."""
    sels = index.get(namespace, {})
    before = sels.get(name)
    if selector:
        index.setdefault(namespace, {})[name] = dict(selector)
    elif name in sels:
        del sels[name]
        if not sels:
            del index[namespace]
    return before != (dict(selector) if selector else None)


def selecting_service(selectors_by_name: Mapping[str, Mapping[str, str]] | None, labels: Mapping[str, str]) -> str:
    """The alphabetically first service name whose selector matches ``labels`` (all its pairs), or ``""``."""
    if not selectors_by_name:
        return ""
    for name in sorted(selectors_by_name):
        if all(labels.get(k) == v for k, v in selectors_by_name[name].items()):
            return name
    return ""


# -- identities --------------------------------------------------------------------------------------------------


def pod_claims_addresses(pod: Mapping[str, Any]) -> bool:
    """False for ``hostNetwork`` pods (their address is the node's) and finished pods (phase Succeeded/Failed:
    the sandbox is gone and the address may already be another pod's)."""
    if (pod.get("spec") or {}).get("hostNetwork"):
        return False
    return (pod.get("status") or {}).get("phase") not in FINISHED_PHASES


def is_observed(obj: Mapping[str, Any] | None) -> bool:
    """The object (a pod or namespace) carries the annotation ``retina.sh: observe`` (exact value, as Retina)."""
    if not obj:
        return False
    ann = (obj.get("metadata") or {}).get("annotations")
    return isinstance(ann, Mapping) and ann.get(ANNOTATION) == OBSERVE


def pod_labels(pod: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in ((pod.get("metadata") or {}).get("labels") or {}).items()}


def pod_node(pod: Mapping[str, Any]) -> str:
    return str((pod.get("spec") or {}).get("nodeName") or "")


def pod_identities(pod: Mapping[str, Any], *, zone: str, service: str,
                   workloads: tuple[tuple[str, str], ...]) -> dict[str, Identity]:
    """Address text -> identity of every address of ``pod`` (empty unless :func:`pod_claims_addresses`).
    ``zone``: its node's (:func:`node_zone`), ``service``: :func:`selecting_service`, ``workloads``:
    :func:`pod_workloads`."""
    if not pod_claims_addresses(pod):
        return {}
    meta = pod.get("metadata") or {}
    ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    label_list = tuple(f"{k}={v}" for k, v in pod_labels(pod).items())
    node = pod_node(pod)
    return {ip: Identity(KIND_POD, namespace=ns, pod_name=name, labels=label_list, workloads=workloads,
                         service=service, node_name=node, zone=zone, ip=ip) for ip in pod_ips(pod)}


def service_identities(svc: Mapping[str, Any]) -> dict[str, Identity]:
    """Address text -> identity of every address of service ``svc``."""
    meta = svc.get("metadata") or {}
    ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    return {ip: Identity(KIND_SERVICE, namespace=ns, service=name, ip=ip) for ip in service_ips(svc)}


def node_identities(node: Mapping[str, Any], kind: str) -> dict[str, Identity]:
    """Address text -> identity (of ``kind``: node, or host for the agent's own node) of every InternalIP."""
    name = str((node.get("metadata") or {}).get("name", ""))
    zone = node_zone(node)
    return {ip: Identity(kind, node_name=name, zone=zone, ip=ip) for ip in node_ips(node)}
