"""The retina-exporter operator (named ``retina_operator`` because a top-level ``operator`` package would shadow
the standard library), and the Kubernetes plumbing it shares with the agent's ``kubernetes`` source.

* :mod:`retina_core.kube`: client construction and a list+watch informer over the ``kubernetes`` client.
* :mod:`retina_operator.cluster`: the informers (pods, services, nodes, namespaces, replicasets, jobs) and the
  address map they feed; :mod:`retina_operator.ipmap` (claims, precedence, address reuse),
  :mod:`retina_operator.broadcast` (the delta log every agent reads), :mod:`retina_operator.wire` (encoding).
* :mod:`retina_operator.server`: ``ipcache.IpCache/StreamUpdates`` over gRPC.
* :mod:`retina_operator.metricsconfig`: MetricsConfiguration validation and status.
* :mod:`retina_operator.operator`: :class:`~retina_operator.operator.Operator`, gluing it all together with the
  debug HTTP server (:mod:`retina_operator.http`); :mod:`retina_operator.cli`: the ``retina-operator`` command.

docs/operator.md describes the protocol and its guarantees.
"""
