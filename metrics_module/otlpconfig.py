"""The ``otlp`` config section (owned by the metrics module): where and how the metrics are pushed over OTLP.

Parsed once by :data:`OTLP_SECTION` into an :class:`OtlpConfig`; :meth:`OtlpExporter.from_config
<metrics_module.otlp.OtlpExporter.from_config>` takes it. Connection settings are checked without touching the
network or the files when ``enabled`` (``check_settings``), so a bad endpoint stops the agent at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from retina_core.settings import BOOL_ACCEPTED, Invalid, Key, Section, boolean, choice, duration_at_least
from retina_core.settings import optional_text, path_or_empty
from retina_core.units import NS_PER_S, ConfigError, format_duration

__all__ = ["OTLP_SECTION", "OtlpConfig"]


@dataclass(frozen=True)
class OtlpConfig:
    """The effective ``otlp`` section; defaults are the documented ones (docs/otlp.md)."""

    enabled: bool = False
    endpoint: str = ""
    """Collector URL; empty: the protocol's default (http://localhost:4317, or :4318/v1/metrics for HTTP)."""
    protocol: str = "grpc"
    interval_ns: int = 60 * NS_PER_S
    timeout_ns: int = 10 * NS_PER_S
    headers: tuple[tuple[str, str], ...] = ()
    insecure: Any = None
    """None: the endpoint's scheme decides (TLS without one)."""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    compression: str = "gzip"
    resource_attributes: tuple[tuple[str, str], ...] = ()


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    from metrics_module.otlp import parse_headers

    try:
        return tuple(parse_headers(value).items())
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def _attributes(value: Any) -> tuple[tuple[str, str], ...]:
    from metrics_module.otlp import parse_attributes

    try:
        return tuple(parse_attributes(value).items())
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def _check(cfg: OtlpConfig) -> None:
    if not cfg.enabled:
        return
    from metrics_module.otlp import check_settings

    try:
        check_settings(endpoint=cfg.endpoint or None, protocol=cfg.protocol, insecure=cfg.insecure,
                       ca_file=cfg.ca_file or None, cert_file=cfg.cert_file or None, key_file=cfg.key_file or None)
    except ValueError as exc:
        raise ConfigError(f"otlp: {exc}") from None


OTLP_SECTION = Section("otlp", OtlpConfig, (
    Key("enabled", "enabled", boolean, BOOL_ACCEPTED),
    Key("endpoint", "endpoint", optional_text,
        "a URL such as 'http://otel-collector:4317' or 'https://host/v1/metrics', host:port, or empty"),
    Key("protocol", "protocol", choice("grpc", "http/protobuf", aliases={"http": "http/protobuf"}),
        "grpc, http/protobuf (or http)"),
    Key("interval", "interval_ns", duration_at_least(NS_PER_S), "a duration of at least 1s such as '60s'",
        format_duration),
    Key("timeout", "timeout_ns", duration_at_least(NS_PER_S // 10), "a duration of at least 100ms such as '10s'",
        format_duration),
    Key("headers", "headers", _headers,
        "a mapping of header names to strings, or 'name=value,name2=value2' (URL-encoded values)",
        lambda pairs: {k: "<redacted>" for k, _ in pairs}),
    Key("insecure", "insecure", boolean, "true, false (also 1/0, yes/no), or null (from the scheme)"),
    Key("caFile", "ca_file", path_or_empty, "a file path, or empty"),
    Key("certFile", "cert_file", path_or_empty, "a file path, or empty"),
    Key("keyFile", "key_file", path_or_empty, "a file path, or empty"),
    Key("compression", "compression", choice("gzip", "none"), "gzip, none"),
    Key("resourceAttributes", "resource_attributes", _attributes,
        "a mapping of attribute names to strings, or 'name=value,...'", dict),
), check=_check)
