"""The advanced-metrics configuration: Retina's ``MetricsConfiguration`` spec, validated.

Shape (the CRD's ``spec``, ``retina.sh/v1alpha1``, exactly as Retina; see docs/metrics.md)::

    contextOptions:                 # required, non-empty
    - metricName: forward_count     # one of ACCEPTED_METRIC_NAMES, any case
      sourceLabels: [ip, podname]   # ip | namespace | podname | workload | service | port | zone, any case
      destinationLabels: [ip]       # only used in remote context
      additionalLabels: [is_reply]  # only is_reply has an effect (forward metrics), others: warning
      ttl: 5m                       # Go duration; empty or 0 = never expire
    namespaces:                     # optional; at most ONE of include / exclude
      include: [default]            # neither set = all namespaces (Retina requires exactly one)
    # ours, not in Retina's CRD:
    podLabelKeys: [app.kubernetes.io/name]   # pod labels copied into metric labels (label_app_kubernetes_io_name)
    maxSeriesPerMetric: 100000               # series cap per metric
    podDeletionGrace: 30s                    # series of a pod that left the IP cache go after this; 0 = at ttl

A whole ``MetricsConfiguration`` object (``apiVersion``/``kind``/``metadata``/``spec``) is accepted too; only its
``spec`` is used.

Every problem raises :class:`retina_exporter.config.ConfigError` with a one-line message that starts with the
field path (``metricsConfiguration.contextOptions[1].sourceLabels[0]: unknown label 'pod'; accepted: …``).
Things Retina accepts but that have no effect here give a warning in :attr:`MetricsConfiguration.warnings`.

Metric names are dispatched by substring as in Retina's metrics module (``forward`` → adv_forward_*, ``drop`` →
adv_drop_*, ``tcp``+``flag`` → adv_tcpflags_count, ``tcp``+``retrans`` → adv_tcpretrans_count, ``dns`` →
adv_dns_*, ``node_apiserver`` → API-server latency; ours: ``interzone`` → adv_interzone_*, ``dns`` with ``latency`` or
``unanswered`` → adv_dns_latency_seconds / adv_dns_unanswered_queries). The API-server latency metrics are **not implemented yet**:
they are accepted with a warning (not an error), so that Retina's default metric set (what ``enableAnnotations``
uses) loads unchanged. The other accepted names (``tcp_state``, ``udp_connection_stats`` …) produce nothing in
Retina either: accepted with a warning.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

from retina_core.units import ConfigError, format_duration, parse_duration

__all__ = [
    "ACCEPTED_CONTEXT_LABELS",
    "ACCEPTED_METRIC_NAMES",
    "ContextOption",
    "DEFAULT_MAX_SERIES_PER_METRIC",
    "MetricsConfiguration",
    "family_names",
    "metric_kind",
    "parse_metrics_configuration",
    "sanitize_pod_label_key",
]

#: Retina's ``utils.IsAdvancedMetric`` list, in its order.
ACCEPTED_METRIC_NAMES: tuple[str, ...] = (
    "drop_count",
    "drop_bytes",
    "forward_count",
    "forward_bytes",
    "node_connectivity_status",
    "node_connectivity_latency_seconds",
    "tcp_state",
    "tcp_connection_remote",
    "tcp_connection_stats",
    "tcp_flag_gauges",
    "tcp_retransmission_count",
    "ip_connection_stats",
    "udp_connection_stats",
    "dns_request_count",
    "dns_response_count",
    "node_apiserver_latency",
    "node_apiserver_handshake_latency",
    "node_apiserver_no_response",
    # ours (issue 14)
    "dns_latency_seconds",
    "dns_unanswered_queries",
    "interzone_bytes",
    "interzone_count",
    # ours (issue 14), with packetparser: TCP connect latency, failed connections, round-trip time
    "tcp_connect_latency_seconds",
    "tcp_failed_connections",
    "tcp_rtt_seconds",
)

#: Context label options, in the fixed order their labels appear in (Retina's ``ContextOptions.getLabels``).
ACCEPTED_CONTEXT_LABELS: tuple[str, ...] = ("ip", "namespace", "podname", "workload", "service", "port", "zone")

DEFAULT_MAX_SERIES_PER_METRIC = 100_000
DEFAULT_POD_DELETION_GRACE_NS = 30_000_000_000
MAX_MAX_SERIES_PER_METRIC = 10_000_000

# Metric kinds (what a metricName dispatches to).
KIND_FORWARD = "forward"
KIND_DROP = "drop"
KIND_TCPFLAGS = "tcpflags"
KIND_TCPRETRANS = "tcpretrans"
KIND_DNS = "dns"
KIND_APISERVER = "apiserver"
KIND_DNS_LATENCY = "dns_latency"  # ours: adv_dns_latency_seconds, adv_dns_unanswered_queries
KIND_INTERZONE = "interzone"  # ours: adv_interzone_bytes, adv_interzone_count
KIND_TCP_CONNECT = "tcp_connect"
KIND_TCP_FAILED = "tcp_failed"
KIND_TCP_RTT = "tcp_rtt"

_SPEC_KEYS = ("contextOptions", "namespaces", "podLabelKeys", "maxSeriesPerMetric", "podDeletionGrace")
_CR_KEYS = ("apiVersion", "kind", "metadata", "spec", "status")
_OPTION_KEYS = ("metricName", "sourceLabels", "destinationLabels", "additionalLabels", "ttl")
_NAMESPACE_KEYS = ("include", "exclude")

# Kubernetes label key: optional DNS-subdomain prefix and '/', then a name of 1..63 characters.
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NOT_PROM = re.compile(r"[^A-Za-z0-9_]")


def metric_kind(metric_name: str) -> str | None:
    """Retina's substring dispatch of a (lower-case) metricName; None = produces no pod-level metric."""
    name = metric_name.lower()
    if "forward" in name:
        return KIND_FORWARD
    if "drop" in name:
        return KIND_DROP
    if "tcp" in name and "flag" in name:
        return KIND_TCPFLAGS
    if "tcp" in name and "retrans" in name:
        return KIND_TCPRETRANS
    if "tcp" in name and "connect_latency" in name:
        return KIND_TCP_CONNECT
    if "tcp" in name and "failed" in name:
        return KIND_TCP_FAILED
    if "tcp" in name and "rtt" in name:
        return KIND_TCP_RTT
    if "node_apiserver" in name:
        return KIND_APISERVER
    if "interzone" in name:
        return KIND_INTERZONE
    if "dns" in name and ("latency" in name or "unanswered" in name):
        return KIND_DNS_LATENCY
    if "dns" in name:
        return KIND_DNS
    return None


def family_names(metric_name: str) -> tuple[str, ...]:
    """The family (without the ``networkobservability_`` prefix) a metricName produces, e.g.
    ``forward_bytes`` → ``("adv_forward_bytes",)``; empty when it produces nothing (yet)."""
    kind = metric_kind(metric_name)
    name = metric_name.lower()
    if kind == KIND_FORWARD:
        return ("adv_forward_bytes",) if "bytes" in name else ("adv_forward_count",)
    if kind == KIND_DROP:
        return ("adv_drop_bytes",) if "bytes" in name else ("adv_drop_count",)
    if kind == KIND_TCPFLAGS:
        return ("adv_tcpflags_count",)
    if kind == KIND_TCPRETRANS:
        return ("adv_tcpretrans_count",)
    if kind == KIND_DNS:
        return ("adv_dns_response_count",) if "response" in name else ("adv_dns_request_count",)
    if kind == KIND_DNS_LATENCY:
        return ("adv_dns_unanswered_queries",) if "unanswered" in name else ("adv_dns_latency_seconds",)
    if kind == KIND_INTERZONE:
        return ("adv_interzone_bytes",) if "bytes" in name else ("adv_interzone_count",)
    if kind == KIND_TCP_CONNECT:
        return ("adv_tcp_connect_latency_seconds",)
    if kind == KIND_TCP_FAILED:
        return ("adv_tcp_failed_connections",)
    if kind == KIND_TCP_RTT:
        return ("adv_tcp_rtt_seconds",)
    return ()


def sanitize_pod_label_key(key: str) -> str:
    """``app.kubernetes.io/name`` → ``label_app_kubernetes_io_name`` (kube-state-metrics style)."""
    return "label_" + _NOT_PROM.sub("_", key)


@dataclass(frozen=True)
class ContextOption:
    """One validated ``contextOptions`` entry."""

    metric_name: str
    """Lower-cased metricName, e.g. ``forward_count``."""
    source_labels: tuple[str, ...] = ()
    """Context label options in the fixed order (``ACCEPTED_CONTEXT_LABELS``), lower case, no duplicates."""
    destination_labels: tuple[str, ...] = ()
    additional_labels: tuple[str, ...] = ()
    """As given (lower case); only ``is_reply`` has an effect."""
    ttl_ns: int = 0
    """Series not updated for this long are removed; 0 = never."""
    kind: str | None = None
    """What the name dispatches to (``forward``, ``drop``, ``tcpflags``, ``tcpretrans``, ``dns``, ``apiserver``)
    or None (accepted, produces nothing)."""

    @property
    def is_reply(self) -> bool:
        """``is_reply`` is listed and has an effect (forward metrics only, as in Retina)."""
        return self.kind == KIND_FORWARD and "is_reply" in self.additional_labels

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metricName": self.metric_name}
        if self.source_labels:
            out["sourceLabels"] = list(self.source_labels)
        if self.destination_labels:
            out["destinationLabels"] = list(self.destination_labels)
        if self.additional_labels:
            out["additionalLabels"] = list(self.additional_labels)
        if self.ttl_ns:
            out["ttl"] = format_duration(self.ttl_ns)
        return out


@dataclass(frozen=True)
class MetricsConfiguration:
    """The validated spec. ``namespaces_include``/``namespaces_exclude``: at most one is not None; both None means
    every namespace."""

    context_options: tuple[ContextOption, ...] = ()
    namespaces_include: frozenset[str] | None = None
    namespaces_exclude: frozenset[str] | None = None
    pod_label_keys: tuple[str, ...] = ()
    """Pod label keys to copy (ours); the metric label is :func:`sanitize_pod_label_key` of each."""
    max_series_per_metric: int = DEFAULT_MAX_SERIES_PER_METRIC
    """New series beyond this many per metric are not created (ours)."""
    pod_deletion_grace_ns: int = DEFAULT_POD_DELETION_GRACE_NS
    """Series of a pod that left the IP cache are removed this long after (one scrape interval, so the last
    value is scraped); 0 = they stay until their ttl (ours)."""
    pods_include: frozenset[tuple[str, str]] = frozenset()
    """(namespace, pod name) pairs counted whatever the namespace rule says: pods opted in one by one with the
    ``retina.sh: observe`` annotation (set by the Kubernetes control loop; not part of the spec, not in to_dict)."""
    warnings: tuple[str, ...] = field(default=(), compare=False)
    """One line per accepted-but-ineffective setting."""

    def namespace_allowed(self, namespace: str) -> bool:
        if self.namespaces_include is not None:
            return namespace in self.namespaces_include
        if self.namespaces_exclude is not None:
            return namespace not in self.namespaces_exclude
        return True

    def pod_allowed(self, namespace: str, pod_name: str) -> bool:
        """Whether pod-level metrics count this pod: its namespace is allowed, or it is in ``pods_include``."""
        return self.namespace_allowed(namespace) or (namespace, pod_name) in self.pods_include

    def to_dict(self) -> dict[str, Any]:
        """Back to the spec shape (parses to an equal configuration)."""
        out: dict[str, Any] = {"contextOptions": [o.to_dict() for o in self.context_options]}
        if self.namespaces_include is not None:
            out["namespaces"] = {"include": sorted(self.namespaces_include)}
        elif self.namespaces_exclude is not None:
            out["namespaces"] = {"exclude": sorted(self.namespaces_exclude)}
        if self.pod_label_keys:
            out["podLabelKeys"] = list(self.pod_label_keys)
        if self.max_series_per_metric != DEFAULT_MAX_SERIES_PER_METRIC:
            out["maxSeriesPerMetric"] = self.max_series_per_metric
        if self.pod_deletion_grace_ns != DEFAULT_POD_DELETION_GRACE_NS:
            out["podDeletionGrace"] = format_duration(self.pod_deletion_grace_ns)
        return out


# ----------------------------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__


def _check_keys(raw: dict, path: str, accepted: tuple[str, ...]) -> None:
    for key in raw:
        if key in accepted:
            continue
        hint = ""
        close = difflib.get_close_matches(str(key), accepted, n=1, cutoff=0.6)
        if not close:
            close = [a for a in accepted if a.lower() == str(key).lower()]
        if close:
            hint = f" (did you mean '{close[0]}'?)"
        raise ConfigError(f"{path}: unknown key {_show(key)}{hint}; accepted: {', '.join(accepted)}")


def _string_list(raw: Any, path: str) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: must be a list of strings, not {_type_name(raw)}")
    for i, item in enumerate(raw):
        if not isinstance(item, str):
            raise ConfigError(f"{path}[{i}]: must be a string, not {_type_name(item)} {_show(item)}")
    return raw


def _context_labels(raw: Any, path: str) -> tuple[str, ...]:
    chosen = set()
    for i, item in enumerate(_string_list(raw, path)):
        label = item.strip().lower()
        if label not in ACCEPTED_CONTEXT_LABELS:
            raise ConfigError(
                f"{path}[{i}]: unknown label {_show(item)}; accepted: {', '.join(ACCEPTED_CONTEXT_LABELS)}"
            )
        chosen.add(label)
    return tuple(label for label in ACCEPTED_CONTEXT_LABELS if label in chosen)


def _parse_option(raw: Any, path: str, warnings: list[str], remote_context: bool | None) -> ContextOption:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping with metricName, sourceLabels …, not {_type_name(raw)}")
    _check_keys(raw, path, _OPTION_KEYS)
    name_raw = raw.get("metricName")
    if name_raw is None or name_raw == "":
        raise ConfigError(f"{path}.metricName: required; accepted: {', '.join(ACCEPTED_METRIC_NAMES)}")
    if not isinstance(name_raw, str):
        raise ConfigError(f"{path}.metricName: must be a string, not {_type_name(name_raw)} {_show(name_raw)}")
    name = name_raw.strip().lower()
    if name not in ACCEPTED_METRIC_NAMES:
        close = difflib.get_close_matches(name, ACCEPTED_METRIC_NAMES, n=1, cutoff=0.75)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"{path}.metricName: unknown metric {_show(name_raw)}{hint}; accepted: {', '.join(ACCEPTED_METRIC_NAMES)}"
        )
    kind = metric_kind(name)
    if kind is None:
        warnings.append(f"{path}.metricName: {name!r} is accepted but produces no pod-level metric (as in Retina)")
    elif kind == KIND_APISERVER:
        warnings.append(f"{path}.metricName: {name!r} (API-server latency) is not implemented yet; ignored")

    source = _context_labels(raw.get("sourceLabels"), f"{path}.sourceLabels")
    destination = _context_labels(raw.get("destinationLabels"), f"{path}.destinationLabels")
    if kind == KIND_INTERZONE and (source or destination):
        warnings.append(f"{path}: interzone metrics have only source_zone and destination_zone labels; "
                        "sourceLabels and destinationLabels are ignored")
        source = destination = ()
    if destination and remote_context is False:
        warnings.append(
            f"{path}.destinationLabels: ignored in local context (remoteContext: false): labels describe the pod "
            "of each series, taken from sourceLabels"
        )

    additional: list[str] = []
    for i, item in enumerate(_string_list(raw.get("additionalLabels"), f"{path}.additionalLabels")):
        label = item.strip().lower()
        if label != "is_reply":
            warnings.append(f"{path}.additionalLabels[{i}]: {item!r} is ignored (only is_reply has an effect, as in "
                            "Retina)")
        elif kind != KIND_FORWARD:
            warnings.append(f"{path}.additionalLabels[{i}]: 'is_reply' is ignored: only forward_count and "
                            "forward_bytes have it (as in Retina)")
        if label not in additional:
            additional.append(label)

    ttl_raw = raw.get("ttl")
    ttl_ns = 0
    if ttl_raw is not None and ttl_raw != "":
        try:
            ttl_ns = parse_duration(ttl_raw)
        except ConfigError as e:
            raise ConfigError(f"{path}.ttl: {e}") from None
    return ContextOption(
        metric_name=name,
        source_labels=source,
        destination_labels=destination,
        additional_labels=tuple(additional),
        ttl_ns=ttl_ns,
        kind=kind,
    )


def _namespace_list(raw: Any, path: str) -> frozenset[str]:
    items = _string_list(raw, path)
    for i, ns in enumerate(items):
        if not ns.strip():
            raise ConfigError(f"{path}[{i}]: must be a non-empty namespace name")
    return frozenset(ns.strip() for ns in items)


def _pod_label_keys(raw: Any, path: str) -> tuple[str, ...]:
    keys: list[str] = []
    seen: dict[str, str] = {}
    for i, item in enumerate(_string_list(raw, path)):
        key = item.strip()
        prefix, slash, name = key.rpartition("/")
        valid = bool(_LABEL_NAME.fullmatch(name)) and (
            not slash or (0 < len(prefix) <= 253 and bool(_DNS_SUBDOMAIN.fullmatch(prefix)))
        )
        if not valid:
            raise ConfigError(
                f"{path}[{i}]: invalid pod label key {_show(item)}; expected [prefix/]name, e.g. "
                "'app' or 'app.kubernetes.io/name'"
            )
        sanitized = sanitize_pod_label_key(key)
        if sanitized in seen:
            if seen[sanitized] == key:
                continue
            raise ConfigError(
                f"{path}[{i}]: {key!r} and {seen[sanitized]!r} both become the metric label {sanitized!r}"
            )
        seen[sanitized] = key
        keys.append(key)
    return tuple(keys)


def parse_metrics_configuration(
    raw: dict, *, path: str = "metricsConfiguration", remote_context: bool | None = None
) -> MetricsConfiguration:
    """Validate a MetricsConfiguration spec (or a whole MetricsConfiguration object) and return it.

    ``path`` prefixes field paths in messages. ``remote_context``: when False, destinationLabels give a warning
    (they are not used in local context); None skips that check.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping (a MetricsConfiguration spec), not {_type_name(raw)}")
    if "spec" in raw or "kind" in raw or "apiVersion" in raw:
        _check_keys(raw, path, _CR_KEYS)
        kind = raw.get("kind")
        if kind is not None and kind != "MetricsConfiguration":
            raise ConfigError(f"{path}.kind: expected 'MetricsConfiguration', not {_show(kind)}")
        path = f"{path}.spec"
        raw = raw.get("spec")
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: must be a mapping, not {_type_name(raw)}")
    _check_keys(raw, path, _SPEC_KEYS)
    warnings: list[str] = []

    options_raw = raw.get("contextOptions")
    if not isinstance(options_raw, list) or not options_raw:
        what = "missing" if options_raw is None else f"got {_type_name(options_raw)}"
        if isinstance(options_raw, list):
            what = "got an empty list"
        raise ConfigError(f"{path}.contextOptions: required, a non-empty list of context options ({what})")
    options: list[ContextOption] = []
    first_index: dict[str, int] = {}
    for i, item in enumerate(options_raw):
        opt = _parse_option(item, f"{path}.contextOptions[{i}]", warnings, remote_context)
        if opt.metric_name in first_index:
            raise ConfigError(
                f"{path}.contextOptions[{i}].metricName: duplicate metric {opt.metric_name!r} (already "
                f"contextOptions[{first_index[opt.metric_name]}])"
            )
        first_index[opt.metric_name] = i
        options.append(opt)

    include = exclude = None
    ns_raw = raw.get("namespaces")
    if ns_raw is not None:
        ns_path = f"{path}.namespaces"
        if not isinstance(ns_raw, dict):
            raise ConfigError(f"{ns_path}: must be a mapping with include or exclude, not {_type_name(ns_raw)}")
        _check_keys(ns_raw, ns_path, _NAMESPACE_KEYS)
        has_include = ns_raw.get("include") is not None
        has_exclude = ns_raw.get("exclude") is not None
        if has_include and has_exclude:
            raise ConfigError(
                f"{ns_path}: include and exclude are both set; set at most one (neither means all namespaces)"
            )
        if has_include:
            include = _namespace_list(ns_raw["include"], f"{ns_path}.include")
            if not include:
                warnings.append(f"{ns_path}.include: empty list: no namespace is included, so no pod-level "
                                "metric is counted")
        elif has_exclude:
            exclude = _namespace_list(ns_raw["exclude"], f"{ns_path}.exclude")

    pod_keys = _pod_label_keys(raw.get("podLabelKeys"), f"{path}.podLabelKeys")

    max_series = DEFAULT_MAX_SERIES_PER_METRIC
    ms_raw = raw.get("maxSeriesPerMetric")
    if ms_raw is not None:
        ms_path = f"{path}.maxSeriesPerMetric"
        if isinstance(ms_raw, bool) or not isinstance(ms_raw, int):
            raise ConfigError(f"{ms_path}: invalid value {_show(ms_raw)}; accepted: an integer from 1 to "
                              f"{MAX_MAX_SERIES_PER_METRIC}")
        if not 1 <= ms_raw <= MAX_MAX_SERIES_PER_METRIC:
            raise ConfigError(f"{ms_path}: invalid value {ms_raw}: out of range; accepted: an integer from 1 to "
                              f"{MAX_MAX_SERIES_PER_METRIC}")
        max_series = ms_raw

    grace_ns = DEFAULT_POD_DELETION_GRACE_NS
    grace_raw = raw.get("podDeletionGrace")
    if grace_raw is not None and grace_raw != "":
        try:
            grace_ns = parse_duration(grace_raw)
        except ConfigError as e:
            raise ConfigError(f"{path}.podDeletionGrace: {e}") from None

    return MetricsConfiguration(
        context_options=tuple(options),
        namespaces_include=include,
        namespaces_exclude=exclude,
        pod_label_keys=pod_keys,
        max_series_per_metric=max_series,
        pod_deletion_grace_ns=grace_ns,
        warnings=tuple(warnings),
    )
