"""The differentiable calorimeter model against the stochastic reference simulator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from l1forge.sim import calo
from l1forge.sim import calo_torch as ct


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_one_hot_medium_equals_the_simulator_medium():
    for absorber in ("Pb", "W", "Fe"):
        g = calo.Geometry(absorber=absorber, absorber_mm=2.5, active_mm=3.5)
        ro = ct.FixedReadout(n_cells=g.n_cells, n_segments=g.n_segments)
        med = ct.effective_medium(ct.theta_from_geometry(g), ro)
        ref = g.medium
        for key in ("x0_mm", "rm_mm", "ec_gev", "z", "fs", "ehat", "f_samp", "sampling_term"):
            np.testing.assert_allclose(float(med[key]), getattr(ref, key), rtol=1e-12)


def test_expected_cells_match_simulator_mean_off_centre():
    g = calo.Geometry(n_layers=16, n_cells=5, n_segments=2, cell_mm=25.0, absorber="W")
    ro = ct.FixedReadout(n_cells=5, n_segments=2)
    theta = ct.theta_from_geometry(g)
    n_ev, e_gev, x0, y0 = 1500, 20.0, 7.0, -4.0
    z = torch.zeros(1, dtype=torch.float64)
    mean = ct.expected_cells(theta, ro, torch.tensor([e_gev], dtype=torch.float64), z + x0, z + y0)
    opt = calo.SimOptions(sampling_fluctuations=False)
    dep = calo.deposit_showers(
        g, np.full(n_ev, e_gev), np.full(n_ev, x0), np.full(n_ev, y0), np.arange(n_ev), n_ev,
        np.random.default_rng(3), opt,
    )  # fmt: skip
    se = dep.std(0, ddof=1) / np.sqrt(n_ev)
    # 4 standard errors per cell plus 1% of the cell for the 5-node shape quadrature
    diff = np.abs(dep.mean(0) - mean[0].numpy())
    assert np.all(diff < 4 * se + 0.01 * dep.mean(0) + 1e-4), diff.max()


def test_gradients_match_finite_differences_of_the_simulator():
    g = calo.Geometry(n_layers=20, n_cells=3, n_segments=2, cell_mm=20.0)
    rel = ct.gradient_check(g, e_gev=10.0, n_events=1500, spots=400, seed=0)
    # measured here: 0.3-4%; the finite differences carry ~1-2% Monte Carlo noise (common
    # random numbers, 1500 showers) plus the h^2 curvature error: allow 10%
    assert max(rel.values()) < 0.10, rel


def test_gradient_reaches_every_geometry_parameter():
    g = calo.Geometry(n_layers=12, n_cells=3, n_segments=2, cell_mm=20.0)
    ro = ct.FixedReadout(n_cells=3, n_segments=2, noise_gev=0.05)
    theta = ct.theta_from_geometry(g)
    theta["material_weights"] = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    for v in theta.values():
        v.requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    e = torch.tensor([10.0, 30.0, 5.0, 8.0], dtype=torch.float64)
    zeros = torch.zeros(4, dtype=torch.float64)
    cells = ct.event_cells(theta, ro, e, zeros, zeros, torch.tensor([0, 1, 2, 2]), 3, gen)
    # a resolution-like loss: squared error of the summed energy
    loss = ((cells.sum((1, 2, 3)) - torch.tensor([10.0, 30.0, 13.0])) ** 2).mean()
    loss.backward()
    for k, v in theta.items():
        assert v.grad is not None and torch.all(torch.isfinite(v.grad)), k
        assert float(v.grad.abs().sum()) > 0, k
