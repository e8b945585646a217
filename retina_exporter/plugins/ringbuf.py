"""The shared lifecycle of the plugins that load a BPF program and read its ring buffer (packetparser, dns,
dropreason, tcpretrans): :class:`RingBufferPlugin` runs it as a template, the plugins fill in the hooks.

``init``
    keep ``ctx`` -> :meth:`~RingBufferPlugin.read_config` (validate, fail before loading anything) -> the program:
    one handed to the constructor (tests share a compiled program; :meth:`~RingBufferPlugin.adopt_program` resets
    it, ``stop`` does not close it) or :meth:`~RingBufferPlugin.load_program` (owned, closed by ``stop``) ->
    :meth:`~RingBufferPlugin.prepare` -> :meth:`~RingBufferPlugin.make_reader` (``None``: no reader, e.g. node
    level only) -> the kernel's ring-full counter (:meth:`~RingBufferPlugin.lost_events`) as a ``kernel`` lost
    source of the telemetry -> :meth:`~RingBufferPlugin.families` on the metrics registry (when
    :meth:`~RingBufferPlugin.exports_families`).
``start``
    :meth:`~RingBufferPlugin.attach` -> the reader -> :meth:`~RingBufferPlugin.start_helpers` -> the watcher
    :meth:`~RingBufferPlugin.make_watcher` returns, if any.
``stop`` (idempotent)
    the watcher -> :meth:`~RingBufferPlugin.detach` -> :meth:`~RingBufferPlugin.stop_helpers` -> the reader ->
    the families -> the program: closed when owned, else :meth:`~RingBufferPlugin.release_shared_program` ->
    :meth:`~RingBufferPlugin.release`.
``reconcile``
    :meth:`~RingBufferPlugin.rescan`, then raise when the reader thread died.

:class:`TracepointPlugin` is the flavour of dropreason and tcpretrans: the program attaches itself, the reader
runs at pod level only, and the network namespaces counted follow the ``all``/``node`` scope
(:mod:`retina_exporter.datapath.scope`), re-discovered on every reconcile. The TC flavour (host interfaces and
pod veths) is :class:`retina_exporter.plugins.tcattach.TcRingBufferPlugin`.
"""

from __future__ import annotations

import abc
import logging

from retina_core.telemetry import LOST_KERNEL
from retina_exporter.datapath import scope as scope_mod
from retina_exporter.errors import StartupError
from retina_exporter.plugins.base import Plugin, PluginContext

log = logging.getLogger(__name__)


class RingBufferPlugin(Plugin):
    """See the module docstring. ``program``: a loaded program to use instead of compiling one (not closed by
    ``stop``)."""

    #: A plugin whose reader is part of every run (not just of pod level) is not alive without one.
    reader_required: bool = False
    #: How health and reconcile name the reader; default ``"<name> ring-buffer reader"``.
    reader_label: str | None = None

    def __init__(self, program=None) -> None:
        self._given_program = program
        self._owns_program = program is None
        self.program = None
        self.reader = None
        self.watcher = None
        self.ctx: PluginContext | None = None
        self._families_registry = None  # the registry families() is registered with, until stop

    # --- hooks ------------------------------------------------------------------------------------------------
    def read_config(self, ctx: PluginContext) -> None:
        """Read and validate the configuration; runs before anything is loaded."""

    @abc.abstractmethod
    def load_program(self, ctx: PluginContext):
        """Compile and load the program this plugin owns."""

    def adopt_program(self, program, ctx: PluginContext) -> None:
        """Make a handed-in program ready for this run (reset state a previous user left)."""

    def prepare(self, ctx: PluginContext) -> None:
        """After the program is there: attachers, tables, kernel-side configuration, helpers."""

    @abc.abstractmethod
    def make_reader(self, ctx: PluginContext):
        """The ring-buffer reader (a :class:`~retina_core.worker.Worker` with ``alive()``), or ``None``."""

    @abc.abstractmethod
    def lost_events(self, program) -> int:
        """Events the kernel could not write to the ring buffer (full), counted by ``program``."""

    def exports_families(self, cfg) -> bool:
        """Whether :meth:`families` goes on the metrics registry."""
        return True

    def families(self):
        """Metric families ``(name, type, help, [(labels, value), ...])``, read at scrape time."""
        return ()

    @abc.abstractmethod
    def attach(self) -> None:
        """Attach the program (the reader is not running yet)."""

    @abc.abstractmethod
    def detach(self) -> None:
        """Detach whatever :meth:`attach` (and the watcher) attached; must be idempotent."""

    def start_helpers(self) -> None:
        """Start helper threads other than the reader and the watcher."""

    def stop_helpers(self) -> None:
        """Stop what :meth:`start_helpers` started (after detach, before the reader stops)."""

    def make_watcher(self):
        """A watcher to start last (attaching to interfaces as they appear), or ``None``."""
        return None

    def rescan(self) -> None:
        """Periodic re-check (reconcile), before the reader check."""

    def release_shared_program(self, program) -> None:
        """``stop`` with a handed-in program: leave it quiet for its next user."""

    def release(self) -> None:
        """Last step of ``stop``: anything else the plugin holds."""

    # --- lifecycle --------------------------------------------------------------------------------------------
    def init(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self.read_config(ctx)
        if self._given_program is not None:
            self.program = self._given_program
            self.adopt_program(self.program, ctx)
        else:
            self.program = self.load_program(ctx)
        self.prepare(ctx)
        self.reader = self.make_reader(ctx)
        program = self.program
        if ctx.telemetry is not None:
            ctx.telemetry.lost_source(LOST_KERNEL, self.name, lambda: self.lost_events(program))
        if ctx.metrics is not None and self.exports_families(ctx.config):
            ctx.metrics.register(self.families)
            self._families_registry = ctx.metrics

    def start(self) -> None:
        assert self.program is not None, "init() first"
        self.attach()
        if self.reader is not None:
            self.reader.start()
        self.start_helpers()
        self.watcher = self.make_watcher()
        if self.watcher is not None:
            self.watcher.start()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        self.detach()
        self.stop_helpers()
        if self.reader is not None:
            self.reader.stop()
            self.reader = None
        if self._families_registry is not None:
            self._families_registry.unregister(self.families)
            self._families_registry = None
        if self.program is not None:
            if self._owns_program:
                self.program.close()
            else:
                self.release_shared_program(self.program)
        self.program = None
        self.release()

    def reconcile(self) -> None:
        self.rescan()
        if self.reader is not None and not self.reader.alive():
            raise RuntimeError(f"{self._reader_label()} thread died")

    def readers_alive(self) -> bool:
        if self.reader is None:
            return not self.reader_required
        return self.reader.alive()

    def health(self) -> list[str]:
        if self.reader is not None and not self.reader.alive():
            return [f"{self._reader_label()} not running"]
        return []

    def _reader_label(self) -> str:
        return self.reader_label or f"{self.name} ring-buffer reader"


class TracepointPlugin(RingBufferPlugin):
    """A :class:`RingBufferPlugin` whose program attaches itself (``program.attach()``/``detach()``), with the
    reader at pod level only and a namespace scope: ``scope`` (constructor, else :meth:`configured_scope`) is
    ``all`` (``netns`` None: every namespace) or ``node`` (``netns``: the inodes of ``node_netns``, default the
    agent's own, and of its pod veths' peers, host interfaces excluded), handed to the program by
    :meth:`apply_scope` whenever it changes."""

    def __init__(self, program=None, *, scope: str | None = None, node_netns: str | None = None) -> None:
        super().__init__(program)
        self._scope_opt = scope
        self.node_netns = node_netns
        self.scope = scope_mod.SCOPE_ALL
        self.netns: set[int] | None = None
        self.pod_level = False
        self.excluded_ifaces: tuple[str, ...] = ()

    @abc.abstractmethod
    def configured_scope(self, cfg) -> str:
        """The scope the configuration asks for (the constructor's wins)."""

    @abc.abstractmethod
    def apply_scope(self, netns: set[int] | None) -> None:
        """Hand a changed scope to the program."""

    def read_config(self, ctx: PluginContext) -> None:
        cfg = ctx.config
        self.scope = self._scope_opt or self.configured_scope(cfg)
        if self.scope not in scope_mod.SCOPES:
            raise StartupError(f"{self.name} scope {self.scope!r} is not one of {', '.join(scope_mod.SCOPES)}")
        self.pod_level = bool(getattr(cfg, "enable_pod_level", False))
        self.excluded_ifaces = tuple(getattr(cfg, "host_interfaces", ()) or ())

    def discover_scope(self) -> set[int] | None:
        if self.scope == scope_mod.SCOPE_ALL:
            return None
        return scope_mod.node_namespaces(self.node_netns, self.excluded_ifaces)

    def attach(self) -> None:
        self.program.attach()

    def detach(self) -> None:
        if self.program is not None:
            self.program.detach()

    def rescan(self) -> None:
        if self.scope == scope_mod.SCOPE_NODE and self.program is not None:
            netns = self.discover_scope()
            if netns != self.netns:
                logging.getLogger(type(self).__module__).info(
                    "%s: namespaces in scope %d -> %d", self.name, len(self.netns or ()), len(netns or ()))
                self.netns = netns
                self.apply_scope(netns)
