"""Comparisons of a histogram to its reference, and the alarms they raise.

Statistics: the two-sample chi2 of unweighted histograms (sparse bins merged), the binned
Kolmogorov-Smirnov p-value, and per-bin beta-binomial pulls in the AutoDQM style: a bin's
count k out of n is compared with the beta-binomial law whose bin fraction has the posterior
Beta(r + 1, R - r + 1) of the reference's r counts out of R (uniform prior), so a thin
reference widens the expected spread instead of producing false pulls.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import special, stats

from l1forge.online.dqm.config import Check, Thresholds

ALARM_KINDS = (
    "dead_region",
    "hot_region",
    "shifted_input",
    "rate_excursion",
    "score_change",
    "latency_excursion",
)
# A pull is a normal quantile of a tail probability; beyond this, doubles cannot tell them apart.
MAX_PULL = 38.0
# Tail probabilities below this are recomputed by summing the pmf (see _tail_exact).
EXACT_TAIL_BELOW = 1e-6
# Least expected count per bin group in the chi2 test (the usual rule for the chi2 law to hold).
MIN_EXPECTED = 5.0


@dataclass(frozen=True)
class Alarm:
    """One alarm: which lumisection and histogram, what kind, how bad, and the statistics."""

    lumisection: int
    histogram: str
    kind: str
    severity: str
    entries: float
    chi2_ndf: float = math.nan
    chi2_pvalue: float = math.nan
    ks_pvalue: float = math.nan
    max_pull: float = math.nan
    # Axis ranges of the flagged bins, e.g. ((eta_lo, eta_hi), (phi_lo, phi_hi)); empty if none.
    region: tuple[tuple[float, float], ...] = ()
    n_bins: int = 0
    message: str = ""

    def to_dict(self) -> dict:
        """A JSON-ready dictionary (NaN statistics become None)."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        d["region"] = [list(r) for r in self.region]
        return d


def merge_sparse(counts: np.ndarray, ref: np.ndarray, min_expected: float) -> tuple:
    """Adjacent bins merged left to right until each group expects ``min_expected`` counts.

    The expectation is the reference scaled to this histogram's total; a short last group
    joins the one before. Returns the merged (counts, ref).
    """
    c = np.asarray(counts, np.float64).ravel()
    r = np.asarray(ref, np.float64).ravel()
    n, m = c.sum(), r.sum()
    if n <= 0 or m <= 0:
        return c, r
    expected = r * (n / m)
    group = np.empty(len(c), np.int64)
    g, acc = 0, 0.0
    for i, e in enumerate(expected):
        group[i] = g
        acc += e
        if acc >= min_expected:
            g, acc = g + 1, 0.0
    n_groups = int(group[-1]) + 1
    if (acc < min_expected and n_groups > 1 and acc > 0) or (acc == 0 and group[-1] == g):
        # the last group is short (or empty-expected): it joins the previous one
        group[group == group[-1]] = max(int(group[-1]) - 1, 0)
        n_groups = int(group[-1]) + 1
    return np.bincount(group, c, n_groups), np.bincount(group, r, n_groups)


def chi2_test(
    counts: np.ndarray, ref: np.ndarray, min_expected: float = MIN_EXPECTED
) -> tuple[float, int, float]:
    """Two-sample chi2 of unweighted histograms (shapes only): (chi2/ndf, ndf, p-value).

    Sparse bins are merged first (``merge_sparse``) so the chi2 law holds.
    """
    c, r = merge_sparse(counts, ref, min_expected)
    n, m = c.sum(), r.sum()
    used = (c + r) > 0
    ndf = int(used.sum()) - 1
    if n <= 0 or m <= 0 or ndf < 1:
        return math.nan, max(ndf, 0), math.nan
    chi2 = float(np.sum((m * c[used] - n * r[used]) ** 2 / (c[used] + r[used])) / (n * m))
    return chi2 / ndf, ndf, float(stats.chi2.sf(chi2, ndf))


def ks_pvalue(counts: np.ndarray, ref: np.ndarray) -> float:
    """Kolmogorov-Smirnov p-value of a 1D histogram against its reference (conservative: binned)."""
    c = np.asarray(counts, np.float64).ravel()
    r = np.asarray(ref, np.float64).ravel()
    n, m = c.sum(), r.sum()
    if n <= 0 or m <= 0:
        return math.nan
    d = float(np.max(np.abs(np.cumsum(c) / n - np.cumsum(r) / m)))
    n_eff = n * m / (n + m)
    # Stephens' small-sample correction of the asymptotic Kolmogorov distribution.
    lam = (math.sqrt(n_eff) + 0.12 + 0.11 / math.sqrt(n_eff)) * d
    return float(special.kolmogorov(lam))


def _tail_exact(k: float, n: int, a: float, b: float, upper: bool) -> float:
    """P(K >= k) (upper) or P(K <= k) of a beta-binomial, summed from its log-pmf.

    scipy's sf is 1 - cdf and loses far upper tails to rounding; summing the pmf does not.
    Terms beyond 40 standard deviations (plus 100) from k are negligible and left out.
    """
    p = a / (a + b)
    sd = math.sqrt(n * p * (1 - p) * (a + b + n) / (a + b + 1))
    width = int(40 * sd) + 100
    k = int(k)
    j = np.arange(k, min(n, k + width) + 1) if upper else np.arange(max(0, k - width), k + 1)
    return float(np.exp(special.logsumexp(stats.betabinom.logpmf(j, n, a, b))))


def beta_binomial_pulls(
    counts: np.ndarray,
    ref: np.ndarray,
    trials: float | None = None,
    ref_trials: float | None = None,
) -> np.ndarray:
    """Signed pull (in sigma) of every bin: the normal quantile of its beta-binomial tail.

    ``trials``/``ref_trials`` default to the histograms' totals; pass them when bins are not
    exclusive (per-seed trigger counts out of all events, overlapping windows of a map).
    """
    k = np.asarray(counts, np.float64)
    r = np.asarray(ref, np.float64)
    n = round(float(k.sum() if trials is None else trials))
    big_r = float(r.sum() if ref_trials is None else ref_trials)
    pulls = np.zeros(k.shape)
    if n <= 0 or big_r <= 0:
        return pulls
    a = r + 1.0
    b = np.maximum(big_r - r, 0.0) + 1.0
    law = stats.betabinom(n, a, b)
    mean = n * a / (a + b)
    upper = k > mean
    lower = k < mean
    with np.errstate(divide="ignore"):
        p_up = law.sf(k - 1)  # P(K >= k)
        p_lo = law.cdf(k)  # P(K <= k)
    # beyond about 5 sigma the library's tails are not precise enough: sum the pmf instead
    for i in np.flatnonzero(upper & (p_up < EXACT_TAIL_BELOW)):
        p_up.flat[i] = _tail_exact(k.flat[i], n, a.flat[i], b.flat[i], upper=True)
    for i in np.flatnonzero(lower & (p_lo < EXACT_TAIL_BELOW)):
        p_lo.flat[i] = _tail_exact(k.flat[i], n, a.flat[i], b.flat[i], upper=False)
    z_up = stats.norm.isf(np.clip(p_up, 1e-300, 0.5))
    z_lo = stats.norm.isf(np.clip(p_lo, 1e-300, 0.5))
    pulls[upper] = z_up[upper]
    pulls[lower] = -z_lo[lower]
    return np.clip(pulls, -MAX_PULL, MAX_PULL)


def window_sums(counts: np.ndarray, size: int) -> np.ndarray:
    """Sums of a 2D histogram over every size x size window of adjacent bins (sliding)."""
    c = np.asarray(counts, np.float64)
    if size == 1:
        return c
    cs = np.zeros((c.shape[0] + 1, c.shape[1] + 1))
    cs[1:, 1:] = c.cumsum(axis=0).cumsum(axis=1)
    return cs[size:, size:] - cs[:-size, size:] - cs[size:, :-size] + cs[:-size, :-size]


def _severity(value: float, t: Thresholds | None, lower_is_worse: bool = False) -> int:
    """0 = fine, 1 = warning, 2 = error (NaN or a disabled statistic are fine)."""
    if t is None or not math.isfinite(value):
        return 0
    if lower_is_worse:
        return 2 if value < t.error else 1 if value < t.warning else 0
    return 2 if value > t.error else 1 if value > t.warning else 0


_SEVERITY = ("", "warning", "error")


def compare_1d(
    lumisection: int,
    name: str,
    kind: str,
    counts: np.ndarray,
    ref: np.ndarray,
    check: Check,
    trials: float | None = None,
    ref_trials: float | None = None,
    edges: np.ndarray | None = None,
) -> list[Alarm]:
    """Compare a 1D histogram (flow bins included) with its reference; at most one alarm."""
    entries = float(np.sum(counts) if trials is None else trials)
    if entries < check.min_entries or float(np.sum(ref)) <= 0:
        return []
    chi, _, chi_p = (
        chi2_test(counts, ref) if check.chi2_pvalue is not None else (math.nan, 0, math.nan)
    )
    ks = ks_pvalue(counts, ref) if check.ks_pvalue is not None else math.nan
    pulls = beta_binomial_pulls(counts, ref, trials, ref_trials)
    worst = int(np.argmax(np.abs(pulls))) if pulls.size else 0
    max_pull = float(pulls.flat[worst]) if pulls.size else math.nan
    level = max(
        _severity(chi_p, check.chi2_pvalue, lower_is_worse=True),
        _severity(ks, check.ks_pvalue, lower_is_worse=True),
        _severity(abs(max_pull), check.pull),
    )
    if level == 0:
        return []
    region: tuple[tuple[float, float], ...] = ()
    if edges is not None and 0 <= worst < len(edges) - 1:
        region = ((float(edges[worst]), float(edges[worst + 1])),)
    msg = (
        f"{name}: chi2/ndf={chi:.3g} (p={chi_p:.3g}), KS p={ks:.3g}, "
        f"worst pull={max_pull:+.2f} (bin {worst})"
    )
    return [
        Alarm(
            lumisection,
            name,
            kind,
            _SEVERITY[level],
            entries,
            chi2_ndf=chi,
            chi2_pvalue=chi_p,
            ks_pvalue=ks,
            max_pull=max_pull,
            region=region,
            n_bins=1,
            message=msg,
        )
    ]


def compare_map(
    lumisection: int,
    name: str,
    counts: np.ndarray,
    ref: np.ndarray,
    check: Check,
    x_edges: np.ndarray,
    y_edges: np.ndarray,
) -> list[Alarm]:
    """Pulls of a 2D occupancy map in sliding windows of every configured size: dead and hot
    region alarms (a wide dead region shows in a window before any single bin is significant)."""
    entries = float(np.sum(counts))
    ref_total = float(np.sum(ref))
    if entries < check.min_entries or ref_total <= 0 or check.pull is None:
        return []
    alarms: list[Alarm] = []
    pulls_by_size = {}
    for size in check.window_sizes:
        if size <= min(np.shape(counts)):
            pulls_by_size[size] = beta_binomial_pulls(
                window_sums(counts, size), window_sums(ref, size), entries, ref_total
            )
    for sign, kind in ((-1.0, "dead_region"), (1.0, "hot_region")):
        best: tuple[int, float, int, tuple[int, int]] | None = None  # level, pull, size, window
        for size, pulls in pulls_by_size.items():
            signed = sign * pulls
            worst = np.unravel_index(int(np.argmax(signed)), signed.shape)
            level = _severity(float(signed[worst]), check.pull)
            if level and (best is None or (level, signed[worst]) > (best[0], best[1])):
                best = (level, float(signed[worst]), size, (int(worst[0]), int(worst[1])))
        if best is None:
            continue
        level, pull, size, (ix, iy) = best
        n_bins = (
            int(np.sum(sign * pulls_by_size[1] > check.pull.warning)) if 1 in pulls_by_size else 0
        )
        region = (
            (float(x_edges[ix]), float(x_edges[ix + size])),
            (float(y_edges[iy]), float(y_edges[iy + size])),
        )
        alarms.append(
            Alarm(
                lumisection,
                name,
                kind,
                _SEVERITY[level],
                entries,
                max_pull=sign * pull,
                region=region,
                n_bins=n_bins,
                message=(
                    f"{name}: {kind.replace('_', ' ')} at eta [{region[0][0]:.2f}, "
                    f"{region[0][1]:.2f}], phi [{region[1][0]:.2f}, {region[1][1]:.2f}]: "
                    f"pull {sign * pull:+.1f} in a {size}x{size}-bin window"
                ),
            )
        )
    return alarms
