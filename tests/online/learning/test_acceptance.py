"""Acceptance rules of the continual learner on plain numbers (no TensorFlow, no emulator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from l1forge.models.build import random_mlp
from l1forge.online.datapath.menu import Menu, Seed
from l1forge.online.learning.acceptance import (
    Candidate,
    choose,
    efficiency_losses,
    final_reasons,
    rate_agreement,
    rate_errors,
    rate_reasons,
    rate_seeds,
)


def _menu() -> Menu:
    return Menu(
        (
            Seed("AD_Loose", "ad", threshold=0.5, target_rate_hz=4e5),  # 1 % of zero bias
            Seed("Other", "classifier", threshold=0.0, target_rate_hz=1e3),
            Seed("ZeroBias", "", prescale=10),
        )
    )


def _candidate(index: int, reasons: tuple[str, ...], efficiency: float) -> Candidate:
    return Candidate(
        index=index,
        cfg=None,
        net=random_mlp(score=True, seed=index),
        weights=Path(f"w{index}.h5"),
        n_replay=0,
        metrics={},
        reasons=reasons,
        efficiency=efficiency,
        provenance={},
    )


def test_rate_seeds_are_the_models_seeds_with_a_target():
    assert [s.name for s in rate_seeds(_menu(), "ad")] == ["AD_Loose"]


def test_rate_agreement_takes_the_larger_of_relative_and_poisson_tolerance():
    assert rate_agreement(130, 100.0, 0.10) and not rate_agreement(131, 100.0, 0.10)  # 3 sigma
    assert rate_agreement(10_900, 1e4, 0.10) and not rate_agreement(11_100, 1e4, 0.10)  # 10 %


def test_held_out_rates_are_checked_against_the_target():
    s = np.zeros(10_000)
    s[:100] = 1.0  # exactly 1 % above 0.5
    rates = rate_errors(_menu(), "ad", s, 0.10)
    assert rates["AD_Loose"]["n_pass"] == 100 and rates["AD_Loose"]["ok"]
    assert rate_reasons(rates) == []
    s[:300] = 1.0
    bad = rate_errors(_menu(), "ad", s, 0.10)
    assert rate_reasons(bad) == ["seed AD_Loose: held-out rate off by +200.0%"]


def test_an_efficiency_loss_beyond_the_tolerance_is_a_reason():
    parent = {"sig": {"A": 0.5, "B": 0.5}}
    child = {"sig": {"A": 0.44, "B": 0.46}}
    assert efficiency_losses(child, parent, ["A", "B"], 0.10) == [
        "seed A: signal efficiency 0.440 < parent 0.500"
    ]
    old = efficiency_losses(child, parent, ["A"], 0.10, old_conditions=True)
    assert old == ["seed A: old-conditions signal efficiency 0.440 < parent 0.500 (forgets)"]


def test_the_best_passing_candidate_wins_and_the_others_say_why():
    a, b = _candidate(0, (), 0.4), _candidate(1, (), 0.6)
    c = _candidate(2, ("seed A: held-out rate off by +50.0%",), 0.9)
    assert choose([a, b, c]) is b
    assert final_reasons(a, b) == ["candidate 1 has a higher held-out efficiency"]
    assert final_reasons(b, b) == [] and final_reasons(c, b) == list(c.reasons)
    assert choose([c]) is None and not c.passed
