"""The :class:`TcAttacher` facade: which mode to attach with, what counts as ours, what to clean up.

Owns the policy over the two mechanisms (:mod:`.tcx`, :mod:`.clsact`):

* mode selection: ``enable_tcx`` ``"auto"`` (TCX when the kernel has it, else clsact with one log line),
  ``"on"`` (TCX or an error), ``"off"`` (always clsact), and the per-attach fallback from a TCX attach the
  kernel refuses;
* the attachment records of this attacher, and what :meth:`~TcAttacher.detach` removes (exactly what was
  added: link fds detached and closed, our filters deleted, the clsact qdisc deleted only if we created it
  and no filter at all is left on it);
* stale cleanup (:meth:`~TcAttacher.remove_stale`): programs named with our prefix that this attacher did
  not make, left behind by a crashed run, in either mode;
* the namespace binding (every operation runs in it, under one lock) and the wording of every error;
* with a :class:`~retina_exporter.datapath.pins.PinStore` (``pins``): every TCX link it creates is pinned, a link
  pinned by an earlier run on the same hook is adopted and gets the new program with ``BPF_LINK_UPDATE`` (no
  gap, one attachment per hook), a clsact filter in our (priority, handle) slot is replaced in place, and
  :meth:`~TcAttacher.release` leaves pinned links and our filters attached for the next run.

Kernel minimums: TCX mode >= 6.6, clsact mode >= 4.5 (see those modules); program names, used to recognise
our programs, >= 4.15 (the kernel keeps 15 characters of them, hence the prefix limit).
"""

from __future__ import annotations

import contextlib
import errno as _errno
import logging
import os
import socket
import threading
from typing import Iterator

from retina_core.netns import enter_netns
from retina_exporter.datapath import syscall as bpfsys
from retina_exporter.datapath.pins import PinStore
from retina_exporter.datapath.syscall import BpfError

from . import tcx
from .clsact import CLSACT_PARENT, Clsact
from .errors import PERM_HINT, AttachError, err_code
from .netns import open_described
from .records import DIRECTIONS, ETH_P_ALL, Attachment, AttachmentInfo

__all__ = ["TcAttacher"]

log = logging.getLogger(__package__)  # "retina_exporter.datapath.tc", one logger for the whole package


def _prog_name_by_id(prog_id: int) -> str:
    """The kernel name of a program ("" when it cannot be read, e.g. it is gone)."""
    try:
        return bpfsys.prog_get_info(prog_id=prog_id).name
    except BpfError:
        return ""


def _ifname_of(ifindex: int) -> str | None:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return None


class TcAttacher:
    """Attach/detach SCHED_CLS programs on ingress/egress hooks; see the package docstring.

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
        pins: PinStore | None = None,
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
        self.pins = pins
        self.priority = priority
        self.handle = handle
        self._ns_fd, self._ns_desc = open_described(netns)
        self._clsact = Clsact()  # its netlink socket is opened on first use, inside _ns()
        self._lock = threading.RLock()
        self._attachments: list[Attachment] = []
        self._our_qdiscs: set[int] = set()  # ifindexes where we added the clsact qdisc
        self._tcx: bool | None = None
        self._fallback_logged = False

    # --- lifecycle ------------------------------------------------------------------------------------
    def __enter__(self) -> "TcAttacher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Detach everything (with ``pins``: :meth:`release`) and release the netlink socket and namespace fd."""
        with self._lock:
            try:
                self.release()
            finally:
                self._clsact.close()
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

    # --- mode ---------------------------------------------------------------------------------------
    def _tcx_supported(self) -> bool:
        if self._tcx is None:
            try:
                self._tcx = tcx.supported()
            except BpfError as e:
                if e.errno in (_errno.EPERM, _errno.EACCES):
                    raise AttachError(f"probing the kernel for TCX support: {PERM_HINT} ({e})", e.errno) from e
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

    # --- interface lookup and errors ------------------------------------------------------------------
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
        code = err_code(e)
        if code in (_errno.EPERM, _errno.EACCES):
            return AttachError(f"{what} on {ifname}: {PERM_HINT} ({e})", code)
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
                if a.active and not a.adopted and a.ifindex == ifindex and a.direction == direction:
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
            if self.pins is not None and mode == "tcx":
                adopted = self._take_pinned(ifindex, ifname, direction, prog_fd, prog_name, info.id)
                if adopted is not None:
                    return adopted
            # both hooks: a crashed run's qdisc can only be recognised (and removed) once all of its filters are gone
            self.remove_stale(ifindex)
            att = None
            if mode == "tcx":
                att = self._attach_tcx(ifindex, ifname, direction, prog_fd, prog_name, info.id)
            if att is None:
                att = self._attach_clsact(ifindex, ifname, direction, prog_fd, prog_name, info.id)
            elif self.pins is not None:
                self._pin(att)
            self._attachments.append(att)
            log.info("attached %s to %s %s (%s, prog id %d)", prog_name, ifname, direction, att.mode, att.prog_id)
            return att

    def _attach_tcx(self, ifindex, ifname, direction, prog_fd, prog_name, prog_id) -> Attachment | None:
        try:
            link_fd = tcx.create_link(prog_fd, ifindex, direction)
        except BpfError as e:
            if e.errno in (_errno.EINVAL, _errno.EOPNOTSUPP, tcx.ENOTSUPP) and self.enable_tcx == "auto":
                log.warning("TCX attach of %s on %s %s failed (%s): falling back to clsact", prog_name, ifname, direction, e)
                return None
            if e.errno == _errno.EEXIST:
                raise AttachError(f"program {prog_name!r} (id {prog_id}) is already attached to {ifname} {direction} via TCX", e.errno) from e
            raise self._wrap(e, f"TCX attach of {prog_name}", ifname) from e
        link_id = tcx.link_id(link_fd)
        return Attachment(ifindex, ifname, direction, "tcx", prog_name, prog_id, link_fd=link_fd, link_id=link_id)

    # --- pinned links -----------------------------------------------------------------------------------
    def _pin(self, att: Attachment) -> None:
        try:
            self.pins.pin_link(att.link_fd, att.ifindex, att.direction)
        except (BpfError, OSError) as e:
            try:
                tcx.detach_link(att.link_fd)
            finally:
                os.close(att.link_fd)
            raise self._wrap(e, f"pinning the TCX link of {att.prog_name} in {self.pins.dir}", att.ifname) from e

    def _adopt_pinned(self, ifindex: int, ifname: str) -> None:
        """Open the links an earlier run pinned on the interface's hooks (still attached there) and hold them as
        ours, so :meth:`remove_stale` keeps them; :meth:`attach` then gives them the new program."""
        held = {a.direction for a in self._attachments if a.active and a.ifindex == ifindex}
        for d in DIRECTIONS:
            if d in held:
                continue
            try:
                fd = self.pins.open_link(ifindex, d)
            except (BpfError, OSError) as e:
                raise self._wrap(e, f"opening the pinned TCX link in {self.pins.dir}", ifname) from e
            if fd is None:
                continue
            info = bpfsys.link_get_info(fd)
            self._attachments.append(Attachment(ifindex, ifname, d, "tcx", _prog_name_by_id(info.prog_id),
                                                info.prog_id, link_fd=fd, link_id=info.id, adopted=True))
            log.info("adopted the pinned TCX link %d on %s %s (prog id %d)", info.id, ifname, d, info.prog_id)

    def _take_pinned(self, ifindex, ifname, direction, prog_fd, prog_name, prog_id) -> Attachment | None:
        """The adopted link of this hook, now running ``prog_fd`` (``BPF_LINK_UPDATE``), or None."""
        self._adopt_pinned(ifindex, ifname)
        att = next((a for a in self._attachments
                    if a.active and a.adopted and a.ifindex == ifindex and a.direction == direction), None)
        if att is None:
            return None
        try:
            bpfsys.link_update(att.link_fd, prog_fd)
        except BpfError as e:
            raise self._wrap(e, f"replacing the program of pinned TCX link {att.link_id} with {prog_name}", ifname) from e
        log.info("pinned TCX link %d on %s %s: program %s (id %d) replaced by %s (id %d)", att.link_id, ifname,
                 direction, att.prog_name, att.prog_id, prog_name, prog_id)
        att.prog_name, att.prog_id, att.adopted = prog_name, prog_id, False
        return att

    def _slot_is_ours(self, ifindex: int, direction: str) -> bool:
        """Is the cls_bpf filter in our (priority, handle) slot, if any, one of ours (by name)? Only then is it
        replaced in place; a foreign one makes the add fail with the error naming it."""
        for f in self._clsact.filters(ifindex, direction):
            if (f.priority, f.handle) == (self.priority, self.handle):
                kname = _prog_name_by_id(f.prog_id) if f.prog_id else ""
                return f.kind == "bpf" and (f.name.startswith(self.prefix) or kname.startswith(self.prefix))
        return True

    def _attach_clsact(self, ifindex, ifname, direction, prog_fd, prog_name, prog_id) -> Attachment:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            created = self._clsact.add_qdisc(ifindex)
        except NetlinkError as e:
            raise self._wrap(e, "adding the clsact qdisc", ifname) from e
        if created:
            self._our_qdiscs.add(ifindex)
        try:
            parent = self._clsact.add_filter(
                ifindex, direction, prog_fd, prog_name, priority=self.priority, handle=self.handle, protocol=ETH_P_ALL,
                replace=self.pins is not None and self._slot_is_ours(ifindex, direction),
            )
        except NetlinkError as e:
            if created:
                self._maybe_remove_qdisc(ifindex)
            if e.code in (_errno.EEXIST, _errno.EINVAL):
                others = [f for f in self._clsact.filters(ifindex, direction) if f.priority == self.priority]
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

    # --- state of our attachments ---------------------------------------------------------------------
    def _maybe_remove_qdisc(self, ifindex: int, force_ownership: bool = False) -> bool:
        """Delete the clsact qdisc if it is ours (or ``force_ownership``) and no filter is left on it."""
        if ifindex not in self._our_qdiscs and not force_ownership:
            return False
        if any(self._clsact.filters(ifindex, d) for d in DIRECTIONS):
            return False
        if any(a.active and a.ifindex == ifindex and a.mode == "clsact" for a in self._attachments):
            return False
        self._clsact.del_qdisc(ifindex)
        self._our_qdiscs.discard(ifindex)
        return True

    def _alive(self, att: Attachment) -> bool:
        """Is this attachment of ours still in place (same interface, our program)? Call in the namespace."""
        if not att.active:
            return False
        if att.mode == "tcx":
            return tcx.link_alive(att.link_fd, att.ifindex)
        if _ifname_of(att.ifindex) != att.ifname:
            return False
        return any(
            (f.parent, f.info, f.handle, f.kind, f.prog_id) == (att.parent, att.info, att.handle, "bpf", att.prog_id)
            for f in self._clsact.filters(att.ifindex, att.direction)
        )

    # --- stale ------------------------------------------------------------------------------------------
    def remove_stale(self, iface: str | int, direction: str | None = None) -> int:
        """Remove programs of ours (by name prefix) that this attacher did not make, on one hook or on both
        (``direction=None``); returns how many were removed. See the package docstring."""
        directions = DIRECTIONS if direction is None else (direction,)
        with self._ns():
            ifindex, ifname = self._resolve(iface)
            removed = 0
            if self.pins is not None and self._tcx_supported():
                self._adopt_pinned(ifindex, ifname)  # pinned links of ours are not stale: they get the new program
            # TCX programs (only where the kernel has TCX; the query is the same whatever our mode is)
            if self._tcx_supported():
                removed += self._remove_stale_tcx(ifindex, ifname, directions)
            # cls_bpf filters (pyroute2 is imported only when there is a clsact qdisc to look into)
            try:
                has_qdisc = self._clsact.has_qdisc(ifindex)
            except OSError as e:
                raise self._wrap(e, "removing stale cls_bpf filters", ifname) from e
            if has_qdisc:
                from pyroute2.netlink.exceptions import NetlinkError

                try:
                    removed_filters = self._remove_stale_filters(ifindex, ifname, directions)
                    if removed_filters:
                        removed += removed_filters
                        if self._maybe_remove_qdisc(ifindex, force_ownership=True):
                            log.info("removed the now empty clsact qdisc of %s (left by an earlier run)", ifname)
                except NetlinkError as e:
                    raise self._wrap(e, "removing stale cls_bpf filters", ifname) from e
        return removed

    def _remove_stale_tcx(self, ifindex: int, ifname: str, directions: tuple[str, ...]) -> int:
        own_links = {a.link_id for a in self._attachments if a.active and a.mode == "tcx"}
        removed = 0
        for d in directions:
            try:
                entries = tcx.query(ifindex, d)
            except BpfError as e:
                raise self._wrap(e, "querying TCX programs", ifname) from e
            for prog_id, link_id in entries:
                if link_id and link_id in own_links:
                    continue
                name = _prog_name_by_id(prog_id)
                if not name.startswith(self.prefix):
                    continue
                try:
                    tcx.force_detach(ifindex, d, prog_id, link_id)
                except BpfError as e:
                    if e.errno in (_errno.ENOENT, _errno.ENOLINK):
                        continue  # went away meanwhile
                    raise self._wrap(e, f"removing stale TCX program {name}", ifname) from e
                removed += 1
                log.warning(
                    "removed stale TCX program %s (prog id %d, link id %d) from %s %s",
                    name, prog_id, link_id, ifname, d,
                )  # fmt: skip
        return removed

    def _remove_stale_filters(self, ifindex: int, ifname: str, directions: tuple[str, ...]) -> int:
        """Delete stale cls_bpf filters of ours; raises ``NetlinkError``."""
        from pyroute2.netlink.exceptions import NetlinkError

        own_filters = {
            (a.parent, a.priority, a.handle) for a in self._attachments if a.active and a.mode == "clsact" and a.ifindex == ifindex
        }
        if self.pins is not None:  # our slot: the next attach replaces its filter in place (no gap)
            own_filters |= {(CLSACT_PARENT[d], self.priority, self.handle) for d in directions}
        removed = 0
        for d in directions:
            for f in self._clsact.filters(ifindex, d):
                if f.kind != "bpf" or (f.parent, f.priority, f.handle) in own_filters:
                    continue
                kname = _prog_name_by_id(f.prog_id) if f.prog_id else ""
                if not (f.name.startswith(self.prefix) or kname.startswith(self.prefix)):
                    continue
                try:
                    self._clsact.del_filter(ifindex, f.parent, f.info, f.handle)
                except NetlinkError as e:
                    if e.code == _errno.ENOENT:
                        continue
                    raise
                removed += 1
                log.warning(
                    "removed stale cls_bpf filter %s (prio %d handle %#x, prog id %d) from %s %s",
                    f.name or kname, f.priority, f.handle, f.prog_id, ifname, d,
                )  # fmt: skip
        return removed

    # --- detach -----------------------------------------------------------------------------------------
    def detach(self, att: Attachment) -> None:
        """Undo one attachment (idempotent). A vanished interface counts as detached."""
        with self._lock:
            if not att.active:
                return
            if att.mode == "tcx":
                if self.pins is not None:
                    self.pins.unpin_link(att.ifindex, att.direction)
                try:
                    tcx.detach_link(att.link_fd)
                except BpfError as e:
                    if e.errno not in (_errno.ENOLINK, _errno.ENOENT, _errno.ENODEV, _errno.EINVAL):
                        raise self._wrap(e, f"detaching {att.prog_name}", att.ifname) from e
                finally:
                    os.close(att.link_fd)
                    att.link_fd = -1
                    att.active = False
            else:
                from pyroute2.netlink.exceptions import NetlinkError  # clsact only: a TCX agent never imports pyroute2

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
                                self._clsact.del_filter(att.ifindex, att.parent, att.info, att.handle)
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

    def release(self) -> None:
        """Stop holding our attachments. Without ``pins`` this is :meth:`detach_all`; with them, every TCX link
        stays attached (pinned) and every cls_bpf filter stays in place, for the next run to take over: only our
        fds are closed."""
        if self.pins is None:
            self.detach_all()
            return
        with self._lock:
            for att in self._attachments:
                if att.mode == "tcx" and att.link_fd >= 0:
                    os.close(att.link_fd)
                    att.link_fd = -1
                att.active = False
            kept = len(self._attachments)
            self._attachments = []
            self._our_qdiscs.clear()
        log.info("left %d attachment(s) in place for the next run (pins in %s)", kept, self.pins.dir)

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
                    for prog_id, _link_id in tcx.query(ifindex, direction):
                        out.append(AttachmentInfo("tcx", _prog_name_by_id(prog_id), prog_id))
                for f in self._clsact.filters(ifindex, direction):
                    if f.kind == "bpf":
                        out.append(AttachmentInfo("clsact", f.name or _prog_name_by_id(f.prog_id), f.prog_id))
            except Exception as e:
                if isinstance(e, AttachError):
                    raise
                raise self._wrap(e, "listing attachments", ifname) from e
        return out
