"""Agent configuration: a YAML file plus ``RETINA_<KEY>`` environment overrides, validated at start-up.

Key names follow Retina's ``config.yaml`` where Retina has the knob (``apiServer.port``, ``enabledPlugin``,
``dataAggregationLevel`` …). The reference for every key is ``docs/config.md``.

Precedence: defaults < file < environment. The environment variable of a key is ``RETINA_`` plus the key
upper-cased with dots replaced by ``_`` (``apiServer.port`` → ``RETINA_APISERVER_PORT``,
``enablePodLevel`` → ``RETINA_ENABLEPODLEVEL``). Only those names are read: other ``RETINA_*`` variables
(Kubernetes injects ``RETINA_PORT``, ``RETINA_SERVICE_HOST`` … for a Service named ``retina``) are ignored, and so
is an empty variable (as viper does). Besides them, ``NODE_NAME`` and ``NODE_IP`` (which Retina's DaemonSet
injects) set ``nodeName`` and ``nodeIP`` when neither the ``RETINA_*`` variable nor the file does.

Every problem raises :class:`ConfigError` with a one-line message naming the key (dotted path), the bad value, where
it came from and what is accepted. Retina keys that this agent does not use (:data:`RETINA_IGNORED_KEYS`) are
accepted with a warning in :attr:`Config.warnings`; any other key is an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import mmap
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from enricher import ENRICHMENT_SECTION, EnrichmentConfig
from metrics_module import OTLP_SECTION, OtlpConfig
from retina_core.metricsconfig import MetricsConfiguration, parse_metrics_configuration
from retina_core.settings import (BOOL_ACCEPTED, Invalid, Key, Section, abs_path, boolean, choice,
                                  duration_at_least, env_var_name, int_range, str_list, text)
from retina_core.units import NS_PER_S, ConfigError, format_duration, parse_duration
from retina_core.units import show_value as _show
from retina_exporter.hubble.config import HUBBLE_SECTION, HubbleConfig
from retina_exporter.plugins.dns.config import DNS_LATENCY_SECTION, DnsLatencyConfig
from retina_exporter.plugins.dropreason.config import DROP_REASON_SECTION, DropReasonConfig
from retina_exporter.plugins.tcpretrans.config import TCP_RETRANS_SECTION, TcpRetransConfig
from retina_exporter.plugins.packetparser.config import (CONNTRACK_LIFETIMES_SECTION, TCP_METRICS_SECTION,
                                                         ConntrackLifetimes, TcpMetricsConfig,
                                                         check_connect_timeout)

__all__ = [
    "ApiServerConfig",
    "Config",
    "DebugServerConfig",
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
#: Together with the keys parsed below they cover every field of Retina's ``Config`` struct (pkg/config) and every
#: key of the ``retina-config`` ConfigMap its Helm chart renders. When a feature lands, move its key from here into
#: a section (and docs/config.md).
RETINA_IGNORED_KEYS: tuple[str, ...] = (
    "enableTelemetry",  # Application Insights telemetry
    "telemetryInterval",  # its heartbeat interval
    "packetParserRingBuffer",  # perf array vs ring buffer: packetparser here always uses a BPF ring buffer
    "enableRetinaEndpoint",  # Retina's RetinaEndpoint CRD cache (always true in Retina); see enrichment.source
    "monitorSockPath",  # Cilium monitor socket of Retina's hubble control plane
)

#: Variables that Retina's DaemonSet injects (fieldRef spec.nodeName / status.hostIP), read when neither the
#: ``RETINA_*`` variable nor the file sets the key: ``RETINA_NODENAME`` > ``nodeName`` > ``NODE_NAME`` > host name.
_RETINA_DAEMONSET_ENV: tuple[tuple[str, str], ...] = (("nodeName", "NODE_NAME"), ("nodeIP", "NODE_IP"))

_LEGACY_INTERVAL = "metricsInterval"  # Retina's deprecated seconds-only form of metricsIntervalDuration
_METRICS_CONFIGURATION = "metricsConfiguration"
_PAGE_SIZE = mmap.PAGESIZE  # BPF ring buffers must be a power-of-two multiple of the page size


@dataclass(frozen=True)
class ApiServerConfig:
    """The ``apiServer`` section: where the HTTP server (``/metrics``, ``/debug/*``) listens."""

    host: str = "0.0.0.0"
    port: int = 10093


@dataclass(frozen=True)
class DebugServerConfig:
    """The ``debugServer`` section: where ``/debug/*`` is served. With ``port`` unset, on the ``apiServer`` address;
    with a port, on ``host:port`` alone (the ``apiServer`` port answers 404 for ``/debug/*``); ``enabled: false``
    serves it nowhere."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int | None = None


@dataclass(frozen=True)
class Config:
    """The effective agent configuration: Retina's top-level keys as fields, each section as its owner's typed
    object. Defaults here (and in the section classes) are the documented defaults."""

    enabled_plugins: tuple[str, ...] = ("dropreason", "packetforward", "linuxutil", "dns")
    """Plugins to run, in the configured order, without duplicates."""
    enable_pod_level: bool = False
    """Pod-level (advanced) metrics and flow enrichment."""
    data_aggregation_level: str = "low"
    """``"low"`` (host interfaces too, every packet reported) or ``"high"`` (pod veths, conntrack-gated)."""
    data_sampling_rate: int = 1
    """Report 1 packet in N (1 = every packet)."""
    conntrack_report_interval_ns: int = 30 * NS_PER_S
    """Periodic report interval per connection and direction, in nanoseconds."""
    conntrack_map_size: int = 262144
    """Entries in the kernel conntrack LRU hash."""
    ring_buffer_size: int = 8 * 1024 * 1024
    """Size of the packetparser BPF ring buffer, in bytes (a power of two)."""
    merge_queued_events: bool = False
    """packetparser: merge events of the same flow that wait in the ring buffer together (counts stay exact;
    Hubble and flow logs then see one flow for them)."""
    enable_tcx: str = "auto"
    """``"auto"``: attach with TCX where the kernel has it (>= 6.6), else clsact; ``"off"``: always clsact."""
    host_interfaces: tuple[str, ...] = ()
    """Host (uplink) interface names to hook; empty means detect them."""
    node_name: str = field(default_factory=socket.gethostname)
    """Name of this node in flows and metrics."""
    node_ip: str = ""
    """This node's IP address (Retina's ``NODE_IP``); empty when unknown. Shown in ``/debug/config``."""
    log_level: str = "info"
    """Level of the agent's own loggers: ``"debug"``, ``"info"``, ``"warning"``, ``"error"`` or ``"critical"``."""
    output_ring_capacity: int = 4095
    """Slots in the in-process flow ring (2^n - 1)."""
    bpf_pin_path: str = "/sys/fs/bpf/retina"
    """bpffs directory where maps and links are pinned (with ``bpf_pinning``)."""
    bpf_pinning: bool = False
    """Keep packetparser's and packetforward's TCX links, conntrack, ring buffer and counters pinned under
    ``bpf_pin_path`` so a restarted agent takes them over (``retina-exporter cleanup --pins`` removes them)."""
    remote_context: bool = False
    """Advanced metrics with ``source_``/``destination_`` labels (remote context) instead of local context."""
    metrics_interval_ns: int = 10 * NS_PER_S
    """How often node-level plugins (linuxutil, packetforward) read their sources, in nanoseconds."""
    enable_conntrack_metrics: bool = False
    """``conntrack_*`` gauges from packetparser's conntrack map (updated by its sweep)."""
    enable_annotations: bool = False
    """Annotation opt-in (``retina.sh: observe``): only annotated namespaces/pods are observed at pod level."""
    bypass_lookup_ip_of_interest: bool = False
    """Track every packet even with annotations (no IP-of-interest filter in the kernel)."""
    filter_map_max_entries: int = 4096
    """Entries of the kernel IP-of-interest map (IPs or CIDRs)."""
    metrics_configuration: MetricsConfiguration | None = None
    """The ``metricsConfiguration`` (MetricsConfiguration CRD spec), parsed; None when absent."""
    api_server: ApiServerConfig = ApiServerConfig()
    debug_server: DebugServerConfig = DebugServerConfig()
    enrichment: EnrichmentConfig = EnrichmentConfig()
    drop_reason: DropReasonConfig = DropReasonConfig()
    tcp_retrans: TcpRetransConfig = TcpRetransConfig()
    dns_latency: DnsLatencyConfig = DnsLatencyConfig()
    tcp_metrics: TcpMetricsConfig = TcpMetricsConfig()
    conntrack_lifetimes: ConntrackLifetimes = ConntrackLifetimes()
    otlp: OtlpConfig = OtlpConfig()
    hubble: HubbleConfig = HubbleConfig()
    warnings: tuple[str, ...] = ()
    """One message per Retina key that was given but is not used."""

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration with Retina's key names (sections nested), as for ``/debug/config``.

        Durations are rendered as strings such as ``"30s"``; the result loads back to an equal ``Config``.
        """
        out = TOP_LEVEL.to_dict(self)
        out[_METRICS_CONFIGURATION] = (
            self.metrics_configuration.to_dict() if self.metrics_configuration is not None else None
        )
        for section, attr in SECTIONS:
            out[section.name] = section.to_dict(getattr(self, attr))
        return out


# --------------------------------------------------------------------------------------------------------------
# Top-level value parsers


def _sampling_rate(value: Any) -> int:
    number = int_range(0, 2**32 - 1)(value)
    return number or 1  # 0 means 1, as in Retina


def _power_of_two(low: int, high: int):
    def parse(value: Any) -> int:
        number = int_range(low, high)(value)
        if number & (number - 1):
            raise Invalid("not a power of two")
        return number

    return parse


def _ring_capacity(value: Any) -> int:
    number = int_range(1, 2**20 - 1)(value)
    if (number + 1) & number:
        raise Invalid("not one less than a power of two")
    return number


def _tcx(value: Any) -> str:
    if isinstance(value, str) and value.strip().lower() in ("auto", "off"):
        return value.strip().lower()
    return "auto" if boolean(value) else "off"  # YAML's `off` is the boolean false


def _plugins(value: Any) -> tuple[str, ...]:
    names = [name.lower() for name in str_list(value)]
    for name in names:
        if name not in KNOWN_PLUGINS:
            raise Invalid(f"unknown plugin {name!r}")
    return tuple(dict.fromkeys(names))


_IFNAME = re.compile(r"[^\s/:]{1,15}")  # Linux IFNAMSIZ is 16 including the NUL


def _interfaces(value: Any) -> tuple[str, ...]:
    names = str_list(value)
    for name in names:
        if not _IFNAME.fullmatch(name) or name in (".", ".."):
            raise Invalid(f"invalid interface name {name!r}")
    return tuple(names)


def _ip_or_empty(value: Any) -> str:
    if value in ("", None):
        return ""
    try:
        return str(ipaddress.ip_address(text(value)))
    except ValueError:
        raise Invalid("not an IP address") from None


def _metrics_configuration_spec(value: Any) -> dict:
    """The MetricsConfiguration spec as a mapping (a YAML/JSON string in an environment variable); its fields are
    validated once, by :func:`retina_core.metricsconfig.parse_metrics_configuration`, in :func:`load_config`."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except (yaml.YAMLError, RecursionError):  # RecursionError: nested too deeply
            raise Invalid("not valid YAML/JSON") from None
    if not isinstance(value, dict):
        raise Invalid("not a mapping")
    return value


TOP_LEVEL = Section("", Config, (
    Key("enabledPlugin", "enabled_plugins", _plugins,
        "a list (or comma-separated string) of: " + ", ".join(KNOWN_PLUGINS)),
    Key("enablePodLevel", "enable_pod_level", boolean, BOOL_ACCEPTED),
    Key("dataAggregationLevel", "data_aggregation_level", choice("low", "high"), "low, high"),
    Key("dataSamplingRate", "data_sampling_rate", _sampling_rate, "an integer from 1 to 4294967295 (0 means 1)"),
    Key("conntrackReportInterval", "conntrack_report_interval_ns", duration_at_least(NS_PER_S),
        "a duration of at least 1s such as '30s', '1m30s', '1500ms', or a number of seconds", format_duration),
    Key("conntrackMapSize", "conntrack_map_size", int_range(1024, 16777216), "an integer from 1024 to 16777216"),
    Key("packetParserRingBufferSize", "ring_buffer_size", _power_of_two(_PAGE_SIZE, 2**30),
        f"a power of two from {_PAGE_SIZE} (the page size) to 1073741824 (1 GiB), in bytes"),
    Key("enableTCX", "enable_tcx", _tcx, "auto, off (true means auto, false means off)"),
    Key("hostInterfaces", "host_interfaces", _interfaces,
        "a list (or comma-separated string) of interface names of 1 to 15 characters"),
    Key("nodeName", "node_name", text, "a non-empty string"),
    Key("nodeIP", "node_ip", _ip_or_empty, "an IPv4 or IPv6 address, or empty"),
    Key("logLevel", "log_level", choice("debug", "info", "warning", "error", "critical",
                                        aliases={"warn": "warning", "panic": "critical", "fatal": "critical"}),
        "debug, info, warning (or warn), error, critical (or panic, fatal)"),
    Key("outputRingCapacity", "output_ring_capacity", _ring_capacity,
        "one less than a power of two, 2^n - 1 with 1 <= n <= 20 (1, 3, 7, ... 4095, ... 1048575)"),
    Key("bpfPinPath", "bpf_pin_path", abs_path, "an absolute path"),
    Key("bpfPinning", "bpf_pinning", boolean, BOOL_ACCEPTED),
    Key("remoteContext", "remote_context", boolean, BOOL_ACCEPTED),
    Key("metricsIntervalDuration", "metrics_interval_ns", duration_at_least(NS_PER_S // 10),
        "a duration of at least 100ms such as '10s' (Retina's deprecated metricsInterval, in seconds, also works)",
        format_duration),
    Key("enableConntrackMetrics", "enable_conntrack_metrics", boolean, BOOL_ACCEPTED),
    Key("enableAnnotations", "enable_annotations", boolean, BOOL_ACCEPTED),
    Key("bypassLookupIPOfInterest", "bypass_lookup_ip_of_interest", boolean, BOOL_ACCEPTED),
    Key("filterMapMaxEntries", "filter_map_max_entries", int_range(1, 1048576), "an integer from 1 to 1048576"),
    Key("mergeQueuedEvents", "merge_queued_events", boolean, BOOL_ACCEPTED),
))
# The metricsConfiguration key: read as a mapping here, parsed into a MetricsConfiguration once in load_config
# (the parse depends on remoteContext).
_MC_KEY = Key(_METRICS_CONFIGURATION, "metrics_configuration", _metrics_configuration_spec,
              "a mapping with the MetricsConfiguration CRD spec (docs/metrics.md)")
_MC_SECTION = Section("", dict, (_MC_KEY,))

API_SERVER_SECTION = Section("apiServer", ApiServerConfig, (
    Key("host", "host", text, "a non-empty host name or IP address"),
    Key("port", "port", int_range(1, 65535), "an integer from 1 to 65535"),
))

DEBUG_SERVER_SECTION = Section("debugServer", DebugServerConfig, (
    Key("enabled", "enabled", boolean, BOOL_ACCEPTED),
    Key("host", "host", text, "a non-empty host name or IP address"),
    Key("port", "port", int_range(1, 65535), "an integer from 1 to 65535, or null (serve /debug/* on apiServer.port)"),
))

#: Every section, each parsed by its owner's declaration, and the Config field that holds it.
SECTIONS: tuple[tuple[Section, str], ...] = (
    (API_SERVER_SECTION, "api_server"),
    (DEBUG_SERVER_SECTION, "debug_server"),
    (ENRICHMENT_SECTION, "enrichment"),
    (HUBBLE_SECTION, "hubble"),
    (DROP_REASON_SECTION, "drop_reason"),
    (TCP_RETRANS_SECTION, "tcp_retrans"),
    (DNS_LATENCY_SECTION, "dns_latency"),
    (TCP_METRICS_SECTION, "tcp_metrics"),
    (CONNTRACK_LIFETIMES_SECTION, "conntrack_lifetimes"),
    (OTLP_SECTION, "otlp"),
)
_SECTION_LEAVES: dict[str, tuple[str, ...]] = {s.name: tuple(k.name for k in s.keys) for s, _ in SECTIONS}
_TOP_KEYS: tuple[str, ...] = tuple(k.name for k in TOP_LEVEL.keys) + (_METRICS_CONFIGURATION,)
_TOP_LEVEL_NAMES: tuple[str, ...] = _TOP_KEYS + tuple(_SECTION_LEAVES)
_ALL_DOTTED: tuple[str, ...] = _TOP_KEYS + tuple(n for s, _ in SECTIONS for n in s.dotted_names())


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
    except RecursionError:  # PyYAML composes and constructs recursively
        raise ConfigError(f"config file {path}: invalid YAML: nested too deeply") from None


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
        if key in _SECTION_LEAVES:
            if value is None:
                continue
            leaves = _SECTION_LEAVES[key]
            if not isinstance(value, dict):
                accepted = "a mapping with keys " + ", ".join(leaves)
                raise ConfigError(f"{key}: invalid value {_show(value)} {source}; accepted: {accepted}")
            groups = {leaf.split(".", 1)[0] for leaf in leaves if "." in leaf}  # e.g. hubble.tls.certFile
            for leaf, leaf_value in value.items():
                if leaf in groups and isinstance(leaf_value, dict):
                    for inner, inner_value in leaf_value.items():
                        if f"{leaf}.{inner}" not in leaves:
                            raise _unknown_key(path, inner, f"{key}.{leaf}.",
                                               tuple(n.split(".", 1)[1] for n in leaves if n.startswith(leaf + ".")))
                        raw[f"{key}.{leaf}.{inner}"] = (inner_value, source)
                    continue
                if leaf not in leaves:
                    raise _unknown_key(path, leaf, key + ".", leaves)
                raw[f"{key}.{leaf}"] = (leaf_value, source)
        elif key in _TOP_KEYS or key == _LEGACY_INTERVAL:
            raw[key] = (value, source)
        elif key in RETINA_IGNORED_KEYS:
            warnings.append(
                f"config key {key!r} {source} is a Retina setting that retina-exporter does not use; ignored"
            )
        else:
            raise _unknown_key(path, key, "", _TOP_LEVEL_NAMES + (_LEGACY_INTERVAL,) + RETINA_IGNORED_KEYS)


def load_config(path: str | None, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate the configuration.

    ``path`` is the YAML file, or ``None`` for defaults plus environment. ``env`` defaults to ``os.environ``;
    ``RETINA_<KEY>`` variables override the file. A ``null`` value in the file means the default.
    Each section is parsed once, by its owner's declaration. Raises :class:`ConfigError` (one-line message) on
    any problem.
    """
    env = os.environ if env is None else env
    raw: dict[str, tuple[Any, str]] = {}
    warnings: list[str] = []
    if path is not None:
        _collect_file(path, _read_yaml(path), raw, warnings)
    for name in _ALL_DOTTED:
        var = env_var_name(name)
        value = env.get(var)
        if value is not None and value.strip():
            raw[name] = (value.strip(), f"from environment variable {var}")
    # Retina's DaemonSet variables stand in for a key that neither RETINA_<KEY> nor the file sets.
    for name, var in _RETINA_DAEMONSET_ENV:
        value = env.get(var, "").strip()
        if value and raw.get(name, (None, ""))[0] is None:
            raw[name] = (value, f"from environment variable {var}")
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

    sections = {attr: section.parse(raw) for section, attr in SECTIONS}
    cfg = TOP_LEVEL.parse(raw, warnings=tuple(warnings), **sections)
    # hubble.eventBufferCapacity is Cilium's name for the same flow ring as outputRingCapacity.
    buffer = cfg.hubble.event_buffer_capacity
    if buffer is not None:
        if "outputRingCapacity" in raw and raw["outputRingCapacity"][0] is not None \
                and buffer != cfg.output_ring_capacity:
            raise ConfigError(
                f"hubble.eventBufferCapacity ({buffer}) and outputRingCapacity ({cfg.output_ring_capacity}) size the "
                "same flow ring; give one of them, or the same value")
        cfg = dataclasses.replace(cfg, output_ring_capacity=buffer)
    check_connect_timeout(cfg.tcp_metrics, cfg.conntrack_lifetimes)
    spec = _MC_SECTION.parse(raw).get("metrics_configuration")
    if spec is not None:
        mc = parse_metrics_configuration(spec, path=_METRICS_CONFIGURATION, remote_context=cfg.remote_context)
        cfg = dataclasses.replace(cfg, metrics_configuration=mc)
    return cfg
