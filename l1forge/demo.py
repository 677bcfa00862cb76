"""`l1forge demo`: the whole chain on built-in defaults, reduced to minutes.

Pythia events -> anomaly-detector training and its qnet IR -> firmware (Verilog, wrappers,
lint, synthesis report) -> a reduced co-design study -> a short run of the online daemon
(emulator backend, the trained IR, replay of the demo minimum-bias events) -> the online run's
menu calibrated offline with `l1forge emulate calibrate` and its rate/efficiency table
(`l1forge emulate rates`). Each stage prints its JSON summary; the demo ends with one JSON
object that points at every output.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help="run the whole chain on built-in defaults (minutes)")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--background", type=int, default=4000, help="minimum-bias events")
    p.add_argument("--signal", type=int, default=500, help="events per signal process")
    p.add_argument("--workers", type=int, default=2, help="event-generation worker processes")
    p.add_argument("--epochs", type=int, default=20, help="anomaly-detector training epochs")
    p.add_argument("--skip-synthesis", action="store_true", help="no yosys resource report")
    p.add_argument(
        "--online-events", type=int, default=300_000, help="events of the online daemon run"
    )
    p.set_defaults(func=run)


def _stage(name: str, argv: list[str]) -> None:
    from l1forge.cli import main
    from l1forge.errors import L1ForgeError

    log.info("demo stage %s: l1forge %s", name, " ".join(argv))
    t0 = time.perf_counter()
    rc = main(argv)
    if rc != 0:
        raise L1ForgeError(f"demo stage {name!r} failed (exit code {rc}); see the messages above")
    log.info("demo stage %s done in %.0f s", name, time.perf_counter() - t0)


def online_stage(out: Path, data: Path, qnet: Path, n_events: int) -> dict[str, Any]:
    """`l1forge online run` on the embedded default run, pointed at this demo's outputs."""
    from l1forge.online.control.runcontrol import RUN_SUMMARY_FILE, RunNumbers

    online = out / "online"
    sets = {
        "source.paths": [str(data / "background.h5")],
        "backend.models": {"ad": str(qnet)},
        "source.n_events": n_events,
        "storage.out_dir": str(online),
        "state_dir": str(online / "state"),
    }
    argv = ["online", "run"]
    for key, value in sets.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    _stage("online", argv)
    run = RunNumbers(online / "state").last()
    s = json.loads((online / f"run{run:06d}" / RUN_SUMMARY_FILE).read_text())
    for seed, rate in s["rates_hz"].items():
        log.info("online run %d: %-12s %9d events  %10.1f Hz", run, seed, s["per_seed"][seed], rate)
    keys = ("run", "n_events_in", "n_processed", "n_accepted", "lost", "duplicated")
    dqm = s.get("dqm") or {}
    log.info(
        "online run %d: DQM saw %s events in %s lumisections (%s of %s batches on the tap)",
        run,
        dqm.get("monitored_events"),
        dqm.get("n_lumisections"),
        s.get("tap_batches"),
        s.get("n_batches"),
    )
    return {
        **{k: s[k] for k in keys},
        "dqm": {k: dqm.get(k) for k in ("monitored_events", "n_lumisections", "root_path")},
        "rates_hz": s["rates_hz"],
        "events_per_s": round(s["events_per_s"]),
        "run_dir": s["run_dir"],
    }


def menu_stage(out: Path, data: Path, qnet: Path) -> dict[str, Any]:
    """The embedded default run's menu, calibrated on the demo's minimum-bias events, and its
    table of rates and signal efficiencies (printed by the `rates` stage)."""
    from l1forge.online.config import load_run_config
    from l1forge.online.datapath.menu import configured_menu

    cfg = load_run_config(
        None, {"source.paths": [str(data / "background.h5")], "backend.models": {"ad": str(qnet)}}
    )
    template_menu = configured_menu(cfg)
    folder = out / "menu"
    folder.mkdir(parents=True, exist_ok=True)
    template = folder / "menu_template.json"
    template.write_text(json.dumps(template_menu.to_json(), indent=1) + "\n")
    model = ["--model", f"ad={qnet}", "--no-progress"]
    menu = folder / "menu.json"
    zero_bias = str(data / "background.h5")
    _stage(
        "calibrate",
        [
            "emulate",
            "calibrate",
            *model,
            "--zero-bias",
            zero_bias,
            "--template",
            str(template),
            "--out",
            str(menu),
        ],
    )
    rates = folder / "rates"
    _stage(
        "rates",
        [
            "emulate",
            "rates",
            *model,
            "--menu",
            str(menu),
            "--zero-bias",
            zero_bias,
            "--signal",
            str(data / "signals.h5"),
            "--out",
            str(rates),
        ],
    )
    table = json.loads((rates / "rates.json").read_text())
    return {
        "menu": str(menu),
        "table": str(rates / "rates.json"),
        "rates_hz": {s["seed"]: s["rate"]["rate_hz"] for s in table["seeds"]},
        "total_rate_hz": table["total"]["rate"]["rate_hz"],
    }


def run(args: argparse.Namespace) -> int:
    from l1forge.sim.generate import demo_dataset

    out = Path(args.out)
    t0 = time.perf_counter()
    log.info("demo stage events: %d minimum-bias + %d per signal", args.background, args.signal)
    data = demo_dataset(out / "data", args.background, args.signal, seed=1, n_workers=args.workers)
    _stage("summary", ["sim", "summary", str(data / "background.h5")])
    ad = out / "ad"
    _stage(
        "train",
        [
            "train",
            "ad",
            "--data",
            str(data / "background.h5"),
            "--signals",
            str(data / "signals.h5"),
            "--out",
            str(ad),
            "--epochs",
            str(args.epochs),
        ],
    )
    qnet = ad / "encoder.qnet.json"
    fw = out / "firmware"
    _stage("firmware", ["firmware", "build", str(qnet), "--out", str(fw)])
    if not args.skip_synthesis:
        _stage("report", ["firmware", "report", str(fw)])
    study = resources.files("l1forge.offline").joinpath("study.yaml")
    with resources.as_file(study) as study_path:
        _stage(
            "codesign",
            ["codesign", "run", "--config", str(study_path), "--out", str(out / "codesign")],
        )
    online = online_stage(out, data, qnet, args.online_events)
    menu = menu_stage(out, data, qnet)
    summary = {
        "online": online,
        "menu": menu,
        "events": str(data),
        "anomaly_detector": str(ad / "summary.json"),
        "qnet_ir": str(qnet),
        "firmware": str(fw),
        "codesign": str(out / "codesign"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps({"demo": summary}, indent=1))
    return 0
