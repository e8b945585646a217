"""MetricsConfiguration validation and status by the operator, against the test API server: valid -> Accepted,
invalid -> Errored with the agent validator's reason, exactly one in force (sticky, else the oldest valid one)."""

from __future__ import annotations

import pytest

from retina_core.metricsconfig import parse_metrics_configuration
from retina_core.units import ConfigError
from retina_operator.metricsconfig import desired_statuses
from tests.support.kube_fixtures import wait_for
from tests.test_operator_support import http_get, http_json, kube_server, metric, operators  # noqa: F401

VALID = {"contextOptions": [{"metricName": "forward_count", "sourceLabels": ["ip", "podname"]}],
         "namespaces": {"include": ["default"]}}
OTHER = {"contextOptions": [{"metricName": "drop_count", "sourceLabels": ["namespace"]}]}
INVALID = {"contextOptions": [{"metricName": "forward_count", "sourceLabels": ["pod"]}]}


def mc(name: str, spec) -> dict:
    return {"apiVersion": "retina.sh/v1alpha1", "kind": "MetricsConfiguration", "metadata": {"name": name},
            "spec": spec}


def reason_for(spec) -> str:
    with pytest.raises(ConfigError) as err:
        parse_metrics_configuration(spec, path="spec")
    return str(err.value)


def status(server, name: str) -> dict:
    return (server.get("metricsconfigurations", name) or {}).get("status") or {}


def status_patches(server) -> int:
    """Status PATCHes of MetricsConfigurations the test API server has answered."""
    return sum(1 for method, path in list(server.requests)
               if method == "PATCH" and "/metricsconfigurations/" in path and path.split("?")[0].endswith("/status"))


def wait_state(server, name: str, state: str, reason: str | None = None) -> dict:
    def ok():
        st = status(server, name)
        return st if st.get("state") == state and (reason is None or st.get("reason") == reason) else None
    return wait_for(ok, what=f"{name} {state} {reason or ''}")


def test_accepted_errored_and_one_in_force(kube_server, operators):
    kube_server.create("metricsconfigurations", mc("first", VALID))
    op = operators()
    st = wait_state(kube_server, "first", "Accepted", "")
    assert st["lastKnownSpec"] == VALID

    kube_server.create("metricsconfigurations", mc("broken", INVALID))
    st = wait_state(kube_server, "broken", "Errored")
    assert st["reason"] == reason_for(INVALID) and "spec.contextOptions[0].sourceLabels[0]" in st["reason"]
    assert "lastKnownSpec" not in st  # never valid

    kube_server.create("metricsconfigurations", mc("second", OTHER))
    st = wait_state(kube_server, "second", "Errored", "another MetricsConfiguration is in force: first")
    assert st["lastKnownSpec"] == OTHER
    assert status(kube_server, "first")["state"] == "Accepted"
    assert http_json(op, "/debug/stats")["metrics_configurations"]["in_force"] == "first"

    # Fixing an older one does not displace the one in force...
    kube_server.patch("metricsconfigurations", "broken", {"spec": {"contextOptions": [
        {"metricName": "tcp_retransmission_count"}]}})
    wait_state(kube_server, "broken", "Errored", "another MetricsConfiguration is in force: first")
    # ... deleting it hands over to the oldest valid one.
    kube_server.delete("metricsconfigurations", "first")
    wait_state(kube_server, "broken", "Accepted")
    wait_state(kube_server, "second", "Errored", "another MetricsConfiguration is in force: broken")

    # The one in force becomes invalid: Errored with its last valid spec kept; the next valid one takes over.
    kube_server.patch("metricsconfigurations", "broken", {"spec": {"contextOptions": []}})
    st = wait_state(kube_server, "broken", "Errored", reason_for({"contextOptions": []}))
    assert st["lastKnownSpec"] == {"contextOptions": [{"metricName": "tcp_retransmission_count"}]}
    wait_state(kube_server, "second", "Accepted", "")

    # Garbage specs are reasons, not crashes.
    kube_server.create("metricsconfigurations", {**mc("junk", "not a mapping")})
    st = wait_state(kube_server, "junk", "Errored")
    assert st["reason"] == reason_for("not a mapping")
    kube_server.create("metricsconfigurations", {"apiVersion": "retina.sh/v1alpha1", "kind": "MetricsConfiguration",
                                                 "metadata": {"name": "nospec"}})
    assert wait_state(kube_server, "nospec", "Errored")["reason"].startswith("spec: must be a mapping")

    # Settled: nothing is rewritten when nothing changes (the controller's own writes do not loop). The controller
    # counts a write after the PATCH returns, so wait until its count matches the status PATCHes the server answered.
    wait_for(lambda: op.metrics_config.status_writes == status_patches(kube_server), what="status writes counted")
    writes = op.metrics_config.status_writes
    rvs = {n: kube_server.get("metricsconfigurations", n)["metadata"]["resourceVersion"]
           for n in ("broken", "second", "junk", "nospec")}
    kube_server.create("metricsconfigurations", mc("late", OTHER))
    wait_state(kube_server, "late", "Errored", "another MetricsConfiguration is in force: second")
    wait_for(lambda: status_patches(kube_server) == writes + 1, what="the status PATCH of 'late'")
    wait_for(lambda: op.metrics_config.status_writes == writes + 1, what="the status write counted")
    assert {n: kube_server.get("metricsconfigurations", n)["metadata"]["resourceVersion"] for n in rvs} == rvs
    text = http_get(op, "/metrics")[1]
    assert metric(text, "retina_operator_metricsconfiguration_status_writes_total") == writes + 1


def test_warnings_are_the_reason_of_an_accepted_configuration(kube_server, operators):
    spec = {"contextOptions": [{"metricName": "forward_count", "additionalLabels": ["direction"]}]}
    expected = "; ".join(parse_metrics_configuration(spec, path="spec").warnings)
    assert expected
    kube_server.create("metricsconfigurations", mc("warned", spec))
    operators()
    wait_state(kube_server, "warned", "Accepted", expected)


def test_sticky_acceptance_survives_a_restart_and_an_api_server_outage(kube_server, operators):
    kube_server.create("metricsconfigurations", mc("a-old", VALID))
    kube_server.create("metricsconfigurations", mc("b-new", OTHER))
    # b-new was accepted before (e.g. a-old was invalid then): it stays in force across an operator restart.
    kube_server.patch("metricsconfigurations", "b-new", {"status": {"state": "Accepted", "reason": ""}},
                      status=True)
    kube_server.set_down(True, how="503")
    op = operators()
    wait_for(lambda: op.metrics_config.informer.failures >= 1, what="failures while the API server is down")
    kube_server.set_down(False)
    wait_state(kube_server, "b-new", "Accepted", "")
    wait_state(kube_server, "a-old", "Errored", "another MetricsConfiguration is in force: b-new")


def test_failed_status_writes_are_retried(kube_server, operators):
    from kubernetes.client.exceptions import ApiException

    kube_server.create("metricsconfigurations", mc("cfg", VALID))
    op = operators(start=False)
    real = op.metrics_config.api.patch_cluster_custom_object_status
    calls = []

    def flaky(*args, **kw):
        calls.append(args[3])
        if len(calls) <= 2:
            raise ApiException(status=500, reason="Internal Server Error")
        return real(*args, **kw)

    op.metrics_config.api.patch_cluster_custom_object_status = flaky
    op.start()
    wait_state(kube_server, "cfg", "Accepted", "")
    assert calls == ["cfg"] * 3 and op.metrics_config.status()["status_write_failures"] == 2
    wait_for(lambda: op.metrics_config.status()["error"] is None, what="the error cleared after the good write")


def test_desired_statuses_two_claiming_acceptance_pick_the_oldest():
    objs = [{"metadata": {"name": "y", "creationTimestamp": "2026-01-02T00:00:00Z"}, "spec": VALID,
             "status": {"state": "Accepted"}},
            {"metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": OTHER,
             "status": {"state": "Accepted"}},
            {"metadata": {"name": "w", "creationTimestamp": "2025-01-01T00:00:00Z"}, "spec": VALID}]
    in_force, st = desired_statuses(objs)
    assert in_force == "x" and st["x"]["state"] == "Accepted"
    assert st["y"]["reason"] == st["w"]["reason"] == "another MetricsConfiguration is in force: x"
    # Same creation second: the name breaks the tie.
    same = [{"metadata": {"name": n, "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": VALID} for n in "ba"]
    assert desired_statuses(same)[0] == "a"
    assert desired_statuses([]) == (None, {})
