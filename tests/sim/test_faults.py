"""Fault injection on Level-1 object events: what each fault does, units, drifts, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from l1forge.errors import ConfigError, DataFormatError
from l1forge.sim import faults
from l1forge.sim.l1objects import EGAMMA, JET, MET, MUON, to_hardware, to_physical


@pytest.fixture(scope="module")
def events(sample):
    """Real minimum-bias events (pile-up 20): the sim tests' session sample (test_physics's)."""
    return sample("minbias", 300, pileup=20.0)


def _sorted_and_padded(x: np.ndarray) -> bool:
    for sl in (EGAMMA, MUON, JET):
        pt = x[:, sl, 0]
        if np.any(np.diff(pt, axis=1) > 0):
            return False
        empty = pt <= 0
        if np.any(x[:, sl][empty] != 0):
            return False
    return True


def test_dead_region_removes_exactly_the_objects_inside(events):
    x = events.objects_phys
    fault = faults.DeadRegion("jet", eta_min=-1.0, eta_max=1.5, phi_min=-0.5, phi_max=2.0)
    y = fault.apply(x)
    jets_in, jets_out = x[:, JET], y[:, JET]
    inside = (
        (jets_in[..., 0] > 0)
        & (jets_in[..., 1] >= -1.0)
        & (jets_in[..., 1] < 1.5)
        & (jets_in[..., 2] >= -0.5)
        & (jets_in[..., 2] < 2.0)
    )
    assert inside.sum() > 20  # the sample has jets there, so the test means something
    assert (jets_out[..., 0] > 0).sum() == (jets_in[..., 0] > 0).sum() - inside.sum()
    present = jets_out[..., 0] > 0
    eta, phi = jets_out[..., 1][present], jets_out[..., 2][present]
    assert not np.any((eta >= -1.0) & (eta < 1.5) & (phi >= -0.5) & (phi < 2.0))
    # survivors keep their values, in pT order
    for i in np.flatnonzero(inside.any(axis=1))[:20]:
        kept = jets_in[i][(jets_in[i, :, 0] > 0) & ~inside[i]]
        np.testing.assert_array_equal(jets_out[i, : len(kept)], kept)
    np.testing.assert_array_equal(y[:, MET], x[:, MET])
    np.testing.assert_array_equal(y[:, EGAMMA], x[:, EGAMMA])
    assert _sorted_and_padded(y)
    np.testing.assert_array_equal(events.objects_phys, x)  # the input is not modified


def test_hot_channel_adds_one_object_in_a_fraction_of_events(events):
    x = np.repeat(events.objects_phys, 20, axis=0)  # 6000 events
    fault = faults.HotChannel("egamma", eta=0.5, phi=-1.0, pt_gev=25.0, fraction=0.1)
    y = fault.apply(x, np.random.default_rng(3))
    hot = np.any(
        (y[:, EGAMMA, 0] == 25.0)
        & (y[:, EGAMMA, 1] == 0.5)
        & (y[:, EGAMMA, 2] == np.float32(-1.0)),
        axis=1,
    )
    # binomial: 600 +- 23 expected; 5 sigma
    assert abs(hot.sum() - 600) < 5 * math.sqrt(6000 * 0.1 * 0.9)
    n_before = (x[:, EGAMMA, 0] > 0).sum(axis=1)
    n_after = (y[:, EGAMMA, 0] > 0).sum(axis=1)
    np.testing.assert_array_equal(n_after, np.minimum(n_before + hot, 4))
    np.testing.assert_array_equal(y[~hot], x[~hot])
    assert _sorted_and_padded(y)


def test_hot_channel_in_a_full_group_drops_the_softest():
    x = np.zeros((1, 19, 3), np.float32)
    x[0, JET, 0] = np.arange(100, 0, -10)  # ten jets 100 .. 10 GeV
    y = faults.HotChannel("jet", eta=1.0, phi=1.0, pt_gev=55.0, fraction=1.0).apply(
        x, np.random.default_rng(0)
    )
    np.testing.assert_array_equal(y[0, JET, 0], [100, 90, 80, 70, 60, 55, 50, 40, 30, 20])


def test_energy_scale_scales_calorimeter_objects_and_met(events):
    x = events.objects_phys
    y = faults.EnergyScale(0.05).apply(x)
    for sl in (MET, EGAMMA, JET):
        np.testing.assert_allclose(y[:, sl, 0], x[:, sl, 0] * np.float32(1.05), rtol=1e-6)
        np.testing.assert_array_equal(y[:, sl, 1:], x[:, sl, 1:])
    np.testing.assert_array_equal(y[:, MUON], x[:, MUON])
    lower = faults.EnergyScale(-0.3).apply(x)
    jets = lower[:, JET, 0]
    assert np.all((jets == 0) | (jets > 15.0))  # jets below the 15 GeV threshold are lost
    assert (jets > 0).sum() < (x[:, JET, 0] > 0).sum()
    assert _sorted_and_padded(lower)


def test_inject_keeps_units_consistent(events):
    fault = faults.EnergyScale(0.05)
    out = faults.inject(fault, events)
    np.testing.assert_array_equal(out.objects_hw, to_hardware(out.objects_phys))
    np.testing.assert_array_equal(out.event, events.event)
    # hardware arrays go through to_physical and back, exactly
    np.testing.assert_array_equal(
        faults.inject(faults.EnergyScale(0.0), events.objects_hw), events.objects_hw
    )
    hw = faults.inject(fault, events.objects_hw)
    assert hw.dtype == events.objects_hw.dtype
    np.testing.assert_array_equal(hw, to_hardware(fault.apply(to_physical(events.objects_hw))))
    with pytest.raises(DataFormatError, match=r"\(N, 19, 3\)"):
        faults.inject(fault, np.zeros((4, 18, 3)))


def test_drifts():
    d = faults.ScaleDrift(start_lumisection=10, rate_per_lumisection=0.01, max_shift=0.05)
    assert [d.shift_at(ls) for ls in (0, 10, 12, 100)] == [0.0, 0.0, 0.02, 0.05]
    assert d.fault_at(12).shift == 0.02
    p = faults.PileupDrift(start_lumisection=5, start_mean=20, rate_per_lumisection=2, max_mean=40)
    assert [p.mean_at(ls) for ls in (0, 5, 10, 50)] == [20, 20, 30, 40]
    pools = {20.0: np.zeros((50, 2)), 40.0: np.ones((50, 2))}
    mixed = p.sample(pools, 10, 20000, np.random.default_rng(1))
    # mean 30: half the events from each pool, within 5 sigma of a binomial
    assert abs(mixed[:, 0].mean() - 0.5) < 5 * math.sqrt(0.25 / 20000)
    assert np.all(faults.mix_pileup(pools, 40.0, 100, np.random.default_rng(2)) == 1)
    with pytest.raises(ConfigError, match="outside"):
        faults.mix_pileup(pools, 60.0, 10, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: faults.DeadRegion("met"), "object_type"),
        (lambda: faults.DeadRegion(eta_min=2.0, eta_max=1.0), "eta_min < eta_max"),
        (lambda: faults.DeadRegion(phi_min=-4.0), "phi_min"),
        (lambda: faults.HotChannel(fraction=0.0), "fraction"),
        (lambda: faults.HotChannel(fraction=1.5), "fraction"),
        (lambda: faults.HotChannel(pt_gev=float("nan")), "pt_gev"),
        (lambda: faults.EnergyScale(shift=-1.0), "shift"),
        (lambda: faults.EnergyScale(object_types=("tau",)), "object_types"),
        (lambda: faults.HigherPileup(pileup_mean=-1.0), "pileup_mean"),
        (lambda: faults.ScaleDrift(rate_per_lumisection=0.01, max_shift=-0.1), "sign"),
        (lambda: faults.PileupDrift(start_mean=30, max_mean=20), "max_mean"),
    ],
)
def test_bad_parameters_name_the_field(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


@pytest.mark.slow
def test_higher_pileup_regenerates_with_pythia():
    more = faults.HigherPileup(pileup_mean=60.0).generate(60, seed=3)
    assert len(more) == 60 and more.provenance["pileup"]["mean"] == 60.0
    np.testing.assert_array_equal(more.objects_hw, to_hardware(more.objects_phys))
