"""One run's data path: source -> dispatcher -> workers -> collector -> storage, started in order.

`Pipeline.start` starts the collector (and waits for a subscriber of its monitoring tap when
given one), the local worker processes, the dispatcher and last the source; `stop` stops the
source first, drains every in-flight batch, stops the workers and closes the collector's files,
then returns a `RunSummary` with the completeness proof (lost and duplicated events, both 0 in a
healthy run).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from l1forge.errors import ConfigError, L1ForgeError
from l1forge.online.config import RunConfig
from l1forge.online.datapath.collector import Collector
from l1forge.online.datapath.dispatcher import Dispatcher
from l1forge.online.datapath.menu import Menu, build_menu
from l1forge.online.datapath.protocol import InputScaling, ModelFiles, WorkerSetup, menu_text
from l1forge.online.datapath.pump import SourcePump
from l1forge.online.datapath.sources import Sequencer, Source, make_source
from l1forge.online.datapath.status import PipelineStatus
from l1forge.online.datapath.storage import AcceptedWriter
from l1forge.online.datapath.summary import RunSummary, summarize
from l1forge.online.datapath.tuning import check_menu_for, check_scaling_for
from l1forge.online.datapath.wire import TOPIC_MONITOR
from l1forge.online.datapath.workerpool import WorkerPool

if TYPE_CHECKING:
    from l1forge.online.web.metrics import PipelineMetrics

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 300.0
TAP_SUBSCRIBE_TIMEOUT_S = 10.0


class PipelineError(L1ForgeError, RuntimeError):
    """The pipeline could not start, or a part of it failed while running."""


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
    """The data path of one run (thread-safe `status`, `set_model`, `set_menu`, `swap`)."""

    def __init__(
        self,
        cfg: RunConfig,
        run: int,
        run_dir: str | Path,
        *,
        metrics: PipelineMetrics | None = None,
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
        self.ctx: zmq.Context | None = None
        self.dispatcher: Dispatcher | None = None
        self.collector: Collector | None = None
        self._tmp: str | None = None  # the run's ipc sockets and the workers' IR files
        self._stop_source = threading.Event()
        self._abort = threading.Event()
        self.source_done = threading.Event()
        self.workers = WorkerPool(
            cfg.workers, curve_keys=cfg.network.curve_keys, stopping=self._stop_source
        )
        sequencer = Sequencer(
            self.run,
            cfg.batch_size,
            cfg.storage.events_per_lumisection,
            max_events=cfg.source.n_events,
        )
        self.pump = SourcePump(
            self.run,
            sequencer,
            stop=self._stop_source,
            abort=self._abort,
            done=self.source_done,
            on_error=self._fail,
            metrics=metrics,
        )
        self._threads: dict[str, threading.Thread] = {}
        self._t_start = 0.0
        self._started = False
        self._summary: RunSummary | None = None

    @property
    def source_blocked_s(self) -> float:
        """Seconds the source waited for a free worker credit (back-pressure)."""
        return self.pump.blocked_s

    # ---- start ----

    def start(self, tap_subscriber: Callable[[Pipeline], Any] | None = None) -> None:
        """Collector, then workers, then dispatcher, then source.

        `tap_subscriber(pipeline)` (e.g. starting the DQM) runs once the monitoring tap is bound;
        the source starts only after its subscription to b"mon" has reached the tap.
        """
        if self.state != "created":
            raise PipelineError(f"start: the pipeline is {self.state}")
        cfg = self.cfg
        self.ctx = zmq.Context()
        self._tmp = tempfile.mkdtemp(prefix="l1f-")  # short paths for ipc sockets
        try:
            self._start(cfg, tap_subscriber)
        except (L1ForgeError, OSError, zmq.ZMQError) as exc:
            self._teardown()
            self.state = "error"
            raise PipelineError(f"run {self.run}: the pipeline did not start: {exc}") from exc
        self._started = True
        self.state = "running"

    def _start(self, cfg: RunConfig, tap_subscriber: Callable[[Pipeline], Any] | None) -> None:
        ctx, tmp = self.ctx, self._tmp
        assert ctx is not None and tmp is not None  # made by start()
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
            worker_ep = f"ipc://{tmp}/workers"
        else:
            worker_ep = f"tcp://{host}:{cfg.network.worker_port}"
        n_local = cfg.workers.n
        setup = WorkerSetup(
            self.run, _backend_settings(cfg, n_local), self.models, json.dumps(self.menu.to_json())
        )
        tag = f"{id(self):x}"
        self.dispatcher = Dispatcher(
            ctx,
            worker_endpoint=worker_ep,
            source_endpoint=f"inproc://source-{tag}",
            collector_endpoint=f"inproc://collector-{tag}",
            setup=setup,
            credits=cfg.workers.credits,
            heartbeat_s=cfg.workers.heartbeat_s,
            timeout_s=cfg.workers.timeout_s,
            monitor_fraction=cfg.monitor.fraction,
            is_alive=self.workers.is_alive,
            reap=self.workers.reap,
            metrics=self.metrics,
            # local ipc workers get no keys (workerpool): CURVE only where it leaves the machine
            curve_keys=keys if worker_ep.startswith("tcp://") else None,
        )
        self.worker_endpoint = self.dispatcher.worker_endpoint
        self.source_endpoint = f"inproc://source-{tag}"
        self.collector = Collector(
            ctx,
            endpoint=f"inproc://collector-{tag}",
            monitor_endpoint=f"tcp://{host}:{cfg.network.monitor_port}",
            run=self.run,
            writer=writer,
            menu=self.menu,
            model_names=self.model_names,
            events_per_lumisection=cfg.storage.events_per_lumisection,
            full_wait_s=cfg.storage.full_wait_s,
            metrics=self.metrics,
            on_error=self._on_storage_error,
            curve_keys=keys,
        )
        self.monitor_endpoint = self.collector.monitor_endpoint
        if tap_subscriber is not None:
            tap_subscriber(self)
            self.collector.wait_subscribed(TOPIC_MONITOR, TAP_SUBSCRIBE_TIMEOUT_S)
        self._thread("collector", self.collector.run)
        self.workers.start(self.worker_endpoint, n_local, tmp)
        self._thread("dispatcher", self.dispatcher.run)
        # remote hosts announced in the config count too
        self.workers.wait_configured(self.dispatcher, n_local + len(cfg.workers.hosts))
        if self._source is None:
            self._source = make_source(cfg.source, ctx=ctx, curve_keys=cfg.network.curve_keys)
        self._t_start = time.perf_counter()
        self._thread(
            "source", functools.partial(self.pump.run, ctx, self.source_endpoint, self._source)
        )
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

    def _running(self) -> tuple[Dispatcher, Collector]:
        if self.dispatcher is None or self.collector is None:
            raise PipelineError(f"the pipeline of run {self.run} is not started")
        return self.dispatcher, self.collector

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
        dispatcher, _ = self._running()
        model = ModelFiles.read(name, path)
        answers = dispatcher.broadcast_model(model, timeout_s)
        self.models = tuple(model if m.name == name else m for m in self.models)
        return {"model": name, "sha256": model.sha256, "workers": answers}

    def set_menu(self, menu: Menu | dict | str, timeout_s: float = 30.0) -> dict[str, Any]:
        """Broadcast new thresholds/prescales; the seed names must stay those of the run."""
        menu = self._checked_menu(menu, "set_menu")
        dispatcher, collector = self._running()
        text = json.dumps(menu.to_json())
        answers = dispatcher.broadcast_menu(text, timeout_s)
        self.menu = menu
        collector.set_menu(menu)
        return {"menu": menu.to_json(), "workers": answers}

    def swap(
        self, name: str, path: str | Path, menu: Menu | dict | str, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """Install model `name` and its menu together: one broadcast message, so every batch
        runs on the old pair or on the new one. Acknowledged with both sha256 by every worker."""
        if name not in self.model_names:
            raise ConfigError(f"swap: this run has no model {name!r} ({self.model_names})")
        menu = self._checked_menu(menu, "swap")
        dispatcher, collector = self._running()
        model = ModelFiles.read(name, path)
        text, menu_sha256 = menu_text(menu.to_json())
        answers = dispatcher.broadcast_swap(model, text, timeout_s)
        wrong = {
            w: a
            for w, a in answers.items()
            if a.get("sha256") != model.sha256 or a.get("menu_sha256") != menu_sha256
        }
        if wrong:
            raise PipelineError(f"swap: workers acknowledged other files: {json.dumps(wrong)}")
        self.models = tuple(model if m.name == name else m for m in self.models)
        self.menu = menu
        collector.set_menu(menu)
        return {
            "model": name,
            "sha256": model.sha256,
            "menu_sha256": menu_sha256,
            "menu": menu.to_json(),
            "workers": answers,
        }

    def _checked_menu(self, menu: Menu | dict | str, command: str) -> Menu:
        if not isinstance(menu, Menu):
            menu = Menu.from_json(menu)
        menu.check_models(self.model_names)
        if menu.names != self.menu.names:
            raise ConfigError(
                f"{command}: a running run keeps its seeds {self.menu.names}; got {menu.names} "
                "(change seeds between runs)"
            )
        self.check_menu(menu)
        return menu

    def check_menu(self, menu: Menu) -> None:
        """RegisterError if the menu does not fit the hardware backend's register bank."""
        b = self.cfg.backend
        check_menu_for(b.kind, b.firmware_dir, self.model_names[0], menu)

    def set_scaling(
        self,
        offset: list[int],
        shift: list[int],
        model: str | None = None,
        timeout_s: float = 30.0,
    ) -> dict[str, Any]:
        """New input offsets and shifts of ``model`` (default: the first, the one hardware
        backends run), checked here against the register ranges, then set on every worker
        between two batches: register writes on a register bank, ``with_scaling`` on the
        emulator."""
        name = model or self.model_names[0]
        if name not in self.model_names:
            raise ConfigError(f"set_scaling: this run has no model {name!r} ({self.model_names})")
        setting = InputScaling(name, tuple(offset), tuple(shift))
        b = self.cfg.backend
        files = next(m for m in self.models if m.name == name)
        check_scaling_for(
            b.kind, b.firmware_dir, name == self.model_names[0], _net_of(files), setting
        )
        dispatcher, _ = self._running()
        answers = dispatcher.broadcast_scaling(setting, timeout_s)
        return {**setting.to_json(), "workers": answers}

    # ---- status and stop ----

    def status(self) -> PipelineStatus:
        d = self.dispatcher.status() if self.dispatcher is not None else None
        c = self.collector.status() if self.collector is not None else None
        first, end = self.pump.range
        elapsed = time.perf_counter() - self._t_start if self._t_start else 0.0
        processed = c["events_processed"] if c is not None else 0
        out: PipelineStatus = {
            "state": self.state,
            "error": self.error,
            "run": self.run,
            "events_in": end - first,
            "source_done": self.source_done.is_set(),
            "source_blocked_s": self.source_blocked_s,
            "rejected": self._source.rejected() if self._source is not None else {},
            "source_refused": getattr(self._source, "refused", 0),
            "seconds": elapsed,
            "events_per_s": processed / elapsed if elapsed else 0.0,
            "monitor_endpoint": self.monitor_endpoint,
            "worker_endpoint": self.worker_endpoint,
        }
        if d is not None:
            out.update(d)
        if c is not None:
            out.update(c)
        return out

    def wait_source_done(self, timeout_s: float | None = None) -> bool:
        """True once the source has ended (replay exhausted, n_events reached or failed)."""
        return self.source_done.wait(timeout_s)

    def stop(self, drain: bool = True, timeout_s: float = DRAIN_TIMEOUT_S) -> RunSummary:
        """Source first, then drain the in-flight batches, then workers, then the collector."""
        if self._summary is not None:
            return self._summary
        if not self._started:
            raise PipelineError(f"stop: the pipeline of run {self.run} did not start")
        dispatcher, collector = self._running()
        self._stop_source.set()
        if not drain:
            self._abort.set()
        src = self._threads.get("source")
        if src is not None:
            src.join(timeout_s)
            if src.is_alive():
                self._abort.set()
                src.join(10)
        drained = dispatcher.drained.wait(timeout_s if drain else 0)
        if drain and not drained:
            log.error("run %d: in-flight batches did not drain in %.0f s", self.run, timeout_s)
        told = {w["pid"] for w in dispatcher.status()["workers"].values()}
        dispatcher.request_stop(stop_workers=True)
        self._join("dispatcher")
        self.workers.stop(told)
        collector.request_stop()
        self._join("collector")
        first, end = self.pump.range
        proof = collector.finish(first, end)
        summary = summarize(
            self.run,
            proof,
            collector.status(),
            dispatcher.status(),
            records=collector.records,
            rejected=self._source.rejected() if self._source is not None else {},
            error=self.error,
            seconds=time.perf_counter() - self._t_start,
            source_blocked_s=self.source_blocked_s,
        )
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

    def _teardown(self) -> None:
        self._stop_source.set()
        self._abort.set()
        self._join("source")
        if self.dispatcher is not None:
            self.dispatcher.request_stop(stop_workers=True)
            self._join("dispatcher")
        if self.collector is not None:
            self.collector.request_stop()
            self._join("collector")
        self.workers.kill()
        if self._source is not None:
            self._source.close()
        if self.ctx is not None:
            self.ctx.destroy(linger=0)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def held_events(self) -> dict[str, np.ndarray]:
        """Accepted events kept in memory after a storage failure (seq, seed_bits)."""
        _, collector = self._running()
        return collector.held_events()


def _net_of(files: ModelFiles) -> Any:
    """The QNet of a model's IR bytes (loaded with full validation)."""
    from l1forge.models import qnet

    with tempfile.TemporaryDirectory(prefix="l1f-ir-") as tmp:
        doc = json.loads(files.ir_json)
        (Path(tmp) / Path(str(doc["arrays_file"])).name).write_bytes(files.ir_npz)
        path = Path(tmp) / f"{files.name}.json"
        path.write_bytes(files.ir_json)
        return qnet.load(path)
