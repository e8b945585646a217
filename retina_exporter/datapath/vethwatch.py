"""Finds pod veths (netlink RTMGRP_LINK events plus an initial dump) and tells the plugin when one appears or goes.

A pod veth is the host side of a veth pair whose peer lives in another network namespace: a ``veth`` link with
``IFLA_LINK_NETNSID`` set. Host interfaces named in ``hostInterfaces`` are never treated as pod veths.

Events come from :class:`~retina_exporter.datapath.rtnl.LinkMonitor` with a 16 MiB receive buffer: a burst of
hundreds of veths created or deleted at once fits. Should the kernel still drop events (``ENOBUFS``; pyroute2's own
socket swallowed it), the watcher dumps the links again at once (``overflows`` counts it), instead of missing
attachments and removals until the next reconcile.
"""

from __future__ import annotations

import errno
import logging
import select
import threading
from typing import Callable

from retina_core.worker import Worker
from retina_exporter.datapath.rtnl import LinkMonitor, get_links

log = logging.getLogger(__name__)

RCVBUF_BYTES = 16 << 20  # the event socket's receive buffer: a burst of hundreds of veths fits


def link_attr(msg, name):
    try:
        return msg.get_attr(name)
    except Exception:
        return None


def link_kind(msg) -> str | None:
    info = link_attr(msg, "IFLA_LINKINFO")
    if info is None:
        return None
    return info.get_attr("IFLA_INFO_KIND")


def is_pod_veth(msg, excluded: set[str]) -> bool:
    name = link_attr(msg, "IFLA_IFNAME")
    if not name or name in excluded:
        return False
    return link_kind(msg) == "veth" and link_attr(msg, "IFLA_LINK_NETNSID") is not None


class VethWatcher(Worker):
    def __init__(
        self,
        on_add: Callable[[int, str], None],
        on_remove: Callable[[int, str], None],
        excluded: set[str] | None = None,
    ) -> None:
        self._on_add = on_add
        self._on_remove = on_remove
        self._excluded = excluded or set()
        super().__init__("veth-watcher")
        self.known: dict[int, str] = {}
        self._lock = threading.RLock()
        self._ipr = None
        self._subscribed = threading.Event()
        self.overflows = 0
        """Times the kernel dropped link events (ENOBUFS) and the links were dumped again."""

    def _handle(self, msg) -> None:
        with self._lock:
            self._handle_locked(msg)

    def _handle_locked(self, msg) -> None:
        event = msg.get("event")
        index = msg.get("index")
        name = link_attr(msg, "IFLA_IFNAME") or ""
        if event == "RTM_NEWLINK":
            if index in self.known:
                return
            if is_pod_veth(msg, self._excluded):
                self.known[index] = name
                try:
                    self._on_add(index, name)
                except Exception:
                    log.exception("attaching to %s failed", name)
        elif event == "RTM_DELLINK":
            if self.known.pop(index, None) is not None:
                try:
                    self._on_remove(index, name)
                except Exception:
                    log.exception("forgetting %s failed", name)

    def scan(self) -> None:
        """Dump links now (start-up, and reconcile) and handle every pod veth not known yet."""
        links = get_links()
        present = set()
        for msg in links:
            present.add(msg.get("index"))
            msg["event"] = "RTM_NEWLINK"
            self._handle(msg)
        with self._lock:
            for index in [i for i in self.known if i not in present]:
                name = self.known.pop(index)
                self._on_remove(index, name)

    def _run(self) -> None:
        self._ipr = LinkMonitor(RCVBUF_BYTES)  # subscribed before the scan below, so no link falls in between
        self._subscribed.set()
        # Links that appeared between the start-up scan and the subscription.
        try:
            self.scan()
        except Exception:
            log.exception("link scan failed")
        fd = self._ipr.fileno()
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                msgs = self._ipr.get()
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    log.exception("netlink read failed")
                    continue
                self.overflows += 1
                log.warning("link events were dropped by the kernel (receive buffer full): dumping the links again")
                self._ipr.drain()
                try:
                    self.scan()
                except Exception:
                    log.exception("link scan failed")
                continue
            try:
                for msg in msgs:
                    self._handle(msg)
            except Exception:
                log.exception("netlink message handling failed")

    def start(self) -> None:
        self.scan()
        super().start()
        self._subscribed.wait(5)

    def stop(self, timeout_s: float = 5.0) -> bool:
        ended = super().stop(timeout_s)
        if self._ipr is not None:
            try:
                self._ipr.close()
            except Exception:
                pass
        return ended
