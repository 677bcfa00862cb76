"""Run configuration of the online daemon: YAML in, frozen dataclasses out, validated once.

Every error is a `ConfigError` whose message starts with the exact dotted key (``source.rate_hz``,
``menu.seeds[2].model``) and says what is expected. Relative paths in a YAML file are resolved
against that file's folder; those of the embedded default (`run_default.yaml`) against the
working directory, so it points at `make demo`'s outputs under ``out/demo``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from l1forge.errors import ConfigError
from l1forge.firmware.sim import SIMULATORS
from l1forge.online.security import is_loopback
from l1forge.online.validation import integer as _int
from l1forge.online.validation import number as _float
from l1forge.sim.l1objects import LHC_INPUT_RATE_HZ

SOURCE_KINDS = ("replay", "pythia", "zmq")
BACKEND_KINDS = ("emulator", "rtl", "pynq")  # what online.datapath.backends.make_backend builds
TRANSPORTS = ("ipc", "tcp")
DEFAULT_RESOURCE = "run_default.yaml"


@dataclass(frozen=True)
class SourceConfig:
    """Where events come from: replayed HDF5 files, live Pythia, or a ZeroMQ input stream."""

    kind: str = "replay"
    paths: tuple[str, ...] = ()  # replay: HDF5 files, read one after the other
    rate_hz: float | None = None  # None: as fast as the pipeline takes them
    loop: bool = False  # replay: start again at the end (needs n_events or duration_s to end)
    n_events: int | None = None  # stop the source after this many events
    processes: tuple[str, ...] = ("minbias",)  # pythia
    pileup: float = 20.0  # pythia
    seed: int = 1  # pythia
    endpoint: str | None = None  # zmq: where to connect (a PUSH/PUB of wire-format batches)

    @property
    def path(self) -> str | None:
        """The first replay file (None when there is none)."""
        return self.paths[0] if self.paths else None


@dataclass(frozen=True)
class BackendConfig:
    """Which hardware or model runs the networks, and the qnet IR of each named model."""

    kind: str = "emulator"
    models: dict[str, str] = field(default_factory=dict)  # model name -> qnet IR path
    firmware_dir: str | None = None  # rtl / pynq
    simulator: str = "verilator"  # rtl
    bitfile: str | None = None  # pynq


@dataclass(frozen=True)
class WorkersConfig:
    """The worker pool and the lossless dispatcher's credit and liveness settings."""

    n: int = 2
    transport: str = "ipc"
    credits: int = 4  # batches in flight per worker
    heartbeat_s: float = 0.5
    timeout_s: float = 3.0  # a silent worker is declared dead and its batches requeued
    hosts: tuple[str, ...] = ()  # remote hosts expected to connect (`l1forge online worker`)


@dataclass(frozen=True)
class SeedConfig:
    """One trigger seed as configured; field names match `online.menu.Seed`."""

    name: str
    model: str  # a key of backend.models, or "" for a zero-bias seed
    threshold: float | None = None  # None: calibrated from target_rate_hz
    prescale: int = 1
    target_rate_hz: float | None = None


@dataclass(frozen=True)
class MenuConfig:
    """The trigger menu: explicit seeds or None for `online.menu.default_menu`."""

    seeds: tuple[SeedConfig, ...] | None = None
    calibration: str | None = None  # zero-bias HDF5 for target rates; None: the replay file
    input_rate_hz: float = LHC_INPUT_RATE_HZ


@dataclass(frozen=True)
class StorageConfig:
    """Where accepted events go, how they are cut into lumisections, and the disk reserve."""

    out_dir: str = "out/online"
    events_per_lumisection: int = 100_000  # lumisection = seq // events_per_lumisection
    min_free_mb: float = 100.0


@dataclass(frozen=True)
class NetworkConfig:
    """Bind address and ports; CURVE keys are required for any non-loopback host."""

    host: str = "127.0.0.1"
    control_port: int = 0  # 0: a free port, written to <state_dir>/endpoints.json
    metrics_port: int = 0
    monitor_port: int = 0
    curve_keys: str | None = None  # folder made by `l1forge online keys`

    @property
    def loopback(self) -> bool:
        """True when only this machine can reach the sockets."""
        return is_loopback(self.host)


@dataclass(frozen=True)
class MonitorConfig:
    """The monitoring tap and data-quality monitoring."""

    fraction: float = 0.05  # share of batches published on the monitoring tap
    dqm: str | None = None  # DQM YAML; None: online/dqm_default.yaml
    dqm_enabled: bool = True


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; stored as run_config.yaml next to the run's data."""

    source: SourceConfig
    backend: BackendConfig
    workers: WorkersConfig = WorkersConfig()
    menu: MenuConfig = MenuConfig()
    storage: StorageConfig = StorageConfig()
    network: NetworkConfig = NetworkConfig()
    monitor: MonitorConfig = MonitorConfig()
    batch_size: int = 4096
    state_dir: str = "out/online/state"  # run-number file, endpoints.json
    duration_s: float | None = None  # the daemon stops the run after this long (None: no limit)


# ---- validation helpers: each takes the dotted key it reports ----


def _mapping(raw: Any, key: str, allowed: set[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(raw).__name__}")
    for k in raw:
        if not isinstance(k, str) or k not in allowed:
            where = f"{key}.{k}" if key else str(k)
            raise ConfigError(f"{where}: unknown key (allowed: {', '.join(sorted(allowed))})")
    return raw


def _bool(raw: Any, key: str) -> bool:
    if not isinstance(raw, bool):
        raise ConfigError(f"{key}: expected true or false, got {raw!r}")
    return raw


def _str(raw: Any, key: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{key}: expected a non-empty string, got {raw!r}")
    return raw


def _choice(raw: Any, key: str, choices: tuple[str, ...]) -> str:
    if raw not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {raw!r}")
    return raw


def _opt(raw: Any, conv: Any, key: str, *args: Any) -> Any:
    return None if raw is None else conv(raw, key, *args)


def _path(raw: Any, key: str, base: Path, *, must_exist: bool, is_dir: bool = False) -> str:
    p = Path(_str(raw, key)).expanduser()
    if not p.is_absolute():
        p = base / p
    if must_exist and not (p.is_dir() if is_dir else p.is_file()):
        what = "folder" if is_dir else "file"
        raise ConfigError(f"{key}: {what} {p} not found")
    return str(p)


def _port(raw: Any, key: str) -> int:
    return _int(raw, key, 0, 65535)


def _str_list(raw: Any, key: str) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise ConfigError(f"{key}: expected a list of strings, got {raw!r}")
    return tuple(_str(v, f"{key}[{i}]") for i, v in enumerate(raw))


# ---- sections ----


def _source(raw: Any, base: Path) -> SourceConfig:
    allowed = {"kind", "path", "paths", "rate_hz", "loop", "n_events"}
    allowed |= {"processes", "pileup", "seed", "endpoint"}
    m = _mapping(raw, "source", allowed)
    d = SourceConfig()
    kind = _choice(m.get("kind", d.kind), "source.kind", SOURCE_KINDS)
    if "path" in m and "paths" in m:
        raise ConfigError("source.paths: give either source.path or source.paths, not both")
    key = "source.path" if "path" in m else "source.paths"
    raw_paths = _str_list(m.get("path", m.get("paths", [])), key)
    paths = tuple(
        _path(p, key if key == "source.path" else f"{key}[{i}]", base, must_exist=True)
        for i, p in enumerate(raw_paths)
    )
    if kind == "replay" and not paths:
        raise ConfigError("source.path: missing (a replay source needs an HDF5 event file)")
    endpoint = _opt(m.get("endpoint"), _str, "source.endpoint")
    if kind == "zmq" and endpoint is None:
        raise ConfigError("source.endpoint: missing (a zmq source needs an endpoint to connect)")
    processes = _str_list(m.get("processes", list(d.processes)), "source.processes")
    if kind == "pythia" and not processes:
        raise ConfigError("source.processes: a pythia source needs at least one process")
    return SourceConfig(
        kind=kind,
        paths=paths,
        rate_hz=_opt(m.get("rate_hz"), _float, "source.rate_hz"),
        loop=_bool(m.get("loop", d.loop), "source.loop"),
        n_events=_opt(m.get("n_events"), _int, "source.n_events", 1),
        processes=processes,
        pileup=_float(m.get("pileup", d.pileup), "source.pileup", 0.0, 1000.0, strict=False),
        seed=_int(m.get("seed", d.seed), "source.seed", 0, (1 << 31) - 1),
        endpoint=endpoint,
    )


def _backend(raw: Any, base: Path) -> BackendConfig:
    m = _mapping(raw, "backend", {"kind", "models", "firmware_dir", "simulator", "bitfile"})
    d = BackendConfig()
    kind = _choice(m.get("kind", d.kind), "backend.kind", BACKEND_KINDS)
    models_raw = m.get("models")
    if not isinstance(models_raw, dict) or not models_raw:
        raise ConfigError(
            "backend.models: expected a mapping of model name -> qnet IR path, "
            f"e.g. {{ad: out/demo/ad/encoder.qnet.json}}, got {models_raw!r}"
        )
    models: dict[str, str] = {}
    for name, path in models_raw.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"backend.models.{name}: a model name must be an identifier")
        models[name] = _path(path, f"backend.models.{name}", base, must_exist=True)
    firmware_dir = m.get("firmware_dir")
    if kind in ("rtl", "pynq") and firmware_dir is None:
        raise ConfigError(f"backend.firmware_dir: missing (the {kind} backend needs it)")
    bitfile = m.get("bitfile")
    if kind == "pynq" and bitfile is None:
        raise ConfigError("backend.bitfile: missing (the pynq backend needs it)")
    return BackendConfig(
        kind=kind,
        models=models,
        firmware_dir=None
        if firmware_dir is None
        else _path(firmware_dir, "backend.firmware_dir", base, must_exist=True, is_dir=True),
        simulator=_choice(m.get("simulator", d.simulator), "backend.simulator", SIMULATORS),
        bitfile=None
        if bitfile is None
        else _path(bitfile, "backend.bitfile", base, must_exist=True),
    )


def _workers(raw: Any) -> WorkersConfig:
    allowed = {"n", "transport", "credits", "heartbeat_s", "timeout_s", "hosts"}
    m = _mapping(raw, "workers", allowed)
    d = WorkersConfig()
    heartbeat = _float(m.get("heartbeat_s", d.heartbeat_s), "workers.heartbeat_s", hi=60.0)
    timeout = _float(m.get("timeout_s", d.timeout_s), "workers.timeout_s", hi=3600.0)
    if timeout <= 2 * heartbeat:
        raise ConfigError(
            f"workers.timeout_s: must exceed twice workers.heartbeat_s ({heartbeat}), got {timeout}"
        )
    return WorkersConfig(
        n=_int(m.get("n", d.n), "workers.n", 0, 256),
        transport=_choice(m.get("transport", d.transport), "workers.transport", TRANSPORTS),
        credits=_int(m.get("credits", d.credits), "workers.credits", 1, 1024),
        heartbeat_s=heartbeat,
        timeout_s=timeout,
        hosts=_str_list(m.get("hosts", []), "workers.hosts"),
    )


def _seed(raw: Any, key: str, models: dict[str, str]) -> SeedConfig:
    m = _mapping(raw, key, {"name", "model", "threshold", "prescale", "target_rate_hz"})
    if "name" not in m:
        raise ConfigError(f"{key}.name: missing")
    name = _str(m["name"], f"{key}.name")
    model = m.get("model", "")
    if not isinstance(model, str) or (model and model not in models):
        raise ConfigError(
            f"{key}.model: expected one of backend.models ({', '.join(models)}) or '' for "
            f"zero bias, got {model!r}"
        )
    threshold = m.get("threshold")
    threshold = None if threshold is None else _float(threshold, f"{key}.threshold", -math.inf)
    target = _opt(m.get("target_rate_hz"), _float, f"{key}.target_rate_hz")
    if model and threshold is None and target is None:
        raise ConfigError(f"{key}: give threshold or target_rate_hz for seed {name!r}")
    return SeedConfig(
        name=name,
        model=model,
        threshold=threshold,
        prescale=_int(m.get("prescale", 1), f"{key}.prescale", 1, 1 << 31),
        target_rate_hz=target,
    )


def _menu(raw: Any, base: Path, models: dict[str, str]) -> MenuConfig:
    m = _mapping(raw, "menu", {"seeds", "calibration", "input_rate_hz"})
    d = MenuConfig()
    seeds: tuple[SeedConfig, ...] | None = None
    seeds_raw = m.get("seeds")
    if seeds_raw is not None and seeds_raw != "default":
        if not isinstance(seeds_raw, list) or not seeds_raw:
            raise ConfigError("menu.seeds: expected a non-empty list of seeds or 'default'")
        seeds = tuple(_seed(s, f"menu.seeds[{i}]", models) for i, s in enumerate(seeds_raw))
        names = [s.name for s in seeds]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise ConfigError(f"menu.seeds[{i}].name: duplicate seed name {n!r}")
        if len(seeds) > 32:
            raise ConfigError("menu.seeds: at most 32 seeds (one bit each in seed_bits)")
    calibration = m.get("calibration")
    return MenuConfig(
        seeds=seeds,
        calibration=None
        if calibration is None
        else _path(calibration, "menu.calibration", base, must_exist=True),
        input_rate_hz=_float(m.get("input_rate_hz", d.input_rate_hz), "menu.input_rate_hz"),
    )


def _storage(raw: Any, base: Path) -> StorageConfig:
    m = _mapping(raw, "storage", {"out_dir", "events_per_lumisection", "min_free_mb"})
    d = StorageConfig()
    return StorageConfig(
        out_dir=_path(m.get("out_dir", d.out_dir), "storage.out_dir", base, must_exist=False),
        events_per_lumisection=_int(
            m.get("events_per_lumisection", d.events_per_lumisection),
            "storage.events_per_lumisection",
            1,
        ),
        min_free_mb=_float(
            m.get("min_free_mb", d.min_free_mb), "storage.min_free_mb", strict=False
        ),
    )


def _network(raw: Any, base: Path) -> NetworkConfig:
    allowed = {"host", "control_port", "metrics_port", "monitor_port", "curve_keys"}
    m = _mapping(raw, "network", allowed)
    d = NetworkConfig()
    host = _str(m.get("host", d.host), "network.host")
    keys = m.get("curve_keys")
    keys = (
        None
        if keys is None
        else _path(keys, "network.curve_keys", base, must_exist=True, is_dir=True)
    )
    if keys is None and not is_loopback(host):
        raise ConfigError(
            f"network.curve_keys: required when network.host is not loopback (got {host!r}); "
            "make keys with `l1forge online keys --out DIR` or bind 127.0.0.1"
        )
    return NetworkConfig(
        host=host,
        control_port=_port(m.get("control_port", d.control_port), "network.control_port"),
        metrics_port=_port(m.get("metrics_port", d.metrics_port), "network.metrics_port"),
        monitor_port=_port(m.get("monitor_port", d.monitor_port), "network.monitor_port"),
        curve_keys=keys,
    )


def _monitor(raw: Any, base: Path) -> MonitorConfig:
    m = _mapping(raw, "monitor", {"fraction", "dqm", "dqm_enabled"})
    d = MonitorConfig()
    dqm = m.get("dqm")
    return MonitorConfig(
        fraction=_float(m.get("fraction", d.fraction), "monitor.fraction", 0.0, 1.0, strict=False),
        dqm=None if dqm is None else _path(dqm, "monitor.dqm", base, must_exist=True),
        dqm_enabled=_bool(m.get("dqm_enabled", d.dqm_enabled), "monitor.dqm_enabled"),
    )


def run_config_from_dict(raw: Any, base_dir: str | Path = ".") -> RunConfig:
    """Validate a parsed YAML mapping; relative paths are taken from `base_dir`."""
    sections = {"source", "backend", "workers", "menu", "storage", "network", "monitor"}
    top = _mapping(raw, "", sections | {"batch_size", "state_dir", "duration_s"})
    base = Path(base_dir)
    for name in ("source", "backend"):
        if name not in top:
            raise ConfigError(f"{name}: missing section")
    backend = _backend(top["backend"], base)
    source = _source(top["source"], base)
    duration = _opt(top.get("duration_s"), _float, "duration_s")
    if source.kind == "replay" and source.loop and source.n_events is None and duration is None:
        raise ConfigError(
            "source.loop: a looping replay never ends; set source.n_events or duration_s"
        )
    return RunConfig(
        source=source,
        backend=backend,
        workers=_workers(top.get("workers")),
        menu=_menu(top.get("menu"), base, backend.models),
        storage=_storage(top.get("storage"), base),
        network=_network(top.get("network"), base),
        monitor=_monitor(top.get("monitor"), base),
        batch_size=_int(top.get("batch_size", 4096), "batch_size", 1, 1 << 20),
        state_dir=_path(
            top.get("state_dir", "out/online/state"), "state_dir", base, must_exist=False
        ),
        duration_s=duration,
    )


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


def _read_yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({exc})") from exc


def default_config_text() -> str:
    """The embedded default run (emulator, replay of the demo's events, 2 workers, loopback)."""
    return resources.files("l1forge.online").joinpath(DEFAULT_RESOURCE).read_text()


def load_run_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Read and validate a run YAML (None: the embedded default) with optional dotted overrides."""
    if path is None:
        raw, base, where = _read_yaml(default_config_text(), "run_default.yaml"), Path.cwd(), None
    else:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read run configuration {p}: {exc.strerror}") from exc
        raw, base, where = _read_yaml(text, str(p)), p.resolve().parent, p
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

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    out = plain(asdict(cfg))
    out["source"]["processes"] = list(cfg.source.processes)
    return out


def run_config_to_yaml(cfg: RunConfig) -> str:
    """The YAML text stored as each run's run_config.yaml (absolute paths, every key explicit)."""
    return yaml.safe_dump(run_config_to_dict(cfg), sort_keys=False)
