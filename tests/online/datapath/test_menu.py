"""The trigger menu: calibration to a rate, prescales, worker-independent decisions, bad menus."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from l1forge.errors import ConfigError
from l1forge.models import qnet
from l1forge.models.emulator import Emulator
from l1forge.online.datapath.backends import outputs_float
from l1forge.online.datapath.menu import (
    AD_SEED_RATES_HZ,
    Menu,
    Seed,
    default_menu,
    prescale_keep,
    seed_counts,
)
from l1forge.sim.dataset import read_events

N_STAT = 2_000_000
INPUT_HZ = 40e6


def n_sigma(observed: float, expected: float, variance: float) -> float:
    return abs(observed - expected) / math.sqrt(variance)


@pytest.fixture(scope="module")
def zero_bias():
    """Two independent continuous zero-bias samples of two models' scores."""
    rng = np.random.default_rng(2024)
    return [
        {"ad": rng.exponential(3.0, N_STAT), "classifier": rng.normal(0.0, 1.0, N_STAT)}
        for _ in range(2)
    ]


def test_calibrated_thresholds_give_the_target_rate_on_an_independent_sample(zero_bias):
    """Tolerance: 4 standard deviations. The threshold leaves k = floor(f n) calibration events
    above it, so the true pass fraction has variance ~ k/n^2 and the test count, binomial around
    it, adds ~ k more: var(test count) ~ 2k. Continuous scores, so no ties."""
    calib, test = zero_bias
    menu = default_menu(zero_bias_prescale=10).calibrate(calib)
    fired = menu.decide(test, np.arange(N_STAT, dtype=np.uint64))
    counts = menu.counts(fired)
    for seed in menu.seeds:
        if seed.zero_bias:
            continue
        expected = seed.target_rate_hz / INPUT_HZ * N_STAT
        assert math.isfinite(seed.threshold)
        assert n_sigma(counts[seed.name], expected, 2 * expected) < 4, (seed, counts[seed.name])
        # on the calibration sample itself the count is exact
        assert (calib[seed.model] > seed.threshold).sum() == math.floor(expected)


def test_calibration_on_quantized_scores_is_the_tightest_threshold(events_h5, tiny_ir_path):
    """Real network scores (integers * 2^-frac, many ties): the threshold passes at most the
    allowed number of zero-bias events and one quantization step lower would pass more."""
    net = qnet.load(tiny_ir_path)
    bg = read_events(events_h5).of_process("minbias")
    scores = outputs_float(net, Emulator(net).run(bg.inputs))[:, 0]
    lsb = net.output_specs[0].fixed.lsb
    for rate in (4e6, 1e6, 2e5):
        menu = Menu((Seed("AD", "ad", target_rate_hz=rate),)).calibrate({"ad": scores})
        t = menu.seeds[0].threshold
        allowed = math.floor(rate / INPUT_HZ * len(scores))
        assert (scores > t).sum() <= allowed
        assert (scores > t - lsb).sum() > allowed
        counts = menu.counts(menu.decide({"ad": scores}, np.arange(len(scores))))
        assert counts["AD"] == (scores > t).sum()


def test_prescale_accepts_one_in_prescale_of_passing_events():
    """Tolerance: 4 binomial standard deviations of Binomial(n_pass, 1/prescale)."""
    rng = np.random.default_rng(5)
    seqs = np.arange(10**6, dtype=np.uint64) + np.uint64(123_456_789)
    score = rng.uniform(size=len(seqs))
    for prescale in (2, 7, 1000):
        menu = Menu(
            (
                Seed("Raw", "ad", threshold=0.5),
                Seed("Pre", "ad", threshold=0.5, prescale=prescale),
                Seed("ZB", "", prescale=prescale),
            )
        )
        counts = menu.counts(menu.decide({"ad": score}, seqs))
        p = 1 / prescale
        for name, n_pass in (("Pre", counts["Raw"]), ("ZB", len(seqs))):
            var = n_pass * p * (1 - p)
            assert n_sigma(counts[name], n_pass * p, var) < 4, (prescale, name, counts)


def test_prescales_of_different_seeds_are_independent():
    seqs = np.arange(400_000, dtype=np.uint64)
    a, b = prescale_keep(seqs, "A", 10), prescale_keep(seqs, "B", 10)
    n_both = (a & b).sum()
    expected = len(seqs) / 100  # 1/10 * 1/10 if independent
    assert n_sigma(n_both, expected, expected) < 4
    # and not periodic in the sequence number (a seq % p rule would give exactly 0 or n/10)
    assert 0 < a[seqs % 10 == 0].sum() < 0.2 * len(seqs) / 10


@settings(max_examples=40, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 3000), max_size=8),
    first=st.integers(0, 2**63),
    seed=st.integers(0, 10**6),
)
def test_decisions_do_not_depend_on_batching_or_order(cuts, first, seed):
    rng = np.random.default_rng(seed)
    n = 3000
    seqs = np.uint64(first) + np.arange(n, dtype=np.uint64)
    scores = {"ad": rng.exponential(size=n), "classifier": rng.normal(size=n)}
    menu = Menu(
        (
            Seed("AD", "ad", threshold=1.0, prescale=3),
            Seed("AD_raw", "ad", threshold=1.0),
            Seed("Cls", "classifier", threshold=0.0, prescale=5),
            Seed("ZB", "", prescale=11),
        )
    )
    whole = menu.decide(scores, seqs)
    edges = [0, *sorted(cuts), n]
    parts = [
        menu.decide({k: v[a:b] for k, v in scores.items()}, seqs[a:b])
        for a, b in itertools.pairwise(edges)
    ]
    assert_array_equal(np.concatenate(parts), whole)
    perm = rng.permutation(n)
    shuffled = menu.decide({k: v[perm] for k, v in scores.items()}, seqs[perm])
    assert_array_equal(shuffled, whole[perm])
    # a menu with the seeds in another order fires the same events per seed
    rev = Menu(menu.seeds[::-1])
    rev_bits = rev.decide(scores, seqs)
    for i, s in enumerate(menu.seeds):
        j = rev.names.index(s.name)
        assert_array_equal((whole >> i) & 1, (rev_bits >> j) & 1)


def test_threshold_is_strict_and_uncalibrated_seeds_fire_nothing():
    seqs = np.arange(4, dtype=np.uint64)
    menu = Menu((Seed("T", "ad", threshold=2.0), Seed("U", "ad"), Seed("ZB", "")))
    bits = menu.decide({"ad": np.array([1.0, 2.0, 2.5, 1e9])}, seqs)
    assert_array_equal(bits, [0b100, 0b100, 0b101, 0b101])


def test_seed_counts_match_a_loop():
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32)
    expected = [sum(int(b) >> i & 1 for b in bits) for i in range(32)]
    assert seed_counts(bits, 32).tolist() == expected
    assert seed_counts(np.zeros(0, np.uint32), 3).tolist() == [0, 0, 0]
    menu = Menu((Seed("a", "", prescale=1), Seed("b", "")))
    assert menu.rates_hz(menu.counts(np.array([1, 3, 0], np.uint32)), 4) == {
        "a": 2 / 4 * INPUT_HZ,
        "b": 1 / 4 * INPUT_HZ,
    }


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Seed("Neg", "ad", prescale=-1), "Neg"),
        (lambda: Seed("Zero", "ad", prescale=0), "Zero"),
        (lambda: Seed("Frac", "ad", prescale=1.5), "Frac"),
        (lambda: Seed("NaN", "ad", threshold=float("nan")), "NaN"),
        (lambda: Seed("Rate", "ad", target_rate_hz=-3.0), "Rate"),
        (lambda: Menu((Seed("Fast", "ad", target_rate_hz=50e6),)), "Fast"),
        (lambda: Menu((Seed("Pre", "ad", target_rate_hz=1e5, prescale=400),)), "Pre"),
        (lambda: Menu((Seed("Twice", ""), Seed("Twice", ""))), "Twice"),
        (lambda: Menu(()), "at least one"),
        (lambda: Menu(tuple(Seed(f"s{i}", "") for i in range(33))), "at most 32"),
        (lambda: Menu((Seed("a", ""),), input_rate_hz=0), "input_rate_hz"),
    ],
)
def test_bad_menus_name_the_seed(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_unknown_model_names_the_seed():
    menu = Menu((Seed("Good", "ad", threshold=1.0), Seed("Typo", "adx", threshold=1.0)))
    scores = {"ad": np.zeros(3)}
    with pytest.raises(ConfigError, match=r"Typo.*adx"):
        menu.decide(scores, np.arange(3))
    with pytest.raises(ConfigError, match="Typo"):
        menu.check_models(["ad", "classifier"])
    with pytest.raises(ConfigError, match="Typo"):
        Menu((Seed("Typo", "adx", target_rate_hz=10.0),)).calibrate(scores)
    with pytest.raises(ConfigError, match="Good"):
        menu.decide({"ad": np.zeros(2), "adx": np.zeros(3)}, np.arange(3))


def test_json_round_trip_is_strict_json(zero_bias):
    for menu in (default_menu(), default_menu().calibrate(zero_bias[0])):
        text = json.dumps(menu.to_json(), allow_nan=False)
        assert Menu.from_json(text) == menu
        assert Menu.from_json(json.loads(text)) == menu


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ("{not json", "not valid JSON"),
        ({"seeds": "x"}, "seeds"),
        ({"seeds": [], "extra": 1}, "extra"),
        ({"seeds": [{"name": "S1", "model": "ad", "thresh": 1}]}, "S1"),
        ({"seeds": [{"name": "S2", "model": "ad", "threshold": "high"}]}, "S2"),
        ({"seeds": [{"name": "S3", "model": "ad", "prescale": -2}]}, "S3"),
    ],
)
def test_bad_menu_json(doc, match):
    with pytest.raises(ConfigError, match=match):
        Menu.from_json(doc)


def test_default_menu():
    menu = default_menu()
    assert menu.names == (*AD_SEED_RATES_HZ, "Classifier", "ZeroBias")
    rates = [s.target_rate_hz for s in menu.seeds[:5]]
    assert rates == sorted(rates, reverse=True) and rates[0] == 10_000 and rates[-1] == 400
    zb = menu.seeds[-1]
    assert zb.zero_bias and zb.prescale == 1000
    assert menu.models == ("ad", "classifier")
    assert default_menu(classifier_model=None).models == ("ad",)
