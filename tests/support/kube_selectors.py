"""Label selectors, field selectors and patch formats as the Kubernetes API server implements them.

Used by :mod:`tests.support.kube_api_server`. Sources of truth (semantics, not code):

* label selectors: k8s.io/apimachinery/pkg/labels (selector.go): comma-separated requirements ANDed together;
  ``k``, ``!k``, ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k>n``, ``k<n``. ``!=`` and
  ``notin`` also match objects *without* the key.
* field selectors: k8s.io/apimachinery/pkg/fields (selector.go): ``f=v``, ``f==v``, ``f!=v`` ANDed with commas,
  ``\\`` escapes ``,``, ``=``, ``!`` and ``\\`` in values; only the fields each resource registers are accepted
  (``field label not supported: <f>`` otherwise).
* JSON merge patch: RFC 7386. JSON patch: RFC 6902.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SelectorError", "PatchError", "parse_label_selector", "parse_field_selector", "merge_patch",
           "json_patch"]


class SelectorError(ValueError):
    """A selector does not parse; ``str()`` is the message the API server sends (400 BadRequest)."""


class PatchError(ValueError):
    """A patch cannot be applied; ``code`` is the HTTP status the API server answers with."""

    def __init__(self, message: str, code: int = 422) -> None:
        super().__init__(message)
        self.code = code


# -- label selectors ---------------------------------------------------------------------------------------------

_KEY_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
_TOKEN = re.compile(r"\s*(\(|\)|,|==|=|!=|!|>|<|[^\s(),=!<>]+)")


def _check_key(key: str) -> None:
    prefix, _, name = key.rpartition("/")
    if (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))) or not _KEY_NAME.match(name or ""):
        raise SelectorError(f"unable to parse requirement: invalid label key {key!r}: name part must consist of "
                            "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
                            "character")


def _check_value(value: str) -> None:
    if len(value) > 63 or not _VALUE.match(value):
        raise SelectorError(f"unable to parse requirement: invalid label value: {value!r}: a valid label must be "
                            "an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start "
                            "and end with an alphanumeric character")


def parse_label_selector(text: str | None) -> Callable[[Mapping[str, str]], bool]:
    """A predicate over a labels mapping; raises :class:`SelectorError`. Empty/None selects everything."""
    if not text or not text.strip():
        return lambda labels: True
    tokens = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if text[pos:].strip() == "":
                break
            raise SelectorError(f"unable to parse requirement: unexpected character at {pos} in {text!r}")
        tokens.append(m.group(1))
        pos = m.end()
    reqs: list[Callable[[Mapping[str, str]], bool]] = []
    i = 0

    def expect_value(j: int) -> tuple[str, int]:
        if j < len(tokens) and tokens[j] not in ("(", ")", ",", "=", "==", "!=", "!", ">", "<"):
            _check_value(tokens[j])
            return tokens[j], j + 1
        return "", j  # "k=" selects the empty value

    while i < len(tokens):
        tok = tokens[i]
        if tok == "!":
            if i + 1 >= len(tokens):
                raise SelectorError("unable to parse requirement: found '', expected: identifier")
            key = tokens[i + 1]
            _check_key(key)
            reqs.append(lambda L, k=key: k not in L)
            i += 2
        else:
            key = tok
            if key in ("(", ")", ",", "=", "==", "!=", ">", "<"):
                raise SelectorError(f"unable to parse requirement: found '{key}', expected: !, identifier, or "
                                    "'end of string'")
            _check_key(key)
            op = tokens[i + 1] if i + 1 < len(tokens) else ","
            if op == ",":
                reqs.append(lambda L, k=key: k in L)
                i += 1
            elif op in ("=", "==", "!="):
                value, i = expect_value(i + 2)
                if op == "!=":
                    reqs.append(lambda L, k=key, v=value: L.get(k) != v)
                else:
                    reqs.append(lambda L, k=key, v=value: k in L and L[k] == v)
            elif op in (">", "<"):
                if i + 2 >= len(tokens):
                    raise SelectorError("unable to parse requirement: found '', expected: integer value")
                try:
                    num = int(tokens[i + 2])
                except ValueError:
                    raise SelectorError(f"unable to parse requirement: for 'gt', 'lt' operators, the value must be "
                                        f"an integer: {tokens[i + 2]!r}") from None

                def cmp(L: Mapping[str, str], k: str = key, n: int = num, gt: bool = op == ">") -> bool:
                    try:
                        have = int(L[k])
                    except (KeyError, ValueError):
                        return False
                    return have > n if gt else have < n

                reqs.append(cmp)
                i += 3
            elif op in ("in", "notin"):
                if i + 2 >= len(tokens) or tokens[i + 2] != "(":
                    raise SelectorError("unable to parse requirement: found '', expected: '('")
                j = i + 3
                values: set[str] = set()
                while True:
                    if j >= len(tokens):
                        raise SelectorError("unable to parse requirement: found '', expected: ')'")
                    if tokens[j] == ")":
                        j += 1
                        break
                    if tokens[j] == ",":
                        j += 1
                        continue
                    _check_value(tokens[j])
                    values.add(tokens[j])
                    j += 1
                if not values:
                    raise SelectorError(f"unable to parse requirement: for 'in', 'notin' operators, values set "
                                        f"can't be empty")
                if op == "in":
                    reqs.append(lambda L, k=key, vs=frozenset(values): L.get(k) in vs)
                else:
                    reqs.append(lambda L, k=key, vs=frozenset(values): L.get(k) not in vs)
                i = j
            else:
                raise SelectorError(f"unable to parse requirement: found '{op}', expected: in, notin, =, ==, !=, "
                                    "gt, lt")
        if i < len(tokens):
            if tokens[i] != ",":
                raise SelectorError(f"unable to parse requirement: found '{tokens[i]}', expected: ',' or "
                                    "'end of string'")
            i += 1
    return lambda labels: all(r(labels) for r in reqs)


# -- field selectors ---------------------------------------------------------------------------------------------


def _split_unescaped(text: str, sep: str) -> list[str]:
    out, cur, esc = [], [], False
    for ch in text:
        if esc:
            cur.append("\\" + ch)
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == sep:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def _unescape(text: str) -> str:
    out, esc = [], False
    for ch in text:
        if esc:
            if ch not in ",=!\\":
                raise SelectorError(f"invalid field selector: invalid escape sequence: \\{ch}")
            out.append(ch)
            esc = False
        elif ch == "\\":
            esc = True
        else:
            out.append(ch)
    return "".join(out)


def parse_field_selector(text: str | None, supported: Mapping[str, Callable[[Mapping[str, Any]], str]]
                         ) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate over an object; ``supported`` maps field labels to getters returning the field as text.

    Raises :class:`SelectorError` with the API server's messages for syntax errors and unsupported fields.
    """
    if not text or not text.strip():
        return lambda obj: True
    reqs: list[tuple[Callable[[Mapping[str, Any]], str], bool, str]] = []
    for part in _split_unescaped(text, ","):
        part = part.strip()
        if not part:
            continue
        for op in ("!=", "==", "="):
            idx = part.find(op)
            if idx > 0:
                field, value = part[:idx].strip(), part[idx + len(op):]
                break
        else:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
        getter = supported.get(field)
        if getter is None:
            raise SelectorError(f"field label not supported: {field}")
        reqs.append((getter, op == "!=", _unescape(value)))

    def match(obj: Mapping[str, Any]) -> bool:
        for getter, negate, value in reqs:
            if (getter(obj) == value) == negate:
                return False
        return True

    return match


# -- patches -----------------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: a new value, ``target`` untouched. ``null`` deletes, lists are replaced."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"json patch: invalid path {path!r}", 422)
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> tuple[Any, str]:
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            raise PatchError(f"jsonpatch: path {'/' + '/'.join(parts)!r} does not exist", 422)
    return cur, parts[-1]


def _get(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for p in parts:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            raise PatchError(f"jsonpatch: path {'/' + '/'.join(parts)!r} does not exist", 422)
    return cur


def _remove(doc: Any, parts: list[str]) -> Any:
    parent, last = _parent(doc, parts)
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise PatchError(f"jsonpatch remove operation does not apply: doc is missing path: {'/' + '/'.join(parts)}", 422)


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent, last = _parent(doc, parts)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise PatchError(f"jsonpatch add operation does not apply: index {last} out of range", 422)
    else:
        raise PatchError("jsonpatch add operation does not apply: parent is not a container", 422)
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test): a new value, ``target`` untouched."""
    if not isinstance(ops, list):
        raise PatchError("json patch must be a list of operations", 400)
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"json patch: malformed operation {op!r}", 400)
        kind, parts = op["op"], _pointer(op["path"])
        if kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(doc, parts)
        elif kind == "replace":
            _get(doc, parts)
            if not parts:
                doc = copy.deepcopy(op.get("value"))
            else:
                parent, last = _parent(doc, parts)
                if isinstance(parent, list):
                    parent[int(last)] = copy.deepcopy(op.get("value"))
                else:
                    parent[last] = copy.deepcopy(op.get("value"))
        elif kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            value = _remove(doc, src) if kind == "move" else copy.deepcopy(_get(doc, src))
            doc = _add(doc, parts, value)
        elif kind == "test":
            if _get(doc, parts) != op.get("value"):
                raise PatchError(f"testing value {op['path']} failed", 422)
        else:
            raise PatchError(f"Unexpected kind: {kind}", 400)
    return doc
