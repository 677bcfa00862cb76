"""The black-box baseline counts every simulated event and keeps its best design."""

from __future__ import annotations

import pytest
import torch

from l1forge.models.emulator import Emulator
from l1forge.offline.bayesopt import run_bayesopt
from l1forge.offline.config import from_dict


def test_bayesopt_counts_events_and_returns_a_runnable_design():
    torch.set_num_threads(1)
    cfg = from_dict({"detector": {"n_cells": 3}, "network": {"hidden": 4},
                     "train": {"batch": 16}})  # fmt: skip
    res = run_bayesopt(cfg, n_trials=3, steps_per_trial=2, eval_events=100, seed=0)
    assert [t.events_so_far for t in res.trials] == [132, 264, 396]  # 2 x 16 train + 100 scored
    assert res.events == 396
    # trials explore different points
    assert len({t.params["cell_mm"] for t in res.trials}) == 3
    g = res.best_geometry
    assert Emulator(res.best_net).input_spec.size == g.n_channels


def test_bayesopt_stops_at_its_crossing_and_counts_the_reevaluation():
    torch.set_num_threads(1)
    cfg = from_dict({"detector": {"n_cells": 3}, "network": {"hidden": 4},
                     "train": {"batch": 16}})  # fmt: skip
    # a target every design reaches: the first trial is re-evaluated and crosses
    res = run_bayesopt(cfg, n_trials=5, steps_per_trial=2, eval_events=100, seed=0, target=-10.0)
    assert len(res.trials) == 1 and res.crossing_trial == 0
    assert res.trials[0].reevaluated is not None
    assert res.crossing_events == 132 + 100  # the trial's events plus its re-evaluation
    # an unreachable target: every trial runs, only new best trials are re-evaluated
    res = run_bayesopt(cfg, n_trials=4, steps_per_trial=2, eval_events=100, seed=0, target=10.0)
    assert len(res.trials) == 4 and res.crossing_trial is None and res.crossing_events is None
    running_best, expected = -float("inf"), []
    for t in res.trials:
        expected.append(t.utility - t.penalty > running_best)
        running_best = max(running_best, t.utility - t.penalty)
    assert [t.reevaluated is not None for t in res.trials] == expected
    # the re-evaluation is the design scored on other events than its own scoring
    assert res.trials[0].reevaluated != res.trials[0].utility


def test_bayesopt_penalizes_a_design_over_its_latency_budget():
    from l1forge.offline.latency_model import alkaid_delay_ns

    torch.set_num_threads(1)
    doc = {"detector": {"n_cells": 3}, "network": {"hidden": 4}, "train": {"batch": 16}}
    free = run_bayesopt(from_dict(doc), n_trials=1, steps_per_trial=2, eval_events=100)
    assert free.trials[0].penalty == 0.0  # far inside every default budget
    # 1 ns in one stage: no network meets it; the penalty follows alkaid's delay estimate
    tight = from_dict({**doc, "cost": {"clock_mhz": 1000.0, "latency_stages_budget": 1}})
    res = run_bayesopt(tight, n_trials=1, steps_per_trial=2, eval_events=100)
    delay = alkaid_delay_ns(res.best_net)
    expected = 100.0 * (delay / (0.95 * 1.0) - 1) ** 2
    assert res.trials[0].penalty == pytest.approx(expected, rel=1e-9)
