"""The daemon's control socket: JSON commands over ZeroMQ, and a client with timeouts.

A request is one JSON object ``{"command": NAME, "args": {...}}``; the reply is
``{"ok": true, "command": NAME, "result": ...}`` or ``{"ok": false, "error": MESSAGE,
"type": EXCEPTION_NAME}``. The server is a ROUTER socket, so a malformed message (not JSON,
unknown command, wrong argument types, several frames, oversized) gets an error reply and
never blocks or stops the daemon. Every command but ``status`` needs the daemon's control
token in the request (``"token": TOKEN``, written only to the daemon's 0600 ``endpoints.json``);
a request without it or with another one is refused, counted and logged. Commands:

    configure  {path: run YAML} | {config: mapping} | {} (keep the last);
               optional {set: {dotted.key: value}} overrides
    start, stop, status, reset, shutdown
    set_model  {name: model name, path: qnet IR}
    set_menu   {menu: Menu.to_json() mapping or its JSON text}
    swap       {name, path, menu}: a model and its menu at once (one broadcast to the workers)
    set_scaling {offset: [int], shift: [int], model: name (default the first)}: while running
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from l1forge.errors import ConfigError, DataFormatError, L1ForgeError
from l1forge.online.config import (
    RunConfig,
    apply_overrides,
    load_run_config,
    run_config_from_dict,
)
from l1forge.online.control.runcontrol import RunControl
from l1forge.online.security import (
    AUTH_LOGGER,
    CurveKeys,
    bind_server,
    connect_client,
    log_refusals,
    watch_handshakes,
)

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1 << 20
DEFAULT_ENDPOINT = "tcp://127.0.0.1:0"
ENDPOINTS_FILE = "endpoints.json"
OPEN_COMMANDS = frozenset({"status"})  # answered without the control token
REFUSAL_LOG_INTERVAL_S = 10.0  # at most one warning per interval about refused requests

# command -> {argument: (accepted types, required)}
SCHEMA: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "configure": {"path": ((str,), False), "config": ((dict,), False), "set": ((dict,), False)},
    "start": {},
    "stop": {},
    "status": {},
    "reset": {},
    "shutdown": {},
    "set_model": {"name": ((str,), True), "path": ((str,), True)},
    "set_menu": {"menu": ((dict, str), True)},
    "swap": {"name": ((str,), True), "path": ((str,), True), "menu": ((dict, str), True)},
    "set_scaling": {"offset": ((list,), True), "shift": ((list,), True), "model": ((str,), False)},
}


class RequestError(DataFormatError):
    """A control request does not follow the schema (the reply says which part)."""


class ControlError(L1ForgeError, RuntimeError):
    """The daemon answered a command with an error; the message is the daemon's."""


class ControlTimeout(ControlError):
    """No reply within the timeout: the daemon is not running, busy, or refused our keys."""


class Unauthorized(L1ForgeError, PermissionError):
    """A command other than status came without the daemon's control token, or a wrong one."""


def read_endpoints(state_dir: str | Path) -> dict[str, Any]:
    """The endpoints (and control token) a running daemon wrote; L1ForgeError when none is."""
    path = Path(state_dir) / ENDPOINTS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise L1ForgeError(
            f"{path} not found: no daemon is running with state_dir {state_dir} "
            "(start one with `l1forge online run`, or pass --control tcp://HOST:PORT)"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise L1ForgeError(f"cannot read {path}: {exc}") from exc


def parse_request(frames: list[bytes]) -> tuple[str, dict[str, Any]]:
    """Validate one request message against `SCHEMA`; RequestError says what is wrong."""
    command, args, _ = parse_request_token(frames)
    return command, args


def parse_request_token(frames: list[bytes]) -> tuple[str, dict[str, Any], str | None]:
    """`parse_request` plus the request's control token (None when it has none)."""
    if len(frames) != 1:
        raise RequestError(f"expected one frame holding a JSON object, got {len(frames)} frames")
    try:
        doc = json.loads(frames[0])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"request is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise RequestError(f"request must be a JSON object, got {type(doc).__name__}")
    unknown = set(doc) - {"command", "args", "token"}
    if unknown:
        raise RequestError(
            f"unknown request keys {sorted(unknown)} (allowed: command, args, token)"
        )
    token = doc.get("token")
    if token is not None and not isinstance(token, str):
        raise RequestError(f"token must be a string, got {type(token).__name__}")
    command = doc.get("command")
    if command not in SCHEMA:
        raise RequestError(f"unknown command {command!r} (one of {', '.join(SCHEMA)})")
    args = doc.get("args", {})
    if not isinstance(args, dict):
        raise RequestError(f"{command}: args must be an object")
    spec = SCHEMA[command]
    for name, value in args.items():
        if name not in spec:
            allowed = ", ".join(spec) or "none"
            raise RequestError(f"{command}: unknown argument {name!r} (allowed: {allowed})")
        if not isinstance(value, spec[name][0]):
            raise RequestError(f"{command}.{name}: wrong type {type(value).__name__}")
    for name, (_, required) in spec.items():
        if required and name not in args:
            raise RequestError(f"{command}: missing argument {name!r}")
    return command, args, token


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a request's token with the daemon's."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def config_from_args(args: dict[str, Any]) -> RunConfig | None:
    """The RunConfig of a configure request (None: keep the last one)."""
    overrides = args.get("set") or {}
    if "path" in args and "config" in args:
        raise RequestError("configure: give path or config, not both")
    if "path" in args:
        return load_run_config(args["path"], overrides)
    if "config" in args:
        raw = apply_overrides(args["config"], overrides)
        return run_config_from_dict(raw, Path.cwd())
    if overrides:
        raise RequestError("configure: set needs a path or a config to apply to")
    return None


@dataclass
class CommandHandler:
    """Runs validated commands on a RunControl; `shutdown_requested` is set by shutdown."""

    runcontrol: RunControl
    shutdown_requested: threading.Event = field(default_factory=threading.Event)
    status: Callable[[], dict[str, Any]] | None = None  # the daemon's richer status, if any

    def __call__(self, command: str, args: dict[str, Any]) -> Any:
        rc = self.runcontrol
        if command == "configure":
            cfg = rc.configure(config_from_args(args))
            return {"state": str(rc.state), "source": cfg.source.kind, "workers": cfg.workers.n}
        if command == "start":
            return {"run": rc.start(), "run_dir": str(rc.run_dir)}
        if command == "stop":
            return rc.stop()
        if command == "status":
            return rc.status() if self.status is None else self.status()
        if command == "reset":
            rc.reset()
            return {"state": str(rc.state)}
        if command == "set_model":
            return rc.set_model(args["name"], args["path"])
        if command == "set_menu":
            return rc.set_menu(args["menu"])
        if command == "swap":
            return rc.swap(args["name"], args["path"], args["menu"])
        if command == "set_scaling":
            return rc.set_scaling(args["offset"], args["shift"], args.get("model"))
        if command == "shutdown":
            self.shutdown_requested.set()
            return {"state": str(rc.state), "shutdown": True}
        raise RequestError(f"unknown command {command!r}")  # parse_request prevents this


def error_reply(exc: BaseException) -> dict[str, Any]:
    """The reply to a failed command."""
    return {"ok": False, "error": str(exc), "type": type(exc).__name__}


class ControlServer:
    """A ROUTER socket answering control requests; `poll` serves them on the caller's thread.

    Every command but those in `OPEN_COMMANDS` needs `token` (a fresh random one unless given);
    whoever runs the server hands it to its rightful clients (the daemon: in endpoints.json).
    """

    def __init__(
        self,
        handler: Callable[[str, dict[str, Any]], Any],
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        keys: str | Path | CurveKeys | None = None,
        context: zmq.Context | None = None,
        token: str | None = None,
    ):
        if token is not None and len(token) < 16:
            raise ConfigError("control token: at least 16 characters (use secrets.token_hex)")
        self.token = token or secrets.token_hex(32)
        self.handler = handler
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.linger = 0
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        self.endpoint = bind_server(self.socket, endpoint, keys)
        self._monitor = None if keys is None else watch_handshakes(self.socket)
        self.n_refused = 0  # failed handshakes (wrong or missing CURVE keys)
        self.n_requests = 0
        self.n_malformed = 0
        self.n_unauthorized = 0  # commands refused for a missing or wrong token
        self._refusals_unlogged = 0
        self._last_refusal_log = -float("inf")
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        log.info("control socket on %s%s", self.endpoint, " (CURVE)" if keys else "")

    def poll(self, timeout_ms: int = 100) -> int:
        """Serve the requests that arrive within `timeout_ms`; returns how many were served."""
        served = 0
        if self._monitor is not None:
            self.n_refused += log_refusals(self._monitor, f"the control socket {self.endpoint}")
        while self.socket.poll(timeout_ms if served == 0 else 0):
            frames = self.socket.recv_multipart()
            self._serve(frames)
            served += 1
        return served

    def _serve(self, frames: list[bytes]) -> None:
        # ROUTER framing from a REQ client: [identity, b"", request...].
        identity, rest = frames[0], frames[1:]
        envelope = [identity]
        if rest and rest[0] == b"":
            envelope.append(b"")
            rest = rest[1:]
        self.n_requests += 1
        try:
            command, args, token = parse_request_token(rest)
        except RequestError as exc:
            self.n_malformed += 1
            log.warning("malformed control request: %s", exc)
            self._reply(envelope, error_reply(exc))
            return
        if command not in OPEN_COMMANDS and not token_matches(token, self.token):
            self._reply(envelope, error_reply(self._refuse(command, token)))
            return
        try:
            reply = {"ok": True, "command": command, "result": self.handler(command, args)}
        except (L1ForgeError, OSError) as exc:
            log.warning("control %s failed: %s", command, exc)
            reply = error_reply(exc)
        self._reply(envelope, reply)

    def _refuse(self, command: str, token: str | None) -> Unauthorized:
        """Count and (at most every REFUSAL_LOG_INTERVAL_S) log a refused command."""
        why = "without the control token" if token is None else "with a wrong control token"
        self.n_unauthorized += 1
        self._refusals_unlogged += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= REFUSAL_LOG_INTERVAL_S:
            more = self._refusals_unlogged - 1
            logging.getLogger(AUTH_LOGGER).warning(
                "control %s refused on %s: sent %s (%d refused in all%s)",
                command,
                self.endpoint,
                why,
                self.n_unauthorized,
                f", {more} more since the last warning" if more else "",
            )
            self._last_refusal_log, self._refusals_unlogged = now, 0
        return Unauthorized(
            f"refused: {command} sent {why}; every command but status needs the daemon's "
            "token, which the CLI reads from the daemon's <state_dir>/endpoints.json "
            "(or --token-file)"
        )

    def counters(self) -> dict[str, int]:
        """Requests served, malformed, refused for the token, failed CURVE handshakes."""
        return {
            "requests": self.n_requests,
            "malformed": self.n_malformed,
            "unauthorized": self.n_unauthorized,
            "refused_handshakes": self.n_refused,
        }

    def _reply(self, envelope: list[bytes], reply: dict[str, Any]) -> None:
        try:
            payload = json.dumps(reply, default=str).encode()
        except (TypeError, ValueError) as exc:
            payload = json.dumps(error_reply(ConfigError(f"reply not JSON-able: {exc}"))).encode()
        try:
            self.socket.send_multipart([*envelope, payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("control reply dropped: the client is gone")

    def start(self) -> ControlServer:
        """Serve on a background thread until `close` (the daemon polls on its own thread)."""
        self._thread = threading.Thread(target=self._loop, name="l1forge-control", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll(50)

    def close(self) -> None:
        """Stop the background thread (if any) and close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._monitor is not None:
            self.socket.disable_monitor()
            self._monitor.close(linger=0)
        self.socket.close(linger=0)


class ControlClient:
    """Sends one command per call on a fresh REQ socket; raises ControlTimeout after `timeout_s`.

    `token` is the daemon's control token (every command but status needs it);
    `from_state_dir` takes endpoint, token and CURVE keys from a local daemon's endpoints.json.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = 30.0,
        keys: str | Path | CurveKeys | None = None,
        context: zmq.Context | None = None,
        token: str | None = None,
    ):
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.keys = keys
        self.context = context or zmq.Context.instance()
        self.token = token

    @classmethod
    def from_state_dir(
        cls,
        state_dir: str | Path,
        *,
        timeout_s: float = 30.0,
        keys: str | Path | CurveKeys | None = None,
        context: zmq.Context | None = None,
    ) -> ControlClient:
        """The client of the daemon whose endpoints.json is in `state_dir` (with its token)."""
        found = read_endpoints(state_dir)
        return cls(
            found["control"],
            timeout_s=timeout_s,
            keys=keys or found.get("curve_keys"),
            context=context,
            token=found.get("token"),
        )

    def request(self, command: str, timeout_s: float | None = None, **args: Any) -> Any:
        """Send `command` with `args`; the result, or ControlError with the daemon's message."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        sock = self.context.socket(zmq.REQ)
        sock.linger = 0
        try:
            connect_client(sock, self.endpoint, self.keys)
            doc: dict[str, Any] = {"command": command, "args": args}
            if self.token is not None:
                doc["token"] = self.token
            sock.send(json.dumps(doc).encode())
            if not sock.poll(int(timeout * 1000)):
                raise ControlTimeout(
                    f"no reply from {self.endpoint} to {command!r} within {timeout:g} s: is the "
                    "daemon running (l1forge online run) and are the CURVE keys right?"
                )
            reply = json.loads(sock.recv())
        finally:
            sock.close(linger=0)
        if not reply.get("ok"):
            raise ControlError(f"{command}: {reply.get('error')} ({reply.get('type')})")
        return reply.get("result")

    def configure(
        self,
        path: str | Path | None = None,
        *,
        config: dict[str, Any] | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> Any:
        """Configure from a YAML path (read by the daemon), an inline mapping, or the last one."""
        args: dict[str, Any] = {}
        if path is not None:
            args["path"] = str(Path(path).resolve())
        if config is not None:
            args["config"] = config
        if overrides:
            args["set"] = overrides
        return self.request("configure", **args)

    def start(self) -> Any:
        """Start a run; returns {run, run_dir}."""
        return self.request("start")

    def stop(self) -> Any:
        """Stop the run (drains in-flight events); returns the run summary."""
        return self.request("stop")

    def status(self) -> Any:
        """The daemon's status."""
        return self.request("status")

    def reset(self) -> Any:
        """Back to idle."""
        return self.request("reset")

    def set_model(self, name: str, path: str | Path) -> Any:
        """Swap model `name` for the IR at `path` (between batches when running)."""
        return self.request("set_model", name=name, path=str(Path(path).resolve()))

    def set_menu(self, menu: dict[str, Any] | str) -> Any:
        """Replace the trigger menu."""
        return self.request("set_menu", menu=menu)

    def swap(self, name: str, path: str | Path, menu: dict[str, Any] | str) -> Any:
        """Install model `name` (IR at `path`) and `menu` together; returns both sha256."""
        return self.request("swap", name=name, path=str(Path(path).resolve()), menu=menu)

    def set_scaling(self, offset: list[int], shift: list[int], model: str | None = None) -> Any:
        """Replace a model's input offsets and shifts (the first model by default) in a run."""
        args: dict[str, Any] = {"offset": _plain(offset), "shift": _plain(shift)}
        if model is not None:
            args["model"] = model
        return self.request("set_scaling", **args)

    def shutdown(self) -> Any:
        """Ask the daemon to stop any run and exit."""
        return self.request("shutdown")


def read_token_file(path: str | Path) -> str:
    """A control token from a file: an endpoints.json (its ``token``) or the bare token text."""
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the control token file {path}: {exc.strerror}") from exc
    if text.startswith("{"):
        try:
            token = json.loads(text).get("token")
        except (json.JSONDecodeError, AttributeError):
            token = None
        if not isinstance(token, str):
            raise ConfigError(f"{path}: a JSON token file needs a string 'token'")
        return token
    if not text:
        raise ConfigError(f"{path}: the control token file is empty")
    return text


def client_from_args(args: Any) -> ControlClient:
    """``daemon_client`` from a CLI namespace (``--state-dir``, ``--control``, ``--keys``,
    ``--token-file``, ``--timeout``), the one the `online` and `online model` commands share."""
    return daemon_client(
        args.state_dir,
        control=args.control,
        keys=args.keys,
        token_file=args.token_file,
        timeout_s=args.timeout,
    )


def daemon_client(
    state_dir: str | Path,
    *,
    control: str | None = None,
    keys: str | Path | None = None,
    token_file: str | Path | None = None,
    timeout_s: float = 30.0,
) -> ControlClient:
    """The CLI's client: the endpoint, token and keys of `state_dir`'s endpoints.json, unless
    `control` (an endpoint) or `token_file` say otherwise."""
    token = None if token_file is None else read_token_file(token_file)
    if control is None:
        found = read_endpoints(state_dir)
        control, keys = found["control"], keys or found.get("curve_keys")
        token = token or found.get("token")
    elif token is None and (Path(state_dir) / ENDPOINTS_FILE).is_file():
        found = read_endpoints(state_dir)
        if found.get("control") == control:  # the local daemon named explicitly
            token = found.get("token")
    return ControlClient(control, timeout_s=timeout_s, keys=keys, token=token)


def _plain(values: Any) -> list[Any]:
    """A list of JSON-able values (numpy arrays and their integers become Python ints)."""
    return values.tolist() if hasattr(values, "tolist") else list(values)
