"""Runs the real agent (``retina-exporter agent``) inside a lab's node namespace, as ``make run`` does, and talks
to its HTTP endpoints from a thread that entered that namespace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import yaml

from retina_exporter.lab.topology import in_netns

ROOT = Path(__file__).resolve().parents[2]


def http_get(ns: str, url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    def get():
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    return in_netns(ns, get)


class AgentProcess:
    def __init__(self, netns: str, config: dict, port: int = 10093, prefix: Sequence[str] = ()) -> None:
        """``prefix``: argv run between ``ip netns exec NS`` and the Python interpreter, which it must exec with
        the remaining arguments (e.g. ``capsh --drop=... -- -c 'exec "$0" "$@"'``)."""
        self.netns = netns
        self.port = port
        self.prefix = list(prefix)
        # Tests and the demo are about packetparser unless they say otherwise (the agent's default is Retina's
        # [dropreason, packetforward, linuxutil, dns]).
        config = {"apiServer": {"host": "127.0.0.1", "port": port}, "enabledPlugin": ["packetparser"], **config}
        self._cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="retina-test-", delete=False)
        yaml.safe_dump(config, self._cfg)
        self._cfg.close()
        self._log = tempfile.NamedTemporaryFile("w+", suffix=".log", prefix="retina-agent-", delete=False)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "AgentProcess":
        argv = ["ip", "netns", "exec", self.netns, *self.prefix, sys.executable, "-m", "retina_exporter.cli", "agent",
                "--config", self._cfg.name]
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, _ = self.get("/readyz", timeout=1)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"agent not ready within {timeout}s:\n{self.log()}")

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        return http_get(self.netns, f"http://127.0.0.1:{self.port}{path}", timeout)

    def flows(self, last: int = 10000, since: float | None = None) -> list[dict]:
        query = f"last={last}" + (f"&since={since:.6f}" if since is not None else "")
        status, body = self.get(f"/debug/flows?{query}")
        assert status == 200, body
        return json.loads(body)["flows"]

    def log(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def close(self) -> None:
        self.stop()
        for f in (self._cfg.name, self._log.name):
            try:
                os.unlink(f)
            except OSError:
                pass
