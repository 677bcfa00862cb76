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
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import logging
import math
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from l1forge.models.emulator import Emulator
from l1forge.models.qnet import QNet
from l1forge.online.datapath.wire import TOPIC_ZERO_BIAS
from l1forge.online.learning.drift import DriftConfig, DriftDetector, DriftReport, expected_fraction
from l1forge.online.learning.registry import ModelRegistry, ModelVersion

from l1forge.errors import ConfigError, DataFormatError, L1ForgeError

log = logging.getLogger(__name__)


class VerificationError(L1ForgeError, RuntimeError):
    """An exported IR does not reproduce its QKeras model bit for bit: it must not be deployed."""


@dataclass(frozen=True)
class LearnerConfig:
    """Windows, fine-tuning and acceptance settings of the continual learner."""

    check_events: int = 5000  # zero-bias events per drift-test window
    adapt_events: int = 15000  # events of the new conditions collected before fine-tuning
    holdout_fraction: float = 0.2  # of those, kept out of training for the acceptance checks
    replay_capacity: int = 20000  # reservoir of older events
    replay_fraction: float = 0.5  # share of replayed events in the fine-tuning set
    epochs: int = 30  # the setting measured in benchmarks/continual.py
    batch_size: int = 512
    learning_rate: float = 1e-3
    beta_kl: float | None = None  # None: the parent's training value (0.5 when unknown)
    seed: int = 0
    max_rate_error: float = 0.10  # relative, or 3 Poisson sigma when that is larger
    max_tpr_loss: float = 0.10  # relative loss of held-out signal efficiency vs the parent
    verify_vectors: int = 20000  # random vectors besides the corners for the bit-exact check
    # input scaling of the fine-tuned firmware: refitted on the "new" events, on the training
    # "mix" (new + replayed), or the parent's ("none")
    refit_scaling: str = "new"
    # against forgetting: distillation of the parent's latent means (mu) on replayed old events,
    # as a fraction of the parent's mean sum(mu**2) there, and an L2 anchor of the weights to
    # the parent's (relative to the parent's mean squared weight); 0 switches a term off
    distill_weight: float = 0.0
    anchor_weight: float = 0.0
    distill_target: str = "mu"  # "mu": every latent mean; "score": only sum(mu**2)
    reinit: bool = False  # train from fresh weights instead of the parent's (a retraining)
    # held-out signal efficiency on the old conditions (``reference_signal`` at thresholds
    # calibrated on the reference zero bias): relative loss vs the parent allowed
    max_old_tpr_loss: float = 0.10
    old_check_seeds: tuple[str, ...] = ()  # the rate seeds that check; empty: every rate seed
    # several fine-tune settings tried per adaptation (overrides of these fields, e.g.
    # {"seed": 2} or {"reinit": True, "replay_fraction": 0.0}); every one trained is registered.
    # candidate_choice "first": tried in order, the first that passes goes live (the rest are not
    # trained); "best": all are trained, the passing one with the best held-out efficiency wins.
    # Default: the fine-tune, then retrainings on the new events alone (benchmarks/continual.py)
    candidates: tuple[Mapping[str, Any], ...] = (
        {},
        {"reinit": True, "replay_fraction": 0.0},
        {"reinit": True, "replay_fraction": 0.0, "seed": 2},
    )
    candidate_choice: str = "first"
    drift: DriftConfig = dataclasses.field(default_factory=DriftConfig)

    def __post_init__(self) -> None:
        if self.check_events < self.drift.min_events:
            raise ConfigError("learner.check_events must be >= drift.min_events")
        if not 0.0 < self.holdout_fraction < 0.9 or not 0.0 <= self.replay_fraction < 1.0:
            raise ConfigError("learner.holdout_fraction in (0, 0.9), replay_fraction in [0, 1)")
        if self.refit_scaling not in ("new", "mix", "none"):
            raise ConfigError("learner.refit_scaling: one of 'new', 'mix', 'none'")
        if self.adapt_events < self.check_events:
            raise ConfigError("learner.adapt_events must be >= learner.check_events")
        if self.distill_weight < 0.0 or self.anchor_weight < 0.0:
            raise ConfigError("learner.distill_weight and learner.anchor_weight must be >= 0")
        if self.candidate_choice not in ("first", "best"):
            raise ConfigError("learner.candidate_choice: one of 'first', 'best'")
        if self.distill_target not in ("mu", "score"):
            raise ConfigError("learner.distill_target: one of 'mu', 'score'")
        for over in self.candidates:
            bad = set(over) - (_CANDIDATE_FIELDS - {"candidates", "drift"})
            if bad:
                raise ConfigError(
                    f"learner.candidates: {sorted(bad)} cannot vary per candidate; use fields "
                    "such as seed, epochs, learning_rate, replay_fraction, distill_weight, reinit"
                )
            dataclasses.replace(self, candidates=(), **over)  # validates the values

    def settings(self) -> list[LearnerConfig]:
        """The fine-tune configurations tried in one adaptation."""
        return [dataclasses.replace(self, candidates=(), **o) for o in self.candidates] or [self]


_CANDIDATE_FIELDS = {f.name for f in dataclasses.fields(LearnerConfig)}


class ReplayBuffer:
    """A uniform sample of every event offered so far (reservoir sampling, Vitter's algorithm R)."""

    def __init__(self, capacity: int, n_features: int, seed: int = 0):
        if capacity < 1:
            raise ConfigError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.data = np.zeros((capacity, n_features), dtype=np.int64)
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def add(self, x: np.ndarray) -> None:
        """Offer rows of ``x``; each of the ``seen`` events is kept with equal probability."""
        x = np.asarray(x, dtype=np.int64)
        free = max(0, self.capacity - self.seen)
        head = x[:free]
        self.data[self.seen : self.seen + len(head)] = head
        self.seen += len(head)
        for row in x[free:]:
            self.seen += 1
            j = int(self._rng.integers(0, self.seen))
            if j < self.capacity:
                self.data[j] = row

    def sample(self, n: int) -> np.ndarray:
        """``n`` distinct stored events (all of them when fewer are stored)."""
        k = len(self)
        idx = self._rng.choice(k, size=min(n, k), replace=False)
        return self.data[:k][idx]


@dataclass(frozen=True)
class AdaptationResult:
    """What one adaptation did: the registered version and whether it went live."""

    version: str
    accepted: bool
    reasons: tuple[str, ...]
    metrics: dict[str, Any]
    menu: Any  # the menu sent after the adaptation (for the accepted or the kept model)
    candidates: tuple[str, ...] = ()  # every version registered by this adaptation


class State(enum.Enum):
    MONITORING = "monitoring"
    COLLECTING = "collecting"  # drift seen: gathering events of the new conditions


def _flat_inputs(objects_hw: np.ndarray) -> np.ndarray:
    x = np.asarray(objects_hw)
    return x.reshape(len(x), -1).astype(np.int64, copy=False)


def score(net: QNet, x: np.ndarray, emulator: Emulator | None = None) -> np.ndarray:
    """Real-valued first output (the anomaly score) of ``net`` for hardware inputs."""
    emu = emulator or Emulator(net)
    return emu.run_float(_flat_inputs(x))[:, 0]


def rate_seeds(menu: Any, model: str) -> list[Any]:
    """The seeds of ``model`` that have a target rate (the ones calibration sets)."""
    return [s for s in menu.seeds if s.model == model and s.target_rate_hz is not None]


def seed_fractions(menu: Any, model: str) -> dict[str, tuple[float, float]]:
    """Seed name -> (threshold, expected zero-bias pass fraction) for the drift detector."""
    return {
        s.name: (
            float(s.threshold),
            expected_fraction(s.target_rate_hz, menu.input_rate_hz, s.prescale),
        )
        for s in rate_seeds(menu, model)
    }


def rate_agreement(n_pass: int, expected: float, rel_tol: float) -> bool:
    """|observed - expected| within ``rel_tol`` of expected, or 3 Poisson sigma if larger."""
    return abs(n_pass - expected) <= max(rel_tol * expected, 3.0 * math.sqrt(max(expected, 1.0)))


# ---- fine-tuning (TensorFlow, imported lazily) ----------------------------------------------


def net_config_of(version: ModelVersion) -> Any:
    """The NetConfig a version was trained with (stored in its provenance)."""
    from l1forge.models.config import make_config

    raw = version.provenance.get("net_config")
    if raw is None:
        raise ConfigError(
            f"model {version.name} has no net_config in its provenance: register it with "
            "`import_training_run` (or pass net_config) so it can be fine-tuned"
        )
    return make_config({"network": raw}).network


def _scaling_of(net: QNet) -> Any:
    from l1forge.models.networks import InputScaling

    lay = net.layer("scale")
    return InputScaling(offset=lay.arrays["offset"].copy(), shift=lay.arrays["shift"].copy())


@dataclass(frozen=True)
class FineTuned:
    """A fine-tuned network: its float64 deploy model, exported IR and saved weights."""

    deploy: Any
    net: QNet
    weights: Path


def _rescaled_vae(net_cfg: Any, old: Any, new: Any, parent: Any, beta_kl: float) -> Any:
    """A VAE on input scaling ``new`` computing what ``parent`` (on ``old``) computes.

    Scaled inputs relate by x_old = x_new * 2**(s_new - s_old) + (o_new - o_old) * 2**-s_old,
    so the first dense layer takes W * 2**(s_new - s_old) and b + W^T (o_new - o_old) 2**-s_old
    (exact before quantization; quantization-aware training then settles the rest).
    """
    from l1forge.models import networks

    m = networks.vae_models(net_cfg, new, beta_kl)
    src = {layer.name: layer for layer in parent.vae.layers}
    for layer in m.vae.layers:
        if layer.weights and layer.name != "scale":
            layer.set_weights(src[layer.name].get_weights())
    dense = m.vae.get_layer("dense0")
    w, b = (np.asarray(a, np.float64) for a in dense.get_weights())
    s_old, s_new = old.shift.astype(np.float64), new.shift.astype(np.float64)
    delta = (new.offset - old.offset).astype(np.float64) * 2.0**-s_old
    dense.set_weights([w * (2.0 ** (s_new - s_old))[:, None], b + delta @ w])
    return m


def fine_tune(
    net_cfg: Any,
    parent_net: QNet,
    parent_weights: Path,
    x_train: np.ndarray,
    cfg: LearnerConfig,
    out_weights: Path,
    beta_kl: float = 0.5,
    scaling_events: np.ndarray | None = None,
    old_events: np.ndarray | None = None,
) -> FineTuned:
    """QAT of the VAE from the parent's weights on ``x_train``; export its encoder to the IR.

    With ``scaling_events`` the firmware's input offsets and shifts are refitted on them (the
    new conditions) and the first layer is rewritten to match before training. ``old_events``
    (older conditions) carry the distillation term when ``cfg.distill_weight`` > 0.
    """
    import tensorflow as tf
    from l1forge.models import networks
    from l1forge.models.config import Config, TrainConfig, config_to_dict
    from l1forge.models.export import export_qnet

    if net_cfg.kind != "ad":
        raise ConfigError("continual fine-tuning is implemented for the VAE anomaly detector only")
    scaling = _scaling_of(parent_net)
    tf.keras.utils.set_random_seed(cfg.seed)
    m = networks.vae_models(net_cfg, scaling, beta_kl)
    m.vae.load_weights(str(parent_weights))
    m_parent = m
    if scaling_events is not None:
        new = networks.fit_input_scaling(_flat_inputs(scaling_events))
        m = _rescaled_vae(net_cfg, scaling, new, m, beta_kl)
        scaling = new
    if cfg.reinit:  # a retraining from freshly initialised weights (seeded), same architecture
        m = networks.vae_models(net_cfg, scaling, beta_kl)
    parent_mu = None
    if cfg.distill_weight > 0.0:
        if old_events is None or len(old_events) == 0:
            raise ConfigError("learner.distill_weight > 0 needs replayed old events to distil on")
        parent_mu = _latent_means(m_parent, old_events)
    _train(m, x_train, cfg, old_events, parent_mu)
    m.vae.save_weights(str(out_weights))
    deploy = networks.deploy_model(net_cfg, scaling, m.hardware)
    train_cfg = TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        beta_kl=beta_kl,
        seed=cfg.seed,
    )
    config = config_to_dict(Config(network=net_cfg, training=train_cfg))
    net = export_qnet(deploy, name=parent_net.name, config=config)
    return FineTuned(deploy, net, out_weights)


def _latent_means(m: Any, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Quantized latent means (the ``mu`` layer) of a VAE for hardware events (N, features)."""
    import tensorflow as tf

    mu = tf.keras.Model(m.vae.input, m.vae.get_layer("mu").output)
    return np.asarray(mu.predict(_flat_inputs(x).astype(np.float32), batch_size, verbose=0))


_ENCODER_PREFIXES = ("dense", "mu_dense")


def _train(
    m: Any, x_train: np.ndarray, cfg: LearnerConfig, x_old: np.ndarray | None, mu_old: Any
) -> None:
    """Adam on the VAE loss over ``x_train`` plus the anti-forgetting terms of ``cfg``.

    Distillation: mean over a batch of old events of sum((mu - mu_parent)**2), divided by the
    parent's mean sum(mu**2) on them. Anchor: sum((w - w_parent)**2) / sum(w_parent**2) over the
    hardware encoder's weights (the weights the training starts from).
    """
    import tensorflow as tf

    rng = np.random.default_rng(cfg.seed)
    x_train = np.asarray(x_train, np.float32)
    variables = m.vae.trainable_variables
    optimizer = tf.keras.optimizers.Adam(cfg.learning_rate)
    mu_model = tf.keras.Model(m.vae.input, m.vae.get_layer("mu").output)
    anchored = [
        v
        for layer in m.vae.layers
        if layer.name.startswith(_ENCODER_PREFIXES)
        for v in layer.trainable_weights
    ]
    anchors = [tf.constant(v.numpy()) for v in anchored]
    anchor_norm = float(sum(np.sum(np.square(a.numpy())) for a in anchors)) or 1.0
    distill = cfg.distill_weight > 0.0 and mu_old is not None
    if distill:
        x_old = np.asarray(_flat_inputs(x_old), np.float32)
        mu_old = np.asarray(mu_old, np.float32)
        distill_norm = float(np.mean(np.sum(np.square(mu_old), axis=1))) or 1.0
        if cfg.distill_target == "score":
            mu_old = np.sum(np.square(mu_old), axis=1, keepdims=True)
            distill_norm = float(np.mean(np.square(mu_old))) or 1.0

    @tf.function
    def step(xb, ob, tb):
        with tf.GradientTape() as tape:
            m.vae(xb, training=True)
            loss = tf.add_n(m.vae.losses)
            if distill:
                mu_b = mu_model(ob, training=True)
                if cfg.distill_target == "score":
                    mu_b = tf.reduce_sum(tf.square(mu_b), axis=1, keepdims=True)
                diff = mu_b - tb
                d = tf.reduce_mean(tf.reduce_sum(tf.square(diff), axis=1)) / distill_norm
                loss = loss + cfg.distill_weight * d
            if cfg.anchor_weight > 0.0:
                a = tf.add_n(
                    [
                        tf.reduce_sum(tf.square(v - c))
                        for v, c in zip(anchored, anchors, strict=True)
                    ]
                )
                loss = loss + cfg.anchor_weight * a / anchor_norm
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    n, bs = len(x_train), cfg.batch_size
    empty = np.zeros((0, x_train.shape[1]), np.float32)
    for _ in range(cfg.epochs):
        order = rng.permutation(n)
        old_order = rng.permutation(len(x_old)) if distill else None
        for k, i in enumerate(range(0, n, bs)):
            xb = x_train[order[i : i + bs]]
            if distill:
                j = np.take(old_order, np.arange(k * bs, k * bs + len(xb)), mode="wrap")
                ob, tb = x_old[j], mu_old[j]
            else:
                ob, tb = empty, np.zeros((0, 1), np.float32)
            step(xb, ob, tb)


def verify_bitexact(deploy: Any, net: QNet, n_random: int, seed: int = 0) -> int:
    """QKeras exact predict == emulator on the corners plus ``n_random`` vectors; returns count."""
    from l1forge.models.networks import exact_predict
    from l1forge.models.vectors import bitexact_vectors

    x = bitexact_vectors(net, n_random, seed=seed)
    y_keras = exact_predict(deploy, x)
    y_emu = Emulator(net).run_float(x)
    if y_keras.shape != y_emu.shape or not np.array_equal(y_keras, y_emu):
        bad = int(np.count_nonzero(np.any(y_keras != y_emu, axis=1)))
        raise VerificationError(
            f"exported IR {net.name!r} differs from its QKeras model on {bad} of {len(x)} "
            "vectors: not deployed (report this network's config as an exporter bug)"
        )
    return len(x)


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
    drift). ``on_menu`` and
    ``on_model`` reach the daemon (``ControlClient.set_menu`` / ``set_model`` or a Pipeline's).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        menu: Any,
        reference_inputs: np.ndarray,
        *,
        model: str = "ad",
        config: LearnerConfig = LearnerConfig(),
        signal_holdout: Mapping[str, np.ndarray] | None = None,
        reference_signal: Mapping[str, np.ndarray] | None = None,
        transform_signal: Callable[[np.ndarray], np.ndarray] | None = None,
        on_menu: Callable[[Any], None] | None = None,
        on_model: Callable[[str, Path], None] | None = None,
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
        self.version = version
        self.net = version.load_net()
        self.emulator = Emulator(self.net)
        x_ref = _flat_inputs(reference_inputs)
        self._old_inputs = x_ref  # the conditions reference_signal belongs to
        self.replay = ReplayBuffer(config.replay_capacity, x_ref.shape[1], config.seed)
        self.replay.add(x_ref)
        self.menu = menu
        self.detector = self._detector(x_ref)
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

    def _calibrate(self, scores: np.ndarray) -> Any:
        """The menu with this model's rate seeds recalibrated; every other seed unchanged."""
        own = tuple(s for s in self.menu.seeds if s.model == self.model)
        part = dataclasses.replace(self.menu, seeds=own)
        done = {
            s.name: s for s in part.calibrate({self.model: np.asarray(scores, np.float64)}).seeds
        }
        return dataclasses.replace(
            self.menu, seeds=tuple(done.get(s.name, s) for s in self.menu.seeds)
        )

    def _send_menu(self, menu: Any) -> None:
        self.menu = menu
        if self.on_menu is not None:
            self.on_menu(menu)

    @staticmethod
    def _count(parts: list[np.ndarray]) -> int:
        return sum(len(p) for p in parts)

    # ---- stream ------------------------------------------------------------------------------
    def observe(
        self, objects_hw: np.ndarray, *, run: int = 0, lumisection: int = 0
    ) -> AdaptationResult | None:
        """Feed zero-bias events (N, 19, 3) or (N, 57); returns an adaptation when one ran."""
        x = _flat_inputs(objects_hw)
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

    def _signal_tpr(self, net: QNet, menu: Any, old: bool = False) -> dict[str, dict[str, float]]:
        """Signal efficiency per rate seed and process at the thresholds of ``menu`` (on
        ``reference_signal`` as it is when ``old``)."""
        emu = Emulator(net)
        out: dict[str, dict[str, float]] = {}
        for name, x in (self.reference_signal if old else self.signal_holdout).items():
            xs = self.transform_signal(x) if self.transform_signal and not old else x
            s = score(net, xs, emu)
            out[name] = {
                seed.name: float(np.mean(s > seed.threshold))
                for seed in rate_seeds(menu, self.model)
            }
        return out

    def _rate_errors(self, menu: Any, s_hold: np.ndarray) -> dict[str, dict[str, float]]:
        out = {}
        for seed in rate_seeds(menu, self.model):
            f = expected_fraction(seed.target_rate_hz, menu.input_rate_hz, seed.prescale)
            n_pass = int(np.count_nonzero(s_hold > seed.threshold))
            exp = f * len(s_hold)
            out[seed.name] = {
                "n_pass": n_pass,
                "expected": exp,
                "rel_error": n_pass / exp - 1.0,
                "ok": rate_agreement(n_pass, exp, self.config.max_rate_error),
            }
        return out

    def _adapt(self) -> AdaptationResult:
        x_new, x_fit, x_hold = self._split_new()
        net_cfg = net_config_of(self.version)
        if self.version.weights_path is None:
            raise ConfigError(f"model {self.version.name} has no Keras weights to fine-tune from")
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
        settings = self.config.settings()
        with tempfile.TemporaryDirectory() as tmp:
            done = []
            for i, c in enumerate(settings):
                done.append(self._candidate(i, c, net_cfg, x_fit, x_hold, Path(tmp)))
                if self.config.candidate_choice == "first" and not done[-1]["reasons"]:
                    break
            passing = [d for d in done if not d["reasons"]]
            best = max(passing, key=lambda d: d["efficiency"]) if passing else None
            versions = []
            for d in done:
                chosen = d is best
                reasons = list(d["reasons"])
                if not reasons and not chosen:
                    reasons = [f"candidate {best['index']} has a higher held-out efficiency"]
                final_menu = self._calibrate(score(d["net"], x_new))
                provenance = {
                    **d["provenance"],
                    "model": self.model,
                    "net_config": dataclasses.asdict(net_cfg),
                    "data": {**data, "train_replay_events": d["n_replay"]},
                    "seeds": {
                        "training": d["cfg"].seed,
                        "split": self.config.seed + len(self.adaptations) + 1,
                    },
                    "drift": self._drift_report.to_json() if self._drift_report else None,
                    "candidate": {
                        "index": d["index"],
                        "tried": len(done),
                        "of": len(settings),
                        "choice": self.config.candidate_choice,
                    },
                    "passed_checks": not d["reasons"],
                    "accepted": chosen,
                    "rejected_because": reasons,
                }
                version = self.registry.register(
                    d["net"],
                    provenance,
                    parent=self.version.name,
                    weights=d["weights"],
                    menu=final_menu.to_json(),
                    activate=chosen,
                )
                self.registry.verify(version.name)
                versions.append((version, final_menu, reasons, d["metrics"]))
        pick = done.index(best) if best is not None else 0
        version, final_menu, reasons, metrics = versions[pick]
        if best is not None:
            self._activate(version)
            self._send_menu(final_menu)
        else:
            log.warning("model %s rejected: %s", version.name, "; ".join(reasons))
            self._send_menu(self._calibrate(score(self.net, x_new, self.emulator)))
        self.detector = self._detector(x_new)
        self.replay.add(x_new)
        self.state, self._new, self._lumi, self._drift_report = State.MONITORING, [], [], None
        result = AdaptationResult(
            version.name,
            best is not None,
            tuple(reasons),
            metrics,
            self.menu,
            tuple(v.name for v, *_ in versions),
        )
        self.adaptations.append(result)
        return result

    def _candidate(
        self,
        index: int,
        cfg: LearnerConfig,
        net_cfg: Any,
        x_fit: np.ndarray,
        x_hold: np.ndarray,
        tmp: Path,
    ) -> dict[str, Any]:
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
            self.version.weights_path,
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
        return {
            "index": index,
            "cfg": cfg,
            "net": tuned.net,
            "weights": tuned.weights,
            "n_replay": len(x_replay),
            "metrics": metrics,
            "reasons": reasons,
            "efficiency": efficiency,
            "provenance": {
                "kind": "retrain" if cfg.reinit else "fine_tune",
                "training": training,
                "verification": {"bitexact_vectors": n_vectors, "equal": True},
                "metrics": metrics,
            },
        }

    def _acceptance(
        self, candidate: QNet, x_fit: np.ndarray, x_hold: np.ndarray, cfg: LearnerConfig
    ) -> tuple[dict[str, Any], list[str], float]:
        """Held-out rate of the candidate, its signal efficiency against the parent's (both
        recalibrated on the same new events) and, with ``reference_signal``, against the parent's
        on the old conditions (both calibrated on the reference zero bias). Returns the metrics,
        the reasons to reject and the mean held-out efficiency (for the choice of candidate)."""
        cand_menu = self._calibrate(score(candidate, x_fit))
        parent_menu = self._calibrate(score(self.net, x_fit, self.emulator))
        rates = self._rate_errors(cand_menu, score(candidate, x_hold))
        reasons = [
            f"seed {k}: held-out rate off by {v['rel_error']:+.1%}"
            for k, v in rates.items()
            if not v["ok"]
        ]
        metrics: dict[str, Any] = {"holdout_rate": rates}
        efficiency = 0.0
        seeds = rate_seeds(cand_menu, self.model)
        if self.signal_holdout:
            tpr_c = self._signal_tpr(candidate, cand_menu)
            tpr_p = self._signal_tpr(self.net, parent_menu)
            metrics["signal_tpr"] = tpr_c
            metrics["parent_signal_tpr"] = tpr_p
            effs = []
            for seed in seeds:
                c = float(np.mean([v[seed.name] for v in tpr_c.values()]))
                p = float(np.mean([v[seed.name] for v in tpr_p.values()]))
                effs.append(c)
                if c < (1.0 - cfg.max_tpr_loss) * p:
                    reasons.append(f"seed {seed.name}: signal efficiency {c:.3f} < parent {p:.3f}")
            efficiency = float(np.mean(effs))
        if self.reference_signal:
            tpr_c = self._signal_tpr(
                candidate, self._calibrate(score(candidate, self._old_inputs)), old=True
            )
            tpr_p = self._signal_tpr(
                self.net, self._calibrate(score(self.net, self._old_inputs, self.emulator)), True
            )
            metrics["old_conditions"] = {"signal_tpr": tpr_c, "parent_signal_tpr": tpr_p}
            for seed in seeds:
                if cfg.old_check_seeds and seed.name not in cfg.old_check_seeds:
                    continue
                c = float(np.mean([v[seed.name] for v in tpr_c.values()]))
                p = float(np.mean([v[seed.name] for v in tpr_p.values()]))
                if c < (1.0 - cfg.max_old_tpr_loss) * p:
                    reasons.append(
                        f"seed {seed.name}: old-conditions signal efficiency {c:.3f} < "
                        f"parent {p:.3f} (forgets)"
                    )
        return metrics, reasons, efficiency

    def _activate(self, version: ModelVersion) -> None:
        self.version = version
        self.net = version.load_net()
        self.emulator.close()
        self.emulator = Emulator(self.net)
        if self.on_model is not None:
            self.on_model(self.model, version.qnet_path)
        log.info("model %s activated", version.name)


# ---- registry bootstrap ---------------------------------------------------------------------


def import_training_run(
    registry: ModelRegistry, run_dir: str | Path, *, activate: bool = True, menu: Any = None
) -> ModelVersion:
    """Register the output of ``l1forge train ad`` (IR, last checkpoint, config) as a version."""
    from l1forge.models import qnet

    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    ckpts = sorted((run_dir / "checkpoints").glob("epoch*.weights.h5"))
    if not summary_path.is_file() or not ckpts:
        raise ConfigError(
            f"{run_dir}: not a finished `l1forge train ad` folder (summary.json and "
            "checkpoints/epoch*.weights.h5 are needed)"
        )
    summary = json.loads(summary_path.read_text())
    net = qnet.load(run_dir / "encoder.qnet.json")
    provenance = {
        "kind": "training_run",
        "model": summary.get("kind", "ad"),
        "net_config": summary["config"]["network"],
        "training": summary["config"]["training"],
        "source": str(run_dir.resolve()),
        "checkpoint": ckpts[-1].name,
        "metrics": {"score": summary.get("score")},
    }
    return registry.register(
        net,
        provenance,
        weights=ckpts[-1],
        menu=menu.to_json() if menu is not None else None,
        activate=activate,
    )


# ---- the monitoring tap ---------------------------------------------------------------------


@contextlib.contextmanager
def _sub_socket(
    endpoint: str, topic: bytes, context: Any = None, keys: Any = None
) -> Iterator[Any]:
    import zmq
    from l1forge.online.security import connect_client

    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, topic)
    connect_client(sock, endpoint, keys)
    try:
        yield sock
    finally:
        sock.close(linger=0)


def run_subscriber(
    learner: Learner,
    endpoint: str,
    stop: threading.Event,
    *,
    topic: bytes = TOPIC_ZERO_BIAS,
    poll_ms: int = 200,
    context: Any = None,
    keys: Any = None,
) -> dict[str, int]:
    """Feed the learner from the daemon's monitoring tap until ``stop`` is set; return counters.

    Messages are ``[topic, *online.wire.encode_results(ResultBatch)]``; the zero-bias events
    are the batch's ``objects_hw``. A malformed message is counted and logged, never fatal.
    ``keys`` is a CURVE key folder when the tap is not on loopback.
    """
    from l1forge.online.datapath.wire import WireError, decode_results

    counts = {"messages": 0, "events": 0, "rejected": 0, "adaptations": 0}
    with _sub_socket(endpoint, topic, context, keys) as sock:
        while not stop.is_set():
            if not sock.poll(poll_ms):
                continue
            frames = sock.recv_multipart(copy=False)
            try:
                batch = decode_results(frames[1:])
            except WireError as exc:
                counts["rejected"] += 1
                log.warning("monitoring message rejected (%s): %s", exc.reason, exc)
                continue
            counts["messages"] += 1
            if len(batch.objects_hw) == 0:
                continue
            counts["events"] += len(batch.objects_hw)
            res = learner.observe(batch.objects_hw, run=batch.run, lumisection=batch.lumisection)
            if res is not None:
                counts["adaptations"] += 1
    return counts
