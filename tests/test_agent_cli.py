"""The agent's command line on bad input: exit status 2 and one line that names the input and the fix.
And plugin isolation: a plugin that fails to start leaves the others running and shows in /readyz and metrics.

Every agent here runs in a network namespace made for the test, never in the machine's own."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from retina_exporter.lab.agent_process import AgentProcess

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def netns():
    name = f"rxtest-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def write_config(data) -> str:
    f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    if isinstance(data, str):
        f.write(data)
    else:
        yaml.safe_dump(data, f)
    f.close()
    os.chmod(f.name, 0o644)
    return f.name


def run_agent(netns: str, config, prefix: list[str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    path = write_config(config)
    try:
        argv = ["ip", "netns", "exec", netns] + (prefix or []) + [
            sys.executable, "-m", "retina_exporter.cli", "agent", "--config", path]
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    finally:
        os.unlink(path)


def error_line(res: subprocess.CompletedProcess) -> str:
    lines = [line for line in res.stderr.splitlines() if line.startswith("retina-exporter: error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_bad_config_value_exits_2_naming_the_key(netns):
    res = run_agent(netns, {"apiServer": {"port": 70000}})
    assert res.returncode == 2
    line = error_line(res)
    assert "apiServer.port" in line and "70000" in line and "1 to 65535" in line


def test_unknown_key_exits_2_with_suggestion(netns):
    res = run_agent(netns, {"enablePodLvl": True})
    assert res.returncode == 2
    assert "enablePodLevel" in error_line(res)


def test_malformed_yaml_exits_2_naming_the_file(netns):
    res = run_agent(netns, "apiServer: [unclosed\n")
    assert res.returncode == 2
    assert "invalid YAML" in error_line(res)


def test_missing_host_interface_exits_2(netns):
    res = run_agent(netns, {"hostInterfaces": ["nosuch0"], "apiServer": {"host": "127.0.0.1"}})
    assert res.returncode == 2, res.stderr
    line = error_line(res)
    assert "'nosuch0'" in line and "hostInterfaces" in line


def test_missing_privileges_exits_2(netns):
    res = run_agent(netns, {"apiServer": {"host": "127.0.0.1"}},
                    prefix=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
    assert res.returncode == 2, res.stderr
    line = error_line(res)
    assert "CAP_NET_ADMIN" in line and "CAP_BPF" in line


def test_missing_kernel_headers_exits_2(netns):
    # A private mount namespace where /lib/modules is empty: bcc would have nothing to compile against.
    release = os.uname().release
    path = write_config({"apiServer": {"host": "127.0.0.1"}})
    try:
        script = (f"mount -t tmpfs none /lib/modules && exec {sys.executable} -m retina_exporter.cli agent "
                  f"--config {path}")
        res = subprocess.run(["ip", "netns", "exec", netns, "unshare", "-m", "--propagation", "private",
                              "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(path)
    assert res.returncode == 2, res.stderr
    line = error_line(res)
    assert f"/lib/modules/{release}/build" in line and "make setup" in line


def test_port_in_use_exits_2(netns):
    import socket

    from retina_exporter.lab.topology import in_netns

    sock = in_netns(netns, lambda: socket.create_server(("127.0.0.1", 10093)))
    try:
        res = run_agent(netns, {"apiServer": {"host": "127.0.0.1", "port": 10093}})
    finally:
        sock.close()
    assert res.returncode == 2, res.stderr
    assert "apiServer.port" in error_line(res)


@pytest.fixture
def pod_pair(netns):
    """A veth in the test namespace whose peer is in a second namespace: a pod veth for the watcher."""
    pod = f"{netns}-p"
    subprocess.run(["ip", "netns", "add", pod], check=True)
    try:
        cmds = [
            ["ip", "-n", netns, "link", "add", "vtest0", "type", "veth", "peer", "name", "eth0", "netns", pod],
            ["ip", "-n", netns, "addr", "add", "10.77.0.1/24", "dev", "vtest0"],
            ["ip", "-n", netns, "link", "set", "vtest0", "up"],
            ["ip", "-n", pod, "addr", "add", "10.77.0.2/24", "dev", "eth0"],
            ["ip", "-n", pod, "link", "set", "eth0", "up"],
        ]
        for c in cmds:
            subprocess.run(c, check=True)
        yield netns, pod
    finally:
        subprocess.run(["ip", "netns", "del", pod], check=False)


def test_failing_plugin_is_isolated(pod_pair):
    node, pod = pod_pair
    agent = AgentProcess(node, {"enabledPlugin": ["packetparser"]})
    try:
        path = agent._cfg.name
        agent.proc = None
        # /readyz is 503 while dropreason is failed, so wait on /healthz instead.
        argv = ["ip", "netns", "exec", node, sys.executable, "-m", "tests.support.agent_with_broken_plugin", path]
        agent.proc = subprocess.Popen(argv, cwd=ROOT, stdout=agent._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            try:
                status, _ = agent.get("/healthz", timeout=1)
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert status == 200, agent.log()
        status, body = agent.get("/readyz")
        assert status == 503
        assert "plugin broken failed: start: verifier rejected the program (simulated)" in body.decode()
        _, metrics = agent.get("/metrics")
        assert ('controlplane_networkobservability_plugin_manager_failed_to_reconcile{reason="broken"} 1'
                in metrics.decode())
        # packetparser keeps working: a ping from the pod shows up as flows.
        subprocess.run(["ip", "netns", "exec", pod, "ping", "-c", "2", "-i", "0.2", "10.77.0.1"], check=True,
                       capture_output=True)
        deadline = time.monotonic() + 10
        flows = []
        while time.monotonic() < deadline:
            flows = [f for f in agent.flows(100) if f.get("Summary") == "ICMPv4 EchoRequest"]
            if len(flows) == 2:
                break
            time.sleep(0.1)
        assert len(flows) == 2 and all(f["interface"]["name"] == "vtest0" for f in flows)
    finally:
        agent.close()


def test_bad_metrics_configuration_exits_2_naming_the_field(netns):
    res = run_agent(netns, {"enablePodLevel": True, "metricsConfiguration": {
        "contextOptions": [{"metricName": "forward_count", "sourceLabels": ["ip"]}],
        "namespaces": {"include": ["a"], "exclude": ["b"]}}})
    assert res.returncode == 2
    line = error_line(res)
    assert "metricsConfiguration.namespaces" in line and "include" in line and "exclude" in line


def test_unknown_metric_name_exits_2(netns):
    res = run_agent(netns, {"metricsConfiguration": {"contextOptions": [{"metricName": "forward_packets"}]}})
    assert res.returncode == 2
    assert "metricsConfiguration.contextOptions[0].metricName: unknown metric 'forward_packets'" in error_line(res)


def test_new_pod_veth_is_attached_from_netlink_events(netns):
    """A veth created after the agent started is attached at once (netlink), not at the next reconcile (10 s)."""
    pod = f"{netns}-late"
    agent = AgentProcess(netns, {})
    try:
        agent.start()
        subprocess.run(["ip", "netns", "add", pod], check=True)
        for c in (["ip", "-n", netns, "link", "add", "vlate0", "type", "veth", "peer", "name", "eth0", "netns", pod],
                  ["ip", "-n", netns, "addr", "add", "10.78.0.1/24", "dev", "vlate0"],
                  ["ip", "-n", netns, "link", "set", "vlate0", "up"],
                  ["ip", "-n", pod, "addr", "add", "10.78.0.2/24", "dev", "eth0"],
                  ["ip", "-n", pod, "link", "set", "eth0", "up"]):
            subprocess.run(c, check=True)
        created = time.monotonic()
        attached = False
        while time.monotonic() - created < 4:
            _, body = agent.get("/debug/plugins")
            if "vlate0" in json.loads(body).get("packetparser", {}).get("attached", {}):
                attached = True
                break
            time.sleep(0.05)
        assert attached, agent.log()
    finally:
        agent.close()
        subprocess.run(["ip", "netns", "del", pod], check=False)
