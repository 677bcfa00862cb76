"""The online daemon in the foreground: control socket + run control + web endpoint.

One thread serves the control socket and watches the run: it stops the run when the source
ends, when ``duration_s`` has passed, or on SIGTERM/SIGINT (the source stops first, in-flight
events drain, files close, then the summary is returned). The daemon's endpoints and its control
token are written to ``<state_dir>/endpoints.json`` (mode 0600: only the daemon's own account
reads the token) so `l1forge online status` etc. find it and may send commands.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from l1forge.fileio import write_atomic
from l1forge.online.config import RunConfig
from l1forge.online.control.commands import (
    ENDPOINTS_FILE,
    CommandHandler,
    ControlServer,
    read_endpoints,
)
from l1forge.online.control.runcontrol import (
    PipelineFactory,
    RunControl,
    RunState,
    default_pipeline_factory,
)
from l1forge.online.security import is_loopback, stop_authenticator
from l1forge.online.web.metrics import make_metrics

if TYPE_CHECKING:
    from l1forge.online.web.server import WebServer

log = logging.getLogger(__name__)

__all__ = ["ENDPOINTS_FILE", "Daemon", "DaemonOptions", "read_endpoints"]

POLL_MS = 100


# glibc mallopt parameters
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8
MMAP_THRESHOLD_BYTES = 128 * 1024
MALLOC_ARENAS = 2


def tune_allocator() -> bool:
    """Keep a long-running daemon's memory flat (glibc only; True when applied).

    By default glibc raises its mmap threshold each time a large block is freed, so after the
    first batches every event buffer (MBs) comes from the heap, whose holes are rarely returned
    to the system, and each new thread may get an arena of its own. Measured with the soak: the
    daemon's RSS grew from 137 to 1,087 MB in an hour of 5-minute runs. A fixed 128 kB
    threshold (large buffers are mapped and unmapped) and two arenas keep it flat.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    return bool(libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS) == 1 and ok)


@dataclass(frozen=True)
class DaemonOptions:
    """Where the daemon listens and keeps its state (from the run config or the command line)."""

    state_dir: str
    host: str = "127.0.0.1"
    control_port: int = 0
    metrics_port: int = 0
    curve_keys: str | None = None
    exit_when_run_ends: bool = True  # False (--idle): serve commands until shutdown or a signal
    web_max_connections: int = 64
    web_timeout_s: float = 5.0

    @classmethod
    def from_config(cls, cfg: RunConfig, *, exit_when_run_ends: bool = True) -> DaemonOptions:
        """The options a run configuration implies."""
        n = cfg.network
        return cls(
            cfg.state_dir,
            n.host,
            n.control_port,
            n.metrics_port,
            n.curve_keys,
            exit_when_run_ends,
            n.web_max_connections,
            n.web_timeout_s,
        )


class Daemon:
    """One daemon process: owns the metrics registry, run control, control and web servers."""

    def __init__(self, options: DaemonOptions, *, pipeline_factory: PipelineFactory | None = None):
        self.options = options
        self.metrics = make_metrics()
        self.runcontrol = RunControl(
            options.state_dir,
            metrics=self.metrics,
            pipeline_factory=pipeline_factory or default_pipeline_factory,
        )
        self.handler = CommandHandler(self.runcontrol, status=self.status)
        self._signal: int | None = None
        self._control: ControlServer | None = None
        self._web: WebServer | None = None
        self._endpoints: dict[str, Any] = {}
        self._token = secrets.token_hex(32)  # the control token, only in endpoints.json
        self._run_started_here = 0
        self.error: str | None = None  # why the daemon's run ended in error (after serve)

    # ---- status for the web endpoint ----

    def status(self) -> dict[str, Any]:
        """Run-control status, the daemon's endpoints, the control socket's counters (requests,
        malformed, refused for the token) and the web endpoint's connection counts (served at
        /status; never the token)."""
        doc = {**self.runcontrol.status(), "endpoints": self._endpoints, "pid": os.getpid()}
        if self._control is not None:
            doc["control"] = self._control.counters()
        if self._web is not None:
            doc["web"] = self._web.stats()
        return doc

    def dqm_view(self) -> dict[str, Any]:
        """The running pipeline's DQM view (empty when no run or no DQM)."""
        dqm = self.runcontrol.dqm
        if dqm is not None:
            return dqm.view()
        return {"run": self.runcontrol.run, "lumisection": None, "histograms": {}, "alarms": []}

    # ---- lifecycle ----

    def _open(self) -> None:
        if not tune_allocator():
            log.info("allocator not tuned (not glibc): memory may grow over long runs")
        from l1forge.online.web.metrics import AccessCollector
        from l1forge.online.web.server import WebServer

        o = self.options
        self._control = ControlServer(
            self.handler, f"tcp://{o.host}:{o.control_port}", keys=o.curve_keys, token=self._token
        )
        web_host = o.host if is_loopback(o.host) else "127.0.0.1"  # HTTP has no authentication
        self._web = WebServer(
            web_host,
            o.metrics_port,
            registry=self.metrics.registry,
            status=self.status,
            dqm_view=self.dqm_view,
            max_connections=o.web_max_connections,
            read_timeout_s=o.web_timeout_s,
        ).start()
        self.metrics.registry.register(AccessCollector(self._control.counters, self._web.stats))
        control = self._control.endpoint
        if o.host in ("0.0.0.0", "*", "::"):
            control = control.replace(f"//{o.host}:", "//127.0.0.1:", 1)
        self._endpoints = {
            "control": control,
            "web": self._web.url,
            "metrics": f"{self._web.url}metrics",
            "curve_keys": o.curve_keys,
            "pid": os.getpid(),
        }
        self._write_endpoints()

    def _write_endpoints(self) -> None:
        pipeline = self.runcontrol.pipeline
        doc = {
            **self._endpoints,
            "monitor": getattr(pipeline, "monitor_endpoint", None),
            "workers": getattr(pipeline, "worker_endpoint", None),
            "token": self._token,
        }
        # write_atomic's temporary file is made by mkstemp, mode 0600: the token stays ours
        write_atomic(Path(self.options.state_dir) / ENDPOINTS_FILE, json.dumps(doc, indent=1))

    def _close(self) -> None:
        if self._control is not None:
            self._control.close()
            stop_authenticator(self._control.context)
        if self._web is not None:
            self._web.stop()
        (Path(self.options.state_dir) / ENDPOINTS_FILE).unlink(missing_ok=True)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._signal is not None:
            log.warning("signal %d again: already stopping (draining in-flight events)", signum)
            return
        self._signal = signum
        log.info("signal %s: stopping the run and exiting", signal.Signals(signum).name)

    def serve(self, cfg: RunConfig | None, *, start: bool = True) -> dict[str, Any] | None:
        """Run the daemon until its run ends (or shutdown/a signal); the last run's summary."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._open()
            rc = self.runcontrol
            if cfg is not None:
                rc.configure(cfg)
                if start:
                    self._run_started_here = rc.start()
                    self._write_endpoints()
            self._loop()
            if rc.state == RunState.RUNNING:
                rc.stop()
            self.error = rc.status()["error"] if rc.state == RunState.ERROR else None
            return rc.last_summary
        finally:
            self._close()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _loop(self) -> None:
        assert self._control is not None
        rc = self.runcontrol
        watched_run = 0
        while True:
            self._control.poll(POLL_MS)
            if self._signal is not None or self.handler.shutdown_requested.is_set():
                return
            if rc.state == RunState.RUNNING:
                if rc.run != watched_run:
                    watched_run = rc.run
                    self._write_endpoints()
                self._watch(rc)
            elif rc.state == RunState.ERROR and self.options.exit_when_run_ends:
                return
            elif (
                self.options.exit_when_run_ends
                and self._run_started_here
                and rc.state == RunState.STOPPED
            ):
                return

    def _watch(self, rc: RunControl) -> None:
        """Stop the run when its source has ended, its time is up, or the pipeline failed."""
        cfg = rc.config
        pipeline = rc.pipeline
        if pipeline is None or cfg is None:
            return
        if pipeline.error:
            # Storage or a part failed: the pipeline stopped its source; drain what is in flight,
            # close the files (held events are counted in the summary), then enter error.
            error = pipeline.error
            rc.stop()
            rc.fail(f"run {rc.run}: {error}")
        elif cfg.duration_s is not None and rc.elapsed_s >= cfg.duration_s:
            log.info("run %d: duration_s = %g s reached", rc.run, cfg.duration_s)
            rc.stop()
        elif pipeline.source_done.is_set():
            log.info("run %d: the source has ended; draining", rc.run)
            rc.stop()
