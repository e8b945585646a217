"""The ``dropReason`` config section (owned by the dropreason plugin)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from retina_core.settings import Invalid, Key, Section, choice, str_list

__all__ = ["DROP_REASON_SECTION", "DropReasonConfig"]

#: Reasons that are not drops (routine frees): see :mod:`.reasons`.
DEFAULT_IGNORED = ("NOT_DROPPED_YET", "CONSUMED", "NOT_SPECIFIED")


@dataclass(frozen=True)
class DropReasonConfig:
    scope: str = "all"
    """``all`` network namespaces (host and pods) or ``node`` (this namespace and its pods' only)."""
    ignore_reasons: tuple[str, ...] = DEFAULT_IGNORED
    """Kernel reasons that are not counted as drops."""


def _reason_names(value: Any) -> tuple[str, ...]:
    out = []
    for item in str_list(value):
        name = item.upper().removeprefix("SKB_DROP_REASON_")
        if not re.fullmatch(r"[A-Z0-9_]+", name):
            raise Invalid(f"{item!r} is not a reason name")
        out.append(name)
    return tuple(dict.fromkeys(out))


DROP_REASON_SECTION = Section("dropReason", DropReasonConfig, (
    Key("scope", "scope", choice("all", "node"), "all, node"),
    Key("ignoreReasons", "ignore_reasons", _reason_names,
        "a list of kernel drop reason names (e.g. NOT_SPECIFIED), with or without the SKB_DROP_REASON_ prefix"),
))
