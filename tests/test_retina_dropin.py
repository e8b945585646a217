"""Retina drop-in (issue 16): what a Retina DaemonSet hands its agent works unchanged.

* Every key of Retina's ``Config`` struct (pkg/config/config.go) and of the ``config.yaml`` its Helm chart renders
  loads; the keys we do not use give exactly one warning each.
* ``NODE_NAME`` / ``NODE_IP`` (the DaemonSet's fieldRefs) are read; ``RETINA_NODENAME`` / ``nodeName`` win.
* ``logLevel`` accepts Retina's ``panic`` and ``fatal`` (CRITICAL) and sets only our loggers: at ``debug`` the
  third-party libraries (pyroute2 …) stay at WARNING unless ``RETINA_LOG_LIBRARIES`` asks otherwise, so an idle
  agent at Retina's default ``logLevel: debug`` logs (almost) nothing.

The agent runs in a network namespace made for the test, never in the machine's own.
"""

from __future__ import annotations

import collections
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from retina_exporter.config import RETINA_IGNORED_KEYS, Config, ConfigError, load_config
from retina_exporter.lab.agent_process import http_get

ROOT = Path(__file__).resolve().parents[1]

#: The yaml tags of Retina's ``Config`` struct (pkg/config/config.go at 532c5aa), ``apiServer`` as its two leaves.
RETINA_CONFIG_KEYS = (
    "apiServer.host", "apiServer.port", "logLevel", "enabledPlugin", "metricsInterval", "metricsIntervalDuration",
    "enableTelemetry", "enableRetinaEndpoint", "enablePodLevel", "enableConntrackMetrics", "remoteContext",
    "enableAnnotations", "bypassLookupIPOfInterest", "dataAggregationLevel", "monitorSockPath", "telemetryInterval",
    "dataSamplingRate", "conntrackReportInterval", "packetParserRingBuffer", "packetParserRingBufferSize",
    "filterMapMaxEntries", "enableTCX",
)
#: The Retina keys this agent accepts but does not use.
RETINA_UNUSED = {"enableTelemetry", "telemetryInterval", "packetParserRingBuffer", "enableRetinaEndpoint",
                 "monitorSockPath"}

#: Every key of the struct at Retina's defaults: what the standard chart renders into the ``retina-config``
#: ConfigMap with its default values (``enableTCX`` renders empty: values.yaml has none), plus the two struct fields
#: that chart does not render: ``enableRetinaEndpoint`` (viper default true) and ``monitorSockPath`` (hubble chart).
RETINA_DEFAULT_CONFIG = """\
apiServer:
  host: 0.0.0.0
  port: 10093
logLevel: debug
enabledPlugin: ["dropreason","packetforward","linuxutil","dns"]
metricsInterval: 10s
metricsIntervalDuration: 10s
enableTCX: 
enableTelemetry: false
enablePodLevel: false
enableConntrackMetrics: false
conntrackReportInterval: 30s
remoteContext: false
enableAnnotations: false
bypassLookupIPOfInterest: false
dataAggregationLevel: low
telemetryInterval: 15m
dataSamplingRate: 1
packetParserRingBuffer: disabled
packetParserRingBufferSize: 8388608
filterMapMaxEntries: 255
enableRetinaEndpoint: true
monitorSockPath: /var/run/cilium/monitor1_2.sock
"""

NODE_ENV = {"NODE_NAME": "aks-nodepool1-0", "NODE_IP": "10.99.0.2"}

#: Bytes per second an idle agent at ``logLevel: debug`` may log (after start-up). Measured on the 2-core test VM
#: with RETINA_DEFAULT_CONFIG, 10 s windows: 1345 B/s before issue 16 (pyroute2's netlink dumps), 0 B/s after.
IDLE_DEBUG_LOG_BOUND = 100

_WARNING = re.compile(r"WARNING retina_exporter\.config: config key '(\w+)' in \S+ is a Retina setting that "
                      r"retina-exporter does not use; ignored")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    os.chmod(path, 0o644)
    return str(path)


def _clean_env(**extra: str) -> dict[str, str]:
    """os.environ without any variable that the agent's config or logging reads, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETINA_") and k not in ("NODE_NAME", "NODE_IP")}
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------------- config keys


def test_test_key_list_is_the_config_text() -> None:
    top = {line.split(":")[0] for line in RETINA_DEFAULT_CONFIG.splitlines() if not line.startswith(" ")}
    assert top == {k.split(".")[0] for k in RETINA_CONFIG_KEYS}


def test_every_retina_key_is_used_or_ignored() -> None:
    ours = set()
    for name, value in Config(node_name="n").to_dict().items():
        ours.update(f"{name}.{leaf}" for leaf in value) if isinstance(value, dict) else ours.add(name)
    ours.add("metricsInterval")  # Retina's deprecated form, read when metricsIntervalDuration is unset
    assert set(RETINA_IGNORED_KEYS) == RETINA_UNUSED
    assert {k for k in RETINA_CONFIG_KEYS if k not in ours} == RETINA_UNUSED


def test_retina_default_config_loads_with_one_warning_per_unused_key(tmp_path: Path) -> None:
    path = write(tmp_path, RETINA_DEFAULT_CONFIG)
    cfg = load_config(path, dict(NODE_ENV))
    order = [line.split(":")[0] for line in RETINA_DEFAULT_CONFIG.splitlines() if line.split(":")[0] in RETINA_UNUSED]
    assert cfg.warnings == tuple(
        f"config key {k!r} in {path} is a Retina setting that retina-exporter does not use; ignored" for k in order
    )
    assert sorted(order) == sorted(RETINA_UNUSED)
    assert cfg == Config(
        enabled_plugins=("dropreason", "packetforward", "linuxutil", "dns"),
        conntrack_report_interval_ns=30 * 10**9,
        ring_buffer_size=8388608,
        enable_tcx="auto",
        node_name="aks-nodepool1-0",
        node_ip="10.99.0.2",
        log_level="debug",
        metrics_interval_ns=10 * 10**9,
        filter_map_max_entries=255,
        warnings=cfg.warnings,
    )


@pytest.mark.parametrize("key", ["enableRetinaEndpoint", "monitorSockPath"])
def test_new_ignored_keys_from_env_warn(key: str) -> None:
    var = "RETINA_" + key.upper()
    assert load_config(None, {var: "x"}).warnings == (
        f"environment variable {var} sets Retina key {key!r}, which retina-exporter does not use; ignored",
    )


# ----------------------------------------------------------------------------------------------- node identity


@pytest.mark.parametrize(
    ("file", "env", "expected"),
    [
        ("", {"NODE_NAME": "dn"}, "dn"),
        ("nodeName: fn\n", {"NODE_NAME": "dn"}, "fn"),
        ("nodeName:\n", {"NODE_NAME": "dn"}, "dn"),  # null means unset
        ("nodeName: fn\n", {"NODE_NAME": "dn", "RETINA_NODENAME": "rn"}, "rn"),
        ("", {"NODE_NAME": "dn", "RETINA_NODENAME": "rn"}, "rn"),
        ("", {"NODE_NAME": "  dn \n"}, "dn"),
        ("", {"NODE_NAME": " "}, socket.gethostname()),  # empty counts as unset
        ("", {}, socket.gethostname()),
    ],
)
def test_node_name_order(tmp_path: Path, file: str, env: dict[str, str], expected: str) -> None:
    assert load_config(write(tmp_path, file), env).node_name == expected


@pytest.mark.parametrize(
    ("file", "env", "expected"),
    [
        ("", {}, ""),
        ("", {"NODE_IP": "10.1.2.3"}, "10.1.2.3"),
        ("", {"NODE_IP": "fd00::0:1"}, "fd00::1"),
        ("nodeIP: 10.0.0.1\n", {"NODE_IP": "10.1.2.3"}, "10.0.0.1"),
        ("nodeIP: 10.0.0.1\n", {"NODE_IP": "10.1.2.3", "RETINA_NODEIP": "10.9.9.9"}, "10.9.9.9"),
        ("nodeIP: ''\n", {"NODE_IP": "10.1.2.3"}, ""),  # the file says "none": NODE_IP does not apply
    ],
)
def test_node_ip_order(tmp_path: Path, file: str, env: dict[str, str], expected: str) -> None:
    assert load_config(write(tmp_path, file), env).node_ip == expected


def test_bad_node_ip_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"NODE_IP": "10.1.2"})
    assert str(info.value) == ("nodeIP: invalid value '10.1.2' from environment variable NODE_IP: not an IP address; "
                               "accepted: an IPv4 or IPv6 address, or empty")


# -------------------------------------------------------------------------------------------------- log levels


@pytest.mark.parametrize(
    ("text", "expected"),
    [("panic", "critical"), ("fatal", "critical"), ("PANIC", "critical"), ("Fatal", "critical"),
     ("critical", "critical"), ("warn", "warning"), ("debug", "debug"), ("error", "error")],
)
def test_retina_log_levels(tmp_path: Path, text: str, expected: str) -> None:
    assert load_config(write(tmp_path, f"logLevel: {text}\n"), {}).log_level == expected
    assert load_config(None, {"RETINA_LOGLEVEL": text}).log_level == expected


_LOGGING_PROBE = """
import logging, os, sys
from retina_exporter.cli import setup_logging
setup_logging(sys.argv[1], os.environ)
for name in ("pyroute2.netlink.core", "kubernetes.client", "asyncio", "retina_exporter.agent", "retina_core.ring",
             "enricher.kubernetes", "metrics_module.otlp"):
    log = logging.getLogger(name)
    for level in ("debug", "info", "warning", "error", "critical"):
        getattr(log, level)("probe")
"""


def _logged(log_level: str, **env: str) -> set[tuple[str, str]]:
    """(logger, LEVEL) pairs a fresh interpreter prints after setup_logging(log_level, environment)."""
    res = subprocess.run([sys.executable, "-c", _LOGGING_PROBE, log_level], cwd=ROOT, capture_output=True, text=True,
                         env=_clean_env(**env), timeout=60)
    assert res.returncode == 0, res.stderr
    return {(m[1], m[0]) for m in re.findall(r" (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): probe$", res.stderr, re.M)}


OURS = ("retina_exporter.agent", "retina_core.ring", "enricher.kubernetes", "metrics_module.otlp")
LIBS = ("pyroute2.netlink.core", "kubernetes.client", "asyncio")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _expect(ours_from: str, libs_from: str) -> set[tuple[str, str]]:
    return ({(n, lv) for n in OURS for lv in LEVELS[LEVELS.index(ours_from):]}
            | {(n, lv) for n in LIBS for lv in LEVELS[LEVELS.index(libs_from):]})


def test_log_level_sets_our_loggers_only() -> None:
    assert _logged("debug") == _expect("DEBUG", "WARNING")
    assert _logged("info") == _expect("INFO", "WARNING")
    assert _logged("error") == _expect("ERROR", "ERROR")  # libraries are never louder than logLevel by default
    assert _logged("critical") == _expect("CRITICAL", "CRITICAL")  # Retina's panic / fatal


def test_retina_log_libraries_sets_third_party_loggers() -> None:
    assert _logged("debug", RETINA_LOG_LIBRARIES="debug") == _expect("DEBUG", "DEBUG")
    assert _logged("info", RETINA_LOG_LIBRARIES="Error") == _expect("INFO", "ERROR")
    assert _logged("error", RETINA_LOG_LIBRARIES="info") == _expect("ERROR", "INFO")
    assert _logged("info", RETINA_LOG_LIBRARIES=" ") == _expect("INFO", "WARNING")


# ----------------------------------------------------------------------------------------------- the real agent


@pytest.fixture
def node_netns():
    """A namespace with a default route through eth0 (a veth whose peer stays inside), so Retina's default
    plugins (packetforward takes the default route's interface) all start and /readyz turns 200."""
    name = f"rxdrop-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["link", "set", "lo", "up"],
                    ["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"],
                    ["addr", "add", f"{NODE_ENV['NODE_IP']}/24", "dev", "eth0"],
                    ["link", "set", "eth0", "up"], ["link", "set", "eth0p", "up"],
                    ["route", "add", "default", "via", "10.99.0.1"]):
            subprocess.run(["ip", "-n", name] + cmd, check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _run_agent(netns: str, config_path: str, env: dict[str, str], log) -> subprocess.Popen:
    argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "retina_exporter.cli", "agent", "--config",
            config_path]
    return subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def test_bad_retina_log_libraries_exits_2(node_netns: str, tmp_path: Path) -> None:
    path = write(tmp_path, "logLevel: debug\n")
    with open(tmp_path / "agent.log", "wb") as log:
        proc = _run_agent(node_netns, path, _clean_env(RETINA_LOG_LIBRARIES="loud"), log)
        assert proc.wait(60) == 2
    assert (tmp_path / "agent.log").read_text() == (
        "retina-exporter: error: RETINA_LOG_LIBRARIES: invalid value 'loud' from the environment; accepted: debug, "
        "info, warning (or warn), error, critical (or panic, fatal)\n")


def test_agent_with_retina_daemonset_config_and_env(node_netns: str, tmp_path: Path) -> None:
    path = write(tmp_path, RETINA_DEFAULT_CONFIG)
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log:
        proc = _run_agent(node_netns, path, _clean_env(**NODE_ENV), log)
        try:
            def get(url_path: str) -> tuple[int, bytes]:
                return http_get(node_netns, f"http://127.0.0.1:10093{url_path}", timeout=2)

            deadline = time.monotonic() + 120
            status = None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    status, _ = get("/readyz")
                except OSError:
                    status = None
                if status == 200:
                    break
                time.sleep(0.2)
            assert status == 200, log_path.read_text()

            status, body = get("/debug/config")
            assert status == 200
            effective = json.loads(body)
            assert (effective["nodeName"], effective["nodeIP"], effective["logLevel"]) == (
                "aks-nodepool1-0", "10.99.0.2", "debug")

            # An idle agent at Retina's default logLevel: debug: measure what it logs in a 10 s window.
            before = log_path.stat().st_size
            time.sleep(10)
            logged = log_path.stat().st_size - before
            assert logged / 10 <= IDLE_DEBUG_LOG_BOUND, log_path.read_text()[before:]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = None
    text = log_path.read_text()
    assert rc == 0, text
    assert collections.Counter(_WARNING.findall(text)) == {k: 1 for k in RETINA_UNUSED}
    assert len([line for line in text.splitlines() if " WARNING retina_exporter.config: " in line]) == 5
    assert " DEBUG retina_core.httpserver: " in text  # our loggers are at debug …
    assert "pyroute2" not in text  # … the libraries are not
    assert "Traceback" not in text
