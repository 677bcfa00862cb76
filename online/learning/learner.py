"""Continual learning of the anomaly detector on the prescaled zero-bias stream.

The learner scores every zero-bias event with the active network (the emulator: the very
integers the trigger computes) and tests windows for drift (``online.drift``). On drift it
(1) recalibrates the menu thresholds of its model to hold the target rates and sends them
(``on_menu``), then, once enough events of the new conditions are in, (2) fine-tunes the VAE
with quantization-aware training on them mixed with a replay buffer of older events (reservoir
sampling, so the network does not forget), exports the qnet IR, verifies it bit for bit against
QKeras, checks rate and signal efficiency on held-out data, registers the version with its
provenance and, if it passes, activates it (``on_model``) with thresholds calibrated for it.
Fine-tuning runs in the caller's thread; the monitoring tap drops what arrives meanwhile.
The training and the bit-exactness check are ``l1forge.models.finetune``; the rules that accept
or reject a candidate are ``acceptance``.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from l1forge.errors import ConfigError, DataFormatError
from l1forge.models.emulator import Emulator
from l1forge.models.finetune import fine_tune, flat_inputs, verify_bitexact
from l1forge.models.qnet import QNet
from l1forge.online.learning.acceptance import (
    Candidate,
    CandidateMetrics,
    choose,
    efficiency_losses,
    final_reasons,
    mean_efficiency,
    rate_errors,
    rate_reasons,
    rate_seeds,
)
from l1forge.online.learning.drift import DriftDetector, DriftReport, expected_fraction
from l1forge.online.learning.registry import ModelRegistry, ModelVersion
from l1forge.online.learning.replay import ReplayBuffer
from l1forge.online.learning.runtime import RuntimeChange, runtime_changes
from l1forge.online.learning.settings import LearnerConfig

if TYPE_CHECKING:
    from l1forge.models.config import NetConfig
    from l1forge.online.datapath.menu import Menu

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptationResult:
    """What one adaptation did: the registered version and whether it went live."""

    version: str
    accepted: bool
    reasons: tuple[str, ...]
    metrics: CandidateMetrics  # of the candidate that went live, or else of the first one
    menu: Menu  # the menu sent after the adaptation (for the accepted or the kept model)
    candidates: tuple[str, ...] = ()  # every version registered by this adaptation
    # "registers": a run-time change went live (thresholds, input scaling; no new bitstream);
    # "bitstream": a trained network went live; "kept": nothing passed, the running network
    # stays with recalibrated thresholds
    path: str = "bitstream"
    why: tuple[str, ...] = ()  # why the run-time candidates were not enough (or what passed)


class State(enum.Enum):
    MONITORING = "monitoring"
    COLLECTING = "collecting"  # drift seen: gathering events of the new conditions


def score(net: QNet, x: np.ndarray, emulator: Emulator | None = None) -> np.ndarray:
    """Real-valued first output (the anomaly score) of ``net`` for hardware inputs."""
    if emulator is not None:
        return emulator.run_float(flat_inputs(x))[:, 0]
    with Emulator(net) as emu:
        return emu.run_float(flat_inputs(x))[:, 0]


def _mean_over_seeds(tpr: Mapping[str, Mapping[str, float]], menu: Menu, model: str) -> float:
    return float(np.mean([mean_efficiency(tpr, s.name) for s in rate_seeds(menu, model)]))


def seed_fractions(menu: Menu, model: str) -> dict[str, tuple[float, float]]:
    """Seed name -> (threshold, expected zero-bias pass fraction) for the drift detector."""
    out = {}
    for s in rate_seeds(menu, model):
        assert s.target_rate_hz is not None  # rate_seeds keeps the seeds with a target
        out[s.name] = (
            float(s.threshold),
            expected_fraction(s.target_rate_hz, menu.input_rate_hz, s.prescale),
        )
    return out


# ---- fine-tuning (l1forge.models.finetune; TensorFlow imported there, lazily) --------------


def net_config_of(version: ModelVersion) -> NetConfig:
    """The NetConfig a version was trained with (stored in its provenance)."""
    from l1forge.models.config import make_config

    raw = version.provenance.get("net_config")
    if raw is None:
        raise ConfigError(
            f"model {version.name} has no net_config in its provenance: register it with "
            "`import_training_run` (or pass net_config) so it can be fine-tuned"
        )
    return make_config({"network": raw}).network


# ---- the learner ----------------------------------------------------------------------------


class Learner:
    """Watches zero-bias events, recalibrates and fine-tunes the active network on drift.

    ``menu`` follows ``online.menu.Menu`` (seeds with model, threshold, prescale,
    target_rate_hz; ``calibrate``; ``to_json``). ``reference_inputs`` are zero-bias events of
    the conditions the active model and menu were made for: the drift reference, and the first
    content of the replay buffer. ``signal_holdout`` (process -> hardware inputs) is simulated
    signal for the efficiency check; without it only the rate is checked. ``reference_signal``
    is signal of the reference conditions: a candidate that forgets them is not activated.
    ``transform_signal`` maps ``signal_holdout`` to the current conditions (a benchmark's injected
    drift). ``on_menu``, ``on_model`` and ``on_scaling`` reach the daemon
    (``ControlClient.set_menu`` / ``set_model`` / ``set_scaling`` or a Pipeline's); with
    ``on_swap`` (``ControlClient.swap``) a trained network goes live together with its menu.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        menu: Menu,
        reference_inputs: np.ndarray,
        *,
        model: str = "ad",
        config: LearnerConfig = LearnerConfig(),
        signal_holdout: Mapping[str, np.ndarray] | None = None,
        reference_signal: Mapping[str, np.ndarray] | None = None,
        transform_signal: Callable[[np.ndarray], np.ndarray] | None = None,
        on_menu: Callable[[Menu], None] | None = None,
        on_model: Callable[[str, Path], None] | None = None,
        on_scaling: Callable[[np.ndarray, np.ndarray], None] | None = None,
        on_swap: Callable[[str, Path, Menu], None] | None = None,
    ):
        version = registry.active
        if version is None:
            raise ConfigError(f"{registry.folder}: no active model; promote a version first")
        if not rate_seeds(menu, model):
            raise ConfigError(f"menu has no seed of model {model!r} with a target_rate_hz")
        self.registry = registry
        self.model = model
        self.config = config
        self.signal_holdout = {k: np.asarray(v) for k, v in (signal_holdout or {}).items()}
        self.reference_signal = {k: np.asarray(v) for k, v in (reference_signal or {}).items()}
        self.transform_signal = transform_signal
        self.on_menu = on_menu
        self.on_model = on_model
        self.on_scaling = on_scaling
        self.on_swap = on_swap
        self.version = version
        self.net = version.load_net()
        self.emulator = Emulator(self.net)
        x_ref = flat_inputs(reference_inputs)
        self._old_inputs = x_ref  # the conditions reference_signal belongs to
        # events of the conditions the live network's scaled inputs were matched to (what the
        # run-time offsets and shifts map new events onto)
        self._trained_inputs = x_ref
        self.replay = ReplayBuffer(config.replay_capacity, x_ref.shape[1], config.seed)
        self.replay.add(x_ref)
        self.menu = menu
        self.detector = self._detector(x_ref)
        # mean signal efficiency of the live configuration on its own conditions (the bar of
        # the run-time path); known from reference_signal, then from each adaptation
        self.live_efficiency: float | None = None
        if self.reference_signal:
            tpr = self._signal_tpr(
                self.net, self._calibrate(score(self.net, x_ref, self.emulator)), old=True
            )
            self.live_efficiency = _mean_over_seeds(tpr, self.menu, model)
        self.state = State.MONITORING
        self._window: list[np.ndarray] = []
        self._new: list[np.ndarray] = []
        self._lumi: list[tuple[int, int]] = []  # (run, lumisection) of the new-conditions data
        self._drift_report: DriftReport | None = None
        self.reports: list[DriftReport] = []
        self.adaptations: list[AdaptationResult] = []
        self.n_seen = 0
        self._lock = threading.Lock()

    # ---- helpers ---------------------------------------------------------------------------
    def _detector(self, x_ref: np.ndarray) -> DriftDetector:
        ref = score(self.net, x_ref, self.emulator)
        return DriftDetector(seed_fractions(self.menu, self.model), ref, x_ref, self.config.drift)

    def _calibrate(self, scores: np.ndarray) -> Menu:
        """The menu with this model's rate seeds recalibrated; every other seed unchanged."""
        own = tuple(s for s in self.menu.seeds if s.model == self.model)
        part = dataclasses.replace(self.menu, seeds=own)
        done = {
            s.name: s for s in part.calibrate({self.model: np.asarray(scores, np.float64)}).seeds
        }
        return dataclasses.replace(
            self.menu, seeds=tuple(done.get(s.name, s) for s in self.menu.seeds)
        )

    def _send_menu(self, menu: Menu) -> None:
        self.menu = menu
        if self.on_menu is not None:
            self.on_menu(menu)

    @staticmethod
    def _count(parts: list[np.ndarray]) -> int:
        return sum(len(p) for p in parts)

    # ---- stream ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the emulator's worker threads."""
        self.emulator.close()

    def __enter__(self) -> Learner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def observe(
        self, objects_hw: np.ndarray, *, run: int = 0, lumisection: int = 0
    ) -> AdaptationResult | None:
        """Feed zero-bias events (N, 19, 3) or (N, 57); returns an adaptation when one ran."""
        x = flat_inputs(objects_hw)
        if x.ndim != 2 or x.shape[1] != self.net.input_specs[0].size:
            raise DataFormatError(
                f"zero-bias events of shape {x.shape}: the network takes "
                f"{self.net.input_specs[0].size} inputs per event"
            )
        with self._lock:
            self.n_seen += len(x)
            if self.state is State.COLLECTING:
                self._new.append(x)
                self._lumi.append((run, lumisection))
                if self._count(self._new) >= self.config.adapt_events:
                    return self._adapt()
                return None
            self._window.append(x)
            self._lumi.append((run, lumisection))
            if self._count(self._window) >= self.config.check_events:
                self._check_window()
                if self.state is State.COLLECTING and (
                    self._count(self._new) >= self.config.adapt_events
                ):
                    return self._adapt()
            return None

    def _check_window(self) -> None:
        x = np.concatenate(self._window)
        self._window = []
        report = self.detector.check(score(self.net, x, self.emulator), x)
        self.reports.append(report)
        if not report.drifted:
            self.replay.add(x)  # clean events become the older data the learner replays
            self._lumi = []
            return
        log.warning("drift on the zero-bias stream: %s", "; ".join(report.reasons))
        self._drift_report = report
        self.state = State.COLLECTING
        self._new = [x]
        # (1) hold the rates now, with the running network, on the drifted window
        self._send_menu(self._calibrate(score(self.net, x, self.emulator)))

    def wait_idle(self) -> None:
        """Return once no ``observe`` call (and the adaptation it may run) is in progress."""
        with self._lock:
            pass

    def force_adaptation(self) -> None:
        """Treat the events from now on as new conditions (an operator's request)."""
        with self._lock:
            self.state = State.COLLECTING
            self._new = list(self._window)
            self._window = []

    # ---- adaptation --------------------------------------------------------------------------
    def _split_new(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x_new = np.concatenate(self._new)
        rng = np.random.default_rng(self.config.seed + len(self.adaptations) + 1)
        perm = rng.permutation(len(x_new))
        n_hold = int(len(x_new) * self.config.holdout_fraction)
        return x_new, x_new[perm[n_hold:]], x_new[perm[:n_hold]]

    def _signal_tpr(self, net: QNet, menu: Menu, old: bool = False) -> dict[str, dict[str, float]]:
        """Signal efficiency per rate seed and process at the thresholds of ``menu`` (on
        ``reference_signal`` as it is when ``old``)."""
        out: dict[str, dict[str, float]] = {}
        with Emulator(net) as emu:
            for name, x in (self.reference_signal if old else self.signal_holdout).items():
                xs = self.transform_signal(x) if self.transform_signal and not old else x
                s = score(net, xs, emu)
                out[name] = {
                    seed.name: float(np.mean(s > seed.threshold))
                    for seed in rate_seeds(menu, self.model)
                }
        return out

    def _adapt(self) -> AdaptationResult:
        x_new, x_fit, x_hold = self._split_new()
        runs = sorted({r for r, _ in self._lumi})
        lumis = [ls for _, ls in self._lumi]
        data = {
            "new_events": len(x_new),
            "train_new_events": len(x_fit),
            "holdout_events": len(x_hold),
            "replay_seen": self.replay.seen,
            "runs": runs,
            "lumisections": [min(lumis), max(lumis)] if lumis else None,
        }
        why: list[str] = []
        if self.config.runtime_first:
            changes = runtime_changes(
                self.net, self._trained_inputs, x_fit, self.config.runtime_kinds
            )
            tried: list[tuple[Candidate, RuntimeChange]] = []
            for i, change in enumerate(changes):
                tried.append((self._runtime_candidate(i, change, x_fit, x_hold), change))
                if self.config.candidate_choice == "first" and tried[-1][0].passed:
                    break
            best_rt = choose([c for c, _ in tried])
            why = [f"{ch.kind}: {'; '.join(c.reasons)}" for c, ch in tried if c.reasons]
            if best_rt is not None:
                change = next(ch for c, ch in tried if c is best_rt)
                why.append(f"{change.kind}: passed every check")
                return self._apply_runtime(best_rt, change, x_new, data, why)
            log.info("run-time changes not enough (%s): training a new network", "; ".join(why))
        net_cfg = net_config_of(self.version)
        parent_weights = self.version.weights_path
        if parent_weights is None:
            raise ConfigError(f"model {self.version.name} has no Keras weights to fine-tune from")
        settings = self.config.settings()
        with tempfile.TemporaryDirectory() as tmp:
            done: list[Candidate] = []
            for i, c in enumerate(settings):
                done.append(
                    self._candidate(i, c, net_cfg, parent_weights, x_fit, x_hold, Path(tmp))
                )
                if self.config.candidate_choice == "first" and done[-1].passed:
                    break
            best = choose(done)
            versions = []
            for d in done:
                chosen = d is best
                reasons = final_reasons(d, best)
                final_menu = self._calibrate(score(d.net, x_new))
                provenance = {
                    **d.provenance,
                    "model": self.model,
                    "net_config": dataclasses.asdict(net_cfg),
                    "data": {**data, "train_replay_events": d.n_replay},
                    "seeds": {
                        "training": d.cfg.seed,
                        "split": self.config.seed + len(self.adaptations) + 1,
                    },
                    "drift": self._drift_report.to_json() if self._drift_report else None,
                    "candidate": {
                        "index": d.index,
                        "tried": len(done),
                        "of": len(settings),
                        "choice": self.config.candidate_choice,
                    },
                    "passed_checks": d.passed,
                    "accepted": chosen,
                    "rejected_because": reasons,
                }
                version = self.registry.register(
                    d.net,
                    provenance,
                    parent=self.version.name,
                    weights=d.weights,
                    menu=final_menu.to_json(),
                    activate=chosen,
                )
                self.registry.verify(version.name)
                versions.append((version, final_menu, reasons, d.metrics))
        pick = done.index(best) if best is not None else 0
        version, final_menu, reasons, metrics = versions[pick]
        if best is not None:
            if self.on_swap is not None:  # the network and its menu in one command
                self._activate(version, notify=False)
                self.menu = final_menu
                self.on_swap(self.model, version.qnet_path, final_menu)
            else:
                self._activate(version)
                self._send_menu(final_menu)
            self._trained_inputs = x_new
            if self.signal_holdout:
                self.live_efficiency = best.efficiency
        else:
            log.warning("model %s rejected: %s", version.name, "; ".join(reasons))
            self._send_menu(self._calibrate(score(self.net, x_new, self.emulator)))
        result = AdaptationResult(
            version.name,
            best is not None,
            tuple(reasons),
            metrics,
            self.menu,
            tuple(v.name for v, *_ in versions),
            "bitstream" if best is not None else "kept",
            tuple(why),
        )
        return self._finish(result, x_new)

    def _finish(self, result: AdaptationResult, x_new: np.ndarray) -> AdaptationResult:
        """The new conditions become the drift reference and join the replay buffer."""
        self.detector = self._detector(x_new)
        self.replay.add(x_new)
        self.state, self._new, self._lumi, self._drift_report = State.MONITORING, [], [], None
        self.adaptations.append(result)
        return result

    # ---- the run-time path (registers; no new bitstream) -----------------------------------
    def _runtime_candidate(
        self, index: int, change: RuntimeChange, x_fit: np.ndarray, x_hold: np.ndarray
    ) -> Candidate:
        """The acceptance checks of a run-time change, plus the efficiency bar of the live
        configuration (``runtime_min_efficiency``)."""
        cfg = self.config
        metrics, reasons, efficiency = self._acceptance(change.net, x_fit, x_hold, cfg)
        if self.signal_holdout and cfg.runtime_min_efficiency > 0:  # 0: no efficiency bar
            bar = self.live_efficiency
            if bar is None:
                reasons.append(
                    "no efficiency of the live configuration to hold (give reference_signal)"
                )
            elif efficiency < cfg.runtime_min_efficiency * bar:
                reasons.append(
                    f"held-out signal efficiency {efficiency:.4f} < "
                    f"{cfg.runtime_min_efficiency:g} x {bar:.4f} of the live configuration on "
                    "its own conditions"
                )
        return Candidate(
            index=index,
            cfg=cfg,
            net=change.net,
            weights=self.version.weights_path,
            n_replay=0,
            metrics=metrics,
            reasons=tuple(reasons),
            efficiency=efficiency,
            provenance={"kind": "registers", "runtime": change.to_json(), "metrics": metrics},
        )

    def _apply_runtime(
        self,
        cand: Candidate,
        change: RuntimeChange,
        x_new: np.ndarray,
        data: dict[str, object],
        why: list[str],
    ) -> AdaptationResult:
        """Write what passed through the registers: the scaling (a registered version with the
        parent's weights and the new IR) and the thresholds calibrated on all new events."""
        final_menu = self._calibrate(score(cand.net, x_new))
        names: tuple[str, ...] = ()
        if change.offset is not None and change.shift is not None:
            prov = self.version.provenance
            version = self.registry.register(
                cand.net,
                {
                    **cand.provenance,
                    "model": self.model,
                    "net_config": prov.get("net_config"),
                    "training": prov.get("training", {}),
                    "data": data,
                    "drift": self._drift_report.to_json() if self._drift_report else None,
                    "passed_checks": True,
                    "accepted": True,
                    "rejected_because": [],
                    "path_why": why,
                },
                parent=self.version.name,
                weights=self.version.weights_path,
                menu=final_menu.to_json(),
                activate=True,
            )
            self.registry.verify(version.name)
            self._activate(version, notify=False)
            if self.on_scaling is not None:
                self.on_scaling(change.offset, change.shift)
            elif self.on_model is not None:  # a daemon without set_scaling: the same network
                self.on_model(self.model, version.qnet_path)
            self._trained_inputs = x_new
            names = (version.name,)
        self._send_menu(final_menu)
        if self.signal_holdout:
            self.live_efficiency = cand.efficiency
        log.info("adapted through the registers (%s)", change.kind)
        result = AdaptationResult(
            self.version.name,
            True,
            (),
            cand.metrics,
            self.menu,
            names,
            "registers",
            tuple(why),
        )
        return self._finish(result, x_new)

    def _candidate(
        self,
        index: int,
        cfg: LearnerConfig,
        net_cfg: NetConfig,
        parent_weights: Path,
        x_fit: np.ndarray,
        x_hold: np.ndarray,
        tmp: Path,
    ) -> Candidate:
        """Fine-tune, verify and check one candidate setting (not registered yet)."""
        n_replay = int(len(x_fit) * cfg.replay_fraction / (1.0 - cfg.replay_fraction))
        x_replay = self.replay.sample(n_replay)
        x_train = np.concatenate([x_fit, x_replay])
        log.info(
            "candidate %d: fine-tuning %s on %d new + %d replayed events (%d held out)",
            index,
            self.version.name,
            len(x_fit),
            len(x_replay),
            len(x_hold),
        )
        beta_kl = cfg.beta_kl
        if beta_kl is None:
            beta_kl = float(self.version.provenance.get("training", {}).get("beta_kl", 0.5))
        tuned = fine_tune(
            net_cfg,
            self.net,
            parent_weights,
            x_train,
            cfg,
            tmp / f"candidate{index}.weights.h5",
            beta_kl,
            {"new": x_fit, "mix": x_train, "none": None}[cfg.refit_scaling],
            x_replay,
        )
        n_vectors = verify_bitexact(tuned.deploy, tuned.net, cfg.verify_vectors, cfg.seed)
        metrics, reasons, efficiency = self._acceptance(tuned.net, x_fit, x_hold, cfg)
        training = {
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "learning_rate": cfg.learning_rate,
            "beta_kl": beta_kl,
            "replay_fraction": cfg.replay_fraction,
            "refit_scaling": cfg.refit_scaling,
            "distill_weight": cfg.distill_weight,
            "distill_target": cfg.distill_target,
            "anchor_weight": cfg.anchor_weight,
            "reinit": cfg.reinit,
        }
        return Candidate(
            index=index,
            cfg=cfg,
            net=tuned.net,
            weights=tuned.weights,
            n_replay=len(x_replay),
            metrics=metrics,
            reasons=tuple(reasons),
            efficiency=efficiency,
            provenance={
                "kind": "retrain" if cfg.reinit else "fine_tune",
                "training": training,
                "verification": {"bitexact_vectors": n_vectors, "equal": True},
                "metrics": metrics,
            },
        )

    def _acceptance(
        self, candidate: QNet, x_fit: np.ndarray, x_hold: np.ndarray, cfg: LearnerConfig
    ) -> tuple[CandidateMetrics, list[str], float]:
        """Held-out rate of the candidate, its signal efficiency against the parent's (both
        recalibrated on the same new events) and, with ``reference_signal``, against the parent's
        on the old conditions (both calibrated on the reference zero bias). Returns the metrics,
        the reasons to reject and the mean held-out efficiency (for the choice of candidate)."""
        cand_menu = self._calibrate(score(candidate, x_fit))
        parent_menu = self._calibrate(score(self.net, x_fit, self.emulator))
        rates = rate_errors(
            cand_menu, self.model, score(candidate, x_hold), self.config.max_rate_error
        )
        reasons = rate_reasons(rates)
        metrics: CandidateMetrics = {"holdout_rate": rates}
        efficiency = 0.0
        seeds = [s.name for s in rate_seeds(cand_menu, self.model)]
        if self.signal_holdout:
            tpr_c = self._signal_tpr(candidate, cand_menu)
            tpr_p = self._signal_tpr(self.net, parent_menu)
            metrics["signal_tpr"] = tpr_c
            metrics["parent_signal_tpr"] = tpr_p
            reasons += efficiency_losses(tpr_c, tpr_p, seeds, cfg.max_tpr_loss)
            efficiency = float(np.mean([mean_efficiency(tpr_c, s) for s in seeds]))
        if self.reference_signal:
            tpr_c = self._signal_tpr(
                candidate, self._calibrate(score(candidate, self._old_inputs)), old=True
            )
            tpr_p = self._signal_tpr(
                self.net, self._calibrate(score(self.net, self._old_inputs, self.emulator)), True
            )
            metrics["old_conditions"] = {"signal_tpr": tpr_c, "parent_signal_tpr": tpr_p}
            checked = [s for s in seeds if not cfg.old_check_seeds or s in cfg.old_check_seeds]
            reasons += efficiency_losses(
                tpr_c, tpr_p, checked, cfg.max_old_tpr_loss, old_conditions=True
            )
        return metrics, reasons, efficiency

    def _activate(self, version: ModelVersion, notify: bool = True) -> None:
        self.version = version
        self.net = version.load_net()
        self.emulator.close()
        self.emulator = Emulator(self.net)
        if notify and self.on_model is not None:
            self.on_model(self.model, version.qnet_path)
        log.info("model %s activated", version.name)
