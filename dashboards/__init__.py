"""Grafana dashboards, Prometheus alerting rules and the metric catalog they are checked against.

``metrics_catalog.yaml``: the metric and label names the dashboards and rules may use; ``catalog.py``: loads it,
checks PromQL expressions against it and verifies it against a running agent's ``/metrics``; ``generate.py``:
writes ``*.json`` (the dashboards) and ``alerts_test.yaml`` (promtool unit tests of ``alerts.yaml``).
"""
