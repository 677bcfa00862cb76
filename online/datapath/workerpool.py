"""The local worker processes of one run: spawned, restarted when they die, waited for, stopped.

Each worker is ``python -m l1forge.online.datapath.worker`` in a process group of its own, so a
terminal's Ctrl-C reaches only the daemon, which then stops the workers in order (after the
drain) instead of losing them mid-run. Remote workers (``workers.hosts``) connect by themselves;
the pool only waits for them at start.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

from l1forge.errors import L1ForgeError
from l1forge.online.config import WorkersConfig

if TYPE_CHECKING:
    from l1forge.online.datapath.dispatcher import Dispatcher

log = logging.getLogger(__name__)

WORKER_START_TIMEOUT_S = 120.0
MAX_RESTARTS_PER_WORKER = 3  # within RESTART_WINDOW_S: a crash loop stops, a long run goes on
RESTART_WINDOW_S = 600.0


class WorkerStartError(L1ForgeError, RuntimeError):
    """The workers did not come up: one cannot load the run setup, exited, or never connected."""


class WorkerPool:
    """Local workers connected to ``endpoint``; ``is_alive`` is the dispatcher's liveness check."""

    def __init__(
        self,
        cfg: WorkersConfig,
        *,
        curve_keys: str | None,
        stopping: threading.Event,
    ):
        self.cfg = cfg
        self.work_dir = ""  # the workers' IR files (removed at the end of the run)
        self.curve_keys = curve_keys
        self.stopping = stopping  # once set, a dead worker is not restarted
        self.endpoint = ""
        self.procs: dict[str, subprocess.Popen] = {}
        self.exited: set[str] = set()  # workers whose exit was seen (restarted or given up on)
        self.restarts = 0
        self._restart_times: list[float] = []

    def start(self, endpoint: str, n: int, work_dir: str) -> None:
        """Spawn ``n`` local workers (``local-0`` ...) connecting to the dispatcher at ``endpoint``,
        keeping the IR files they receive under ``work_dir``."""
        self.endpoint = endpoint
        self.work_dir = work_dir
        for i in range(n):
            self.spawn(f"local-{i}")

    def spawn(self, name: str) -> None:
        cfg = self.cfg
        cmd = [sys.executable, "-m", "l1forge.online.datapath.worker", "--connect", self.endpoint]
        cmd += ["--name", name, "--credits", str(cfg.credits)]
        cmd += ["--heartbeat-s", str(cfg.heartbeat_s), "--parent-pid", str(os.getpid())]
        cmd += ["--work-dir", self.work_dir]  # removed at the end of the run, even after a kill
        if self.curve_keys and self.endpoint.startswith("tcp://"):
            cmd += ["--curve-keys", self.curve_keys]
        self.procs[name] = subprocess.Popen(cmd, process_group=0)  # exits if we die
        log.info("worker %s started (pid %d)", name, self.procs[name].pid)

    def is_alive(self, name: str) -> bool | None:
        """Liveness of a local worker process (None for remote ones); restarts dead ones."""
        proc = self.procs.get(name)
        if proc is None:
            return None
        if proc.poll() is None:
            return True
        self._exited(name, proc)
        return False

    def reap(self) -> int:
        """Restart the local workers that exited while the dispatcher no longer counted them
        (declared dead for silence, e.g. frozen, then gone before they registered again);
        returns how many exits were new. Called with every dispatcher heartbeat."""
        new = [(n, p) for n, p in list(self.procs.items()) if n not in self.exited]
        gone = [(n, p) for n, p in new if p.poll() is not None]
        for name, proc in gone:
            self._exited(name, proc)
        return len(gone)

    def _exited(self, name: str, proc: subprocess.Popen) -> None:
        """Handle one worker's exit once: log it and start a replacement while the run lasts."""
        if name in self.exited:
            return
        self.exited.add(name)
        if self.stopping.is_set():
            log.info("worker %s (pid %d) exited with %s", name, proc.pid, proc.returncode)
            return
        log.error("worker %s (pid %d) exited with %s", name, proc.pid, proc.returncode)
        now = time.monotonic()
        self._restart_times = [t for t in self._restart_times if now - t < RESTART_WINDOW_S]
        if len(self._restart_times) >= MAX_RESTARTS_PER_WORKER * max(1, self.cfg.n):
            log.error(
                "worker %s not restarted: %d restarts in the last %.0f s",
                name,
                len(self._restart_times),
                RESTART_WINDOW_S,
            )
            return
        self._restart_times.append(now)
        self.restarts += 1
        self.spawn(f"{name.split('~')[0]}~{self.restarts}")

    def wait_configured(
        self, dispatcher: Dispatcher, expected: int, timeout_s: float = WORKER_START_TIMEOUT_S
    ) -> None:
        """Block until ``expected`` workers loaded the run setup; WorkerStartError otherwise."""
        deadline = time.monotonic() + timeout_s
        while _configured(dispatcher) < expected:
            bad = dispatcher.status()["worker_setup_errors"]
            if bad:
                name, why = next(iter(bad.items()))
                raise WorkerStartError(f"worker {name} cannot load the run setup: {why}")
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise WorkerStartError(f"worker process {dead[0]} exited at start (see its log)")
            if time.monotonic() > deadline:
                raise WorkerStartError(
                    f"only {_configured(dispatcher)} of {expected} workers came up in "
                    f"{timeout_s:.0f} s (remote ones connect with "
                    f"`python -m l1forge.online.datapath.worker --connect {self.endpoint}`)"
                )
            time.sleep(0.02)

    def stop(self, told: set[int]) -> None:
        """Wait for the workers told to STOP; terminate the others (e.g. one still starting)."""
        deadline = time.monotonic() + 10
        for name, p in self.procs.items():
            if p.pid not in told and p.poll() is None:
                p.terminate()
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not stop; terminating it", name)
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)

    def kill(self) -> None:
        """Kill every worker process still running (teardown after a failed start or an abort)."""
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(5)


def _configured(dispatcher: Dispatcher) -> int:
    return sum(w["configured"] for w in dispatcher.status()["workers"].values())
