"""Units and the configuration error every layer raises: durations (Go syntax, integer nanoseconds) and
:class:`ConfigError`.

Durations are integer nanoseconds everywhere in the code (``*_ns`` names); they are parsed from and rendered to
Go's ``time.Duration`` text (``"30s"``, ``"1m30s"``, ``"500ms"``) at the configuration edge only.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

__all__ = ["NS_PER_S", "ConfigError", "format_duration", "parse_duration", "show_value"]

NS_PER_S = 1_000_000_000
_NS_PER_S = NS_PER_S
_MAX_DURATION_NS = 2**63 - 1  # Go's time.Duration range


class ConfigError(ValueError):
    """Invalid configuration. ``str(error)`` is one line, fit to print before exiting with status 2."""


def show_value(value: Any, limit: int = 80) -> str:
    """A one-line rendering of a value for error messages (strings quoted, YAML spelling for booleans/null)."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_show = show_value




_DURATION_UNITS_NS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC Greek mu
    "ms": 1_000_000,
    "s": _NS_PER_S,
    "m": 60 * _NS_PER_S,
    "h": 3600 * _NS_PER_S,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"({_NUMBER})(ns|us|µs|μs|ms|s|m|h)")
_DURATION_FULL = re.compile(rf"(?:{_NUMBER}(?:ns|us|µs|μs|ms|s|m|h))+")
_SECONDS_ONLY = re.compile(_NUMBER)


def parse_duration(text: str | int | float) -> int:
    """Parse a duration and return it in integer nanoseconds (sub-nanosecond fractions are truncated).

    Accepts Go ``time.ParseDuration`` syntax without a sign (``"500ms"``, ``"30s"``, ``"1m30s"``, ``"1.5h"``;
    units ns, us/µs, ms, s, m, h) or a plain number of **seconds** (``30``, ``"2.5"``). Raises
    :class:`ConfigError` for anything else, including negative values.
    """
    if isinstance(text, bool):
        raise ConfigError(f"invalid duration {_show(text)}: expected e.g. '30s', '1m30s', '500ms' or seconds")
    if isinstance(text, (int, float)):
        if text < 0 or not math.isfinite(text):
            raise ConfigError(f"invalid duration {_show(text)}: must be a non-negative number of seconds")
        seconds = Decimal(text) if isinstance(text, int) else Decimal(repr(text))
        total = int(seconds * _NS_PER_S)
    elif isinstance(text, str):
        s = text.strip()
        if _SECONDS_ONLY.fullmatch(s):
            total = int(Decimal(s) * _NS_PER_S)
        elif _DURATION_FULL.fullmatch(s):
            total = int(
                sum(Decimal(num) * _DURATION_UNITS_NS[unit] for num, unit in _DURATION_PART.findall(s))
            )
        else:
            raise ConfigError(
                f"invalid duration {_show(text)}: expected e.g. '30s', '1m30s', '500ms' "
                "(units ns, us, ms, s, m, h) or a number of seconds"
            )
    else:
        raise ConfigError(f"invalid duration {_show(text)}: expected a string or a number of seconds")
    if total > _MAX_DURATION_NS:
        raise ConfigError(f"invalid duration {_show(text)}: longer than the maximum of {_MAX_DURATION_NS}ns")
    return total


def format_duration(ns: int) -> str:
    """Render integer nanoseconds compactly in a form :func:`parse_duration` reads back: ``"1m30s"``, ``"500ms"``."""
    if ns == 0:
        return "0s"
    if ns < _NS_PER_S:
        for unit, size in (("ms", 1_000_000), ("us", 1_000)):
            if ns % size == 0:
                return f"{ns // size}{unit}"
        return f"{ns}ns"
    whole, frac = divmod(ns, _NS_PER_S)
    hours, rest = divmod(whole, 3600)
    minutes, seconds = divmod(rest, 60)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    if frac:
        out += f"{seconds}.{frac:09d}".rstrip("0") + "s"
    elif seconds:
        out += f"{seconds}s"
    return out
