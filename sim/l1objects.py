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


def to_hardware(objects_phys: np.ndarray) -> np.ndarray:
    """Physical (pT GeV, eta, phi rad) -> int32 hardware units, saturating; empty rows stay 0."""
    x = np.asarray(objects_phys, dtype=np.float64)
    if x.shape[-1] != N_FEATURES:
        raise ValueError(f"objects need {N_FEATURES} features (pT, eta, phi), got {x.shape}")
    pt = np.clip(np.floor(x[..., 0] / PT_LSB_GEV), 0, PT_MAX_HW)
    eta = np.clip(np.rint(x[..., 1] / ETA_LSB), ETA_MIN_HW, ETA_MAX_HW)
    phi_wrapped = np.mod(x[..., 2] + math.pi, 2 * math.pi) - math.pi
    phi = np.clip(np.floor(phi_wrapped / PHI_LSB), PHI_MIN_HW, PHI_MAX_HW)
    out = np.stack([pt, eta, phi], axis=-1)
    out[x[..., 0] <= 0] = 0
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
    jet_radius: float = 0.4
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
        if self.jet_radius <= 0:
            raise ConfigError("detector_response.jet_radius: must be > 0")


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


def _leading(rows: np.ndarray, n: int) -> np.ndarray:
    """The n highest-pT rows of (pt, eta, phi), zero-padded to n."""
    out = np.zeros((n, 3), dtype=np.float32)
    if len(rows):
        order = np.argsort(-rows[:, 0], kind="stable")[:n]
        out[: len(order)] = rows[order]
    return out


def reduce_event(
    particles: np.ndarray, jets: np.ndarray, response: DetectorResponse, rng: np.random.Generator
) -> np.ndarray:
    """One event's final-state particles (id, px, py, pz) and clustered jets (pt, eta, phi)
    -> the (19, 3) Level-1 object array in physical units."""
    pid = np.abs(particles[:, 0]).astype(np.int64)
    pt, eta, phi = kinematics(particles[:, 1], particles[:, 2], particles[:, 3])
    r = response
    event = np.zeros((N_OBJECTS, N_FEATURES), dtype=np.float32)

    invisible = (pid == 12) | (pid == 14) | (pid == 16)
    calo = ~invisible & (pid != 13) & (np.abs(eta) < r.calo_eta_max) & (pt > r.particle_pt_min)
    # rho: mean calorimeter pT per unit eta-phi area, the pile-up density that jets and
    # isolation sums subtract (CMS Level-1 uses a local, tower-based estimate instead)
    rho = float(pt[calo].sum()) / (2 * r.calo_eta_max * 2 * math.pi)

    # muons: acceptance, efficiency, relative pT smearing, threshold
    mu = (pid == 13) & (np.abs(eta) < r.muon_eta_max)
    mu &= rng.random(len(pid)) < r.muon_efficiency
    mu_pt = pt[mu] * np.maximum(1 + r.muon_rel_resolution * rng.standard_normal(mu.sum()), 0)
    keep = mu_pt > r.muon_pt_min
    event[MUON] = _leading(np.column_stack([mu_pt[keep], eta[mu][keep], phi[mu][keep]]), 4)

    # e/gamma: isolated electrons and photons in the tracker acceptance
    cand = np.flatnonzero(((pid == 11) | (pid == 22)) & calo & (np.abs(eta) < r.egamma_eta_max))
    cand = cand[pt[cand] > r.egamma_pt_min * 0.5]
    eg_rows = np.empty((0, 3), dtype=np.float32)
    if len(cand):
        vis = np.flatnonzero(calo | (pid == 13))
        dr = delta_r(eta[cand, None], phi[cand, None], eta[None, vis], phi[None, vis])
        iso = (pt[None, vis] * (dr < r.egamma_iso_cone)).sum(axis=1) - pt[cand]
        iso -= rho * math.pi * r.egamma_iso_cone**2
        isolated = iso < r.egamma_iso_max * pt[cand]
        sel = cand[isolated]
        eg_pt = _smear_energy(pt[sel], eta[sel], r.egamma_stochastic, r.egamma_constant, rng)
        ok = eg_pt > r.egamma_pt_min
        eg_rows = np.column_stack([eg_pt[ok], eta[sel][ok], phi[sel][ok]])
    event[EGAMMA] = _leading(np.asarray(eg_rows, dtype=np.float32).reshape(-1, 3), 4)

    # jets: anti-kT clusters of calorimeter particles, pile-up subtracted, smeared, thresholded
    if len(jets):
        jsel = np.abs(jets[:, 1]) < r.jet_eta_max
        j = jets[jsel]
        j_pt = j[:, 0]
        if r.jet_pileup_subtraction:
            j_pt = np.maximum(j_pt - rho * math.pi * r.jet_radius**2, 0.0)
        j_pt = _smear_energy(j_pt, j[:, 1], r.jet_stochastic, r.jet_constant, rng)
        ok = j_pt > r.jet_pt_min
        event[JET] = _leading(np.column_stack([j_pt[ok], j[ok, 1], j[ok, 2]]), 10)

    # MET: calorimeter-only missing transverse momentum with a sqrt(sum ET) resolution
    mx, my = -particles[calo, 1].sum(), -particles[calo, 2].sum()
    sigma = r.met_resolution_sqrt_sumet * math.sqrt(float(pt[calo].sum()))
    mx += sigma * rng.standard_normal()
    my += sigma * rng.standard_normal()
    event[MET] = (math.hypot(mx, my), 0.0, math.atan2(my, mx))
    return event
