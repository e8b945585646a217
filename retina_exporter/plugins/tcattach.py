"""TC programs on host interfaces and pod veths, shared by the TC plugins.

:func:`interface_index` (a ``hostInterfaces`` entry that must exist) and :func:`attach_programs` (one program per
hook of an interface, all or none) serve every TC plugin; :class:`TcRingBufferPlugin` is the
:class:`~retina_exporter.plugins.ringbuf.RingBufferPlugin` of packetparser and dns: the host programs on every
``hostInterfaces`` interface at start (an attach error is a :class:`StartupError`), the endpoint programs on
every pod veth a :class:`VethWatcher` finds (and forgets them when the veth goes), the ``attached``/``ifnames``
bookkeeping, ``detach_all`` on stop and the ``attached`` debug view.
"""

from __future__ import annotations

import logging
import os
import socket

from retina_exporter.datapath.pins import drop_pins
from retina_exporter.datapath.tc import AttachError, TcAttacher
from retina_exporter.datapath.vethwatch import VethWatcher
from retina_exporter.errors import StartupError
from retina_exporter.plugins.base import PluginContext
from retina_exporter.plugins.ringbuf import RingBufferPlugin

log = logging.getLogger(__name__)


def interface_index(name: str, *, error: type[Exception] = StartupError,
                    what: str = "hostInterfaces: interface") -> int:
    """The ifindex of host interface ``name`` in the calling thread's namespace; ``error`` naming the fix when
    there is none."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise error(
            f"{what} {name!r} does not exist in this network namespace (pid {os.getpid()}); "
            "fix the hostInterfaces config key or create the interface"
        ) from None


def pin_root(cfg, plugin: str) -> str | None:
    """``bpfPinPath`` when ``bpfPinning`` is on (the plugin's links and maps outlive the agent). Off: None, after
    removing the pins an earlier run with it left for ``plugin`` (:func:`drop_pins`): switching it off cleans up."""
    root = getattr(cfg, "bpf_pin_path", None)
    if getattr(cfg, "bpf_pinning", False):
        return root
    if root:
        drop_pins(root, plugin)
    return None


def attach_programs(attacher: TcAttacher, ifindex: int, programs) -> list:
    """Attach ``programs`` (``(direction, prog_fd, prog_name)`` each) to ``ifindex``, all or none: when one fails,
    those already attached are detached again and the error is raised."""
    atts = []
    try:
        for direction, fd, prog_name in programs:
            atts.append(attacher.attach(ifindex, direction, fd, prog_name))
    except Exception:
        for att in atts:
            try:
                attacher.detach(att)
            except Exception:
                log.exception("undoing a partial attach on ifindex %d failed", ifindex)
        raise
    return atts


class TcRingBufferPlugin(RingBufferPlugin):
    """A ring-buffer plugin with an ingress/egress program pair on host interfaces and another on pod veths.

    Subclasses set ``program_prefix``, ``host_programs`` and ``endpoint_programs`` (``(ingress, egress)``
    program names) and, to share hooks with other TC programs, ``tc_priority``/``tc_handle``; the program has
    ``prog_fd(name)``."""

    reader_required = True
    program_prefix: str = "retina_"
    host_programs: tuple[str, str] = ("", "")
    endpoint_programs: tuple[str, str] = ("", "")
    tc_priority: int = 1
    tc_handle: int = 1
    #: Remove filters a previous run of ours left on an interface before attaching.
    remove_stale: bool = False

    def __init__(self, program=None) -> None:
        super().__init__(program)
        self.attacher: TcAttacher | None = None
        self.ifnames: dict[int, str] = {}
        self.attached: dict[int, list] = {}
        self.host_interfaces: tuple[str, ...] = ()
        self._log = logging.getLogger(type(self).__module__)  # the plugin's own logger

    # --- RingBufferPlugin hooks -----------------------------------------------------------------------------
    def read_config(self, ctx: PluginContext) -> None:
        self.host_interfaces = tuple(getattr(ctx.config, "host_interfaces", ()) or ())
        for name in self.host_interfaces:  # fail before loading anything
            interface_index(name)

    def prepare(self, ctx: PluginContext) -> None:
        self.attacher = TcAttacher(prefix=self.program_prefix, enable_tcx=getattr(ctx.config, "enable_tcx", "auto"),
                                   priority=self.tc_priority, handle=self.tc_handle, pins=self.program.pins)

    def attach(self) -> None:
        if self.attacher is not None and self.attacher.pins is not None:
            # records the pinned ring buffer kept from before this run are read before the watcher names the
            # veths they came from: name every interface of the namespace now
            self.ifnames.update(socket.if_nameindex())
        for name in self.host_interfaces:
            index = interface_index(name)
            try:
                self.attach_pair(index, name, self.host_programs)
            except AttachError as exc:
                raise StartupError(str(exc)) from exc

    def detach(self) -> None:
        if self.attacher is not None:
            self.attacher.release()  # pinned: left attached for the next run
            self.attached.clear()

    def make_watcher(self):
        return VethWatcher(self.on_veth_add, self.on_veth_remove, excluded=set(self.host_interfaces))

    def rescan(self) -> None:
        if self.watcher is not None:
            self.watcher.scan()

    def debug(self) -> dict:
        return {"attached": {self.ifnames.get(i, str(i)): [a.mode for a in atts] for i, atts in self.attached.items()}}

    # --- attachments ----------------------------------------------------------------------------------------
    def attach_pair(self, ifindex: int, ifname: str, programs: tuple[str, str]) -> None:
        """The ``(ingress, egress)`` programs on ``ifindex``, both or neither."""
        assert self.attacher is not None and self.program is not None
        if self.remove_stale:
            self.attacher.remove_stale(ifindex)
        ingress, egress = programs
        atts = attach_programs(self.attacher, ifindex, (("ingress", self.program.prog_fd(ingress), ingress),
                                                        ("egress", self.program.prog_fd(egress), egress)))
        self.record_attached(ifindex, ifname, atts)
        self._log.info("%s attached to %s (ifindex %d) via %s", self.name, ifname, ifindex, atts[0].mode)

    def record_attached(self, ifindex: int, ifname: str, atts: list) -> None:
        self.ifnames[ifindex] = ifname
        self.attached[ifindex] = atts

    def forget_attached(self, ifindex: int) -> list:
        """Drop ``ifindex`` from the bookkeeping (name too: a node sees thousands of pod veths come and go); its
        attachments."""
        self.ifnames.pop(ifindex, None)
        return self.attached.pop(ifindex, [])

    def on_veth_add(self, ifindex: int, ifname: str) -> None:
        self.attach_pair(ifindex, ifname, self.endpoint_programs)

    def on_veth_remove(self, ifindex: int, ifname: str) -> None:
        # Detach (close our fds) before the bookkeeping forgets the veth: whoever sees it gone from ``attached``
        # (/debug/plugins) then also sees its links released.
        for att in list(self.attached.get(ifindex, ())):
            try:
                self.attacher.detach(att)  # the kernel already dropped it with the device; this closes our fds
            except Exception:
                pass
        self.forget_attached(ifindex)
        self._log.info("%s forgot %s (ifindex %d)", self.name, ifname, ifindex)
