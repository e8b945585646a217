"""Every dashboard panel returns at least one series from the real agent, scraped by the real Prometheus.

Two labs (tests/support and retina_exporter.lab), each with the agent in its node namespace, every plugin enabled,
pod level and a MetricsConfiguration with every adv metric:

* "local": local context (remoteContext false), every context label; feeds the per-pod panels; its inventory puts
  the server pod on a node of another zone (inter-zone panels);
* "remote": remote context (source_/destination_ labels); feeds the pod-to-pod panels. It runs with one extra
  plugin that always fails to start (tests/support/agent_with_broken_plugin.py), so the plugin-failure panels and
  the RetinaExporterPluginFailed alert have something to show.

Each agent is reached from the root namespace through a loopback PortForward; Prometheus scrapes both every second
(job retina-exporter, label cluster="lab", _total stripped as docs/dashboards.md recommends) and loads
dashboards/alerts.yaml. Traffic runs in the background the whole time: TCP and UDP pod to pod, ping to the world,
connections to a closed port (NO_SOCKET drops, RSTs), TCP data dropped by an nftables rule (NETFILTER_DROP drops
and retransmissions), DNS queries to a small DNS server in pod-1 answering NOERROR, NXDOMAIN, SERVFAIL or nothing,
a junk port-53 payload (parse errors), frames of an unknown ethertype into a tap in the node (interface rx_dropped)
and a listener that overflows its accept queue in the node (ListenDrops).

A panel whose metrics come from a plugin whose module does not exist yet is skipped, naming the plugin.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from dashboards import catalog as cat_mod
from retina_exporter.agent import PLUGINS
from retina_exporter.lab import traffic
from retina_exporter.lab.agent_process import ROOT, AgentProcess
from retina_exporter.lab.forward import PortForward
from retina_exporter.lab.topology import Lab, in_netns
from tests.support.prometheus_server import PrometheusServer, find_binary

pytestmark = [
    pytest.mark.skipif(find_binary() is None,
                       reason="prometheus not installed (apt-get install prometheus; scripts/setup.sh)"),
    pytest.mark.timeout(900),  # the first test also builds two labs, compiles every plugin twice, waits for data
]

DASH_DIR = Path(__file__).resolve().parents[1] / "dashboards"
CATALOG = cat_mod.load()
HAVE_NFT = subprocess.run(["which", "nft"], capture_output=True).returncode == 0
AGENT_PORT = 10093
READY_TIMEOUT_S = 120  # from the moment Prometheus has scraped both agents twice
#: The variables as "All" (.*), ranges that cover the whole test.
E2E_VARIABLES = {**cat_mod.TEST_VARIABLES, "__rate_interval": "30s", "__range": "15m", "__interval": "5s"}

ALL_PLUGINS = ["packetparser", "packetforward", "linuxutil", "dropreason", "dns", "tcpretrans"]
ADV_METRICS = ["forward_count", "forward_bytes", "tcp_flag_gauges", "drop_count", "drop_bytes",
               "tcp_retransmission_count", "dns_request_count", "dns_response_count", "dns_latency_seconds",
               "dns_unanswered_queries", "interzone_bytes", "interzone_count", "tcp_connect_latency_seconds",
               "tcp_failed_connections", "tcp_rtt_seconds"]
LOCAL_CONTEXT = ["ip", "namespace", "podname", "workload", "service", "port", "zone"]
REMOTE_CONTEXT = ["namespace", "podname", "workload"]

RETRANS_PORT = 5998  # pod-1 listens, nftables drops the data segments: NETFILTER_DROP + retransmissions
CLOSED_PORT = 5399  # nobody listens: NO_SOCKET drops, RSTs
DNS_NAMES = [("web.lab.local", 1), ("web.lab.local", 28), ("nx.lab.local", 1), ("fail.lab.local", 1),
             ("drop.lab.local", 1)]


def plugin_module_present(plugin: str) -> bool:
    target = PLUGINS.get(plugin)
    if target is None:
        return False
    try:
        return importlib.util.find_spec(target.split(":")[0]) is not None
    except ModuleNotFoundError:
        return False


def missing_plugins_for(expr: str) -> list[str]:
    """Plugins whose module does not exist yet and without which the expression cannot have data (a
    ``{__name__=~...}`` selector needs only one of the metrics it matches)."""

    def missing(name: str) -> str | None:
        src = CATALOG[name].source if name in CATALOG else None
        return src if src in PLUGINS and not plugin_module_present(src) else None

    out: set[str] = set()
    for sel in cat_mod.analyze(cat_mod.substitute(expr, E2E_VARIABLES)).selectors:
        names = [sel.metric] if sel.metric else cat_mod._metrics_of(sel, CATALOG)
        gone = [missing(n) for n in names]
        if names and all(gone):
            out.update(g for g in gone if g)
    return sorted(out)


def panel_cases() -> list:
    cases = []
    for path in sorted(DASH_DIR.glob("*.json")):
        dash = json.loads(path.read_text())
        for p in dash["panels"]:
            for t in p.get("targets", []):
                # the labels the panel shows: its legend's, or a table's grouping labels
                shows = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")))
                if p["type"] == "table":
                    shows = set(cat_mod.analyze(cat_mod.substitute(t["expr"])).grouping)
                cases.append(pytest.param(dash["title"], p["title"], t["refId"], t["expr"], frozenset(shows),
                                          id=f"{path.stem}/{p['title']}/{t['refId']}"))
    return cases


def labelled(result: list[dict], labels: set[str]) -> list[dict]:
    return [r for r in result if all(r["metric"].get(lbl) for lbl in labels)]


# ----------------------------------------------------------------------------------------------------------------
# Programs run inside the lab's namespaces (stdlib only)

DNS_SERVER = r'''
import socket, struct, sys
ip = sys.argv[1]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((ip, 53))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)   # accepts nothing: the kernel completes handshakes
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((ip, int(sys.argv[2])))
t.listen(1024)
print("ready", flush=True)
while True:
    data, addr = u.recvfrom(2048)
    if len(data) < 12:
        continue
    qid, flags, qd = struct.unpack("!3H", data[:6])
    if flags & 0x8000 or qd != 1:
        continue
    i, labels = 12, []
    while i < len(data) and data[i]:
        n = data[i]
        labels.append(data[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    if i + 5 > len(data):
        continue
    qtype = struct.unpack("!H", data[i + 1:i + 3])[0]
    question = data[12:i + 5]
    name = ".".join(labels)
    if name.startswith("drop"):
        continue                                   # a query without a response
    rcode = 3 if name.startswith("nx") else 2 if name.startswith("fail") else 0
    answer, ancount = b"", 0
    if rcode == 0 and qtype == 1:
        answer, ancount = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton("10.1.2.3"), 1
    u.sendto(struct.pack("!6H", qid, 0x8180 | rcode, 1, ancount, 0, 0) + question + answer, addr)
'''

DNS_CLIENT = r'''
import json, random, socket, struct, sys
server = sys.argv[1]
queries = json.loads(sys.argv[2])
got = 0
for name, qtype in queries:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.3)
    q = struct.pack("!6H", random.randrange(65536), 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00" + struct.pack("!2H", qtype, 1)
    s.sendto(q, (server, 53))
    try:
        s.recv(2048)
        got += 1
    except socket.timeout:
        pass
    s.close()
j = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
j.sendto(b"\x00\x01junk", (server, 53))            # not DNS: a parse error
print(json.dumps({"responses": got}))
'''

RETRANS_CLIENT = r'''
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.sendall(b"x" * 400)                              # dropped by nftables: retransmitted until we close
time.sleep(float(sys.argv[3]))
s.close()
'''

NFT_RULES = f"""table inet rxe2e {{
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp dport {RETRANS_PORT} ip length > 100 drop
  }}
}}
"""

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
UNKNOWN_ETHERTYPE_FRAME = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + bytes(46)


def _py(script: str, *args) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", script, *map(str, args)]


def make_tap(name: str) -> int:
    """A tap in the calling thread's namespace (run it with in_netns); frames written to it that no protocol
    handles count as its rx_dropped."""
    from pyroute2 import IPRoute

    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    with IPRoute() as r:
        r.link("set", index=r.link_lookup(ifname=name)[0], state="up")
    return fd


def overflow_accept_queue() -> list[socket.socket]:
    """A listener with backlog 0 that never accepts, and connections to it: the SYNs beyond the queue are dropped
    (TcpExt ListenDrops). Run it with in_netns; the sockets keep their namespace."""
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    socks = [lst]
    for _ in range(4):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setblocking(False)
        c.connect_ex(lst.getsockname())
        socks.append(c)
    return socks


# ----------------------------------------------------------------------------------------------------------------
# Agents


def agent_config(lab: Lab, inventory: Path, remote: bool) -> dict:
    options = []
    for name in ADV_METRICS:
        opt: dict = {"metricName": name, "sourceLabels": REMOTE_CONTEXT if remote else LOCAL_CONTEXT}
        if remote:
            opt["destinationLabels"] = REMOTE_CONTEXT
        if name.startswith("forward"):
            opt["ttl"] = "10m"  # expired_metrics_counter series
        if name == "forward_count":
            opt["additionalLabels"] = ["is_reply"]
        options.append(opt)
    return {
        "enabledPlugin": [p for p in ALL_PLUGINS if p in PLUGINS],
        "enablePodLevel": True,
        "remoteContext": remote,
        "mergeQueuedEvents": remote,  # one agent merges (and serves its merged-events counter)
        "dataAggregationLevel": "high",
        "conntrackReportInterval": "1s",
        "hostInterfaces": [lab.uplink],
        "enrichment": {"source": "inventory", "inventoryFile": str(inventory)},
        "nodeName": lab.node_name,
        "metricsConfiguration": {"contextOptions": options},
    }


class LabAgent(AgentProcess):
    """The real agent in a lab's node namespace; with ``broken_plugin`` it also has one plugin that always fails to
    start (tests/support/agent_with_broken_plugin.py). Ready when /readyz says ok or names only failed plugins (a
    plugin that cannot start on this kernel then shows up in the panels' failure messages, not as a time-out)."""

    def __init__(self, netns: str, config: dict, port: int, broken_plugin: bool = False) -> None:
        super().__init__(netns, config, port=port)
        self.broken_plugin = broken_plugin

    def start(self, timeout: float = 60.0) -> "LabAgent":
        module = "tests.support.agent_with_broken_plugin" if self.broken_plugin else "retina_exporter.cli"
        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-m", module]
        argv += [self._cfg.name] if self.broken_plugin else ["agent", "--config", self._cfg.name]
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, body = self.get("/readyz", timeout=1)
                reasons = [ln for ln in body.decode().splitlines() if ln.strip()]
                if status == 200 or (reasons and all(re.match(r"plugin \S+ failed", ln) for ln in reasons)):
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"agent not ready within {timeout}s:\n{self.log()}")


class Side:
    """One lab with its agent, port forward and helper processes."""

    def __init__(self, name: str, remote: bool, workdir: Path, stack: contextlib.ExitStack) -> None:
        self.name = name
        self.lab = stack.enter_context(Lab(pods=2))
        inventory = self.lab.inventory()
        if not remote:  # the server pod on a node of another zone: inter-zone traffic for the cost panels
            inventory["endpoints"][1]["node"] = "node-b"
            inventory["nodes"].append({"name": "node-b", "zone": "lab-zone-b"})
        self.inventory = workdir / f"{name}-inventory.yaml"
        self.inventory.write_text(json.dumps(inventory))
        p0, p1 = self.lab.pods
        self.client, self.server = p0, p1
        # Conditions that persist: an interface with rx drops, TcpExt ListenDrops, the nftables rule.
        self.tap = in_netns(self.lab.node_ns, make_tap, "e2etap0")
        stack.callback(os.close, self.tap)
        socks = in_netns(self.lab.node_ns, overflow_accept_queue)
        stack.callback(lambda: [s.close() for s in socks])
        if HAVE_NFT:
            self.lab.run(p1, ["nft", "-f", "-"], input=NFT_RULES)
        self.dns = self.lab.popen(p1, _py(DNS_SERVER, p1.ipv4, RETRANS_PORT), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        stack.callback(self._kill, self.dns)
        traffic._wait_ready(self.dns, 10, f"DNS server in {p1.name}")
        self.agent = LabAgent(self.lab.node_ns, agent_config(self.lab, self.inventory, remote), port=AGENT_PORT,
                              broken_plugin=remote)
        stack.callback(self.agent.close)
        self.agent.start()
        self.forward = PortForward(("127.0.0.1", 0), self.lab.node_ns, ("127.0.0.1", AGENT_PORT)).start()
        stack.callback(self.forward.stop)
        host, port = self.forward.address
        self.target = f"{host}:{port}"

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def round(self) -> None:
        """One round of every kind of traffic (about 2 s)."""
        lab, c, s = self.lab, self.client, self.server
        traffic.tcp_transfer(lab, c, s, nbytes=20_000, port=5301)
        traffic.udp_burst(lab, s, c, count=20, payload_size=100, dport=9301)
        traffic.ping(lab, c, "world", count=2)
        traffic.tcp_connect_refused(lab, c, s, port=CLOSED_PORT)
        lab.run(c, _py(DNS_CLIENT, s.ipv4, json.dumps(DNS_NAMES)), timeout=20)
        if HAVE_NFT:
            lab.run(c, _py(RETRANS_CLIENT, s.ipv4, RETRANS_PORT, 0.8), timeout=20)
        for _ in range(3):
            os.write(self.tap, UNKNOWN_ETHERTYPE_FRAME)

    def readyz(self) -> str:
        try:
            status, body = self.agent.get("/readyz", timeout=5)
            return f"{status} {body.decode().strip()}"
        except OSError as exc:
            return f"unreachable: {exc}"


class Env:
    def __init__(self, sides: list[Side], prom: PrometheusServer) -> None:
        self.sides = sides
        self.prom = prom
        self.ready_at = 0.0
        self.traffic_errors: list[str] = []
        self.stop = threading.Event()

    def traffic_loop(self) -> None:
        while not self.stop.is_set():
            for side in self.sides:
                if self.stop.is_set():
                    return
                try:
                    side.round()
                except Exception as exc:  # keep going; reported when a panel stays empty
                    self.traffic_errors.append(f"{side.name}: {type(exc).__name__}: {exc}")
            self.stop.wait(0.5)

    def diagnostics(self) -> str:
        lines = [f"  agent {s.name}: /readyz {s.readyz()}" for s in self.sides]
        if self.traffic_errors:
            lines.append(f"  traffic errors: {self.traffic_errors[-5:]}")
        return "\n".join(lines)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    with contextlib.ExitStack() as stack:
        sides = [Side("local", False, workdir, stack), Side("remote", True, workdir, stack)]
        for side in sides:
            side.round()  # the first round raises if the lab or a helper is broken
        prom = stack.enter_context(PrometheusServer([s.target for s in sides], labels={"cluster": "lab"},
                                                    rule_files=[DASH_DIR / "alerts.yaml"]))
        e = Env(sides, prom)
        gen = threading.Thread(target=e.traffic_loop, name="e2e-traffic", daemon=True)
        gen.start()
        stack.callback(gen.join, 30)
        stack.callback(e.stop.set)
        prom.wait_for_targets(timeout=60)
        e.ready_at = time.monotonic()
        yield e


def wait_for_series(env: Env, expr: str, labels: set[str] = frozenset()) -> list[dict]:
    """The query's result once it has a series carrying every label in ``labels`` (non-empty), or whatever it
    returns at the deadline."""
    deadline = env.ready_at + READY_TIMEOUT_S
    while True:
        result = env.prom.query(expr)
        if labelled(result, labels) or time.monotonic() > deadline:
            return result
        time.sleep(1.0)


# ----------------------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("dashboard,panel,ref,expr,want", panel_cases())
def test_panel_returns_series(env, dashboard, panel, ref, expr, want):
    """At least one series, and one that carries the labels the panel shows (its legend's, or a table's grouping
    labels): a pod panel must show a pod, not an unlabelled total."""
    names = cat_mod.analyze(cat_mod.substitute(expr, E2E_VARIABLES)).metric_names
    pending = sorted({CATALOG[n].pending for n in names if n in CATALOG and CATALOG[n].pending})
    if names and len(pending) and all(n in CATALOG and CATALOG[n].pending for n in names):
        pytest.skip(f"{dashboard} / {panel}: its metrics are documented ahead of their code: {', '.join(pending)}")
    missing = missing_plugins_for(expr)
    if missing:
        pytest.skip(f"plugin module(s) {', '.join(missing)} not present yet "
                    f"({', '.join(PLUGINS[m] for m in missing)}): {dashboard} / {panel} cannot have data")
    if not HAVE_NFT and ('reason=~"NETFILTER' in expr or "adv_tcpretrans_count" in expr):
        pytest.skip("nftables (nft) not installed: no netfilter drops and no retransmissions to show")
    query = cat_mod.substitute(expr, E2E_VARIABLES)
    result = wait_for_series(env, query, want)
    if result and not labelled(result, want):
        pytest.fail(f"{dashboard} / {panel} ({ref}): no series with labels {sorted(want)}\n  query: {query}\n"
                    f"  got: {[r['metric'] for r in result[:5]]}\n{env.diagnostics()}")
    if not result:
        present = {}
        for name in sorted(set(cat_mod.analyze(query).metric_names)):
            present[name] = len(env.prom.query(f'{name}{{job="retina-exporter"}}'))
        pytest.fail(f"{dashboard} / {panel} ({ref}): no series after {READY_TIMEOUT_S}s\n  query: {query}\n"
                    f"  series per metric in Prometheus: {present}\n{env.diagnostics()}")


def test_variables_have_values(env):
    """The cluster, job, node and namespace variables list something (cluster "lab" from the scrape config)."""
    seen = {}
    for path in sorted(DASH_DIR.glob("*.json")):
        for v in json.loads(path.read_text())["templating"]["list"]:
            if v["type"] != "query":
                continue
            selector, _, label = v["query"][len("label_values("):-1].rpartition(",")
            expr = f"count by ({label.strip()}) ({cat_mod.substitute(selector, E2E_VARIABLES)})"
            result = wait_for_series(env, expr)
            seen[(path.stem, v["name"])] = sorted(r["metric"].get(label.strip(), "") for r in result)
    assert all(seen.values()), seen
    assert seen[("overview", "cluster")] == ["lab"]
    assert "lab" in seen[("pod-traffic", "namespace")]


def test_catalog_matches_agent_output(env):
    """Every family the two agents serve is in the catalog (type and labels), and together they serve every
    catalog metric: the catalog is the agents' real output."""
    if any(not plugin_module_present(p) for p in ALL_PLUGINS):
        pytest.skip("not every plugin module exists yet: " +
                    ", ".join(p for p in ALL_PLUGINS if not plugin_module_present(p)))
    deadline = env.ready_at + READY_TIMEOUT_S
    while True:
        errors, not_seen = [], None
        for side in env.sides:
            req = urllib.request.Request(f"http://{side.target}/metrics",
                                         headers={"Accept": "text/plain; version=0.0.4"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                text = resp.read().decode()
            e, ns = cat_mod.verify_exposition(text, CATALOG)
            errors += [f"{side.name}: {x}" for x in e]
            not_seen = set(ns) if not_seen is None else not_seen & set(ns)
        if (not errors and not not_seen) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not errors, "\n".join(errors)
    assert not not_seen, f"catalog metrics neither agent serves: {sorted(not_seen)}\n{env.diagnostics()}"


def test_alert_rules_evaluate_and_plugin_failure_fires(env):
    """Prometheus evaluates every rule of dashboards/alerts.yaml without error on the agents' real series, and
    RetinaExporterPluginFailed fires for the remote agent's broken plugin."""
    deadline = env.ready_at + READY_TIMEOUT_S
    while True:
        groups = env.prom.rules()
        rules = [r for g in groups for r in g["rules"]]
        firing = [a for a in env.prom.alerts()
                  if a["labels"].get("alertname") == "RetinaExporterPluginFailed"
                  and a["labels"].get("reason") == "broken" and a["state"] == "firing"]
        evaluated = all(r.get("lastEvaluation", "").startswith("20") for r in rules)
        if (firing and evaluated) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(rules) == 14
    bad = {r["name"]: r.get("lastError") for r in rules if r.get("health") != "ok"}
    assert not bad, bad
    assert firing, f"RetinaExporterPluginFailed not firing: {env.prom.alerts()}"
    assert firing[0]["labels"]["cluster"] == "lab" and firing[0]["annotations"]["runbook"]
