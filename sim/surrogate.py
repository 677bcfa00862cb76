"""A learned calorimeter surrogate: conditional normalizing flows of shower cell energies.

Two flows, as CaloFlow splits energy from shape (Krause & Shih, arXiv:2106.05285):
``energy`` models the fraction of the incident energy deposited in each readout segment,
``shape`` the normalized cell fractions inside each segment given those energies. Samples are
renormalized per segment, so the deposited energy of a sample is exactly what the energy flow
drew. Both are neural spline flows of ``zuko`` (coupling form for the shape flow, so sampling
is one network pass per transform), conditioned on the incident energy, the particle (γ or
π0 → γγ) and the detector parameters θ through their effective-medium features (X0, R_M, Z,
sampling fraction and term, depth in X0, cell size in R_M, material weights), computed in
torch from θ so that samples are differentiable in θ by reparameterization.

The surrogate models deposited energies (shower and sampling fluctuations); electronic noise
and the ADC are applied after it, as the reference simulator does
(:func:`l1forge.sim.calo_torch.measured_cells` without its sampling term).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zuko
from torch import nn
from tqdm import tqdm

from l1forge.errors import ConfigError
from l1forge.sim import calo_torch
from l1forge.sim.calo_torch import FixedReadout
from l1forge.sim.materials import ABSORBERS
from l1forge.sim.surrogate_data import Showers, ThetaRange

log = logging.getLogger(__name__)

FORMAT = "l1forge-calo-surrogate-2"  # 2: the front-segment depth feature
N_THETA_FEATURES = 12 + len(ABSORBERS)


@dataclass(frozen=True)
class SurrogateSpec:
    """Architecture and representation constants (stored with the weights)."""

    range: ThetaRange = field(default_factory=ThetaRange)
    transforms: int = 6
    hidden: int = 128
    bins: int = 8
    energy_transforms: int = 4
    energy_hidden: int = 64
    frac_floor: float = 1e-5  # cell fractions below this are zero (dequantization width)
    seg_floor: float = 1e-3  # offset of log(segment energy / E)

    @property
    def n_features(self) -> int:
        r = self.range
        return r.n_segments * r.n_cells**2

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["range"] = self.range.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SurrogateSpec:
        d = dict(d)
        d["range"] = ThetaRange.from_json(d["range"])
        return cls(**d)


def front_layers(n_layers: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Layers in the first readout segment as the reference gangs them, ceil(n / S) for the
    nearest integer n (odd counts give the front segment the extra layer), with the gradient
    1/S of the continuous relaxation n / S."""
    relaxed = n_layers / n_segments
    exact = torch.ceil(torch.round(n_layers) / n_segments)
    return relaxed + (exact - relaxed).detach()


def theta_features(
    theta: dict[str, torch.Tensor], active: str, n_segments: int = 2
) -> torch.Tensor:
    """Effective-medium features of θ, differentiable (float64, shape (N_THETA_FEATURES,))."""
    med = calo_torch.effective_medium(theta, FixedReadout(active=active))
    pitch = theta["absorber_mm"] + theta["active_mm"]
    depth_x0 = theta["n_layers"] * pitch / med["x0_mm"]
    front_x0 = front_layers(theta["n_layers"], n_segments) * pitch / med["x0_mm"]
    f = [theta["n_layers"], theta["absorber_mm"], theta["active_mm"], theta["cell_mm"],
         torch.log(med["x0_mm"]), torch.log(med["rm_mm"]), med["z"], med["f_samp"],
         med["sampling_term"], torch.log(depth_x0), torch.log(front_x0),
         theta["cell_mm"] / med["rm_mm"]]  # fmt: skip
    return torch.cat([torch.stack(f), theta["material_weights"]])


def point_theta(rng_: ThetaRange, point: dict[str, Any]) -> dict[str, torch.Tensor]:
    """θ (torch, one-hot material) of a θ point as the reference simulator builds it."""
    return calo_torch.theta_from_geometry(rng_.geometry(point))


class CaloSurrogate(nn.Module):
    """The two flows plus the standardization constants of their inputs (buffers)."""

    feat_mean: torch.Tensor  # buffers, registered in __init__
    feat_std: torch.Tensor
    loge_mean: torch.Tensor
    loge_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor
    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_lo: torch.Tensor
    y_hi: torch.Tensor
    x_lo: torch.Tensor
    x_hi: torch.Tensor

    def __init__(self, spec: SurrogateSpec):
        super().__init__()
        self.spec = spec
        s, d = spec.range.n_segments, spec.n_features
        ctx = N_THETA_FEATURES + 2
        self.energy = zuko.flows.NSF(s, ctx, bins=spec.bins, transforms=spec.energy_transforms,
                                     hidden_features=(spec.energy_hidden,) * 2)  # fmt: skip
        self.shape = zuko.flows.NSF(d, ctx + s, bins=spec.bins, transforms=spec.transforms,
                                    hidden_features=(spec.hidden,) * 2, passes=2)  # fmt: skip
        for name, n in (("feat", N_THETA_FEATURES), ("loge", 1), ("y", s), ("x", d)):
            self.register_buffer(f"{name}_mean", torch.zeros(n))
            self.register_buffer(f"{name}_std", torch.ones(n))
        # the training sample's range of y and x: samples are clipped to it, since a spline
        # flow is the identity outside its bound and its rare far tails are not showers
        for name, n in (("y", s), ("x", d)):
            self.register_buffer(f"{name}_lo", torch.full((n,), -torch.inf))
            self.register_buffer(f"{name}_hi", torch.full((n,), torch.inf))

    # -- representation --
    def encode(
        self, dep: torch.Tensor, e_gev: torch.Tensor, u: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, x) unstandardized: log segment fractions of E and log dequantized cell fractions."""
        seg = dep.sum((-1, -2))  # (N, S)
        y = torch.log(seg / e_gev[:, None] + self.spec.seg_floor)
        frac = dep / seg.clamp(min=1e-12)[..., None, None]
        x = torch.log(frac.flatten(1) + self.spec.frac_floor * u)
        return y, x

    def decode(self, y: torch.Tensor, x: torch.Tensor, e_gev: torch.Tensor) -> torch.Tensor:
        """Deposited GeV per cell (N, S, n, n) from unstandardized (y, x)."""
        r = self.spec.range
        seg = (torch.exp(y) - self.spec.seg_floor).clamp(min=0.0) * e_gev[:, None]
        frac = torch.relu(torch.exp(x) - self.spec.frac_floor).view(-1, r.n_segments, r.n_cells**2)
        frac = frac / frac.sum(-1, keepdim=True).clamp(min=1e-12)
        return (seg[..., None] * frac).view(-1, r.n_segments, r.n_cells, r.n_cells)

    def context(
        self, feats: torch.Tensor, e_gev: torch.Tensor, is_pi0: torch.Tensor
    ) -> torch.Tensor:
        """Standardized flow context; ``feats`` is (F,) for one θ or (N, F) per event."""
        f = (feats.to(torch.float32) - self.feat_mean) / self.feat_std
        f = f.expand(len(e_gev), -1) if f.dim() == 1 else f
        le = (torch.log(e_gev.to(torch.float32))[:, None] - self.loge_mean) / self.loge_std
        p = is_pi0.to(torch.float32)[:, None] * 2 - 1
        return torch.cat([f, le, p], dim=1)

    def log_prob(self, ctx: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ys = (y - self.y_mean) / self.y_std
        xs = (x - self.x_mean) / self.x_std
        return self.energy(ctx).log_prob(ys) + self.shape(torch.cat([ctx, ys], 1)).log_prob(xs)

    def sample(
        self,
        theta: dict[str, torch.Tensor],
        e_gev: torch.Tensor,
        is_pi0: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Deposited GeV (N, S, n, n), float64, reparameterized: differentiable in θ."""
        r = self.spec.range
        feats = theta_features(theta, r.active, r.n_segments)
        return self.sample_features(feats, e_gev, is_pi0, generator)

    def sample_features(
        self,
        feats: torch.Tensor,
        e_gev: torch.Tensor,
        is_pi0: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        ctx = self.context(feats, e_gev, is_pi0)
        n, s = len(e_gev), self.spec.range.n_segments
        z_e = torch.randn(n, s, generator=generator)
        z_x = torch.randn(n, self.spec.n_features, generator=generator)
        ys = self.energy(ctx).transform.inv(z_e)
        xs = self.shape(torch.cat([ctx, ys], 1)).transform.inv(z_x)
        y = torch.clamp(ys * self.y_std + self.y_mean, self.y_lo, self.y_hi)
        x = torch.clamp(xs * self.x_std + self.x_mean, self.x_lo, self.x_hi)
        return self.decode(y.to(torch.float64), x.to(torch.float64), e_gev.to(torch.float64))


# -- training --
@dataclass(frozen=True)
class TrainConfig:
    """The two flows train separately: the small energy flow for many more epochs."""

    epochs: int = 12
    energy_epochs: int = 40
    batch: int = 512
    energy_batch: int = 2048
    lr: float = 1e-3
    energy_lr: float = 3e-3
    seed: int = 0
    val_fraction: float = 0.05


def _point_features(sh: Showers, rng_: ThetaRange) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack(
            [theta_features(point_theta(rng_, p), rng_.active, rng_.n_segments) for p in sh.points]
        )


def _fit(
    name: str, flow: nn.Module, nll: Any, tr: torch.Tensor, val: torch.Tensor,
    epochs: int, batch: int, lr: float, gen: torch.Generator,
) -> list[dict[str, float]]:  # fmt: skip
    """Adam with a one-cycle schedule; ``nll(rows)`` is the mean negative log-likelihood."""
    if epochs < 1:
        raise ConfigError(f"surrogate {name} flow: epochs must be >= 1, got {epochs}")
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    steps = math.ceil(len(tr) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    history = []
    bar = tqdm(range(epochs), desc=f"surrogate {name}", unit="epoch")
    for epoch in bar:
        flow.train()
        order = tr[torch.randperm(len(tr), generator=gen)]
        total = 0.0
        for k in range(steps):
            b = order[k * batch : (k + 1) * batch]
            loss = nll(b)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(flow.parameters(), 5.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(b)
        flow.eval()
        with torch.no_grad():
            v = float(nll(val))
        history.append({"epoch": epoch + 1, "train_nll": total / len(tr), "val_nll": v})
        bar.set_postfix(train=f"{total / len(tr):.3f}", val=f"{v:.3f}")
    return history


def train(
    sh: Showers, spec: SurrogateSpec, cfg: TrainConfig = TrainConfig()
) -> tuple[CaloSurrogate, dict[str, Any]]:
    """Maximum likelihood on the reference showers; returns the model and its loss history."""
    if len(sh.e_gev) < 20:
        raise ConfigError("surrogate training needs at least 20 showers")
    torch.manual_seed(cfg.seed)
    model = CaloSurrogate(spec)
    gen = torch.Generator().manual_seed(cfg.seed)
    pf = _point_features(sh, spec.range).to(torch.float32)
    dep = torch.as_tensor(sh.deposited_gev, dtype=torch.float32)
    e = torch.as_tensor(sh.e_gev, dtype=torch.float32)
    pi0 = torch.as_tensor(sh.is_pi0)
    idx = torch.as_tensor(sh.theta_index, dtype=torch.long)
    y, x = model.encode(dep, e, torch.rand(dep.shape[0], spec.n_features, generator=gen))
    feats = pf[idx]
    with torch.no_grad():
        for name, v in (("feat", feats), ("loge", torch.log(e)[:, None]), ("y", y), ("x", x)):
            getattr(model, f"{name}_mean").copy_(v.mean(0))
            getattr(model, f"{name}_std").copy_(v.std(0).clamp(min=1e-6))
        for name, v in (("y", y), ("x", x)):
            getattr(model, f"{name}_lo").copy_(v.min(0).values)
            getattr(model, f"{name}_hi").copy_(v.max(0).values)
        ctx = model.context(feats, e, pi0)
        ys = (y - model.y_mean) / model.y_std
        xs = (x - model.x_mean) / model.x_std
        ctx_shape = torch.cat([ctx, ys], 1)
    perm = torch.randperm(len(e), generator=gen)
    n_val = max(1, int(cfg.val_fraction * len(e)))
    val, tr = perm[:n_val], perm[n_val:]
    t0 = time.perf_counter()
    h_energy = _fit("energy", model.energy, lambda b: -model.energy(ctx[b]).log_prob(ys[b]).mean(),
                    tr, val, cfg.energy_epochs, cfg.energy_batch, cfg.energy_lr, gen)  # fmt: skip
    t1 = time.perf_counter()
    h_shape = _fit("shape", model.shape,
                   lambda b: -model.shape(ctx_shape[b]).log_prob(xs[b]).mean(),
                   tr, val, cfg.epochs, cfg.batch, cfg.lr, gen)  # fmt: skip
    t2 = time.perf_counter()
    info = {"history": {"energy": h_energy, "shape": h_shape},
            "train_s": {"energy": round(t1 - t0, 1), "shape": round(t2 - t1, 1)},
            "train_showers": len(tr), "val_showers": n_val,
            "config": dataclasses.asdict(cfg)}  # fmt: skip
    model.eval()
    return model, info


# -- files: weights in .npz, everything else in JSON (no pickle) --
def save(model: CaloSurrogate, out: Path, info: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    tmp = out / "weights.tmp.npz"
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    tmp.replace(out / "weights.npz")
    meta = {"format": FORMAT, "spec": model.spec.to_json(), "zuko": zuko.__version__, **info}
    (out / "surrogate.json").write_text(json.dumps(meta, indent=1))


def load(path: str | Path) -> CaloSurrogate:
    """A trained surrogate from its folder (``surrogate.json`` + ``weights.npz``)."""
    d = Path(path)
    meta_path = d / "surrogate.json"
    if not meta_path.is_file() or not (d / "weights.npz").is_file():
        raise ConfigError(
            f"{d}: no trained surrogate here (surrogate.json + weights.npz); "
            "train one with `l1forge sim surrogate train --out DIR`"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    model = CaloSurrogate(SurrogateSpec.from_json(meta["spec"]))
    with np.load(d / "weights.npz", allow_pickle=False) as z:
        model.load_state_dict({k: torch.as_tensor(z[k]) for k in z.files})
    model.eval()
    return model


def gradient_check(
    model: CaloSurrogate,
    geom: Any,
    e_gev: float = 20.0,
    n_samples: int = 20000,
    n_events: int = 4000,
    spots: int = 400,
    seed: int = 0,
) -> dict[str, Any]:
    """The surrogate's d(mean observable)/dθ against the reference simulator's differences.

    Photons of ``e_gev`` hitting the central cell uniformly (the surrogate's training impact);
    the surrogate's mean over ``n_samples`` fixed base draws, differentiated by autograd; the
    reference's :func:`l1forge.sim.calo_torch.reference_gradients` with the same impacts.
    Returns the relative error per parameter and both gradients.
    """
    theta = calo_torch.theta_from_geometry(geom)
    for k in calo_torch.GRADIENT_PARAMS:
        theta[k].requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    e = torch.full((n_samples,), float(e_gev), dtype=torch.float64)
    dep = model.sample(theta, e, torch.zeros(n_samples, dtype=torch.bool), gen)
    g_sur = calo_torch.observable_gradients(
        calo_torch.observables(dep.mean(0), geom.n_cells), theta
    )
    fd = calo_torch.reference_gradients(geom, e_gev, n_events, spots, seed, impact="random")
    rel = {k: float(np.linalg.norm(g_sur[k] - fd[k]) / np.linalg.norm(fd[k])) for k in fd}
    return {"rel_error": rel, "surrogate": {k: v.tolist() for k, v in g_sur.items()},
            "reference": {k: v.tolist() for k, v in fd.items()}}  # fmt: skip
