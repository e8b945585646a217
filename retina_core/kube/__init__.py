"""Kubernetes API plumbing on top of the official ``kubernetes`` client.

* :mod:`retina_core.kube.watch`: :class:`~retina_core.kube.watch.Informer`, list+watch with relist on
  410 Gone, reconnects with backoff, resync, and in-order events on one thread.
* :mod:`retina_core.kube.client`: :func:`~retina_core.kube.client.make_api_client` (kubeconfig,
  in-cluster, or a ready ``Configuration``).
"""

from retina_core.kube.client import make_api_client
from retina_core.kube.watch import ADDED, DELETED, MODIFIED, SYNCED, Informer, WatchEvent

__all__ = ["ADDED", "DELETED", "MODIFIED", "SYNCED", "Informer", "WatchEvent", "make_api_client"]
