"""Building a ``kubernetes.client.ApiClient`` from what the configuration gives."""

from __future__ import annotations

import copy
import os
from typing import Any

__all__ = ["make_api_client", "describe_target"]


def make_api_client(config: Any = None, context: str | None = None) -> Any:
    """An ``ApiClient`` for ``config``:

    * a ``kubernetes.client.Configuration``: a copy is used (tests point it at the test API server);
    * a ``kubernetes.client.ApiClient``: returned as is;
    * a string: a kubeconfig file path (``context`` picks the context, default the file's current one);
    * None: in-cluster service-account credentials when ``KUBERNETES_SERVICE_HOST`` is set, otherwise the default
      kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``).

    urllib3's own retries are turned off unless the configuration sets ``retries`` (callers retry with backoff).
    Raises ``kubernetes.config.ConfigException`` (or ``OSError``) when the configuration cannot be loaded.
    """
    from kubernetes import client, config as kconfig

    if isinstance(config, client.ApiClient):
        return config
    if isinstance(config, client.Configuration):
        cfg = copy.deepcopy(config)
    elif isinstance(config, (str, os.PathLike)):
        cfg = client.Configuration()
        kconfig.load_kube_config(config_file=os.fspath(config), context=context, client_configuration=cfg)
    elif config is not None:
        raise TypeError(f"kube config must be a path, a Configuration or an ApiClient, not {type(config).__name__}")
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        cfg = client.Configuration()
        kconfig.load_incluster_config(client_configuration=cfg)
    else:
        cfg = client.Configuration()
        kconfig.load_kube_config(context=context, client_configuration=cfg)
    if cfg.retries is None:
        # urllib3 would retry a refused connection 3 times, logging a WARNING each time; the informers have their
        # own backoff and log once per outage.
        cfg.retries = False
    return client.ApiClient(cfg)


def describe_target(api_client: Any) -> str:
    """The API server URL an ``ApiClient`` talks to (for logs and status)."""
    try:
        return str(api_client.configuration.host)
    except AttributeError:
        return "?"
