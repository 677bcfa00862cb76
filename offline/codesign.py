"""The joint optimizer: detector θ, network weights and bit widths trained together in torch.

One :class:`FitState` carries the loop's mutable state (step, trajectory); the differentiable
calorimeter model supplies cells for each batch; the final design is rounded to a buildable
geometry, its network exported as a qnet IR, and both re-evaluated on the stochastic reference
simulator with fresh events.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from l1forge.errors import ConfigError
from l1forge.models.qnet import save as save_qnet
from l1forge.models.torch_quant import ste_round
from l1forge.offline.classical import classical_utility, evaluate_classical_on
from l1forge.offline.config import CostConfig, StudyConfig
from l1forge.offline.detector import DetectorParams, detector_cost_eur, geometry_theta
from l1forge.offline.latency_model import DEFAULT_DELAY_MODEL, alkaid_delay_ns, stages_at
from l1forge.offline.lut_model import DEFAULT_LUT_MODEL
from l1forge.offline.network import QuantMLP
from l1forge.offline.reevaluate import evaluate_network_on, sample_events
from l1forge.sim import calo, calo_torch, surrogate
from l1forge.sim.materials import ABSORBERS

log = logging.getLogger(__name__)


TERMS = ("loss", "loss_energy", "loss_class", "cost_eur", "ebops", "delay_ns", "penalty")
# Every RECALIBRATE_EVERY steps, while the network's modelled delay is above RECALIBRATE_ABOVE of
# its budget, the delay model is re-levelled on alkaid's estimate of the current network.
RECALIBRATE_EVERY = 10
RECALIBRATE_ABOVE = 0.7
# training aims this far under the latency budget: the steep penalty lets a design end a little
# over the line it is pushed towards
LATENCY_MARGIN = 0.05


@dataclass
class FitState:
    """Everything that changes during a run (and is checkpointed)."""

    step: int = 0
    events: int = 0
    trajectory: list[dict[str, float | None]] = field(default_factory=list)
    # alkaid's delay over the delay model's, at the last re-calibration (see train_step)
    delay_scale: float = 1.0


@dataclass(frozen=True)
class Batch:
    e_gev: torch.Tensor
    is_pi0: torch.Tensor
    cells: torch.Tensor


class Study:
    """The models, optimizers and random streams of one co-design run."""

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.det = DetectorParams(cfg.detector)
        self.ro = self.det.readout
        n_in = self.ro.n_segments * self.ro.n_cells**2
        self.net = QuantMLP(n_in, cfg.network, seed=cfg.train.seed)
        tr = cfg.train
        weights = [p for n, p in self.net.named_parameters() if n != "frac_bits"]
        groups: list[dict[str, Any]] = [
            {"params": weights},
            {"params": [self.net.frac_bits], "lr": tr.lr_bits or tr.lr_net},
        ]
        self.opt_net = torch.optim.Adam(groups, lr=tr.lr_net)
        self.opt_det = torch.optim.Adam(self.det.parameters(), lr=cfg.train.lr_theta)
        self.rng = np.random.default_rng(cfg.train.seed)
        self.gen = torch.Generator().manual_seed(cfg.train.seed + 1)
        self.state = FitState()
        self.surrogate = load_surrogate(cfg) if cfg.train.model == "surrogate" else None

    def sample(self, theta: dict[str, torch.Tensor], n: int) -> Batch:
        """A batch of half photons, half π0 through the differentiable detector model."""
        u = self.cfg.utility
        e = self.rng.uniform(u.e_min_gev, u.e_max_gev, n)
        is_pi0 = np.arange(n) % 2 == 1
        if self.surrogate is None:
            return self._sample_analytic(theta, e, is_pi0)
        # the surrogate draws impacts and π0 decays itself
        et = torch.as_tensor(e, dtype=torch.float64)
        dep = self.surrogate.sample(theta, et, torch.as_tensor(is_pi0), self.gen)
        eps = torch.randn(dep.shape, generator=self.gen, dtype=torch.float64)
        cells = calo_torch.measured_cells(theta, self.ro, dep, eps, sampling_fluctuations=False)
        return Batch(et, torch.as_tensor(is_pi0), cells)

    def _sample_analytic(
        self, theta: dict[str, torch.Tensor], e: np.ndarray, is_pi0: np.ndarray
    ) -> Batch:
        """Impacts and π0 decays drawn here, showers through the analytic twin."""
        u, n = self.cfg.utility, len(e)
        ux, uy = self.rng.random((2, n)) - 0.5
        k = np.flatnonzero(is_pi0)
        e1, e2, dx, dy = calo.pi0_photons(e[k], u.distance_mm, self.rng)
        single = np.flatnonzero(~is_pi0)
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
        cell = theta["cell_mm"]
        e_sh = t(np.concatenate([e[single], e1, e2]))
        x = torch.cat([t(ux[single]) * cell, t(ux[k]) * cell + t(dx * e2 / e[k]),
                       t(ux[k]) * cell - t(dx * e1 / e[k])])  # fmt: skip
        y = torch.cat([t(uy[single]) * cell, t(uy[k]) * cell + t(dy * e2 / e[k]),
                       t(uy[k]) * cell - t(dy * e1 / e[k])])  # fmt: skip
        ev = torch.as_tensor(np.concatenate([single, k, k]))
        cells = calo_torch.event_cells(theta, self.ro, e_sh, x, y, ev, n, self.gen)
        return Batch(t(e), torch.as_tensor(is_pi0), cells)

    def losses(self, theta: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """Training objective: energy regression + γ/π0 separation + budget penalties."""
        c, tr = self.cfg.cost, self.cfg.train
        bits = theta["readout_bits"]
        lsb = self.ro.full_scale_gev * torch.exp2(-bits)
        counts = torch.minimum(ste_round(batch.cells / lsb), torch.exp2(bits) - 1)
        out = self.net(counts.flatten(1), bits)
        photon = ~batch.is_pi0
        e_pred = out[:, 0] * self.cfg.network.energy_scale_gev
        loss_e = (((e_pred - batch.e_gev) / batch.e_gev)[photon] ** 2).mean()
        loss_c = torch.nn.functional.binary_cross_entropy_with_logits(
            out[:, 1], photon.to(torch.float64)
        )
        cost = detector_cost_eur(theta, self.ro, c)
        ebops = self.net.ebops(bits)
        delay = self.state.delay_scale * DEFAULT_DELAY_MODEL.predict_terms(
            self.net.delay_terms(bits)
        )
        pen = budget_penalty(cost, ebops, delay, c)
        total = tr.w_energy * loss_e + tr.w_class * loss_c + pen
        return {"loss": total, "loss_energy": loss_e, "loss_class": loss_c,
                "cost_eur": cost, "ebops": ebops, "delay_ns": delay, "penalty": pen}  # fmt: skip

    def classical_losses(
        self, theta: dict[str, torch.Tensor], batch: Batch
    ) -> dict[str, torch.Tensor]:
        """Factorized stage 1, no network: θ for the classical trigger + the cost penalty.

        ``factorized_resolution``: the relative resolution of the calibrated sum of cells.
        ``factorized_fair``: minus the classical trigger's utility (sum-of-cells resolution and
        a shower-width cut at the study's π0 acceptance, :mod:`l1forge.offline.classical`).
        """
        c = self.cfg.cost
        bits = theta["readout_bits"]
        lsb = self.ro.full_scale_gev * torch.exp2(-bits)
        counts = torch.minimum(ste_round(batch.cells / lsb), torch.exp2(bits) - 1)
        cost = detector_cost_eur(theta, self.ro, c)
        pen = c.penalty * torch.relu(cost / c.detector_budget_eur - 1) ** 2
        if self.cfg.train.method == "factorized_fair":
            cl = classical_utility(
                counts * lsb, batch.e_gev, batch.is_pi0, theta["cell_mm"], self.cfg.utility
            )
            return {"loss": -cl["utility"] + pen, "loss_energy": cl["resolution"] ** 2,
                    "cost_eur": cost, "penalty": pen}  # fmt: skip
        photon = ~batch.is_pi0
        rel = (counts.flatten(1).sum(1) * lsb / batch.e_gev)[photon]
        resolution = rel.std() / rel.mean()  # a calibration constant removes the mean
        return {"loss": resolution + pen, "loss_energy": resolution**2, "cost_eur": cost,
                "penalty": pen}  # fmt: skip

    def phase(self) -> str:
        """What this step trains: 'theta' (factorized stage 1), 'net', or 'both'."""
        tr = self.cfg.train
        if tr.method == "reference":
            return "net"
        if tr.method.startswith("factorized"):
            return "theta" if self.state.step < tr.factorized_fraction * tr.steps else "net"
        return "both" if self.state.step >= tr.warmup_steps else "net"

    def train_step(self) -> dict[str, float | None]:
        tr = self.cfg.train
        phase = self.phase()
        theta = self.det.theta()
        batch = self.sample(theta, tr.batch)
        if phase == "theta":
            terms = self.classical_losses(theta, batch)
        else:
            terms = self.losses(theta, batch)
        self.opt_net.zero_grad()
        self.opt_det.zero_grad()
        terms["loss"].backward()
        if phase in ("net", "both"):
            self.opt_net.step()
        if phase in ("theta", "both"):
            self.opt_det.step()
        self.state.step += 1
        self.state.events += tr.batch
        if (
            phase != "theta"
            and self.state.step % RECALIBRATE_EVERY == 0
            and float(terms["delay_ns"].detach())
            > RECALIBRATE_ABOVE * latency_budget_ns(self.cfg.cost)
        ):
            self.recalibrate_delay(self.det.values()["readout_bits"])
        rec = {k: float(terms[k].detach()) if k in terms else None for k in TERMS}
        rec["delay_scale"] = self.state.delay_scale
        rec.update(self.det.values())
        rec.update({f"frac_bits_{i}": float(v) for i, v in enumerate(self.net.frac_bits.detach())})
        rec["step"] = self.state.step
        return rec

    def recalibrate_delay(self, readout_bits: float) -> None:
        """Level the delay model on alkaid's estimate of the network as it would export now.

        The model gives the gradient; alkaid, the firmware's own estimate, gives the level
        (the model alone was 7-15 % low on trained low-bit networks).
        """
        bits = min(max(round(readout_bits), 1), 24)
        net = self.net.export(bits)
        self.state.delay_scale = alkaid_delay_ns(net) / DEFAULT_DELAY_MODEL.predict(net)

    # -- checkpoints: arrays in .npz, everything else in JSON (no pickle) --
    def save_checkpoint(self, out: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"state": dataclasses.asdict(self.state)}
        for prefix, mod in (("det", self.det), ("net", self.net)):
            for k, v in mod.state_dict().items():
                arrays[f"{prefix}/{k}"] = v.detach().numpy()
        for prefix, opt in (("opt_net", self.opt_net), ("opt_det", self.opt_det)):
            sd = opt.state_dict()
            for idx, st in sd["state"].items():
                for k, v in st.items():
                    arrays[f"{prefix}/{idx}/{k}"] = torch.as_tensor(v).numpy()
            meta[prefix] = sd["param_groups"]
        arrays["gen_state"] = self.gen.get_state().numpy()
        meta["rng_state"] = self.rng.bit_generator.state
        tmp = out / "checkpoint.tmp.npz"
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        tmp.replace(out / "checkpoint.npz")
        (out / "checkpoint.json").write_text(json.dumps(meta))

    def load_checkpoint(self, out: Path) -> None:
        meta = json.loads((out / "checkpoint.json").read_text())
        with np.load(out / "checkpoint.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        for prefix, mod in (("det", self.det), ("net", self.net)):
            mod.load_state_dict(
                {k: torch.as_tensor(arrays[f"{prefix}/{k}"]) for k in mod.state_dict()}
            )
        for prefix, opt in (("opt_net", self.opt_net), ("opt_det", self.opt_det)):
            state: dict[int, dict[str, torch.Tensor]] = {}
            for key, v in arrays.items():
                parts = key.split("/")
                if parts[0] == prefix:
                    state.setdefault(int(parts[1]), {})[parts[2]] = torch.as_tensor(v)
            opt.load_state_dict({"state": state, "param_groups": meta[prefix]})
        self.gen.set_state(torch.as_tensor(arrays["gen_state"]))
        self.rng.bit_generator.state = meta["rng_state"]
        self.state = FitState(**meta["state"])


def latency_budget_ns(cost: CostConfig) -> float:
    """The delay the training aims under: the stage budget times the clock period, less
    ``LATENCY_MARGIN``."""
    return (1.0 - LATENCY_MARGIN) * cost.latency_stages_budget * 1000.0 / cost.clock_mhz


def budget_penalty(
    cost_eur: torch.Tensor | float,
    ebops: torch.Tensor | float,
    delay_ns: torch.Tensor | float,
    c: CostConfig,
) -> torch.Tensor:
    """The steep budget penalties: detector cost, EBOPs and the latency budget (tensors in
    training, floats for a finished design)."""

    def over(x: torch.Tensor | float, budget: float) -> torch.Tensor:
        return torch.relu(torch.as_tensor(x, dtype=torch.float64) / budget - 1) ** 2

    return c.penalty * (
        over(cost_eur, c.detector_budget_eur)
        + over(ebops, c.ebops_budget)
        + over(delay_ns, latency_budget_ns(c))
    )


def load_surrogate(cfg: StudyConfig) -> surrogate.CaloSurrogate:
    """The study's surrogate, frozen, after checking it was trained for this detector space."""
    model = surrogate.load(cfg.train.surrogate)
    r, d, u = model.spec.range, cfg.detector, cfg.utility
    where = f"train.surrogate {cfg.train.surrogate}"
    for key, mine, theirs in (("n_cells", d.n_cells, r.n_cells),
                              ("n_segments", d.n_segments, r.n_segments),
                              ("active", d.active, r.active),
                              ("distance_mm", u.distance_mm, r.distance_mm)):  # fmt: skip
        if mine != theirs:
            raise ConfigError(f"{where}: trained with {key}={theirs!r}, the study has {mine!r}")
    for key, (lo, hi) in r.bounds.items():
        s_lo, s_hi = d.bounds[key]
        if s_lo < lo or s_hi > hi:
            raise ConfigError(
                f"{where}: detector.bounds.{key} [{s_lo}, {s_hi}] leaves its training range "
                f"[{lo}, {hi}]; narrow the bounds or train the surrogate over them"
            )
    if not (r.e_min_gev <= u.e_min_gev and u.e_max_gev <= r.e_max_gev):
        raise ConfigError(f"{where}: utility energies leave its range "
                          f"[{r.e_min_gev}, {r.e_max_gev}] GeV")  # fmt: skip
    needed = set(ABSORBERS) if d.optimize_material else {d.absorber}
    if not needed <= set(r.absorbers):
        raise ConfigError(f"{where}: trained on absorbers {list(r.absorbers)}, "
                          f"the study needs {sorted(needed)}")  # fmt: skip
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def run(cfg: StudyConfig, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train, checkpoint, export and re-evaluate; returns (and writes) the JSON summary."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write_test").write_text("")
        (out / ".write_test").unlink()
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write there ({exc})") from exc
    torch.set_num_threads(1)
    study = Study(cfg)
    if resume and (out / "checkpoint.npz").is_file():
        study.load_checkpoint(out)
        log.info("resumed from step %d", study.state.step)
    tr = cfg.train
    t0 = time.perf_counter()
    start = study.state.step
    with tqdm(total=tr.steps, initial=start, desc="codesign", unit="step") as bar:
        while study.state.step < tr.steps:
            rec = study.train_step()
            step = study.state.step  # == rec["step"]
            if step % tr.log_every == 0 or step == tr.steps:
                study.state.trajectory.append(rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", cost=f"{rec['cost_eur']:.0f}")
            if step % tr.checkpoint_every == 0:
                study.save_checkpoint(out)
            bar.update(1)
    train_s = time.perf_counter() - t0
    study.save_checkpoint(out)
    return finish(study, out, (study.state.step - start) * tr.batch, train_s)


def finish(study: Study, out: Path, new_events: int, train_s: float) -> dict[str, Any]:
    """Round to a buildable design, export it, re-evaluate it on fresh reference events."""
    cfg = study.cfg
    geom = study.det.to_geometry()
    qnet = study.net.export(geom.readout_bits)
    save_qnet(qnet, out / "net.json")
    (out / "design.yaml").write_text(yaml.safe_dump(dataclasses.asdict(geom), sort_keys=False))
    seed = 10_000 + cfg.train.seed
    # one sample of fresh reference events scores the network and the classical trigger
    events = sample_events(geom, cfg.utility, cfg.train.eval_events, seed)
    ev = evaluate_network_on(events, qnet, cfg.utility, seed)
    with torch.no_grad():
        cost = float(detector_cost_eur(geometry_theta(geom), study.ro, cfg.cost))
        ebops = float(study.net.ebops(geom.readout_bits))
    (out / "trajectory.json").write_text(json.dumps(study.state.trajectory, indent=1))
    c = cfg.cost
    delay = alkaid_delay_ns(qnet)
    stages = stages_at(delay, c.clock_mhz)
    summary = {
        "method": cfg.train.method,
        "design": dataclasses.asdict(geom),
        "theta_continuous": study.det.values(),
        "evaluation": ev.to_json(),
        "cost_eur": cost,
        "ebops": ebops,
        "lut_estimate": DEFAULT_LUT_MODEL.predict(qnet),
        "delay_ns": delay,
        "delay_model_ns": DEFAULT_DELAY_MODEL.predict(qnet),
        "latency_stages": stages,
        "clock_mhz": c.clock_mhz,
        "within_budget": cost <= c.detector_budget_eur
        and ebops <= c.ebops_budget
        and stages <= c.latency_stages_budget,
        "train_events": study.state.events,
        "train_events_per_s": new_events / train_s if train_s > 0 else None,
        "steps": study.state.step,
        "config": cfg.to_json(),
        # the same θ with no network: sum of cells and a shower-width cut, on the same events
        "classical_evaluation": evaluate_classical_on(events, geom, cfg.utility, seed).to_json(),
        "files": ["net.json", "net.npz", "design.yaml", "trajectory.json", "trajectories.png"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_trajectories(study.state.trajectory, out / "trajectories.png")
    return summary


def plot_trajectories(traj: list[dict[str, float | None]], path: Path) -> None:
    """One panel per parameter and loss term against the step (None: a term not computed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not traj:
        return
    keys = [k for k in traj[0] if k != "step"]
    cols = 4
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    steps = [r["step"] for r in traj]
    for ax, k in zip(axes.flat, keys, strict=False):
        ax.plot(steps, [np.nan if r[k] is None else r[k] for r in traj])
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
