"""The ``netns`` source: pods discovered from network namespaces on this host (no Kubernetes needed).

Every named namespace under ``/run/netns`` whose name matches the filter (globs; default ``*``) becomes a pod
named after it, in namespace ``netns`` (configurable), labelled ``netns=<name>``, with workload
``("NetworkNamespace", <name>)``, on this node. Optionally the unnamed namespaces of running processes are
added too, named ``<comm>-<lowest pid>``. The namespace the agent itself runs in is always skipped.

Addresses are read by entering each namespace with ``setns(2)`` in a throw-away thread (a thread's network
namespace is its own, so the agent's other threads are unaffected, and the thread ends afterwards) and dumping
its addresses with pyroute2. Loopback (scope host) and link-local (scope link) addresses are skipped: they are
not unique between namespaces. If two namespaces hold the same address, the alphabetically first name wins.

Refresh: the directory (and /proc, if enabled) is listed every ``poll_interval_s`` (2 s); new or re-created
namespaces are scanned at once, all known ones every ``rescan_interval_s`` (10 s). The cache is published only
when the address map changed (and once at start).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from retina_core.identity import KIND_POD, Identity
from retina_core.addr import ip_bytes
from retina_core.netns import enter_netns
from enricher.base import PollingSource

__all__ = ["NetnsSource", "list_named_netns", "list_process_netns", "own_netns", "read_addresses"]

log = logging.getLogger(__name__)

_RT_SCOPE_LINK = 253
_RT_SCOPE_HOST = 254
_IFA_F_DADFAILED = 0x08
WORKLOAD_KIND = "NetworkNamespace"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

NsKey = tuple[int, int]  # (st_dev, st_ino) of an nsfs file: identifies a namespace


def own_netns() -> NsKey:
    """(device, inode) of the network namespace this process runs in."""
    st = os.stat("/proc/self/ns/net")
    return st.st_dev, st.st_ino


def list_named_netns(netns_dir: str = "/run/netns") -> dict[str, tuple[str, NsKey]]:
    """Named namespaces: name -> (path, (device, inode)). A missing directory means none."""
    out: dict[str, tuple[str, NsKey]] = {}
    try:
        names = os.listdir(netns_dir)
    except FileNotFoundError:
        return out
    for name in names:
        path = os.path.join(netns_dir, name)
        try:
            st = os.stat(path)
        except OSError:
            continue  # removed meanwhile
        out[name] = (path, (st.st_dev, st.st_ino))
    return out


def list_process_netns(exclude: Iterable[NsKey] = ()) -> dict[str, tuple[str, NsKey]]:
    """Network namespaces of running processes not in ``exclude``: ``"<comm>-<lowest pid>"`` -> (path, key)."""
    skip = set(exclude)
    lowest: dict[NsKey, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue  # exited, or a kernel thread without access
        key = (st.st_dev, st.st_ino)
        if key in skip:
            continue
        pid = int(entry)
        if key not in lowest or pid < lowest[key]:
            lowest[key] = pid
    out: dict[str, tuple[str, NsKey]] = {}
    for key, pid in lowest.items():
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = _UNSAFE.sub("_", f.read().strip()) or "proc"
        except OSError:
            continue
        out[f"{comm}-{pid}"] = (f"/proc/{pid}/ns/net", key)
    return out


def _addresses_here() -> list[str]:
    """Non-loopback, non-link-local addresses of the calling thread's network namespace, as text."""
    from pyroute2 import IPRoute

    out = []
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            if msg.get("scope") in (_RT_SCOPE_HOST, _RT_SCOPE_LINK):
                continue
            if (msg.get_attr("IFA_FLAGS") or msg.get("flags", 0)) & _IFA_F_DADFAILED:
                continue
            addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if addr:
                out.append(addr)
    return out


def read_addresses(paths: Mapping[str, str], timeout_s: float = 10.0) -> dict[str, list[str] | Exception]:
    """Addresses of each namespace in ``paths`` (name -> nsfs path), or the exception that prevented reading it.

    One throw-away thread enters the namespaces one after the other with ``setns(2)``; the calling thread's
    namespace never changes. Waits at most ``timeout_s`` seconds; names not reached by then get ``TimeoutError``.
    """
    results: dict[str, list[str] | Exception] = {}
    items = list(paths.items())

    def run() -> None:
        for name, path in items:
            try:
                with enter_netns(path):
                    results[name] = _addresses_here()
            except Exception as exc:
                results[name] = exc

    t = threading.Thread(target=run, name="enricher-netns-scan", daemon=True)
    t.start()
    t.join(timeout_s)
    snapshot = dict(results)
    for name, _ in items:
        snapshot.setdefault(name, TimeoutError(f"no answer within {timeout_s:g}s"))
    return snapshot


class NetnsSource(PollingSource):
    """Pods from network namespaces; see the module docstring. Intervals are in seconds."""

    name = "netns"

    def __init__(
        self,
        node_name: str = "",
        namespace: str = "netns",
        patterns: tuple[str, ...] = ("*",),
        include_processes: bool = False,
        poll_interval_s: float = 2.0,
        rescan_interval_s: float = 10.0,
        netns_dir: str = "/run/netns",
        zone: str = "",
    ) -> None:
        super().__init__(poll_interval_s)
        if rescan_interval_s <= 0:
            raise ValueError(f"netns: rescan interval must be positive, not {rescan_interval_s}")
        self.node_name = node_name
        self.namespace = namespace
        self.patterns = tuple(patterns)
        self.include_processes = include_processes
        self.rescan_interval_s = rescan_interval_s
        self.netns_dir = netns_dir
        self.zone = zone
        self.scans = 0  # namespaces entered, over the source's life
        self._own = own_netns()
        self._keys: dict[str, NsKey] = {}  # known namespaces: name -> nsfs key
        self._addrs: dict[str, tuple[str, ...]] = {}  # name -> addresses (text) of the last scan
        self._errors: dict[str, str] = {}
        self._published_addrs: dict[str, tuple[str, ...]] | None = None
        self._next_rescan = 0.0

    def _discover(self) -> dict[str, tuple[str, NsKey]]:
        named = list_named_netns(self.netns_dir)
        found = {n: v for n, v in named.items()
                 if v[1] != self._own and any(fnmatch.fnmatchcase(n, p) for p in self.patterns)}
        if self.include_processes:
            skip = {self._own, *(v[1] for v in named.values())}
            for n, v in list_process_netns(skip).items():
                if any(fnmatch.fnmatchcase(n, p) for p in self.patterns):
                    found.setdefault(n, v)
        return found

    def poll(self) -> None:
        """List namespaces; scan new or re-created ones (all of them when a rescan is due); publish on change."""
        now = time.monotonic()
        found = self._discover()
        rescan = now >= self._next_rescan
        todo = {n: path for n, (path, key) in found.items() if rescan or self._keys.get(n) != key}
        for gone in set(self._keys) - set(found):
            del self._keys[gone]
            self._addrs.pop(gone, None)
            self._errors.pop(gone, None)
        if todo:
            for name, result in read_addresses(todo).items():
                self.scans += 1
                self._keys[name] = found[name][1]
                if isinstance(result, Exception):
                    self._errors[name] = f"netns {name!r}: {result}"
                    self._addrs.pop(name, None)
                else:
                    self._errors.pop(name, None)
                    self._addrs[name] = tuple(sorted(result))
        if rescan:
            self._next_rescan = now + self.rescan_interval_s
        if self._addrs != self._published_addrs:
            self._publish()
        self.error = "; ".join(self._errors[n] for n in sorted(self._errors)) or None

    def _publish(self) -> None:
        pods: dict[bytes, Identity] = {}
        owner: dict[bytes, str] = {}
        for name in sorted(self._addrs):
            for text in self._addrs[name]:
                packed = ip_bytes(text)
                if packed in pods:
                    log.warning("enrichment netns: %s is in namespaces %r and %r; using %r",
                                text, owner[packed], name, owner[packed])
                    continue
                owner[packed] = name
                pods[packed] = Identity(KIND_POD, namespace=self.namespace, pod_name=name,
                                        labels=(f"netns={name}",), workloads=((WORKLOAD_KIND, name),),
                                        node_name=self.node_name, zone=self.zone, ip=text)
        assert self.cache is not None
        self.cache.publish(self.name, pods=pods)
        self._published_addrs = dict(self._addrs)
        self._published(len(pods))
        log.info("enrichment netns: %d namespaces, %d addresses", len(self._addrs), len(pods))

    def status(self) -> dict[str, Any]:
        """Base status plus ``namespaces`` (name -> published addresses) and ``scans`` (namespaces entered)."""
        out = super().status()
        published = self._published_addrs or {}  # replaced on publish, never mutated: safe from any thread
        out.update(namespaces={n: list(a) for n, a in sorted(published.items())}, scans=self.scans)
        return out
