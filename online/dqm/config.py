"""DQM configuration: YAML in, frozen dataclasses out, every error naming its exact key.

The dataclasses mirror the YAML file (`dqm_default.yaml`); `l1forge.config` does the checking.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

import yaml
from pydantic import BeforeValidator, Field, Strict, model_validator

from l1forge.config import Flag, Int, KeyedError, Real, Section, one_of, read_yaml, validate

OBJECT_KINDS = ("met", "egamma", "muon", "jet")
PARTICLE_KINDS = ("egamma", "muon", "jet")
CHECK_GROUPS = ("input", "multiplicity", "occupancy", "score", "rates")

V = TypeVar("V")
Positive = Annotated[Real, Field(gt=0.0)]
Bins = Annotated[Int, Field(ge=1, le=4096)]


@dataclass(frozen=True)
class Thresholds(Section):
    """Warning and error levels of one statistic."""

    warning: Positive
    error: Positive


def _ordered(t: Thresholds | None, key: str, lower_is_worse: bool) -> None:
    """Error must be as bad as warning or worse; p-values are at most 1."""
    if t is None:
        return
    if lower_is_worse and t.warning > 1.0:
        raise KeyedError(f"{key}.warning", f"expected a p-value <= 1, got {t.warning}")
    if lower_is_worse and t.error > 1.0:
        raise KeyedError(f"{key}.error", f"expected a p-value <= 1, got {t.error}")
    if (t.error > t.warning) if lower_is_worse else (t.error < t.warning):
        relation = "at most" if lower_is_worse else "at least"
        raise KeyedError(
            f"{key}.error", f"must be {relation} {key}.warning ({t.warning}), got {t.error}"
        )


@dataclass(frozen=True)
class Check(Section):
    """How one group of histograms is compared to its reference; None disables a statistic."""

    min_entries: Annotated[Int, Field(ge=1)]
    chi2_pvalue: Thresholds | None = None
    ks_pvalue: Thresholds | None = None
    pull: Thresholds | None = None
    window_sizes: Annotated[tuple[Annotated[Int, Field(ge=1, le=64)], ...], Field(min_length=1)] = (
        1,
    )

    @model_validator(mode="after")
    def _levels_ordered(self) -> Check:
        _ordered(self.chi2_pvalue, "chi2_pvalue", lower_is_worse=True)
        _ordered(self.ks_pvalue, "ks_pvalue", lower_is_worse=True)
        _ordered(self.pull, "pull", lower_is_worse=False)
        return self


def _allowed(*extra: str) -> BeforeValidator:
    """Refuses the keys of `Check` that a histogram group does not use."""
    allowed = {"min_entries", "pull", *extra}

    def check(raw: Any) -> Any:
        for k in raw if isinstance(raw, dict) else ():
            if k not in allowed:
                raise KeyedError(str(k), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return raw

    return BeforeValidator(check)


StatCheck = Annotated[Check, _allowed("chi2_pvalue", "ks_pvalue")]


@dataclass(frozen=True)
class Latency(Section):
    """Absolute limits on the 99th percentile of backend latency per lumisection."""

    p99_s: Thresholds

    @model_validator(mode="after")
    def _levels_ordered(self) -> Latency:
        _ordered(self.p99_s, "p99_s", lower_is_worse=False)
        return self


@dataclass(frozen=True)
class Checks(Section):
    """The comparison settings of each histogram group."""

    input: StatCheck
    multiplicity: StatCheck
    occupancy: Annotated[Check, _allowed("window_sizes")]
    score: StatCheck
    rates: Annotated[Check, _allowed()]
    latency: Latency


@dataclass(frozen=True)
class ReferenceConfig(Section):
    """Where the reference comes from: a running sum of good lumisections or a DQM file."""

    mode: Annotated[str, one_of(("running", "file"))]
    path: Annotated[str, Strict()] | None
    warmup_lumisections: Annotated[Int, Field(ge=1)]
    window_lumisections: Annotated[Int, Field(ge=0)]
    exclude: Annotated[str, one_of(("warning", "error"))] = "warning"

    @model_validator(mode="after")
    def _file_has_path(self) -> ReferenceConfig:
        if self.mode == "file" and self.path is None:
            raise KeyedError("path", "mode 'file' needs the path of a reference DQM ROOT file")
        return self


@dataclass(frozen=True)
class PerParticle(Section, Generic[V]):
    """One value for each particle kind (`PARTICLE_KINDS`)."""

    egamma: V
    muon: V
    jet: V


@dataclass(frozen=True)
class PerObject(PerParticle[V]):
    """One value for each object kind (`OBJECT_KINDS`)."""

    met: V


@dataclass(frozen=True)
class Binning(Section):
    """Histogram axes; the per-object ones have a value for each object kind."""

    phi_bins: Bins
    eta_bins: PerParticle[Bins]
    eta_max: PerParticle[Positive]
    pt_bins: PerObject[Bins]
    pt_max_gev: PerObject[Positive]
    occupancy_eta_bins: PerParticle[Bins]
    occupancy_phi_bins: Bins
    score_bins: Bins
    score_log1p_max: Positive
    latency_bins: Bins
    latency_min_s: Positive
    latency_max_s: Positive

    def of(self, field: str, kind: str) -> Any:
        """The value of a per-object field for one object kind."""
        return getattr(getattr(self, field), kind)

    @model_validator(mode="after")
    def _latency_range(self) -> Binning:
        if self.latency_max_s <= self.latency_min_s:
            raise KeyedError("latency_max_s", "must exceed latency_min_s")
        return self


@dataclass(frozen=True)
class Output(Section):
    write_lumisections: Flag  # also every lumisection's histograms in the DQM ROOT file


@dataclass(frozen=True)
class DQMConfig(Section):
    """The whole DQM configuration."""

    min_events: Annotated[Int, Field(ge=1)]
    reference: ReferenceConfig
    binning: Binning
    checks: Checks
    output: Output

    def check(self, group: str) -> Check:
        """The comparison settings of one histogram group."""
        found: Check = getattr(self.checks, group)
        return found

    @property
    def latency_p99_s(self) -> Thresholds:
        return self.checks.latency.p99_s

    @property
    def write_lumisections(self) -> bool:
        return self.output.write_lumisections


def make_config(raw: Any) -> DQMConfig:
    """Validate a parsed YAML document (the whole ``dqm`` mapping) into a DQMConfig."""
    return validate(DQMConfig, raw, root="dqm")


def default_raw() -> dict[str, Any]:
    """The shipped default configuration as a plain dictionary (a fresh copy each call)."""
    text = resources.files("l1forge.online.dqm").joinpath("dqm_default.yaml").read_text()
    raw: dict[str, Any] = yaml.safe_load(text)
    return raw


def load_config(path: str | Path | None = None) -> DQMConfig:
    """Read and validate a DQM YAML file; None gives the shipped default."""
    if path is None:
        return make_config(default_raw())
    return make_config(read_yaml(path, "DQM configuration"))
