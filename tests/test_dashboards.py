"""The Grafana dashboards (dashboards/*.json): generated output is committed, JSON is importable (schema, uids,
datasource and cluster/node variables), every panel query parses (promtool) and uses only metric and label names
of dashboards/metrics_catalog.yaml; the catalog itself agrees with the code that emits the metrics."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from dashboards import catalog as cat_mod
from dashboards import generate

ROOT = Path(__file__).resolve().parents[1]
DASH_DIR = ROOT / "dashboards"
DASHBOARD_FILES = sorted(DASH_DIR.glob("*.json"))
CATALOG = cat_mod.load()
PROMTOOL = shutil.which("promtool")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panel_cases() -> list:
    cases = []
    for path in DASHBOARD_FILES:
        dash = load(path)
        for title, ref, expr in generate.panel_queries(dash):
            cases.append(pytest.param(dash["title"], title, ref, expr, id=f"{path.stem}/{title}/{ref}"))
    return cases


PANELS = panel_cases()


def all_panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out += p.get("panels", [])
    return out


# ----------------------------------------------------------------------------------------------------------------
# Files


def test_dashboards_exist():
    assert {p.name for p in DASHBOARD_FILES} == set(generate.DASHBOARDS)


def test_generated_files_are_committed_output():
    stale = [name for name, text in generate.outputs().items()
             if not (DASH_DIR / name).exists() or (DASH_DIR / name).read_text() != text]
    assert not stale, f"run '.venv/bin/python -m dashboards.generate' and commit: {stale} differ from its output"


# ----------------------------------------------------------------------------------------------------------------
# JSON model


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_dashboard_model(path):
    dash = load(path)
    assert dash["schemaVersion"] >= 39
    assert re.fullmatch(r"retina-exporter-[a-z0-9-]+", dash["uid"]) and len(dash["uid"]) <= 40
    assert dash["id"] is None, "an exported dashboard must not carry a database id"
    assert dash["title"].startswith("Retina exporter / ")
    assert "retina-exporter" in dash["tags"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    cluster = variables["cluster"]
    assert cluster["includeAll"] and cluster["allValue"] == ".*", "cluster must be optional (All = .*)"
    node = variables["node"]
    assert node["includeAll"] and node["allValue"] == ".*"
    assert "instance)" in node["query"]
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert v["definition"] == v["query"]
    ids = [p["id"] for p in all_panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for p in all_panels(dash):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells
        if p["type"] == "row":
            continue
        assert p["title"], "every panel has a title"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert t["expr"].strip(), p["title"]
            # every query follows the cluster and node variables
            assert 'cluster=~"$cluster"' in t["expr"] and (
                'instance=~"$node"' in t["expr"]), f"{p['title']}: query ignores $cluster/$node: {t['expr']}"
            unknown = cat_mod.variables_in(t["expr"]) - set(variables) - {
                "__rate_interval", "__interval", "__range"}
            assert not unknown, f"{p['title']}: undefined variables {unknown}"


def test_uids_unique_and_stable():
    uids = {load(p)["uid"]: p.name for p in DASHBOARD_FILES}
    assert len(uids) == len(DASHBOARD_FILES)
    # Links and bookmarks depend on these: change them only on purpose.
    assert set(uids) == {"retina-exporter-overview", "retina-exporter-pod-traffic", "retina-exporter-drops",
                         "retina-exporter-dns", "retina-exporter-tcp", "retina-exporter-agent-health"}


# ----------------------------------------------------------------------------------------------------------------
# Queries: names (catalog) and syntax (promtool)


@pytest.mark.parametrize("dashboard,panel,ref,expr", PANELS)
def test_panel_uses_catalog_names(dashboard, panel, ref, expr):
    errors = cat_mod.check_expr(cat_mod.substitute(expr), CATALOG)
    assert not errors, f"{dashboard} / {panel} ({ref}): {errors}\n  {expr}"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_variable_queries_use_catalog_names(path):
    dash = load(path)
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["query"])
        assert m, f"{dash['title']} variable {v['name']}: expected label_values(selector, label)"
        selector, label = cat_mod.substitute(m.group(1)), m.group(2)
        assert not cat_mod.check_expr(selector, CATALOG), (v["name"], cat_mod.check_expr(selector, CATALOG))
        metric = cat_mod.analyze(selector).metric_names[0]
        assert CATALOG.label_allowed(metric, label), f"variable {v['name']}: {metric} has no label {label}"


def promtool_check(exprs: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Run ``promtool check rules`` on each expression as a recording rule; returns {record name: error}."""
    rules = [{"record": name, "expr": expr} for name, expr in exprs.items()]
    path = tmp_path / "panels.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-panels", "rules": rules}]}))
    p = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    if p.returncode == 0:
        return {}
    out = p.stdout + p.stderr
    errors = {}
    for name in exprs:
        lines = [ln.strip() for ln in out.splitlines() if f'"{name}"' in ln]
        if lines:
            errors[name] = "\n".join(lines)
    return errors or {"?": out}


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_every_panel_query_parses(tmp_path):
    names = {}
    exprs = {}
    for i, param in enumerate(PANELS):
        dashboard, panel, ref, expr = param.values
        record = f"panel_{i}"
        names[record] = f"{dashboard} / {panel} ({ref})"
        exprs[record] = cat_mod.substitute(expr)
    errors = promtool_check(exprs, tmp_path)
    assert not errors, "promtool rejects:\n" + "\n".join(f"  {names.get(k, k)}: {v}" for k, v in errors.items())


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_check_names_the_broken_panel(tmp_path):
    """The failure report of the check above names the panel: a broken expression is found by its record."""
    errors = promtool_check({"panel_ok": "sum(rate(up[1m]))", "panel_bad": "sum(rate(up[1m])"}, tmp_path)
    assert set(errors) == {"panel_bad"}


def test_tokenizer_finds_names():
    a = cat_mod.analyze('topk(10, sum by (namespace, podname) (rate(networkobservability_adv_forward_bytes'
                        '{cluster=~".*", direction="egress"}[1m]))) / on (namespace) group_left '
                        'label_replace(up, "pod", "$1", "instance", "(.*)")')
    assert a.metric_names == ["networkobservability_adv_forward_bytes", "up"]
    assert a.selectors[0].rated == "rate" and a.selectors[1].rated is None
    assert a.selectors[0].matchers == [("cluster", "=~", ".*"), ("direction", "=", "egress")]
    assert a.grouping == ["namespace", "podname", "namespace"]
    assert a.created == {"pod"} and a.read_labels == ["instance"]


@pytest.mark.parametrize("expr,problem", [
    ("sum(rate(networkobservability_forward_cout[5m]))", "not in the catalog"),
    ('sum(rate(networkobservability_forward_count{reason="x"}[5m]))', "label 'reason'"),
    ("sum by (podname) (rate(networkobservability_forward_count[5m]))", "label 'podname'"),
    ("rate(networkobservability_tcp_state[5m])", "not monotonic"),
    ('sum(rate(networkobservability_adv_dns_response_count{return_code="NoError"}[5m]))', "NoError"),
    ('{__name__=~"retina_.*"}', "matches no catalog metric"),
])
def test_catalog_check_rejects(expr, problem):
    errors = cat_mod.check_expr(expr, CATALOG)
    assert any(problem in e for e in errors), errors


def test_histograms_are_queried_through_their_series():
    ok = ("histogram_quantile(0.99, sum by (namespace, workload_name, le) "
          "(rate(networkobservability_adv_dns_latency_seconds_bucket{workload_name!=\"\"}[5m])))")
    assert cat_mod.check_expr(ok, CATALOG) == []
    assert cat_mod.check_expr("rate(networkobservability_dns_latency_seconds_count[5m])", CATALOG) == []
    assert cat_mod.check_expr('sum(rate(networkobservability_dns_latency_seconds_sum{return_code="NOERROR"}[5m]))',
                              CATALOG) == []
    for expr, problem in [
        ("rate(networkobservability_dns_latency_seconds[5m])", "not in the catalog"),
        ('rate(networkobservability_dns_latency_seconds_sum{le="1"}[5m])', "label 'le'"),
        ('rate(networkobservability_dns_latency_seconds_bucket{return_code="NoError"}[5m])', "NoError"),
        ("sum by (podname) (rate(networkobservability_tcp_rtt_seconds_bucket[5m]))", "label 'podname'"),
    ]:
        assert any(problem in e for e in cat_mod.check_expr(expr, CATALOG)), (expr, cat_mod.check_expr(expr, CATALOG))


def test_verify_exposition_of_histograms_and_pending_metrics():
    text = ("# TYPE networkobservability_dns_latency_seconds histogram\n"
            'networkobservability_dns_latency_seconds_bucket{query_type="A",return_code="NOERROR",le="0.1"} 1\n'
            'networkobservability_dns_latency_seconds_bucket{query_type="A",return_code="NOERROR",le="+Inf"} 1\n'
            'networkobservability_dns_latency_seconds_sum{query_type="A",return_code="NOERROR"} 0.02\n'
            'networkobservability_dns_latency_seconds_count{query_type="A",return_code="NOERROR"} 1\n'
            "# TYPE networkobservability_dns_unanswered_queries counter\n"
            'networkobservability_dns_unanswered_queries{query_type="A",le="1"} 1\n')
    errors, not_seen = cat_mod.verify_exposition(text, CATALOG)
    assert errors == ["networkobservability_dns_unanswered_queries: sample networkobservability_dns_unanswered_queries"
                      "{'query_type': 'A', 'le': '1'}: missing labels [], unknown labels ['le']"]
    assert not {n for n, m in CATALOG.metrics.items() if m.pending}, "every cataloged metric is emitted in this tree"
    assert "networkobservability_dns_request_count" in not_seen


def test_context_labels_accepted_for_adv_metrics_only():
    adv = "networkobservability_adv_forward_count"
    for label in ("podname", "workload_kind", "source_podname", "destination_zone", "label_app",
                  "source_label_app_kubernetes_io_name", "is_reply"):
        assert CATALOG.label_allowed(adv, label), label
    assert not CATALOG.label_allowed(adv, "source_direction")
    assert not CATALOG.label_allowed("networkobservability_drop_count", "podname")


# ----------------------------------------------------------------------------------------------------------------
# The catalog against the code that emits the metrics


def test_catalog_agrees_with_code_constants():
    from metrics_module import advanced

    assert CATALOG["networkobservability_adv_tcpflags_count"].values["flag"] == advanced.FLAG_LABELS
    assert CATALOG["networkobservability_adv_dns_response_count"].values["return_code"] == advanced.DNS_RCODES
    from retina_core.dns.names import RCODE_NAMES

    for name in ("networkobservability_dns_latency_seconds", "networkobservability_adv_dns_latency_seconds"):
        assert CATALOG[name].values["return_code"] == tuple(RCODE_NAMES.values())
    try:
        from retina_exporter.plugins.linuxutil import plugin as lu
        from retina_exporter.plugins.linuxutil import readers
    except ImportError:
        pytest.skip("linuxutil plugin not present")
    assert set(CATALOG[lu.TCP_CONNECTION_STATS].values["statistic_name"]) == set(readers.TCP_CURATED_KEYS)
    assert set(readers.TCP_STATES.values()) | {readers.UNKNOWN_STATE} == set(
        CATALOG[lu.TCP_STATE].values["state"])
    assert CATALOG[lu.TCP_CONNECTION_REMOTE].values["address"] == (lu.REMOTE_ADDRESS_ALL,)
    assert CATALOG[lu.UDP_CONNECTION_STATS].values["statistic_name"] == (lu.UDP_ACTIVE,)


def test_catalog_sources_are_agent_plugins():
    from retina_exporter.agent import PLUGINS

    for m in CATALOG.metrics.values():
        assert m.source in PLUGINS or m.source in ("agent", "metrics_module", "prometheus"), m


def _records():
    """One record of each verdict the adv metrics count, between two pods (and a DNS query with the response that
    answered it, and an unanswered query), and one to a pod of another zone."""
    from retina_core.identity import Identity
    from retina_core.dns import DnsRecord
    from retina_core.dns.latency import OUTCOME_ANSWERED, OUTCOME_UNANSWERED
    from retina_core.record import (CONN_ESTABLISHED, CONN_RESET, CONN_RTT, CONN_TIMEOUT, DIR_EGRESS, DIR_INGRESS,
                                    OBS_FROM_ENDPOINT, VERDICT_DNS, VERDICT_TCP_RETRANSMISSION, EventRecord,
                                    FlowRecord)

    a = Identity("pod", namespace="shop", pod_name="web-1", labels=("app=web",), workloads=(("Deployment", "web"),),
                 service="web", node_name="n", zone="z", ip="10.0.0.5")
    b = Identity("pod", namespace="shop", pod_name="db-0", labels=("app=db",), workloads=(("StatefulSet", "db"),),
                 node_name="n", zone="z", ip="10.0.0.6")
    ip = socket.inet_aton
    out = []
    for verdict, proto, direction, dns in ((1, 6, DIR_EGRESS, None), (2, 6, DIR_EGRESS, None),
                                           (VERDICT_TCP_RETRANSMISSION, 6, DIR_EGRESS, None),
                                           (VERDICT_DNS, 17, DIR_EGRESS, DnsRecord(False, "db.", ("A",))),
                                           (VERDICT_DNS, 17, DIR_INGRESS,
                                            DnsRecord(True, "db.", ("A",), rcode=3))):
        r = FlowRecord(0, 4, ip("10.0.0.5"), ip("10.0.0.6"), proto, 40000, 53 if dns else 80,
                       obs_point=OBS_FROM_ENDPOINT, direction=direction, is_reply=False, packets=1, bytes=60,
                       flag_counts=(0, 1, 0, 0, 0, 0, 0, 0, 0, 0) if verdict == 1 else None, verdict=verdict,
                       drop_reason=0)
        r.source, r.destination = a, b
        if dns is not None:
            r.l7 = dns
        out.append(r)
    query, response = out[3].l7, out[4].l7  # the query was answered by the response, 20 ms later
    response.latency_ns, query.answer, query.outcome = 20_000_000, response, OUTCOME_ANSWERED
    r = FlowRecord(0, 4, ip("10.0.0.5"), ip("10.0.0.6"), 17, 40001, 53, obs_point=OBS_FROM_ENDPOINT,
                   direction=DIR_EGRESS, verdict=VERDICT_DNS)
    r.source, r.destination, r.l7 = a, b, DnsRecord(False, "gone.", ("AAAA",))
    r.l7.outcome = OUTCOME_UNANSWERED
    out.append(r)
    r = FlowRecord(0, 4, ip("10.0.0.5"), ip("10.0.1.7"), 6, 40000, 80, obs_point=OBS_FROM_ENDPOINT, bytes=60)
    r.source = a
    r.destination = Identity("pod", namespace="shop", pod_name="api-0", node_name="m", zone="z2", ip="10.0.1.7")
    out.append(r)
    for event in (CONN_ESTABLISHED, CONN_RESET, CONN_TIMEOUT):  # connection outcomes (packetparser)
        r = FlowRecord(0, 4, ip("10.0.0.5"), ip("10.0.0.6"), 6, 40002, 80, obs_point=OBS_FROM_ENDPOINT,
                       direction=DIR_EGRESS, packets=0)
        r.source, r.destination = a, b
        r.conn_event, r.connect_latency_ns = event, 1_500_000 if event == CONN_ESTABLISHED else 0
        out.append(r)
    r = EventRecord(0, 4, ip("10.0.0.5"), ip("10.0.0.6"), 6, 40002, 80, obs_point=OBS_FROM_ENDPOINT, packets=0,
                    rtt_ns=250_000)
    r.source, r.destination, r.conn_event = a, b, CONN_RTT
    out.append(r)
    return out


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_catalog_matches_in_process_exposition(remote):
    """Every family the metrics module and the control plane render (all adv metrics, every context label and a
    pod label key) is in the catalog with its type and labels. The end-to-end test does the same against the
    real agent with every plugin."""
    from metrics_module.advanced import AdvancedMetrics
    from retina_core.metricsconfig import parse_metrics_configuration
    from metrics_module.exposition import render
    from retina_core.telemetry import ControlPlane

    ctx = ["ip", "namespace", "podname", "workload", "service", "port", "zone"]
    names = ["forward_count", "forward_bytes", "tcp_flag_gauges", "drop_count", "drop_bytes",
             "tcp_retransmission_count", "dns_request_count", "dns_response_count", "dns_latency_seconds",
             "dns_unanswered_queries", "interzone_bytes", "interzone_count", "tcp_connect_latency_seconds",
             "tcp_failed_connections", "tcp_rtt_seconds"]
    options = [{"metricName": n, "sourceLabels": ctx, "ttl": "1m",
                **({"destinationLabels": ctx} if remote else {}),
                **({"additionalLabels": ["is_reply"]} if n == "forward_count" else {})} for n in names]
    cfg = parse_metrics_configuration({"contextOptions": options, "podLabelKeys": ["app"]}, remote_context=remote)
    adv = AdvancedMetrics(cfg, node_name="n", host_interfaces_observed=False, remote_context=remote)
    adv.process(_records())
    adv.sweep(0.0)  # the unanswered query is counted
    cp = ControlPlane()
    cp.failed_to_reconcile("dns")
    cp.add_lost("kernel", "packetparser", 1)
    families = adv.families() + adv.control_plane_families() + list(cp.families())
    text = render(families)
    errors, not_seen = cat_mod.verify_exposition(text, CATALOG)
    assert not errors
    adv_names = {n for n, m in CATALOG.metrics.items() if m.level == "pod" and not m.pending}
    assert not adv_names & set(not_seen), "every adv metric rendered"
    fams = cat_mod.parse_exposition(text)
    assert all(fams[n]["samples"] for n in adv_names), {n: len(fams[n]["samples"]) for n in adv_names}


def test_verify_exposition_reports_drift():
    text = ("# TYPE networkobservability_forward_count counter\n"
            'networkobservability_forward_count{dir="ingress"} 1\n'
            "# TYPE networkobservability_new_thing gauge\nnetworkobservability_new_thing 1\n")
    errors, not_seen = cat_mod.verify_exposition(text, CATALOG)
    assert any("type counter" in e for e in errors)
    assert any("missing labels ['direction'], unknown labels ['dir']" in e for e in errors)
    assert any("new_thing: served by the agent, not in the catalog" in e for e in errors)
    assert "networkobservability_drop_count" in not_seen


# ----------------------------------------------------------------------------------------------------------------
# docs/dashboards.md: the copy-pasteable configs are valid


def doc_yaml_blocks() -> list[str]:
    text = (ROOT / "docs" / "dashboards.md").read_text()
    return re.findall(r"```yaml\n(.*?)```", text, re.S)


def test_doc_yaml_blocks_parse():
    blocks = doc_yaml_blocks()
    assert len(blocks) >= 5
    for b in blocks:
        yaml.safe_load(b)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
@pytest.mark.parametrize("which", ["static", "kubernetes"])
def test_doc_scrape_configs_pass_promtool(which, tmp_path):
    blocks = [b for b in doc_yaml_blocks() if b.startswith("# prometheus.yml")]
    block = next(b for b in blocks if ("kubernetes_sd_configs" in b) == (which == "kubernetes"))
    cfg = yaml.safe_load(block)
    if "rule_files" in cfg:
        cfg["rule_files"] = [str(DASH_DIR / "alerts.yaml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    p = subprocess.run([PROMTOOL, "check", "config", str(path)], capture_output=True, text=True)
    if p.returncode and "kubernetes_sd_configs not found" in p.stdout + p.stderr:
        # Debian's Prometheus is built without Kubernetes discovery: check the rest (relabel rules) with a
        # static target in its place.
        for job in cfg["scrape_configs"]:
            job.pop("kubernetes_sd_configs", None)
            job["static_configs"] = [{"targets": ["127.0.0.1:10093"]}]
        path.write_text(yaml.safe_dump(cfg))
        p = subprocess.run([PROMTOOL, "check", "config", str(path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    job = cfg["scrape_configs"][0]
    assert job["job_name"] == "retina-exporter"
    # The agent keeps Retina's names in both exposition formats: no renaming rule is needed.
    assert "metric_relabel_configs" not in job
