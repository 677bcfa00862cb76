"""DQM configuration: YAML in, frozen dataclasses out, every error naming its exact key."""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from l1forge.errors import ConfigError
from l1forge.online.validation import integer as _int
from l1forge.online.validation import number as _float

OBJECT_KINDS = ("met", "egamma", "muon", "jet")
PARTICLE_KINDS = ("egamma", "muon", "jet")
CHECK_GROUPS = ("input", "multiplicity", "occupancy", "score", "rates")


@dataclass(frozen=True)
class Thresholds:
    """Warning and error levels of one statistic."""

    warning: float
    error: float


@dataclass(frozen=True)
class Check:
    """How one group of histograms is compared to its reference; None disables a statistic."""

    min_entries: int
    chi2_pvalue: Thresholds | None = None
    ks_pvalue: Thresholds | None = None
    pull: Thresholds | None = None
    window_sizes: tuple[int, ...] = (1,)


@dataclass(frozen=True)
class ReferenceConfig:
    """Where the reference comes from: a running sum of good lumisections or a DQM file."""

    mode: str
    path: str | None
    warmup_lumisections: int
    window_lumisections: int
    exclude: str = "warning"


@dataclass(frozen=True)
class Binning:
    """Histogram axes; per-object dictionaries are stored as sorted (kind, value) tuples."""

    phi_bins: int
    eta_bins: tuple[tuple[str, int], ...]
    eta_max: tuple[tuple[str, float], ...]
    pt_bins: tuple[tuple[str, int], ...]
    pt_max_gev: tuple[tuple[str, float], ...]
    occupancy_eta_bins: tuple[tuple[str, int], ...]
    occupancy_phi_bins: int
    score_bins: int
    score_log1p_max: float
    latency_bins: int
    latency_min_s: float
    latency_max_s: float

    def of(self, field: str, kind: str) -> Any:
        """The value of a per-object field for one object kind."""
        return dict(getattr(self, field))[kind]


@dataclass(frozen=True)
class DQMConfig:
    """The whole DQM configuration."""

    min_events: int
    reference: ReferenceConfig
    binning: Binning
    checks: tuple[tuple[str, Check], ...]
    latency_p99_s: Thresholds
    write_lumisections: bool

    def check(self, group: str) -> Check:
        """The comparison settings of one histogram group."""
        return dict(self.checks)[group]


def _mapping(raw: Any, key: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"{key}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})"
        )
    return raw


def _require(raw: dict[str, Any], name: str, key: str) -> Any:
    if name not in raw:
        raise ConfigError(f"{key}.{name}: missing")
    return raw[name]


def _thresholds(raw: Any, key: str, lower_is_worse: bool = False) -> Thresholds:
    m = _mapping(raw, key, {"warning", "error"})
    hi = 1.0 if lower_is_worse else math.inf
    warning = _float(_require(m, "warning", key), f"{key}.warning", hi=hi)
    error = _float(_require(m, "error", key), f"{key}.error", hi=hi)
    if (error > warning) if lower_is_worse else (error < warning):
        relation = "at most" if lower_is_worse else "at least"
        raise ConfigError(f"{key}.error: must be {relation} {key}.warning ({warning}), got {error}")
    return Thresholds(warning, error)


def _per_kind(raw: Any, key: str, kinds: tuple[str, ...], conv: Any) -> tuple[tuple[str, Any], ...]:
    m = _mapping(raw, key, set(kinds))
    return tuple((k, conv(_require(m, k, key), f"{key}.{k}")) for k in kinds)


def _check(raw: Any, key: str, group: str) -> Check:
    stats = {"input", "multiplicity", "score"}
    allowed = {"min_entries", "pull"}
    if group in stats:
        allowed |= {"chi2_pvalue", "ks_pvalue"}
    if group == "occupancy":
        allowed.add("window_sizes")
    m = _mapping(raw, key, allowed)
    windows: tuple[int, ...] = (1,)
    if "window_sizes" in m:
        raw_w = m["window_sizes"]
        if not isinstance(raw_w, list) or not raw_w:
            raise ConfigError(f"{key}.window_sizes: expected a non-empty list of sizes in bins")
        windows = tuple(_int(v, f"{key}.window_sizes[{i}]", 1, 64) for i, v in enumerate(raw_w))

    def opt(name: str, lower: bool = False) -> Thresholds | None:
        v = m.get(name)
        return None if v is None else _thresholds(v, f"{key}.{name}", lower_is_worse=lower)

    return Check(
        min_entries=_int(_require(m, "min_entries", key), f"{key}.min_entries", 1),
        chi2_pvalue=opt("chi2_pvalue", lower=True),
        ks_pvalue=opt("ks_pvalue", lower=True),
        pull=opt("pull"),
        window_sizes=windows,
    )


def _reference(raw: Any, key: str) -> ReferenceConfig:
    m = _mapping(
        raw, key, {"mode", "path", "warmup_lumisections", "window_lumisections", "exclude"}
    )
    exclude = m.get("exclude", "warning")
    if exclude not in ("warning", "error"):
        raise ConfigError(f"{key}.exclude: expected 'warning' or 'error', got {exclude!r}")
    mode = _require(m, "mode", key)
    if mode not in ("running", "file"):
        raise ConfigError(f"{key}.mode: expected 'running' or 'file', got {mode!r}")
    path = m.get("path")
    if mode == "file" and not isinstance(path, str):
        raise ConfigError(f"{key}.path: mode 'file' needs the path of a reference DQM ROOT file")
    if path is not None and not isinstance(path, str):
        raise ConfigError(f"{key}.path: expected a string or null, got {path!r}")
    return ReferenceConfig(
        mode=mode,
        path=path,
        warmup_lumisections=_int(
            _require(m, "warmup_lumisections", key), f"{key}.warmup_lumisections", 1
        ),
        window_lumisections=_int(
            _require(m, "window_lumisections", key), f"{key}.window_lumisections", 0
        ),
        exclude=exclude,
    )


def _binning(raw: Any, key: str) -> Binning:
    names = set(Binning.__dataclass_fields__)
    m = _mapping(raw, key, names)
    for name in sorted(names):
        _require(m, name, key)

    def pos_int(v: Any, k: str) -> int:
        return _int(v, k, 1, 4096)

    b = Binning(
        phi_bins=pos_int(m["phi_bins"], f"{key}.phi_bins"),
        eta_bins=_per_kind(m["eta_bins"], f"{key}.eta_bins", PARTICLE_KINDS, pos_int),
        eta_max=_per_kind(m["eta_max"], f"{key}.eta_max", PARTICLE_KINDS, _float),
        pt_bins=_per_kind(m["pt_bins"], f"{key}.pt_bins", OBJECT_KINDS, pos_int),
        pt_max_gev=_per_kind(m["pt_max_gev"], f"{key}.pt_max_gev", OBJECT_KINDS, _float),
        occupancy_eta_bins=_per_kind(
            m["occupancy_eta_bins"], f"{key}.occupancy_eta_bins", PARTICLE_KINDS, pos_int
        ),
        occupancy_phi_bins=pos_int(m["occupancy_phi_bins"], f"{key}.occupancy_phi_bins"),
        score_bins=pos_int(m["score_bins"], f"{key}.score_bins"),
        score_log1p_max=_float(m["score_log1p_max"], f"{key}.score_log1p_max"),
        latency_bins=pos_int(m["latency_bins"], f"{key}.latency_bins"),
        latency_min_s=_float(m["latency_min_s"], f"{key}.latency_min_s"),
        latency_max_s=_float(m["latency_max_s"], f"{key}.latency_max_s"),
    )
    if b.latency_max_s <= b.latency_min_s:
        raise ConfigError(f"{key}.latency_max_s: must exceed {key}.latency_min_s")
    return b


def make_config(raw: Any) -> DQMConfig:
    """Validate a parsed YAML document (the whole ``dqm`` mapping) into a DQMConfig."""
    top = _mapping(raw, "dqm", {"min_events", "reference", "binning", "checks", "output"})
    checks_raw = _mapping(_require(top, "checks", "dqm"), "dqm.checks", {*CHECK_GROUPS, "latency"})
    checks = tuple(
        (g, _check(_require(checks_raw, g, "dqm.checks"), f"dqm.checks.{g}", g))
        for g in CHECK_GROUPS
    )
    lat = _mapping(_require(checks_raw, "latency", "dqm.checks"), "dqm.checks.latency", {"p99_s"})
    output = _mapping(_require(top, "output", "dqm"), "dqm.output", {"write_lumisections"})
    write = _require(output, "write_lumisections", "dqm.output")
    if not isinstance(write, bool):
        raise ConfigError(f"dqm.output.write_lumisections: expected true or false, got {write!r}")
    return DQMConfig(
        min_events=_int(_require(top, "min_events", "dqm"), "dqm.min_events", 1),
        reference=_reference(_require(top, "reference", "dqm"), "dqm.reference"),
        binning=_binning(_require(top, "binning", "dqm"), "dqm.binning"),
        checks=checks,
        latency_p99_s=_thresholds(
            _require(lat, "p99_s", "dqm.checks.latency"), "dqm.checks.latency.p99_s"
        ),
        write_lumisections=write,
    )


def default_raw() -> dict[str, Any]:
    """The shipped default configuration as a plain dictionary (a fresh copy each call)."""
    text = resources.files("l1forge.online.dqm").joinpath("dqm_default.yaml").read_text()
    return yaml.safe_load(text)


def load_config(path: str | Path | None = None) -> DQMConfig:
    """Read and validate a DQM YAML file; None gives the shipped default."""
    if path is None:
        return make_config(default_raw())
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"DQM configuration {p}: cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"DQM configuration {p}: not valid YAML ({exc})") from exc
    return make_config(raw)
