"""Writes the Grafana dashboards (``dashboards/*.json``) and the promtool unit tests of the alerting rules
(``dashboards/alerts_test.yaml``). The committed files are this script's output: edit this script, then run

    .venv/bin/python -m dashboards.generate          # rewrite the files
    .venv/bin/python -m dashboards.generate --check  # exit 1 if a committed file differs (what the tests do)

Conventions of every query (checked by tests/test_dashboards.py against metrics_catalog.yaml):

* Every selector has ``cluster=~"$cluster"`` (the ``cluster`` label comes from the scrape config; "All" is ``.*``,
  which also matches series without the label) and ``instance=~"$node"``.
* Retina's counts are monotonic **gauges** (``forward_count``, ``drop_count``, every ``adv_*`` but the DNS ones):
  they are queried with ``rate()``/``increase()`` exactly like counters (a gauge that drops to 0 when the agent
  restarts looks like a counter reset to Prometheus, which is what we want). Levels (``tcp_state``,
  ``udp_connection_stats``, ``tcp_connection_remote``) are used as they are.
* Rates use ``$__rate_interval``; "over the time range" tables use ``increase(...[$__range])``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from retina_core.telemetry import CONTROL_PLANE_PREFIX, METRIC_PREFIX

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
TAGS = ["retina-exporter", "networking", "ebpf"]

N = 'cluster=~"$cluster", instance=~"$node"'  # the node selector every query carries
NS = N + ', namespace=~"$namespace"'  # + the namespace variable (local-context adv metrics)
# Panels about pods or workloads keep only series that name one: a Prometheus that scrapes clusters in local and in
# remote context (or a MetricsConfiguration without podname) then shows no unlabelled "{}" rows.
NSP = NS + ', podname!=""'
NSW = NS + ', workload_name!=""'
NR = N + ', source_podname!=""'  # remote context (source_/destination_ labels)
RI = "$__rate_interval"
RANGE = "$__range"

M = METRIC_PREFIX
CP = CONTROL_PLANE_PREFIX


# ----------------------------------------------------------------------------------------------------------------
# Panel builders


def _target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, table: bool = False) -> dict:
    t: dict[str, Any] = {"datasource": DS, "editorMode": "code", "expr": expr, "refId": ref}
    if legend:
        t["legendFormat"] = legend
    if instant:
        t.update({"instant": True, "range": False})
    else:
        t.update({"instant": False, "range": True})
    if table:
        t["format"] = "table"
    return t


def _targets(queries: list[tuple[str, str]], **kw) -> list[dict]:
    return [_target(expr, legend, ref=chr(ord("A") + i), **kw) for i, (expr, legend) in enumerate(queries)]


def timeseries(title: str, queries: list[tuple[str, str]], unit: str = "short", description: str = "",
               stack: bool = False, min0: bool = True, w: int = 12, h: int = 8, legend: str = "table") -> dict:
    defaults: dict[str, Any] = {
        "color": {"mode": "palette-classic"},
        "custom": {
            "drawStyle": "line", "lineInterpolation": "linear", "lineWidth": 1,
            "fillOpacity": 25 if stack else 10, "gradientMode": "none", "showPoints": "never",
            "spanNulls": False, "axisPlacement": "auto",
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        },
        "unit": unit,
    }
    if min0:
        defaults["min"] = 0
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": legend, "placement": "bottom", "showLegend": True,
                       "calcs": ["mean", "max", "lastNotNull"] if legend == "table" else []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": _targets(queries),
        "_size": (w, h),
    }


def stat(title: str, expr: str, unit: str = "short", description: str = "", red_above: float | None = None,
         w: int = 6, h: int = 4, decimals: int | None = None) -> dict:
    steps: list[dict] = [{"color": "green", "value": None}]
    if red_above is not None:
        steps.append({"color": "red", "value": red_above})
    defaults: dict[str, Any] = {"unit": unit, "color": {"mode": "thresholds"},
                                "thresholds": {"mode": "absolute", "steps": steps}}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "justifyMode": "auto", "orientation": "auto",
                    "textMode": "auto"},
        "targets": [_target(expr)],
        "_size": (w, h),
    }


def table(title: str, expr: str, value_name: str, unit: str = "short", description: str = "",
          w: int = 12, h: int = 8, matrix: tuple[str, str] | None = None) -> dict:
    """An instant query as a table, sorted by its value; ``matrix=(row_label, column_label)`` pivots it."""
    if matrix:
        row, col = matrix
        transformations = [{"id": "groupingToMatrix",
                            "options": {"rowField": row, "columnField": col, "valueField": "Value",
                                        "emptyValue": "null"}}]
        options: dict[str, Any] = {"showHeader": True, "cellHeight": "sm"}
    else:
        transformations = [{"id": "organize",
                            "options": {"excludeByName": {"Time": True}, "renameByName": {"Value": value_name}}}]
        options = {"showHeader": True, "cellHeight": "sm", "sortBy": [{"displayName": value_name, "desc": True}]}
    return {
        "type": "table", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"align": "auto", "filterable": True}},
                        "overrides": []},
        "options": options,
        "transformations": transformations,
        "targets": [_target(expr, instant=True, table=True)],
        "_size": (w, h),
    }


def bargauge(title: str, expr: str, legend: str, unit: str = "short", description: str = "", w: int = 12,
             h: int = 8) -> dict:
    return {
        "type": "bargauge", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit, "color": {"mode": "continuous-BlPu"}, "min": 0},
                        "overrides": []},
        "options": {"displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True,
                    "valueMode": "color", "namePlacement": "auto", "sizing": "auto", "minVizHeight": 16,
                    "minVizWidth": 8, "maxVizHeight": 300,
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        "targets": [_target(expr, legend, instant=True)],
        "_size": (w, h),
    }


def quantiles(bucket: str, by: str = "", legend: str = "") -> list[tuple[str, str]]:
    """p50, p95 and p99 of a histogram's ``_bucket`` series, ``by`` the given labels (besides le)."""
    group = f"{by}, le" if by else "le"
    return [(f"histogram_quantile({q}, sum by ({group}) (rate({bucket}[{RI}])))", f"{legend}p{int(q * 100)}".strip())
            for q in (0.5, 0.95, 0.99)]


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def layout(items: list[dict]) -> list[dict]:
    """Place panels left to right in rows of width 24; a row panel starts a new line. Assigns ids."""
    out = []
    x = y = line_h = 0
    for pid, item in enumerate(items, start=1):
        p = dict(item)
        if p["type"] == "row":
            if x:
                y += line_h
            x, line_h = 0, 0
            p["gridPos"] = {"h": 1, "w": 24, "x": 0, "y": y}
            y += 1
        else:
            w, h = p.pop("_size")
            if x + w > 24:
                y += line_h
                x, line_h = 0, 0
            p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            x += w
            line_h = max(line_h, h)
        p["id"] = pid
        out.append(p)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Variables


def var_datasource() -> dict:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
            "regex": "", "skipUrlSync": False}


def var_query(name: str, label: str, query: str, all_value: str | None = ".*", description: str = "") -> dict:
    v = {"name": name, "label": label, "description": description, "type": "query", "datasource": DS,
         "query": query, "definition": query, "refresh": 2, "regex": "", "sort": 1, "hide": 0,
         "includeAll": True, "multi": True, "options": [], "skipUrlSync": False,
         "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}
    if all_value is not None:
        v["allValue"] = all_value
    return v


PRESENCE = CP + "parsed_packets_counter"  # served by every agent, whatever its plugins


def var_cluster() -> dict:
    return var_query("cluster", "Cluster", f"label_values({PRESENCE}, cluster)",
                     description="The cluster label added by the scrape config (All also matches series without it)")


def var_node(extra: str = "") -> dict:
    return var_query("node", "Node", f'label_values({PRESENCE}{{cluster=~"$cluster"{extra}}}, instance)',
                     description="The agent's scrape target (instance)")


def var_namespace(metric: str) -> dict:
    return var_query("namespace", "Namespace",
                     f'label_values({M}{metric}{{cluster=~"$cluster", instance=~"$node"}}, namespace)',
                     description="Pod namespace (local-context adv metrics: sourceLabels must include namespace)")


def dashboard(uid: str, title: str, description: str, variables: list[dict], items: list[dict]) -> dict:
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{"asDropdown": True, "icon": "external link", "includeVars": True, "keepTime": True,
                   "tags": ["retina-exporter"], "targetBlank": False, "title": "Retina exporter dashboards",
                   "tooltip": "", "type": "dashboards", "url": ""}],
        "panels": layout(items),
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": TAGS,
        "templating": {"list": variables},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# ----------------------------------------------------------------------------------------------------------------
# (a) Cluster and nodes


def overview() -> dict:
    fc, fb = M + "forward_count", M + "forward_bytes"
    dc, db = M + "drop_count", M + "drop_bytes"
    items = [
        stat("Nodes reporting", f"count(count by (cluster, instance) ({PRESENCE}{{{N}}}))",
             description="Agents Prometheus currently scrapes (series of the always-present parsed_packets_counter)."),
        stat("Forwarded packets/s", f"sum(rate({fc}{{{N}}}[{RI}]))", unit="pps",
             description="Packets on the host interfaces, both directions (packetforward)."),
        stat("Dropped packets/s", f"sum(rate({dc}{{{N}}}[{RI}]))", unit="pps", red_above=1,
             description="Packets the kernel dropped, every reason (dropreason)."),
        stat("DNS requests/s", f"sum(rate({M}dns_request_count{{{N}}}[{RI}]))", unit="reqps",
             description="DNS queries seen on pod veths and host interfaces (dns)."),
        row("Traffic (packetforward)"),
        timeseries("Forwarded packets/s by direction", [(f"sum by (direction) (rate({fc}{{{N}}}[{RI}]))",
                                                         "{{direction}}")], unit="pps",
                   description="forward_count: packets received (ingress) and sent (egress) on the host "
                               "interfaces, summed over the selected nodes."),
        timeseries("Forwarded bytes/s by direction", [(f"sum by (direction) (rate({fb}{{{N}}}[{RI}]))",
                                                       "{{direction}}")], unit="Bps",
                   description="forward_bytes: frame bytes without FCS, as the interfaces' own counters."),
        timeseries("Forwarded bytes/s by node", [(f"sum by (instance, direction) (rate({fb}{{{N}}}[{RI}]))",
                                                  "{{instance}} {{direction}}")], unit="Bps", w=24),
        row("Drops (dropreason)"),
        timeseries("Dropped packets/s by reason", [(f"sum by (reason) (rate({dc}{{{N}}}[{RI}]))", "{{reason}}")],
                   unit="pps", stack=True,
                   description="drop_count by the kernel's drop reason (NETFILTER_DROP: a firewall/policy rule; "
                               "NO_SOCKET: nothing listens on the port; TCP_*: TCP state checks; QDISC_*: queue "
                               "overflow)."),
        timeseries("Dropped bytes/s by reason", [(f"sum by (reason) (rate({db}{{{N}}}[{RI}]))", "{{reason}}")],
                   unit="Bps", stack=True),
        timeseries("Dropped packets/s by node and direction",
                   [(f"sum by (instance, direction) (rate({dc}{{{N}}}[{RI}]))", "{{instance}} {{direction}}")],
                   unit="pps"),
        table("Drop reasons over the time range",
              f"sort_desc(sum by (reason, direction) (increase({dc}{{{N}}}[{RANGE}])))", "Packets",
              description="Dropped packets per reason and direction over the dashboard's time range."),
        row("TCP, UDP and IP (linuxutil, tcpretrans)"),
        timeseries("TCP sockets by state", [(f"sum by (state) ({M}tcp_state{{{N}}})", "{{state}}")],
                   description="tcp_state: sockets of the node's network namespace (host-network pods included) "
                               "by state; a level, not a rate."),
        timeseries("TCP connections with a remote peer by node",
                   [(f"sum by (instance) ({M}tcp_connection_remote{{{N}}})", "{{instance}}")]),
        timeseries("TCP drop and error counters/s (TcpExt)",
                   [(f"sum by (statistic_name) (rate({M}tcp_connection_stats{{{N}}}[{RI}]))",
                     "{{statistic_name}}")], unit="cps",
                   description="tcp_connection_stats: Retina's 16 TcpExt/MPTcpExt keys (ListenDrops, "
                               "TCPBacklogDrop, TCPTimeouts, TCPLossProbes ...); a key appears once it is non-zero."),
        timeseries("TCP retransmitted segments/s by node",
                   [(f"sum by (instance) (rate({M}tcp_retransmission_count{{{N}}}[{RI}]))", "{{instance}}")],
                   unit="cps", description="tcpretrans: retransmitted segments, every namespace in scope."),
        timeseries("UDP sockets by node",
                   [(f'sum by (instance) ({M}udp_connection_stats{{{N}, statistic_name="ACTIVE"}})', "{{instance}}")]),
        timeseries("IP packet counters/s (IpExt)",
                   [(f'sum by (statistic_name) (rate({M}ip_connection_stats{{{N}, statistic_name!~".*Octets"}}'
                     f"[{RI}]))", "{{statistic_name}}")], unit="cps",
                   description="ip_connection_stats without the octet counters (InNoRoutes, InTruncatedPkts, "
                               "InCsumErrors, ECN counters ...)."),
        row("Interfaces (linuxutil)"),
        timeseries("Interface errors and drops/s",
                   [(f"sum by (instance, interface_name, statistic_name) (rate({M}interface_stats{{{N}}}[{RI}]))",
                     "{{instance}} {{interface_name}} {{statistic_name}}")], unit="cps",
                   description="interface_stats: driver (ethtool) or generic counters whose name contains err or "
                               "drop; a counter appears once it is non-zero."),
        table("Interface error and drop counters over the time range",
              f"sort_desc(sum by (instance, interface_name, statistic_name) "
              f"(increase({M}interface_stats{{{N}}}[{RANGE}])))", "Increase"),
    ]
    return dashboard("retina-exporter-overview", "Retina exporter / Cluster and nodes",
                     "Node-level network metrics of retina-exporter: traffic, drops, TCP/UDP/IP and interfaces.",
                     [var_datasource(), var_cluster(), var_node()], items)


# ----------------------------------------------------------------------------------------------------------------
# (b) Pod traffic


def pod_traffic() -> dict:
    fc, fb = M + "adv_forward_count", M + "adv_forward_bytes"
    local = " Local context (remoteContext: false), sourceLabels with namespace and podname."
    remote = " Remote context (remoteContext: true), sourceLabels and destinationLabels with podname."
    items = [
        row("Top talkers (local context)"),
        timeseries("Top 10 pods by bytes/s sent",
                   [(f'topk(10, sum by (namespace, podname) (rate({fb}{{{NSP}, direction="egress"}}[{RI}])))',
                     "{{namespace}}/{{podname}}")], unit="Bps",
                   description="adv_forward_bytes, direction egress: what each pod sent (counted at its veth)."
                               + local),
        timeseries("Top 10 pods by bytes/s received",
                   [(f'topk(10, sum by (namespace, podname) (rate({fb}{{{NSP}, direction="ingress"}}[{RI}])))',
                     "{{namespace}}/{{podname}}")], unit="Bps", description="adv_forward_bytes, direction ingress."
                                                                           + local),
        timeseries("Top 10 pods by packets/s",
                   [(f"topk(10, sum by (namespace, podname, direction) (rate({fc}{{{NSP}}}[{RI}])))",
                     "{{namespace}}/{{podname}} {{direction}}")], unit="pps", description="adv_forward_count." + local),
        table("Top talkers over the time range",
              f"topk(20, sum by (namespace, podname, direction) (increase({fb}{{{NSP}}}[{RANGE}])))", "Bytes",
              unit="decbytes", description="Bytes per pod and direction over the dashboard's time range." + local),
        row("Workloads and TCP (local context)"),
        timeseries("Bytes/s by workload",
                   [(f"sum by (namespace, workload_kind, workload_name, direction) (rate({fb}{{{NSW}}}[{RI}]))",
                     "{{namespace}}/{{workload_kind}}/{{workload_name}} {{direction}}")], unit="Bps",
                   description="adv_forward_bytes by the pods' top owner (Deployment, StatefulSet, DaemonSet ...). "
                               "sourceLabels must include workload." + local),
        bargauge("Bytes by workload over the time range",
                 f"sort_desc(sum by (namespace, workload_name) (increase({fb}{{{NSW}}}[{RANGE}])))",
                 "{{namespace}}/{{workload_name}}", unit="decbytes"),
        timeseries("TCP packets/s by flag",
                   [(f"sum by (flag) (rate({M}adv_tcpflags_count{{{NS}}}[{RI}]))", "{{flag}}")], unit="pps",
                   description="adv_tcpflags_count (tcp_flag_gauges): a SYN-ACK counts only as SYNACK."),
        timeseries("Top 10 pods by TCP resets/s",
                   [(f'topk(10, sum by (namespace, podname) (rate({M}adv_tcpflags_count{{{NSP}, flag="RST"}}'
                     f"[{RI}])))", "{{namespace}}/{{podname}}")], unit="pps",
                   description="RST packets a pod sent or received: refused connections, aborted connections."),
        timeseries("Top 10 pods by TCP retransmissions/s",
                   [(f"topk(10, sum by (namespace, podname) (rate({M}adv_tcpretrans_count{{{NSP}}}[{RI}])))",
                     "{{namespace}}/{{podname}}")], unit="pps",
                   description="adv_tcpretrans_count (tcp_retransmission_count): segments a pod retransmitted.",
                   w=24),
        row("Pod to pod (remote context)"),
        table("Pod-to-pod bytes over the time range (rows: source, columns: destination)",
              f"sum by (source_podname, destination_podname) (increase({fb}{{{NR}}}[{RANGE}]))", "Bytes",
              unit="decbytes", matrix=("source_podname", "destination_podname"), w=24, h=10,
              description="adv_forward_bytes per (source pod, destination pod); unknown is an endpoint that is "
                          "not a pod (the world, a node)." + remote),
        timeseries("Top 10 pod pairs by bytes/s",
                   [(f"topk(10, sum by (source_podname, destination_podname) (rate({fb}{{{NR}}}[{RI}])))",
                     "{{source_podname}} → {{destination_podname}}")], unit="Bps", description=remote.strip()),
        timeseries("Top 10 pod pairs by packets/s",
                   [(f"topk(10, sum by (source_podname, destination_podname) (rate({fc}{{{NR}}}[{RI}])))",
                     "{{source_podname}} → {{destination_podname}}")], unit="pps", description=remote.strip()),
        row("Inter-zone traffic (cloud cost)"),
        timeseries("Inter-zone bytes/s by zone pair",
                   [(f"sum by (source_zone, destination_zone) (rate({M}adv_interzone_bytes{{{N}}}[{RI}]))",
                     "{{source_zone}} → {{destination_zone}}")], unit="Bps",
                   description="adv_interzone_bytes (metricName interzone_bytes): bytes pods sent to a pod or node "
                               "of another zone, counted once on the sending node. Zones come from the nodes' "
                               "topology.kubernetes.io/zone (or the inventory)."),
        table("Inter-zone bytes over the time range",
              f"sort_desc(sum by (source_zone, destination_zone) (increase({M}adv_interzone_bytes{{{N}}}[{RANGE}])))",
              "Bytes", unit="decbytes",
              description="Multiply by your provider's inter-zone price per byte for the cost."),
    ]
    return dashboard("retina-exporter-pod-traffic", "Retina exporter / Pod traffic",
                     "Pod-level (adv_*) traffic: top talkers, workloads, TCP flags and retransmissions (local "
                     "context), pod-to-pod (remote context), inter-zone bytes. Needs enablePodLevel and a "
                     "MetricsConfiguration.",
                     [var_datasource(), var_cluster(), var_node(), var_namespace("adv_forward_bytes")], items)


# ----------------------------------------------------------------------------------------------------------------
# (c) Drops


def drops() -> dict:
    dc, db = M + "drop_count", M + "drop_bytes"
    adc, adb = M + "adv_drop_count", M + "adv_drop_bytes"
    netfilter = 'reason=~"NETFILTER_DROP|IPTABLE_RULE_DROP|IPTABLE_NAT_DROP"'
    items = [
        stat("Dropped packets/s", f"sum(rate({dc}{{{N}}}[{RI}]))", unit="pps", red_above=1),
        stat("Netfilter (policy) drops/s", f"sum(rate({dc}{{{N}, {netfilter}}}[{RI}]))", unit="pps",
             description="NETFILTER_DROP: an iptables/nftables rule (a NetworkPolicy, a firewall) dropped the packet."),
        stat("Other drops/s", f'sum(rate({dc}{{{N}, reason!~"NETFILTER_DROP|IPTABLE_RULE_DROP|IPTABLE_NAT_DROP"}}'
             f"[{RI}]))", unit="pps", red_above=1, description="Every reason except netfilter rules."),
        stat("Dropped bytes/s", f"sum(rate({db}{{{N}}}[{RI}]))", unit="Bps"),
        row("Node level (dropreason)"),
        timeseries("Dropped packets/s by reason", [(f"sum by (reason) (rate({dc}{{{N}}}[{RI}]))", "{{reason}}")],
                   unit="pps", stack=True),
        timeseries("Dropped packets/s by reason and direction",
                   [(f"sum by (reason, direction) (rate({dc}{{{N}}}[{RI}]))", "{{reason}} {{direction}}")],
                   unit="pps",
                   description="direction: ingress (the namespace had received the packet), egress (a local "
                               "socket's packet on its way out), unknown."),
        timeseries("Dropped bytes/s by reason", [(f"sum by (reason) (rate({db}{{{N}}}[{RI}]))", "{{reason}}")],
                   unit="Bps", stack=True),
        timeseries("Dropped packets/s by node", [(f"sum by (instance) (rate({dc}{{{N}}}[{RI}]))", "{{instance}}")],
                   unit="pps"),
        table("Drops by reason over the time range",
              f"sort_desc(sum by (reason, direction) (increase({dc}{{{N}}}[{RANGE}])))", "Packets", w=24),
        row("Pods (adv_drop_count, local context)"),
        timeseries("Top 10 pods by dropped packets/s",
                   [(f"topk(10, sum by (namespace, podname) (rate({adc}{{{NSP}}}[{RI}])))",
                     "{{namespace}}/{{podname}}")], unit="pps",
                   description="adv_drop_count: a drop counts for the source pod (egress) and for the destination "
                               "pod (ingress)."),
        timeseries("Pod drops/s by reason", [(f"sum by (reason) (rate({adc}{{{NS}}}[{RI}]))", "{{reason}}")],
                   unit="pps", stack=True),
        timeseries("Top 10 pods by dropped bytes/s",
                   [(f"topk(10, sum by (namespace, podname) (rate({adb}{{{NSP}}}[{RI}])))",
                     "{{namespace}}/{{podname}}")], unit="Bps"),
        timeseries("Drops/s by workload",
                   [(f"sum by (namespace, workload_name) (rate({adc}{{{NSW}}}[{RI}]))",
                     "{{namespace}}/{{workload_name}}")], unit="pps"),
        table("Drops by pod and reason over the time range",
              f"sort_desc(sum by (namespace, podname, reason, direction) (increase({adc}{{{NSP}}}[{RANGE}])))",
              "Packets", w=24),
    ]
    return dashboard("retina-exporter-drops", "Retina exporter / Drops",
                     "Packet drops by the kernel's drop reason, per node (dropreason) and per pod (adv_drop_*).",
                     [var_datasource(), var_cluster(), var_node(), var_namespace("adv_drop_count")], items)


# ----------------------------------------------------------------------------------------------------------------
# (d) DNS


def dns() -> dict:
    req, resp = M + "dns_request_count", M + "dns_response_count"
    areq, aresp = M + "adv_dns_request_count", M + "adv_dns_response_count"
    lat, alat = M + "dns_latency_seconds", M + "adv_dns_latency_seconds"
    fail = 'return_code=~"NXDOMAIN|SERVFAIL"'
    items = [
        stat("Requests/s", f"sum(rate({req}{{{N}}}[{RI}]))", unit="reqps"),
        stat("Responses/s", f"sum(rate({resp}{{{N}}}[{RI}]))", unit="reqps"),
        stat("Missing responses", f"(sum(rate({req}{{{N}}}[{RI}])) - sum(rate({resp}{{{N}}}[{RI}]))) / "
             f"(sum(rate({req}{{{N}}}[{RI}])) > 0)", unit="percentunit", red_above=0.05, decimals=1,
             description="(requests - responses) / requests, node level: queries nobody answered (timeouts, "
                         "dropped packets, an unreachable server)."),
        stat("NXDOMAIN + SERVFAIL",
             f"sum(rate({aresp}{{{NS}, {fail}}}[{RI}])) / (sum(rate({aresp}{{{NS}}}[{RI}])) > 0)",
             unit="percentunit", red_above=0.2, decimals=1,
             description="Share of responses that are NXDOMAIN or SERVFAIL (pod level). NXDOMAIN is common with "
                         "search-path expansion (ndots); SERVFAIL means the server failed."),
        row("Node level (dns)"),
        timeseries("Requests and responses/s", [(f"sum(rate({req}{{{N}}}[{RI}]))", "requests"),
                                                (f"sum(rate({resp}{{{N}}}[{RI}]))", "responses")], unit="reqps"),
        timeseries("Missing responses/s by node (requests - responses)",
                   [(f"sum by (cluster, instance) (rate({req}{{{N}}}[{RI}])) - "
                     f"sum by (cluster, instance) (rate({resp}{{{N}}}[{RI}]))", "{{instance}}")],
                   unit="reqps", min0=False,
                   description="Positive: queries without a response. Each message counts once per node."),
        row("Pods (adv_dns_*)"),
        timeseries("Responses/s by return code",
                   [(f"sum by (return_code) (rate({aresp}{{{NS}}}[{RI}]))", "{{return_code}}")], unit="reqps",
                   stack=True),
        timeseries("NXDOMAIN and SERVFAIL responses/s",
                   [(f"sum by (return_code) (rate({aresp}{{{NS}, {fail}}}[{RI}]))", "{{return_code}}")],
                   unit="reqps"),
        timeseries("Requests/s by query type",
                   [(f"sum by (query_type) (rate({areq}{{{NS}}}[{RI}]))", "{{query_type}}")], unit="reqps"),
        timeseries("Top 10 pods by requests/s",
                   [(f"topk(10, sum by (namespace, podname) (rate({areq}{{{NSP}}}[{RI}])))",
                     "{{namespace}}/{{podname}}")], unit="reqps"),
        timeseries("Missing responses/s by pod",
                   [(f"sum by (namespace, podname) (rate({areq}{{{NSP}}}[{RI}])) - "
                     f"(sum by (namespace, podname) (rate({aresp}{{{NSP}}}[{RI}])) or "
                     f"sum by (namespace, podname) (rate({areq}{{{NSP}}}[{RI}])) * 0)",
                     "{{namespace}}/{{podname}}")], unit="reqps", min0=False, w=24,
                   description="A pod's queries minus the responses it received (a pod without any response "
                               "counts all its queries)."),
        table("Top queries over the time range",
              f"topk(20, sum by (query, query_type) (increase({areq}{{{NS}}}[{RANGE}])))", "Requests"),
        table("Top failing queries over the time range",
              f'topk(20, sum by (query, return_code) (increase({aresp}{{{NS}, return_code!="NOERROR"}}[{RANGE}])))',
              "Responses"),
        table("Queries without a response over the time range",
              f"topk(20, sum by (query) (increase({areq}{{{NS}}}[{RANGE}])) - "
              f"(sum by (query) (increase({aresp}{{{NS}}}[{RANGE}])) or "
              f"sum by (query) (increase({areq}{{{NS}}}[{RANGE}])) * 0) > 0)", "Missing", w=24),
        row("Latency and unanswered queries (dnsLatency)"),
        timeseries("Query to response time (node)", quantiles(f"{lat}_bucket{{{N}}}"), unit="s",
                   description="dns_latency_seconds: from the query's first observation point on the node to the "
                               "response's, quantiles over every answered query of the selected nodes."),
        timeseries("Query to response time p99 by node and query type",
                   quantiles(f"{lat}_bucket{{{N}}}", "instance, query_type", "{{instance}} {{query_type}} ")[2:],
                   unit="s"),
        timeseries("Unanswered queries/s by query type",
                   [(f"sum by (query_type) (rate({M}dns_unanswered_queries{{{N}}}[{RI}]))", "{{query_type}}")],
                   unit="reqps", description="dns_unanswered_queries: queries without a response within "
                                             "dnsLatency.unansweredTimeout (5 s by default)."),
        timeseries("Query to response time p99 by workload",
                   quantiles(f"{alat}_bucket{{{NSW}}}", "namespace, workload_name",
                             "{{namespace}}/{{workload_name}} ")[2:], unit="s",
                   description="adv_dns_latency_seconds (metricName dns_latency_seconds, sourceLabels with "
                               "workload): the client pod's workload in local context."),
        timeseries("Query to response time by workload (p50, p95)",
                   quantiles(f"{alat}_bucket{{{NSW}}}", "namespace, workload_name",
                             "{{namespace}}/{{workload_name}} ")[:2], unit="s"),
        timeseries("Unanswered queries/s by workload",
                   [(f"sum by (namespace, workload_name) (rate({M}adv_dns_unanswered_queries{{{NSW}}}[{RI}]))",
                     "{{namespace}}/{{workload_name}}")], unit="reqps",
                   description="adv_dns_unanswered_queries (metricName dns_unanswered_queries)."),
    ]
    return dashboard("retina-exporter-dns", "Retina exporter / DNS",
                     "DNS requests and responses per node (dns) and per pod (adv_dns_*): return codes, top "
                     "queries, failures, missing responses, latency and unanswered queries.",
                     [var_datasource(), var_cluster(), var_node(), var_namespace("adv_dns_request_count")], items)


# ----------------------------------------------------------------------------------------------------------------
# (e) TCP connections: round-trip time, connect latency, failed connections (packetparser)


def tcp() -> dict:
    rtt, art = M + "tcp_rtt_seconds", M + "adv_tcp_rtt_seconds"
    con, acon = M + "tcp_connect_latency_seconds", M + "adv_tcp_connect_latency_seconds"
    fail, afail = M + "tcp_failed_connections", M + "adv_tcp_failed_connections"
    wl = "namespace, workload_name"
    wleg = "{{namespace}}/{{workload_name}} "

    def ratio(failed: str, connected: str, by: str) -> str:
        """Failed attempts / all attempts (failed + established, the connect histogram's count)."""
        f = f"sum by ({by}) (rate({failed}[{RI}]))"
        return f"{f} / ({f} + (sum by ({by}) (rate({connected}[{RI}])) or {f} * 0) > 0)"

    items = [
        stat("Connect p99 (node)", quantiles(f"{con}_bucket{{{N}}}")[2][0], unit="s",
             description="tcp_connect_latency_seconds: first SYN to the SYN-ACK answering it, seen on the node."),
        stat("RTT p99 (node)", quantiles(f"{rtt}_bucket{{{N}}}")[2][0], unit="s",
             description="tcp_rtt_seconds: the kernel's smoothed RTT, sampled per connection."),
        stat("Failed connections", ratio(f"{fail}{{{N}}}", f"{con}_count{{{N}}}", "cluster"), unit="percentunit",
             red_above=0.05, decimals=1,
             description="Attempts answered by an RST or never answered / all attempts (failed + established)."),
        stat("Failed connections/s", f"sum(rate({fail}{{{N}}}[{RI}]))", unit="cps"),
        row("Node level (packetparser)"),
        timeseries("Round-trip time (node)", quantiles(f"{rtt}_bucket{{{N}}}"), unit="s"),
        timeseries("Connect latency (node)", quantiles(f"{con}_bucket{{{N}}}"), unit="s"),
        timeseries("Failed connections/s by reason",
                   [(f"sum by (reason) (rate({fail}{{{N}}}[{RI}]))", "{{reason}}")], unit="cps", stack=True,
                   description="reset: the attempt was answered by an RST (nothing listens, a policy rejects); "
                               "timeout: no answer within tcpMetrics' timeout (SYNs dropped, host down)."),
        timeseries("Failed connection ratio by node",
                   [(ratio(f"{fail}{{{N}}}", f"{con}_count{{{N}}}", "instance"), "{{instance}}")],
                   unit="percentunit"),
        row("Workloads (adv_tcp_*)"),
        timeseries("Round-trip time p99 by workload", quantiles(f"{art}_bucket{{{NSW}}}", wl, wleg)[2:], unit="s",
                   description="adv_tcp_rtt_seconds (metricName tcp_rtt_seconds, sourceLabels with workload)."),
        timeseries("Round-trip time p50 and p95 by workload", quantiles(f"{art}_bucket{{{NSW}}}", wl, wleg)[:2],
                   unit="s"),
        timeseries("Connect latency p99 by workload", quantiles(f"{acon}_bucket{{{NSW}}}", wl, wleg)[2:], unit="s",
                   description="adv_tcp_connect_latency_seconds: the initiator's workload in local context."),
        timeseries("Connect latency p50 and p95 by workload", quantiles(f"{acon}_bucket{{{NSW}}}", wl, wleg)[:2],
                   unit="s"),
        timeseries("Failed connection ratio by workload",
                   [(ratio(f"{afail}{{{NSW}}}", f"{acon}_count{{{NSW}}}", wl), "{{namespace}}/{{workload_name}}")],
                   unit="percentunit"),
        timeseries("Failed connections/s by workload and reason",
                   [(f"sum by ({wl}, reason) (rate({afail}{{{NSW}}}[{RI}]))",
                     "{{namespace}}/{{workload_name}} {{reason}}")], unit="cps"),
    ]
    return dashboard("retina-exporter-tcp", "Retina exporter / TCP connections",
                     "TCP round-trip time, connect latency and failed connections per node (packetparser) and per "
                     "workload (adv_tcp_*).",
                     [var_datasource(), var_cluster(), var_node(), var_namespace("adv_forward_bytes")],
                     items)


# ----------------------------------------------------------------------------------------------------------------
# (f) Agent health


def agent_health() -> dict:
    up = 'up{cluster=~"$cluster", job=~"$job", instance=~"$node"}'
    adv = f'{{__name__=~"{M}adv_.+", {N}}}'
    items = [
        stat("Agents up", f"sum({up})", description="Targets of the selected jobs whose last scrape succeeded."),
        stat("Agents down", f"sum(1 - {up})", red_above=1,
             description="Targets whose last scrape failed (up == 0)."),
        stat("adv series", f"count({adv})", description="Series of every adv_* metric on the selected nodes."),
        stat("Plugin failures since start", f"sum({CP}plugin_manager_failed_to_reconcile{{{N}}})", red_above=1,
             description="Plugin start/reconcile failures (a series appears at a plugin's first failure)."),
        row("Agents"),
        timeseries("Scrape status (up)", [(up, "{{instance}}")], legend="list",
                   description="1: Prometheus scraped the agent; 0: the scrape failed."),
        timeseries("Parsed packets/s by node", [(f"sum by (instance) (rate({CP}parsed_packets_counter{{{N}}}[{RI}]))",
                                                 "{{instance}}")], unit="pps",
                   description="packetparser records read from the kernel ring buffer."),
        timeseries("Lost events/s by type and reason",
                   [(f"sum by (instance, type, reason) (rate({CP}lost_events_counter{{{N}}}[{RI}]))",
                     "{{instance}} {{type}}/{{reason}}")], unit="cps", w=24,
                   description="type kernel: a BPF ring buffer was full; enricher_ring / buffered_channel: a "
                               "user-space ring overtook its reader. reason: the plugin or component."),
        row("Advanced metrics"),
        timeseries("adv series by metric", [(f"count by (__name__) ({adv})", "{{__name__}}")],
                   description="Series per adv_* metric (cardinality)."),
        timeseries("adv series by node", [(f"count by (instance) ({adv})", "{{instance}}")]),
        timeseries("Updates dropped at the series cap/s",
                   [(f"sum by (instance, metric) (rate({CP}metrics_series_overflow_counter{{{N}}}[{RI}]))",
                     "{{instance}} {{metric}}")], unit="cps",
                   description="metrics_series_overflow_counter: a metric had maxSeriesPerMetric series."),
        timeseries("Series expired by ttl/s",
                   [(f"sum by (instance, metric) (rate({CP}expired_metrics_counter{{{N}}}[{RI}]))",
                     "{{instance}} {{metric}}")], unit="cps"),
        row("Failures"),
        timeseries("Plugin failures by plugin (since agent start)",
                   [(f"sum by (instance, reason) ({CP}plugin_manager_failed_to_reconcile{{{N}}})",
                     "{{instance}} {{reason}}")], legend="list"),
        timeseries("Enrichment reload errors (since agent start)",
                   [(f"sum by (instance, source) ({CP}enrichment_reload_errors_counter{{{N}}})",
                     "{{instance}} {{source}}")], legend="list"),
        timeseries("metricsConfiguration reloads rejected (since agent start)",
                   [(f"sum by (instance) ({CP}config_reload_errors_counter{{{N}}})", "{{instance}}")], legend="list"),
        timeseries("DNS parse errors/s",
                   [(f"sum by (instance, reason) (rate({CP}dns_parse_errors_counter{{{N}}}[{RI}]))",
                     "{{instance}} {{reason}}")], unit="cps", legend="list",
                   description="Port-53 payloads that are not readable DNS (a series appears at the first one)."),
    ]
    job = var_query("job", "Job", f'label_values({PRESENCE}{{cluster=~"$cluster"}}, job)', all_value=None,
                    description="Scrape jobs that scrape retina-exporter agents")
    return dashboard("retina-exporter-agent-health", "Retina exporter / Agent health",
                     "Is every agent scraped, are events lost, how many adv series, plugin and reload failures.",
                     [var_datasource(), var_cluster(), job, var_node(', job=~"$job"')], items)


DASHBOARDS = {
    "overview.json": overview,
    "pod-traffic.json": pod_traffic,
    "drops.json": drops,
    "dns.json": dns,
    "tcp.json": tcp,
    "agent-health.json": agent_health,
}


def render_dashboards() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n" for name, build in DASHBOARDS.items()}


def panel_queries(dash: dict) -> list[tuple[str, str, str]]:
    """``(panel title, refId, expr)`` of every query of a dashboard (rows included, nested panels too)."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p.get("title", ""), t.get("refId", ""), t["expr"]))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    return out


# ----------------------------------------------------------------------------------------------------------------
# alerts_test.yaml: promtool unit tests of alerts.yaml. The expected annotations are the rules' own templates
# expanded here (so editing a rule's text does not mean editing the tests by hand); a template the expander does
# not know fails generation.


def humanize(v: float) -> str:
    """Prometheus' ``humanize`` (SI prefixes, %.4g)."""
    if v == 0 or v != v or v in (float("inf"), float("-inf")):
        return f"{v:.4g}"
    if abs(v) >= 1:
        prefixes = ["", "k", "M", "G", "T", "P", "E", "Z", "Y"]
        i = 0
        while abs(v) >= 1000 and i < len(prefixes) - 1:
            v /= 1000
            i += 1
        return f"{v:.4g}{prefixes[i]}"
    prefixes = ["", "m", "u", "n", "p", "f", "a", "z", "y"]
    i = 0
    while abs(v) < 1 and i < len(prefixes) - 1:
        v *= 1000
        i += 1
    return f"{v:.4g}{prefixes[i]}"


_TEMPLATE_RE = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def expand(template: str, labels: dict[str, str], value: float) -> str:
    def repl(m: re.Match) -> str:
        body = m.group(1)
        if body.startswith("$labels."):
            return labels.get(body[len("$labels."):], "")
        if body == "$value | humanize":
            return humanize(value)
        if body == "$value | humanizePercentage":
            return f"{value * 100:.4g}%"
        if body == "$value":
            return f"{value:g}"
        raise ValueError(f"alerts_test generator: unsupported template {{{{ {body} }}}}")

    return _TEMPLATE_RE.sub(repl, template)


LBL = {"cluster": "prod", "instance": "node-a:10093", "job": "retina-exporter"}
SEL = 'cluster="prod", instance="node-a:10093", job="retina-exporter"'
SEL_B = 'cluster="prod", instance="node-b:10093", job="retina-exporter"'
DNS_BOUNDS = ("0.1", "0.25", "0.5", "1.0", "2.5", "+Inf")  # le as the agent renders it


def _dns_latency_series(instance: str, slow_le: str, per_minute: int = 600) -> list[tuple[str, str]]:
    """dns_latency_seconds_bucket/_count series as the agent exposes them: ``per_minute`` answers, 98% under 0.1 s
    and 2% in the bucket ending at ``slow_le``."""
    fast = per_minute * 98 // 100
    sel = f'cluster="prod", instance="{instance}", job="retina-exporter", query_type="A", return_code="NOERROR"'
    out = [(f'{M}dns_latency_seconds_bucket{{{sel}, le="{le}"}}',
            f"0+{per_minute if DNS_BOUNDS.index(le) >= DNS_BOUNDS.index(slow_le) else fast}x40")
           for le in DNS_BOUNDS]
    out.append((f"{M}dns_latency_seconds_count{{{sel}}}", f"0+{per_minute}x40"))
    return out

# Each test: input series (1m interval) and, per evaluation time, the alerts expected as (labels from the query,
# value); the rule's own labels (severity) and annotations are added by the generator.
ALERT_TESTS: list[dict] = [
    {"name": "agent down: up == 0 for 5 minutes; absent when no target at all",
     "series": [(f"up{{{SEL}}}", "1 1 0 0 0 0 0 0 0 0")],
     "checks": [("RetinaExporterDown", "5m", []),
                ("RetinaExporterDown", "8m", [(LBL, 0)]),
                ("RetinaExporterAbsent", "8m", [])]},
    {"name": "absent: no up series for 15 minutes",
     "series": [('up{job="node-exporter", instance="node-a:9100"}', "1x30")],
     "checks": [("RetinaExporterAbsent", "10m", []),
                ("RetinaExporterAbsent", "20m", [({}, 1)]),
                ("RetinaExporterDown", "20m", [])]},
    {"name": "plugin failure: a new series (first failure) and a later increase",
     "series": [(f'{CP}plugin_manager_failed_to_reconcile{{{SEL}, reason="dns"}}', "_x5 1x40 2x10")],
     "checks": [("RetinaExporterPluginFailed", "3m", []),
                ("RetinaExporterPluginFailed", "7m", [({**LBL, "reason": "dns"}, 1)]),
                ("RetinaExporterPluginFailed", "30m", []),
                ("RetinaExporterPluginFailed", "50m", [({**LBL, "reason": "dns"}, 1)])]},
    {"name": "lost events: a kernel counter that grows; an enricher series that appears",
     "series": [(f'{CP}lost_events_counter{{{SEL}, type="kernel", reason="packetparser"}}', "0x10 0+60x5 300x20"),
                (f'{CP}lost_events_counter{{{SEL}, type="enricher_ring", reason="enricher"}}', "_x20 7x20")],
     "checks": [("RetinaExporterLostEvents", "9m", []),
                ("RetinaExporterLostEvents", "16m", [({**LBL, "type": "kernel", "reason": "packetparser"}, 300)]),
                ("RetinaExporterLostEvents", "22m", [({**LBL, "type": "enricher_ring", "reason": "enricher"}, 7)]),
                ("RetinaExporterLostEvents", "35m", [])]},
    {"name": "enrichment reload errors",
     "series": [(f'{CP}enrichment_reload_errors_counter{{{SEL}, source="inventory"}}', "0x10 1x30")],
     "checks": [("RetinaExporterEnrichmentReloadErrors", "8m", []),
                ("RetinaExporterEnrichmentReloadErrors", "12m", [({**LBL, "source": "inventory"}, 1)]),
                ("RetinaExporterEnrichmentReloadErrors", "40m", [])]},
    {"name": "metricsConfiguration reload rejected",
     "series": [(f"{CP}config_reload_errors_counter{{{SEL}}}", "0x5 2x30")],
     "checks": [("RetinaExporterConfigReloadRejected", "4m", []),
                ("RetinaExporterConfigReloadRejected", "8m", [(LBL, 2)])]},
    {"name": "series cap reached",
     "series": [(f'{CP}metrics_series_overflow_counter{{{SEL}, metric="adv_forward_count"}}', "0x5 0+100x10")],
     "checks": [("RetinaExporterSeriesCapReached", "4m", []),
                ("RetinaExporterSeriesCapReached", "10m", [({**LBL, "metric": "adv_forward_count"}, 400)])]},
    {"name": "drops: 20/s NO_SOCKET (alerts after 10m), 200/s NETFILTER_DROP (info after 15m), 1/s TCP (quiet)",
     "series": [(f'{M}drop_count{{{SEL}, reason="NO_SOCKET", direction="ingress"}}', "0+1200x30"),
                (f'{M}drop_count{{{SEL}, reason="NETFILTER_DROP", direction="ingress"}}', "0+12000x30"),
                (f'{M}drop_count{{{SEL}, reason="TCP_INVALID_SEQUENCE", direction="ingress"}}', "0+60x30")],
     "checks": [("RetinaExporterPacketDrops", "10m", []),
                ("RetinaExporterPacketDrops", "20m", [({"cluster": "prod", "instance": "node-a:10093",
                                                        "reason": "NO_SOCKET"}, 20)]),
                ("RetinaExporterNetfilterDrops", "15m", []),
                ("RetinaExporterNetfilterDrops", "25m", [({"cluster": "prod", "instance": "node-a:10093"}, 200)])]},
    {"name": "DNS: 10% SERVFAIL and 90% NXDOMAIN of 10 responses/s",
     "series": [(f'{M}adv_dns_response_count{{{SEL}, return_code="NOERROR", query="a.", podname="p"}}',
                 "0+0x40"),
                (f'{M}adv_dns_response_count{{{SEL}, return_code="SERVFAIL", query="b.", podname="p"}}',
                 "0+60x40"),
                (f'{M}adv_dns_response_count{{{SEL}, return_code="NXDOMAIN", query="c.", podname="p"}}',
                 "0+540x40")],
     "checks": [("RetinaExporterDNSServfail", "5m", []),
                ("RetinaExporterDNSServfail", "20m", [({"cluster": "prod"}, 0.1)]),
                ("RetinaExporterDNSNXDomain", "15m", []),
                ("RetinaExporterDNSNXDomain", "25m", [({"cluster": "prod"}, 0.9)])]},
    {"name": "DNS: few responses do not alert",
     "series": [(f'{M}adv_dns_response_count{{{SEL}, return_code="SERVFAIL", query="b.", podname="p"}}',
                 "0+6x40")],
     "checks": [("RetinaExporterDNSServfail", "30m", []), ("RetinaExporterDNSNXDomain", "30m", [])]},
    {"name": "DNS: 20% of 10 requests/s without a response",
     "series": [(f"{M}dns_request_count{{{SEL}}}", "0+600x40"),
                (f"{M}dns_response_count{{{SEL}}}", "0+480x40")],
     "checks": [("RetinaExporterDNSMissingResponses", "5m", []),
                ("RetinaExporterDNSMissingResponses", "30m", [({"cluster": "prod", "instance": "node-a:10093"},
                                                               0.2)])]},
    {"name": "DNS latency: 10 answers/s, 2% take 1-2.5 s (p99 1.75 s) on node-a; 2% take 0.25-0.5 s on node-b",
     "series": _dns_latency_series("node-a:10093", slow_le="2.5") + _dns_latency_series("node-b:10093", slow_le="0.5"),
     "checks": [("RetinaExporterDNSLatencyHigh", "5m", []),
                ("RetinaExporterDNSLatencyHigh", "20m", [({"cluster": "prod", "instance": "node-a:10093"}, 1.75)])]},
    {"name": "DNS latency: slow answers at a low rate do not alert",
     "series": _dns_latency_series("node-a:10093", slow_le="2.5", per_minute=30),
     "checks": [("RetinaExporterDNSLatencyHigh", "30m", [])]},
    {"name": "TCP: 2/s reset and 1/s timeout of 13 attempts/s (23%) on node-a; 0.5 of 10.5/s on node-b",
     "series": [(f'{M}tcp_failed_connections{{{SEL}, reason="reset"}}', "0+120x40"),
                (f'{M}tcp_failed_connections{{{SEL}, reason="timeout"}}', "0+60x40"),
                (f"{M}tcp_connect_latency_seconds_count{{{SEL}}}", "0+600x40"),
                (f'{M}tcp_failed_connections{{{SEL_B}, reason="reset"}}', "0+30x40"),
                (f"{M}tcp_connect_latency_seconds_count{{{SEL_B}}}", "0+600x40")],
     "checks": [("RetinaExporterTCPFailedConnections", "5m", []),
                ("RetinaExporterTCPFailedConnections", "20m", [({"cluster": "prod", "instance": "node-a:10093"},
                                                                3 / 13)])]},
    {"name": "TCP: every attempt fails (no connect histogram series at all)",
     "series": [(f'{M}tcp_failed_connections{{{SEL}, reason="timeout"}}', "0+60x40")],
     "checks": [("RetinaExporterTCPFailedConnections", "20m", [({"cluster": "prod", "instance": "node-a:10093"},
                                                                1.0)])]},
]


def _format_series_labels(labels: dict[str, str]) -> dict[str, str]:
    return dict(sorted(labels.items()))


def render_alert_tests(alerts_path: Path = HERE / "alerts.yaml") -> str:
    rules = {}
    for group in yaml.safe_load(alerts_path.read_text())["groups"]:
        for r in group["rules"]:
            if "alert" in r:
                rules[r["alert"]] = r
    tested = {c[0] for t in ALERT_TESTS for c in t["checks"]}
    untested = sorted(set(rules) - tested)
    if untested:
        raise ValueError(f"alerts without a unit test in ALERT_TESTS: {untested}")
    tests = []
    for t in ALERT_TESTS:
        cases = []
        for alertname, at, expected in t["checks"]:
            rule = rules[alertname]
            exp = []
            for labels, value in expected:
                all_labels = _format_series_labels({**labels, **rule.get("labels", {})})
                exp.append({"exp_labels": all_labels,
                            "exp_annotations": {k: expand(v, all_labels, value)
                                                for k, v in rule.get("annotations", {}).items()}})
            cases.append({"eval_time": at, "alertname": alertname, "exp_alerts": exp})
        tests.append({"name": t["name"], "interval": "1m",
                      "input_series": [{"series": s, "values": v} for s, v in t["series"]],
                      "alert_rule_test": cases})
    doc = {"rule_files": ["alerts.yaml"], "evaluation_interval": "1m", "tests": tests}
    header = ("# promtool unit tests of alerts.yaml: promtool test rules dashboards/alerts_test.yaml\n"
              "# GENERATED by dashboards/generate.py (ALERT_TESTS); edit that, then run\n"
              "#   .venv/bin/python -m dashboards.generate\n")
    return header + yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, width=120, allow_unicode=True)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the runbooks) as literal blocks, so that the generated file reads like alerts.yaml."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_BlockDumper.add_representer(str, _str_representer)


def outputs() -> dict[str, str]:
    out = render_dashboards()
    out["alerts_test.yaml"] = render_alert_tests()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dashboards.generate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = ap.parse_args(argv)
    stale = []
    for name, text in outputs().items():
        path = HERE / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run python -m dashboards.generate): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
