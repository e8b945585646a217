"""A small DNS message encoder: queries and responses with A, AAAA, CNAME and raw records, with name compression.

Used by the tests' DNS server and client and by the parser's fuzz corpus; it is not on the agent's path.
"""

from __future__ import annotations

import socket
import struct
from typing import Iterable, NamedTuple

from retina_core.dns.names import TYPE_A, TYPE_AAAA, TYPE_CNAME, type_number
from retina_core.dns.parser import parse

__all__ = ["RR", "build_query", "build_response", "encode_name", "NameWriter", "with_tcp_prefix"]

CLASS_IN = 1


class RR(NamedTuple):
    """An answer record to encode. ``data``: an address (A/AAAA), a name (CNAME) or raw RDATA bytes."""

    name: str
    rtype: int | str
    ttl: int
    data: str | bytes


def _labels(name: str) -> list[bytes]:
    name = name.rstrip(".")
    if not name:
        return []
    labels = [label.encode() for label in name.split(".")]
    for label in labels:
        if not 0 < len(label) <= 63:
            raise ValueError(f"label {label!r} of {name!r} must be 1..63 octets")
    return labels


def encode_name(name: str) -> bytes:
    """Uncompressed wire form of ``name`` (``"example.com"`` or ``"example.com."``)."""
    return b"".join(bytes([len(label)]) + label for label in _labels(name)) + b"\x00"


class NameWriter:
    """Appends names to a message under construction, compressing suffixes already written (RFC 1035 4.1.4)."""

    def __init__(self, buf: bytearray, compress: bool = True) -> None:
        self.buf = buf
        self.compress = compress
        self.offsets: dict[tuple[bytes, ...], int] = {}

    def write(self, name: str) -> None:
        labels = [label.lower() for label in _labels(name)]
        raw = _labels(name)
        for i in range(len(labels)):
            suffix = tuple(labels[i:])
            if self.compress and suffix in self.offsets:
                self.buf += struct.pack("!H", 0xC000 | self.offsets[suffix])
                return
            if len(self.buf) < 0x4000:
                self.offsets.setdefault(suffix, len(self.buf))
            self.buf += bytes([len(raw[i])]) + raw[i]
        self.buf += b"\x00"


def _rtype(t: int | str) -> int:
    return t if isinstance(t, int) else type_number(t)


def build_query(name: str, qtype: int | str = TYPE_A, msg_id: int = 0x1234, rd: bool = True,
                extra_questions: Iterable[tuple[str, int | str]] = ()) -> bytes:
    """A standard query for ``name``/``qtype`` (class IN), plus optional further questions."""
    questions = [(name, _rtype(qtype))] + [(n, _rtype(t)) for n, t in extra_questions]
    flags = 0x0100 if rd else 0
    buf = bytearray(struct.pack("!HHHHHH", msg_id, flags, len(questions), 0, 0, 0))
    writer = NameWriter(buf)
    for qname, qt in questions:
        writer.write(qname)
        buf += struct.pack("!HH", qt, CLASS_IN)
    return bytes(buf)


def _rdata(rr: RR, rtype: int, writer: NameWriter, buf: bytearray) -> None:
    """Append RDLENGTH and RDATA (CNAME targets are compressed against the message)."""
    if isinstance(rr.data, bytes):
        buf += struct.pack("!H", len(rr.data)) + rr.data
    elif rtype == TYPE_A:
        buf += struct.pack("!H", 4) + socket.inet_pton(socket.AF_INET, rr.data)
    elif rtype == TYPE_AAAA:
        buf += struct.pack("!H", 16) + socket.inet_pton(socket.AF_INET6, rr.data)
    elif rtype == TYPE_CNAME:
        at = len(buf)
        buf += b"\x00\x00"
        writer.write(rr.data)
        struct.pack_into("!H", buf, at, len(buf) - at - 2)
    else:
        raise ValueError(f"give RDATA of type {rr.rtype} as bytes")


def build_response(query: bytes, answers: Iterable[RR] = (), rcode: int = 0, aa: bool = True, ra: bool = True,
                   compress: bool = True, msg_id: int | None = None) -> bytes:
    """A response to ``query`` (its id, RD bit and questions copied) with ``answers`` and ``rcode``."""
    q = parse(query)
    answers = list(answers)
    flags = 0x8000 | (q.flags & 0x7900) | (0x0400 if aa else 0) | (0x0080 if ra else 0) | (rcode & 0xF)
    buf = bytearray(struct.pack("!HHHHHH", q.id if msg_id is None else msg_id, flags, len(q.questions),
                                len(answers), 0, 0))
    writer = NameWriter(buf, compress=compress)
    for question in q.questions:
        writer.write(question.name)
        buf += struct.pack("!HH", question.qtype, question.qclass)
    for rr in answers:
        rtype = _rtype(rr.rtype)
        writer.write(rr.name)
        buf += struct.pack("!HHI", rtype, CLASS_IN, rr.ttl)
        _rdata(rr, rtype, writer, buf)
    return bytes(buf)


def with_tcp_prefix(message: bytes) -> bytes:
    """The message framed for DNS over TCP (2-byte length prefix)."""
    return struct.pack("!H", len(message)) + message
