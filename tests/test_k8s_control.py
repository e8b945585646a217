"""The agent's Kubernetes control loop (retina_exporter.k8s_control) against the test API server with the real
client, the real MetricsModule and the real IpFilterMap of a compiled packetparser program (the kernel LPM trie is
read back): MetricsConfiguration resources applied / ignored / falling back, annotation opt-in of namespaces and
pods reaching the metrics module and the kernel filter within a bounded time, separate rule owners, IP reuse,
readiness."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from retina_core.identity import Identity
from retina_core.metricsconfig import parse_metrics_configuration
from metrics_module.module import MetricsModule
from retina_core.record import OBS_FROM_ENDPOINT, OBS_TO_ENDPOINT, FlowRecord
from retina_exporter.k8s_control import (ANNOTATION_METRICS, OWNER_NAMESPACES, OWNER_PODS, KubeControl,
                                         annotation_spec, build_for_agent, packetparser_filter, supports_pod_include)
from tests.support.kube_api_server import KubeApiServer
from tests.support.kube_fixtures import run_pod, wait_for

NODE = "node-a"
FAST = dict(backoff_initial_s=0.05, backoff_max_s=0.4, resync_period_s=0)
BOUND_S = 1.5  # "reconciled within ~1 s of a change", with slack for a loaded test machine
OBSERVE = {"retina.sh": "observe"}

FILE_SPEC = {"contextOptions": [{"metricName": "forward_count", "sourceLabels": ["podname"]}]}
CR_SPEC = {"contextOptions": [{"metricName": "forward_count", "sourceLabels": ["podname"]},
                              {"metricName": "forward_bytes", "sourceLabels": ["namespace"]}]}
OTHER_SPEC = {"contextOptions": [{"metricName": "drop_count", "sourceLabels": ["ip"]}]}
BAD_SPEC = {"contextOptions": [{"metricName": "forward_cnt", "sourceLabels": ["podname"]}]}


def parse(spec):
    return parse_metrics_configuration(spec, remote_context=False)


# -- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture
def server():
    """The test API server; pods deleted gracefully stay terminating until deleted again with grace 0."""
    s = KubeApiServer(bookmark_interval_s=0.1, kubelet_delay_s=None, watch_timeout_scale=0.25).start()
    yield s
    s.stop()


@pytest.fixture
def flt(pp_program_low):
    """The real IpFilterMap of the session's packetparser program; our owners are removed afterwards."""
    f = pp_program_low.filter
    yield f
    f.remove_owner(OWNER_NAMESPACES)
    f.remove_owner(OWNER_PODS)


def kernel_addresses(prog) -> set[str]:
    """What the kernel LPM trie holds, as text (IPv4-mapped keys shown as IPv4)."""
    out = set()
    for k in prog.bpf[b"retina_filter"].keys():
        addr = ipaddress.IPv6Address(bytes(k.ip))
        if addr.ipv4_mapped is not None and k.prefixlen >= 96:
            out.add(str(addr.ipv4_mapped) if k.prefixlen == 128 else f"{addr.ipv4_mapped}/{k.prefixlen - 96}")
        else:
            out.add(str(addr) if k.prefixlen == 128 else f"{addr}/{k.prefixlen}")
    return out


@pytest.fixture
def control(server):
    made: list[KubeControl] = []

    def make(file_cfg=None, annotations=False, filter_map=None, start=True, remote=False, bypass=False,
             metrics=True, **kw):
        mm = MetricsModule(None, None, file_cfg, NODE, False, remote_context=remote) if metrics else None
        kc = KubeControl(server.configuration(), node_name=NODE, metrics_module=mm,
                         filter_map=(lambda: filter_map) if filter_map is not None else None,
                         enable_annotations=annotations, bypass_lookup_ip_of_interest=bypass, remote_context=remote,
                         file_configuration=file_cfg, **{**FAST, **kw})
        made.append(kc)
        if start:
            kc.start()
        return kc, mm

    yield make
    for kc in made:
        kc.stop()


def settle(server, kc) -> None:
    """Wait until every informer has seen the server's current revision, then reconcile once synchronously."""
    rv = server.resource_version
    wait_for(lambda: all(int(inf.resource_version or 0) >= rv for inf in kc.informers.values()),
             what=f"informers at revision {rv}")
    kc.reconcile()


def mc(name, spec):
    return {"apiVersion": "retina.sh/v1alpha1", "kind": "MetricsConfiguration", "metadata": {"name": name},
            "spec": spec}


def set_state(server, name, state, reason="", last_known=None):
    status = {"state": state, "reason": reason}
    if last_known is not None:
        status["lastKnownSpec"] = last_known
    server.patch("metricsconfigurations", name, {"status": status}, status=True)


def ident(ns, pod, ip):
    return Identity("pod", namespace=ns, pod_name=pod, workloads=(("Deployment", pod),), node_name=NODE, ip=ip)


def record(src, dst, packets=1, obs=OBS_FROM_ENDPOINT):
    """A forwarded UDP record; local context counts the source's egress at FROM_ENDPOINT, the destination's
    ingress at TO_ENDPOINT."""
    r = FlowRecord(0, 4, socket.inet_aton(src.ip), socket.inet_aton(dst.ip), 17, 40000, 53,
                   obs_point=obs, direction=2, is_reply=False, packets=packets, bytes=100 * packets,
                   flag_counts=(0,) * 10)
    r.source, r.destination = src, dst
    return r


def series(mm, family="networkobservability_adv_forward_count"):
    return {(labels.get("namespace"), labels.get("podname"), labels.get("direction")): v
            for name, labels, v in mm.advanced.iter_series() if name == family}


def namespace(server, name, observed=False):
    meta = {"name": name}
    if observed:
        meta["annotations"] = dict(OBSERVE)
    return server.create("namespaces", {"metadata": meta})


def annotate(server, plural, name, on, namespace=None):
    server.patch(plural, name, {"metadata": {"annotations": {"retina.sh": "observe" if on else None}}},
                 namespace=namespace)


def pod(server, name, ns, ips, node=NODE, observed=False, **kw):
    p = run_pod(server, name, node, ips, namespace=ns, **kw)
    if observed:
        annotate(server, "pods", name, True, namespace=ns)
    return p


# -- MetricsConfiguration mode -----------------------------------------------------------------------------------


def test_accepted_resource_applied_counts_kept_and_delete_falls_back(server, control):
    file_cfg = parse(FILE_SPEC)
    kc, mm = control(file_cfg)
    wait_for(lambda: kc.reconciled, what="first reconcile")
    assert kc.not_ready_reasons() == []
    assert mm.config == file_cfg and kc.applied_from == "config file"
    web, db = ident("shop", "web", "10.0.0.5"), ident("data", "db", "10.0.0.6")
    mm.process([record(web, db, 3)])
    assert series(mm)[(None, "web", "egress")] == 3

    server.create("metricsconfigurations", mc("cfg", CR_SPEC))  # no status yet: not accepted
    settle(server, kc)
    assert mm.config == file_cfg
    set_state(server, "cfg", "Initialized")
    settle(server, kc)
    assert mm.config == file_cfg

    t0 = time.monotonic()
    set_state(server, "cfg", "Accepted")
    wait_for(lambda: mm.config == parse(CR_SPEC), timeout_s=BOUND_S, what="Accepted resource applied")
    assert time.monotonic() - t0 < BOUND_S
    assert kc.applied_from == "MetricsConfiguration/cfg"
    assert kc.status()["metricsconfiguration"]["in_force"] == "cfg"
    # forward_count keeps its label names, so its series (and count) carry over; forward_bytes starts.
    mm.process([record(web, db, 2)])
    assert series(mm)[(None, "web", "egress")] == 5
    assert series(mm, "networkobservability_adv_forward_bytes") == {("shop", None, "egress"): 200}

    server.delete("metricsconfigurations", "cfg")
    wait_for(lambda: mm.config == file_cfg, timeout_s=BOUND_S, what="fallback to the config file")
    assert kc.applied_from == "config file"
    assert kc.status()["metricsconfiguration"]["in_force"] is None


def test_not_accepted_or_invalid_changes_nothing(server, control):
    kc, mm = control(None)  # no metricsConfiguration in the file: no pod-level metrics
    wait_for(lambda: kc.reconciled, what="first reconcile")
    assert mm.config is None

    server.create("metricsconfigurations", mc("bad", BAD_SPEC))
    set_state(server, "bad", "Errored", "unknown metric")
    settle(server, kc)
    assert mm.config is None and kc.rejected == 0

    # The operator accepted something this agent cannot parse: logged, counted, nothing changes.
    set_state(server, "bad", "Accepted")
    settle(server, kc)
    assert mm.config is None and kc.rejected == 1
    [(name, mtype, _help, samples)] = kc.families()
    assert name == "controlplane_networkobservability_metricsconfiguration_rejected_counter" and mtype == "counter"
    assert samples == [((), 1)]
    kc.reconcile()
    assert kc.rejected == 1  # counted once per resource version, not per reconcile

    server.patch("metricsconfigurations", "bad", {"spec": CR_SPEC})
    wait_for(lambda: mm.config == parse(CR_SPEC), timeout_s=BOUND_S, what="fixed spec applied")

    # An edit the operator rejects (state Errored) changes nothing; the resource stays in force.
    server.patch("metricsconfigurations", "bad", {"spec": OTHER_SPEC})
    set_state(server, "bad", "Errored", "rejected")
    settle(server, kc)
    assert mm.config == parse(CR_SPEC) and kc.applied_from == "MetricsConfiguration/bad"

    # Deleted: back to the file (none).
    server.delete("metricsconfigurations", "bad")
    wait_for(lambda: mm.config is None, timeout_s=BOUND_S, what="fallback to no configuration")


def test_last_known_spec_is_applied_while_an_edit_is_pending(server, control):
    kc, mm = control(None)
    server.create("metricsconfigurations", mc("cfg", CR_SPEC))
    set_state(server, "cfg", "Accepted", last_known=CR_SPEC)
    wait_for(lambda: mm.config == parse(CR_SPEC), timeout_s=BOUND_S, what="accepted spec")
    # The spec is edited; the status still says Accepted for the previous spec: that one stays.
    server.patch("metricsconfigurations", "cfg", {"spec": OTHER_SPEC})
    settle(server, kc)
    assert mm.config == parse(CR_SPEC)
    # The operator accepts the edit.
    set_state(server, "cfg", "Accepted", last_known=OTHER_SPEC)
    wait_for(lambda: mm.config == parse(OTHER_SPEC), timeout_s=BOUND_S, what="edit applied")


def test_config_file_reload_is_only_the_fallback_while_a_resource_is_in_force(server, control):
    file_cfg = parse(FILE_SPEC)
    kc, mm = control(file_cfg)
    server.create("metricsconfigurations", mc("cfg", CR_SPEC))
    set_state(server, "cfg", "Accepted")
    wait_for(lambda: mm.config == parse(CR_SPEC), timeout_s=BOUND_S, what="resource applied")
    new_file = parse(OTHER_SPEC)
    kc.set_file_configuration(new_file)
    kc.reconcile()
    assert mm.config == parse(CR_SPEC)
    server.delete("metricsconfigurations", "cfg")
    wait_for(lambda: mm.config == new_file, timeout_s=BOUND_S, what="new file configuration")
    # Without a resource in force, a file change applies at once.
    kc.set_file_configuration(file_cfg)
    wait_for(lambda: mm.config == file_cfg, timeout_s=BOUND_S, what="file configuration")


def test_several_accepted_the_oldest_is_in_force(server, control):
    kc, mm = control(None)
    old = mc("b", CR_SPEC)  # created long ago (timestamps have whole seconds: ties go by name, as the operator)
    old["metadata"]["creationTimestamp"] = "2020-01-01T00:00:00Z"
    old["status"] = {"state": "Accepted"}
    server.store_silently("metricsconfigurations", old)
    kc.informers["metricsconfigurations"].resync_now()
    wait_for(lambda: mm.config == parse(CR_SPEC), timeout_s=BOUND_S, what="b")
    server.create("metricsconfigurations", mc("a", OTHER_SPEC))  # younger, although its name sorts first
    set_state(server, "a", "Accepted")
    settle(server, kc)
    assert mm.config == parse(CR_SPEC) and kc.applied_from == "MetricsConfiguration/b"
    assert kc.status()["metricsconfiguration"]["accepted"] == ["b", "a"]
    server.delete("metricsconfigurations", "b")
    wait_for(lambda: mm.config == parse(OTHER_SPEC), timeout_s=BOUND_S, what="a takes over")
    assert kc.applied_from == "MetricsConfiguration/a"


def test_resource_recreated_under_the_same_name_is_not_in_force_until_accepted(server, control):
    file_cfg = parse(FILE_SPEC)
    kc, mm = control(file_cfg)
    server.create("metricsconfigurations", mc("cfg", CR_SPEC))
    set_state(server, "cfg", "Accepted")
    wait_for(lambda: mm.config == parse(CR_SPEC), timeout_s=BOUND_S, what="applied")
    server.delete("metricsconfigurations", "cfg")
    server.create("metricsconfigurations", mc("cfg", OTHER_SPEC))  # same name, new uid, not accepted yet
    wait_for(lambda: mm.config == file_cfg, timeout_s=BOUND_S, what="fallback")
    set_state(server, "cfg", "Accepted")
    wait_for(lambda: mm.config == parse(OTHER_SPEC), timeout_s=BOUND_S, what="new one applied")


def test_readiness_waits_for_the_first_list(server, control):
    server.set_down(True)
    kc, mm = control(parse(FILE_SPEC))
    wait_for(lambda: any("cannot reach" in r for r in kc.not_ready_reasons()), what="error in reasons")
    assert kc.not_ready_reasons()[0].startswith("kubernetes control: metricsconfigurations not listed yet")
    assert mm.config == parse(FILE_SPEC)  # the file's configuration meanwhile
    server.set_down(False)
    wait_for(lambda: kc.not_ready_reasons() == [], timeout_s=5, what="ready")


# -- annotation mode ---------------------------------------------------------------------------------------------


def test_annotations_ignore_metrics_configuration_resources(server, control):
    server.create("metricsconfigurations", mc("cfg", CR_SPEC))
    set_state(server, "cfg", "Accepted")
    kc, mm = control(None, annotations=True)
    assert set(kc.informers) == {"namespaces", "pods"}  # no MetricsConfiguration informer at all
    wait_for(lambda: kc.reconciled, what="reconciled")
    want = parse_metrics_configuration(annotation_spec(False), remote_context=False)
    assert [o.metric_name for o in mm.config.context_options] == list(ANNOTATION_METRICS)
    assert all(o.source_labels == ("ip", "namespace", "podname", "workload") for o in mm.config.context_options)
    assert mm.config.context_options == want.context_options
    assert mm.config.namespaces_include == frozenset()  # nothing observed yet
    assert kc.applied_from == "annotations" and kc.families() == []


def test_annotation_template_both_sides_in_remote_context(server, control):
    kc, mm = control(None, annotations=True, remote=True)
    wait_for(lambda: kc.reconciled, what="reconciled")
    assert all(o.destination_labels == ("ip", "namespace", "podname", "workload")
               for o in mm.config.context_options)
    assert "pods" in kc.informers and kc.informers["pods"].field_selector is None  # every pod in remote context


def test_template_from_the_config_file(server, control):
    file_cfg = parse({**FILE_SPEC, "namespaces": {"include": ["ignored"]}})
    kc, mm = control(file_cfg, annotations=True)
    namespace(server, "shop", observed=True)
    wait_for(lambda: mm.config.namespaces_include == {"shop"}, timeout_s=BOUND_S, what="include")
    assert mm.config.context_options == file_cfg.context_options


def test_namespace_annotation_adds_and_removes_pods(server, control, flt, pp_program_low):
    baseline = kernel_addresses(pp_program_low)
    namespace(server, "shop")
    namespace(server, "data")
    pod(server, "web", "shop", ["10.0.0.5", "fd00::5"])
    pod(server, "api", "shop", ["10.0.0.7"])
    pod(server, "db", "data", ["10.0.0.6"])
    pod(server, "far", "shop", ["10.0.1.9"], node="node-b")  # another node: not this agent's
    kc, mm = control(None, annotations=True, filter_map=flt)
    wait_for(lambda: kc.not_ready_reasons() == [], what="ready")
    assert mm.config.namespaces_include == frozenset()
    assert kernel_addresses(pp_program_low) == baseline

    t0 = time.monotonic()
    annotate(server, "namespaces", "shop", True)
    want = {"10.0.0.5", "fd00::5", "10.0.0.7"}
    wait_for(lambda: kernel_addresses(pp_program_low) == baseline | want and mm.config.namespaces_include == {"shop"},
             timeout_s=BOUND_S, what="shop observed")
    assert time.monotonic() - t0 < BOUND_S
    assert kc.status()["annotations"]["filter"]["owners"] == {OWNER_NAMESPACES: sorted(want), OWNER_PODS: []}

    # Pod-level series for the observed namespace's pods only.
    web, api, db = ident("shop", "web", "10.0.0.5"), ident("shop", "api", "10.0.0.7"), ident("data", "db", "10.0.0.6")
    mm.process([record(web, db, 2), record(db, api, 3, OBS_TO_ENDPOINT), record(db, api, 4)])
    assert {k: v for k, v in series(mm).items() if k[0] == "shop"} == {("shop", "web", "egress"): 2,
                                                                       ("shop", "api", "ingress"): 3}
    assert not any(k[0] == "data" for k in series(mm))

    # A new pod in the observed namespace, then one that leaves.
    pod(server, "cart", "shop", ["10.0.0.8"])
    wait_for(lambda: "10.0.0.8" in kernel_addresses(pp_program_low), timeout_s=BOUND_S, what="new pod claimed")
    server.delete("pods", "api", namespace="shop", grace_period_s=0)
    wait_for(lambda: "10.0.0.7" not in kernel_addresses(pp_program_low), timeout_s=BOUND_S, what="pod gone")

    t0 = time.monotonic()
    annotate(server, "namespaces", "shop", False)
    wait_for(lambda: kernel_addresses(pp_program_low) == baseline and mm.config.namespaces_include == frozenset(),
             timeout_s=BOUND_S, what="shop no longer observed")
    assert time.monotonic() - t0 < BOUND_S
    series_before = series(mm)
    mm.process([record(web, db, 5)])
    assert series(mm) == series_before  # no longer counted (the old series keep their values)


def test_pod_annotation_alone(server, control, flt, pp_program_low):
    baseline = kernel_addresses(pp_program_low)
    namespace(server, "shop")
    pod(server, "web", "shop", ["10.0.0.5"])
    pod(server, "db", "shop", ["10.0.0.6"])
    kc, mm = control(None, annotations=True, filter_map=flt)
    wait_for(lambda: kc.reconciled, what="reconciled")
    annotate(server, "pods", "web", True, namespace="shop")
    wait_for(lambda: kernel_addresses(pp_program_low) == baseline | {"10.0.0.5"}, timeout_s=BOUND_S,
             what="web claimed")
    st = kc.status()["annotations"]
    assert st["pods"] == ["shop/web"] and st["namespaces"] == []
    assert st["filter"]["owners"] == {OWNER_NAMESPACES: [], OWNER_PODS: ["10.0.0.5"]}
    assert mm.config.namespaces_include == frozenset()
    annotate(server, "pods", "web", False, namespace="shop")
    wait_for(lambda: kernel_addresses(pp_program_low) == baseline, timeout_s=BOUND_S, what="web released")


@pytest.mark.skipif(not supports_pod_include(), reason="metrics_module has no MetricsConfiguration.pods_include yet "
                    "(see docs/annotations.md, 'metrics module extension')")
def test_pod_annotation_alone_counts_that_pod_only(server, control):
    namespace(server, "shop")
    pod(server, "web", "shop", ["10.0.0.5"], observed=True)
    pod(server, "db", "shop", ["10.0.0.6"])
    kc, mm = control(None, annotations=True)
    wait_for(lambda: mm.config.pods_include == {("shop", "web")}, timeout_s=BOUND_S, what="pods_include")
    web, db = ident("shop", "web", "10.0.0.5"), ident("shop", "db", "10.0.0.6")
    mm.process([record(web, db, 2), record(db, web, 1, OBS_TO_ENDPOINT), record(db, web, 7)])
    assert series(mm) == {("shop", "web", "egress"): 2, ("shop", "web", "ingress"): 1}
    annotate(server, "pods", "web", False, namespace="shop")
    wait_for(lambda: mm.config.pods_include == frozenset(), timeout_s=BOUND_S, what="pods_include empty")
    mm.process([record(web, db, 2)])
    assert series(mm)[("shop", "web", "egress")] == 2


def test_rules_are_separate_owners(server, control, flt, pp_program_low):
    baseline = kernel_addresses(pp_program_low)
    namespace(server, "shop", observed=True)
    pod(server, "web", "shop", ["10.0.0.5"], observed=True)
    pod(server, "api", "shop", ["10.0.0.7"])
    kc, mm = control(None, annotations=True, filter_map=flt)
    wait_for(lambda: kernel_addresses(pp_program_low) == baseline | {"10.0.0.5", "10.0.0.7"}, timeout_s=BOUND_S,
             what="both claimed")
    annotate(server, "namespaces", "shop", False)
    wait_for(lambda: kernel_addresses(pp_program_low) == baseline | {"10.0.0.5"}, timeout_s=BOUND_S,
             what="the pod rule keeps web")
    annotate(server, "namespaces", "shop", True)
    annotate(server, "pods", "web", False, namespace="shop")
    wait_for(lambda: kc.status()["annotations"]["pods"] == [], timeout_s=BOUND_S, what="pod annotation gone")
    wait_for(lambda: kernel_addresses(pp_program_low) == baseline | {"10.0.0.5", "10.0.0.7"}, timeout_s=BOUND_S,
             what="the namespace rule keeps web")


def test_ip_reuse(server, control, flt, pp_program_low):
    baseline = kernel_addresses(pp_program_low)
    namespace(server, "shop", observed=True)
    namespace(server, "data")
    pod(server, "old", "shop", ["10.0.0.5"])
    kc, mm = control(None, annotations=True, filter_map=flt)
    wait_for(lambda: kernel_addresses(pp_program_low) == baseline | {"10.0.0.5"}, timeout_s=BOUND_S, what="old")

    # "old" terminates (gracefully: its address is still its own), "new" in an unobserved namespace already got
    # the address; "old"'s final delete removes the address: nothing observed holds it any more.
    server.delete("pods", "old", namespace="shop")
    pod(server, "new", "data", ["10.0.0.5"])
    settle(server, kc)
    assert "10.0.0.5" in kernel_addresses(pp_program_low)
    server.delete("pods", "old", namespace="shop", grace_period_s=0)
    wait_for(lambda: kernel_addresses(pp_program_low) == baseline, timeout_s=BOUND_S, what="released")

    # Now the reverse: an observed pod got an address whose previous (observed) holder's delete arrives later.
    pod(server, "old2", "shop", ["10.0.0.9"])
    wait_for(lambda: "10.0.0.9" in kernel_addresses(pp_program_low), timeout_s=BOUND_S, what="old2")
    server.delete("pods", "old2", namespace="shop")  # terminating
    pod(server, "new2", "data", ["10.0.0.9"], observed=True)
    settle(server, kc)
    server.delete("pods", "old2", namespace="shop", grace_period_s=0)
    settle(server, kc)
    assert kc.status()["annotations"]["filter"]["owners"] == {OWNER_NAMESPACES: [], OWNER_PODS: ["10.0.0.9"]}
    assert kernel_addresses(pp_program_low) == baseline | {"10.0.0.9"}

    # A finished pod releases its address at once (it may already be someone else's).
    pod(server, "job", "shop", ["10.0.0.11"])
    wait_for(lambda: "10.0.0.11" in kernel_addresses(pp_program_low), timeout_s=BOUND_S, what="job")
    server.patch("pods", "job", {"status": {"phase": "Succeeded"}}, namespace="shop", status=True)
    wait_for(lambda: "10.0.0.11" not in kernel_addresses(pp_program_low), timeout_s=BOUND_S, what="job done")


def test_host_network_pods_claim_nothing(server, control, flt, pp_program_low):
    baseline = kernel_addresses(pp_program_low)
    namespace(server, "kube-net", observed=True)
    pod(server, "proxy", "kube-net", ["192.168.0.1"], host_network=True)
    pod(server, "dns", "kube-net", ["10.0.0.53"])
    kc, _ = control(None, annotations=True, filter_map=flt)
    wait_for(lambda: kernel_addresses(pp_program_low) == baseline | {"10.0.0.53"}, timeout_s=BOUND_S,
             what="dns only")


def test_bypass_leaves_the_filter_alone(server, control, flt, pp_program_low):
    baseline = kernel_addresses(pp_program_low)
    namespace(server, "shop", observed=True)
    pod(server, "web", "shop", ["10.0.0.5"])
    kc, mm = control(None, annotations=True, filter_map=flt, bypass=True)
    wait_for(lambda: mm.config.namespaces_include == {"shop"}, timeout_s=BOUND_S, what="include")
    settle(server, kc)
    assert kernel_addresses(pp_program_low) == baseline
    assert kc.status()["annotations"]["filter"]["enabled"] is False


def test_filter_that_appears_later_gets_the_claims(server, control, flt, pp_program_low):
    baseline = kernel_addresses(pp_program_low)
    namespace(server, "shop", observed=True)
    pod(server, "web", "shop", ["10.0.0.5"])
    holder = SimpleNamespace(f=None)
    kc, mm = control(None, annotations=True, start=False, tick_s=60)  # only events and kick() reconcile
    kc.filter_map = lambda: holder.f
    kc.start()
    wait_for(lambda: kc.reconciled and mm.config.namespaces_include == {"shop"}, what="reconciled")
    assert kc.not_ready_reasons() == []
    holder.f = flt  # packetparser came up
    assert kc.not_ready_reasons() == ["kubernetes control: IP-of-interest map not written yet"]
    kc.kick()
    wait_for(lambda: kernel_addresses(pp_program_low) == baseline | {"10.0.0.5"}, timeout_s=BOUND_S, what="pushed")
    assert kc.not_ready_reasons() == []


def test_annotation_readiness_and_outage(server, control, flt, pp_program_low):
    server.set_down(True)
    kc, mm = control(None, annotations=True, filter_map=flt)
    wait_for(lambda: len(kc.not_ready_reasons()) == 2, what="two informers not listed")
    assert mm.config.namespaces_include == frozenset()  # nothing observed until we know
    server.set_down(False)
    namespace(server, "shop", observed=True)
    pod(server, "web", "shop", ["10.0.0.5"])
    wait_for(lambda: kc.not_ready_reasons() == [], timeout_s=5, what="ready")
    assert "10.0.0.5" in kernel_addresses(pp_program_low)
    # An outage after the first list keeps the last state (and readiness).
    server.set_down(True)
    wait_for(lambda: all(inf.error for inf in kc.informers.values()), what="informers see the outage")
    kc.reconcile()
    assert "10.0.0.5" in kernel_addresses(pp_program_low) and kc.not_ready_reasons() == []
    server.set_down(False)
    wait_for(lambda: all(inf.healthy for inf in kc.informers.values()), timeout_s=5, what="recovered")


# -- agent integration -------------------------------------------------------------------------------------------


def test_build_for_agent(server):
    from enricher.config import EnrichmentConfig
    from retina_exporter.config import Config
    from retina_exporter.errors import StartupError

    mm = MetricsModule(None, None, parse(FILE_SPEC), NODE, False)
    plugin = SimpleNamespace(name="packetparser", program=SimpleNamespace(filter="the-filter"))
    manager = SimpleNamespace(started=[SimpleNamespace(name="dns"), plugin])
    agent = SimpleNamespace(cfg=Config(node_name=NODE), metrics_module=mm, manager=manager)
    assert build_for_agent(agent) is None  # enrichment.source none: no API access
    assert packetparser_filter(manager) == "the-filter"
    assert packetparser_filter(SimpleNamespace(started=[])) is None

    agent.cfg = Config(node_name=NODE, enrichment=EnrichmentConfig(source="kubernetes"), enable_annotations=True)
    kc = build_for_agent(agent, kube_config=server.configuration(), **FAST)
    assert kc is not None and kc.mode == "annotations" and kc.filter_enabled
    assert kc.filter_map() == "the-filter" and kc.metrics_module is mm
    assert kc.informers["pods"].field_selector == f"spec.nodeName={NODE}"
    agent.cfg = Config(node_name=NODE, enrichment=EnrichmentConfig(source="operator"))
    kc = build_for_agent(agent, kube_config=server.configuration())
    assert kc.mode == "metricsconfiguration" and set(kc.informers) == {"metricsconfigurations"}
    with pytest.raises(StartupError, match="kubernetes control: cannot load the kubeconfig /nonexistent"):
        build_for_agent(agent, kube_config="/nonexistent/kubeconfig")
    agent.metrics_module = None  # enablePodLevel off: nothing to apply
    assert build_for_agent(agent, kube_config=server.configuration()) is None


def test_status_reports_the_filter_as_written_not_as_wanted(server, control, flt, pp_program_low):
    """/debug/kubernetes's filter owners are what the kernel map holds: while a claim is being written they still
    show the old addresses (``pending``), so a caller waiting on them never races the write (the lab test did)."""
    namespace(server, "shop")
    pod(server, "web", "shop", ["10.0.0.5"])
    gate, writing = threading.Event(), threading.Event()

    class Gated:
        overflow = 0
        capacity = flt.capacity

        def set_owner(self, owner, addresses):
            if addresses:
                writing.set()
                assert gate.wait(10)
            flt.set_owner(owner, addresses)

    gated = Gated()
    kc, mm = control(None, annotations=True, filter_map=gated)
    wait_for(lambda: kc.reconciled and kc.status()["annotations"]["filter"]["owners"] ==
             {OWNER_NAMESPACES: [], OWNER_PODS: []}, what="reconciled")
    annotate(server, "namespaces", "shop", True)
    assert writing.wait(BOUND_S)
    st = kc.status()["annotations"]["filter"]
    assert st["owners"] == {OWNER_NAMESPACES: [], OWNER_PODS: []} and st["pending"] is True
    assert "10.0.0.5" not in kernel_addresses(pp_program_low)
    gate.set()
    wait_for(lambda: kc.status()["annotations"]["filter"]["owners"] == {OWNER_NAMESPACES: ["10.0.0.5"],
                                                                      OWNER_PODS: []}, what="written")
    assert "10.0.0.5" in kernel_addresses(pp_program_low)
    assert kc.status()["annotations"]["filter"]["pending"] is False
