"""The ``otlp`` config section (owned by the metrics module): where and how the metrics are pushed over OTLP.

Parsed once by :data:`OTLP_SECTION` into an :class:`OtlpConfig`; :meth:`OtlpExporter.from_config
<metrics_module.otlp.OtlpExporter.from_config>` takes it. Every connection key defaults to ``None``: *not set*,
so the standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT`` …) or the defaults apply; a key that is set
(in the file or as ``RETINA_OTLP_*``) overrides them (precedence table in docs/otlp.md). What the keys alone decide
is checked at load time when ``enabled``, without touching the network or the files, so a bad endpoint stops the
agent at start-up; the rest (with the environment) when the exporter is built.

``otlp.flowLogs.*`` (docs/otlp.md, "Flow logs"): flow records as OTLP log records. The allow/deny lists are Hubble
``FlowFilter`` lists in protojson; they are checked here as protobuf only (the filter compiler is the assembler's,
``retina_exporter.hubble.filters``, which this module may not import): the agent compiles them at start and a value
the compiler refuses stops it (exit 2) naming the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from retina_core.settings import BOOL_ACCEPTED, Invalid, Key, Section, boolean, choice, duration_at_least
from retina_core.settings import flow_filter_list, int_range, optional_text, path_or_empty
from retina_core.units import NS_PER_S, ConfigError, format_duration

__all__ = ["DEFAULT_FLOW_LOGS_MAX_PER_SECOND", "OTLP_SECTION", "OtlpConfig", "parse_flow_filters"]

DEFAULT_FLOW_LOGS_MAX_PER_SECOND = 1000


@dataclass(frozen=True)
class OtlpConfig:
    """The effective ``otlp`` section. ``None``: not set (the ``OTEL_*`` variable, else the default applies)."""

    enabled: bool = False
    endpoint: str | None = None
    """Collector URL; None: ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``, else
    http://localhost:4317 (gRPC) or http://localhost:4318/v1/metrics (HTTP)."""
    protocol: str | None = None
    interval_ns: int | None = None
    timeout_ns: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    """Merged over ``OTEL_EXPORTER_OTLP_HEADERS`` (per header name, these win)."""
    insecure: Any = None
    """None: the endpoint's scheme decides (for an endpoint without one: ``OTEL_EXPORTER_OTLP_INSECURE``, else TLS)."""
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    compression: str | None = None
    resource_attributes: tuple[tuple[str, str], ...] = ()
    flow_logs_enabled: bool = False
    """Flow records as OTLP log records (needs ``enabled``)."""
    flow_logs_allow_list: tuple[str, ...] = ()
    """Hubble FlowFilters, each as canonical protojson text (hashable; compiled where used)."""
    flow_logs_deny_list: tuple[str, ...] = ()
    flow_logs_max_per_second: int = DEFAULT_FLOW_LOGS_MAX_PER_SECOND
    """Flow log records per second at most (token bucket, one second of burst); 0: unlimited."""


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    from metrics_module._otlp_settings import parse_headers

    try:
        return tuple(parse_headers(value).items())
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def _attributes(value: Any) -> tuple[tuple[str, str], ...]:
    from metrics_module._otlp_settings import parse_attributes

    try:
        return tuple(parse_attributes(value).items())
    except ValueError as exc:
        raise Invalid(str(exc)) from None


parse_flow_filters = flow_filter_list  # the one FlowFilter-list parser (retina_core.settings)


def _unset_if_empty(parse):
    def wrapped(value: Any) -> Any:
        out = parse(value)
        return out if out != "" else None

    return wrapped


def _maybe(render):
    return lambda value: None if value is None else render(value)


def _check(cfg: OtlpConfig) -> None:
    if cfg.flow_logs_enabled and not cfg.enabled:
        raise ConfigError("otlp.flowLogs.enabled: true needs otlp.enabled: true (flow logs go out through the OTLP "
                          "exporter, with its endpoint and credentials)")
    if not cfg.enabled:
        return
    from metrics_module._otlp_settings import check_settings

    try:  # the keys alone (an empty environment): the OTEL_* variables are checked when the exporter is built
        check_settings(endpoint=cfg.endpoint, protocol=cfg.protocol, insecure=cfg.insecure, ca_file=cfg.ca_file,
                       cert_file=cfg.cert_file, key_file=cfg.key_file, compression=cfg.compression, env={},
                       check_client_pair=False)
    except ValueError as exc:
        raise ConfigError(f"otlp: {exc}") from None


OTLP_SECTION = Section("otlp", OtlpConfig, (
    Key("enabled", "enabled", boolean, BOOL_ACCEPTED),
    Key("endpoint", "endpoint", _unset_if_empty(optional_text),
        "a URL such as 'http://otel-collector:4317' or 'https://host/v1/metrics', host:port, or empty/null (not set)"),
    Key("protocol", "protocol", choice("grpc", "http/protobuf", aliases={"http": "http/protobuf"}),
        "grpc, http/protobuf (or http), or null (not set)"),
    Key("interval", "interval_ns", duration_at_least(NS_PER_S),
        "a duration of at least 1s such as '60s', or null (not set)", _maybe(format_duration)),
    Key("timeout", "timeout_ns", duration_at_least(NS_PER_S // 10),
        "a duration of at least 100ms such as '10s', or null (not set)", _maybe(format_duration)),
    Key("headers", "headers", _headers,
        "a mapping of header names to strings, or 'name=value,name2=value2' (URL-encoded values)",
        lambda pairs: {k: "<redacted>" for k, _ in pairs}),
    Key("insecure", "insecure", boolean, "true, false (also 1/0, yes/no), or null (not set)"),
    Key("caFile", "ca_file", _unset_if_empty(path_or_empty), "a file path, or empty/null (not set)"),
    Key("certFile", "cert_file", _unset_if_empty(path_or_empty), "a file path, or empty/null (not set)"),
    Key("keyFile", "key_file", _unset_if_empty(path_or_empty), "a file path, or empty/null (not set)"),
    Key("compression", "compression", choice("gzip", "none"), "gzip, none, or null (not set)"),
    Key("resourceAttributes", "resource_attributes", _attributes,
        "a mapping of attribute names to strings, or 'name=value,...'", dict),
    Key("flowLogs.enabled", "flow_logs_enabled", boolean, BOOL_ACCEPTED),
    Key("flowLogs.allowList", "flow_logs_allow_list", parse_flow_filters,
        "a list of Hubble FlowFilters in protojson (e.g. [{\"source_pod\": [\"lab/\"]}])",
        lambda v: [json.loads(s) for s in v]),
    Key("flowLogs.denyList", "flow_logs_deny_list", parse_flow_filters, "a list of Hubble FlowFilters in protojson",
        lambda v: [json.loads(s) for s in v]),
    Key("flowLogs.maxPerSecond", "flow_logs_max_per_second", int_range(0, 10_000_000),
        "an integer from 0 (unlimited) to 10000000"),
), check=_check)
