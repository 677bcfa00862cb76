"""Trigger performance of a score: ROC AUC, TPR at fixed FPR, and the threshold for an output rate.

Scores are compared with a strict ``>``: an event fires when its score exceeds the threshold,
as the hardware comparator does on the integer score.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from l1forge.sim.l1objects import LHC_INPUT_RATE_HZ

log = logging.getLogger(__name__)

FPR_POINTS = (1e-5, 1e-4)
# A background pass fraction is quoted only when at least this many background events lie
# above its threshold; below that the sample cannot resolve it (Poisson error > 30 %).
MIN_EVENTS_ABOVE = 10


def fpr_resolvable(n_background: int, fpr: float, min_events: int = MIN_EVENTS_ABOVE) -> bool:
    """Whether ``n_background`` events put at least ``min_events`` above an FPR cut."""
    return n_background * fpr >= min_events - 1e-9  # float products like 1e6 * 1e-5


def resolved_tpr(
    bg: np.ndarray, sig: np.ndarray, fpr: float, min_events: int = MIN_EVENTS_ABOVE
) -> float | None:
    """TPR at ``fpr``, or None when the background sample cannot resolve that FPR."""
    if not fpr_resolvable(len(bg), fpr, min_events):
        return None
    return tpr_at_fpr(bg, sig, fpr)[0]


def smallest_resolvable_fpr(n_background: int, min_events: int = MIN_EVENTS_ABOVE) -> float | None:
    """The smallest FPR a background sample of this size resolves (None for an empty one)."""
    return min_events / n_background if n_background > 0 else None


def roc_auc(bg: np.ndarray, sig: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged)."""
    from scipy.stats import rankdata  # imported here: scipy.stats costs seconds at start-up

    bg, sig = np.asarray(bg, float), np.asarray(sig, float)
    if len(bg) == 0 or len(sig) == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([bg, sig]))
    u = ranks[len(bg) :].sum() - len(sig) * (len(sig) + 1) / 2
    return float(u / (len(bg) * len(sig)))


def threshold_at_fpr(bg: np.ndarray, fpr: float) -> float:
    """The lowest threshold whose background pass fraction (score > threshold) is <= ``fpr``."""
    s = np.sort(np.asarray(bg, float))
    n_pass = int(np.floor(fpr * len(s)))  # events allowed above the threshold
    if n_pass >= len(s):
        return float(s[0]) - 1.0
    t = s[len(s) - 1 - n_pass]
    return float(t)


def tpr_at_fpr(bg: np.ndarray, sig: np.ndarray, fpr: float) -> tuple[float, float]:
    """(TPR, achieved FPR) at the threshold for ``fpr``."""
    t = threshold_at_fpr(bg, fpr)
    return float(np.mean(np.asarray(sig) > t)), float(np.mean(np.asarray(bg) > t))


def threshold_for_rate(bg: np.ndarray, rate_hz: float, input_hz: float = LHC_INPUT_RATE_HZ):
    """(threshold, expected rate in Hz) for a requested output rate at ``input_hz`` input."""
    t = threshold_at_fpr(bg, rate_hz / input_hz)
    return t, float(np.mean(np.asarray(bg) > t)) * input_hz


def evaluate_scores(
    bg: np.ndarray,
    signals: dict[str, np.ndarray],
    out_dir: str | Path,
    rate_hz: float = 1000.0,
    score_name: str = "score",
    lsb: float = 1.0,
) -> dict[str, Any]:
    """Per-signal metrics, ROC and score plots; writes ``<score_name>_metrics.json``.

    A TPR at an FPR (or at a rate) the background sample cannot resolve, fewer than
    ``MIN_EVENTS_ABOVE`` background events above the threshold, is reported as None.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_bg = len(bg)
    thr, rate = threshold_for_rate(bg, rate_hz)
    rate_ok = fpr_resolvable(n_bg, rate_hz / LHC_INPUT_RATE_HZ)
    summary: dict[str, Any] = {
        "score": score_name,
        "n_background": n_bg,
        "requested_rate_hz": rate_hz,
        "threshold": thr,
        "threshold_integer": thr / lsb if lsb != 1.0 else thr,
        "rate_resolvable": rate_ok,
        "expected_rate_hz": rate if rate_ok else None,
        "fpr_resolution": 1.0 / max(n_bg, 1),
        "smallest_resolvable_fpr": smallest_resolvable_fpr(n_bg),
        "fpr_points": {
            f"{f:.0e}": {
                "resolvable": fpr_resolvable(n_bg, f),
                "expected_background_above": n_bg * f,
            }
            for f in FPR_POINTS
        },
        "signals": {},
    }
    for f in FPR_POINTS:
        if not fpr_resolvable(n_bg, f):
            log.info(
                "%s: %d background events put %.2g above an FPR %.0e cut (< %d): TPR at FPR "
                "%.0e reported as null; the smallest resolvable FPR is %.2g",
                score_name,
                n_bg,
                n_bg * f,
                f,
                MIN_EVENTS_ABOVE,
                f,
                smallest_resolvable_fpr(n_bg) or float("nan"),
            )
    for name, sig in signals.items():
        m: dict[str, Any] = {"n": len(sig), "auc": roc_auc(bg, sig)}
        for f in FPR_POINTS:
            tpr, got = tpr_at_fpr(bg, sig, f) if fpr_resolvable(n_bg, f) else (None, None)
            m[f"tpr_at_fpr_{f:.0e}"] = tpr
            m[f"achieved_fpr_{f:.0e}"] = got
        m["tpr_at_rate"] = float(np.mean(sig > thr)) if rate_ok else None
        summary["signals"][name] = m
    _plots(bg, signals, out_dir, score_name)
    (out_dir / f"{score_name}_metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _plots(bg: np.ndarray, signals: dict[str, np.ndarray], out_dir: Path, score_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.CMS)
    fig, ax = plt.subplots(figsize=(8, 7))
    bg_sorted = np.sort(bg)[::-1]
    for name, sig in signals.items():
        thr = np.unique(np.concatenate([bg_sorted[: min(len(bg_sorted), 100000)], sig]))
        fpr = 1.0 - np.searchsorted(np.sort(bg), thr, side="right") / len(bg)
        tpr = 1.0 - np.searchsorted(np.sort(sig), thr, side="right") / len(sig)
        ok = fpr > 0
        ax.plot(fpr[ok], tpr[ok], label=f"{name} (AUC {roc_auc(bg, sig):.3f})")
    ax.axvline(1e-5, color="grey", ls="--", lw=1)
    lo = max(1.0 / len(bg), 1e-7)
    unresolved = smallest_resolvable_fpr(len(bg)) or 1.0
    ax.axvspan(
        lo,
        unresolved,
        color="grey",
        alpha=0.15,
        label=f"< {MIN_EVENTS_ABOVE} background events above (unresolved)",
    )
    ax.set_xscale("log")
    ax.set_xlabel("background efficiency (FPR)")
    ax.set_ylabel("signal efficiency (TPR)")
    ax.set_xlim(lo, 1)
    ax.legend(fontsize=12)
    fig.savefig(out_dir / f"{score_name}_roc.png", dpi=80)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 7))
    allv = np.concatenate([bg, *signals.values()])
    bins = np.linspace(allv.min(), allv.max() + 1e-9, 60)
    ax.hist(bg, bins=bins, histtype="step", density=True, label="background", lw=2)
    for name, sig in signals.items():
        ax.hist(sig, bins=bins, histtype="step", density=True, label=name)
    ax.set_yscale("log")
    ax.set_xlabel(score_name)
    ax.set_ylabel("density")
    ax.legend(fontsize=12)
    fig.savefig(out_dir / f"{score_name}_distributions.png", dpi=80)
    plt.close(fig)
