"""Property-based tests (hypothesis) of the user-space parsers under hostile input (issue 15).

For the DNS parser, the agent configuration (file + ``RETINA_*`` environment), the enrichment inventory, the
MetricsConfiguration spec, Hubble FlowFilters (compiler, CLI-flag builder, ``/debug/flows`` query) and the HTTP
query parameters ``last``/``since``, every property says the same three things:

* a clear error: the documented exception (``ParseError``, ``ConfigError``, ``InventoryError``, ``FilterError``,
  ``ValueError`` for a 400) with a one-line message that names the key / field / parameter;
* never any other exception (no IndexError, KeyError, TypeError, RecursionError, OverflowError ...);
* never a half-applied change (an inventory file that turns bad keeps the cache's last good snapshot; a rejected
  ``metricsConfiguration`` reload keeps the running one),

plus the round trips that exist (DNS encoder -> parser, ``Config.to_dict`` -> ``load_config``,
``MetricsConfiguration.to_dict`` -> ``parse_metrics_configuration``).

Inputs are both structured (valid documents, then one mutation) and raw (bytes, text, arbitrary YAML trees).
Runs are derandomized with a bounded number of examples so that ``make test`` stays quick; set
``HYPOTHESIS_PROFILE=long`` for a longer, randomized search.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import struct
import types
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from retina_core.proto import ensure_generated

ensure_generated()

from enricher.inventory import Inventory, InventoryError, InventorySource, parse_inventory, parse_inventory_text  # noqa: E402,E501
from enricher.ipcache import IPCache  # noqa: E402
from retina_core.dns.encoder import RR, build_query, build_response, encode_name, with_tcp_prefix  # noqa: E402
from retina_core.dns.parser import MAX_NAME_OCTETS, REASONS, Message, ParseError, parse, split_tcp_stream  # noqa: E402
from retina_core.identity import Identity  # noqa: E402
from retina_core.metricsconfig import (  # noqa: E402
    ACCEPTED_CONTEXT_LABELS,
    ACCEPTED_METRIC_NAMES,
    MetricsConfiguration,
    parse_metrics_configuration,
)
from retina_core.proto import flow_pb2  # noqa: E402
from retina_core.record import FlowRecord  # noqa: E402
from retina_core.units import ConfigError, format_duration  # noqa: E402
from retina_exporter import config as config_module  # noqa: E402
from retina_exporter.agent import Agent  # noqa: E402
from retina_exporter.config import KNOWN_PLUGINS, Config, env_var_name, load_config  # noqa: E402
from retina_exporter.hubble.filters import (  # noqa: E402
    QUERY_FLAGS,
    FilterBuilder,
    FilterError,
    FlowMatcher,
    compile_filter,
    filter_from_query,
)
from retina_exporter.server.http import parse_last, parse_since  # noqa: E402

# --- settings ------------------------------------------------------------------------------------------------------

_COMMON = dict(deadline=None, database=None, print_blob=False,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                      HealthCheck.function_scoped_fixture])
_PROFILES = {
    # make test: fixed examples (derandomized), a bounded number per property
    "default": settings(max_examples=60, derandomize=True, **_COMMON),
    # HYPOTHESIS_PROFILE=long: a randomized search, ~17x the examples (about 6 minutes)
    "long": settings(max_examples=1000, derandomize=False, **_COMMON),
}
PROFILE = _PROFILES.get(os.environ.get("HYPOTHESIS_PROFILE", "default"), _PROFILES["default"])


def examples(factor: float) -> settings:
    """The profile with ``factor`` times its examples (cheap properties run more, file-writing ones fewer)."""
    return settings(PROFILE, max_examples=max(10, int(PROFILE.max_examples * factor)))


def one_line(message: str) -> None:
    assert message and "\n" not in message and "\r" not in message, repr(message)


# --- generic hostile values ------------------------------------------------------------------------------------------

NASTY_TEXT = st.sampled_from(["", " ", "0", "-1", "1e400", "inf", "nan", "true", "off", "null", "~", "[]", "{}",
                              "a,b", ",", "/", "//", "a/b/c", "10.0.0.1", "::1", "10.0.0.0/33", "1s", "-5s",
                              "9" * 30, "\x00", "é", "\u202e", "a\nb", "*", "(", "k in (", "\\"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-3, 70000),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), NASTY_TEXT)


def trees(keys: st.SearchStrategy | None = None, max_leaves: int = 12) -> st.SearchStrategy:
    """JSON/YAML-like values: scalars, lists and mappings (keys: ``keys``, text, or sometimes integers)."""
    key = st.one_of(st.text(max_size=8), st.integers(-2, 2)) if keys is None else st.one_of(keys, st.text(max_size=8))
    return st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(key, inner, max_size=4),
                        max_leaves=max_leaves)


def deep_yaml(n: int, kind: int) -> str:
    """Deeply nested YAML (flow sequences, flow mappings, block mappings)."""
    if kind == 0:
        return "[" * n + "]" * n
    if kind == 1:
        return "a: " + "{a: " * n + "1" + "}" * n
    return "".join(" " * i + "a:\n" for i in range(min(n, 400))) + " " * min(n, 400) + "b: 1\n"


DEEP_YAML = st.builds(deep_yaml, st.integers(1, 3000), st.integers(0, 2))


def dump(value) -> str:
    return yaml.safe_dump(value, allow_unicode=True, sort_keys=False)


# =====================================================================================================================
# DNS parser
# =====================================================================================================================

LABEL = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=12),
    st.text(alphabet="abcxyz019-", min_size=50, max_size=63),
)
NAME = st.lists(LABEL, max_size=6).map(".".join).filter(lambda n: len(encode_name(n)) <= MAX_NAME_OCTETS)
OTHER_TYPE = st.integers(0, 65535).filter(lambda t: t not in (1, 5, 28))


def name_text(name: str) -> str:
    return name.lower() + "." if name else "."


@st.composite
def answer_rrs(draw, names: list[str]):
    owner = draw(st.sampled_from(names) | NAME)
    ttl = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return RR(owner, 1, ttl, str(draw(st.ip_addresses(v=4))))
    if kind == 1:
        return RR(owner, 28, ttl, str(draw(st.ip_addresses(v=6))))
    if kind == 2:
        return RR(owner, 5, ttl, draw(st.sampled_from(names) | NAME))
    return RR(owner, draw(OTHER_TYPE), ttl, draw(st.binary(max_size=40)))


@st.composite
def dns_exchanges(draw):
    """(query bytes, response bytes, the query's questions, the answers, parameters) from the encoder."""
    qname = draw(NAME)
    qtype = draw(st.integers(0, 65535))
    extra = draw(st.lists(st.tuples(NAME, st.integers(0, 65535)), max_size=2))
    msg_id = draw(st.integers(0, 65535))
    rd = draw(st.booleans())
    query = build_query(qname, qtype, msg_id=msg_id, rd=rd, extra_questions=extra)
    names = [qname] + [n for n, _ in extra]
    answers = draw(st.lists(answer_rrs(names), max_size=6))
    params = dict(rcode=draw(st.integers(0, 15)), aa=draw(st.booleans()), ra=draw(st.booleans()),
                  compress=draw(st.booleans()))
    response = build_response(query, answers, **params)
    return query, response, [(qname, qtype)] + extra, answers, params, msg_id, rd


def check_parsed_or_error(buf: bytes, wire_len: int | None = None) -> Message | None:
    """The parser's contract on any input: a Message, or a ParseError with a known reason and a one-line message."""
    try:
        msg = parse(buf, wire_len)
    except ParseError as exc:
        assert exc.reason in REASONS, exc.reason
        assert str(exc).startswith(exc.reason)
        assert isinstance(exc.offset, int)
        one_line(str(exc))
        return None
    assert isinstance(msg, Message)
    assert len(msg.questions) <= msg.qdcount and len(msg.answers) <= msg.ancount
    for q in msg.questions:
        assert q.name.endswith(".") and len(q.name) <= 4 * MAX_NAME_OCTETS
    if msg.complete:
        assert len(msg.questions) == msg.qdcount and len(msg.answers) == msg.ancount
    return msg


@examples(2)
@given(st.binary(max_size=600), st.none() | st.integers(0, 2000))
@example(b"\x00" * 12, None)
@example(b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01", None)  # pointer to itself
@example(b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0e\xc0\x0c", None)  # two pointers, a loop
@example(b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\xff", 5000)  # pointer past a cut capture
def test_dns_parse_raw_bytes(buf, wire_len):
    check_parsed_or_error(buf, wire_len)


@st.composite
def hostile_names(draw):
    """A header with one question whose name is a chain of labels, pointers (anywhere, incl. loops) and bad label
    types, then random tail bytes."""
    header = struct.pack("!HHHHHH", draw(st.integers(0, 65535)), draw(st.integers(0, 65535)),
                         draw(st.integers(1, 3)), draw(st.integers(0, 3)), 0, 0)
    body = bytearray()
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.integers(0, 4))
        if kind <= 1:
            label = draw(st.binary(min_size=1, max_size=63))
            body += bytes([len(label)]) + label
        elif kind == 2:
            body += struct.pack("!H", 0xC000 | draw(st.integers(0, 12 + len(body) + 4)))
        elif kind == 3:
            body += bytes([draw(st.sampled_from([0x40, 0x80])) | draw(st.integers(0, 63))])
        else:
            body += b"\x00" + draw(st.binary(min_size=4, max_size=14))
    return header + bytes(body) + draw(st.binary(max_size=30))


@examples(2)
@given(hostile_names(), st.none() | st.integers(0, 3000))
def test_dns_parse_hostile_names(buf, wire_len):
    check_parsed_or_error(buf, wire_len)


def unescape(text: str) -> list[bytes]:
    """Presentation-form name -> its labels (escapes ``\\.``, ``\\\\``, ``\\DDD`` undone)."""
    if text == ".":
        return []
    assert text.endswith(".")
    labels, cur, i = [], bytearray(), 0
    body = text[:-1]
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            if body[i + 1].isdigit():
                cur.append(int(body[i + 1:i + 4]))
                i += 4
            else:
                cur += body[i + 1].encode()
                i += 2
        elif ch == ".":
            labels.append(bytes(cur))
            cur = bytearray()
            i += 1
        else:
            cur += ch.encode("ascii")
            i += 1
    labels.append(bytes(cur))
    return labels


@examples(2)
@given(st.lists(st.binary(min_size=1, max_size=63), max_size=5).filter(lambda ls: sum(len(x) + 1 for x in ls) < 255))
def test_dns_name_escaping_round_trips_any_label_bytes(labels):
    wire = b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"
    buf = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + wire + b"\x00\x01\x00\x01"
    msg = parse(buf)
    text = msg.questions[0].name
    assert all(0x21 <= ord(c) <= 0x7E for c in text)  # printable ASCII only: safe in labels and logs
    lower = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
    assert unescape(text) == [x.translate(lower) for x in labels]


def expected_data(rr: RR):
    if rr.rtype == 1 or rr.rtype == 28:
        return ipaddress.ip_address(rr.data)
    if rr.rtype == 5:
        return name_text(rr.data)
    return None


def answers_equal(parsed, rrs) -> None:
    assert len(parsed) == len(rrs)
    for a, rr in zip(parsed, rrs):
        assert (a.name, a.rtype, a.rclass, a.ttl) == (name_text(rr.name), rr.rtype, 1, rr.ttl)
        got = ipaddress.ip_address(a.data) if a.rtype in (1, 28) else a.data
        assert got == expected_data(rr)


@examples(2)
@given(dns_exchanges())
def test_dns_encoder_round_trip(exchange):
    query, response, questions, answers, params, msg_id, rd = exchange
    q = parse(query)
    assert q.complete and q.id == msg_id and not q.qr and q.rd == rd and q.ancount == 0
    assert [(x.name, x.qtype, x.qclass) for x in q.questions] == [(name_text(n), t, 1) for n, t in questions]
    r = parse(response)
    assert r.complete and r.id == msg_id and r.qr and r.rd == rd
    assert (r.rcode, r.aa, r.ra) == (params["rcode"], params["aa"], params["ra"])
    assert [(x.name, x.qtype) for x in r.questions] == [(name_text(n), t) for n, t in questions]
    answers_equal(r.answers, answers)


@examples(2)
@given(dns_exchanges(), st.data())
def test_dns_cut_capture_keeps_what_is_there(exchange, data):
    """A capture cut anywhere after the first question parses with complete=False and a prefix of the answers; cut
    earlier it is a ParseError; without wire_len any cut is a ParseError."""
    _q, response, questions, answers, _p, _i, _r = exchange
    n = len(response)
    assume(n > 12)
    first_q_end = 12 + len(encode_name(questions[0][0])) + 4
    k = data.draw(st.integers(0, n - 1), label="cut")
    cut = response[:k]
    with pytest.raises(ParseError) as info:
        parse(cut)
    assert info.value.reason in ("short_header", "truncated")
    if k < first_q_end:
        with pytest.raises(ParseError) as info:
            parse(cut, wire_len=n)
        assert info.value.reason in ("short_header", "truncated")
        return
    msg = parse(cut, wire_len=n)
    assert not msg.complete
    assert len(msg.questions) <= len(questions)
    answers_equal(msg.answers, answers[:len(msg.answers)])


@st.composite
def mutated_messages(draw):
    _q, response, *_ = draw(dns_exchanges())
    buf = bytearray(response)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, max(0, len(buf) - 1)))
        if op == 0 and buf:
            buf[pos] = draw(st.integers(0, 255))
        elif op == 1:
            buf[pos:pos] = struct.pack("!H", 0xC000 | draw(st.integers(0, len(buf) + 2)))
        elif op == 2:
            del buf[pos:pos + draw(st.integers(1, 8))]
        else:
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(buf), draw(st.none() | st.integers(0, 2 * len(buf) + 20))


@examples(3)
@given(mutated_messages())
def test_dns_mutated_messages(case):
    check_parsed_or_error(*case)


@examples(2)
@given(st.lists(st.one_of(dns_exchanges().map(lambda e: e[1]), st.binary(min_size=12, max_size=80)), max_size=5),
       st.data())
def test_dns_tcp_stream_split(messages, data):
    stream = b"".join(with_tcp_prefix(m) for m in messages)
    out, nxt = split_tcp_stream(stream)
    assert out == [(m, len(m)) for m in messages] and nxt == len(stream)
    # a piece cut by the capture: what is there, with the full lengths
    k = data.draw(st.integers(0, len(stream)), label="captured")
    out, nxt = split_tcp_stream(stream[:k], len(stream))
    assert len(out) <= len(messages)
    for (got, length), m in zip(out, messages):
        assert length == len(m) and m.startswith(got)
    assert nxt is None or nxt == len(stream)


@examples(2)
@given(st.binary(max_size=300), st.none() | st.integers(-5, 1000))
def test_dns_tcp_stream_split_raw(payload, stream_len):
    try:
        out, nxt = split_tcp_stream(payload, stream_len)
    except ParseError as exc:
        assert exc.reason == "bad_length"
        one_line(str(exc))
        return
    for msg, length in out:
        assert length >= 12 and len(msg) <= length
        check_parsed_or_error(msg, length)
    assert nxt is None or nxt >= len(payload) or nxt >= (stream_len or 0)


# =====================================================================================================================
# MetricsConfiguration
# =====================================================================================================================

def _case(draw, text: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c for c in text) if draw(st.booleans()) else text


@st.composite
def context_options(draw, name: str):
    opt: dict = {"metricName": _case(draw, name)}
    for key in ("sourceLabels", "destinationLabels"):
        if draw(st.booleans()):
            opt[key] = draw(st.lists(st.sampled_from(ACCEPTED_CONTEXT_LABELS).map(lambda s: _case(draw, s)),
                                     max_size=8))
    if draw(st.booleans()):
        opt["additionalLabels"] = draw(st.lists(st.sampled_from(["is_reply", "IS_REPLY", "direction", "x"]),
                                                max_size=3))
    if draw(st.booleans()):
        opt["ttl"] = draw(st.one_of(st.integers(0, 10**6).map(lambda s: format_duration(s * 10**6)),
                                    st.integers(0, 86400), st.just("")))
    return opt


NAMESPACE = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
POD_LABEL_KEY = st.sampled_from(["app", "tier", "app.kubernetes.io/name", "example.com/team", "k8s-app", "x_y", "v1"])


@st.composite
def metrics_specs(draw):
    names = draw(st.lists(st.sampled_from(ACCEPTED_METRIC_NAMES), min_size=1, max_size=6, unique=True))
    spec: dict = {"contextOptions": [draw(context_options(n)) for n in names]}
    ns = draw(st.integers(0, 2))
    if ns == 1:
        spec["namespaces"] = {"include": draw(st.lists(NAMESPACE, max_size=4))}
    elif ns == 2:
        spec["namespaces"] = {"exclude": draw(st.lists(NAMESPACE, max_size=4))}
    if draw(st.booleans()):
        spec["podLabelKeys"] = draw(st.lists(POD_LABEL_KEY, max_size=4, unique=True))
    if draw(st.booleans()):
        spec["maxSeriesPerMetric"] = draw(st.integers(1, 10_000_000))
    if draw(st.booleans()):  # a whole MetricsConfiguration object
        spec = {"apiVersion": "retina.sh/v1alpha1", "kind": "MetricsConfiguration", "metadata": {"name": "m"},
                "spec": spec}
    return spec


def paths_of(value, prefix=()):
    """Every (path, value) in a tree (the root included)."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths_of(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths_of(v, prefix + (i,))


@st.composite
def mutate(draw, doc, value_strategy=None):
    """A deep copy of ``doc`` with one change: a value replaced, a key added or removed, a list item added."""
    import copy

    doc = copy.deepcopy(doc)
    paths = list(paths_of(doc))
    path, target = draw(st.sampled_from(paths))
    new = draw(value_strategy if value_strategy is not None else trees(max_leaves=6))
    op = draw(st.integers(0, 3))
    if op == 0 and path:
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        parent[path[-1]] = new
    elif op == 1 and isinstance(target, dict):
        target[draw(st.one_of(st.text(max_size=10), st.sampled_from(list(target) or ["x"])))] = new
    elif op == 2 and isinstance(target, dict) and target:
        del target[draw(st.sampled_from(list(target)))]
    elif op == 3 and isinstance(target, list):
        target.insert(draw(st.integers(0, len(target))), new)
    else:
        return new if not path else doc
    return doc


@examples(2)
@given(metrics_specs(), st.sampled_from([None, True, False]))
def test_metrics_configuration_round_trip(spec, remote):
    cfg = parse_metrics_configuration(spec, remote_context=remote)
    back = parse_metrics_configuration(cfg.to_dict(), remote_context=remote)
    assert back == cfg
    assert back.to_dict() == cfg.to_dict()
    # and through YAML, as the config file carries it
    assert parse_metrics_configuration(yaml.safe_load(dump(cfg.to_dict()))) == cfg


def check_metrics_error(raw, path: str = "metricsConfiguration") -> MetricsConfiguration | None:
    try:
        return parse_metrics_configuration(raw, path=path)
    except ConfigError as exc:
        msg = str(exc)
        one_line(msg)
        assert msg.startswith(path + ":") or msg.startswith(path + "."), msg
        return None


@examples(3)
@given(metrics_specs().flatmap(mutate))
def test_metrics_configuration_mutated(raw):
    check_metrics_error(raw)


@examples(2)
@given(trees(keys=st.sampled_from(["contextOptions", "namespaces", "include", "exclude", "metricName", "ttl",
                                   "sourceLabels", "podLabelKeys", "maxSeriesPerMetric", "spec", "kind"])))
def test_metrics_configuration_any_tree(raw):
    check_metrics_error(raw, path="x.metricsConfiguration")


# =====================================================================================================================
# Agent configuration (file + environment)
# =====================================================================================================================

DURATION = st.integers(1, 36000).map(lambda s: format_duration(s * 10**9))
TOP_VALUES = {
    "enabledPlugin": st.lists(st.sampled_from(KNOWN_PLUGINS), unique=True, max_size=6),
    "enablePodLevel": st.booleans(),
    "dataAggregationLevel": st.sampled_from(["low", "high"]),
    "dataSamplingRate": st.integers(1, 2**32 - 1),
    "conntrackReportInterval": DURATION,
    "conntrackMapSize": st.integers(1024, 16777216),
    "packetParserRingBufferSize": st.integers(0, 12).map(lambda n: config_module._PAGE_SIZE << n),
    "enableTCX": st.sampled_from(["auto", "off"]),
    "hostInterfaces": st.lists(st.from_regex(r"[a-z][a-z0-9]{0,14}", fullmatch=True), max_size=3, unique=True),
    "nodeName": st.from_regex(r"[a-z0-9][-a-z0-9.]{0,30}", fullmatch=True),
    "nodeIP": st.one_of(st.just(""), st.ip_addresses().map(str)),
    "logLevel": st.sampled_from(["debug", "info", "warning", "error", "critical"]),
    "outputRingCapacity": st.integers(1, 20).map(lambda n: 2**n - 1),
    "bpfPinPath": st.from_regex(r"/[a-z0-9/]{0,20}", fullmatch=True),
    "remoteContext": st.booleans(),
    "metricsIntervalDuration": DURATION,
    "enableConntrackMetrics": st.booleans(),
    "enableAnnotations": st.booleans(),
    "bypassLookupIPOfInterest": st.booleans(),
    "filterMapMaxEntries": st.integers(1, 1048576),
}


@st.composite
def config_docs(draw):
    keys = draw(st.lists(st.sampled_from(sorted(TOP_VALUES)), unique=True, max_size=8))
    doc = {k: draw(TOP_VALUES[k]) for k in keys}
    if draw(st.booleans()):
        doc["apiServer"] = {"host": draw(st.sampled_from(["127.0.0.1", "::", "localhost"])),
                            "port": draw(st.integers(1, 65535))}
    if draw(st.booleans()):
        doc["metricsConfiguration"] = draw(metrics_specs())
    return doc


@pytest.fixture(scope="module")
def cfg_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("props-config")


def load_text(directory: Path, text: str, env=None) -> Config:
    path = directory / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(str(path), env or {})


def check_config(directory: Path, text: str, env=None, names: tuple[str, ...] = ()) -> Config | None:
    """load_config's contract: a Config, or a one-line ConfigError (a ValueError) naming one of ``names``."""
    try:
        return load_text(directory, text, env)
    except ConfigError as exc:
        assert isinstance(exc, ValueError)
        msg = str(exc)
        one_line(msg)
        if names:
            assert any(n in msg for n in names), (names, msg)
        return None


@examples(1)
@given(config_docs())
def test_config_round_trip(cfg_dir, doc):
    cfg = load_text(cfg_dir, dump(doc))
    assert load_text(cfg_dir, dump(cfg.to_dict())) == cfg
    assert load_text(cfg_dir, dump(Config().to_dict())) == Config()


SECTION_NAMES = tuple(s.name for s, _ in config_module.SECTIONS)


def nested(dotted: str, value) -> dict:
    out: dict = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def merge(doc: dict, extra: dict) -> dict:
    doc = dict(doc)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(doc.get(k), dict):
            doc[k] = merge(doc[k], v)
        else:
            doc[k] = v
    return doc


@examples(1.5)
@given(config_docs(), st.sampled_from(config_module._ALL_DOTTED), trees(max_leaves=6))
@example(doc={}, dotted="hubble.export.allowList", value={"": None})  # protobuf's two-line ParseError
@example(doc={}, dotted="otlp.enabled", value=[[[[[]]]]])
def test_config_one_bad_value_in_the_file_names_its_key(cfg_dir, doc, dotted, value):
    """Any value at any key: accepted, or an error naming that key (a section's cross-key check names its section;
    eventBufferCapacity vs outputRingCapacity names both)."""
    doc = merge(doc, nested(dotted, value))
    section = dotted.split(".")[0]
    check_config(cfg_dir, dump(doc), names=(dotted, section + ".") if section in SECTION_NAMES else (dotted,))


@examples(1.5)
@given(st.sampled_from(config_module._ALL_DOTTED), st.one_of(st.text(max_size=30), NASTY_TEXT))
@example("metricsConfiguration", "[" * 3000)
@example("hubble.export.allowList", "[" * 3000)
def test_config_one_bad_environment_variable_names_it(cfg_dir, dotted, value):
    var = env_var_name(dotted)
    try:
        load_config(None, {var: value})
    except ConfigError as exc:
        one_line(str(exc))
        section = dotted.split(".")[0]
        assert dotted in str(exc) or var in str(exc) or (section in SECTION_NAMES and section + "." in str(exc))


@examples(1)
@given(st.one_of(st.text(max_size=200), DEEP_YAML, trees(keys=st.sampled_from(
    ["apiServer", "port", "host", "enabledPlugin", "metricsConfiguration", "hubble", "export", "allowList",
     "enrichment", "source", "otlp", "tls", "nodeName", "dataSamplingRate", "enableTCX"])).map(dump)))
@example("a: &a [*a]\n")
@example("? [a, b]\n: 1\n")
@example("apiServer: &x {host: h}\nenrichment: *x\n")
def test_config_file_any_text(cfg_dir, text):
    check_config(cfg_dir, text)


# =====================================================================================================================
# Inventory
# =====================================================================================================================

K8S_NAME = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,12}[a-z0-9])?", fullmatch=True)
LABELS = st.dictionaries(st.sampled_from(["app", "tier", "k8s-app", "version"]), st.sampled_from(["web", "db", "1"]),
                         max_size=3)


@st.composite
def inventory_docs(draw):
    counter = iter(range(1, 10**6))

    def ips(n):
        out = []
        for _ in range(n):
            i = next(counter)
            out.append(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" if draw(st.booleans()) else f"fd00::{i:x}")
        return out

    nodes = [{"name": f"node-{i}", "ips": ips(draw(st.integers(0, 2))), "zone": draw(st.sampled_from(["z1", "z2"]))}
             for i in range(draw(st.integers(0, 3)))]
    endpoints = []
    for i in range(draw(st.integers(0, 4))):
        e = {"ips": ips(draw(st.integers(1, 2))), "namespace": draw(K8S_NAME), "podName": f"pod-{i}"}
        if draw(st.booleans()):
            e["labels"] = draw(LABELS)
        if draw(st.booleans()):
            e["workload"] = {"kind": "Deployment", "name": draw(K8S_NAME)}
        if nodes and draw(st.booleans()):
            e["node"] = draw(st.sampled_from(nodes))["name"]
        endpoints.append(e)
    services = []
    for i in range(draw(st.integers(0, 3))):
        s = {"namespace": draw(K8S_NAME), "name": f"svc-{i}"}
        if draw(st.booleans()):
            s["ip"] = ips(1)[0]
        else:
            s["ips"] = ips(draw(st.integers(1, 2)))
        if draw(st.booleans()):
            s["selector"] = draw(LABELS)
        services.append(s)
    doc = {}
    for key, value in (("endpoints", endpoints), ("services", services), ("nodes", nodes)):
        if value or draw(st.booleans()):
            doc[key] = value
    return doc


@examples(2)
@given(inventory_docs())
def test_inventory_valid_documents(doc):
    inv = parse_inventory_text(dump(doc), node_name="node-1")
    assert inv.counts == {k: len(doc.get(k, [])) for k in ("endpoints", "services", "nodes")}
    n_pod = sum(len(e["ips"]) for e in doc.get("endpoints", []))
    n_svc = sum(len(s.get("ips", [])) + ("ip" in s) for s in doc.get("services", []))
    n_node = sum(len(n["ips"]) for n in doc.get("nodes", []))
    assert (len(inv.pods), len(inv.services), len(inv.nodes)) == (n_pod, n_svc, n_node)


def check_inventory(data, text: bool = False) -> Inventory | None:
    try:
        return parse_inventory_text(data) if text else parse_inventory(data)
    except InventoryError as exc:
        one_line(str(exc))
        return None


@st.composite
def mutated_inventories(draw):
    doc = draw(inventory_docs())
    ip_pool = [ip for _, v in paths_of(doc) if isinstance(v, str) and re.fullmatch(r"10\..*|fd00::.*", v)
               for ip in [v]] or ["10.0.0.1"]
    values = st.one_of(trees(max_leaves=5), st.sampled_from(ip_pool), st.lists(st.sampled_from(ip_pool), max_size=3))
    return draw(mutate(doc, values))


@examples(3)
@given(mutated_inventories())
@example({"endpoints": [{"ips": ["10.0.0.1"], "namespace": "a\nb", "podName": "p"},
                        {"ips": ["10.0.0.1"], "namespace": "x", "podName": "q"}]})  # was a two-line message
@example({"endpoints": [{"ips": ["10.0.0.1"], "namespace": "a", "podName": "p", "labels": {"a\rb": 1}}]})
@example({"nodes": [{"name": "n\n", "ips": ["fd00::1"]}, {"name": "m", "ips": ["fd00::1"]}]})
def test_inventory_mutated_documents_name_the_entry(doc):
    try:
        parse_inventory(doc)
    except InventoryError as exc:
        msg = str(exc)
        one_line(msg)
        # the message starts with the entry ("endpoints[2].ips[0]: ..."), or describes the top level
        assert re.match(r"(endpoints|services|nodes)(\[\d+\])?[.:\[]|invalid YAML|unknown key|expected a mapping|"
                        r"the file is empty", msg), msg


@examples(1.5)
@given(st.one_of(st.text(max_size=200), DEEP_YAML, trees(keys=st.sampled_from(
    ["endpoints", "services", "nodes", "ips", "ip", "namespace", "podName", "name", "labels", "selector",
     "workload", "owner", "kind", "node", "zone"])).map(dump)))
@example("endpoints: &a [*a]\n")
@example("endpoints:\n- ips: [1:2:3:4:5:6:7:8]\n  namespace: a\n  podName: b\n")
def test_inventory_any_text(text):
    check_inventory(text, text=True)


@pytest.fixture(scope="module")
def inv_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("props-inventory")


@examples(0.5)
@given(inventory_docs(), st.one_of(mutated_inventories().map(dump), st.text(max_size=100), DEEP_YAML,
                                   st.binary(max_size=50).map(lambda b: b"\xff" + b)))
def test_inventory_source_keeps_last_good_snapshot(inv_dir, good, bad):
    """The file turns bad: the cache keeps the previous snapshot and the error names the file; a valid rewrite
    (including a 'bad' one that happens to be valid) replaces the snapshot whole."""
    path = inv_dir / "inventory.yaml"
    path.write_text(dump(good))
    cache = IPCache()
    src = InventorySource(path, node_name="node-0", poll_interval_s=60)
    src.cache = cache
    cache.register(src)
    src.poll()
    assert src.reloads == 1 and src.error is None
    before, version = dict(cache.view()), cache.version
    if isinstance(bad, bytes):
        path.write_bytes(bad)
    else:
        path.write_text(bad)
    os.utime(path, ns=(1, 1_000_000_000 + version))  # a new signature even within the mtime granularity
    src.poll()
    try:
        expected = parse_inventory_text(bad, "node-0") if isinstance(bad, str) else None
    except InventoryError:
        expected = None
    if expected is None:
        assert src.reload_errors == 1 and src.reloads == 1
        assert src.error.startswith(f"{path}: ") and "\n" not in src.error
        assert dict(cache.view()) == before and cache.version == version
    else:
        assert src.reload_errors == 0 and src.reloads == 2 and src.error is None
        view = cache.view()
        for table in (expected.nodes, expected.services, expected.pods):  # precedence: pod > service > node
            for packed, ident in table.items():
                assert isinstance(view.get(packed), Identity)
        assert len(view) == len({**expected.nodes, **expected.services, **expected.pods})


# =====================================================================================================================
# A rejected metricsConfiguration reload keeps the running one
# =====================================================================================================================

class _FakeModule:
    def __init__(self) -> None:
        self.applied: list = []

    def apply(self, mc) -> None:
        self.applied.append(mc)


@examples(1)
@given(metrics_specs(), metrics_specs().flatmap(mutate))
def test_rejected_metrics_configuration_reload_keeps_the_running_one(cfg_dir, good, bad):
    path = cfg_dir / "agent.yaml"
    path.write_text(dump({"metricsConfiguration": good}))
    running = load_config(str(path), {})
    module = _FakeModule()
    agent = types.SimpleNamespace(config_path=str(path), metrics_module=module, kube_control=None, cfg=running,
                                  config_reload_errors=0, config_reloads=0)
    path.write_text(dump({"metricsConfiguration": bad}))
    try:
        new = parse_metrics_configuration(bad, remote_context=False) if isinstance(bad, dict) else None
    except ConfigError:
        new = None
    applied = Agent.reload_config(agent)
    if new is None and not (bad is None):  # rejected (null means "no metricsConfiguration": valid)
        assert applied is False
        assert agent.cfg is running and module.applied == [] and agent.config_reload_errors == 1
    elif new is not None:
        assert agent.config_reload_errors == 0
        assert agent.cfg.metrics_configuration == new
        assert module.applied == ([new] if new != running.metrics_configuration else [])
        assert dataclasses.replace(agent.cfg, metrics_configuration=running.metrics_configuration) == running


# =====================================================================================================================
# Hubble FlowFilters
# =====================================================================================================================

FF_STRING_FIELDS = ("source_ip", "destination_ip", "source_ip_xlated", "source_pod", "destination_pod",
                    "source_service", "destination_service", "source_label", "destination_label", "source_fqdn",
                    "destination_fqdn", "source_cluster_name", "destination_cluster_name", "source_port",
                    "destination_port", "protocol", "drop_reason_desc_unused", "node_name", "node_labels",
                    "dns_query", "uuid", "trace_id", "http_status_code", "http_method", "http_path", "http_url")
FF_STRING_FIELDS = tuple(f for f in FF_STRING_FIELDS if f in flow_pb2.FlowFilter.DESCRIPTOR.fields_by_name)
VALID_ISH = {
    "ip": ["10.0.0.1", "10.0.0.0/8", "fd00::/64", "::ffff:10.0.0.0/104", "2001:DB8::1", "0.0.0.0/0", "::/0"],
    "pod": ["shop/", "shop/cart", "/", "/cart", "cart", "kube-system/coredns"],
    "label": ["app=web", "k8s:app", "!app", "app in (a,b)", "tier notin (x)", "v>1", "a,b=c", "app=", "any:k==v"],
    "fqdn": ["*.example.com", "example.com.", "a-b_c.*", "*"],
    "port": ["0", "80", "65535"],
    "protocol": ["tcp", "UDP", "icmp", "dns", "http", "sctp"],
    "node_name": ["node-a", "default/node-*", "*/x", "cluster-b/"],
    "regex": ["shop", "^a.*b$", ".", "(x|y)"],
    "http": ["200", "5+", "GET", "/a.*"],
}


def _pool(field: str) -> list[str]:
    for key, pool in (("ip", "ip"), ("pod", "pod"), ("service", "pod"), ("label", "label"), ("fqdn", "fqdn"),
                      ("port", "port"), ("protocol", "protocol"), ("node_name", "node_name"),
                      ("dns_query", "regex"), ("http", "http")):
        if key in field:
            return VALID_ISH[pool]
    return ["x", "default"]


FILTER_TEXT = st.one_of(st.text(max_size=15), NASTY_TEXT,
                        st.text(alphabet="abc/=!(),*.:-_ 0123456789[]\\^$+?{}", max_size=15))


@st.composite
def flow_filters(draw):
    ff = flow_pb2.FlowFilter()
    for field in draw(st.lists(st.sampled_from(FF_STRING_FIELDS), max_size=4, unique=True)):
        values = draw(st.lists(st.one_of(st.sampled_from(_pool(field)), FILTER_TEXT), min_size=1, max_size=3))
        getattr(ff, field).extend(values)
    if draw(st.booleans()):
        ff.verdict.extend(draw(st.lists(st.integers(0, 20), min_size=1, max_size=2)))
    if draw(st.booleans()):
        ff.source_identity.extend(draw(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=2)))
    if draw(st.booleans()):
        et = ff.event_type.add()
        et.type = draw(st.integers(0, 200))
        et.match_sub_type = draw(st.booleans())
        et.sub_type = draw(st.integers(0, 20))
    if draw(st.booleans()):
        w = ff.destination_workload.add()
        w.kind, w.name = draw(st.text(max_size=5)), draw(st.text(max_size=5))
    if draw(st.booleans()):
        ff.reply.extend(draw(st.lists(st.booleans(), min_size=1, max_size=2)))
    if draw(st.booleans()):
        ff.ip_version.extend(draw(st.lists(st.integers(0, 2), min_size=1, max_size=2)))
    if draw(st.booleans()):
        i = ff.interface.add()
        i.index, i.name = draw(st.integers(0, 100)), draw(st.sampled_from(["", "eth0", "veth1a2b"]))
    if draw(st.booleans()):
        t = ff.tcp_flags.add()
        t.SYN, t.ACK = draw(st.booleans()), draw(st.booleans())
    if draw(st.integers(0, 9)) == 0:
        ff.experimental.cel_expression.append(draw(st.text(max_size=5)))
    return ff


def _ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def _rec(src="10.244.1.5", dst="10.244.2.7", proto=6, sport=40000, dport=80, flags=2, *, verdict=1, reply=False,
         ifindex=17, ifname="veth1a2b", node="node-a", source=None, destination=None, drop="") -> FlowRecord:
    s, d = _ip(src), _ip(dst)
    r = FlowRecord(1_700_000_000_000_000_000, 6 if len(s) == 16 else 4, s, d, proto, sport, dport, flags, 0, 0, 0,
                   1, reply, ifindex, ifname, 2, 200, 100, (1, 1, 0, 0, 1, 0, 0, 0, 0, 0) if proto == 6 else None, 0,
                   node, verdict, 5 if drop else 0, drop)
    r.source, r.destination, r.l7 = source, destination, None
    return r


CART = Identity("pod", namespace="shop", pod_name="cart-7d9f-abcde", labels=("app=cart", "tier=web", "version=3"),
                workloads=(("Deployment", "cart"),), service="cart", names=("cart.shop.svc.cluster.local",),
                node_name="node-a")
RECORDS = [
    _rec(source=CART, destination=Identity("world")),
    _rec("fd00::1", "::ffff:10.1.2.3", proto=17, sport=53, dport=5353, flags=0, reply=None, ifindex=0, ifname="",
         node="cluster-b/node-z"),
    _rec(proto=1, sport=0, dport=0, flags=0, verdict=2, drop="NETFILTER_DROP", reply=None, source=CART,
         destination=Identity("pod", namespace="", pod_name="")),
    _rec(proto=132, node=""),
]


def check_filter_error(exc: FilterError, fields) -> None:
    msg = str(exc)
    one_line(msg)
    assert exc.field in fields, (exc.field, fields)
    assert msg.startswith(exc.field + ": ") or msg.startswith(repr(exc.field) + ": "), msg


@examples(3)
@given(flow_filters())
def test_compile_filter_any_values(ff):
    set_fields = {fd.name for fd, _ in ff.ListFields()} | {"experimental.cel_expression"}
    try:
        pred = compile_filter(ff)
    except FilterError as exc:
        check_filter_error(exc, set_fields)
        return
    for r in RECORDS:
        assert pred(r) in (True, False)


@examples(1)
@given(st.lists(flow_filters(), max_size=3), st.lists(flow_filters(), max_size=3))
def test_flow_matcher_whitelist_blacklist(white, black):
    try:
        matcher = FlowMatcher(white, black)
    except FilterError as exc:
        check_filter_error(exc, {fd.name for ff in white + black for fd, _ in ff.ListFields()}
                           | {"experimental.cel_expression"})
        return
    for r in RECORDS:
        assert matcher(r) in (True, False)


FLAGS = sorted(FilterBuilder.FLAGS)


def _flag_value(flag: str) -> st.SearchStrategy:
    return st.one_of(st.sampled_from(_pool(flag.replace("-", "_")) + ["", "1", "DROPPED", "l7", "trace:to-host",
                                                                        "Deployment/web", "SYN,ACK", "ingress",
                                                                        "4", "world", "a:b"]), FILTER_TEXT)


CLI_STEPS = st.lists(st.tuples(st.booleans(), st.sampled_from(FLAGS + ["bogus", "from_pod", "not"]))
                     .flatmap(lambda t: st.tuples(st.just(t[0]), st.just(t[1]), _flag_value(t[1]))), max_size=6)


@examples(3)
@given(CLI_STEPS)
def test_filter_builder_any_flags(steps):
    """Any sequence of (--not,) flag value: a FilterError naming the flag (or 'not'), or filters that compile."""
    b = FilterBuilder()
    used = {"not"}
    try:
        for negate, flag, value in steps:
            used.add(flag.replace("_", "-"))
            if negate:
                b.not_()
            b.add(flag, value)
        white, black = b.build()
    except FilterError as exc:
        check_filter_error(exc, used)
        return
    matcher = FlowMatcher(white, black)  # what the builder accepted compiles
    for r in RECORDS:
        assert matcher(r) in (True, False)


QUERY_NAMES = st.one_of(st.sampled_from(sorted(QUERY_FLAGS)), st.sampled_from(sorted(QUERY_FLAGS)).map("not_{}".format),
                        st.text(max_size=8))


@examples(3)
@given(st.dictionaries(QUERY_NAMES, st.lists(_flag_value("x"), min_size=1, max_size=2), max_size=4),
       st.booleans())
def test_filter_from_query_any_parameters(params, strict):
    try:
        white, black = filter_from_query(params, strict=strict)
    except FilterError as exc:
        check_filter_error(exc, set(params))
        return
    FlowMatcher(white, black)


# =====================================================================================================================
# HTTP query parameters and the /debug/flows handler
# =====================================================================================================================

PARAM_VALUE = st.one_of(st.text(max_size=12), NASTY_TEXT, st.integers(-10, 10**6).map(str),
                        st.floats(allow_nan=True, allow_infinity=True).map(repr), st.just("1" + "0" * 400))


@examples(3)
@given(st.lists(PARAM_VALUE, min_size=1, max_size=2), st.integers(1, 2**20))
@example(["inf"], 100)
def test_parse_last(values, maximum):
    try:
        n = parse_last({"last": values}, maximum)
    except ValueError as exc:
        one_line(str(exc))
        assert str(exc).startswith(("last=", "last:"))
        return
    assert 1 <= n <= maximum


@examples(3)
@given(st.lists(PARAM_VALUE, min_size=1, max_size=2))
@example(["inf"])
@example(["-inf"])
@example(["1e400"])
@example(["nan"])
def test_parse_since(values):
    try:
        ns = parse_since({"since": values})
    except ValueError as exc:
        one_line(str(exc))
        assert str(exc).startswith(("since=", "since:"))
        return
    assert isinstance(ns, int)


class _Ring:
    capacity = 4095

    def last(self, n):
        return RECORDS[-n:]


@examples(2)
@given(st.dictionaries(st.one_of(st.just("last"), st.just("since"), QUERY_NAMES),
                       st.lists(PARAM_VALUE | _flag_value("x"), min_size=1, max_size=2), max_size=4))
def test_debug_flows_handler_answers_or_400_naming_the_parameter(query):
    """The agent's /debug/flows: a JSON answer, or a ValueError (the server's 400) naming a query parameter."""
    agent = types.SimpleNamespace(ring=_Ring())
    try:
        status, ctype, body = Agent._debug_flows(agent, query, {})
    except ValueError as exc:
        msg = str(exc)
        one_line(msg)
        assert any(msg.startswith((name + "=", name + ":", repr(name) + ":")) for name in query), msg
        return
    assert status == 200 and ctype.startswith("application/json")
