"""Physics checks on generated events; each tolerance is stated with its reason."""

import numpy as np

from l1forge.sim.l1objects import EGAMMA, JET, MET, MUON


def pair_mass(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Invariant mass of massless (pT, eta, phi) objects."""
    return np.sqrt(
        2 * a[..., 0] * b[..., 0] * (np.cosh(a[..., 1] - b[..., 1]) - np.cos(a[..., 2] - b[..., 2]))
    )


def four_vectors(objs: np.ndarray) -> np.ndarray:
    pt, eta, phi = objs[..., 0], objs[..., 1], objs[..., 2]
    return np.stack([pt * np.cosh(eta), pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], -1)


def test_z_peak_in_dimuons(sample):
    ev = sample("zll", 900)
    mu = ev.objects_phys[:, MUON]
    two = mu[:, 1, 0] > 0
    m = pair_mass(mu[two, 0], mu[two, 1])
    window = m[(m > 70) & (m < 110)]
    assert len(window) > 150
    # 10% muon pT resolution gives the peak a ~6.5 GeV width; the median of >150 events is
    # known to ~0.7 GeV, so 2 GeV is about a 3-sigma band around the Z mass
    assert abs(np.median(window) - 91.19) < 2.0


def test_w_transverse_mass_has_its_jacobian_edge_near_80_gev(sample):
    ev = sample("wlnu", 900)
    o = ev.objects_phys
    lep = np.concatenate([o[:, EGAMMA][:, :1], o[:, MUON][:, :1]], axis=1)
    lead = lep[np.arange(len(o)), np.argmax(lep[:, :, 0], axis=1)]
    met = o[:, MET][:, 0]
    ok = lead[:, 0] > 20
    mt = np.sqrt(2 * lead[ok, 0] * met[ok, 0] * (1 - np.cos(lead[ok, 2] - met[ok, 2])))
    counts, edges = np.histogram(mt, bins=np.arange(30, 131, 5))
    # the Jacobian spectrum is a plateau below m_W that collapses at its edge; locate the edge
    # where the falling side crosses half the plateau (the 50-75 GeV mean). MET resolution
    # (~6 GeV without pile-up) and the W width move it up by several GeV, so 75-92 GeV
    plateau = counts[(edges[:-1] >= 50) & (edges[:-1] < 75)].mean()
    fall = np.flatnonzero((edges[:-1] >= 75) & (counts < plateau / 2))[0]
    c0, c1 = counts[fall - 1], counts[fall]
    edge = edges[fall] - 2.5 + 5 * (c0 - plateau / 2) / (c0 - c1)
    assert 75 <= edge <= 92, (edge, counts)
    # and the spectrum ends there: almost nothing beyond m_W + 20 GeV
    assert (mt > 100).mean() < 0.03


def test_a_to_four_leptons_mass_near_50_gev(sample):
    ev = sample("ato4l", 900)
    o = ev.objects_phys
    leptons = np.concatenate([o[:, EGAMMA], o[:, MUON]], axis=1)
    n = (leptons[:, :, 0] > 0).sum(axis=1)
    four = n >= 4
    assert four.sum() > 40
    lep = leptons[four]
    order = np.argsort(-lep[:, :, 0], axis=1)[:, :4]
    p = four_vectors(np.take_along_axis(lep, order[..., None], axis=1)).sum(axis=1)
    m4l = np.sqrt(np.maximum(p[:, 0] ** 2 - (p[:, 1:] ** 2).sum(axis=1), 0))
    # electron energy resolution and soft FSR photons widen the peak to a few GeV;
    # the median of >40 events is known to ~1 GeV
    assert abs(np.median(m4l) - 50.0) < 4.0


def test_multiplicities_follow_the_physics(sample):
    mb, tt = sample("minbias", 300, pileup=20.0), sample("ttbar", 200)
    jets = lambda ev: (ev.objects_phys[:, JET, 0] > 0).sum(axis=1).mean()  # noqa: E731
    assert jets(tt) > 3.0 > jets(mb)
    # zero-bias-like events rarely hold a muon above threshold; top pairs often do
    mu = lambda ev: (ev.objects_phys[:, MUON, 0] > 0).any(axis=1).mean()  # noqa: E731
    assert mu(mb) < 0.05 < 0.2 < mu(tt)
