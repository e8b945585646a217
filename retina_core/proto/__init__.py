"""The generated protobuf code, as a proper package: ``retina_core.proto.<package>.<file>_pb2``.

``proto/flow/flow.proto`` (proto package ``flow``, Hubble's) is generated into ``retina_core/proto/flow/flow_pb2.py``
by :mod:`retina_core.proto.generate` (``make setup`` runs it; the output is not committed). The descriptors keep
Hubble's file names (``flow/flow.proto``), so a client generated from Cilium's protos sees the same wire contract;
only the generated Python ``import`` lines are rewritten to this package (no ``sys.path`` insertion).

Usage::

    from retina_core.proto import flow_pb2
    from retina_core.proto import ipcache_pb2, ipcache_pb2_grpc   # the operator's IpCache stream
    from retina_core.proto import observer_pb2, peer_pb2          # Hubble's Observer and Peer APIs

Each module is imported on first access (PEP 562), so :func:`ensure_generated` can be called before the generated
code exists (tests do so).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from retina_core.proto.flow import flow_pb2  # noqa: F401
    from retina_core.proto.ipcache import ipcache_pb2, ipcache_pb2_grpc  # noqa: F401
    from retina_core.proto.observer import observer_pb2, observer_pb2_grpc  # noqa: F401
    from retina_core.proto.peer import peer_pb2, peer_pb2_grpc  # noqa: F401
    from retina_core.proto.relay import relay_pb2  # noqa: F401

GENERATED_DIR = Path(__file__).resolve().parent


class ProtoCodeMissingError(ImportError):
    """The generated protobuf code is missing or stale; ``make setup`` regenerates it."""


def ensure_generated() -> bool:
    """Generate the protobuf code if it is missing or older than the ``.proto`` files (for tests and tools).

    Returns True if protoc ran. Cheap (a few ``stat`` calls) when the code is current.
    """
    from retina_core.proto import generate

    return generate.generate()


def _importer(package: str, module: str):
    def load() -> ModuleType:
        name = f"{__name__}.{package}.{module}"
        importlib.invalidate_caches()  # the code may have been generated after an earlier failed import
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            raise ProtoCodeMissingError(
                f"generated protobuf code {name} not found ({exc}); run `make setup` "
                "(or `python -m retina_core.proto.generate`)"
            ) from exc

    return load


_LAZY = {
    "flow_pb2": _importer("flow", "flow_pb2"),
    "ipcache_pb2": _importer("ipcache", "ipcache_pb2"),
    "ipcache_pb2_grpc": _importer("ipcache", "ipcache_pb2_grpc"),
    "observer_pb2": _importer("observer", "observer_pb2"),
    "observer_pb2_grpc": _importer("observer", "observer_pb2_grpc"),
    "peer_pb2": _importer("peer", "peer_pb2"),
    "peer_pb2_grpc": _importer("peer", "peer_pb2_grpc"),
    "relay_pb2": _importer("relay", "relay_pb2"),
}


def __getattr__(name: str) -> ModuleType:
    loader = _LAZY.get(name)
    if loader is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = loader()
    globals()[name] = module
    return module


__all__ = ["GENERATED_DIR", "ProtoCodeMissingError", "ensure_generated", "flow_pb2", "ipcache_pb2",
           "ipcache_pb2_grpc", "observer_pb2", "observer_pb2_grpc", "peer_pb2", "peer_pb2_grpc", "relay_pb2"]
