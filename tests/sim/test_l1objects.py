"""The Level-1 trigger-tower jet finder: sliding 9 x 9 windows, seeds, phi ring, batching."""

import math

import numpy as np
from numpy.testing import assert_allclose, assert_array_equal

from l1forge.sim.l1objects import TOWERS_PHI, DetectorResponse, calo_towers, tower_jets

R = DetectorResponse()
TOWER_PHI = 2 * math.pi / TOWERS_PHI


def jets_of(event, pt, eta, phi, n_events):
    towers = calo_towers(
        np.asarray(event),
        np.asarray(pt, float),
        np.asarray(eta, float),
        np.asarray(phi, float),
        n_events,
        R,
    )
    return tower_jets(towers, R)


def centre(eta, phi):
    """The centre of the tower holding (eta, phi)."""
    i = math.floor((eta + R.calo_eta_max) / R.tower_eta)
    j = math.floor((phi + math.pi) / TOWER_PHI)
    return (i + 0.5) * R.tower_eta - R.calo_eta_max, (j + 0.5) * TOWER_PHI - math.pi


def test_one_deposit_is_one_jet_at_its_tower_centre():
    ev, rows = jets_of([0], [50.0], [0.31], [1.0], 1)
    assert_array_equal(ev, [0])
    assert_allclose(rows, [[50.0, *centre(0.31, 1.0)]], atol=1e-9)


def test_deposits_inside_one_window_merge_and_far_ones_do_not():
    # 3 towers apart in eta (inside 9 x 9): one jet holding both; 10 towers apart: two jets
    near = jets_of([0, 0], [40.0, 10.0], [0.0, 3 * R.tower_eta], [0.5, 0.5], 1)[1]
    assert_allclose(near[:, 0], [50.0])
    far = jets_of([0, 0], [40.0, 10.0], [0.0, 10 * R.tower_eta], [0.5, 0.5], 1)[1]
    assert_allclose(sorted(far[:, 0]), [10.0, 40.0])


def test_seed_threshold_and_phi_wraps_around():
    # a tower below the seed makes no jet even though its window holds more
    _, rows = jets_of([0, 0, 0], [3.9, 3.0, 3.0], [0.0, 0.1, -0.1], [0.0, 0.0, 0.0], 1)
    assert len(rows) == 0
    # towers at phi = +pi and -pi are neighbours: one window holds both
    rows = jets_of([0, 0], [30.0, 20.0], [1.0, 1.0], [math.pi - 0.01, -math.pi + 0.01], 1)[1]
    assert_allclose(rows[:, 0], [50.0])


def test_events_of_a_batch_stay_apart():
    ev, rows = jets_of([0, 2, 2], [20.0, 30.0, 7.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0], 3)
    assert_array_equal(ev, [0, 2, 2])
    assert_allclose(rows[:, 0], [20.0, 30.0, 7.0])
