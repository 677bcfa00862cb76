"""The learned calorimeter surrogate: fidelity on held-out θ, gradients, co-design, speed.

Uses the surrogate in ``--model`` (default ``out/calo_surrogate/model``); when none is there
it trains one first with the CLI's defaults (320 θ points × 600 reference showers, cached in
MODEL/data; about 30 min on 2 cores). Then, all in this run:
- validation on 6 held-out θ points (3 inside the range, 3 at its edges) with 4,000 showers
  each: W1 (×10⁻³, each feature in units of the reference's standard deviation) and the
  classifier AUCs, beside the floor of a second reference sample (plots in the report folder);
- the gradient check against finite differences of the reference simulator's means;
- the joint co-design study with the analytic twin and with the surrogate, ``--seeds`` seeds,
  each design re-evaluated on fresh stochastic-reference events;
- showers/s of the surrogate (sampling; sampling with gradients) and of the reference.
Prints one JSON object; progress on stderr. About 15 min with a trained model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from l1forge.measure import mean_std
from l1forge.offline import codesign
from l1forge.offline.config import from_dict
from l1forge.sim import calo, calo_torch
from l1forge.sim import surrogate as sur
from l1forge.sim.surrogate_report import validate_heldout

log = logging.getLogger("benchmarks.calo_surrogate")


def _speeds(model: sur.CaloSurrogate, n: int) -> dict:
    """Showers/s (one incident γ or π0 each) of the surrogate and of the reference simulator."""
    rng_ = model.spec.range
    geom = calo.Geometry(n_cells=rng_.n_cells, n_segments=rng_.n_segments, n_layers=16,
                         absorber_mm=3.0, active_mm=3.0)  # fmt: skip
    e = np.random.default_rng(0).uniform(rng_.e_min_gev, rng_.e_max_gev, n)
    pi0 = np.arange(n) % 2 == 1
    et, pt = torch.as_tensor(e), torch.as_tensor(pi0)
    theta = calo_torch.theta_from_geometry(geom)
    t0 = time.perf_counter()
    with torch.no_grad():
        model.sample(theta, et, pt)
    t_sample = time.perf_counter() - t0
    for k in calo_torch.GRADIENT_PARAMS:
        theta[k].requires_grad_(True)
    t0 = time.perf_counter()
    model.sample(theta, et, pt).sum().backward()
    t_grad = time.perf_counter() - t0
    t0 = time.perf_counter()
    calo.simulate(geom, e, pi0, seed=0)
    t_ref = time.perf_counter() - t0
    return {"surrogate_showers_per_s": n / t_sample,
            "surrogate_showers_per_s_with_gradients": n / t_grad,
            "reference_showers_per_s": n / t_ref, "speed_showers": n,
            "speed_geometry": dataclasses.asdict(geom)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="out/calo_surrogate/model")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--eval-events", type=int, default=2000)
    ap.add_argument("--heldout-events", type=int, default=4000)
    ap.add_argument("--speed-showers", type=int, default=20000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    model_dir = Path(args.model)
    if not (model_dir / "surrogate.json").is_file():
        log.info("no surrogate in %s: training one with the defaults", model_dir)
        subprocess.run([sys.executable, "-m", "l1forge.cli", "sim", "surrogate", "train",
                        "--out", str(model_dir)], check=True, stdout=sys.stderr)  # fmt: skip
    model = sur.load(model_dir)
    meta = json.loads((model_dir / "surrogate.json").read_text())
    rng_ = model.spec.range
    report = model_dir / "report"
    val = validate_heldout(model, report, args.heldout_events, seed=1)
    pts = val["points"]
    names = list(pts[0]["surrogate"]["w1"])

    def per_point(key: str, which: str = "surrogate") -> dict:
        return {p["point"]["name"]: p[which][key] for p in pts}

    torch.set_num_threads(1)
    grad_geom = calo.Geometry(n_layers=16, absorber_mm=3.0, active_mm=3.0, cell_mm=30.0,
                              n_cells=rng_.n_cells, n_segments=rng_.n_segments)  # fmt: skip
    grad = sur.gradient_check(model, grad_geom)
    util: dict[str, list[float]] = {"analytic": [], "surrogate": []}
    designs: dict[str, list[dict]] = {"analytic": [], "surrogate": []}
    for seed in range(args.seeds):
        train = {"steps": args.steps, "batch": args.batch, "seed": seed,
                 "eval_events": args.eval_events, "warmup_steps": args.steps // 5,
                 "surrogate": str(model_dir)}  # fmt: skip
        for kind in ("analytic", "surrogate"):
            cfg = from_dict({"train": {**train, "model": kind}})
            with tempfile.TemporaryDirectory() as tmp:
                s = codesign.run(cfg, tmp)
            util[kind].append(s["evaluation"]["utility"])
            designs[kind].append({"design": s["design"], "evaluation": s["evaluation"]})
            log.info("seed %d %s: %s", seed, kind, s["evaluation"])
    ua, us = mean_std(util["analytic"]), mean_std(util["surrogate"])
    combined = float(np.hypot(ua["std"] or 0.0, us["std"] or 0.0))
    out = {
        # the co-design part trains its own e/gamma network per design, as benchmarks/codesign.py
        "network_source": "trained",
        "network_description": "e/gamma networks trained per design by the co-design runs here",
        "surrogate_source": str(model_dir),
        "surrogate_description": (
            f"zuko {meta['zuko']} neural spline flows (energy: {model.spec.energy_transforms} "
            f"transforms; shape: {model.spec.transforms} coupling transforms, "
            f"hidden {model.spec.hidden}), trained on {meta['train_showers']} reference showers"
        ),
        "heldout_theta_points": [p["point"] for p in pts],
        "w1": {
            n: {
                "mean": float(np.mean([p["surrogate"]["w1"][n] for p in pts])),
                "max": float(np.max([p["surrogate"]["w1"][n] for p in pts])),
                "reference_floor_mean": float(
                    np.mean([p["reference_floor"]["w1"][n] for p in pts])
                ),
            }
            for n in names
        },
        "w1_units": "1e-3 x W1 of each feature divided by the reference's standard deviation",
        "w1_per_point": per_point("w1"),
        "classifier_auc_high_level": {
            "max": val["max_classifier_auc_high_level"],
            **per_point("classifier_auc_high_level"),
        },
        "classifier_auc_low_level": {
            "max": val["max_classifier_auc_low_level"],
            **per_point("classifier_auc_low_level"),
        },
        "classifier_auc_reference_floor": {
            "high_level": per_point("classifier_auc_high_level", "reference_floor"),
            "low_level": per_point("classifier_auc_low_level", "reference_floor"),
        },
        "heldout_showers_per_point": args.heldout_events,
        "gradient_rel_error": {"max": max(grad["rel_error"].values()), **grad["rel_error"]},
        "gradient_detail": grad,
        "codesign_utility_surrogate": us,
        "codesign_utility_analytic": ua,
        "codesign_utility_difference": us["mean"] - ua["mean"],
        "codesign_combined_std": combined,
        "codesign_designs": designs,
        "report": str(report),
        "settings": vars(args),
    }
    out.update(_speeds(model, args.speed_showers))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
