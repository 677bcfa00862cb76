"""`l1forge sim events|summary`: generate Level-1 event datasets and look at them."""

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
    ev.add_argument(
        "--pileup-library-events",
        type=int,
        default=None,
        help="minimum-bias events in the shared pile-up library (default 50000, cached)",
    )
    ev.add_argument("--run", type=int, default=1, help="run number stored with the events")
    ev.add_argument("--processes-file", help="YAML process catalogue instead of the built-in")
    ev.set_defaults(func=_events)

    su = sub.add_parser("summary", help="JSON summary and plots of an event file")
    su.add_argument("file", help="HDF5 event file")
    su.add_argument("--plots", help="folder for the plots (default: beside the file)")
    su.set_defaults(func=_summary)


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
