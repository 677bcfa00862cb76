"""Differentiable torch model of the GFlash calorimeter in :mod:`l1forge.sim.calo`.

Expected cell energies are integrals of the same parameterized profiles over the cell
boundaries: the transverse integral is exact (the core and tail laws 2rR^2/(r^2+R^2)^2 have a
closed-form integral over any axis-aligned rectangle), the longitudinal one is Gauss-Legendre
quadrature of the Gamma density inside each readout segment. ``torch.special.gammainc`` has no
gradient with respect to the shape alpha, so the depth integral is done numerically instead,
which is differentiable in alpha, beta and the segment boundaries alike. Shower-shape
fluctuations enter through reparameterized normals (or Gauss-Hermite nodes for the mean);
sampling, noise and ADC fluctuations through one reparameterized Gaussian per cell.
Every continuous geometry parameter carries a gradient: layer count (a real number here),
absorber and active thicknesses, cell size, readout bits, and absorber material weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from l1forge.sim.calo import FABJAN_SAMPLING_COEFF, Geometry, gauss_hermite, radial_terms
from l1forge.sim.materials import ABSORBERS, ES_MEV, MATERIALS


@dataclass(frozen=True)
class FixedReadout:
    """The parts of a geometry that stay discrete or fixed during optimization."""

    active: str = "scintillator"
    n_cells: int = 5
    n_segments: int = 2
    full_scale_gev: float = 64.0
    noise_gev: float = 0.02


def theta_from_geometry(geom: Geometry, dtype: torch.dtype = torch.float64) -> dict:
    """Continuous parameters equal to a stochastic-simulator geometry (one-hot material)."""
    w = torch.tensor([1.0 if m == geom.absorber else 0.0 for m in ABSORBERS], dtype=dtype)
    t = lambda v: torch.tensor(float(v), dtype=dtype)  # noqa: E731
    return {
        "n_layers": t(geom.n_layers),
        "absorber_mm": t(geom.absorber_mm),
        "active_mm": t(geom.active_mm),
        "cell_mm": t(geom.cell_mm),
        "readout_bits": t(geom.readout_bits),
        "material_weights": w,
    }


def _props(names: tuple[str, ...], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    m = [MATERIALS[n] for n in names]
    return {
        "rho": torch.tensor([x.density_g_cm3 for x in m], dtype=dtype),
        "inv_x0": torch.tensor([1.0 / x.x0_cm for x in m], dtype=dtype),
        "ec_over_x0": torch.tensor([x.ec_mev / x.x0_cm for x in m], dtype=dtype),
        "z": torch.tensor([x.z for x in m], dtype=dtype),
        "dedx": torch.tensor([x.dedx_mip_mev_cm for x in m], dtype=dtype),
    }


def effective_medium(theta: dict, ro: FixedReadout) -> dict[str, torch.Tensor]:
    """Torch twin of :func:`l1forge.sim.calo.effective_medium` with a material mixture.

    The absorber is a mass-free mixture: density, 1/X0, E_c/X0, Z and mip dE/dx are averaged
    with ``material_weights``; for one-hot weights this is the pure material exactly.
    """
    w = theta["material_weights"]
    dtype = w.dtype
    ab = {k: (w * v).sum() for k, v in _props(ABSORBERS, dtype).items()}
    act = MATERIALS[ro.active]
    d1, d2 = theta["absorber_mm"], theta["active_mm"]
    m1, m2 = d1 * ab["rho"], d2 * act.density_g_cm3
    w1, w2 = m1 / (m1 + m2), m2 / (m1 + m2)
    rho = (m1 + m2) / (d1 + d2)
    inv_x0 = w1 * rho * ab["inv_x0"] / ab["rho"] + w2 * rho / (act.x0_cm * act.density_g_cm3)
    x0_cm = 1.0 / inv_x0
    ec_over_x0 = w1 * ab["ec_over_x0"] + w2 * act.ec_mev / act.x0_cm
    vis = d2 * act.dedx_mip_mev_cm
    f_samp = vis / (vis + d1 * ab["dedx"])
    return {
        "x0_mm": x0_cm * 10,
        "rm_mm": ES_MEV / ec_over_x0 * 10,
        "ec_gev": x0_cm * ec_over_x0 * 1e-3,
        "z": w1 * ab["z"] + w2 * act.z,
        "fs": x0_cm * 10 / (d1 + d2),
        "ehat": 1.0 / (1.0 + 0.007 * (ab["z"] - act.z)),
        "f_samp": f_samp,
        "sampling_term": FABJAN_SAMPLING_COEFF * torch.sqrt(d2 / f_samp),
    }


def _inv_width(den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 2.0, 1.0 / den.clamp(min=2.0), torch.full_like(den, 0.5))


def shape_params(
    e_gev: torch.Tensor, med: dict, z1: torch.Tensor, z2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, alpha) of sampling-calorimeter showers for normals z1, z2 (broadcast with e_gev)."""
    ln_y = torch.log(e_gev / med["ec_gev"])
    mu_t = torch.log((ln_y - 0.812).clamp(min=0.1))
    mu_a = torch.log((0.81 + (0.458 + 2.26 / med["z"]) * ln_y).clamp(min=0.1))
    mu_t = torch.log((torch.exp(mu_t) - 0.55 / med["fs"] - 0.69 * (1 - med["ehat"])).clamp(min=1.1))
    mu_a = torch.log((torch.exp(mu_a) - 0.476 / med["fs"]).clamp(min=1.1))
    sig_t = _inv_width(-2.5 + 1.25 * ln_y)
    sig_a = _inv_width(-0.82 + 0.79 * ln_y)
    rho = (0.784 - 0.023 * ln_y).clamp(-0.99, 0.99)
    c1, c2 = torch.sqrt((1 + rho) / 2), torch.sqrt((1 - rho) / 2)
    t_max = torch.exp(mu_t + sig_t * (c1 * z1 + c2 * z2)).clamp(min=1.0)
    alpha = torch.exp(mu_a + sig_a * (c1 * z1 - c2 * z2)).clamp(min=1.1)
    return t_max, alpha


def radial_params(e_gev: torch.Tensor, tau: torch.Tensor, med: dict):
    """Torch twin of :func:`l1forge.sim.calo.radial_params` (sampling calorimeter)."""
    sampling = (med["fs"], 1 - med["ehat"])
    r_c, r_t, p = radial_terms(torch.log(e_gev), tau, med["z"], torch.exp, sampling)
    return r_c.clamp(min=1e-3), r_t.clamp(min=1e-3), p.clamp(0.0, 1.0)


def _quadrant(x: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """P(0<X<x, 0<Y<y) for the 2-D law R^2 / (pi (x^2+y^2+R^2)^2) (odd in x and in y)."""
    a = torch.sqrt(x * x + r * r)
    b = torch.sqrt(y * y + r * r)
    return (x / a * torch.atan(y / a) + y / b * torch.atan(x / b)) / (2 * math.pi)


def _rect_fractions(xe: torch.Tensor, ye: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Fractions in the n x n cells; xe, ye (..., n+1) edges, r (...) -> (..., n, n) [y, x]."""
    q = _quadrant(xe[..., None, :], ye[..., :, None], r[..., None, None])
    return q[..., 1:, 1:] - q[..., 1:, :-1] - q[..., :-1, 1:] + q[..., :-1, :-1]


def expected_cells(
    theta: dict,
    ro: FixedReadout,
    e_gev: torch.Tensor,
    x_mm: torch.Tensor,
    y_mm: torch.Tensor,
    normals: torch.Tensor | None = None,
    *,
    n_depth: int = 16,
    n_hermite: int = 5,
) -> torch.Tensor:
    """Expected calibrated energy (GeV) per cell of each shower: (S, n_segments, n, n).

    ``normals`` (S, 2) fixes each shower's shape fluctuation (reparameterized sampling); when
    None the shape is averaged over Gauss-Hermite nodes, giving the mean of the stochastic
    simulator. Showers start at the front face at (x_mm, y_mm) from the central cell's centre.
    """
    med = effective_medium(theta, ro)
    dtype = e_gev.dtype
    if normals is None:
        x, w = gauss_hermite(n_hermite)
        z1, z2 = (torch.tensor(v.ravel(), dtype=dtype) for v in np.meshgrid(x, x, indexing="ij"))
        wk = torch.tensor(np.outer(w, w).ravel(), dtype=dtype)
    else:
        z1, z2 = normals[:, 0:1], normals[:, 1:2]
        wk = torch.ones(1, dtype=dtype)
    e = e_gev[:, None]
    t_max, alpha = shape_params(e, med, z1, z2)  # (S, K)
    beta = (alpha - 1.0) / t_max
    # segment boundaries in X0_eff: layers are ganged equally; n_layers may be fractional
    pitch = theta["absorber_mm"] + theta["active_mm"]
    k = torch.arange(ro.n_segments + 1, dtype=dtype)
    bounds = k * theta["n_layers"] / ro.n_segments * pitch / med["x0_mm"]
    gx, gw = np.polynomial.legendre.leggauss(n_depth)
    gx, gw = torch.tensor(gx, dtype=dtype), torch.tensor(gw, dtype=dtype)
    half = (bounds[1:] - bounds[:-1]) / 2
    t = (bounds[:-1] + bounds[1:])[:, None] / 2 + half[:, None] * gx  # (seg, G)
    tw = half[:, None] * gw
    a_, b_ = alpha[..., None, None], beta[..., None, None]  # (S, K, 1, 1)
    log_pdf = (a_ - 1) * torch.log(b_ * t) + torch.log(b_) - b_ * t - torch.lgamma(a_)
    dens = torch.exp(log_pdf) * tw  # (S, K, seg, G): energy fraction at each depth node
    tau = t / t_max[..., None, None]
    r_c, r_t, p = radial_params(e[..., None, None], tau, med)
    n = ro.n_cells
    edges = (torch.arange(n + 1, dtype=dtype) - n / 2) * theta["cell_mm"]
    xe = (edges[None, :] - x_mm[:, None])[:, None, None, None, :]  # (S,1,1,1,n+1)
    ye = (edges[None, :] - y_mm[:, None])[:, None, None, None, :]
    rm = med["rm_mm"]
    frac = p[..., None, None] * _rect_fractions(xe, ye, r_c * rm) + (1 - p)[
        ..., None, None
    ] * _rect_fractions(xe, ye, r_t * rm)
    cells = (dens[..., None, None] * frac).sum(dim=3)  # (S, K, seg, n, n)
    return e_gev[:, None, None, None] * torch.einsum("k,sk...->s...", wk, cells)


def measured_cells(
    theta: dict,
    ro: FixedReadout,
    mean_cells: torch.Tensor,
    eps: torch.Tensor,
    *,
    sampling_fluctuations: bool = True,
) -> torch.Tensor:
    """Reparameterized measurement: mean + sqrt(c_s^2 mean + noise^2 + lsb^2/12) * eps.

    ``sampling_fluctuations=False`` leaves out the c_s^2 term, for cell energies that already
    carry them (the learned surrogate's samples).
    """
    lsb = ro.full_scale_gev * torch.pow(2.0, -theta["readout_bits"])
    var = ro.noise_gev**2 + lsb**2 / 12
    if sampling_fluctuations:
        var = effective_medium(theta, ro)["sampling_term"] ** 2 * mean_cells.clamp(min=0) + var
    return (mean_cells + torch.sqrt(var) * eps).clamp(0.0, ro.full_scale_gev)


def event_cells(
    theta: dict,
    ro: FixedReadout,
    e_gev: torch.Tensor,
    x_mm: torch.Tensor,
    y_mm: torch.Tensor,
    event: torch.Tensor,
    n_events: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Measured cells of events made of one or more showers (reparameterized, differentiable)."""
    dtype = e_gev.dtype
    normals = torch.randn(len(e_gev), 2, generator=generator, dtype=dtype)
    per_shower = expected_cells(theta, ro, e_gev, x_mm, y_mm, normals)
    mean = torch.zeros((n_events, *per_shower.shape[1:]), dtype=dtype)
    mean = mean.index_add(0, event, per_shower)
    eps = torch.randn(mean.shape, generator=generator, dtype=dtype)
    return measured_cells(theta, ro, mean, eps)


GRADIENT_PARAMS = ("absorber_mm", "active_mm", "cell_mm", "n_layers")
STEPS = {"absorber_mm": 0.3, "active_mm": 0.5, "cell_mm": 3.0, "n_layers": 1}


def gradient_check(
    geom: Geometry, e_gev: float = 10.0, n_events: int = 1500, spots: int = 400, seed: int = 0
) -> dict[str, float]:
    """Relative error |g_torch - g_fd| / |g_fd| per parameter over three observables.

    g_fd: :func:`reference_gradients`; g_torch: autograd of :func:`expected_cells`.
    """
    ro = FixedReadout(geom.active, geom.n_cells, geom.n_segments, geom.full_scale_gev)
    theta = theta_from_geometry(geom)
    for k in GRADIENT_PARAMS:
        theta[k].requires_grad_(True)
    zero = torch.zeros(1, dtype=torch.float64)
    mean = expected_cells(theta, ro, torch.tensor([e_gev], dtype=torch.float64), zero, zero)[0]
    g_torch = observable_gradients(observables(mean, geom.n_cells), theta)
    fd = reference_gradients(geom, e_gev, n_events, spots, seed, impact="center")
    return {k: float(np.linalg.norm(g_torch[k] - fd[k]) / np.linalg.norm(fd[k])) for k in fd}


def observable_gradients(obs: list[torch.Tensor], theta: dict) -> dict[str, np.ndarray]:
    """d(observable)/d(θ_k) for each of :data:`GRADIENT_PARAMS`, by autograd."""
    g: dict[str, list[float]] = {k: [] for k in GRADIENT_PARAMS}
    for f in obs:
        grads = torch.autograd.grad(f, [theta[k] for k in GRADIENT_PARAMS], retain_graph=True)
        for k, v in zip(GRADIENT_PARAMS, grads, strict=True):
            g[k].append(float(v))
    return {k: np.array(v) for k, v in g.items()}


def reference_gradients(
    geom: Geometry, e_gev: float, n_events: int, spots: int, seed: int, impact: str
) -> dict[str, np.ndarray]:
    """Central finite differences of the stochastic simulator's mean observables.

    Common random numbers (same seed, inverse-CDF depths, fixed spot count, no sampling
    fluctuations, none of which moves the mean) keep the difference smooth; ``n_layers`` is
    the discrete difference at +-1 layer.
    """
    import dataclasses

    from l1forge.sim import calo

    opt = calo.SimOptions(sampling_fluctuations=False, smooth_depths=True, spots_per_shower=spots)
    out = {}
    for k in GRADIENT_PARAMS:
        h = STEPS[k]
        means = []
        for sign in (1, -1):
            shifted = dataclasses.replace(geom, **{k: getattr(geom, k) + sign * h})
            ev = calo.simulate(
                shifted, np.full(n_events, e_gev), seed=seed, impact=impact, options=opt
            )
            means.append([float(v) for v in observables(ev.deposited_gev.mean(0), shifted.n_cells)])
        out[k] = (np.array(means[0]) - np.array(means[1])) / (2 * h)
    return out


def observables(cells, n_cells: int):
    """Front-segment energy, central-column energy (all segments) and total energy."""
    c = n_cells // 2
    return [cells[0].sum(), cells[:, c, c].sum(), cells.sum()]
