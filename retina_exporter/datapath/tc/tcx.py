"""TCX: BPF links on an interface's ingress/egress hook, through the bpf() syscall
(:mod:`retina_exporter.datapath.syscall`).

Owns the kernel side of the ``tcx`` mode, without policy (no logging, no error wording; the caller decides
what an errno means):

* :func:`supported`: the kernel probe;
* :func:`create_link`: ``BPF_LINK_CREATE`` with ``BPF_F_BEFORE`` and no anchor, i.e. at the *head* of the
  TCX chain, ahead of every other TCX program and of all legacy clsact filters (the kernel runs the TCX chain
  first, and the clsact filters only when it returned ``TC_ACT_UNSPEC``). Programs must return
  ``TC_ACT_UNSPEC`` (-1, "next") to stay transparent: ``TC_ACT_OK`` would end the chain early. The link fd
  *is* the attachment: when the process dies (even by SIGKILL) the kernel closes it and the program is
  detached, unless someone pinned the link;
* :func:`link_id`, :func:`link_alive`, :func:`detach_link`: one link of ours;
* :func:`query` and :func:`force_detach`: every program on a hook, and removing one that is not ours to
  hold (by link id with ``BPF_LINK_GET_FD_BY_ID`` + ``BPF_LINK_DETACH``, which works even on a link pinned
  in bpffs; link-less ones with ``BPF_PROG_DETACH``).

Every call resolves ``ifindex`` in the calling thread's network namespace.

Kernel minimums: TCX links, ``BPF_F_BEFORE`` and the TCX ``BPF_PROG_QUERY`` >= 6.6 (some distributions
backport it; :func:`supported` probes behaviour, not the version). ``BPF_LINK_DETACH`` >= 5.9,
``BPF_LINK_GET_FD_BY_ID`` >= 5.8, ``BPF_PROG_GET_FD_BY_ID`` >= 4.13: all older than TCX.
"""

from __future__ import annotations

import os

from retina_exporter.datapath import syscall as bpfsys
from retina_exporter.datapath.syscall import BpfError

from .records import EGRESS, INGRESS

__all__ = ["ATTACH_TYPE", "ENOTSUPP", "create_link", "detach_link", "force_detach", "link_alive", "link_id",
           "query", "supported"]

ATTACH_TYPE = {INGRESS: bpfsys.BPF_TCX_INGRESS, EGRESS: bpfsys.BPF_TCX_EGRESS}
ENOTSUPP = 524  # kernel-internal "not supported", seen by user space on some TCX attach failures


def supported() -> bool:
    """Does the kernel have TCX links? Raises :class:`BpfError` when it cannot tell."""
    return bpfsys.kernel_has_tcx()


def create_link(prog_fd: int, ifindex: int, direction: str) -> int:
    """Attach ``prog_fd`` at the head of the hook's TCX chain; returns the link fd. Raises :class:`BpfError`."""
    return bpfsys.link_create_tcx(prog_fd, ifindex, ATTACH_TYPE[direction], bpfsys.BPF_F_BEFORE, 0)


def link_id(link_fd: int) -> int:
    """The kernel id of a link (0 when it cannot be read)."""
    try:
        return bpfsys.link_get_info(link_fd).id
    except BpfError:
        return 0


def link_alive(link_fd: int, ifindex: int) -> bool:
    """Is the link still attached to ``ifindex``? (The kernel reports ifindex 0 once the device is gone.)"""
    try:
        return bpfsys.link_get_info(link_fd).ifindex == ifindex
    except BpfError:
        return False


def detach_link(link_fd: int) -> None:
    """Detach the link from its hook; the fd stays open (the caller closes it). Raises :class:`BpfError`."""
    bpfsys.link_detach(link_fd)


def query(ifindex: int, direction: str) -> list[tuple[int, int]]:
    """``(prog_id, link_id)`` of every program on the hook, head first; link id 0 for link-less ones."""
    return bpfsys.prog_query(ifindex, ATTACH_TYPE[direction])


def force_detach(ifindex: int, direction: str, prog_id: int, link_id: int) -> None:
    """Remove a program from the hook whoever holds it: its link by id, or (``link_id`` 0) the link-less
    attachment. Raises :class:`BpfError` (``ENOENT``/``ENOLINK``: it went away meanwhile)."""
    if link_id:
        fd = bpfsys.link_get_fd_by_id(link_id)
        try:
            bpfsys.link_detach(fd)
        finally:
            os.close(fd)
    else:
        fd = bpfsys.prog_get_fd_by_id(prog_id)
        try:
            bpfsys.prog_detach(fd, ifindex, ATTACH_TYPE[direction])
        finally:
            os.close(fd)
