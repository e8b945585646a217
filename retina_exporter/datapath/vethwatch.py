"""Finds pod veths (netlink RTMGRP_LINK events plus an initial dump) and tells the plugin when one appears or goes.

A pod veth is the host side of a veth pair whose peer lives in another network namespace: a ``veth`` link with
``IFLA_LINK_NETNSID`` set. Host interfaces named in ``hostInterfaces`` are never treated as pod veths.

Events come from a plain ``NETLINK_ROUTE`` socket (parsed with pyroute2's marshal) with a 16 MiB receive buffer
(``SO_RCVBUFFORCE``, which needs ``CAP_NET_ADMIN``; else ``SO_RCVBUF``, capped by ``net.core.rmem_max``): a burst
of hundreds of veths created or deleted at once fits. Should the kernel still drop events (``ENOBUFS``, which
pyroute2's own socket swallows), the watcher dumps the links again at once (``overflows`` counts it), instead of
missing attachments and removals until the next reconcile.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import threading
from typing import Callable

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from retina_core.worker import Worker

log = logging.getLogger(__name__)

RTMGRP_LINK = 0x1
SO_RCVBUFFORCE = 33  # asm-generic/socket.h (Python's socket module has no name for it)
RCVBUF_BYTES = 16 << 20


def link_events_socket(rcvbuf: int = RCVBUF_BYTES) -> socket.socket:
    """A ``NETLINK_ROUTE`` socket subscribed to ``RTMGRP_LINK`` in the calling thread's network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((0, RTMGRP_LINK))
    return sock


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
        self._sock: socket.socket | None = None
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
        with IPRoute() as ipr:
            links = list(ipr.get_links())
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
        # Subscribe from the thread that reads (the namespace the agent runs in), then dump: links that appeared
        # between the start-up scan and the subscription are found too.
        self._sock = link_events_socket(RCVBUF_BYTES)
        self._subscribed.set()
        try:
            self.scan()
        except Exception:
            log.exception("link scan failed")
        marshal = MarshalRtnl()
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.5)
            if not ready:
                continue
            try:
                data = self._sock.recv(1 << 16)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    log.exception("netlink read failed")
                    continue
                self.overflows += 1
                log.warning("link events were dropped by the kernel (receive buffer full): dumping the links again")
                self._drain()
                try:
                    self.scan()
                except Exception:
                    log.exception("link scan failed")
                continue
            try:
                for msg in marshal.parse(data):
                    self._handle(msg)
            except Exception:
                log.exception("netlink message handling failed")

    def _drain(self) -> None:
        """Discard the queued events (the dump that follows supersedes them). An empty queue is also what makes
        the kernel report the next overflow: while events stay queued after one, further drops go unreported."""
        while True:
            try:
                self._sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise

    def start(self) -> None:
        self.scan()
        super().start()
        self._subscribed.wait(5)

    def stop(self, timeout_s: float = 5.0) -> bool:
        ended = super().stop(timeout_s)
        if self._sock is not None and ended:
            self._sock.close()
            self._sock = None
        return ended
