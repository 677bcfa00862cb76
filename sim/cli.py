"""`l1forge sim events|summary|surrogate`: Level-1 event datasets, the calorimeter surrogate."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sim", help="generate and inspect Level-1 event datasets")
    sub = p.add_subparsers(dest="sim_command", required=True)

    ev = sub.add_parser("events", help="generate Pythia 8 events reduced to Level-1 objects")
    ev.add_argument(
        "--process",
        action="append",
        required=True,
        help="process name (repeat for several); see sim/processes.yaml",
    )
    ev.add_argument("--n", type=int, required=True, help="events per process")
    ev.add_argument("--out", required=True, help="output HDF5 file")
    ev.add_argument("--seed", type=int, default=1)
    ev.add_argument("--pileup", type=float, default=None, help="mean pile-up (default 20)")
    ev.add_argument("--workers", type=int, default=1, help="local dask worker processes")
    ev.add_argument("--scheduler", help="address of a running dask scheduler")
    ev.add_argument("--shard-events", type=int, default=None, help="events per shard")
    ev.add_argument("--pileup-library-events", type=int, help="min-bias pile-up library (50000)")
    ev.add_argument("--run", type=int, default=1, help="run number stored with the events")
    ev.add_argument("--processes-file", help="YAML process catalogue instead of the built-in")
    ev.set_defaults(func=_events)

    su = sub.add_parser("summary", help="JSON summary and plots of an event file")
    su.add_argument("file", help="HDF5 event file")
    su.add_argument("--plots", help="folder for the plots (default: beside the file)")
    su.set_defaults(func=_summary)

    sg = sub.add_parser("surrogate", help="the learned calorimeter surrogate (train, validate)")
    sgs = sg.add_subparsers(dest="surrogate_command", required=True)
    tr = sgs.add_parser("train", help="simulate reference showers over θ and train the flows")
    tr.add_argument("--out", required=True, help="folder for the model (data cached in OUT/data)")
    tr.add_argument("--points", type=int, default=512, help="θ points (Sobol over the range)")
    tr.add_argument("--events-per-point", type=int, default=800)
    tr.add_argument("--epochs", type=int, default=12, help="epochs of the shape flow")
    tr.add_argument("--energy-epochs", type=int, default=40, help="epochs of the energy flow")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--workers", type=int, default=2, help="processes simulating showers")
    tr.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    tr.set_defaults(func=_surrogate_train)
    va = sgs.add_parser("validate", help="W1 and classifier AUC on held-out θ points, plots")
    va.add_argument("model", help="folder of a trained surrogate")
    va.add_argument("--report", help="folder for validation.json and plots (default MODEL/report)")
    va.add_argument("--events-per-point", type=int, default=4000)
    va.add_argument("--seed", type=int, default=1)
    va.set_defaults(func=_surrogate_validate)


def _events(args: argparse.Namespace) -> int:
    from l1forge.errors import ConfigError
    from l1forge.sim.dataset import check_writable, concat_events, write_events
    from l1forge.sim.generate import (
        DEFAULT_PILEUP,
        DEFAULT_SHARD_EVENTS,
        PILEUP_LIBRARY_EVENTS,
        describe,
        generate_events,
    )

    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file name ending in .h5")
    check_writable(out)
    t0 = time.perf_counter()
    sets = [
        generate_events(
            name,
            args.n,
            args.seed + i,
            DEFAULT_PILEUP if args.pileup is None else args.pileup,
            args.workers,
            args.scheduler,
            run=args.run,
            shard_events=args.shard_events or DEFAULT_SHARD_EVENTS,
            catalogue=args.processes_file,
            pileup_library_events=args.pileup_library_events or PILEUP_LIBRARY_EVENTS,
        )
        for i, name in enumerate(args.process)
    ]
    events = concat_events(sets)
    seconds = time.perf_counter() - t0
    write_events(out, events)
    summary = {
        "output": str(out),
        "events": len(events),
        "events_per_s": len(events) / seconds,
        "processes": describe(events),
    }
    print(json.dumps(summary, indent=1))
    return 0


def _summary(args: argparse.Namespace) -> int:
    from l1forge.sim.dataset import read_events
    from l1forge.sim.generate import describe
    from l1forge.sim.plots import plot_objects

    events = read_events(args.file)
    folder = Path(args.plots) if args.plots else Path(args.file).with_suffix("").parent
    stem = Path(args.file).stem
    plots = plot_objects(events, folder, stem)
    summary = {
        "file": args.file,
        "events": len(events),
        "processes": describe(events),
        "provenance": [
            {k: part.get(k) for k in ("process", "n", "seed", "pileup", "versions")}
            for part in events.provenance.get("parts", [events.provenance])
        ],
        "plots": [str(p) for p in plots],
    }
    print(json.dumps(summary, indent=1))
    return 0


def _surrogate_train(args: argparse.Namespace) -> int:
    import torch

    from l1forge.errors import ConfigError
    from l1forge.sim import surrogate
    from l1forge.sim.surrogate_data import ThetaRange, cached_showers, training_points

    if args.points < 2 or args.events_per_point < 10:
        raise ConfigError("--points must be >= 2 and --events-per-point >= 10")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    rng_ = ThetaRange()
    data = out / "data" / "train.npz"
    points = training_points(rng_, args.points, args.seed)
    sh = cached_showers(data, rng_, points, args.events_per_point, args.seed, args.workers)
    cfg = surrogate.TrainConfig(
        epochs=args.epochs, energy_epochs=args.energy_epochs, seed=args.seed
    )
    model, info = surrogate.train(sh, surrogate.SurrogateSpec(range=rng_), cfg)
    info["data"] = {
        "file": str(data),
        "provenance": json.loads(data.with_suffix(".json").read_text()),
    }
    surrogate.save(model, out, info)
    last = {k: h[-1] for k, h in info["history"].items()}
    print(json.dumps({"out": str(out), "showers": len(sh.e_gev), "final": last,
                      "train_s": info["train_s"]}, indent=1))  # fmt: skip
    return 0


def _surrogate_validate(args: argparse.Namespace) -> int:
    from l1forge.sim import surrogate
    from l1forge.sim.surrogate_report import validate_heldout

    model = surrogate.load(args.model)
    report = Path(args.report) if args.report else Path(args.model) / "report"
    summary = validate_heldout(model, report, args.events_per_point, args.seed)
    brief = {}
    for p in summary["points"]:
        sur, floor = p["surrogate"], p["reference_floor"]
        brief[p["point"]["name"]] = {
            "auc_high": round(sur["classifier_auc_high_level"], 3),
            "auc_low": round(sur["classifier_auc_low_level"], 3),
            "floor_auc_high": round(floor["classifier_auc_high_level"], 3),
        }
    print(json.dumps({"report": str(report / "validation.json"), "points": brief}, indent=1))
    return 0
