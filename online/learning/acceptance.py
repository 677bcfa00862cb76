"""Acceptance of fine-tuned candidates: held-out rates, signal efficiency against the parent, and
the choice of the candidate that goes live.

Plain numbers in (scores, pass fractions, a menu), reasons out: no TensorFlow and no emulator, so
every rule is testable on its own. The learner computes the scores and calls these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import numpy as np

from l1forge.models.qnet import QNet
from l1forge.online.learning.drift import expected_fraction

if TYPE_CHECKING:
    from l1forge.online.datapath.menu import Menu, Seed
    from l1forge.online.learning.settings import LearnerConfig

# seed name -> {process: pass fraction}
SignalTPR = Mapping[str, Mapping[str, float]]


class SeedRateCheck(TypedDict):
    """One rate seed's held-out zero-bias count against its target (``rate_errors``)."""

    n_pass: int
    expected: float
    rel_error: float
    ok: bool


class OldConditionsTPR(TypedDict):
    """Signal efficiencies on the reference conditions, candidate and parent."""

    signal_tpr: dict[str, dict[str, float]]
    parent_signal_tpr: dict[str, dict[str, float]]


class CandidateMetrics(TypedDict):
    """What the acceptance checks measured of a candidate (stored in its provenance)."""

    holdout_rate: dict[str, SeedRateCheck]
    signal_tpr: NotRequired[dict[str, dict[str, float]]]  # with signal_holdout
    parent_signal_tpr: NotRequired[dict[str, dict[str, float]]]
    old_conditions: NotRequired[OldConditionsTPR]  # with reference_signal


@dataclass(frozen=True)
class Candidate:
    """One trained candidate of an adaptation (not registered yet) and the outcome of its checks."""

    index: int  # position among the adaptation's settings
    cfg: LearnerConfig  # the settings it was trained with
    net: QNet
    weights: Path | None  # None: a run-time change of a version without Keras weights
    n_replay: int  # replayed older events in its training set
    metrics: CandidateMetrics
    reasons: tuple[str, ...]  # why it must not go live (empty: it passed every check)
    efficiency: float  # mean held-out signal efficiency over the rate seeds (0 without signal)
    provenance: dict[str, Any]  # kind, training settings, verification, metrics

    @property
    def passed(self) -> bool:
        return not self.reasons


def rate_seeds(menu: Menu, model: str) -> list[Seed]:
    """The seeds of ``model`` that have a target rate (the ones calibration sets)."""
    return [s for s in menu.seeds if s.model == model and s.target_rate_hz is not None]


def rate_agreement(n_pass: int, expected: float, rel_tol: float) -> bool:
    """|observed - expected| within ``rel_tol`` of expected, or 3 Poisson sigma if larger."""
    return abs(n_pass - expected) <= max(rel_tol * expected, 3.0 * math.sqrt(max(expected, 1.0)))


def rate_errors(
    menu: Menu, model: str, s_hold: np.ndarray, max_rate_error: float
) -> dict[str, SeedRateCheck]:
    """Per rate seed of ``model``: held-out zero-bias events passing its threshold against the
    count its target rate expects, and whether they agree (``rate_agreement``)."""
    out: dict[str, SeedRateCheck] = {}
    for seed in rate_seeds(menu, model):
        assert seed.target_rate_hz is not None  # rate_seeds keeps the seeds with a target
        f = expected_fraction(seed.target_rate_hz, menu.input_rate_hz, seed.prescale)
        n_pass = int(np.count_nonzero(s_hold > seed.threshold))
        exp = f * len(s_hold)
        out[seed.name] = {
            "n_pass": n_pass,
            "expected": exp,
            "rel_error": n_pass / exp - 1.0,
            "ok": rate_agreement(n_pass, exp, max_rate_error),
        }
    return out


def rate_reasons(rates: Mapping[str, SeedRateCheck]) -> list[str]:
    """A reason per seed whose held-out rate is off (from ``rate_errors``)."""
    return [
        f"seed {k}: held-out rate off by {v['rel_error']:+.1%}"
        for k, v in rates.items()
        if not v["ok"]
    ]


def mean_efficiency(tpr: SignalTPR, seed: str) -> float:
    """Mean over signal processes of one seed's pass fraction."""
    return float(np.mean([v[seed] for v in tpr.values()]))


def efficiency_losses(
    candidate: SignalTPR,
    parent: SignalTPR,
    seeds: Iterable[str],
    max_loss: float,
    *,
    old_conditions: bool = False,
) -> list[str]:
    """A reason per seed where the candidate's mean efficiency is below (1 - max_loss) x the
    parent's; ``old_conditions`` names the forgetting of the reference conditions."""
    reasons = []
    for name in seeds:
        c, p = mean_efficiency(candidate, name), mean_efficiency(parent, name)
        if c < (1.0 - max_loss) * p:
            if old_conditions:
                reasons.append(
                    f"seed {name}: old-conditions signal efficiency {c:.3f} < "
                    f"parent {p:.3f} (forgets)"
                )
            else:
                reasons.append(f"seed {name}: signal efficiency {c:.3f} < parent {p:.3f}")
    return reasons


def choose(candidates: Sequence[Candidate]) -> Candidate | None:
    """The passing candidate with the highest held-out efficiency (the first on a tie)."""
    passing = [c for c in candidates if c.passed]
    return max(passing, key=lambda c: c.efficiency) if passing else None


def final_reasons(candidate: Candidate, best: Candidate | None) -> list[str]:
    """Why ``candidate`` does not go live: its failed checks, or that ``best`` beat it."""
    reasons = list(candidate.reasons)
    if not reasons and candidate is not best:
        assert best is not None  # a passing candidate means there is a best one
        reasons = [f"candidate {best.index} has a higher held-out efficiency"]
    return reasons
