"""HGQ-style learned bit widths for the shipped anomaly trigger: reach against firmware cost.

Fine-tunes the shipped student (`benchmarks/ad_reach.py --tag shipped` must have run: its
trained network, its teacher VAE's last checkpoint and the million-event sample are reused)
with per-layer learnable weight bits and a resource penalty (EBOPs, `models/hgq.py`), once per
penalty; each result is exported to the IR, scored by the emulator on the same held-out
minimum-bias half and signals as the shipped network, checked bit for bit against its torch
twin, and sized by yosys `synth_xilinx` at 2 cycles / 40 MHz. Prints one JSON object; the
shipped network's own figures are the first row. One penalty took 44 s here (2 cores), set-up
included; the five default penalties take a few minutes.
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

log = logging.getLogger("ad_hgq")


def _reach(bg: np.ndarray, sigs: dict[str, np.ndarray], m: int) -> dict[str, Any]:
    from l1forge.models import evaluate

    return {
        name: {
            "auc": evaluate.roc_auc(bg, s),
            "tpr_1e-5": evaluate.resolved_tpr(bg, s, 1e-5, m),
            "tpr_1e-4": evaluate.resolved_tpr(bg, s, 1e-4, m),
        }
        for name, s in sigs.items()
    }


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """TPR at FPR 1e-5 (and 1e-4) against LUTs, one panel per signal; the shipped point is
    the square. A TPR the sample does not resolve is left out, not drawn as 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows[0]["reach"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for key, color in (("tpr_1e-5", "C0"), ("tpr_1e-4", "C1")):
            pts = [(r["lut"], r["reach"][name][key]) for r in rows[1:]]
            pts = sorted(p for p in pts if p[1] is not None and p[0] is not None)
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", color=color, label=f"HGQ, {key}")
            ship = rows[0]["reach"][name][key]
            if ship is not None and rows[0]["lut"] is not None:
                ax.plot(rows[0]["lut"], ship, "s", color=color, ms=9, label=f"shipped, {key}")
        ax.set_xlabel("LUT (yosys synth_xilinx, 2 cycles at 40 MHz)")
        ax.set_ylabel("TPR")
        ax.set_yscale("log")
        ax.set_title(name)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _weight_formats(ir) -> list:
    """The weight format of each dense layer."""
    return [lay.array_formats["weight"] for lay in ir.layers if lay.op == "dense"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--from",
        dest="src",
        default="out/ad_reach/shipped",
        help="the ad_reach training folder to fine-tune",
    )
    parser.add_argument(
        "--penalties",
        default="0,0.1,0.3,1,3",
        help="EBOPs penalty weights, relative to the starting network's EBOPs",
    )
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-events-above", type=int, default=5)
    parser.add_argument("--bitexact-vectors", type=int, default=100_000)
    parser.add_argument("--out", default="out/ad_reach/hgq")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    import torch

    from l1forge.firmware.report import build_and_size
    from l1forge.models import qnet
    from l1forge.models.config import make_config
    from l1forge.models.emulator import Emulator
    from l1forge.models.hgq import HGQStudent, fine_tune
    from l1forge.models.train import (
        TEST_SCORES,
        _split,
        load_recon_score,
        read_inputs,
        student_target,
    )
    from l1forge.models.vectors import bitexact_vectors

    src, out = Path(args.src), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = json.loads((src / "summary.json").read_text())
    reach = json.loads((src / "ad_reach.json").read_text())
    data = Path(reach["sample"])
    cfg = make_config(summary["config"])
    tr = cfg.training
    bits = cfg.network.input_hw_bits
    bg = read_inputs(data / "background.h5", bits)
    sig = read_inputs(data / "signals.h5", bits)
    bg_train, bg_test = _split(np.concatenate(list(bg.by_process.values())), 0.5, tr.seed)
    bg_fit, bg_val = _split(bg_train, tr.validation_fraction, tr.seed + 1)
    shipped = qnet.load(src / "encoder.qnet.json")
    with np.load(src / TEST_SCORES) as z:
        stored = {k: z[k] for k in z.files}
    with Emulator(shipped) as emu:  # the split is the shipped training's, checked event by event
        if not np.array_equal(emu.run(bg_test)[:, 0], stored["score_ir/background"]):
            raise SystemExit(f"{src}: the held-out events differ from its training's split")
    with contextlib.redirect_stdout(sys.stderr):
        recon, _ = load_recon_score(src)  # the teacher: the VAE's last training checkpoint
        if not np.allclose(
            recon(bg_test[:20_000]), stored["recon_mse/background"][:20_000], rtol=1e-4
        ):
            raise SystemExit(f"{src}: the teacher checkpoint is not the training's final VAE")
        y_fit, y_val = (student_target(recon(x)) for x in (bg_fit, bg_val))

    m = args.min_events_above
    rows: list[dict[str, Any]] = [
        {
            "network": "shipped (QKeras, fixed AXOL1TL bits)",
            "qnet": str(src / "encoder.qnet.json"),
            "weight_frac_bits": [f.frac_bits for f in _weight_formats(shipped)],
            "reach": {
                k: {
                    "auc": v["auc_hardware"],
                    "tpr_1e-5": v["tpr_1e-5_hardware"],
                    "tpr_1e-4": v["tpr_1e-4_hardware"],
                }
                for k, v in reach["signals"].items()
            },
            "lut": reach.get("lut"),
            "dsp": reach.get("dsp"),
            "stage_delay_ns": reach.get("stage_delay_ns"),
        }
    ]
    for penalty in [float(p) for p in args.penalties.split(",")]:
        res = fine_tune(
            shipped, bg_fit, y_fit, bg_val, y_val, penalty, epochs=args.epochs, seed=args.seed
        )
        path = qnet.save(res.ir, out / f"hgq_penalty{penalty:g}.qnet.json")
        net = HGQStudent(res.ir)
        x = bitexact_vectors(res.ir, args.bitexact_vectors, seed=5)
        with Emulator(res.ir) as emu:
            bg_s = emu.run_float(bg_test)[:, 0]
            sig_s = {k: emu.run_float(v)[:, 0] for k, v in sig.by_process.items()}
            want = emu.run_float(x)[:, 0]
        with torch.no_grad():
            got = net(net.quantized_inputs(x)).numpy()
        fw = build_and_size(res.ir, out / f"fw_penalty{penalty:g}", cycles=2, clock_mhz=40.0)
        rows.append(
            {
                "network": f"HGQ fine-tune, penalty {penalty:g}",
                "qnet": str(path),
                "weight_frac_bits": [f.frac_bits for f in _weight_formats(res.ir)],
                "weight_formats": [f.hls_type() for f in _weight_formats(res.ir)],
                "ebops": res.ebops,
                "ebops_start": res.ebops_start,
                "val_mse_last": res.history[-1][2],
                "reach": _reach(bg_s, sig_s, m),
                "lut": fw["lut"],
                "dsp": fw["dsp"],
                "stage_delay_ns": fw["stage_delay_ns"],
                "timing_estimate_met": fw["timing_estimate_met"],
                "bit_exact_torch_vs_emulator": bool(np.array_equal(got, want)),
                "bit_exact_vectors": len(x),
            }
        )
        log.info("penalty %g: bits %s, %s LUT", penalty, res.weight_bits, fw["lut"])
    result = {
        "network_source": "trained",
        "network_description": (
            f"the shipped student {src / 'encoder.qnet.json'} fine-tuned with learned per-layer "
            f"weight bits on its own {len(bg_fit)} training events and teacher; scored on its "
            f"{len(bg_test)} held-out minimum-bias events and {data / 'signals.h5'}"
        ),
        "sample": str(data),
        "n_background_test": len(bg_test),
        "fpr_resolution": reach["fpr_resolution"],
        "epochs": args.epochs,
        "rows": rows,
    }
    plot = out / "hgq_tpr_vs_lut.png"
    title = (
        f"HGQ fine-tunes of {src / 'encoder.qnet.json'} (seed {args.seed}), "
        f"{len(bg_test)} held-out minimum-bias events, "
        f"{min(len(v) for v in sig.by_process.values())} or more per signal"
    )
    _plot(rows, plot, title)
    result["plots"] = [str(plot)]
    (out / "ad_hgq.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0 if all(r.get("bit_exact_torch_vs_emulator", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
