"""Validation of generated showers against reference showers, as the CaloChallenge does it.

1-d Wasserstein distances of high-level shower features and of the cell-energy spectrum, and
the classifier test: a classifier trained to tell generated from reference showers, whose
ROC AUC on held-out showers is the figure (0.5: indistinguishable). Both are computed for two
independent reference samples as well, which gives the floor a finite sample can resolve.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CELL_THRESHOLD_GEV = 1e-3  # cells below this are left out of the spectrum (1 MeV)


def feature_names(n_segments: int) -> list[str]:
    names = ["e_frac"]
    for k in range(n_segments):
        names += [f"seg{k}_frac", f"seg{k}_centroid_x", f"seg{k}_centroid_y",
                  f"seg{k}_width_x", f"seg{k}_width_y"]  # fmt: skip
    return [*names, "max_cell_frac"]


def high_level(dep: np.ndarray, e_gev: np.ndarray) -> np.ndarray:
    """Per shower: deposited fraction, per segment its fraction, centroid and width (cells)."""
    n_ev, n_seg, n, _ = dep.shape
    c = np.arange(n) - n // 2
    total = dep.sum((1, 2, 3))
    cols = [total / e_gev]
    for k in range(n_seg):
        d = dep[:, k]
        s = d.sum((1, 2))
        safe = np.where(s > 0, s, 1.0)
        px, py = d.sum(1) / safe[:, None], d.sum(2) / safe[:, None]  # x: columns, y: rows
        mx, my = px @ c, py @ c
        wx = np.sqrt(np.maximum(px @ c**2 - mx**2, 0.0))
        wy = np.sqrt(np.maximum(py @ c**2 - my**2, 0.0))
        cols += [s / e_gev, mx, my, wx, wy]
    cols.append(dep.reshape(n_ev, -1).max(1) / np.where(total > 0, total, 1.0))
    return np.stack(cols, axis=1)


def cell_spectrum(dep: np.ndarray) -> np.ndarray:
    """log10 of every cell energy above the threshold, pooled over cells and showers."""
    v = dep.ravel()
    return np.log10(v[v > CELL_THRESHOLD_GEV])


def w1_table(ref: np.ndarray, gen: np.ndarray, e_gev: np.ndarray, n_segments: int) -> dict:
    """W1 × 1e3 per feature, each feature in units of the reference's standard deviation."""
    from scipy.stats import wasserstein_distance

    hr, hg = high_level(ref, e_gev), high_level(gen, e_gev)
    out = {}
    for j, name in enumerate(feature_names(n_segments)):
        sd = hr[:, j].std() or 1.0
        out[name] = 1e3 * wasserstein_distance(hr[:, j] / sd, hg[:, j] / sd)
    sr, sg = cell_spectrum(ref), cell_spectrum(gen)
    sd = sr.std() or 1.0
    out["cell_spectrum"] = 1e3 * wasserstein_distance(sr / sd, sg / sd)
    return out


def classifier_auc(a: np.ndarray, b: np.ndarray, seed: int = 0, max_iter: int = 200) -> float:
    """ROC AUC of a gradient-boosted classifier separating rows of ``a`` from rows of ``b``.

    Trained on half of each sample and scored on the other half; min(AUC, 1 − AUC) is not
    taken, so a value below 0.5 is a statistical fluctuation of the test half.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    x = np.concatenate([a, b])
    y = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    half = len(x) // 2
    tr, te = perm[:half], perm[half:]
    clf = HistGradientBoostingClassifier(max_iter=max_iter, early_stopping=True,
                                         validation_fraction=0.2, random_state=seed)  # fmt: skip
    clf.fit(x[tr], y[tr])
    return float(roc_auc_score(y[te], clf.predict_proba(x[te])[:, 1]))


def classifier_inputs(
    dep: np.ndarray, e_gev: np.ndarray, is_pi0: np.ndarray, level: str
) -> np.ndarray:
    """High-level features or cell energies / E, each with log E and the particle label."""
    cond = np.stack([np.log(e_gev), is_pi0.astype(np.float64)], axis=1)
    if level == "high":
        feats = high_level(dep, e_gev)
    elif level == "low":
        feats = dep.reshape(len(dep), -1) / e_gev[:, None]
    else:
        raise ValueError(f"level: 'high' or 'low', got {level!r}")
    return np.concatenate([feats, cond], axis=1)


def plot_comparison(
    ref: np.ndarray, gen: np.ndarray, e_gev: np.ndarray, title: str, path: Path,
    labels: tuple[str, str] = ("reference (GFlash)", "surrogate"),
) -> None:  # fmt: skip
    """Histograms of every high-level feature and the cell spectrum, reference against generated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_seg = ref.shape[1]
    names = feature_names(n_seg)
    hr, hg = high_level(ref, e_gev), high_level(gen, e_gev)
    cols = 4
    rows = (len(names) + 1 + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    series = [(n, hr[:, j], hg[:, j]) for j, n in enumerate(names)]
    series.append(("log10(cell energy / GeV)", cell_spectrum(ref), cell_spectrum(gen)))
    for ax, (name, a, b) in zip(axes.flat, series, strict=False):
        lo, hi = np.percentile(np.concatenate([a, b]), [0.5, 99.5])
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
        ax.hist(a, bins, histtype="step", density=True, label=labels[0], color="k")
        ax.hist(b, bins, histtype="step", density=True, label=labels[1], color="C1")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    for ax in list(axes.flat)[len(series) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
