"""The stochastic GFlash calorimeter simulator against its own parameterization."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.errors import ConfigError
from l1forge.sim import calo
from l1forge.sim.calo import Geometry, SimOptions


def test_same_seed_same_output_other_seed_differs():
    g = Geometry(n_layers=10, n_cells=3, n_segments=2)
    e = np.array([5.0, 20.0, 7.5, 40.0])
    pi0 = np.array([False, True, False, True])
    a = calo.simulate(g, e, pi0, seed=42)
    b = calo.simulate(g, e, pi0, seed=42)
    c = calo.simulate(g, e, pi0, seed=43)
    assert_array_equal(a.adc, b.adc)
    assert_array_equal(a.deposited_gev, b.deposited_gev)
    assert not np.array_equal(a.deposited_gev, c.deposited_gev)
    assert a.adc.shape == (4, 2, 3, 3)
    assert a.adc.max() <= 2**g.readout_bits - 1 and a.adc.min() >= 0


@pytest.mark.parametrize(
    "geom",
    [
        Geometry(n_layers=30, absorber="Pb", absorber_mm=3.0, active_mm=3.0),
        Geometry(n_layers=30, absorber="Fe", absorber_mm=8.0, active_mm=4.0),
        Geometry(n_layers=30, absorber="Pb", absorber_mm=0.0, active="LAr", active_mm=20.0),
    ],
    ids=["Pb-scint", "Fe-scint", "homogeneous-LAr"],
)
def test_mean_longitudinal_profile_and_containment_match_parameterization(geom):
    # one segment per layer, cells wide enough (±40 R_M) that transverse leakage is < 0.5%
    g = Geometry(**{**geom.__dict__, "n_segments": geom.n_layers, "n_cells": 3, "cell_mm": 500.0})
    e_gev, n_ev = 20.0, 300
    ev = calo.simulate(g, np.full(n_ev, e_gev), seed=7, impact="center")
    frac = ev.deposited_gev.sum(axis=(2, 3)) / e_gev  # (events, layers)
    med = g.medium
    edges = np.arange(g.n_layers + 1) * g.pitch_mm / med.x0_mm
    ref = calo.mean_longitudinal_fractions(e_gev, med, edges)
    err = frac.std(axis=0, ddof=1) / np.sqrt(n_ev)
    # 4 standard errors per layer (30 layers: a 4-sigma excursion anywhere is < 0.2% likely),
    # plus 0.003 absolute for the transverse tail beyond the cells and the spot granularity
    assert np.all(np.abs(frac.mean(axis=0) - ref) < 4 * err + 0.003), (frac.mean(axis=0), ref)
    total = frac.sum(axis=1)
    assert abs(total.mean() - ref.sum()) < 4 * total.std(ddof=1) / np.sqrt(n_ev) + 0.005
    # the profile peaks where the Gamma law of the parameterization says
    assert abs(int(np.argmax(frac.mean(axis=0))) - int(np.argmax(ref))) <= 1


def test_resolution_fit_sampling_and_noise_terms():
    # deep (29 X0) and wide (±7 R_M) so leakage stays in the constant term
    g = Geometry(
        n_layers=80, n_cells=9, n_segments=2, noise_gev=0.05, readout_bits=16, full_scale_gev=256
    )
    energies = np.array([2.0, 5.0, 10.0, 20.0, 50.0])
    n_ev = 300
    rel, err = [], []
    for i, e in enumerate(energies):
        ev = calo.simulate(g, np.full(n_ev, e), seed=100 + i)
        s = ev.energy_gev.sum(axis=(1, 2, 3))
        rel.append(s.std(ddof=1) / e)
        err.append(rel[-1] / np.sqrt(2 * (n_ev - 1)))
    a, b, c = calo.fit_resolution(energies, np.array(rel), np.array(err))
    c_s = g.medium.sampling_term
    assert 0.09 < c_s < 0.12  # Fabjan: 2.7% sqrt(4 mm / f_samp 0.25) = 10.7%
    # each sigma is known to ~4% (300 events); the fitted a, b, c are correlated, which widens
    # this to ~10%: allow 20% on a. b is leakage plus shape fluctuations: a few per cent.
    assert abs(a - c_s) / c_s < 0.2, (a, b, c, c_s)
    assert b < 0.03
    # c: noise of 162 cells after the unsigned ADC clips negative values: sigma * 0.584 each
    c_expected = 0.05 * np.sqrt(g.n_channels) * np.sqrt(0.5 - 1 / (2 * np.pi))
    assert abs(c - c_expected) / c_expected < 0.3, (c, c_expected)


def test_pi0_photons_opening_angle_and_energy_sharing():
    rng = np.random.default_rng(0)
    e = np.full(20000, 10.0)
    e1, e2, dx, dy = calo.pi0_photons(e, 1500.0, rng)
    np.testing.assert_allclose(e1 + e2, e)
    sep = np.hypot(dx, dy)
    # the minimum opening angle is 2 m / E at symmetric decays
    psi_min = 2 * np.arcsin(calo.PI0_MASS_GEV / 10.0)
    assert sep.min() >= 1500.0 * np.tan(psi_min) * (1 - 1e-9)
    assert sep.min() < 1500.0 * np.tan(psi_min) * 1.05
    # flat energy sharing: E1/E uniform between (1-beta)/2 and (1+beta)/2
    x = e1 / e
    assert abs(x.mean() - 0.5) < 0.01 and abs(x.var() - 1 / 12) < 0.005


def test_pi0_deposits_two_showers():
    g = Geometry(n_layers=20, n_cells=7, cell_mm=10.0)
    n = 400
    ph = calo.simulate(g, np.full(n, 30.0), seed=1, impact="center")
    pi = calo.simulate(g, np.full(n, 30.0), np.ones(n, bool), seed=1, impact="center")
    # a π0's energy is spread wider: the central cell holds a smaller share on average
    share = lambda ev: ev.deposited_gev[:, :, 3, 3].sum(1) / ev.deposited_gev.sum((1, 2, 3))  # noqa: E731
    assert share(pi).mean() < share(ph).mean() - 0.05


@pytest.mark.parametrize(
    ("key", "value"),
    [("n_layers", 0), ("absorber", "Cu"), ("active", "unobtainium"), ("cell_mm", -1.0),
     ("readout_bits", 30), ("n_segments", 50), ("active_mm", 0.0)],
)  # fmt: skip
def test_geometry_range_checks_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key if key != "active" else "active"):
        Geometry(**{key: value})


def test_smooth_depths_reproduce_the_same_mean():
    g = Geometry(n_layers=20, n_segments=4, n_cells=3, cell_mm=300.0)
    e = np.full(400, 10.0)
    opt = SimOptions(smooth_depths=True, spots_per_shower=200)
    a = calo.simulate(g, e, seed=5, options=opt).deposited_gev.sum(axis=(2, 3))
    b = calo.simulate(g, e, seed=6).deposited_gev.sum(axis=(2, 3))
    se = np.hypot(a.std(0), b.std(0)) / np.sqrt(len(e))
    assert np.all(np.abs(a.mean(0) - b.mean(0)) < 4 * se + 0.02)
