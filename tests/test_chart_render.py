"""The Helm chart rendered by Helm's own engine (Helm v4's Go SDK through helm-python-sdk's ``libhelm_c``: no helm
binary can be installed here, but this is the same code ``helm template`` runs, Sprig functions, ``.Files`` and
``values.schema.json`` included), for the default values and the value sets below.

Every rendered built-in object is validated with ``kubernetes-validate --strict`` for Kubernetes 1.29 and 1.33
(unknown fields are errors); Prometheus Operator objects are custom resources there, so their shape is checked
here. The agent's config.yaml from the ConfigMap passes the agent's own validation (``load_config``); values the
schema forbids are rejected by jsonschema and by Helm; the least-privilege settings are pinned.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from retina_exporter.config import load_config

helm = pytest.importorskip(
    "helm_python", reason="helm-python-sdk (Helm v4's template engine, libhelm_c) is not installed: add helm-python-sdk>=0.2.2 to the test extra")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "chart"
RELEASE, NAMESPACE = "retina", "kube-system"
KUBE_VERSIONS = ["1.29.0", "1.33.0"]

VALUE_SETS: dict[str, dict] = {
    "default": {},
    "tls": {"tls": {"enabled": True, "secretName": "retina-tls", "clientAuth": True}},
    "otlp": {"agent": {"config": {"otlp": {"enabled": True, "endpoint": "http://otel-collector.monitoring:4317",
                                           "protocol": "grpc", "interval": "30s"}}}},
    "direct-watch": {"operator": {"enabled": False}, "agent": {"config": {"enableAnnotations": True}}},
    "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                   "podMonitor": {"enabled": True},
                   "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
                   "grafanaDashboards": {"enabled": True, "namespace": "monitoring"}},
    "host-headers": {"agent": {"kernelHeaders": {"fromHost": True},
                               "seccompProfile": {"type": "Localhost",
                                                  "localhostProfile": "profiles/retina-agent.json"}},
                     "image": {"repository": "registry.example:5000/retina-exporter", "tag": "dev"}},
    # Hubble is on by default (TLS + mTLS from the Secret hubble-server-certs); these are the other shapes.
    "hubble-off": {"hubble": {"enabled": False}},
    "hubble-plain": {"hubble": {"tls": {"enabled": False}, "relay": {"enabled": True}}},
    "hubble-no-mtls": {"hubble": {"tls": {"mtls": False}, "socketPath": "", "listenPort": 14244,
                                  "eventBufferCapacity": 65535}},
    "relay-ui": {"hubble": {"relay": {"enabled": True, "image": {"repository": "registry.example/hubble-relay",
                                                                 "tag": "v1.19.4"}},
                            "ui": {"enabled": True},
                            "tls": {"certManager": {"enabled": True, "issuerRef": {
                                "group": "cert-manager.io", "kind": "ClusterIssuer", "name": "hubble-ca"}}}},
                 "operator": {"enabled": False}},
}
CUSTOM_GROUPS = ("monitoring.coreos.com/", "cert-manager.io/")
HUBBLE_TLS = "/var/lib/retina-exporter/hubble-tls"


def hubble_values(name: str) -> dict:
    """The chart's hubble values for a value set (defaults: on, port 4244, TLS with mTLS, the socket)."""
    given = VALUE_SETS[name].get("hubble", {})
    tls = {"enabled": True, "mtls": True, **given.get("tls", {})}
    return {"enabled": True, "listenPort": 4244, "socketPath": "/var/run/retina-exporter/hubble.sock",
            "eventBufferCapacity": 4095, **given, "tls": tls}


@pytest.fixture(scope="module")
def chart():
    c = helm.Chart.load(str(CHART))
    yield c
    c.close()


_cache: dict[str, list[dict]] = {}


def render(chart, name: str) -> list[dict]:
    if name not in _cache:
        manifests = chart.render(VALUE_SETS[name], name=RELEASE, namespace=NAMESPACE, is_install=True)
        docs = []
        for path, text in sorted(manifests.items()):
            if path.endswith(".yaml"):
                docs += [d for d in yaml.safe_load_all(text) if d]
        _cache[name] = docs
    return _cache[name]


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [(d["kind"], d["metadata"]["name"]) for d in docs])
    return found[0]


def agent_config(docs: list[dict], tmp_path: Path):
    text = find(docs, "ConfigMap", f"{RELEASE}-config")["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(str(path), env={}), yaml.safe_load(text)


def test_helm_lint_is_clean():
    result = helm.lint(str(CHART), strict=True, kube_version="1.33.0")
    assert result["errors"] == [], result
    assert [m for m in result["messages"] if m["severity"] > 1] == [], result


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rendered_objects_are_valid_kubernetes(chart, name, kube_version):
    docs = render(chart, name)
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if doc["apiVersion"].startswith(CUSTOM_GROUPS):
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} invalid for {kube_version}: {exc}")
    assert {"ConfigMap", "DaemonSet", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= kinds
    operator = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == f"{RELEASE}-operator"]
    assert bool(operator) == (VALUE_SETS[name].get("operator", {}).get("enabled", True)
                              and name != "direct-watch")


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_crd_is_valid_kubernetes(kube_version):
    for path in sorted((CHART / "crds").glob("*.yaml")):
        kubernetes_validate.validate(yaml.safe_load(path.read_text()), kube_version, strict=True)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_agent_config_passes_the_agents_validation(chart, name, tmp_path):
    cfg, raw = agent_config(render(chart, name), tmp_path)
    assert cfg.warnings == ()
    if name in ("direct-watch", "relay-ui"):
        assert cfg.enrichment.source == "kubernetes"
        assert cfg.enable_annotations == (name == "direct-watch")
    else:
        assert cfg.enrichment.source == "operator"
        assert raw["enrichment"]["operatorAddress"] == f"{RELEASE}-operator.{NAMESPACE}.svc:9090"
    if name == "tls":
        e = raw["enrichment"]
        assert e["operatorTLS"] is True and e["operatorCAFile"] == "/etc/retina/tls/ca.crt"
        assert e["operatorServerName"] == f"{RELEASE}-operator.{NAMESPACE}.svc"
        assert (e["operatorCertFile"], e["operatorKeyFile"]) == ("/etc/retina/tls/tls.crt", "/etc/retina/tls/tls.key")
    if name == "otlp":
        assert cfg.otlp.enabled and cfg.otlp.endpoint == "http://otel-collector.monitoring:4317"
    hv, h = hubble_values(name), cfg.hubble
    assert h.enabled is hv["enabled"]
    if not hv["enabled"]:
        assert raw["hubble"] == {"enabled": False}
        return
    assert h.listen_address == f":{hv['listenPort']}" and h.socket_path == hv["socketPath"]
    assert h.event_buffer_capacity == cfg.output_ring_capacity == hv["eventBufferCapacity"]
    if hv["tls"]["enabled"]:
        assert (h.tls_cert_file, h.tls_key_file) == (f"{HUBBLE_TLS}/tls.crt", f"{HUBBLE_TLS}/tls.key")
        assert h.tls_client_ca_files == ((f"{HUBBLE_TLS}/ca.crt",) if hv["tls"]["mtls"] else ())
    else:
        assert not h.tls_enabled and h.tls_client_ca_files == ()


def test_default_agent_config_serves_hubble_with_mtls(chart, tmp_path):
    cfg, _ = agent_config(render(chart, "default"), tmp_path)
    assert cfg.hubble.enabled and cfg.hubble.listen_address == ":4244"
    assert cfg.hubble.tls_cert_file == "/var/lib/retina-exporter/hubble-tls/tls.crt"
    assert cfg.hubble.tls_key_file == "/var/lib/retina-exporter/hubble-tls/tls.key"
    assert cfg.hubble.tls_client_ca_files == ("/var/lib/retina-exporter/hubble-tls/ca.crt",)
    assert cfg.hubble.socket_path == "/var/run/retina-exporter/hubble.sock"
    assert cfg.hubble.event_buffer_capacity == 4095


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_agent_hubble_port_volumes_and_node_ip(chart, name):
    hv = hubble_values(name)
    pod = find(render(chart, name), "DaemonSet")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    ports = {p["name"]: p for p in c["ports"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    env = {e["name"]: e for e in c["env"]}
    if not hv["enabled"]:
        assert "hubble-grpc" not in ports and not {"hubble-tls", "hubble-sock"} & (mounts.keys() | vols.keys())
        assert "NODE_IP" not in env
        return
    assert ports["hubble-grpc"] == {"name": "hubble-grpc", "containerPort": hv["listenPort"], "protocol": "TCP"}
    assert env["NODE_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}  # Peer's address
    if hv["socketPath"]:
        assert mounts["hubble-sock"]["mountPath"] == str(Path(hv["socketPath"]).parent)
        assert "emptyDir" in vols["hubble-sock"]  # not the host's: the root filesystem stays read-only
    else:
        assert "hubble-sock" not in mounts
    if hv["tls"]["enabled"]:
        assert mounts["hubble-tls"] == {"name": "hubble-tls", "mountPath": HUBBLE_TLS, "readOnly": True}
        secret = vols["hubble-tls"]["secret"]
        assert secret["secretName"] == "hubble-server-certs"
        keys = {i["key"] for i in secret["items"]}
        assert keys == ({"tls.crt", "tls.key", "ca.crt"} if hv["tls"]["mtls"] else {"tls.crt", "tls.key"})
    else:
        assert "hubble-tls" not in mounts and "hubble-tls" not in vols


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_hubble_peer_service(chart, name):
    hv = hubble_values(name)
    docs = render(chart, name)
    peers = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "hubble-peer"]
    if not hv["enabled"]:
        assert peers == []
        return
    (svc,) = peers
    ds = find(docs, "DaemonSet")
    assert svc["spec"]["selector"] == ds["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["internalTrafficPolicy"] == "Local"
    (port,) = svc["spec"]["ports"]
    assert port["port"] == (443 if hv["tls"]["enabled"] else 80)
    assert port["targetPort"] == "hubble-grpc" and port["protocol"] == "TCP"


@pytest.mark.parametrize("name", ["relay-ui", "hubble-plain"])
def test_relay_config_points_at_the_peer_service(chart, name):
    docs = render(chart, name)
    tls = hubble_values(name)["tls"]["enabled"]
    relay = yaml.safe_load(find(docs, "ConfigMap", "hubble-relay-config")["data"]["config.yaml"])
    assert relay["peer-service"] == f"hubble-peer.{NAMESPACE}.svc.cluster.local.:{443 if tls else 80}"
    assert relay["listen-address"] == ":4245" and relay["disable-server-tls"] is True
    dep = find(docs, "Deployment", "hubble-relay")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["hubble-relay"] and c["args"] == ["serve"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/hubble-relay"]["readOnly"]
    if tls:
        assert relay["tls-hubble-client-cert-file"] == "/var/lib/hubble-relay/tls/client.crt"
        assert relay["tls-hubble-client-key-file"] == "/var/lib/hubble-relay/tls/client.key"
        assert relay["tls-hubble-server-ca-files"] == "/var/lib/hubble-relay/tls/hubble-server-ca.crt"
        assert "disable-client-tls" not in relay
        (tls_vol,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        (src,) = tls_vol["projected"]["sources"]
        assert src["secret"]["name"] == "hubble-relay-client-certs"
        assert {i["key"]: i["path"] for i in src["secret"]["items"]} == {
            "tls.crt": "client.crt", "tls.key": "client.key", "ca.crt": "hubble-server-ca.crt"}
        assert mounts["/var/lib/hubble-relay/tls"]["readOnly"]
        assert c["image"] == "registry.example/hubble-relay:v1.19.4"
    else:
        assert relay["disable-client-tls"] is True and not any(k.startswith("tls-") for k in relay)
        assert "/var/lib/hubble-relay/tls" not in mounts
        assert c["image"] == "quay.io/cilium/hubble-relay:v1.19.4"
    svc = find(docs, "Service", "hubble-relay")
    assert svc["spec"]["ports"] == [{"name": "grpc", "port": 80, "targetPort": "grpc", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert c["ports"] == [{"name": "grpc", "containerPort": 4245, "protocol": "TCP"}]


def test_ui_reads_flows_from_relay(chart):
    docs = render(chart, "relay-ui")
    dep = find(docs, "Deployment", "hubble-ui")
    containers = {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"frontend", "backend"}
    assert containers["frontend"]["image"] == "quay.io/cilium/hubble-ui:v0.13.3"
    assert containers["backend"]["image"] == "quay.io/cilium/hubble-ui-backend:v0.13.3"
    env = {e["name"]: e["value"] for e in containers["backend"]["env"]}
    assert env["FLOWS_API_ADDR"] == "hubble-relay:80"
    assert containers["frontend"]["ports"][0]["containerPort"] == 8081
    svc = find(docs, "Service", "hubble-ui")
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    nginx = find(docs, "ConfigMap", "hubble-ui-nginx")["data"]["nginx.conf"]
    assert "listen 8081;" in nginx and "proxy_pass http://127.0.0.1:8090;" in nginx
    rules = find(docs, "ClusterRole", f"{RELEASE}-hubble-ui")["rules"]
    assert {v for r in rules for v in r["verbs"]} == {"get", "list", "watch"}  # read-only
    for name in ("default", "hubble-plain"):
        assert not [d for d in render(chart, name) if d["metadata"]["name"].startswith("hubble-ui")]


@pytest.mark.parametrize("component", ["hubble-relay", "hubble-ui"])
def test_relay_and_ui_least_privilege(chart, component):
    dep = find(render(chart, "relay-ui"), "Deployment", component)
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID")
    for c in pod["containers"]:
        assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]}}
    if component == "hubble-relay":
        assert pod["automountServiceAccountToken"] is False  # Relay never calls the API


def test_cert_manager_certificates(chart):
    docs = render(chart, "relay-ui")
    issuer = {"group": "cert-manager.io", "kind": "ClusterIssuer", "name": "hubble-ca"}
    server = find(docs, "Certificate", "hubble-server-certs")["spec"]
    assert server["secretName"] == "hubble-server-certs" and server["issuerRef"] == issuer
    assert server["dnsNames"] == ["*.default.hubble-grpc.cilium.io"]  # <node>. and hubble-peer.default...
    assert "server auth" in server["usages"] and "client auth" not in server["usages"]
    client = find(docs, "Certificate", "hubble-relay-client-certs")["spec"]
    assert client["secretName"] == "hubble-relay-client-certs" and client["issuerRef"] == issuer
    assert "client auth" in client["usages"]
    for s in (server, client):
        assert s["duration"] == "8760h" and s["privateKey"]["rotationPolicy"] == "Always"
    for name in ("default", "hubble-plain", "hubble-off"):
        assert not [d for d in render(chart, name) if d["kind"] == "Certificate"]


def test_hubble_off_renders_no_hubble_objects(chart):
    docs = render(chart, "hubble-off")
    assert not [d for d in docs if d["metadata"]["name"].startswith("hubble-")]


def test_tls_mounts_the_secret_in_both(chart):
    docs = render(chart, "tls")
    op = find(docs, "Deployment")["spec"]["template"]["spec"]
    args = op["containers"][0]["args"]
    assert {"--tls-cert=/etc/retina/tls/tls.crt", "--tls-key=/etc/retina/tls/tls.key",
            "--tls-client-ca=/etc/retina/tls/ca.crt"} <= set(args)
    assert op["volumes"] == [{"name": "tls", "secret": {"secretName": "retina-tls"}}]
    ds = find(docs, "DaemonSet")["spec"]["template"]["spec"]
    tls = [v for v in ds["volumes"] if v["name"] == "tls"]
    assert tls and tls[0]["secret"]["secretName"] == "retina-tls"
    assert {"name": "tls", "mountPath": "/etc/retina/tls", "readOnly": True} in ds["containers"][0]["volumeMounts"]


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_agent_least_privilege(chart, name):
    ds = find(render(chart, name), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "PERFMON", "NET_ADMIN"]}
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert not pod.get("hostPID") and not pod.get("hostIPC")
    want = VALUE_SETS[name].get("agent", {}).get("seccompProfile", {"type": "Unconfined"})
    assert pod["securityContext"]["seccompProfile"] == want
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert all(m.get("readOnly") for n, m in mounts.items() if n in ("config", "tracefs", "src", "hubble-tls"))
    assert all("hostPath" not in v for v in pod["volumes"] if v["name"].startswith("hubble"))
    assert mounts["bpffs"]["mountPropagation"] == "HostToContainer"  # Bidirectional needs privileged
    vols = {v["name"]: v for v in pod["volumes"]}
    if name == "host-headers":
        assert vols["modules"]["hostPath"]["path"] == "/lib/modules" and mounts["modules"]["readOnly"]
        assert c["image"] == "registry.example:5000/retina-exporter:dev"
    else:
        assert "emptyDir" in vols["modules"] and "src" not in vols  # the image's headers, linked at start-up
        assert c["image"] == "ghcr.io/retina-exporter/retina-exporter:0.1.0"
    # Unconfined is the documented trade-off (docs/deploy.md), not an accident.
    assert "Unconfined" in (ROOT / "docs" / "deploy.md").read_text()


def test_operator_least_privilege(chart):
    docs = render(chart, "default")
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert c["image"] == "ghcr.io/retina-exporter/retina-operator:0.1.0"
    rules = find(docs, "ClusterRole", f"{RELEASE}-operator")["rules"]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    read = {(g, r, v) for g, rs in (("", ("pods", "services", "nodes", "namespaces")), ("apps", ("replicasets",)),
                                    ("batch", ("jobs",)), ("retina.sh", ("metricsconfigurations",)))
            for r in rs for v in ("list", "watch")}
    assert granted == read | {("retina.sh", "metricsconfigurations/status", "patch")}


@pytest.mark.parametrize("name,core", [("default", None), ("direct-watch", ["pods", "services", "nodes", "namespaces"])])
def test_agent_cluster_role_is_minimal(chart, name, core):
    rules = find(render(chart, name), "ClusterRole", f"{RELEASE}-agent")["rules"]
    assert rules[0] == {"apiGroups": ["retina.sh"], "resources": ["metricsconfigurations"], "verbs": ["list", "watch"]}
    if core is None:
        assert len(rules) == 1
    else:
        assert rules[1:] == [{"apiGroups": [""], "resources": core, "verbs": ["list", "watch"]}]


def test_monitoring_objects_and_dashboards(chart):
    docs = render(chart, "monitoring")
    sm = find(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    svc = find(docs, "Service", f"{RELEASE}-agent")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    pm = find(docs, "PodMonitor")
    ds = find(docs, "DaemonSet")
    assert pm["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    rule = find(docs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((ROOT / "dashboards" / "alerts.yaml").read_text())
    boards = [d for d in docs if d["kind"] == "ConfigMap" and "-dashboard-" in d["metadata"]["name"]]
    shipped = sorted((ROOT / "dashboards").glob("*.json"))
    assert len(boards) == len(shipped) > 0
    for cm in boards:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and cm["metadata"]["namespace"] == "monitoring"
        ((key, text),) = cm["data"].items()
        assert json.loads(text) == json.loads((ROOT / "dashboards" / key).read_text())
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert not [d for d in render(chart, "default") if d["kind"] == kind]


def test_chart_files_are_copies_of_the_shipped_rules_and_dashboards():
    """Helm reads files inside the chart only: chart/files must equal dashboards/ (copy them after an edit)."""
    pairs = [(CHART / "files" / "alerts.yaml", ROOT / "dashboards" / "alerts.yaml")]
    pairs += [(CHART / "files" / "dashboards" / p.name, p) for p in sorted((ROOT / "dashboards").glob("*.json"))]
    stale = [str(c.relative_to(ROOT)) for c, src in pairs if not c.exists() or c.read_bytes() != src.read_bytes()]
    assert stale == [], f"cp dashboards/alerts.yaml chart/files/; cp dashboards/*.json chart/files/dashboards/: {stale}"
    extra = {p.name for p in (CHART / "files" / "dashboards").glob("*.json")} - {p.name for _, p in pairs}
    assert not extra


# --- values.schema.json -----------------------------------------------------------------------------------------

BAD_VALUES = [
    ({"operator": {"grpcPort": 0}}, "/operator/grpcPort"),
    ({"operator": {"grpcPort": "9090"}}, "/operator/grpcPort"),
    ({"agent": {"config": {"apiServer": {"port": 70000}}}}, "/agent/config/apiServer/port"),
    ({"agent": {"config": {"enabledPlugin": ["packetparser", "bogus"]}}}, "/agent/config/enabledPlugin"),
    ({"agent": {"config": {"dataAggregationLevel": "medium"}}}, "/agent/config/dataAggregationLevel"),
    ({"agent": {"capabilites": ["BPF"]}}, "/agent"),
    ({"agent": {"seccompProfile": {"type": "Localhost"}}}, "/agent/seccompProfile"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"tls": {"enabled": "yes"}}, "/tls/enabled"),
    ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval"),
    ({"hubble": {"enabled": "yes"}}, "/hubble/enabled"),
    ({"hubble": {"listenPort": 0}}, "/hubble/listenPort"),
    ({"hubble": {"eventBufferCapacity": 4096}}, "/hubble/eventBufferCapacity"),
    ({"hubble": {"eventBufferCapacity": 2097151}}, "/hubble/eventBufferCapacity"),
    ({"hubble": {"socketPath": "hubble.sock"}}, "/hubble/socketPath"),
    ({"hubble": {"socketPath": "/hubble.sock"}}, "/hubble/socketPath"),
    ({"hubble": {"tls": {"existingSecret": "Hubble_Certs"}}}, "/hubble/tls/existingSecret"),
    ({"hubble": {"tls": {"mTLS": False}}}, "/hubble/tls"),
    ({"hubble": {"tls": {"certManager": {"enabled": True}}}}, "/hubble/tls/certManager/issuerRef"),
    ({"hubble": {"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca", "namespace": "x"}}}}},
     "/hubble/tls/certManager/issuerRef"),
    ({"hubble": {"tls": {"certManager": {"duration": "1 year"}}}}, "/hubble/tls/certManager/duration"),
    ({"hubble": {"relay": {"image": {"tag": ""}}}}, "/hubble/relay/image/tag"),
    ({"hubble": {"relay": {"listenPort": 65536}}}, "/hubble/relay/listenPort"),
    ({"hubble": {"ui": {"enabled": True}}}, "/hubble/relay/enabled"),
    ({"hubble": {"enabled": False, "relay": {"enabled": True}}}, "/hubble/relay/enabled"),
    ({"hubble": {"ui": {"service": {"type": "ExternalName"}}}}, "/hubble/ui/service/type"),
    ({"hubble": {"ui": {"backend": {"image": {"repo": "x"}}}}}, "/hubble/ui/backend/image"),
    ({"hubble": {"peerService": {"name": "Hubble_Peer"}}}, "/hubble/peerService/name"),
    ({"replicas": 3}, "replicas"),
]


@pytest.fixture(scope="module")
def schema():
    return json.loads((CHART / "values.schema.json").read_text())


def merged(chart, override: dict) -> dict:
    return chart.merge_values(override)


def test_schema_accepts_every_value_set(chart, schema):
    jsonschema.Draft7Validator.check_schema(schema)
    for name, values in VALUE_SETS.items():
        jsonschema.validate(merged(chart, values), schema)
        chart.validate_schema(values)


@pytest.mark.parametrize("values,where", BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_schema_rejects_bad_values(chart, schema, values, where):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(merged(chart, values), schema)
    with pytest.raises(helm.HelmValuesError) as exc:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert where in str(exc.value)
