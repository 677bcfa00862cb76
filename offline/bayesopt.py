"""Black-box baseline: Bayesian optimization of θ (optuna TPE), the network retrained per point.

Each trial fixes θ, trains the quantized network from scratch on the differentiable model
(as the ``reference`` method does) and scores the exported network on the stochastic
reference simulator. Every simulated event is counted, training and scoring alike, so the
event budget can be compared with the joint optimizer's.

Run to a crossing (``target``): each trial that becomes the best so far by its own score is
re-evaluated on fresh events exactly as the joint optimizer's final design is (same number of
events, same seed); the search stops at the first re-evaluated utility (minus the budget
penalty) that reaches ``target``. Its event count is every trial's training and scoring events
up to it plus that one re-evaluation, as the joint optimizer's count is its training events
plus its one re-evaluation. A trial's own score is not used for the crossing: the best of n
noisy scores overstates the design.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from l1forge.models.qnet import QNet
from l1forge.offline.codesign import Study, budget_penalty
from l1forge.offline.config import DEFAULT_BOUNDS, StudyConfig
from l1forge.offline.detector import detector_cost_eur, geometry_theta
from l1forge.offline.latency_model import alkaid_delay_ns
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
    penalty: float = 0.0
    reevaluated: float | None = None  # utility on fresh events, for a new best trial


@dataclass(frozen=True)
class BayesOptResult:
    trials: tuple[Trial, ...]
    best_geometry: Geometry
    best_net: QNet
    events: int
    crossing_trial: int | None = None  # first trial whose re-evaluation reached the target
    crossing_events: int | None = None  # simulated events up to it, its re-evaluation included


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
    cfg: StudyConfig,
    n_trials: int,
    steps_per_trial: int,
    eval_events: int,
    seed: int = 0,
    *,
    target: float | None = None,
    reevaluate_seed: int | None = None,
) -> BayesOptResult:
    """Optimize θ by TPE; returns every trial with the running count of simulated events.

    With ``target``, new best trials are re-evaluated on ``eval_events`` fresh events of seed
    ``reevaluate_seed`` (default: the joint optimizer's, 10000 + ``cfg.train.seed``) and the
    search stops at the first that reaches it; ``n_trials`` is then the cap.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    trials: list[Trial] = []
    events = 0
    best: tuple[float, Geometry, QNet] | None = None
    if reevaluate_seed is None:
        reevaluate_seed = 10_000 + cfg.train.seed
    crossing: tuple[int, int] | None = None
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
        # the same steep budget penalties the joint optimizer sees; the design is finished, so
        # its delay is alkaid's estimate itself rather than the model of it
        penalty = float(budget_penalty(cost, ebops, alkaid_delay_ns(net), cfg.cost))
        study.tell(ot, ev.utility - penalty)
        fresh: float | None = None
        if best is None or ev.utility - penalty > best[0]:
            best = (ev.utility - penalty, geom, net)
            if target is not None:
                again = evaluate_network(geom, net, cfg.utility, eval_events, reevaluate_seed)
                fresh = again.utility
        trials.append(Trial(i, params, ev.utility, events, penalty, fresh))
        if fresh is not None and target is not None and fresh - penalty >= target:
            crossing = (i, events + eval_events)
            log.info("trial %d reached %.4f on fresh events (target %.4f)", i, fresh, target)
            break
    assert best is not None
    return BayesOptResult(
        tuple(trials), best[1], best[2], events,
        crossing_trial=None if crossing is None else crossing[0],
        crossing_events=None if crossing is None else crossing[1],
    )  # fmt: skip
