"""The daemon's HTTP endpoint: Prometheus metrics, JSON status, DQM data and the dashboard page.

Routes: ``/metrics`` (Prometheus text format), ``/status`` and ``/api/status`` (the run's status
as JSON), ``/api/dqm`` (the latest DQM view, 404 when the run has no DQM), ``/`` (the dashboard)
and its static files. Read-only: nothing here changes the run. Loopback only unless the caller
asks for a remote bind explicitly; the page loads nothing from outside (its Content-Security-Policy
forbids it), since trigger machines have no internet access.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], web: WebServer):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.web = web
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "l1forge"
    sys_version = ""

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
    ):
        if not is_loopback(host) and not allow_remote:
            raise RemoteBindError(
                f"network.host {host!r} is not a loopback address: the web endpoint is "
                "unauthenticated, so bind it to 127.0.0.1 (and reach it through an SSH tunnel) "
                "or pass allow_remote=True on purpose"
            )
        if not 0 <= int(port) <= 65535:
            raise ConfigError(f"network.metrics_port {port}: expected 0..65535 (0 = any free port)")
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
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="webserver",
            daemon=True,
        )
        self._thread.start()
        log.info("web endpoint on %s (metrics at %smetrics)", self.url, self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

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
