"""The real Prometheus server for end-to-end tests: scrapes given targets every second and answers PromQL.

    with PrometheusServer(["127.0.0.1:18093"], labels={"cluster": "lab"}) as prom:
        prom.wait_for_targets()
        prom.query('sum(rate(networkobservability_forward_count[1m]))')   # -> [{"metric": {...}, "value": [t, "v"]}]

* Listens on 127.0.0.1 on a free port, stores its TSDB in a temporary directory; :meth:`stop` (also on
  ``__exit__`` and when start-up fails) terminates it and removes the directory.
* One scrape job (default name ``retina-exporter``, as docs/dashboards.md and dashboards/alerts.yaml expect) with
  the targets as a static config; ``labels`` are added to every target (e.g. ``cluster``, which the dashboards'
  ``cluster`` variable reads).
* ``strip_total`` (default off; the agent keeps Retina's names in OpenMetrics too): a ``metric_relabel_configs`` rule that renames ``*_total`` samples of our families
  back to Retina's names. Prometheus prefers OpenMetrics when it scrapes, and in OpenMetrics a counter's samples
  are ``<family>_total``; the dashboards use Retina's names (docs/dashboards.md, "Scrape config").
* ``rule_files``: alerting/recording rule files to load (e.g. dashboards/alerts.yaml), evaluated every second.

Needs the ``prometheus`` binary (Debian package ``prometheus``; :func:`find_binary`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterable

import yaml

#: Renames counters' OpenMetrics sample names (<family>_total) back to the family name, for our prefixes only.
STRIP_TOTAL_RELABEL = {
    "source_labels": ["__name__"],
    "regex": "((?:controlplane_)?networkobservability_.+)_total",
    "target_label": "__name__",
    "replacement": "$1",
}


class PrometheusError(RuntimeError):
    pass


def find_binary() -> str | None:
    for candidate in (os.environ.get("PROMETHEUS_BIN"), shutil.which("prometheus"), "/usr/bin/prometheus"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class PrometheusServer:
    def __init__(
        self,
        targets: Iterable[str],
        *,
        job: str = "retina-exporter",
        labels: dict[str, str] | None = None,
        scrape_interval: str = "1s",
        rule_files: Iterable[str | os.PathLike] = (),
        strip_total: bool = False,
        binary: str | None = None,
    ) -> None:
        self.targets = [str(t) for t in targets]
        self.job = job
        self.labels = dict(labels or {})
        self.scrape_interval = scrape_interval
        self.rule_files = [str(Path(p).resolve()) for p in rule_files]
        self.strip_total = strip_total
        self.binary = binary or find_binary()
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self._log = None

    # --- lifecycle --------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict:
        job: dict[str, Any] = {
            "job_name": self.job,
            "scrape_interval": self.scrape_interval,
            "scrape_timeout": self.scrape_interval,
            "static_configs": [{"targets": self.targets, **({"labels": self.labels} if self.labels else {})}],
        }
        if self.strip_total:
            job["metric_relabel_configs"] = [STRIP_TOTAL_RELABEL]
        cfg: dict[str, Any] = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [job],
        }
        if self.rule_files:
            cfg["rule_files"] = self.rule_files
        return cfg

    def start(self, timeout: float = 30.0) -> "PrometheusServer":
        if self.binary is None:
            raise PrometheusError("prometheus binary not found (apt-get install prometheus, or set PROMETHEUS_BIN)")
        self.workdir = Path(tempfile.mkdtemp(prefix="retina-prometheus-"))
        cfg_path = self.workdir / "prometheus.yml"
        cfg_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self._log = open(self.workdir / "prometheus.log", "w+")
        try:
            for _attempt in range(3):  # the free port can be taken between free_port() and Prometheus' bind
                self.port = free_port()
                self.proc = subprocess.Popen(
                    [self.binary, f"--config.file={cfg_path}", f"--storage.tsdb.path={self.workdir / 'data'}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d",
                     "--log.level=warn"],
                    stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir)
                if self._wait_ready(timeout):
                    return self
                if "address already in use" not in self.log():
                    break
                self._terminate()
            raise PrometheusError(f"prometheus did not become ready within {timeout}s:\n{self.log()[-4000:]}")
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        return False

    def _terminate(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    def stop(self) -> None:
        self._terminate()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> "PrometheusServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- HTTP API ---------------------------------------------------------------------------------------------

    def api(self, path: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """GET ``/api/v1/<path>``; returns ``data``. Raises :class:`PrometheusError` with Prometheus' error text."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read())
            except ValueError:
                raise PrometheusError(f"{path}: HTTP {exc.code}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str, time_s: float | None = None) -> list[dict]:
        """An instant query: the result list (vector/matrix: ``[{"metric": {...}, "value": [t, "v"]}, ...]``;
        a scalar or string result as a one-element list ``[{"metric": {}, "value": [t, "v"]}]``)."""
        params: dict[str, Any] = {"query": expr}
        if time_s is not None:
            params["time"] = f"{time_s:.3f}"
        data = self.api("query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        return self.api("query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                        "step": f"{step:g}"})["result"]

    def targets_status(self) -> list[dict]:
        return self.api("targets", {"state": "active"})["activeTargets"]

    def rules(self) -> list[dict]:
        return self.api("rules")["groups"]

    def alerts(self) -> list[dict]:
        return self.api("alerts")["alerts"]

    def wait_for_targets(self, timeout: float = 30.0, scrapes: int = 2) -> None:
        """Until every target is up and has been scraped at least ``scrapes`` times."""
        deadline = time.monotonic() + timeout
        want = len(self.targets)
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.query(f'count_over_time(up{{job="{self.job}"}}[5m]) >= {scrapes} '
                                  f'and up{{job="{self.job}"}} == 1')
                if len(last) == want:
                    return
            except PrometheusError as exc:
                last = exc
            time.sleep(0.5)
        raise PrometheusError(f"targets not scraped {scrapes}x within {timeout}s: {last}; "
                              f"targets: {self.targets_status()}")
