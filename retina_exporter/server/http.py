"""The agent's HTTP server on ``apiServer.host:apiServer.port`` (default 0.0.0.0:10093).

``/metrics`` (Prometheus text), ``/healthz`` (event readers alive), ``/readyz`` (plugins started; 503 with the
reasons otherwise), ``/debug/config`` (effective config), ``/debug/flows?last=N`` (newest flows in the output
ring as protobuf JSON, field names as in flow.proto), ``/debug/plugins``.
"""

from __future__ import annotations

from retina_core.httpserver import RouteServer, json_response, text_response
from retina_exporter.errors import StartupError

__all__ = ["AgentHTTPServer", "json_response", "parse_last", "parse_since", "text_response"]

DEFAULT_DEBUG_FLOWS = 100


class AgentHTTPServer(RouteServer):
    """The agent's route table (:class:`retina_core.httpserver.RouteServer`); a port that cannot be bound is a
    :class:`~retina_exporter.errors.StartupError` naming the keys to change."""

    def __init__(self, host: str, port: int) -> None:
        try:
            super().__init__(host, port, thread_name="http")
        except OSError as exc:
            raise StartupError(
                f"apiServer: cannot listen on {host}:{port}: {exc.strerror}; change apiServer.host/apiServer.port"
            ) from exc


def parse_last(query: dict, maximum: int, default: int = DEFAULT_DEBUG_FLOWS) -> int:
    """``?last=N``: a whole number from 1 to ``maximum`` (the ring's capacity)."""
    raw = query.get("last", [str(default)])[0]
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= maximum:
        raise ValueError(f"last={raw!r}: expected a whole number from 1 to {maximum} (outputRingCapacity)")
    return n


def parse_since(query: dict) -> int:
    """``?since=T``: Unix time in seconds (may have a fraction) -> nanoseconds; 0 when absent."""
    raw = query.get("since", [""])[0]
    if not raw:
        return 0
    try:
        return int(float(raw) * 1e9)
    except ValueError:
        raise ValueError(f"since={raw!r}: expected Unix time in seconds, e.g. 1767225600.5") from None
