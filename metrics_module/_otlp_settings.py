"""Effective OTLP exporter settings: the agent's ``otlp.*`` keys over the standard ``OTEL_*`` variables over the
defaults (precedence table in docs/otlp.md), and the SDK ``Resource``.

Signal-generic on purpose: :func:`resolve` takes ``signal`` (``"metrics"``; ``"logs"`` for the flow logs), reads
``OTEL_EXPORTER_OTLP_<SIGNAL>_*`` before ``OTEL_EXPORTER_OTLP_*`` and appends ``/v1/<signal>`` to a base HTTP
endpoint, so a ``LoggerProvider`` set up beside the ``MeterProvider`` gets the same endpoint, headers,
TLS and compression from the same keys and variables (an HTTP ``otlp.endpoint`` whose path ends in ``/v1/metrics``
becomes ``…/v1/logs`` for the logs). :func:`resolve_blrp` reads the ``OTEL_BLRP_*`` variables of the logs' batch
processor. Nothing here touches the network; TLS files are checked for readability.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from retina_core.version import __version__

__all__ = [
    "COMPRESSIONS", "DEFAULT_COMPRESSION", "DEFAULT_INTERVAL_S", "DEFAULT_PROTOCOL", "DEFAULT_TIMEOUT_S", "PROTOCOLS",
    "OtlpSettings", "build_resource", "check_settings", "default_endpoint", "parse_attributes", "parse_headers",
    "resolve", "resolve_blrp", "resolve_interval", "resolve_temporality",
]

PROTOCOLS = ("grpc", "http/protobuf")
COMPRESSIONS = ("gzip", "none")
DEFAULT_PROTOCOL = "grpc"  # the Python SDK's default (opentelemetry-exporter-otlp), and this agent's so far
DEFAULT_COMPRESSION = "gzip"  # the agent's default (the SDK's is none): label-heavy payloads shrink ~10x
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_INTERVAL_S = 60.0
DEFAULT_PORTS = {"grpc": 4317, "http/protobuf": 4318}

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110 token)


def default_endpoint(protocol: str, signal: str = "metrics") -> str:
    return "http://localhost:4317" if protocol == "grpc" else f"http://localhost:4318/v1/{signal}"


# -- value parsers (config keys and OTEL_* variables) -------------------------------------------------------------


def _pairs(value: str, what: str) -> list[tuple[str, str]]:
    items = []
    for item in value.split(","):
        if not item.strip():
            continue
        name, sep, val = item.partition("=")
        if not sep:
            raise ValueError(f"{what} {item.strip()!r} is not name=value")
        items.append((unquote(name.strip()), unquote(val.strip())))
    return items


def parse_headers(value: Any) -> dict[str, str]:
    """Headers from a mapping, or from ``"k1=v1,k2=v2"`` (``OTEL_EXPORTER_OTLP_HEADERS`` format: values
    URL-decoded). Raises ValueError naming the bad entry. ``None``/``""`` → ``{}``."""
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, str):
        items = _pairs(value, "header")
    else:
        raise ValueError("headers must be a mapping or a 'name=value,…' string")
    out: dict[str, str] = {}
    for name, val in items:
        name = name.strip()
        if isinstance(val, bool) or not isinstance(val, (str, int, float)):
            raise ValueError(f"header {name!r}: the value must be a string")
        val = str(val)
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"header name {name!r} is not a valid HTTP header name")
        if name.lower().endswith("-bin") or name.lower().startswith("grpc-"):
            raise ValueError(f"header name {name!r} is reserved by gRPC")
        if any(c in val for c in "\r\n\0"):
            raise ValueError(f"header {name!r}: the value contains a line break or NUL")
        if any(k.lower() == name.lower() for k in out):
            raise ValueError(f"header {name!r} is given twice")
        out[name] = val
    return out


def parse_attributes(value: Any) -> dict[str, str]:
    """Resource attributes from a mapping or ``"k1=v1,k2=v2"`` (values URL-decoded); ``None``/``""`` → ``{}``.
    Raises ValueError."""
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, str):
        items = _pairs(value, "attribute")
    else:
        raise ValueError("attributes must be a mapping or a 'name=value,…' string")
    out: dict[str, str] = {}
    for name, val in items:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"attribute name {name!r} is not a non-empty string")
        if val is None or not isinstance(val, (str, int, float, bool)):
            raise ValueError(f"attribute {name!r}: the value must be a string")
        out[name.strip()] = str(val).lower() if isinstance(val, bool) else str(val)
    return out


def _protocol(value: str, where: str) -> str:
    p = value.strip().lower()
    p = {"http": "http/protobuf"}.get(p, p)
    if p == "http/json":
        raise ValueError(f"{where}: protocol 'http/json' is not supported; accepted: {', '.join(PROTOCOLS)}")
    if p not in PROTOCOLS:
        raise ValueError(f"{where}: unknown protocol {value!r}; accepted: {', '.join(PROTOCOLS)}")
    return p


def _bool_env(value: str, where: str) -> bool:
    t = value.strip().lower()
    if t in ("true", "1", "yes"):
        return True
    if t in ("false", "0", "no"):
        return False
    raise ValueError(f"{where}: {value!r} is not a boolean")


def _millis(value: str, where: str) -> float:
    try:
        ms = float(value.strip())
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not a number of milliseconds") from None
    if not ms > 0:
        raise ValueError(f"{where}: must be positive")
    return ms / 1000.0


# -- endpoints ----------------------------------------------------------------------------------------------------


def _split(endpoint: str) -> tuple[str | None, str, int | None, str]:
    """``(scheme or None, host, port or None, path-with-query)``; raises ValueError."""
    text = endpoint.strip()
    if not text:
        raise ValueError("the endpoint is empty")
    has_scheme = "://" in text
    parts = urlsplit(text if has_scheme else "//" + text)
    scheme = parts.scheme.lower() if has_scheme else None
    if scheme not in (None, "http", "https"):
        raise ValueError(f"endpoint {endpoint!r}: the scheme must be http:// or https://")
    if parts.username or parts.password:
        raise ValueError(f"endpoint {endpoint!r}: credentials in the URL are not supported; use headers")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"endpoint {endpoint!r}: bad port") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"endpoint {endpoint!r}: no host")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return scheme, host, port, path


def _url(scheme: str, host: str, port: int | None, path: str) -> str:
    h = f"[{host}]" if ":" in host else host
    return f"{scheme}://{h}{f':{port}' if port else ''}{path}"


def _endpoint_url(endpoint: str, protocol: str, tls: bool | None, signal: str, *, append_signal_path: bool,
                  where: str) -> tuple[str, bool]:
    """The URL (with scheme and, for gRPC, port) and whether it is TLS. ``tls`` decides only for an endpoint
    without scheme (None: TLS)."""
    try:
        scheme, host, port, path = _split(endpoint)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if scheme is None:
        scheme = "http" if tls is False else "https"
    if protocol == "grpc":
        if path not in ("", "/"):
            raise ValueError(f"{where}: a gRPC endpoint is host:port, without a path ({endpoint!r})")
        return _url(scheme, host, port or DEFAULT_PORTS["grpc"], ""), scheme == "https"
    if append_signal_path:
        path = path.rstrip("/") + f"/v1/{signal}"
    elif path in ("", "/"):
        path = f"/v1/{signal}"
    return _url(scheme, host, port, path), scheme == "https"


# -- resolution ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OtlpSettings:
    """What one signal's OTLP exporter is built with (every value resolved; ``sources`` says where each came
    from: ``otlp.<key>``, an ``OTEL_*`` variable, or ``default``)."""

    signal: str
    protocol: str
    endpoint: str  # URL with scheme; gRPC: scheme://host:port; HTTP: the full signal URL
    tls: bool
    headers: dict[str, str]
    timeout_s: float
    compression: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"signal": self.signal, "protocol": self.protocol, "endpoint": self.endpoint, "tls": self.tls,
                "headers": sorted(self.headers), "timeout_s": self.timeout_s, "compression": self.compression,
                "ca_file": self.ca_file, "cert_file": self.cert_file, "key_file": self.key_file,
                "sources": dict(self.sources)}


class _Env:
    def __init__(self, env: Mapping[str, str], signal: str) -> None:
        self.env = env
        self.signal = signal.upper()

    def get(self, what: str, *, signal_specific: bool = True) -> tuple[str | None, str | None]:
        """``(value, variable)`` of ``OTEL_EXPORTER_OTLP_<SIGNAL>_<what>`` else ``OTEL_EXPORTER_OTLP_<what>``;
        empty values count as unset."""
        names = ([f"OTEL_EXPORTER_OTLP_{self.signal}_{what}"] if signal_specific else []) + \
            [f"OTEL_EXPORTER_OTLP_{what}"]
        for name in names:
            value = self.env.get(name)
            if value is not None and value.strip():
                return value.strip(), name
        return None, None


def resolve(
    signal: str = "metrics",
    *,
    endpoint: str | None = None,
    protocol: str | None = None,
    headers: Mapping[str, str] | str | None = None,
    insecure: bool | None = None,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    compression: str | None = None,
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
    check_files: bool = True,
    check_client_pair: bool = True,
) -> OtlpSettings:
    """Effective settings for ``signal``: each given argument (the ``otlp.*`` key; None = not set) over the
    ``OTEL_EXPORTER_OTLP_<SIGNAL>_*`` variable over ``OTEL_EXPORTER_OTLP_*`` over the default. Raises ValueError
    with a one-line message naming the key or variable."""
    env = os.environ if env is None else env
    e = _Env(env, signal)
    sources: dict[str, str] = {}

    if protocol is not None:
        proto, sources["protocol"] = _protocol(protocol, "otlp.protocol"), "otlp.protocol"
    else:
        value, var = e.get("PROTOCOL")
        proto, sources["protocol"] = (_protocol(value, var), var) if value else (DEFAULT_PROTOCOL, "default")

    if insecure is None:
        value, var = e.get("INSECURE")
        insecure_env = _bool_env(value, var) if value else None
    else:
        insecure_env = None
    tls_hint = (not insecure) if insecure is not None else (not insecure_env if insecure_env is not None else None)

    if endpoint:
        url, tls = _endpoint_url(endpoint, proto, tls_hint, signal, append_signal_path=False, where="otlp.endpoint")
        if proto != "grpc" and signal != "metrics":  # one key for every signal: its metrics path names the others'
            head, sep, query = url.partition("?")
            if head.endswith("/v1/metrics"):
                url = head[: -len("metrics")] + signal + sep + query
        sources["endpoint"] = "otlp.endpoint"
        scheme = _split(endpoint)[0]
        if insecure is not None and scheme is not None and insecure == (scheme == "https"):
            raise ValueError(f"otlp.insecure: {str(insecure).lower()} contradicts the endpoint's scheme "
                             f"({endpoint!r})")
    else:
        value, var = e.get("ENDPOINT")  # signal-specific: used as is; the generic one: a base URL for HTTP
        if value:
            generic = var == "OTEL_EXPORTER_OTLP_ENDPOINT"
            url, tls = _endpoint_url(value, proto, tls_hint, signal, append_signal_path=generic and proto != "grpc",
                                     where=var)
            sources["endpoint"] = var
        else:
            url, tls = _endpoint_url(default_endpoint(proto, signal), proto, None, signal,
                                     append_signal_path=False, where="default")
            sources["endpoint"] = "default"

    env_headers_text, var = e.get("HEADERS")
    try:
        merged = parse_headers(env_headers_text)
    except ValueError as exc:
        raise ValueError(f"{var}: {exc}") from None
    if env_headers_text:
        sources["headers"] = var
    try:
        config_headers = parse_headers(headers)
    except ValueError as exc:
        raise ValueError(f"otlp.headers: {exc}") from None
    for name, val in config_headers.items():  # per header name, otlp.headers wins
        for k in [k for k in merged if k.lower() == name.lower()]:
            del merged[k]
        merged[name] = val
    if config_headers:
        sources["headers"] = "otlp.headers" + (f" over {sources['headers']}" if "headers" in sources else "")

    if timeout_s is not None:
        if not timeout_s > 0:
            raise ValueError("otlp.timeout: must be positive")
        timeout, sources["timeout"] = float(timeout_s), "otlp.timeout"
    else:
        value, var = e.get("TIMEOUT")
        timeout, sources["timeout"] = (_millis(value, var), var) if value else (DEFAULT_TIMEOUT_S, "default")

    if compression is not None:
        comp, sources["compression"] = compression.strip().lower(), "otlp.compression"
        where = "otlp.compression"
    else:
        value, var = e.get("COMPRESSION")
        comp, sources["compression"] = (value.lower(), var) if value else (DEFAULT_COMPRESSION, "default")
        where = var or "default"
    if comp not in COMPRESSIONS:
        raise ValueError(f"{where}: unknown compression {comp!r}; accepted: {', '.join(COMPRESSIONS)}")

    files: dict[str, str | None] = {}
    for key, given, what in (("caFile", ca_file, "CERTIFICATE"), ("certFile", cert_file, "CLIENT_CERTIFICATE"),
                             ("keyFile", key_file, "CLIENT_KEY")):
        if given:
            files[key], sources[key] = given, f"otlp.{key}"
        else:
            value, var = e.get(what)
            files[key] = value
            if value:
                sources[key] = var
    if check_client_pair and bool(files["certFile"]) != bool(files["keyFile"]):
        raise ValueError("the client certificate (otlp.certFile / OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE) and its "
                         "key (otlp.keyFile / OTEL_EXPORTER_OTLP_CLIENT_KEY) go together")
    if not tls:
        given_in_config = [k for k in files if files[k] and sources.get(k, "").startswith("otlp.")]
        if given_in_config:
            raise ValueError(f"TLS files are given (otlp.{given_in_config[0]}) but the endpoint {url} is plaintext")
        files = dict.fromkeys(files)  # OTEL_* certificates do not apply to a plaintext endpoint
    if check_files:
        for key, path in files.items():
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"{sources[key]}: cannot read {path!r}")
    return OtlpSettings(signal=signal, protocol=proto, endpoint=url, tls=tls, headers=merged, timeout_s=timeout,
                        compression=comp, ca_file=files["caFile"], cert_file=files["certFile"],
                        key_file=files["keyFile"], sources=sources)


def resolve_interval(interval_s: float | None, env: Mapping[str, str] | None = None) -> tuple[float, str]:
    """``(seconds, source)``: ``otlp.interval`` over ``OTEL_METRIC_EXPORT_INTERVAL`` (ms) over 60 s."""
    env = os.environ if env is None else env
    if interval_s is not None:
        if not interval_s > 0:
            raise ValueError("otlp.interval: must be positive")
        return float(interval_s), "otlp.interval"
    value = (env.get("OTEL_METRIC_EXPORT_INTERVAL") or "").strip()
    if value:
        return _millis(value, "OTEL_METRIC_EXPORT_INTERVAL"), "OTEL_METRIC_EXPORT_INTERVAL"
    return DEFAULT_INTERVAL_S, "default"


#: The logs' BatchLogRecordProcessor: keyword argument -> (variable, default), the SDK's defaults.
BLRP_VARIABLES = {
    "schedule_delay_millis": ("OTEL_BLRP_SCHEDULE_DELAY", 1000),
    "max_queue_size": ("OTEL_BLRP_MAX_QUEUE_SIZE", 2048),
    "max_export_batch_size": ("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", 512),
    "export_timeout_millis": ("OTEL_BLRP_EXPORT_TIMEOUT", 30000),
}


def resolve_blrp(env: Mapping[str, str] | None = None) -> tuple[dict[str, int], dict[str, str]]:
    """``(kwargs for BatchLogRecordProcessor, source of each)`` from the ``OTEL_BLRP_*`` variables (the SDK's
    defaults otherwise). Raises ValueError naming the variable for a value that is not a positive integer, or a
    batch larger than the queue (the SDK itself would log and fall back, or raise without naming it)."""
    env = os.environ if env is None else env
    out: dict[str, int] = {}
    sources: dict[str, str] = {}
    for arg, (var, default) in BLRP_VARIABLES.items():
        text = (env.get(var) or "").strip()
        if not text:
            out[arg], sources[arg] = default, "default"
            continue
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{var}: {text!r} is not an integer") from None
        if value <= 0:
            raise ValueError(f"{var}: must be positive")
        out[arg], sources[arg] = value, var
    if out["max_export_batch_size"] > out["max_queue_size"]:
        out["max_export_batch_size"] = out["max_queue_size"]
        sources["max_export_batch_size"] += " (capped at the queue size)"
    return out, sources


TEMPORALITIES = ("cumulative", "delta", "lowmemory")


def resolve_temporality(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``(preference, source)`` from ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` (cumulative, delta,
    lowmemory; default cumulative)."""
    env = os.environ if env is None else env
    var = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
    value = (env.get(var) or "").strip().lower()
    if not value:
        return "cumulative", "default"
    if value not in TEMPORALITIES:
        raise ValueError(f"{var}: unknown preference {value!r}; accepted: {', '.join(TEMPORALITIES)}")
    return value, var


def check_settings(**kwargs: Any) -> str:
    """Validate connection settings as :func:`resolve` does, without touching the network or the files; returns
    the endpoint URL. Raises ValueError (for config validation at load time)."""
    kwargs.setdefault("check_files", False)
    return resolve(**kwargs).endpoint


# -- resource -----------------------------------------------------------------------------------------------------


def build_resource(
    *,
    service_name: str = "retina-exporter",
    service_version: str = __version__,
    host_name: str | None = None,
    node_name: str | None = None,
    cluster_name: str | None = None,
    attributes: Mapping[str, str] | str | None = None,
) -> Any:
    """The SDK ``Resource``, lowest to highest precedence: the SDK's own (``telemetry.sdk.*``, detectors) < ours
    (``service.name``, ``service.version``, ``service.instance.id`` = node or host name, ``host.name``,
    ``k8s.node.name`` and ``k8s.cluster.name`` when known) < ``OTEL_RESOURCE_ATTRIBUTES`` < ``OTEL_SERVICE_NAME``
    < ``otlp.resourceAttributes`` (``attributes``)."""
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource

    host_name = host_name or socket.gethostname()
    ours: dict[str, str] = {
        "service.name": service_name,
        "service.version": service_version,
        # Prometheus-compatible backends make it the `instance` label: without it, node-level series of different
        # nodes (no node label) would collide. (The SDK's default is a random UUID per process.)
        "service.instance.id": node_name or host_name,
        "host.name": host_name,
    }
    if node_name:
        ours["k8s.node.name"] = node_name
    if cluster_name:
        ours["k8s.cluster.name"] = cluster_name
    configured = parse_attributes(attributes)
    return (Resource.create({}).merge(Resource(ours)).merge(OTELResourceDetector().detect())
            .merge(Resource(configured)))
