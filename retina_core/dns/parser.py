"""A defensive DNS message parser (RFC 1035 wire format) for captured, possibly hostile, possibly cut-off payloads.

What is parsed: the 12-byte header, every question (name, type, class), and the answer section: A and AAAA
addresses, CNAME targets, and every other type skipped by its RDLENGTH. The authority and additional sections
are not walked (nothing we report comes from them; EDNS0's extended RCODE bits are therefore not applied).

Names: labels are read with compression pointers (RFC 1035 4.1.4) anywhere in the message, under three limits
that together bound the work per name to a few hundred steps whatever the input:

* at most :data:`MAX_POINTERS` (126) pointers followed per name -- a pointer loop (a pointer to itself, or two
  pointers to each other) ends here with ``reason="compression_loop"``;
* at most 255 octets of name in wire form (RFC 1035 2.3.4: length octets, labels and the root octet) --
  ``"name_too_long"``; a loop that adds labels ends here;
* label type bits ``01`` and ``10`` (obsolete extended labels, reserved) are rejected -- ``"bad_label_type"``
  (with ``00`` a label is at most 63 octets by construction).

Names are returned as text in presentation form with the trailing dot (``"example.com."``; the root is
``"."``), ASCII letters lower-cased (DNS names compare case-insensitively; resolvers that randomise case
would otherwise multiply metric series). Bytes outside letters, digits, ``-`` and ``_`` are escaped as in zone
files: ``\\.`` for a dot inside a label, ``\\DDD`` (decimal) for anything else that is not printable ASCII.

Captures: a payload may be cut off by the capture (the agent keeps at most 512 bytes of each message). Pass
``wire_len`` (the message's length on the wire) when it is known: if it is larger than the buffer, running out
of bytes after the first question is *not* an error; the message comes back with ``complete=False`` and the
answers read so far. The header and the first question must always be present.

Errors: anything malformed raises :class:`ParseError` with a short machine-readable ``reason`` (one of
:data:`REASONS`). No other exception escapes :func:`parse` (``tests/test_dns_parser.py`` fuzzes it), and the
work is linear in the buffer size.
"""

from __future__ import annotations

import socket
import struct

__all__ = [
    "MAX_NAME_OCTETS",
    "MAX_POINTERS",
    "REASONS",
    "Answer",
    "Message",
    "ParseError",
    "Question",
    "parse",
    "read_name",
    "split_tcp_stream",
]

MAX_NAME_OCTETS = 255
MAX_POINTERS = 126  # (255 + 1) / 2 - 2: more pointers than a loop-free 255-octet name can need
HEADER_LEN = 12

REASONS = (
    "short_header",  # fewer than 12 bytes
    "truncated",  # the message ends inside a question or a record
    "name_too_long",  # more than 255 octets in wire form
    "bad_label_type",  # label type bits 01 or 10
    "compression_loop",  # more than MAX_POINTERS pointers in one name
    "bad_pointer",  # a pointer past the end of a complete message
    "bad_rdata",  # A/AAAA with the wrong RDLENGTH, a CNAME target that does not fill its RDATA
    "bad_length",  # TCP length prefix of 0, or shorter than a header
)

_HEADER = struct.Struct("!HHHHHH")
_QTAIL = struct.Struct("!HH")
_RRTAIL = struct.Struct("!HHIH")
_inet_ntop = socket.inet_ntop
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6


class ParseError(ValueError):
    """A malformed or cut-off message. ``reason`` is one of :data:`REASONS`; ``offset`` where it was found."""

    def __init__(self, reason: str, detail: str = "", offset: int = -1) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.offset = offset


class _Short(Exception):
    """Internal: the buffer ended (turned into ParseError("truncated") unless the capture was cut)."""


# Bytes that appear in a label's text unchanged (lower-cased for A-Z): letters, digits, '-', '_'.
_SAFE = bytes(range(0x30, 0x3A)) + bytes(range(0x41, 0x5B)) + bytes(range(0x61, 0x7B)) + b"-_"
_LOWER = bytes.maketrans(bytes(range(0x41, 0x5B)), bytes(range(0x61, 0x7B)))


def _escape_byte(b: int) -> str:
    if b == 0x2E or b == 0x5C:  # '.', '\'
        return "\\" + chr(b)
    if 0x41 <= b <= 0x5A:
        return chr(b + 0x20)
    if 0x21 <= b <= 0x7E and chr(b) not in "\"()@;$":
        return chr(b)
    return f"\\{b:03d}"


_ESCAPED = tuple(_escape_byte(b) for b in range(256))


def _label_text(label: bytes) -> str:
    if not label.translate(None, _SAFE):
        return label.translate(_LOWER).decode("ascii")
    return "".join([_ESCAPED[b] for b in label])


def read_name(buf: bytes, off: int, partial: bool = False) -> tuple[str, int]:
    """Read the (possibly compressed) name at ``off``; return its text and the offset just after it in the
    original position (after the first pointer, if any). Raises :class:`ParseError`, or ``_Short`` (internal)
    when the buffer ends and ``partial``."""
    n = len(buf)
    labels: list[str] = []
    octets = 1  # the root octet
    pointers = 0
    after = -1
    pos = off
    while True:
        if pos >= n:
            raise _Short
        length = buf[pos]
        kind = length & 0xC0
        if kind == 0:
            if length == 0:
                if after < 0:
                    after = pos + 1
                break
            octets += length + 1
            if octets > MAX_NAME_OCTETS:
                raise ParseError("name_too_long", f"name at offset {off} exceeds {MAX_NAME_OCTETS} octets", off)
            end = pos + 1 + length
            if end > n:
                raise _Short
            labels.append(_label_text(buf[pos + 1:end]))
            pos = end
        elif kind == 0xC0:
            if pos + 1 >= n:
                raise _Short
            if after < 0:
                after = pos + 2
            pointers += 1
            if pointers > MAX_POINTERS:
                raise ParseError("compression_loop", f"more than {MAX_POINTERS} pointers in the name at {off}", off)
            target = ((length & 0x3F) << 8) | buf[pos + 1]
            if target >= n:
                if partial:
                    raise _Short
                raise ParseError("bad_pointer", f"pointer to {target} past the message end ({n})", pos)
            pos = target
        else:
            raise ParseError("bad_label_type", f"label type {kind >> 6:02b} at offset {pos}", pos)
    if not labels:
        return ".", after
    return ".".join(labels) + ".", after


class Question:
    __slots__ = ("name", "qtype", "qclass")

    def __init__(self, name: str, qtype: int, qclass: int) -> None:
        self.name = name
        self.qtype = qtype
        self.qclass = qclass

    def __repr__(self) -> str:
        return f"Question({self.name!r}, {self.qtype}, {self.qclass})"


class Answer:
    """An answer-section record. ``data``: the address text (A, AAAA), the target name (CNAME), else None."""

    __slots__ = ("name", "rtype", "rclass", "ttl", "data")

    def __init__(self, name: str, rtype: int, rclass: int, ttl: int, data: str | None) -> None:
        self.name = name
        self.rtype = rtype
        self.rclass = rclass
        self.ttl = ttl
        self.data = data

    def __repr__(self) -> str:
        return f"Answer({self.name!r}, {self.rtype}, {self.rclass}, {self.ttl}, {self.data!r})"


class Message:
    __slots__ = ("id", "flags", "qdcount", "ancount", "nscount", "arcount", "questions", "answers", "complete")

    def __init__(self, id: int, flags: int, qdcount: int, ancount: int, nscount: int, arcount: int) -> None:  # noqa: A002
        self.id = id
        self.flags = flags
        self.qdcount = qdcount
        self.ancount = ancount
        self.nscount = nscount
        self.arcount = arcount
        self.questions: list[Question] = []
        self.answers: list[Answer] = []
        self.complete = True

    @property
    def qr(self) -> bool:
        """True for a response."""
        return bool(self.flags & 0x8000)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def aa(self) -> bool:
        return bool(self.flags & 0x0400)

    @property
    def tc(self) -> bool:
        return bool(self.flags & 0x0200)

    @property
    def rd(self) -> bool:
        return bool(self.flags & 0x0100)

    @property
    def ra(self) -> bool:
        return bool(self.flags & 0x0080)

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    def __repr__(self) -> str:
        return (f"Message(id={self.id}, qr={self.qr}, rcode={self.rcode}, questions={self.questions}, "
                f"answers={self.answers}, complete={self.complete})")


def parse(buf: bytes, wire_len: int | None = None) -> Message:
    """Parse one DNS message (no TCP length prefix). See the module docstring for limits and ``wire_len``."""
    n = len(buf)
    if n < HEADER_LEN:
        raise ParseError("short_header", f"{n} bytes, a header needs {HEADER_LEN}", 0)
    partial = wire_len is not None and wire_len > n
    msg = Message(*_HEADER.unpack_from(buf, 0))
    off = HEADER_LEN
    questions = msg.questions
    try:
        for _ in range(msg.qdcount):
            name, off = read_name(buf, off, partial)
            if off + 4 > n:
                raise _Short
            qtype, qclass = _QTAIL.unpack_from(buf, off)
            off += 4
            questions.append(Question(name, qtype, qclass))
        answers = msg.answers
        for _ in range(msg.ancount):
            name, off = read_name(buf, off, partial)
            if off + 10 > n:
                raise _Short
            rtype, rclass, ttl, rdlen = _RRTAIL.unpack_from(buf, off)
            off += 10
            end = off + rdlen
            if end > n:
                raise _Short
            if rtype == 1:
                if rdlen != 4:
                    raise ParseError("bad_rdata", f"A record with RDLENGTH {rdlen}", off)
                data: str | None = _inet_ntop(_AF_INET, buf[off:end])
            elif rtype == 28:
                if rdlen != 16:
                    raise ParseError("bad_rdata", f"AAAA record with RDLENGTH {rdlen}", off)
                data = _inet_ntop(_AF_INET6, buf[off:end])
            elif rtype == 5:
                # The target may point anywhere in the message, but must itself end where the RDATA ends.
                data, after = read_name(buf, off, partial)
                if after != end:
                    raise ParseError("bad_rdata", f"CNAME target ends at {after}, its RDATA at {end}", off)
            else:
                data = None
            answers.append(Answer(name, rtype, rclass, ttl, data))
            off = end
    except _Short:
        if not partial or (msg.qdcount and not questions):
            raise ParseError("truncated", f"message ends at {n} bytes inside a question or record", n) from None
        msg.complete = False
    return msg


def split_tcp_stream(payload: bytes, stream_len: int | None = None) -> tuple[list[tuple[bytes, int]], int | None]:
    """Split a piece of a DNS-over-TCP stream that starts on a message boundary (RFC 1035 4.2.2: each message
    preceded by a 2-byte length) into ``[(message bytes, wire length), ...]``.

    ``payload`` holds the captured bytes; ``stream_len`` is how many stream bytes the piece really has (a
    capture may keep fewer; default ``len(payload)``). A message cut off by either end comes back with the bytes
    present and its full length, so that :func:`parse` reads what is there.

    Also returns the offset, from the start of ``payload``, at which the next message begins: at or beyond
    ``stream_len`` when it lies in a later piece, ``None`` when it cannot be known (a length prefix that was not
    captured, or that is split between two pieces). A length prefix shorter than a DNS header (including 0)
    raises ``ParseError("bad_length")``."""
    n = len(payload)
    total = n if stream_len is None or stream_len < n else stream_len
    out: list[tuple[bytes, int]] = []
    off = 0
    while off < total:
        if off + 2 > n:
            return out, None
        length = (payload[off] << 8) | payload[off + 1]
        if length < HEADER_LEN:
            raise ParseError("bad_length", f"TCP length prefix {length} at {off}", off)
        start = off + 2
        off = start + length
        out.append((payload[start:off], length))
    return out, off
