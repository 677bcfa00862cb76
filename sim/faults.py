"""Detector faults and drifts injected into Level-1 object events, for DQM and learner tests.

Every fault is a frozen, validated dataclass with ``apply(objects_phys, rng) -> objects_phys``
on physical (N, 19, 3) arrays; ``inject`` applies one to an EventSet (physical and hardware
units kept consistent through ``to_hardware``) or to a physical or hardware array.
Pile-up cannot be changed on reduced objects: ``HigherPileup.generate`` regenerates events
with the real generator at the higher mean, and ``PileupDrift`` mixes such samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from l1forge.errors import ConfigError, DataFormatError
from l1forge.sim.dataset import EventSet
from l1forge.sim.l1objects import (
    N_FEATURES,
    N_OBJECTS,
    OBJECT_SLICES,
    DetectorResponse,
    to_hardware,
    to_physical,
)

PARTICLE_TYPES = ("egamma", "muon", "jet")
CALO_TYPES = ("met", "egamma", "jet")


def _finite(name: str, value: float, lo: float = -math.inf, hi: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: must be in [{lo}, {hi}], got {value}")


def _object_type(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")


def _check_events(objects_phys: np.ndarray) -> np.ndarray:
    x = np.asarray(objects_phys)
    if x.ndim != 3 or x.shape[1:] != (N_OBJECTS, N_FEATURES):
        raise DataFormatError(
            f"events: expected shape (N, {N_OBJECTS}, {N_FEATURES}), got {x.shape}"
        )
    return x


def sort_group(group: np.ndarray) -> np.ndarray:
    """Rows of each event's (N, k, 3) object group sorted by decreasing pT (empty rows last)."""
    order = np.argsort(-group[..., 0], axis=1, kind="stable")
    return np.take_along_axis(group, order[..., None], axis=1)


@dataclass(frozen=True)
class DeadRegion:
    """Objects of one type inside an eta-phi rectangle are lost (a dead trigger-tower region).

    The rectangle is [eta_min, eta_max) x [phi_min, phi_max) in physical units; phi does not
    wrap (use two faults for a region across phi = +-pi). Survivors are re-sorted, zero-padded.
    """

    object_type: str = "jet"
    eta_min: float = 1.5
    eta_max: float = 3.0
    phi_min: float = 0.0
    phi_max: float = 1.0

    def __post_init__(self) -> None:
        _object_type("DeadRegion.object_type", self.object_type, PARTICLE_TYPES)
        _finite("DeadRegion.eta_min", self.eta_min, -6.0, 6.0)
        _finite("DeadRegion.eta_max", self.eta_max, -6.0, 6.0)
        _finite("DeadRegion.phi_min", self.phi_min, -math.pi, math.pi)
        _finite("DeadRegion.phi_max", self.phi_max, -math.pi, math.pi)
        if self.eta_max <= self.eta_min or self.phi_max <= self.phi_min:
            raise ConfigError("DeadRegion: need eta_min < eta_max and phi_min < phi_max")

    def apply(self, objects_phys: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """A copy of the events with the region's objects removed."""
        x = _check_events(objects_phys).copy()
        sl = OBJECT_SLICES[self.object_type]
        g = x[:, sl]
        inside = (
            (g[..., 0] > 0)
            & (g[..., 1] >= self.eta_min)
            & (g[..., 1] < self.eta_max)
            & (g[..., 2] >= self.phi_min)
            & (g[..., 2] < self.phi_max)
        )
        g[inside] = 0
        x[:, sl] = sort_group(g)
        return x


@dataclass(frozen=True)
class HotChannel:
    """A noisy cell: a spurious object at (eta, phi) with pT ``pt_gev`` in a fraction of events.

    The object enters its group by pT order; a full group drops its softest object, as the
    Level-1 sorter keeps the leading ones.
    """

    object_type: str = "jet"
    eta: float = -1.2
    phi: float = 2.0
    pt_gev: float = 40.0
    fraction: float = 0.02

    def __post_init__(self) -> None:
        _object_type("HotChannel.object_type", self.object_type, PARTICLE_TYPES)
        _finite("HotChannel.eta", self.eta, -5.5, 5.5)
        _finite("HotChannel.phi", self.phi, -math.pi, math.pi)
        _finite("HotChannel.pt_gev", self.pt_gev, 0.5, 2047.5)
        _finite("HotChannel.fraction", self.fraction, 0.0, 1.0)
        if self.fraction <= 0:
            raise ConfigError("HotChannel.fraction: must be > 0")

    def apply(self, objects_phys: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """A copy of the events with the spurious object added to a random ``fraction``."""
        x = _check_events(objects_phys).copy()
        rng = rng if rng is not None else np.random.default_rng()
        hit = rng.random(len(x)) < self.fraction
        sl = OBJECT_SLICES[self.object_type]
        g = x[hit, sl]
        extra = np.broadcast_to(
            np.array([self.pt_gev, self.eta, self.phi], dtype=x.dtype), (len(g), 1, N_FEATURES)
        )
        x[hit, sl] = sort_group(np.concatenate([g, extra], axis=1))[:, : g.shape[1]]
        return x


@dataclass(frozen=True)
class EnergyScale:
    """Calorimeter energy scale off by ``shift``: pT x (1 + shift) for e/gamma, jets and MET.

    MET is scaled by the same factor (a calorimeter MET scales with the calorimeter response;
    it is not recomputed from the objects, whose sum is not the MET). Muons are not calorimeter
    objects and keep their pT unless listed. A negative shift drops objects that it moves from
    above their Level-1 threshold (``DetectorResponse``) to at or below it; a positive one
    cannot recover objects that were below it, as a real miscalibration would.
    """

    shift: float = 0.05
    object_types: tuple[str, ...] = CALO_TYPES
    response: DetectorResponse = field(default_factory=DetectorResponse)

    def __post_init__(self) -> None:
        _finite("EnergyScale.shift", self.shift, -0.9, 10.0)
        if not self.object_types:
            raise ConfigError("EnergyScale.object_types: name at least one object type")
        for t in self.object_types:
            _object_type("EnergyScale.object_types", t, ("met", *PARTICLE_TYPES))

    def apply(self, objects_phys: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """A copy of the events with the listed objects' pT scaled."""
        x = _check_events(objects_phys).copy()
        thresholds = {
            "met": 0.0,
            "egamma": self.response.egamma_pt_min,
            "muon": self.response.muon_pt_min,
            "jet": self.response.jet_pt_min,
        }
        for t in self.object_types:
            g = x[:, OBJECT_SLICES[t]]
            above = g[..., 0] > thresholds[t]
            g[..., 0] *= 1.0 + self.shift
            lost = above & (g[..., 0] <= thresholds[t])
            if t != "met" and lost.any():
                g[lost] = 0
            x[:, OBJECT_SLICES[t]] = g  # scaling keeps the pT order; losses are the softest
        return x


@dataclass(frozen=True)
class HigherPileup:
    """More pile-up: minimum-bias events regenerated with Pythia at ``pileup_mean``."""

    pileup_mean: float = 40.0
    process: str = "minbias"

    def __post_init__(self) -> None:
        _finite("HigherPileup.pileup_mean", self.pileup_mean, 0.0, 300.0)

    def generate(self, n: int, seed: int, **kwargs) -> EventSet:
        """``n`` events at the higher pile-up (about 100-200 events/s/core: cache them)."""
        from l1forge.sim.generate import generate_events

        return generate_events(self.process, n, seed, self.pileup_mean, progress=False, **kwargs)


Fault = DeadRegion | HotChannel | EnergyScale


def inject(
    fault: Fault, events: EventSet | np.ndarray, rng: np.random.Generator | None = None
) -> EventSet | np.ndarray:
    """Apply ``fault`` to an EventSet or an (N, 19, 3) array of the same units it came in.

    Float arrays are physical units; integer arrays are hardware units (converted through
    ``to_physical`` and back, which is exact on hardware values).
    """
    if isinstance(events, EventSet):
        phys = fault.apply(events.objects_phys, rng).astype(np.float32)
        return replace(events, objects_phys=phys, objects_hw=to_hardware(phys))
    x = _check_events(events)
    if np.issubdtype(x.dtype, np.integer):
        return to_hardware(fault.apply(to_physical(x), rng)).astype(x.dtype)
    return fault.apply(x, rng)


@dataclass(frozen=True)
class ScaleDrift:
    """A gradual energy-scale drift of ``rate_per_lumisection``, capped at ``max_shift``."""

    start_lumisection: int = 0
    rate_per_lumisection: float = 0.005
    max_shift: float = 0.10
    object_types: tuple[str, ...] = CALO_TYPES

    def __post_init__(self) -> None:
        if not isinstance(self.start_lumisection, int) or self.start_lumisection < 0:
            raise ConfigError("ScaleDrift.start_lumisection: must be an integer >= 0")
        _finite("ScaleDrift.rate_per_lumisection", self.rate_per_lumisection, -0.9, 10.0)
        _finite("ScaleDrift.max_shift", self.max_shift, -0.9, 10.0)
        if self.rate_per_lumisection * self.max_shift < 0:
            raise ConfigError("ScaleDrift.max_shift: must have the sign of rate_per_lumisection")

    def shift_at(self, lumisection: int) -> float:
        """The scale shift in lumisection ``lumisection``."""
        steps = max(0, lumisection - self.start_lumisection)
        s = self.rate_per_lumisection * steps
        return max(s, self.max_shift) if self.max_shift < 0 else min(s, self.max_shift)

    def fault_at(self, lumisection: int) -> EnergyScale:
        """The EnergyScale fault in force in ``lumisection``."""
        return EnergyScale(self.shift_at(lumisection), self.object_types)


@dataclass(frozen=True)
class PileupDrift:
    """Pile-up rising from ``start_mean`` by ``rate_per_lumisection``, capped at ``max_mean``."""

    start_lumisection: int = 0
    start_mean: float = 20.0
    rate_per_lumisection: float = 1.0
    max_mean: float = 40.0

    def __post_init__(self) -> None:
        if not isinstance(self.start_lumisection, int) or self.start_lumisection < 0:
            raise ConfigError("PileupDrift.start_lumisection: must be an integer >= 0")
        _finite("PileupDrift.start_mean", self.start_mean, 0.0, 300.0)
        _finite("PileupDrift.max_mean", self.max_mean, self.start_mean, 300.0)
        _finite("PileupDrift.rate_per_lumisection", self.rate_per_lumisection, 0.0, 300.0)

    def mean_at(self, lumisection: int) -> float:
        """The pile-up mean in lumisection ``lumisection``."""
        steps = max(0, lumisection - self.start_lumisection)
        return min(self.start_mean + self.rate_per_lumisection * steps, self.max_mean)

    def sample(
        self,
        pools: Mapping[float, np.ndarray],
        lumisection: int,
        n: int,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """``n`` events of this lumisection's pile-up mixed from ``pools`` (see ``mix_pileup``)."""
        return mix_pileup(pools, self.mean_at(lumisection), n, rng)


def mix_pileup(
    pools: Mapping[float, np.ndarray], mean: float, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` events resampled from the two pools whose pile-up means bracket ``mean``.

    Each event comes from the lower pool with probability (hi - mean) / (hi - lo), so the
    mixture's mean pile-up is ``mean``; ``pools`` maps a pile-up mean to an (M, ...) array.
    """
    if not pools:
        raise ConfigError("mix_pileup: give at least one pool of events")
    means = sorted(pools)
    if not means[0] <= mean <= means[-1]:
        raise ConfigError(
            f"mix_pileup: mean {mean} is outside the pools' range [{means[0]}, {means[-1]}]"
        )
    hi_i = min(int(np.searchsorted(means, mean)), len(means) - 1)
    lo, hi = means[max(hi_i - 1, 0)], means[hi_i]
    w_hi = 1.0 if hi == lo else (mean - lo) / (hi - lo)
    from_hi = rng.random(n) < w_hi
    out = np.empty((n, *np.shape(pools[lo])[1:]), dtype=np.asarray(pools[lo]).dtype)
    for pool_mean, mask in ((lo, ~from_hi), (hi, from_hi)):
        pool = np.asarray(pools[pool_mean])
        out[mask] = pool[rng.integers(0, len(pool), int(mask.sum()))]
    return out
