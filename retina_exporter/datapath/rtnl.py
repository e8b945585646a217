"""Links and qdiscs over rtnetlink, without pyroute2: a link dump (``RTM_GETLINK``), one link by index, a monitor
socket subscribed to ``RTMGRP_LINK``, and the qdiscs of a link (``RTM_GETQDISC``; ``get_attr("TCA_KIND")``).

Messages are parsed into :class:`LinkMessage`, the part of pyroute2's message interface the watchers use:
``msg.get("index")``, ``msg.get("event")`` (``"RTM_NEWLINK"``/``"RTM_DELLINK"``), ``msg.get_attr(name)`` for
``IFLA_IFNAME`` (str), ``IFLA_MASTER`` (int), ``IFLA_LINK_NETNSID`` (int, signed) and ``IFLA_LINKINFO`` (a nested
message whose ``get_attr("IFLA_INFO_KIND")`` is the link kind, e.g. ``"veth"``). Importing pyroute2 costs the
agent ~15 MiB of anonymous memory and ~0.3-0.9 s of start-up; these few messages need neither.

Wire format (host byte order): ``nlmsghdr`` = len u32, type u16, flags u16, seq u32, pid u32 (16 bytes);
``ifinfomsg`` = family u8, pad u8, type u16, index i32, flags u32, change u32 (16 bytes); then ``rtattr`` = len
u16, type u16, payload, each aligned to 4 bytes; ``tcmsg`` = family u8, 3 pad, ifindex i32, handle u32, parent u32,
info u32 (20 bytes). Sockets are opened in the calling thread's network namespace.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

__all__ = ["LinkMessage", "LinkMonitor", "RTMGRP_LINK", "get_link", "get_links", "get_qdiscs"]

NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWQDISC = 36
RTM_GETQDISC = 38
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
RTMGRP_LINK = 0x1

_EVENTS = {RTM_NEWLINK: "RTM_NEWLINK", RTM_DELLINK: "RTM_DELLINK"}
_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_TCMSG = struct.Struct("=BxxxiIII")
_TCA_KIND = 1
_RTATTR = struct.Struct("=HH")
_IFLA = {3: "IFLA_IFNAME", 10: "IFLA_MASTER", 18: "IFLA_LINKINFO", 37: "IFLA_LINK_NETNSID"}
_IFLA_INFO_KIND = 1
_RCVBUF = 16 << 20  # a burst of link events (hundreds of pods at once) must not overflow the monitor socket
SO_RCVBUFFORCE = 33  # asm-generic/socket.h (Python's socket module has no name for it)


class LinkMessage(dict):
    """``{"index", "event", "ifi_type", "flags"}`` plus the parsed attributes (see the module docstring)."""

    def __init__(self, fields: dict, attrs: dict) -> None:
        super().__init__(fields)
        self.attrs = attrs

    def get_attr(self, name: str):
        return self.attrs.get(name)


def _attrs(data: bytes | memoryview, start: int, end: int) -> Iterator[tuple[int, memoryview]]:
    view = memoryview(data)
    while start + 4 <= end:
        length, kind = _RTATTR.unpack_from(view, start)
        if length < 4 or start + length > end:
            break
        yield kind & 0x3FFF, view[start + 4:start + length]  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
        start += (length + 3) & ~3


def _text(payload: memoryview) -> str:
    return bytes(payload).split(b"\0", 1)[0].decode(errors="replace")


def _parse_link(data: bytes, offset: int, end: int, msg_type: int) -> LinkMessage:
    _family, ifi_type, index, flags, _change = _IFINFOMSG.unpack_from(data, offset)
    attrs: dict = {}
    for kind, payload in _attrs(data, offset + _IFINFOMSG.size, end):
        name = _IFLA.get(kind)
        if name == "IFLA_IFNAME":
            attrs[name] = _text(payload)
        elif name == "IFLA_MASTER" and len(payload) >= 4:
            attrs[name] = struct.unpack_from("=I", payload)[0]
        elif name == "IFLA_LINK_NETNSID" and len(payload) >= 4:
            attrs[name] = struct.unpack_from("=i", payload)[0]
        elif name == "IFLA_LINKINFO":
            info = {"IFLA_INFO_KIND": _text(p) for k, p in _attrs(payload, 0, len(payload)) if k == _IFLA_INFO_KIND}
            attrs[name] = LinkMessage({}, info)
    return LinkMessage({"index": index, "event": _EVENTS.get(msg_type), "ifi_type": ifi_type, "flags": flags},
                       attrs)


def _parse_qdisc(data: bytes, offset: int, end: int) -> LinkMessage:
    _family, ifindex, handle, parent, _info = _TCMSG.unpack_from(data, offset)
    kind = {"TCA_KIND": _text(p) for k, p in _attrs(data, offset + _TCMSG.size, end) if k == _TCA_KIND}
    return LinkMessage({"index": ifindex, "event": "RTM_NEWQDISC", "handle": handle, "parent": parent}, kind)


def parse(data: bytes) -> tuple[list[LinkMessage], bool]:
    """The link (and qdisc) messages in one datagram, and whether it ended a dump (``NLMSG_DONE``); an
    ``NLMSG_ERROR`` with an error code raises ``OSError``."""
    out = []
    done = False
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        body = offset + _NLMSGHDR.size
        if msg_type == NLMSG_DONE:
            done = True
        elif msg_type == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, body)
            if code:
                raise OSError(-code, os.strerror(-code))
            done = True  # an acknowledgement
        elif msg_type in _EVENTS and length >= _NLMSGHDR.size + _IFINFOMSG.size:
            out.append(_parse_link(data, body, offset + length, msg_type))
        elif msg_type == RTM_NEWQDISC and length >= _NLMSGHDR.size + _TCMSG.size:
            out.append(_parse_qdisc(data, body, offset + length))
        offset += (length + 3) & ~3
    return out, done


def _request(msg_type: int, body: bytes, dump: bool) -> list[LinkMessage]:
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5.0)
        sock.bind((0, 0))
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, 1, 0) + body)
        out: list[LinkMessage] = []
        while True:
            msgs, done = parse(sock.recv(1 << 16))
            out += msgs
            if done or (not dump and msgs):
                return out


def get_links() -> list[LinkMessage]:
    """Every link of the calling thread's network namespace."""
    return _request(RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0), dump=True)


def get_link(index: int) -> LinkMessage | None:
    """Link ``index``, or None when there is no such link."""
    try:
        links = _request(RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0), dump=False)
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.EINVAL):
            return None
        raise
    return links[0] if links else None


def get_qdiscs(ifindex: int) -> list[LinkMessage]:
    """The qdiscs of link ``ifindex`` (the kernel dumps every link's; the others are left out)."""
    msgs = _request(RTM_GETQDISC, _TCMSG.pack(socket.AF_UNSPEC, ifindex, 0, 0, 0), dump=True)
    return [m for m in msgs if m.get("index") == ifindex]


class LinkMonitor:
    """A netlink socket subscribed to ``RTMGRP_LINK``: :meth:`fileno` for ``select``, :meth:`get` reads what is
    there (one datagram; the kernel sends each event as its own) and raises ``OSError(ENOBUFS)`` when the kernel
    dropped events because the receive buffer was full; :meth:`drain` then discards what is still queued.

    ``rcvbuf``: receive buffer bytes, set with ``SO_RCVBUFFORCE`` (needs ``CAP_NET_ADMIN``; past
    ``net.core.rmem_max``), else ``SO_RCVBUF`` (capped by ``rmem_max``)."""

    def __init__(self, rcvbuf: int = _RCVBUF) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self._sock.bind((0, RTMGRP_LINK))
        except OSError:
            self._sock.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def get(self) -> list[LinkMessage]:
        return parse(self._sock.recv(1 << 16))[0]

    def drain(self) -> None:
        """Discard the queued events (a link dump that follows supersedes them). An empty queue is also what makes
        the kernel report the next overflow: while events stay queued after one, further drops go unreported."""
        while True:
            try:
                self._sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise

    def close(self) -> None:
        self._sock.close()
