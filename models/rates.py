"""A trigger menu's rates and efficiencies from emulated scores, with their statistical intervals.

Calibration sets each seed's threshold with the daemon's own ``Menu.calibrate`` and adds the
rate's Clopper-Pearson interval at that threshold (and the thresholds spanning it); a target
rate the zero-bias sample cannot resolve (fewer than ``MIN_EVENTS_ABOVE`` events above the
threshold, the rule of ``models.evaluate``) is refused, naming the smallest rate it resolves.
Rates in tables follow the same rule: fewer than ``MIN_EVENTS_ABOVE`` zero-bias events fired
means the rate is null, reported with the smallest rate the sample resolves, never a number.
Prescales are applied (sequence number = row in the file), so rates and efficiencies are
those of the events the menu keeps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import beta

from l1forge.errors import ConfigError
from l1forge.models.evaluate import (
    MIN_EVENTS_ABOVE,
    fpr_resolvable,
    smallest_resolvable_fpr,
    threshold_at_fpr,
)
from l1forge.online.datapath.menu import Menu
from l1forge.records import record_json

ONE_SIGMA_CL = 0.6827


class UnresolvableRateError(ConfigError):
    """A zero-bias sample too small for the rate a seed asks for."""


def clopper_pearson(k: int, n: int, cl: float = ONE_SIGMA_CL) -> tuple[float, float]:
    """The exact (Clopper-Pearson) central interval of a binomial fraction ``k / n``."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"clopper_pearson needs 0 <= k <= n and n > 0, got k={k}, n={n}")
    alpha = 1.0 - cl
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def smallest_resolvable_rate_hz(n_events: int, input_rate_hz: float, prescale: int = 1) -> float:
    """The lowest output rate (after ``prescale``) that ``n_events`` zero-bias events resolve."""
    fpr = smallest_resolvable_fpr(n_events)
    if fpr is None:
        raise ConfigError("the zero-bias sample is empty")
    return fpr * input_rate_hz / prescale


def rate_entry(k: int, n: int, input_rate_hz: float, cl: float) -> dict[str, Any]:
    """A rate of ``k`` fired among ``n`` zero-bias events: value and interval, or null."""
    resolvable = fpr_resolvable(n, k / n) if n else False
    lo, hi = clopper_pearson(k, n, cl) if n else (math.nan, math.nan)
    return {
        "fired": int(k),
        "rate_hz": k * input_rate_hz / n if resolvable else None,
        "rate_interval_hz": [lo * input_rate_hz, hi * input_rate_hz] if resolvable else None,
        "resolvable": resolvable,
        "smallest_resolvable_rate_hz": smallest_resolvable_rate_hz(n, input_rate_hz) if n else None,
    }


@dataclass(frozen=True)
class SeedCalibration:
    """One calibrated threshold with the rate it gives on the sample and that rate's interval."""

    seed: str
    model: str
    target_rate_hz: float
    prescale: int
    threshold: float
    n_zero_bias: int
    n_above: int  # zero-bias events above the threshold (before the prescale)
    rate_hz: float  # after the prescale
    rate_interval_hz: tuple[float, float]
    threshold_interval: tuple[float, float]  # thresholds whose rates span rate_interval_hz
    cl: float

    def to_json(self) -> dict[str, Any]:
        return record_json(self)


def calibrate_menu(
    menu: Menu,
    zero_bias_scores: Mapping[str, np.ndarray],
    source: str | Path = "the zero-bias sample",
    cl: float = ONE_SIGMA_CL,
) -> tuple[Menu, list[SeedCalibration]]:
    """``menu.calibrate`` on the scores, refusing targets the sample cannot resolve; returns
    the calibrated menu and, per seed with a target rate, its threshold's uncertainty."""
    for s in menu.seeds:
        if s.target_rate_hz is None or s.zero_bias:
            continue
        if s.model not in zero_bias_scores:
            raise ConfigError(f"menu seed {s.name!r}: no scores of model {s.model!r}")
        n = len(zero_bias_scores[s.model])
        fpr = s.target_rate_hz * s.prescale / menu.input_rate_hz
        if not fpr_resolvable(n, fpr):
            smallest = f"{smallest_resolvable_rate_hz(n, menu.input_rate_hz, s.prescale):.4g} Hz"
            raise UnresolvableRateError(
                f"{source}: seed {s.name!r} asks for {s.target_rate_hz:g} Hz (prescale "
                f"{s.prescale}), which {n} zero-bias events cannot resolve (fewer than "
                f"{MIN_EVENTS_ABOVE} above the threshold; it needs >= "
                f"{math.ceil(MIN_EVENTS_ABOVE / fpr)} events); the smallest rate this sample "
                f"resolves is {smallest if n else 'none (it is empty)'}"
            )
    calibrated = menu.calibrate(zero_bias_scores)
    report = []
    for s in calibrated.seeds:
        if s.target_rate_hz is None or s.zero_bias:
            continue
        bg = np.asarray(zero_bias_scores[s.model], dtype=np.float64)
        n, k = len(bg), int(np.count_nonzero(bg > s.threshold))
        lo, hi = clopper_pearson(k, n, cl)
        scale = menu.input_rate_hz / s.prescale
        report.append(
            SeedCalibration(
                seed=s.name,
                model=s.model,
                target_rate_hz=s.target_rate_hz,
                prescale=s.prescale,
                threshold=s.threshold,
                n_zero_bias=n,
                n_above=k,
                rate_hz=k / n * scale,
                rate_interval_hz=(lo * scale, hi * scale),
                threshold_interval=(threshold_at_fpr(bg, hi), threshold_at_fpr(bg, lo)),
                cl=cl,
            )
        )
    return calibrated, report


def menu_table(
    menu: Menu,
    zero_bias_bits: np.ndarray,
    signal_bits: Mapping[str, np.ndarray],
    cl: float = ONE_SIGMA_CL,
) -> dict[str, Any]:
    """Per seed: rate, pure rate (no other seed fires) and each signal's efficiency; plus the
    menu's total rate (overlaps counted once) and total efficiency per signal."""
    zb = np.asarray(zero_bias_bits, dtype=np.uint32)
    n = len(zb)
    if n == 0:
        raise ConfigError("the zero-bias sample is empty")
    rate = menu.input_rate_hz
    seeds = []
    for i, s in enumerate(menu.seeds):
        bit = np.uint32(1) << np.uint32(i)
        entry: dict[str, Any] = {
            "seed": s.name,
            "model": s.model,
            "threshold": s.threshold if math.isfinite(s.threshold) else None,
            "prescale": s.prescale,
            "rate": rate_entry(int(np.count_nonzero(zb & bit)), n, rate, cl),
            "pure_rate": rate_entry(int(np.count_nonzero(zb == bit)), n, rate, cl),
            "efficiency": {
                name: _efficiency(int(np.count_nonzero(np.asarray(b) & bit)), len(b), cl)
                for name, b in signal_bits.items()
            },
        }
        seeds.append(entry)
    return {
        "input_rate_hz": rate,
        "n_zero_bias": n,
        "cl": cl,
        "seeds": seeds,
        "total": {
            "rate": rate_entry(int(np.count_nonzero(zb)), n, rate, cl),
            "efficiency": {
                name: _efficiency(int(np.count_nonzero(b)), len(b), cl)
                for name, b in signal_bits.items()
            },
        },
    }


def _efficiency(k: int, n: int, cl: float) -> dict[str, Any]:
    if n == 0:
        return {"passed": 0, "n_events": 0, "efficiency": None, "interval": None}
    lo, hi = clopper_pearson(k, n, cl)
    return {"passed": k, "n_events": n, "efficiency": k / n, "interval": [lo, hi]}


def _fmt_rate(r: dict[str, Any]) -> str:
    if r["rate_hz"] is None:
        return f"null (<{MIN_EVENTS_ABOVE} ev; res. {r['smallest_resolvable_rate_hz']:.3g} Hz)"
    lo, hi = r["rate_interval_hz"]
    return f"{r['rate_hz']:.4g} +{hi - r['rate_hz']:.2g} -{r['rate_hz'] - lo:.2g}"


def format_table(table: dict[str, Any]) -> str:
    """The table as fixed-width text, one line per seed and a total line."""
    signals = list(table["total"]["efficiency"])
    head = f"{'seed':<14} {'threshold':>10} {'ps':>5} {'rate [Hz]':>34} {'pure rate [Hz]':>34}"
    head += "".join(f" {s[:16]:>20}" for s in signals)
    lines = [
        f"menu on {table['n_zero_bias']} zero-bias events at {table['input_rate_hz']:.3g} Hz "
        f"input; intervals {table['cl']:.4g} CL (Clopper-Pearson); efficiency with interval",
        head,
        "-" * len(head),
    ]

    def eff(e: dict[str, Any]) -> str:
        if e["efficiency"] is None:
            return f" {'-':>20}"
        lo, hi = e["interval"]
        return f" {e['efficiency']:>8.4f} [{lo:.3f},{hi:.3f}]"

    for s in table["seeds"]:
        t = "-" if s["threshold"] is None else f"{s['threshold']:.5g}"
        line = f"{s['seed']:<14} {t:>10} {s['prescale']:>5} {_fmt_rate(s['rate']):>34} "
        line += f"{_fmt_rate(s['pure_rate']):>34}"
        lines.append(line + "".join(eff(s["efficiency"][k]) for k in signals))
    tot = table["total"]
    line = f"{'total':<14} {'':>10} {'':>5} {_fmt_rate(tot['rate']):>34} {'':>34}"
    lines.append(line + "".join(eff(tot["efficiency"][k]) for k in signals))
    return "\n".join(lines)


def plot_table(table: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """``rates.png`` (rate per seed with its interval; unresolved ones as their resolution)
    and ``efficiencies.png`` (efficiency per signal and seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.CMS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [*table["seeds"], {"seed": "total", **table["total"]}]
    names = [r["seed"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(rows)), 7))
    ok = [i for i, r in enumerate(rows) if r["rate"]["rate_hz"] is not None]
    if ok:
        val = np.array([rows[i]["rate"]["rate_hz"] for i in ok])
        lo = np.array([rows[i]["rate"]["rate_interval_hz"][0] for i in ok])
        hi = np.array([rows[i]["rate"]["rate_interval_hz"][1] for i in ok])
        ax.errorbar(x[ok], val, yerr=[val - lo, hi - val], fmt="o", label="rate")
    bad = [i for i, r in enumerate(rows) if r["rate"]["rate_hz"] is None]
    if bad:
        res = [rows[i]["rate"]["smallest_resolvable_rate_hz"] for i in bad]
        ax.plot(x[bad], res, "v", mfc="none", label=f"unresolved (< {MIN_EVENTS_ABOVE} events)")
    ax.set_yscale("log")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=12)
    ax.set_ylabel("rate [Hz]")
    ax.legend(fontsize=12)
    fig.tight_layout()
    paths = [out / "rates.png"]
    fig.savefig(paths[0], dpi=80)
    plt.close(fig)
    signals = list(table["total"]["efficiency"])
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(rows)), 7))
    width = 0.8 / max(1, len(signals))
    for j, sig in enumerate(signals):
        e = [r["efficiency"][sig] for r in rows]
        val = np.array([v["efficiency"] or 0.0 for v in e])
        lo = np.array([v["interval"][0] if v["interval"] else 0.0 for v in e])
        hi = np.array([v["interval"][1] if v["interval"] else 0.0 for v in e])
        pos = x - 0.4 + width * (j + 0.5)
        ax.errorbar(pos, val, yerr=[val - lo, hi - val], fmt="o", label=sig)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=12)
    ax.set_ylabel("signal efficiency")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=11)
    fig.tight_layout()
    paths.append(out / "efficiencies.png")
    fig.savefig(paths[1], dpi=80)
    plt.close(fig)
    return paths
