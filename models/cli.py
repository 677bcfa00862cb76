"""`l1forge train ...` (train on sim datasets, export the qnet IR, evaluate) and `l1forge emulate
...` (the bit-exact emulator over event files: scores and seed bits, menu calibration, rate and
efficiency tables, a CI check against a stored output)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train a trigger network and export its qnet IR")
    kinds = p.add_subparsers(dest="train_kind", required=True)
    for kind, text in (("ad", "VAE anomaly detector (background only)"), ("classifier", "")):
        k = kinds.add_parser(kind, help=text or "supervised signal-vs-background classifier")
        k.add_argument("--data", required=True, help="background sim dataset (HDF5)")
        k.add_argument("--signals", nargs="+", required=True, help="signal sim datasets")
        k.add_argument("--out", required=True, help="output folder")
        k.add_argument(
            "--config",
            help="YAML with `network` and `training` sections"
            + (
                " (default: the shipped anomaly trigger, models/ad_shipped.yaml)"
                if kind == "ad"
                else ""
            ),
        )
        k.add_argument("--epochs", type=int, help="override training.epochs")
        k.add_argument("--seed", type=int, help="override training.seed")
        k.add_argument("--rate-hz", type=float, default=1000.0, help="target output rate")
        k.add_argument("--max-events", type=int, help="cap events per process")
        k.set_defaults(func=_run, kind=kind)
    r = kinds.add_parser(
        "reference",
        help="build (or find) the cached reference encoder that benchmarks measure",
    )
    r.add_argument("--cache", default="out/reference", help="cache folder (default out/reference)")
    r.add_argument("--workers", type=int, default=2, help="event-generation worker processes")
    r.set_defaults(func=_reference)
    _register_emulate(subparsers)


def _run(args: argparse.Namespace) -> int:
    from l1forge.models.config import SHIPPED_AD_CONFIG, load_config
    from l1forge.models.train import Inputs, read_inputs, train

    over = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if v is not None}
    path = args.config or (SHIPPED_AD_CONFIG if args.kind == "ad" else None)
    cfg = load_config(path, kind=args.kind, training=over)
    bits = cfg.network.input_hw_bits
    bg = read_inputs(args.data, bits, args.max_events)
    sig: dict = {}
    for path in args.signals:
        sig.update(read_inputs(path, bits, args.max_events).by_process)
    for name in bg.by_process:
        sig.pop(name, None)
    summary = train(cfg, bg, Inputs(sig), args.out, rate_hz=args.rate_hz)
    print(json.dumps(summary, indent=1))
    return 0


def _reference(args: argparse.Namespace) -> int:
    from l1forge.models.reference import reference_encoder

    ref = reference_encoder(args.cache, n_workers=args.workers)
    summary = json.loads(ref.summary_path.read_text())
    aucs = {k: round(v["auc"], 4) for k, v in summary["score"]["signals"].items()}
    print(json.dumps({"qnet": str(ref.qnet_path), "network": ref.describe(), "auc": aucs}))
    return 0


def _register_emulate(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "emulate", help="the bit-exact emulator over event files: scores, menus, rates, CI checks"
    )
    sub = p.add_subparsers(dest="emulate_command", required=True)

    def models(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--model",
            action="append",
            required=True,
            metavar="NAME=IR.json",
            help="a network (repeat for several); the menu's seeds name models by NAME",
        )
        q.add_argument("--chunk-events", type=int, default=65_536, help="events per chunk")
        q.add_argument("--no-progress", action="store_true", help="no progress bar")

    r = sub.add_parser("run", help="scores (and seed bits) of every event into ROOT or HDF5")
    models(r)
    r.add_argument("--events", required=True, help="event file (l1forge HDF5 or ROOT)")
    r.add_argument("--menu", help="menu JSON (Menu.to_json): adds seed_bits and a bool per seed")
    r.add_argument("--out", required=True, help="output file: .root (TTree Events) or .h5")
    r.set_defaults(func=_emulate_run)

    c = sub.add_parser("calibrate", help="set a menu's thresholds on a zero-bias sample")
    models(c)
    c.add_argument("--zero-bias", required=True, help="zero-bias (minimum-bias) event file")
    c.add_argument(
        "--seed",
        action="append",
        default=[],
        metavar="name=N,model=M,rate=HZ[,prescale=P][,threshold=T]",
        help="a seed (repeat, in bit order); model= (empty) is a zero-bias seed",
    )
    c.add_argument("--template", help="menu JSON whose seeds carry target_rate_hz / prescale")
    c.add_argument("--input-rate-hz", type=float, default=None, help="default 40 MHz")
    c.add_argument("--cl", type=float, default=0.6827, help="interval confidence level")
    c.add_argument("--out", required=True, help="calibrated menu JSON (for `online set-menu`)")
    c.set_defaults(func=_emulate_calibrate)

    t = sub.add_parser("rates", help="rate, pure rate and signal efficiency per seed")
    models(t)
    t.add_argument("--menu", required=True, help="calibrated menu JSON")
    t.add_argument("--zero-bias", required=True, help="zero-bias event file")
    t.add_argument("--signal", action="append", default=[], help="signal event file (repeat)")
    t.add_argument("--cl", type=float, default=0.6827, help="interval confidence level")
    t.add_argument("--out", required=True, help="folder for rates.json, rates.txt and plots")
    t.set_defaults(func=_emulate_rates)

    k = sub.add_parser(
        "check", help="emulate again and compare with a stored output (exit 1 on a difference)"
    )
    models(k)
    k.add_argument("--events", required=True, help="event file the reference was made from")
    k.add_argument("--menu", help="menu JSON the reference was made with")
    k.add_argument("--reference", required=True, help="stored output of `l1forge emulate run`")
    k.add_argument("--max-report", type=int, default=10, help="differing events to name")
    k.set_defaults(func=_emulate_check)


def _menu_arg(path: str | None, models: list):
    """The menu file (None without one), checked against the models it will run with."""
    from l1forge.models.emulate_files import check_menu, load_menu

    if not path:
        return None
    menu = load_menu(path)
    check_menu(menu, models, path)
    return menu


def _emulate_run(args: argparse.Namespace) -> int:
    from l1forge.models.emulate_files import emulate_file, load_models

    ms = load_models(args.model)
    menu = _menu_arg(args.menu, ms)
    summary = emulate_file(
        ms, args.events, args.out, menu, args.chunk_events, progress=not args.no_progress
    )
    print(json.dumps(summary))
    return 0


def parse_seed(text: str):
    """A Seed from ``name=N,model=M,rate=HZ,prescale=P,threshold=T`` (model may be empty)."""
    import math

    from l1forge.errors import ConfigError
    from l1forge.online.datapath.menu import Seed

    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("name", "model", "rate", "prescale", "threshold"):
            raise ConfigError(
                f"--seed {text!r}: expected name=N,model=M and any of rate=HZ, prescale=P, "
                f"threshold=T; bad part {part!r}"
            )
        fields[key.strip()] = value.strip()
    if "name" not in fields or "model" not in fields:
        raise ConfigError(f"--seed {text!r}: name= and model= are required")
    try:
        return Seed(
            name=fields["name"],
            model=fields["model"],
            threshold=float(fields["threshold"]) if "threshold" in fields else math.inf,
            prescale=int(fields.get("prescale", "1")),
            target_rate_hz=float(fields["rate"]) if "rate" in fields else None,
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"--seed {text!r}: {exc}") from exc


def _emulate_calibrate(args: argparse.Namespace) -> int:
    import math
    from pathlib import Path

    from l1forge.errors import ConfigError
    from l1forge.models.emulate_files import check_menu, emulate_scores, load_menu, load_models
    from l1forge.models.evaluate import LHC_INPUT_RATE_HZ
    from l1forge.models.rates import calibrate_menu
    from l1forge.online.datapath.menu import Menu

    if bool(args.seed) == bool(args.template):
        raise ConfigError("give the seeds either with --seed (repeated) or with --template")
    if args.template:
        template = load_menu(args.template)
        rate = args.input_rate_hz or template.input_rate_hz
        menu = Menu(template.seeds, rate)
    else:
        menu = Menu(
            tuple(parse_seed(s) for s in args.seed), args.input_rate_hz or LHC_INPUT_RATE_HZ
        )
    ms = load_models(args.model)
    where = args.template or "--seed"
    for s in menu.seeds:
        if not s.zero_bias and s.target_rate_hz is None and s.threshold == math.inf:
            raise ConfigError(f"{where}: seed {s.name!r} needs a target rate or a threshold")
    try:
        menu.check_models(m.name for m in ms)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    scores = emulate_scores(
        ms, args.zero_bias, chunk_events=args.chunk_events, progress=not args.no_progress
    )
    calibrated, report = calibrate_menu(menu, scores.scores, args.zero_bias, args.cl)
    check_menu(calibrated, ms, where)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(calibrated.to_json(), indent=1) + "\n")
    cal = out.with_name(out.stem + ".calibration.json")
    doc = {
        "menu": str(out),
        "zero_bias": str(args.zero_bias),
        "n_zero_bias": len(scores.label),
        "models": {m.name: {"ir": str(m.path), "sha256": m.sha256} for m in ms},
        "seeds": [c.to_json() for c in report],
    }
    cal.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc | {"calibration": str(cal)}))
    return 0


def _emulate_rates(args: argparse.Namespace) -> int:
    from pathlib import Path

    from l1forge.errors import ConfigError
    from l1forge.models.emulate_files import check_menu, emulate_scores, load_menu, load_models
    from l1forge.models.rates import format_table, menu_table, plot_table

    ms = load_models(args.model)
    menu = load_menu(args.menu)
    check_menu(menu, ms, args.menu)
    kw = {"chunk_events": args.chunk_events, "progress": not args.no_progress}
    zb = emulate_scores(ms, args.zero_bias, menu, **kw)
    signals: dict = {}
    for path in args.signal:
        for name, bits in emulate_scores(ms, path, menu, **kw).by_process().items():
            if name in signals:
                raise ConfigError(f"{path}: process {name!r} is also in an earlier signal file")
            signals[name] = bits
    assert zb.seed_bits is not None  # emulate_scores fills it when given a menu
    table = menu_table(menu, zb.seed_bits, signals, args.cl)
    table |= {"menu": str(args.menu), "zero_bias": str(args.zero_bias), "signals": args.signal}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = format_table(table)
    (out / "rates.txt").write_text(text + "\n")
    (out / "rates.json").write_text(json.dumps(table, indent=1) + "\n")
    plots = plot_table(table, out)
    print(text)
    rates = {s["seed"]: s["rate"]["rate_hz"] for s in table["seeds"]}
    print(
        json.dumps(
            {
                "table": str(out / "rates.json"),
                "plots": [str(p) for p in plots],
                "n_zero_bias": table["n_zero_bias"],
                "rates_hz": rates,
                "total_rate_hz": table["total"]["rate"]["rate_hz"],
                "total_efficiency": {
                    k: v["efficiency"] for k, v in table["total"]["efficiency"].items()
                },
            }
        )
    )
    return 0


def _emulate_check(args: argparse.Namespace) -> int:
    import sys

    from l1forge.models.emulate_files import check_file, load_models

    ms = load_models(args.model)
    menu = _menu_arg(args.menu, ms)
    result = check_file(
        ms,
        args.events,
        args.reference,
        menu,
        args.chunk_events,
        args.max_report,
        progress=not args.no_progress,
    )
    for line in (*result.problems, *result.first_differences):
        print(f"l1forge emulate check: {line}", file=sys.stderr)
    print(json.dumps(result.to_json() | {"reference": str(args.reference)}))
    return 0 if result.ok else 1
