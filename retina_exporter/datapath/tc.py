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
``clsact`` (fallback, or ``enable_tcx="off"``)
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
one of our programs per hook. :meth:`TcAttacher.detach` / :meth:`TcAttacher.detach_all` remove exactly
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
"""

from __future__ import annotations

import contextlib
import errno as _errno
import logging
import os
import socket
import threading
from dataclasses import dataclass
from typing import Iterator, NamedTuple

from retina_core.netns import THREAD_NETNS, enter_netns, netns_path, open_netns
from retina_exporter.datapath import syscall as bpfsys
from retina_exporter.datapath.syscall import BpfError

__all__ = [
    "AttachError",
    "Attachment",
    "AttachmentInfo",
    "TcAttacher",
    "enter_netns",
    "INGRESS",
    "EGRESS",
]

log = logging.getLogger(__name__)

INGRESS = "ingress"
EGRESS = "egress"
DIRECTIONS = (INGRESS, EGRESS)

_TCX_ATTACH_TYPE = {INGRESS: bpfsys.BPF_TCX_INGRESS, EGRESS: bpfsys.BPF_TCX_EGRESS}
TC_H_CLSACT = 0xFFFFFFF1  # clsact qdisc parent
CLSACT_HANDLE = 0xFFFF0000
_CLSACT_PARENT = {INGRESS: 0xFFFFFFF2, EGRESS: 0xFFFFFFF3}  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_{INGRESS,EGRESS})
ETH_P_ALL = 0x0003

_PERM_HINT = (
    "permission denied: attaching TC programs needs CAP_BPF and CAP_NET_ADMIN (CAP_SYS_ADMIN on kernels "
    "before 5.8); run the agent as root or grant those capabilities"
)


class AttachError(Exception):
    """An attachment could not be made or undone; the message says what and how to fix it."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


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

    @property
    def info(self) -> int:
        """tcm_info of our filter: priority << 16 | protocol in network byte order."""
        return (self.priority << 16) | socket.htons(self.protocol)


class AttachmentInfo(NamedTuple):
    """A program on a hook as the kernel reports it (ours or not)."""

    mode: str  # "tcx" | "clsact"
    prog_name: str
    prog_id: int


# --- network namespaces: retina_core.netns does the switching; this names the namespace in errors ----------


def _open_netns(spec: str | int | None) -> tuple[int, str]:
    """Open a netns; returns (fd, description). None = the calling thread's namespace."""
    if spec is None:
        spec, desc = THREAD_NETNS, "the current network namespace"
    elif isinstance(spec, int):
        desc = f"network namespace fd {spec}"
    elif "/" in spec:
        desc = f"network namespace {spec}"
    else:
        desc = f"network namespace {spec!r}"
    try:
        fd = open_netns(spec)
    except FileNotFoundError:
        raise AttachError(f"{desc} not found ({netns_path(str(spec))}); list them with `ip netns list`",
                          _errno.ENOENT) from None
    if desc == "the current network namespace":
        desc += f" (net:[{os.fstat(fd).st_ino}])"
    return fd, desc


# --- pyroute2: parse the cls_bpf attributes it does not know (program id and tag) ----------------------------
def _patch_pyroute2_cls_bpf() -> None:
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


def _err_code(e: BaseException) -> int | None:
    code = getattr(e, "code", None)  # pyroute2 NetlinkError
    if code is None and isinstance(e, OSError):
        code = e.errno
    return code


class _Filter(NamedTuple):
    parent: int
    info: int  # (prio << 16) | htons(protocol)
    handle: int
    kind: str
    name: str  # TCA_BPF_NAME ("" for other kinds)
    prog_id: int  # TCA_BPF_ID (0 for other kinds)

    @property
    def priority(self) -> int:
        return self.info >> 16


class TcAttacher:
    """Attach/detach SCHED_CLS programs on ingress/egress hooks; see the module docstring.

    ``enable_tcx``: ``"auto"`` (TCX when the kernel has it, else clsact with a log line), ``"off"``
    (always clsact) or ``"on"`` (TCX or an error); booleans map to ``"auto"``/``"off"``.
    """

    def __init__(
        self,
        prefix: str = "retina_",
        enable_tcx: str | bool = "auto",
        *,
        netns: str | int | None = None,
        priority: int = 1,
        handle: int = 1,
    ):
        if not prefix or len(prefix) >= bpfsys.BPF_OBJ_NAME_LEN:
            raise ValueError("prefix must be 1..15 characters (the kernel keeps 15 characters of a program name)")
        if isinstance(enable_tcx, bool):
            enable_tcx = "auto" if enable_tcx else "off"
        enable_tcx = str(enable_tcx).lower()
        enable_tcx = {"true": "auto", "false": "off", "yes": "auto", "no": "off"}.get(enable_tcx, enable_tcx)
        if enable_tcx not in ("auto", "on", "off"):
            raise ValueError(f"enable_tcx must be auto, on or off, not {enable_tcx!r}")
        if not 1 <= priority <= 0xFFFF or not 1 <= handle <= 0xFFFFFFFF:
            raise ValueError("priority must be 1..65535 and handle non-zero")
        self.prefix = prefix
        self.enable_tcx = enable_tcx
        self.priority = priority
        self.handle = handle
        self._ns_fd, self._ns_desc = _open_netns(netns)
        self._ipr = None
        self._lock = threading.RLock()
        self._attachments: list[Attachment] = []
        self._our_qdiscs: set[int] = set()  # ifindexes where we added the clsact qdisc
        self._tcx: bool | None = None
        self._fallback_logged = False
        _patch_pyroute2_cls_bpf()

    # --- lifecycle ------------------------------------------------------------------------------------
    def __enter__(self) -> "TcAttacher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Detach everything and release the netlink socket and namespace fd."""
        with self._lock:
            try:
                self.detach_all()
            finally:
                if self._ipr is not None:
                    with contextlib.suppress(Exception):
                        self._ipr.close()
                    self._ipr = None
                if self._ns_fd >= 0:
                    os.close(self._ns_fd)
                    self._ns_fd = -1

    @property
    def attachments(self) -> list[Attachment]:
        with self._lock:
            return [a for a in self._attachments if a.active]

    @contextlib.contextmanager
    def _ns(self) -> Iterator[None]:
        if self._ns_fd < 0:
            raise AttachError("TcAttacher is closed")
        with self._lock, enter_netns(self._ns_fd):
            yield

    @property
    def _rt(self):
        """The IPRoute socket, created (inside the namespace context) on first use."""
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    # --- mode ---------------------------------------------------------------------------------------
    def _tcx_supported(self) -> bool:
        if self._tcx is None:
            try:
                self._tcx = bpfsys.kernel_has_tcx()
            except BpfError as e:
                if e.errno in (_errno.EPERM, _errno.EACCES):
                    raise AttachError(f"probing the kernel for TCX support: {_PERM_HINT} ({e})", e.errno) from e
                log.warning("TCX probe failed (%s): assuming the kernel has no TCX", e)
                self._tcx = False
        return self._tcx

    @property
    def mode(self) -> str:
        """The mode new attachments use: "tcx" or "clsact" (probes the kernel once)."""
        with self._ns():
            return self._mode()

    def _mode(self) -> str:
        if self.enable_tcx == "off":
            return "clsact"
        if self._tcx_supported():
            return "tcx"
        rel = os.uname().release
        if self.enable_tcx == "on":
            raise AttachError(
                f"enableTCX=on but kernel {rel} has no TCX (needs >= 6.6); set enableTCX to auto or off",
                _errno.EOPNOTSUPP,
            )
        if not self._fallback_logged:
            self._fallback_logged = True
            log.info("kernel %s has no TCX (needs >= 6.6): attaching with clsact/cls_bpf instead", rel)
        return "clsact"

    # --- interface lookup -------------------------------------------------------------------------------
    def _missing_iface(self, iface) -> AttachError:
        return AttachError(
            f"interface {iface!r} not found in {self._ns_desc}: check the name with `ip link show`, or run the "
            f"agent in the interface's namespace (`ip netns exec NS ...` or the netns setting)",
            _errno.ENODEV,
        )

    def _resolve(self, iface: str | int) -> tuple[int, str]:
        try:
            if isinstance(iface, int):
                return iface, socket.if_indextoname(iface)
            return socket.if_nametoindex(iface), iface
        except OSError:
            raise self._missing_iface(iface) from None

    def _wrap(self, e: BaseException, what: str, ifname: str) -> AttachError:
        code = _err_code(e)
        if code in (_errno.EPERM, _errno.EACCES):
            return AttachError(f"{what} on {ifname}: {_PERM_HINT} ({e})", code)
        if code in (_errno.ENODEV, _errno.ENXIO):
            return self._missing_iface(ifname)
        return AttachError(f"{what} on {ifname} failed: {e}", code)

    # --- attach -----------------------------------------------------------------------------------------
    def attach(self, iface: str | int, direction: str, prog_fd: int, prog_name: str | bytes) -> Attachment:
        """Attach the loaded SCHED_CLS program ``prog_fd`` (named ``prog_name``, which must start with the
        prefix) to ``iface``'s ``direction`` hook, after removing stale attachments of ours from both hooks of
        the interface (:meth:`remove_stale`)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'ingress' or 'egress', not {direction!r}")
        if isinstance(prog_name, bytes):
            prog_name = prog_name.decode()
        if not prog_name.startswith(self.prefix):
            raise ValueError(f"program name {prog_name!r} must start with the prefix {self.prefix!r}")
        with self._ns():
            ifindex, ifname = self._resolve(iface)
            for a in list(self._attachments):
                if a.active and a.ifindex == ifindex and a.direction == direction:
                    if self._alive(a):
                        raise AttachError(f"{ifname} {direction} already has our program {a.prog_name!r}; detach it first")
                    self.detach(a)  # its interface went away (and the ifindex was reused): just forget it
            try:
                info = bpfsys.prog_get_info(prog_fd)
            except BpfError as e:
                if e.errno in (_errno.EPERM, _errno.EACCES):
                    raise self._wrap(e, f"inspecting program {prog_name}", ifname) from e
                raise AttachError(f"prog fd {prog_fd} ({prog_name}) is not a usable BPF program: {e}", e.errno) from e
            if info.type != bpfsys.BPF_PROG_TYPE_SCHED_CLS:
                raise AttachError(f"program {prog_name!r} has type {info.type}, not SCHED_CLS ({bpfsys.BPF_PROG_TYPE_SCHED_CLS})")
            if not info.name.startswith(self.prefix):
                log.warning(
                    "kernel name %r of program %s does not start with %r: a pinned or link-less TCX attachment "
                    "of it could not be recognised as ours after a restart",
                    info.name, prog_name, self.prefix,
                )  # fmt: skip
            mode = self._mode()
            # both hooks: a crashed run's qdisc can only be recognised (and removed) once all of its filters are gone
            self.remove_stale(ifindex)
            att = None
            if mode == "tcx":
                att = self._attach_tcx(ifindex, ifname, direction, prog_fd, prog_name, info.id)
            if att is None:
                att = self._attach_clsact(ifindex, ifname, direction, prog_fd, prog_name, info.id)
            self._attachments.append(att)
            log.info("attached %s to %s %s (%s, prog id %d)", prog_name, ifname, direction, att.mode, att.prog_id)
            return att

    def _attach_tcx(self, ifindex, ifname, direction, prog_fd, prog_name, prog_id) -> Attachment | None:
        try:
            link_fd = bpfsys.link_create_tcx(prog_fd, ifindex, _TCX_ATTACH_TYPE[direction], bpfsys.BPF_F_BEFORE, 0)
        except BpfError as e:
            if e.errno in (_errno.EINVAL, _errno.EOPNOTSUPP, 524) and self.enable_tcx == "auto":  # 524: ENOTSUPP
                log.warning("TCX attach of %s on %s %s failed (%s): falling back to clsact", prog_name, ifname, direction, e)
                return None
            if e.errno == _errno.EEXIST:
                raise AttachError(f"program {prog_name!r} (id {prog_id}) is already attached to {ifname} {direction} via TCX", e.errno) from e
            raise self._wrap(e, f"TCX attach of {prog_name}", ifname) from e
        try:
            link_id = bpfsys.link_get_info(link_fd).id
        except BpfError:
            link_id = 0
        return Attachment(ifindex, ifname, direction, "tcx", prog_name, prog_id, link_fd=link_fd, link_id=link_id)

    def _attach_clsact(self, ifindex, ifname, direction, prog_fd, prog_name, prog_id) -> Attachment:
        from pyroute2.netlink.exceptions import NetlinkError

        created = False
        try:
            self._rt.tc("add", "clsact", ifindex)
            created = True
        except NetlinkError as e:
            if e.code != _errno.EEXIST:
                raise self._wrap(e, "adding the clsact qdisc", ifname) from e
        if created:
            self._our_qdiscs.add(ifindex)
        parent = _CLSACT_PARENT[direction]
        try:
            self._rt.tc(
                "add-filter",
                "bpf",
                ifindex,
                handle=self.handle,
                fd=prog_fd,
                name=prog_name,
                parent=parent,
                prio=self.priority,
                protocol=ETH_P_ALL,
                direct_action=True,
            )
        except NetlinkError as e:
            if created:
                self._maybe_remove_qdisc(ifindex)
            if e.code in (_errno.EEXIST, _errno.EINVAL):
                others = [f for f in self._filters(ifindex, direction) if f.priority == self.priority]
                if others:
                    desc = ", ".join(f"{f.kind} handle {f.handle:#x}" + (f" {f.name!r}" if f.name else "") for f in others)
                    raise AttachError(
                        f"cannot add our cls_bpf filter on {ifname} {direction} at priority {self.priority}: it is "
                        f"taken by a foreign filter ({desc}); remove it or configure another priority",
                        e.code,
                    ) from e
            raise self._wrap(e, f"adding cls_bpf filter {prog_name}", ifname) from e
        return Attachment(
            ifindex, ifname, direction, "clsact", prog_name, prog_id,
            parent=parent, priority=self.priority, protocol=ETH_P_ALL, handle=self.handle,
        )  # fmt: skip

    # --- clsact helpers ---------------------------------------------------------------------------------
    def _filters(self, ifindex: int, direction: str) -> list[_Filter]:
        """Filters on a clsact hook ([] when there is no clsact qdisc or the hook is empty)."""
        from pyroute2.netlink.exceptions import NetlinkError

        parent = _CLSACT_PARENT[direction]
        try:
            msgs = list(self._rt.get_filters(index=ifindex, parent=parent))
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
            out.append(_Filter(parent, m.get("info"), m.get("handle"), kind, name, prog_id))
        out.sort(key=lambda f: f.priority)  # the kernel dumps in priority order already; keep it explicit
        return out

    def _has_clsact(self, ifindex: int) -> bool:
        for q in self._rt.get_qdiscs(index=ifindex):
            if q.get("index") == ifindex and q.get_attr("TCA_KIND") == "clsact":
                return True
        return False

    def _del_filter(self, ifindex: int, parent: int, info: int, handle: int) -> None:
        self._rt.tc("del-filter", "bpf", ifindex, handle=handle, parent=parent, info=info)

    def _maybe_remove_qdisc(self, ifindex: int, force_ownership: bool = False) -> bool:
        """Delete the clsact qdisc if it is ours (or ``force_ownership``) and no filter is left on it."""
        from pyroute2.netlink.exceptions import NetlinkError

        if ifindex not in self._our_qdiscs and not force_ownership:
            return False
        try:
            if any(self._filters(ifindex, d) for d in DIRECTIONS):
                return False
            if any(a.active and a.ifindex == ifindex and a.mode == "clsact" for a in self._attachments):
                return False
            self._rt.tc("del", "clsact", ifindex)
        except NetlinkError as e:
            if e.code not in (_errno.ENOENT, _errno.ENODEV, _errno.EINVAL):
                raise
        self._our_qdiscs.discard(ifindex)
        return True

    def _ifname_of(self, ifindex: int) -> str | None:
        try:
            return socket.if_indextoname(ifindex)
        except OSError:
            return None

    def _alive(self, att: Attachment) -> bool:
        """Is this attachment of ours still in place (same interface, our program)? Call in the namespace."""
        if not att.active:
            return False
        if att.mode == "tcx":
            try:
                return bpfsys.link_get_info(att.link_fd).ifindex == att.ifindex  # 0 once the device is gone
            except BpfError:
                return False
        if self._ifname_of(att.ifindex) != att.ifname:
            return False
        return any(
            (f.parent, f.info, f.handle, f.kind, f.prog_id) == (att.parent, att.info, att.handle, "bpf", att.prog_id)
            for f in self._filters(att.ifindex, att.direction)
        )

    def _prog_name_by_id(self, prog_id: int) -> str:
        try:
            return bpfsys.prog_get_info(prog_id=prog_id).name
        except BpfError:
            return ""

    # --- stale ------------------------------------------------------------------------------------------
    def remove_stale(self, iface: str | int, direction: str | None = None) -> int:
        """Remove programs of ours (by name prefix) that this attacher did not make, on one hook or on both
        (``direction=None``); returns how many were removed. See the module docstring."""
        from pyroute2.netlink.exceptions import NetlinkError

        directions = DIRECTIONS if direction is None else (direction,)
        removed = 0
        with self._ns():
            ifindex, ifname = self._resolve(iface)
            own_links = {a.link_id for a in self._attachments if a.active and a.mode == "tcx"}
            own_filters = {
                (a.parent, a.priority, a.handle) for a in self._attachments if a.active and a.mode == "clsact" and a.ifindex == ifindex
            }
            # TCX programs (only where the kernel has TCX; the query is the same whatever our mode is)
            if self._tcx_supported():
                for d in directions:
                    atype = _TCX_ATTACH_TYPE[d]
                    try:
                        entries = bpfsys.prog_query(ifindex, atype)
                    except BpfError as e:
                        raise self._wrap(e, "querying TCX programs", ifname) from e
                    for prog_id, link_id in entries:
                        if link_id and link_id in own_links:
                            continue
                        name = self._prog_name_by_id(prog_id)
                        if not name.startswith(self.prefix):
                            continue
                        try:
                            if link_id:
                                fd = bpfsys.link_get_fd_by_id(link_id)
                                try:
                                    bpfsys.link_detach(fd)
                                finally:
                                    os.close(fd)
                            else:
                                fd = bpfsys.prog_get_fd_by_id(prog_id)
                                try:
                                    bpfsys.prog_detach(fd, ifindex, atype)
                                finally:
                                    os.close(fd)
                        except BpfError as e:
                            if e.errno in (_errno.ENOENT, _errno.ENOLINK):
                                continue  # went away meanwhile
                            raise self._wrap(e, f"removing stale TCX program {name}", ifname) from e
                        removed += 1
                        log.warning(
                            "removed stale TCX program %s (prog id %d, link id %d) from %s %s",
                            name, prog_id, link_id, ifname, d,
                        )  # fmt: skip
            # cls_bpf filters
            try:
                if self._has_clsact(ifindex):
                    removed_filters = 0
                    for d in directions:
                        for f in self._filters(ifindex, d):
                            if f.kind != "bpf" or (f.parent, f.priority, f.handle) in own_filters:
                                continue
                            kname = self._prog_name_by_id(f.prog_id) if f.prog_id else ""
                            if not (f.name.startswith(self.prefix) or kname.startswith(self.prefix)):
                                continue
                            try:
                                self._del_filter(ifindex, f.parent, f.info, f.handle)
                            except NetlinkError as e:
                                if e.code == _errno.ENOENT:
                                    continue
                                raise
                            removed_filters += 1
                            log.warning(
                                "removed stale cls_bpf filter %s (prio %d handle %#x, prog id %d) from %s %s",
                                f.name or kname, f.priority, f.handle, f.prog_id, ifname, d,
                            )  # fmt: skip
                    if removed_filters:
                        removed += removed_filters
                        if self._maybe_remove_qdisc(ifindex, force_ownership=True):
                            log.info("removed the now empty clsact qdisc of %s (left by an earlier run)", ifname)
            except NetlinkError as e:
                raise self._wrap(e, "removing stale cls_bpf filters", ifname) from e
        return removed

    # --- detach -----------------------------------------------------------------------------------------
    def detach(self, att: Attachment) -> None:
        """Undo one attachment (idempotent). A vanished interface counts as detached."""
        from pyroute2.netlink.exceptions import NetlinkError

        with self._lock:
            if not att.active:
                return
            if att.mode == "tcx":
                try:
                    bpfsys.link_detach(att.link_fd)
                except BpfError as e:
                    if e.errno not in (_errno.ENOLINK, _errno.ENOENT, _errno.ENODEV, _errno.EINVAL):
                        raise self._wrap(e, f"detaching {att.prog_name}", att.ifname) from e
                finally:
                    os.close(att.link_fd)
                    att.link_fd = -1
                    att.active = False
            else:
                with self._ns():
                    try:
                        if not self._alive(att):
                            # our filter is gone, most likely with its interface (the ifindex may even belong to a
                            # new interface by now): touch nothing, and no longer claim a qdisc there (unless another
                            # live filter of ours sits on it) - better leave an empty clsact than delete a foreign one
                            att.active = False
                            if not any(a.active and a.ifindex == att.ifindex and a.mode == "clsact" for a in self._attachments):
                                self._our_qdiscs.discard(att.ifindex)
                        else:
                            try:
                                self._del_filter(att.ifindex, att.parent, att.info, att.handle)
                            except NetlinkError as e:
                                if e.code not in (_errno.ENOENT, _errno.ENODEV, _errno.EINVAL):
                                    raise
                            att.active = False
                            self._maybe_remove_qdisc(att.ifindex)
                    except NetlinkError as e:
                        raise self._wrap(e, f"removing cls_bpf filter {att.prog_name}", att.ifname) from e
            self._attachments = [a for a in self._attachments if a.active]
            log.info("detached %s from %s %s (%s)", att.prog_name, att.ifname, att.direction, att.mode)

    def detach_all(self) -> None:
        """Detach every attachment of this attacher; tries all, then raises the first error."""
        first: BaseException | None = None
        with self._lock:
            for att in list(self._attachments):
                try:
                    self.detach(att)
                except Exception as e:  # keep going: leave as little behind as possible
                    log.error("detach of %s from %s %s failed: %s", att.prog_name, att.ifname, att.direction, e)
                    first = first or e
        if first is not None:
            raise first

    # --- inspection ---------------------------------------------------------------------------------------
    def list_attachments(self, iface: str | int, direction: str) -> list[AttachmentInfo]:
        """Every BPF program on the hook, ours or not, in execution order: the TCX chain (head first), then
        the clsact cls_bpf filters by priority. Names: kernel program name (TCX), filter name (clsact)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'ingress' or 'egress', not {direction!r}")
        out: list[AttachmentInfo] = []
        with self._ns():
            ifindex, ifname = self._resolve(iface)
            try:
                if self._tcx_supported():
                    for prog_id, _link_id in bpfsys.prog_query(ifindex, _TCX_ATTACH_TYPE[direction]):
                        out.append(AttachmentInfo("tcx", self._prog_name_by_id(prog_id), prog_id))
                for f in self._filters(ifindex, direction):
                    if f.kind == "bpf":
                        out.append(AttachmentInfo("clsact", f.name or self._prog_name_by_id(f.prog_id), f.prog_id))
            except Exception as e:
                if isinstance(e, AttachError):
                    raise
                raise self._wrap(e, "listing attachments", ifname) from e
        return out
