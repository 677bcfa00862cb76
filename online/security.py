"""ZeroMQ CURVE security for every daemon socket that leaves the machine.

A key folder made by `generate_keys` (``l1forge online keys --out DIR``) holds::

    server.key, server.key_secret     the daemon's key pair (server sockets)
    client.key, client.key_secret     a key pair for clients (CLI, remote workers, taps)
    authorized_clients/*.key          public keys allowed to connect (copy more in to add clients)

Server sockets get `secure_server(socket, keys)`: CURVE on, and one ZAP authenticator per
context that admits only the keys in ``authorized_clients``; refusals are logged as warnings on
the ``l1forge.online.auth`` logger. Client sockets get `secure_client(socket, keys)`. Binding a
non-loopback address without keys is refused (`check_bind`).
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from l1forge.errors import ConfigError

log = logging.getLogger(__name__)
AUTH_LOGGER = "l1forge.online.auth"
AUTHORIZED = "authorized_clients"
# Host names that stay on this machine (Debian's /etc/hosts names 127.0.0.1 and ::1 so).
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name, an address, or ``[v6]``) stays on this machine: a loopback
    name (any case) or an address in 127.0.0.0/8 or ::1."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class SecurityError(ConfigError):
    """Keys are missing or unreadable, or a socket would be exposed without encryption."""


@dataclass(frozen=True)
class CurveKeys:
    """The key pairs and the authorized-clients folder of one key folder (z85 bytes)."""

    folder: Path
    server_public: bytes
    server_secret: bytes | None  # None on a client-only machine
    client_public: bytes | None
    client_secret: bytes | None
    authorized_dir: Path


def generate_keys(out_dir: str | Path) -> CurveKeys:
    """Create a server and a client key pair in a new folder; the client is authorized."""
    out = Path(out_dir)
    if (out / "server.key").exists():
        raise SecurityError(f"{out} already holds CURVE keys; choose an empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        (out / AUTHORIZED).mkdir(exist_ok=True)
        zmq.auth.create_certificates(out, "server")
        public, _ = zmq.auth.create_certificates(out, "client")
        shutil.copy(public, out / AUTHORIZED / "client.key")
    except OSError as exc:
        raise SecurityError(f"cannot write CURVE keys to {out}: {exc.strerror}") from exc
    log.info("CURVE keys written to %s (authorized clients in %s)", out, out / AUTHORIZED)
    return load_keys(out)


def load_keys(folder: str | Path | CurveKeys) -> CurveKeys:
    """Read a key folder made by `generate_keys` (secret files may be absent on clients)."""
    if isinstance(folder, CurveKeys):
        return folder
    root = Path(folder)

    def pair(name: str, required: bool) -> tuple[bytes | None, bytes | None]:
        secret_file, public_file = root / f"{name}.key_secret", root / f"{name}.key"
        try:
            if secret_file.is_file():
                return zmq.auth.load_certificate(secret_file)
            if public_file.is_file():
                return zmq.auth.load_certificate(public_file)[0], None
        except (OSError, ValueError) as exc:
            raise SecurityError(f"cannot read CURVE key {public_file}: {exc}") from exc
        if required:
            raise SecurityError(
                f"{public_file} not found: make a key folder with `l1forge online keys --out DIR`"
            )
        return None, None

    server_public, server_secret = pair("server", True)
    client_public, client_secret = pair("client", False)
    assert server_public is not None
    return CurveKeys(
        root, server_public, server_secret, client_public, client_secret, root / AUTHORIZED
    )


class _AuthLog(logging.LoggerAdapter):
    """pyzmq's authenticator logs refusals at debug level; raise them to warnings and count."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger(AUTH_LOGGER), {})
        self.refused = 0

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        text = str(msg) % args if args else str(msg)
        if text.startswith("DENIED"):
            self.refused += 1
            self.logger.warning("refused connection: %s", text, **kwargs)
        else:
            self.logger.debug(msg, *args, **kwargs)


_auth_lock = threading.Lock()
# One ZAP handler per context (ZeroMQ allows one); weak keys so a closed context is forgotten.
_authenticators: weakref.WeakKeyDictionary[zmq.Context, ThreadAuthenticator] = (
    weakref.WeakKeyDictionary()
)


def authenticator(context: zmq.Context, keys: CurveKeys) -> ThreadAuthenticator:
    """The context's running authenticator admitting the folder's authorized client keys."""
    with _auth_lock:
        auth = _authenticators.get(context)
        if auth is None:
            if not keys.authorized_dir.is_dir():
                raise SecurityError(f"{keys.authorized_dir} not found: no client is authorized")
            auth = ThreadAuthenticator(context, log=_AuthLog())
            auth.start()
            auth.configure_curve(domain="*", location=str(keys.authorized_dir))
            _authenticators[context] = auth
        return auth


def refused_count(context: zmq.Context) -> int:
    """How many connections the context's authenticator has refused so far."""
    auth = _authenticators.get(context)
    return 0 if auth is None else auth.log.refused


def stop_authenticator(context: zmq.Context) -> None:
    """Stop the context's authenticator (call before closing the context)."""
    with _auth_lock:
        auth = _authenticators.pop(context, None)
    if auth is not None:
        auth.stop()


def secure_server(socket: zmq.Socket, keys: str | Path | CurveKeys) -> CurveKeys:
    """Make `socket` a CURVE server admitting only authorized clients; call before bind."""
    k = load_keys(keys)
    if k.server_secret is None:
        raise SecurityError(f"{k.folder}/server.key_secret not found: this is a client key folder")
    authenticator(socket.context, k)
    socket.curve_secretkey = k.server_secret
    socket.curve_publickey = k.server_public
    socket.curve_server = True
    return k


def secure_client(socket: zmq.Socket, keys: str | Path | CurveKeys) -> CurveKeys:
    """Give `socket` the client key pair and the server's public key; call before connect."""
    k = load_keys(keys)
    if k.client_secret is None or k.client_public is None:
        raise SecurityError(f"{k.folder}/client.key_secret not found: no client key pair")
    socket.curve_secretkey = k.client_secret
    socket.curve_publickey = k.client_public
    socket.curve_serverkey = k.server_public
    return k


HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def watch_handshakes(socket: zmq.Socket) -> zmq.Socket:
    """A monitor socket reporting failed handshakes of `socket` (read with `log_refusals`).

    Clients without keys fail the CURVE handshake before the authenticator sees them; this is
    how such refusals reach the auth log too.
    """
    return socket.get_monitor_socket(HANDSHAKE_FAILURES)


def log_refusals(monitor: zmq.Socket, what: str) -> int:
    """Log (as warnings on the auth logger) the failed handshakes queued on `monitor`."""
    from zmq.utils.monitor import recv_monitor_message

    auth_log = logging.getLogger(AUTH_LOGGER)
    n = 0
    while monitor.poll(0):
        event = recv_monitor_message(monitor)
        kind, value = zmq.Event(event["event"]), int(event["value"])
        if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            try:
                detail = zmq.Event(value).name  # PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH, ...
            except ValueError:
                detail = f"protocol error {value}"
        else:
            detail = f"code {value}"  # 400: key not authorized (see the DENIED line)
        auth_log.warning("refused connection on %s: %s (%s)", what, kind.name, detail)
        n += 1
    return n


def endpoint_host(endpoint: str) -> str | None:
    """The host of a ``tcp://host:port`` endpoint (None for ipc:// and inproc://)."""
    parts = urlsplit(endpoint)
    if parts.scheme != "tcp":
        return None
    host = parts.netloc.rsplit(":", 1)[0]
    return host.strip("[]")


def check_bind(endpoint: str, keys: str | Path | CurveKeys | None) -> None:
    """Refuse to bind a non-loopback TCP endpoint without CURVE keys."""
    host = endpoint_host(endpoint)
    if keys is None and host is not None and not is_loopback(host):
        raise SecurityError(
            f"refusing to bind {endpoint} without CURVE keys: a non-loopback address needs "
            "network.curve_keys (make them with `l1forge online keys --out DIR`)"
        )


def bind_server(socket: zmq.Socket, endpoint: str, keys: str | Path | CurveKeys | None) -> str:
    """Secure (when keys are given) and bind `socket`; returns the bound endpoint.

    A port of 0 (``tcp://127.0.0.1:0``) binds a free port.
    """
    check_bind(endpoint, keys)
    if keys is not None:
        secure_server(socket, keys)
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        port = socket.bind_to_random_port(endpoint[: -len(":0")])
        return f"{endpoint[: -len(':0')]}:{port}"
    socket.bind(endpoint)
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


def connect_client(socket: zmq.Socket, endpoint: str, keys: str | Path | CurveKeys | None) -> None:
    """Secure (when keys are given) and connect `socket`."""
    if keys is not None:
        secure_client(socket, keys)
    socket.connect(endpoint)
