"""MetricsConfiguration (``retina.sh/v1alpha1``, cluster-scoped): validation and status, one in force.

Every resource is validated with the agent's own validator (:func:`retina_core.metricsconfig.parse_metrics_configuration`,
so the operator accepts exactly what an agent can run) and gets a status through the ``/status`` subresource:

* invalid: ``state: Errored``, ``reason`` = the validator's one-line message (``spec.contextOptions[0].metricName:
  ...``); ``lastKnownSpec`` keeps the last spec of this resource that was valid, if any;
* valid and **in force**: ``state: Accepted``, ``reason`` = the validator's warnings joined by ``"; "`` (empty when
  there are none), ``lastKnownSpec`` = the validated spec (agents should run ``lastKnownSpec`` of the Accepted
  resource: it is what was validated, even while an edit is on its way);
* valid but **not in force**: ``state: Errored``, ``reason: "another MetricsConfiguration is in force: <name>"``,
  ``lastKnownSpec`` = its spec.

**Exactly one is in force** (Retina's agents apply only one, and only an Accepted one): among the valid resources,
the one already ``Accepted`` stays in force (the oldest of them by ``creationTimestamp``, then name, should several
claim it); when none is, the oldest valid one becomes Accepted. So creating a second configuration, or fixing an
old one, never silently changes the metrics in force; the configuration in force changes only when it is deleted
or becomes invalid, and then the oldest valid one takes over. Not-in-force is ``Errored`` rather than ``Warning``
because it is not applied anywhere: ``kubectl get mc`` must not suggest it is running with caveats.

The controller is level-triggered: any change re-evaluates every resource (after the first full list) and writes
only statuses that differ, so its own status writes settle at once. Failed writes are retried with backoff.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from typing import Any

from retina_core.metricsconfig import parse_metrics_configuration
from retina_core.units import ConfigError
from retina_core.kube.watch import Informer, WatchEvent, describe_error
from retina_core.worker import Worker

__all__ = ["ACCEPTED", "ERRORED", "GROUP", "MetricsConfigController", "PLURAL", "VERSION", "desired_statuses"]

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "retina.sh", "v1alpha1", "metricsconfigurations"
ACCEPTED, ERRORED = "Accepted", "Errored"
NOT_IN_FORCE = "another MetricsConfiguration is in force: {name}"


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _age_key(obj: dict[str, Any]) -> tuple[str, str]:
    return (str((obj.get("metadata") or {}).get("creationTimestamp") or "~"), _name(obj))


def desired_statuses(objs: list[dict[str, Any]]) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """The configuration in force (name or None) and the status every resource should have, by name."""
    valid: list[dict[str, Any]] = []
    out: dict[str, dict[str, Any]] = {}
    warnings: dict[str, tuple[str, ...]] = {}
    for obj in objs:
        name = _name(obj)
        old = obj.get("status") if isinstance(obj.get("status"), dict) else {}
        spec = obj.get("spec")
        try:
            cfg = parse_metrics_configuration(spec, path="spec")
        except ConfigError as exc:
            st: dict[str, Any] = {"state": ERRORED, "reason": str(exc)}
            if isinstance(old.get("lastKnownSpec"), dict):
                st["lastKnownSpec"] = old["lastKnownSpec"]
            out[name] = st
            continue
        warnings[name] = cfg.warnings
        valid.append(obj)
    sticky = [o for o in valid if (o.get("status") or {}).get("state") == ACCEPTED]
    pool = sticky or valid
    in_force = min(pool, key=_age_key) if pool else None
    for obj in valid:
        name = _name(obj)
        if obj is in_force:
            out[name] = {"state": ACCEPTED, "reason": "; ".join(warnings[name]), "lastKnownSpec": obj["spec"]}
        else:
            out[name] = {"state": ERRORED, "reason": NOT_IN_FORCE.format(name=_name(in_force)),
                         "lastKnownSpec": obj["spec"]}
    return (_name(in_force) if in_force is not None else None), out


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


class MetricsConfigController(Worker):
    """Watches MetricsConfigurations and keeps their status (see the module docstring).

    ``informer_options`` go to the :class:`Informer`. ``retry_initial_s``/``retry_max_s``: backoff for failed
    status writes. Counters: ``status_writes``, ``status_write_failures``, ``reconciles``.
    """

    def __init__(self, api_client: Any, *, retry_initial_s: float = 0.5, retry_max_s: float = 30.0,
                 **informer_options: Any) -> None:
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.informer = Informer(functools.partial(self.api.list_cluster_custom_object, GROUP, VERSION, PLURAL),
                                 name="metricsconfigurations", **informer_options)
        self.informer.add_handler(self._on_event)
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.in_force: str | None = None
        self.states: dict[str, dict[str, str]] = {}
        self.status_writes = 0
        self.status_write_failures = 0
        self.reconciles = 0
        self.error: str | None = None
        self._dirty = threading.Event()
        Worker.__init__(self, "operator-metricsconfig")

    def start(self) -> None:
        self.informer.start()
        Worker.start(self)

    def stop(self, timeout_s: float = 5.0) -> bool:
        self._stop.set()
        self.informer.stop(timeout_s)
        return Worker.stop(self, timeout_s)

    def _wake_thread(self) -> None:
        self._dirty.set()

    def status(self) -> dict[str, Any]:
        return {"synced": self.informer.synced, "in_force": self.in_force, "configurations": dict(self.states),
                "status_writes": self.status_writes, "status_write_failures": self.status_write_failures,
                "error": self.error or self.informer.error}

    def _on_event(self, ev: WatchEvent) -> None:
        self._dirty.set()

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            if delay:
                self._stop.wait(delay)  # backoff after a failed write (changes meanwhile are picked up below)
            else:
                self._dirty.wait()
            if self._stop.is_set():
                return
            self._dirty.clear()
            try:
                ok = self.reconcile()
            except Exception:  # noqa: BLE001 - a bug must not end the controller
                log.exception("operator: MetricsConfiguration reconcile failed")
                ok = False
            delay = 0.0 if ok else min(self.retry_max_s, max(self.retry_initial_s, delay * 2))

    def reconcile(self) -> bool:
        """Write every status that differs from the desired one. Returns False if a write failed (retry)."""
        if not self.informer.synced:
            return True
        self.reconciles += 1
        objs = self.informer.items()
        in_force, desired = desired_statuses(objs)
        if in_force != self.in_force:
            log.info("operator: MetricsConfiguration in force: %s", in_force or "none")
            self.in_force = in_force
        self.states = {n: {"state": st["state"], "reason": st["reason"]} for n, st in desired.items()}
        ok = True
        for obj in sorted(objs, key=_age_key):
            name = _name(obj)
            want = desired[name]
            if _same(obj.get("status"), want):
                continue
            try:
                self.api.patch_cluster_custom_object_status(
                    GROUP, VERSION, PLURAL, name, [{"op": "add", "path": "/status", "value": want}],
                    _content_type="application/json-patch+json", _request_timeout=(5, 10))
            except Exception as exc:  # noqa: BLE001
                if getattr(exc, "status", None) == 404:
                    continue  # deleted meanwhile; its DELETED event triggers another pass
                self.status_write_failures += 1
                self.error = f"status of {name}: {describe_error(exc)}"
                log.warning("operator: cannot write the status of MetricsConfiguration %s: %s; retrying", name,
                            describe_error(exc))
                ok = False
                continue
            self.status_writes += 1
            if want["state"] == ERRORED and want["reason"] and not want["reason"].startswith("another"):
                log.warning("operator: MetricsConfiguration %s rejected: %s", name, want["reason"])
            else:
                log.info("operator: MetricsConfiguration %s: %s%s", name, want["state"],
                         f" ({want['reason']})" if want["reason"] else "")
        if ok:
            self.error = None
        return ok
