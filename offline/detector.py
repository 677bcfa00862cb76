"""Learnable detector geometry θ inside physical bounds, and its cost in currency."""

from __future__ import annotations

import torch
from torch import nn

from l1forge.offline.config import DEFAULT_BOUNDS, CostConfig, DetectorSpace
from l1forge.sim.calo import Geometry
from l1forge.sim.calo_torch import FixedReadout
from l1forge.sim.materials import ABSORBERS, MATERIALS


class DetectorParams(nn.Module):
    """θ as unconstrained parameters mapped into their bounds by a sigmoid.

    The absorber is a softmax over :data:`ABSORBERS`; the readout and cell count stay fixed.
    """

    lo: torch.Tensor  # buffers, registered in __init__
    hi: torch.Tensor

    def __init__(self, space: DetectorSpace):
        super().__init__()
        self.space = space
        self.names = tuple(DEFAULT_BOUNDS)
        lo = torch.tensor([space.bounds[k][0] for k in self.names], dtype=torch.float64)
        hi = torch.tensor([space.bounds[k][1] for k in self.names], dtype=torch.float64)
        self.register_buffer("lo", lo)
        self.register_buffer("hi", hi)
        init = torch.tensor([space.init[k] for k in self.names], dtype=torch.float64)
        u = (init - lo) / (hi - lo)
        self.raw = nn.Parameter(torch.log(u / (1 - u)))
        logits = torch.tensor(
            [2.0 if m == space.absorber else 0.0 for m in ABSORBERS], dtype=torch.float64
        )
        self.material_logits = nn.Parameter(logits, requires_grad=space.optimize_material)

    @property
    def readout(self) -> FixedReadout:
        s = self.space
        return FixedReadout(s.active, s.n_cells, s.n_segments, s.full_scale_gev, s.noise_gev)

    def theta(self) -> dict[str, torch.Tensor]:
        vals = self.lo + (self.hi - self.lo) * torch.sigmoid(self.raw)
        th = dict(zip(self.names, vals, strict=True))
        if self.space.optimize_material:
            th["material_weights"] = torch.softmax(self.material_logits, 0)
        else:
            th["material_weights"] = torch.tensor(
                [1.0 if m == self.space.absorber else 0.0 for m in ABSORBERS], dtype=torch.float64
            )
        return th

    def values(self) -> dict[str, float]:
        """Current θ as plain numbers (material weights by name) for logs and plots."""
        th = self.theta()
        out = {k: float(th[k].detach()) for k in self.names}
        for m, w in zip(ABSORBERS, th["material_weights"], strict=True):
            out[f"w_{m}"] = float(w.detach())
        return out

    def to_geometry(self) -> Geometry:
        """The nearest buildable design: integer layers and bits, the most weighted absorber."""
        v = self.values()
        s = self.space
        absorber = max(ABSORBERS, key=lambda m: v[f"w_{m}"])
        n_layers = max(round(v["n_layers"]), s.n_segments)
        return Geometry(
            n_layers=n_layers,
            absorber=absorber,
            absorber_mm=round(v["absorber_mm"], 3),
            active=s.active,
            active_mm=round(v["active_mm"], 3),
            cell_mm=round(v["cell_mm"], 3),
            n_cells=s.n_cells,
            n_segments=s.n_segments,
            readout_bits=round(v["readout_bits"]),
            full_scale_gev=s.full_scale_gev,
            noise_gev=s.noise_gev,
        )


def price_per_cm3(name: str, cost: CostConfig) -> float:
    m = MATERIALS[name]
    return cost.material_eur_per_kg.get(name, m.cost_eur_per_kg) * m.density_g_cm3 * 1e-3


def detector_cost_eur(th: dict, ro: FixedReadout, cost: CostConfig) -> torch.Tensor:
    """Material volume times price plus readout channels (per channel and per ADC bit)."""
    area_cm2 = (ro.n_cells * th["cell_mm"] / 10.0) ** 2
    abs_price = sum(
        w * price_per_cm3(m, cost) for m, w in zip(ABSORBERS, th["material_weights"], strict=True)
    )
    absorber = area_cm2 * th["n_layers"] * th["absorber_mm"] / 10.0 * abs_price
    active = area_cm2 * th["n_layers"] * th["active_mm"] / 10.0 * price_per_cm3(ro.active, cost)
    n_ch = ro.n_segments * ro.n_cells**2
    channels = n_ch * (cost.channel_eur + cost.channel_eur_per_bit * th["readout_bits"])
    return absorber + active + channels


def geometry_theta(geom: Geometry) -> dict[str, torch.Tensor]:
    """θ of a fixed geometry, for costing designs found by other methods."""
    from l1forge.sim.calo_torch import theta_from_geometry

    return theta_from_geometry(geom)
