"""Identity sources: the one interface every feed of the IP cache implements, a polling base class, and the
factory that builds a source from the ``enrichment`` configuration section.

Option keys (``enrichment.<key>``; durations are Go-style strings such as ``"500ms"`` or numbers of seconds):

==========================  =============  ==========================================================
key                         default        meaning
==========================  =============  ==========================================================
``source``                  (required)     ``inventory`` or ``netns`` (passed as ``kind``)
``inventoryFile``           (required)     YAML inventory path, for ``inventory``
``inventoryPollInterval``   ``1s``         how often the file's mtime/size/inode are checked
``netnsNamespace``          ``netns``      Kubernetes-style namespace given to netns pods
``netnsFilter``             ``*``          glob, or list of globs, over netns names
``netnsProcesses``          ``false``      also discover unnamed namespaces of processes (/proc)
``netnsPollInterval``       ``2s``         how often /run/netns is listed
``netnsRescanInterval``     ``10s``        how often addresses of known namespaces are re-read
``netnsDir``                ``/run/netns`` where named namespaces are
``zone``                    ``""``         zone given to netns pods (inventory pods take their node's)
==========================  =============  ==========================================================
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from retina_core.units import ConfigError, parse_duration

from enricher.ipcache import IPCache

__all__ = ["KNOWN_SOURCES", "OPTION_KEYS", "PollingSource", "Source", "make_source"]

log = logging.getLogger(__name__)

KNOWN_SOURCES: tuple[str, ...] = ("inventory", "netns", "kubernetes", "operator")
_LATER_SOURCES: tuple[str, ...] = ()

OPTION_KEYS: tuple[str, ...] = (
    "source",
    "inventoryFile",
    "inventoryPollInterval",
    "netnsNamespace",
    "netnsFilter",
    "netnsProcesses",
    "netnsPollInterval",
    "netnsRescanInterval",
    "netnsDir",
    "zone",
    "kubeconfig",
    "kubeContext",
    "kubeStartTimeout",
    "kubeResyncInterval",
    "operatorAddress",
    "operatorTLS",
    "operatorCAFile",
    "operatorCertFile",
    "operatorKeyFile",
    "operatorServerName",
    "operatorStartTimeout",
)


@runtime_checkable
class Source(Protocol):
    """A feed of the IP cache.

    ``start(cache)`` registers with the cache, does the first load synchronously (so the cache is filled before
    flows arrive, when it can be) and then keeps the cache current from a background thread; it does not raise
    because of bad *data* (that is reported by ``status()``). ``stop()`` ends the thread (idempotent).
    ``status()`` returns ``{"loaded": bool, "error": str | None, "entries": int, "updated_at": float | None}``
    (``updated_at`` in Unix seconds of the last successful publish) and may add source-specific keys.
    """

    name: str

    def start(self, cache: IPCache) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


class PollingSource:
    """Base for sources that re-check something every ``interval_s`` seconds from a daemon thread.

    Subclasses implement :meth:`poll` (called once synchronously by :meth:`start`, then on every tick) and use
    :meth:`_published` / :meth:`_failed` to maintain the status fields.
    """

    name = "polling"

    def __init__(self, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"{self.name}: poll interval must be positive, not {interval_s}")
        self.interval_s = interval_s
        self.cache: IPCache | None = None
        self.loaded = False
        self.error: str | None = None
        self.entries = 0
        self.updated_at: float | None = None
        self.telemetry: Any = None  # a ControlPlane, set by make_source; unused by the sources so far
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, cache: IPCache) -> None:
        """Register with ``cache``, poll once now, then every ``interval_s`` seconds in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError(f"source {self.name!r} already started")
        self.cache = cache
        cache.register(self)
        self._stop.clear()
        self._safe_poll()
        self._thread = threading.Thread(target=self._run, name=f"enricher-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and wait up to ``timeout_s`` seconds for it. The cache keeps the last snapshot."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout_s)
        self._thread = None

    def alive(self) -> bool:
        """True while the polling thread runs."""
        t = self._thread
        return t is not None and t.is_alive()

    def status(self) -> dict[str, Any]:
        """See :class:`Source`."""
        return {"loaded": self.loaded, "error": self.error, "entries": self.entries, "updated_at": self.updated_at}

    def poll(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._safe_poll()

    def _safe_poll(self) -> None:
        try:
            self.poll()
        except Exception as exc:  # a bug or an unexpected OS error must not kill the thread
            log.exception("enrichment source %s: poll failed", self.name)
            self.error = f"{type(exc).__name__}: {exc}"

    def _published(self, entries: int) -> None:
        self.loaded = True
        self.error = None
        self.entries = entries
        self.updated_at = time.time()


# -- factory ---------------------------------------------------------------------------------------------------


def _duration_s(options: Mapping[str, Any], key: str, default_s: float) -> float:
    if options.get(key) is None:
        return default_s
    try:
        ns = parse_duration(options[key])
    except ConfigError as exc:
        raise ConfigError(f"enrichment.{key}: {exc}") from None
    if ns <= 0:
        raise ConfigError(f"enrichment.{key}: must be longer than 0, not {options[key]!r}")
    return ns / 1e9


def _string(options: Mapping[str, Any], key: str, default: str) -> str:
    value = options.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ConfigError(f"enrichment.{key}: expected a string, got {type(value).__name__}")
    return value


def make_source(kind: str, options: Mapping[str, Any] | None, node_name: str, telemetry: Any = None) -> Source:
    """Build the source named ``kind`` from the ``enrichment`` section ``options`` (keys in the module docstring).

    ``node_name`` is this agent's node: inventory nodes of that name get kind ``host``, netns pods get it as
    ``node_name``. ``telemetry`` (a :class:`retina_core.telemetry.ControlPlane` or None) is kept on the
    source as ``telemetry``. Raises :class:`~retina_exporter.config.ConfigError` with a one-line message for an
    unknown kind, an unknown key or a bad value. The source is not started.
    """
    options = dict(options or {})
    unknown = sorted(k for k in options if k not in OPTION_KEYS)
    if unknown:
        raise ConfigError(f"enrichment.{unknown[0]}: unknown key (known: {', '.join(OPTION_KEYS)})")
    if kind in _LATER_SOURCES:
        raise ConfigError(f"enrichment.source: {kind!r} is not available yet; use inventory, netns or kubernetes")
    if kind == "inventory":
        from enricher.inventory import InventorySource

        path = options.get("inventoryFile")
        if not path or not isinstance(path, str):
            raise ConfigError("enrichment.inventoryFile: required (a YAML file path) when enrichment.source is "
                              "'inventory'")
        src: Any = InventorySource(path, node_name=node_name,
                                   poll_interval_s=_duration_s(options, "inventoryPollInterval", 1.0))
    elif kind == "operator":
        from enricher.operator_source import OPTION_KEYS as _OPERATOR_KEYS
        from enricher.operator_source import source_from_options

        src = source_from_options({k: v for k, v in options.items() if k in _OPERATOR_KEYS}, node_name)
    elif kind == "kubernetes":
        from enricher.kubernetes import KubeConfigError, KubernetesSource

        try:
            src = KubernetesSource(node_name, _string(options, "kubeconfig", "") or None,
                                   context=_string(options, "kubeContext", "") or None,
                                   start_timeout_s=_duration_s(options, "kubeStartTimeout", 10.0),
                                   resync_period_s=_duration_s(options, "kubeResyncInterval", 300.0))
        except KubeConfigError as exc:
            raise ConfigError(f"enrichment.kubeconfig: {exc}") from None
    elif kind == "netns":
        from enricher.netns import NetnsSource

        flt = options.get("netnsFilter", "*")
        if isinstance(flt, str):
            patterns: tuple[str, ...] = (flt,)
        elif isinstance(flt, list) and flt and all(isinstance(p, str) and p for p in flt):
            patterns = tuple(flt)
        else:
            raise ConfigError("enrichment.netnsFilter: expected a glob or a non-empty list of globs")
        procs = options.get("netnsProcesses", False)
        if not isinstance(procs, bool):
            raise ConfigError(f"enrichment.netnsProcesses: expected true or false, got {procs!r}")
        src = NetnsSource(
            node_name=node_name,
            namespace=_string(options, "netnsNamespace", "netns"),
            patterns=patterns,
            include_processes=procs,
            poll_interval_s=_duration_s(options, "netnsPollInterval", 2.0),
            rescan_interval_s=_duration_s(options, "netnsRescanInterval", 10.0),
            netns_dir=_string(options, "netnsDir", "/run/netns"),
            zone=_string(options, "zone", ""),
        )
    else:
        raise ConfigError(f"enrichment.source: {kind!r} is not a known source; use {', '.join(KNOWN_SOURCES)}")
    src.telemetry = telemetry
    return src
