"""The retina-exporter operator (named ``retina_operator`` because a top-level ``operator`` package would shadow
the standard library).

* :mod:`retina_operator.cluster`: the informers (pods, services, nodes, namespaces, replicasets, jobs) and the
  address map they feed, deriving identities with :mod:`retina_core.kube.objects` (shared with the agent's
  ``kubernetes`` source); :mod:`retina_operator.ipmap` (claims, precedence, address reuse),
  :mod:`retina_operator.broadcast` (the delta log every agent reads), :mod:`retina_operator.wire` (encoding).
* :mod:`retina_operator.server`: ``ipcache.IpCache/StreamUpdates`` over gRPC.
* :mod:`retina_operator.metricsconfig`: MetricsConfiguration validation and status.
* :mod:`retina_operator.metrics`: the operator's own ``/metrics`` (a prometheus-client collector).
* :mod:`retina_operator.operator`: :class:`~retina_operator.operator.Operator`, gluing it all together with the
  debug HTTP server (:class:`retina_core.httpserver.RouteServer`); :mod:`retina_operator.cli`: the ``retina-operator`` command.

Kubernetes client construction and the informer are :mod:`retina_core.kube`. docs/operator.md describes the
protocol and its guarantees.

The names in ``__all__`` are the package's public surface (``from retina_operator import Operator``). They are
imported on first use, so that ``retina-operator --help`` and ``python -m retina_operator.cli`` stay light (the
operator pulls in gRPC and the Kubernetes client).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from retina_operator.cli import main  # noqa: F401
    from retina_operator.cluster import ClusterState  # noqa: F401
    from retina_operator.metrics import OperatorCollector  # noqa: F401
    from retina_operator.metricsconfig import MetricsConfigController  # noqa: F401
    from retina_operator.operator import Operator  # noqa: F401
    from retina_operator.server import BindError, IpCacheServer, TlsError, TlsFiles  # noqa: F401

_EXPORTS = {
    "BindError": "retina_operator.server",
    "ClusterState": "retina_operator.cluster",
    "IpCacheServer": "retina_operator.server",
    "MetricsConfigController": "retina_operator.metricsconfig",
    "Operator": "retina_operator.operator",
    "OperatorCollector": "retina_operator.metrics",
    "TlsError": "retina_operator.server",
    "TlsFiles": "retina_operator.server",
    "main": "retina_operator.cli",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
