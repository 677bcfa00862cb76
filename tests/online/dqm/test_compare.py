"""The DQM statistics on known inputs: chi2, Kolmogorov-Smirnov, beta-binomial pulls, maps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from l1forge.online.dqm.compare import (
    Alarm,
    beta_binomial_pulls,
    chi2_test,
    compare_1d,
    compare_map,
    ks_pvalue,
    merge_sparse,
    window_sums,
)
from l1forge.online.dqm.config import Check, Thresholds

CHECK = Check(
    min_entries=100,
    chi2_pvalue=Thresholds(1e-4, 1e-7),
    ks_pvalue=Thresholds(1e-4, 1e-7),
    pull=Thresholds(5.0, 6.0),
)
MAP_CHECK = Check(min_entries=100, pull=Thresholds(5.0, 6.0), window_sizes=(1, 2, 3))


def test_chi2_of_identical_histograms_is_zero():
    h = np.array([5.0, 10, 20, 40, 20, 10, 5])
    chi, ndf, p = chi2_test(h, 3 * h)
    assert chi == 0.0 and p == 1.0 and ndf >= 1


def test_chi2_per_ndf_is_one_under_the_null():
    # 300 pairs of multinomial samples of one shape: the mean chi2/ndf is 1 within 0.05
    # (its standard error here is about sqrt(2/40)/sqrt(300) = 0.013), p-values are uniform.
    rng = np.random.default_rng(1)
    p = np.exp(-np.linspace(0, 4, 40))
    p /= p.sum()
    chis, pvals = [], []
    for _ in range(300):
        c = rng.multinomial(2000, p)
        r = rng.multinomial(20000, p)
        chi, _, pv = chi2_test(c, r)
        chis.append(chi)
        pvals.append(pv)
    assert abs(np.mean(chis) - 1.0) < 0.05
    assert stats.kstest(pvals, "uniform").pvalue > 1e-3


def test_chi2_flags_a_shifted_shape():
    rng = np.random.default_rng(2)
    x = rng.exponential(10, 20000)
    edges = np.linspace(0, 60, 61)
    ref = np.histogram(x, edges)[0]
    shifted = np.histogram(1.2 * rng.exponential(10, 20000), edges)[0]
    assert chi2_test(shifted, ref)[2] < 1e-7
    assert chi2_test(np.histogram(rng.exponential(10, 20000), edges)[0], ref)[2] > 1e-4


def test_merge_sparse_keeps_totals_and_expected_counts():
    c = np.array([0.0, 1, 0, 3, 50, 60, 2, 0, 1, 0])
    r = np.array([1.0, 2, 1, 5, 100, 110, 4, 1, 1, 1])
    mc, mr = merge_sparse(c, r, 5.0)
    assert mc.sum() == c.sum() and mr.sum() == r.sum()
    expected = mr * c.sum() / r.sum()
    assert np.all(expected >= 5.0)
    assert len(mc) < len(c)


def test_ks_pvalue_is_uniform_under_the_null():
    # Fine bins (200 over the range) make the binned KS close to the continuous one; with
    # 400 trials the fraction below 0.1 is 0.1 +- 0.015 for an exact test. Binning and the
    # small-sample formula make it conservative (p-values a little high): accept a fraction
    # in [0.04, 0.14] and a mean p-value in [0.45, 0.62] (0.5 +- 0.014 if exact).
    rng = np.random.default_rng(3)
    edges = np.linspace(-5, 5, 201)
    ps = []
    for _ in range(400):
        a = np.histogram(rng.normal(size=1000), edges)[0]
        b = np.histogram(rng.normal(size=5000), edges)[0]
        ps.append(ks_pvalue(a, b))
    ps = np.array(ps)
    assert 0.04 <= np.mean(ps < 0.1) <= 0.14
    assert 0.45 <= ps.mean() <= 0.62


def test_ks_flags_a_shift():
    rng = np.random.default_rng(4)
    edges = np.linspace(-5, 5, 201)
    a = np.histogram(rng.normal(0.3, 1, 2000), edges)[0]
    b = np.histogram(rng.normal(0, 1, 20000), edges)[0]
    assert ks_pvalue(a, b) < 1e-7


def test_pulls_match_the_binomial_with_a_large_reference():
    # a reference of 1e8 entries pins the bin fraction: the beta-binomial tends to the binomial
    p = np.full(100, 0.01)
    ref = p * 1e8
    counts = np.full(100, 100.0)
    counts[7] = 160.0
    counts[50] = 55.0
    pulls = beta_binomial_pulls(counts, ref)
    n = counts.sum()
    z_up = stats.norm.isf(stats.binom.sf(159, n, 0.01))
    z_lo = -stats.norm.isf(stats.binom.cdf(55, n, 0.01))
    assert pulls[7] == pytest.approx(z_up, abs=0.05)
    assert pulls[50] == pytest.approx(z_lo, abs=0.05)
    assert np.all(np.abs(np.delete(pulls, [7, 50])) < 1.0)


def test_known_excess_with_a_thin_reference_gives_a_smaller_pull():
    # same excess, a reference of 10 lumisections instead of 1e6: the beta posterior widens
    ref_thick = np.full(50, 1e6)
    ref_thin = np.full(50, 1000.0)
    counts = np.full(50, 100.0)
    counts[3] = 180.0
    thick = beta_binomial_pulls(counts, ref_thick)[3]
    thin = beta_binomial_pulls(counts, ref_thin)[3]
    assert 6.0 < thin < thick


def test_far_tail_pulls_are_finite_and_monotonic():
    ref = np.full(20, 1000.0)
    pulls = []
    for excess in (50, 100, 200, 400, 800):
        c = np.full(20, 50.0)
        c[0] += excess
        pulls.append(beta_binomial_pulls(c, ref)[0])
    assert np.all(np.isfinite(pulls))
    assert np.all(np.diff(pulls) > 0), pulls
    dead = np.full(20, 100.0)
    dead[4] = 0
    assert beta_binomial_pulls(dead, ref)[4] < -8


def test_window_sums_match_a_direct_sum():
    rng = np.random.default_rng(5)
    c = rng.integers(0, 10, (7, 9)).astype(float)
    for size in (1, 2, 3):
        w = window_sums(c, size)
        assert w.shape == (8 - size, 10 - size)
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                assert w[i, j] == c[i : i + size, j : j + size].sum()


def _map(rng, n, mean_map):
    p = mean_map / mean_map.sum()
    return rng.multinomial(n, p.ravel()).reshape(mean_map.shape).astype(float)


def test_compare_map_finds_a_dead_region_and_a_hot_cell():
    rng = np.random.default_rng(6)
    shape = (20, 18)
    x_edges, y_edges = np.linspace(-5, 5, 21), np.linspace(-math.pi, math.pi, 19)
    base = np.ones(shape)
    ref = _map(rng, 200000, base)
    clean = _map(rng, 4000, base)
    assert compare_map(0, "jet/occupancy", clean, ref, MAP_CHECK, x_edges, y_edges) == []
    dead = clean.copy()
    dead[12:15, 9:12] = 0  # eta [1, 2.5], phi [0, 1.05]: 9 bins of about 11 entries
    alarms = compare_map(1, "jet/occupancy", dead, ref, MAP_CHECK, x_edges, y_edges)
    assert [(a.kind, a.severity) for a in alarms] == [("dead_region", "error")]
    (eta_lo, eta_hi), (phi_lo, phi_hi) = alarms[0].region
    assert 1.0 - 1e-9 <= eta_lo and eta_hi <= 2.5 + 1e-9
    assert -1e-9 <= phi_lo and phi_hi <= y_edges[12] + 1e-9
    hot = clean.copy()
    hot[3, 4] += 60
    alarms = compare_map(2, "jet/occupancy", hot, ref, MAP_CHECK, x_edges, y_edges)
    assert [(a.kind, a.severity) for a in alarms] == [("hot_region", "error")]
    assert alarms[0].region == ((x_edges[3], x_edges[4]), (y_edges[4], y_edges[5]))
    assert alarms[0].n_bins == 1


def test_compare_1d_needs_min_entries_and_grades_severity():
    ref = np.full(30, 1000.0)
    tiny = np.zeros(30)
    tiny[0] = 50  # a glaring spike, but 50 entries < min_entries = 100: not compared
    assert compare_1d(0, "jet/eta", "shifted_input", tiny, ref, CHECK) == []
    c = np.full(30, 100.0)
    assert compare_1d(0, "jet/eta", "shifted_input", c, ref, CHECK) == []
    c[5] = 135.0  # pull between 3 and 4: below the warning
    assert compare_1d(0, "jet/eta", "shifted_input", c, ref, CHECK) == []
    c[5] = 165.0  # about 5.5 sigma: a warning
    (a,) = compare_1d(0, "jet/eta", "shifted_input", c, ref, CHECK)
    assert a.severity == "warning" and a.kind == "shifted_input" and 5 < a.max_pull < 6
    c[5] = 250.0
    (a,) = compare_1d(3, "jet/eta", "shifted_input", c, ref, CHECK, edges=np.arange(31.0))
    assert a.severity == "error" and a.lumisection == 3 and a.region == ((5.0, 6.0),)


def test_alarm_to_dict_is_json_ready():
    a = Alarm(4, "met/pt", "shifted_input", "error", 1234.0, chi2_ndf=3.0, region=((1.0, 2.0),))
    d = json.loads(json.dumps(a.to_dict()))
    assert d["ks_pvalue"] is None and d["chi2_ndf"] == 3.0 and d["region"] == [[1.0, 2.0]]
