"""``retina-operator`` command line: one-line errors with exit status 2, and a real process that serves an agent and
sends it SHUTDOWN on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from retina_operator.cli import main
from tests.support.kube_fixtures import run_pod
from tests.support.otlp_receiver import make_tls_files
from tests.test_operator_support import B, agents, http_get, kube_server  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def kubeconfig(tmp_path: Path, server) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "c", "cluster": {"server": server.url}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}]}))
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("retina-operator: error: "), err
    return err.strip()


def test_bad_flags_exit_2_with_one_line_naming_the_flag(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    cases = [
        (["--grpc-port", "70000"], "--grpc-port: 70000 is out of range; use 0-65535"),
        (["--http-port", "web"], "--http-port: 'web' is not a port number"),
        (["--grpc-port", "9000", "--http-port", "9000"], "--http-port: 9000 is also --grpc-port"),
        (["--kubeconfig", str(tmp_path / "nope")], "--kubeconfig: "),
        (["--kubeconfig", str(pem), "--in-cluster"], "not allowed with argument"),
        (["--in-cluster"], "--in-cluster: KUBERNETES_SERVICE_HOST is not set"),
        (["--tls-cert", str(pem)], "--tls-key: required with --tls-cert"),
        (["--tls-client-ca", str(pem)], "--tls-client-ca: mutual TLS needs a server certificate"),
        (["--tls-cert", str(tmp_path / "c"), "--tls-key", str(pem)], "--tls-cert: "),
        (["--log-level", "loud"], "--log-level: invalid choice"),
        (["--agent-queue-size", "0"], "--agent-queue-size: 0 must be at least 1"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["--kubeconfig", str(pem)], "--kubeconfig: cannot load the Kubernetes configuration"),
    ]
    for argv, expected in cases:
        assert expected in one_line_error(capsys, argv), argv


def test_port_in_use_and_bad_tls_files_exit_2(capsys, tmp_path, kube_server):  # noqa: F811
    kc = kubeconfig(tmp_path, kube_server)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_line_error(capsys, ["--kubeconfig", kc, "--bind-address", "127.0.0.1", "--grpc-port", str(port),
                                       "--http-port", "0"])
        assert f"--grpc-port: cannot listen on 127.0.0.1:{port}: Address already in use" in line
        assert line.endswith("choose a free port or stop what uses it")
        line = one_line_error(capsys, ["--kubeconfig", kc, "--bind-address", "127.0.0.1", "--grpc-port", "0",
                                       "--http-port", str(port)])
        assert f"--http-port: cannot listen on 127.0.0.1:{port} for HTTP: Address already in use" in line
    line = one_line_error(capsys, ["--kubeconfig", kc, "--bind-address", "192.0.2.1", "--grpc-port", "0",
                                   "--http-port", "0"])
    assert "--bind-address: cannot listen on 192.0.2.1:0" in line and "use an address of this host" in line
    files = make_tls_files(tmp_path / "tls")
    line = one_line_error(capsys, ["--kubeconfig", kc, "--grpc-port", "0", "--http-port", "0",
                                   "--tls-cert", str(files["server_cert"]), "--tls-key", str(files["client_key"])])
    assert line.startswith("retina-operator: error: --tls-cert/--tls-key: cannot load")
    line = one_line_error(capsys, ["--kubeconfig", kc, "--grpc-port", "0", "--http-port", "0",
                                   "--tls-cert", str(files["server_cert"]), "--tls-key", str(files["server_key"]),
                                   "--tls-client-ca", str(files["server_key"])])
    assert "--tls-client-ca: cannot load" in line


def test_process_serves_and_sends_shutdown_on_sigterm(tmp_path, kube_server, agents):  # noqa: F811
    run_pod(kube_server, "p", "node-a", ["10.0.0.5"])
    grpc_port, http_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "retina_operator.cli", "--kubeconfig",
                             kubeconfig(tmp_path, kube_server), "--bind-address", "127.0.0.1", "--grpc-port",
                             str(grpc_port), "--http-port", str(http_port), "--log-level", "info"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        src, cache = agents(grpc_port)
        assert src.wait_loaded(15), src.status()
        assert cache.get(B("10.0.0.5")).pod_name == "p"
        assert http_get(http_port, "/readyz") == (200, "ready\n")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert src.status()["shutdowns"] == 1 and cache.get(B("10.0.0.5")).pod_name == "p"
    assert "SIGTERM received; sending SHUTDOWN to 1 agent(s)" in err and "operator: stopped" in err


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version(flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main([flag])
    assert exc.value.code == 0 and capsys.readouterr().out
