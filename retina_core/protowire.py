"""Protocol-buffer wire primitives for the few places that write protobuf bytes directly instead of through
message objects (a flow's ``extensions`` Struct, pre-framed IP-cache updates): varints and length-delimited
fields. Encoding through the protobuf API costs several microseconds per message where these cost a few hundred
nanoseconds (see :mod:`retina_core.convert`); ``google.protobuf.internal`` has the same helpers but is not a public
API. Wire format: https://protobuf.dev/programming-guides/encoding/ (base-128 varints, little-endian groups).
"""

from __future__ import annotations

__all__ = ["length_delimited", "read_varint", "tag", "varint", "varint_len"]

_SMALL = tuple(
    bytes([i]) if i < 0x80 else bytes([(i & 0x7F) | 0x80, i >> 7]) for i in range(1 << 14)
)  # every value below 16 KiB, the common length prefixes


def varint(n: int) -> bytes:
    """The base-128 varint of a non-negative integer (one byte per 7 bits, least significant group first)."""
    if n < 16384:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def varint_len(n: int) -> int:
    """How many bytes :func:`varint` writes for ``n``."""
    return max(1, (n.bit_length() + 6) // 7)


def tag(field: int, wire_type: int) -> bytes:
    """A field key: ``(field number << 3) | wire type`` as a varint (wire type 2 = length-delimited)."""
    return varint((field << 3) | wire_type)


def length_delimited(field: int, payload: bytes) -> bytes:
    """A length-delimited field (bytes, string, embedded message)."""
    return tag(field, 2) + varint(len(payload)) + payload


def read_varint(buf: bytes, i: int) -> tuple[int, int]:
    """Decode the varint at ``buf[i:]``: ``(value, index after it)``; ``ValueError`` when truncated."""
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7
