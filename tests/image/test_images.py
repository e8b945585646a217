"""The images from `make image`, run here with podman the way a node runs them.

* Agent: `--cap-drop ALL --cap-add BPF,PERFMON,NET_ADMIN`, seccomp unconfined (the default profile allows bpf(2)
  and perf_event_open(2) only with CAP_SYS_ADMIN: docs/deploy.md), a read-only root filesystem with a tmpfs on
  /lib/modules (as the chart's emptyDir) so the entrypoint links the image's kernel headers, the host's
  /sys/kernel/tracing read-only (as the chart's hostPath: packetparser's RTT reads tcp:tcp_probe), inside a lab's node
  namespace (`--net=ns:/run/netns/NAME`). packetforward's counts equal the uplink's counters and packetparser's
  flows equal the pod veths' counters, exactly; /metrics and /readyz answer; SIGTERM stops it with exit status 0
  and nothing left attached to the lab's interfaces.
* Operator: non-root, no capabilities, read-only root, against the test API server; an agent's IP cache gets the
  pod, and SIGTERM sends SHUTDOWN to it.

Every container is `--rm` and removed in `finally`; every namespace is the lab's (removed by it). The images are
`make image`'s, not built here, so none is removed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from retina_core.version import __version__
from retina_exporter.datapath import syscall as bpfsys
from retina_exporter.datapath.sysfs import TRACEFS, ensure_tracefs
from retina_exporter.lab import traffic
from retina_exporter.lab.agent_process import http_get
from retina_exporter.lab.topology import Lab
from tests.support.kube_fixtures import run_pod
from tests.test_operator_support import B, agents, http_get as operator_get, kube_server  # noqa: F401
from tests.test_packetforward_lab import attachments, check_exact, plugin_debug, wait_quiet
from tests.test_packetparser_lab import counter_deltas, host_counters, sums

ROOT = Path(__file__).resolve().parents[2]
AGENT_IMAGE = os.environ.get("RETINA_AGENT_IMAGE", f"localhost/retina-exporter:{__version__}")
OPERATOR_IMAGE = os.environ.get("RETINA_OPERATOR_IMAGE", f"localhost/retina-operator:{__version__}")
AGENT_CAPS = ["--cap-drop", "ALL", "--cap-add", "BPF,PERFMON,NET_ADMIN", "--security-opt", "seccomp=unconfined"]


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env:
        out = subprocess.run(["bash", str(ROOT / "scripts" / "image.sh"), "conf"], check=True, text=True,
                             capture_output=True).stdout
        env["CONTAINERS_CONF"] = out.strip().split("=", 1)[1]
    return env


ENV = podman_env()


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=ENV, check=check, text=True, capture_output=True, timeout=timeout)


def remove(name: str) -> None:
    podman("rm", "-f", "-t", "0", name, check=False)


class Container:
    """`podman run --rm` in the foreground (its exit status is the container's), removed in close()."""

    def __init__(self, image: str, args: list[str], run_opts: list[str]) -> None:
        self.name = f"retina-imgtest-{uuid.uuid4().hex[:8]}"
        self.log_path = Path(f"/tmp/{self.name}.log")
        self._log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(["podman", "run", "--rm", "--name", self.name, *run_opts, image, *args],
                                     env=ENV, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30) -> int:
        if self.running():
            podman("kill", "--signal", "TERM", self.name, check=False)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                remove(self.name)
                self.proc.wait(30)
        return self.proc.returncode

    def close(self) -> None:
        remove(self.name)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        self.log_path.unlink(missing_ok=True)


class ContainerAgent:
    """The agent image in a lab's node namespace; the HTTP API is reached from a thread in that namespace."""

    def __init__(self, lab: Lab, config: dict, tmp_path: Path, port: int = 10093) -> None:
        self.lab, self.port = lab, port
        self.pin = f"/sys/fs/bpf/retina-imgtest-{uuid.uuid4().hex[:8]}"
        # The chart mounts the host's tracefs (hostPath, read-only): the agent has no CAP_SYS_ADMIN to mount its own.
        assert ensure_tracefs(), f"the host has no tracefs at {TRACEFS} and it cannot be mounted"
        cfg = {"apiServer": {"host": "127.0.0.1", "port": port}, "nodeName": "lab-node", "bpfPinPath": self.pin,
               **config}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        path.chmod(0o644)
        self.c = Container(AGENT_IMAGE, ["agent", "--config", "/etc/retina/config.yaml"], [
            f"--net=ns:/run/netns/{lab.node_ns}", *AGENT_CAPS,
            "--read-only", "--tmpfs", "/lib/modules",
            "-v", f"{path}:/etc/retina/config.yaml:ro",
            "-v", "/sys/fs/bpf:/sys/fs/bpf",
            "-v", f"{TRACEFS}:{TRACEFS}:ro",
        ])

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        return http_get(self.lab.node_ns, f"http://127.0.0.1:{self.port}{path}", timeout)

    def flows(self, last: int = 65535, since: float | None = None) -> list[dict]:
        query = f"last={last}" + (f"&since={since:.6f}" if since is not None else "")
        status, body = self.get(f"/debug/flows?{query}")
        assert status == 200, body
        return json.loads(body)["flows"]

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.c.running(), f"agent container exited {self.c.proc.returncode}:\n{self.c.log()}"
            try:
                if self.get("/readyz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"agent not ready in {timeout}s:\n{self.c.log()}")

    def close(self) -> None:
        self.c.close()
        subprocess.run(["rm", "-rf", self.pin], check=False)


def test_images_exist_with_labels_and_nothing_extra():
    agent = json.loads(podman("image", "inspect", AGENT_IMAGE).stdout)[0]
    operator = json.loads(podman("image", "inspect", OPERATOR_IMAGE).stdout)[0]
    for img, title in ((agent, "retina-exporter"), (operator, "retina-operator")):
        labels = img["Config"]["Labels"]
        assert labels["org.opencontainers.image.version"] == __version__
        assert labels["org.opencontainers.image.title"] == title
        assert labels["org.opencontainers.image.source"].startswith("https://")
        assert labels["org.opencontainers.image.licenses"]
        print(f"{title}: {img['Size'] / 1e6:.0f} MB")
    assert agent["Config"]["Entrypoint"] == ["/usr/local/bin/retina-entrypoint"]
    assert operator["Config"]["Entrypoint"] == ["retina-operator"] and operator["Config"]["User"] == "65532:65532"
    # No pip cache, apt lists, docs (beyond copyright files), CA bundle from the build, nor build tools.
    out = podman("run", "--rm", "--entrypoint", "sh", AGENT_IMAGE, "-c",
                 "ls -A /var/lib/apt/lists /root/.cache /run/secrets 2>/dev/null | grep -v ':$' | grep -v '^$';"
                 "find /usr/share/doc -type f ! -name copyright | head -3;"
                 "ls /usr/share/man 2>/dev/null | head -3;"
                 "ls /opt/retina/bin | grep -E '^(pip|protoc)' ;"
                 "python3 -c 'import grpc_tools' 2>/dev/null && echo grpc_tools; true").stdout
    assert out.strip() == "", out


def test_agent_entrypoint_links_headers_and_runs_the_cli():
    r = podman("run", "--rm", "--cap-drop", "ALL", AGENT_IMAGE, "--version")
    assert r.stdout.strip() == __version__
    assert re.search(r"linked /usr/src/linux-headers-\S+-amd64 \(\+ /usr/src/linux-headers-\S+-common\) as headers "
                     r"for kernel " + re.escape(os.uname().release), r.stderr), r.stderr
    # Host headers mounted and matching: nothing is linked.
    build = Path("/lib/modules") / os.uname().release / "build"
    if (build / "include" / "generated").exists():
        r = podman("run", "--rm", "-v", "/lib/modules:/lib/modules:ro", "-v", "/usr/src:/usr/src:ro",
                   AGENT_IMAGE, "--version")
        assert r.stdout.strip() == __version__ and "linked" not in r.stderr


@pytest.fixture(scope="module")
def lab():
    with Lab(pods=2) as lab:
        yield lab


def test_agent_image_counts_exactly_and_stops_clean(lab, tmp_path):
    agent = ContainerAgent(lab, {
        "enabledPlugin": ["packetforward", "packetparser"],
        "hostInterfaces": [lab.uplink],
        "metricsInterval": 1,
        "dataAggregationLevel": "low",
        "conntrackReportInterval": "1s",
        "outputRingCapacity": 65535,
    }, tmp_path)
    try:
        c0 = wait_quiet(lab)
        agent.wait_ready()
        status, body = agent.get("/readyz")
        assert status == 200, body
        mode = "tcx" if bpfsys.kernel_has_tcx() else "clsact"
        assert plugin_debug(agent)["packetforward"]["interfaces"] == {lab.uplink: [mode, mode]}

        # packetforward: the uplink's counters, exactly (the traffic goes through the uplink to "world").
        check_exact(lab, agent, c0)

        # packetparser: pod-to-pod traffic, the host-side veths' counters, exactly.
        time.sleep(2.5)
        since = time.time()
        before = host_counters(lab)
        p0, p1 = lab.pods
        tcp = traffic.tcp_transfer(lab, p0, p1, nbytes=150_000, port=5401)
        udp = traffic.udp_burst(lab, p0, p1, count=200, payload_size=100, sport=40011, dport=9011)
        pings = traffic.ping(lab, p1, p0.ipv4, count=5)
        assert tcp.bytes_received == 150_000 and udp.received == 200 and pings.received == 5
        after = host_counters(lab)
        want = counter_deltas(lab, before, after)
        deadline = time.monotonic() + 10
        while True:
            by_point, by_tuple = sums(agent.flows(since=since), since)
            got = {k: by_point.get(k, [0, 0]) for k in want}
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert got == want, f"flows {got} != veth counters {want}"
        # Not a comparison of zeros: 200+ datagrams one way, the TCP ACKs and ping replies the other (GSO).
        assert all(v[0] >= 10 for v in want.values()) and sum(v[0] for v in want.values()) >= 400, want
        assert by_tuple[(p0.ipv4, p1.ipv4, ("UDP", 40011, 9011), "FROM_ENDPOINT")] == [200, 200 * (100 + 42)]

        status, body = agent.get("/metrics")
        assert status == 200 and b"networkobservability_forward_count" in body

        hooked = [lab.uplink] + [p.host_ifname for p in lab.pods]
        assert all(attachments(lab, i) != {"ingress": [], "egress": []} for i in hooked)
        rc = agent.c.stop()
        log = agent.c.log()
        assert rc == 0, log
        for ifname in hooked:
            assert attachments(lab, ifname) == {"ingress": [], "egress": []}, ifname
            tc = lab.run(lab.node_ns, ["tc", "filter", "show", "dev", ifname, "ingress"]).stdout
            tc += lab.run(lab.node_ns, ["tc", "filter", "show", "dev", ifname, "egress"]).stdout
            assert "bpf" not in tc, (ifname, tc)
            net = lab.run(lab.node_ns, ["bpftool", "net", "show", "dev", ifname]).stdout
            assert "retina" not in net and "rpfwd" not in net, (ifname, net)
        assert "linked /usr/src/linux-headers-" in log  # the tmpfs on /lib/modules, as the chart's emptyDir
    finally:
        agent.close()


def test_operator_image_streams_the_ip_cache(tmp_path, kube_server, agents):  # noqa: F811
    run_pod(kube_server, "p", "node-a", ["10.0.0.5"])
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "c", "cluster": {"server": kube_server.url}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}]}))
    kubeconfig.chmod(0o644)
    from tests.test_operator_cli import free_port
    grpc_port, http_port = free_port(), free_port()
    op = Container(OPERATOR_IMAGE, ["--kubeconfig", "/kubeconfig", "--bind-address", "127.0.0.1",
                                    "--grpc-port", str(grpc_port), "--http-port", str(http_port)],
                   ["--net=host", "--cap-drop", "ALL", "--read-only", "--security-opt", "no-new-privileges",
                    "-v", f"{kubeconfig}:/kubeconfig:ro"])
    try:
        src, cache = agents(grpc_port)
        assert src.wait_loaded(60), (src.status(), op.log())
        assert cache.get(B("10.0.0.5")).pod_name == "p"
        assert operator_get(http_port, "/readyz") == (200, "ready\n")
        rc = op.stop()
        log = op.log()
        assert rc == 0, log
        assert src.status()["shutdowns"] == 1 and cache.get(B("10.0.0.5")).pod_name == "p"
        assert "sending SHUTDOWN to 1 agent(s)" in log
    finally:
        op.close()
