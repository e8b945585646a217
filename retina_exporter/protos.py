"""Access to the generated protobuf modules.

The generated code lives in ``retina_exporter/_proto/`` (made by ``python -m retina_exporter.proto_gen``, which
``make setup`` runs). Generated modules import each other by their proto path (``from flow import flow_pb2``),
exactly as Hubble's Python stubs do, so that directory is put at the front of ``sys.path`` here.

Usage::

    from retina_exporter.protos import flow_pb2
    from retina_exporter.protos import ipcache_pb2, ipcache_pb2_grpc   # the operator's IpCache stream

Each module is imported on first access (PEP 562), so :func:`ensure_generated` can be imported and called
before the generated code exists (tests do so).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers with retina_exporter/_proto on their search path
    from flow import flow_pb2  # type: ignore[import-not-found]  # noqa: F401
    from ipcache import ipcache_pb2, ipcache_pb2_grpc  # type: ignore[import-not-found]  # noqa: F401

GENERATED_DIR = Path(__file__).resolve().parent / "_proto"


class ProtoCodeMissingError(ImportError):
    """The generated protobuf code is missing or stale; ``make setup`` regenerates it."""


def _add_to_path() -> None:
    path = str(GENERATED_DIR)
    if path not in sys.path:
        sys.path.insert(0, path)


def ensure_generated() -> bool:
    """Generate the protobuf code if it is missing or older than the ``.proto`` files (for tests and tools).

    Returns True if protoc ran. Cheap (a few ``stat`` calls) when the code is current.
    """
    from retina_exporter import proto_gen

    return proto_gen.generate()


def _importer(package: str, module: str):
    def load() -> ModuleType:
        _add_to_path()
        importlib.invalidate_caches()  # the directory may have been generated after an earlier failed import
        try:
            return importlib.import_module(f"{package}.{module}")
        except ImportError as exc:
            raise ProtoCodeMissingError(
                f"generated protobuf code not found in {GENERATED_DIR} ({exc}); run `make setup` "
                "(or `python -m retina_exporter.proto_gen`)"
            ) from exc

    return load


_LAZY = {
    "flow_pb2": _importer("flow", "flow_pb2"),
    "ipcache_pb2": _importer("ipcache", "ipcache_pb2"),
    "ipcache_pb2_grpc": _importer("ipcache", "ipcache_pb2_grpc"),
}


def __getattr__(name: str) -> ModuleType:
    loader = _LAZY.get(name)
    if loader is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = loader()
    globals()[name] = module
    return module


__all__ = ["GENERATED_DIR", "ProtoCodeMissingError", "ensure_generated", "flow_pb2", "ipcache_pb2",
           "ipcache_pb2_grpc"]
