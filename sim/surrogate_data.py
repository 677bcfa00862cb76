"""Showers of the stochastic reference simulator over a range of detector parameters θ.

The learned surrogate (:mod:`l1forge.sim.surrogate`) trains on these and is validated on
held-out θ points. Samples are cached as ``.npz`` (arrays only, no pickle) with a JSON
provenance record beside them; a cache whose recorded request differs is rebuilt.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from l1forge.errors import ConfigError
from l1forge.sim import calo
from l1forge.sim.materials import ABSORBERS

log = logging.getLogger(__name__)

# the continuous θ the co-design study varies and the surrogate is conditioned on
THETA_NAMES: tuple[str, ...] = ("n_layers", "absorber_mm", "active_mm", "cell_mm")
PARTICLES: tuple[str, ...] = ("gamma", "pi0")  # GFlash gives e± and γ the same EM shower
FORMAT = "l1forge-calo-showers-1"


@dataclass(frozen=True)
class ThetaRange:
    """The box of detector parameters and beam conditions a surrogate is trained over."""

    bounds: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {
            "n_layers": (4.0, 40.0),
            "absorber_mm": (0.5, 10.0),
            "active_mm": (0.5, 10.0),
            "cell_mm": (8.0, 60.0),
        }
    )
    absorbers: tuple[str, ...] = ABSORBERS
    active: str = "scintillator"
    n_cells: int = 5
    n_segments: int = 2
    e_min_gev: float = 5.0
    e_max_gev: float = 50.0
    distance_mm: float = 1500.0

    def __post_init__(self) -> None:
        if set(self.bounds) != set(THETA_NAMES):
            raise ConfigError(f"surrogate range: bounds must name exactly {list(THETA_NAMES)}")
        for k, (lo, hi) in self.bounds.items():
            if not lo < hi:
                raise ConfigError(f"surrogate range: bounds.{k} needs lower < upper")
        unknown = [a for a in self.absorbers if a not in ABSORBERS]
        if unknown or not self.absorbers:
            raise ConfigError(f"surrogate range: absorbers {unknown} not among {ABSORBERS}")
        if not 0.2 < self.e_min_gev < self.e_max_gev:
            raise ConfigError("surrogate range: need 0.2 < e_min_gev < e_max_gev")

    def geometry(self, point: dict[str, Any]) -> calo.Geometry:
        """The reference simulator's geometry at a θ point (layers rounded to an integer)."""
        return calo.Geometry(
            n_layers=max(round(point["n_layers"]), self.n_segments),
            absorber=point["absorber"],
            absorber_mm=float(point["absorber_mm"]),
            active=self.active,
            active_mm=float(point["active_mm"]),
            cell_mm=float(point["cell_mm"]),
            n_cells=self.n_cells,
            n_segments=self.n_segments,
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ThetaRange:
        d = dict(d)
        d["bounds"] = {k: tuple(v) for k, v in d["bounds"].items()}
        d["absorbers"] = tuple(d["absorbers"])
        return cls(**d)


def training_points(rng_: ThetaRange, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` θ points: the first ``n`` of a scrambled Sobol sequence over the box (balanced
    when ``n`` is a power of two), absorbers taken in turn."""
    from scipy.stats import qmc

    m = max(0, math.ceil(math.log2(n)))
    u = qmc.Sobol(len(THETA_NAMES), scramble=True, seed=seed).random_base2(m)[:n]
    pts = []
    for i, row in enumerate(u):
        p: dict[str, Any] = {"absorber": rng_.absorbers[i % len(rng_.absorbers)]}
        for k, x in zip(THETA_NAMES, row, strict=True):
            lo, hi = rng_.bounds[k]
            p[k] = lo + (hi - lo) * float(x)
        p["n_layers"] = float(max(round(p["n_layers"]), rng_.n_segments))
        pts.append(p)
    return pts


# (name, absorber, position of each θ in its range as a fraction of the range)
EDGE_POINTS: tuple[tuple[str, str, dict[str, float]], ...] = (
    (
        "edge-fine-cells",
        "W",
        {"n_layers": 0.97, "absorber_mm": 0.2, "active_mm": 0.3, "cell_mm": 0.03},
    ),
    (
        "edge-shallow",
        "Pb",
        {"n_layers": 0.03, "absorber_mm": 0.97, "active_mm": 0.5, "cell_mm": 0.5},
    ),
    (
        "edge-coarse-thin",
        "Fe",
        {"n_layers": 0.6, "absorber_mm": 0.03, "active_mm": 0.97, "cell_mm": 0.97},
    ),
)


def heldout_points(rng_: ThetaRange, seed: int = 1234) -> list[dict[str, Any]]:
    """Validation θ: three random points inside the box and three at its edges.

    The edge points sit within 5 % of the bounds in at least two parameters each (fine cells
    with a deep tungsten stack, where the co-design optimizer goes; a shallow, leaky stack;
    coarse cells with thin absorber).
    """
    r = np.random.default_rng(seed)
    b = rng_.bounds

    def at(k: str, f: float) -> float:
        lo, hi = b[k]
        return lo + (hi - lo) * f

    pts = []
    for i in range(3):
        p: dict[str, Any] = {
            "name": f"inside-{i}",
            "absorber": rng_.absorbers[i % len(rng_.absorbers)],
        }
        for k in THETA_NAMES:
            p[k] = at(k, float(r.uniform(0.15, 0.85)))
        pts.append(p)
    for name, absorber, where in EDGE_POINTS:
        p = {
            "name": name,
            "absorber": absorber if absorber in rng_.absorbers else rng_.absorbers[0],
        }
        pts.append(p | {k: at(k, f) for k, f in where.items()})
    for p in pts:
        p["n_layers"] = float(max(round(p["n_layers"]), rng_.n_segments))
    return pts


@dataclass(frozen=True)
class Showers:
    """Deposited energies (GeV, before noise and ADC) of events at several θ points."""

    points: list[dict[str, Any]]
    theta_index: np.ndarray  # (N,) index into points
    e_gev: np.ndarray  # (N,) incident energy
    is_pi0: np.ndarray  # (N,) bool
    deposited_gev: np.ndarray  # (N, n_segments, n_cells, n_cells), float32

    def subset(self, keep: np.ndarray) -> Showers:
        return Showers(self.points, self.theta_index[keep], self.e_gev[keep],
                       self.is_pi0[keep], self.deposited_gev[keep])  # fmt: skip


def _simulate_point(
    rng_: ThetaRange, point: dict[str, Any], i: int, events_per_point: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = np.random.default_rng([seed, i])  # one stream per point: any worker split agrees
    e = r.uniform(rng_.e_min_gev, rng_.e_max_gev, events_per_point)
    pi0 = np.arange(events_per_point) % 2 == 1
    ev = calo.simulate(rng_.geometry(point), e, pi0, seed=r, distance_mm=rng_.distance_mm)
    return e, pi0, ev.deposited_gev.astype(np.float32)


def simulate_points(
    rng_: ThetaRange, points: list[dict[str, Any]], events_per_point: int, seed: int,
    workers: int = 1, desc: str = "reference showers",
) -> Showers:  # fmt: skip
    """Half photons, half π0 at each point; energies uniform; impact uniform in the central
    cell. ``workers`` > 1 simulates points in that many processes (same result)."""
    args = [(rng_, p, i, events_per_point, seed) for i, p in enumerate(points)]
    bar = tqdm(total=len(points), desc=desc, unit="θ", leave=False)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            for part in pool.map(_simulate_point, *zip(*args, strict=True), chunksize=4):
                parts.append(part)
                bar.update()
    else:
        for a in args:
            parts.append(_simulate_point(*a))
            bar.update()
    bar.close()
    idx = np.repeat(np.arange(len(points)), events_per_point)
    e, pi0, dep = (np.concatenate(x) for x in zip(*parts, strict=True))
    return Showers(points, idx, e, pi0, dep)


def simulate_like(rng_: ThetaRange, sh: Showers, seed: int) -> Showers:
    """A second, independent reference sample of the same points, energies and particles."""
    dep = np.zeros_like(sh.deposited_gev)
    for i, p in enumerate(tqdm(sh.points, desc="reference showers (again)", unit="θ", leave=False)):
        k = np.flatnonzero(sh.theta_index == i)
        r = np.random.default_rng([seed, i])
        ev = calo.simulate(rng_.geometry(p), sh.e_gev[k], sh.is_pi0[k], seed=r,
                           distance_mm=rng_.distance_mm)  # fmt: skip
        dep[k] = ev.deposited_gev
    return Showers(sh.points, sh.theta_index, sh.e_gev, sh.is_pi0, dep)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def cached_showers(
    path: Path, rng_: ThetaRange, points: list[dict[str, Any]], events_per_point: int, seed: int,
    workers: int = 1,
) -> Showers:  # fmt: skip
    """Load ``path`` (.npz + .json) if it holds exactly this request, else simulate and write it."""
    request = {"format": FORMAT, "range": rng_.to_json(), "points": points,
               "events_per_point": events_per_point, "seed": seed}  # fmt: skip
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("request") == json.loads(json.dumps(request)):
            with np.load(path, allow_pickle=False) as z:
                return Showers(
                    points, z["theta_index"], z["e_gev"], z["is_pi0"], z["deposited_gev"]
                )
        log.info("%s: cached request differs, simulating again", path)
    t0 = time.perf_counter()
    sh = simulate_points(rng_, points, events_per_point, seed, workers=workers)
    dt = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    with open(tmp, "wb") as fh:
        np.savez(fh, theta_index=sh.theta_index, e_gev=sh.e_gev, is_pi0=sh.is_pi0,
                 deposited_gev=sh.deposited_gev)  # fmt: skip
    tmp.replace(path)
    meta = {"request": request, "simulator": "l1forge.sim.calo.simulate (GFlash, stochastic)",
            "events": len(sh.e_gev), "simulate_s": round(dt, 1),
            "events_per_s": round(len(sh.e_gev) / dt, 1) if dt > 0 else None,
            "git_commit": _git_commit(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    meta_path.write_text(json.dumps(meta, indent=1))
    return sh
