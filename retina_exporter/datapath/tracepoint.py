"""Read a tracepoint's ``format`` file from tracefs: its id, the record's fields (offset, size, signedness, C type)
and the symbolic names of ``__print_symbolic`` arguments in its ``print fmt`` (the kernel's drop-reason names).

The record layout of ``skb:kfree_skb`` changed over kernel versions (``reason`` appeared in 5.17, ``rx_sk`` in
6.11 moved ``protocol`` and ``reason``), so the BPF program gets the offsets from here instead of from headers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from retina_exporter.errors import StartupError

DEFAULT_TRACEFS = "/sys/kernel/tracing"

_FIELD_RE = re.compile(
    r"^\s*field:(?P<decl>[^;]+);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>-?\d+);"
)
_SYMBOLIC_RE = re.compile(r"__print_symbolic\(\s*REC->(?P<field>\w+)\s*,(?P<body>.*?)\)\s*(?:,|$)", re.S)
_PAIR_RE = re.compile(r"\{\s*(?P<value>-?(?:0x[0-9a-fA-F]+|\d+))\s*,\s*\"(?P<name>[^\"]*)\"\s*\}")


@dataclass(frozen=True)
class TpField:
    name: str
    ctype: str  # the declaration without the name, e.g. "enum skb_drop_reason", "void *"
    offset: int
    size: int
    signed: bool


@dataclass
class TracepointFormat:
    system: str
    event: str
    id: int
    fields: dict[str, TpField] = field(default_factory=dict)
    print_fmt: str = ""
    path: str = ""

    def field(self, name: str) -> TpField:
        try:
            return self.fields[name]
        except KeyError:
            have = ", ".join(self.fields) or "none"
            raise TracepointMissing(
                f"tracepoint {self.system}:{self.event} ({self.path}) has no field {name!r} (fields: {have}); "
                "this kernel is too old for dropreason (skb:kfree_skb gained 'reason' in Linux 5.17)"
            ) from None

    def symbolic(self, field_name: str) -> dict[int, str]:
        """``{value: name}`` from ``__print_symbolic(REC->field_name, {v, "NAME"}, ...)`` in the print format."""
        for m in _SYMBOLIC_RE.finditer(self.print_fmt):
            if m.group("field") == field_name:
                return {int(p.group("value"), 0): p.group("name") for p in _PAIR_RE.finditer(m.group("body"))}
        return {}


def parse_format(text: str, system: str = "", event: str = "", path: str = "") -> TracepointFormat:
    tp_id = -1
    fields: dict[str, TpField] = {}
    print_fmt = ""
    for line in text.splitlines():
        if line.startswith("ID:"):
            tp_id = int(line.split(":", 1)[1])
            continue
        if line.startswith("print fmt:"):
            print_fmt = line.split(":", 1)[1].strip()
            continue
        m = _FIELD_RE.match(line)
        if not m:
            continue
        decl = m.group("decl").strip()
        # "unsigned short common_type", "void * skbaddr", "char name[16]", "__data_loc char[] name"
        decl_noarray = re.sub(r"\[[^\]]*\]\s*$", "", decl)
        name_m = re.search(r"(\w+)\s*$", decl_noarray)
        if not name_m:
            continue
        name = name_m.group(1)
        ctype = decl_noarray[: name_m.start()].strip()
        fields[name] = TpField(name, ctype, int(m.group("offset")), int(m.group("size")), m.group("signed") == "1")
    if tp_id < 0:
        raise StartupError(f"tracepoint format {path or '(text)'} has no ID line")
    return TracepointFormat(system, event, tp_id, fields, print_fmt, path)


def field_defines(fmt: TracepointFormat, prefix: str, fields: Iterable[tuple[str, str, int]], *, plugin: str,
                  hint: str = "") -> dict[str, int]:
    """``{prefix + suffix: byte offset}`` of ``fields`` (``(suffix, field name, size in bytes)``) in the record, for
    the program's ``-D`` defines. :class:`StartupError` naming ``plugin``, the tracepoint and the field when one is
    missing or has another size (``hint``: what the operator can do)."""
    out = {}
    for suffix, name, size in fields:
        f = fmt.fields.get(name)
        if f is None or f.size != size:
            found = "it has none" if f is None else f"it is {f.size} bytes"
            raise StartupError(f"{plugin}: tracepoint {fmt.system}:{fmt.event} ({fmt.path}) has no {size}-byte "
                               f"field {name!r} ({found})" + (f"; {hint}" if hint else ""))
        out[prefix + suffix] = f.offset
    return out


class TracepointMissing(RuntimeError):
    """The kernel has no such tracepoint (tracefs is mounted, the event is not there). Not a StartupError: the
    agent keeps its other plugins, and /readyz names this one's failure."""


def read_format(system: str, event: str, tracefs: str = DEFAULT_TRACEFS, *, plugin: str = "dropreason",
                missing_hint: str = "dropreason needs CONFIG_TRACEPOINTS and Linux >= 5.17 for drop reasons",
                ) -> TracepointFormat:
    """Parse ``<tracefs>/events/<system>/<event>/format`` for ``plugin`` (named in the messages).

    Raises :class:`StartupError` when tracefs is not mounted at ``tracefs`` (the operator must mount it) and
    :class:`TracepointMissing` (ending with ``missing_hint`` when given) when it is but the kernel lacks the
    tracepoint."""
    path = Path(tracefs) / "events" / system / event / "format"
    try:
        text = path.read_text()
    except FileNotFoundError:
        if not (Path(tracefs) / "events").is_dir():
            raise StartupError(
                f"{plugin} cannot attach to {system}:{event}: tracefs is not mounted at {tracefs} (no events/ "
                f"directory); mount it ('mount -t tracefs tracefs {tracefs}') or give the agent the host's "
                "/sys/kernel/tracing"
            ) from None
        hint = f"; {missing_hint}" if missing_hint else ""
        raise TracepointMissing(
            f"{plugin} cannot attach: this kernel has no tracepoint {system}:{event} ({path} is missing){hint}"
        ) from None
    except PermissionError as exc:
        raise StartupError(f"{plugin} cannot read {path}: {exc.strerror}; run the agent as root") from None
    return parse_format(text, system, event, str(path))
