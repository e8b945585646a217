"""Attach SCHED_CLS programs to an interface's ingress/egress: TCX links where the kernel has them, clsact +
cls_bpf otherwise.

Modes
-----
``tcx`` (kernel >= 6.6, ``enable_tcx="auto"`` or ``"on"``)
    ``BPF_LINK_CREATE`` with ``BPF_F_BEFORE`` and no anchor: our program goes to the *head* of the TCX chain,
    so it sees every packet before any other TCX program and before all legacy clsact filters (the kernel
    runs the TCX chain first and the clsact filters only when it returned ``TC_ACT_UNSPEC``). Programs must
    return ``TC_ACT_UNSPEC`` (-1, "next") to stay transparent: ``TC_ACT_OK`` would end the chain early.
    The attachment *is* the link fd we keep: when the process dies (even by SIGKILL) the kernel closes the
    fd and the program is detached. Nothing survives a crash unless someone pinned the link.
``clsact`` (fallback, or ``enable_tcx="off"``; kernel >= 4.5)
    A ``clsact`` qdisc (added if missing; we remember whether *we* added it) and a direct-action
    ``cls_bpf`` filter at priority 1 (the lowest, i.e. first, tc priority), fixed handle 1, protocol all,
    whose name (``TCA_BPF_NAME``) is the program's name. These persist after the process dies.

Ownership and restarts
----------------------
All our programs' names start with a prefix (constructor argument, default ``"retina_"``; at most 15
characters, the kernel keeps only 15 characters of a program name). :meth:`TcAttacher.attach` first calls
:meth:`TcAttacher.remove_stale` on the interface (both hooks), which removes, whatever the current mode:

* cls_bpf filters on the hook (any priority/handle) whose filter name or kernel program name starts with
  the prefix (left behind by a crashed clsact-mode run); if that leaves the clsact qdisc with no filter at
  all, the qdisc is removed too (it was ours: an empty clsact does nothing);
* TCX programs on the hook whose kernel name starts with the prefix: links are opened by id
  (``BPF_LINK_GET_FD_BY_ID``) and force-detached (``BPF_LINK_DETACH``, which works even on a link pinned in
  bpffs by an older run); link-less ones (``BPF_PROG_ATTACH``) are removed with ``BPF_PROG_DETACH``.

Attachments made by this attacher itself are never treated as stale. So after any restart there is exactly
one of our programs per hook. With a pin store (``pins``, :mod:`retina_exporter.datapath.pins`) the attacher pins
its TCX links, and a link pinned by an earlier run is not stale: it is adopted and gets the new program with
``BPF_LINK_UPDATE`` (no gap); clsact filters in our slot are replaced in place; :meth:`TcAttacher.release` (and
``close``) then leave everything attached for the next run. :meth:`TcAttacher.detach` / :meth:`TcAttacher.detach_all` remove exactly
what was added: link fds are detached and closed, our filters deleted, and the clsact qdisc deleted only if
we created it and no filter at all is left on it.

Network namespaces
------------------
An attacher is bound to one network namespace: the one its constructing thread is in (``netns=None``, the
agent's case under ``ip netns exec``), or the one given by ``netns`` (a name from ``ip netns``, a path such
as ``/proc/PID/ns/net``, or an open fd). Each operation runs with the calling thread switched into that
namespace (``setns(2)``, per thread, restored afterwards; a no-op when already there), because both
interface lookups and the bpf() ifindex arguments are resolved in the calling thread's namespace. The
pyroute2 ``IPRoute`` socket is created inside that context, so it is bound to the same namespace (this is
why we do not use ``IPRoute(netns=...)``: it forks a helper and, by default, *creates* a missing netns).

Layout
------
:mod:`.attacher`
    :class:`TcAttacher`, the facade: mode selection, stale cleanup, the attachment records it keeps, errors.
:mod:`.tcx`
    TCX links through the bpf() syscall (kernel >= 6.6).
:mod:`.clsact`
    The clsact qdisc and cls_bpf filters through pyroute2 (kernel >= 4.5), and the pyroute2 cls_bpf patch.
:mod:`.netns`
    Opening the bound namespace with a description for errors (switching is :mod:`retina_core.netns`).
:mod:`.records`, :mod:`.errors`
    :class:`Attachment`, :class:`AttachmentInfo`, the hook names; :class:`AttachError`.

Everything logs to the ``retina_exporter.datapath.tc`` logger.
"""

from __future__ import annotations

from retina_core.netns import enter_netns

from .attacher import TcAttacher
from .clsact import CLSACT_HANDLE, TC_H_CLSACT  # noqa: F401  (importable from here, as before the split)
from .errors import AttachError
from .records import DIRECTIONS, EGRESS, ETH_P_ALL, INGRESS, Attachment, AttachmentInfo  # noqa: F401

__all__ = [
    "AttachError",
    "Attachment",
    "AttachmentInfo",
    "TcAttacher",
    "enter_netns",
    "INGRESS",
    "EGRESS",
]
