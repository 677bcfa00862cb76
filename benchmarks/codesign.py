"""Co-design benchmark: joint vs fair and resolution-only factorized designs, Bayesian
optimization run to its crossing, the reference design, a budget scan and a latency term.

Every final design is re-evaluated on the stochastic reference simulator with fresh events
through the bit-exact emulator of its exported network. Per seed: the four methods, a joint
run under a tight latency budget, and optuna until a trial's design, re-evaluated as the joint
design is, reaches the joint utility (or ``--bo-max-trials``). Then a budget scan on dask at
detector budgets below and above what the designs cost. Prints one JSON object on stdout;
progress goes to stderr; the scan's folders and plots go to ``--out``.

Takes about 20 minutes on 2 cores with the defaults (seeds run in ``--jobs`` processes;
Bayesian optimization needs 16-68 trials of about 10 s per seed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from l1forge.measure import mean_std
from l1forge.models.qnet import save as save_qnet
from l1forge.offline import codesign, latency_model
from l1forge.offline.bayesopt import run_bayesopt
from l1forge.offline.config import StudyConfig, from_dict
from l1forge.sim import calo, calo_torch

log = logging.getLogger("benchmarks.codesign")

METHODS = ("joint", "factorized_fair", "factorized_resolution", "reference")
DESIGN_KEYS = ("cost_eur", "ebops", "lut_estimate", "delay_ns", "latency_stages", "within_budget")

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


def _base(args: argparse.Namespace, seed: int) -> StudyConfig:
    train = {"steps": args.steps, "batch": args.batch, "seed": seed,
             "eval_events": args.eval_events, "warmup_steps": args.steps // 5}  # fmt: skip
    return from_dict({"train": train})


def frac_bits(net) -> list[int]:
    """Fractional weight bits of each dense layer of an exported network."""
    return [lay.array_formats["weight"].frac_bits for lay in net.layers if lay.op == "dense"]


def _run(cfg: StudyConfig) -> tuple[dict[str, Any], Any]:
    """One study in a scratch folder: its summary and its exported network."""
    from l1forge.models.qnet import load

    with tempfile.TemporaryDirectory() as tmp:
        s = codesign.run(cfg, tmp)
        return s, load(Path(tmp) / "net.json")


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The four methods, the latency-budget run and BO to its crossing, for one seed."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    torch.set_num_threads(1)
    base = _base(args, seed)
    res: dict[str, Any] = {"seed": seed, "methods": {}, "nets": []}
    for method in METHODS:
        cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, method=method))
        s, net = _run(cfg)
        res["nets"].append(net)
        res["methods"][method] = {
            "utility": s["evaluation"]["utility"],
            "photon_efficiency": s["evaluation"]["photon_efficiency"],
            "resolution": s["evaluation"]["resolution"],
            "classical_utility": s["classical_evaluation"]["utility"],
            "train_events": s["train_events"],
            "train_events_per_s": s["train_events_per_s"],
            "design": s["design"],
            **{k: s[k] for k in DESIGN_KEYS},
        }
        log.info("seed %d %s: utility %.4f", seed, method, s["evaluation"]["utility"])
    # the fair factorized θ with its network trained as long as the joint one (not the same
    # events: stage 1 comes on top), to tell the design's worth from the event budget's
    des = res["methods"]["factorized_fair"]["design"]
    det = dataclasses.replace(base.detector, absorber=des["absorber"], optimize_material=False,
                              init={k: float(des[k]) for k in base.detector.init})  # fmt: skip
    tr = dataclasses.replace(base.train, method="reference")
    s, net = _run(dataclasses.replace(base, detector=det, train=tr))
    res["fair_theta_full_network"] = {"utility": s["evaluation"]["utility"],
                                      **{k: s[k] for k in DESIGN_KEYS}}  # fmt: skip
    # the latency term: the joint study again, its network held to a tighter budget
    cost = dataclasses.replace(base.cost, clock_mhz=args.latency_clock_mhz,
                               latency_stages_budget=args.latency_stages)  # fmt: skip
    # the fractional bits move at most about their learning rate per step under Adam: at
    # lr_net they could fall 1.5 bits in 150 steps, not enough for a budget this tight
    tr = dataclasses.replace(base.train, lr_bits=args.latency_lr_bits)
    s, net = _run(dataclasses.replace(base, cost=cost, train=tr))
    res["nets"].append(net)
    res["latency_budget_run"] = {"utility": s["evaluation"]["utility"],
                                 "design": s["design"], **{k: s[k] for k in DESIGN_KEYS},
                                 "frac_bits": frac_bits(net)}  # fmt: skip
    joint = res["methods"]["joint"]
    joint_events = joint["train_events"] + args.eval_events  # training + its one re-evaluation
    bo = run_bayesopt(base, args.bo_max_trials, args.steps, args.eval_events, seed=seed,
                      target=joint["utility"])  # fmt: skip
    fresh = [t.reevaluated - t.penalty for t in bo.trials if t.reevaluated is not None]
    res["bayesopt"] = {
        "trials": len(bo.trials),
        "crossing_trial": bo.crossing_trial,
        "crossing_events": bo.crossing_events,
        "joint_events": joint_events,
        "best_reevaluated": max(fresh),
        "events_ratio": None if bo.crossing_events is None else bo.crossing_events / joint_events,
        # not reached within the cap: the ratio is above this bound
        "events_ratio_lower_bound": (bo.events + args.eval_events) / joint_events,
    }
    log.info("seed %d bayesopt: %s", seed, res["bayesopt"])
    return res


def _budget_scan(args: argparse.Namespace) -> dict[str, Any]:
    from l1forge.offline.scan import scan

    cfg = _base(args, 0)
    out = Path(args.out) / "scan"
    res = scan(cfg, args.scan_detector_budgets, args.scan_ebops_budgets, out, n_workers=args.jobs)
    keys = ("detector_budget_eur", "ebops_budget", "utility", "cost_eur", "ebops",
            "lut_estimate", "delay_ns", "latency_stages", "at_detector_budget")  # fmt: skip
    return {
        "points": [
            {k: p[k] for k in keys}
            | {"readout_bits": p["design"]["readout_bits"], "absorber": p["design"]["absorber"]}
            for p in res["points"]
        ],
        "pareto": res["pareto"],
        "detector_budget_binds": res["detector_budget_binds"],
        "plot": str(out / "pareto.png"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--eval-events", type=int, default=2000)
    ap.add_argument("--bo-max-trials", type=int, default=120, help="cap of the BO search per seed")
    ap.add_argument("--latency-clock-mhz", type=float, default=40.0,
                    help="clock of the latency-budget run")  # fmt: skip
    ap.add_argument("--latency-stages", type=int, default=1, help="its stage budget")
    ap.add_argument("--latency-lr-bits", type=float, default=0.05,
                    help="learning rate of the bits in the latency-budget run")  # fmt: skip
    ap.add_argument("--scan-detector-budgets", type=float, nargs="*",
                    default=[450.0, 525.0, 600.0, 650.0, 4000.0])  # fmt: skip
    ap.add_argument("--scan-ebops-budgets", type=float, nargs="+", default=[60000.0])
    ap.add_argument("--lut-nets", type=int, default=6, help="networks synthesized (0: skip)")
    ap.add_argument("--jobs", type=int, default=2, help="processes (seeds, scan workers)")
    ap.add_argument("--out", default="out/codesign_bench", help="scan folders and plots")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        seeds = list(pool.map(run_seed, [args] * args.seeds, range(args.seeds)))
    util = {m: mean_std([r["methods"][m]["utility"] for r in seeds]) for m in METHODS}
    util["bayesopt"] = mean_std([r["bayesopt"]["best_reevaluated"] for r in seeds])
    util["fair_theta_full_network"] = mean_std(
        [r["fair_theta_full_network"]["utility"] for r in seeds]
    )
    nets_dir = Path(args.out) / "nets"
    nets_dir.mkdir(parents=True, exist_ok=True)
    for r in seeds:
        for label, net in zip((*METHODS, "joint_latency_budget"), r["nets"], strict=True):
            save_qnet(net, nets_dir / f"seed{r['seed']}_{label}.json")
    ratios = [r["bayesopt"]["events_ratio"] for r in seeds]
    fair = [r["methods"]["joint"]["utility"] - r["methods"]["factorized_fair"]["utility"]
            for r in seeds]  # fmt: skip
    # the delay model's error on the networks the optimizers produced (out of its calibration)
    designs = [n for r in seeds for n in r["nets"]]
    model_err = []
    for n in designs:
        truth = latency_model.alkaid_delay_ns(n)
        model_err.append(abs(latency_model.DEFAULT_DELAY_MODEL.predict(n) - truth) / truth)
    # refit on the random calibration networks and this run's designs together
    delay_cal = latency_model.calibrate(latency_model.calibration_networks() + designs)
    grad = calo_torch.gradient_check(
        calo.Geometry(n_layers=20, n_cells=3, n_segments=2, cell_mm=20.0)
    )
    g = StudyConfig().detector
    geom = calo.Geometry(n_cells=g.n_cells, n_segments=g.n_segments)
    t_ref = time.perf_counter()
    calo.simulate(geom, np.random.default_rng(0).uniform(5, 50, 4000), seed=0)
    ref_rate = 4000 / (time.perf_counter() - t_ref)
    rates = [r["methods"]["joint"]["train_events_per_s"] for r in seeds]
    out: dict[str, Any] = {
        # each method trains its own e/gamma trigger network for its detector design
        "network_source": "trained",
        "network_description": "e/gamma networks trained per design by each method in this run",
        "utility": util,
        "joint_minus_factorized_fair": {
            **mean_std(fair),
            "combined_std": float(
                np.hypot(util["joint"]["std"] or 0.0, util["factorized_fair"]["std"] or 0.0)
            ),
        },
        "events_ratio_bo_to_joint": {
            **(mean_std(ratios) if None not in ratios else {"mean": None, "std": None}),
            "per_seed": ratios,
            "lower_bound_per_seed": [r["bayesopt"]["events_ratio_lower_bound"] for r in seeds],
            "cap_trials": args.bo_max_trials,
        },
        "latency_stages": {m: [r["methods"][m]["latency_stages"] for r in seeds] for m in METHODS},
        "latency_budget": {
            "default": {
                "clock_mhz": StudyConfig().cost.clock_mhz,
                "stages": StudyConfig().cost.latency_stages_budget,
            },
            "tight": {
                "clock_mhz": args.latency_clock_mhz,
                "stages": args.latency_stages,
                "lr_bits": args.latency_lr_bits,
            },
            "joint_tight_utility": mean_std([r["latency_budget_run"]["utility"] for r in seeds]),
            "joint_tight_delay_ns": [r["latency_budget_run"]["delay_ns"] for r in seeds],
            "joint_tight_stages": [r["latency_budget_run"]["latency_stages"] for r in seeds],
            "joint_tight_frac_bits": [r["latency_budget_run"]["frac_bits"] for r in seeds],
            "joint_tight_readout_bits": [
                r["latency_budget_run"]["design"]["readout_bits"] for r in seeds
            ],
            "joint_delay_ns": [r["methods"]["joint"]["delay_ns"] for r in seeds],
        },
        "per_seed": [
            {
                "seed": r["seed"],
                "methods": r["methods"],
                "bayesopt": r["bayesopt"],
                "latency_budget_run": r["latency_budget_run"],
                "fair_theta_full_network": r["fair_theta_full_network"],
            }
            for r in seeds
        ],
        "gradient_rel_error": {"max": max(grad.values()), **grad},
        "delay_model_rel_error": delay_cal.rel_error_loo,
        "delay_model_refit": dataclasses.asdict(delay_cal),
        "delay_model_rel_error_on_designs": mean_std(model_err),
        "optimizer_events_per_s": mean_std(rates),
        "optimizer_speed_vs_reference_sim": float(np.mean(rates)) / ref_rate,
        "settings": vars(args),
    }
    if args.scan_detector_budgets:
        scan = _budget_scan(args)
        out["budget_scan"] = scan
        out["detector_budget_binds"] = scan["detector_budget_binds"]
    if args.lut_nets > 0:
        lut = _lut_calibration(args.lut_nets)
        out["lut_model_rel_error"] = lut.rel_error_loo
        out["lut_model"] = {"k_mul": lut.k_mul, "k_add": lut.k_add, "points": lut.points,
                            "error": "leave-one-out mean relative error"}  # fmt: skip
    out["wall_s"] = time.perf_counter() - t0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "codesign.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
