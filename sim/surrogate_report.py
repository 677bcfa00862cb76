"""Validation report of a trained surrogate on held-out θ points (JSON and plots).

Per point: W1 of every high-level feature and of the cell spectrum, and the classifier AUCs on
high-level features and on cell energies, for surrogate against reference and, as the floor a
sample of this size resolves, for a second independent reference sample against the first.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from l1forge.sim import surrogate_metrics as metrics
from l1forge.sim.surrogate import CaloSurrogate, point_theta
from l1forge.sim.surrogate_data import Showers, cached_showers, heldout_points, simulate_like


def sample_like(model: CaloSurrogate, sh: Showers, seed: int) -> np.ndarray:
    """Surrogate showers with the same θ point, energy and particle as every reference shower."""
    gen = torch.Generator().manual_seed(seed)
    out = np.zeros(sh.deposited_gev.shape, dtype=np.float64)
    with torch.no_grad():
        for i, p in enumerate(sh.points):
            k = np.flatnonzero(sh.theta_index == i)
            theta = point_theta(model.spec.range, p)
            e, pi0 = torch.as_tensor(sh.e_gev[k]), torch.as_tensor(sh.is_pi0[k])
            out[k] = model.sample(theta, e, pi0, gen).numpy()
    return out


def _compare(a: np.ndarray, b: np.ndarray, e: np.ndarray, pi0: np.ndarray, seed: int) -> dict:
    n_seg = a.shape[1]
    return {
        "w1": metrics.w1_table(a, b, e, n_seg),
        "classifier_auc_high_level": metrics.classifier_auc(
            metrics.classifier_inputs(a, e, pi0, "high"),
            metrics.classifier_inputs(b, e, pi0, "high"), seed=seed,
        ),
        "classifier_auc_low_level": metrics.classifier_auc(
            metrics.classifier_inputs(a, e, pi0, "low"),
            metrics.classifier_inputs(b, e, pi0, "low"), seed=seed,
        ),
    }  # fmt: skip


def validate(
    model: CaloSurrogate, ref: Showers, ref_b: Showers, out: Path, seed: int = 0
) -> dict[str, Any]:
    """Compare the surrogate with ``ref`` at each of its points.

    ``ref_b`` repeats ``ref``'s showers with new random numbers
    (:func:`l1forge.sim.surrogate_data.simulate_like`): the floor.
    """
    if not np.array_equal(ref.e_gev, ref_b.e_gev) or ref.points != ref_b.points:
        raise ValueError("the second reference sample must repeat the first's showers")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    gen = sample_like(model, ref, seed)
    points = []
    for i, p in enumerate(tqdm(ref.points, desc="validate", unit="θ")):
        k = ref.theta_index == i
        e, pi0 = ref.e_gev[k], ref.is_pi0[k]
        a = ref.deposited_gev[k].astype(np.float64)
        res = {"point": p, "showers": int(k.sum())}
        res["surrogate"] = _compare(a, gen[k], e, pi0, seed)
        b = ref_b.deposited_gev[k].astype(np.float64)
        res["reference_floor"] = _compare(a, b, e, pi0, seed)
        metrics.plot_comparison(a, gen[k], e, f"{p['name']}: {_describe(p)}",
                                out / f"{p['name']}.png")  # fmt: skip
        points.append(res)
    summary = {
        "points": points,
        "max_classifier_auc_high_level": max(
            r["surrogate"]["classifier_auc_high_level"] for r in points
        ),
        "max_classifier_auc_low_level": max(
            r["surrogate"]["classifier_auc_low_level"] for r in points
        ),
        "validate_s": round(time.perf_counter() - t0, 1),
        "plots": sorted(f"{p['name']}.png" for p in ref.points),
    }
    (out / "validation.json").write_text(json.dumps(summary, indent=1))
    return summary


def validate_heldout(
    model: CaloSurrogate, report: Path, events_per_point: int = 4000, seed: int = 1
) -> dict[str, Any]:
    """:func:`validate` on the held-out θ points: their reference showers cached in
    ``report/data``, the floor's second sample simulated with ``seed + 1``."""
    rng_ = model.spec.range
    ref = cached_showers(report / "data" / "heldout.npz", rng_, heldout_points(rng_),
                         events_per_point, seed)  # fmt: skip
    return validate(model, ref, simulate_like(rng_, ref, seed + 1), report, seed=seed)


def _describe(p: dict[str, Any]) -> str:
    return (f"{p['n_layers']:.0f} x ({p['absorber_mm']:.2f} mm {p['absorber']} + "
            f"{p['active_mm']:.2f} mm active), cells {p['cell_mm']:.1f} mm")  # fmt: skip
