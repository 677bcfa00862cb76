"""Level-1 trigger objects: the (19, 3) event layout, hardware units and the detector response.

An event is 19 rows of (pT, eta, phi): MET, the 4 leading e/gamma, 4 muons and 10 jets, each
group sorted by pT and zero-padded. The response below stands in for the Level-1 calorimeter
and muon trigger chains; its numbers are documented defaults, all configurable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from l1forge.errors import ConfigError

N_OBJECTS = 19
N_FEATURES = 3
MET = slice(0, 1)
EGAMMA = slice(1, 5)
MUON = slice(5, 9)
JET = slice(9, 19)
OBJECT_TYPES = ("met", "egamma", "muon", "jet")
OBJECT_SLICES = {"met": MET, "egamma": EGAMMA, "muon": MUON, "jet": JET}
N_INPUTS = N_OBJECTS * N_FEATURES  # 57 network inputs
# The LHC's bunch-crossing rate (25 ns spacing): the Level-1 trigger's input rate.
LHC_INPUT_RATE_HZ = 40e6

# Hardware units, one per column for every object type so a network's inputs share units.
# They follow the CMS Level-1 global trigger conventions for calorimeter objects
# (CMS-TDR-021 / the Phase-1 uGT object formats): pT in 0.5 GeV steps, eta in half a trigger
# tower (0.087 / 2), phi in 144 steps of 2*pi (2.5 degrees).
PT_LSB_GEV = 0.5
ETA_LSB = 0.087 / 2
PHI_LSB = 2 * math.pi / 144
PT_BITS = 12  # unsigned: 0 .. 2047.5 GeV, saturating
ETA_BITS = 8  # signed: -128 .. 127 steps, |eta| <= 5.5
PHI_BITS = 8  # signed: -72 .. 71 steps cover [-pi, pi)
PT_MAX_HW = (1 << PT_BITS) - 1
ETA_MIN_HW, ETA_MAX_HW = -(1 << (ETA_BITS - 1)), (1 << (ETA_BITS - 1)) - 1
PHI_MIN_HW, PHI_MAX_HW = -72, 71
TOWERS_PHI = 72  # Level-1 calorimeter trigger towers around the ring (5 degrees each)


def to_hardware(objects_phys: np.ndarray) -> np.ndarray:
    """Physical (pT GeV, eta, phi rad) -> int32 hardware units, saturating; rows under one pT
    step (0.5 GeV) are empty: all 0."""
    x = np.asarray(objects_phys, dtype=np.float64)
    if x.shape[-1] != N_FEATURES:
        raise ValueError(f"objects need {N_FEATURES} features (pT, eta, phi), got {x.shape}")
    pt = np.clip(np.floor(x[..., 0] / PT_LSB_GEV), 0, PT_MAX_HW)
    eta = np.clip(np.rint(x[..., 1] / ETA_LSB), ETA_MIN_HW, ETA_MAX_HW)
    phi_wrapped = np.mod(x[..., 2] + math.pi, 2 * math.pi) - math.pi
    phi = np.clip(np.floor(phi_wrapped / PHI_LSB), PHI_MIN_HW, PHI_MAX_HW)
    out = np.stack([pt, eta, phi], axis=-1)
    out[pt == 0] = 0  # below one pT step the object is empty in hardware (to_physical agrees)
    return out.astype(np.int32)


def to_physical(objects_hw: np.ndarray) -> np.ndarray:
    """Hardware units -> physical values at the centre of each hardware bin (float32)."""
    h = np.asarray(objects_hw, dtype=np.float64)
    pt = h[..., 0] * PT_LSB_GEV
    eta = h[..., 1] * ETA_LSB
    phi = (h[..., 2] + 0.5) * PHI_LSB
    out = np.stack([pt, eta, phi], axis=-1)
    out[h[..., 0] <= 0] = 0
    return out.astype(np.float32)


@dataclass(frozen=True)
class DetectorResponse:
    """Acceptance, thresholds, resolutions and isolation of the Level-1 objects.

    Energy resolutions are sigma/E = stochastic/sqrt(E [GeV]) (+) constant; muon pT resolution
    is relative. Defaults are typical of Run-3 CMS Level-1 objects (coarse calorimeter trigger
    towers, muon track finders); they are stated, not tuned.
    """

    egamma_eta_max: float = 2.5
    egamma_pt_min: float = 3.0
    egamma_stochastic: float = 0.20
    egamma_constant: float = 0.02
    egamma_iso_cone: float = 0.3
    egamma_iso_max: float = 0.25  # relative isolation: sum pT in the cone / candidate pT
    muon_eta_max: float = 2.4
    muon_pt_min: float = 3.0
    muon_rel_resolution: float = 0.10
    muon_efficiency: float = 0.95
    jet_eta_max: float = 4.7
    jet_pt_min: float = 15.0
    jet_window_towers: int = 9  # sliding window of 9 x 9 trigger towers (CMS Phase-1 L1 jets)
    jet_seed_gev: float = 4.0  # the window's central tower must hold this much and be its maximum
    tower_eta: float = 0.087  # trigger-tower size in eta; phi has TOWERS_PHI towers
    jet_stochastic: float = 1.0
    jet_constant: float = 0.10
    jet_pileup_subtraction: bool = True  # subtract rho * pi R^2, rho = mean pT density
    calo_eta_max: float = 5.0
    particle_pt_min: float = 0.3  # calorimeter / tracking threshold on each particle
    met_resolution_sqrt_sumet: float = 0.6  # sigma(MET_x,y) = k * sqrt(sum ET [GeV])

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if isinstance(value, bool):
                continue
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"detector_response.{name}: must be a finite number >= 0")
        if not 0 < self.muon_efficiency <= 1:
            raise ConfigError("detector_response.muon_efficiency: must be in (0, 1]")
        if not isinstance(self.jet_window_towers, int) or self.jet_window_towers % 2 != 1:
            raise ConfigError("detector_response.jet_window_towers: must be an odd integer")
        if self.jet_window_towers > TOWERS_PHI:
            raise ConfigError(f"detector_response.jet_window_towers: at most {TOWERS_PHI}")
        if self.tower_eta <= 0:
            raise ConfigError("detector_response.tower_eta: must be > 0")


def kinematics(px: np.ndarray, py: np.ndarray, pz: np.ndarray):
    """(pT, eta, phi) of massless-safe momenta; eta is clipped at +-10 for beam-like particles."""
    pt = np.hypot(px, py)
    p = np.sqrt(pt * pt + pz * pz)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.where(
            pt > 0, np.arcsinh(np.divide(pz, pt, where=pt > 0, out=np.zeros_like(pt))), 0
        )
    eta = np.where(p > 0, np.clip(eta, -10, 10), 0.0)
    return pt, eta, np.arctan2(py, px)


def delta_r(eta1, phi1, eta2, phi2) -> np.ndarray:
    dphi = np.mod(np.asarray(phi1) - np.asarray(phi2) + np.pi, 2 * np.pi) - np.pi
    return np.hypot(np.asarray(eta1) - np.asarray(eta2), dphi)


def _smear_energy(pt, eta, stochastic, constant, rng):
    """Smear pT by the calorimeter resolution evaluated at the energy E = pT cosh(eta)."""
    e = pt * np.cosh(eta)
    sigma_rel = np.hypot(stochastic / np.sqrt(np.maximum(e, 1e-3)), constant)
    return np.maximum(pt * (1 + sigma_rel * rng.standard_normal(len(pt))), 0.0)


def _leading_per_event(event: np.ndarray, rows: np.ndarray, n_events: int, n: int) -> np.ndarray:
    """(n_events, n, 3): each event's n highest-pT rows of (pt, eta, phi), zero-padded."""
    out = np.zeros((n_events, n, 3), dtype=np.float32)
    if len(rows):
        order = np.lexsort((-rows[:, 0], event))
        ev = event[order]
        first = np.searchsorted(ev, ev, side="left")
        rank = np.arange(len(ev)) - first
        keep = rank < n
        out[ev[keep], rank[keep]] = rows[order[keep]]
    return out


def _tower_grid(response: DetectorResponse) -> tuple[int, float]:
    """(towers in eta, tower area) of the trigger-tower grid over |eta| < calo_eta_max."""
    n_eta = math.ceil(2 * response.calo_eta_max / response.tower_eta)
    return n_eta, response.tower_eta * 2 * math.pi / TOWERS_PHI


def _tower_index(eta: np.ndarray, phi: np.ndarray, response: DetectorResponse):
    n_eta, _ = _tower_grid(response)
    ieta = ((eta + response.calo_eta_max) / response.tower_eta).astype(np.int64)
    iphi = ((phi + math.pi) / (2 * math.pi) * TOWERS_PHI).astype(np.int64) % TOWERS_PHI
    return np.clip(ieta, 0, n_eta - 1), iphi


# no towers beyond the calorimeter's eta; phi is a ring
_WINDOW_MODES = ("constant", "constant", "wrap")


def _window_sums(towers: np.ndarray, size: int) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    return uniform_filter(towers, size=(1, size, size), mode=_WINDOW_MODES) * (size * size)


def calo_towers(
    event: np.ndarray,
    pt: np.ndarray,
    eta: np.ndarray,
    phi: np.ndarray,
    n_events: int,
    response: DetectorResponse,
) -> np.ndarray:
    """(n_events, n_eta, 72) trigger-tower pT sums of calorimeter deposits, many events at once."""
    n_eta, _ = _tower_grid(response)
    ieta, iphi = _tower_index(eta, phi, response)
    flat = (event * n_eta + ieta) * TOWERS_PHI + iphi
    towers = np.bincount(flat, weights=pt, minlength=n_events * n_eta * TOWERS_PHI)
    return towers.reshape(n_events, n_eta, TOWERS_PHI)


def tower_jets(towers: np.ndarray, response: DetectorResponse) -> tuple[np.ndarray, np.ndarray]:
    """Level-1 sliding-window jets of trigger towers (``calo_towers``).

    A jet is a ``jet_window_towers`` square window whose central tower holds at least
    ``jet_seed_gev`` and is the window's maximum (as the CMS Phase-1 Level-1 jet finder).
    Returns the jets' event indices and rows of (pt, eta, phi): the window's raw pT sum at the
    seed tower's centre.
    """
    from scipy.ndimage import maximum_filter

    r = response
    w = r.jet_window_towers
    peak = maximum_filter(towers, size=(1, w, w), mode=_WINDOW_MODES)
    e_idx, i_eta, i_phi = np.nonzero((towers >= r.jet_seed_gev) & (towers == peak))
    sums = _window_sums(towers, w)
    rows = np.column_stack(
        [
            sums[e_idx, i_eta, i_phi],
            (i_eta + 0.5) * r.tower_eta - r.calo_eta_max,
            (i_phi + 0.5) * (2 * math.pi / TOWERS_PHI) - math.pi,
        ]
    )
    return e_idx, rows


def reduce_events(
    event: np.ndarray,
    particles: np.ndarray,
    n_events: int,
    response: DetectorResponse,
    rng: np.random.Generator,
) -> np.ndarray:
    """Final-state particles (id, px, py, pz) of many events, ``event`` their event index
    (sorted) -> the (n_events, 19, 3) Level-1 object arrays in physical units."""
    pid = np.abs(particles[:, 0]).astype(np.int64)
    px, py = particles[:, 1], particles[:, 2]
    pt, eta, phi = kinematics(px, py, particles[:, 3])
    r = response
    out = np.zeros((n_events, N_OBJECTS, N_FEATURES), dtype=np.float32)

    invisible = (pid == 12) | (pid == 14) | (pid == 16)
    calo = ~invisible & (pid != 13) & (np.abs(eta) < r.calo_eta_max) & (pt > r.particle_pt_min)
    sum_et = np.bincount(event[calo], weights=pt[calo], minlength=n_events)
    # rho: mean calorimeter pT per unit eta-phi area, the pile-up density that jets and
    # isolation sums subtract (CMS Level-1 uses a local, tower-based estimate instead)
    rho = sum_et / (2 * r.calo_eta_max * 2 * math.pi)

    # muons: acceptance, efficiency, relative pT smearing, threshold
    mu = np.flatnonzero((pid == 13) & (np.abs(eta) < r.muon_eta_max))
    mu = mu[rng.random(len(mu)) < r.muon_efficiency]
    mu_pt = pt[mu] * np.maximum(1 + r.muon_rel_resolution * rng.standard_normal(len(mu)), 0)
    keep = mu_pt > r.muon_pt_min
    mu = mu[keep]
    out[:, MUON] = _leading_per_event(
        event[mu], np.column_stack([mu_pt[keep], eta[mu], phi[mu]]), n_events, 4
    )

    towers = calo_towers(event[calo], pt[calo], eta[calo], phi[calo], n_events, r)
    _, tower_area = _tower_grid(r)

    # e/gamma: electrons and photons in the tracker acceptance, isolated in trigger towers:
    # the pT of the square of towers around the candidate's own (half-width about the cone,
    # as Level-1 calorimeter isolation) minus the candidate, pile-up corrected
    cand = np.flatnonzero(((pid == 11) | (pid == 22)) & calo & (np.abs(eta) < r.egamma_eta_max))
    cand = cand[pt[cand] > r.egamma_pt_min * 0.5]
    if len(cand):
        size = 2 * round(r.egamma_iso_cone / r.tower_eta) + 1
        ieta, iphi = _tower_index(eta[cand], phi[cand], r)
        iso = _window_sums(towers, size)[event[cand], ieta, iphi] - pt[cand]
        iso -= rho[event[cand]] * size * size * tower_area
        sel = cand[iso < r.egamma_iso_max * pt[cand]]
        eg_pt = _smear_energy(pt[sel], eta[sel], r.egamma_stochastic, r.egamma_constant, rng)
        ok = eg_pt > r.egamma_pt_min
        sel = sel[ok]
        out[:, EGAMMA] = _leading_per_event(
            event[sel], np.column_stack([eg_pt[ok], eta[sel], phi[sel]]), n_events, 4
        )

    # jets: Level-1 tower windows of calorimeter deposits, pile-up subtracted, smeared, cut
    j_ev, jets = tower_jets(towers, r)
    if len(jets):
        jsel = np.abs(jets[:, 1]) < r.jet_eta_max
        j_ev, jets = j_ev[jsel], jets[jsel]
        j_pt = jets[:, 0]
        if r.jet_pileup_subtraction:
            area = r.jet_window_towers**2 * tower_area
            j_pt = np.maximum(j_pt - rho[j_ev] * area, 0.0)
        j_pt = _smear_energy(j_pt, jets[:, 1], r.jet_stochastic, r.jet_constant, rng)
        ok = j_pt > r.jet_pt_min
        out[:, JET] = _leading_per_event(
            j_ev[ok], np.column_stack([j_pt[ok], jets[ok, 1], jets[ok, 2]]), n_events, 10
        )

    # MET: calorimeter-only missing transverse momentum with a sqrt(sum ET) resolution
    sigma = r.met_resolution_sqrt_sumet * np.sqrt(sum_et)
    mx = -np.bincount(event[calo], weights=px[calo], minlength=n_events)
    my = -np.bincount(event[calo], weights=py[calo], minlength=n_events)
    mx += sigma * rng.standard_normal(n_events)
    my += sigma * rng.standard_normal(n_events)
    out[:, 0, 0] = np.hypot(mx, my)
    out[:, 0, 2] = np.arctan2(my, mx)
    return out
