"""Re-evaluation of a design on the stochastic reference simulator with fresh events."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from l1forge.models.emulator import Emulator
from l1forge.models.qnet import QNet
from l1forge.offline.config import UtilityConfig
from l1forge.sim import calo
from l1forge.sim.calo import Geometry


@dataclass(frozen=True)
class Evaluation:
    """Utility and its parts, measured on ``n_events`` fresh simulated events."""

    utility: float
    photon_efficiency: float
    pi0_rate: float
    resolution: float
    n_events: int
    seed: int

    def to_json(self) -> dict:
        return asdict(self)


def sample_events(geom: Geometry, u: UtilityConfig, n_events: int, seed: int) -> calo.CaloEvents:
    """Half photons, half π0, energies uniform in [e_min, e_max], from the reference simulator."""
    rng = np.random.default_rng(seed)
    e = rng.uniform(u.e_min_gev, u.e_max_gev, n_events)
    is_pi0 = np.arange(n_events) % 2 == 1
    return calo.simulate(geom, e, is_pi0, seed=rng, distance_mm=u.distance_mm)


def utility_from(
    e_true: np.ndarray, is_pi0: np.ndarray, e_pred: np.ndarray, score: np.ndarray, u: UtilityConfig
) -> tuple[float, float, float]:
    """(utility, photon efficiency at the π0 acceptance ``pi0_rate``, resolution near threshold).

    Resolution: the standard deviation of (E_pred - E)/E for photons within ±20% of the
    threshold, after removing their mean bias (a calibration constant).
    """
    pi0_scores = np.sort(score[is_pi0])
    cut = pi0_scores[int(np.ceil((1 - u.pi0_rate) * len(pi0_scores))) - 1]
    eff = float(np.mean(score[~is_pi0] > cut))
    near = (~is_pi0) & (np.abs(e_true / u.threshold_gev - 1) < 0.2)
    rel = e_pred[near] / e_true[near]
    resolution = float(np.std(rel / rel.mean())) if near.sum() > 1 else float("nan")
    return eff - u.resolution_weight * resolution, eff, resolution


def evaluate_network(
    geom: Geometry, net: QNet, u: UtilityConfig, n_events: int, seed: int
) -> Evaluation:
    """Run the exported network through the bit-exact emulator on fresh reference events."""
    return evaluate_network_on(sample_events(geom, u, n_events, seed), net, u, seed)


def evaluate_network_on(ev: calo.CaloEvents, net: QNet, u: UtilityConfig, seed: int) -> Evaluation:
    """The network's utility on given events (``seed``: the one they were drawn with)."""
    n_events = len(ev.e_true_gev)
    with Emulator(net) as emu:
        out = emu.run_float(ev.adc.reshape(n_events, -1))
    scale = float(net.provenance.get("energy_scale_gev", 1.0))
    util, eff, res = utility_from(ev.e_true_gev, ev.is_pi0, out[:, 0] * scale, out[:, 1], u)
    return Evaluation(util, eff, u.pi0_rate, res, n_events, seed)
