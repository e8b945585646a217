"""The ``hubble`` config section (Cilium's option names in our YAML style), parsed once into a
:class:`HubbleConfig`.

=====================================  =====================================  =============================================
key                                    default                                meaning
=====================================  =====================================  =============================================
``hubble.enabled``                     ``false``                              serve Observer, Peer and health over gRPC
``hubble.listenAddress``               ``""``                                 ``host:port`` for TCP (``:4244`` = every
                                                                              address); empty: no TCP, socket only
``hubble.socketPath``                  ``/var/run/retina-exporter/hubble.sock``  UNIX socket (plaintext); empty: none
``hubble.eventBufferCapacity``         (``outputRingCapacity``)               the flow ring's capacity, 2^n-1: the same
                                                                              ring as ``outputRingCapacity``
``hubble.tls.certFile`` / ``keyFile``  ``""``                                 TLS on TCP (re-read when the files change)
``hubble.tls.clientCAFiles``           ``[]``                                 mTLS: client certificates must chain to these
``hubble.export.filePath``             ``""``                                 JSON lines of GetFlowsResponse; empty: off
``hubble.export.allowList``            ``[]``                                 FlowFilters (protojson) a flow must match one of
``hubble.export.denyList``             ``[]``                                 FlowFilters that exclude a flow
``hubble.export.fieldMask``            ``[]``                                 Flow fields to keep (all when empty)
``hubble.export.maxSizeMb``            ``10``                                 rotate the file at this size
``hubble.export.maxBackups``           ``5``                                  rotated files kept
=====================================  =====================================  =============================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from retina_core.settings import (BOOL_ACCEPTED, Invalid, Key, Section, boolean, flow_filter_list, flow_filters,
                                  int_range, optional_text, path_or_empty, str_list)
from retina_core.units import ConfigError

__all__ = ["DEFAULT_SOCKET_PATH", "HUBBLE_SECTION", "HubbleConfig", "parse_listen_address"]

DEFAULT_SOCKET_PATH = "/var/run/retina-exporter/hubble.sock"
DEFAULT_PORT = 4244


@dataclass(frozen=True)
class HubbleConfig:
    enabled: bool = False
    listen_address: str = ""
    socket_path: str = DEFAULT_SOCKET_PATH
    event_buffer_capacity: int | None = None
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_files: tuple[str, ...] = ()
    export_file_path: str = ""
    export_allow_list: tuple[str, ...] = ()
    """Each FlowFilter as canonical protojson text (hashable; parsed again where used)."""
    export_deny_list: tuple[str, ...] = ()
    export_field_mask: tuple[str, ...] = ()
    export_max_size_mb: int = 10
    export_max_backups: int = 5

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert_file)


def parse_listen_address(text: str) -> tuple[str, int]:
    """``host:port``, ``:port`` (every address) or ``[v6]:port`` -> (host, port); port 0 = any free port.
    ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port (e.g. ':4244' or '127.0.0.1:4244')")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _listen_address(value: Any) -> str:
    text = optional_text(value)
    if text:
        try:
            parse_listen_address(text)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
    return text


def _capacity(value: Any) -> int:
    number = int_range(1, 2**20 - 1)(value)
    if (number + 1) & number:
        raise Invalid("not one less than a power of two")
    return number


def _flow_filters(value: Any) -> tuple[str, ...]:
    """A FlowFilter list (:func:`retina_core.settings.flow_filter_list`) whose filters also compile (valid IPs,
    regexes, ports ...)."""
    from retina_exporter.hubble.filters import FilterError, compile_filter

    texts = flow_filter_list(value)
    for i, ff in enumerate(flow_filters(texts)):
        try:
            compile_filter(ff)
        except FilterError as exc:
            raise Invalid(f"item {i}: {exc}") from None
    return texts


def _field_mask(value: Any) -> tuple[str, ...]:
    from google.protobuf import field_mask_pb2

    from retina_core.proto import flow_pb2

    paths = tuple(str_list(value))
    if paths and not field_mask_pb2.FieldMask(paths=list(paths)).IsValidForDescriptor(flow_pb2.Flow.DESCRIPTOR):
        raise Invalid("a path is not a field of flow.Flow")
    return paths


def _check(cfg: HubbleConfig) -> None:
    if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
        raise ConfigError("hubble.tls: certFile and keyFile go together (the server certificate and its key)")
    if cfg.tls_client_ca_files and not cfg.tls_cert_file:
        raise ConfigError("hubble.tls.clientCAFiles: needs hubble.tls.certFile and keyFile (mTLS is TLS first)")
    if cfg.enabled and not cfg.listen_address and not cfg.socket_path:
        raise ConfigError("hubble: enabled with neither listenAddress nor socketPath; set one (e.g. "
                          "listenAddress ':4244')")


HUBBLE_SECTION = Section("hubble", HubbleConfig, (
    Key("enabled", "enabled", boolean, BOOL_ACCEPTED),
    Key("listenAddress", "listen_address", _listen_address, "host:port such as ':4244' or '127.0.0.1:4244', or empty"),
    Key("socketPath", "socket_path", path_or_empty, "an absolute path for the UNIX socket, or empty (no socket)"),
    Key("eventBufferCapacity", "event_buffer_capacity", _capacity,
        "one less than a power of two, 2^n - 1 with 1 <= n <= 20 (the flow ring, as outputRingCapacity)"),
    Key("tls.certFile", "tls_cert_file", path_or_empty, "a PEM file path, or empty"),
    Key("tls.keyFile", "tls_key_file", path_or_empty, "a PEM file path, or empty"),
    Key("tls.clientCAFiles", "tls_client_ca_files", lambda v: tuple(str_list(v)),
        "a list (or comma-separated string) of PEM file paths"),
    Key("export.filePath", "export_file_path", path_or_empty, "a file path, or empty (no export)"),
    Key("export.allowList", "export_allow_list", _flow_filters,
        "a list of Hubble FlowFilters in protojson (e.g. [{\"source_pod\": [\"lab/\"]}])",
        lambda v: [json.loads(s) for s in v]),
    Key("export.denyList", "export_deny_list", _flow_filters, "a list of Hubble FlowFilters in protojson",
        lambda v: [json.loads(s) for s in v]),
    Key("export.fieldMask", "export_field_mask", _field_mask, "a list of flow.Flow field paths (e.g. source.pod_name)"),
    Key("export.maxSizeMb", "export_max_size_mb", int_range(1, 1_000_000), "an integer number of MiB from 1"),
    Key("export.maxBackups", "export_max_backups", int_range(0, 1000), "an integer from 0 to 1000"),
), check=_check)
