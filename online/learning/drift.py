"""Drift detection on the zero-bias stream: seed rates against their targets, score and inputs
against a reference window.

Zero-bias events are an unbiased sample of the input, so the number of them passing a seed's
threshold is Binomial(n, target fraction) while conditions hold. Each window is tested with
(1) an exact two-sided binomial test per seed, (2) a two-sample Kolmogorov-Smirnov test of the
score distribution against the reference window and (3) per-input-feature KS tests. The tests
share one false-alarm budget ``alpha`` (Bonferroni over every test), and a significant result
also has to be large (relative rate change, KS distance) so that huge windows do not flag
physically irrelevant differences.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from l1forge.errors import ConfigError


@dataclass(frozen=True)
class DriftConfig:
    """Significance and minimum effect sizes of the drift tests."""

    alpha: float = 1e-3  # probability of a false alarm per window, all tests together
    min_rel_rate_change: float = 0.10  # |observed / expected - 1| needed to call a rate drift
    min_ks_distance: float = 0.05  # KS statistic needed to call a distribution drift
    min_events: int = 1000  # windows smaller than this are not tested
    check_inputs: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"drift.alpha: must be in (0, 1), got {self.alpha!r}")
        if self.min_rel_rate_change < 0 or not 0 <= self.min_ks_distance < 1:
            raise ConfigError("drift.min_rel_rate_change >= 0 and 0 <= min_ks_distance < 1")
        if self.min_events < 1:
            raise ConfigError(f"drift.min_events: must be >= 1, got {self.min_events!r}")


@dataclass(frozen=True)
class RateCheck:
    """One seed: zero-bias events above its threshold against the expected count."""

    seed: str
    threshold: float
    expected_fraction: float
    n_events: int
    n_pass: int
    p_value: float
    rel_change: float  # observed / expected - 1
    drifted: bool


@dataclass(frozen=True)
class DistributionCheck:
    """A two-sample KS test of a window against the reference (worst feature for inputs)."""

    name: str
    statistic: float
    p_value: float
    drifted: bool


@dataclass(frozen=True)
class DriftReport:
    """The verdict on one window and every test behind it."""

    n_events: int
    rates: tuple[RateCheck, ...]
    score: DistributionCheck | None
    inputs: DistributionCheck | None
    drifted: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rate_check(
    seed: str,
    threshold: float,
    expected_fraction: float,
    scores: np.ndarray,
    alpha: float,
    rel: float,
) -> RateCheck:
    """Binomial test of the events with score > threshold (strict, as the comparator)."""
    s = np.asarray(scores, dtype=np.float64)
    n, k = len(s), int(np.count_nonzero(s > threshold))
    p = float(stats.binomtest(k, n, expected_fraction).pvalue) if n else 1.0
    change = k / (n * expected_fraction) - 1.0 if n else 0.0
    return RateCheck(
        seed, float(threshold), expected_fraction, n, k, p, change, p < alpha and abs(change) > rel
    )


def _ks(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if np.array_equal(np.unique(a), np.unique(b)) and len(np.unique(a)) == 1:
        return 0.0, 1.0  # both constant and equal (a zero-padded feature)
    r = stats.ks_2samp(a, b, method="asymp")
    return float(r.statistic), float(r.pvalue)


class DriftDetector:
    """Compares windows of zero-bias scores (and inputs) with the seeds' targets and a reference.

    ``seeds`` maps a seed name to (threshold, expected pass fraction of zero-bias events), the
    fraction being target rate / input rate. Scores are the real-valued network outputs.
    """

    def __init__(
        self,
        seeds: Mapping[str, tuple[float, float]],
        reference_scores: np.ndarray,
        reference_inputs: np.ndarray | None = None,
        config: DriftConfig = DriftConfig(),
    ):
        for name, (_, frac) in seeds.items():
            if not 0.0 < frac < 1.0:
                raise ConfigError(f"seed {name!r}: expected pass fraction must be in (0, 1)")
        self.seeds = dict(seeds)
        self.config = config
        self.reference_scores = np.asarray(reference_scores, dtype=np.float64)
        self.reference_inputs = None if reference_inputs is None else np.asarray(reference_inputs)
        if len(self.reference_scores) < config.min_events:
            raise ConfigError(
                f"drift reference: {len(self.reference_scores)} events, need >= "
                f"{config.min_events} (drift.min_events)"
            )

    def _n_tests(self) -> int:
        n_inputs = self.reference_inputs.shape[1] if self.reference_inputs is not None else 0
        return len(self.seeds) + 1 + (n_inputs if self.config.check_inputs else 0)

    def check(self, scores: np.ndarray, inputs: np.ndarray | None = None) -> DriftReport:
        """Test one window; ``inputs`` (N, features) are compared only with reference inputs."""
        cfg = self.config
        scores = np.asarray(scores, dtype=np.float64)
        n = len(scores)
        if n < cfg.min_events:
            return DriftReport(n, (), None, None, False, (f"window of {n} < min_events",))
        a = cfg.alpha / self._n_tests()
        rates = tuple(
            rate_check(name, t, f, scores, a, cfg.min_rel_rate_change)
            for name, (t, f) in self.seeds.items()
        )
        d, p = _ks(scores, self.reference_scores)
        score = DistributionCheck("score", d, p, p < a and d > cfg.min_ks_distance)
        inp = None
        if cfg.check_inputs and inputs is not None and self.reference_inputs is not None:
            x = np.asarray(inputs).reshape(n, -1)
            worst = ("", 0.0, 1.0)
            for j in range(x.shape[1]):
                dj, pj = _ks(x[:, j], self.reference_inputs[:, j])
                if (pj, -dj) < (worst[2], -worst[1]):
                    worst = (f"input[{j}]", dj, pj)
            name, dj, pj = worst
            inp = DistributionCheck(name, dj, pj, pj < a and dj > cfg.min_ks_distance)
        reasons = [
            f"seed {r.seed}: {r.n_pass} of {r.n_events} passed, expected "
            f"{r.expected_fraction * r.n_events:.1f} ({r.rel_change:+.0%}, p={r.p_value:.2g})"
            for r in rates
            if r.drifted
        ]
        for c in (score, inp):
            if c is not None and c.drifted:
                reasons.append(f"{c.name} distribution: KS {c.statistic:.3f}, p={c.p_value:.2g}")
        return DriftReport(n, rates, score, inp, bool(reasons), tuple(reasons))


def expected_fraction(target_rate_hz: float, input_rate_hz: float, prescale: int = 1) -> float:
    """Zero-bias pass fraction of a seed at ``target_rate_hz`` (before its prescale)."""
    f = target_rate_hz * prescale / input_rate_hz
    if not (math.isfinite(f) and 0.0 < f < 1.0):
        raise ConfigError(
            f"target rate {target_rate_hz} Hz x prescale {prescale} at {input_rate_hz} Hz input "
            "is not a pass fraction in (0, 1)"
        )
    return f
