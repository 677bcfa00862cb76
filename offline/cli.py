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


def _run(args: argparse.Namespace) -> int:
    from l1forge.offline.codesign import run
    from l1forge.offline.config import load_config

    summary = run(load_config(args.config), args.out, resume=args.resume)
    keys = ("design", "evaluation", "cost_eur", "ebops", "within_budget", "train_events", "steps")
    print(json.dumps({k: summary[k] for k in keys} | {"out": str(args.out)}, indent=1))
    return 0
