"""Run configuration of the online daemon: YAML in, frozen dataclasses out, validated once.

Every error is a `ConfigError` whose message starts with the exact dotted key (``source.rate_hz``,
``menu.seeds[2].model``) and says what is expected (`l1forge.config` does the checking). Relative
paths in a YAML file are resolved against that file's folder; those of the embedded default
(`run_default.yaml`) against the working directory, so it points at `make demo`'s outputs under
``out/demo``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, model_validator

from l1forge.config import Flag, Int, KeyedError, Real, Section, Text, one_of, parse_yaml, validate
from l1forge.errors import ConfigError
from l1forge.firmware.sim import SIMULATORS
from l1forge.online.security import endpoint_host, is_loopback
from l1forge.records import record_json
from l1forge.sim.l1objects import LHC_INPUT_RATE_HZ

SOURCE_KINDS = ("replay", "pythia", "zmq")
BACKEND_KINDS = ("emulator", "rtl", "pynq")  # what online.datapath.backends.make_backend builds
TRANSPORTS = ("ipc", "tcp")
DEFAULT_RESOURCE = "run_default.yaml"


def _located(raw: Any, info: ValidationInfo, must_exist: str | None) -> str:
    """``raw`` as an absolute path (relative ones from the context's ``base``); ``must_exist``:
    None, "file" or "folder"."""
    if not isinstance(raw, str) or not raw:
        raise ValueError(f"expected a non-empty string, got {raw!r}")
    p = Path(raw).expanduser()
    if not p.is_absolute():
        p = Path((info.context or {}).get("base", ".")) / p
    if must_exist and not (p.is_dir() if must_exist == "folder" else p.is_file()):
        raise ValueError(f"{must_exist} {p} not found")
    return str(p)


def _file(raw: str, info: ValidationInfo) -> str:
    return _located(raw, info, "file")


def _folder(raw: str, info: ValidationInfo) -> str:
    return _located(raw, info, "folder")


def _new_path(raw: str, info: ValidationInfo) -> str:
    return _located(raw, info, None)


def _listed(raw: Any) -> Any:
    return [raw] if isinstance(raw, str) else raw


File = Annotated[Text, AfterValidator(_file)]  # an existing file
Folder = Annotated[Text, AfterValidator(_folder)]  # an existing folder
OutPath = Annotated[Text, AfterValidator(_new_path)]  # made when needed
Texts = Annotated[tuple[Text, ...], BeforeValidator(_listed)]  # one string or a list
Positive = Annotated[Real, Field(gt=0)]
Port = Annotated[Int, Field(ge=0, le=65535)]


@dataclass(frozen=True)
class SourceConfig(Section):
    """Where events come from: replayed HDF5 files, live Pythia, or a ZeroMQ input stream."""

    kind: Annotated[str, one_of(SOURCE_KINDS)] = "replay"
    # replay: HDF5 files, read one after the other
    paths: Annotated[tuple[File, ...], BeforeValidator(_listed)] = ()
    rate_hz: Positive | None = None  # None: as fast as the pipeline takes them
    loop: Flag = False  # replay: start again at the end (needs n_events or duration_s to end)
    n_events: Annotated[Int, Field(ge=1)] | None = None  # stop the source after this many
    processes: Texts = ("minbias",)  # pythia
    pileup: Annotated[Real, Field(ge=0.0, le=1000.0)] = 20.0  # pythia
    seed: Annotated[Int, Field(ge=0, le=(1 << 31) - 1)] = 1  # pythia
    endpoint: Text | None = None  # zmq: the DAQ's PUSH to connect to (or, with bind, ours)
    bind: Flag = False  # zmq: the daemon binds `endpoint` and DAQ senders connect to it
    # zmq: CURVE key folder of the input link (null: network.curve_keys); see docs/online.md
    curve_keys: Folder | None = None

    @property
    def path(self) -> str | None:
        """The first replay file (None when there is none)."""
        return self.paths[0] if self.paths else None

    @model_validator(mode="before")
    @classmethod
    def _one_path(cls, data: Any, info: ValidationInfo) -> Any:
        """``path: x`` is ``paths: [x]``, checked under its own key."""
        if not isinstance(data, dict) or "path" not in data:
            return data
        if "paths" in data:
            raise KeyedError("paths", "give either source.path or source.paths, not both")
        try:
            path = _located(data["path"], info, "file")
        except ValueError as exc:
            raise KeyedError("path", str(exc)) from None
        return {**{k: v for k, v in data.items() if k != "path"}, "paths": [path]}

    @model_validator(mode="after")
    def _needs(self) -> SourceConfig:
        if self.kind == "replay" and not self.paths:
            raise KeyedError("path", "missing (a replay source needs an HDF5 event file)")
        if self.kind == "zmq" and self.endpoint is None:
            raise KeyedError("endpoint", "missing (a zmq source needs an endpoint to connect)")
        if self.kind == "pythia" and not self.processes:
            raise KeyedError("processes", "a pythia source needs at least one process")
        return self


@dataclass(frozen=True)
class BackendConfig(Section):
    """Which hardware or model runs the networks, and the qnet IR of each named model."""

    kind: Annotated[str, one_of(BACKEND_KINDS)] = "emulator"
    models: dict[str, File] = field(default_factory=dict)  # model name -> qnet IR path
    firmware_dir: Folder | None = None  # rtl / pynq
    simulator: Annotated[str, one_of(SIMULATORS)] = "verilator"  # rtl
    bitfile: File | None = None  # pynq

    @model_validator(mode="after")
    def _needs(self) -> BackendConfig:
        if not self.models:
            raise KeyedError(
                "models",
                "expected a mapping of model name -> qnet IR path, "
                "e.g. {ad: out/demo/ad/encoder.qnet.json}, got {}",
            )
        for name in self.models:
            if not name.isidentifier():
                raise KeyedError(f"models.{name}", "a model name must be an identifier")
        if self.kind in ("rtl", "pynq") and self.firmware_dir is None:
            raise KeyedError("firmware_dir", f"missing (the {self.kind} backend needs it)")
        if self.kind == "pynq" and self.bitfile is None:
            raise KeyedError("bitfile", "missing (the pynq backend needs it)")
        return self


@dataclass(frozen=True)
class WorkersConfig(Section):
    """The worker pool and the lossless dispatcher's credit and liveness settings."""

    n: Annotated[Int, Field(ge=0, le=256)] = 2
    transport: Annotated[str, one_of(TRANSPORTS)] = "ipc"
    credits: Annotated[Int, Field(ge=1, le=1024)] = 4  # batches in flight per worker
    heartbeat_s: Annotated[Positive, Field(le=60.0)] = 0.5
    # a silent worker is declared dead and its batches requeued
    timeout_s: Annotated[Positive, Field(le=3600.0)] = 3.0
    hosts: Texts = ()  # remote hosts expected to connect (`l1forge online worker`)

    @model_validator(mode="after")
    def _timeout_exceeds_heartbeats(self) -> WorkersConfig:
        if self.timeout_s <= 2 * self.heartbeat_s:
            raise KeyedError(
                "timeout_s",
                f"must exceed twice workers.heartbeat_s ({self.heartbeat_s}), got {self.timeout_s}",
            )
        if self.hosts and self.transport != "tcp":
            raise KeyedError("transport", "remote workers (workers.hosts) need tcp, got 'ipc'")
        if self.n == 0 and not self.hosts:
            raise KeyedError(
                "hosts", "workers.n is 0: list the remote hosts whose workers serve the run"
            )
        return self


@dataclass(frozen=True)
class SeedConfig(Section):
    """One trigger seed as configured; field names match `online.menu.Seed`."""

    name: Text
    model: Annotated[str, Field(strict=True)] = ""  # a key of backend.models, "": zero bias
    threshold: Real | None = None  # None: calibrated from target_rate_hz
    prescale: Annotated[Int, Field(ge=1, le=1 << 31)] = 1
    target_rate_hz: Positive | None = None

    @model_validator(mode="after")
    def _threshold_or_rate(self) -> SeedConfig:
        if self.model and self.threshold is None and self.target_rate_hz is None:
            raise KeyedError("", f"give threshold or target_rate_hz for seed {self.name!r}")
        return self


def _default_menu(raw: Any) -> Any:
    return None if raw == "default" else raw


@dataclass(frozen=True)
class MenuConfig(Section):
    """The trigger menu: explicit seeds or None for `online.menu.default_menu`."""

    seeds: Annotated[
        Annotated[tuple[SeedConfig, ...], Field(min_length=1)] | None,
        BeforeValidator(_default_menu),
    ] = None
    calibration: File | None = None  # zero-bias HDF5 for target rates; None: the replay file
    input_rate_hz: Positive = LHC_INPUT_RATE_HZ

    @model_validator(mode="after")
    def _unique_names(self) -> MenuConfig:
        names = [s.name for s in self.seeds or ()]
        if len(names) > 32:
            raise KeyedError("seeds", "at most 32 seeds (one bit each in seed_bits)")
        for i, n in enumerate(names):
            if n in names[:i]:
                raise KeyedError(f"seeds[{i}].name", f"duplicate seed name {n!r}")
        return self


@dataclass(frozen=True)
class StorageConfig(Section):
    """Where accepted events go, how they are cut into lumisections, and the disk reserve."""

    out_dir: OutPath = "out/online"
    # lumisection = seq // events_per_lumisection
    events_per_lumisection: Annotated[Int, Field(ge=1)] = 100_000
    min_free_mb: Annotated[Real, Field(ge=0.0)] = 100.0
    # disk full: hold the data (back-pressure to the source) and retry this long before the
    # run goes to error; 0: error at once
    full_wait_s: Annotated[Real, Field(ge=0.0, le=86400.0)] = 0.0


@dataclass(frozen=True)
class NetworkConfig(Section):
    """Bind address and ports; CURVE keys are required for any non-loopback host."""

    host: Text = "127.0.0.1"
    control_port: Port = 0  # 0: a free port, written to <state_dir>/endpoints.json
    metrics_port: Port = 0
    monitor_port: Port = 0
    # workers.transport tcp: the dispatcher's port; fixed, remote workers serve run after run
    worker_port: Port = 0
    curve_keys: Folder | None = None  # folder made by `l1forge online keys`
    web_max_connections: Annotated[Int, Field(ge=1, le=4096)] = 64  # HTTP requests at once
    web_timeout_s: Annotated[Positive, Field(le=600.0)] = 5.0  # to send a whole HTTP request

    @property
    def loopback(self) -> bool:
        """True when only this machine can reach the sockets."""
        return is_loopback(self.host)

    @model_validator(mode="after")
    def _keys_off_loopback(self) -> NetworkConfig:
        if self.curve_keys is None and not self.loopback:
            raise KeyedError(
                "curve_keys",
                f"required when network.host is not loopback (got {self.host!r}); "
                "make keys with `l1forge online keys --out DIR` or bind 127.0.0.1",
            )
        return self


@dataclass(frozen=True)
class MonitorConfig(Section):
    """The monitoring tap and data-quality monitoring."""

    # share of batches published on the monitoring tap
    fraction: Annotated[Real, Field(ge=0.0, le=1.0)] = 0.05
    dqm: File | None = None  # DQM YAML; None: online/dqm_default.yaml
    dqm_enabled: Flag = True


@dataclass(frozen=True)
class RunConfig(Section):
    """Everything one run needs; stored as run_config.yaml next to the run's data."""

    source: SourceConfig
    backend: BackendConfig
    workers: WorkersConfig = WorkersConfig()
    menu: MenuConfig = MenuConfig()
    storage: StorageConfig = StorageConfig()
    network: NetworkConfig = NetworkConfig()
    monitor: MonitorConfig = MonitorConfig()
    batch_size: Annotated[Int, Field(ge=1, le=1 << 20)] = 4096
    state_dir: OutPath = "out/online/state"  # run-number file, endpoints.json
    # the daemon stops the run after this long (None: no limit)
    duration_s: Positive | None = None

    @model_validator(mode="before")
    @classmethod
    def _sections_present(cls, data: Any) -> Any:
        """Source and backend are required; absent sections are checked as null (defaults)."""
        for name in ("source", "backend"):
            if data is None or (isinstance(data, dict) and name not in data):
                raise KeyedError(name, "missing section")
        optional = ("workers", "menu", "storage", "network", "monitor")
        return {**dict.fromkeys(optional), **data} if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _across_sections(self) -> RunConfig:
        models = self.backend.models
        for i, seed in enumerate(self.menu.seeds or ()):
            if seed.model and seed.model not in models:
                raise KeyedError(
                    f"menu.seeds[{i}].model",
                    f"expected one of backend.models ({', '.join(models)}) or '' for "
                    f"zero bias, got {seed.model!r}",
                )
        src = self.source
        if src.kind == "zmq" and source_keys(self) is None:
            host = endpoint_host(src.endpoint or "")
            if host is not None and not is_loopback(host):
                raise KeyedError(
                    "source.curve_keys",
                    f"required for a zmq source on a non-loopback endpoint ({src.endpoint!r}); "
                    "set source.curve_keys or network.curve_keys (`l1forge online keys --out "
                    "DIR`)",
                )
        if src.kind == "replay" and src.loop and src.n_events is None and self.duration_s is None:
            raise KeyedError(
                "source.loop", "a looping replay never ends; set source.n_events or duration_s"
            )
        return self


def source_keys(cfg: RunConfig) -> str | None:
    """The CURVE key folder of a zmq source: its own, else the daemon's network keys."""
    return cfg.source.curve_keys or cfg.network.curve_keys


def run_config_from_dict(raw: Any, base_dir: str | Path = ".") -> RunConfig:
    """Validate a parsed YAML mapping; relative paths are taken from `base_dir`."""
    return validate(RunConfig, raw, context={"base": Path(base_dir)})


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of `raw` with dotted keys (``source.path``) set to the given values."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{dotted}: {p} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.sub=value`` from the command line; the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. source.n_events=1000")
    return key.strip(), yaml.safe_load(value)


def default_config_text() -> str:
    """The embedded default run (emulator, replay of the demo's events, 2 workers, loopback)."""
    return resources.files("l1forge.online").joinpath(DEFAULT_RESOURCE).read_text()


def load_run_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Read and validate a run YAML (None: the embedded default) with optional dotted overrides."""
    if path is None:
        raw, base, where = parse_yaml(default_config_text(), DEFAULT_RESOURCE), Path.cwd(), None
    else:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read run configuration {p}: {exc.strerror}") from exc
        raw, base, where = parse_yaml(text, str(p)), p.resolve().parent, p
    if raw is None:
        raise ConfigError(f"{where}: the run configuration is empty")
    if overrides:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping at the top level")
        raw = apply_overrides(raw, overrides)
    try:
        return run_config_from_dict(raw, base)
    except ConfigError as exc:
        if where is None:
            hint = "embedded default run (make its inputs with `make demo`, or pass --config)"
            raise ConfigError(f"{hint}: {exc}") from None
        raise ConfigError(f"{where}: {exc}") from None


def run_config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain YAML/JSON-able mapping that `run_config_from_dict` reads back to an equal config."""
    return record_json(cfg)


def run_config_to_yaml(cfg: RunConfig) -> str:
    """The YAML text stored as each run's run_config.yaml (absolute paths, every key explicit)."""
    return yaml.safe_dump(run_config_to_dict(cfg), sort_keys=False)
