"""Stochastic reference simulator of an electromagnetic sampling calorimeter (GFlash).

Showers are sampled spot by spot from the parameterization of Grindhammer & Peters,
"The parameterized simulation of electromagnetic showers in homogeneous and sampling
calorimeters", hep-ex/0001020 (constants as tuned in Geant4's GFlash): a Gamma longitudinal
profile whose (ln T, ln alpha) fluctuate as a correlated Gaussian pair, a two-component
(core/tail) radial profile in Molière radii, sampling fluctuations, electronic noise per cell
and an ADC with a given number of bits. A sampling stack is treated as the paper's effective
medium (X0_eff, R_M,eff, E_c,eff, Z_eff, F_S, e-hat).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from l1forge.errors import ConfigError
from l1forge.sim.materials import ABSORBERS, ES_MEV, MATERIALS, material

log = logging.getLogger(__name__)

PI0_MASS_GEV = 0.1349768  # PDG 2024
# Sampling term of EM sampling calorimeters, sigma/E = 2.7% sqrt(d_mm / f_samp) / sqrt(E/GeV)
# (C.W. Fabjan & F. Gianotti, Rev. Mod. Phys. 75 (2003) 1243, eq. 36), d = active thickness.
FABJAN_SAMPLING_COEFF = 0.027


@dataclass(frozen=True)
class Geometry:
    """A longitudinally segmented stack of identical absorber+active layers and square cells.

    ``absorber_mm == 0`` makes a homogeneous calorimeter of the active material. Layers are
    ganged into ``n_segments`` equal readout depths; each has ``n_cells`` x ``n_cells`` cells.
    """

    n_layers: int = 20
    absorber: str = "Pb"
    absorber_mm: float = 2.0
    active: str = "scintillator"
    active_mm: float = 4.0
    cell_mm: float = 30.0
    n_cells: int = 5
    n_segments: int = 2
    readout_bits: int = 10
    full_scale_gev: float = 64.0
    noise_gev: float = 0.02

    def __post_init__(self) -> None:
        _check_int("n_layers", self.n_layers, 1, 400)
        _check_int("n_cells", self.n_cells, 1, 63)
        _check_int("n_segments", self.n_segments, 1, self.n_layers)
        _check_int("readout_bits", self.readout_bits, 1, 24)
        if self.absorber not in ABSORBERS:
            raise ConfigError(f"absorber: {self.absorber!r} is not one of {ABSORBERS}")
        material(self.active, where="active")
        _check_real("absorber_mm", self.absorber_mm, 0.0, 100.0)
        _check_real("active_mm", self.active_mm, 0.05, 200.0)
        _check_real("cell_mm", self.cell_mm, 0.5, 500.0)
        _check_real("full_scale_gev", self.full_scale_gev, 1e-3, 1e5)
        _check_real("noise_gev", self.noise_gev, 0.0, 100.0)
        if self.absorber_mm == 0 and self.n_layers * self.active_mm > 5000:
            raise ConfigError("a homogeneous calorimeter deeper than 5 m is out of range")

    @property
    def homogeneous(self) -> bool:
        return self.absorber_mm == 0.0

    @property
    def pitch_mm(self) -> float:
        return self.absorber_mm + self.active_mm

    @property
    def depth_mm(self) -> float:
        return self.n_layers * self.pitch_mm

    @property
    def n_channels(self) -> int:
        return self.n_segments * self.n_cells * self.n_cells

    @property
    def lsb_gev(self) -> float:
        return self.full_scale_gev / (2**self.readout_bits)

    @property
    def medium(self) -> Medium:
        return effective_medium(self.absorber, self.absorber_mm, self.active, self.active_mm)


def _check_int(key: str, v: object, lo: int, hi: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ConfigError(f"{key}: must be an integer in [{lo}, {hi}], got {v!r}")


def _check_real(key: str, v: object, lo: float, hi: float) -> None:
    if not isinstance(v, int | float) or isinstance(v, bool) or not lo <= float(v) <= hi:
        raise ConfigError(f"{key}: must be a number in [{lo}, {hi}], got {v!r}")


@dataclass(frozen=True)
class Medium:
    """GFlash effective medium: lengths in mm, energies in GeV; fs/ehat only when sampling."""

    x0_mm: float
    rm_mm: float
    ec_gev: float
    z: float
    homogeneous: bool
    fs: float
    ehat: float
    f_samp: float
    sampling_term: float


def effective_medium(absorber: str, absorber_mm: float, active: str, active_mm: float) -> Medium:
    """Effective X0, R_M, E_c, Z of a sampling stack (hep-ex/0001020 sec. 2.3, mass weights)."""
    act = MATERIALS[active]
    if absorber_mm == 0.0:
        return Medium(
            act.x0_cm * 10, act.rm_cm * 10, act.ec_mev * 1e-3, act.z, True, 0.0, 1.0, 1.0, 0.0
        )
    ab = MATERIALS[absorber]
    m1, m2 = absorber_mm * ab.density_g_cm3, active_mm * act.density_g_cm3
    w1, w2 = m1 / (m1 + m2), m2 / (m1 + m2)
    rho = (m1 + m2) / (absorber_mm + active_mm)
    x0 = 1.0 / (
        w1 * rho / (ab.x0_cm * ab.density_g_cm3) + w2 * rho / (act.x0_cm * act.density_g_cm3)
    )
    ec_over_x0 = w1 * ab.ec_mev / ab.x0_cm + w2 * act.ec_mev / act.x0_cm  # MeV / cm
    rm = ES_MEV / ec_over_x0
    ec = x0 * ec_over_x0
    fs = x0 * 10 / (absorber_mm + active_mm)
    ehat = 1.0 / (1.0 + 0.007 * (ab.z - act.z))
    vis_act = active_mm * act.dedx_mip_mev_cm
    f_samp = vis_act / (vis_act + absorber_mm * ab.dedx_mip_mev_cm)
    c_s = FABJAN_SAMPLING_COEFF * math.sqrt(active_mm / f_samp)
    return Medium(x0 * 10, rm * 10, ec * 1e-3, w1 * ab.z + w2 * act.z, False, fs, ehat, f_samp, c_s)


@dataclass(frozen=True)
class LongitudinalParams:
    """Per-shower Gaussian law of (ln T, ln alpha): means, widths and correlation."""

    mu_ln_t: np.ndarray
    sig_ln_t: np.ndarray
    mu_ln_a: np.ndarray
    sig_ln_a: np.ndarray
    rho: np.ndarray


def longitudinal_params(e_gev: np.ndarray, med: Medium) -> LongitudinalParams:
    """Fluctuated-profile parameters of hep-ex/0001020 eqs. (homogeneous, then sampling)."""
    ln_y = np.log(np.asarray(e_gev, dtype=np.float64) / med.ec_gev)
    mu_t = np.log(np.maximum(ln_y - 0.812, 0.1))
    mu_a = np.log(np.maximum(0.81 + (0.458 + 2.26 / med.z) * ln_y, 0.1))
    if med.homogeneous:
        sig_t = _inv_width(-1.4 + 1.26 * ln_y)
        sig_a = _inv_width(-0.58 + 0.86 * ln_y)
        rho = 0.705 - 0.023 * ln_y
    else:
        mu_t = np.log(np.maximum(np.exp(mu_t) - 0.55 / med.fs - 0.69 * (1 - med.ehat), 1.1))
        mu_a = np.log(np.maximum(np.exp(mu_a) - 0.476 / med.fs, 1.1))
        sig_t = _inv_width(-2.5 + 1.25 * ln_y)
        sig_a = _inv_width(-0.82 + 0.79 * ln_y)
        rho = 0.784 - 0.023 * ln_y
    return LongitudinalParams(mu_t, sig_t, mu_a, sig_a, np.clip(rho, -0.99, 0.99))


def _inv_width(den: np.ndarray) -> np.ndarray:
    """sigma = 1/den, capped at 0.5 as Geant4 does (den <= 2 at very low y)."""
    return np.where(den > 2.0, 1.0 / np.maximum(den, 2.0), 0.5)


def shape_from_normals(
    p: LongitudinalParams, z1: np.ndarray, z2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(T, alpha) from two standard normals, correlated as the paper prescribes, clamped."""
    c1, c2 = np.sqrt((1 + p.rho) / 2), np.sqrt((1 - p.rho) / 2)
    t_max = np.exp(p.mu_ln_t + p.sig_ln_t * (c1 * z1 + c2 * z2))
    alpha = np.exp(p.mu_ln_a + p.sig_ln_a * (c1 * z1 - c2 * z2))
    return np.maximum(t_max, 1.0), np.maximum(alpha, 1.1)


def radial_terms(
    ln_e: Any, tau: Any, z: Any, exp: Callable[[Any], Any], sampling: tuple[Any, Any] | None
) -> tuple[Any, Any, Any]:
    """(R_core, R_tail, p) before clipping (hep-ex/0001020 sec. 3), written once for numpy and
    torch: ``exp`` is ``np.exp`` or ``torch.exp``; ``sampling`` is (fs, 1 - ehat) of a sampling
    calorimeter, None for a homogeneous one."""
    r_c = 0.0251 + 0.00319 * ln_e + (0.1162 - 0.000381 * z) * tau
    p2, p3 = 0.401 + 0.00187 * z, 1.313 - 0.0686 * ln_e
    arg = (p2 - tau) / p3
    p = (2.632 - 0.00094 * z) * exp(arg - exp(arg))
    k4 = 0.3585 + 0.0412 * ln_e
    r_t = (0.659 - 0.00309 * z) * (exp(-2.59 * (tau - 0.645)) + exp(k4 * (tau - 0.645)))
    if sampling is not None:
        fs, d = sampling
        r_c = r_c - 0.0203 * d + 0.0397 / fs * exp(-tau)
        p = p + d * (0.348 - 0.642 / fs * exp(-((tau - 1.0) ** 2)))
        r_t = r_t - 0.14 * d - 0.495 / fs * exp(-tau)
    return r_c, r_t, p


def radial_params(
    e_gev: np.ndarray, tau: np.ndarray, med: Medium
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R_core, R_tail in Molière radii, core weight p) at tau = t/T (hep-ex/0001020 sec. 3)."""
    sampling = None if med.homogeneous else (med.fs, 1 - med.ehat)
    r_c, r_t, p = radial_terms(np.log(e_gev), tau, med.z, np.exp, sampling)
    return np.maximum(r_c, 1e-3), np.maximum(r_t, 1e-3), np.clip(p, 0.0, 1.0)


def n_spots(e_gev: np.ndarray, med: Medium) -> np.ndarray:
    """Spots per shower: 93 ln(Z) E^0.876 (homogeneous), 10.3/c_s E^0.959 (sampling)."""
    e = np.asarray(e_gev, dtype=np.float64)
    if med.homogeneous:
        return 93.0 * math.log(med.z) * e**0.876
    return 10.3 / med.sampling_term * e**0.959


@dataclass(frozen=True)
class SimOptions:
    """Switches for validation: fixed spot counts and smooth (inverse-CDF) depth sampling."""

    sampling_fluctuations: bool = True
    spots_per_shower: int | None = None
    max_spots_per_shower: int = 20000
    smooth_depths: bool = False
    max_spots_per_chunk: int = 2_000_000


def deposit_showers(
    geom: Geometry,
    e_gev: np.ndarray,
    x_mm: np.ndarray,
    y_mm: np.ndarray,
    event: np.ndarray,
    n_events: int,
    rng: np.random.Generator,
    options: SimOptions = SimOptions(),
) -> np.ndarray:
    """Energy (GeV, calibrated) per cell, shape (n_events, n_segments, n_cells, n_cells).

    Each shower starts at the front face at transverse position (x_mm, y_mm), measured from the
    centre of the central cell, and adds to event ``event[i]``.
    """
    e_gev = np.asarray(e_gev, dtype=np.float64)
    med = geom.medium
    counts = (
        np.full(len(e_gev), options.spots_per_shower, dtype=np.int64)
        if options.spots_per_shower
        else np.clip(np.ceil(n_spots(e_gev, med)), 1, options.max_spots_per_shower).astype(np.int64)
    )
    # the shape fluctuations take two normals per shower, drawn before any spot
    z = rng.standard_normal((2, len(e_gev)))
    t_max, alpha = shape_from_normals(longitudinal_params(e_gev, med), z[0], z[1])
    out = np.zeros(n_events * geom.n_channels)
    start = 0
    while start < len(e_gev):
        stop = start + 1
        budget = counts[start]
        while stop < len(e_gev) and budget + counts[stop] <= options.max_spots_per_chunk:
            budget += counts[stop]
            stop += 1
        sl = slice(start, stop)
        _deposit_chunk(
            geom, med, e_gev[sl], x_mm[sl], y_mm[sl], event[sl], counts[sl],
            t_max[sl], alpha[sl], rng, options, out,
        )  # fmt: skip
        start = stop
    return out.reshape(n_events, geom.n_segments, geom.n_cells, geom.n_cells)


def _deposit_chunk(geom, med, e, x0, y0, event, counts, t_max, alpha, rng, options, out) -> None:
    idx = np.repeat(np.arange(len(e)), counts)
    a_s, beta = alpha[idx], ((alpha - 1.0) / t_max)[idx]
    u = rng.random((4, len(idx)))
    if options.smooth_depths:
        t = special.gammaincinv(a_s, u[0]) / beta
    else:
        t = rng.standard_gamma(a_s) / beta
    e_spot = (e / counts)[idx]
    if options.sampling_fluctuations and med.sampling_term > 0:
        c2 = med.sampling_term**2
        e_spot = rng.gamma(e_spot / c2, c2)
    r_c, r_t, p = radial_params(e[idx], t / t_max[idx], med)
    r_m = np.where(u[1] < p, r_c, r_t) * med.rm_mm
    uu = np.minimum(u[2], 1.0 - 1e-12)
    r = r_m * np.sqrt(uu / (1.0 - uu))
    phi = 2.0 * np.pi * u[3]
    n = geom.n_cells
    ix = np.floor((x0[idx] + r * np.cos(phi)) / geom.cell_mm + n / 2).astype(np.int64)
    iy = np.floor((y0[idx] + r * np.sin(phi)) / geom.cell_mm + n / 2).astype(np.int64)
    layer = np.floor(t * med.x0_mm / geom.pitch_mm).astype(np.int64)
    keep = (ix >= 0) & (ix < n) & (iy >= 0) & (iy < n) & (layer < geom.n_layers)
    seg = layer[keep] * geom.n_segments // geom.n_layers
    flat = ((event[idx][keep] * geom.n_segments + seg) * n + iy[keep]) * n + ix[keep]
    out += np.bincount(flat, weights=e_spot[keep], minlength=out.size)


def readout(geom: Geometry, deposited_gev: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ADC counts: Gaussian noise per cell, then an unsigned ``readout_bits`` ADC (round, clip)."""
    noisy = deposited_gev + geom.noise_gev * rng.standard_normal(deposited_gev.shape)
    adc = np.floor(noisy / geom.lsb_gev + 0.5)
    return np.clip(adc, 0, 2**geom.readout_bits - 1).astype(np.int64)


@dataclass(frozen=True)
class CaloEvents:
    """Simulated events: ADC counts and their energies per cell, truth energy, π0 label."""

    adc: np.ndarray
    energy_gev: np.ndarray
    deposited_gev: np.ndarray
    e_true_gev: np.ndarray
    is_pi0: np.ndarray


def simulate(
    geom: Geometry,
    e_gev: np.ndarray,
    is_pi0: np.ndarray | None = None,
    *,
    seed: int | np.random.Generator = 0,
    impact: str = "random",
    distance_mm: float = 1500.0,
    options: SimOptions = SimOptions(),
) -> CaloEvents:
    """Simulate single photons (or π0 -> γγ where ``is_pi0``) of the given energies.

    The particle hits the calorimeter face at normal incidence, uniformly within the central
    cell (``impact="random"``) or at its centre (``"center"``), from ``distance_mm`` away.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    e_gev = np.asarray(e_gev, dtype=np.float64)
    n = len(e_gev)
    is_pi0 = np.zeros(n, bool) if is_pi0 is None else np.asarray(is_pi0, dtype=bool)
    if np.any(e_gev <= 0.2):
        raise ConfigError("particle energies must be above 0.2 GeV")
    if impact == "random":
        cx, cy = (rng.random((2, n)) - 0.5) * geom.cell_mm
    elif impact == "center":
        cx = cy = np.zeros(n)
    else:
        raise ConfigError(f"impact: expected 'random' or 'center', got {impact!r}")
    e1, e2, dx, dy = pi0_photons(e_gev[is_pi0], distance_mm, rng)
    k = np.flatnonzero(is_pi0)
    single = np.flatnonzero(~is_pi0)
    e_sh = np.concatenate([e_gev[single], e1, e2])
    x = np.concatenate([cx[single], cx[k] + dx * e2 / e_gev[k], cx[k] - dx * e1 / e_gev[k]])
    y = np.concatenate([cy[single], cy[k] + dy * e2 / e_gev[k], cy[k] - dy * e1 / e_gev[k]])
    ev = np.concatenate([single, k, k])
    dep = deposit_showers(geom, e_sh, x, y, ev, n, rng, options)
    adc = readout(geom, dep, rng)
    return CaloEvents(adc, adc * geom.lsb_gev, dep, e_gev, is_pi0)


def pi0_photons(
    e_gev: np.ndarray, distance_mm: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Photon energies and their separation vector (mm) at ``distance_mm`` for π0 -> γγ.

    Isotropic decay in the π0 rest frame; opening angle from cos(psi) = 1 - m^2 / (2 E1 E2).
    """
    n = len(e_gev)
    cos_star = rng.uniform(-1.0, 1.0, n)
    phi = rng.uniform(0.0, 2 * np.pi, n)
    beta = np.sqrt(1.0 - (PI0_MASS_GEV / e_gev) ** 2)
    e1 = np.clip(0.5 * e_gev * (1 + beta * cos_star), 1e-3, e_gev - 1e-3)
    e2 = e_gev - e1
    cos_psi = np.clip(1.0 - PI0_MASS_GEV**2 / (2 * e1 * e2), -1.0, 1.0)
    # beyond 80 degrees the softer photon misses the face anyway: cap the separation
    sep = distance_mm * np.tan(np.minimum(np.arccos(cos_psi), np.radians(80)))
    return e1, e2, sep * np.cos(phi), sep * np.sin(phi)


# Gauss-Hermite nodes (probabilists') for expectations over the (ln T, ln alpha) Gaussian.
def gauss_hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, w / w.sum()


def mean_longitudinal_fractions(
    e_gev: float, med: Medium, edges_x0: np.ndarray, n_quad: int = 24
) -> np.ndarray:
    """Mean energy fraction between depth edges (in X0_eff) averaged over the fluctuations."""
    p = longitudinal_params(np.array([e_gev]), med)
    x, w = gauss_hermite(n_quad)
    z1, z2 = np.meshgrid(x, x, indexing="ij")
    wt = np.outer(w, w).ravel()
    t_max, alpha = shape_from_normals(p, z1.ravel(), z2.ravel())
    beta = (alpha - 1.0) / t_max
    cdf = special.gammainc(alpha[:, None], beta[:, None] * np.asarray(edges_x0)[None, :])
    return wt @ np.diff(cdf, axis=1)


def fit_resolution(
    e_gev: np.ndarray, rel_sigma: np.ndarray, rel_sigma_err: np.ndarray
) -> tuple[float, float, float]:
    """(a, b, c) of sigma/E = a/sqrt(E) (+) b (+) c/E by non-negative weighted least squares.

    Linear in (a^2, b^2, c^2) for (sigma/E)^2; weights from the errors on (sigma/E)^2.
    """
    from scipy.optimize import nnls

    e = np.asarray(e_gev, dtype=np.float64)
    y = np.asarray(rel_sigma) ** 2
    err = 2 * np.asarray(rel_sigma) * np.asarray(rel_sigma_err)
    design = np.stack([1 / e, np.ones_like(e), 1 / e**2], axis=1) / err[:, None]
    coef, _ = nnls(design, y / err)
    a2, b2, c2 = coef
    return float(np.sqrt(a2)), float(np.sqrt(b2)), float(np.sqrt(c2))
