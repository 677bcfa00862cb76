"""Run control: the daemon's state machine and its persistent run numbers.

States: idle -> configured -> running -> stopped (-> configured for the next run), and error,
entered when a start, stop or the running pipeline fails; `reset` leaves error (or any state
but running) for idle. A rejected command (an illegal transition, an invalid configuration,
an unwritable folder) raises and leaves the state unchanged.

Each started run takes the next number from ``<state_dir>/run_number.json`` (written atomically,
so numbers survive restarts and are never reused) and gets a folder
``<storage.out_dir>/run<NNNNNN>/`` holding the exact configuration it ran with
(``run_config.yaml`` and ``run_config.sha256``), its accepted-event files and, once stopped,
``run_summary.json``.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from l1forge.errors import ConfigError, L1ForgeError
from l1forge.fileio import probe_writable, write_atomic
from l1forge.online.config import (
    RunConfig,
    run_config_from_dict,
    run_config_to_dict,
    run_config_to_yaml,
)
from l1forge.online.datapath.status import PipelineStatus
from l1forge.online.web.metrics import PipelineMetrics

if TYPE_CHECKING:
    from l1forge.online.datapath.pipeline import Pipeline
    from l1forge.online.dqm.service import DQMService

log = logging.getLogger(__name__)

RUN_NUMBER_FILE = "run_number.json"
RUN_CONFIG_FILE = "run_config.yaml"
RUN_SUMMARY_FILE = "run_summary.json"


class RunState(enum.StrEnum):
    """The run-control states."""

    IDLE = "idle"
    CONFIGURED = "configured"
    RUNNING = "running"
    STOPPED = "stopped"
    ERROR = "error"


class RunStatus(TypedDict):
    """What ``RunControl.status`` answers (the control socket's ``status``, ``/status``)."""

    state: str
    run: int
    last_run: int
    run_dir: str | None
    config_sha256: str | None
    error: str | None
    seconds: NotRequired[float]  # while running
    pipeline: NotRequired[PipelineStatus]  # while running
    summary: NotRequired[dict[str, Any]]  # once a run stopped: its run_summary.json


class DQMFiles(TypedDict):
    """What ``stop_dqm`` reports of a run's DQM (the run summary's ``dqm``)."""

    root_path: str
    summary_path: str
    n_lumisections: int
    n_alarms: int
    n_errors: int
    monitored_events: int
    monitored_batches: int


class DQMFailed(TypedDict):
    """``stop_dqm``'s report when the DQM service failed."""

    error: str


class TransitionError(L1ForgeError, RuntimeError):
    """A command is not allowed in the current state; the message says what is."""


class RunFailedError(L1ForgeError, RuntimeError):
    """Starting, running or stopping the pipeline failed; run control is now in state error."""


class RunNumbers:
    """The last run number, kept in ``<state_dir>/run_number.json``."""

    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / RUN_NUMBER_FILE

    def last(self) -> int:
        """The last started run (0 before the first)."""
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(
                f"run-number file {self.path} is unreadable ({exc}); fix or remove it"
            ) from exc
        last = doc.get("last_run") if isinstance(doc, dict) else None
        if isinstance(last, bool) or not isinstance(last, int) or last < 0:
            raise ConfigError(f"run-number file {self.path}: 'last_run' must be an integer >= 0")
        return last

    def take_next(self) -> int:
        """Allocate and persist the next run number."""
        run = self.last() + 1
        write_atomic(self.path, json.dumps({"last_run": run, "time": time.time()}) + "\n")
        return run


def check_writable(folder: str | Path, key: str) -> Path:
    """Create `folder` if needed and prove a file can be written there; ConfigError names it."""
    p = Path(folder)
    try:
        probe_writable(p)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"{key}: cannot write to {p} ({reason}); choose a writable folder"
        ) from exc
    return p


def summary_to_dict(summary: Any) -> dict[str, Any]:
    """A RunSummary (dataclass or object with ``to_dict``) as a JSON-able dict."""
    if hasattr(summary, "to_dict"):
        return summary.to_dict()
    if dataclasses.is_dataclass(summary) and not isinstance(summary, type):
        return json.loads(json.dumps(dataclasses.asdict(summary), default=str))
    return dict(summary)


def default_pipeline_factory(
    cfg: RunConfig, run: int, run_dir: Path, metrics: PipelineMetrics | None
) -> Pipeline:
    """`online.pipeline.Pipeline` (imported when a run starts)."""
    from l1forge.online.datapath.pipeline import Pipeline

    return Pipeline(cfg, run, run_dir, metrics=metrics)


def start_dqm(cfg: RunConfig, run: int, run_dir: Path, pipeline: Pipeline) -> DQMService:
    """Subscribe a DQM service to the pipeline's monitoring tap; its files go to run_dir/dqm."""
    from l1forge.online.dqm.config import load_config
    from l1forge.online.dqm.service import DQMService

    return DQMService(
        pipeline.monitor_endpoint,
        run=run,
        out_dir=run_dir / "dqm",
        config=load_config(cfg.monitor.dqm),
        seed_names=pipeline.menu.names,
        score_names=pipeline.model_names,
        input_rate_hz=cfg.menu.input_rate_hz,
        curve_keys=cfg.network.curve_keys,
    ).start()


def stop_dqm(dqm: DQMService, tap_batches: int | None = None) -> DQMFiles | DQMFailed:
    """Stop the DQM service once it has the run's `tap_batches` tap messages (when known) and
    write its files; a DQM failure is reported, not raised."""
    try:
        result = dqm.stop(expected_batches=tap_batches)
    except (L1ForgeError, OSError) as exc:
        log.error("DQM of run %d failed: %s", dqm.run, exc)
        return {"error": str(exc)}
    counts = dqm.counts()
    return {
        "root_path": str(result.root_path),
        "summary_path": str(result.summary_path),
        "n_lumisections": result.n_lumisections,
        "n_alarms": result.n_alarms,
        "n_errors": result.n_errors,
        "monitored_events": counts.events,
        "monitored_batches": counts.batches,
    }


PipelineFactory = Callable[[RunConfig, int, Path, PipelineMetrics | None], "Pipeline"]


class RunControl:
    """The state machine driving one `Pipeline` per run; thread-safe."""

    def __init__(
        self,
        state_dir: str | Path,
        *,
        metrics: PipelineMetrics | None = None,
        pipeline_factory: PipelineFactory = default_pipeline_factory,
    ):
        self.state_dir = check_writable(state_dir, "state_dir")
        self.numbers = RunNumbers(self.state_dir)
        self.numbers.last()  # fail now on a corrupt file, not at the first start
        self.metrics = metrics
        self._factory = pipeline_factory
        self._lock = threading.RLock()
        self._state = RunState.IDLE
        self._config: RunConfig | None = None
        self._pipeline: Pipeline | None = None
        self._dqm: DQMService | None = None  # of the running run
        self._run = 0
        self._run_dir: Path | None = None
        self._config_sha256 = ""
        self._started_at = 0.0
        self._summary: dict[str, Any] | None = None
        self._error = ""
        self._publish()

    # ---- queries ----

    @property
    def state(self) -> RunState:
        """The current state."""
        return self._state

    @property
    def config(self) -> RunConfig | None:
        """The configuration of the next (or current) run."""
        return self._config

    @property
    def run(self) -> int:
        """The current or last run number (0 before the first run of this process)."""
        return self._run

    @property
    def run_dir(self) -> Path | None:
        """The folder of the current or last run."""
        return self._run_dir

    @property
    def pipeline(self) -> Pipeline | None:
        """The running pipeline (None unless running)."""
        return self._pipeline

    @property
    def elapsed_s(self) -> float:
        """Seconds since the current run started (0 unless running)."""
        if self._state != RunState.RUNNING:
            return 0.0
        return time.monotonic() - self._started_at

    @property
    def dqm(self) -> DQMService | None:
        """The running run's DQM service (None when DQM is off or no run is running)."""
        return self._dqm

    @property
    def last_summary(self) -> dict[str, Any] | None:
        """The summary of the last stopped run."""
        return self._summary

    def status(self) -> RunStatus:
        """A JSON-able snapshot: state, run, its folder, the pipeline's counters when running."""
        pipeline = self._pipeline
        doc: RunStatus = {
            "state": str(self._state),
            "run": self._run,
            "last_run": self.numbers.last(),
            "run_dir": None if self._run_dir is None else str(self._run_dir),
            "config_sha256": self._config_sha256 or None,
            "error": self._error or None,
        }
        if self._state == RunState.RUNNING and pipeline is not None:
            doc["seconds"] = round(self.elapsed_s, 3)
            doc["pipeline"] = pipeline.status()
        if self._summary is not None:
            doc["summary"] = self._summary
        return doc

    # ---- transitions ----

    def _require(self, command: str, *allowed: RunState) -> None:
        if self._state not in allowed:
            names = " or ".join(str(s) for s in allowed)
            raise TransitionError(
                f"cannot {command} in state {self._state}: allowed only when {names}"
                + (f" (error: {self._error}; send reset)" if self._state == RunState.ERROR else "")
            )

    def configure(self, cfg: RunConfig | None = None) -> RunConfig:
        """Set the next run's configuration (None: keep the last one) after checking its folders."""
        with self._lock:
            self._require("configure", RunState.IDLE, RunState.CONFIGURED, RunState.STOPPED)
            if cfg is None:
                if self._config is None:
                    raise ConfigError("configure: no configuration given and none kept from before")
                cfg = self._config
            check_writable(cfg.storage.out_dir, "storage.out_dir")
            self._config = cfg
            self._set(RunState.CONFIGURED)
            log.info("configured: %s source, %d workers", cfg.source.kind, cfg.workers.n)
            return cfg

    def start(self) -> int:
        """Start a new run with the configured settings; returns its run number."""
        with self._lock:
            self._require("start", RunState.CONFIGURED)
            cfg = self._config
            assert cfg is not None
            out_dir = check_writable(cfg.storage.out_dir, "storage.out_dir")
            run = self.numbers.take_next()
            run_dir = out_dir / f"run{run:06d}"
            self._run, self._run_dir, self._summary, self._error = run, run_dir, None, ""
            if self.metrics is not None:
                self.metrics.run_number.set(run)
            try:
                run_dir.mkdir(parents=True, exist_ok=False)
                text = run_config_to_yaml(cfg)
                self._config_sha256 = hashlib.sha256(text.encode()).hexdigest()
                write_atomic(run_dir / RUN_CONFIG_FILE, text)
                write_atomic(
                    run_dir / "run_config.sha256", f"{self._config_sha256}  {RUN_CONFIG_FILE}\n"
                )
                self._pipeline = pipeline = self._factory(cfg, run, run_dir, self.metrics)
                self._started_at = time.monotonic()

                def subscribe_dqm(pipeline: Pipeline) -> None:  # on the tap before the first batch
                    self._dqm = start_dqm(cfg, run, run_dir, pipeline)

                pipeline.start(subscribe_dqm if cfg.monitor.dqm_enabled else None)
            except (L1ForgeError, OSError) as exc:
                self._fail(f"run {run} failed to start: {exc}")
                raise RunFailedError(f"run {run} failed to start: {exc}") from exc
            self._set(RunState.RUNNING)
            log.info("run %d started in %s", run, run_dir)
            return run

    def stop(self) -> dict[str, Any]:
        """Stop the running run: source first, then drain; returns and stores its summary."""
        with self._lock:
            self._require("stop", RunState.RUNNING)
            assert self._run_dir is not None
            try:
                summary = summary_to_dict(self._live().stop(drain=True))
            except (L1ForgeError, OSError) as exc:
                self._pipeline = None
                self._fail(f"run {self._run} failed to stop cleanly: {exc}")
                raise RunFailedError(f"run {self._run} failed to stop cleanly: {exc}") from exc
            self._pipeline = None
            summary.setdefault("run", self._run)
            if self.metrics is not None and summary.get("lost"):
                self.metrics.dropped_events.labels(reason="lost").inc(summary["lost"])
            if self._dqm is not None:
                summary["dqm"] = stop_dqm(self._dqm, summary.get("tap_batches"))
                summary["dqm_summary"] = summary["dqm"].get("summary_path")
                self._dqm = None
            summary["run_dir"] = str(self._run_dir)
            summary["config_sha256"] = self._config_sha256
            write_atomic(self._run_dir / RUN_SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
            self._summary = summary
            self._set(RunState.STOPPED)
            log.info("run %d stopped", self._run)
            return summary

    def reset(self) -> None:
        """Back to idle, forgetting the configuration; refused while a run is running."""
        with self._lock:
            self._require(
                "reset", RunState.IDLE, RunState.CONFIGURED, RunState.STOPPED, RunState.ERROR
            )
            self._abort_pipeline()
            self._config, self._error = None, ""
            self._set(RunState.IDLE)

    def fail(self, reason: str) -> None:
        """Enter the error state from outside (the daemon saw the pipeline die)."""
        with self._lock:
            self._fail(reason)

    # ---- live changes ----

    def set_model(self, name: str, path: str) -> dict[str, Any]:
        """Swap a model: broadcast to the workers when running, else change the configuration."""
        with self._lock:
            self._require("set_model", RunState.CONFIGURED, RunState.RUNNING, RunState.STOPPED)
            cfg = self._config
            assert cfg is not None
            if name not in cfg.backend.models:
                raise ConfigError(
                    f"set_model: unknown model {name!r} "
                    f"(this run has {', '.join(cfg.backend.models)})"
                )
            raw = run_config_to_dict(cfg)
            raw["backend"]["models"][name] = str(path)
            new_cfg = run_config_from_dict(raw)  # checks the path exists
            if self._state == RunState.RUNNING:
                self._live().set_model(name, new_cfg.backend.models[name])
            else:
                from l1forge.models import qnet

                qnet.load(new_cfg.backend.models[name])  # a broken IR is refused now
            self._config = new_cfg
            log.info("model %s -> %s", name, new_cfg.backend.models[name])
            return {"model": name, "path": new_cfg.backend.models[name]}

    def set_menu(self, menu_doc: dict[str, Any] | str) -> dict[str, Any]:
        """Replace the menu (``Menu.to_json`` form): live when running, else for the next run."""
        from l1forge.online.datapath.menu import Menu
        from l1forge.online.datapath.tuning import check_menu_for

        with self._lock:
            self._require("set_menu", RunState.CONFIGURED, RunState.RUNNING, RunState.STOPPED)
            cfg = self._config
            assert cfg is not None
            menu = Menu.from_json(menu_doc)
            menu.check_models(cfg.backend.models)
            b = cfg.backend
            check_menu_for(b.kind, b.firmware_dir, next(iter(b.models)), menu)
            doc = menu.to_json()
            raw = run_config_to_dict(cfg)
            raw["menu"]["seeds"] = doc["seeds"]
            raw["menu"]["input_rate_hz"] = doc["input_rate_hz"]
            new_cfg = run_config_from_dict(raw)
            if self._state == RunState.RUNNING:
                self._live().set_menu(menu)
            self._config = new_cfg
            log.info("menu replaced: %s", ", ".join(menu.names))
            return doc

    def swap(self, name: str, path: str, menu_doc: dict[str, Any] | str) -> dict[str, Any]:
        """Model `name` and its menu together: when running one broadcast, so every batch is
        processed with the old pair or the new one; else both change the next run's settings.
        Answers with the IR's and the menu's sha256 (and, running, the workers' answers)."""
        from l1forge.online.datapath.menu import Menu
        from l1forge.online.datapath.protocol import ModelFiles, menu_text

        with self._lock:
            self._require("swap", RunState.CONFIGURED, RunState.RUNNING, RunState.STOPPED)
            cfg = self._config
            assert cfg is not None
            if name not in cfg.backend.models:
                raise ConfigError(
                    f"swap: unknown model {name!r} (this run has {', '.join(cfg.backend.models)})"
                )
            menu = Menu.from_json(menu_doc)
            menu.check_models(cfg.backend.models)
            doc = menu.to_json()
            raw = run_config_to_dict(cfg)
            raw["backend"]["models"][name] = str(path)
            raw["menu"]["seeds"] = doc["seeds"]
            raw["menu"]["input_rate_hz"] = doc["input_rate_hz"]
            new_cfg = run_config_from_dict(raw)  # checks the path exists
            ir_path = new_cfg.backend.models[name]
            if self._state == RunState.RUNNING:
                out = self._live().swap(name, ir_path, menu)
            else:
                model = ModelFiles.read(name, ir_path)  # a broken IR is refused now
                out = {
                    "model": name,
                    "sha256": model.sha256,
                    "menu_sha256": menu_text(doc)[1],
                    "menu": doc,
                }
            self._config = new_cfg
            log.info("swap: model %s -> %s, menu %s", name, ir_path, out["menu_sha256"][:12])
            return {**out, "path": ir_path}

    def set_scaling(
        self, offset: list[int], shift: list[int], model: str | None = None
    ) -> dict[str, Any]:
        """New input offsets and shifts of a model's ``scale`` op on the running workers (the
        register bank of a hardware backend, the emulator's IR otherwise)."""
        with self._lock:
            self._require("set_scaling", RunState.RUNNING)
            answer = self._live().set_scaling(offset, shift, model)
            log.info("input scaling of %s replaced", answer["model"])
            return answer

    # ---- internals ----

    def _live(self) -> Pipeline:
        """The running run's pipeline (the caller has checked the state is running)."""
        assert self._pipeline is not None
        return self._pipeline

    def _set(self, state: RunState) -> None:
        self._state = state
        self._publish()

    def _publish(self) -> None:
        if self.metrics is not None:
            self.metrics.run_state.state(str(self._state))

    def _abort_pipeline(self) -> None:
        dqm, self._dqm = self._dqm, None
        if dqm is not None:
            stop_dqm(dqm)
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is None:
            return
        try:
            pipeline.stop(drain=False)
        except (L1ForgeError, OSError) as exc:
            log.warning("pipeline of run %d did not stop cleanly: %s", self._run, exc)

    def _fail(self, reason: str) -> None:
        log.error("%s", reason)
        self._abort_pipeline()
        self._error = reason
        self._set(RunState.ERROR)
