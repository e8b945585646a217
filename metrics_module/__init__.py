"""Prometheus (and later OTLP) export of the agent's metrics."""
