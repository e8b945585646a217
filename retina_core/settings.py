"""The configuration-key toolkit every config section is declared with: value parsers, :class:`Key`,
:class:`Section`.

A section (``apiServer``, ``enrichment``, ``otlp``, ``dropReason`` …) is declared by the package that owns it:
its typed, frozen dataclass with the documented defaults, and one :class:`Key` per setting naming the file key,
the dataclass field, the value parser and what is accepted. The agent's loader (``retina_exporter.config``)
collects raw values from the YAML file and ``RETINA_*`` variables, and each section turns them into its object
**once** (:meth:`Section.parse`); components take that object.

Value parsers take a YAML value or an environment string and return the field value, or raise :class:`Invalid`
(with an optional reason); :meth:`Section.parse` turns that into a one-line :class:`~retina_core.units.ConfigError`
naming the dotted key, the value, where it came from and what is accepted.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from retina_core.units import ConfigError, format_duration, parse_duration, show_value

__all__ = [
    "Invalid", "Key", "Section", "abs_path", "boolean", "choice", "duration_at_least", "env_var_name",
    "flow_filter_list", "flow_filters", "int_range", "integer", "optional_text", "path_or_empty", "str_list",
    "str_list_tuple", "text",
]

BOOL_ACCEPTED = "true, false (also 1/0, yes/no)"


class Invalid(Exception):
    """A value was rejected; ``args[0]`` is an optional reason shown before the accepted values."""


_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        t = value.strip().lower()
        if t in _TRUE:
            return True
        if t in _FALSE:
            return False
    raise Invalid(None)


def integer(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value.strip())
    raise Invalid("not an integer")


def int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        number = integer(value)
        if not low <= number <= high:
            raise Invalid("out of range")
        return number

    return parse


def choice(*choices: str, aliases: Mapping[str, str] | None = None) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if isinstance(value, str):
            t = value.strip().lower()
            t = (aliases or {}).get(t, t)
            if t in choices:
                return t
        raise Invalid(None)

    return parse


def duration_at_least(minimum_ns: int) -> Callable[[Any], int]:
    """A duration (Go syntax or seconds) of at least ``minimum_ns``, as integer nanoseconds."""

    def parse(value: Any) -> int:
        try:
            ns = parse_duration(value)
        except ConfigError:
            raise Invalid("not a duration") from None
        if ns < minimum_ns:
            raise Invalid(f"below the minimum of {format_duration(minimum_ns)}")
        return ns

    return parse


def text(value: Any) -> str:
    """A non-empty string (a YAML integer is taken as its digits, e.g. a numeric node name)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise Invalid(None)


def optional_text(value: Any) -> str:
    """A string, or empty for ``""``/null."""
    return "" if value in ("", None) else text(value)


def abs_path(value: Any) -> str:
    path = text(value)
    if not path.startswith("/"):
        raise Invalid("not an absolute path")
    return path


def path_or_empty(value: Any) -> str:
    if value in ("", None):
        return ""
    return abs_path(value) if str(value).startswith("/") else text(value)


def str_list(value: Any) -> list[str]:
    """A YAML list of strings, or a comma-separated string (environment, or viper-style in the file); stripped,
    empty items and duplicates dropped, order kept."""
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, list):
        items = value
    else:
        raise Invalid("not a list")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise Invalid(f"item {show_value(item)} is not a string")
        item = item.strip()
        if item and item not in out:
            out.append(item)
    return out


def str_list_tuple(value: Any) -> tuple[str, ...]:
    """A non-empty :func:`str_list` as a tuple."""
    items = tuple(str_list(value))
    if not items:
        raise Invalid("empty list")
    return items


def flow_filter_list(value: Any) -> tuple[str, ...]:
    """A list of Hubble FlowFilters: mappings in protojson (``{"source_pod": ["lab/"]}`` or camelCase), or one JSON
    string holding such a list (or one mapping) -> canonical protojson texts (hashable, for frozen config objects;
    :func:`flow_filters` turns them back into messages). Raises :class:`Invalid` for what is not a FlowFilter
    message; the values (IPs, regexes, ports ...) are the filter compiler's to check."""
    import json

    from google.protobuf import json_format

    from retina_core.proto import flow_pb2

    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            raise Invalid("not a JSON list of FlowFilters") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise Invalid("not a list of FlowFilters")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise Invalid(f"item {i} is not a mapping")
        try:
            ff = json_format.ParseDict(item, flow_pb2.FlowFilter())
        except json_format.ParseError as exc:
            raise Invalid(f"item {i}: {' '.join(str(exc).split())}") from None  # protobuf's has 2 lines
        out.append(json.dumps(json_format.MessageToDict(ff, preserving_proto_field_name=True), sort_keys=True))
    return tuple(out)


def flow_filters(texts: tuple[str, ...]) -> list[Any]:
    """The ``flow.FlowFilter`` messages of :func:`flow_filter_list`'s texts."""
    import json

    from google.protobuf import json_format

    from retina_core.proto import flow_pb2

    return [json_format.ParseDict(json.loads(s), flow_pb2.FlowFilter()) for s in texts]


def env_var_name(key: str) -> str:
    """The environment variable that overrides ``key``: ``apiServer.port`` → ``RETINA_APISERVER_PORT``."""
    return "RETINA_" + key.upper().replace(".", "_")


@dataclass(frozen=True)
class Key:
    """One setting: ``name`` as written in the file (the leaf name inside a section), the dataclass field
    ``attr``, its parser, what is accepted (for the error message) and, for ``to_dict``, how to render the
    value back (default: tuples become lists)."""

    name: str
    attr: str
    parse: Callable[[Any], Any]
    accepted: str
    render: Callable[[Any], Any] | None = None


RawValues = Mapping[str, tuple[Any, str]]  # dotted key -> (value, where it came from)


@dataclass(frozen=True)
class Section:
    """A config section: its name in the file (``""`` for top-level keys), the frozen dataclass it parses into,
    its keys, and an optional ``check(obj)`` for rules across keys (raises ``ConfigError``)."""

    name: str
    factory: type
    keys: tuple[Key, ...]
    check: Callable[[Any], None] | None = None

    def dotted(self, key: Key) -> str:
        return f"{self.name}.{key.name}" if self.name else key.name

    def dotted_names(self) -> tuple[str, ...]:
        return tuple(self.dotted(k) for k in self.keys)

    def parse(self, raw: RawValues, **extra: Any) -> Any:
        """The section object from the raw values of its dotted keys (absent or null: the default). ``extra``
        sets fields that are not keys (e.g. ``warnings``)."""
        values: dict[str, Any] = dict(extra)
        for key in self.keys:
            name = self.dotted(key)
            if name not in raw or raw[name][0] is None:
                continue
            value, source = raw[name]
            try:
                values[key.attr] = key.parse(value)
            except Invalid as exc:
                reason = f": {exc.args[0]}" if exc.args and exc.args[0] else ""
                raise ConfigError(
                    f"{name}: invalid value {show_value(value)} {source}{reason}; accepted: {key.accepted}"
                ) from None
        obj = self.factory(**values)
        if self.check is not None:
            self.check(obj)
        return obj

    def to_dict(self, obj: Any) -> dict[str, Any]:
        """The object's values under the file's key names (durations as text, tuples as lists); a dotted key name
        (``tls.certFile``) is nested as in the file (``{"tls": {"certFile": ...}}``)."""
        out: dict[str, Any] = {}
        for key in self.keys:
            value = getattr(obj, key.attr)
            if key.render is not None:
                value = key.render(value)
            elif isinstance(value, tuple):
                value = list(value)
            *groups, leaf = key.name.split(".")
            target = out
            for group in groups:
                target = target.setdefault(group, {})
            target[leaf] = value
        return out

    def defaults(self) -> Any:
        return self.factory()

    def replace(self, obj: Any, **changes: Any) -> Any:
        return dataclasses.replace(obj, **changes)
