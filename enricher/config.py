"""The ``enrichment`` config section (owned by the enricher): which identity source feeds the IP cache, and its
settings. Parsed once by :data:`ENRICHMENT_SECTION` into an :class:`EnrichmentConfig`;
:func:`enricher.make_source` builds the source from it.

Keys (``enrichment.<key>``; durations are Go-style strings such as ``"500ms"`` or numbers of seconds):

==========================  =======================  ==================================================
key                         default                  meaning
==========================  =======================  ==================================================
``source``                  ``none``                 ``none``, ``inventory``, ``netns``, ``kubernetes``, ``operator``
``inventoryFile``           (required: inventory)    YAML inventory path
``inventoryPollInterval``   ``1s``                   how often the file's mtime/size/inode are checked
``netnsNamespace``          ``netns``                Kubernetes-style namespace given to netns pods
``netnsFilter``             ``*``                    glob, or list of globs, over netns names
``netnsProcesses``          ``false``                also discover unnamed namespaces of processes (/proc)
``netnsPollInterval``       ``2s``                   how often /run/netns is listed
``netnsRescanInterval``     ``10s``                  how often addresses of known namespaces are re-read
``netnsDir``                ``/run/netns``           where named namespaces are
``zone``                    ``""``                   zone given to netns pods (inventory pods take their node's)
``kubeconfig``              ``""`` (in-cluster)      kubeconfig path for the ``kubernetes`` source
``kubeContext``             ``""``                   kubeconfig context
``kubeStartTimeout``        ``10s``                  how long start-up waits for the first full picture
``kubeResyncInterval``      ``5m``                   informer resync period
``operatorAddress``         ``retina-operator:9090`` ``host:port`` of the operator's IP-cache stream
``operatorTLS``             ``false``                TLS to the operator (also on with a CA, cert or key file)
``operatorCAFile``          ``""``                   CA bundle for the operator's certificate
``operatorCertFile``        ``""``                   client certificate (mTLS)
``operatorKeyFile``         ``""``                   its key
``operatorServerName``      ``""``                   TLS server name to check (default: the address's host)
``operatorStartTimeout``    ``10s``                  how long start-up waits for the first snapshot
==========================  =======================  ==================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from retina_core.settings import (BOOL_ACCEPTED, Invalid, Key, Section, abs_path, boolean, choice,
                                  duration_at_least, optional_text, path_or_empty, str_list_tuple, text)
from retina_core.units import NS_PER_S, ConfigError, format_duration

__all__ = ["DEFAULT_OPERATOR_ADDRESS", "ENRICHMENT_SECTION", "KNOWN_SOURCES", "EnrichmentConfig",
           "parse_enrichment"]

KNOWN_SOURCES: tuple[str, ...] = ("none", "inventory", "netns", "kubernetes", "operator")
DEFAULT_OPERATOR_ADDRESS = "retina-operator:9090"


@dataclass(frozen=True)
class EnrichmentConfig:
    """The effective ``enrichment`` section (see the module docstring for each key)."""

    source: str = "none"
    inventory_file: str = ""
    inventory_poll_interval_ns: int = NS_PER_S
    netns_namespace: str = "netns"
    netns_filter: tuple[str, ...] = ("*",)
    netns_processes: bool = False
    netns_poll_interval_ns: int = 2 * NS_PER_S
    netns_rescan_interval_ns: int = 10 * NS_PER_S
    netns_dir: str = "/run/netns"
    zone: str = ""
    kubeconfig: str = ""
    kube_context: str = ""
    kube_start_timeout_ns: int = 10 * NS_PER_S
    kube_resync_interval_ns: int = 300 * NS_PER_S
    operator_address: str = DEFAULT_OPERATOR_ADDRESS
    operator_tls: bool = False
    operator_ca_file: str = ""
    operator_cert_file: str = ""
    operator_key_file: str = ""
    operator_server_name: str = ""
    operator_start_timeout_ns: int = 10 * NS_PER_S


def _host_port(value: Any) -> str:
    address = text(value)
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid("not host:port")
    return address


def _check(cfg: EnrichmentConfig) -> None:
    if cfg.source == "inventory" and not cfg.inventory_file:
        raise ConfigError(
            "enrichment.inventoryFile: required when enrichment.source is 'inventory'; "
            "accepted: the path of an inventory YAML file"
        )


_INTERVAL = "a duration longer than 0 such as '2s' or '500ms'"
_positive = duration_at_least(1)

ENRICHMENT_SECTION = Section("enrichment", EnrichmentConfig, (
    Key("source", "source", choice(*KNOWN_SOURCES), ", ".join(KNOWN_SOURCES)),
    Key("inventoryFile", "inventory_file", path_or_empty, "a file path"),
    Key("inventoryPollInterval", "inventory_poll_interval_ns", _positive, _INTERVAL, format_duration),
    Key("netnsNamespace", "netns_namespace", text, "a non-empty namespace name"),
    Key("netnsFilter", "netns_filter", str_list_tuple,
        "a list (or comma-separated string) of glob patterns of network namespace names"),
    Key("netnsProcesses", "netns_processes", boolean, BOOL_ACCEPTED),
    Key("netnsPollInterval", "netns_poll_interval_ns", _positive, _INTERVAL, format_duration),
    Key("netnsRescanInterval", "netns_rescan_interval_ns", _positive, _INTERVAL, format_duration),
    Key("netnsDir", "netns_dir", abs_path, "an absolute path"),
    Key("zone", "zone", optional_text, "a zone name, or empty"),
    Key("kubeconfig", "kubeconfig", path_or_empty, "a kubeconfig file path, or empty"),
    Key("kubeContext", "kube_context", path_or_empty, "a kubeconfig context name, or empty"),
    Key("kubeStartTimeout", "kube_start_timeout_ns", _positive, _INTERVAL, format_duration),
    Key("kubeResyncInterval", "kube_resync_interval_ns", _positive, _INTERVAL, format_duration),
    Key("operatorAddress", "operator_address", _host_port, f"host:port of the operator (e.g. {DEFAULT_OPERATOR_ADDRESS})"),
    Key("operatorTLS", "operator_tls", boolean, BOOL_ACCEPTED),
    Key("operatorCAFile", "operator_ca_file", path_or_empty, "a file path, or empty"),
    Key("operatorCertFile", "operator_cert_file", path_or_empty, "a file path, or empty"),
    Key("operatorKeyFile", "operator_key_file", path_or_empty, "a file path, or empty"),
    Key("operatorServerName", "operator_server_name", path_or_empty, "a TLS server name, or empty"),
    Key("operatorStartTimeout", "operator_start_timeout_ns", duration_at_least(0), "a duration such as '10s'",
        format_duration),
), check=_check)


def parse_enrichment(options: Mapping[str, Any] | None, where: str = "in the enrichment options") -> EnrichmentConfig:
    """An :class:`EnrichmentConfig` from a mapping of ``enrichment`` keys (camelCase, as in the file), through the
    same :data:`ENRICHMENT_SECTION` the agent's loader uses. Raises ``ConfigError`` naming an unknown key."""
    options = dict(options or {})
    known = {k.name for k in ENRICHMENT_SECTION.keys}
    unknown = sorted(k for k in options if k not in known)
    if unknown:
        raise ConfigError(f"enrichment.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    return ENRICHMENT_SECTION.parse({f"enrichment.{k}": (v, where) for k, v in options.items()})
