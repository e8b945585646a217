"""The metric catalog (``metrics_catalog.yaml``) and the checks built on it.

* :func:`load` reads the catalog: metric names, types, labels, closed value sets.
* :func:`analyze` / :func:`check_expr`: a small PromQL tokenizer that finds every metric name, label matcher,
  grouping label (``by``/``without``/``on``/``ignoring``/``group_*``) and ``label_replace``/``label_join`` label of
  an expression, and checks them against the catalog (promtool checks the syntax; this checks the names).
* :func:`substitute`: Grafana variables (``$cluster``, ``${node}``, ``$__rate_interval`` ...) replaced by
  regex-safe values, so that a panel's expression can be parsed or run.
* :func:`verify_exposition`: a running agent's ``/metrics`` text against the catalog (every family it serves must
  be in the catalog, with that type and labels).

A ``histogram`` entry names the family; queries use its series ``<name>_bucket`` (with ``le``), ``<name>_sum`` and
``<name>_count``, all monotonic. An entry with ``pending: <reason>`` is documented ahead of the code that emits
it (dashboards may use it; it is not required in an agent's output).

Command line::

    python -m dashboards.catalog --verify http://127.0.0.1:10093/metrics   # catalog vs a live agent
    python -m dashboards.catalog --check 'sum by (reason) (rate(networkobservability_drop_count[5m]))'
    python -m dashboards.catalog --list
"""

from __future__ import annotations

import argparse
import re
import sys
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

import yaml

HERE = Path(__file__).resolve().parent
CATALOG_PATH = HERE / "metrics_catalog.yaml"

TYPES = ("gauge", "counter", "histogram")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
LEVELS = ("node", "pod", "controlplane", "prometheus")

#: Functions that only make sense on monotonic series (counters and Retina's monotonic gauges).
RATE_FUNCS = frozenset({"rate", "irate", "increase", "resets"})
GROUPING_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"bool", "offset", "and", "or", "unless", "atan2", "inf", "nan"})
AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                          "bottomk", "topk", "quantile", "limitk", "limit_ratio"})

#: Values substituted for Grafana variables when a panel's expression is parsed or run outside Grafana: every
#: label variable matches everything (as the dashboards' "All"), the interval variables get fixed durations.
TEST_VARIABLES = {
    "cluster": ".*",
    "node": ".*",
    "job": ".*",
    "namespace": ".*",
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "1h",
}


# ----------------------------------------------------------------------------------------------------------------
# The catalog


@dataclass(frozen=True)
class Metric:
    name: str
    type: str
    monotonic: bool
    level: str
    source: str
    labels: tuple[str, ...]
    context: bool = False
    optional_labels: tuple[str, ...] = ()
    values: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)
    help: str = ""
    pending: str = ""


class CatalogError(ValueError):
    pass


class Catalog:
    def __init__(self, data: dict) -> None:
        try:
            self.scrape_labels = tuple(data["scrape_labels"])
            ctx = data["context"]
            self.local_context = tuple(ctx["local"])
            self.remote_prefixes = tuple(ctx["remote_prefixes"])
            self.pod_label_prefix = ctx["pod_label_prefix"]
            entries = data["metrics"]
        except (KeyError, TypeError) as exc:
            raise CatalogError(f"catalog: missing key {exc}") from exc
        self.metrics: dict[str, Metric] = {}
        known = {"name", "type", "monotonic", "level", "source", "labels", "context", "optional_labels", "values",
                 "examples", "help", "pending"}
        for i, e in enumerate(entries):
            where = f"catalog metrics[{i}] ({e.get('name', '?')})"
            unknown = set(e) - known
            if unknown:
                raise CatalogError(f"{where}: unknown keys {sorted(unknown)}")
            for key in ("name", "type", "monotonic", "level", "source", "labels"):
                if key not in e:
                    raise CatalogError(f"{where}: missing {key}")
            if e["type"] not in TYPES:
                raise CatalogError(f"{where}: type must be one of {TYPES}")
            if e["level"] not in LEVELS:
                raise CatalogError(f"{where}: level must be one of {LEVELS}")
            if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e["name"]):
                raise CatalogError(f"{where}: invalid metric name")
            if e["name"] in self.metrics:
                raise CatalogError(f"{where}: duplicate")
            values = {k: tuple(str(x) for x in v) for k, v in (e.get("values") or {}).items()}
            labels = tuple(e["labels"])
            optional = tuple(e.get("optional_labels") or ())
            for k in values:
                if k not in labels and k not in optional:
                    raise CatalogError(f"{where}: values for {k!r}, which is not one of its labels")
            self.metrics[e["name"]] = Metric(
                name=e["name"], type=e["type"], monotonic=bool(e["monotonic"]), level=e["level"],
                source=e["source"], labels=labels, context=bool(e.get("context", False)), optional_labels=optional,
                values=values, examples=dict(e.get("examples") or {}), help=e.get("help", ""),
                pending=str(e.get("pending") or ""))
        self.series: dict[str, Metric] = {}
        """Every series name a query may use: the metrics, a histogram's _bucket/_sum/_count instead of its name."""
        for m in self.metrics.values():
            if m.type != "histogram":
                self.series[m.name] = m
                continue
            for suffix in HISTOGRAM_SUFFIXES:
                self.series[m.name + suffix] = replace(
                    m, name=m.name + suffix, type="counter", monotonic=True,
                    labels=m.labels + (("le",) if suffix == "_bucket" else ()))

    def __contains__(self, name: str) -> bool:
        return name in self.series

    def __getitem__(self, name: str) -> Metric:
        """A series name's entry (a histogram's _bucket/_sum/_count), or a family's (a histogram's own name)."""
        m = self.series.get(name)
        return m if m is not None else self.metrics[name]

    def names(self) -> list[str]:
        return list(self.series)

    def is_context_label(self, label: str) -> bool:
        """A label the MetricsConfiguration's context options can give an adv metric."""
        for prefix in ("",) + self.remote_prefixes:
            if not label.startswith(prefix):
                continue
            rest = label[len(prefix):]
            if rest in self.local_context or (rest.startswith(self.pod_label_prefix)
                                               and len(rest) > len(self.pod_label_prefix)):
                return True
        return False

    def label_allowed(self, metric: str, label: str) -> bool:
        if label == "__name__" or label in self.scrape_labels:
            return True
        m = self.series.get(metric)
        if m is None:
            return False
        if label in m.labels or label in m.optional_labels:
            return True
        return m.context and self.is_context_label(label)

    def closed_values(self, metric: str, label: str) -> tuple[str, ...] | None:
        m = self.series.get(metric)
        return None if m is None else m.values.get(label)


def load(path: str | Path = CATALOG_PATH) -> Catalog:
    with open(path) as f:
        return Catalog(yaml.safe_load(f))


# ----------------------------------------------------------------------------------------------------------------
# Grafana variables


_VAR_RE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)|\[\[(\w+)(?::[\w]+)?\]\]")


def variables_in(expr: str) -> set[str]:
    """Grafana variable names used in ``expr`` (``$1``-style regex back-references excluded)."""
    out = set()
    for m in _VAR_RE.finditer(expr):
        name = m.group(1) or m.group(2) or m.group(3)
        if not name.isdigit():
            out.add(name)
    return out


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    """Replace Grafana variables by ``values`` (default :data:`TEST_VARIABLES`). Unknown variables raise
    KeyError; ``$1`` (label_replace back-references) is left alone."""
    values = TEST_VARIABLES if values is None else values

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name.isdigit():
            return m.group(0)
        if name not in values:
            raise KeyError(f"no test value for Grafana variable ${name}")
        return values[name]

    return _VAR_RE.sub(repl, expr)


# ----------------------------------------------------------------------------------------------------------------
# PromQL tokenizer and analysis


_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<dur>(?:\d+(?:ms|s|m|h|d|w|y))+)(?![A-Za-z0-9_:])
  | (?P<num>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_:]*|:[A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^=<>(){}\[\],@])
""", re.X)


class PromQLError(ValueError):
    pass


def tokenize(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if m is None:
            raise PromQLError(f"unexpected character {expr[pos]!r} at {pos} in {expr!r}")
        kind = m.lastgroup
        text = m.group(0)
        pos = m.end()
        if kind == "ws":
            continue
        if kind == "str":
            body = text[1:-1]
            text = body if text[0] == "`" else re.sub(r"\\(.)", r"\1", body)
        out.append((kind, text))
    return out


@dataclass
class Selector:
    metric: str | None  # None: named by __name__ matchers only
    matchers: list[tuple[str, str, str]]  # (label, op, value)
    rated: str | None  # the rate-like function it is directly under, if any


@dataclass
class Analysis:
    selectors: list[Selector] = field(default_factory=list)
    grouping: list[str] = field(default_factory=list)
    created: set[str] = field(default_factory=set)
    read_labels: list[str] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)

    @property
    def metric_names(self) -> list[str]:
        return [s.metric for s in self.selectors if s.metric]


class _Frame:
    __slots__ = ("func", "commas")

    def __init__(self, func: str | None) -> None:
        self.func = func
        self.commas = 0


def _parse_matchers(toks: list[tuple[str, str]], i: int) -> tuple[list[tuple[str, str, str]], int]:
    """``toks[i]`` is ``{``; returns the matchers and the index of the closing ``}``."""
    matchers = []
    i += 1
    while True:
        if i >= len(toks):
            raise PromQLError("unclosed {")
        kind, text = toks[i]
        if (kind, text) == ("op", "}"):
            return matchers, i
        if (kind, text) == ("op", ","):
            i += 1
            continue
        if kind not in ("ident", "str") or i + 2 >= len(toks):
            raise PromQLError(f"bad label matcher at {text!r}")
        op = toks[i + 1][1]
        vkind, value = toks[i + 2]
        if op not in ("=", "!=", "=~", "!~") or vkind != "str":
            raise PromQLError(f"bad label matcher {text}{op}{value}")
        matchers.append((text, op, value))
        i += 3


def analyze(expr: str) -> Analysis:
    """Metric selectors, grouping labels and label-function labels of a PromQL expression (no Grafana
    variables: :func:`substitute` first)."""
    toks = tokenize(expr)
    a = Analysis()
    stack: list[_Frame] = []
    i = 0
    n = len(toks)

    def innermost_func() -> str | None:
        for f in reversed(stack):
            if f.func is not None:
                return f.func
        return None

    while i < n:
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < n else ("", "")
        if kind == "op":
            if text == "(":
                stack.append(_Frame(None))
            elif text == ")":
                if not stack:
                    raise PromQLError("unbalanced )")
                stack.pop()
            elif text == ",":
                if stack:
                    stack[-1].commas += 1
            elif text == "[":
                while i < n and toks[i] != ("op", "]"):  # range or subquery: durations only
                    i += 1
            elif text == "{":
                matchers, i = _parse_matchers(toks, i)
                func = innermost_func()
                a.selectors.append(Selector(None, matchers, func if func in RATE_FUNCS else None))
        elif kind == "ident":
            low = text.lower()
            if low in GROUPING_KEYWORDS:
                if nxt == ("op", "("):
                    i += 2
                    while i < n and toks[i] != ("op", ")"):
                        k, t = toks[i]
                        if k in ("ident", "str"):
                            a.grouping.append(t)
                        elif (k, t) != ("op", ","):
                            raise PromQLError(f"bad label list after {text}: {t!r}")
                        i += 1
            elif nxt == ("op", "("):
                a.functions.append(text)
                stack.append(_Frame(text))
                i += 1
            elif low in KEYWORDS or (text in AGGREGATIONS and nxt[1].lower() in ("by", "without")):
                pass
            else:
                func = innermost_func()
                matchers: list[tuple[str, str, str]] = []
                if nxt == ("op", "{"):
                    matchers, i = _parse_matchers(toks, i + 1)
                a.selectors.append(Selector(text, matchers, func if func in RATE_FUNCS else None))
        elif kind == "str" and stack and stack[-1].func is not None:
            f = stack[-1]
            if f.func == "label_replace":
                if f.commas == 1:
                    a.created.add(text)
                elif f.commas == 3:
                    a.read_labels.append(text)
            elif f.func == "label_join":
                if f.commas == 1:
                    a.created.add(text)
                elif f.commas >= 3:
                    a.read_labels.append(text)
            elif f.func == "count_values" and f.commas == 0:
                a.created.add(text)
        i += 1
    if stack:
        raise PromQLError("unbalanced (")
    return a


_ALTERNATION = re.compile(r"[A-Za-z0-9_.,:-]+(?:\|[A-Za-z0-9_.,:-]+)*")


def _metrics_of(sel: Selector, catalog: Catalog) -> list[str]:
    if sel.metric is not None:
        return [sel.metric] if sel.metric in catalog else []
    names = catalog.names()
    for label, op, value in sel.matchers:
        if label != "__name__":
            continue
        if op == "=":
            names = [x for x in names if x == value]
        elif op == "!=":
            names = [x for x in names if x != value]
        elif op == "=~":
            names = [x for x in names if re.fullmatch(value, x)]
        else:
            names = [x for x in names if not re.fullmatch(value, x)]
    return names


def check_expr(expr: str, catalog: Catalog) -> list[str]:
    """Problems of one expression (Grafana variables already substituted): metric names not in the catalog, labels
    a metric does not have, values outside a closed set, rate() over a non-monotonic metric."""
    try:
        a = analyze(expr)
    except PromQLError as exc:
        return [f"cannot tokenize: {exc}"]
    errors: list[str] = []
    used: list[str] = []
    if not a.selectors:
        errors.append("no metric selector")
    for sel in a.selectors:
        shown = sel.metric or "{" + ",".join(f"{k}{o}{v!r}" for k, o, v in sel.matchers) + "}"
        if sel.metric is not None and sel.metric not in catalog:
            errors.append(f"metric {sel.metric} is not in the catalog")
            continue
        names = _metrics_of(sel, catalog)
        if not names:
            errors.append(f"selector {shown} matches no catalog metric")
            continue
        used += names
        for label, op, value in sel.matchers:
            if label == "__name__":
                continue
            if not any(catalog.label_allowed(m, label) for m in names):
                errors.append(f"{shown}: label {label!r} is not a label of {', '.join(names)}")
                continue
            for m in names:
                closed = catalog.closed_values(m, label)
                if closed is None or value == "":
                    continue
                if op in ("=", "!="):
                    wanted = [value]
                elif _ALTERNATION.fullmatch(value):
                    wanted = value.split("|")
                else:
                    continue
                bad = [v for v in wanted if v not in closed]
                if bad:
                    errors.append(f"{m}: {label} value(s) {bad} not in {list(closed)}")
        if sel.rated:
            for m in names:
                if not catalog[m].monotonic:
                    errors.append(f"{sel.rated}() over {m}, which is not monotonic (a level: use it as is)")
    for label in a.grouping + a.read_labels:
        if label == "__name__" or label in catalog.scrape_labels or label in a.created:
            continue
        if not any(catalog.label_allowed(m, label) for m in used):
            errors.append(f"label {label!r} (by/on/label_replace) is not a label of {', '.join(sorted(set(used)))}")
    return errors


# ----------------------------------------------------------------------------------------------------------------
# A running agent's /metrics against the catalog


_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> dict[str, dict]:
    """``{family: {"type": str, "samples": [(sample_name, {labels})]}}`` from the text format (0.0.4 or
    OpenMetrics; in OpenMetrics a counter's samples are named ``<family>_total``)."""
    fams: dict[str, dict] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, mtype = line.split(None, 3)
            fams.setdefault(name, {"type": mtype.strip(), "samples": []})
            continue
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if m is None:
            continue
        sample = m.group(1)
        base = sample
        if base not in fams:
            for suffix in ("_total", "_created", "_bucket", "_sum", "_count"):
                if sample.endswith(suffix) and sample[: -len(suffix)] in fams:
                    base = sample[: -len(suffix)]
                    break
        fam = fams.setdefault(base, {"type": "untyped", "samples": []})
        fam["samples"].append((sample, dict(_LABEL_RE.findall(m.group(3) or ""))))
    return fams


def verify_exposition(text: str, catalog: Catalog) -> tuple[list[str], list[str]]:
    """``(errors, not_seen)``: families the agent serves that the catalog lacks or describes differently, and
    catalog metrics the agent did not serve (expected when a plugin is off or an adv metric is not configured)."""
    fams = parse_exposition(text)
    errors: list[str] = []
    for name, fam in sorted(fams.items()):
        m = catalog.metrics.get(name)
        if m is None:
            errors.append(f"{name}: served by the agent, not in the catalog")
            continue
        if fam["type"] != m.type:
            errors.append(f"{name}: type {fam['type']} on /metrics, {m.type} in the catalog")
        for sample, labels in fam["samples"]:
            series = sample if sample in catalog.series else name  # a histogram's _bucket has le
            missing = [lbl for lbl in catalog[series].labels if lbl not in labels] if series in catalog else []
            extra = [lbl for lbl in labels if not catalog.label_allowed(series, lbl)]
            if missing or extra:
                errors.append(f"{name}: sample {sample}{labels}: missing labels {missing}, unknown labels {extra}")
                break
    not_seen = [n for n, m in catalog.metrics.items()
                if n not in fams and m.level != "prometheus" and not m.pending]
    return errors, not_seen


def _main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dashboards.catalog", description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", default=str(CATALOG_PATH))
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--verify", metavar="URL_OR_FILE", help="an agent's /metrics URL, or a file with its text")
    g.add_argument("--check", metavar="EXPR", help="check one PromQL expression (Grafana variables allowed)")
    g.add_argument("--list", action="store_true", help="list the catalog's metric names")
    args = ap.parse_args(list(argv) if argv is not None else None)
    catalog = load(args.catalog)
    if args.list:
        for m in catalog.metrics.values():
            print(f"{m.name}\t{m.type}\t{','.join(m.labels)}{' +context' if m.context else ''}")
        return 0
    if args.check:
        errors = check_expr(substitute(args.check), catalog)
        for e in errors:
            print(e)
        return 1 if errors else 0
    if args.verify.startswith(("http://", "https://")):
        req = urllib.request.Request(args.verify, headers={"Accept": "text/plain; version=0.0.4"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
    else:
        text = Path(args.verify).read_text()
    errors, not_seen = verify_exposition(text, catalog)
    for e in errors:
        print(f"ERROR {e}")
    for n in not_seen:
        print(f"not served: {n}")
    print(f"{len(errors)} error(s); {len(catalog.metrics) - len(not_seen) - 1} catalog metric(s) served, "
          f"{len(not_seen)} not served")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(_main())
