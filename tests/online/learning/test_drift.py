"""Drift detection: a shifted zero-bias stream is flagged, a clean one is not.

Statistical tolerance: each window is tested at a total false-alarm probability alpha = 1e-3
(Bonferroni over the seed rate tests, the score KS test and 57 input KS tests; KS on discrete
values is conservative), so 8 clean windows raise a false alarm with probability < 0.8 %.
The draws are seeded, so the test is deterministic; the bound says how unlikely a failure
would be for another seed. The drift (a 10 % energy scale) moves the rates by far more than
the 10 % minimum effect and gives p-values below 1e-10.
"""

from __future__ import annotations

import numpy as np
import pytest

from l1forge.errors import ConfigError
from l1forge.models.build import NetBuilder
from l1forge.models.emulator import Emulator
from l1forge.models.evaluate import threshold_at_fpr
from l1forge.models.fixed import Fixed
from l1forge.online.learning.drift import DriftConfig, DriftDetector, expected_fraction, rate_check
from l1forge.sim.faults import EnergyScale, inject

from .events import zero_bias_like

FRACTIONS = {"loose": 0.05, "tight": 0.01}  # zero-bias pass fractions of two seeds


def ht_squared_net():
    """A real qnet whose score is (scalar pT sum / 8)**2: it feels the energy scale."""
    b = NetBuilder("ht2", 57, Fixed(True, 16, 16))
    w = np.zeros((57, 1), dtype=np.int64)
    w[0::3] = 16  # 16 * 2**-7 = 1/8 on every pT feature
    b.dense("ht", w, Fixed(True, 8, 1), np.zeros(1, dtype=np.int64), Fixed(True, 2, 2))
    b.quantize("mu", Fixed(True, 18, 18), "RND_CONV", "SAT")
    b.sum_squares("score")
    return b.build(provenance={"producer": "tests/online/test_drift.py"})


@pytest.fixture(scope="module")
def setup():
    net = ht_squared_net()
    emu = Emulator(net)

    def score(ev):
        return emu.run_float(ev.reshape(len(ev), -1))[:, 0]

    ref = zero_bias_like(20000, seed=1)
    s_ref = score(ref)
    seeds = {k: (threshold_at_fpr(s_ref, f), f) for k, f in FRACTIONS.items()}
    det = DriftDetector(seeds, s_ref, ref.reshape(len(ref), -1), DriftConfig(alpha=1e-3))
    return det, score


def test_clean_windows_are_not_flagged(setup):
    det, score = setup
    for i in range(8):
        ev = zero_bias_like(5000, seed=100 + i)
        rep = det.check(score(ev), ev.reshape(len(ev), -1))
        assert not rep.drifted, rep.reasons
        assert len(rep.rates) == 2 and rep.score is not None and rep.inputs is not None
        for r in rep.rates:
            assert abs(r.rel_change) < 0.3  # within statistics of 50 .. 250 expected events


def test_energy_scale_shift_is_flagged(setup):
    det, score = setup
    ev = inject(EnergyScale(0.10), zero_bias_like(5000, seed=200))
    rep = det.check(score(ev), ev.reshape(len(ev), -1))
    assert rep.drifted
    assert any(r.drifted and r.rel_change > 0.1 for r in rep.rates), rep.rates
    assert rep.score.drifted and rep.score.p_value < 1e-10
    assert rep.inputs.drifted  # the pT features moved as well
    assert rep.to_json()["drifted"] is True


def test_small_window_is_not_tested(setup):
    det, score = setup
    ev = inject(EnergyScale(0.5), zero_bias_like(100, seed=3))
    rep = det.check(score(ev))
    assert not rep.drifted and rep.n_events == 100 and rep.rates == ()


def test_rate_check_needs_significance_and_size():
    s = np.arange(100000, dtype=float)
    # 1 % expected, 1.2 % observed in 100k events: 20 % off and p << 1e-3: drift
    r = rate_check("s", threshold_at_fpr(s, 0.012), 0.01, s, 1e-3, 0.1)
    assert r.drifted and r.n_pass == 1200 and r.rel_change == pytest.approx(0.2)
    # 5 % off is significant at 100k events but below the 10 % minimum effect
    r = rate_check("s", threshold_at_fpr(s, 0.0105), 0.01, s, 1e-3, 0.1)
    assert not r.drifted and r.p_value < 0.2
    assert expected_fraction(400.0, 40e6, prescale=10) == pytest.approx(1e-4)
    with pytest.raises(ConfigError):
        expected_fraction(50e6, 40e6)
