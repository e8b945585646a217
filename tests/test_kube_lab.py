"""Kubernetes enrichment end to end: lab pods declared on the test API server (not an inventory file); the real
agent in the lab's node namespace learns them either by watching the API itself (`enrichment.source:
kubernetes`) or from the operator's IP-cache stream (`enrichment.source: operator`), and its pod-level metrics
carry the right namespace, pod, workload (the Deployment, resolved through its ReplicaSet), service and zone."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from retina_exporter.lab import traffic
from retina_exporter.lab.agent_process import AgentProcess
from retina_exporter.lab.topology import Lab, in_netns
from tests.support.kube_api_server import KubeApiServer
from tests.support.kube_fixtures import node_body, owner, run_pod, service_body, wait_for

NS = "shop"


@pytest.fixture(scope="module")
def lab():
    with Lab(pods=2) as lab:
        yield lab


@pytest.fixture(scope="module")
def api(lab):
    server = KubeApiServer(bookmark_interval_s=0.5, kubelet_delay_s=0.05)
    in_netns(lab.node_ns, server.start)  # reachable from the agent in the node namespace
    p0, p1 = lab.pods
    server.create("nodes", node_body(lab.node_name, [lab.node_ipv4, lab.node_ipv6], zone="lab-zone-a"))
    server.create("namespaces", {"metadata": {"name": NS}})
    dep = server.create("deployments", {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "metadata": {"name": "web", "namespace": NS},
                                        "spec": {"selector": {"matchLabels": {"app": "web"}}}})
    rs = server.create("replicasets", {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                       "metadata": {"name": "web-5d8f9", "namespace": NS,
                                                    "ownerReferences": [owner("Deployment", "web",
                                                                              dep["metadata"]["uid"])]},
                                       "spec": {"selector": {"matchLabels": {"app": "web"}}}})
    run_pod(server, "web-5d8f9-abcde", lab.node_name, [p0.ipv4, p0.ipv6], labels={"app": "web"}, namespace=NS,
            owners=[owner("ReplicaSet", "web-5d8f9", rs["metadata"]["uid"])])
    run_pod(server, "db-0", lab.node_name, [p1.ipv4, p1.ipv6], labels={"app": "db"}, namespace=NS)
    server.create("services", service_body("web-svc", selector={"app": "web"}, cluster_ip="10.96.0.10",
                                           namespace=NS))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def kubeconfig(api, tmp_path_factory):
    path = tmp_path_factory.mktemp("kube") / "kubeconfig.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": api.url}}],
        "users": [{"name": "lab", "user": {}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
    }))
    return path


@pytest.fixture(scope="module")
def operator(lab, kubeconfig):
    from retina_operator.operator import Operator

    op = Operator(str(kubeconfig), grpc_host="127.0.0.1", grpc_port=0, http_host="127.0.0.1", http_port=0)
    in_netns(lab.node_ns, op.start)
    wait_for(lambda: op.ready, timeout_s=20, what="operator ready")
    yield op
    op.stop()


def scrape(agent):
    out = defaultdict(list)
    for fam in text_string_to_metric_families(agent.get("/metrics")[1].decode()):
        for s in fam.samples:
            out[s.name].append((s.labels, s.value))
    return out


@pytest.mark.parametrize("source", ["kubernetes", "operator"])
def test_pod_level_labels_from_kubernetes(lab, api, kubeconfig, source, request):
    enrichment = {"source": "kubernetes", "kubeconfig": str(kubeconfig)}
    if source == "operator":
        op = request.getfixturevalue("operator")
        # The identities come from the operator; the kubeconfig is only for the control loop (MetricsConfiguration).
        enrichment = {"source": "operator", "operatorAddress": f"127.0.0.1:{op.grpc_port}",
                      "kubeconfig": str(kubeconfig)}
    context = ["ip", "namespace", "podname", "workload", "service", "zone"]
    agent = AgentProcess(lab.node_ns, {
        "enablePodLevel": True, "nodeName": lab.node_name, "hostInterfaces": [lab.uplink],
        "enrichment": enrichment,
        "metricsConfiguration": {"contextOptions": [{"metricName": "forward_count", "sourceLabels": context}]},
    })
    p0, p1 = lab.pods
    try:
        agent.start()
        traffic.ping(lab, p0, p1.ipv4, count=3)
        traffic.ping(lab, p0, p1.ipv6, count=2, ipv6=True)

        def series():
            return {(lbl["direction"], lbl["ip"]): (lbl, v)
                    for lbl, v in scrape(agent)["networkobservability_adv_forward_count"]}

        want_keys = {("egress", p0.ipv4), ("ingress", p1.ipv4), ("egress", p0.ipv6), ("ingress", p1.ipv6)}
        def complete():
            s = series()
            if want_keys <= set(s) and s[("egress", p0.ipv4)][1] >= 3 and s[("egress", p0.ipv6)][1] >= 2:
                return s
            return None

        got = wait_for(complete, timeout_s=15, what="pod-level series")
        web, v = got[("egress", p0.ipv4)]
        assert v == 3
        assert {k: web[k] for k in ("namespace", "podname", "workload_kind", "workload_name", "service", "zone")} == {
            "namespace": NS, "podname": "web-5d8f9-abcde", "workload_kind": "Deployment", "workload_name": "web",
            "service": "web-svc", "zone": "lab-zone-a"}
        db, v = got[("ingress", p1.ipv4)]
        assert v == 3
        assert (db["namespace"], db["podname"], db["workload_kind"], db["service"], db["zone"]) == (
            NS, "db-0", "unknown", "unknown", "lab-zone-a")
        assert got[("egress", p0.ipv6)][0]["podname"] == "web-5d8f9-abcde" and got[("egress", p0.ipv6)][1] == 2
    finally:
        agent.close()
