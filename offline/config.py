"""Co-design study configuration: YAML in, frozen dataclasses out, validated once here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from l1forge.errors import ConfigError
from l1forge.offline.network import QuantMLPConfig
from l1forge.sim.materials import ABSORBERS, ACTIVE

METHODS = ("joint", "factorized", "reference")

# continuous detector parameters: name -> (lower bound, upper bound)
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "n_layers": (4.0, 40.0),
    "absorber_mm": (0.5, 10.0),
    "active_mm": (0.5, 10.0),
    "cell_mm": (8.0, 60.0),
    "readout_bits": (4.0, 14.0),
}


@dataclass(frozen=True)
class DetectorSpace:
    """What the optimizer may change (``init`` within ``bounds``) and what stays fixed."""

    active: str = "scintillator"
    n_cells: int = 5
    n_segments: int = 2
    full_scale_gev: float = 64.0
    noise_gev: float = 0.02
    absorber: str = "Pb"
    init: dict[str, float] = field(
        default_factory=lambda: {
            "n_layers": 16.0,
            "absorber_mm": 3.0,
            "active_mm": 3.0,
            "cell_mm": 30.0,
            "readout_bits": 10.0,
        }
    )
    bounds: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_BOUNDS))
    optimize_material: bool = True

    def __post_init__(self) -> None:
        if self.active not in ACTIVE:
            raise ConfigError(f"detector.active: {self.active!r} is not one of {ACTIVE}")
        if self.absorber not in ABSORBERS:
            raise ConfigError(f"detector.absorber: {self.absorber!r} is not one of {ABSORBERS}")
        if self.n_cells < 1 or self.n_cells % 2 == 0:
            raise ConfigError(f"detector.n_cells: must be odd and positive, got {self.n_cells}")
        for key in DEFAULT_BOUNDS:
            if key not in self.init or key not in self.bounds:
                raise ConfigError(f"detector.init/bounds: missing {key!r}")
            lo, hi = self.bounds[key]
            if not lo < hi:
                raise ConfigError(f"detector.bounds.{key}: need lower < upper, got {lo}, {hi}")
            if not lo < self.init[key] < hi:
                raise ConfigError(f"detector.init.{key}: {self.init[key]} not inside ({lo}, {hi})")
        if self.bounds["n_layers"][0] < self.n_segments:
            raise ConfigError("detector.bounds.n_layers: lower bound below n_segments")


@dataclass(frozen=True)
class UtilityConfig:
    """Photon efficiency at a fixed π0 acceptance, minus a resolution term near threshold."""

    e_min_gev: float = 5.0
    e_max_gev: float = 50.0
    pi0_rate: float = 0.1
    threshold_gev: float = 20.0
    resolution_weight: float = 1.0
    distance_mm: float = 1500.0

    def __post_init__(self) -> None:
        if not 0.5 < self.e_min_gev < self.e_max_gev:
            raise ConfigError("utility.e_min_gev/e_max_gev: need 0.5 < e_min < e_max")
        if not 0 < self.pi0_rate < 1:
            raise ConfigError(f"utility.pi0_rate: must be in (0, 1), got {self.pi0_rate}")
        if not self.e_min_gev <= self.threshold_gev <= self.e_max_gev:
            raise ConfigError("utility.threshold_gev: must lie in [e_min_gev, e_max_gev]")


@dataclass(frozen=True)
class CostConfig:
    """Currency and FPGA costs with budgets enforced as steep quadratic penalties."""

    channel_eur: float = 5.0
    channel_eur_per_bit: float = 0.5
    detector_budget_eur: float = 4000.0
    ebops_budget: float = 60000.0
    penalty: float = 100.0
    material_eur_per_kg: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for k in ("channel_eur", "channel_eur_per_bit", "detector_budget_eur", "ebops_budget"):
            if getattr(self, k) < 0:
                raise ConfigError(f"cost.{k}: must be non-negative")


@dataclass(frozen=True)
class ScheduleConfig:
    """Optimization schedule: warm-up trains the network alone before θ moves.

    ``method``: ``joint`` (θ, weights and bits together), ``factorized`` (first θ alone for the
    best resolution of a sum-of-cells reconstruction, then the network on that fixed θ; the
    same number of simulated events in all) or ``reference`` (θ fixed at ``detector.init``).
    """

    steps: int = 200
    batch: int = 256
    lr_net: float = 0.01
    lr_theta: float = 0.03
    warmup_steps: int = 50
    w_energy: float = 1.0
    w_class: float = 1.0
    log_every: int = 10
    checkpoint_every: int = 50
    seed: int = 0
    eval_events: int = 2000
    method: str = "joint"
    factorized_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"train.method: {self.method!r} is not one of {METHODS}")
        if not 0 < self.factorized_fraction < 1:
            raise ConfigError("train.factorized_fraction: must be in (0, 1)")
        for k in ("steps", "batch", "log_every", "checkpoint_every", "eval_events"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                raise ConfigError(f"train.{k}: must be a positive integer")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(
                "train.warmup_steps: must be a non-negative integer (>= steps: θ fixed)"
            )


@dataclass(frozen=True)
class StudyConfig:
    detector: DetectorSpace = field(default_factory=DetectorSpace)
    network: QuantMLPConfig = field(default_factory=QuantMLPConfig)
    utility: UtilityConfig = field(default_factory=UtilityConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    train: ScheduleConfig = field(default_factory=ScheduleConfig)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {
    "detector": DetectorSpace,
    "network": QuantMLPConfig,
    "utility": UtilityConfig,
    "cost": CostConfig,
    "train": ScheduleConfig,
}


def _bound(key: str, v: Any) -> tuple[float, float]:
    if not isinstance(v, list | tuple) or len(v) != 2:
        raise ConfigError(f"{key}: expected [lower, upper], got {v!r}")
    return float(v[0]), float(v[1])


def _real(key: str, v: Any) -> float:
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise ConfigError(f"{key}: expected a number, got {v!r}")
    return float(v)


def _section(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in known:
            raise ConfigError(f"{name}.{k}: unknown key; known: {sorted(known)}")
    kw = dict(raw)
    if name == "detector":
        base = cls()
        for k in ("init", "bounds"):
            if k in kw:
                if not isinstance(kw[k], dict):
                    raise ConfigError(f"detector.{k}: expected a mapping")
                for p in kw[k]:
                    if p not in DEFAULT_BOUNDS:
                        raise ConfigError(
                            f"detector.{k}.{p}: unknown; known {list(DEFAULT_BOUNDS)}"
                        )
                merged = dict(getattr(base, k))
                for p, v in kw[k].items():
                    where = f"detector.{k}.{p}"
                    merged[p] = _bound(where, v) if k == "bounds" else _real(where, v)
                kw[k] = merged
    try:
        return cls(**kw)
    except TypeError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def from_dict(raw: dict[str, Any]) -> StudyConfig:
    """Validate a parsed YAML document; unknown sections or keys are errors naming them."""
    if not isinstance(raw, dict):
        raise ConfigError("study config: expected a mapping at the top level")
    for k in raw:
        if k not in SECTIONS:
            raise ConfigError(f"{k}: unknown section; known: {sorted(SECTIONS)}")
    return StudyConfig(**{k: _section(k, cls, raw.get(k)) for k, cls in SECTIONS.items()})


def load_config(path: str | Path) -> StudyConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return from_dict(raw)
