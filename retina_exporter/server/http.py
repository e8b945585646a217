"""The agent's HTTP server on ``apiServer.host:apiServer.port`` (default 0.0.0.0:10093), and the ``/debug/*`` one
on ``debugServer.host:debugServer.port`` when that port is set.

``/metrics`` (Prometheus text), ``/healthz`` (event readers alive), ``/readyz`` (plugins started; 503 with the
reasons otherwise), ``/debug/config`` (effective config), ``/debug/flows?last=N`` (newest flows in the output
ring as protobuf JSON, field names as in flow.proto), ``/debug/plugins``, ``/debug/ipcache?ip=A`` ...

Query parameters: ``/metrics``, ``/healthz`` and ``/readyz`` ignore them (a Prometheus scrape config's ``params``
or a probe's query must not turn a scrape into an error, as with Prometheus' own exporters); every ``/debug/*``
endpoint accepts only its own (:func:`check_params`): an unknown or repeated one is a 400 naming it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from retina_core.addr import ip_text
from retina_core.httpserver import Limits, RouteServer, json_response, text_response
from retina_exporter.errors import StartupError

__all__ = ["AgentHTTPServer", "check_params", "json_response", "parse_ip", "parse_last", "parse_since",
           "text_response"]

DEFAULT_DEBUG_FLOWS = 100


class AgentHTTPServer(RouteServer):
    """The agent's route table (:class:`retina_core.httpserver.RouteServer`); a port that cannot be bound is a
    :class:`~retina_exporter.errors.StartupError` naming the keys to change."""

    def __init__(self, host: str, port: int, *, section: str = "apiServer", limits: Limits | None = None) -> None:
        try:
            super().__init__(host, port, thread_name="http" if section == "apiServer" else "http-debug",
                             limits=limits)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise StartupError(
                f"{section}: cannot listen on {host}:{port}: {reason}; change {section}.host/{section}.port"
            ) from exc


def check_params(query: dict, path: str, allowed: Iterable[str] = (), repeatable: Iterable[str] = ()) -> None:
    """A 400 (``ValueError``) naming the first parameter of ``query`` that ``path`` does not take, or one of
    ``allowed`` given more than once (unless it is ``repeatable``)."""
    allowed = tuple(allowed)
    repeatable = tuple(repeatable)
    for name, values in query.items():
        if name not in allowed and name not in repeatable:
            takes = ", ".join(allowed + repeatable) if allowed or repeatable else "none"
            raise ValueError(f"{name}: unknown query parameter of {path} (it takes: {takes})")
        if len(values) > 1 and name not in repeatable:
            raise ValueError(f"{name}: given {len(values)} times; give it once")


def parse_ip(query: dict, name: str = "ip") -> str | None:
    """``?ip=A``: an IPv4 or IPv6 address in its canonical text; None when absent."""
    raw = query.get(name, [""])[0]
    if not raw:
        return None
    try:
        return ip_text(ipaddress.ip_address(raw.strip()).packed)  # as the IP cache writes it (inet_ntop)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected an IPv4 or IPv6 address, e.g. 10.0.0.7 or fd00::7") from None


def parse_last(query: dict, maximum: int, default: int = DEFAULT_DEBUG_FLOWS) -> int:
    """``?last=N``: a whole number from 1 to ``maximum`` (the ring's capacity), given at most once."""
    if len(query.get("last", ())) > 1:
        raise ValueError(f"last: given {len(query['last'])} times; give it once")
    raw = query.get("last", [str(default)])[0]
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= maximum:
        raise ValueError(f"last={raw!r}: expected a whole number from 1 to {maximum} (outputRingCapacity)")
    return n


def parse_since(query: dict) -> int:
    """``?since=T``: Unix time in seconds (may have a fraction) -> nanoseconds; 0 when absent. Given at most once."""
    if len(query.get("since", ())) > 1:
        raise ValueError(f"since: given {len(query['since'])} times; give it once")
    raw = query.get("since", [""])[0]
    if not raw:
        return 0
    try:
        return int(float(raw) * 1e9)
    except (ValueError, OverflowError):  # not a number, nan, inf
        raise ValueError(f"since={raw!r}: expected Unix time in seconds, e.g. 1767225600.5") from None
