"""Agent configuration: a YAML file plus ``RETINA_<KEY>`` environment overrides, validated at start-up.

Key names follow Retina's ``config.yaml`` where Retina has the knob (``apiServer.port``, ``enabledPlugin``,
``dataAggregationLevel`` …). The reference for every key is ``docs/config.md``.

Precedence: defaults < file < environment. The environment variable of a key is ``RETINA_`` plus the key
upper-cased with dots replaced by ``_`` (``apiServer.port`` → ``RETINA_APISERVER_PORT``,
``enablePodLevel`` → ``RETINA_ENABLEPODLEVEL``). Only those names are read: other ``RETINA_*`` variables
(Kubernetes injects ``RETINA_PORT``, ``RETINA_SERVICE_HOST`` … for a Service named ``retina``) are ignored, and so
is an empty variable (as viper does).

Every problem raises :class:`ConfigError` with a one-line message naming the key (dotted path), the bad value, where
it came from and what is accepted. Retina keys that this agent does not use (:data:`RETINA_IGNORED_KEYS`) are
accepted with a warning in :attr:`Config.warnings`; any other key is an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import mmap
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml

from retina_core.units import NS_PER_S, ConfigError, format_duration, parse_duration, show_value as _show

__all__ = [
    "Config",
    "ConfigError",
    "KNOWN_PLUGINS",
    "RETINA_IGNORED_KEYS",
    "env_var_name",
    "format_duration",
    "load_config",
    "parse_duration",
]


#: Plugins that can be listed in ``enabledPlugin``.
KNOWN_PLUGINS: tuple[str, ...] = ("packetparser", "dropreason", "packetforward", "linuxutil", "dns", "tcpretrans")

#: Retina keys accepted for compatibility but not used (yet): each one found gives a warning, not an error.
#: When a feature lands, move its key from here into ``_KEYS`` (and ``Config``, and docs/config.md).
RETINA_IGNORED_KEYS: tuple[str, ...] = (
    "enableTelemetry",
    "telemetryInterval",
    "packetParserRingBuffer",
)

_NS_PER_S = NS_PER_S
_LEGACY_INTERVAL = "metricsInterval"  # Retina's deprecated seconds-only form of metricsIntervalDuration
_MAX_DURATION_NS = 2**63 - 1  # Go's time.Duration range
_PAGE_SIZE = mmap.PAGESIZE  # BPF ring buffers must be a power-of-two multiple of the page size


@dataclass(frozen=True)
class Config:
    """The effective agent configuration. Defaults here are the documented defaults."""

    api_server_host: str = "0.0.0.0"
    """Address the HTTP server (``/metrics``, ``/debug/*``) listens on."""
    api_server_port: int = 10093
    """TCP port of the HTTP server."""
    enabled_plugins: tuple[str, ...] = ("dropreason", "packetforward", "linuxutil", "dns")
    """Plugins to run, in the configured order, without duplicates."""
    enable_pod_level: bool = False
    """Pod-level (advanced) metrics and flow enrichment."""
    data_aggregation_level: str = "low"
    """``"low"`` (host interfaces too, every packet reported) or ``"high"`` (pod veths, conntrack-gated)."""
    data_sampling_rate: int = 1
    """Report 1 packet in N (1 = every packet)."""
    conntrack_report_interval_ns: int = 30 * _NS_PER_S
    """Periodic report interval per connection and direction, in nanoseconds."""
    conntrack_map_size: int = 262144
    """Entries in the kernel conntrack LRU hash."""
    ring_buffer_size: int = 8 * 1024 * 1024
    """Size of the packetparser BPF ring buffer, in bytes (a power of two)."""
    enable_tcx: str = "auto"
    """``"auto"``: attach with TCX where the kernel has it (>= 6.6), else clsact; ``"off"``: always clsact."""
    host_interfaces: tuple[str, ...] = ()
    """Host (uplink) interface names to hook; empty means detect them."""
    node_name: str = field(default_factory=socket.gethostname)
    """Name of this node in flows and metrics."""
    log_level: str = "info"
    """``"debug"``, ``"info"``, ``"warning"`` or ``"error"``."""
    output_ring_capacity: int = 4095
    """Slots in the in-process flow ring (2^n - 1)."""
    bpf_pin_path: str = "/sys/fs/bpf/retina"
    """bpffs directory where maps are pinned."""
    remote_context: bool = False
    """Advanced metrics with ``source_``/``destination_`` labels (remote context) instead of local context."""
    enrichment_source: str = "none"
    """Where identities come from: ``none``, ``inventory``, ``netns`` (``kubernetes``/``operator`` later)."""
    enrichment_inventory_file: str = ""
    """Path of the inventory YAML for ``enrichment.source: inventory``."""
    metrics_interval_ns: int = 10 * _NS_PER_S
    """How often node-level plugins (linuxutil, packetforward) read their sources, in nanoseconds."""
    enrichment_kubeconfig: str = ""
    """Kubeconfig path for the ``kubernetes``/``operator`` sources' API access; empty: in-cluster config."""
    enrichment_kube_context: str = ""
    """Kubeconfig context to use (empty: the kubeconfig's current context)."""
    enrichment_operator_address: str = "retina-operator:9090"
    """``host:port`` of the operator's IP-cache gRPC service (``enrichment.source: operator``)."""
    enrichment_operator_tls: bool = False
    """TLS to the operator (also on when a CA, certificate or key file is given)."""
    enrichment_operator_ca_file: str = ""
    enrichment_operator_cert_file: str = ""
    enrichment_operator_key_file: str = ""
    enrichment_operator_server_name: str = ""
    enrichment_netns_filter: tuple[str, ...] = ("*",)
    """Globs of network-namespace names the ``netns`` source takes as pods."""
    drop_reason_scope: str = "all"
    """dropreason: ``all`` network namespaces (host and pods) or ``node`` (this namespace and its pods' only)."""
    drop_reason_ignore: tuple[str, ...] = ("NOT_DROPPED_YET", "CONSUMED", "NOT_SPECIFIED")
    """dropreason: kernel reasons that are not counted as drops (routine frees)."""
    tcp_retrans_scope: str = "all"
    """tcpretrans: ``all`` network namespaces or ``node``."""
    enable_conntrack_metrics: bool = False
    """``conntrack_*`` gauges from packetparser's conntrack map (updated by its sweep)."""
    enable_annotations: bool = False
    """Annotation opt-in (``retina.sh: observe``): only annotated namespaces/pods are observed at pod level."""
    bypass_lookup_ip_of_interest: bool = False
    """Track every packet even with annotations (no IP-of-interest filter in the kernel)."""
    filter_map_max_entries: int = 4096
    """Entries of the kernel IP-of-interest map (IPs or CIDRs)."""
    otlp_enabled: bool = False
    """Push the metrics over OTLP (docs/otlp.md)."""
    otlp_endpoint: str = ""
    """Collector URL; empty: the protocol's default (http://localhost:4317, or :4318/v1/metrics for HTTP)."""
    otlp_protocol: str = "grpc"
    otlp_interval_ns: int = 60 * _NS_PER_S
    otlp_timeout_ns: int = 10 * _NS_PER_S
    otlp_headers: tuple[tuple[str, str], ...] = ()
    otlp_insecure: Any = None
    """None: the endpoint's scheme decides (TLS without one)."""
    otlp_ca_file: str = ""
    otlp_cert_file: str = ""
    otlp_key_file: str = ""
    otlp_compression: str = "gzip"
    otlp_resource_attributes: tuple[tuple[str, str], ...] = ()
    metrics_configuration: Any = None
    """The ``metricsConfiguration`` mapping (MetricsConfiguration CRD spec), validated; None when absent."""
    warnings: tuple[str, ...] = ()
    """One message per Retina key that was given but is not used."""

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration with Retina's key names (nested ``apiServer``), as for ``/debug/config``.

        Durations are rendered as strings such as ``"30s"``; the result loads back to an equal ``Config``.
        """
        out: dict[str, Any] = {}
        for key in _KEYS:
            value = getattr(self, key.attr)
            if key.render is not None:
                value = key.render(value)
            elif isinstance(value, tuple):
                value = list(value)
            *sections, leaf = key.name.split(".")
            target = out
            for section in sections:
                target = target.setdefault(section, {})
            target[leaf] = value
        return out


# --------------------------------------------------------------------------------------------------------------
# Value parsers. Each takes a YAML value or an environment string and returns the Config value, or raises _Invalid.


class _Invalid(Exception):
    """A value was rejected; ``args[0]`` is an optional reason shown before the accepted values."""


_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _Invalid(None)


def _integer(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value.strip())
    raise _Invalid("not an integer")


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        number = _integer(value)
        if not low <= number <= high:
            raise _Invalid("out of range")
        return number

    return parse


def _sampling_rate(value: Any) -> int:
    number = _int_range(0, 2**32 - 1)(value)
    return number or 1  # 0 means 1, as in Retina


def _power_of_two(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        number = _int_range(low, high)(value)
        if number & (number - 1):
            raise _Invalid("not a power of two")
        return number

    return parse


def _ring_capacity(value: Any) -> int:
    number = _int_range(1, 2**20 - 1)(value)
    if (number + 1) & number:
        raise _Invalid("not one less than a power of two")
    return number


def _choice(*choices: str, aliases: Mapping[str, str] | None = None) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if isinstance(value, str):
            text = value.strip().lower()
            text = (aliases or {}).get(text, text)
            if text in choices:
                return text
        raise _Invalid(None)

    return parse


def _tcx(value: Any) -> str:
    if isinstance(value, str) and value.strip().lower() in ("auto", "off"):
        return value.strip().lower()
    return "auto" if _bool(value) else "off"  # YAML's `off` is the boolean false


def _duration_at_least(minimum_ns: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        try:
            ns = parse_duration(value)
        except ConfigError:
            raise _Invalid("not a duration") from None
        if ns < minimum_ns:
            raise _Invalid(f"below the minimum of {format_duration(minimum_ns)}")
        return ns

    return parse


def _text(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # e.g. a numeric node name
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise _Invalid(None)


def _abs_path(value: Any) -> str:
    path = _text(value)
    if not path.startswith("/"):
        raise _Invalid("not an absolute path")
    return path


def _path_or_empty(value: Any) -> str:
    if value in ("", None):
        return ""
    return _abs_path(value) if str(value).startswith("/") else _text(value)


def _reason_names(value: Any) -> tuple[str, ...]:
    out = []
    for item in _str_list(value):
        name = item.upper().removeprefix("SKB_DROP_REASON_")
        if not re.fullmatch(r"[A-Z0-9_]+", name):
            raise _Invalid(f"{item!r} is not a reason name")
        out.append(name)
    return tuple(dict.fromkeys(out))


def _str_list_tuple(value: Any) -> tuple[str, ...]:
    items = tuple(_str_list(value))
    if not items:
        raise _Invalid("empty list")
    return items


def _metrics_configuration(value: Any) -> Any:
    """The MetricsConfiguration spec, validated by the metrics module (its messages name the field)."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise _Invalid("not valid YAML/JSON") from None
    if not isinstance(value, dict):
        raise _Invalid("not a mapping")
    from retina_core.metricsconfig import parse_metrics_configuration

    parse_metrics_configuration(value)  # raises ConfigError naming metricsConfiguration.<field>
    return value


def _otlp_endpoint(value: Any) -> str:
    return "" if value in ("", None) else _text(value)


def _otlp_headers(value: Any) -> tuple[tuple[str, str], ...]:
    from metrics_module.otlp import parse_headers

    try:
        return tuple(parse_headers(value).items())
    except ValueError as exc:
        raise _Invalid(str(exc)) from None


def _otlp_attributes(value: Any) -> tuple[tuple[str, str], ...]:
    from metrics_module.otlp import parse_attributes

    try:
        return tuple(parse_attributes(value).items())
    except ValueError as exc:
        raise _Invalid(str(exc)) from None


def _str_list(value: Any) -> list[str]:
    """A YAML list of strings, or a comma-separated string (environment, or viper-style in the file)."""
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, list):
        items = value
    else:
        raise _Invalid("not a list")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise _Invalid(f"item {_show(item)} is not a string")
        item = item.strip()
        if item and item not in out:
            out.append(item)
    return out


def _plugins(value: Any) -> tuple[str, ...]:
    names = [name.lower() for name in _str_list(value)]
    for name in names:
        if name not in KNOWN_PLUGINS:
            raise _Invalid(f"unknown plugin {name!r}")
    return tuple(dict.fromkeys(names))


_IFNAME = re.compile(r"[^\s/:]{1,15}")  # Linux IFNAMSIZ is 16 including the NUL


def _interfaces(value: Any) -> tuple[str, ...]:
    names = _str_list(value)
    for name in names:
        if not _IFNAME.fullmatch(name) or name in (".", ".."):
            raise _Invalid(f"invalid interface name {name!r}")
    return tuple(names)


@dataclass(frozen=True)
class _Key:
    name: str  # dotted key as written in the file
    attr: str  # Config attribute
    parse: Callable[[Any], Any]
    accepted: str
    render: Callable[[Any], Any] | None = None  # for to_dict

    @property
    def env(self) -> str:
        return env_var_name(self.name)


_KEYS: tuple[_Key, ...] = (
    _Key("apiServer.host", "api_server_host", _text, "a non-empty host name or IP address"),
    _Key("apiServer.port", "api_server_port", _int_range(1, 65535), "an integer from 1 to 65535"),
    _Key("enabledPlugin", "enabled_plugins", _plugins,
         "a list (or comma-separated string) of: " + ", ".join(KNOWN_PLUGINS)),
    _Key("enablePodLevel", "enable_pod_level", _bool, "true, false (also 1/0, yes/no)"),
    _Key("dataAggregationLevel", "data_aggregation_level", _choice("low", "high"), "low, high"),
    _Key("dataSamplingRate", "data_sampling_rate", _sampling_rate,
         "an integer from 1 to 4294967295 (0 means 1)"),
    _Key("conntrackReportInterval", "conntrack_report_interval_ns", _duration_at_least(_NS_PER_S),
         "a duration of at least 1s such as '30s', '1m30s', '1500ms', or a number of seconds", format_duration),
    _Key("conntrackMapSize", "conntrack_map_size", _int_range(1024, 16777216), "an integer from 1024 to 16777216"),
    _Key("packetParserRingBufferSize", "ring_buffer_size", _power_of_two(_PAGE_SIZE, 2**30),
         f"a power of two from {_PAGE_SIZE} (the page size) to 1073741824 (1 GiB), in bytes"),
    _Key("enableTCX", "enable_tcx", _tcx, "auto, off (true means auto, false means off)"),
    _Key("hostInterfaces", "host_interfaces", _interfaces,
         "a list (or comma-separated string) of interface names of 1 to 15 characters"),
    _Key("nodeName", "node_name", _text, "a non-empty string"),
    _Key("logLevel", "log_level", _choice("debug", "info", "warning", "error", aliases={"warn": "warning"}),
         "debug, info, warning (or warn), error"),
    _Key("outputRingCapacity", "output_ring_capacity", _ring_capacity,
         "one less than a power of two, 2^n - 1 with 1 <= n <= 20 (1, 3, 7, ... 4095, ... 1048575)"),
    _Key("bpfPinPath", "bpf_pin_path", _abs_path, "an absolute path"),
    _Key("remoteContext", "remote_context", _bool, "true, false (also 1/0, yes/no)"),
    _Key("enrichment.source", "enrichment_source",
         _choice("none", "inventory", "netns", "kubernetes", "operator"),
         "none, inventory, netns, kubernetes, operator"),
    _Key("enrichment.inventoryFile", "enrichment_inventory_file", _path_or_empty, "a file path"),
    _Key("metricsIntervalDuration", "metrics_interval_ns", _duration_at_least(_NS_PER_S // 10),
         "a duration of at least 100ms such as '10s' (Retina's deprecated metricsInterval, in seconds, also works)",
         format_duration),
    _Key("enrichment.kubeconfig", "enrichment_kubeconfig", _path_or_empty, "a kubeconfig file path, or empty"),
    _Key("enrichment.kubeContext", "enrichment_kube_context", _path_or_empty, "a kubeconfig context name, or empty"),
    _Key("enrichment.operatorAddress", "enrichment_operator_address", _text, "host:port of the operator"),
    _Key("enrichment.operatorTLS", "enrichment_operator_tls", _bool, "true, false (also 1/0, yes/no)"),
    _Key("enrichment.operatorCAFile", "enrichment_operator_ca_file", _path_or_empty, "a file path, or empty"),
    _Key("enrichment.operatorCertFile", "enrichment_operator_cert_file", _path_or_empty, "a file path, or empty"),
    _Key("enrichment.operatorKeyFile", "enrichment_operator_key_file", _path_or_empty, "a file path, or empty"),
    _Key("enrichment.operatorServerName", "enrichment_operator_server_name", _path_or_empty,
         "a TLS server name, or empty"),
    _Key("enrichment.netnsFilter", "enrichment_netns_filter", _str_list_tuple,
         "a list (or comma-separated string) of glob patterns of network namespace names"),
    _Key("dropReason.scope", "drop_reason_scope", _choice("all", "node"), "all, node"),
    _Key("dropReason.ignoreReasons", "drop_reason_ignore", _reason_names,
         "a list of kernel drop reason names (e.g. NOT_SPECIFIED), with or without the SKB_DROP_REASON_ prefix"),
    _Key("tcpRetrans.scope", "tcp_retrans_scope", _choice("all", "node"), "all, node"),
    _Key("enableConntrackMetrics", "enable_conntrack_metrics", _bool, "true, false (also 1/0, yes/no)"),
    _Key("enableAnnotations", "enable_annotations", _bool, "true, false (also 1/0, yes/no)"),
    _Key("bypassLookupIPOfInterest", "bypass_lookup_ip_of_interest", _bool, "true, false (also 1/0, yes/no)"),
    _Key("filterMapMaxEntries", "filter_map_max_entries", _int_range(1, 1048576), "an integer from 1 to 1048576"),
    _Key("otlp.enabled", "otlp_enabled", _bool, "true, false (also 1/0, yes/no)"),
    _Key("otlp.endpoint", "otlp_endpoint", _otlp_endpoint,
         "a URL such as 'http://otel-collector:4317' or 'https://host/v1/metrics', host:port, or empty"),
    _Key("otlp.protocol", "otlp_protocol", _choice("grpc", "http/protobuf", aliases={"http": "http/protobuf"}),
         "grpc, http/protobuf (or http)"),
    _Key("otlp.interval", "otlp_interval_ns", _duration_at_least(_NS_PER_S), "a duration of at least 1s such as '60s'",
         format_duration),
    _Key("otlp.timeout", "otlp_timeout_ns", _duration_at_least(_NS_PER_S // 10),
         "a duration of at least 100ms such as '10s'", format_duration),
    _Key("otlp.headers", "otlp_headers", _otlp_headers,
         "a mapping of header names to strings, or 'name=value,name2=value2' (URL-encoded values)",
         lambda pairs: {k: "<redacted>" for k, _ in pairs}),
    _Key("otlp.insecure", "otlp_insecure", _bool, "true, false (also 1/0, yes/no), or null (from the scheme)"),
    _Key("otlp.caFile", "otlp_ca_file", _path_or_empty, "a file path, or empty"),
    _Key("otlp.certFile", "otlp_cert_file", _path_or_empty, "a file path, or empty"),
    _Key("otlp.keyFile", "otlp_key_file", _path_or_empty, "a file path, or empty"),
    _Key("otlp.compression", "otlp_compression", _choice("gzip", "none"), "gzip, none"),
    _Key("otlp.resourceAttributes", "otlp_resource_attributes", _otlp_attributes,
         "a mapping of attribute names to strings, or 'name=value,...'", dict),
    _Key("metricsConfiguration", "metrics_configuration", _metrics_configuration,
         "a mapping with the MetricsConfiguration CRD spec (docs/metrics.md)"),
)
_BY_NAME: dict[str, _Key] = {key.name: key for key in _KEYS}
_SECTIONS: dict[str, tuple[str, ...]] = {}  # "apiServer" -> ("host", "port")
for _k in _KEYS:
    if "." in _k.name:
        _section, _leaf = _k.name.split(".", 1)
        _SECTIONS[_section] = _SECTIONS.get(_section, ()) + (_leaf,)
_TOP_LEVEL: tuple[str, ...] = tuple(dict.fromkeys(k.name.split(".", 1)[0] for k in _KEYS))


def env_var_name(key: str) -> str:
    """The environment variable that overrides ``key``: ``apiServer.port`` → ``RETINA_APISERVER_PORT``."""
    return "RETINA_" + key.upper().replace(".", "_")


# --------------------------------------------------------------------------------------------------------------
# Loading


class _Loader(yaml.SafeLoader):
    """Safe loader that rejects duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # unhashable: the base constructor reports it
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {_show(key)}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte offset {exc.start})") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError(f"config file {path}: invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: invalid YAML: {' '.join(str(exc).split())}") from None


def _unknown_key(path: str, key: Any, prefix: str, candidates: tuple[str, ...]) -> ConfigError:
    dotted = prefix + key if isinstance(key, str) else None
    if dotted is None:
        where = prefix.rstrip(".") or "the top level"
        return ConfigError(f"config file {path}: key {_show(key)} under {where} is not a string")
    lowered = {c.lower(): c for c in candidates}
    match = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.6)
    if match:
        hint = f" (did you mean {prefix + lowered[match[0]]!r}?)"
    else:
        hint = "; known keys: " + ", ".join(prefix + c for c in candidates if c not in RETINA_IGNORED_KEYS)
    return ConfigError(f"config file {path}: unknown key {dotted!r}{hint}")


def _collect_file(path: str, data: Any, raw: dict[str, tuple[Any, str]], warnings: list[str]) -> None:
    """Check the file's keys and record each known key's raw value as ``raw[dotted] = (value, source)``."""
    if data is None:
        return  # empty file
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: expected a mapping of keys to values at the top level, got {_show(data)}"
        )
    source = f"in {path}"
    for key, value in data.items():
        if key in _SECTIONS:
            if value is None:
                continue
            leaves = _SECTIONS[key]
            if not isinstance(value, dict):
                accepted = "a mapping with keys " + ", ".join(leaves)
                raise ConfigError(f"{key}: invalid value {_show(value)} {source}; accepted: {accepted}")
            for leaf, leaf_value in value.items():
                if leaf not in leaves:
                    raise _unknown_key(path, leaf, key + ".", leaves)
                raw[f"{key}.{leaf}"] = (leaf_value, source)
        elif key in _BY_NAME:
            raw[key] = (value, source)
        elif key == _LEGACY_INTERVAL:
            raw[key] = (value, source)
        elif key in RETINA_IGNORED_KEYS:
            warnings.append(
                f"config key {key!r} {source} is a Retina setting that retina-exporter does not use; ignored"
            )
        else:
            raise _unknown_key(path, key, "", _TOP_LEVEL + (_LEGACY_INTERVAL,) + RETINA_IGNORED_KEYS)


def load_config(path: str | None, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate the configuration.

    ``path`` is the YAML file, or ``None`` for defaults plus environment. ``env`` defaults to ``os.environ``;
    ``RETINA_<KEY>`` variables override the file. A ``null`` value in the file means the default.
    Raises :class:`ConfigError` (one-line message) on any problem.
    """
    env = os.environ if env is None else env
    raw: dict[str, tuple[Any, str]] = {}
    warnings: list[str] = []
    if path is not None:
        _collect_file(path, _read_yaml(path), raw, warnings)
    for key in _KEYS:
        value = env.get(key.env)
        if value is not None and value.strip():
            raw[key.name] = (value.strip(), f"from environment variable {key.env}")
    for name in RETINA_IGNORED_KEYS:
        var = env_var_name(name)
        if env.get(var, "").strip():
            warnings.append(
                f"environment variable {var} sets Retina key {name!r}, which retina-exporter does not use; ignored"
            )

    # Retina's deprecated metricsInterval (whole seconds) stands in for metricsIntervalDuration when that is unset.
    value = env.get(env_var_name(_LEGACY_INTERVAL), "").strip()
    if value:
        raw[_LEGACY_INTERVAL] = (value, f"from environment variable {env_var_name(_LEGACY_INTERVAL)}")
    legacy_interval = raw.pop(_LEGACY_INTERVAL, None)
    if legacy_interval is not None and legacy_interval[0] is not None and (
        "metricsIntervalDuration" not in raw or raw["metricsIntervalDuration"][0] is None
    ):
        raw["metricsIntervalDuration"] = legacy_interval
    values: dict[str, Any] = {}
    for key in _KEYS:
        if key.name not in raw or raw[key.name][0] is None:
            continue
        value, source = raw[key.name]
        try:
            values[key.attr] = key.parse(value)
        except _Invalid as exc:
            reason = f": {exc.args[0]}" if exc.args and exc.args[0] else ""
            raise ConfigError(
                f"{key.name}: invalid value {_show(value)} {source}{reason}; accepted: {key.accepted}"
            ) from None
    cfg = dataclasses.replace(Config(), **values, warnings=tuple(warnings))
    if cfg.otlp_enabled:
        from metrics_module.otlp import check_settings

        try:
            check_settings(endpoint=cfg.otlp_endpoint or None, protocol=cfg.otlp_protocol, insecure=cfg.otlp_insecure,
                           ca_file=cfg.otlp_ca_file or None, cert_file=cfg.otlp_cert_file or None,
                           key_file=cfg.otlp_key_file or None)
        except ValueError as exc:
            raise ConfigError(f"otlp: {exc}") from None
    if cfg.enrichment_source == "inventory" and not cfg.enrichment_inventory_file:
        raise ConfigError(
            "enrichment.inventoryFile: required when enrichment.source is 'inventory'; "
            "accepted: the path of an inventory YAML file"
        )
    return cfg
