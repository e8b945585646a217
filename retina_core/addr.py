"""IP addresses between their two forms: packed network-order bytes (4 for IPv4, 16 for IPv6, as kernel events and
flow records carry them) and text (``socket.inet_ntop``: dotted quad, RFC 5952 compressed lower-case IPv6)."""

from __future__ import annotations

import socket

__all__ = ["ip_bytes", "ip_text", "ip_text_cached"]

_FAMILY_BY_LEN = {4: socket.AF_INET, 16: socket.AF_INET6}


def ip_bytes(text: str) -> bytes:
    """Packed network-order bytes (4 or 16) of an IPv4 or IPv6 address in text form; raises ``ValueError``."""
    try:
        return socket.inet_pton(socket.AF_INET, text)
    except OSError:
        pass
    try:
        return socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        raise ValueError(f"{text!r} is not an IP address") from None


def ip_text(packed: bytes) -> str:
    """Text form of packed address bytes (4 -> IPv4, 16 -> IPv6); raises ``ValueError`` for other lengths."""
    family = _FAMILY_BY_LEN.get(len(packed))
    if family is None:
        raise ValueError(f"packed address must be 4 or 16 bytes, not {len(packed)}")
    return socket.inet_ntop(family, packed)


_TEXT_CACHE: dict[bytes, str] = {}
_TEXT_CACHE_MAX = 65536


def ip_text_cached(packed: bytes, default: str = "") -> str:
    """:func:`ip_text` through a bounded process-wide cache (a per-record path: one dict lookup on a hit);
    ``default`` for a length that is no address."""
    text = _TEXT_CACHE.get(packed)
    if text is None:
        family = _FAMILY_BY_LEN.get(len(packed))
        if family is None:
            return default
        text = socket.inet_ntop(family, packed)
        if len(_TEXT_CACHE) >= _TEXT_CACHE_MAX:
            _TEXT_CACHE.clear()
        _TEXT_CACHE[packed] = text
    return text
