"""The hooks and the attachment records of the TC attachment layer.

Owns the two hook names (:data:`INGRESS`, :data:`EGRESS`), :class:`Attachment` (one program of ours on one
hook, as :meth:`~retina_exporter.datapath.tc.TcAttacher.attach` made it: the TCX link, or the identity of
the cls_bpf filter) and :class:`AttachmentInfo` (a program on a hook as the kernel reports it, ours or not).
Plain data: nothing here talks to the kernel.

Kernel minimums: none of its own (TCX records need >= 6.6, clsact records >= 4.5; see ``tcx`` and
``clsact``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["INGRESS", "EGRESS", "DIRECTIONS", "ETH_P_ALL", "Attachment", "AttachmentInfo"]

INGRESS = "ingress"
EGRESS = "egress"
DIRECTIONS = (INGRESS, EGRESS)
ETH_P_ALL = 0x0003  # the protocol of our cls_bpf filters: every packet


@dataclass(eq=False)
class Attachment:
    """One program on one hook, as made by :meth:`TcAttacher.attach`."""

    ifindex: int
    ifname: str
    direction: str  # "ingress" | "egress"
    mode: str  # "tcx" | "clsact"
    prog_name: str
    prog_id: int
    link_fd: int = -1  # tcx: the link; closing it detaches
    link_id: int = 0
    parent: int = 0  # clsact: filter identity (parent, priority, protocol, handle)
    priority: int = 0
    protocol: int = ETH_P_ALL
    handle: int = 0
    active: bool = True
    adopted: bool = False  # tcx: a link pinned by an earlier run, held until attach() gives it our program

    @property
    def info(self) -> int:
        """tcm_info of our filter: priority << 16 | protocol in network byte order."""
        return (self.priority << 16) | socket.htons(self.protocol)


class AttachmentInfo(NamedTuple):
    """A program on a hook as the kernel reports it (ours or not)."""

    mode: str  # "tcx" | "clsact"
    prog_name: str
    prog_id: int
