"""Drive a headless Chromium over the DevTools protocol, for the dashboard's end-to-end tests.

The protocol travels on a pipe (``--remote-debugging-pipe``: Chromium reads commands from its
file descriptor 3 and writes replies and events to descriptor 4, NUL-separated JSON), so no
websocket client is needed and no port is opened. Nothing is downloaded: the browser is the
system's ``chromium`` (Debian package, installed by ``make setup``).
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from l1forge.errors import L1ForgeError, MissingToolError

log = logging.getLogger(__name__)

# The flags a closed-network, root, display-less machine needs (see the machine notes):
# without the background-networking ones Chromium keeps trying to reach Google's hosts.
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)


class BrowserError(L1ForgeError, RuntimeError):
    """The browser died, did not answer in time, or a page command failed."""


def find_chromium() -> str:
    """The path of the system Chromium, or MissingToolError saying how to install it."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise MissingToolError(
        "chromium not found on PATH: run `make setup` (scripts/setup-system.sh installs "
        "Debian's `chromium`) or `apt-get install chromium`"
    )


def _above(fd: int, low: int) -> int:
    """``fd`` moved to a descriptor number >= ``low`` (the original is closed)."""
    if fd >= low:
        return fd
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low)
    os.close(fd)
    return new


class Browser:
    """One headless Chromium process with a fresh profile; use as a context manager."""

    def __init__(
        self,
        executable: str | None = None,
        *,
        window: tuple[int, int] = (1440, 1100),
        timeout_s: float = 30.0,
        log_path: str | Path | None = None,
    ):
        self.executable = executable or find_chromium()
        self.log_path = Path(log_path) if log_path else None
        self.window = window
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen | None = None
        self._profile: str | None = None
        self._to_browser: int | None = None
        self._from_browser: int | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Condition()
        self._replies: dict[int, dict] = {}
        self._next_id = 0
        self._closed_reason: str | None = None
        self.events: list[dict] = []

    # ---- process ---------------------------------------------------------------------
    def start(self) -> Browser:
        """Start Chromium and the thread reading its pipe."""
        self._profile = tempfile.mkdtemp(prefix="l1forge-chromium-")
        if self.log_path is None:
            self.log_path = Path(self._profile) / "chromium-stderr.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd_r, cmd_w = os.pipe()  # we write commands, Chromium reads them on fd 3
        out_r, out_w = os.pipe()  # Chromium writes on fd 4, we read
        # Keep the child's ends away from 3 and 4 so the shell's redirections cannot clash.
        cmd_r, out_w = _above(cmd_r, 10), _above(out_w, 10)
        args = [
            self.executable,
            *HEADLESS_FLAGS,
            f"--user-data-dir={self._profile}",
            f"--window-size={self.window[0]},{self.window[1]}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # bash (dash takes single-digit descriptors only) maps our two pipe ends onto
        # descriptors 3 and 4, then becomes Chromium.
        script = f'exec "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-'
        try:
            with open(self.log_path, "wb") as stderr:
                self._proc = subprocess.Popen(
                    ["/bin/bash", "-c", script, "chromium", *args],
                    pass_fds=(cmd_r, out_w),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,
                )
        finally:
            os.close(cmd_r)
            os.close(out_w)
        self._to_browser, self._from_browser = cmd_w, out_r
        self._reader = threading.Thread(target=self._read_loop, name="cdp-reader", daemon=True)
        self._reader.start()
        version = self.send("Browser.getVersion")
        log.info("started %s (pid %d)", version.get("product"), self._proc.pid)
        return self

    def close(self) -> None:
        """Ask Chromium to quit, then make sure it has; remove the profile folder."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                self.send("Browser.close", timeout_s=5.0)
            except BrowserError as exc:
                log.debug("Browser.close: %s", exc)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                # Chromium's helpers share the session we started it in: end them all.
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
        if self._to_browser is not None:
            os.close(self._to_browser)
            self._to_browser = None
        if self._reader is not None:
            self._reader.join(timeout=10)
        if self._from_browser is not None:
            os.close(self._from_browser)
            self._from_browser = None
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    def __enter__(self) -> Browser:
        try:
            return self.start()
        except BaseException:
            self.close()  # a browser that started but never answered is not left behind
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- protocol --------------------------------------------------------------------
    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError as exc:
                chunk, reason = b"", f"pipe error: {exc}"
            else:
                reason = "browser closed its DevTools pipe"
            if not chunk:
                with self._lock:
                    self._closed_reason = reason
                    self._lock.notify_all()
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for raw in messages:
                msg = json.loads(raw)
                with self._lock:
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                    self._lock.notify_all()

    def _stderr_tail(self, n_lines: int = 5) -> str:
        """The last lines Chromium wrote to its log (for error messages)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "no browser log"
        return f"last lines of {self.log_path}: " + " | ".join(lines[-n_lines:])

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        timeout_s: float | None = None,
    ) -> dict:
        """Send one DevTools command and wait for its result."""
        if self._to_browser is None:
            raise BrowserError("the browser is not started")
        with self._lock:
            self._next_id += 1
            msg_id = self._next_id
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session_id:
            msg["sessionId"] = session_id
        try:
            os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        except BrokenPipeError as exc:
            raise BrowserError(
                f"{method}: browser closed its DevTools pipe ({exc}); {self._stderr_tail()}"
            ) from exc
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        with self._lock:
            while msg_id not in self._replies:
                if self._closed_reason:
                    raise BrowserError(f"{method}: {self._closed_reason}; {self._stderr_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"{method}: no answer from the browser in time")
                self._lock.wait(left)
            reply = self._replies.pop(msg_id)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message', reply['error'])}")
        return reply.get("result", {})

    def new_page(self, url: str) -> Page:
        """Open ``url`` in a new tab and wait for its load event."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        page = Page(self, target, session)
        page.send("Page.enable")
        page.send("Runtime.enable")
        w, h = self.window
        page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": False},
        )
        page.navigate(url)
        return page


class Page:
    """One tab: navigate, evaluate JavaScript, wait for a condition, take a screenshot."""

    def __init__(self, browser: Browser, target_id: str, session_id: str):
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict:
        """A DevTools command for this tab."""
        return self.browser.send(method, params, session_id=self.session_id)

    def navigate(self, url: str) -> None:
        """Load ``url`` and wait until the document has finished loading."""
        reply = self.send("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise BrowserError(f"cannot load {url}: {reply['errorText']}")
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (promises are awaited)."""
        reply = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript error in {expression!r}: {text}")
        return reply["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 20.0, poll_s: float = 0.1) -> Any:
        """Evaluate ``expression`` until it is truthy in JavaScript; return its JSON value.

        Truthiness is JavaScript's: a found element counts, though it comes back as ``{}``.
        """
        probe = (
            f"(async () => {{ const v = await ({expression}); return {{ok: !!v, value: v}}; }})()"
        )
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self.evaluate(probe)
            if reply["ok"]:
                return reply.get("value")
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout_s} s waiting for {expression!r}")
            time.sleep(poll_s)

    def exceptions(self) -> list[str]:
        """Uncaught JavaScript exceptions this tab has thrown so far."""
        with self.browser._lock:
            events = list(self.browser.events)
        return [
            e["params"]["exceptionDetails"].get("exception", {}).get("description")
            or e["params"]["exceptionDetails"].get("text", "")
            for e in events
            if e.get("method") == "Runtime.exceptionThrown"
            and e.get("sessionId") == self.session_id
        ]

    def screenshot(self, path: str | Path, *, full_page: bool = True) -> Path:
        """Save a PNG of the page (the whole scrollable page when ``full_page``)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {
                "x": 0,
                "y": 0,
                "width": size["width"],
                "height": size["height"],
                "scale": 1,
            }
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", params)["data"]
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        return out
