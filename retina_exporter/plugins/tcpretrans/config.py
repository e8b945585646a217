"""The ``tcpRetrans`` config section (owned by the tcpretrans plugin)."""

from __future__ import annotations

from dataclasses import dataclass

from retina_core.settings import Key, Section, choice

__all__ = ["TCP_RETRANS_SECTION", "TcpRetransConfig"]


@dataclass(frozen=True)
class TcpRetransConfig:
    scope: str = "all"
    """``all`` network namespaces or ``node`` (this namespace and its pods' only)."""


TCP_RETRANS_SECTION = Section("tcpRetrans", TcpRetransConfig, (
    Key("scope", "scope", choice("all", "node"), "all, node"),
))
