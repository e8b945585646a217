"""Kubernetes API plumbing on top of the official ``kubernetes`` client.

* :mod:`retina_core.kube.watch`: :class:`~retina_core.kube.watch.Informer`, list+watch with relist on
  410 Gone, reconnects with backoff, resync, and in-order events on one thread.
* :mod:`retina_core.kube.client`: :func:`~retina_core.kube.client.make_api_client` (kubeconfig,
  in-cluster, or a ready ``Configuration``).
* :mod:`retina_core.kube.objects`: trimming, addresses, zones, owners and the one object -> identity derivation
  shared by the agent's ``kubernetes`` source and the operator.
* :mod:`retina_core.kube.owners`: :class:`~retina_core.kube.owners.OwnerResolver`, owner lookups by GET.
"""

from retina_core.kube.client import describe_target, make_api_client
from retina_core.kube.objects import (ANNOTATION, OBSERVE, OwnerUnresolved, ParentOf, controller_key, controller_ref,
                                      guess_parent, index_service_selector, is_observed, node_identities, node_ips,
                                      node_zone, owner_parent, pod_claims_addresses, pod_identities, pod_ips,
                                      pod_labels, pod_node, pod_workloads, selecting_service, service_identities,
                                      service_ips, service_selector, trim_node, trim_pod, trim_service)
from retina_core.kube.owners import OwnerResolver
from retina_core.kube.watch import ADDED, DELETED, MODIFIED, SYNCED, Informer, WatchEvent

__all__ = [
    "ADDED", "ANNOTATION", "DELETED", "MODIFIED", "OBSERVE", "SYNCED", "Informer", "OwnerResolver", "OwnerUnresolved",
    "ParentOf", "WatchEvent", "controller_key", "controller_ref", "describe_target", "guess_parent",
    "index_service_selector", "is_observed", "make_api_client", "node_identities", "node_ips", "node_zone",
    "owner_parent", "pod_claims_addresses", "pod_identities", "pod_ips", "pod_labels", "pod_node", "pod_workloads",
    "selecting_service", "service_identities", "service_ips", "service_selector", "trim_node", "trim_pod",
    "trim_service",
]
