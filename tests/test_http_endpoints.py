"""The HTTP endpoints under slow, stalled and oversized clients (retina_core.httpserver's limits), the separate
``/debug/*`` listener (``debugServer``) and the query-parameter checks of every endpoint.

Everything listens on 127.0.0.1 with an ephemeral port. Timing: the assertions wait on conditions with generous
bounds (a busy 2-core machine); "the normal scrape is not delayed" is asserted as "it completes while the stalled
client is still connected and unanswered", with the stalled client's timeout far longer than any bound used."""

from __future__ import annotations

import http.client
import socket
import threading
import time

import pytest

from retina_core.httpserver import Limits, RouteServer, text_response
from retina_exporter.agent import Agent
from retina_exporter.config import ApiServerConfig, Config, ConfigError, DebugServerConfig, load_config
from retina_exporter.errors import StartupError

BOUND_S = 20.0  # generous upper bound for anything that should take milliseconds


def wait_until(pred, timeout: float = BOUND_S, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def get(port: int, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, str, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=BOUND_S)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), dict(resp.getheaders())
    finally:
        conn.close()


def raw(port: int, data: bytes) -> bytes:
    """Sends ``data`` and reads until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND_S) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def still_open(sock: socket.socket) -> bool:
    """True when the server has neither answered nor closed ``sock``."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


METRICS_BODY = "# TYPE up gauge\nup 1\n"
BIG = 32 << 20  # far more than the loopback socket buffers hold


@pytest.fixture
def make_server():
    servers: list[RouteServer] = []

    def make(**limits) -> RouteServer:
        srv = RouteServer("127.0.0.1", 0, thread_name="test-http", limits=Limits(**limits))
        srv.route("/metrics", lambda q, h: text_response(METRICS_BODY))
        big = b"x" * BIG
        srv.route("/big", lambda q, h: (200, "text/plain", big))
        pieces = [bytes([65 + i % 26]) * (BIG // 64) for i in range(64)]  # the same size, as 64 pieces
        srv.route("/pieces", lambda q, h: (200, "text/plain", pieces))

        def bad(q, h):
            raise ValueError(f"n={q.get('n', [''])[0]!r}: expected a number")

        srv.route("/bad", bad)
        srv.route("/boom", lambda q, h: 1 / 0)
        srv.start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


# ------------------------------------------------------------------------------------------ stalled clients

STALLS = {
    "silent": b"",  # connects and sends nothing
    "half request line": b"GET /metr",
    "headers unfinished": b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
}


@pytest.mark.parametrize("stall", list(STALLS), ids=list(STALLS))
def test_stalled_request_does_not_delay_a_scrape(make_server, stall):
    srv = make_server(read_timeout_s=600)  # the stalled client stays stalled for the whole test
    with socket.create_connection(("127.0.0.1", srv.port)) as stalled:
        stalled.sendall(STALLS[stall])
        wait_until(lambda: len(srv.server.active) == 1, what="the stalled connection to be accepted")
        for _ in range(3):
            assert get(srv.port, "/metrics")[:2] == (200, METRICS_BODY)
        assert still_open(stalled)
        assert srv.stats["read_timeouts"] == 0


def test_client_not_reading_a_large_reply_does_not_delay_a_scrape(make_server):
    srv = make_server(write_timeout_s=600)
    with socket.socket() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", srv.port))
        stalled.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
        wait_until(lambda: len(srv.server.active) == 1, what="the stalled connection to be accepted")
        for _ in range(3):
            assert get(srv.port, "/metrics")[:2] == (200, METRICS_BODY)
        assert srv.stats["write_timeouts"] == 0  # the big reply is still blocked
        # The scrapes' connections leave `active` once their server threads see the clients close them (after `get`
        # returned): wait for that, then only the stalled one is left.
        wait_until(lambda: len(srv.server.active) == 1, what="only the stalled connection left")


@pytest.mark.parametrize("path", ["/big", "/pieces"])
def test_client_not_reading_is_disconnected_after_write_timeout(make_server, path):
    """Also for a body written piece by piece: the timeout is for the whole reply, not for each piece."""
    srv = make_server(write_timeout_s=0.5)
    with socket.socket() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", srv.port))
        stalled.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        wait_until(lambda: srv.stats["write_timeouts"] == 1, what="the write timeout")
        wait_until(lambda: not srv.server.active, what="the connection to be closed")
        stalled.settimeout(BOUND_S)
        got = 0
        try:
            while chunk := stalled.recv(1 << 20):
                got += len(chunk)
        except ConnectionResetError:
            pass
        assert got < BIG  # cut off, not delivered
    assert get(srv.port, "/metrics")[0] == 200


def test_body_in_pieces_arrives_whole(make_server):
    srv = make_server()
    want = b"".join(bytes([65 + i % 26]) * (BIG // 64) for i in range(64))
    status, body, headers = get(srv.port, "/pieces")
    assert status == 200 and body == want.decode() and int(headers["Content-Length"]) == len(want)
    status, body, headers = get(srv.port, "/pieces", method="HEAD")
    assert status == 200 and body == "" and int(headers["Content-Length"]) == len(want)


def test_trickling_client_is_disconnected_after_read_timeout(make_server):
    """A client that sends one byte every 50 ms never completes its request line: the read timeout is for the whole
    request head, so it is disconnected after read_timeout_s however it trickles."""
    srv = make_server(read_timeout_s=0.5)
    closed = threading.Event()
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        start = time.monotonic()

        def trickle():
            try:
                while not closed.is_set():
                    s.send(b"G")
                    time.sleep(0.05)
            except OSError:
                pass

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        s.settimeout(BOUND_S)
        try:
            assert s.recv(100) == b""  # closed without an answer
        except ConnectionResetError:
            pass
        elapsed = time.monotonic() - start
        closed.set()
        t.join(BOUND_S)
    assert 0.5 <= elapsed < BOUND_S
    assert srv.stats["read_timeouts"] == 1


def test_idle_connection_is_disconnected_after_read_timeout(make_server):
    srv = make_server(read_timeout_s=0.3)
    assert raw(srv.port, b"") == b""
    wait_until(lambda: srv.stats["read_timeouts"] == 1, what="the read timeout to be counted")


# ------------------------------------------------------------------------------------------------- limits


def test_request_line_too_long_is_414(make_server):
    srv = make_server()
    status, body, _ = get(srv.port, "/metrics?x=" + "a" * 9000)
    assert status == 414 and "8192" in body
    assert get(srv.port, "/metrics?x=" + "a" * 8000)[0] == 200


def test_headers_too_large_are_431(make_server):
    srv = make_server()
    status, body, _ = get(srv.port, "/metrics", headers={f"X-H{i}": "v" for i in range(70)})
    assert status == 431 and "64" in body
    status, body, _ = get(srv.port, "/metrics", headers={"X-Big": "v" * 17000})
    assert status == 431 and "16384" in body
    assert get(srv.port, "/metrics", headers={f"X-H{i}": "v" for i in range(60)})[0] == 200
    assert srv.stats["too_large"] == 2


def test_request_body_is_413_and_other_methods_405(make_server):
    srv = make_server()
    reply = raw(srv.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert reply.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in reply
    reply = raw(srv.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413 ")
    reply = raw(srv.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ") and b"Content-Length" in reply
    status, _, headers = get(srv.port, "/metrics", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, body, headers = get(srv.port, "/metrics", method="HEAD")
    assert (status, body, headers["Content-Length"]) == (200, "", str(len(METRICS_BODY)))


def test_keep_alive_and_pipelining(make_server):
    srv = make_server()
    req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    reply = raw(srv.port, req + req + b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.count(b"HTTP/1.1 200 OK") == 3


def test_too_many_connections_get_503(make_server):
    srv = make_server(max_connections=2, read_timeout_s=600)
    idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(2)]
    try:
        wait_until(lambda: len(srv.server.active) == 2, what="two connections")
        reply = raw(srv.port, b"")
        assert reply == b"" or reply.startswith(b"HTTP/1.1 503 ")  # the 503 may race the close
        assert srv.stats["rejected_connections"] == 1
    finally:
        for s in idle:
            s.close()
    wait_until(lambda: not srv.server.active, what="the idle connections to go")
    assert get(srv.port, "/metrics")[0] == 200


def test_handler_errors(make_server):
    srv = make_server()
    assert get(srv.port, "/bad?n=x")[:2] == (400, "n='x': expected a number\n")
    assert get(srv.port, "/boom")[0] == 500
    status, body, _ = get(srv.port, "/nope")
    assert status == 404 and "/metrics" in body
    status, body, _ = get(srv.port, "/metrics?" + "&".join(f"a{i}=1" for i in range(150)))
    assert status == 400  # more than MAX_QUERY_FIELDS parameters
    assert get(srv.port, "/metrics")[0] == 200


def test_stop_closes_stalled_connections(make_server):
    srv = make_server(read_timeout_s=600)
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        wait_until(lambda: len(srv.server.active) == 1, what="the connection")
        srv.stop()
        s.settimeout(BOUND_S)
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass


# ------------------------------------------------------------------------------------------ the agent's routes


@pytest.fixture
def make_agent():
    agents: list[Agent] = []

    def make(debug: DebugServerConfig = DebugServerConfig(), **kw) -> Agent:
        cfg = Config(node_name="n", api_server=ApiServerConfig(host="127.0.0.1", port=0), debug_server=debug, **kw)
        agent = Agent(cfg, plugins=[])
        agent._start_http()
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent._stop_http()


DEBUG_PATHS = ("/debug/config", "/debug/flows", "/debug/plugins", "/debug/ipcache", "/debug/otlp",
               "/debug/kubernetes", "/debug/hubble")


def test_debug_on_the_api_port_by_default(make_agent):
    agent = make_agent()
    assert agent.debug_http is None
    for path in DEBUG_PATHS + ("/metrics", "/healthz"):
        assert get(agent.http.port, path)[0] in (200, 503), path


def test_debug_on_its_own_port(make_agent):
    agent = make_agent(DebugServerConfig(host="127.0.0.1", port=0))
    assert agent.debug_http is not None and agent.debug_http.port != agent.http.port
    for path in DEBUG_PATHS:
        assert get(agent.debug_http.port, path)[0] == 200, path
        status, body, _ = get(agent.http.port, path)
        assert status == 404 and "debugServer" in body, path
    assert get(agent.http.port, "/metrics")[0] == 200
    assert get(agent.debug_http.port, "/metrics")[0] == 404
    assert agent.debug_http.server.server_address[0] == "127.0.0.1"


def test_debug_switched_off(make_agent):
    agent = make_agent(DebugServerConfig(enabled=False, port=0))
    assert agent.debug_http is None
    for path in DEBUG_PATHS:
        status, body, _ = get(agent.http.port, path)
        assert status == 404 and "debugServer.enabled" in body, path
    assert get(agent.http.port, "/metrics")[0] == 200


def test_debug_port_in_use_names_the_keys():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = Config(node_name="n", api_server=ApiServerConfig(host="127.0.0.1", port=0),
                     debug_server=DebugServerConfig(host="127.0.0.1", port=port))
        with pytest.raises(StartupError) as e:
            Agent(cfg, plugins=[])
    assert str(e.value).startswith(f"debugServer: cannot listen on 127.0.0.1:{port}: ")
    assert "debugServer.host/debugServer.port" in str(e.value)


@pytest.mark.parametrize("path, param", [
    ("/debug/config?x=1", "x"),
    ("/debug/plugins?verbose=1", "verbose"),
    ("/debug/otlp?a=b", "a"),
    ("/debug/kubernetes?a=b", "a"),
    ("/debug/hubble?a=b", "a"),
    ("/debug/ipcache?ipp=10.0.0.1", "ipp"),
    ("/debug/ipcache?ip=10.0.0.300", "ip"),
    ("/debug/ipcache?ip=10.0.0.1&ip=10.0.0.2", "ip"),
    ("/debug/flows?last=0", "last"),
    ("/debug/flows?last=1&last=2", "last"),
    ("/debug/flows?since=inf", "since"),
    ("/debug/flows?since=yesterday", "since"),
    ("/debug/flows?lsat=5", "lsat"),
])
def test_debug_query_parameters_are_validated(make_agent, path, param):
    agent = make_agent()
    status, body, _ = get(agent.http.port, path)
    assert status == 400, body
    assert body.startswith(param), body


def test_ipcache_ip_filter(make_agent):
    agent = make_agent(enable_pod_level=True)
    status, body, _ = get(agent.http.port, "/debug/ipcache?ip=10.0.0.1")
    assert status == 200 and '"ips": {}' in body
    assert get(agent.http.port, "/debug/ipcache?ip=fd00::1")[0] == 200


def test_metrics_and_probes_ignore_query_parameters(make_agent):
    agent = make_agent()
    assert get(agent.http.port, "/metrics?module=x&target=y")[0] == 200
    assert get(agent.http.port, "/healthz?x=1")[0] in (200, 503)
    assert get(agent.http.port, "/readyz?x=1")[0] in (200, 503)


def test_stalled_client_does_not_delay_the_agents_metrics(make_agent):
    agent = make_agent()
    with socket.create_connection(("127.0.0.1", agent.http.port)) as stalled:
        stalled.sendall(b"GET /metr")
        wait_until(lambda: len(agent.http.server.active) == 1, what="the stalled connection")
        status, body, _ = get(agent.http.port, "/metrics")
        assert status == 200 and "# TYPE" in body
        assert still_open(stalled)


# ------------------------------------------------------------------------------------------------- config


def test_debug_server_config():
    assert load_config(None, {}).debug_server == DebugServerConfig(enabled=True, host="127.0.0.1", port=None)
    cfg = load_config(None, {"RETINA_DEBUGSERVER_PORT": "10094"})
    assert cfg.debug_server.port == 10094
    with pytest.raises(ConfigError) as e:
        load_config(None, {"RETINA_DEBUGSERVER_PORT": "0"})
    assert str(e.value).startswith("debugServer.port: invalid value '0' ")
    with pytest.raises(ConfigError) as e:
        load_config(None, {"RETINA_DEBUGSERVER_ENABLED": "maybe"})
    assert str(e.value).startswith("debugServer.enabled: ")
