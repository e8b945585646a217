"""clsact qdisc + cls_bpf filters through pyroute2: the fallback ``clsact`` mode, and where stale filters are
looked for whatever the mode.

Owns the netlink side, without policy (no logging, no error wording; pyroute2's ``NetlinkError`` reaches the
caller unless a method says otherwise):

* :class:`Clsact`: one pyroute2 ``IPRoute`` socket, created on first use in the calling thread's network
  namespace (so it stays bound to it; ``IPRoute(netns=...)`` is not used because it forks a helper and, by
  default, *creates* a missing namespace), and the operations on it: add/delete the ``clsact`` qdisc, add a
  direct-action ``cls_bpf`` filter (protocol all, named ``TCA_BPF_NAME`` after the program), delete a
  filter, list a hook's filters as :class:`Filter`. Filters and qdisc persist after the process dies.
* :func:`patch_pyroute2_cls_bpf`: teaches pyroute2 the cls_bpf attributes it does not parse (program id
  and tag), so a dumped filter can be matched to a program.

pyroute2 is imported lazily: importing this module does not need it.

Kernel minimums: ``clsact`` qdisc >= 4.5, direct-action cls_bpf >= 4.4, the program id in a filter dump
(``TCA_BPF_ID``) >= 4.13.
"""

from __future__ import annotations

import contextlib
import errno as _errno
from typing import NamedTuple

from retina_exporter.datapath.rtnl import get_qdiscs

from .records import EGRESS, INGRESS

__all__ = ["CLSACT_HANDLE", "CLSACT_PARENT", "TC_H_CLSACT", "Clsact", "Filter", "patch_pyroute2_cls_bpf"]

TC_H_CLSACT = 0xFFFFFFF1  # clsact qdisc parent
CLSACT_HANDLE = 0xFFFF0000
CLSACT_PARENT = {INGRESS: 0xFFFFFFF2, EGRESS: 0xFFFFFFF3}  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_{INGRESS,EGRESS})


# --- pyroute2: parse the cls_bpf attributes it does not know (program id and tag) ----------------------------
def patch_pyroute2_cls_bpf() -> None:
    """pyroute2 0.9 stops its cls_bpf attribute map at TCA_BPF_FLAGS (8); the kernel also sends
    TCA_BPF_FLAGS_GEN (9), TCA_BPF_TAG (10) and TCA_BPF_ID (11). Extend the map (idempotent, additive)."""
    from pyroute2.netlink.rtnl.tcmsg import sched_bpf

    names = [n for n, _ in sched_bpf.options.nla_map]
    if "TCA_BPF_ID" in names or len(names) != 9:
        return
    sched_bpf.options.nla_map = tuple(sched_bpf.options.nla_map) + (
        ("TCA_BPF_FLAGS_GEN", "uint32"),
        ("TCA_BPF_TAG", "hex"),
        ("TCA_BPF_ID", "uint32"),
    )


class Filter(NamedTuple):
    """A filter on a clsact hook, as the kernel dumps it."""

    parent: int
    info: int  # (prio << 16) | htons(protocol)
    handle: int
    kind: str
    name: str  # TCA_BPF_NAME ("" for other kinds)
    prog_id: int  # TCA_BPF_ID (0 for other kinds)

    @property
    def priority(self) -> int:
        return self.info >> 16


class Clsact:
    """clsact qdiscs and cls_bpf filters over one ``IPRoute`` socket (created on first use: do that in the
    namespace the socket is meant for)."""

    def __init__(self) -> None:
        self._ipr = None

    @property
    def rt(self):
        """The IPRoute socket, created (in the calling thread's namespace) on first use."""
        if self._ipr is None:
            from pyroute2 import IPRoute

            patch_pyroute2_cls_bpf()  # pyroute2 is imported here first (TCX-only runs never import it)
            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        """Close the socket (if it was opened); never raises."""
        if self._ipr is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()
            self._ipr = None

    # --- qdisc ------------------------------------------------------------------------------------------
    def add_qdisc(self, ifindex: int) -> bool:
        """Add the clsact qdisc; True if this call added it, False if it was there already."""
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            self.rt.tc("add", "clsact", ifindex)
        except NetlinkError as e:
            if e.code != _errno.EEXIST:
                raise
            return False
        return True

    def has_qdisc(self, ifindex: int) -> bool:
        """Whether the link has a clsact qdisc (asked without pyroute2: a TCX agent's stale-filter check then
        never imports it); ``OSError`` when the kernel refuses."""
        return any(q.get_attr("TCA_KIND") == "clsact" for q in get_qdiscs(ifindex))

    def del_qdisc(self, ifindex: int) -> None:
        """Delete the clsact qdisc (with whatever is on it); a missing qdisc or device is not an error."""
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            self.rt.tc("del", "clsact", ifindex)
        except NetlinkError as e:
            if e.code not in (_errno.ENOENT, _errno.ENODEV, _errno.EINVAL):
                raise

    # --- filters ----------------------------------------------------------------------------------------
    def add_filter(self, ifindex: int, direction: str, prog_fd: int, prog_name: str, *, priority: int,
                   handle: int, protocol: int, replace: bool = False) -> int:
        """Add a direct-action cls_bpf filter running ``prog_fd`` (``replace``: or replace the filter in the same
        slot in place, ``NLM_F_REPLACE``: the hook never runs without one); returns its parent."""
        parent = CLSACT_PARENT[direction]
        self.rt.tc(
            "replace-filter" if replace else "add-filter",
            "bpf",
            ifindex,
            handle=handle,
            fd=prog_fd,
            name=prog_name,
            parent=parent,
            prio=priority,
            protocol=protocol,
            direct_action=True,
        )
        return parent

    def del_filter(self, ifindex: int, parent: int, info: int, handle: int) -> None:
        self.rt.tc("del-filter", "bpf", ifindex, handle=handle, parent=parent, info=info)

    def filters(self, ifindex: int, direction: str) -> list[Filter]:
        """Filters on a clsact hook ([] when there is no clsact qdisc or the hook is empty)."""
        from pyroute2.netlink.exceptions import NetlinkError

        parent = CLSACT_PARENT[direction]
        try:
            msgs = list(self.rt.get_filters(index=ifindex, parent=parent))
        except NetlinkError as e:
            if e.code in (_errno.EINVAL, _errno.ENOENT, _errno.ENODEV):
                return []
            raise
        out = []
        for m in msgs:
            if m.get("index") != ifindex or m.get("parent") != parent or not m.get("handle"):
                continue  # handle 0: the (prio, protocol) chain head, not a filter
            kind = m.get_attr("TCA_KIND") or ""
            name, prog_id = "", 0
            opts = m.get_attr("TCA_OPTIONS")
            if kind == "bpf" and opts is not None:
                name = opts.get_attr("TCA_BPF_NAME") or ""
                prog_id = opts.get_attr("TCA_BPF_ID") or 0
            out.append(Filter(parent, m.get("info"), m.get("handle"), kind, name, prog_id))
        out.sort(key=lambda f: f.priority)  # the kernel dumps in priority order already; keep it explicit
        return out
