"""One run's data path: source -> dispatcher -> workers -> collector -> storage, started in order.

`Pipeline.start` starts the collector, the local worker processes, the dispatcher and last the
source; `stop` stops the source first, drains every in-flight batch, stops the workers and closes
the collector's files, then returns a `RunSummary` with the completeness proof (lost and
duplicated events, both 0 in a healthy run).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from l1forge.online.config import RunConfig
from l1forge.online.datapath.collector import Collector
from l1forge.online.datapath.dispatcher import (
    S_BATCH,
    S_END,
    SOURCE_META,
    Dispatcher,
    ModelFiles,
    WorkerSetup,
)
from l1forge.online.datapath.menu import Menu, Seed, default_menu
from l1forge.online.datapath.sources import Sequencer, Source, SourceError, make_source
from l1forge.online.datapath.storage import AcceptedWriter
from l1forge.online.datapath.wire import encode_batch

from l1forge.errors import ConfigError, DataFormatError, L1ForgeError

log = logging.getLogger(__name__)

WORKER_START_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 300.0
MAX_RESTARTS_PER_WORKER = 3


class PipelineError(L1ForgeError, RuntimeError):
    """The pipeline could not start, or a part of it failed while running."""


@dataclass(frozen=True)
class RunSummary:
    """What one run did, with its completeness proof."""

    run: int
    n_events_in: int
    n_processed: int
    n_accepted: int
    per_seed: dict[str, int]
    rates_hz: dict[str, float]  # at the menu's input rate (40 MHz)
    lost: int
    duplicated: int
    duplicates_suppressed: int
    redelivered_batches: int
    rejected: dict[str, int]  # source messages rejected, by reason
    failed_batches: dict[str, int]  # batches no worker could process, by reason
    n_failed_events: int  # events of those batches (accounted for, not lost)
    files: list[dict[str, Any]]
    held_accepted_events: int  # accepted events not in a finished file (storage failure)
    error: str | None
    seconds: float
    events_per_s: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    dead_workers: list[str] = field(default_factory=list)
    max_in_flight_batches: int = 0
    source_blocked_s: float = 0.0
    missing_ranges: list[list[int]] = field(default_factory=list)
    dqm_summary: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


def _zero_bias_scores(models: dict[str, str], path: str) -> dict[str, np.ndarray]:
    from l1forge.models import qnet
    from l1forge.models.emulator import Emulator
    from l1forge.online.datapath.backends import outputs_float
    from l1forge.sim.dataset import read_events

    x = read_events(path).inputs
    out = {}
    for name, ir in models.items():
        net = qnet.load(ir)
        emu = Emulator(net)
        try:
            out[name] = outputs_float(net, emu.run(x))[:, 0]
        finally:
            emu.close()
    return out


def build_menu(cfg: RunConfig) -> Menu:
    """The run's menu: configured seeds (or the default menu), thresholds calibrated from
    `target_rate_hz` on the calibration file (or the replay file) where none is given."""
    models = cfg.backend.models
    if cfg.menu.seeds is None:
        ad = "ad" if "ad" in models else next(iter(models))
        cls = "classifier" if "classifier" in models else None
        menu = default_menu(ad, cls, input_rate_hz=cfg.menu.input_rate_hz)
    else:
        seeds = tuple(
            Seed(
                s.name,
                s.model,
                threshold=math.inf if s.threshold is None else s.threshold,
                prescale=s.prescale,
                target_rate_hz=s.target_rate_hz,
            )
            for s in cfg.menu.seeds
        )
        menu = Menu(seeds, cfg.menu.input_rate_hz)
    menu.check_models(models)
    todo = [s.target_rate_hz is not None and s.threshold == math.inf for s in menu.seeds]
    if not any(todo):
        return menu
    path = cfg.menu.calibration or (cfg.source.paths[0] if cfg.source.paths else None)
    if path is None:
        raise ConfigError(
            "menu.calibration: seeds with target_rate_hz need a zero-bias HDF5 file to set "
            "their thresholds (or give each seed a threshold)"
        )
    calibrated = menu.calibrate(_zero_bias_scores(models, path))
    seeds = tuple(c if t else s for s, c, t in zip(menu.seeds, calibrated.seeds, todo, strict=True))
    log.info("menu calibrated on %s", path)
    return replace(menu, seeds=seeds)


def _backend_settings(cfg: RunConfig, n_local: int) -> dict[str, Any]:
    b = cfg.backend
    out: dict[str, Any] = {
        "kind": b.kind,
        "threads": max(1, (os.cpu_count() or 1) // max(1, n_local)),
    }
    if b.kind == "rtl":
        out.update(firmware_dir=b.firmware_dir, simulator=b.simulator)
    elif b.kind == "pynq":
        out.update(firmware_dir=b.firmware_dir, bitfile=b.bitfile)
    return out


class Pipeline:
    """The data path of one run (thread-safe `status`, `set_model`, `set_menu`)."""

    def __init__(
        self,
        cfg: RunConfig,
        run: int,
        run_dir: str | Path,
        *,
        metrics: Any = None,
        menu: Menu | None = None,
        writer_factory: Callable[..., AcceptedWriter] = AcceptedWriter,
        source: Source | None = None,
    ):
        self.cfg = cfg
        self.run = int(run)
        self.run_dir = Path(run_dir)
        self.metrics = metrics
        self.menu = menu or build_menu(cfg)
        self.menu.check_models(cfg.backend.models)
        self.models = tuple(ModelFiles.read(n, p) for n, p in cfg.backend.models.items())
        self.model_names = tuple(m.name for m in self.models)
        self._writer_factory = writer_factory
        self._source = source
        self.state = "created"
        self.error: str | None = None
        self.monitor_endpoint = ""
        self.worker_endpoint = ""
        self.source_endpoint = ""
        self._procs: dict[str, subprocess.Popen] = {}
        self._restarts = 0
        self._lock = threading.Lock()
        self._stop_source = threading.Event()
        self._abort = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._range = (0, 0)  # [first_seq, end_seq) sent so far
        self.source_blocked_s = 0.0
        self.source_done = threading.Event()
        self._rejected_seen: dict[str, int] = {}
        self._t_start = 0.0
        self._started = False
        self._summary: RunSummary | None = None

    # ---- start ----

    def start(self) -> None:
        """Collector, then workers, then dispatcher, then source."""
        if self.state != "created":
            raise PipelineError(f"start: the pipeline is {self.state}")
        cfg = self.cfg
        self.ctx = zmq.Context()
        self._tmp = tempfile.mkdtemp(prefix="l1f-")  # short paths for ipc sockets
        try:
            self._start(cfg)
        except (L1ForgeError, OSError, zmq.ZMQError) as exc:
            self._teardown()
            self.state = "error"
            raise PipelineError(f"run {self.run}: the pipeline did not start: {exc}") from exc
        self._started = True
        self.state = "running"

    def _start(self, cfg: RunConfig) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        writer = self._writer_factory(
            self.run_dir,
            self.run,
            self.menu.names,
            model_names=self.model_names,
            min_free_mb=cfg.storage.min_free_mb,
        )
        keys = cfg.network.curve_keys
        host = cfg.network.host
        if cfg.workers.transport == "ipc":
            worker_ep = f"ipc://{self._tmp}/workers"
        else:
            worker_ep = f"tcp://{host}:0"
        n_local = cfg.workers.n
        setup = WorkerSetup(
            self.run, _backend_settings(cfg, n_local), self.models, json.dumps(self.menu.to_json())
        )
        tag = f"{id(self):x}"
        self.dispatcher = Dispatcher(
            self.ctx,
            worker_endpoint=worker_ep,
            source_endpoint=f"inproc://source-{tag}",
            collector_endpoint=f"inproc://collector-{tag}",
            setup=setup,
            credits=cfg.workers.credits,
            heartbeat_s=cfg.workers.heartbeat_s,
            timeout_s=cfg.workers.timeout_s,
            monitor_fraction=cfg.monitor.fraction,
            is_alive=self._is_alive,
            metrics=self.metrics,
            curve_keys=keys,
        )
        self.worker_endpoint = self.dispatcher.worker_endpoint
        self.source_endpoint = f"inproc://source-{tag}"
        self.collector = Collector(
            self.ctx,
            endpoint=f"inproc://collector-{tag}",
            monitor_endpoint=f"tcp://{host}:{cfg.network.monitor_port}",
            run=self.run,
            writer=writer,
            menu=self.menu,
            model_names=self.model_names,
            events_per_lumisection=cfg.storage.events_per_lumisection,
            metrics=self.metrics,
            on_error=self._on_storage_error,
            curve_keys=keys,
        )
        self.monitor_endpoint = self.collector.monitor_endpoint
        self._thread("collector", self.collector.run)
        for i in range(n_local):
            self._spawn(f"local-{i}")
        self._thread("dispatcher", self.dispatcher.run)
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        expected = n_local + len(cfg.workers.hosts)  # remote hosts announced in the config
        while self._configured() < expected:
            bad = self.dispatcher.status()["worker_setup_errors"]
            if bad:
                name, why = next(iter(bad.items()))
                raise PipelineError(f"worker {name} cannot load the run setup: {why}")
            dead = [n for n, p in self._procs.items() if p.poll() is not None]
            if dead:
                raise PipelineError(f"worker process {dead[0]} exited at start (see its log)")
            if time.monotonic() > deadline:
                raise PipelineError(
                    f"only {self._configured()} of {expected} workers came up in "
                    f"{WORKER_START_TIMEOUT_S:.0f} s (remote ones connect with "
                    f"`python -m l1forge.online.datapath.worker --connect {self.worker_endpoint}`)"
                )
            time.sleep(0.02)
        if self._source is None:
            self._source = make_source(cfg.source, ctx=self.ctx)
        self._t_start = time.perf_counter()
        self._thread("source", self._source_loop)
        log.info(
            "run %d running: %d local workers on %s, monitor tap %s",
            self.run,
            n_local,
            self.worker_endpoint,
            self.monitor_endpoint,
        )

    def _thread(self, name: str, fn: Callable[[], None]) -> None:
        t = threading.Thread(target=fn, name=f"l1f-{name}-{self.run}", daemon=True)
        self._threads[name] = t
        t.start()

    def _configured(self) -> int:
        return sum(w["configured"] for w in self.dispatcher.status()["workers"].values())

    def _spawn(self, name: str) -> None:
        cfg = self.cfg.workers
        cmd = [
            sys.executable,
            "-m",
            "l1forge.online.datapath.worker",
            "--connect",
            self.worker_endpoint,
        ]
        cmd += ["--name", name, "--credits", str(cfg.credits)]
        cmd += ["--heartbeat-s", str(cfg.heartbeat_s), "--parent-pid", str(os.getpid())]
        cmd += ["--work-dir", self._tmp]  # removed at the end of the run, even after a kill
        if self.cfg.network.curve_keys and self.worker_endpoint.startswith("tcp://"):
            cmd += ["--curve-keys", self.cfg.network.curve_keys]
        # its own process group: a terminal's Ctrl-C reaches only the daemon, which then
        # stops the workers in order (after the drain) instead of losing them mid-run
        self._procs[name] = subprocess.Popen(cmd, process_group=0)  # exits if we die
        log.info("worker %s started (pid %d)", name, self._procs[name].pid)

    def _is_alive(self, name: str) -> bool | None:
        """Liveness of a local worker process (None for remote ones); restarts dead ones."""
        proc = self._procs.get(name)
        if proc is None:
            return None
        if proc.poll() is None:
            return True
        log.error("worker %s (pid %d) exited with %s", name, proc.pid, proc.returncode)
        if not self._stop_source.is_set() and self._restarts < MAX_RESTARTS_PER_WORKER * max(
            1, self.cfg.workers.n
        ):
            self._restarts += 1
            self._spawn(f"{name.split('~')[0]}~{self._restarts}")
        return False

    # ---- the source thread ----

    def _source_loop(self) -> None:
        cfg = self.cfg
        push = self.ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.SNDHWM, 1)
        push.connect(self.source_endpoint)
        seq = Sequencer(
            self.run,
            cfg.batch_size,
            cfg.storage.events_per_lumisection,
            max_events=cfg.source.n_events,
        )
        source = self._source
        assert source is not None
        try:
            for chunk in source.chunks(self._stop_source):
                for b in seq.feed(chunk):
                    if not self._send(push, b):
                        return
                self._count_rejections()
                if seq.done:
                    break
            for b in seq.flush():
                if not self._send(push, b):
                    return
        except (SourceError, DataFormatError, OSError) as exc:
            self._fail(f"source failed: {exc}")
        finally:
            self._count_rejections()
            end = json.dumps({"first_seq": self._range[0], "end_seq": self._range[1]}).encode()
            self._send_frames(push, [S_END, end])
            push.close(0)
            self.source_done.set()
            log.info("source done: %d events", self._range[1] - self._range[0])

    def _send(self, push: zmq.Socket, b: Any) -> bool:
        meta = SOURCE_META.pack(time.perf_counter(), b.first_seq, len(b))
        if not self._send_frames(push, [S_BATCH, meta, *encode_batch(b)]):
            return False
        with self._lock:
            self._range = (self._range[0], b.first_seq + len(b))
        if self.metrics is not None:
            self.metrics.events_in.inc(len(b))
        return True

    def _send_frames(self, push: zmq.Socket, frames: list) -> bool:
        """Blocking send (back-pressure) that gives up only when the run is aborted."""
        t0 = time.perf_counter()
        while not push.poll(100, zmq.POLLOUT):
            if self._abort.is_set():
                return False
        self.source_blocked_s += time.perf_counter() - t0
        push.send_multipart(frames, copy=False)
        return True

    def _count_rejections(self) -> None:
        if self.metrics is None or self._source is None:
            return
        for reason, n in self._source.rejected().items():
            delta = n - self._rejected_seen.get(reason, 0)
            if delta:
                self.metrics.rejected_messages.labels(reason=reason).inc(delta)
                self._rejected_seen[reason] = n

    # ---- errors ----

    def _on_storage_error(self, message: str) -> None:
        self._fail(f"storage failed: {message}")

    def _fail(self, message: str) -> None:
        """Stop taking data; keep everything already accepted (reported as held)."""
        if self.error is None:
            self.error = message
            self.state = "error"
            log.error("run %d: %s; the source is stopped", self.run, message)
        self._stop_source.set()

    # ---- live changes ----

    def set_model(self, name: str, path: str | Path, timeout_s: float = 60.0) -> dict[str, Any]:
        """Load and validate the IR here, then on every worker (swap between batches)."""
        if name not in self.model_names:
            raise ConfigError(f"set_model: this run has no model {name!r} ({self.model_names})")
        model = ModelFiles.read(name, path)
        answers = self.dispatcher.broadcast_model(model, timeout_s)
        self.models = tuple(model if m.name == name else m for m in self.models)
        return {"model": name, "sha256": model.sha256, "workers": answers}

    def set_menu(self, menu: Menu | dict | str, timeout_s: float = 30.0) -> dict[str, Any]:
        """Broadcast new thresholds/prescales; the seed names must stay those of the run."""
        if not isinstance(menu, Menu):
            menu = Menu.from_json(menu)
        menu.check_models(self.model_names)
        if menu.names != self.menu.names:
            raise ConfigError(
                f"set_menu: a running run keeps its seeds {self.menu.names}; got {menu.names} "
                "(change seeds between runs)"
            )
        text = json.dumps(menu.to_json())
        answers = self.dispatcher.broadcast_menu(text, timeout_s)
        self.menu = menu
        self.collector.set_menu(menu)
        return {"menu": menu.to_json(), "workers": answers}

    # ---- status and stop ----

    def status(self) -> dict[str, Any]:
        d = self.dispatcher.status() if hasattr(self, "dispatcher") else {}
        c = self.collector.status() if hasattr(self, "collector") else {}
        first, end = self._range
        elapsed = time.perf_counter() - self._t_start if self._t_start else 0.0
        return {
            "state": self.state,
            "error": self.error,
            "run": self.run,
            "events_in": end - first,
            "source_done": self.source_done.is_set(),
            "source_blocked_s": self.source_blocked_s,
            "rejected": self._source.rejected() if self._source is not None else {},
            "seconds": elapsed,
            "events_per_s": c.get("events_processed", 0) / elapsed if elapsed else 0.0,
            "monitor_endpoint": self.monitor_endpoint,
            "worker_endpoint": self.worker_endpoint,
            **d,
            **c,
        }

    def wait_source_done(self, timeout_s: float | None = None) -> bool:
        """True once the source has ended (replay exhausted, n_events reached or failed)."""
        return self.source_done.wait(timeout_s)

    def stop(self, drain: bool = True, timeout_s: float = DRAIN_TIMEOUT_S) -> RunSummary:
        """Source first, then drain the in-flight batches, then workers, then the collector."""
        if self._summary is not None:
            return self._summary
        if not self._started:
            raise PipelineError(f"stop: the pipeline of run {self.run} did not start")
        self._stop_source.set()
        if not drain:
            self._abort.set()
        src = self._threads.get("source")
        if src is not None:
            src.join(timeout_s)
            if src.is_alive():
                self._abort.set()
                src.join(10)
        drained = self.dispatcher.drained.wait(timeout_s if drain else 0)
        if drain and not drained:
            log.error("run %d: in-flight batches did not drain in %.0f s", self.run, timeout_s)
        told = {w["pid"] for w in self.dispatcher.status()["workers"].values()}
        self.dispatcher.request_stop(stop_workers=True)
        self._join("dispatcher")
        self._stop_workers(told)
        self.collector.request_stop()
        self._join("collector")
        first, end = self._range
        proof = self.collector.finish(first, end)
        summary = self._summarize(proof)
        self._teardown()
        if self.state != "error":
            self.state = "stopped"
        self._summary = summary
        log.info(
            "run %d stopped: %d events in, %d processed, lost %d, duplicated %d",
            self.run,
            summary.n_events_in,
            summary.n_processed,
            summary.lost,
            summary.duplicated,
        )
        return summary

    def _join(self, name: str) -> None:
        t = self._threads.get(name)
        if t is not None:
            t.join(30)
            if t.is_alive():
                log.error("the %s thread did not stop", name)

    def _stop_workers(self, told: set[int]) -> None:
        """Wait for the workers told to STOP; terminate the others (e.g. one still starting)."""
        deadline = time.monotonic() + 10
        for name, p in self._procs.items():
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

    def _teardown(self) -> None:
        self._stop_source.set()
        self._abort.set()
        self._join("source")
        if hasattr(self, "dispatcher"):
            self.dispatcher.request_stop(stop_workers=True)
            self._join("dispatcher")
        if hasattr(self, "collector"):
            self.collector.request_stop()
            self._join("collector")
        for p in self._procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(5)
        if self._source is not None:
            self._source.close()
        if hasattr(self, "ctx"):
            self.ctx.destroy(linger=0)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _summarize(self, proof: Any) -> RunSummary:
        c = self.collector.status()
        d = self.dispatcher.status()
        seconds = time.perf_counter() - self._t_start
        return RunSummary(
            run=self.run,
            n_events_in=proof.n_expected,
            n_processed=c["events_processed"],
            n_accepted=c["events_accepted"],
            per_seed=c["seed_counts"],
            rates_hz=c["seed_rates_hz"],
            lost=proof.lost,
            duplicated=proof.duplicated,
            duplicates_suppressed=proof.duplicates_suppressed,
            redelivered_batches=d["batches_redelivered"],
            rejected=self._source.rejected() if self._source is not None else {},
            failed_batches=c["failed_batches"],
            n_failed_events=proof.n_failed,
            files=[asdict(r) for r in sorted(self.collector.records, key=lambda r: r.lumisection)],
            held_accepted_events=c["held_accepted_events"],
            error=self.error,
            seconds=seconds,
            events_per_s=c["events_processed"] / seconds if seconds > 0 else 0.0,
            latency_ms=c.get("latency_ms", {}),
            dead_workers=d["dead_workers"],
            max_in_flight_batches=d["max_in_flight_batches"],
            source_blocked_s=self.source_blocked_s,
            missing_ranges=[list(r) for r in proof.missing_ranges],
        )

    def held_events(self) -> dict[str, np.ndarray]:
        """Accepted events kept in memory after a storage failure (seq, seed_bits)."""
        return self.collector.held_events()
