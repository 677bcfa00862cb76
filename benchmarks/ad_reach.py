"""Reach of the anomaly trigger: the hardware score against the best float score, and its firmware.

Generates (once, cached under ``--out``) a Pythia minimum-bias sample and the four 2021-challenge
signals with ``l1forge.sim.generate``, trains ``l1forge train ad`` with the given configuration
(default: the project's default) on half the minimum-bias events, and scores the other half
and the signals with the IR emulator (the hardware integers) and with the float
reconstruction error of the same VAE. Then builds the firmware at 2 cycles / 40 MHz and sizes
it with yosys, and checks the emulator against the QKeras network on ``--bitexact-vectors``.
TPRs at an FPR the test sample cannot resolve (fewer than ``MIN_EVENTS_ABOVE`` background
events above the threshold, the rule of ``models.evaluate``) are null. Writes ROC curves
(both scores per signal) and score distributions as PNG; prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from l1forge.models import evaluate
from l1forge.models.config import load_config

FLOAT_SCORES = ("recon_mse",)  # float scores of the same training (the best is compared)


def _sample(args: argparse.Namespace) -> Path:
    from l1forge.sim.generate import demo_dataset

    name = f"sample_bg{args.n_background}_sig{args.n_signal}_seed{args.seed}_pu{args.pileup:g}"
    n_bg, n_sig = args.n_background, args.n_signal
    return demo_dataset(Path(args.out) / name, n_bg, n_sig, args.seed, args.pileup, args.workers)


def _tpr(bg: np.ndarray, sig: np.ndarray, fpr: float) -> float | None:
    if not evaluate.fpr_resolvable(len(bg), fpr):
        return None
    return evaluate.tpr_at_fpr(bg, sig, fpr)[0]


def _roc_plot(name: str, bg: dict[str, np.ndarray], sig: dict[str, np.ndarray], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.CMS)
    fig, ax = plt.subplots(figsize=(8, 7))
    for score in bg:
        b, s = np.sort(bg[score]), np.sort(sig[score])
        thr = np.unique(np.concatenate([b, s]))
        fpr = 1.0 - np.searchsorted(b, thr, side="right") / len(b)
        tpr = 1.0 - np.searchsorted(s, thr, side="right") / len(s)
        ok = fpr > 0
        auc = evaluate.roc_auc(b, s)
        ax.plot(fpr[ok], tpr[ok], label=f"{score} (AUC {auc:.3f})")
    res = evaluate.smallest_resolvable_fpr(len(next(iter(bg.values())))) or 1.0
    ax.axvspan(1e-7, res, color="grey", alpha=0.15, label="unresolved by the test sample")
    ax.set_xscale("log")
    ax.set_xlim(1.0 / len(next(iter(bg.values()))), 1)
    ax.set_xlabel("background efficiency (FPR)")
    ax.set_ylabel(f"{name} efficiency (TPR)")
    ax.legend(fontsize=12)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _firmware(qnet_path: Path, work: Path) -> dict[str, Any]:
    from l1forge.firmware.report import build_and_size
    from l1forge.models.qnet import load

    figures = build_and_size(load(qnet_path), work / "fw2", cycles=2, clock_mhz=40.0)
    keys = ("lut", "ff", "dsp", "latency_cycles", "clock_mhz", "stage_delay_ns")
    return {k: figures[k] for k in (*keys, "timing_estimate_met")}


def _bit_exact(train_dir: Path, n: int) -> dict[str, Any]:
    from l1forge.models.emulator import Emulator
    from l1forge.models.networks import exact_predict
    from l1forge.models.qnet import load
    from l1forge.models.train import load_deploy_model
    from l1forge.models.vectors import bitexact_vectors

    ir = load(train_dir / "encoder.qnet.json")
    x = bitexact_vectors(ir, n, seed=5)
    with Emulator(ir) as emu:
        want = emu.run_float(x)
    got = exact_predict(load_deploy_model(train_dir), x)
    return {"bit_exact": bool(np.array_equal(got, want)), "bit_exact_vectors": len(x)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="training YAML (default: the project's default config)")
    parser.add_argument("--tag", default="default", help="name of this configuration's folder")
    parser.add_argument("--n-background", type=int, default=1_000_000)
    parser.add_argument("--n-signal", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--pileup", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bitexact-vectors", type=int, default=100_000)
    parser.add_argument("--no-firmware", action="store_true", help="skip the yosys report")
    parser.add_argument("--out", default="out/ad_reach")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    from l1forge.models.train import TEST_SCORES, read_inputs, train

    data = _sample(args)
    cfg = load_config(args.config)
    bits = cfg.network.input_hw_bits
    work = Path(args.out) / args.tag
    with contextlib.redirect_stdout(sys.stderr):  # Keras' epoch lines: stdout holds the JSON
        bg, sig = read_inputs(data / "background.h5", bits), read_inputs(data / "signals.h5", bits)
        train(cfg, bg, sig, work)
    with np.load(work / TEST_SCORES) as z:
        scores = {k: z[k] for k in z.files}
    names = sorted({k.split("/", 1)[1] for k in scores} - {"background"})
    bg_hw = scores["score_ir/background"].astype(float)
    n_bg = len(bg_hw)
    signals: dict[str, Any] = {}
    for name in names:
        sig_hw = scores[f"score_ir/{name}"].astype(float)
        best = max(
            FLOAT_SCORES,
            key=lambda f: evaluate.roc_auc(scores[f"{f}/background"], scores[f"{f}/{name}"]),
        )
        bg_f, sig_f = scores[f"{best}/background"], scores[f"{best}/{name}"]
        signals[name] = {
            "auc_hardware": evaluate.roc_auc(bg_hw, sig_hw),
            "auc_float_best": evaluate.roc_auc(bg_f, sig_f),
            "float_best": best,
            "tpr_1e-5_hardware": _tpr(bg_hw, sig_hw, 1e-5),
            "tpr_1e-5_float_best": _tpr(bg_f, sig_f, 1e-5),
            "tpr_1e-4_hardware": _tpr(bg_hw, sig_hw, 1e-4),
            "tpr_1e-4_float_best": _tpr(bg_f, sig_f, 1e-4),
        }
        _roc_plot(
            name,
            {"hardware score": bg_hw, best: bg_f},
            {"hardware score": sig_hw, best: sig_f},
            work / f"roc_{name}.png",
        )
    fw = {} if args.no_firmware else _firmware(work / "encoder.qnet.json", work)
    summary = json.loads((work / "summary.json").read_text())
    out = {
        "network_source": "trained",
        "network_description": (
            f"config {args.config or 'default'} ({args.tag}) trained on "
            f"{summary['n_background_train']} of {args.n_background} minimum-bias events "
            f"(seed {args.seed}, pile-up {args.pileup:g}), {work / 'encoder.qnet.json'}"
        ),
        "sample": str(data),
        "n_background_test": n_bg,
        "n_signal": args.n_signal,
        "fpr_resolution": evaluate.smallest_resolvable_fpr(n_bg),
        "signals": signals,
        **fw,
        **_bit_exact(work, args.bitexact_vectors),
        "plots": sorted(str(p) for p in work.glob("*.png")),
    }
    (work / "ad_reach.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))
    return 0 if out["bit_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
