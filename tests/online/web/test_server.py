"""The daemon's HTTP endpoint: Prometheus text, JSON status and DQM, static page, loopback rule,
and its bounds (connection cap, read timeout, half-open connections)."""

from __future__ import annotations

import http.client
import json
import math
import re
import socket
import threading
import time
from importlib import resources

import numpy as np
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from l1forge.errors import ConfigError
from l1forge.online.security import is_loopback
from l1forge.online.web import server as server_module
from l1forge.online.web.metrics import AccessCollector
from l1forge.online.web.server import RemoteBindError, WebServer

TIMEOUT_S = 10


def _get(server: WebServer, path: str, *, method: str = "GET", headers: dict | None = None):
    """(status, headers, body bytes) of one request to the server."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT_S)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.fixture
def registry() -> CollectorRegistry:
    """A registry with the three kinds of metric the daemon uses, a few values filled in."""
    reg = CollectorRegistry()
    events = Counter("l1forge_events_processed", "events through the backends", registry=reg)
    rejected = Counter("l1forge_rejected_messages", "rejected", ["reason"], registry=reg)
    depth = Gauge("l1forge_queue_depth", "batches waiting", ["queue"], registry=reg)
    latency = Histogram(
        "l1forge_batch_latency_seconds",
        "backend latency",
        registry=reg,
        buckets=(1e-4, 1e-3, 1e-2, 0.1, 1.0),
    )
    events.inc(4096 * 3)
    rejected.labels(reason="checksum").inc(2)
    depth.labels(queue="dispatcher").set(5)
    for s in (5e-4, 2e-3, 2e-3, 0.05):
        latency.observe(s)
    return reg


class _Status:
    """A status source whose values change at every call, like a running pipeline's."""

    def __init__(self):
        self.calls = 0

    def __call__(self) -> dict:
        self.calls += 1
        return {
            "state": "running",
            "run": np.uint64(17),
            "events_processed": np.int64(1000 * self.calls),
            "seeds": {"AD_Nominal": {"count": self.calls, "rate_hz": np.float64(1000.5)}},
            "rejected": {"checksum": 2},
            "efficiency": math.nan,
            "latency": np.array([1.5, 2.5]),
        }


@pytest.fixture
def server(registry):
    status = _Status()
    dqm = {"lumisection": 3, "histograms": {}, "alarms": [], "seed_rates": {3: {"AD": 1e-3}}}
    with WebServer(registry=registry, status=status, dqm_view=lambda: dqm) as w:
        yield w


def test_metrics_is_prometheus_text(server):
    status, headers, body = _get(server, "/metrics")
    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE_LATEST
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert {
        "l1forge_events_processed",
        "l1forge_rejected_messages",
        "l1forge_queue_depth",
        "l1forge_batch_latency_seconds",
    } <= set(families)
    (total,) = [
        s for s in families["l1forge_events_processed"].samples if s.name.endswith("_total")
    ]
    assert total.value == 4096 * 3
    (rej,) = [s for s in families["l1forge_rejected_messages"].samples if s.name.endswith("_total")]
    assert rej.labels == {"reason": "checksum"} and rej.value == 2
    buckets = {
        s.labels["le"]: s.value
        for s in families["l1forge_batch_latency_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert buckets["0.001"] == 1 and buckets["0.01"] == 3 and buckets["+Inf"] == 4


def test_status_is_strict_json_and_live(server):
    s1, headers, body1 = _get(server, "/status")
    s2, _, body2 = _get(server, "/api/status")
    assert s1 == s2 == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    a = json.loads(body1)
    b = json.loads(body2)
    assert a["run"] == 17 and a["state"] == "running"
    assert a["seeds"]["AD_Nominal"]["rate_hz"] == 1000.5
    assert a["efficiency"] is None  # NaN is not JSON: it travels as null
    assert a["latency"] == [1.5, 2.5]
    assert b["events_processed"] > a["events_processed"]  # asked again, not cached


def test_dqm_view_and_its_absence(registry, server):
    status, _, body = _get(server, "/api/dqm")
    assert status == 200
    assert json.loads(body)["seed_rates"] == {"3": {"AD": 1e-3}}
    with WebServer(registry=registry, status=dict) as no_dqm:
        status, headers, body = _get(no_dqm, "/api/dqm")
    assert status == 404
    assert headers["Content-Type"] == "application/json"
    assert "no DQM" in json.loads(body)["error"]


def test_unknown_paths_and_methods(server):
    for path in ("/nope", "/../pyproject.toml", "/webserver.py", "/api/../webserver.py"):
        status, _, body = _get(server, path)
        assert status == 404, path
        assert "/metrics" in json.loads(body)["paths"]
    status, headers, _ = _get(server, "/status", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, _, body = _get(server, "/metrics", method="HEAD")
    assert status == 200 and body == b""


def test_dashboard_page_and_static_files(server):
    status, headers, body = _get(server, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    html = body.decode()
    for name, ctype in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        assert name in html
        status, headers, _ = _get(server, "/" + name)
        assert status == 200 and headers["Content-Type"].startswith(ctype)
    # Nothing may come from outside the machine: no absolute URL in what the page loads.
    pkg = resources.files("l1forge.online.web")
    for name in ("dashboard.html", "dashboard.js", "dashboard.css"):
        text = pkg.joinpath(name).read_text()
        assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?(https?:)?//""", text), name
        assert "import(" not in text and "@import" not in text


def test_loopback_by_default(registry):
    with WebServer(registry=registry, status=dict) as w:
        assert w.host == "127.0.0.1" and w.port > 0
        assert w.url == f"http://127.0.0.1:{w.port}/"
        assert w._server.server_address[0] == "127.0.0.1"
        assert _get(w, "/status")[0] == 200
        # A page elsewhere reaching us by DNS rebinding carries its own Host name: refused.
        status, _, body = _get(w, "/status", headers={"Host": f"evil.example:{w.port}"})
        assert status == 403 and "loopback" in json.loads(body)["error"]
        assert _get(w, "/status", headers={"Host": f"localhost:{w.port}"})[0] == 200
        port = w.port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S).close()


@pytest.mark.parametrize("host", ["0.0.0.0", "", "192.0.2.10", "example.org", "::"])
def test_remote_host_needs_allow_remote(registry, host):
    assert not is_loopback(host)
    with pytest.raises(RemoteBindError, match="allow_remote=True"):
        WebServer(host, 0, registry=registry, status=dict)


def test_remote_bind_when_allowed(registry):
    with WebServer("0.0.0.0", 0, registry=registry, status=dict, allow_remote=True) as w:
        conn = http.client.HTTPConnection("127.0.0.1", w.port, timeout=TIMEOUT_S)
        conn.request("GET", "/status", headers={"Host": f"daq-node.example:{w.port}"})
        assert conn.getresponse().status == 200
        conn.close()


def test_failing_status_is_a_500_and_the_server_keeps_going(registry):
    calls = []

    def status() -> dict:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("workers")
        return {"state": "running"}

    with WebServer(registry=registry, status=status) as w:
        code, _, body = _get(w, "/status")
        assert code == 500 and "KeyError" in json.loads(body)["error"]
        code, _, body = _get(w, "/status")
        assert code == 200 and json.loads(body) == {"state": "running"}


def test_port_in_use_is_a_clear_error(registry):
    with WebServer(registry=registry, status=dict) as w:
        clash = WebServer(port=w.port, registry=registry, status=dict)
        with pytest.raises(ConfigError, match="metrics_port"):
            clash.start()


def test_metrics_of_the_daemon_registry():
    """Every metric the pipeline exports (rates, queues, latency, rejections, drops) is served."""
    from l1forge.online.web.metrics import make_metrics

    m = make_metrics()
    m.events_processed.inc(4096)
    m.rejected_messages.labels(reason="checksum").inc()
    m.dropped_events.labels(reason="storage").inc(0)
    m.queue_depth.set(3)
    m.batch_latency_s.observe(2e-3)
    m.run_state.state("running")
    with WebServer(registry=m.registry, status=dict) as w:
        status, _, body = _get(w, "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    expected = {f.name for f in m.registry.collect()}  # every registered metric
    assert expected <= set(families), expected - set(families)
    assert {
        "l1forge_events_processed",
        "l1forge_queue_depth_batches",
        "l1forge_batch_latency_seconds",
        "l1forge_rejected_messages",
        "l1forge_dropped_events",
        "l1forge_run_state",
    } <= set(families)
    (state,) = [s for s in families["l1forge_run_state"].samples if s.value == 1]
    assert state.labels["l1forge_run_state"] == "running"


def _wait(predicate, what: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _closed_by_server(sock: socket.socket) -> bool:
    """True when the server has closed its end (EOF or reset), False while it is still open."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_500_half_open_connections_hold_no_thread_and_metrics_is_answered(registry):
    # a long read timeout: every half-open connection is still held while /metrics is asked
    with WebServer(registry=registry, status=dict, read_timeout_s=120) as w:
        threads = threading.active_count()
        clients = []
        try:
            for _ in range(500):
                c = socket.create_connection(("127.0.0.1", w.port), timeout=TIMEOUT_S)
                c.sendall(b"GET /metr")  # half a request line, never finished
                clients.append(c)
            _wait(lambda: w.stats()["pending"] == 500, "the server to hold all 500")
            assert threading.active_count() == threads  # waiting connections hold no thread
            status, _, body = _get(w, "/metrics")
            assert status == 200 and b"l1forge_events_processed_total" in body
            stats = w.stats()
            assert stats["pending"] == 500 and stats["timed_out"] == stats["evicted"] == 0
            assert stats["over_cap"] == 0
            _wait(lambda: w.stats()["served"] == 1, "the serving thread to count its request")
        finally:
            for c in clients:
                c.close()
        _wait(lambda: w.stats()["pending"] == 0, "the server to see the clients go")
        _wait(lambda: w.stats()["active"] == 0, "the serving threads to end")
        _wait(lambda: threading.active_count() == threads, "threads to be released")
        assert _get(w, "/status")[0] == 200


def test_a_request_not_sent_within_the_read_timeout_is_closed_and_counted(registry):
    with WebServer(registry=registry, status=dict, read_timeout_s=0.3) as w:
        idle = socket.create_connection(("127.0.0.1", w.port), timeout=TIMEOUT_S)
        idle.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never end
        trickle = socket.create_connection(("127.0.0.1", w.port), timeout=TIMEOUT_S)
        try:
            # a byte at a time keeps no connection past its deadline either
            for byte in b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000:
                if _closed_by_server(trickle):
                    break
                try:
                    trickle.send(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    break
                time.sleep(0.01)
            else:
                pytest.fail("the trickling client was never cut off")
            _wait(lambda: _closed_by_server(idle), "the idle connection to be closed")
            assert w.stats()["timed_out"] == 2  # counted before they are closed
        finally:
            idle.close()
            trickle.close()
        assert _get(w, "/status")[0] == 200


def test_requests_over_the_cap_get_503_and_are_counted(registry):
    release = threading.Event()
    entered = threading.Event()

    def slow_status() -> dict:
        entered.set()
        assert release.wait(TIMEOUT_S)
        return {"state": "running"}

    with WebServer(registry=registry, status=slow_status, max_connections=1) as w:
        first: list = []
        t = threading.Thread(target=lambda: first.append(_get(w, "/status")))
        t.start()
        try:
            assert entered.wait(TIMEOUT_S)  # the one serving slot is taken
            status, headers, body = _get(w, "/metrics")
            assert status == 503 and headers["Retry-After"] == "1" and body == b"busy\n"
            assert w.stats()["over_cap"] == 1 and w.stats()["active"] == 1
        finally:
            release.set()
            t.join(TIMEOUT_S)
        assert first[0][0] == 200
        _wait(lambda: w.stats()["active"] == 0, "the slot to be free")
        registry.register(AccessCollector(lambda: {"unauthorized": 3}, w.stats))
        status, _, body = _get(w, "/metrics")
        assert status == 200
        text = body.decode()
        assert 'l1forge_web_connections_total{outcome="over_cap"} 1.0' in text
        assert 'l1forge_web_connections_total{outcome="served"}' in text
        assert 'l1forge_control_requests_total{outcome="unauthorized"} 3.0' in text


def test_a_flood_of_waiting_connections_closes_the_oldest(registry):
    with WebServer(registry=registry, status=dict, max_connections=1, read_timeout_s=120) as w:
        cap = server_module.PENDING_PER_SLOT  # waiting connections per serving slot
        clients = [socket.create_connection(("127.0.0.1", w.port), timeout=TIMEOUT_S)]
        try:
            clients[0].sendall(b"GET /")
            _wait(lambda: w.stats()["pending"] == 1, "the first to be held")
            for _ in range(cap):
                clients.append(socket.create_connection(("127.0.0.1", w.port), timeout=TIMEOUT_S))
                clients[-1].sendall(b"GET /")
            _wait(lambda: w.stats()["evicted"] == 1, "the oldest to be closed")
            _wait(lambda: _closed_by_server(clients[0]), "the oldest connection to close")
            assert not any(_closed_by_server(c) for c in clients[1:])
            assert w.stats()["pending"] == cap
            assert _get(w, "/status")[0] == 200  # a real client still gets in
        finally:
            for c in clients:
                c.close()


def test_bad_limits_are_config_errors(registry):
    with pytest.raises(ConfigError, match=r"network\.web_max_connections"):
        WebServer(registry=registry, status=dict, max_connections=0)
    with pytest.raises(ConfigError, match=r"network\.web_timeout_s"):
        WebServer(registry=registry, status=dict, read_timeout_s=0)
