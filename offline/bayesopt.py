"""Black-box baseline: Bayesian optimization of θ (optuna TPE), the network retrained per point.

Each trial fixes θ, trains the quantized network from scratch on the differentiable model
(as the ``reference`` method does) and scores the exported network on the stochastic
reference simulator. Every simulated event is counted, training and scoring alike, so the
event budget can be compared with the joint optimizer's.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from l1forge.models.qnet import QNet
from l1forge.offline.codesign import Study
from l1forge.offline.config import DEFAULT_BOUNDS, StudyConfig
from l1forge.offline.detector import detector_cost_eur, geometry_theta
from l1forge.offline.reevaluate import evaluate_network
from l1forge.sim.calo import Geometry
from l1forge.sim.materials import ABSORBERS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trial:
    """One black-box evaluation; ``utility`` excludes the budget penalty."""

    number: int
    params: dict[str, Any]
    utility: float
    events_so_far: int


@dataclass(frozen=True)
class BayesOptResult:
    trials: tuple[Trial, ...]
    best_geometry: Geometry
    best_net: QNet
    events: int


def _trial_config(cfg: StudyConfig, params: dict[str, Any], steps: int) -> StudyConfig:
    det = cfg.detector
    init = dict(det.init)
    for k in DEFAULT_BOUNDS:
        lo, hi = det.bounds[k]
        eps = 1e-6 * (hi - lo)
        init[k] = min(max(float(params[k]), lo + eps), hi - eps)
    det = dataclasses.replace(det, init=init, absorber=params["absorber"], optimize_material=False)
    tr = dataclasses.replace(cfg.train, method="reference", steps=steps)
    return dataclasses.replace(cfg, detector=det, train=tr)


def run_bayesopt(
    cfg: StudyConfig, n_trials: int, steps_per_trial: int, eval_events: int, seed: int = 0
) -> BayesOptResult:
    """Optimize θ by TPE; returns every trial with the running count of simulated events."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    trials: list[Trial] = []
    events = 0
    best: tuple[float, Geometry, QNet] | None = None
    for i in tqdm(range(n_trials), desc="bayesopt", unit="trial"):
        ot = study.ask()
        params: dict[str, Any] = {
            k: ot.suggest_float(k, *cfg.detector.bounds[k]) for k in DEFAULT_BOUNDS
        }
        params["absorber"] = ot.suggest_categorical("absorber", list(ABSORBERS))
        tcfg = _trial_config(cfg, params, steps_per_trial)
        s = Study(dataclasses.replace(tcfg, train=dataclasses.replace(tcfg.train, seed=seed + i)))
        for _ in range(steps_per_trial):
            s.train_step()
        geom = s.det.to_geometry()
        net = s.net.export(geom.readout_bits)
        ev = evaluate_network(geom, net, cfg.utility, eval_events, seed=20_000 + 1000 * seed + i)
        events += s.state.events + eval_events
        with torch.no_grad():
            cost = float(detector_cost_eur(geometry_theta(geom), s.ro, cfg.cost))
            ebops = float(s.net.ebops(geom.readout_bits))
        c = cfg.cost
        penalty = c.penalty * (
            max(cost / c.detector_budget_eur - 1, 0) ** 2 + max(ebops / c.ebops_budget - 1, 0) ** 2
        )
        # the same steep budget penalties the joint optimizer sees
        study.tell(ot, ev.utility - penalty)
        trials.append(Trial(i, params, ev.utility, events))
        if best is None or ev.utility - penalty > best[0]:
            best = (ev.utility - penalty, geom, net)
    assert best is not None
    return BayesOptResult(tuple(trials), best[1], best[2], events)
