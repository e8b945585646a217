"""The ``inventory`` source: identities from a YAML file, re-read when the file changes.

File format (every list optional; unknown keys are errors, to catch typos)::

    endpoints:                       # pods
      - ips: [10.0.0.5, fd00::5]     # required, at least one
        namespace: default           # required
        podName: web-1               # required
        labels: {app: web}           # optional, string values
        workload: {kind: Deployment, name: web}   # optional: top owner
        owner: {kind: ReplicaSet, name: web-7d9}  # optional: direct owner (listed after the workload)
        node: node-a                 # optional: the pod's zone is that node's zone
    services:
      - ip: 10.96.0.10               # or ips: [...], one of the two
        namespace: kube-system       # required
        name: kube-dns               # required
        selector: {k8s-app: kube-dns}  # optional: pods of that namespace matching it get service=kube-dns
    nodes:
      - name: node-a                 # required, unique
        ips: [192.168.1.10]          # optional
        zone: zone-1                 # optional

Validation errors name the entry and field, e.g. ``endpoints[2].ips[0]: 'x' is not an IP address``.
An address may appear once per list; the same address in different lists is allowed and resolved by the cache's
precedence (pod, service, node). A node named like this agent's node gets kind ``host`` (Cilium's reserved
identity 1), other nodes kind ``node`` (remote-node, 6). When several services select a pod, the pod's
``service`` is the alphabetically first name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from retina_core.identity import KIND_HOST, KIND_NODE, KIND_POD, KIND_SERVICE, Identity
from retina_core.addr import ip_bytes, ip_text
from enricher.base import PollingSource

__all__ = ["Inventory", "InventoryError", "InventorySource", "parse_inventory", "parse_inventory_text"]

log = logging.getLogger(__name__)

_TOP_KEYS = ("endpoints", "services", "nodes")
_ENDPOINT_KEYS = ("ips", "namespace", "podName", "labels", "workload", "owner", "node")
_SERVICE_KEYS = ("ip", "ips", "namespace", "name", "selector")
_NODE_KEYS = ("name", "ips", "zone")
_REF_KEYS = ("kind", "name")


class InventoryError(ValueError):
    """The inventory is invalid; ``str(error)`` is one line naming the entry and field."""


@dataclass
class Inventory:
    """A parsed inventory: packed address -> identity, per kind."""

    pods: dict[bytes, Identity] = field(default_factory=dict)
    services: dict[bytes, Identity] = field(default_factory=dict)
    nodes: dict[bytes, Identity] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    """Entries per list of the file: ``{"endpoints": n, "services": n, "nodes": n}``."""

    @property
    def entries(self) -> int:
        """Addresses over all three maps."""
        return len(self.pods) + len(self.services) + len(self.nodes)


# -- validation helpers ------------------------------------------------------------------------------------------


def _tname(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return type(value).__name__


def _mapping(value: Any, where: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InventoryError(f"{where}: expected a mapping, got {_tname(value)}")
    for k in value:
        if k not in keys:
            raise InventoryError(f"{where}: unknown field {k!r} (expected {', '.join(keys)})")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InventoryError(f"{where}: expected a list, got {_tname(value)}")
    return value


def _str(entry: Mapping[str, Any], key: str, where: str, required: bool) -> str:
    value = entry.get(key)
    if value is None:
        if required:
            raise InventoryError(f"{where}.{key}: required")
        return ""
    if not isinstance(value, str):
        raise InventoryError(f"{where}.{key}: expected a string, got {_tname(value)}")
    if required and not value:
        raise InventoryError(f"{where}.{key}: must not be empty")
    return value


def _string_map(entry: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    value = entry.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InventoryError(f"{where}.{key}: expected a mapping of strings, got {_tname(value)}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise InventoryError(f"{where}.{key}: key {k!r} is not a non-empty string")
        if not isinstance(v, str):
            raise InventoryError(f"{where}.{key}.{_plain(k)}: expected a string, got {_tname(v)} (quote the value)")
        out[k] = v
    return out


def _ref(entry: Mapping[str, Any], key: str, where: str) -> tuple[str, str] | None:
    value = entry.get(key)
    if value is None:
        return None
    ref = _mapping(value, f"{where}.{key}", _REF_KEYS)
    return _str(ref, "kind", f"{where}.{key}", True), _str(ref, "name", f"{where}.{key}", True)


def _ips(value: Any, where: str, required: bool) -> list[tuple[str, bytes]]:
    """Validated ``(canonical text, packed)`` pairs of an address list at ``where``."""
    if value is None:
        if required:
            raise InventoryError(f"{where}: required")
        return []
    if not isinstance(value, list):
        raise InventoryError(f"{where}: expected a list of IP addresses, got {_tname(value)}")
    if required and not value:
        raise InventoryError(f"{where}: must list at least one IP address")
    out = []
    for j, text in enumerate(value):
        if not isinstance(text, str):  # e.g. YAML 1.1 reads an unquoted 1:2:3:4:5:6:7:8 as a number
            raise InventoryError(f"{where}[{j}]: {text!r} is not an IP address (quote addresses in YAML)")
        try:
            packed = ip_bytes(text.strip())
        except ValueError:
            raise InventoryError(f"{where}[{j}]: {text!r} is not an IP address") from None
        out.append((ip_text(packed), packed))
    return out


def _plain(text: str) -> str:
    """``text`` for a one-line message: as is when printable, else quoted (``'a\\nb'``)."""
    return text if text.isprintable() else repr(text)


def _claim(owners: dict[bytes, str], packed: bytes, text: str, where: str, owner: str) -> None:
    if packed in owners:
        raise InventoryError(f"{where}: {text} is already used by {owners[packed]}")
    owners[packed] = owner


# -- parsing -----------------------------------------------------------------------------------------------------


def parse_inventory_text(text: str, node_name: str = "") -> Inventory:
    """Parse inventory YAML; raises :class:`InventoryError` (one line) for invalid YAML or content."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InventoryError(f"invalid YAML: {problem}{where}") from None
    except RecursionError:  # PyYAML composes and constructs recursively
        raise InventoryError("invalid YAML: nested too deeply") from None
    return parse_inventory(data, node_name)


def parse_inventory(data: Any, node_name: str = "") -> Inventory:
    """Validate an inventory document (as loaded from YAML) and build its identities.

    ``node_name``: this agent's node (its node entry gets kind ``host``). Raises :class:`InventoryError`.
    """
    if data is None:
        raise InventoryError("the file is empty (expected a mapping with endpoints, services and nodes)")
    if not isinstance(data, Mapping):
        raise InventoryError(f"expected a mapping with endpoints, services and nodes at the top, got {_tname(data)}")
    for k in data:
        if k not in _TOP_KEYS:
            raise InventoryError(f"unknown key {k!r} at the top (expected {', '.join(_TOP_KEYS)})")

    # Validate everything first, in file order, then build.
    endpoints = []
    owners: dict[bytes, str] = {}
    for i, raw in enumerate(_list(data.get("endpoints"), "endpoints")):
        where = f"endpoints[{i}]"
        e = _mapping(raw, where, _ENDPOINT_KEYS)
        ips = _ips(e.get("ips"), f"{where}.ips", required=True)
        namespace = _str(e, "namespace", where, True)
        pod = _str(e, "podName", where, True)
        labels = _string_map(e, "labels", where)
        workload = _ref(e, "workload", where)
        owner = _ref(e, "owner", where)
        node = _str(e, "node", where, False)
        for j, (text, packed) in enumerate(ips):
            _claim(owners, packed, text, f"{where}.ips[{j}]", f"{where} ({_plain(namespace)}/{_plain(pod)})")
        workloads = tuple(w for w in (workload, owner) if w is not None)
        if len(workloads) == 2 and workloads[0] == workloads[1]:
            workloads = workloads[:1]
        endpoints.append((ips, namespace, pod, labels, workloads, node))

    services = []
    owners = {}
    for i, raw in enumerate(_list(data.get("services"), "services")):
        where = f"services[{i}]"
        s = _mapping(raw, where, _SERVICE_KEYS)
        if s.get("ip") is not None and s.get("ips") is not None:
            raise InventoryError(f"{where}: give either 'ip' or 'ips', not both")
        if s.get("ip") is not None:
            try:
                ips = _ips([s["ip"]], f"{where}.ip", required=True)
            except InventoryError:
                raise InventoryError(f"{where}.ip: {s['ip']!r} is not an IP address") from None
            wheres = [f"{where}.ip"]
        else:
            if s.get("ips") is None:
                raise InventoryError(f"{where}: needs 'ip' or 'ips'")
            ips = _ips(s.get("ips"), f"{where}.ips", required=True)
            wheres = [f"{where}.ips[{j}]" for j in range(len(ips))]
        namespace = _str(s, "namespace", where, True)
        name = _str(s, "name", where, True)
        selector = _string_map(s, "selector", where)
        for (text, packed), w in zip(ips, wheres):
            _claim(owners, packed, text, w, f"{where} ({_plain(namespace)}/{_plain(name)})")
        services.append((ips, namespace, name, selector))

    nodes = []
    owners = {}
    names: dict[str, str] = {}
    for i, raw in enumerate(_list(data.get("nodes"), "nodes")):
        where = f"nodes[{i}]"
        n = _mapping(raw, where, _NODE_KEYS)
        name = _str(n, "name", where, True)
        if name in names:
            raise InventoryError(f"{where}.name: {name!r} is already used by {names[name]}")
        names[name] = where
        ips = _ips(n.get("ips"), f"{where}.ips", required=False)
        zone = _str(n, "zone", where, False)
        for j, (text, packed) in enumerate(ips):
            _claim(owners, packed, text, f"{where}.ips[{j}]", f"{where} ({_plain(name)})")
        nodes.append((ips, name, zone))

    # Build.
    inv = Inventory(counts={"endpoints": len(endpoints), "services": len(services), "nodes": len(nodes)})
    zones = {name: zone for _, name, zone in nodes}
    for ips, name, zone in nodes:
        kind = KIND_HOST if node_name and name == node_name else KIND_NODE
        for text, packed in ips:
            inv.nodes[packed] = Identity(kind, node_name=name, zone=zone, ip=text)
    selectors: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for ips, namespace, name, selector in services:
        for text, packed in ips:
            inv.services[packed] = Identity(KIND_SERVICE, namespace=namespace, service=name, ip=text)
        if selector:
            selectors.setdefault(namespace, []).append((name, selector))
    for lst in selectors.values():
        lst.sort()
    for ips, namespace, pod, labels, workloads, node in endpoints:
        service = ""
        for name, selector in selectors.get(namespace, ()):
            if all(labels.get(k) == v for k, v in selector.items()):
                service = name
                break
        label_list = tuple(f"{k}={v}" for k, v in labels.items())
        zone = zones.get(node, "")
        for text, packed in ips:
            inv.pods[packed] = Identity(KIND_POD, namespace=namespace, pod_name=pod, labels=label_list,
                                        workloads=workloads, service=service, node_name=node, zone=zone, ip=text)
    return inv


# -- the source --------------------------------------------------------------------------------------------------


class InventorySource(PollingSource):
    """Feeds the cache from an inventory file and re-reads it when its (mtime, size, inode, device) change.

    A file that cannot be read or parsed keeps the last good snapshot in the cache; the error is logged, kept in
    ``status()["error"]`` (``"<path>: <message>"``) and counted once per change of the file in ``reload_errors``.
    ``reloads`` counts successful loads, the first one included. A file seen changing while it is read is
    left for the next poll (not counted as an error).
    """

    name = "inventory"

    def __init__(self, path: str | os.PathLike, node_name: str = "", poll_interval_s: float = 1.0) -> None:
        super().__init__(poll_interval_s)
        self.path = os.fspath(path)
        self.node_name = node_name
        self.reloads = 0
        self.reload_errors = 0
        self.counts: dict[str, int] = {}
        self._sig: object = object()  # never equal to a stat signature: the first poll always reads

    def _signature(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, st.st_ctime_ns)

    def poll(self) -> None:
        """Re-read the file if its signature changed since the last read."""
        sig = self._signature()
        if sig == self._sig:
            return
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as exc:
            if sig is not None and self._signature() != sig:
                return  # replaced while opening it: look again next tick
            self._sig = sig
            self._reject(f"cannot read: {exc.strerror or exc}")
            return
        if self._signature() != sig:
            return  # changed while being read
        self._sig = sig
        try:
            inv = parse_inventory_text(data.decode("utf-8"), self.node_name)
        except UnicodeDecodeError as exc:
            self._reject(f"not UTF-8 text (byte {exc.start})")
            return
        except InventoryError as exc:
            self._reject(str(exc))
            return
        assert self.cache is not None
        self.cache.publish(self.name, pods=inv.pods, services=inv.services, nodes=inv.nodes)
        self.reloads += 1
        self.counts = inv.counts
        self._published(inv.entries)
        log.info("enrichment inventory %s loaded: %d endpoints, %d services, %d nodes, %d addresses",
                 self.path, inv.counts["endpoints"], inv.counts["services"], inv.counts["nodes"], inv.entries)

    def _reject(self, message: str) -> None:
        self.reload_errors += 1
        self.error = f"{self.path}: {message}"
        log.error("enrichment inventory %s; keeping the previous %d addresses", self.error, self.entries)

    def status(self) -> dict[str, Any]:
        """Base status plus ``path``, ``reloads``, ``reload_errors`` and ``counts`` (entries per list)."""
        out = super().status()
        out.update(path=self.path, reloads=self.reloads, reload_errors=self.reload_errors, counts=self.counts)
        return out
