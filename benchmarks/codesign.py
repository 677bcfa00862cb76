"""Co-design benchmark: joint vs factorized vs Bayesian optimization vs the reference design.

Every final design is re-evaluated on the stochastic reference simulator with fresh events
through the bit-exact emulator of its exported network. Prints one JSON object on stdout;
progress goes to stderr. Keys that were not measured are left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time

import numpy as np
import torch

from l1forge.measure import mean_std
from l1forge.offline import codesign
from l1forge.offline.bayesopt import run_bayesopt
from l1forge.offline.config import StudyConfig, from_dict
from l1forge.offline.reevaluate import evaluate_network
from l1forge.sim import calo, calo_torch

log = logging.getLogger("benchmarks.codesign")


# (inputs, hidden, weight fractional bits, input bits) of the networks synthesized by yosys
LUT_CASES = [(18, 4, 3.0, 6), (18, 8, 5.0, 8), (50, 4, 4.0, 10), (18, 12, 6.0, 8),
             (50, 8, 3.0, 8), (32, 6, 5.0, 10), (50, 16, 4.0, 8), (32, 10, 6.0, 6)]  # fmt: skip


def _lut_calibration(n: int):
    from l1forge.offline.lut_model import calibrate
    from l1forge.offline.network import QuantMLP, QuantMLPConfig

    nets = [QuantMLP(i, QuantMLPConfig(hidden=h, weight_frac_bits=f), seed=k).export(b)
            for k, (i, h, f, b) in enumerate(LUT_CASES[:n])]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        return calibrate(nets, tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--eval-events", type=int, default=2000)
    ap.add_argument("--bo-trials", type=int, default=8)
    ap.add_argument("--lut-nets", type=int, default=6, help="networks synthesized (0: skip)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    torch.set_num_threads(1)
    util: dict[str, list[float]] = {m: [] for m in ("joint", "factorized", "reference", "bayesopt")}
    extra: dict[str, dict[str, list]] = {m: {"cost_eur": [], "ebops": [], "within_budget": [],
                                             "resolution": [], "photon_efficiency": []}
                                         for m in ("joint", "factorized", "reference")}  # fmt: skip
    joint_events, ratios, ratio_bounds, rates = [], [], [], []
    for seed in range(args.seeds):
        train = {"steps": args.steps, "batch": args.batch, "seed": seed,
                 "eval_events": args.eval_events, "warmup_steps": args.steps // 5}  # fmt: skip
        base = from_dict({"train": train})
        for method in ("joint", "factorized", "reference"):
            cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, method=method))
            with tempfile.TemporaryDirectory() as tmp:
                s = codesign.run(cfg, tmp)
            util[method].append(s["evaluation"]["utility"])
            for k in ("cost_eur", "ebops", "within_budget"):
                extra[method][k].append(s[k])
            for k in ("resolution", "photon_efficiency"):
                extra[method][k].append(s["evaluation"][k])
            if method == "joint":
                joint_events.append(s["train_events"] + args.eval_events)
                rates.append(s["train_events_per_s"])
            log.info("seed %d %s: %s", seed, method, s["evaluation"])
        bo = run_bayesopt(base, args.bo_trials, args.steps, args.eval_events, seed=seed)
        ev = evaluate_network(bo.best_geometry, bo.best_net, base.utility, args.eval_events,
                              seed=10_000 + seed)  # fmt: skip
        util["bayesopt"].append(ev.utility)
        target = util["joint"][-1]
        reached = [t.events_so_far for t in bo.trials if t.utility >= target]
        if reached:
            ratios.append(reached[0] / joint_events[-1])
        else:
            ratio_bounds.append(bo.events / joint_events[-1])
        log.info("seed %d bayesopt: best re-evaluated %s", seed, ev)
    grad = calo_torch.gradient_check(
        calo.Geometry(n_layers=20, n_cells=3, n_segments=2, cell_mm=20.0)
    )
    # reference speed: the stochastic simulator on the same machine, same run
    g = StudyConfig().detector
    geom = calo.Geometry(n_cells=g.n_cells, n_segments=g.n_segments)
    t0 = time.perf_counter()
    calo.simulate(geom, np.random.default_rng(0).uniform(5, 50, 4000), seed=0)
    ref_rate = 4000 / (time.perf_counter() - t0)
    out = {
        # each method trains its own e/gamma trigger network for its detector design
        "network_source": "trained",
        "network_description": "e/gamma networks trained per design by each method in this run",
        "utility": {m: mean_std(v) for m, v in util.items()},
        "designs": {
            m: {k: mean_std([float(x) for x in v]) for k, v in d.items()} for m, d in extra.items()
        },
        "gradient_rel_error": {"max": max(grad.values()), **grad},
        "joint_events": mean_std(joint_events),
        "optimizer_events_per_s": mean_std(rates),
        "optimizer_speed_vs_reference_sim": float(np.mean(rates)) / ref_rate,
        "settings": vars(args),
    }
    if args.lut_nets > 0:
        lut = _lut_calibration(args.lut_nets)
        out["lut_model_rel_error"] = lut.rel_error_loo
        out["lut_model"] = {"k_mul": lut.k_mul, "k_add": lut.k_add, "points": lut.points,
                            "error": "leave-one-out mean relative error"}  # fmt: skip
    if len(ratios) == args.seeds:
        out["events_ratio_bo_to_joint"] = mean_std(ratios)
    else:
        # BO did not reach the joint utility in some seeds: only a lower bound is known there
        out["events_ratio_bo_to_joint_reached"] = ratios
        out["events_ratio_bo_to_joint_lower_bounds"] = ratio_bounds
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
