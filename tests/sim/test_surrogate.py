"""The learned calorimeter surrogate: data cache, training, files, sampling, metrics, CLI.

A tiny surrogate (8 θ points × 60 showers, a few epochs) pins the plumbing; its physics is
not expected to be good. The fidelity figures come from `benchmarks/calo_surrogate.py` on the
default model.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal

from l1forge.errors import ConfigError
from l1forge.sim import calo, calo_torch
from l1forge.sim import surrogate as sur
from l1forge.sim import surrogate_metrics as metrics
from l1forge.sim.surrogate_data import (
    ThetaRange,
    cached_showers,
    heldout_points,
    simulate_like,
    simulate_points,
    training_points,
)

RANGE = ThetaRange(n_cells=3)  # as the tiny_surrogate fixture (tests/conftest.py)
ENERGY_EPOCHS, SHAPE_EPOCHS = 3, 2


@pytest.fixture
def tiny(tiny_surrogate):
    return tiny_surrogate


def test_training_points_cover_the_box_and_every_absorber():
    pts = training_points(RANGE, 32, seed=0)
    for k, (lo, hi) in RANGE.bounds.items():
        v = np.array([p[k] for p in pts])
        assert lo <= v.min() and v.max() <= hi
        assert v.max() - v.min() > 0.7 * (hi - lo)
    assert {p["absorber"] for p in pts} == set(RANGE.absorbers)
    assert all(float(p["n_layers"]).is_integer() for p in pts)
    names = {p["name"] for p in heldout_points(RANGE)}
    assert len(names) == 6 and sum(n.startswith("edge") for n in names) == 3


def test_cache_is_reused_only_for_the_same_request(tmp_path):
    path = tmp_path / "s.npz"
    pts = training_points(RANGE, 2, seed=0)
    a = cached_showers(path, RANGE, pts, 20, seed=1)
    os.utime(path, (1, 1))
    b = cached_showers(path, RANGE, pts, 20, seed=1)
    assert os.stat(path).st_mtime == 1  # read, not written again
    assert_array_equal(a.deposited_gev, b.deposited_gev)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["events"] == 40 and meta["request"]["seed"] == 1
    c = cached_showers(path, RANGE, pts, 20, seed=2)
    assert os.stat(path).st_mtime != 1
    assert not np.array_equal(a.deposited_gev, c.deposited_gev)


def test_simulate_like_repeats_the_showers_with_new_randomness():
    sh = simulate_points(RANGE, training_points(RANGE, 2, seed=0), 30, seed=1)
    again = simulate_like(RANGE, sh, seed=9)
    assert_array_equal(again.e_gev, sh.e_gev)
    assert_array_equal(again.is_pi0, sh.is_pi0)
    assert not np.array_equal(again.deposited_gev, sh.deposited_gev)


def test_saved_surrogate_samples_like_the_trained_one(tiny):
    model, d, _ = tiny
    loaded = sur.load(d)
    theta = calo_torch.theta_from_geometry(RANGE.geometry(training_points(RANGE, 1, 0)[0]))
    e = torch.linspace(5, 50, 64, dtype=torch.float64)
    pi0 = torch.arange(64) % 2 == 1
    with torch.no_grad():
        a = model.sample(theta, e, pi0, torch.Generator().manual_seed(4)).numpy()
        b = loaded.sample(theta, e, pi0, torch.Generator().manual_seed(4)).numpy()
    assert_array_equal(a, b)
    assert a.shape == (64, RANGE.n_segments, RANGE.n_cells, RANGE.n_cells)
    assert np.isfinite(a).all() and (a >= 0).all()
    meta = json.loads((d / "surrogate.json").read_text())
    assert len(meta["history"]["energy"]) == ENERGY_EPOCHS
    assert len(meta["history"]["shape"]) == SHAPE_EPOCHS


def test_samples_stay_inside_the_training_range_of_energy(tiny):
    model, _, sh = tiny
    seg_frac = sh.deposited_gev.sum((2, 3)) / sh.e_gev[:, None]
    theta = calo_torch.theta_from_geometry(RANGE.geometry(sh.points[0]))
    e = torch.full((4000,), 20.0, dtype=torch.float64)
    with torch.no_grad():
        dep = model.sample(theta, e, torch.zeros(4000, dtype=torch.bool)).numpy()
    got = dep.sum((2, 3)) / 20.0
    assert (got <= seg_frac.max(0) * (1 + 1e-5) + 1e-9).all()


def test_samples_are_differentiable_in_every_theta(tiny):
    model, _, _ = tiny
    geom = calo.Geometry(n_layers=16, absorber_mm=3.0, active_mm=3.0, cell_mm=30.0, n_cells=3)
    theta = calo_torch.theta_from_geometry(geom)
    for k in calo_torch.GRADIENT_PARAMS:
        theta[k].requires_grad_(True)
    e = torch.full((256,), 20.0, dtype=torch.float64)
    dep = model.sample(
        theta, e, torch.zeros(256, dtype=torch.bool), torch.Generator().manual_seed(0)
    )
    (dep[:, 0].sum() + dep[:, :, 1, 1].sum()).backward()
    for k in calo_torch.GRADIENT_PARAMS:
        g = theta[k].grad
        assert g is not None and torch.isfinite(g) and g != 0, k


def test_load_refuses_what_is_not_a_surrogate(tmp_path, tiny):
    with pytest.raises(ConfigError, match="no trained surrogate"):
        sur.load(tmp_path)
    _, d, _ = tiny
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "weights.npz").write_bytes((d / "weights.npz").read_bytes())
    meta = json.loads((d / "surrogate.json").read_text())
    (bad / "surrogate.json").write_text(json.dumps({**meta, "format": "other-1"}))
    with pytest.raises(ConfigError, match="format"):
        sur.load(bad)


def test_training_refuses_too_few_showers():
    sh = simulate_points(RANGE, training_points(RANGE, 1, 0), 10, seed=0)
    with pytest.raises(ConfigError, match="at least 20"):
        sur.train(sh, sur.SurrogateSpec(range=RANGE), sur.TrainConfig())


def test_w1_measures_a_known_scale_of_the_energies():
    ev = calo.simulate(calo.Geometry(n_cells=3), np.linspace(5, 50, 500), seed=0)
    dep, e = ev.deposited_gev, ev.e_true_gev
    w1 = metrics.w1_table(dep, 1.1 * dep, e, 2)
    frac = dep.sum((1, 2, 3)) / e
    assert w1["e_frac"] == pytest.approx(1e3 * 0.1 * frac.mean() / frac.std(), rel=1e-9)
    # a common scale leaves centroids, widths and the largest cell's share unchanged
    for k in ("seg0_centroid_x", "seg1_width_y", "max_cell_frac"):
        assert w1[k] == pytest.approx(0.0, abs=1e-9)
    assert w1["cell_spectrum"] > 0


def test_classifier_tells_a_distorted_sample_and_not_a_resampled_one():
    g = calo.Geometry(n_cells=3)
    e = np.random.default_rng(0).uniform(5, 50, 3000)
    a = calo.simulate(g, e, seed=1).deposited_gev
    b = calo.simulate(g, e, seed=2).deposited_gev
    pi0 = np.zeros(3000, bool)
    same = metrics.classifier_auc(metrics.classifier_inputs(a, e, pi0, "high"),
                                  metrics.classifier_inputs(b, e, pi0, "high"))  # fmt: skip
    wider = b.copy()
    wider[:, 1] *= 1.3  # 30 % more energy in the back segment
    off = metrics.classifier_auc(metrics.classifier_inputs(a, e, pi0, "high"),
                                 metrics.classifier_inputs(wider, e, pi0, "high"))  # fmt: skip
    assert same < 0.56
    assert off > 0.75
    with pytest.raises(ValueError, match="level"):
        metrics.classifier_inputs(a, e, pi0, "medium")


def test_gradient_check_reports_every_parameter(tiny):
    model, _, _ = tiny
    g = calo.Geometry(n_layers=16, absorber_mm=3.0, active_mm=3.0, cell_mm=30.0, n_cells=3)
    out = sur.gradient_check(model, g, n_samples=500, n_events=200, spots=50)
    assert set(out["rel_error"]) == set(calo_torch.GRADIENT_PARAMS)
    for k in calo_torch.GRADIENT_PARAMS:
        assert np.isfinite(out["rel_error"][k])
        assert len(out["surrogate"][k]) == len(out["reference"][k]) == 3


def test_cli_trains_and_validates(tmp_path, capsys, monkeypatch):
    from l1forge.cli import main

    out = tmp_path / "m"
    assert main(["sim", "surrogate", "train", "--out", str(out), "--points", "4",
                 "--events-per-point", "30", "--epochs", "1", "--energy-epochs", "1",
                 "--threads", "1"]) == 0  # fmt: skip
    res = json.loads(capsys.readouterr().out)
    assert res["showers"] == 120
    assert (out / "data" / "train.json").is_file()
    assert main(["sim", "surrogate", "validate", str(out), "--events-per-point", "60"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["points"]) == 6
    report = json.loads((out / "report" / "validation.json").read_text())
    for p in report["points"]:
        assert 0 <= p["surrogate"]["classifier_auc_high_level"] <= 1
        assert "cell_spectrum" in p["surrogate"]["w1"] and "e_frac" in p["reference_floor"]["w1"]
        assert (out / "report" / f"{p['point']['name']}.png").is_file()
    assert main(["sim", "surrogate", "train", "--out", str(out), "--points", "1"]) != 0
    assert "--points must be >= 2" in capsys.readouterr().err


def test_worker_processes_simulate_the_same_showers():
    pts = training_points(RANGE, 3, seed=0)
    one = simulate_points(RANGE, pts, 16, seed=5)
    two = simulate_points(RANGE, pts, 16, seed=5, workers=2)
    assert_array_equal(one.deposited_gev, two.deposited_gev)
    assert_array_equal(one.theta_index, two.theta_index)
    assert_array_equal(one.e_gev, two.e_gev)


@pytest.mark.parametrize("n_segments", [2, 3])
def test_front_layers_count_as_the_reference_gangs_them(n_segments):
    for n in range(n_segments, 41):
        ganged = sum(1 for layer in range(n) if layer * n_segments // n == 0)
        t = torch.tensor(float(n), dtype=torch.float64, requires_grad=True)
        v = sur.front_layers(t, n_segments)
        assert float(v.detach()) == ganged, n
        (g,) = torch.autograd.grad(v, t)
        assert float(g) == pytest.approx(1 / n_segments)
