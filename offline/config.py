"""Co-design study configuration: YAML in, frozen dataclasses out, validated once here.

The sections are also checked when made in code (`dataclasses.replace` in a scan or a sweep).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from l1forge.config import (
    Flag,
    Int,
    KeyedError,
    Real,
    Section,
    check_fields,
    one_of,
    read_yaml,
    validate,
)
from l1forge.errors import ConfigError
from l1forge.offline.network import QuantMLPConfig
from l1forge.sim.materials import ABSORBERS, ACTIVE

METHODS = ("joint", "factorized_fair", "factorized_resolution", "reference")
MODELS = ("analytic", "surrogate")  # the differentiable detector model the optimizer uses

# continuous detector parameters: name -> (lower bound, upper bound)
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "n_layers": (4.0, 40.0),
    "absorber_mm": (0.5, 10.0),
    "active_mm": (0.5, 10.0),
    "cell_mm": (8.0, 60.0),
    "readout_bits": (4.0, 14.0),
}
DEFAULT_INIT: dict[str, float] = {
    "n_layers": 16.0,
    "absorber_mm": 3.0,
    "active_mm": 3.0,
    "cell_mm": 30.0,
    "readout_bits": 10.0,
}


def _over_defaults(defaults: dict[str, Any]) -> Callable[[Any], Any]:
    """A before-validator: the given detector parameters replace those of ``defaults``."""

    def merge(raw: Any) -> Any:
        if not isinstance(raw, dict):
            raise ValueError(f"expected a mapping, got {raw!r}")
        for p in raw:
            if p not in DEFAULT_BOUNDS:
                raise KeyedError(str(p), f"unknown; known {list(DEFAULT_BOUNDS)}")
        return {**defaults, **raw}

    return merge


NonNegative = Annotated[Real, Field(ge=0.0)]
Count = Annotated[Int, Field(ge=1)]


@dataclass(frozen=True)
class DetectorSpace(Section):
    """What the optimizer may change (``init`` within ``bounds``) and what stays fixed."""

    active: Annotated[str, one_of(ACTIVE)] = "scintillator"
    n_cells: Count = 5
    n_segments: Int = 2
    full_scale_gev: Real = 64.0
    noise_gev: Real = 0.02
    absorber: Annotated[str, one_of(ABSORBERS)] = "Pb"
    init: Annotated[dict[str, Real], BeforeValidator(_over_defaults(DEFAULT_INIT))] = field(
        default_factory=lambda: dict(DEFAULT_INIT)
    )
    bounds: Annotated[
        dict[str, tuple[Real, Real]], BeforeValidator(_over_defaults(DEFAULT_BOUNDS))
    ] = field(default_factory=lambda: dict(DEFAULT_BOUNDS))
    optimize_material: Flag = True

    def __post_init__(self) -> None:
        check_fields(self, "detector")
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
class UtilityConfig(Section):
    """Photon efficiency at a fixed π0 acceptance, minus a resolution term near threshold."""

    e_min_gev: Annotated[Real, Field(gt=0.5)] = 5.0
    e_max_gev: Real = 50.0
    pi0_rate: Annotated[Real, Field(gt=0.0, lt=1.0)] = 0.1
    threshold_gev: Real = 20.0
    resolution_weight: Real = 1.0
    distance_mm: Real = 1500.0

    def __post_init__(self) -> None:
        check_fields(self, "utility")
        if not 0.5 < self.e_min_gev < self.e_max_gev:
            raise ConfigError("utility.e_min_gev/e_max_gev: need 0.5 < e_min < e_max")
        if not self.e_min_gev <= self.threshold_gev <= self.e_max_gev:
            raise ConfigError("utility.threshold_gev: must lie in [e_min_gev, e_max_gev]")


@dataclass(frozen=True)
class CostConfig(Section):
    """Currency and FPGA costs with budgets enforced as steep quadratic penalties.

    Latency: the network's estimated combinational delay must fit ``latency_stages_budget``
    pipeline stages at ``clock_mhz`` (:mod:`l1forge.offline.latency_model`); training aims
    ``LATENCY_MARGIN`` (5 %) under it (:mod:`l1forge.offline.codesign`).
    """

    channel_eur: NonNegative = 5.0
    channel_eur_per_bit: NonNegative = 0.5
    detector_budget_eur: NonNegative = 4000.0
    ebops_budget: NonNegative = 60000.0
    clock_mhz: Annotated[Real, Field(gt=0.0)] = 40.0
    latency_stages_budget: Count = 2
    penalty: Real = 100.0
    material_eur_per_kg: dict[str, Real] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, "cost")


@dataclass(frozen=True)
class ScheduleConfig(Section):
    """Optimization schedule: warm-up trains the network alone before θ moves.

    ``method``: ``joint`` (θ, weights and bits together); ``factorized_fair`` (first θ alone
    for the best classical trigger, the sum-of-cells energy and a shower-width cut at the same
    π0 acceptance (:mod:`l1forge.offline.classical`), then the network on that fixed θ);
    ``factorized_resolution`` (the same, θ chosen for the sum-of-cells resolution alone); or
    ``reference`` (θ fixed at ``detector.init``). All see the same number of simulated events.
    ``warmup_steps`` >= ``steps`` keeps θ fixed.

    ``model``: the differentiable detector model, ``analytic`` (:mod:`l1forge.sim.calo_torch`)
    or ``surrogate`` (the learned flows of :mod:`l1forge.sim.surrogate`, loaded from the folder
    ``surrogate``; their training range must cover ``detector.bounds``).
    """

    steps: Count = 200
    batch: Count = 256
    lr_net: Real = 0.01
    lr_theta: Real = 0.03
    lr_bits: NonNegative = 0.0  # the layers' fractional bits; 0: lr_net
    warmup_steps: Annotated[Int, Field(ge=0)] = 50
    w_energy: Real = 1.0
    w_class: Real = 1.0
    log_every: Count = 10
    checkpoint_every: Count = 50
    seed: Int = 0
    eval_events: Count = 2000
    method: Annotated[str, one_of(METHODS)] = "joint"
    factorized_fraction: Annotated[Real, Field(gt=0.0, lt=1.0)] = 0.5
    model: Annotated[str, one_of(MODELS)] = "analytic"
    surrogate: str = "out/calo_surrogate/model"

    def __post_init__(self) -> None:
        check_fields(self, "train")


@dataclass(frozen=True)
class StudyConfig(Section):
    detector: DetectorSpace = field(default_factory=DetectorSpace)
    network: QuantMLPConfig = field(default_factory=QuantMLPConfig)
    utility: UtilityConfig = field(default_factory=UtilityConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    train: ScheduleConfig = field(default_factory=ScheduleConfig)

    @model_validator(mode="before")
    @classmethod
    def _null_network(cls, data: Any) -> Any:
        """An empty ``network:`` section means the defaults, as for the other sections."""
        if isinstance(data, dict) and "network" in data and data["network"] is None:
            return {**data, "network": {}}
        return data

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def from_dict(raw: dict[str, Any]) -> StudyConfig:
    """Validate a parsed YAML document; unknown sections or keys are errors naming them."""
    return validate(StudyConfig, raw)


def load_config(path: str | Path) -> StudyConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study config not found: {path}")
    return from_dict(read_yaml(path, "study config") or {})
