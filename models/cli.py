"""`l1forge train ad|classifier ...`: train on sim datasets, export the qnet IR, evaluate."""

from __future__ import annotations

import argparse
import dataclasses
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
        k.add_argument("--config", help="YAML with `network` and `training` sections")
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


def _run(args: argparse.Namespace) -> int:
    from l1forge.models.config import _validate_train, load_config
    from l1forge.models.train import Inputs, read_inputs, train

    cfg = load_config(args.config, kind=args.kind)
    over = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if v is not None}
    if over:
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, **over))
        _validate_train(cfg.training)
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
