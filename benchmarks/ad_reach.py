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
``--extra-signals`` scores larger signal samples of other seeds with the same networks, for
TPRs near 1e-4 at FPR 1e-5, which 20,000 signal events cannot resolve.
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


def _trained(work: Path, cfg, data: Path) -> bool:
    """Whether ``work`` already holds a training of ``cfg`` on ``data`` (then it is reused)."""
    from l1forge.models.config import config_to_dict

    try:
        summary = json.loads((work / "summary.json").read_text())
        sample = (work / "sample.txt").read_text().strip()
    except (OSError, ValueError):
        return False
    want = json.loads(json.dumps(config_to_dict(cfg)))  # tuples as the JSON holds them
    return summary.get("config") == want and sample == str(data)


def _floats_of(
    folder: Path, tag: str, data: Path, seed: int, scores: dict[str, np.ndarray]
) -> dict[str, str]:
    """Float scores of an earlier run on the same test events, added to ``scores``."""
    from l1forge.models.train import TEST_SCORES

    summary = json.loads((folder / "summary.json").read_text())
    reach = json.loads((folder / "ad_reach.json").read_text())
    if reach["sample"] != str(data) or summary["config"]["training"]["seed"] != seed:
        raise SystemExit(f"--float-from {tag}: another sample or split ({reach['sample']})")
    out = {}
    with np.load(folder / TEST_SCORES) as z:
        for f in FLOAT_SCORES:
            for k in z.files:
                if k.startswith(f"{f}/"):
                    scores[f"{tag}:{k}"] = z[k]
            out[f"{f} ({tag})"] = f"{tag}:{f}"
    return out


def _score_extra(
    files: list[str], work: Path, hw_bits: int, data: Path, folders: dict[str, Path], scores: dict
) -> dict[str, str]:
    """More signal events (files of ``l1forge sim events``) replace their signal's scores.

    The hardware score is this training's IR on the emulator (inputs saturated to ``hw_bits``);
    each float candidate (key prefix -> its training folder) is its VAE rebuilt from the folder,
    checked first against the scores it stored for the sample's own signal events. Returns
    signal -> the file its events now come from.
    """
    from l1forge.models import qnet
    from l1forge.models.emulator import Emulator
    from l1forge.models.train import load_recon_score, read_inputs

    if not files:  # nothing to score: no VAE is rebuilt, no file read
        return {}
    known = {k.split("/", 1)[1] for k in scores} - {"background"}
    floats = {prefix: load_recon_score(folder) for prefix, folder in folders.items()}
    source: dict[str, str] = {}
    inputs: dict[int, tuple[dict, dict]] = {}  # input word -> (sample's signals, extra events)
    for bits in {hw_bits, *(cfg.network.input_hw_bits for _, cfg in floats.values())}:
        extra: dict[str, np.ndarray] = {}
        for f in files:
            for name, x in read_inputs(f, bits).by_process.items():
                if name not in known:
                    raise SystemExit(f"--extra-signals {f}: {name} is not a signal of {data}")
                extra[name] = np.concatenate([extra[name], x]) if name in extra else x
                source[name] = f
        inputs[bits] = (read_inputs(data / "signals.h5", bits).by_process, extra)
    for prefix, (recon, cfg) in floats.items():
        own, extra = inputs[cfg.network.input_hw_bits]
        for name in extra:
            if not np.allclose(recon(own[name]), scores[f"{prefix}/{name}"], rtol=1e-4):
                raise SystemExit(f"{folders[prefix]}: its rebuilt VAE does not give its scores")
            scores[f"{prefix}/{name}"] = recon(extra[name])
    with Emulator(qnet.load(work / "encoder.qnet.json")) as emu:
        for name, x in inputs[hw_bits][1].items():
            scores[f"score_ir/{name}"] = emu.run(x)[:, 0]
    return source


def _tpr_detail(bg: np.ndarray, sig: np.ndarray, fpr: float, min_events: int) -> dict | None:
    """The cut's background events above, its achieved FPR and the TPR's binomial error."""
    if not evaluate.fpr_resolvable(len(bg), fpr, min_events):
        return None
    tpr, achieved = evaluate.tpr_at_fpr(bg, sig, fpr)
    return {
        "background_above": round(achieved * len(bg)),
        "fpr_achieved": achieved,
        "tpr_stat_error": float(np.sqrt(tpr * (1 - tpr) / len(sig))),
    }


def _roc_plot(
    name: str, bg: dict[str, np.ndarray], sig: dict[str, np.ndarray], path: Path, min_events: int
):
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
    res = evaluate.smallest_resolvable_fpr(len(next(iter(bg.values()))), min_events) or 1.0
    ax.axvspan(1e-7, res, color="grey", alpha=0.15, label="unresolved by the test sample")
    ax.set_xscale("log")
    ax.set_xlim(1.0 / len(next(iter(bg.values()))), 1)
    ax.set_xlabel("background efficiency (FPR)")
    ax.set_ylabel(f"{name} efficiency (TPR)")
    ax.legend(fontsize=12)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _menu(qnet_path: Path, bg_int: np.ndarray, calibration: str | None, work: Path) -> dict:
    """The default menu's anomaly seeds (10 kHz .. 400 Hz) calibrated on events the network
    never saw: the held-out minimum-bias half, plus ``calibration`` (another minimum-bias file)."""
    from l1forge.models.qnet import load
    from l1forge.models.rates import UnresolvableRateError, calibrate_menu
    from l1forge.online.datapath.backends import outputs_float
    from l1forge.online.datapath.menu import default_menu, zero_bias_scores

    zb = outputs_float(load(qnet_path), bg_int.reshape(-1, 1))[:, 0]
    source = "the held-out minimum-bias events"
    if calibration:
        zb = np.concatenate([zb, zero_bias_scores({"ad": str(qnet_path)}, calibration)["ad"]])
        source += f" and {calibration}"
    try:
        menu, report = calibrate_menu(default_menu("ad", None), {"ad": zb}, source=source)
    except UnresolvableRateError as exc:  # reported, not guessed: the JSON says what it needs
        return {"menu": None, "n_zero_bias": len(zb), "source": source, "unresolved": str(exc)}
    path = work / "menu.json"
    path.write_text(json.dumps(menu.to_json(), indent=1) + "\n")
    return {"menu": str(path), "n_zero_bias": len(zb), "source": source,
            "seeds": [r.to_json() for r in report]}  # fmt: skip


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
    parser.add_argument(
        "--config", help="training YAML (default: the shipped one, models/ad_shipped.yaml)"
    )
    parser.add_argument("--tag", default="shipped", help="name of this configuration's folder")
    parser.add_argument(
        "--calibration",
        help="another minimum-bias file: the menu calibrates on it and the held-out half "
        "(without it, on the held-out half alone, whose 500,000 events stop at 800 Hz)",
    )
    parser.add_argument("--n-background", type=int, default=1_000_000)
    parser.add_argument("--n-signal", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument(
        "--train-seed", type=int, help="override training.seed (it also draws the test split)"
    )
    parser.add_argument("--pileup", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--min-events-above",
        type=int,
        default=5,
        help="background events above a cut for its TPR to be quoted (the issue's rule: 5, so "
        "500,000 test events resolve FPR 1e-5; the project's rates use 10)",
    )
    parser.add_argument(
        "--extra-signals",
        nargs="*",
        default=[],
        metavar="H5",
        help="more signal events (files of `l1forge sim events`, other seeds): each signal in "
        "them is scored by the IR and by every float candidate's VAE, and its events replace "
        "that signal's 20,000 in every figure (a TPR of 1e-4 needs far more than 20,000)",
    )
    parser.add_argument("--bitexact-vectors", type=int, default=100_000)
    parser.add_argument("--no-firmware", action="store_true", help="skip the yosys report")
    parser.add_argument("--out", default="out/ad_reach")
    parser.add_argument(
        "--retrain", action="store_true", help="train again even if --tag holds this training"
    )
    parser.add_argument(
        "--float-from",
        nargs="*",
        default=[],
        metavar="TAG",
        help="earlier tags (same sample, same split) whose float scores also compete for the best",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    from l1forge.models.config import SHIPPED_AD_CONFIG
    from l1forge.models.train import TEST_SCORES, read_inputs, train

    data = _sample(args)
    over = {} if args.train_seed is None else {"seed": args.train_seed}
    cfg = load_config(args.config or SHIPPED_AD_CONFIG, training=over)
    bits = cfg.network.input_hw_bits
    work = Path(args.out) / args.tag
    with contextlib.redirect_stdout(sys.stderr):  # Keras' epoch lines: stdout holds the JSON
        bg, sig = read_inputs(data / "background.h5", bits), read_inputs(data / "signals.h5", bits)
        if args.retrain or not _trained(work, cfg, data):
            train(cfg, bg, sig, work)
            (work / "sample.txt").write_text(f"{data}\n")
    with np.load(work / TEST_SCORES) as z:
        scores = {k: z[k] for k in z.files}
    floats = {f: f for f in FLOAT_SCORES}  # candidate name -> key prefix in ``scores``
    folders = {f: work for f in FLOAT_SCORES}  # key prefix -> its training folder
    for tag in args.float_from:
        got = _floats_of(Path(args.out) / tag, tag, data, cfg.training.seed, scores)
        floats.update(got)
        folders.update({prefix: Path(args.out) / tag for prefix in got.values()})
    with contextlib.redirect_stdout(sys.stderr):
        extra = _score_extra(args.extra_signals, work, bits, data, folders, scores)
    names = sorted({k.split("/", 1)[1] for k in scores} - {"background"})
    bg_hw = scores["score_ir/background"].astype(float)
    n_bg = len(bg_hw)
    signals: dict[str, Any] = {}
    m = args.min_events_above
    for name in names:
        sig_hw = scores[f"score_ir/{name}"].astype(float)
        pairs = {f: (scores[f"{k}/background"], scores[f"{k}/{name}"]) for f, k in floats.items()}

        def best(metric, pairs=pairs):
            """The best float candidate by ``metric`` (its value, its name): each figure is
            compared with the best float score for that figure, not with one chosen by AUC."""
            vals = {f: metric(*bs) for f, bs in pairs.items()}
            known = {f: v for f, v in vals.items() if v is not None}
            top = max(known, key=lambda f: known[f]) if known else next(iter(vals))
            return vals[top], top

        auc_f, auc_name = best(evaluate.roc_auc)
        t5_f, t5_name = best(lambda b, s: evaluate.resolved_tpr(b, s, 1e-5, m))
        t4_f, t4_name = best(lambda b, s: evaluate.resolved_tpr(b, s, 1e-4, m))
        t3_f, _ = best(lambda b, s: evaluate.resolved_tpr(b, s, 1e-3, m))
        bg_f, sig_f = pairs[auc_name]
        signals[name] = {
            "n_events": len(sig_hw),
            "events_from": extra.get(name, str(data / "signals.h5")),
            "auc_hardware": evaluate.roc_auc(bg_hw, sig_hw),
            "auc_float_best": auc_f,
            "float_best": auc_name,
            "tpr_1e-5_hardware": evaluate.resolved_tpr(bg_hw, sig_hw, 1e-5, m),
            "tpr_1e-5_float_best": t5_f,
            "tpr_1e-5_float_best_name": t5_name,
            "tpr_1e-4_hardware": evaluate.resolved_tpr(bg_hw, sig_hw, 1e-4, m),
            "tpr_1e-4_float_best": t4_f,
            "tpr_1e-4_float_best_name": t4_name,
            "tpr_1e-3_hardware": evaluate.resolved_tpr(bg_hw, sig_hw, 1e-3, m),
            "tpr_1e-3_float_best": t3_f,
            "cut_1e-5_hardware": _tpr_detail(bg_hw, sig_hw, 1e-5, m),
            "cut_1e-5_float_best": _tpr_detail(*pairs[t5_name], 1e-5, m),
        }
        _roc_plot(
            name,
            {"hardware score": bg_hw, auc_name: bg_f},
            {"hardware score": sig_hw, auc_name: sig_f},
            work / f"roc_{name}.png",
            m,
        )
    fw = {} if args.no_firmware else _firmware(work / "encoder.qnet.json", work)
    menu = _menu(work / "encoder.qnet.json", scores["score_ir/background"], args.calibration, work)
    summary = json.loads((work / "summary.json").read_text())
    out = {
        "network_source": "trained",
        "network_description": (
            f"config {args.config or SHIPPED_AD_CONFIG} ({args.tag}) trained on "
            f"{summary['n_background_train']} of {args.n_background} minimum-bias events "
            f"(sample seed {args.seed}, pile-up {args.pileup:g}; training seed "
            f"{cfg.training.seed}), {work / 'encoder.qnet.json'}"
        ),
        "sample": str(data),
        "n_background_test": n_bg,
        "n_signal": args.n_signal,
        "extra_signals": args.extra_signals,
        "fpr_resolution": evaluate.smallest_resolvable_fpr(n_bg, args.min_events_above),
        "min_events_above": args.min_events_above,
        "signals": signals,
        **fw,
        **_bit_exact(work, args.bitexact_vectors),
        "menu": menu,
        "plots": sorted(str(p) for p in work.glob("*.png")),
    }
    (work / "ad_reach.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))
    return 0 if out["bit_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
