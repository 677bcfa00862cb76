"""Rates and efficiencies of a menu: Clopper-Pearson intervals, pure and total rates, the
null-with-resolution rule for rates fewer than 10 zero-bias events resolve, calibration."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from l1forge.models.evaluate import MIN_EVENTS_ABOVE
from l1forge.models.rates import (
    UnresolvableRateError,
    calibrate_menu,
    clopper_pearson,
    format_table,
    menu_table,
    rate_entry,
)
from l1forge.online.datapath.menu import Menu, Seed


@pytest.mark.parametrize(("k", "n"), [(0, 50), (1, 50), (10, 1000), (49, 50), (50, 50)])
@pytest.mark.parametrize("cl", [0.6827, 0.95])
def test_clopper_pearson_matches_scipy_exact(k, n, cl):
    want = binomtest(k, n).proportion_ci(cl, method="exact")
    assert clopper_pearson(k, n, cl) == pytest.approx((want.low, want.high), rel=1e-9, abs=1e-12)


def test_a_rate_below_ten_events_is_null_with_its_resolution():
    low = rate_entry(MIN_EVENTS_ABOVE - 1, 4000, 40e6, 0.6827)
    assert low["rate_hz"] is None and low["rate_interval_hz"] is None and not low["resolvable"]
    assert low["smallest_resolvable_rate_hz"] == pytest.approx(10 / 4000 * 40e6)
    ok = rate_entry(MIN_EVENTS_ABOVE, 4000, 40e6, 0.6827)
    assert ok["rate_hz"] == pytest.approx(10 / 4000 * 40e6)
    lo, hi = ok["rate_interval_hz"]
    assert lo < ok["rate_hz"] < hi


def test_table_counts_pure_and_total_rates_once():
    menu = Menu((Seed("A", "m", threshold=0.0), Seed("B", "m", threshold=0.0), Seed("C", "")))
    # 100 events: 30 only A, 20 A and B, 5 only B, 45 with C alone
    bits = np.array([1] * 30 + [3] * 20 + [2] * 5 + [4] * 45, dtype=np.uint32)
    sig = np.array([1, 0, 3, 7], dtype=np.uint32)
    t = menu_table(menu, bits, {"s": sig}, cl=0.6827)
    a, b, c = t["seeds"]
    assert (a["rate"]["fired"], a["pure_rate"]["fired"]) == (50, 30)
    assert (b["rate"]["fired"], b["pure_rate"]["fired"]) == (25, 5)
    assert b["pure_rate"]["rate_hz"] is None  # 5 < 10 events
    assert c["rate"]["rate_hz"] == pytest.approx(0.45 * 40e6)
    assert t["total"]["rate"]["fired"] == 100
    assert a["efficiency"]["s"]["efficiency"] == 0.75
    assert t["total"]["efficiency"]["s"]["passed"] == 3
    text = format_table(t)
    assert "null" in text and text.splitlines()[-1].startswith("total")


def test_calibration_interval_and_refusal():
    rng = np.random.default_rng(0)
    zb = {"m": rng.exponential(size=20_000)}
    menu = Menu(
        (
            Seed("A", "m", target_rate_hz=40_000.0),
            Seed("P", "m", target_rate_hz=4000.0, prescale=10),
        )
    )
    cal, report = calibrate_menu(menu, zb, "zb.h5")
    assert cal == menu.calibrate(zb)
    for r in report:
        assert r.n_above == np.count_nonzero(zb["m"] > r.threshold) >= MIN_EVENTS_ABOVE
        assert r.rate_interval_hz[0] < r.rate_hz < r.rate_interval_hz[1]
        assert r.threshold_interval[0] <= r.threshold <= r.threshold_interval[1]
    assert report[1].rate_hz == pytest.approx(report[1].n_above / 20_000 * 40e6 / 10)
    # 20,000 events resolve 10/20000 * 40 MHz = 20 kHz; with prescale 10, 2 kHz
    with pytest.raises(UnresolvableRateError, match=r"zb\.h5.*'P'.*resolves is 2000 Hz"):
        calibrate_menu(Menu((Seed("P", "m", target_rate_hz=1000.0, prescale=10),)), zb, "zb.h5")
