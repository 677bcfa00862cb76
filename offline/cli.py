"""`l1forge codesign ...`: joint detector + trigger-network optimization studies."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("codesign", help="co-design a calorimeter and its trigger network")
    sub = p.add_subparsers(dest="codesign_command", required=True)
    run = sub.add_parser("run", help="run a study: train, export the design, re-evaluate it")
    run.add_argument("--config", required=True, help="study YAML (sections: detector, network, "
                     "utility, cost, train)")  # fmt: skip
    run.add_argument("--out", required=True, help="output folder (checkpoints, IR, report)")
    run.add_argument("--resume", action="store_true", help="continue from the folder's checkpoint")
    run.set_defaults(func=_run)
    sc = sub.add_parser("scan", help="run the study over a grid of budgets (dask) -> Pareto front")
    sc.add_argument("--config", required=True, help="study YAML")
    sc.add_argument("--out", required=True, help="output folder (one sub-folder per point)")
    sc.add_argument("--detector-budgets", type=float, nargs="+", required=True,
                    help="detector budgets in EUR")  # fmt: skip
    sc.add_argument("--ebops-budgets", type=float, nargs="+", required=True,
                    help="EBOPs budgets of the network")  # fmt: skip
    sc.add_argument("--scheduler", default=None, help="dask scheduler address (default: local)")
    sc.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    sc.set_defaults(func=_scan)


def _run(args: argparse.Namespace) -> int:
    from l1forge.offline.codesign import run
    from l1forge.offline.config import load_config

    summary = run(load_config(args.config), args.out, resume=args.resume)
    keys = ("design", "evaluation", "classical_evaluation", "cost_eur", "ebops", "lut_estimate",
            "delay_ns", "latency_stages", "within_budget", "train_events", "steps")  # fmt: skip
    print(json.dumps({k: summary[k] for k in keys} | {"out": str(args.out)}, indent=1))
    return 0


def _scan(args: argparse.Namespace) -> int:
    from l1forge.offline.config import load_config
    from l1forge.offline.scan import scan

    res = scan(
        load_config(args.config),
        args.detector_budgets,
        args.ebops_budgets,
        args.out,
        scheduler=args.scheduler,
        n_workers=args.workers,
    )
    front = [res["points"][i] for i in res["pareto"]]
    keys = ("detector_budget_eur", "ebops_budget", "utility", "cost_eur", "ebops", "lut_estimate",
            "latency_stages", "at_detector_budget")  # fmt: skip
    doc = {"pareto": [{k: p[k] for k in keys} for p in front],
           "detector_budget_binds": res["detector_budget_binds"], "out": args.out}  # fmt: skip
    print(json.dumps(doc))
    return 0
