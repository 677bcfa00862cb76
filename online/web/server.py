"""The daemon's HTTP endpoint: Prometheus metrics, JSON status, DQM data and the dashboard page.

Routes: ``/metrics`` (Prometheus text format), ``/status`` and ``/api/status`` (the run's status
as JSON), ``/api/dqm`` (the latest DQM view, 404 when the run has no DQM), ``/`` (the dashboard)
and its static files. Read-only: nothing here changes the run. Loopback only unless the caller
asks for a remote bind explicitly; the page loads nothing from outside (its Content-Security-Policy
forbids it), since trigger machines have no internet access.

Bounded: one loop thread accepts connections and gathers each request's head without a thread of
its own; only a complete head is handed to a serving thread, at most ``max_connections`` at once
(more are answered 503 and closed). A connection has ``read_timeout_s`` to send its whole
request, and at most ``PENDING_PER_SLOT * max_connections`` may be waiting for theirs (a new one
closes the oldest), so idle or half-sent connections hold no thread and cannot lock clients out.
"""

from __future__ import annotations

import io
import json
import logging
import math
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from l1forge.errors import ConfigError, L1ForgeError
from l1forge.online.security import is_loopback

log = logging.getLogger(__name__)

# Files of this package the server hands out, by URL path: nothing else is reachable.
STATIC_FILES = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard.html": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


DEFAULT_MAX_CONNECTIONS = 64  # requests served at once (network.web_max_connections)
DEFAULT_READ_TIMEOUT_S = 5.0  # to send a whole request (network.web_timeout_s)
PENDING_PER_SLOT = 8  # connections still sending their request, per serving slot
MAX_HEAD_BYTES = 128 * 1024  # gathered before a thread takes over (it answers 414/431 then)
LOOP_WAKE_S = 0.5
BUSY_REPLY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n\r\nbusy\n"
)


class RemoteBindError(ConfigError):
    """A non-loopback address was asked for without ``allow_remote=True``."""


def to_jsonable(obj: Any) -> Any:
    """``obj`` with numpy values made plain and non-finite floats made None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@dataclass
class _Pending:
    """A connection still sending its request head."""

    address: Any
    deadline: float  # time.monotonic() by which the whole request must have arrived
    head: bytearray


def _head_complete(head: bytearray) -> bool:
    """An empty line ends the head (http.server accepts CRLF or LF line ends)."""
    return b"\n\r\n" in head or b"\n\n" in head


class _HeadThenSocket(io.RawIOBase):
    """What the loop thread read, then the socket; no read waits past the request's deadline."""

    def __init__(self, head: bytes, sock: socket.socket, deadline: float, timed_out: Callable):
        self._head = memoryview(head)
        self._pos = 0
        self._sock = sock
        self._deadline = deadline
        self._timed_out = timed_out

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._pos < len(self._head):
            n = min(len(buffer), len(self._head) - self._pos)
            buffer[:n] = self._head[self._pos : self._pos + n]
            self._pos += n
            return n
        left = self._deadline - time.monotonic()
        if left <= 0:
            self._timed_out()
            raise TimeoutError("the request did not arrive within the read timeout")
        self._sock.settimeout(left)
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            self._timed_out()
            raise


class _Server(HTTPServer):
    """Binds like HTTPServer; `serve` is the accept-and-gather loop (see the module docstring)."""

    request_queue_size = 128

    def __init__(self, address: tuple[str, int], web: WebServer):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.web = web
        self.max_pending = PENDING_PER_SLOT * web.max_connections
        self._slots = threading.BoundedSemaphore(web.max_connections)
        self._lock = threading.Lock()
        self._pending: dict[socket.socket, _Pending] = {}  # oldest first
        self._active = 0
        self._counts = {"served": 0, "over_cap": 0, "evicted": 0, "timed_out": 0}
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()  # before binding: a failed bind closes
        super().__init__(address, _Handler)
        self.socket.setblocking(False)

    # ---- counters (any thread) ----

    def count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def stats(self) -> dict[str, int]:
        """Connections being served and waiting, and those refused, closed or timed out."""
        with self._lock:
            return {
                "max_connections": self.web.max_connections,
                "active": self._active,
                "pending": len(self._pending),
                **self._counts,
            }

    # ---- the loop thread ----

    def serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.socket, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                for key, _ in sel.select(self._wait_s()):
                    if key.fileobj is self.socket:
                        self._accept(sel)
                    elif key.fileobj is self._wake_r:
                        self._wake_r.recv(64)
                    else:
                        self._read(sel, key.fileobj)  # type: ignore[arg-type]
                self._expire(sel)
        finally:
            for conn in list(self._pending):
                self._drop(sel, conn)
            sel.close()

    def _wait_s(self) -> float:
        oldest = next(iter(self._pending.values()), None)
        if oldest is None:
            return LOOP_WAKE_S
        return min(LOOP_WAKE_S, max(0.0, oldest.deadline - time.monotonic()))

    def _accept(self, sel: selectors.BaseSelector) -> None:
        while True:
            try:
                conn, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: keep serving the others
                log.warning("web endpoint: accept failed: %s", exc)
                return
            conn.setblocking(False)
            if len(self._pending) >= self.max_pending:
                self.count("evicted")
                self._drop(sel, next(iter(self._pending)))
            deadline = time.monotonic() + self.web.read_timeout_s
            self._pending[conn] = _Pending(address, deadline, bytearray())
            sel.register(conn, selectors.EVENT_READ)

    def _read(self, sel: selectors.BaseSelector, conn: socket.socket) -> None:
        p = self._pending.get(conn)
        if p is None:
            return
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client gave up
            self._drop(sel, conn)
            return
        p.head += data
        if _head_complete(p.head) or len(p.head) >= MAX_HEAD_BYTES:
            sel.unregister(conn)
            del self._pending[conn]
            self._dispatch(conn, p)

    def _expire(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for conn, p in list(self._pending.items()):
            if p.deadline > now:
                break  # oldest first, and every deadline is accept time + read_timeout_s
            self.count("timed_out")
            self._drop(sel, conn)

    def _drop(self, sel: selectors.BaseSelector, conn: socket.socket) -> None:
        sel.unregister(conn)
        del self._pending[conn]
        conn.close()

    def _dispatch(self, conn: socket.socket, p: _Pending) -> None:
        if not self._slots.acquire(blocking=False):
            self.count("over_cap")
            try:
                conn.send(BUSY_REPLY)
            except OSError:
                pass  # it is being closed anyway
            conn.close()
            return
        with self._lock:
            self._active += 1
        threading.Thread(
            target=self._serve_one, args=(conn, p), name="l1f-web-request", daemon=True
        ).start()

    def _serve_one(self, conn: socket.socket, p: _Pending) -> None:
        try:
            conn.setblocking(True)
            _Handler(conn, p.address, self, head=bytes(p.head), deadline=p.deadline)
            self.count("served")
        except OSError as exc:  # the client went away mid-answer
            log.debug("web endpoint: %s: %s", p.address, exc)
        finally:
            self.shutdown_request(conn)
            with self._lock:
                self._active -= 1
            self._slots.release()

    def stop(self) -> None:
        """End the loop (from another thread); connections being served finish on their own."""
        self._stopping.set()
        self._wake_w.send(b"x")

    def server_close(self) -> None:
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "l1forge"
    sys_version = ""

    def __init__(
        self,
        request: Any,
        client_address: Any,
        server: _Server,
        *,
        head: bytes = b"",
        deadline: float = math.inf,
    ):
        self._head, self._deadline = head, deadline
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        super().setup()
        raw = _HeadThenSocket(
            self._head, self.connection, self._deadline, lambda: self.server.count("timed_out")
        )
        plain, self.rfile = self.rfile, io.BufferedReader(raw)
        plain.close()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        # reads were bounded by the request's deadline; writing the answer gets a timeout too
        self.connection.settimeout(self.server.web.read_timeout_s)
        return ok

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, obj: Any) -> None:
        body = json.dumps(to_jsonable(obj), allow_nan=False, separators=(",", ":")).encode()
        self._send(status, body, "application/json")

    def _call(self, name: str, fn: Callable[[], dict]) -> None:
        """Answer with ``fn()`` as JSON; a failing callback is a logged 500, not a dead server."""
        try:
            data = fn()
        except L1ForgeError as exc:
            log.error("%s failed: %s", name, exc)
            self._send_json(500, {"error": f"{type(exc).__name__}: {exc}"})
            return
        except Exception as exc:  # a bug in the callback: keep serving, log the traceback
            log.exception("%s raised", name)
            self._send_json(500, {"error": f"{type(exc).__name__}: {exc}"})
            return
        self._send_json(200, data)

    def _host_allowed(self) -> bool:
        """On a loopback bind, refuse requests whose Host header names another machine.

        This stops a web page elsewhere from reading the endpoint by DNS rebinding.
        """
        web = self.server.web
        if not is_loopback(web.host):
            return True
        host = self.headers.get("Host", "")
        name = urlsplit(f"//{host}").hostname or ""
        return is_loopback(name)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        web = self.server.web
        path = urlsplit(self.path).path
        if not self._host_allowed():
            self._send_json(403, {"error": "Host header is not a loopback name"})
            return
        if path == "/metrics":
            self._send(200, generate_latest(web.registry), CONTENT_TYPE_LATEST)
        elif path in ("/status", "/api/status"):
            self._call("status", web.status)
        elif path == "/api/dqm":
            if web.dqm_view is None:
                self._send_json(404, {"error": "this run has no DQM (monitor.dqm_enabled is off)"})
            else:
                self._call("dqm_view", web.dqm_view)
        elif path in STATIC_FILES:
            name, content_type = STATIC_FILES[path]
            body = resources.files("l1forge.online.web").joinpath(name).read_bytes()
            self._send(200, body, content_type)
        else:
            self._send_json(404, {"error": f"no such path: {path}", "paths": web.routes()})

    def _refuse(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse


class WebServer:
    """Serves the metrics, status and dashboard of one daemon on a background thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        registry: CollectorRegistry,
        status: Callable[[], dict],
        dqm_view: Callable[[], dict] | None = None,
        allow_remote: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ):
        if not is_loopback(host) and not allow_remote:
            raise RemoteBindError(
                f"network.host {host!r} is not a loopback address: the web endpoint is "
                "unauthenticated, so bind it to 127.0.0.1 (and reach it through an SSH tunnel) "
                "or pass allow_remote=True on purpose"
            )
        if not 0 <= int(port) <= 65535:
            raise ConfigError(f"network.metrics_port {port}: expected 0..65535 (0 = any free port)")
        if isinstance(max_connections, bool) or not 1 <= int(max_connections) <= 4096:
            raise ConfigError(
                f"network.web_max_connections {max_connections}: expected 1..4096 requests served "
                "at once"
            )
        if not 0 < float(read_timeout_s) <= 600:
            raise ConfigError(
                f"network.web_timeout_s {read_timeout_s}: expected a number of seconds in (0, 600]"
            )
        self.max_connections = int(max_connections)
        self.read_timeout_s = float(read_timeout_s)
        self.host = host
        self.registry = registry
        self.status = status
        self.dqm_view = dqm_view
        self._requested_port = int(port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def routes() -> list[str]:
        """The paths this server answers."""
        return ["/metrics", "/status", "/api/status", "/api/dqm", *STATIC_FILES]

    def start(self) -> WebServer:
        """Bind and serve on a daemon thread; returns self (``.port`` is then the real port)."""
        if self._server is not None:
            raise L1ForgeError("web server already started")
        try:
            self._server = _Server((self.host, self._requested_port), self)
        except OSError as exc:
            raise ConfigError(
                f"cannot bind the web endpoint to {self.host}:{self._requested_port} ({exc}); "
                "pick another network.metrics_port or 0 for any free port"
            ) from exc
        self._thread = threading.Thread(target=self._server.serve, name="webserver", daemon=True)
        self._thread.start()
        log.info("web endpoint on %s (metrics at %smetrics)", self.url, self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is None:
            return
        self._server.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server.server_close()
        self._server = None
        self._thread = None

    def stats(self) -> dict[str, int]:
        """Connection counts: ``active`` (being answered), ``pending`` (still sending their
        request), ``served``, ``over_cap`` (answered 503), ``evicted`` (oldest waiting ones
        closed for a newer one), ``timed_out`` (no whole request within ``read_timeout_s``)."""
        if self._server is None:
            return {"max_connections": self.max_connections, "active": 0, "pending": 0}
        return self._server.stats()

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the requested one until started)."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port/`` of the dashboard."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"
